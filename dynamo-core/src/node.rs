//! A node assembled from its plugins, and the embedded API.
//!
//! [`NodeBuilder`] takes a [`Store`], a [`Transport`], the cluster's
//! [`Ring`] and a [`Reconciler`], starts serving peers and runs hint
//! delivery in the background. [`Node`] is the embedded API: any node
//! accepts any request.
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
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::task::JoinHandle;

use crate::causality::{Context, Sibling, SiblingSet};
use crate::clock::{Clock, HybridClock, SystemClock};
use crate::config::Config;
use crate::epoch::StartKind;
use crate::error::{Error, Result};
use crate::failure::{FailureDetector, OutcomeDetector};
use crate::fault_point::{FaultInjector, Faults};
use crate::member::NodeId;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::recent_requests::RecentRequests;
use crate::reconcile::{KeepSiblings, Reconciler, Resolution};
use crate::replica::{Replica, Slot};
use crate::ring::Ring;
use crate::store::Store;
use crate::stored_ring::{self, RingIdentity};
use crate::transport::protocol::{
    frame_version, Request, RequestId, Response, WriteRequest, PROTOCOL_VERSION,
};
use crate::transport::{FrameHandler, Transport};

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

/// Shared state of a running node; the request path is implemented on it
/// in `coordinator` and `hinted_handoff`.
pub(crate) struct NodeCore {
    pub(crate) id: NodeId,
    pub(crate) config: Config,
    ring: RwLock<Arc<Ring>>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) replica: Replica,
    pub(crate) detector: Arc<dyn FailureDetector>,
    pub(crate) reconciler: Arc<dyn Reconciler>,
    pub(crate) metrics: Metrics,
    /// Timestamps writes; its physical clock checks forwarded deadlines.
    pub(crate) clock: Arc<HybridClock>,
    /// Forwarded writes accepted and not yet expired (at most once each).
    pub(crate) recent: RecentRequests,
    /// The next client write's sequence number (see [`RequestId`]).
    next_seq: AtomicU64,
    /// Fault points a simulation may trigger (nothing in production).
    pub(crate) faults: Faults,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
}

impl NodeCore {
    pub(crate) fn ring(&self) -> Arc<Ring> {
        Arc::clone(&self.ring.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// A fresh identity for a client write received by this node.
    fn next_request_id(&self) -> RequestId {
        RequestId { origin: self.id, seq: self.next_seq.fetch_add(1, Ordering::Relaxed) }
    }
}

/// Serves peer frames for a node. Holds the node weakly so a transport
/// never keeps a stopped node alive.
struct Handler(std::sync::Weak<NodeCore>);

#[async_trait]
impl FrameHandler for Handler {
    async fn handle(&self, frame: Bytes) -> Bytes {
        let response = match self.0.upgrade() {
            Some(core) if !core.closed.load(Ordering::Acquire) => match Request::decode(&frame) {
                Ok(req) => core.serve_request(req).await,
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

    /// Sets the cluster's ring; it must list this node.
    pub fn ring(mut self, ring: Ring) -> Self {
        self.ring = Some(ring);
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
        let ring = self.ring.ok_or_else(|| missing("ring"))?;
        let store = self.store.ok_or_else(|| missing("store"))?;
        let transport = self.transport.ok_or_else(|| missing("transport"))?;
        if ring.partitions() != config.partitions || ring.replicas() != config.n {
            return Err(Error::Config(format!(
                "the ring has {} partitions and N = {}, the config {} and N = {}",
                ring.partitions(),
                ring.replicas(),
                config.partitions,
                config.n
            )));
        }
        let me = ring.member(self.id).ok_or(Error::NotAMember(self.id))?;
        if me.addr != transport.local_addr() {
            return Err(Error::Config(format!(
                "node {} is at {} in the ring but its transport is bound to {}",
                self.id,
                me.addr,
                transport.local_addr()
            )));
        }
        stored_ring::check(&store, &ring, self.adopt_ring).await?;
        let clock = Arc::new(HybridClock::new(self.clock));
        let replica = Replica::open(
            self.id,
            store,
            Arc::clone(&self.reconciler),
            Arc::clone(&clock),
            &config,
            self.epoch_seed,
            Faults::new(self.id, self.fault_injector.clone()),
        )
        .await?;
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
        let detector =
            self.detector.unwrap_or_else(|| Arc::new(OutcomeDetector::new(config.suspect_period())));
        let core = Arc::new(NodeCore {
            id: self.id,
            config,
            ring: RwLock::new(Arc::new(ring)),
            transport: Arc::clone(&transport),
            replica,
            detector,
            reconciler: self.reconciler,
            metrics: Metrics::default(),
            next_seq: AtomicU64::new(clock.now()),
            clock,
            recent: RecentRequests::default(),
            faults: Faults::new(self.id, self.fault_injector),
            tasks: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        });
        transport.serve(Arc::new(Handler(Arc::downgrade(&core)))).await?;
        let hints = tokio::spawn(hint_loop(Arc::downgrade(&core)));
        core.tasks.lock().unwrap_or_else(PoisonError::into_inner).push(hints);
        Ok(Node { core })
    }
}

async fn hint_loop(core: std::sync::Weak<NodeCore>) {
    let period = match core.upgrade() {
        Some(c) => c.config.hint_delivery_interval(),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(core) = core.upgrade() else { return };
        if core.closed.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = core.deliver_hints().await {
            tracing::warn!(node = %core.id, error = %e, "hint delivery round failed");
        }
    }
}

/// A running node: the embedded API of the store.
///
/// Cloning is cheap and shares the node. Dropping the last clone does not
/// stop it; call [`Node::shutdown`].
#[derive(Clone)]
pub struct Node {
    core: Arc<NodeCore>,
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

    /// The ring this node routes by.
    pub fn ring(&self) -> Arc<Ring> {
        self.core.ring()
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
        let state = self.core.read(Bytes::copy_from_slice(key), r, timeout).await?;
        Ok(self.present(key, state))
    }

    fn present(&self, key: &[u8], state: SiblingSet) -> GetResult {
        let live: Vec<Sibling> = state.live().cloned().collect();
        let values = if state.siblings().len() > 1 {
            match self.core.reconciler.reconcile(key, state.siblings()) {
                Resolution::Keep => live.iter().filter_map(|s| s.value.clone()).collect(),
                Resolution::Winner(dot) => {
                    state.siblings().iter().filter(|s| s.dot == dot).filter_map(|s| s.value.clone()).collect()
                }
                Resolution::Merged(v) => vec![v],
            }
        } else {
            live.iter().filter_map(|s| s.value.clone()).collect()
        };
        GetResult { values, siblings: live, context: Context::of_state(&state) }
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
        self.write(key, Some(value), context, opts).await
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
        self.write(key, None, context, opts).await
    }

    async fn write(
        &self,
        key: &[u8],
        value: Option<Bytes>,
        context: Option<&Context>,
        opts: WriteOptions,
    ) -> Result<Context> {
        self.ensure_open()?;
        let timeout = opts.timeout.unwrap_or(self.core.config.request_timeout());
        let req = WriteRequest {
            id: self.core.next_request_id(),
            key: Bytes::copy_from_slice(key),
            value,
            context: context.map(|c| c.causal().clone()),
            seen_us: context.map_or(0, Context::seen_us),
            w: opts.w.unwrap_or(self.core.config.w),
            timeout_ms: timeout.as_millis().try_into().unwrap_or(u64::MAX),
            start_by_us: 0,
        };
        self.core.write(req, timeout).await
    }

    /// The preference list of `key`: the N nodes that own it.
    pub fn preference_list(&self, key: &[u8]) -> Vec<NodeId> {
        let ring = self.core.ring();
        ring.preference_list(ring.partition_of(key)).to_vec()
    }

    /// What this node itself stores for `key`, as a replica and as hints.
    ///
    /// # Errors
    /// Bad key, store errors, [`Error::Corrupt`] for undecodable data.
    pub async fn local_state(&self, key: &[u8]) -> Result<LocalState> {
        self.core.validate_key(key)?;
        let ring = self.core.ring();
        let partition = ring.partition_of(key);
        let data = self.core.replica.load(Slot::Data, partition, key).await?;
        let mut hints = Vec::new();
        for m in ring.members() {
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
        self.core.deliver_hints().await
    }

    /// Hints held by this node, counted per owner.
    ///
    /// # Errors
    /// Store errors.
    pub async fn pending_hints(&self) -> Result<Vec<(NodeId, usize)>> {
        self.core.pending_hints().await
    }

    /// Replaces the ring this node routes by (same Q and N, listing this
    /// node), and records it in the store as the ring its data follows.
    /// No data moves.
    ///
    /// # Errors
    /// [`Error::Config`] when Q or N differ, [`Error::NotAMember`], store
    /// errors recording it.
    pub async fn set_ring(&self, ring: Ring) -> Result<()> {
        let current = self.core.ring();
        if ring.partitions() != current.partitions() || ring.replicas() != current.replicas() {
            return Err(Error::Config("a new ring must keep the partition count and N".into()));
        }
        if ring.member(self.core.id).is_none() {
            return Err(Error::NotAMember(self.core.id));
        }
        self.core.replica.commit(RingIdentity::of(&ring).record()).await?;
        *self.core.ring.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ring);
        Ok(())
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
