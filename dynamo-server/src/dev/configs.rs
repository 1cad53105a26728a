//! The configuration files of a local cluster: one per node, with
//! absolute paths, so a node started from any directory opens its own
//! store.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use super::DevArgs;
use crate::config::{MemberConfig, ServerConfig};

/// The configs of a local cluster under `data_dir` (made absolute): N =
/// min(3, nodes), quorums of a majority; the nodes gossip, with node 1 as
/// their seed, from the founding member list.
///
/// # Errors
/// No nodes, ports past 65535, or a value the configuration refuses.
pub fn dev_configs(args: &DevArgs, data_dir: &Path) -> anyhow::Result<Vec<ServerConfig>> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let data_dir = std::path::absolute(data_dir)
        .with_context(|| format!("cannot resolve the data directory {}", data_dir.display()))?;
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
            data_dir: data_dir.join(format!("node-{}", m.id)),
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
        if args.nodes > 1 {
            c.cluster.seeds = vec![members[0].addr.clone()];
        }
        c.validate()?;
        configs.push(c);
    }
    Ok(configs)
}

/// Port `base + i`.
///
/// # Errors
/// Past 65535.
pub fn port(base: u16, i: usize) -> anyhow::Result<u16> {
    u16::try_from(usize::from(base) + i).with_context(|| format!("port {base} + {i} is past 65535"))
}

/// Where a node's config file lives.
pub fn config_path(config: &ServerConfig) -> PathBuf {
    config.data_dir.join("dynamo.toml")
}

/// Where a node's output goes (appended across restarts).
pub fn log_path(config: &ServerConfig) -> PathBuf {
    config.data_dir.join("node.log")
}

/// Writes a node's config file, creating its directory.
///
/// # Errors
/// The directory or file cannot be written, naming it.
pub fn write_config(config: &ServerConfig) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let path = config_path(config);
    let text = format!(
        "# Written by `dynamo-server dev`; while dev runs, restart this node with\n#   dynamo-server dev restart {}\n# (it stays dev's child and stops with it). Alone, without dev:\n#   dynamo-server serve --config {}\n\n{}",
        config.node_id,
        path.display(),
        toml::to_string_pretty(config).context("serialize the node config")?
    );
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use dynamo_core::store::Durability;

    use super::*;

    fn args(nodes: usize) -> DevArgs {
        DevArgs {
            command: None,
            nodes,
            data_dir: PathBuf::from("dynamo-dev"),
            http_port: 8001,
            peer_port: 7001,
            durability: Durability::Buffered,
            reconciler: "keep-siblings".into(),
            plaintext: false,
            auth: false,
        }
    }

    #[test]
    fn dev_configs_are_consistent_and_valid() {
        let configs = dev_configs(&args(3), Path::new("/tmp/x")).unwrap();
        assert_eq!(configs.len(), 3);
        assert_eq!(configs[2].http.listen, "127.0.0.1:8003");
        assert_eq!(configs[2].peer.listen, "127.0.0.1:7003");
        assert_eq!((configs[0].cluster.n, configs[0].cluster.r, configs[0].cluster.w), (3, 2, 2));
        assert!(configs.iter().all(|c| c.members == configs[0].members));
        // The written file reads back as the same config.
        let text = toml::to_string_pretty(&configs[1]).unwrap();
        let back: ServerConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, configs[1]);
        let one = dev_configs(&args(1), Path::new("/tmp/x")).unwrap();
        assert_eq!((one[0].cluster.n, one[0].cluster.r, one[0].cluster.w), (1, 1, 1));
    }

    /// A relative `--data-dir` is written as an absolute path, so the
    /// node opens the same store whatever directory it is started from.
    #[test]
    fn written_configs_hold_absolute_paths() {
        let configs = dev_configs(&args(2), Path::new("relative/dir")).unwrap();
        for c in &configs {
            assert!(c.data_dir.is_absolute(), "{}", c.data_dir.display());
            assert!(c.data_dir.ends_with(format!("relative/dir/node-{}", c.node_id)));
        }
        let dir = tempfile::tempdir().unwrap();
        let configs = dev_configs(&args(1), dir.path()).unwrap();
        let path = write_config(&configs[0]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!("data_dir = \"{}\"", configs[0].data_dir.display())), "{text}");
    }
}
