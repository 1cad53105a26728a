use std::fs;
use std::time::Instant;

use rand::RngCore;

use super::*;

fn buffered(interval_ms: u64) -> RedbOptions {
    RedbOptions {
        durability: Durability::Buffered,
        checkpoint_interval_ms: interval_ms,
        ..RedbOptions::default()
    }
}

fn without_log(durability: Durability) -> RedbOptions {
    RedbOptions { durability, wal_bytes: 0, ..RedbOptions::default() }
}

fn put(store: &RedbStore, table: Table, key: &[u8], value: &[u8]) {
    let mut batch = WriteBatch::new();
    batch.put(table, key.to_vec(), value.to_vec());
    store.write(batch).unwrap();
}

/// What a crash of the process right now would leave: the files as the OS
/// has them, opened elsewhere (redb repairs its file as after a crash, and
/// the log is replayed).
fn crash_copy(store: &RedbStore) -> (tempfile::TempDir, RedbStore) {
    let dir = tempfile::tempdir().unwrap();
    copy_files(store, dir.path(), true);
    let copy = RedbStore::open(dir.path(), RedbOptions::default()).unwrap();
    (dir, copy)
}

/// The redb file alone, as after a crash: what the last checkpoint made
/// durable, without the log's help.
fn redb_only_copy(store: &RedbStore) -> (tempfile::TempDir, RedbStore) {
    let dir = tempfile::tempdir().unwrap();
    copy_files(store, dir.path(), false);
    let copy = RedbStore::open(dir.path(), RedbOptions::default()).unwrap();
    (dir, copy)
}

fn copy_files(store: &RedbStore, to: &Path, with_log: bool) {
    fs::copy(store.path(), to.join(FILE_NAME)).unwrap();
    let log = store.path().with_file_name(WAL_FILE_NAME);
    if with_log && log.exists() {
        fs::copy(log, to.join(WAL_FILE_NAME)).unwrap();
    }
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
    let fsync = RedbOptions { checkpoint_interval_ms: 0, ..RedbOptions::default() };
    assert!(matches!(RedbStore::open(dir.path(), fsync.clone()), Err(StoreError::Backend { .. })));
    // Irrelevant with fsync and no log: no thread runs.
    RedbStore::open(dir.path(), RedbOptions { wal_bytes: 0, ..fsync }).unwrap();
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
fn without_the_log_buffered_writes_are_visible_at_once_and_durable_after_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path(), without_log(Durability::Buffered)).unwrap();
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

/// In both modes, the log carries what the redb file alone would lose in
/// a process crash.
#[test]
fn with_the_log_a_process_crash_loses_no_write_in_either_mode() {
    for options in [RedbOptions::default(), buffered(60_000)] {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), options.clone()).unwrap();
        put(&store, Table::Data, b"k1", b"v1");
        put(&store, Table::Hints, b"k2", b"v2");
        let mut batch = WriteBatch::new();
        batch.delete(Table::Data, &b"k1"[..]);
        batch.put(Table::Meta, &b"k3"[..], &b"v3"[..]);
        store.write(batch).unwrap();
        let (_d, copy) = crash_copy(&store);
        assert_eq!(copy.get(Table::Data, b"k1").unwrap(), None, "{options:?}");
        assert_eq!(copy.get(Table::Hints, b"k2").unwrap().as_deref(), Some(&b"v2"[..]), "{options:?}");
        assert_eq!(copy.get(Table::Meta, b"k3").unwrap().as_deref(), Some(&b"v3"[..]), "{options:?}");
        // The redb file alone has none of it: the log did the work.
        let (_d, bare) = redb_only_copy(&store);
        assert_eq!(bare.get(Table::Hints, b"k2").unwrap(), None, "{options:?}");
        // After a checkpoint, the redb file alone has all of it.
        store.flush().unwrap();
        let (_d, bare) = redb_only_copy(&store);
        assert_eq!(bare.get(Table::Hints, b"k2").unwrap().as_deref(), Some(&b"v2"[..]), "{options:?}");
        assert_eq!(bare.get(Table::Data, b"k1").unwrap(), None, "{options:?}");
    }
}

/// Crash after every write, with a log small enough to wrap around many
/// times: the copy always holds exactly what was acknowledged (puts and
/// deletes of a few keys, so an old record replayed by mistake would show).
#[test]
fn a_crash_after_any_write_leaves_exactly_the_acknowledged_state() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x3a1);
    for durability in [Durability::Fsync, Durability::Buffered] {
        let dir = tempfile::tempdir().unwrap();
        let options = RedbOptions { durability, wal_bytes: 2048, ..buffered(60_000) };
        let store = RedbStore::open(dir.path(), options).unwrap();
        let mut model = std::collections::BTreeMap::new();
        for step in 0..120u32 {
            let mut batch = WriteBatch::new();
            for _ in 0..rng.random_range(1..6) {
                let key = format!("k{}", rng.random_range(0..8)).into_bytes();
                if rng.random_bool(0.3) {
                    batch.delete(Table::Data, key.clone());
                    model.remove(&key);
                } else {
                    let value = vec![step as u8; rng.random_range(1..300)];
                    batch.put(Table::Data, key.clone(), value.clone());
                    model.insert(key, value);
                }
            }
            store.write(batch).unwrap();
            if rng.random_bool(0.1) {
                store.flush().unwrap();
            }
            let (_d, copy) = crash_copy(&store);
            let got: Vec<(Vec<u8>, Vec<u8>)> = copy
                .scan(Table::Data, b"", None, 100)
                .unwrap()
                .into_iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect();
            let want: Vec<(Vec<u8>, Vec<u8>)> = model.clone().into_iter().collect();
            assert_eq!(got, want, "{durability:?}, after write {step}");
        }
        // The log never outgrew its bound.
        let log = fs::metadata(dir.path().join(WAL_FILE_NAME)).unwrap().len();
        assert!(log <= 2048, "{log} bytes of log");
    }
}

#[test]
fn a_torn_last_record_is_dropped_and_the_store_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path(), RedbOptions::default()).unwrap();
    put(&store, Table::Data, b"a", b"1");
    put(&store, Table::Data, b"b", b"2");
    let torn = tempfile::tempdir().unwrap();
    copy_files(&store, torn.path(), true);
    // Cut the second record short, as a crash in the middle of its append
    // (before it was acknowledged) would.
    let second = wal::record_len(&[BatchOp::Put {
        table: Table::Data,
        key: Bytes::from_static(b"b"),
        value: Bytes::from_static(b"2"),
    }]);
    let first = second;
    let log = torn.path().join(WAL_FILE_NAME);
    let mut bytes = fs::read(&log).unwrap();
    bytes[first + second - 1..].fill(0);
    fs::write(&log, bytes).unwrap();
    let copy = RedbStore::open(torn.path(), RedbOptions::default()).unwrap();
    assert_eq!(copy.get(Table::Data, b"a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(copy.get(Table::Data, b"b").unwrap(), None);
    put(&copy, Table::Data, b"c", b"3");
    let (_d, again) = crash_copy(&copy);
    assert_eq!(again.get(Table::Data, b"a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(again.get(Table::Data, b"b").unwrap(), None);
    assert_eq!(again.get(Table::Data, b"c").unwrap().as_deref(), Some(&b"3"[..]));
}

/// A refused write whose record stayed in the log (its take-back failed):
/// the store refuses writes until a checkpoint has covered the record, and
/// after that no crash brings the refused batch back.
#[test]
fn a_record_that_could_not_be_taken_back_is_covered_by_the_next_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path(), buffered(60_000)).unwrap();
    put(&store, Table::Data, b"kept", b"1");
    {
        let mut wal = Shared::lock_wal(store.shared.wal.as_ref().unwrap());
        let refused = [BatchOp::Put {
            table: Table::Data,
            key: Bytes::from_static(b"refused"),
            value: Bytes::from_static(b"x"),
        }];
        assert!(wal.prepare(&refused));
        wal.append(true).unwrap();
        wal.poison("a test");
    }
    let mut batch = WriteBatch::new();
    batch.put(Table::Data, &b"later"[..], &b"2"[..]);
    let err = store.write(batch.clone()).unwrap_err();
    assert!(err.to_string().contains("reopen the store"), "{err}");
    store.flush().unwrap();
    store.write(batch).unwrap();
    let (_d, copy) = crash_copy(&store);
    assert_eq!(copy.get(Table::Data, b"kept").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(copy.get(Table::Data, b"later").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(copy.get(Table::Data, b"refused").unwrap(), None);
}

#[test]
fn a_batch_larger_than_the_log_is_committed_durably_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let options = RedbOptions { wal_bytes: 1024, ..RedbOptions::default() };
    let store = RedbStore::open(dir.path(), options).unwrap();
    put(&store, Table::Data, b"small", b"1");
    put(&store, Table::Data, b"large", &[7; 4096]);
    let (_d, bare) = redb_only_copy(&store);
    assert_eq!(bare.get(Table::Data, b"small").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(bare.get(Table::Data, b"large").unwrap().map(|v| v.len()), Some(4096));
}

#[test]
fn a_log_left_behind_is_replayed_and_removed_by_a_store_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path(), RedbOptions::default()).unwrap();
    put(&store, Table::Data, b"k", b"v");
    let crashed = tempfile::tempdir().unwrap();
    copy_files(&store, crashed.path(), true);
    let reopened = RedbStore::open(crashed.path(), without_log(Durability::Fsync)).unwrap();
    assert_eq!(reopened.get(Table::Data, b"k").unwrap().as_deref(), Some(&b"v"[..]));
    assert!(!crashed.path().join(WAL_FILE_NAME).exists());
    drop(reopened);
    let again = RedbStore::open(crashed.path(), RedbOptions::default()).unwrap();
    assert_eq!(again.get(Table::Data, b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn a_log_record_that_does_not_decode_is_corrupt_and_names_the_log() {
    let dir = tempfile::tempdir().unwrap();
    drop(RedbStore::open(dir.path(), RedbOptions::default()).unwrap());
    let log = dir.path().join(WAL_FILE_NAME);
    // A record that checks out, numbered after the checkpoint, whose
    // operation has an unknown tag.
    let mut record = Vec::new();
    wal::encode(1, &[BatchOp::Delete { table: Table::Data, key: Bytes::from_static(b"k") }], &mut record)
        .unwrap();
    record[20] = 9;
    let check = wal::checksum(1, &record[20..]);
    record[12..20].copy_from_slice(&check.to_le_bytes());
    fs::write(&log, record).unwrap();
    let message = assert_corrupt(RedbStore::open(dir.path(), RedbOptions::default()), &log);
    assert!(message.contains("record 1"), "{message}");
}

#[test]
fn the_flusher_checkpoints_within_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path(), buffered(20)).unwrap();
    put(&store, Table::Data, b"k", b"v");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_d, bare) = redb_only_copy(&store);
        if bare.get(Table::Data, b"k").unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the flusher never checkpointed");
        std::thread::sleep(Duration::from_millis(5));
    }
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
        let (_d, copy) = redb_only_copy(&store);
        assert_eq!(
            copy.get(Table::Data, &key).unwrap().as_deref(),
            Some(&b"v"[..]),
            "write {i} not durable after flush"
        );
    }
}
