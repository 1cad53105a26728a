//! Deterministic simulation with seed sweeps, after FoundationDB and
//! turmoil: one `u64` seed draws a whole run, a failing seed replays it
//! bit for bit, and a sweep runs thousands of seeds.
//!
//! From its seed a run draws ([`SimPlan`]) a cluster (3 to 7 nodes, N/R/W
//! with R + W > N and sometimes not, sloppy or strict quorums, a
//! reconciler, durable or buffered stores, the sibling limit), a workload
//! size, and a fault schedule over simulated time ([`FaultKind`]): message
//! drops, delays (past the senders' deadlines too), duplicates and the
//! reordering random delays cause; both-way and one-way partitions; node
//! crashes and restarts with the store kept (losing unflushed writes with
//! buffered stores) or wiped; frozen nodes (SIGSTOP) that resume late;
//! clocks that jump or drift per node; failing or slow store writes and
//! transport errors after a request was sent (core's fault points); with
//! gossip, topology changes committed mid-run (a join, a leave, or the
//! removal of a node dead for good), often with a crash while the data
//! moves. Every run has Merkle-tree anti-entropy on, its period drawn
//! (300 ms to 3 s of simulated time) and a ring of 8 to 32 partitions;
//! some runs turn read repair off, and some draw a tombstone grace (12 or
//! 16 s) short enough that purges happen before the checks. The
//! clients of the [`Workload`] run concurrently with the schedule. Then the
//! faults stop, the cluster heals, and the checks run:
//!
//! - with read repair off, before any read, every key's replicas converge
//!   within 20 anti-entropy rounds (simulated) by the nodes' own timers;
//! - with a short tombstone grace, every key deleted on all its replicas
//!   is purged from each of them (within the grace, plus how far the
//!   schedule's clock jumps may have pushed timestamps into the future,
//!   plus 20 rounds), and
//!   the checks below run after the purge;
//! - no acknowledged set-union add is lost;
//! - no acknowledged delete is undone (a value the deleting read saw never
//!   reads back);
//! - every key converges to one state on all its replicas, and with gossip
//!   every node's view of the members and the ring to one state, and every
//!   committed topology change settles (its data where the ring says);
//! - a write refused for the sibling bound never takes effect;
//! - no panic, and no error log unless store failures were injected;
//! - the application's own [`Invariant`]s.
//!
//! Everything runs on one thread, on tokio's paused clock, with every
//! random choice drawn from the seed, so a run is a function of its seed.
//! A failure prints the seed, the check, the key, that key's history and
//! the command that replays it.
//!
//! ```
//! use dynamo_testkit::simulation::Simulation;
//!
//! let report = Simulation::new().sweep(0..20);
//! assert!(report.failures.is_empty(), "{report}");
//! ```

mod checks;
mod faults;
mod observe;
mod plan;
mod workload;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dynamo_core::causality::SiblingSet;
use dynamo_core::config::Config;
use dynamo_core::reconcile::{KeepSiblings, LastWriteWins, Reconciler};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use checks::{Invariant, RunOutcome};
pub use plan::{FaultKind, ReconcilerChoice, ScheduledFault, SimPlan};
pub use workload::{BoxFuture, MixedWorkload, Workload};

use crate::history::Violation;
use crate::Cluster;
use faults::SeededFaults;

/// How long the fault schedule of a run spans, in simulated time; the
/// workload's clients spread their operations over it.
pub const HORIZON: Duration = Duration::from_secs(2);

/// How long, in simulated time, a healed cluster gets to converge.
const CONVERGE: Duration = Duration::from_secs(60);
/// How many anti-entropy rounds a healed cluster gets for its replicas to
/// converge without reads (see [`aae_bound`]).
const AAE_ROUNDS: u32 = 20;

/// The simulated time within which, once healed, every key's replicas
/// must agree without any read (plans with read repair off), and within
/// which (past the grace) deleted keys must be purged: [`AAE_ROUNDS`]
/// rounds of the plan's anti-entropy period.
fn aae_bound(plan: &SimPlan) -> Duration {
    Duration::from_millis(plan.aae_interval_ms) * AAE_ROUNDS
}

/// How often buffered stores flush on their own, in simulated time.
const FLUSH_EVERY: Duration = Duration::from_millis(300);

/// A configured simulation: what every seed's run shares.
pub struct Simulation {
    reconciler: Option<Arc<dyn Reconciler>>,
    workload: Arc<dyn Workload>,
    invariants: Vec<Arc<dyn Invariant>>,
}

impl Default for Simulation {
    fn default() -> Self {
        Simulation::new()
    }
}

/// How one seed's run went, when it passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// The seed.
    pub seed: u64,
    /// Client operations made, and how many were acknowledged.
    pub operations: usize,
    /// Of which acknowledged.
    pub acknowledged: usize,
    /// A hash of the whole history and of every key's final state: equal
    /// for two runs of one seed.
    pub fingerprint: u64,
    /// Keys whose state anti-entropy repairs changed, summed over the nodes
    /// running at the end.
    pub aae_keys_repaired: u64,
    /// Tombstones purged, summed over the nodes running at the end.
    pub tombstones_purged: u64,
}

/// A seed whose run broke a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The seed; [`Failure::replay`] is the command that replays it.
    pub seed: u64,
    /// The check that failed.
    pub check: String,
    /// The key it failed on, if it is about one.
    pub key: Option<String>,
    /// What went wrong.
    pub detail: String,
    /// What the seed drew.
    pub plan: String,
    /// The history of the failing key (every operation on it, in order).
    pub excerpt: Vec<String>,
    /// What each node stores for the failing key after the heal: its
    /// replica's siblings (value and dot) and any hints.
    pub replicas: Vec<String>,
}

impl Failure {
    /// The shell command that replays this seed.
    pub fn replay(&self) -> String {
        format!("cargo run --release -p dynamo-testkit --bin simulate -- --seeds 1 --from {}", self.seed)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {} failed {}: {}", self.seed, self.check, self.detail)?;
        writeln!(f, "  plan: {}", self.plan)?;
        if let Some(key) = &self.key {
            writeln!(f, "  history of key {key:?}:")?;
            for line in &self.excerpt {
                writeln!(f, "    {line}")?;
            }
            writeln!(f, "  what each node stores for it:")?;
            for line in &self.replicas {
                writeln!(f, "    {line}")?;
            }
        }
        write!(f, "  replay: {}", self.replay())
    }
}

/// The result of a sweep.
#[derive(Debug, Clone)]
pub struct SweepReport {
    /// Seeds run.
    pub seeds: u64,
    /// The seeds that failed, in seed order.
    pub failures: Vec<Failure>,
    /// Wall-clock time the sweep took.
    pub elapsed: Duration,
}

impl SweepReport {
    /// Seeds per second of wall-clock time.
    pub fn rate(&self) -> f64 {
        self.seeds as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for SweepReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for failure in &self.failures {
            writeln!(f, "{failure}")?;
        }
        write!(f, "{} seeds, {} failed", self.seeds, self.failures.len())
    }
}

impl Simulation {
    /// The built-in [`MixedWorkload`] and checks, with the reconciler each
    /// seed draws.
    pub fn new() -> Self {
        Simulation { reconciler: None, workload: Arc::new(MixedWorkload), invariants: Vec::new() }
    }

    /// Every run uses `reconciler` instead of drawing one.
    pub fn reconciler(mut self, reconciler: Arc<dyn Reconciler>) -> Self {
        self.reconciler = Some(reconciler);
        self
    }

    /// The clients run `workload` instead of the [`MixedWorkload`].
    pub fn workload(mut self, workload: Arc<dyn Workload>) -> Self {
        self.workload = workload;
        self
    }

    /// Adds an invariant checked after every run, besides the built-in ones.
    pub fn invariant(mut self, invariant: Arc<dyn Invariant>) -> Self {
        self.invariants.push(invariant);
        self
    }

    /// The plan seed `seed` draws, with this simulation's reconciler.
    pub fn plan(&self, seed: u64) -> SimPlan {
        let mut plan = SimPlan::draw(seed);
        if self.reconciler.is_some() {
            plan.reconciler = ReconcilerChoice::Custom;
        }
        plan
    }

    /// Runs the seeds of `seeds`, one after the other, on this thread.
    pub fn sweep(&self, seeds: Range<u64>) -> SweepReport {
        let started = Instant::now();
        let failures = seeds.clone().filter_map(|seed| self.run(seed).err().map(|f| *f)).collect();
        SweepReport { seeds: seeds.end.saturating_sub(seeds.start), failures, elapsed: started.elapsed() }
    }

    /// Runs one seed on this thread, on a fresh single-threaded runtime
    /// with tokio's clock paused.
    ///
    /// # Errors
    /// The first check the run broke, with everything needed to replay it.
    pub fn run(&self, seed: u64) -> Result<RunSummary, Box<Failure>> {
        let plan = self.plan(seed);
        let fail = |check: &str, key: Option<String>, detail: String, excerpt: Vec<String>| {
            Box::new(Failure {
                seed,
                check: check.to_owned(),
                key,
                detail,
                plan: plan.to_string(),
                excerpt,
                replicas: Vec::new(),
            })
        };
        let runtime =
            match tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build() {
                Ok(rt) => rt,
                Err(e) => {
                    return Err(fail("setup", None, format!("cannot build a runtime: {e}"), Vec::new()))
                }
            };
        let (result, observed) = observe::observe(|| {
            std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(self.run_plan(&plan))))
        });
        drop(runtime);
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(_) => {
                return Err(fail(
                    "no-panic",
                    None,
                    format!("the run panicked: {:?}", observed.panics),
                    vec![],
                ))
            }
        };
        let (summary, store_failures) = outcome?;
        if let Some(panic) = observed.panics.first() {
            return Err(fail("no-panic", None, format!("a task panicked: {panic}"), Vec::new()));
        }
        if !store_failures {
            if let Some(error) = observed.errors.first() {
                return Err(fail("no-error-log", None, format!("an error was logged: {error}"), Vec::new()));
            }
        }
        Ok(summary)
    }

    /// The run itself: cluster, workload and faults, heal, checks. Returns
    /// the summary and whether store failures were injected.
    async fn run_plan(&self, plan: &SimPlan) -> Result<(RunSummary, bool), Box<Failure>> {
        let fail = |check: &str, key: Option<String>, detail: String, excerpt: Vec<String>| {
            Box::new(Failure {
                seed: plan.seed,
                check: check.to_owned(),
                key,
                detail,
                plan: plan.to_string(),
                excerpt,
                replicas: Vec::new(),
            })
        };
        let faults = Arc::new(SeededFaults::new(plan.seed));
        let cluster = self
            .cluster(plan, Arc::clone(&faults))
            .await
            .map_err(|e| fail("setup", None, format!("the cluster did not start: {e}"), Vec::new()))?;

        // Every message takes a little time, so operations interleave.
        cluster.net().set_delay(Duration::from_micros(50), Duration::from_millis(2));
        let schedule = async {
            let start = tokio::time::Instant::now();
            for fault in &plan.faults {
                tokio::time::sleep_until(start + fault.at).await;
                faults::apply(&cluster, &faults, &fault.kind).await;
            }
        };
        let clients = futures::future::join_all((0..plan.clients).map(|client| {
            let rng =
                ChaCha8Rng::seed_from_u64(plan.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ client as u64);
            self.workload.run_client(&cluster, client, plan.ops_per_client, rng)
        }));
        tokio::join!(schedule, clients);

        faults::heal(&cluster, &faults).await.map_err(|e| fail("heal", None, e, Vec::new()))?;
        let history = cluster.history().clone();
        if plan.gossip {
            if let Err(e) = cluster.wait_gossip_converged(CONVERGE).await {
                return Err(fail("gossip-convergence", None, e, Vec::new()));
            }
        }
        if plan.gossip {
            if let Err(e) = cluster.wait_handoff_settled(CONVERGE).await {
                return Err(fail("handoff-settled", None, e, Vec::new()));
            }
        }
        if !plan.read_repair {
            // Before any read: replicas converge by anti-entropy (and hints) alone.
            if let Err(v) = checks::converges_without_reads(&cluster, aae_bound(plan)).await {
                return Err(self.violated(&cluster, &history, plan, "aae-convergence", v).await);
            }
        }
        if let Err(e) = cluster.wait_converged(CONVERGE).await {
            return Err(fail("convergence", None, e, Vec::new()));
        }
        if let Some(grace) = plan.tombstone_grace_ms {
            // Every delete all replicas saw is purged; the reads and checks
            // below then see whether anything came back.
            let bound = Duration::from_millis(grace) + plan.clock_lead() + aae_bound(plan);
            if let Err(v) = checks::tombstones_purged(&cluster, bound).await {
                return Err(self.violated(&cluster, &history, plan, "tombstone-purge", v).await);
            }
            if let Err(e) = cluster.wait_converged(CONVERGE).await {
                return Err(fail("convergence", None, format!("after the purge: {e}"), Vec::new()));
            }
        }
        let reader = (0..cluster.len()).find(|&i| cluster.node(i).is_some()).unwrap_or(0);
        let finals = cluster.read_all(reader).await.map_err(|e| {
            fail("final-read", None, format!("a read at R = N failed after the heal: {e}"), vec![])
        })?;
        let mut states: BTreeMap<Bytes, Option<SiblingSet>> = BTreeMap::new();
        for key in history.keys() {
            let owner = cluster.preference_list(&key)[0];
            let state = cluster
                .replica_state(owner, &key)
                .await
                .map_err(|e| fail("final-read", None, format!("node {owner} cannot be read: {e}"), vec![]))?;
            states.insert(key, state);
        }
        let outcome = RunOutcome { plan, history: &history, finals: &finals, states: &states };
        if let Err((check, v)) = self.check(&outcome) {
            return Err(self.violated(&cluster, &history, plan, &check, v).await);
        }
        let events = history.events();
        let summary = RunSummary {
            seed: plan.seed,
            operations: events.len(),
            acknowledged: events.iter().filter(|e| e.ok).count(),
            fingerprint: fingerprint(&events, &states),
            aae_keys_repaired: 0,
            tombstones_purged: 0,
        };
        let summary = (0..cluster.len()).filter_map(|i| cluster.node(i)).fold(summary, |mut sum, node| {
            let aae = node.aae_status();
            sum.aae_keys_repaired += aae.keys_repaired;
            sum.tombstones_purged += aae.tombstones_purged;
            sum
        });
        cluster.shutdown().await;
        Ok((summary, faults.injected_store_failure()))
    }

    /// The failure for a violation of `check`: the key's history and what
    /// every node stores for it.
    async fn violated(
        &self,
        cluster: &Cluster,
        history: &crate::History,
        plan: &SimPlan,
        check: &str,
        v: Violation,
    ) -> Box<Failure> {
        Box::new(Failure {
            seed: plan.seed,
            check: check.to_owned(),
            excerpt: history.excerpt(v.key.as_bytes()),
            replicas: stored_everywhere(cluster, v.key.as_bytes()).await,
            key: Some(v.key),
            detail: v.problem,
            plan: plan.to_string(),
        })
    }

    /// The built-in checks, then the application's invariants.
    fn check(&self, outcome: &RunOutcome<'_>) -> Result<(), (String, Violation)> {
        fn named(name: &str) -> impl FnOnce(Violation) -> (String, Violation) + '_ {
            move |v| (name.to_owned(), v)
        }
        if outcome.plan.reconciler != ReconcilerChoice::LastWriteWins {
            checks::no_lost_adds(outcome, &|k| self.workload.set_union(k)).map_err(named("no-lost-add"))?;
        }
        checks::no_undone_delete(outcome).map_err(named("no-undone-delete"))?;
        checks::refused_writes_never_take_effect(outcome).map_err(named("sibling-bound"))?;
        for invariant in &self.invariants {
            invariant.check(outcome).map_err(named(invariant.name()))?;
        }
        Ok(())
    }

    async fn cluster(&self, plan: &SimPlan, faults: Arc<SeededFaults>) -> dynamo_core::Result<Cluster> {
        let reconciler: Arc<dyn Reconciler> = match (plan.reconciler, &self.reconciler) {
            (ReconcilerChoice::Custom, Some(r)) => Arc::clone(r),
            (ReconcilerChoice::LastWriteWins, _) => Arc::new(LastWriteWins),
            _ => Arc::new(KeepSiblings),
        };
        let config = Config {
            max_siblings: plan.max_siblings,
            request_timeout_ms: 2_000,
            replica_timeout_ms: 400,
            hint_delivery_interval_ms: 200,
            suspect_period_ms: 300,
            handoff_interval_ms: 200,
            partitions: plan.partitions,
            read_repair: plan.read_repair,
            anti_entropy: true,
            aae_interval_ms: plan.aae_interval_ms,
            tombstone_grace_ms: plan.tombstone_grace_ms.unwrap_or(Config::default().tombstone_grace_ms),
            tombstone_purge_interval_ms: if plan.tombstone_grace_ms.is_some() {
                plan::PURGE_INTERVAL_MS
            } else {
                Config::default().tombstone_purge_interval_ms
            },
            ..Config::default()
        };
        let mut builder = Cluster::builder()
            .config(config)
            .nodes(plan.nodes)
            .n(plan.n)
            .r(plan.r)
            .w(plan.w)
            .seed(plan.seed)
            .reconciler(reconciler)
            .fault_injector(faults);
        if !plan.sloppy {
            builder = builder.strict();
        }
        if plan.gossip {
            builder = builder.gossip().joiners(plan.joiners);
        }
        if plan.buffered {
            builder = builder.buffered_stores(Some(FLUSH_EVERY));
        }
        builder.build().await
    }
}

/// A value as a failure shows it: short printable text as text (the
/// built-in workload's registers), anything else by its size.
pub(crate) fn show_value(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(text) if v.len() <= 32 && text.chars().all(|c| c.is_ascii_graphic()) => format!("{text:?}"),
        _ => format!("{} bytes", v.len()),
    }
}

/// What every node stores for `key`: its replica's siblings and its hints.
async fn stored_everywhere(cluster: &Cluster, key: &[u8]) -> Vec<String> {
    let show = |s: &SiblingSet| {
        let siblings: Vec<String> = s
            .siblings()
            .iter()
            .map(|sib| {
                let value = sib.value.as_ref().map_or("tombstone".to_owned(), |v| show_value(v));
                format!("{value} @ n{}/{}:{}", sib.dot.actor.node.0, sib.dot.actor.epoch, sib.dot.counter)
            })
            .collect();
        format!("{siblings:?}")
    };
    let owners = cluster.preference_list(key);
    let mut out = Vec::new();
    for i in 0..cluster.len() {
        let line = match cluster.local_state(i, key).await {
            Ok(local) => {
                let data = local.data.as_ref().map_or("nothing".to_owned(), show);
                let hints: Vec<String> =
                    local.hints.iter().map(|(o, s)| format!("for {o}: {}", show(s))).collect();
                let role = if owners.contains(&i) { "owner" } else { "non-owner" };
                format!("node {i} ({role}): {data}; hints {hints:?}")
            }
            Err(e) => format!("node {i}: cannot be read: {e}"),
        };
        out.push(line);
    }
    out
}

/// A hash of a run's history and final states: two runs of one seed must
/// agree on it.
fn fingerprint(events: &[crate::history::Event], states: &BTreeMap<Bytes, Option<SiblingSet>>) -> u64 {
    let text = format!("{events:?}{states:?}");
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}
