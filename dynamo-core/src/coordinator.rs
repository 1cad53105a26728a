//! The coordinator (Dynamo §4.5): a client request's way through the
//! cluster, from whichever node received it.
//!
//! Writes are coordinated by a node of the key's preference list (another
//! node forwards them one hop). The coordinator makes the new dot, stores
//! the new state, sends it to the other replicas and answers after W acks.
//! Reads ask the replicas and answer after R; once every replica answered,
//! [read repair](crate::read_repair) pushes the merged state back to stale
//! ones. Who is asked, and who stands in for an owner that cannot be
//! reached, is the [sloppy quorum](crate::sloppy_quorum)'s choice.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::causality::{Context, SiblingSet};
use crate::clock::HybridClock;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::failure::FailureDetector;
use crate::member::NodeId;
use crate::membership::Membership;
use crate::metrics::{bump, Metrics};
use crate::peers::Peers;
use crate::read_repair::ReadRepair;
use crate::replica::{Admit, LocalWrite, Replica, Slot, WriteIntent};
use crate::ring::{key_hash, Ring};
use crate::sloppy_quorum::{plan_read, plan_write, Plan, Target};
use crate::transport::protocol::{Request, Response, WriteRequest};
use crate::transport::TransportError;
use crate::validation::{check_key, check_quorum, check_write};

/// An answer (or a final failure) of one slot of a fan-out.
enum Outcome<T> {
    /// A slot's answer: the owner whose slot it is, and the answer (a
    /// hedge may answer for a slot its owner answers too).
    Answered(NodeId, T),
    Failed,
    /// The replica refused the request on its merits (the sibling bound):
    /// no spare is asked instead, and the error reaches the client.
    Refused(Error),
}

/// A refused write to take back (see `Coordinator::retract_refused`).
struct Retraction<'a> {
    /// This node's slot of the write.
    local: Target,
    /// The write as stored here.
    written: &'a LocalWrite,
    /// Owners asked to replicate it.
    remote_owners: Vec<NodeId>,
    /// Stand-ins that kept it as a hint.
    stand_ins: Vec<Target>,
}

/// An instant `timeout` from now, or very far away if that overflows.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
}

/// Coordinates client requests: plans them, fans them out, waits for the
/// quorum.
pub(crate) struct Coordinator {
    pub(crate) id: NodeId,
    pub(crate) config: Arc<Config>,
    pub(crate) membership: Arc<dyn Membership>,
    pub(crate) detector: Arc<dyn FailureDetector>,
    pub(crate) replica: Arc<Replica>,
    pub(crate) peers: Arc<Peers>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) clock: Arc<HybridClock>,
    pub(crate) read_repair: ReadRepair,
}

impl Coordinator {
    fn ring(&self) -> Result<Arc<Ring>> {
        Ok(Arc::clone(self.membership.view().require_ring()?))
    }

    /// The nodes a write of `partition` goes to, and the acknowledgements
    /// it needs beyond W (see [`ClusterView::write_owners`](crate::membership::ClusterView::write_owners)).
    fn write_owners(&self, ring: &Ring, partition: u32) -> (Vec<NodeId>, usize) {
        let view = self.membership.view();
        let (owners, extra) = view.write_owners(ring, partition);
        (owners.into_owned(), extra)
    }

    /// Calls every target, replacing a failed one by the next spare, and
    /// reports each slot's outcome on `progress` as it happens. Returns the
    /// answers of every slot that got one. An answer `counts` rejects is
    /// treated as a failure (the next spare is asked).
    ///
    /// Each call has the replica timeout, not the client's deadline: the
    /// caller stops waiting at its deadline, but replication (and the
    /// answers read repair needs) carries on in the background.
    async fn fan_out<T, F, Fut>(
        self: Arc<Self>,
        plan: Plan,
        call: F,
        counts: impl Fn(Target, &T) -> bool,
        progress: mpsc::UnboundedSender<Outcome<T>>,
    ) -> Vec<(Target, T)>
    where
        T: Clone + Send + 'static,
        F: Fn(Target) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let Plan { targets, mut spares } = plan;
        let tagged = |t: Target| {
            let fut = call(t);
            async move { (t, fut.await) }
        };
        let mut pending: FuturesUnordered<_> = targets.into_iter().map(tagged).collect();
        let mut answers = Vec::new();
        while let Some((target, result)) = pending.next().await {
            let failed = match result {
                // A hedge counts only with an answer worth counting; else
                // the slot it hedged is still the owner's.
                Ok(answer) if target.hedge && !counts(target, &answer) => false,
                Err(_) if target.hedge => false,
                Ok(answer) if counts(target, &answer) => {
                    let _ = progress.send(Outcome::Answered(target.owner, answer.clone()));
                    answers.push((target, answer));
                    continue;
                }
                Ok(_) => {
                    tracing::debug!(node = %self.id, peer = %target.node, "answer does not count; asking a spare");
                    true
                }
                Err(e @ Error::TooManySiblings { .. }) => {
                    let _ = progress.send(Outcome::Refused(e));
                    false
                }
                Err(Error::StaleRing { .. }) => {
                    // The owner is up and at a newer ring: a stand-in's hint
                    // would hide the write from reads of the owners.
                    let _ = progress.send(Outcome::Failed);
                    false
                }
                Err(e) => {
                    tracing::debug!(node = %self.id, peer = %target.node, error = %e, "replica call failed");
                    true
                }
            };
            if failed {
                match spares.pop_front() {
                    Some(spare) => pending.push(tagged(Target::stand_in(spare, target.owner))),
                    None => {
                        let _ = progress.send(Outcome::Failed);
                    }
                }
            }
        }
        answers
    }

    /// Coordinates a client write (put or delete), forwarding it to a
    /// preference-list node when this node is not one.
    ///
    /// A delete without a context first reads the key at R and deletes
    /// what that read saw (as Riak does), so it removes the value even
    /// through a replica that missed the write.
    pub(crate) async fn write(self: &Arc<Self>, mut req: WriteRequest, timeout: Duration) -> Result<Context> {
        check_write(&self.config, &req)?;
        let deadline = deadline_after(timeout);
        if req.value.is_none() && req.context.is_none() {
            let seen = self.read_until(req.key.clone(), self.config.r, deadline).await?;
            req.seen_us = req.seen_us.max(seen.max_timestamp());
            req.context = Some(seen.context().clone());
        }
        let ring = self.ring()?;
        let partition = ring.partition_of(&req.key);
        if self.write_owners(&ring, partition).0.contains(&self.id) {
            return self.coordinate_write(&ring, partition, req, deadline, None).await;
        }
        self.forward_write(&ring, partition, req, deadline).await
    }

    /// Sends a write to a preference-list node to coordinate.
    ///
    /// Each attempt gives the coordinator one replica timeout (or what is
    /// left of the client's deadline) to start the write, as an absolute
    /// deadline it checks itself. A coordinator that certainly did not
    /// execute the write (connection refused, an answer saying so) is
    /// replaced by the next; one that may have (no answer in time, a
    /// connection lost mid-call) is not, because a second coordinator
    /// would make the one client write two events: the client gets a
    /// timeout, whose outcome is unknown, instead.
    async fn forward_write(
        self: &Arc<Self>,
        ring: &Ring,
        partition: u32,
        req: WriteRequest,
        deadline: Instant,
    ) -> Result<Context> {
        let (mut candidates, _) = self.write_owners(ring, partition);
        if self.config.sloppy_quorum {
            // Suspected owners are not worth a deadline: stand in for them.
            candidates.retain(|n| self.detector.is_available(*n));
        } else {
            // Known-good nodes first; suspected ones as a last resort.
            candidates.sort_by_key(|n| !self.detector.is_available(*n));
        }
        for node in candidates {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let attempt = remaining.min(self.config.replica_timeout());
            let mut fwd = req.clone();
            // The coordinator answers (with its ack count) a little before
            // we give up, and never starts the write after we have.
            fwd.timeout_ms = (attempt.as_millis() as u64 * 9 / 10).max(1);
            fwd.start_by_us = self.clock.physical_us().saturating_add(attempt.as_micros() as u64);
            let frame = Request::Coordinate(fwd).encode();
            match self.peers.call(node, frame, attempt).await {
                Ok(Response::Written { context, seen_us }) => {
                    bump(&self.metrics.forwarded);
                    self.clock.observe(seen_us);
                    return Ok(Context::new(context).with_seen(seen_us));
                }
                Ok(Response::Error(e)) => {
                    let e = e.into_error();
                    if !e.not_executed() {
                        return Err(e);
                    }
                    tracing::debug!(peer = %node, error = %e, "forwarded write not executed; trying the next owner");
                }
                Ok(other) => {
                    return Err(Error::Protocol(format!(
                        "unexpected answer to a forwarded write: {other:?}"
                    )));
                }
                Err(Error::Transport(TransportError::Refused { .. })) | Err(Error::NotAMember(_)) => {
                    tracing::debug!(peer = %node, "forwarding refused; trying the next owner");
                }
                Err(e) => {
                    // The coordinator may have executed the write: never
                    // send it elsewhere. The outcome is unknown.
                    tracing::debug!(peer = %node, error = %e, "forwarded write unanswered; outcome unknown");
                    bump(&self.metrics.quorum_failures);
                    return Err(match e {
                        Error::Transport(TransportError::Timeout { .. }) => {
                            Error::Timeout { acks: 0, needed: req.w }
                        }
                        _ => Error::QuorumFailed { acks: 0, needed: req.w },
                    });
                }
            }
        }
        if self.config.sloppy_quorum && Instant::now() < deadline {
            // No owner reachable: coordinate here, as a stand-in.
            return self.coordinate_write(ring, partition, req, deadline, None).await;
        }
        bump(&self.metrics.quorum_failures);
        Err(Error::QuorumFailed { acks: 0, needed: req.w })
    }

    /// Coordinates a write on this node: local write, then replication.
    /// `start_by_us`: a forwarded write's deadline for starting at all.
    pub(crate) async fn coordinate_write(
        self: &Arc<Self>,
        ring: &Ring,
        partition: u32,
        req: WriteRequest,
        deadline: Instant,
        start_by_us: Option<u64>,
    ) -> Result<Context> {
        bump(&self.metrics.puts);
        let (owners, extra) = self.write_owners(ring, partition);
        // While the partition's data moves, the nodes gaining it must
        // acknowledge too (see `topology`).
        let needed = req.w + extra;
        let Plan { mut targets, mut spares } =
            plan_write(ring, partition, &owners, self.id, self.detector.as_ref(), self.config.sloppy_quorum);
        if !targets.iter().any(|t| t.node == self.id) {
            // Coordinating as a stand-in: take the slot of an owner that is
            // down (or the last one) and keep the write as its hint.
            let i = targets
                .iter()
                .position(|t| t.is_stand_in() || !self.detector.is_available(t.owner))
                .unwrap_or(targets.len() - 1);
            if targets[i].is_stand_in() {
                spares.push_front(targets[i].node);
            }
            targets[i].node = self.id;
        }
        spares.retain(|n| *n != self.id);
        let local = targets.iter().copied().find(|t| t.node == self.id).expect("self is a target");
        let hash = key_hash(&req.key);
        let written = self
            .replica
            .write(WriteIntent {
                key: &req.key,
                hash,
                partition,
                slot: local.slot(),
                context: req.context.as_ref(),
                seen_us: req.seen_us,
                value: req.value.clone(),
                content_type: req.content_type.clone(),
                start_by_us,
                max_siblings: self.config.max_siblings,
            })
            .await?;
        if local.is_stand_in() {
            bump(&self.metrics.hints_stored);
            bump(&self.metrics.fallback_writes);
        }
        let state = Bytes::from(written.state.encode());
        let limit = u32::try_from(self.config.max_siblings).ok();
        let replicate = Request::Replicate {
            key: req.key.clone(),
            state: state.clone(),
            sibling_limit: limit,
            epoch: ring.epoch(),
        }
        .encode();
        let remote: Vec<Target> = targets.into_iter().filter(|t| t.node != self.id).collect();
        let remote_owners: Vec<NodeId> = remote.iter().filter(|t| !t.is_stand_in()).map(|t| t.node).collect();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let core = Arc::clone(self);
        let key = req.key.clone();
        let call = move |t: Target| {
            let core = Arc::clone(&core);
            let frame = match t.slot() {
                Slot::Data => replicate.clone(),
                Slot::HintFor(owner) => {
                    Request::StoreHint { owner, key: key.clone(), state: state.clone() }.encode()
                }
            };
            async move {
                match core.peers.call(t.node, frame, core.config.replica_timeout()).await? {
                    Response::Ack => {
                        if t.is_stand_in() {
                            bump(&core.metrics.fallback_writes);
                        }
                        Ok(t)
                    }
                    Response::Error(e) => Err(e.into_error()),
                    other => Err(Error::Protocol(format!("unexpected answer to a replication: {other:?}"))),
                }
            }
        };
        let plan = Plan { targets: remote, spares };
        tokio::spawn(Arc::clone(self).fan_out(plan, call, |_, _| true, tx));
        let mut acks = 1;
        let mut refused = None;
        // Stand-ins that kept the write as a hint: a retraction reaches
        // them too.
        let mut stand_ins = Vec::new();
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        while acks < needed {
            tokio::select! {
                biased;
                outcome = rx.recv() => match outcome {
                    Some(Outcome::Answered(_, t)) => {
                        acks += 1;
                        if t.is_stand_in() {
                            stand_ins.push(t);
                        }
                    }
                    Some(Outcome::Failed) => {}
                    Some(Outcome::Refused(e)) => refused = Some(e),
                    None => {
                        bump(&self.metrics.quorum_failures);
                        if let Some(e) = refused {
                            // Every replica answered and too few accepted:
                            // the write is refused, so it must not take
                            // effect later through the copies that exist.
                            // If the retraction cannot be stored, the write
                            // may still take effect: the outcome is unknown,
                            // and the client hears so rather than "refused".
                            let retraction = Retraction { local, written: &written, remote_owners, stand_ins };
                            self.retract_refused(&req.key, partition, hash, retraction).await?;
                            return Err(e);
                        }
                        return Err(Error::QuorumFailed { acks, needed });
                    }
                },
                () = &mut timer => {
                    bump(&self.metrics.quorum_failures);
                    return Err(Error::Timeout { acks, needed });
                }
            }
        }
        Ok(written.context)
    }

    /// Takes back a write every replica answered for but too few accepted
    /// (the sibling bound): retracts it locally before the client hears of
    /// the refusal, then pushes the retraction to the replicas in the
    /// background; they drop their copy when they merge it (read repair
    /// does, should a push fail).
    ///
    /// # Errors
    /// The store error when the local retraction cannot be stored.
    async fn retract_refused(
        self: &Arc<Self>,
        key: &Bytes,
        partition: u32,
        hash: u64,
        retraction: Retraction<'_>,
    ) -> Result<()> {
        let Retraction { local, written, remote_owners, stand_ins } = retraction;
        let dot = &written.dot;
        let state = match self.replica.retract(local.slot(), partition, key, hash, dot).await {
            Ok(Some(state)) => state,
            Ok(None) => {
                // The local copy is gone: a hint delivered meanwhile, or a
                // partition a move took away. The copies elsewhere still
                // need the retraction: the written state, taken back.
                let mut state = written.state.clone();
                state.retract(dot);
                if local.is_stand_in() {
                    // Kept as a hint again, delivered to the owner.
                    self.replica.merge(local.slot(), partition, key, hash, &state, Admit::default()).await?;
                }
                state
            }
            Err(e) => {
                tracing::warn!(node = %self.id, error = %e, "cannot retract a refused write: its outcome is unknown");
                return Err(e);
            }
        };
        let state = Bytes::from(state.encode());
        let replicate =
            Request::Replicate { key: key.clone(), state: state.clone(), sibling_limit: None, epoch: 0 };
        let mut pushes: Vec<(NodeId, Bytes)> =
            remote_owners.into_iter().map(|node| (node, replicate.encode())).collect();
        for t in stand_ins {
            let hint = Request::StoreHint { owner: t.owner, key: key.clone(), state: state.clone() };
            pushes.push((t.node, hint.encode()));
        }
        let core = Arc::clone(self);
        tokio::spawn(async move {
            for (node, frame) in pushes {
                if let Err(e) = core.peers.call(node, frame, core.config.replica_timeout()).await {
                    tracing::debug!(peer = %node, error = %e, "retraction not delivered; read repair will");
                }
            }
        });
        Ok(())
    }

    /// Reads `key` from R replicas and merges their answers; stale
    /// replicas are repaired in the background once all have answered.
    pub(crate) async fn read(
        self: &Arc<Self>,
        key: Bytes,
        r: usize,
        timeout: Duration,
    ) -> Result<SiblingSet> {
        self.read_until(key, r, deadline_after(timeout)).await
    }

    /// [`read`](Self::read) with an absolute deadline.
    ///
    /// While this node sees the key's partition still moving, it reads the
    /// previous owners; if one of them answers that it dropped its copy,
    /// the move has settled (a node drops only then) and the read starts
    /// again on the new owners.
    async fn read_until(self: &Arc<Self>, key: Bytes, r: usize, deadline: Instant) -> Result<SiblingSet> {
        check_key(&self.config, &key)?;
        check_quorum(&self.config, "r", r)?;
        bump(&self.metrics.gets);
        let ring = self.ring()?;
        let partition = ring.partition_of(&key);
        let view = self.membership.view();
        let owners = view.read_owners(&ring, partition).to_vec();
        drop(view);
        let moved = Arc::new(AtomicBool::new(false));
        let first = self.read_from(&ring, key.clone(), r, deadline, &owners, Arc::clone(&moved)).await;
        let new_owners = ring.preference_list(partition);
        match first {
            Err(_) if moved.load(Ordering::Relaxed) && owners != new_owners => {
                self.read_from(&ring, key, r, deadline, new_owners, Arc::new(AtomicBool::new(false))).await
            }
            other => other,
        }
    }

    /// Reads `key` from R of `owners` (and their stand-ins); sets `moved`
    /// when an owner answers that it no longer replicates the partition.
    async fn read_from(
        self: &Arc<Self>,
        ring: &Ring,
        key: Bytes,
        r: usize,
        deadline: Instant,
        owners: &[NodeId],
        moved: Arc<AtomicBool>,
    ) -> Result<SiblingSet> {
        let partition = ring.partition_of(&key);
        let hash = key_hash(&key);
        let plan = plan_read(ring, partition, owners, self.detector.as_ref(), self.config.sloppy_quorum);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let core = Arc::clone(self);
        let k = key.clone();
        let flag = Arc::clone(&moved);
        let call = move |t: Target| {
            let core = Arc::clone(&core);
            let key = k.clone();
            let moved = Arc::clone(&flag);
            async move {
                if t.node == core.id {
                    return core.replica.load(t.slot(), partition, &key).await;
                }
                let hint_for = t.is_stand_in().then_some(t.owner);
                let frame = Request::Get { key, hint_for }.encode();
                match core.peers.call(t.node, frame, core.config.replica_timeout()).await? {
                    Response::State(None) => Ok(None),
                    Response::State(Some(bytes)) => SiblingSet::decode(&bytes)
                        .map(Some)
                        .map_err(|e| Error::Protocol(format!("replica sent a bad state: {e}"))),
                    Response::Error(e) => {
                        let e = e.into_error();
                        if matches!(e, Error::NotReplica { .. }) {
                            moved.store(true, Ordering::Relaxed);
                        }
                        Err(e)
                    }
                    other => Err(Error::Protocol(format!("unexpected answer to a read: {other:?}"))),
                }
            }
        };
        let core = Arc::clone(self);
        tokio::spawn(async move {
            // A hedge's answer counts only if it holds a hint: an empty one
            // would pass for "not found" while the owner may answer.
            let informed = |t: Target, state: &Option<SiblingSet>| !t.hedge || state.is_some();
            let answers = Arc::clone(&core).fan_out(plan, call, informed, tx).await;
            if core.config.read_repair {
                core.read_repair.repair(key, partition, hash, answers).await;
            }
        });
        let mut merged = SiblingSet::new();
        // Slots that answered, by owner: R counts distinct replicas.
        let mut slots: Vec<NodeId> = Vec::with_capacity(r);
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        while slots.len() < r {
            tokio::select! {
                biased;
                outcome = rx.recv() => match outcome {
                    Some(Outcome::Answered(owner, state)) => {
                        if !slots.contains(&owner) {
                            slots.push(owner);
                        }
                        if let Some(s) = state {
                            self.clock.observe(s.max_timestamp());
                            merged.merge(&s);
                        }
                    }
                    Some(Outcome::Failed | Outcome::Refused(_)) => {
                        // An owner dropped its copy: the partition settled
                        // and the caller reads the new owners instead.
                        if moved.load(Ordering::Relaxed) {
                            return Err(Error::NotReplica { partition, epoch: ring.epoch() });
                        }
                    }
                    None => {
                        bump(&self.metrics.quorum_failures);
                        return Err(Error::QuorumFailed { acks: slots.len(), needed: r });
                    }
                },
                () = &mut timer => {
                    bump(&self.metrics.quorum_failures);
                    return Err(Error::Timeout { acks: slots.len(), needed: r });
                }
            }
        }
        Ok(merged)
    }
}
