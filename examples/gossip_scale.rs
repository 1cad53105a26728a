//! Gossip alone at scale, on the simulated network: for each cluster size,
//! rounds until a change reaches every node, bytes per node per round idle
//! and while the change spreads, and the process's resident memory.
//!
//! ```sh
//! cargo run --release --example gossip_scale            # 100 1000 10000
//! cargo run --release --example gossip_scale -- 100 500 # chosen sizes
//! ```

use dynamo_testkit::gossip_scale::measure;

/// Resident memory of this process, in MiB (Linux).
fn rss_mib() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0 / (1024.0 * 1024.0))
}

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![100, 1_000, 10_000] } else { sizes };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    println!("| nodes | rounds to join | rounds to spread a change (2·log2 n) | bytes/node/round idle | bytes/node/round during the change | RSS |");
    println!("|---|---|---|---|---|---|");
    for n in sizes {
        let started = std::time::Instant::now();
        let r = runtime.block_on(measure(n, 7));
        println!(
            "| {n} | {} | {} ({:.1}) | {:.0} | {:.0} | {:.0} MiB |",
            r.rounds_to_join,
            r.rounds_to_spread,
            2.0 * (n as f64).log2(),
            r.idle_bytes_per_node_round,
            r.change_bytes_per_node_round,
            rss_mib().unwrap_or(f64::NAN),
        );
        eprintln!("(n = {n} took {:.1} s)", started.elapsed().as_secs_f64());
    }
}
