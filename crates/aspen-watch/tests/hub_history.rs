//! Property: under random writes, compactions (with their physical removal interleaved in
//! tiny steps), slow readers and unrecorded batches, every
//! watcher receives exactly the MVCC history of its range from its start revision, in order,
//! with no gap and no duplicate, or a prefix of it followed by a compaction cancel.
//!
//! The ground truth is the event list the state machine records while applying; a watcher
//! that fell behind is served by replaying history (`MvccReader::events`), a different code
//! path, so the test also checks that replay reproduces the live events exactly (prev_kv
//! included).

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use aspen_core::event::CommittedBatch;
use aspen_core::keys::{KeyRange, prefix_range_end};
use aspen_core::limits::Limits;
use aspen_core::type_config::alias::Entry;
use aspen_core::{
    Command, DeleteRangeRequest, Event, EventKind, PutRequest, RequestOp, TxnRequest, TypeConfig,
};
use aspen_storage::state_machine::EventSink;
use aspen_storage::{StateMachine, StorageBackend, open_storage};
use aspen_watch::{HubOptions, WatchHub, WatchMessage, WatchRequest, WatchStream};
use openraft::EntryPayload;
use proptest::prelude::*;
use tokio::sync::mpsc;

const KEYS: [&[u8]; 5] = [b"a", b"ab", b"b", b"bc", b"c"];
/// Some compactions land on a put of this key, outside every watched range; the others land on
/// whatever the last write was, a delete too: a watcher replaying history from exactly the
/// compaction revision still gets that revision's deletes (compaction keeps a tombstone at
/// the compaction revision; `tests/compact_revision.rs`), but not their `prev_kv`, nor a
/// put's there: the versions they replaced are gone, as in etcd (see `expected`).
const MARKER: &[u8] = b"~marker";
const STREAMS: usize = 3;
const STEPS_MAX: usize = 60;
const SETTLE_ROUNDS_MAX: u32 = 10_000;

#[derive(Debug, Clone)]
enum Write {
    Put(usize, u8),
    Delete(usize),
    DeletePrefix(usize),
    Txn(Vec<(usize, u8)>),
}

#[derive(Debug, Clone)]
enum Step {
    Apply {
        writes: Vec<Write>,
        record: bool,
    },
    Watch(WatchPick),
    Drain {
        stream: usize,
        messages: usize,
    },
    Sync,
    Compact {
        back: u64,
    },
    /// One step of physical compaction looking at this many versions (the node's compactor
    /// runs such steps between applies).
    CompactSome {
        records: u32,
    },
    /// As after a snapshot install: the hub must read everything since from history.
    Reset,
}

#[derive(Debug, Clone)]
struct WatchPick {
    stream: usize,
    key: usize,
    prefix: bool,
    /// 0: from now; 12: from the last compaction revision (now if none); otherwise this
    /// many revisions back (clamped to 1).
    back: u64,
    prev_kv: bool,
    filter: u8,
}

fn write_strategy() -> impl Strategy<Value = Write> {
    prop_oneof![
        4 => (0..KEYS.len(), any::<u8>()).prop_map(|(k, v)| Write::Put(k, v)),
        2 => (0..KEYS.len()).prop_map(Write::Delete),
        1 => (0..KEYS.len()).prop_map(Write::DeletePrefix),
        1 => prop::collection::btree_map(0..KEYS.len(), any::<u8>(), 1..4)
            .prop_map(|m| Write::Txn(m.into_iter().collect())),
    ]
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let watch = (
        0..STREAMS,
        0..KEYS.len(),
        any::<bool>(),
        0u64..13,
        any::<bool>(),
        0u8..3,
    )
        .prop_map(|(stream, key, prefix, back, prev_kv, filter)| {
            Step::Watch(WatchPick {
                stream,
                key,
                prefix,
                back,
                prev_kv,
                filter,
            })
        });
    prop_oneof![
        6 => (prop::collection::vec(write_strategy(), 1..6), prop::bool::weighted(0.8))
            .prop_map(|(writes, record)| Step::Apply { writes, record }),
        2 => watch,
        3 => (0..STREAMS, 0usize..4).prop_map(|(stream, messages)| Step::Drain { stream, messages }),
        1 => Just(Step::Sync),
        1 => (0u64..8).prop_map(|back| Step::Compact { back }),
        2 => (1u32..4).prop_map(|records| Step::CompactSome { records }),
        1 => Just(Step::Reset),
    ]
}

/// Records every committed event (the truth) and forwards the batch to the hub, sometimes
/// without its events, as when nobody watched at the batch's start.
struct Recorder {
    hub: Arc<dyn EventSink>,
    truth: Mutex<Vec<Event>>,
    withhold: AtomicBool,
}

impl EventSink for Recorder {
    fn wants_events(&self) -> bool {
        true
    }

    fn publish(&self, batch: CommittedBatch) {
        let events = batch.events.clone().expect("recording was asked for");
        self.truth.lock().unwrap().extend(events);
        if self.withhold.load(Ordering::Relaxed) {
            self.hub.publish(CommittedBatch {
                events: None,
                ..batch
            });
        } else {
            self.hub.publish(batch);
        }
    }

    fn reset(&self, revision: u64) {
        self.hub.reset(revision);
    }
}

struct Watched {
    request: WatchRequest,
    first_revision: u64,
    delivered: Vec<Event>,
    compacted_at: Option<u64>,
}

struct World {
    sm: StateMachine,
    hub: WatchHub,
    recorder: Arc<Recorder>,
    streams: Vec<(WatchStream, mpsc::Receiver<WatchMessage>)>,
    watched: BTreeMap<(usize, i64), Watched>,
    next_index: u64,
    compactions: Vec<u64>,
}

fn put(key: &[u8], value: u8) -> PutRequest {
    PutRequest {
        key: key.to_vec(),
        value: vec![value],
        ..Default::default()
    }
}

fn command(write: &Write) -> Command {
    match write {
        Write::Put(k, v) => Command::Put(put(KEYS[*k], *v)),
        Write::Delete(k) => Command::DeleteRange(DeleteRangeRequest {
            key: KEYS[*k].to_vec(),
            ..Default::default()
        }),
        Write::DeletePrefix(k) => Command::DeleteRange(DeleteRangeRequest {
            key: KEYS[*k].to_vec(),
            range_end: prefix_range_end(KEYS[*k]),
            prev_kv: false,
        }),
        Write::Txn(puts) => Command::Txn(TxnRequest {
            compare: Vec::new(),
            success: puts
                .iter()
                .map(|(k, v)| RequestOp::Put(put(KEYS[*k], *v)))
                .collect(),
            failure: Vec::new(),
        }),
    }
}

impl World {
    fn new() -> World {
        let (_log, sm) = open_storage(&StorageBackend::InMemory, Limits::default()).unwrap();
        let options = HubOptions {
            stream_queue_messages_max: 2,
            watchers_per_stream_max: 64,
            watchers_max: 256,
            sync_batch_events_max: 2,
            sync_watchers_max: 2,
            sync_interval_ms: 100,
            // A few events' bytes: slow streams fall behind on bytes as often as on messages.
            stream_queue_bytes_max: 256,
            queued_bytes_max: 512,
            sync_round_bytes_max: 256,
        };
        let hub = WatchHub::new(sm.reader(), options).unwrap();
        let recorder = Arc::new(Recorder {
            hub: hub.event_sink(),
            truth: Mutex::new(Vec::new()),
            withhold: AtomicBool::new(false),
        });
        assert!(sm.set_event_sink(recorder.clone()));
        let streams = (0..STREAMS).map(|_| hub.open_stream()).collect();
        World {
            sm,
            hub,
            recorder,
            streams,
            watched: BTreeMap::new(),
            next_index: 1,
            compactions: Vec::new(),
        }
    }

    fn apply(&mut self, commands: Vec<Command>) {
        let entries: Vec<Entry> = commands
            .into_iter()
            .map(|command| {
                let index = self.next_index;
                self.next_index += 1;
                openraft::Entry {
                    log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
                    payload: EntryPayload::Normal(command),
                }
            })
            .collect();
        self.sm.apply_entries(&entries).unwrap();
    }

    fn revision(&self) -> u64 {
        self.sm.reader().applied_state().unwrap().revision
    }

    fn watch(&mut self, pick: &WatchPick) {
        let key = KEYS[pick.key];
        let range_end = if pick.prefix {
            prefix_range_end(key)
        } else {
            Vec::new()
        };
        let start_revision = match pick.back {
            0 => 0,
            12 => self.compactions.last().copied().unwrap_or(0),
            back => self.revision().saturating_sub(back).max(1),
        };
        let request = WatchRequest {
            watch_id: None,
            range: KeyRange::new(key, &range_end),
            start_revision,
            filter_put: pick.filter == 1,
            filter_delete: pick.filter == 2,
            prev_kv: pick.prev_kv,
        };
        let created = self.streams[pick.stream].0.watch(request.clone()).unwrap();
        let first_revision = if start_revision == 0 {
            created.revision + 1
        } else {
            start_revision
        };
        let watched = Watched {
            request,
            first_revision,
            delivered: Vec::new(),
            compacted_at: None,
        };
        self.watched
            .insert((pick.stream, created.watch_id), watched);
    }

    fn drain(&mut self, stream: usize, messages: usize) -> usize {
        let mut taken = 0;
        while taken < messages {
            let Ok(message) = self.streams[stream].1.try_recv() else {
                break;
            };
            taken += 1;
            match message {
                WatchMessage::Events {
                    watch_id, events, ..
                } => {
                    let watched = self.watched.get_mut(&(stream, watch_id)).unwrap();
                    assert!(watched.compacted_at.is_none(), "events after a cancel");
                    watched.delivered.extend(events);
                }
                WatchMessage::Compacted {
                    watch_id,
                    compact_revision,
                    ..
                } => {
                    let watched = self.watched.get_mut(&(stream, watch_id)).unwrap();
                    assert!(watched.compacted_at.is_none(), "cancelled twice");
                    watched.compacted_at = Some(compact_revision);
                }
                WatchMessage::Progress { .. } => {}
            }
        }
        taken
    }

    fn compact(&mut self, back: u64) {
        // 0: a compaction at the last write, physically finished at once (so a watch from
        // there reads what compaction left); otherwise a put of the marker first, then (1) a
        // compaction exactly at it (see MARKER), removed by `CompactSome` steps.
        let on_marker = back > 0;
        if on_marker {
            self.apply(vec![Command::Put(put(MARKER, 0))]);
        }
        let back = back.saturating_sub(1);
        let revision = self.revision();
        let target = revision.saturating_sub(back);
        let floor = self.compactions.last().copied().unwrap_or(0);
        if back == 0 && target > floor {
            self.apply(vec![Command::Compact {
                revision: target,
                physical: true,
            }]);
            self.compactions.push(target);
            if !on_marker {
                self.sm.compact_until_done().expect("compaction");
            }
        }
    }

    /// Catch-up steps and reads until nothing is lagging or queued.
    fn settle(&mut self) {
        for _ in 0..SETTLE_ROUNDS_MAX {
            let lagging = self.hub.sync_once();
            let mut taken = 0;
            for stream in 0..STREAMS {
                taken += self.drain(stream, usize::MAX);
            }
            if lagging == 0 && taken == 0 {
                return;
            }
        }
        panic!("watchers did not catch up");
    }
}

/// What the watcher is owed. An event at a compaction revision is compared without its
/// `prev_kv`: replayed after the compaction, the version it replaced is gone (see MARKER).
fn expected(truth: &[Event], watched: &Watched, compactions: &[u64]) -> Vec<Event> {
    let request = &watched.request;
    truth
        .iter()
        .filter(|e| e.revision() >= watched.first_revision && request.range.contains(&e.kv.key))
        .filter(|e| match e.kind {
            EventKind::Put => !request.filter_put,
            EventKind::Delete => !request.filter_delete,
        })
        .map(|e| Event {
            prev_kv: if request.prev_kv && !compactions.contains(&e.revision()) {
                e.prev_kv.clone()
            } else {
                None
            },
            ..e.clone()
        })
        .collect()
}

/// The delivered events, without `prev_kv` at a compaction revision (see `expected`).
fn comparable(delivered: &[Event], compactions: &[u64]) -> Vec<Event> {
    delivered
        .iter()
        .map(|e| Event {
            prev_kv: if compactions.contains(&e.revision()) {
                None
            } else {
                e.prev_kv.clone()
            },
            ..e.clone()
        })
        .collect()
}

fn run(steps: Vec<Step>) {
    let mut world = World::new();
    for step in &steps {
        match step {
            Step::Apply { writes, record } => {
                world.recorder.withhold.store(!record, Ordering::Relaxed);
                world.apply(writes.iter().map(command).collect());
                world.recorder.withhold.store(false, Ordering::Relaxed);
            }
            Step::Watch(pick) => world.watch(pick),
            Step::Drain { stream, messages } => {
                world.drain(*stream, *messages);
            }
            Step::Sync => {
                world.hub.sync_once();
            }
            Step::Compact { back } => world.compact(*back),
            Step::CompactSome { records } => {
                world
                    .sm
                    .compact_step_bounded(*records)
                    .expect("compaction step");
            }
            Step::Reset => {
                let revision = world.revision();
                world.recorder.reset(revision);
            }
        }
    }
    world.settle();
    assert_eq!(world.hub.revision(), world.revision());
    let truth = world.recorder.truth.lock().unwrap().clone();
    for window in truth.windows(2) {
        assert!(
            window[0].position() < window[1].position(),
            "truth out of order"
        );
    }
    for (key, watched) in &world.watched {
        let want = expected(&truth, watched, &world.compactions);
        let got = comparable(&watched.delivered, &world.compactions);
        match watched.compacted_at {
            None => assert_eq!(got, want, "watcher {key:?}"),
            Some(compact_revision) => {
                assert!(world.compactions.contains(&compact_revision));
                let delivered = got.len();
                assert_eq!(got[..], want[..delivered], "watcher {key:?}");
                let next = watched
                    .delivered
                    .last()
                    .map_or(watched.first_revision, |e| e.revision() + 1);
                assert!(next < compact_revision, "cancelled without cause {key:?}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn hub_delivers_history_exactly(steps in prop::collection::vec(step_strategy(), 1..STEPS_MAX)) {
        run(steps);
    }
}

/// A slow reader: far more events than the queue holds, then everything arrives in order.
#[test]
fn slow_reader_catches_up_from_history() {
    let mut world = World::new();
    let pick = WatchPick {
        stream: 0,
        key: 0,
        prefix: true,
        back: 0,
        prev_kv: true,
        filter: 0,
    };
    world.watch(&pick);
    for value in 0..200u8 {
        world.apply(vec![command(&Write::Put(value as usize % 2, value))]);
    }
    assert!(
        world.hub.unsynced_count() > 0,
        "the queue bound was never reached"
    );
    world.settle();
    let truth = world.recorder.truth.lock().unwrap().clone();
    let watched = world.watched.values().next().unwrap();
    assert_eq!(watched.delivered.len(), 200);
    assert_eq!(
        watched.delivered,
        expected(&truth, watched, &world.compactions)
    );
}
