//! Faults that probes of the release binary found (buffered crashes, late
//! forwarded writes, timestamp ties, concurrent writers past the sibling
//! limit, a node restarted under another ring), each replayed on the
//! simulated network as the probe found it, then checked as an invariant.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dynamo_core::prelude::*;
use dynamo_core::transport::protocol::{Request, RequestId, Response, WriteRequest};
use dynamo_testkit::history::{check_no_lost_writes, encode_set, union_of};
use dynamo_testkit::{test_seed, Cluster, SimNetwork};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

const CONVERGE: Duration = Duration::from_secs(60);
const ALL: ReadOptions = ReadOptions { r: Some(3), timeout: None };

fn v(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}

fn sorted(mut values: Vec<Bytes>) -> Vec<Bytes> {
    values.sort();
    values
}

/// The live values node `i` itself stores for `key`.
async fn local_values(cluster: &Cluster, i: usize, key: &[u8]) -> Vec<Bytes> {
    let state = cluster.replica_state(i, key).await.unwrap();
    sorted(state.map(|s| s.live().filter_map(|s| s.value.clone()).collect()).unwrap_or_default())
}

/// Waits (in simulated time) until node `i` stores exactly `values` for `key`.
async fn wait_local(cluster: &Cluster, i: usize, key: &[u8], values: &[Bytes]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while local_values(cluster, i, key).await != values {
        assert!(Instant::now() < deadline, "node {i} never stored {values:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Buffered durability: node 0 crashes with v11..v30 unflushed, so it
/// restarts holding v10 (its dot counter at 10) while its peers hold v30.
/// Its next writes, blind or with the context of the v30 write, must not
/// reuse a dot its peers have seen (they would drop the write as old).
#[tokio::test(start_paused = true)]
async fn a_buffered_crash_never_reissues_a_dot() {
    let cluster = Cluster::builder().nodes(3).buffered_stores(None).build().await.unwrap();
    let c = cluster.client(0);
    let mut ctx = None;
    for i in 1..=30 {
        ctx = Some(c.put(b"k", v(&format!("v{i}")), ctx.as_ref()).await.unwrap());
        if i == 10 {
            cluster.flush().unwrap();
        }
    }
    let ctx30 = ctx.unwrap();
    for i in 1..3 {
        wait_local(&cluster, i, b"k", &[v("v30")]).await;
    }
    cluster.kill(0).await;
    cluster.start(0).await.unwrap();
    assert_eq!(local_values(&cluster, 0, b"k").await, vec![v("v10")], "the crash lost v11..v30 on node 0");

    let c = cluster.client(0);
    c.put(b"k", v("after-crash"), None).await.unwrap();
    let got = cluster.client(1).get_with(b"k", ALL).await.unwrap();
    assert_eq!(sorted(got.values), vec![v("after-crash"), v("v30")], "the blind write after the crash");
    c.put(b"k", v("after-ctx"), Some(&ctx30)).await.unwrap();
    let got = cluster.client(2).get_with(b"k", ALL).await.unwrap();
    assert_eq!(sorted(got.values), vec![v("after-crash"), v("after-ctx")], "the write with v30's context");
    cluster.wait_converged(CONVERGE).await.unwrap();
}

/// Found by the simulation sweep: the epoch reservation itself was a
/// buffered write. A node's first write to a key reserved a fresh epoch;
/// the crash lost the reservation with the write, the restart handed the
/// same epoch out again, and the key's next write reused the lost write's
/// dot, which the other replicas dropped as already seen.
#[tokio::test(start_paused = true)]
async fn an_epoch_reserved_before_a_buffered_crash_is_never_reused() {
    let cluster = Cluster::builder().nodes(3).buffered_stores(None).build().await.unwrap();
    let w3 = WriteOptions { w: Some(3), timeout: None };
    cluster.client(0).put_with(b"k", v("before"), None, w3).await.unwrap();
    cluster.kill(0).await;
    cluster.start(0).await.unwrap();
    assert!(local_values(&cluster, 0, b"k").await.is_empty(), "the crash lost the write on node 0");
    cluster.client(0).put(b"k", v("after"), None).await.unwrap();
    let got = cluster.client(1).get_with(b"k", ALL).await.unwrap();
    assert_eq!(sorted(got.values), vec![v("after"), v("before")]);
}

/// Set-union carts, read-modify-write with contexts, while one node at a
/// time crashes and loses its unflushed writes (its two peers stay up):
/// no acknowledged add is lost. The probe lost 36% of them.
#[tokio::test(start_paused = true)]
async fn carts_lose_no_acknowledged_add_when_one_node_at_a_time_crashes_in_buffered_mode() {
    for seed in test_seed(21)..test_seed(21) + 6 {
        let cluster = Cluster::builder()
            .nodes(3)
            .seed(seed)
            .buffered_stores(Some(Duration::from_millis(200)))
            .build()
            .await
            .unwrap();
        cluster.net().set_delay(Duration::from_micros(100), Duration::from_millis(3));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut element, mut down) = (0u64, None);
        for round in 0..24 {
            if round % 3 == 1 {
                match down.take() {
                    Some(d) => cluster.start(d).await.unwrap(),
                    None => {
                        let d = rng.random_range(0..3);
                        cluster.kill(d).await;
                        down = Some(d);
                    }
                }
            }
            for _ in 0..12 {
                let key = format!("cart-{}", rng.random_range(0..4));
                let via = (0..3).filter(|i| Some(*i) != down).nth(rng.random_range(0..2)).unwrap();
                let client = cluster.client(via);
                let Ok(read) = client.get(key.as_bytes()).await else { continue };
                let mut set = union_of(&read.values);
                element += 1;
                set.insert(element);
                let _ = client.put(key.as_bytes(), encode_set(&set), Some(&read.context)).await;
            }
        }
        if let Some(d) = down {
            cluster.start(d).await.unwrap();
        }
        cluster.wait_converged(CONVERGE).await.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let finals = cluster.read_all(0).await.unwrap();
        check_no_lost_writes(cluster.history(), &finals).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let acked = cluster.history().events().iter().filter(|e| e.ok).count();
        assert!(acked > 300, "seed {seed}: the workload made progress ({acked} acknowledged operations)");
    }
}

/// All three nodes crash at once in buffered mode: only adds inside the
/// flush window before the crash may be lost; everything acknowledged
/// earlier, and everything after the restart, survives.
#[tokio::test(start_paused = true)]
async fn when_every_node_crashes_only_the_flush_window_is_lost() {
    let window = Duration::from_millis(100);
    let seed = test_seed(33);
    let cluster = Cluster::builder().nodes(3).seed(seed).buffered_stores(Some(window)).build().await.unwrap();
    cluster.net().set_delay(Duration::from_micros(200), Duration::from_millis(2));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut acked: Vec<(u64, Instant)> = Vec::new();
    let mut element = 0u64;
    let mut crashed_at = None;
    for round in 0..3 {
        if round == 2 {
            for i in 0..3 {
                cluster.kill(i).await;
            }
            crashed_at = Some(Instant::now());
            for i in 0..3 {
                cluster.start(i).await.unwrap();
            }
        }
        for _ in 0..150 {
            let key = format!("cart-{}", rng.random_range(0..3));
            let client = cluster.client(rng.random_range(0..3));
            let Ok(read) = client.get(key.as_bytes()).await else { continue };
            let mut set = union_of(&read.values);
            element += 1;
            set.insert(element);
            if client.put(key.as_bytes(), encode_set(&set), Some(&read.context)).await.is_ok() {
                acked.push((element, Instant::now()));
            }
        }
    }
    cluster.wait_converged(CONVERGE).await.unwrap();
    let finals: BTreeMap<Bytes, Vec<Bytes>> = cluster.read_all(0).await.unwrap();
    let present: std::collections::BTreeSet<u64> = finals.values().flat_map(|v| union_of(v)).collect();
    let crashed_at = crashed_at.unwrap();
    // A store flushes on the first write after the interval: allow two.
    let must_survive = |at: Instant| at + 2 * window <= crashed_at || at > crashed_at;
    let lost: Vec<u64> =
        acked.iter().filter(|(e, at)| must_survive(*at) && !present.contains(e)).map(|(e, _)| *e).collect();
    assert!(lost.is_empty(), "seed {seed}: adds acknowledged outside the flush window were lost: {lost:?}");
    assert!(acked.len() > 300, "the workload made progress ({} acknowledged adds)", acked.len());
}

/// The probe: node 3 (first of the key's preference list) is stopped; a
/// write through node 1 is forwarded to it and times out. Node 1 must give
/// up after one replica timeout, and node 3, once it runs again, must not
/// execute the write it was holding, which would undo the delete that
/// followed.
#[tokio::test(start_paused = true)]
async fn a_forwarded_write_its_sender_gave_up_on_never_executes_later() {
    let cluster = Cluster::builder().nodes(5).build().await.unwrap();
    let key = cluster.key_where(|pl| !pl.contains(&0));
    let stopped = cluster.preference_list(&key)[0];
    cluster.pause(stopped);
    let c = cluster.client(0);
    let start = Instant::now();
    let put = c.put(&key, v("stale"), None).await;
    let took = start.elapsed();
    let replica_timeout = cluster.node(0).unwrap().config().replica_timeout();
    assert!(took <= replica_timeout + Duration::from_millis(10), "the forward gave up after {took:?}");
    // Whatever the answer (a timeout: the outcome is unknown), read and
    // delete what the read saw.
    let read = c.get(&key).await.unwrap();
    if put.is_ok() {
        assert_eq!(read.values, vec![v("stale")], "an acknowledged write is readable");
    }
    c.delete(&key, Some(&read.context)).await.unwrap();
    assert!(!c.get(&key).await.unwrap().is_found());
    cluster.resume(stopped);
    cluster.wait_converged(CONVERGE).await.unwrap();
    let got = cluster.client(0).get_with(&key, ALL).await.unwrap();
    assert!(!got.is_found(), "the late forwarded write came back: {:?}", got.values);
    assert!(local_values(&cluster, stopped, &key).await.is_empty());
}

/// A forwarded write (a `Coordinate` frame) executes once even if the
/// network delivers it twice, never after its deadline, and a peer's
/// absurd timeout is clamped rather than trusted.
#[tokio::test(start_paused = true)]
async fn a_forwarded_write_executes_at_most_once_and_never_after_its_deadline() {
    let cluster = Cluster::builder().nodes(3).build().await.unwrap();
    let probe = cluster.net().endpoint("probe");
    let addr = cluster.ring().member(NodeId(1)).unwrap().addr.clone();
    let frame = |seq: u64, value: &str, start_by_us: u64| {
        Request::Coordinate(WriteRequest {
            id: RequestId { origin: NodeId(99), seq },
            key: v("k"),
            value: Some(v(value)),
            content_type: None,
            context: None,
            seen_us: 0,
            w: 2,
            timeout_ms: u64::MAX,
            start_by_us,
        })
        .encode()
    };
    let call = |frame: Bytes| {
        let (probe, addr) = (probe.clone(), addr.clone());
        async move { Response::decode(&probe.call(&addr, frame, Duration::from_secs(5)).await.unwrap()).unwrap() }
    };
    let now = cluster.now_us();
    let once = frame(1, "once", now + 1_000_000);
    assert!(matches!(call(once.clone()).await, Response::Written { .. }));
    let refused = |r: Response| match r {
        Response::Error(e) => e.into_error(),
        other => panic!("expected an error, got {other:?}"),
    };
    assert!(matches!(refused(call(once).await), Error::DuplicateRequest(_)));
    let late = frame(2, "late", now.saturating_sub(1));
    assert!(matches!(refused(call(late).await), Error::Expired { .. }));
    let got = cluster.client(1).get_with(b"k", ALL).await.unwrap();
    assert_eq!(got.values, vec![v("once")], "one event for the duplicated frame, none for the late one");
}

/// Last-write-wins on a timestamp tie: with the paused clock every write
/// happens in the same microsecond. A write that begins after another was
/// acknowledged (on all three replicas) must win, whichever node id is
/// higher.
#[tokio::test(start_paused = true)]
async fn last_write_wins_never_drops_a_later_acknowledged_write_on_a_tie() {
    let cluster = Cluster::builder().nodes(3).reconciler(Arc::new(LastWriteWins)).build().await.unwrap();
    let w3 = WriteOptions { w: Some(3), timeout: None };
    for i in 0..50 {
        let key = format!("k{i}");
        cluster.client(2).put_with(key.as_bytes(), v("first"), None, w3).await.unwrap();
        cluster.client(0).put_with(key.as_bytes(), v("second"), None, w3).await.unwrap();
        let got = cluster.client(1).get_with(key.as_bytes(), ALL).await.unwrap();
        assert_eq!(got.values, vec![v("second")], "{key}");
    }
}

/// A replica that missed writes coordinates a blind write that is within
/// the sibling limit locally but not on its peers: they refuse it, the
/// client gets 409, and the write never takes effect anywhere (the
/// coordinator retracts its own copy).
#[tokio::test(start_paused = true)]
async fn no_replica_acknowledges_a_write_past_the_sibling_limit() {
    let config = Config { max_siblings: 3, ..Config::default() };
    let cluster = Cluster::builder().nodes(3).config(config).build().await.unwrap();
    cluster.isolate(2);
    for i in 0..3 {
        cluster.client(0).put(b"k", v(&format!("s{i}")), None).await.unwrap();
    }
    cluster.heal();
    assert!(local_values(&cluster, 2, b"k").await.is_empty(), "node 2 missed the writes");
    let err = cluster.client(2).put(b"k", v("s3"), None).await.unwrap_err();
    assert!(matches!(err, Error::TooManySiblings { count: 4, max: 3, .. }), "{err:?}");
    cluster.wait_converged(CONVERGE).await.unwrap();
    for i in 0..3 {
        assert_eq!(local_values(&cluster, i, b"k").await, vec![v("s0"), v("s1"), v("s2")], "node {i}");
    }
    // A resolving write is always accepted.
    let ctx = cluster.client(2).get(b"k").await.unwrap().context;
    cluster.client(2).put(b"k", v("resolved"), Some(&ctx)).await.unwrap();
    assert_eq!(cluster.client(0).get_with(b"k", ALL).await.unwrap().values, vec![v("resolved")]);
}

/// A refused write that a stand-in kept as a hint is taken back there
/// too: the retraction reaches the stand-in's hint, so delivering it never
/// gives the owner the refused value (simulation seed 3004488 found the
/// hint delivered, and the refused write in effect, on every replica).
#[tokio::test(start_paused = true)]
async fn a_refused_write_kept_as_a_hint_is_taken_back_there() {
    let config = Config { max_siblings: 3, hint_delivery_interval_ms: 3_600_000, ..Config::default() };
    let cluster = Cluster::builder().nodes(4).config(config).build().await.unwrap();
    let key = b"k";
    let list = cluster.preference_list(key);
    let (a, b, c) = (list[0], list[1], list[2]);
    let d = (0..4).find(|i| !list.contains(i)).unwrap();
    cluster.isolate(c);
    for i in 0..3 {
        cluster.client(a).put(key, v(&format!("s{i}")), None).await.unwrap();
    }
    cluster.heal();
    assert!(local_values(&cluster, c, key).await.is_empty(), "node {c} missed the writes");
    // Node c cannot reach b: a stand-in keeps b's copy of c's write.
    cluster.partition(&[c], &[b]);
    let w3 = WriteOptions { w: Some(3), timeout: None };
    let err = cluster.client(c).put_with(key, v("s3"), None, w3).await.unwrap_err();
    assert!(matches!(err, Error::TooManySiblings { .. }), "{err:?}");
    let hint_holds_s3 = || async {
        let state = cluster.local_state(d, key).await.unwrap();
        state.hints.iter().any(|(_, h)| h.live().any(|s| s.value.as_deref() == Some(&b"s3"[..])))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while hint_holds_s3().await {
        assert!(Instant::now() < deadline, "node {d} still holds the refused write as a hint");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hints = cluster.local_state(d, key).await.unwrap().hints;
    assert!(!hints.is_empty(), "node {d} stood in for node {b}");
}

/// A node whose store was written under one ring refuses to start under
/// another (more members, other partition count), naming the difference
/// and changing nothing; adopting the new ring explicitly works.
#[tokio::test(start_paused = true)]
async fn a_node_refuses_to_start_under_another_ring_than_its_data() {
    let net = SimNetwork::new(1);
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let start = |members: u64, partitions: u32, adopt: bool| {
        let (net, store) = (net.clone(), Arc::clone(&store));
        async move {
            let ring_members = (1..=members).map(|i| Member::new(NodeId(i), format!("sim-{i}"))).collect();
            let ring = Ring::new(partitions, 3, ring_members).unwrap();
            let config = Config { partitions, ..Config::default() };
            NodeBuilder::new(NodeId(1))
                .config(config)
                .ring(ring)
                .store(store)
                .transport(net.endpoint("sim-1"))
                .adopt_ring(adopt)
                .start()
                .await
        }
    };
    let node = start(3, 256, false).await.unwrap();
    node.put(b"k", v("x"), None, WriteOptions { w: Some(1), timeout: None }).await.unwrap();
    node.shutdown().await.unwrap();
    match start(5, 256, false).await {
        Err(Error::RingMismatch { differences }) => assert!(differences.contains("members"), "{differences}"),
        other => panic!("expected a ring mismatch, got {other:?}"),
    }
    match start(3, 512, false).await {
        Err(Error::RingMismatch { differences }) => {
            assert!(differences.contains("partitions 256 (now 512)"), "{differences}")
        }
        other => panic!("expected a ring mismatch, got {other:?}"),
    }
    let node = start(3, 256, false).await.unwrap();
    let got = node.get(b"k", ReadOptions { r: Some(1), timeout: None }).await.unwrap();
    assert_eq!(got.values, vec![v("x")], "the refused starts changed nothing");
    node.shutdown().await.unwrap();
    start(5, 256, true).await.unwrap().shutdown().await.unwrap();
}
