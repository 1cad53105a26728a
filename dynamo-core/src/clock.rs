//! Time: the wall clock behind a trait (so simulations run on virtual
//! time), and the hybrid logical clock that timestamps siblings.
//!
//! Sibling timestamps order concurrent siblings for reconcilers such as
//! last-write-wins, and deadlines of forwarded requests are compared
//! against the wall clock. Causality itself never depends on time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock microseconds since the Unix epoch.
///
/// The value may jump (NTP steps, a simulated jump): the
/// [`HybridClock`] on top of it never goes backwards regardless.
pub trait Clock: Send + Sync + 'static {
    /// Microseconds since the Unix epoch.
    fn now_us(&self) -> u64;
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
    }
}

/// A hybrid logical clock (Kulkarni et al., "Logical Physical Clocks",
/// 2014), packed into one `u64` of microseconds since the Unix epoch.
///
/// Every timestamp it issues is strictly greater than every timestamp it
/// issued or [observed](HybridClock::observe) before, and at least the
/// physical clock's reading. When the physical clock lags (it was stepped
/// back, or a peer's clock runs ahead), the clock advances one microsecond
/// per timestamp until physical time catches up. So on one node a later
/// write always gets a later timestamp, and a node that has seen a write
/// (in a replicated state or a client's context) timestamps its own next
/// write after it: last-write-wins never lets an earlier write beat one
/// that began after it was acknowledged through the same node's knowledge.
pub struct HybridClock {
    physical: Arc<dyn Clock>,
    /// The highest physical reading so far.
    wall: AtomicU64,
    last: AtomicU64,
}

impl std::fmt::Debug for HybridClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridClock").field("last", &self.last.load(Ordering::Relaxed)).finish()
    }
}

impl HybridClock {
    /// A clock over `physical` that has seen nothing yet.
    pub fn new(physical: Arc<dyn Clock>) -> Self {
        HybridClock { physical, wall: AtomicU64::new(0), last: AtomicU64::new(0) }
    }

    /// The physical clock's reading in microseconds since the Unix epoch,
    /// made monotonic (the highest reading so far): for deadlines, which
    /// are about real time, not causality, and must not come back to life
    /// when the clock is stepped back.
    pub fn physical_us(&self) -> u64 {
        let now = self.physical.now_us();
        self.wall.fetch_max(now, Ordering::AcqRel).max(now)
    }

    /// A new timestamp: greater than every timestamp issued or observed so
    /// far, and not below the physical clock. Saturates at `u64::MAX`.
    pub fn now(&self) -> u64 {
        let physical = self.physical.now_us();
        let mut last = self.last.load(Ordering::Acquire);
        loop {
            let next = physical.max(last.saturating_add(1));
            match self.last.compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Records a timestamp seen elsewhere (a replicated sibling, a client's
    /// context), so every later [`now`](HybridClock::now) exceeds it.
    pub fn observe(&self, timestamp: u64) {
        self.last.fetch_max(timestamp, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Mutex;

    /// A physical clock that reads whatever the test sets.
    #[derive(Default)]
    struct Manual(Mutex<u64>);

    impl Clock for Manual {
        fn now_us(&self) -> u64 {
            *self.0.lock().unwrap()
        }
    }

    #[test]
    fn follows_physical_time_and_never_repeats_within_a_tick() {
        let physical = Arc::new(Manual::default());
        *physical.0.lock().unwrap() = 1_000;
        let hlc = HybridClock::new(physical.clone());
        assert_eq!(hlc.now(), 1_000);
        assert_eq!(hlc.now(), 1_001, "same physical tick: one more");
        *physical.0.lock().unwrap() = 5_000;
        assert_eq!(hlc.now(), 5_000);
    }

    #[test]
    fn the_deadline_clock_never_steps_back() {
        let physical = Arc::new(Manual::default());
        *physical.0.lock().unwrap() = 1_000;
        let hlc = HybridClock::new(physical.clone());
        assert_eq!(hlc.physical_us(), 1_000);
        *physical.0.lock().unwrap() = 10;
        assert_eq!(hlc.physical_us(), 1_000);
        *physical.0.lock().unwrap() = 2_000;
        assert_eq!(hlc.physical_us(), 2_000);
    }

    #[test]
    fn exceeds_what_it_observed_even_from_the_future_or_after_a_step_back() {
        let physical = Arc::new(Manual::default());
        *physical.0.lock().unwrap() = 1_000;
        let hlc = HybridClock::new(physical.clone());
        hlc.observe(9_000);
        assert_eq!(hlc.now(), 9_001);
        *physical.0.lock().unwrap() = 10;
        assert_eq!(hlc.now(), 9_002, "a clock stepped back does not take the HLC with it");
    }

    proptest! {
        /// Whatever the physical readings and observations, issued
        /// timestamps strictly increase and exceed everything observed.
        #[test]
        fn strictly_increasing_and_above_everything_observed(
            steps in proptest::collection::vec((0u64..1_000_000, proptest::option::of(0u64..2_000_000)), 1..200)
        ) {
            let physical = Arc::new(Manual::default());
            let hlc = HybridClock::new(physical.clone());
            let (mut prev, mut seen) = (0u64, 0u64);
            for (reading, observed) in steps {
                *physical.0.lock().unwrap() = reading;
                if let Some(o) = observed {
                    hlc.observe(o);
                    seen = seen.max(o);
                }
                let t = hlc.now();
                prop_assert!(t > prev);
                prop_assert!(t > seen);
                prop_assert!(t >= reading);
                prev = t;
            }
        }
    }
}
