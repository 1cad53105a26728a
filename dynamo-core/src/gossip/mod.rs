//! Gossip membership (Dynamo §4.8): every node learns the members and the
//! ring from its peers, with no central registry.
//!
//! Every `gossip_interval_ms` a node exchanges state with one peer
//! (push-pull), going round the known members in a shuffled order so that
//! each is met once per round of the list, and falling back to its
//! configured seeds while it knows nobody. An exchange sends a hash of the
//! whole state first: when nothing changed the round ends there, at a
//! constant number of bytes whatever the cluster size. Otherwise the
//! peers swap digests and then only the entries one of them lacks (see
//! [`state`]). Every exchange tells the failure detector the peer is alive.
//!
//! The state is persisted in the store's meta table: a restarted node comes
//! back with its id, addresses and the last ring it knew, and a new
//! generation so that its entry supersedes the old one everywhere. Every
//! node carries a cluster name; gossip from another cluster is refused and
//! logged, and nothing of it is kept.

pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;

use crate::clock::HybridClock;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::failure::FailureDetector;
use crate::member::{Member, NodeId};
use crate::membership::{ClusterView, MemberInfo, MemberStatus, Membership};
use crate::replica::Replica;
use crate::ring::{Ring, RingLayout};
use crate::store::{Table, WriteBatch};
use crate::topology::Handover;
use crate::transport::protocol::{Request, Response};
use crate::transport::Transport;

pub use state::{Delta, Digest, GossipState, HandoffReport, MemberEntry, RingStamp, Stamp};

/// Where the state is kept in the meta table.
const STATE_KEY: &[u8] = b"gossip/state/3";
/// Where version 2 kept it (read when the current key is absent).
const STATE_KEY_V2: &[u8] = b"gossip/state";

/// What a node announces of itself when it takes part in gossip (the
/// cluster's name, the seeds and the interval come from its
/// [`Config`](crate::config::Config)).
#[derive(Debug, Clone)]
pub struct GossipSettings {
    /// The node as it announces itself (its status is derived: active
    /// while the ring lists it, joining otherwise).
    pub local: MemberInfo,
    /// The ring to start from when the store holds none (a founding
    /// member's configured member list); `None` to learn it from a seed.
    pub initial_ring: Option<Ring>,
}

/// A [`Membership`] kept up to date by gossip.
pub struct Gossip {
    local: NodeId,
    cluster: String,
    /// The partition count and N of this node's config: a ring of another
    /// shape is refused.
    shape: (u32, u64),
    seeds: Vec<String>,
    interval: Duration,
    inner: Mutex<Inner>,
    view: watch::Sender<Arc<ClusterView>>,
    wiring: OnceLock<Wiring>,
}

struct Inner {
    state: GossipState,
    /// `state.hash()`, kept up to date by `publish`.
    hash: u64,
    /// The ring built from `state.ring()`, rebuilt only when it changes.
    ring: Option<(RingLayout, Arc<Ring>)>,
    /// The move to that ring with nothing settled yet (its previous ring
    /// built once), for the ring it was built for.
    handover: Option<(Arc<Ring>, Handover)>,
    rng: ChaCha8Rng,
    /// Members still to meet in this round of the list.
    order: Vec<NodeId>,
    /// Peers already warned about (foreign clusters, conflicting ids).
    warned: BTreeSet<String>,
}

/// What gossip uses of the node it runs in.
struct Wiring {
    transport: Arc<dyn Transport>,
    detector: Arc<dyn FailureDetector>,
    /// Where the state is persisted (`None` for a standalone gossiper).
    replica: Option<Arc<Replica>>,
    timeout: Duration,
}

impl std::fmt::Debug for Gossip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gossip")
            .field("local", &self.local)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl Gossip {
    /// Loads the persisted state (if any), takes a new generation for the
    /// local entry and builds the first view.
    pub(crate) async fn open(
        config: &Config,
        settings: GossipSettings,
        replica: &Replica,
        clock: &HybridClock,
        seed: u64,
    ) -> Result<Gossip> {
        let corrupt = |e: String| Error::Corrupt(format!("persisted gossip state: {e}"));
        let state: GossipState = match replica.load_meta(STATE_KEY).await? {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(|e| corrupt(e.to_string()))?,
            None => match replica.load_meta(STATE_KEY_V2).await? {
                Some(bytes) => GossipState::decode_v2(&bytes).map_err(corrupt)?,
                None => GossipState::new(),
            },
        };
        let previous = state.member(settings.local.id).map_or(0, |e| e.generation);
        let generation = previous.saturating_add(1).max(clock.physical_us() / 1_000_000);
        Ok(Gossip::from_state(config, settings, state, generation, seed))
    }

    /// The ring a node's persisted gossip state holds, if any: the ring it
    /// starts under (the configured one only seeds a store that has none).
    ///
    /// # Errors
    /// [`Error::Corrupt`] for an undecodable state, store errors.
    pub(crate) async fn persisted_ring(store: &Arc<dyn crate::store::Store>) -> Result<Option<Ring>> {
        let corrupt = |e: String| Error::Corrupt(format!("persisted gossip state: {e}"));
        let current = crate::store_io::run_store(store, |s| s.get(Table::Meta, STATE_KEY)).await?;
        let state = match current {
            Some(bytes) => postcard::from_bytes::<GossipState>(&bytes).map_err(|e| corrupt(e.to_string()))?,
            None => match crate::store_io::run_store(store, |s| s.get(Table::Meta, STATE_KEY_V2)).await? {
                Some(bytes) => GossipState::decode_v2(&bytes).map_err(corrupt)?,
                None => return Ok(None),
            },
        };
        state.ring().cloned().map(Ring::from_layout).transpose().map_err(Error::from)
    }

    /// A gossiper holding `state` plus its own entry under `generation`.
    fn from_state(
        config: &Config,
        settings: GossipSettings,
        mut state: GossipState,
        generation: u64,
        seed: u64,
    ) -> Gossip {
        let local = settings.local.id;
        if state.ring().is_none() {
            if let Some(ring) = &settings.initial_ring {
                state.merge_ring(ring.layout());
            }
        }
        let mut info = settings.local.clone();
        let held = state.member(local);
        let handoff = held.map(|e| e.handoff.clone()).unwrap_or_default();
        info.status = status_in(state.ring(), local, held.map(|e| e.info.status), true);
        state.merge_entry(MemberEntry { info, generation, version: 0, handoff });
        let gossip = Gossip {
            local,
            cluster: config.name.clone(),
            shape: (config.partitions, config.n as u64),
            seeds: config.seeds.clone(),
            interval: config.gossip_interval(),
            inner: Mutex::new(Inner {
                hash: state.hash(),
                state,
                ring: None,
                handover: None,
                rng: ChaCha8Rng::seed_from_u64(seed ^ local.0.rotate_left(17)),
                order: Vec::new(),
                warned: BTreeSet::new(),
            }),
            view: watch::Sender::new(Arc::new(ClusterView::from_parts(None, Vec::new()))),
            wiring: OnceLock::new(),
        };
        gossip.publish(&mut gossip.lock());
        gossip
    }

    /// Connects gossip to the node's transport, failure detector and store.
    pub(crate) fn wire(
        &self,
        transport: Arc<dyn Transport>,
        detector: Arc<dyn FailureDetector>,
        replica: Arc<Replica>,
        timeout: Duration,
    ) {
        let _ = self.wiring.set(Wiring { transport, detector, replica: Some(replica), timeout });
    }

    /// A gossiper with no node around it and nothing persisted: for
    /// simulations of membership alone (many gossipers on one simulated
    /// network). Serve its peers' requests with [`Gossip::handle`] and run
    /// its rounds with [`Gossip::round`].
    pub fn standalone(
        config: &Config,
        settings: GossipSettings,
        seed: u64,
        transport: Arc<dyn Transport>,
        detector: Arc<dyn FailureDetector>,
    ) -> Gossip {
        let gossip = Gossip::from_state(config, settings, GossipState::new(), 1, seed);
        let timeout = config.replica_timeout();
        let _ = gossip.wiring.set(Wiring { transport, detector, replica: None, timeout });
        gossip
    }

    /// Answers a gossip request from a peer (anything else is refused).
    pub async fn handle(&self, request: Request) -> Response {
        let result = match request {
            Request::GossipSyn { cluster, from, hash } => self.handle_syn(&cluster, from, hash),
            Request::GossipDelta { cluster, from, entries, ring, want, want_ring } => {
                self.handle_delta(&cluster, from, Delta { entries, ring, want, want_ring }).await
            }
            other => Err(Error::Protocol(format!("a standalone gossiper serves no {other:?}"))),
        };
        result.unwrap_or_else(|e| Response::error(&e))
    }

    /// Changes this node's own entry (its client address, zone, capacity)
    /// under a new version, so gossip spreads the change.
    pub async fn update_local(&self, change: impl FnOnce(&mut MemberInfo)) {
        let snapshot = {
            let mut inner = self.lock();
            let Some(mut entry) = inner.state.member(self.local).cloned() else { return };
            change(&mut entry.info);
            entry.info.id = self.local;
            entry.version += 1;
            inner.state.merge_entry(entry);
            self.publish(&mut inner);
            inner.state.clone()
        };
        self.persist(&snapshot).await;
    }

    /// Makes `layout` the cluster's ring (a committed topology change): it
    /// must be newer than the ring held, and gossip spreads it.
    ///
    /// # Errors
    /// [`Error::StalePlan`] when the ring held is not at `base_epoch`.
    pub(crate) async fn commit_ring(&self, base_epoch: u64, layout: RingLayout) -> Result<()> {
        let snapshot = {
            let mut inner = self.lock();
            let current = inner.state.ring().map_or(0, |r| r.epoch);
            if current != base_epoch {
                return Err(Error::StalePlan { planned: base_epoch, current });
            }
            inner.state.merge_ring(layout);
            self.publish(&mut inner);
            inner.state.clone()
        };
        self.persist(&snapshot).await;
        Ok(())
    }

    /// Exchanges state with every known member at once (each exchange
    /// within the replica timeout), rather than one per interval: after a
    /// commit, so that coordinators stop planning writes under the old
    /// ring (which replicas at the new one refuse) within one round trip.
    pub(crate) async fn spread_now(&self) {
        let Some(wiring) = self.wiring.get() else { return };
        let peers: Vec<String> = {
            let inner = self.lock();
            inner.state.members().filter(|e| e.info.id != self.local).map(|e| e.info.addr.clone()).collect()
        };
        let exchanges = peers.iter().map(|addr| self.exchange(wiring, addr));
        for result in futures::future::join_all(exchanges).await {
            if let Err(e) = result {
                tracing::debug!(node = %self.local, error = %e, "could not spread the new ring at once; gossip will");
            }
        }
    }

    /// Records that this node holds a complete copy of `partition`, gained
    /// under ring `epoch`; gossip spreads the report.
    pub(crate) async fn report_received(&self, epoch: u64, partition: u32) {
        let snapshot = {
            let mut inner = self.lock();
            let Some(mut entry) = inner.state.member(self.local).cloned() else { return };
            if !entry.handoff.add(epoch, partition) {
                return;
            }
            entry.version += 1;
            inner.state.merge_entry(entry);
            self.publish(&mut inner);
            inner.state.clone()
        };
        self.persist(&snapshot).await;
    }

    /// Whether member `node` has reported `partition` copied under `epoch`.
    pub fn reported(&self, node: NodeId, epoch: u64, partition: u32) -> bool {
        self.lock().state.member(node).is_some_and(|e| e.handoff.has(epoch, partition))
    }

    /// What this node has reported of the current move.
    pub fn own_report(&self) -> HandoffReport {
        self.lock().state.member(self.local).map(|e| e.handoff.clone()).unwrap_or_default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current state (for tests and operators).
    pub fn state(&self) -> GossipState {
        self.lock().state.clone()
    }

    /// The cluster's name.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Rebuilds the view from the state and publishes it.
    fn publish(&self, inner: &mut Inner) {
        let layout = inner.state.ring().cloned();
        let ring = match (&inner.ring, layout) {
            (Some((held, ring)), Some(layout)) if *held == layout => Some(Arc::clone(ring)),
            (_, Some(layout)) => match Ring::from_layout(layout.clone()) {
                Ok(ring) => {
                    let ring = Arc::new(ring);
                    inner.ring = Some((layout, Arc::clone(&ring)));
                    Some(ring)
                }
                Err(e) => {
                    tracing::error!(node = %self.local, error = %e, "gossip carried an invalid ring; keeping the last one");
                    inner.ring.as_ref().map(|(_, r)| Arc::clone(r))
                }
            },
            (_, None) => None,
        };
        let cached = match (&ring, &inner.handover) {
            (Some(ring), Some((built_for, base))) if Arc::ptr_eq(ring, built_for) => Some(Ok(base.clone())),
            _ => None,
        };
        let handover = match (&ring, inner.state.ring().and_then(|l| l.transition.as_ref())) {
            (Some(ring), Some(transition)) => match cached.unwrap_or_else(|| {
                let built = Handover::of(ring, transition);
                if let Ok(base) = &built {
                    inner.handover = Some((Arc::clone(ring), base.clone()));
                }
                built
            }) {
                Ok(mut handover) => {
                    let state = &inner.state;
                    let epoch = ring.epoch();
                    handover.settle(ring, |n, p| state.member(n).is_some_and(|e| e.handoff.has(epoch, p)));
                    Some(Arc::new(handover))
                }
                Err(e) => {
                    tracing::error!(node = %self.local, error = %e, "gossip carried an invalid ring transition");
                    None
                }
            },
            _ => None,
        };
        // The local entry follows the ring: active while it lists us.
        if let Some(mine) = inner.state.member(self.local) {
            let moving = handover.as_ref().is_some_and(|h| !h.all_settled());
            let status = status_in(inner.state.ring(), self.local, Some(mine.info.status), moving);
            if mine.info.status != status {
                let mut entry = mine.clone();
                entry.info.status = status;
                entry.version += 1;
                inner.state.merge_entry(entry);
            }
        }
        inner.hash = inner.state.hash();
        let members = inner.state.members().map(|e| e.info.clone()).collect();
        self.view.send_replace(Arc::new(ClusterView::from_parts(ring, members).with_handover(handover)));
    }

    /// Takes what a peer sent: entries and ring, checked first. Returns
    /// whether the state changed (it is then persisted and published).
    async fn absorb(&self, from: &str, entries: Vec<MemberEntry>, ring: Option<RingLayout>) -> bool {
        let snapshot = {
            let mut inner = self.lock();
            let mut changed = false;
            for entry in entries {
                if entry.info.id == self.local {
                    changed |= self.refute(&mut inner.state, &entry);
                    continue;
                }
                if let Err(why) = self.acceptable(&inner.state, &entry) {
                    if inner.warned.insert(format!("{from}/{}", entry.info.id)) {
                        tracing::warn!(node = %self.local, peer = from, "refused a gossiped entry: {why}");
                    }
                    continue;
                }
                changed |= inner.state.merge_entry(entry);
            }
            if let Some(ring) = ring {
                let shape = (u32::try_from(ring.owners.len()).unwrap_or(u32::MAX), ring.replicas);
                match Ring::from_layout(ring.clone()) {
                    Ok(_) if shape == self.shape => changed |= inner.state.merge_ring(ring),
                    Ok(_) => {
                        if inner.warned.insert(format!("{from}/shape")) {
                            tracing::warn!(
                                node = %self.local,
                                peer = from,
                                "refused a gossiped ring of {} partitions and N = {}: this node is configured for {} and N = {}",
                                shape.0, shape.1, self.shape.0, self.shape.1
                            );
                        }
                    }
                    Err(e) => {
                        tracing::warn!(node = %self.local, peer = from, error = %e, "refused a gossiped ring")
                    }
                }
            }
            if !changed {
                return false;
            }
            self.publish(&mut inner);
            inner.state.clone()
        };
        self.persist(&snapshot).await;
        true
    }

    /// Answers an entry for this node's own id that peers hold: this node
    /// alone speaks for itself. An entry stamped above its own (left by a
    /// former incarnation whose store was lost, or written under a clock
    /// that ran ahead) is superseded by a new generation above it, as SWIM
    /// refutes a suspicion; one claiming another address is another node
    /// using this id, which is logged. Returns whether the state changed.
    fn refute(&self, state: &mut GossipState, theirs: &MemberEntry) -> bool {
        let Some(mine) = state.member(self.local).cloned() else { return false };
        if theirs.stamp() <= mine.stamp() {
            return false;
        }
        if theirs.info.addr != mine.info.addr {
            tracing::error!(
                node = %self.local,
                other = %theirs.info.addr,
                "another node claims this node's id; give every node its own id"
            );
        }
        let generation = theirs.generation.max(mine.generation).saturating_add(1);
        // What this node reported before its store was lost still holds
        // for the cluster: a settled partition never becomes unsettled.
        let handoff = mine.handoff.joined(&theirs.handoff);
        state.merge_entry(MemberEntry { info: mine.info, generation, version: 0, handoff })
    }

    /// Whether an entry from a peer for another member may be taken: never
    /// with a changed address unless from a later generation (another node
    /// claiming an id), and only with a usable address and capacity.
    fn acceptable(&self, state: &GossipState, entry: &MemberEntry) -> std::result::Result<(), String> {
        let id = entry.info.id;
        if entry.info.addr.is_empty() || entry.info.capacity == 0 {
            return Err(format!("member {id} has no address or a zero capacity"));
        }
        match state.member(id) {
            Some(held) if held.info.addr != entry.info.addr && entry.generation <= held.generation => {
                Err(format!(
                    "member {id} is at {}, and an entry of the same generation claims {}",
                    held.info.addr, entry.info.addr
                ))
            }
            _ => Ok(()),
        }
    }

    async fn persist(&self, state: &GossipState) {
        let Some(replica) = self.wiring.get().and_then(|w| w.replica.as_ref()) else { return };
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Meta,
            STATE_KEY,
            postcard::to_stdvec(state).expect("gossip state always serializes"),
        );
        if let Err(e) = replica.commit(batch).await {
            tracing::warn!(node = %self.local, error = %e, "cannot persist the gossip state");
        }
    }

    fn refuse_foreign(&self, cluster: &str, from: NodeId) -> Result<()> {
        if cluster == self.cluster {
            return Ok(());
        }
        let mut inner = self.lock();
        if inner.warned.insert(format!("cluster/{cluster}/{from}")) {
            tracing::warn!(node = %self.local, peer = %from, theirs = cluster, ours = %self.cluster, "refused gossip from another cluster");
        }
        Err(Error::ForeignCluster { ours: self.cluster.clone(), theirs: cluster.to_owned() })
    }

    /// Answers a peer's opening of an exchange: in sync, or our digest.
    pub(crate) fn handle_syn(&self, cluster: &str, from: NodeId, hash: u64) -> Result<Response> {
        self.refuse_foreign(cluster, from)?;
        if let Some(w) = self.wiring.get() {
            w.detector.record_success(from);
        }
        let inner = self.lock();
        if inner.hash == hash {
            return Ok(Response::GossipInSync { from: self.local });
        }
        Ok(Response::GossipDigest { from: self.local, digest: inner.state.digest() })
    }

    /// Takes a peer's delta and answers with what it asked for.
    pub(crate) async fn handle_delta(&self, cluster: &str, from: NodeId, delta: Delta) -> Result<Response> {
        self.refuse_foreign(cluster, from)?;
        if let Some(w) = self.wiring.get() {
            w.detector.record_success(from);
        }
        self.absorb(&from.to_string(), delta.entries, delta.ring).await;
        let inner = self.lock();
        let entries = inner.state.entries(&delta.want);
        let ring = if delta.want_ring { inner.state.ring().cloned() } else { None };
        Ok(Response::GossipDelta { from: self.local, entries, ring })
    }

    /// The next peer to meet: the members in a shuffled order, one per
    /// round; a seed while no other member is known.
    fn next_target(&self) -> Option<(Option<NodeId>, String)> {
        let mut inner = self.lock();
        // Every member gossip knows, and every member of the ring (a node
        // that learned the ring before meeting its members must not depend
        // on the seed alone: the seed may be down, or removed).
        let mut others: BTreeMap<NodeId, String> = inner
            .state
            .members()
            .filter(|e| e.info.id != self.local)
            .map(|e| (e.info.id, e.info.addr.clone()))
            .collect();
        if let Some(ring) = inner.state.ring() {
            for m in ring.members.iter().filter(|m| m.id != self.local) {
                others.entry(m.id).or_insert_with(|| m.addr.clone());
            }
        }
        let others: Vec<(NodeId, String)> = others.into_iter().collect();
        if others.is_empty() || inner.state.ring().is_none() {
            let mine = inner.state.member(self.local).map(|e| e.info.addr.clone()).unwrap_or_default();
            let seeds: Vec<&String> = self.seeds.iter().filter(|s| **s != mine).collect();
            if seeds.is_empty() {
                return None;
            }
            let i = inner.rng.random_range(0..seeds.len());
            return Some((None, seeds[i].clone()));
        }
        loop {
            if inner.order.is_empty() {
                let mut order: Vec<NodeId> = others.iter().map(|(id, _)| *id).collect();
                for i in (1..order.len()).rev() {
                    let j = inner.rng.random_range(0..=i);
                    order.swap(i, j);
                }
                inner.order = order;
            }
            let id = inner.order.pop()?;
            if let Some((_, addr)) = others.iter().find(|(o, _)| *o == id) {
                return Some((Some(id), addr.clone()));
            }
        }
    }

    /// One round: an exchange with the next peer (the node's own task runs
    /// one every interval).
    pub async fn round(&self) {
        let Some(wiring) = self.wiring.get() else { return };
        let Some((id, addr)) = self.next_target() else { return };
        match self.exchange(wiring, &addr).await {
            Ok(peer) => wiring.detector.record_success(peer),
            Err(e) => {
                if let Some(id) = id {
                    wiring.detector.record_failure(id);
                }
                let no_ring = self.lock().state.ring().is_none();
                if no_ring {
                    tracing::warn!(node = %self.local, seed = %addr, error = %e, "no seed answered yet; retrying");
                } else {
                    tracing::debug!(node = %self.local, peer = %addr, error = %e, "gossip exchange failed");
                }
            }
        }
    }

    /// A push-pull exchange with the node at `addr`; returns its id.
    async fn exchange(&self, wiring: &Wiring, addr: &str) -> Result<NodeId> {
        let hash = self.lock().hash;
        let syn = Request::GossipSyn { cluster: self.cluster.clone(), from: self.local, hash };
        let digest = match call(wiring, addr, syn.encode()).await? {
            Response::GossipInSync { from } => return Ok(from),
            Response::GossipDigest { from: _, digest } => digest,
            Response::Error(e) => return Err(e.into_error()),
            other => return Err(Error::Protocol(format!("unexpected answer to gossip: {other:?}"))),
        };
        let delta = self.lock().state.delta_for(&digest);
        let request = Request::GossipDelta {
            cluster: self.cluster.clone(),
            from: self.local,
            entries: delta.entries,
            ring: delta.ring,
            want: delta.want,
            want_ring: delta.want_ring,
        };
        match call(wiring, addr, request.encode()).await? {
            Response::GossipDelta { from, entries, ring } => {
                self.absorb(addr, entries, ring).await;
                Ok(from)
            }
            Response::Error(e) => Err(e.into_error()),
            other => Err(Error::Protocol(format!("unexpected answer to gossip: {other:?}"))),
        }
    }

    /// Runs a round every interval until the gossip is dropped.
    pub(crate) async fn run(gossip: std::sync::Weak<Gossip>) {
        let Some(interval) = gossip.upgrade().map(|g| g.interval) else { return };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(g) = gossip.upgrade() else { return };
            g.round().await;
        }
    }
}

async fn call(wiring: &Wiring, addr: &str, frame: Bytes) -> Result<Response> {
    let bytes = wiring.transport.call(addr, frame, wiring.timeout).await.map_err(Error::Transport)?;
    Response::decode(&bytes)
}

/// A member's status under `ring`: active while the ring lists it,
/// leaving while only the ring data is `moving` away from does, left once
/// it is in neither (or its data has moved) after having been a member,
/// joining before it ever was one.
fn status_in(ring: Option<&RingLayout>, id: NodeId, was: Option<MemberStatus>, moving: bool) -> MemberStatus {
    let Some(ring) = ring else { return was.unwrap_or(MemberStatus::Joining) };
    if ring.members.iter().any(|m| m.id == id) {
        return MemberStatus::Active;
    }
    if moving && ring.transition.as_ref().is_some_and(|t| t.members.iter().any(|m| m.id == id)) {
        return MemberStatus::Leaving;
    }
    match was {
        Some(MemberStatus::Active | MemberStatus::Leaving | MemberStatus::Left) => MemberStatus::Left,
        _ => MemberStatus::Joining,
    }
}

impl Membership for Gossip {
    fn local_id(&self) -> NodeId {
        self.local
    }

    fn view(&self) -> Arc<ClusterView> {
        Arc::clone(&self.view.borrow())
    }

    fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.subscribe()
    }
}

/// The ring member a [`MemberInfo`] stands for.
pub fn ring_member(info: &MemberInfo) -> Member {
    Member { id: info.id, addr: info.addr.clone(), zone: info.zone.clone(), capacity: info.capacity }
}
