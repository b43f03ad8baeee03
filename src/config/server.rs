//! `[server]`: where cakelink listens and how much one connection may ask of it.
//!
//! The limits live here, not in the server code, so an operator can tune them for their
//! traffic without a rebuild, and `check-config` can refuse nonsense before binding.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::reader::{Env, Errors, Section};

/// `[server]`
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The address to bind (`listen`, or `CAKELINK_LISTEN`, which wins so a container can
    /// move the port without editing the file). Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Base URL the outside world reaches cakelink at; used to print postback URLs.
    pub public_url: String,
    /// A connection that has not sent a complete request head by then is closed.
    pub header_read_timeout: Duration,
    /// A request target (path and query) longer than this gets `414`.
    pub max_target_bytes: usize,
    /// Request headers larger than this in total get `431`.
    pub max_header_bytes: usize,
    /// A postback body larger than this gets `413`.
    pub max_body_bytes: usize,
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// How long a shutdown may take in all: finishing in-flight requests, then replaying
    /// or syncing the outage spool and flushing the store.
    pub shutdown_timeout: Duration,
    /// A connection with no request in flight and no bytes moving for this long is
    /// closed (HTTP/1.1 keep-alive and HTTP/2 alike).
    pub idle_timeout: Duration,
    /// With both set, cakelink speaks HTTPS (HTTP/1.1 and HTTP/2 by ALPN); SIGHUP reloads
    /// the files.
    pub tls: Option<TlsFiles>,
    /// Proxies whose `X-Forwarded-For` hop is believed when checking a postback
    /// allowlist; empty believes no header.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// `[server] tls_cert` and `tls_key`: PEM files, read at start and on SIGHUP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Reads `[server]`; `None` when a value the server cannot run without is wrong (the
/// problem is in `errors`).
pub(super) fn read(value: Option<&toml::Value>, env: Env<'_>, errors: &mut Errors) -> Option<ServerConfig> {
    let mut s = Section::new("server", value, errors);
    let listen_file = s.string("listen", errors);
    let listen_text = env("CAKELINK_LISTEN").or(listen_file).unwrap_or_else(|| "127.0.0.1:8080".into());
    let listen = match listen_text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            s.err(errors, "listen", format!("{listen_text:?} is not an address like 127.0.0.1:8080"));
            None
        }
    };
    // Without a public URL, postback URLs are printed for the listen address.
    let public_url = match s.string("public_url", errors) {
        Some(u) if super::reader::is_http_url(&u) => Some(u.trim_end_matches('/').to_owned()),
        Some(u) => {
            s.err(errors, "public_url", format!("{u:?} is not an absolute http(s) URL"));
            None
        }
        None => listen.map(|a| format!("http://{a}")),
    };
    let tls = read_tls(&mut s, errors);
    let header_read_timeout = s.uint("header_read_timeout_secs", 1, 3600, errors).unwrap_or(10);
    let max_target_bytes = s.uint("max_target_bytes", 256, 65_536, errors).unwrap_or(8 * 1024) as usize;
    let max_header_bytes = s.uint("max_header_bytes", 1024, 1 << 20, errors).unwrap_or(16 * 1024) as usize;
    let max_body_bytes = s.uint("max_body_bytes", 1024, 16 << 20, errors).unwrap_or(64 * 1024) as usize;
    let max_connections = s.uint("max_connections", 1, 1_000_000, errors).unwrap_or(10_000) as usize;
    let shutdown_timeout = s.uint("shutdown_timeout_secs", 0, 3600, errors).unwrap_or(30);
    let idle_timeout = s.uint("idle_timeout_secs", 1, 3600, errors).unwrap_or(60);
    let trusted_proxies = s.cidrs("trusted_proxies", errors);
    s.finish(errors);
    Some(ServerConfig {
        listen: listen?,
        public_url: public_url?,
        header_read_timeout: Duration::from_secs(header_read_timeout),
        max_target_bytes,
        max_header_bytes,
        max_body_bytes,
        max_connections,
        shutdown_timeout: Duration::from_secs(shutdown_timeout),
        idle_timeout: Duration::from_secs(idle_timeout),
        tls,
        trusted_proxies,
    })
}

/// `tls_cert` and `tls_key` come as a pair: one without the other is a mistake, never a
/// quiet fallback to plain HTTP.
fn read_tls(s: &mut Section<'_>, errors: &mut Errors) -> Option<TlsFiles> {
    match (s.string("tls_cert", errors), s.string("tls_key", errors)) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert: PathBuf::from(cert), key: PathBuf::from(key) }),
        (None, None) => None,
        (Some(_), None) => {
            s.err(errors, "tls_key", "is required with tls_cert (the certificate's private key, PEM)");
            None
        }
        (None, Some(_)) => {
            s.err(errors, "tls_cert", "is required with tls_key (the certificate chain, PEM)");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, GOOD};

    #[test]
    fn tls_needs_both_files() {
        let text = GOOD.replace("[store]", "tls_cert = \"c.pem\"\n[store]");
        let errors = parse(&text).unwrap_err().0;
        assert_eq!(errors[0].key, "server.tls_key");
        let text = GOOD.replace("[store]", "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n[store]");
        let tls = parse(&text).unwrap().server.tls.unwrap();
        assert_eq!((tls.cert.to_str(), tls.key.to_str()), (Some("c.pem"), Some("k.pem")));
        assert!(parse(GOOD).unwrap().server.tls.is_none());
    }
}
