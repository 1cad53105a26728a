//! The HTTP port: accepts connections up to a limit and serves each with
//! hyper's HTTP/1 and the API's router, within the configured timeouts,
//! until a graceful shutdown.
//!
//! Where each limit is enforced:
//!
//! - connections: a semaphore of `max_connections` permits, one held by
//!   each connection's task; over it, a new connection gets `503` JSON and
//!   is closed at once, without a task or a read;
//! - request head size: hyper's `max_header_size`, answered `431`;
//! - header and idle timeouts, and the JSON body of hyper's own answers:
//!   the connection's byte stream as hyper sees it (module `http_conn_io`);
//! - body timeout: each request body's reads fail with [`BodyTimeout`]
//!   once the deadline passes (the API answers `408`);
//! - client authentication (`tokens_file`): checked before a request is
//!   routed, answered `401` or `403` JSON with `WWW-Authenticate` (module
//!   [`auth`]);
//! - requests per client (`rate_limit_per_s`), a client being its token
//!   when it has a valid one, else its address: checked before a request
//!   is routed (and before a bad token is answered), answered `429` JSON
//!   with `Retry-After` (module [`rate_limit`](crate::rate_limit));
//! - graceful shutdown: stop accepting, let hyper close idle connections
//!   and finish in-flight requests, wait for them up to `drain_timeout`.
//!
//! Every connection ends with a lingering close: the server sends its FIN,
//! then reads and discards what the client still sends for a moment, so an
//! answer given before the request was read whole (`413`, `408`, `431`)
//! reaches a client that is still sending instead of being lost to a reset.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use axum::Router;
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::auth;
use crate::config::HttpConfig;
use crate::http_conn_io::{ConnIo, ConnProgress, ResponseDone};
use crate::metrics::HttpRefusals;
use crate::rate_limit::{retry_after_secs, ClientRateLimiter, RateKey};
use crate::tokens::TokenStore;

/// How long a closing connection keeps reading (and discarding) what the
/// client still sends, so that it reads our answer rather than a reset.
const LINGER: Duration = Duration::from_secs(2);

/// Pause after an accept error that is not about one connection (such as
/// running out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(200);

/// The HTTP port's limits (see [`HttpConfig`] for their meaning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Deadline for a request head.
    pub header_timeout: Duration,
    /// Deadline for a request body, from its first read.
    pub body_timeout: Duration,
    /// Deadline for the next request on a keep-alive connection.
    pub idle_timeout: Duration,
    /// Most connections served at once.
    pub max_connections: usize,
    /// Largest request head in bytes, inclusive.
    pub max_header_bytes: usize,
    /// At shutdown, how long in-flight requests may take to finish before
    /// their connections are dropped.
    pub drain_timeout: Duration,
    /// Requests a second per client (token, or address without one); 0
    /// for no limit.
    pub rate_limit_per_s: u32,
    /// Requests at once per client (0: `rate_limit_per_s`).
    pub rate_limit_burst: u32,
}

impl HttpLimits {
    /// The limits of `[http]`; a request in flight at shutdown gets as long
    /// as a slow but legal one may take: its head, its body, and
    /// `request_timeout` (the node's deadline for a client request).
    pub fn new(http: &HttpConfig, request_timeout: Duration) -> Self {
        let header_timeout = Duration::from_millis(http.header_timeout_ms);
        let body_timeout = Duration::from_millis(http.body_timeout_ms);
        HttpLimits {
            header_timeout,
            body_timeout,
            idle_timeout: Duration::from_millis(http.idle_timeout_ms),
            max_connections: http.max_connections,
            max_header_bytes: http.max_header_bytes,
            drain_timeout: header_timeout.saturating_add(body_timeout).saturating_add(request_timeout),
            rate_limit_per_s: http.rate_limit_per_s,
            rate_limit_burst: http.rate_limit_burst,
        }
    }
}

/// A request body that did not arrive within the body timeout: the error
/// its reads fail with.
#[derive(Debug, Clone, thiserror::Error)]
#[error("request body not received within {} ms (http.body_timeout_ms)", .timeout.as_millis())]
pub struct BodyTimeout {
    /// The configured body timeout.
    pub timeout: Duration,
}

/// A complete HTTP/1.1 answer with a JSON `{"error": message}` body that
/// closes the connection: for answers written without hyper.
pub(crate) fn json_error_response(status: StatusCode, message: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

/// Serves `router` on `listener` within `limits` until `shutdown`
/// resolves, then stops accepting and waits for in-flight requests (at
/// most `limits.drain_timeout`). Sets `TCP_NODELAY` on every connection.
/// Plaintext, and no client authentication: every request is served to
/// anyone who reaches the port (see [`serve_secured`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    serve_secured(listener, router, limits, ClientSecurity::default(), shutdown).await;
}

/// What the HTTP port asks of its clients; the default asks nothing.
#[derive(Clone, Default)]
pub struct ClientSecurity {
    /// Every request but `/health` must carry a bearer token of these that
    /// grants the scope it needs (module [`auth`]); `None`: no
    /// authentication.
    pub tokens: Option<Arc<TokenStore>>,
    /// Every connection is TLS with this configuration, its handshake due
    /// within the header timeout; `None`: plaintext HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Where requests refused before routing (`401`, `403`, `429`) are
    /// counted (`ServerMetrics::http_refusals`); the default counts into
    /// nothing exported.
    pub refusals: HttpRefusals,
}

impl std::fmt::Debug for ClientSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecurity")
            .field("tokens", &self.tokens.as_ref().map(|t| t.path().to_path_buf()))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// [`serve`], with the client authentication and TLS of `security`.
pub async fn serve_secured(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    security: ClientSecurity,
    shutdown: impl Future<Output = ()>,
) {
    let ClientSecurity { tokens, tls, refusals } = security;
    let tls = tls.map(TlsAcceptor::from);
    let rate_limit =
        ClientRateLimiter::from_config(limits.rate_limit_per_s, limits.rate_limit_burst).map(Arc::new);
    let limits = Arc::new(limits);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut http = http1::Builder::new();
    // ConnIo keeps the header and idle deadlines (hyper's would close idle
    // connections after the header timeout, without a 408).
    http.header_read_timeout(None).keep_alive(true).max_header_size(limits.max_header_bytes);
    if limits.max_header_bytes >= 400 * 1024 {
        // hyper's read buffer (default ~400 KiB) must hold the largest head.
        http.max_buf_size(limits.max_header_bytes + 1);
    }
    let http = Arc::new(http);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "HTTP connection task failed");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match Arc::clone(&permits).try_acquire_owned() {
                    Ok(permit) => {
                        let _ = stream.set_nodelay(true);
                        let connection = Connection {
                            http: Arc::clone(&http),
                            router: router.clone(),
                            limits: Arc::clone(&limits),
                            client: peer.ip(),
                            rate_limit: rate_limit.clone(),
                            tokens: tokens.clone(),
                            refusals: refusals.clone(),
                            stop: stop_rx.clone(),
                            _permit: permit,
                        };
                        connections.spawn(connection.start(stream, peer, tls.clone()));
                    }
                    Err(_) => refuse(&stream, peer, limits.max_connections),
                },
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept HTTP connections; pausing");
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                        () = &mut shutdown => break,
                    }
                }
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let open = connections.len();
    tracing::info!(connections = open, "HTTP port closed; finishing in-flight requests");
    let drained = tokio::time::timeout(limits.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "HTTP connections still open after {} ms; closing them",
            limits.drain_timeout.as_millis()
        );
        connections.shutdown().await;
    }
}

/// Errors of one connection that failed during accept: not a reason to pause.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// A connection over the limit: a `503` if the socket takes it at once
/// (a fresh socket's send buffer does), then closed. No task, no read.
fn refuse(stream: &TcpStream, peer: std::net::SocketAddr, max: usize) {
    let answer = json_error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("too many connections: this node serves at most {max} at once (http.max_connections); retry later"),
        &[("retry-after", "1")],
    );
    let _ = stream.try_write(&answer);
    tracing::debug!(%peer, max, "HTTP connection refused: too many connections");
}

/// One accepted connection and what serving it needs.
struct Connection {
    http: Arc<http1::Builder>,
    router: Router,
    limits: Arc<HttpLimits>,
    /// The client's address, which its requests without a valid token
    /// are rate-limited by.
    client: IpAddr,
    rate_limit: Option<Arc<ClientRateLimiter>>,
    tokens: Option<Arc<TokenStore>>,
    refusals: HttpRefusals,
    stop: watch::Receiver<bool>,
    /// Returned when the connection is closed.
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    /// Serves the connection, after its TLS handshake when `tls` is set
    /// (due within the header timeout, else the connection is closed).
    async fn start(self, stream: TcpStream, peer: std::net::SocketAddr, tls: Option<TlsAcceptor>) {
        let Some(acceptor) = tls else {
            return self.run(stream).await;
        };
        match tokio::time::timeout(self.limits.header_timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => self.run(stream).await,
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTP connection closed: TLS handshake failed"),
            Err(_) => {
                tracing::debug!(%peer, "HTTP connection closed: TLS handshake not complete within the header timeout")
            }
        }
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(mut self, mut stream: S) {
        let progress = Arc::new(ConnProgress::default());
        let result = {
            let io = TokioIo::new(ConnIo::new(&mut stream, Arc::clone(&progress), Arc::clone(&self.limits)));
            let service = ConnService {
                router: self.router.clone(),
                progress,
                body_timeout: self.limits.body_timeout,
                client: self.client,
                rate_limit: self.rate_limit.clone(),
                tokens: self.tokens.clone(),
                refusals: self.refusals.clone(),
            };
            let conn = self.http.serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => result,
                () = stopped(&mut self.stop) => {
                    // Closes the connection if idle, else after the response in flight.
                    conn.as_mut().graceful_shutdown();
                    conn.as_mut().await
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "HTTP connection ended");
        }
        linger_close(&mut stream).await;
    }
}

/// Resolves once the server stops (or is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Sends FIN, then discards what the client still sends until it closes
/// or [`LINGER`] passes.
async fn linger_close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let _ = stream.shutdown().await;
    let mut scratch = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = stream.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// The hyper service of one connection: the router, with each request
/// first admitted (its token, its client's rate limit), its body under the
/// body timeout, and each response counted in [`ConnProgress`] once hyper
/// is done with it.
#[derive(Clone)]
struct ConnService {
    router: Router,
    progress: Arc<ConnProgress>,
    body_timeout: Duration,
    client: IpAddr,
    rate_limit: Option<Arc<ClientRateLimiter>>,
    tokens: Option<Arc<TokenStore>>,
    refusals: HttpRefusals,
}

impl ConnService {
    /// The answer to a request refused before routing, `None` when it may
    /// go on. `/health` always may. With authentication on, a request with
    /// a valid token is rate-limited by the token, then needs its scope
    /// (`403`); one without is rate-limited by its address, then refused
    /// (`401`): a flood of bad tokens meets the limit too. Without
    /// authentication, every request is rate-limited by its address.
    fn admit(&self, request: &Request<Incoming>) -> Option<Response<Body>> {
        let path = request.uri().path();
        let needed = auth::required_scope(request.method(), path)?;
        let Some(store) = &self.tokens else {
            return self.over_rate_limit(&RateKey::address(self.client));
        };
        let tokens = store.current();
        let authorization = request.headers().get(header::AUTHORIZATION);
        match auth::authenticate(&tokens, authorization, SystemTime::now()) {
            Ok(token) => {
                if let Some(refused) = self.over_rate_limit(&RateKey::token(Arc::clone(&token.name))) {
                    return Some(refused);
                }
                let forbidden = auth::authorize(token, needed, request.method(), path).err()?;
                self.refusals.forbidden();
                tracing::debug!(client = %self.client, token = %token.name, needed = %needed, "HTTP request refused: token lacks the scope");
                Some(forbidden.response())
            }
            Err(refusal) => {
                if let Some(refused) = self.over_rate_limit(&RateKey::address(self.client)) {
                    return Some(refused);
                }
                self.refusals.unauthenticated();
                tracing::debug!(client = %self.client, reason = %refusal, "HTTP request refused: not authenticated");
                Some(refusal.response())
            }
        }
    }

    /// The `429` for a request over the rate limit of `key`, its client;
    /// `None` when it may go on (no limit, or within it).
    fn over_rate_limit(&self, key: &RateKey) -> Option<Response<Body>> {
        let limiter = self.rate_limit.as_ref()?;
        let wait = limiter.check_key(key).err()?;
        let secs = retry_after_secs(wait);
        self.refusals.rate_limited();
        tracing::debug!(client = %self.client, key = %key, retry_after_s = secs, "HTTP request over its client's rate limit");
        let from = match key {
            RateKey::Address(_) => format!("from {key}"),
            RateKey::Token(_) => format!("with {key}"),
        };
        let body = serde_json::json!({
            "error": format!("too many requests {from}: over http.rate_limit_per_s; retry after {secs} s")
        });
        Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header("content-type", "application/json")
            .header("retry-after", secs.to_string())
            .body(Body::from(body.to_string()))
            .ok()
    }
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.progress.request_started();
        let done = ResponseDone(Arc::clone(&self.progress));
        if let Some(refused) = self.admit(&request) {
            return Box::pin(async move { Ok(refused.map(|body| ResponseBody { body, _done: done })) });
        }
        let request = request.map(|body| TimedBody { body, timeout: self.body_timeout, deadline: None });
        let router = self.router.clone();
        Box::pin(async move {
            let response = router.oneshot(request).await?;
            Ok(response.map(|body| ResponseBody { body, _done: done }))
        })
    }
}

/// A response body that marks the response done when hyper drops it.
struct ResponseBody {
    body: Body,
    _done: ResponseDone,
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that must arrive whole within `timeout` of its first read.
struct TimedBody {
    body: Incoming,
    timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let timeout = this.timeout;
        let deadline = this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout { timeout })))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
