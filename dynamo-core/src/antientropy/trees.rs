//! A node's Merkle trees, one per partition it replicates, kept in step
//! with its store.
//!
//! Every change of a key's stored state is recorded ([`Trees::record`])
//! by the replica, under the key's stripe lock and after the change is
//! committed, as an `O(depth)` XOR update (Riak's tictac trees). A tree is
//! built from a scan of its partition while writes go on: the rebuild
//! marks the partition *rebuilding*, and every key changed from then on is
//! remembered; once the scan is done, each remembered key is read again
//! under its stripe lock and its entry in the new tree corrected, so the
//! new tree equals the store whatever the scan saw of keys written during
//! it. A partition whose tree is not built is *not ready*: exchanges skip
//! it and a peer asking about it is answered "not ready".

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::time::Instant;

use crate::merkle::{MerkleTree, NodeHashes, Step, TreeShape};

/// One partition's tree and rebuild.
#[derive(Default)]
struct PartitionTree {
    /// The tree, once built; `None` while not ready.
    tree: Option<MerkleTree>,
    /// While a rebuild scans: the keys changed since it started.
    changed: Option<HashSet<Bytes>>,
    /// When the tree in use was built.
    built: Option<Instant>,
}

/// Every partition's tree, and the changes under way, on this node.
#[derive(Default)]
struct State {
    partitions: HashMap<u32, PartitionTree>,
    /// Changes begun and not yet ended, per partition.
    in_flight: HashMap<u32, usize>,
}

/// Every partition's tree on this node.
pub(crate) struct Trees {
    shape: TreeShape,
    state: Mutex<State>,
}

/// A change under way ([`Trees::begin_change`]). Dropped without
/// [`end`](Change::end) (a commit whose future was dropped), it counts as
/// an unknown outcome: the partition's tree is dropped and rebuilt later.
pub(crate) struct Change<'a> {
    trees: &'a Trees,
    partition: u32,
    ended: bool,
}

impl Change<'_> {
    /// Ends the change: `Some((old, new))` records that `key` went from
    /// version `old` to `new` (`None`: absent); `None` says the commit
    /// failed, so whether it happened is unknown and the tree is dropped
    /// (rebuilt later). The caller holds the key's stripe lock.
    pub(crate) fn end(mut self, key: &[u8], change: Option<(Option<u64>, Option<u64>)>) {
        self.ended = true;
        self.trees.end_change(self.partition, key, change);
    }
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.trees.end_change(self.partition, &[], None);
        }
    }
}

/// What a finished scan hands back to [`Trees::finish_rebuild`].
pub(crate) enum Finish {
    /// The tree is installed: the partition is ready.
    Installed,
    /// These keys changed during the scan or the last correction: correct
    /// them, then call again.
    Correct(Vec<Bytes>),
    /// The rebuild was cancelled (the partition was forgotten meanwhile).
    Cancelled,
}

impl Trees {
    /// No tree yet; trees of `shape`.
    pub(crate) fn new(shape: TreeShape) -> Trees {
        Trees { shape, state: Mutex::default() }
    }

    /// The shape of every tree.
    pub(crate) fn shape(&self) -> TreeShape {
        self.shape
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes that a change of a key of `partition` is about to be
    /// committed; the [`Change`] returned ends it. A rebuild installs its
    /// tree only while no change is under way, so a change the scan saw
    /// is never applied to the new tree twice.
    pub(crate) fn begin_change(&self, partition: u32) -> Change<'_> {
        *self.state().in_flight.entry(partition).or_default() += 1;
        Change { trees: self, partition, ended: false }
    }

    fn end_change(&self, partition: u32, key: &[u8], change: Option<(Option<u64>, Option<u64>)>) {
        let mut state = self.state();
        if let Some(n) = state.in_flight.get_mut(&partition) {
            *n -= 1;
            if *n == 0 {
                state.in_flight.remove(&partition);
            }
        }
        let Some((old, new)) = change else {
            state.partitions.remove(&partition);
            return;
        };
        if old == new {
            return;
        }
        let Some(p) = state.partitions.get_mut(&partition) else { return };
        if let Some(tree) = &mut p.tree {
            tree.update(key, old, new);
        }
        if let Some(changed) = &mut p.changed {
            changed.insert(Bytes::copy_from_slice(key));
        }
    }

    /// Drops `partition`'s tree (a change may have been lost, or the node
    /// no longer replicates it): it is not ready until rebuilt. A rebuild
    /// in progress is cancelled.
    pub(crate) fn forget(&self, partition: u32) {
        self.state().partitions.remove(&partition);
    }

    /// Marks `partition` as rebuilding; returns `false` if a rebuild of it
    /// is already running.
    pub(crate) fn begin_rebuild(&self, partition: u32) -> bool {
        let mut state = self.state();
        let p = state.partitions.entry(partition).or_default();
        if p.changed.is_some() {
            return false;
        }
        p.changed = Some(HashSet::new());
        true
    }

    /// Ends a rebuild whose tree is `tree`: installs it if no key changed
    /// since the last call and no change is under way, else hands the
    /// changed keys back (none, when only changes under way hold it up).
    pub(crate) fn finish_rebuild(&self, partition: u32, tree: &MerkleTree) -> Finish {
        let mut state = self.state();
        let busy = state.in_flight.contains_key(&partition);
        let Some(p) = state.partitions.get_mut(&partition) else { return Finish::Cancelled };
        let Some(changed) = p.changed.as_mut() else { return Finish::Cancelled };
        if changed.is_empty() && !busy {
            p.changed = None;
            p.tree = Some(tree.clone());
            p.built = Some(Instant::now());
            return Finish::Installed;
        }
        Finish::Correct(changed.drain().collect())
    }

    /// Gives up a rebuild (a store error): the old tree, if any, stays.
    pub(crate) fn abort_rebuild(&self, partition: u32) {
        if let Some(p) = self.state().partitions.get_mut(&partition) {
            p.changed = None;
        }
    }

    /// Whether `partition`'s tree is built.
    pub(crate) fn is_ready(&self, partition: u32) -> bool {
        self.state().partitions.get(&partition).is_some_and(|p| p.tree.is_some())
    }

    /// When `partition`'s tree was built, if it is.
    pub(crate) fn built(&self, partition: u32) -> Option<Instant> {
        self.state().partitions.get(&partition).and_then(|p| p.tree.as_ref().and(p.built))
    }

    /// Partitions with a tree or a rebuild.
    pub(crate) fn partitions(&self) -> Vec<u32> {
        let mut all: Vec<u32> = self.state().partitions.keys().copied().collect();
        all.sort_unstable();
        all
    }

    /// The opening message of an exchange of `partition`, if its tree is built.
    pub(crate) fn root_hashes(&self, partition: u32) -> Option<NodeHashes> {
        self.state().partitions.get(&partition).and_then(|p| p.tree.as_ref()).map(MerkleTree::root_hashes)
    }

    /// Compares a peer's hashes with `partition`'s tree
    /// ([`MerkleTree::respond_at`], children projected under `salt` if given);
    /// `None` if the tree is not built.
    pub(crate) fn respond(
        &self,
        partition: u32,
        theirs: &NodeHashes,
        salt: Option<u64>,
    ) -> Option<Result<Step, crate::merkle::MerkleError>> {
        self.state()
            .partitions
            .get(&partition)
            .and_then(|p| p.tree.as_ref())
            .map(|t| t.respond_at(theirs, salt))
    }

    /// The root hash of `partition`'s tree, if built.
    #[cfg(test)]
    pub(crate) fn root(&self, partition: u32) -> Option<u64> {
        self.state().partitions.get(&partition).and_then(|p| p.tree.as_ref()).map(MerkleTree::root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuild_hands_back_keys_changed_during_it_until_none_are() {
        let trees = Trees::new(TreeShape::DEFAULT);
        assert!(!trees.is_ready(1));
        assert!(trees.begin_rebuild(1));
        assert!(!trees.begin_rebuild(1), "one rebuild at a time");
        trees.begin_change(1).end(b"k", Some((None, Some(7))));
        let under_way = trees.begin_change(1);
        let scanned = MerkleTree::from_entries(TreeShape::DEFAULT, [(&b"k"[..], 7)]);
        match trees.finish_rebuild(1, &scanned) {
            Finish::Correct(keys) => assert_eq!(keys, vec![Bytes::from_static(b"k")]),
            _ => panic!("the changed key must be handed back"),
        }
        assert!(
            matches!(trees.finish_rebuild(1, &scanned), Finish::Correct(keys) if keys.is_empty()),
            "a change under way holds the tree back"
        );
        under_way.end(b"other", Some((None, None)));
        assert!(matches!(trees.finish_rebuild(1, &scanned), Finish::Installed));
        assert_eq!(trees.root(1), Some(scanned.root()));
        trees.begin_change(1).end(b"k", Some((Some(7), None)));
        assert_eq!(trees.root(1), Some(0), "updates after the rebuild go to the new tree");
        drop(trees.begin_change(1));
        assert!(!trees.is_ready(1), "a change of unknown outcome drops the tree");
        assert!(matches!(trees.finish_rebuild(1, &scanned), Finish::Cancelled));
    }
}
