//! A connection's read and idle timeouts, kept with one timer.
//!
//! - **Read timeout**: a frame whose first bytes have arrived must be whole
//!   within it, or the connection is closed as stalled.
//! - **Idle timeout**: a connection with no frame in flight either way (no
//!   request being handled or awaited, no frame partly received) and no
//!   frame read or written for that long is closed.
//!
//! The hot path pays nothing for them: frames bump a counter, and the timer
//! is not touched per frame. It wakes every quarter of the idle timeout to
//! look at the counters (plus once when a frame starts arriving in pieces),
//! so an idle connection closes between one and one and a quarter idle
//! timeouts after its last frame, never earlier.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Activity checks per idle timeout.
const CHECKS_PER_IDLE: u32 = 4;

/// The two timeouts of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeouts {
    /// Longest a started frame may take to be whole.
    pub(crate) read: Duration,
    /// Longest a connection may sit with nothing in flight.
    pub(crate) idle: Duration,
}

/// What the timer found when it fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing to do; the timer is set again.
    Wait,
    /// The frame in progress missed the read timeout.
    Stalled,
    /// Idle for the idle timeout (the clock restarts from now).
    Idle,
}

/// The timer and what it needs to judge a connection.
pub(crate) struct Watchdog {
    sleep: Pin<Box<Sleep>>,
    timeouts: Timeouts,
    period: Duration,
    /// No activity was seen after this instant.
    quiet_since: Instant,
    /// The activity count at the last check.
    seen: u64,
    /// When the next activity check is due.
    next_check: Instant,
    /// When the frame in progress started arriving, if one is.
    frame_started: Option<Instant>,
}

/// `at + d`, saturating far in the future instead of overflowing.
fn after(at: Instant, d: Duration) -> Instant {
    at.checked_add(d).unwrap_or_else(|| at + Duration::from_secs(86_400 * 365))
}

impl Watchdog {
    /// A watchdog whose idle clock starts now.
    pub(crate) fn new(timeouts: Timeouts) -> Self {
        let now = Instant::now();
        let period = (timeouts.idle / CHECKS_PER_IDLE).max(Duration::from_millis(1));
        let next_check = after(now, period);
        Watchdog {
            sleep: Box::pin(tokio::time::sleep_until(next_check)),
            timeouts,
            period,
            quiet_since: now,
            seen: 0,
            next_check,
            frame_started: None,
        }
    }

    /// Whether a frame is being timed.
    pub(crate) fn in_frame(&self) -> bool {
        self.frame_started.is_some()
    }

    /// A frame has started arriving and is not whole yet; its read timeout
    /// runs from now unless it already runs.
    pub(crate) fn frame_started(&mut self) {
        if self.frame_started.is_none() {
            let now = Instant::now();
            self.frame_started = Some(now);
            let deadline = after(now, self.timeouts.read);
            if deadline < self.sleep.deadline() {
                self.sleep.as_mut().reset(deadline);
            }
        }
    }

    /// No frame is partly received any more. The timer is left as it is:
    /// it fires early at worst, and is then set again.
    pub(crate) fn frame_done(&mut self) {
        self.frame_started = None;
    }

    /// Waits until the timer fires; cancel-safe. Call [`Watchdog::judge`]
    /// then.
    pub(crate) async fn fired(&mut self) {
        self.sleep.as_mut().await;
    }

    /// Judges the connection at `now`, given `activity` (a count of frames
    /// read and written that changes whenever one is) and whether a request
    /// is in flight (`busy`), and sets the timer again unless it closes.
    pub(crate) fn judge(&mut self, now: Instant, activity: u64, busy: bool) -> Verdict {
        if let Some(started) = self.frame_started {
            if now >= after(started, self.timeouts.read) {
                return Verdict::Stalled;
            }
        }
        let mut verdict = Verdict::Wait;
        if now >= self.next_check {
            if activity != self.seen || busy || self.frame_started.is_some() {
                self.seen = activity;
                self.quiet_since = now;
            } else if now >= after(self.quiet_since, self.timeouts.idle) {
                // Restart the clock, should the caller keep the connection.
                self.quiet_since = now;
                verdict = Verdict::Idle;
            }
            self.next_check = after(now, self.period).min(after(self.quiet_since, self.timeouts.idle));
        }
        let mut deadline = self.next_check;
        if let Some(started) = self.frame_started {
            deadline = deadline.min(after(started, self.timeouts.read));
        }
        self.sleep.as_mut().reset(deadline);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: Duration = Duration::from_millis(50);
    const IDLE: Duration = Duration::from_millis(400);
    const PERIOD: Duration = Duration::from_millis(100);

    fn watchdog() -> (Watchdog, Instant) {
        let dog = Watchdog::new(Timeouts { read: READ, idle: IDLE });
        let start = dog.quiet_since;
        (dog, start)
    }

    #[tokio::test(start_paused = true)]
    async fn idle_fires_after_the_idle_timeout_and_no_sooner() {
        let (mut dog, t0) = watchdog();
        for k in 1..4 {
            assert_eq!(dog.judge(t0 + PERIOD * k, 0, false), Verdict::Wait);
        }
        assert_eq!(dog.judge(t0 + IDLE, 0, false), Verdict::Idle);
        // The clock restarted: not idle again at once.
        assert_eq!(dog.judge(t0 + IDLE + PERIOD, 0, false), Verdict::Wait);
    }

    #[tokio::test(start_paused = true)]
    async fn activity_or_a_request_in_flight_keeps_it_open() {
        let (mut dog, t0) = watchdog();
        // A frame just before the second check: idle counts from that check.
        assert_eq!(dog.judge(t0 + PERIOD, 0, false), Verdict::Wait);
        assert_eq!(dog.judge(t0 + PERIOD * 2, 1, false), Verdict::Wait);
        assert_eq!(dog.judge(t0 + PERIOD * 2 + IDLE - PERIOD, 1, false), Verdict::Wait);
        assert_eq!(dog.judge(t0 + PERIOD * 2 + IDLE, 1, false), Verdict::Idle);
        // A handler running for many idle timeouts, with no frame at all.
        let (mut dog, t0) = watchdog();
        for k in 1..40 {
            assert_eq!(dog.judge(t0 + PERIOD * k, 0, true), Verdict::Wait, "check {k}");
        }
        assert_eq!(dog.judge(t0 + PERIOD * 40 + IDLE, 0, false), Verdict::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_frame_must_finish_within_the_read_timeout() {
        let (mut dog, t0) = watchdog();
        dog.frame_started();
        assert_eq!(dog.sleep.deadline(), t0 + READ, "the timer moved up to the frame's deadline");
        assert_eq!(dog.judge(t0 + READ / 2, 0, false), Verdict::Wait);
        assert_eq!(dog.judge(t0 + READ, 0, false), Verdict::Stalled);
        // Done in time: no verdict against it, and the idle clock restarts.
        let (mut dog, t0) = watchdog();
        dog.frame_started();
        dog.frame_done();
        assert_eq!(dog.judge(t0 + READ, 1, false), Verdict::Wait);
        assert_eq!(dog.judge(t0 + PERIOD, 1, false), Verdict::Wait);
        assert_eq!(dog.judge(t0 + PERIOD + IDLE, 1, false), Verdict::Idle);
    }
}
