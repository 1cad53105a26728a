//! The node-to-node protocol: one message enum, one encoding, one version.
//!
//! Every frame is a little-endian `u16` protocol version followed by the
//! postcard encoding of a [`Request`] or [`Response`]. Key states travel as
//! already-encoded [`SiblingSet`](crate::causality::SiblingSet) bytes, so a
//! coordinator encodes a state once and sends the same bytes to every
//! replica. Decoding never panics: any malformed frame is an
//! [`Error::Protocol`]. Errors cross the wire as a [`WireError`], owned by
//! the protocol rather than the public [`Error`] enum: an error kind a
//! peer does not know still decodes (as [`Error::Remote`]).

use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::causality::CausalContext;
use crate::error::Error;
use crate::gossip::{Digest, MemberEntry};
use crate::member::NodeId;
use crate::merkle::{KeyDigest, NodeHashes, Step, TaggedLeaves, Wanted};
use crate::ring::RingLayout;
use crate::store::StoreError;

/// The protocol version this build speaks. Version 2 gave forwarded
/// writes an identity and a deadline, replication a sibling bound, and
/// timestamps microseconds. Version 3 added ring transitions to gossip,
/// handoff reports to member entries, and ownership handoff. Version 4
/// added Merkle-tree anti-entropy and tombstone purge. Version 5 sends
/// tree hashes as index runs of fixed-width (and salted, projected)
/// hashes, and key digests as tags with an event count.
pub const PROTOCOL_VERSION: u16 = 5;

/// What one node asks of another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness probe; answered with [`Response::Pong`].
    Ping,
    /// The replica's local state for `key`: its data, or with `hint_for`
    /// the hint it holds for that owner. Answered with [`Response::State`].
    Get {
        /// The user key.
        key: Bytes,
        /// Read the hint kept for this owner instead of the data.
        hint_for: Option<NodeId>,
    },
    /// Merge `state` (an encoded sibling set) into the replica's data for
    /// `key`. Answered with [`Response::Ack`].
    Replicate {
        /// The user key.
        key: Bytes,
        /// Encoded [`SiblingSet`](crate::causality::SiblingSet).
        state: Bytes,
        /// Set when the state carries a new client write: the replica
        /// refuses (stores nothing, answers
        /// [`Error::TooManySiblings`]) if the merge would leave more
        /// siblings than this and than it held. `None` for repairs and
        /// hint delivery, which always merge.
        sibling_limit: Option<u32>,
        /// For a new client write, the ring epoch its coordinator planned
        /// it under: a replica at a later epoch refuses it (answering
        /// [`Error::StaleRing`]), since a coordinator that has not seen a
        /// topology change would count acknowledgements a move can lose.
        /// For a hint delivery (no `sibling_limit`), the deliverer's ring
        /// epoch, non-zero: a replica a move takes the partition away from
        /// refuses it (answering [`Error::NotReplica`]), since it drops its
        /// copy once the gaining nodes have theirs, and the deliverer
        /// forgets the hint. 0 for read repair and retractions, which every
        /// replica merges.
        epoch: u64,
    },
    /// Keep `state` as a hint for `owner`, who could not be reached, and
    /// deliver it when it answers again. Answered with [`Response::Ack`].
    StoreHint {
        /// The preference-list node the write was meant for.
        owner: NodeId,
        /// The user key.
        key: Bytes,
        /// Encoded [`SiblingSet`](crate::causality::SiblingSet).
        state: Bytes,
    },
    /// Coordinate a write here (a forwarded client put or delete).
    /// Answered with [`Response::Written`].
    Coordinate(WriteRequest),
    /// Opens a gossip exchange: the sender's cluster, id and state hash.
    /// Answered with [`Response::GossipInSync`] or [`Response::GossipDigest`].
    GossipSyn {
        /// The sender's cluster name.
        cluster: String,
        /// The sender's id.
        from: NodeId,
        /// A hash of the sender's whole gossip state.
        hash: u64,
    },
    /// The second half of a gossip exchange: entries the receiver lacks and
    /// what the sender wants. Answered with [`Response::GossipDelta`].
    GossipDelta {
        /// The sender's cluster name.
        cluster: String,
        /// The sender's id.
        from: NodeId,
        /// Entries newer at the sender.
        entries: Vec<MemberEntry>,
        /// The sender's ring, if newer.
        ring: Option<RingLayout>,
        /// Members whose entries the sender wants.
        want: Vec<NodeId>,
        /// Whether the sender wants the receiver's ring.
        want_ring: bool,
    },
    /// Ownership handoff: the next batch of the receiver's data for
    /// `partition`, asked by a node that gains it under ring `epoch`.
    /// Answered with [`Response::HandoffBatch`]; refused unless both sides
    /// are at `epoch` and the asker gains the partition.
    HandoffPull {
        /// The ring epoch of the move.
        epoch: u64,
        /// The gaining node.
        to: NodeId,
        /// The partition.
        partition: u32,
        /// Resume after this user key (`None`: from the start).
        after: Option<Bytes>,
        /// Stop adding keys once the batch holds this many bytes (one
        /// key's state may cross it).
        max_bytes: u32,
    },
    /// Anti-entropy: the sender's Merkle tree hashes of `partition` (its
    /// root to open an exchange, then the nodes the receiver asked to
    /// descend into). Answered with [`Response::AaeStep`]; refused unless
    /// both nodes replicate the partition and the receiver's tree is built.
    AaeTree {
        /// The sending replica.
        from: NodeId,
        /// The partition compared.
        partition: u32,
        /// The sender's hashes, with its tree's shape.
        hashes: NodeHashes,
        /// The salt to answer with [projected](NodeHashes::projected)
        /// hashes under, or `None` for full ones.
        salt: Option<u64>,
    },
    /// Anti-entropy: the sender's key digests of the leaves found to
    /// differ. Answered with [`Response::AaeKeys`].
    AaeKeys {
        /// The sending replica.
        from: NodeId,
        /// The partition compared.
        partition: u32,
        /// The sender's tagged keys of the differing leaves.
        digests: TaggedLeaves,
        /// Most bytes of key states the answer may carry.
        max_bytes: u32,
    },
    /// Anti-entropy: key states the receiver asked for, to merge with the
    /// causal merge. Answered with [`Response::AaePushed`].
    AaePush {
        /// The sending replica.
        from: NodeId,
        /// The partition of every key.
        partition: u32,
        /// `(user key, encoded state)` pairs.
        states: Vec<(Bytes, Bytes)>,
    },
    /// Tombstone purge: which of these tombstones the receiver holds at
    /// exactly these versions. Answered with [`Response::PurgeHeld`].
    PurgeCheck {
        /// The replica running the purge.
        from: NodeId,
        /// The partition of every key.
        partition: u32,
        /// The tombstones, with their versions.
        keys: Vec<KeyDigest>,
    },
    /// Tombstone purge: every replica holds these tombstones; delete each
    /// that is still at its version. Answered with [`Response::Purged`].
    Purge {
        /// The replica running the purge.
        from: NodeId,
        /// The partition of every key.
        partition: u32,
        /// The tombstones, with their versions.
        keys: Vec<KeyDigest>,
    },
}

impl Request {
    /// Whether the request belongs to anti-entropy or tombstone purge
    /// (whose bytes the node counts apart).
    pub fn is_anti_entropy(&self) -> bool {
        matches!(
            self,
            Request::AaeTree { .. }
                | Request::AaeKeys { .. }
                | Request::AaePush { .. }
                | Request::PurgeCheck { .. }
                | Request::Purge { .. }
        )
    }
}

/// The identity of one client write: the node that received it from the
/// client, and a number that node never gives another write (it starts
/// from the node's clock at start-up and counts up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId {
    /// The node the client sent the write to.
    pub origin: NodeId,
    /// Unique among that node's writes.
    pub seq: u64,
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.origin, self.seq)
    }
}

/// A client write forwarded to a coordinator.
///
/// It carries an identity and an absolute deadline (as Cassandra's
/// `cross_node_timeout`): a coordinator executes it at most once, and
/// never once its wall clock has passed `start_by_us`, the moment the
/// sender stops waiting. So a write whose sender gave up, and perhaps
/// answered the client or asked another coordinator, never becomes a
/// second, late event (which could undo an acknowledged delete). This
/// assumes node clocks agree to well within a replica timeout (NTP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRequest {
    /// The write's identity.
    pub id: RequestId,
    /// The user key.
    pub key: Bytes,
    /// The new value, or `None` to delete.
    pub value: Option<Bytes>,
    /// The value's media type, if the client gave one.
    pub content_type: Option<String>,
    /// The client's causal context. `None` means "none given": a put is
    /// then concurrent with everything, a delete uses the coordinator's
    /// own context.
    pub context: Option<CausalContext>,
    /// The highest sibling timestamp the client had seen (µs): the write
    /// is timestamped after it.
    pub seen_us: u64,
    /// The write quorum asked for.
    pub w: usize,
    /// Milliseconds the coordinator may wait for its quorum (clamped by
    /// the coordinator to its `request_timeout_ms`).
    pub timeout_ms: u64,
    /// Wall-clock deadline, µs since the Unix epoch: a coordinator that
    /// would start the write at or after it drops it instead, answering
    /// [`Error::Expired`].
    pub start_by_us: u64,
}

/// What a node answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::Ping`].
    Pong,
    /// Answer to [`Request::Get`]: the encoded state, `None` if absent.
    State(Option<Bytes>),
    /// The request was applied durably.
    Ack,
    /// Answer to [`Request::Coordinate`]: the context covering the write.
    Written {
        /// The dots the write's context covers, its own included.
        context: CausalContext,
        /// The write's timestamp (µs), the highest the context has seen.
        seen_us: u64,
    },
    /// The request failed.
    Error(WireError),
    /// Answer to [`Request::GossipSyn`]: the states hash the same.
    GossipInSync {
        /// The answering node.
        from: NodeId,
    },
    /// Answer to [`Request::GossipSyn`]: the states differ; the answerer's digest.
    GossipDigest {
        /// The answering node.
        from: NodeId,
        /// Its state's stamps.
        digest: Digest,
    },
    /// Answer to [`Request::GossipDelta`]: the entries asked for.
    GossipDelta {
        /// The answering node.
        from: NodeId,
        /// The wanted entries.
        entries: Vec<MemberEntry>,
        /// The answerer's ring, if wanted.
        ring: Option<RingLayout>,
    },
    /// Answer to [`Request::HandoffPull`]: keys of the partition in
    /// ascending order, each with its encoded sibling set.
    HandoffBatch {
        /// `(user key, encoded state)` pairs.
        entries: Vec<(Bytes, Bytes)>,
        /// Whether the partition's range ends with this batch.
        done: bool,
    },
    /// Answer to [`Request::AaeTree`]: what the receiver's tree says.
    AaeStep(Step),
    /// Answer to [`Request::AaeKeys`].
    AaeKeys {
        /// The answerer's states of the keys that differ or that only it
        /// holds, as `(user key, encoded state)` pairs, up to the byte
        /// limit asked for.
        states: Vec<(Bytes, Bytes)>,
        /// What the answerer wants, by key tag or whole leaf: keys that
        /// differ (unless its state has seen more events) and keys only
        /// the asker holds.
        want: Vec<Wanted>,
    },
    /// Answer to [`Request::AaePush`]: how many keys the merge changed.
    AaePushed {
        /// Keys whose local state changed.
        repaired: u32,
    },
    /// Answer to [`Request::PurgeCheck`]: one flag per key, in order.
    PurgeHeld(Vec<bool>),
    /// Answer to [`Request::Purge`]: how many keys were deleted.
    Purged {
        /// Keys deleted.
        keys: u32,
    },
}

/// An error as it crosses the wire: a message for people, and the error's
/// kind as an inner encoding that is decoded on its own. A kind added by a
/// newer build fails only that inner decoding, and the error still reaches
/// the caller, as [`Error::Remote`] with its message; the frame around it
/// stays readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// The postcard encoding of the error's kind ([`WireErrorKind`]).
    kind: Bytes,
    /// The error as text.
    message: String,
}

/// The kinds of error a node answers with. Append only: never reorder or
/// remove a variant, or older peers misread the ones after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum WireErrorKind {
    EmptyKey,
    KeyTooLong {
        len: u64,
        max: u64,
    },
    ValueTooLarge {
        size: u64,
        max: u64,
    },
    InvalidContext(String),
    InvalidQuorum {
        name: String,
        value: u64,
        n: u64,
    },
    TooManySiblings {
        key: String,
        count: u64,
        max: u64,
    },
    QuorumFailed {
        acks: u64,
        needed: u64,
    },
    Timeout {
        acks: u64,
        needed: u64,
    },
    NotAMember(u64),
    Store(StoreError),
    Protocol(String),
    Corrupt(String),
    ShuttingDown,
    Expired {
        late_ms: u64,
    },
    DuplicateRequest(String),
    Overloaded(String),
    /// Any other error: only its message travels.
    Other,
    ForeignCluster {
        ours: String,
        theirs: String,
    },
    NotReady(String),
    InvalidContentType(String),
    TopologyRefused(String),
    StalePlan {
        planned: u64,
        current: u64,
    },
    StaleRing {
        request: u64,
        current: u64,
    },
    NotReplica {
        partition: u32,
        epoch: u64,
    },
}

fn to_u64(n: usize) -> u64 {
    n as u64
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl From<&Error> for WireError {
    fn from(e: &Error) -> Self {
        let kind = match e {
            Error::EmptyKey => WireErrorKind::EmptyKey,
            Error::KeyTooLong { len, max } => {
                WireErrorKind::KeyTooLong { len: to_u64(*len), max: to_u64(*max) }
            }
            Error::ValueTooLarge { size, max } => {
                WireErrorKind::ValueTooLarge { size: to_u64(*size), max: to_u64(*max) }
            }
            Error::InvalidContext(m) => WireErrorKind::InvalidContext(m.clone()),
            Error::InvalidQuorum { name, value, n } => {
                WireErrorKind::InvalidQuorum { name: name.clone(), value: to_u64(*value), n: to_u64(*n) }
            }
            Error::TooManySiblings { key, count, max } => {
                WireErrorKind::TooManySiblings { key: key.clone(), count: to_u64(*count), max: to_u64(*max) }
            }
            Error::QuorumFailed { acks, needed } => {
                WireErrorKind::QuorumFailed { acks: to_u64(*acks), needed: to_u64(*needed) }
            }
            Error::Timeout { acks, needed } => {
                WireErrorKind::Timeout { acks: to_u64(*acks), needed: to_u64(*needed) }
            }
            Error::NotAMember(n) => WireErrorKind::NotAMember(n.0),
            Error::Store(e) => WireErrorKind::Store(e.clone()),
            Error::Protocol(m) => WireErrorKind::Protocol(m.clone()),
            Error::Corrupt(m) => WireErrorKind::Corrupt(m.clone()),
            Error::ShuttingDown => WireErrorKind::ShuttingDown,
            Error::Expired { late_ms } => WireErrorKind::Expired { late_ms: *late_ms },
            Error::DuplicateRequest(id) => WireErrorKind::DuplicateRequest(id.clone()),
            Error::Overloaded(m) => WireErrorKind::Overloaded(m.clone()),
            Error::ForeignCluster { ours, theirs } => {
                WireErrorKind::ForeignCluster { ours: ours.clone(), theirs: theirs.clone() }
            }
            Error::NotReady(m) => WireErrorKind::NotReady(m.clone()),
            Error::InvalidContentType(m) => WireErrorKind::InvalidContentType(m.clone()),
            Error::TopologyRefused(m) => WireErrorKind::TopologyRefused(m.clone()),
            Error::StalePlan { planned, current } => {
                WireErrorKind::StalePlan { planned: *planned, current: *current }
            }
            Error::StaleRing { request, current } => {
                WireErrorKind::StaleRing { request: *request, current: *current }
            }
            Error::NotReplica { partition, epoch } => {
                WireErrorKind::NotReplica { partition: *partition, epoch: *epoch }
            }
            _ => WireErrorKind::Other,
        };
        let kind = postcard::to_stdvec(&kind).expect("error kinds always serialize");
        WireError { kind: Bytes::from(kind), message: e.to_string() }
    }
}

impl WireError {
    /// The error this stands for: the same [`Error`] variant when this
    /// build knows its kind, else [`Error::Remote`] with its message.
    pub fn into_error(self) -> Error {
        let Ok(kind) = postcard::from_bytes::<WireErrorKind>(&self.kind) else {
            return Error::Remote(self.message);
        };
        match kind {
            WireErrorKind::EmptyKey => Error::EmptyKey,
            WireErrorKind::KeyTooLong { len, max } => {
                Error::KeyTooLong { len: to_usize(len), max: to_usize(max) }
            }
            WireErrorKind::ValueTooLarge { size, max } => {
                Error::ValueTooLarge { size: to_usize(size), max: to_usize(max) }
            }
            WireErrorKind::InvalidContext(m) => Error::InvalidContext(m),
            WireErrorKind::InvalidQuorum { name, value, n } => {
                Error::InvalidQuorum { name, value: to_usize(value), n: to_usize(n) }
            }
            WireErrorKind::TooManySiblings { key, count, max } => {
                Error::TooManySiblings { key, count: to_usize(count), max: to_usize(max) }
            }
            WireErrorKind::QuorumFailed { acks, needed } => {
                Error::QuorumFailed { acks: to_usize(acks), needed: to_usize(needed) }
            }
            WireErrorKind::Timeout { acks, needed } => {
                Error::Timeout { acks: to_usize(acks), needed: to_usize(needed) }
            }
            WireErrorKind::NotAMember(n) => Error::NotAMember(NodeId(n)),
            WireErrorKind::Store(e) => Error::Store(e),
            WireErrorKind::Protocol(m) => Error::Protocol(m),
            WireErrorKind::Corrupt(m) => Error::Corrupt(m),
            WireErrorKind::ShuttingDown => Error::ShuttingDown,
            WireErrorKind::Expired { late_ms } => Error::Expired { late_ms },
            WireErrorKind::DuplicateRequest(id) => Error::DuplicateRequest(id),
            WireErrorKind::Overloaded(m) => Error::Overloaded(m),
            WireErrorKind::TopologyRefused(m) => Error::TopologyRefused(m),
            WireErrorKind::StalePlan { planned, current } => Error::StalePlan { planned, current },
            WireErrorKind::StaleRing { request, current } => Error::StaleRing { request, current },
            WireErrorKind::NotReplica { partition, epoch } => Error::NotReplica { partition, epoch },
            WireErrorKind::Other => Error::Remote(self.message),
            WireErrorKind::ForeignCluster { ours, theirs } => Error::ForeignCluster { ours, theirs },
            WireErrorKind::NotReady(m) => Error::NotReady(m),
            WireErrorKind::InvalidContentType(m) => Error::InvalidContentType(m),
        }
    }
}

impl Response {
    /// The error answer for `e`.
    pub fn error(e: &Error) -> Response {
        Response::Error(WireError::from(e))
    }
}

fn encode<T: Serialize>(msg: &T) -> Bytes {
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    // Postcard fails only on sequences of unknown length, which no
    // message type here contains.
    let buf = postcard::to_extend(msg, buf).expect("protocol messages always serialize");
    Bytes::from(buf)
}

/// The protocol version a frame says it speaks, if it is long enough to say.
pub fn frame_version(frame: &[u8]) -> Option<u16> {
    frame.split_first_chunk::<2>().map(|(v, _)| u16::from_le_bytes(*v))
}

fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, Error> {
    let Some((version, body)) = frame.split_first_chunk::<2>() else {
        return Err(Error::Protocol(format!("frame of {} bytes is too short", frame.len())));
    };
    let version = u16::from_le_bytes(*version);
    if version != PROTOCOL_VERSION {
        return Err(Error::Protocol(format!(
            "unsupported protocol version {version} (this node speaks {PROTOCOL_VERSION})"
        )));
    }
    match postcard::take_from_bytes(body) {
        Ok((msg, [])) => Ok(msg),
        Ok((_, rest)) => Err(Error::Protocol(format!("{} trailing bytes after message", rest.len()))),
        Err(e) => Err(Error::Protocol(format!("malformed message: {e}"))),
    }
}

impl Request {
    /// Encodes the request as a frame.
    pub fn encode(&self) -> Bytes {
        encode(self)
    }

    /// Decodes a request frame.
    ///
    /// # Errors
    /// [`Error::Protocol`] for a short, foreign-version or malformed frame.
    pub fn decode(frame: &[u8]) -> Result<Request, Error> {
        decode(frame)
    }
}

impl Response {
    /// Encodes the response as a frame.
    pub fn encode(&self) -> Bytes {
        encode(self)
    }

    /// Decodes a response frame.
    ///
    /// # Errors
    /// [`Error::Protocol`] for a short, foreign-version or malformed frame.
    pub fn decode(frame: &[u8]) -> Result<Response, Error> {
        decode(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_round_trip() {
        let reqs = [
            Request::Ping,
            Request::Get { key: Bytes::from_static(b"k"), hint_for: Some(NodeId(3)) },
            Request::Replicate {
                key: Bytes::from_static(b"k"),
                state: Bytes::from_static(b"\x01abc"),
                sibling_limit: Some(100),
                epoch: 3,
            },
            Request::StoreHint { owner: NodeId(9), key: Bytes::from_static(b"k"), state: Bytes::new() },
            Request::Coordinate(WriteRequest {
                id: RequestId { origin: NodeId(2), seq: 7 },
                key: Bytes::from_static(b"k"),
                value: None,
                content_type: Some("text/plain".into()),
                context: Some(CausalContext::new()),
                seen_us: 5,
                w: 2,
                timeout_ms: 100,
                start_by_us: 1_000_000,
            }),
        ];
        for r in reqs {
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
        let resp = Response::error(&Error::QuorumFailed { acks: 1, needed: 2 });
        assert_eq!(Response::decode(&resp.encode()).unwrap(), resp);
    }

    #[test]
    fn errors_cross_the_wire_by_kind_and_unknown_kinds_still_arrive() {
        let errors = [
            Error::EmptyKey,
            Error::KeyTooLong { len: 9, max: 8 },
            Error::TooManySiblings { key: "k".into(), count: 4, max: 3 },
            Error::Timeout { acks: 1, needed: 2 },
            Error::Store(StoreError::Backend { backend: "redb".into(), message: "disk".into() }),
            Error::Expired { late_ms: 7 },
            Error::ShuttingDown,
        ];
        for e in errors {
            let Response::Error(wire) = Response::decode(&Response::error(&e).encode()).unwrap() else {
                panic!("not an error answer");
            };
            assert_eq!(wire.into_error(), e);
        }
        // A kind this build does not know (a newer peer's): the frame decodes,
        // and the error arrives with its message.
        let newer = WireError { kind: Bytes::from_static(&[200, 1]), message: "a future error".into() };
        let frame = Response::Error(newer).encode();
        let Response::Error(wire) = Response::decode(&frame).unwrap() else { panic!("not an error answer") };
        assert_eq!(wire.into_error(), Error::Remote("a future error".into()));
        // Errors with no wire kind of their own travel as their message.
        let local = Error::Config("bad".into());
        let Response::Error(wire) = Response::error(&local) else { panic!() };
        assert_eq!(wire.into_error(), Error::Remote(local.to_string()));
    }

    #[test]
    fn foreign_version_and_trailing_bytes_are_rejected() {
        let mut frame = Request::Ping.encode().to_vec();
        frame.push(0);
        assert!(matches!(Request::decode(&frame), Err(Error::Protocol(m)) if m.contains("trailing")));
        frame.truncate(frame.len() - 1);
        frame[0] = 99;
        assert!(matches!(Request::decode(&frame), Err(Error::Protocol(m)) if m.contains("version 99")));
        assert!(Request::decode(&[1]).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&bytes);
        }
    }
}
