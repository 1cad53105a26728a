//! Warnings about connections refused over the limit, at most one per
//! [`WARN_EVERY`], so a flood of connections cannot flood the log too.

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
    pub(crate) fn refused(&mut self, now: Instant, from: SocketAddr, limit: usize) -> bool {
        if self.last_warning.is_some_and(|at| now.saturating_duration_since(at) < WARN_EVERY) {
            self.unreported += 1;
            debug!(%from, limit, "peer connection refused: over the connection limit");
            return false;
        }
        let earlier = std::mem::take(&mut self.unreported);
        warn!(
            %from,
            limit,
            refused_since_last_warning = earlier,
            "peer connection refused: {limit} connections are open (max_connections); \
             warning at most every {}s",
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
        assert!(log.refused(t0, from, 8));
        for ms in 1..100 {
            assert!(!log.refused(t0 + Duration::from_millis(ms), from, 8));
        }
        assert_eq!(log.unreported, 99);
        assert!(log.refused(t0 + WARN_EVERY, from, 8));
        assert_eq!(log.unreported, 0);
    }
}
