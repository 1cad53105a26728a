//! The yardstick `bench` measures beside the cluster in the same run: one
//! process serving `GET`/`PUT`/`DELETE /kv/{key}` from an in-memory map,
//! unreplicated and without persistence, behind the very HTTP stack a
//! node uses (the same listener, limits, hyper settings and body reading).
//! Its figures are what the HTTP layer alone allows on this machine under
//! the same load, so the cluster's figures read as ratios to them.
//!
//! `bench` runs it as a child process of the same binary (the hidden
//! `bench-baseline` command), which prints `listening on ADDR` once it
//! accepts connections.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io::Write as _;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use crate::config::HttpConfig;
use crate::http::read_value;
use crate::http_listener::HttpLimits;
use crate::process::ProcessMetrics;

/// Shards of the map: enough that 64 workers rarely meet on a lock.
const SHARDS: usize = 64;

/// How long the baseline may take to start listening.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The line the child prints once it listens.
const READY_PREFIX: &str = "listening on ";

/// The baseline's state: keys to values, sharded, and its metrics.
struct MemoryKv {
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<HashMap<String, Bytes>>>,
    max_value_size: usize,
    registry: Registry,
    process: ProcessMetrics,
}

impl MemoryKv {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("dynamo");
        let process = ProcessMetrics::register(&mut registry);
        MemoryKv {
            hasher: std::collections::hash_map::RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            max_value_size: dynamo_core::config::Config::default().max_value_size,
            registry,
            process,
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, HashMap<String, Bytes>> {
        let i = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        self.shards[i].lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn get_kv(State(kv): State<Arc<MemoryKv>>, Path(key): Path<String>) -> Response {
    match kv.shard(&key).get(&key).cloned() {
        Some(value) => ([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({ "error": "not found" }))).into_response(),
    }
}

async fn put_kv(State(kv): State<Arc<MemoryKv>>, Path(key): Path<String>, body: Body) -> Response {
    match read_value(body, kv.max_value_size).await {
        Ok(value) => {
            kv.shard(&key).insert(key, value);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn delete_kv(State(kv): State<Arc<MemoryKv>>, Path(key): Path<String>) -> StatusCode {
    kv.shard(&key).remove(&key);
    StatusCode::NO_CONTENT
}

async fn metrics(State(kv): State<Arc<MemoryKv>>) -> Response {
    kv.process.update();
    let mut out = String::new();
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &kv.registry);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// The baseline's routes: `/kv/{key}`, `/health`, `/metrics` (its CPU).
pub(crate) fn router() -> Router {
    Router::new()
        .route("/kv/{key}", get(get_kv).put(put_kv).delete(delete_kv))
        .route("/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(MemoryKv::new()))
}

/// `dynamo-server bench-baseline`: serves the baseline on `listen` (port 0
/// picks one) with a node's default HTTP limits until Ctrl-C; prints
/// `listening on ADDR` on stdout once it accepts.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(listen: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{READY_PREFIX}{addr}")?;
        out.flush()?;
    }
    let limits =
        HttpLimits::new(&HttpConfig::default(), dynamo_core::config::Config::default().request_timeout());
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    crate::http_listener::serve(listener, router(), limits, shutdown).await;
    Ok(())
}

/// A baseline process started by `bench`; killed when dropped.
pub(crate) struct Baseline {
    /// Its URL, `http://127.0.0.1:port`.
    pub(crate) url: String,
    _child: Child,
}

impl Baseline {
    /// Starts `bench-baseline` from this binary on a free loopback port
    /// and waits until it listens.
    ///
    /// # Errors
    /// The binary cannot be found or started, or it exits before listening.
    pub(crate) async fn start() -> anyhow::Result<Baseline> {
        let exe = std::env::current_exe().context("cannot find this binary to start the baseline")?;
        let mut child = Command::new(exe)
            .args(["bench-baseline", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the baseline")?;
        let stdout = child.stdout.take().context("the baseline's output")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
            .await
            .context("the baseline did not say it listens within 10 s")?
            .context("reading the baseline's first line")?;
        let addr = line
            .as_deref()
            .and_then(|l| l.strip_prefix(READY_PREFIX))
            .with_context(|| format!("the baseline did not start (it said {line:?})"))?;
        Ok(Baseline { url: format!("http://{addr}"), _child: child })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    async fn call(app: &Router, method: &str, uri: &str, body: &'static [u8]) -> (StatusCode, Bytes) {
        let req = axum::http::Request::builder().method(method).uri(uri).body(Body::from(body)).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        (status, axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap())
    }

    #[tokio::test]
    async fn the_baseline_stores_reads_and_deletes_values() {
        let app = router();
        assert_eq!(call(&app, "GET", "/kv/a", b"").await.0, StatusCode::NOT_FOUND);
        assert_eq!(call(&app, "PUT", "/kv/a", b"one").await.0, StatusCode::NO_CONTENT);
        assert_eq!(call(&app, "PUT", "/kv/b", b"two").await.0, StatusCode::NO_CONTENT);
        assert_eq!(call(&app, "GET", "/kv/a", b"").await, (StatusCode::OK, Bytes::from_static(b"one")));
        assert_eq!(call(&app, "DELETE", "/kv/a", b"").await.0, StatusCode::NO_CONTENT);
        assert_eq!(call(&app, "GET", "/kv/a", b"").await.0, StatusCode::NOT_FOUND);
        assert_eq!(call(&app, "GET", "/kv/b", b"").await.1, Bytes::from_static(b"two"));
        assert_eq!(call(&app, "GET", "/health", b"").await.0, StatusCode::OK);
        let (status, text) = call(&app, "GET", "/metrics", b"").await;
        assert_eq!(status, StatusCode::OK);
        let cpu = super::super::client::cpu_seconds_in(std::str::from_utf8(&text).unwrap());
        assert!(cpu.is_some_and(|s| s > 0.0), "{}", String::from_utf8_lossy(&text));
    }

    #[tokio::test]
    async fn a_value_over_the_limit_is_refused_and_not_stored() {
        let app = router();
        let big: &'static [u8] = Box::leak(vec![0u8; 1024 * 1024 + 1].into_boxed_slice());
        assert_eq!(call(&app, "PUT", "/kv/big", big).await.0, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(call(&app, "GET", "/kv/big", b"").await.0, StatusCode::NOT_FOUND);
    }
}
