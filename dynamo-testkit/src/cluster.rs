//! Whole clusters in one process, on a simulated network.
//!
//! ```
//! # async fn demo() {
//! use dynamo_testkit::Cluster;
//! let cluster = Cluster::builder().nodes(5).n(3).r(2).w(2).seed(7).build().await.unwrap();
//! let client = cluster.client(0);
//! client.put(b"k", "v".into(), None).await.unwrap();
//! cluster.partition(&[0, 1], &[2, 3, 4]);
//! cluster.heal();
//! cluster.wait_converged(std::time::Duration::from_secs(30)).await.unwrap();
//! # }
//! ```
//!
//! Tests run best on tokio's paused clock (`#[tokio::test(start_paused =
//! true)]`): deadlines, delays and background intervals then elapse in
//! virtual time, and one seed replays one run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use dynamo_core::causality::SiblingSet;
use dynamo_core::clock::Clock;
use dynamo_core::config::Config;
use dynamo_core::fault_point::FaultInjector;
use dynamo_core::gossip::GossipSettings;
use dynamo_core::member::{Member, NodeId};
use dynamo_core::membership::{MemberInfo, MemberStatus};
use dynamo_core::node::{LocalState, Node, NodeBuilder, ReadOptions};
use dynamo_core::reconcile::{KeepSiblings, Reconciler};
use dynamo_core::ring::Ring;
use dynamo_core::store::Store;
use dynamo_core::{Error, Result};

use crate::backend::{Backend, Faults, FaultyTransport, SimBackend};
use crate::client::Client;
use crate::history::History;
use crate::sim_net::SimNetwork;

/// The seed a test runs with: `DYNAMO_TEST_SEED` when set, else `default`.
pub fn test_seed(default: u64) -> u64 {
    std::env::var("DYNAMO_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Wall-clock microseconds that advance with tokio's (possibly paused)
/// clock, from a fixed origin: timestamps replay exactly in simulation.
/// Each node of a [`Cluster`] has its own, which a test can make jump or
/// drift.
#[derive(Debug)]
pub struct SimClock {
    origin: tokio::time::Instant,
    /// Added to the reading, in µs (a jump).
    offset_us: AtomicI64,
    /// Parts per million the clock runs fast (or slow, negative).
    drift_ppm: AtomicI64,
}

/// 2026-01-01T00:00:00Z in µs since the Unix epoch.
const SIM_EPOCH_US: i64 = 1_767_225_600_000_000;

impl SimClock {
    /// A clock reading 2026-01-01T00:00:00Z now.
    pub fn new() -> Self {
        SimClock::starting_at(tokio::time::Instant::now())
    }

    /// A clock that read 2026-01-01T00:00:00Z at `origin`.
    pub fn starting_at(origin: tokio::time::Instant) -> Self {
        SimClock { origin, offset_us: AtomicI64::new(0), drift_ppm: AtomicI64::new(0) }
    }

    /// Steps the clock by `delta_us` (backwards when negative), as an NTP
    /// step or an operator's `date -s` does.
    pub fn jump(&self, delta_us: i64) {
        self.offset_us.fetch_add(delta_us, AtomicOrdering::Relaxed);
    }

    /// Makes the clock run `ppm` parts per million fast (slow if
    /// negative), over its whole life.
    pub fn set_drift_ppm(&self, ppm: i64) {
        self.drift_ppm.store(ppm, AtomicOrdering::Relaxed);
    }

    /// Removes every jump and drift.
    pub fn reset(&self) {
        self.offset_us.store(0, AtomicOrdering::Relaxed);
        self.drift_ppm.store(0, AtomicOrdering::Relaxed);
    }
}

impl Default for SimClock {
    fn default() -> Self {
        SimClock::new()
    }
}

impl Clock for SimClock {
    fn now_us(&self) -> u64 {
        let elapsed = i64::try_from(self.origin.elapsed().as_micros()).unwrap_or(i64::MAX);
        let drift = elapsed.saturating_mul(self.drift_ppm.load(AtomicOrdering::Relaxed)) / 1_000_000;
        let offset = self.offset_us.load(AtomicOrdering::Relaxed);
        SIM_EPOCH_US.saturating_add(elapsed).saturating_add(drift).saturating_add(offset).max(0) as u64
    }
}

/// Configures a [`Cluster`].
pub struct ClusterBuilder {
    nodes: usize,
    config: Config,
    seed: u64,
    reconciler: Arc<dyn Reconciler>,
    zones: Option<usize>,
    backend: Option<Arc<dyn Backend>>,
    buffered: Option<Option<Duration>>,
    fault_injector: Option<Arc<dyn FaultInjector>>,
    gossip: bool,
    joiners: usize,
}

impl ClusterBuilder {
    /// Runs the nodes on `backend` instead of the simulated network and
    /// in-memory stores.
    pub fn backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Number of nodes (default 3).
    pub fn nodes(mut self, nodes: usize) -> Self {
        self.nodes = nodes;
        self
    }

    /// Replication factor N (default 3).
    pub fn n(mut self, n: usize) -> Self {
        self.config.n = n;
        self
    }

    /// Default read quorum R (default 2).
    pub fn r(mut self, r: usize) -> Self {
        self.config.r = r;
        self
    }

    /// Default write quorum W (default 2).
    pub fn w(mut self, w: usize) -> Self {
        self.config.w = w;
        self
    }

    /// Seed of the simulated network (drops, delays) and of the nodes'
    /// epochs. Default: [`test_seed`]`(1)`.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The reconciler every node uses (default [`KeepSiblings`]).
    pub fn reconciler(mut self, reconciler: Arc<dyn Reconciler>) -> Self {
        self.reconciler = reconciler;
        self
    }

    /// Runs on the simulated network with [`BufferedStore`](crate::BufferedStore)s:
    /// a killed node's store loses its unflushed writes, as a disk store in
    /// buffered durability does. They flush every `flush_every` (`None`:
    /// only when asked, e.g. through [`Cluster::flush`]).
    pub fn buffered_stores(mut self, flush_every: Option<Duration>) -> Self {
        self.buffered = Some(flush_every);
        self
    }

    /// The nodes learn and spread membership by gossip, node 0 being every
    /// node's seed (the founding nodes start from the ring of all of them).
    pub fn gossip(mut self) -> Self {
        self.gossip = true;
        self
    }

    /// Adds `k` nodes after the founding ones that start with only the
    /// seed (node 0): they learn the cluster by gossip and own nothing.
    /// Implies [`ClusterBuilder::gossip`].
    pub fn joiners(mut self, k: usize) -> Self {
        self.joiners = k;
        self.gossip = true;
        self
    }

    /// Lets `injector` trigger faults at core's fault points on every node.
    pub fn fault_injector(mut self, injector: Arc<dyn FaultInjector>) -> Self {
        self.fault_injector = Some(injector);
        self
    }

    /// Strict quorum: no fallback nodes, no hints.
    pub fn strict(mut self) -> Self {
        self.config.sloppy_quorum = false;
        self
    }

    /// How long a coordinator waits for one replica before asking a spare
    /// (milliseconds): for scenarios that wait it out many times and
    /// tolerate the requests that fail.
    pub fn replica_timeout_ms(mut self, ms: u64) -> Self {
        self.config.replica_timeout_ms = ms;
        self
    }

    /// Spreads nodes round-robin over this many zones.
    pub fn zones(mut self, zones: usize) -> Self {
        self.zones = Some(zones);
        self
    }

    /// Replaces every other setting of the nodes' [`Config`] (N, R, W and
    /// strictness set on the builder still apply after this).
    pub fn config(mut self, config: Config) -> Self {
        let (n, r, w, sloppy) = (self.config.n, self.config.r, self.config.w, self.config.sloppy_quorum);
        self.config = Config { n, r, w, sloppy_quorum: sloppy, ..config };
        self
    }

    /// Starts every node.
    ///
    /// # Errors
    /// Invalid configuration, or a node failing to start.
    pub async fn build(self) -> Result<Cluster> {
        let seed = self.seed;
        let backend = self.backend.unwrap_or_else(|| match self.buffered {
            Some(every) => Arc::new(SimBackend::with_buffered_stores(seed, every)),
            None => Arc::new(SimBackend::new(seed)),
        });
        let members: Vec<Member> = (0..self.nodes + self.joiners)
            .map(|i| {
                let m = Member::new(NodeId(i as u64 + 1), backend.address(i));
                match self.zones {
                    Some(z) => m.with_zone(format!("zone-{}", i % z)),
                    None => m,
                }
            })
            .collect();
        let ring = Ring::new(self.config.partitions, self.config.n, members[..self.nodes].to_vec())?;
        let mut config = self.config;
        if self.gossip {
            config.seeds = vec![backend.address(0)];
        }
        let origin = tokio::time::Instant::now();
        let mut slots = Vec::with_capacity(members.len());
        for (i, member) in members.into_iter().enumerate() {
            slots.push(Mutex::new(Slot {
                member,
                store: backend.store(i)?,
                node: None,
                starts: 0,
                clock: Arc::new(SimClock::starting_at(origin)),
            }));
        }
        let cluster = Cluster {
            backend,
            faults: Arc::new(Faults::default()),
            seed: self.seed,
            config,
            ring,
            gossip: self.gossip,
            founders: self.nodes,
            reconciler: self.reconciler,
            clock: Arc::new(SimClock::starting_at(origin)),
            history: History::new(),
            slots,
            fault_injector: self.fault_injector,
        };
        for i in 0..cluster.len() {
            cluster.start_node(i).await?;
        }
        Ok(cluster)
    }
}

struct Slot {
    member: Member,
    store: Arc<dyn Store>,
    node: Option<Node>,
    starts: u64,
    clock: Arc<SimClock>,
}

/// A running in-process cluster. Nodes are addressed by index
/// (`0..len()`); node `i` has id `NodeId(i + 1)`.
pub struct Cluster {
    backend: Arc<dyn Backend>,
    faults: Arc<Faults>,
    seed: u64,
    config: Config,
    ring: Ring,
    reconciler: Arc<dyn Reconciler>,
    clock: Arc<SimClock>,
    history: History,
    slots: Vec<Mutex<Slot>>,
    fault_injector: Option<Arc<dyn FaultInjector>>,
    /// Whether the nodes gossip.
    gossip: bool,
    /// How many nodes founded the ring (the rest joined by gossip).
    founders: usize,
}

impl Cluster {
    /// A builder: 3 nodes, N=3, R=2, W=2, [`KeepSiblings`], seed from
    /// [`test_seed`]`(1)`, hints delivered every 200 ms.
    pub fn builder() -> ClusterBuilder {
        let config = Config {
            hint_delivery_interval_ms: 200,
            replica_timeout_ms: 500,
            request_timeout_ms: 3_000,
            ..Config::default()
        };
        ClusterBuilder {
            nodes: 3,
            config,
            seed: test_seed(1),
            reconciler: Arc::new(KeepSiblings),
            zones: None,
            backend: None,
            buffered: None,
            fault_injector: None,
            gossip: false,
            joiners: 0,
        }
    }

    fn slot(&self, i: usize) -> std::sync::MutexGuard<'_, Slot> {
        self.slots[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn start_node(&self, i: usize) -> Result<()> {
        let (member, store, starts, clock) = {
            let mut s = self.slot(i);
            s.starts += 1;
            (s.member.clone(), s.store.clone(), s.starts, Arc::clone(&s.clock))
        };
        let mut builder = NodeBuilder::new(member.id);
        if let Some(injector) = &self.fault_injector {
            builder = builder.fault_injector(Arc::clone(injector));
        }
        builder = if self.gossip {
            let local = MemberInfo {
                id: member.id,
                addr: member.addr.clone(),
                client_addr: None,
                zone: member.zone.clone(),
                capacity: member.capacity,
                status: MemberStatus::Joining,
            };
            let initial_ring = (i < self.founders).then(|| self.ring.clone());
            builder.gossip(GossipSettings { local, initial_ring })
        } else {
            builder.ring(self.ring.clone())
        };
        let node = builder
            .config(self.config.clone())
            .store(store)
            .transport(FaultyTransport::wrap(
                self.backend.transport(&member.addr).await?,
                Arc::clone(&self.faults),
            ))
            .reconciler(Arc::clone(&self.reconciler))
            .clock(clock)
            .epoch_seed(self.seed ^ (member.id.0 << 32) ^ starts)
            .start()
            .await?;
        self.slot(i).node = Some(node);
        Ok(())
    }

    /// The seed this cluster runs with; print it when a test fails.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the cluster has no node.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The backend's name, e.g. `"sim"`.
    pub fn backend_name(&self) -> &str {
        self.backend.name()
    }

    /// The simulated network, for drops and delays, when the cluster runs
    /// on one (the default backend).
    pub fn sim_net(&self) -> Option<&SimNetwork> {
        self.backend.sim_net()
    }

    /// The simulated network.
    ///
    /// # Panics
    /// When the cluster runs on another backend.
    pub fn net(&self) -> &SimNetwork {
        self.sim_net().unwrap_or_else(|| {
            panic!("this cluster runs on {}, not the simulated network", self.backend.name())
        })
    }

    /// The ring the cluster was founded with (see
    /// [`Cluster::current_ring`] once topology changes were committed).
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The newest ring a running node routes by (the founding ring when
    /// none runs).
    pub fn current_ring(&self) -> Arc<Ring> {
        (0..self.len())
            .filter_map(|i| self.node(i)?.ring())
            .max_by_key(|r| r.epoch())
            .unwrap_or_else(|| Arc::new(self.ring.clone()))
    }

    /// Whether every running node knows the newest ring and has settled
    /// its move (every partition's data where that ring places it).
    pub fn handoff_settled(&self) -> bool {
        let epoch = self.current_ring().epoch();
        (0..self.len()).filter_map(|i| self.node(i)).all(|n| {
            let status = n.handoff_status();
            status.epoch == epoch && status.settled_partitions == status.partitions
        })
    }

    /// Waits until [`Cluster::handoff_settled`] holds.
    ///
    /// # Errors
    /// What is still moving when `timeout` passes.
    pub async fn wait_handoff_settled(&self, timeout: Duration) -> std::result::Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.handoff_settled() {
            if tokio::time::Instant::now() >= deadline {
                let states: Vec<String> = (0..self.len())
                    .filter_map(|i| {
                        let s = self.node(i)?.handoff_status();
                        Some(format!(
                            "node {i}: epoch {} settled {}/{}",
                            s.epoch, s.settled_partitions, s.partitions
                        ))
                    })
                    .collect();
                return Err(format!(
                    "handoff not settled after {timeout:?}: {} (seed {})",
                    states.join("; "),
                    self.seed
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// The history every [`Client`] of this cluster records into.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Node `i`, or `None` while it is killed.
    pub fn node(&self, i: usize) -> Option<Node> {
        self.slot(i).node.clone()
    }

    /// The index of the node with id `id`.
    pub fn index_of(&self, id: NodeId) -> Option<usize> {
        (0..self.len()).find(|&i| self.slot(i).member.id == id)
    }

    /// Whether every running node's gossip state is the same (`false` when
    /// the nodes do not gossip).
    pub fn gossip_converged(&self) -> bool {
        let states: Vec<u64> =
            (0..self.len()).filter_map(|i| self.node(i)?.gossip_state()).map(|s| s.hash()).collect();
        !states.is_empty() && states.windows(2).all(|w| w[0] == w[1])
    }

    /// Waits until every running node's gossip state is the same.
    ///
    /// # Errors
    /// How many distinct states there still are when `timeout` passes.
    pub async fn wait_gossip_converged(&self, timeout: Duration) -> std::result::Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.gossip_converged() {
            if tokio::time::Instant::now() >= deadline {
                let states: Vec<(usize, dynamo_core::gossip::GossipState)> =
                    (0..self.len()).filter_map(|i| Some((i, self.node(i)?.gossip_state()?))).collect();
                let distinct: std::collections::BTreeSet<u64> =
                    states.iter().map(|(_, s)| s.hash()).collect();
                let views: Vec<String> = states
                    .iter()
                    .map(|(i, s)| {
                        let d = s.digest();
                        let members: Vec<String> = d
                            .members
                            .iter()
                            .map(|(id, st)| format!("{id}@{}.{}", st.generation, st.version))
                            .collect();
                        format!("node {i}: ring {:?}, {}", d.ring.map(|r| r.epoch), members.join(" "))
                    })
                    .collect();
                return Err(format!(
                    "{} distinct gossip states after {timeout:?} (seed {}): {}",
                    distinct.len(),
                    self.seed,
                    views.join("; ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// The indexes of the preference list of `key`, under the
    /// [current ring](Cluster::current_ring).
    pub fn preference_list(&self, key: &[u8]) -> Vec<usize> {
        let ring = self.current_ring();
        let p = ring.partition_of(key);
        ring.preference_list(p).iter().filter_map(|id| self.index_of(*id)).collect()
    }

    /// The first key `k0`, `k1`, ... whose preference list (as node
    /// indexes) satisfies `pred`.
    ///
    /// # Panics
    /// When none of the first 10,000 keys does.
    pub fn key_where(&self, pred: impl Fn(&[usize]) -> bool) -> Vec<u8> {
        (0..10_000)
            .map(|i| format!("k{i}").into_bytes())
            .find(|k| pred(&self.preference_list(k)))
            .expect("no key among the first 10,000 has such a preference list")
    }

    /// A client that sends its requests to node `i` and records them.
    pub fn client(&self, i: usize) -> Client {
        Client::new(
            i,
            self.slots[i].lock().unwrap_or_else(PoisonError::into_inner).node.clone(),
            self.history.clone(),
        )
    }

    fn addr(&self, i: usize) -> String {
        self.slot(i).member.addr.clone()
    }

    /// Cuts every link between the nodes of `a` and those of `b`: calls
    /// across the cut wait out their deadline and fail.
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                self.faults.cut(&self.addr(x), &self.addr(y));
            }
        }
    }

    /// Loses every frame from node `from` to node `to` (its requests, and
    /// its answers to `to`'s requests), while frames the other way arrive:
    /// a one-way partition.
    pub fn cut_one_way(&self, from: usize, to: usize) {
        self.faults.cut_one_way(&self.addr(from), &self.addr(to));
    }

    /// Cuts node `i` from every other node.
    pub fn isolate(&self, i: usize) {
        let others: Vec<usize> = (0..self.len()).filter(|&j| j != i).collect();
        self.partition(&[i], &others);
    }

    /// Freezes node `i` as `SIGSTOP` does (simulated network only): requests
    /// to it wait, unanswered, until [`Cluster::resume`].
    pub fn pause(&self, i: usize) {
        self.net().pause(&self.addr(i));
    }

    /// Lets a paused node run again: it handles what was held for it, late.
    pub fn resume(&self, i: usize) {
        self.net().resume(&self.addr(i));
    }

    /// The true wall-clock time now, in µs since the Unix epoch: what every
    /// node's clock reads unless a test made it jump or drift.
    pub fn now_us(&self) -> u64 {
        self.clock.now_us()
    }

    /// Node `i`'s own clock (the physical clock under its hybrid logical
    /// clock), to make it jump or drift.
    pub fn clock(&self, i: usize) -> Arc<SimClock> {
        Arc::clone(&self.slot(i).clock)
    }

    /// Removes every cut (and, on the simulated network, message loss).
    pub fn heal(&self) {
        self.faults.heal();
        self.backend.healed();
    }

    /// Stops node `i` like a crashed process: it stops answering at once,
    /// without a clean shutdown. Its store is kept for [`Cluster::restart`],
    /// minus what it had not made durable (with buffered stores).
    pub async fn kill(&self, i: usize) {
        let (node, addr) = {
            let mut s = self.slot(i);
            (s.node.take(), s.member.addr.clone())
        };
        self.backend.killed(&addr);
        if let Some(node) = node {
            node.halt().await;
        }
        self.backend.crash_store(i);
    }

    /// Stops node `i` gracefully: it finishes its writes, marks its store
    /// cleanly shut down and flushes it.
    ///
    /// # Errors
    /// The node's store failing to flush.
    pub async fn stop(&self, i: usize) -> Result<()> {
        let (node, addr) = {
            let mut s = self.slot(i);
            (s.node.take(), s.member.addr.clone())
        };
        let result = match node {
            Some(node) => node.shutdown().await,
            None => Ok(()),
        };
        self.backend.killed(&addr);
        result
    }

    /// Makes every running node's store durable now ([`Store::flush`]).
    ///
    /// # Errors
    /// The first store that fails to flush.
    pub fn flush(&self) -> Result<()> {
        for slot in &self.slots {
            slot.lock().unwrap_or_else(PoisonError::into_inner).store.flush()?;
        }
        Ok(())
    }

    /// Crashes node `i` (see [`Cluster::kill`]) and starts it again on the
    /// store it had.
    ///
    /// # Errors
    /// The node failing to start.
    pub async fn restart(&self, i: usize) -> Result<()> {
        self.kill(i).await;
        self.start_node(i).await
    }

    /// Starts node `i` again after [`Cluster::kill`] or [`Cluster::stop`].
    ///
    /// # Errors
    /// The node failing to start.
    pub async fn start(&self, i: usize) -> Result<()> {
        if self.node(i).is_some() {
            return Ok(());
        }
        self.start_node(i).await
    }

    /// Starts node `i` again on an empty store, as after a lost disk.
    ///
    /// # Errors
    /// The node failing to start.
    pub async fn wipe_and_restart(&self, i: usize) -> Result<()> {
        self.kill(i).await;
        self.slot(i).store = self.backend.store(i)?;
        self.start_node(i).await
    }

    /// What node `i` stores for `key` (as a replica and as hints).
    ///
    /// # Errors
    /// [`Error::ShuttingDown`] while the node is killed, store errors.
    pub async fn local_state(&self, i: usize, key: &[u8]) -> Result<LocalState> {
        let node = self.node(i).ok_or(Error::ShuttingDown)?;
        node.local_state(key).await
    }

    /// The replica state of `key` on node `i` (no hints).
    ///
    /// # Errors
    /// As [`Cluster::local_state`].
    pub async fn replica_state(&self, i: usize, key: &[u8]) -> Result<Option<SiblingSet>> {
        Ok(self.local_state(i, key).await?.data)
    }

    /// Waits until every key of the history has equal states on all of its
    /// preference-list nodes and no running node holds a hint.
    ///
    /// Convergence comes from hinted handoff and read repair: each round
    /// reads the keys that still differ, through a live node, so read repair
    /// can fix replicas that missed a write without a hint.
    ///
    /// # Errors
    /// A description of what still differs when `timeout` passes.
    pub async fn wait_converged(&self, timeout: Duration) -> std::result::Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let keys = self.history.keys();
        loop {
            let mut problem = None;
            for i in 0..self.len() {
                if let Some(node) = self.node(i) {
                    let hints = node.pending_hints().await.map_err(|e| e.to_string())?;
                    if !hints.is_empty() {
                        problem = Some(format!("node {i} still holds hints {hints:?}"));
                        break;
                    }
                }
            }
            let mut differing = Vec::new();
            for key in &keys {
                let mut states = BTreeMap::new();
                for i in self.preference_list(key) {
                    match self.replica_state(i, key).await {
                        Ok(s) => {
                            states.insert(i, s);
                        }
                        Err(e) => return Err(format!("node {i} cannot be inspected: {e}")),
                    }
                }
                let first = states.values().next().cloned().flatten();
                if states.values().any(|s| *s != first) {
                    differing.push(key.clone());
                }
            }
            if problem.is_none() && differing.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(problem.unwrap_or_else(|| {
                    format!(
                        "{} keys differ between replicas, first {:?} (seed {})",
                        differing.len(),
                        differing[0],
                        self.seed
                    )
                }));
            }
            if let Some(reader) = (0..self.len()).find_map(|i| self.node(i)) {
                for key in &differing {
                    let _ = reader.get(key, ReadOptions { r: Some(self.config.n), timeout: None }).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads every key of the history through node `via` with R = N,
    /// returning key → values.
    ///
    /// # Errors
    /// The first read that fails.
    pub async fn read_all(&self, via: usize) -> Result<BTreeMap<Bytes, Vec<Bytes>>> {
        let node = self.node(via).ok_or(Error::ShuttingDown)?;
        let mut out = BTreeMap::new();
        for key in self.history.keys() {
            let got = node.get(&key, ReadOptions { r: Some(self.config.n), timeout: None }).await?;
            out.insert(key, got.values);
        }
        Ok(out)
    }

    /// Stops every node.
    pub async fn shutdown(&self) {
        for i in 0..self.len() {
            self.kill(i).await;
        }
    }
}
