//! The dynamo-rs server: configuration, the HTTP client API, metrics, the
//! admin API, a local development cluster, HTTP client commands and a load
//! generator, behind the `dynamo-server` command line ([`cli`]).
//!
//! A binary of your own gets the same command line, configuration and
//! HTTP API with your reconcilers and store engines registered by name:
//! `dynamo_server::ServerBuilder::new().reconciler(Arc::new(MyReconciler)).run()`
//! (see [`cli`] and `examples/cart_server.rs`).

pub mod aae_cmd;
pub mod admin_aae;
pub mod admin_cluster;
pub mod auth;
pub mod backends;
pub mod bench;
#[cfg(feature = "transport-tcp")]
pub mod cert_cmd;
pub mod cli;
pub mod client;
pub mod client_token;
pub mod cluster_cmd;
pub mod config;
pub mod dev;
pub mod http;
mod http_conn_io;
pub mod http_listener;
pub mod metrics;
pub mod plugins;
pub mod process;
pub mod rate_limit;
pub mod serve;
pub mod token_cmd;
pub mod tokens;

pub use cli::ServerBuilder;
pub use plugins::Plugins;
