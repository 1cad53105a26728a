//! The in-memory backends pass the same suites as the real ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use dynamo_core::store::{MemStore, Store};
use dynamo_core::transport::Transport;
use dynamo_testkit::conformance::{store_suite, transport_suite, TransportFixture};
use dynamo_testkit::SimNetwork;

#[test]
fn memstore_passes_the_store_suite() {
    // "Reopening" a MemStore is finding the same instance for the same path.
    let stores: Mutex<BTreeMap<PathBuf, Arc<MemStore>>> = Mutex::new(BTreeMap::new());
    store_suite(move |dir: &Path| -> Arc<dyn Store> {
        stores.lock().unwrap().entry(dir.to_path_buf()).or_insert_with(|| Arc::new(MemStore::new())).clone()
    });
}

struct SimFixture {
    net: SimNetwork,
    next: AtomicU64,
}

#[async_trait]
impl TransportFixture for SimFixture {
    async fn bind(&self) -> Arc<dyn Transport> {
        self.net.endpoint(&format!("sim-{}", self.next.fetch_add(1, Ordering::SeqCst)))
    }
    async fn bind_at(&self, addr: &str) -> Arc<dyn Transport> {
        self.net.endpoint(addr)
    }
    fn unused_addr(&self) -> String {
        "sim-nobody".into()
    }
    fn max_frame(&self) -> usize {
        self.net.max_frame()
    }
}

#[tokio::test]
async fn sim_transport_passes_the_transport_suite() {
    let net = SimNetwork::new(3);
    net.set_max_frame(64 * 1024);
    transport_suite(SimFixture { net, next: AtomicU64::new(0) }).await;
}
