//! Client authentication (`http.tokens_file`): in process, a one-node
//! cluster on the testkit's simulated network behind the real router and
//! listener with a tokens file, each scope and each refusal checked on the
//! wire; then the real binary: bad tokens files refusing `serve`, and
//! `token create`/`list`/`revoke` with the printed token used by the
//! client commands. Every wait is for an event, with a deadline.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynamo_core::node::ReadOptions;
use dynamo_server::http::{router, AppState};
use dynamo_server::http_listener::{self, HttpLimits};
use dynamo_server::metrics::ServerMetrics;
use dynamo_server::tokens::{generate_token, hash_hex, TokenStore, Tokens};
use dynamo_testkit::Cluster;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::ProcCluster;
use tokio::sync::oneshot;

/// How long any expected event may take on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(30);

fn limits(rate_limit_per_s: u32, rate_limit_burst: u32) -> HttpLimits {
    HttpLimits {
        header_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        max_connections: 64,
        max_header_bytes: 8192,
        drain_timeout: Duration::from_secs(5),
        rate_limit_per_s,
        rate_limit_burst,
    }
}

/// The tokens of the in-process tests, one per role.
struct Keys {
    reader: String,
    writer: String,
    admin: String,
    expired: String,
    flooder: String,
    other: String,
}

impl Keys {
    fn new() -> Keys {
        let t = || generate_token().unwrap();
        Keys { reader: t(), writer: t(), admin: t(), expired: t(), flooder: t(), other: t() }
    }

    /// Their tokens file.
    fn file(&self) -> String {
        let entry = |name: &str, scopes: &str, token: &str, extra: &str| {
            format!(
                "[[token]]\nname = \"{name}\"\nscopes = [{scopes}]\nsha256 = \"{}\"\n{extra}\n",
                hash_hex(token)
            )
        };
        [
            entry("reader", "\"read\"", &self.reader, ""),
            entry("writer", "\"write\"", &self.writer, ""),
            entry("ops", "\"admin\"", &self.admin, "expires_at = \"2999-01-01T00:00:00Z\""),
            entry("old", "\"admin\"", &self.expired, "expires_at = \"2020-01-01T00:00:00Z\""),
            entry("flooder", "\"read\", \"write\"", &self.flooder, ""),
            entry("other", "\"read\", \"write\"", &self.other, ""),
        ]
        .concat()
    }
}

/// One node serving the API with authentication on 127.0.0.1 until dropped.
struct Server {
    addr: SocketAddr,
    cluster: Cluster,
    http: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

impl Server {
    async fn start(keys: &Keys, limits: HttpLimits) -> Server {
        let tokens = Tokens::parse(&keys.file(), Path::new("tokens.toml")).unwrap();
        let cluster = Cluster::builder().nodes(1).n(1).r(1).w(1).build().await.unwrap();
        let state = Arc::new(AppState { node: cluster.node(0).unwrap(), metrics: ServerMetrics::new() });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let store = TokenStore::new(PathBuf::from("tokens.toml"), tokens);
        let security = http_listener::ClientSecurity {
            tokens: Some(Arc::new(store)),
            tls: None,
            refusals: state.metrics.http_refusals(),
        };
        tokio::spawn(http_listener::serve_secured(listener, router(state), limits, security, async {
            let _ = stopped.await;
        }));
        Server { addr, cluster, http: reqwest::Client::new(), _stop: stop }
    }

    /// `method path` with `authorization` as the header's value, if any.
    async fn send_as(&self, method: Method, path: &str, authorization: Option<&str>) -> Answer {
        self.send_from(&self.http, method, path, authorization).await
    }

    /// `method path` with `Bearer token`.
    async fn send(&self, method: Method, path: &str, token: &str) -> Answer {
        self.send_as(method, path, Some(&format!("Bearer {token}"))).await
    }

    /// `method path` through `client` (a source address of its own).
    async fn send_from(
        &self,
        client: &reqwest::Client,
        method: Method,
        path: &str,
        authorization: Option<&str>,
    ) -> Answer {
        let write = matches!(method, Method::PUT | Method::POST);
        let mut request = client.request(method, format!("http://{}{path}", self.addr));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        if write {
            request = request.body("v");
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap();
        Answer { status, headers, body }
    }

    /// The values the node holds for `key`.
    async fn values(&self, key: &str) -> Vec<bytes::Bytes> {
        self.cluster.node(0).unwrap().get(key.as_bytes(), ReadOptions::default()).await.unwrap().values
    }
}

/// A client whose connections leave from `source` (a loopback address).
fn client_from(source: &str) -> reqwest::Client {
    let source: IpAddr = source.parse().unwrap();
    reqwest::Client::builder().local_address(source).build().unwrap()
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The JSON error message; panics unless the answer is one.
    fn error(&self) -> String {
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
        let body: Value = serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"));
        body["error"].as_str().unwrap_or_else(|| panic!("no error message: {body}")).to_string()
    }

    /// A `401` with the challenge `challenge`, whose message says `why`.
    fn assert_unauthenticated(&self, challenge: &str, why: &str) {
        assert_eq!(self.status, StatusCode::UNAUTHORIZED, "{self:?}");
        assert_eq!(self.header("www-authenticate"), Some(challenge), "{self:?}");
        let message = self.error();
        assert!(message.contains(why), "{message:?} should say {why:?}");
    }

    /// A `403` naming `token` and the `scope` it lacks.
    fn assert_forbidden(&self, token: &str, scope: &str) {
        assert_eq!(self.status, StatusCode::FORBIDDEN, "{self:?}");
        let message = self.error();
        assert!(message.starts_with(&format!("token '{token}' lacks scope {scope}")), "{message:?}");
    }
}

const OPEN: &str = "Bearer realm=\"dynamo\"";
const INVALID: &str = "Bearer realm=\"dynamo\", error=\"invalid_token\"";

/// No token, a malformed header, an unknown token and an expired one are
/// each `401` JSON with the challenge, saying which, never echoing the
/// token; nothing they ask is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_are_401_with_a_challenge() {
    let keys = Keys::new();
    let server = Server::start(&keys, limits(0, 0)).await;

    let none = server.send_as(Method::PUT, "/kv/k", None).await;
    none.assert_unauthenticated(OPEN, "requires a bearer token");
    for malformed in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer two words", &keys.reader] {
        let answer = server.send_as(Method::GET, "/kv/k", Some(malformed)).await;
        answer.assert_unauthenticated(OPEN, "malformed Authorization header");
        assert!(!answer.body.contains(&keys.reader[4..]), "the token is never echoed: {answer:?}");
    }
    let guess = generate_token().unwrap();
    let unknown = server.send(Method::PUT, "/kv/k", &guess).await;
    unknown.assert_unauthenticated(INVALID, "unknown token");
    assert!(!unknown.body.contains(&guess[4..]), "{unknown:?}");
    let expired = server.send(Method::GET, "/admin/members", &keys.expired).await;
    expired.assert_unauthenticated(INVALID, "token 'old' has expired");
    assert!(!expired.body.contains(&keys.expired[4..]), "{expired:?}");
    assert!(server.values("k").await.is_empty(), "no refused write was stored");

    // Each refusal is counted, by reason, in /metrics.
    let metrics = server.send(Method::GET, "/metrics", &keys.admin).await;
    let line = metrics
        .body
        .lines()
        .find(|l| l.starts_with("dynamo_http_refused_total{reason=\"unauthenticated\"}"))
        .unwrap_or_else(|| panic!("no refusal count: {}", metrics.body));
    assert!(line.ends_with(" 7"), "7 requests were refused 401: {line}");
}

/// `read` reads keys only; `write` writes and deletes keys only; `admin`
/// does everything; `/health` needs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_scope_reaches_what_it_should_and_no_further() {
    let keys = Keys::new();
    let server = Server::start(&keys, limits(0, 0)).await;

    // read
    assert_eq!(server.send(Method::GET, "/kv/k", &keys.reader).await.status, StatusCode::NOT_FOUND);
    assert_eq!(server.send(Method::HEAD, "/kv/k", &keys.reader).await.status, StatusCode::NOT_FOUND);
    server.send(Method::PUT, "/kv/k", &keys.reader).await.assert_forbidden("reader", "write");
    server.send(Method::DELETE, "/kv/k", &keys.reader).await.assert_forbidden("reader", "write");
    server.send(Method::GET, "/metrics", &keys.reader).await.assert_forbidden("reader", "admin");
    server.send(Method::GET, "/admin/members", &keys.reader).await.assert_forbidden("reader", "admin");
    server.send(Method::POST, "/admin/aae/run", &keys.reader).await.assert_forbidden("reader", "admin");
    assert_eq!(server.send(Method::GET, "/nowhere", &keys.reader).await.status, StatusCode::NOT_FOUND);
    // Spellings of admin paths that the scope check reads as other paths
    // reach no admin route either.
    for path in ["/%61dmin/members", "//admin/members", "/%6Detrics", "/metrics/", "/Admin/members"] {
        let answer = server.send(Method::GET, path, &keys.reader).await;
        assert!(matches!(answer.status, StatusCode::NOT_FOUND | StatusCode::FORBIDDEN), "{path}: {answer:?}");
    }
    assert!(server.values("k").await.is_empty());

    // write
    assert_eq!(server.send(Method::PUT, "/kv/k", &keys.writer).await.status, StatusCode::NO_CONTENT);
    assert_eq!(server.values("k").await, vec![bytes::Bytes::from_static(b"v")]);
    server.send(Method::GET, "/kv/k", &keys.writer).await.assert_forbidden("writer", "read");
    server.send(Method::GET, "/admin/ring", &keys.writer).await.assert_forbidden("writer", "admin");
    server.send(Method::POST, "/admin/cluster/clear", &keys.writer).await.assert_forbidden("writer", "admin");
    server.send(Method::GET, "/metrics", &keys.writer).await.assert_forbidden("writer", "admin");
    let forbidden = server.send(Method::GET, "/metrics", &keys.writer).await;
    assert_eq!(
        forbidden.header("www-authenticate"),
        Some("Bearer realm=\"dynamo\", error=\"insufficient_scope\", scope=\"admin\"")
    );
    assert_eq!(server.send(Method::DELETE, "/kv/k", &keys.writer).await.status, StatusCode::NO_CONTENT);
    assert!(server.values("k").await.is_empty());

    // admin
    assert_eq!(server.send(Method::PUT, "/kv/a", &keys.admin).await.status, StatusCode::NO_CONTENT);
    let read = server.send(Method::GET, "/kv/a", &keys.admin).await;
    assert_eq!((read.status, read.body.as_str()), (StatusCode::OK, "v"));
    let metrics = server.send(Method::GET, "/metrics", &keys.admin).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics.body.contains("dynamo_request_duration_seconds"), "{}", metrics.body);
    let members = server.send(Method::GET, "/admin/members", &keys.admin).await;
    assert_eq!(members.status, StatusCode::OK, "{members:?}");
    assert!(serde_json::from_str::<Value>(&members.body).unwrap()["members"].is_array());
    assert_eq!(server.send(Method::DELETE, "/kv/a", &keys.admin).await.status, StatusCode::NO_CONTENT);

    // /health: open to all, whatever the header says.
    for auth in [None, Some("Bearer nonsense"), Some("Basic x")] {
        let health = server.send_as(Method::GET, "/health", auth).await;
        assert_eq!(health.status, StatusCode::OK, "{auth:?}: {health:?}");
    }
}

/// With a rate limit, one token's flood gets `429` with `Retry-After`
/// while another token from the same address is served, and `/health`
/// stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tokens_flood_is_rate_limited_while_another_token_is_served() {
    let keys = Keys::new();
    let server = Server::start(&keys, limits(1, 5)).await;
    let mut passed = 0;
    let mut refused = None;
    for _ in 0..50 {
        let answer = server.send(Method::GET, "/kv/absent", &keys.flooder).await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(answer);
            break;
        }
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{answer:?}");
        passed += 1;
    }
    let refused = refused.expect("50 requests at once and none over the limit");
    assert!((5..=7).contains(&passed), "{passed} requests passed before the first 429");
    let retry: u64 = refused.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let message = refused.error();
    assert!(message.contains("too many requests with token 'flooder'"), "{message}");
    assert!(!message.contains(&keys.flooder[4..]), "{message}");

    // The flooder's write over the limit changes nothing.
    let write = server.send(Method::PUT, "/kv/flooded", &keys.flooder).await;
    assert_eq!(write.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(server.values("flooded").await.is_empty());

    // Another token, same address: served.
    let served = server.send(Method::PUT, "/kv/served", &keys.other).await;
    assert_eq!(served.status, StatusCode::NO_CONTENT, "{served:?}");
    assert_eq!(server.values("served").await, vec![bytes::Bytes::from_static(b"v")]);

    // Health checks are never limited nor authenticated.
    assert_eq!(server.send_as(Method::GET, "/health", None).await.status, StatusCode::OK);

    // Both 429s are counted.
    let metrics = server.send(Method::GET, "/metrics", &keys.admin).await;
    assert!(
        metrics.body.lines().any(|l| l == "dynamo_http_refused_total{reason=\"rate_limited\"} 2"),
        "{}",
        metrics.body
    );
}

/// Requests without a valid token count against their address, checked
/// before the `401`: guessing tokens meets the limit, while a valid token
/// from that address, and another address, are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_rate_limited_per_address_before_their_401() {
    let keys = Keys::new();
    let server = Server::start(&keys, limits(1, 3)).await;
    let guesser = client_from("127.0.0.2");
    let mut refused = None;
    for i in 0..50 {
        let guess = format!("Bearer dyn_guess{i}");
        let answer = server.send_from(&guesser, Method::GET, "/kv/k", Some(&guess)).await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(answer);
            break;
        }
        answer.assert_unauthenticated(INVALID, "unknown token");
    }
    let refused = refused.expect("50 bad tokens and none over the limit");
    assert!(refused.error().contains("too many requests from 127.0.0.2"), "{refused:?}");
    let none = server.send_from(&guesser, Method::GET, "/kv/k", None).await;
    assert_eq!(none.status, StatusCode::TOO_MANY_REQUESTS, "no token counts against the address too");

    // A valid token from the same address is its own client.
    let valid =
        server.send_from(&guesser, Method::GET, "/kv/k", Some(&format!("Bearer {}", keys.reader))).await;
    assert_eq!(valid.status, StatusCode::NOT_FOUND, "{valid:?}");
    // Another address is still told what is wrong.
    let elsewhere = server.send_from(&client_from("127.0.0.3"), Method::GET, "/kv/k", None).await;
    elsewhere.assert_unauthenticated(OPEN, "requires a bearer token");
}

// ---- the real binary ----

/// Runs `dynamo-server args` without `DYNAMO_TOKEN` unless `token` is given.
async fn run_binary(args: &[&str], token: Option<&str>) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_dynamo-server"));
    command.args(args).env_remove("DYNAMO_TOKEN").env_remove("DYNAMO_URL");
    if let Some(token) = token {
        command.env("DYNAMO_TOKEN", token);
    }
    tokio::time::timeout(DEADLINE, command.output()).await.expect("the command finishes").unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A one-node cluster of real processes using the tokens file `file`.
fn one_node(file: Option<PathBuf>) -> ProcCluster {
    ProcCluster::start_with(1, move |c| c.http.tokens_file = file.clone())
}

/// Waits until node 0 of `cluster` exits, and its status.
async fn exit_of(cluster: &mut ProcCluster) -> std::process::ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = cluster.nodes[0].child.as_mut().unwrap().try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "serve still running; log:\n{}", cluster.log(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each kind of bad tokens file refuses `serve` before the store is
/// opened, with a message naming the file, the entry and the problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_files_refuse_the_start_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = |name: &str, token: &str| {
        format!("[[token]]\nname = \"{name}\"\nscopes = [\"read\"]\nsha256 = \"{}\"\n", hash_hex(token))
    };
    let cases = [
        (
            "duplicate-name",
            format!("{}{}", good("app", "t1"), good("app", "t2")),
            "token #2 (\"app\"): the name is already used by token #1",
        ),
        (
            "bad-scope",
            good("app", "t1").replace("\"read\"", "\"root\""),
            "token #1 (\"app\"): unknown scope \"root\"",
        ),
        (
            "bad-hash",
            good("app", "t1").replace(&hash_hex("t1"), "c0ffee"),
            "token #1 (\"app\"): sha256 must be 64 hex digits",
        ),
        (
            "unknown-field",
            format!("{}owner = \"bob\"\n", good("app", "t1")),
            "token #1 (\"app\"): unknown field `owner`",
        ),
        (
            "duplicate-hash",
            format!("{}{}", good("app", "t1"), good("web", "t1")),
            "token #2 (\"web\"): the same sha256 as token #1",
        ),
    ];
    for (label, contents, expected) in cases {
        let file = dir.path().join(format!("{label}.toml"));
        std::fs::write(&file, contents).unwrap();
        let mut cluster = one_node(Some(file.clone()));
        let status = exit_of(&mut cluster).await;
        let log = cluster.log(0);
        assert!(!status.success(), "{label}: serve started; log:\n{log}");
        let message = format!("tokens file {}: {expected}", file.display());
        assert!(log.contains(&message), "{label}: the log should say {message:?}:\n{log}");
        assert!(!log.contains(&hash_hex("t1")), "{label}: hashes are never shown:\n{log}");
        // Refused before the store was opened: the node's directory holds
        // only what the test wrote.
        let node_dir = cluster.nodes[0].config.parent().unwrap().to_path_buf();
        let mut files: Vec<String> = std::fs::read_dir(&node_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["dynamo.toml", "node.log"], "{label}");
    }
    let mut missing = one_node(Some(dir.path().join("absent.toml")));
    assert!(!exit_of(&mut missing).await.success());
    assert!(missing.log(0).contains("cannot read tokens file"), "{}", missing.log(0));
}

/// Without a tokens file the node starts, serves anyone, and says at
/// `warn` that its API is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_tokens_warns_that_its_api_is_open() {
    let cluster = one_node(None).ready().await;
    let log = cluster.log(0);
    let line = log
        .lines()
        .find(|l| l.contains("open to anyone who can reach it"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("WARN"), "{line}");
    // A SIGHUP (what an operator sends after editing a tokens file) does
    // not stop a node that has none.
    let pid = cluster.nodes[0].child.as_ref().expect("node running").id();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + DEADLINE;
    while !cluster.log(0).contains("nothing to reload") {
        assert!(Instant::now() < deadline, "{}", cluster.log(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.client(0).put("k", bytes::Bytes::from_static(b"v"), None, None).await.unwrap();
}

/// `token create` prints a token that the client commands then use
/// against a node reading the file; `list` shows it without its hash;
/// `revoke` removes it, and the node refuses it after a SIGHUP, while a
/// broken file at a SIGHUP is reported and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_create_list_revoke_and_the_printed_token_authenticates() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let f = path_str(&file);
    let create = |name: &'static str, scopes: &'static [&'static str]| {
        let f = f.to_string();
        async move {
            let mut args = vec!["token", "create", "--file", &f, "--name", name];
            for s in scopes {
                args.extend(["--scope", s]);
            }
            let out = run_binary(&args, None).await;
            assert!(out.status.success(), "{}", text(&out.stderr));
            assert!(text(&out.stderr).contains("only time it is shown"), "{}", text(&out.stderr));
            let token = text(&out.stdout).trim().to_string();
            assert!(token.starts_with("dyn_") && token.len() == 47, "{token:?}");
            token
        }
    };
    let app = create("app", &["read", "write"]).await;
    let ops = create("ops", &["admin"]).await;
    let dup = run_binary(&["token", "create", "--file", f, "--name", "app", "--scope", "read"], None).await;
    assert!(!dup.status.success());
    assert!(text(&dup.stderr).contains("a token named \"app\" already exists"), "{}", text(&dup.stderr));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let listed = run_binary(&["token", "list", "--file", f], None).await;
    let listing = text(&listed.stdout);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert!(
        listing.contains("app") && listing.contains("read, write") && listing.contains("ops"),
        "{listing}"
    );
    assert!(!listing.contains(&hash_hex(&app)) && !listing.contains(&app), "{listing}");

    let mut cluster = one_node(Some(file.clone())).ready().await;
    let url = cluster.url(0).to_string();
    let put = run_binary(&["put", "cart", "milk", "--url", &url], Some(&app)).await;
    assert!(put.status.success(), "{}", text(&put.stderr));
    let get = run_binary(&["get", "cart", "--url", &url], Some(&app)).await;
    assert_eq!(text(&get.stdout), "milk\n", "{}", text(&get.stderr));
    // The token from a file, trimmed.
    let token_file = dir.path().join("app.token");
    std::fs::write(&token_file, format!("{app}\n")).unwrap();
    let get = run_binary(&["get", "cart", "--url", &url, "--token-file", path_str(&token_file)], None).await;
    assert_eq!(text(&get.stdout), "milk\n", "{}", text(&get.stderr));

    // Without a token, and without the scope: clear errors, no secret shown.
    let anonymous = run_binary(&["get", "cart", "--url", &url], None).await;
    assert!(!anonymous.status.success());
    let err = text(&anonymous.stderr);
    assert!(err.contains("the node requires a token: set DYNAMO_TOKEN or --token-file"), "{err}");
    let status = run_binary(&["status", "--url", &url], Some(&app)).await;
    let err = text(&status.stderr);
    assert!(!status.status.success() && err.contains("token 'app' lacks scope admin"), "{err}");
    assert!(!err.contains(&app), "{err}");
    let cluster_status = run_binary(&["cluster", "status", "--url", &url], Some(&app)).await;
    assert!(
        text(&cluster_status.stderr).contains("token 'app' lacks scope admin"),
        "{}",
        text(&cluster_status.stderr)
    );
    let status = run_binary(&["status", "--url", &url], Some(&ops)).await;
    assert!(status.status.success(), "{}", text(&status.stderr));
    let aae =
        run_binary(&["aae", "status", "--url", &url, "--token-file", path_str(&token_file)], None).await;
    assert!(text(&aae.stderr).contains("token 'app' lacks scope admin"), "{}", text(&aae.stderr));
    let bad = run_binary(&["get", "cart", "--url", &url], Some(&generate_token().unwrap())).await;
    assert!(
        text(&bad.stderr).contains("the node refused the token (unknown token)"),
        "{}",
        text(&bad.stderr)
    );

    // Revoked, and the node told by SIGHUP: refused from then on, without
    // a restart; the other token goes on working.
    let revoked = run_binary(&["token", "revoke", "--file", f, "--name", "app"], None).await;
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    let listing = text(&run_binary(&["token", "list", "--file", f], None).await.stdout);
    assert!(!listing.contains("app") && listing.contains("ops"), "{listing}");
    let hangup = || {
        let pid = cluster.nodes[0].child.as_ref().expect("node running").id();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGHUP)
            .unwrap();
    };
    hangup();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let get = run_binary(&["get", "cart", "--url", &url], Some(&app)).await;
        if text(&get.stderr).contains("unknown token") {
            break;
        }
        assert!(Instant::now() < deadline, "the revoked token still works: {}", cluster.log(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let get = run_binary(&["get", "cart", "--url", &url], Some(&ops)).await;
    assert_eq!(text(&get.stdout), "milk\n", "{}", text(&get.stderr));

    // A broken file at the next SIGHUP is reported and changes nothing.
    std::fs::write(&file, "[[token]]\nname = \"broken\"\n").unwrap();
    hangup();
    let deadline = Instant::now() + DEADLINE;
    while !cluster.log(0).contains("tokens file NOT reloaded") {
        assert!(Instant::now() < deadline, "no report of the bad file: {}", cluster.log(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let get = run_binary(&["get", "cart", "--url", &url], Some(&ops)).await;
    assert_eq!(text(&get.stdout), "milk\n", "the tokens in use stay: {}", text(&get.stderr));

    // The CLI, like the node, refuses to build on a broken file.
    assert!(cluster.terminate(0).success());
    let added =
        run_binary(&["token", "create", "--file", f, "--name", "ops2", "--scope", "admin"], None).await;
    assert!(!added.status.success(), "the CLI refuses to add to a broken file");
}
