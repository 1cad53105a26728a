//! Gossip at 100 and 1,000 nodes on the simulated network: a change
//! spreads within 2·log2(n) rounds, and an idle round costs the same bytes
//! per node whatever n.

use dynamo_testkit::gossip_scale::measure;

#[tokio::test(start_paused = true)]
async fn gossip_spreads_in_logarithmic_rounds_and_idles_at_constant_cost() {
    let mut reports = Vec::new();
    for n in [100, 1_000] {
        let r = measure(n, 7).await;
        println!(
            "n = {n}: joined in {} rounds, a change spread in {} rounds; bytes per node per round: {:.0} idle, {:.0} during the change",
            r.rounds_to_join, r.rounds_to_spread, r.idle_bytes_per_node_round, r.change_bytes_per_node_round
        );
        let bound = 2.0 * (n as f64).log2();
        assert!(
            f64::from(r.rounds_to_spread) <= bound,
            "n = {n}: {} rounds > {bound:.1}",
            r.rounds_to_spread
        );
        reports.push(r);
    }
    // An idle round is a hash and an "in sync": its size does not depend
    // on n, bar the varint width of node ids (1 byte up to 127, 2 after).
    let (small, large) = (reports[0].idle_bytes_per_node_round, reports[1].idle_bytes_per_node_round);
    assert!(small > 0.0 && large <= 64.0, "idle rounds: {small:.1} and {large:.1} bytes per node");
    assert!(large <= small * 1.25, "idle cost grew with n: {small:.1} at 100, {large:.1} at 1,000");
}
