//! The shopping cart under the seed sweep: the `cart-union` reconciler,
//! shoppers as the workload, "no item lost" as the invariant, and the
//! simulation's faults (crashes, partitions, delays, wiped disks...).
//!
//! ```sh
//! cargo run --release --example cart_sweep -- 2000    # seeds to run
//! ```

use std::sync::Arc;

use dynamo_examples::cart::CartUnion;
use dynamo_examples::cart_sweep::{NoItemLost, Shoppers};
use dynamo_testkit::simulation::Simulation;

fn main() {
    let seeds = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(500);
    let report = Simulation::new()
        .reconciler(Arc::new(CartUnion))
        .workload(Arc::new(Shoppers))
        .invariant(Arc::new(NoItemLost))
        .sweep(0..seeds);
    println!("{report} ({:.0} seeds/s)", report.rate());
    if !report.failures.is_empty() {
        std::process::exit(1);
    }
}
