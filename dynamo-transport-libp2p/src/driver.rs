//! The task that owns the swarm.
//!
//! libp2p's `Swarm` is a single-owner state machine: one task polls it and
//! everything else talks to that task. [`Driver::run`] selects over
//!
//! - the stop signal from [`Transport::shutdown`](dynamo_core::transport::Transport::shutdown)
//!   (or the transport being dropped),
//! - calls from the [`Libp2pTransport`](crate::Libp2pTransport),
//! - handler tasks finishing (their response goes back on the request's
//!   `ResponseChannel`),
//! - swarm events (responses, failures, connections),
//! - a once-a-second sweep of calls libp2p never settled.
//!
//! Calls to one peer are capped at `max_in_flight_per_peer`; the rest wait
//! in a per-peer queue and start as earlier ones settle, skipping those
//! whose caller has given up.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ResponseChannel};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use dynamo_core::transport::FrameHandler;

use crate::codec::{FrameCodec, Reply, PROTOCOL};

pub(crate) type Behaviour = request_response::Behaviour<FrameCodec>;
type Event = request_response::Event<Bytes, Reply>;

/// How a call settled, before the caller turns it into a `TransportError`
/// (it knows the address text and its timeout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The request was not sent: no connection could be made, or the peer
    /// does not speak the protocol.
    Refused(String),
    /// The peer could not be reached, or broke off the exchange (the
    /// request may have been handled).
    Unreachable(String),
    /// libp2p's request timeout elapsed before the response.
    TimedOut,
    /// This transport shut down.
    Closed,
}

pub(crate) type Outcome = Result<Bytes, Failure>;

/// One call, from its handle to the driver.
pub(crate) struct Call {
    pub(crate) peer: PeerId,
    pub(crate) addr: Multiaddr,
    pub(crate) frame: Bytes,
    pub(crate) reply: oneshot::Sender<Outcome>,
}

/// A call handed to libp2p, until it settles.
struct Pending {
    peer: PeerId,
    reply: oneshot::Sender<Outcome>,
    sent_at: Instant,
}

/// Calls to one peer: how many are with libp2p, and who waits.
#[derive(Default)]
struct PeerCalls {
    in_flight: usize,
    queue: VecDeque<Call>,
}

/// Queued calls are pruned of abandoned ones when the queue reaches this
/// length, and at each doubling after.
const PRUNE_QUEUE_AT: usize = 64;

/// Dial errors remembered at most (one per peer); beyond, they are
/// forgotten and `DialFailure` explains itself less.
const MAX_DIAL_ERRORS: usize = 1024;

/// How often calls that libp2p has not settled are checked.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Grace beyond libp2p's own request timeout before a call is settled by
/// the sweep.
const SWEEP_GRACE: Duration = Duration::from_secs(5);

pub(crate) struct Driver {
    swarm: Swarm<Behaviour>,
    calls: mpsc::Receiver<Call>,
    stop: oneshot::Receiver<()>,
    handler: Arc<OnceLock<Arc<dyn FrameHandler>>>,
    max_frame: usize,
    max_in_flight_per_peer: usize,
    request_timeout: Duration,
    handlers: JoinSet<(ResponseChannel<Reply>, Bytes)>,
    pending: HashMap<OutboundRequestId, Pending>,
    peers: HashMap<PeerId, PeerCalls>,
    /// When each connection last brought a response or a request.
    last_heard: HashMap<ConnectionId, Instant>,
    /// Connections being closed as silent, with their peer and since when.
    closing: HashMap<ConnectionId, (PeerId, Instant)>,
    /// The last dial error per peer, to explain `DialFailure`.
    dial_errors: HashMap<PeerId, String>,
}

impl Driver {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        calls: mpsc::Receiver<Call>,
        stop: oneshot::Receiver<()>,
        handler: Arc<OnceLock<Arc<dyn FrameHandler>>>,
        max_frame: usize,
        max_in_flight_per_peer: usize,
        request_timeout: Duration,
    ) -> Driver {
        Driver {
            swarm,
            calls,
            stop,
            handler,
            max_frame,
            max_in_flight_per_peer,
            request_timeout,
            handlers: JoinSet::new(),
            pending: HashMap::new(),
            peers: HashMap::new(),
            last_heard: HashMap::new(),
            closing: HashMap::new(),
            dial_errors: HashMap::new(),
        }
    }

    /// Runs until told to stop or until the transport is dropped,
    /// then fails whatever is in flight with [`Failure::Closed`], stops the
    /// handlers still running and drops the swarm (closing the listener
    /// and every connection).
    pub(crate) async fn run(mut self) {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut self.stop => break,
                call = self.calls.recv() => match call {
                    Some(call) => self.start(call),
                    None => break,
                },
                Some(done) = self.handlers.join_next(), if !self.handlers.is_empty() => self.respond(done),
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = sweep.tick() => self.sweep(),
            }
        }
        self.close();
    }

    fn close(&mut self) {
        self.calls.close();
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(Failure::Closed));
        }
        for (_, calls) in self.peers.drain() {
            for call in calls.queue {
                let _ = call.reply.send(Err(Failure::Closed));
            }
        }
        // Calls that raced the shutdown into the channel.
        while let Ok(call) = self.calls.try_recv() {
            let _ = call.reply.send(Err(Failure::Closed));
        }
        self.handlers.abort_all();
    }

    /// Hands `call` to libp2p, or queues it when the peer is at its cap.
    fn start(&mut self, call: Call) {
        if call.reply.is_closed() {
            return; // The caller gave up while the call sat in the channel.
        }
        let peer = call.peer;
        let calls = self.peers.entry(peer).or_default();
        let len = calls.queue.len();
        if len >= PRUNE_QUEUE_AT && len.is_power_of_two() {
            calls.queue.retain(|c| !c.reply.is_closed());
        }
        calls.queue.push_back(call);
        self.pump(peer);
    }

    /// Starts queued calls to `peer` while it is under its cap, unless a
    /// connection to it is being closed: libp2p would still route calls
    /// onto that connection, only to fail them when it goes.
    fn pump(&mut self, peer: PeerId) {
        let blocked = self.closing.values().any(|(p, _)| *p == peer);
        let Some(calls) = self.peers.get_mut(&peer) else { return };
        while !blocked && calls.in_flight < self.max_in_flight_per_peer {
            let Some(call) = calls.queue.pop_front() else { break };
            if call.reply.is_closed() {
                continue;
            }
            calls.in_flight += 1;
            let Call { peer, addr, frame, reply } = call;
            let id = self.swarm.behaviour_mut().send_request_with_addresses(&peer, frame, vec![addr]);
            self.pending.insert(id, Pending { peer, reply, sent_at: Instant::now() });
        }
        if calls.in_flight == 0 && calls.queue.is_empty() {
            self.peers.remove(&peer);
        }
    }

    /// Settles call `id` (if still known) and lets the next queued call to
    /// its peer start.
    fn settle(&mut self, id: OutboundRequestId, outcome: Outcome) {
        let Some(p) = self.pending.remove(&id) else { return };
        let _ = p.reply.send(outcome);
        if let Some(calls) = self.peers.get_mut(&p.peer) {
            calls.in_flight = calls.in_flight.saturating_sub(1);
        }
        self.pump(p.peer);
    }

    /// A handler finished: its response goes back on the request's stream.
    fn respond(&mut self, done: Result<(ResponseChannel<Reply>, Bytes), JoinError>) {
        let (channel, frame) = match done {
            Ok(done) => done,
            Err(e) => {
                // The channel went down with the task: libp2p closes the
                // stream and the caller sees it end without a reply.
                if e.is_panic() {
                    tracing::error!("frame handler panicked; its request is dropped");
                }
                return;
            }
        };
        let reply = if frame.len() > self.max_frame {
            tracing::warn!(
                size = frame.len(),
                max = self.max_frame,
                "handler response over the frame limit; refusing the request instead"
            );
            Reply::refused(format!(
                "response of {} bytes exceeds the server's limit of {} bytes",
                frame.len(),
                self.max_frame
            ))
        } else {
            Reply::Frame(frame)
        };
        if self.swarm.behaviour_mut().send_response(channel, reply).is_err() {
            tracing::debug!("response dropped: the request stream is gone (timed out or closed)");
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<Event>) {
        match event {
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, .. } => {
                self.dial_errors.remove(&peer_id);
                tracing::debug!(peer = %peer_id, ?connection_id, "connection established");
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, cause, .. } => {
                self.last_heard.remove(&connection_id);
                if self.closing.remove(&connection_id).is_some() {
                    self.pump(peer_id);
                }
                tracing::debug!(peer = %peer_id, ?connection_id, ?cause, "connection closed");
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } => {
                if self.dial_errors.len() >= MAX_DIAL_ERRORS {
                    self.dial_errors.clear();
                }
                self.dial_errors.insert(peer, error.to_string());
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                tracing::debug!(from = %send_back_addr, %error, "incoming connection failed");
            }
            SwarmEvent::ListenerClosed { addresses, reason, .. } => {
                tracing::warn!(?addresses, ?reason, "listener closed");
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "listener error");
            }
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: Event) {
        match event {
            Event::Message { peer, connection_id, message } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.last_heard.insert(connection_id, Instant::now());
                    self.on_request(peer, request, channel);
                }
                request_response::Message::Response { request_id, response } => {
                    self.last_heard.insert(connection_id, Instant::now());
                    let outcome = match response {
                        Reply::Frame(frame) => Ok(frame),
                        Reply::Refused(reason) => {
                            Err(Failure::Unreachable(format!("peer refused the request: {reason}")))
                        }
                    };
                    self.settle(request_id, outcome);
                }
            },
            Event::OutboundFailure { peer, connection_id, request_id, error } => {
                if matches!(error, OutboundFailure::Timeout) {
                    self.close_if_silent(peer, connection_id, request_id);
                }
                let failure = self.explain(peer, error);
                self.settle(request_id, Err(failure));
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound request failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    /// Runs the handler on an inbound request, or refuses it when nothing
    /// serves yet.
    fn on_request(&mut self, peer: PeerId, request: Bytes, channel: ResponseChannel<Reply>) {
        match self.handler.get() {
            Some(handler) => {
                let handler = Arc::clone(handler);
                self.handlers.spawn(async move {
                    let response = handler.handle(request).await;
                    (channel, response)
                });
            }
            None => {
                tracing::debug!(%peer, "request before serve; refused");
                let reply = Reply::refused("not serving yet");
                let _ = self.swarm.behaviour_mut().send_response(channel, reply);
            }
        }
    }

    /// After a request timed out: when its connection brought nothing (no
    /// response, no request) since the request was sent, the connection is taken for dead (a
    /// half-open TCP connection never errors by itself) and closed, so the
    /// next call dials afresh.
    fn close_if_silent(&mut self, peer: PeerId, connection: ConnectionId, id: OutboundRequestId) {
        let Some(sent_at) = self.pending.get(&id).map(|p| p.sent_at) else { return };
        let silent = self.last_heard.get(&connection).is_none_or(|at| *at < sent_at);
        if silent && self.swarm.close_connection(connection) {
            tracing::warn!(%peer, ?connection, "nothing heard on the connection within the request timeout; closing it");
            self.closing.insert(connection, (peer, Instant::now()));
        }
    }

    fn explain(&mut self, peer: PeerId, error: OutboundFailure) -> Failure {
        match error {
            OutboundFailure::DialFailure => Failure::Refused(match self.dial_errors.get(&peer) {
                Some(reason) => format!("dial failed: {reason}"),
                None => "dial failed".to_owned(),
            }),
            OutboundFailure::Timeout => Failure::TimedOut,
            OutboundFailure::ConnectionClosed => {
                Failure::Unreachable("connection closed before the response".to_owned())
            }
            OutboundFailure::UnsupportedProtocols => {
                Failure::Refused(format!("peer does not speak {PROTOCOL}"))
            }
            OutboundFailure::Io(e) => Failure::Unreachable(format!("stream failed: {e}")),
        }
    }

    /// Settles calls libp2p should long have settled (its request timeout
    /// plus a grace period), and stops waiting for connections that take
    /// long to close; a safety net, not the normal path.
    fn sweep(&mut self) {
        if let Some(cutoff) = Instant::now().checked_sub(SWEEP_GRACE) {
            let slow: Vec<(ConnectionId, PeerId)> = self
                .closing
                .iter()
                .filter(|(_, (_, since))| *since < cutoff)
                .map(|(c, (p, _))| (*c, *p))
                .collect();
            for (connection, peer) in slow {
                self.closing.remove(&connection);
                self.pump(peer);
            }
        }
        let Some(cutoff) = Instant::now().checked_sub(self.request_timeout + SWEEP_GRACE) else { return };
        let stale: Vec<OutboundRequestId> =
            self.pending.iter().filter(|(_, p)| p.sent_at < cutoff).map(|(id, _)| *id).collect();
        for id in stale {
            tracing::warn!(?id, "libp2p never settled a request; timing it out");
            self.settle(id, Err(Failure::TimedOut));
        }
    }
}
