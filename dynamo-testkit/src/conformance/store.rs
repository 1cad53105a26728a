//! The [`Store`] conformance suite.

use std::path::Path;
use std::sync::Arc;
use std::thread;

use bytes::Bytes;
use dynamo_core::config::Config;
use dynamo_core::store::{Store, Table, WriteBatch};

type Open = dyn Fn(&Path) -> Arc<dyn Store> + Send + Sync;
/// One case of the suite.
type Case = fn(&Open, &Path);

/// Runs every store case against the engine `open` makes.
///
/// `open(dir)` must open (creating if needed) a store in the empty
/// directory `dir`. Some cases drop every handle and call `open` again
/// with the same directory: the reopened store must hold everything
/// written before. Each case gets a fresh directory.
///
/// # Panics
/// On the first case that fails, naming it.
pub fn store_suite<F>(open: F)
where
    F: Fn(&Path) -> Arc<dyn Store> + Send + Sync + 'static,
{
    let open: Arc<Open> = Arc::new(open);
    let cases: [(&str, Case); 8] = [
        ("point_reads_and_writes", point_reads_and_writes),
        ("batches_are_atomic_to_readers", batches_are_atomic_to_readers),
        ("tables_are_isolated", tables_are_isolated),
        ("partition_scans_are_ordered_and_bounded", partition_scans_are_ordered_and_bounded),
        ("reopen_keeps_everything", reopen_keeps_everything),
        ("concurrent_writers_from_many_threads", concurrent_writers_from_many_threads),
        ("values_at_the_size_limit", values_at_the_size_limit),
        ("binary_keys_order_bytewise", binary_keys_order_bytewise),
    ];
    for (name, case) in cases {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(open.as_ref(), dir.path())));
        if let Err(panic) = result {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("store suite case `{name}` failed: {msg}");
        }
    }
}

fn b(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}

/// A data key: 4-byte big-endian partition, then the user key (as core lays them out).
fn data_key(partition: u32, key: &str) -> Bytes {
    let mut k = partition.to_be_bytes().to_vec();
    k.extend_from_slice(key.as_bytes());
    Bytes::from(k)
}

fn put(store: &dyn Store, table: Table, key: impl Into<Bytes>, value: impl Into<Bytes>) {
    let mut batch = WriteBatch::new();
    batch.put(table, key, value);
    store.write(batch).expect("write");
}

fn point_reads_and_writes(open: &Open, dir: &Path) {
    let store = open(dir);
    assert_eq!(store.get(Table::Data, b"missing").unwrap(), None);
    put(store.as_ref(), Table::Data, b("k"), b("v1"));
    assert_eq!(store.get(Table::Data, b"k").unwrap(), Some(b("v1")));
    put(store.as_ref(), Table::Data, b("k"), b("v2"));
    assert_eq!(store.get(Table::Data, b"k").unwrap(), Some(b("v2")), "overwrite");
    let mut batch = WriteBatch::new();
    batch.delete(Table::Data, b("k"));
    batch.delete(Table::Data, b("never-there"));
    store.write(batch).unwrap();
    assert_eq!(store.get(Table::Data, b"k").unwrap(), None, "delete");
    let mut batch = WriteBatch::new();
    batch.put(Table::Data, b("x"), b("1"));
    batch.put(Table::Data, b("x"), b("2"));
    batch.delete(Table::Data, b("y"));
    batch.put(Table::Data, b("y"), b("3"));
    store.write(batch).unwrap();
    assert_eq!(store.get(Table::Data, b"x").unwrap(), Some(b("2")), "later op in a batch wins");
    assert_eq!(store.get(Table::Data, b"y").unwrap(), Some(b("3")), "put after delete in a batch");
    store.write(WriteBatch::new()).expect("an empty batch is fine");
    put(store.as_ref(), Table::Data, b("empty-value"), Bytes::new());
    assert_eq!(
        store.get(Table::Data, b"empty-value").unwrap(),
        Some(Bytes::new()),
        "empty value is not absent"
    );
}

fn batches_are_atomic_to_readers(open: &Open, dir: &Path) {
    let store = open(dir);
    let key_a = data_key(7, "a");
    let key_b = data_key(7, "b");
    put(store.as_ref(), Table::Data, key_a.clone(), 0u64.to_be_bytes().to_vec());
    put(store.as_ref(), Table::Data, key_b.clone(), 0u64.to_be_bytes().to_vec());
    let writer = {
        let store = Arc::clone(&store);
        let (a, b) = (key_a.clone(), key_b.clone());
        thread::spawn(move || {
            for i in 1..=300u64 {
                let mut batch = WriteBatch::new();
                batch.put(Table::Data, a.clone(), i.to_be_bytes().to_vec());
                batch.put(Table::Hints, a.clone(), i.to_be_bytes().to_vec());
                batch.put(Table::Data, b.clone(), i.to_be_bytes().to_vec());
                store.write(batch).unwrap();
            }
        })
    };
    let start = 7u32.to_be_bytes();
    let end = 8u32.to_be_bytes();
    let mut observed = 0;
    while !writer.is_finished() || observed == 0 {
        let rows = store.scan(Table::Data, &start, Some(&end), 10).unwrap();
        assert_eq!(rows.len(), 2, "both keys of the partition are always visible");
        assert_eq!(rows[0].1, rows[1].1, "a scan saw half of a batch");
        observed += 1;
    }
    writer.join().unwrap();
    assert_eq!(store.get(Table::Hints, &key_a).unwrap(), Some(Bytes::from(300u64.to_be_bytes().to_vec())));
}

fn tables_are_isolated(open: &Open, dir: &Path) {
    let store = open(dir);
    for t in Table::ALL {
        put(store.as_ref(), t, b("same-key"), b(t.name()));
    }
    for t in Table::ALL {
        assert_eq!(store.get(t, b"same-key").unwrap(), Some(b(t.name())), "table {}", t.name());
    }
    let mut batch = WriteBatch::new();
    batch.delete(Table::Hints, b("same-key"));
    store.write(batch).unwrap();
    assert_eq!(store.get(Table::Hints, b"same-key").unwrap(), None);
    assert_eq!(store.get(Table::Data, b"same-key").unwrap(), Some(b("data")));
    assert_eq!(store.get(Table::Meta, b"same-key").unwrap(), Some(b("meta")));
    put(store.as_ref(), Table::Meta, b("only-meta"), b("m"));
    let data = store.scan(Table::Data, b"", None, 100).unwrap();
    assert_eq!(data, vec![(b("same-key"), b("data"))], "a scan sees only its table");
}

fn partition_scans_are_ordered_and_bounded(open: &Open, dir: &Path) {
    let store = open(dir);
    // Insert out of order, over partitions 1..=3 and the edge partitions.
    let mut batch = WriteBatch::new();
    for p in [3u32, 1, 2, 0, u32::MAX] {
        for k in ["m", "a", "z", "b\u{0}", "b"] {
            batch.put(Table::Data, data_key(p, k), Bytes::from(format!("{p}/{k}")));
        }
    }
    store.write(batch).unwrap();
    let rows = store.scan(Table::Data, &2u32.to_be_bytes(), Some(&3u32.to_be_bytes()), 1000).unwrap();
    let got: Vec<Bytes> = rows.iter().map(|(_, v)| v.clone()).collect();
    let want: Vec<Bytes> =
        ["a", "b", "b\u{0}", "m", "z"].iter().map(|k| Bytes::from(format!("2/{k}"))).collect();
    assert_eq!(got, want, "one partition, in key order");
    // Paging with a limit and a continuation key visits the same rows.
    let mut paged = Vec::new();
    let mut from = 2u32.to_be_bytes().to_vec();
    loop {
        let page = store.scan(Table::Data, &from, Some(&3u32.to_be_bytes()), 2).unwrap();
        assert!(page.len() <= 2, "limit respected");
        let Some((last, _)) = page.last() else { break };
        from = last.to_vec();
        from.push(0);
        paged.extend(page.into_iter().map(|(_, v)| v));
    }
    assert_eq!(paged, want, "paging");
    let tail = store.scan(Table::Data, &u32::MAX.to_be_bytes(), None, 1000).unwrap();
    assert_eq!(tail.len(), 5, "open-ended scan reaches the last partition");
    assert!(store.scan(Table::Data, &3u32.to_be_bytes(), Some(&2u32.to_be_bytes()), 10).unwrap().is_empty());
    assert!(store.scan(Table::Data, &2u32.to_be_bytes(), Some(&2u32.to_be_bytes()), 10).unwrap().is_empty());
    assert!(store.scan(Table::Data, b"", None, 0).unwrap().is_empty(), "limit 0");
}

fn reopen_keeps_everything(open: &Open, dir: &Path) {
    {
        let store = open(dir);
        for t in Table::ALL {
            for i in 0..100u32 {
                put(store.as_ref(), t, data_key(i, t.name()), Bytes::from(format!("{}-{i}", t.name())));
            }
        }
        let mut batch = WriteBatch::new();
        batch.delete(Table::Data, data_key(5, "data"));
        store.write(batch).unwrap();
    }
    let store = open(dir);
    for t in Table::ALL {
        let rows = store.scan(t, b"", None, 1000).unwrap();
        let expected = if t == Table::Data { 99 } else { 100 };
        assert_eq!(rows.len(), expected, "table {} after reopen", t.name());
        assert_eq!(
            store.get(t, &data_key(42, t.name())).unwrap(),
            Some(Bytes::from(format!("{}-42", t.name())))
        );
    }
    assert_eq!(store.get(Table::Data, &data_key(5, "data")).unwrap(), None, "a delete survives reopen");
}

fn concurrent_writers_from_many_threads(open: &Open, dir: &Path) {
    const THREADS: u32 = 8;
    const WRITES: u32 = 200;
    {
        let store = open(dir);
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let store = Arc::clone(&store);
                thread::spawn(move || {
                    for i in 0..WRITES {
                        let mut batch = WriteBatch::new();
                        batch.put(
                            Table::Data,
                            data_key(t, &format!("{i:05}")),
                            Bytes::from(format!("{t}:{i}")),
                        );
                        if i % 10 == 0 {
                            batch.put(
                                Table::Hints,
                                data_key(t, &format!("{i:05}")),
                                Bytes::from_static(b"h"),
                            );
                        }
                        store.write(batch).unwrap();
                        if i % 7 == 0 {
                            let _ = store.get(Table::Data, &data_key((t + 1) % THREADS, "00000")).unwrap();
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("writer thread");
        }
        assert_eq!(store.scan(Table::Data, b"", None, 10_000).unwrap().len(), (THREADS * WRITES) as usize);
    }
    let store = open(dir);
    for t in 0..THREADS {
        let rows = store.scan(Table::Data, &t.to_be_bytes(), Some(&(t + 1).to_be_bytes()), 10_000).unwrap();
        assert_eq!(rows.len(), WRITES as usize, "thread {t}'s writes after reopen");
        assert_eq!(rows[17].1, Bytes::from(format!("{t}:17")));
    }
    assert_eq!(store.scan(Table::Hints, b"", None, 10_000).unwrap().len(), (THREADS * WRITES / 10) as usize);
}

fn values_at_the_size_limit(open: &Open, dir: &Path) {
    // A stored state is the value plus its sibling encoding: leave room.
    let size = Config::default().max_value_size + 4096;
    let big: Bytes = (0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
    {
        let store = open(dir);
        let mut batch = WriteBatch::new();
        batch.put(Table::Data, data_key(1, "big"), big.clone());
        batch.put(Table::Hints, data_key(1, "big"), big.clone());
        store.write(batch).unwrap();
        assert_eq!(store.get(Table::Data, &data_key(1, "big")).unwrap(), Some(big.clone()));
    }
    let store = open(dir);
    assert_eq!(store.get(Table::Data, &data_key(1, "big")).unwrap(), Some(big.clone()), "after reopen");
    let rows = store.scan(Table::Hints, b"", None, 10).unwrap();
    assert_eq!(rows, vec![(data_key(1, "big"), big)]);
}

fn binary_keys_order_bytewise(open: &Open, dir: &Path) {
    let store = open(dir);
    let binary = Bytes::from_static(&[0, 255, 0, 1, 128]);
    put(store.as_ref(), Table::Meta, binary.clone(), b("bin"));
    put(store.as_ref(), Table::Meta, Bytes::from_static(&[0]), b("zero"));
    assert_eq!(store.get(Table::Meta, &binary).unwrap(), Some(b("bin")));
    let rows = store.scan(Table::Meta, &[0], Some(&[0, 255, 0, 1, 129]), 10).unwrap();
    assert_eq!(rows.len(), 2, "binary keys order bytewise");
    assert_eq!(rows[0].0, Bytes::from_static(&[0]));
}
