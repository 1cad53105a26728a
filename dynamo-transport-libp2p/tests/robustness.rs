//! Cases beyond the shared suite: refusals before `serve`, identities,
//! queueing, libp2p's request timeout, and peers that break the wire format
//! in either direction (driven by a raw libp2p swarm speaking the same
//! protocol with a codec that writes whatever bytes it is given).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use dynamo_core::transport::{FrameHandler, Transport, TransportError};
use dynamo_transport_libp2p::{Libp2pConfig, Libp2pTransport};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, Codec, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, StreamProtocol, Swarm, SwarmBuilder};

const PROTOCOL: StreamProtocol = StreamProtocol::new("/dynamo/frame/1");
const SECOND: Duration = Duration::from_secs(1);
/// An error within this long of a 5 s deadline came from the failure
/// itself, not the deadline (with room for a loaded machine).
const PROMPT: Duration = Duration::from_secs(2);

/// By first byte: `e` echo, `h` never answer, `s` echo after 20 ms
/// (recording how many run at once), `p` panic, `b` answer `big` bytes.
#[derive(Default)]
struct Handler {
    big: usize,
    received: AtomicUsize,
    running: AtomicUsize,
    most_running: AtomicUsize,
}

#[async_trait]
impl FrameHandler for Handler {
    async fn handle(&self, frame: Bytes) -> Bytes {
        self.received.fetch_add(1, Ordering::SeqCst);
        match frame.first() {
            Some(b'h') => std::future::pending().await,
            Some(b's') => {
                let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
                self.most_running.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                self.running.fetch_sub(1, Ordering::SeqCst);
                frame
            }
            Some(b'p') => panic!("handler panics on purpose"),
            Some(b'b') => Bytes::from(vec![b'x'; self.big]),
            _ => frame,
        }
    }
}

async fn bind(config: Libp2pConfig) -> Libp2pTransport {
    Libp2pTransport::bind(config).await.expect("bind")
}

async fn serving(config: Libp2pConfig, handler: Handler) -> (Libp2pTransport, Arc<Handler>) {
    let t = bind(config).await;
    let h = Arc::new(handler);
    t.serve(h.clone()).await.expect("serve");
    (t, h)
}

fn unreachable_reason(result: Result<Bytes, TransportError>) -> String {
    match result {
        Err(TransportError::Unreachable { reason, .. }) => reason,
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

/// The reason of a call refused before its request was sent.
fn refused_reason(result: Result<Bytes, TransportError>) -> String {
    match result {
        Err(TransportError::Refused { reason, .. }) => reason,
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_before_serve_are_refused_at_once() {
    let server = bind(Libp2pConfig::default()).await;
    let client = bind(Libp2pConfig::default()).await;
    let start = Instant::now();
    let reason =
        unreachable_reason(client.call(server.local_addr(), Bytes::from_static(b"e"), 5 * SECOND).await);
    assert!(reason.contains("not serving yet"), "{reason}");
    assert!(start.elapsed() < PROMPT, "refused promptly, not timed out: {:?}", start.elapsed());
    server.serve(Arc::new(Handler::default())).await.unwrap();
    let ok = client.call(server.local_addr(), Bytes::from_static(b"e-now"), 5 * SECOND).await;
    assert_eq!(ok, Ok(Bytes::from_static(b"e-now")));
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_peer_id_at_a_live_address_is_refused() {
    let (server, handler) = serving(Libp2pConfig::default(), Handler::default()).await;
    let client = bind(Libp2pConfig::default()).await;
    let impostor = Libp2pConfig::default().with_identity_seed(&[3; 32]).peer_id().unwrap().unwrap();
    let (listen, _) = server.local_addr().split_once("/p2p/").unwrap();
    let wrong = format!("{listen}/p2p/{impostor}");
    let start = Instant::now();
    let reason = refused_reason(client.call(&wrong, Bytes::from_static(b"e"), 5 * SECOND).await);
    assert!(reason.contains("dial failed"), "{reason}");
    assert!(start.elapsed() < PROMPT, "{:?}", start.elapsed());
    assert_eq!(handler.received.load(Ordering::SeqCst), 0, "nothing reached the handler");
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_addresses_are_refused_with_a_reason() {
    let client = bind(Libp2pConfig::default()).await;
    for addr in ["127.0.0.1:7000", "/ip4/127.0.0.1/tcp/7000", ""] {
        let reason = refused_reason(client.call(addr, Bytes::from_static(b"e"), SECOND).await);
        assert!(reason.contains("multiaddr") || reason.contains("/p2p/"), "{addr:?}: {reason}");
    }
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_follows_the_seed() {
    let seed = Libp2pConfig::generate_identity_seed_hex();
    let config = Libp2pConfig { identity_seed_hex: Some(seed), ..Libp2pConfig::default() };
    let expected = config.peer_id().unwrap().unwrap();
    let t = bind(config).await;
    assert_eq!(t.peer_id(), expected);
    assert!(t.local_addr().starts_with("/ip4/127.0.0.1/tcp/"), "{}", t.local_addr());
    assert!(t.local_addr().ends_with(&format!("/p2p/{expected}")), "{}", t.local_addr());
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertise_addr_replaces_the_bound_address() {
    let config = Libp2pConfig {
        advertise_addr: Some("/dns4/node-1.example/tcp/7001".into()),
        ..Libp2pConfig::default()
    };
    let t = bind(config).await;
    assert_eq!(t.local_addr(), format!("/dns4/node-1.example/tcp/7001/p2p/{}", t.peer_id()));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_and_serve_errors_are_listen_errors() {
    let invalid = Libp2pTransport::bind(Libp2pConfig {
        identity_seed_hex: Some("xyz".into()),
        ..Libp2pConfig::default()
    })
    .await;
    match invalid {
        Err(TransportError::Listen { reason, .. }) => {
            assert!(reason.contains("identity_seed_hex"), "{reason}")
        }
        other => panic!("expected Listen, got {other:?}"),
    }

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let in_use = Libp2pTransport::bind(Libp2pConfig::new(format!("/ip4/127.0.0.1/tcp/{port}"))).await;
    assert!(matches!(in_use, Err(TransportError::Listen { .. })), "{in_use:?}");
    drop(taken);

    let t = bind(Libp2pConfig::default()).await;
    t.shutdown().await;
    let err = t.serve(Arc::new(Handler::default())).await;
    assert!(matches!(err, Err(TransportError::Listen { .. })), "{err:?}");
    assert_eq!(t.call(t.local_addr(), Bytes::from_static(b"e"), SECOND).await, Err(TransportError::Closed));
    t.shutdown().await; // idempotent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_the_own_address_reaches_the_own_handler() {
    let t = bind(Libp2pConfig::default()).await;
    let reason = unreachable_reason(t.call(t.local_addr(), Bytes::from_static(b"e"), SECOND).await);
    assert!(reason.contains("not serving yet"), "{reason}");
    t.serve(Arc::new(Handler::default())).await.unwrap();
    assert_eq!(
        t.call(t.local_addr(), Bytes::from_static(b"e-me"), SECOND).await,
        Ok(Bytes::from_static(b"e-me"))
    );
    let err = t.call(t.local_addr(), Bytes::from_static(b"h"), Duration::from_millis(50)).await;
    assert!(matches!(err, Err(TransportError::Timeout { .. })), "{err:?}");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_the_per_peer_cap_queue_and_all_complete() {
    let (server, handler) = serving(Libp2pConfig::default(), Handler::default()).await;
    let client = Arc::new(bind(Libp2pConfig { max_in_flight_per_peer: 2, ..Libp2pConfig::default() }).await);
    let addr: Arc<str> = server.local_addr().into();
    let calls: Vec<_> = (0..40)
        .map(|i| {
            let (client, addr) = (Arc::clone(&client), Arc::clone(&addr));
            tokio::spawn(async move {
                let frame = Bytes::from(format!("s-{i}"));
                (client.call(&addr, frame.clone(), 10 * SECOND).await, frame)
            })
        })
        .collect();
    for call in calls {
        let (got, frame) = call.await.unwrap();
        assert_eq!(got, Ok(frame));
    }
    assert_eq!(handler.received.load(Ordering::SeqCst), 40);
    let most = handler.most_running.load(Ordering::SeqCst);
    assert!((1..=2).contains(&most), "at most 2 calls on the wire at once, saw {most}");
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libp2p_request_timeout_cuts_longer_call_deadlines() {
    let server_config = Libp2pConfig { request_timeout_ms: 300, ..Libp2pConfig::default() };
    let (server, _) = serving(server_config, Handler::default()).await;
    let client = bind(Libp2pConfig { request_timeout_ms: 300, ..Libp2pConfig::default() }).await;
    let start = Instant::now();
    let err = client.call(server.local_addr(), Bytes::from_static(b"h"), 10 * SECOND).await;
    let elapsed = start.elapsed();
    assert_eq!(err, Err(TransportError::Timeout { peer: server.local_addr().into(), timeout: 10 * SECOND }));
    assert!(elapsed >= Duration::from_millis(300) && elapsed < 2 * SECOND, "{elapsed:?}");
    // The connection may have been closed as silent; the next call redials.
    let ok = client.call(server.local_addr(), Bytes::from_static(b"e-again"), 5 * SECOND).await;
    assert_eq!(ok, Ok(Bytes::from_static(b"e-again")));
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_over_a_limit_fail_promptly_on_either_side() {
    // The server may send 4 KiB, the client accepts 1 KiB.
    let server_config = Libp2pConfig { max_frame_bytes: 4096, ..Libp2pConfig::default() };
    let (server, _) = serving(server_config, Handler { big: 2048, ..Handler::default() }).await;
    let client = bind(Libp2pConfig { max_frame_bytes: 1024, ..Libp2pConfig::default() }).await;
    let start = Instant::now();
    let reason =
        unreachable_reason(client.call(server.local_addr(), Bytes::from_static(b"b"), 5 * SECOND).await);
    assert!(reason.contains("exceeds the limit of 1024"), "{reason}");
    assert!(start.elapsed() < PROMPT, "{:?}", start.elapsed());
    client.shutdown().await;
    server.shutdown().await;

    // The handler answers more than its own server may send.
    let server_config = Libp2pConfig { max_frame_bytes: 1024, ..Libp2pConfig::default() };
    let (server, _) = serving(server_config, Handler { big: 2048, ..Handler::default() }).await;
    let client = bind(Libp2pConfig::default()).await;
    let reason =
        unreachable_reason(client.call(server.local_addr(), Bytes::from_static(b"b"), 5 * SECOND).await);
    assert!(reason.contains("exceeds the server's limit"), "{reason}");
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_only_its_own_call() {
    let (server, _) = serving(Libp2pConfig::default(), Handler::default()).await;
    let client = bind(Libp2pConfig::default()).await;
    let start = Instant::now();
    // A long deadline: the panic hook may print a backtrace, slow in a
    // debug build on a loaded machine.
    let err = client.call(server.local_addr(), Bytes::from_static(b"p"), 20 * SECOND).await;
    assert!(matches!(err, Err(TransportError::Unreachable { .. })), "{err:?}");
    assert!(start.elapsed() < 10 * SECOND, "{:?}", start.elapsed());
    let ok = client.call(server.local_addr(), Bytes::from_static(b"e-fine"), 5 * SECOND).await;
    assert_eq!(ok, Ok(Bytes::from_static(b"e-fine")));
    client.shutdown().await;
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// A raw peer: the same protocol name, bytes in and out as given.

#[derive(Clone, Default)]
struct RawCodec;

async fn read_all<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    io.take(1 << 20).read_to_end(&mut out).await?;
    Ok(out)
}

impl Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_all(io).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_all(io).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&req).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&res).await
    }
}

type RawSwarm = Swarm<request_response::Behaviour<RawCodec>>;

fn raw_swarm() -> RawSwarm {
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::new(
                [(PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default(),
            )
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build()
}

/// Sends `bytes` verbatim as a request and returns the raw reply (or why
/// there was none).
async fn raw_call(swarm: &mut RawSwarm, to: &str, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut addr: Multiaddr = to.parse().unwrap();
    let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.pop() else { panic!("no peer id in {to}") };
    let id = swarm.behaviour_mut().send_request_with_addresses(&peer, bytes, vec![addr]);
    let wait = async {
        loop {
            if let SwarmEvent::Behaviour(event) = swarm.select_next_some().await {
                match event {
                    request_response::Event::Message {
                        message: request_response::Message::Response { request_id, response },
                        ..
                    } if request_id == id => return Ok(response),
                    request_response::Event::OutboundFailure { request_id, error, .. }
                        if request_id == id =>
                    {
                        return Err(error.to_string())
                    }
                    _ => {}
                }
            }
        }
    };
    tokio::time::timeout(5 * SECOND, wait).await.expect("the raw call settles")
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_fail_their_stream_and_nothing_else() {
    let max = 1024;
    let (server, handler) =
        serving(Libp2pConfig { max_frame_bytes: max, ..Libp2pConfig::default() }, Handler::default()).await;
    let addr = server.local_addr().to_owned();
    let mut raw = raw_swarm();

    // A well-formed request, to pin the documented wire format.
    let reply = raw_call(&mut raw, &addr, framed(b"e-raw")).await.expect("a well-formed request is answered");
    let mut expected = vec![0u8];
    expected.extend(framed(b"e-raw"));
    assert_eq!(reply, expected, "reply: tag 0, u32 BE length, body");

    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("an announced length over the limit", ((max + 1) as u32).to_be_bytes().to_vec()),
        ("u32::MAX announced", u32::MAX.to_be_bytes().to_vec()),
        ("a truncated body", {
            let mut b = 100u32.to_be_bytes().to_vec();
            b.extend_from_slice(b"e-short");
            b
        }),
        ("a truncated length", vec![0, 0]),
        ("nothing at all", vec![]),
    ];
    for (what, bytes) in bad {
        // The server drops the stream: no reply, or an error, never a frame.
        if let Ok(reply) = raw_call(&mut raw, &addr, bytes).await {
            assert!(reply.is_empty(), "{what}: got a reply {reply:?}");
        }
    }
    assert_eq!(handler.received.load(Ordering::SeqCst), 1, "no malformed request reached the handler");

    let client = bind(Libp2pConfig::default()).await;
    let ok = client.call(&addr, Bytes::from_static(b"e-still-serving"), 5 * SECOND).await;
    assert_eq!(ok, Ok(Bytes::from_static(b"e-still-serving")), "the server keeps serving");
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_replies_fail_the_call_promptly() {
    let replies: Vec<(&str, Vec<u8>)> = vec![
        ("an announced length over the limit", vec![0, 0xff, 0xff, 0xff, 0xff]),
        ("an unknown tag", vec![9, 0, 0, 0, 0]),
        ("a truncated body", vec![0, 0, 0, 0, 10, 1, 2]),
        ("a truncated length", vec![0, 0]),
        ("an empty reply", vec![]),
        ("an oversized refusal reason", vec![1, 0, 1, 0, 0]),
    ];
    let script: Vec<Vec<u8>> = replies.iter().map(|(_, r)| r.clone()).collect();

    let mut server = raw_swarm();
    server.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
    let listen = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            break address;
        }
    };
    let addr = format!("{listen}/p2p/{}", server.local_peer_id());
    let serving = tokio::spawn(async move {
        let mut script = script.into_iter();
        loop {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Request { channel, .. },
                ..
            }) = server.select_next_some().await
            {
                let reply = script.next().unwrap_or_default();
                let _ = server.behaviour_mut().send_response(channel, reply);
            }
        }
    });

    let client = bind(Libp2pConfig { max_frame_bytes: 1024, ..Libp2pConfig::default() }).await;
    for (what, _) in &replies {
        let start = Instant::now();
        let err = client.call(&addr, Bytes::from_static(b"e"), 5 * SECOND).await;
        assert!(matches!(err, Err(TransportError::Unreachable { .. })), "{what}: {err:?}");
        assert!(start.elapsed() < PROMPT, "{what}: failed after {:?}", start.elapsed());
    }
    client.shutdown().await;
    serving.abort();
}
