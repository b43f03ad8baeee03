//! The integration suite: one test binary, real servers on port 0, real `redis-server`s.
#![allow(unreachable_pub, dead_code)]
// The suite stands outside the library: it reads the wall clock to build click ids and
// dates, and waits for child processes (redis-server) from plain threads.
#![allow(clippy::disallowed_methods)]

mod helpers;
#[path = "../support/mmdb.rs"]
mod mmdb;
mod redis_server;
mod webdriver;

mod access;
mod api;
mod architecture;
mod bad_input;
mod browser;
mod caps;
mod cluster;
mod config;
mod dashboard;
mod deploy;
mod durability;
mod fast_path;
mod forward;
mod forward_google;
mod link_changes;
mod outage;
mod postback;
mod postback_health;
mod reconcile;
mod redirect;
mod replicas;
mod reversal;
mod routing;
mod screenshots;
mod store_contract;
mod stream;
mod tls;
