//! The topology admin API (`/admin/cluster…`, `/admin/handoff`) in
//! process: a gossiping cluster of the testkit (simulated network,
//! `MemStore`, real time, short intervals) with nodes 4 and 5 known by
//! gossip and owning nothing, each node behind the real router and
//! listener on 127.0.0.1. Every refused request is checked to change
//! nothing; every wait is for a condition, with a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dynamo_core::config::Config;
use dynamo_core::node::{Node, WriteOptions};
use dynamo_server::http::{router, AppState};
use dynamo_server::http_listener::{self, HttpLimits};
use dynamo_server::metrics::ServerMetrics;
use dynamo_testkit::Cluster;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(30);

fn config() -> Config {
    Config {
        partitions: 64,
        gossip_interval_ms: 100,
        handoff_interval_ms: 100,
        hint_delivery_interval_ms: 200,
        // Real time on a loaded two-core machine: a replica's disk sync can
        // take more than half a second.
        replica_timeout_ms: 2_000,
        request_timeout_ms: 10_000,
        ..Config::default()
    }
}

fn limits() -> HttpLimits {
    HttpLimits {
        header_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        max_connections: 64,
        max_header_bytes: 8192,
        drain_timeout: Duration::from_secs(1),
        rate_limit_per_s: 0,
        rate_limit_burst: 0,
    }
}

/// One node's HTTP API on 127.0.0.1.
struct Api {
    addr: SocketAddr,
    http: reqwest::Client,
}

impl Api {
    async fn serve(node: Node) -> Api {
        let state = Arc::new(AppState { node, metrics: ServerMetrics::new() });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(http_listener::serve(listener, router(state), limits(), std::future::pending()));
        Api { addr, http: reqwest::Client::new() }
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let resp = self.http.request(method, format!("http://{}{path}", self.addr)).send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path).await
    }

    async fn post(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::POST, path).await
    }

    async fn ok(&self, method: reqwest::Method, path: &str) -> Value {
        let (status, body) = self.call(method.clone(), path).await;
        assert_eq!(status, 200, "{method} {path}: {body}");
        body
    }

    /// `/admin/cluster` without the fields that move on their own.
    async fn topology(&self) -> Value {
        let mut cluster = self.ok(reqwest::Method::GET, "/admin/cluster").await;
        for m in cluster["members"].as_array_mut().unwrap() {
            m.as_object_mut().unwrap().remove("status");
        }
        for moving in ["settled", "settled_partitions", "moving_from_epoch"] {
            cluster.as_object_mut().unwrap().remove(moving);
        }
        cluster
    }

    async fn metrics(&self) -> prometheus_parse::Scrape {
        let resp = self.http.get(format!("http://{}/metrics", self.addr)).send().await.unwrap();
        let text = resp.text().await.unwrap();
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
    }
}

fn metric(scrape: &prometheus_parse::Scrape, name: &str, state: Option<&str>) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && state.is_none_or(|st| s.labels.get("state") == Some(st)))
        .unwrap_or_else(|| panic!("no {name} {state:?}"));
    match sample.value {
        prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
        ref other => panic!("{name} is {other:?}"),
    }
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        match check().await {
            Ok(()) => return,
            Err(e) => {
                assert!(Instant::now() < deadline, "{what}: still not after {DEADLINE:?}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Three founding nodes and two joiners known by gossip, every node's API served.
async fn cluster(config: Config) -> (Cluster, Vec<Api>) {
    let cluster = Cluster::builder().nodes(3).joiners(2).gossip().config(config).build().await.unwrap();
    cluster.wait_gossip_converged(DEADLINE).await.unwrap();
    let mut apis = Vec::new();
    for i in 0..cluster.len() {
        apis.push(Api::serve(cluster.node(i).unwrap()).await);
    }
    (cluster, apis)
}

async fn write_keys(cluster: &Cluster, count: usize) {
    for i in 0..count {
        let key = format!("k{i}");
        cluster
            .node(i % 3)
            .unwrap()
            .put(key.as_bytes(), Bytes::from(vec![b'v'; 100]), None, WriteOptions::default())
            .await
            .unwrap();
    }
}

/// join → plan → commit → handoff settles, through the API: every answer
/// says what an operator needs, the metrics count the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_is_staged_planned_committed_and_watched_through_the_api() {
    let (cluster, apis) = cluster(config()).await;
    write_keys(&cluster, 300).await;
    let api = &apis[0];

    let before = api.ok(reqwest::Method::GET, "/admin/cluster").await;
    let epoch = before["epoch"].as_u64().unwrap();
    assert_eq!(before["node"], 1);
    assert_eq!(before["gossip"], true);
    assert_eq!(before["staged"], json!([]));
    assert_eq!(before["settled"], true);
    let members = before["members"].as_array().unwrap();
    assert_eq!(members.len(), 5, "{before}");
    for m in members {
        let id = m["id"].as_u64().unwrap();
        let expected = if id <= 3 { "active" } else { "joining" };
        assert_eq!(m["status"], expected, "{m}");
        assert_eq!(m["in_ring"], id <= 3, "{m}");
        assert!(m["addr"].is_string(), "{m}");
    }

    let staged = api.ok(reqwest::Method::POST, "/admin/cluster/join/4").await;
    assert_eq!(staged, json!({ "staged": [{ "action": "join", "node": 4 }] }));
    let plan = api.ok(reqwest::Method::GET, "/admin/cluster/plan").await;
    assert_eq!(plan["base_epoch"], epoch);
    assert_eq!(plan["epoch"], epoch + 1);
    assert_eq!(plan["changes"], json!([{ "action": "join", "node": 4 }]));
    let transfers = plan["transfers"].as_array().unwrap();
    assert!(!transfers.is_empty() && transfers.iter().all(|t| t["to"] == 4), "{plan}");
    let share4 = plan["shares"].as_array().unwrap().iter().find(|s| s["node"] == 4).unwrap();
    assert_eq!(share4["owned_before"], 0);
    assert_eq!(share4["owned_after"], plan["ownership_moves"], "{plan}");

    let committed = api.ok(reqwest::Method::POST, &format!("/admin/cluster/commit?epoch={epoch}")).await;
    assert_eq!(committed, plan, "the commit applies the plan shown");
    let after = api.ok(reqwest::Method::GET, "/admin/cluster").await;
    assert_eq!(after["epoch"], epoch + 1);
    assert_eq!(after["staged"], json!([]));

    for api in &apis {
        wait_until("every node's /admin/handoff to settle on the new epoch", || async {
            let h = api.ok(reqwest::Method::GET, "/admin/handoff").await;
            match h["epoch"] == epoch + 1 && h["settled"] == true {
                true => Ok(()),
                false => Err(h.to_string()),
            }
        })
        .await;
    }
    let handoff = api.ok(reqwest::Method::GET, "/admin/handoff").await;
    assert_eq!(handoff["from_epoch"], epoch, "{handoff}");
    assert_eq!(handoff["settled_partitions"], handoff["partitions"]);
    assert_eq!(handoff["counts"]["done"], transfers.len(), "{handoff}");
    assert_eq!(handoff["transfers"].as_array().unwrap().len(), transfers.len());
    let after = api.ok(reqwest::Method::GET, "/admin/cluster").await;
    let four = after["members"].as_array().unwrap().iter().find(|m| m["id"] == 4).unwrap();
    assert_eq!((four["status"].as_str(), four["in_ring"].as_bool()), (Some("active"), Some(true)), "{after}");

    // The receiver counted what it took; the senders what they gave.
    let received = apis[3].metrics().await;
    assert_eq!(metric(&received, "dynamo_handoff_partitions_received_total", None), transfers.len() as f64);
    assert!(metric(&received, "dynamo_handoff_keys_received_total", None) > 0.0);
    assert!(metric(&received, "dynamo_handoff_bytes_received_total", None) > 0.0);
    assert_eq!(metric(&received, "dynamo_handoff_transfers", Some("done")), transfers.len() as f64);
    assert_eq!(metric(&received, "dynamo_handoff_transfers", Some("pending")), 0.0);
    assert_eq!(metric(&received, "dynamo_handoff_transfers", Some("active")), 0.0);
    let (mut keys_sent, mut bytes_sent) = (0.0, 0.0);
    for api in &apis[..3] {
        let scrape = api.metrics().await;
        keys_sent += metric(&scrape, "dynamo_handoff_keys_sent_total", None);
        bytes_sent += metric(&scrape, "dynamo_handoff_bytes_sent_total", None);
    }
    assert_eq!(keys_sent, metric(&received, "dynamo_handoff_keys_received_total", None));
    assert_eq!(bytes_sent, metric(&received, "dynamo_handoff_bytes_received_total", None));
    // Partitions that held keys are deleted from the nodes that lost them.
    wait_until("the nodes that lost partitions to drop them", || async {
        let mut dropped = 0.0;
        for api in &apis[..3] {
            dropped += metric(&api.metrics().await, "dynamo_handoff_partitions_dropped_total", None);
        }
        if dropped > 0.0 {
            Ok(())
        } else {
            Err("none dropped yet".to_string())
        }
    })
    .await;

    // Then node 4 leaves again: staged, committed without an epoch, settled.
    let staged = api.ok(reqwest::Method::POST, "/admin/cluster/leave/4").await;
    assert_eq!(staged, json!({ "staged": [{ "action": "leave", "node": 4 }] }));
    let left = api.ok(reqwest::Method::POST, "/admin/cluster/commit").await;
    assert_eq!(left["epoch"], epoch + 2);
    assert!(left["transfers"].as_array().unwrap().iter().all(|t| t["from"] == json!([4])), "{left}");
    cluster.wait_handoff_settled(DEADLINE).await.unwrap();
    cluster.shutdown().await;
}

/// Every bad request is refused with a JSON error and the right status,
/// and leaves the topology (ring epoch, members, staged changes) as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_topology_requests_are_refused_and_change_nothing() {
    let (cluster, apis) = cluster(config()).await;
    let api = &apis[0];
    let epoch = api.ok(reqwest::Method::GET, "/admin/cluster").await["epoch"].as_u64().unwrap();

    async fn refused(api: &Api, method: reqwest::Method, path: &str, status: u16, says: &str) -> Value {
        let before = api.topology().await;
        let (got, body) = api.call(method.clone(), path).await;
        assert_eq!(got, status, "{method} {path}: {body}");
        let error =
            body["error"].as_str().unwrap_or_else(|| panic!("{method} {path}: no JSON error: {body}"));
        assert!(error.contains(says), "{method} {path}: {error:?} should say {says:?}");
        assert_eq!(api.topology().await, before, "{method} {path} changed the topology");
        body
    }
    use reqwest::Method;
    // Nothing staged yet.
    refused(api, Method::POST, "/admin/cluster/join/four", 400, "\"four\" is not a node id").await;
    refused(api, Method::POST, "/admin/cluster/leave/-1", 400, "not a node id").await;
    refused(api, Method::POST, "/admin/cluster/join/99", 400, "unknown").await;
    refused(api, Method::POST, "/admin/cluster/join/2", 400, "already a member").await;
    refused(api, Method::POST, "/admin/cluster/leave/99", 400, "not a member").await;
    refused(api, Method::POST, "/admin/cluster/remove/5", 400, "not a member").await;
    refused(api, Method::POST, "/admin/cluster/remove/1", 400, "cannot remove itself").await;
    refused(api, Method::POST, "/admin/cluster/leave/3", 400, "fewer than N = 3").await;
    refused(api, Method::POST, "/admin/cluster/remove/2", 400, "fewer than N = 3").await;
    refused(api, Method::GET, "/admin/cluster/plan", 400, "no change is staged").await;
    refused(api, Method::POST, "/admin/cluster/commit", 400, "no change is staged").await;
    refused(api, Method::POST, "/admin/cluster/commit?epoch=x", 400, "bad query parameter").await;
    refused(api, Method::POST, "/admin/cluster/commit?epoch=1&force=1", 400, "bad query parameter").await;
    refused(api, Method::GET, "/admin/cluster/join/4", 405, "not allowed").await;
    refused(api, Method::POST, "/admin/handoff", 405, "not allowed").await;
    let (status, body) = api.get("/admin/clusters").await;
    assert_eq!(status, 404);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("/admin/cluster (join, leave, remove, plan, commit, clear), /admin/handoff"));

    // With a join staged: a second change of the same node, a leave that
    // the join makes possible, and a commit against another epoch.
    api.ok(Method::POST, "/admin/cluster/join/4").await;
    refused(api, Method::POST, "/admin/cluster/join/4", 400, "already staged").await;
    refused(api, Method::POST, "/admin/cluster/leave/4", 400, "already staged").await;
    let stale = refused(
        api,
        Method::POST,
        &format!("/admin/cluster/commit?epoch={}", epoch + 7),
        409,
        "run `plan` again",
    )
    .await;
    assert_eq!((stale["planned"].as_u64(), stale["current"].as_u64()), (Some(epoch + 7), Some(epoch)));
    let staged = api.ok(Method::POST, "/admin/cluster/leave/3").await;
    assert_eq!(staged["staged"], json!([{ "action": "join", "node": 4 }, { "action": "leave", "node": 3 }]));
    refused(api, Method::POST, "/admin/cluster/leave/2", 400, "would leave 2 members").await;
    assert_eq!(api.ok(Method::POST, "/admin/cluster/clear").await, json!({ "staged": [] }));
    assert_eq!(api.ok(Method::GET, "/admin/cluster").await["epoch"], epoch);

    // A plan staged on one node, then the ring moves through another: the
    // first node's plan is stale (409) and nothing is committed by it.
    api.ok(Method::POST, "/admin/cluster/join/5").await;
    apis[1].ok(Method::POST, "/admin/cluster/join/4").await;
    apis[1].ok(Method::POST, "/admin/cluster/commit").await;
    wait_until("node 1 to learn the new ring", || async {
        let e = api.ok(Method::GET, "/admin/cluster").await["epoch"].clone();
        if e == epoch + 1 {
            Ok(())
        } else {
            Err(e.to_string())
        }
    })
    .await;
    let stale = refused(api, Method::GET, "/admin/cluster/plan", 409, "run `plan` again").await;
    assert_eq!((stale["planned"].as_u64(), stale["current"].as_u64()), (Some(epoch), Some(epoch + 1)));
    refused(api, Method::POST, "/admin/cluster/commit", 409, "ring epoch").await;
    api.ok(Method::POST, "/admin/cluster/clear").await;
    cluster.shutdown().await;
}

/// A commit while the previous move still copies data is refused, and
/// `/admin/handoff` shows that move's transfers under way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_during_a_move_is_refused_while_handoff_shows_progress() {
    let slow = Config { handoff_max_bytes_per_sec: 4_000, handoff_batch_bytes: 1_000, ..config() };
    let (cluster, apis) = cluster(slow).await;
    write_keys(&cluster, 600).await;
    let api = &apis[0];
    api.ok(reqwest::Method::POST, "/admin/cluster/join/4").await;
    let plan = api.ok(reqwest::Method::POST, "/admin/cluster/commit").await;
    let transfers = plan["transfers"].as_array().unwrap().len();
    api.ok(reqwest::Method::POST, "/admin/cluster/join/5").await;
    let before = api.topology().await;
    let (status, body) = api.post("/admin/cluster/commit").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("still moves data"), "{body}");
    assert_eq!(api.topology().await, before);
    wait_until("node 4 to report a copy under way", || async {
        let h = apis[3].ok(reqwest::Method::GET, "/admin/handoff").await;
        let counts = &h["counts"];
        let active = h["transfers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["state"] == "active" && t["keys"].as_u64() > Some(0));
        if active
            && h["settled"] == false
            && counts["pending"].as_u64().unwrap() + counts["active"].as_u64().unwrap() > 0
        {
            Ok(())
        } else {
            Err(h.to_string())
        }
    })
    .await;
    let h = apis[3].ok(reqwest::Method::GET, "/admin/handoff").await;
    assert_eq!(h["transfers"].as_array().unwrap().len(), transfers);
    let scrape = apis[3].metrics().await;
    let in_flight = metric(&scrape, "dynamo_handoff_transfers", Some("pending"))
        + metric(&scrape, "dynamo_handoff_transfers", Some("active"));
    assert!(in_flight > 0.0);
    cluster.shutdown().await;
}

/// A node with a fixed member list (no seeds) cannot change its topology:
/// it says so, and what to configure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_gossip_refuses_topology_changes() {
    let cluster = Cluster::builder().nodes(3).config(config()).build().await.unwrap();
    let api = Api::serve(cluster.node(0).unwrap()).await;
    let (status, body) = api.post("/admin/cluster/leave/3").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("topology changes need gossip"), "{body}");
    let view = api.ok(reqwest::Method::GET, "/admin/cluster").await;
    assert_eq!((view["gossip"].as_bool(), view["settled"].as_bool()), (Some(false), Some(true)));
    assert_eq!(view["staged"], json!([]));
    let handoff = api.ok(reqwest::Method::GET, "/admin/handoff").await;
    assert_eq!(handoff["transfers"], json!([]));
    assert_eq!(handoff["counts"], json!({ "pending": 0, "active": 0, "done": 0 }));
    cluster.shutdown().await;
}

/// `dynamo-server cluster …`, the real binary against a node's API: text
/// for people (the plan's moves, transfers and shares; the move's
/// progress), JSON with `--json`, and the server's refusal on stderr with
/// a failing exit status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_commands_print_what_an_operator_needs() {
    let (cluster, apis) = cluster(config()).await;
    write_keys(&cluster, 200).await;
    let url = format!("http://{}", apis[0].addr);
    let run = |args: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_dynamo-server"));
        command.arg("cluster").args(args).args(["--url", &url]).env_remove("DYNAMO_URL");
        async move {
            let out = command.output().await.unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            (out.status.success(), text, err)
        }
    };
    let epoch = apis[0].ok(reqwest::Method::GET, "/admin/cluster").await["epoch"].as_u64().unwrap();

    let (ok, text, err) = run(&["join", "4"]).await;
    assert!(ok, "{err}");
    assert!(text.starts_with("staged: join 4\n"), "{text}");
    let (ok, text, err) = run(&["join", "99"]).await;
    assert!(!ok && text.is_empty(), "{text}");
    assert!(err.contains("400 Bad Request") && err.contains("node 99 is unknown"), "{err}");

    let (ok, plan, err) = run(&["plan"]).await;
    assert!(ok, "{err}");
    let json: Value = serde_json::from_str(&run(&["plan", "--json"]).await.1).unwrap();
    let transfers = json["transfers"].as_array().unwrap();
    assert!(plan.starts_with(&format!("plan: ring epoch {epoch} → {} (join 4)\n", epoch + 1)), "{plan}");
    assert!(
        plan.contains(&format!("ownership moves: {} of 64 partitions change owner", json["ownership_moves"])),
        "{plan}"
    );
    let t = &transfers[0];
    let line = format!("partition {:>4}: {} → 4\n", t["partition"].as_u64().unwrap(), t["from"][0]);
    assert!(plan.contains(&line), "{line:?} in\n{plan}");
    assert_eq!(plan.matches(" → 4\n").count(), transfers.len(), "every transfer is listed:\n{plan}");
    let row = plan.lines().find(|l| l.trim_start().starts_with("4 ")).unwrap();
    let owned = json["ownership_moves"].to_string();
    assert_eq!(row.split_whitespace().take(4).collect::<Vec<_>>(), ["4", "0", "→", owned.as_str()], "{plan}");
    assert!(plan.contains(&format!("cluster commit --epoch {epoch}")), "{plan}");

    let (ok, text, err) = run(&["commit", "--epoch", &(epoch + 3).to_string()]).await;
    assert!(!ok && text.is_empty() && err.contains("409 Conflict"), "{text}{err}");
    let (ok, text, err) = run(&["commit", "--epoch", &epoch.to_string()]).await;
    assert!(ok, "{err}");
    assert!(text.starts_with(&format!("committed: ring epoch {epoch} → {} (join 4)", epoch + 1)), "{text}");

    let (ok, status, err) = run(&["status"]).await;
    assert!(ok, "{err}");
    assert!(
        status.starts_with(&format!("node 1 at {url}: ring epoch {}, 64 partitions, N=3\n", epoch + 1)),
        "{status}"
    );
    assert!(
        status.contains(&format!("moving from epoch {epoch}")) || status.contains("settled:"),
        "{status}"
    );
    assert!(status.contains("staged on this node: none"), "{status}");
    assert!(status.lines().any(|l| l.trim_start().starts_with("1 *")), "{status}");
    cluster.wait_handoff_settled(DEADLINE).await.unwrap();
    let (_, status, _) = run(&["status"]).await;
    assert!(status.contains(&format!("settled: the move from epoch {epoch} is complete")), "{status}");
    assert!(status.contains(&format!("transfers: {} done", transfers.len())), "{status}");
    let json: Value = serde_json::from_str(&run(&["status", "--json"]).await.1).unwrap();
    assert_eq!(json["handoff"]["settled"], true);
    assert_eq!(json["cluster"]["epoch"], epoch + 1);

    let (ok, text, _) = run(&["leave", "4"]).await;
    assert!(ok && text.starts_with("staged: leave 4"), "{text}");
    let (ok, text, _) = run(&["clear"]).await;
    assert!(ok && text == "staged changes cleared\n", "{text}");
    assert_eq!(apis[0].ok(reqwest::Method::GET, "/admin/cluster").await["staged"], json!([]));
    cluster.shutdown().await;
}
