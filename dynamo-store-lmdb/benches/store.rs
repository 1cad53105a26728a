//! LmdbStore against raw heed doing the same work, in both durability
//! modes: single put (one key per write), grouped put (64 puts per
//! write), and get of an existing key. 10,000 keys shaped like core's data
//! keys (4-byte big-endian partition + user key), 100-byte values.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-lmdb cargo bench -p dynamo-store-lmdb --bench store -- \
//!     --measurement-time 3 --warm-up-time 1
//! ```

use std::hint::black_box;
use std::path::Path;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dynamo_core::store::{Durability, Store, Table, WriteBatch};
use dynamo_store_lmdb::{LmdbOptions, LmdbStore};
use heed::types::Bytes as RawBytes;
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions, WithoutTls};

const KEYS: usize = 10_000;
const VALUE_LEN: usize = 100;
const GROUP: usize = 64;

fn keys() -> Vec<Bytes> {
    (0..KEYS)
        .map(|i| {
            let partition = (i as u32).wrapping_mul(2_654_435_761) % 1024;
            let mut k = partition.to_be_bytes().to_vec();
            k.extend_from_slice(format!("user:{i:08}").as_bytes());
            Bytes::from(k)
        })
        .collect()
}

fn value(i: usize) -> Bytes {
    Bytes::from(vec![(i % 251) as u8; VALUE_LEN])
}

/// Raw heed, opened the way the store opens its environment.
struct Raw {
    env: Env<WithoutTls>,
    db: Database<'static, RawBytes, RawBytes>,
}

impl Raw {
    fn open(dir: &Path, durability: Durability) -> Raw {
        let mut builder = EnvOpenOptions::new().read_txn_without_tls();
        builder.map_size(1 << 30).max_dbs(4);
        if durability == Durability::Buffered {
            // SAFETY: trades durability only (no fsync on commit).
            unsafe {
                builder.flags(EnvFlags::NO_SYNC);
            }
        }
        // SAFETY: a fresh temporary directory only this benchmark uses.
        let env = unsafe { builder.open(dir) }.expect("open raw env");
        let wtxn = env.write_txn().expect("write txn");
        let db = env
            .create_databases_and_commit(wtxn, |opener, wtxn| {
                opener.create_database(wtxn, Some("data")).map(CommitOrAbort::<_, ()>::Commit)
            })
            .expect("create db")
            .commit()
            .expect("committed");
        Raw { env, db }
    }

    fn put_all(&self, keys: &[Bytes], value: &[u8]) {
        let mut wtxn = self.env.write_txn().expect("write txn");
        for k in keys {
            self.db.put(&mut wtxn, k, value).expect("put");
        }
        wtxn.commit().expect("commit");
    }
}

/// A store and a raw environment, each in its own fresh directory, both
/// holding every key, flushed to disk so that neither measurement pays
/// for the other's (or the preload's) writeback.
struct Pair {
    ours: LmdbStore,
    raw: Raw,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Pair {
    fn new(durability: Durability, keys: &[Bytes]) -> Pair {
        let ours_dir = tempfile::tempdir().expect("tempdir");
        let raw_dir = tempfile::tempdir().expect("tempdir");
        let ours =
            LmdbStore::open(ours_dir.path(), LmdbOptions::with_durability(durability)).expect("open store");
        let raw = Raw::open(raw_dir.path(), durability);
        for (n, chunk) in keys.chunks(1000).enumerate() {
            let mut batch = WriteBatch::new();
            for k in chunk {
                batch.put(Table::Data, k.clone(), value(n));
            }
            ours.write(batch).expect("preload");
            raw.put_all(chunk, &value(n));
        }
        ours.sync().expect("sync");
        raw.env.force_sync().expect("sync");
        Pair { ours, raw, _dirs: (ours_dir, raw_dir) }
    }
}

fn bench_mode(c: &mut Criterion, durability: Durability) {
    let mode = match durability {
        Durability::Fsync => "fsync",
        Durability::Buffered => "buffered",
    };
    let keys = keys();
    let v = value(7);
    {
        let Pair { ours, raw, .. } = &Pair::new(durability, &keys);
        let mut group = c.benchmark_group(format!("put_single/{mode}"));
        group.sample_size(20).throughput(Throughput::Elements(1));
        let mut i = 0usize;
        group.bench_function("ours", |b| {
            b.iter(|| {
                i = (i + 1) % KEYS;
                let mut batch = WriteBatch::new();
                batch.put(Table::Data, keys[i].clone(), v.clone());
                ours.write(batch).expect("write");
            })
        });
        group.bench_function("raw_heed", |b| {
            b.iter(|| {
                i = (i + 1) % KEYS;
                raw.put_all(std::slice::from_ref(&keys[i]), &v);
            })
        });
        group.finish();
    }

    {
        let Pair { ours, raw, .. } = &Pair::new(durability, &keys);
        let mut group = c.benchmark_group(format!("put_grouped_64/{mode}"));
        group.sample_size(20).throughput(Throughput::Elements(GROUP as u64));
        let mut start = 0usize;
        group.bench_function("ours", |b| {
            b.iter(|| {
                start = (start + GROUP) % (KEYS - GROUP);
                let mut batch = WriteBatch::new();
                for k in &keys[start..start + GROUP] {
                    batch.put(Table::Data, k.clone(), v.clone());
                }
                ours.write(batch).expect("write");
            })
        });
        group.bench_function("raw_heed", |b| {
            b.iter(|| {
                start = (start + GROUP) % (KEYS - GROUP);
                raw.put_all(&keys[start..start + GROUP], &v);
            })
        });
        group.finish();
    }

    {
        let Pair { ours, raw, .. } = &Pair::new(durability, &keys);
        let mut group = c.benchmark_group(format!("get/{mode}"));
        group.sample_size(20).throughput(Throughput::Elements(1));
        let mut i = 0usize;
        group.bench_function("ours", |b| {
            b.iter(|| {
                i = (i + 7919) % KEYS;
                let got = ours.get(Table::Data, &keys[i]).expect("get");
                black_box(got.expect("present"));
            })
        });
        group.bench_function("raw_heed", |b| {
            b.iter(|| {
                i = (i + 7919) % KEYS;
                let rtxn = raw.env.read_txn().expect("read txn");
                let got = raw.db.get(&rtxn, &keys[i]).expect("get");
                black_box(got.expect("present").len());
            })
        });
        group.finish();
    }
}

fn benches(c: &mut Criterion) {
    bench_mode(c, Durability::Fsync);
    bench_mode(c, Durability::Buffered);
}

criterion_group!(store, benches);
criterion_main!(store);
