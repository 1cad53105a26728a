//! The core's cluster scenarios, as a suite any backend combination runs.
//!
//! Each scenario takes a [`ClusterBuilder`] (which chooses the backend and
//! seed) and asserts an invariant of the request path. The simulated
//! network runs them on tokio's paused clock; real backends run them on
//! real time. [`cluster_suite!`](crate::cluster_suite) makes one test per
//! scenario:
//!
//! ```ignore
//! dynamo_testkit::cluster_suite!(#[tokio::test(start_paused = true)] dynamo_testkit::Cluster::builder());
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dynamo_core::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::history::{check_no_lost_writes, check_no_resurrection, encode_set, union_of};
use crate::{test_seed, ClusterBuilder};

/// How long a scenario waits for replicas to converge.
const CONVERGE: Duration = Duration::from_secs(60);

fn v(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}

fn sorted(mut values: Vec<Bytes>) -> Vec<Bytes> {
    values.sort();
    values
}

/// 5 nodes, N=3 R=2 W=2: 100 keys written through every node and read through others; writes through non-owners are forwarded.
pub async fn five_nodes_write_anywhere_read_anywhere(builder: ClusterBuilder) {
    let cluster = builder.nodes(5).n(3).r(2).w(2).build().await.unwrap();
    for i in 0..100 {
        let key = format!("key-{i}");
        cluster.client(i % 5).put(key.as_bytes(), v(&format!("value-{i}")), None).await.unwrap();
    }
    for i in 0..100 {
        let key = format!("key-{i}");
        let got = cluster.client((i + 2) % 5).get(key.as_bytes()).await.unwrap();
        assert_eq!(got.values, vec![v(&format!("value-{i}"))], "key {key}, seed {}", cluster.seed());
    }
    let forwarded: u64 = (0..5).map(|i| cluster.node(i).unwrap().metrics().forwarded).sum();
    assert!(forwarded > 0, "writes through non-owners are forwarded");
    cluster.wait_converged(CONVERGE).await.unwrap();
}

/// R + W > N: 1,000 random reads and writes (sequential, seeded) always read the last acknowledged write.
pub async fn read_your_acknowledged_write_over_random_operations(builder: ClusterBuilder) {
    let seed = test_seed(11);
    let cluster = builder.nodes(5).n(3).r(2).w(2).seed(seed).build().await.unwrap();
    if let Some(net) = cluster.sim_net() {
        net.set_delay(Duration::from_micros(100), Duration::from_millis(5));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut model: BTreeMap<String, (Bytes, Context)> = BTreeMap::new();
    for op in 0..1_000 {
        let key = format!("key-{}", rng.random_range(0..20));
        let client = cluster.client(rng.random_range(0..5));
        if rng.random_bool(0.5) {
            let value = v(&format!("{key}-op{op}"));
            let ctx = model.get(&key).map(|(_, c)| c.clone());
            let new_ctx = client.put(key.as_bytes(), value.clone(), ctx.as_ref()).await.unwrap();
            model.insert(key, (value, new_ctx));
        } else {
            let got = client.get(key.as_bytes()).await.unwrap();
            match model.get(&key) {
                Some((value, _)) => {
                    assert_eq!(got.values, vec![value.clone()], "op {op} on {key}, seed {seed}")
                }
                None => assert!(!got.is_found(), "op {op}: {key} was never written, seed {seed}"),
            }
        }
    }
}

/// Two writes with the same stale context through one coordinator both survive as siblings; a covering write collapses them.
pub async fn stale_context_writes_through_one_coordinator_become_siblings(builder: ClusterBuilder) {
    let cluster = builder.nodes(3).build().await.unwrap();
    let c = cluster.client(0);
    c.put(b"cart", v("v0"), None).await.unwrap();
    let stale = c.get(b"cart").await.unwrap().context;
    c.put(b"cart", v("v1"), Some(&stale)).await.unwrap();
    c.put(b"cart", v("v2"), Some(&stale)).await.unwrap();
    for i in 0..3 {
        let got = cluster.client(i).get(b"cart").await.unwrap();
        assert_eq!(sorted(got.values), vec![v("v1"), v("v2")], "read via node {i}");
    }
    let both = c.get(b"cart").await.unwrap().context;
    c.put(b"cart", v("v3"), Some(&both)).await.unwrap();
    assert_eq!(cluster.client(2).get(b"cart").await.unwrap().values, vec![v("v3")]);
}

/// The context a put returns replaces that write only, not a concurrent one.
pub async fn put_context_replaces_only_its_own_write(builder: ClusterBuilder) {
    let cluster = builder.nodes(3).build().await.unwrap();
    let (a, b) = (cluster.client(0), cluster.client(1));
    let ctx_a = a.put(b"k", v("a1"), None).await.unwrap();
    b.put(b"k", v("b1"), None).await.unwrap();
    a.put(b"k", v("a2"), Some(&ctx_a)).await.unwrap();
    assert_eq!(sorted(a.get(b"k").await.unwrap().values), vec![v("a2"), v("b1")]);
}

/// With last-write-wins, concurrent writes resolve to the later one on every node, and storage keeps one sibling.
pub async fn last_write_wins_resolves_siblings_deterministically(builder: ClusterBuilder) {
    let cluster = builder.nodes(3).reconciler(Arc::new(LastWriteWins)).build().await.unwrap();
    let c = cluster.client(0);
    c.put(b"k", v("v0"), None).await.unwrap();
    let stale = c.get(b"k").await.unwrap().context;
    c.put(b"k", v("v1"), Some(&stale)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    cluster.client(1).put(b"k", v("v2"), Some(&stale)).await.unwrap();
    for i in 0..3 {
        assert_eq!(cluster.client(i).get(b"k").await.unwrap().values, vec![v("v2")], "node {i}");
    }
    cluster.wait_converged(CONVERGE).await.unwrap();
    for i in 0..3 {
        let state = cluster.replica_state(i, b"k").await.unwrap().unwrap();
        assert_eq!(state.siblings().len(), 1, "LWW keeps one sibling in storage on node {i}");
    }
}

/// A partitioned owner is replaced by a fallback (W=3 still succeeds); the hint is delivered and removed after healing.
pub async fn partitioned_owner_is_replaced_by_a_fallback_and_gets_its_hint(builder: ClusterBuilder) {
    let cluster = builder.nodes(5).n(3).r(2).w(2).build().await.unwrap();
    let key = cluster.key_where(|pl| pl[0] == 0);
    let pl = cluster.preference_list(&key);
    let down = pl[2];
    cluster.isolate(down);
    // W = 3 needs a third ack, which only a fallback can give.
    let w3 = WriteOptions { w: Some(3), timeout: None };
    cluster.client(pl[0]).put_with(&key, v("during-partition"), None, w3).await.unwrap();
    let mut holders = Vec::new();
    for i in (0..5).filter(|i| !pl.contains(i)) {
        let hints = cluster.local_state(i, &key).await.unwrap().hints;
        if hints.iter().any(|(owner, _)| *owner == NodeId(down as u64 + 1)) {
            holders.push(i);
        }
    }
    assert_eq!(holders.len(), 1, "one fallback holds the hint for node {down}");
    assert_eq!(cluster.replica_state(down, &key).await.unwrap(), None);
    cluster.heal();
    cluster.wait_converged(CONVERGE).await.unwrap();
    let state = cluster.replica_state(down, &key).await.unwrap().expect("hint delivered");
    assert_eq!(
        state.live().map(|s| s.value.clone().unwrap()).collect::<Vec<_>>(),
        vec![v("during-partition")]
    );
    assert!(cluster.local_state(holders[0], &key).await.unwrap().hints.is_empty(), "hint removed");
    assert!(cluster.node(holders[0]).unwrap().metrics().hints_delivered >= 1);
}

/// Hints are durable: a fallback restarted with its store still delivers them.
pub async fn hints_survive_a_restart_of_the_fallback(builder: ClusterBuilder) {
    let cluster = builder.nodes(4).n(3).build().await.unwrap();
    let key = cluster.key_where(|pl| pl[0] == 0);
    let down = cluster.preference_list(&key)[1];
    cluster.kill(down).await;
    let w3 = WriteOptions { w: Some(3), timeout: None };
    cluster.client(0).put_with(&key, v("x"), None, w3).await.unwrap();
    let fallback = (0..4).find(|i| !cluster.preference_list(&key).contains(i)).unwrap();
    cluster.restart(fallback).await.unwrap();
    assert_eq!(cluster.local_state(fallback, &key).await.unwrap().hints.len(), 1);
    cluster.restart(down).await.unwrap();
    cluster.wait_converged(CONVERGE).await.unwrap();
    assert!(cluster.replica_state(down, &key).await.unwrap().is_some());
}

/// Strict quorum with an isolated owner fails with QuorumFailed naming 2 of 3 acks.
pub async fn strict_quorum_fails_with_the_ack_count(builder: ClusterBuilder) {
    let cluster = builder.nodes(3).n(3).w(3).strict().build().await.unwrap();
    cluster.isolate(2);
    let err = cluster.client(0).put(b"k", v("x"), None).await.unwrap_err();
    assert_eq!(err, Error::QuorumFailed { acks: 2, needed: 3 });
    assert!(err.to_string().contains("2 of 3"), "{err}");
    let r3 = ReadOptions { r: Some(3), timeout: None };
    let err = cluster.client(0).get_with(b"k", r3).await.unwrap_err();
    assert_eq!(err, Error::QuorumFailed { acks: 2, needed: 3 });
}

/// A delete, then a stale replica restarted and healed: no read resurrects the value.
pub async fn deleted_key_does_not_come_back_from_a_stale_replica(builder: ClusterBuilder) {
    let cluster = builder.nodes(3).build().await.unwrap();
    let c = cluster.client(0);
    c.put(b"k", v("old"), None).await.unwrap();
    cluster.wait_converged(CONVERGE).await.unwrap();
    cluster.isolate(2);
    let ctx = c.get(b"k").await.unwrap().context;
    c.delete(b"k", Some(&ctx)).await.unwrap();
    assert!(!c.get(b"k").await.unwrap().is_found());
    // Node 2 still holds the old value; restart it with its store and heal.
    let stale = cluster.replica_state(2, b"k").await.unwrap().unwrap();
    assert_eq!(stale.live_count(), 1);
    cluster.restart(2).await.unwrap();
    cluster.heal();
    for i in 0..3 {
        let got = cluster.client(i).get_with(b"k", ReadOptions { r: Some(3), timeout: None }).await.unwrap();
        assert!(!got.is_found(), "read via node {i} resurrected {:?}", got.values);
    }
    cluster.wait_converged(CONVERGE).await.unwrap();
    assert_eq!(cluster.replica_state(2, b"k").await.unwrap().unwrap().live_count(), 0);
    let finals = cluster.read_all(1).await.unwrap();
    check_no_resurrection(cluster.history(), &finals).unwrap();
}

/// A delete without context reads at R first and removes what that read saw: every sibling, even through a replica that missed the write.
pub async fn delete_without_context_removes_what_a_quorum_read_sees(builder: ClusterBuilder) {
    let cluster = builder.nodes(3).build().await.unwrap();
    let key = cluster.key_where(|pl| pl.contains(&0));
    let c = cluster.client(0);
    c.put(&key, v("a"), None).await.unwrap();
    c.put(&key, v("b"), None).await.unwrap();
    assert_eq!(c.get(&key).await.unwrap().values.len(), 2);
    c.delete(&key, None).await.unwrap();
    assert!(!c.get(&key).await.unwrap().is_found());
    // Every replica holds the delete (W=2 acknowledged it before the third
    // copy landed) before node 2 is cut off.
    cluster.wait_converged(CONVERGE).await.unwrap();
    // Through a replica that missed the write (it was cut off).
    cluster.isolate(2);
    c.put(&key, v("keepme"), None).await.unwrap();
    cluster.heal();
    assert_eq!(cluster.replica_state(2, &key).await.unwrap().map(|s| s.live_count()).unwrap_or(0), 0);
    cluster.client(2).delete(&key, None).await.unwrap();
    let all = ReadOptions { r: Some(3), timeout: None };
    let got = cluster.client(1).get_with(&key, all).await.unwrap();
    assert!(!got.is_found(), "the delete through node 2 left {:?}", got.values);
}

/// One read repairs a replica that missed a write.
pub async fn read_repair_fixes_a_stale_replica_after_one_read(builder: ClusterBuilder) {
    let cluster = builder.nodes(3).build().await.unwrap();
    let c = cluster.client(0);
    let ctx = c.put(b"k", v("v1"), None).await.unwrap();
    cluster.wait_converged(CONVERGE).await.unwrap();
    cluster.isolate(2);
    c.put(b"k", v("v2"), Some(&ctx)).await.unwrap();
    cluster.heal();
    let before = cluster.replica_state(2, b"k").await.unwrap().unwrap();
    assert_eq!(before.live().next().unwrap().value, Some(v("v1")), "node 2 is stale");
    assert_eq!(c.get(b"k").await.unwrap().values, vec![v("v2")]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = cluster.replica_state(2, b"k").await.unwrap().unwrap();
        if now.live().next().and_then(|s| s.value.clone()) == Some(v("v2")) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "node 2 was not repaired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(cluster.node(0).unwrap().metrics().read_repairs >= 1);
}

/// A replica whose store was wiped does not reissue an old dot (Riak KV679): its new write survives.
pub async fn wiped_replica_never_reissues_a_dot(builder: ClusterBuilder) {
    let cluster = builder.nodes(3).build().await.unwrap();
    let key = cluster.key_where(|pl| pl.contains(&0));
    let c0 = cluster.client(0);
    c0.put(&key, v("before-wipe"), None).await.unwrap();
    cluster.wait_converged(CONVERGE).await.unwrap();
    cluster.wipe_and_restart(0).await.unwrap();
    let c0 = cluster.client(0);
    // Node 0 has no state for the key: it must not reuse its old dot.
    c0.put(&key, v("after-wipe"), None).await.unwrap();
    let all = ReadOptions { r: Some(3), timeout: None };
    let got = cluster.client(1).get_with(&key, all).await.unwrap();
    assert_eq!(sorted(got.values), vec![v("after-wipe"), v("before-wipe")]);
    cluster.wait_converged(CONVERGE).await.unwrap();
}

/// Read-modify-write of sets under isolations and partitions: after healing, no acknowledged element is lost.
pub async fn set_union_workload_under_partitions_loses_nothing(builder: ClusterBuilder) {
    let seed = test_seed(5);
    // Requests may fail here; a short replica timeout keeps the ones sent
    // into a partition from waiting long on real time.
    let cluster = builder.nodes(5).n(3).r(2).w(2).seed(seed).replica_timeout_ms(500).build().await.unwrap();
    if let Some(net) = cluster.sim_net() {
        net.set_delay(Duration::from_micros(50), Duration::from_millis(3));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut element = 0u64;
    for round in 0..40 {
        match round % 10 {
            3 => {
                let a = rng.random_range(0..5);
                cluster.isolate(a);
            }
            6 => cluster.partition(&[0, 1], &[2, 3, 4]),
            9 => cluster.heal(),
            _ => {}
        }
        for _ in 0..10 {
            let key = format!("set-{}", rng.random_range(0..8));
            let client = cluster.client(rng.random_range(0..5));
            let Ok(read) = client.get(key.as_bytes()).await else { continue };
            let mut set = union_of(&read.values);
            element += 1;
            set.insert(element);
            let _ = client.put(key.as_bytes(), encode_set(&set), Some(&read.context)).await;
        }
    }
    cluster.heal();
    cluster.wait_converged(CONVERGE).await.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    let finals = cluster.read_all(0).await.unwrap();
    check_no_lost_writes(cluster.history(), &finals).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    let acked = cluster.history().events().iter().filter(|e| e.ok).count();
    assert!(acked > 300, "the workload made progress ({acked} acknowledged operations)");
}

/// Over-long keys, empty keys, over-size values and bad quorums are refused and change nothing; limits are inclusive.
pub async fn bad_input_is_refused_and_changes_nothing(builder: ClusterBuilder) {
    let cluster = builder.nodes(3).build().await.unwrap();
    let node = cluster.node(0).unwrap();
    let max_key = node.config().max_key_len;
    let max_value = node.config().max_value_size;
    let w = WriteOptions::default();
    // Limits are inclusive.
    let key = vec![b'k'; max_key];
    node.put(&key, Bytes::from(vec![0u8; max_value]), None, w).await.unwrap();
    let before = cluster.replica_state(0, &key).await.unwrap();
    let too_long = vec![b'k'; max_key + 1];
    assert_eq!(
        node.put(&too_long, v("x"), None, w).await.unwrap_err(),
        Error::KeyTooLong { len: max_key + 1, max: max_key }
    );
    assert_eq!(node.put(b"", v("x"), None, w).await.unwrap_err(), Error::EmptyKey);
    assert_eq!(
        node.put(&key, Bytes::from(vec![0u8; max_value + 1]), None, w).await.unwrap_err(),
        Error::ValueTooLarge { size: max_value + 1, max: max_value }
    );
    let bad_w = WriteOptions { w: Some(4), timeout: None };
    assert!(matches!(node.put(&key, v("x"), None, bad_w).await, Err(Error::InvalidQuorum { value: 4, .. })));
    assert_eq!(cluster.replica_state(0, &key).await.unwrap(), before, "rejected writes stored nothing");
    // Contexts: garbage and another key's token are refused.
    assert!(Context::decode(b"\x01garbage", &key).is_err());
    let other = node.get(b"other", ReadOptions::default()).await.unwrap().context.encode(b"other");
    assert!(Context::decode(&other, &key).is_err());
}

/// Past max_siblings a write is refused with an error naming the key; a resolving write still works.
pub async fn sibling_limit_refuses_the_write_and_names_the_key(builder: ClusterBuilder) {
    let config = Config { max_siblings: 3, ..Config::default() };
    let cluster = builder.nodes(3).config(config).build().await.unwrap();
    let key = cluster.key_where(|pl| pl[0] == 0);
    let c = cluster.client(0);
    for i in 0..3 {
        c.put(&key, v(&format!("s{i}")), None).await.unwrap();
    }
    let err = c.put(&key, v("s3"), None).await.unwrap_err();
    let name = String::from_utf8(key.clone()).unwrap();
    assert_eq!(err, Error::TooManySiblings { key: name.clone(), count: 4, max: 3 });
    assert!(err.to_string().contains(&name));
    assert_eq!(c.get(&key).await.unwrap().values.len(), 3);
    // Resolving with the read's context is always possible.
    let ctx = c.get(&key).await.unwrap().context;
    c.put(&key, v("resolved"), Some(&ctx)).await.unwrap();
    assert_eq!(c.get(&key).await.unwrap().values, vec![v("resolved")]);
}

/// One test per scenario of [`scenarios`](crate::scenarios), each with the
/// given test attribute and a fresh builder from `$builder`.
#[macro_export]
macro_rules! cluster_suite {
    (#[$attr:meta] $builder:expr) => {
        #[$attr]
        async fn five_nodes_write_anywhere_read_anywhere() {
            $crate::scenarios::five_nodes_write_anywhere_read_anywhere($builder).await
        }
        #[$attr]
        async fn read_your_acknowledged_write_over_random_operations() {
            $crate::scenarios::read_your_acknowledged_write_over_random_operations($builder).await
        }
        #[$attr]
        async fn stale_context_writes_through_one_coordinator_become_siblings() {
            $crate::scenarios::stale_context_writes_through_one_coordinator_become_siblings($builder).await
        }
        #[$attr]
        async fn put_context_replaces_only_its_own_write() {
            $crate::scenarios::put_context_replaces_only_its_own_write($builder).await
        }
        #[$attr]
        async fn last_write_wins_resolves_siblings_deterministically() {
            $crate::scenarios::last_write_wins_resolves_siblings_deterministically($builder).await
        }
        #[$attr]
        async fn partitioned_owner_is_replaced_by_a_fallback_and_gets_its_hint() {
            $crate::scenarios::partitioned_owner_is_replaced_by_a_fallback_and_gets_its_hint($builder).await
        }
        #[$attr]
        async fn hints_survive_a_restart_of_the_fallback() {
            $crate::scenarios::hints_survive_a_restart_of_the_fallback($builder).await
        }
        #[$attr]
        async fn strict_quorum_fails_with_the_ack_count() {
            $crate::scenarios::strict_quorum_fails_with_the_ack_count($builder).await
        }
        #[$attr]
        async fn deleted_key_does_not_come_back_from_a_stale_replica() {
            $crate::scenarios::deleted_key_does_not_come_back_from_a_stale_replica($builder).await
        }
        #[$attr]
        async fn delete_without_context_removes_what_a_quorum_read_sees() {
            $crate::scenarios::delete_without_context_removes_what_a_quorum_read_sees($builder).await
        }
        #[$attr]
        async fn read_repair_fixes_a_stale_replica_after_one_read() {
            $crate::scenarios::read_repair_fixes_a_stale_replica_after_one_read($builder).await
        }
        #[$attr]
        async fn wiped_replica_never_reissues_a_dot() {
            $crate::scenarios::wiped_replica_never_reissues_a_dot($builder).await
        }
        #[$attr]
        async fn set_union_workload_under_partitions_loses_nothing() {
            $crate::scenarios::set_union_workload_under_partitions_loses_nothing($builder).await
        }
        #[$attr]
        async fn bad_input_is_refused_and_changes_nothing() {
            $crate::scenarios::bad_input_is_refused_and_changes_nothing($builder).await
        }
        #[$attr]
        async fn sibling_limit_refuses_the_write_and_names_the_key() {
            $crate::scenarios::sibling_limit_refuses_the_write_and_names_the_key($builder).await
        }
    };
}
