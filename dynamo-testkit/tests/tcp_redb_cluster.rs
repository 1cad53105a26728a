//! The core's cluster suite over real sockets and real disks: every node
//! has a TCP transport on 127.0.0.1 and a redb store in a temporary
//! directory, all in this test process, on real time.

use std::sync::Arc;

use dynamo_core::config::Config;
use dynamo_testkit::{Cluster, ClusterBuilder};

#[allow(dead_code)]
#[path = "../examples/support/tcp_redb.rs"]
mod tcp_redb;

use tcp_redb::TcpRedb;

/// A builder whose cluster runs on TCP + redb, sized for up to 5 nodes.
/// A replica timeout shorter than the default keeps the partition
/// scenarios (which wait it out) quick on real time, and still leaves room
/// for a 1 MiB value to replicate on a loaded two-core machine.
fn tcp_redb() -> ClusterBuilder {
    let config = Config {
        replica_timeout_ms: 500,
        request_timeout_ms: 3_000,
        hint_delivery_interval_ms: 200,
        ..Config::default()
    };
    Cluster::builder().config(config).backend(Arc::new(TcpRedb::new(5)))
}

dynamo_testkit::cluster_suite!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    tcp_redb()
);
