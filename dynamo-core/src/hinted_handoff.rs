//! Hinted handoff: delivering writes kept for an unreachable owner.
//!
//! A node that stood in for an owner keeps the key's state in its hints
//! table. A background task periodically offers each hint to its owner;
//! once the owner has durably merged it, the hint is removed (unless it
//! changed meanwhile, in which case the newer hint waits for the next
//! round). Hints survive restarts because they are stored like data.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::member::NodeId;
use crate::metrics::bump;
use crate::node::NodeCore;
use crate::replica::{decode_stored, Slot, StoredHint};
use crate::ring::key_hash;
use crate::transport::protocol::{Request, Response};

impl NodeCore {
    /// Offers every stored hint to its owner once; returns how many were
    /// delivered and removed. Owners that fail a delivery are skipped for
    /// the rest of the round.
    pub(crate) async fn deliver_hints(self: &Arc<Self>) -> Result<usize> {
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

    async fn deliver_one(self: &Arc<Self>, hint: &StoredHint) -> Result<bool> {
        let hash = key_hash(&hint.key);
        if hint.owner == self.id {
            // This node owns the key again: merge the hint into its data.
            let state = decode_stored(&hint.state)?;
            self.replica.merge(Slot::Data, hint.partition, &hint.key, hash, &state, None).await?;
        } else {
            if self.ring().member(hint.owner).is_none() {
                // The owner left the ring; ownership handoff moves this data.
                return Err(Error::NotAMember(hint.owner));
            }
            let frame =
                Request::Replicate { key: hint.key.clone(), state: hint.state.clone(), sibling_limit: None }
                    .encode();
            match self.call_peer(hint.owner, frame, self.config.replica_timeout()).await? {
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
}
