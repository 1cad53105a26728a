//! Elastic topology (Dynamo §4.9) on the simulated network, paused clock:
//! a cluster grows and shrinks under load with nothing acknowledged lost
//! and no read at R + W > N missing an acknowledged write; a dead node is
//! removed and every key is back to N copies; copies interrupted by a
//! crash of either side complete after a restart.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dynamo_core::config::Config;
use dynamo_core::handoff::TransferState;
use dynamo_core::member::NodeId;
use dynamo_core::node::{Node, ReadOptions, WriteOptions};
use dynamo_core::topology::Change;
use dynamo_core::Error;
use dynamo_testkit::Cluster;
use rand::{Rng, SeedableRng};

const SETTLE: Duration = Duration::from_secs(120);
const CONVERGE: Duration = Duration::from_secs(30);

fn config() -> Config {
    Config {
        partitions: 64,
        hint_delivery_interval_ms: 200,
        replica_timeout_ms: 500,
        request_timeout_ms: 3_000,
        gossip_interval_ms: 200,
        handoff_interval_ms: 200,
        ..Config::default()
    }
}

fn value(key: &str) -> Bytes {
    Bytes::from(format!("value of {key}"))
}

/// Keys acknowledged so far, with their values.
type Acked = Arc<Mutex<BTreeMap<String, Bytes>>>;

/// Writers put fresh keys through random nodes; readers read keys
/// acknowledged before the read began, at R = 2 (W = 2, N = 3), and count
/// every read that misses one.
fn spawn_load(
    cluster: &Arc<Cluster>,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> (Acked, Vec<tokio::task::JoinHandle<Vec<String>>>) {
    let acked: Acked = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..3u64 {
        let (cluster, acked, stop) = (Arc::clone(cluster), Arc::clone(&acked), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ w);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{w}-{i}");
                i += 1;
                let via = rng.random_range(0..cluster.len());
                if let Some(node) = cluster.node(via) {
                    let v = value(&key);
                    if node.put(key.as_bytes(), v.clone(), None, WriteOptions::default()).await.is_ok() {
                        acked.lock().unwrap().insert(key, v);
                    }
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
            }
            Vec::new()
        }));
    }
    for r in 0..2u64 {
        let (cluster, acked, stop) = (Arc::clone(cluster), Arc::clone(&acked), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ (100 + r));
            let mut misses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let pick = {
                    let acked = acked.lock().unwrap();
                    if acked.is_empty() {
                        None
                    } else {
                        let n = rng.random_range(0..acked.len());
                        acked.iter().nth(n).map(|(k, v)| (k.clone(), v.clone()))
                    }
                };
                if let Some((key, expected)) = pick {
                    let via = rng.random_range(0..cluster.len());
                    if let Some(node) = cluster.node(via) {
                        if let Ok(got) = node.get(key.as_bytes(), ReadOptions::default()).await {
                            if got.values != vec![expected] {
                                let mut detail = Vec::new();
                                for j in 0..cluster.len() {
                                    if let Some(n) = cluster.node(j) {
                                        let ring = n.ring().unwrap();
                                        let p = ring.partition_of(key.as_bytes());
                                        let view = n.membership().view();
                                        let settled = view.handover().map(|h| h.is_settled(p));
                                        let local = n.local_state(key.as_bytes()).await.ok().map(|l| (l.data.is_some(), l.hints.len()));
                                        detail.push(format!("node {j}: epoch {} settled {settled:?} reads {:?} writes {:?} holds {local:?}", ring.epoch(), view.read_owners(&ring, p), view.write_owners(&ring, p).0));
                                    }
                                }
                                misses.push(format!("{key} read {:?} through node {via}: {detail:#?}", got.values));
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
            }
            misses
        }));
    }
    (acked, tasks)
}

/// Stages `changes` on `node`, checks the plan, commits it and returns it.
async fn apply(node: &Node, changes: &[Change]) -> dynamo_core::topology::Plan {
    for &c in changes {
        node.stage(c).unwrap();
    }
    let plan = node.plan().unwrap();
    let committed = node.commit(Some(plan.base_epoch)).await.unwrap();
    assert_eq!(committed, plan, "the commit applies the plan shown");
    plan
}

/// Checks that at least `min` replicas of each key's preference list,
/// under the final ring, hold the acknowledged value (before any read
/// repairs it).
async fn assert_replicas_hold(cluster: &Cluster, acked: &BTreeMap<String, Bytes>, min: usize) {
    let ring = cluster.current_ring();
    for (key, expected) in acked {
        let partition = ring.partition_of(key.as_bytes());
        let mut holders = Vec::new();
        for &id in ring.preference_list(partition) {
            let i = cluster.index_of(id).unwrap();
            let state = cluster.replica_state(i, key.as_bytes()).await.unwrap();
            let values: Vec<Bytes> =
                state.map(|s| s.live().filter_map(|x| x.value.clone()).collect()).unwrap_or_default();
            if values == vec![expected.clone()] {
                holders.push(id);
            }
        }
        if holders.len() < min {
            let mut everywhere = Vec::new();
            for j in 0..cluster.len() {
                everywhere.push(format!("node {j}: {:?}", cluster.local_state(j, key.as_bytes()).await.ok()));
            }
            panic!(
                "{key} is held by {holders:?}, fewer than {min} (seed {}); stored: {everywhere:#?}",
                cluster.seed()
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_cluster_grows_to_five_and_shrinks_to_three_under_load_losing_nothing() {
    let cluster =
        Arc::new(Cluster::builder().nodes(3).joiners(2).gossip().config(config()).build().await.unwrap());
    cluster.wait_gossip_converged(CONVERGE).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, tasks) = spawn_load(&cluster, cluster.seed(), Arc::clone(&stop));
    tokio::time::sleep(Duration::from_secs(3)).await;

    let before = cluster.current_ring();
    let grow = apply(&cluster.node(0).unwrap(), &[Change::Join(NodeId(4)), Change::Join(NodeId(5))]).await;
    let grown = cluster.current_ring();
    assert_eq!(grown.epoch(), before.epoch() + 1);
    // Only partitions the newcomers take change owner: the minimum.
    let taken = grown.owned_count(NodeId(4)) + grown.owned_count(NodeId(5));
    assert_eq!(grow.ownership_moves, taken);
    assert_eq!(grow.ownership_moves, before.moved_partitions(&grown).len());
    cluster.wait_handoff_settled(SETTLE).await.unwrap();
    let counts: Vec<usize> = (1..=5).map(|i| grown.owned_count(NodeId(i))).collect();
    assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1, "balanced: {counts:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let shrink =
        apply(&cluster.node(1).unwrap(), &[Change::Leave(NodeId(4)), Change::Leave(NodeId(5))]).await;
    assert!(shrink.transfers.iter().all(|t| t.to.0 <= 3));
    cluster.wait_handoff_settled(SETTLE).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut misses = Vec::new();
    for t in tasks {
        misses.extend(t.await.unwrap());
    }
    assert!(misses.is_empty(), "reads at R + W > N missed acknowledged writes: {misses:?}");

    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 300, "the load ran throughout: {} writes acknowledged", acked.len());
    // Every acknowledged key on at least W replicas of the final ring
    // without a read to repair it (a write a replica refused because its
    // coordinator had not learned a change yet reaches it through read
    // repair), and readable at R; the nodes that left hold nothing.
    assert_replicas_hold(&cluster, &acked, 2).await;
    let node = cluster.node(2).unwrap();
    for (key, expected) in &acked {
        let got = node.get(key.as_bytes(), ReadOptions::default()).await.unwrap();
        assert_eq!(got.values, vec![expected.clone()], "{key} (seed {})", cluster.seed());
    }
    for left in [3, 4] {
        for key in acked.keys().take(200) {
            assert_eq!(
                cluster.replica_state(left, key.as_bytes()).await.unwrap(),
                None,
                "node {} kept {key}",
                left + 1
            );
        }
    }
    let status = cluster.node(0).unwrap().handoff_status();
    assert_eq!(status.count(TransferState::Done), shrink.transfers.len());
    let counts: Vec<usize> = (1..=3).map(|i| cluster.current_ring().owned_count(NodeId(i))).collect();
    assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1, "balanced: {counts:?}");
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_dead_node_removed_for_good_leaves_every_key_with_n_copies() {
    let cluster = Cluster::builder().nodes(4).gossip().w(3).config(config()).build().await.unwrap();
    cluster.wait_gossip_converged(CONVERGE).await.unwrap();
    let mut acked = BTreeMap::new();
    for i in 0..400 {
        let key = format!("k{i}");
        cluster
            .node(i % 4)
            .unwrap()
            .put(key.as_bytes(), value(&key), None, WriteOptions::default())
            .await
            .unwrap();
        acked.insert(key.clone(), value(&key));
    }
    cluster.kill(3).await;
    let node = cluster.node(0).unwrap();
    let e = node.stage(Change::Remove(NodeId(1))).unwrap_err();
    assert!(matches!(e, Error::TopologyRefused(_)), "{e}");
    let plan = apply(&node, &[Change::Remove(NodeId(4))]).await;
    assert!(plan.transfers.iter().all(|t| !t.from.contains(&NodeId(4))), "a removed node is never asked");
    cluster.wait_handoff_settled(SETTLE).await.unwrap();
    assert_replicas_hold(&cluster, &acked, 3).await;
    // Fewer than N would remain: refused, nothing staged.
    let e = node.stage(Change::Leave(NodeId(3))).and_then(|_| node.plan()).unwrap_err();
    assert!(e.to_string().contains("fewer than N"), "{e}");
    node.clear_staged();
    cluster.shutdown().await;
}

/// Kills `victim` (the receiver or a sender) while a copy is active, then
/// restarts it: the move completes and every key has N copies.
async fn interrupted_copy_completes(kill_receiver: bool) {
    let config = Config { handoff_max_bytes_per_sec: 20_000, handoff_batch_bytes: 2_000, ..config() };
    let cluster = Cluster::builder().nodes(3).joiners(1).gossip().w(3).config(config).build().await.unwrap();
    cluster.wait_gossip_converged(CONVERGE).await.unwrap();
    let mut acked = BTreeMap::new();
    for i in 0..1_000 {
        let key = format!("k{i}");
        cluster
            .node(i % 3)
            .unwrap()
            .put(key.as_bytes(), value(&key), None, WriteOptions::default())
            .await
            .unwrap();
        acked.insert(key.clone(), value(&key));
    }
    let plan = apply(&cluster.node(0).unwrap(), &[Change::Join(NodeId(4))]).await;
    // Wait until node 4 is part-way through a copy.
    let deadline = tokio::time::Instant::now() + SETTLE;
    let active = loop {
        let status = cluster.node(3).unwrap().handoff_status();
        if let Some(t) = status
            .transfers
            .iter()
            .find(|t| t.to == NodeId(4) && t.state == TransferState::Active && t.keys > 0)
        {
            break t.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no copy started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let victim = if kill_receiver { 3 } else { cluster.index_of(active.from[0]).unwrap() };
    cluster.kill(victim).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!cluster.handoff_settled(), "the move was still under way: {plan:?}");
    cluster.restart(victim).await.unwrap();
    cluster.wait_handoff_settled(SETTLE).await.unwrap();
    assert_replicas_hold(&cluster, &acked, 3).await;
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_copy_interrupted_by_killing_the_receiver_completes_after_restart() {
    interrupted_copy_completes(true).await;
}

#[tokio::test(start_paused = true)]
async fn a_copy_interrupted_by_killing_the_sender_completes_after_restart() {
    interrupted_copy_completes(false).await;
}

/// Three nodes holding `keys` keys (node 4 waiting to join), then the
/// committed join of node 4 with copies paced at 1 byte/s, so that every
/// partition holding data stays moving.
async fn a_move_under_way(keys: usize) -> (Cluster, dynamo_core::topology::Plan) {
    let config = Config { handoff_max_bytes_per_sec: 1, ..config() };
    let cluster = Cluster::builder().nodes(3).joiners(1).gossip().w(3).config(config).build().await.unwrap();
    cluster.wait_gossip_converged(CONVERGE).await.unwrap();
    for i in 0..keys {
        let key = format!("k{i}");
        cluster
            .node(0)
            .unwrap()
            .put(key.as_bytes(), value(&key), None, WriteOptions::default())
            .await
            .unwrap();
    }
    let plan = apply(&cluster.node(0).unwrap(), &[Change::Join(NodeId(4))]).await;
    cluster.wait_gossip_converged(CONVERGE).await.unwrap();
    (cluster, plan)
}

/// A handoff pull for a partition the asker does not gain, under another
/// ring epoch, or for a partition out of range, is refused and changes
/// nothing; the gaining node's own pull is served.
#[tokio::test(start_paused = true)]
async fn handoff_pulls_that_do_not_match_the_move_are_refused() {
    use dynamo_core::transport::protocol::{Request, Response};
    use dynamo_core::transport::Transport;
    let (cluster, plan) = a_move_under_way(50).await;
    let t = plan.transfers[0].clone();
    let source = cluster.index_of(t.from[0]).unwrap();
    let addr = cluster.current_ring().member(t.from[0]).unwrap().addr.clone();
    let probe = cluster.net().endpoint("probe");
    let not_gained = (0..64).find(|p| !plan.transfers.iter().any(|x| x.partition == *p)).unwrap();
    let pull = |epoch: u64, to: NodeId, partition: u32| Request::HandoffPull {
        epoch,
        to,
        partition,
        after: None,
        max_bytes: 1 << 20,
    };
    let before = cluster.node(source).unwrap().metrics();
    for (request, expected) in [
        (pull(plan.epoch, NodeId(4), not_gained), "does not gain"),
        (pull(plan.epoch, NodeId(2), t.partition), "does not gain"),
        (pull(plan.epoch, NodeId(4), 1 << 20), "does not gain"),
        (pull(plan.epoch + 1, NodeId(4), t.partition), "ring epoch"),
    ] {
        let answer = probe.call(&addr, request.encode(), Duration::from_secs(1)).await.unwrap();
        match Response::decode(&answer).unwrap() {
            Response::Error(e) => {
                let e = e.into_error();
                assert!(e.to_string().contains(expected), "{e}");
            }
            other => panic!("a bad pull was answered: {other:?}"),
        }
    }
    assert_eq!(cluster.node(source).unwrap().metrics().handoff_keys_sent, before.handoff_keys_sent);
    let answer = probe
        .call(&addr, pull(plan.epoch, t.to, t.partition).encode(), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(matches!(Response::decode(&answer).unwrap(), Response::HandoffBatch { done: true, .. }));
    cluster.shutdown().await;
}

/// A hint delivered to a node a move takes the key's partition away from
/// is refused and stored nowhere: that node drops its copy once the
/// gaining node has its own, which may have been copied before the hint
/// arrived, and the deliverer forgets a hint once acknowledged (a lost
/// acknowledged add, found by simulation seed 15681). Read repair and
/// retractions (epoch 0) still merge there; the gaining node takes hints.
#[tokio::test(start_paused = true)]
async fn a_node_losing_a_partition_refuses_hints_for_it() {
    use dynamo_core::causality::{Actor, CausalContext, Dot, SiblingSet};
    use dynamo_core::transport::protocol::{Request, Response};
    use dynamo_core::transport::Transport;
    // Data in every partition, so that no copy completes.
    let (cluster, plan) = a_move_under_way(400).await;
    let ring = cluster.current_ring();
    let t = plan.transfers[0].clone();
    let list = ring.preference_list(t.partition);
    let loser = [NodeId(1), NodeId(2), NodeId(3)].into_iter().find(|n| !list.contains(n)).unwrap();
    let key =
        (0..).map(|i| format!("h{i}")).find(|k| ring.partition_of(k.as_bytes()) == t.partition).unwrap();
    let probe = cluster.net().endpoint("probe");
    let call = |node: NodeId, frame: Bytes| {
        let addr = ring.member(node).unwrap().addr.clone();
        let probe = Arc::clone(&probe);
        async move { Response::decode(&probe.call(&addr, frame, Duration::from_secs(1)).await.unwrap()).unwrap() }
    };
    // A timestamp of the cluster's clock: a stored key's.
    let Response::State(Some(k0)) =
        call(NodeId(1), Request::Get { key: "k0".into(), hint_for: None }.encode()).await
    else {
        panic!("k0 is not stored on node 1");
    };
    let now = SiblingSet::decode(&k0).unwrap().max_timestamp();
    let mut state = SiblingSet::new();
    let dot = Dot { actor: Actor { node: NodeId(9), epoch: 1 }, counter: 1 };
    state.apply_write(&CausalContext::new(), dot, now, Some(Bytes::from_static(b"hinted")));
    let replicate = |epoch: u64| {
        Request::Replicate {
            key: Bytes::from(key.clone()),
            state: Bytes::from(state.encode()),
            sibling_limit: None,
            epoch,
        }
        .encode()
    };
    let get = || Request::Get { key: Bytes::from(key.clone()), hint_for: None }.encode();
    for epoch in [plan.base_epoch, plan.epoch] {
        match call(loser, replicate(epoch)).await {
            Response::Error(e) => assert!(matches!(e.into_error(), Error::NotReplica { .. })),
            other => panic!("the losing node took a hint: {other:?}"),
        }
    }
    let held = call(loser, get()).await;
    assert!(matches!(held, Response::State(None)), "the refused hint was stored: {held:?}");
    assert!(!cluster.handoff_settled(), "the move was still under way");
    let repaired = call(loser, replicate(0)).await;
    assert!(matches!(repaired, Response::Ack), "a repair still merges: {repaired:?}");
    assert!(matches!(call(t.to, replicate(plan.epoch)).await, Response::Ack), "the gaining node takes it");
    assert!(matches!(call(t.to, get()).await, Response::State(Some(_))));
    cluster.shutdown().await;
}
