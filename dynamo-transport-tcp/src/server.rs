//! The serving side: an accept loop and one task per connection.
//!
//! A connection's task reads request frames and spawns the handler for each,
//! so a slow request does not hold up the others on its connection; the
//! handlers' responses are queued to the same task, which writes them in
//! batches as they complete, in whatever order that is.
//!
//! A frame that breaks the format (length prefix over the limit, a body too
//! short to hold the id, a stream ending mid-frame), a frame not whole within
//! the read timeout, and a connection idle for the idle timeout each close
//! that connection alone; the listener and other connections go on. Past
//! `max_connections` open connections a new one is closed as soon as it is
//! accepted.
//!
//! With TLS, a connection's task first completes the handshake, within the
//! read timeout; a peer without a certificate from the cluster's CA, one
//! speaking plaintext, or one that stalls or breaks off the handshake is
//! closed before a single frame is read, and the refusal is logged with
//! its address (at most one warning every 10 s, the rest at debug).

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dynamo_core::transport::FrameHandler;
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::client::lock;
use crate::config::TcpConfig;
use crate::reader::{FrameReader, ReadError, Traffic};
use crate::refusals::RefusalLog;
use crate::watchdog::Timeouts;
use crate::wire::{write_frames, Outgoing, ERROR_FLAG};

/// Most requests of one connection handled at once; past it the connection
/// is not read until one completes (backpressure on a flooding client).
pub(crate) const MAX_IN_FLIGHT_PER_CONNECTION: usize = 4096;

/// Pause after a failed accept (out of file descriptors, say) before the next.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(20);

/// What the serving side takes from the transport's config.
#[derive(Clone)]
pub(crate) struct ServeOptions {
    /// Largest request or response body.
    pub(crate) max_frame: usize,
    /// Read and idle timeouts of each connection.
    pub(crate) timeouts: Timeouts,
    /// Most connections open at once.
    pub(crate) max_connections: usize,
    /// The TLS server side, when connections must be mutual TLS.
    pub(crate) tls: Option<TlsAcceptor>,
}

impl ServeOptions {
    pub(crate) fn new(config: &TcpConfig, tls: Option<TlsAcceptor>) -> Self {
        ServeOptions {
            max_frame: config.max_frame_bytes,
            timeouts: Timeouts { read: config.read_timeout(), idle: config.idle_timeout() },
            max_connections: config.max_connections,
            tls,
        }
    }
}

/// Accepts connections until `cancel`, then closes the listener and every
/// connection it accepted before returning.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    handler: Arc<dyn FrameHandler>,
    options: ServeOptions,
    cancel: CancellationToken,
) {
    let mut conns = JoinSet::new();
    let mut refusals = RefusalLog::default();
    let handshakes = Arc::new(Mutex::new(RefusalLog::default()));
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            // Reaped before the next accept, so the count below is current.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, from)) if conns.len() >= options.max_connections => {
                    drop(stream);
                    let limit = options.max_connections;
                    refusals.refused(Instant::now(), from, &format_args!("{limit} connections are open (max_connections)"));
                }
                Ok((stream, from)) => {
                    let handshakes = Arc::clone(&handshakes);
                    conns.spawn(serve_connection(stream, from, Arc::clone(&handler), options.clone(), handshakes));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    }
                }
            },
        }
    }
    drop(listener);
    conns.shutdown().await;
}

/// What the reader of a connection learns from its handlers and writer.
struct Inbound {
    /// One permit per request in flight, up to the limit.
    permits: Arc<Semaphore>,
    /// Write batches so far.
    written: AtomicU64,
}

impl Inbound {
    fn in_flight(&self) -> usize {
        MAX_IN_FLIGHT_PER_CONNECTION - self.permits.available_permits()
    }
}

impl Traffic for Inbound {
    fn busy(&self) -> bool {
        self.in_flight() > 0
    }
    fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

/// Serves one connection (after its TLS handshake, when TLS is on) until
/// the client closes it, sends a bad frame, stalls mid-frame or idles past
/// the timeouts, or the task is aborted by shutdown.
async fn serve_connection(
    stream: TcpStream,
    from: SocketAddr,
    handler: Arc<dyn FrameHandler>,
    options: ServeOptions,
    handshakes: Arc<Mutex<RefusalLog>>,
) {
    if let Err(e) = stream.set_nodelay(true) {
        warn!(%from, error = %e, "cannot set TCP_NODELAY; closing connection");
        return;
    }
    let Some(acceptor) = &options.tls else {
        let (read, write) = stream.into_split();
        return serve_frames(read, write, from, handler, &options).await;
    };
    let refused = |reason: &dyn std::fmt::Display| {
        lock(&handshakes).refused(Instant::now(), from, &format_args!("TLS handshake failed: {reason}"));
    };
    match tokio::time::timeout(options.timeouts.read, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let (read, write) = tokio::io::split(tls);
            serve_frames(read, write, from, handler, &options).await;
        }
        Ok(Err(e)) => refused(&e),
        Err(_) => {
            refused(&format_args!("not complete within the read timeout of {:?}", options.timeouts.read))
        }
    }
}

/// Reads request frames from `read` and writes their responses to `write`
/// until the connection ends (see [`serve_connection`]).
async fn serve_frames(
    read: impl AsyncRead + Unpin,
    write: impl AsyncWrite + Unpin,
    from: SocketAddr,
    handler: Arc<dyn FrameHandler>,
    options: &ServeOptions,
) {
    let max_frame = options.max_frame;
    let (responses, mut queue) = mpsc::unbounded_channel();
    let inbound = Inbound {
        permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION)),
        written: AtomicU64::new(0),
    };
    let inbound = &inbound;
    // More than one request being handled: more responses are coming.
    let busy = || inbound.in_flight() > 1;
    let reader = async move {
        let mut frames = FrameReader::new(read, max_frame, options.timeouts);
        loop {
            match frames.next(inbound).await {
                Ok(Some((id, request))) => {
                    let permits = &inbound.permits;
                    let permit = match Arc::clone(permits).try_acquire_owned() {
                        Ok(permit) => permit,
                        // Never closed, so this only waits.
                        Err(_) => match Arc::clone(permits).acquire_owned().await {
                            Ok(permit) => permit,
                            Err(_) => return,
                        },
                    };
                    let handler = Arc::clone(&handler);
                    let responses = responses.clone();
                    tokio::spawn(async move {
                        // A handler must not panic; if one does, the caller
                        // hears of it now rather than at its deadline.
                        let answer = match AssertUnwindSafe(handler.handle(request)).catch_unwind().await {
                            Ok(response) => checked_response(id, response, max_frame, from),
                            Err(_) => {
                                warn!(%from, "frame handler panicked");
                                Outgoing {
                                    id: id | ERROR_FLAG,
                                    body: Bytes::from_static(b"handler panicked"),
                                }
                            }
                        };
                        let _ = responses.send(answer);
                        drop(permit);
                    });
                }
                Ok(None) => {
                    debug!(%from, "connection closed by client");
                    return;
                }
                Err(e @ ReadError::Idle(_)) => {
                    debug!(%from, reason = %e, "closing idle connection");
                    return;
                }
                Err(e @ ReadError::Stalled(_)) => {
                    warn!(%from, reason = %e, "closing connection: request frame stalled");
                    return;
                }
                Err(e) => {
                    warn!(%from, error = %e, "closing connection: bad request frame");
                    return;
                }
            }
        }
    };
    tokio::select! {
        () = reader => {}
        written = write_frames(write, &mut queue, busy, &inbound.written) => {
            if let Err(e) = written {
                debug!(%from, error = %e, "connection lost while writing");
            }
        }
    }
}

/// The frame answering request `id`: the response, or when it exceeds the
/// limit an error frame telling the caller why nothing else comes.
fn checked_response(id: u64, response: Bytes, max_frame: usize, from: SocketAddr) -> Outgoing {
    if response.len() <= max_frame {
        return Outgoing { id, body: response };
    }
    warn!(%from, size = response.len(), max = max_frame, "handler response exceeds the frame limit; not sent");
    let reason = format!("response of {} bytes exceeds the frame limit of {max_frame} bytes", response.len());
    Outgoing { id: id | ERROR_FLAG, body: Bytes::from(reason) }
}
