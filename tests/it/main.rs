//! The integration suite: one test binary, real servers on port 0, real `redis-server`s.

mod redis_server;
mod store_contract;
