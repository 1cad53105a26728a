//! The partition ring: which members own which keys, and who replicates them.
//!
//! **Partitioning.** The 64-bit key space of [`key_hash`] (XXH3-64, seed 0) is
//! cut into `Q` equal partitions, `Q` a power of two; a key belongs to the
//! partition named by the top `log2(Q)` bits of its hash, and every partition
//! has exactly one owner.
//!
//! **Claim.** Each member's target is its capacity-weighted share of `Q`,
//! rounded by largest remainder so it is the floor or the ceiling of the exact
//! quota. A new ring interleaves owners so that a member's partitions are as
//! far apart as the counts allow. A join or a leave moves only what it must:
//! members over their new target give partitions to members under it, so the
//! number of moved partitions is the minimum possible.
//!
//! **Preference lists.** A partition's walk lists, clockwise from it, each
//! member the first time it owns a visited partition. Its first `N` entries
//! (taken from distinct zones first when members declare zones) are the
//! preference list; the rest are the fallbacks. Every walk is computed when the
//! ring is built, so a lookup is a slice of a table of `Q * members` ids.

use std::cmp::Reverse;

use serde::{Deserialize, Serialize};

use crate::member::{Member, NodeId};

/// The partition count used when an operator does not choose one.
pub const DEFAULT_PARTITIONS: u32 = 256;

/// The largest partition count [`Ring::new`] accepts (2^20).
const MAX_PARTITIONS: u32 = 1 << 20;

/// The stable 64-bit hash that places a key on the ring: XXH3-64 with seed 0.
///
/// The value depends only on the bytes of `key`, never on the process, the
/// platform or the build, so every node computes the same partition for a key.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// Why a ring could not be built or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The partition count is 0, not a power of two, or larger than 2^20.
    #[error("invalid partition count {0}: it must be a power of two from 1 to 2^20")]
    InvalidPartitions(u32),
    /// The replication factor `N` is 0.
    #[error("the replication factor must be at least 1")]
    ZeroReplicas,
    /// The member list is empty.
    #[error("a ring needs at least one member")]
    NoMembers,
    /// Two members share this id, or the joining member's id is already in the ring.
    #[error("member {0} appears more than once")]
    DuplicateMember(NodeId),
    /// This member has capacity 0.
    #[error("member {0} has capacity 0; capacity must be at least 1")]
    ZeroCapacity(NodeId),
    /// This member is not in the ring.
    #[error("member {0} is not in the ring")]
    UnknownMember(NodeId),
    /// This member is the only one left, and a ring cannot be empty.
    #[error("member {0} is the last member of the ring and cannot be removed")]
    LastMember(NodeId),
}

/// An immutable ring: the ownership table of `Q` partitions plus the
/// precomputed walk of every partition.
///
/// Changing membership builds a new `Ring` ([`Ring::with_member`],
/// [`Ring::without_member`]) with a higher [`epoch`](Ring::epoch). The walk
/// table holds `Q * members` ids, built in `O(Q * members)` time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    partitions: u32,
    /// `log2(partitions)`.
    bits: u32,
    replicas: usize,
    epoch: u64,
    /// Sorted by id; a member's position here is its index everywhere below.
    members: Vec<Member>,
    /// Partitions owned, by member index.
    counts: Vec<usize>,
    owners: Vec<NodeId>,
    /// `partitions` rows of `members.len()` ids: row `p` is `walk(p)`.
    walks: Vec<NodeId>,
}

impl Ring {
    /// Builds the first ring (epoch 1) of `partitions` partitions replicated
    /// `replicas` times over `members`, given in any order.
    ///
    /// Each member owns the floor or the ceiling of its capacity-weighted
    /// share, and owners are interleaved: whenever the largest count `c`
    /// allows it (`c * min(N, m) <= Q`, e.g. `m >= N` equal members with
    /// `ceil(Q / m) * N <= Q`), every `N` consecutive partitions have distinct
    /// owners; otherwise the layout with fewer repeating windows is kept.
    ///
    /// # Errors
    /// [`RingError::InvalidPartitions`] unless `partitions` is a power of two
    /// from 1 to 2^20; [`RingError::ZeroReplicas`] if `replicas` is 0;
    /// [`RingError::NoMembers`] if `members` is empty;
    /// [`RingError::DuplicateMember`] if two members share an id;
    /// [`RingError::ZeroCapacity`] if a member has capacity 0.
    pub fn new(partitions: u32, replicas: usize, members: Vec<Member>) -> Result<Ring, RingError> {
        if !partitions.is_power_of_two() || partitions > MAX_PARTITIONS {
            return Err(RingError::InvalidPartitions(partitions));
        }
        if replicas == 0 {
            return Err(RingError::ZeroReplicas);
        }
        if members.is_empty() {
            return Err(RingError::NoMembers);
        }
        let members = checked_members(members)?;
        let q = partitions as usize;
        let targets = claim_targets(&members, q, &vec![0; members.len()]);
        let radius = replicas.min(members.len()).min(q) - 1;
        let grid = interleave(q, &targets);
        let smooth = round_robin(q, &targets, radius);
        let better = repeats(&smooth, radius) < repeats(&grid, radius);
        Ok(Ring::build(members, &if better { smooth } else { grid }, replicas, 1))
    }

    /// Assembles a ring from an ownership layout of member indices.
    fn build(members: Vec<Member>, layout: &[usize], replicas: usize, epoch: u64) -> Ring {
        let mut counts = vec![0; members.len()];
        layout.iter().for_each(|&i| counts[i] += 1);
        let partitions = layout.len() as u32;
        Ring {
            partitions,
            bits: partitions.trailing_zeros(),
            replicas,
            epoch,
            owners: layout.iter().map(|&i| members[i].id).collect(),
            walks: compute_walks(&members, layout, replicas),
            counts,
            members,
        }
    }

    /// The next epoch's ring over `members`, reached by the fewest moves.
    fn derive(&self, members: Vec<Member>) -> Ring {
        let layout = rebalance(&members, &self.owners, self.replicas);
        Ring::build(members, &layout, self.replicas, self.epoch + 1)
    }

    /// The number of partitions `Q`: a power of two from 1 to 2^20.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The replication factor `N`: the preference-list length when there are
    /// at least `N` members.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The ring's version: 1 for [`Ring::new`], and one more than the ring it
    /// came from for every [`with_member`](Ring::with_member) or
    /// [`without_member`](Ring::without_member).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The members, sorted by id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The member with this id, if it is in the ring.
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.index_of(id).map(|i| &self.members[i])
    }

    fn index_of(&self, id: NodeId) -> Option<usize> {
        self.members.binary_search_by_key(&id, |m| m.id).ok()
    }

    /// The partition of `key`: `partition_for_hash(key_hash(key))`.
    pub fn partition_of(&self, key: &[u8]) -> u32 {
        self.partition_for_hash(key_hash(key))
    }

    /// The partition covering `hash`: its top `log2(Q)` bits, so partition
    /// `p` covers hashes `[p * 2^64 / Q, (p + 1) * 2^64 / Q)`. Always 0 when
    /// `Q == 1`.
    pub fn partition_for_hash(&self, hash: u64) -> u32 {
        // A shift by 64 (Q == 1) is None: every hash is in partition 0.
        hash.checked_shr(64 - self.bits).unwrap_or(0) as u32
    }

    /// The member that owns `partition`.
    ///
    /// # Panics
    /// If `partition >= self.partitions()`.
    pub fn owner(&self, partition: u32) -> NodeId {
        self.owners[partition as usize]
    }

    /// The ownership table: entry `p` is the owner of partition `p`.
    pub fn owners(&self) -> &[NodeId] {
        &self.owners
    }

    /// How many partitions member `id` owns (0 if it is not in the ring).
    pub fn owned_count(&self, id: NodeId) -> usize {
        self.index_of(id).map_or(0, |i| self.counts[i])
    }

    /// All members, each once, in preference order for `partition`: the first
    /// `min(N, members)` entries are the preference list (distinct zones
    /// first), the rest are the fallbacks in ring-walk order. The first entry
    /// is always the partition's owner. O(1), no allocation.
    ///
    /// # Panics
    /// If `partition >= self.partitions()`.
    pub fn walk(&self, partition: u32) -> &[NodeId] {
        let m = self.members.len();
        &self.walks[partition as usize * m..][..m]
    }

    /// The `min(N, members)` distinct members that replicate `partition`:
    /// `walk(partition)[..min(N, members)]`. O(1), no allocation.
    ///
    /// # Panics
    /// If `partition >= self.partitions()`.
    pub fn preference_list(&self, partition: u32) -> &[NodeId] {
        &self.walk(partition)[..self.replicas.min(self.members.len())]
    }

    /// A new ring (epoch + 1) with `member` joined. Members over their new
    /// target hand partitions to members under it, so exactly
    /// `sum(max(0, old_count - new_target))` partitions move, the minimum.
    ///
    /// # Errors
    /// [`RingError::DuplicateMember`] if a member with this id is already in
    /// the ring; [`RingError::ZeroCapacity`] if `member.capacity` is 0.
    pub fn with_member(&self, member: Member) -> Result<Ring, RingError> {
        if self.index_of(member.id).is_some() {
            return Err(RingError::DuplicateMember(member.id));
        }
        if member.capacity == 0 {
            return Err(RingError::ZeroCapacity(member.id));
        }
        let mut members = self.members.clone();
        members.insert(members.partition_point(|m| m.id < member.id), member);
        Ok(self.derive(members))
    }

    /// A new ring (epoch + 1) over `members` (any order), reached from
    /// this one by the fewest partition moves: what a committed topology
    /// change applies (several joins and leaves at once).
    ///
    /// # Errors
    /// [`RingError::NoMembers`], [`RingError::DuplicateMember`] and
    /// [`RingError::ZeroCapacity`] as [`Ring::new`].
    pub fn rebalanced(&self, members: Vec<Member>) -> Result<Ring, RingError> {
        if members.is_empty() {
            return Err(RingError::NoMembers);
        }
        let members = checked_members(members)?;
        Ok(self.derive(members))
    }

    /// A new ring (epoch + 1) without member `id`. Its partitions go to
    /// members under their new target, and others give partitions only if
    /// over it, so exactly `sum(max(0, old_count - new_target))` partitions
    /// move (the leaver's target being 0), the minimum.
    ///
    /// # Errors
    /// [`RingError::UnknownMember`] if `id` is not in the ring;
    /// [`RingError::LastMember`] if it is the only member.
    pub fn without_member(&self, id: NodeId) -> Result<Ring, RingError> {
        let at = self.index_of(id).ok_or(RingError::UnknownMember(id))?;
        if self.members.len() == 1 {
            return Err(RingError::LastMember(id));
        }
        let mut members = self.members.clone();
        members.remove(at);
        Ok(self.derive(members))
    }

    /// What defines this ring, as gossip carries it and a store keeps it.
    pub fn layout(&self) -> RingLayout {
        RingLayout {
            epoch: self.epoch,
            replicas: self.replicas as u64,
            members: self.members.clone(),
            owners: self.owners.clone(),
            transition: None,
        }
    }

    /// The ring a [`RingLayout`] describes (walks and preference lists
    /// recomputed).
    ///
    /// # Errors
    /// As [`Ring::new`] for the partition count (the number of owners),
    /// N, the members and their capacities; [`RingError::UnknownMember`]
    /// for an owner that is not a member.
    pub fn from_layout(layout: RingLayout) -> Result<Ring, RingError> {
        let RingLayout { epoch, replicas, members, owners, transition: _ } = layout;
        let partitions = u32::try_from(owners.len()).unwrap_or(u32::MAX);
        if !partitions.is_power_of_two() || partitions > MAX_PARTITIONS {
            return Err(RingError::InvalidPartitions(partitions));
        }
        let replicas = usize::try_from(replicas).unwrap_or(usize::MAX);
        if replicas == 0 {
            return Err(RingError::ZeroReplicas);
        }
        if members.is_empty() {
            return Err(RingError::NoMembers);
        }
        let members = checked_members(members)?;
        let layout = owners
            .iter()
            .map(|o| members.binary_search_by_key(o, |m| m.id).map_err(|_| RingError::UnknownMember(*o)))
            .collect::<Result<Vec<usize>, RingError>>()?;
        Ok(Ring::build(members, &layout, replicas, epoch))
    }

    /// The partitions whose owner differs between `self` and `other`, ascending.
    ///
    /// # Panics
    /// If the two rings have different partition counts.
    pub fn moved_partitions(&self, other: &Ring) -> Vec<u32> {
        assert_eq!(self.partitions, other.partitions, "rings with different partition counts");
        let differ = |&p: &u32| self.owners[p as usize] != other.owners[p as usize];
        (0..self.partitions).filter(differ).collect()
    }
}

/// The data that defines a [`Ring`]: its epoch, N, members and the owner
/// of each partition (the partition count is the number of owners).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingLayout {
    /// The ownership epoch; a later ring has a higher one.
    pub epoch: u64,
    /// The replication factor N.
    pub replicas: u64,
    /// The members.
    pub members: Vec<Member>,
    /// The owner of each partition, in partition order.
    pub owners: Vec<NodeId>,
    /// While the data of the previous ring moves to this one: what the
    /// previous ring was (see [`crate::topology`]). `None` for a first
    /// ring, or one set by hand.
    pub transition: Option<Transition>,
}

/// The ring a committed topology change moves data away from: its epoch,
/// members and owners, and which of its members were removed (dead, so
/// their data is copied from the other replicas instead of them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The previous ring's epoch.
    pub from_epoch: u64,
    /// The previous ring's members.
    pub members: Vec<Member>,
    /// The previous ring's owner of each partition.
    pub owners: Vec<NodeId>,
    /// Members removed by the change (never asked for their data).
    pub removed: Vec<NodeId>,
}

/// `members` sorted by id, checked: no capacity of 0, no id twice.
fn checked_members(mut members: Vec<Member>) -> Result<Vec<Member>, RingError> {
    members.sort_by_key(|m| m.id);
    for (i, m) in members.iter().enumerate() {
        if m.capacity == 0 {
            return Err(RingError::ZeroCapacity(m.id));
        }
        if i > 0 && members[i - 1].id == m.id {
            return Err(RingError::DuplicateMember(m.id));
        }
    }
    Ok(members)
}

/// Each member's partition target (by index): the floor of `q * cap / sum`,
/// plus one for the members with the largest remainders until the targets sum
/// to `q`; remainder ties go to the members owning more now (`current`), then
/// to lower ids.
fn claim_targets(members: &[Member], q: usize, current: &[usize]) -> Vec<usize> {
    let total: u128 = members.iter().map(|m| u128::from(m.capacity)).sum();
    let exact = |m: &Member| q as u128 * u128::from(m.capacity);
    let mut targets: Vec<usize> = members.iter().map(|m| (exact(m) / total) as usize).collect();
    let leftover = q - targets.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_by_key(|&i| (Reverse(exact(&members[i]) % total), Reverse(current[i]), i));
    for &i in &order[..leftover] {
        targets[i] += 1;
    }
    targets
}

/// The initial layout: members sorted by target (descending) fill a grid of
/// `max(target)` rows column by column, and the ring reads it row by row.
/// A member sits at most once per row, in the same or the next column, so
/// two of its partitions are at least `floor(q / max(target))` apart —
/// the best possible spacing.
fn interleave(q: usize, targets: &[usize]) -> Vec<usize> {
    let rows = targets.iter().copied().max().unwrap_or(1).max(1);
    let (base, longer) = (q / rows, q % rows);
    let mut order: Vec<usize> = (0..targets.len()).collect();
    order.sort_by_key(|&i| (Reverse(targets[i]), i));
    let mut layout = vec![0; q];
    let mut cell = 0;
    for &i in &order {
        for _ in 0..targets[i] {
            let (row, col) = (cell % rows, cell / rows);
            layout[row * base + row.min(longer) + col] = i;
            cell += 1;
        }
    }
    layout
}

/// Smooth weighted round robin: before each partition every member's credit
/// grows by its target, and the member with the most credit (among those with
/// partitions left, preferring ones owning none of the `radius` partitions on
/// either side so far) takes it and pays `q`.
fn round_robin(q: usize, targets: &[usize], radius: usize) -> Vec<usize> {
    let m = targets.len();
    let mut credit = vec![0i64; m];
    let mut left = targets.to_vec();
    let (mut first, mut last) = (vec![None; m], vec![None; m]);
    let mut layout = Vec::with_capacity(q);
    for p in 0..q {
        for (c, &t) in credit.iter_mut().zip(targets) {
            *c += t as i64;
        }
        let near = |i: usize| match (first[i], last[i]) {
            (Some(f), Some(l)) => p - l <= radius || f + q - p <= radius,
            _ => false,
        };
        let best = |spread: bool| {
            (0..m).filter(|&i| left[i] > 0 && !(spread && near(i))).max_by_key(|&i| (credit[i], Reverse(i)))
        };
        let i = best(true).or_else(|| best(false)).expect("targets sum to q");
        credit[i] -= q as i64;
        left[i] -= 1;
        first[i].get_or_insert(p);
        last[i] = Some(p);
        layout.push(i);
    }
    layout
}

/// How many windows of `radius + 1` consecutive partitions (cyclically)
/// have an owner twice.
fn repeats(layout: &[usize], radius: usize) -> usize {
    let q = layout.len();
    // back[x]: distance from x back to the previous partition with its owner.
    let mut seen = vec![None; layout.iter().max().map_or(0, |&i| i + 1)];
    let mut back = vec![q; q];
    for x in 0..2 * q {
        let i = layout[x % q];
        if let Some(prev) = seen[i] {
            back[x % q] = back[x % q].min(x - prev);
        }
        seen[i] = Some(x);
    }
    (0..q).filter(|&p| (1..=radius).any(|k| back[(p + k) % q] <= k)).count()
}

/// Moves the fewest partitions so that every member of `members` owns its
/// target; owners of `old` not in `members` give up all their partitions.
///
/// Only members over target give, only members under it receive. Three
/// sweeps choose the moves: first each receiver takes partitions at its
/// pro-rata pace (or from givers that repeat within a window), only where it
/// owns nothing within `N - 1`; then wherever it owns nothing within `N - 1`;
/// then anywhere, farthest from its own partitions first.
fn rebalance(members: &[Member], old: &[NodeId], replicas: usize) -> Vec<usize> {
    let (q, m) = (old.len(), members.len());
    let index = |id: &NodeId| members.binary_search_by_key(id, |m| m.id).ok();
    let mut owner: Vec<Option<usize>> = old.iter().map(index).collect();
    let mut counts = vec![0usize; m];
    for &i in owner.iter().flatten() {
        counts[i] += 1;
    }
    let targets = claim_targets(members, q, &counts);
    let mut excess: Vec<usize> = (0..m).map(|i| counts[i].saturating_sub(targets[i])).collect();
    let wanted: Vec<usize> = (0..m).map(|i| targets[i].saturating_sub(counts[i])).collect();
    let mut need = wanted.clone();
    let mut remaining: usize = need.iter().sum();
    let radius = replicas.min(m).min(q) - 1;
    // gap[i]: distance from p to member i's nearest partition, or radius + 1.
    let mut gap = vec![0; m];
    for sweep in 0..3 {
        for p in 0..q {
            let giver = owner[p];
            if remaining == 0 || giver.is_some_and(|g| excess[g] == 0) {
                continue;
            }
            gap.fill(radius + 1);
            for k in (1..=radius).rev() {
                for o in [owner[(p + k) % q], owner[(p + q - k) % q]].into_iter().flatten() {
                    gap[o] = k;
                }
            }
            let pick = if sweep == 0 {
                // Receivers behind their pro-rata pace (credit > 0) take
                // partitions where they own nothing within the window; a
                // leaver's partition or a giver's repeat is taken by anyone so placed.
                let taken = |j: usize| (wanted[j] - need[j]) as i64;
                let credit = |j: usize| (p as i64 + 1) * wanted[j] as i64 - taken(j) * q as i64;
                let urgent = giver.is_none_or(|g| gap[g] <= radius);
                (0..m)
                    .filter(|&j| need[j] > 0 && gap[j] > radius && (urgent || credit(j) > 0))
                    .max_by_key(|&j| (credit(j), Reverse(j)))
            } else {
                // Then wherever the receiver owns nothing within the window, then anywhere.
                (0..m)
                    .filter(|&j| need[j] > 0 && (sweep == 2 || gap[j] > radius))
                    .max_by_key(|&j| (gap[j], need[j], Reverse(j)))
            };
            if let Some(j) = pick {
                owner[p] = Some(j);
                need[j] -= 1;
                remaining -= 1;
                if let Some(g) = giver {
                    excess[g] -= 1;
                }
            }
        }
    }
    // The last sweep takes every open partition while needs remain, and needs
    // equal open partitions plus excess, so nothing is left open.
    owner.into_iter().map(|o| o.expect("every partition has an owner")).collect()
}

/// Precomputes every walk: `walk(p)` is `owner(p)` followed by `walk(p + 1)`
/// without it, so two backward sweeps of move-to-front give all of them.
/// Members owning nothing stay at the tail in id order.
fn compute_walks(members: &[Member], layout: &[usize], replicas: usize) -> Vec<NodeId> {
    let (q, m, n) = (layout.len(), members.len(), replicas.min(members.len()));
    let zoned = members.iter().any(|m| m.zone.is_some());
    let mut order: Vec<usize> = (0..m).collect();
    let to_front = |order: &mut [usize], i: usize| {
        let at = order.iter().position(|&x| x == i).expect("owner is a member");
        order[..=at].rotate_right(1);
    };
    layout.iter().rev().for_each(|&i| to_front(&mut order, i));
    let mut walks = vec![NodeId(0); q * m];
    let (mut zones, mut picked) = (Vec::new(), vec![false; m]);
    for p in (0..q).rev() {
        to_front(&mut order, layout[p]);
        let row = &mut walks[p * m..][..m];
        if !zoned {
            row.iter_mut().zip(&order).for_each(|(slot, &i)| *slot = members[i].id);
            continue;
        }
        // The preference list first takes, in walk order, members of zones not
        // picked yet (no zone is a zone of its own); the rest follow in walk order.
        zones.clear();
        picked.fill(false);
        let mut len = 0;
        for &i in &order {
            let zone = members[i].zone.as_deref();
            if len < n && zone.is_none_or(|z| !zones.contains(&z)) {
                zones.extend(zone);
                picked[i] = true;
                row[len] = members[i].id;
                len += 1;
            }
        }
        for &i in order.iter().filter(|&&i| !picked[i]) {
            row[len] = members[i].id;
            len += 1;
        }
    }
    walks
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use RingError::*;

    fn node(id: u64, capacity: u32) -> Member {
        Member::new(NodeId(id), format!("10.0.0.{id}:7000")).with_capacity(capacity)
    }

    /// Members with these capacities, ids 1, 8, 15, ..., listed in reverse.
    fn nodes(caps: &[u32]) -> Vec<Member> {
        let all = caps.iter().enumerate().map(|(i, &c)| node(i as u64 * 7 + 1, c));
        all.rev().collect()
    }

    fn ids(ring: &Ring) -> Vec<NodeId> {
        ring.members().iter().map(|m| m.id).collect()
    }

    fn counts(ring: &Ring) -> Vec<usize> {
        ids(ring).into_iter().map(|id| ring.owned_count(id)).collect()
    }

    /// The walk by definition: clockwise first owners, then the rest by id.
    fn reference_walk(ring: &Ring, p: u32) -> Vec<NodeId> {
        let q = ring.partitions();
        let mut walk: Vec<NodeId> = Vec::new();
        for id in (0..q).map(|k| ring.owner((p + k) % q)).chain(ids(ring)) {
            if !walk.contains(&id) {
                walk.push(id);
            }
        }
        walk
    }

    /// Windows of `n` consecutive partitions (cyclically) with a repeated owner.
    fn bad_windows(ring: &Ring, n: usize) -> usize {
        let (q, o) = (ring.partitions() as usize, ring.owners());
        let n = n.min(ring.members().len()).min(q);
        let repeat = |p: usize| (0..n).any(|a| (a + 1..n).any(|b| o[(p + a) % q] == o[(p + b) % q]));
        (0..q).filter(|&p| repeat(p)).count()
    }

    /// Everything a ring without zones promises.
    fn check(ring: &Ring) {
        let (q, m) = (ring.partitions() as usize, ring.members().len());
        assert!(ring.members().windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(ring.owners().len(), q);
        assert!(ring.owners().iter().all(|&o| ring.member(o).is_some()));
        let total: u64 = ring.members().iter().map(|m| u64::from(m.capacity)).sum();
        for (member, count) in ring.members().iter().zip(counts(ring)) {
            assert_eq!(count, ring.owners().iter().filter(|&&o| o == member.id).count());
            let exact = q as u64 * u64::from(member.capacity);
            let (lo, hi) = (exact / total, exact.div_ceil(total));
            assert!((lo..=hi).contains(&(count as u64)), "{} owns {count}", member.id);
        }
        assert_eq!(counts(ring).iter().sum::<usize>(), q);
        for p in 0..q as u32 {
            let walk = ring.walk(p);
            assert_eq!(walk, reference_walk(ring, p));
            assert_eq!(walk[0], ring.owner(p));
            assert_eq!(ring.preference_list(p), &walk[..ring.replicas().min(m)]);
        }
    }

    /// Capacities (all 1 half of the time), a partition count and N.
    fn ring_args() -> impl Strategy<Value = (Vec<u32>, u32, usize)> {
        let caps = (prop::collection::vec(1u32..=4, 1..=12), any::<bool>()).prop_map(|(caps, even)| {
            if even {
                vec![1; caps.len()]
            } else {
                caps
            }
        });
        (caps, (0u32..=10).prop_map(|b| 1 << b), 1usize..=5)
    }

    #[test]
    fn key_hash_is_pinned_xxh3() {
        assert_eq!(key_hash(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(key_hash(b"hello"), 0x9555_e855_5c62_dcfd);
        assert_eq!(key_hash(b"dynamo"), 0xb87d_93c1_e0c0_57fa);
    }

    #[test]
    fn partitions_are_the_top_bits_of_the_hash() {
        let ring = |q| Ring::new(q, 3, nodes(&[1, 1, 1])).unwrap();
        assert_eq!(ring(256).partition_of(b"hello"), 0x95);
        assert_eq!(ring(1 << 20).partition_of(b"dynamo"), 0xb87d9);
        assert_eq!(ring(1).partition_of(b"hello"), 0);
        assert_eq!(ring(1).partition_for_hash(u64::MAX), 0);
        let r4 = ring(4);
        for (hash, p) in [(0, 0), ((1 << 62) - 1, 0), (1 << 62, 1), (u64::MAX, 3)] {
            assert_eq!(r4.partition_for_hash(hash), p, "{hash:#x}");
        }
        for key in [b"a".as_slice(), b"bb", b"key-17"] {
            assert_eq!(u64::from(r4.partition_of(key)), key_hash(key) >> 62);
        }
    }

    #[test]
    fn capacity_weights_ownership() {
        let ring = Ring::new(256, 3, nodes(&[1, 1, 2])).unwrap();
        assert_eq!(counts(&ring), [64, 64, 128]);
        let ring = Ring::new(256, 3, nodes(&[1, 2, 3, 1])).unwrap();
        check(&ring);
        // Quotas 36.6, 73.1, 109.7, 36.6: the two largest remainders round up.
        assert_eq!(counts(&ring), [37, 73, 110, 36]);
        assert_eq!(ring.owned_count(NodeId(99)), 0);
        // 110 * 3 > 256 forces repeats; interleaving by grid alone leaves 146.
        assert!(bad_windows(&ring, 3) <= 50, "{}", bad_windows(&ring, 3));
    }

    #[test]
    fn rounding_ties_favor_current_owners() {
        // Ids 1..=5 own 4, 3, 3, 3, 3 of 16. Id 0 joining ties every remainder
        // (16 / 6 each): the four owning most keep 3, so only 2 partitions move.
        let old = Ring::new(16, 3, (1..=5).map(|i| node(i, 1)).collect()).unwrap();
        let new = old.with_member(node(0, 1)).unwrap();
        assert_eq!(counts(&new), [2, 3, 3, 3, 3, 2]);
        assert_eq!(old.moved_partitions(&new).len(), 2);
    }

    #[test]
    fn preference_lists_span_zones() {
        let zones = ["a", "a", "b", "b", "c", "c"];
        let members = (0..6).map(|i| node(i, 1).with_zone(zones[i as usize])).collect();
        let ring = Ring::new(64, 3, members).unwrap();
        let zone = |id: NodeId| ring.member(id).unwrap().zone.clone().unwrap();
        for p in 0..64 {
            let mut seen: Vec<String> = ring.preference_list(p).iter().map(|&id| zone(id)).collect();
            seen.sort();
            assert_eq!(seen, ["a", "b", "c"], "partition {p}");
            assert_eq!(ring.walk(p)[0], ring.owner(p));
            let mut all = ring.walk(p).to_vec();
            all.sort();
            assert_eq!(all, ids(&ring));
        }
        // A member without a zone is a zone of its own.
        let members = vec![node(1, 1).with_zone("a"), node(2, 1).with_zone("a"), node(3, 1)];
        let ring = Ring::new(16, 2, members).unwrap();
        for p in 0..16 {
            let pref = ring.preference_list(p);
            assert!(pref.contains(&NodeId(3)) && pref[0] == ring.owner(p), "partition {p}");
        }
    }

    #[test]
    fn small_rings_hold_every_member() {
        let ring = Ring::new(8, 5, nodes(&[1, 1])).unwrap();
        assert!((0..8).all(|p| ring.preference_list(p).len() == 2));
        // Fewer partitions than members: members owning nothing trail by id.
        let ring = Ring::new(2, 2, nodes(&[1, 1, 1, 1])).unwrap();
        check(&ring);
        assert_eq!(ring.owners(), [NodeId(1), NodeId(8)]);
        assert_eq!(ring.walk(1), [8, 1, 15, 22].map(NodeId));
    }

    #[test]
    fn bad_input_is_rejected() {
        let three = || nodes(&[1, 1, 1]);
        let new = |q, n, members| Ring::new(q, n, members).unwrap_err();
        for q in [0, 3, 100, 1 << 21] {
            assert_eq!(new(q, 3, three()), InvalidPartitions(q));
        }
        assert_eq!(new(64, 0, three()), ZeroReplicas);
        assert_eq!(new(64, 3, vec![]), NoMembers);
        let dup = vec![node(4, 1), node(2, 1), node(4, 2)];
        assert_eq!(new(64, 3, dup), DuplicateMember(NodeId(4)));
        let err = new(64, 3, vec![node(1, 1), node(7, 0)]);
        assert_eq!(err, ZeroCapacity(NodeId(7)));
        assert!(err.to_string().contains("n7"), "{err}");
        let ring = Ring::new(64, 3, three()).unwrap();
        assert_eq!(ring.with_member(node(8, 1)), Err(DuplicateMember(NodeId(8))));
        assert_eq!(ring.with_member(node(9, 0)), Err(ZeroCapacity(NodeId(9))));
        assert_eq!(ring.without_member(NodeId(2)), Err(UnknownMember(NodeId(2))));
        let solo = Ring::new(64, 3, vec![node(5, 1)]).unwrap();
        assert_eq!(solo.without_member(NodeId(5)), Err(LastMember(NodeId(5))));
    }

    #[test]
    fn a_layout_rebuilds_the_same_ring_and_bad_layouts_are_refused() {
        let members =
            (1..=4).map(|i| Member::new(NodeId(i), format!("n{i}")).with_capacity(i as u32)).collect();
        let ring = Ring::new(64, 3, members).unwrap().with_member(Member::new(NodeId(9), "n9")).unwrap();
        assert_eq!(Ring::from_layout(ring.layout()).unwrap(), ring);
        let mut bad = ring.layout();
        bad.owners[3] = NodeId(77);
        assert_eq!(Ring::from_layout(bad), Err(RingError::UnknownMember(NodeId(77))));
        let mut bad = ring.layout();
        bad.owners.pop();
        assert!(matches!(Ring::from_layout(bad), Err(RingError::InvalidPartitions(63))));
        let mut bad = ring.layout();
        bad.replicas = 0;
        assert_eq!(Ring::from_layout(bad), Err(RingError::ZeroReplicas));
    }

    #[test]
    fn derived_rings_bump_the_epoch() {
        let ring = Ring::new(64, 3, nodes(&[1, 1, 1])).unwrap();
        assert_eq!(ring.epoch(), 1);
        let joined = ring.with_member(node(100, 1)).unwrap();
        assert_eq!(joined.epoch(), 2);
        let left = joined.without_member(NodeId(1)).unwrap();
        assert_eq!((left.epoch(), left.partitions(), left.replicas()), (3, 64, 3));
    }

    #[test]
    fn joins_into_an_even_ring_keep_windows_distinct() {
        let mut ring = Ring::new(256, 3, nodes(&[1, 1, 1, 1])).unwrap();
        assert_eq!(ring.owners()[..8], [1, 8, 15, 22, 1, 8, 15, 22].map(NodeId));
        for id in 100..104 {
            ring = ring.with_member(node(id, 1)).unwrap();
            assert_eq!(bad_windows(&ring, 3), 0, "after {id} joined");
        }
    }

    #[test]
    #[should_panic]
    fn owner_out_of_range_panics() {
        Ring::new(16, 3, nodes(&[1])).unwrap().owner(16);
    }

    #[test]
    #[should_panic(expected = "different partition counts")]
    fn moved_partitions_needs_equal_partition_counts() {
        let a = Ring::new(16, 3, nodes(&[1])).unwrap();
        a.moved_partitions(&Ring::new(32, 3, nodes(&[1])).unwrap());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn new_rings_are_balanced_with_exact_walks((caps, q, n) in ring_args()) {
            let ring = Ring::new(q, n, nodes(&caps)).unwrap();
            check(&ring);
            // Whenever the counts allow it, every window of N has distinct owners.
            if counts(&ring).into_iter().max().unwrap() * n.min(caps.len()) <= q as usize {
                prop_assert_eq!(bad_windows(&ring, n), 0);
            }
        }

        #[test]
        fn equal_members_get_distinct_windows(m in 1usize..=16, b in 0u32..=10, n in 1usize..=5) {
            let q = 1usize << b;
            prop_assume!(n <= m && q.div_ceil(m) * n <= q);
            let ring = Ring::new(q as u32, n, nodes(&vec![1; m])).unwrap();
            prop_assert_eq!(bad_windows(&ring, n), 0);
        }

        #[test]
        fn joins_move_the_minimum((caps, q, n) in ring_args(), cap in 1u32..=4) {
            let even = caps.iter().all(|&c| c == 1);
            let old = Ring::new(q, n, nodes(&caps)).unwrap();
            let new = old.with_member(node(1000, if even { 1 } else { cap })).unwrap();
            check(&new);
            let moved = old.moved_partitions(&new);
            let gives = |id| old.owned_count(id).saturating_sub(new.owned_count(id));
            prop_assert_eq!(moved.len(), ids(&old).into_iter().map(gives).sum::<usize>());
            for &p in &moved {
                let (from, to) = (old.owner(p), new.owner(p));
                prop_assert!(old.owned_count(from) > new.owned_count(from));
                prop_assert!(old.owned_count(to) < new.owned_count(to));
            }
            if even {
                prop_assert_eq!(moved.len(), new.owned_count(NodeId(1000)));
                prop_assert!(moved.iter().all(|&p| new.owner(p) == NodeId(1000)));
            }
        }

        #[test]
        fn leaves_move_the_minimum((caps, q, n) in ring_args(), pick: prop::sample::Index) {
            prop_assume!(caps.len() > 1);
            let old = Ring::new(q, n, nodes(&caps)).unwrap();
            let gone = old.members()[pick.index(caps.len())].id;
            let new = old.without_member(gone).unwrap();
            check(&new);
            let moved = old.moved_partitions(&new);
            let own: Vec<u32> = (0..q).filter(|&p| old.owner(p) == gone).collect();
            prop_assert!(own.iter().all(|p| moved.contains(p)));
            let gives = |id| old.owned_count(id).saturating_sub(new.owned_count(id));
            prop_assert_eq!(moved.len(), ids(&old).into_iter().map(gives).sum::<usize>());
            if caps.iter().all(|&c| c == 1) {
                prop_assert_eq!(moved, own);
            }
        }

        #[test]
        fn churn_stays_balanced(
            (caps, q, n) in ring_args(),
            ops in prop::collection::vec((any::<bool>(), 1u32..=4, any::<prop::sample::Index>()), 1..8),
        ) {
            let mut ring = Ring::new(q, n, nodes(&caps)).unwrap();
            for (i, (join, cap, pick)) in ops.into_iter().enumerate() {
                let gone = ring.members()[pick.index(ring.members().len())].id;
                let next = if join || ring.members().len() == 1 {
                    ring.with_member(node(500 + i as u64, cap)).unwrap()
                } else {
                    ring.without_member(gone).unwrap()
                };
                check(&next);
                prop_assert_eq!(next.epoch(), ring.epoch() + 1);
                ring = next;
            }
        }
    }
}
