//! A node's local copy of its keys: encoding, per-key read-merge-write
//! under striped locks, and new dots for coordinated writes.
//!
//! Key states live in the data table under `partition (u32 BE) ++ key`, so
//! a partition is one contiguous range. Hints for an unreachable owner live
//! in the hints table under `owner (u64 BE) ++ partition ++ key`, so one
//! owner's hints are one range. Every change to a key happens under the
//! key's stripe lock and is group-committed before the lock is released,
//! so the next writer of the key reads it.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{Mutex, RwLock};

use crate::causality::{Actor, CausalContext, Context, Dot, SiblingSet};
use crate::clock::HybridClock;
use crate::config::Config;
use crate::epoch::{Epochs, StartKind};
use crate::error::{Error, Result};
use crate::fault_point::Faults;
use crate::member::NodeId;
use crate::reconcile::{Reconciler, Resolution};
use crate::store::{Store, Table, WriteBatch};
use crate::store_io::StoreIo;

/// Where a key's state is kept on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// As one of the key's replicas.
    Data,
    /// As a hint for an owner that could not be reached.
    HintFor(NodeId),
}

/// The storage key of `key` in `slot`.
pub(crate) fn storage_key(slot: Slot, partition: u32, key: &[u8]) -> Bytes {
    let mut k = Vec::with_capacity(12 + key.len());
    if let Slot::HintFor(owner) = slot {
        k.extend_from_slice(&owner.0.to_be_bytes());
    }
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(key);
    Bytes::from(k)
}

fn slot_table(slot: Slot) -> Table {
    match slot {
        Slot::Data => Table::Data,
        Slot::HintFor(_) => Table::Hints,
    }
}

/// One stored hint.
#[derive(Debug, Clone)]
pub(crate) struct StoredHint {
    pub(crate) owner: NodeId,
    pub(crate) partition: u32,
    pub(crate) key: Bytes,
    pub(crate) state: Bytes,
    /// The hint's storage key, for paging and removal.
    pub(crate) storage_key: Bytes,
}

fn parse_hint(storage_key: Bytes, state: Bytes) -> Option<StoredHint> {
    if storage_key.len() < 12 {
        return None;
    }
    let owner = NodeId(u64::from_be_bytes(storage_key[..8].try_into().ok()?));
    let partition = u32::from_be_bytes(storage_key[8..12].try_into().ok()?);
    let key = storage_key.slice(12..);
    Some(StoredHint { owner, partition, key, state, storage_key })
}

/// The result of a coordinated local write.
pub(crate) struct LocalWrite {
    /// The key's new local state.
    pub(crate) state: SiblingSet,
    /// The context to hand the client: its own context plus the new dot,
    /// and the write's timestamp as the highest seen.
    pub(crate) context: Context,
    /// The write's dot.
    pub(crate) dot: Dot,
}

/// What a coordinated write asks for.
pub(crate) struct WriteIntent<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) hash: u64,
    pub(crate) partition: u32,
    pub(crate) slot: Slot,
    /// `None`: a put with no context is concurrent with everything; a
    /// delete with none uses the local state's context.
    pub(crate) context: Option<&'a CausalContext>,
    /// The highest timestamp the client had seen (0 if unknown): the
    /// write's timestamp exceeds it.
    pub(crate) seen_us: u64,
    pub(crate) value: Option<Bytes>,
    /// The value's media type, if given.
    pub(crate) content_type: Option<String>,
    /// Wall-clock deadline (µs) after which the write must not start: a
    /// forwarded write whose sender has given up is never executed.
    pub(crate) start_by_us: Option<u64>,
    pub(crate) max_siblings: usize,
}

/// Whether a state of `after` siblings breaks a bound of `max` that the
/// state of `before` siblings kept: a write or merge that does not add
/// siblings is never refused, so a client can always resolve.
fn exceeds_bound(before: usize, after: usize, max: usize) -> bool {
    after > max && after > before
}

fn too_many_siblings(key: &[u8], count: usize, max: usize) -> Error {
    Error::TooManySiblings { key: String::from_utf8_lossy(key).into_owned(), count, max }
}

/// The local store of key states and hints.
pub(crate) struct Replica {
    node: NodeId,
    io: StoreIo,
    stripes: Box<[Mutex<()>]>,
    epochs: Epochs,
    reconciler: Arc<dyn Reconciler>,
    clock: Arc<HybridClock>,
    /// `true` once closed: every change holds a read guard from its check
    /// to its commit, so [`Replica::close`] waits for changes in flight
    /// and none starts after it.
    closed: RwLock<bool>,
    start: StartKind,
}

impl Replica {
    pub(crate) async fn open(
        node: NodeId,
        store: Arc<dyn Store>,
        reconciler: Arc<dyn Reconciler>,
        clock: Arc<HybridClock>,
        config: &Config,
        epoch_seed: Option<u64>,
        faults: Faults,
    ) -> Result<Replica> {
        let (epochs, start) = Epochs::open(&store, epoch_seed).await?;
        let io = StoreIo::start(store, config.max_commit_batch, faults)?;
        Ok(Replica {
            node,
            io,
            stripes: (0..config.lock_stripes.max(1)).map(|_| Mutex::new(())).collect(),
            epochs,
            reconciler,
            clock,
            closed: RwLock::new(false),
            start,
        })
    }

    /// How the store was found at start-up.
    pub(crate) fn start_kind(&self) -> StartKind {
        self.start
    }

    /// Stops every later change, waits for those in flight, then marks
    /// the store cleanly shut down (the last commit) and flushes it, so
    /// the next start keeps this run's epochs. Idempotent.
    ///
    /// # Errors
    /// Store errors; the next start then counts as unclean, which is safe.
    pub(crate) async fn close(&self) -> Result<()> {
        let mut closed = self.closed.write().await;
        if *closed {
            return Ok(());
        }
        *closed = true;
        self.io.commit(self.epochs.clean_marker().await).await?;
        Ok(self.io.flush().await?)
    }

    /// Commits a node-local record (the meta table) durably, unless closed.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`] or a store error.
    pub(crate) async fn commit(&self, batch: WriteBatch) -> Result<()> {
        let closed = self.closed.read().await;
        if *closed {
            return Err(Error::ShuttingDown);
        }
        self.io.commit(batch).await?;
        Ok(self.io.flush().await?)
    }

    /// Makes every write so far durable, whatever the durability mode.
    ///
    /// # Errors
    /// A store error.
    pub(crate) async fn flush(&self) -> Result<()> {
        Ok(self.io.flush().await?)
    }

    fn stripe(&self, hash: u64) -> &Mutex<()> {
        // The ring uses the hash's top bits; use the low ones here.
        &self.stripes[(hash % self.stripes.len() as u64) as usize]
    }

    /// A node-local record from the meta table.
    ///
    /// # Errors
    /// A store error.
    pub(crate) async fn load_meta(&self, key: &'static [u8]) -> Result<Option<Bytes>> {
        Ok(self.io.read(move |s| s.get(Table::Meta, key)).await?)
    }

    /// The raw encoded state of `key` in `slot`.
    pub(crate) async fn load_raw(&self, slot: Slot, partition: u32, key: &[u8]) -> Result<Option<Bytes>> {
        let sk = storage_key(slot, partition, key);
        Ok(self.io.read(move |s| s.get(slot_table(slot), &sk)).await?)
    }

    /// The decoded state of `key` in `slot`.
    pub(crate) async fn load(&self, slot: Slot, partition: u32, key: &[u8]) -> Result<Option<SiblingSet>> {
        self.load_raw(slot, partition, key).await?.map(|b| decode_stored(&b)).transpose()
    }

    /// Applies the reconciler's deterministic winner, if it names one.
    fn prune(&self, key: &[u8], state: &mut SiblingSet) {
        if state.siblings().len() > 1 {
            if let Resolution::Winner(dot) = self.reconciler.reconcile(key, state.siblings()) {
                state.retain_sibling(&dot);
            }
        }
    }

    async fn store_state(&self, slot: Slot, partition: u32, key: &[u8], state: &SiblingSet) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.put(slot_table(slot), storage_key(slot, partition, key), state.encode());
        Ok(self.io.commit(batch).await?)
    }

    /// Merges `incoming` into the local state of `key`; returns the merged
    /// state and whether anything changed (and was stored).
    ///
    /// With `bound`, a merge that would leave more than that many siblings
    /// (and more than the local state had) is refused and nothing is
    /// stored: a replica never acknowledges a new write past the sibling
    /// limit. Repairs and hints merge without a bound, so replicas always
    /// converge.
    ///
    /// # Errors
    /// [`Error::TooManySiblings`], [`Error::ShuttingDown`] or a store error.
    pub(crate) async fn merge(
        &self,
        slot: Slot,
        partition: u32,
        key: &[u8],
        hash: u64,
        incoming: &SiblingSet,
        bound: Option<usize>,
    ) -> Result<(SiblingSet, bool)> {
        let closed = self.closed.read().await;
        if *closed {
            return Err(Error::ShuttingDown);
        }
        self.clock.observe(incoming.max_timestamp());
        let _guard = self.stripe(hash).lock().await;
        let current = self.load(slot, partition, key).await?;
        let mut merged = current.clone().unwrap_or_default();
        merged.merge(incoming);
        self.prune(key, &mut merged);
        let before = current.as_ref().map_or(0, |c| c.siblings().len());
        if let Some(max) = bound {
            if exceeds_bound(before, merged.siblings().len(), max) {
                return Err(too_many_siblings(key, merged.siblings().len(), max));
            }
        }
        let changed = current.as_ref() != Some(&merged);
        if changed {
            self.store_state(slot, partition, key, &merged).await?;
        }
        drop(closed);
        Ok((merged, changed))
    }

    /// Coordinates a write: picks this node's actor and next dot for the
    /// key, timestamps the write after everything this node and the
    /// client have seen, applies it to the local state and stores it.
    ///
    /// # Errors
    /// [`Error::TooManySiblings`] or [`Error::Expired`] (nothing stored),
    /// [`Error::ShuttingDown`], or a store error.
    pub(crate) async fn write(&self, intent: WriteIntent<'_>) -> Result<LocalWrite> {
        let closed = self.closed.read().await;
        if *closed {
            return Err(Error::ShuttingDown);
        }
        let _guard = self.stripe(intent.hash).lock().await;
        let mut state = self.load(intent.slot, intent.partition, intent.key).await?.unwrap_or_default();
        if let Some(start_by) = intent.start_by_us {
            // Checked after the lock and the load, right before the dot is
            // made: a write that waited past its deadline is dropped.
            let now = self.clock.physical_us();
            if now >= start_by {
                return Err(Error::Expired { late_ms: (now - start_by) / 1000 });
            }
        }
        let client_context = match (intent.context, &intent.value) {
            (Some(c), _) => c.clone(),
            (None, Some(_)) => CausalContext::new(),
            (None, None) => state.context().clone(),
        };
        let actor = self.actor_for(intent.slot, &state).await?;
        // The client's context may hold dots of this actor the local state
        // lacks (it should not, but a dot is never worth reissuing).
        let counter = state.next_counter(&actor).max(client_context.max_counter(&actor).saturating_add(1));
        let dot = Dot { actor, counter };
        self.clock.observe(state.max_timestamp().max(intent.seen_us));
        let timestamp = self.clock.now();
        let before = state.siblings().len();
        state.apply_typed_write(&client_context, dot, timestamp, intent.value, intent.content_type);
        self.prune(intent.key, &mut state);
        if exceeds_bound(before, state.siblings().len(), intent.max_siblings) {
            return Err(too_many_siblings(intent.key, state.siblings().len(), intent.max_siblings));
        }
        self.store_state(intent.slot, intent.partition, intent.key, &state).await?;
        drop(closed);
        let mut context = client_context;
        context.insert(dot);
        Ok(LocalWrite { state, context: Context::new(context).with_seen(timestamp), dot })
    }

    /// Takes back a coordinated write that its replicas refused: removes
    /// its sibling but keeps its dot in the context, so that every replica
    /// that stored it drops it when it merges this state. Returns the new
    /// state if the sibling was still there.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`] or a store error.
    pub(crate) async fn retract(
        &self,
        slot: Slot,
        partition: u32,
        key: &[u8],
        hash: u64,
        dot: &Dot,
    ) -> Result<Option<SiblingSet>> {
        let closed = self.closed.read().await;
        if *closed {
            return Err(Error::ShuttingDown);
        }
        let _guard = self.stripe(hash).lock().await;
        let Some(mut state) = self.load(slot, partition, key).await? else { return Ok(None) };
        if !state.retract(dot) {
            return Ok(None);
        }
        self.store_state(slot, partition, key, &state).await?;
        drop(closed);
        Ok(Some(state))
    }

    /// The actor for a new dot on a key whose local state is `state`.
    ///
    /// An epoch this store allocated and that already appears in the key's
    /// state is reused: the state then holds every dot issued under it. A
    /// key with no such epoch (new key, wiped store, or a hint slot whose
    /// state is dropped once delivered) gets a fresh epoch.
    async fn actor_for(&self, slot: Slot, state: &SiblingSet) -> Result<Actor> {
        if slot == Slot::Data {
            let own = state
                .context()
                .actors()
                .filter(|a| a.node == self.node && self.epochs.is_own(a.epoch))
                .max_by_key(|a| a.epoch);
            if let Some(actor) = own {
                return Ok(actor);
            }
        }
        let epoch = self.epochs.allocate(&self.io).await?;
        Ok(Actor { node: self.node, epoch })
    }

    /// About `max_bytes` of `partition`'s data after user key `after` (from
    /// its start with `None`), ascending by key: `(user key, encoded
    /// state)` pairs, and whether the partition's range ends there. One
    /// key's state may cross `max_bytes`; at least one key is returned
    /// unless the range is exhausted.
    ///
    /// # Errors
    /// A store error.
    pub(crate) async fn scan_partition(
        &self,
        partition: u32,
        after: Option<Bytes>,
        max_bytes: usize,
    ) -> Result<(Vec<(Bytes, Bytes)>, bool)> {
        const PAGE: usize = 256;
        let mut from = match &after {
            Some(key) => {
                let mut k = storage_key(Slot::Data, partition, key).to_vec();
                k.push(0);
                k
            }
            None => partition.to_be_bytes().to_vec(),
        };
        let end = partition.checked_add(1).map(u32::to_be_bytes);
        let mut out = Vec::new();
        let mut bytes = 0;
        loop {
            let start = std::mem::take(&mut from);
            let rows = self
                .io
                .read(move |s| s.scan(Table::Data, &start, end.as_ref().map(|e| &e[..]), PAGE))
                .await?;
            let full = rows.len() == PAGE;
            for (k, v) in rows {
                if bytes >= max_bytes {
                    return Ok((out, false));
                }
                bytes += k.len() + v.len();
                from = k.to_vec();
                from.push(0);
                out.push((k.slice(4..), v));
            }
            if !full {
                return Ok((out, true));
            }
        }
    }

    /// Deletes every key of `partition` from the data table (the node no
    /// longer replicates it); returns how many were deleted.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`] or a store error.
    pub(crate) async fn drop_partition(&self, partition: u32) -> Result<usize> {
        const PAGE: usize = 1024;
        let start = partition.to_be_bytes();
        let end = partition.checked_add(1).map(u32::to_be_bytes);
        let mut dropped = 0;
        loop {
            let closed = self.closed.read().await;
            if *closed {
                return Err(Error::ShuttingDown);
            }
            let rows = self
                .io
                .read(move |s| s.scan(Table::Data, &start, end.as_ref().map(|e| &e[..]), PAGE))
                .await?;
            if rows.is_empty() {
                return Ok(dropped);
            }
            let mut batch = WriteBatch::new();
            dropped += rows.len();
            for (k, _) in rows {
                batch.delete(Table::Data, k);
            }
            self.io.commit(batch).await?;
            drop(closed);
        }
    }

    /// Up to `limit` hints whose storage key is at or after `from`.
    pub(crate) async fn scan_hints(&self, from: Bytes, limit: usize) -> Result<Vec<StoredHint>> {
        let rows = self.io.read(move |s| s.scan(Table::Hints, &from, None, limit)).await?;
        Ok(rows.into_iter().filter_map(|(k, v)| parse_hint(k, v)).collect())
    }

    /// Removes a delivered hint, unless it changed since it was read (then
    /// the newer hint stays for the next round). Returns whether it was removed.
    pub(crate) async fn remove_hint_if_unchanged(&self, hint: &StoredHint, hash: u64) -> Result<bool> {
        let closed = self.closed.read().await;
        if *closed {
            return Err(Error::ShuttingDown);
        }
        let _guard = self.stripe(hash).lock().await;
        let sk = hint.storage_key.clone();
        let current = self.io.read(move |s| s.get(Table::Hints, &sk)).await?;
        if current.as_ref() != Some(&hint.state) {
            return Ok(false);
        }
        let mut batch = WriteBatch::new();
        batch.delete(Table::Hints, hint.storage_key.clone());
        self.io.commit(batch).await?;
        drop(closed);
        Ok(true)
    }
}

/// Decodes a state read from the local store.
pub(crate) fn decode_stored(bytes: &[u8]) -> Result<SiblingSet> {
    SiblingSet::decode(bytes).map_err(|e| Error::Corrupt(format!("stored key state: {e}")))
}
