//! A node assembled from its plugins, and the embedded API.
//!
//! [`NodeBuilder`] takes a [`Store`], a [`Transport`], a [`Membership`]
//! (or just the cluster's [`Ring`], for a fixed member list) and a
//! [`Reconciler`], starts serving peers and runs hint delivery in the
//! background. [`Node`] is the embedded API: any node accepts any request.
//!
//! A node is made of one part per role, each in the module named for it:
//! the [`coordinator`](crate::coordinator) (client requests), the
//! [`sloppy_quorum`](crate::sloppy_quorum) (who is asked),
//! [`read_repair`](crate::read_repair), the
//! [`replica_service`](crate::replica_service) (what peers are answered),
//! [`hinted_handoff`](crate::hinted_handoff), and the local replica of the
//! node's keys they share.
//!
//! ```
//! # use std::sync::Arc;
//! # use dynamo_core::prelude::*;
//! # async fn demo(transport: Arc<dyn Transport>) -> dynamo_core::Result<()> {
//! let me = Member::new(NodeId(1), transport.local_addr());
//! let ring = Ring::new(256, 1, vec![me])?;
//! let config = Config { n: 1, r: 1, w: 1, ..Config::default() };
//! let node = NodeBuilder::new(NodeId(1))
//!     .config(config)
//!     .ring(ring)
//!     .store(Arc::new(MemStore::new()))
//!     .transport(transport)
//!     .start()
//!     .await?;
//! let ctx = node.put(b"cart", "milk".into(), None, WriteOptions::default()).await?;
//! let got = node.get(b"cart", ReadOptions::default()).await?;
//! assert_eq!(got.values, vec![bytes::Bytes::from("milk")]);
//! node.delete(b"cart", Some(&got.context), WriteOptions::default()).await?;
//! # let _ = ctx; Ok(()) }
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::task::JoinHandle;

use crate::admission::AdmissionStats;
use crate::antientropy::{AaeReport, AaeStatus, AntiEntropy};
use crate::background::Background;
use crate::causality::{Context, Sibling, SiblingSet};
use crate::clock::{Clock, HybridClock, SystemClock};
use crate::config::Config;
use crate::coordinator::Coordinator;
use crate::epoch::StartKind;
use crate::error::{Error, Result};
use crate::failure::{FailureDetector, OutcomeDetector};
use crate::fault_point::{FaultInjector, Faults};
use crate::gossip::{Gossip, GossipSettings};
use crate::handoff::{Handoff, HandoffStatus};
use crate::hinted_handoff::HintedHandoff;
use crate::member::NodeId;
use crate::membership::{Membership, StaticMembership};
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::peers::Peers;
use crate::phi_accrual::{PhiAccrualDetector, PhiSettings};
use crate::read_repair::ReadRepair;
use crate::recent_requests::RecentRequests;
use crate::reconcile::{KeepSiblings, Reconciler, Resolution};
use crate::replica::{Replica, Slot};
use crate::replica_service::ReplicaService;
use crate::ring::Ring;
use crate::store::Store;
use crate::stored_ring::{self, RingIdentity};
use crate::topology::{self, Change, Plan};
use crate::transport::protocol::{
    frame_version, Request, RequestId, Response, WriteRequest, PROTOCOL_VERSION,
};
use crate::transport::{FrameHandler, Transport};
use crate::validation::check_key;
/// Per-request read options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Read quorum for this request; the config's `r` when `None`.
    pub r: Option<usize>,
    /// Deadline for this request; the config's `request_timeout_ms` when `None`.
    pub timeout: Option<Duration>,
}

/// Per-request write options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Write quorum for this request; the config's `w` when `None`.
    pub w: Option<usize>,
    /// Deadline for this request; the config's `request_timeout_ms` when `None`.
    pub timeout: Option<Duration>,
}

/// What a read returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetResult {
    /// The values the reader sees: one per live sibling, or the
    /// reconciler's single resolved value. Empty when the key is missing
    /// or deleted.
    pub values: Vec<Bytes>,
    /// The media type of each value of `values` (`None`: none was given,
    /// or the reconciler merged the value).
    pub content_types: Vec<Option<String>>,
    /// The live siblings as stored (before reconciliation), with their
    /// dots and timestamps.
    pub siblings: Vec<Sibling>,
    /// The context to write back with: a write that carries it replaces
    /// everything this read saw.
    pub context: Context,
}

impl GetResult {
    /// Whether the key has a live value.
    pub fn is_found(&self) -> bool {
        !self.values.is_empty()
    }
}

/// What one node itself stores for a key, without asking any other node:
/// an operator's first look when a value seems wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalState {
    /// The key's partition.
    pub partition: u32,
    /// The key's preference list.
    pub preference_list: Vec<NodeId>,
    /// The state this node holds as a replica.
    pub data: Option<SiblingSet>,
    /// The states this node holds as hints, by the owner they are for.
    pub hints: Vec<(NodeId, SiblingSet)>,
}

/// What a running node is made of, shared by its handle, its peer
/// handler and its background tasks.
struct NodeParts {
    id: NodeId,
    config: Arc<Config>,
    membership: Arc<dyn Membership>,
    transport: Arc<dyn Transport>,
    detector: Arc<dyn FailureDetector>,
    replica: Arc<Replica>,
    coordinator: Arc<Coordinator>,
    service: ReplicaService,
    handoff: Arc<HintedHandoff>,
    /// Anti-entropy and tombstone purge.
    aae: Arc<AntiEntropy>,
    /// Slots for background work, sized by foreground latency.
    background: Arc<Background>,
    gossip: Option<Arc<Gossip>>,
    /// Ownership handoff, when the node gossips.
    ownership: Option<Arc<Handoff>>,
    /// Topology changes staged on this node, and the ring epoch they
    /// were staged against.
    staged: Mutex<(u64, Vec<Change>)>,
    reconciler: Arc<dyn Reconciler>,
    metrics: Arc<Metrics>,
    /// The next client write's sequence number (see [`RequestId`]).
    next_seq: AtomicU64,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
}

impl NodeParts {
    /// A fresh identity for a client write received by this node.
    fn next_request_id(&self) -> RequestId {
        RequestId { origin: self.id, seq: self.next_seq.fetch_add(1, Ordering::Relaxed) }
    }
}

/// Serves peer frames for a node. Holds the node weakly so a transport
/// never keeps a stopped node alive.
struct Handler(std::sync::Weak<NodeParts>);

#[async_trait]
impl FrameHandler for Handler {
    async fn handle(&self, frame: Bytes) -> Bytes {
        let response = match self.0.upgrade() {
            Some(core) if !core.closed.load(Ordering::Acquire) => match Request::decode(&frame) {
                Ok(req) if req.is_anti_entropy() => {
                    let response = core.service.serve(req).await.encode();
                    crate::metrics::add(&core.metrics.aae_bytes_received, frame.len() as u64);
                    crate::metrics::add(&core.metrics.aae_bytes_sent, response.len() as u64);
                    return response;
                }
                Ok(req) => core.service.serve(req).await,
                Err(e) => {
                    match frame_version(&frame) {
                        Some(v) if v != PROTOCOL_VERSION => tracing::warn!(
                            node = %core.id,
                            peer_version = v,
                            version = PROTOCOL_VERSION,
                            "refused a request in another protocol version: is the peer running another release?"
                        ),
                        _ => tracing::warn!(node = %core.id, error = %e, "malformed request frame"),
                    }
                    Response::error(&e)
                }
            },
            _ => Response::error(&Error::ShuttingDown),
        };
        response.encode()
    }
}

/// Builds and starts a [`Node`].
pub struct NodeBuilder {
    id: NodeId,
    config: Config,
    ring: Option<Ring>,
    membership: Option<Arc<dyn Membership>>,
    gossip: Option<GossipSettings>,
    store: Option<Arc<dyn Store>>,
    transport: Option<Arc<dyn Transport>>,
    reconciler: Arc<dyn Reconciler>,
    detector: Option<Arc<dyn FailureDetector>>,
    clock: Arc<dyn Clock>,
    epoch_seed: Option<u64>,
    adopt_ring: bool,
    fault_injector: Option<Arc<dyn FaultInjector>>,
}

impl NodeBuilder {
    /// A builder for the node `id`, with default config and the
    /// [`KeepSiblings`] reconciler.
    pub fn new(id: NodeId) -> Self {
        NodeBuilder {
            id,
            config: Config::default(),
            ring: None,
            membership: None,
            gossip: None,
            store: None,
            transport: None,
            reconciler: Arc::new(KeepSiblings),
            detector: None,
            clock: Arc::new(SystemClock),
            epoch_seed: None,
            adopt_ring: false,
            fault_injector: None,
        }
    }

    /// Sets the configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Sets a fixed member list, as the cluster's ring (it must list this
    /// node): shorthand for a [`StaticMembership`] of `ring`.
    pub fn ring(mut self, ring: Ring) -> Self {
        self.ring = Some(ring);
        self
    }

    /// Sets the membership that tells the node who is in the cluster
    /// (replaces [`NodeBuilder::ring`]).
    pub fn membership(mut self, membership: Arc<dyn Membership>) -> Self {
        self.membership = Some(membership);
        self
    }

    /// Learns and spreads the cluster by [gossip](crate::gossip) (replaces
    /// [`NodeBuilder::ring`] and [`NodeBuilder::membership`]); the default
    /// failure detector becomes the [phi-accrual](crate::phi_accrual) one,
    /// fed by the exchanges.
    pub fn gossip(mut self, settings: GossipSettings) -> Self {
        self.gossip = Some(settings);
        self
    }

    /// Sets the local store.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Sets the transport; its local address must be this node's address
    /// in the ring.
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Sets the reconciler.
    pub fn reconciler(mut self, reconciler: Arc<dyn Reconciler>) -> Self {
        self.reconciler = reconciler;
        self
    }

    /// Replaces the default [`OutcomeDetector`].
    pub fn failure_detector(mut self, detector: Arc<dyn FailureDetector>) -> Self {
        self.detector = Some(detector);
        self
    }

    /// Replaces the system clock under the node's
    /// [`HybridClock`], which timestamps siblings and checks the deadlines
    /// of forwarded writes.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Lets a simulation inject faults at core's
    /// [fault points](crate::fault_point) (store write errors and stalls,
    /// transport errors before and after a request is sent).
    #[cfg(feature = "simulation")]
    pub fn fault_injector(mut self, injector: Arc<dyn FaultInjector>) -> Self {
        self.fault_injector = Some(injector);
        self
    }

    /// Starts even if the store's data was written under another ring
    /// than the one given (partitions, N or members), recording the new
    /// ring. No data moves: keys whose owners changed are found again
    /// only through read repair. Without it such a start is refused with
    /// [`Error::RingMismatch`].
    pub fn adopt_ring(mut self, adopt: bool) -> Self {
        self.adopt_ring = adopt;
        self
    }

    /// Seeds the random starting point of a new store's epoch counter, so
    /// a simulation replays exactly. Production nodes leave it random.
    pub fn epoch_seed(mut self, seed: u64) -> Self {
        self.epoch_seed = Some(seed);
        self
    }

    /// Validates the parts, opens the store, starts serving peers and the
    /// background tasks.
    ///
    /// # Errors
    /// [`Error::Config`] for a missing part or a config that contradicts
    /// the ring, [`Error::NotAMember`] when the ring does not list this
    /// node, [`Error::RingMismatch`] when the store was written under
    /// another ring (see [`NodeBuilder::adopt_ring`]), and store or
    /// transport errors from starting up.
    pub async fn start(self) -> Result<Node> {
        let config = self.config;
        config.validate()?;
        let missing = |what: &str| Error::Config(format!("node {}: no {what} given", self.id));
        let store = self.store.ok_or_else(|| missing("store"))?;
        let transport = self.transport.ok_or_else(|| missing("transport"))?;
        // The ring the node starts under must match the data's, before the
        // store is touched.
        let persisted = match (&self.membership, &self.ring, &self.gossip) {
            (None, None, Some(_)) => Gossip::persisted_ring(&store).await?,
            _ => None,
        };
        let given = match (&self.membership, &self.ring, &self.gossip) {
            (Some(m), _, _) => m.view().ring().map(|r| Ring::clone(r)),
            (None, Some(ring), _) => Some(ring.clone()),
            (None, None, Some(g)) => persisted.clone().or_else(|| g.initial_ring.clone()),
            (None, None, None) => return Err(missing("membership, ring or gossip settings")),
        };
        match (&given, &persisted) {
            // The ring committed topology changes led this node to.
            (Some(ring), Some(_)) => {
                check_ring(&config, ring)?;
                stored_ring::record(&store, ring).await?;
            }
            (Some(ring), None) => {
                check_ring(&config, ring)?;
                stored_ring::check(&store, ring, self.adopt_ring).await?;
            }
            (None, _) => {}
        }
        let clock = Arc::new(HybridClock::new(self.clock));
        let replica = Arc::new(
            Replica::open(
                self.id,
                store,
                Arc::clone(&self.reconciler),
                Arc::clone(&clock),
                &config,
                self.epoch_seed,
                Faults::new(self.id, self.fault_injector.clone()),
            )
            .await?,
        );
        match replica.start_kind() {
            StartKind::NewStore => tracing::warn!(
                node = %self.id,
                "the store is empty (new, or its data was lost): this node starts with no data; \
                 its replicas bring it up to date through read repair and hinted handoff"
            ),
            StartKind::Unclean => tracing::info!(
                node = %self.id,
                "the previous run did not shut down cleanly: new writes use fresh actor epochs"
            ),
            StartKind::Clean => {}
        }
        let gossip = match self.gossip {
            Some(settings) if self.membership.is_none() && self.ring.is_none() => {
                let seed = self.epoch_seed.unwrap_or_else(rand::random);
                Some(Arc::new(Gossip::open(&config, settings, &replica, &clock, seed).await?))
            }
            _ => None,
        };
        let membership: Arc<dyn Membership> = match (self.membership, self.ring, &gossip) {
            (Some(m), _, _) => m,
            (None, Some(ring), _) => Arc::new(StaticMembership::new(self.id, ring)?),
            (None, None, Some(g)) => Arc::clone(g) as Arc<dyn Membership>,
            (None, None, None) => return Err(missing("membership, ring or gossip settings")),
        };
        if membership.local_id() != self.id {
            return Err(Error::Config(format!(
                "node {} was given the membership of node {}",
                self.id,
                membership.local_id()
            )));
        }
        let view = membership.view();
        if let Some(ring) = view.ring() {
            check_ring(&config, ring)?;
        }
        let me = view.member(self.id).ok_or(Error::NotAMember(self.id))?;
        if me.addr != transport.local_addr() {
            return Err(Error::Config(format!(
                "node {} is at {} in the cluster but its transport is bound to {}",
                self.id,
                me.addr,
                transport.local_addr()
            )));
        }
        let config = Arc::new(config);
        let detector: Arc<dyn FailureDetector> = match (self.detector, &gossip) {
            (Some(d), _) => d,
            (None, Some(_)) => Arc::new(PhiAccrualDetector::new(PhiSettings {
                threshold: config.phi_threshold,
                first_interval: config.gossip_interval(),
                ..PhiSettings::default()
            })),
            (None, None) => Arc::new(OutcomeDetector::new(config.suspect_period())),
        };
        let metrics = Arc::new(Metrics::default());
        let peers = Arc::new(Peers {
            membership: Arc::clone(&membership),
            transport: Arc::clone(&transport),
            detector: Arc::clone(&detector),
            faults: Faults::new(self.id, self.fault_injector),
        });
        let coordinator = Arc::new(Coordinator {
            id: self.id,
            config: Arc::clone(&config),
            membership: Arc::clone(&membership),
            detector: Arc::clone(&detector),
            replica: Arc::clone(&replica),
            peers: Arc::clone(&peers),
            metrics: Arc::clone(&metrics),
            clock: Arc::clone(&clock),
            read_repair: ReadRepair {
                id: self.id,
                replica: Arc::clone(&replica),
                peers: Arc::clone(&peers),
                metrics: Arc::clone(&metrics),
                replica_timeout: config.replica_timeout(),
            },
        });
        let background = Arc::new(Background::new(config.admission()));
        let ownership = gossip.as_ref().map(|g| {
            Arc::new(Handoff::new(
                self.id,
                Arc::clone(&config),
                Arc::clone(&membership),
                Arc::clone(g),
                Arc::clone(&replica),
                Arc::clone(&peers),
                Arc::clone(&metrics),
                Arc::clone(&background),
            ))
        });
        let aae = Arc::new(AntiEntropy::new(
            self.id,
            Arc::clone(&config),
            Arc::clone(&membership),
            Arc::clone(&replica),
            Arc::clone(&peers),
            Arc::clone(&metrics),
            Arc::clone(&background),
            Arc::clone(&clock),
        ));
        let handoff = Arc::new(HintedHandoff {
            id: self.id,
            config: Arc::clone(&config),
            membership: Arc::clone(&membership),
            replica: Arc::clone(&replica),
            peers,
            metrics: Arc::clone(&metrics),
            background: Arc::clone(&background),
            clock: Arc::clone(&clock),
        });
        if let Some(g) = &gossip {
            g.wire(
                Arc::clone(&transport),
                Arc::clone(&detector),
                Arc::clone(&replica),
                config.replica_timeout(),
            );
        }
        let parts = Arc::new(NodeParts {
            id: self.id,
            service: ReplicaService {
                config: Arc::clone(&config),
                membership: Arc::clone(&membership),
                replica: Arc::clone(&replica),
                coordinator: Arc::clone(&coordinator),
                metrics: Arc::clone(&metrics),
                clock: Arc::clone(&clock),
                recent: RecentRequests::default(),
                gossip: gossip.clone(),
                handoff: ownership.clone(),
                aae: Arc::clone(&aae),
            },
            config,
            membership,
            transport: Arc::clone(&transport),
            detector,
            replica,
            coordinator,
            handoff: Arc::clone(&handoff),
            aae: Arc::clone(&aae),
            background,
            gossip: gossip.clone(),
            ownership: ownership.clone(),
            staged: Mutex::new((0, Vec::new())),
            reconciler: self.reconciler,
            metrics,
            next_seq: AtomicU64::new(clock.now()),
            tasks: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        });
        transport.serve(Arc::new(Handler(Arc::downgrade(&parts)))).await?;
        let period = parts.config.hint_delivery_interval();
        let hints = tokio::spawn(HintedHandoff::run(Arc::downgrade(&handoff), period));
        let record = tokio::spawn(record_ring_changes(Arc::downgrade(&parts)));
        let mut tasks = parts.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        tasks.extend([hints, record]);
        if let Some(g) = &gossip {
            tasks.push(tokio::spawn(Gossip::run(Arc::downgrade(g))));
        }
        if let Some(o) = &ownership {
            tasks.push(tokio::spawn(Handoff::run(Arc::downgrade(o))));
        }
        if parts.config.anti_entropy {
            tasks.push(tokio::spawn(AntiEntropy::run(Arc::downgrade(&aae))));
        }
        drop(tasks);
        Ok(Node { core: parts })
    }
}

/// Checks that `ring` agrees with the config's partition count and N.
fn check_ring(config: &Config, ring: &Ring) -> Result<()> {
    if ring.partitions() != config.partitions || ring.replicas() != config.n {
        return Err(Error::Config(format!(
            "the ring has {} partitions and N = {}, the config {} and N = {}",
            ring.partitions(),
            ring.replicas(),
            config.partitions,
            config.n
        )));
    }
    Ok(())
}

/// Records each ring the membership publishes as the one the store's
/// data follows, so the next start accepts it.
async fn record_ring_changes(parts: std::sync::Weak<NodeParts>) {
    let Some(mut changes) = parts.upgrade().map(|p| p.membership.subscribe()) else { return };
    let mut recorded = changes.borrow_and_update().ring().map(|r| RingIdentity::of(r));
    while changes.changed().await.is_ok() {
        let identity = changes.borrow_and_update().ring().map(|r| RingIdentity::of(r));
        if identity == recorded {
            continue;
        }
        let Some(parts) = parts.upgrade() else { return };
        let Some(new) = &identity else { continue };
        match parts.replica.commit(new.record()).await {
            Ok(()) => recorded = identity,
            Err(e) => tracing::warn!(node = %parts.id, error = %e, "cannot record the new ring"),
        }
    }
}

/// A running node: the embedded API of the store.
///
/// Cloning is cheap and shares the node. Dropping the last clone does not
/// stop it; call [`Node::shutdown`].
#[derive(Clone)]
pub struct Node {
    core: Arc<NodeParts>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.core.id).finish_non_exhaustive()
    }
}

impl Node {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.core.id
    }

    /// This node's configuration.
    pub fn config(&self) -> &Config {
        &self.core.config
    }

    /// The ring this node routes by; `None` until it has learned one
    /// (a node started with only seeds).
    pub fn ring(&self) -> Option<Arc<Ring>> {
        self.core.membership.view().ring().cloned()
    }

    /// What the node's failure detector knows of `peer` (availability,
    /// phi, when it was last heard from).
    pub fn peer_health(&self, peer: NodeId) -> crate::failure::PeerHealth {
        self.core.detector.health(peer)
    }

    /// The node's gossip state, when it gossips.
    pub fn gossip_state(&self) -> Option<crate::gossip::GossipState> {
        self.core.gossip.as_ref().map(|g| g.state())
    }

    /// The membership this node was started with.
    pub fn membership(&self) -> Arc<dyn Membership> {
        Arc::clone(&self.core.membership)
    }

    /// A copy of the node's counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.core.metrics.snapshot()
    }

    fn ensure_open(&self) -> Result<()> {
        if self.core.closed.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }

    /// Reads `key` from R replicas.
    ///
    /// Returns every live sibling (or the reconciler's resolution) and the
    /// context to write back with. A missing or deleted key is a result
    /// with no values, not an error.
    ///
    /// # Errors
    /// Bad key or R, [`Error::QuorumFailed`] / [`Error::Timeout`] naming
    /// how many replicas answered.
    pub async fn get(&self, key: &[u8], opts: ReadOptions) -> Result<GetResult> {
        self.ensure_open()?;
        let r = opts.r.unwrap_or(self.core.config.r);
        let timeout = opts.timeout.unwrap_or(self.core.config.request_timeout());
        let started = tokio::time::Instant::now();
        let state = self.core.coordinator.read(Bytes::copy_from_slice(key), r, timeout).await;
        self.core.background.record_foreground(started.elapsed());
        Ok(self.present(key, state?))
    }

    fn present(&self, key: &[u8], state: SiblingSet) -> GetResult {
        let live: Vec<Sibling> = state.live().cloned().collect();
        let shown: Vec<(Bytes, Option<String>)> = if state.siblings().len() > 1 {
            let typed = |s: &Sibling| Some((s.value.clone()?, s.content_type.clone()));
            match self.core.reconciler.reconcile(key, state.siblings()) {
                Resolution::Keep => live.iter().filter_map(typed).collect(),
                Resolution::Winner(dot) => {
                    state.siblings().iter().filter(|s| s.dot == dot).filter_map(typed).collect()
                }
                Resolution::Merged(v) => vec![(v, None)],
            }
        } else {
            live.iter().filter_map(|s| Some((s.value.clone()?, s.content_type.clone()))).collect()
        };
        let (values, content_types) = shown.into_iter().unzip();
        GetResult { values, content_types, siblings: live, context: Context::of_state(&state) }
    }

    /// Writes `value` under `key` with W acks.
    ///
    /// With the context of an earlier read, the write replaces what that
    /// read saw; without one it is concurrent with every existing value.
    /// Returns a context covering this write and everything `context`
    /// covered, so writing again with it replaces this write (and only it).
    ///
    /// # Errors
    /// Bad key, value or W; [`Error::TooManySiblings`];
    /// [`Error::QuorumFailed`] / [`Error::Timeout`] naming the acks.
    pub async fn put(
        &self,
        key: &[u8],
        value: Bytes,
        context: Option<&Context>,
        opts: WriteOptions,
    ) -> Result<Context> {
        self.write(key, Some(value), None, context, opts).await
    }

    /// [`put`](Node::put) of a value with its media type (as Riak keeps a
    /// value's `Content-Type`), returned with it by reads.
    ///
    /// # Errors
    /// As [`Node::put`]; [`Error::InvalidContentType`] for a type over 255
    /// bytes or with characters outside visible ASCII.
    pub async fn put_typed(
        &self,
        key: &[u8],
        value: Bytes,
        content_type: Option<&str>,
        context: Option<&Context>,
        opts: WriteOptions,
    ) -> Result<Context> {
        self.write(key, Some(value), content_type.map(str::to_owned), context, opts).await
    }

    /// Deletes `key` by writing a tombstone with W acks.
    ///
    /// With a context, deletes exactly what it covers; without one, the
    /// coordinator first reads the key at R and deletes what that read saw
    /// (as Riak does). Deleted keys never come back through stale replicas.
    ///
    /// # Errors
    /// As [`Node::put`].
    pub async fn delete(&self, key: &[u8], context: Option<&Context>, opts: WriteOptions) -> Result<Context> {
        self.write(key, None, None, context, opts).await
    }

    async fn write(
        &self,
        key: &[u8],
        value: Option<Bytes>,
        content_type: Option<String>,
        context: Option<&Context>,
        opts: WriteOptions,
    ) -> Result<Context> {
        self.ensure_open()?;
        let timeout = opts.timeout.unwrap_or(self.core.config.request_timeout());
        let req = WriteRequest {
            id: self.core.next_request_id(),
            key: Bytes::copy_from_slice(key),
            value,
            content_type,
            context: context.map(|c| c.causal().clone()),
            seen_us: context.map_or(0, Context::seen_us),
            w: opts.w.unwrap_or(self.core.config.w),
            timeout_ms: timeout.as_millis().try_into().unwrap_or(u64::MAX),
            start_by_us: 0,
        };
        let started = tokio::time::Instant::now();
        let written = self.core.coordinator.write(req, timeout).await;
        self.core.background.record_foreground(started.elapsed());
        written
    }

    /// The preference list of `key`: the N nodes that own it (empty until
    /// the node has learned the ring).
    pub fn preference_list(&self, key: &[u8]) -> Vec<NodeId> {
        self.ring().map(|ring| ring.preference_list(ring.partition_of(key)).to_vec()).unwrap_or_default()
    }

    /// What this node itself stores for `key`, as a replica and as hints.
    ///
    /// # Errors
    /// Bad key, store errors, [`Error::Corrupt`] for undecodable data.
    pub async fn local_state(&self, key: &[u8]) -> Result<LocalState> {
        check_key(&self.core.config, key)?;
        let view = self.core.membership.view();
        let ring = view.require_ring()?;
        let partition = ring.partition_of(key);
        let data = self.core.replica.load(Slot::Data, partition, key).await?;
        let mut hints = Vec::new();
        for m in view.members() {
            if let Some(h) = self.core.replica.load(Slot::HintFor(m.id), partition, key).await? {
                hints.push((m.id, h));
            }
        }
        Ok(LocalState { partition, preference_list: ring.preference_list(partition).to_vec(), data, hints })
    }

    /// Offers every stored hint to its owner now (the background task does
    /// this every `hint_delivery_interval_ms`); returns how many were delivered.
    ///
    /// # Errors
    /// Store errors while scanning hints.
    pub async fn deliver_hints(&self) -> Result<usize> {
        self.ensure_open()?;
        self.core.handoff.deliver_hints().await
    }

    /// What anti-entropy has done on this node: exchanges, repairs, bytes,
    /// purges, and each replicated partition's tree and last exchange.
    pub fn aae_status(&self) -> AaeStatus {
        self.core.aae.status()
    }

    /// Runs one anti-entropy round now, as the background task does every
    /// `aae_interval_ms` (whether or not `anti_entropy` is on): builds
    /// missing trees, then compares every replicated partition whose data
    /// is not moving with its next replica and repairs both sides.
    pub async fn aae_pass(&self) -> AaeReport {
        self.core.aae.round().await
    }

    /// Runs one tombstone purge pass now over the partitions this node is
    /// the first replica of, as the background task does every
    /// `tombstone_purge_interval_ms`; returns how many tombstones this
    /// node purged. A tombstone goes only once older than
    /// `tombstone_grace_ms` and held by every replica.
    pub async fn purge_pass(&self) -> u64 {
        self.core.aae.purge_round().await
    }

    /// Admission control for background work: its slots now, the
    /// foreground p99 it judges by, and how often it throttled.
    pub fn admission(&self) -> AdmissionStats {
        self.core.background.stats()
    }

    /// Hints held by this node, counted per owner.
    ///
    /// # Errors
    /// Store errors.
    pub async fn pending_hints(&self) -> Result<Vec<(NodeId, usize)>> {
        self.core.handoff.pending_hints().await
    }

    fn topology_gossip(&self) -> Result<&Arc<Gossip>> {
        self.core.gossip.as_ref().ok_or_else(|| {
            Error::TopologyRefused(
                "this node has a fixed member list; topology changes need gossip (configure seeds)".into(),
            )
        })
    }

    fn staged_lock(&self) -> std::sync::MutexGuard<'_, (u64, Vec<Change>)> {
        self.core.staged.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stages a topology change on this node (Riak's `cluster join`,
    /// `leave`, `remove`); [`Node::commit`] applies what is staged. Returns
    /// every staged change.
    ///
    /// # Errors
    /// [`Error::TopologyRefused`] naming why (see
    /// [`topology::check_change`]), or when the node does not gossip;
    /// [`Error::NotReady`] before the node knows the ring. Nothing is
    /// staged then.
    pub fn stage(&self, change: Change) -> Result<Vec<Change>> {
        self.topology_gossip()?;
        let view = self.core.membership.view();
        let ring = view.require_ring()?;
        let mut staged = self.staged_lock();
        if staged.1.is_empty() {
            staged.0 = ring.epoch();
        }
        topology::check_change(ring, view.members(), self.core.id, &staged.1, change)?;
        staged.1.push(change);
        Ok(staged.1.clone())
    }

    /// The changes staged on this node, in the order given.
    pub fn staged(&self) -> Vec<Change> {
        self.staged_lock().1.clone()
    }

    /// Drops every staged change.
    pub fn clear_staged(&self) {
        *self.staged_lock() = (0, Vec::new());
    }

    /// What committing the staged changes would do: partition moves, from
    /// whom to whom, and every node's share before and after.
    ///
    /// # Errors
    /// As [`topology::plan`]; [`Error::StalePlan`] when the ring changed
    /// since the changes were staged; [`Error::NotReady`] before the node
    /// knows the ring.
    pub fn plan(&self) -> Result<Plan> {
        self.topology_gossip()?;
        let view = self.core.membership.view();
        let ring = view.require_ring()?;
        let (base, changes) = self.staged_lock().clone();
        if !changes.is_empty() && base != ring.epoch() {
            return Err(Error::StalePlan { planned: base, current: ring.epoch() });
        }
        Ok(topology::plan(ring, view.members(), &changes)?.2)
    }

    /// Applies the staged changes as a new ring epoch, which gossip
    /// spreads; ownership handoff then moves the data. With `expected`, the
    /// plan must have been computed against that ring epoch. Returns the
    /// plan applied; the staged changes are cleared.
    ///
    /// # Errors
    /// [`Error::StalePlan`] when the ring is not at the epoch the changes
    /// were staged against (or `expected`); [`Error::TopologyRefused`]
    /// while the previous change still moves data, or as
    /// [`Node::plan`]. Nothing changes then.
    pub async fn commit(&self, expected: Option<u64>) -> Result<Plan> {
        let gossip = Arc::clone(self.topology_gossip()?);
        let (next, transition, plan) = {
            let view = self.core.membership.view();
            let ring = view.require_ring()?;
            let (base, changes) = self.staged_lock().clone();
            let planned = expected.unwrap_or(base);
            if planned != ring.epoch() && !changes.is_empty() {
                return Err(Error::StalePlan { planned, current: ring.epoch() });
            }
            if let Some(h) = view.handover().filter(|h| !h.all_settled()) {
                let moving = (0..ring.partitions()).filter(|&p| !h.is_settled(p)).count();
                return Err(Error::TopologyRefused(format!(
                    "ring epoch {} still moves data ({moving} partitions unsettled); commit once handoff is done",
                    ring.epoch()
                )));
            }
            topology::plan(ring, view.members(), &changes)?
        };
        let mut layout = next.layout();
        layout.transition = Some(transition);
        gossip.commit_ring(plan.base_epoch, layout).await?;
        gossip.spread_now().await;
        self.clear_staged();
        tracing::info!(node = %self.core.id, epoch = plan.epoch, changes = ?plan.changes, transfers = plan.transfers.len(), "committed a topology change");
        Ok(plan)
    }

    /// The move of data to the current ring, as this node sees it (every
    /// transfer, with the keys and bytes this node received or sent).
    pub fn handoff_status(&self) -> HandoffStatus {
        match &self.core.ownership {
            Some(o) => o.status(),
            None => {
                let ring = self.ring();
                HandoffStatus {
                    epoch: ring.as_ref().map_or(0, |r| r.epoch()),
                    from_epoch: None,
                    settled_partitions: ring.as_ref().map_or(0, |r| r.partitions()),
                    partitions: ring.as_ref().map_or(0, |r| r.partitions()),
                    transfers: Vec::new(),
                }
            }
        }
    }

    /// Runs one pass of ownership handoff now (copies to start, partitions
    /// to drop), as the background task does every `handoff_interval_ms`.
    pub async fn handoff_pass(&self) {
        if let Some(o) = &self.core.ownership {
            let mut copies = tokio::task::JoinSet::<bool>::new();
            o.pass(&mut copies).await;
            while copies.join_next().await.is_some() {}
        }
    }

    /// Stops the node gracefully: refuses new requests, stops background
    /// tasks and the transport, waits for the writes in flight to be
    /// stored, then marks the store cleanly shut down and flushes it (so
    /// even a buffered store keeps every acknowledged write, and the next
    /// start keeps this run's actor epochs).
    ///
    /// # Errors
    /// Store errors while marking or flushing: the next start then counts
    /// as unclean (fresh epochs), which is safe; buffered writes not yet
    /// flushed may be lost from this node's copy.
    pub async fn shutdown(&self) -> Result<()> {
        self.stop().await;
        self.core.replica.close().await
    }

    /// Stops the node as a crash would, for tests and fail-stop embedders:
    /// it stops serving and its tasks at once, and leaves the store as it
    /// is, without the clean-shutdown mark. The next start treats it as a
    /// crash: it takes fresh actor epochs, so nothing this run wrote, lost
    /// or not, can have its dots reissued.
    pub async fn halt(&self) {
        self.stop().await;
    }

    async fn stop(&self) {
        if self.core.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let tasks = std::mem::take(&mut *self.core.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for t in tasks {
            t.abort();
        }
        self.core.transport.shutdown().await;
    }
}
