//! Ownership handoff (Dynamo §4.9): after a committed topology change,
//! each partition's data moves to the nodes that gain it, and the nodes
//! that lose it drop their copy once it has.
//!
//! A node that gains a partition copies it from the nodes that lose it
//! (see [`Handover::sources`]): it asks each for batches of the
//! partition's contiguous key range, in key order, through the
//! [`Transport`](crate::transport::Transport), and merges every state it
//! receives with the causal merge, so writes that reach it meanwhile (it
//! is already written to, see [`crate::topology`]) are never lost. Batches
//! are bounded in bytes and paced to `handoff_max_bytes_per_sec`; at most
//! `handoff_concurrency` partitions are copied at once. Once every source
//! has sent its whole range and the copy is flushed to disk, the node
//! reports the partition in its gossip entry. A copy interrupted by a
//! crash of either side starts again from the beginning of the range
//! (merges are idempotent), so nothing is lost.
//!
//! When every gaining node has reported a partition, it is settled; a node
//! that replicates it no longer (nor any partition it is not written to)
//! deletes its copy.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::background::Background;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::gossip::Gossip;
use crate::member::NodeId;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::replica::{check_batch, Replica};
use crate::transport::protocol::{Request, Response};

/// The most bytes one handoff batch may carry, whatever a peer asks for.
const MAX_BATCH_BYTES: u32 = 8 << 20;

/// Where one partition copy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferState {
    /// Not started (or interrupted, to start again).
    Pending,
    /// Being copied by the gaining node.
    Active,
    /// The gaining node holds a complete copy.
    Done,
}

/// One partition copy of the current move, as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferStatus {
    /// The partition.
    pub partition: u32,
    /// The nodes it is copied from.
    pub from: Vec<NodeId>,
    /// The node that gains it.
    pub to: NodeId,
    /// Where it stands.
    pub state: TransferState,
    /// Keys this node received (as `to`) or sent (as one of `from`) so far.
    pub keys: u64,
    /// Bytes of key states this node received or sent so far.
    pub bytes: u64,
}

/// The move of data to the current ring, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffStatus {
    /// The current ring's epoch (0 before a ring is known).
    pub epoch: u64,
    /// The epoch data moves away from, while it moves.
    pub from_epoch: Option<u64>,
    /// Partitions whose data is where the current ring places it.
    pub settled_partitions: u32,
    /// All partitions.
    pub partitions: u32,
    /// Every partition copy of the move, ascending by partition and node.
    pub transfers: Vec<TransferStatus>,
}

impl HandoffStatus {
    /// Copies in `state`.
    pub fn count(&self, state: TransferState) -> usize {
        self.transfers.iter().filter(|t| t.state == state).count()
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    keys: u64,
    bytes: u64,
}

/// What this node did of the current move.
#[derive(Default)]
struct Progress {
    /// The epoch the maps below are about.
    epoch: u64,
    /// Partitions being copied here now.
    active: BTreeSet<u32>,
    /// Received per partition.
    received: BTreeMap<u32, Counts>,
    /// Sent per (partition, gaining node).
    sent: BTreeMap<(u32, NodeId), Counts>,
    /// The view (epoch, settled count) the last drop pass ran under.
    swept: Option<(u64, u32)>,
}

impl Progress {
    fn at(&mut self, epoch: u64) -> &mut Self {
        if self.epoch != epoch {
            *self = Progress { epoch, ..Progress::default() };
        }
        self
    }
}

/// Copies gained partitions here, serves copies to gaining nodes, and
/// drops what this node no longer replicates.
pub(crate) struct Handoff {
    pub(crate) id: NodeId,
    pub(crate) config: Arc<Config>,
    pub(crate) membership: Arc<dyn Membership>,
    pub(crate) gossip: Arc<Gossip>,
    pub(crate) replica: Arc<Replica>,
    pub(crate) peers: Arc<Peers>,
    pub(crate) metrics: Arc<Metrics>,
    /// Slots for background work: each batch copied holds one.
    pub(crate) background: Arc<Background>,
    progress: Mutex<Progress>,
}

impl Handoff {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: NodeId,
        config: Arc<Config>,
        membership: Arc<dyn Membership>,
        gossip: Arc<Gossip>,
        replica: Arc<Replica>,
        peers: Arc<Peers>,
        metrics: Arc<Metrics>,
        background: Arc<Background>,
    ) -> Self {
        Handoff {
            id,
            config,
            membership,
            gossip,
            replica,
            peers,
            metrics,
            background,
            progress: Mutex::default(),
        }
    }

    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers a gaining node's request for a batch of `partition`.
    ///
    /// # Errors
    /// [`Error::NotReady`] when this node is not at ring `epoch` (the asker
    /// tries again once gossip has spread it); [`Error::TopologyRefused`]
    /// when `to` does not gain `partition` under it; store errors.
    pub(crate) async fn serve_pull(
        &self,
        epoch: u64,
        to: NodeId,
        partition: u32,
        after: Option<Bytes>,
        max_bytes: u32,
    ) -> Result<Response> {
        let view = self.membership.view();
        let ring = Arc::clone(view.require_ring()?);
        if ring.epoch() != epoch {
            return Err(Error::NotReady(format!(
                "this node is at ring epoch {}, the handoff asks for epoch {epoch}",
                ring.epoch()
            )));
        }
        let gains = partition < ring.partitions()
            && view.handover().is_some_and(|h| h.gained(&ring, partition).contains(&to));
        if !gains {
            return Err(Error::TopologyRefused(format!(
                "node {to} does not gain partition {partition} under ring epoch {epoch}"
            )));
        }
        drop(view);
        let max = max_bytes.clamp(1, MAX_BATCH_BYTES) as usize;
        let (entries, done) = self.replica.scan_partition(partition, after, max).await?;
        tracing::debug!(node = %self.id, %to, partition, keys = entries.len(), done, "served a handoff batch");
        let bytes: u64 = entries.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        {
            let mut progress = self.progress();
            let sent = progress.at(epoch).sent.entry((partition, to)).or_default();
            sent.keys += entries.len() as u64;
            sent.bytes += bytes;
        }
        crate::metrics::add(&self.metrics.handoff_keys_sent, entries.len() as u64);
        crate::metrics::add(&self.metrics.handoff_bytes_sent, bytes);
        Ok(Response::HandoffBatch { entries, done })
    }

    /// Copies `partition` from each of `sources` into the local data,
    /// flushes, and reports it complete.
    async fn copy(&self, epoch: u64, partition: u32, sources: &[NodeId]) -> Result<()> {
        let ring = Arc::clone(self.membership.view().require_ring()?);
        for &source in sources {
            let mut after = None;
            loop {
                let slot = self.background.slot(&self.metrics).await;
                let frame = Request::HandoffPull {
                    epoch,
                    to: self.id,
                    partition,
                    after: after.clone(),
                    max_bytes: self.config.handoff_batch_bytes,
                }
                .encode();
                let (entries, done) =
                    match self.peers.call(source, frame, self.config.request_timeout()).await? {
                        Response::HandoffBatch { entries, done } => (entries, done),
                        Response::Error(e) => return Err(e.into_error()),
                        other => {
                            return Err(Error::Protocol(format!(
                                "unexpected answer to a handoff pull: {other:?}"
                            )))
                        }
                    };
                let bytes: u64 = entries.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
                let count = entries.len() as u64;
                let last = entries.last().map(|(key, _)| key.clone());
                // A batch is checked whole before anything of it is stored.
                let states = check_batch(&self.config, &ring, partition, entries, "handoff")?;
                self.replica.merge_many(partition, states).await?;
                drop(slot);
                {
                    let mut progress = self.progress();
                    let received = progress.at(epoch).received.entry(partition).or_default();
                    received.keys += count;
                    received.bytes += bytes;
                }
                crate::metrics::add(&self.metrics.handoff_keys_received, count);
                crate::metrics::add(&self.metrics.handoff_bytes_received, bytes);
                if self.config.handoff_max_bytes_per_sec > 0 && bytes > 0 {
                    let secs = bytes as f64 / self.config.handoff_max_bytes_per_sec as f64;
                    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                }
                match last {
                    Some(key) if !done => after = Some(key),
                    _ => break,
                }
            }
        }
        // The report lets the losing nodes drop their copy: this one must
        // survive a crash first.
        self.replica.flush().await?;
        tracing::debug!(node = %self.id, partition, epoch, ?sources, "copied a gained partition");
        self.gossip.report_received(epoch, partition).await;
        crate::metrics::bump(&self.metrics.handoff_partitions_received);
        Ok(())
    }

    /// One pass: starts copies of gained partitions (up to the concurrency
    /// cap) in `copies`, and drops partitions this node is no longer
    /// written to. Copies live in the caller's set, so they stop with it.
    pub(crate) async fn pass(self: &Arc<Self>, copies: &mut JoinSet<bool>) {
        let view = self.membership.view();
        let Some(ring) = view.ring().cloned() else { return };
        let epoch = ring.epoch();
        if let Some(handover) = view.handover() {
            let report = self.gossip.own_report();
            let wanted: Vec<(u32, Vec<NodeId>)> = (0..ring.partitions())
                .filter(|&p| !handover.is_settled(p) && !report.has(epoch, p))
                .filter(|&p| handover.gained(&ring, p).contains(&self.id))
                .map(|p| (p, handover.sources(&ring, p)))
                .collect();
            for (partition, sources) in wanted {
                {
                    let mut progress = self.progress();
                    let progress = progress.at(epoch);
                    if progress.active.contains(&partition) {
                        continue;
                    }
                    if progress.active.len() >= self.config.handoff_concurrency {
                        break;
                    }
                    progress.active.insert(partition);
                }
                let me = Arc::clone(self);
                copies.spawn(async move {
                    let result = me.copy(epoch, partition, &sources).await;
                    let mut progress = me.progress();
                    let progress = progress.at(epoch);
                    progress.active.remove(&partition);
                    if let Err(e) = &result {
                        tracing::debug!(node = %me.id, partition, error = %e, "handoff interrupted; it starts again");
                        progress.received.remove(&partition);
                    }
                    result.is_ok()
                });
            }
        }
        let settled = view.handover().map_or(ring.partitions(), |h| {
            (0..ring.partitions()).filter(|&p| h.is_settled(p)).count() as u32
        });
        let sweep = Some((epoch, settled));
        if self.progress().swept == sweep {
            return;
        }
        let stale: Vec<u32> =
            (0..ring.partitions()).filter(|&p| !view.write_owners(&ring, p).0.contains(&self.id)).collect();
        drop(view);
        for partition in stale {
            match self.replica.drop_partition(partition).await {
                Ok(0) => {}
                Ok(n) => {
                    crate::metrics::bump(&self.metrics.handoff_partitions_dropped);
                    tracing::info!(node = %self.id, partition, keys = n, "dropped a partition this node no longer replicates");
                }
                Err(e) => {
                    tracing::warn!(node = %self.id, partition, error = %e, "cannot drop a partition");
                    return;
                }
            }
        }
        self.progress().swept = sweep;
    }

    /// The current move as this node sees it.
    pub(crate) fn status(&self) -> HandoffStatus {
        let view = self.membership.view();
        let Some(ring) = view.ring() else {
            return HandoffStatus {
                epoch: 0,
                from_epoch: None,
                settled_partitions: 0,
                partitions: 0,
                transfers: Vec::new(),
            };
        };
        let epoch = ring.epoch();
        let mut status = HandoffStatus {
            epoch,
            from_epoch: None,
            settled_partitions: ring.partitions(),
            partitions: ring.partitions(),
            transfers: Vec::new(),
        };
        let Some(handover) = view.handover() else { return status };
        status.from_epoch = Some(handover.previous().epoch());
        status.settled_partitions = (0..ring.partitions()).filter(|&p| handover.is_settled(p)).count() as u32;
        let mut progress = self.progress();
        let progress = progress.at(epoch);
        for p in 0..ring.partitions() {
            let from = handover.sources(ring, p);
            for to in handover.gained(ring, p) {
                let done = handover.is_settled(p)
                    || view.member(to).is_some_and(|_| self.gossip.reported(to, epoch, p));
                let counts = if to == self.id {
                    progress.received.get(&p).copied().unwrap_or_default()
                } else {
                    progress.sent.get(&(p, to)).copied().unwrap_or_default()
                };
                let state = if done {
                    TransferState::Done
                } else if (to == self.id && progress.active.contains(&p)) || counts.keys > 0 {
                    TransferState::Active
                } else {
                    TransferState::Pending
                };
                status.transfers.push(TransferStatus {
                    partition: p,
                    from: from.clone(),
                    to,
                    state,
                    keys: counts.keys,
                    bytes: counts.bytes,
                });
            }
        }
        status
    }

    /// Runs a pass every `handoff_interval_ms`, and at once whenever the
    /// view changes, until the node stops.
    pub(crate) async fn run(handoff: std::sync::Weak<Handoff>) {
        let Some((mut changes, period)) =
            handoff.upgrade().map(|h| (h.membership.subscribe(), h.config.handoff_interval()))
        else {
            return;
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Dropped (aborting every copy) when the node stops this task.
        let mut copies = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                changed = changes.changed() => if changed.is_err() { return },
                Some(done) = copies.join_next() => {
                    // A failed copy waits for the next tick: no retry storm
                    // against a peer that is down or not at the epoch yet.
                    if !matches!(done, Ok(true)) {
                        continue;
                    }
                }
                _ = tick.tick() => {}
            }
            let Some(handoff) = handoff.upgrade() else { return };
            handoff.pass(&mut copies).await;
        }
    }
}
