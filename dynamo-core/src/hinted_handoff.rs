//! Hinted handoff (Dynamo §4.6): delivering writes kept for an
//! unreachable owner.
//!
//! A node that stood in for an owner keeps the key's state in its hints
//! table. A background task periodically offers each hint to its owner;
//! once the owner has durably merged it, the hint is removed (unless it
//! changed meanwhile, in which case the newer hint waits for the next
//! round). Hints survive restarts because they are stored like data.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;

use crate::background::Background;
use crate::clock::HybridClock;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::member::NodeId;
use crate::membership::Membership;
use crate::metrics::{bump, Metrics};
use crate::peers::Peers;
use crate::replica::{decode_stored, Admit, Replica, Slot, StoredHint};
use crate::ring::key_hash;
use crate::transport::protocol::{Request, Response};

/// Delivers this node's hints to their owners.
pub(crate) struct HintedHandoff {
    pub(crate) id: NodeId,
    pub(crate) config: Arc<Config>,
    pub(crate) membership: Arc<dyn Membership>,
    pub(crate) replica: Arc<Replica>,
    pub(crate) peers: Arc<Peers>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) background: Arc<Background>,
    pub(crate) clock: Arc<HybridClock>,
}

impl HintedHandoff {
    /// Offers every stored hint to its owner once; returns how many were
    /// delivered and removed. Owners that fail a delivery are skipped for
    /// the rest of the round.
    pub(crate) async fn deliver_hints(&self) -> Result<usize> {
        let mut delivered = 0;
        let mut failed_owners = BTreeSet::new();
        let mut from = Bytes::new();
        loop {
            let page = self.replica.scan_hints(from.clone(), self.config.hint_delivery_batch).await?;
            let Some(last) = page.last() else { break };
            let mut next = last.storage_key.to_vec();
            next.push(0);
            from = Bytes::from(next);
            let full = page.len() == self.config.hint_delivery_batch;
            for hint in page {
                if failed_owners.contains(&hint.owner) {
                    continue;
                }
                match self.deliver_one(&hint).await {
                    Ok(true) => delivered += 1,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::debug!(node = %self.id, owner = %hint.owner, error = %e, "hint delivery failed");
                        failed_owners.insert(hint.owner);
                    }
                }
            }
            if !full {
                break;
            }
        }
        Ok(delivered)
    }

    /// Delivers one hint to the nodes that replicate its key now: its
    /// owner while the owner still does, else (the owner left, or a
    /// topology change moved the partition away from it) the nodes of the
    /// key's current preference list, so a hint never outlives its owner's
    /// membership. The delivery carries this node's ring epoch, so that a
    /// node the partition is moving away from refuses it rather than keep
    /// it in a copy it is about to drop (a deliverer behind the move still
    /// takes the old owner for the owner).
    async fn deliver_one(&self, hint: &StoredHint) -> Result<bool> {
        let hash = key_hash(&hint.key);
        // A hint older than the tombstone grace period may carry a value
        // whose tombstone every replica has purged since: it is dropped,
        // and anti-entropy repairs whatever else it carried. A hint of no
        // sibling (a refused write's retraction) carries no value: it is
        // delivered, however old.
        let state = decode_stored(&hint.state)?;
        let cutoff = self.config.grace_cutoff_us(self.clock.physical_us());
        if !state.siblings().is_empty() && state.max_timestamp() < cutoff {
            let removed = self.replica.remove_hint_if_unchanged(hint, hash).await?;
            if removed {
                bump(&self.metrics.hints_expired);
                tracing::info!(node = %self.id, owner = %hint.owner, "dropped a hint older than the tombstone grace period");
            }
            return Ok(false);
        }
        let _slot = self.background.slot(&self.metrics).await;
        let view = self.membership.view();
        let ring = view.require_ring()?;
        // While the partition moves, a hint for a node that loses it goes to
        // the nodes that keep or gain it, never to one that loses it: that
        // node may drop its copy once the gaining ones have theirs, which
        // this hint would not be in.
        let list = ring.preference_list(hint.partition);
        let targets: Vec<NodeId> = if list.contains(&hint.owner) { vec![hint.owner] } else { list.to_vec() };
        // Non-zero marks a hint delivery (see `Request::Replicate`).
        let epoch = ring.epoch().max(1);
        drop(view);
        for target in targets {
            if target == self.id {
                // This node replicates the key (again): merge into its data.
                self.replica
                    .merge(
                        Slot::Data,
                        hint.partition,
                        &hint.key,
                        hash,
                        &state,
                        Admit { bound: None, fresh_after_us: Some(cutoff) },
                    )
                    .await?;
                continue;
            }
            let frame = Request::Replicate {
                key: hint.key.clone(),
                state: hint.state.clone(),
                sibling_limit: None,
                epoch,
            }
            .encode();
            match self.peers.call(target, frame, self.config.replica_timeout()).await? {
                Response::Ack => {}
                Response::Error(e) => return Err(e.into_error()),
                other => return Err(Error::Protocol(format!("unexpected answer to a hint: {other:?}"))),
            }
        }
        let removed = self.replica.remove_hint_if_unchanged(hint, hash).await?;
        if removed {
            bump(&self.metrics.hints_delivered);
        }
        Ok(removed)
    }

    /// Number of hints this node holds, per owner.
    pub(crate) async fn pending_hints(&self) -> Result<Vec<(NodeId, usize)>> {
        let mut counts: Vec<(NodeId, usize)> = Vec::new();
        let mut from = Bytes::new();
        loop {
            let page = self.replica.scan_hints(from.clone(), 1024).await?;
            let Some(last) = page.last() else { break };
            let mut next = last.storage_key.to_vec();
            next.push(0);
            from = Bytes::from(next);
            for h in &page {
                match counts.last_mut() {
                    Some((o, c)) if *o == h.owner => *c += 1,
                    _ => counts.push((h.owner, 1)),
                }
            }
            if page.len() < 1024 {
                break;
            }
        }
        Ok(counts)
    }

    /// Delivers hints every `hint_delivery_interval_ms` until the node stops.
    pub(crate) async fn run(handoff: std::sync::Weak<HintedHandoff>, period: std::time::Duration) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(handoff) = handoff.upgrade() else { return };
            if let Err(e) = handoff.deliver_hints().await {
                tracing::warn!(node = %handoff.id, error = %e, "hint delivery round failed");
            }
        }
    }
}
