//! The core's cluster suite over real sockets and real disks: every node
//! has a TCP transport on 127.0.0.1 and a redb store in a temporary
//! directory, all in this test process, on real time.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use dynamo_core::config::Config;
use dynamo_core::store::{Durability, Store};
use dynamo_core::transport::Transport;
use dynamo_core::{Error, Result};
use dynamo_store_redb::{RedbOptions, RedbStore};
use dynamo_testkit::{Backend, Cluster, ClusterBuilder};
use dynamo_transport_tcp::{TcpConfig, TcpTransport};

struct TcpRedb {
    dir: tempfile::TempDir,
    addrs: Vec<String>,
    opened: AtomicUsize,
}

impl TcpRedb {
    /// Reserves a loopback port per node (bound to port 0, then released).
    fn new(nodes: usize) -> Self {
        let listeners: Vec<std::net::TcpListener> =
            (0..nodes).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port")).collect();
        let addrs = listeners.iter().map(|l| l.local_addr().expect("bound").to_string()).collect();
        TcpRedb {
            dir: tempfile::tempdir().expect("a temporary directory"),
            addrs,
            opened: AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl Backend for TcpRedb {
    fn name(&self) -> &str {
        "tcp+redb"
    }

    fn address(&self, index: usize) -> String {
        self.addrs[index].clone()
    }

    async fn transport(&self, addr: &str) -> Result<Arc<dyn Transport>> {
        let config = TcpConfig { listen_addr: addr.to_string(), ..TcpConfig::default() };
        Ok(Arc::new(TcpTransport::bind(config).await?))
    }

    fn store(&self, index: usize) -> Result<Arc<dyn Store>> {
        let n = self.opened.fetch_add(1, Ordering::SeqCst);
        let dir: PathBuf = self.dir.path().join(format!("node-{index}-{n}"));
        // Durability is the crash tests' subject; buffered keeps this suite quick.
        let options = RedbOptions { durability: Durability::Buffered, ..RedbOptions::default() };
        Ok(Arc::new(RedbStore::open(&dir, options).map_err(Error::Store)?))
    }
}

/// A builder whose cluster runs on TCP + redb, sized for up to 5 nodes.
/// A replica timeout shorter than the default keeps the partition
/// scenarios (which wait it out) quick on real time, and still leaves room
/// for a 1 MiB value to replicate on a loaded two-core machine.
fn tcp_redb() -> ClusterBuilder {
    let config = Config {
        replica_timeout_ms: 500,
        request_timeout_ms: 3_000,
        hint_delivery_interval_ms: 200,
        ..Config::default()
    };
    Cluster::builder().config(config).backend(Arc::new(TcpRedb::new(5)))
}

dynamo_testkit::cluster_suite!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    tcp_redb()
);
