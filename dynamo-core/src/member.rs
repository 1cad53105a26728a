//! Cluster members: who a node is, where it listens, and how much it holds.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The stable identity of a node in the cluster.
///
/// A node keeps its id across restarts; ids are compared, hashed and
/// serialized as plain `u64`s, so they are cheap to put in every dot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// One member of the cluster as the ring sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node's identity.
    pub id: NodeId,
    /// The address peers use to reach the node through the [`Transport`](crate::transport::Transport).
    pub addr: String,
    /// Failure zone (rack, availability zone). Preference lists prefer
    /// distinct zones when members declare one.
    pub zone: Option<String>,
    /// Relative capacity: a member of capacity 2 owns twice the partitions
    /// of a member of capacity 1. Must be at least 1.
    pub capacity: u32,
}

impl Member {
    /// A member with capacity 1 and no zone.
    pub fn new(id: NodeId, addr: impl Into<String>) -> Self {
        Member { id, addr: addr.into(), zone: None, capacity: 1 }
    }

    /// Sets the member's zone.
    pub fn with_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Sets the member's capacity weight.
    pub fn with_capacity(mut self, capacity: u32) -> Self {
        self.capacity = capacity;
        self
    }
}
