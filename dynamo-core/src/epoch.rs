//! Actor epochs: making sure a dot is never issued twice.
//!
//! A dot's actor is a node id plus an epoch. Epochs come from a counter
//! kept in the store's meta table, reserved in blocks so that allocating
//! one rarely touches the disk; after a restart allocation resumes past
//! the last reserved block, never inside it. A brand-new (or wiped) store
//! starts its counter at a random point of the 64-bit space, so it cannot
//! reissue an epoch a lost incarnation of the same node used (Riak's KV679
//! lost acknowledged writes that way).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;

use crate::error::{Error, Result};
use crate::store::{Store, Table, WriteBatch};
use crate::store_io::{run_store, StoreIo};

const BASE_KEY: &[u8] = b"epoch/base";
const RESERVED_KEY: &[u8] = b"epoch/reserved";
/// Epochs reserved per meta write.
const BLOCK: u64 = 4096;

#[derive(Debug)]
struct Counter {
    next: u64,
    reserved: u64,
}

/// Allocates the epochs of one store incarnation.
#[derive(Debug)]
pub(crate) struct Epochs {
    base: u64,
    counter: Mutex<Counter>,
    /// Highest epoch handed out so far, plus one.
    allocated: AtomicU64,
}

fn parse_u64(key: &[u8], value: Option<bytes::Bytes>) -> Result<Option<u64>> {
    value
        .map(|v| {
            let bytes: [u8; 8] = v[..].try_into().map_err(|_| {
                Error::Corrupt(format!(
                    "meta {:?} holds {} bytes, not 8",
                    String::from_utf8_lossy(key),
                    v.len()
                ))
            })?;
            Ok(u64::from_be_bytes(bytes))
        })
        .transpose()
}

impl Epochs {
    /// Loads the counter from `store`, creating a random one for a new store.
    pub(crate) async fn open(store: &Arc<dyn Store>, seed: Option<u64>) -> Result<Epochs> {
        let (base, reserved) =
            run_store(store, |s| Ok((s.get(Table::Meta, BASE_KEY)?, s.get(Table::Meta, RESERVED_KEY)?)))
                .await?;
        let (base, reserved) = (parse_u64(BASE_KEY, base)?, parse_u64(RESERVED_KEY, reserved)?);
        let (base, reserved) = match (base, reserved) {
            (Some(b), Some(r)) if r >= b => (b, r),
            (None, None) => {
                // Leave room above: 2^62 epochs before the space could wrap.
                let range = 1u64 << 32..1u64 << 62;
                let base = match seed {
                    Some(seed) => rand::rngs::StdRng::seed_from_u64(seed).random_range(range),
                    None => rand::rng().random_range(range),
                };
                let mut batch = WriteBatch::new();
                batch.put(Table::Meta, BASE_KEY, base.to_be_bytes().to_vec());
                batch.put(Table::Meta, RESERVED_KEY, base.to_be_bytes().to_vec());
                run_store(store, move |s| s.write(batch)).await?;
                (base, base)
            }
            _ => return Err(Error::Corrupt("epoch counter in the meta table is inconsistent".into())),
        };
        Ok(Epochs {
            base,
            counter: Mutex::new(Counter { next: reserved, reserved }),
            allocated: AtomicU64::new(reserved),
        })
    }

    /// Whether this store incarnation allocated `epoch`: then the node's
    /// local state for a key holds every dot it issued under that epoch.
    pub(crate) fn is_own(&self, epoch: u64) -> bool {
        epoch >= self.base && epoch < self.allocated.load(Ordering::Acquire)
    }

    /// A fresh epoch, durable before it is returned.
    pub(crate) async fn allocate(&self, io: &StoreIo) -> Result<u64> {
        let mut c = self.counter.lock().await;
        if c.next == c.reserved {
            let reserved = c.reserved + BLOCK;
            let mut batch = WriteBatch::new();
            batch.put(Table::Meta, RESERVED_KEY, reserved.to_be_bytes().to_vec());
            io.commit(batch).await?;
            c.reserved = reserved;
        }
        let epoch = c.next;
        c.next += 1;
        self.allocated.store(c.next, Ordering::Release);
        Ok(epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[tokio::test]
    async fn epochs_are_unique_across_restarts_and_new_stores() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let gc = StoreIo::start(store.clone(), 64).unwrap();
        let e = Epochs::open(&store, None).await.unwrap();
        let a = e.allocate(&gc).await.unwrap();
        let b = e.allocate(&gc).await.unwrap();
        assert!(b > a && e.is_own(a) && e.is_own(b));
        assert!(!e.is_own(b + 1));
        // Restart on the same store: allocation resumes past the reserved block.
        let e2 = Epochs::open(&store, None).await.unwrap();
        let c = e2.allocate(&gc).await.unwrap();
        assert!(c >= a + BLOCK, "{c} reuses the block of {a}");
        assert!(e2.is_own(a), "epochs of the same store stay its own");
        // A wiped store starts somewhere else.
        let fresh: Arc<dyn Store> = Arc::new(MemStore::new());
        let e3 = Epochs::open(&fresh, None).await.unwrap();
        assert!(!e3.is_own(a));
    }

    #[tokio::test]
    async fn corrupt_meta_is_an_error() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let mut b = WriteBatch::new();
        b.put(Table::Meta, BASE_KEY, vec![1, 2, 3]);
        store.write(b).unwrap();
        assert!(matches!(Epochs::open(&store, None).await, Err(Error::Corrupt(_))));
    }
}
