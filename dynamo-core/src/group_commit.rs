//! Group commit: many concurrent writers share one store batch and one
//! durable flush.
//!
//! Writers hand their batch to a single committer task and wait. While the
//! store is busy with one combined batch, new batches queue up; the next
//! round takes everything queued (up to a limit) and writes it as one
//! batch. Under load, one fsync serves many acknowledged writes.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::store::{Store, StoreError, WriteBatch};

struct Pending {
    batch: WriteBatch,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// Handle to a running committer task. Cloning shares the task; it stops
/// once every handle is dropped and the queue is drained.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    tx: mpsc::Sender<Pending>,
}

impl GroupCommit {
    /// Starts the committer for `store`, combining at most `max_ops`
    /// operations per store batch (a single larger batch still goes alone).
    pub(crate) fn start(store: Arc<dyn Store>, max_ops: usize) -> (GroupCommit, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(max_ops.max(16));
        let task = tokio::spawn(run(store, rx, max_ops));
        (GroupCommit { tx }, task)
    }

    /// Writes `batch` atomically, sharing the store write with whatever
    /// else is queued. Returns once the combined batch is stored.
    ///
    /// # Errors
    /// The store's error, shared by every writer of the combined batch.
    pub(crate) async fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        let closed = || StoreError::Backend {
            backend: "group-commit".into(),
            message: "the committer stopped (node shutting down)".into(),
        };
        self.tx.send(Pending { batch, done }).await.map_err(|_| closed())?;
        wait.await.map_err(|_| closed())?
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Pending>, max_ops: usize) {
    let mut waiting = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut batch = first.batch;
        waiting.push(first.done);
        while batch.len() < max_ops {
            match rx.try_recv() {
                Ok(next) => {
                    batch.append(next.batch);
                    waiting.push(next.done);
                }
                Err(_) => break,
            }
        }
        let result = run_store(&store, move |s| s.write(batch)).await;
        for done in waiting.drain(..) {
            let _ = done.send(result.clone());
        }
    }
}

/// Runs a store call off the async workers when the store may block, and
/// inline when it never does.
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
    }

    impl Store for CountingStore {
        fn get(&self, t: Table, k: &[u8]) -> Result<Option<bytes::Bytes>, StoreError> {
            self.inner.get(t, k)
        }
        fn write(&self, b: WriteBatch) -> Result<(), StoreError> {
            self.writes.fetch_add(1, Ordering::SeqCst);
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
            false
        }
    }

    #[tokio::test]
    async fn concurrent_writers_share_batches_and_all_land() {
        let store = Arc::new(CountingStore { inner: MemStore::new(), writes: AtomicUsize::new(0) });
        let (gc, _task) = GroupCommit::start(store.clone(), 1024);
        let mut joins = Vec::new();
        for i in 0..200u32 {
            let gc = gc.clone();
            joins.push(tokio::spawn(async move {
                let mut b = WriteBatch::new();
                b.put(Table::Data, i.to_be_bytes().to_vec(), vec![1]);
                gc.commit(b).await
            }));
        }
        for j in joins {
            j.await.unwrap().unwrap();
        }
        assert_eq!(store.inner.len(Table::Data), 200);
        let writes = store.writes.load(Ordering::SeqCst);
        assert!(writes < 200, "expected shared batches, got {writes} store writes");
    }
}
