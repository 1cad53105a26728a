//! Anti-entropy (Dynamo §4.7): replicas of a partition compare Merkle
//! trees and repair what differs, so a replica that missed writes
//! converges even for keys nobody reads; and the tombstone purge that
//! relies on it.
//!
//! **Trees.** Each node keeps one tree per partition it replicates
//! ([`trees`]), updated on every change of a key's stored state, built
//! from a scan of the partition when the node starts (or the partition is
//! gained, or a change may have been lost), and rebuilt every
//! `aae_rebuild_interval_ms` to catch what updates cannot see.
//!
//! **Exchange.** Every `aae_interval_ms` a node compares each partition it
//! replicates (and whose data is not moving) with one other replica, the
//! replicas taken in turn: it sends its root; the two sides answer each
//! other with the hashes of the children of the nodes that differ until
//! one knows the differing leaves ([`crate::merkle`]); the initiator sends
//! its keys of those leaves as tags (4 bytes of key, 4 of version, an
//! event count: [`crate::merkle::TaggedLeaves`]), the peer answers with its states of
//! the keys that differ or only it holds and names the keys it wants, and
//! the initiator sends those, and its merged state of any key it holds
//! more of than the peer sent. A digest carries how many events its
//! state's causal context has seen: of two differing states, the one that
//! has seen fewer cannot succeed the other, so the side holding it asks
//! for the other's without sending its own. Both sides merge what they
//! receive with the causal merge, so a repair never drops a concurrent
//! sibling. Hashes below the root travel as salted projections (32 bits,
//! 16 for leaves; a fresh salt each exchange, so a collision does not
//! repeat); an exchange whose roots differ but whose projections find no
//! differing leaf descends again at full width. A replica takes part in one
//! exchange of a partition at a time ([`claims`]); an exchange refused
//! for that is tried again later in the round. What
//! crosses the wire grows with what differs, not with what is stored; the
//! states shipped per exchange are bounded by `aae_max_bytes` each way,
//! and what is left is repaired by the next round.
//!
//! **Purge.** A tombstone is deleted only once it is older than
//! `tombstone_grace_ms` and every replica in the partition's preference
//! list holds it at the same version: the partition's first replica asks
//! the others ([`Request::PurgeCheck`]), then tells them to delete each key
//! still at that version ([`Request::Purge`]) and deletes its own copy.
//! Nothing can then bring the key back: no replica holds an older value,
//! hints older than the grace period are dropped rather than delivered,
//! and partitions whose data is moving are not purged.
//!
//! **Admission.** Every rebuild, exchange and purge of a partition holds a
//! background slot ([`crate::background`]), so they yield to foreground
//! latency.

mod claims;
pub(crate) mod trees;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::StreamExt;
use serde::{Deserialize, Serialize};

use self::claims::{Claims, Role};
use crate::background::Background;
use crate::clock::HybridClock;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::member::NodeId;
use crate::membership::{ClusterView, Membership};
use crate::merkle::{diff_tags, resolve_wanted, KeyDigest, NodeHashes, Step, TaggedLeaves};
use crate::metrics::{add, bump, Metrics};
use crate::peers::Peers;
use crate::replica::{check_batch, Replica, Slot};
use crate::ring::Ring;
use crate::transport::protocol::{Request, Response};
use crate::validation::check_key;

/// Most leaves one exchange digests; the rest wait for the next round.
const MAX_LEAVES: usize = 256;

/// How many times a round tries an exchange whose partition was in another
/// exchange (here or at the peer).
const EXCHANGE_PASSES: u32 = 3;

/// The wait before a round's next pass, times the pass number.
const BUSY_WAIT: Duration = Duration::from_millis(100);

/// Most tombstones one purge message names.
const PURGE_BATCH: usize = 1024;

/// Most keys a peer may name in one `want` list or purge message.
const MAX_KEYS_PER_MESSAGE: usize = 64 * 1024;

/// The most bytes of states one exchange ships, whatever a peer asks for.
const MAX_EXCHANGE_BYTES: u32 = 16 << 20;

/// What anti-entropy has done on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AaeStatus {
    /// Whether the timer runs exchanges (`anti_entropy` in the config).
    pub enabled: bool,
    /// Exchanges this node completed as their initiator.
    pub exchanges: u64,
    /// Exchanges this node started that failed.
    pub exchanges_failed: u64,
    /// Keys whose local state a repair changed (as initiator or peer).
    pub keys_repaired: u64,
    /// Key states this node shipped in exchanges.
    pub keys_sent: u64,
    /// Bytes of anti-entropy messages this node sent (hashes, digests, states).
    pub bytes_sent: u64,
    /// Bytes of anti-entropy messages this node received.
    pub bytes_received: u64,
    /// Tombstones purged from this node's store.
    pub tombstones_purged: u64,
    /// Partitions whose tree is built.
    pub trees_ready: u32,
    /// One entry per partition this node replicates, ascending.
    pub partitions: Vec<PartitionAae>,
}

/// Anti-entropy of one partition on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionAae {
    /// The partition.
    pub partition: u32,
    /// Whether its tree is built.
    pub tree_ready: bool,
    /// Wall clock (ms since the Unix epoch) of the last exchange this node
    /// completed for it.
    pub last_exchange_unix_ms: Option<u64>,
    /// The peer of that exchange.
    pub last_peer: Option<NodeId>,
    /// Keys of it whose local state repairs changed, over the node's life.
    pub keys_repaired: u64,
    /// Bytes sent and received by the last exchange.
    pub last_exchange_bytes: u64,
}

/// What one round (or purge pass) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AaeReport {
    /// Exchanges completed.
    pub exchanges: u32,
    /// Exchanges that failed (peer down, refused, tree not built).
    pub failed: u32,
    /// Exchanges not run because the partition stayed in another exchange
    /// (here or at the peer) through every pass; the next round tries them.
    pub busy: u32,
    /// Keys whose state changed, here or at the peers.
    pub keys_repaired: u64,
    /// Bytes sent and received.
    pub bytes: u64,
    /// Tombstones purged here.
    pub purged: u64,
}

/// One exchange's counts.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    sent: u64,
    received: u64,
    repaired_here: u64,
    repaired_there: u64,
    shipped: u64,
    /// Whether the peer holds the partition for this exchange (until a
    /// push ends it).
    peer_claimed: bool,
}

#[derive(Debug, Default, Clone)]
struct PartitionProgress {
    last_exchange_unix_ms: Option<u64>,
    last_peer: Option<NodeId>,
    keys_repaired: u64,
    last_exchange_bytes: u64,
}

#[derive(Default)]
struct Progress {
    partitions: BTreeMap<u32, PartitionProgress>,
    /// Rounds so far: picks each partition's peer in turn.
    turn: usize,
    keys_sent: u64,
}

/// A node's anti-entropy: its exchanges and purges, and its answers to
/// peers' ones.
pub(crate) struct AntiEntropy {
    pub(crate) id: NodeId,
    pub(crate) config: Arc<Config>,
    pub(crate) membership: Arc<dyn Membership>,
    pub(crate) replica: Arc<Replica>,
    pub(crate) peers: Arc<Peers>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) background: Arc<Background>,
    pub(crate) clock: Arc<HybridClock>,
    progress: Mutex<Progress>,
    /// The partitions in an exchange on this node, one exchange each.
    claims: Claims,
    /// Exchanges opened, for their salts.
    salts: AtomicU64,
}

/// Whether `partition`'s data is where `ring` places it (no move under way).
fn settled(view: &ClusterView, partition: u32) -> bool {
    view.handover().is_none_or(|h| h.is_settled(partition))
}

/// The answer to an exchange of a partition already in another one.
fn busy(partition: u32) -> Error {
    Error::Overloaded(format!("partition {partition} is in another anti-entropy exchange"))
}

fn unexpected(what: &str, other: &Response) -> Error {
    Error::Protocol(format!("unexpected answer to {what}: {other:?}"))
}

impl AntiEntropy {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: NodeId,
        config: Arc<Config>,
        membership: Arc<dyn Membership>,
        replica: Arc<Replica>,
        peers: Arc<Peers>,
        metrics: Arc<Metrics>,
        background: Arc<Background>,
        clock: Arc<HybridClock>,
    ) -> AntiEntropy {
        // Each message of an exchange renews its claim; two replica
        // timeouts cover the longest expected gap between them.
        let claims = Claims::new(config.replica_timeout() * 2);
        AntiEntropy {
            id,
            config,
            membership,
            replica,
            peers,
            metrics,
            background,
            claims,
            salts: AtomicU64::new(0),
            clock,
            progress: Mutex::default(),
        }
    }

    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn timeout(&self) -> Duration {
        self.config.request_timeout()
    }

    /// The deletion cutoff: tombstones whose newest timestamp is before it
    /// are past their grace period.
    fn grace_cutoff_us(&self) -> u64 {
        self.config.grace_cutoff_us(self.clock.physical_us())
    }

    /// Sends `request` to `peer`, counting bytes both ways.
    async fn call(&self, peer: NodeId, request: Request, tally: &mut Tally) -> Result<Response> {
        self.call_within(peer, request, tally, self.timeout()).await
    }

    /// [`call`](Self::call) with its own timeout.
    async fn call_within(
        &self,
        peer: NodeId,
        request: Request,
        tally: &mut Tally,
        timeout: Duration,
    ) -> Result<Response> {
        let frame = request.encode();
        tally.sent += frame.len() as u64;
        add(&self.metrics.aae_bytes_sent, frame.len() as u64);
        let (response, size) = self.peers.call_sized(peer, frame, timeout).await?;
        tally.received += size as u64;
        add(&self.metrics.aae_bytes_received, size as u64);
        match response {
            Response::Error(e) => Err(e.into_error()),
            other => Ok(other),
        }
    }

    /// The ring, if `from` and this node both replicate `partition` and
    /// its data is not moving: what a peer's anti-entropy or purge
    /// message must find.
    ///
    /// # Errors
    /// [`Error::NotReplica`] when this node does not replicate it (or its
    /// data moves); [`Error::Protocol`] for a partition that does not exist
    /// or a sender that does not replicate it.
    fn check_peer(&self, from: NodeId, partition: u32) -> Result<Arc<Ring>> {
        let view = self.membership.view();
        let ring = Arc::clone(view.require_ring()?);
        let refuse = |e: Error| {
            tracing::warn!(node = %self.id, %from, partition, error = %e, "refused an anti-entropy message");
            Err(e)
        };
        if partition >= ring.partitions() {
            return refuse(Error::Protocol(format!(
                "partition {partition} does not exist (the ring has {})",
                ring.partitions()
            )));
        }
        if !settled(&view, partition) || !view.replicates(&ring, self.id, partition) {
            return refuse(Error::NotReplica { partition, epoch: ring.epoch() });
        }
        if !view.replicates(&ring, from, partition) {
            return refuse(Error::Protocol(format!(
                "node {from} does not replicate partition {partition} (ring epoch {})",
                ring.epoch()
            )));
        }
        Ok(ring)
    }

    /// Answers a peer's tree hashes ([`Request::AaeTree`]).
    ///
    /// # Errors
    /// [`Error::NotReplica`], [`Error::NotReady`] while the tree is not
    /// built, [`Error::Protocol`] for hashes of another shape or out of range.
    pub(crate) fn serve_tree(
        &self,
        from: NodeId,
        partition: u32,
        hashes: &NodeHashes,
        salt: Option<u64>,
    ) -> Result<Response> {
        self.check_peer(from, partition)?;
        let held = if hashes.level == 0 {
            self.claims.claim_as_responder(partition, from, from < self.id)
        } else {
            self.claims.renew(partition, from, Role::Responder)
        };
        if !held {
            return Err(busy(partition));
        }
        let step = self.replica.trees().respond(partition, hashes, salt);
        if !matches!(step, Some(Ok(Step::Descend(_) | Step::Leaves(_)))) {
            self.claims.release(partition, from, Role::Responder);
        }
        match step {
            None => {
                Err(Error::NotReady(format!("the Merkle tree of partition {partition} is not built yet")))
            }
            Some(Err(e)) => {
                tracing::warn!(node = %self.id, %from, partition, error = %e, "refused bad Merkle tree hashes");
                Err(Error::Protocol(format!("tree hashes of partition {partition}: {e}")))
            }
            Some(Ok(step)) => Ok(Response::AaeStep(step)),
        }
    }

    /// Answers a peer's tagged keys ([`Request::AaeKeys`]): this node's
    /// states of the keys that differ or only it holds (up to `max_bytes`),
    /// and what it wants.
    ///
    /// # Errors
    /// [`Error::NotReplica`]; [`Error::Protocol`] for tags of another
    /// shape, unsorted, or too many leaves; store errors.
    pub(crate) async fn serve_keys(
        &self,
        from: NodeId,
        partition: u32,
        digests: &TaggedLeaves,
        max_bytes: u32,
    ) -> Result<Response> {
        self.check_peer(from, partition)?;
        if !self.claims.renew(partition, from, Role::Responder) {
            return Err(busy(partition));
        }
        let bad = |m: String| {
            tracing::warn!(node = %self.id, %from, partition, error = %m, "refused bad anti-entropy key digests");
            Error::Protocol(format!("key digests of partition {partition}: {m}"))
        };
        let shape = self.replica.trees().shape();
        if digests.shape != shape {
            return Err(bad(format!("shape {} differs from ours, {shape}", digests.shape)));
        }
        shape.check_tagged(digests).map_err(|e| bad(e.to_string()))?;
        if digests.leaves.len() > MAX_LEAVES {
            return Err(bad(format!("{} leaves, at most {MAX_LEAVES}", digests.leaves.len())));
        }
        let leaves: Vec<u32> = digests.leaves.iter().map(|l| l.leaf).collect();
        let mine = self.replica.leaf_digests(partition, &leaves).await?;
        let (mut send, mut want) = (Vec::new(), Vec::new());
        for (m, t) in mine.iter().zip(&digests.leaves) {
            let diff = diff_tags(m, t, digests.salt);
            send.extend(diff.send);
            want.extend(diff.want);
        }
        let limit = max_bytes.clamp(1, MAX_EXCHANGE_BYTES) as usize;
        let states = self.load_states(partition, send, limit, &HashMap::new()).await?;
        self.progress().keys_sent += states.len() as u64;
        if states.is_empty() && want.is_empty() {
            // Nothing differs: no push follows.
            self.claims.release(partition, from, Role::Responder);
        }
        Ok(Response::AaeKeys { states, want })
    }

    /// Merges the states a peer pushed ([`Request::AaePush`]).
    ///
    /// # Errors
    /// [`Error::NotReplica`]; [`Error::Protocol`] (nothing stored) for a
    /// bad key or state; store errors.
    pub(crate) async fn serve_push(
        &self,
        from: NodeId,
        partition: u32,
        states: Vec<(Bytes, Bytes)>,
    ) -> Result<Response> {
        let ring = self.check_peer(from, partition).inspect_err(|_| {
            // Whatever the answer, a push ends the exchange.
            self.claims.release(partition, from, Role::Responder);
        })?;
        let merged = self.merge_pushed(from, &ring, partition, states).await;
        // The push ends the exchange.
        self.claims.release(partition, from, Role::Responder);
        let repaired = merged?;
        self.count_repaired(partition, repaired);
        Ok(Response::AaePushed { repaired: u32::try_from(repaired).unwrap_or(u32::MAX) })
    }

    /// Checks and merges the states of a push; how many keys changed.
    async fn merge_pushed(
        &self,
        from: NodeId,
        ring: &Ring,
        partition: u32,
        states: Vec<(Bytes, Bytes)>,
    ) -> Result<u64> {
        if states.len() > MAX_KEYS_PER_MESSAGE {
            return Err(Error::Protocol(format!(
                "{} states in one push, at most {MAX_KEYS_PER_MESSAGE}",
                states.len()
            )));
        }
        let states = check_batch(&self.config, ring, partition, states, "anti-entropy push").inspect_err(
            |e| tracing::warn!(node = %self.id, %from, partition, error = %e, "refused an anti-entropy push"),
        )?;
        self.replica.merge_many(partition, states).await
    }

    fn count_repaired(&self, partition: u32, repaired: u64) {
        if repaired > 0 {
            add(&self.metrics.aae_keys_repaired, repaired);
            self.progress().partitions.entry(partition).or_default().keys_repaired += repaired;
        }
    }

    /// The stored states of `keys` of `partition`, until `limit` bytes,
    /// leaving out each state equal to the one the peer sent for its key
    /// (`peer_sent`): the peer holds it already.
    async fn load_states(
        &self,
        partition: u32,
        keys: Vec<Bytes>,
        limit: usize,
        peer_sent: &HashMap<Bytes, Bytes>,
    ) -> Result<Vec<(Bytes, Bytes)>> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for key in keys {
            if bytes >= limit {
                break;
            }
            if let Some(raw) = self.replica.load_raw(Slot::Data, partition, &key).await? {
                if peer_sent.get(&key) == Some(&raw) {
                    continue;
                }
                bytes += key.len() + raw.len();
                out.push((key, raw));
            }
        }
        Ok(out)
    }

    /// A salt for one exchange of `partition`: different for every
    /// exchange this node opens, yet reproducible in a seeded simulation.
    fn next_salt(&self, partition: u32) -> u64 {
        let n = self.salts.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 20];
        buf[..8].copy_from_slice(&self.id.0.to_le_bytes());
        buf[8..12].copy_from_slice(&partition.to_le_bytes());
        buf[12..].copy_from_slice(&n.to_le_bytes());
        xxhash_rust::xxh3::xxh3_64(&buf)
    }

    /// Compares `partition` with `peer` and repairs both sides.
    async fn exchange(&self, ring: &Ring, partition: u32, peer: NodeId) -> Result<Tally> {
        let mut tally = Tally::default();
        let result = self.compare(ring, partition, peer, &mut tally).await;
        if tally.peer_claimed {
            // The exchange stopped while the peer holds the partition for
            // it: an empty push ends it there.
            let end = Request::AaePush { from: self.id, partition, states: Vec::new() };
            if let Err(e) = self.call_within(peer, end, &mut tally, self.config.replica_timeout()).await {
                tracing::debug!(node = %self.id, partition, %peer, error = %e, "cannot end an exchange");
            }
        }
        result.map(|()| tally)
    }

    /// The steps of [`exchange`](Self::exchange): trees (hashes below the
    /// root projected under a fresh salt, then at full width if those
    /// found nothing under a differing root), key digests, push.
    async fn compare(&self, ring: &Ring, partition: u32, peer: NodeId, tally: &mut Tally) -> Result<()> {
        let salt = self.next_salt(partition);
        let Some(leaves) = self.differing_leaves(partition, peer, Some(salt), tally).await? else {
            return Ok(());
        };
        let leaves = match leaves {
            Some(leaves) => leaves,
            None => match self.differing_leaves(partition, peer, None, tally).await? {
                Some(Some(leaves)) => leaves,
                _ => return Ok(()),
            },
        };
        self.repair_leaves(ring, partition, peer, leaves, salt, tally).await
    }

    /// Descends `partition`'s tree and the peer's to the leaves that
    /// differ: `None` if the roots match, `Some(None)` if they differ yet
    /// no leaf was found to (hashes compared short may hide one, or the
    /// trees changed meanwhile), else the leaves, strictly increasing.
    async fn differing_leaves(
        &self,
        partition: u32,
        peer: NodeId,
        salt: Option<u64>,
        tally: &mut Tally,
    ) -> Result<Option<Option<Vec<u32>>>> {
        let trees = self.replica.trees();
        let not_ready =
            || Error::NotReady(format!("the Merkle tree of partition {partition} is not built yet"));
        let mut msg = trees.root_hashes(partition).ok_or_else(not_ready)?;
        let shape = trees.shape();
        let mut leaves = None;
        // Each round trip descends two levels; a bound stops a peer that
        // never says "leaves".
        for step_no in 0..=shape.depth() {
            let request = Request::AaeTree { from: self.id, partition, hashes: msg, salt };
            let step = match self.call(peer, request, tally).await? {
                Response::AaeStep(step) => step,
                other => return Err(unexpected("a Merkle tree exchange", &other)),
            };
            // The peer holds the partition for this exchange unless it
            // found nothing differing.
            tally.peer_claimed = !matches!(step, Step::InSync);
            let theirs = match step {
                Step::InSync if step_no == 0 => return Ok(None),
                Step::InSync => return Ok(Some(None)),
                Step::Leaves(l) => {
                    leaves = Some(l);
                    break;
                }
                Step::Descend(theirs) => theirs,
            };
            match trees.respond(partition, &theirs, salt).ok_or_else(not_ready)? {
                Ok(Step::InSync) => return Ok(Some(None)),
                Ok(Step::Leaves(l)) => {
                    leaves = Some(l);
                    break;
                }
                Ok(Step::Descend(mine)) => msg = mine,
                Err(e) => return Err(Error::Protocol(format!("peer {peer} sent bad tree hashes: {e}"))),
            }
        }
        let Some(mut leaves) = leaves else {
            return Err(Error::Protocol(format!(
                "peer {peer} never reached the leaves of partition {partition}"
            )));
        };
        if leaves.windows(2).any(|w| w[0] >= w[1]) || leaves.last().is_some_and(|&l| l >= shape.leaves()) {
            return Err(Error::Protocol(format!("peer {peer} named bad leaves of partition {partition}")));
        }
        leaves.truncate(MAX_LEAVES);
        Ok(Some(Some(leaves)))
    }

    /// Exchanges the key digests of `leaves` with the peer, merges the
    /// states it sends and pushes it the ones it lacks.
    async fn repair_leaves(
        &self,
        ring: &Ring,
        partition: u32,
        peer: NodeId,
        leaves: Vec<u32>,
        salt: u64,
        tally: &mut Tally,
    ) -> Result<()> {
        let shape = self.replica.trees().shape();
        let mine = self.replica.leaf_digests(partition, &leaves).await?;
        let request = Request::AaeKeys {
            from: self.id,
            partition,
            digests: TaggedLeaves::of(shape, salt, &mine),
            max_bytes: self.config.aae_max_bytes,
        };
        let (states, want) = match self.call(peer, request, tally).await? {
            Response::AaeKeys { states, want } => (states, want),
            other => return Err(unexpected("anti-entropy key digests", &other)),
        };
        // The peer holds its claim until a push when its answer carried
        // anything; an empty answer ended the exchange.
        let push_due = !states.is_empty() || !want.is_empty();
        tally.peer_claimed = push_due;
        if want.len() > MAX_KEYS_PER_MESSAGE {
            return Err(Error::Protocol(format!("peer {peer} wants {} keys at once", want.len())));
        }
        // A key whose merge leaves this node with exactly the peer's state
        // (the peer's dominated) is not sent back.
        let peer_sent: HashMap<Bytes, Bytes> = states.iter().cloned().collect();
        let states = check_batch(&self.config, ring, partition, states, "anti-entropy")?;
        tally.repaired_here = self.replica.merge_many(partition, states).await?;
        self.count_repaired(partition, tally.repaired_here);
        let mut wanted = resolve_wanted(&mine, &want, salt)
            .map_err(|e| Error::Protocol(format!("peer {peer} asked for what it was not offered: {e}")))?;
        // The peer sends without asking back a state it found newer (more
        // events seen); if this node's merge kept something the peer's
        // state lacks (a concurrent sibling), the merged state goes back.
        let asked: std::collections::HashSet<&Bytes> = wanted.iter().collect();
        let mut sent_back: Vec<Bytes> = peer_sent.keys().filter(|k| !asked.contains(k)).cloned().collect();
        sent_back.sort_unstable();
        wanted.extend(sent_back);
        let limit = self.config.aae_max_bytes.clamp(1, MAX_EXCHANGE_BYTES) as usize;
        let states = self.load_states(partition, wanted, limit, &peer_sent).await?;
        if push_due {
            // Delivered or not, this push is the exchange's last message.
            tally.peer_claimed = false;
            tally.shipped = states.len() as u64;
            self.progress().keys_sent += tally.shipped;
            let request = Request::AaePush { from: self.id, partition, states };
            match self.call(peer, request, tally).await? {
                Response::AaePushed { repaired } => tally.repaired_there = u64::from(repaired),
                other => return Err(unexpected("an anti-entropy push", &other)),
            }
        }
        Ok(())
    }

    /// The partitions this node replicates under the current view.
    fn replicated(&self) -> Option<(Arc<Ring>, Vec<u32>)> {
        let view = self.membership.view();
        let ring = Arc::clone(view.ring()?);
        let mine = (0..ring.partitions()).filter(|&p| view.replicates(&ring, self.id, p)).collect();
        Some((ring, mine))
    }

    /// Builds the trees of replicated partitions that have none (or whose
    /// tree is older than the rebuild period), and forgets the others.
    async fn maintain_trees(&self, mine: &[u32]) {
        let trees = self.replica.trees();
        for p in trees.partitions() {
            if mine.binary_search(&p).is_err() {
                trees.forget(p);
            }
        }
        let period = Duration::from_millis(self.config.aae_rebuild_interval_ms);
        for &p in mine {
            let fresh = trees.built(p).is_some_and(|at| at.elapsed() < period);
            if fresh {
                continue;
            }
            let _slot = self.background.slot(&self.metrics).await;
            match self.replica.rebuild_tree(p).await {
                Ok(true) => tracing::debug!(node = %self.id, partition = p, "built a Merkle tree"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(node = %self.id, partition = p, error = %e, "cannot build a Merkle tree")
                }
            }
        }
    }

    /// One round: trees brought up to date, then every replicated, settled
    /// partition compared with its next replica (concurrently, as many as
    /// admission control gives slots). A replica the failure detector
    /// suspects gets one exchange a round, whose answer clears the
    /// suspicion (otherwise only gossip, which may meet it once in many
    /// rounds, would: see [`exchange_pass`](Self::exchange_pass)); the
    /// exchanges refused because a side
    /// was in another exchange of the partition are tried in up to
    /// [`EXCHANGE_PASSES`] passes, then left to the next round.
    pub(crate) async fn round(&self) -> AaeReport {
        let Some((ring, mine)) = self.replicated() else { return AaeReport::default() };
        self.maintain_trees(&mine).await;
        let turn = {
            let mut progress = self.progress();
            progress.turn = progress.turn.wrapping_add(1);
            progress.turn
        };
        let pairs: Vec<(u32, NodeId)> = {
            let view = self.membership.view();
            mine.iter()
                .filter(|&&p| settled(&view, p) && self.replica.trees().is_ready(p))
                .filter_map(|&p| {
                    let others: Vec<NodeId> =
                        ring.preference_list(p).iter().copied().filter(|&n| n != self.id).collect();
                    others.get((turn + p as usize) % others.len().max(1)).map(|&peer| (p, peer))
                })
                .collect()
        };
        let mut report = AaeReport::default();
        let probed = Mutex::new(BTreeSet::new());
        let mut pending = pairs;
        for pass in 1..=EXCHANGE_PASSES {
            if pass > 1 {
                if pending.is_empty() {
                    break;
                }
                // Let the exchanges that held these partitions finish.
                tokio::time::sleep(BUSY_WAIT * pass).await;
            }
            pending = self.exchange_pass(&ring, pending, pass == EXCHANGE_PASSES, &probed, &mut report).await;
        }
        report
    }

    /// Runs the exchanges of `pairs`, adding to `report`; returns those
    /// refused because a side was in another exchange of the partition
    /// (counted as busy instead when `last`). An exchange with a peer the
    /// failure detector suspects when its turn comes runs only if it is
    /// the first with that peer this round (in `probed`): a probe, since
    /// only an answer clears a suspicion; the others are skipped.
    async fn exchange_pass(
        &self,
        ring: &Arc<Ring>,
        pairs: Vec<(u32, NodeId)>,
        last: bool,
        probed: &Mutex<BTreeSet<NodeId>>,
        report: &mut AaeReport,
    ) -> Vec<(u32, NodeId)> {
        let exchanges = pairs.into_iter().map(|(p, peer)| {
            let ring = Arc::clone(ring);
            async move {
                let _slot = self.background.slot(&self.metrics).await;
                if !self.peers.detector.is_available(peer)
                    && !probed.lock().unwrap_or_else(PoisonError::into_inner).insert(peer)
                {
                    return (p, peer, None);
                }
                if !self.claims.claim(p, peer, Role::Initiator) {
                    return (p, peer, Some(Err(busy(p))));
                }
                let result = self.exchange(&ring, p, peer).await;
                self.claims.release(p, peer, Role::Initiator);
                (p, peer, Some(result))
            }
        });
        let mut retry = Vec::new();
        let mut results = futures::stream::iter(exchanges).buffer_unordered(self.config.background_max_slots);
        while let Some((p, peer, result)) = results.next().await {
            let Some(result) = result else { continue };
            match result {
                Ok(t) => {
                    report.exchanges += 1;
                    report.keys_repaired += t.repaired_here + t.repaired_there;
                    report.bytes += t.sent + t.received;
                    bump(&self.metrics.aae_exchanges);
                    let now_ms = self.clock.physical_us() / 1000;
                    let mut progress = self.progress();
                    let entry = progress.partitions.entry(p).or_default();
                    entry.last_exchange_unix_ms = Some(now_ms);
                    entry.last_peer = Some(peer);
                    entry.last_exchange_bytes = t.sent + t.received;
                    if t.repaired_here + t.repaired_there > 0 {
                        tracing::debug!(node = %self.id, partition = p, %peer, here = t.repaired_here, there = t.repaired_there, bytes = t.sent + t.received, "anti-entropy repaired keys");
                    }
                }
                Err(Error::Overloaded(_)) if !last => retry.push((p, peer)),
                Err(Error::Overloaded(_)) => {
                    report.busy += 1;
                    tracing::debug!(node = %self.id, partition = p, %peer, "anti-entropy exchange busy: left to the next round");
                }
                Err(e) => {
                    report.failed += 1;
                    bump(&self.metrics.aae_exchanges_failed);
                    tracing::debug!(node = %self.id, partition = p, %peer, error = %e, "anti-entropy exchange failed");
                }
            }
        }
        retry
    }

    /// Purges the old tombstones of `partition` that every replica holds.
    async fn purge_partition(&self, ring: &Ring, partition: u32) -> Result<u64> {
        let cutoff = self.grace_cutoff_us();
        let candidates = self.replica.old_tombstones(partition, cutoff, PURGE_BATCH).await?;
        if candidates.is_empty() {
            return Ok(0);
        }
        let others: Vec<NodeId> =
            ring.preference_list(partition).iter().copied().filter(|&n| n != self.id).collect();
        let mut held = vec![true; candidates.len()];
        let mut tally = Tally::default();
        for &peer in &others {
            let request = Request::PurgeCheck { from: self.id, partition, keys: candidates.clone() };
            match self.call(peer, request, &mut tally).await? {
                Response::PurgeHeld(flags) if flags.len() == held.len() => {
                    held.iter_mut().zip(flags).for_each(|(h, f)| *h &= f);
                }
                other => return Err(unexpected("a purge check", &other)),
            }
        }
        let keys: Vec<KeyDigest> =
            candidates.into_iter().zip(held).filter_map(|(k, h)| h.then_some(k)).collect();
        if keys.is_empty() {
            return Ok(0);
        }
        for &peer in &others {
            let request = Request::Purge { from: self.id, partition, keys: keys.clone() };
            if let Err(e) = self.call(peer, request, &mut tally).await {
                // Its copies stay: a tombstone never brings anything back,
                // and the next pass tries again.
                tracing::debug!(node = %self.id, partition, %peer, error = %e, "a replica did not purge");
            }
        }
        let purged = self.replica.purge_tombstones(partition, &keys, cutoff).await?;
        add(&self.metrics.tombstones_purged, purged);
        Ok(purged)
    }

    /// One purge pass over the settled partitions this node is the first
    /// replica of.
    pub(crate) async fn purge_round(&self) -> u64 {
        let Some((ring, mine)) = self.replicated() else { return 0 };
        let primaries: Vec<u32> = {
            let view = self.membership.view();
            mine.into_iter()
                .filter(|&p| settled(&view, p) && ring.preference_list(p).first() == Some(&self.id))
                .collect()
        };
        let mut purged = 0;
        for p in primaries {
            let _slot = self.background.slot(&self.metrics).await;
            match self.purge_partition(&ring, p).await {
                Ok(n) => purged += n,
                Err(e) => {
                    tracing::debug!(node = %self.id, partition = p, error = %e, "tombstone purge skipped")
                }
            }
        }
        if purged > 0 {
            tracing::info!(node = %self.id, tombstones = purged, "purged tombstones every replica holds");
        }
        purged
    }

    /// Answers a purge check ([`Request::PurgeCheck`]).
    ///
    /// # Errors
    /// [`Error::NotReplica`]; [`Error::Protocol`] for too many keys or a
    /// key of another partition; store errors.
    pub(crate) async fn serve_purge_check(
        &self,
        from: NodeId,
        partition: u32,
        keys: &[KeyDigest],
    ) -> Result<Response> {
        self.check_purge_keys(from, partition, keys)?;
        let held = self.replica.holds_tombstones(partition, keys, self.grace_cutoff_us()).await?;
        Ok(Response::PurgeHeld(held))
    }

    /// Deletes the tombstones a purge names ([`Request::Purge`]) that are
    /// still at their versions.
    ///
    /// # Errors
    /// As [`serve_purge_check`](Self::serve_purge_check).
    pub(crate) async fn serve_purge(
        &self,
        from: NodeId,
        partition: u32,
        keys: &[KeyDigest],
    ) -> Result<Response> {
        self.check_purge_keys(from, partition, keys)?;
        let purged = self.replica.purge_tombstones(partition, keys, self.grace_cutoff_us()).await?;
        add(&self.metrics.tombstones_purged, purged);
        Ok(Response::Purged { keys: u32::try_from(purged).unwrap_or(u32::MAX) })
    }

    fn check_purge_keys(&self, from: NodeId, partition: u32, keys: &[KeyDigest]) -> Result<()> {
        let ring = self.check_peer(from, partition)?;
        if keys.len() > MAX_KEYS_PER_MESSAGE {
            return Err(Error::Protocol(format!("{} keys in one purge message", keys.len())));
        }
        for d in keys {
            check_key(&self.config, &d.key)?;
            if ring.partition_of(&d.key) != partition {
                return Err(Error::Protocol(format!(
                    "purge of partition {partition} names key {:?} of another",
                    d.key
                )));
            }
        }
        Ok(())
    }

    /// What anti-entropy has done on this node.
    pub(crate) fn status(&self) -> AaeStatus {
        let m = self.metrics.snapshot();
        let trees = self.replica.trees();
        let mine = self.replicated().map(|(_, mine)| mine).unwrap_or_default();
        let progress = self.progress();
        let partitions: Vec<PartitionAae> = mine
            .iter()
            .map(|&p| {
                let pp = progress.partitions.get(&p).cloned().unwrap_or_default();
                PartitionAae {
                    partition: p,
                    tree_ready: trees.is_ready(p),
                    last_exchange_unix_ms: pp.last_exchange_unix_ms,
                    last_peer: pp.last_peer,
                    keys_repaired: pp.keys_repaired,
                    last_exchange_bytes: pp.last_exchange_bytes,
                }
            })
            .collect();
        AaeStatus {
            enabled: self.config.anti_entropy,
            exchanges: m.aae_exchanges,
            exchanges_failed: m.aae_exchanges_failed,
            keys_repaired: m.aae_keys_repaired,
            keys_sent: progress.keys_sent,
            bytes_sent: m.aae_bytes_sent,
            bytes_received: m.aae_bytes_received,
            tombstones_purged: m.tombstones_purged,
            trees_ready: partitions.iter().filter(|p| p.tree_ready).count() as u32,
            partitions,
        }
    }

    /// Runs a round every `aae_interval_ms` (the first at once, which
    /// builds the trees) and a purge pass every
    /// `tombstone_purge_interval_ms`, until the node stops.
    pub(crate) async fn run(aae: std::sync::Weak<AntiEntropy>) {
        let Some((period, purge_period)) = aae
            .upgrade()
            .map(|a| (a.config.aae_interval(), Duration::from_millis(a.config.tombstone_purge_interval_ms)))
        else {
            return;
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut purge = tokio::time::interval_at(tokio::time::Instant::now() + purge_period, purge_period);
        purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Biased: an unbiased select draws its first branch from
            // tokio's unseeded generator, and simulated runs must replay.
            let purging = tokio::select! {
                biased;
                _ = tick.tick() => false,
                _ = purge.tick() => true,
            };
            let Some(aae) = aae.upgrade() else { return };
            if purging {
                aae.purge_round().await;
            } else {
                aae.round().await;
            }
        }
    }
}
