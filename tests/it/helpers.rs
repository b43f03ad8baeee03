//! Test helpers: a real cakelink on port 0 over either store, and a client that never
//! follows redirects.

use std::net::SocketAddr;
use std::time::Duration;

use cakelink::app::Application;
use cakelink::config::Config;
use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::redis_server::RedisServer;

pub const SECRET: &str = "test-secret-0123456789abcdef";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const POSTBACK_KEY: &str = "test-postback-key-0123456789";
pub const CHROME: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

/// Which store a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Redis,
}

/// Runs an `async fn(Backend)` test once per store: `mod_name::embedded` and `mod_name::redis`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn embedded() {
                    super::$name($crate::helpers::Backend::Embedded).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn redis() {
                    super::$name($crate::helpers::Backend::Redis).await
                }
            }
        )*
    };
}

/// The store section and whatever keeps it alive.
pub struct StoreHandle {
    pub toml: String,
    pub dir: TempDir,
    pub redis: Option<RedisServer>,
}

impl StoreHandle {
    pub fn new(backend: Backend) -> StoreHandle {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Embedded => {
                let path = dir.path().join("db");
                StoreHandle {
                    toml: format!("backend = \"embedded\"\npath = {:?}\nfsync_ms = 200\n", path.display().to_string()),
                    dir,
                    redis: None,
                }
            }
            Backend::Redis => StoreHandle::on_redis(RedisServer::start(), dir),
        }
    }

    /// A Redis store on `redis`, its outage spool in `dir`.
    pub fn on_redis(redis: RedisServer, dir: TempDir) -> StoreHandle {
        let url = redis.url();
        StoreHandle::on_redis_at(redis, &url, dir)
    }

    /// A Redis store on `redis` reached at `url` (its unix socket, say), its outage spool
    /// in `dir`.
    pub fn on_redis_at(redis: RedisServer, url: &str, dir: TempDir) -> StoreHandle {
        let spool = dir.path().join("spool").display().to_string();
        StoreHandle {
            toml: format!("backend = \"redis\"\nurl = {url:?}\nspool_path = {spool:?}\n"),
            dir,
            redis: Some(redis),
        }
    }
}

/// A config for tests: links covering each behaviour, `extra` appended (more
/// `[[links]]` or `[networks.*]`), and `store_extra` added to `[store]`.
pub fn config_text(listen: &str, store: &str, store_extra: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
public_url = "https://track.example.com"
header_read_timeout_secs = 1

[store]
{store}
{store_extra}

[security]
secret = "{SECRET}"
previous_secrets = ["an-older-secret-0123456789"]
admin_token = "{ADMIN_TOKEN}"
postback_key = "{POSTBACK_KEY}"

[networks.tune]
subid = "aff_sub"
passthrough = ["aff_sub2"]
transaction_field = "transaction_id"
value_field = "payout"
currency = "EUR"

[[links]]
slug = "demo"
offer = "https://offers.example.com/?a=200&c=761&s1=yes"

[[links]]
slug = "cpl"
offer = "https://offers.example.com/?a=200&c=9"
event = "Lead"

[[links]]
slug = "paused"
offer = "https://offers.example.com/?a=1&c=1"
status = "paused"
fallback = "https://fallback.example.com/"

[[links]]
slug = "paused-nowhere"
offer = "https://offers.example.com/?a=1&c=1"
status = "paused"

[[links]]
slug = "perm"
offer = "https://offers.example.com/?a=1&c=2&s2=preset"
redirect = 301

[[links]]
network = "tune"
slug = "t1"
offer = "https://tune.example.com/aff_c?offer_id=5&aff_id=7"
{extra}
"#
    )
}

/// A running cakelink.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub store: StoreHandle,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, "", "").await
}

/// Binds first (port 0), then serves in a task: no sleeps waiting for a server.
pub async fn spawn_app_with(backend: Backend, store_extra: &str, extra: &str) -> TestApp {
    let store = StoreHandle::new(backend);
    let text = config_text("127.0.0.1:0", &store.toml, store_extra, extra);
    serve_text(store, &text).await
}

/// A cakelink whose config text (`config_text` with the store filled in) is passed
/// through `edit` first: to change `[server]` keys, say.
pub async fn spawn_app_edited(backend: Backend, edit: impl FnOnce(String) -> String) -> TestApp {
    let store = StoreHandle::new(backend);
    let text = edit(config_text("127.0.0.1:0", &store.toml, "", ""));
    serve_text(store, &text).await
}

async fn serve_text(store: StoreHandle, text: &str) -> TestApp {
    let config = Config::parse(text, |_| None).unwrap_or_else(|e| panic!("test config: {e}"));
    let app = Application::build(config).await.expect("app builds");
    let addr = app.local_addr();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    TestApp { addr, base: format!("http://{addr}"), client: client(), store, shutdown: Some(tx), task: Some(task) }
}

/// An HTTP client that never follows redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// The click id (`s2`, or another network's subid) in a redirect's `Location`.
pub fn click_id_in(res: &reqwest::Response, param: &str) -> String {
    let location = res.headers().get("location").expect("a Location header").to_str().expect("ascii");
    let url = url::Url::parse(location).expect("absolute Location");
    url.query_pairs()
        .find(|(k, _)| k == param)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no {param} in {location}"))
}

pub fn location(res: &reqwest::Response) -> String {
    res.headers().get("location").expect("a Location header").to_str().expect("ascii").to_owned()
}

impl TestApp {
    /// `GET` a path with a browser user agent.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.get_as(path, Some(CHROME)).await
    }

    pub async fn get_as(&self, path: &str, user_agent: Option<&str>) -> reqwest::Response {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(ua) = user_agent {
            req = req.header("user-agent", ua);
        }
        req.send().await.expect("request")
    }

    /// Clicks `/go/cake/{slug}` as a person and returns the click id.
    pub async fn click(&self, slug: &str) -> String {
        let res = self.get(&format!("/go/cake/{slug}")).await;
        assert_eq!(res.status(), StatusCode::FOUND);
        click_id_in(&res, "s2")
    }

    /// `GET` postback on the cake network with the right key.
    pub async fn postback(&self, query: &str) -> (StatusCode, Value) {
        let res = self.get_as(&format!("/collect/cake/{POSTBACK_KEY}?{query}"), None).await;
        let status = res.status();
        (status, res.json().await.expect("postback answers JSON"))
    }

    /// `GET /api/...` with the admin token; the answer must be `200` JSON.
    pub async fn api(&self, path: &str) -> Value {
        let res = self
            .client
            .get(format!("{}/api/{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("request");
        assert_eq!(res.status(), StatusCode::OK, "GET /api/{path}");
        res.json().await.expect("JSON")
    }

    /// Today's (UTC) stats for one link.
    pub async fn stats_for(&self, link: &str) -> Value {
        let today = today();
        let v = self.api(&format!("stats?from={today}&to={today}&group=link")).await;
        v["rows"].as_array().expect("rows").iter().find(|r| r["key"] == link).cloned().unwrap_or(Value::Null)
    }

    /// The newest event-log entry.
    pub async fn last_event(&self) -> Value {
        self.api("events?limit=1").await["events"][0].clone()
    }

    /// Stops the server and waits for it (in-flight requests finish, the store flushes).
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server stops cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Today's date in UTC, `YYYY-MM-DD`.
pub fn today() -> String {
    let now = time::OffsetDateTime::now_utc().date();
    format!("{:04}-{:02}-{:02}", now.year(), now.month() as u8, now.day())
}

/// Counter value from a stats row (0 when the row is missing).
pub fn count(row: &Value, field: &str) -> u64 {
    row.get(field).and_then(Value::as_u64).unwrap_or(0)
}

/// A cakelink over an existing store (which the caller keeps alive), tagging click ids
/// with `secret` and still accepting `previous`: a secret rotation across a restart.
/// The returned app's own `store` is an empty stand-in, so stopping it leaves `store`.
pub async fn spawn_app_on(store: &StoreHandle, secret: &str, previous: &[&str]) -> TestApp {
    let text = config_text("127.0.0.1:0", &store.toml, "", "");
    let quoted: Vec<String> = previous.iter().map(|s| format!("{s:?}")).collect();
    let secret_line = format!("secret = {secret:?}\n");
    let previous_line = format!("previous_secrets = [{}]", quoted.join(", "));
    let text = text.replace(&format!("secret = \"{SECRET}\"\n"), &secret_line);
    let text = text.replace("previous_secrets = [\"an-older-secret-0123456789\"]", &previous_line);
    assert!(text.contains(&secret_line) && text.contains(&previous_line), "the secret lines were replaced");
    serve_over(store, &text).await
}

/// Serves config `text` over an existing store (which the caller keeps alive); the
/// returned app's own `store` is an empty stand-in, so stopping it leaves `store`.
async fn serve_over(store: &StoreHandle, text: &str) -> TestApp {
    // A stopped embedded store lets go of its directory lock when its background threads
    // notice (up to ~0.5 s after the stop in-process; at once when a process exits), so a
    // restart over the same directory retries while the lock is still held.
    let started = std::time::Instant::now();
    let app = loop {
        let config = Config::parse(text, |_| None).unwrap_or_else(|e| panic!("test config: {e}"));
        match Application::build(config).await {
            Ok(app) => break app,
            Err(e) if format!("{e:#}").contains("Locked") && started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("app builds: {e:#}"),
        }
    };
    let addr = app.local_addr();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    let stand_in = StoreHandle { toml: store.toml.clone(), dir: tempfile::tempdir().expect("temp dir"), redis: None };
    TestApp {
        addr,
        base: format!("http://{addr}"),
        client: client(),
        store: stand_in,
        shutdown: Some(tx),
        task: Some(task),
    }
}

/// A `TestApp` view of a cakelink served by another process at `addr` over `store`
/// (which the caller keeps alive): the same client methods, and `stop` does nothing.
pub fn attach(addr: SocketAddr, store: &StoreHandle) -> TestApp {
    let stand_in = StoreHandle { toml: store.toml.clone(), dir: tempfile::tempdir().expect("temp dir"), redis: None };
    TestApp { addr, base: format!("http://{addr}"), client: client(), store: stand_in, shutdown: None, task: None }
}

/// A cakelink with `extra` config (destinations, say) over an existing store that the
/// caller keeps alive, so that it can be stopped and started again over the same data.
pub async fn spawn_app_over(store: &StoreHandle, extra: &str) -> TestApp {
    serve_over(store, &config_text("127.0.0.1:0", &store.toml, "", extra)).await
}

/// The cakelink binary serving `config`, logging to `log`, with none of the test
/// environment's `CAKELINK_*` variables leaking in.
pub fn serve_command(config: &std::path::Path, log: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cakelink"));
    command.arg("serve").arg("--config").arg(config);
    for var in [
        "CAKELINK_CONFIG",
        "CAKELINK_LISTEN",
        "CAKELINK_STORE_URL",
        "CAKELINK_SECRET",
        "CAKELINK_ADMIN_TOKEN",
        "CAKELINK_POSTBACK_KEY",
    ] {
        command.env_remove(var);
    }
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"));
    command
}
