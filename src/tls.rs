//! HTTPS: rustls (with the `ring` provider, which builds with a C compiler alone), HTTP/2
//! and HTTP/1.1 offered by ALPN.
//!
//! The certificate and key live behind an [`ArcSwap`] that a certificate resolver reads
//! at every handshake, so `SIGHUP` can put a renewed certificate in place without a
//! restart: new connections get it, open ones keep the session they negotiated. A file
//! that does not load on reload is logged and the certificate in use is kept.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;
use crate::routing::geo::CountryDb;

/// Why the certificate or key did not load; names the config key at fault and keeps the
/// cause.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("{key}: {what}")]
    Files {
        /// `server.tls_cert` or `server.tls_key`.
        key: &'static str,
        what: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("TLS set-up")]
    Setup(#[source] rustls::Error),
}

impl TlsError {
    fn files(key: &'static str, what: String, source: impl std::error::Error + Send + Sync + 'static) -> TlsError {
        TlsError::Files { key, what, source: Some(Box::new(source)) }
    }
}

/// The TLS side of the listener: an acceptor whose certificate can be swapped.
pub(crate) struct Tls {
    files: TlsFiles,
    current: Arc<Swappable>,
    acceptor: TlsAcceptor,
}

impl Tls {
    /// Loads the certificate and key; an error names the config key at fault.
    pub(crate) fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = load_key(files, &provider)?;
        let current = Arc::new(Swappable(ArcSwap::from_pointee(key)));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Setup)?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls { files: files.clone(), current, acceptor: TlsAcceptor::from(Arc::new(config)) })
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads the files again and, if they load, serves the new certificate to new
    /// connections. On error the old certificate stays.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let provider = rustls::crypto::ring::default_provider();
        let key = load_key(&self.files, &provider)?;
        self.current.0.store(Arc::new(key));
        Ok(())
    }
}

fn load_key(files: &TlsFiles, provider: &rustls::crypto::CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_path = files.cert.display();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&files.cert).and_then(|certs| certs.collect::<Result<_, _>>()).map_err(|e| {
            TlsError::files("server.tls_cert", format!("cannot read a PEM certificate from {cert_path}: {e}"), e)
        })?;
    if chain.is_empty() {
        let what = format!("{cert_path} holds no certificate");
        return Err(TlsError::Files { key: "server.tls_cert", what, source: None });
    }
    let key_path = files.key.display();
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        TlsError::files("server.tls_key", format!("cannot read a PEM private key from {key_path}: {e}"), e)
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        let what = format!("{key_path} does not go with the certificate in {cert_path}: {e}");
        TlsError::files("server.tls_key", what, e)
    })
}

/// The certificate in use, read by every handshake.
struct Swappable(ArcSwap<CertifiedKey>);

impl fmt::Debug for Swappable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Swappable")
    }
}

impl ResolvesServerCert for Swappable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// Reloads `tls` and the country database `geo` on every SIGHUP while the returned future
/// runs. The handler is in place when this returns, before the future is first polled.
/// With neither, a SIGHUP is logged and otherwise ignored (it must not end the process).
pub(crate) fn reload_on_sighup(
    tls: Option<Arc<Tls>>,
    geo: Option<Arc<CountryDb>>,
) -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        #[cfg(unix)]
        {
            let mut hangups = match hangups {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; certificates reload only on restart");
                    return;
                }
            };
            while hangups.recv().await.is_some() {
                match &tls {
                    None => tracing::info!("SIGHUP: no TLS certificate to reload"),
                    Some(tls) => match tls.reload() {
                        Ok(()) => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
                        Err(e) => tracing::error!(error = %e, "SIGHUP: reload failed; the certificate in use is kept"),
                    },
                }
                if let Some(geo) = &geo {
                    match geo.reload() {
                        Ok(()) => tracing::info!("SIGHUP: country database reloaded"),
                        Err(e) => {
                            tracing::error!(error = %e, "SIGHUP: country database not reloaded; the one in use is kept")
                        }
                    }
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (tls, geo);
            std::future::pending::<()>().await
        }
    }
}
