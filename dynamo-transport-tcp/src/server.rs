//! The serving side: an accept loop and one task per connection.
//!
//! A connection's task reads request frames and spawns the handler for each,
//! so a slow request does not hold up the others on its connection; the
//! handlers' responses are queued to the same task, which writes them in
//! batches as they complete, in whatever order that is.
//!
//! A frame that breaks the format (length prefix over the limit, a body too
//! short to hold the id, a stream ending mid-frame) closes that connection
//! alone, with a warning; the listener and other connections go on.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dynamo_core::transport::FrameHandler;
use futures::{FutureExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::wire::{write_frames, FrameCodec, Outgoing, ERROR_FLAG, READ_BUFFER};

/// Most requests of one connection handled at once; past it the connection
/// is not read until one completes (backpressure on a flooding client).
pub(crate) const MAX_IN_FLIGHT_PER_CONNECTION: usize = 4096;

/// Pause after a failed accept (out of file descriptors, say) before the next.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(20);

/// Accepts connections until `cancel`, then closes the listener and every
/// connection it accepted before returning.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    handler: Arc<dyn FrameHandler>,
    max_frame: usize,
    cancel: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, from)) => {
                    conns.spawn(serve_connection(stream, from, Arc::clone(&handler), max_frame));
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

/// Serves one connection until the client closes it, sends a bad frame, or
/// the task is aborted by shutdown.
async fn serve_connection(
    stream: TcpStream,
    from: SocketAddr,
    handler: Arc<dyn FrameHandler>,
    max_frame: usize,
) {
    if let Err(e) = stream.set_nodelay(true) {
        warn!(%from, error = %e, "cannot set TCP_NODELAY; closing connection");
        return;
    }
    let (read, write) = stream.into_split();
    let (responses, mut queue) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION));
    // More than one request being handled: more responses are coming.
    let busy = {
        let permits = Arc::clone(&permits);
        move || permits.available_permits() + 1 < MAX_IN_FLIGHT_PER_CONNECTION
    };
    let reader = async move {
        let mut frames = FramedRead::with_capacity(read, FrameCodec::new(max_frame), READ_BUFFER);
        loop {
            match frames.next().await {
                Some(Ok((id, request))) => {
                    let permit = match Arc::clone(&permits).try_acquire_owned() {
                        Ok(permit) => permit,
                        // Never closed, so this only waits.
                        Err(_) => match Arc::clone(&permits).acquire_owned().await {
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
                Some(Err(e)) => {
                    warn!(%from, error = %e, "closing connection: bad request frame");
                    return;
                }
                None => {
                    debug!(%from, "connection closed by client");
                    return;
                }
            }
        }
    };
    tokio::select! {
        () = reader => {}
        written = write_frames(write, &mut queue, busy) => {
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
