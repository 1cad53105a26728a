//! The HTTP client API, the contract other tools rely on.
//!
//! - `PUT /kv/{key}`: the body is the value; optional `X-Dynamo-Context`
//!   header and `?w=`. 204 with the new `X-Dynamo-Context`.
//! - `GET /kv/{key}`: optional `?r=`. With `Accept: application/json`,
//!   always JSON `{"context": "...", "values": ["<base64>", ...]}` (200, or
//!   404 with an empty list). Otherwise: 200 with the raw value and its
//!   context, 300 with the JSON form when there are siblings, 404 when
//!   missing or deleted.
//! - `DELETE /kv/{key}`: optional `X-Dynamo-Context`. 204.
//! - Errors are JSON `{"error": "...", ...}`, whatever the route: 400 bad
//!   key (empty, or with an unencoded `/`), context or parameter; 404
//!   unknown route; 405 method not allowed (with `Allow`); 408 body not
//!   received in time; 409 too many siblings; 413 value too large
//!   (refused from `Content-Length` before the body is read); 503 quorum
//!   failed (with `acks` and `required`); 504 deadline passed. What hyper
//!   refuses before a request reaches the router (408 head timeout, 431
//!   head too large, 400 malformed) and 503 too many connections are
//!   answered in the same form by [`crate::http_listener`].
//! - `GET /health`, `/metrics`, `/admin/ring[?key=]`, `/admin/members`,
//!   `/admin/hints`, `/admin/local/{key}` (what this node itself stores).
//! - Topology changes and their progress ([`crate::admin_cluster`]):
//!   `GET /admin/cluster`, `POST /admin/cluster/{join,leave,remove}/{id}`,
//!   `GET /admin/cluster/plan`, `POST /admin/cluster/commit[?epoch=N]`,
//!   `POST /admin/cluster/clear`, `GET /admin/handoff`; a refused change
//!   is 400, a stale plan 409, a node that has no ring yet 503.
//! - Anti-entropy, tombstone purge and admission control
//!   ([`crate::admin_aae`]): `GET /admin/aae`, `POST /admin/aae/run`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, HttpBody as _};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use dynamo_core::causality::{Context, Sibling, SiblingSet};
use dynamo_core::node::{Node, ReadOptions, WriteOptions};
use dynamo_core::Error;
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http_listener::BodyTimeout;
use crate::metrics::{BackgroundSample, MetricsFormat, PeerSample, ServerMetrics, TransferCounts};

/// The header carrying the opaque causal context.
pub const CONTEXT_HEADER: &str = "x-dynamo-context";

/// What every handler shares.
pub struct AppState {
    /// The node requests go to.
    pub node: Node,
    /// The metrics registry.
    pub metrics: ServerMetrics,
}

/// The API's routes. Every answer that is an error carries a JSON body,
/// unknown routes and methods included.
pub fn router(state: Arc<AppState>) -> Router {
    // PUT reads its body itself (see `read_value`); any extractor that
    // buffers a body is held to the value limit too.
    let body_limit = state.node.config().max_value_size;
    Router::new()
        .route("/kv/{key}", get(get_kv).put(put_kv).delete(delete_kv))
        // A key is one path segment: `/kv/` has none, `/kv/a/b` has two.
        .route("/kv/", get(empty_key).put(empty_key).delete(empty_key))
        .route("/kv/{key}/", get(key_with_slash).put(key_with_slash).delete(key_with_slash))
        .route("/kv/{key}/{*rest}", get(key_with_slash).put(key_with_slash).delete(key_with_slash))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/admin/ring", get(admin_ring))
        .route("/admin/members", get(admin_members))
        .route("/admin/hints", get(admin_hints))
        .route("/admin/local/{key}", get(admin_local))
        .route("/admin/local/", get(empty_key))
        .route("/admin/local/{key}/", get(key_with_slash))
        .route("/admin/local/{key}/{*rest}", get(key_with_slash))
        .merge(crate::admin_cluster::routes())
        .merge(crate::admin_aae::routes())
        // After the routes: it applies to those registered before it.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// An error answer: a status and a JSON body with at least `error`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
    /// Ask the client to close the connection (the request was not read whole).
    close: bool,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, body: json!({ "error": message.into() }), close: false }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if self.close {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        let (status, body) = match &e {
            Error::EmptyKey
            | Error::KeyTooLong { .. }
            | Error::InvalidContext(_)
            | Error::InvalidContentType(_)
            | Error::InvalidQuorum { .. }
            | Error::TopologyRefused(_) => (StatusCode::BAD_REQUEST, json!({ "error": message })),
            Error::StalePlan { planned, current } => {
                (StatusCode::CONFLICT, json!({ "error": message, "planned": planned, "current": current }))
            }
            Error::ValueTooLarge { size, max } => {
                (StatusCode::PAYLOAD_TOO_LARGE, json!({ "error": message, "size": size, "max": max }))
            }
            Error::TooManySiblings { count, max, .. } => {
                (StatusCode::CONFLICT, json!({ "error": message, "siblings": count, "max": max }))
            }
            Error::QuorumFailed { acks, needed } => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": message, "acks": acks, "required": needed }),
            ),
            Error::Timeout { acks, needed } => {
                (StatusCode::GATEWAY_TIMEOUT, json!({ "error": message, "acks": acks, "required": needed }))
            }
            Error::ShuttingDown | Error::NotReady(_) | Error::Overloaded(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, json!({ "error": message }))
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": message })),
        };
        ApiError { status, body, close: false }
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::bad_request(format!("bad key in path: {}", e.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::bad_request(format!("bad query parameter: {}", e.body_text()))
    }
}

impl From<axum::Error> for ApiError {
    /// A request body that could not be read: 408 when it did not arrive
    /// in time, else 400 (cut short, malformed chunks). The connection is
    /// closed either way: the rest of the body is not read.
    fn from(e: axum::Error) -> Self {
        let e = e.into_inner();
        let mut error = match e.downcast_ref::<BodyTimeout>() {
            Some(timeout) => ApiError::new(StatusCode::REQUEST_TIMEOUT, timeout.to_string()),
            None => ApiError::bad_request(format!("cannot read the request body: {e}")),
        };
        error.close = true;
        error
    }
}

/// Fails like the node would for an empty or overlong key or a W outside
/// `1..=N`, before a body is read (so no `100 Continue` is sent for a
/// write that will fail). The context is checked as it is decoded.
fn check_write(node: &Node, key: &[u8], w: Option<usize>) -> Result<(), ApiError> {
    let config = node.config();
    if key.is_empty() {
        return Err(Error::EmptyKey.into());
    }
    if key.len() > config.max_key_len {
        return Err(Error::KeyTooLong { len: key.len(), max: config.max_key_len }.into());
    }
    if let Some(w) = w.filter(|&w| w == 0 || w > config.n) {
        return Err(Error::InvalidQuorum { name: "w".into(), value: w, n: config.n }.into());
    }
    Ok(())
}

/// Reads a value of at most `max` bytes. A `Content-Length` over the limit
/// is refused before the first read (so no `100 Continue` is sent), a
/// chunked body as soon as it crosses it. Memory grows as bytes arrive.
pub(crate) async fn read_value(body: Body, max: usize) -> Result<Bytes, ApiError> {
    let announced = usize::try_from(body.size_hint().lower()).unwrap_or(usize::MAX);
    if announced > max {
        let mut error = ApiError::from(Error::ValueTooLarge { size: announced, max });
        error.close = true;
        return Err(error);
    }
    let mut stream = body.into_data_stream();
    let mut chunks = Vec::new();
    let mut len = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        len = len.saturating_add(chunk.len());
        if len > max {
            return Err(ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                body: json!({ "error": format!("value exceeds the limit of {max} bytes"), "max": max }),
                close: true,
            });
        }
        chunks.push(chunk);
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => chunks.concat().into(),
    })
}

/// The media type of a value written without one, as Riak.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// The `Content-Type` a PUT gives its value, if any.
fn content_type_of(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match headers.get(header::CONTENT_TYPE) {
        None => Ok(None),
        Some(v) => {
            v.to_str().map(Some).map_err(|_| ApiError::bad_request("Content-Type is not visible ASCII"))
        }
    }
}

/// Encodes a context for the header and JSON bodies.
pub fn encode_context(context: &Context, key: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(context.encode(key))
}

fn decode_context(headers: &HeaderMap, key: &[u8]) -> Result<Option<Context>, ApiError> {
    let Some(value) = headers.get(CONTEXT_HEADER) else { return Ok(None) };
    let text = value.to_str().map_err(|_| ApiError::bad_request("X-Dynamo-Context is not ASCII"))?;
    if text.is_empty() {
        return Ok(None);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|e| ApiError::bad_request(format!("X-Dynamo-Context is not base64url: {e}")))?;
    Context::decode(&bytes, key).map(Some).map_err(|e| ApiError::from(Error::InvalidContext(e.to_string())))
}

fn context_header(context: &Context, key: &[u8]) -> [(header::HeaderName, HeaderValue); 1] {
    let value = HeaderValue::from_str(&encode_context(context, key)).unwrap_or(HeaderValue::from_static(""));
    [(header::HeaderName::from_static(CONTEXT_HEADER), value)]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadParams {
    r: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteParams {
    w: Option<usize>,
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.split(',').any(|p| p.trim().starts_with("application/json")))
}

fn outcome<T>(result: &Result<T, ApiError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) if e.status == StatusCode::NOT_FOUND => "not_found",
        Err(_) => "error",
    }
}

async fn get_kv(
    State(state): State<Arc<AppState>>,
    key: Result<Path<String>, PathRejection>,
    params: Result<Query<ReadParams>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let start = Instant::now();
    let result = async {
        let Path(key) = key?;
        let Query(params) = params?;
        let got = state.node.get(key.as_bytes(), ReadOptions { r: params.r, timeout: None }).await?;
        let ctx = encode_context(&got.context, key.as_bytes());
        let json_body = || {
            let types: Vec<&str> =
                got.content_types.iter().map(|t| t.as_deref().unwrap_or(OCTET_STREAM)).collect();
            json!({
                "context": ctx,
                "values": got.values.iter().map(|v| STANDARD.encode(v)).collect::<Vec<_>>(),
                "content_types": types,
            })
        };
        let headers_out = context_header(&got.context, key.as_bytes());
        Ok::<_, ApiError>(match (wants_json(&headers), got.values.len()) {
            (true, 0) => (StatusCode::NOT_FOUND, headers_out, Json(json_body())).into_response(),
            (true, _) => (StatusCode::OK, headers_out, Json(json_body())).into_response(),
            (false, 0) => {
                (StatusCode::NOT_FOUND, headers_out, Json(json!({ "error": "not found" }))).into_response()
            }
            (false, 1) => {
                let content_type = got.content_types[0].as_deref().unwrap_or(OCTET_STREAM);
                let content_type = HeaderValue::from_str(content_type)
                    .unwrap_or_else(|_| HeaderValue::from_static(OCTET_STREAM));
                (StatusCode::OK, headers_out, [(header::CONTENT_TYPE, content_type)], got.values[0].clone())
                    .into_response()
            }
            (false, _) => (StatusCode::MULTIPLE_CHOICES, headers_out, Json(json_body())).into_response(),
        })
    }
    .await;
    let response = result.unwrap_or_else(IntoResponse::into_response);
    let outcome = match response.status() {
        StatusCode::OK | StatusCode::MULTIPLE_CHOICES => "ok",
        StatusCode::NOT_FOUND => "not_found",
        _ => "error",
    };
    state.metrics.observe("get", outcome, start.elapsed());
    response
}

async fn put_kv(
    State(state): State<Arc<AppState>>,
    key: Result<Path<String>, PathRejection>,
    params: Result<Query<WriteParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    write_kv(&state, key, params, &headers, Some(body)).await
}

async fn delete_kv(
    State(state): State<Arc<AppState>>,
    key: Result<Path<String>, PathRejection>,
    params: Result<Query<WriteParams>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    write_kv(&state, key, params, &headers, None).await
}

/// A put (`body` given) or a delete (none): 204 with the new context.
/// Everything about the request is checked before its body is read.
async fn write_kv(
    state: &AppState,
    key: Result<Path<String>, PathRejection>,
    params: Result<Query<WriteParams>, QueryRejection>,
    headers: &HeaderMap,
    body: Option<Body>,
) -> Response {
    let start = Instant::now();
    let op = if body.is_some() { "put" } else { "delete" };
    let result = async {
        let Path(key) = key?;
        let Query(params) = params?;
        check_write(&state.node, key.as_bytes(), params.w)?;
        let context = decode_context(headers, key.as_bytes())?;
        let opts = WriteOptions { w: params.w, timeout: None };
        let new_context = match body {
            Some(body) => {
                let content_type = content_type_of(headers)?;
                let value = read_value(body, state.node.config().max_value_size).await?;
                state.node.put_typed(key.as_bytes(), value, content_type, context.as_ref(), opts).await?
            }
            None => state.node.delete(key.as_bytes(), context.as_ref(), opts).await?,
        };
        Ok::<_, ApiError>(
            (StatusCode::NO_CONTENT, context_header(&new_context, key.as_bytes())).into_response(),
        )
    }
    .await;
    state.metrics.observe(op, outcome(&result), start.elapsed());
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn empty_key(uri: Uri) -> ApiError {
    ApiError::bad_request(format!("the key is empty: the path must be {}{{key}}", uri.path()))
}

/// A path with more segments after `/kv/` or `/admin/local/`: a key with
/// an unencoded `/`. 400 rather than 404, which a client reads as "no
/// such key" (and a PUT could never fix).
async fn key_with_slash(uri: Uri) -> ApiError {
    let path = uri.path();
    let prefix = if path.starts_with("/admin/local/") { "/admin/local/" } else { "/kv/" };
    let key = path.strip_prefix(prefix).unwrap_or(path);
    ApiError::bad_request(format!(
        "a key is one path segment: percent-encode '/' in a key as %2F ({prefix}{})",
        key.replace('/', "%2F")
    ))
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such resource: {}; the API serves /kv/{{key}}, /health, /metrics and /admin/ring, /admin/members, /admin/hints, /admin/local/{{key}}, /admin/cluster (join, leave, remove, plan, commit, clear), /admin/handoff, /admin/aae (and POST /admin/aae/run)",
            uri.path()
        ),
    )
}

/// Answers 405; the router adds the `Allow` header.
async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}; the Allow header lists those that are", uri.path()),
    )
}

async fn health(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({ "status": "ok", "node": state.node.id().0 }))
}

/// Prometheus text 0.0.4, or OpenMetrics when the `Accept` header asks for it.
async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let pending =
        state.node.pending_hints().await.map(|h| h.iter().map(|(_, n)| *n as u64).sum()).unwrap_or(0);
    let format = MetricsFormat::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let me = state.node.id();
    let peers: Vec<PeerSample> = state
        .node
        .membership()
        .view()
        .members()
        .iter()
        .filter(|m| m.id != me)
        .map(|m| {
            let health = state.node.peer_health(m.id);
            PeerSample { peer: m.id.0, up: health.available, phi: health.phi }
        })
        .collect();
    let transfers = TransferCounts::of(&state.node.handoff_status());
    let background = BackgroundSample::of(&state.node.admission(), &state.node.aae_status());
    let text = state.metrics.render(format, &state.node.metrics(), pending, &peers, transfers, background);
    ([(header::CONTENT_TYPE, format.content_type())], text).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RingParams {
    key: Option<String>,
}

async fn admin_ring(
    State(state): State<Arc<AppState>>,
    params: Result<Query<RingParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params?;
    let view = state.node.membership().view();
    let ring = view.require_ring()?;
    if let Some(key) = params.key {
        let partition = ring.partition_of(key.as_bytes());
        let ids = |s: &[dynamo_core::member::NodeId]| s.iter().map(|n| n.0).collect::<Vec<_>>();
        return Ok(Json(json!({
            "key": key,
            "partition": partition,
            "preference_list": ids(ring.preference_list(partition)),
            "fallbacks": ids(&ring.walk(partition)[ring.preference_list(partition).len()..]),
        })));
    }
    let members: Vec<Value> = ring
        .members()
        .iter()
        .map(|m| json!({ "id": m.id.0, "addr": m.addr, "zone": m.zone, "capacity": m.capacity, "partitions": ring.owned_count(m.id) }))
        .collect();
    Ok(Json(json!({
        "partitions": ring.partitions(),
        "n": ring.replicas(),
        "epoch": ring.epoch(),
        "members": members,
        "owners": ring.owners().iter().map(|n| n.0).collect::<Vec<_>>(),
    })))
}

/// Every member the node knows (from its configuration or gossip): its
/// addresses, membership status, and whether this node's failure detector
/// counts it up, with phi and the time since it was last heard from.
async fn admin_members(State(state): State<Arc<AppState>>) -> Json<Value> {
    let view = state.node.membership().view();
    let me = state.node.id();
    let members: Vec<Value> = view
        .members()
        .iter()
        .map(|m| {
            let health = state.node.peer_health(m.id);
            let (up, phi, heard) = if m.id == me {
                (true, None, None)
            } else {
                (health.available, health.phi.map(|p| (p * 1000.0).round() / 1000.0), health.last_heard)
            };
            json!({
                "id": m.id.0,
                "addr": m.addr,
                "http": m.client_addr,
                "zone": m.zone,
                "capacity": m.capacity,
                "membership": m.status,
                "status": if up { "up" } else { "down" },
                "phi": phi,
                "last_heard_ms": heard.map(|d| d.as_millis() as u64),
                "self": m.id == me,
            })
        })
        .collect();
    Json(json!({ "members": members, "gossip": state.node.gossip_state().is_some() }))
}

async fn admin_hints(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let pending = state.node.pending_hints().await?;
    let m = state.node.metrics();
    Ok(Json(json!({
        "pending": pending.iter().map(|(owner, count)| json!({ "owner": owner.0, "count": count })).collect::<Vec<_>>(),
        "stored": m.hints_stored,
        "delivered": m.hints_delivered,
    })))
}

fn sibling_json(s: &Sibling) -> Value {
    json!({
        "dot": { "node": s.dot.actor.node.0, "epoch": s.dot.actor.epoch, "counter": s.dot.counter },
        "timestamp_us": s.timestamp_us,
        "value": s.value.as_ref().map(|v| STANDARD.encode(v)),
        "content_type": s.content_type,
        "tombstone": s.is_tombstone(),
    })
}

fn state_json(state: &SiblingSet, key: &[u8]) -> Value {
    json!({
        "siblings": state.siblings().iter().map(sibling_json).collect::<Vec<_>>(),
        "context": encode_context(&Context::new(state.context().clone()), key),
    })
}

async fn admin_local(
    State(state): State<Arc<AppState>>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(key) = key?;
    let local = state.node.local_state(key.as_bytes()).await?;
    Ok(Json(json!({
        "node": state.node.id().0,
        "key": key,
        "partition": local.partition,
        "preference_list": local.preference_list.iter().map(|n| n.0).collect::<Vec<_>>(),
        "data": local.data.as_ref().map(|s| state_json(s, key.as_bytes())),
        "hints": local.hints.iter().map(|(owner, s)| json!({ "owner": owner.0, "state": state_json(s, key.as_bytes()) })).collect::<Vec<_>>(),
    })))
}
