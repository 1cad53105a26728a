//! Behaviour beyond the shared suite: hostile bytes on the wire, ordering,
//! failure detection, backoff, shutdown, the pool's connection count, and
//! the limits on inbound connections (read and idle timeouts, connection
//! limit) with the pool's own idle timeout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use dynamo_core::transport::{FrameHandler, Transport, TransportError};
use dynamo_transport_tcp::{TcpConfig, TcpTransport};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;

const T: Duration = Duration::from_secs(5);
const MAX: usize = 64 * 1024;

fn config() -> TcpConfig {
    TcpConfig { max_frame_bytes: MAX, ..TcpConfig::new("127.0.0.1:0") }
}

/// How long a `slow` request takes: several times the idle timeouts below.
const SLOW: Duration = Duration::from_millis(1200);

/// Echoes, except: `h…` never answers, `big` answers one byte over [`MAX`],
/// `panic` panics, `slow` answers after [`SLOW`]. Counts what it received.
#[derive(Default)]
struct Handler {
    received: AtomicUsize,
    arrived: Notify,
}

#[async_trait]
impl FrameHandler for Handler {
    async fn handle(&self, frame: Bytes) -> Bytes {
        self.received.fetch_add(1, Ordering::SeqCst);
        self.arrived.notify_waiters();
        if frame.starts_with(b"h") {
            std::future::pending::<()>().await;
        }
        if frame == "big" {
            return Bytes::from(vec![0; MAX + 1]);
        }
        if frame == "panic" {
            panic!("handler bug");
        }
        if frame == "slow" {
            tokio::time::sleep(SLOW).await;
        }
        frame
    }
}

async fn server() -> (Arc<TcpTransport>, Arc<Handler>) {
    server_with(config()).await
}

async fn server_with(config: TcpConfig) -> (Arc<TcpTransport>, Arc<Handler>) {
    let t = Arc::new(TcpTransport::bind(config).await.unwrap());
    let h = Arc::new(Handler::default());
    t.serve(h.clone()).await.unwrap();
    (t, h)
}

async fn client(config: TcpConfig) -> Arc<TcpTransport> {
    Arc::new(TcpTransport::bind(config).await.unwrap())
}

/// Polls `cond` until it holds; panics after `T`.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Reads until the server closes `stream`; panics if it stays open for `T`.
async fn assert_closed_by_server(stream: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    let closed = tokio::time::timeout(T, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept the connection open");
}

/// A live call over an existing pooled connection, and a fresh one.
async fn assert_still_serving(server: &TcpTransport, existing: &TcpTransport) {
    let addr = server.local_addr();
    assert_eq!(existing.call(addr, Bytes::from_static(b"e-old"), T).await.unwrap(), "e-old");
    let fresh = client(config()).await;
    assert_eq!(fresh.call(addr, Bytes::from_static(b"e-new"), T).await.unwrap(), "e-new");
    fresh.shutdown().await;
}

/// Sends one request on a raw connection and reads its response.
async fn raw_call(stream: &mut TcpStream, id: u64, body: &[u8]) -> std::io::Result<Bytes> {
    stream.write_all(&raw_frame(id, body)).await?;
    let mut header = [0u8; 12];
    stream.read_exact(&mut header).await?;
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize - 8;
    assert_eq!(u64::from_be_bytes(header[4..].try_into().unwrap()), id, "the response echoes the id");
    let mut response = vec![0u8; len];
    stream.read_exact(&mut response).await?;
    Ok(Bytes::from(response))
}

fn raw_frame(id: u64, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u32((body.len() + 8) as u32);
    b.put_u64(id);
    b.put_slice(body);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_length_prefix_closes_only_that_connection() {
    let (server, handler) = server().await;
    let existing = client(config()).await;
    assert_eq!(existing.call(server.local_addr(), Bytes::from_static(b"e"), T).await.unwrap(), "e");

    let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
    // Claims 4 GiB; the server must refuse it from the prefix alone.
    raw.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await.unwrap();
    assert_closed_by_server(&mut raw).await;
    // One over the limit (counting the id) is refused too.
    let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
    raw.write_all(&((MAX + 9) as u32).to_be_bytes()).await.unwrap();
    assert_closed_by_server(&mut raw).await;

    assert_still_serving(&server, &existing).await;
    assert_eq!(handler.received.load(Ordering::SeqCst), 3, "only the real calls reached the handler");
    existing.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_idless_frames_close_only_that_connection() {
    let (server, handler) = server().await;
    let existing = client(config()).await;
    assert_eq!(existing.call(server.local_addr(), Bytes::from_static(b"e"), T).await.unwrap(), "e");

    // A frame cut short by the end of the stream.
    let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
    let whole = raw_frame(1, b"e-truncated");
    raw.write_all(&whole[..whole.len() - 3]).await.unwrap();
    raw.shutdown().await.unwrap();
    assert_closed_by_server(&mut raw).await;

    // A body too short to hold the request id.
    let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
    raw.write_all(&[0, 0, 0, 3, b'a', b'b', b'c']).await.unwrap();
    assert_closed_by_server(&mut raw).await;

    // A header cut inside the length prefix.
    let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
    raw.write_all(&[0, 0]).await.unwrap();
    raw.shutdown().await.unwrap();
    assert_closed_by_server(&mut raw).await;

    assert_still_serving(&server, &existing).await;
    assert_eq!(handler.received.load(Ordering::SeqCst), 3, "no broken frame reached the handler");
    existing.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_garbage_never_takes_the_server_down() {
    let (server, _) = server().await;
    let existing = client(config()).await;
    assert_eq!(existing.call(server.local_addr(), Bytes::from_static(b"e"), T).await.unwrap(), "e");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    for round in 0..50 {
        let len = rng.random_range(1..2048);
        let mut garbage = vec![0u8; len];
        rng.fill(&mut garbage[..]);
        // Every other round, a plausible small length so the body reaches the decoder.
        if round % 2 == 1 && len >= 4 {
            garbage[..4].copy_from_slice(&(rng.random_range(0..len as u32)).to_be_bytes());
        }
        let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
        // The server may close mid-write; that is its right.
        let _ = raw.write_all(&garbage).await;
        let _ = raw.shutdown().await;
        assert_closed_by_server(&mut raw).await;
    }
    assert_still_serving(&server, &existing).await;
    existing.shutdown().await;
    server.shutdown().await;
}

/// Answers request `i` only once the caller has received the response to
/// request `i + 1`: the last request sent is answered first, and every
/// request is in flight on the connection until the one after it returns.
struct Reversing {
    gates: Arc<Vec<Notify>>,
}

#[async_trait]
impl FrameHandler for Reversing {
    async fn handle(&self, frame: Bytes) -> Bytes {
        let i = usize::from(frame[0]);
        if let Some(gate) = self.gates.get(i) {
            gate.notified().await;
        }
        frame
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_responses_are_matched_by_id() {
    const N: usize = 8;
    // gates[i] opens when response i + 1 has reached its caller.
    let gates: Arc<Vec<Notify>> = Arc::new((0..N - 1).map(|_| Notify::new()).collect());
    let server = TcpTransport::bind(config()).await.unwrap();
    server.serve(Arc::new(Reversing { gates: gates.clone() })).await.unwrap();
    // One connection, so every request and response shares it.
    let caller = client(TcpConfig { connections_per_peer: 1, ..config() }).await;
    let addr = server.local_addr().to_owned();
    let order = Arc::new(Mutex::new(Vec::new()));
    let calls: Vec<_> = (0..N as u8)
        .map(|i| {
            let (caller, addr, order, gates) = (caller.clone(), addr.clone(), order.clone(), gates.clone());
            tokio::spawn(async move {
                let frame = Bytes::from(vec![i, b'-', i]);
                let got = caller.call(&addr, frame.clone(), T).await.unwrap();
                assert_eq!(got, frame, "call {i} got another call's response");
                order.lock().unwrap().push(i);
                if let Some(previous) = usize::from(i).checked_sub(1) {
                    gates[previous].notify_one();
                }
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(order, (0..N as u8).rev().collect::<Vec<_>>(), "answered last-first");
    caller.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_peer_fails_calls_in_flight_promptly() {
    let (server, handler) = server().await;
    let caller = client(config()).await;
    let addr = server.local_addr().to_owned();
    // Open both pooled connections, then park a call on each.
    for _ in 0..4 {
        caller.call(&addr, Bytes::from_static(b"e"), T).await.unwrap();
    }
    let before = handler.received.load(Ordering::SeqCst);
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let (caller, addr) = (caller.clone(), addr.clone());
            tokio::spawn(async move {
                caller.call(&addr, Bytes::from_static(b"h"), Duration::from_secs(30)).await
            })
        })
        .collect();
    wait_until("the requests arrive", || handler.received.load(Ordering::SeqCst) == before + 4).await;
    let start = Instant::now();
    server.shutdown().await;
    for call in calls {
        match call.await.unwrap() {
            Err(TransportError::Unreachable { peer, reason }) => {
                assert_eq!(peer, addr);
                assert!(reason.contains("connection lost"), "{reason}");
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }
    assert!(start.elapsed() < Duration::from_secs(2), "failed after {:?}", start.elapsed());
    caller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_fails_fast_then_the_first_call_after_it_retries() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap().to_string();
    drop(probe);
    let backoff = Duration::from_millis(1500);
    let caller = client(TcpConfig { backoff_min_ms: 1500, backoff_max_ms: 3000, ..config() }).await;

    // The first failure pauses exactly backoff_min: from some instant in
    // [called_at, failed_at] on.
    let called_at = Instant::now();
    let err = caller.call(&addr, Bytes::from_static(b"e"), T).await.unwrap_err();
    let failed_at = Instant::now();
    assert!(matches!(&err, TransportError::Refused { reason, .. } if reason.contains("connect")), "{err:?}");

    // The peer comes up, but the caller is in backoff: calls fail at once
    // instead of dialing or waiting for their deadline.
    let peer = TcpTransport::bind(TcpConfig::new(addr.as_str())).await.unwrap();
    peer.serve(Arc::new(Handler::default())).await.unwrap();
    let start = Instant::now();
    let during = caller.call(&addr, Bytes::from_static(b"e"), T).await;
    if start < called_at + backoff {
        // Made within the backoff (the usual case; a heavily loaded machine
        // may take longer to get here): refused at once, without dialing.
        let err = during.unwrap_err();
        assert!(start.elapsed() < Duration::from_millis(500), "took {:?}", start.elapsed());
        assert!(
            matches!(&err, TransportError::Refused { reason, .. } if reason.contains("next attempt")),
            "{err:?}"
        );
    }

    // Once the backoff has passed, the next call dials and succeeds.
    tokio::time::sleep_until(failed_at + backoff).await;
    assert_eq!(caller.call(&addr, Bytes::from_static(b"e-back"), T).await.unwrap(), "e-back");
    caller.shutdown().await;
    peer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fails_calls_in_flight_and_later_with_closed() {
    let (a, ha) = server().await;
    let (b, hb) = server().await;
    let caller = client(config()).await;
    let calls: Vec<_> = [a.local_addr(), b.local_addr()]
        .into_iter()
        .cycle()
        .take(10)
        .map(|addr| {
            let (caller, addr) = (caller.clone(), addr.to_owned());
            tokio::spawn(async move {
                caller.call(&addr, Bytes::from_static(b"h"), Duration::from_secs(30)).await
            })
        })
        .collect();
    wait_until("the requests arrive", || {
        ha.received.load(Ordering::SeqCst) + hb.received.load(Ordering::SeqCst) == 10
    })
    .await;
    let start = Instant::now();
    caller.shutdown().await;
    for call in calls {
        assert_eq!(call.await.unwrap(), Err(TransportError::Closed));
    }
    assert!(start.elapsed() < Duration::from_secs(2), "failed after {:?}", start.elapsed());
    assert_eq!(caller.call(a.local_addr(), Bytes::from_static(b"e"), T).await, Err(TransportError::Closed));
    assert!(matches!(caller.serve(Arc::new(Handler::default())).await, Err(TransportError::Listen { .. })));
    caller.shutdown().await; // idempotent
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswerable_requests_fail_promptly_and_keep_the_connection() {
    let (server, _) = server().await;
    let caller = client(TcpConfig { connections_per_peer: 1, ..config() }).await;
    let addr = server.local_addr();
    assert_eq!(caller.call(addr, Bytes::from_static(b"e"), T).await.unwrap(), "e");
    let start = Instant::now();
    match caller.call(addr, Bytes::from_static(b"big"), Duration::from_secs(30)).await {
        Err(TransportError::Unreachable { reason, .. }) => assert!(reason.contains("exceeds"), "{reason}"),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(2), "failed after {:?}", start.elapsed());
    assert_eq!(caller.call(addr, Bytes::from_static(b"e-again"), T).await.unwrap(), "e-again");
    // A panicking handler is reported the same way, and promptly.
    match caller.call(addr, Bytes::from_static(b"panic"), Duration::from_secs(30)).await {
        Err(TransportError::Unreachable { reason, .. }) => assert!(reason.contains("panicked"), "{reason}"),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert_eq!(caller.call(addr, Bytes::from_static(b"e-still"), T).await.unwrap(), "e-still");
    let too_big = Bytes::from(vec![0; MAX + 1]);
    assert_eq!(
        caller.call(addr, too_big, T).await,
        Err(TransportError::FrameTooLarge { size: MAX + 1, max: MAX })
    );
    caller.shutdown().await;
    server.shutdown().await;
}

/// A server written against the wire format alone: counts connections and
/// echoes each request's id and body, proving the framing and that the pool
/// keeps `connections_per_peer` connections, not one per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_keeps_persistent_connections_and_speaks_the_documented_format() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let server = tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                loop {
                    while buf.len() >= 4 {
                        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                        if buf.len() < 4 + len {
                            break;
                        }
                        buf.advance(4);
                        let mut frame = buf.split_to(len);
                        let id = frame.get_u64();
                        stream.write_all(&raw_frame(id, &frame)).await.unwrap();
                    }
                    if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
            });
        }
    });
    let caller = client(config()).await;
    let calls: Vec<_> = (0..200u32)
        .map(|i| {
            let (caller, addr) = (caller.clone(), addr.clone());
            tokio::spawn(async move {
                let frame = Bytes::from(i.to_string());
                assert_eq!(caller.call(&addr, frame.clone(), T).await.unwrap(), frame);
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap();
    }
    for i in 0..50u32 {
        let frame = Bytes::from(i.to_string());
        assert_eq!(caller.call(&addr, frame.clone(), T).await.unwrap(), frame);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "connections_per_peer connections, kept");
    caller.shutdown().await;
    server.abort();
}

/// A listener that accepts, reads and never answers: a peer whose host
/// vanished behind a half-open connection, as far as the caller can tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_silent_for_a_long_call_is_replaced() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let server = tokio::spawn(async move {
        let mut open = Vec::new();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            open.push(stream);
        }
    });
    let caller = client(TcpConfig { connections_per_peer: 1, connect_timeout_ms: 200, ..config() }).await;
    let short = Duration::from_millis(100);
    for _ in 0..3 {
        let err = caller.call(&addr, Bytes::from_static(b"e"), short).await;
        assert_eq!(err, Err(TransportError::Timeout { peer: addr.clone(), timeout: short }));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "short timeouts keep the connection");
    let long = Duration::from_millis(250);
    let err = caller.call(&addr, Bytes::from_static(b"e"), long).await;
    assert_eq!(err, Err(TransportError::Timeout { peer: addr.clone(), timeout: long }));
    let _ = caller.call(&addr, Bytes::from_static(b"e"), short).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "the silent connection was replaced");
    caller.shutdown().await;
    server.abort();
}

/// Short limits for the tests of inbound connections.
const READ_TIMEOUT: Duration = Duration::from_millis(200);
const IDLE_TIMEOUT: Duration = Duration::from_millis(300);
const POOL_IDLE: Duration = Duration::from_millis(100);

fn short_timeouts() -> TcpConfig {
    TcpConfig {
        read_timeout_ms: READ_TIMEOUT.as_millis() as u64,
        idle_timeout_ms: IDLE_TIMEOUT.as_millis() as u64,
        pool_idle_timeout_ms: POOL_IDLE.as_millis() as u64,
        ..config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_stalled_midway_is_closed_after_the_read_timeout() {
    // The idle timeout stays long: only the read timeout can close these.
    let (server, handler) =
        server_with(TcpConfig { read_timeout_ms: READ_TIMEOUT.as_millis() as u64, ..config() }).await;
    let existing = client(config()).await;
    assert_eq!(existing.call(server.local_addr(), Bytes::from_static(b"e"), T).await.unwrap(), "e");

    let whole = raw_frame(1, &[7; 1000]);
    let announced_large = raw_frame(2, &[7; MAX]);
    for (what, sent) in [
        ("part of a length prefix", &whole[..2]),
        ("a header alone", &whole[..12]),
        ("a header and part of the body", &whole[..500]),
        ("a header announcing the largest frame", &announced_large[..20]),
    ] {
        let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
        let start = Instant::now();
        raw.write_all(sent).await.unwrap();
        assert_closed_by_server(&mut raw).await;
        assert!(start.elapsed() >= READ_TIMEOUT, "{what}: closed after {:?}", start.elapsed());
    }
    assert_still_serving(&server, &existing).await;
    assert_eq!(handler.received.load(Ordering::SeqCst), 3, "no stalled frame reached the handler");
    existing.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_but_not_those_with_a_slow_call() {
    let (server, _) = server_with(short_timeouts()).await;
    let addr = server.local_addr();

    // Connected, never a byte.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    assert_closed_by_server(&mut silent).await;
    assert!(start.elapsed() >= IDLE_TIMEOUT, "closed after {:?}", start.elapsed());

    // One call, then nothing: idle counts from the response.
    let mut used = TcpStream::connect(addr).await.unwrap();
    assert_eq!(raw_call(&mut used, 1, b"e").await.unwrap(), "e");
    let answered = Instant::now();
    assert_closed_by_server(&mut used).await;
    assert!(answered.elapsed() >= IDLE_TIMEOUT, "closed after {:?}", answered.elapsed());

    // A call whose handler takes four idle timeouts, with no other frame
    // meanwhile: in flight, so not idle.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    assert_eq!(raw_call(&mut slow, 2, b"slow").await.unwrap(), "slow");
    assert!(start.elapsed() >= SLOW);
    // The transport's own client (default pool timeout) sees the same.
    let caller = client(TcpConfig { connections_per_peer: 1, ..config() }).await;
    assert_eq!(caller.call(addr, Bytes::from_static(b"slow"), T).await.unwrap(), "slow");
    assert_eq!(caller.call(addr, Bytes::from_static(b"e-after"), T).await.unwrap(), "e-after");
    caller.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_while_the_others_work() {
    let (server, _) = server_with(TcpConfig { max_connections: 3, ..config() }).await;
    let addr = server.local_addr();
    let caller = client(TcpConfig { connections_per_peer: 1, ..config() }).await;
    assert_eq!(caller.call(addr, Bytes::from_static(b"e"), T).await.unwrap(), "e");
    // Two more: each answered, so each is accepted and counted.
    let mut first = TcpStream::connect(addr).await.unwrap();
    assert_eq!(raw_call(&mut first, 1, b"e1").await.unwrap(), "e1");
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert_eq!(raw_call(&mut second, 2, b"e2").await.unwrap(), "e2");

    // Over the limit: closed at once (the timeouts are the long defaults).
    for _ in 0..5 {
        let mut over = TcpStream::connect(addr).await.unwrap();
        let start = Instant::now();
        assert_closed_by_server(&mut over).await;
        assert!(start.elapsed() < Duration::from_secs(3), "closed after {:?}", start.elapsed());
    }

    // The others carry on.
    assert_eq!(caller.call(addr, Bytes::from_static(b"e-again"), T).await.unwrap(), "e-again");
    assert_eq!(raw_call(&mut first, 3, b"e3").await.unwrap(), "e3");
    assert_eq!(raw_call(&mut second, 4, b"e4").await.unwrap(), "e4");

    // One leaves; a newcomer gets its place.
    drop(first);
    let deadline = Instant::now() + T;
    loop {
        let mut newcomer = TcpStream::connect(addr).await.unwrap();
        if let Ok(answer) = raw_call(&mut newcomer, 5, b"e5").await {
            assert_eq!(answer, "e5");
            break;
        }
        assert!(Instant::now() < deadline, "no connection accepted after one closed");
    }
    caller.shutdown().await;
    server.shutdown().await;
}

/// A listener written against the wire format: echoes, and reports each
/// connection the client closes.
async fn recording_echo_server() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>, tokio::task::JoinHandle<()>)
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, c) = (accepted.clone(), closed.clone());
    let task = tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            a.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let mut header = [0u8; 12];
                while stream.read_exact(&mut header).await.is_ok() {
                    let len = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize - 8;
                    let mut body = vec![0u8; len];
                    stream.read_exact(&mut body).await.unwrap();
                    let id = u64::from_be_bytes(header[4..].try_into().unwrap());
                    stream.write_all(&raw_frame(id, &body)).await.unwrap();
                }
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, accepted, closed, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_close_themselves_after_the_pool_idle_timeout() {
    let (addr, accepted, closed, server) = recording_echo_server().await;
    let caller = client(TcpConfig { connections_per_peer: 1, ..short_timeouts() }).await;
    assert_eq!(caller.call(&addr, Bytes::from_static(b"e"), T).await.unwrap(), "e");
    let answered = Instant::now();
    wait_until("the caller closes its idle connection", || closed.load(Ordering::SeqCst) == 1).await;
    assert!(answered.elapsed() >= POOL_IDLE, "closed after {:?}", answered.elapsed());
    // The next call dials a new one, without an error.
    assert_eq!(caller.call(&addr, Bytes::from_static(b"e-new"), T).await.unwrap(), "e-new");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    caller.shutdown().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_survive_the_server_idle_timeout() {
    let (server, _) = server_with(short_timeouts()).await;
    let addr = server.local_addr();
    let caller = client(short_timeouts()).await;
    // Pauses around the server's idle timeout, when it would close a
    // connection the caller kept.
    for tenths in [5, 9, 10, 11, 12, 13, 15] {
        assert_eq!(caller.call(addr, Bytes::from_static(b"e"), T).await.unwrap(), "e");
        tokio::time::sleep(IDLE_TIMEOUT * tenths / 10).await;
        assert_eq!(caller.call(addr, Bytes::from_static(b"e-after"), T).await.unwrap(), "e-after");
    }
    caller.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_racing_a_retiring_connection_never_fail() {
    let (server, _) = server().await;
    let addr = server.local_addr().to_owned();
    // Connections retire after 4 ms of quiet; callers pause about that long.
    let caller = client(TcpConfig {
        connections_per_peer: 1,
        idle_timeout_ms: 8,
        pool_idle_timeout_ms: 4,
        ..config()
    })
    .await;
    let callers: Vec<_> = (0..2u64)
        .map(|seed| {
            let (caller, addr) = (caller.clone(), addr.clone());
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                for i in 0..100u32 {
                    let frame = Bytes::from(format!("e{seed}-{i}"));
                    assert_eq!(caller.call(&addr, frame.clone(), T).await.unwrap(), frame);
                    tokio::time::sleep(Duration::from_micros(rng.random_range(2000..8000))).await;
                }
            })
        })
        .collect();
    for call in callers {
        call.await.unwrap();
    }
    caller.shutdown().await;
    server.shutdown().await;
}
