//! The replica side of the protocol: what a node answers its peers.
//!
//! Peers ask a node for its copy of a key (`Get`), to merge a state into
//! its data (`Replicate`: replication and read repair) or into a hint for
//! an unreachable owner (`StoreHint`), and to coordinate a write they
//! received but do not own (`Coordinate`). Forwarded writes are executed
//! at most once per request id and never after their sender's deadline.

use std::sync::Arc;

use bytes::Bytes;

use crate::antientropy::AntiEntropy;
use crate::causality::{Context, SiblingSet};
use crate::clock::HybridClock;
use crate::config::Config;
use crate::coordinator::{deadline_after, Coordinator};
use crate::error::{Error, Result};
use crate::gossip::{Delta, Gossip};
use crate::handoff::Handoff;
use crate::member::NodeId;
use crate::membership::Membership;
use crate::metrics::{bump, Metrics};
use crate::recent_requests::RecentRequests;
use crate::replica::{Admit, Replica, Slot};
use crate::ring::key_hash;
use crate::transport::protocol::{Request, Response, WriteRequest};
use crate::validation::{check_key, check_write, clamp_timeout};

/// Answers peers' requests from the local replica (and the coordinator,
/// for forwarded writes).
pub(crate) struct ReplicaService {
    pub(crate) config: Arc<Config>,
    pub(crate) membership: Arc<dyn Membership>,
    pub(crate) replica: Arc<Replica>,
    pub(crate) coordinator: Arc<Coordinator>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) clock: Arc<HybridClock>,
    /// Forwarded writes accepted and not yet expired (at most once each).
    pub(crate) recent: RecentRequests,
    /// The node's gossip, when it gossips.
    pub(crate) gossip: Option<Arc<Gossip>>,
    /// Ownership handoff, when the node gossips.
    pub(crate) handoff: Option<Arc<Handoff>>,
    /// Anti-entropy and tombstone purge.
    pub(crate) aae: Arc<AntiEntropy>,
}

impl ReplicaService {
    fn partition_of(&self, key: &[u8]) -> Result<u32> {
        Ok(self.membership.view().require_ring()?.partition_of(key))
    }

    fn gossip(&self) -> Result<&Gossip> {
        self.gossip
            .as_deref()
            .ok_or_else(|| Error::Protocol("this node does not gossip (fixed member list)".into()))
    }

    /// Serves one request from a peer; failures become error answers.
    pub(crate) async fn serve(&self, req: Request) -> Response {
        let result = match req {
            Request::Ping => Ok(Response::Pong),
            Request::Get { key, hint_for } => self.get(&key, hint_for).await.map(Response::State),
            Request::Replicate { key, state, sibling_limit, epoch } => {
                match self.stale_coordinator(&key, epoch) {
                    // A new write from a coordinator behind a topology change
                    // that moves the key's partition.
                    Some(current) if sibling_limit.is_some() => {
                        Err(Error::StaleRing { request: epoch, current })
                    }
                    // A hint delivery (no sibling limit, non-zero epoch):
                    // its sender forgets the hint once this node acknowledges.
                    _ => match self.check_replicates(&key, sibling_limit.is_none() && epoch != 0) {
                        Ok(()) => {
                            self.merge(Slot::Data, &key, &state, sibling_limit.map(|l| l as usize)).await
                        }
                        Err(e) => Err(e),
                    },
                }
            }
            Request::StoreHint { owner, key, state } => {
                let r = self.merge(Slot::HintFor(owner), &key, &state, None).await;
                if r.is_ok() {
                    bump(&self.metrics.hints_stored);
                }
                r
            }
            Request::Coordinate(w) => self
                .coordinate(w)
                .await
                .map(|c| Response::Written { seen_us: c.seen_us(), context: c.causal().clone() }),
            Request::GossipSyn { cluster, from, hash } => {
                self.gossip().and_then(|g| g.handle_syn(&cluster, from, hash))
            }
            Request::GossipDelta { cluster, from, entries, ring, want, want_ring } => match self.gossip() {
                Ok(g) => g.handle_delta(&cluster, from, Delta { entries, ring, want, want_ring }).await,
                Err(e) => Err(e),
            },
            Request::HandoffPull { epoch, to, partition, after, max_bytes } => match &self.handoff {
                Some(h) => h.serve_pull(epoch, to, partition, after, max_bytes).await,
                None => Err(Error::TopologyRefused(
                    "this node has a fixed member list: it hands nothing off".into(),
                )),
            },
            Request::AaeTree { from, partition, hashes, salt } => {
                self.aae.serve_tree(from, partition, &hashes, salt)
            }
            Request::AaeKeys { from, partition, digests, max_bytes } => {
                self.aae.serve_keys(from, partition, &digests, max_bytes).await
            }
            Request::AaePush { from, partition, states } => {
                self.aae.serve_push(from, partition, states).await
            }
            Request::PurgeCheck { from, partition, keys } => {
                self.aae.serve_purge_check(from, partition, &keys).await
            }
            Request::Purge { from, partition, keys } => self.aae.serve_purge(from, partition, &keys).await,
        };
        result.unwrap_or_else(|e| Response::error(&e))
    }

    /// This node's ring epoch, if a write planned under ring `epoch` is
    /// behind a topology change that moves `key`'s partition (a change
    /// that leaves the partition's preference list alone does not count).
    fn stale_coordinator(&self, key: &[u8], epoch: u64) -> Option<u64> {
        let view = self.membership.view();
        let ring = view.ring()?;
        if epoch >= ring.epoch() {
            return None;
        }
        let partition = ring.partition_of(key);
        let unmoved = view.handover().is_some_and(|h| {
            h.previous().epoch() == epoch
                && h.previous().preference_list(partition) == ring.preference_list(partition)
        });
        (!unmoved).then_some(ring.epoch())
    }

    /// Refuses a key whose partition this node no longer replicates: its
    /// copy is dropped (or being dropped), so an answer from it would pass
    /// for "not found", and a write to it would be lost. With `keep` (a
    /// hint delivery), a node a move takes the partition away from refuses
    /// too: its copy is dropped once the gaining nodes have theirs, which
    /// may have been copied before the hint arrived, and the hint's sender
    /// forgets it once acknowledged. Refused, the hint stays with its
    /// sender until it learns the move and delivers it to the new owners.
    fn check_replicates(&self, key: &[u8], keep: bool) -> Result<()> {
        let view = self.membership.view();
        let ring = view.require_ring()?;
        let partition = ring.partition_of(key);
        let id = self.coordinator.id;
        // Only gossiping nodes move data; a fixed ring keeps what it has.
        let holds = if keep {
            ring.preference_list(partition).contains(&id)
        } else {
            view.replicates(ring, id, partition)
        };
        if self.handoff.is_none() || holds {
            return Ok(());
        }
        Err(Error::NotReplica { partition, epoch: ring.epoch() })
    }

    async fn get(&self, key: &[u8], hint_for: Option<NodeId>) -> Result<Option<Bytes>> {
        check_key(&self.config, key)?;
        if hint_for.is_none() {
            self.check_replicates(key, false)?;
        }
        let slot = hint_for.map_or(Slot::Data, Slot::HintFor);
        self.replica.load_raw(slot, self.partition_of(key)?, key).await
    }

    async fn merge(&self, slot: Slot, key: &[u8], state: &[u8], limit: Option<usize>) -> Result<Response> {
        check_key(&self.config, key)?;
        let incoming =
            SiblingSet::decode(state).map_err(|e| Error::Protocol(format!("bad state for {key:?}: {e}")))?;
        // A write or hint older than the tombstone grace, for a key this
        // node lacks, may be of a purged key.
        let fresh_after = self.config.grace_cutoff_us(self.clock.physical_us());
        self.replica
            .merge(
                slot,
                self.partition_of(key)?,
                key,
                key_hash(key),
                &incoming,
                Admit { bound: limit, fresh_after_us: Some(fresh_after) },
            )
            .await?;
        Ok(Response::Ack)
    }

    /// Coordinates a write another node forwarded: at most once per
    /// request id, and never after the sender's deadline.
    async fn coordinate(&self, req: WriteRequest) -> Result<Context> {
        check_write(&self.config, &req)?;
        let timeout = clamp_timeout(&self.config, req.timeout_ms);
        let now = self.clock.physical_us();
        if now >= req.start_by_us {
            bump(&self.metrics.forwards_expired);
            return Err(Error::Expired { late_ms: (now - req.start_by_us) / 1000 });
        }
        // A deadline further out than our own request timeout is clamped.
        let start_by =
            req.start_by_us.min(now.saturating_add(self.config.request_timeout_ms.saturating_mul(1000)));
        self.recent.admit(req.id, start_by, now)?;
        let deadline = deadline_after(timeout);
        let ring = Arc::clone(self.membership.view().require_ring()?);
        let partition = ring.partition_of(&req.key);
        let result = self.coordinator.coordinate_write(&ring, partition, req, deadline, Some(start_by)).await;
        if let Err(Error::Expired { .. }) = &result {
            bump(&self.metrics.forwards_expired);
        }
        result
    }
}
