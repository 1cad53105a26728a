//! Unit tests of the LMDB store (the shared suites are in tests/).

use std::sync::Arc;
use std::thread;

use super::*;

/// One operation: a put when the value is `Some`, else a delete.
type Op<'a> = (Table, &'a [u8], Option<&'a [u8]>);

fn batch_of(ops: &[Op<'_>]) -> WriteBatch {
    let mut b = WriteBatch::new();
    for &(table, key, value) in ops {
        match value {
            Some(v) => b.put(table, Bytes::copy_from_slice(key), Bytes::copy_from_slice(v)),
            None => b.delete(table, Bytes::copy_from_slice(key)),
        }
    }
    b
}

fn put(store: &LmdbStore, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
    store.write(batch_of(&[(table, key, Some(value))]))
}

#[test]
fn empty_batch_is_fine() {
    let dir = tempfile::tempdir().unwrap();
    let store = LmdbStore::open(dir.path(), LmdbOptions::default()).unwrap();
    store.write(WriteBatch::new()).unwrap();
    assert_eq!(store.scan(Table::Data, b"", None, 10).unwrap(), vec![]);
}

#[test]
fn map_full_is_reported_and_the_store_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let options = LmdbOptions { map_size_bytes: 100_000, ..LmdbOptions::default() };
    let store = LmdbStore::open(dir.path(), options).unwrap();
    let page = page_size::get();
    assert_eq!(store.map_size() % page, 0, "rounded to the page size");
    assert!(store.map_size() >= 100_000);

    let value = vec![7u8; 1000];
    let mut written = Vec::new();
    let full = loop {
        let key = (written.len() as u32).to_be_bytes();
        match put(&store, Table::Data, &key, &value) {
            Ok(()) => written.push(key),
            Err(e) => break e,
        }
        assert!(written.len() < 10_000, "the map never filled");
    };
    let StoreError::Full { backend, message } = &full else { panic!("not Full: {full:?}") };
    assert_eq!(backend, "lmdb");
    assert!(message.contains("map_size_bytes"), "{message}");
    assert!(message.contains(&store.map_size().to_string()), "{message}");
    assert!(written.len() > 5, "some writes fit before the map filled");

    // A failed batch applies nothing, even its first, small operation.
    let mut big = WriteBatch::new();
    big.put(Table::Meta, &b"small"[..], &b"x"[..]);
    big.put(Table::Data, &b"\xff\xff\xff\xffbig"[..], vec![1u8; 200_000]);
    assert!(matches!(store.write(big), Err(StoreError::Full { .. })));
    assert_eq!(store.get(Table::Meta, b"small").unwrap(), None, "all or nothing");

    // Reads still work.
    assert_eq!(store.get(Table::Data, &written[0]).unwrap().as_deref(), Some(&value[..]));
    assert_eq!(store.scan(Table::Data, b"", None, usize::MAX).unwrap().len(), written.len());

    // Freeing space makes writes work again.
    // Freeing space makes writes work again. In a completely full map even
    // a delete needs a free page (LMDB copies on write, and a delete that
    // empties a page below its fill threshold rebalances the tree), so
    // some single deletes fail too; most succeed.
    let freed = written
        .iter()
        .filter(|key| match store.write(batch_of(&[(Table::Data, &key[..], None)])) {
            Ok(()) => true,
            Err(StoreError::Full { .. }) => false,
            Err(e) => panic!("delete: {e:?}"),
        })
        .count();
    assert!(freed >= written.len() / 4, "{freed} of {} deletes went through", written.len());
    put(&store, Table::Data, b"after", &value).unwrap();
    assert_eq!(store.get(Table::Data, b"after").unwrap().as_deref(), Some(&value[..]));
    drop(store);

    // A larger map lifts the limit for the same data.
    let store = LmdbStore::open(dir.path(), LmdbOptions::default()).unwrap();
    put(&store, Table::Data, b"roomy", &vec![3u8; 200_000]).unwrap();
    assert_eq!(store.get(Table::Data, b"after").unwrap().as_deref(), Some(&value[..]));
}

#[test]
fn garbage_data_file_is_corrupt_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..64 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(dir.path().join("data.mdb"), bytes).unwrap();
    let err = LmdbStore::open(dir.path(), LmdbOptions::default()).unwrap_err();
    match &err {
        StoreError::Corrupt { backend, path, message } => {
            assert_eq!(backend, "lmdb");
            assert_eq!(path, &dir.path().display().to_string());
            assert!(!message.is_empty());
        }
        other => panic!("not Corrupt: {other:?}"),
    }
    assert!(err.to_string().contains(&dir.path().display().to_string()), "{err}");
}

#[test]
fn short_garbage_data_file_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.mdb"), b"not lmdb").unwrap();
    let err = LmdbStore::open(dir.path(), LmdbOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
}

#[test]
fn opening_an_open_directory_twice_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let first = LmdbStore::open(dir.path(), LmdbOptions::default()).unwrap();
    put(&first, Table::Meta, b"k", b"v").unwrap();
    let err = LmdbStore::open(dir.path(), LmdbOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::Backend { .. }), "{err:?}");
    assert!(err.to_string().contains("already open"), "{err}");
    // The first store is unharmed, and once dropped the directory opens.
    assert_eq!(first.get(Table::Meta, b"k").unwrap().as_deref(), Some(&b"v"[..]));
    drop(first);
    let again = LmdbStore::open(dir.path(), LmdbOptions::default()).unwrap();
    assert_eq!(again.get(Table::Meta, b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn invalid_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (options, field) in [
        (LmdbOptions { map_size_bytes: 0, ..LmdbOptions::default() }, "map_size_bytes"),
        (LmdbOptions { map_size_bytes: usize::MAX, ..LmdbOptions::default() }, "map_size_bytes"),
        (LmdbOptions { max_readers: 0, ..LmdbOptions::default() }, "max_readers"),
    ] {
        let err = LmdbStore::open(dir.path(), options).unwrap_err();
        assert!(matches!(err, StoreError::Backend { .. }) && err.to_string().contains(field), "{err}");
    }
}

#[test]
fn empty_keys_are_stored_apart_and_scan_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = LmdbStore::open(dir.path(), LmdbOptions::default()).unwrap();
    assert_eq!(store.get(Table::Data, b"").unwrap(), None);
    store
        .write(batch_of(&[
            (Table::Data, b"", Some(b"empty")),
            (Table::Data, b"\0", Some(b"zero")),
            (Table::Data, b"a", Some(b"a")),
            (Table::Hints, b"", Some(b"hint")),
        ]))
        .unwrap();
    assert_eq!(store.get(Table::Data, b"").unwrap().as_deref(), Some(&b"empty"[..]));
    assert_eq!(store.get(Table::Hints, b"").unwrap().as_deref(), Some(&b"hint"[..]));
    assert_eq!(store.get(Table::Meta, b"").unwrap(), None, "per table");
    let keys = |rows: Vec<(Bytes, Bytes)>| rows.into_iter().map(|(k, _)| k.to_vec()).collect::<Vec<_>>();
    assert_eq!(
        keys(store.scan(Table::Data, b"", None, 10).unwrap()),
        vec![b"".to_vec(), b"\0".to_vec(), b"a".to_vec()]
    );
    assert_eq!(keys(store.scan(Table::Data, b"", Some(b"\0"), 10).unwrap()), vec![b"".to_vec()]);
    assert_eq!(keys(store.scan(Table::Data, b"", None, 1).unwrap()), vec![b"".to_vec()]);
    assert_eq!(keys(store.scan(Table::Data, b"\0", None, 10).unwrap()), vec![b"\0".to_vec(), b"a".to_vec()]);
    assert!(store.scan(Table::Data, b"", Some(b""), 10).unwrap().is_empty());
    store.write(batch_of(&[(Table::Data, b"", None)])).unwrap();
    assert_eq!(store.get(Table::Data, b"").unwrap(), None);
    assert_eq!(store.get(Table::Hints, b"").unwrap().as_deref(), Some(&b"hint"[..]));
}

#[test]
fn keys_up_to_the_limit_work_and_longer_ones_apply_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = LmdbStore::open(dir.path(), LmdbOptions::default()).unwrap();
    assert!(store.max_key_size() >= 12 + 1024, "core's longest keys fit: {}", store.max_key_size());
    let longest = vec![b'k'; store.max_key_size()];
    put(&store, Table::Hints, &longest, b"v").unwrap();
    assert_eq!(store.get(Table::Hints, &longest).unwrap().as_deref(), Some(&b"v"[..]));
    let too_long = vec![b'k'; store.max_key_size() + 1];
    assert_eq!(store.get(Table::Hints, &too_long).unwrap(), None, "reads of any key are fine");
    assert_eq!(store.scan(Table::Hints, &too_long, None, 10).unwrap(), vec![]);
    let err =
        store.write(batch_of(&[(Table::Meta, b"first", Some(b"1")), (Table::Data, &too_long, Some(b"v"))]));
    let err = err.unwrap_err();
    assert!(matches!(err, StoreError::Backend { .. }) && err.to_string().contains("maximum"), "{err}");
    assert_eq!(store.get(Table::Meta, b"first").unwrap(), None, "nothing of the batch applied");
}

#[test]
fn buffered_writes_survive_a_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let options = LmdbOptions::with_durability(Durability::Buffered);
    {
        let store = LmdbStore::open(dir.path(), options.clone()).unwrap();
        for i in 0..50u32 {
            put(&store, Table::Data, &i.to_be_bytes(), b"v").unwrap();
        }
        store.sync().unwrap();
        put(&store, Table::Data, b"last", b"v").unwrap();
    }
    let store = LmdbStore::open(dir.path(), LmdbOptions::default()).unwrap();
    assert_eq!(store.scan(Table::Data, b"", None, 100).unwrap().len(), 51);
}

#[test]
fn more_readers_than_slots_wait_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let options = LmdbOptions { max_readers: 2, ..LmdbOptions::default() };
    let store = Arc::new(LmdbStore::open(dir.path(), options).unwrap());
    put(&store, Table::Data, b"k", b"v").unwrap();
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                for _ in 0..300 {
                    assert_eq!(store.get(Table::Data, b"k").unwrap().as_deref(), Some(&b"v"[..]));
                    assert_eq!(store.scan(Table::Data, b"", None, 10).unwrap().len(), 1);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn store_is_send_sync_and_debug() {
    fn is_store<S: Store + fmt::Debug>() {}
    is_store::<LmdbStore>();
    let dir = tempfile::tempdir().unwrap();
    let store = LmdbStore::open(&dir.path().join("nested/dir"), LmdbOptions::default()).unwrap();
    assert!(format!("{store:?}").contains("nested"));
    assert!(store.dir().ends_with("nested/dir"));
}
