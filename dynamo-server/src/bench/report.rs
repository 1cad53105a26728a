//! What a run prints: the summary of one target set (throughput, latency
//! percentiles, errors by kind, CPU per operation of the servers and of
//! the generator) for a person or as JSON, and the cluster's figures as
//! ratios to the baseline's from the same run.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::stats::{ErrorKind, Latency, Stats};
use super::workload::{Op, Workload};
use super::BenchArgs;

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// CPU time spent during the measurement window, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuUse {
    /// By the load generator itself (every thread of this process).
    pub bench: f64,
    /// By the servers, summed over the nodes' `/metrics`; `None` when a
    /// node does not report its CPU time.
    pub servers: Option<f64>,
}

/// The outcome of a run against one set of nodes, ready to print.
#[derive(Debug, Clone)]
pub struct Summary {
    /// What the nodes are: `cluster` or `baseline`.
    pub label: &'static str,
    /// The operation mix.
    pub workload: Workload,
    /// The nodes.
    pub urls: Vec<String>,
    /// Workers.
    pub concurrency: usize,
    /// Distinct keys.
    pub keys: u64,
    /// Bytes per written value.
    pub value_size: usize,
    /// Seconds of warm-up.
    pub warmup: u64,
    /// Length of the measurement window.
    pub measured: Duration,
    /// Whether Ctrl-C cut the window short.
    pub interrupted: bool,
    /// What was measured.
    pub stats: Stats,
    /// CPU spent in the window, when it could be read.
    pub cpu: Option<CpuUse>,
    all: Histogram<u64>,
}

impl Summary {
    /// A summary of `stats` over a window of `measured`.
    ///
    /// # Errors
    /// The read and write histograms cannot be merged.
    pub fn new(
        label: &'static str,
        args: &BenchArgs,
        urls: Vec<String>,
        measured: Duration,
        stats: Stats,
    ) -> anyhow::Result<Self> {
        Ok(Summary {
            label,
            workload: args.workload,
            urls,
            concurrency: args.concurrency,
            keys: args.keys,
            value_size: args.value_size,
            warmup: args.warmup,
            measured,
            interrupted: false,
            all: stats.all()?,
            stats,
            cpu: None,
        })
    }

    /// Completed operations per second of the window.
    pub fn throughput(&self) -> f64 {
        let secs = self.measured.as_secs_f64();
        if secs > 0.0 {
            self.stats.ops() as f64 / secs
        } else {
            0.0
        }
    }

    /// Percentiles of every answered operation.
    pub fn latency(&self) -> Option<Latency> {
        Latency::of(&self.all)
    }

    /// Server CPU per completed operation, in microseconds.
    pub fn server_cpu_per_op_us(&self) -> Option<f64> {
        let servers = self.cpu?.servers?;
        self.per_op_us(servers)
    }

    /// The generator's own CPU per completed operation, in microseconds.
    pub fn bench_cpu_per_op_us(&self) -> Option<f64> {
        self.per_op_us(self.cpu?.bench)
    }

    /// Operations per server CPU-second.
    pub fn ops_per_server_cpu_second(&self) -> Option<f64> {
        self.server_cpu_per_op_us().filter(|us| *us > 0.0).map(|us| 1e6 / us)
    }

    fn per_op_us(&self, seconds: f64) -> Option<f64> {
        let ops = self.stats.ops();
        (ops > 0).then(|| seconds * 1e6 / ops as f64)
    }

    fn rows(&self) -> [(&'static str, Option<Latency>); 3] {
        [
            ("reads", Latency::of(&self.stats.reads)),
            ("writes", Latency::of(&self.stats.writes)),
            ("all", Latency::of(&self.all)),
        ]
    }

    fn conflicts(&self) -> u64 {
        self.stats.errors.get(&(Op::Write, ErrorKind::Status(409))).copied().unwrap_or(0)
    }

    /// The summary for a person, several lines.
    pub fn render(&self) -> String {
        let s = &self.stats;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "bench ({}): workload {} ({}) on {} node{}: {}",
            self.label,
            self.workload.name(),
            self.workload.describe(),
            self.urls.len(),
            if self.urls.len() == 1 { "" } else { "s" },
            self.urls.join(", ")
        );
        let _ = writeln!(
            out,
            "  concurrency {}, keys {}, value size {} B, warm-up {} s, measured {:.2} s{}",
            self.concurrency,
            self.keys,
            self.value_size,
            self.warmup,
            self.measured.as_secs_f64(),
            if self.interrupted { " (interrupted)" } else { "" }
        );
        let _ = writeln!(out, "  ops {}, throughput {:.1} ops/s", s.ops(), self.throughput());
        let _ = writeln!(
            out,
            "  reads: {} found, {} not found; writes: {} ok; errors: {}",
            s.read_ok,
            s.read_not_found,
            s.write_ok,
            s.error_count()
        );
        match (self.server_cpu_per_op_us(), self.bench_cpu_per_op_us()) {
            (Some(server), Some(bench)) => {
                let _ = writeln!(
                    out,
                    "  cpu per op: servers {server:.1} us ({:.0} ops per server CPU-second), bench {bench:.1} us",
                    1e6 / server.max(1e-9)
                );
                if bench > server {
                    let _ = writeln!(
                        out,
                        "  warning: the generator spent more CPU per operation than the servers: \
                         its figures understate what they can do"
                    );
                }
            }
            (None, Some(bench)) => {
                let _ = writeln!(out, "  cpu per op: servers not reported, bench {bench:.1} us");
            }
            _ => {}
        }
        let _ = writeln!(
            out,
            "  {:<12} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "latency ms", "count", "p50", "p99", "p999", "max"
        );
        for (name, lat) in self.rows() {
            match lat {
                Some(l) => {
                    let _ = writeln!(
                        out,
                        "  {:<12} {:>10} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
                        name,
                        l.count,
                        ms(l.p50),
                        ms(l.p99),
                        ms(l.p999),
                        ms(l.max)
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "  {:<12} {:>10} {:>10} {:>10} {:>10} {:>10}",
                        name, 0, "-", "-", "-", "-"
                    );
                }
            }
        }
        if s.errors.is_empty() {
            let _ = writeln!(out, "  errors by kind: none");
        } else {
            let _ = writeln!(out, "  errors by kind:");
            for ((op, kind), n) in &s.errors {
                let _ = writeln!(out, "    {:<6} {:<28} {}", op.name(), kind, n);
            }
        }
        let conflicts = self.conflicts();
        if conflicts > 0 {
            let _ = writeln!(
                out,
                "  note: {conflicts} writes were refused with 409: blind writes pile up siblings to the limit \
                 under keep-siblings; run the cluster with --reconciler last-write-wins"
            );
        }
        out
    }

    /// The summary as one JSON object.
    pub fn to_json(&self) -> Value {
        let s = &self.stats;
        let lat = |l: Option<Latency>| match l {
            Some(l) => json!({
                "count": l.count,
                "p50_ms": ms(l.p50),
                "p99_ms": ms(l.p99),
                "p999_ms": ms(l.p999),
                "max_ms": ms(l.max),
            }),
            None => json!({ "count": 0, "p50_ms": null, "p99_ms": null, "p999_ms": null, "max_ms": null }),
        };
        let [(_, reads), (_, writes), (_, all)] = self.rows();
        let by_kind: serde_json::Map<String, Value> =
            s.errors.iter().map(|((op, kind), n)| (format!("{} {}", op.name(), kind), json!(n))).collect();
        json!({
            "label": self.label,
            "workload": self.workload.name(),
            "read_fraction": f64::from(self.workload.read_per_mille()) / 1000.0,
            "nodes": self.urls,
            "concurrency": self.concurrency,
            "keys": self.keys,
            "value_size": self.value_size,
            "warmup_s": self.warmup,
            "duration_s": self.measured.as_secs_f64(),
            "interrupted": self.interrupted,
            "ops": s.ops(),
            "throughput_ops_s": self.throughput(),
            "read_found": s.read_ok,
            "read_not_found": s.read_not_found,
            "write_ok": s.write_ok,
            "reads": lat(reads),
            "writes": lat(writes),
            "all": lat(all),
            "errors": s.error_count(),
            "errors_by_kind": by_kind,
            "server_cpu_per_op_us": self.server_cpu_per_op_us(),
            "bench_cpu_per_op_us": self.bench_cpu_per_op_us(),
            "ops_per_server_cpu_s": self.ops_per_server_cpu_second(),
        })
    }
}

/// The cluster's figures over the baseline's, from the same run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratios {
    /// Throughput, cluster over baseline (below 1: slower).
    pub throughput: f64,
    /// Median latency, cluster over baseline (above 1: slower).
    pub p50: Option<f64>,
    /// 99th percentile latency, cluster over baseline.
    pub p99: Option<f64>,
    /// Server CPU per operation, cluster (all nodes) over baseline.
    pub server_cpu_per_op: Option<f64>,
}

impl Ratios {
    /// `cluster` over `baseline`.
    pub fn of(cluster: &Summary, baseline: &Summary) -> Self {
        let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
        let lat = |f: fn(&Latency) -> u64| {
            let (a, b) = (cluster.latency()?, baseline.latency()?);
            ratio(f(&a) as f64, f(&b) as f64)
        };
        Ratios {
            throughput: ratio(cluster.throughput(), baseline.throughput()).unwrap_or(0.0),
            p50: lat(|l| l.p50),
            p99: lat(|l| l.p99),
            server_cpu_per_op: cluster
                .server_cpu_per_op_us()
                .zip(baseline.server_cpu_per_op_us())
                .and_then(|(a, b)| ratio(a, b)),
        }
    }

    /// The comparison for a person, a few lines.
    pub fn render(&self) -> String {
        let x = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}x"));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "versus the baseline (one unreplicated in-memory key-value process behind the same HTTP stack, \
             same run, same load):"
        );
        let _ = writeln!(
            out,
            "  throughput {}, p50 {}, p99 {}, server CPU per op {}",
            x(Some(self.throughput)),
            x(self.p50),
            x(self.p99),
            x(self.server_cpu_per_op)
        );
        out
    }

    /// The comparison as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "throughput": self.throughput,
            "p50": self.p50,
            "p99": self.p99,
            "server_cpu_per_op": self.server_cpu_per_op,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::stats::Outcome;
    use super::super::tests::args;
    use super::*;

    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= expected * 0.002
    }

    fn sample() -> Stats {
        let mut s = Stats::new().unwrap();
        for _ in 0..990 {
            s.record(Op::Read, Outcome::Ok, 1_000);
        }
        for _ in 0..10 {
            s.record(Op::Read, Outcome::NotFound, 100_000);
        }
        for _ in 0..1000 {
            s.record(Op::Write, Outcome::Ok, 2_000);
        }
        s.record(Op::Write, Outcome::Error(ErrorKind::Status(409)), 5);
        s.record(Op::Write, Outcome::Error(ErrorKind::Status(409)), 5);
        s.record(Op::Read, Outcome::Error(ErrorKind::Timeout), 10_000_000);
        s
    }

    #[test]
    fn the_summary_shows_counts_latencies_errors_and_cpu() {
        let mut args = args(vec!["http://127.0.0.1:8001".into()]);
        args.concurrency = 2;
        let mut summary = Summary::new(
            "cluster",
            &args,
            vec!["http://127.0.0.1:8001".into()],
            Duration::from_secs(2),
            sample(),
        )
        .unwrap();
        summary.cpu = Some(CpuUse { bench: 0.2003, servers: Some(2.003) });
        let all = summary.latency().unwrap();
        assert_eq!(all.count, 2000);
        assert_eq!(all.p50, 2_000, "990 reads at 1 ms, 10 at 100 ms, 1000 writes at 2 ms");
        assert!(close(all.p99 as f64, 2_000.0), "{all:?}");
        assert!((summary.throughput() - 1001.5).abs() < 1e-9);
        assert!((summary.server_cpu_per_op_us().unwrap() - 1000.0).abs() < 1e-6);
        assert!((summary.bench_cpu_per_op_us().unwrap() - 100.0).abs() < 1e-6);

        let text = summary.render();
        assert!(
            text.contains(
                "bench (cluster): workload a (50% reads, 50% writes) on 1 node: http://127.0.0.1:8001"
            ),
            "{text}"
        );
        assert!(text.contains("ops 2003, throughput 1001.5 ops/s"), "{text}");
        assert!(text.contains("990 found, 10 not found"), "{text}");
        assert!(
            text.contains("cpu per op: servers 1000.0 us (1000 ops per server CPU-second), bench 100.0 us")
        );
        assert!(!text.contains("warning"), "{text}");
        let read_row = text.lines().find(|l| l.trim_start().starts_with("reads ")).unwrap();
        assert_eq!(read_row.split_whitespace().collect::<Vec<_>>()[..4], ["reads", "1000", "1.000", "1.000"]);
        assert!(text.contains("409 Conflict"), "{text}");
        assert!(text.contains("note: 2 writes were refused with 409"), "{text}");
        assert!(text
            .lines()
            .any(|l| l.contains("read") && l.contains("timeout") && l.trim_end().ends_with('1')));

        let j = summary.to_json();
        assert_eq!(j["ops"], 2003);
        assert_eq!(j["errors"], 3);
        assert_eq!(j["errors_by_kind"]["write 409 Conflict"], 2);
        assert_eq!(j["errors_by_kind"]["read timeout"], 1);
        assert_eq!(j["reads"]["p50_ms"], 1.0);
        assert_eq!(j["writes"]["count"], 1000);
        assert_eq!(j["read_fraction"], 0.5);
        assert!((j["ops_per_server_cpu_s"].as_f64().unwrap() - 1000.0).abs() < 1e-6);
        let line = j.to_string();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), j);

        summary.cpu = Some(CpuUse { bench: 3.0, servers: Some(2.0) });
        assert!(summary.render().contains("warning: the generator spent more CPU"));
        summary.cpu = Some(CpuUse { bench: 3.0, servers: None });
        assert!(summary.render().contains("servers not reported"));
        assert!(summary.to_json()["server_cpu_per_op_us"].is_null());
    }

    #[test]
    fn an_empty_operation_type_prints_dashes() {
        let mut s = Stats::new().unwrap();
        s.record(Op::Read, Outcome::Ok, 500);
        let mut a = args(vec!["http://127.0.0.1:8001".into()]);
        a.workload = Workload::C;
        let summary = Summary::new("cluster", &a, vec!["x".into()], Duration::from_secs(1), s).unwrap();
        let text = summary.render();
        let writes = text.lines().find(|l| l.trim_start().starts_with("writes ")).unwrap();
        assert_eq!(writes.split_whitespace().collect::<Vec<_>>(), ["writes", "0", "-", "-", "-", "-"]);
        assert!(summary.to_json()["writes"]["p99_ms"].is_null());
        assert!(text.contains("errors by kind: none"));
        assert!(!text.contains("cpu per op"), "no CPU figures were taken");
    }

    #[test]
    fn ratios_put_the_cluster_over_the_baseline() {
        let a = args(vec!["x".into()]);
        let mut slow = Stats::new().unwrap();
        let mut fast = Stats::new().unwrap();
        for _ in 0..100 {
            slow.record(Op::Read, Outcome::Ok, 4_000);
        }
        for _ in 0..400 {
            fast.record(Op::Read, Outcome::Ok, 1_000);
        }
        let mut cluster =
            Summary::new("cluster", &a, vec!["x".into()], Duration::from_secs(1), slow).unwrap();
        let mut baseline =
            Summary::new("baseline", &a, vec!["y".into()], Duration::from_secs(1), fast).unwrap();
        cluster.cpu = Some(CpuUse { bench: 0.01, servers: Some(0.1) });
        baseline.cpu = Some(CpuUse { bench: 0.04, servers: Some(0.04) });
        let r = Ratios::of(&cluster, &baseline);
        assert!((r.throughput - 0.25).abs() < 1e-9);
        assert!((r.p50.unwrap() - 4.0).abs() < 0.01);
        assert!((r.server_cpu_per_op.unwrap() - 10.0).abs() < 1e-9, "1000 us against 100 us");
        let text = r.render();
        assert!(text.contains("throughput 0.25x, p50 4.00x, p99 4.00x, server CPU per op 10.00x"), "{text}");
        baseline.cpu = None;
        assert!(Ratios::of(&cluster, &baseline).render().contains("server CPU per op -"));
    }
}
