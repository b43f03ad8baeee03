//! HTTPS: rustls with HTTP/1.1 and HTTP/2 chosen by ALPN, on a self-signed certificate
//! made here, and the real binary reloading its certificate on SIGHUP without dropping
//! the connections already open. The binary's log, at debug level, never holds a secret.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cakelink::app::Application;
use cakelink::config::Config;
use reqwest::{StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    click_id_in, config_text, serve_command, spawn_app_edited, Backend, StoreHandle, ADMIN_TOKEN, CHROME, POSTBACK_KEY,
    SECRET,
};

/// The name the test certificates are made for; clients resolve it to the server.
const HOST: &str = "cakelink.test";
/// Upper bound for the server to start, answer, reload or exit; a bound, not a target.
const BOUND: Duration = Duration::from_secs(15);

/// A fresh self-signed certificate and its key, PEM.
struct TestCert {
    cert: String,
    key: String,
}

impl TestCert {
    fn new() -> TestCert {
        let made = rcgen::generate_simple_self_signed(vec![HOST.to_owned()]).expect("self-signed certificate");
        TestCert { cert: made.cert.pem(), key: made.signing_key.serialize_pem() }
    }

    fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &self.cert).expect("write the certificate");
        std::fs::write(&key, &self.key).expect("write the key");
        (cert, key)
    }
}

/// A client that trusts only `cert` and reaches [`HOST`] at `addr`; HTTP/2 when the
/// server offers it by ALPN, unless `http1_only`.
fn https_client(cert: &TestCert, addr: SocketAddr, http1_only: bool) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(cert.cert.as_bytes()).expect("PEM certificate");
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .resolve(HOST, addr)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10));
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().expect("client")
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("https://{HOST}:{}{path}", addr.port())
}

/// The `[server]` lines that turn TLS on.
fn tls_lines(cert: &Path, key: &Path) -> String {
    format!("tls_cert = {:?}\ntls_key = {:?}\n", cert.display().to_string(), key.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_speaks_http1_and_http2_by_alpn() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = TestCert::new();
    let (cert_path, key_path) = cert.write(dir.path());
    let lines = tls_lines(&cert_path, &key_path);
    let app = spawn_app_edited(Backend::Embedded, |text| text.replace("[store]", &format!("{lines}[store]"))).await;

    for (http1_only, version) in [(false, Version::HTTP_2), (true, Version::HTTP_11)] {
        let client = https_client(&cert, app.addr, http1_only);
        let res = client.get(url(app.addr, "/go/cake/demo")).header("user-agent", CHROME).send().await.expect("click");
        assert_eq!((res.status(), res.version()), (StatusCode::FOUND, version));
        let id = click_id_in(&res, "s2");
        let res = client.get(url(app.addr, &format!("/api/clicks/{id}"))).bearer_auth(ADMIN_TOKEN).send().await;
        let res = res.expect("api");
        assert_eq!((res.status(), res.version()), (StatusCode::OK, version));
        let click: serde_json::Value = res.json().await.expect("JSON");
        assert_eq!(click["click_id"], id.as_str());
    }

    // Cleartext HTTP on the TLS port gets no HTTP answer, and the server carries on.
    let mut plain = TcpStream::connect(app.addr).await.expect("connect");
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut got = Vec::new();
    let read = tokio::time::timeout(BOUND, plain.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the server closes a connection that is not TLS");
    assert!(!got.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&got));
    let res = https_client(&cert, app.addr, false).get(url(app.addr, "/healthz")).send().await.expect("healthz");
    assert_eq!(res.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn unusable_tls_files_are_refused_at_start_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = StoreHandle::new(Backend::Embedded);
    let (cert_path, key_path) = TestCert::new().write(dir.path());
    // A key that belongs to another certificate.
    std::fs::write(&key_path, TestCert::new().key).expect("write");
    let missing = dir.path().join("missing.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").expect("write");
    for (cert, key, expected) in [
        (&cert_path, &key_path, "server.tls_key"),
        (&missing, &key_path, "server.tls_cert"),
        (&garbage, &key_path, "server.tls_cert"),
        (&cert_path, &garbage, "server.tls_key"),
    ] {
        let text = config_text("127.0.0.1:0", &store.toml, "", "")
            .replace("[store]", &format!("{}[store]", tls_lines(cert, key)));
        let config = Config::parse(&text, |_| None).expect("the text itself is valid");
        let err = Application::build(config).await.err().expect("start refused");
        let err = format!("{err:#}");
        assert!(err.starts_with(expected), "{err:?} should name {expected}");
    }
}

/// The real binary over TLS, its standard error in a file.
struct TlsProcess {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl TlsProcess {
    /// Starts `cakelink serve` and waits (bounded) until `/healthz` answers to a client
    /// that trusts `cert`.
    async fn start(store: &StoreHandle, cert_path: &Path, key_path: &Path, cert: &TestCert) -> TlsProcess {
        let mut last = String::new();
        for attempt in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
            let text = config_text(&addr.to_string(), &store.toml, "", "")
                .replace("[store]", &format!("{}[store]", tls_lines(cert_path, key_path)));
            let config = store.dir.path().join("cakelink.toml");
            std::fs::write(&config, text).expect("write config");
            let log = store.dir.path().join(format!("cakelink-{attempt}.log"));
            let child = serve_command(&config, &log)
                .env("RUST_LOG", "debug,fjall=warn,lsm_tree=warn")
                .spawn()
                .expect("start the cakelink binary");
            let mut process = TlsProcess { child, addr, log };
            let client = https_client(cert, addr, false);
            let started = Instant::now();
            while started.elapsed() < BOUND {
                if let Ok(Some(_)) = process.child.try_wait() {
                    break;
                }
                if let Ok(res) = client.get(url(addr, "/healthz")).send().await {
                    if res.status() == StatusCode::OK {
                        return process;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            last = process.log_text();
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
        panic!("cakelink over TLS did not come up:\n{last}");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status();
        assert!(status.expect("run kill").success(), "kill -{name}");
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until the log holds `needle`.
    async fn wait_for_log(&self, needle: &str) {
        let started = Instant::now();
        while !self.log_text().contains(needle) {
            assert!(started.elapsed() < BOUND, "no {needle:?} in the log:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits (bounded) for a clean exit; returns the log.
    async fn stop(mut self) -> String {
        self.signal("TERM");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "cakelink exited with {status}:\n{}", self.log_text());
                return self.log_text();
            }
            if started.elapsed() > BOUND {
                let _ = self.child.kill();
                panic!("cakelink did not exit after SIGTERM:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TlsProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_open_connections_stay() {
    let store = StoreHandle::new(Backend::Embedded);
    let (old, new) = (TestCert::new(), TestCert::new());
    let (cert_path, key_path) = old.write(store.dir.path());
    let process = TlsProcess::start(&store, &cert_path, &key_path, &old).await;
    let addr = process.addr;

    // An HTTP/2 connection made with the old certificate, kept open by the client's pool.
    let kept = https_client(&old, addr, false);
    let res = kept.get(url(addr, "/healthz")).send().await.expect("healthz");
    assert_eq!((res.status(), res.version()), (StatusCode::OK, Version::HTTP_2));

    // Secrets go over the wire (right and wrong), and must not reach the log.
    let res = kept.get(url(addr, &format!("/collect/cake/{POSTBACK_KEY}?s2=nope&price=1"))).send().await;
    assert_eq!(res.expect("postback").status(), StatusCode::OK);
    let res = kept.get(url(addr, "/collect/cake/not-the-key?s2=nope")).send().await;
    assert_eq!(res.expect("postback").status(), StatusCode::FORBIDDEN);
    let res = kept.get(url(addr, "/api/events?limit=5")).bearer_auth(ADMIN_TOKEN).send().await;
    assert_eq!(res.expect("api").status(), StatusCode::OK);
    let res = kept.get(url(addr, "/api/events")).bearer_auth("a-wrong-token").send().await;
    assert_eq!(res.expect("api").status(), StatusCode::UNAUTHORIZED);

    // Renew: new files, SIGHUP. New connections get the new certificate...
    new.write(store.dir.path());
    process.signal("HUP");
    let fresh = https_client(&new, addr, false);
    let started = Instant::now();
    loop {
        match fresh.get(url(addr, "/healthz")).send().await {
            Ok(res) if res.status() == StatusCode::OK => break,
            other => {
                assert!(started.elapsed() < BOUND, "the new certificate was never served: {other:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    process.wait_for_log("TLS certificate and key reloaded").await;
    let err = https_client(&old, addr, false).get(url(addr, "/healthz")).send().await;
    assert!(err.is_err(), "a new connection still got the old certificate");
    // ...while the connection opened before the reload still serves: a new one would
    // have failed, since this client trusts only the old certificate.
    let res = kept.get(url(addr, "/healthz")).send().await.expect("the kept connection still serves");
    assert_eq!(res.status(), StatusCode::OK);

    // A broken file on reload is logged and the certificate in use is kept.
    std::fs::write(&cert_path, "-----BEGIN CERTIFICATE-----\nbroken\n").expect("write");
    process.signal("HUP");
    process.wait_for_log("reload failed").await;
    let res = https_client(&new, addr, true).get(url(addr, "/healthz")).send().await;
    assert_eq!(res.expect("the previous certificate is still served").status(), StatusCode::OK);

    let log = process.stop().await;
    for (name, secret) in [("postback key", POSTBACK_KEY), ("admin token", ADMIN_TOKEN), ("click-id secret", SECRET)] {
        assert!(!log.contains(secret), "the {name} is in the log:\n{log}");
    }
    assert!(log.contains("postback"), "the log has the postbacks (redacted), at least:\n{log}");
}
