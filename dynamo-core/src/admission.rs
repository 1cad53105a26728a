//! Admission control for background work (Dynamo §6.5): anti-entropy,
//! hint delivery and handoff take slots from an [`AdmissionController`],
//! which shrinks the slots while the node's foreground latency is above a
//! target and grows them back once it recovers.
//!
//! **Signal.** Foreground latencies ([`record_foreground`]) go into
//! HdrHistograms, one per adjustment interval (1 s by default); the last
//! `window / interval` of them form the recent window (10 s by default),
//! so a latency ages out of the p99 once it is a window old.
//!
//! **Rule (AIMD).** At the end of every interval the controller decides,
//! as TCP's congestion control does (Chiu and Jain, 1989): on a breach it
//! halves the slots (multiplicative decrease: background work backs off
//! within one interval however many slots it held); while the window is
//! healthy it adds one slot per interval (additive increase: a slow probe
//! back, so the node does not oscillate between overload and idle
//! background work). Slots stay within `min_slots..=max_slots`; the floor
//! is at least 1 so hints and repairs keep moving under sustained load.
//!
//! - *Breach*: the p99 of the latencies recorded since the last decrease
//!   (at most one window) is above `target_p99`, over at least
//!   `min_samples` latencies. Counting only latencies after the last
//!   decrease keeps one slow spell from halving the slots once per
//!   interval until it has aged out of the window: each halving must be
//!   earned by latencies measured after the previous one.
//! - *Healthy*: the p99 over the whole window is at or below the target,
//!   or the window holds fewer than `min_samples` latencies (an idle node
//!   gives background work every slot).
//! - Otherwise (a recent decrease is working but the window still
//!   remembers the slow spell) the slots hold.
//!
//! The controller is pure: time is passed in (`now`), so tests and the
//! simulation drive it without sleeping; the caller owns the semaphore and
//! the lock around it. [`stats`](AdmissionController::stats) gives what
//! metrics show: current slots, the window's p99 and how often throttling
//! struck.
//!
//!
//! ```
//! use std::time::Duration;
//!
//! use dynamo_core::admission::{AdmissionController, AdmissionSettings};
//! use tokio::time::Instant;
//!
//! let t0 = Instant::now();
//! let mut ctl = AdmissionController::new(AdmissionSettings::default(), t0)?;
//! assert_eq!(ctl.slots(t0), 4);
//! // A second of slow foreground requests (p99 80 ms, target 25 ms): halve.
//! for i in 1..=200 {
//!     ctl.record_foreground(Duration::from_millis(80), t0 + Duration::from_millis(5 * i));
//! }
//! assert_eq!(ctl.slots(t0 + Duration::from_secs(1)), 2);
//! assert_eq!(ctl.stats().throttled, 1);
//! # Ok::<(), dynamo_core::admission::AdmissionError>(())
//! ```
//!
//! [`record_foreground`]: AdmissionController::record_foreground

#![warn(missing_docs)]

use std::collections::VecDeque;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

/// The highest latency the histograms tell apart (60 s); longer ones are
/// recorded as 60 s, which is a breach of any sane target anyway.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Significant decimal digits of the histograms: 1% resolution.
const SIGFIG: u8 = 2;

/// The most intervals a window may span.
const MAX_INTERVALS: u32 = 3600;

/// How a controller judges foreground latency and sizes background work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionSettings {
    /// The foreground p99 above which background work is throttled. The
    /// default, 25 ms, is about twice the p99 of the project's 3-node
    /// benchmark at full load: background work yields when foreground
    /// requests clearly suffer, not whenever the node is busy.
    pub target_p99: Duration,
    /// The fewest slots ever left to background work (at least 1; default 1).
    pub min_slots: usize,
    /// The most slots background work may take, and the slots a new
    /// controller starts with (default 4).
    pub max_slots: usize,
    /// How far back the p99 looks (default 10 s), rounded up to a whole
    /// number of intervals.
    pub window: Duration,
    /// How often the slots are adjusted, and the granularity with which
    /// latencies age out (default 1 s).
    pub interval: Duration,
    /// The fewest latencies a p99 is trusted from (default 100): fewer is
    /// no evidence of a breach.
    pub min_samples: u64,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        AdmissionSettings {
            target_p99: Duration::from_millis(25),
            min_slots: 1,
            max_slots: 4,
            window: Duration::from_secs(10),
            interval: Duration::from_secs(1),
            min_samples: 100,
        }
    }
}

/// Why settings were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// `target_p99` is zero.
    #[error("the target p99 must be above zero")]
    ZeroTarget,
    /// `min_slots` is 0 or above `max_slots`.
    #[error("slots must satisfy 1 <= min_slots ({min}) <= max_slots ({max})")]
    InvalidSlots {
        /// The `min_slots` given.
        min: usize,
        /// The `max_slots` given.
        max: usize,
    },
    /// `interval` is zero or above one hour, `window` is shorter than
    /// `interval`, or the window spans more than 3600 intervals.
    #[error(
        "invalid window {window:?} / interval {interval:?}: the interval must be from 1 ns to 1 h, \
         and the window from one to 3600 intervals"
    )]
    InvalidWindow {
        /// The `window` given.
        window: Duration,
        /// The `interval` given.
        interval: Duration,
    },
}

impl AdmissionSettings {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`AdmissionError::ZeroTarget`], [`AdmissionError::InvalidSlots`] or
    /// [`AdmissionError::InvalidWindow`], as each describes.
    pub fn validate(&self) -> Result<(), AdmissionError> {
        if self.target_p99.is_zero() {
            return Err(AdmissionError::ZeroTarget);
        }
        if self.min_slots == 0 || self.min_slots > self.max_slots {
            return Err(AdmissionError::InvalidSlots { min: self.min_slots, max: self.max_slots });
        }
        let (window, interval) = (self.window, self.interval);
        let bad_window = AdmissionError::InvalidWindow { window, interval };
        if interval.is_zero() || interval > Duration::from_secs(3600) || window < interval {
            return Err(bad_window);
        }
        if window.as_nanos().div_ceil(interval.as_nanos()) > u128::from(MAX_INTERVALS) {
            return Err(bad_window);
        }
        Ok(())
    }

    /// How many intervals the window spans.
    fn intervals(&self) -> usize {
        self.window.as_nanos().div_ceil(self.interval.as_nanos()) as usize
    }
}

/// What the controller shows to metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionStats {
    /// Background operations that may run at once now.
    pub slots: usize,
    /// The window's foreground p99 at the last adjustment (1% resolution),
    /// `None` while the window holds no latency.
    pub p99: Option<Duration>,
    /// Foreground latencies in the window at the last adjustment.
    pub window_samples: u64,
    /// Adjustments that found a breach (and halved the slots, or kept them
    /// at the floor): how often throttling struck since the controller
    /// started.
    pub throttled: u64,
    /// Whether the last adjustment found a breach.
    pub breached: bool,
}

/// Sizes background work by foreground latency; see the [module
/// docs](self) for the rule.
#[derive(Debug, Clone)]
pub struct AdmissionController {
    settings: AdmissionSettings,
    /// Latencies of the interval in progress, in microseconds.
    current: Histogram<u64>,
    /// When the interval in progress started.
    current_start: Instant,
    /// Latencies of the last finished intervals, oldest first, at most
    /// `settings.intervals()`.
    closed: VecDeque<Histogram<u64>>,
    /// Scratch for merging intervals.
    merged: Histogram<u64>,
    /// Intervals finished since the last decrease (saturating).
    since_decrease: usize,
    slots: usize,
    stats: AdmissionStats,
}

/// An empty histogram of microseconds up to [`MAX_LATENCY_US`].
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGFIG).expect("constant histogram bounds are valid")
}

/// The p99 of `h`, `None` if it is empty.
fn p99(h: &Histogram<u64>) -> Option<Duration> {
    (!h.is_empty()).then(|| Duration::from_micros(h.value_at_quantile(0.99)))
}

impl AdmissionController {
    /// A controller starting at `now` with `max_slots` slots and an empty
    /// window.
    ///
    /// # Errors
    /// If the settings fail [`AdmissionSettings::validate`].
    pub fn new(settings: AdmissionSettings, now: Instant) -> Result<AdmissionController, AdmissionError> {
        settings.validate()?;
        let slots = settings.max_slots;
        Ok(AdmissionController {
            settings,
            current: histogram(),
            current_start: now,
            closed: VecDeque::with_capacity(settings.intervals()),
            merged: histogram(),
            since_decrease: usize::MAX,
            slots,
            stats: AdmissionStats { slots, p99: None, window_samples: 0, throttled: 0, breached: false },
        })
    }

    /// The settings the controller runs with.
    pub fn settings(&self) -> &AdmissionSettings {
        &self.settings
    }

    /// Records the latency of one foreground operation that finished at
    /// `now`. `O(1)`, plus any adjustments due by `now`.
    pub fn record_foreground(&mut self, latency: Duration, now: Instant) {
        self.advance(now);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.current.saturating_record(us);
    }

    /// How many background operations may run at once at `now`, after
    /// the adjustments due by then; always within `min_slots..=max_slots`.
    pub fn slots(&mut self, now: Instant) -> usize {
        self.advance(now);
        self.slots
    }

    /// The figures for metrics, as of the last adjustment (no time passes).
    pub fn stats(&self) -> AdmissionStats {
        self.stats
    }

    /// Finishes every interval that ended by `now`, adjusting the slots at
    /// each. An instant before the interval in progress changes nothing.
    fn advance(&mut self, now: Instant) {
        let interval = self.settings.interval;
        let elapsed = now.saturating_duration_since(self.current_start);
        if elapsed < interval {
            return;
        }
        let due = elapsed.as_nanos() / interval.as_nanos();
        // Past one window plus one interval, every interval is empty and
        // each adjustment adds one slot: count those instead of running them.
        let run = due.min(self.settings.intervals() as u128 + 1) as usize;
        for _ in 0..run {
            self.finish_interval();
        }
        let idle = usize::try_from(due - run as u128).unwrap_or(usize::MAX);
        self.slots = self.slots.saturating_add(idle).min(self.settings.max_slots);
        self.since_decrease = self.since_decrease.saturating_add(idle);
        self.stats.slots = self.slots;
        let rest = (elapsed.as_nanos() % interval.as_nanos()) as u64;
        self.current_start = now - Duration::from_nanos(rest);
    }

    /// Closes the interval in progress and adjusts the slots.
    fn finish_interval(&mut self) {
        let fresh = if self.closed.len() == self.settings.intervals() {
            let mut oldest = self.closed.pop_front().unwrap_or_else(histogram);
            oldest.reset();
            oldest
        } else {
            histogram()
        };
        let done = std::mem::replace(&mut self.current, fresh);
        self.closed.push_back(done);
        self.since_decrease = self.since_decrease.saturating_add(1);

        // Newest first: the intervals since the last decrease, then the rest.
        let s = self.settings;
        self.merged.reset();
        let mut breach = false;
        for (age, h) in self.closed.iter().rev().enumerate() {
            self.merged.add(h).expect("histograms of one controller share their bounds");
            if age + 1 == self.since_decrease.min(self.closed.len()) {
                let recent = p99(&self.merged);
                breach = self.merged.len() >= s.min_samples && recent.is_some_and(|p| p > s.target_p99);
            }
        }
        let window_p99 = p99(&self.merged);
        let healthy = self.merged.len() < s.min_samples || window_p99.is_none_or(|p| p <= s.target_p99);
        if breach {
            self.slots = (self.slots / 2).max(s.min_slots);
            self.since_decrease = 0;
            self.stats.throttled += 1;
        } else if healthy {
            self.slots = (self.slots + 1).min(s.max_slots);
        }
        self.stats = AdmissionStats {
            slots: self.slots,
            p99: window_p99,
            window_samples: self.merged.len(),
            throttled: self.stats.throttled,
            breached: breach,
        };
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn settings() -> AdmissionSettings {
        AdmissionSettings { max_slots: 16, min_slots: 2, ..AdmissionSettings::default() }
    }

    /// Drives a controller from `t0` on, recording 200 latencies a second.
    struct Run {
        ctl: AdmissionController,
        t0: Instant,
        now: Duration,
    }

    impl Run {
        fn new(settings: AdmissionSettings) -> Run {
            let t0 = Instant::now();
            Run { ctl: AdmissionController::new(settings, t0).unwrap(), t0, now: Duration::ZERO }
        }

        /// `secs` seconds of foreground traffic at `latency`; returns the
        /// slots seen at the end of each second.
        fn traffic(&mut self, secs: u64, latency: Duration) -> Vec<usize> {
            let mut seen = Vec::new();
            for _ in 0..secs {
                for _ in 0..200 {
                    self.now += ms(5);
                    self.ctl.record_foreground(latency, self.t0 + self.now);
                }
                seen.push(self.ctl.slots(self.t0 + self.now));
            }
            seen
        }
    }

    #[test]
    fn settings_are_checked() {
        assert_eq!(AdmissionSettings::default().validate(), Ok(()));
        let with = |f: fn(&mut AdmissionSettings)| {
            let mut s = AdmissionSettings::default();
            f(&mut s);
            AdmissionController::new(s, Instant::now()).err()
        };
        assert_eq!(with(|s| s.target_p99 = Duration::ZERO), Some(AdmissionError::ZeroTarget));
        assert_eq!(with(|s| s.min_slots = 0), Some(AdmissionError::InvalidSlots { min: 0, max: 4 }));
        assert_eq!(with(|s| s.min_slots = 5), Some(AdmissionError::InvalidSlots { min: 5, max: 4 }));
        assert!(matches!(with(|s| s.interval = Duration::ZERO), Some(AdmissionError::InvalidWindow { .. })));
        assert!(matches!(with(|s| s.window = ms(10)), Some(AdmissionError::InvalidWindow { .. })));
        assert!(matches!(with(|s| s.window = SEC * 3601), Some(AdmissionError::InvalidWindow { .. })));
        assert_eq!(with(|s| s.window = SEC * 3600), None);
        assert_eq!(with(|s| s.window = ms(1500)), None); // rounds up to 2 intervals
    }

    #[test]
    fn a_new_controller_gives_every_slot() {
        let mut run = Run::new(settings());
        assert_eq!(run.ctl.slots(run.t0), 16);
        assert_eq!(run.traffic(5, ms(3)), [16; 5]);
        let stats = run.ctl.stats();
        assert_eq!((stats.slots, stats.throttled, stats.breached), (16, 0, false));
        assert_eq!(stats.window_samples, 5 * 200 - 1); // the last latency is in the open interval
        assert!(stats.p99.is_some_and(|p| p >= ms(3) && p < ms(4)), "{stats:?}");
    }

    #[test]
    fn a_breach_halves_the_slots_down_to_the_floor() {
        let mut run = Run::new(settings());
        // Each second of slow traffic is a fresh breach: 16 -> 8 -> 4 -> 2, then held at the floor.
        assert_eq!(run.traffic(6, ms(80)), [8, 4, 2, 2, 2, 2]);
        let stats = run.ctl.stats();
        assert_eq!((stats.slots, stats.throttled, stats.breached), (2, 6, true));
        assert!(stats.p99.is_some_and(|p| p >= ms(79)), "{stats:?}");
    }

    #[test]
    fn slots_recover_one_per_interval_once_the_breach_ages_out() {
        let mut run = Run::new(settings());
        assert_eq!(run.traffic(3, ms(80)), [8, 4, 2]);
        // Fast again: the window still holds the slow seconds, so the slots
        // hold (no further halving) until they age out, then grow by one a
        // second up to the ceiling, never past it.
        let seen = run.traffic(30, ms(2));
        assert!(seen[..8].iter().all(|&s| s == 2), "{seen:?}");
        let growth: Vec<usize> = seen.iter().copied().skip_while(|&s| s == 2).collect();
        assert_eq!(growth[..14], (3..=16).collect::<Vec<_>>()[..]);
        assert!(growth[14..].iter().all(|&s| s == 16), "{seen:?}");
        let stats = run.ctl.stats();
        assert_eq!((stats.slots, stats.throttled, stats.breached), (16, 3, false));
        assert!(stats.p99.is_some_and(|p| p < ms(3)), "old latencies aged out: {stats:?}");
    }

    #[test]
    fn one_slow_spell_halves_once() {
        let mut run = Run::new(settings());
        assert_eq!(run.traffic(1, ms(80)), [8]);
        // The window's p99 stays above target while the slow second is in
        // it, but the latencies since the halving are fast: hold, don't
        // halve again; once it has aged out (10 s), grow.
        assert_eq!(run.traffic(10, ms(2)), [8, 8, 8, 8, 8, 8, 8, 8, 8, 9]);
        assert_eq!(run.ctl.stats().throttled, 1);
        assert_eq!(run.traffic(1, ms(2)), [10]);
    }

    #[test]
    fn old_latencies_age_out_of_the_window() {
        let s = AdmissionSettings { window: SEC * 4, ..settings() };
        let mut run = Run::new(s);
        run.traffic(1, ms(80));
        run.traffic(3, ms(2));
        assert!(run.ctl.stats().p99.is_some_and(|p| p >= ms(79)), "{:?}", run.ctl.stats());
        run.traffic(1, ms(2));
        assert!(run.ctl.stats().p99.is_some_and(|p| p < ms(3)), "{:?}", run.ctl.stats());
        // With no traffic at all the window empties and the slots grow back.
        run.now += SEC * 20;
        assert_eq!(run.ctl.slots(run.t0 + run.now), 16);
        assert_eq!(run.ctl.stats().p99, None);
        assert_eq!(run.ctl.stats().window_samples, 0);
    }

    #[test]
    fn too_few_samples_are_no_breach() {
        let s = AdmissionSettings { min_samples: 1000, ..settings() };
        let mut run = Run::new(s);
        // 200 a second: 999 slow latencies after five seconds are no evidence.
        assert_eq!(run.traffic(5, ms(80)), [16; 5]);
        assert_eq!(run.traffic(1, ms(80)), [8]); // 1199: breach
                                                 // The next breach needs 1000 latencies after the decrease: five
                                                 // seconds, during which the slots hold.
        assert_eq!(run.traffic(6, ms(80)), [8, 8, 8, 8, 4, 4]);
    }

    #[test]
    fn idle_time_restores_every_slot_at_once() {
        let mut run = Run::new(settings());
        run.traffic(3, ms(80));
        run.now += SEC * 86_400 * 365; // a year of silence: no year-long loop
        assert_eq!(run.ctl.slots(run.t0 + run.now), 16);
        assert_eq!(run.ctl.stats().p99, None);
        // And the interval grid is kept: the next second adjusts once.
        assert_eq!(run.traffic(1, ms(80)), [8]);
    }

    #[test]
    fn late_timestamps_are_recorded_without_adjusting() {
        let mut run = Run::new(settings());
        run.traffic(2, ms(2));
        let before = run.ctl.stats();
        run.ctl.record_foreground(ms(80), run.t0); // an instant long past
        assert_eq!(run.ctl.slots(run.t0), 16);
        assert_eq!(run.ctl.stats(), before);
        assert_eq!(run.ctl.settings(), &settings());
    }

    #[test]
    fn huge_latencies_saturate() {
        let mut run = Run::new(AdmissionSettings { min_samples: 1, ..settings() });
        run.ctl.record_foreground(Duration::MAX, run.t0);
        assert_eq!(run.ctl.slots(run.t0 + SEC), 8);
        assert!(run.ctl.stats().p99.is_some_and(|p| p >= Duration::from_secs(59)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the latencies and their timing, the slots stay within
        /// bounds, shrink only on a breach and grow by at most one an interval.
        #[test]
        fn slots_stay_in_bounds(
            min in 1usize..4,
            extra in 0usize..20,
            steps in prop::collection::vec((0u64..3000, 0u64..100), 1..400),
        ) {
            let s = AdmissionSettings {
                min_slots: min,
                max_slots: min + extra,
                min_samples: 5,
                window: SEC * 3,
                ..AdmissionSettings::default()
            };
            let t0 = Instant::now();
            let mut ctl = AdmissionController::new(s, t0).unwrap();
            let mut now = Duration::ZERO;
            let mut last = ctl.slots(t0);
            for (gap_ms, latency_ms) in steps {
                let before = ctl.stats();
                now += ms(gap_ms);
                ctl.record_foreground(ms(latency_ms), t0 + now);
                let slots = ctl.slots(t0 + now);
                prop_assert!((min..=min + extra).contains(&slots));
                let after = ctl.stats();
                prop_assert_eq!(after.slots, slots);
                if slots < last {
                    prop_assert!(after.throttled > before.throttled);
                }
                if gap_ms < 1000 {
                    prop_assert!(slots <= last + 1);
                }
                last = slots;
            }
        }
    }
}
