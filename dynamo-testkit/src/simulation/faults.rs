//! Applying a run's fault schedule to a cluster, and the injector behind
//! core's fault points.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dynamo_core::fault_point::{Fault, FaultInjector, FaultPoint};
use dynamo_core::member::NodeId;
use dynamo_core::topology::Change;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::plan::FaultKind;
use crate::Cluster;

/// How long an injected store stall lasts.
const SLOW_WRITE: Duration = Duration::from_millis(30);

/// Draws faults at core's fault points from the run's seed, with the
/// probabilities the schedule set; all zero after the heal.
pub(crate) struct SeededFaults {
    state: Mutex<Probabilities>,
}

struct Probabilities {
    rng: ChaCha8Rng,
    store_fail: f64,
    store_slow: f64,
    before_send: f64,
    after_send: f64,
    /// Whether any store write failure was injected (errors are expected then).
    injected_store_failure: bool,
    /// Nodes removed from the cluster for good: never started again.
    retired: Vec<usize>,
}

impl SeededFaults {
    pub(crate) fn new(seed: u64) -> Self {
        SeededFaults {
            state: Mutex::new(Probabilities {
                rng: ChaCha8Rng::seed_from_u64(seed ^ 0xb0661f9),
                store_fail: 0.0,
                store_slow: 0.0,
                before_send: 0.0,
                after_send: 0.0,
                injected_store_failure: false,
                retired: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Probabilities> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops every injected fault.
    pub(crate) fn clear(&self) {
        let mut p = self.lock();
        (p.store_fail, p.store_slow, p.before_send, p.after_send) = (0.0, 0.0, 0.0, 0.0);
    }

    /// Whether a store write failure was injected during the run.
    pub(crate) fn injected_store_failure(&self) -> bool {
        self.lock().injected_store_failure
    }

    fn retired(&self, i: usize) -> bool {
        self.lock().retired.contains(&i)
    }
}

impl FaultInjector for SeededFaults {
    fn fault(&self, _node: NodeId, point: FaultPoint) -> Option<Fault> {
        let mut p = self.lock();
        let (fail, slow) = match point {
            FaultPoint::StoreWrite => (p.store_fail, p.store_slow),
            FaultPoint::BeforeSend => (p.before_send, 0.0),
            FaultPoint::AfterSend => (p.after_send, 0.0),
        };
        if fail == 0.0 && slow == 0.0 {
            return None;
        }
        let draw: f64 = p.rng.random();
        if draw < fail {
            p.injected_store_failure |= point == FaultPoint::StoreWrite;
            Some(Fault::Fail)
        } else if draw < fail + slow {
            Some(Fault::Delay(SLOW_WRITE))
        } else {
            None
        }
    }
}

/// Applies one fault to the cluster.
pub(crate) async fn apply(cluster: &Cluster, faults: &SeededFaults, kind: &FaultKind) {
    let net = cluster.net();
    match kind {
        FaultKind::Drop(p) => net.set_drop_rate(*p),
        FaultKind::Delay(min, max) => net.set_delay(*min, *max),
        FaultKind::Duplicate(p) => net.set_duplicate_rate(*p),
        FaultKind::Partition(a, b) => cluster.partition(a, b),
        FaultKind::OneWay(from, to) => cluster.cut_one_way(*from, *to),
        FaultKind::Isolate(i) => cluster.isolate(*i),
        FaultKind::HealNetwork => cluster.heal(),
        FaultKind::Crash(i) => cluster.kill(*i).await,
        FaultKind::Restart(i) if !faults.retired(*i) => {
            // A start that fails (an injected store failure) is retried at the heal.
            let _ = cluster.start(*i).await;
        }
        FaultKind::Wipe(i) if !faults.retired(*i) => {
            let _ = cluster.wipe_and_restart(*i).await;
        }
        FaultKind::Restart(_) | FaultKind::Wipe(_) => {}
        FaultKind::Join(i) => {
            commit(cluster, *i, Change::Join(NodeId(*i as u64 + 1))).await;
        }
        FaultKind::Leave(i) => {
            commit(cluster, *i, Change::Leave(NodeId(*i as u64 + 1))).await;
        }
        FaultKind::Remove(i) => {
            cluster.kill(*i).await;
            if commit(cluster, *i, Change::Remove(NodeId(*i as u64 + 1))).await {
                faults.lock().retired.push(*i);
            }
        }
        FaultKind::Pause(i) => cluster.pause(*i),
        FaultKind::Resume(i) => cluster.resume(*i),
        FaultKind::ClockJump(i, delta) => cluster.clock(*i).jump(*delta),
        FaultKind::ClockDrift(i, ppm) => cluster.clock(*i).set_drift_ppm(*ppm),
        FaultKind::StoreFaults(fail, slow) => {
            let mut p = faults.lock();
            (p.store_fail, p.store_slow) = (*fail, *slow);
        }
        FaultKind::SendFaults(before, after) => {
            let mut p = faults.lock();
            (p.before_send, p.after_send) = (*before, *after);
        }
    }
}

/// Ends every fault: the network heals (no cuts, drops, duplicates or
/// delays), paused nodes resume, clocks are set right, injected faults
/// stop, and every node runs.
///
/// # Errors
/// A node that cannot be started again.
pub(crate) async fn heal(cluster: &Cluster, faults: &Arc<SeededFaults>) -> Result<(), String> {
    faults.clear();
    cluster.heal();
    cluster.net().set_delay(Duration::ZERO, Duration::ZERO);
    for i in 0..cluster.len() {
        cluster.resume(i);
        cluster.clock(i).reset();
        if faults.retired(i) {
            continue;
        }
        cluster.start(i).await.map_err(|e| format!("node {i} does not start again: {e}"))?;
    }
    Ok(())
}

/// Stages `change` (about node `about`) on the first running node that
/// knows a ring, other than `about`, and commits it; returns whether the
/// commit was accepted (a refusal, such as a move still under way, leaves
/// the cluster as it was).
async fn commit(cluster: &Cluster, about: usize, change: Change) -> bool {
    let Some(node) = (0..cluster.len())
        .filter(|&i| i != about)
        .filter_map(|i| cluster.node(i))
        .find(|n| n.ring().is_some())
    else {
        return false;
    };
    node.clear_staged();
    let committed = match node.stage(change) {
        Ok(_) => node.commit(None).await.is_ok(),
        Err(_) => false,
    };
    node.clear_staged();
    committed
}
