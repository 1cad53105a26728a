//! The real binary, as separate processes on loopback: three `serve`
//! processes, one killed with SIGKILL and restarted with the same command.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use dynamo_server::client::ApiClient;
use dynamo_server::config::ServerConfig;
use support::{eventually, ProcCluster, READY};

async fn write_keys(cluster: &ProcCluster, nodes: &[usize], range: std::ops::Range<u32>, tag: &str) {
    use futures::StreamExt;
    let writes = range.map(|k| {
        let client = cluster.client(nodes[k as usize % nodes.len()]);
        let tag = tag.to_string();
        async move {
            let value = Bytes::from(format!("{tag}-{k}"));
            client.put(&format!("key-{k}"), value, None, Some(2)).await.map_err(|e| format!("key-{k}: {e:#}"))
        }
    });
    // A client with at most 32 writes in flight.
    let results: Vec<_> = futures::stream::iter(writes).buffer_unordered(32).collect().await;
    let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(failed.is_empty(), "{} writes failed at W=2, first: {}", failed.len(), failed[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_rejoins_and_every_key_reads_at_r3_everywhere() {
    let mut cluster = ProcCluster::start(3).ready().await;
    write_keys(&cluster, &[0, 1, 2], 0..500, "first").await;
    cluster.kill(2);
    // Writes keep working with one of three nodes down.
    write_keys(&cluster, &[0, 1], 500..1000, "second").await;
    cluster.restart(2).await;
    for node in 0..3 {
        let client = cluster.client(node);
        eventually(&format!("reads at R=3 via node {}", node + 1), || {
            let client = client.clone();
            async move {
                for k in 0..1000u32 {
                    let read = client
                        .get(&format!("key-{k}"), Some(3))
                        .await
                        .map_err(|e| format!("key-{k}: {e:#}"))?;
                    let want = format!("{}-{k}", if k < 500 { "first" } else { "second" });
                    if read.values != vec![Bytes::from(want.clone())] {
                        return Err(format!("key-{k}: {:?}, want {want}", read.values));
                    }
                }
                Ok(())
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_come_back_as_300_siblings() {
    let cluster = ProcCluster::start(3).ready().await;
    let c1 = cluster.client(0);
    c1.put("cart", Bytes::from("v0"), None, None).await.unwrap();
    let stale = c1.get("cart", None).await.unwrap().context;
    c1.put("cart", Bytes::from("v1"), stale.as_deref(), None).await.unwrap();
    cluster.client(1).put("cart", Bytes::from("v2"), stale.as_deref(), None).await.unwrap();
    let resp = reqwest::get(format!("{}/kv/cart", cluster.url(2))).await.unwrap();
    assert_eq!(resp.status(), 300);
    assert!(resp.headers().contains_key("x-dynamo-context"));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["values"].as_array().map(Vec::len), Some(2), "{body}");
    // Writing back with the read's context resolves them.
    let read = cluster.client(2).get("cart", None).await.unwrap();
    cluster.client(2).put("cart", Bytes::from("merged"), read.context.as_deref(), None).await.unwrap();
    let resp = reqwest::get(format!("{}/kv/cart", cluster.url(0))).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), Bytes::from("merged"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_stays_deleted_after_the_killed_node_returns() {
    let mut cluster = ProcCluster::start(3).ready().await;
    let c1 = cluster.client(0);
    c1.put("doomed", Bytes::from("alive"), None, Some(3)).await.unwrap();
    let ctx = c1.get("doomed", Some(3)).await.unwrap().context;
    cluster.kill(2);
    c1.delete("doomed", ctx.as_deref(), Some(2)).await.unwrap();
    cluster.restart(2).await;
    for node in 0..3 {
        let client = cluster.client(node);
        eventually(&format!("delete seen via node {}", node + 1), || {
            let client = client.clone();
            async move {
                let read = client.get("doomed", Some(3)).await.map_err(|e| format!("{e:#}"))?;
                if read.values.is_empty() {
                    Ok(())
                } else {
                    Err(format!("resurrected: {:?}", read.values))
                }
            }
        })
        .await;
        let resp = reqwest::get(format!("{}/kv/doomed?r=3", cluster.url(node))).await.unwrap();
        assert_eq!(resp.status(), 404, "node {}", node + 1);
    }
    // The restarted node's own replica holds the tombstone.
    let local = cluster.client(2).json("/admin/local/doomed").await.unwrap();
    let siblings = local["data"]["siblings"].as_array().cloned().unwrap_or_default();
    assert!(siblings.iter().all(|s| s["tombstone"] == true), "{local}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_the_node_keeps_serving() {
    let cluster = ProcCluster::start(1).ready().await;
    let url = cluster.url(0);
    let http = reqwest::Client::new();
    let status = |r: reqwest::Response| r.status().as_u16();
    let long_key = "k".repeat(1025);
    assert_eq!(status(http.put(format!("{url}/kv/{long_key}")).body("v").send().await.unwrap()), 400);
    assert_eq!(status(http.put(format!("{url}/kv/k?w=0")).body("v").send().await.unwrap()), 400);
    assert_eq!(status(http.put(format!("{url}/kv/k?w=x")).body("v").send().await.unwrap()), 400);
    let bad_ctx =
        http.put(format!("{url}/kv/k")).header("x-dynamo-context", "AAAA").body("v").send().await.unwrap();
    assert_eq!(status(bad_ctx), 400);
    let big = vec![0u8; 1024 * 1024 + 1];
    assert_eq!(status(http.put(format!("{url}/kv/big")).body(big).send().await.unwrap()), 413);
    let exact = vec![7u8; 1024 * 1024];
    assert_eq!(status(http.put(format!("{url}/kv/exact")).body(exact).send().await.unwrap()), 204);
    assert_eq!(
        status(http.get(format!("{url}/kv/k")).send().await.unwrap()),
        404,
        "refused writes stored nothing"
    );
    let err: serde_json::Value =
        http.put(format!("{url}/kv/k?w=0")).body("v").send().await.unwrap().json().await.unwrap();
    assert!(err["error"].as_str().unwrap().contains("w = 0"), "{err}");
    assert!(cluster.client(0).is_healthy().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_flushes_buffered_writes() {
    let mut cluster = ProcCluster::start_with(1, |c| {
        c.store.durability = dynamo_core::store::Durability::Buffered;
    })
    .ready()
    .await;
    let client = cluster.client(0);
    for k in 0..200 {
        client.put(&format!("b-{k}"), Bytes::from(format!("v{k}")), None, None).await.unwrap();
    }
    let status = cluster.terminate(0);
    assert!(status.success(), "SIGTERM ends the node cleanly: {status}; log:\n{}", cluster.log(0));
    assert!(cluster.log(0).contains("store flushed"), "log:\n{}", cluster.log(0));
    cluster.restart(0).await;
    for k in 0..200 {
        let read = client.get(&format!("b-{k}"), None).await.unwrap();
        assert_eq!(read.values, vec![Bytes::from(format!("v{k}"))], "b-{k} after a graceful restart");
    }
}

/// The probe of a buffered crash: v1..v10 through node 1, a pause longer
/// than the flush interval (they reach the disk), v11..v30 (still in
/// memory), SIGKILL of node 1 and a restart: its store is back at v10.
/// Its next writes, blind or with the context of the v30 write, must not
/// reuse a dot the other replicas have seen: they are readable at R=3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_crash_of_the_coordinator_loses_no_acknowledged_write() {
    let mut cluster = ProcCluster::start_with(3, |c| {
        c.store.durability = dynamo_core::store::Durability::Buffered;
    })
    .ready()
    .await;
    let c1 = cluster.client(0);
    let mut ctx: Option<String> = None;
    for i in 1..=30 {
        ctx = Some(c1.put("k", Bytes::from(format!("v{i}")), ctx.as_deref(), None).await.unwrap());
        if i == 10 {
            // Part of the fault, not a wait for a result: the store's
            // flusher (every second) makes v1..v10 durable meanwhile.
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
    }
    let ctx30 = ctx.unwrap();
    for node in 1..3 {
        let client = cluster.client(node);
        eventually(&format!("v30 on node {}", node + 1), || {
            let client = client.clone();
            async move {
                let local = client.json("/admin/local/k").await.map_err(|e| format!("{e:#}"))?;
                let values = local["data"]["siblings"].as_array().cloned().unwrap_or_default();
                let v30 = serde_json::json!(base64_of("v30"));
                if values.len() == 1 && values[0]["value"] == v30 {
                    Ok(())
                } else {
                    Err(format!("{local}"))
                }
            }
        })
        .await;
    }
    cluster.kill(0);
    cluster.restart(0).await;
    c1.put("k", Bytes::from("after-crash"), None, None).await.unwrap();
    let mut got = cluster.client(1).get("k", Some(3)).await.unwrap().values;
    got.sort();
    assert_eq!(got, vec![Bytes::from("after-crash"), Bytes::from("v30")], "the blind write after the crash");
    c1.put("k", Bytes::from("after-ctx"), Some(&ctx30), None).await.unwrap();
    let mut got = cluster.client(2).get("k", Some(3)).await.unwrap().values;
    got.sort();
    assert_eq!(
        got,
        vec![Bytes::from("after-crash"), Bytes::from("after-ctx")],
        "the write with v30's context"
    );
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A node restarted with a ring other than the one its data was written
/// under (here 512 partitions instead of 256) refuses to start, naming the
/// difference and the way out; its first start, on an empty store, said so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_under_another_ring_refuses_to_start_and_says_why() {
    let mut cluster = ProcCluster::start(3).ready().await;
    assert!(cluster.log(2).contains("the store is empty"), "log:\n{}", cluster.log(2));
    cluster.client(2).put("k", Bytes::from("x"), None, None).await.unwrap();
    assert!(cluster.terminate(2).success());
    let path = cluster.nodes[2].config.clone();
    let mut config: ServerConfig = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config.cluster.partitions = 512;
    std::fs::write(&path, toml::to_string_pretty(&config).unwrap()).unwrap();
    cluster.spawn(2);
    let mut child = cluster.nodes[2].child.take().unwrap();
    let deadline = Instant::now() + READY;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the node started; log:\n{}", cluster.log(2));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let log = cluster.log(2);
    assert!(log.contains("partitions 256 (now 512)") && log.contains("--adopt-ring"), "log:\n{log}");
}

/// The probe of a late forwarded write: five nodes, a key whose preference
/// list leaves out node 1, its first owner stopped (SIGSTOP). A write
/// through node 1 is forwarded to that owner and gets no answer: node 1
/// gives up after the replica timeout (504: outcome unknown). After a
/// read and a delete with its context, the owner resumes (SIGCONT) with
/// the forwarded write still queued: it must not execute it.
///
/// Node 1 forwards to the first owner only while it counts that owner up;
/// a call of its own to the owner that failed just before (a gossip or
/// anti-entropy round timing out on a loaded host) sends the write to the
/// next owner instead, which acknowledges it. And the forward may never
/// reach the owner: when node 1 has to dial it, a TLS handshake with a
/// stopped process cannot complete, so the frame is never sent. Such
/// attempts prove nothing and are made again, up to five times; in every
/// one the delete must stand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_forwarded_to_a_stopped_node_never_undoes_a_later_delete() {
    let cluster = ProcCluster::start(5).ready().await;
    let c1 = cluster.client(0);
    let (key, owner) = (0..1000)
        .find_map(|i| {
            let key = format!("k{i}");
            let ring = futures::executor::block_on(c1.json(&format!("/admin/ring?key={key}"))).unwrap();
            let pl: Vec<u64> =
                ring["preference_list"].as_array()?.iter().filter_map(|n| n.as_u64()).collect();
            (!pl.contains(&1)).then(|| (key, pl[0] as usize - 1))
        })
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(cluster.nodes[owner].child.as_ref().unwrap().id() as i32);
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(attempts <= 5, "node 1 never forwarded the write to the stopped owner in 5 attempts");
        // A read at R = 3 through node 1 reaches every owner: node 1 counts
        // them all up, so the write below is forwarded to the first owner.
        eventually("every owner answers node 1", || {
            let (c, key) = (c1.clone(), key.clone());
            async move { c.get(&key, Some(3)).await.map(|_| ()).map_err(|e| format!("{e:#}")) }
        })
        .await;
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        let start = Instant::now();
        let put = c1.put(&key, Bytes::from("stale"), None, None).await;
        let took = start.elapsed();
        assert!(
            took < Duration::from_millis(2500),
            "the forward gave up after {took:?} (replica timeout 1 s)"
        );
        let read = c1.get(&key, None).await.unwrap();
        if put.is_ok() {
            // Acknowledged, so not by the stopped owner: another attempt.
            assert!(
                !read.values.is_empty() && read.values.iter().all(|v| v == "stale"),
                "an acknowledged write is readable: {:?}",
                read.values
            );
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
            continue;
        }
        c1.delete(&key, read.context.as_deref(), None).await.unwrap();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
        // The resumed owner handles the write queued for it, and drops it;
        // if none reached it, the attempt is made again, once it is sure
        // the delete stands on the owner all the same.
        if owner_dropped_a_late_write(&cluster, owner).await {
            break;
        }
        let local = cluster.client(owner).json(&format!("/admin/local/{key}")).await.unwrap();
        let live = local["data"]["siblings"].as_array().cloned().unwrap_or_default();
        assert!(
            live.iter().all(|s| s["tombstone"] == true),
            "attempt {attempts}: a late write executed on the owner: {local}"
        );
    }
    let owner_client = cluster.client(owner);
    eventually("the delete reaches every replica", || {
        let c = c1.clone();
        let key = key.clone();
        async move {
            let read = c.get(&key, Some(3)).await.map_err(|e| format!("{e:#}"))?;
            if read.values.is_empty() {
                Ok(())
            } else {
                Err(format!("{key}: {:?}", read.values))
            }
        }
    })
    .await;
    let local = owner_client.json(&format!("/admin/local/{key}")).await.unwrap();
    let live = local["data"]["siblings"].as_array().cloned().unwrap_or_default();
    assert!(live.iter().all(|s| s["tombstone"] == true), "the late write executed on the owner: {local}");
}

/// Whether node `owner` counts an expired forward within 10 s.
async fn owner_dropped_a_late_write(cluster: &ProcCluster, owner: usize) -> bool {
    let metrics = format!("{}/metrics", cluster.url(owner));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(answer) = reqwest::get(&metrics).await {
            let text = answer.text().await.unwrap_or_default();
            if text.lines().any(|l| l.starts_with("dynamo_forwards_expired_total") && !l.ends_with(" 0")) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Gossip between real processes: every node's `/admin/members` shows the
/// others `up`; a SIGKILLed node is shown `down` by the others within the
/// bound (its first missed gossip round, at 250 ms rounds: well under 5 s),
/// and `up` again after its restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossiping_nodes_see_a_killed_peer_down_and_back_up() {
    const BOUND: Duration = Duration::from_secs(5);
    let mut cluster = ProcCluster::start_with(3, |c| {
        c.cluster.seeds = vec![c.members[0].addr.clone()];
        c.cluster.gossip_interval_ms = 250;
    })
    .ready()
    .await;
    let clients: Vec<ApiClient> = (0..3).map(|i| cluster.client(i)).collect();
    let statuses = |node: usize| {
        let client = clients[node].clone();
        async move {
            let members = client.json("/admin/members").await.map_err(|e| format!("{e:#}"))?;
            let list = members["members"].as_array().cloned().unwrap_or_default();
            Ok::<Vec<(u64, String)>, String>(
                list.iter()
                    .filter(|m| m["self"] != serde_json::json!(true))
                    .map(|m| (m["id"].as_u64().unwrap_or(0), m["status"].as_str().unwrap_or("").to_owned()))
                    .collect(),
            )
        }
    };
    for node in 0..3 {
        eventually(&format!("node {} sees the others up", node + 1), || {
            let fetch = statuses(node);
            async move {
                let seen = fetch.await?;
                if seen.len() == 2 && seen.iter().all(|(_, s)| s == "up") {
                    Ok(())
                } else {
                    Err(format!("{seen:?}"))
                }
            }
        })
        .await;
    }
    cluster.kill(2);
    let killed = Instant::now();
    for node in 0..2 {
        loop {
            let seen = statuses(node).await.unwrap();
            if seen.iter().any(|(id, s)| *id == 3 && s == "down") {
                break;
            }
            assert!(
                killed.elapsed() < BOUND,
                "node {} still shows node 3 {seen:?} after {BOUND:?}",
                node + 1
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!("node 3 shown down by both others after {:?}", killed.elapsed());
    cluster.restart(2).await;
    let restarted = Instant::now();
    for node in 0..2 {
        loop {
            let seen = statuses(node).await.unwrap();
            if seen.iter().any(|(id, s)| *id == 3 && s == "up") {
                break;
            }
            assert!(restarted.elapsed() < BOUND, "node {} still shows node 3 {seen:?}", node + 1);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let members = cluster.client(0).json("/admin/members").await.unwrap();
    assert!(members["members"][1]["phi"].is_number(), "phi is shown: {members}");
}
