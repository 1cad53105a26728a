//! Active anti-entropy with the real binary: three `serve` processes
//! (N=3, R=2, W=2, read repair off, a short anti-entropy interval), node 3
//! killed with SIGKILL, 5,000 keys written through nodes 1 and 2, node 3
//! restarted with the same command. With N=3 on three nodes there is no
//! fallback to hold hints, and nobody reads: only the Merkle-tree
//! exchanges can bring node 3's own copies up to date. Node 3's stored
//! state (`/admin/local/{key}`, no quorum read) is polled until every key
//! holds its written value.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use dynamo_server::client::ApiClient;
use futures::StreamExt as _;
use serde_json::Value;
use support::ProcCluster;

/// Keys written while node 3 is down.
const KEYS: u32 = 5_000;

/// How long anti-entropy may take to repair every key on node 3, from its
/// restart. A round runs every 500 ms; the deadline is for slow debug
/// builds on a shared 2-core machine.
const REPAIR_DEADLINE: Duration =
    if cfg!(debug_assertions) { Duration::from_secs(120) } else { Duration::from_secs(60) };

/// Keys checked at once on node 3, and the pause between two checks of
/// the keys still missing.
const CHECKS_IN_FLIGHT: usize = 64;
const POLL: Duration = Duration::from_millis(250);

fn value_of(k: u32) -> String {
    format!("value of key-{k}")
}

/// Writes every key at W=2 through nodes 1 and 2 in turn, 32 at a time.
async fn write_keys(clients: &[ApiClient]) {
    let results: Vec<Result<(), String>> = futures::stream::iter(0..KEYS)
        .map(|k| {
            let client = clients[k as usize % clients.len()].clone();
            async move {
                client
                    .put(&format!("key-{k}"), Bytes::from(value_of(k)), None, Some(2))
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("key-{k}: {e:#}"))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(failed.is_empty(), "{} writes failed at W=2, first: {}", failed.len(), failed[0]);
}

/// Whether node `client` itself stores `key-{k}` with exactly its value.
async fn holds(client: &ApiClient, k: u32) -> Result<bool, String> {
    let local = client.json(&format!("/admin/local/key-{k}")).await.map_err(|e| format!("key-{k}: {e:#}"))?;
    let want = Value::from(base64::engine::general_purpose::STANDARD.encode(value_of(k)));
    let siblings = local["data"]["siblings"].as_array().map_or(&[][..], Vec::as_slice);
    Ok(siblings.len() == 1 && siblings[0]["value"] == want && siblings[0]["tombstone"] == false)
}

/// The keys of `keys` that `client` does not hold yet.
async fn still_missing(client: &ApiClient, keys: &BTreeSet<u32>) -> Result<BTreeSet<u32>, String> {
    let checked: Vec<Result<Option<u32>, String>> = futures::stream::iter(keys.iter().copied())
        .map(|k| async move { holds(client, k).await.map(|held| (!held).then_some(k)) })
        .buffer_unordered(CHECKS_IN_FLIGHT)
        .collect()
        .await;
    checked.into_iter().filter_map(Result::transpose).collect()
}

async fn call(method: reqwest::Method, url: String) -> (u16, Option<String>, Value) {
    let resp = reqwest::Client::new().request(method, &url).send().await.unwrap();
    let status = resp.status().as_u16();
    let allow = resp.headers().get("allow").and_then(|v| v.to_str().ok()).map(str::to_string);
    let content_type = resp.headers().get("content-type").cloned();
    let text = resp.text().await.unwrap();
    assert_eq!(
        content_type.as_ref().and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "{url}: {text}"
    );
    (status, allow, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn metric(client: &ApiClient, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", client.base())).await.unwrap().text().await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    match scrape.samples.iter().find(|s| s.metric == name).map(|s| &s.value) {
        Some(prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v)) => *v,
        other => panic!("{name}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_repairs_a_restarted_node_without_reads_or_hints() {
    let started = Instant::now();
    let mut cluster = ProcCluster::start_with(3, |c| {
        c.cluster.aae_interval_ms = 500;
        c.cluster.read_repair = false;
    })
    .ready()
    .await;
    let writers: Vec<ApiClient> = (0..2).map(|i| cluster.client(i)).collect();
    cluster.kill(2);
    let write_started = Instant::now();
    write_keys(&writers).await;
    let write_time = write_started.elapsed();
    // No fallback took the writes for node 3: hinted handoff has nothing
    // to deliver, so whatever node 3 gets comes from anti-entropy.
    for (i, client) in writers.iter().enumerate() {
        let hints = client.json("/admin/hints").await.unwrap();
        assert_eq!(hints["stored"], 0, "node {} stored hints: {hints}", i + 1);
        assert_eq!(hints["pending"], serde_json::json!([]), "node {}: {hints}", i + 1);
    }

    cluster.restart(2).await;
    let restarted = Instant::now();
    let node3 = cluster.client(2);
    let mut missing: BTreeSet<u32> = (0..KEYS).collect();
    let mut rounds = 0;
    loop {
        rounds += 1;
        missing = match still_missing(&node3, &missing).await {
            Ok(left) => left,
            // A transient failure of the check: the same keys again.
            Err(e) => {
                assert!(restarted.elapsed() < REPAIR_DEADLINE, "node 3 cannot be asked: {e}");
                missing
            }
        };
        if missing.is_empty() {
            break;
        }
        if restarted.elapsed() >= REPAIR_DEADLINE {
            let status = node3.json("/admin/aae").await.map(|s| {
                let mut s = s;
                s.as_object_mut().map(|o| o.remove("partitions"));
                s
            });
            panic!(
                "{} of {KEYS} keys still missing on node 3 after {REPAIR_DEADLINE:?} ({rounds} checks), first: {:?}; /admin/aae: {status:?}; log:\n{}",
                missing.len(),
                missing.iter().take(5).collect::<Vec<_>>(),
                cluster.log(2)
            );
        }
        tokio::time::sleep(POLL).await;
    }
    let repair_time = restarted.elapsed();

    // Anti-entropy did it, and says so.
    let status = node3.json("/admin/aae").await.unwrap();
    assert_eq!(status["enabled"], true, "{status}");
    assert_eq!(status["node"], 3, "{status}");
    let repaired = status["keys_repaired"].as_u64().unwrap();
    // Each key node 3 lacked changed its state once (as initiator or peer).
    assert!(repaired >= u64::from(KEYS), "node 3 counts {repaired} keys repaired, not {KEYS}: {status}");
    assert!(status["trees_ready"].as_u64().unwrap() > 0, "{status}");
    assert!(status["admission"]["slots"].as_u64().unwrap() >= 1, "{status}");
    assert_eq!(metric(&node3, "dynamo_aae_keys_repaired_total").await, repaired as f64);
    assert!(metric(&node3, "dynamo_aae_trees_ready").await > 0.0);
    assert!(metric(&node3, "dynamo_background_slots").await >= 1.0);
    for client in (0..3).map(|i| cluster.client(i)) {
        assert_eq!(metric(&client, "dynamo_read_repairs_total").await, 0.0, "{}", client.base());
        assert_eq!(metric(&client, "dynamo_hints_delivered_total").await, 0.0, "{}", client.base());
    }

    // A round now, over replicas already in sync: every exchange
    // succeeds and repairs nothing.
    let url = cluster.url(2).to_string();
    let (code, _, report) = call(reqwest::Method::POST, format!("{url}/admin/aae/run")).await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["node"], 3, "{report}");
    assert!(report["exchanges"].as_u64().unwrap() > 0, "{report}");
    assert_eq!((report["failed"].as_u64(), report["keys_repaired"].as_u64()), (Some(0), Some(0)), "{report}");
    assert!(report["purged"].is_u64(), "{report}");

    // Bad requests are the API's JSON errors and change nothing.
    let (code, allow, body) = call(reqwest::Method::GET, format!("{url}/admin/aae/run")).await;
    assert_eq!(code, 405, "{body}");
    assert_eq!(allow.as_deref(), Some("POST"), "{body}");
    assert!(body["error"].as_str().unwrap().contains("GET is not allowed on /admin/aae/run"), "{body}");
    let (code, _, body) = call(reqwest::Method::DELETE, format!("{url}/admin/aae")).await;
    assert_eq!(code, 405, "{body}");
    let (code, _, body) = call(reqwest::Method::POST, format!("{url}/admin/aae/run?partition=3")).await;
    assert_eq!(code, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("partition"), "{body}");
    let (code, _, body) = call(reqwest::Method::GET, format!("{url}/admin/aae/nowhere")).await;
    assert_eq!(code, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("/admin/aae"), "{body}");
    assert!(holds(&node3, 0).await.unwrap() && holds(&node3, KEYS - 1).await.unwrap());

    eprintln!(
        "anti-entropy: {KEYS} keys written at W=2 in {:.1} s with node 3 down; node 3 repaired in {:.1} s from its restart ({rounds} checks, keys_repaired {repaired}, {} exchanges, {} bytes received); {:.1} s in all",
        write_time.as_secs_f64(),
        repair_time.as_secs_f64(),
        status["exchanges"],
        status["bytes_received"],
        started.elapsed().as_secs_f64(),
    );
}
