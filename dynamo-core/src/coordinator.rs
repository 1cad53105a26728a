//! The request path: who to ask, how many answers to wait for, and what
//! to do when a replica does not answer.
//!
//! Writes are coordinated by a node of the key's preference list (another
//! node forwards them one hop). The coordinator makes the new dot, stores
//! the new state, sends it to the other replicas and answers after W acks.
//! Reads ask the replicas and answer after R; the merged state is pushed
//! back to stale replicas once every replica answered (read repair).
//!
//! With sloppy quorum, a replica that is suspected, or fails its call, is
//! replaced by the next healthy node of the ring walk, which keeps the
//! state as a hint for the owner it stands in for.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::causality::{Context, Dot, SiblingSet};
use crate::error::{Error, Result};
use crate::fault_point::{Fault, FaultPoint};
use crate::member::NodeId;
use crate::metrics::bump;
use crate::node::NodeCore;
use crate::replica::{Slot, WriteIntent};
use crate::ring::{key_hash, Ring};
use crate::transport::protocol::{frame_version, Request, Response, WriteRequest, PROTOCOL_VERSION};
use crate::transport::TransportError;

/// One replica slot of a request: the node asked, and the owner whose
/// copy it holds (itself, or an unreachable owner it stands in for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) node: NodeId,
    pub(crate) owner: NodeId,
}

impl Target {
    pub(crate) fn slot(self) -> Slot {
        if self.node == self.owner {
            Slot::Data
        } else {
            Slot::HintFor(self.owner)
        }
    }
}

/// Where a request goes: one target per preference-list slot, and the
/// nodes that may replace a target that fails.
struct Plan {
    targets: Vec<Target>,
    spares: VecDeque<NodeId>,
}

/// An answer (or a final failure) of one slot of a fan-out.
enum Outcome<T> {
    Answered(T),
    Failed,
    /// The replica refused the request on its merits (the sibling bound):
    /// no spare is asked instead, and the error reaches the client.
    Refused(Error),
}

/// An instant `timeout` from now, or very far away if that overflows.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
}

impl NodeCore {
    pub(crate) fn validate_key(&self, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(Error::EmptyKey);
        }
        if key.len() > self.config.max_key_len {
            return Err(Error::KeyTooLong { len: key.len(), max: self.config.max_key_len });
        }
        Ok(())
    }

    pub(crate) fn validate_value(&self, value: Option<&Bytes>) -> Result<()> {
        match value {
            Some(v) if v.len() > self.config.max_value_size => {
                Err(Error::ValueTooLarge { size: v.len(), max: self.config.max_value_size })
            }
            _ => Ok(()),
        }
    }

    /// Checks a write at the edge, before anything is stored.
    fn validate_write(&self, req: &WriteRequest) -> Result<()> {
        self.validate_key(&req.key)?;
        self.validate_value(req.value.as_ref())?;
        self.check_quorum("w", req.w)?;
        if let Some(c) = &req.context {
            c.validate().map_err(|e| Error::InvalidContext(e.to_string()))?;
        }
        Ok(())
    }

    pub(crate) fn check_quorum(&self, name: &str, value: usize) -> Result<usize> {
        if value == 0 || value > self.config.n {
            return Err(Error::InvalidQuorum { name: name.into(), value, n: self.config.n });
        }
        Ok(value)
    }

    /// A peer's requested timeout, clamped to this node's
    /// `request_timeout_ms`: a peer cannot make a node wait longer than its
    /// own clients may.
    fn clamp_timeout(&self, timeout_ms: u64) -> Duration {
        Duration::from_millis(timeout_ms.min(self.config.request_timeout_ms))
    }

    /// The targets of a write on `partition`. Without sloppy quorum the
    /// preference list as it is; with it, each suspected owner is replaced
    /// up front by the next available node of the walk.
    fn plan_write(&self, ring: &Ring, partition: u32) -> Plan {
        let walk = ring.walk(partition);
        let pl = ring.preference_list(partition);
        let available = |n: NodeId| n == self.id || self.detector.is_available(n);
        let (mut up, mut down): (VecDeque<NodeId>, VecDeque<NodeId>) =
            walk[pl.len()..].iter().copied().partition(|n| available(*n));
        let mut targets = Vec::with_capacity(pl.len());
        for &owner in pl {
            let node = if available(owner) || !self.config.sloppy_quorum {
                owner
            } else {
                up.pop_front().unwrap_or(owner)
            };
            targets.push(Target { node, owner });
        }
        up.append(&mut down);
        Plan { targets, spares: if self.config.sloppy_quorum { up } else { VecDeque::new() } }
    }

    /// The targets of a read on `partition`: the owners themselves, even
    /// suspected ones (a read is cheap to try and an owner's answer is the
    /// only complete one), with the rest of the walk as spares under
    /// sloppy quorum. A spare stands in with the hint it holds for the
    /// owner it replaces; without one its answer does not count.
    fn plan_read(&self, ring: &Ring, partition: u32) -> Plan {
        let pl = ring.preference_list(partition);
        let targets = pl.iter().map(|&owner| Target { node: owner, owner }).collect();
        let spares = if self.config.sloppy_quorum {
            let walk = &ring.walk(partition)[pl.len()..];
            let (mut up, mut down): (VecDeque<NodeId>, VecDeque<NodeId>) =
                walk.iter().copied().partition(|n| self.detector.is_available(*n));
            up.append(&mut down);
            up
        } else {
            VecDeque::new()
        };
        Plan { targets, spares }
    }

    /// Sends a request to `node` and decodes its answer, teaching the
    /// failure detector about the outcome.
    pub(crate) async fn call_peer(&self, node: NodeId, frame: Bytes, timeout: Duration) -> Result<Response> {
        let addr = {
            let ring = self.ring();
            match ring.member(node) {
                Some(m) => m.addr.clone(),
                None => return Err(Error::NotAMember(node)),
            }
        };
        match self.faults.at(FaultPoint::BeforeSend) {
            Some(Fault::Fail) => {
                self.detector.record_failure(node);
                let reason = "injected: connection refused".into();
                return Err(Error::Transport(TransportError::Refused { peer: addr, reason }));
            }
            Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
            None => {}
        }
        match self.transport.call(&addr, frame, timeout).await {
            Ok(_) if self.faults.at(FaultPoint::AfterSend) == Some(Fault::Fail) => {
                self.detector.record_failure(node);
                let reason = "injected: connection lost after the request was sent".into();
                Err(Error::Transport(TransportError::Unreachable { peer: addr, reason }))
            }
            Ok(bytes) => {
                self.detector.record_success(node);
                let response = Response::decode(&bytes);
                if let Some(v) = frame_version(&bytes).filter(|v| *v != PROTOCOL_VERSION) {
                    tracing::warn!(peer = %node, peer_version = v, version = PROTOCOL_VERSION, "a peer answers in another protocol version");
                }
                response
            }
            Err(e) => {
                self.detector.record_failure(node);
                Err(Error::Transport(e))
            }
        }
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
        targets: Vec<Target>,
        mut spares: VecDeque<NodeId>,
        call: F,
        counts: impl Fn(Target, &T) -> bool,
        progress: mpsc::UnboundedSender<Outcome<T>>,
    ) -> Vec<(Target, T)>
    where
        T: Clone + Send + 'static,
        F: Fn(Target) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let tagged = |t: Target| {
            let fut = call(t);
            async move { (t, fut.await) }
        };
        let mut pending: FuturesUnordered<_> = targets.into_iter().map(tagged).collect();
        let mut answers = Vec::new();
        while let Some((target, result)) = pending.next().await {
            let failed = match result {
                Ok(answer) if counts(target, &answer) => {
                    let _ = progress.send(Outcome::Answered(answer.clone()));
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
                Err(e) => {
                    tracing::debug!(node = %self.id, peer = %target.node, error = %e, "replica call failed");
                    true
                }
            };
            if failed {
                match spares.pop_front() {
                    Some(spare) => pending.push(tagged(Target { node: spare, owner: target.owner })),
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
        self.validate_write(&req)?;
        let deadline = deadline_after(timeout);
        if req.value.is_none() && req.context.is_none() {
            let seen = self.read_until(req.key.clone(), self.config.r, deadline).await?;
            req.seen_us = req.seen_us.max(seen.max_timestamp());
            req.context = Some(seen.context().clone());
        }
        let ring = self.ring();
        let partition = ring.partition_of(&req.key);
        if ring.preference_list(partition).contains(&self.id) {
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
        let mut candidates: Vec<NodeId> = ring.preference_list(partition).to_vec();
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
            match self.call_peer(node, frame, attempt).await {
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
        let Plan { mut targets, mut spares } = self.plan_write(ring, partition);
        if !targets.iter().any(|t| t.node == self.id) {
            // Coordinating as a stand-in: take the slot of an owner that is
            // down (or the last one) and keep the write as its hint.
            let i = targets
                .iter()
                .position(|t| t.node != t.owner || !self.detector.is_available(t.owner))
                .unwrap_or(targets.len() - 1);
            if targets[i].node != targets[i].owner {
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
                start_by_us,
                max_siblings: self.config.max_siblings,
            })
            .await?;
        if local.slot() != Slot::Data {
            bump(&self.metrics.hints_stored);
            bump(&self.metrics.fallback_writes);
        }
        let state = Bytes::from(written.state.encode());
        let limit = u32::try_from(self.config.max_siblings).ok();
        let replicate =
            Request::Replicate { key: req.key.clone(), state: state.clone(), sibling_limit: limit }.encode();
        let remote: Vec<Target> = targets.into_iter().filter(|t| t.node != self.id).collect();
        let remote_owners: Vec<NodeId> =
            remote.iter().filter(|t| t.slot() == Slot::Data).map(|t| t.node).collect();
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
                match core.call_peer(t.node, frame, core.config.replica_timeout()).await? {
                    Response::Ack => {
                        if t.node != t.owner {
                            bump(&core.metrics.fallback_writes);
                        }
                        Ok(())
                    }
                    Response::Error(e) => Err(e.into_error()),
                    other => Err(Error::Protocol(format!("unexpected answer to a replication: {other:?}"))),
                }
            }
        };
        tokio::spawn(Arc::clone(self).fan_out(remote, spares, call, |_, _| true, tx));
        let mut acks = 1;
        let mut refused = None;
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        while acks < req.w {
            tokio::select! {
                biased;
                outcome = rx.recv() => match outcome {
                    Some(Outcome::Answered(())) => acks += 1,
                    Some(Outcome::Failed) => {}
                    Some(Outcome::Refused(e)) => refused = Some(e),
                    None => {
                        bump(&self.metrics.quorum_failures);
                        if let Some(e) = refused {
                            // Every replica answered and too few accepted:
                            // the write is refused, so it must not take
                            // effect later through the copies that exist.
                            self.retract_refused(&req.key, partition, hash, local, &written.dot, remote_owners).await;
                            return Err(e);
                        }
                        return Err(Error::QuorumFailed { acks, needed: req.w });
                    }
                },
                () = &mut timer => {
                    bump(&self.metrics.quorum_failures);
                    return Err(Error::Timeout { acks, needed: req.w });
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
    async fn retract_refused(
        self: &Arc<Self>,
        key: &Bytes,
        partition: u32,
        hash: u64,
        local: Target,
        dot: &Dot,
        replicas: Vec<NodeId>,
    ) {
        let state = match self.replica.retract(local.slot(), partition, key, hash, dot).await {
            Ok(Some(state)) => state,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(node = %self.id, error = %e, "cannot retract a refused write");
                return;
            }
        };
        let frame =
            Request::Replicate { key: key.clone(), state: Bytes::from(state.encode()), sibling_limit: None }
                .encode();
        let core = Arc::clone(self);
        tokio::spawn(async move {
            for node in replicas {
                if let Err(e) = core.call_peer(node, frame.clone(), core.config.replica_timeout()).await {
                    tracing::debug!(peer = %node, error = %e, "retraction not delivered; read repair will");
                }
            }
        });
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
    async fn read_until(self: &Arc<Self>, key: Bytes, r: usize, deadline: Instant) -> Result<SiblingSet> {
        self.validate_key(&key)?;
        self.check_quorum("r", r)?;
        bump(&self.metrics.gets);
        let ring = self.ring();
        let partition = ring.partition_of(&key);
        let hash = key_hash(&key);
        let Plan { targets, spares } = self.plan_read(&ring, partition);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let core = Arc::clone(self);
        let k = key.clone();
        let call = move |t: Target| {
            let core = Arc::clone(&core);
            let key = k.clone();
            async move {
                if t.node == core.id {
                    return core.replica.load(t.slot(), partition, &key).await;
                }
                let hint_for = (t.node != t.owner).then_some(t.owner);
                let frame = Request::Get { key, hint_for }.encode();
                match core.call_peer(t.node, frame, core.config.replica_timeout()).await? {
                    Response::State(None) => Ok(None),
                    Response::State(Some(bytes)) => SiblingSet::decode(&bytes)
                        .map(Some)
                        .map_err(|e| Error::Protocol(format!("replica sent a bad state: {e}"))),
                    Response::Error(e) => Err(e.into_error()),
                    other => Err(Error::Protocol(format!("unexpected answer to a read: {other:?}"))),
                }
            }
        };
        let core = Arc::clone(self);
        tokio::spawn(async move {
            // A fallback that holds no hint knows nothing of the key: its
            // empty answer must not pass for a replica's "not found".
            let informed = |t: Target, state: &Option<SiblingSet>| t.node == t.owner || state.is_some();
            let answers = Arc::clone(&core).fan_out(targets, spares, call, informed, tx).await;
            if core.config.read_repair {
                core.repair(key, partition, hash, answers).await;
            }
        });
        let mut merged = SiblingSet::new();
        let mut answered = 0;
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        while answered < r {
            tokio::select! {
                biased;
                outcome = rx.recv() => match outcome {
                    Some(Outcome::Answered(state)) => {
                        answered += 1;
                        if let Some(s) = state {
                            self.clock.observe(s.max_timestamp());
                            merged.merge(&s);
                        }
                    }
                    Some(Outcome::Failed | Outcome::Refused(_)) => {}
                    None => {
                        bump(&self.metrics.quorum_failures);
                        return Err(Error::QuorumFailed { acks: answered, needed: r });
                    }
                },
                () = &mut timer => {
                    bump(&self.metrics.quorum_failures);
                    return Err(Error::Timeout { acks: answered, needed: r });
                }
            }
        }
        Ok(merged)
    }

    /// Pushes the merge of every answer to each owner that answered with
    /// less.
    async fn repair(
        &self,
        key: Bytes,
        partition: u32,
        hash: u64,
        answers: Vec<(Target, Option<SiblingSet>)>,
    ) {
        let mut merged = SiblingSet::new();
        for (_, state) in &answers {
            if let Some(s) = state {
                merged.merge(s);
            }
        }
        if merged.is_empty() {
            return;
        }
        let stale: Vec<NodeId> = answers
            .iter()
            .filter(|(t, state)| t.slot() == Slot::Data && state.as_ref() != Some(&merged))
            .map(|(t, _)| t.node)
            .collect();
        if stale.is_empty() {
            return;
        }
        let frame =
            Request::Replicate { key: key.clone(), state: Bytes::from(merged.encode()), sibling_limit: None }
                .encode();
        for node in stale {
            let result = if node == self.id {
                self.replica.merge(Slot::Data, partition, &key, hash, &merged, None).await.map(|_| ())
            } else {
                match self.call_peer(node, frame.clone(), self.config.replica_timeout()).await {
                    Ok(Response::Ack) => Ok(()),
                    Ok(Response::Error(e)) => Err(e.into_error()),
                    Ok(other) => Err(Error::Protocol(format!("unexpected answer to a repair: {other:?}"))),
                    Err(e) => Err(e),
                }
            };
            match result {
                Ok(()) => bump(&self.metrics.read_repairs),
                Err(e) => tracing::debug!(peer = %node, error = %e, "read repair failed"),
            }
        }
    }

    /// Serves a replica-side request from a peer.
    pub(crate) async fn serve_request(self: &Arc<Self>, req: Request) -> Response {
        let result = match req {
            Request::Ping => Ok(Response::Pong),
            Request::Get { key, hint_for } => self.serve_get(&key, hint_for).await.map(Response::State),
            Request::Replicate { key, state, sibling_limit } => {
                self.serve_merge(Slot::Data, &key, &state, sibling_limit.map(|l| l as usize)).await
            }
            Request::StoreHint { owner, key, state } => {
                let r = self.serve_merge(Slot::HintFor(owner), &key, &state, None).await;
                if r.is_ok() {
                    bump(&self.metrics.hints_stored);
                }
                r
            }
            Request::Coordinate(w) => self
                .serve_coordinate(w)
                .await
                .map(|c| Response::Written { seen_us: c.seen_us(), context: c.causal().clone() }),
        };
        result.unwrap_or_else(|e| Response::error(&e))
    }

    async fn serve_get(&self, key: &[u8], hint_for: Option<NodeId>) -> Result<Option<Bytes>> {
        self.validate_key(key)?;
        let partition = self.ring().partition_of(key);
        let slot = hint_for.map_or(Slot::Data, Slot::HintFor);
        self.replica.load_raw(slot, partition, key).await
    }

    async fn serve_merge(
        &self,
        slot: Slot,
        key: &[u8],
        state: &[u8],
        limit: Option<usize>,
    ) -> Result<Response> {
        self.validate_key(key)?;
        let incoming =
            SiblingSet::decode(state).map_err(|e| Error::Protocol(format!("bad state for {key:?}: {e}")))?;
        let partition = self.ring().partition_of(key);
        self.replica.merge(slot, partition, key, key_hash(key), &incoming, limit).await?;
        Ok(Response::Ack)
    }

    /// Coordinates a write another node forwarded: at most once per
    /// request id, and never after the sender's deadline.
    async fn serve_coordinate(self: &Arc<Self>, req: WriteRequest) -> Result<Context> {
        self.validate_write(&req)?;
        let timeout = self.clamp_timeout(req.timeout_ms);
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
        let ring = self.ring();
        let partition = ring.partition_of(&req.key);
        let result = self.coordinate_write(&ring, partition, req, deadline, Some(start_by)).await;
        if let Err(Error::Expired { .. }) = &result {
            bump(&self.metrics.forwards_expired);
        }
        result
    }
}
