//! A [`Backend`] of real sockets and real disks: every node has a TCP
//! transport on 127.0.0.1 and a redb store in a temporary directory.
//! Shared by the TCP + redb test suite, the anti-entropy benchmark and its
//! smoke test (`#[path]`-included: it needs the dev-dependencies).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use dynamo_core::store::{Durability, Store};
use dynamo_core::transport::Transport;
use dynamo_core::{Error, Result};
use dynamo_store_redb::{RedbOptions, RedbStore};
use dynamo_testkit::Backend;
use dynamo_transport_tcp::{TcpConfig, TcpTransport};

/// TCP on loopback and redb in a temporary directory.
pub struct TcpRedb {
    dir: tempfile::TempDir,
    addrs: Vec<String>,
    opened: AtomicUsize,
    durability: Durability,
}

impl TcpRedb {
    /// Reserves a loopback port per node (bound to port 0, then released);
    /// stores in buffered durability.
    pub fn new(nodes: usize) -> Self {
        TcpRedb::with_durability(nodes, Durability::Buffered)
    }

    /// As [`TcpRedb::new`], with stores in `durability`.
    pub fn with_durability(nodes: usize, durability: Durability) -> Self {
        let listeners: Vec<std::net::TcpListener> =
            (0..nodes).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port")).collect();
        let addrs = listeners.iter().map(|l| l.local_addr().expect("bound").to_string()).collect();
        TcpRedb {
            dir: tempfile::tempdir().expect("a temporary directory"),
            addrs,
            opened: AtomicUsize::new(0),
            durability,
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
        let options = RedbOptions { durability: self.durability, ..RedbOptions::default() };
        Ok(Arc::new(RedbStore::open(&dir, options).map_err(Error::Store)?))
    }
}
