//! Warnings about refused connections (over the connection limit, or
//! failing the TLS handshake), at most one per [`WARN_EVERY`] for each
//! kind, so a flood of connections cannot flood the log too. Each warning
//! names the address of the connection it is about and counts the
//! refusals since the last one; those in between are logged at debug.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

/// Least time between two warnings.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(10);

/// Counts refused connections and warns about them once per burst.
#[derive(Debug, Default)]
pub(crate) struct RefusalLog {
    /// When the last warning was logged.
    last_warning: Option<Instant>,
    /// Refusals since then, not yet reported.
    unreported: u64,
}

impl RefusalLog {
    /// Records one refused connection from `from`; warns (and returns
    /// `true`) unless a warning was logged less than [`WARN_EVERY`] before
    /// `now`, in which case the refusal is reported with the next warning.
    /// `reason` says why it was refused.
    pub(crate) fn refused(&mut self, now: Instant, from: SocketAddr, reason: &dyn std::fmt::Display) -> bool {
        if self.last_warning.is_some_and(|at| now.saturating_duration_since(at) < WARN_EVERY) {
            self.unreported += 1;
            debug!(%from, "peer connection refused: {reason}");
            return false;
        }
        let earlier = std::mem::take(&mut self.unreported);
        warn!(
            %from,
            refused_since_last_warning = earlier,
            "peer connection refused: {reason}; warning at most every {}s",
            WARN_EVERY.as_secs()
        );
        self.last_warning = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn warns_once_per_burst() {
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut log = RefusalLog::default();
        let t0 = Instant::now();
        assert!(log.refused(t0, from, &"over the limit"));
        for ms in 1..100 {
            assert!(!log.refused(t0 + Duration::from_millis(ms), from, &"over the limit"));
        }
        assert_eq!(log.unreported, 99);
        assert!(log.refused(t0 + WARN_EVERY, from, &"over the limit"));
        assert_eq!(log.unreported, 0);
    }
}
