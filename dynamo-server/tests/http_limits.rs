//! The HTTP port's error answers, limits and timeouts, in process: a
//! one-node cluster on the testkit's simulated network and `MemStore`,
//! behind the real router and listener on 127.0.0.1. Raw TCP where the
//! bytes on the wire matter (what arrives, when, and whether the
//! connection is closed); short timeouts keep the tests quick, and every
//! wait is for an event, with a deadline.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynamo_core::node::ReadOptions;
use dynamo_server::http::{router, AppState};
use dynamo_server::http_listener::{self, HttpLimits};
use dynamo_server::metrics::ServerMetrics;
use dynamo_testkit::Cluster;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any expected event may take on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(10);
/// The node's value limit (the default `cluster.max_value_size`).
const MAX_VALUE: usize = 1024 * 1024;

fn limits() -> HttpLimits {
    HttpLimits {
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(600),
        max_connections: 64,
        max_header_bytes: 8192,
        drain_timeout: Duration::from_secs(5),
        rate_limit_per_s: 0,
        rate_limit_burst: 0,
    }
}

/// One node serving the API on 127.0.0.1 until `stop`.
struct Server {
    addr: SocketAddr,
    cluster: Cluster,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(limits: HttpLimits) -> Server {
        let cluster = Cluster::builder().nodes(1).n(1).r(1).w(1).build().await.unwrap();
        assert_eq!(cluster.node(0).unwrap().config().max_value_size, MAX_VALUE);
        let state = Arc::new(AppState { node: cluster.node(0).unwrap(), metrics: ServerMetrics::new() });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(http_listener::serve(listener, router(state), limits, async {
            let _ = stopped.await;
        }));
        Server { addr, cluster, stop: Some(stop), task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn connect(&self) -> Raw {
        Raw::connect(self.addr).await
    }

    /// The values the node holds for `key`.
    async fn values(&self, key: &str) -> Vec<bytes::Bytes> {
        self.cluster.node(0).unwrap().get(key.as_bytes(), ReadOptions::default()).await.unwrap().values
    }
}

/// One answer as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as the API's JSON error; panics unless it is one.
    fn error(&self) -> String {
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
        let body: Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"));
        body["error"].as_str().unwrap_or_else(|| panic!("no error message: {body}")).to_string()
    }
}

/// A client connection speaking HTTP/1.1 by hand.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw { stream: TcpStream::connect(addr).await.unwrap(), buf: Vec::new() }
    }

    /// A connection from `source`, a loopback address of the test's choice,
    /// so the server sees another client address than 127.0.0.1.
    async fn connect_from(addr: SocketAddr, source: IpAddr) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        Raw { stream: socket.connect(addr).await.unwrap(), buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads more bytes into the buffer; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(DEADLINE, self.stream.read(&mut chunk))
            .await
            .expect("no answer before the deadline")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next answer (a `100 Continue` is one).
    async fn answer(&mut self) -> Answer {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                self.fill().await,
                "closed before an answer; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        let len: usize =
            headers.iter().find(|(n, _)| n == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
        while self.buf.len() < head_end + len {
            assert!(self.fill().await, "closed in the middle of an answer");
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        Answer { status, headers, body }
    }

    /// Waits until the server closes the connection; returns what came
    /// before (a reset counts as closed).
    async fn closed(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }
}

fn put_head(path: &str, length: usize, extra: &str) -> Vec<u8> {
    format!("PUT {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {length}\r\n{extra}\r\n").into_bytes()
}

const GET_HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_route_answers_with_a_json_error() {
    let server = Server::start(limits()).await;
    let http = reqwest::Client::new();
    let cases: Vec<(reqwest::Method, &str, u16, &str)> = vec![
        (reqwest::Method::GET, "/kv/", 400, "the key is empty"),
        (reqwest::Method::PUT, "/kv/", 400, "the key is empty"),
        (reqwest::Method::DELETE, "/kv/", 400, "the key is empty"),
        (reqwest::Method::GET, "/kv/a/b", 400, "/kv/a%2Fb"),
        (reqwest::Method::PUT, "/kv/a/b", 400, "/kv/a%2Fb"),
        (reqwest::Method::DELETE, "/kv/a/b/", 400, "/kv/a%2Fb%2F"),
        (reqwest::Method::GET, "/admin/local/", 400, "the key is empty"),
        (reqwest::Method::GET, "/admin/local/a/b", 400, "/admin/local/a%2Fb"),
        (reqwest::Method::GET, "/nowhere", 404, "no such resource: /nowhere"),
        (reqwest::Method::GET, "/kv", 404, "no such resource: /kv"),
        (reqwest::Method::POST, "/kv/x", 405, "method POST is not allowed"),
        (reqwest::Method::OPTIONS, "/kv/x", 405, "method OPTIONS is not allowed"),
        (reqwest::Method::PATCH, "/kv/a/b", 405, "method PATCH is not allowed"),
        (reqwest::Method::POST, "/health", 405, "method POST is not allowed"),
        (reqwest::Method::GET, "/admin/aae/run", 405, "method GET is not allowed on /admin/aae/run"),
        (reqwest::Method::POST, "/admin/aae", 405, "method POST is not allowed on /admin/aae"),
        (reqwest::Method::POST, "/admin/aae/run?partition=1", 400, "unknown field `partition`"),
    ];
    for (method, path, status, message) in cases {
        let resp = http.request(method.clone(), server.url(path)).body("v").send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        let allow = resp.headers().get("allow").map(|v| v.to_str().unwrap().to_string());
        assert_eq!(resp.headers().get("content-type").unwrap(), "application/json", "{method} {path}");
        let body: Value = resp.json().await.unwrap();
        let error = body["error"].as_str().unwrap_or_else(|| panic!("{method} {path}: {body}"));
        assert!(error.contains(message), "{method} {path}: {error:?} should mention {message:?}");
        if status == 405 {
            let allow = allow.unwrap_or_else(|| panic!("{method} {path}: 405 without Allow"));
            let want: &[&str] = match path {
                "/health" | "/admin/aae" => &["GET", "HEAD"],
                "/admin/aae/run" => &["POST"],
                _ => &["GET", "PUT", "DELETE"],
            };
            for m in want {
                assert!(allow.contains(m), "{method} {path}: Allow {allow:?} lacks {m}");
            }
        }
    }
    // Nothing was stored by the refused writes; an encoded '/' is a key.
    assert!(server.values("a/b").await.is_empty());
    let resp = http.put(server.url("/kv/a%2Fb")).body("slash").send().await.unwrap();
    assert_eq!(resp.status(), 204);
    let resp = http.get(server.url("/kv/a%2Fb")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), "slash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_hyper_refuses_get_a_json_error() {
    let server = Server::start(limits()).await;
    // A head of exactly max_header_bytes is accepted (limits are inclusive).
    let head_of = |len: usize| {
        let start = "GET /health HTTP/1.1\r\nhost: test\r\nx-pad: ";
        let pad = len - start.len() - 4;
        format!("{start}{}\r\n\r\n", "p".repeat(pad)).into_bytes()
    };
    let mut c = server.connect().await;
    c.send(&head_of(8192)).await;
    assert_eq!(c.answer().await.status, 200);

    for len in [8193, 100_000] {
        let mut c = server.connect().await;
        c.send(&head_of(len)).await;
        let answer = c.answer().await;
        assert_eq!(answer.status, 431, "head of {len} bytes: {answer:?}");
        assert!(answer.error().contains("http.max_header_bytes"), "{answer:?}");
        assert_eq!(answer.header("connection"), Some("close"));
        assert!(c.closed().await.is_empty());
    }

    for garbage in [&b"NOT HTTP AT ALL\r\n\r\n"[..], b"GET /health HTTP/1.1\r\nno colon here\r\n\r\n"] {
        let mut c = server.connect().await;
        c.send(garbage).await;
        let answer = c.answer().await;
        assert_eq!(answer.status, 400, "{answer:?}");
        assert_eq!(answer.error(), "malformed HTTP request");
        assert!(c.closed().await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_put_is_refused_before_its_body_with_or_without_expect_continue() {
    let server = Server::start(limits()).await;
    for expect in ["expect: 100-continue\r\n", ""] {
        let mut c = server.connect().await;
        // 2 MiB announced, not one byte of it sent.
        c.send(&put_head("/kv/big", 2 * MAX_VALUE, expect)).await;
        let answer = c.answer().await;
        assert_eq!(answer.status, 413, "{expect:?}: the first answer, before any body and no 100 Continue");
        assert!(answer.error().contains(&format!("limit of {MAX_VALUE} bytes")), "{answer:?}");
        assert_eq!(answer.header("connection"), Some("close"));
        assert!(c.closed().await.is_empty(), "then the connection is closed");
    }
    // One byte over the limit is refused too; the limit itself is not.
    let mut c = server.connect().await;
    c.send(&put_head("/kv/big", MAX_VALUE + 1, "expect: 100-continue\r\n")).await;
    assert_eq!(c.answer().await.status, 413);
    let mut c = server.connect().await;
    c.send(&put_head("/kv/big", MAX_VALUE, "expect: 100-continue\r\n")).await;
    assert_eq!(c.answer().await.status, 100);
    c.send(&vec![7u8; MAX_VALUE]).await;
    assert_eq!(c.answer().await.status, 204);
    assert_eq!(server.values("big").await, vec![bytes::Bytes::from(vec![7u8; MAX_VALUE])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_is_sent_only_to_requests_that_will_read_their_body() {
    let server = Server::start(limits()).await;
    let expect = "expect: 100-continue\r\n";
    let long_key = "k".repeat(1025);
    let refused = [
        put_head("/kv/k?w=0", 5, expect),
        put_head("/kv/k?x=1", 5, expect),
        put_head(&format!("/kv/{long_key}"), 5, expect),
        put_head("/kv/k", 5, "expect: 100-continue\r\nx-dynamo-context: AAAA\r\n"),
        put_head("/kv/", 5, expect),
    ];
    for head in refused {
        let mut c = server.connect().await;
        c.send(&head).await;
        let answer = c.answer().await;
        assert_eq!(answer.status, 400, "{}: {answer:?}", String::from_utf8_lossy(&head));
        answer.error();
    }
    let mut c = server.connect().await;
    c.send(&put_head("/kv/k", 5, expect)).await;
    assert_eq!(c.answer().await.status, 100);
    c.send(b"hello").await;
    assert_eq!(c.answer().await.status, 204);
    assert_eq!(server.values("k").await, vec![bytes::Bytes::from("hello")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_is_refused_as_soon_as_it_crosses_the_limit() {
    let server = Server::start(HttpLimits { body_timeout: DEADLINE, ..limits() }).await;
    let head = b"PUT /kv/chunky HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n";
    let chunk = |data: &[u8]| [format!("{:x}\r\n", data.len()).as_bytes(), data, b"\r\n"].concat();
    let body_of_limit: Vec<u8> = (0..16).flat_map(|_| chunk(&[1u8; MAX_VALUE / 16])).collect();

    // Exactly the limit, then the last chunk: stored.
    let mut c = server.connect().await;
    c.send(head).await;
    c.send(&body_of_limit).await;
    c.send(b"0\r\n\r\n").await;
    assert_eq!(c.answer().await.status, 204);
    assert_eq!(server.values("chunky").await[0].len(), MAX_VALUE);

    // One byte more, and no last chunk: refused without waiting for the end.
    let mut c = server.connect().await;
    c.send(head).await;
    c.send(&body_of_limit).await;
    c.send(&chunk(b"x")).await;
    let answer = c.answer().await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert!(answer.error().contains(&format!("limit of {MAX_VALUE} bytes")));
    assert!(c.closed().await.is_empty());
    assert_eq!(server.values("chunky").await[0].len(), MAX_VALUE, "unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let server = Server::start(limits()).await;
    let start = Instant::now();
    let mut c = server.connect().await;
    assert!(c.closed().await.is_empty(), "closed without an answer: no request arrived");
    assert!(start.elapsed() >= limits().header_timeout, "closed after {:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_header_gets_408_and_the_connection_is_closed() {
    let server = Server::start(limits()).await;
    let start = Instant::now();
    let mut c = server.connect().await;
    c.send(b"PUT /kv/half HTTP/1.1\r\nhost: test\r\ncontent-le").await;
    let answer = c.answer().await;
    assert!(start.elapsed() >= limits().header_timeout, "answered after {:?}", start.elapsed());
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(answer.error().contains("http.header_timeout_ms"), "{answer:?}");
    assert!(c.closed().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_gets_408_and_nothing_is_stored() {
    let server = Server::start(limits()).await;
    let start = Instant::now();
    let mut c = server.connect().await;
    c.send(&put_head("/kv/stalled", 10, "")).await;
    c.send(b"abc").await;
    let answer = c.answer().await;
    assert!(start.elapsed() >= limits().body_timeout, "answered after {:?}", start.elapsed());
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(answer.error().contains("http.body_timeout_ms"), "{answer:?}");
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(c.closed().await.is_empty());
    let resp = reqwest::get(server.url("/kv/stalled")).await.unwrap();
    assert_eq!(resp.status(), 404);
    assert!(server.values("stalled").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    // Idle well above the header timeout: the close comes from the idle one.
    let limits = HttpLimits { idle_timeout: Duration::from_millis(900), ..limits() };
    let server = Server::start(limits.clone()).await;
    let mut c = server.connect().await;
    c.send(GET_HEALTH).await;
    assert_eq!(c.answer().await.status, 200);
    let start = Instant::now();
    // Two requests in one write (pipelined): both answered, in order.
    c.send(&[GET_HEALTH, b"GET /kv/missing HTTP/1.1\r\nhost: test\r\n\r\n"].concat()).await;
    assert_eq!(c.answer().await.status, 200, "the connection is kept alive");
    assert_eq!(c.answer().await.status, 404);
    assert!(c.closed().await.is_empty(), "closed without an answer");
    assert!(start.elapsed() >= limits.idle_timeout, "closed after {:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused_while_the_others_keep_working() {
    let limit = 3;
    let limits = HttpLimits {
        max_connections: limit,
        idle_timeout: DEADLINE * 3,
        header_timeout: DEADLINE,
        ..limits()
    };
    let server = Server::start(limits).await;
    let mut open = Vec::new();
    for _ in 0..limit {
        let mut c = server.connect().await;
        c.send(GET_HEALTH).await;
        assert_eq!(c.answer().await.status, 200);
        open.push(c);
    }
    let mut extra = server.connect().await;
    let answer = extra.answer().await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.error().contains("http.max_connections"), "{answer:?}");
    assert!(extra.closed().await.is_empty());
    for c in &mut open {
        c.send(GET_HEALTH).await;
        assert_eq!(c.answer().await.status, 200, "existing connections keep working");
    }
    // A closed connection gives its slot back.
    drop(open.pop());
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut c = server.connect().await;
        c.send(GET_HEALTH).await;
        match c.answer().await.status {
            200 => break,
            503 => assert!(Instant::now() < deadline, "the slot was not given back"),
            other => panic!("unexpected {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_and_finishes_requests_in_flight() {
    let mut server =
        Server::start(HttpLimits { body_timeout: DEADLINE, idle_timeout: DEADLINE, ..limits() }).await;
    let mut idle = server.connect().await;
    idle.send(GET_HEALTH).await;
    assert_eq!(idle.answer().await.status, 200);
    let mut busy = server.connect().await;
    busy.send(&put_head("/kv/late", 5, "expect: 100-continue\r\n")).await;
    assert_eq!(busy.answer().await.status, 100, "the request is in flight");

    let _ = server.stop.take().unwrap().send(());
    assert!(idle.closed().await.is_empty(), "the idle connection is closed");
    assert!(TcpStream::connect(server.addr).await.is_err(), "no new connections");
    busy.send(b"later").await;
    assert_eq!(busy.answer().await.status, 204, "the request in flight finishes");
    assert!(busy.closed().await.is_empty());
    tokio::time::timeout(DEADLINE, &mut server.task).await.expect("serve returns").unwrap();
    assert_eq!(server.values("late").await, vec![bytes::Bytes::from("later")]);
}

/// A value keeps the media type it was written with (as Riak): a raw GET
/// answers with it, the JSON form lists each sibling's, a value written
/// without one is `application/octet-stream`, and a type that is not
/// visible ASCII or too long is refused without storing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_keep_their_content_type() {
    let server = Server::start(limits()).await;
    let http = reqwest::Client::new();
    let put = |key: &str, body: &'static str, content_type: Option<&str>| {
        let mut req = http.put(server.url(&format!("/kv/{key}"))).body(body);
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        req.send()
    };
    assert_eq!(put("doc", "{\"a\":1}", Some("application/json")).await.unwrap().status(), 204);
    let got = http.get(server.url("/kv/doc")).send().await.unwrap();
    assert_eq!(got.headers()["content-type"], "application/json");
    assert_eq!(got.text().await.unwrap(), "{\"a\":1}");
    assert_eq!(put("raw", "bytes", None).await.unwrap().status(), 204);
    let got = http.get(server.url("/kv/raw")).send().await.unwrap();
    assert_eq!(got.headers()["content-type"], "application/octet-stream");
    // Two siblings, each with its own type, in the JSON form.
    assert_eq!(put("two", "hello", Some("text/plain; charset=utf-8")).await.unwrap().status(), 204);
    assert_eq!(put("two", "<p>hi</p>", Some("text/html")).await.unwrap().status(), 204);
    let json: serde_json::Value = http
        .get(server.url("/kv/two"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut types: Vec<&str> =
        json["content_types"].as_array().unwrap().iter().filter_map(|t| t.as_str()).collect();
    types.sort();
    assert_eq!(types, ["text/html", "text/plain; charset=utf-8"], "{json}");
    // Refused types store nothing.
    let long = "x/".to_owned() + &"y".repeat(300);
    let refused =
        http.put(server.url("/kv/bad")).header("content-type", long).body("v").send().await.unwrap();
    assert_eq!(refused.status(), 400);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("content type"), "{body}");
    assert!(server.values("bad").await.is_empty());
}

/// A client flooding the API is held to its rate limit: past its burst it
/// gets `429` JSON with `Retry-After`, its write is not stored, and
/// `/health` stays open to it; another client address is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_rate_limited_while_another_is_served() {
    let server = Server::start(HttpLimits { rate_limit_per_s: 1, rate_limit_burst: 5, ..limits() }).await;
    let flooder: IpAddr = "127.0.0.2".parse().unwrap();
    let other: IpAddr = "127.0.0.3".parse().unwrap();
    let mut flood = Raw::connect_from(server.addr, flooder).await;
    let mut passed = 0;
    let mut refused = None;
    for _ in 0..50 {
        flood.send(b"GET /kv/absent HTTP/1.1\r\nhost: test\r\n\r\n").await;
        let answer = flood.answer().await;
        if answer.status == 429 {
            refused = Some(answer);
            break;
        }
        assert_eq!(answer.status, 404, "{answer:?}");
        passed += 1;
    }
    let refused = refused.expect("50 requests at once and none over the limit");
    // The burst, plus what the bucket refilled meanwhile (1 a second).
    assert!((5..=7).contains(&passed), "{passed} requests passed before the first 429");
    let retry: u64 = refused.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert!(refused.error().contains("too many requests from 127.0.0.2"), "{refused:?}");

    // A write over the limit changes nothing.
    let mut write = Raw::connect_from(server.addr, flooder).await;
    write.send(&put_head("/kv/flooded", 1, "")).await;
    write.send(b"v").await;
    assert_eq!(write.answer().await.status, 429);
    assert!(server.values("flooded").await.is_empty());

    // Health checks are never limited.
    let mut health = Raw::connect_from(server.addr, flooder).await;
    health.send(GET_HEALTH).await;
    assert_eq!(health.answer().await.status, 200);

    // Another client is served.
    let mut served = Raw::connect_from(server.addr, other).await;
    served.send(&put_head("/kv/served", 1, "")).await;
    served.send(b"v").await;
    let answer = served.answer().await;
    assert!(answer.status == 204 || answer.status == 200, "{answer:?}");
    assert_eq!(server.values("served").await, vec![bytes::Bytes::from_static(b"v")]);
}
