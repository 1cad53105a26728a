//! Application-defined reconciliation of concurrent siblings.
//!
//! When replicas accept concurrent writes, a key holds several siblings. A
//! [`Reconciler`] decides what a reader sees: keep them all for the client
//! to merge (Dynamo's default, [`KeepSiblings`]), pick one deterministic
//! winner ([`LastWriteWins`]), or compute a merged value (the paper's
//! shopping cart; see `examples/shopping_cart`). Reconcilers register by
//! name in a [`ReconcilerRegistry`] so configuration can pick one.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::causality::{Dot, Sibling};
use crate::error::{Error, Result};

/// What a [`Reconciler`] made of a set of concurrent siblings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Keep every sibling; the client sees them all.
    Keep,
    /// The sibling with this dot wins; the others are discarded. Because
    /// the choice is a deterministic function of the siblings, replicas
    /// apply it when they store a state, so losers never accumulate.
    Winner(Dot),
    /// Readers see this one value instead of the siblings. Storage keeps
    /// the siblings until a client writes back with the read's context,
    /// which replaces them all.
    Merged(Bytes),
}

/// Resolves concurrent siblings of one key.
///
/// Implementations must be deterministic and pure: the same siblings give
/// the same resolution on every node, whatever their order of arrival.
pub trait Reconciler: Send + Sync + 'static {
    /// The name configuration selects this reconciler by.
    fn name(&self) -> &str;

    /// Resolves `siblings` (at least two, sorted by dot, tombstones
    /// included: a tombstone is a concurrent delete).
    fn reconcile(&self, key: &[u8], siblings: &[Sibling]) -> Resolution;
}

/// Keeps every sibling for the client to merge: Dynamo's default.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeepSiblings;

impl Reconciler for KeepSiblings {
    fn name(&self) -> &str {
        "keep-siblings"
    }

    fn reconcile(&self, _key: &[u8], _siblings: &[Sibling]) -> Resolution {
        Resolution::Keep
    }
}

/// The sibling with the latest timestamp wins; ties go to the higher node
/// id, then epoch, then counter, so every node picks the same winner. A
/// winning tombstone makes the key read as deleted.
///
/// Timestamps come from each coordinator's hybrid logical clock, which
/// exceeds every timestamp the coordinator has seen (in its replica of
/// the key, in replicated states, in the client's context): a write wins
/// over every write its coordinator or its client knew of, even within
/// one millisecond. Between writes that knew nothing of each other, the
/// later physical clock wins (Cassandra's rule), so clock skew between
/// nodes can still reorder such truly concurrent writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct LastWriteWins;

impl Reconciler for LastWriteWins {
    fn name(&self) -> &str {
        "last-write-wins"
    }

    fn reconcile(&self, _key: &[u8], siblings: &[Sibling]) -> Resolution {
        match siblings.iter().max_by_key(|s| (s.timestamp_us, s.dot)) {
            Some(winner) => Resolution::Winner(winner.dot),
            None => Resolution::Keep,
        }
    }
}

/// Reconcilers by name. [`ReconcilerRegistry::with_builtins`] holds
/// `keep-siblings` and `last-write-wins`; users add their own.
#[derive(Clone, Default)]
pub struct ReconcilerRegistry {
    by_name: BTreeMap<String, Arc<dyn Reconciler>>,
}

impl std::fmt::Debug for ReconcilerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_name.keys()).finish()
    }
}

impl ReconcilerRegistry {
    /// A registry holding the built-in reconcilers.
    pub fn with_builtins() -> Self {
        let mut r = ReconcilerRegistry::default();
        r.by_name.insert(KeepSiblings.name().into(), Arc::new(KeepSiblings));
        r.by_name.insert(LastWriteWins.name().into(), Arc::new(LastWriteWins));
        r
    }

    /// Adds `reconciler` under its [`Reconciler::name`].
    ///
    /// # Errors
    /// [`Error::Config`] when that name is taken.
    pub fn register(&mut self, reconciler: Arc<dyn Reconciler>) -> Result<()> {
        let name = reconciler.name().to_string();
        if self.by_name.contains_key(&name) {
            return Err(Error::Config(format!("a reconciler named {name:?} is already registered")));
        }
        self.by_name.insert(name, reconciler);
        Ok(())
    }

    /// The reconciler registered as `name`.
    ///
    /// # Errors
    /// [`Error::UnknownReconciler`] listing the registered names.
    pub fn get(&self, name: &str) -> Result<Arc<dyn Reconciler>> {
        self.by_name
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownReconciler { name: name.to_string(), known: self.names() })
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causality::Actor;
    use crate::member::NodeId;

    fn sib(node: u64, counter: u64, ts: u64) -> Sibling {
        Sibling {
            dot: Dot { actor: Actor { node: NodeId(node), epoch: 1 }, counter },
            timestamp_us: ts,
            value: Some(Bytes::from(format!("{node}-{counter}"))),
            content_type: None,
        }
    }

    #[test]
    fn lww_picks_latest_then_highest_node() {
        let a = sib(1, 1, 10);
        let b = sib(2, 1, 20);
        let c = sib(3, 1, 20);
        assert_eq!(LastWriteWins.reconcile(b"k", &[a.clone(), b.clone()]), Resolution::Winner(b.dot));
        assert_eq!(LastWriteWins.reconcile(b"k", &[c.clone(), b.clone()]), Resolution::Winner(c.dot));
        assert_eq!(LastWriteWins.reconcile(b"k", &[b, c.clone()]), Resolution::Winner(c.dot));
        assert_eq!(KeepSiblings.reconcile(b"k", &[a, c]), Resolution::Keep);
    }

    #[test]
    fn registry_finds_builtins_and_refuses_duplicates() {
        let mut r = ReconcilerRegistry::with_builtins();
        assert_eq!(r.get("last-write-wins").unwrap().name(), "last-write-wins");
        assert!(r.register(Arc::new(KeepSiblings)).is_err());
        match r.get("cart").map(|r| r.name().to_string()) {
            Err(Error::UnknownReconciler { name, known }) => {
                assert_eq!(name, "cart");
                assert_eq!(known, vec!["keep-siblings", "last-write-wins"]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
