//! Core of a Dynamo-style key-value store: the plugin traits and every
//! distributed algorithm, with no I/O backend of its own.
//!
//! - [`ring`]: fixed partitions, capacity-weighted ownership, preference lists.
//! - [`causality`]: dotted version vectors, siblings and client contexts.
//! - [`reconcile`]: the [`Reconciler`](reconcile::Reconciler) plugin point.
//! - [`store`]: the [`Store`](store::Store) plugin point and [`MemStore`](store::MemStore).
//! - [`transport`]: the [`Transport`](transport::Transport) plugin point and the wire protocol.
//! - [`failure`]: the [`FailureDetector`](failure::FailureDetector) plugin point.
//! - [`node`]: a node assembled from plugins, and the embedded API.
//!
//! Coordination (quorums, sloppy quorum, read repair) lives in the private
//! `coordinator` module, hinted handoff in `hinted_handoff`, per-key
//! storage in `replica`, store threads and group commit in `store_io`.

pub mod causality;
pub mod clock;
pub mod config;
mod coordinator;
mod epoch;
pub mod error;
pub mod failure;
pub mod fault_point;
mod hinted_handoff;
pub mod member;
pub mod metrics;
pub mod node;
mod recent_requests;
pub mod reconcile;
mod replica;
pub mod ring;
pub mod store;
mod store_io;
mod stored_ring;
pub mod transport;

pub use error::{Error, Result};

/// The names most users need, for one `use`.
pub mod prelude {
    pub use crate::causality::{Context, Sibling, SiblingSet};
    pub use crate::clock::{Clock, HybridClock, SystemClock};
    pub use crate::config::Config;
    pub use crate::error::{Error, Result};
    pub use crate::member::{Member, NodeId};
    pub use crate::node::{GetResult, LocalState, Node, NodeBuilder, ReadOptions, WriteOptions};
    pub use crate::reconcile::{KeepSiblings, LastWriteWins, Reconciler, ReconcilerRegistry, Resolution};
    pub use crate::ring::Ring;
    pub use crate::store::{Durability, MemStore, Store};
    pub use crate::transport::Transport;
}
