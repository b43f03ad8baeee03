//! A real headless Chromium driven over WebDriver: `chromedriver` started on a free port,
//! with a fresh profile, for one test. Debian's `chromium` and `chromium-driver`
//! packages provide both (`./test.sh` installs them); without them the browser tests
//! fail, saying so, rather than skip.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tempfile::TempDir;

/// How long chromedriver may take to listen, and a page to show what a test waits for.
const BOUND: Duration = Duration::from_secs(20);

fn find(names: &[&str], paths: &[&str]) -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).flat_map(|dir| names.iter().map(move |n| dir.join(n))).collect::<Vec<_>>())
        .unwrap_or_default();
    paths.iter().map(PathBuf::from).chain(from_path).find(|p| p.is_file())
}

/// A browser for one test; dropped, it quits.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium `width`×`height` pixels large.
    pub async fn start(width: u32, height: u32) -> Browser {
        let driver_bin = find(&["chromedriver"], &["/usr/bin/chromedriver"]).unwrap_or_else(|| {
            panic!("chromedriver not found: install Debian's `chromium` and `chromium-driver` (./test.sh does)")
        });
        let chromium = find(&["chromium", "chromium-browser"], &["/usr/bin/chromium"])
            .unwrap_or_else(|| panic!("chromium not found: install Debian's `chromium` (./test.sh does)"));
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().expect("address").port()
        };
        // Its own process group, so that the browsers it starts can be ended with it
        // even when a test fails halfway.
        let driver = Command::new(&driver_bin)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", driver_bin.display()));
        let profile = tempfile::tempdir().expect("profile dir");
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--hide-scrollbars".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert("goog:chromeOptions".into(), json!({ "binary": chromium, "args": args }));
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url).await {
                Ok(client) => break client,
                Err(e) if started.elapsed() < BOUND => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("no WebDriver session from {} within {BOUND:?}: {e}", driver_bin.display()),
            }
        };
        let mut browser = Browser { client, driver, _profile: profile };
        browser.resize(width, height).await;
        browser
    }

    /// Makes the page area exactly `width`×`height` CSS pixels.
    pub async fn resize(&mut self, width: u32, height: u32) {
        // Headless windows have no frame, but be exact anyway: size, measure, correct.
        self.client.set_window_size(width, height).await.expect("window size");
        let inner = self.eval("return [window.innerWidth, window.innerHeight]").await;
        let (iw, ih) = (inner[0].as_u64().unwrap_or(0) as u32, inner[1].as_u64().unwrap_or(0) as u32);
        if (iw, ih) != (width, height) && iw > 0 && ih > 0 {
            self.client.set_window_size(width * 2 - iw, height * 2 - ih).await.expect("window size");
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("loading {url}: {e}"));
    }

    pub async fn eval(&self, script: &str) -> serde_json::Value {
        self.client.execute(script, vec![]).await.unwrap_or_else(|e| panic!("script {script}: {e}"))
    }

    pub async fn text(&self, css: &str) -> String {
        let el = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"));
        el.text().await.expect("text")
    }

    pub async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.map(|v| v.len()).unwrap_or(0)
    }

    pub async fn fill(&self, css: &str, value: &str) {
        let el = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"));
        el.clear().await.expect("clear");
        el.send_keys(value).await.expect("type");
    }

    pub async fn click(&self, css: &str) {
        let el = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"));
        el.click().await.unwrap_or_else(|e| panic!("clicking {css}: {e}"));
    }

    /// The path (and query) of the page shown.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.expect("current URL");
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// Waits until the page shown is `want` (path and query): a click that submits a
    /// form returns before the next page is there.
    pub async fn wait_path(&self, want: &str) {
        let started = Instant::now();
        loop {
            let path = self.path().await;
            if path == want {
                return;
            }
            assert!(started.elapsed() < BOUND, "still at {path}, waiting for {want}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until an element matching `css` is on the page.
    pub async fn wait_for(&self, css: &str) {
        let started = Instant::now();
        while self.count(css).await == 0 {
            assert!(started.elapsed() < BOUND, "no {css} on {}", self.path().await);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The page's visible text.
    pub async fn body(&self) -> String {
        self.text("body").await
    }

    /// Fails the test if a script opened an alert, confirm or prompt.
    pub async fn assert_no_dialog(&self, page: &str) {
        if let Ok(text) = self.client.get_alert_text().await {
            panic!("{page}: a dialog opened: {text:?}");
        }
    }

    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.expect("screenshot")
    }

    /// Ends the WebDriver session, then chromedriver and whatever it started.
    pub async fn quit(self) {
        let _ = self.client.clone().close().await;
        // Dropping ends the process group.
    }

    /// Stops chromedriver's process group (chromedriver and the browser it started).
    fn stop_group(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop_group();
    }
}
