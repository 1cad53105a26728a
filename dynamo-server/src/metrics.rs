//! Prometheus metrics: request latency histograms per operation, and the
//! node's own counters (quorum failures, hints, read repairs, forwards).

use std::sync::Mutex;
use std::time::Duration;

use dynamo_core::metrics::MetricsSnapshot;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a request latency sample.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `get`, `put` or `delete`.
    pub op: &'static str,
    /// `ok`, `not_found` or `error`.
    pub outcome: &'static str,
}

/// The node's counters mirrored into the registry at scrape time.
struct CoreCounters {
    quorum_failures: Counter,
    hints_stored: Counter,
    hints_delivered: Counter,
    read_repairs: Counter,
    forwarded: Counter,
    forwards_expired: Counter,
    fallback_writes: Counter,
}

/// The server's metrics registry.
pub struct ServerMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Histogram>,
    core: Mutex<CoreCounters>,
    hints_pending: Gauge,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        ServerMetrics::new()
    }
}

impl ServerMetrics {
    /// A registry with every metric registered under the `dynamo` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dynamo");
        let requests = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            // 50 µs to ~1.6 s.
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        });
        registry.register(
            "request_duration_seconds",
            "Client request latency by operation",
            requests.clone(),
        );
        let core = CoreCounters {
            quorum_failures: Counter::default(),
            hints_stored: Counter::default(),
            hints_delivered: Counter::default(),
            read_repairs: Counter::default(),
            forwarded: Counter::default(),
            forwards_expired: Counter::default(),
            fallback_writes: Counter::default(),
        };
        registry.register(
            "quorum_failures",
            "Requests that failed for want of a quorum or by deadline",
            core.quorum_failures.clone(),
        );
        registry.register("hints_stored", "Hints stored for unreachable owners", core.hints_stored.clone());
        registry.register("hints_delivered", "Hints delivered to their owners", core.hints_delivered.clone());
        registry.register("read_repairs", "Replicas repaired after reads", core.read_repairs.clone());
        registry.register(
            "forwarded",
            "Writes forwarded to a preference-list coordinator",
            core.forwarded.clone(),
        );
        registry.register(
            "forwards_expired",
            "Forwarded writes dropped because they arrived after their sender's deadline",
            core.forwards_expired.clone(),
        );
        registry.register("fallback_writes", "Writes taken by a fallback node", core.fallback_writes.clone());
        let hints_pending = Gauge::default();
        registry.register("hints_pending", "Hints this node holds, not yet delivered", hints_pending.clone());
        ServerMetrics { registry, requests, core: Mutex::new(core), hints_pending }
    }

    /// Records one request's latency.
    pub fn observe(&self, op: &'static str, outcome: &'static str, elapsed: Duration) {
        self.requests.get_or_create(&RequestLabels { op, outcome }).observe(elapsed.as_secs_f64());
    }

    /// Renders the registry in the Prometheus text format, after bringing
    /// the node's counters and pending hints up to date.
    pub fn render(&self, node: &MetricsSnapshot, hints_pending: u64) -> String {
        {
            let core = self.core.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let sync = |c: &Counter, v: u64| {
                c.inc_by(v.saturating_sub(c.get()));
            };
            sync(&core.quorum_failures, node.quorum_failures);
            sync(&core.hints_stored, node.hints_stored);
            sync(&core.hints_delivered, node.hints_delivered);
            sync(&core.read_repairs, node.read_repairs);
            sync(&core.forwarded, node.forwarded);
            sync(&core.forwards_expired, node.forwards_expired);
            sync(&core.fallback_writes, node.fallback_writes);
        }
        self.hints_pending.set(hints_pending as i64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shows_histograms_and_core_counters() {
        let m = ServerMetrics::new();
        m.observe("put", "ok", Duration::from_micros(300));
        let snap = MetricsSnapshot { read_repairs: 3, hints_delivered: 2, ..Default::default() };
        let text = m.render(&snap, 5);
        assert!(
            text.contains("dynamo_request_duration_seconds_count{op=\"put\",outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(text.contains("dynamo_read_repairs_total 3"), "{text}");
        assert!(text.contains("dynamo_hints_pending 5"), "{text}");
        let again = m.render(&MetricsSnapshot { read_repairs: 4, ..snap }, 0);
        assert!(again.contains("dynamo_read_repairs_total 4"), "{again}");
    }
}
