//! cakelink: a self-hosted redirect and postback service for affiliates on CAKE.
//!
//! # Layout
//!
//! A request flows one way: `server` → `routes` → the domain → [`store`]. The map of
//! every module, the path of one click and one postback, and the rules that keep the
//! layout so are in `ARCHITECTURE.md` at the repository's root.
//!
//! - [`config`]: the TOML file and environment overrides, a file per section, checked
//!   completely before binding.
//! - [`app`]: `Application` (open the store, bind, serve, shut down); `state` holds what
//!   every request shares.
//! - [`server`], `tls`: the accept loop, HTTP/1.1 and HTTP/2, limits, graceful shutdown, HTTPS;
//!   `server::h1`, the redirect's own HTTP/1.1 path on cleartext connections.
//! - `routes`: redirect, postback, admin API, health and metrics; `routes::failure` is the
//!   one place failures become HTTP answers.
//! - `routes::ui`: the web dashboard under `/ui/`, over the admin API's store calls;
//!   `sessions`: its signed sign-in sessions.
//! - [`clickid`]: minting and verifying the signed, time-ordered click ids.
//! - [`links`], [`networks`]: link definitions compiled for the redirect, networks as data.
//! - [`routing`]: a link's weighted offers, rules, daily caps and the visitor's country and device.
//! - [`bots`], `memo`, `privacy`: request classification, per-thread memos, what a click
//!   keeps of the visitor's address.
//! - [`postback`]: reading a postback, deciding the event, recording or reversing the
//!   conversion.
//! - [`reconcile`]: the network's conversion report against what was recorded, with a
//!   reason for every difference; ingesting what was missing.
//! - `access`: who may send postbacks (allowlists, trusted proxies).
//! - `reports`: per-link and per-day figures from hourly counters.
//! - [`model`], [`money`], `clock`, `text`: records, exact money, time, text helpers.
//! - [`store`]: capability traits over one schema; the embedded (fjall) and Redis
//!   backends; the outage spool.
//! - `forward`: the outbox worker and the ad platforms' conversion APIs.
//! - [`telemetry`]: Prometheus metrics and logging.
//! - [`cli`]: the command-line verbs.

// The library's public API: what the binary, the benches, the fuzz targets and the
// integration tests use.
pub mod app;
pub mod bots;
pub mod cli;
pub mod clickid;
pub mod config;
pub mod links;
pub mod model;
pub mod money;
pub mod networks;
pub mod postback;
pub mod reconcile;
pub mod reports;
pub mod routing;
pub mod server;
pub mod store;
pub mod telemetry;

mod access;
mod clock;
mod forward;
mod memo;
mod privacy;
mod routes;
mod secret;
mod sessions;
mod state;
mod text;
mod tls;
