//! [`LmdbOptions`]: how an [`LmdbStore`](crate::LmdbStore) is opened.

use dynamo_core::store::Durability;
use serde::{Deserialize, Serialize};

/// The default map size: 1 GiB.
pub const DEFAULT_MAP_SIZE_BYTES: usize = 1 << 30;

/// The default number of reader slots (LMDB's own default).
pub const DEFAULT_MAX_READERS: u32 = 126;

/// Options of an [`LmdbStore`](crate::LmdbStore).
///
/// Every field has a default, so an empty configuration section is valid;
/// unknown fields are rejected so a misspelt option is not silently
/// ignored.
///
/// ```
/// use dynamo_core::store::Durability;
/// use dynamo_store_lmdb::LmdbOptions;
///
/// let options: LmdbOptions =
///     serde_json::from_str(r#"{ "durability": "buffered", "map_size_bytes": 4294967296 }"#).unwrap();
/// assert_eq!(options.durability, Durability::Buffered);
/// assert_eq!(options.max_readers, 126);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LmdbOptions {
    /// What an acknowledged write survives.
    ///
    /// - [`Durability::Fsync`] (default): every commit is flushed to stable
    ///   storage before [`Store::write`](dynamo_core::store::Store::write)
    ///   returns.
    /// - [`Durability::Buffered`]: LMDB's `MDB_NOSYNC`. A commit hands its
    ///   pages to the OS and returns without flushing. A crash of the
    ///   process loses nothing (the OS page cache holds the data), but an
    ///   OS crash or power loss may lose the most recent commits. The
    ///   database stays consistent (it rolls back to an earlier commit)
    ///   unless the disk reorders writes across the missing flush. The
    ///   store flushes when it is dropped and on
    ///   [`LmdbStore::sync`](crate::LmdbStore::sync).
    pub durability: Durability,
    /// The size of LMDB's memory map, which is also the most data the
    /// store can ever hold. Rounded up to a multiple of the OS page size;
    /// must not be 0. Default 1 GiB.
    ///
    /// This is address space, not memory or disk: the data file only
    /// grows as data is written, so a generous value costs nothing on
    /// 64-bit systems. When it is reached, writes fail with
    /// [`StoreError::Full`](dynamo_core::store::StoreError::Full) until
    /// data is deleted or the store is reopened with a larger value.
    pub map_size_bytes: usize,
    /// The most read transactions open at once, i.e. concurrent
    /// [`get`](dynamo_core::store::Store::get) and
    /// [`scan`](dynamo_core::store::Store::scan) calls. Further readers
    /// wait for a free slot rather than fail. Must be at least 1.
    /// Default 126.
    pub max_readers: u32,
}

impl Default for LmdbOptions {
    fn default() -> Self {
        LmdbOptions {
            durability: Durability::Fsync,
            map_size_bytes: DEFAULT_MAP_SIZE_BYTES,
            max_readers: DEFAULT_MAX_READERS,
        }
    }
}

impl LmdbOptions {
    /// Default options with the given durability.
    pub fn with_durability(durability: Durability) -> Self {
        LmdbOptions { durability, ..LmdbOptions::default() }
    }
}

/// `size` rounded up to a multiple of `page` (a power of two or not);
/// `None` on overflow.
pub(crate) fn round_up_to_page(size: usize, page: usize) -> Option<usize> {
    if page == 0 {
        return Some(size);
    }
    size.checked_next_multiple_of(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let o = LmdbOptions::default();
        assert_eq!(o.durability, Durability::Fsync);
        assert_eq!(o.map_size_bytes, 1 << 30);
        assert_eq!(o.max_readers, 126);
        let empty: LmdbOptions = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, o, "every field defaults");
    }

    #[test]
    fn serde_round_trip() {
        let o = LmdbOptions { durability: Durability::Buffered, map_size_bytes: 12_345, max_readers: 7 };
        let json = serde_json::to_string(&o).unwrap();
        assert!(json.contains(r#""durability":"buffered""#), "{json}");
        let back: LmdbOptions = serde_json::from_str(&json).unwrap();
        assert_eq!(back, o);
        let partial: LmdbOptions = serde_json::from_str(r#"{"durability":"fsync","max_readers":3}"#).unwrap();
        assert_eq!(partial, LmdbOptions { max_readers: 3, ..LmdbOptions::default() });
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<LmdbOptions>(r#"{"map_size":1}"#).unwrap_err();
        assert!(err.to_string().contains("map_size"), "{err}");
        assert!(serde_json::from_str::<LmdbOptions>(r#"{"durability":"sometimes"}"#).is_err());
    }

    #[test]
    fn rounding() {
        assert_eq!(round_up_to_page(0, 4096), Some(0));
        assert_eq!(round_up_to_page(1, 4096), Some(4096));
        assert_eq!(round_up_to_page(4096, 4096), Some(4096));
        assert_eq!(round_up_to_page(4097, 4096), Some(8192));
        assert_eq!(round_up_to_page(12_345, 16_384), Some(16_384));
        assert_eq!(round_up_to_page(usize::MAX, 4096), None);
    }
}
