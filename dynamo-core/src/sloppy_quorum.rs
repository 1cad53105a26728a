//! Sloppy quorum (Dynamo §4.6): which nodes a request goes to, and which
//! may stand in for an owner that cannot be reached.
//!
//! Each slot of a key's preference list is a target: the node asked,
//! and the owner whose copy it holds. A write skips owners the failure
//! detector suspects and asks the next healthy node of the ring walk
//! instead, which keeps the write as a hint for that owner; spares replace
//! targets whose call fails. A read asks the owners themselves, suspected
//! or not (an owner's answer is the only complete one, and a stale
//! suspicion must not turn a read into a fallback's "not found"), and asks
//! a spare only for an owner whose call fails: the spare answers with the
//! hint it holds for that owner, if any, so reads stay available when no
//! owner can be reached (Dynamo's sloppy quorum). For an owner it suspects,
//! a read also asks a healthy spare at once (a hedge), whose answer counts
//! only if it holds a hint: a read during an outage need not wait for the
//! suspected owner's timeout when its writes went to a fallback. Without
//! sloppy quorum, only the preference list counts.

use std::collections::VecDeque;

use crate::failure::FailureDetector;
use crate::member::NodeId;
use crate::replica::Slot;
use crate::ring::Ring;

/// One replica slot of a request: the node asked, and the owner whose
/// copy it holds (itself, or an unreachable owner it stands in for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) node: NodeId,
    pub(crate) owner: NodeId,
    /// Asked besides a suspected owner rather than in its place: its
    /// answer counts only if it holds a hint, and its failure is no
    /// failure of the slot.
    pub(crate) hedge: bool,
}

impl Target {
    /// The owner itself.
    pub(crate) fn owner(owner: NodeId) -> Self {
        Target { node: owner, owner, hedge: false }
    }

    /// `node` standing in for `owner`.
    pub(crate) fn stand_in(node: NodeId, owner: NodeId) -> Self {
        Target { node, owner, hedge: false }
    }

    /// Where the asked node keeps the copy: as data, or as a hint.
    pub(crate) fn slot(self) -> Slot {
        if self.node == self.owner {
            Slot::Data
        } else {
            Slot::HintFor(self.owner)
        }
    }

    /// Whether the node asked is a fallback standing in for the owner.
    pub(crate) fn is_stand_in(self) -> bool {
        self.node != self.owner
    }
}

/// Where a request goes: one target per preference-list slot, and the
/// nodes that may replace a target that fails, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) targets: Vec<Target>,
    pub(crate) spares: VecDeque<NodeId>,
}

/// The nodes of `partition`'s walk that are not among `owners`, healthy
/// ones first (each group in walk order).
fn spares(
    ring: &Ring,
    partition: u32,
    owners: &[NodeId],
    detector: &dyn FailureDetector,
) -> VecDeque<NodeId> {
    let (mut up, mut down): (VecDeque<NodeId>, VecDeque<NodeId>) = ring
        .walk(partition)
        .iter()
        .copied()
        .filter(|n| !owners.contains(n))
        .partition(|n| detector.is_available(*n));
    up.append(&mut down);
    up
}

/// The targets of a write on `partition` coordinated by `me`, to
/// `owners` (its preference list, or more while its data moves; see
/// [`ClusterView::write_owners`](crate::membership::ClusterView::write_owners)).
/// With `sloppy`, each suspected owner is replaced up front by the next
/// healthy node of the walk; without it, the owners as they are.
pub(crate) fn plan_write(
    ring: &Ring,
    partition: u32,
    owners: &[NodeId],
    me: NodeId,
    detector: &dyn FailureDetector,
    sloppy: bool,
) -> Plan {
    let available = |n: NodeId| n == me || detector.is_available(n);
    let mut spares = if sloppy { spares(ring, partition, owners, detector) } else { VecDeque::new() };
    let mut targets = Vec::new();
    for &owner in owners {
        let node = if available(owner) || !sloppy {
            owner
        } else {
            match spares.iter().position(|n| available(*n)) {
                Some(i) => spares.remove(i).unwrap_or(owner),
                None => owner,
            }
        };
        targets.push(Target::stand_in(node, owner));
    }
    Plan { targets, spares }
}

/// The targets of a read on `partition` from `owners` (its preference
/// list, or the previous ring's while its data moves): the owners
/// themselves, suspected or not; with `sloppy`, the rest of the walk as
/// spares for owners whose call fails, and for each suspected owner a
/// hedge: the next healthy spare, asked at once for the hint it may hold.
pub(crate) fn plan_read(
    ring: &Ring,
    partition: u32,
    owners: &[NodeId],
    detector: &dyn FailureDetector,
    sloppy: bool,
) -> Plan {
    let mut targets: Vec<Target> = owners.iter().map(|&owner| Target::owner(owner)).collect();
    if !sloppy {
        return Plan { targets, spares: VecDeque::new() };
    }
    let spares = spares(ring, partition, owners, detector);
    let mut healthy = spares.iter().copied().filter(|n| detector.is_available(*n));
    for &owner in owners {
        if !detector.is_available(owner) {
            if let Some(node) = healthy.next() {
                targets.push(Target { node, owner, hedge: true });
            }
        }
    }
    Plan { targets, spares }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::OutcomeDetector;
    use crate::member::Member;
    use std::time::Duration;

    fn ring() -> Ring {
        Ring::new(16, 3, (1..=5).map(|i| Member::new(NodeId(i), format!("n{i}"))).collect()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn writes_replace_suspected_owners_and_reads_ask_them_anyway() {
        let ring = ring();
        let pl = ring.preference_list(0).to_vec();
        let detector = OutcomeDetector::new(Duration::from_secs(10));
        let me = pl[0];
        detector.record_failure(pl[1]);
        let write = plan_write(&ring, 0, &pl, me, &detector, true);
        assert_eq!(write.targets[0], Target::owner(me));
        assert!(write.targets[1].is_stand_in() && write.targets[1].owner == pl[1]);
        assert!(!pl.contains(&write.targets[1].node), "a fallback from beyond the preference list");
        assert!(!write.spares.contains(&write.targets[1].node), "a fallback is not also a spare");
        let strict = plan_write(&ring, 0, &pl, me, &detector, false);
        assert!(strict.targets.iter().all(|t| !t.is_stand_in()) && strict.spares.is_empty());
        let read = plan_read(&ring, 0, &pl, &detector, true);
        assert!(read.targets[..3].iter().map(|t| t.node).eq(pl.iter().copied()), "reads ask every owner");
        let hedge = read.targets[3];
        assert!(
            hedge.hedge && hedge.owner == pl[1] && !pl.contains(&hedge.node),
            "and a hedge for the suspected one"
        );
        assert_eq!(read.targets.len(), 4);
        assert_eq!(read.spares.len(), 2);
    }
}
