//! The anti-entropy benchmark: how fast, how cheaply and how quietly
//! Merkle-tree anti-entropy repairs a replica that missed a share of the
//! writes.
//!
//! One run ([`run`]) on any [`Backend`] (the `aae_bench` example runs it
//! over TCP and redb, as a deployment would:
//! `cargo run --release -p dynamo-testkit --example aae_bench -- --keys 1000000`):
//!
//! 1. starts 3 nodes, N = 3, strict quorum (no hints), read repair off (so
//!    only anti-entropy repairs), anti-entropy on with its timer out of the
//!    way: its first tick builds the (empty) trees, which every write then
//!    keeps up to date, and rounds are driven by [`Node::aae_pass`];
//! 2. loads `keys` keys of `value_size` bytes into all three replicas
//!    (W = 3, many writes in flight);
//! 3. cuts node 3 off and overwrites `divergence` of the keys (with the
//!    contexts of their first writes, so each key keeps one sibling) at
//!    W = 2, then heals the cut: those keys now differ on node 3;
//! 4. measures a closed-loop foreground load (reads of the loaded keys at
//!    R = 2, writes of other keys at W = 2, at fixed concurrency) without
//!    anti-entropy: the baseline;
//! 5. runs the same load while every node runs anti-entropy rounds back to
//!    back, until node 3 holds the state the other replicas hold for every
//!    key that differed (checked between rounds by local reads);
//! 6. times one more round, idle (nothing differs).
//!
//! It reports the time to converge, the anti-entropy bytes on the wire
//! (every node's `AaeStatus::bytes_sent`) as a ratio to the bytes of the
//! differing key states (key plus encoded state), the process CPU seconds
//! during convergence, and the foreground throughput during convergence as
//! a ratio to the baseline, both measured in the same run.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dynamo_core::causality::{Context, SiblingSet};
use dynamo_core::config::Config;
use dynamo_core::node::{Node, ReadOptions, WriteOptions};
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Backend, Cluster};

/// What one benchmark run does.
#[derive(Debug, Clone)]
pub struct AaeBenchConfig {
    /// Keys loaded into every replica.
    pub keys: usize,
    /// Share of the keys that differ on one replica (0.01: 1%).
    pub divergence: f64,
    /// Bytes per value.
    pub value_size: usize,
    /// Writes in flight while loading.
    pub load_concurrency: usize,
    /// Concurrent closed-loop clients of the foreground load.
    pub clients: usize,
    /// How long the foreground load runs without anti-entropy (the baseline).
    pub baseline: Duration,
    /// Give up when the replicas have not converged after this long.
    pub max_converge: Duration,
    /// Seed of the foreground load's key choices.
    pub seed: u64,
}

impl Default for AaeBenchConfig {
    fn default() -> Self {
        AaeBenchConfig {
            keys: 1_000_000,
            divergence: 0.01,
            value_size: 100,
            load_concurrency: 256,
            clients: 32,
            baseline: Duration::from_secs(10),
            max_converge: Duration::from_secs(600),
            seed: 1,
        }
    }
}

/// The foreground load over one window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadWindow {
    /// Length of the window.
    pub elapsed: Duration,
    /// Operations completed (reads and writes).
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Median latency.
    pub p50: Duration,
    /// 99th-percentile latency.
    pub p99: Duration,
    /// Process CPU time used during the window (`None` where unmeasured).
    pub cpu: Option<Duration>,
}

impl LoadWindow {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct AaeBenchReport {
    /// Keys loaded into every replica.
    pub keys: usize,
    /// Bytes per value.
    pub value_size: usize,
    /// Keys that differed on the stale replica.
    pub differing_keys: usize,
    /// Bytes of the differing key states: key plus encoded state, as the
    /// up-to-date replicas hold them.
    pub differing_bytes: u64,
    /// Time to load the keys into all three replicas, and its rate.
    pub load: Duration,
    /// One more round once converged (nothing left to repair): its wall time.
    pub idle_round: Duration,
    /// The bytes that idle round sent and received, over all nodes.
    pub idle_round_bytes: u64,
    /// The foreground load without anti-entropy.
    pub baseline: LoadWindow,
    /// The foreground load during convergence (its window is the time to converge).
    pub during: LoadWindow,
    /// Anti-entropy rounds (every node one [`Node::aae_pass`]) until converged.
    pub rounds: u32,
    /// Bytes of anti-entropy messages the nodes sent during convergence.
    pub bytes_sent: u64,
    /// Bytes of anti-entropy messages the nodes received during convergence.
    pub bytes_received: u64,
    /// Keys whose local state a repair changed, over all nodes.
    pub keys_repaired: u64,
    /// Key states shipped in exchanges, over all nodes (a key two
    /// exchanges repair at once ships twice).
    pub keys_sent: u64,
    /// Exchanges completed, and failed, over all nodes.
    pub exchanges: u64,
    /// Exchanges that failed.
    pub exchanges_failed: u64,
    /// Keys one more round repaired after convergence (foreground writes in
    /// flight, or differences left).
    pub repaired_after: u64,
}

impl AaeBenchReport {
    /// Time to converge.
    pub fn converge(&self) -> Duration {
        self.during.elapsed
    }

    /// Anti-entropy bytes on the wire per byte of differing key state.
    pub fn bytes_ratio(&self) -> f64 {
        self.bytes_sent as f64 / self.differing_bytes.max(1) as f64
    }

    /// Foreground throughput during convergence as a share of the baseline.
    pub fn throughput_ratio(&self) -> f64 {
        self.during.rate() / self.baseline.rate().max(1e-9)
    }

    /// CPU the foreground load alone would have used over the convergence
    /// window (the baseline's CPU per operation times the operations done),
    /// subtracted from the CPU used: anti-entropy's share, estimated.
    pub fn aae_cpu(&self) -> Option<Duration> {
        let (base, during) = (self.baseline.cpu?, self.during.cpu?);
        let per_op = base.as_secs_f64() / self.baseline.ops.max(1) as f64;
        Some(Duration::from_secs_f64((during.as_secs_f64() - per_op * self.during.ops as f64).max(0.0)))
    }

    /// The one-line summary.
    pub fn summary(&self) -> String {
        let cpu =
            |d: Option<Duration>| d.map_or("n/a".to_owned(), |d| format!("{:.1} CPU s", d.as_secs_f64()));
        format!(
            "{}% of {} keys ({} keys, {:.1} MB) repaired in {:.1} s ({} rounds), {:.2}x the differing bytes \
             on the wire, {} ({} by anti-entropy, est.), foreground at {:.2}x its throughput without",
            self.differing_keys as f64 * 100.0 / self.keys.max(1) as f64,
            self.keys,
            self.differing_keys,
            self.differing_bytes as f64 / 1e6,
            self.converge().as_secs_f64(),
            self.rounds,
            self.bytes_ratio(),
            cpu(self.during.cpu),
            cpu(self.aae_cpu()),
            self.throughput_ratio()
        )
    }
}

impl fmt::Display for AaeBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
        let cpu = |d: Option<Duration>| d.map_or("n/a".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()));
        writeln!(f, "{:<44} {:>16}", "keys loaded (3 replicas each)", self.keys)?;
        writeln!(
            f,
            "{:<44} {:>16}",
            "load time, rate",
            format!(
                "{:.1} s, {:.0}/s",
                self.load.as_secs_f64(),
                self.keys as f64 / self.load.as_secs_f64().max(1e-9)
            )
        )?;
        writeln!(f, "{:<44} {:>16}", "keys differing on one replica", self.differing_keys)?;
        writeln!(f, "{:<44} {:>16}", "bytes of the differing states", self.differing_bytes)?;
        writeln!(f, "{:<44} {:>16}", "time to converge", format!("{:.2} s", self.converge().as_secs_f64()))?;
        writeln!(f, "{:<44} {:>16}", "anti-entropy rounds", self.rounds)?;
        writeln!(
            f,
            "{:<44} {:>16}",
            "exchanges (failed)",
            format!("{} ({})", self.exchanges, self.exchanges_failed)
        )?;
        writeln!(f, "{:<44} {:>16}", "keys repaired (all nodes)", self.keys_repaired)?;
        writeln!(f, "{:<44} {:>16}", "key states shipped (all nodes)", self.keys_sent)?;
        writeln!(f, "{:<44} {:>16}", "keys repaired by one more round", self.repaired_after)?;
        writeln!(
            f,
            "{:<44} {:>16}",
            "that idle round: time, bytes",
            format!("{:.0} ms, {}", self.idle_round.as_secs_f64() * 1e3, self.idle_round_bytes)
        )?;
        writeln!(f, "{:<44} {:>16}", "AAE bytes sent (sum over nodes)", self.bytes_sent)?;
        writeln!(f, "{:<44} {:>16}", "AAE bytes received (sum over nodes)", self.bytes_received)?;
        writeln!(f, "{:<44} {:>16}", "bytes sent / differing bytes", format!("{:.2}x", self.bytes_ratio()))?;
        writeln!(
            f,
            "{:<44} {:>16}",
            "(sent + received) / differing bytes",
            format!(
                "{:.2}x",
                (self.bytes_sent + self.bytes_received) as f64 / self.differing_bytes.max(1) as f64
            )
        )?;
        writeln!(f, "{:<44} {:>16}", "process CPU during convergence", cpu(self.during.cpu))?;
        writeln!(f, "{:<44} {:>16}", "  of which anti-entropy (est.)", cpu(self.aae_cpu()))?;
        writeln!(f, "{:<44} {:>16} {:>16}", "foreground load", "baseline", "during AAE")?;
        writeln!(
            f,
            "{:<44} {:>16} {:>16}",
            "  window",
            format!("{:.2} s", self.baseline.elapsed.as_secs_f64()),
            format!("{:.2} s", self.during.elapsed.as_secs_f64())
        )?;
        writeln!(
            f,
            "{:<44} {:>16} {:>16}",
            "  ops/s",
            format!("{:.0}", self.baseline.rate()),
            format!("{:.0}", self.during.rate())
        )?;
        writeln!(f, "{:<44} {:>16} {:>16}", "  errors", self.baseline.errors, self.during.errors)?;
        writeln!(f, "{:<44} {:>16} {:>16}", "  p50", ms(self.baseline.p50), ms(self.during.p50))?;
        writeln!(f, "{:<44} {:>16} {:>16}", "  p99", ms(self.baseline.p99), ms(self.during.p99))?;
        writeln!(f, "{:<44} {:>16} {:>16}", "  process CPU", cpu(self.baseline.cpu), cpu(self.during.cpu))?;
        writeln!(
            f,
            "{:<44} {:>16}",
            "throughput during / without",
            format!("{:.2}x", self.throughput_ratio())
        )?;
        write!(f, "{}", self.summary())
    }
}

/// CPU time this process has used (user + system, every thread), where
/// the platform tells.
pub fn process_cpu_time() -> Option<Duration> {
    #[cfg(unix)]
    {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
        // SAFETY: getrusage writes a whole `rusage` into the pointer it is
        // given and returns 0, or returns -1 and writes nothing.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        // SAFETY: rc == 0, so getrusage initialised it.
        let usage = unsafe { usage.assume_init() };
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
        };
        Some(tv(usage.ru_utime) + tv(usage.ru_stime))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

fn key_of(i: usize) -> Vec<u8> {
    format!("aae-bench-{i:08}").into_bytes()
}

/// A value of `size` bytes, unique per key and generation.
fn value_of(i: usize, generation: u8, size: usize) -> Bytes {
    let stamp = format!("{generation}:{i:08}|");
    Bytes::from(stamp.bytes().cycle().take(size).collect::<Vec<u8>>())
}

/// The benchmark's node configuration: strict quorum, no read repair,
/// anti-entropy on but its timer a day away (rounds are driven by hand).
pub fn bench_config() -> Config {
    Config {
        read_repair: false,
        anti_entropy: true,
        aae_interval_ms: 86_400_000,
        replica_timeout_ms: 2_000,
        request_timeout_ms: 10_000,
        ..Config::default()
    }
}

/// Anti-entropy counters summed over nodes.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    keys_sent: u64,
    exchanges: u64,
    exchanges_failed: u64,
    keys_repaired: u64,
    bytes_sent: u64,
    bytes_received: u64,
}

impl Counters {
    fn of(nodes: &[Node]) -> Counters {
        nodes.iter().map(Node::aae_status).fold(Counters::default(), |sum, s| Counters {
            keys_sent: sum.keys_sent + s.keys_sent,
            exchanges: sum.exchanges + s.exchanges,
            exchanges_failed: sum.exchanges_failed + s.exchanges_failed,
            keys_repaired: sum.keys_repaired + s.keys_repaired,
            bytes_sent: sum.bytes_sent + s.bytes_sent,
            bytes_received: sum.bytes_received + s.bytes_received,
        })
    }

    fn since(self, before: Counters) -> Counters {
        Counters {
            keys_sent: self.keys_sent.saturating_sub(before.keys_sent),
            exchanges: self.exchanges.saturating_sub(before.exchanges),
            exchanges_failed: self.exchanges_failed.saturating_sub(before.exchanges_failed),
            keys_repaired: self.keys_repaired.saturating_sub(before.keys_repaired),
            bytes_sent: self.bytes_sent.saturating_sub(before.bytes_sent),
            bytes_received: self.bytes_received.saturating_sub(before.bytes_received),
        }
    }
}

/// A closed-loop foreground load running on the current runtime until stopped.
struct Foreground {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    latencies: Arc<Mutex<Vec<Duration>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Foreground {
    /// `clients` loops, each alternating between a read of a random loaded
    /// key at R = 2 and a write of one of its own keys at W = 2 (with the
    /// context of its previous write there, so keys keep one sibling).
    fn start(nodes: &[Node], keys: usize, clients: usize, value_size: usize, seed: u64) -> Foreground {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|c| {
                let node = nodes[c % nodes.len()].clone();
                let (stop, ops, errors, latencies) =
                    (Arc::clone(&stop), Arc::clone(&ops), Arc::clone(&errors), Arc::clone(&latencies));
                tokio::spawn(async move {
                    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ ((c as u64) << 32));
                    let mut contexts: BTreeMap<u32, Context> = BTreeMap::new();
                    let mut mine = Vec::new();
                    let mut op = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let ok = if op.is_multiple_of(2) {
                            let key = key_of(rng.random_range(0..keys.max(1)));
                            node.get(&key, ReadOptions { r: Some(2), timeout: None }).await.is_ok()
                        } else {
                            let slot = rng.random_range(0..1_000u32);
                            let key = format!("aae-bench-fg-{c}-{slot}");
                            let value = value_of(slot as usize, (op % 200) as u8, value_size);
                            let wrote = node
                                .put(
                                    key.as_bytes(),
                                    value,
                                    contexts.get(&slot),
                                    WriteOptions { w: Some(2), timeout: None },
                                )
                                .await;
                            match wrote {
                                Ok(ctx) => {
                                    contexts.insert(slot, ctx);
                                    true
                                }
                                Err(_) => false,
                            }
                        };
                        mine.push(started.elapsed());
                        ops.fetch_add(1, Ordering::Relaxed);
                        if !ok {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        op += 1;
                    }
                    latencies.lock().unwrap_or_else(PoisonError::into_inner).extend(mine);
                })
            })
            .collect();
        Foreground { stop, ops, errors, latencies, tasks }
    }

    /// Operations and errors so far.
    fn counts(&self) -> (u64, u64) {
        (self.ops.load(Ordering::Relaxed), self.errors.load(Ordering::Relaxed))
    }

    /// Stops the clients; returns every latency they recorded.
    async fn stop(self) -> Vec<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let mut all = std::mem::take(&mut *self.latencies.lock().unwrap_or_else(PoisonError::into_inner));
        all.sort_unstable();
        all
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn running(cluster: &Cluster) -> Result<Vec<Node>, String> {
    (0..cluster.len()).map(|i| cluster.node(i).ok_or_else(|| format!("node {i} is not running"))).collect()
}

/// Waits until every node has built the tree of every partition it replicates.
async fn wait_trees(nodes: &[Node], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let pending: Vec<String> = nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let s = n.aae_status();
                let ready = s.partitions.iter().filter(|p| p.tree_ready).count();
                (s.partitions.is_empty() || ready < s.partitions.len())
                    .then(|| format!("node {i}: {ready}/{}", s.partitions.len()))
            })
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("trees not built after {timeout:?}: {}", pending.join(", ")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every node takes every other for available (after the cut healed).
async fn wait_available(nodes: &[Node], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let down: Vec<String> = nodes
            .iter()
            .flat_map(|a| nodes.iter().map(move |b| (a, b)))
            .filter(|(a, b)| a.id() != b.id() && !a.peer_health(b.id()).available)
            .map(|(a, b)| format!("{} -> {}", a.id(), b.id()))
            .collect();
        if down.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("peers still unavailable after {timeout:?}: {}", down.join(", ")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the benchmark on a 3-node cluster over `backend`, reporting
/// progress through `progress`. Needs a multi-threaded runtime for the
/// foreground load to run beside the rounds.
///
/// # Errors
/// A phase that failed: the cluster not starting, writes failing while
/// loading, trees not built, or the replicas not converging within
/// `max_converge`.
pub async fn run(
    backend: Arc<dyn Backend>,
    config: &AaeBenchConfig,
    progress: &dyn Fn(&str),
) -> Result<AaeBenchReport, String> {
    let cluster = Cluster::builder()
        .config(bench_config())
        .backend(backend)
        .nodes(3)
        .n(3)
        .r(2)
        .w(2)
        .strict()
        .build()
        .await
        .map_err(|e| format!("the cluster did not start: {e}"))?;
    let result = measure(&cluster, config, progress).await;
    cluster.shutdown().await;
    result
}

async fn measure(
    cluster: &Cluster,
    config: &AaeBenchConfig,
    progress: &dyn Fn(&str),
) -> Result<AaeBenchReport, String> {
    let keys = config.keys;
    let step = (1.0 / config.divergence.clamp(1e-9, 1.0)).round().max(1.0) as usize;
    let differing: Vec<usize> = (0..keys).step_by(step).collect();
    let nodes = running(cluster)?;
    wait_trees(&nodes, Duration::from_secs(60)).await?;

    // Load every key into all three replicas, keeping the contexts of the
    // keys that will differ.
    progress(&format!("loading {keys} keys of {} bytes at W = 3", config.value_size));
    let started = Instant::now();
    let contexts: Mutex<BTreeMap<usize, Context>> = Mutex::new(BTreeMap::new());
    let failed = AtomicU64::new(0);
    futures::stream::iter(0..keys)
        .for_each_concurrent(config.load_concurrency.max(1), |i| {
            let (node, contexts, failed) = (&nodes[i % nodes.len()], &contexts, &failed);
            async move {
                let key = key_of(i);
                let value = value_of(i, 0, config.value_size);
                let opts = WriteOptions { w: Some(3), timeout: None };
                match node.put(&key, value, None, opts).await {
                    Ok(ctx) if i.is_multiple_of(step) => {
                        contexts.lock().unwrap_or_else(PoisonError::into_inner).insert(i, ctx);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
        .await;
    let load = started.elapsed();
    let failed = failed.into_inner();
    if failed > 0 {
        return Err(format!("{failed} of {keys} writes failed while loading"));
    }
    progress(&format!(
        "loaded in {:.1} s ({:.0} keys/s)",
        load.as_secs_f64(),
        keys as f64 / load.as_secs_f64()
    ));

    // Node 3 misses an overwrite of every `step`-th key.
    progress(&format!("cutting node 3 off and overwriting {} keys at W = 2", differing.len()));
    cluster.isolate(2);
    let contexts = contexts.into_inner().unwrap_or_else(PoisonError::into_inner);
    let up = [nodes[0].clone(), nodes[1].clone()];
    let failed = AtomicU64::new(0);
    futures::stream::iter(differing.iter().copied())
        .for_each_concurrent(config.load_concurrency.max(1), |i| {
            let (node, contexts, failed) = (&up[i % 2], &contexts, &failed);
            async move {
                let opts = WriteOptions { w: Some(2), timeout: None };
                let value = value_of(i, 1, config.value_size);
                if node.put(&key_of(i), value, contexts.get(&i), opts).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .await;
    cluster.heal();
    let failed = failed.into_inner();
    if failed > 0 {
        return Err(format!("{failed} of {} overwrites failed", differing.len()));
    }
    wait_trees(&nodes, Duration::from_secs(600)).await?;
    wait_available(&nodes, Duration::from_secs(60)).await?;

    // What node 3 must end up with, and how many bytes that is.
    let mut expected: BTreeMap<usize, Option<SiblingSet>> = BTreeMap::new();
    let mut differing_bytes = 0u64;
    for &i in &differing {
        let key = key_of(i);
        let state = nodes[0].local_state(&key).await.map_err(|e| format!("node 1 cannot be read: {e}"))?.data;
        let stale = nodes[2].local_state(&key).await.map_err(|e| format!("node 3 cannot be read: {e}"))?.data;
        if stale == state {
            return Err(format!("key {i} does not differ on node 3"));
        }
        differing_bytes += (key.len() + state.as_ref().map_or(0, |s| s.encode().len())) as u64;
        expected.insert(i, state);
    }

    // The baseline: the foreground load alone.
    progress(&format!("baseline: {} clients for {:.1} s", config.clients, config.baseline.as_secs_f64()));
    let fg = Foreground::start(&nodes, keys, config.clients, config.value_size, config.seed);
    let (cpu0, t0) = (process_cpu_time(), Instant::now());
    tokio::time::sleep(config.baseline).await;
    let (ops, errors) = fg.counts();
    let (cpu1, elapsed) = (process_cpu_time(), t0.elapsed());
    let sorted = fg.stop().await;
    let baseline = LoadWindow {
        elapsed,
        ops,
        errors,
        p50: percentile(&sorted, 0.5),
        p99: percentile(&sorted, 0.99),
        cpu: cpu1.zip(cpu0).map(|(b, a)| b.saturating_sub(a)),
    };
    progress(&format!("baseline: {:.0} ops/s", baseline.rate()));

    // Convergence under the same load.
    progress("anti-entropy rounds on every node until node 3 agrees");
    let before = Counters::of(&nodes);
    let fg = Foreground::start(&nodes, keys, config.clients, config.value_size, config.seed ^ 1);
    let (cpu0, t0) = (process_cpu_time(), Instant::now());
    let mut pending: Vec<usize> = differing.clone();
    let mut rounds = 0u32;
    let (end, cpu1, (ops, errors), after) = loop {
        let reports = futures::future::join_all(nodes.iter().map(Node::aae_pass)).await;
        let end = (t0.elapsed(), process_cpu_time(), fg.counts(), Counters::of(&nodes).since(before));
        rounds += 1;
        let repaired: u64 = reports.iter().map(|r| r.keys_repaired).sum();
        let mut still = Vec::new();
        for &i in &pending {
            let now =
                nodes[2].local_state(&key_of(i)).await.map_err(|e| format!("node 3 cannot be read: {e}"))?;
            if now.data != expected[&i] {
                still.push(i);
            }
        }
        progress(&format!(
            "round {rounds}: {repaired} keys repaired, {} of {} still differ ({:.2} s)",
            still.len(),
            differing.len(),
            end.0.as_secs_f64()
        ));
        pending = still;
        if pending.is_empty() {
            break end;
        }
        if t0.elapsed() >= config.max_converge {
            let _ = fg.stop().await;
            return Err(format!(
                "{} keys still differ on node 3 after {rounds} rounds ({:?})",
                pending.len(),
                config.max_converge
            ));
        }
    };
    let sorted = fg.stop().await;
    let during = LoadWindow {
        elapsed: end,
        ops,
        errors,
        p50: percentile(&sorted, 0.5),
        p99: percentile(&sorted, 0.99),
        cpu: cpu1.zip(cpu0).map(|(b, a)| b.saturating_sub(a)),
    };
    let before = Counters::of(&nodes);
    let t = Instant::now();
    let extra = futures::future::join_all(nodes.iter().map(Node::aae_pass)).await;
    let idle_round = t.elapsed();
    let idle = Counters::of(&nodes).since(before);
    Ok(AaeBenchReport {
        keys,
        value_size: config.value_size,
        differing_keys: differing.len(),
        differing_bytes,
        load,
        idle_round,
        idle_round_bytes: idle.bytes_sent + idle.bytes_received,
        baseline,
        during,
        rounds,
        bytes_sent: after.bytes_sent,
        bytes_received: after.bytes_received,
        keys_repaired: after.keys_repaired,
        keys_sent: after.keys_sent,
        exchanges: after.exchanges,
        exchanges_failed: after.exchanges_failed,
        repaired_after: extra.iter().map(|r| r.keys_repaired).sum(),
    })
}
