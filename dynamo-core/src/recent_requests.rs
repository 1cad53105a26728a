//! At-most-once execution of forwarded writes: the request ids a
//! coordinator has accepted and whose deadline has not passed yet.
//!
//! A forwarded write carries a [`RequestId`] and a wall-clock deadline.
//! After the deadline the coordinator refuses it anyway, so an id only
//! needs remembering until then: a copy of the request (a frame the
//! network duplicated) arriving before it is refused as a duplicate. The
//! table's size is capped; a coordinator whose table is full refuses new
//! forwarded writes as overloaded (an answer that tells the sender the
//! write was not executed, so it may ask another coordinator).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::{Mutex, PoisonError};

use crate::error::{Error, Result};
use crate::transport::protocol::RequestId;

/// Most ids remembered at once. Entries live at most one request timeout
/// (the coordinator clamps deadlines to it), so this bounds the rate of
/// forwarded writes one node accepts to about 128 Ki per request timeout.
pub(crate) const CAPACITY: usize = 1 << 17;

/// The ids of forwarded writes accepted and not yet expired.
#[derive(Debug, Default)]
pub(crate) struct RecentRequests {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    ids: HashSet<RequestId>,
    /// `(expires_us, id)`, earliest first.
    expiry: BinaryHeap<Reverse<(u64, RequestId)>>,
}

impl RecentRequests {
    /// Records `id`, remembered until `expires_us` (wall clock), unless it
    /// was seen before.
    ///
    /// # Errors
    /// [`Error::DuplicateRequest`] when `id` is already recorded,
    /// [`Error::Overloaded`] when [`CAPACITY`] unexpired ids are.
    pub(crate) fn admit(&self, id: RequestId, expires_us: u64, now_us: u64) -> Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(Reverse((expires, old))) = inner.expiry.peek().copied() {
            if expires > now_us {
                break;
            }
            inner.expiry.pop();
            inner.ids.remove(&old);
        }
        if inner.ids.contains(&id) {
            return Err(Error::DuplicateRequest(id.to_string()));
        }
        if inner.ids.len() >= CAPACITY {
            return Err(Error::Overloaded(format!("{CAPACITY} forwarded writes in flight")));
        }
        inner.ids.insert(id);
        inner.expiry.push(Reverse((expires_us, id)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::NodeId;

    fn id(seq: u64) -> RequestId {
        RequestId { origin: NodeId(1), seq }
    }

    #[test]
    fn a_copy_is_refused_until_the_original_expires() {
        let recent = RecentRequests::default();
        recent.admit(id(1), 100, 0).unwrap();
        assert!(matches!(recent.admit(id(1), 100, 50), Err(Error::DuplicateRequest(_))));
        recent.admit(id(2), 300, 50).unwrap();
        // Past its deadline the original is forgotten (the deadline check
        // refuses late copies from then on), the other id is not.
        recent.admit(id(1), 200, 100).unwrap();
        assert!(matches!(recent.admit(id(2), 300, 150), Err(Error::DuplicateRequest(_))));
    }

    #[test]
    fn a_full_table_refuses_as_overloaded_until_entries_expire() {
        let recent = RecentRequests::default();
        for seq in 0..CAPACITY as u64 {
            recent.admit(id(seq), 10, 0).unwrap();
        }
        assert!(matches!(recent.admit(id(u64::MAX), 10, 0), Err(Error::Overloaded(_))));
        recent.admit(id(u64::MAX), 20, 10).unwrap();
    }
}
