//! The phi-accrual failure detector (Hayashibara et al., "The φ Accrual
//! Failure Detector", 2004), as Cassandra uses it.
//!
//! For each peer the detector keeps a window of the intervals between
//! arrivals: gossip exchanges with the peer and successful replies from it.
//! From the window's mean and standard deviation it computes φ, the
//! suspicion that the peer is down given how long it has been silent:
//! φ = −log10(P(an interval at least this long)), with intervals taken as
//! normally distributed. φ = 1 means a 10% chance that the peer is merely
//! slow, φ = 8 (the default threshold, Cassandra's `phi_convict_threshold`)
//! one in 10⁸. A minimum standard deviation keeps a peer with very regular
//! arrivals from being convicted by jitter, and an acceptable pause is
//! added to the mean for expected hiccups (a GC pause, a busy disk).
//!
//! A call that fails (a timeout, a refused connection) is evidence too: the
//! peer is suspected from then until it is heard from again. Probing it is
//! gossip's job: every round of the member list meets it once, and its
//! first answer clears the suspicion.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::failure::{FailureDetector, PeerHealth};
use crate::member::NodeId;

/// How a [`PhiAccrualDetector`] judges silence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhiSettings {
    /// φ at or above which a peer counts as down (Cassandra: 8).
    pub threshold: f64,
    /// Intervals kept per peer.
    pub window: usize,
    /// Floor of the standard deviation of intervals.
    pub min_std_dev: Duration,
    /// Added to the mean interval: a pause this long raises no suspicion.
    pub acceptable_pause: Duration,
    /// The interval assumed before the first two arrivals (the gossip
    /// interval).
    pub first_interval: Duration,
}

impl Default for PhiSettings {
    fn default() -> Self {
        PhiSettings {
            threshold: 8.0,
            window: 1000,
            min_std_dev: Duration::from_millis(500),
            acceptable_pause: Duration::from_secs(3),
            first_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug)]
struct Peer {
    intervals: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    last_arrival: Instant,
    failed_at: Option<Instant>,
}

impl Peer {
    fn new(now: Instant, first_interval: f64) -> Self {
        // Seed the window with the expected interval and a wide spread,
        // as Akka does, so a peer heard from once is not convicted at once.
        let mut peer =
            Peer { intervals: VecDeque::new(), sum: 0.0, sum_sq: 0.0, last_arrival: now, failed_at: None };
        peer.push(first_interval - first_interval / 4.0, usize::MAX);
        peer.push(first_interval + first_interval / 4.0, usize::MAX);
        peer
    }

    fn push(&mut self, interval: f64, window: usize) {
        self.intervals.push_back(interval);
        self.sum += interval;
        self.sum_sq += interval * interval;
        while self.intervals.len() > window.max(2) {
            if let Some(old) = self.intervals.pop_front() {
                self.sum -= old;
                self.sum_sq -= old * old;
            }
        }
    }

    fn phi(&self, now: Instant, settings: &PhiSettings) -> f64 {
        let n = self.intervals.len() as f64;
        let mean = self.sum / n + settings.acceptable_pause.as_secs_f64();
        let variance = (self.sum_sq / n - (self.sum / n).powi(2)).max(0.0);
        let std_dev = variance.sqrt().max(settings.min_std_dev.as_secs_f64());
        let silent = now.saturating_duration_since(self.last_arrival).as_secs_f64();
        phi(silent, mean, std_dev)
    }
}

/// φ of a silence of `t` seconds when intervals are normal with `mean`
/// and `std_dev` (the logistic approximation of the normal tail that Akka
/// and Cassandra's successors use; exact to about 0.1% and finite
/// everywhere).
pub fn phi(t: f64, mean: f64, std_dev: f64) -> f64 {
    let y = (t - mean) / std_dev;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let tail = if t > mean { e / (1.0 + e) } else { 1.0 - 1.0 / (1.0 + e) };
    -tail.max(f64::MIN_POSITIVE).log10()
}

/// Per-peer φ from arrival times, plus suspicion after failed calls.
#[derive(Debug)]
pub struct PhiAccrualDetector {
    settings: PhiSettings,
    peers: Mutex<BTreeMap<NodeId, Peer>>,
}

impl PhiAccrualDetector {
    /// A detector with `settings`.
    pub fn new(settings: PhiSettings) -> Self {
        PhiAccrualDetector { settings, peers: Mutex::new(BTreeMap::new()) }
    }

    /// The settings.
    pub fn settings(&self) -> &PhiSettings {
        &self.settings
    }

    /// φ of `node` now, `None` before it was first heard from.
    pub fn phi(&self, node: NodeId) -> Option<f64> {
        let peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        peers.get(&node).map(|p| p.phi(Instant::now(), &self.settings))
    }
}

impl FailureDetector for PhiAccrualDetector {
    fn record_success(&self, node: NodeId) {
        let now = Instant::now();
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        match peers.get_mut(&node) {
            Some(peer) => {
                let interval = now.saturating_duration_since(peer.last_arrival).as_secs_f64();
                peer.push(interval, self.settings.window);
                peer.last_arrival = now;
                peer.failed_at = None;
            }
            None => {
                peers.insert(node, Peer::new(now, self.settings.first_interval.as_secs_f64()));
            }
        }
    }

    fn record_failure(&self, node: NodeId) {
        let now = Instant::now();
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let first = self.settings.first_interval.as_secs_f64();
        let peer = peers.entry(node).or_insert_with(|| {
            // Never heard from: silence counts from now on.
            Peer::new(now, first)
        });
        peer.failed_at = Some(now);
    }

    fn is_available(&self, node: NodeId) -> bool {
        let now = Instant::now();
        let peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(peer) = peers.get(&node) else { return true };
        if peer.failed_at.is_some() {
            return false;
        }
        peer.phi(now, &self.settings) < self.settings.threshold
    }

    fn health(&self, node: NodeId) -> PeerHealth {
        let now = Instant::now();
        let (phi, last_heard) = {
            let peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
            let peer = peers.get(&node);
            (
                peer.map(|p| p.phi(now, &self.settings)),
                peer.map(|p| now.saturating_duration_since(p.last_arrival)),
            )
        };
        PeerHealth { available: self.is_available(node), phi, last_heard }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> PhiSettings {
        PhiSettings {
            min_std_dev: Duration::from_millis(100),
            acceptable_pause: Duration::ZERO,
            first_interval: Duration::from_secs(1),
            ..PhiSettings::default()
        }
    }

    #[test]
    fn phi_grows_with_silence_and_is_finite() {
        assert!(phi(0.0, 1.0, 0.1) < 0.01);
        assert!((phi(1.0, 1.0, 0.1) - 0.301).abs() < 0.01, "half the mass beyond the mean");
        let (a, b, c) = (phi(1.2, 1.0, 0.1), phi(1.4, 1.0, 0.1), phi(2.0, 1.0, 0.1));
        assert!(a < b && b < c, "{a} {b} {c}");
        assert!(phi(1_000.0, 1.0, 0.1).is_finite());
    }

    /// Regular heartbeats every second, then silence: the peer stays up
    /// through jitter and is convicted a few seconds into the silence.
    #[tokio::test(start_paused = true)]
    async fn regular_arrivals_then_silence() {
        let d = PhiAccrualDetector::new(settings());
        let n = NodeId(2);
        assert!(d.is_available(n), "unknown peers are not suspected");
        for i in 0..30 {
            d.record_success(n);
            let jitter = Duration::from_millis(if i % 2 == 0 { 950 } else { 1050 });
            tokio::time::advance(jitter).await;
            assert!(d.is_available(n), "up through jitter (arrival {i}), phi {:?}", d.phi(n));
        }
        d.record_success(n);
        tokio::time::advance(Duration::from_millis(1200)).await;
        assert!(d.is_available(n), "a little late is not down: phi {:?}", d.phi(n));
        let mut silent = Duration::from_millis(1200);
        while d.is_available(n) {
            tokio::time::advance(Duration::from_millis(100)).await;
            silent += Duration::from_millis(100);
            assert!(silent < Duration::from_secs(5), "not convicted after {silent:?}");
        }
        assert!(d.phi(n).unwrap() >= 8.0);
        d.record_success(n);
        assert!(d.is_available(n), "heard from again: up");
    }

    /// A failed call suspects the peer at once, until it is heard from.
    #[tokio::test(start_paused = true)]
    async fn failed_calls_suspect_until_heard_from() {
        let d = PhiAccrualDetector::new(settings());
        let n = NodeId(3);
        d.record_failure(n);
        assert!(!d.is_available(n));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!d.is_available(n), "still suspected: only an answer clears it");
        d.record_success(n);
        assert!(d.is_available(n));
        let health = d.health(n);
        assert!(health.available && health.phi.is_some() && health.last_heard == Some(Duration::ZERO));
    }
}
