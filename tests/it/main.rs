//! The integration suite: one test binary, real servers on port 0, real `redis-server`s.
#![allow(unreachable_pub, dead_code)]

mod helpers;
mod redis_server;
mod webdriver;

mod access;
mod api;
mod bad_input;
mod browser;
mod dashboard;
mod durability;
mod forward;
mod outage;
mod postback;
mod redirect;
mod screenshots;
mod store_contract;
mod tls;
