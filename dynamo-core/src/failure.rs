//! Failure detection: which peers are worth sending a request to now.
//!
//! [`OutcomeDetector`] learns from the outcome of the calls a node makes:
//! a peer that failed a call is suspected for a while and skipped when a
//! replacement is available; once the period passes it is tried again.
//! The [phi-accrual detector](crate::phi_accrual), fed by gossip exchanges
//! and replies, plugs into the same trait.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::member::NodeId;

/// What a failure detector knows of one peer, for operators.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PeerHealth {
    /// Whether the peer is worth calling now.
    pub available: bool,
    /// The suspicion level φ, for detectors that compute one.
    pub phi: Option<f64>,
    /// How long since the peer was last heard from, if ever.
    pub last_heard: Option<std::time::Duration>,
}

/// Tells the request path which peers to prefer.
pub trait FailureDetector: Send + Sync + 'static {
    /// A call to `node` succeeded.
    fn record_success(&self, node: NodeId);
    /// A call to `node` failed (timeout, unreachable).
    fn record_failure(&self, node: NodeId);
    /// Whether `node` is worth calling now. A detector never suspects a
    /// node forever: it eventually lets a call through to probe it.
    fn is_available(&self, node: NodeId) -> bool;

    /// What the detector knows of `node`; by default only
    /// [`is_available`](FailureDetector::is_available).
    fn health(&self, node: NodeId) -> PeerHealth {
        PeerHealth { available: self.is_available(node), ..PeerHealth::default() }
    }
}

/// Suspects a node for a fixed period after a failed call.
#[derive(Debug)]
pub struct OutcomeDetector {
    suspect_for: Duration,
    suspected_until: Mutex<BTreeMap<NodeId, Instant>>,
}

impl OutcomeDetector {
    /// A detector that skips a failed node for `suspect_for`.
    pub fn new(suspect_for: Duration) -> Self {
        OutcomeDetector { suspect_for, suspected_until: Mutex::new(BTreeMap::new()) }
    }
}

impl FailureDetector for OutcomeDetector {
    fn record_success(&self, node: NodeId) {
        let mut map = self.suspected_until.lock().unwrap_or_else(PoisonError::into_inner);
        map.remove(&node);
    }

    fn record_failure(&self, node: NodeId) {
        let until = Instant::now() + self.suspect_for;
        let mut map = self.suspected_until.lock().unwrap_or_else(PoisonError::into_inner);
        map.insert(node, until);
    }

    fn is_available(&self, node: NodeId) -> bool {
        let map = self.suspected_until.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&node).is_none_or(|until| Instant::now() >= *until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failed_node_is_suspected_then_probed_again() {
        let d = OutcomeDetector::new(Duration::from_secs(1));
        let n = NodeId(7);
        assert!(d.is_available(n));
        d.record_failure(n);
        assert!(!d.is_available(n));
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(d.is_available(n));
        d.record_failure(n);
        d.record_success(n);
        assert!(d.is_available(n));
    }
}
