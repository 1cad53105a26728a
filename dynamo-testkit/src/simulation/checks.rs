//! The invariants every simulated run must keep, checked once the faults
//! have stopped and the cluster has healed.

use std::collections::BTreeMap;

use bytes::Bytes;
use dynamo_core::causality::SiblingSet;
use dynamo_core::Error;

use super::plan::SimPlan;
use crate::history::{check_no_lost_writes, check_no_undone_delete, History, Op, Violation};

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
