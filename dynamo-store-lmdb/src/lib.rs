//! A [`Store`] for dynamo-core over [LMDB](http://www.lmdb.tech/doc/),
//! through the [`heed`] crate.
//!
//! One store is one LMDB environment in a directory (`data.mdb` and
//! `lock.mdb`), with one named database per [`Table`] (`data`, `hints`,
//! `meta`). A [`WriteBatch`] is one LMDB write transaction and one commit,
//! so it is atomic; core already combines concurrent writers' batches into
//! one `write` call (group commit). Reads run in LMDB read transactions,
//! which never block writers nor each other, and a scan sees one snapshot.
//!
//! What an acknowledged write survives is set by
//! [`LmdbOptions::durability`]: a process crash never loses one; with
//! [`Durability::Buffered`] an OS crash or power loss may lose the last
//! ones.
//!
//! # Limits
//! - **Size**: the store holds at most [`LmdbOptions::map_size_bytes`]
//!   (default 1 GiB). Past it, writes fail with [`StoreError::Full`] and
//!   nothing of the batch is applied; reads go on working.
//! - **Keys**: 0 to [`LmdbStore::max_key_size`] bytes (1982 with 4 KiB
//!   pages; LMDB is built with `longer-keys`), enough for core's keys at
//!   its default `max_key_len` of 1024. Longer keys are refused with
//!   [`StoreError::Backend`]. Values may be up to 4 GiB.
//! - **One opener per directory** in a process: opening a directory that
//!   is already open fails with [`StoreError::Backend`] saying so.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//!
//! use dynamo_core::store::{Durability, Store, Table, WriteBatch};
//! use dynamo_store_lmdb::{LmdbOptions, LmdbStore};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let options = LmdbOptions { durability: Durability::Fsync, ..LmdbOptions::default() };
//! let store: Arc<dyn Store> = Arc::new(LmdbStore::open(dir.path(), options)?);
//!
//! let mut batch = WriteBatch::new();
//! batch.put(Table::Data, &b"\0\0\0\x07apple"[..], &b"red"[..]);
//! batch.put(Table::Data, &b"\0\0\0\x07pear"[..], &b"green"[..]);
//! store.write(batch)?;
//!
//! assert_eq!(store.get(Table::Data, b"\0\0\0\x07pear")?.as_deref(), Some(&b"green"[..]));
//! // Partition 7, in key order.
//! let rows = store.scan(Table::Data, &7u32.to_be_bytes(), Some(&8u32.to_be_bytes()), 100)?;
//! assert_eq!(rows.len(), 2);
//! assert_eq!(&rows[0].1[..], b"red");
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod error;
mod options;
mod readers;

use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use dynamo_core::store::{BatchOp, Durability, Store, StoreError, Table, WriteBatch};
use heed::types::Bytes as RawBytes;
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions, RoTxn, WithoutTls};

use crate::error::ErrorContext;
pub use crate::options::{LmdbOptions, DEFAULT_MAP_SIZE_BYTES, DEFAULT_MAX_READERS};
use crate::readers::ReaderGate;

/// A database of raw bytes, valid as long as the environment is open.
type RawDb = Database<'static, RawBytes, RawBytes>;

/// The database holding the value of the empty key of each table, keyed
/// by table name: LMDB cannot store a zero-length key. Its name cannot
/// clash with a table's.
const EMPTY_KEYS_DB: &str = "empty-keys";

/// Named databases: one per table, plus [`EMPTY_KEYS_DB`].
const MAX_DBS: u32 = Table::ALL.len() as u32 + 1;

/// A [`Store`] kept in an LMDB environment.
///
/// Cheap to share behind an `Arc`: every method takes `&self` and may be
/// called from any number of threads. Writers are serialised by LMDB's
/// write lock; readers run in parallel, up to
/// [`LmdbOptions::max_readers`] at once (more wait for a slot).
///
/// Dropping the store closes the environment; with
/// [`Durability::Buffered`] it first flushes everything to disk.
pub struct LmdbStore {
    env: Env<WithoutTls>,
    /// Indexed by [`Table::index`].
    tables: [RawDb; 3],
    empty_keys: RawDb,
    readers: ReaderGate,
    errors: ErrorContext,
    dir: PathBuf,
    durability: Durability,
    max_key_size: usize,
}

impl fmt::Debug for LmdbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LmdbStore")
            .field("dir", &self.dir)
            .field("durability", &self.durability)
            .field("map_size", &self.errors.map_size)
            .field("max_readers", &self.errors.max_readers)
            .finish_non_exhaustive()
    }
}

impl LmdbStore {
    /// Opens the store in directory `dir`, creating the directory and an
    /// empty store if needed.
    ///
    /// [`LmdbOptions::map_size_bytes`] is rounded up to a multiple of the
    /// OS page size. A store may be reopened with other options (e.g. a
    /// larger map or another durability).
    ///
    /// # Errors
    /// - [`StoreError::Corrupt`] (with `path` = `dir`) when the files in
    ///   `dir` are not an LMDB environment (e.g. `data.mdb` holds foreign
    ///   bytes) or one whose tables cannot be opened.
    /// - [`StoreError::Full`] when even the empty tables do not fit the map.
    /// - [`StoreError::Backend`] when the options are invalid
    ///   (`map_size_bytes` of 0, `max_readers` of 0), `dir` cannot be
    ///   created or opened, or `dir` is already open in this process (one
    ///   directory is one store: share the open [`LmdbStore`] instead).
    pub fn open(dir: &Path, options: LmdbOptions) -> Result<LmdbStore, StoreError> {
        let page = page_size::get();
        let map_size = options::round_up_to_page(options.map_size_bytes, page);
        let errors = ErrorContext::new(dir, map_size.unwrap_or(usize::MAX), options.max_readers);
        let map_size = match map_size {
            Some(0) => return Err(errors.backend("invalid option: `map_size_bytes` must be greater than 0")),
            Some(size) => size,
            None => {
                return Err(errors.backend(format!(
                    "invalid option: `map_size_bytes` of {} cannot be rounded up to a multiple of the \
                     page size ({page} bytes)",
                    options.map_size_bytes
                )))
            }
        };
        if options.max_readers == 0 {
            return Err(errors.backend("invalid option: `max_readers` must be at least 1"));
        }
        std::fs::create_dir_all(dir).map_err(|e| {
            errors.backend(format!("cannot create the store directory {}: {e}", dir.display()))
        })?;

        let mut builder = EnvOpenOptions::new().read_txn_without_tls();
        builder.map_size(map_size).max_readers(options.max_readers).max_dbs(MAX_DBS);
        if options.durability == Durability::Buffered {
            // SAFETY: `NO_SYNC` is "unsafe" in heed only because it trades
            // durability: commits are not flushed, so an OS crash or power
            // loss may lose recent commits (and, with a disk that reorders
            // writes, damage the file). That is exactly what
            // `Durability::Buffered` documents; memory safety is not at
            // stake.
            unsafe {
                builder.flags(EnvFlags::NO_SYNC);
            }
        }
        // SAFETY: LMDB maps `data.mdb` into memory, and heed hands out
        // slices of that map; they would be invalid if the file were
        // changed other than through LMDB while open. The argument:
        // - the directory belongs to this store alone (it is the node's
        //   data directory); nothing but LMDB writes its files;
        // - within this process, heed refuses to open the same
        //   environment twice (we report that as an error), so there is
        //   one `Env` per file; every access goes through it;
        // - LMDB's lock file is kept (no `NO_LOCK`), so even another
        //   process using LMDB on the directory is synchronised, and no
        //   write transaction ever frees pages a reader still maps;
        // - slices never outlive their transaction: `get` and `scan` copy
        //   into `Bytes` before the transaction ends.
        // A file that is damaged or foreign at open is rejected by LMDB's
        // header checks (MDB_INVALID / MDB_VERSION_MISMATCH) rather than
        // mapped blindly. LMDB has no page checksums, so damage inside an
        // otherwise valid file is not detected; that is LMDB's limit.
        let env = unsafe { builder.open(dir) }.map_err(|e| errors.heed("open the LMDB environment", e))?;

        // A process killed inside a read transaction leaves its reader
        // slot taken; free such slots so they neither count against
        // `max_readers` nor pin old pages.
        match env.clear_stale_readers() {
            Ok(0) => {}
            Ok(n) => tracing::info!(dir = %dir.display(), stale = n, "lmdb: cleared stale reader slots"),
            Err(e) => return Err(errors.heed("clear stale reader slots", e)),
        }

        let wtxn =
            env.write_txn().map_err(|e| errors.heed("begin the write transaction creating the tables", e))?;
        let created = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> heed::Result<_> {
                let [data, hints, meta] =
                    Table::ALL.map(|t| opener.create_database::<RawBytes, RawBytes>(wtxn, Some(t.name())));
                let empty = opener.create_database::<RawBytes, RawBytes>(wtxn, Some(EMPTY_KEYS_DB));
                Ok(CommitOrAbort::<_, ()>::Commit([data?, hints?, meta?, empty?]))
            })
            .map_err(|e| errors.heed("create or open the tables", e))?;
        let [data, hints, meta, empty_keys] = match created {
            CommitOrAbort::Commit(dbs) => dbs,
            CommitOrAbort::Abort(()) => return Err(errors.backend("creating the tables was aborted")),
        };
        let max_key_size = env.max_key_size();
        tracing::debug!(
            dir = %dir.display(),
            map_size,
            max_readers = options.max_readers,
            durability = ?options.durability,
            max_key_size,
            "lmdb: store open"
        );
        Ok(LmdbStore {
            env,
            tables: [data, hints, meta],
            empty_keys,
            readers: ReaderGate::new(options.max_readers),
            errors,
            dir: dir.to_path_buf(),
            durability: options.durability,
            max_key_size,
        })
    }

    /// Flushes every committed write to stable storage. Only useful with
    /// [`Durability::Buffered`] (with [`Durability::Fsync`] every commit is
    /// already flushed); the store also does this when dropped.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the flush fails.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.env.force_sync().map_err(|e| self.errors.heed("flush the environment to disk", e))
    }

    /// The store's directory, as given to [`LmdbStore::open`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The longest key, in bytes, this store accepts (LMDB's limit; keys
    /// may also be empty).
    pub fn max_key_size(&self) -> usize {
        self.max_key_size
    }

    /// The map size in effect: the most bytes the store can hold.
    pub fn map_size(&self) -> usize {
        self.env.info().map_size
    }

    fn read_txn(&self) -> Result<RoTxn<'_, WithoutTls>, StoreError> {
        self.env.read_txn().map_err(|e| self.errors.heed("begin a read transaction", e))
    }

    fn get_in(&self, rtxn: &RoTxn<'_, WithoutTls>, table: Table, key: &[u8]) -> heed::Result<Option<Bytes>> {
        let found = if key.is_empty() {
            self.empty_keys.get(rtxn, table.name().as_bytes())?
        } else {
            self.tables[table.index()].get(rtxn, key)?
        };
        Ok(found.map(Bytes::copy_from_slice))
    }

    fn check_key(&self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        if key.len() > self.max_key_size {
            return Err(self.errors.backend(format!(
                "a key of {} bytes for table `{}` is longer than LMDB's maximum of {} bytes; \
                 nothing of the batch was applied",
                key.len(),
                table.name(),
                self.max_key_size
            )));
        }
        Ok(())
    }
}

impl Store for LmdbStore {
    /// Forces buffered (`NO_SYNC`) commits to disk now.
    ///
    /// # Errors
    /// As [`LmdbStore::sync`].
    fn flush(&self) -> Result<(), StoreError> {
        self.sync()
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        let _slot = self.readers.enter();
        let rtxn = self.read_txn()?;
        self.get_in(&rtxn, table, key)
            .map_err(|e| self.errors.heed(&format!("read a key of table `{}`", table.name()), e))
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        for op in batch.ops() {
            let (BatchOp::Put { table, key, .. } | BatchOp::Delete { table, key }) = op;
            self.check_key(*table, key)?;
        }
        let mut wtxn = self.env.write_txn().map_err(|e| self.errors.heed("begin a write transaction", e))?;
        // An error returns early and drops `wtxn`, which aborts it: nothing
        // of the batch is applied.
        for op in batch.ops() {
            let result = match op {
                BatchOp::Put { table, key, value } if key.is_empty() => {
                    self.empty_keys.put(&mut wtxn, table.name().as_bytes(), value)
                }
                BatchOp::Put { table, key, value } => self.tables[table.index()].put(&mut wtxn, key, value),
                BatchOp::Delete { table, key } if key.is_empty() => {
                    self.empty_keys.delete(&mut wtxn, table.name().as_bytes()).map(drop)
                }
                BatchOp::Delete { table, key } => self.tables[table.index()].delete(&mut wtxn, key).map(drop),
            };
            if let Err(e) = result {
                let (verb, table) = match op {
                    BatchOp::Put { table, .. } => ("put", table),
                    BatchOp::Delete { table, .. } => ("delete", table),
                };
                return Err(self.errors.heed(&format!("{verb} a key in table `{}`", table.name()), e));
            }
        }
        wtxn.commit().map_err(|e| self.errors.heed("commit a write transaction", e))
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, StoreError> {
        if limit == 0 || end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        let what = || format!("scan table `{}`", table.name());
        let _slot = self.readers.enter();
        let rtxn = self.read_txn()?;
        let mut rows = Vec::with_capacity(limit.min(256));
        let lower = if start.is_empty() {
            // The empty key sorts first, and LMDB cannot seek to it.
            if let Some(value) = self.get_in(&rtxn, table, b"").map_err(|e| self.errors.heed(&what(), e))? {
                rows.push((Bytes::new(), value));
            }
            Bound::Unbounded
        } else {
            Bound::Included(start)
        };
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        let range = self.tables[table.index()]
            .range(&rtxn, &(lower, upper))
            .map_err(|e| self.errors.heed(&what(), e))?;
        for row in range {
            if rows.len() >= limit {
                break;
            }
            let (key, value) = row.map_err(|e| self.errors.heed(&what(), e))?;
            rows.push((Bytes::copy_from_slice(key), Bytes::copy_from_slice(value)));
        }
        Ok(rows)
    }
}

impl Drop for LmdbStore {
    fn drop(&mut self) {
        if self.durability == Durability::Buffered {
            if let Err(e) = self.sync() {
                tracing::error!(dir = %self.dir.display(), error = %e, "lmdb: flush on close failed");
            }
        }
    }
}

#[cfg(test)]
mod tests;
