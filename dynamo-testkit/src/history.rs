//! Recording what clients did, and checking the record.
//!
//! Every operation made through a [`Client`](crate::Client) is recorded
//! with the logical time it was invoked and completed (one counter for the
//! whole cluster). Checkers then compare a history with the final state:
//! [`check_no_lost_writes`] for set-union data, [`check_no_resurrection`]
//! for deletes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

/// What an operation was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A read; on success, the values seen and the encoded context.
    Get {
        /// Values returned (after reconciliation).
        values: Vec<Bytes>,
        /// The context returned, encoded.
        context: Vec<u8>,
    },
    /// A write of `value`.
    Put {
        /// The value written.
        value: Bytes,
    },
    /// A delete, with the encoded context it carried (if any).
    Delete {
        /// The context carried, encoded.
        context: Option<Vec<u8>>,
    },
}

/// One recorded operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The client that made it.
    pub client: usize,
    /// The key.
    pub key: Bytes,
    /// What was done.
    pub op: Op,
    /// Logical time of the invocation.
    pub invoked: u64,
    /// Logical time of the completion.
    pub completed: u64,
    /// Whether the store acknowledged it (`Ok`).
    pub ok: bool,
}

/// A shared, append-only record of operations.
#[derive(Debug, Clone, Default)]
pub struct History {
    clock: Arc<AtomicU64>,
    events: Arc<Mutex<Vec<Event>>>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        History::default()
    }

    /// The next logical time.
    pub fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    /// Appends an event.
    pub fn record(&self, event: Event) {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).push(event);
    }

    /// A copy of every event so far, in completion order.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Every key an operation touched.
    pub fn keys(&self) -> BTreeSet<Bytes> {
        self.events().into_iter().map(|e| e.key).collect()
    }
}

/// A broken invariant, with the key and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key {key:?}: {problem}")]
pub struct Violation {
    /// The key.
    pub key: String,
    /// What went wrong.
    pub problem: String,
}

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// Encodes a set of elements as a value (set-union data).
pub fn encode_set(set: &BTreeSet<u64>) -> Bytes {
    let mut out = Vec::with_capacity(set.len() * 8);
    for e in set {
        out.extend_from_slice(&e.to_be_bytes());
    }
    Bytes::from(out)
}

/// Decodes a value made by [`encode_set`]; `None` if it is not one.
pub fn decode_set(value: &[u8]) -> Option<BTreeSet<u64>> {
    if value.len() % 8 != 0 {
        return None;
    }
    Some(value.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default())).collect())
}

/// The union of every sibling's set, as a set-union client merges on read.
pub fn union_of(values: &[Bytes]) -> BTreeSet<u64> {
    values.iter().filter_map(|v| decode_set(v)).flatten().collect()
}

/// Checks, for set-union data, that every element of every acknowledged
/// put is in the final value of its key (`final_values`: key → the
/// values a final read returned).
///
/// # Errors
/// The first key that lost an acknowledged element.
pub fn check_no_lost_writes(
    history: &History,
    final_values: &BTreeMap<Bytes, Vec<Bytes>>,
) -> Result<(), Violation> {
    for event in history.events() {
        let Op::Put { value } = &event.op else { continue };
        if !event.ok {
            continue;
        }
        let acked = decode_set(value).ok_or_else(|| Violation {
            key: show(&event.key),
            problem: "a put's value is not set-union data".into(),
        })?;
        let now = final_values.get(&event.key).map(|v| union_of(v)).unwrap_or_default();
        if let Some(lost) = acked.difference(&now).next() {
            return Err(Violation {
                key: show(&event.key),
                problem: format!(
                    "element {lost} of a put acknowledged at t={} is missing from the final value {now:?}",
                    event.completed
                ),
            });
        }
    }
    Ok(())
}

/// Checks that no value came back after an acknowledged delete that
/// covered it.
///
/// A delete covers the values of the read whose context it carried:
/// every put acknowledged before that read was invoked. If such a value
/// is in the final state, it was resurrected. Deletes without a context,
/// or with one no recorded read returned, are skipped. Values must be
/// unique per key for the check to be exact.
///
/// # Errors
/// The first resurrected value.
pub fn check_no_resurrection(
    history: &History,
    final_values: &BTreeMap<Bytes, Vec<Bytes>>,
) -> Result<(), Violation> {
    let events = history.events();
    let read_start: BTreeMap<(&Bytes, &Vec<u8>), u64> = events
        .iter()
        .filter(|e| e.ok)
        .filter_map(|e| match &e.op {
            Op::Get { context, .. } => Some(((&e.key, context), e.invoked)),
            _ => None,
        })
        .collect();
    for delete in events.iter().filter(|e| e.ok) {
        let Op::Delete { context: Some(ctx) } = &delete.op else { continue };
        let Some(&covered_before) = read_start.get(&(&delete.key, ctx)) else { continue };
        let Some(now) = final_values.get(&delete.key) else { continue };
        for put in events.iter().filter(|e| e.ok && e.key == delete.key && e.completed < covered_before) {
            let Op::Put { value } = &put.op else { continue };
            if now.contains(value) {
                return Err(Violation {
                    key: show(&delete.key),
                    problem: format!(
                        "value {:?} acknowledged at t={} and deleted at t={} is back",
                        show(value),
                        put.completed,
                        delete.completed
                    ),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(h: &History, key: &str, op: Op, ok: bool) {
        let invoked = h.tick();
        let completed = h.tick();
        h.record(Event { client: 0, key: Bytes::from(key.to_string()), op, invoked, completed, ok });
    }

    #[test]
    fn lost_write_is_reported() {
        let h = History::new();
        let set: BTreeSet<u64> = [1, 2].into();
        ev(&h, "k", Op::Put { value: encode_set(&set) }, true);
        let mut fin = BTreeMap::new();
        fin.insert(Bytes::from("k"), vec![encode_set(&[1].into())]);
        let err = check_no_lost_writes(&h, &fin).unwrap_err();
        assert!(err.problem.contains("element 2"), "{err}");
        fin.insert(Bytes::from("k"), vec![encode_set(&[1].into()), encode_set(&[2, 3].into())]);
        check_no_lost_writes(&h, &fin).unwrap();
    }

    #[test]
    fn resurrection_is_reported() {
        let h = History::new();
        ev(&h, "k", Op::Put { value: Bytes::from("v1") }, true);
        ev(&h, "k", Op::Get { values: vec![Bytes::from("v1")], context: vec![7] }, true);
        ev(&h, "k", Op::Delete { context: Some(vec![7]) }, true);
        let mut fin = BTreeMap::new();
        fin.insert(Bytes::from("k"), vec![Bytes::from("v1")]);
        assert!(check_no_resurrection(&h, &fin).is_err());
        fin.insert(Bytes::from("k"), vec![]);
        check_no_resurrection(&h, &fin).unwrap();
    }
}
