//! `dynamo-server bench`: a closed-loop load generator for the HTTP API,
//! with its own yardstick in the same run.
//!
//! `--concurrency` workers (tokio tasks) each keep one request in flight
//! against one node (worker `i` talks to node `i mod nodes`) on a
//! keep-alive connection of its own, drawing the operation and the key
//! from a stream seeded by `--seed`: keys `user{:010}` uniform over
//! `0..--keys`, a read (`GET /kv/{key}`) with the workload's probability,
//! else a write (`PUT /kv/{key}`) of `--value-size` random bytes.
//!
//! With a token (`DYNAMO_TOKEN` or `--token-file`), every request carries
//! it: reads need its `read` scope, writes `write`, the CPU scrape of
//! `/metrics` `admin` (without it the run reports no server CPU). A node
//! that refuses the token stops the run before it starts.
//!
//! Phases: every node must answer `/health` and a read; then, with `--preload`, every
//! key is written once so that reads find values; then `--warmup` seconds
//! that are not recorded; then `--duration` seconds of measurement. An
//! operation belongs to the measurement when it *starts* inside the window.
//! Workers look at the shared deadline before each request and stop issuing
//! at it; the requests in flight then are awaited and counted, so every
//! counted operation has completed and throughput is the count over the
//! window's length. Ctrl-C ends the measurement early (a second one quits).
//!
//! With `--baseline` (the default), the same phases then run against the
//! baseline (module [`baseline`]): one unreplicated in-memory key-value
//! process behind the same HTTP stack, started for the run. Every figure
//! is also given as a ratio to it, so a result says how far the cluster is
//! from what the HTTP layer alone allows on the machine at hand.
//!
//! CPU: over the measurement window, the servers' CPU time (their
//! `dynamo_process_cpu_seconds_total`, scraped from `/metrics` when the
//! window opens and once the last request is answered) and the generator's
//! own (`getrusage`), both per completed operation. A generator that costs
//! more per operation than the servers is called out: its figures would
//! say more about itself than about them.
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
//!
//! Modules: [`workload`] (the mix, keys, values), [`client`] (the HTTP
//! connections), [`load`] (the workers), [`stats`] (what they record),
//! [`report`] (what is printed), [`baseline`] (the yardstick).

pub mod baseline;
mod client;
mod load;
pub mod report;
pub mod stats;
pub mod workload;

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use reqwest::Url;
use serde_json::Value;
use tokio::task::JoinSet;

use client::Target;
pub use load::Stop;
use load::{Common, Counter, Refusals, Window};
use report::{CpuUse, Ratios, Summary};
use stats::{ErrorKind, Stats};
use workload::{Values, Workload};

/// At most this many request URIs are parsed ahead (over all nodes);
/// beyond it each request formats its URI into a reused buffer.
const MAX_URL_TABLE: usize = 1 << 18;
/// Largest `--value-size` accepted.
const MAX_VALUE_SIZE: usize = 64 * 1024 * 1024;
/// Largest `--concurrency` accepted (each worker holds two histograms).
const MAX_CONCURRENCY: usize = 1024;
/// Longest run accepted (`--warmup` plus `--duration`): a year.
const MAX_SECONDS: u64 = 366 * 24 * 3600;

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
    /// Then run the same load against the baseline (an unreplicated in-memory key-value process behind the same HTTP stack) and report ratios to it.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub baseline: bool,
    /// Seed of the key/operation choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print a JSON summary line at the end (for scripts).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub token: crate::client_token::ConnectArgs,
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

/// Writes every key once, reporting refusals.
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
        tasks.spawn(load::preload_worker(common.clone(), id, done.clone()));
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

/// Every node answers `/health` and lets the token read, or an error
/// naming those that do not.
async fn check_health(targets: &[Target]) -> anyhow::Result<()> {
    let failures: Vec<String> = futures::future::join_all(targets.iter().map(Target::check_health))
        .await
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// CPU time so far: this process's, and the servers' summed, each node
/// once however many times it is listed (`None` if any node does not
/// report it).
async fn cpu_now(targets: &[Target]) -> (f64, Option<f64>) {
    let mut seen = std::collections::HashSet::new();
    let nodes = targets.iter().filter(|t| seen.insert(t.base.as_str()));
    let servers: Option<Vec<f64>> =
        futures::future::join_all(nodes.map(Target::cpu_seconds)).await.into_iter().collect();
    let bench = crate::process::cpu_time().map_or(0.0, |d| d.as_secs_f64());
    (bench, servers.map(|s| s.iter().sum()))
}

/// Runs the phases against `urls` (normalized) and returns the summary,
/// labelled `label` (`progress`: the lines on stderr).
async fn execute_on(
    label: &'static str,
    urls: Vec<String>,
    args: &BenchArgs,
    stop: Arc<Stop>,
    progress: bool,
) -> anyhow::Result<Summary> {
    let tabulate = usize::try_from(args.keys)
        .ok()
        .and_then(|k| k.checked_mul(urls.len()))
        .is_some_and(|n| n <= MAX_URL_TABLE);
    // Built once: every request clones it (a reference count).
    let authorization = args.token.resolve()?.map(|t| t.header_value());
    let targets = urls
        .iter()
        .map(|base| Target::new(base.clone(), args.keys, tabulate, authorization.clone()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    check_health(&targets).await?;
    let common = Arc::new(Common {
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
    // The CPU counters are read as the window opens (off the workers).
    let cpu_start = {
        let common = common.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_start.into()).await;
            cpu_now(&common.targets).await
        })
    };
    let mut tasks = JoinSet::new();
    for id in 0..args.concurrency {
        tasks.spawn(load::worker(common.clone(), window.clone(), id));
    }
    let mut stats = Stats::new()?;
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.context("a worker failed").and_then(|r| r) {
            Ok(s) => stats.merge(&s)?,
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    let cpu_end = cpu_now(&common.targets).await;
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
    let mut summary = Summary::new(label, args, urls, end.duration_since(window.measure_start), stats)?;
    summary.interrupted = stopped_at.is_some();
    if let Ok((bench, servers)) = cpu_start.await {
        summary.cpu = Some(CpuUse {
            bench: (cpu_end.0 - bench).max(0.0),
            servers: servers.zip(cpu_end.1).map(|(a, b)| (b - a).max(0.0)),
        });
    }
    Ok(summary)
}

/// The phases against the nodes of `args`.
async fn execute(args: &BenchArgs, stop: Arc<Stop>, progress: bool) -> anyhow::Result<Summary> {
    let urls = validate(args)?;
    execute_on("cluster", urls, args, stop, progress).await
}

/// `dynamo-server bench`: runs the load against the nodes, then (with
/// `--baseline`) against the baseline, and prints the summaries and the
/// ratios on stdout (progress on stderr).
///
/// # Errors
/// Bad arguments, unreachable nodes, a preload that cannot write, a
/// baseline that cannot start.
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
    let result = async {
        let cluster = execute(&args, stop.clone(), true).await?;
        print!("{}", cluster.render());
        if !args.baseline || stop.is_set() {
            return Ok((cluster, None));
        }
        let baseline = baseline::Baseline::start().await?;
        eprintln!("baseline: the same load against {}", baseline.url);
        let measured = execute_on("baseline", vec![baseline.url.clone()], &args, stop.clone(), true).await?;
        print!("{}", measured.render());
        Ok::<_, anyhow::Error>((cluster, Some(measured)))
    }
    .await;
    signals.abort();
    let (cluster, baseline) = result?;
    let ratios = baseline.as_ref().map(|b| Ratios::of(&cluster, b));
    if let Some(r) = &ratios {
        print!("{}", r.render());
    }
    if args.json {
        let mut json = cluster.to_json();
        if let (Some(b), Some(r), Value::Object(map)) = (&baseline, &ratios, &mut json) {
            map.insert("baseline".into(), b.to_json());
            map.insert("vs_baseline".into(), r.to_json());
        }
        println!("{json}");
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

    use super::workload::Op;
    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    /// The default arguments, against `urls`.
    pub(crate) fn args(urls: Vec<String>) -> BenchArgs {
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
    fn node_urls_are_normalized() {
        assert_eq!(normalize_url("127.0.0.1:8001/").unwrap(), "http://127.0.0.1:8001");
        assert_eq!(normalize_url(" http://localhost:8002 ").unwrap(), "http://localhost:8002");
        assert!(normalize_url("https://127.0.0.1:8001").is_err());
        assert!(normalize_url("http://").is_err());
        assert!(normalize_url("http:///").is_err());
        assert_eq!(normalize_url("http://h:1/prefix/").unwrap(), "http://h:1/prefix");
        assert!(normalize_url("http://127.0.0.1:8001?x=1").is_err());
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

    /// The baseline served in this process: its `/metrics` gives this
    /// process's CPU, so the run has server CPU figures to report.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_against_the_baseline_reports_cpu_per_operation_and_ratios() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let limits = crate::http_listener::HttpLimits::new(
            &crate::config::HttpConfig::default(),
            Duration::from_secs(5),
        );
        tokio::spawn(crate::http_listener::serve(
            listener,
            baseline::router(),
            limits,
            std::future::pending(),
        ));
        let mut a = args(vec![url.clone(), url.clone()]);
        a.keys = 100;
        a.concurrency = 2;
        a.duration = 1;
        a.warmup = 0;
        let summary =
            execute_on("baseline", vec![url.clone(), url], &a, Arc::default(), false).await.unwrap();
        let s = &summary.stats;
        assert!(s.read_ok > 0 && s.write_ok > 0 && s.error_count() == 0, "{s:?}");
        assert_eq!(s.read_not_found, 0, "the preload wrote every key");
        let cpu = summary.cpu.expect("CPU was sampled");
        assert!(cpu.bench > 0.0);
        // Listed twice, counted once: the servers' CPU is this process's,
        // which the generator's own figure also is.
        let servers = cpu.servers.expect("the baseline reports its CPU");
        assert!(
            servers > 0.0 && servers <= cpu.bench * 1.5 + 0.05,
            "servers {servers} s, bench {} s",
            cpu.bench
        );
        assert!(summary.server_cpu_per_op_us().is_some_and(|us| us > 0.0));
        let ratios = report::Ratios::of(&summary, &summary);
        assert!((ratios.throughput - 1.0).abs() < 1e-9 && ratios.server_cpu_per_op == Some(1.0));
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
