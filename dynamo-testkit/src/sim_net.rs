//! An in-memory network with seeded fault injection, for cluster tests.
//!
//! [`SimNetwork`] is shared by every node of an in-process cluster; each node
//! gets a [`SimTransport`] bound to its address through
//! [`SimNetwork::endpoint`]. Tests can then cut links, isolate or kill nodes,
//! drop messages and delay them.
//!
//! A call travels in two legs, the request and the response, and ends no
//! later than its deadline:
//! 1. from a shut-down, killed or replaced endpoint it fails with
//!    [`TransportError::Closed`] (also if that happens while it is in flight);
//! 2. to an address where nothing serves it fails at once with
//!    [`TransportError::Refused`] ("connection refused": never delivered);
//! 3. a leg is lost if it is randomly dropped, or if its link is cut (both
//!    ways, or one way in its direction) when it is sent or when it arrives
//!    after its delay; the caller then sees [`TransportError::Timeout`] once
//!    the deadline passes. With a duplicate rate, a request may also be
//!    delivered a second time, after its own delay (its response is lost);
//! 4. if the target stops serving before the request arrives or before it
//!    answers, the call fails with `Unreachable` ("connection reset").
//!
//! Delivery and the handler run in a spawned task, so a request that was sent
//! is delivered and handled to completion even if its caller gave up or its
//! response is lost, as with a real server.
//!
//! Runs are reproducible from the seed: every call makes exactly six draws
//! from one ChaCha8 generator when it starts, whatever the configuration, so
//! the draws depend only on the order in which calls start (deterministic on
//! tokio's current-thread runtime, which `#[tokio::test]` uses). Delays use
//! `tokio::time`, so tests should run on tokio's paused clock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dynamo_core::transport::{FrameHandler, Transport, TransportError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::{oneshot, Notify};

/// A simulated network shared by every node of an in-process cluster.
///
/// Cloning is cheap and yields a handle to the same network.
#[derive(Clone)]
pub struct SimNetwork {
    state: Arc<Mutex<State>>,
    /// Wakes the legs held for paused nodes when one resumes (see
    /// [`SimNetwork::pause`]).
    resumed: Arc<Notify>,
}

/// Counters of what the network did since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Calls made by open endpoints (calls from a closed endpoint are not counted).
    pub calls: u64,
    /// Legs that reached their destination; a full round trip delivers two.
    pub delivered: u64,
    /// Legs lost to a cut link or a random drop.
    pub dropped: u64,
    /// Calls that found no serving node at the target: refused when sent, or
    /// reset because the target stopped before the request or response got through.
    pub refused: u64,
}

/// A [`Transport`] bound to one address of a [`SimNetwork`].
///
/// It stays usable until it is shut down, killed through
/// [`SimNetwork::kill`], or replaced by a newer endpoint for the same address;
/// from then on its calls return [`TransportError::Closed`].
pub struct SimTransport {
    net: SimNetwork,
    addr: String,
    id: u64,
    closed: Arc<Closed>,
}

type Reply = Result<Bytes, TransportError>;

/// Whether an endpoint was closed, with its waiting calls woken in the
/// order they began to wait (deterministic, unlike tokio's `watch`).
#[derive(Default)]
struct Closed {
    closed: AtomicBool,
    changed: Notify,
}

impl Closed {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Returns once the endpoint is closed.
    async fn wait(&self) {
        wait_until(&self.changed, || self.is_closed()).await;
    }
}

/// Returns once `done` holds, checking it again each time `changed` wakes
/// its waiters (first come, first served, unlike tokio's `watch`, whose
/// random wake-up order made a seed's runs differ).
async fn wait_until(changed: &Notify, done: impl Fn() -> bool) {
    loop {
        let notified = changed.notified();
        tokio::pin!(notified);
        // Registered before the check, so a change in between still wakes us.
        notified.as_mut().enable();
        if done() {
            return;
        }
        notified.await;
    }
}

/// The live endpoint bound to an address. Closing an endpoint removes its slot.
struct Slot {
    id: u64,
    closed: Arc<Closed>,
    handler: Option<Arc<dyn FrameHandler>>,
}

struct State {
    seed: u64,
    rng: ChaCha8Rng,
    next_id: u64,
    slots: BTreeMap<String, Slot>,
    /// Cut links, each stored once as an ordered pair: cuts are symmetric.
    cuts: BTreeSet<(String, String)>,
    /// One-way cuts: frames from the first address to the second are lost.
    one_way: BTreeSet<(String, String)>,
    isolated: BTreeSet<String>,
    /// Paused nodes: legs to them wait (see [`SimNetwork::pause`]).
    paused: BTreeSet<String>,
    drop_rate: f64,
    duplicate_rate: f64,
    delay: (Duration, Duration),
    max_frame: usize,
    stats: NetStats,
}

/// The fate of one call, drawn when it starts.
struct Plan {
    request_lost: bool,
    request_delay: Duration,
    response_lost: bool,
    response_delay: Duration,
    /// A second copy of the request is delivered after this delay (its
    /// response goes nowhere), as a network that duplicates frames does.
    duplicate: Option<Duration>,
}

impl State {
    /// Always six draws, so the draw sequence depends only on the calls made.
    fn draw(&mut self) -> Plan {
        let (min, max) = self.delay;
        let delay = |rng: &mut ChaCha8Rng| min + (max - min).mul_f64(rng.random::<f64>());
        let request_lost = self.rng.random::<f64>() < self.drop_rate;
        let request_delay = delay(&mut self.rng);
        let response_lost = self.rng.random::<f64>() < self.drop_rate;
        let response_delay = delay(&mut self.rng);
        let duplicated = self.rng.random::<f64>() < self.duplicate_rate;
        let duplicate_delay = delay(&mut self.rng);
        Plan {
            request_lost,
            request_delay,
            response_lost,
            response_delay,
            duplicate: duplicated.then_some(duplicate_delay),
        }
    }

    /// A node can always reach itself; otherwise isolation or a cut
    /// (both ways, or one way from `a` to `b`) blocks frames from `a` to `b`.
    fn is_cut(&self, a: &str, b: &str) -> bool {
        a != b
            && (self.isolated.contains(a)
                || self.isolated.contains(b)
                || self.cuts.contains(&link(a, b))
                || self.one_way.contains(&(a.to_owned(), b.to_owned())))
    }

    /// Whether a leg from `from` to `to` is lost now; counts it as dropped if so.
    fn leg_lost(&mut self, from: &str, to: &str, drawn_lost: bool) -> bool {
        let lost = drawn_lost || self.is_cut(from, to);
        if lost {
            self.stats.dropped += 1;
            tracing::trace!(from, to, "sim_net: leg lost");
        }
        lost
    }

    /// The endpoint id and handler serving at `addr`, if any.
    fn serving(&self, addr: &str) -> Option<(u64, Arc<dyn FrameHandler>)> {
        let slot = self.slots.get(addr)?;
        Some((slot.id, slot.handler.clone()?))
    }

    /// The handler of endpoint `id` at `addr`, if that endpoint still serves.
    fn handler_of(&self, addr: &str, id: u64) -> Option<Arc<dyn FrameHandler>> {
        self.serving(addr).filter(|(serving, _)| *serving == id).map(|(_, h)| h)
    }

    fn close(&mut self, addr: &str) {
        if let Some(slot) = self.slots.remove(addr) {
            slot.closed.close();
        }
    }
}

/// The default frame limit, as the TCP transport's.
const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

fn link(a: &str, b: &str) -> (String, String) {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    (lo.to_owned(), hi.to_owned())
}

fn unreachable(peer: &str, reason: &str) -> TransportError {
    TransportError::Unreachable { peer: peer.to_owned(), reason: reason.to_owned() }
}

impl SimNetwork {
    /// Creates an empty network: no endpoints, no cuts, no drops, no delay.
    /// All its randomness comes from a ChaCha8 generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        let state = State {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            next_id: 0,
            slots: BTreeMap::new(),
            cuts: BTreeSet::new(),
            one_way: BTreeSet::new(),
            isolated: BTreeSet::new(),
            paused: BTreeSet::new(),
            drop_rate: 0.0,
            duplicate_rate: 0.0,
            delay: (Duration::ZERO, Duration::ZERO),
            max_frame: DEFAULT_MAX_FRAME,
            stats: NetStats::default(),
        };
        Self { state: Arc::new(Mutex::new(state)), resumed: Arc::new(Notify::new()) }
    }

    /// Freezes the node at `addr` as `SIGSTOP` does: requests to it are
    /// held (not lost) and handled only once it is [resumed](SimNetwork::resume),
    /// and it sends no response meanwhile; callers wait out their deadlines.
    pub fn pause(&self, addr: &str) {
        tracing::debug!(addr, "sim_net: pause");
        self.lock().paused.insert(addr.to_owned());
    }

    /// Lets a [paused](SimNetwork::pause) node run again: it handles the
    /// requests held for it, late, and sends their responses.
    pub fn resume(&self, addr: &str) {
        tracing::debug!(addr, "sim_net: resume");
        self.lock().paused.remove(addr);
        self.resumed.notify_waiters();
    }

    /// Returns once the node at `addr` is not paused; held legs go on in
    /// the order they were held (see [`wait_until`]).
    async fn running(&self, addr: &str) {
        wait_until(&self.resumed, || !self.lock().paused.contains(addr)).await;
    }

    /// Sets the largest frame, request or response, the network carries
    /// (default 16 MiB). A larger request fails the call with
    /// [`TransportError::FrameTooLarge`]; a larger response resets the
    /// connection ([`TransportError::Unreachable`]).
    pub fn set_max_frame(&self, max: usize) {
        self.lock().max_frame = max;
    }

    /// The largest frame the network carries.
    pub fn max_frame(&self) -> usize {
        self.lock().max_frame
    }

    /// The seed this network was created with, to log and replay a failing run.
    pub fn seed(&self) -> u64 {
        self.lock().seed
    }

    /// Returns a transport bound to `addr`, not yet serving.
    ///
    /// An earlier endpoint for the same address is closed as if killed, so a
    /// restarted node can take over its address. Cuts involving `addr` remain.
    pub fn endpoint(&self, addr: &str) -> Arc<SimTransport> {
        let closed = Arc::new(Closed::default());
        let mut state = self.lock();
        state.close(addr);
        state.next_id += 1;
        let id = state.next_id;
        let slot = Slot { id, closed: Arc::clone(&closed), handler: None };
        state.slots.insert(addr.to_owned(), slot);
        Arc::new(SimTransport { net: self.clone(), addr: addr.to_owned(), id, closed })
    }

    /// Makes each leg of each later call lost with probability `p`.
    ///
    /// # Panics
    /// If `p` is not within `0.0..=1.0`.
    pub fn set_drop_rate(&self, p: f64) {
        assert!((0.0..=1.0).contains(&p), "drop rate {p} not in [0, 1]");
        self.lock().drop_rate = p;
    }

    /// Makes each later request delivered twice with probability `p`: the
    /// copy arrives after its own delay, is handled like the original, and
    /// its response goes nowhere.
    ///
    /// # Panics
    /// If `p` is not within `0.0..=1.0`.
    pub fn set_duplicate_rate(&self, p: f64) {
        assert!((0.0..=1.0).contains(&p), "duplicate rate {p} not in [0, 1]");
        self.lock().duplicate_rate = p;
    }

    /// Loses every frame from `from` to `to` (requests it sends, responses
    /// it returns), while frames from `to` to `from` still arrive: a
    /// one-way partition.
    pub fn cut_one_way(&self, from: &str, to: &str) {
        tracing::debug!(from, to, "sim_net: one-way cut");
        if from != to {
            self.lock().one_way.insert((from.to_owned(), to.to_owned()));
        }
    }

    /// Makes each delivered leg of each later call wait a uniformly drawn
    /// time in `[min, max]` (on tokio's clock), so a round trip takes at
    /// least `2 * min` and at most `2 * max` plus the handler's time.
    ///
    /// # Panics
    /// If `min > max`.
    pub fn set_delay(&self, min: Duration, max: Duration) {
        assert!(min <= max, "delay min {min:?} exceeds max {max:?}");
        self.lock().delay = (min, max);
    }

    /// Cuts every link between an address in `side_a` and one in `side_b`,
    /// both ways, in addition to earlier cuts. Messages on a cut link are lost.
    pub fn partition(&self, side_a: &[&str], side_b: &[&str]) {
        tracing::debug!(?side_a, ?side_b, "sim_net: partition");
        let mut state = self.lock();
        for a in side_a {
            for b in side_b.iter().filter(|b| *b != a) {
                state.cuts.insert(link(a, b));
            }
        }
    }

    /// Cuts `addr` from every other address, including ones added later.
    pub fn isolate(&self, addr: &str) {
        tracing::debug!(addr, "sim_net: isolate");
        self.lock().isolated.insert(addr.to_owned());
    }

    /// Removes every cut (both-way and one-way) and isolation and sets the
    /// drop and duplicate rates back to 0. Delays, paused and killed nodes
    /// are left as they are.
    pub fn heal(&self) {
        tracing::debug!("sim_net: heal");
        let mut state = self.lock();
        state.cuts.clear();
        state.one_way.clear();
        state.isolated.clear();
        state.drop_rate = 0.0;
        state.duplicate_rate = 0.0;
    }

    /// Crashes the node at `addr`: it stops serving at once, calls to it fail
    /// with [`TransportError::Refused`] (in flight: `Unreachable`), and its own calls, in flight or
    /// later, fail with [`TransportError::Closed`]. Requests it was already
    /// handling finish, but their responses are never sent.
    pub fn kill(&self, addr: &str) {
        tracing::debug!(addr, "sim_net: kill");
        self.lock().close(addr);
    }

    /// Whether no cut separates `from` and `to` and a node is serving at `to`.
    /// Random drops are not considered.
    pub fn is_reachable(&self, from: &str, to: &str) -> bool {
        let state = self.lock();
        !state.is_cut(from, to) && state.serving(to).is_some()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> NetStats {
        self.lock().stats
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a call: the returned receiver gets the reply, or errors if a leg is lost.
    fn send(&self, from: &str, to: &str, frame: Bytes) -> Result<oneshot::Receiver<Reply>, TransportError> {
        let (reply, receiver) = oneshot::channel();
        let mut state = self.lock();
        if frame.len() > state.max_frame {
            return Err(TransportError::FrameTooLarge { size: frame.len(), max: state.max_frame });
        }
        state.stats.calls += 1;
        let plan = state.draw();
        let Some((target, _)) = state.serving(to) else {
            state.stats.refused += 1;
            return Err(TransportError::Refused { peer: to.to_owned(), reason: "connection refused".into() });
        };
        if let Some(delay) = plan.duplicate {
            let copy = Plan {
                request_lost: false,
                request_delay: delay,
                response_lost: true,
                response_delay: Duration::ZERO,
                duplicate: None,
            };
            let (net, from, to, frame) = (self.clone(), from.to_owned(), to.to_owned(), frame.clone());
            // Nobody waits for the copy's response.
            let (nowhere, _) = oneshot::channel();
            tokio::spawn(net.deliver(from, to, target, frame, copy, nowhere));
        }
        if !state.leg_lost(from, to, plan.request_lost) {
            let (net, from, to) = (self.clone(), from.to_owned(), to.to_owned());
            tokio::spawn(net.deliver(from, to, target, frame, plan, reply));
        }
        Ok(receiver)
    }

    /// Carries a request to endpoint `target` at `to`, runs its handler and carries the response back.
    async fn deliver(
        self,
        from: String,
        to: String,
        target: u64,
        frame: Bytes,
        plan: Plan,
        reply: oneshot::Sender<Reply>,
    ) {
        if !plan.request_delay.is_zero() {
            tokio::time::sleep(plan.request_delay).await;
        }
        self.running(&to).await;
        let handler = {
            let mut state = self.lock();
            if state.leg_lost(&from, &to, false) {
                return;
            }
            let Some(handler) = state.handler_of(&to, target) else {
                state.stats.refused += 1;
                let _ = reply.send(Err(unreachable(&to, "connection reset")));
                return;
            };
            state.stats.delivered += 1;
            handler
        };
        let response = handler.handle(frame).await;
        self.running(&to).await;
        {
            let mut state = self.lock();
            if response.len() > state.max_frame {
                tracing::warn!(from = %to, size = response.len(), "sim_net: response over the frame limit dropped");
                let _ = reply.send(Err(unreachable(&to, "connection reset: response over the frame limit")));
                return;
            }
            if state.leg_lost(&to, &from, plan.response_lost) {
                return;
            }
            if state.handler_of(&to, target).is_none() {
                state.stats.refused += 1;
                let _ = reply.send(Err(unreachable(&to, "connection reset")));
                return;
            }
        }
        if !plan.response_delay.is_zero() {
            tokio::time::sleep(plan.response_delay).await;
        }
        {
            let mut state = self.lock();
            if state.leg_lost(&to, &from, false) {
                return;
            }
            state.stats.delivered += 1;
        }
        let _ = reply.send(Ok(response));
    }
}

#[async_trait]
impl Transport for SimTransport {
    fn local_addr(&self) -> &str {
        &self.addr
    }

    /// Registers `handler` for this endpoint's address.
    ///
    /// Fails with [`TransportError::Listen`] if this endpoint already serves or was closed.
    async fn serve(&self, handler: Arc<dyn FrameHandler>) -> Result<(), TransportError> {
        let mut state = self.net.lock();
        let reason = match state.slots.get_mut(&self.addr) {
            Some(slot) if slot.id == self.id && slot.handler.is_none() => {
                slot.handler = Some(handler);
                return Ok(());
            }
            Some(slot) if slot.id == self.id => "already serving",
            _ => "endpoint was shut down, killed or replaced",
        };
        Err(TransportError::Listen { addr: self.addr.clone(), reason: reason.to_owned() })
    }

    /// Runs one call through the simulated network, as the module docs describe.
    async fn call(&self, to: &str, frame: Bytes, timeout: Duration) -> Result<Bytes, TransportError> {
        if self.closed.is_closed() {
            return Err(TransportError::Closed);
        }
        let receiver = self.net.send(&self.addr, to, frame)?;
        let reply = async {
            match receiver.await {
                Ok(reply) => reply,
                // A lost leg: nothing will come, only the deadline ends the wait.
                Err(_) => std::future::pending().await,
            }
        };
        let outcome = async {
            tokio::select! {
                biased;
                reply = reply => reply,
                () = self.closed.wait() => Err(TransportError::Closed),
            }
        };
        tokio::time::timeout(timeout, outcome)
            .await
            .unwrap_or_else(|_| Err(TransportError::Timeout { peer: to.to_owned(), timeout }))
    }

    /// Stops serving (unless a newer endpoint took the address over) and
    /// fails this endpoint's calls, in flight or later, with [`TransportError::Closed`].
    async fn shutdown(&self) {
        self.closed.close();
        let mut state = self.net.lock();
        if state.slots.get(&self.addr).is_some_and(|s| s.id == self.id) {
            state.slots.remove(&self.addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::time::Instant;

    use super::*;
    use crate::transport_load::Echo;

    const T: Duration = Duration::from_secs(1);

    /// Counts requests; optionally isolates a node before answering.
    struct Counting {
        hits: Arc<AtomicUsize>,
        isolate: Option<(SimNetwork, &'static str)>,
    }

    #[async_trait]
    impl FrameHandler for Counting {
        async fn handle(&self, frame: Bytes) -> Bytes {
            self.hits.fetch_add(1, Ordering::SeqCst);
            if let Some((net, addr)) = &self.isolate {
                net.isolate(addr);
            }
            frame
        }
    }

    /// Records the frames it handles, in order.
    #[derive(Default)]
    struct Recording(Mutex<Vec<Bytes>>);

    #[async_trait]
    impl FrameHandler for Recording {
        async fn handle(&self, frame: Bytes) -> Bytes {
            self.0.lock().unwrap().push(frame.clone());
            frame
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_held_by_a_pause_are_handled_in_the_order_they_arrived() {
        let net = SimNetwork::new(5);
        let a = serving(&net, "a").await;
        let recording = Arc::new(Recording::default());
        net.endpoint("b").serve(Arc::clone(&recording) as Arc<dyn FrameHandler>).await.unwrap();
        net.pause("b");
        let frames: Vec<Bytes> = (0..32u8).map(|i| Bytes::from(vec![i])).collect();
        let mut calls = Vec::new();
        for frame in &frames {
            let (a, frame) = (Arc::clone(&a), frame.clone());
            calls.push(tokio::spawn(async move { a.call("b", frame, T).await }));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(recording.0.lock().unwrap().is_empty(), "a paused node handles nothing");
        net.resume("b");
        for (call, frame) in calls.into_iter().zip(&frames) {
            assert_eq!(call.await.unwrap().unwrap(), *frame);
        }
        assert_eq!(*recording.0.lock().unwrap(), frames, "a seed's runs must replay");
    }

    async fn serving(net: &SimNetwork, addr: &str) -> Arc<SimTransport> {
        let endpoint = net.endpoint(addr);
        endpoint.serve(Arc::new(Echo)).await.unwrap();
        endpoint
    }

    /// A network with echo nodes "a" and "b".
    async fn pair(seed: u64) -> (SimNetwork, Arc<SimTransport>, Arc<SimTransport>) {
        let net = SimNetwork::new(seed);
        let (a, b) = (serving(&net, "a").await, serving(&net, "b").await);
        (net, a, b)
    }

    fn ping() -> Bytes {
        Bytes::from_static(b"ping")
    }

    fn is_timeout(result: &Result<Bytes, TransportError>, peer: &str) -> bool {
        matches!(result, Err(TransportError::Timeout { peer: p, timeout }) if p == peer && *timeout == T)
    }

    async fn counting(net: &SimNetwork, addr: &str) -> (Arc<SimTransport>, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let endpoint = net.endpoint(addr);
        endpoint.serve(Arc::new(Counting { hits: Arc::clone(&hits), isolate: None })).await.unwrap();
        (endpoint, hits)
    }

    #[tokio::test(start_paused = true)]
    async fn a_duplicated_request_is_handled_twice_and_answered_once() {
        let net = SimNetwork::new(4);
        let (a, a_hits) = counting(&net, "a").await;
        let (b, b_hits) = counting(&net, "b").await;
        net.set_duplicate_rate(1.0);
        net.set_delay(Duration::from_millis(1), Duration::from_millis(5));
        assert_eq!(a.call("b", ping(), T).await.unwrap(), ping());
        let deadline = Instant::now() + T;
        while b_hits.load(Ordering::SeqCst) < 2 {
            assert!(Instant::now() < deadline, "the copy was never handled");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        net.heal();
        b.call("a", ping(), T).await.unwrap();
        assert_eq!(a_hits.load(Ordering::SeqCst), 1, "healing stops duplication");
    }

    #[tokio::test(start_paused = true)]
    async fn a_one_way_cut_loses_frames_in_its_direction_only() {
        let net = SimNetwork::new(5);
        let (a, a_hits) = counting(&net, "a").await;
        let (b, b_hits) = counting(&net, "b").await;
        net.cut_one_way("a", "b");
        assert!(is_timeout(&a.call("b", ping(), T).await, "b"));
        assert_eq!(b_hits.load(Ordering::SeqCst), 0, "a's request never reached b");
        assert!(is_timeout(&b.call("a", ping(), T).await, "a"), "a's response to b is lost");
        assert_eq!(a_hits.load(Ordering::SeqCst), 1, "b's request reached a");
        net.heal();
        assert_eq!(a.call("b", ping(), T).await.unwrap(), ping());
    }

    #[tokio::test(start_paused = true)]
    async fn round_trip_through_echo() {
        let (net, a, b) = pair(1).await;
        assert_eq!(a.call("b", ping(), T).await.unwrap(), ping());
        assert_eq!(a.local_addr(), "a");
        assert!(matches!(b.serve(Arc::new(Echo)).await, Err(TransportError::Listen { .. })));
        let stats = net.stats();
        assert_eq!((stats.calls, stats.delivered, stats.dropped, stats.refused), (1, 2, 0, 0));
        assert_eq!(net.seed(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_address_is_unreachable_at_once() {
        let net = SimNetwork::new(2);
        let a = serving(&net, "a").await;
        let start = Instant::now();
        let result = a.call("nowhere", ping(), T).await;
        assert!(matches!(result, Err(TransportError::Refused { peer, .. }) if peer == "nowhere"));
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(net.stats().refused, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn partition_times_out_and_heal_restores() {
        let (net, a, b) = pair(3).await;
        let _c = serving(&net, "c").await;
        net.partition(&["a"], &["b"]);
        assert!(!net.is_reachable("a", "b") && !net.is_reachable("b", "a"));
        let start = Instant::now();
        assert!(is_timeout(&a.call("b", ping(), T).await, "b"));
        assert_eq!(start.elapsed(), T);
        assert!(is_timeout(&b.call("a", ping(), T).await, "a"));
        assert!(a.call("c", ping(), T).await.is_ok());
        net.heal();
        assert!(net.is_reachable("a", "b"));
        assert_eq!(a.call("b", ping(), T).await.unwrap(), ping());
    }

    #[tokio::test(start_paused = true)]
    async fn isolate_cuts_a_node_from_everyone() {
        let net = SimNetwork::new(4);
        let a = serving(&net, "a").await;
        let c = serving(&net, "c").await;
        let _b = serving(&net, "b").await;
        net.set_delay(T / 4, T / 4);
        let caller = Arc::clone(&a);
        let in_flight = tokio::spawn(async move { caller.call("c", ping(), T).await });
        tokio::time::sleep(T / 8).await;
        net.isolate("c"); // while the request is on the wire: it is lost on arrival
        assert!(is_timeout(&in_flight.await.unwrap(), "c"));
        assert_eq!((net.stats().delivered, net.stats().dropped), (0, 1));
        assert!(is_timeout(&a.call("c", ping(), T).await, "c"));
        assert!(is_timeout(&c.call("a", ping(), T).await, "a"));
        assert!(c.call("c", ping(), T).await.is_ok(), "a node still reaches itself");
        assert!(a.call("b", ping(), T).await.is_ok());
        assert!(!net.is_reachable("b", "c") && net.is_reachable("a", "b"));
    }

    #[tokio::test(start_paused = true)]
    async fn full_drop_rate_times_out_and_counts_drops() {
        let (net, a, _b) = pair(5).await;
        net.set_drop_rate(1.0);
        assert!(is_timeout(&a.call("b", ping(), T).await, "b"));
        let stats = net.stats();
        assert!(stats.dropped > 0);
        assert_eq!(stats.delivered, 0);
        net.heal();
        assert!(a.call("b", ping(), T).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn killed_node_restarts_on_a_new_endpoint() {
        let (net, a, b) = pair(6).await;
        net.set_delay(T, T);
        let caller = Arc::clone(&a);
        let in_flight = tokio::spawn(async move { caller.call("b", ping(), 10 * T).await });
        tokio::time::sleep(T / 2).await;
        net.kill("b");
        let reset = in_flight.await.unwrap();
        assert!(
            matches!(reset, Err(TransportError::Unreachable { reason, .. }) if reason == "connection reset")
        );
        assert_eq!(net.stats().refused, 1);
        net.set_delay(Duration::ZERO, Duration::ZERO);
        let start = Instant::now();
        assert!(matches!(a.call("b", ping(), T).await, Err(TransportError::Refused { .. })));
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(b.call("a", ping(), T).await, Err(TransportError::Closed));
        assert!(b.serve(Arc::new(Echo)).await.is_err());
        let b2 = serving(&net, "b").await;
        assert_eq!(a.call("b", ping(), T).await.unwrap(), ping());
        assert!(b2.call("a", ping(), T).await.is_ok());
        b.shutdown().await; // the old endpoint must not deregister its successor
        assert!(a.call("b", ping(), T).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn handler_runs_when_its_response_is_lost() {
        let net = SimNetwork::new(7);
        let a = serving(&net, "a").await;
        let b = net.endpoint("b");
        let hits = Arc::new(AtomicUsize::new(0));
        let handler = Counting { hits: Arc::clone(&hits), isolate: Some((net.clone(), "b")) };
        b.serve(Arc::new(handler)).await.unwrap();
        assert!(is_timeout(&a.call("b", ping(), T).await, "b"));
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert_eq!((net.stats().delivered, net.stats().dropped), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn request_still_handled_after_caller_gives_up() {
        let net = SimNetwork::new(8);
        let a = serving(&net, "a").await;
        let hits = Arc::new(AtomicUsize::new(0));
        let b = net.endpoint("b");
        b.serve(Arc::new(Counting { hits: Arc::clone(&hits), isolate: None })).await.unwrap();
        net.set_delay(2 * T, 2 * T);
        assert!(is_timeout(&a.call("b", ping(), T).await, "b"));
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        tokio::time::sleep(2 * T).await;
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    async fn outcomes(seed: u64) -> (Vec<Option<Bytes>>, NetStats) {
        let (net, a, _b) = pair(seed).await;
        net.set_drop_rate(0.5);
        net.set_delay(Duration::from_millis(1), Duration::from_millis(20));
        let mut seen = Vec::new();
        for i in 0..64u8 {
            seen.push(a.call("b", Bytes::from(vec![i]), T).await.ok());
        }
        (seen, net.stats())
    }

    #[tokio::test(start_paused = true)]
    async fn same_seed_same_outcomes() {
        let (first, stats) = outcomes(42).await;
        assert_eq!((first.clone(), stats), outcomes(42).await);
        assert!(first.iter().any(Option::is_some) && first.iter().any(Option::is_none));
        assert_ne!(first, outcomes(43).await.0);
    }

    #[tokio::test(start_paused = true)]
    async fn delay_bounds_each_leg() {
        let (net, a, _b) = pair(9).await;
        let (min, max) = (Duration::from_millis(10), Duration::from_millis(50));
        net.set_delay(min, max);
        let mut elapsed = BTreeSet::new();
        for _ in 0..20 {
            let start = Instant::now();
            a.call("b", ping(), T).await.unwrap();
            let took = start.elapsed();
            assert!(took >= 2 * min && took <= 2 * max, "round trip took {took:?}");
            elapsed.insert(took);
        }
        assert!(elapsed.len() > 1, "delays should vary");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_closes_calls_in_flight_and_later() {
        let (net, a, _b) = pair(10).await;
        net.set_delay(T, T);
        let caller = Arc::clone(&a);
        let in_flight = tokio::spawn(async move { caller.call("b", ping(), 10 * T).await });
        tokio::time::sleep(T / 2).await;
        a.shutdown().await;
        assert_eq!(in_flight.await.unwrap(), Err(TransportError::Closed));
        assert_eq!(a.call("b", ping(), T).await, Err(TransportError::Closed));
        assert!(!net.is_reachable("b", "a"));
    }

    #[tokio::test(start_paused = true)]
    async fn thousand_concurrent_calls_succeed() {
        let (net, a, _b) = pair(11).await;
        net.set_delay(Duration::from_millis(1), Duration::from_millis(5));
        let calls: Vec<_> = (0..1000u32)
            .map(|i| {
                let a = Arc::clone(&a);
                let frame = Bytes::from(i.to_be_bytes().to_vec());
                tokio::spawn(async move { (a.call("b", frame.clone(), T).await, frame) })
            })
            .collect();
        for call in calls {
            let (result, frame) = call.await.unwrap();
            assert_eq!(result.unwrap(), frame);
        }
        assert_eq!(net.stats().delivered, 2000);
    }
}
