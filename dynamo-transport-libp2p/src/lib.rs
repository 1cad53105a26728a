//! A [`Transport`](dynamo_core::transport::Transport) for dynamo-core over
//! libp2p: TCP, Noise (authenticated, encrypted), Yamux (multiplexed), and
//! libp2p's request-response behaviour carrying the core's opaque frames.
//!
//! [`Libp2pTransport::bind`] builds the swarm and starts listening;
//! [`Transport::serve`] starts answering; [`Transport::call`] sends a frame
//! to a peer address and waits for its response.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use async_trait::async_trait;
//! use bytes::Bytes;
//! use dynamo_core::transport::{FrameHandler, Transport};
//! use dynamo_transport_libp2p::{Libp2pConfig, Libp2pTransport};
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
//! // A node keeps its identity across restarts through its seed (made once
//! // with Libp2pConfig::generate_identity_seed_hex and kept in its config).
//! let seed = Libp2pConfig::generate_identity_seed_hex();
//! let config = Libp2pConfig {
//!     identity_seed_hex: Some(seed),
//!     ..Libp2pConfig::new("/ip4/127.0.0.1/tcp/0") // port 0: the kernel picks one
//! };
//! let server = Libp2pTransport::bind(config).await?;
//! server.serve(Arc::new(Echo)).await?;
//! // The address peers dial: /ip4/127.0.0.1/tcp/<port>/p2p/12D3KooW...
//! assert!(server.local_addr().ends_with(&format!("/p2p/{}", server.peer_id())));
//!
//! let client = Libp2pTransport::bind(Libp2pConfig::default()).await?;
//! let answer = client.call(server.local_addr(), Bytes::from_static(b"ping"), Duration::from_secs(5)).await?;
//! assert_eq!(answer, "ping");
//!
//! client.shutdown().await;
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Addresses and identity
//!
//! A peer address is a multiaddr ending in the peer's id, e.g.
//! `/ip4/10.0.0.5/tcp/7001/p2p/12D3KooW…`: it says where to dial and who
//! must answer, and the Noise handshake refuses anyone else.
//! [`Transport::local_addr`] is this node's advertised (or bound) address
//! with its own peer id, the string to put in the cluster's member list.
//!
//! The peer id derives from the Ed25519 key, which derives from
//! [`Libp2pConfig::identity_seed_hex`]. **A node that restarts must keep its
//! seed** (and its port): with a new seed it has a new address, and peers
//! dialling the old one fail with `Refused` (wrong peer id).
//! [`Libp2pConfig::peer_id`] gives a seed's peer id without binding, so the
//! member list can be written before the nodes start. Without a seed the
//! identity is random, for this run only.
//!
//! # Wire format
//!
//! Each call opens a Yamux stream negotiated as `/dynamo/frame/1` (the
//! caller sends its request along with the protocol proposal, multistream
//! `V1Lazy`, saving a round trip). The
//! request is a `u32` big-endian length and that many bytes; the reply is a
//! tag byte (0: response frame, 1: refusal with a UTF-8 reason), a `u32`
//! big-endian length and the body. Lengths are checked against
//! [`max_frame_bytes`](Libp2pConfig::max_frame_bytes) before anything is
//! reserved, on both sides; a frame breaking the format fails that one
//! stream (an I/O error inside libp2p, never a panic), and the connection
//! carries on.
//!
//! # Serving
//!
//! Until [`Transport::serve`], inbound requests are **refused with an error
//! reply** ("not serving yet"), so a caller gets
//! [`TransportError::Unreachable`](dynamo_core::transport::TransportError::Unreachable)
//! at once rather than a timeout. Once serving, each request runs the
//! handler in a task of its own; a response over the frame limit is
//! replaced by a refusal, so the caller fails promptly too.
//!
//! # Failures and deadlines
//!
//! - `timeout` bounds the whole call: queueing, dial, handshake, request
//!   and response. A call's timeout longer than
//!   [`request_timeout_ms`](Libp2pConfig::request_timeout_ms) is cut there.
//! - A frame over the limit fails with `FrameTooLarge` before anything is
//!   sent.
//! - A failed dial (refused, wrong peer id, handshake error) fails with
//!   `Refused` (the request was not sent) as soon as libp2p reports it; the
//!   next call dials again.
//! - A broken connection fails its calls with `Unreachable`.
//! - At most [`max_in_flight_per_peer`](Libp2pConfig::max_in_flight_per_peer)
//!   calls to one peer are on the wire; the others queue, within their own
//!   deadlines.
//! - When a request times out at libp2p's level and its connection brought
//!   nothing (no response, no request) since it was sent, the connection is
//!   closed as possibly half-open: calls to that peer wait until it is gone,
//!   then dial afresh.
//! - [`Transport::shutdown`] fails calls in flight and later with
//!   `Closed`.
//! - A call to the node's own address goes straight to its handler (libp2p
//!   does not dial itself).
//!
//! # Threads and tasks
//!
//! The swarm runs on a tokio task of its own and the handles talk to it
//! through a channel; libp2p spawns a task per connection. `bind` must run
//! inside a tokio runtime with the I/O and time drivers.
//!
//! [`Transport::serve`]: dynamo_core::transport::Transport::serve
//! [`Transport::call`]: dynamo_core::transport::Transport::call
//! [`Transport::shutdown`]: dynamo_core::transport::Transport::shutdown
//! [`Transport::local_addr`]: dynamo_core::transport::Transport::local_addr

#![warn(missing_docs)]

mod address;
mod codec;
mod config;
mod driver;
mod transport;

pub use config::{ConfigError, Libp2pConfig, MAX_FRAME_LIMIT, MAX_IN_FLIGHT_LIMIT};
pub use transport::Libp2pTransport;
