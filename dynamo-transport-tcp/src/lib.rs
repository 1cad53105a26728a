//! A [`Transport`](dynamo_core::transport::Transport) for dynamo-core over
//! tokio TCP.
//!
//! [`TcpTransport::bind`] binds the listener; [`Transport::serve`] starts
//! accepting; [`Transport::call`] sends an opaque frame to a peer address and
//! waits for its response.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use async_trait::async_trait;
//! use bytes::Bytes;
//! use dynamo_core::transport::{FrameHandler, Transport};
//! use dynamo_transport_tcp::{TcpConfig, TcpTransport};
//!
//! struct Echo;
//!
//! #[async_trait]
//! impl FrameHandler for Echo {
//!     async fn handle(&self, frame: Bytes) -> Bytes {
//!         frame
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), dynamo_core::transport::TransportError> {
//! // Port 0: the kernel picks a free port, and local_addr() tells which.
//! let server = TcpTransport::bind(TcpConfig::new("127.0.0.1:0")).await?;
//! server.serve(Arc::new(Echo)).await?;
//!
//! let client = TcpTransport::bind(TcpConfig::new("127.0.0.1:0")).await?;
//! let answer = client.call(server.local_addr(), Bytes::from_static(b"ping"), Duration::from_secs(1)).await?;
//! assert_eq!(answer, "ping");
//!
//! client.shutdown().await;
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Wire format
//!
//! Each frame is a `u32` big-endian length followed by that many bytes: a
//! `u64` big-endian request id, then the body (the core's encoded message).
//! The response to a request echoes its id, so many requests share one
//! connection and are answered in whatever order they complete. A response
//! id with the top bit set carries an error reason instead of a body.
//!
//! Frames are checked against `max_frame_bytes` on both sides. An oversized
//! length prefix is refused before anything is allocated for it, and a frame
//! that breaks the format closes that one connection with a warning. Memory
//! grows with the bytes that arrive, never with the length a prefix
//! announces: a connection holds what it received plus one 64 KiB read
//! buffer (4 KiB until traffic flows), and a large frame is assembled as its
//! bytes come in.
//!
//! # Limits on inbound connections
//!
//! - A frame whose first byte has arrived must be whole within
//!   `read_timeout_ms`, or its connection is closed (either side).
//! - A connection with no request in flight and no frame either way for
//!   `idle_timeout_ms` is closed by the server. Requests in flight keep it
//!   open however long their handlers take.
//! - Past `max_connections` open inbound connections, a new one is closed
//!   as soon as it is accepted, with a warning at most every 10 s; the
//!   others carry on.
//!
//! # Connections
//!
//! Calls to a peer share a small pool of persistent connections
//! (`connections_per_peer`, round robin), all with `TCP_NODELAY`. Each
//! connection's task writes whatever is queued in one batch, then reads
//! responses and wakes their callers. On the serving side each request runs
//! in its own task, so a slow one delays no other.
//!
//! A pooled connection with no call in flight for `pool_idle_timeout_ms`
//! (at most half the server's `idle_timeout_ms`) is closed by the caller,
//! so the server's idle timeout never closes one under a call; a call that
//! picks a connection just as it retires moves to another or dials, without
//! an error.
//!
//! # Failures and deadlines
//!
//! - `timeout` bounds the whole call: connect, send and response.
//! - A peer that refuses connections (or does not accept one in time) gives
//!   [`TransportError::Refused`](dynamo_core::transport::TransportError::Refused)
//!   at once: the frame was not sent. Later connect attempts wait a jittered, doubling backoff
//!   (`backoff_min_ms` to `backoff_max_ms`), and calls during it fail at once
//!   rather than wait. The first call after it tries again.
//! - A connection that breaks fails its calls in flight with `Unreachable`
//!   ("connection lost…") right away; the next call reconnects.
//! - A call that times out after waiting at least `connect_timeout_ms`
//!   without a single response arriving on its connection closes that
//!   connection (its other calls get `Unreachable`), so a half-open
//!   connection to a vanished host is replaced rather than used forever.
//! - A response the server may not send (over its frame limit), or a
//!   handler that panicked, is replaced by a short error frame, so the caller
//!   gets `Unreachable` promptly, not a timeout. A response over the *caller's* limit closes the connection
//!   (its calls get `Unreachable`).
//! - [`Transport::shutdown`] fails calls in flight and later with
//!   [`TransportError::Closed`](dynamo_core::transport::TransportError::Closed).
//!
//! [`Transport::serve`]: dynamo_core::transport::Transport::serve
//! [`Transport::call`]: dynamo_core::transport::Transport::call
//! [`Transport::shutdown`]: dynamo_core::transport::Transport::shutdown

#![warn(missing_docs)]

pub mod certs;
mod client;
mod config;
mod decode;
mod reader;
mod refusals;
mod server;
mod tls;
mod transport;
mod watchdog;
mod wire;

pub use config::{ConfigError, TcpConfig, MAX_FRAME_LIMIT, MAX_TIMEOUT_MS};
pub use tls::{check_key_permissions, client_config, server_config, TlsConfig, TlsError};
pub use transport::TcpTransport;
