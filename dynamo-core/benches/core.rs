//! Hot-path benchmarks: ring lookup, dotted-version-vector operations, and
//! put/get through a 3-node in-process cluster on MemStore, each beside a
//! baseline measured in the same run (a raw MemStore write, a std hash).
//!
//! `cargo bench -p dynamo-core --bench core`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dynamo_core::causality::{Actor, CausalContext, Dot, SiblingSet};
use dynamo_core::member::{Member, NodeId};
use dynamo_core::node::{ReadOptions, WriteOptions};
use dynamo_core::reconcile::LastWriteWins;
use dynamo_core::ring::{key_hash, Ring};
use dynamo_core::store::{MemStore, Store, Table, WriteBatch};
use dynamo_testkit::Cluster;

fn keys(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("user:{i:08}").into_bytes()).collect()
}

fn ring(c: &mut Criterion) {
    let members = (1..=5).map(|i| Member::new(NodeId(i), format!("n{i}"))).collect();
    let ring = Ring::new(256, 3, members).unwrap();
    let keys = keys(1024);
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(keys.len() as u64));
    g.bench_function("key_hash", |b| {
        b.iter(|| keys.iter().map(|k| key_hash(black_box(k))).fold(0u64, |a, h| a ^ h))
    });
    g.bench_function("preference_list", |b| {
        b.iter(|| {
            keys.iter().map(|k| ring.preference_list(ring.partition_of(black_box(k)))[0].0).sum::<u64>()
        })
    });
    g.bench_function("baseline_std_btreemap_lookup", |b| {
        let map: std::collections::BTreeMap<u32, u64> = (0..256).map(|p| (p, p as u64)).collect();
        b.iter(|| keys.iter().map(|k| map[&((k.len() as u32 * 31) % 256)]).sum::<u64>())
    });
    g.finish();
}

fn actor(node: u64) -> Actor {
    Actor { node: NodeId(node), epoch: 1 << 40 }
}

/// A state with `siblings` concurrent values written by three actors.
fn state(siblings: u64, offset: u64) -> SiblingSet {
    let mut s = SiblingSet::new();
    for i in 0..siblings {
        let a = actor(i % 3 + 1);
        let dot = Dot { actor: a, counter: s.next_counter(&a) + offset };
        s.apply_write(&CausalContext::new(), dot, 1_000 + i, Some(Bytes::from(vec![7u8; 100])));
    }
    s
}

fn causality(c: &mut Criterion) {
    let mut g = c.benchmark_group("dvv");
    let (a, b) = (state(3, 0), state(3, 10));
    g.bench_function("merge_3x3_siblings", |bch| {
        bch.iter(|| {
            let mut m = a.clone();
            m.merge(black_box(&b));
            m
        })
    });
    g.bench_function("merge_identical", |bch| {
        bch.iter(|| {
            let mut m = a.clone();
            m.merge(black_box(&a));
            m
        })
    });
    g.bench_function("compare_contexts", |bch| bch.iter(|| black_box(&a).context().includes(b.context())));
    g.bench_function("apply_write_covering", |bch| {
        let ctx = a.context().clone();
        bch.iter(|| {
            let mut m = a.clone();
            let act = actor(1);
            let dot = Dot { actor: act, counter: m.next_counter(&act) };
            m.apply_write(black_box(&ctx), dot, 5_000, Some(Bytes::from_static(b"v")));
            m
        })
    });
    let encoded = a.encode();
    g.bench_function("encode", |bch| bch.iter(|| black_box(&a).encode()));
    g.bench_function("decode", |bch| bch.iter(|| SiblingSet::decode(black_box(&encoded)).unwrap()));
    g.finish();
}

fn cluster(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Blind writes (no context) with last-write-wins, as a YCSB-style load runs.
    let builder = Cluster::builder().nodes(3).n(3).r(2).w(2).reconciler(Arc::new(LastWriteWins));
    let cluster = rt.block_on(builder.build()).unwrap();
    let nodes: Vec<_> = (0..3).map(|i| cluster.node(i).unwrap()).collect();
    let keys = Arc::new(keys(10_000));
    let value = Bytes::from(vec![42u8; 100]);
    rt.block_on(async {
        for (i, k) in keys.iter().enumerate() {
            nodes[i % 3].put(k, value.clone(), None, WriteOptions::default()).await.unwrap();
        }
    });

    let mut g = c.benchmark_group("cluster3_memstore");
    g.measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("put_sequential", |b| {
        b.iter(|| {
            i += 1;
            let node = &nodes[i % 3];
            rt.block_on(node.put(&keys[i % keys.len()], value.clone(), None, WriteOptions::default()))
                .unwrap()
        })
    });
    g.bench_function("get_sequential", |b| {
        b.iter(|| {
            i += 1;
            rt.block_on(nodes[i % 3].get(&keys[i % keys.len()], ReadOptions::default())).unwrap()
        })
    });
    const CONCURRENCY: usize = 64;
    g.throughput(Throughput::Elements(CONCURRENCY as u64));
    for (name, reads) in [("put_64_concurrent", false), ("get_64_concurrent", true)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                rt.block_on(async {
                    for it in 0..iters as usize {
                        let mut tasks = Vec::with_capacity(CONCURRENCY);
                        for c in 0..CONCURRENCY {
                            let node = nodes[c % 3].clone();
                            let keys = Arc::clone(&keys);
                            let value = value.clone();
                            let k = (it * CONCURRENCY + c) % keys.len();
                            tasks.push(tokio::spawn(async move {
                                if reads {
                                    node.get(&keys[k], ReadOptions::default()).await.map(|_| ())
                                } else {
                                    node.put(&keys[k], value, None, WriteOptions::default()).await.map(|_| ())
                                }
                            }));
                        }
                        for t in tasks {
                            t.await.unwrap().unwrap();
                        }
                    }
                });
                start.elapsed()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("baseline_memstore");
    g.throughput(Throughput::Elements(1));
    let store = MemStore::new();
    g.bench_function("raw_put", |b| {
        b.iter(|| {
            i += 1;
            let mut batch = WriteBatch::new();
            batch.put(Table::Data, keys[i % keys.len()].clone(), value.clone());
            store.write(batch).unwrap()
        })
    });
    g.bench_function("raw_get", |b| {
        b.iter(|| {
            i += 1;
            store.get(Table::Data, &keys[i % keys.len()]).unwrap()
        })
    });
    g.finish();
    rt.block_on(cluster.shutdown());
}

criterion_group!(benches, ring, causality, cluster);
criterion_main!(benches);
