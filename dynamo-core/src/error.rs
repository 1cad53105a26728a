//! The errors a node reports to its callers.

use crate::member::NodeId;
use crate::store::StoreError;
use crate::transport::TransportError;

/// Everything a request to a node can fail with.
///
/// A node that forwards a request hands the coordinator's error back to
/// its own caller: it crosses the wire as the protocol's
/// [`WireError`](crate::transport::protocol::WireError), which maps back
/// to the same variant (or to [`Error::Remote`] for a kind this build does
/// not know).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The key is empty.
    #[error("the key is empty")]
    EmptyKey,
    /// The key is longer than the configured limit.
    #[error("key of {len} bytes exceeds the limit of {max} bytes")]
    KeyTooLong {
        /// The key's length.
        len: usize,
        /// The configured `max_key_len`.
        max: usize,
    },
    /// The value is larger than the configured limit.
    #[error("value of {size} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge {
        /// The value's size.
        size: usize,
        /// The configured `max_value_size`.
        max: usize,
    },
    /// The causal context given with a write is malformed or belongs to
    /// another key.
    #[error("invalid context: {0}")]
    InvalidContext(String),
    /// The media type given with a value is too long or not visible ASCII.
    #[error("invalid content type: {0}")]
    InvalidContentType(String),
    /// The write would leave more concurrent siblings than allowed.
    #[error("key {key:?} would have {count} siblings, more than the limit of {max}; read it and write back a resolved value with its context")]
    TooManySiblings {
        /// The key, lossily shown as text.
        key: String,
        /// How many siblings the write would leave.
        count: usize,
        /// The configured `max_siblings`.
        max: usize,
    },
    /// Fewer replicas answered than the request's quorum needs, and no
    /// replica is left to ask.
    #[error("quorum not reached: {acks} of {needed} required replicas answered")]
    QuorumFailed {
        /// Replicas that answered successfully.
        acks: usize,
        /// Replicas the request needed (R or W).
        needed: usize,
    },
    /// The request's deadline passed before its quorum was reached.
    #[error("deadline passed with {acks} of {needed} required replicas answered")]
    Timeout {
        /// Replicas that answered successfully in time.
        acks: usize,
        /// Replicas the request needed (R or W).
        needed: usize,
    },
    /// A per-request R or W outside `1..=N`.
    #[error("{name} = {value} is invalid: it must be between 1 and N = {n}")]
    InvalidQuorum {
        /// `"r"` or `"w"`.
        name: String,
        /// The requested value.
        value: usize,
        /// The cluster's replication factor.
        n: usize,
    },
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// No reconciler is registered under that name.
    #[error("no reconciler named {name:?}; registered: {known:?}")]
    UnknownReconciler {
        /// The name asked for.
        name: String,
        /// The names that are registered.
        known: Vec<String>,
    },
    /// A node is not a member of the ring it was given.
    #[error("node {0} is not a member of the ring")]
    NotAMember(NodeId),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A frame could not be sent or received.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A peer sent something this node cannot understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
    /// A forwarded request reached its coordinator after the sender's
    /// deadline for it (the sender had given up), so it was not executed.
    #[error("the request arrived {late_ms} ms after its deadline and was not executed")]
    Expired {
        /// How late it was, in milliseconds.
        late_ms: u64,
    },
    /// The same forwarded request (same id) arrived again, for example
    /// duplicated by the network; the copy was not executed.
    #[error("request {0} was already received; the copy was not executed")]
    DuplicateRequest(String),
    /// The store's data was written under another ring (partitions, N or
    /// members) than the one the node was started with.
    #[error("the store was written under another ring: {differences}; change the topology the supported way, start with a fresh data directory, or adopt the new ring explicitly")]
    RingMismatch {
        /// What differs, recorded first and given second.
        differences: String,
    },
    /// A peer of another cluster (another cluster name) was refused.
    #[error("refused a peer of cluster {theirs:?}: this node belongs to {ours:?}")]
    ForeignCluster {
        /// This node's cluster name.
        ours: String,
        /// The peer's.
        theirs: String,
    },
    /// The node cannot serve the request yet (it has not learned the ring).
    #[error("not ready: {0}")]
    NotReady(String),
    /// A peer answered with an error of a kind this build does not know
    /// (a newer peer's); its message.
    #[error("a peer failed: {0}")]
    Remote(String),
    /// A topology change (join, leave, remove, commit) was refused;
    /// nothing was changed.
    #[error("topology change refused: {0}")]
    TopologyRefused(String),
    /// A plan computed against one ring epoch was committed under another.
    #[error("the plan was computed against ring epoch {planned}, and the ring is now at epoch {current}: run `plan` again")]
    StalePlan {
        /// The epoch the plan was computed against.
        planned: u64,
        /// The ring's epoch now.
        current: u64,
    },
    /// A replica refused a new write planned under an older ring epoch than
    /// its own (the coordinator has not learned a topology change yet);
    /// nothing was stored.
    #[error("the write was planned under ring epoch {request}, and this replica is at epoch {current}; nothing was stored")]
    StaleRing {
        /// The coordinator's ring epoch.
        request: u64,
        /// The replica's.
        current: u64,
    },
    /// The node does not replicate the key's partition (a topology change
    /// moved it away and its data has settled elsewhere); nothing was read
    /// or stored.
    #[error("this node no longer replicates partition {partition} (ring epoch {epoch})")]
    NotReplica {
        /// The partition.
        partition: u32,
        /// The node's ring epoch.
        epoch: u64,
    },
    /// The node refused work it has no room for; nothing was executed.
    #[error("node is overloaded: {0}")]
    Overloaded(String),
}

impl Error {
    /// Whether a node that answered this error for a forwarded write
    /// certainly did not execute it, so the sender may try another
    /// coordinator without the write ever becoming two events.
    pub fn not_executed(&self) -> bool {
        matches!(
            self,
            Error::ShuttingDown
                | Error::Expired { .. }
                | Error::Overloaded(_)
                | Error::Store(_)
                | Error::NotAMember(_)
                | Error::StaleRing { .. }
                | Error::NotReplica { .. }
        )
    }
}

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::ring::RingError> for Error {
    fn from(e: crate::ring::RingError) -> Self {
        Error::Config(e.to_string())
    }
}
