//! The command-line verbs: `serve` (the default), `postback-url`, `check-config`,
//! `test-postback`, `reconcile`.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

use crate::app::Application;
use crate::config::{Config, LoadError};

/// The exit status for a config that cannot be used (`EX_USAGE` in BSD's `sysexits.h`):
/// the operator's input is wrong, and a supervisor or script can tell that from a crash
/// or an outage, which exit with 1.
pub const EX_USAGE: u8 = 64;

/// The config file named on the command line could not be read or is invalid (every
/// problem, each with its key, is in the source).
#[derive(Debug, thiserror::Error)]
#[error("{}", path.display())]
pub struct BadConfig {
    /// The file as given (`--config` or `CAKELINK_CONFIG`).
    pub path: PathBuf,
    /// What is wrong with it.
    #[source]
    pub error: LoadError,
}

#[derive(Debug, Parser)]
#[command(
    name = "cakelink",
    version,
    about = "Redirects ad clicks to CAKE offers and records the conversions CAKE posts back"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Config file (for `serve` when no verb is given).
    #[arg(long, global = true, env = "CAKELINK_CONFIG", default_value = "config/cakelink.toml")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve redirects, postbacks and the API (the default).
    Serve,
    /// Print the postback URL to paste into the network.
    PostbackUrl {
        #[arg(long, default_value = "cake")]
        network: String,
    },
    /// Check the config file and report every error with its key.
    CheckConfig,
    /// Click a link on the running server, post a conversion back for it, and show the
    /// event-log entry: CAKE's test mode fires no affiliate postback, this does.
    TestPostback {
        /// The link to click, as network/slug (default: the first link in the config).
        #[arg(long)]
        link: Option<String>,
        /// Base URL of the running server (default: the config's listen address).
        #[arg(long)]
        url: Option<String>,
        /// Payout to report.
        #[arg(long, default_value = "0.00")]
        price: String,
    },
    /// Compare the network's conversion report with what cakelink recorded, with the
    /// reason for every conversion one side lacks (runs on the running server).
    Reconcile {
        #[arg(long, default_value = "cake")]
        network: String,
        /// First day, YYYY-MM-DD (in --tz).
        #[arg(long)]
        from: String,
        /// Last day, YYYY-MM-DD, inclusive.
        #[arg(long)]
        to: String,
        /// The conversion report as exported from the network (CSV).
        #[arg(long, required_unless_present = "api", conflicts_with = "api")]
        file: Option<PathBuf>,
        /// Read the report from the network's affiliate API ([networks.NAME.api]).
        #[arg(long)]
        api: bool,
        #[arg(long, default_value = "table", value_parser = ["table", "json", "csv"])]
        format: String,
        /// Record the missing conversions whose click is stored, and apply the report's
        /// reversals.
        #[arg(long)]
        ingest: bool,
        /// The report's time zone, ±HH:MM (default UTC).
        #[arg(long, allow_hyphen_values = true)]
        tz: Option<String>,
        /// Base URL of the running server (default: the config's listen address).
        #[arg(long)]
        url: Option<String>,
    },
}

fn load(path: &std::path::Path) -> Result<Config, BadConfig> {
    Config::load(path, |name| std::env::var(name).ok()).map_err(|error| BadConfig { path: path.to_owned(), error })
}

/// The process's exit status for an error [`run`] returned: [`EX_USAGE`] when the config
/// is at fault, 1 for anything else.
pub fn exit_code(error: &anyhow::Error) -> std::process::ExitCode {
    // A certificate or key named by the config that does not load is a config problem too.
    if error.chain().any(|cause| cause.is::<BadConfig>() || cause.is::<crate::tls::TlsError>()) {
        std::process::ExitCode::from(EX_USAGE)
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let config = load(&cli.config)?;
            for w in &config.warnings {
                tracing::warn!("{w}");
            }
            crate::server::small_pages_only();
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(serve(config))
        }
        Command::PostbackUrl { network } => {
            let config = load(&cli.config)?;
            let Some(n) = config.networks.get(&network) else {
                bail!(
                    "no network {network:?} in {} (known: {})",
                    cli.config.display(),
                    config.networks.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            };
            println!("{}", n.postback_url(&config.server.public_url, config.security.postback_key.expose()));
            Ok(())
        }
        Command::CheckConfig => {
            let config = load(&cli.config)?;
            // The certificate files too: serve would refuse them before binding.
            if let Some(files) = &config.server.tls {
                crate::tls::Tls::load(files)?;
            }
            for w in &config.warnings {
                println!("warning: {w}");
            }
            println!(
                "{}: ok ({} network(s), {} link(s))",
                cli.config.display(),
                config.networks.len(),
                config.links.len()
            );
            Ok(())
        }
        Command::TestPostback { link, url, price } => {
            let config = load(&cli.config)?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(test_postback(config, link, url, price))
        }
        Command::Reconcile { network, from, to, file, api, format, ingest, tz, url } => {
            let config = load(&cli.config)?;
            let body = match &file {
                Some(path) => std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
                None => Vec::new(),
            };
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("network", &network).append_pair("from", &from).append_pair("to", &to);
            query.append_pair("format", &format).append_pair("source", if api { "api" } else { "file" });
            if ingest {
                query.append_pair("ingest", "true");
            }
            if let Some(tz) = &tz {
                query.append_pair("tz", tz);
            }
            let base = server_url(&config, url);
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(reconcile(&config, &base, &query.finish(), body))
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    let state = app.state();
    tracing::info!(
        address = %app.local_addr(),
        store = state.store.health().backend(),
        links = state.config.links.len(),
        "cakelink serving; postback URL: {}",
        state.config.networks.get("cake").map(|n| n.postback_url(&state.config.server.public_url, "<postback_key>")).unwrap_or_default()
    );
    app.run_until(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

async fn test_postback(config: Config, link: Option<String>, url: Option<String>, price: String) -> anyhow::Result<()> {
    let (network, slug) = match &link {
        Some(l) => l
            .split_once('/')
            .map(|(n, s)| (n.to_owned(), s.to_owned()))
            .context("--link takes network/slug, e.g. cake/demo")?,
        None => {
            let l = config.links.first().context("no link in the config; pass --link network/slug")?;
            (l.network.clone(), l.slug.clone())
        }
    };
    let net = config.networks.get(&network).with_context(|| format!("no network {network:?} in the config"))?;
    let base = server_url(&config, url);
    let base = base.as_str();
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;

    let click_url = format!("{base}/go/{network}/{slug}?utm_source=cakelink-test-postback");
    let res = client
        .get(&click_url)
        .header("user-agent", "Mozilla/5.0 (cakelink test-postback)")
        .send()
        .await
        .with_context(|| format!("is cakelink running at {base}? GET {click_url} failed"))?;
    let location = res.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let Some(location) = location else {
        bail!("GET {click_url} answered {} without a redirect", res.status());
    };
    let offer = url::Url::parse(&location).context("the redirect's Location is not a URL")?;
    let click_id = offer
        .query_pairs()
        .find(|(k, _)| *k == net.subid)
        .map(|(_, v)| v.into_owned())
        .context("no click id in the redirect")?;
    println!("click:    {} → {location}", res.status());

    let now = crate::clock::now_secs();
    let postback_url = format!(
        "{base}/collect/{network}/{}?{}={click_id}&{}=test-{now}&{}={price}",
        config.security.postback_key.expose(),
        net.click_id_field,
        net.transaction_field,
        net.value_field
    );
    let res = client.get(&postback_url).send().await.context("postback request failed")?;
    let status = res.status();
    let body = res.text().await.unwrap_or_default();
    println!("postback: {status} {body}");

    let events = client
        .get(format!("{base}/api/events?limit=1"))
        .bearer_auth(config.security.admin_token.expose())
        .send()
        .await
        .context("reading the event log failed")?;
    let log: serde_json::Value = events.json().await.context("the event log answer is not JSON")?;
    let entry = log.get("events").and_then(|e| e.get(0)).cloned().unwrap_or_default();
    println!("event log entry:\n{}", serde_json::to_string_pretty(&entry)?);
    let ok = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(str::to_owned));
    if ok.as_deref() != Some("ok") && ok.as_deref() != Some("duplicate") {
        bail!("the postback was not recorded");
    }
    Ok(())
}

/// The running server's base URL: `--url`, else the config's listen address (a wildcard
/// address asked on this machine's loopback).
fn server_url(config: &Config, url: Option<String>) -> String {
    let base = url.unwrap_or_else(|| {
        let mut addr = config.server.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let scheme = if config.server.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    });
    base.trim_end_matches('/').to_owned()
}

/// Posts the report to the running server's `/api/reconcile` and prints its answer.
async fn reconcile(config: &Config, base: &str, query: &str, body: Vec<u8>) -> anyhow::Result<()> {
    let url = format!("{base}/api/reconcile?{query}");
    let res = reqwest::Client::new()
        .post(&url)
        .bearer_auth(config.security.admin_token.expose())
        .header("content-type", "text/csv")
        .body(body)
        .send()
        .await
        .with_context(|| format!("is cakelink running at {base}? POST /api/reconcile failed"))?;
    let status = res.status();
    let ingested = res.headers().get("x-cakelink-ingested").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let text = res.text().await.context("reading the reconciliation failed")?;
    if !status.is_success() {
        let reason = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or(text);
        bail!("reconcile refused ({status}): {reason}");
    }
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    if let Some(done) = ingested {
        eprintln!("ingested: {done}");
    }
    Ok(())
}
