//! cakelink: a self-hosted redirect and postback service for affiliates on CAKE.
//!
//! # Layout
//!
//! A request flows one way: [`server`] → [`routes`] → the domain → [`store`].
//!
//! - [`config`]: the TOML file and environment overrides, checked completely before binding.
//! - [`app`]: shared state and `Application` (bind, serve, shut down).
//! - [`server`]: the accept loop, HTTP/1.1 and HTTP/2, limits, graceful shutdown.
//! - [`tls`]: HTTPS via rustls, the certificate reloaded on SIGHUP.
//! - [`routes`]: redirect, postback, admin API, health and metrics.
//! - [`dashboard`]: the web dashboard under `/ui/`, over the admin API's store calls.
//! - [`clickid`]: minting and verifying the signed, time-ordered click ids.
//! - [`links`]: link definitions, compiled for the redirect and cached in process.
//! - [`networks`]: affiliate networks as data (CAKE built in).
//! - [`bots`]: bot and prefetch classification.
//! - [`memo`]: per-thread memo of pure functions the redirect path repeats.
//! - [`postback`]: reading a postback, deciding the event, recording the conversion.
//! - [`access`]: who may send postbacks (allowlists, trusted proxies).
//! - [`privacy`]: what a stored click keeps of the visitor's address.
//! - [`reports`]: per-link and per-day figures from hourly counters.
//! - [`money`]: exact decimal money.
//! - [`model`]: the records the store keeps.
//! - [`store`]: one trait; the embedded (fjall) and Redis backends; the compact click
//!   record; the outage spool that keeps writes on local disk while a backend is down.
//! - [`forward`]: the outbox worker and the ad platforms' conversion APIs (Meta, Google
//!   Ads, TikTok) and signed webhooks.
//! - [`telemetry`]: Prometheus metrics and logging.
//! - [`text`]: small text helpers (cutting at a character boundary).
//! - [`cli`]: the command-line verbs.

pub mod access;
pub mod app;
pub mod bots;
pub mod cli;
pub mod clickid;
pub mod config;
pub mod dashboard;
pub mod forward;
pub mod links;
pub mod memo;
pub mod model;
pub mod money;
pub mod networks;
pub mod postback;
pub mod privacy;
pub mod reports;
pub mod routes;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod tls;
