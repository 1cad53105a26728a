//! The calling side: a pool of multiplexed connections per peer.
//!
//! Hot path of a call, once a connection is up: a read lock on the peer map
//! and on the peer's slots to pick a connection round robin, an id from an
//! atomic counter, a oneshot registered in the connection's pending map (one
//! short mutex section), the frame queued to the connection's task, and a
//! wait on the oneshot bounded by the deadline. No task is spawned and the
//! frame is not copied until the writer batches it.
//!
//! Each connection runs one task that both writes the queued frames in
//! batches and reads responses, handing each to the oneshot its id names.
//! Connecting is the cold path: one dial at a time per peer, in its own task
//! so that callers giving up do not abandon it, with jittered exponential
//! backoff after failures.
//!
//! A connection with no call in flight for `pool_idle_timeout_ms` retires:
//! it closes itself, under the lock calls register with, so a call either
//! registers first (and the connection stays) or finds it retired before
//! sending anything and moves to another connection or a new one. Callers
//! never see an error for it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use dynamo_core::transport::TransportError;
use futures::future::{FutureExt, Shared};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::TcpConfig;
use crate::reader::{FrameReader, ReadError, Traffic};
use crate::tls::server_name;
use crate::watchdog::Timeouts;
use crate::wire::{write_frames, Outgoing, ERROR_FLAG};

/// What a call waits for.
type Reply = Result<Bytes, TransportError>;

/// Locks a std mutex; a panic elsewhere cannot leave these structures in a
/// state worse than the one it found, so poisoning is ignored.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Hashes the sequential u64 ids of one connection by one multiplication.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type PendingMap = HashMap<u64, oneshot::Sender<Reply>, BuildHasherDefault<IdHasher>>;

/// Why a connection closed.
#[derive(Debug, Clone)]
enum Closed {
    /// Idle, it closed itself with no call in flight: calls that find it so
    /// go to another connection.
    Retired,
    /// Broken or shut down: calls that find it so fail with this.
    Failed(TransportError),
}

/// Calls waiting on one connection, or why it closed.
struct Pending {
    waiting: PendingMap,
    /// Set once when the connection closes; later registrations see it.
    closed: Option<Closed>,
}

/// A call found its connection retired before sending anything; it hands
/// its frame back to be sent on another.
pub(crate) struct Retired(Bytes);

/// One persistent connection to a peer.
pub(crate) struct Conn {
    peer: Arc<str>,
    open: AtomicBool,
    next_id: AtomicU64,
    queue: mpsc::UnboundedSender<Outgoing>,
    pending: Mutex<Pending>,
    /// `pending.waiting.len()`, readable without the lock (by the writer).
    waiting: AtomicUsize,
    /// Response frames read so far.
    received: AtomicU64,
    /// Write batches so far (the idle timer's view of outgoing traffic).
    written: AtomicU64,
    /// A call at least this long that saw no response frame at all on its
    /// connection while it waited closes the connection as dead.
    silence_limit: Duration,
    cancel: CancellationToken,
}

impl Conn {
    /// Starts the connection's task on a connected stream's two halves.
    fn start(
        read: impl AsyncRead + Unpin + Send + 'static,
        write: impl AsyncWrite + Unpin + Send + 'static,
        peer: Arc<str>,
        config: &TcpConfig,
        parent: &CancellationToken,
    ) -> Arc<Conn> {
        let max_frame = config.max_frame_bytes;
        let timeouts = Timeouts { read: config.read_timeout(), idle: config.pool_idle_timeout() };
        let (queue, mut rx) = mpsc::unbounded_channel();
        let conn = Arc::new(Conn {
            peer,
            open: AtomicBool::new(true),
            next_id: AtomicU64::new(0),
            queue,
            pending: Mutex::new(Pending { waiting: PendingMap::default(), closed: None }),
            waiting: AtomicUsize::new(0),
            received: AtomicU64::new(0),
            written: AtomicU64::new(0),
            silence_limit: config.connect_timeout(),
            cancel: parent.child_token(),
        });
        let task_conn = Arc::clone(&conn);
        tokio::spawn(async move {
            let conn = task_conn;
            let mut frames = FrameReader::new(read, max_frame, timeouts);
            // Why the connection closed; `None` when it retired.
            let reader = async {
                loop {
                    match frames.next(&*conn).await {
                        Ok(Some((id, body))) => {
                            conn.received.fetch_add(1, Ordering::Relaxed);
                            conn.complete(id, body);
                        }
                        Ok(None) => break Some("connection lost: closed by peer".to_owned()),
                        Err(ReadError::Idle(_)) => {
                            if conn.retire() {
                                break None;
                            }
                            // A call registered meanwhile: keep serving it.
                        }
                        Err(e @ ReadError::Frame(_)) => {
                            warn!(peer = %conn.peer, error = %e, "closing connection: bad response frame");
                            break Some(format!("connection lost: bad response frame: {e}"));
                        }
                        Err(e @ ReadError::Stalled(_)) => {
                            warn!(peer = %conn.peer, error = %e, "closing connection: response frame stalled");
                            break Some(format!("connection lost: {e}"));
                        }
                        Err(e) => break Some(format!("connection lost: {e}")),
                    }
                }
            };
            let reason = tokio::select! {
                reason = reader => match reason {
                    Some(reason) => reason,
                    None => {
                        debug!(peer = %conn.peer, "idle connection closed");
                        return;
                    }
                },
                // Other calls waiting: their callers will soon call again.
                written = write_frames(write, &mut rx, || conn.waiting.load(Ordering::Relaxed) > 1, &conn.written) => match written {
                    Err(e) => format!("connection lost: write failed: {e}"),
                    Ok(()) => "connection lost: queue closed".to_owned(),
                },
                // Closed by `fail` (a no-op then) or by the transport's shutdown.
                () = conn.cancel.cancelled() => {
                    conn.fail(TransportError::Closed);
                    return;
                }
            };
            debug!(peer = %conn.peer, %reason, "connection closed");
            let peer = conn.peer.to_string();
            conn.fail(TransportError::Unreachable { peer, reason });
        });
        conn
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Closes the connection and fails every call waiting on it with `error`
    /// (the first close wins; later ones do nothing).
    pub(crate) fn fail(&self, error: TransportError) {
        self.open.store(false, Ordering::Release);
        let waiting = {
            let mut pending = lock(&self.pending);
            if pending.closed.is_some() {
                return;
            }
            pending.closed = Some(Closed::Failed(error.clone()));
            self.waiting.store(0, Ordering::Relaxed);
            std::mem::take(&mut pending.waiting)
        };
        self.cancel.cancel();
        for (_, tx) in waiting {
            let _ = tx.send(Err(error.clone()));
        }
    }

    /// Closes the connection for idleness unless a call is in flight on it;
    /// whether it did. Calls registering later find it retired.
    fn retire(&self) -> bool {
        let mut pending = lock(&self.pending);
        if pending.closed.is_some() || !pending.waiting.is_empty() {
            return false;
        }
        pending.closed = Some(Closed::Retired);
        self.open.store(false, Ordering::Release);
        true
    }

    /// Hands a response to the call that waits for it, if it still does.
    fn complete(&self, id: u64, body: Bytes) {
        let tx = {
            let mut pending = lock(&self.pending);
            let tx = pending.waiting.remove(&(id & !ERROR_FLAG));
            self.waiting.store(pending.waiting.len(), Ordering::Relaxed);
            tx
        };
        let Some(tx) = tx else {
            return; // the caller gave up
        };
        let reply = if id & ERROR_FLAG == 0 {
            Ok(body)
        } else {
            let reason = format!("peer could not answer: {}", String::from_utf8_lossy(&body));
            Err(TransportError::Unreachable { peer: self.peer.to_string(), reason })
        };
        let _ = tx.send(reply);
    }

    /// Sends `frame` and waits for its response until `deadline`; hands the
    /// frame back unsent if the connection has retired.
    pub(crate) async fn request(
        &self,
        frame: Bytes,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Reply, Retired> {
        // Ids stay below the error flag; 2^63 calls do not happen.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) & !ERROR_FLAG;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            match &pending.closed {
                None => {}
                Some(Closed::Retired) => return Err(Retired(frame)),
                Some(Closed::Failed(e)) => return Ok(Err(e.clone())),
            }
            pending.waiting.insert(id, tx);
            self.waiting.store(pending.waiting.len(), Ordering::Relaxed);
        }
        let mut guard = Registered { conn: self, id, armed: true };
        let received = self.received.load(Ordering::Relaxed);
        if self.queue.send(Outgoing { id, body: frame }).is_err() {
            // The task ended, and closed the connection as it did.
            return Ok(self.closed_reason());
        }
        Ok(match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(reply)) => {
                guard.disarm();
                reply
            }
            Ok(Err(_)) => {
                guard.disarm();
                self.closed_reason()
            }
            Err(_) => {
                // Not a single response on this connection for as long as a
                // connect may take: a half-open connection to a vanished
                // host looks like this. Close it so the next call dials.
                if timeout >= self.silence_limit && self.received.load(Ordering::Relaxed) == received {
                    let reason = format!("connection lost: no response for {timeout:?}");
                    warn!(peer = %self.peer, "{reason}");
                    self.fail(TransportError::Unreachable { peer: self.peer.to_string(), reason });
                }
                Err(TransportError::Timeout { peer: self.peer.to_string(), timeout })
            }
        })
    }

    fn closed_reason(&self) -> Reply {
        let pending = lock(&self.pending);
        Err(match &pending.closed {
            Some(Closed::Failed(e)) => e.clone(),
            // A call registered before a retirement keeps it from happening.
            Some(Closed::Retired) | None => {
                TransportError::Unreachable { peer: self.peer.to_string(), reason: "connection lost".into() }
            }
        })
    }
}

impl Traffic for Conn {
    fn busy(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }
    fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

/// Removes a call's pending entry unless its response was taken: on timeout
/// and when the caller drops the call, so nothing leaks.
struct Registered<'a> {
    conn: &'a Conn,
    id: u64,
    armed: bool,
}

impl Registered<'_> {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut pending = lock(&self.conn.pending);
            pending.waiting.remove(&self.id);
            self.conn.waiting.store(pending.waiting.len(), Ordering::Relaxed);
        }
    }
}

/// A dial in progress, shared by every call waiting for it.
type Dial = Shared<oneshot::Receiver<Result<Arc<Conn>, TransportError>>>;

/// Connect state of a peer, touched only on the cold path.
#[derive(Default)]
struct DialState {
    in_progress: Option<Dial>,
    /// Consecutive failed dials.
    failures: u32,
    /// No dial before this instant.
    retry_at: Option<Instant>,
    last_error: String,
}

/// Everything the client side knows about one peer address.
pub(crate) struct Peer {
    addr: Arc<str>,
    slots: RwLock<Box<[Option<Arc<Conn>>]>>,
    next: AtomicUsize,
    dial: Mutex<DialState>,
}

/// What the pool shares with every peer.
pub(crate) struct PoolShared {
    pub(crate) closed: AtomicBool,
    pub(crate) cancel: CancellationToken,
    pub(crate) config: TcpConfig,
    /// The TLS client side, when connections must be mutual TLS.
    pub(crate) tls: Option<TlsConnector>,
}

/// The client side of a transport: its peers by address.
pub(crate) struct Pool {
    shared: Arc<PoolShared>,
    peers: RwLock<HashMap<String, Arc<Peer>>>,
}

impl Pool {
    pub(crate) fn new(shared: Arc<PoolShared>) -> Self {
        Pool { shared, peers: RwLock::new(HashMap::new()) }
    }

    /// A call's whole journey: a connection, then request and response, all
    /// before `timeout`.
    pub(crate) async fn call(&self, to: &str, frame: Bytes, timeout: Duration) -> Reply {
        let deadline = deadline_after(timeout);
        let mut frame = frame;
        loop {
            let found = {
                let peers = self.peers.read().unwrap_or_else(PoisonError::into_inner);
                match peers.get(to) {
                    Some(peer) => peer.pick(&self.shared).ok_or_else(|| Some(Arc::clone(peer))),
                    None => Err(None),
                }
            };
            let conn = match found {
                Ok(conn) => conn,
                Err(peer) => {
                    let peer = peer.unwrap_or_else(|| self.peer(to));
                    peer.connect(&self.shared, deadline, timeout).await?
                }
            };
            match conn.request(frame, deadline, timeout).await {
                Ok(reply) => return reply,
                // Retired since it was picked; it will not be picked again.
                Err(Retired(unsent)) => frame = unsent,
            }
        }
    }

    fn peer(&self, addr: &str) -> Arc<Peer> {
        let mut peers = self.peers.write().unwrap_or_else(PoisonError::into_inner);
        let n = self.shared.config.connections_per_peer;
        let peer = peers.entry(addr.to_owned()).or_insert_with(|| {
            Arc::new(Peer {
                addr: addr.into(),
                slots: RwLock::new(vec![None; n].into_boxed_slice()),
                next: AtomicUsize::new(0),
                dial: Mutex::new(DialState::default()),
            })
        });
        Arc::clone(peer)
    }

    /// Calls registered and not yet answered, over every connection.
    #[cfg(test)]
    pub(crate) fn pending_calls(&self) -> usize {
        let peers = self.peers.read().unwrap_or_else(PoisonError::into_inner);
        peers
            .values()
            .flat_map(|p| p.slots.read().unwrap_or_else(PoisonError::into_inner).to_vec())
            .flatten()
            .map(|c| lock(&c.pending).waiting.len())
            .sum()
    }

    /// Fails every call in flight with `error` and forgets every peer.
    pub(crate) fn close_all(&self, error: &TransportError) {
        let peers = std::mem::take(&mut *self.peers.write().unwrap_or_else(PoisonError::into_inner));
        for peer in peers.values() {
            let slots = peer.slots.write().unwrap_or_else(PoisonError::into_inner);
            for conn in slots.iter().flatten() {
                conn.fail(error.clone());
            }
        }
    }
}

/// `now + timeout`, saturating far in the future.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
}

impl Peer {
    /// The next open connection round robin. When the slot in turn is empty
    /// or dead, another open one is used and a dial starts in the background
    /// to refill the pool. `None` when no connection is open.
    fn pick(self: &Arc<Self>, shared: &Arc<PoolShared>) -> Option<Arc<Conn>> {
        let (conn, refill) = self.pick_open()?;
        if refill {
            self.start_dial_if_due(&mut lock(&self.dial), shared);
        }
        Some(conn)
    }

    /// The next open connection round robin, and whether the slot in turn
    /// had to be skipped because it holds none.
    fn pick_open(&self) -> Option<(Arc<Conn>, bool)> {
        let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
        let n = slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).find_map(|k| match &slots[(start + k) % n] {
            Some(conn) if conn.is_open() => Some((Arc::clone(conn), k > 0)),
            _ => None,
        })
    }

    /// Starts a background dial unless one runs or the peer is in backoff.
    fn start_dial_if_due(self: &Arc<Self>, state: &mut DialState, shared: &Arc<PoolShared>) {
        if state.in_progress.is_none() && state.retry_at.is_none_or(|t| Instant::now() >= t) {
            state.in_progress = Some(self.start_dial(shared));
        }
    }

    /// Waits for a connection when none is open: joins the dial in progress
    /// or starts one, unless the peer is in backoff, which fails at once.
    async fn connect(
        self: &Arc<Self>,
        shared: &Arc<PoolShared>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Arc<Conn>, TransportError> {
        let dial = {
            let mut state = lock(&self.dial);
            // A dial may have finished since the caller looked.
            if let Some((conn, refill)) = self.pick_open() {
                if refill {
                    self.start_dial_if_due(&mut state, shared);
                }
                return Ok(conn);
            }
            match &state.in_progress {
                Some(dial) => dial.clone(),
                None => {
                    if let Some(retry_at) = state.retry_at {
                        let now = Instant::now();
                        if now < retry_at {
                            return Err(TransportError::Refused {
                                peer: self.addr.to_string(),
                                reason: format!(
                                    "{}; next attempt in {} ms",
                                    state.last_error,
                                    (retry_at - now).as_millis()
                                ),
                            });
                        }
                    }
                    let dial = self.start_dial(shared);
                    state.in_progress = Some(dial.clone());
                    dial
                }
            }
        };
        tokio::select! {
            outcome = tokio::time::timeout_at(deadline, dial) => match outcome {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(TransportError::Closed), // the runtime dropped the dial
                // Still connecting: the frame was never sent.
                Err(_) => Err(TransportError::Refused {
                    peer: self.addr.to_string(),
                    reason: format!("not connected within the call's deadline of {} ms", timeout.as_millis()),
                }),
            },
            () = shared.cancel.cancelled() => Err(TransportError::Closed),
        }
    }

    /// Spawns a dial; call with the dial state locked.
    fn start_dial(self: &Arc<Self>, shared: &Arc<PoolShared>) -> Dial {
        let (tx, rx) = oneshot::channel();
        let peer = Arc::clone(self);
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            let result = tokio::select! {
                r = peer.dial_once(&shared) => r,
                () = shared.cancel.cancelled() => Err(TransportError::Closed),
            };
            let mut state = lock(&peer.dial);
            state.in_progress = None;
            match &result {
                Ok(_) => {
                    state.failures = 0;
                    state.retry_at = None;
                }
                Err(TransportError::Refused { reason, .. }) => {
                    state.failures = state.failures.saturating_add(1);
                    let pause = backoff(&shared.config, state.failures);
                    debug!(peer = %peer.addr, %reason, ?pause, "connect failed");
                    state.retry_at = Some(Instant::now() + pause);
                    state.last_error.clone_from(reason);
                }
                Err(_) => {}
            }
            drop(state);
            let _ = tx.send(result);
        });
        rx.shared()
    }

    /// One connect attempt; on success the connection takes a free slot.
    async fn dial_once(&self, shared: &PoolShared) -> Result<Arc<Conn>, TransportError> {
        let config = &shared.config;
        // Nothing is sent before the connection is up: every failure here is a refusal.
        let unreachable = |reason: String| TransportError::Refused { peer: self.addr.to_string(), reason };
        let stream = match tokio::time::timeout(config.connect_timeout(), TcpStream::connect(&*self.addr))
            .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(unreachable(format!("connect failed: {e}"))),
            Err(_) => {
                return Err(unreachable(format!("connect timed out after {} ms", config.connect_timeout_ms)))
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            return Err(unreachable(format!("cannot set TCP_NODELAY: {e}")));
        }
        let peer = Arc::clone(&self.addr);
        let conn = match &shared.tls {
            None => {
                let (read, write) = stream.into_split();
                Conn::start(read, write, peer, config, &shared.cancel)
            }
            Some(connector) => {
                let name = server_name(&self.addr).map_err(&unreachable)?;
                let handshake =
                    tokio::time::timeout(config.connect_timeout(), connector.connect(name, stream));
                let reason = match handshake.await {
                    Ok(Ok(tls)) => {
                        let (read, write) = tokio::io::split(tls);
                        return self.keep(Conn::start(read, write, peer, config, &shared.cancel), shared);
                    }
                    Ok(Err(e)) => format!("TLS handshake failed: {e}"),
                    Err(_) => format!("TLS handshake not complete within {} ms", config.connect_timeout_ms),
                };
                // A security event, not a routine connect failure: warn (the
                // dial backoff bounds how often).
                warn!(peer = %self.addr, %reason, "peer not connected");
                return Err(unreachable(reason));
            }
        };
        self.keep(conn, shared)
    }

    /// Puts a new connection in a free slot (unless the transport shut
    /// down meanwhile, which closes it) and hands it back.
    fn keep(&self, conn: Arc<Conn>, shared: &PoolShared) -> Result<Arc<Conn>, TransportError> {
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        // Checked under the slots lock, which shutdown also takes to close
        // the connections: either it sees this one or this sees it closed.
        if shared.closed.load(Ordering::Acquire) {
            conn.fail(TransportError::Closed);
            return Err(TransportError::Closed);
        }
        match slots.iter_mut().find(|s| s.as_ref().is_none_or(|c| !c.is_open())) {
            Some(slot) => *slot = Some(Arc::clone(&conn)),
            // Every slot is busy (cannot happen with one dial at a time);
            // the caller still gets this connection, which serves its calls.
            None => debug!(peer = %self.addr, "pool full; extra connection is not kept"),
        }
        Ok(conn)
    }
}

/// The pause after `failures` consecutive failed dials: `min * 2^(failures-1)`
/// capped at `max`, then a random point in its upper half, never below `min`.
fn backoff(config: &TcpConfig, failures: u32) -> Duration {
    let (min, max) = (config.backoff_min_ms, config.backoff_max_ms);
    let base = min.saturating_mul(1u64 << failures.saturating_sub(1).min(32)).min(max);
    let low = (base / 2).max(min).min(base);
    Duration::from_millis(rand::rng().random_range(low..=base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_within_bounds() {
        let config = TcpConfig { backoff_min_ms: 50, backoff_max_ms: 2000, ..TcpConfig::default() };
        for _ in 0..100 {
            assert_eq!(backoff(&config, 1), Duration::from_millis(50));
            let second = backoff(&config, 2).as_millis();
            assert!((50..=100).contains(&second), "{second}");
            let fifth = backoff(&config, 5).as_millis();
            assert!((400..=800).contains(&fifth), "{fifth}");
            let late = backoff(&config, 60).as_millis();
            assert!((1000..=2000).contains(&late), "{late}");
        }
    }

    #[test]
    fn id_hasher_spreads_sequential_ids() {
        let mut seen = std::collections::HashSet::new();
        for id in 0..1000u64 {
            let mut h = IdHasher::default();
            h.write_u64(id);
            seen.insert(h.finish() >> 57);
        }
        assert!(seen.len() > 100);
    }
}
