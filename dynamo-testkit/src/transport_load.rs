//! Pieces every transport benchmark and test needs: an echo handler, a
//! closed-loop load of callers, and percentiles of latency samples.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dynamo_core::transport::{FrameHandler, Transport};
// tokio's clock: real time in a benchmark, virtual time under a paused test clock.
use tokio::time::Instant;

/// Answers every frame with the frame itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

#[async_trait]
impl FrameHandler for Echo {
    async fn handle(&self, frame: Bytes) -> Bytes {
        frame
    }
}

/// Runs `in_flight` callers on the current runtime, each making `calls`
/// sequential calls of `frame` to `to`, and returns the time until all
/// are done: a closed-loop load with `in_flight` requests outstanding.
///
/// # Panics
/// When a call fails: a benchmark's numbers would mean nothing.
pub async fn calls_in_flight<T>(
    client: Arc<T>,
    to: Arc<str>,
    frame: Bytes,
    in_flight: usize,
    calls: u64,
    timeout: Duration,
) -> Duration
where
    T: Transport + ?Sized,
{
    let start = Instant::now();
    let callers: Vec<_> = (0..in_flight)
        .map(|_| {
            let (client, to, frame) = (Arc::clone(&client), Arc::clone(&to), frame.clone());
            tokio::spawn(async move {
                for _ in 0..calls {
                    black_box(client.call(&to, frame.clone(), timeout).await.expect("benchmark call"));
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.expect("caller task");
    }
    start.elapsed()
}

/// The `q` quantile (0.0..=1.0) of latency samples sorted ascending.
///
/// # Panics
/// When `sorted` is empty.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimNetwork;

    #[test]
    fn percentiles_pick_the_right_sample() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&samples, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&samples, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&samples, 0.0), Duration::from_millis(1));
    }

    #[tokio::test(start_paused = true)]
    async fn callers_each_make_their_calls() {
        let net = SimNetwork::new(1);
        net.set_delay(Duration::from_millis(1), Duration::from_millis(1));
        let server = net.endpoint("server");
        server.serve(Arc::new(Echo)).await.unwrap();
        let client = net.endpoint("client");
        let took =
            calls_in_flight(client, "server".into(), Bytes::from_static(b"x"), 8, 5, Duration::from_secs(1))
                .await;
        assert_eq!(net.stats().calls, 40, "8 callers x 5 calls");
        // Each caller's 5 round trips of 2 ms run one after another.
        assert_eq!(took, Duration::from_millis(10));
    }
}
