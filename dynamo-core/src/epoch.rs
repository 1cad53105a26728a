//! Actor epochs: making sure a dot is never issued twice.
//!
//! A dot's actor is a node id plus an epoch. Epochs come from a counter
//! kept in the store's meta table, reserved in blocks so that allocating
//! one rarely touches the disk; after a restart allocation resumes past
//! the last reserved block, never inside it. A brand-new (or wiped) store
//! starts its counter at a random point of the 64-bit space, so it cannot
//! reissue an epoch a lost incarnation of the same node used (Riak's KV679
//! lost acknowledged writes that way).
//!
//! A node reuses one of its epochs for a key only while the key's local
//! state provably holds every dot issued under it. That holds across a
//! clean shutdown (every write flushed, then a clean-shutdown marker
//! written as the very last commit) but not across a crash: a store in
//! buffered durability loses its newest writes, whose dots other replicas
//! may hold. So a start that finds no marker treats every epoch allocated
//! before it as foreign, durably, before the node's first write: each key
//! then gets a fresh epoch for its next coordinated write, whatever the
//! durability mode.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;

use crate::error::{Error, Result};
use crate::store::{Store, Table, WriteBatch};
use crate::store_io::{run_store, StoreIo};

const BASE_KEY: &[u8] = b"epoch/base";
const RESERVED_KEY: &[u8] = b"epoch/reserved";
/// Present (holding the reserved counter) only after a clean shutdown.
const CLEAN_KEY: &[u8] = b"epoch/clean";
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

/// How the store was found at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartKind {
    /// No epoch counter: a new or wiped store.
    NewStore,
    /// The previous run shut down cleanly: its epochs stay this node's own.
    Clean,
    /// The previous run crashed (or was killed): its epochs are retired.
    Unclean,
}

impl Epochs {
    /// Loads the counter from `store`, creating a random one for a new
    /// store; after an unclean stop, retires every epoch allocated before.
    /// Whatever it finds, it removes the clean-shutdown marker and makes
    /// that durable before returning, so a crash of this run is seen as one
    /// by the next start.
    pub(crate) async fn open(store: &Arc<dyn Store>, seed: Option<u64>) -> Result<(Epochs, StartKind)> {
        let (base, reserved, clean) = run_store(store, |s| {
            Ok((
                s.get(Table::Meta, BASE_KEY)?,
                s.get(Table::Meta, RESERVED_KEY)?,
                s.get(Table::Meta, CLEAN_KEY)?,
            ))
        })
        .await?;
        let (base, reserved, clean) =
            (parse_u64(BASE_KEY, base)?, parse_u64(RESERVED_KEY, reserved)?, parse_u64(CLEAN_KEY, clean)?);
        let mut batch = WriteBatch::new();
        let (base, reserved, kind) = match (base, reserved) {
            (Some(b), Some(r)) if r >= b && clean == Some(r) => (b, r, StartKind::Clean),
            (Some(b), Some(r)) if r >= b => {
                // Epochs below `r` may have issued dots this store lost.
                batch.put(Table::Meta, BASE_KEY, r.to_be_bytes().to_vec());
                (r, r, StartKind::Unclean)
            }
            (None, None) => {
                // Leave room above: 2^62 epochs before the space could wrap.
                let range = 1u64 << 32..1u64 << 62;
                let base = match seed {
                    Some(seed) => rand::rngs::StdRng::seed_from_u64(seed).random_range(range),
                    None => rand::rng().random_range(range),
                };
                batch.put(Table::Meta, BASE_KEY, base.to_be_bytes().to_vec());
                batch.put(Table::Meta, RESERVED_KEY, base.to_be_bytes().to_vec());
                (base, base, StartKind::NewStore)
            }
            _ => return Err(Error::Corrupt("epoch counter in the meta table is inconsistent".into())),
        };
        batch.delete(Table::Meta, CLEAN_KEY);
        run_store(store, move |s| {
            s.write(batch)?;
            s.flush()
        })
        .await?;
        let epochs = Epochs {
            base,
            counter: Mutex::new(Counter { next: reserved, reserved }),
            allocated: AtomicU64::new(reserved),
        };
        Ok((epochs, kind))
    }

    /// The batch that marks a clean shutdown: to be the store's last
    /// commit, after every write of this run, and flushed.
    pub(crate) async fn clean_marker(&self) -> WriteBatch {
        let c = self.counter.lock().await;
        let mut batch = WriteBatch::new();
        batch.put(Table::Meta, CLEAN_KEY, c.reserved.to_be_bytes().to_vec());
        batch
    }

    /// Whether this store incarnation allocated `epoch`: then the node's
    /// local state for a key holds every dot it issued under that epoch.
    pub(crate) fn is_own(&self, epoch: u64) -> bool {
        epoch >= self.base && epoch < self.allocated.load(Ordering::Acquire)
    }

    /// A fresh epoch, durable before it is returned: the reservation is
    /// flushed even in buffered durability, or a crash could roll the
    /// counter back and hand the same epoch out again.
    pub(crate) async fn allocate(&self, io: &StoreIo) -> Result<u64> {
        let mut c = self.counter.lock().await;
        if c.next == c.reserved {
            let reserved = c.reserved + BLOCK;
            let mut batch = WriteBatch::new();
            batch.put(Table::Meta, RESERVED_KEY, reserved.to_be_bytes().to_vec());
            io.commit(batch).await?;
            io.flush().await?;
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
        let gc = StoreIo::start(store.clone(), 64, 0, crate::fault_point::Faults::default()).unwrap();
        let (e, kind) = Epochs::open(&store, None).await.unwrap();
        assert_eq!(kind, StartKind::NewStore);
        let a = e.allocate(&gc).await.unwrap();
        let b = e.allocate(&gc).await.unwrap();
        assert!(b > a && e.is_own(a) && e.is_own(b));
        assert!(!e.is_own(b + 1));
        // A clean restart on the same store: allocation resumes past the
        // reserved block, and the old epochs stay this store's own.
        gc.commit(e.clean_marker().await).await.unwrap();
        let (e2, kind) = Epochs::open(&store, None).await.unwrap();
        assert_eq!(kind, StartKind::Clean);
        let c = e2.allocate(&gc).await.unwrap();
        assert!(c >= a + BLOCK, "{c} reuses the block of {a}");
        assert!(e2.is_own(a), "epochs of a cleanly stopped run stay its own");
        // A wiped store starts somewhere else.
        let fresh: Arc<dyn Store> = Arc::new(MemStore::new());
        let (e3, _) = Epochs::open(&fresh, None).await.unwrap();
        assert!(!e3.is_own(a));
    }

    /// A crash (no clean-shutdown marker) retires every epoch allocated
    /// before it, even though the store kept its counter: the store may
    /// have lost dots issued under them (buffered durability).
    #[tokio::test]
    async fn an_unclean_start_retires_every_earlier_epoch() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let gc = StoreIo::start(store.clone(), 64, 0, crate::fault_point::Faults::default()).unwrap();
        let (e, _) = Epochs::open(&store, None).await.unwrap();
        let a = e.allocate(&gc).await.unwrap();
        // Crash: no marker.
        let (e2, kind) = Epochs::open(&store, None).await.unwrap();
        assert_eq!(kind, StartKind::Unclean);
        assert!(!e2.is_own(a), "an epoch of the crashed run is not reused");
        let c = e2.allocate(&gc).await.unwrap();
        assert!(e2.is_own(c) && c > a);
        // The marker of a clean stop is consumed by the start that reads it:
        // a crash after that start is unclean again.
        gc.commit(e2.clean_marker().await).await.unwrap();
        let (e3, kind) = Epochs::open(&store, None).await.unwrap();
        assert_eq!(kind, StartKind::Clean);
        assert!(e3.is_own(c));
        let (e4, kind) = Epochs::open(&store, None).await.unwrap();
        assert_eq!(kind, StartKind::Unclean);
        assert!(!e4.is_own(c));
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
