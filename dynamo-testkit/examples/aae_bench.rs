//! The anti-entropy benchmark: 3 nodes in this process over real TCP on
//! loopback and redb stores in a temporary directory, N = 3; one replica
//! misses an overwrite of 1% of 1,000,000 keys; anti-entropy repairs it
//! under a foreground load. Prints a table and a one-line summary (see
//! `dynamo_testkit::aae_bench` for what each figure means).
//!
//! ```text
//! cargo run --release -p dynamo-testkit --example aae_bench                 # 1M keys, 1%
//! cargo run --release -p dynamo-testkit --example aae_bench -- --keys 20000 # a smoke run
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use dynamo_core::store::Durability;
use dynamo_testkit::aae_bench::{self, AaeBenchConfig};

#[allow(dead_code)]
#[path = "support/tcp_redb.rs"]
mod tcp_redb;

/// Merkle-tree anti-entropy: time, bytes, CPU and foreground cost of
/// repairing a replica that missed a share of the writes.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// Keys loaded into every replica.
    #[arg(long, default_value_t = 1_000_000)]
    keys: usize,
    /// Share of the keys that differ on one replica (0.01 = 1%).
    #[arg(long, default_value_t = 0.01)]
    divergence: f64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Concurrent closed-loop clients of the foreground load.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds of foreground load without anti-entropy (the baseline).
    #[arg(long, default_value_t = 10.0)]
    baseline_secs: f64,
    /// Writes in flight while loading.
    #[arg(long, default_value_t = 256)]
    load_concurrency: usize,
    /// Stores flush every write batch (fsync) instead of buffering.
    #[arg(long)]
    fsync: bool,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !(args.divergence > 0.0 && args.divergence <= 1.0) || args.keys == 0 || args.clients == 0 {
        eprintln!("--keys and --clients must be positive and --divergence in (0, 1]");
        return ExitCode::FAILURE;
    }
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).enable_all().build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("cannot start a runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
    let config = AaeBenchConfig {
        keys: args.keys,
        divergence: args.divergence,
        value_size: args.value_size,
        load_concurrency: args.load_concurrency,
        clients: args.clients,
        baseline: Duration::from_secs_f64(args.baseline_secs.max(0.1)),
        ..AaeBenchConfig::default()
    };
    let durability = if args.fsync { Durability::Fsync } else { Durability::Buffered };
    let backend = Arc::new(tcp_redb::TcpRedb::with_durability(3, durability));
    println!(
        "anti-entropy bench: 3 nodes, N=3, TCP + redb ({}), {} keys x {} bytes, {}% divergent, {} clients",
        if args.fsync { "fsync" } else { "buffered" },
        args.keys,
        args.value_size,
        args.divergence * 100.0,
        args.clients
    );
    let progress = |line: &str| eprintln!("  .. {line}");
    match runtime.block_on(aae_bench::run(backend, &config, &progress)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("aae_bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}
