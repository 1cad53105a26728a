//! An in-memory store with buffered durability: a crash loses what it has
//! not flushed, as redb or LMDB in `Durability::Buffered` do.
//!
//! Writes are visible at once to reads (like the real engines), and are
//! made durable by [`Store::flush`] or, with an interval, by the first
//! write after the interval passed since the last flush (on tokio's clock,
//! so a paused-clock simulation replays exactly). [`BufferedStore::crash`]
//! rolls the store back to its last flush, each batch all or nothing.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use dynamo_core::store::{MemStore, Store, StoreError, Table, WriteBatch};
use tokio::time::Instant;

/// A [`MemStore`] whose unflushed writes a [`crash`](BufferedStore::crash) loses.
#[derive(Debug)]
pub struct BufferedStore {
    /// What survives a crash.
    durable: MemStore,
    /// What reads see: `durable` plus the unflushed batches.
    live: RwLock<Arc<MemStore>>,
    state: Mutex<Pending>,
    flush_every: Option<Duration>,
}

#[derive(Debug)]
struct Pending {
    batches: Vec<WriteBatch>,
    last_flush: Instant,
}

impl BufferedStore {
    /// An empty store that flushes only when asked ([`Store::flush`]), or
    /// also on the first write `flush_every` after the last flush.
    pub fn new(flush_every: Option<Duration>) -> Self {
        BufferedStore {
            durable: MemStore::new(),
            live: RwLock::new(Arc::new(MemStore::new())),
            state: Mutex::new(Pending { batches: Vec::new(), last_flush: Instant::now() }),
            flush_every,
        }
    }

    fn live(&self) -> Arc<MemStore> {
        Arc::clone(&self.live.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn flush_pending(&self, pending: &mut Pending) -> Result<(), StoreError> {
        for batch in pending.batches.drain(..) {
            self.durable.write(batch)?;
        }
        pending.last_flush = Instant::now();
        Ok(())
    }

    /// Number of batches written since the last flush.
    pub fn unflushed(&self) -> usize {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).batches.len()
    }

    /// Loses every write since the last flush, as a process crash does.
    /// Call it while no node uses the store.
    ///
    /// # Errors
    /// Never in practice (the in-memory engine does not fail); kept for
    /// the store interface's shape.
    pub fn crash(&self) -> Result<(), StoreError> {
        let mut pending = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        pending.batches.clear();
        let copy = MemStore::new();
        for table in Table::ALL {
            let mut from = Bytes::new();
            loop {
                let rows = self.durable.scan(table, &from, None, 1024)?;
                let Some((last, _)) = rows.last() else { break };
                let mut next = last.to_vec();
                next.push(0);
                let full = rows.len() == 1024;
                let mut batch = WriteBatch::new();
                for (k, v) in rows {
                    batch.put(table, k, v);
                }
                copy.write(batch)?;
                if !full {
                    break;
                }
                from = Bytes::from(next);
            }
        }
        *self.live.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(copy);
        Ok(())
    }
}

impl Store for BufferedStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        self.live().get(table, key)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut pending = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.live().write(batch.clone())?;
        pending.batches.push(batch);
        if self.flush_every.is_some_and(|every| pending.last_flush.elapsed() >= every) {
            self.flush_pending(&mut pending)?;
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
        self.live().scan(table, start, end, limit)
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut pending = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.flush_pending(&mut pending)
    }

    fn is_blocking(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(store: &BufferedStore, key: &str) {
        let mut b = WriteBatch::new();
        b.put(Table::Data, key.as_bytes().to_vec(), b"v".to_vec());
        store.write(b).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_loses_exactly_the_unflushed_writes() {
        let store = BufferedStore::new(None);
        put(&store, "a");
        store.flush().unwrap();
        put(&store, "b");
        assert!(store.get(Table::Data, b"b").unwrap().is_some(), "visible before the flush");
        assert_eq!(store.unflushed(), 1);
        store.crash().unwrap();
        assert!(store.get(Table::Data, b"a").unwrap().is_some());
        assert!(store.get(Table::Data, b"b").unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn writes_flush_themselves_once_the_interval_passed() {
        let store = BufferedStore::new(Some(Duration::from_millis(100)));
        put(&store, "a");
        tokio::time::advance(Duration::from_millis(100)).await;
        put(&store, "b");
        put(&store, "c");
        store.crash().unwrap();
        assert!(store.get(Table::Data, b"b").unwrap().is_some(), "flushed with the write after the interval");
        assert!(store.get(Table::Data, b"c").unwrap().is_none());
    }
}
