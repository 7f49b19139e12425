//! The hub's byte budgets: many watchers on streams that never read, every one watching keys
//! that get large values. What is queued stays within the hub's budget however many writes
//! they miss (events are copied per watcher, so without it fan-out multiplies each value by
//! the watchers); once they go away, a stream that starts reading gets every event, in order,
//! from history.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use aspen_core::keys::KeyRange;
use aspen_core::limits::Limits;
use aspen_core::type_config::alias::Entry;
use aspen_core::{Command, PutRequest, TypeConfig};
use aspen_storage::{StorageBackend, open_storage};
use aspen_watch::{HubOptions, WatchHub, WatchMessage, WatchRequest};
use openraft::EntryPayload;

const STREAMS: usize = 8;
const WATCHERS_PER_STREAM: usize = 50;
const PUTS: u64 = 40;
const VALUE_BYTES: usize = 256 * 1024;
const STREAM_BYTES_MAX: u64 = 1024 * 1024;
const HUB_BYTES_MAX: u64 = 4 * 1024 * 1024;
const SYNC_ROUNDS_MAX: u32 = 10_000;

fn watch_all() -> WatchRequest {
    WatchRequest {
        watch_id: None,
        range: KeyRange::new(b"k", b"l"),
        start_revision: 0,
        filter_put: false,
        filter_delete: false,
        prev_kv: true,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn streams_that_never_read_hold_at_most_the_budget_and_catch_up_when_they_read() {
    let (_log, sm) = open_storage(&StorageBackend::InMemory, Limits::default()).unwrap();
    let options = HubOptions {
        stream_queue_bytes_max: STREAM_BYTES_MAX,
        queued_bytes_max: HUB_BYTES_MAX,
        ..HubOptions::default()
    };
    let hub = WatchHub::new(sm.reader(), options).unwrap();
    assert!(sm.set_event_sink(hub.event_sink()));
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let (stream, queue) = hub.open_stream();
        for _ in 0..WATCHERS_PER_STREAM {
            stream.watch(watch_all()).unwrap();
        }
        streams.push((stream, queue));
    }
    let largest_message = (VALUE_BYTES * 2 + 1024) as u64;
    for index in 1..=PUTS {
        let entry: Entry = openraft::Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
            payload: EntryPayload::Normal(Command::Put(PutRequest {
                key: format!("k{}", index % 4).into_bytes(),
                value: vec![index.to_le_bytes()[0]; VALUE_BYTES],
                ..Default::default()
            })),
        };
        sm.apply_entries(&[entry]).unwrap();
        hub.sync_once();
        let held = hub.held_bytes();
        assert!(
            held <= HUB_BYTES_MAX + largest_message,
            "after put {index}: {held} bytes held, budget {HUB_BYTES_MAX}"
        );
    }
    // Without the budget every watcher would hold a copy of every value.
    let unbounded = STREAMS as u64 * WATCHERS_PER_STREAM as u64 * PUTS * VALUE_BYTES as u64;
    assert!(hub.held_bytes() * 100 < unbounded);
    assert!(
        hub.unsynced_count() > 0,
        "the budget made watchers fall behind"
    );

    // The streams that never read go away (their clients disconnect), which gives their
    // bytes back; one stream reads from now on: each of its watchers gets all PUTS events, in
    // order, from history.
    streams.truncate(1);
    let (_stream, queue) = &mut streams[0];
    let mut seen = vec![0u64; WATCHERS_PER_STREAM];
    let mut rounds = 0;
    while seen.iter().any(|&n| n < PUTS) {
        while let Ok(message) = queue.try_recv() {
            if let WatchMessage::Events {
                watch_id, events, ..
            } = message
            {
                for event in events {
                    let count = &mut seen[usize::try_from(watch_id).expect("watch ids from 0")];
                    *count += 1;
                    assert_eq!(event.kv.mod_revision, *count + 1, "watcher {watch_id}");
                }
            }
        }
        hub.sync_once();
        rounds += 1;
        assert!(rounds < SYNC_ROUNDS_MAX, "stuck at {seen:?}");
    }
}
