//! `dynamo-server bench`: a closed-loop load generator for the HTTP API.
//!
//! `--concurrency` workers (tokio tasks) each keep one request in flight
//! against one node (worker `i` talks to node `i mod nodes`), drawing the
//! operation and the key from a stream seeded by `--seed`: keys
//! `user{:010}` uniform over `0..--keys`, a read (`GET /kv/{key}`) with the
//! workload's probability, else a write (`PUT /kv/{key}`) of `--value-size`
//! random bytes.
//!
//! Phases: every node must answer `/health`; then, with `--preload`, every
//! key is written once so that reads find values; then `--warmup` seconds
//! that are not recorded; then `--duration` seconds of measurement. An
//! operation belongs to the measurement when it *starts* inside the window.
//! Workers look at the shared deadline before each request and stop issuing
//! at it; the requests in flight then are awaited and counted, so every
//! counted operation has completed and throughput is the count over the
//! window's length. Ctrl-C ends the measurement early (a second one quits).
//!
//! Writes are blind: a `PUT` without `X-Dynamo-Context`, concurrent with
//! whatever is stored. Under a reconciler that keeps siblings (the default
//! `keep-siblings`), a key's siblings accumulate until the node's limit,
//! after which its writes are refused with `409 Conflict`. Run write
//! workloads against a cluster that resolves them, e.g.
//! `dynamo-server dev --reconciler last-write-wins`. 409 answers are counted
//! as errors, by kind, and called out in the summary.
//!
//! Latencies are microseconds in per-worker HDR histograms, merged at the
//! end; the only shared state on the hot path is each worker's own
//! cache-line-padded progress counter. The histograms hold the answered
//! operations (reads answered 200, 300 or 404, writes answered 2xx); errors
//! are counted by kind, not timed.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::client::encode_key;

/// A request not answered within this is a `timeout` error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connection set-up limit.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Limit of the `/health` check before the run.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);
/// Highest latency a histogram tells apart (larger ones saturate).
const MAX_LATENCY_US: u64 = 60_000_000;
/// Significant figures of the histograms.
const SIGFIG: u8 = 3;
/// At most this many request URLs are parsed ahead (over all nodes);
/// beyond it each request formats its URL into a reused buffer.
const MAX_URL_TABLE: usize = 1 << 18;
/// Random bytes beyond one value, so that writes carry varied values
/// sliced out of one buffer without copying.
const VALUE_POOL_EXTRA: usize = 64 * 1024;
/// Largest `--value-size` accepted.
const MAX_VALUE_SIZE: usize = 64 * 1024 * 1024;
/// Largest `--concurrency` accepted (each worker holds two histograms).
const MAX_CONCURRENCY: usize = 1024;
/// Longest run accepted (`--warmup` plus `--duration`): a year.
const MAX_SECONDS: u64 = 366 * 24 * 3600;
/// Pause after a transport error, so that a dead node is not hammered.
const TRANSPORT_BACKOFF: Duration = Duration::from_millis(10);

/// Options of `bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Node URLs, comma-separated; requests are spread over them round-robin (each worker sticks to one).
    #[arg(
        long,
        default_value = "http://127.0.0.1:8001,http://127.0.0.1:8002,http://127.0.0.1:8003",
        value_delimiter = ','
    )]
    pub urls: Vec<String>,
    /// a (50% reads), b (95% reads), c (read-only), w (write-only).
    #[arg(long, default_value = "a")]
    pub workload: Workload,
    /// Number of distinct keys, `user0000000000` on.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Bytes per written value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Workers, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Seconds of warm-up before measuring (not recorded).
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Write every key once before measuring (so reads find values).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub preload: bool,
    /// Seed of the key/operation choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print a JSON summary line at the end (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// The operation mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// 50% reads, 50% writes.
    A,
    /// 95% reads, 5% writes.
    B,
    /// Reads only.
    C,
    /// Writes only.
    W,
}

impl Workload {
    /// Reads per thousand operations.
    pub fn read_per_mille(self) -> u32 {
        match self {
            Workload::A => 500,
            Workload::B => 950,
            Workload::C => 1000,
            Workload::W => 0,
        }
    }

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::A => "a",
            Workload::B => "b",
            Workload::C => "c",
            Workload::W => "w",
        }
    }

    fn describe(self) -> String {
        let reads = self.read_per_mille();
        format!("{}% reads, {}% writes", f64::from(reads) / 10.0, f64::from(1000 - reads) / 10.0)
    }
}

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// `GET /kv/{key}`.
    Read,
    /// A blind `PUT /kv/{key}`.
    Write,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
        }
    }
}

/// Mixes a seed and a worker number into an unrelated 64-bit seed
/// (splitmix64's finalizer).
fn stream_seed(seed: u64, worker: usize) -> u64 {
    let mut z = seed ^ (worker as u64).wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One worker's seeded stream of operations and keys.
#[derive(Debug, Clone)]
pub struct OpStream {
    rng: SmallRng,
    keys: u64,
    read_per_mille: u32,
}

impl OpStream {
    /// The stream of worker `worker` under `seed`; `keys` is at least 1.
    pub fn new(seed: u64, worker: usize, workload: Workload, keys: u64) -> Self {
        OpStream {
            rng: SmallRng::seed_from_u64(stream_seed(seed, worker)),
            keys: keys.max(1),
            read_per_mille: workload.read_per_mille(),
        }
    }

    /// The next operation and key index.
    pub fn next_op(&mut self) -> (Op, u64) {
        let op = match self.read_per_mille {
            0 => Op::Write,
            1000.. => Op::Read,
            p if self.rng.random_range(0..1000) < p => Op::Read,
            _ => Op::Write,
        };
        (op, self.rng.random_range(0..self.keys))
    }
}

fn push_key_name(out: &mut String, index: u64) {
    let _ = write!(out, "user{index:010}");
}

/// The name of key number `index`: `user` and ten digits.
pub fn key_name(index: u64) -> String {
    let mut out = String::with_capacity(14);
    push_key_name(&mut out, index);
    out
}

/// A node URL in the form requests are built from: `http://` added when
/// there is no scheme, no trailing slash.
///
/// # Errors
/// An empty or unparsable URL, or one that is not `http://`.
pub fn normalize_url(url: &str) -> anyhow::Result<String> {
    let trimmed = url.trim();
    if trimmed.is_empty() {
        bail!("empty node URL");
    }
    let with_scheme = if trimmed.contains("://") { trimmed.to_string() } else { format!("http://{trimmed}") };
    let base = with_scheme.trim_end_matches('/').to_string();
    let parsed = Url::parse(&with_scheme).with_context(|| format!("bad node URL {url:?}"))?;
    if parsed.scheme() != "http" {
        bail!("node URL {url:?}: only http:// is supported");
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        bail!("node URL {url:?} has no host");
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        bail!("node URL {url:?}: no query or fragment, please");
    }
    Ok(base)
}

/// Checks the arguments; returns the normalized node URLs.
///
/// # Errors
/// What is wrong, in terms of the flags.
pub fn validate(args: &BenchArgs) -> anyhow::Result<Vec<String>> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if args.concurrency > MAX_CONCURRENCY {
        bail!("--concurrency must be at most {MAX_CONCURRENCY}");
    }
    if args.keys == 0 {
        bail!("--keys must be at least 1");
    }
    if args.duration == 0 {
        bail!("--duration must be at least 1 second");
    }
    if args.duration.saturating_add(args.warmup) > MAX_SECONDS {
        bail!("--duration plus --warmup must be at most {MAX_SECONDS} seconds");
    }
    if args.value_size > MAX_VALUE_SIZE {
        bail!("--value-size must be at most {MAX_VALUE_SIZE} bytes");
    }
    let urls: Vec<String> = args
        .urls
        .iter()
        .filter(|u| !u.trim().is_empty())
        .map(|u| normalize_url(u).context("--urls"))
        .collect::<anyhow::Result<_>>()?;
    if urls.is_empty() {
        bail!("--urls: no node URL given");
    }
    Ok(urls)
}

/// Where one node's requests go.
#[derive(Debug)]
struct NodeTarget {
    base: String,
    /// The URL of each key, parsed ahead; empty when there are too many.
    table: Vec<Url>,
}

impl NodeTarget {
    fn new(base: String, keys: u64, tabulate: bool) -> anyhow::Result<Self> {
        let mut table = Vec::new();
        if tabulate {
            table.reserve(usize::try_from(keys).unwrap_or(0));
            for i in 0..keys {
                let url = format!("{base}/kv/{}", encode_key(&key_name(i)));
                table.push(Url::parse(&url).with_context(|| format!("bad request URL {url}"))?);
            }
        }
        Ok(NodeTarget { base, table })
    }

    /// A request for key `index`: a clone of its parsed URL, or (without a
    /// table) the URL formatted into `scratch`. Key names are URL-safe.
    fn request(
        &self,
        client: &reqwest::Client,
        method: Method,
        index: u64,
        scratch: &mut String,
    ) -> reqwest::RequestBuilder {
        if let Some(url) = usize::try_from(index).ok().and_then(|i| self.table.get(i)) {
            return client.request(method, url.clone());
        }
        scratch.clear();
        scratch.push_str(&self.base);
        scratch.push_str("/kv/");
        push_key_name(scratch, index);
        client.request(method, scratch.as_str())
    }
}

/// Random bytes that values are sliced from (a reference, not a copy).
#[derive(Debug)]
struct Values {
    pool: Bytes,
    size: usize,
}

impl Values {
    fn new(size: usize, seed: u64) -> Self {
        let mut buf = vec![0u8; size + VALUE_POOL_EXTRA];
        SmallRng::seed_from_u64(stream_seed(seed, usize::MAX)).fill_bytes(&mut buf);
        Values { pool: Bytes::from(buf), size }
    }

    fn pick(&self, rng: &mut SmallRng) -> Bytes {
        let offset = rng.random_range(0..=self.pool.len() - self.size);
        self.pool.slice(offset..offset + self.size)
    }
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// An answer with this unexpected status code.
    Status(u16),
    /// No answer within the request timeout.
    Timeout,
    /// No connection.
    Connect,
    /// Another transport failure (reset connection, bad body, ...).
    Transport,
}

impl ErrorKind {
    fn of(e: &reqwest::Error) -> Self {
        if e.is_timeout() {
            ErrorKind::Timeout
        } else if e.is_connect() {
            ErrorKind::Connect
        } else {
            ErrorKind::Transport
        }
    }

    fn is_transport(self) -> bool {
        !matches!(self, ErrorKind::Status(_))
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that widths and alignment apply.
        match self {
            ErrorKind::Status(code) => {
                match StatusCode::from_u16(*code).ok().and_then(|s| s.canonical_reason()) {
                    Some(reason) => f.pad(&format!("{code} {reason}")),
                    None => f.pad(&code.to_string()),
                }
            }
            ErrorKind::Timeout => f.pad("timeout"),
            ErrorKind::Connect => f.pad("connect error"),
            ErrorKind::Transport => f.pad("transport error"),
        }
    }
}

/// How one operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A read found a value (200) or siblings (300); a write was stored.
    Ok,
    /// A read of a key that holds nothing (404).
    NotFound,
    /// Anything else.
    Error(ErrorKind),
}

/// The outcome of an answer with `status` to `op`.
pub fn classify(op: Op, status: StatusCode) -> Outcome {
    match op {
        Op::Read => match status {
            StatusCode::OK | StatusCode::MULTIPLE_CHOICES => Outcome::Ok,
            StatusCode::NOT_FOUND => Outcome::NotFound,
            other => Outcome::Error(ErrorKind::Status(other.as_u16())),
        },
        Op::Write if status.is_success() => Outcome::Ok,
        Op::Write => Outcome::Error(ErrorKind::Status(status.as_u16())),
    }
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGFIG)?)
}

/// What workers measured: latencies of answered operations and counts.
#[derive(Debug, Clone)]
pub struct Stats {
    reads: Histogram<u64>,
    writes: Histogram<u64>,
    read_ok: u64,
    read_not_found: u64,
    write_ok: u64,
    errors: BTreeMap<(Op, ErrorKind), u64>,
}

impl Stats {
    /// Empty statistics.
    ///
    /// # Errors
    /// The histograms cannot be made (not with these constant bounds).
    pub fn new() -> anyhow::Result<Self> {
        Ok(Stats {
            reads: new_histogram()?,
            writes: new_histogram()?,
            read_ok: 0,
            read_not_found: 0,
            write_ok: 0,
            errors: BTreeMap::new(),
        })
    }

    /// Counts one operation that took `micros`.
    pub fn record(&mut self, op: Op, outcome: Outcome, micros: u64) {
        match (op, outcome) {
            (_, Outcome::Error(kind)) => *self.errors.entry((op, kind)).or_insert(0) += 1,
            (Op::Read, ok) => {
                if ok == Outcome::NotFound {
                    self.read_not_found += 1;
                } else {
                    self.read_ok += 1;
                }
                self.reads.saturating_record(micros);
            }
            (Op::Write, _) => {
                self.write_ok += 1;
                self.writes.saturating_record(micros);
            }
        }
    }

    /// Adds another worker's statistics.
    ///
    /// # Errors
    /// Histograms of other bounds (not when both come from [`Stats::new`]).
    pub fn merge(&mut self, other: &Stats) -> anyhow::Result<()> {
        self.reads.add(&other.reads)?;
        self.writes.add(&other.writes)?;
        self.read_ok += other.read_ok;
        self.read_not_found += other.read_not_found;
        self.write_ok += other.write_ok;
        for (kind, n) in &other.errors {
            *self.errors.entry(*kind).or_insert(0) += n;
        }
        Ok(())
    }

    /// Failed operations.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Every completed operation, failed ones included.
    pub fn ops(&self) -> u64 {
        self.read_ok + self.read_not_found + self.write_ok + self.error_count()
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    /// Recorded operations.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

impl Latency {
    /// `None` for an empty histogram.
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Latency {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        })
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// The outcome of a run, ready to print.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The operation mix.
    pub workload: Workload,
    /// The nodes.
    pub urls: Vec<String>,
    /// Workers.
    pub concurrency: usize,
    /// Distinct keys.
    pub keys: u64,
    /// Bytes per written value.
    pub value_size: usize,
    /// Seconds of warm-up.
    pub warmup: u64,
    /// Length of the measurement window.
    pub measured: Duration,
    /// Whether Ctrl-C cut the window short.
    pub interrupted: bool,
    /// What was measured.
    pub stats: Stats,
    all: Histogram<u64>,
}

impl Summary {
    /// A summary of `stats` over a window of `measured`.
    ///
    /// # Errors
    /// The read and write histograms cannot be merged.
    pub fn new(
        args: &BenchArgs,
        urls: Vec<String>,
        measured: Duration,
        stats: Stats,
    ) -> anyhow::Result<Self> {
        let mut all = stats.reads.clone();
        all.add(&stats.writes)?;
        Ok(Summary {
            workload: args.workload,
            urls,
            concurrency: args.concurrency,
            keys: args.keys,
            value_size: args.value_size,
            warmup: args.warmup,
            measured,
            interrupted: false,
            stats,
            all,
        })
    }

    /// Completed operations per second of the window.
    pub fn throughput(&self) -> f64 {
        let secs = self.measured.as_secs_f64();
        if secs > 0.0 {
            self.stats.ops() as f64 / secs
        } else {
            0.0
        }
    }

    fn rows(&self) -> [(&'static str, Option<Latency>); 3] {
        [
            ("reads", Latency::of(&self.stats.reads)),
            ("writes", Latency::of(&self.stats.writes)),
            ("all", Latency::of(&self.all)),
        ]
    }

    fn conflicts(&self) -> u64 {
        self.stats.errors.get(&(Op::Write, ErrorKind::Status(409))).copied().unwrap_or(0)
    }

    /// The summary for a person, several lines.
    pub fn render(&self) -> String {
        let s = &self.stats;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "bench: workload {} ({}) on {} node{}: {}",
            self.workload.name(),
            self.workload.describe(),
            self.urls.len(),
            if self.urls.len() == 1 { "" } else { "s" },
            self.urls.join(", ")
        );
        let _ = writeln!(
            out,
            "  concurrency {}, keys {}, value size {} B, warm-up {} s, measured {:.2} s{}",
            self.concurrency,
            self.keys,
            self.value_size,
            self.warmup,
            self.measured.as_secs_f64(),
            if self.interrupted { " (interrupted)" } else { "" }
        );
        let _ = writeln!(out, "  ops {}, throughput {:.1} ops/s", s.ops(), self.throughput());
        let _ = writeln!(
            out,
            "  reads: {} found, {} not found; writes: {} ok; errors: {}",
            s.read_ok,
            s.read_not_found,
            s.write_ok,
            s.error_count()
        );
        let _ = writeln!(
            out,
            "  {:<12} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "latency ms", "count", "p50", "p99", "p999", "max"
        );
        for (name, lat) in self.rows() {
            match lat {
                Some(l) => {
                    let _ = writeln!(
                        out,
                        "  {:<12} {:>10} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
                        name,
                        l.count,
                        ms(l.p50),
                        ms(l.p99),
                        ms(l.p999),
                        ms(l.max)
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "  {:<12} {:>10} {:>10} {:>10} {:>10} {:>10}",
                        name, 0, "-", "-", "-", "-"
                    );
                }
            }
        }
        if s.errors.is_empty() {
            let _ = writeln!(out, "  errors by kind: none");
        } else {
            let _ = writeln!(out, "  errors by kind:");
            for ((op, kind), n) in &s.errors {
                let _ = writeln!(out, "    {:<6} {:<28} {}", op.name(), kind, n);
            }
        }
        let conflicts = self.conflicts();
        if conflicts > 0 {
            let _ = writeln!(
                out,
                "  note: {conflicts} writes were refused with 409: blind writes pile up siblings to the limit \
                 under keep-siblings; run the cluster with --reconciler last-write-wins"
            );
        }
        out
    }

    /// The summary as one JSON object.
    pub fn to_json(&self) -> Value {
        let s = &self.stats;
        let lat = |l: Option<Latency>| match l {
            Some(l) => json!({
                "count": l.count,
                "p50_ms": ms(l.p50),
                "p99_ms": ms(l.p99),
                "p999_ms": ms(l.p999),
                "max_ms": ms(l.max),
            }),
            None => json!({ "count": 0, "p50_ms": null, "p99_ms": null, "p999_ms": null, "max_ms": null }),
        };
        let [(_, reads), (_, writes), (_, all)] = self.rows();
        let by_kind: serde_json::Map<String, Value> =
            s.errors.iter().map(|((op, kind), n)| (format!("{} {}", op.name(), kind), json!(n))).collect();
        json!({
            "workload": self.workload.name(),
            "read_fraction": f64::from(self.workload.read_per_mille()) / 1000.0,
            "nodes": self.urls,
            "concurrency": self.concurrency,
            "keys": self.keys,
            "value_size": self.value_size,
            "warmup_s": self.warmup,
            "duration_s": self.measured.as_secs_f64(),
            "interrupted": self.interrupted,
            "ops": s.ops(),
            "throughput_ops_s": self.throughput(),
            "read_found": s.read_ok,
            "read_not_found": s.read_not_found,
            "write_ok": s.write_ok,
            "reads": lat(reads),
            "writes": lat(writes),
            "all": lat(all),
            "errors": s.error_count(),
            "errors_by_kind": by_kind,
        })
    }
}

/// Set by Ctrl-C: workers stop issuing requests.
#[derive(Debug, Default)]
struct Stop {
    flag: AtomicBool,
    at: OnceLock<Instant>,
}

impl Stop {
    fn trigger(&self) {
        let _ = self.at.set(Instant::now());
        self.flag.store(true, Ordering::Relaxed);
    }

    fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

/// A worker's progress, alone on its cache line.
#[repr(align(64))]
#[derive(Debug, Default)]
struct Counter {
    warmup_ops: AtomicU64,
    ops: AtomicU64,
    errors: AtomicU64,
}

/// What every worker shares.
#[derive(Debug)]
struct Common {
    client: reqwest::Client,
    targets: Vec<NodeTarget>,
    values: Values,
    workload: Workload,
    keys: u64,
    seed: u64,
    concurrency: usize,
    stop: Arc<Stop>,
}

/// The measurement window and the progress counters.
#[derive(Debug)]
struct Window {
    measure_start: Instant,
    deadline: Instant,
    counters: Vec<Counter>,
}

/// Sends a request and reads the whole answer (so the connection can be
/// reused), chunk by chunk without gathering it.
async fn send(req: reqwest::RequestBuilder, op: Op) -> Outcome {
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Error(ErrorKind::of(&e)),
    };
    let outcome = classify(op, resp.status());
    loop {
        match resp.chunk().await {
            Ok(Some(_)) => {}
            Ok(None) => return outcome,
            Err(e) => return Outcome::Error(ErrorKind::of(&e)),
        }
    }
}

async fn worker(common: Arc<Common>, window: Arc<Window>, id: usize) -> anyhow::Result<Stats> {
    let target = &common.targets[id % common.targets.len()];
    let counter = &window.counters[id];
    let mut ops = OpStream::new(common.seed, id, common.workload, common.keys);
    let mut value_rng = SmallRng::seed_from_u64(stream_seed(!common.seed, id));
    let mut stats = Stats::new()?;
    let mut scratch = String::with_capacity(target.base.len() + 20);
    loop {
        let start = Instant::now();
        if start >= window.deadline || common.stop.is_set() {
            break;
        }
        let (op, key) = ops.next_op();
        let outcome = match op {
            Op::Read => send(target.request(&common.client, Method::GET, key, &mut scratch), op).await,
            Op::Write => {
                let req = target.request(&common.client, Method::PUT, key, &mut scratch);
                send(req.body(common.values.pick(&mut value_rng)), op).await
            }
        };
        if start >= window.measure_start {
            let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
            stats.record(op, outcome, micros);
            counter.ops.fetch_add(1, Ordering::Relaxed);
            if matches!(outcome, Outcome::Error(_)) {
                counter.errors.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            counter.warmup_ops.fetch_add(1, Ordering::Relaxed);
        }
        if matches!(outcome, Outcome::Error(kind) if kind.is_transport()) {
            tokio::time::sleep(TRANSPORT_BACKOFF).await;
        }
    }
    Ok(stats)
}

/// What preloading refused, by status.
type Refusals = BTreeMap<u16, u64>;

async fn preload_worker(common: Arc<Common>, id: usize, done: Arc<AtomicU64>) -> anyhow::Result<Refusals> {
    let target = &common.targets[id % common.targets.len()];
    let mut rng = SmallRng::seed_from_u64(stream_seed(common.seed.rotate_left(17), id));
    let mut scratch = String::new();
    let mut refused = Refusals::new();
    for key in (id as u64..common.keys).step_by(common.concurrency) {
        if common.stop.is_set() {
            break;
        }
        let req = target.request(&common.client, Method::PUT, key, &mut scratch);
        let resp = req
            .body(common.values.pick(&mut rng))
            .send()
            .await
            .with_context(|| format!("preload: PUT {} to {}", key_name(key), target.base))?;
        let status = resp.status();
        resp.bytes().await.with_context(|| format!("preload: PUT {} to {}", key_name(key), target.base))?;
        if !status.is_success() {
            *refused.entry(status.as_u16()).or_insert(0) += 1;
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(refused)
}

/// Prints a line every second on stderr, overwriting the previous one.
struct Ticker {
    task: tokio::task::JoinHandle<()>,
    printed: Arc<AtomicBool>,
}

impl Ticker {
    fn start(enabled: bool, mut line: impl FnMut() -> String + Send + 'static) -> Option<Self> {
        if !enabled {
            return None;
        }
        let printed = Arc::new(AtomicBool::new(false));
        let flag = printed.clone();
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_secs(1));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            let mut width = 0usize;
            loop {
                interval.tick().await;
                let text = line();
                let pad = width.saturating_sub(text.len());
                width = text.len();
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r{text}{:pad$}", "");
                let _ = err.flush();
                flag.store(true, Ordering::Relaxed);
            }
        });
        Some(Ticker { task, printed })
    }

    fn finish(self) {
        self.task.abort();
        if self.printed.load(Ordering::Relaxed) {
            eprintln!();
        }
    }
}

async fn check_health(client: &reqwest::Client, urls: &[String]) -> anyhow::Result<()> {
    let checks = urls.iter().map(|base| async move {
        let result = async {
            let resp = client.get(format!("{base}/health")).timeout(HEALTH_TIMEOUT).send().await?;
            let status = resp.status();
            resp.bytes().await?;
            anyhow::ensure!(status.is_success(), "/health answered {status}");
            Ok::<(), anyhow::Error>(())
        }
        .await;
        result.map_err(|e: anyhow::Error| format!("node {base} is unreachable: {e:#}"))
    });
    let failures: Vec<String> =
        futures::future::join_all(checks).await.into_iter().filter_map(Result::err).collect();
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

async fn preload(common: &Arc<Common>, progress: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    if progress {
        eprintln!("preload: writing {} keys with {} workers", common.keys, common.concurrency);
    }
    let done = Arc::new(AtomicU64::new(0));
    let ticker = {
        let done = done.clone();
        let keys = common.keys;
        Ticker::start(progress, move || format!("preload: {}/{keys} keys", done.load(Ordering::Relaxed)))
    };
    let mut tasks = JoinSet::new();
    for id in 0..common.concurrency.min(usize::try_from(common.keys).unwrap_or(usize::MAX)) {
        tasks.spawn(preload_worker(common.clone(), id, done.clone()));
    }
    let mut refused = Refusals::new();
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.context("a preload worker failed").and_then(|r| r) {
            Ok(r) => r.into_iter().for_each(|(code, n)| *refused.entry(code).or_insert(0) += n),
            Err(e) => {
                if failure.is_none() {
                    failure = Some(e);
                    tasks.abort_all();
                }
            }
        }
    }
    if let Some(t) = ticker {
        t.finish();
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if common.stop.is_set() {
        bail!("interrupted during the preload");
    }
    let n = done.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    if progress {
        eprintln!("preload: {n} keys in {secs:.1} s ({:.0} writes/s)", n as f64 / secs.max(1e-9));
    }
    if !refused.is_empty() {
        let list: Vec<String> =
            refused.iter().map(|(code, n)| format!("{n} x {}", ErrorKind::Status(*code))).collect();
        eprintln!("preload: warning: writes refused ({}); reads of those keys may miss", list.join(", "));
    }
    Ok(())
}

/// Runs the phases and returns the summary (`progress`: the lines on stderr).
async fn execute(args: &BenchArgs, stop: Arc<Stop>, progress: bool) -> anyhow::Result<Summary> {
    let urls = validate(args)?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .no_proxy()
        .build()
        .context("cannot build the HTTP client")?;
    check_health(&client, &urls).await?;
    let tabulate = usize::try_from(args.keys)
        .ok()
        .and_then(|k| k.checked_mul(urls.len()))
        .is_some_and(|n| n <= MAX_URL_TABLE);
    let targets = urls
        .iter()
        .map(|base| NodeTarget::new(base.clone(), args.keys, tabulate))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let common = Arc::new(Common {
        client,
        targets,
        values: Values::new(args.value_size, args.seed),
        workload: args.workload,
        keys: args.keys,
        seed: args.seed,
        concurrency: args.concurrency,
        stop: stop.clone(),
    });
    if args.preload {
        preload(&common, progress).await?;
    }
    if stop.is_set() {
        bail!("interrupted before the measurement");
    }

    let now = Instant::now();
    let measure_start = now + Duration::from_secs(args.warmup);
    let window = Arc::new(Window {
        measure_start,
        deadline: measure_start + Duration::from_secs(args.duration),
        counters: (0..args.concurrency).map(|_| Counter::default()).collect(),
    });
    let ticker = {
        let window = window.clone();
        let duration = args.duration;
        let mut last = 0u64;
        Ticker::start(progress, move || {
            let (mut warm, mut ops, mut errors) = (0u64, 0u64, 0u64);
            for c in &window.counters {
                warm += c.warmup_ops.load(Ordering::Relaxed);
                ops += c.ops.load(Ordering::Relaxed);
                errors += c.errors.load(Ordering::Relaxed);
            }
            let rate = (warm + ops).saturating_sub(last);
            last = warm + ops;
            // Ticks come about a whole number of seconds after the start,
            // so the rounded time since the measurement began tells which
            // phase the last second was in.
            let secs = Instant::now().saturating_duration_since(window.measure_start).as_secs_f64().round();
            if secs < 1.0 {
                format!("warm-up: {rate} ops/s")
            } else {
                let secs = (secs as u64).min(duration);
                format!("measuring {secs}/{duration} s: {rate} ops/s, {ops} ops, {errors} errors")
            }
        })
    };
    let mut tasks = JoinSet::new();
    for id in 0..args.concurrency {
        tasks.spawn(worker(common.clone(), window.clone(), id));
    }
    let mut stats = Stats::new()?;
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.context("a worker failed").and_then(|r| r) {
            Ok(s) => stats.merge(&s)?,
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    if let Some(t) = ticker {
        t.finish();
    }
    if let Some(e) = failure {
        return Err(e);
    }

    let stopped_at = stop.at.get().copied().filter(|&at| at < window.deadline);
    if stopped_at.is_some_and(|at| at <= window.measure_start) {
        bail!("interrupted before the measurement began");
    }
    let end = stopped_at.unwrap_or(window.deadline);
    let mut summary = Summary::new(args, urls, end.duration_since(window.measure_start), stats)?;
    summary.interrupted = stopped_at.is_some();
    Ok(summary)
}

/// `dynamo-server bench`: runs the load and prints the summary on stdout
/// (progress on stderr).
///
/// # Errors
/// Bad arguments, unreachable nodes, a preload that cannot write.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let stop = Arc::new(Stop::default());
    let signals = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.trigger();
                eprintln!("\nstopping: waiting for requests in flight (Ctrl-C again quits)");
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        })
    };
    let result = execute(&args, stop, true).await;
    signals.abort();
    let summary = result?;
    print!("{}", summary.render());
    if args.json {
        println!("{}", summary.to_json());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use axum::extract::{Path, State};
    use axum::http::StatusCode as AxumStatus;
    use axum::routing::get;
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    /// The default arguments, against `urls`.
    fn args(urls: Vec<String>) -> BenchArgs {
        let mut a = Cli::parse_from(["bench"]).bench;
        a.urls = urls;
        a
    }

    #[test]
    fn flags_parse_with_their_defaults() {
        let a = Cli::parse_from(["bench"]).bench;
        assert_eq!(a.urls.len(), 3);
        assert_eq!(a.urls[2], "http://127.0.0.1:8003");
        assert_eq!(a.workload, Workload::A);
        assert_eq!(
            (a.keys, a.value_size, a.concurrency, a.duration, a.warmup, a.seed),
            (10_000, 100, 64, 30, 2, 1)
        );
        assert!(a.preload && !a.json);
        let b = Cli::parse_from([
            "bench",
            "--workload",
            "w",
            "--preload",
            "false",
            "--urls",
            "127.0.0.1:9001,127.0.0.1:9002",
            "--json",
        ])
        .bench;
        assert_eq!(b.workload, Workload::W);
        assert!(!b.preload && b.json);
        assert_eq!(b.urls, ["127.0.0.1:9001", "127.0.0.1:9002"]);
        assert!(Cli::try_parse_from(["bench", "--workload", "x"]).is_err());
    }

    #[test]
    fn operation_mix_follows_the_workload_and_the_seed() {
        let fraction = |w: Workload, seed: u64| {
            let mut s = OpStream::new(seed, 0, w, 1000);
            let reads = (0..100_000).filter(|_| s.next_op().0 == Op::Read).count();
            reads as f64 / 100_000.0
        };
        assert!((fraction(Workload::A, 1) - 0.50).abs() < 0.01, "{}", fraction(Workload::A, 1));
        assert!((fraction(Workload::B, 7) - 0.95).abs() < 0.005, "{}", fraction(Workload::B, 7));
        assert_eq!(fraction(Workload::C, 1), 1.0);
        assert_eq!(fraction(Workload::W, 1), 0.0);

        let seq = |seed: u64, worker: usize| {
            let mut s = OpStream::new(seed, worker, Workload::A, 10_000);
            (0..64).map(|_| s.next_op()).collect::<Vec<_>>()
        };
        assert_eq!(seq(1, 0), seq(1, 0), "same seed, same stream");
        assert_ne!(seq(1, 0), seq(2, 0), "another seed, another stream");
        assert_ne!(seq(1, 0), seq(1, 1), "workers have their own streams");
    }

    #[test]
    fn keys_are_uniform_over_the_range() {
        let mut s = OpStream::new(3, 0, Workload::W, 10);
        let mut hits = [0u32; 10];
        for _ in 0..100_000 {
            let (_, k) = s.next_op();
            hits[usize::try_from(k).unwrap()] += 1;
        }
        assert!(hits.iter().all(|&h| (9_000..11_000).contains(&h)), "{hits:?}");
        let mut one = OpStream::new(3, 0, Workload::A, 1);
        assert!((0..100).all(|_| one.next_op().1 == 0));
    }

    #[test]
    fn keys_and_urls_are_formatted() {
        assert_eq!(key_name(0), "user0000000000");
        assert_eq!(key_name(42), "user0000000042");
        assert_eq!(key_name(9_999_999_999), "user9999999999");
        assert_eq!(encode_key(&key_name(123)), key_name(123), "key names need no escaping");
        assert_eq!(normalize_url("127.0.0.1:8001/").unwrap(), "http://127.0.0.1:8001");
        assert_eq!(normalize_url(" http://localhost:8002 ").unwrap(), "http://localhost:8002");
        assert!(normalize_url("https://127.0.0.1:8001").is_err());
        assert!(normalize_url("http://").is_err());
        assert!(normalize_url("http:///").is_err());
        assert_eq!(normalize_url("http://h:1/prefix/").unwrap(), "http://h:1/prefix");
        assert!(normalize_url("http://127.0.0.1:8001?x=1").is_err());

        // The parsed table and the formatted fallback give the same URL.
        let client = reqwest::Client::new();
        let with = NodeTarget::new("http://127.0.0.1:8001".into(), 50, true).unwrap();
        let without = NodeTarget::new("http://127.0.0.1:8001".into(), 50, false).unwrap();
        assert_eq!(with.table.len(), 50);
        assert!(without.table.is_empty());
        let mut scratch = String::new();
        for k in [0, 7, 49] {
            let a = with.request(&client, Method::GET, k, &mut scratch).build().unwrap();
            let b = without.request(&client, Method::GET, k, &mut scratch).build().unwrap();
            assert_eq!(a.url().as_str(), format!("http://127.0.0.1:8001/kv/{}", key_name(k)));
            assert_eq!(a.url(), b.url());
        }
    }

    #[test]
    fn values_are_slices_of_the_requested_size() {
        let values = Values::new(100, 1);
        let mut rng = SmallRng::seed_from_u64(5);
        let picks: Vec<Bytes> = (0..20).map(|_| values.pick(&mut rng)).collect();
        assert!(picks.iter().all(|v| v.len() == 100));
        assert!(picks.iter().any(|v| v != &picks[0]), "values vary");
        assert!(Values::new(0, 1).pick(&mut rng).is_empty());
    }

    #[test]
    fn bad_arguments_are_refused_with_a_reason() {
        let ok = args(vec!["http://127.0.0.1:1".into()]);
        assert_eq!(validate(&ok).unwrap(), ["http://127.0.0.1:1"]);
        let cases = [
            (BenchArgs { concurrency: 0, ..ok.clone() }, "--concurrency"),
            (BenchArgs { keys: 0, ..ok.clone() }, "--keys"),
            (BenchArgs { duration: 0, ..ok.clone() }, "--duration"),
            (BenchArgs { duration: u64::MAX, ..ok.clone() }, "--duration"),
            (BenchArgs { warmup: MAX_SECONDS, ..ok.clone() }, "--warmup"),
            (BenchArgs { urls: vec![], ..ok.clone() }, "--urls"),
            (BenchArgs { urls: vec![String::new()], ..ok.clone() }, "--urls"),
            (BenchArgs { urls: vec!["ftp://x".into()], ..ok.clone() }, "http://"),
            (BenchArgs { value_size: MAX_VALUE_SIZE + 1, ..ok.clone() }, "--value-size"),
        ];
        for (a, word) in cases {
            let e = format!("{:#}", validate(&a).unwrap_err());
            assert!(e.contains(word), "{e:?} should mention {word}");
        }
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(classify(Op::Read, StatusCode::OK), Outcome::Ok);
        assert_eq!(classify(Op::Read, StatusCode::MULTIPLE_CHOICES), Outcome::Ok);
        assert_eq!(classify(Op::Read, StatusCode::NOT_FOUND), Outcome::NotFound);
        assert_eq!(
            classify(Op::Read, StatusCode::SERVICE_UNAVAILABLE),
            Outcome::Error(ErrorKind::Status(503))
        );
        assert_eq!(classify(Op::Write, StatusCode::NO_CONTENT), Outcome::Ok);
        assert_eq!(classify(Op::Write, StatusCode::CONFLICT), Outcome::Error(ErrorKind::Status(409)));
        assert_eq!(classify(Op::Write, StatusCode::NOT_FOUND), Outcome::Error(ErrorKind::Status(404)));
        assert_eq!(ErrorKind::Status(409).to_string(), "409 Conflict");
        assert_eq!(ErrorKind::Timeout.to_string(), "timeout");
        assert_eq!(format!("[{:<14}]", ErrorKind::Status(503)), "[503 Service Unavailable]");
        assert_eq!(format!("[{:<14}]", ErrorKind::Status(409)), "[409 Conflict  ]");
        assert!(ErrorKind::Connect.is_transport() && !ErrorKind::Status(500).is_transport());
    }

    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= expected * 0.002
    }

    #[test]
    fn stats_merge_and_the_summary_shows_them() {
        let mut a = Stats::new().unwrap();
        let mut b = Stats::new().unwrap();
        for _ in 0..990 {
            a.record(Op::Read, Outcome::Ok, 1_000);
        }
        for _ in 0..10 {
            a.record(Op::Read, Outcome::NotFound, 100_000);
        }
        for _ in 0..1000 {
            b.record(Op::Write, Outcome::Ok, 2_000);
        }
        b.record(Op::Write, Outcome::Error(ErrorKind::Status(409)), 5);
        b.record(Op::Write, Outcome::Error(ErrorKind::Status(409)), 5);
        b.record(Op::Read, Outcome::Error(ErrorKind::Timeout), 10_000_000);
        let mut merged = Stats::new().unwrap();
        merged.merge(&a).unwrap();
        merged.merge(&b).unwrap();
        assert_eq!((merged.read_ok, merged.read_not_found, merged.write_ok), (990, 10, 1000));
        assert_eq!(merged.error_count(), 3);
        assert_eq!(merged.ops(), 2003);
        assert_eq!(merged.reads.len(), 1000, "errors are not timed");

        let reads = Latency::of(&merged.reads).unwrap();
        assert_eq!(reads.p50, 1_000);
        assert!(close(reads.p999 as f64, 100_000.0) && close(reads.max as f64, 100_000.0), "{reads:?}");
        assert_eq!(reads.p99, 1_000, "99% of reads took 1 ms");
        assert!(Latency::of(&Stats::new().unwrap().writes).is_none());

        let mut args = args(vec!["http://127.0.0.1:8001".into()]);
        args.concurrency = 2;
        let summary =
            Summary::new(&args, vec!["http://127.0.0.1:8001".into()], Duration::from_secs(2), merged)
                .unwrap();
        let all = Latency::of(&summary.all).unwrap();
        assert_eq!(all.count, 2000);
        assert_eq!(all.p50, 2_000, "990 reads at 1 ms, 10 at 100 ms, 1000 writes at 2 ms");
        assert!(close(all.p99 as f64, 2_000.0), "{all:?}");
        assert!((summary.throughput() - 1001.5).abs() < 1e-9);

        let text = summary.render();
        assert!(
            text.contains("workload a (50% reads, 50% writes) on 1 node: http://127.0.0.1:8001"),
            "{text}"
        );
        assert!(text.contains("ops 2003, throughput 1001.5 ops/s"), "{text}");
        assert!(text.contains("990 found, 10 not found"), "{text}");
        let read_row = text.lines().find(|l| l.trim_start().starts_with("reads ")).unwrap();
        assert_eq!(read_row.split_whitespace().collect::<Vec<_>>()[..4], ["reads", "1000", "1.000", "1.000"]);
        assert!(text.contains("409 Conflict"), "{text}");
        assert!(text.contains("note: 2 writes were refused with 409"), "{text}");
        assert!(text
            .lines()
            .any(|l| l.contains("read") && l.contains("timeout") && l.trim_end().ends_with('1')));

        let j = summary.to_json();
        assert_eq!(j["ops"], 2003);
        assert_eq!(j["errors"], 3);
        assert_eq!(j["errors_by_kind"]["write 409 Conflict"], 2);
        assert_eq!(j["errors_by_kind"]["read timeout"], 1);
        assert_eq!(j["reads"]["p50_ms"], 1.0);
        assert_eq!(j["writes"]["count"], 1000);
        assert_eq!(j["read_fraction"], 0.5);
        let line = j.to_string();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), j);
    }

    #[test]
    fn an_empty_operation_type_prints_dashes() {
        let mut s = Stats::new().unwrap();
        s.record(Op::Read, Outcome::Ok, 500);
        let mut a = args(vec!["http://127.0.0.1:8001".into()]);
        a.workload = Workload::C;
        let summary = Summary::new(&a, vec!["x".into()], Duration::from_secs(1), s).unwrap();
        let text = summary.render();
        let writes = text.lines().find(|l| l.trim_start().starts_with("writes ")).unwrap();
        assert_eq!(writes.split_whitespace().collect::<Vec<_>>(), ["writes", "0", "-", "-", "-", "-"]);
        assert!(summary.to_json()["writes"]["p99_ms"].is_null());
        assert!(text.contains("errors by kind: none"));
    }

    /// What the stand-in node holds: the keys written, the reads served.
    #[derive(Debug, Default)]
    struct Mock {
        keys: Mutex<HashSet<String>>,
        reads: AtomicU64,
    }

    /// A stand-in node: stores written keys; refuses writes to keys ending
    /// in 7 with 409, as a node at its sibling limit would.
    async fn mock_node() -> (String, Arc<Mock>) {
        async fn put(State(mock): State<Arc<Mock>>, Path(key): Path<String>) -> AxumStatus {
            if key.ends_with('7') {
                return AxumStatus::CONFLICT;
            }
            mock.keys.lock().unwrap().insert(key);
            AxumStatus::NO_CONTENT
        }
        async fn read(State(mock): State<Arc<Mock>>, Path(key): Path<String>) -> (AxumStatus, &'static str) {
            mock.reads.fetch_add(1, Ordering::Relaxed);
            if mock.keys.lock().unwrap().contains(&key) {
                (AxumStatus::OK, "value")
            } else {
                (AxumStatus::NOT_FOUND, "{\"error\":\"not found\"}")
            }
        }
        let mock = Arc::new(Mock::default());
        let app = axum::Router::new()
            .route("/kv/{key}", get(read).put(put))
            .route("/health", get(|| async { "{\"status\":\"ok\"}" }))
            .with_state(mock.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, mock)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn warm_up_operations_are_not_recorded() {
        let (url, mock) = mock_node().await;
        let mut a = args(vec![url]);
        a.workload = Workload::C;
        a.keys = 10;
        a.concurrency = 2;
        a.duration = 1;
        a.warmup = 1;
        let started = Instant::now();
        let summary = execute(&a, Arc::default(), false).await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(2));
        assert_eq!(summary.measured, Duration::from_secs(1));
        let served = mock.reads.load(Ordering::Relaxed) as f64;
        let recorded = summary.stats.ops() as f64;
        assert!(recorded > 0.2 * served && recorded < 0.8 * served, "{recorded} of {served}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_against_a_node_counts_every_outcome() {
        let (url, stored) = mock_node().await;
        let mut a = args(vec![url.clone(), url.clone()]);
        a.keys = 100;
        a.concurrency = 4;
        a.duration = 1;
        a.warmup = 0;
        let started = Instant::now();
        let summary = execute(&a, Arc::default(), false).await.unwrap();
        let wall = started.elapsed();
        assert!(wall >= Duration::from_secs(1) && wall < Duration::from_secs(5), "{wall:?}");
        assert_eq!(stored.keys.lock().unwrap().len(), 90, "preload wrote every key but the refused ones");
        assert_eq!(summary.measured, Duration::from_secs(1));
        assert!(!summary.interrupted);
        let s = &summary.stats;
        assert!(s.read_ok > 0 && s.write_ok > 0, "{s:?}");
        assert!(s.read_not_found > 0, "keys ending in 7 were never stored");
        assert_eq!(s.errors.keys().copied().collect::<Vec<_>>(), [(Op::Write, ErrorKind::Status(409))]);
        let writes = s.write_ok + s.error_count();
        let reads = s.read_ok + s.read_not_found;
        let share = reads as f64 / (reads + writes) as f64;
        assert!((0.4..0.6).contains(&share), "{share}");
        let refused = s.error_count() as f64 / writes as f64;
        assert!((0.03..0.2).contains(&refused), "about a tenth of writes are refused: {refused}");
        assert_eq!(s.reads.len(), reads);
        assert_eq!(s.writes.len(), s.write_ok);
        assert!(summary.throughput() > 0.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_preload_reads_find_nothing() {
        let (url, stored) = mock_node().await;
        let mut a = args(vec![url]);
        a.workload = Workload::C;
        a.preload = false;
        a.keys = 10;
        a.concurrency = 2;
        a.duration = 1;
        a.warmup = 0;
        let summary = execute(&a, Arc::default(), false).await.unwrap();
        assert!(stored.keys.lock().unwrap().is_empty());
        let s = &summary.stats;
        assert!(s.read_not_found > 0);
        assert_eq!((s.read_ok, s.write_ok, s.error_count()), (0, 0, 0));
        assert_eq!(s.ops(), s.read_not_found);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_ends_the_run_early_and_is_reported() {
        let (url, _) = mock_node().await;
        let mut a = args(vec![url]);
        a.keys = 10;
        a.concurrency = 2;
        a.duration = 30;
        a.warmup = 0;
        let stop = Arc::new(Stop::default());
        let trigger = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            trigger.trigger();
        });
        let started = Instant::now();
        let summary = execute(&a, stop, false).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(summary.interrupted);
        assert!(summary.measured < Duration::from_secs(2) && summary.measured > Duration::from_millis(300));
        assert!(summary.stats.ops() > 0);
        assert!(summary.render().contains("(interrupted)"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_nodes_are_a_clear_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let (alive, _) = mock_node().await;
        let a = args(vec![alive, dead.clone()]);
        let e = format!("{:#}", execute(&a, Arc::default(), false).await.unwrap_err());
        assert!(e.contains(&format!("node {dead} is unreachable")), "{e}");
        let bad = BenchArgs { concurrency: 0, ..args(vec![dead]) };
        let e = format!("{:#}", execute(&bad, Arc::default(), false).await.unwrap_err());
        assert!(e.contains("--concurrency must be at least 1"), "{e}");
    }
}
