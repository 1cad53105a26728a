//! Which partitions are in an exchange on this node, and with whom: a
//! replica takes part in one exchange of a partition at a time, as Riak's
//! AAE locks a partition's hashtree for the length of an exchange.
//!
//! Without it, every replica of a partition opens an exchange in the same
//! round, and a replica that missed writes is repaired by two of them at
//! once, receiving (and sending) each differing state twice. A claim is a
//! lease: a peer that vanishes mid-exchange holds the partition no longer
//! than the lease, and each message of the exchange renews it. Leases
//! run on tokio's clock, so a simulation's paused time lapses them too.
//!
//! Claims cannot lock every exchange out: when each replica of a
//! partition opens an exchange at the same moment (replicas a, b, c
//! opening towards b, c, a), each would refuse the others for ever. A
//! replica therefore gives up the claim of an exchange it opened to a
//! peer with a lower node id that opens one towards it
//! ([`Claims::claim_as_responder`]): in any such ring of requests, the
//! lowest id gets through.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::member::NodeId;

/// This node's part in a claimed exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// This node opened the exchange.
    Initiator,
    /// The peer opened it.
    Responder,
}

#[derive(Debug, Clone, Copy)]
struct Claim {
    peer: NodeId,
    role: Role,
    until: Instant,
}

/// The claimed partitions, each with its peer, role and lease.
#[derive(Debug)]
pub(crate) struct Claims {
    lease: Duration,
    held: Mutex<HashMap<u32, Claim>>,
}

impl Claims {
    /// An empty table whose claims last `lease` after their last renewal.
    pub(crate) fn new(lease: Duration) -> Claims {
        Claims { lease, held: Mutex::default() }
    }

    /// Claims `partition` for an exchange with `peer` in `role`, or renews
    /// that claim; `false` while another exchange of it holds a lease.
    pub(crate) fn claim(&self, partition: u32, peer: NodeId, role: Role) -> bool {
        let now = Instant::now();
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        match held.get(&partition) {
            Some(c) if c.until > now && (c.peer != peer || c.role != role) => false,
            _ => {
                held.insert(partition, Claim { peer, role, until: now + self.lease });
                true
            }
        }
    }

    /// Claims `partition` for an exchange `peer` opened, as
    /// [`claim`](Self::claim) with [`Role::Responder`], except that a
    /// claim this node holds for an exchange it opened itself gives way
    /// when `outranks` (the peer has the lower node id).
    pub(crate) fn claim_as_responder(&self, partition: u32, peer: NodeId, outranks: bool) -> bool {
        let now = Instant::now();
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let blocked = held.get(&partition).is_some_and(|c| {
            c.until > now
                && (c.peer != peer || c.role != Role::Responder)
                && !(outranks && c.role == Role::Initiator)
        });
        if blocked {
            return false;
        }
        held.insert(partition, Claim { peer, role: Role::Responder, until: now + self.lease });
        true
    }

    /// Renews the claim of an exchange under way; `false` if it is not
    /// this one's (it lapsed and another exchange took the partition).
    pub(crate) fn renew(&self, partition: u32, peer: NodeId, role: Role) -> bool {
        let now = Instant::now();
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        match held.get_mut(&partition) {
            Some(c) if c.peer == peer && c.role == role => {
                c.until = now + self.lease;
                true
            }
            Some(c) if c.until > now => false,
            _ => {
                held.insert(partition, Claim { peer, role, until: now + self.lease });
                true
            }
        }
    }

    /// Ends the exchange with `peer` in `role`, if it still holds the claim.
    pub(crate) fn release(&self, partition: u32, peer: NodeId, role: Role) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.get(&partition).is_some_and(|c| c.peer == peer && c.role == role) {
            held.remove(&partition);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);

    #[test]
    fn one_exchange_per_partition_at_a_time() {
        let claims = Claims::new(Duration::from_secs(60));
        assert!(claims.claim(7, A, Role::Initiator));
        assert!(claims.claim(7, A, Role::Initiator), "the same exchange renews");
        assert!(!claims.claim(7, A, Role::Responder), "the peer's own exchange waits");
        assert!(!claims.claim(7, B, Role::Responder), "another peer waits");
        assert!(!claims.renew(7, B, Role::Responder));
        assert!(claims.claim(8, B, Role::Responder), "other partitions are free");
        claims.release(7, B, Role::Responder);
        assert!(!claims.claim(7, B, Role::Responder), "only the holder releases");
        claims.release(7, A, Role::Initiator);
        assert!(claims.claim(7, B, Role::Responder));
    }

    #[test]
    fn an_exchange_from_a_lower_id_takes_the_claim_of_one_opened_here() {
        let claims = Claims::new(Duration::from_secs(60));
        assert!(claims.claim(7, B, Role::Initiator));
        assert!(!claims.claim_as_responder(7, B, false), "a higher id waits");
        assert!(claims.claim_as_responder(7, A, true), "a lower id gets through");
        assert!(!claims.claim_as_responder(7, B, true), "but never past an exchange it serves");
        claims.release(7, B, Role::Initiator);
        assert!(!claims.claim(7, B, Role::Initiator), "the opened exchange no longer holds it");
        claims.release(7, A, Role::Responder);
        assert!(claims.claim_as_responder(7, B, false));
    }

    #[tokio::test(start_paused = true)]
    async fn leases_lapse_on_tokio_time() {
        let claims = Claims::new(Duration::from_millis(800));
        assert!(claims.claim(1, A, Role::Responder));
        tokio::time::advance(Duration::from_millis(799)).await;
        assert!(!claims.claim(1, B, Role::Initiator));
        assert!(claims.renew(1, A, Role::Responder));
        tokio::time::advance(Duration::from_millis(801)).await;
        assert!(claims.claim(1, B, Role::Initiator), "the peer vanished: its lease lapsed");
    }

    #[test]
    fn a_lapsed_lease_frees_the_partition() {
        let claims = Claims::new(Duration::ZERO);
        assert!(claims.claim(1, A, Role::Responder));
        assert!(claims.claim(1, B, Role::Initiator), "the peer vanished: its lease lapsed");
        assert!(claims.renew(1, A, Role::Responder), "and B's lapsed in turn");
    }
}
