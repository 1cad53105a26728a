//! The dynamo-rs server: configuration, the HTTP client API, metrics, the
//! admin API, a local development cluster, HTTP client commands and a load
//! generator. `main.rs` is the command line over these modules.

pub mod backends;
pub mod bench;
pub mod client;
pub mod config;
pub mod dev;
pub mod http;
mod http_conn_io;
pub mod http_listener;
pub mod metrics;
pub mod serve;
