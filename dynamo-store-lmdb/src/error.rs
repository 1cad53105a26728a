//! Turning heed's errors into [`StoreError`]s that say what failed.

use std::io;
use std::path::Path;

use dynamo_core::store::StoreError;
use heed::MdbError;

/// The engine name every error of this crate carries.
pub(crate) const BACKEND: &str = "lmdb";

/// What an error message needs to know about the store it came from.
#[derive(Debug, Clone)]
pub(crate) struct ErrorContext {
    /// The store's directory, as shown to users.
    pub(crate) dir: String,
    /// The map size the store was opened with (after rounding).
    pub(crate) map_size: usize,
    /// The configured reader slots.
    pub(crate) max_readers: u32,
}

impl ErrorContext {
    pub(crate) fn new(dir: &Path, map_size: usize, max_readers: u32) -> Self {
        ErrorContext { dir: dir.display().to_string(), map_size, max_readers }
    }

    /// A [`StoreError::Backend`] for a failure that is not heed's.
    pub(crate) fn backend(&self, message: impl Into<String>) -> StoreError {
        StoreError::Backend { backend: BACKEND.to_string(), message: message.into() }
    }

    fn corrupt(&self, message: String) -> StoreError {
        StoreError::Corrupt { backend: BACKEND.to_string(), path: self.dir.clone(), message }
    }

    fn full(&self, message: String) -> StoreError {
        StoreError::Full { backend: BACKEND.to_string(), message }
    }

    /// Maps heed's `error`, met while doing `what` (e.g. "commit a write
    /// transaction"), to the matching [`StoreError`].
    pub(crate) fn heed(&self, what: &str, error: heed::Error) -> StoreError {
        let dir = &self.dir;
        match error {
            heed::Error::Mdb(MdbError::MapFull) => self.full(format!(
                "{what} in {dir}: the LMDB map of {} bytes is full; nothing of the batch was applied. \
                 Reopen the store with a larger `map_size_bytes` (or delete data: in a completely \
                 full map some deletes fail too, as LMDB copies pages on write)",
                self.map_size
            )),
            heed::Error::Mdb(
                e @ (MdbError::Invalid
                | MdbError::VersionMismatch
                | MdbError::Corrupted
                | MdbError::PageNotFound
                | MdbError::Incompatible),
            ) => self.corrupt(format!(
                "{what}: the files (data.mdb, lock.mdb) are not an LMDB environment of this version \
                 and layout, or are damaged: {e}"
            )),
            heed::Error::Mdb(MdbError::ReadersFull) => self.backend(format!(
                "{what} in {dir}: all {} LMDB reader slots are taken (another process may be using \
                 the store); raise `max_readers`",
                self.max_readers
            )),
            heed::Error::Mdb(MdbError::Panic) => self.backend(format!(
                "{what} in {dir}: LMDB met a fatal error earlier (e.g. a failed disk write) and \
                 refuses further transactions; reopen the store"
            )),
            heed::Error::Mdb(MdbError::BadValSize) => {
                self.backend(format!("{what} in {dir}: LMDB does not support the size of this key or value"))
            }
            heed::Error::Io(e) if e.kind() == io::ErrorKind::StorageFull => self
                .full(format!("{what} in {dir}: the disk is full ({e}); nothing of the batch was applied")),
            heed::Error::EnvAlreadyOpened => self.backend(format!(
                "{what}: {dir} is already open in this process; drop the other LmdbStore on it first \
                 (one directory is one store, opened once)"
            )),
            other => self.backend(format!("{what} in {dir}: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ErrorContext {
        ErrorContext::new(Path::new("/x/y"), 65536, 9)
    }

    #[test]
    fn map_full_names_the_size_and_the_option() {
        let e = ctx().heed("commit", heed::Error::Mdb(MdbError::MapFull));
        let StoreError::Full { backend, message } = e else { panic!("{e:?}") };
        assert_eq!(backend, "lmdb");
        assert!(message.contains("65536") && message.contains("map_size_bytes"), "{message}");
    }

    #[test]
    fn kinds() {
        let c = ctx();
        assert!(matches!(
            c.heed("open", heed::Error::Mdb(MdbError::Invalid)),
            StoreError::Corrupt { ref path, .. } if path == "/x/y"
        ));
        let readers = c.heed("read", heed::Error::Mdb(MdbError::ReadersFull));
        assert!(readers.to_string().contains("max_readers"), "{readers}");
        let disk = c.heed("commit", heed::Error::Io(io::Error::from(io::ErrorKind::StorageFull)));
        assert!(matches!(disk, StoreError::Full { .. }), "{disk:?}");
        let twice = c.heed("open", heed::Error::EnvAlreadyOpened);
        assert!(twice.to_string().contains("already open"), "{twice}");
        let io = c.heed("open", heed::Error::Io(io::Error::from(io::ErrorKind::PermissionDenied)));
        assert!(matches!(io, StoreError::Backend { ref message, .. } if message.contains("/x/y")), "{io:?}");
    }
}
