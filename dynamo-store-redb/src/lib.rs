//! A [`Store`] for dynamo-core over [redb](https://docs.rs/redb), the
//! embedded default engine.
//!
//! A [`RedbStore`] keeps one redb file, `dynamo.redb`, in the directory it
//! is opened on, with one redb table per [`Table`] (named after
//! [`Table::name`], `&[u8] -> &[u8]`). Every [`Store::write`] is exactly one
//! redb write transaction and one commit: core's group commit already
//! merges concurrent writers into one batch, so this crate adds no
//! batching of its own. Reads run in a redb read transaction, a consistent
//! snapshot that never blocks on or is blocked by the writer. What an
//! acknowledged write survives in each [`Durability`] mode is set out on
//! [`RedbStore`].
//!
//! ```
//! use dynamo_core::store::{Store, Table, WriteBatch};
//! use dynamo_store_redb::{RedbOptions, RedbStore};
//!
//! # fn main() -> Result<(), dynamo_core::store::StoreError> {
//! # let dir = tempfile::tempdir().unwrap();
//! let store = RedbStore::open(dir.path(), RedbOptions::default())?;
//! let mut batch = WriteBatch::new();
//! batch.put(Table::Data, &b"k1"[..], &b"v1"[..]);
//! batch.put(Table::Data, &b"k2"[..], &b"v2"[..]);
//! store.write(batch)?; // fsynced when it returns
//! assert_eq!(store.get(Table::Data, b"k1")?.as_deref(), Some(&b"v1"[..]));
//! assert_eq!(store.scan(Table::Data, b"k", None, 10)?.len(), 2);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod error;
mod options;

use std::fmt;
use std::ops::Bound;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use dynamo_core::store::{BatchOp, Durability, Store, StoreError, Table, WriteBatch};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

pub use crate::options::{RedbOptions, DEFAULT_BUFFERED_FLUSH_INTERVAL_MS, DEFAULT_CACHE_SIZE_BYTES};

/// Name of the redb file inside the store's directory.
pub const FILE_NAME: &str = "dynamo.redb";

type BytesTable = TableDefinition<'static, &'static [u8], &'static [u8]>;

const DATA: BytesTable = TableDefinition::new("data");
const HINTS: BytesTable = TableDefinition::new("hints");
const META: BytesTable = TableDefinition::new("meta");

fn definition(table: Table) -> BytesTable {
    match table {
        Table::Data => DATA,
        Table::Hints => HINTS,
        Table::Meta => META,
    }
}

/// What the store and its flusher thread share.
struct Shared {
    db: Database,
    /// The redb file.
    path: PathBuf,
    /// Whether a buffered (non-durable) commit was made since the last
    /// durable one.
    pending: AtomicBool,
    /// Held for a whole flush, so a flush that finds nothing pending
    /// returns only after a flush in progress elsewhere has committed.
    flushing: Mutex<()>,
}

impl Shared {
    /// Makes every commit so far durable with an empty durable commit, if
    /// a buffered one is pending.
    fn flush_pending(&self) -> Result<(), StoreError> {
        let _flushing = self.flushing.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.pending.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let result = self.durable_empty_commit();
        if result.is_err() {
            self.pending.store(true, Ordering::Release);
        }
        result
    }

    fn durable_empty_commit(&self) -> Result<(), StoreError> {
        let path = &self.path;
        let mut txn = self.db.begin_write().map_err(|e| error::transaction(path, "flush: begin", e))?;
        txn.set_durability(redb::Durability::Immediate).map_err(|e| error::durability("flush", e))?;
        txn.commit().map_err(|e| error::commit(path, "flush: commit", e))
    }
}

/// The thread that makes buffered writes durable periodically.
struct Flusher {
    /// Dropped to stop the thread.
    stop: mpsc::Sender<()>,
    handle: JoinHandle<()>,
}

impl Flusher {
    fn start(shared: Arc<Shared>, interval: Duration) -> Result<Flusher, StoreError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("redb-flush".to_owned())
            .spawn(move || loop {
                match stopped.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => {
                        if let Err(e) = shared.flush_pending() {
                            tracing::warn!(error = %e, "cannot make buffered writes durable; will retry");
                        }
                    }
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            })
            .map_err(|e| error::backend(format!("open: cannot start the flush thread: {e}")))?;
        Ok(Flusher { stop, handle })
    }
}

/// A [`Store`] in one redb file.
///
/// # Durability
///
/// Every [`Store::write`] is atomic in every mode: after a crash of the
/// process or of the machine, a batch is either wholly there or wholly
/// absent, and the file is consistent (redb checksums every commit and
/// rolls a torn one back when it reopens). What an acknowledged write
/// survives depends on [`RedbOptions::durability`]:
///
/// - [`Durability::Fsync`]: each commit is a redb durable commit
///   (`redb::Durability::Immediate`): the data and the new commit slot are
///   written and fsynced before `write` returns. An acknowledged write
///   survives a process crash (`SIGKILL`), a kernel crash and a power loss
///   (as far as the disk honours fsync).
/// - [`Durability::Buffered`]: each commit is a redb non-durable commit
///   (`redb::Durability::None`, the only non-durable mode redb 4.x has;
///   nothing is fsynced). The batch is visible at once to every later read
///   of this store, but it stays in this process's memory until a durable
///   commit follows: a background thread makes one (an empty durable
///   commit, one fsync) every [`RedbOptions::buffered_flush_interval_ms`]
///   when buffered writes are pending, [`RedbStore::flush`] makes one on
///   demand, and dropping the store makes one. A crash of the process
///   (even `SIGKILL`) or of the machine rolls the store back to the last
///   durable commit, consistently: **the buffered writes of up to about
///   one flush interval before the crash are lost**, each batch all or
///   nothing, never anything older. This is weaker than core's description
///   of `Buffered` ("a process crash loses nothing"): redb 4.x has no
///   commit mode that hands a commit to the OS without fsyncing it.
///
/// # Concurrency
///
/// Reads run concurrently with each other and with a write; writes are
/// serialised by redb (one write transaction at a time). A directory can
/// be open in one `RedbStore` at a time, in any process: redb locks the
/// file.
pub struct RedbStore {
    shared: Arc<Shared>,
    durability: Durability,
    /// Running with [`Durability::Buffered`] only.
    flusher: Option<Flusher>,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.shared.path)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the store in directory `dir`, creating the directory and an
    /// empty store if they do not exist. The file is `dir/dynamo.redb`; the
    /// three tables exist when this returns, so reads never fail for want
    /// of one. After an unclean shutdown, redb repairs the file first
    /// (reading all of it).
    ///
    /// # Errors
    /// - [`StoreError::Corrupt`] (with the file's path) when the file is
    ///   not a redb database, is damaged (a failed checksum, a malformed
    ///   page), was written by an incompatible redb file format, or holds a
    ///   table of the same name with other key/value types. Never a panic:
    ///   with [`RedbOptions::verify_on_open`] (the default) redb checks every
    ///   page before trusting it, and a panic inside redb while opening is
    ///   caught and reported as `Corrupt` too (under the default
    ///   `panic = "unwind"`).
    /// - [`StoreError::Backend`] when the directory or file cannot be
    ///   created or opened, when the store is already open (by another
    ///   `RedbStore` of this process or by another process), when
    ///   `buffered_flush_interval_ms` is 0, or on an I/O error.
    /// - [`StoreError::Full`] when the disk is full while the file is
    ///   created or repaired.
    pub fn open(dir: &Path, options: RedbOptions) -> Result<RedbStore, StoreError> {
        let interval = Duration::from_millis(options.buffered_flush_interval_ms);
        if options.durability == Durability::Buffered && interval.is_zero() {
            return Err(error::backend("open: buffered_flush_interval_ms must be at least 1".to_owned()));
        }
        std::fs::create_dir_all(dir).map_err(|e| {
            error::backend(format!("open: cannot create the store directory {}: {e}", dir.display()))
        })?;
        let path = dir.join(FILE_NAME);
        let db = match panic::catch_unwind(AssertUnwindSafe(|| open_database(&path, &options))) {
            Ok(opened) => opened?,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                return Err(error::corrupt(&path, format!("open: redb panicked reading the file: {what}")));
            }
        };
        let shared = Arc::new(Shared { db, path, pending: AtomicBool::new(false), flushing: Mutex::new(()) });
        let flusher = match options.durability {
            Durability::Fsync => None,
            Durability::Buffered => Some(Flusher::start(Arc::clone(&shared), interval)?),
        };
        tracing::debug!(path = %shared.path.display(), durability = ?options.durability, "opened redb store");
        Ok(RedbStore { shared, durability: options.durability, flusher })
    }

    /// The path of the redb file, `dir/dynamo.redb`.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The durability this store was opened with.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Makes every write acknowledged so far durable (one fsync), if a
    /// [`Durability::Buffered`] write is not yet. Does nothing with
    /// [`Durability::Fsync`], where every write already is.
    ///
    /// # Errors
    /// [`StoreError`] when the durable commit fails; the writes stay
    /// buffered and a later flush tries again.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.shared.flush_pending()
    }

    fn redb_durability(&self) -> redb::Durability {
        match self.durability {
            Durability::Fsync => redb::Durability::Immediate,
            Durability::Buffered => redb::Durability::None,
        }
    }
}

/// Opens or creates the redb file and its three tables (one durable commit).
fn open_database(path: &Path, options: &RedbOptions) -> Result<Database, StoreError> {
    let db = Database::builder()
        .set_cache_size(options.cache_size_bytes)
        .set_check_integrity_on_open(options.verify_on_open)
        .create(path)
        .map_err(|e| error::open(path, e))?;
    let txn = db.begin_write().map_err(|e| error::transaction(path, "open: begin", e))?;
    for table in Table::ALL {
        txn.open_table(definition(table))
            .map_err(|e| error::table(path, &format!("open: table {}", table.name()), e))?;
    }
    txn.commit().map_err(|e| error::commit(path, "open: commit", e))?;
    Ok(db)
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        if let Some(Flusher { stop, handle }) = self.flusher.take() {
            drop(stop);
            if handle.join().is_err() {
                tracing::error!(path = %self.shared.path.display(), "the redb flush thread panicked");
            }
        }
        // redb would make pending buffered commits durable when the
        // database closes too, but silently: do it here to log a failure.
        if let Err(e) = self.shared.flush_pending() {
            tracing::error!(error = %e, "buffered writes could not be made durable at close; they are lost");
        }
    }
}

impl Store for RedbStore {
    /// Makes buffered writes durable now (one durable commit); a no-op
    /// cost in `Fsync` mode, where every write already is.
    ///
    /// # Errors
    /// As [`RedbStore::flush`].
    fn flush(&self) -> Result<(), StoreError> {
        RedbStore::flush(self)
    }

    /// Reads `key` of `table` in a read transaction, copying the value out.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when a page read fails its check,
    /// [`StoreError::Backend`] on an I/O error.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        let path = &self.shared.path;
        let what = || format!("get from table {}", table.name());
        let txn = self.shared.db.begin_read().map_err(|e| error::transaction(path, &what(), e))?;
        let t = txn.open_table(definition(table)).map_err(|e| error::table(path, &what(), e))?;
        // The trait's method, whose guard borrows the table (and so the
        // transaction), rather than `ReadOnlyTable`'s inherent one.
        let value = ReadableTable::get(&t, key).map_err(|e| error::storage(path, &what(), e))?;
        Ok(value.map(|v| Bytes::copy_from_slice(v.value())))
    }

    /// Applies `batch` in one redb write transaction and one commit, of the
    /// durability the store was opened with (see [`RedbStore`]). An empty
    /// batch returns `Ok` without a transaction.
    ///
    /// # Errors
    /// [`StoreError::Full`] when the disk is full, [`StoreError::Corrupt`]
    /// when a page read fails its check, [`StoreError::Backend`] on an I/O
    /// error or a key or value over redb's limit (3 GiB). Nothing of the
    /// batch is applied then.
    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let path = &self.shared.path;
        let mut txn =
            self.shared.db.begin_write().map_err(|e| error::transaction(path, "write: begin", e))?;
        txn.set_durability(self.redb_durability()).map_err(|e| error::durability("write", e))?;
        {
            // Each table is opened on first use, and stays open for the rest
            // of the batch. On an error the transaction is dropped: aborted.
            let mut tables: [Option<redb::Table<'_, &[u8], &[u8]>>; 3] = [None, None, None];
            for op in batch.ops() {
                let (table, key) = match op {
                    BatchOp::Put { table, key, .. } | BatchOp::Delete { table, key } => (*table, key),
                };
                let slot = &mut tables[table.index()];
                let t = match slot {
                    Some(t) => t,
                    None => slot.insert(txn.open_table(definition(table)).map_err(|e| {
                        error::table(path, &format!("write: open table {}", table.name()), e)
                    })?),
                };
                match op {
                    BatchOp::Put { value, .. } => {
                        t.insert(&key[..], &value[..]).map_err(|e| {
                            error::storage(path, &format!("write: put into table {}", table.name()), e)
                        })?;
                    }
                    BatchOp::Delete { .. } => {
                        t.remove(&key[..]).map_err(|e| {
                            error::storage(path, &format!("write: delete from table {}", table.name()), e)
                        })?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| error::commit(path, "commit", e))?;
        if self.durability == Durability::Buffered {
            self.shared.pending.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Returns up to `limit` entries with `start <= key < end`, ascending,
    /// all read in one read transaction (one consistent snapshot).
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when a page read fails its check,
    /// [`StoreError::Backend`] on an I/O error.
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
        let path = &self.shared.path;
        let what = || format!("scan table {}", table.name());
        let txn = self.shared.db.begin_read().map_err(|e| error::transaction(path, &what(), e))?;
        let t = txn.open_table(definition(table)).map_err(|e| error::table(path, &what(), e))?;
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) =
            (Bound::Included(start), end.map_or(Bound::Unbounded, Bound::Excluded));
        let range =
            ReadableTable::range::<&[u8]>(&t, bounds).map_err(|e| error::storage(path, &what(), e))?;
        let mut out = Vec::with_capacity(limit.min(256));
        for entry in range.take(limit) {
            let (k, v) = entry.map_err(|e| error::storage(path, &what(), e))?;
            out.push((Bytes::copy_from_slice(k.value()), Bytes::copy_from_slice(v.value())));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
