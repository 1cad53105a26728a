//! The anti-entropy benchmark, small: 3,000 keys over TCP + redb, 1% of
//! them stale on one replica; anti-entropy must repair exactly those.

use std::sync::Arc;
use std::time::Duration;

use dynamo_testkit::aae_bench::{self, AaeBenchConfig};

#[allow(dead_code)]
#[path = "../examples/support/tcp_redb.rs"]
mod tcp_redb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_repairs_the_stale_replica_under_load() {
    let config = AaeBenchConfig {
        keys: 3_000,
        divergence: 0.01,
        load_concurrency: 64,
        clients: 4,
        baseline: Duration::from_millis(500),
        max_converge: Duration::from_secs(60),
        ..AaeBenchConfig::default()
    };
    let report = aae_bench::run(Arc::new(tcp_redb::TcpRedb::new(3)), &config, &|_| {})
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!("{report}");
    assert_eq!(report.differing_keys, 30);
    assert!(report.keys_repaired >= 30, "{report}");
    assert!(report.bytes_sent > 0 && report.bytes_received > 0, "{report}");
    assert!(report.baseline.ops > 0 && report.during.ops > 0, "{report}");
}
