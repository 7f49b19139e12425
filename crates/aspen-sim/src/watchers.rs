//! Watchers: clients that follow the whole key set through a node's watch hub, with the same
//! calls the gRPC Watch service makes (`Node::watch_hub().open_stream()`, then
//! `WatchStream::watch`, `request_progress`, and the hub's `WatchMessage`s), recording every
//! event for the no-gap check (`invariants/watch.rs`).
//!
//! Each watcher starts at revision 1. When its stream ends (its node crashed or left the
//! membership, the hub cancelled it because the history it needs was compacted, or it chose
//! to reconnect, as a client whose connection broke does) it resumes on a node drawn from the
//! seed, at the revision after the last one it covered, as etcd's client does. Everything it
//! does is drawn from its own generator, forked from the run's.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aspen_core::keys::KeyRange;
use aspen_core::{Event, EventKind, NodeId};
use aspen_node::Node;
use aspen_watch::{WatchMessage, WatchRequest};
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::limits::{
    POLL_INTERVAL_MS, WATCH_AWAY_MS_MAX, WATCH_AWAY_PPM, WATCH_DROPPED_EVENT_INDEX,
    WATCH_EVENTS_RECORDED_MAX, WATCH_SWITCH_PPM, WATCH_TICK_MS, WATCH_VIOLATIONS_MAX,
};
use crate::rng::SimRng;
use crate::trace::hash_bytes;

/// The watched range, `[k, l)`: every key the clients use (`k0` .. `k7`).
pub const WATCHED_KEY: &[u8] = b"k";
pub const WATCHED_RANGE_END: &[u8] = b"l";

pub fn watched_range() -> KeyRange {
    KeyRange::new(WATCHED_KEY, WATCHED_RANGE_END)
}

/// What one event did to its key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    Put {
        value: Vec<u8>,
        create_revision: u64,
        version: u64,
    },
    Delete,
}

/// One event, as a watcher received it or as history says it happened.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeenEvent {
    pub revision: u64,
    pub key: Vec<u8>,
    pub change: Change,
}

impl SeenEvent {
    pub fn from_event(event: &Event) -> SeenEvent {
        let change = match event.kind {
            EventKind::Put => Change::Put {
                value: event.kv.value.clone(),
                create_revision: event.kv.create_revision,
                version: event.kv.version,
            },
            EventKind::Delete => Change::Delete,
        };
        SeenEvent {
            revision: event.revision(),
            key: event.kv.key.clone(),
            change,
        }
    }

    /// One word for the trace hash.
    fn word(&self) -> u64 {
        let change = match &self.change {
            Change::Put { value, .. } => hash_bytes(value),
            Change::Delete => 1,
        };
        hash_bytes(&self.key) ^ change.rotate_left(17) ^ self.revision.rotate_left(40)
    }
}

impl std::fmt::Display for SeenEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = String::from_utf8_lossy(&self.key);
        match &self.change {
            Change::Put {
                value,
                create_revision,
                version,
            } => write!(
                f,
                "put {key}={:?} at revision {} (created {create_revision}, version {version})",
                String::from_utf8_lossy(value),
                self.revision
            ),
            Change::Delete => write!(f, "delete {key} at revision {}", self.revision),
        }
    }
}

/// Revisions `from ..= to` a watcher skipped because the hub cancelled it with "compacted":
/// history no longer held them, so the check does not expect their events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactedGap {
    pub from: u64,
    pub to: u64,
}

/// Everything one watcher saw.
#[derive(Debug, Clone, Default)]
pub struct WatchLog {
    pub watcher_id: u64,
    /// The revision its first watch started at.
    pub start_revision: u64,
    /// Events in the order received, up to `WATCH_EVENTS_RECORDED_MAX`.
    pub events: Vec<SeenEvent>,
    /// Every revision up to this one has been delivered to it: the last event's revision, or
    /// a progress notice's (the hub queued everything up to it).
    pub covered_through: u64,
    /// Set when recording stopped at the cap: `events` holds every event up to this revision.
    pub recorded_through: Option<u64>,
    pub compacted: Vec<CompactedGap>,
    /// Ordering and duplicate violations, in words, seen as events arrived.
    pub violations: Vec<String>,
    pub violations_more: u64,
    /// Watches a node refused (none should be: one watcher per stream, a non-empty range).
    pub refusals: Vec<String>,
    /// Events received (recorded or not).
    pub received: u64,
    /// Watches opened (the first and every resume).
    pub attaches: u64,
    /// Watches the hub cancelled as compacted (each followed by a resume).
    pub compacted_resumes: u64,
    /// The event the planted bug (`--drop-watch-event`) threw away.
    pub dropped_on_purpose: Option<SeenEvent>,
    /// For the ordering check: the last revision received and the keys received at it.
    last_revision: u64,
    keys_at_last: BTreeSet<Vec<u8>>,
}

impl WatchLog {
    pub(crate) fn new(watcher_id: u64) -> WatchLog {
        WatchLog {
            watcher_id,
            start_revision: 1,
            ..WatchLog::default()
        }
    }

    /// Where a resumed watch starts: the revision after the last one covered.
    pub fn next_revision(&self) -> u64 {
        (self.covered_through + 1).max(self.start_revision)
    }

    fn violation(&mut self, message: String) {
        if self.violations.len() < WATCH_VIOLATIONS_MAX {
            self.violations.push(message);
        } else {
            self.violations_more += 1;
        }
    }

    /// Takes one received event: checks its order against the previous ones, then records it.
    fn observe(&mut self, event: &Event, node_id: NodeId, drop_one: bool) -> SeenEvent {
        let seen = SeenEvent::from_event(event);
        let index = self.received;
        self.received += 1;
        if seen.revision < self.last_revision {
            self.violation(format!(
                "received {seen} from node {node_id} after an event at revision {}",
                self.last_revision
            ));
        } else {
            if seen.revision > self.last_revision {
                self.last_revision = seen.revision;
                self.keys_at_last.clear();
            }
            if !self.keys_at_last.insert(seen.key.clone()) {
                self.violation(format!("received {seen} twice (again from node {node_id})"));
            }
        }
        if drop_one && index == WATCH_DROPPED_EVENT_INDEX {
            self.dropped_on_purpose = Some(seen.clone());
        } else if self.recorded_through.is_none() {
            if self.events.len() < WATCH_EVENTS_RECORDED_MAX {
                self.events.push(seen.clone());
            } else {
                self.recorded_through = Some(seen.revision - 1);
            }
        }
        self.covered_through = self.covered_through.max(seen.revision);
        seen
    }
}

/// What a watcher task needs.
pub struct WatcherSetup {
    pub watcher_id: u64,
    pub cluster: Cluster,
    pub rng: SimRng,
    pub stop: Arc<AtomicBool>,
    /// `WatchLog::covered_through`, for the runner's catch-up wait.
    pub covered: Arc<AtomicU64>,
    /// The planted bug: this watcher loses one event.
    pub drop_one_event: bool,
    /// The planted compaction bug: cancelled as compacted, this watcher resumes one revision
    /// past the compact revision (as if the compact revision itself were gone).
    pub resume_past_compaction: bool,
}

/// Why a watch ended.
enum Ended {
    Stopped,
    Resume(&'static str),
}

/// One watcher's loop, until `stop`; returns what it saw.
pub async fn run_watcher(mut setup: WatcherSetup) -> WatchLog {
    let mut log = WatchLog::new(setup.watcher_id);
    while !setup.stop.load(Ordering::Relaxed) {
        let Some((node_id, incarnation, node)) = choose_node(&setup.cluster, &mut setup.rng) else {
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
            continue;
        };
        match follow(&mut setup, &mut log, node_id, incarnation, node).await {
            Ended::Stopped => break,
            Ended::Resume(why) => {
                let next = log.next_revision();
                let id = setup.watcher_id;
                setup.cluster.net().record(&[6, id, node_id, next], || {
                    format!("watcher {id} leaves node {node_id} ({why}), resumes at {next}")
                });
                // A client whose connection broke may stay away a while: long enough, now
                // and then, for a compaction to pass the revision it resumes at.
                if why == "reconnect" && setup.rng.chance_ppm(WATCH_AWAY_PPM) {
                    let away_ms = setup.rng.below(WATCH_AWAY_MS_MAX + 1);
                    tokio::time::sleep(Duration::from_millis(away_ms)).await;
                }
            }
        }
    }
    log
}

/// A running node, mostly a member as the leader sees it (the watcher's client knows the
/// cluster's endpoints); any running node when no leader is known.
fn choose_node(cluster: &Cluster, rng: &mut SimRng) -> Option<(NodeId, u64, Node)> {
    let running = cluster.net().running();
    let candidates: Vec<(NodeId, u64, Node)> = match cluster.members() {
        Some(members) => running
            .into_iter()
            .filter(|(id, _, _)| members.contains(id))
            .collect(),
        None => running,
    };
    if candidates.is_empty() {
        return None;
    }
    Some(rng.pick(&candidates).clone())
}

/// Watches on one node until the stream ends; records every event into `log`.
async fn follow(
    setup: &mut WatcherSetup,
    log: &mut WatchLog,
    node_id: NodeId,
    incarnation: u64,
    node: Node,
) -> Ended {
    let watcher_id = setup.watcher_id;
    let (stream, mut queue) = node.watch_hub().open_stream();
    let start_revision = log.next_revision();
    let request = WatchRequest {
        watch_id: None,
        range: watched_range(),
        start_revision,
        filter_put: false,
        filter_delete: false,
        prev_kv: false,
    };
    let created = match stream.watch(request) {
        Ok(created) => created,
        Err(error) => {
            if log.refusals.len() < WATCH_VIOLATIONS_MAX {
                log.refusals
                    .push(format!("node {node_id} refused the watch: {error}"));
            }
            tokio::time::sleep(Duration::from_millis(WATCH_TICK_MS)).await;
            return Ended::Resume("refused");
        }
    };
    log.attaches += 1;
    setup
        .cluster
        .net()
        .record(&[5, watcher_id, node_id, start_revision], || {
            format!("watcher {watcher_id} watches on node {node_id} from revision {start_revision}")
        });
    let tick = Duration::from_millis(WATCH_TICK_MS);
    let mut next_tick = Instant::now() + tick;
    loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        // Biased: no random branch choice enters the run.
        let message = tokio::select! {
            biased;
            message = queue.recv() => message,
            () = tokio::time::sleep(wait) => {
                next_tick = Instant::now() + tick;
                if setup.stop.load(Ordering::Relaxed) {
                    return Ended::Stopped;
                }
                let same_node = setup
                    .cluster
                    .net()
                    .running()
                    .iter()
                    .any(|(id, inc, _)| *id == node_id && *inc == incarnation);
                if !same_node {
                    return Ended::Resume("node crashed");
                }
                if setup.cluster.members().is_some_and(|m| !m.contains(&node_id)) {
                    return Ended::Resume("node is not a member");
                }
                if setup.rng.chance_ppm(WATCH_SWITCH_PPM) {
                    return Ended::Resume("reconnect");
                }
                stream.request_progress(created.watch_id);
                continue;
            }
        };
        let Some(message) = message else {
            return Ended::Resume("stream closed");
        };
        match message {
            WatchMessage::Events { events, .. } => {
                for event in &events {
                    let drop_one = setup.drop_one_event;
                    let seen = log.observe(event, node_id, drop_one);
                    setup
                        .cluster
                        .net()
                        .record(&[7, watcher_id, node_id, seen.word()], || {
                            format!("watcher {watcher_id} on node {node_id}: {seen}")
                        });
                }
            }
            WatchMessage::Progress { revision, .. } => {
                log.covered_through = log.covered_through.max(revision);
            }
            WatchMessage::Compacted {
                compact_revision, ..
            } => {
                // History below `compact_revision` is gone: resume there, as etcd's client
                // does, and tell the check which revisions it cannot expect.
                let from = log.next_revision();
                // The planted bug resumes past the compact revision, skipping its events.
                let resume_at = compact_revision + u64::from(setup.resume_past_compaction);
                if resume_at > from {
                    log.compacted.push(CompactedGap {
                        from,
                        to: resume_at - 1,
                    });
                    log.covered_through = resume_at - 1;
                }
                log.compacted_resumes += 1;
                setup.covered.store(log.covered_through, Ordering::Relaxed);
                return Ended::Resume("compacted");
            }
        }
        setup.covered.store(log.covered_through, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use aspen_core::response::KeyValue;

    use super::*;

    fn put(key: &str, revision: u64) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.as_bytes().to_vec(),
                value: b"v".to_vec(),
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                lease: 0,
            },
            prev_kv: None,
            sub_revision: 0,
        }
    }

    #[test]
    fn order_and_duplicates_are_violations() {
        let mut log = WatchLog::new(1);
        for (key, revision) in [("k1", 2), ("k2", 2), ("k1", 3)] {
            log.observe(&put(key, revision), 1, false);
        }
        assert!(log.violations.is_empty(), "{:?}", log.violations);
        log.observe(&put("k1", 3), 2, false);
        log.observe(&put("k2", 2), 2, false);
        assert_eq!(log.violations.len(), 2, "{:?}", log.violations);
        assert!(log.violations[0].contains("twice"));
        assert!(log.violations[1].contains("after an event at revision 3"));
        assert_eq!(log.covered_through, 3);
        assert_eq!(log.next_revision(), 4);
    }

    #[test]
    fn the_planted_bug_loses_one_event_but_moves_on() {
        let mut log = WatchLog::new(1);
        let total = WATCH_DROPPED_EVENT_INDEX + 3;
        for revision in 2..2 + total {
            log.observe(&put("k1", revision), 1, true);
        }
        assert_eq!(log.received, total);
        assert_eq!(log.events.len() as u64, total - 1);
        assert!(log.dropped_on_purpose.is_some());
        assert_eq!(log.covered_through, 1 + total);
    }
}
