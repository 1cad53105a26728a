//! Topology changes (Dynamo §4.9, "Adding/Removing Storage Nodes"): the
//! operator stages joins, leaves and removes, reads the plan they imply,
//! and commits it as a new ring epoch, as Riak's `cluster plan` /
//! `cluster commit` and Garage's `layout apply` do. Pure and synchronous.
//!
//! **The transition.** A committed ring carries the ring it replaces
//! ([`Transition`]) until its data has moved. For each partition, the
//! nodes of its new preference list that were not in the old one *gain*
//! it, and copy it from the nodes that *lose* it (from the other old
//! replicas when those were removed: a removed node is dead). While a
//! partition is unsettled (some gaining node has not reported its copy
//! complete):
//!
//! - reads go to the old preference list, which holds every write
//!   acknowledged so far;
//! - writes go to the old and the new lists together and need W plus the
//!   number of gaining nodes acknowledgements, as Cassandra's writes to
//!   pending ranges do. At most that many of the acknowledging nodes lose
//!   the partition, so at least W of the new list hold every write
//!   acknowledged during the move: a read at R of the new list meets it
//!   once R + W > N.
//!
//! Once every gaining node has its copy, the partition is settled: reads
//! and writes use the new list, and the losing nodes drop their copy.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::member::{Member, NodeId};
use crate::membership::MemberInfo;
use crate::ring::{Ring, Transition};

/// One staged change of the cluster's membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", content = "node", rename_all = "lowercase")]
pub enum Change {
    /// Give partitions to a node that gossip knows but the ring does not
    /// list yet.
    Join(NodeId),
    /// Move a live member's partitions to the others, then let it go.
    Leave(NodeId),
    /// Drop a member that is dead for good: its partitions are rebuilt
    /// from the other replicas, never asked of it.
    Remove(NodeId),
}

impl Change {
    /// The node the change is about.
    pub fn node(self) -> NodeId {
        match self {
            Change::Join(n) | Change::Leave(n) | Change::Remove(n) => n,
        }
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Join(n) => write!(f, "join {}", n.0),
            Change::Leave(n) => write!(f, "leave {}", n.0),
            Change::Remove(n) => write!(f, "remove {}", n.0),
        }
    }
}

/// One partition copy a committed plan moves: `to` gains `partition` and
/// copies it from `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// The partition.
    pub partition: u32,
    /// The nodes it is copied from (one, unless it replaces a removed node).
    pub from: Vec<NodeId>,
    /// The node that gains it.
    pub to: NodeId,
}

/// A node's share of the ring before and after a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The node.
    pub node: NodeId,
    /// Partitions it owns (is first in the preference list of) now.
    pub owned_before: usize,
    /// And after the plan.
    pub owned_after: usize,
    /// Partitions it holds a replica of now.
    pub replicas_before: usize,
    /// And after the plan.
    pub replicas_after: usize,
}

/// What committing the staged changes would do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The ring epoch the plan was computed against; a commit under any
    /// other is refused.
    pub base_epoch: u64,
    /// The epoch the committed ring takes.
    pub epoch: u64,
    /// The staged changes, in the order given.
    pub changes: Vec<Change>,
    /// Partitions whose owner changes: the minimum the changes allow.
    pub ownership_moves: usize,
    /// Every partition copy to make, ascending by partition.
    pub transfers: Vec<Transfer>,
    /// Every member's share before and after, ascending by id.
    pub shares: Vec<Share>,
}

/// Checks a change against the ring and the members gossip knows, before
/// it is staged.
///
/// # Errors
/// [`Error::TopologyRefused`]: a join of a node gossip does not know, one
/// already in the ring, one whose address a ring member uses; a leave or
/// remove of a node outside the ring; a remove of `local` (a node leaves,
/// it does not remove itself); a change of a node already staged.
pub fn check_change(
    ring: &Ring,
    known: &[MemberInfo],
    local: NodeId,
    staged: &[Change],
    change: Change,
) -> Result<()> {
    let refuse = |why: String| Err(Error::TopologyRefused(why));
    let node = change.node();
    let id = node.0;
    if let Some(earlier) = staged.iter().find(|c| c.node() == node) {
        return refuse(format!("{earlier} is already staged; `clear` the staged changes to change it"));
    }
    let in_ring = ring.member(node).is_some();
    match change {
        Change::Join(_) => {
            let Some(info) = known.iter().find(|m| m.id == node) else {
                return refuse(format!(
                    "node {id} is unknown: start it with a seed of this cluster so gossip learns it, then join it"
                ));
            };
            if in_ring {
                return refuse(format!("node {id} is already a member of the ring"));
            }
            if let Some(other) = ring.members().iter().find(|m| m.addr == info.addr) {
                return refuse(format!("node {id}'s address {} is member {}'s", info.addr, other.id.0));
            }
        }
        Change::Leave(_) | Change::Remove(_) if !in_ring => {
            return refuse(format!("node {id} is not a member of the ring"));
        }
        Change::Remove(_) if node == local => {
            return refuse(format!("node {id} cannot remove itself: ask another node, or `leave {id}`"));
        }
        Change::Leave(_) | Change::Remove(_) => {
            let departing = staged.iter().filter(|c| !matches!(c, Change::Join(_))).count() + 1;
            let joining = staged.iter().filter(|c| matches!(c, Change::Join(_))).count();
            let left = (ring.members().len() + joining).saturating_sub(departing);
            if left < ring.replicas() {
                return refuse(format!(
                    "{change} would leave {left} members, fewer than N = {}",
                    ring.replicas()
                ));
            }
        }
    }
    Ok(())
}

/// The ring the staged `changes` lead to (epoch + 1, carrying the
/// transition from `ring`), and the plan that describes it.
///
/// # Errors
/// [`Error::TopologyRefused`] when nothing is staged, when a joining node
/// is no longer known, or when fewer than N members would remain.
pub fn plan(ring: &Ring, known: &[MemberInfo], changes: &[Change]) -> Result<(Ring, Transition, Plan)> {
    if changes.is_empty() {
        return Err(Error::TopologyRefused("no change is staged".into()));
    }
    let mut members: Vec<Member> = ring.members().to_vec();
    let mut removed = Vec::new();
    for &change in changes {
        match change {
            Change::Join(id) => {
                let info = known.iter().find(|m| m.id == id).ok_or_else(|| {
                    Error::TopologyRefused(format!("node {} is no longer known to gossip", id.0))
                })?;
                members.push(crate::gossip::ring_member(info));
            }
            Change::Leave(id) => members.retain(|m| m.id != id),
            Change::Remove(id) => {
                members.retain(|m| m.id != id);
                removed.push(id);
            }
        }
    }
    if members.len() < ring.replicas() {
        return Err(Error::TopologyRefused(format!(
            "the changes would leave {} members, fewer than N = {}",
            members.len(),
            ring.replicas()
        )));
    }
    let next = ring.rebalanced(members)?;
    let transition = Transition {
        from_epoch: ring.epoch(),
        members: ring.members().to_vec(),
        owners: ring.owners().to_vec(),
        removed,
    };
    let handover = Handover::new(Arc::new(ring.clone()), transition.removed.clone(), &next);
    let transfers = (0..next.partitions())
        .flat_map(|p| {
            let sources = handover.sources(&next, p);
            handover.gained(&next, p).into_iter().map(move |to| Transfer {
                partition: p,
                from: sources.clone(),
                to,
            })
        })
        .collect();
    let plan = Plan {
        base_epoch: ring.epoch(),
        epoch: next.epoch(),
        changes: changes.to_vec(),
        ownership_moves: ring.moved_partitions(&next).len(),
        transfers,
        shares: shares(ring, &next),
    };
    Ok((next, transition, plan))
}

fn shares(before: &Ring, after: &Ring) -> Vec<Share> {
    let mut out: BTreeMap<NodeId, Share> = BTreeMap::new();
    for (ring, is_after) in [(before, false), (after, true)] {
        for p in 0..ring.partitions() {
            for (i, &node) in ring.preference_list(p).iter().enumerate() {
                let share = out.entry(node).or_insert(Share {
                    node,
                    owned_before: 0,
                    owned_after: 0,
                    replicas_before: 0,
                    replicas_after: 0,
                });
                let (owned, replicas) = if is_after {
                    (&mut share.owned_after, &mut share.replicas_after)
                } else {
                    (&mut share.owned_before, &mut share.replicas_before)
                };
                *replicas += 1;
                if i == 0 {
                    *owned += 1;
                }
            }
        }
    }
    out.into_values().collect()
}

/// A ring's move away from the previous one, as a node sees it: which
/// partitions are settled, and who reads, writes and copies what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    previous: Arc<Ring>,
    removed: Vec<NodeId>,
    /// Per partition: every gaining node has reported its copy complete.
    settled: Vec<bool>,
}

impl Handover {
    /// The move from `previous` to `next`, nothing settled yet except the
    /// partitions no node gains.
    pub fn new(previous: Arc<Ring>, removed: Vec<NodeId>, next: &Ring) -> Self {
        let mut handover = Handover { previous, removed, settled: Vec::new() };
        handover.settled = (0..next.partitions()).map(|p| handover.gained(next, p).is_empty()).collect();
        handover
    }

    /// The move a ring's `transition` describes.
    ///
    /// # Errors
    /// [`Error::Config`] when the previous ring is not a valid ring of the
    /// same shape.
    pub fn of(next: &Ring, transition: &Transition) -> Result<Self> {
        let layout = crate::ring::RingLayout {
            epoch: transition.from_epoch,
            replicas: next.replicas() as u64,
            members: transition.members.clone(),
            owners: transition.owners.clone(),
            transition: None,
        };
        let previous = Ring::from_layout(layout)?;
        if previous.partitions() != next.partitions() {
            return Err(Error::Config("a ring transition between different partition counts".into()));
        }
        Ok(Handover::new(Arc::new(previous), transition.removed.clone(), next))
    }

    /// Marks the partitions every gaining node of which has reported
    /// done: `done(node, partition)`.
    pub fn settle(&mut self, next: &Ring, done: impl Fn(NodeId, u32) -> bool) {
        for p in 0..next.partitions() {
            if !self.settled[p as usize] {
                self.settled[p as usize] = self.gained(next, p).into_iter().all(|n| done(n, p));
            }
        }
    }

    /// The ring data moves away from.
    pub fn previous(&self) -> &Arc<Ring> {
        &self.previous
    }

    /// Members the change removed.
    pub fn removed(&self) -> &[NodeId] {
        &self.removed
    }

    /// Whether `partition`'s data is where `next` places it.
    pub fn is_settled(&self, partition: u32) -> bool {
        self.settled.get(partition as usize).copied().unwrap_or(true)
    }

    /// Whether every partition is settled.
    pub fn all_settled(&self) -> bool {
        self.settled.iter().all(|s| *s)
    }

    /// The nodes of `partition`'s new preference list that were not in
    /// its old one.
    pub fn gained(&self, next: &Ring, partition: u32) -> Vec<NodeId> {
        let old = self.previous.preference_list(partition);
        next.preference_list(partition).iter().copied().filter(|n| !old.contains(n)).collect()
    }

    /// The nodes of `partition`'s old preference list not in its new one.
    pub fn lost(&self, next: &Ring, partition: u32) -> Vec<NodeId> {
        let new = next.preference_list(partition);
        self.previous.preference_list(partition).iter().copied().filter(|n| !new.contains(n)).collect()
    }

    /// Where a gaining node copies `partition` from: the nodes losing it
    /// (they hold what it must take over), or, when those were all
    /// removed, every old replica that is still a member.
    pub fn sources(&self, next: &Ring, partition: u32) -> Vec<NodeId> {
        let lost: Vec<NodeId> =
            self.lost(next, partition).into_iter().filter(|n| !self.removed.contains(n)).collect();
        if !lost.is_empty() {
            return lost;
        }
        self.previous
            .preference_list(partition)
            .iter()
            .copied()
            .filter(|n| !self.removed.contains(n) && next.member(*n).is_some())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::MemberStatus;

    fn info(id: u64) -> MemberInfo {
        MemberInfo {
            id: NodeId(id),
            addr: format!("n{id}"),
            client_addr: None,
            zone: None,
            capacity: 1,
            status: MemberStatus::Joining,
        }
    }

    fn ring(members: u64) -> Ring {
        Ring::new(64, 3, (1..=members).map(|i| Member::new(NodeId(i), format!("n{i}"))).collect()).unwrap()
    }

    #[test]
    fn bad_changes_are_refused_naming_why() {
        let ring = ring(3);
        let known: Vec<MemberInfo> = (1..=4).map(info).collect();
        let me = NodeId(1);
        let refused = |staged: &[Change], c: Change| check_change(&ring, &known, me, staged, c).unwrap_err();
        assert!(refused(&[], Change::Join(NodeId(9))).to_string().contains("unknown"));
        assert!(refused(&[], Change::Join(NodeId(2))).to_string().contains("already a member"));
        assert!(refused(&[], Change::Leave(NodeId(4))).to_string().contains("not a member"));
        assert!(refused(&[], Change::Remove(me)).to_string().contains("cannot remove itself"));
        assert!(refused(&[Change::Join(NodeId(4))], Change::Join(NodeId(4)))
            .to_string()
            .contains("already staged"));
        let mut same_addr = known.clone();
        same_addr[3].addr = "n2".into();
        let e = check_change(&ring, &same_addr, me, &[], Change::Join(NodeId(4))).unwrap_err();
        assert!(e.to_string().contains("address n2 is member 2's"), "{e}");
        // A leave that would leave fewer than N members, counting what is staged.
        let e = check_change(&ring, &known, me, &[], Change::Leave(NodeId(3))).unwrap_err();
        assert!(e.to_string().contains("fewer than N = 3"), "{e}");
        check_change(&ring, &known, me, &[Change::Join(NodeId(4))], Change::Leave(NodeId(3))).unwrap();
        check_change(&ring, &known, me, &[], Change::Join(NodeId(4))).unwrap();
        let e = plan(&ring, &known, &[Change::Leave(NodeId(3))]).unwrap_err();
        assert!(e.to_string().contains("fewer than N = 3"), "{e}");
        assert!(plan(&ring, &known, &[]).is_err());
    }

    #[test]
    fn a_join_moves_the_fewest_partitions_and_each_gain_has_a_source() {
        let ring = ring(3);
        let known: Vec<MemberInfo> = (1..=5).map(info).collect();
        let (next, transition, plan) =
            plan(&ring, &known, &[Change::Join(NodeId(4)), Change::Join(NodeId(5))]).unwrap();
        assert_eq!(next.epoch(), ring.epoch() + 1);
        assert_eq!(plan.base_epoch, ring.epoch());
        // Only the partitions the newcomers take change owner.
        let newcomers = next.owned_count(NodeId(4)) + next.owned_count(NodeId(5));
        assert_eq!(plan.ownership_moves, newcomers);
        let handover = Handover::of(&next, &transition).unwrap();
        for t in &plan.transfers {
            assert!(t.to == NodeId(4) || t.to == NodeId(5), "only newcomers gain: {t:?}");
            assert_eq!(t.from, handover.lost(&next, t.partition), "copied from the nodes it replaces");
            assert!(!t.from.is_empty());
        }
        let after: usize = plan.shares.iter().map(|s| s.replicas_after).sum();
        assert_eq!(after, 64 * 3);
        let balanced = plan.shares.iter().map(|s| s.owned_after);
        assert!(balanced.clone().max().unwrap() - balanced.min().unwrap() <= 1);
    }

    #[test]
    fn a_removed_node_is_never_a_source_and_settling_needs_every_gainer() {
        let ring = ring(4);
        let known: Vec<MemberInfo> = (1..=4).map(info).collect();
        let (next, transition, plan) = plan(&ring, &known, &[Change::Remove(NodeId(4))]).unwrap();
        assert!(!plan.transfers.is_empty());
        let mut handover = Handover::of(&next, &transition).unwrap();
        for t in &plan.transfers {
            assert!(!t.from.contains(&NodeId(4)));
            assert_eq!(t.from.len(), 2, "both surviving old replicas: {t:?}");
        }
        let first = plan.transfers[0].partition;
        assert!(!handover.is_settled(first));
        handover.settle(&next, |_, p| p != first);
        assert!(!handover.is_settled(first) && !handover.all_settled());
        handover.settle(&next, |_, _| true);
        assert!(handover.all_settled());
    }
}
