//! Mapping of redb's errors to [`StoreError`].
//!
//! Every message starts with the operation that failed (`open`, `get`,
//! `scan`, `write`, `commit`, `flush`) so an operator can tell a failed
//! read from a failed commit without a backtrace.

use std::io;
use std::path::Path;

use dynamo_core::store::StoreError;
use redb::{CommitError, DatabaseError, SetDurabilityError, StorageError, TableError, TransactionError};

/// The engine name carried by every error of this crate.
pub(crate) const BACKEND: &str = "redb";

pub(crate) fn backend(message: String) -> StoreError {
    StoreError::Backend { backend: BACKEND.to_owned(), message }
}

pub(crate) fn corrupt(path: &Path, message: String) -> StoreError {
    StoreError::Corrupt { backend: BACKEND.to_owned(), path: path.display().to_string(), message }
}

fn full(path: &Path, what: &str, err: &io::Error) -> StoreError {
    StoreError::Full {
        backend: BACKEND.to_owned(),
        message: format!("{what}: {err}; free space on the file system holding {}", path.display()),
    }
}

fn is_full(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge
    )
}

/// A storage error of any operation. `what` names the operation.
pub(crate) fn storage(path: &Path, what: &str, err: StorageError) -> StoreError {
    match err {
        StorageError::Corrupted(message) => corrupt(path, format!("{what}: {message}")),
        StorageError::Io(io) if is_full(&io) => full(path, what, &io),
        StorageError::PreviousIo => backend(format!(
            "{what}: an earlier I/O error left the database unusable; reopen the store at {}",
            path.display()
        )),
        other => backend(format!("{what}: {other}")),
    }
}

/// An error of opening the file: foreign, damaged and incompatible files
/// are [`StoreError::Corrupt`].
pub(crate) fn open(path: &Path, err: DatabaseError) -> StoreError {
    match err {
        DatabaseError::DatabaseAlreadyOpen => backend(format!(
            "open {}: the database is already open (by another RedbStore of this process, or by \
             another process); drop that handle first",
            path.display()
        )),
        DatabaseError::UpgradeRequired(version) => corrupt(
            path,
            format!(
                "open: the file was written by an incompatible redb version (file format {version}); \
                 it needs a manual upgrade"
            ),
        ),
        DatabaseError::RepairAborted => corrupt(path, "open: the repair of the file was aborted".to_owned()),
        // The magic number does not match, or the file is empty where a
        // database was expected: not a redb file.
        DatabaseError::Storage(StorageError::Io(io)) if io.kind() == io::ErrorKind::InvalidData => {
            corrupt(path, format!("open: not a redb database: {io}"))
        }
        DatabaseError::Storage(StorageError::Corrupted(message)) => corrupt(path, format!("open: {message}")),
        DatabaseError::Storage(err) => storage(path, &format!("open {}", path.display()), err),
        other => backend(format!("open {}: {other}", path.display())),
    }
}

/// An error of beginning a read or write transaction.
pub(crate) fn transaction(path: &Path, what: &str, err: TransactionError) -> StoreError {
    match err {
        TransactionError::Storage(err) => storage(path, what, err),
        other => backend(format!("{what}: {other}")),
    }
}

/// An error of opening one of the store's tables. A table of another type
/// than `&[u8] -> &[u8]` means the file is not one of this crate's stores.
pub(crate) fn table(path: &Path, what: &str, err: TableError) -> StoreError {
    match err {
        TableError::Storage(err) => storage(path, what, err),
        TableError::TableAlreadyOpen(..) | TableError::TableExists(_) => backend(format!("{what}: {err}")),
        other => corrupt(path, format!("{what}: not a dynamo store: {other}")),
    }
}

/// An error of committing a write transaction.
pub(crate) fn commit(path: &Path, what: &str, err: CommitError) -> StoreError {
    match err {
        CommitError::Storage(err) => storage(path, what, err),
        other => backend(format!("{what}: {other}")),
    }
}

/// An error of choosing a transaction's durability.
pub(crate) fn durability(what: &str, err: SetDurabilityError) -> StoreError {
    backend(format!("{what}: cannot set the commit durability: {err}"))
}

/// An I/O error of a file beside the redb file (the write-ahead log);
/// `what` names the operation. A full disk is [`StoreError::Full`].
pub(crate) fn io(path: &Path, what: &str, err: &io::Error) -> StoreError {
    if is_full(err) {
        full(path, what, err)
    } else {
        backend(format!("{what} {}: {err}", path.display()))
    }
}
