//! A [`Backend`] of real sockets and real disks: every node has a TCP
//! transport on a loopback address of its own cluster and a redb store in
//! a temporary directory.
//! Shared by the TCP + redb test suite, the anti-entropy benchmark and its
//! smoke test (`#[path]`-included: it needs the dev-dependencies).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
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

/// Backends made by this process so far: each takes its own loopback
/// address.
static BACKENDS: AtomicU32 = AtomicU32::new(0);

/// A loopback address (127.0.0.0/8) no other backend of this process
/// uses, and unlikely to be another process's: the port of a killed node
/// is free while it is down, and another cluster binding port 0 on the
/// same address could take it and answer the killed node's calls.
fn own_loopback() -> Ipv4Addr {
    let n = BACKENDS.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let byte = |v: u32| u8::try_from(v % 256).unwrap_or(0);
    Ipv4Addr::new(127, byte(pid % 200 + 20), byte(n / 250), byte(n % 250 + 1))
}

impl TcpRedb {
    /// Reserves a port per node on a loopback address of its own (bound
    /// to port 0, then released); stores in buffered durability.
    pub fn new(nodes: usize) -> Self {
        TcpRedb::with_durability(nodes, Durability::Buffered)
    }

    /// As [`TcpRedb::new`], with stores in `durability`.
    pub fn with_durability(nodes: usize, durability: Durability) -> Self {
        let ip = own_loopback();
        let listeners: Vec<std::net::TcpListener> =
            (0..nodes).map(|_| std::net::TcpListener::bind((ip, 0)).expect("a free port")).collect();
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
