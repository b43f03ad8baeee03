//! cakelink: a self-hosted redirect and postback service for affiliates on CAKE.
pub mod clickid;
pub mod model;
pub mod money;
pub mod store;
