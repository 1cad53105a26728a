//! Gossip alone at scale: many standalone gossipers on the simulated
//! network, driven round by round on tokio's paused clock, to measure how
//! fast a change spreads and what an idle round costs as the cluster grows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dynamo_core::config::Config;
use dynamo_core::gossip::{Gossip, GossipSettings};
use dynamo_core::member::{Member, NodeId};
use dynamo_core::membership::{MemberInfo, MemberStatus};
use dynamo_core::phi_accrual::{PhiAccrualDetector, PhiSettings};
use dynamo_core::ring::Ring;
use dynamo_core::transport::protocol::{Request, Response};
use dynamo_core::transport::{FrameHandler, Transport, TransportError};
use futures::future::join_all;

use crate::sim_net::SimNetwork;

/// What [`measure`] found for one cluster size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleReport {
    /// Gossipers.
    pub nodes: usize,
    /// Rounds until every node, started knowing only the seed, held the
    /// same state.
    pub rounds_to_join: u32,
    /// Rounds until a change made by one node was known to every node.
    pub rounds_to_spread: u32,
    /// Bytes sent and received per node per round once nothing changes.
    pub idle_bytes_per_node_round: f64,
    /// Bytes per node per round while the change spreads.
    pub change_bytes_per_node_round: f64,
}

/// Counts the bytes of a gossiper's calls (request and response).
struct Counting {
    inner: Arc<dyn Transport>,
    bytes: Arc<AtomicU64>,
}

#[async_trait]
impl Transport for Counting {
    fn local_addr(&self) -> &str {
        self.inner.local_addr()
    }
    async fn serve(&self, handler: Arc<dyn FrameHandler>) -> Result<(), TransportError> {
        self.inner.serve(handler).await
    }
    async fn call(&self, to: &str, frame: Bytes, timeout: Duration) -> Result<Bytes, TransportError> {
        let sent = frame.len() as u64;
        let answer = self.inner.call(to, frame, timeout).await;
        let received = answer.as_ref().map_or(0, |b| b.len() as u64);
        self.bytes.fetch_add(sent + received, Ordering::Relaxed);
        answer
    }
    async fn shutdown(&self) {
        self.inner.shutdown().await;
    }
}

/// Serves a gossiper's peers.
struct Serve(Weak<Gossip>);

#[async_trait]
impl FrameHandler for Serve {
    async fn handle(&self, frame: Bytes) -> Bytes {
        let response = match (self.0.upgrade(), Request::decode(&frame)) {
            (Some(gossip), Ok(request)) => gossip.handle(request).await,
            (None, _) => Response::error(&dynamo_core::Error::ShuttingDown),
            (_, Err(e)) => Response::error(&e),
        };
        response.encode()
    }
}

async fn round(gossipers: &[Arc<Gossip>]) {
    join_all(gossipers.iter().map(|g| g.round())).await;
}

fn converged(gossipers: &[Arc<Gossip>]) -> bool {
    let first = gossipers[0].state().hash();
    gossipers.iter().all(|g| g.state().hash() == first)
}

/// Starts `nodes` gossipers (three of them founding a ring, the rest
/// knowing only the seed, node 0), lets them converge, measures idle
/// rounds, then has the last node change its entry and counts the rounds
/// until everyone knows. Runs on the current tokio runtime (paused clock
/// advised); gives up after 10,000 rounds of either phase.
///
/// # Panics
/// With fewer than 3 nodes.
pub async fn measure(nodes: usize, seed: u64) -> ScaleReport {
    assert!(nodes >= 3, "a ring needs three founders");
    let net = SimNetwork::new(seed);
    let addr = |i: usize| format!("g-{i}");
    let config = Config { name: "scale".into(), partitions: 64, seeds: vec![addr(0)], ..Config::default() };
    let founders: Vec<Member> = (0..3).map(|i| Member::new(NodeId(i as u64 + 1), addr(i))).collect();
    let ring = Ring::new(config.partitions, config.n, founders).expect("a valid ring");
    let bytes = Arc::new(AtomicU64::new(0));
    let mut gossipers = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let endpoint = net.endpoint(&addr(i));
        let transport: Arc<dyn Transport> =
            Arc::new(Counting { inner: endpoint.clone(), bytes: Arc::clone(&bytes) });
        let local = MemberInfo {
            id: NodeId(i as u64 + 1),
            addr: addr(i),
            client_addr: None,
            zone: None,
            capacity: 1,
            status: MemberStatus::Joining,
        };
        let settings = GossipSettings { local, initial_ring: (i < 3).then(|| ring.clone()) };
        let detector = Arc::new(PhiAccrualDetector::new(PhiSettings::default()));
        let gossip = Arc::new(Gossip::standalone(&config, settings, seed, transport, detector));
        endpoint.serve(Arc::new(Serve(Arc::downgrade(&gossip)))).await.expect("a fresh endpoint serves");
        gossipers.push(gossip);
    }
    let mut rounds_to_join = 0;
    while !converged(&gossipers) && rounds_to_join < 10_000 {
        round(&gossipers).await;
        rounds_to_join += 1;
    }
    bytes.store(0, Ordering::Relaxed);
    const IDLE: u32 = 5;
    for _ in 0..IDLE {
        round(&gossipers).await;
    }
    let idle = bytes.swap(0, Ordering::Relaxed) as f64 / (nodes as f64 * f64::from(IDLE));
    let changer = &gossipers[nodes - 1];
    changer.update_local(|info| info.capacity = 2).await;
    let knows =
        |g: &Arc<Gossip>| g.state().member(NodeId(nodes as u64)).is_some_and(|e| e.info.capacity == 2);
    let mut rounds_to_spread = 0;
    while !gossipers.iter().all(knows) && rounds_to_spread < 10_000 {
        round(&gossipers).await;
        rounds_to_spread += 1;
    }
    let change = bytes.load(Ordering::Relaxed) as f64 / (nodes as f64 * f64::from(rounds_to_spread.max(1)));
    ScaleReport {
        nodes,
        rounds_to_join,
        rounds_to_spread,
        idle_bytes_per_node_round: idle,
        change_bytes_per_node_round: change,
    }
}
