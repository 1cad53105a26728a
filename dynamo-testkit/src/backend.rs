//! What a [`Cluster`](crate::Cluster) runs on: a transport and a store per
//! node, plus link faults that work over any transport.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dynamo_core::store::{MemStore, Store};
use dynamo_core::transport::{FrameHandler, Transport, TransportError};
use dynamo_core::Result;

use crate::buffered_store::BufferedStore;
use crate::sim_net::SimNetwork;

/// Supplies each node of a cluster with its transport and store.
///
/// [`SimBackend`] (the default) runs on the simulated network and
/// [`MemStore`]; a test of real backends implements this in a few lines
/// (see `dynamo-testkit/tests/tcp_redb_cluster.rs`).
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A short name for messages, e.g. `"sim"` or `"tcp+redb"`.
    fn name(&self) -> &str;
    /// The address of node `index`; the same across its restarts.
    fn address(&self, index: usize) -> String;
    /// A transport bound to `addr`, called at every start of a node.
    async fn transport(&self, addr: &str) -> Result<Arc<dyn Transport>>;
    /// A new, empty store for node `index`, called at the first start and
    /// when the node's store is wiped. The cluster keeps it across restarts.
    fn store(&self, index: usize) -> Result<Arc<dyn Store>>;
    /// The node at `addr` was killed.
    fn killed(&self, _addr: &str) {}
    /// Node `index` crashed and has stopped: its store loses what it had
    /// not made durable (a no-op for stores that lose nothing).
    fn crash_store(&self, _index: usize) {}
    /// Every fault was healed.
    fn healed(&self) {}
    /// The simulated network, when the backend uses one.
    fn sim_net(&self) -> Option<&SimNetwork> {
        None
    }
}

/// The simulated network and in-memory stores: deterministic per seed.
pub struct SimBackend {
    net: SimNetwork,
    buffered: Option<BufferedStores>,
}

/// The [`BufferedStore`]s of a [`SimBackend`] that uses them.
struct BufferedStores {
    /// When a store flushes on its own (`None`: only when asked).
    flush_every: Option<Duration>,
    /// Each node's current store, so a crash can roll it back.
    by_node: Mutex<BTreeMap<usize, Arc<BufferedStore>>>,
}

impl SimBackend {
    /// A backend whose network draws its randomness from `seed`, with
    /// [`MemStore`]s (which lose nothing on a crash).
    pub fn new(seed: u64) -> Self {
        SimBackend { net: SimNetwork::new(seed), buffered: None }
    }

    /// A backend with [`BufferedStore`]s, which lose their unflushed
    /// writes when their node crashes, as redb or LMDB in buffered
    /// durability do; they flush on their own every `flush_every` (on the
    /// first write after it), or only when asked with `None`.
    pub fn with_buffered_stores(seed: u64, flush_every: Option<Duration>) -> Self {
        let stores = BufferedStores { flush_every, by_node: Mutex::new(BTreeMap::new()) };
        SimBackend { net: SimNetwork::new(seed), buffered: Some(stores) }
    }
}

#[async_trait]
impl Backend for SimBackend {
    fn name(&self) -> &str {
        "sim"
    }
    fn address(&self, index: usize) -> String {
        format!("sim-{}", index + 1)
    }
    async fn transport(&self, addr: &str) -> Result<Arc<dyn Transport>> {
        Ok(self.net.endpoint(addr))
    }
    fn store(&self, index: usize) -> Result<Arc<dyn Store>> {
        match &self.buffered {
            None => Ok(Arc::new(MemStore::new())),
            Some(stores) => {
                let store = Arc::new(BufferedStore::new(stores.flush_every));
                stores
                    .by_node
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(index, Arc::clone(&store));
                Ok(store)
            }
        }
    }
    fn killed(&self, addr: &str) {
        self.net.kill(addr);
    }
    fn crash_store(&self, index: usize) {
        if let Some(stores) = &self.buffered {
            if let Some(store) = stores.by_node.lock().unwrap_or_else(PoisonError::into_inner).get(&index) {
                // The in-memory engine cannot fail.
                let _ = store.crash();
            }
        }
    }
    fn healed(&self) {
        self.net.heal();
    }
    fn sim_net(&self) -> Option<&SimNetwork> {
        Some(&self.net)
    }
}

/// Links cut between node addresses, shared by every node of a cluster.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    cuts: Mutex<Cuts>,
}

#[derive(Debug, Default)]
struct Cuts {
    /// Both-way cuts, each as an ordered pair.
    both: BTreeSet<(String, String)>,
    /// One-way cuts: frames from the first address to the second are lost.
    one_way: BTreeSet<(String, String)>,
}

impl Faults {
    fn key(a: &str, b: &str) -> (String, String) {
        if a <= b {
            (a.to_owned(), b.to_owned())
        } else {
            (b.to_owned(), a.to_owned())
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cuts> {
        self.cuts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn cut(&self, a: &str, b: &str) {
        if a != b {
            self.lock().both.insert(Faults::key(a, b));
        }
    }

    pub(crate) fn cut_one_way(&self, from: &str, to: &str) {
        if from != to {
            self.lock().one_way.insert((from.to_owned(), to.to_owned()));
        }
    }

    pub(crate) fn heal(&self) {
        let mut cuts = self.lock();
        cuts.both.clear();
        cuts.one_way.clear();
    }

    /// Whether frames from `from` to `to` are lost.
    fn is_cut(&self, from: &str, to: &str) -> bool {
        let cuts = self.lock();
        cuts.both.contains(&Faults::key(from, to)) || cuts.one_way.contains(&(from.to_owned(), to.to_owned()))
    }
}

/// A transport whose calls across a cut link are lost: the caller waits
/// out its deadline, as across a real partition. Across a one-way cut the
/// request may get through and be executed while its answer is lost.
pub(crate) struct FaultyTransport {
    inner: Arc<dyn Transport>,
    faults: Arc<Faults>,
}

impl FaultyTransport {
    pub(crate) fn wrap(inner: Arc<dyn Transport>, faults: Arc<Faults>) -> Arc<dyn Transport> {
        Arc::new(FaultyTransport { inner, faults })
    }
}

#[async_trait]
impl Transport for FaultyTransport {
    fn local_addr(&self) -> &str {
        self.inner.local_addr()
    }

    async fn serve(&self, handler: Arc<dyn FrameHandler>) -> std::result::Result<(), TransportError> {
        self.inner.serve(handler).await
    }

    async fn call(
        &self,
        to: &str,
        frame: Bytes,
        timeout: Duration,
    ) -> std::result::Result<Bytes, TransportError> {
        let me = self.inner.local_addr();
        let lost = || TransportError::Timeout { peer: to.to_owned(), timeout };
        if self.faults.is_cut(me, to) {
            tokio::time::sleep(timeout).await;
            return Err(lost());
        }
        if !self.faults.is_cut(to, me) {
            return self.inner.call(to, frame, timeout).await;
        }
        // The request goes through; its answer does not.
        let start = tokio::time::Instant::now();
        let _ = self.inner.call(to, frame, timeout).await;
        tokio::time::sleep_until(start + timeout).await;
        Err(lost())
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await;
    }
}
