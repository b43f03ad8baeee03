//! The integration suite: one test binary, real servers on port 0, real `redis-server`s.
#![allow(unreachable_pub)]

mod redis_server;
mod store_contract;
