//! The transport's options, with defaults and validation.

use std::fmt;
use std::time::Duration;

use libp2p::identity::{ed25519, Keypair};
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

/// Largest `max_frame_bytes` the wire format can carry (a `u32` length
/// prefix).
pub const MAX_FRAME_LIMIT: usize = u32::MAX as usize;

/// Largest `max_in_flight_per_peer`: Yamux allows 4096 streams per
/// connection with its default 1 GiB window, and a connection carries the
/// requests of both sides.
pub const MAX_IN_FLIGHT_LIMIT: usize = 1024;

/// Options of a [`Libp2pTransport`](crate::Libp2pTransport).
///
/// Plain data, read from a file like the core's `Config`: every field has a
/// default, unknown fields are refused, and durations are in milliseconds.
/// `Debug` hides the identity seed.
///
/// ```
/// use dynamo_transport_libp2p::Libp2pConfig;
///
/// let config: Libp2pConfig = serde_json::from_str(
///     r#"{
///         "listen_addr": "/ip4/127.0.0.1/tcp/7001",
///         "identity_seed_hex": "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
///     }"#,
/// ).unwrap();
/// config.validate().unwrap();
/// // The peer id, hence the node's address, follows from the seed alone.
/// let peer_id = config.peer_id().unwrap().unwrap();
/// assert!(peer_id.starts_with("12D3KooW"));
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Libp2pConfig {
    /// Where to listen: a TCP multiaddr such as `/ip4/0.0.0.0/tcp/7001`,
    /// without a `/p2p` part. Port 0 picks a free port. Default
    /// `/ip4/127.0.0.1/tcp/0`.
    pub listen_addr: String,
    /// What peers dial to reach this node, without the `/p2p` part (the
    /// transport appends its own peer id). `None` advertises the bound
    /// address, with port 0 resolved; set it when listening on a wildcard
    /// address such as `0.0.0.0`.
    pub advertise_addr: Option<String>,
    /// The node's identity: 64 hex digits, the 32-byte Ed25519 secret key
    /// seed. The peer id derives from it and is part of the node's address
    /// (`/ip4/…/tcp/…/p2p/<peer id>`), which the rest of the cluster has in
    /// its member list: **a node that restarts must keep its seed**, or
    /// peers dialling its old address reject the new identity. Keep it
    /// secret; anyone holding it can pose as the node.
    /// [`Libp2pConfig::generate_identity_seed_hex`] makes one.
    /// `None`: a random identity for this run only (tests, tools).
    pub identity_seed_hex: Option<String>,
    /// Largest frame sent or accepted, in bytes, requests and responses
    /// alike. Default 16 MiB, above the core's 1 MiB value limit plus its
    /// encoding.
    pub max_frame_bytes: usize,
    /// How long a connection with no request in flight is kept, in
    /// milliseconds. Default 60 000.
    pub idle_connection_timeout_ms: u64,
    /// The longest a request stream may stay open, on either side, in
    /// milliseconds: a call whose own timeout is longer fails with
    /// `Timeout` at this bound, and a server drops a request whose handler
    /// takes longer. Keep it above the longest call deadline the node uses
    /// (the core's `request_timeout_ms`). Default 10 000.
    pub request_timeout_ms: u64,
    /// Calls in flight to one peer at most; further calls wait in a queue,
    /// within their own deadlines, until one finishes. Default 128.
    pub max_in_flight_per_peer: usize,
}

impl Default for Libp2pConfig {
    fn default() -> Self {
        Libp2pConfig {
            listen_addr: "/ip4/127.0.0.1/tcp/0".to_owned(),
            advertise_addr: None,
            identity_seed_hex: None,
            max_frame_bytes: 16 * 1024 * 1024,
            idle_connection_timeout_ms: 60_000,
            request_timeout_ms: 10_000,
            max_in_flight_per_peer: 128,
        }
    }
}

impl fmt::Debug for Libp2pConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Libp2pConfig")
            .field("listen_addr", &self.listen_addr)
            .field("advertise_addr", &self.advertise_addr)
            .field("identity_seed_hex", &self.identity_seed_hex.as_ref().map(|_| "<redacted>"))
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("idle_connection_timeout_ms", &self.idle_connection_timeout_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("max_in_flight_per_peer", &self.max_in_flight_per_peer)
            .finish()
    }
}

/// An invalid [`Libp2pConfig`] field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid libp2p transport config: {0}")]
pub struct ConfigError(pub String);

impl Libp2pConfig {
    /// Default options listening on `listen_addr`, with a random identity.
    pub fn new(listen_addr: impl Into<String>) -> Self {
        Libp2pConfig { listen_addr: listen_addr.into(), ..Libp2pConfig::default() }
    }

    /// These options with the identity given by a 32-byte `seed`.
    pub fn with_identity_seed(mut self, seed: &[u8; 32]) -> Self {
        self.identity_seed_hex = Some(to_hex(seed));
        self
    }

    /// A fresh random identity seed, as 64 hex digits for
    /// [`identity_seed_hex`](Self::identity_seed_hex).
    pub fn generate_identity_seed_hex() -> String {
        to_hex(ed25519::SecretKey::generate().as_ref())
    }

    /// Checks every field.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_multiaddr()?;
        self.advertise_multiaddr()?;
        self.identity_seed()?;
        let bad = |msg: String| Err(ConfigError(msg));
        if self.max_frame_bytes == 0 || self.max_frame_bytes > MAX_FRAME_LIMIT {
            return bad(format!(
                "max_frame_bytes must be in 1..={MAX_FRAME_LIMIT}, not {}",
                self.max_frame_bytes
            ));
        }
        if self.idle_connection_timeout_ms == 0 {
            return bad("idle_connection_timeout_ms must be positive".into());
        }
        if self.request_timeout_ms == 0 {
            return bad("request_timeout_ms must be positive".into());
        }
        if !(1..=MAX_IN_FLIGHT_LIMIT).contains(&self.max_in_flight_per_peer) {
            return bad(format!(
                "max_in_flight_per_peer must be in 1..={MAX_IN_FLIGHT_LIMIT}, not {}",
                self.max_in_flight_per_peer
            ));
        }
        Ok(())
    }

    /// The 32-byte identity seed, if one is set.
    ///
    /// # Errors
    /// A [`ConfigError`] when `identity_seed_hex` is not exactly 64 hex
    /// digits.
    pub fn identity_seed(&self) -> Result<Option<[u8; 32]>, ConfigError> {
        self.identity_seed_hex.as_deref().map(parse_seed).transpose()
    }

    /// The peer id the seed gives this node, as it appears in its address
    /// (`12D3KooW…`); `None` for a random identity, known only once bound.
    ///
    /// # Errors
    /// A [`ConfigError`] when `identity_seed_hex` is malformed.
    pub fn peer_id(&self) -> Result<Option<String>, ConfigError> {
        match self.identity_seed()? {
            Some(seed) => Ok(Some(keypair_from_seed(seed)?.public().to_peer_id().to_string())),
            None => Ok(None),
        }
    }

    /// [`idle_connection_timeout_ms`](Self::idle_connection_timeout_ms) as a
    /// duration.
    pub fn idle_connection_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_connection_timeout_ms)
    }

    /// [`request_timeout_ms`](Self::request_timeout_ms) as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The parsed listen address.
    pub(crate) fn listen_multiaddr(&self) -> Result<Multiaddr, ConfigError> {
        parse_tcp_multiaddr("listen_addr", &self.listen_addr)
    }

    /// The parsed advertised address, if one is set.
    pub(crate) fn advertise_multiaddr(&self) -> Result<Option<Multiaddr>, ConfigError> {
        self.advertise_addr.as_deref().map(|a| parse_tcp_multiaddr("advertise_addr", a)).transpose()
    }

    /// The key pair: from the seed, or random.
    pub(crate) fn keypair(&self) -> Result<Keypair, ConfigError> {
        Ok(match self.identity_seed()? {
            Some(seed) => keypair_from_seed(seed)?,
            None => Keypair::generate_ed25519(),
        })
    }
}

/// The Ed25519 key pair whose secret key is `seed`.
fn keypair_from_seed(mut seed: [u8; 32]) -> Result<Keypair, ConfigError> {
    // Every 32 bytes make an Ed25519 secret key; libp2p checks the length only.
    let secret = ed25519::SecretKey::try_from_bytes(&mut seed)
        .map_err(|e| ConfigError(format!("identity_seed_hex is no Ed25519 secret key: {e}")))?;
    Ok(Keypair::from(ed25519::Keypair::from(secret)))
}

/// Parses a multiaddr of the form `/ip4|ip6|dns…/…/tcp/<port>`, with no
/// `/p2p` part.
fn parse_tcp_multiaddr(field: &str, text: &str) -> Result<Multiaddr, ConfigError> {
    let addr: Multiaddr =
        text.parse().map_err(|e| ConfigError(format!("{field} {text:?} is not a multiaddr: {e}")))?;
    if !addr.iter().any(|p| matches!(p, Protocol::Tcp(_))) {
        return Err(ConfigError(format!("{field} {text:?} has no /tcp/<port> part")));
    }
    if addr.iter().any(|p| matches!(p, Protocol::P2p(_))) {
        return Err(ConfigError(format!(
            "{field} {text:?} must not name a peer id: the transport appends its own /p2p part"
        )));
    }
    Ok(addr)
}

fn parse_seed(text: &str) -> Result<[u8; 32], ConfigError> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return Err(ConfigError(format!(
            "identity_seed_hex must be 64 hex digits (32 bytes), not {} characters",
            text.chars().count()
        )));
    }
    let nibble = |i: usize| -> Result<u8, ConfigError> {
        let b = bytes[i];
        match b {
            b'0'..=b'9' => Ok(b - b'0'),
            b'a'..=b'f' => Ok(b - b'a' + 10),
            b'A'..=b'F' => Ok(b - b'A' + 10),
            _ => {
                let shown =
                    text.get(i..).and_then(|s| s.chars().next()).unwrap_or(char::REPLACEMENT_CHARACTER);
                Err(ConfigError(format!(
                    "identity_seed_hex has a non-hex character {shown:?} at position {i}"
                )))
            }
        }
    };
    let mut seed = [0u8; 32];
    for (i, byte) in seed.iter_mut().enumerate() {
        *byte = (nibble(2 * i)? << 4) | nibble(2 * i + 1)?;
    }
    Ok(seed)
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let c = Libp2pConfig::default();
        c.validate().unwrap();
        assert_eq!(c.listen_addr, "/ip4/127.0.0.1/tcp/0");
        assert_eq!(c.max_frame_bytes, 16 * 1024 * 1024);
        assert_eq!(c.idle_connection_timeout_ms, 60_000);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Libp2pConfig>(&json).unwrap(), c);
        assert_eq!(serde_json::from_str::<Libp2pConfig>("{}").unwrap(), c);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<Libp2pConfig>(r#"{"listen": "/ip4/127.0.0.1/tcp/1"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn a_seed_gives_a_stable_identity() {
        let c = Libp2pConfig { identity_seed_hex: Some(SEED.into()), ..Libp2pConfig::default() };
        c.validate().unwrap();
        let seed = c.identity_seed().unwrap().unwrap();
        assert_eq!(seed[..4], [0, 1, 2, 3]);
        assert_eq!(seed[31], 0x1f);
        let id = c.peer_id().unwrap().unwrap();
        assert_eq!(c.peer_id().unwrap().unwrap(), id, "the same seed, the same peer id");
        assert_eq!(c.keypair().unwrap().public().to_peer_id().to_string(), id);
        let upper = Libp2pConfig { identity_seed_hex: Some(SEED.to_uppercase()), ..c.clone() };
        assert_eq!(upper.peer_id().unwrap().unwrap(), id, "hex digits in either case");
        let other = Libp2pConfig::default().with_identity_seed(&[9; 32]);
        assert_ne!(other.peer_id().unwrap().unwrap(), id);
        assert_eq!(Libp2pConfig::default().peer_id().unwrap(), None);
    }

    #[test]
    fn generated_seeds_parse_and_differ() {
        let a = Libp2pConfig::generate_identity_seed_hex();
        let b = Libp2pConfig::generate_identity_seed_hex();
        assert_ne!(a, b);
        let c = Libp2pConfig { identity_seed_hex: Some(a.clone()), ..Libp2pConfig::default() };
        assert_eq!(to_hex(&c.identity_seed().unwrap().unwrap()), a);
    }

    #[test]
    fn bad_seed_hex_is_named_clearly() {
        let check = |seed: &str, needle: &str| {
            let c = Libp2pConfig { identity_seed_hex: Some(seed.into()), ..Libp2pConfig::default() };
            let e = c.validate().unwrap_err();
            assert!(e.0.contains("identity_seed_hex") && e.0.contains(needle), "{e} should say {needle}");
            assert_eq!(c.peer_id().unwrap_err(), e);
        };
        check(&SEED[..63], "not 63 characters");
        check(&format!("{SEED}00"), "not 66 characters");
        check("", "not 0 characters");
        check(&format!("{}g", &SEED[..63]), "'g' at position 63");
        check(&format!("0x{}", &SEED[..62]), "'x' at position 1");
        check(&format!("é{}", &SEED[..62]), "'é' at position 0");
        check(&format!("{} ", &SEED[..63]), "' ' at position 63");
    }

    #[test]
    fn bad_values_are_named() {
        let check = |c: Libp2pConfig, field: &str| {
            let e = c.validate().unwrap_err();
            assert!(e.0.contains(field), "{e} should name {field}");
        };
        let d = Libp2pConfig::default;
        check(Libp2pConfig { max_frame_bytes: 0, ..d() }, "max_frame_bytes");
        check(Libp2pConfig { max_frame_bytes: MAX_FRAME_LIMIT + 1, ..d() }, "max_frame_bytes");
        check(Libp2pConfig { idle_connection_timeout_ms: 0, ..d() }, "idle_connection_timeout_ms");
        check(Libp2pConfig { request_timeout_ms: 0, ..d() }, "request_timeout_ms");
        check(Libp2pConfig { max_in_flight_per_peer: 0, ..d() }, "max_in_flight_per_peer");
        check(Libp2pConfig { max_in_flight_per_peer: 5000, ..d() }, "max_in_flight_per_peer");
        check(Libp2pConfig::new("127.0.0.1:7000"), "listen_addr");
        check(Libp2pConfig::new("/ip4/127.0.0.1/udp/7000"), "/tcp/");
        check(Libp2pConfig::new(format!("/ip4/127.0.0.1/tcp/1/p2p/{}", peer())), "peer id");
        check(Libp2pConfig { advertise_addr: Some("nonsense".into()), ..d() }, "advertise_addr");
    }

    #[test]
    fn debug_hides_the_seed() {
        let c = Libp2pConfig { identity_seed_hex: Some(SEED.into()), ..Libp2pConfig::default() };
        let shown = format!("{c:?}");
        assert!(!shown.contains(SEED) && shown.contains("redacted"), "{shown}");
    }

    fn peer() -> String {
        Libp2pConfig::default().with_identity_seed(&[1; 32]).peer_id().unwrap().unwrap()
    }
}
