//! Every number a user may tune, with defaults and validation in one place.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::admission::AdmissionSettings;
use crate::error::{Error, Result};
use crate::ring::DEFAULT_PARTITIONS;

/// A node's tunables. Plain data: [`Config::validate`] checks it, and the
/// server assembles it from files and the environment.
///
/// Durations are given in milliseconds so a TOML file stays plain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The cluster's name: gossip from a node of another name is refused.
    pub name: String,
    /// Peer addresses a node contacts to learn the cluster (gossip). Empty:
    /// the member list is fixed by configuration and nodes do not gossip.
    pub seeds: Vec<String>,
    /// Time between two gossip rounds, in milliseconds (Dynamo: 1 s).
    pub gossip_interval_ms: u64,
    /// The phi-accrual detector's conviction threshold (Cassandra's
    /// `phi_convict_threshold`: 8): a peer silent for so long that the
    /// chance it is merely slow is below 10^-threshold counts as down.
    pub phi_threshold: f64,
    /// Number of ring partitions Q; a power of two, fixed for the life of
    /// the cluster.
    pub partitions: u32,
    /// Replication factor N: how many nodes hold each key.
    pub n: usize,
    /// Default read quorum R (per-request overridable), `1..=n`.
    pub r: usize,
    /// Default write quorum W (per-request overridable), `1..=n`.
    pub w: usize,
    /// Sloppy quorum: when a preference-list node is unreachable, the next
    /// healthy node in the ring walk stands in and keeps a hint. With
    /// `false`, only the preference list counts (strict quorum).
    pub sloppy_quorum: bool,
    /// Deadline of a whole client request, in milliseconds.
    pub request_timeout_ms: u64,
    /// Deadline of one call to one replica, in milliseconds.
    pub replica_timeout_ms: u64,
    /// Longest accepted key, in bytes (inclusive).
    pub max_key_len: usize,
    /// Largest accepted value, in bytes (inclusive).
    pub max_value_size: usize,
    /// Most concurrent live siblings a key may hold; a write that would
    /// exceed it is refused.
    pub max_siblings: usize,
    /// Whether reads push the merged state back to stale replicas.
    pub read_repair: bool,
    /// How often stored hints are offered to their owners, in milliseconds.
    pub hint_delivery_interval_ms: u64,
    /// How many hints one delivery round reads from the store at a time.
    pub hint_delivery_batch: usize,
    /// How long a node that failed a call is skipped before it is tried
    /// again, in milliseconds.
    pub suspect_period_ms: u64,
    /// Number of per-key lock stripes serializing read-merge-write.
    pub lock_stripes: usize,
    /// Most write operations group-committed in one store batch.
    pub max_commit_batch: usize,
    /// Bytes of recently read or written key states a node keeps in
    /// memory (keys plus values) for a store whose reads may block, so
    /// that reads and read-merge-writes of hot keys skip the hop to a
    /// store thread; 0 turns the cache off. Bounded: memory does not grow
    /// with the number of keys beyond it.
    pub read_cache_bytes: usize,
    /// How often a node looks for partitions to copy or drop after a
    /// topology change, in milliseconds.
    pub handoff_interval_ms: u64,
    /// Most partitions a node copies at once during ownership handoff.
    pub handoff_concurrency: usize,
    /// Bytes of key states asked for per handoff batch.
    pub handoff_batch_bytes: u32,
    /// Ceiling on the bytes per second a node copies during handoff
    /// (0: no ceiling).
    pub handoff_max_bytes_per_sec: u64,
    /// Whether replicas compare their Merkle trees and repair what differs
    /// (anti-entropy, Dynamo §4.7), so keys nobody reads converge too.
    pub anti_entropy: bool,
    /// Time between two anti-entropy rounds, in milliseconds: each round
    /// compares every partition this node replicates with one other
    /// replica of it, taking the replicas in turn.
    pub aae_interval_ms: u64,
    /// How often every Merkle tree is rebuilt from a scan of its
    /// partition, in milliseconds (Riak rebuilds weekly), to catch what
    /// the incremental updates cannot see (silent disk corruption).
    pub aae_rebuild_interval_ms: u64,
    /// Most bytes of key states one anti-entropy exchange ships each way;
    /// what is left over is repaired by the next round.
    pub aae_max_bytes: u32,
    /// How old a tombstone must be before it may be purged, in
    /// milliseconds (Cassandra's `gc_grace_seconds`: 10 days); it is purged
    /// only once every replica of its partition also holds it. Hints older
    /// than this are dropped instead of delivered (anti-entropy repairs
    /// what they carried), and a replica refuses a write this old for a key
    /// it lacks, so neither can bring a purged key back. At least twice
    /// `request_timeout_ms`.
    pub tombstone_grace_ms: u64,
    /// Time between two tombstone purge passes, in milliseconds.
    pub tombstone_purge_interval_ms: u64,
    /// Admission control (Dynamo §6.5): the foreground p99 latency, in
    /// milliseconds over the last 10 s, above which background work
    /// (anti-entropy, hint delivery, handoff) is given fewer slots.
    pub background_target_p99_ms: u64,
    /// Fewest background operations allowed at once, however slow the
    /// foreground is (at least 1, so repairs keep moving).
    pub background_min_slots: usize,
    /// Most background operations allowed at once while the foreground
    /// meets its target.
    pub background_max_slots: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "dynamo".into(),
            seeds: Vec::new(),
            gossip_interval_ms: 1_000,
            phi_threshold: 8.0,
            partitions: DEFAULT_PARTITIONS,
            n: 3,
            r: 2,
            w: 2,
            sloppy_quorum: true,
            request_timeout_ms: 5_000,
            replica_timeout_ms: 1_000,
            max_key_len: 1024,
            max_value_size: 1024 * 1024,
            max_siblings: 100,
            read_repair: true,
            hint_delivery_interval_ms: 1_000,
            hint_delivery_batch: 256,
            suspect_period_ms: 1_000,
            lock_stripes: 1024,
            max_commit_batch: 1024,
            read_cache_bytes: 32 * 1024 * 1024,
            handoff_interval_ms: 1_000,
            handoff_concurrency: 2,
            handoff_batch_bytes: 1 << 20,
            handoff_max_bytes_per_sec: 64 << 20,
            anti_entropy: true,
            aae_interval_ms: 10_000,
            aae_rebuild_interval_ms: 7 * 24 * 3_600_000,
            aae_max_bytes: 4 << 20,
            tombstone_grace_ms: 10 * 24 * 3_600_000,
            tombstone_purge_interval_ms: 3_600_000,
            background_target_p99_ms: 50,
            background_min_slots: 1,
            background_max_slots: 4,
        }
    }
}

impl Config {
    /// Checks every field and their relations.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first offending field.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        if !self.partitions.is_power_of_two() || self.partitions > 1 << 20 {
            return bad(format!(
                "partitions = {} must be a power of two between 1 and 1048576",
                self.partitions
            ));
        }
        if self.n == 0 {
            return bad("n must be at least 1".into());
        }
        for (name, v) in [("r", self.r), ("w", self.w)] {
            if v == 0 || v > self.n {
                return bad(format!("{name} = {v} must be between 1 and n = {}", self.n));
            }
        }
        if self.name.is_empty() {
            return bad("name must not be empty".into());
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold > 0.0) {
            return bad(format!("phi_threshold = {} must be a positive number", self.phi_threshold));
        }
        for (name, v) in [
            ("gossip_interval_ms", self.gossip_interval_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("replica_timeout_ms", self.replica_timeout_ms),
            ("hint_delivery_interval_ms", self.hint_delivery_interval_ms),
            ("suspect_period_ms", self.suspect_period_ms),
            ("handoff_interval_ms", self.handoff_interval_ms),
            ("handoff_batch_bytes", u64::from(self.handoff_batch_bytes)),
            ("aae_interval_ms", self.aae_interval_ms),
            ("aae_rebuild_interval_ms", self.aae_rebuild_interval_ms),
            ("aae_max_bytes", u64::from(self.aae_max_bytes)),
            ("tombstone_purge_interval_ms", self.tombstone_purge_interval_ms),
            ("background_target_p99_ms", self.background_target_p99_ms),
        ] {
            if v == 0 {
                return bad(format!("{name} must be greater than 0"));
            }
        }
        for (name, v) in [
            ("max_key_len", self.max_key_len),
            ("max_value_size", self.max_value_size),
            ("max_siblings", self.max_siblings),
            ("hint_delivery_batch", self.hint_delivery_batch),
            ("lock_stripes", self.lock_stripes),
            ("max_commit_batch", self.max_commit_batch),
            ("handoff_concurrency", self.handoff_concurrency),
            ("background_min_slots", self.background_min_slots),
        ] {
            if v == 0 {
                return bad(format!("{name} must be greater than 0"));
            }
        }
        // A replica refuses a write for a key it lacks once the write is
        // older than the grace: the grace must outlast any request.
        if self.tombstone_grace_ms < self.request_timeout_ms.saturating_mul(2) {
            return bad(format!(
                "tombstone_grace_ms = {} must be at least twice request_timeout_ms = {}",
                self.tombstone_grace_ms, self.request_timeout_ms
            ));
        }
        if self.background_max_slots < self.background_min_slots {
            return bad(format!(
                "background_max_slots = {} must be at least background_min_slots = {}",
                self.background_max_slots, self.background_min_slots
            ));
        }
        self.admission().validate().map_err(|e| Error::Config(e.to_string()))?;
        Ok(())
    }

    /// The whole-request deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The per-replica call deadline.
    pub fn replica_timeout(&self) -> Duration {
        Duration::from_millis(self.replica_timeout_ms)
    }

    /// The hint delivery period.
    pub fn hint_delivery_interval(&self) -> Duration {
        Duration::from_millis(self.hint_delivery_interval_ms)
    }

    /// The gossip period.
    pub fn gossip_interval(&self) -> Duration {
        Duration::from_millis(self.gossip_interval_ms)
    }

    /// The handoff worker's period.
    pub fn handoff_interval(&self) -> Duration {
        Duration::from_millis(self.handoff_interval_ms)
    }

    /// The anti-entropy round period.
    pub fn aae_interval(&self) -> Duration {
        Duration::from_millis(self.aae_interval_ms)
    }

    /// The tombstone grace cutoff at wall-clock time `now_us` (µs since
    /// the Unix epoch): a tombstone, hint or late write whose newest
    /// timestamp is before it is older than `tombstone_grace_ms`.
    pub fn grace_cutoff_us(&self, now_us: u64) -> u64 {
        now_us.saturating_sub(self.tombstone_grace_ms.saturating_mul(1000))
    }

    /// The admission controller's settings for background work.
    pub fn admission(&self) -> AdmissionSettings {
        AdmissionSettings {
            target_p99: Duration::from_millis(self.background_target_p99_ms),
            min_slots: self.background_min_slots,
            max_slots: self.background_max_slots,
            ..AdmissionSettings::default()
        }
    }

    /// How long a failed node is skipped.
    pub fn suspect_period(&self) -> Duration {
        Duration::from_millis(self.suspect_period_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn rejects_quorum_above_n() {
        let c = Config { w: 4, ..Config::default() };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("w = 4"), "{err}");
    }

    #[test]
    fn rejects_non_power_of_two_partitions() {
        let c = Config { partitions: 100, ..Config::default() };
        assert!(matches!(c.validate(), Err(Error::Config(m)) if m.contains("partitions")));
    }

    #[test]
    fn rejects_a_tombstone_grace_shorter_than_two_requests() {
        let c = Config { tombstone_grace_ms: 9_999, request_timeout_ms: 5_000, ..Config::default() };
        assert!(matches!(c.validate(), Err(Error::Config(m)) if m.contains("tombstone_grace_ms")));
        Config { tombstone_grace_ms: 10_000, ..c }.validate().unwrap();
    }

    #[test]
    fn rejects_zero_limits() {
        let c = Config { max_siblings: 0, ..Config::default() };
        assert!(matches!(c.validate(), Err(Error::Config(m)) if m.contains("max_siblings")));
    }
}
