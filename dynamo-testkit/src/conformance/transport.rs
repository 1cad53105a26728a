//! The [`Transport`] conformance suite.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dynamo_core::transport::{FrameHandler, Transport, TransportError};
use tokio::time::Instant;

/// Makes the transports the suite runs against.
#[async_trait]
pub trait TransportFixture: Send + Sync {
    /// A transport at a fresh address, not serving yet.
    async fn bind(&self) -> Arc<dyn Transport>;
    /// A transport at `addr`, whose previous transport was shut down: a
    /// restarted peer.
    async fn bind_at(&self, addr: &str) -> Arc<dyn Transport>;
    /// An address where nothing listens.
    fn unused_addr(&self) -> String;
    /// The frame size limit the fixture's transports enforce.
    fn max_frame(&self) -> usize;
}

/// Answers by the frame's first byte: `e` echo, `h` never answer,
/// `b` answer with a frame one byte over `max`.
struct TestHandler {
    max: usize,
    received: AtomicUsize,
}

#[async_trait]
impl FrameHandler for TestHandler {
    async fn handle(&self, frame: Bytes) -> Bytes {
        self.received.fetch_add(1, Ordering::SeqCst);
        match frame.first() {
            Some(b'h') => std::future::pending().await,
            Some(b'b') => Bytes::from(vec![b'x'; self.max + 1]),
            _ => frame,
        }
    }
}

async fn serving<F: TransportFixture>(fixture: &F) -> (Arc<dyn Transport>, Arc<TestHandler>) {
    let t = fixture.bind().await;
    let h = Arc::new(TestHandler { max: fixture.max_frame(), received: AtomicUsize::new(0) });
    t.serve(h.clone()).await.expect("serve");
    (t, h)
}

const DEADLINE: Duration = Duration::from_secs(5);
/// How late an error may come after its deadline.
const SLACK: Duration = Duration::from_secs(1);

/// Runs every transport case against the fixture's transports.
///
/// Needs a tokio runtime with the time and I/O drivers; runs on real time.
///
/// # Panics
/// On the first failing case.
pub async fn transport_suite<F: TransportFixture>(fixture: F) {
    round_trip(&fixture).await;
    many_concurrent_requests_on_one_peer(&fixture).await;
    frames_over_the_limit_are_refused(&fixture).await;
    dead_peer_fails_within_the_deadline(&fixture).await;
    silent_peer_times_out_at_the_deadline(&fixture).await;
    client_recovers_after_the_peer_restarts(&fixture).await;
    shutdown_fails_calls_in_flight(&fixture).await;
}

async fn round_trip<F: TransportFixture>(fixture: &F) {
    let (server, _) = serving(fixture).await;
    let client = fixture.bind().await;
    let frame = Bytes::from_static(b"e-hello");
    let got = client.call(server.local_addr(), frame.clone(), DEADLINE).await.expect("round trip");
    assert_eq!(got, frame, "round_trip: the response is the echoed frame");
    let big = Bytes::from(vec![b'e'; fixture.max_frame()]);
    let got =
        client.call(server.local_addr(), big.clone(), DEADLINE * 4).await.expect("a frame at the limit");
    assert_eq!(got.len(), big.len(), "round_trip: a frame of exactly the limit is carried");
    let err = server.serve(Arc::new(TestHandler { max: 0, received: AtomicUsize::new(0) })).await;
    assert!(
        matches!(err, Err(TransportError::Listen { .. })),
        "round_trip: serving twice is refused: {err:?}"
    );
    client.shutdown().await;
    server.shutdown().await;
}

async fn many_concurrent_requests_on_one_peer<F: TransportFixture>(fixture: &F) {
    let (server, handler) = serving(fixture).await;
    let client = fixture.bind().await;
    let addr = server.local_addr().to_string();
    let calls: Vec<_> = (0..1000u32)
        .map(|i| {
            let client = Arc::clone(&client);
            let addr = addr.clone();
            tokio::spawn(async move {
                let frame = Bytes::from(format!("e-{i}"));
                let got = client.call(&addr, frame.clone(), DEADLINE * 6).await;
                (frame, got)
            })
        })
        .collect();
    for call in calls {
        let (frame, got) = call.await.expect("call task");
        assert_eq!(got.expect("concurrent call"), frame, "concurrent: each caller gets its own response");
    }
    assert_eq!(handler.received.load(Ordering::SeqCst), 1000, "concurrent: every request arrived once");
    client.shutdown().await;
    server.shutdown().await;
}

async fn frames_over_the_limit_are_refused<F: TransportFixture>(fixture: &F) {
    let (server, handler) = serving(fixture).await;
    let client = fixture.bind().await;
    let max = fixture.max_frame();
    let err = client.call(server.local_addr(), Bytes::from(vec![b'e'; max + 1]), DEADLINE).await;
    assert_eq!(
        err,
        Err(TransportError::FrameTooLarge { size: max + 1, max }),
        "oversize: a request over the limit is refused before sending"
    );
    assert_eq!(handler.received.load(Ordering::SeqCst), 0, "oversize: nothing reached the server");
    let start = Instant::now();
    let err = client.call(server.local_addr(), Bytes::from_static(b"b"), Duration::from_secs(2)).await;
    assert!(err.is_err(), "oversize: a response over the limit is not delivered");
    assert!(
        start.elapsed() <= Duration::from_secs(2) + SLACK,
        "oversize: the caller is answered by its deadline"
    );
    let ok = retry(|| client.call(server.local_addr(), Bytes::from_static(b"e-after"), DEADLINE)).await;
    assert_eq!(ok, Bytes::from_static(b"e-after"), "oversize: the server keeps serving");
    client.shutdown().await;
    server.shutdown().await;
}

async fn dead_peer_fails_within_the_deadline<F: TransportFixture>(fixture: &F) {
    let client = fixture.bind().await;
    let deadline = Duration::from_secs(2);
    let start = Instant::now();
    let err = client.call(&fixture.unused_addr(), Bytes::from_static(b"e"), deadline).await;
    assert!(
        matches!(
            err,
            Err(TransportError::Refused { .. }
                | TransportError::Unreachable { .. }
                | TransportError::Timeout { .. })
        ),
        "dead peer: {err:?}"
    );
    assert!(start.elapsed() <= deadline + SLACK, "dead peer: failed after {:?}", start.elapsed());
    client.shutdown().await;
}

async fn silent_peer_times_out_at_the_deadline<F: TransportFixture>(fixture: &F) {
    let (server, _) = serving(fixture).await;
    let client = fixture.bind().await;
    let deadline = Duration::from_millis(300);
    let start = Instant::now();
    let err = client.call(server.local_addr(), Bytes::from_static(b"h"), deadline).await;
    let elapsed = start.elapsed();
    assert_eq!(
        err,
        Err(TransportError::Timeout { peer: server.local_addr().to_string(), timeout: deadline })
    );
    assert!(elapsed >= deadline && elapsed <= deadline + SLACK, "silent peer: answered after {elapsed:?}");
    let ok = client.call(server.local_addr(), Bytes::from_static(b"e-next"), DEADLINE).await;
    assert_eq!(ok, Ok(Bytes::from_static(b"e-next")), "silent peer: the link still works after a timeout");
    client.shutdown().await;
    server.shutdown().await;
}

async fn client_recovers_after_the_peer_restarts<F: TransportFixture>(fixture: &F) {
    let (server, _) = serving(fixture).await;
    let addr = server.local_addr().to_string();
    let client = fixture.bind().await;
    client.call(&addr, Bytes::from_static(b"e-1"), DEADLINE).await.expect("before the restart");
    server.shutdown().await;
    let err = client.call(&addr, Bytes::from_static(b"e-2"), Duration::from_secs(2)).await;
    assert!(err.is_err(), "restart: a call to the stopped peer fails: {err:?}");
    assert_ne!(err, Err(TransportError::Closed), "restart: Closed is for the caller's own shutdown");
    let restarted = fixture.bind_at(&addr).await;
    restarted
        .serve(Arc::new(TestHandler { max: fixture.max_frame(), received: AtomicUsize::new(0) }))
        .await
        .expect("serve again on the same address");
    let ok = retry(|| client.call(&addr, Bytes::from_static(b"e-3"), Duration::from_secs(2))).await;
    assert_eq!(ok, Bytes::from_static(b"e-3"), "restart: the client reaches the restarted peer");
    client.shutdown().await;
    restarted.shutdown().await;
}

async fn shutdown_fails_calls_in_flight<F: TransportFixture>(fixture: &F) {
    let (server, handler) = serving(fixture).await;
    let client = fixture.bind().await;
    let addr = server.local_addr().to_string();
    let in_flight = {
        let client = Arc::clone(&client);
        let addr = addr.clone();
        tokio::spawn(
            async move { client.call(&addr, Bytes::from_static(b"h"), Duration::from_secs(30)).await },
        )
    };
    let deadline = Instant::now() + DEADLINE;
    while handler.received.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "shutdown: the request never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let start = Instant::now();
    client.shutdown().await;
    let result =
        tokio::time::timeout(DEADLINE, in_flight).await.expect("shutdown: in-flight call answered").unwrap();
    assert_eq!(result, Err(TransportError::Closed), "shutdown: the in-flight call fails with Closed");
    assert!(start.elapsed() < DEADLINE, "shutdown: promptly");
    let later = client.call(&addr, Bytes::from_static(b"e"), DEADLINE).await;
    assert_eq!(later, Err(TransportError::Closed), "shutdown: later calls fail with Closed");
    server.shutdown().await;
}

/// Retries a call until it succeeds, for at most ten seconds.
async fn retry<Fut, Mk>(mut call: Mk) -> Bytes
where
    Mk: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Bytes, TransportError>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match call().await {
            Ok(b) => return b,
            Err(e) => {
                assert!(Instant::now() < deadline, "no success within 10 s, last error: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
