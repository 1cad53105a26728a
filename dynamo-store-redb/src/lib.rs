//! A [`Store`] for dynamo-core over [redb](https://docs.rs/redb), the
//! embedded default engine.
//!
//! A [`RedbStore`] keeps one redb file, `dynamo.redb`, in the directory it
//! is opened on, with one redb table per [`Table`] (named after
//! [`Table::name`], `&[u8] -> &[u8]`), and a write-ahead log,
//! `dynamo.wal`, beside it. Every [`Store::write`] is exactly one record of
//! the log and one redb write transaction: core's group commit already
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
mod wal;

use std::fmt;
use std::ops::Bound;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use dynamo_core::store::{BatchOp, Durability, Store, StoreError, Table, WriteBatch};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

pub use crate::options::{
    RedbOptions, DEFAULT_CACHE_SIZE_BYTES, DEFAULT_CHECKPOINT_INTERVAL_MS, DEFAULT_WAL_BYTES,
};
use crate::wal::Wal;
pub use crate::wal::WAL_FILE_NAME;

/// Name of the redb file inside the store's directory.
pub const FILE_NAME: &str = "dynamo.redb";

type BytesTable = TableDefinition<'static, &'static [u8], &'static [u8]>;

const DATA: BytesTable = TableDefinition::new("data");
const HINTS: BytesTable = TableDefinition::new("hints");
const META: BytesTable = TableDefinition::new("meta");
/// This crate's own bookkeeping: the last checkpoint's sequence number.
const WAL_STATE: TableDefinition<'static, &'static str, u64> = TableDefinition::new("wal");
const CHECKPOINT_KEY: &str = "checkpoint";

fn definition(table: Table) -> BytesTable {
    match table {
        Table::Data => DATA,
        Table::Hints => HINTS,
        Table::Meta => META,
    }
}

/// What the store and its background thread share.
struct Shared {
    db: Database,
    /// The redb file.
    path: PathBuf,
    /// The write-ahead log, unless [`RedbOptions::wal_bytes`] is 0.
    wal: Option<Mutex<Wal>>,
    /// Without the log: whether a buffered (non-durable) commit was made
    /// since the last durable one.
    pending: AtomicBool,
    /// Without the log: held for a whole flush, so a flush that finds
    /// nothing pending returns only after a flush in progress elsewhere
    /// has committed.
    flushing: Mutex<()>,
}

impl Shared {
    fn lock_wal<'a>(wal: &'a Mutex<Wal>) -> MutexGuard<'a, Wal> {
        wal.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes every commit so far durable in the redb file: a checkpoint
    /// with the log, an empty durable commit without it; nothing when
    /// nothing is pending.
    fn flush(&self) -> Result<(), StoreError> {
        if let Some(wal) = &self.wal {
            let mut wal = Shared::lock_wal(wal);
            return if wal.has_pending() { self.checkpoint(&mut wal) } else { Ok(()) };
        }
        let _flushing = self.flushing.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.pending.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let result = self.commit(&[], redb::Durability::Immediate, None, "flush");
        if result.is_err() {
            self.pending.store(true, Ordering::Release);
        }
        result
    }

    /// One durable commit recording that every logged record is in the
    /// redb file; the log is then written from its start again.
    fn checkpoint(&self, wal: &mut Wal) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let records = wal.pending_records();
        self.commit(&[], redb::Durability::Immediate, Some(wal.covered_seq()), "checkpoint")?;
        wal.checkpointed();
        tracing::debug!(
            path = %self.path.display(), records, micros = started.elapsed().as_micros() as u64,
            "checkpointed the write-ahead log"
        );
        Ok(())
    }

    /// Applies `ops` in one redb write transaction of `durability`, also
    /// recording `checkpoint` as the last sequence number of the log the
    /// file holds. `what` names the operation in errors.
    fn commit(
        &self,
        ops: &[BatchOp],
        durability: redb::Durability,
        checkpoint: Option<u64>,
        what: &str,
    ) -> Result<(), StoreError> {
        let path = &self.path;
        let mut txn =
            self.db.begin_write().map_err(|e| error::transaction(path, &format!("{what}: begin"), e))?;
        txn.set_durability(durability).map_err(|e| error::durability(what, e))?;
        {
            // Each table is opened on first use, and stays open for the rest
            // of the batch. On an error the transaction is dropped: aborted.
            let mut tables: [Option<redb::Table<'_, &[u8], &[u8]>>; 3] = [None, None, None];
            for op in ops {
                let (table, key) = match op {
                    BatchOp::Put { table, key, .. } | BatchOp::Delete { table, key } => (*table, key),
                };
                let slot = &mut tables[table.index()];
                let t = match slot {
                    Some(t) => t,
                    None => slot.insert(txn.open_table(definition(table)).map_err(|e| {
                        error::table(path, &format!("{what}: open table {}", table.name()), e)
                    })?),
                };
                match op {
                    BatchOp::Put { value, .. } => {
                        t.insert(&key[..], &value[..]).map_err(|e| {
                            error::storage(path, &format!("{what}: put into table {}", table.name()), e)
                        })?;
                    }
                    BatchOp::Delete { .. } => {
                        t.remove(&key[..]).map_err(|e| {
                            error::storage(path, &format!("{what}: delete from table {}", table.name()), e)
                        })?;
                    }
                }
            }
            if let Some(seq) = checkpoint {
                let mut state = txn
                    .open_table(WAL_STATE)
                    .map_err(|e| error::table(path, &format!("{what}: open table wal"), e))?;
                state
                    .insert(CHECKPOINT_KEY, seq)
                    .map_err(|e| error::storage(path, &format!("{what}: record the checkpoint"), e))?;
            }
        }
        txn.commit().map_err(|e| error::commit(path, &format!("{what}: commit"), e))
    }
}

/// The thread that checkpoints (or, without the log, makes buffered writes
/// durable) periodically.
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
                        if let Err(e) = shared.flush() {
                            tracing::warn!(error = %e, "cannot checkpoint the redb store; will retry");
                        }
                    }
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            })
            .map_err(|e| error::backend(format!("open: cannot start the flush thread: {e}")))?;
        Ok(Flusher { stop, handle })
    }
}

/// A [`Store`] in one redb file and a write-ahead log beside it.
///
/// # Durability
///
/// Every [`Store::write`] is atomic in every mode: after a crash of the
/// process or of the machine, a batch is either wholly there or wholly
/// absent, and the store is consistent (redb checksums every commit and
/// rolls a torn one back when it reopens; the log checksums every record
/// and ends at the first torn one). What an acknowledged write survives
/// depends on [`RedbOptions::durability`]:
///
/// - [`Durability::Fsync`]: the batch's record is appended to the
///   write-ahead log (`dynamo.wal`) and `fdatasync`ed, then the batch is
///   committed to redb without an fsync, before `write` returns. An
///   acknowledged write survives a process crash (`SIGKILL`), a kernel
///   crash and a power loss (as far as the disk honours fsync): reopening
///   replays the log. This costs one small append and sync per group
///   commit instead of a durable redb commit, which rewrites and syncs
///   every page the batch touched.
/// - [`Durability::Buffered`]: the same, without the `fdatasync`: the
///   record is handed to the operating system. **A process crash (even
///   `SIGKILL`) loses nothing; a kernel crash or power loss loses the
///   writes since the last checkpoint**, up to about one
///   [`RedbOptions::checkpoint_interval_ms`], each batch all or nothing,
///   never anything older.
///
/// A checkpoint (one durable redb commit) runs every
/// `checkpoint_interval_ms` when writes are pending, when the log reaches
/// [`RedbOptions::wal_bytes`], on [`RedbStore::flush`] and when the store
/// is dropped; it bounds the log, and so the time a reopen spends
/// replaying it.
///
/// With `wal_bytes = 0` there is no log: each `Fsync` write is a durable
/// redb commit, and each `Buffered` write a non-durable one that even a
/// process crash loses until the next checkpoint (redb 4.x has no commit
/// mode that hands a commit to the OS without fsyncing it).
///
/// # Concurrency
///
/// Reads run concurrently with each other and with a write; writes are
/// serialised (one at a time). A directory can be open in one `RedbStore`
/// at a time, in any process: redb locks the file.
pub struct RedbStore {
    shared: Arc<Shared>,
    durability: Durability,
    /// Running with the log or with [`Durability::Buffered`].
    flusher: Option<Flusher>,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.shared.path)
            .field("durability", &self.durability)
            .field("wal", &self.shared.wal.is_some())
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the store in directory `dir`, creating the directory and an
    /// empty store if they do not exist. The files are `dir/dynamo.redb`
    /// and `dir/dynamo.wal`; the three tables exist when this returns, so
    /// reads never fail for want of one. After an unclean shutdown, redb
    /// repairs the file first (reading all of it), then the records of the
    /// write-ahead log after the last checkpoint are applied and
    /// checkpointed. A log left by a store opened with the log is replayed
    /// even when this one runs without it (`wal_bytes = 0`), and then
    /// removed.
    ///
    /// # Errors
    /// - [`StoreError::Corrupt`] (with the file's path) when the file is
    ///   not a redb database, is damaged (a failed checksum, a malformed
    ///   page), was written by an incompatible redb file format, or holds a
    ///   table of the same name with other key/value types; or when a
    ///   record of the log checks out but does not decode. Never a panic:
    ///   with [`RedbOptions::verify_on_open`] (the default) redb checks every
    ///   page before trusting it, and a panic inside redb while opening is
    ///   caught and reported as `Corrupt` too (under the default
    ///   `panic = "unwind"`).
    /// - [`StoreError::Backend`] when the directory or a file cannot be
    ///   created or opened, when the store is already open (by another
    ///   `RedbStore` of this process or by another process), when
    ///   `checkpoint_interval_ms` is 0 while a checkpoint thread is needed
    ///   (with the log, or `Buffered`), or on an I/O error.
    /// - [`StoreError::Full`] when the disk is full while the file is
    ///   created or repaired.
    pub fn open(dir: &Path, options: RedbOptions) -> Result<RedbStore, StoreError> {
        let interval = Duration::from_millis(options.checkpoint_interval_ms);
        let background = options.wal_bytes > 0 || options.durability == Durability::Buffered;
        if background && interval.is_zero() {
            return Err(error::backend("open: checkpoint_interval_ms must be at least 1".to_owned()));
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
        let mut shared =
            Shared { db, path, wal: None, pending: AtomicBool::new(false), flushing: Mutex::new(()) };
        let wal_path = dir.join(WAL_FILE_NAME);
        let next_seq = replay_log(&shared, &wal_path)?;
        if options.wal_bytes > 0 {
            shared.wal = Some(Mutex::new(Wal::open(wal_path, options.wal_bytes, next_seq)?));
        } else if wal_path.exists() {
            std::fs::remove_file(&wal_path)
                .map_err(|e| error::io(&wal_path, "open: remove the write-ahead log", &e))?;
        }
        let shared = Arc::new(shared);
        let flusher = if background { Some(Flusher::start(Arc::clone(&shared), interval)?) } else { None };
        tracing::debug!(
            path = %shared.path.display(), durability = ?options.durability, wal_bytes = options.wal_bytes,
            "opened redb store"
        );
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

    /// Checkpoints now: makes every write so far durable in the redb file
    /// (one durable commit) and starts the log over, if anything was
    /// written since the last checkpoint.
    ///
    /// # Errors
    /// [`StoreError`] when the durable commit fails; the log keeps the
    /// writes and a later flush tries again.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.shared.flush()
    }

    /// The write path with the log: append (and sync), then commit to redb
    /// non-durably; a batch too large for the log is a checkpoint of its own.
    fn write_logged(&self, wal: &Mutex<Wal>, batch: &WriteBatch) -> Result<(), StoreError> {
        let shared = &self.shared;
        let mut wal = Shared::lock_wal(wal);
        wal.check_usable()?;
        if !wal.prepare(batch.ops()) {
            shared.commit(batch.ops(), redb::Durability::Immediate, Some(wal.covered_seq()), "write")?;
            wal.checkpointed();
            return Ok(());
        }
        if !wal.prepared_fits() {
            shared.checkpoint(&mut wal)?;
        }
        wal.append(self.durability == Durability::Fsync)?;
        if let Err(e) = shared.commit(batch.ops(), redb::Durability::None, None, "write") {
            wal.take_back(&e);
            return Err(e);
        }
        wal.advance();
        Ok(())
    }
}

/// Opens or creates the redb file and its tables (one durable commit).
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
    txn.open_table(WAL_STATE).map_err(|e| error::table(path, "open: table wal", e))?;
    txn.commit().map_err(|e| error::commit(path, "open: commit", e))?;
    Ok(db)
}

/// Applies the log's records after the last checkpoint, if there is a log,
/// and checkpoints them. Returns the number the next record takes.
fn replay_log(shared: &Shared, wal_path: &Path) -> Result<u64, StoreError> {
    let path = &shared.path;
    let checkpoint = {
        let txn =
            shared.db.begin_read().map_err(|e| error::transaction(path, "open: read the checkpoint", e))?;
        let state = txn.open_table(WAL_STATE).map_err(|e| error::table(path, "open: table wal", e))?;
        let value = ReadableTable::get(&state, CHECKPOINT_KEY)
            .map_err(|e| error::storage(path, "open: read the checkpoint", e))?;
        value.map_or(0, |v| v.value())
    };
    let bytes = match std::fs::read(wal_path) {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(checkpoint + 1),
        Err(e) => return Err(error::io(wal_path, "open: read the write-ahead log", &e)),
    };
    let (records, last) = wal::replay(wal_path, &bytes, checkpoint)?;
    if let Some(covered) = records.last().map(|r| r.seq) {
        let count = records.len();
        let ops: Vec<BatchOp> = records.into_iter().flat_map(|r| r.ops).collect();
        shared.commit(&ops, redb::Durability::Immediate, Some(covered), "open: replay")?;
        tracing::info!(path = %wal_path.display(), records = count, operations = ops.len(), "replayed the write-ahead log");
    }
    Ok(checkpoint.max(last) + 1)
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
        if let Err(e) = self.shared.flush() {
            tracing::error!(
                error = %e,
                "cannot checkpoint at close; what the write-ahead log holds is replayed at the next open, \
                 what a store without it buffered is lost"
            );
        }
    }
}

impl Store for RedbStore {
    /// Checkpoints now (see [`RedbStore::flush`]).
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

    /// Applies `batch` as one record of the write-ahead log and one redb
    /// commit, as durable as [`RedbStore`] sets out for its mode. An empty
    /// batch returns `Ok` and writes nothing.
    ///
    /// # Errors
    /// [`StoreError::Full`] when the disk is full, [`StoreError::Corrupt`]
    /// when a page read fails its check, [`StoreError::Backend`] on an I/O
    /// error, a key or value over redb's limit (3 GiB), or after a failed
    /// write whose log record could not be taken back (until the next
    /// checkpoint or reopen). Nothing of the batch is applied then.
    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        if let Some(wal) = &self.shared.wal {
            return self.write_logged(wal, &batch);
        }
        let durability = match self.durability {
            Durability::Fsync => redb::Durability::Immediate,
            Durability::Buffered => redb::Durability::None,
        };
        self.shared.commit(batch.ops(), durability, None, "write")?;
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
