//! Loopback echo of 100-byte frames over `Libp2pTransport`.
//!
//! - `libp2p/1_in_flight`: `Transport::call` latency, one call at a time.
//! - `libp2p/64_in_flight`: throughput with 64 callers each calling in a
//!   loop (one iteration = 64 calls, so criterion reports calls per second).
//!
//! Client and server share one tokio runtime with 2 worker threads, as a
//! node's would. Before criterion starts, a short run prints latency
//! percentiles of single calls to stderr.
//!
//! `CARGO_TARGET_DIR=/work/target-libp2p cargo bench --bench libp2p`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dynamo_core::transport::Transport;
use dynamo_testkit::transport_load::{calls_in_flight, percentile, Echo};
use dynamo_transport_libp2p::{Libp2pConfig, Libp2pTransport};
use tokio::runtime::Runtime;

const FRAME: usize = 100;
const IN_FLIGHT: usize = 64;
const TIMEOUT: Duration = Duration::from_secs(5);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// A serving transport and a client already connected to it.
async fn pair() -> (Libp2pTransport, Arc<Libp2pTransport>) {
    let server = Libp2pTransport::bind(Libp2pConfig::default()).await.expect("bind server");
    server.serve(Arc::new(Echo)).await.expect("serve");
    let client = Arc::new(Libp2pTransport::bind(Libp2pConfig::default()).await.expect("bind client"));
    // Connect and warm up, so no iteration pays for the dial and handshake.
    for _ in 0..200 {
        client.call(server.local_addr(), Bytes::from_static(&[7; FRAME]), TIMEOUT).await.expect("warm-up");
    }
    (server, client)
}

/// Prints p50/p90/p99 of sequential round trips, and the first call's
/// cost (dial + Noise handshake + round trip).
fn print_percentiles(rt: &Runtime) {
    const N: usize = 5_000;
    rt.block_on(async {
        let server = Libp2pTransport::bind(Libp2pConfig::default()).await.expect("bind");
        server.serve(Arc::new(Echo)).await.expect("serve");
        let client = Libp2pTransport::bind(Libp2pConfig::default()).await.expect("bind");
        let frame = Bytes::from_static(&[7; FRAME]);
        let t = Instant::now();
        client.call(server.local_addr(), frame.clone(), TIMEOUT).await.expect("first call");
        let first = t.elapsed();
        let mut samples = Vec::with_capacity(N);
        for _ in 0..N {
            let t = Instant::now();
            black_box(client.call(server.local_addr(), frame.clone(), TIMEOUT).await.expect("call"));
            samples.push(t.elapsed());
        }
        samples.sort();
        let at = |q: f64| percentile(&samples, q);
        eprintln!("first call (dial + handshake + round trip): {first:.1?}");
        eprintln!(
            "{N} sequential {FRAME}-byte round trips: p50 {:.1?}  p90 {:.1?}  p99 {:.1?}",
            at(0.5),
            at(0.9),
            at(0.99)
        );
        client.shutdown().await;
        server.shutdown().await;
    });
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    print_percentiles(&rt);
    let (server, client) = rt.block_on(pair());
    let addr: Arc<str> = server.local_addr().into();
    let frame = Bytes::from_static(&[7; FRAME]);
    let mut group = c.benchmark_group(format!("echo_{FRAME}B"));

    group.throughput(Throughput::Elements(1));
    group.bench_function("libp2p/1_in_flight", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(client.call(&addr, frame.clone(), TIMEOUT).await.expect("call"));
                }
                start.elapsed()
            })
        })
    });

    group.throughput(Throughput::Elements(IN_FLIGHT as u64));
    group.bench_function(format!("libp2p/{IN_FLIGHT}_in_flight"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(calls_in_flight(
                Arc::clone(&client),
                Arc::clone(&addr),
                frame.clone(),
                IN_FLIGHT,
                iters,
                TIMEOUT,
            ))
        })
    });
    group.finish();
    rt.block_on(async {
        client.shutdown().await;
        server.shutdown().await;
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
