//! Picks the compiled-in store and transport named by the configuration.
//!
//! Each engine is behind a Cargo feature; the config names one at run
//! time. A name that is unknown, or known but not compiled into this
//! binary, is refused before anything starts, naming the feature to
//! enable.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use dynamo_core::store::Store;
use dynamo_core::transport::Transport;

use crate::config::{ConfigError, ServerConfig};

/// A backend this binary knows of, and the feature that compiles it in.
struct Known {
    name: &'static str,
    feature: &'static str,
    compiled: bool,
}

const STORES: [Known; 2] = [
    Known { name: "redb", feature: "store-redb", compiled: cfg!(feature = "store-redb") },
    Known { name: "lmdb", feature: "store-lmdb", compiled: cfg!(feature = "store-lmdb") },
];

const TRANSPORTS: [Known; 2] = [
    Known { name: "tcp", feature: "transport-tcp", compiled: cfg!(feature = "transport-tcp") },
    Known { name: "libp2p", feature: "transport-libp2p", compiled: cfg!(feature = "transport-libp2p") },
];

fn check<'a>(
    kind: &str,
    key: &str,
    name: &str,
    known: &[Known],
    registered: impl Iterator<Item = &'a str>,
) -> Result<(), ConfigError> {
    match known.iter().find(|k| k.name == name) {
        Some(k) if k.compiled => Ok(()),
        Some(k) => Err(ConfigError::Invalid(format!(
            "{key} = {name:?}: this binary was built without the {kind}; rebuild with `cargo build --release -p dynamo-server --features {}`",
            k.feature
        ))),
        None => {
            let mut names: Vec<&str> = registered.collect();
            names.extend(known.iter().filter(|k| k.compiled).map(|k| k.name));
            Err(ConfigError::Invalid(format!(
                "{key} = {name:?} is not a known {kind}; this binary has: {}",
                names.join(", ")
            )))
        }
    }
}

/// Checks that the configured engines exist and are compiled in.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the engine and the feature to enable.
pub fn check_backends(config: &ServerConfig) -> Result<(), ConfigError> {
    check_store(&config.store.engine, std::iter::empty())?;
    check_transport(&config.peer.transport)
}

/// Checks that the store engine `name` is compiled in (or among
/// `registered`, the engines a [`crate::plugins::Plugins`] adds).
///
/// # Errors
/// [`ConfigError::Invalid`] naming `store.engine` and the feature to enable.
pub fn check_store<'a>(name: &str, registered: impl Iterator<Item = &'a str>) -> Result<(), ConfigError> {
    check("store", "store.engine", name, &STORES, registered)
}

/// Checks that the transport `name` is compiled in.
///
/// # Errors
/// [`ConfigError::Invalid`] naming `peer.transport` and the feature to enable.
pub fn check_transport(name: &str) -> Result<(), ConfigError> {
    check("transport", "peer.transport", name, &TRANSPORTS, std::iter::empty())
}

/// The store engines compiled into this binary.
pub fn compiled_stores() -> Vec<&'static str> {
    STORES.iter().filter(|k| k.compiled).map(|k| k.name).collect()
}

/// The transports compiled into this binary.
pub fn compiled_transports() -> Vec<&'static str> {
    TRANSPORTS.iter().filter(|k| k.compiled).map(|k| k.name).collect()
}

/// Creates `dir` if missing and checks that it is writable.
///
/// # Errors
/// The directory cannot be created or written, naming it.
pub fn usable_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let probe = dir.join(".dynamo-write-probe");
    std::fs::write(&probe, b"ok")
        .with_context(|| format!("data directory {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Opens the configured store under `data_dir`.
///
/// # Errors
/// An unusable data directory, or the engine's error (a corrupt or
/// foreign store file included).
pub fn open_store(config: &ServerConfig) -> anyhow::Result<Arc<dyn Store>> {
    check_backends(config)?;
    usable_dir(&config.data_dir)?;
    let dir = config.data_dir.join(&config.store.engine);
    match config.store.engine.as_str() {
        #[cfg(feature = "store-redb")]
        "redb" => {
            let options = dynamo_store_redb::RedbOptions {
                durability: config.store.durability,
                cache_size_bytes: config.store.redb_cache_bytes,
                wal_bytes: config.store.redb_wal_bytes,
                ..dynamo_store_redb::RedbOptions::default()
            };
            let store = dynamo_store_redb::RedbStore::open(&dir, options)
                .with_context(|| format!("cannot open the redb store in {}", dir.display()))?;
            Ok(Arc::new(store))
        }
        #[cfg(feature = "store-lmdb")]
        "lmdb" => {
            let options = dynamo_store_lmdb::LmdbOptions {
                durability: config.store.durability,
                map_size_bytes: config.store.lmdb_map_size_bytes,
                ..dynamo_store_lmdb::LmdbOptions::default()
            };
            let store = dynamo_store_lmdb::LmdbStore::open(&dir, options)
                .with_context(|| format!("cannot open the LMDB store in {}", dir.display()))?;
            Ok(Arc::new(store))
        }
        other => bail!("store engine {other:?} is not compiled in"),
    }
}

/// Binds the configured peer transport (it starts serving when the node starts).
///
/// # Errors
/// The address cannot be bound.
pub async fn open_transport(config: &ServerConfig) -> anyhow::Result<Arc<dyn Transport>> {
    check_backends(config)?;
    match config.peer.transport.as_str() {
        #[cfg(feature = "transport-tcp")]
        "tcp" => {
            let tcp = dynamo_transport_tcp::TcpConfig {
                listen_addr: config.peer.listen.clone(),
                advertise_addr: config.peer.advertise.clone(),
                max_frame_bytes: config.peer.max_frame_bytes,
                connections_per_peer: config.peer.connections_per_peer,
                connect_timeout_ms: config.peer.connect_timeout_ms,
                read_timeout_ms: config.peer.read_timeout_ms,
                idle_timeout_ms: config.peer.idle_timeout_ms,
                pool_idle_timeout_ms: config.peer.pool_idle_timeout_ms,
                max_connections: config.peer.max_connections,
                tls: config.peer.tls.as_ref().map(|t| dynamo_transport_tcp::TlsConfig {
                    ca_file: t.ca_file.clone(),
                    cert_file: t.cert_file.clone(),
                    key_file: t.key_file.clone(),
                    crl_file: t.crl_file.clone(),
                }),
                ..dynamo_transport_tcp::TcpConfig::default()
            };
            match &config.peer.tls {
                Some(tls) => tracing::info!(
                    ca = %tls.ca_file.display(),
                    cert = %tls.cert_file.display(),
                    "peer links: mutual TLS 1.3; peers must hold a certificate from the cluster's CA"
                ),
                None => tracing::warn!(
                    listen = %config.peer.listen,
                    "peer links are PLAINTEXT and unauthenticated: anyone who can reach the peer port can read and \
                     write every key; set [peer.tls] (see `dynamo-server cert`)"
                ),
            }
            let transport = dynamo_transport_tcp::TcpTransport::bind(tcp)
                .await
                .with_context(|| format!("cannot listen for peers on {}", config.peer.listen))?;
            Ok(Arc::new(transport))
        }
        #[cfg(feature = "transport-libp2p")]
        "libp2p" => {
            let p2p = dynamo_transport_libp2p::Libp2pConfig {
                listen_addr: config.peer.listen.clone(),
                advertise_addr: config.peer.advertise.clone(),
                identity_seed_hex: config.peer.identity_seed_hex.clone(),
                max_frame_bytes: config.peer.max_frame_bytes,
                ..dynamo_transport_libp2p::Libp2pConfig::default()
            };
            let transport = dynamo_transport_libp2p::Libp2pTransport::bind(p2p)
                .await
                .with_context(|| format!("cannot listen for libp2p peers on {}", config.peer.listen))?;
            Ok(Arc::new(transport))
        }
        other => bail!("transport {other:?} is not compiled in"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_missing_engines_are_named() {
        let mut c = ServerConfig::default();
        c.store.engine = "rocksdb".into();
        let err = check_backends(&c).unwrap_err().to_string();
        assert!(err.contains("\"rocksdb\" is not a known store") && err.contains("redb"), "{err}");
        c.store.engine = "lmdb".into();
        let result = check_backends(&c);
        if cfg!(feature = "store-lmdb") {
            result.unwrap();
        } else {
            let err = result.unwrap_err().to_string();
            assert!(err.contains("--release -p dynamo-server --features store-lmdb"), "{err}");
        }
    }

    /// Each compiled-in engine opens through the configuration, keeps a
    /// write across reopening, and names itself in the data directory.
    #[test]
    fn compiled_engines_open_by_name() {
        use dynamo_core::store::{Table, WriteBatch};
        for engine in compiled_stores() {
            let dir = tempfile::tempdir().unwrap();
            let mut c = ServerConfig { data_dir: dir.path().to_path_buf(), ..ServerConfig::default() };
            c.store.engine = engine.to_string();
            {
                let store = open_store(&c).unwrap();
                let mut batch = WriteBatch::new();
                batch.put(Table::Meta, &b"k"[..], &b"v"[..]);
                store.write(batch).unwrap();
            }
            let store = open_store(&c).unwrap();
            assert_eq!(store.get(Table::Meta, b"k").unwrap().as_deref(), Some(&b"v"[..]), "{engine}");
            assert!(dir.path().join(engine).is_dir(), "{engine} keeps its files under data_dir/{engine}");
        }
    }

    /// Each compiled-in transport binds by name on loopback and carries a
    /// round trip to another of its kind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compiled_transports_bind_by_name() {
        use dynamo_testkit::transport_load::Echo;
        for name in compiled_transports() {
            let mut c = ServerConfig::default();
            c.peer.transport = name.to_string();
            c.peer.listen =
                if name == "libp2p" { "/ip4/127.0.0.1/tcp/0".into() } else { "127.0.0.1:0".into() };
            let server = open_transport(&c).await.unwrap();
            server.serve(Arc::new(Echo)).await.unwrap();
            let client = open_transport(&c).await.unwrap();
            let frame = bytes::Bytes::from_static(b"ping");
            let got =
                client.call(server.local_addr(), frame.clone(), std::time::Duration::from_secs(10)).await;
            assert_eq!(got, Ok(frame), "{name}");
            client.shutdown().await;
            server.shutdown().await;
        }
    }

    #[test]
    fn unwritable_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let err = usable_dir(&file.join("sub")).unwrap_err();
        assert!(format!("{err:#}").contains("cannot create data directory"), "{err:#}");
    }
}
