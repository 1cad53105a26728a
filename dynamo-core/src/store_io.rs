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

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::fault_point::{Fault, FaultPoint, Faults};
use crate::store::{Store, StoreError, WriteBatch};

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
    /// May block: dedicated reader and writer threads.
    Threads { reads: crossbeam_channel::Sender<ReadJob>, writes: crossbeam_channel::Sender<Pending> },
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
    pub(crate) fn start(
        store: Arc<dyn Store>,
        max_ops: usize,
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
            spawn(
                "dynamo-store-write".into(),
                Box::new(move || {
                    let mut waiting = Vec::new();
                    while let Ok(first) = write_rx.recv() {
                        let batch = gather(first, &mut waiting, max_ops, || write_rx.try_recv().ok());
                        finish(writer_store.write(batch), &mut waiting);
                    }
                }),
            )?;
            Engine::Threads { reads, writes }
        } else {
            let (writes, rx) = mpsc::channel(max_ops.max(16));
            let task = tokio::spawn(commit_task(Arc::clone(&store), rx, max_ops));
            Engine::Inline { writes, task }
        };
        Ok(StoreIo { store, engine, faults })
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
    use crate::store::{MemStore, Table};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts store writes to show that batches are shared.
    struct CountingStore {
        inner: MemStore,
        writes: AtomicUsize,
        blocking: bool,
    }

    impl Store for CountingStore {
        fn get(&self, t: Table, k: &[u8]) -> Result<Option<bytes::Bytes>, StoreError> {
            self.inner.get(t, k)
        }
        fn write(&self, b: WriteBatch) -> Result<(), StoreError> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            if self.blocking {
                // Like an fsync: writers queue up behind it.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            self.inner.write(b)
        }
        fn scan(
            &self,
            t: Table,
            s: &[u8],
            e: Option<&[u8]>,
            l: usize,
        ) -> Result<Vec<(bytes::Bytes, bytes::Bytes)>, StoreError> {
            self.inner.scan(t, s, e, l)
        }
        fn is_blocking(&self) -> bool {
            self.blocking
        }
    }

    async fn concurrent_writers_share_batches(blocking: bool) {
        let store = Arc::new(CountingStore { inner: MemStore::new(), writes: AtomicUsize::new(0), blocking });
        let io = Arc::new(StoreIo::start(store.clone(), 1024, Faults::default()).unwrap());
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
}
