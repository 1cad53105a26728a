//! The node-to-node protocol: one message enum, one encoding, one version.
//!
//! Every frame is a little-endian `u16` protocol version followed by the
//! postcard encoding of a [`Request`] or [`Response`]. Key states travel as
//! already-encoded [`SiblingSet`](crate::causality::SiblingSet) bytes, so a
//! coordinator encodes a state once and sends the same bytes to every
//! replica. Decoding never panics: any malformed frame is an
//! [`Error::Protocol`].

use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::causality::CausalContext;
use crate::error::Error;
use crate::member::NodeId;

/// The protocol version this build speaks. Version 2 gave forwarded
/// writes an identity and a deadline, replication a sibling bound, and
/// timestamps microseconds.
pub const PROTOCOL_VERSION: u16 = 2;

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
    Error(Error),
}

fn encode<T: Serialize>(msg: &T) -> Bytes {
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    // Postcard fails only on sequences of unknown length, which no
    // message type here contains.
    let buf = postcard::to_extend(msg, buf).expect("protocol messages always serialize");
    Bytes::from(buf)
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
            },
            Request::StoreHint { owner: NodeId(9), key: Bytes::from_static(b"k"), state: Bytes::new() },
            Request::Coordinate(WriteRequest {
                id: RequestId { origin: NodeId(2), seq: 7 },
                key: Bytes::from_static(b"k"),
                value: None,
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
        let resp = Response::Error(Error::QuorumFailed { acks: 1, needed: 2 });
        assert_eq!(Response::decode(&resp.encode()).unwrap(), resp);
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
