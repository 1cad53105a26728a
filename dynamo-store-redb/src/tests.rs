use std::fs;
use std::time::Instant;

use rand::RngCore;

use super::*;

fn buffered(interval_ms: u64) -> RedbOptions {
    RedbOptions {
        durability: Durability::Buffered,
        buffered_flush_interval_ms: interval_ms,
        ..RedbOptions::default()
    }
}

fn put(store: &RedbStore, table: Table, key: &[u8], value: &[u8]) {
    let mut batch = WriteBatch::new();
    batch.put(table, key.to_vec(), value.to_vec());
    store.write(batch).unwrap();
}

/// What a crash of the process right now would leave: the file as the OS
/// has it, opened elsewhere (redb repairs it as after a crash).
fn crash_copy(store: &RedbStore) -> (tempfile::TempDir, RedbStore) {
    let dir = tempfile::tempdir().unwrap();
    fs::copy(store.path(), dir.path().join(FILE_NAME)).unwrap();
    let copy = RedbStore::open(dir.path(), RedbOptions::default()).unwrap();
    (dir, copy)
}

fn assert_corrupt(result: Result<RedbStore, StoreError>, path: &Path) -> String {
    match result {
        Err(StoreError::Corrupt { backend, path: p, message }) => {
            assert_eq!(backend, "redb");
            assert_eq!(p, path.display().to_string());
            message
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn put_get_delete_and_scan() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path(), RedbOptions::default()).unwrap();
    assert_eq!(store.path(), dir.path().join(FILE_NAME));
    for table in Table::ALL {
        assert_eq!(store.get(table, b"a").unwrap(), None);
        assert!(store.scan(table, b"", None, usize::MAX).unwrap().is_empty());
    }
    let mut batch = WriteBatch::new();
    for k in [&b"d"[..], b"a", b"c", b"b"] {
        batch.put(Table::Data, k.to_vec(), [k, b"!"].concat());
    }
    batch.put(Table::Hints, &b"a"[..], &b"hint"[..]);
    batch.put(Table::Data, &b"e"[..], &b"gone"[..]);
    batch.delete(Table::Data, &b"e"[..]);
    batch.delete(Table::Meta, &b"absent"[..]);
    store.write(batch).unwrap();

    assert_eq!(store.get(Table::Data, b"a").unwrap().as_deref(), Some(&b"a!"[..]));
    assert_eq!(store.get(Table::Data, b"e").unwrap(), None);
    assert_eq!(store.get(Table::Hints, b"a").unwrap().as_deref(), Some(&b"hint"[..]));
    assert_eq!(store.get(Table::Meta, b"a").unwrap(), None);

    let keys = |rows: Vec<(Bytes, Bytes)>| rows.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(keys(store.scan(Table::Data, b"", None, 10).unwrap()), [&b"a"[..], b"b", b"c", b"d"]);
    assert_eq!(keys(store.scan(Table::Data, b"b", Some(b"d"), 10).unwrap()), [&b"b"[..], b"c"]);
    assert_eq!(keys(store.scan(Table::Data, b"a", None, 2).unwrap()), [&b"a"[..], b"b"]);
    assert_eq!(keys(store.scan(Table::Data, b"bb", None, 10).unwrap()), [&b"c"[..], b"d"]);
    assert!(store.scan(Table::Data, b"a", None, 0).unwrap().is_empty());
    assert!(store.scan(Table::Data, b"c", Some(b"c"), 10).unwrap().is_empty());
    assert!(store.scan(Table::Data, b"d", Some(b"a"), 10).unwrap().is_empty());
    let rows = store.scan(Table::Data, b"c", None, 10).unwrap();
    assert_eq!(rows[0], (Bytes::from_static(b"c"), Bytes::from_static(b"c!")));
}

#[test]
fn an_empty_batch_is_fine() {
    for options in [RedbOptions::default(), buffered(1000)] {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), options).unwrap();
        store.write(WriteBatch::new()).unwrap();
        assert!(!store.shared.pending.load(Ordering::Acquire));
        put(&store, Table::Meta, b"k", b"v");
        store.write(WriteBatch::new()).unwrap();
        assert_eq!(store.get(Table::Meta, b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }
}

#[test]
fn data_survives_reopen_in_both_modes() {
    for options in [RedbOptions::default(), buffered(60_000)] {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), options.clone()).unwrap();
        put(&store, Table::Data, b"k", b"v");
        drop(store);
        let store = RedbStore::open(dir.path(), options).unwrap();
        assert_eq!(store.get(Table::Data, b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }
}

#[test]
fn a_garbage_file_is_corrupt_and_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    let mut garbage = vec![0u8; 64 * 1024];
    rand::rng().fill_bytes(&mut garbage);
    fs::write(&path, &garbage).unwrap();
    let message = assert_corrupt(RedbStore::open(dir.path(), RedbOptions::default()), &path);
    assert!(message.contains("not a redb database"), "{message}");
    let shown = RedbStore::open(dir.path(), RedbOptions::default()).unwrap_err().to_string();
    assert!(shown.contains(&path.display().to_string()), "{shown}");
    // The file is left as it was.
    assert_eq!(fs::read(&path).unwrap(), garbage);
}

#[test]
fn a_file_of_an_incompatible_format_version_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    drop(RedbStore::open(dir.path(), RedbOptions::default()).unwrap());
    let path = dir.path().join(FILE_NAME);
    let mut bytes = fs::read(&path).unwrap();
    // The version byte of both commit slots of redb's header: 1 is the
    // format of redb 1.x.
    bytes[64] = 1;
    bytes[64 + 128] = 1;
    fs::write(&path, &bytes).unwrap();
    let message = assert_corrupt(RedbStore::open(dir.path(), RedbOptions::default()), &path);
    assert!(message.contains("incompatible"), "{message}");
}

#[test]
fn a_damaged_file_is_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path(), RedbOptions::default()).unwrap();
    let mut batch = WriteBatch::new();
    for i in 0..2000u32 {
        batch.put(Table::Data, i.to_be_bytes().to_vec(), vec![7u8; 100]);
    }
    store.write(batch).unwrap();
    drop(store);
    let path = dir.path().join(FILE_NAME);
    let mut bytes = fs::read(&path).unwrap();
    // Overwrite everything past the header page: every tree page.
    for b in &mut bytes[4096..] {
        *b ^= 0x5a;
    }
    fs::write(&path, &bytes).unwrap();
    let message = assert_corrupt(RedbStore::open(dir.path(), RedbOptions::default()), &path);
    eprintln!("damaged: {message}");
}

#[test]
fn opening_an_open_store_again_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let first = RedbStore::open(dir.path(), RedbOptions::default()).unwrap();
    put(&first, Table::Data, b"k", b"v");
    match RedbStore::open(dir.path(), RedbOptions::default()) {
        Err(StoreError::Backend { backend, message }) => {
            assert_eq!(backend, "redb");
            assert!(message.contains("already open"), "{message}");
        }
        other => panic!("expected a Backend error, got {other:?}"),
    }
    // The first handle is undisturbed, and once dropped the store opens.
    assert_eq!(first.get(Table::Data, b"k").unwrap().as_deref(), Some(&b"v"[..]));
    drop(first);
    let second = RedbStore::open(dir.path(), RedbOptions::default()).unwrap();
    assert_eq!(second.get(Table::Data, b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn a_directory_that_is_a_file_is_a_backend_error() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    fs::write(&not_a_dir, b"x").unwrap();
    match RedbStore::open(&not_a_dir, RedbOptions::default()) {
        Err(StoreError::Backend { message, .. }) => assert!(message.starts_with("open"), "{message}"),
        other => panic!("expected a Backend error, got {other:?}"),
    }
}

#[test]
fn a_zero_flush_interval_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(RedbStore::open(dir.path(), buffered(0)), Err(StoreError::Backend { .. })));
    // Irrelevant with fsync.
    let options = RedbOptions { buffered_flush_interval_ms: 0, ..RedbOptions::default() };
    RedbStore::open(dir.path(), options).unwrap();
}

#[test]
fn fsync_writes_are_on_disk_when_write_returns() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path(), RedbOptions::default()).unwrap();
    put(&store, Table::Data, b"k", b"v");
    let (_copy_dir, copy) = crash_copy(&store);
    assert_eq!(copy.get(Table::Data, b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn buffered_writes_are_visible_at_once_and_durable_after_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path(), buffered(60_000)).unwrap();
    put(&store, Table::Data, b"old", b"1");
    store.flush().unwrap();
    put(&store, Table::Data, b"new", b"2");
    assert_eq!(store.get(Table::Data, b"new").unwrap().as_deref(), Some(&b"2"[..]));
    // A crash now rolls back to the last durable commit: the documented loss.
    let (_d, copy) = crash_copy(&store);
    assert_eq!(copy.get(Table::Data, b"old").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(copy.get(Table::Data, b"new").unwrap(), None);
    drop(copy);
    store.flush().unwrap();
    let (_d, copy) = crash_copy(&store);
    assert_eq!(copy.get(Table::Data, b"new").unwrap().as_deref(), Some(&b"2"[..]));
}

#[test]
fn the_flusher_makes_buffered_writes_durable_within_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path(), buffered(20)).unwrap();
    put(&store, Table::Data, b"k", b"v");
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.shared.pending.load(Ordering::Acquire) {
        assert!(Instant::now() < deadline, "the flusher never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The flag is cleared before the durable commit; taking the write lock
    // waits for that commit to finish.
    drop(store.shared.db.begin_write().unwrap());
    let (_d, copy) = crash_copy(&store);
    assert_eq!(copy.get(Table::Data, b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn a_table_of_other_types_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<u64, u64>::new("data")).unwrap().insert(1, 2).unwrap();
        txn.commit().unwrap();
    }
    let message = assert_corrupt(RedbStore::open(dir.path(), RedbOptions::default()), &path);
    assert!(message.contains("table data"), "{message}");
}

/// `flush` racing the background flusher: whichever made the durable
/// commit, a write is on disk once `flush` returns (a graceful shutdown
/// relies on it).
#[test]
fn flush_is_durable_even_while_the_flusher_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path(), buffered(1)).unwrap();
    for i in 0..150u32 {
        let key = i.to_be_bytes();
        put(&store, Table::Data, &key, b"v");
        store.flush().unwrap();
        let (_d, copy) = crash_copy(&store);
        assert_eq!(
            copy.get(Table::Data, &key).unwrap().as_deref(),
            Some(&b"v"[..]),
            "write {i} not durable after flush"
        );
    }
}
