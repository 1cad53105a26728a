//! What a run measured: how each operation ended, latencies of the
//! answered ones in HDR histograms (microseconds), failures by kind.

use std::collections::BTreeMap;
use std::fmt;

use hdrhistogram::Histogram;
use hyper::StatusCode;

use super::workload::Op;

/// Highest latency a histogram tells apart (larger ones saturate).
const MAX_LATENCY_US: u64 = 60_000_000;
/// Significant figures of the histograms.
const SIGFIG: u8 = 3;

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// An answer with this unexpected status code.
    Status(u16),
    /// No answer within the request timeout.
    Timeout,
    /// No connection.
    Connect,
    /// Another transport failure (reset connection, bad body, ...).
    Transport,
}

impl ErrorKind {
    /// Whether no answer came (as opposed to an unexpected one).
    pub fn is_transport(self) -> bool {
        !matches!(self, ErrorKind::Status(_))
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that widths and alignment apply.
        match self {
            ErrorKind::Status(code) => {
                match StatusCode::from_u16(*code).ok().and_then(|s| s.canonical_reason()) {
                    Some(reason) => f.pad(&format!("{code} {reason}")),
                    None => f.pad(&code.to_string()),
                }
            }
            ErrorKind::Timeout => f.pad("timeout"),
            ErrorKind::Connect => f.pad("connect error"),
            ErrorKind::Transport => f.pad("transport error"),
        }
    }
}

/// How one operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A read found a value (200) or siblings (300); a write was stored.
    Ok,
    /// A read of a key that holds nothing (404).
    NotFound,
    /// Anything else.
    Error(ErrorKind),
}

/// The outcome of an answer with `status` to `op`.
pub fn classify(op: Op, status: StatusCode) -> Outcome {
    match op {
        Op::Read => match status {
            StatusCode::OK | StatusCode::MULTIPLE_CHOICES => Outcome::Ok,
            StatusCode::NOT_FOUND => Outcome::NotFound,
            other => Outcome::Error(ErrorKind::Status(other.as_u16())),
        },
        Op::Write if status.is_success() => Outcome::Ok,
        Op::Write => Outcome::Error(ErrorKind::Status(status.as_u16())),
    }
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGFIG)?)
}

/// What workers measured: latencies of answered operations and counts.
#[derive(Debug, Clone)]
pub struct Stats {
    pub(crate) reads: Histogram<u64>,
    pub(crate) writes: Histogram<u64>,
    pub(crate) read_ok: u64,
    pub(crate) read_not_found: u64,
    pub(crate) write_ok: u64,
    pub(crate) errors: BTreeMap<(Op, ErrorKind), u64>,
}

impl Stats {
    /// Empty statistics.
    ///
    /// # Errors
    /// The histograms cannot be made (not with these constant bounds).
    pub fn new() -> anyhow::Result<Self> {
        Ok(Stats {
            reads: new_histogram()?,
            writes: new_histogram()?,
            read_ok: 0,
            read_not_found: 0,
            write_ok: 0,
            errors: BTreeMap::new(),
        })
    }

    /// Counts one operation that took `micros`.
    pub fn record(&mut self, op: Op, outcome: Outcome, micros: u64) {
        match (op, outcome) {
            (_, Outcome::Error(kind)) => *self.errors.entry((op, kind)).or_insert(0) += 1,
            (Op::Read, ok) => {
                if ok == Outcome::NotFound {
                    self.read_not_found += 1;
                } else {
                    self.read_ok += 1;
                }
                self.reads.saturating_record(micros);
            }
            (Op::Write, _) => {
                self.write_ok += 1;
                self.writes.saturating_record(micros);
            }
        }
    }

    /// Adds another worker's statistics.
    ///
    /// # Errors
    /// Histograms of other bounds (not when both come from [`Stats::new`]).
    pub fn merge(&mut self, other: &Stats) -> anyhow::Result<()> {
        self.reads.add(&other.reads)?;
        self.writes.add(&other.writes)?;
        self.read_ok += other.read_ok;
        self.read_not_found += other.read_not_found;
        self.write_ok += other.write_ok;
        for (kind, n) in &other.errors {
            *self.errors.entry(*kind).or_insert(0) += n;
        }
        Ok(())
    }

    /// Failed operations.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Every completed operation, failed ones included.
    pub fn ops(&self) -> u64 {
        self.read_ok + self.read_not_found + self.write_ok + self.error_count()
    }

    /// Reads and writes in one histogram.
    ///
    /// # Errors
    /// As [`Stats::merge`].
    pub fn all(&self) -> anyhow::Result<Histogram<u64>> {
        let mut all = self.reads.clone();
        all.add(&self.writes)?;
        Ok(all)
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    /// Recorded operations.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

impl Latency {
    /// `None` for an empty histogram.
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Latency {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= expected * 0.002
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(classify(Op::Read, StatusCode::OK), Outcome::Ok);
        assert_eq!(classify(Op::Read, StatusCode::MULTIPLE_CHOICES), Outcome::Ok);
        assert_eq!(classify(Op::Read, StatusCode::NOT_FOUND), Outcome::NotFound);
        assert_eq!(
            classify(Op::Read, StatusCode::SERVICE_UNAVAILABLE),
            Outcome::Error(ErrorKind::Status(503))
        );
        assert_eq!(classify(Op::Write, StatusCode::NO_CONTENT), Outcome::Ok);
        assert_eq!(classify(Op::Write, StatusCode::CONFLICT), Outcome::Error(ErrorKind::Status(409)));
        assert_eq!(classify(Op::Write, StatusCode::NOT_FOUND), Outcome::Error(ErrorKind::Status(404)));
        assert_eq!(ErrorKind::Status(409).to_string(), "409 Conflict");
        assert_eq!(ErrorKind::Timeout.to_string(), "timeout");
        assert_eq!(format!("[{:<14}]", ErrorKind::Status(503)), "[503 Service Unavailable]");
        assert_eq!(format!("[{:<14}]", ErrorKind::Status(409)), "[409 Conflict  ]");
        assert!(ErrorKind::Connect.is_transport() && !ErrorKind::Status(500).is_transport());
    }

    #[test]
    fn stats_merge_with_errors_counted_not_timed() {
        let mut a = Stats::new().unwrap();
        let mut b = Stats::new().unwrap();
        for _ in 0..990 {
            a.record(Op::Read, Outcome::Ok, 1_000);
        }
        for _ in 0..10 {
            a.record(Op::Read, Outcome::NotFound, 100_000);
        }
        for _ in 0..1000 {
            b.record(Op::Write, Outcome::Ok, 2_000);
        }
        b.record(Op::Write, Outcome::Error(ErrorKind::Status(409)), 5);
        b.record(Op::Read, Outcome::Error(ErrorKind::Timeout), 10_000_000);
        let mut merged = Stats::new().unwrap();
        merged.merge(&a).unwrap();
        merged.merge(&b).unwrap();
        assert_eq!((merged.read_ok, merged.read_not_found, merged.write_ok), (990, 10, 1000));
        assert_eq!(merged.error_count(), 2);
        assert_eq!(merged.ops(), 2002);
        assert_eq!(merged.reads.len(), 1000, "errors are not timed");

        let reads = Latency::of(&merged.reads).unwrap();
        assert_eq!(reads.p50, 1_000);
        assert!(close(reads.p999 as f64, 100_000.0) && close(reads.max as f64, 100_000.0), "{reads:?}");
        assert_eq!(reads.p99, 1_000, "99% of reads took 1 ms");
        assert!(Latency::of(&Stats::new().unwrap().writes).is_none());
        let all = Latency::of(&merged.all().unwrap()).unwrap();
        assert_eq!(all.count, 2000);
        assert_eq!(all.p50, 2_000, "990 reads at 1 ms, 10 at 100 ms, 1000 writes at 2 ms");
    }
}
