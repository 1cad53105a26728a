//! Causality tracking with dotted version vectors ("dot store + causal context").
//!
//! A key's state is a [`SiblingSet`]: the values that are concurrent with each
//! other (siblings, each tagged with the unique [`Dot`] of the write that made
//! it) plus a [`CausalContext`], the set of every dot the state has seen,
//! including dots of values that were later overwritten. Every sibling's dot is
//! in the context.
//!
//! * A replica keeps a sibling on [`merge`](SiblingSet::merge) unless the other
//!   side has seen its dot and dropped it; contexts are unioned.
//! * A write ([`apply_write`](SiblingSet::apply_write)) carries the context the
//!   client read: siblings in that context are superseded, all others stay as
//!   concurrent siblings, and the write's new dot joins the context.
//!
//! Contexts are stored compactly as a version vector (per actor, all counters
//! `1..=n`) plus a sorted "cloud" of dots not contiguous with it. Everything is
//! kept canonical, so equal states compare equal with `==` whatever the order
//! of the merges that produced them.

use std::cmp::Ordering;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::member::NodeId;

/// The format-version byte that starts every encoding made by this module.
/// Version 3 gives each sibling its value's content type; version 2
/// timestamped siblings in microseconds (hybrid logical clock) and carried
/// the highest timestamp seen in context tokens; version 1 timestamped in
/// milliseconds. Every earlier version is still decoded.
const FORMAT_VERSION: u8 = 3;
/// Sibling states without content types, in microseconds.
const FORMAT_V2: u8 = 2;
/// The first format: milliseconds, no timestamp in tokens.
const FORMAT_V1: u8 = 1;

/// Who issued a dot: a node in one of its epochs.
///
/// A node allocates a new epoch whenever it may have lost its record of the
/// dots it issued, so a dot is never issued twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Actor {
    /// The node that coordinated the write.
    pub node: NodeId,
    /// The node's epoch at the time of the write.
    pub epoch: u64,
}

impl Actor {
    /// The actor of `node` in `epoch`.
    pub const fn new(node: NodeId, epoch: u64) -> Self {
        Actor { node, epoch }
    }
}

/// The unique name of one write: its actor and that actor's counter (at least 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The actor that issued the dot.
    pub actor: Actor,
    /// The actor's counter for this write; counters start at 1.
    pub counter: u64,
}

impl Dot {
    /// The dot `counter` of `actor`.
    pub const fn new(actor: Actor, counter: u64) -> Self {
        Dot { actor, counter }
    }
}

/// Why an encoding or a state was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CausalityError {
    /// The encoding starts with a format-version byte this code does not know.
    #[error("unknown causality encoding version {0}")]
    UnknownVersion(u8),
    /// The bytes are not a well-formed encoding (empty, truncated, trailing bytes, bad postcard).
    #[error("malformed causality encoding: {0}")]
    Malformed(String),
    /// The context token was issued for a different key than the one it came with.
    #[error("context token was issued for a different key")]
    ForeignContext,
    /// The decoded state breaks an invariant (ordering, uniqueness, compaction, coverage).
    #[error("invalid causal state: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> CausalityError {
    CausalityError::Invalid(msg.into())
}

/// A set of dots, kept canonical: a version vector plus a compacted cloud.
///
/// Invariants (checked by [`validate`](CausalContext::validate)): `vv` is
/// sorted by actor with unique actors and counters above 0; `cloud` is sorted,
/// unique, with counters above 0, and holds no dot covered by `vv` nor a dot
/// that would extend `vv` contiguously.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CausalContext {
    vv: Vec<(Actor, u64)>,
    cloud: Vec<Dot>,
}

impl CausalContext {
    /// The empty context (has seen no dot).
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the context has seen no dot at all.
    pub fn is_empty(&self) -> bool {
        self.vv.is_empty() && self.cloud.is_empty()
    }

    /// How many dots the context has seen (saturating at `u64::MAX`). A
    /// context that includes another and differs from it has seen more,
    /// so a state whose context has seen fewer events cannot succeed one
    /// whose context has seen more.
    pub fn events(&self) -> u64 {
        self.vv.iter().fold(self.cloud.len() as u64, |acc, (_, n)| acc.saturating_add(*n))
    }

    /// The vector entry for `actor` (0 when absent).
    fn base(&self, actor: &Actor) -> u64 {
        match self.vv.binary_search_by(|(a, _)| a.cmp(actor)) {
            Ok(i) => self.vv[i].1,
            Err(_) => 0,
        }
    }

    /// Whether `dot` has been seen. A dot with counter 0 is never contained.
    pub fn contains(&self, dot: &Dot) -> bool {
        dot.counter != 0 && (dot.counter <= self.base(&dot.actor) || self.cloud.binary_search(dot).is_ok())
    }

    /// Adds `dot`, keeping the context compacted. Dots with counter 0 and dots
    /// already seen are ignored.
    pub fn insert(&mut self, dot: Dot) {
        if dot.counter == 0 || self.contains(&dot) {
            return;
        }
        let slot = self.vv.binary_search_by(|(a, _)| a.cmp(&dot.actor));
        let base = slot.map_or(0, |i| self.vv[i].1);
        if dot.counter != base + 1 {
            if let Err(pos) = self.cloud.binary_search(&dot) {
                self.cloud.insert(pos, dot);
            }
            return;
        }
        // The dot extends the vector: absorb the cloud dots now contiguous with it.
        let start = self.cloud.partition_point(|d| d.actor < dot.actor);
        let (mut top, mut end) = (dot.counter, start);
        while let Some(d) = self.cloud.get(end) {
            if d.actor != dot.actor || top.checked_add(1) != Some(d.counter) {
                break;
            }
            top = d.counter;
            end += 1;
        }
        self.cloud.drain(start..end);
        match slot {
            Ok(i) => self.vv[i].1 = top,
            Err(i) => self.vv.insert(i, (dot.actor, top)),
        }
    }

    /// Adds every dot of `other` (set union), keeping the context compacted.
    pub fn join(&mut self, other: &CausalContext) {
        if self.includes(other) {
            return;
        }
        if self.is_empty() {
            self.clone_from(other);
            return;
        }
        let mut vv = Vec::with_capacity(self.vv.len().max(other.vv.len()));
        let (mut i, mut j) = (0, 0);
        while i < self.vv.len() && j < other.vv.len() {
            let ((a, n), (b, m)) = (self.vv[i], other.vv[j]);
            match a.cmp(&b) {
                Ordering::Less => {
                    vv.push((a, n));
                    i += 1;
                }
                Ordering::Greater => {
                    vv.push((b, m));
                    j += 1;
                }
                Ordering::Equal => {
                    vv.push((a, n.max(m)));
                    i += 1;
                    j += 1;
                }
            }
        }
        vv.extend_from_slice(&self.vv[i..]);
        vv.extend_from_slice(&other.vv[j..]);
        let cloud = if other.cloud.is_empty() {
            std::mem::take(&mut self.cloud)
        } else if self.cloud.is_empty() {
            other.cloud.clone()
        } else {
            merge_sorted(&self.cloud, &other.cloud)
        };
        *self = Self::compacted(vv, cloud);
    }

    /// Builds a canonical context from a vector (sorted, unique actors,
    /// counters above 0) and a sorted cloud that may hold duplicates, covered
    /// dots, zero counters and dots contiguous with the vector.
    fn compacted(vv: Vec<(Actor, u64)>, cloud: Vec<Dot>) -> Self {
        let mut out = CausalContext { vv: Vec::with_capacity(vv.len()), cloud: Vec::new() };
        let (mut i, mut j) = (0, 0);
        loop {
            let actor = match (vv.get(i), cloud.get(j)) {
                (None, None) => break,
                (Some(&(a, _)), None) => a,
                (None, Some(d)) => d.actor,
                (Some(&(a, _)), Some(d)) => a.min(d.actor),
            };
            let mut top = 0;
            if let Some(&(_, n)) = vv.get(i).filter(|(a, _)| *a == actor) {
                top = n;
                i += 1;
            }
            // The actor's cloud dots come in ascending order: covered ones are
            // dropped, contiguous ones extend `top`, and from the first gap on
            // the rest stay in the cloud (deduplicated).
            while let Some(d) = cloud.get(j).filter(|d| d.actor == actor) {
                if d.counter > top {
                    // `top < d.counter`, so `top + 1` cannot overflow.
                    if d.counter == top + 1 {
                        top = d.counter;
                    } else if out.cloud.last() != Some(d) {
                        out.cloud.push(*d);
                    }
                }
                j += 1;
            }
            if top > 0 {
                out.vv.push((actor, top));
            }
        }
        out
    }

    /// Whether every dot of `other` is in `self` (`other ⊆ self`).
    pub fn includes(&self, other: &CausalContext) -> bool {
        // `self` is compacted, so it holds 1..=n of an actor only if its
        // vector entry reaches n (its cloud never holds the next counter).
        let mut i = 0;
        for &(actor, n) in &other.vv {
            while i < self.vv.len() && self.vv[i].0 < actor {
                i += 1;
            }
            match self.vv.get(i) {
                Some(&(a, m)) if a == actor && m >= n => {}
                _ => return false,
            }
        }
        other.cloud.iter().all(|d| self.contains(d))
    }

    /// The highest counter of `actor` seen, in the vector or the cloud; 0 if none.
    pub fn max_counter(&self, actor: &Actor) -> u64 {
        let end = self.cloud.partition_point(|d| d.actor <= *actor);
        let cloud_top = match end.checked_sub(1).map(|k| &self.cloud[k]) {
            Some(d) if d.actor == *actor => d.counter,
            _ => 0,
        };
        self.base(actor).max(cloud_top)
    }

    /// Every actor with at least one dot in the context, distinct and ascending.
    pub fn actors(&self) -> impl Iterator<Item = Actor> + '_ {
        let mut vv = self.vv.iter().map(|&(a, _)| a).peekable();
        let mut cloud = self.cloud.iter().map(|d| d.actor).peekable();
        std::iter::from_fn(move || {
            let next = match (vv.peek(), cloud.peek()) {
                (None, None) => return None,
                (Some(&a), None) | (None, Some(&a)) => a,
                (Some(&a), Some(&b)) => a.min(b),
            };
            while vv.next_if_eq(&next).is_some() {}
            while cloud.next_if_eq(&next).is_some() {}
            Some(next)
        })
    }

    /// Checks the canonical-form invariants; meant for decoded input.
    ///
    /// # Errors
    /// [`CausalityError::Invalid`] if the vector is unsorted, repeats an actor
    /// or has a zero counter, or if the cloud is unsorted, repeats a dot, has a
    /// zero counter, holds a dot covered by the vector, or is not compacted
    /// (holds the counter right after an actor's vector entry).
    pub fn validate(&self) -> Result<(), CausalityError> {
        if self.vv.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(invalid("version vector not strictly sorted by actor"));
        }
        if let Some((a, _)) = self.vv.iter().find(|(_, n)| *n == 0) {
            return Err(invalid(format!("zero counter in version vector for {a:?}")));
        }
        if self.cloud.windows(2).any(|w| w[0] >= w[1]) {
            return Err(invalid("dot cloud not strictly sorted"));
        }
        for d in &self.cloud {
            if d.counter == 0 {
                return Err(invalid(format!("zero counter in dot cloud: {d:?}")));
            }
            if d.counter - 1 <= self.base(&d.actor) {
                return Err(invalid(format!("cloud dot {d:?} is covered by or contiguous with the vector")));
            }
        }
        Ok(())
    }
}

impl FromIterator<Dot> for CausalContext {
    /// The compacted context holding exactly the given dots (zero counters are dropped).
    fn from_iter<I: IntoIterator<Item = Dot>>(iter: I) -> Self {
        let mut cloud: Vec<Dot> = iter.into_iter().collect();
        cloud.sort_unstable();
        Self::compacted(Vec::new(), cloud)
    }
}

/// Merges two sorted slices into one sorted Vec (duplicates kept; compaction drops them).
fn merge_sorted(a: &[Dot], b: &[Dot]) -> Vec<Dot> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i] <= b[j] {
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j]);
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// One version of a key's value, written by the write named by `dot`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sibling {
    /// The dot of the write that produced this sibling.
    pub dot: Dot,
    /// The coordinator's hybrid-logical-clock timestamp of the write, in
    /// microseconds since the Unix epoch (see
    /// [`HybridClock`](crate::clock::HybridClock)): greater than every
    /// timestamp the coordinator had seen, so under last-write-wins a write
    /// beats every write its coordinator knew of.
    pub timestamp_us: u64,
    /// The value, or `None` for a tombstone (a delete).
    pub value: Option<Bytes>,
    /// The value's media type as the writer gave it (`None`: unknown,
    /// served as `application/octet-stream`).
    pub content_type: Option<String>,
}

/// A sibling as versions 1 and 2 encoded it (no content type).
#[derive(Deserialize)]
struct SiblingV2 {
    dot: Dot,
    timestamp_us: u64,
    value: Option<Bytes>,
}

/// A sibling set as versions 1 and 2 encoded it.
#[derive(Deserialize)]
struct SiblingSetV2 {
    siblings: Vec<SiblingV2>,
    context: CausalContext,
}

impl Sibling {
    /// Whether this sibling records a delete rather than a value.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// A key's state: concurrent siblings plus the causal context of everything seen.
///
/// Invariants (checked by [`validate`](SiblingSet::validate)): siblings are
/// sorted by dot with unique dots, every sibling's dot is in the context, and
/// the context is canonical.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiblingSet {
    siblings: Vec<Sibling>,
    context: CausalContext,
}

impl SiblingSet {
    /// The state of a key never written: no siblings, empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// The siblings, sorted by dot (tombstones included).
    pub fn siblings(&self) -> &[Sibling] {
        &self.siblings
    }

    /// Every dot this state has seen.
    pub fn context(&self) -> &CausalContext {
        &self.context
    }

    /// Whether the state has no siblings and has seen no dot.
    pub fn is_empty(&self) -> bool {
        self.siblings.is_empty() && self.context.is_empty()
    }

    /// The siblings that hold a value (not tombstones), sorted by dot.
    pub fn live(&self) -> impl Iterator<Item = &Sibling> {
        self.siblings.iter().filter(|s| !s.is_tombstone())
    }

    /// How many siblings hold a value.
    pub fn live_count(&self) -> usize {
        self.live().count()
    }

    /// The highest sibling timestamp (tombstones included), 0 for none.
    pub fn max_timestamp(&self) -> u64 {
        self.siblings.iter().map(|s| s.timestamp_us).max().unwrap_or(0)
    }

    /// The counter a coordinator acting as `actor` must give its next dot:
    /// one more than the highest counter of `actor` this state has seen.
    /// (Saturates at `u64::MAX`, which no real actor reaches.)
    pub fn next_counter(&self, actor: &Actor) -> u64 {
        self.context.max_counter(actor).saturating_add(1)
    }

    /// Joins `other` into `self`.
    ///
    /// A sibling of either side is kept if the other side has it too or has
    /// not seen its dot; contexts are unioned. The join is commutative,
    /// associative and idempotent. Should both sides hold different siblings
    /// under one dot (a reused dot), the one with the greater
    /// `(timestamp_us, value)` is kept, so the join stays deterministic.
    pub fn merge(&mut self, other: &SiblingSet) {
        let mine = std::mem::take(&mut self.siblings);
        let mut out = Vec::with_capacity(mine.len().max(other.siblings.len()));
        let mut theirs = other.siblings.iter().peekable();
        for s in mine {
            while let Some(t) = theirs.next_if(|t| t.dot < s.dot) {
                if !self.context.contains(&t.dot) {
                    out.push(t.clone());
                }
            }
            match theirs.next_if(|t| t.dot == s.dot) {
                Some(t) if (t.timestamp_us, &t.value) > (s.timestamp_us, &s.value) => out.push(t.clone()),
                Some(_) => out.push(s),
                None if !other.context.contains(&s.dot) => out.push(s),
                None => {}
            }
        }
        out.extend(theirs.filter(|t| !self.context.contains(&t.dot)).cloned());
        self.siblings = out;
        self.context.join(&other.context);
    }

    /// Applies a write coordinated locally.
    ///
    /// `context` is what the client had read: siblings whose dots it holds are
    /// superseded and removed; the rest stay as concurrent siblings. The new
    /// sibling `(dot, timestamp_us, value)` is added (`None` writes a
    /// tombstone), and the state's context becomes `C ∪ context ∪ {dot}`.
    /// `dot` must be fresh, normally `Dot::new(actor, self.next_counter(&actor))`;
    /// a sibling already under `dot` is replaced.
    ///
    /// # Panics
    /// If `dot.counter` is 0 (dots start at 1; this is a caller bug).
    pub fn apply_write(
        &mut self,
        context: &CausalContext,
        dot: Dot,
        timestamp_us: u64,
        value: Option<Bytes>,
    ) {
        self.apply_typed_write(context, dot, timestamp_us, value, None);
    }

    /// [`apply_write`](SiblingSet::apply_write) of a value with its media
    /// type.
    ///
    /// # Panics
    /// If `dot.counter` is 0 (dots start at 1; this is a caller bug).
    pub fn apply_typed_write(
        &mut self,
        context: &CausalContext,
        dot: Dot,
        timestamp_us: u64,
        value: Option<Bytes>,
        content_type: Option<String>,
    ) {
        assert!(dot.counter >= 1, "dot counters start at 1: {dot:?}");
        self.siblings.retain(|s| s.dot != dot && !context.contains(&s.dot));
        let pos = self.siblings.partition_point(|s| s.dot < dot);
        self.siblings.insert(pos, Sibling { dot, timestamp_us, value, content_type });
        self.context.join(context);
        self.context.insert(dot);
    }

    /// Removes the sibling with `dot` while keeping `dot` in the context,
    /// as if a write had superseded it: every state this one is merged
    /// into drops that sibling too. For a write that was stored locally
    /// and then refused, so that it never takes effect. Returns whether a
    /// sibling was removed.
    pub fn retract(&mut self, dot: &Dot) -> bool {
        let before = self.siblings.len();
        self.siblings.retain(|s| s.dot != *dot);
        self.siblings.len() != before
    }

    /// Keeps only the sibling with `dot` (a reconciler picked it as the
    /// winner); the context is unchanged. Does nothing if no sibling has `dot`.
    pub fn retain_sibling(&mut self, dot: &Dot) {
        if let Ok(i) = self.siblings.binary_search_by(|s| s.dot.cmp(dot)) {
            let keep = self.siblings.swap_remove(i);
            self.siblings.clear();
            self.siblings.push(keep);
        }
    }

    /// Checks the invariants; meant for decoded input.
    ///
    /// # Errors
    /// [`CausalityError::Invalid`] if the context is not canonical (see
    /// [`CausalContext::validate`]), the siblings are not strictly sorted by
    /// dot, or a sibling's dot is missing from the context.
    pub fn validate(&self) -> Result<(), CausalityError> {
        self.context.validate()?;
        if self.siblings.windows(2).any(|w| w[0].dot >= w[1].dot) {
            return Err(invalid("siblings not strictly sorted by dot"));
        }
        if let Some(s) = self.siblings.iter().find(|s| !self.context.contains(&s.dot)) {
            return Err(invalid(format!("sibling dot {:?} missing from the context", s.dot)));
        }
        Ok(())
    }

    /// The storage/wire encoding: a format-version byte (1), then postcard.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_extend(self, vec![FORMAT_VERSION])
            .expect("postcard into a Vec cannot fail for these types")
    }

    /// Whether `bytes` are in the format [`encode`](SiblingSet::encode)
    /// writes today (so they are that state's canonical encoding, if they
    /// decode), rather than an older one.
    pub(crate) fn is_current_encoding(bytes: &[u8]) -> bool {
        bytes.first() == Some(&FORMAT_VERSION)
    }

    /// Decodes what [`encode`](SiblingSet::encode) produced. Never panics.
    ///
    /// # Errors
    /// [`CausalityError::Malformed`] for empty, truncated or trailing bytes or
    /// bad postcard; [`CausalityError::UnknownVersion`] for another version
    /// byte; [`CausalityError::Invalid`] if the state fails
    /// [`validate`](SiblingSet::validate).
    pub fn decode(bytes: &[u8]) -> Result<SiblingSet, CausalityError> {
        let (version, body) = strip_version(bytes)?;
        let set: SiblingSet = if version == FORMAT_VERSION {
            decode_exact(body)?
        } else {
            let old: SiblingSetV2 = decode_exact(body)?;
            // Version 1 timestamped in milliseconds.
            let scale = if version == FORMAT_V1 { 1000 } else { 1 };
            let siblings = old
                .siblings
                .into_iter()
                .map(|s| Sibling {
                    dot: s.dot,
                    timestamp_us: s.timestamp_us.saturating_mul(scale),
                    value: s.value,
                    content_type: None,
                })
                .collect();
            SiblingSet { siblings, context: old.context }
        };
        set.validate()?;
        Ok(set)
    }
}

/// Checks the version byte and returns it with what follows it.
fn strip_version(bytes: &[u8]) -> Result<(u8, &[u8]), CausalityError> {
    match bytes.split_first() {
        None => Err(CausalityError::Malformed("empty input".into())),
        Some((&v, rest)) if v == FORMAT_VERSION || v == FORMAT_V2 || v == FORMAT_V1 => Ok((v, rest)),
        Some((&v, _)) => Err(CausalityError::UnknownVersion(v)),
    }
}

/// Postcard-decodes a whole slice, rejecting trailing bytes.
fn decode_exact<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, CausalityError> {
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| CausalityError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CausalityError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

/// The low 32 bits of the key's xxh3 hash, which binds a context token to its key.
fn key_tag(key: &[u8]) -> [u8; 4] {
    (xxhash_rust::xxh3::xxh3_64(key) as u32).to_le_bytes()
}

/// The opaque causal context a client receives with a read or write and hands back with its next write.
///
/// It holds the dots the client has seen and the highest sibling timestamp
/// it has seen, so the coordinator of the client's next write, whichever
/// node it is, timestamps that write after everything the client read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    causal: CausalContext,
    seen_us: u64,
}

impl Context {
    /// Wraps a causal context (usually a clone of [`SiblingSet::context`]),
    /// with no timestamp seen.
    pub fn new(causal: CausalContext) -> Self {
        Context { causal, seen_us: 0 }
    }

    /// The context of everything `state` holds: its dots and its highest
    /// sibling timestamp.
    pub fn of_state(state: &SiblingSet) -> Self {
        Context { causal: state.context().clone(), seen_us: state.max_timestamp() }
    }

    /// Raises the highest timestamp seen to at least `timestamp_us`.
    pub fn with_seen(mut self, timestamp_us: u64) -> Self {
        self.seen_us = self.seen_us.max(timestamp_us);
        self
    }

    /// The dots the client had seen.
    pub fn causal(&self) -> &CausalContext {
        &self.causal
    }

    /// The highest sibling timestamp the client had seen (hybrid-logical-clock
    /// microseconds; 0 when unknown).
    pub fn seen_us(&self) -> u64 {
        self.seen_us
    }

    /// Whether the client had seen nothing (a blind write).
    pub fn is_empty(&self) -> bool {
        self.causal.is_empty()
    }

    /// Token bound to `key`: version byte 2, then the low 32 bits of
    /// xxh3_64(key) (little-endian; same hash as ring::key_hash), then postcard
    /// of the CausalContext and of the highest timestamp seen.
    pub fn encode(&self, key: &[u8]) -> Vec<u8> {
        let mut out = vec![FORMAT_VERSION];
        out.extend_from_slice(&key_tag(key));
        postcard::to_extend(&(&self.causal, self.seen_us), out)
            .expect("postcard into a Vec cannot fail for these types")
    }

    /// Decodes a token made by [`encode`](Context::encode) for the same
    /// `key` (or by a version-1 encoder, which carried no timestamp). Never
    /// panics.
    ///
    /// # Errors
    /// [`CausalityError::Malformed`] for empty, truncated or trailing bytes or
    /// bad postcard; [`CausalityError::UnknownVersion`] for another version
    /// byte; [`CausalityError::ForeignContext`] for a token made for another
    /// key; [`CausalityError::Invalid`] if the context fails
    /// [`CausalContext::validate`].
    pub fn decode(bytes: &[u8], key: &[u8]) -> Result<Context, CausalityError> {
        let (version, rest) = strip_version(bytes)?;
        let (tag, body) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| CausalityError::Malformed("truncated key tag".into()))?;
        if *tag != key_tag(key) {
            return Err(CausalityError::ForeignContext);
        }
        let (causal, seen_us): (CausalContext, u64) =
            if version == FORMAT_V1 { (decode_exact(body)?, 0) } else { decode_exact(body)? };
        // (Versions 2 and 3 encode tokens alike.)
        causal.validate()?;
        Ok(Context { causal, seen_us })
    }
}

impl From<CausalContext> for Context {
    fn from(causal: CausalContext) -> Self {
        Context::new(causal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: Actor = Actor::new(NodeId(1), 0);
    const B: Actor = Actor::new(NodeId(2), 0);
    const A2: Actor = Actor::new(NodeId(1), 1);
    const ACTORS: [Actor; 3] = [A, B, A2];

    fn val(s: &str) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// The compacted context of the given `(actor, counter)` dots.
    fn cc(dots: &[(Actor, u64)]) -> CausalContext {
        dots.iter().map(|&(a, n)| Dot::new(a, n)).collect()
    }

    /// A context built field by field, bypassing compaction (may be invalid).
    fn raw(vv: &[(Actor, u64)], cloud: &[(Actor, u64)]) -> CausalContext {
        let cloud = cloud.iter().map(|&(a, n)| Dot::new(a, n)).collect();
        CausalContext { vv: vv.to_vec(), cloud }
    }

    fn is_invalid<T>(r: Result<T, CausalityError>) -> bool {
        matches!(r, Err(CausalityError::Invalid(_)))
    }

    /// A coordinator write as the store does it: next counter of the actor, then apply.
    fn write(s: &mut SiblingSet, actor: Actor, ctx: &CausalContext, v: Option<Bytes>) -> Dot {
        let dot = Dot::new(actor, s.next_counter(&actor));
        s.apply_write(ctx, dot, 1_700_000_000_000 + dot.counter, v);
        s.validate().unwrap();
        dot
    }

    fn joined(a: &SiblingSet, b: &SiblingSet) -> SiblingSet {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    fn dots(s: &SiblingSet) -> Vec<Dot> {
        s.siblings().iter().map(|s| s.dot).collect()
    }

    fn values(s: &SiblingSet) -> Vec<Option<Bytes>> {
        s.siblings().iter().map(|s| s.value.clone()).collect()
    }

    #[test]
    fn same_actor_stale_context_keeps_both_then_covering_write_collapses() {
        let mut s = SiblingSet::new();
        let d1 = write(&mut s, A, &CausalContext::new(), val("v1"));
        assert_eq!(d1, Dot::new(A, 1));
        // The client reads and keeps its context as an opaque token.
        let token = Context::new(s.context().clone()).encode(b"k");
        let c1 = Context::decode(&token, b"k").unwrap();

        let d2 = write(&mut s, A, c1.causal(), val("v2"));
        let d3 = write(&mut s, A, c1.causal(), val("v3"));
        assert_eq!((d2.counter, d3.counter), (2, 3));
        assert_eq!(dots(&s), vec![d2, d3]);
        assert_eq!(values(&s), vec![val("v2"), val("v3")]);

        let covering = s.context().clone();
        let d4 = write(&mut s, A, &covering, val("v4"));
        assert_eq!(dots(&s), vec![d4]);
        assert_eq!(values(&s), vec![val("v4")]);
        assert_eq!(s.context(), &cc(&[(A, 1), (A, 2), (A, 3), (A, 4)]));
    }

    #[test]
    fn concurrent_writes_on_different_actors_survive_in_any_merge_order() {
        let mut base = SiblingSet::new();
        write(&mut base, A, &CausalContext::new(), val("v0"));
        let ctx = base.context().clone();
        let (mut ra, mut rb) = (base.clone(), base.clone());
        write(&mut ra, A, &ctx, val("from-a"));
        write(&mut rb, B, &ctx, val("from-b"));
        let ab = joined(&ra, &rb);
        assert_eq!(ab, joined(&rb, &ra));
        ab.validate().unwrap();
        assert_eq!(values(&ab), vec![val("from-a"), val("from-b")]);
        assert_eq!(ab.context().actors().collect::<Vec<_>>(), vec![A, B]);
        // Merging an ancestor changes nothing.
        assert_eq!(joined(&ab, &base), ab);
    }

    #[test]
    fn merge_is_deterministic_for_a_reused_dot() {
        let (mut x, mut y) = (SiblingSet::new(), SiblingSet::new());
        let d = write(&mut x, A, &CausalContext::new(), val("x"));
        assert_eq!(write(&mut y, A, &CausalContext::new(), val("y")), d);
        assert_eq!(joined(&x, &y), joined(&y, &x));
        assert_eq!(values(&joined(&x, &y)), vec![val("y")]);
    }

    #[test]
    fn a_retracted_sibling_is_dropped_by_every_merge() {
        let mut base = SiblingSet::new();
        write(&mut base, A, &CausalContext::new(), val("kept"));
        let mut refused = base.clone();
        let d = write(&mut refused, B, &CausalContext::new(), val("refused"));
        // A replica that stored the refused write before it was retracted.
        let accepted = refused.clone();
        assert!(refused.retract(&d));
        assert!(!refused.retract(&d), "already gone");
        refused.validate().unwrap();
        assert!(refused.context().contains(&d));
        for merged in [joined(&refused, &accepted), joined(&accepted, &refused), joined(&base, &refused)] {
            assert_eq!(values(&merged), vec![val("kept")]);
        }
    }

    #[test]
    fn tombstone_is_not_resurrected_by_a_stale_replica() {
        let mut fresh = SiblingSet::new();
        write(&mut fresh, A, &CausalContext::new(), val("v1"));
        let stale = fresh.clone();
        let ctx = fresh.context().clone();
        let d = write(&mut fresh, B, &ctx, None);
        assert_eq!(dots(&fresh), vec![d]);
        assert!(fresh.siblings()[0].is_tombstone() && fresh.live_count() == 0);
        let (a, b) = (joined(&fresh, &stale), joined(&stale, &fresh));
        assert_eq!(a, b);
        assert_eq!(a, fresh);
        assert_eq!(a.live().count(), 0);
    }

    #[test]
    fn out_of_order_inserts_compact_to_a_pure_vector() {
        let mut c = CausalContext::new();
        c.insert(Dot::new(A, 5));
        c.insert(Dot::new(A, 3));
        assert_eq!(c, raw(&[], &[(A, 3), (A, 5)]));
        for n in [1, 4, 2] {
            c.insert(Dot::new(A, n));
            c.validate().unwrap();
        }
        for n in [2, 1, 1] {
            c.insert(Dot::new(B, n));
        }
        assert!(c.cloud.is_empty());
        assert_eq!(c.vv, vec![(A, 5), (B, 2)]);
        assert_eq!(cc(&[(A, 5), (B, 2), (A, 3), (A, 1), (B, 1), (A, 4), (A, 2)]), c);
        let mut j = cc(&[(A, 2), (A, 4), (B, 2)]);
        assert_eq!(j.cloud.len(), 3);
        j.join(&cc(&[(A, 1), (A, 3), (A, 5), (B, 1)]));
        assert_eq!(j, c);
    }

    #[test]
    fn context_queries() {
        let c = cc(&[(A, 1), (A, 2), (A, 7), (A2, 3)]);
        assert!([(A, 2), (A, 7), (A2, 3)].iter().all(|&(a, n)| c.contains(&Dot::new(a, n))));
        assert!(![(A, 3), (A, 0), (B, 1)].iter().any(|&(a, n)| c.contains(&Dot::new(a, n))));
        assert_eq!([A, A2, B].map(|a| c.max_counter(&a)), [7, 3, 0]);
        assert_eq!(c.actors().collect::<Vec<_>>(), vec![A, A2]);
        let mixed = cc(&[(B, 1), (A, 3), (A2, 2), (B, 3)]);
        assert_eq!(mixed.actors().collect::<Vec<_>>(), vec![A, A2, B]);
        let sub = cc(&[(A, 1), (A, 7)]);
        assert!(c.includes(&sub) && !sub.includes(&c) && c.includes(&CausalContext::new()));
        assert!(!c.includes(&cc(&[(A, 3)])) && !c.includes(&cc(&[(B, 1)])));
    }

    #[test]
    fn retain_sibling_keeps_the_winner_only() {
        let mut s = SiblingSet::new();
        let empty = CausalContext::new();
        let d1 = write(&mut s, A, &empty, val("x"));
        let d2 = write(&mut s, A, &empty, val("y"));
        let ctx = s.context().clone();
        s.retain_sibling(&Dot::new(B, 9));
        assert_eq!(dots(&s), vec![d1, d2]);
        s.retain_sibling(&d1);
        assert_eq!(dots(&s), vec![d1]);
        assert_eq!(s.context(), &ctx);
        s.validate().unwrap();
    }

    #[test]
    fn invalid_states_are_rejected_on_decode() {
        let bad = [
            raw(&[(B, 1), (A, 1)], &[]),
            raw(&[(A, 1), (A, 2)], &[]),
            raw(&[(A, 0)], &[]),
            raw(&[(A, 3)], &[(A, 2)]),
            raw(&[(A, 3)], &[(A, 4)]),
            raw(&[], &[(A, 1)]),
            raw(&[], &[(A, 0)]),
            raw(&[], &[(A, 5), (A, 3)]),
            raw(&[], &[(A, 5), (A, 5)]),
            raw(&[(A, u64::MAX)], &[(A, u64::MAX)]),
        ];
        for c in bad {
            assert!(is_invalid(c.validate()), "{c:?}");
            let token = Context::new(c.clone()).encode(b"k");
            assert!(is_invalid(Context::decode(&token, b"k")), "{c:?}");
            let set = SiblingSet { siblings: vec![], context: c };
            assert!(is_invalid(SiblingSet::decode(&set.encode())));
        }
        let sib = |n| Sibling { dot: Dot::new(A, n), timestamp_us: 0, value: None, content_type: None };
        let context = cc(&[(A, 1), (A, 2), (A, 3)]);
        for siblings in [vec![sib(4)], vec![sib(2), sib(1)], vec![sib(1), sib(1)]] {
            let set = SiblingSet { siblings, context: context.clone() };
            assert!(is_invalid(SiblingSet::decode(&set.encode())));
        }
    }

    #[test]
    fn tokens_are_bound_to_key_and_version() {
        let ctx = cc(&[(A, 1), (B, 4)]);
        let token = Context::new(ctx.clone()).encode(b"a");
        assert_eq!(Context::decode(&token, b"a"), Ok(Context::new(ctx.clone())));
        assert_eq!(Context::decode(&token, b"b"), Err(CausalityError::ForeignContext));
        let mut future = token.clone();
        future[0] = FORMAT_VERSION + 1;
        assert_eq!(Context::decode(&future, b"a"), Err(CausalityError::UnknownVersion(FORMAT_VERSION + 1)));
        // The highest timestamp seen travels with the token.
        let stamped = Context::new(ctx.clone()).with_seen(42);
        assert_eq!(Context::decode(&stamped.encode(b"a"), b"a").unwrap().seen_us(), 42);
        // A version-1 token (no timestamp) still decodes.
        let mut v1 = vec![FORMAT_V1];
        v1.extend_from_slice(&key_tag(b"a"));
        let v1 = postcard::to_extend(&ctx, v1).unwrap();
        assert_eq!(Context::decode(&v1, b"a"), Ok(Context::new(ctx.clone())));
        let malformed = |r: Result<Context, _>| matches!(r, Err(CausalityError::Malformed(_)));
        assert!(malformed(Context::decode(&[], b"a")));
        assert!(malformed(Context::decode(&[&token[..], &[0]].concat(), b"a")));

        let mut s = SiblingSet::new();
        write(&mut s, A, &ctx, val("v"));
        let mut enc = s.encode();
        assert_eq!(enc[0], 3);
        assert_eq!(SiblingSet::decode(&enc), Ok(s.clone()));
        // Versions 1 and 2 had no content types; version 1 stored milliseconds.
        #[derive(Serialize)]
        struct OldSibling<'a> {
            dot: Dot,
            timestamp_us: u64,
            value: &'a Option<Bytes>,
        }
        let old: Vec<OldSibling<'_>> = s
            .siblings()
            .iter()
            .map(|x| OldSibling { dot: x.dot, timestamp_us: x.timestamp_us, value: &x.value })
            .collect();
        for (version, scale) in [(FORMAT_V2, 1), (FORMAT_V1, 1000)] {
            let bytes = postcard::to_extend(&(&old, s.context()), vec![version]).unwrap();
            let decoded = SiblingSet::decode(&bytes).unwrap();
            assert_eq!(decoded.siblings()[0].timestamp_us, s.siblings()[0].timestamp_us * scale);
            assert_eq!(decoded.siblings()[0].value, s.siblings()[0].value);
            assert_eq!(decoded.siblings()[0].content_type, None);
        }
        let mut typed = SiblingSet::new();
        typed.apply_typed_write(
            &CausalContext::new(),
            Dot::new(A, 1),
            5,
            val("{}"),
            Some("application/json".into()),
        );
        let back = SiblingSet::decode(&typed.encode()).unwrap();
        assert_eq!(back.siblings()[0].content_type.as_deref(), Some("application/json"));
        enc[0] = 0;
        assert_eq!(SiblingSet::decode(&enc), Err(CausalityError::UnknownVersion(0)));
        assert!(matches!(SiblingSet::decode(&[]), Err(CausalityError::Malformed(_))));
        assert!(Context::new(CausalContext::new()).is_empty() && SiblingSet::new().is_empty());
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// A client write through `replica` with a context from the pool (`ctx` mod its length).
        Write { replica: usize, ctx: usize, value: Option<u8> },
        /// A client read: the replica's context joins the pool.
        Read { replica: usize },
        /// Replication/anti-entropy: `to` merges `from`'s state.
        Sync { from: usize, to: usize },
        /// Delta replication, possibly late or repeated: `to` merges the
        /// delta state of one earlier write (its sibling and context only).
        Delta { delta: usize, to: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..3usize, any::<usize>(), proptest::option::of(any::<u8>()))
                .prop_map(|(replica, ctx, value)| Op::Write { replica, ctx, value }),
            1 => (0..3usize).prop_map(|replica| Op::Read { replica }),
            2 => (0..3usize, 0..3usize).prop_map(|(from, to)| Op::Sync { from, to }),
            2 => (any::<usize>(), 0..3usize).prop_map(|(delta, to)| Op::Delta { delta, to }),
        ]
    }

    /// What a simulated run produced.
    struct Run {
        replicas: Vec<SiblingSet>,
        snapshots: Vec<SiblingSet>,
        contexts: Vec<CausalContext>,
    }

    /// Runs `ops` on three replicas (replica i writes as `ACTORS[i]`), checking
    /// invariants after every step and, at the end, that the join of all
    /// replicas holds exactly the writes no client context superseded.
    fn simulate(ops: &[Op]) -> Result<Run, TestCaseError> {
        let mut replicas = vec![SiblingSet::new(); 3];
        let mut contexts = vec![CausalContext::new()];
        let mut snapshots = vec![SiblingSet::new()];
        let mut issued: Vec<Sibling> = Vec::new();
        let mut deltas: Vec<SiblingSet> = Vec::new();
        let mut superseded = CausalContext::new();
        for (ts, op) in ops.iter().enumerate() {
            let touched = match *op {
                Op::Write { replica, ctx, value } => {
                    let ctx = contexts[ctx % contexts.len()].clone();
                    let before = replicas[replica].clone();
                    let actor = ACTORS[replica];
                    let dot = Dot::new(actor, before.next_counter(&actor));
                    prop_assert!(issued.iter().all(|s| s.dot != dot), "reissued {:?}", dot);
                    let value = value.map(|v| Bytes::from(vec![v]));
                    let new = Sibling { dot, timestamp_us: ts as u64, value, content_type: None };
                    let s = &mut replicas[replica];
                    s.apply_write(&ctx, dot, new.timestamp_us, new.value.clone());
                    let mut expected = before.siblings().to_vec();
                    expected.retain(|s| !ctx.contains(&s.dot));
                    expected.push(new.clone());
                    expected.sort_by_key(|s| s.dot);
                    prop_assert_eq!(s.siblings(), &expected[..]);
                    prop_assert!(s.context().includes(&ctx));
                    prop_assert!(s.context().includes(before.context()));
                    let mut delta = SiblingSet::new();
                    delta.apply_write(&ctx, dot, new.timestamp_us, new.value.clone());
                    snapshots.push(delta.clone());
                    deltas.push(delta);
                    issued.push(new);
                    superseded.join(&ctx);
                    replica
                }
                Op::Read { replica } => {
                    contexts.push(replicas[replica].context().clone());
                    replica
                }
                Op::Sync { from, to } => {
                    let src = replicas[from].clone();
                    replicas[to].merge(&src);
                    to
                }
                Op::Delta { delta, to } if !deltas.is_empty() => {
                    replicas[to].merge(&deltas[delta % deltas.len()]);
                    to
                }
                Op::Delta { to, .. } => to,
            };
            prop_assert_eq!(replicas[touched].validate(), Ok(()));
            snapshots.push(replicas[touched].clone());
        }
        let all = replicas.iter().fold(SiblingSet::new(), |acc, r| joined(&acc, r));
        issued.retain(|s| !superseded.contains(&s.dot));
        issued.sort_by_key(|s| s.dot);
        prop_assert_eq!(all.siblings(), &issued[..]);
        Ok(Run { replicas, snapshots, contexts })
    }

    fn check_lattice(a: &SiblingSet, b: &SiblingSet, c: &SiblingSet) -> Result<(), TestCaseError> {
        let ab = joined(a, b);
        prop_assert_eq!(ab.validate(), Ok(()));
        prop_assert_eq!(&ab, &joined(b, a));
        prop_assert_eq!(joined(&ab, c), joined(a, &joined(b, c)));
        prop_assert_eq!(&joined(a, a), a);
        prop_assert_eq!(&joined(a, &SiblingSet::new()), a);
        prop_assert!(ab.context().includes(a.context()) && ab.context().includes(b.context()));
        let mut ctx = a.context().clone();
        ctx.join(b.context());
        prop_assert_eq!(ab.context(), &ctx);
        Ok(())
    }

    fn check_codec(s: &SiblingSet) -> Result<(), TestCaseError> {
        let enc = s.encode();
        prop_assert_eq!(SiblingSet::decode(&enc), Ok(s.clone()));
        for cut in 0..enc.len() {
            prop_assert!(SiblingSet::decode(&enc[..cut]).is_err());
        }
        let ctx = Context::new(s.context().clone());
        let token = ctx.encode(b"key");
        prop_assert_eq!(Context::decode(&token, b"key"), Ok(ctx));
        for cut in 0..token.len() {
            prop_assert!(Context::decode(&token[..cut], b"key").is_err());
        }
        prop_assert_eq!(Context::decode(&token, b"kez"), Err(CausalityError::ForeignContext));
        Ok(())
    }

    proptest! {
        #[test]
        fn simulated_states_form_a_join_semilattice(
            ops in proptest::collection::vec(op(), 0..40),
            picks in (any::<usize>(), any::<usize>(), any::<usize>()),
            flip in (any::<usize>(), 1..=255u8),
        ) {
            let run = simulate(&ops)?;
            let (r, snaps) = (&run.replicas, &run.snapshots);
            check_lattice(&r[0], &r[1], &r[2])?;
            check_lattice(&r[2], &r[0], &r[1])?;
            let pick = |i: usize| &snaps[i % snaps.len()];
            let (a, b, c) = (pick(picks.0), pick(picks.1), pick(picks.2));
            check_lattice(a, b, c)?;
            for s in r.iter().chain([a, b, c]) {
                check_codec(s)?;
            }
            // The event count orders states along causality: a context
            // that strictly includes another has seen more events.
            for (x, y) in [(a, b), (b, c), (a, c), (&r[0], a)] {
                let mut joined = x.context().clone();
                joined.join(y.context());
                if joined != *x.context() {
                    prop_assert!(joined.events() > x.context().events());
                }
                prop_assert!(joined.events() >= y.context().events());
            }
            for ctx in &run.contexts {
                let token = Context::new(ctx.clone()).encode(b"k");
                prop_assert_eq!(Context::decode(&token, b"k"), Ok(Context::new(ctx.clone())));
            }
            // A corrupted encoding must never panic, and anything accepted is valid.
            let mut enc = r[0].encode();
            let at = flip.0 % enc.len();
            enc[at] ^= flip.1;
            if let Ok(s) = SiblingSet::decode(&enc) {
                prop_assert_eq!(s.validate(), Ok(()));
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            prefix in any::<bool>(),
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            // With `prefix`, the bytes get past the version byte (and key tag).
            let head: &[u8] = if prefix { &[FORMAT_VERSION] } else { &[] };
            if let Ok(s) = SiblingSet::decode(&[head, &bytes].concat()) {
                prop_assert_eq!(s.validate(), Ok(()));
                prop_assert_eq!(SiblingSet::decode(&s.encode()), Ok(s));
            }
            let tag: &[u8] = if prefix { &key_tag(b"k") } else { &[] };
            if let Ok(c) = Context::decode(&[head, tag, &bytes].concat(), b"k") {
                prop_assert_eq!(c.causal().validate(), Ok(()));
                prop_assert_eq!(Context::decode(&c.encode(b"k"), b"k"), Ok(c));
            }
        }
    }
}
