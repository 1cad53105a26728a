//! What one seed draws: the cluster, the workload's size and the faults.

use std::fmt;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The reconciler a run uses, when the simulation does not impose one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcilerChoice {
    /// Dynamo's default: every concurrent sibling is kept.
    KeepSiblings,
    /// Last-write-wins on hybrid-logical-clock timestamps.
    LastWriteWins,
    /// The one given to [`Simulation::reconciler`](super::Simulation::reconciler).
    Custom,
}

/// One fault, applied at a moment of the run (simulated time since the
/// workload started). Node numbers are indexes into the cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// Each message leg is lost with this probability.
    Drop(f64),
    /// Each leg waits a uniform time in `[min, max]` (may exceed the
    /// replica timeout: answers arrive after the sender gave up).
    Delay(Duration, Duration),
    /// Each request is delivered twice with this probability.
    Duplicate(f64),
    /// Both-way cut between two groups of nodes.
    Partition(Vec<usize>, Vec<usize>),
    /// Frames from the first node to the second are lost.
    OneWay(usize, usize),
    /// The node is cut from every other.
    Isolate(usize),
    /// Cuts, drops and duplication stop (delays stay).
    HealNetwork,
    /// The node crashes (with buffered stores it loses its unflushed writes).
    Crash(usize),
    /// A crashed node starts again on its store.
    Restart(usize),
    /// The node crashes and restarts on an empty store (a lost disk).
    Wipe(usize),
    /// The node freezes (SIGSTOP): requests to it wait.
    Pause(usize),
    /// A paused node runs again and handles what waited.
    Resume(usize),
    /// The node's clock steps by this many µs (negative: backwards).
    ClockJump(usize, i64),
    /// The node's clock runs this many parts per million fast (or slow).
    ClockDrift(usize, i64),
    /// Store writes on every node fail with the first probability and
    /// stall (a slow fsync) with the second.
    StoreFaults(f64, f64),
    /// Calls fail before the request is sent with the first probability,
    /// and after it was executed with the second.
    SendFaults(f64, f64),
    /// A topology change joins this (joining) node: staged and committed
    /// through a live founding node; handoff moves data to it.
    Join(usize),
    /// A topology change makes this node leave (it hands its data off).
    Leave(usize),
    /// The node dies for good (its disk with it) and is removed: its data
    /// is rebuilt from the other replicas.
    Remove(usize),
}

/// A fault and when it happens.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledFault {
    /// Simulated time after the workload starts.
    pub at: Duration,
    /// What happens.
    pub kind: FaultKind,
}

/// Everything one seed decides before the run starts.
#[derive(Debug, Clone, PartialEq)]
pub struct SimPlan {
    /// The seed it was drawn from.
    pub seed: u64,
    /// Cluster size, 3 to 7.
    pub nodes: usize,
    /// Replication factor.
    pub n: usize,
    /// Default read quorum (reads also draw their own R).
    pub r: usize,
    /// Write quorum.
    pub w: usize,
    /// Sloppy quorum with hinted handoff, or strict.
    pub sloppy: bool,
    /// The nodes learn membership by gossip (and judge liveness by phi),
    /// or keep a fixed member list.
    pub gossip: bool,
    /// Nodes that start with only a seed (gossip runs only): they learn
    /// the cluster, own nothing, and take client requests.
    pub joiners: usize,
    /// The reconciler.
    pub reconciler: ReconcilerChoice,
    /// Stores in buffered durability, which lose unflushed writes on a
    /// crash (flushing every 300 ms of simulated time).
    pub buffered: bool,
    /// The configured sibling limit.
    pub max_siblings: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Operations per client.
    pub ops_per_client: usize,
    /// The fault schedule, in time order.
    pub faults: Vec<ScheduledFault>,
    /// Whether reads push merged states back to stale replicas. Without
    /// it, only hinted handoff and anti-entropy repair replicas, and the
    /// run checks that anti-entropy alone converges every key after the
    /// heal, with no client read.
    pub read_repair: bool,
    /// Period of the nodes' anti-entropy rounds, in simulated ms
    /// (anti-entropy runs in every plan).
    pub aae_interval_ms: u64,
    /// A tombstone grace short enough for purges to happen during the run
    /// (in simulated ms, with purge passes every [`PURGE_INTERVAL_MS`]), or
    /// `None` for the default (days: no purge in a run).
    pub tombstone_grace_ms: Option<u64>,
    /// Ring partitions Q. Small rings keep the anti-entropy rounds (one
    /// exchange per replicated partition) cheap enough for the sweep; the
    /// logic does not depend on Q.
    pub partitions: u32,
}

/// Period of the tombstone purge pass in plans with a short
/// [`SimPlan::tombstone_grace_ms`], in simulated ms.
pub const PURGE_INTERVAL_MS: u64 = 250;

/// The anti-entropy periods a plan draws from, in simulated ms.
const AAE_INTERVALS_MS: [u64; 3] = [300, 1_000, 3_000];

/// The short tombstone graces a plan draws from, in simulated ms. A grace
/// must outlast everything that can carry a state older than a tombstone
/// to a replica (Cassandra's `gc_grace_seconds` rule): a message in flight
/// (the 2 s request deadline bounds the schedule's delays), and a hint
/// waiting for an owner that is down or cut off (a run's faults last
/// until the heal, at most about 4.5 s), judged on clocks that may be
/// stepped 5 s forward on the hint's holder and 2 s back on its writer.
/// A hint older than the grace is dropped, and with it an acknowledged
/// write whose only copy it was: shorter graces lose writes by design.
const GRACES_MS: [u64; 2] = [12_000, 16_000];

/// The ring sizes a plan draws from.
const PARTITIONS: [u32; 3] = [8, 16, 32];

/// How long the fault schedule spans, in simulated time.
const HORIZON_MS: u64 = super::HORIZON.as_millis() as u64;

impl SimPlan {
    /// Draws a plan from `seed`.
    pub fn draw(seed: u64) -> SimPlan {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_9a17_0000_0001);
        let nodes = *pick(&mut rng, &[3, 3, 3, 4, 4, 5, 5, 6, 7]);
        let n = if nodes >= 5 && rng.random_bool(0.2) {
            5
        } else if rng.random_bool(0.15) {
            2
        } else {
            3
        };
        // Mostly R + W > N; one run in four reads or writes weakly.
        let (r, w) = if rng.random_bool(0.75) {
            let w = rng.random_range(n / 2 + 1..=n);
            (n + 1 - w, w)
        } else {
            (1, rng.random_range(1..=n / 2 + 1).min(n))
        };
        let reconciler = if rng.random_bool(0.75) {
            ReconcilerChoice::KeepSiblings
        } else {
            ReconcilerChoice::LastWriteWins
        };
        let mut plan = SimPlan {
            seed,
            nodes,
            n,
            r,
            w,
            sloppy: rng.random_bool(0.8),
            gossip: rng.random_bool(0.4),
            joiners: 0,
            reconciler,
            buffered: rng.random_bool(0.3),
            max_siblings: if rng.random_bool(0.2) { rng.random_range(3..=6) } else { 100 },
            clients: rng.random_range(2..=4),
            ops_per_client: rng.random_range(6..=14),
            faults: Vec::new(),
            read_repair: true,
            aae_interval_ms: 1_000,
            tombstone_grace_ms: None,
            partitions: 256,
        };
        plan.faults = draw_faults(&mut rng, &plan);
        // Drawn last, so that adding it left every earlier plan as it was.
        plan.joiners = usize::from(plan.gossip && rng.random_bool(0.3));
        // Topology changes, drawn after everything else for the same reason.
        if let Some(change) = draw_topology(&mut rng, &plan) {
            plan.faults.extend(change);
            plan.faults.sort_by_key(|f| f.at);
        }
        // Anti-entropy and tombstone purge, drawn after everything else
        // for the same reason.
        plan.read_repair = rng.random_bool(0.7);
        plan.aae_interval_ms = *pick(&mut rng, &AAE_INTERVALS_MS);
        plan.tombstone_grace_ms = rng.random_bool(0.3).then(|| *pick(&mut rng, &GRACES_MS));
        plan.partitions = *pick(&mut rng, &PARTITIONS);
        plan
    }

    /// How far ahead of true time a node's clock may run during the run:
    /// every forward clock jump of the schedule added up, plus what the
    /// fastest drift gains over the run. Timestamps a node issues then
    /// (and, through the hybrid logical clocks, those its peers issue
    /// after hearing from it) may lie that far in the future, so a
    /// tombstone's grace may end that much later in true time.
    pub(crate) fn clock_lead(&self) -> Duration {
        let jumps: i64 = self
            .faults
            .iter()
            .filter_map(|f| match f.kind {
                FaultKind::ClockJump(_, us) if us > 0 => Some(us),
                _ => None,
            })
            .sum();
        let drift = self
            .faults
            .iter()
            .filter_map(|f| match f.kind {
                FaultKind::ClockDrift(_, ppm) if ppm > 0 => Some(ppm),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        // Drift accrues until the heal resets the clocks: within a few horizons.
        let drift_us = drift.saturating_mul(4 * HORIZON_MS as i64 * 1_000) / 1_000_000;
        Duration::from_micros(jumps.saturating_add(drift_us).max(0) as u64)
    }

    /// Whether a fault that destroys a node's acknowledged copy (a wipe, or
    /// a crash with buffered stores) may happen: only if another copy
    /// outlives it, with W at least 2, and then once per run.
    fn destructive_allowed(&self) -> bool {
        self.w >= 2
    }
}

/// With gossip, half the runs change the topology once mid-run: a join of
/// the joining node, a leave, or (if no other fault destroys a copy) the
/// removal of a node that died for good; often a node crashes (or, with
/// buffered stores, freezes) while the data moves, and comes back.
fn draw_topology(rng: &mut ChaCha8Rng, plan: &SimPlan) -> Option<Vec<ScheduledFault>> {
    if !plan.gossip || !rng.random_bool(0.5) {
        return None;
    }
    let destructive_used = !plan.destructive_allowed()
        || plan.faults.iter().any(|f| {
            matches!(f.kind, FaultKind::Wipe(_)) || plan.buffered && matches!(f.kind, FaultKind::Crash(_))
        });
    let mut options = Vec::new();
    if plan.joiners > 0 {
        options.push(FaultKind::Join(plan.nodes));
    }
    if plan.nodes > plan.n {
        options.push(FaultKind::Leave(rng.random_range(0..plan.nodes)));
        if !destructive_used {
            options.push(FaultKind::Remove(rng.random_range(0..plan.nodes)));
        }
    }
    if options.is_empty() {
        return None;
    }
    let kind = options.swap_remove(rng.random_range(0..options.len()));
    let at = Duration::from_millis(rng.random_range(HORIZON_MS / 5..HORIZON_MS * 3 / 4));
    let mut out = vec![ScheduledFault { at, kind }];
    if rng.random_bool(0.5) {
        let victim = rng.random_range(0..plan.nodes + plan.joiners);
        let (down, up) = if plan.buffered {
            (FaultKind::Pause(victim), FaultKind::Resume(victim))
        } else {
            (FaultKind::Crash(victim), FaultKind::Restart(victim))
        };
        let crash = at + Duration::from_millis(rng.random_range(1..300));
        out.push(ScheduledFault { at: crash, kind: down });
        out.push(ScheduledFault { at: crash + Duration::from_millis(rng.random_range(50..1_000)), kind: up });
    }
    Some(out)
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// Draws 0 to 8 faults over the horizon. A crashed or paused node comes
/// back later in the schedule (or at the heal); at most one destructive
/// fault per run.
fn draw_faults(rng: &mut ChaCha8Rng, plan: &SimPlan) -> Vec<ScheduledFault> {
    let count = *pick(rng, &[0, 1, 2, 2, 3, 3, 4, 5, 6, 8]);
    let mut faults = Vec::new();
    let mut destructive_used = !plan.destructive_allowed();
    let mut down: Vec<usize> = Vec::new();
    let node = |rng: &mut ChaCha8Rng| rng.random_range(0..plan.nodes);
    for _ in 0..count {
        let at = Duration::from_millis(rng.random_range(0..HORIZON_MS));
        let kind = match rng.random_range(0..15) {
            0 => FaultKind::Drop(*pick(rng, &[0.05, 0.2, 0.5])),
            1 => {
                let max = Duration::from_millis(*pick(rng, &[5, 50, 400, 1_500]));
                FaultKind::Delay(max / 10, max)
            }
            2 => FaultKind::Duplicate(*pick(rng, &[0.1, 0.5])),
            3 => {
                let mut all: Vec<usize> = (0..plan.nodes).collect();
                let split = rng.random_range(1..plan.nodes);
                for i in (1..all.len()).rev() {
                    all.swap(i, rng.random_range(0..=i));
                }
                let b = all.split_off(split);
                FaultKind::Partition(all, b)
            }
            4 => {
                let (a, b) = (node(rng), node(rng));
                FaultKind::OneWay(a, b)
            }
            5 => FaultKind::Isolate(node(rng)),
            6 => FaultKind::HealNetwork,
            7 | 8 => {
                let i = node(rng);
                if down.contains(&i) {
                    down.retain(|d| *d != i);
                    FaultKind::Restart(i)
                } else if plan.buffered && destructive_used {
                    // Another crash with buffered stores could lose a second copy.
                    FaultKind::Pause(i)
                } else {
                    destructive_used |= plan.buffered;
                    down.push(i);
                    FaultKind::Crash(i)
                }
            }
            9 if !destructive_used => {
                destructive_used = true;
                FaultKind::Wipe(node(rng))
            }
            9 | 10 => FaultKind::Pause(node(rng)),
            11 => FaultKind::ClockJump(node(rng), *pick(rng, &[-2_000_000, -300_000, 300_000, 5_000_000])),
            12 => FaultKind::ClockDrift(node(rng), *pick(rng, &[-50_000, -500, 500, 50_000])),
            13 => FaultKind::StoreFaults(*pick(rng, &[0.0, 0.02, 0.1]), *pick(rng, &[0.0, 0.05, 0.3])),
            _ => FaultKind::SendFaults(*pick(rng, &[0.0, 0.02, 0.1]), *pick(rng, &[0.0, 0.02, 0.1])),
        };
        faults.push(ScheduledFault { at, kind });
    }
    // Buffered stores are there to be crashed: most such runs get one
    // crash (losing the unflushed writes) in the middle of the workload.
    if plan.buffered && !destructive_used && rng.random_bool(0.7) {
        let at = Duration::from_millis(rng.random_range(HORIZON_MS / 4..HORIZON_MS * 3 / 4));
        faults.push(ScheduledFault { at, kind: FaultKind::Crash(node(rng)) });
    }
    // A paused node resumes, and a crashed one restarts, at a random later
    // moment (or at the heal), so clients meet it again with whatever its
    // store kept.
    let mut comebacks = Vec::new();
    for f in &faults {
        let comeback = match f.kind {
            FaultKind::Pause(i) => FaultKind::Resume(i),
            FaultKind::Crash(i) => FaultKind::Restart(i),
            _ => continue,
        };
        if rng.random_bool(0.7) {
            let later = f.at + Duration::from_millis(rng.random_range(20..1_000));
            comebacks.push(ScheduledFault { at: later, kind: comeback });
        }
    }
    faults.extend(comebacks);
    faults.sort_by_key(|f| f.at);
    faults
}

impl fmt::Display for SimPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} nodes, N={} R={} W={}, {}, {}, {:?}, {} stores, max_siblings {}, {} clients x {} ops",
            self.nodes,
            self.n,
            self.r,
            self.w,
            if self.sloppy { "sloppy" } else { "strict" },
            if self.gossip { format!("gossip (+{} joining)", self.joiners) } else { "fixed members".into() },
            self.reconciler,
            if self.buffered { "buffered" } else { "durable" },
            self.max_siblings,
            self.clients,
            self.ops_per_client
        )?;
        if self.faults.is_empty() {
            write!(f, "; no faults")?;
        } else {
            write!(f, "; faults:")?;
            for fault in &self.faults {
                write!(f, " {}ms {:?};", fault.at.as_millis(), fault.kind)?;
            }
        }
        // Drawn after the rest, so printed after it: an older plan's text
        // is a prefix of its text now.
        write!(
            f,
            " | Q={}, read repair {}, anti-entropy every {} ms, tombstone grace {}",
            self.partitions,
            if self.read_repair { "on" } else { "off" },
            self.aae_interval_ms,
            self.tombstone_grace_ms.map_or("default".to_owned(), |g| format!("{g} ms"))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_a_function_of_the_seed_and_cover_every_fault_kind() {
        assert_eq!(SimPlan::draw(7), SimPlan::draw(7));
        let mut kinds = std::collections::HashSet::new();
        let mut shapes = std::collections::BTreeSet::new();
        for seed in 0..3_000 {
            let plan = SimPlan::draw(seed);
            assert!((3..=7).contains(&plan.nodes) && plan.n <= plan.nodes);
            assert!(plan.r >= 1 && plan.r <= plan.n && plan.w >= 1 && plan.w <= plan.n, "{plan}");
            shapes.insert((
                plan.r + plan.w > plan.n,
                plan.sloppy,
                plan.reconciler == ReconcilerChoice::KeepSiblings,
            ));
            let destructive = plan
                .faults
                .iter()
                .filter(|f| {
                    matches!(f.kind, FaultKind::Wipe(_) | FaultKind::Remove(_))
                        || plan.buffered && matches!(f.kind, FaultKind::Crash(_))
                })
                .count();
            assert!(destructive <= usize::from(plan.w >= 2), "seed {seed}: {plan}");
            for f in &plan.faults {
                kinds.insert(std::mem::discriminant(&f.kind));
            }
        }
        assert_eq!(kinds.len(), 19, "every fault kind is drawn");
        assert_eq!(shapes.len(), 8, "strong and weak quorums, sloppy and strict, both reconcilers");
        let extras: std::collections::BTreeSet<(bool, u64, Option<u64>, u32)> = (0..3_000)
            .map(SimPlan::draw)
            .map(|p| (p.read_repair, p.aae_interval_ms, p.tombstone_grace_ms, p.partitions))
            .collect();
        assert_eq!(extras.len(), 2 * 3 * 3 * 3, "read repair on and off, every period, grace and ring size");
    }

    /// Draws added later come after the earlier ones, so an older seed's
    /// plan is unchanged: its text from before anti-entropy joined the
    /// sweep is a prefix of its text now.
    #[test]
    fn older_seeds_draw_the_plans_they_drew_before() {
        let before: [(u64, &str); 7] = [
            (1, "6 nodes, N=5 R=2 W=4, sloppy, fixed members, KeepSiblings, durable stores, max_siblings 100, 3 clients x 7 ops; faults: 1102ms SendFaults(0.02, 0.02);"),
            (2, "6 nodes, N=3 R=2 W=2, strict, gossip (+1 joining), KeepSiblings, buffered stores, max_siblings 4, 4 clients x 9 ops; faults: 695ms Wipe(3); 696ms HealNetwork; 781ms Pause(5); 966ms Resume(5); 1387ms Leave(4); 1475ms Pause(2); 1795ms Resume(2);"),
            (3, "3 nodes, N=3 R=1 W=2, sloppy, gossip (+1 joining), LastWriteWins, durable stores, max_siblings 100, 4 clients x 8 ops; faults: 207ms OneWay(0, 0); 725ms Pause(0); 812ms Join(3); 882ms Crash(3); 1117ms Restart(3); 1686ms Resume(0);"),
            (249, "6 nodes, N=3 R=1 W=3, sloppy, fixed members, KeepSiblings, durable stores, max_siblings 6, 4 clients x 13 ops; faults: 698ms Drop(0.2); 1132ms HealNetwork; 1839ms Crash(5); 1898ms SendFaults(0.1, 0.02); 2233ms Restart(5);"),
            (1405, "5 nodes, N=2 R=1 W=2, sloppy, fixed members, KeepSiblings, durable stores, max_siblings 6, 3 clients x 13 ops; faults: 382ms Crash(0); 501ms Duplicate(0.1); 695ms Restart(0);"),
            (4573, "4 nodes, N=3 R=1 W=3, sloppy, gossip (+0 joining), KeepSiblings, buffered stores, max_siblings 100, 3 clients x 9 ops; faults: 126ms Isolate(2); 819ms OneWay(1, 3); 1016ms Crash(3);"),
            (77777, "6 nodes, N=5 R=1 W=1, sloppy, fixed members, KeepSiblings, durable stores, max_siblings 100, 4 clients x 13 ops; no faults"),
        ];
        for (seed, text) in before {
            let now = SimPlan::draw(seed).to_string();
            assert!(now.starts_with(text), "seed {seed} now draws {now}\n    instead of {text}");
        }
    }
}
