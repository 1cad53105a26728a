//! The transport's options, with defaults and validation.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::tls::TlsConfig;

/// Largest `max_frame_bytes` the wire format can carry: the u32 length
/// prefix also counts the 8-byte request id.
pub const MAX_FRAME_LIMIT: usize = u32::MAX as usize - crate::wire::ID_LEN;

/// Longest timeout accepted, in milliseconds (one day).
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;

/// Options of a [`TcpTransport`](crate::TcpTransport).
///
/// Plain data, read from a file like the core's `Config`: every field has a
/// default, unknown fields are refused, and durations are in milliseconds.
///
/// ```
/// use dynamo_transport_tcp::TcpConfig;
///
/// let config: TcpConfig = serde_json::from_str(
///     r#"{ "listen_addr": "0.0.0.0:7000", "advertise_addr": "10.0.0.5:7000" }"#,
/// ).unwrap();
/// assert_eq!(config.connections_per_peer, 2);
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcpConfig {
    /// Where to listen, `host:port`; port 0 picks a free port.
    /// Default `127.0.0.1:7000`.
    pub listen_addr: String,
    /// The address peers dial to reach this node, and what
    /// [`Transport::local_addr`](dynamo_core::transport::Transport::local_addr)
    /// returns. `None` advertises the bound address (with port 0 resolved);
    /// set it when listening on a wildcard address such as `0.0.0.0`.
    pub advertise_addr: Option<String>,
    /// Largest frame body accepted or sent, in bytes, in both directions.
    /// Default 16 MiB, above the core's 1 MiB value limit plus its encoding.
    pub max_frame_bytes: usize,
    /// Persistent connections kept to each peer; calls are spread over them
    /// round robin. Default 2.
    pub connections_per_peer: usize,
    /// Longest wait for one TCP connect, in milliseconds. Default 1000.
    /// Also how long a call must have waited, with nothing at all received
    /// on its connection, for its timeout to close that connection as dead.
    pub connect_timeout_ms: u64,
    /// Pause after the first failed connect to a peer, in milliseconds;
    /// it doubles with each further failure. Default 50.
    pub backoff_min_ms: u64,
    /// Longest pause between connect attempts to a peer, in milliseconds.
    /// Default 2000.
    pub backoff_max_ms: u64,
    /// Longest a frame may take to arrive once its first byte has, in
    /// milliseconds, on either side of a connection; past it the connection
    /// is closed. Default 10 000: a frame of the default 16 MiB limit then
    /// needs only 1.7 MB/s, far below any link between nodes, while a peer
    /// that stalls mid-frame (or trickles bytes) holds its connection and
    /// buffer at most this long.
    pub read_timeout_ms: u64,
    /// How long an inbound connection may sit with nothing in flight (no
    /// request being handled, no frame partly received) and no frame either
    /// way before the server closes it, in milliseconds. Requests in flight
    /// keep it open however long their handlers take. Default 300 000
    /// (5 minutes): live peers close or reuse their pooled connections well
    /// within it (see `pool_idle_timeout_ms`), while the connections of
    /// vanished or hostile clients are reclaimed. An idle connection closes
    /// between one and 1.25 times this after its last frame.
    pub idle_timeout_ms: u64,
    /// How long a pooled outbound connection may sit with no call in flight
    /// before this node closes it itself, in milliseconds; the next call to
    /// that peer dials anew. Default 60 000 (1 minute). Must be at most half
    /// of `idle_timeout_ms`, and the same must hold against every peer's
    /// `idle_timeout_ms`: the caller then always closes an idle connection
    /// before the server would, so no call is sent on a connection being
    /// closed under it.
    pub pool_idle_timeout_ms: u64,
    /// Most inbound connections open at once; over it a new connection is
    /// closed as soon as it is accepted (with a warning at most every 10 s)
    /// and existing ones carry on. Default 1024: a cluster needs about
    /// `connections_per_peer` per other node (2 × 100 nodes = 200), and
    /// 1024 idle connections cost a few MiB (each holds a 4 KiB read buffer
    /// until it receives traffic). Keep it below the process's file
    /// descriptor limit.
    pub max_connections: usize,
    /// Mutual TLS for every connection, both ways (see [`TlsConfig`]);
    /// `None` (the default) sends frames in plaintext, unauthenticated.
    /// The TLS handshake of an inbound connection must complete within
    /// `read_timeout_ms`, of an outbound one within `connect_timeout_ms`.
    pub tls: Option<TlsConfig>,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            listen_addr: "127.0.0.1:7000".to_owned(),
            advertise_addr: None,
            max_frame_bytes: 16 * 1024 * 1024,
            connections_per_peer: 2,
            connect_timeout_ms: 1_000,
            backoff_min_ms: 50,
            backoff_max_ms: 2_000,
            read_timeout_ms: 10_000,
            idle_timeout_ms: 300_000,
            pool_idle_timeout_ms: 60_000,
            max_connections: 1024,
            tls: None,
        }
    }
}

/// An invalid [`TcpConfig`] field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid transport config: {0}")]
pub struct ConfigError(pub String);

impl TcpConfig {
    /// Default options listening on `listen_addr`.
    pub fn new(listen_addr: impl Into<String>) -> Self {
        TcpConfig { listen_addr: listen_addr.into(), ..TcpConfig::default() }
    }

    /// Checks every field.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError(msg));
        if self.listen_addr.is_empty() {
            return bad("listen_addr is empty".into());
        }
        if self.advertise_addr.as_deref().is_some_and(str::is_empty) {
            return bad("advertise_addr is empty".into());
        }
        if self.max_frame_bytes == 0 || self.max_frame_bytes > MAX_FRAME_LIMIT {
            return bad(format!(
                "max_frame_bytes must be in 1..={MAX_FRAME_LIMIT}, not {}",
                self.max_frame_bytes
            ));
        }
        if !(1..=64).contains(&self.connections_per_peer) {
            return bad(format!("connections_per_peer must be in 1..=64, not {}", self.connections_per_peer));
        }
        if self.connect_timeout_ms == 0 {
            return bad("connect_timeout_ms must be positive".into());
        }
        if self.backoff_min_ms == 0 || self.backoff_min_ms > self.backoff_max_ms {
            return bad(format!(
                "need 0 < backoff_min_ms <= backoff_max_ms, not {} and {}",
                self.backoff_min_ms, self.backoff_max_ms
            ));
        }
        for (name, value) in [
            ("read_timeout_ms", self.read_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("pool_idle_timeout_ms", self.pool_idle_timeout_ms),
        ] {
            if !(1..=MAX_TIMEOUT_MS).contains(&value) {
                return bad(format!("{name} must be in 1..={MAX_TIMEOUT_MS}, not {value}"));
            }
        }
        if self.pool_idle_timeout_ms > self.idle_timeout_ms / 2 {
            return bad(format!(
                "pool_idle_timeout_ms = {} must be at most half of idle_timeout_ms = {}, so callers close idle connections before servers do",
                self.pool_idle_timeout_ms, self.idle_timeout_ms
            ));
        }
        if self.max_connections == 0 {
            return bad("max_connections must be positive".into());
        }
        Ok(())
    }

    /// [`connect_timeout_ms`](Self::connect_timeout_ms) as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// [`backoff_min_ms`](Self::backoff_min_ms) as a duration.
    pub fn backoff_min(&self) -> Duration {
        Duration::from_millis(self.backoff_min_ms)
    }

    /// [`backoff_max_ms`](Self::backoff_max_ms) as a duration.
    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.backoff_max_ms)
    }

    /// [`read_timeout_ms`](Self::read_timeout_ms) as a duration.
    pub fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.read_timeout_ms)
    }

    /// [`idle_timeout_ms`](Self::idle_timeout_ms) as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// [`pool_idle_timeout_ms`](Self::pool_idle_timeout_ms) as a duration.
    pub fn pool_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.pool_idle_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let c = TcpConfig::default();
        c.validate().unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<TcpConfig>(&json).unwrap(), c);
        assert_eq!(serde_json::from_str::<TcpConfig>("{}").unwrap(), c);
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<TcpConfig>(r#"{"listen": "x"}"#).is_err());
    }

    #[test]
    fn bad_values_are_named() {
        let check = |c: TcpConfig, field: &str| {
            let e = c.validate().unwrap_err();
            assert!(e.0.contains(field), "{e} should name {field}");
        };
        check(TcpConfig { max_frame_bytes: 0, ..TcpConfig::default() }, "max_frame_bytes");
        check(TcpConfig { max_frame_bytes: usize::MAX, ..TcpConfig::default() }, "max_frame_bytes");
        check(TcpConfig { connections_per_peer: 0, ..TcpConfig::default() }, "connections_per_peer");
        check(TcpConfig { connect_timeout_ms: 0, ..TcpConfig::default() }, "connect_timeout_ms");
        check(TcpConfig { backoff_min_ms: 10, backoff_max_ms: 5, ..TcpConfig::default() }, "backoff");
        check(TcpConfig { listen_addr: String::new(), ..TcpConfig::default() }, "listen_addr");
        check(TcpConfig { advertise_addr: Some(String::new()), ..TcpConfig::default() }, "advertise_addr");
        check(TcpConfig { read_timeout_ms: 0, ..TcpConfig::default() }, "read_timeout_ms");
        check(TcpConfig { idle_timeout_ms: MAX_TIMEOUT_MS + 1, ..TcpConfig::default() }, "idle_timeout_ms");
        check(TcpConfig { pool_idle_timeout_ms: 0, ..TcpConfig::default() }, "pool_idle_timeout_ms");
        check(
            TcpConfig { pool_idle_timeout_ms: 150_001, idle_timeout_ms: 300_000, ..TcpConfig::default() },
            "pool_idle_timeout_ms",
        );
        check(TcpConfig { max_connections: 0, ..TcpConfig::default() }, "max_connections");
    }
}
