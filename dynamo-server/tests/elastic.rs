//! Elastic topology with the real binary: three gossiping `serve`
//! processes under a client load (writes at W=2, reads at R=2), a 4th and
//! a 5th started with seeds, joined and committed through the admin API
//! while the load runs, then a founding node leaving. Nothing acknowledged
//! is lost and no read misses an acknowledged write.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dynamo_server::client::ApiClient;
use futures::StreamExt as _;
use rand::Rng as _;
use serde_json::Value;
use support::{eventually, ProcCluster};

/// What the load saw.
#[derive(Default)]
struct Load {
    /// Keys acknowledged at W=2, with their values.
    acked: Mutex<Vec<(String, Bytes)>>,
    /// Reads at R=2 of an acknowledged key that did not return exactly its value.
    misses: Mutex<Vec<String>>,
    write_errors: AtomicU64,
    reads: AtomicU64,
    read_errors: AtomicU64,
}

/// Writers put fresh keys (one value each, so a read must return exactly
/// it) and readers read keys acknowledged before the read began, through
/// any node in `targets`, until `stop`.
fn spawn_load(
    targets: Arc<RwLock<Vec<ApiClient>>>,
    load: Arc<Load>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let pick = |targets: &RwLock<Vec<ApiClient>>| {
        let targets = targets.read().unwrap();
        targets[rand::rng().random_range(0..targets.len())].clone()
    };
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (targets, load, stop) = (targets.clone(), load.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{w}-{i}");
                i += 1;
                let value = Bytes::from(format!("value of {key}"));
                match pick(&targets).put(&key, value.clone(), None, Some(2)).await {
                    Ok(_) => load.acked.lock().unwrap().push((key, value)),
                    Err(_) => {
                        load.write_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        }));
    }
    for _ in 0..2 {
        let (targets, load, stop) = (targets.clone(), load.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let chosen = {
                    let acked = load.acked.lock().unwrap();
                    (!acked.is_empty()).then(|| acked[rand::rng().random_range(0..acked.len())].clone())
                };
                if let Some((key, expected)) = chosen {
                    let client = pick(&targets);
                    load.reads.fetch_add(1, Ordering::Relaxed);
                    match client.get(&key, Some(2)).await {
                        Ok(read) if read.values != [expected.clone()] => load
                            .misses
                            .lock()
                            .unwrap()
                            .push(format!("{key} read {:?} through {}", read.values, client.base())),
                        Ok(_) => {}
                        Err(_) => {
                            load.read_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        }));
    }
    tasks
}

async fn post(client: &ApiClient, path: &str) -> Value {
    client.post_json(path).await.unwrap_or_else(|e| panic!("POST {path}: {e:#}"))
}

/// Waits until every node in `nodes` reports ring `epoch` with every
/// partition settled in `/admin/handoff`.
async fn settled(cluster: &ProcCluster, nodes: &[usize], epoch: u64) {
    for &i in nodes {
        let client = cluster.client(i);
        eventually(&format!("node {} to settle epoch {epoch}", i + 1), || {
            let client = client.clone();
            async move {
                let h = client.json("/admin/handoff").await.map_err(|e| e.to_string())?;
                if h["epoch"] == epoch && h["settled"] == true {
                    Ok(())
                } else {
                    Err(format!("{} {}/{}", h["epoch"], h["settled_partitions"], h["partitions"]))
                }
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_and_leave_under_load_and_nothing_acknowledged_is_lost() {
    let started = Instant::now();
    let mut cluster = ProcCluster::start_with(3, |c| {
        c.cluster.seeds = vec![c.members[0].addr.clone()];
        c.cluster.partitions = 64;
        c.cluster.gossip_interval_ms = 100;
        c.cluster.handoff_interval_ms = 100;
        c.store.durability = dynamo_core::store::Durability::Buffered;
    })
    .ready()
    .await;
    let seeds: Vec<String> = (0..2).map(|i| cluster.config(i).peer.listen).collect();
    let targets = Arc::new(RwLock::new((0..3).map(|i| cluster.client(i)).collect::<Vec<_>>()));
    let (load, stop) = (Arc::new(Load::default()), Arc::new(AtomicBool::new(false)));
    // Data for the move to carry: 3,000 keys at W=2 before the load starts.
    let clients: Vec<ApiClient> = (0..3).map(|i| cluster.client(i)).collect();
    let preloaded: Vec<(String, Bytes)> = futures::stream::iter(0..3_000)
        .map(|k| {
            let client = clients[k % 3].clone();
            async move {
                let (key, value) = (format!("pre-{k}"), Bytes::from(format!("preloaded value {k}")));
                client.put(&key, value.clone(), None, Some(2)).await.map(|_| (key, value))
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every preload write is acknowledged");
    load.acked.lock().unwrap().extend(preloaded);
    let tasks = spawn_load(targets.clone(), load.clone(), stop.clone());
    eventually("the load to get going", || {
        let n = load.acked.lock().unwrap().len();
        async move {
            if n >= 200 {
                Ok(())
            } else {
                Err(format!("{n} acknowledged"))
            }
        }
    })
    .await;

    // Nodes 4 and 5 start with seeds only: gossip makes them known,
    // joining and owning nothing, and teaches them the ring.
    for _ in 0..2 {
        let i = cluster.add_node(seeds.clone());
        cluster.wait_ready(i).await;
    }
    let admin = cluster.client(0);
    for i in [3, 4] {
        let (admin, new) = (admin.clone(), cluster.client(i));
        eventually(&format!("node {} to be known and to know the ring", i + 1), || {
            let (admin, new) = (admin.clone(), new.clone());
            async move {
                let view = admin.json("/admin/cluster").await.map_err(|e| e.to_string())?;
                let known =
                    view["members"].as_array().into_iter().flatten().any(|m| {
                        m["id"] == i as u64 + 1 && m["status"] == "joining" && m["in_ring"] == false
                    });
                let theirs = new.json("/admin/cluster").await.map_err(|e| e.to_string())?;
                match known && theirs["epoch"].is_u64() {
                    true => Ok(()),
                    false => Err(format!("{view}")),
                }
            }
        })
        .await;
        targets.write().unwrap().push(cluster.client(i));
    }

    let grow_started = Instant::now();
    post(&admin, "/admin/cluster/join/4").await;
    post(&admin, "/admin/cluster/join/5").await;
    let plan = admin.json("/admin/cluster/plan").await.unwrap();
    let base = plan["base_epoch"].as_u64().unwrap();
    let committed = post(&admin, &format!("/admin/cluster/commit?epoch={base}")).await;
    assert_eq!(committed, plan, "the commit applies the plan shown");
    settled(&cluster, &[0, 1, 2, 3, 4], base + 1).await;
    let grow_time = grow_started.elapsed();
    let acked_after_grow = load.acked.lock().unwrap().len();
    let view = admin.json("/admin/cluster").await.unwrap();
    let owned: Vec<u64> =
        view["members"].as_array().unwrap().iter().map(|m| m["partitions"].as_u64().unwrap()).collect();
    assert!(owned.iter().max().unwrap() - owned.iter().min().unwrap() <= 1, "balanced: {view}");

    // Node 2, a founder, leaves: its partitions move to the others.
    let shrink_started = Instant::now();
    post(&admin, "/admin/cluster/leave/2").await;
    let left = post(&admin, "/admin/cluster/commit").await;
    assert_eq!(left["epoch"], base + 2);
    assert!(
        left["transfers"].as_array().unwrap().iter().all(|t| t["from"] == serde_json::json!([2])),
        "{left}"
    );
    settled(&cluster, &[0, 1, 2, 3, 4], base + 2).await;
    let shrink_time = shrink_started.elapsed();
    let view = admin.json("/admin/cluster").await.unwrap();
    let two = view["members"].as_array().unwrap().iter().find(|m| m["id"] == 2).unwrap();
    assert_eq!((two["in_ring"].as_bool(), two["partitions"].as_u64()), (Some(false), Some(0)), "{view}");

    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let misses = load.misses.lock().unwrap().clone();
    assert!(
        misses.is_empty(),
        "{} reads at R=2 missed acknowledged writes, first: {:?}",
        misses.len(),
        &misses[..misses.len().min(5)]
    );
    let acked = load.acked.lock().unwrap().clone();
    assert!(
        acked.len() > acked_after_grow && acked_after_grow > 3_200,
        "the load ran throughout: {} then {}",
        acked_after_grow,
        acked.len()
    );

    // Every acknowledged write reads back at R=2, through the nodes of the final ring.
    let readers: Vec<ApiClient> = [0, 2, 3, 4].iter().map(|&i| cluster.client(i)).collect();
    let lost: Vec<String> = futures::stream::iter(acked.iter().enumerate())
        .map(|(n, (key, expected))| {
            let client = readers[n % readers.len()].clone();
            async move {
                match client.get(key, Some(2)).await {
                    Ok(read) if read.values == [expected.clone()] => None,
                    Ok(read) => Some(format!("{key}: {:?} via {}", read.values, client.base())),
                    Err(e) => Some(format!("{key}: {e:#} via {}", client.base())),
                }
            }
        })
        .buffer_unordered(32)
        .filter_map(|x| async move { x })
        .collect()
        .await;
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes did not read back, first: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    eprintln!(
        "elastic: {} writes acknowledged ({} failed), {} reads during the run ({} failed, 0 missed); grow 3 → 5 ({} transfers) settled in {:.1} s, leave of node 2 ({} transfers) in {:.1} s; {:.1} s in all",
        acked.len(),
        load.write_errors.load(Ordering::Relaxed),
        load.reads.load(Ordering::Relaxed),
        load.read_errors.load(Ordering::Relaxed),
        plan["transfers"].as_array().unwrap().len(),
        grow_time.as_secs_f64(),
        left["transfers"].as_array().unwrap().len(),
        shrink_time.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
}
