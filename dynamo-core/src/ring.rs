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
    /// share, and a member's partitions are spread out: with `m >= N` members
    /// of equal capacity, every `N` consecutive partitions have `N` distinct
    /// owners whenever `ceil(Q / m) * N <= Q` (beyond that some member must
    /// own two partitions of some window).
    ///
    /// # Errors
    /// [`RingError::InvalidPartitions`] unless `partitions` is a power of two
    /// from 1 to 2^20; [`RingError::ZeroReplicas`] if `replicas` is 0;
    /// [`RingError::NoMembers`] if `members` is empty;
    /// [`RingError::DuplicateMember`] if two members share an id;
    /// [`RingError::ZeroCapacity`] if a member has capacity 0.
    pub fn new(
        partitions: u32,
        replicas: usize,
        mut members: Vec<Member>,
    ) -> Result<Ring, RingError> {
        if !partitions.is_power_of_two() || partitions > MAX_PARTITIONS {
            return Err(RingError::InvalidPartitions(partitions));
        }
        if replicas == 0 {
            return Err(RingError::ZeroReplicas);
        }
        if members.is_empty() {
            return Err(RingError::NoMembers);
        }
        members.sort_by_key(|m| m.id);
        for (i, m) in members.iter().enumerate() {
            if m.capacity == 0 {
                return Err(RingError::ZeroCapacity(m.id));
            }
            if i > 0 && members[i - 1].id == m.id {
                return Err(RingError::DuplicateMember(m.id));
            }
        }
        let q = partitions as usize;
        let targets = claim_targets(&members, q, &vec![0; members.len()]);
        let radius = replicas.min(members.len()).min(q) - 1;
        let (grid, smooth) = (interleave(q, &targets), round_robin(q, &targets, radius));
        let layout = if repeats(&smooth, radius) < repeats(&grid, radius) {
            smooth
        } else {
            grid
        };
        Ok(Ring::build(partitions, replicas, 1, members, &layout))
    }

    /// Assembles a ring from an ownership layout (member indices).
    fn build(
        partitions: u32,
        replicas: usize,
        epoch: u64,
        members: Vec<Member>,
        layout: &[usize],
    ) -> Ring {
        let mut counts = vec![0; members.len()];
        for &i in layout {
            counts[i] += 1;
        }
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
        let start = partition as usize * m;
        &self.walks[start..start + m]
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
        let at = members.partition_point(|m| m.id < member.id);
        members.insert(at, member);
        let layout = rebalance(&members, &self.owners, self.replicas);
        Ok(Ring::build(
            self.partitions,
            self.replicas,
            self.epoch + 1,
            members,
            &layout,
        ))
    }

    /// A new ring (epoch + 1) without member `id`. Its partitions go to
    /// members under their new target, and other members give partitions
    /// only if they are over it, so exactly `sum(max(0, old_count -
    /// new_target))` partitions move (the leaver's target being 0), the minimum.
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
        let layout = rebalance(&members, &self.owners, self.replicas);
        Ok(Ring::build(
            self.partitions,
            self.replicas,
            self.epoch + 1,
            members,
            &layout,
        ))
    }

    /// The partitions whose owner differs between `self` and `other`, ascending.
    ///
    /// # Panics
    /// If the two rings have different partition counts.
    pub fn moved_partitions(&self, other: &Ring) -> Vec<u32> {
        assert_eq!(
            self.partitions, other.partitions,
            "rings with different partition counts"
        );
        (0..self.partitions)
            .filter(|&p| self.owners[p as usize] != other.owners[p as usize])
            .collect()
    }
}

/// Each member's partition target (by index): the floor of `q * cap / sum`,
/// plus one for the members with the largest remainders until the targets sum
/// to `q`; remainder ties go to the members owning more now (`current`), then
/// to lower ids.
fn claim_targets(members: &[Member], q: usize, current: &[usize]) -> Vec<usize> {
    let total: u128 = members.iter().map(|m| u128::from(m.capacity)).sum();
    let exact = |m: &Member| q as u128 * u128::from(m.capacity);
    let mut targets: Vec<usize> = members
        .iter()
        .map(|m| (exact(m) / total) as usize)
        .collect();
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
            (0..m)
                .filter(|&i| left[i] > 0 && !(spread && near(i)))
                .max_by_key(|&i| (credit[i], Reverse(i)))
        };
        let i = best(true)
            .or_else(|| best(false))
            .expect("targets sum to q");
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
    (0..q)
        .filter(|&p| (1..=radius).any(|k| back[(p + k) % q] <= k))
        .count()
}

/// Distances from one partition to the nearest partitions of each member
/// within `radius` on either side.
struct Nearby {
    radius: usize,
    now: usize,
    stamp: Vec<usize>,
    dist: Vec<usize>,
}

impl Nearby {
    fn scan(&mut self, owner: &[Option<usize>], p: usize) {
        let q = owner.len();
        self.now += 1;
        for k in 1..=self.radius {
            for at in [(p + k) % q, (p + q - k) % q] {
                if let Some(o) = owner[at] {
                    if self.stamp[o] != self.now {
                        self.stamp[o] = self.now;
                        self.dist[o] = k;
                    }
                }
            }
        }
    }

    /// The distance to member `i`'s nearest other partition, or `radius + 1`.
    fn gap(&self, i: usize) -> usize {
        if self.stamp[i] == self.now {
            self.dist[i]
        } else {
            self.radius + 1
        }
    }
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
    let old_idx = owner.clone();
    let mut counts = vec![0usize; m];
    for &i in owner.iter().flatten() {
        counts[i] += 1;
    }
    let targets = claim_targets(members, q, &counts);
    let mut excess: Vec<usize> = (0..m)
        .map(|i| counts[i].saturating_sub(targets[i]))
        .collect();
    let wanted: Vec<usize> = (0..m)
        .map(|i| targets[i].saturating_sub(counts[i]))
        .collect();
    let mut need = wanted.clone();
    let mut remaining: usize = need.iter().sum();
    let radius = replicas.min(m).min(q) - 1;
    let mut near = Nearby {
        radius,
        now: 0,
        stamp: vec![0; m],
        dist: vec![0; m],
    };
    for sweep in 0..3 {
        for p in 0..q {
            if remaining == 0 {
                break;
            }
            let giver = owner[p];
            if giver.is_some_and(|g| excess[g] == 0) {
                continue;
            }
            near.scan(&owner, p);
            let open = |j: &usize| need[*j] > 0;
            let spread = |j: &usize| need[*j] > 0 && near.gap(*j) > radius;
            let pick = match sweep {
                0 => {
                    // Behind its pro-rata share of the sweep so far when > 0.
                    let credit = |j: usize| {
                        ((p + 1) * wanted[j]) as i64 - ((wanted[j] - need[j]) * q) as i64
                    };
                    let urgent = giver.is_none_or(|g| near.gap(g) <= radius);
                    (0..m)
                        .filter(spread)
                        .map(|j| (credit(j), Reverse(j)))
                        .max()
                        .filter(|&(c, _)| urgent || c > 0)
                        .map(|(_, Reverse(j))| j)
                }
                1 => (0..m).filter(spread).max_by_key(|&j| (need[j], Reverse(j))),
                _ => (0..m)
                    .filter(open)
                    .max_by_key(|&j| (near.gap(j), need[j], Reverse(j))),
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
    let mut owner: Vec<usize> = owner
        .into_iter()
        .map(|o| o.expect("every partition has an owner"))
        .collect();
    repair(&mut owner, &old_idx, radius);
    owner
}

/// Whether member `i` owns none of the `radius` partitions around `p` (other than `p`).
fn clear(owner: &[usize], i: usize, p: usize, radius: usize) -> bool {
    let q = owner.len();
    (1..=radius).all(|k| owner[(p + k) % q] != i && owner[(p + q - k) % q] != i)
}

fn repair(owner: &mut [usize], old: &[Option<usize>], radius: usize) {
    let q = owner.len();
    let moved: Vec<usize> = (0..q).filter(|&p| old[p] != Some(owner[p])).collect();
    for &p in &moved {
        let j = owner[p];
        if clear(owner, j, p, radius) {
            continue;
        }
        // (a) swap receivers with another moved partition
        let mut done = false;
        for &p2 in &moved {
            let j2 = owner[p2];
            if j2 == j { continue; }
            owner[p] = j2; owner[p2] = j;
            if clear(owner, j2, p, radius) && clear(owner, j, p2, radius) { done = true; break; }
            owner[p] = j; owner[p2] = j2;
        }
        if done { continue; }
        // (b) the giver releases another partition instead
        if let Some(g) = old[p] {
            for p3 in 0..q {
                if owner[p3] != g || old[p3] != Some(g) { continue; }
                owner[p] = g; owner[p3] = j;
                if clear(owner, g, p, radius) && clear(owner, j, p3, radius) { done = true; break; }
                owner[p] = j; owner[p3] = g;
            }
        }
        let _ = done;
    }
}
fn _unused() -> Vec<usize> { Vec::new()
        .collect()
}

/// Precomputes every walk: `walk(p)` is `owner(p)` followed by `walk(p + 1)`
/// without it, so two backward sweeps of move-to-front give all of them.
/// Members owning nothing stay at the tail in id order.
fn compute_walks(members: &[Member], layout: &[usize], replicas: usize) -> Vec<NodeId> {
    let (q, m) = (layout.len(), members.len());
    let zoned = members.iter().any(|m| m.zone.is_some());
    let n = replicas.min(m);
    let mut order: Vec<usize> = (0..m).collect();
    let to_front = |order: &mut Vec<usize>, i: usize| {
        let at = order
            .iter()
            .position(|&x| x == i)
            .expect("owner is a member");
        order[..=at].rotate_right(1);
    };
    for &i in layout.iter().rev() {
        to_front(&mut order, i);
    }
    let mut walks = vec![NodeId(0); q * m];
    let mut zones: Vec<&str> = Vec::new();
    let mut picked = vec![false; m];
    let mut row: Vec<usize> = Vec::with_capacity(m);
    for p in (0..q).rev() {
        to_front(&mut order, layout[p]);
        row.clear();
        if zoned {
            // Distinct zones first (no zone is a zone of its own), then fill
            // the preference list in walk order, then the rest in walk order.
            zones.clear();
            picked.iter_mut().for_each(|x| *x = false);
            for &i in &order {
                if row.len() == n {
                    break;
                }
                let fresh = match members[i].zone.as_deref() {
                    None => true,
                    Some(z) if !zones.contains(&z) => {
                        zones.push(z);
                        true
                    }
                    Some(_) => false,
                };
                if fresh {
                    picked[i] = true;
                    row.push(i);
                }
            }
            for &i in &order {
                if row.len() == n {
                    break;
                }
                if !picked[i] {
                    picked[i] = true;
                    row.push(i);
                }
            }
            row.extend(order.iter().filter(|&&i| !picked[i]));
        } else {
            row.extend_from_slice(&order);
        }
        for (slot, &i) in walks[p * m..(p + 1) * m].iter_mut().zip(&row) {
            *slot = members[i].id;
        }
    }
    walks
}
