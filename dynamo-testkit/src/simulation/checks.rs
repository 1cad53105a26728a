//! The invariants every simulated run must keep, checked once the faults
//! have stopped and the cluster has healed.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use dynamo_core::causality::SiblingSet;
use dynamo_core::Error;

use super::plan::SimPlan;
use crate::history::{check_no_lost_writes, check_no_undone_delete, History, Op, Violation};
use crate::Cluster;

/// How often the convergence wait looks at the replicas, in simulated time.
const POLL: Duration = Duration::from_millis(100);

/// How often the purge wait looks: purges come a grace period (seconds)
/// after the deletes, so a coarser look costs less and loses nothing.
const PURGE_POLL: Duration = Duration::from_millis(1_000);

/// What a finished run left, for invariants to inspect.
#[derive(Debug)]
pub struct RunOutcome<'a> {
    /// What the seed drew.
    pub plan: &'a SimPlan,
    /// Every client operation, with its outcome.
    pub history: &'a History,
    /// Key → the values a final read at R = N returned (after the
    /// reconciler), for every key the history touched.
    pub finals: &'a BTreeMap<Bytes, Vec<Bytes>>,
    /// Key → the state its replicas converged to.
    pub states: &'a BTreeMap<Bytes, Option<SiblingSet>>,
}

/// A property of a run, checked after it healed. Applications add their
/// own with [`Simulation::invariant`](super::Simulation::invariant).
pub trait Invariant: Send + Sync + 'static {
    /// A short name, printed when it fails.
    fn name(&self) -> &str;

    /// Checks the run.
    ///
    /// # Errors
    /// The key and what is wrong with it.
    fn check(&self, outcome: &RunOutcome<'_>) -> Result<(), Violation>;
}

/// No element of an acknowledged set-union put is missing from its key's
/// final value (on the keys the workload marks as set-union).
pub(crate) fn no_lost_adds(
    outcome: &RunOutcome<'_>,
    set_union: &dyn Fn(&[u8]) -> bool,
) -> Result<(), Violation> {
    let carts = History::new();
    for e in outcome.history.events().into_iter().filter(|e| set_union(&e.key)) {
        carts.record(e);
    }
    check_no_lost_writes(&carts, outcome.finals)
}

/// No value an acknowledged delete removed (one the read whose context it
/// carried returned) reads back.
pub(crate) fn no_undone_delete(outcome: &RunOutcome<'_>) -> Result<(), Violation> {
    check_no_undone_delete(outcome.history, outcome.finals)
}

/// A put refused for the sibling bound never takes effect: its value is
/// in no final state (the coordinator retracted its copy). Together with
/// the replicas' check this is the bound's promise: no acknowledged write
/// took a replica that counted towards W past it. (Merges of writes
/// accepted concurrently elsewhere may still exceed it, so a final count
/// above the bound is not by itself a violation.)
pub(crate) fn refused_writes_never_take_effect(outcome: &RunOutcome<'_>) -> Result<(), Violation> {
    for e in outcome.history.events() {
        let (Op::Put { value }, Some(Error::TooManySiblings { .. })) = (&e.op, &e.error) else { continue };
        let stored = outcome.states.get(&e.key).cloned().flatten();
        let present = stored.iter().flat_map(|s| s.live()).any(|s| s.value.as_ref() == Some(value));
        if present {
            return Err(Violation {
                key: String::from_utf8_lossy(&e.key).into_owned(),
                problem: format!("a put refused for the sibling bound at t={} took effect", e.completed),
            });
        }
    }
    Ok(())
}

/// How one key's replicas stand: node index → what it stores as a replica
/// (local reads only, no quorum read, so nothing is repaired by looking).
type Replicas = BTreeMap<usize, Option<SiblingSet>>;

async fn replicas_of(cluster: &Cluster, key: &[u8]) -> Result<Replicas, Violation> {
    let mut states = Replicas::new();
    for i in cluster.preference_list(key) {
        let state = cluster.replica_state(i, key).await.map_err(|e| Violation {
            key: String::from_utf8_lossy(key).into_owned(),
            problem: format!("node {i} cannot be inspected: {e}"),
        })?;
        states.insert(i, state);
    }
    Ok(states)
}

fn agree(states: &Replicas) -> bool {
    let mut all = states.values();
    let first = all.next();
    all.all(|s| Some(s) == first)
}

/// One line per replica: what it holds, siblings as `value @ dot`.
pub(crate) fn describe(states: &Replicas) -> String {
    let lines: Vec<String> = states
        .iter()
        .map(|(i, s)| match s {
            None => format!("node {i}: nothing"),
            Some(s) => {
                let siblings: Vec<String> = s
                    .siblings()
                    .iter()
                    .map(|sib| {
                        let value =
                            sib.value.as_ref().map_or("tombstone".to_owned(), |v| super::show_value(v));
                        format!(
                            "{value} @ n{}/{}:{}",
                            sib.dot.actor.node.0, sib.dot.actor.epoch, sib.dot.counter
                        )
                    })
                    .collect();
                format!("node {i}: [{}]", siblings.join(", "))
            }
        })
        .collect();
    lines.join("; ")
}

/// Anti-entropy alone converges the replicas: within `bound` of simulated
/// time, with no client read (so no read repair) and only the nodes' own
/// timers at work (anti-entropy rounds, hint delivery, handoff), every key
/// of the history holds one state on every node of its preference list.
/// Returns the simulated time it took.
///
/// # Errors
/// The first key whose replicas still differ when `bound` passes, naming
/// each replica and what it holds.
pub(crate) async fn converges_without_reads(
    cluster: &Cluster,
    bound: Duration,
) -> Result<Duration, Violation> {
    let start = tokio::time::Instant::now();
    let mut pending: Vec<Bytes> = cluster.history().keys().into_iter().collect();
    loop {
        let mut still = Vec::new();
        let mut first = None;
        for key in pending {
            let states = replicas_of(cluster, &key).await?;
            if !agree(&states) {
                first.get_or_insert_with(|| (key.clone(), states));
                still.push(key);
            }
        }
        let Some((key, states)) = first else { return Ok(start.elapsed()) };
        if start.elapsed() >= bound {
            return Err(Violation {
                key: String::from_utf8_lossy(&key).into_owned(),
                problem: format!(
                    "{} keys still differ between their replicas {bound:?} (simulated) after the heal, \
                     with read repair off and no reads; this one: {}",
                    still.len(),
                    describe(&states)
                ),
            });
        }
        pending = still;
        tokio::time::sleep(POLL).await;
    }
}

/// Tombstones are purged: within `bound` of simulated time, every key of
/// the history whose replicas all hold only tombstones (a delete every
/// replica has seen) is gone from each of them, and no replica of a key
/// holds a tombstone-only state while another holds nothing (the purge
/// completes). Keys with a live sibling are left alone. Returns how many
/// keys were purged.
///
/// # Errors
/// A key still holding tombstones when `bound` passes.
pub(crate) async fn tombstones_purged(cluster: &Cluster, bound: Duration) -> Result<usize, Violation> {
    let start = tokio::time::Instant::now();
    loop {
        let mut purged = 0;
        let mut waiting = None;
        for key in cluster.history().keys() {
            let states = replicas_of(cluster, &key).await?;
            let dead = |s: &Option<SiblingSet>| s.as_ref().is_none_or(|s| s.live_count() == 0);
            if !states.values().all(dead) {
                continue;
            }
            if states.values().all(Option::is_none) {
                purged += 1;
            } else if waiting.is_none() {
                waiting = Some((key, states));
            }
        }
        let Some((key, states)) = waiting else { return Ok(purged) };
        if start.elapsed() >= bound {
            return Err(Violation {
                key: String::from_utf8_lossy(&key).into_owned(),
                problem: format!(
                    "a deleted key is still held {bound:?} (simulated) after the heal, past its \
                     tombstone grace: {}",
                    describe(&states)
                ),
            });
        }
        tokio::time::sleep(PURGE_POLL).await;
    }
}
