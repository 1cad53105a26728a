//! This process's own resource use, as Prometheus' process collectors
//! report it: CPU seconds (user plus system, `getrusage`) and resident
//! memory (`/proc/self/status`). Exported on `/metrics` and read by
//! `bench` to put server CPU per operation next to throughput.

use std::time::Duration;

use std::sync::atomic::AtomicU64;

use nix::sys::resource::{getrusage, UsageWho};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// CPU time this process has used so far, user plus system (every thread).
///
/// `None` where the OS does not tell (the call fails).
pub fn cpu_time() -> Option<Duration> {
    let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let micros = |t: nix::sys::time::TimeVal| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec()).unwrap_or(0)
    };
    Some(Duration::from_micros(micros(usage.user_time()) + micros(usage.system_time())))
}

/// Resident set size in bytes, from `VmRSS` in `/proc/self/status`.
///
/// `None` off Linux or when the file cannot be read.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib.saturating_mul(1024))
}

/// This process's CPU time and resident memory as Prometheus metrics:
/// `process_cpu_seconds_total` and `process_resident_memory_bytes`, under
/// the registry's prefix.
pub(crate) struct ProcessMetrics {
    cpu_seconds: Counter<f64, AtomicU64>,
    resident_bytes: Gauge,
}

impl ProcessMetrics {
    /// Registers both in `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let cpu_seconds = Counter::<f64, AtomicU64>::default();
        registry.register(
            "process_cpu_seconds",
            "CPU time this process used, user plus system, in seconds",
            cpu_seconds.clone(),
        );
        let resident_bytes = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of this process",
            resident_bytes.clone(),
        );
        ProcessMetrics { cpu_seconds, resident_bytes }
    }

    /// Brings both up to date; what the OS does not tell stays as it was.
    pub(crate) fn update(&self) {
        if let Some(cpu) = crate::process::cpu_time() {
            let delta = cpu.as_secs_f64() - self.cpu_seconds.get();
            if delta > 0.0 {
                self.cpu_seconds.inc_by(delta);
            }
        }
        if let Some(rss) = crate::process::resident_bytes() {
            self.resident_bytes.set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work_done() {
        let before = cpu_time().expect("getrusage works here");
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = cpu_time().unwrap();
        assert!(after > before, "{before:?} then {after:?}");
    }

    #[test]
    fn resident_memory_is_reported_and_grows_with_touched_pages() {
        let before = resident_bytes().expect("Linux has /proc/self/statm");
        let buf = vec![1u8; 64 << 20];
        let after = resident_bytes().unwrap();
        assert!(std::hint::black_box(&buf).iter().step_by(4096).all(|b| *b == 1));
        assert!(after >= before + (32 << 20), "{before} then {after}");
    }
}
