//! Test kit for dynamo-core: whole clusters in one process.
//!
//! - [`SimNetwork`](sim_net::SimNetwork): an in-memory [`Transport`](dynamo_core::transport::Transport)
//!   with seeded drops, delays, partitions and kills.
//! - [`Cluster`]: starts N nodes on it, kills and restarts them with their
//!   stores kept (or wiped, or rolled back to their last flush with
//!   [`BufferedStore`]s), and waits for replicas to converge.
//! - [`conformance`]: the suites every Store and Transport backend runs.
//! - [`transport_load`]: an echo handler and a closed-loop load for transport benchmarks.
//! - [`aae_bench`]: the anti-entropy benchmark (1% of a million keys
//!   repaired under a foreground load).
//! - [`Client`] and [`history`]: record what clients did and check it: no
//!   acknowledged write lost, no deleted key resurrected.
//! - [`simulation`]: seeded runs that draw the cluster, the workload and
//!   the faults from one `u64`, checked by invariants, swept by the thousand.

pub mod aae_bench;
pub mod backend;
pub mod buffered_store;
pub mod client;
pub mod cluster;
pub mod conformance;
pub mod gossip_scale;
pub mod history;
pub mod scenarios;
pub mod sim_net;
pub mod simulation;
pub mod transport_load;

pub use backend::{Backend, SimBackend};
pub use buffered_store::BufferedStore;
pub use client::Client;
pub use cluster::{test_seed, Cluster, ClusterBuilder, SimClock};
pub use history::History;
pub use sim_net::SimNetwork;
