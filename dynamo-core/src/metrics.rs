//! Counters a node keeps about its own work. Plain atomics: no I/O, no
//! exporter; the server turns a [`MetricsSnapshot`] into Prometheus text.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! metrics {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters, updated with relaxed atomics on the request path.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A point-in-time copy of [`Metrics`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct MetricsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Metrics {
            /// Copies every counter.
            pub fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

metrics! {
    /// Reads coordinated by this node.
    gets,
    /// Writes (puts and deletes) coordinated by this node.
    puts,
    /// Writes this node forwarded to a preference-list coordinator.
    forwarded,
    /// Forwarded writes this node dropped because they arrived (or would
    /// have started) after their sender's deadline.
    forwards_expired,
    /// Requests that failed for want of a quorum or by deadline.
    quorum_failures,
    /// Replicas brought up to date by read repair.
    read_repairs,
    /// Hints this node stored for an unreachable owner.
    hints_stored,
    /// Hints this node delivered to their owner and removed.
    hints_delivered,
    /// Writes that went to a fallback node instead of an owner.
    fallback_writes,
    /// Partitions this node finished copying during ownership handoff.
    handoff_partitions_received,
    /// Keys this node received during ownership handoff.
    handoff_keys_received,
    /// Bytes of key states this node received during ownership handoff.
    handoff_bytes_received,
    /// Keys this node sent to nodes gaining its partitions.
    handoff_keys_sent,
    /// Bytes of key states this node sent to nodes gaining its partitions.
    handoff_bytes_sent,
    /// Partitions this node deleted because it no longer replicates them.
    handoff_partitions_dropped,
    /// Anti-entropy exchanges this node completed as their initiator.
    aae_exchanges,
    /// Anti-entropy exchanges this node started that failed (peer down,
    /// refused, timed out).
    aae_exchanges_failed,
    /// Keys whose local state an anti-entropy repair changed.
    aae_keys_repaired,
    /// Bytes of anti-entropy messages (hashes, digests, key states) sent.
    aae_bytes_sent,
    /// Bytes of anti-entropy messages received.
    aae_bytes_received,
    /// Tombstones purged from this node's store.
    tombstones_purged,
    /// Hints dropped undelivered because they were older than the
    /// tombstone grace period (anti-entropy repairs what they carried).
    hints_expired,
    /// Times background work waited for a slot (admission control).
    background_waits,
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
