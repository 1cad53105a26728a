//! The server's configuration: one struct with defaults, assembled by
//! figment from built-in defaults, then a TOML file, then `DYNAMO_`
//! environment variables (`__` separates sections: `DYNAMO_CLUSTER__W=3`),
//! then command-line flags; validated in one place.

use std::collections::BTreeSet;
use std::path::PathBuf;

use dynamo_core::config::Config as CoreConfig;
use dynamo_core::member::{Member, NodeId};
use dynamo_core::store::Durability;
use serde::{Deserialize, Serialize};

mod load;

pub use load::{Loaded, NON_CONFIG_VARIABLES};

/// Longest `[peer]` timeout accepted, in milliseconds (one day).
const MAX_PEER_TIMEOUT_MS: u64 = 86_400_000;

/// Everything a `dynamo-server serve` process is configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// This node's id; unique in the cluster and stable across restarts.
    pub node_id: u64,
    /// Directory of the node's store; created if missing.
    pub data_dir: PathBuf,
    /// Name of the reconciler resolving siblings: `keep-siblings` or
    /// `last-write-wins` (or one a build registers).
    pub reconciler: String,
    /// The HTTP client API.
    pub http: HttpConfig,
    /// The node-to-node transport.
    pub peer: PeerConfig,
    /// The storage engine.
    pub store: StoreConfig,
    /// Quorums, limits, timeouts: the core's tunables.
    pub cluster: CoreConfig,
    /// Every node of the cluster, this one included. Empty: a one-node
    /// cluster of this node alone.
    pub members: Vec<MemberConfig>,
    /// Logging.
    pub log: LogConfig,
}

/// Where the HTTP client API listens, and the limits that protect it from
/// slow or abusive clients. Every limit applies before a request reaches
/// the API: a refused request never touches the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Socket address to bind, e.g. `0.0.0.0:8000`.
    pub listen: String,
    /// Deadline for a request's head (request line and header fields), in
    /// milliseconds: from the accepted connection for its first request,
    /// from the first byte for later ones. A connection that sends nothing
    /// is closed; half a head gets `408`. Default 10 s: a client sends its
    /// head in one packet, so even a slow mobile link needs well under a
    /// second, while a slowloris client can hold a connection only this long.
    pub header_timeout_ms: u64,
    /// Deadline for a request's whole body, in milliseconds from the moment
    /// the API starts reading it (when `100 Continue` is sent). A body that
    /// stalls gets `408` and the connection is closed; nothing is stored.
    /// Default 30 s: a value of the default `max_value_size` (1 MiB) then
    /// needs about 35 KB/s, which any real link sustains.
    pub body_timeout_ms: u64,
    /// How long a keep-alive connection may wait for its next request, in
    /// milliseconds, before it is closed. Default 60 s: long enough for a
    /// client's pooled connection to outlive pauses between bursts, short
    /// enough that forgotten connections give their slot back (clients'
    /// pools notice the close and reconnect).
    pub idle_timeout_ms: u64,
    /// Most connections served at once; beyond it a new connection gets
    /// `503` and is closed, and the open ones keep working. Default 1024:
    /// far above what a node needs (the load generator uses 64), small
    /// enough that open connections and their header buffers stay bounded
    /// (at most `max_connections` × `max_header_bytes` of buffered heads).
    /// The process's open-file limit (`ulimit -n`) must leave room for it
    /// plus the peer connections and the store.
    pub max_connections: usize,
    /// Largest request head (request line and header fields), in bytes,
    /// inclusive; a larger one gets `431`. Default 32 KiB, like common
    /// proxies: room for a fully percent-encoded key of `max_key_len` bytes
    /// and a large `X-Dynamo-Context`.
    pub max_header_bytes: usize,
    /// Requests a second each client may send on average; a request over
    /// it gets `429` with `Retry-After`, before any work is done for it. A
    /// client is its token (by name) when the request carries a valid one,
    /// else its address (IPv4 address, or IPv6 /64), so requests with bad
    /// tokens are limited too. `/health` is never limited. Default 0: no
    /// limit.
    pub rate_limit_per_s: u32,
    /// Requests a client may send at once above its average rate (the
    /// token bucket's size). 0, or less than `rate_limit_per_s`, means
    /// `rate_limit_per_s`. Default 0.
    pub rate_limit_burst: u32,
    /// The client tokens file (see [`crate::tokens`] for its format and
    /// [`crate::auth`] for the scopes), read at start and at each SIGHUP
    /// (a file that no longer checks out leaves the tokens in use); relative to
    /// the directory `serve` runs in. Set: every request but `/health`
    /// needs `Authorization: Bearer <token>` with a token of the file that
    /// grants its scope (`401`/`403` otherwise); a file that cannot be
    /// read or has any bad entry refuses the start. Unset or empty
    /// (default): no authentication, and the node warns at start that its
    /// API is open to anyone who can reach it. `dynamo-server token create`
    /// writes the file.
    pub tokens_file: Option<PathBuf>,
    /// `[http.tls]`: serve HTTPS (TLS 1.3) instead of plaintext HTTP.
    pub tls: Option<HttpTlsConfig>,
}

/// `[http.tls]`: the HTTP API's certificate and key, PEM. Clients verify
/// the certificate (the CLI against `--ca-file`), so it must name the host
/// they connect to; a node certificate from `dynamo-server cert node`
/// serves. The TLS handshake must complete within `http.header_timeout_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTlsConfig {
    /// The certificate chain, PEM, leaf first.
    pub cert_file: PathBuf,
    /// Its private key, PEM; the node refuses to start if other users may
    /// read it (mode 0600, or 0640 at most).
    pub key_file: PathBuf,
}

/// The node-to-node transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeerConfig {
    /// Transport name: `tcp` (Cargo feature `transport-tcp`).
    pub transport: String,
    /// Socket address to bind, e.g. `0.0.0.0:7000`.
    pub listen: String,
    /// Address peers dial; defaults to `listen`. Must match this node's
    /// `addr` in `members`.
    pub advertise: Option<String>,
    /// Largest frame accepted or sent, in bytes.
    pub max_frame_bytes: usize,
    /// Persistent connections kept to each peer.
    pub connections_per_peer: usize,
    /// Deadline to establish a connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// tcp only: longest a frame may take to arrive once its first byte
    /// has, in milliseconds; a connection stalling mid-frame is closed.
    pub read_timeout_ms: u64,
    /// tcp only: an inbound connection with nothing in flight and no frame
    /// either way for this long is closed, in milliseconds.
    pub idle_timeout_ms: u64,
    /// tcp only: a pooled outbound connection with no call in flight for
    /// this long is closed by this node, in milliseconds. At most half of
    /// `idle_timeout_ms` (of every node), so callers close first.
    pub pool_idle_timeout_ms: u64,
    /// tcp only: most inbound peer connections open at once; over it a new
    /// connection is closed at once.
    pub max_connections: usize,
    /// libp2p only: 64 hex digits fixing this node's identity. Its peer id
    /// is part of its address (`/ip4/…/tcp/…/p2p/<peer id>`), so a node
    /// must keep the same seed across restarts. Unset: a new identity at
    /// every start.
    pub identity_seed_hex: Option<String>,
    /// tcp only: mutual TLS on every peer link (`[peer.tls]`); unset, links
    /// are plaintext and unauthenticated, and the node says so at start.
    pub tls: Option<PeerTlsConfig>,
}

/// `[peer.tls]`: the PEM files of a node's mutual TLS. Every node holds a
/// certificate signed by the cluster's CA (`dynamo-server cert` makes
/// them); a peer without one is refused during the handshake, before any
/// message is decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerTlsConfig {
    /// The cluster CA's certificate, PEM.
    pub ca_file: PathBuf,
    /// This node's certificate, PEM; its subject alternative names must
    /// include the host of `peer.advertise` (or `peer.listen`).
    pub cert_file: PathBuf,
    /// This node's private key, PEM; the node refuses to start if other
    /// users may read it (mode 0600, or 0640 at most).
    pub key_file: PathBuf,
    /// The CA's certificate revocation list, PEM (`dynamo-server cert
    /// revoke` writes it): peers whose certificates it lists are refused.
    /// Unset: nothing is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_file: Option<PathBuf>,
}

/// The storage engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Engine name: `redb` (feature `store-redb`) or `lmdb` (feature `store-lmdb`).
    pub engine: String,
    /// `fsync`: an acknowledged write is on disk. `buffered`: flushed
    /// periodically; a crash may lose this node's most recent writes (see
    /// [`Durability::Buffered`]).
    pub durability: Durability,
    /// redb page cache size, in bytes.
    pub redb_cache_bytes: usize,
    /// redb write-ahead log size, in bytes; 0 turns the log off (see
    /// `dynamo_store_redb::RedbOptions::wal_bytes`).
    pub redb_wal_bytes: u64,
    /// LMDB map size (the most the store can hold), in bytes.
    pub lmdb_map_size_bytes: usize,
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// The member's node id.
    pub id: u64,
    /// Its peer transport address (its `peer.advertise`).
    pub addr: String,
    /// Its HTTP address, shown by the admin API.
    #[serde(default)]
    pub http: Option<String>,
    /// Failure zone; preference lists spread over zones.
    #[serde(default)]
    pub zone: Option<String>,
    /// Relative capacity (partitions owned), at least 1.
    #[serde(default = "one")]
    pub capacity: u32,
}

fn one() -> u32 {
    1
}

/// Log output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter such as `info,dynamo_core=debug`; `RUST_LOG`
    /// overrides it.
    pub filter: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            node_id: 1,
            data_dir: PathBuf::from("dynamo-data"),
            reconciler: "keep-siblings".into(),
            http: HttpConfig::default(),
            peer: PeerConfig::default(),
            store: StoreConfig::default(),
            cluster: CoreConfig::default(),
            members: Vec::new(),
            log: LogConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8000".into(),
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            max_connections: 1024,
            max_header_bytes: 32 * 1024,
            rate_limit_per_s: 0,
            rate_limit_burst: 0,
            tokens_file: None,
            tls: None,
        }
    }
}

/// Upper bound of the HTTP timeouts: a day, far beyond any sensible value.
const MAX_HTTP_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;
/// Upper bound of `http.max_connections`.
const MAX_HTTP_CONNECTIONS: usize = 1_000_000;
/// Upper bound of `http.max_header_bytes`: 16 MiB.
const MAX_HTTP_HEADER_BYTES: usize = 16 * 1024 * 1024;

impl HttpConfig {
    /// The tokens file, when authentication is on (`tokens_file` set and
    /// not empty).
    pub fn tokens_path(&self) -> Option<&std::path::Path> {
        self.tokens_file.as_deref().filter(|p| !p.as_os_str().is_empty())
    }

    /// Checks the limits, and that a request for the longest key fits in
    /// `max_header_bytes`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self, cluster: &CoreConfig) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        for (name, v) in [
            ("http.header_timeout_ms", self.header_timeout_ms),
            ("http.body_timeout_ms", self.body_timeout_ms),
            ("http.idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if v == 0 || v > MAX_HTTP_TIMEOUT_MS {
                return bad(format!("{name} = {v} must be between 1 and {MAX_HTTP_TIMEOUT_MS} (a day)"));
            }
        }
        if self.max_connections == 0 || self.max_connections > MAX_HTTP_CONNECTIONS {
            return bad(format!(
                "http.max_connections = {} must be between 1 and {MAX_HTTP_CONNECTIONS}",
                self.max_connections
            ));
        }
        // A key percent-encoded byte by byte takes three times its length.
        let needed = cluster.max_key_len.saturating_mul(3).saturating_add(1024);
        if self.max_header_bytes < needed || self.max_header_bytes > MAX_HTTP_HEADER_BYTES {
            return bad(format!(
                "http.max_header_bytes = {} must be between {needed} (a fully percent-encoded key of cluster.max_key_len = {} bytes, plus 1 KiB) and {MAX_HTTP_HEADER_BYTES}",
                self.max_header_bytes, cluster.max_key_len
            ));
        }
        Ok(())
    }
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            transport: "tcp".into(),
            listen: "127.0.0.1:7000".into(),
            advertise: None,
            max_frame_bytes: 16 * 1024 * 1024,
            connections_per_peer: 2,
            connect_timeout_ms: 1_000,
            read_timeout_ms: 10_000,
            idle_timeout_ms: 300_000,
            pool_idle_timeout_ms: 60_000,
            max_connections: 1024,
            identity_seed_hex: None,
            tls: None,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            engine: "redb".into(),
            durability: Durability::Fsync,
            redb_cache_bytes: 64 * 1024 * 1024,
            redb_wal_bytes: 64 * 1024 * 1024,
            lmdb_map_size_bytes: 1 << 30,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: "text".into(), filter: "info".into() }
    }
}

/// Why a configuration was refused. Each message names the key as the
/// user wrote it: `cluster.w` in a file, `DYNAMO_CLUSTER__W` in the
/// environment.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or parsed: which file or variable, which
    /// key, and what is wrong with it (one line per problem).
    #[error("invalid configuration: {0}")]
    Load(String),
    /// The values contradict each other or a limit.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl ServerConfig {
    /// Checks the values and their relations.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] saying what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        // The core names its fields bare (`r = 4 …`); here they live under `[cluster]`.
        self.cluster.validate().map_err(|e| match e {
            dynamo_core::Error::Config(message) => ConfigError::Invalid(format!("cluster.{message}")),
            other => ConfigError::Invalid(other.to_string()),
        })?;
        self.http.validate(&self.cluster)?;
        let mut ids = BTreeSet::new();
        for m in &self.members {
            if !ids.insert(m.id) {
                return bad(format!("members: node id {} is listed twice", m.id));
            }
            if m.capacity == 0 {
                return bad(format!("members: node {} has capacity 0; it must be at least 1", m.id));
            }
        }
        if let Some(me) = self.members.iter().find(|m| m.id == self.node_id) {
            // (A libp2p address adds the peer id; the node checks it at start.)
            if self.peer.transport == "tcp" && me.addr != self.peer_advertise() {
                return bad(format!(
                    "members: node {} is listed at {} but peer.advertise (or peer.listen) is {}",
                    self.node_id,
                    me.addr,
                    self.peer_advertise()
                ));
            }
        } else if !self.members.is_empty() {
            return bad(format!("members: this node (node_id = {}) is not listed", self.node_id));
        }
        let nodes = self.members.len().max(1);
        // With seeds and no member list, the node learns the cluster (and
        // its N) from them.
        let learns_from_seeds = self.members.is_empty() && self.gossips();
        if self.cluster.n > nodes && !learns_from_seeds {
            return bad(format!(
                "cluster.n = {} but the cluster has {nodes} member(s); lower n or list more members",
                self.cluster.n
            ));
        }
        if self.peer.max_frame_bytes < self.cluster.max_value_size + self.cluster.max_key_len + 64 * 1024 {
            return bad(format!(
                "peer.max_frame_bytes = {} is too small for cluster.max_value_size = {}: leave at least 64 KiB for keys and metadata",
                self.peer.max_frame_bytes, self.cluster.max_value_size
            ));
        }
        self.validate_peer_limits()?;
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return bad(format!("log.format = {:?}: use \"text\" or \"json\"", self.log.format));
        }
        Ok(())
    }

    /// Checks the `[peer]` timeouts and connection limit.
    fn validate_peer_limits(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let p = &self.peer;
        for (key, value) in [
            ("peer.connect_timeout_ms", p.connect_timeout_ms),
            ("peer.read_timeout_ms", p.read_timeout_ms),
            ("peer.idle_timeout_ms", p.idle_timeout_ms),
            ("peer.pool_idle_timeout_ms", p.pool_idle_timeout_ms),
        ] {
            if !(1..=MAX_PEER_TIMEOUT_MS).contains(&value) {
                return bad(format!("{key} = {value}: use 1..={MAX_PEER_TIMEOUT_MS} (one day)"));
            }
        }
        if p.pool_idle_timeout_ms > p.idle_timeout_ms / 2 {
            return bad(format!(
                "peer.pool_idle_timeout_ms = {} must be at most half of peer.idle_timeout_ms = {}, so a node closes its idle connections before its peers do",
                p.pool_idle_timeout_ms, p.idle_timeout_ms
            ));
        }
        if p.max_connections == 0 {
            return bad("peer.max_connections = 0: allow at least 1".into());
        }
        if p.tls.is_some() && p.transport != "tcp" {
            return bad(format!(
                "peer.tls applies to the tcp transport; {} links are encrypted by the transport itself",
                p.transport
            ));
        }
        Ok(())
    }

    /// The address peers dial.
    pub fn peer_advertise(&self) -> String {
        self.peer.advertise.clone().unwrap_or_else(|| self.peer.listen.clone())
    }

    /// Whether the node learns and spreads membership by gossip: when
    /// `cluster.seeds` lists any peer.
    pub fn gossips(&self) -> bool {
        !self.cluster.seeds.is_empty()
    }

    /// The ring members: the configured list, or this node alone.
    pub fn ring_members(&self) -> Vec<Member> {
        if self.members.is_empty() {
            return vec![Member::new(NodeId(self.node_id), self.peer_advertise())];
        }
        self.members
            .iter()
            .map(|m| Member {
                id: NodeId(m.id),
                addr: m.addr.clone(),
                zone: m.zone.clone(),
                capacity: m.capacity,
            })
            .collect()
    }
}

/// Flags of `serve` that override every other layer when given.
#[derive(Debug, Clone, Default, Serialize, clap::Args)]
pub struct CliOverrides {
    /// This node's id.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    /// Data directory.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Reconciler name.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconciler: Option<String>,
    /// HTTP listen address.
    #[arg(long = "http-listen", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none", rename = "http")]
    #[serde(serialize_with = "nested_listen")]
    pub http_listen: Option<String>,
}

fn nested_listen<S: serde::Serializer>(addr: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(1))?;
    map.serialize_entry("listen", addr)?;
    map.end()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn members3() -> Vec<MemberConfig> {
        (1..=3)
            .map(|i| MemberConfig {
                id: i,
                addr: format!("127.0.0.1:700{i}"),
                http: None,
                zone: None,
                capacity: 1,
            })
            .collect()
    }

    #[test]
    fn defaults_are_a_valid_single_node_config_only_with_n_1() {
        let err = ServerConfig::default().validate().unwrap_err().to_string();
        assert!(err.contains("cluster.n = 3"), "{err}");
        let mut c = ServerConfig::default();
        c.cluster.n = 1;
        c.cluster.r = 1;
        c.cluster.w = 1;
        c.validate().unwrap();
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dynamo.toml");
        std::fs::write(
            &file,
            "node_id = 2\n[peer]\nlisten = \"127.0.0.1:7002\"\n[cluster]\nw = 3\n\n[[members]]\nid = 1\naddr = \"127.0.0.1:7001\"\n[[members]]\nid = 2\naddr = \"127.0.0.1:7002\"\n[[members]]\nid = 3\naddr = \"127.0.0.1:7003\"\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("DYNAMO_CLUSTER__R", "3");
            jail.set_env("DYNAMO_RECONCILER", "last-write-wins");
            let flags = CliOverrides {
                reconciler: Some("keep-siblings".into()),
                http_listen: Some("127.0.0.1:9".into()),
                ..Default::default()
            };
            let c = ServerConfig::load(Some(&file), &flags).map_err(|e| e.to_string())?;
            assert_eq!(c.node_id, 2);
            assert_eq!(c.cluster.w, 3, "from the file");
            assert_eq!(c.cluster.r, 3, "from the environment");
            assert_eq!(c.reconciler, "keep-siblings", "flags win over the environment");
            assert_eq!(c.http.listen, "127.0.0.1:9");
            assert_eq!(c.members, members3());
            Ok(())
        });
    }

    #[test]
    fn invalid_values_are_named() {
        let mut c = ServerConfig { members: members3(), ..Default::default() };
        c.peer.listen = "127.0.0.1:7001".into();
        c.cluster.r = 4;
        assert!(c.validate().unwrap_err().to_string().contains("r = 4"));
        c.cluster.r = 2;
        c.node_id = 9;
        assert!(c.validate().unwrap_err().to_string().contains("node_id = 9"));
        c.node_id = 1;
        c.members[1].id = 1;
        assert!(c.validate().unwrap_err().to_string().contains("listed twice"));
    }

    #[test]
    fn http_limits_out_of_range_are_refused_with_their_key() {
        let valid = || {
            let mut c = ServerConfig::default();
            (c.cluster.n, c.cluster.r, c.cluster.w) = (1, 1, 1);
            c
        };
        valid().validate().unwrap();
        type Breaks = fn(&mut HttpConfig);
        let cases: [(&str, Breaks); 6] = [
            ("http.header_timeout_ms", |h| h.header_timeout_ms = 0),
            ("http.body_timeout_ms", |h| h.body_timeout_ms = 0),
            ("http.idle_timeout_ms", |h| h.idle_timeout_ms = 0),
            ("http.max_connections", |h| h.max_connections = 0),
            ("http.max_header_bytes", |h| h.max_header_bytes = 0),
            ("http.idle_timeout_ms", |h| h.idle_timeout_ms = u64::MAX),
        ];
        for (key, break_it) in cases {
            let mut c = valid();
            break_it(&mut c.http);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
        // The longest key, percent-encoded, must fit in a request head.
        let mut c = valid();
        c.cluster.max_key_len = 16 * 1024;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("http.max_header_bytes") && err.contains("cluster.max_key_len"), "{err}");
    }

    /// The README's configuration table lists every `[http]` key with its
    /// default (`unset` for a key that has none).
    #[test]
    fn readme_documents_every_http_key_with_its_default() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let defaults = serde_json::to_value(HttpConfig::default()).unwrap();
        for (name, default) in defaults.as_object().unwrap() {
            let shown = match default {
                serde_json::Value::Null => "unset".to_string(),
                serde_json::Value::String(s) => format!("`{s}`"),
                other => format!("`{other}`"),
            };
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `http.{name}` |")))
                .unwrap_or_else(|| panic!("README's configuration table has no row for `http.{name}`"));
            assert!(
                row.contains(&format!("| {shown} |")),
                "README row for `http.{name}` must show {shown}: {row}"
            );
        }
    }

    #[test]
    fn an_empty_tokens_file_means_no_authentication() {
        let mut http = HttpConfig::default();
        assert_eq!(http.tokens_path(), None);
        http.tokens_file = Some(PathBuf::new());
        assert_eq!(http.tokens_path(), None);
        http.tokens_file = Some(PathBuf::from("tokens.toml"));
        assert_eq!(http.tokens_path(), Some(std::path::Path::new("tokens.toml")));
    }

    /// The core's anti-entropy, tombstone and admission keys flow from the
    /// file and from `DYNAMO_CLUSTER__*` variables into the node's
    /// configuration, like every other `[cluster]` key.
    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type
    fn anti_entropy_keys_come_from_the_file_and_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "aae.toml",
                "[cluster]\nanti_entropy = false\naae_interval_ms = 500\naae_rebuild_interval_ms = 3600000\ntombstone_grace_ms = 60000\nbackground_min_slots = 2\nbackground_max_slots = 8\n",
            )?;
            jail.set_env("DYNAMO_CLUSTER__AAE_MAX_BYTES", "65536");
            jail.set_env("DYNAMO_CLUSTER__TOMBSTONE_PURGE_INTERVAL_MS", "1000");
            jail.set_env("DYNAMO_CLUSTER__BACKGROUND_TARGET_P99_MS", "20");
            jail.set_env("DYNAMO_CLUSTER__AAE_INTERVAL_MS", "750");
            let c = ServerConfig::load(Some(Path::new("aae.toml")), &CliOverrides::default())
                .map_err(|e| e.to_string())?;
            let got = &c.cluster;
            assert!(!got.anti_entropy);
            assert_eq!(got.aae_interval_ms, 750, "the environment wins over the file");
            assert_eq!(got.aae_rebuild_interval_ms, 3_600_000);
            assert_eq!(got.aae_max_bytes, 65_536);
            assert_eq!(got.tombstone_grace_ms, 60_000);
            assert_eq!(got.tombstone_purge_interval_ms, 1_000);
            assert_eq!(got.background_target_p99_ms, 20);
            assert_eq!((got.background_min_slots, got.background_max_slots), (2, 8));
            Ok(())
        });
    }

    /// Out-of-range anti-entropy and admission values are refused, named
    /// as the user wrote them (under `[cluster]`).
    #[test]
    fn anti_entropy_values_out_of_range_are_refused_with_their_key() {
        type Breaks = fn(&mut CoreConfig);
        let cases: [(&str, Breaks); 4] = [
            ("cluster.aae_interval_ms", |c| c.aae_interval_ms = 0),
            ("cluster.tombstone_purge_interval_ms", |c| c.tombstone_purge_interval_ms = 0),
            ("cluster.background_min_slots", |c| c.background_min_slots = 0),
            ("cluster.background_max_slots", |c| (c.background_min_slots, c.background_max_slots) = (4, 2)),
        ];
        for (key, break_it) in cases {
            let mut c = ServerConfig::default();
            (c.cluster.n, c.cluster.r, c.cluster.w) = (1, 1, 1);
            c.validate().unwrap();
            break_it(&mut c.cluster);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn peer_limits_are_checked_by_key() {
        let check = |edit: fn(&mut PeerConfig), key: &str| {
            let mut c = ServerConfig::default();
            (c.cluster.n, c.cluster.r, c.cluster.w) = (1, 1, 1);
            c.validate().unwrap();
            edit(&mut c.peer);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err} should name {key}");
        };
        check(|p| p.read_timeout_ms = 0, "peer.read_timeout_ms");
        check(|p| p.idle_timeout_ms = u64::MAX, "peer.idle_timeout_ms");
        check(|p| p.connect_timeout_ms = 0, "peer.connect_timeout_ms");
        check(|p| p.pool_idle_timeout_ms = 0, "peer.pool_idle_timeout_ms");
        check(|p| p.pool_idle_timeout_ms = p.idle_timeout_ms, "peer.pool_idle_timeout_ms");
        check(|p| p.max_connections = 0, "peer.max_connections");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type
    fn unknown_keys_and_bad_types_are_refused_with_their_name() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[cluster]\nwrite_quorum = 2\n")?;
            let err = ServerConfig::load(Some(Path::new("bad.toml")), &CliOverrides::default()).unwrap_err();
            assert!(err.to_string().contains("write_quorum"), "{err}");
            jail.create_file("bad2.toml", "[cluster]\nw = \"two\"\n")?;
            let err = ServerConfig::load(Some(Path::new("bad2.toml")), &CliOverrides::default()).unwrap_err();
            assert!(err.to_string().contains("cluster.w") || err.to_string().contains("w"), "{err}");
            let err =
                ServerConfig::load(Some(Path::new("missing.toml")), &CliOverrides::default()).unwrap_err();
            assert!(err.to_string().contains("missing.toml"), "{err}");
            Ok(())
        });
    }
}

#[cfg(test)]
mod example_file {
    use std::path::Path;

    use super::*;

    /// The repository's commented `dynamo.toml` loads, validates, and states
    /// every default exactly.
    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type
    fn example_config_is_valid_and_shows_the_defaults() {
        // In a Jail: other tests set DYNAMO_* variables, and Jail runs one at a time.
        figment::Jail::expect_with(|_jail| {
            let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../dynamo.toml"));
            let loaded =
                ServerConfig::load(Some(path), &CliOverrides::default()).map_err(|e| e.to_string())?;
            let defaults = ServerConfig::default();
            assert_eq!(loaded.cluster, defaults.cluster, "[cluster] in dynamo.toml must show the defaults");
            let http = HttpConfig { listen: defaults.http.listen.clone(), ..loaded.http.clone() };
            assert_eq!(http, defaults.http, "[http] in dynamo.toml must show the defaults");
            // Every [peer] key but the addresses shows its default.
            let peer = PeerConfig { listen: defaults.peer.listen.clone(), ..loaded.peer.clone() };
            assert_eq!(peer, defaults.peer, "[peer] in dynamo.toml must show the defaults");
            assert_eq!(loaded.store, defaults.store);
            assert_eq!(loaded.log, defaults.log);
            assert_eq!(loaded.members.len(), 3);
            Ok(())
        });
    }

    /// The README's configuration table shows every numeric `[peer]` key
    /// with its default.
    #[test]
    fn readme_shows_the_peer_defaults() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let defaults = serde_json::to_value(PeerConfig::default()).unwrap();
        let numeric = defaults.as_object().unwrap().iter().filter(|(_, v)| v.is_number());
        let mut checked = 0;
        for (key, default) in numeric {
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `peer.{key}` |")))
                .unwrap_or_else(|| panic!("README's configuration table has no row for `peer.{key}`"));
            assert!(
                row.contains(&format!("| `{default}` |")),
                "README row for `peer.{key}` must show `{default}`: {row}"
            );
            checked += 1;
        }
        assert!(checked >= 7, "checked {checked} keys");
    }
}
