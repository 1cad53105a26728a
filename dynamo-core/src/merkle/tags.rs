//! Key digests as an exchange sends them: each key of a differing leaf as
//! a 4-byte tag of the key, a 4-byte tag of its version and its event
//! count, all under the exchange's salt, instead of the key's bytes and
//! its 8-byte version.
//!
//! **Matching.** The receiver tags its own keys of the leaf under the
//! same salt and matches the two lists by key tag ([`diff_tags`]): keys
//! whose version tags differ, or that only one side holds, are sent or
//! asked for ([`Wanted`]), and the sender resolves what was asked for
//! against its own keys ([`resolve_wanted`]). Two keys of one leaf share a
//! key tag with probability 2^-32; the side that sees a shared tag (in
//! its own list or the peer's) treats the whole leaf as differing and
//! ships every key of it. Two versions of a key share a version tag with
//! probability 2^-32, afresh under every salt: that key is missed by one
//! exchange and found by a later one, whose salt differs.
//!
//! **Order.** A tag carries the event count of the key's state
//! ([`KeyDigest::events`]): of two differing states, the side whose state
//! has seen fewer events asks for the other's without sending its own.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{entry_of, leaf_key_hash, project, KeyDigest, LeafDigest, MerkleError, TreeShape};

/// One key of a leaf as an exchange names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyTag {
    /// The key's tag: its seeded hash projected to 32 bits under the salt.
    #[serde(with = "fixed32")]
    pub key: u32,
    /// The version's tag: the key's entry hash projected to 32 bits under
    /// the salt.
    #[serde(with = "fixed32")]
    pub version: u32,
    /// The event count of the key's state ([`KeyDigest::events`]).
    pub events: u64,
}

impl KeyTag {
    /// The tag of `digest` under `salt`.
    pub fn of(digest: &KeyDigest, salt: u64) -> KeyTag {
        let key_hash = leaf_key_hash(&digest.key);
        KeyTag {
            key: key_tag(key_hash, salt),
            version: project(entry_of(key_hash, digest.version), salt, 32) as u32,
            events: digest.events,
        }
    }
}

/// A key's tag under `salt`, from its seeded hash.
fn key_tag(key_hash: u64, salt: u64) -> u32 {
    project(key_hash, salt.rotate_left(32), 32) as u32
}

/// The tagged keys of one leaf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafTags {
    /// The leaf's index.
    pub leaf: u32,
    /// One tag per key the sender holds in the leaf, in increasing order
    /// of key tag (equal key tags side by side).
    pub keys: Vec<KeyTag>,
}

impl LeafTags {
    /// `leaf`'s digests tagged under `salt`.
    pub fn of(leaf: &LeafDigest, salt: u64) -> LeafTags {
        let mut keys: Vec<KeyTag> = leaf.keys.iter().map(|d| KeyTag::of(d, salt)).collect();
        keys.sort_unstable();
        LeafTags { leaf: leaf.leaf, keys }
    }
}

/// The tagged keys of the leaves an exchange found differing: a message
/// of the exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaggedLeaves {
    /// The sender's tree shape; the receiver refuses another.
    pub shape: TreeShape,
    /// The salt every tag was made under.
    pub salt: u64,
    /// The leaves, strictly increasing by index.
    pub leaves: Vec<LeafTags>,
}

impl TaggedLeaves {
    /// The digests of `leaves` tagged under `salt`.
    pub fn of(shape: TreeShape, salt: u64, leaves: &[LeafDigest]) -> TaggedLeaves {
        TaggedLeaves { shape, salt, leaves: leaves.iter().map(|l| LeafTags::of(l, salt)).collect() }
    }
}

impl TreeShape {
    /// Checks a peer's tagged leaves against this shape.
    ///
    /// # Errors
    /// [`MerkleError::ShapeMismatch`] if the message names another shape;
    /// [`MerkleError::IndexOutOfRange`] or [`MerkleError::UnsortedNodes`]
    /// unless its leaves are strictly increasing leaf indices;
    /// [`MerkleError::UnsortedKeys`] unless each leaf's tags are in
    /// increasing order of key tag.
    pub fn check_tagged(&self, msg: &TaggedLeaves) -> Result<(), MerkleError> {
        self.matches(msg.shape)?;
        self.check_indices(self.depth, msg.leaves.iter().map(|l| l.leaf))?;
        for leaf in &msg.leaves {
            if leaf.keys.windows(2).any(|w| w[0].key > w[1].key) {
                return Err(MerkleError::UnsortedKeys { leaf: leaf.leaf });
            }
        }
        Ok(())
    }
}

/// What the receiver of tagged leaves asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Wanted {
    /// The keys of `leaf` whose key tag is `tag` (one but for a shared tag).
    Key {
        /// The leaf the key was offered in.
        leaf: u32,
        /// Its key tag.
        #[serde(with = "fixed32")]
        tag: u32,
    },
    /// Every key of the leaf: a key tag was shared, so keys could not be
    /// told apart.
    Leaf(u32),
}

impl Wanted {
    /// The leaf this names a key or all keys of.
    pub fn leaf(&self) -> u32 {
        match *self {
            Wanted::Key { leaf, .. } | Wanted::Leaf(leaf) => leaf,
        }
    }
}

/// What one leaf's comparison found ([`diff_tags`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagDiff {
    /// Local keys whose states the peer needs.
    pub send: Vec<Bytes>,
    /// What to ask the peer for.
    pub want: Vec<Wanted>,
}

fn has_shared_key_tag(tags: &[KeyTag]) -> bool {
    tags.windows(2).any(|w| w[0].key == w[1].key)
}

/// Compares the local digests of a leaf with the peer's tags of it, made
/// under `salt`: which local states to send, which to ask for.
///
/// A key both hold at differing version tags is sent unless the peer's
/// state has seen more events, and asked for unless the local one has; a
/// key only one side holds goes to the other. If either list has a shared
/// key tag, every local key is sent and the whole leaf asked for.
pub fn diff_tags(mine: &LeafDigest, theirs: &LeafTags, salt: u64) -> TagDiff {
    let mut tagged: Vec<(KeyTag, &Bytes)> = mine.keys.iter().map(|d| (KeyTag::of(d, salt), &d.key)).collect();
    tagged.sort_unstable_by_key(|(t, _)| *t);
    let mut out = TagDiff::default();
    let shared = tagged.windows(2).any(|w| w[0].0.key == w[1].0.key);
    if shared || has_shared_key_tag(&theirs.keys) {
        out.send = tagged.into_iter().map(|(_, k)| k.clone()).collect();
        out.want.push(Wanted::Leaf(theirs.leaf));
        return out;
    }
    let want = |t: &KeyTag| Wanted::Key { leaf: theirs.leaf, tag: t.key };
    let (mut m, mut t) = (tagged.iter().peekable(), theirs.keys.iter().peekable());
    loop {
        match (m.peek(), t.peek()) {
            (Some((a, key)), Some(b)) if a.key == b.key => {
                if a.version != b.version {
                    if a.events >= b.events {
                        out.send.push((*key).clone());
                    }
                    if a.events <= b.events {
                        out.want.push(want(b));
                    }
                }
                m.next();
                t.next();
            }
            (Some((a, key)), Some(b)) if a.key < b.key => {
                out.send.push((*key).clone());
                m.next();
            }
            (_, Some(b)) => {
                out.want.push(want(b));
                t.next();
            }
            (Some((_, key)), None) => {
                out.send.push((*key).clone());
                m.next();
            }
            (None, None) => return out,
        }
    }
}

/// The local keys a peer asked for with `wanted`, given the digests this
/// node offered (`offered`, strictly increasing by leaf) under `salt`:
/// each key once, in the order asked.
///
/// # Errors
/// [`MerkleError::NotOffered`] for a leaf that was not offered.
pub fn resolve_wanted(
    offered: &[LeafDigest],
    wanted: &[Wanted],
    salt: u64,
) -> Result<Vec<Bytes>, MerkleError> {
    let mut keys = Vec::new();
    let mut seen = HashSet::new();
    // Each offered leaf's keys by tag, computed once per leaf asked about.
    let mut by_tag: HashMap<u32, HashMap<u32, Vec<&Bytes>>> = HashMap::new();
    for w in wanted {
        let leaf = w.leaf();
        let offer = offered
            .binary_search_by_key(&leaf, |l| l.leaf)
            .map(|i| &offered[i])
            .map_err(|_| MerkleError::NotOffered { leaf })?;
        let hits: Vec<&Bytes> = match *w {
            Wanted::Leaf(_) => offer.keys.iter().map(|d| &d.key).collect(),
            Wanted::Key { tag, .. } => {
                let tags = by_tag.entry(leaf).or_insert_with(|| {
                    let mut m: HashMap<u32, Vec<&Bytes>> = HashMap::new();
                    for d in &offer.keys {
                        m.entry(key_tag(leaf_key_hash(&d.key), salt)).or_default().push(&d.key);
                    }
                    m
                });
                tags.get(&tag).cloned().unwrap_or_default()
            }
        };
        for key in hits {
            if seen.insert(key.clone()) {
                keys.push(key.clone());
            }
        }
    }
    Ok(keys)
}

/// A `u32` as 4 fixed little-endian bytes (postcard would write a varint
/// of up to 5 bytes for a hash).
mod fixed32 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
        v.to_le_bytes().serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        <[u8; 4]>::deserialize(d).map(u32::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(k: &str, version: u64, events: u64) -> KeyDigest {
        KeyDigest::new(Bytes::copy_from_slice(k.as_bytes()), version).with_events(events)
    }

    fn leaf(keys: Vec<KeyDigest>) -> LeafDigest {
        let mut keys = keys;
        keys.sort();
        LeafDigest { leaf: 3, keys }
    }

    fn names(keys: &[Bytes]) -> Vec<String> {
        let mut v: Vec<String> = keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn only_what_differs_is_sent_or_asked_for_and_the_fewer_events_side_asks() {
        let salt = 42;
        let a = leaf(vec![
            digest("same", 1, 1),
            digest("mine-newer", 2, 5),
            digest("theirs-newer", 3, 1),
            digest("concurrent", 4, 2),
            digest("only-mine", 5, 1),
        ]);
        let b = leaf(vec![
            digest("same", 1, 1),
            digest("mine-newer", 20, 3),
            digest("theirs-newer", 30, 4),
            digest("concurrent", 40, 2),
            digest("only-theirs", 6, 1),
        ]);
        let diff = diff_tags(&a, &LeafTags::of(&b, salt), salt);
        assert_eq!(names(&diff.send), ["concurrent", "mine-newer", "only-mine"]);
        let asked = resolve_wanted(std::slice::from_ref(&b), &diff.want, salt).unwrap();
        assert_eq!(names(&asked), ["concurrent", "only-theirs", "theirs-newer"]);
        assert!(diff_tags(&a, &LeafTags::of(&a, salt), salt) == TagDiff::default(), "equal leaves");
    }

    #[test]
    fn a_shared_key_tag_sends_and_asks_for_the_whole_leaf() {
        let salt = 7;
        let a = leaf(vec![digest("x", 1, 1), digest("y", 2, 1)]);
        let mut theirs = LeafTags::of(&a, salt);
        theirs.keys[1].key = theirs.keys[0].key;
        let diff = diff_tags(&a, &theirs, salt);
        assert_eq!(names(&diff.send), ["x", "y"]);
        assert_eq!(diff.want, [Wanted::Leaf(3)]);
        assert_eq!(names(&resolve_wanted(&[a], &diff.want, salt).unwrap()), ["x", "y"]);
    }

    #[test]
    fn a_version_tag_collision_under_one_salt_is_not_one_under_another() {
        let (a, b) = (leaf(vec![digest("k", 1, 1)]), leaf(vec![digest("k", 2, 1)]));
        let found = (0..64u64).filter(|&salt| !diff_tags(&a, &LeafTags::of(&b, salt), salt).send.is_empty());
        assert_eq!(found.count(), 64);
    }

    #[test]
    fn asking_for_a_leaf_not_offered_is_refused() {
        let a = leaf(vec![digest("k", 1, 1)]);
        assert!(resolve_wanted(std::slice::from_ref(&a), &[Wanted::Leaf(4)], 1).is_err());
        assert!(resolve_wanted(std::slice::from_ref(&a), &[Wanted::Key { leaf: 4, tag: 0 }], 1).is_err());
        assert!(resolve_wanted(&[a], &[Wanted::Key { leaf: 3, tag: 0 }], 1).unwrap().is_empty());
    }

    #[test]
    fn tags_cost_about_nine_bytes_a_key_and_round_trip() {
        let keys: Vec<KeyDigest> = (0..100).map(|i| digest(&format!("key-{i:08}"), i, 2)).collect();
        let msg = TaggedLeaves::of(TreeShape::DEFAULT, 5, &[leaf(keys)]);
        let bytes = postcard::to_allocvec(&msg).unwrap();
        assert!(bytes.len() <= 100 * 9 + 24, "{} bytes", bytes.len());
        assert_eq!(postcard::from_bytes::<TaggedLeaves>(&bytes), Ok(msg.clone()));
        assert_eq!(TreeShape::DEFAULT.check_tagged(&msg), Ok(()));
        let mut unsorted = msg;
        unsorted.leaves[0].keys.reverse();
        assert_eq!(TreeShape::DEFAULT.check_tagged(&unsorted), Err(MerkleError::UnsortedKeys { leaf: 3 }));
        let wanted = vec![Wanted::Key { leaf: 900, tag: u32::MAX }, Wanted::Leaf(2)];
        let bytes = postcard::to_allocvec(&wanted).unwrap();
        assert!(bytes.len() <= 1 + 7 + 2, "{} bytes", bytes.len());
        assert_eq!(postcard::from_bytes::<Vec<Wanted>>(&bytes), Ok(wanted));
    }
}
