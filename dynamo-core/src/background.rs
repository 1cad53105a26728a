//! Slots for background work, sized by admission control (Dynamo §6.5).
//!
//! Anti-entropy exchanges, tree rebuilds, tombstone purges, hint delivery
//! and ownership handoff each hold a [`Slot`] while they touch the store
//! or the network. The number of slots comes from an
//! [`AdmissionController`] fed with the latency of every client request
//! this node coordinates: while the foreground p99 is above its target
//! the slots shrink and background work waits its turn, and they grow
//! back once the foreground recovers.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::admission::{AdmissionController, AdmissionSettings, AdmissionStats};
use crate::metrics::Metrics;

struct State {
    controller: AdmissionController,
    in_use: usize,
}

/// The node's background work slots.
pub(crate) struct Background {
    state: Mutex<State>,
    freed: Notify,
}

/// One background operation's slot; given back when dropped.
pub(crate) struct Slot<'a> {
    owner: &'a Background,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.owner.lock().in_use -= 1;
        self.owner.freed.notify_waiters();
    }
}

impl Background {
    /// Slots sized by a controller with `settings`, which
    /// [`Config::validate`](crate::config::Config::validate) checked.
    pub(crate) fn new(settings: AdmissionSettings) -> Background {
        let controller = AdmissionController::new(settings, Instant::now())
            .or_else(|_| AdmissionController::new(AdmissionSettings::default(), Instant::now()))
            .expect("the default admission settings are valid");
        Background { state: Mutex::new(State { controller, in_use: 0 }), freed: Notify::new() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the latency of one foreground (client) request.
    pub(crate) fn record_foreground(&self, latency: Duration) {
        self.lock().controller.record_foreground(latency, Instant::now());
    }

    /// Waits for a free slot. Counts a wait in `metrics` when none was
    /// free at once. The slots are re-sized at least once a second while
    /// work waits, so a recovered foreground lets it through.
    pub(crate) async fn slot(&self, metrics: &Metrics) -> Slot<'_> {
        let mut waited = false;
        loop {
            let freed = self.freed.notified();
            {
                let mut state = self.lock();
                let slots = state.controller.slots(Instant::now());
                if state.in_use < slots {
                    state.in_use += 1;
                    return Slot { owner: self };
                }
            }
            if !waited {
                waited = true;
                crate::metrics::bump(&metrics.background_waits);
            }
            let _ = tokio::time::timeout(Duration::from_millis(250), freed).await;
        }
    }

    /// What metrics show: slots, the window's p99, throttling so far.
    pub(crate) fn stats(&self) -> AdmissionStats {
        let mut state = self.lock();
        // Brings the slots up to date even when no background work asks.
        state.controller.slots(Instant::now());
        state.controller.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AdmissionSettings {
        AdmissionSettings {
            target_p99: Duration::from_millis(10),
            min_slots: 1,
            max_slots: 2,
            min_samples: 10,
            ..AdmissionSettings::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn work_waits_for_a_slot_and_gets_it_when_one_is_freed() {
        let bg = Background::new(settings());
        let metrics = Metrics::default();
        let a = bg.slot(&metrics).await;
        let _b = bg.slot(&metrics).await;
        let third = bg.slot(&metrics);
        tokio::pin!(third);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut third).await.is_err(),
            "a third operation must wait while both slots are held"
        );
        drop(a);
        tokio::time::timeout(Duration::from_millis(10), third).await.expect("a freed slot is taken");
        assert_eq!(metrics.snapshot().background_waits, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_foreground_shrinks_the_slots_and_recovery_grows_them() {
        let bg = Background::new(settings());
        assert_eq!(bg.stats().slots, 2);
        for _ in 0..100 {
            bg.record_foreground(Duration::from_millis(80));
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        let stats = bg.stats();
        assert_eq!((stats.slots, stats.throttled), (1, 1), "{stats:?}");
        // Once the slow spell has aged out of the 10 s window, slots grow back.
        tokio::time::advance(Duration::from_secs(12)).await;
        for _ in 0..100 {
            bg.record_foreground(Duration::from_millis(1));
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(bg.stats().slots, 2);
    }
}
