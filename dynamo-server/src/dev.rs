//! `dynamo-server dev --nodes 3`: the newcomer's cluster.
//!
//! Writes one config file per node under the data directory, starts each
//! node as its own `serve` child process (so one can be killed like a real
//! host and restarted with the printed command), waits until all answer,
//! prints their URLs and PIDs, and stops them all on Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use dynamo_core::store::Durability;
use tokio::process::{Child, Command};

use crate::client::ApiClient;
use crate::config::{MemberConfig, ServerConfig};

/// Options of `dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Directory holding each node's config, store and log.
    #[arg(long, default_value = "dynamo-dev")]
    pub data_dir: PathBuf,
    /// HTTP port of node 1; node i listens on this + i - 1.
    #[arg(long, default_value_t = 8001)]
    pub http_port: u16,
    /// Peer port of node 1; node i listens on this + i - 1.
    #[arg(long, default_value_t = 7001)]
    pub peer_port: u16,
    /// Store durability: fsync or buffered.
    #[arg(long, default_value = "fsync", value_parser = parse_durability)]
    pub durability: Durability,
    /// Reconciler name.
    #[arg(long, default_value = "keep-siblings")]
    pub reconciler: String,
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "fsync" => Ok(Durability::Fsync),
        "buffered" => Ok(Durability::Buffered),
        other => Err(format!("{other:?}: use fsync or buffered")),
    }
}

/// The configs of a local cluster: N = min(3, nodes), quorums of a majority.
pub fn dev_configs(args: &DevArgs) -> anyhow::Result<Vec<ServerConfig>> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let port = |base: u16, i: usize| -> anyhow::Result<u16> {
        u16::try_from(usize::from(base) + i).context("port out of range")
    };
    let mut members = Vec::with_capacity(args.nodes);
    for i in 0..args.nodes {
        members.push(MemberConfig {
            id: i as u64 + 1,
            addr: format!("127.0.0.1:{}", port(args.peer_port, i)?),
            http: Some(format!("http://127.0.0.1:{}", port(args.http_port, i)?)),
            zone: None,
            capacity: 1,
        });
    }
    let n = args.nodes.min(3);
    let quorum = n / 2 + 1;
    let mut configs = Vec::with_capacity(args.nodes);
    for (i, m) in members.iter().enumerate() {
        let mut c = ServerConfig {
            node_id: m.id,
            data_dir: args.data_dir.join(format!("node-{}", m.id)),
            reconciler: args.reconciler.clone(),
            members: members.clone(),
            ..ServerConfig::default()
        };
        c.http.listen = format!("127.0.0.1:{}", port(args.http_port, i)?);
        c.peer.listen = m.addr.clone();
        c.store.durability = args.durability;
        c.cluster.n = n;
        c.cluster.r = quorum;
        c.cluster.w = quorum;
        c.validate()?;
        configs.push(c);
    }
    Ok(configs)
}

fn config_path(config: &ServerConfig) -> PathBuf {
    config.data_dir.join("dynamo.toml")
}

fn write_config(config: &ServerConfig) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let path = config_path(config);
    let text = format!(
        "# Written by `dynamo-server dev`; start this node alone with\n#   dynamo-server serve --config {}\n\n{}",
        path.display(),
        toml::to_string_pretty(config).context("serialize the node config")?
    );
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

struct Running {
    id: u64,
    url: String,
    config: PathBuf,
    log: PathBuf,
    child: Child,
}

async fn start(exe: &Path, config: &ServerConfig, path: &Path) -> anyhow::Result<Running> {
    let log = config.data_dir.join("node.log");
    let out = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = Command::new(exe)
        .arg("serve")
        .arg("--config")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start node {}", config.node_id))?;
    Ok(Running {
        id: config.node_id,
        url: format!("http://{}", config.http.listen),
        config: path.to_path_buf(),
        log,
        child,
    })
}

/// Runs the local cluster until Ctrl-C.
///
/// # Errors
/// A node that cannot be configured, started, or does not become ready.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let configs = dev_configs(&args)?;
    let mut nodes = Vec::with_capacity(configs.len());
    for c in &configs {
        let path = write_config(c)?;
        nodes.push(start(&exe, c, &path).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in &mut nodes {
        let client = ApiClient::new(&node.url)?;
        while !client.is_healthy().await {
            if let Some(status) = node.child.try_wait()? {
                bail!("node {} exited ({status}) before it was ready; see {}", node.id, node.log.display());
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} did not answer at {} within 30 s; see {}",
                    node.id,
                    node.url,
                    node.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let c = &configs[0].cluster;
    println!(
        "dynamo dev cluster: {} nodes, N={} R={} W={}, data in {}",
        nodes.len(),
        c.n,
        c.r,
        c.w,
        args.data_dir.display()
    );
    for node in &nodes {
        println!(
            "  node {}  {}  pid {}  log {}",
            node.id,
            node.url,
            node.child.id().unwrap_or(0),
            node.log.display()
        );
    }
    println!("restart a node after killing it with:");
    println!("  {} serve --config {}", exe.display(), nodes[0].config.display());
    println!("try:  curl -i -X PUT --data-binary hello {}/kv/greeting", nodes[0].url);
    println!("Ctrl-C stops every node.");
    crate::serve::shutdown_signal().await;
    println!("stopping...");
    for node in &mut nodes {
        if let Some(pid) = node.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for node in &mut nodes {
        match tokio::time::timeout(Duration::from_secs(10), node.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                let _ = node.child.start_kill();
            }
        }
    }
    println!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_configs_are_consistent_and_valid() {
        let args = DevArgs {
            nodes: 3,
            data_dir: PathBuf::from("/tmp/x"),
            http_port: 8001,
            peer_port: 7001,
            durability: Durability::Buffered,
            reconciler: "keep-siblings".into(),
        };
        let configs = dev_configs(&args).unwrap();
        assert_eq!(configs.len(), 3);
        assert_eq!(configs[2].http.listen, "127.0.0.1:8003");
        assert_eq!(configs[2].peer.listen, "127.0.0.1:7003");
        assert_eq!((configs[0].cluster.n, configs[0].cluster.r, configs[0].cluster.w), (3, 2, 2));
        assert!(configs.iter().all(|c| c.members == configs[0].members));
        // The written file reads back as the same config.
        let text = toml::to_string_pretty(&configs[1]).unwrap();
        let back: ServerConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, configs[1]);
        let one = dev_configs(&DevArgs { nodes: 1, ..args }).unwrap();
        assert_eq!((one[0].cluster.n, one[0].cluster.r, one[0].cluster.w), (1, 1, 1));
    }
}
