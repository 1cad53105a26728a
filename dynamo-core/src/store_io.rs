//! Store I/O off the async workers, in batches.
//!
//! A [`Store`] that may block runs on dedicated threads, never on tokio's
//! workers: one writer thread and [`READ_THREADS`] reader threads, each
//! draining its queue. Writes are group-committed: the writer takes every
//! batch queued behind the one in progress (up to a limit) and writes
//! them as one store batch, so one transaction and one fsync serve many
//! writers. Under load a thread finds its queue non-empty and runs job
//! after job without sleeping, so one wake-up serves many requests, where
//! a `spawn_blocking` per operation would pay a thread hand-off each time.
//!
//! A store that never blocks ([`Store::is_blocking`] is false, e.g.
//! `MemStore`) is called inline, and its group commit runs as a tokio task:
//! simulations stay deterministic on one thread.
//!
//! For a store that may block, the data table's key states also go
//! through a bounded read cache ([`ReadCache`]): a read of a key found
//! there is answered on the caller's thread, without a hop to a reader
//! thread and back (two wake-ups, two context switches). The writer keeps
//! it coherent: once a batch is stored, and before any writer of the batch
//! hears so, the cache takes the batch's data-table puts and deletes. A
//! read that missed fills the cache only if no write reached the cache
//! meanwhile, so a fill can never put back a value older than the store's.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use tokio::sync::{mpsc, oneshot};

use crate::fault_point::{Fault, FaultPoint, Faults};
use crate::store::{BatchOp, Store, StoreError, Table, WriteBatch};

/// Reader threads per blocking store.
pub(crate) const READ_THREADS: usize = 2;

struct Pending {
    batch: WriteBatch,
    done: oneshot::Sender<Result<(), StoreError>>,
}

type ReadJob = Box<dyn FnOnce(&dyn Store) + Send>;

enum Engine {
    /// Never blocks: reads inline, group commit on a tokio task.
    Inline { writes: mpsc::Sender<Pending>, task: tokio::task::JoinHandle<()> },
    /// May block: dedicated reader and writer threads, and the read cache
    /// of the data table (`None` when configured off).
    Threads {
        reads: crossbeam_channel::Sender<ReadJob>,
        writes: crossbeam_channel::Sender<Pending>,
        cache: Option<Arc<ReadCache>>,
    },
}

/// Bytes a cache entry costs beyond its key and value (the entry, the
/// `Bytes` handles, the map's slot), as weighed against the bound.
const ENTRY_OVERHEAD: u64 = 96;

/// Weighs an entry by its key and value bytes.
#[derive(Clone, Copy, Debug)]
struct ByBytes;

impl quick_cache::Weighter<Bytes, Option<Bytes>> for ByBytes {
    fn weight(&self, key: &Bytes, value: &Option<Bytes>) -> u64 {
        (key.len() + value.as_ref().map_or(0, Bytes::len)) as u64 + ENTRY_OVERHEAD
    }
}

/// The data table's recently read and written values (`None`: known
/// absent), at most a configured number of bytes (S3-FIFO eviction, from
/// the `quick_cache` crate).
pub(crate) struct ReadCache {
    entries: quick_cache::sync::Cache<Bytes, Option<Bytes>, ByBytes>,
    /// Counts the writes applied to the cache. Held while a write is
    /// applied and while a missed read checks it and fills: a fill whose
    /// read began before a write it did not see is dropped.
    writes: Mutex<u64>,
}

impl ReadCache {
    /// A cache of at most `bytes` bytes; `None` for 0.
    fn new(bytes: usize) -> Option<Arc<ReadCache>> {
        (bytes > 0).then(|| {
            // quick_cache sizes its tables by an item estimate: assume
            // small states (about 256 bytes each).
            let items = (bytes / 256).clamp(16, 1 << 22);
            Arc::new(ReadCache {
                entries: quick_cache::sync::Cache::with_weighter(items, bytes as u64, ByBytes),
                writes: Mutex::new(0),
            })
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.writes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The number of writes applied so far: a missed read takes it before
    /// reading the store.
    fn generation(&self) -> u64 {
        *self.lock()
    }

    /// The cached value of `key`: `Some(None)` when known absent.
    fn get(&self, key: &[u8]) -> Option<Option<Bytes>> {
        self.entries.get(key)
    }

    /// Fills `key` with what a read found, unless a write reached the
    /// cache since `generation` was taken.
    fn fill(&self, generation: u64, key: Bytes, value: Option<Bytes>) {
        let writes = self.lock();
        if *writes == generation {
            self.entries.insert(key, value);
        }
    }

    /// Applies a stored batch's data-table operations (`stored`: the
    /// store wrote it); after a failed write, whose effect is unknown,
    /// forgets its keys instead.
    fn apply(&self, ops: &[BatchOp], stored: bool) {
        let mut writes = self.lock();
        *writes += 1;
        for op in ops {
            match op {
                BatchOp::Put { table: Table::Data, key, value } if stored => {
                    self.entries.insert(key.clone(), Some(value.clone()));
                }
                BatchOp::Delete { table: Table::Data, key } if stored => {
                    self.entries.insert(key.clone(), None);
                }
                BatchOp::Put { table: Table::Data, key, .. }
                | BatchOp::Delete { table: Table::Data, key } => {
                    self.entries.remove(&key[..]);
                }
                _ => {}
            }
        }
    }

    /// Bytes held, as weighed against the bound.
    #[cfg(test)]
    fn weight(&self) -> u64 {
        self.entries.weight()
    }
}

/// Runs a node's store operations. The threads (or task) stop once the
/// `StoreIo` is dropped and their queues are drained.
pub(crate) struct StoreIo {
    store: Arc<dyn Store>,
    engine: Engine,
    faults: Faults,
}

impl Drop for StoreIo {
    fn drop(&mut self) {
        if let Engine::Inline { task, .. } = &self.engine {
            task.abort();
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Backend {
        backend: "store-io".into(),
        message: "the store's I/O threads stopped (node shutting down)".into(),
    }
}

impl StoreIo {
    /// Starts the I/O threads (or task) for `store`, combining at most
    /// `max_ops` operations per group-committed batch.
    ///
    /// # Errors
    /// The OS refused to start a thread.
    ///
    /// `cache_bytes` bounds the read cache of a store that may block (0:
    /// none).
    pub(crate) fn start(
        store: Arc<dyn Store>,
        max_ops: usize,
        cache_bytes: usize,
        faults: Faults,
    ) -> Result<StoreIo, StoreError> {
        let max_ops = max_ops.max(1);
        let engine = if store.is_blocking() {
            let spawn = |name: String, body: Box<dyn FnOnce() + Send>| {
                std::thread::Builder::new().name(name).spawn(body).map(|_| ()).map_err(|e| {
                    StoreError::Backend {
                        backend: "store-io".into(),
                        message: format!("cannot start a store thread: {e}"),
                    }
                })
            };
            let (reads, read_rx) = crossbeam_channel::unbounded::<ReadJob>();
            for i in 0..READ_THREADS {
                let (rx, store) = (read_rx.clone(), Arc::clone(&store));
                spawn(
                    format!("dynamo-store-read-{i}"),
                    Box::new(move || {
                        while let Ok(job) = rx.recv() {
                            job(store.as_ref());
                        }
                    }),
                )?;
            }
            let (writes, write_rx) = crossbeam_channel::unbounded::<Pending>();
            let writer_store = Arc::clone(&store);
            let cache = ReadCache::new(cache_bytes);
            let writer_cache = cache.clone();
            spawn(
                "dynamo-store-write".into(),
                Box::new(move || {
                    let mut waiting = Vec::new();
                    let mut data_ops = Vec::new();
                    while let Ok(first) = write_rx.recv() {
                        let batch = gather(first, &mut waiting, max_ops, || write_rx.try_recv().ok());
                        let Some(cache) = &writer_cache else {
                            finish(writer_store.write(batch), &mut waiting);
                            continue;
                        };
                        data_ops.extend(batch.ops().iter().filter(|op| op.table() == Table::Data).cloned());
                        let result = writer_store.write(batch);
                        // Before the writers hear: a read they make next
                        // must find what they wrote.
                        cache.apply(&data_ops, result.is_ok());
                        data_ops.clear();
                        finish(result, &mut waiting);
                    }
                }),
            )?;
            Engine::Threads { reads, writes, cache }
        } else {
            let (writes, rx) = mpsc::channel(max_ops.max(16));
            let task = tokio::spawn(commit_task(Arc::clone(&store), rx, max_ops));
            Engine::Inline { writes, task }
        };
        Ok(StoreIo { store, engine, faults })
    }

    /// The value of `key` in `table`: from the read cache when it holds
    /// the key (data table only), else as [`read`](StoreIo::read) does,
    /// filling the cache.
    ///
    /// # Errors
    /// The store's error, or the threads having stopped.
    pub(crate) async fn get(&self, table: Table, key: Bytes) -> Result<Option<Bytes>, StoreError> {
        let cache = match &self.engine {
            Engine::Threads { cache: Some(cache), .. } if table == Table::Data => Arc::clone(cache),
            _ => return self.read(move |s| s.get(table, &key)).await,
        };
        if let Some(hit) = cache.get(&key) {
            return Ok(hit);
        }
        let generation = cache.generation();
        let value = {
            let key = key.clone();
            self.read(move |s| s.get(table, &key)).await?
        };
        cache.fill(generation, key, value.clone());
        Ok(value)
    }

    /// Runs a read (`get`, `scan`) on a reader thread, or inline for a
    /// store that never blocks.
    ///
    /// # Errors
    /// The store's error, or the threads having stopped.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        match &self.engine {
            Engine::Inline { .. } => f(self.store.as_ref()),
            Engine::Threads { reads, .. } => {
                let (tx, rx) = oneshot::channel();
                let job: ReadJob = Box::new(move |s| {
                    let _ = tx.send(f(s));
                });
                reads.send(job).map_err(|_| stopped())?;
                rx.await.map_err(|_| stopped())?
            }
        }
    }

    /// Writes `batch` atomically, sharing the store write (and its fsync)
    /// with whatever else is queued. Returns once the combined batch is
    /// stored.
    ///
    /// # Errors
    /// The store's error, shared by every writer of the combined batch.
    pub(crate) async fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        match self.faults.at(FaultPoint::StoreWrite) {
            Some(Fault::Fail) => {
                return Err(StoreError::Backend {
                    backend: "fault-point".into(),
                    message: "injected store write failure".into(),
                })
            }
            Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
            None => {}
        }
        let (done, wait) = oneshot::channel();
        let pending = Pending { batch, done };
        match &self.engine {
            Engine::Inline { writes, .. } => writes.send(pending).await.map_err(|_| stopped())?,
            Engine::Threads { writes, .. } => writes.send(pending).map_err(|_| stopped())?,
        }
        wait.await.map_err(|_| stopped())?
    }
}

impl StoreIo {
    /// Makes every commit so far durable ([`Store::flush`]), off the async
    /// workers for a blocking store.
    ///
    /// # Errors
    /// The store's error, or the threads having stopped.
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        self.read(|s| s.flush()).await
    }
}

/// Combines `first` with queued batches, up to `max_ops` operations.
fn gather(
    first: Pending,
    waiting: &mut Vec<oneshot::Sender<Result<(), StoreError>>>,
    max_ops: usize,
    mut next: impl FnMut() -> Option<Pending>,
) -> WriteBatch {
    let mut batch = first.batch;
    waiting.push(first.done);
    while batch.len() < max_ops {
        let Some(p) = next() else { break };
        batch.append(p.batch);
        waiting.push(p.done);
    }
    batch
}

fn finish(result: Result<(), StoreError>, waiting: &mut Vec<oneshot::Sender<Result<(), StoreError>>>) {
    for done in waiting.drain(..) {
        let _ = done.send(result.clone());
    }
}

async fn commit_task(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Pending>, max_ops: usize) {
    let mut waiting = Vec::new();
    while let Some(first) = rx.recv().await {
        let batch = gather(first, &mut waiting, max_ops, || rx.try_recv().ok());
        finish(store.write(batch), &mut waiting);
    }
}

/// Runs a one-off store call at start-up, off the async workers when the
/// store may block.
pub(crate) async fn run_store<T, F>(store: &Arc<dyn Store>, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
{
    if !store.is_blocking() {
        return f(store.as_ref());
    }
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(store.as_ref())).await.unwrap_or_else(|e| {
        Err(StoreError::Backend {
            backend: "store".into(),
            message: format!("store call did not complete: {e}"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A store that counts gets and writes, blocks (a write then takes
    /// 1 ms, like an fsync) or not, can hold a get between reading and
    /// answering, and can fail its writes.
    #[derive(Default)]
    struct Probe {
        inner: MemStore,
        blocking: bool,
        gets: AtomicUsize,
        writes: AtomicUsize,
        fail_writes: AtomicBool,
        /// While set, a get of `b"held"` waits on `release` after reading.
        hold: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    }

    impl Store for Probe {
        fn get(&self, t: Table, k: &[u8]) -> Result<Option<Bytes>, StoreError> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            let value = self.inner.get(t, k)?;
            if k == b"held" {
                let held = self.hold.lock().unwrap().take();
                if let Some(release) = held {
                    let _ = release.recv();
                }
            }
            Ok(value)
        }
        fn write(&self, b: WriteBatch) -> Result<(), StoreError> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            if self.blocking {
                // Like an fsync: writers queue up behind it.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            if self.fail_writes.load(Ordering::SeqCst) {
                // Applied, then reported failed: the outcome is unknown.
                self.inner.write(b)?;
                return Err(StoreError::Backend { backend: "probe".into(), message: "injected".into() });
            }
            self.inner.write(b)
        }
        fn scan(
            &self,
            t: Table,
            s: &[u8],
            e: Option<&[u8]>,
            l: usize,
        ) -> Result<Vec<(Bytes, Bytes)>, StoreError> {
            self.inner.scan(t, s, e, l)
        }
        fn is_blocking(&self) -> bool {
            self.blocking
        }
    }

    impl Probe {
        fn new(blocking: bool) -> Self {
            Probe { blocking, ..Probe::default() }
        }
    }

    async fn concurrent_writers_share_batches(blocking: bool) {
        let store = Arc::new(Probe::new(blocking));
        let io = Arc::new(StoreIo::start(store.clone(), 1024, 1 << 20, Faults::default()).unwrap());
        let mut joins = Vec::new();
        for i in 0..200u32 {
            let io = Arc::clone(&io);
            joins.push(tokio::spawn(async move {
                let mut b = WriteBatch::new();
                b.put(Table::Data, i.to_be_bytes().to_vec(), vec![1]);
                io.commit(b).await?;
                io.read(move |s| s.get(Table::Data, &i.to_be_bytes())).await
            }));
        }
        for j in joins {
            assert_eq!(j.await.unwrap().unwrap().as_deref(), Some(&[1u8][..]), "read your own commit");
        }
        assert_eq!(store.inner.len(Table::Data), 200);
        let writes = store.writes.load(Ordering::SeqCst);
        assert!(writes < 200, "expected shared batches, got {writes} store writes");
    }

    #[tokio::test]
    async fn inline_store_groups_commits() {
        concurrent_writers_share_batches(false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_store_groups_commits_on_its_threads() {
        concurrent_writers_share_batches(true).await;
    }

    fn put(table: Table, key: &'static [u8], value: &'static [u8]) -> WriteBatch {
        let mut b = WriteBatch::new();
        b.put(table, key.to_vec(), value.to_vec());
        b
    }

    fn start(store: &Arc<Probe>, bytes: usize) -> StoreIo {
        StoreIo::start(store.clone(), 64, bytes, Faults::default()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_written_key_is_read_back_without_the_store_and_deletes_are_seen() {
        let store = Arc::new(Probe::new(true));
        let io = start(&store, 1 << 20);
        io.commit(put(Table::Data, b"k", b"v1")).await.unwrap();
        let key = Bytes::from_static(b"k");
        assert_eq!(io.get(Table::Data, key.clone()).await.unwrap().as_deref(), Some(&b"v1"[..]));
        assert_eq!(store.gets.load(Ordering::SeqCst), 0, "the commit filled the cache");
        let mut delete = WriteBatch::new();
        delete.delete(Table::Data, b"k".to_vec());
        io.commit(delete).await.unwrap();
        assert_eq!(io.get(Table::Data, key.clone()).await.unwrap(), None);
        assert_eq!(store.gets.load(Ordering::SeqCst), 0, "a delete is cached as absent");
        // A miss goes to the store once, then hits.
        let other = Bytes::from_static(b"other");
        assert_eq!(io.get(Table::Data, other.clone()).await.unwrap(), None);
        assert_eq!(io.get(Table::Data, other).await.unwrap(), None);
        assert_eq!(store.gets.load(Ordering::SeqCst), 1);
        // Other tables are never cached.
        io.commit(put(Table::Hints, b"h", b"x")).await.unwrap();
        io.get(Table::Hints, Bytes::from_static(b"h")).await.unwrap();
        io.get(Table::Hints, Bytes::from_static(b"h")).await.unwrap();
        assert_eq!(store.gets.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_that_raced_a_write_never_fills_the_older_value() {
        let store = Arc::new(Probe::new(true));
        let io = Arc::new(start(&store, 1 << 20));
        io.commit(put(Table::Data, b"held", b"old")).await.unwrap();
        // Evict by a failed write's invalidation, so the next get misses.
        store.fail_writes.store(true, Ordering::SeqCst);
        assert!(io.commit(put(Table::Data, b"held", b"old")).await.is_err());
        store.fail_writes.store(false, Ordering::SeqCst);
        let (release, held) = std::sync::mpsc::channel();
        *store.hold.lock().unwrap() = Some(held);
        let reader = {
            let io = Arc::clone(&io);
            tokio::spawn(async move { io.get(Table::Data, Bytes::from_static(b"held")).await })
        };
        // The reader has read "old" from the store and waits to answer.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.hold.lock().unwrap().is_some() {
            assert!(std::time::Instant::now() < deadline, "the read never reached the store");
            tokio::task::yield_now().await;
        }
        io.commit(put(Table::Data, b"held", b"new")).await.unwrap();
        release.send(()).unwrap();
        assert_eq!(reader.await.unwrap().unwrap().as_deref(), Some(&b"old"[..]), "it read before the write");
        let now = io.get(Table::Data, Bytes::from_static(b"held")).await.unwrap();
        assert_eq!(now.as_deref(), Some(&b"new"[..]), "the late fill of the older value was dropped");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_leaves_its_keys_to_the_store() {
        let store = Arc::new(Probe::new(true));
        let io = start(&store, 1 << 20);
        io.commit(put(Table::Data, b"k", b"v1")).await.unwrap();
        store.fail_writes.store(true, Ordering::SeqCst);
        assert!(io.commit(put(Table::Data, b"k", b"v2")).await.is_err());
        let read = io.get(Table::Data, Bytes::from_static(b"k")).await.unwrap();
        assert_eq!(read.as_deref(), Some(&b"v2"[..]), "the store's word, whatever the failed write did");
        assert_eq!(store.gets.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cache_stays_within_its_bytes_and_can_be_off() {
        let store = Arc::new(Probe::new(true));
        let bound = 64 * 1024;
        let io = start(&store, bound);
        for i in 0..2_000u32 {
            let mut b = WriteBatch::new();
            b.put(Table::Data, i.to_be_bytes().to_vec(), vec![7u8; 200]);
            io.commit(b).await.unwrap();
        }
        let Engine::Threads { cache: Some(cache), .. } = &io.engine else {
            panic!("a blocking store has a cache")
        };
        assert!(cache.weight() <= bound as u64, "{} bytes held", cache.weight());
        assert!(cache.weight() > bound as u64 / 2, "it holds what fits: {}", cache.weight());
        for i in 0..2_000u32 {
            let v = io.get(Table::Data, Bytes::copy_from_slice(&i.to_be_bytes())).await.unwrap();
            assert_eq!(v.map(|v| v.len()), Some(200), "key {i}: evicted keys come from the store");
        }
        let off = start(&store, 0);
        assert!(matches!(off.engine, Engine::Threads { cache: None, .. }));
        let before = store.gets.load(Ordering::SeqCst);
        off.get(Table::Data, Bytes::from_static(&[0, 0, 0, 1])).await.unwrap();
        off.get(Table::Data, Bytes::from_static(&[0, 0, 0, 1])).await.unwrap();
        assert_eq!(store.gets.load(Ordering::SeqCst), before + 2);
    }
}
