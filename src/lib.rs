//! cakelink: a self-hosted redirect and postback service for affiliates on CAKE.
pub mod bots;
pub mod clickid;
pub mod config;
pub mod links;
pub mod model;
pub mod money;
pub mod networks;
pub mod store;
