//! `RedbStore` beside the raw redb engine doing the same work, for both
//! durability modes: a single put per write, a group-committed batch of 64
//! puts per write (what core's group commit hands the store under load),
//! and a get of an existing key. Each group has `ours` and `raw_redb`, so
//! the adapter's overhead is the ratio of the two.
//!
//! 10,000 keys laid out as core's data keys (4-byte big-endian partition,
//! then the user key), 100-byte values, in a temporary directory.
//!
//! `CARGO_TARGET_DIR=/work/target-redb cargo bench -p dynamo-store-redb --bench store -- --measurement-time 3 --warm-up-time 1`

use std::hint::black_box;
use std::path::Path;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dynamo_core::store::{Durability, Store, Table, WriteBatch};
use dynamo_store_redb::{RedbOptions, RedbStore, DEFAULT_CACHE_SIZE_BYTES};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const KEYS: usize = 10_000;
const VALUE_LEN: usize = 100;
const GROUP: usize = 64;
const PARTITIONS: u32 = 256;

const RAW_DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");

fn data_keys() -> Vec<Bytes> {
    (0..KEYS)
        .map(|i| {
            let partition = (i as u32).wrapping_mul(2_654_435_761) % PARTITIONS;
            let mut k = partition.to_be_bytes().to_vec();
            k.extend_from_slice(format!("user:{i:08}").as_bytes());
            Bytes::from(k)
        })
        .collect()
}

fn value(i: usize) -> Bytes {
    Bytes::from(vec![(i % 251) as u8; VALUE_LEN])
}

/// Walks the keys in a fixed scattered order, so consecutive operations
/// touch different pages.
struct Cursor(usize);

impl Cursor {
    fn next(&mut self) -> usize {
        self.0 = (self.0 + 7919) % KEYS;
        self.0
    }
}

fn open_ours(dir: &Path, durability: Durability, keys: &[Bytes]) -> RedbStore {
    let store = RedbStore::open(dir, RedbOptions { durability, ..RedbOptions::default() }).unwrap();
    let mut batch = WriteBatch::new();
    for (i, k) in keys.iter().enumerate() {
        batch.put(Table::Data, k.clone(), value(i));
    }
    store.write(batch).unwrap();
    store.flush().unwrap();
    store
}

fn open_raw(dir: &Path, keys: &[Bytes]) -> Database {
    let db =
        Database::builder().set_cache_size(DEFAULT_CACHE_SIZE_BYTES).create(dir.join("raw.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(RAW_DATA).unwrap();
        for (i, k) in keys.iter().enumerate() {
            t.insert(&k[..], &value(i)[..]).unwrap();
        }
    }
    txn.commit().unwrap();
    db
}

fn raw_put(db: &Database, durability: redb::Durability, kvs: &[(&[u8], &[u8])]) {
    let mut txn = db.begin_write().unwrap();
    txn.set_durability(durability).unwrap();
    {
        let mut t = txn.open_table(RAW_DATA).unwrap();
        for (k, v) in kvs {
            t.insert(*k, *v).unwrap();
        }
    }
    txn.commit().unwrap();
}

fn bench_mode(c: &mut Criterion, durability: Durability) {
    let mode = match durability {
        Durability::Fsync => "fsync",
        Durability::Buffered => "buffered",
    };
    let raw_durability = match durability {
        Durability::Fsync => redb::Durability::Immediate,
        Durability::Buffered => redb::Durability::None,
    };
    let keys = data_keys();
    let values: Vec<Bytes> = (0..KEYS).map(value).collect();
    let ours_dir = tempfile::tempdir().unwrap();
    let raw_dir = tempfile::tempdir().unwrap();
    let ours = open_ours(ours_dir.path(), durability, &keys);
    let raw = open_raw(raw_dir.path(), &keys);

    let mut g = c.benchmark_group(format!("put_single/{mode}"));
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::from_parameter("ours"), |b| {
        let mut cur = Cursor(0);
        b.iter(|| {
            let i = cur.next();
            let mut batch = WriteBatch::new();
            batch.put(Table::Data, keys[i].clone(), values[i].clone());
            ours.write(black_box(batch)).unwrap();
        })
    });
    g.bench_function(BenchmarkId::from_parameter("raw_redb"), |b| {
        let mut cur = Cursor(0);
        b.iter(|| {
            let i = cur.next();
            raw_put(&raw, raw_durability, black_box(&[(&keys[i][..], &values[i][..])]));
        })
    });
    g.finish();

    let mut g = c.benchmark_group(format!("put_grouped{GROUP}/{mode}"));
    g.throughput(Throughput::Elements(GROUP as u64));
    g.bench_function(BenchmarkId::from_parameter("ours"), |b| {
        let mut cur = Cursor(0);
        b.iter(|| {
            let mut batch = WriteBatch::new();
            for _ in 0..GROUP {
                let i = cur.next();
                batch.put(Table::Data, keys[i].clone(), values[i].clone());
            }
            ours.write(black_box(batch)).unwrap();
        })
    });
    g.bench_function(BenchmarkId::from_parameter("raw_redb"), |b| {
        let mut cur = Cursor(0);
        let mut kvs: Vec<(&[u8], &[u8])> = Vec::with_capacity(GROUP);
        b.iter(|| {
            kvs.clear();
            for _ in 0..GROUP {
                let i = cur.next();
                kvs.push((&keys[i][..], &values[i][..]));
            }
            raw_put(&raw, raw_durability, black_box(&kvs));
        })
    });
    g.finish();

    let mut g = c.benchmark_group(format!("get/{mode}"));
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::from_parameter("ours"), |b| {
        let mut cur = Cursor(0);
        b.iter(|| {
            let v = ours.get(Table::Data, black_box(&keys[cur.next()])).unwrap();
            black_box(v.map(|v| v.len()))
        })
    });
    g.bench_function(BenchmarkId::from_parameter("raw_redb"), |b| {
        let mut cur = Cursor(0);
        b.iter(|| {
            let txn = raw.begin_read().unwrap();
            let t = txn.open_table(RAW_DATA).unwrap();
            let v = ReadableTable::get(&t, black_box(&keys[cur.next()][..])).unwrap();
            black_box(v.map(|v| v.value().len()))
        })
    });
    g.finish();
}

fn fsync(c: &mut Criterion) {
    bench_mode(c, Durability::Fsync);
}

fn buffered(c: &mut Criterion) {
    bench_mode(c, Durability::Buffered);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = fsync, buffered
}
criterion_main!(benches);
