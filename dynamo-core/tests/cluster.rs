//! The request path end to end on the simulated network: every scenario
//! of the testkit's cluster suite, plus the checks that need simulation
//! (virtual delays, exact replay of a seed).

use std::time::Duration;

use bytes::Bytes;
use dynamo_core::prelude::*;
use dynamo_testkit::{test_seed, Cluster};

dynamo_testkit::cluster_suite!(
    #[tokio::test(start_paused = true)]
    Cluster::builder()
);

const CONVERGE: Duration = Duration::from_secs(60);

fn v(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}

#[tokio::test(start_paused = true)]
async fn deadline_is_reported_with_acks() {
    let builder = Cluster::builder();
    let cluster = builder.nodes(3).n(3).w(3).strict().build().await.unwrap();
    cluster.net().set_delay(Duration::from_millis(400), Duration::from_millis(400));
    let opts = WriteOptions { w: Some(3), timeout: Some(Duration::from_millis(300)) };
    let err = cluster.client(0).put_with(b"k", v("x"), None, opts).await.unwrap_err();
    assert_eq!(err, Error::Timeout { acks: 1, needed: 3 });
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_run() {
    async fn run(seed: u64) -> Vec<(Bytes, Option<SiblingSet>)> {
        let cluster = Cluster::builder().nodes(4).seed(seed).build().await.unwrap();
        cluster.net().set_drop_rate(0.2);
        cluster.net().set_delay(Duration::from_micros(10), Duration::from_millis(2));
        for i in 0..60 {
            let key = format!("k{}", i % 7);
            let _ = cluster.client(i % 4).put(key.as_bytes(), v(&format!("v{i}")), None).await;
        }
        cluster.heal();
        cluster.wait_converged(CONVERGE).await.unwrap();
        let mut out = Vec::new();
        for key in cluster.history().keys() {
            out.push((
                key.clone(),
                cluster.replica_state(cluster.preference_list(&key)[0], &key).await.unwrap(),
            ));
        }
        cluster.shutdown().await;
        out
    }
    let seed = test_seed(99);
    assert_eq!(run(seed).await, run(seed).await, "seed {seed} did not replay");
}
