//! Loopback echo of 100-byte frames: the transport against raw tokio TCP.
//!
//! - `raw_tokio/1_in_flight`: the floor. One connection, one request at a
//!   time: `write_all` 100 bytes, `read_exact` 100 bytes, no framing, no ids,
//!   no tasks between the socket and the caller.
//! - `transport/1_in_flight`: `Transport::call` latency, one call at a time.
//! - `transport/64_in_flight`: throughput with 64 callers each calling in a
//!   loop (one iteration = 64 calls, so criterion reports calls per second).
//! - `echo_1MiB/transport/1_in_flight`: one 1 MiB frame each way at a time,
//!   the path of frames larger than the read buffer (assembled as their
//!   bytes arrive).
//! - `…/transport_tls/…`: the same over mutual TLS 1.3 (certificates from a
//!   throwaway CA), in the same run, so secured and plaintext compare
//!   under the same machine conditions.
//!
//! Everything runs on one tokio runtime with 2 worker threads, client and
//! server alike, as a node does. Before criterion starts, a short run prints
//! latency percentiles of single calls to stderr.
//!
//! `CARGO_TARGET_DIR=/work/target-tcp cargo bench -p dynamo-transport-tcp --bench tcp`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dynamo_core::transport::Transport;
use dynamo_testkit::transport_load::{calls_in_flight, percentile, Echo};
use dynamo_transport_tcp::certs::{write_private, ClusterCa};
use dynamo_transport_tcp::{TcpConfig, TcpTransport, TlsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const FRAME: usize = 100;
const IN_FLIGHT: usize = 64;
const LARGE_FRAME: usize = 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(5);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A raw echo server: reads exactly `FRAME` bytes, writes them back.
async fn raw_pair() -> TcpStream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut buf = [0u8; FRAME];
        while stream.read_exact(&mut buf).await.is_ok() {
            if stream.write_all(&buf).await.is_err() {
                return;
            }
        }
    });
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// TLS files for 127.0.0.1 from a throwaway CA, in a directory that lives
/// as long as the returned guard.
fn tls_files() -> (TlsConfig, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("bench").unwrap();
    let node = ca.issue("node", &["127.0.0.1".into()]).unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(path("node.pem"), &node.cert_pem).unwrap();
    write_private(&path("node.key"), &node.key_pem).unwrap();
    (
        TlsConfig {
            ca_file: path("ca.pem"),
            cert_file: path("node.pem"),
            key_file: path("node.key"),
            crl_file: None,
        },
        dir,
    )
}

async fn transport_pair(tls: Option<&TlsConfig>) -> (TcpTransport, Arc<TcpTransport>) {
    let config = TcpConfig { tls: tls.cloned(), ..TcpConfig::new("127.0.0.1:0") };
    let server = TcpTransport::bind(config.clone()).await.unwrap();
    server.serve(Arc::new(Echo)).await.unwrap();
    let client = Arc::new(TcpTransport::bind(config).await.unwrap());
    // Warm the pool so no iteration pays for a connect.
    for _ in 0..100 {
        client.call(server.local_addr(), Bytes::from_static(&[7; FRAME]), TIMEOUT).await.unwrap();
    }
    (server, client)
}

/// Prints p50/p90/p99 of `n` sequential round trips of each kind.
fn print_percentiles(rt: &Runtime, tls: &TlsConfig) {
    fn show(name: &str, mut samples: Vec<Duration>) {
        samples.sort();
        let at = |q: f64| percentile(&samples, q);
        eprintln!("{name:<28} p50 {:>7.1?}  p90 {:>7.1?}  p99 {:>7.1?}", at(0.5), at(0.9), at(0.99));
    }
    const N: usize = 20_000;
    let tls = tls.clone();
    on_worker(rt, async move {
        let mut raw = raw_pair().await;
        let (server, client) = transport_pair(None).await;
        let (tls_server, tls_client) = transport_pair(Some(&tls)).await;
        let (mut raw_t, mut ours_t, mut tls_t) =
            (Vec::with_capacity(N), Vec::with_capacity(N), Vec::with_capacity(N));
        let out = [7u8; FRAME];
        let mut back = [0u8; FRAME];
        let frame = Bytes::from_static(&[7; FRAME]);
        // Interleaved so both see the same machine conditions.
        for _ in 0..N {
            let t = Instant::now();
            raw.write_all(&out).await.unwrap();
            raw.read_exact(&mut back).await.unwrap();
            raw_t.push(t.elapsed());
            let t = Instant::now();
            black_box(client.call(server.local_addr(), frame.clone(), TIMEOUT).await.unwrap());
            ours_t.push(t.elapsed());
            let t = Instant::now();
            black_box(tls_client.call(tls_server.local_addr(), frame.clone(), TIMEOUT).await.unwrap());
            tls_t.push(t.elapsed());
        }
        eprintln!("round trips of {FRAME}-byte frames, {N} each, interleaved:");
        show("raw tokio TCP echo", raw_t);
        show("TcpTransport::call", ours_t);
        show("TcpTransport::call, TLS", tls_t);
        for t in [client, tls_client] {
            t.shutdown().await;
        }
        server.shutdown().await;
        tls_server.shutdown().await;
    });
}

/// Runs `f` on a runtime worker, as a node's request tasks run, rather than
/// on the thread blocked in `block_on` (which would add a cross-thread
/// wake-up to every round trip).
fn on_worker<T: Send + 'static>(rt: &Runtime, f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    rt.block_on(rt.spawn(f)).unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let (tls, _tls_dir) = tls_files();
    print_percentiles(&rt, &tls);
    let mut group = c.benchmark_group(format!("echo_{FRAME}B"));

    group.throughput(Throughput::Elements(1));
    let mut raw = Some(rt.block_on(raw_pair()));
    group.bench_function("raw_tokio/1_in_flight", |b| {
        b.iter_custom(|iters| {
            let mut stream = raw.take().unwrap();
            let (stream, elapsed) = on_worker(&rt, async move {
                let out = [7u8; FRAME];
                let mut back = [0u8; FRAME];
                let start = Instant::now();
                for _ in 0..iters {
                    stream.write_all(&out).await.unwrap();
                    stream.read_exact(&mut back).await.unwrap();
                }
                (stream, start.elapsed())
            });
            raw = Some(stream);
            elapsed
        })
    });
    drop(raw);

    let pairs = [
        ("transport", rt.block_on(transport_pair(None))),
        ("transport_tls", rt.block_on(transport_pair(Some(&tls)))),
    ];
    let frame = Bytes::from_static(&[7; FRAME]);
    for (name, (server, client)) in &pairs {
        let addr: Arc<str> = server.local_addr().into();
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{name}/1_in_flight"), |b| {
            b.iter_custom(|iters| sequential_calls(&rt, client, &addr, &frame, iters))
        });
        group.throughput(Throughput::Elements(IN_FLIGHT as u64));
        group.bench_function(format!("{name}/{IN_FLIGHT}_in_flight"), |b| {
            b.iter_custom(|iters| {
                let load = calls_in_flight(
                    Arc::clone(client),
                    Arc::clone(&addr),
                    frame.clone(),
                    IN_FLIGHT,
                    iters,
                    TIMEOUT,
                );
                on_worker(&rt, load)
            })
        });
    }
    group.finish();

    let mut large = c.benchmark_group("echo_1MiB");
    large.throughput(Throughput::Bytes(LARGE_FRAME as u64));
    let frame = Bytes::from(vec![7u8; LARGE_FRAME]);
    for (name, (server, client)) in &pairs {
        let addr: Arc<str> = server.local_addr().into();
        large.bench_function(format!("{name}/1_in_flight"), |b| {
            b.iter_custom(|iters| sequential_calls(&rt, client, &addr, &frame, iters))
        });
    }
    large.finish();
    rt.block_on(async {
        for (_, (server, client)) in pairs {
            client.shutdown().await;
            server.shutdown().await;
        }
    });
}

/// Time of `iters` calls of `frame`, one at a time, on a runtime worker.
fn sequential_calls(
    rt: &Runtime,
    client: &Arc<TcpTransport>,
    addr: &Arc<str>,
    frame: &Bytes,
    iters: u64,
) -> Duration {
    let (client, addr, frame) = (Arc::clone(client), Arc::clone(addr), frame.clone());
    on_worker(rt, async move {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(client.call(&addr, frame.clone(), TIMEOUT).await.unwrap());
        }
        start.elapsed()
    })
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
