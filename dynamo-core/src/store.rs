//! The storage plugin point: a synchronous, durable byte key-value engine.
//!
//! A [`Store`] knows nothing of siblings, partitions or hints: it keeps
//! bytes in three named [`Table`]s, applies [`WriteBatch`]es atomically and
//! scans key ranges in order. Core encodes everything it stores, so a new
//! engine is a thin adapter. [`MemStore`] is the in-memory engine used by
//! tests and benchmarks.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{PoisonError, RwLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The named tables every store provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Table {
    /// Replicated key states, keyed by partition number then user key.
    Data,
    /// Writes held for an unreachable owner (hinted handoff).
    Hints,
    /// Node-local bookkeeping (epochs and the like).
    Meta,
}

impl Table {
    /// Every table, in a fixed order.
    pub const ALL: [Table; 3] = [Table::Data, Table::Hints, Table::Meta];

    /// The table's stable name, usable as an on-disk table name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Data => "data",
            Table::Hints => "hints",
            Table::Meta => "meta",
        }
    }

    /// Index of the table in [`Table::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// How durable an acknowledged write is, for stores that write to disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every batch is flushed to stable storage (fsync) before
    /// [`Store::write`] returns. Group commit shares one flush among
    /// many concurrent writers.
    #[default]
    Fsync,
    /// Batches are flushed to stable storage periodically rather than one
    /// by one: much faster, but a crash may lose the most recent
    /// acknowledged writes (with redb, those since its last checkpoint, on
    /// an OS crash or power loss, or even on a process crash when its
    /// write-ahead log is off; with LMDB, only on an OS crash or power
    /// loss). A store never corrupts or half-applies a batch in this mode;
    /// the cluster's N replicas cover the lost window.
    Buffered,
}

/// One operation of a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Set `key` to `value` in `table`.
    Put {
        /// The table written.
        table: Table,
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
    },
    /// Remove `key` from `table` (no error if absent).
    Delete {
        /// The table written.
        table: Table,
        /// The key.
        key: Bytes,
    },
}

impl BatchOp {
    /// The table the operation writes.
    pub fn table(&self) -> Table {
        match self {
            BatchOp::Put { table, .. } | BatchOp::Delete { table, .. } => *table,
        }
    }
}

/// Operations applied all together or not at all, in order (a later
/// operation on the same key wins).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        WriteBatch::default()
    }

    /// Appends a put.
    pub fn put(&mut self, table: Table, key: impl Into<Bytes>, value: impl Into<Bytes>) {
        self.ops.push(BatchOp::Put { table, key: key.into(), value: value.into() });
    }

    /// Appends a delete.
    pub fn delete(&mut self, table: Table, key: impl Into<Bytes>) {
        self.ops.push(BatchOp::Delete { table, key: key.into() });
    }

    /// Appends every operation of `other`, after this batch's own.
    pub fn append(&mut self, other: WriteBatch) {
        self.ops.extend(other.ops);
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operations, in order.
    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    /// Consumes the batch into its operations.
    pub fn into_ops(self) -> Vec<BatchOp> {
        self.ops
    }
}

/// Why a store operation failed. Carries the engine's name so a user
/// knows which backend to look at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StoreError {
    /// The engine reported an I/O or internal failure.
    #[error("{backend} store: {message}")]
    Backend {
        /// The engine, e.g. `"redb"`.
        backend: String,
        /// The engine's message.
        message: String,
    },
    /// The store is full (e.g. LMDB's map size reached).
    #[error("{backend} store is full: {message}")]
    Full {
        /// The engine.
        backend: String,
        /// What limit was reached and how to raise it.
        message: String,
    },
    /// The files are not a store of this engine, or are damaged.
    #[error("{backend} store at {path} is corrupt or foreign: {message}")]
    Corrupt {
        /// The engine.
        backend: String,
        /// The store's location.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// A synchronous, thread-safe byte key-value engine with named tables.
///
/// Calls may block on disk: core runs them off the async workers unless
/// [`Store::is_blocking`] says they never block. Every method must be safe
/// to call from many threads at once.
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    ///
    /// # Errors
    /// [`StoreError`] when the engine fails.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Bytes>, StoreError>;

    /// Applies `batch` atomically: after a crash either every operation is
    /// visible or none is. When this returns `Ok`, the batch is as durable
    /// as the store's configured durability promises.
    ///
    /// # Errors
    /// [`StoreError`] when the engine fails; nothing of the batch is applied.
    fn write(&self, batch: WriteBatch) -> Result<(), StoreError>;

    /// Returns up to `limit` entries of `table` with `start <= key < end`
    /// (`end = None`: to the end of the table), in ascending key order.
    ///
    /// # Errors
    /// [`StoreError`] when the engine fails.
    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, StoreError>;

    /// Makes every write acknowledged so far durable now, whatever the
    /// store's [`Durability`]; the server calls it on graceful shutdown.
    /// Stores that are always durable (or never) keep the default no-op.
    ///
    /// # Errors
    /// [`StoreError`] when the engine cannot flush.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether calls may block on I/O. Core calls a store that answers
    /// `false` directly on async worker threads.
    fn is_blocking(&self) -> bool {
        true
    }
}

/// An in-memory [`Store`]: ordered maps behind one lock, so batches are
/// atomic. Not durable; for tests, benchmarks and simulations.
#[derive(Debug, Default)]
pub struct MemStore {
    tables: RwLock<[BTreeMap<Bytes, Bytes>; 3]>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        MemStore::default()
    }

    /// Number of keys in `table`.
    pub fn len(&self, table: Table) -> usize {
        self.tables.read().unwrap_or_else(PoisonError::into_inner)[table.index()].len()
    }
}

impl Store for MemStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        let tables = self.tables.read().unwrap_or_else(PoisonError::into_inner);
        Ok(tables[table.index()].get(key).cloned())
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut tables = self.tables.write().unwrap_or_else(PoisonError::into_inner);
        for op in batch.into_ops() {
            match op {
                BatchOp::Put { table, key, value } => {
                    tables[table.index()].insert(key, value);
                }
                BatchOp::Delete { table, key } => {
                    tables[table.index()].remove(&key);
                }
            }
        }
        Ok(())
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, StoreError> {
        let tables = self.tables.read().unwrap_or_else(PoisonError::into_inner);
        let upper = match end {
            Some(e) => Bound::Excluded(e),
            None => Bound::Unbounded,
        };
        if matches!(upper, Bound::Excluded(e) if e <= start) {
            return Ok(Vec::new());
        }
        Ok(tables[table.index()]
            .range::<[u8], _>((Bound::Included(start), upper))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn is_blocking(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_applies_in_order_and_scan_is_ordered() {
        let s = MemStore::new();
        let mut b = WriteBatch::new();
        b.put(Table::Data, &b"b"[..], &b"1"[..]);
        b.put(Table::Data, &b"a"[..], &b"2"[..]);
        b.put(Table::Data, &b"c"[..], &b"3"[..]);
        b.delete(Table::Data, &b"c"[..]);
        b.put(Table::Hints, &b"a"[..], &b"h"[..]);
        s.write(b).unwrap();
        let all = s.scan(Table::Data, b"", None, 10).unwrap();
        let keys: Vec<&[u8]> = all.iter().map(|(k, _)| &k[..]).collect();
        assert_eq!(keys, vec![&b"a"[..], &b"b"[..]]);
        assert_eq!(s.get(Table::Hints, b"a").unwrap().unwrap(), &b"h"[..]);
        assert_eq!(s.get(Table::Meta, b"a").unwrap(), None);
        assert_eq!(s.scan(Table::Data, b"b", Some(b"a"), 10).unwrap(), vec![]);
        assert_eq!(s.scan(Table::Data, b"a", Some(b"b"), 10).unwrap().len(), 1);
        assert_eq!(s.scan(Table::Data, b"", None, 1).unwrap().len(), 1);
    }
}
