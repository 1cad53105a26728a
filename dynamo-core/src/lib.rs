//! Core of a Dynamo-style key-value store: the plugin traits and every
//! distributed algorithm, with no I/O backend of its own.
//!
//! - [`ring`]: fixed partitions, capacity-weighted ownership, preference lists.
//! - [`causality`]: dotted version vectors, siblings and client contexts.
//! - [`reconcile`]: the [`Reconciler`](reconcile::Reconciler) plugin point.
//! - [`store`]: the [`Store`](store::Store) plugin point and [`MemStore`](store::MemStore).
//! - [`transport`]: the [`Transport`](transport::Transport) plugin point and the wire protocol.
//! - [`failure`]: the [`FailureDetector`](failure::FailureDetector) plugin point.
//! - [`membership`]: the [`Membership`](membership::Membership) plugin point
//!   and [`StaticMembership`](membership::StaticMembership).
//! - [`topology`]: staged joins, leaves and removes, plans, and the
//!   transition between two rings; [`handoff`] moves the data.
//! - [`node`]: a node assembled from plugins, and the embedded API.
//! - [`merkle`]: per-partition Merkle (tictac) trees, and [`antientropy`]:
//!   the exchanges that compare them between replicas and repair what
//!   differs, and the tombstone purge.
//! - [`admission`]: the controller that sizes background work (exchanges,
//!   hint delivery, handoff) by foreground latency.
//!
//! The request path, one module per role (each names its paper section):
//! [`coordinator`] (client requests, quorums), [`sloppy_quorum`] (who is
//! asked, who stands in), [`read_repair`], [`replica_service`] (what peers
//! are answered), [`hinted_handoff`]; [`clock`] holds the hybrid logical
//! clock and [`fault_point`] the simulation's fault points. Per-key storage
//! (`replica`), actor epochs (`epoch`), store threads and group commit
//! (`store_io`) are private.

pub mod admission;
pub mod antientropy;
mod background;
pub mod causality;
pub mod clock;
pub mod config;
pub mod coordinator;
mod epoch;
pub mod error;
pub mod failure;
pub mod fault_point;
pub mod gossip;
pub mod handoff;
pub mod hinted_handoff;
pub mod member;
pub mod membership;
pub mod merkle;
pub mod metrics;
pub mod node;
mod peers;
pub mod phi_accrual;
pub mod read_repair;
mod recent_requests;
pub mod reconcile;
mod replica;
pub mod replica_service;
pub mod ring;
pub mod sloppy_quorum;
pub mod store;
mod store_io;
mod stored_ring;
pub mod topology;
pub mod transport;
mod validation;

pub use error::{Error, Result};

/// The names most users need, for one `use`.
pub mod prelude {
    pub use crate::causality::{Context, Sibling, SiblingSet};
    pub use crate::clock::{Clock, HybridClock, SystemClock};
    pub use crate::config::Config;
    pub use crate::error::{Error, Result};
    pub use crate::member::{Member, NodeId};
    pub use crate::membership::{ClusterView, Membership, StaticMembership};
    pub use crate::node::{GetResult, LocalState, Node, NodeBuilder, ReadOptions, WriteOptions};
    pub use crate::reconcile::{KeepSiblings, LastWriteWins, Reconciler, ReconcilerRegistry, Resolution};
    pub use crate::ring::Ring;
    pub use crate::store::{Durability, MemStore, Store};
    pub use crate::transport::Transport;
}
