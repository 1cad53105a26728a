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

use crate::antientropy::trees::{Finish, Trees};
use crate::causality::{Actor, CausalContext, Context, Dot, SiblingSet};
use crate::clock::HybridClock;
use crate::config::Config;
use crate::epoch::{Epochs, StartKind};
use crate::error::{Error, Result};
use crate::fault_point::Faults;
use crate::member::NodeId;
use crate::merkle::{state_version, KeyDigest, LeafDigest, MerkleTree, TreeShape};
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

/// What a merge refuses ([`Replica::merge`]); the default refuses nothing.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Admit {
    /// The sibling bound of a new write's replication.
    pub(crate) bound: Option<usize>,
    /// For a key absent here, the oldest newest-timestamp (µs) accepted.
    pub(crate) fresh_after_us: Option<u64>,
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
    /// The Merkle tree of every partition kept here, updated by every
    /// change of the data table.
    trees: Trees,
}

/// The tree version of a stored state: the hash of its bytes when they
/// are in today's (canonical) encoding, else of its re-encoding, so that
/// equal states have equal versions on every node
/// ([`state_version`]).
fn stored_version(raw: &[u8], state: &SiblingSet) -> u64 {
    if SiblingSet::is_current_encoding(raw) {
        xxhash_rust::xxh3::xxh3_64(raw)
    } else {
        state_version(state)
    }
}

/// The largest page of keys a partition scan reads at once.
const SCAN_PAGE_BYTES: usize = 1 << 20;

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
        let io = StoreIo::start(store, config.max_commit_batch, config.read_cache_bytes, faults)?;
        Ok(Replica {
            node,
            io,
            stripes: (0..config.lock_stripes.max(1)).map(|_| Mutex::new(())).collect(),
            epochs,
            reconciler,
            clock,
            closed: RwLock::new(false),
            start,
            trees: Trees::new(TreeShape::DEFAULT),
        })
    }

    /// The node's Merkle trees.
    pub(crate) fn trees(&self) -> &Trees {
        &self.trees
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
        Ok(self.io.get(slot_table(slot), sk).await?)
    }

    /// The decoded state of `key` in `slot`.
    pub(crate) async fn load(&self, slot: Slot, partition: u32, key: &[u8]) -> Result<Option<SiblingSet>> {
        self.load_raw(slot, partition, key).await?.map(|b| decode_stored(&b)).transpose()
    }

    /// The decoded state of `key` in `slot` and its tree version.
    async fn load_versioned(
        &self,
        slot: Slot,
        partition: u32,
        key: &[u8],
    ) -> Result<Option<(SiblingSet, u64)>> {
        let Some(raw) = self.load_raw(slot, partition, key).await? else { return Ok(None) };
        let state = decode_stored(&raw)?;
        let version = stored_version(&raw, &state);
        Ok(Some((state, version)))
    }

    /// Applies the reconciler's deterministic winner, if it names one.
    fn prune(&self, key: &[u8], state: &mut SiblingSet) {
        if state.siblings().len() > 1 {
            if let Resolution::Winner(dot) = self.reconciler.reconcile(key, state.siblings()) {
                state.retain_sibling(&dot);
            }
        }
    }

    /// Stores `state` for `key`, whose stored version was `old`, and
    /// records the change in the partition's tree. The caller holds the
    /// key's stripe lock.
    async fn store_state(
        &self,
        slot: Slot,
        partition: u32,
        key: &[u8],
        old: Option<u64>,
        state: &SiblingSet,
    ) -> Result<()> {
        let encoded = Bytes::from(state.encode());
        let version = xxhash_rust::xxh3::xxh3_64(&encoded);
        let mut batch = WriteBatch::new();
        batch.put(slot_table(slot), storage_key(slot, partition, key), encoded);
        if slot != Slot::Data {
            return Ok(self.io.commit(batch).await?);
        }
        let change = self.trees.begin_change(partition);
        let result = self.io.commit(batch).await;
        // On an error the write may or may not have been applied: the
        // tree no longer knows the key's version.
        change.end(key, result.is_ok().then_some((old, Some(version))));
        Ok(result?)
    }

    /// Merges `incoming` into the local state of `key`; returns the merged
    /// state and whether anything changed (and was stored).
    ///
    /// With `admit.bound`, a merge that would leave more than that many siblings
    /// (and more than the local state had) is refused and nothing is
    /// stored: a replica never acknowledges a new write past the sibling
    /// limit. Repairs and hints merge without a bound, so replicas always
    /// converge.
    ///
    /// A state with no sibling (a retraction) for a key this node does not
    /// hold changes nothing in its data; a hint slot keeps it.
    ///
    /// With `admit.fresh_after_us`, a state with siblings for a key this node does not hold is
    /// refused (nothing stored) when its newest timestamp is before it: a
    /// write or hint that old may be of a key whose tombstone has been
    /// purged since, and must not bring it back (anti-entropy, which
    /// ships only what replicas hold, repairs keys that old).
    ///
    /// # Errors
    /// [`Error::TooManySiblings`], [`Error::Expired`], [`Error::ShuttingDown`]
    /// or a store error.
    pub(crate) async fn merge(
        &self,
        slot: Slot,
        partition: u32,
        key: &[u8],
        hash: u64,
        incoming: &SiblingSet,
        admit: Admit,
    ) -> Result<(SiblingSet, bool)> {
        let Admit { bound, fresh_after_us } = admit;
        let closed = self.closed.read().await;
        if *closed {
            return Err(Error::ShuttingDown);
        }
        self.clock.observe(incoming.max_timestamp());
        let _guard = self.stripe(hash).lock().await;
        let (current, old) = self.load_versioned(slot, partition, key).await?.unzip();
        let retraction_only = incoming.siblings().is_empty();
        if current.is_none() && retraction_only && slot == Slot::Data {
            // A state of no sibling only takes back what this node lacks.
            // (A hint keeps it: the owner may hold what it takes back.)
            return Ok((SiblingSet::new(), false));
        }
        if let Some(cutoff) = fresh_after_us {
            let newest = incoming.max_timestamp();
            if current.is_none() && !retraction_only && newest < cutoff {
                return Err(Error::Expired { late_ms: (cutoff - newest) / 1000 });
            }
        }
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
            self.store_state(slot, partition, key, old, &merged).await?;
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
        let (state, old) = self.load_versioned(intent.slot, intent.partition, intent.key).await?.unzip();
        let mut state = state.unwrap_or_default();
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
        self.store_state(intent.slot, intent.partition, intent.key, old, &state).await?;
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
        let Some((mut state, old)) = self.load_versioned(slot, partition, key).await? else {
            return Ok(None);
        };
        if !state.retract(dot) {
            return Ok(None);
        }
        self.store_state(slot, partition, key, Some(old), &state).await?;
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
        self.trees.forget(partition);
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
                self.trees.forget(partition);
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

    /// Every `(user key, raw state)` of `partition`, page by page: `each`
    /// sees each page in key order.
    async fn scan_all(&self, partition: u32, mut each: impl FnMut(Vec<(Bytes, Bytes)>)) -> Result<()> {
        let mut after = None;
        loop {
            let (rows, done) = self.scan_partition(partition, after.take(), SCAN_PAGE_BYTES).await?;
            after = rows.last().map(|(k, _)| k.clone());
            each(rows);
            if done || after.is_none() {
                return Ok(());
            }
        }
    }

    /// Rebuilds `partition`'s Merkle tree from a scan of its keys while
    /// writes go on (see [`crate::antientropy::trees`]). Returns `false`
    /// when another rebuild of it is running, or when the partition was
    /// forgotten meanwhile or stays too busy to settle (tried again later).
    ///
    /// # Errors
    /// A store error or [`Error::ShuttingDown`]; the old tree, if any, stays.
    pub(crate) async fn rebuild_tree(&self, partition: u32) -> Result<bool> {
        /// Correction rounds before a busy partition is left for later.
        const MAX_ROUNDS: usize = 256;
        if !self.trees.begin_rebuild(partition) {
            return Ok(false);
        }
        let result = self.rebuild_scanned(partition, MAX_ROUNDS).await;
        if !matches!(result, Ok(true)) {
            self.trees.abort_rebuild(partition);
        }
        result
    }

    async fn rebuild_scanned(&self, partition: u32, rounds: usize) -> Result<bool> {
        let shape = self.trees.shape();
        let mut tree = MerkleTree::new(shape);
        // What the tree holds per key hash, to correct keys changed meanwhile.
        let mut seen: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
        let mut bad = 0usize;
        self.scan_all(partition, |rows| {
            for (key, raw) in rows {
                match SiblingSet::decode(&raw) {
                    Ok(state) => {
                        let version = stored_version(&raw, &state);
                        tree.update(&key, None, Some(version));
                        seen.insert(xxhash_rust::xxh3::xxh3_64(&key), version);
                    }
                    Err(_) => bad += 1,
                }
            }
        })
        .await?;
        if bad > 0 {
            tracing::warn!(node = %self.node, partition, keys = bad, "undecodable key states left out of the Merkle tree");
        }
        for _ in 0..rounds {
            match self.trees.finish_rebuild(partition, &tree) {
                Finish::Installed => return Ok(true),
                Finish::Cancelled => return Ok(false),
                Finish::Correct(keys) => {
                    if keys.is_empty() {
                        // Only changes under way hold the tree back.
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                    for key in keys {
                        let hash = crate::ring::key_hash(&key);
                        let _guard = self.stripe(hash).lock().await;
                        // An undecodable state is left out, as the scan does.
                        let raw = self.load_raw(Slot::Data, partition, &key).await?;
                        let now =
                            raw.and_then(|r| SiblingSet::decode(&r).ok().map(|s| stored_version(&r, &s)));
                        let id = xxhash_rust::xxh3::xxh3_64(&key);
                        tree.update(&key, seen.get(&id).copied(), now);
                        match now {
                            Some(v) => seen.insert(id, v),
                            None => seen.remove(&id),
                        };
                    }
                }
            }
        }
        Ok(false)
    }

    /// The key digests of `leaves` (strictly increasing) of `partition`,
    /// from a scan of the partition: one [`LeafDigest`] per leaf, keys in
    /// ascending order.
    ///
    /// # Errors
    /// A store error.
    pub(crate) async fn leaf_digests(&self, partition: u32, leaves: &[u32]) -> Result<Vec<LeafDigest>> {
        let shape = self.trees.shape();
        let mut out: Vec<LeafDigest> =
            leaves.iter().map(|&leaf| LeafDigest { leaf, keys: Vec::new() }).collect();
        self.scan_all(partition, |rows| {
            for (key, raw) in rows {
                let leaf = shape.leaf_of(&key);
                let Ok(i) = leaves.binary_search(&leaf) else { continue };
                let Ok(state) = SiblingSet::decode(&raw) else { continue };
                let version = stored_version(&raw, &state);
                out[i].keys.push(KeyDigest::new(key, version).with_events(state.context().events()));
            }
        })
        .await?;
        Ok(out)
    }

    /// The tombstones of `partition` (states whose siblings are all
    /// deletes) whose newest timestamp is before `before_us`, at most
    /// `limit` of them, with their versions.
    ///
    /// # Errors
    /// A store error.
    pub(crate) async fn old_tombstones(
        &self,
        partition: u32,
        before_us: u64,
        limit: usize,
    ) -> Result<Vec<KeyDigest>> {
        let mut out = Vec::new();
        self.scan_all(partition, |rows| {
            for (key, raw) in rows {
                if out.len() >= limit {
                    return;
                }
                let Ok(state) = SiblingSet::decode(&raw) else { continue };
                if is_purgeable(&state, before_us) {
                    out.push(KeyDigest::new(key, stored_version(&raw, &state)));
                }
            }
        })
        .await?;
        Ok(out)
    }

    /// For each of `keys` (of `partition`), whether this node holds it as
    /// a tombstone older than `before_us` at exactly the digest's version.
    ///
    /// # Errors
    /// A store error.
    pub(crate) async fn holds_tombstones(
        &self,
        partition: u32,
        keys: &[KeyDigest],
        before_us: u64,
    ) -> Result<Vec<bool>> {
        let mut held = Vec::with_capacity(keys.len());
        for digest in keys {
            let found = self.load_versioned(Slot::Data, partition, &digest.key).await?;
            held.push(found.is_some_and(|(s, v)| v == digest.version && is_purgeable(&s, before_us)));
        }
        Ok(held)
    }

    /// Deletes each of `keys` (of `partition`) that is still a tombstone
    /// older than `before_us` at exactly the digest's version, under the
    /// key's stripe lock: a key written since the check keeps its state.
    /// Returns how many were deleted.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`] or a store error.
    pub(crate) async fn purge_tombstones(
        &self,
        partition: u32,
        keys: &[KeyDigest],
        before_us: u64,
    ) -> Result<u64> {
        let mut purged = 0;
        for digest in keys {
            let closed = self.closed.read().await;
            if *closed {
                return Err(Error::ShuttingDown);
            }
            let _guard = self.stripe(crate::ring::key_hash(&digest.key)).lock().await;
            let Some((state, version)) = self.load_versioned(Slot::Data, partition, &digest.key).await?
            else {
                continue;
            };
            if version != digest.version || !is_purgeable(&state, before_us) {
                continue;
            }
            let mut batch = WriteBatch::new();
            batch.delete(Table::Data, storage_key(Slot::Data, partition, &digest.key));
            let change = self.trees.begin_change(partition);
            let result = self.io.commit(batch).await;
            change.end(&digest.key, result.is_ok().then_some((Some(version), None)));
            result?;
            purged += 1;
        }
        Ok(purged)
    }

    /// Merges the `states` of `partition`'s keys concurrently, so the
    /// store's group commit makes one batch (and one fsync) of many keys;
    /// returns how many changed the local state. Repairs merge without a
    /// sibling bound.
    ///
    /// # Errors
    /// The first merge's error (others may have been stored).
    pub(crate) async fn merge_many(&self, partition: u32, states: Vec<(Bytes, SiblingSet)>) -> Result<u64> {
        use futures::stream::{StreamExt, TryStreamExt};
        /// Keys merged at once.
        const IN_FLIGHT: usize = 64;
        let merges = states.into_iter().map(|(key, incoming)| async move {
            let (_, changed) = self
                .merge(Slot::Data, partition, &key, crate::ring::key_hash(&key), &incoming, Admit::default())
                .await?;
            Ok::<u64, Error>(u64::from(changed))
        });
        futures::stream::iter(merges)
            .buffer_unordered(IN_FLIGHT)
            .try_fold(0, |n, c| async move { Ok(n + c) })
            .await
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

/// Whether `state` may be purged once every replica holds it: it has
/// siblings and every one is a delete, the newest before `before_us`. (A
/// state with no sibling at all, left by a retracted write, is kept: its
/// context is what stops a late copy of that write.)
pub(crate) fn is_purgeable(state: &SiblingSet, before_us: u64) -> bool {
    !state.siblings().is_empty() && state.live_count() == 0 && state.max_timestamp() < before_us
}

/// Checks a batch of `(user key, encoded state)` pairs a peer sent for
/// `partition` whole, before anything of it is stored: every key within
/// the limits and of that partition under `ring`, every state decodable.
///
/// # Errors
/// [`Error::Protocol`] (or the key's limit error) naming the first bad
/// entry; `what` names the message for the log.
pub(crate) fn check_batch(
    config: &Config,
    ring: &crate::ring::Ring,
    partition: u32,
    entries: Vec<(Bytes, Bytes)>,
    what: &str,
) -> Result<Vec<(Bytes, SiblingSet)>> {
    let mut states = Vec::with_capacity(entries.len());
    for (key, state) in entries {
        crate::validation::check_key(config, &key)?;
        if ring.partition_of(&key) != partition {
            return Err(Error::Protocol(format!(
                "{what} of partition {partition} sent key {key:?} of partition {}",
                ring.partition_of(&key)
            )));
        }
        let incoming = SiblingSet::decode(&state)
            .map_err(|e| Error::Protocol(format!("{what} sent a bad state for {key:?}: {e}")))?;
        states.push((key, incoming));
    }
    Ok(states)
}

/// Decodes a state read from the local store.
pub(crate) fn decode_stored(bytes: &[u8]) -> Result<SiblingSet> {
    SiblingSet::decode(bytes).map_err(|e| Error::Corrupt(format!("stored key state: {e}")))
}
