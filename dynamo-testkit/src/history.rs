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
    /// The error it failed with, if it did.
    pub error: Option<dynamo_core::Error>,
}

impl Event {
    /// Whether the operation is a write (put or delete) whose outcome is
    /// unknown: it failed, but not with an error that says nothing was
    /// stored (a quorum failure or a timeout may have stored it somewhere).
    pub fn outcome_unknown(&self) -> bool {
        use dynamo_core::Error as E;
        matches!(self.op, Op::Put { .. } | Op::Delete { .. })
            && !self.ok
            && !matches!(
                self.error,
                Some(
                    E::EmptyKey
                        | E::KeyTooLong { .. }
                        | E::ValueTooLarge { .. }
                        | E::InvalidContext(_)
                        | E::InvalidQuorum { .. }
                        | E::TooManySiblings { .. }
                        | E::ShuttingDown
                )
            )
    }
}

impl std::fmt::Display for Event {
    /// One line: logical times, client, operation, outcome.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "t={}..{} client {} key {:?} ",
            self.invoked,
            self.completed,
            self.client,
            show(&self.key)
        )?;
        match &self.op {
            Op::Get { values, .. } => {
                let shown: Vec<String> = values.iter().map(|v| show_value(v)).collect();
                write!(f, "get -> {shown:?}")?
            }
            Op::Put { value } => write!(f, "put {}", show_value(value))?,
            Op::Delete { context } => {
                write!(f, "delete{}", if context.is_some() { " with context" } else { " without context" })?
            }
        }
        match &self.error {
            None if self.ok => write!(f, ": ok"),
            None => write!(f, ": failed"),
            Some(e) => write!(f, ": {e}"),
        }
    }
}

/// A value for a person: a set-union value as its elements, text as text.
fn show_value(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) if !text.is_empty() && text.chars().all(|c| !c.is_control()) => format!("{text:?}"),
        _ => match decode_set(value) {
            Some(set) => format!("{set:?}"),
            None => format!("{} bytes", value.len()),
        },
    }
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

    /// The events on `key`, one line each, in completion order.
    pub fn excerpt(&self, key: &[u8]) -> Vec<String> {
        self.events().iter().filter(|e| e.key == key).map(ToString::to_string).collect()
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
    if !value.len().is_multiple_of(8) {
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

/// Checks that no value a delete removed ever came back: for each
/// acknowledged delete that carried the context of an acknowledged read,
/// none of the values that read returned may be in the final state. Holds
/// whatever R and W are, with sloppy quorums and across crashes: the
/// delete's context covers the dots of what the read saw. Values must be
/// unique per key.
///
/// # Errors
/// The first value back after its delete.
pub fn check_no_undone_delete(
    history: &History,
    final_values: &BTreeMap<Bytes, Vec<Bytes>>,
) -> Result<(), Violation> {
    let events = history.events();
    let seen: BTreeMap<(&Bytes, &Vec<u8>), &Vec<Bytes>> = events
        .iter()
        .filter(|e| e.ok)
        .filter_map(|e| match &e.op {
            Op::Get { values, context } => Some(((&e.key, context), values)),
            _ => None,
        })
        .collect();
    for delete in events.iter().filter(|e| e.ok) {
        let Op::Delete { context: Some(ctx) } = &delete.op else { continue };
        let Some(values) = seen.get(&(&delete.key, ctx)) else { continue };
        let Some(now) = final_values.get(&delete.key) else { continue };
        if let Some(back) = values.iter().find(|v| now.contains(v)) {
            return Err(Violation {
                key: show(&delete.key),
                problem: format!(
                    "value {} was deleted by the delete acknowledged at t={} (with the context of a read that saw it) and is back",
                    show_value(back),
                    delete.completed
                ),
            });
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
        h.record(Event {
            client: 0,
            key: Bytes::from(key.to_string()),
            op,
            invoked,
            completed,
            ok,
            error: None,
        });
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
    fn an_undone_delete_is_reported_whatever_the_quorums() {
        let h = History::new();
        ev(&h, "k", Op::Put { value: Bytes::from("v1") }, true);
        ev(&h, "k", Op::Put { value: Bytes::from("v2") }, true);
        // A read at R=1 saw v2 only; the delete covers v2, not v1.
        ev(&h, "k", Op::Get { values: vec![Bytes::from("v2")], context: vec![7] }, true);
        ev(&h, "k", Op::Delete { context: Some(vec![7]) }, true);
        let mut fin = BTreeMap::new();
        fin.insert(Bytes::from("k"), vec![Bytes::from("v1")]);
        check_no_undone_delete(&h, &fin).unwrap();
        fin.insert(Bytes::from("k"), vec![Bytes::from("v2")]);
        let err = check_no_undone_delete(&h, &fin).unwrap_err();
        assert!(err.problem.contains("\"v2\""), "{err}");
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
