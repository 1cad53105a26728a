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
//! - Errors are JSON `{"error": "...", ...}`: 400 bad key, context or
//!   parameter; 409 too many siblings; 413 value too large; 503 quorum
//!   failed (with `acks` and `required`); 504 deadline passed.
//! - `GET /health`, `/metrics`, `/admin/ring[?key=]`, `/admin/members`,
//!   `/admin/hints`, `/admin/local/{key}` (what this node itself stores).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use dynamo_core::causality::{Context, Sibling, SiblingSet};
use dynamo_core::node::{Node, ReadOptions, WriteOptions};
use dynamo_core::Error;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::MemberConfig;
use crate::metrics::ServerMetrics;

/// The header carrying the opaque causal context.
pub const CONTEXT_HEADER: &str = "x-dynamo-context";

/// What every handler shares.
pub struct AppState {
    /// The node requests go to.
    pub node: Node,
    /// The metrics registry.
    pub metrics: ServerMetrics,
    /// The configured members, for the admin API.
    pub members: Vec<MemberConfig>,
}

/// The API's routes.
pub fn router(state: Arc<AppState>) -> Router {
    // Room for the largest value; a larger body is refused before it is
    // read whole (Content-Length is checked first).
    let body_limit = state.node.config().max_value_size;
    Router::new()
        .route("/kv/{key}", get(get_kv).put(put_kv).delete(delete_kv))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/admin/ring", get(admin_ring))
        .route("/admin/members", get(admin_members))
        .route("/admin/hints", get(admin_hints))
        .route("/admin/local/{key}", get(admin_local))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// An error answer: a status and a JSON body with at least `error`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, body: json!({ "error": message.into() }) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        let (status, body) = match &e {
            Error::EmptyKey
            | Error::KeyTooLong { .. }
            | Error::InvalidContext(_)
            | Error::InvalidQuorum { .. } => (StatusCode::BAD_REQUEST, json!({ "error": message })),
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
            Error::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, json!({ "error": message })),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": message })),
        };
        ApiError { status, body }
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

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        let status = e.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request body exceeds the value size limit".to_string()
        } else {
            format!("cannot read the request body: {}", e.body_text())
        };
        ApiError { status, body: json!({ "error": message }) }
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
            json!({ "context": ctx, "values": got.values.iter().map(|v| STANDARD.encode(v)).collect::<Vec<_>>() })
        };
        let headers_out = context_header(&got.context, key.as_bytes());
        Ok::<_, ApiError>(match (wants_json(&headers), got.values.len()) {
            (true, 0) => (StatusCode::NOT_FOUND, headers_out, Json(json_body())).into_response(),
            (true, _) => (StatusCode::OK, headers_out, Json(json_body())).into_response(),
            (false, 0) => {
                (StatusCode::NOT_FOUND, headers_out, Json(json!({ "error": "not found" }))).into_response()
            }
            (false, 1) => (StatusCode::OK, headers_out, got.values[0].clone()).into_response(),
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
    body: Result<Bytes, BytesRejection>,
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
async fn write_kv(
    state: &AppState,
    key: Result<Path<String>, PathRejection>,
    params: Result<Query<WriteParams>, QueryRejection>,
    headers: &HeaderMap,
    body: Option<Result<Bytes, BytesRejection>>,
) -> Response {
    let start = Instant::now();
    let op = if body.is_some() { "put" } else { "delete" };
    let result = async {
        let Path(key) = key?;
        let Query(params) = params?;
        let context = decode_context(headers, key.as_bytes())?;
        let opts = WriteOptions { w: params.w, timeout: None };
        let new_context = match body {
            Some(body) => state.node.put(key.as_bytes(), body?, context.as_ref(), opts).await?,
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

async fn health(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({ "status": "ok", "node": state.node.id().0 }))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let pending =
        state.node.pending_hints().await.map(|h| h.iter().map(|(_, n)| *n as u64).sum()).unwrap_or(0);
    let text = state.metrics.render(&state.node.metrics(), pending);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
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
    let ring = state.node.ring();
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

async fn admin_members(State(state): State<Arc<AppState>>) -> Json<Value> {
    let ring = state.node.ring();
    let members: Vec<Value> = ring
        .members()
        .iter()
        .map(|m| {
            let http = state.members.iter().find(|c| c.id == m.id.0).and_then(|c| c.http.clone());
            json!({ "id": m.id.0, "addr": m.addr, "http": http, "zone": m.zone, "capacity": m.capacity, "self": m.id == state.node.id() })
        })
        .collect();
    Json(json!({ "members": members }))
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
