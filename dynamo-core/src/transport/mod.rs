//! Moving frames between nodes.
//!
//! A [`Transport`] carries opaque request frames to a peer address and
//! returns the peer's response frame, within a deadline. It knows nothing of
//! what the frames mean: the [`protocol`] module owns the one message enum
//! every transport carries, so a new transport only moves bytes.

pub mod protocol;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// Serves the frames a transport receives.
///
/// The node implements this; a transport calls it once per incoming request
/// and sends back whatever it returns.
#[async_trait]
pub trait FrameHandler: Send + Sync + 'static {
    /// Handles one request frame and returns the response frame.
    ///
    /// Must not panic on any input: a malformed frame is answered with an
    /// error frame.
    async fn handle(&self, frame: Bytes) -> Bytes;
}

/// A request/response link between node addresses.
///
/// Implementations must be cheap to share (`Arc<dyn Transport>`) and safe to
/// call from many tasks at once. Every call has a deadline: a peer that is
/// down or never answers yields an error no later than `timeout` after the
/// call started.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The address this transport advertises to peers.
    fn local_addr(&self) -> &str;

    /// Starts serving incoming frames with `handler`.
    ///
    /// # Errors
    /// Fails when the transport cannot listen (address in use, already started).
    async fn serve(&self, handler: Arc<dyn FrameHandler>) -> Result<(), TransportError>;

    /// Sends `frame` to the node at `to` and waits for its response frame.
    ///
    /// # Errors
    /// [`TransportError::Timeout`] when no response arrived within `timeout`,
    /// [`TransportError::Refused`] when the frame certainly was not sent
    /// (no connection could be made), [`TransportError::Unreachable`] when
    /// the peer cannot be reached and the frame may have been delivered
    /// (a connection broke mid-call), and [`TransportError::Closed`] after
    /// [`Transport::shutdown`]. The distinction matters: a request that
    /// failed with `Refused` can be sent elsewhere without risk of being
    /// executed twice.
    async fn call(&self, to: &str, frame: Bytes, timeout: Duration) -> Result<Bytes, TransportError>;

    /// Stops serving and fails calls in flight with [`TransportError::Closed`].
    async fn shutdown(&self);
}

/// Why a transport call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum TransportError {
    /// No response arrived within the deadline.
    #[error("no response from {peer} within {timeout:?}")]
    Timeout {
        /// The peer called.
        peer: String,
        /// The deadline that elapsed.
        timeout: Duration,
    },
    /// The frame was not sent: no connection to the peer could be made
    /// (connection refused, unknown address). The peer never saw it.
    #[error("peer {peer} refused the connection: {reason}")]
    Refused {
        /// The peer called.
        peer: String,
        /// What went wrong.
        reason: String,
    },
    /// The peer could not be reached, and the frame may or may not have
    /// been delivered (reset mid-call, connection lost).
    #[error("peer {peer} unreachable: {reason}")]
    Unreachable {
        /// The peer called.
        peer: String,
        /// What went wrong.
        reason: String,
    },
    /// A frame exceeded the configured maximum size.
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The frame's size.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The transport was shut down.
    #[error("transport closed")]
    Closed,
    /// The transport could not start serving.
    #[error("cannot serve on {addr}: {reason}")]
    Listen {
        /// The address it tried to serve on.
        addr: String,
        /// What went wrong.
        reason: String,
    },
}
