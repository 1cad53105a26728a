//! The state gossip spreads, and its merge: pure, synchronous, and a join
//! (commutative, associative, idempotent), so any order of exchanges ends
//! in the same state everywhere.
//!
//! Each member owns its entry and stamps every change with its
//! `(generation, version)`: the generation grows at every start, the
//! version at every change within one. Of two entries for a member the one
//! with the higher stamp wins (a hash of the content breaks a tie, which
//! only two nodes claiming one id could cause). Of two rings the one with
//! the higher epoch wins (a hash of the layout breaks a tie).
//!
//! Exchanges are delta-based: a peer first sends a hash of its whole state
//! (equal hashes end the round: constant bytes however large the cluster),
//! then, if they differ, the stamps of its entries ([`Digest`]); each side
//! then sends only the entries the other lacks or holds older.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::member::NodeId;
use crate::membership::MemberInfo;
use crate::ring::RingLayout;

/// A member's view of itself, as gossip carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    /// Who the member is and where to reach it.
    pub info: MemberInfo,
    /// Grows at every start of the member.
    pub generation: u64,
    /// Grows at every change the member makes within one generation.
    pub version: u64,
    /// The partitions it has finished copying under the current ring.
    pub handoff: HandoffReport,
}

/// What a member reports of the data it gained under a ring epoch: the
/// partitions whose copy it holds complete. Grows within an epoch; a new
/// epoch starts it afresh.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HandoffReport {
    /// The ring epoch the report is about.
    pub epoch: u64,
    /// Partitions copied complete, ascending.
    pub received: Vec<u32>,
}

impl HandoffReport {
    /// Whether `partition` was copied complete under `epoch`.
    pub fn has(&self, epoch: u64, partition: u32) -> bool {
        self.epoch == epoch && self.received.binary_search(&partition).is_ok()
    }

    /// Adds `partition` under `epoch` (a newer epoch starts afresh, an
    /// older one is ignored); returns whether the report changed.
    pub fn add(&mut self, epoch: u64, partition: u32) -> bool {
        if epoch < self.epoch {
            return false;
        }
        if epoch > self.epoch {
            *self = HandoffReport { epoch, received: Vec::new() };
        }
        match self.received.binary_search(&partition) {
            Ok(_) => false,
            Err(at) => {
                self.received.insert(at, partition);
                true
            }
        }
    }

    /// The join of two reports: the later epoch's, or both sets' union.
    pub fn joined(&self, other: &HandoffReport) -> HandoffReport {
        let mut out = if self.epoch >= other.epoch { self.clone() } else { other.clone() };
        let from = if self.epoch >= other.epoch { other } else { self };
        for &p in &from.received {
            out.add(from.epoch, p);
        }
        out
    }
}

/// The order of entries for one member: generation, version, then a hash
/// of the content so that the order is total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// The entry's generation.
    pub generation: u64,
    /// The entry's version.
    pub version: u64,
    /// XXH3 of the entry's encoding.
    pub content: u64,
}

impl MemberEntry {
    /// The entry's place in the order of entries for its member.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            generation: self.generation,
            version: self.version,
            content: hash_of(&(&self.info, &self.handoff)),
        }
    }
}

/// The order of rings: epoch, then a hash of the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RingStamp {
    /// The ring's ownership epoch.
    pub epoch: u64,
    /// XXH3 of the layout's encoding.
    pub content: u64,
}

fn ring_stamp(ring: &RingLayout) -> RingStamp {
    RingStamp { epoch: ring.epoch, content: hash_of(ring) }
}

fn hash_of<T: Serialize>(value: &T) -> u64 {
    let bytes = postcard::to_stdvec(value).expect("gossip state always serializes");
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// The stamps of a state: what a peer sends to learn what differs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// Each member's stamp, ascending by id.
    pub members: Vec<(NodeId, Stamp)>,
    /// The ring's stamp, if a ring is known.
    pub ring: Option<RingStamp>,
}

/// What one side sends the other after comparing digests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Entries the other side lacks or holds older.
    pub entries: Vec<MemberEntry>,
    /// The ring, if the other side's is older (or missing).
    pub ring: Option<RingLayout>,
    /// Members whose entries the other side holds newer (or only it holds).
    pub want: Vec<NodeId>,
    /// Whether the other side's ring is newer.
    pub want_ring: bool,
}

/// Members and ring, as one node knows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipState {
    members: BTreeMap<NodeId, MemberEntry>,
    ring: Option<RingLayout>,
}

/// The persisted state as version 2 of the protocol wrote it (no ring
/// transitions, no handoff reports), still read at start-up.
#[derive(Deserialize)]
struct GossipStateV2 {
    members: BTreeMap<NodeId, MemberEntryV2>,
    ring: Option<RingLayoutV2>,
}

#[derive(Deserialize)]
struct MemberEntryV2 {
    info: MemberInfo,
    generation: u64,
    version: u64,
}

#[derive(Deserialize)]
struct RingLayoutV2 {
    epoch: u64,
    replicas: u64,
    members: Vec<crate::member::Member>,
    owners: Vec<NodeId>,
}

impl GossipState {
    /// Decodes a state persisted by version 2 of the protocol (no ring
    /// transitions, no handoff reports).
    ///
    /// # Errors
    /// The decoder's message when the bytes are not such a state.
    pub fn decode_v2(bytes: &[u8]) -> std::result::Result<GossipState, String> {
        let (old, rest) = postcard::take_from_bytes::<GossipStateV2>(bytes).map_err(|e| e.to_string())?;
        if !rest.is_empty() {
            return Err(format!("{} bytes after the state", rest.len()));
        }
        let members = old
            .members
            .into_iter()
            .map(|(id, e)| {
                let entry = MemberEntry {
                    info: e.info,
                    generation: e.generation,
                    version: e.version,
                    handoff: HandoffReport::default(),
                };
                (id, entry)
            })
            .collect();
        let ring = old.ring.map(|r| RingLayout {
            epoch: r.epoch,
            replicas: r.replicas,
            members: r.members,
            owners: r.owners,
            transition: None,
        });
        Ok(GossipState { members, ring })
    }

    /// A state that knows nothing.
    pub fn new() -> Self {
        GossipState::default()
    }

    /// Every known member's entry, ascending by id.
    pub fn members(&self) -> impl Iterator<Item = &MemberEntry> {
        self.members.values()
    }

    /// The entry of member `id`.
    pub fn member(&self, id: NodeId) -> Option<&MemberEntry> {
        self.members.get(&id)
    }

    /// The ring, if one is known.
    pub fn ring(&self) -> Option<&RingLayout> {
        self.ring.as_ref()
    }

    /// Takes `entry` if it is newer than the one held for its member;
    /// returns whether it was taken.
    pub fn merge_entry(&mut self, entry: MemberEntry) -> bool {
        match self.members.get(&entry.info.id) {
            Some(held) if held.stamp() >= entry.stamp() => false,
            _ => {
                self.members.insert(entry.info.id, entry);
                true
            }
        }
    }

    /// Takes `ring` if it is newer than the one held; returns whether it was taken.
    pub fn merge_ring(&mut self, ring: RingLayout) -> bool {
        match &self.ring {
            Some(held) if ring_stamp(held) >= ring_stamp(&ring) => false,
            _ => {
                self.ring = Some(ring);
                true
            }
        }
    }

    /// Joins `other` into `self`; returns whether anything changed.
    pub fn merge(&mut self, other: &GossipState) -> bool {
        let mut changed = false;
        for entry in other.members.values() {
            changed |= self.merge_entry(entry.clone());
        }
        if let Some(ring) = &other.ring {
            changed |= self.merge_ring(ring.clone());
        }
        changed
    }

    /// A hash of the whole state: equal states have equal hashes.
    pub fn hash(&self) -> u64 {
        hash_of(&self.digest())
    }

    /// The stamps of every entry and of the ring.
    pub fn digest(&self) -> Digest {
        Digest {
            members: self.members.iter().map(|(id, e)| (*id, e.stamp())).collect(),
            ring: self.ring.as_ref().map(ring_stamp),
        }
    }

    /// What to send a peer whose state has `theirs` as its digest, and what
    /// to ask of it.
    pub fn delta_for(&self, theirs: &Digest) -> Delta {
        let theirs_by_id: BTreeMap<NodeId, Stamp> = theirs.members.iter().copied().collect();
        let entries = self
            .members
            .values()
            .filter(|e| theirs_by_id.get(&e.info.id).is_none_or(|t| *t < e.stamp()))
            .cloned()
            .collect();
        let want = theirs
            .members
            .iter()
            .filter(|(id, t)| self.members.get(id).is_none_or(|e| e.stamp() < *t))
            .map(|(id, _)| *id)
            .collect();
        let mine = self.ring.as_ref().map(ring_stamp);
        Delta {
            entries,
            ring: if mine > theirs.ring { self.ring.clone() } else { None },
            want,
            want_ring: theirs.ring > mine,
        }
    }

    /// The entries of `ids` this state holds.
    pub fn entries(&self, ids: &[NodeId]) -> Vec<MemberEntry> {
        ids.iter().filter_map(|id| self.members.get(id).cloned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::Member;
    use crate::membership::MemberStatus;
    use crate::ring::Ring;
    use proptest::prelude::*;

    fn entry(id: u64, generation: u64, version: u64, addr: &str) -> MemberEntry {
        MemberEntry {
            info: MemberInfo {
                id: NodeId(id),
                addr: addr.to_owned(),
                client_addr: None,
                zone: None,
                capacity: 1,
                status: MemberStatus::Active,
            },
            generation,
            version,
            handoff: HandoffReport::default(),
        }
    }

    fn ring(epoch_bumps: u64, members: u64) -> RingLayout {
        let mut r =
            Ring::new(16, 2, (1..=members).map(|i| Member::new(NodeId(i), format!("n{i}"))).collect())
                .unwrap();
        for i in 0..epoch_bumps {
            r = r.with_member(Member::new(NodeId(100 + i), format!("x{i}"))).unwrap();
        }
        r.layout()
    }

    fn state(entries: &[MemberEntry], ring: Option<RingLayout>) -> GossipState {
        let mut s = GossipState::new();
        for e in entries {
            s.merge_entry(e.clone());
        }
        if let Some(r) = ring {
            s.merge_ring(r);
        }
        s
    }

    fn arb_state() -> impl Strategy<Value = GossipState> {
        let entries = proptest::collection::vec((1u64..6, 0u64..3, 0u64..4, 0u8..2), 0..8);
        let rings = proptest::option::of((0u64..3, 2u64..4));
        (entries, rings).prop_map(|(es, r)| {
            let es: Vec<MemberEntry> =
                es.into_iter().map(|(id, g, v, a)| entry(id, g, v, &format!("addr-{a}"))).collect();
            state(&es, r.map(|(bumps, m)| ring(bumps, m)))
        })
    }

    fn joined(a: &GossipState, b: &GossipState) -> GossipState {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    proptest! {
        #[test]
        fn merge_is_a_join(a in arb_state(), b in arb_state(), c in arb_state()) {
            prop_assert_eq!(joined(&a, &b), joined(&b, &a), "commutative");
            prop_assert_eq!(joined(&joined(&a, &b), &c), joined(&a, &joined(&b, &c)), "associative");
            prop_assert_eq!(joined(&a, &a), a.clone(), "idempotent");
            let ab = joined(&a, &b);
            prop_assert_eq!(joined(&ab, &a), ab.clone(), "absorbs what it joined");
        }

        /// One exchange of deltas (each side sends what the other's digest
        /// lacks, then what the other wanted) leaves both sides equal to
        /// their join, whatever they held.
        #[test]
        fn a_delta_exchange_ends_in_the_join(a in arb_state(), b in arb_state()) {
            let (mut x, mut y) = (a.clone(), b.clone());
            let delta = x.delta_for(&y.digest());
            for e in delta.entries { y.merge_entry(e); }
            if let Some(r) = delta.ring { y.merge_ring(r); }
            for e in y.entries(&delta.want) { x.merge_entry(e); }
            if delta.want_ring { if let Some(r) = y.ring().cloned() { x.merge_ring(r); } }
            prop_assert_eq!(&x, &joined(&a, &b));
            prop_assert_eq!(&y, &joined(&a, &b));
            prop_assert_eq!(x.hash(), y.hash());
        }
    }

    #[test]
    fn higher_stamps_win_and_equal_states_hash_equal() {
        let mut s = state(&[entry(1, 1, 0, "a")], Some(ring(0, 2)));
        assert!(!s.merge_entry(entry(1, 1, 0, "a")), "the same entry changes nothing");
        assert!(s.merge_entry(entry(1, 1, 1, "b")), "a newer version wins");
        assert!(!s.merge_entry(entry(1, 0, 9, "c")), "an older generation loses whatever its version");
        assert!(s.merge_ring(ring(1, 2)), "a later epoch wins");
        assert!(!s.merge_ring(ring(0, 3)), "an earlier epoch loses");
        let copy = state(&[entry(1, 1, 1, "b")], Some(ring(1, 2)));
        assert_eq!(s.hash(), copy.hash());
        assert_ne!(s.hash(), GossipState::new().hash());
    }

    #[test]
    fn the_digest_of_an_unchanged_state_says_nothing_to_send() {
        let s = state(&[entry(1, 1, 0, "a"), entry(2, 3, 1, "b")], Some(ring(0, 2)));
        let delta = s.delta_for(&s.digest());
        assert_eq!(delta, Delta::default());
    }
}
