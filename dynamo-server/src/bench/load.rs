//! The closed loop: workers that each keep one request in flight against
//! one node until the window closes, the preload that writes every key
//! once, and the shared state they read (targets, values, the window, the
//! stop flag, per-worker progress counters).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::client::{Link, Target};
use super::stats::{classify, Outcome, Stats};
use super::workload::{key_name, stream_seed, Op, OpStream, Values, Workload};

/// Pause after a transport error, so that a dead node is not hammered.
const TRANSPORT_BACKOFF: Duration = Duration::from_millis(10);

/// Set by Ctrl-C: workers stop issuing requests.
#[derive(Debug, Default)]
pub struct Stop {
    flag: AtomicBool,
    pub(crate) at: OnceLock<Instant>,
}

impl Stop {
    /// Stops the run: workers issue no further request.
    pub fn trigger(&self) {
        let _ = self.at.set(Instant::now());
        self.flag.store(true, Ordering::Relaxed);
    }

    /// Whether [`Stop::trigger`] was called.
    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

/// A worker's progress, alone on its cache line.
#[repr(align(64))]
#[derive(Debug, Default)]
pub(crate) struct Counter {
    pub(crate) warmup_ops: AtomicU64,
    pub(crate) ops: AtomicU64,
    pub(crate) errors: AtomicU64,
}

/// What every worker shares.
#[derive(Debug)]
pub(crate) struct Common {
    pub(crate) targets: Vec<Target>,
    pub(crate) values: Values,
    pub(crate) workload: Workload,
    pub(crate) keys: u64,
    pub(crate) seed: u64,
    pub(crate) concurrency: usize,
    pub(crate) stop: Arc<Stop>,
}

/// The measurement window and the progress counters.
#[derive(Debug)]
pub(crate) struct Window {
    pub(crate) measure_start: Instant,
    pub(crate) deadline: Instant,
    pub(crate) counters: Vec<Counter>,
}

/// Worker `id`: operations from its own stream against node
/// `id mod nodes` until the deadline or a stop; records those that start
/// inside the window.
pub(crate) async fn worker(common: Arc<Common>, window: Arc<Window>, id: usize) -> anyhow::Result<Stats> {
    let target = &common.targets[id % common.targets.len()];
    let counter = &window.counters[id];
    let mut ops = OpStream::new(common.seed, id, common.workload, common.keys);
    let mut value_rng = SmallRng::seed_from_u64(stream_seed(!common.seed, id));
    let mut stats = Stats::new()?;
    let mut scratch = String::with_capacity(target.base.len() + 20);
    let mut link = Link::default();
    loop {
        let start = Instant::now();
        if start >= window.deadline || common.stop.is_set() {
            break;
        }
        let (op, key) = ops.next_op();
        let value = (op == Op::Write).then(|| common.values.pick(&mut value_rng));
        let outcome = match link.send(target, target.kv_request(key, value, &mut scratch)).await {
            Ok(status) => classify(op, status),
            Err(kind) => Outcome::Error(kind),
        };
        if start >= window.measure_start {
            let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
            stats.record(op, outcome, micros);
            counter.ops.fetch_add(1, Ordering::Relaxed);
            if matches!(outcome, Outcome::Error(_)) {
                counter.errors.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            counter.warmup_ops.fetch_add(1, Ordering::Relaxed);
        }
        if matches!(outcome, Outcome::Error(kind) if kind.is_transport()) {
            tokio::time::sleep(TRANSPORT_BACKOFF).await;
        }
    }
    Ok(stats)
}

/// What preloading refused, by status.
pub(crate) type Refusals = BTreeMap<u16, u64>;

/// Preload worker `id`: writes keys `id`, `id + concurrency`, ... once.
///
/// # Errors
/// A write that got no answer (a refusal is counted, not an error).
pub(crate) async fn preload_worker(
    common: Arc<Common>,
    id: usize,
    done: Arc<AtomicU64>,
) -> anyhow::Result<Refusals> {
    let target = &common.targets[id % common.targets.len()];
    let mut rng = SmallRng::seed_from_u64(stream_seed(common.seed.rotate_left(17), id));
    let mut scratch = String::new();
    let mut refused = Refusals::new();
    let mut link = Link::default();
    for key in (id as u64..common.keys).step_by(common.concurrency) {
        if common.stop.is_set() {
            break;
        }
        let req = target.kv_request(key, Some(common.values.pick(&mut rng)), &mut scratch);
        let status = link
            .send(target, req)
            .await
            .map_err(|kind| anyhow::anyhow!("{kind}"))
            .with_context(|| format!("preload: PUT {} to {}", key_name(key), target.base))?;
        if !status.is_success() {
            *refused.entry(status.as_u16()).or_insert(0) += 1;
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(refused)
}
