//! `simulate`: runs seeds of the deterministic simulation and reports the
//! ones that fail, each with the command that replays it.
//!
//! ```text
//! cargo run --release -p dynamo-testkit --bin simulate -- --seeds 20000 --from 1
//! ```
//!
//! The last line is `N seeds, F failed`; the exit status is non-zero when
//! a seed failed.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use clap::Parser;
use dynamo_testkit::simulation::{Failure, Simulation};

/// Sweep seeds of the deterministic cluster simulation.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Worker threads, each running one seed at a time (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Print each seed's plan and summary as it finishes.
    #[arg(long)]
    verbose: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let threads =
        args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let simulation = Simulation::new();
    let next = AtomicU64::new(0);
    // Runs in which anti-entropy repaired keys, and in which tombstones were purged.
    let (repairing, purging) = (AtomicU64::new(0), AtomicU64::new(0));
    let failures: Mutex<Vec<Failure>> = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= args.seeds {
                    return;
                }
                let seed = args.from.wrapping_add(i);
                match simulation.run(seed) {
                    Ok(summary) => {
                        repairing.fetch_add(u64::from(summary.aae_keys_repaired > 0), Ordering::Relaxed);
                        purging.fetch_add(u64::from(summary.tombstones_purged > 0), Ordering::Relaxed);
                        if args.verbose {
                            println!("seed {seed} passed: {summary:?}; {}", simulation.plan(seed));
                        }
                    }
                    Err(failure) => {
                        println!("{failure}");
                        failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(*failure);
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let failed = failures.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).len();
    println!(
        "{:.0} seeds/s on {threads} threads ({:.1} s)",
        args.seeds as f64 / elapsed.as_secs_f64().max(1e-9),
        elapsed.as_secs_f64()
    );
    println!(
        "anti-entropy repaired keys in {} runs; tombstones were purged in {} runs",
        repairing.into_inner(),
        purging.into_inner()
    );
    println!("{} seeds, {failed} failed", args.seeds);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
