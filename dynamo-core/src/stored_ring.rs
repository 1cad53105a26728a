//! The ring a node's data was written under, kept in the store's meta
//! table so a node never starts silently under another one.
//!
//! Where a key lives follows from the ring: its partition count Q, its
//! replication factor N and its members. A node restarted with a
//! different ring (another member list, another Q) would look for keys
//! where they are not and answer 404 for data it holds, so start-up
//! compares the ring it is given with the one recorded and refuses a
//! mismatch, naming what differs. Changing the ring deliberately
//! ([`Node::set_ring`](crate::node::Node::set_ring), or a start that
//! explicitly adopts the new ring) records the new one.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ring::Ring;
use crate::store::{Store, Table, WriteBatch};
use crate::store_io::run_store;

const RING_KEY: &[u8] = b"ring/identity";

/// What of a ring decides where keys live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RingIdentity {
    partitions: u32,
    n: u64,
    /// Member ids, ascending.
    members: Vec<u64>,
}

impl RingIdentity {
    pub(crate) fn of(ring: &Ring) -> Self {
        let mut members: Vec<u64> = ring.members().iter().map(|m| m.id.0).collect();
        members.sort_unstable();
        RingIdentity { partitions: ring.partitions(), n: ring.replicas() as u64, members }
    }

    /// What differs from `other`, for an operator.
    fn differences(&self, other: &RingIdentity) -> String {
        let mut out = Vec::new();
        if self.partitions != other.partitions {
            out.push(format!("partitions {} (now {})", self.partitions, other.partitions));
        }
        if self.n != other.n {
            out.push(format!("n = {} (now {})", self.n, other.n));
        }
        if self.members != other.members {
            out.push(format!("members {:?} (now {:?})", self.members, other.members));
        }
        out.join(", ")
    }

    pub(crate) fn record(&self) -> WriteBatch {
        let mut batch = WriteBatch::new();
        batch.put(Table::Meta, RING_KEY, postcard::to_stdvec(self).expect("postcard into a Vec cannot fail"));
        batch
    }
}

/// Records `ring` as the one the store's data follows, whatever was
/// recorded before: for a ring the node's own persisted gossip state holds
/// (the cluster moved to it through committed topology changes, and the
/// record may lag it after a crash).
///
/// # Errors
/// Store errors.
pub(crate) async fn record(store: &Arc<dyn Store>, ring: &Ring) -> Result<()> {
    let batch = RingIdentity::of(ring).record();
    run_store(store, move |s| {
        s.write(batch)?;
        s.flush()
    })
    .await?;
    Ok(())
}

/// Checks `ring` against the ring recorded in `store`. A store with no
/// record (new, or written before records existed) records `ring`; with
/// `adopt`, a different recorded ring is replaced (and a warning logged).
///
/// # Errors
/// [`Error::RingMismatch`] naming what differs (nothing is written then),
/// [`Error::Corrupt`] for an undecodable record, store errors.
pub(crate) async fn check(store: &Arc<dyn Store>, ring: &Ring, adopt: bool) -> Result<()> {
    let given = RingIdentity::of(ring);
    let stored = run_store(store, |s| s.get(Table::Meta, RING_KEY)).await?;
    let stored: Option<RingIdentity> = stored
        .map(|b| postcard::from_bytes(&b).map_err(|e| Error::Corrupt(format!("recorded ring: {e}"))))
        .transpose()?;
    match stored {
        Some(stored) if stored == given => return Ok(()),
        Some(stored) if !adopt => {
            return Err(Error::RingMismatch { differences: stored.differences(&given) });
        }
        Some(stored) => {
            tracing::warn!(differences = %stored.differences(&given), "adopting a new ring: no data moves");
        }
        None => {}
    }
    let batch = given.record();
    run_store(store, move |s| {
        s.write(batch)?;
        s.flush()
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::{Member, NodeId};
    use crate::store::MemStore;

    fn ring(partitions: u32, members: u64) -> Ring {
        let members = (1..=members).map(|i| Member::new(NodeId(i), format!("n{i}"))).collect();
        Ring::new(partitions, 3, members).unwrap()
    }

    #[tokio::test]
    async fn a_start_under_another_ring_is_refused_naming_the_difference() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        check(&store, &ring(256, 3), false).await.unwrap();
        check(&store, &ring(256, 3), false).await.unwrap();
        match check(&store, &ring(512, 5), false).await {
            Err(Error::RingMismatch { differences }) => {
                assert!(differences.contains("partitions 256 (now 512)"), "{differences}");
                assert!(differences.contains("members [1, 2, 3] (now [1, 2, 3, 4, 5])"), "{differences}");
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
        // Refusing wrote nothing: the old ring still passes.
        check(&store, &ring(256, 3), false).await.unwrap();
        // Adopting on purpose records the new ring.
        check(&store, &ring(256, 5), true).await.unwrap();
        check(&store, &ring(256, 5), false).await.unwrap();
        assert!(check(&store, &ring(256, 3), false).await.is_err());
    }
}
