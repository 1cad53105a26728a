//! Gossip membership and the phi-accrual detector on the simulated
//! network, on tokio's paused clock: views converge, a killed node is
//! convicted and welcomed back, a node with only a seed joins, another
//! cluster is refused, a restarted node keeps its identity.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dynamo_core::gossip::GossipSettings;
use dynamo_core::membership::{MemberInfo, MemberStatus};
use dynamo_core::prelude::*;
use dynamo_testkit::Cluster;
use tokio::time::Instant;

const CONVERGE: Duration = Duration::from_secs(120);

fn v(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}

#[tokio::test(start_paused = true)]
async fn five_nodes_converge_to_one_view() {
    let cluster = Cluster::builder().nodes(5).gossip().build().await.unwrap();
    let start = Instant::now();
    cluster.wait_gossip_converged(CONVERGE).await.unwrap();
    println!("5 nodes agreed after {:?} of simulated time", start.elapsed());
    for i in 0..5 {
        let node = cluster.node(i).unwrap();
        let view = node.membership().view();
        assert_eq!(view.members().len(), 5, "node {i} knows everyone");
        assert!(view.members().iter().all(|m| m.status == MemberStatus::Active));
        assert_eq!(view.require_ring().unwrap().members().len(), 5);
    }
}

/// A killed node is counted down by the others at their first failed
/// call to it (a gossip round meets it within 4 rounds), stays down, and
/// its silence alone drives phi past the threshold within the bound below;
/// it is up again at its first exchange after a restart. The bound follows
/// from the detector: with 5 nodes and 1 s rounds a node hears from each
/// peer about every 2 s, and phi reaches 8 after the mean interval, the 3 s
/// acceptable pause and about 5.6 standard deviations of the intervals.
#[tokio::test(start_paused = true)]
async fn a_killed_node_is_convicted_within_the_bound_and_welcomed_back() {
    const BOUND: Duration = Duration::from_secs(20);
    let cluster = Cluster::builder().nodes(5).gossip().build().await.unwrap();
    cluster.wait_gossip_converged(CONVERGE).await.unwrap();
    // Let every pair meet a few times so the detector has intervals.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let dead = NodeId(5);
    cluster.kill(4).await;
    let killed = Instant::now();
    let (mut down, mut phi_past) = (vec![None; 4], vec![None; 4]);
    while phi_past.iter().any(Option::is_none) {
        for i in 0..4 {
            let health = cluster.node(i).unwrap().peer_health(dead);
            if down[i].is_none() && !health.available {
                down[i] = Some(killed.elapsed());
            }
            if down[i].is_some() {
                assert!(!health.available, "node {i} counted node 5 down, then up again while it was dead");
            }
            if phi_past[i].is_none() && health.phi.unwrap_or(0.0) >= 8.0 {
                phi_past[i] = Some(killed.elapsed());
            }
        }
        assert!(
            killed.elapsed() <= BOUND,
            "phi of node 5 not past 8 everywhere within {BOUND:?}: {phi_past:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("node 5 counted down after {down:?}, phi past 8 after {phi_past:?}");
    cluster.start(4).await.unwrap();
    let restarted = Instant::now();
    loop {
        if (0..4).all(|i| cluster.node(i).unwrap().peer_health(dead).available) {
            break;
        }
        assert!(restarted.elapsed() <= BOUND, "node 5 not seen up again within {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("node 5 up again everywhere after {:?}", restarted.elapsed());
}

/// A node started with only a seed learns the members and the ring, shows
/// up in every node's view as joining (it owns nothing), and serves
/// client requests by forwarding them.
#[tokio::test(start_paused = true)]
async fn a_node_with_only_a_seed_joins_the_view_and_serves_requests() {
    let cluster = Cluster::builder().nodes(3).joiners(1).gossip().build().await.unwrap();
    cluster.wait_gossip_converged(CONVERGE).await.unwrap();
    let joiner = NodeId(4);
    for i in 0..4 {
        let view = cluster.node(i).unwrap().membership().view();
        let me = view.member(joiner).unwrap_or_else(|| panic!("node {i} does not know the joiner"));
        assert_eq!(me.status, MemberStatus::Joining);
        assert!(view.require_ring().unwrap().member(joiner).is_none(), "the joiner owns nothing");
    }
    let c = cluster.client(3);
    c.put(b"k", v("through the joiner"), None).await.unwrap();
    assert_eq!(cluster.client(0).get(b"k").await.unwrap().values, vec![v("through the joiner")]);
    assert!(cluster.node(3).unwrap().metrics().forwarded >= 1);
}

/// A node of another cluster (another name) seeded with a member of this
/// one is refused: it learns nothing and nobody learns of it.
#[tokio::test(start_paused = true)]
async fn a_node_of_another_cluster_is_refused() {
    let cluster = Cluster::builder().nodes(3).gossip().build().await.unwrap();
    let seed = cluster.ring().member(NodeId(1)).unwrap().addr.clone();
    let config = Config { name: "another".into(), seeds: vec![seed], ..Config::default() };
    let local = MemberInfo {
        id: NodeId(9),
        addr: "sim-foreign".into(),
        client_addr: None,
        zone: None,
        capacity: 1,
        status: MemberStatus::Joining,
    };
    let foreign = NodeBuilder::new(NodeId(9))
        .config(config)
        .gossip(GossipSettings { local, initial_ring: None })
        .store(Arc::new(MemStore::new()))
        .transport(cluster.net().endpoint("sim-foreign"))
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(foreign.ring().is_none(), "the foreign node learned nothing");
    assert!(matches!(foreign.get(b"k", ReadOptions::default()).await, Err(Error::NotReady(_))));
    for i in 0..3 {
        assert!(cluster.node(i).unwrap().membership().view().member(NodeId(9)).is_none(), "node {i}");
    }
    foreign.shutdown().await.unwrap();
}

/// A restarted node comes back with its identity, its view of the cluster
/// and the ring from its store, before any gossip, under a new generation
/// that the others adopt.
#[tokio::test(start_paused = true)]
async fn a_restarted_node_keeps_its_identity_and_view() {
    let cluster = Cluster::builder().nodes(3).joiners(1).gossip().build().await.unwrap();
    cluster.wait_gossip_converged(CONVERGE).await.unwrap();
    let before = cluster.node(3).unwrap().gossip_state().unwrap();
    let generation = before.member(NodeId(4)).unwrap().generation;
    cluster.net().isolate("sim-4");
    cluster.kill(3).await;
    cluster.start(3).await.unwrap();
    let node = cluster.node(3).unwrap();
    let view = node.membership().view();
    assert_eq!(view.members().len(), 4, "members known from the store");
    assert!(view.ring().is_some(), "the ring known from the store, with no seed reachable");
    let after = node.gossip_state().unwrap().member(NodeId(4)).unwrap().generation;
    assert!(after > generation, "a new generation: {after} after {generation}");
    cluster.heal();
    cluster.wait_gossip_converged(CONVERGE).await.unwrap();
    let seen = cluster.node(0).unwrap().gossip_state().unwrap().member(NodeId(4)).unwrap().generation;
    assert_eq!(seen, after);
}

/// Bad gossip changes nothing: a ring of another shape, an entry with no
/// address, a member claiming another node's id at another address, and a
/// delta from another cluster are refused; the receiver's state is as
/// before.
#[tokio::test(start_paused = true)]
async fn bad_gossip_is_refused_and_changes_nothing() {
    use dynamo_core::gossip::MemberEntry;
    use dynamo_core::transport::protocol::{Request, Response};
    let cluster = Cluster::builder().nodes(3).gossip().build().await.unwrap();
    cluster.wait_gossip_converged(CONVERGE).await.unwrap();
    let node = cluster.node(0).unwrap();
    let before = node.gossip_state().unwrap();
    let probe = cluster.net().endpoint("probe");
    let addr = cluster.ring().member(NodeId(1)).unwrap().addr.clone();
    let entry = |id: u64, addr: &str, generation: u64| MemberEntry {
        info: MemberInfo {
            id: NodeId(id),
            addr: addr.into(),
            client_addr: None,
            zone: None,
            capacity: 1,
            status: MemberStatus::Active,
        },
        generation,
        version: 0,
        handoff: Default::default(),
    };
    let other_shape = Ring::new(32, 3, vec![Member::new(NodeId(7), "x")]).unwrap().layout();
    let held = before.member(NodeId(2)).unwrap().generation;
    let deltas = [
        ("dynamo", vec![], Some(other_shape)),
        ("dynamo", vec![entry(8, "", 1)], None),
        ("dynamo", vec![entry(2, "sim-impostor", held)], None),
        ("another", vec![entry(9, "sim-9", 1)], None),
    ];
    for (cluster_name, entries, ring) in deltas {
        let request = Request::GossipDelta {
            cluster: cluster_name.into(),
            from: NodeId(99),
            entries,
            ring,
            want: vec![],
            want_ring: false,
        };
        let answer = probe.call(&addr, request.encode(), Duration::from_secs(1)).await.unwrap();
        let answer = Response::decode(&answer).unwrap();
        if cluster_name == "another" {
            assert!(matches!(answer, Response::Error(_)), "{answer:?}");
        }
    }
    assert_eq!(node.gossip_state().unwrap(), before, "refused gossip changed nothing");
}
