//! Prometheus metrics: request latency histograms per operation, the
//! node's own counters (quorum failures, hints, read repairs, forwards,
//! ownership handoff, anti-entropy, tombstone purge, background waits),
//! the transfers of the current topology move, and the admission control
//! of background work (slots, foreground p99, throttling).
//!
//! Served in the Prometheus text format 0.0.4 by default, which every
//! Prometheus server parses, and in OpenMetrics 1.0 to a scraper that asks
//! for it (`Accept: application/openmetrics-text`).

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use dynamo_core::metrics::MetricsSnapshot;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a request latency sample.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `get`, `put` or `delete`.
    pub op: &'static str,
    /// `ok`, `not_found` or `error`.
    pub outcome: &'static str,
}

/// Labels of a per-peer sample.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// The peer's node id.
    pub peer: u64,
}

/// Why the HTTP port refused a request before routing it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `unauthenticated` (`401`), `forbidden` (`403`) or `rate_limited` (`429`).
    pub reason: &'static str,
}

/// Counts of requests the HTTP port refused before routing them
/// (`dynamo_http_refused_total{reason}`): cheap to clone, and shared
/// between the listener and the registry. The default counts into a
/// family no registry exports.
#[derive(Clone, Debug, Default)]
pub struct HttpRefusals(Family<RefusalLabels, Counter>);

impl HttpRefusals {
    /// Counts one request refused `401`.
    pub fn unauthenticated(&self) {
        self.count("unauthenticated");
    }

    /// Counts one request refused `403`.
    pub fn forbidden(&self) {
        self.count("forbidden");
    }

    /// Counts one request refused `429`.
    pub fn rate_limited(&self) {
        self.count("rate_limited");
    }

    fn count(&self, reason: &'static str) {
        self.0.get_or_create(&RefusalLabels { reason }).inc();
    }
}

/// What the failure detector says of one peer at scrape time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeerSample {
    /// The peer's node id.
    pub peer: u64,
    /// Whether it counts as up.
    pub up: bool,
    /// Its phi, for detectors that compute one.
    pub phi: Option<f64>,
}

/// Labels of the handoff transfer gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransferLabels {
    /// `pending`, `active` or `done`.
    pub state: &'static str,
}

/// The transfers of the current topology move in each state, as this node
/// sees them (see [`dynamo_core::handoff::HandoffStatus`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferCounts {
    /// Not started, or interrupted and to start again.
    pub pending: u64,
    /// Being copied.
    pub active: u64,
    /// Copied: the gaining node holds the whole partition.
    pub done: u64,
}

impl TransferCounts {
    /// The counts of a handoff status.
    pub fn of(status: &dynamo_core::handoff::HandoffStatus) -> Self {
        use dynamo_core::handoff::TransferState;
        let count = |state| status.count(state) as u64;
        TransferCounts {
            pending: count(TransferState::Pending),
            active: count(TransferState::Active),
            done: count(TransferState::Done),
        }
    }
}

/// The state of background work at scrape time: the admission
/// controller's (see [`dynamo_core::admission::AdmissionStats`]) and the
/// anti-entropy trees built.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BackgroundSample {
    /// Background operations that may run at once now.
    pub slots: u64,
    /// The recent window's foreground p99, `None` while the window holds
    /// no request (shown as 0).
    pub p99: Option<Duration>,
    /// How often the controller found a breach and throttled, since start.
    pub throttled: u64,
    /// Partitions whose anti-entropy tree is built.
    pub trees_ready: u64,
}

impl BackgroundSample {
    /// The sample of a node's admission stats and anti-entropy status.
    pub fn of(
        admission: &dynamo_core::admission::AdmissionStats,
        aae: &dynamo_core::antientropy::AaeStatus,
    ) -> Self {
        BackgroundSample {
            slots: admission.slots as u64,
            p99: admission.p99,
            throttled: admission.throttled,
            trees_ready: u64::from(aae.trees_ready),
        }
    }
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
    handoff_partitions_received: Counter,
    handoff_keys_received: Counter,
    handoff_bytes_received: Counter,
    handoff_keys_sent: Counter,
    handoff_bytes_sent: Counter,
    handoff_partitions_dropped: Counter,
    aae_exchanges: Counter,
    aae_exchanges_failed: Counter,
    aae_keys_repaired: Counter,
    aae_bytes_sent: Counter,
    aae_bytes_received: Counter,
    tombstones_purged: Counter,
    hints_expired: Counter,
    background_waits: Counter,
    background_throttled: Counter,
}

/// The server's metrics registry.
pub struct ServerMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Histogram, LatencyHistogram>,
    core: Mutex<CoreCounters>,
    hints_pending: Gauge,
    peer_up: Family<PeerLabels, Gauge>,
    peer_phi: Family<PeerLabels, Gauge<f64, AtomicU64>>,
    transfers: Family<TransferLabels, Gauge>,
    background_slots: Gauge,
    background_p99: Gauge<f64, AtomicU64>,
    aae_trees_ready: Gauge,
    http_refused: HttpRefusals,
    process: crate::process::ProcessMetrics,
}

/// The exposition format of a scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsFormat {
    /// The Prometheus text format, version 0.0.4: the default.
    Prometheus,
    /// OpenMetrics 1.0 text, when the scraper's `Accept` asks for it.
    OpenMetrics,
}

/// `Content-Type` of OpenMetrics 1.0 text.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl MetricsFormat {
    /// The format an `Accept` header asks for: OpenMetrics when it names
    /// `application/openmetrics-text` (with a non-zero `q`), else 0.0.4.
    pub fn from_accept(accept: Option<&str>) -> Self {
        let wants_openmetrics = accept.into_iter().flat_map(|a| a.split(',')).any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let q = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            media.eq_ignore_ascii_case("application/openmetrics-text") && q > 0.0
        });
        if wants_openmetrics {
            MetricsFormat::OpenMetrics
        } else {
            MetricsFormat::Prometheus
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            MetricsFormat::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            MetricsFormat::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// The latency buckets: from 50 µs, doubling, up to the first bound past
/// `request_timeout` (so a request that runs into its deadline lands in
/// a bucket of its own, not only in `+Inf`); at most 40 buckets.
pub fn latency_buckets(request_timeout: Duration) -> Vec<f64> {
    let limit = request_timeout.as_secs_f64();
    let mut buckets = vec![0.000_05];
    while buckets.len() < 40 && buckets[buckets.len() - 1] <= limit {
        buckets.push(buckets[buckets.len() - 1] * 2.0);
    }
    buckets
}

/// Makes each label set's latency histogram, with the server's buckets.
#[derive(Clone, Debug)]
struct LatencyHistogram(std::sync::Arc<[f64]>);

impl MetricConstructor<Histogram> for LatencyHistogram {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

impl Default for ServerMetrics {
    fn default() -> Self {
        ServerMetrics::new()
    }
}

impl ServerMetrics {
    /// A registry with every metric registered under the `dynamo` prefix,
    /// with latency buckets for the default request timeout (5 s).
    pub fn new() -> Self {
        ServerMetrics::with_request_timeout(dynamo_core::config::Config::default().request_timeout())
    }

    /// A registry whose latency buckets reach past `request_timeout`.
    pub fn with_request_timeout(request_timeout: Duration) -> Self {
        let mut registry = Registry::with_prefix("dynamo");
        let buckets = latency_buckets(request_timeout);
        let requests = Family::new_with_constructor(LatencyHistogram(buckets.into()));
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
            handoff_partitions_received: Counter::default(),
            handoff_keys_received: Counter::default(),
            handoff_bytes_received: Counter::default(),
            handoff_keys_sent: Counter::default(),
            handoff_bytes_sent: Counter::default(),
            handoff_partitions_dropped: Counter::default(),
            aae_exchanges: Counter::default(),
            aae_exchanges_failed: Counter::default(),
            aae_keys_repaired: Counter::default(),
            aae_bytes_sent: Counter::default(),
            aae_bytes_received: Counter::default(),
            tombstones_purged: Counter::default(),
            hints_expired: Counter::default(),
            background_waits: Counter::default(),
            background_throttled: Counter::default(),
        };
        let http_refused = HttpRefusals::default();
        registry.register(
            "http_refused",
            "HTTP requests refused before routing: unauthenticated (401), forbidden (403), rate_limited (429)",
            http_refused.0.clone(),
        );
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
        for (name, help, counter) in [
            (
                "handoff_partitions_received",
                "Partitions this node finished copying during ownership handoff",
                &core.handoff_partitions_received,
            ),
            (
                "handoff_keys_received",
                "Keys this node received during ownership handoff",
                &core.handoff_keys_received,
            ),
            (
                "handoff_bytes_received",
                "Bytes of key states this node received during ownership handoff",
                &core.handoff_bytes_received,
            ),
            (
                "handoff_keys_sent",
                "Keys this node sent to nodes gaining its partitions",
                &core.handoff_keys_sent,
            ),
            (
                "handoff_bytes_sent",
                "Bytes of key states this node sent to nodes gaining its partitions",
                &core.handoff_bytes_sent,
            ),
            (
                "handoff_partitions_dropped",
                "Partitions this node deleted because it no longer replicates them",
                &core.handoff_partitions_dropped,
            ),
            ("aae_exchanges", "Anti-entropy exchanges this node completed as initiator", &core.aae_exchanges),
            (
                "aae_exchanges_failed",
                "Anti-entropy exchanges this node started that failed",
                &core.aae_exchanges_failed,
            ),
            (
                "aae_keys_repaired",
                "Keys whose state an anti-entropy repair changed on either side",
                &core.aae_keys_repaired,
            ),
            ("aae_bytes_sent", "Bytes of anti-entropy messages this node sent", &core.aae_bytes_sent),
            (
                "aae_bytes_received",
                "Bytes of anti-entropy messages this node received",
                &core.aae_bytes_received,
            ),
            (
                "tombstones_purged",
                "Tombstones purged: past the grace period and held by every replica",
                &core.tombstones_purged,
            ),
            (
                "hints_expired",
                "Hints dropped undelivered because they were older than the tombstone grace period",
                &core.hints_expired,
            ),
            (
                "background_waits",
                "Times background work (anti-entropy, hint delivery, handoff) waited for a slot",
                &core.background_waits,
            ),
            (
                "background_throttled",
                "Times admission control found the foreground p99 over its target and cut background slots",
                &core.background_throttled,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        let hints_pending = Gauge::default();
        registry.register("hints_pending", "Hints this node holds, not yet delivered", hints_pending.clone());
        let peer_up = Family::<PeerLabels, Gauge>::default();
        registry.register(
            "peer_up",
            "1 while this node's failure detector counts the peer up",
            peer_up.clone(),
        );
        let peer_phi = Family::<PeerLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "peer_phi",
            "The phi-accrual suspicion of the peer (8: convicted)",
            peer_phi.clone(),
        );
        let transfers = Family::<TransferLabels, Gauge>::default();
        registry.register(
            "handoff_transfers",
            "Partition copies of the current topology move, by state, as this node sees them",
            transfers.clone(),
        );
        for state in ["pending", "active", "done"] {
            let _ = transfers.get_or_create(&TransferLabels { state });
        }
        let background_slots = Gauge::default();
        registry.register(
            "background_slots",
            "Background operations admission control lets run at once now",
            background_slots.clone(),
        );
        let background_p99 = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "background_p99_seconds",
            "Foreground p99 latency over the admission window (0 while the window is empty)",
            background_p99.clone(),
        );
        let aae_trees_ready = Gauge::default();
        registry.register(
            "aae_trees_ready",
            "Partitions whose anti-entropy Merkle tree is built",
            aae_trees_ready.clone(),
        );
        let process = crate::process::ProcessMetrics::register(&mut registry);
        ServerMetrics {
            registry,
            requests,
            core: Mutex::new(core),
            hints_pending,
            peer_up,
            peer_phi,
            transfers,
            background_slots,
            background_p99,
            aae_trees_ready,
            http_refused,
            process,
        }
    }

    /// The counts of refused HTTP requests, for the listener to add to.
    pub fn http_refusals(&self) -> HttpRefusals {
        self.http_refused.clone()
    }

    /// Records one request's latency.
    pub fn observe(&self, op: &'static str, outcome: &'static str, elapsed: Duration) {
        self.requests.get_or_create(&RequestLabels { op, outcome }).observe(elapsed.as_secs_f64());
    }

    /// Renders the registry in `format`, after bringing the node's
    /// counters, pending hints, per-peer health, the current move's
    /// transfers and the state of background work up to date.
    pub fn render(
        &self,
        format: MetricsFormat,
        node: &MetricsSnapshot,
        hints_pending: u64,
        peers: &[PeerSample],
        transfers: TransferCounts,
        background: BackgroundSample,
    ) -> String {
        self.peer_up.clear();
        self.peer_phi.clear();
        for p in peers {
            self.peer_up.get_or_create(&PeerLabels { peer: p.peer }).set(i64::from(p.up));
            if let Some(phi) = p.phi {
                self.peer_phi.get_or_create(&PeerLabels { peer: p.peer }).set(phi);
            }
        }
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
            sync(&core.handoff_partitions_received, node.handoff_partitions_received);
            sync(&core.handoff_keys_received, node.handoff_keys_received);
            sync(&core.handoff_bytes_received, node.handoff_bytes_received);
            sync(&core.handoff_keys_sent, node.handoff_keys_sent);
            sync(&core.handoff_bytes_sent, node.handoff_bytes_sent);
            sync(&core.handoff_partitions_dropped, node.handoff_partitions_dropped);
            sync(&core.aae_exchanges, node.aae_exchanges);
            sync(&core.aae_exchanges_failed, node.aae_exchanges_failed);
            sync(&core.aae_keys_repaired, node.aae_keys_repaired);
            sync(&core.aae_bytes_sent, node.aae_bytes_sent);
            sync(&core.aae_bytes_received, node.aae_bytes_received);
            sync(&core.tombstones_purged, node.tombstones_purged);
            sync(&core.hints_expired, node.hints_expired);
            sync(&core.background_waits, node.background_waits);
            sync(&core.background_throttled, background.throttled);
        }
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.background_slots.set(gauge(background.slots));
        self.background_p99.set(background.p99.map_or(0.0, |d| d.as_secs_f64()));
        self.aae_trees_ready.set(gauge(background.trees_ready));
        for (state, count) in
            [("pending", transfers.pending), ("active", transfers.active), ("done", transfers.done)]
        {
            self.transfers
                .get_or_create(&TransferLabels { state })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        self.hints_pending.set(hints_pending as i64);
        self.process.update();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = match format {
            MetricsFormat::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
            MetricsFormat::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &self.registry),
        };
        out
    }
}

#[cfg(test)]
mod tests {
    use prometheus_parse::{Scrape, Value};

    use super::*;

    fn scraped(m: &ServerMetrics, snap: &MetricsSnapshot, pending: u64) -> Scrape {
        let text = m.render(
            MetricsFormat::Prometheus,
            snap,
            pending,
            &[PeerSample { peer: 2, up: true, phi: Some(0.5) }],
            TransferCounts { pending: 3, active: 2, done: 7 },
            BackgroundSample {
                slots: 2,
                p99: Some(Duration::from_millis(75)),
                throttled: 4,
                trees_ready: 86,
            },
        );
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
    }

    fn sample<'a>(scrape: &'a Scrape, name: &str) -> &'a Value {
        &scrape.samples.iter().find(|s| s.metric == name).unwrap_or_else(|| panic!("no {name}")).value
    }

    #[test]
    fn a_scrape_shows_the_process_cpu_time_and_resident_memory() {
        let m = ServerMetrics::new();
        let scrape = scraped(&m, &MetricsSnapshot::default(), 0);
        let Value::Counter(cpu) = sample(&scrape, "dynamo_process_cpu_seconds_total") else {
            panic!("the CPU time is a counter")
        };
        let Value::Gauge(rss) = sample(&scrape, "dynamo_process_resident_memory_bytes") else {
            panic!("resident memory is a gauge")
        };
        assert!(*cpu > 0.0 && *rss > 1_000_000.0, "cpu {cpu} s, rss {rss} B");
        let again = scraped(&m, &MetricsSnapshot::default(), 0);
        let Value::Counter(later) = sample(&again, "dynamo_process_cpu_seconds_total") else {
            unreachable!()
        };
        assert!(later >= cpu, "a counter never goes back: {cpu} then {later}");
    }

    #[test]
    fn render_shows_histograms_and_core_counters() {
        let m = ServerMetrics::new();
        m.observe("put", "ok", Duration::from_micros(300));
        let snap = MetricsSnapshot { read_repairs: 3, hints_delivered: 2, ..Default::default() };
        let none = BackgroundSample::default();
        let text = m.render(MetricsFormat::Prometheus, &snap, 5, &[], TransferCounts::default(), none);
        assert!(
            text.contains("dynamo_request_duration_seconds_count{op=\"put\",outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(text.contains("dynamo_read_repairs_total 3"), "{text}");
        assert!(text.contains("dynamo_hints_pending 5"), "{text}");
        let again = m.render(
            MetricsFormat::Prometheus,
            &MetricsSnapshot { read_repairs: 4, ..snap },
            0,
            &[],
            TransferCounts::default(),
            none,
        );
        assert!(again.contains("dynamo_read_repairs_total 4"), "{again}");
        let peers =
            [PeerSample { peer: 2, up: true, phi: Some(0.25) }, PeerSample { peer: 3, up: false, phi: None }];
        let text = m.render(MetricsFormat::Prometheus, &snap, 0, &peers, TransferCounts::default(), none);
        assert!(
            text.contains("dynamo_peer_up{peer=\"2\"} 1") && text.contains("dynamo_peer_up{peer=\"3\"} 0"),
            "{text}"
        );
        assert!(text.contains("dynamo_peer_phi{peer=\"2\"} 0.25"), "{text}");
        assert!(!text.contains("dynamo_peer_phi{peer=\"3\"}"), "no phi for a detector without one: {text}");
    }

    /// A 0.0.4 parser (types looked up by sample name, as Prometheus
    /// does) reads every counter as a counter, the gauge as a gauge and
    /// the latencies as histograms: OpenMetrics-style `# TYPE x counter`
    /// over `x_total` samples would read as untyped.
    #[test]
    fn the_default_answer_parses_as_prometheus_text_0_0_4() {
        let m = ServerMetrics::with_request_timeout(Duration::from_secs(5));
        m.observe("put", "ok", Duration::from_micros(300));
        m.observe("get", "error", Duration::from_secs(5));
        let snap = MetricsSnapshot {
            read_repairs: 3,
            quorum_failures: 1,
            handoff_keys_received: 1200,
            handoff_bytes_sent: 64_000,
            aae_keys_repaired: 5_000,
            aae_bytes_received: 1_000_000,
            tombstones_purged: 12,
            hints_expired: 1,
            background_waits: 9,
            ..Default::default()
        };
        let scrape = scraped(&m, &snap, 5);
        for counter in [
            "quorum_failures",
            "hints_stored",
            "hints_delivered",
            "read_repairs",
            "forwarded",
            "forwards_expired",
            "fallback_writes",
            "handoff_partitions_received",
            "handoff_keys_received",
            "handoff_bytes_received",
            "handoff_keys_sent",
            "handoff_bytes_sent",
            "handoff_partitions_dropped",
            "aae_exchanges",
            "aae_exchanges_failed",
            "aae_keys_repaired",
            "aae_bytes_sent",
            "aae_bytes_received",
            "tombstones_purged",
            "hints_expired",
            "background_waits",
            "background_throttled",
        ] {
            let value = sample(&scrape, &format!("dynamo_{counter}_total"));
            assert!(matches!(value, Value::Counter(_)), "dynamo_{counter}_total read as {value:?}");
        }
        assert_eq!(sample(&scrape, "dynamo_read_repairs_total"), &Value::Counter(3.0));
        assert_eq!(sample(&scrape, "dynamo_hints_pending"), &Value::Gauge(5.0));
        assert_eq!(sample(&scrape, "dynamo_handoff_keys_received_total"), &Value::Counter(1200.0));
        assert_eq!(sample(&scrape, "dynamo_handoff_bytes_sent_total"), &Value::Counter(64_000.0));
        assert_eq!(sample(&scrape, "dynamo_aae_keys_repaired_total"), &Value::Counter(5_000.0));
        assert_eq!(sample(&scrape, "dynamo_aae_bytes_received_total"), &Value::Counter(1e6));
        assert_eq!(sample(&scrape, "dynamo_tombstones_purged_total"), &Value::Counter(12.0));
        assert_eq!(sample(&scrape, "dynamo_hints_expired_total"), &Value::Counter(1.0));
        assert_eq!(sample(&scrape, "dynamo_background_waits_total"), &Value::Counter(9.0));
        assert_eq!(sample(&scrape, "dynamo_background_throttled_total"), &Value::Counter(4.0));
        assert_eq!(sample(&scrape, "dynamo_background_slots"), &Value::Gauge(2.0));
        assert_eq!(sample(&scrape, "dynamo_background_p99_seconds"), &Value::Gauge(0.075));
        assert_eq!(sample(&scrape, "dynamo_aae_trees_ready"), &Value::Gauge(86.0));
        let transfers: Vec<(String, f64)> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == "dynamo_handoff_transfers")
            .map(|s| match s.value {
                Value::Gauge(v) => (s.labels.get("state").unwrap_or_default().to_string(), v),
                ref other => panic!("dynamo_handoff_transfers read as {other:?}"),
            })
            .collect();
        assert_eq!(
            transfers.len(),
            3,
            "one gauge per state: {:?}",
            scrape.samples.iter().map(|s| &s.metric).collect::<Vec<_>>()
        );
        for (state, expected) in [("pending", 3.0), ("active", 2.0), ("done", 7.0)] {
            assert!(transfers.contains(&(state.to_string(), expected)), "{state}: {transfers:?}");
        }
        let histograms: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == "dynamo_request_duration_seconds")
            .filter_map(|s| match &s.value {
                Value::Histogram(b) => Some((s.labels.get("op").unwrap_or_default().to_string(), b.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(histograms.len(), 2, "{:?}", scrape.samples);
        // Nothing else reads as untyped but the histograms' _sum and _count.
        for s in &scrape.samples {
            if let Value::Untyped(_) = s.value {
                assert!(
                    s.metric.starts_with("dynamo_request_duration_seconds_"),
                    "{} read as untyped",
                    s.metric
                );
            }
        }
        // The request that ran into the 5 s deadline has a finite bucket.
        let (_, get) = histograms.iter().find(|(op, _)| op == "get").unwrap();
        let timeout_bucket = get.iter().find(|b| b.less_than >= 5.0).unwrap();
        assert!(timeout_bucket.less_than.is_finite(), "{get:?}");
        assert_eq!(timeout_bucket.count, 1.0);
        assert!(get.iter().filter(|b| b.less_than < 5.0).all(|b| b.count == 0.0), "{get:?}");
    }

    #[test]
    fn openmetrics_is_served_to_a_scraper_that_asks_for_it() {
        let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(MetricsFormat::from_accept(Some(accept)), MetricsFormat::OpenMetrics);
        assert_eq!(MetricsFormat::from_accept(Some("text/plain")), MetricsFormat::Prometheus);
        assert_eq!(MetricsFormat::from_accept(None), MetricsFormat::Prometheus);
        assert_eq!(
            MetricsFormat::from_accept(Some("application/openmetrics-text; q=0, text/plain")),
            MetricsFormat::Prometheus
        );
        let m = ServerMetrics::new();
        let text = m.render(
            MetricsFormat::OpenMetrics,
            &MetricsSnapshot::default(),
            0,
            &[],
            TransferCounts::default(),
            BackgroundSample::default(),
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE dynamo_read_repairs counter\ndynamo_read_repairs_total 0"), "{text}");
        assert!(MetricsFormat::OpenMetrics.content_type().starts_with("application/openmetrics-text"));
    }

    #[test]
    fn latency_buckets_reach_past_the_request_timeout() {
        for timeout_ms in [1, 1_000, 5_000, 60_000, u64::MAX] {
            let buckets = latency_buckets(Duration::from_millis(timeout_ms));
            let last = buckets[buckets.len() - 1];
            assert!(last > timeout_ms as f64 / 1000.0 || buckets.len() == 40, "{timeout_ms}: {buckets:?}");
        }
        let five = latency_buckets(Duration::from_secs(5));
        assert!(five[five.len() - 1] > 5.0 && five[five.len() - 2] <= 5.0, "{five:?}");
    }
}
