//! [`Libp2pTransport`]: the handle the node holds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use libp2p::core::upgrade::Version;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, PeerId, SwarmBuilder};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use dynamo_core::transport::{FrameHandler, Transport, TransportError};

use crate::address::{format_peer_addr, parse_peer_addr};
use crate::codec::{FrameCodec, PROTOCOL};
use crate::config::Libp2pConfig;
use crate::driver::{Behaviour, Call, Driver, Failure};

/// Calls queued to the swarm task at most; callers wait (within their
/// deadlines) beyond that.
const CALL_QUEUE: usize = 1024;

/// Longest wait in [`Libp2pTransport::bind`] for the listener to report its
/// address.
const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// A [`Transport`] over libp2p: TCP, Noise, Yamux and one request-response
/// stream per call.
///
/// Cheap to share behind an `Arc`; every method takes `&self`. See the
/// [crate documentation](crate) for the address format, the wire format and
/// how failures map to [`TransportError`].
pub struct Libp2pTransport {
    local_addr: String,
    peer_id: PeerId,
    max_frame: usize,
    calls: mpsc::Sender<Call>,
    handler: Arc<OnceLock<Arc<dyn FrameHandler>>>,
    closed: AtomicBool,
    /// The swarm task and the signal that stops it; taken by `shutdown`.
    task: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

impl std::fmt::Debug for Libp2pTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libp2pTransport")
            .field("local_addr", &self.local_addr)
            .field("max_frame", &self.max_frame)
            .field("serving", &self.handler.get().is_some())
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Libp2pTransport {
    /// Builds the swarm, starts listening and returns once the listener is
    /// up, so [`local_addr`](Transport::local_addr) is known. Inbound
    /// requests are refused until [`serve`](Transport::serve).
    ///
    /// Must be called within a tokio runtime with the I/O and time drivers:
    /// the swarm runs on a task of its own.
    ///
    /// # Errors
    /// [`TransportError::Listen`] when the config is invalid (the reason
    /// names the field) or the address cannot be listened on (in use, not
    /// local).
    pub async fn bind(config: Libp2pConfig) -> Result<Libp2pTransport, TransportError> {
        let listen_err = |reason: String| TransportError::Listen { addr: config.listen_addr.clone(), reason };
        config.validate().map_err(|e| listen_err(e.to_string()))?;
        let listen = config.listen_multiaddr().map_err(|e| listen_err(e.to_string()))?;
        let wildcard = listen.iter().any(|p| match p {
            Protocol::Ip4(ip) => ip.is_unspecified(),
            Protocol::Ip6(ip) => ip.is_unspecified(),
            _ => false,
        });
        let advertise = config.advertise_multiaddr().map_err(|e| listen_err(e.to_string()))?;
        let keypair = config.keypair().map_err(|e| listen_err(e.to_string()))?;
        let peer_id = keypair.public().to_peer_id();
        let max_in_flight = config.max_in_flight_per_peer;
        // A connection carries both sides' calls; allow for each side's cap
        // plus a margin for streams still closing.
        let streams_per_connection = 2 * max_in_flight + 16;

        let behaviour = Behaviour::with_codec(
            FrameCodec::new(config.max_frame_bytes),
            [(PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(config.request_timeout())
                .with_max_concurrent_streams(streams_per_connection),
        );
        let mut swarm = SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, move || {
                let mut yamux = yamux::Config::default();
                yamux.set_max_num_streams(streams_per_connection + 16);
                yamux
            })
            .map_err(|e| listen_err(format!("noise setup: {e}")))?
            .with_behaviour(|_| behaviour)
            .map_err(|e| listen_err(format!("behaviour setup: {e}")))?
            .with_swarm_config(|c| {
                c.with_idle_connection_timeout(config.idle_connection_timeout())
                    .with_max_negotiating_inbound_streams(streams_per_connection)
                    // One protocol only: the caller may send its request
                    // with the protocol proposal, saving a round trip.
                    .with_substream_upgrade_protocol_override(Version::V1Lazy)
            })
            .build();

        let listener = swarm.listen_on(listen).map_err(|e| listen_err(e.to_string()))?;
        let bound = tokio::time::timeout(LISTEN_WAIT, async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::NewListenAddr { listener_id, address } if listener_id == listener => {
                        return Ok(address);
                    }
                    SwarmEvent::ListenerClosed { listener_id, reason, .. } if listener_id == listener => {
                        return Err(match reason {
                            Ok(()) => "listener closed".to_owned(),
                            Err(e) => e.to_string(),
                        });
                    }
                    SwarmEvent::ListenerError { listener_id, error } if listener_id == listener => {
                        return Err(error.to_string());
                    }
                    _ => {}
                }
            }
        })
        .await
        .map_err(|_| listen_err(format!("no listen address within {LISTEN_WAIT:?}")))?
        .map_err(listen_err)?;
        if wildcard && advertise.is_none() {
            tracing::warn!(
                %bound,
                "listening on a wildcard address without advertise_addr: advertising one interface's address"
            );
        }
        let local_addr = format_peer_addr(advertise.as_ref().unwrap_or(&bound), peer_id);
        tracing::info!(%local_addr, "libp2p transport listening");

        let (calls, rx) = mpsc::channel(CALL_QUEUE);
        let (stop, stopped) = oneshot::channel();
        let handler = Arc::new(OnceLock::new());
        let driver = Driver::new(
            swarm,
            rx,
            stopped,
            Arc::clone(&handler),
            config.max_frame_bytes,
            max_in_flight,
            config.request_timeout(),
        );
        let task = tokio::spawn(driver.run());
        Ok(Libp2pTransport {
            local_addr,
            peer_id,
            max_frame: config.max_frame_bytes,
            calls,
            handler,
            closed: AtomicBool::new(false),
            task: Mutex::new(Some((stop, task))),
        })
    }

    /// This node's peer id (`12D3KooW…`), the last part of
    /// [`local_addr`](Transport::local_addr).
    pub fn peer_id(&self) -> String {
        self.peer_id.to_string()
    }

    /// A call to this node's own address: straight to the handler, as
    /// libp2p does not dial itself.
    async fn call_self(&self, to: &str, frame: Bytes, timeout: Duration) -> Result<Bytes, TransportError> {
        let unreachable = |reason: String| TransportError::Unreachable { peer: to.to_owned(), reason };
        let Some(handler) = self.handler.get().map(Arc::clone) else {
            return Err(unreachable("peer refused the request: not serving yet".to_owned()));
        };
        let response = tokio::time::timeout(timeout, handler.handle(frame))
            .await
            .map_err(|_| TransportError::Timeout { peer: to.to_owned(), timeout })?;
        if response.len() > self.max_frame {
            return Err(unreachable(format!(
                "peer refused the request: response of {} bytes exceeds the server's limit of {} bytes",
                response.len(),
                self.max_frame
            )));
        }
        Ok(response)
    }
}

#[async_trait]
impl Transport for Libp2pTransport {
    /// `/ip4/…/tcp/…/p2p/<peer id>`: the advertised (or bound) address with
    /// this node's peer id.
    fn local_addr(&self) -> &str {
        &self.local_addr
    }

    /// Starts answering inbound requests with `handler`, each in a task of
    /// its own.
    ///
    /// # Errors
    /// [`TransportError::Listen`] when already serving or shut down.
    async fn serve(&self, handler: Arc<dyn FrameHandler>) -> Result<(), TransportError> {
        let refuse = |reason: &str| TransportError::Listen {
            addr: self.local_addr.clone(),
            reason: reason.to_owned(),
        };
        if self.closed.load(Ordering::Acquire) {
            return Err(refuse("the transport is shut down"));
        }
        self.handler.set(handler).map_err(|_| refuse("already serving"))
    }

    /// Sends `frame` to `to` (`/ip4/…/tcp/…/p2p/<peer id>`), dialling it
    /// if not connected, and waits for the response.
    ///
    /// # Errors
    /// - [`TransportError::FrameTooLarge`] when `frame` is over
    ///   `max_frame_bytes`; nothing is sent.
    /// - [`TransportError::Timeout`] when no response came within
    ///   `timeout` (or within `request_timeout_ms`, if shorter).
    /// - [`TransportError::Refused`] when `to` is no peer address, the dial
    ///   failed (refused, wrong peer id) or the peer does not speak the
    ///   protocol: the request was not sent.
    /// - [`TransportError::Unreachable`] when the connection or stream
    ///   broke, the response was over the limit, or the peer refused the
    ///   request (not serving yet, its response over its limit).
    /// - [`TransportError::Closed`] after [`shutdown`](Transport::shutdown),
    ///   including for calls in flight when it began.
    async fn call(&self, to: &str, frame: Bytes, timeout: Duration) -> Result<Bytes, TransportError> {
        if frame.len() > self.max_frame {
            return Err(TransportError::FrameTooLarge { size: frame.len(), max: self.max_frame });
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        let target =
            parse_peer_addr(to).map_err(|reason| TransportError::Refused { peer: to.to_owned(), reason })?;
        if target.peer == self.peer_id {
            return self.call_self(to, frame, timeout).await;
        }
        let (reply, answer) = oneshot::channel();
        let call = Call { peer: target.peer, addr: target.addr, frame, reply };
        let exchange = async {
            self.calls.send(call).await.map_err(|_| Failure::Closed)?;
            answer.await.map_err(|_| Failure::Closed)?
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(Failure::Closed)) => Err(TransportError::Closed),
            Ok(Err(Failure::Refused(reason))) => Err(TransportError::Refused { peer: to.to_owned(), reason }),
            Ok(Err(Failure::Unreachable(reason))) => {
                Err(TransportError::Unreachable { peer: to.to_owned(), reason })
            }
            Ok(Err(Failure::TimedOut)) | Err(_) => {
                Err(TransportError::Timeout { peer: to.to_owned(), timeout })
            }
        }
    }

    /// Stops listening, closes every connection, fails calls in flight
    /// with [`TransportError::Closed`] and stops the handlers still
    /// running; returns once the swarm is gone (its port is free).
    /// Idempotent.
    async fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        let running = self.task.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some((stop, task)) = running else { return };
        let _ = stop.send(());
        if let Err(e) = task.await {
            if e.is_panic() {
                tracing::error!("libp2p swarm task panicked");
            }
        }
    }
}
