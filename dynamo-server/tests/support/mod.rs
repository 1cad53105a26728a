//! The real binary as separate processes on loopback, shared by the
//! multi-process tests: `serve` processes with their configs in a
//! tempdir, started, killed and restarted like hosts. Their peer links are
//! mutual TLS, each node with its own certificate from the cluster's CA.

#![allow(dead_code)] // Each test binary uses its own part.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dynamo_server::client::ApiClient;
use dynamo_server::config::{MemberConfig, PeerTlsConfig, ServerConfig};
use dynamo_transport_tcp::certs::{write_private, ClusterCa};

pub const READY: Duration = Duration::from_secs(30);
pub const CONVERGE: Duration = Duration::from_secs(60);

pub struct Proc {
    pub config: PathBuf,
    pub url: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

/// Three `dynamo-server serve` processes with their configs in a tempdir.
pub struct ProcCluster {
    pub dir: tempfile::TempDir,
    /// The loopback address all its nodes listen on.
    pub host: String,
    pub nodes: Vec<Proc>,
    /// The CA of the nodes' peer certificates.
    pub ca: ClusterCa,
}

/// Issues node `id` at `host` a certificate from `ca`, writes it and the
/// CA's certificate under `dir`, and returns the `[peer.tls]` for them.
pub fn certify(ca: &ClusterCa, dir: &std::path::Path, id: u64, host: &str) -> PeerTlsConfig {
    std::fs::create_dir_all(dir).unwrap();
    let issued = ca.issue(&format!("node-{id}"), &[host.to_owned()]).unwrap();
    let tls = PeerTlsConfig {
        ca_file: dir.join("ca.pem"),
        cert_file: dir.join(format!("node-{id}.pem")),
        key_file: dir.join(format!("node-{id}.key")),
        crl_file: None,
    };
    std::fs::write(&tls.ca_file, ca.cert_pem()).unwrap();
    std::fs::write(&tls.cert_file, &issued.cert_pem).unwrap();
    write_private(&tls.key_file, &issued.key_pem).unwrap();
    tls
}

/// A loopback address of its own for one cluster, `127.a.b.1` with `a`
/// and `b` drawn at random: every outgoing connection on this host leaves
/// from 127.0.0.1, so a port found free here cannot be taken by a node's
/// dial (from the same ephemeral range) before the node listening on it
/// has started, nor by another test's cluster.
pub fn private_loopback() -> String {
    use std::hash::{BuildHasher, Hasher};
    let draw = std::collections::hash_map::RandomState::new().build_hasher().finish();
    format!("127.{}.{}.1", 1 + draw % 254, (draw >> 8) % 256)
}

/// `n` distinct ports free on `host` now: each is held until all are
/// chosen, so no two are the same.
pub fn free_ports(host: &str, n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind((host, 0)).unwrap()).collect();
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

impl ProcCluster {
    pub fn start(nodes: usize) -> ProcCluster {
        ProcCluster::start_with(nodes, |_| {})
    }

    pub fn start_with(nodes: usize, adjust: impl Fn(&mut ServerConfig)) -> ProcCluster {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("test cluster").unwrap();
        let host = private_loopback();
        let free = free_ports(&host, 2 * nodes);
        let ports: Vec<(u16, u16)> = free.chunks_exact(2).map(|pair| (pair[0], pair[1])).collect();
        let members: Vec<MemberConfig> = ports
            .iter()
            .enumerate()
            .map(|(i, (http, peer))| MemberConfig {
                id: i as u64 + 1,
                addr: format!("{host}:{peer}"),
                http: Some(format!("http://{host}:{http}")),
                zone: None,
                capacity: 1,
            })
            .collect();
        let mut procs = Vec::new();
        for (i, (http, peer)) in ports.iter().enumerate() {
            let mut c = ServerConfig {
                node_id: i as u64 + 1,
                data_dir: dir.path().join(format!("node-{}", i + 1)),
                members: members.clone(),
                ..ServerConfig::default()
            };
            c.http.listen = format!("{host}:{http}");
            c.peer.listen = format!("{host}:{peer}");
            c.cluster.n = nodes.min(3);
            c.cluster.r = c.cluster.n / 2 + 1;
            c.cluster.w = c.cluster.n / 2 + 1;
            c.cluster.suspect_period_ms = 500;
            c.cluster.hint_delivery_interval_ms = 200;
            c.peer.tls = Some(certify(&ca, &dir.path().join(format!("tls-{}", c.node_id)), c.node_id, &host));
            adjust(&mut c);
            std::fs::create_dir_all(&c.data_dir).unwrap();
            let path = c.data_dir.join("dynamo.toml");
            std::fs::write(&path, toml::to_string_pretty(&c).unwrap()).unwrap();
            procs.push(Proc {
                config: path,
                url: format!("http://{host}:{http}"),
                child: None,
                log: c.data_dir.join("node.log"),
            });
        }
        let mut cluster = ProcCluster { dir, host, nodes: procs, ca };
        for i in 0..nodes {
            cluster.spawn(i);
        }
        cluster
    }

    pub fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dynamo-server"))
            .args(["serve", "--config"])
            .arg(&node.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn dynamo-server");
        node.child = Some(child);
    }

    pub async fn wait_ready(&self, i: usize) {
        let client = self.client(i);
        let deadline = Instant::now() + READY;
        while !client.is_healthy().await {
            assert!(Instant::now() < deadline, "node {} not ready; log:\n{}", i + 1, self.log(i));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn ready(self) -> Self {
        for i in 0..self.nodes.len() {
            self.wait_ready(i).await;
        }
        self
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    pub fn client(&self, i: usize) -> ApiClient {
        ApiClient::new(&self.nodes[i].url).unwrap()
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self, i: usize) -> std::process::ExitStatus {
        let mut child = self.nodes[i].child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        child.wait().unwrap()
    }

    /// SIGKILL, like a crashed host.
    pub fn kill(&mut self, i: usize) {
        let mut child = self.nodes[i].child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The same command again.
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_ready(i).await;
    }

    /// Node `i`'s configuration, as written to its file.
    pub fn config(&self, i: usize) -> ServerConfig {
        toml::from_str(&std::fs::read_to_string(&self.nodes[i].config).unwrap()).unwrap()
    }

    /// Starts one more node configured as node 1 but with no member list
    /// and `seeds`: it learns the cluster by gossip and owns nothing until
    /// a topology change gives it partitions. Returns its index.
    pub fn add_node(&mut self, seeds: Vec<String>) -> usize {
        self.add_node_with(seeds, |_| {})
    }

    /// [`add_node`](Self::add_node) with its configuration changed by
    /// `adjust` before it is written and the node started.
    pub fn add_node_with(&mut self, seeds: Vec<String>, adjust: impl FnOnce(&mut ServerConfig)) -> usize {
        let mut c = self.config(0);
        let id = self.nodes.len() as u64 + 1;
        let host = &self.host;
        let [http, peer] = free_ports(host, 2)[..] else { unreachable!("two ports asked for") };
        c.node_id = id;
        c.data_dir = self.dir.path().join(format!("node-{id}"));
        c.members = Vec::new();
        c.http.listen = format!("{host}:{http}");
        c.peer.listen = format!("{host}:{peer}");
        c.peer.advertise = None;
        c.cluster.seeds = seeds;
        c.peer.tls = Some(certify(&self.ca, &self.dir.path().join(format!("tls-{id}")), id, host));
        adjust(&mut c);
        std::fs::create_dir_all(&c.data_dir).unwrap();
        let path = c.data_dir.join("dynamo.toml");
        std::fs::write(&path, toml::to_string_pretty(&c).unwrap()).unwrap();
        self.nodes.push(Proc {
            config: path,
            url: format!("http://{host}:{http}"),
            child: None,
            log: c.data_dir.join("node.log"),
        });
        let i = self.nodes.len() - 1;
        self.spawn(i);
        i
    }

    pub fn url(&self, i: usize) -> &str {
        &self.nodes[i].url
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut c) = node.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Retries `check` until it returns Ok, or panics with its last error at the deadline.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + CONVERGE;
    loop {
        match check().await {
            Ok(()) => return,
            Err(e) => {
                assert!(Instant::now() < deadline, "{what}: still failing after {CONVERGE:?}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
