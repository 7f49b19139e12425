//! The simulated network: every message between nodes (Raft RPCs and forwarded client
//! requests) passes through one router that delays, loses, duplicates, reorders and
//! partitions them, with every choice drawn from the run's seeded generator.
//!
//! A call has two legs, request and reply, each with its own fate. A lost leg makes the
//! caller wait for its deadline, as a gRPC call to a black-holed peer does; a refused
//! connection fails fast. The receiving node handles a request in its own task, so a caller
//! that gives up does not cancel work the receiver already started, as in a real server.
//! Raft messages may be duplicated (the copy's reply is dropped); forwarded client requests
//! are not, because the production transport (gRPC over HTTP/2) never duplicates a request.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aspen_core::NodeId;
use aspen_core::convert::millis;
use aspen_node::Node;
use tokio::time::Instant;

use crate::limits::{
    NET_CONNECT_FAIL_MS, NET_DELAY_MS_MAX, NET_DELAY_MS_MIN, NET_DELAY_SPIKE_MS_MAX,
};
use crate::rng::SimRng;
use crate::trace::Trace;

/// What kind of message a call carries, for fault rules and the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgKind {
    Vote = 1,
    PreVote = 2,
    Append = 3,
    Snapshot = 4,
    Forward = 5,
}

impl MsgKind {
    /// Raft messages are idempotent by protocol, so the network may duplicate them.
    fn may_duplicate(self) -> bool {
        !matches!(self, MsgKind::Forward)
    }
}

/// The network faults in force; the nemesis changes them while the run goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetFaults {
    pub loss_ppm: u32,
    pub duplicate_ppm: u32,
    pub spike_ppm: u32,
    pub delay_ms_max: u64,
    /// Directed links that deliver nothing: `(from, to)`.
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    /// Whether a blocked link refuses connections at once (true) or swallows them (false).
    pub blocked_refuses: bool,
}

impl Default for NetFaults {
    fn default() -> Self {
        NetFaults {
            loss_ppm: 0,
            duplicate_ppm: 0,
            spike_ppm: 0,
            delay_ms_max: NET_DELAY_MS_MAX,
            blocked: BTreeSet::new(),
            blocked_refuses: false,
        }
    }
}

/// Who sends: a node id and the incarnation (restart count) the sender belongs to. A crashed
/// incarnation's leftover tasks may still try to send; the network drops what they send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub from: NodeId,
    pub from_incarnation: u64,
    pub to: NodeId,
}

/// Why a call failed, as the caller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// The connection was refused: the request was certainly not delivered.
    Unreachable,
    /// No reply before the deadline: the request may or may not have been handled.
    Timeout,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub refused: u64,
    pub duplicated: u64,
    /// Requests that reached a running receiver, by [`MsgKind`] (index = its number).
    pub arrived_by_kind: [u64; 6],
}

#[derive(Default)]
struct Endpoint {
    /// `None` while the node is down or still starting.
    node: Option<Node>,
    incarnation: u64,
}

struct NetState {
    rng: SimRng,
    faults: NetFaults,
    endpoints: BTreeMap<NodeId, Endpoint>,
    trace: Trace,
    stats: NetStats,
    started: Instant,
}

/// A request leg's fate, drawn when it is sent.
enum Fate {
    Deliver {
        delay_ms: u64,
        copy_delay_ms: Option<u64>,
    },
    Lost,
    Refused,
}

/// The router shared by every node of one run. Cheap to clone.
#[derive(Clone)]
pub struct SimNet {
    state: Arc<Mutex<NetState>>,
}

impl SimNet {
    pub fn new(rng: SimRng) -> SimNet {
        SimNet {
            state: Arc::new(Mutex::new(NetState {
                rng,
                faults: NetFaults::default(),
                endpoints: BTreeMap::new(),
                trace: Trace::default(),
                stats: NetStats::default(),
                started: Instant::now(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Simulated milliseconds since the run started.
    pub fn now_ms(&self) -> u64 {
        millis(self.lock().started.elapsed())
    }

    /// Opens a new incarnation of `id` (its first start or a restart); the node is reachable
    /// once [`SimNet::set_running`] hands it over.
    pub fn begin_incarnation(&self, id: NodeId) -> u64 {
        let mut state = self.lock();
        let endpoint = state.endpoints.entry(id).or_default();
        endpoint.incarnation += 1;
        endpoint.node = None;
        endpoint.incarnation
    }

    pub fn set_running(&self, id: NodeId, incarnation: u64, node: Node) {
        let mut state = self.lock();
        let endpoint = state.endpoints.entry(id).or_default();
        assert_eq!(
            endpoint.incarnation, incarnation,
            "a stale incarnation started"
        );
        endpoint.node = Some(node);
    }

    /// Takes `id` off the network: its calls in flight are lost and its leftover tasks can no
    /// longer send. Returns the node that was running, if any.
    pub fn take_down(&self, id: NodeId) -> Option<Node> {
        let mut state = self.lock();
        let endpoint = state.endpoints.entry(id).or_default();
        endpoint.incarnation += 1;
        endpoint.node.take()
    }

    /// Every running node with its incarnation.
    pub fn running(&self) -> Vec<(NodeId, u64, Node)> {
        self.lock()
            .endpoints
            .iter()
            .filter_map(|(id, e)| e.node.clone().map(|node| (*id, e.incarnation, node)))
            .collect()
    }

    pub fn faults(&self) -> NetFaults {
        self.lock().faults.clone()
    }

    pub fn set_faults(&self, faults: NetFaults) {
        self.lock().faults = faults;
    }

    pub fn stats(&self) -> NetStats {
        self.lock().stats
    }

    /// Adds an event to the trace, stamped with the simulated time.
    pub fn record(&self, words: &[u64], describe: impl FnOnce() -> String) {
        let mut state = self.lock();
        let now_ms = millis(state.started.elapsed());
        let mut stamped = Vec::with_capacity(words.len() + 1);
        stamped.push(now_ms);
        stamped.extend_from_slice(words);
        state
            .trace
            .record(&stamped, || format!("{now_ms:>7}ms {}", describe()));
    }

    pub fn trace(&self) -> Trace {
        self.lock().trace.clone()
    }

    /// Draws from the run's generator (for components that share the network's stream).
    pub fn with_rng<T>(&self, f: impl FnOnce(&mut SimRng) -> T) -> T {
        f(&mut self.lock().rng)
    }

    fn draw_fate(&self, route: Route, kind: MsgKind) -> Fate {
        let mut state = self.lock();
        let state = &mut *state;
        state.stats.sent += 1;
        let sender_alive = state
            .endpoints
            .get(&route.from)
            .is_some_and(|e| e.incarnation == route.from_incarnation);
        let fate = if !sender_alive {
            Fate::Refused
        } else if state.faults.blocked.contains(&(route.from, route.to)) {
            if state.faults.blocked_refuses {
                Fate::Refused
            } else {
                Fate::Lost
            }
        } else if state.rng.chance_ppm(state.faults.loss_ppm) {
            Fate::Lost
        } else {
            let delay_ms = draw_delay(&mut state.rng, &state.faults);
            let copy = kind.may_duplicate() && state.rng.chance_ppm(state.faults.duplicate_ppm);
            let copy_delay_ms = copy.then(|| delay_ms + draw_delay(&mut state.rng, &state.faults));
            Fate::Deliver {
                delay_ms,
                copy_delay_ms,
            }
        };
        let (code, delay) = match &fate {
            Fate::Deliver { delay_ms, .. } => (1, *delay_ms),
            Fate::Lost => (2, 0),
            Fate::Refused => (3, 0),
        };
        match fate {
            Fate::Deliver { copy_delay_ms, .. } if copy_delay_ms.is_some() => {
                state.stats.duplicated += 1
            }
            Fate::Lost => state.stats.lost += 1,
            Fate::Refused => state.stats.refused += 1,
            Fate::Deliver { .. } => {}
        }
        let now_ms = millis(state.started.elapsed());
        let words = [now_ms, 1, route.from, route.to, kind as u64, code, delay];
        state.trace.record(&words, || {
            format!(
                "{now_ms:>7}ms send {:?} {}->{} fate {code} delay {delay}ms",
                kind, route.from, route.to
            )
        });
        fate
    }

    /// The receiving node when a request leg arrives, if it is up and the link still open.
    fn arrive(&self, route: Route, kind: MsgKind, copy: bool) -> Option<(Node, u64)> {
        let mut state = self.lock();
        let state = &mut *state;
        let open = !state.faults.blocked.contains(&(route.from, route.to));
        let target = state
            .endpoints
            .get(&route.to)
            .and_then(|e| e.node.clone().map(|node| (node, e.incarnation)));
        let arrived = if open { target } else { None };
        if arrived.is_some() {
            state.stats.delivered += 1;
            state.stats.arrived_by_kind[kind as usize] += 1;
        } else {
            state.stats.lost += 1;
        }
        let now_ms = millis(state.started.elapsed());
        let code = u64::from(arrived.is_some()) + 2 * u64::from(copy);
        let words = [now_ms, 2, route.from, route.to, kind as u64, code];
        state.trace.record(&words, || {
            format!(
                "{now_ms:>7}ms arrive {:?} {}->{} {}{}",
                kind,
                route.from,
                route.to,
                if arrived.is_some() { "ok" } else { "dropped" },
                if copy { " (copy)" } else { "" }
            )
        });
        arrived
    }

    /// The reply leg's fate: `Some(delay)` if it gets back to a caller still alive.
    fn reply_fate(&self, route: Route, kind: MsgKind, responder_incarnation: u64) -> Option<u64> {
        let mut state = self.lock();
        let state = &mut *state;
        let responder_alive = state
            .endpoints
            .get(&route.to)
            .is_some_and(|e| e.incarnation == responder_incarnation);
        let caller_alive = state
            .endpoints
            .get(&route.from)
            .is_some_and(|e| e.incarnation == route.from_incarnation);
        let open = !state.faults.blocked.contains(&(route.to, route.from));
        let delivered =
            responder_alive && caller_alive && open && !state.rng.chance_ppm(state.faults.loss_ppm);
        let delay_ms = delivered.then(|| draw_delay(&mut state.rng, &state.faults));
        let now_ms = millis(state.started.elapsed());
        let words = [
            now_ms,
            3,
            route.to,
            route.from,
            kind as u64,
            delay_ms.map_or(u64::MAX, |d| d),
        ];
        state.trace.record(&words, || {
            format!(
                "{now_ms:>7}ms reply {:?} {}->{} {}",
                kind,
                route.to,
                route.from,
                delay_ms.map_or("lost".to_string(), |d| format!("delay {d}ms"))
            )
        });
        delay_ms
    }

    /// Sends one request and waits for its reply, under the faults in force, for at most
    /// `deadline`. `handler` runs on the receiving node; it is called twice if the network
    /// duplicates the request.
    pub async fn call<R, F, Fut>(
        &self,
        route: Route,
        kind: MsgKind,
        deadline: Duration,
        handler: F,
    ) -> Result<R, CallError>
    where
        F: Fn(Node) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: Send + 'static,
    {
        let handler = Arc::new(handler);
        let fate = self.draw_fate(route, kind);
        let (delay_ms, copy_delay_ms) = match fate {
            Fate::Refused => {
                tokio::time::sleep(Duration::from_millis(NET_CONNECT_FAIL_MS)).await;
                return Err(CallError::Unreachable);
            }
            Fate::Lost => {
                tokio::time::sleep(deadline).await;
                return Err(CallError::Timeout);
            }
            Fate::Deliver {
                delay_ms,
                copy_delay_ms,
            } => (delay_ms, copy_delay_ms),
        };
        if let Some(copy_delay_ms) = copy_delay_ms {
            self.spawn_copy(route, kind, copy_delay_ms, handler.clone());
        }
        let exchange = self.exchange(route, kind, delay_ms, handler);
        match tokio::time::timeout(deadline, exchange).await {
            Ok(reply) => Ok(reply),
            Err(_) => Err(CallError::Timeout),
        }
    }

    /// Both legs of a delivered request; never returns if either leg is lost (the caller's
    /// deadline ends the wait).
    async fn exchange<R, F, Fut>(
        &self,
        route: Route,
        kind: MsgKind,
        delay_ms: u64,
        handler: Arc<F>,
    ) -> R
    where
        F: Fn(Node) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: Send + 'static,
    {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let Some((node, incarnation)) = self.arrive(route, kind, false) else {
            return std::future::pending().await;
        };
        let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
        let work = handler(node);
        tokio::spawn(async move {
            let _ = reply_tx.send(work.await);
        });
        let Ok(reply) = reply_rx.await else {
            return std::future::pending().await;
        };
        let Some(reply_delay_ms) = self.reply_fate(route, kind, incarnation) else {
            return std::future::pending().await;
        };
        tokio::time::sleep(Duration::from_millis(reply_delay_ms)).await;
        reply
    }

    /// Delivers a duplicate of a request later; its reply goes nowhere.
    fn spawn_copy<R, F, Fut>(&self, route: Route, kind: MsgKind, delay_ms: u64, handler: Arc<F>)
    where
        F: Fn(Node) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: Send + 'static,
    {
        let net = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            if let Some((node, _)) = net.arrive(route, kind, true) {
                let _ = handler(node).await;
            }
        });
    }
}

fn draw_delay(rng: &mut SimRng, faults: &NetFaults) -> u64 {
    let max = faults.delay_ms_max.max(NET_DELAY_MS_MIN);
    let base = rng.between(NET_DELAY_MS_MIN, max);
    if rng.chance_ppm(faults.spike_ppm) {
        base + rng.between(1, NET_DELAY_SPIKE_MS_MAX)
    } else {
        base
    }
}
