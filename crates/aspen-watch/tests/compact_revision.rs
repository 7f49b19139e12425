//! A watcher that reads history from exactly the compaction revision is owed that revision's
//! deletes. Compaction used to drop a tombstone at the compaction revision (as etcd did until
//! 3.4.34 / 3.5.15, etcd issue 18089), so the hub's catch-up, which may start *at* the
//! compaction revision, silently skipped those deletes: a watch gap with no compaction cancel.
//!
//! The simulator found it (seed 17150): a follower's hub was at revision 186 with two synced
//! watchers owed 187 (a delete of k7); the leader compacted at 187 and sent a snapshot; the
//! install reset the hub, the watchers caught up from history starting at 187, and the
//! snapshot no longer held the tombstone. Both ways in are tested here: a watch created at
//! the compaction revision, and a synced watcher sent to history by a snapshot install.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use aspen_core::keys::KeyRange;
use aspen_core::limits::Limits;
use aspen_core::type_config::alias::Entry;
use aspen_core::{Command, DeleteRangeRequest, Event, EventKind, PutRequest, TypeConfig};
use aspen_storage::{StateMachine, StorageBackend, open_storage};
use aspen_watch::{HubOptions, WatchHub, WatchMessage, WatchRequest};
use openraft::EntryPayload;
use tokio::sync::mpsc;

/// A state machine fed consecutive log entries.
struct Replica {
    sm: StateMachine,
    next_index: u64,
}

impl Replica {
    fn new() -> Replica {
        let (_log, sm) = open_storage(&StorageBackend::InMemory, Limits::default()).expect("open");
        Replica { sm, next_index: 1 }
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
        for response in self.sm.apply_entries(&entries).expect("apply") {
            assert!(response.result.is_ok(), "{response:?}");
        }
    }

    fn revision(&self) -> u64 {
        self.sm.reader().applied_state().expect("state").revision
    }

    /// Compacts at the current revision, physically, and waits for the removal to finish.
    fn compact_here(&mut self) -> u64 {
        let revision = self.revision();
        self.apply(vec![Command::Compact {
            revision,
            physical: true,
        }]);
        self.sm.compact_until_done().expect("compact");
        revision
    }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    })
}

fn delete(key: &str) -> Command {
    Command::DeleteRange(DeleteRangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    })
}

/// Every key `k0` .. `k9`, as the simulator's watchers watch.
fn watched_range() -> KeyRange {
    KeyRange::new(b"k", b"l")
}

/// (revision, key, kind) of each event.
type Seen = Vec<(u64, String, EventKind)>;

fn seen(events: &[Event]) -> Seen {
    events
        .iter()
        .map(|e| {
            (
                e.revision(),
                String::from_utf8_lossy(&e.kv.key).into_owned(),
                e.kind,
            )
        })
        .collect()
}

/// Runs catch-up rounds until nothing lags, then takes every queued event; fails on a
/// compaction cancel (the watchers here start at or above the compaction revision).
fn catch_up_and_drain(hub: &WatchHub, queue: &mut mpsc::Receiver<WatchMessage>) -> Seen {
    let mut events = Vec::new();
    for _ in 0..100 {
        let lagging = hub.sync_once();
        while let Ok(message) = queue.try_recv() {
            match message {
                WatchMessage::Events { events: got, .. } => events.extend(seen(&got)),
                WatchMessage::Progress { .. } => {}
                WatchMessage::Compacted {
                    compact_revision, ..
                } => panic!("cancelled as compacted at {compact_revision}"),
            }
        }
        if lagging == 0 {
            return events;
        }
    }
    panic!("the watcher never caught up");
}

#[test]
fn a_watch_starting_at_the_compact_revision_gets_the_deletes_at_it() {
    let mut replica = Replica::new();
    let hub = WatchHub::new(replica.sm.reader(), HubOptions::default()).expect("hub");
    assert!(replica.sm.set_event_sink(hub.event_sink()));
    replica.apply(vec![put("k1", "a"), put("k2", "b")]);
    replica.apply(vec![delete("k1")]);
    let compact_revision = replica.compact_here();
    assert_eq!(compact_revision, 4);
    replica.apply(vec![put("k2", "c")]);

    let (stream, mut queue) = hub.open_stream();
    stream
        .watch(WatchRequest {
            watch_id: None,
            range: watched_range(),
            start_revision: compact_revision,
            filter_put: false,
            filter_delete: false,
            prev_kv: false,
        })
        .expect("watch");
    assert_eq!(
        catch_up_and_drain(&hub, &mut queue),
        vec![
            (4, "k1".to_string(), EventKind::Delete),
            (5, "k2".to_string(), EventKind::Put),
        ],
        "a watch from the compaction revision misses its delete"
    );
}

/// The seed's sequence. `physical_first`: the leader removed what compaction removes before
/// building the snapshot (as in the seed), or not yet (the snapshot builder applies the same
/// rule to what is still there).
async fn snapshot_install_case(physical_first: bool) {
    // The leader and a follower apply the same first entries.
    let mut leader = Replica::new();
    let mut follower = Replica::new();
    let hub = WatchHub::new(follower.sm.reader(), HubOptions::default()).expect("hub");
    assert!(follower.sm.set_event_sink(hub.event_sink()));
    for replica in [&mut leader, &mut follower] {
        replica.apply(vec![put("k7", "c1s72"), put("k4", "c2s85")]);
    }
    assert_eq!(follower.revision(), 3);

    // A watcher on the follower, live (synced) and owed revision 4 onwards.
    let (stream, mut queue) = hub.open_stream();
    let created = stream
        .watch(WatchRequest {
            watch_id: None,
            range: watched_range(),
            start_revision: 0,
            filter_put: false,
            filter_delete: false,
            prev_kv: false,
        })
        .expect("watch");
    assert_eq!(created.revision, 3);
    assert!(
        stream.request_progress(created.watch_id),
        "the watcher is live before the install"
    );
    assert!(matches!(
        queue.try_recv(),
        Ok(WatchMessage::Progress { revision: 3, .. })
    ));

    // The follower is cut off; the leader deletes k7 at 4, compacts at 4, goes on, and builds
    // the snapshot it will send.
    leader.apply(vec![delete("k7")]);
    let compact_revision = leader.revision();
    leader.apply(vec![Command::Compact {
        revision: compact_revision,
        physical: physical_first,
    }]);
    if physical_first {
        leader.sm.compact_until_done().expect("compact");
    }
    assert_eq!(compact_revision, 4);
    leader.apply(vec![put("k3", "c3s117"), delete("k4")]);
    let snapshot = leader.sm.snapshot_written().expect("snapshot");

    // The follower installs it: its hub is reset to the snapshot's revision and the watcher,
    // owed 4 onwards, is served from history from the compaction revision on.
    follower
        .sm
        .install(&snapshot.meta, &snapshot.snapshot)
        .expect("install");
    assert_eq!(hub.revision(), 6);
    assert_eq!(
        catch_up_and_drain(&hub, &mut queue),
        vec![
            (4, "k7".to_string(), EventKind::Delete),
            (5, "k3".to_string(), EventKind::Put),
            (6, "k4".to_string(), EventKind::Delete),
        ],
        "the watcher lost the delete at the compaction revision across the install \
         (compacted physically first: {physical_first})"
    );
    drop(stream);
}

#[tokio::test(flavor = "current_thread")]
async fn a_watcher_sent_to_history_by_a_snapshot_install_gets_the_deletes_at_the_compact_revision()
{
    snapshot_install_case(true).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_snapshot_built_before_physical_compaction_keeps_the_tombstone_at_the_compact_revision() {
    snapshot_install_case(false).await;
}
