//! Per-partition Merkle trees for anti-entropy (Dynamo §4.7), in the form of
//! Riak's tictac trees (`kv_index_tictactree`, `leveled_tictac`).
//!
//! **Shape.** A [`MerkleTree`] covers one partition. Its [`TreeShape`] is
//! fixed: every inner node has `branching` children and the leaves sit
//! `depth` levels below the root, so there are `branching ^ depth` leaves
//! (level 0 is the root, level `depth` the leaves; node `i` of level `l` has
//! children `i * branching .. (i + 1) * branching` on level `l + 1`). The
//! default is 1024 leaves under 32 branches of 32 ([`TreeShape::DEFAULT`]).
//!
//! **Placement.** A key belongs to the leaf named by the top bits of
//! XXH3-64 of the key seeded with a constant of this module, not the ring's
//! seed 0: the ring places a key by the top bits of
//! [`key_hash`](crate::ring::key_hash), and every key of a partition shares
//! those, so the leaf must come from an independent hash or all of a
//! partition's keys would pile into a few leaves.
//!
//! **Hashes.** A key's entry hash mixes the key with its *version*, a `u64`
//! digest of the key's stored state that the caller supplies (normally
//! [`state_version`]); see [`entry_hash`]. A leaf's hash is the XOR of its
//! entries' hashes and an inner node's hash is the XOR of its children's,
//! as in tictac trees. XOR makes a write O(depth): the difference between
//! the old and new entry hash is XORed into the leaf and every node above
//! it, without rereading the leaf's keys ([`MerkleTree::update`]), and a
//! tree is independent of the order of the writes that built it. Because
//! the shape is fixed and known to both sides, a node's position already
//! carries the structure; XOR can only hide a difference when two
//! differences below one node are equal 64-bit values (probability about
//! 2^-64 per comparison for non-adversarial keys).
//!
//! **Exchange.** Two replicas of a partition compare their trees by
//! messages, each step a pure function of the message received and the
//! local tree ([`MerkleTree::respond`]): one side opens with its root
//! ([`MerkleTree::root_hashes`]); the other answers with its hashes of the
//! children of every node that differs, and so on down, alternating sides,
//! until the side that receives leaf hashes knows which leaves differ. It
//! then sends the [`KeyDigest`]s of those leaves ([`LeafDigests`], or
//! compactly as [`TaggedLeaves`]); the other side finds the keys whose
//! versions differ or that only one side holds ([`diff_keys`],
//! [`diff_tags`]), and the differing states are shipped and merged. Below
//! the root, hashes may travel as salted 32-bit (16-bit for leaves)
//! projections ([`NodeHashes::projected`]). Node hashes crossing the wire grow with the number of
//! differing leaves times the depth (at most `1 + b + k * b * (d - 1)` for
//! `k >= 1` differing leaves, branching `b`, depth `d`), not with the number
//! of keys stored.
//!
//! **Validation.** Every message carries the sender's shape; a message of
//! another shape, of a level deeper than the tree, with node or leaf
//! indices out of range or out of order, or with a key filed under a leaf
//! it does not belong to is refused with a [`MerkleError`]
//! ([`TreeShape::check_nodes`], [`TreeShape::check_digests`]), never a
//! panic. Which partition a message is about, and whether this node
//! replicates it, is for the envelope the caller puts around these types.
//!
//! The leaf seed and the entry-hash construction are part of the protocol:
//! nodes that disagree on them never agree on a root, so changing them needs
//! a protocol version.
//!
//! ```
//! use dynamo_core::merkle::{diff_keys, KeyDigest, MerkleTree, Step, TreeShape};
//!
//! let shape = TreeShape::DEFAULT;
//! let a = MerkleTree::from_entries(shape, [(&b"apple"[..], 1), (b"pear", 7)]);
//! let mut b = MerkleTree::from_entries(shape, [(&b"apple"[..], 1)]);
//! // `a` opens with its root; the sides answer each other until one knows the leaves.
//! let leaves = {
//!     let mut msg = a.root_hashes();
//!     let mut turn = [&b, &a].into_iter().cycle();
//!     loop {
//!         match turn.next().unwrap().respond(&msg)? {
//!             Step::InSync => break vec![],
//!             Step::Leaves(leaves) => break leaves,
//!             Step::Descend(next) => msg = next,
//!         }
//!     }
//! };
//! assert_eq!(leaves, [shape.leaf_of(b"pear")]);
//! // Then the key digests of those leaves say which keys to ship.
//! let mine = [KeyDigest::new(&b"pear"[..], 7)];
//! assert_eq!(diff_keys(&mine, &[])?.only_mine, [&b"pear"[..]]);
//! // Storing the shipped key updates b's tree in O(depth).
//! b.update(b"pear", None, Some(7));
//! assert_eq!(a.root(), b.root());
//! # Ok::<(), dynamo_core::merkle::MerkleError>(())
//! ```

#![warn(missing_docs)]

use std::fmt;

mod tags;

pub use tags::{diff_tags, resolve_wanted, KeyTag, LeafTags, TagDiff, TaggedLeaves, Wanted};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::causality::SiblingSet;

/// The branching factor of [`TreeShape::DEFAULT`].
pub const DEFAULT_BRANCHING: u32 = 32;

/// The depth of [`TreeShape::DEFAULT`] (levels below the root).
pub const DEFAULT_DEPTH: u32 = 2;

/// The most leaves a tree may have (2^20, 8 MiB of leaf hashes).
pub const MAX_LEAVES: u32 = 1 << 20;

/// Seeds the key hash that picks a key's leaf (ASCII "aae_leaf"); the
/// ring hashes with seed 0.
const LEAF_SEED: u64 = 0x6161_655f_6c65_6166;

/// Why a shape was refused, or a message from a peer was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// The branching factor is not a power of two of at least 2, the depth
    /// is 0, or the tree would have more than [`MAX_LEAVES`] leaves.
    #[error(
        "invalid tree shape: branching {branching}, depth {depth} (branching must be a power of two \
         >= 2, depth >= 1, branching^depth <= {MAX_LEAVES})"
    )]
    InvalidShape {
        /// The branching factor asked for.
        branching: u32,
        /// The depth asked for.
        depth: u32,
    },
    /// The message was made for a tree of another shape.
    #[error("tree shape mismatch: ours is {ours}, the message's is {theirs}")]
    ShapeMismatch {
        /// This node's shape.
        ours: TreeShape,
        /// The shape the message names.
        theirs: TreeShape,
    },
    /// The message names a level below the leaves.
    #[error("level {level} is deeper than the tree (depth {depth})")]
    LevelOutOfRange {
        /// The level named.
        level: u32,
        /// The tree's depth (the leaves' level).
        depth: u32,
    },
    /// A node index is not on its level (a leaf index is a node of the
    /// leaves' level).
    #[error("node {index} is out of range on level {level}, which has {nodes} nodes")]
    IndexOutOfRange {
        /// The level of the node.
        level: u32,
        /// The index given.
        index: u32,
        /// How many nodes the level has.
        nodes: u32,
    },
    /// Node or leaf indices are not strictly increasing (out of order or
    /// repeated).
    #[error("node indices on level {level} are not strictly increasing")]
    UnsortedNodes {
        /// The level of the nodes.
        level: u32,
    },
    /// A leaf's key digests are not strictly increasing by key (out of
    /// order or a key repeated).
    #[error("key digests of leaf {leaf} are not strictly increasing by key")]
    UnsortedKeys {
        /// The leaf whose keys are out of order.
        leaf: u32,
    },
    /// A list of key digests given to [`diff_keys`] is not strictly
    /// increasing by key.
    #[error("key digests are not strictly increasing by key")]
    UnsortedDigests,
    /// A node-hash message whose index runs do not account for exactly
    /// its hashes.
    #[error("malformed node hashes: {runs} index runs for {bytes} bytes of hashes")]
    MalformedHashes {
        /// How many runs the message had.
        runs: usize,
        /// How many bytes of hashes it had.
        bytes: usize,
    },
    /// A peer asked for a key or leaf this node did not offer it.
    #[error("leaf {leaf} was not offered in this exchange")]
    NotOffered {
        /// The leaf named.
        leaf: u32,
    },
    /// A key was filed under a leaf other than the one it hashes to.
    #[error("a key of {key_len} bytes was sent for leaf {leaf} but belongs to leaf {expected}")]
    KeyInWrongLeaf {
        /// The leaf the key was filed under.
        leaf: u32,
        /// The leaf the key belongs to.
        expected: u32,
        /// The key's length (the key itself may be long or binary).
        key_len: usize,
    },
}

/// The fixed shape of a tree, which both sides of an exchange must share:
/// `branching` children per inner node and `depth` levels below the root,
/// so `branching ^ depth` leaves.
///
/// Always valid: [`TreeShape::new`] checks the numbers and deserializing
/// checks them again, so a peer cannot make a node build an absurd tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawShape")]
pub struct TreeShape {
    branching: u32,
    depth: u32,
}

/// A shape as decoded, before [`TreeShape::new`] checks it.
#[derive(Deserialize)]
struct RawShape {
    branching: u32,
    depth: u32,
}

impl TryFrom<RawShape> for TreeShape {
    type Error = MerkleError;

    fn try_from(raw: RawShape) -> Result<Self, MerkleError> {
        TreeShape::new(raw.branching, raw.depth)
    }
}

impl Default for TreeShape {
    fn default() -> Self {
        TreeShape::DEFAULT
    }
}

impl fmt::Display for TreeShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} leaves ({}^{})", self.leaves(), self.branching, self.depth)
    }
}

impl TreeShape {
    /// 1024 leaves as 32 branches of 32 leaves: three levels (root, 32
    /// branches, 1024 leaves), so an exchange takes three messages of node
    /// hashes; one differing key costs 65 node hashes (1 + 32 + 32); a
    /// tree is 8.3 KiB of hashes. A partition of 1M keys has ~1000 keys a
    /// leaf.
    pub const DEFAULT: TreeShape = TreeShape { branching: DEFAULT_BRANCHING, depth: DEFAULT_DEPTH };

    /// The shape with `branching` children per inner node and `depth`
    /// levels below the root.
    ///
    /// # Errors
    /// [`MerkleError::InvalidShape`] unless `branching` is a power of two of
    /// at least 2, `depth` is at least 1 and `branching ^ depth` is at most
    /// [`MAX_LEAVES`].
    pub fn new(branching: u32, depth: u32) -> Result<TreeShape, MerkleError> {
        let bits = branching.trailing_zeros();
        let valid = branching.is_power_of_two()
            && branching >= 2
            && depth >= 1
            && u64::from(bits) * u64::from(depth) <= u64::from(MAX_LEAVES.trailing_zeros());
        if valid {
            Ok(TreeShape { branching, depth })
        } else {
            Err(MerkleError::InvalidShape { branching, depth })
        }
    }

    /// Children per inner node.
    pub fn branching(&self) -> u32 {
        self.branching
    }

    /// Levels below the root; the leaves are on level `depth`.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// `log2(branching)`.
    fn bits(&self) -> u32 {
        self.branching.trailing_zeros()
    }

    /// How many leaves the tree has: `branching ^ depth`.
    pub fn leaves(&self) -> u32 {
        1 << (self.bits() * self.depth)
    }

    /// How many nodes `level` has (`branching ^ level`), or `None` below the
    /// leaves.
    pub fn nodes_at(&self, level: u32) -> Option<u32> {
        (level <= self.depth).then(|| 1 << (self.bits() * level))
    }

    /// The leaf `key` belongs to, from `0` to `leaves() - 1`.
    ///
    /// Independent of the key's partition: it uses a seeded hash, not the
    /// ring's [`key_hash`](crate::ring::key_hash).
    pub fn leaf_of(&self, key: &[u8]) -> u32 {
        self.leaf_of_hash(leaf_key_hash(key))
    }

    fn leaf_of_hash(&self, hash: u64) -> u32 {
        (hash >> (64 - self.bits() * self.depth)) as u32
    }

    fn matches(&self, theirs: TreeShape) -> Result<(), MerkleError> {
        if theirs == *self {
            Ok(())
        } else {
            Err(MerkleError::ShapeMismatch { ours: *self, theirs })
        }
    }

    /// Checks that `indices` are strictly increasing nodes of `level`.
    fn check_indices(&self, level: u32, indices: impl Iterator<Item = u32>) -> Result<(), MerkleError> {
        let nodes = self.nodes_at(level).ok_or(MerkleError::LevelOutOfRange { level, depth: self.depth })?;
        let mut last = None;
        for index in indices {
            if index >= nodes {
                return Err(MerkleError::IndexOutOfRange { level, index, nodes });
            }
            if last.is_some_and(|l| l >= index) {
                return Err(MerkleError::UnsortedNodes { level });
            }
            last = Some(index);
        }
        Ok(())
    }

    /// Checks a peer's node hashes against this shape.
    ///
    /// # Errors
    /// [`MerkleError::ShapeMismatch`] if the message names another shape;
    /// [`MerkleError::LevelOutOfRange`] if its level is below the leaves;
    /// [`MerkleError::IndexOutOfRange`] or [`MerkleError::UnsortedNodes`]
    /// unless its indices are strictly increasing nodes of that level.
    pub fn check_nodes(&self, msg: &NodeHashes) -> Result<(), MerkleError> {
        self.matches(msg.shape)?;
        self.check_indices(msg.level, msg.nodes.iter().map(|&(i, _)| i))
    }

    /// Checks a peer's leaf digests against this shape.
    ///
    /// Key lengths and the message's size are the caller's limits to
    /// enforce; this checks the tree's own rules.
    ///
    /// # Errors
    /// [`MerkleError::ShapeMismatch`] if the message names another shape;
    /// [`MerkleError::IndexOutOfRange`] or [`MerkleError::UnsortedNodes`]
    /// unless its leaves are strictly increasing leaf indices;
    /// [`MerkleError::UnsortedKeys`] unless each leaf's keys are strictly
    /// increasing; [`MerkleError::KeyInWrongLeaf`] if a key is filed under
    /// a leaf it does not belong to.
    pub fn check_digests(&self, msg: &LeafDigests) -> Result<(), MerkleError> {
        self.matches(msg.shape)?;
        self.check_indices(self.depth, msg.leaves.iter().map(|l| l.leaf))?;
        for leaf in &msg.leaves {
            self.check_leaf_keys(leaf.leaf, &leaf.keys)?;
        }
        Ok(())
    }

    fn check_leaf_keys(&self, leaf: u32, keys: &[KeyDigest]) -> Result<(), MerkleError> {
        if keys.windows(2).any(|w| w[0].key >= w[1].key) {
            return Err(MerkleError::UnsortedKeys { leaf });
        }
        for k in keys {
            let expected = self.leaf_of(&k.key);
            if expected != leaf {
                return Err(MerkleError::KeyInWrongLeaf { leaf, expected, key_len: k.key.len() });
            }
        }
        Ok(())
    }
}

/// The seeded hash a key is placed and entered by.
fn leaf_key_hash(key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, LEAF_SEED)
}

/// A key's entry hash: XXH3-64 of the key's seeded hash and `version`
/// (both little-endian), the key's contribution to its leaf.
fn entry_of(key_hash: u64, version: u64) -> u64 {
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&key_hash.to_le_bytes());
    buf[8..].copy_from_slice(&version.to_le_bytes());
    xxh3_64(&buf)
}

/// The hash a key at `version` contributes to its leaf: XXH3-64 of the
/// 16 bytes `leaf_hash(key) ++ version` (little-endian), where `leaf_hash`
/// is the seeded key hash that also picks the key's leaf.
///
/// It depends on both the key and the version, so two keys at equal
/// versions, or one key at two versions, contribute different hashes.
pub fn entry_hash(key: &[u8], version: u64) -> u64 {
    entry_of(leaf_key_hash(key), version)
}

/// The version of a key's state that its tree entry records: XXH3-64 of
/// the state's [`encode`](SiblingSet::encode)ing.
///
/// A [`SiblingSet`] is canonical, so equal states have equal versions
/// whatever the order of the merges and writes that produced them; unequal
/// states have different versions but for a 2^-64 chance. Versions are
/// digests, not orders: two versions tell only whether states differ.
/// Hash the decoded state, not the stored bytes, which an older format may
/// have written. Nodes that encode states differently (during an upgrade
/// of the encoding) see spurious differences until they agree.
pub fn state_version(state: &SiblingSet) -> u64 {
    xxh3_64(&state.encode())
}

/// One partition's tree: the XOR hashes of every node, level by level.
///
/// Keys and versions are not kept: the tree is `O(leaves)` memory whatever
/// the number of keys. The caller keeps the tree in step with its store by
/// calling [`update`](MerkleTree::update) on every change of a key's state,
/// or rebuilds it from a scan with [`from_entries`](MerkleTree::from_entries).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerkleTree {
    shape: TreeShape,
    /// `levels[l]` holds the `branching ^ l` hashes of level `l`.
    levels: Vec<Vec<u64>>,
}

/// What to do after comparing a peer's node hashes with the local tree
/// ([`MerkleTree::respond`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Every node the peer sent matches: nothing under them differs.
    InSync,
    /// Send these hashes back: the local hashes of the children of every
    /// node that differs.
    Descend(NodeHashes),
    /// These leaves differ (strictly increasing): exchange their key
    /// digests ([`LeafDigests`]).
    Leaves(Vec<u32>),
}

impl MerkleTree {
    /// The tree of an empty partition: every hash 0.
    pub fn new(shape: TreeShape) -> MerkleTree {
        let levels = (0..=shape.depth).map(|l| vec![0; shape.nodes_at(l).unwrap_or(0) as usize]).collect();
        MerkleTree { shape, levels }
    }

    /// The tree of a partition holding `entries`, pairs of a key and its
    /// version, each key once (a key given twice cancels out), in any order.
    ///
    /// Costs one hash per entry plus `O(leaves)`: leaves first, then each
    /// level from the one below.
    pub fn from_entries<K: AsRef<[u8]>>(
        shape: TreeShape,
        entries: impl IntoIterator<Item = (K, u64)>,
    ) -> MerkleTree {
        let mut tree = MerkleTree::new(shape);
        let depth = shape.depth as usize;
        for (key, version) in entries {
            let h = leaf_key_hash(key.as_ref());
            tree.levels[depth][shape.leaf_of_hash(h) as usize] ^= entry_of(h, version);
        }
        let b = shape.branching as usize;
        for l in (0..depth).rev() {
            let (upper, lower) = tree.levels.split_at_mut(l + 1);
            for (node, children) in upper[l].iter_mut().zip(lower[0].chunks_exact(b)) {
                *node = children.iter().fold(0, |acc, h| acc ^ h);
            }
        }
        tree
    }

    /// The tree's shape.
    pub fn shape(&self) -> TreeShape {
        self.shape
    }

    /// The root hash: the XOR of every entry hash. Equal roots mean (but for
    /// a 2^-64 chance) equal partitions; an empty partition's root is 0.
    pub fn root(&self) -> u64 {
        self.levels[0][0]
    }

    /// The hashes of `level`, or `None` below the leaves.
    pub fn level(&self, level: u32) -> Option<&[u64]> {
        self.levels.get(level as usize).map(Vec::as_slice)
    }

    /// The hash of node `index` of `level`, or `None` if there is no such node.
    pub fn node(&self, level: u32, index: u32) -> Option<u64> {
        self.level(level)?.get(index as usize).copied()
    }

    /// The hash of `leaf`, or `None` if there is no such leaf.
    pub fn leaf(&self, leaf: u32) -> Option<u64> {
        self.node(self.shape.depth, leaf)
    }

    /// Records that `key`'s version went from `old` to `new`, `None` meaning
    /// absent: `(None, Some(v))` adds a key, `(Some(v), None)` removes it.
    ///
    /// `O(depth)`: XORs the difference of the entry hashes into the key's
    /// leaf and every node above it; the leaf's other keys are not read.
    /// `old` must be what the tree last recorded for `key`; the update is
    /// its own inverse (`update(k, new, old)` undoes `update(k, old, new)`).
    pub fn update(&mut self, key: &[u8], old: Option<u64>, new: Option<u64>) {
        if old == new {
            return;
        }
        let h = leaf_key_hash(key);
        let delta = old.map_or(0, |v| entry_of(h, v)) ^ new.map_or(0, |v| entry_of(h, v));
        self.xor_path(self.shape.leaf_of_hash(h), delta);
    }

    /// XORs `delta` into `leaf` and every node above it.
    fn xor_path(&mut self, leaf: u32, delta: u64) {
        let bits = self.shape.bits();
        let mut index = leaf as usize;
        for level in self.levels.iter_mut().rev() {
            level[index] ^= delta;
            index >>= bits;
        }
    }

    /// Sets `leaf` from a scan of its keys (`entries`: the leaf's
    /// `(key, version)` digests, in any order) and fixes the nodes above
    /// it; returns whether the leaf's hash changed.
    ///
    /// A repair for a tree that drifted from its store (an update lost to a
    /// crash): the caller scans a leaf anyway to send its digests, and can
    /// check its own tree with the same scan. `O(entries + depth)`.
    ///
    /// # Errors
    /// [`MerkleError::IndexOutOfRange`] if there is no such leaf;
    /// [`MerkleError::KeyInWrongLeaf`] if a key belongs to another leaf
    /// (nothing is changed then).
    pub fn repair_leaf(&mut self, leaf: u32, entries: &[KeyDigest]) -> Result<bool, MerkleError> {
        let depth = self.shape.depth;
        self.shape.check_indices(depth, std::iter::once(leaf))?;
        let mut hash = 0;
        for e in entries {
            let h = leaf_key_hash(&e.key);
            let expected = self.shape.leaf_of_hash(h);
            if expected != leaf {
                return Err(MerkleError::KeyInWrongLeaf { leaf, expected, key_len: e.key.len() });
            }
            hash ^= entry_of(h, e.version);
        }
        let delta = self.levels[depth as usize][leaf as usize] ^ hash;
        self.xor_path(leaf, delta);
        Ok(delta != 0)
    }

    /// The opening message of an exchange: the root's hash (level 0).
    pub fn root_hashes(&self) -> NodeHashes {
        NodeHashes { shape: self.shape, level: 0, salt: None, nodes: vec![(0, self.root())] }
    }

    /// The hashes of nodes `indices` of `level`.
    ///
    /// # Errors
    /// [`MerkleError::LevelOutOfRange`], [`MerkleError::IndexOutOfRange`] or
    /// [`MerkleError::UnsortedNodes`] unless `indices` are strictly
    /// increasing nodes of `level`.
    pub fn node_hashes(&self, level: u32, indices: &[u32]) -> Result<NodeHashes, MerkleError> {
        self.shape.check_indices(level, indices.iter().copied())?;
        let hashes = &self.levels[level as usize];
        let nodes = indices.iter().map(|&i| (i, hashes[i as usize])).collect();
        Ok(NodeHashes { shape: self.shape, level, salt: None, nodes })
    }

    /// The hashes of every child of nodes `parents` of `level`: nodes of
    /// level `level + 1`, `branching` per parent.
    ///
    /// # Errors
    /// [`MerkleError::LevelOutOfRange`] if `level` is the leaves' level or
    /// below; [`MerkleError::IndexOutOfRange`] or
    /// [`MerkleError::UnsortedNodes`] unless `parents` are strictly
    /// increasing nodes of `level`.
    pub fn children_hashes(&self, level: u32, parents: &[u32]) -> Result<NodeHashes, MerkleError> {
        if level >= self.shape.depth {
            return Err(MerkleError::LevelOutOfRange {
                level: level.saturating_add(1),
                depth: self.shape.depth,
            });
        }
        self.shape.check_indices(level, parents.iter().copied())?;
        let b = self.shape.branching;
        let below = &self.levels[level as usize + 1];
        let nodes =
            parents.iter().flat_map(|&p| (p * b..(p + 1) * b).map(|c| (c, below[c as usize]))).collect();
        Ok(NodeHashes { shape: self.shape, level: level + 1, salt: None, nodes })
    }

    /// The nodes of a peer's message whose hashes differ from the local
    /// ones, strictly increasing.
    ///
    /// # Errors
    /// As [`TreeShape::check_nodes`]: the message is refused if its shape,
    /// level or indices are wrong.
    pub fn differing(&self, theirs: &NodeHashes) -> Result<Vec<u32>, MerkleError> {
        self.shape.check_nodes(theirs)?;
        let mine = &self.levels[theirs.level as usize];
        let mine_as_sent = |h: u64| theirs.salt.map_or(h, |salt| project(h, salt, theirs.bits()));
        Ok(theirs
            .nodes
            .iter()
            .filter(|&&(i, h)| mine_as_sent(mine[i as usize]) != h)
            .map(|&(i, _)| i)
            .collect())
    }

    /// One step of the exchange: compares a peer's node hashes with the
    /// local tree and says what to do next.
    ///
    /// [`Step::InSync`] if nothing differs; at the leaves,
    /// [`Step::Leaves`] with the differing leaves; above them,
    /// [`Step::Descend`] with the local hashes of the differing nodes'
    /// children, to send to the peer, who calls `respond` in turn.
    ///
    /// # Errors
    /// As [`TreeShape::check_nodes`]: the message is refused if its shape,
    /// level or indices are wrong.
    pub fn respond(&self, theirs: &NodeHashes) -> Result<Step, MerkleError> {
        self.respond_at(theirs, None)
    }

    /// [`respond`](Self::respond), the children's hashes sent
    /// [projected](NodeHashes::projected) under `salt` when given.
    ///
    /// # Errors
    /// As [`respond`](Self::respond).
    pub fn respond_at(&self, theirs: &NodeHashes, salt: Option<u64>) -> Result<Step, MerkleError> {
        let differing = self.differing(theirs)?;
        Ok(if differing.is_empty() {
            Step::InSync
        } else if theirs.level == self.shape.depth {
            Step::Leaves(differing)
        } else {
            let children = self.children_hashes(theirs.level, &differing)?;
            Step::Descend(match salt {
                Some(salt) => children.projected(salt),
                None => children,
            })
        })
    }
}

/// Hashes of some nodes of one level of the sender's tree: a message of
/// the exchange.
///
/// On the wire the indices go as runs of consecutive nodes (a parent's
/// children are one run) and the hashes as 8 fixed bytes each, about 8
/// bytes a node instead of about 11 as varint pairs; decoding refuses runs
/// that do not account for exactly the hashes sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "WireNodeHashes", try_from = "WireNodeHashes")]
pub struct NodeHashes {
    /// The sender's tree shape; the receiver refuses another.
    pub shape: TreeShape,
    /// The level of the nodes: 0 is the root, `shape.depth()` the leaves.
    pub level: u32,
    /// `None`: full 64-bit hashes. `Some(salt)`: each hash is its
    /// projection under `salt` ([`projected`](Self::projected)), 32 bits
    /// on inner levels and 16 on the leaves' level, and the receiver
    /// projects its own hashes likewise to compare. Two differing nodes
    /// then look equal with probability 2^-32 (2^-16 for leaves), afresh
    /// for every salt, so an exchange with a new salt, or at full width,
    /// finds what one missed.
    pub salt: Option<u64>,
    /// `(index on the level, hash)`, strictly increasing by index.
    pub nodes: Vec<(u32, u64)>,
}

/// A hash's projection under `salt` to its top `bits` bits: the
/// splitmix64 finalizer (a bijection) of `hash ^ salt`, so two differing
/// hashes project equal with probability 2^-bits for a salt drawn
/// independently of them.
fn project(hash: u64, salt: u64, bits: u32) -> u64 {
    let mut z = hash ^ salt;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    z >> (64 - bits)
}

impl NodeHashes {
    /// These hashes as their projections under `salt` ([`salt`](Self::salt)):
    /// 32 bits each on inner levels, 16 on the leaves' level.
    pub fn projected(self, salt: u64) -> NodeHashes {
        let msg = NodeHashes { salt: Some(salt), ..self };
        let bits = msg.bits();
        let nodes = msg.nodes.iter().map(|&(i, h)| (i, project(h, salt, bits))).collect();
        NodeHashes { nodes, ..msg }
    }

    /// How many bits each hash of this message keeps.
    fn bits(&self) -> u32 {
        match self.salt {
            None => 64,
            Some(_) if self.level >= self.shape.depth => 16,
            Some(_) => 32,
        }
    }

    /// Bytes a hash of this message takes on the wire.
    fn width(&self) -> usize {
        self.bits() as usize / 8
    }
}

/// [`NodeHashes`] as sent: `(first index, count)` runs and the hashes
/// packed little-endian, 8, 4 or 2 bytes each, in index order.
#[derive(Serialize, Deserialize)]
struct WireNodeHashes {
    shape: TreeShape,
    level: u32,
    salt: Option<u64>,
    runs: Vec<(u32, u32)>,
    hashes: Bytes,
}

impl From<NodeHashes> for WireNodeHashes {
    fn from(msg: NodeHashes) -> WireNodeHashes {
        let mut runs: Vec<(u32, u32)> = Vec::new();
        let width = msg.width();
        let mut hashes = Vec::with_capacity(msg.nodes.len() * width);
        for &(index, hash) in &msg.nodes {
            match runs.last_mut() {
                Some((first, count)) if first.checked_add(*count) == Some(index) => *count += 1,
                _ => runs.push((index, 1)),
            }
            hashes.extend_from_slice(&hash.to_le_bytes()[..width]);
        }
        WireNodeHashes {
            shape: msg.shape,
            level: msg.level,
            salt: msg.salt,
            runs,
            hashes: Bytes::from(hashes),
        }
    }
}

impl TryFrom<WireNodeHashes> for NodeHashes {
    type Error = MerkleError;

    /// Refuses runs whose counts do not add up to the hashes sent, so
    /// nothing is allocated for nodes the message does not carry.
    fn try_from(wire: WireNodeHashes) -> Result<NodeHashes, MerkleError> {
        let bad = MerkleError::MalformedHashes { runs: wire.runs.len(), bytes: wire.hashes.len() };
        let width =
            NodeHashes { shape: wire.shape, level: wire.level, salt: wire.salt, nodes: Vec::new() }.width();
        let total = wire.runs.iter().try_fold(0usize, |acc, &(_, count)| acc.checked_add(count as usize));
        if !wire.hashes.len().is_multiple_of(width) || total != Some(wire.hashes.len() / width) {
            return Err(bad);
        }
        let mut nodes = Vec::with_capacity(wire.hashes.len() / width);
        let mut chunks = wire.hashes.chunks_exact(width);
        for &(first, count) in &wire.runs {
            for offset in 0..count {
                let index = first.checked_add(offset).ok_or_else(|| bad.clone())?;
                let chunk = chunks.next().ok_or_else(|| bad.clone())?;
                let mut raw = [0u8; 8];
                raw[..width].copy_from_slice(chunk);
                nodes.push((index, u64::from_le_bytes(raw)));
            }
        }
        Ok(NodeHashes { shape: wire.shape, level: wire.level, salt: wire.salt, nodes })
    }
}

/// A key and the version of its state on the sender.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyDigest {
    /// The key as the client named it (without the partition prefix of the
    /// store's data table).
    pub key: Bytes,
    /// The version of the key's state ([`state_version`]).
    pub version: u64,
    /// How many events (dots) the state's causal context has seen
    /// ([`CausalContext::events`](crate::causality::CausalContext::events)),
    /// or 0 when not given: an order hint, not part of the tree's hashes.
    /// A state that causally succeeds another has seen more events, so
    /// the side with fewer need not ship its state for the other to merge.
    pub events: u64,
}

impl KeyDigest {
    /// The digest of `key` at `version`.
    pub fn new(key: impl Into<Bytes>, version: u64) -> KeyDigest {
        KeyDigest { key: key.into(), version, events: 0 }
    }

    /// The digest with the state's event count as its order hint.
    pub fn with_events(self, events: u64) -> KeyDigest {
        KeyDigest { events, ..self }
    }

    /// The hash this key contributes to its leaf ([`entry_hash`]).
    pub fn entry_hash(&self) -> u64 {
        entry_hash(&self.key, self.version)
    }
}

/// The key digests of one leaf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafDigest {
    /// The leaf's index.
    pub leaf: u32,
    /// Every key the sender holds in the leaf, strictly increasing by key.
    pub keys: Vec<KeyDigest>,
}

impl LeafDigest {
    /// The leaf hash these keys make: the XOR of their entry hashes. Equal
    /// to the sender's leaf hash when its tree matches its store.
    pub fn hash(&self) -> u64 {
        self.keys.iter().fold(0, |acc, k| acc ^ k.entry_hash())
    }
}

/// The key digests of the leaves an exchange found differing: a message
/// of the exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafDigests {
    /// The sender's tree shape; the receiver refuses another.
    pub shape: TreeShape,
    /// The leaves, strictly increasing by index.
    pub leaves: Vec<LeafDigest>,
}

/// Which keys of a leaf differ between two replicas ([`diff_keys`]); each
/// list strictly increasing.
///
/// Versions are digests, not orders: for a key both sides hold, the
/// states differ and both must be shipped and merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyDiff {
    /// Keys both sides hold at different versions, neither side's state
    /// having seen more events (concurrent, or no hint given).
    pub differ: Vec<Bytes>,
    /// Keys both sides hold at different versions, the local state having
    /// seen more events: it may succeed the peer's, which then need not
    /// be fetched.
    pub mine_newer: Vec<Bytes>,
    /// Keys both sides hold at different versions, the peer's state having
    /// seen more events: the local one need not be sent.
    pub theirs_newer: Vec<Bytes>,
    /// Keys only the local side holds.
    pub only_mine: Vec<Bytes>,
    /// Keys only the peer holds.
    pub only_theirs: Vec<Bytes>,
}

impl KeyDiff {
    /// Whether the two sides agree on every key.
    pub fn is_empty(&self) -> bool {
        self.differ.is_empty()
            && self.mine_newer.is_empty()
            && self.theirs_newer.is_empty()
            && self.only_mine.is_empty()
            && self.only_theirs.is_empty()
    }

    /// Keys whose local state the peer needs: `differ`, `mine_newer` and
    /// `only_mine`.
    pub fn to_send(&self) -> impl Iterator<Item = &Bytes> {
        self.differ.iter().chain(&self.mine_newer).chain(&self.only_mine)
    }

    /// Keys whose state the local side needs from the peer: `differ`,
    /// `theirs_newer` and `only_theirs`.
    pub fn to_fetch(&self) -> impl Iterator<Item = &Bytes> {
        self.differ.iter().chain(&self.theirs_newer).chain(&self.only_theirs)
    }
}

/// Compares two lists of key digests (one leaf, or any key range), each
/// strictly increasing by key; `O(mine + theirs)`.
///
/// # Errors
/// [`MerkleError::UnsortedDigests`] if either list is not strictly
/// increasing by key.
pub fn diff_keys(mine: &[KeyDigest], theirs: &[KeyDigest]) -> Result<KeyDiff, MerkleError> {
    let sorted = |d: &[KeyDigest]| d.windows(2).all(|w| w[0].key < w[1].key);
    if !sorted(mine) || !sorted(theirs) {
        return Err(MerkleError::UnsortedDigests);
    }
    let mut out = KeyDiff::default();
    let (mut m, mut t) = (mine.iter().peekable(), theirs.iter().peekable());
    loop {
        match (m.peek(), t.peek()) {
            (Some(a), Some(b)) if a.key == b.key => {
                if a.version != b.version {
                    let list = match a.events.cmp(&b.events) {
                        std::cmp::Ordering::Greater => &mut out.mine_newer,
                        std::cmp::Ordering::Less => &mut out.theirs_newer,
                        std::cmp::Ordering::Equal => &mut out.differ,
                    };
                    list.push(a.key.clone());
                }
                m.next();
                t.next();
            }
            (Some(a), Some(b)) if a.key < b.key => {
                out.only_mine.push(a.key.clone());
                m.next();
            }
            (_, Some(b)) => {
                out.only_theirs.push(b.key.clone());
                t.next();
            }
            (Some(a), None) => {
                out.only_mine.push(a.key.clone());
                m.next();
            }
            (None, None) => return Ok(out),
        }
    }
}

/// What a local run of the exchange produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Exchange {
    /// The differing leaves.
    leaves: Vec<u32>,
    /// Node hashes sent, both ways.
    hashes: usize,
    /// Messages of node hashes sent, both ways.
    messages: usize,
}

/// Runs the exchange between `a` (who opens) and `b` in memory.
fn exchange(a: &MerkleTree, b: &MerkleTree) -> Result<Exchange, MerkleError> {
    exchange_at(a, b, None)
}

/// [`exchange`], the hashes below the root projected under `salt` when given.
fn exchange_at(a: &MerkleTree, b: &MerkleTree, salt: Option<u64>) -> Result<Exchange, MerkleError> {
    let mut msg = a.root_hashes();
    let mut out = Exchange::default();
    let mut receiver = b;
    loop {
        out.hashes += msg.nodes.len();
        out.messages += 1;
        match receiver.respond_at(&msg, salt)? {
            Step::InSync => return Ok(out),
            Step::Leaves(leaves) => {
                out.leaves = leaves;
                return Ok(out);
            }
            Step::Descend(next) => {
                msg = next;
                receiver = if std::ptr::eq(receiver, a) { b } else { a };
            }
        }
    }
}

/// The leaves where `a` and `b` differ, strictly increasing, found by
/// running the exchange protocol between them in memory (what two
/// replicas do over the wire).
///
/// # Errors
/// [`MerkleError::ShapeMismatch`] if the trees' shapes differ.
pub fn diff(a: &MerkleTree, b: &MerkleTree) -> Result<Vec<u32>, MerkleError> {
    exchange(a, b).map(|e| e.leaves)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::causality::{Actor, Dot};
    use crate::member::NodeId;
    use crate::ring;

    fn key(i: u64) -> Bytes {
        Bytes::from(format!("key-{i}"))
    }

    fn shape(b: u32, d: u32) -> TreeShape {
        TreeShape::new(b, d).unwrap()
    }

    /// The shapes the property tests run over: 1024 leaves in every
    /// branching, plus a small and an odd one.
    fn shapes() -> impl Strategy<Value = TreeShape> {
        prop::sample::select(vec![
            shape(32, 2),
            shape(2, 10),
            shape(4, 5),
            shape(1024, 1),
            shape(8, 2),
            shape(16, 3),
        ])
    }

    /// The bound on node hashes an exchange sends for `k` differing leaves.
    fn hash_bound(s: TreeShape, k: usize) -> usize {
        let (b, d) = (s.branching() as usize, s.depth() as usize);
        if k == 0 {
            1
        } else {
            1 + b + k * b * (d - 1)
        }
    }

    fn tree_of(s: TreeShape, entries: &BTreeMap<Bytes, u64>) -> MerkleTree {
        MerkleTree::from_entries(s, entries.iter().map(|(k, &v)| (k, v)))
    }

    #[test]
    fn shapes_are_checked() {
        assert_eq!(TreeShape::default(), TreeShape::DEFAULT);
        assert_eq!(TreeShape::DEFAULT.leaves(), 1024);
        assert_eq!(TreeShape::DEFAULT.nodes_at(1), Some(32));
        assert_eq!(TreeShape::DEFAULT.nodes_at(3), None);
        assert_eq!(shape(2, 20).leaves(), MAX_LEAVES);
        for (b, d) in [(0, 2), (1, 5), (3, 2), (32, 0), (2, 21), (1 << 11, 2), (1 << 31, 1)] {
            assert_eq!(TreeShape::new(b, d), Err(MerkleError::InvalidShape { branching: b, depth: d }));
        }
        assert_eq!(TreeShape::DEFAULT.to_string(), "1024 leaves (32^2)");
    }

    #[test]
    fn decoding_refuses_invalid_shapes() {
        let bytes = postcard::to_allocvec(&(3u32, 2u32)).unwrap();
        assert!(postcard::from_bytes::<TreeShape>(&bytes).is_err());
        let bytes = postcard::to_allocvec(&(2u32, 40u32)).unwrap();
        assert!(postcard::from_bytes::<TreeShape>(&bytes).is_err());
        let bytes = postcard::to_allocvec(&TreeShape::DEFAULT).unwrap();
        assert_eq!(postcard::from_bytes::<TreeShape>(&bytes), Ok(TreeShape::DEFAULT));
    }

    #[test]
    fn messages_round_trip_through_postcard() {
        let tree = MerkleTree::from_entries(TreeShape::DEFAULT, (0..100).map(|i| (key(i), i)));
        let nodes = tree.children_hashes(0, &[0]).unwrap();
        assert_eq!(postcard::from_bytes::<NodeHashes>(&postcard::to_allocvec(&nodes).unwrap()), Ok(nodes));
        let leaf = TreeShape::DEFAULT.leaf_of(&key(7));
        let digests = LeafDigests {
            shape: TreeShape::DEFAULT,
            leaves: vec![LeafDigest { leaf, keys: vec![KeyDigest::new(key(7), 7)] }],
        };
        let bytes = postcard::to_allocvec(&digests).unwrap();
        assert_eq!(postcard::from_bytes::<LeafDigests>(&bytes), Ok(digests));
    }

    #[test]
    fn node_hashes_cost_about_eight_bytes_a_node_on_the_wire() {
        let tree = MerkleTree::from_entries(TreeShape::DEFAULT, (0..5000).map(|i| (key(i), i)));
        let parents: Vec<u32> = (0..32).step_by(3).collect();
        let msg = tree.children_hashes(0, &[0]).unwrap();
        let msg = NodeHashes { nodes: msg.nodes.into_iter().filter(|(i, _)| i % 3 == 0).collect(), ..msg };
        let bytes = postcard::to_allocvec(&msg).unwrap();
        assert_eq!(
            postcard::from_bytes::<NodeHashes>(&bytes).as_ref(),
            Ok(&msg),
            "scattered nodes round-trip"
        );
        let leaves = NodeHashes { level: 2, ..tree.children_hashes(1, &parents).unwrap() };
        let bytes = postcard::to_allocvec(&leaves).unwrap();
        assert_eq!(leaves.nodes.len(), 11 * 32);
        assert!(bytes.len() <= leaves.nodes.len() * 8 + 11 * 3 + 16, "{} bytes", bytes.len());
        assert_eq!(postcard::from_bytes::<NodeHashes>(&bytes), Ok(leaves));
    }

    #[test]
    fn projected_hashes_find_the_same_leaves_in_a_third_of_the_bytes() {
        let s = TreeShape::DEFAULT;
        let a = MerkleTree::from_entries(s, (0..20_000).map(|i| (key(i), i)));
        let b =
            MerkleTree::from_entries(s, (0..20_000).map(|i| (key(i), if i % 97 == 0 { i + 1 } else { i })));
        let full = exchange_at(&a, &b, None).unwrap();
        assert!(!full.leaves.is_empty());
        let found =
            (1..=20u64).filter(|&salt| exchange_at(&a, &b, Some(salt)).unwrap().leaves == full.leaves);
        assert!(found.count() >= 18, "a leaf hides from a 16-bit projection with probability 2^-16");
        let leaves = a.children_hashes(1, &[0, 1, 2]).unwrap();
        let full_bytes = postcard::to_allocvec(&leaves).unwrap().len();
        let projected = leaves.projected(7);
        let bytes = postcard::to_allocvec(&projected).unwrap();
        assert!(bytes.len() * 3 <= full_bytes + 64, "{} vs {full_bytes}", bytes.len());
        assert_eq!(postcard::from_bytes::<NodeHashes>(&bytes), Ok(projected));
        let inner = a.children_hashes(0, &[0]).unwrap().projected(7);
        assert_eq!(postcard::from_bytes::<NodeHashes>(&postcard::to_allocvec(&inner).unwrap()), Ok(inner));
    }

    /// Two versions of one key whose entry hashes project equal under one
    /// salt: that exchange descends from the differing root and finds
    /// nothing; another salt, or full width (what the exchange falls back
    /// to), finds the leaf.
    #[test]
    fn a_projection_can_hide_a_leaf_that_another_salt_finds() {
        let k = key(1);
        let s = TreeShape::DEFAULT;
        let salt = 99;
        let leaf = s.leaf_of(&k);
        // Equal projections on the leaves' level (the key is alone in its
        // leaf, so the leaf's hash is its entry hash).
        let as_sent = |v: u64| project(entry_hash(&k, v), salt, 16);
        let mut seen = std::collections::HashMap::new();
        let (v1, v2) = (0u64..).find_map(|v| seen.insert(as_sent(v), v).map(|old| (old, v))).unwrap();
        let a = MerkleTree::from_entries(s, [(k.clone(), v1)]);
        let b = MerkleTree::from_entries(s, [(k.clone(), v2)]);
        assert_ne!(a.root(), b.root());
        let hidden = exchange_at(&a, &b, Some(salt)).unwrap();
        assert!(hidden.leaves.is_empty() && hidden.messages > 1, "descended from the root, found nothing");
        assert_eq!(exchange_at(&a, &b, Some(salt + 1)).unwrap().leaves, [leaf]);
        assert_eq!(exchange_at(&a, &b, None).unwrap().leaves, [leaf]);
    }

    #[test]
    fn node_hashes_whose_runs_miscount_their_hashes_are_refused() {
        let wire = |runs: Vec<(u32, u32)>, hashes: usize| {
            let msg = WireNodeHashes {
                shape: TreeShape::DEFAULT,
                level: 1,
                salt: None,
                runs,
                hashes: Bytes::from(vec![7u8; hashes]),
            };
            postcard::from_bytes::<NodeHashes>(&postcard::to_allocvec(&msg).unwrap())
        };
        assert!(wire(vec![(0, 2)], 16).is_ok());
        for (runs, hashes) in [
            (vec![(0, 2)], 8),
            (vec![(0, 1)], 16),
            (vec![(0, 2)], 15),
            (vec![(0, u32::MAX)], 8),
            (vec![(u32::MAX, 2)], 16),
            (vec![(0, u32::MAX), (0, u32::MAX), (0, 2)], 0),
        ] {
            assert!(wire(runs.clone(), hashes).is_err(), "runs {runs:?} with {hashes} bytes");
        }
    }

    /// Keys of one ring partition share the top bits of `ring::key_hash`;
    /// their leaves must still spread over the whole tree.
    #[test]
    fn leaves_do_not_depend_on_the_partition() {
        let s = TreeShape::DEFAULT;
        let partition = |k: &[u8]| ring::key_hash(k) >> (64 - 8); // Q = 256
        let keys: Vec<Bytes> = (0..400_000).map(key).filter(|k| partition(k) == 5).collect();
        assert!(keys.len() > 1000, "{}", keys.len());
        let used: BTreeSet<u32> = keys.iter().map(|k| s.leaf_of(k)).collect();
        // ~1560 keys over 1024 leaves leave ~22% of them empty if uniform.
        assert!(used.len() > 700, "only {} of 1024 leaves used", used.len());
        // And the leaf is not the partition either: a leaf holds keys of many partitions.
        let in_leaf0: BTreeSet<u64> =
            (0..400_000).map(key).filter(|k| s.leaf_of(k) == 0).map(|k| partition(&k)).collect();
        assert!(in_leaf0.len() > 100, "{}", in_leaf0.len());
    }

    #[test]
    fn entry_hashes_mix_key_and_version() {
        assert_ne!(entry_hash(b"a", 1), entry_hash(b"a", 2));
        assert_ne!(entry_hash(b"a", 1), entry_hash(b"b", 1));
        assert_eq!(KeyDigest::new(&b"a"[..], 1).entry_hash(), entry_hash(b"a", 1));
        // Swapping the versions of two keys changes the tree.
        let s = shape(2, 1);
        let a = MerkleTree::from_entries(s, [(b"a", 1), (b"b", 2)]);
        let b = MerkleTree::from_entries(s, [(b"a", 2), (b"b", 1)]);
        assert_ne!(a.root(), b.root());
    }

    #[test]
    fn empty_trees_are_zero_and_in_sync() {
        let t = MerkleTree::new(TreeShape::DEFAULT);
        assert_eq!(t.root(), 0);
        assert_eq!(t, MerkleTree::from_entries(TreeShape::DEFAULT, std::iter::empty::<(Bytes, u64)>()));
        assert_eq!(t.respond(&t.root_hashes()), Ok(Step::InSync));
        assert_eq!(diff(&t, &t), Ok(vec![]));
        assert_eq!(t.level(2).map(<[u64]>::len), Some(1024));
        assert_eq!(t.level(3), None);
        assert_eq!(t.node(1, 32), None);
        assert_eq!(t.leaf(1023), Some(0));
    }

    #[test]
    fn malformed_node_messages_are_refused() {
        let t = MerkleTree::new(TreeShape::DEFAULT);
        let ours = TreeShape::DEFAULT;
        let msg = |shape, level, nodes: Vec<(u32, u64)>| NodeHashes { shape, level, salt: None, nodes };
        let theirs = shape(4, 5);
        assert_eq!(
            t.respond(&msg(theirs, 0, vec![(0, 1)])),
            Err(MerkleError::ShapeMismatch { ours, theirs })
        );
        assert_eq!(
            t.respond(&msg(ours, 3, vec![])),
            Err(MerkleError::LevelOutOfRange { level: 3, depth: 2 })
        );
        assert_eq!(
            t.respond(&msg(ours, 1, vec![(32, 0)])),
            Err(MerkleError::IndexOutOfRange { level: 1, index: 32, nodes: 32 })
        );
        assert_eq!(
            t.respond(&msg(ours, 0, vec![(1, 0)])),
            Err(MerkleError::IndexOutOfRange { level: 0, index: 1, nodes: 1 })
        );
        assert_eq!(
            t.respond(&msg(ours, 2, vec![(3, 0), (3, 1)])),
            Err(MerkleError::UnsortedNodes { level: 2 })
        );
        assert_eq!(
            t.respond(&msg(ours, 2, vec![(5, 0), (4, 1)])),
            Err(MerkleError::UnsortedNodes { level: 2 })
        );
        assert_eq!(t.respond(&msg(ours, 2, vec![])), Ok(Step::InSync));
        // Local requests are checked the same way.
        assert!(matches!(t.children_hashes(2, &[0]), Err(MerkleError::LevelOutOfRange { .. })));
        assert!(matches!(t.children_hashes(1, &[32]), Err(MerkleError::IndexOutOfRange { .. })));
        assert!(matches!(t.node_hashes(1, &[2, 1]), Err(MerkleError::UnsortedNodes { level: 1 })));
        assert_eq!(t.node_hashes(1, &[1, 2]).unwrap().nodes, vec![(1, 0), (2, 0)]);
    }

    #[test]
    fn malformed_digests_are_refused() {
        let s = TreeShape::DEFAULT;
        let (a, b) = (key(1), key(2));
        let (la, lb) = (s.leaf_of(&a), s.leaf_of(&b));
        assert_ne!(la, lb);
        let msg = |leaves| LeafDigests { shape: s, leaves };
        let leaf = |leaf, keys: &[&Bytes]| LeafDigest {
            leaf,
            keys: keys.iter().map(|&k| KeyDigest::new(k.clone(), 1)).collect(),
        };
        let ok = msg(vec![leaf(la.min(lb), &[if la < lb { &a } else { &b }]), leaf(la.max(lb), &[])]);
        assert_eq!(s.check_digests(&ok), Ok(()));
        let other = LeafDigests { shape: shape(2, 10), ..ok.clone() };
        assert!(matches!(s.check_digests(&other), Err(MerkleError::ShapeMismatch { .. })));
        assert_eq!(
            s.check_digests(&msg(vec![leaf(1024, &[])])),
            Err(MerkleError::IndexOutOfRange { level: 2, index: 1024, nodes: 1024 })
        );
        assert_eq!(
            s.check_digests(&msg(vec![leaf(7, &[]), leaf(7, &[])])),
            Err(MerkleError::UnsortedNodes { level: 2 })
        );
        assert_eq!(
            s.check_digests(&msg(vec![leaf(la, &[&b])])),
            Err(MerkleError::KeyInWrongLeaf { leaf: la, expected: lb, key_len: b.len() })
        );
        let mut same_leaf: Vec<Bytes> = (0..).map(key).filter(|k| s.leaf_of(k) == la).take(2).collect();
        same_leaf.sort();
        let (lo, hi) = (&same_leaf[0], &same_leaf[1]);
        assert_eq!(s.check_digests(&msg(vec![leaf(la, &[lo, hi])])), Ok(()));
        assert_eq!(
            s.check_digests(&msg(vec![leaf(la, &[hi, lo])])),
            Err(MerkleError::UnsortedKeys { leaf: la })
        );
        assert_eq!(
            s.check_digests(&msg(vec![leaf(la, &[lo, lo])])),
            Err(MerkleError::UnsortedKeys { leaf: la })
        );
    }

    #[test]
    fn diff_keys_finds_changed_missing_and_extra_keys() {
        let d = |k: &str, v| KeyDigest::new(Bytes::copy_from_slice(k.as_bytes()), v);
        let mine = [d("a", 1), d("b", 2), d("c", 3), d("e", 5)];
        let theirs = [d("b", 2), d("c", 4), d("d", 4), d("f", 6)];
        let diff = diff_keys(&mine, &theirs).unwrap();
        let names =
            |v: &[Bytes]| v.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect::<Vec<_>>();
        assert_eq!(names(&diff.differ), ["c"]);
        assert_eq!(names(&diff.only_mine), ["a", "e"]);
        assert_eq!(names(&diff.only_theirs), ["d", "f"]);
        assert_eq!(diff.to_send().count(), 3);
        assert_eq!(diff.to_fetch().count(), 3);
        assert!(diff_keys(&mine, &mine).unwrap().is_empty());
        assert!(diff_keys(&[], &[]).unwrap().is_empty());
        assert_eq!(diff_keys(&[d("b", 1), d("a", 1)], &[]), Err(MerkleError::UnsortedDigests));
        assert_eq!(diff_keys(&[], &[d("a", 1), d("a", 2)]), Err(MerkleError::UnsortedDigests));
    }

    #[test]
    fn diff_keys_sends_only_the_state_that_has_seen_more_events() {
        let d = |k: &str, v, e| KeyDigest::new(Bytes::copy_from_slice(k.as_bytes()), v).with_events(e);
        let mine = [d("a", 1, 5), d("b", 2, 2), d("c", 3, 4), d("z", 9, 9)];
        let theirs = [d("a", 10, 3), d("b", 20, 7), d("c", 30, 4), d("z", 9, 1)];
        let diff = diff_keys(&mine, &theirs).unwrap();
        assert_eq!(diff.mine_newer, [Bytes::from_static(b"a")]);
        assert_eq!(diff.theirs_newer, [Bytes::from_static(b"b")]);
        assert_eq!(diff.differ, [Bytes::from_static(b"c")], "equal counts: both ways");
        assert_eq!(diff.to_send().cloned().collect::<Vec<_>>(), [&b"c"[..], b"a"]);
        assert_eq!(diff.to_fetch().cloned().collect::<Vec<_>>(), [&b"c"[..], b"b"]);
        assert!(!diff.is_empty());
        let same_version = diff_keys(&mine[3..], &theirs[3..]).unwrap();
        assert!(same_version.is_empty(), "the hint never makes equal versions differ");
    }

    #[test]
    fn repair_leaf_fixes_a_drifted_tree() {
        let s = TreeShape::DEFAULT;
        let entries: BTreeMap<Bytes, u64> = (0..5000).map(|i| (key(i), i * 7)).collect();
        let good = tree_of(s, &entries);
        let mut drifted = good.clone();
        drifted.update(&key(42), Some(42 * 7), None); // an update the store never saw
        let leaf = s.leaf_of(&key(42));
        let scan: Vec<KeyDigest> = entries
            .iter()
            .filter(|(k, _)| s.leaf_of(k) == leaf)
            .map(|(k, &v)| KeyDigest::new(k.clone(), v))
            .collect();
        assert_eq!(LeafDigest { leaf, keys: scan.clone() }.hash(), good.leaf(leaf).unwrap());
        assert_eq!(drifted.repair_leaf(leaf, &scan), Ok(true));
        assert_eq!(drifted, good);
        assert_eq!(drifted.repair_leaf(leaf, &scan), Ok(false));
        let stranger = (0..).map(key).find(|k| s.leaf_of(k) != leaf).unwrap();
        assert!(matches!(
            drifted.repair_leaf(leaf, &[KeyDigest::new(stranger, 1)]),
            Err(MerkleError::KeyInWrongLeaf { .. })
        ));
        assert!(matches!(drifted.repair_leaf(1024, &[]), Err(MerkleError::IndexOutOfRange { .. })));
        assert_eq!(drifted, good);
    }

    /// The figures of the report: node hashes an exchange sends for `k`
    /// differing keys, over 10 and over 100,000 equal keys.
    #[test]
    fn exchange_cost_follows_differences_not_size() {
        for (s, k) in [TreeShape::DEFAULT, shape(4, 5)]
            .into_iter()
            .flat_map(|s| [0usize, 1, 2, 4, 8, 16, 32, 64, 128, 1024].map(|k| (s, k)))
        {
            let mut counts = Vec::new();
            for equal in [10u64, 100_000] {
                let base: BTreeMap<Bytes, u64> = (0..equal).map(|i| (key(i), 1)).collect();
                let mut other = base.clone();
                // k keys held only by the other replica.
                other.extend((0..k as u64).map(|i| (key(1_000_000 + i), 1)));
                let e = exchange(&tree_of(s, &base), &tree_of(s, &other)).unwrap();
                let leaves: BTreeSet<u32> = (0..k as u64).map(|i| s.leaf_of(&key(1_000_000 + i))).collect();
                assert_eq!(e.leaves, leaves.iter().copied().collect::<Vec<_>>());
                assert!(e.hashes <= hash_bound(s, leaves.len()), "k={k}: {} hashes", e.hashes);
                counts.push((e.hashes, e.messages, leaves.len()));
            }
            assert_eq!(counts[0], counts[1], "k={k}: cost depends on the equal keys");
            let (hashes, messages, leaves) = counts[0];
            println!(
                "{s}: {k} differing keys ({leaves} leaves): {hashes} node hashes in {messages} messages"
            );
        }
    }

    /// The whole exchange between two replicas' stores: trees, leaf
    /// digests, key diff, states shipped both ways and merged.
    #[test]
    fn an_exchange_repairs_two_replicas() {
        let s = TreeShape::DEFAULT;
        let actor = |n| Actor::new(NodeId(n), 1);
        let write = |state: &mut SiblingSet, n: u64, v: &str| {
            let dot = Dot::new(actor(n), state.next_counter(&actor(n)));
            state.apply_write(&state.context().clone(), dot, n, Some(Bytes::from(v.to_owned())));
        };
        let mut stores = [BTreeMap::<Bytes, SiblingSet>::new(), BTreeMap::new()];
        for i in 0..2000 {
            let mut st = SiblingSet::new();
            write(&mut st, 1, "v");
            stores[0].insert(key(i), st.clone());
            stores[1].insert(key(i), st);
        }
        for i in 0..5 {
            write(stores[0].get_mut(&key(i)).unwrap(), 1, "newer on 0"); // differs
            stores[1].remove(&key(100 + i)); // only on 0
            let mut st = SiblingSet::new();
            write(&mut st, 2, "only on 1");
            stores[1].insert(key(5000 + i), st);
        }
        let build = |store: &BTreeMap<Bytes, SiblingSet>| {
            MerkleTree::from_entries(s, store.iter().map(|(k, st)| (k, state_version(st))))
        };
        let mut trees = [build(&stores[0]), build(&stores[1])];
        let leaves = diff(&trees[0], &trees[1]).unwrap();
        assert!(!leaves.is_empty() && leaves.len() <= 15);
        let digests = |store: &BTreeMap<Bytes, SiblingSet>, leaf| LeafDigest {
            leaf,
            keys: store
                .iter()
                .filter(|(k, _)| s.leaf_of(k) == leaf)
                .map(|(k, st)| KeyDigest::new(k.clone(), state_version(st)))
                .collect(),
        };
        // Replica 1 found the leaves; it sends its digests to replica 0.
        let msg = LeafDigests { shape: s, leaves: leaves.iter().map(|&l| digests(&stores[1], l)).collect() };
        let wire: LeafDigests = postcard::from_bytes(&postcard::to_allocvec(&msg).unwrap()).unwrap();
        s.check_digests(&wire).unwrap();
        let mut shipped = 0;
        for theirs in &wire.leaves {
            let mine = digests(&stores[0], theirs.leaf);
            let kd = diff_keys(&mine.keys, &theirs.keys).unwrap();
            let to_1: Vec<(Bytes, SiblingSet)> =
                kd.to_send().map(|k| (k.clone(), stores[0][k].clone())).collect();
            let to_0: Vec<(Bytes, SiblingSet)> =
                kd.to_fetch().map(|k| (k.clone(), stores[1][k].clone())).collect();
            for (side, incoming) in [(1, to_1), (0, to_0)] {
                for (k, st) in incoming {
                    shipped += 1;
                    let old = stores[side].get(&k).map(state_version);
                    let merged = stores[side].entry(k.clone()).or_default();
                    merged.merge(&st);
                    trees[side].update(&k, old, Some(state_version(merged)));
                }
            }
        }
        assert_eq!(shipped, 5 * 2 + 5 + 5);
        assert_eq!(stores[0], stores[1]);
        assert_eq!(trees[0], trees[1]);
        assert_eq!(trees[0], build(&stores[0]));
        assert_eq!(diff(&trees[0], &trees[1]), Ok(vec![]));
    }

    #[test]
    fn state_versions_follow_state_equality() {
        let a = Actor::new(NodeId(1), 1);
        let b = Actor::new(NodeId(2), 1);
        let mut x = SiblingSet::new();
        x.apply_write(&Default::default(), Dot::new(a, 1), 10, Some(Bytes::from_static(b"x")));
        let mut y = SiblingSet::new();
        y.apply_write(&Default::default(), Dot::new(b, 1), 11, Some(Bytes::from_static(b"y")));
        let mut xy = x.clone();
        xy.merge(&y);
        let mut yx = y.clone();
        yx.merge(&x);
        assert_eq!(state_version(&xy), state_version(&yx));
        assert_ne!(state_version(&x), state_version(&y));
        assert_ne!(state_version(&x), state_version(&xy));
        // A decoded state has the version of the original.
        assert_eq!(state_version(&SiblingSet::decode(&xy.encode()).unwrap()), state_version(&xy));
    }

    /// Updates of a small key pool: `(key, new version or removal)`.
    fn ops() -> impl Strategy<Value = Vec<(u64, Option<u64>)>> {
        prop::collection::vec((0u64..64, prop::option::of(0u64..4)), 0..200)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// (a) Incremental updates, in any order, give the tree a rebuild
        /// from the final entries gives; so does inserting those in any order.
        #[test]
        fn updates_equal_a_rebuild(s in shapes(), ops in ops(), seed: u64) {
            let mut tree = MerkleTree::new(s);
            let mut model = BTreeMap::new();
            for (k, new) in ops {
                let old = match new {
                    Some(v) => model.insert(key(k), v),
                    None => model.remove(&key(k)),
                };
                tree.update(&key(k), old, new);
            }
            prop_assert_eq!(&tree, &tree_of(s, &model));
            let mut shuffled: Vec<_> = model.iter().map(|(k, &v)| (k.clone(), v)).collect();
            shuffled.sort_by_key(|(k, v)| entry_hash(k, *v ^ seed));
            let mut again = MerkleTree::new(s);
            for (k, v) in &shuffled {
                again.update(k, None, Some(*v));
            }
            prop_assert_eq!(&again, &tree);
            prop_assert_eq!(MerkleTree::from_entries(s, shuffled), tree);
        }

        /// (b) Trees over the same entries are equal; trees differing in k
        /// keys (changed, removed or added) differ in exactly those keys'
        /// leaves, and (d) the exchange sends at most 1 + b + k*b*(d-1)
        /// node hashes.
        #[test]
        fn diff_finds_exactly_the_changed_leaves(
            s in shapes(),
            n in 0u64..2000,
            changes in prop::collection::vec((0u64..4000, 0u8..3), 0..40),
        ) {
            let a: BTreeMap<Bytes, u64> = (0..n).map(|i| (key(i), i)).collect();
            let mut b = a.clone();
            let mut changed = BTreeSet::new();
            for (i, kind) in changes {
                match kind {
                    0 => { b.insert(key(i), u64::MAX - i); } // changed (or added past n)
                    1 => { b.remove(&key(i)); } // removed (nothing if past n)
                    _ => { b.insert(key(i + 1_000_000), 0); } // added
                }
            }
            for k in a.keys().chain(b.keys()) {
                if a.get(k) != b.get(k) {
                    changed.insert(s.leaf_of(k));
                }
            }
            let (ta, tb) = (tree_of(s, &a), tree_of(s, &b));
            prop_assert_eq!(&ta, &tree_of(s, &a));
            let e = exchange(&ta, &tb).unwrap();
            prop_assert_eq!(&e.leaves, &changed.iter().copied().collect::<Vec<_>>());
            prop_assert_eq!(diff(&tb, &ta).unwrap(), e.leaves.clone());
            prop_assert_eq!(changed.is_empty(), ta.root() == tb.root());
            prop_assert!(e.hashes <= hash_bound(s, changed.len()), "{} > bound", e.hashes);
            prop_assert!(e.messages <= s.depth() as usize + 1);
        }

        /// (c) An update followed by its reverse restores the tree.
        #[test]
        fn reverse_update_restores(
            s in shapes(),
            n in 0u64..500,
            k in 0u64..1000,
            old in prop::option::of(any::<u64>()),
            new in prop::option::of(any::<u64>()),
        ) {
            let mut entries: BTreeMap<Bytes, u64> = (0..n).map(|i| (key(i), i)).collect();
            match old {
                Some(v) => { entries.insert(key(k), v); }
                None => { entries.remove(&key(k)); }
            }
            let before = tree_of(s, &entries);
            let mut tree = before.clone();
            tree.update(&key(k), old, new);
            if let Some(v) = new { entries.insert(key(k), v); } else { entries.remove(&key(k)); }
            prop_assert_eq!(&tree, &tree_of(s, &entries));
            tree.update(&key(k), new, old);
            prop_assert_eq!(tree, before);
        }

        /// Equal states give equal versions whatever the merge order.
        #[test]
        fn state_versions_ignore_merge_order(
            writes in prop::collection::vec((0u64..3, any::<u8>()), 1..12),
            order in Just((0..3usize).collect::<Vec<_>>()).prop_shuffle(),
        ) {
            let mut replicas = vec![SiblingSet::new(); 3];
            for (ts, (r, v)) in writes.into_iter().enumerate() {
                let actor = Actor::new(NodeId(r), 1);
                let s = &mut replicas[r as usize];
                let dot = Dot::new(actor, s.next_counter(&actor));
                let ctx = if v % 2 == 0 { s.context().clone() } else { Default::default() };
                s.apply_write(&ctx, dot, ts as u64, Some(Bytes::from(vec![v])));
            }
            let join = |idx: &[usize]| {
                idx.iter().fold(SiblingSet::new(), |mut acc, &i| { acc.merge(&replicas[i]); acc })
            };
            let forward = join(&[0, 1, 2]);
            let shuffled = join(&order);
            prop_assert_eq!(&forward, &shuffled);
            prop_assert_eq!(state_version(&forward), state_version(&shuffled));
        }
    }

    proptest! {
        // Each case builds four trees over up to 100,000 keys.
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// (d) The exchange's cost does not depend on how many keys are
        /// equal: over 10 or 100,000 equal keys, the same k differing keys
        /// cost the same node hashes and messages, within the bound.
        #[test]
        fn exchange_cost_ignores_equal_keys(s in shapes(), k in 0u64..64) {
            let mut costs = Vec::new();
            for equal in [10u64, 100_000] {
                let base = (0..equal).map(|i| (key(i), 1));
                let extra = (0..k).map(|i| (key((1 << 40) | i), 9));
                let a = MerkleTree::from_entries(s, base.clone());
                let b = MerkleTree::from_entries(s, base.chain(extra));
                let e = exchange(&a, &b).unwrap();
                prop_assert!(e.hashes <= hash_bound(s, e.leaves.len()));
                costs.push((e.hashes, e.messages, e.leaves));
            }
            prop_assert_eq!(&costs[0], &costs[1]);
        }
    }
}
