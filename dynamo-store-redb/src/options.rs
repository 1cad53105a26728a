//! Configuration of a [`RedbStore`](crate::RedbStore).

use dynamo_core::store::Durability;
use serde::{Deserialize, Serialize};

/// Options of a redb store.
///
/// Deserializes from a table where every field is optional (missing fields
/// take their [`Default`] value) and unknown fields are refused, e.g. in
/// TOML:
///
/// ```toml
/// durability = "buffered"        # or "fsync" (the default)
/// cache_size_bytes = 268435456   # 256 MiB
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedbOptions {
    /// How durable a write is when [`Store::write`](dynamo_core::store::Store::write)
    /// returns `Ok`. Default [`Durability::Fsync`]. See
    /// [`RedbStore`](crate::RedbStore) for exactly what each mode promises.
    pub durability: Durability,
    /// Bytes of memory redb may use to cache pages of the file (redb's
    /// `Builder::set_cache_size`). Default 64 MiB.
    pub cache_size_bytes: usize,
    /// Every this many milliseconds, a background thread checkpoints if
    /// anything was written since the last checkpoint: one durable redb
    /// commit, after which the write-ahead log starts over. With
    /// [`Durability::Buffered`], a kernel crash or power loss loses the
    /// writes of at most about one interval (without the log, a process
    /// crash does too). Must be at least 1 when the thread runs (with the
    /// log, or `Buffered`). Default 1000. Also accepted under its former
    /// name, `buffered_flush_interval_ms`.
    #[serde(alias = "buffered_flush_interval_ms")]
    pub checkpoint_interval_ms: u64,
    /// Bytes of the write-ahead log (`dynamo.wal`), after which it is
    /// checkpointed and written from its start again. A batch larger than
    /// this is committed durably to redb without the log. 0 turns the log
    /// off: each `Fsync` write is then a durable redb commit (several
    /// times the CPU and latency), and `Buffered` writes are lost even in a
    /// process crash until the next checkpoint. Default 64 MiB. The file
    /// grows to this size in 1 MiB zero-filled steps as it is used.
    pub wal_bytes: u64,
    /// Verify the checksum of every page of the file at every open, not
    /// only after an unclean shutdown (redb's
    /// `Builder::set_check_integrity_on_open`). Default `true`.
    ///
    /// This reads the whole file, so open takes time proportional to the
    /// store's size. With `false`, a store that was closed cleanly is
    /// trusted without reading it: a file damaged afterwards (bit rot, an
    /// outside write) may then open without error and fail, or panic
    /// inside redb, when the damaged page is read later.
    pub verify_on_open: bool,
}

/// Default of [`RedbOptions::cache_size_bytes`]: 64 MiB.
pub const DEFAULT_CACHE_SIZE_BYTES: usize = 64 * 1024 * 1024;

/// Default of [`RedbOptions::checkpoint_interval_ms`]: one second.
pub const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 1000;

/// Default of [`RedbOptions::wal_bytes`]: 64 MiB.
pub const DEFAULT_WAL_BYTES: u64 = 64 * 1024 * 1024;

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            durability: Durability::Fsync,
            cache_size_bytes: DEFAULT_CACHE_SIZE_BYTES,
            checkpoint_interval_ms: DEFAULT_CHECKPOINT_INTERVAL_MS,
            wal_bytes: DEFAULT_WAL_BYTES,
            verify_on_open: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_round_trips_through_serde() {
        for durability in [Durability::Fsync, Durability::Buffered] {
            let options = RedbOptions { durability, ..RedbOptions::default() };
            let json = serde_json::to_string(&options).unwrap();
            let back: RedbOptions = serde_json::from_str(&json).unwrap();
            assert_eq!(back, options);
        }
        let buffered: RedbOptions = serde_json::from_str(r#"{"durability":"buffered"}"#).unwrap();
        assert_eq!(buffered.durability, Durability::Buffered);
        assert_eq!(buffered.cache_size_bytes, DEFAULT_CACHE_SIZE_BYTES);
        let fsync: RedbOptions = serde_json::from_str(r#"{"durability":"fsync"}"#).unwrap();
        assert_eq!(fsync.durability, Durability::Fsync);
    }

    #[test]
    fn missing_fields_take_defaults_and_unknown_fields_are_refused() {
        let empty: RedbOptions = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, RedbOptions::default());
        assert_eq!(empty.durability, Durability::Fsync);
        assert!(serde_json::from_str::<RedbOptions>(r#"{"durabilty":"fsync"}"#).is_err());
        assert!(serde_json::from_str::<RedbOptions>(r#"{"durability":"sometimes"}"#).is_err());
    }
}
