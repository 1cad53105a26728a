//! The shopping cart under the seed sweep, in `cargo test`: no item is
//! ever lost, whatever the seed's faults.

use std::sync::Arc;

use dynamo_examples::cart::CartUnion;
use dynamo_examples::cart_sweep::{NoItemLost, Shoppers};
use dynamo_testkit::simulation::Simulation;

#[test]
fn no_cart_loses_an_item_across_the_sweep() {
    let report = Simulation::new()
        .reconciler(Arc::new(CartUnion))
        .workload(Arc::new(Shoppers))
        .invariant(Arc::new(NoItemLost))
        .sweep(0..1_000);
    assert!(report.failures.is_empty(), "{report}");
}
