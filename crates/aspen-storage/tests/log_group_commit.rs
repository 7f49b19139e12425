//! The log writer's group commit: appends are readable as soon as `append` returns, appends
//! queued during one commit share the next one, callbacks fire only once their entries are
//! durable, and vote, truncate and purge wait for what was queued before them. Most tests turn
//! inline appends off (`LogStore::set_appends_inline`) to test the queue; the last ones test
//! the inline rounds.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use aspen_core::limits::Limits;
use aspen_core::type_config::alias::{Entry, LogId, Vote};
use aspen_core::{Command, PutRequest, TypeConfig};
use aspen_storage::{StorageBackend, open_storage};
use std::future::Future;

use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, RaftLogReader};

const TERM: u64 = 1;
const LEADER: u64 = 1;
const APPENDS: u64 = 100;

fn log_id(index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(TERM, LEADER, index)
}

fn entry(index: u64) -> Entry {
    openraft::Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Command::Put(PutRequest {
            key: format!("k{index}").into_bytes(),
            value: vec![b'v'; 64],
            ..Default::default()
        })),
    }
}

/// The redb backend in `dir`.
fn backend_in(dir: &tempfile::TempDir) -> StorageBackend {
    StorageBackend::Redb {
        dir: dir.path().join("node.redb"),
    }
}

/// On a current-thread runtime the writer cannot run until the test awaits, so 100 appends in
/// a row are all queued when it first runs: they must share one durable commit.
#[tokio::test(flavor = "current_thread")]
async fn appends_queued_together_share_one_durable_commit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = backend_in(&dir);
    let (mut log, sm) = open_storage(&backend, Limits::default()).expect("open");
    log.set_appends_inline(false); // the writer's queue is what this tests
    let commits_before = sm.store().fsync_latency().count();

    let mut flushed = Vec::new();
    for index in 1..=APPENDS {
        let (tx, rx) = TypeConfig::oneshot();
        log.append(vec![entry(index)], IOFlushed::signal(tx))
            .await
            .expect("append");
        flushed.push(rx);
        // Readable at once, before anything is durable.
        let read = log
            .try_get_log_entries(index..index + 1)
            .await
            .expect("read");
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].log_id, log_id(index));
    }
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_log_id, Some(log_id(APPENDS)));
    assert_eq!(
        sm.store().fsync_latency().count(),
        commits_before,
        "nothing was committed while the writer could not run"
    );

    for rx in flushed {
        rx.await.expect("callback fired").expect("durable");
    }
    assert_eq!(
        sm.store().fsync_latency().count(),
        commits_before + 1,
        "one durable commit for all queued appends"
    );
    let all = log
        .try_get_log_entries(1..=APPENDS)
        .await
        .expect("read all");
    assert_eq!(all.len() as u64, APPENDS);
    assert!(all.iter().zip(1..).all(|(e, i)| e.log_id == log_id(i)));
}

/// Truncate and vote run after the queued appends: the truncation removes durable entries, and
/// a reopened store has exactly what was written in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_and_vote_wait_for_queued_appends() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = backend_in(&dir);
    {
        let (mut log, _sm) = open_storage(&backend, Limits::default()).expect("open");
        log.set_appends_inline(false); // the writer's queue is what this tests
        let mut flushed = Vec::new();
        for index in 1..=20 {
            let (tx, rx) = TypeConfig::oneshot();
            log.append(vec![entry(index)], IOFlushed::signal(tx))
                .await
                .expect("append");
            flushed.push(rx);
        }
        // Queued appends 11..=20 are removed even if the writer has not reached them yet.
        log.truncate_after(Some(log_id(10)))
            .await
            .expect("truncate");
        let vote = Vote::new_committed(TERM + 1, 2);
        log.save_vote(&vote).await.expect("save vote");
        for rx in flushed {
            rx.await.expect("callback fired").expect("durable");
        }
        let (tx, rx) = TypeConfig::oneshot();
        let replacement = openraft::Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(TERM + 1, 2, 11),
            payload: EntryPayload::Blank,
        };
        log.append(vec![replacement], IOFlushed::signal(tx))
            .await
            .expect("append after truncate");
        rx.await.expect("callback fired").expect("durable");
    }
    let (mut log, _sm) = open_storage(&backend, Limits::default()).expect("reopen");
    let entries = log.try_get_log_entries(1..100).await.expect("read");
    assert_eq!(entries.len(), 11);
    assert_eq!(entries[9].log_id, log_id(10));
    assert_eq!(
        entries[10].log_id,
        openraft::testing::log_id::<TypeConfig>(TERM + 1, 2, 11)
    );
    assert_eq!(
        log.read_vote().await.expect("vote"),
        Some(Vote::new_committed(TERM + 1, 2))
    );
}

fn entry_with_value(index: u64, value_bytes: usize) -> Entry {
    openraft::Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Command::Put(PutRequest {
            key: format!("k{index}").into_bytes(),
            value: vec![b'v'; value_bytes],
            ..Default::default()
        })),
    }
}

/// Appends `entries` and returns the callback's receiver; panics if the append had to wait.
fn append_now(
    log: &mut aspen_storage::LogStore,
    entries: Vec<Entry>,
) -> impl std::future::Future<Output = ()> + use<> {
    use futures_util::FutureExt;
    let (tx, rx) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(tx))
        .now_or_never()
        .expect("room in the queue: the append returns at once")
        .expect("append");
    async move {
        rx.await.expect("callback fired").expect("durable");
    }
}

/// The writer's queue is bounded in entries: once it holds `LOG_WRITER_QUEUE_ENTRIES_MAX`
/// entries that are not yet durable, the next append waits (it neither fails nor queues),
/// and it goes through as soon as the writer has committed what was queued.
#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_makes_append_wait_for_the_writer() {
    use aspen_core::limits::LOG_WRITER_QUEUE_ENTRIES_MAX;
    use futures_util::FutureExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = backend_in(&dir);
    let (mut log, _sm) = open_storage(&backend, Limits::default()).expect("open");
    log.set_appends_inline(false); // the writer's queue is what this tests
    let batch = u64::from(LOG_WRITER_QUEUE_ENTRIES_MAX) / 4;
    let mut flushed = Vec::new();
    // The writer task cannot run until this test awaits something that is pending.
    for first in (0..4).map(|b| 1 + b * batch) {
        let entries = (first..first + batch)
            .map(|i| entry_with_value(i, 8))
            .collect();
        flushed.push(append_now(&mut log, entries));
    }
    let next = 1 + 4 * batch;
    let (tx, rx) = TypeConfig::oneshot();
    {
        let blocked = log.append(vec![entry(next)], IOFlushed::signal(tx));
        assert!(
            blocked.now_or_never().is_none(),
            "a full queue must make append wait"
        );
    }
    // The abandoned wait changed nothing: the entry is not in the log.
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_log_id, Some(log_id(next - 1)));
    drop(rx);
    let (tx, rx) = TypeConfig::oneshot();
    // Awaiting lets the writer commit; then there is room.
    log.append(vec![entry(next)], IOFlushed::signal(tx))
        .await
        .expect("append after the writer made room");
    rx.await.expect("callback fired").expect("durable");
    for done in flushed {
        done.await;
    }
    let all = log.try_get_log_entries(1..=next).await.expect("read all");
    assert_eq!(all.len() as u64, next);
}

/// The same bound in bytes: large values fill the queue long before its entry count does;
/// and one append larger than the whole bound still goes through, alone.
#[tokio::test(flavor = "current_thread")]
async fn a_queue_full_of_bytes_makes_append_wait() {
    use aspen_core::limits::LOG_WRITER_QUEUE_BYTES_MAX;
    use futures_util::FutureExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = backend_in(&dir);
    let (mut log, _sm) = open_storage(&backend, Limits::default()).expect("open");
    log.set_appends_inline(false); // the writer's queue is what this tests
    let value_bytes = 1024 * 1024;
    let fits = LOG_WRITER_QUEUE_BYTES_MAX / (value_bytes as u64 + 64);
    let mut flushed = Vec::new();
    for index in 1..=fits {
        flushed.push(append_now(
            &mut log,
            vec![entry_with_value(index, value_bytes)],
        ));
    }
    let next = fits + 1;
    let (tx, _rx) = TypeConfig::oneshot();
    let blocked = log.append(
        vec![entry_with_value(next, value_bytes)],
        IOFlushed::signal(tx),
    );
    assert!(
        blocked.now_or_never().is_none(),
        "a queue full of bytes must make append wait"
    );
    for done in flushed {
        done.await;
    }
    // Larger than the whole queue: waits for an empty queue, then goes.
    let huge: Vec<Entry> = (next..next + fits + 2)
        .map(|i| entry_with_value(i, value_bytes))
        .collect();
    let (tx, rx) = TypeConfig::oneshot();
    log.append(huge, IOFlushed::signal(tx))
        .await
        .expect("an oversized append goes alone");
    rx.await.expect("callback fired").expect("durable");
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_log_id, Some(log_id(next + fits + 1)));
}

/// A committed index saved while the entries it covers are still queued must not reach the
/// disk without them: openraft re-applies the log up to the committed index at start-up and
/// stops if the entries are missing (the simulator's seeds 10798 and 10897 found a close that
/// wrote it anyway).
#[tokio::test(flavor = "current_thread")]
async fn a_close_never_writes_a_committed_index_past_the_durable_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = StorageBackend::Redb {
        dir: dir.path().join("node"),
    };
    {
        let (mut log, _sm) = open_storage(&backend, Limits::default()).expect("open");
        log.set_appends_inline(false); // the writer's queue is what this tests
        let (tx, rx) = TypeConfig::oneshot();
        log.append((1..=5).map(entry), IOFlushed::signal(tx))
            .await
            .expect("append");
        rx.await.expect("callback").expect("durable");
        log.save_committed(Some(log_id(5))).await.expect("save");
        // A vote waits for everything queued before it to be durable.
        log.save_vote(&Vote::new_committed(1, 1))
            .await
            .expect("vote");
        // Queued, not yet committed: on this current-thread runtime the writer task runs only
        // when the test yields, and it closes the store first.
        let (tx, _rx) = TypeConfig::oneshot();
        log.append((6..=10).map(entry), IOFlushed::signal(tx))
            .await
            .expect("append");
        log.save_committed(Some(log_id(10))).await.expect("save");
    }
    let (mut log, _sm) = open_storage(&backend, Limits::default()).expect("reopen");
    let state = log.get_log_state().await.expect("log state");
    let last = state.last_log_id.map_or(0, |id| id.index);
    let committed = log.read_committed().await.expect("committed");
    let committed = committed.map_or(0, |id| id.index);
    assert!(
        committed <= last,
        "committed index {committed} past the durable log's last entry {last}"
    );
    assert_eq!(
        committed, 5,
        "the committed index whose entries were durable"
    );
}

/// With the writer idle, an append is made durable on the caller's thread: its callback has
/// fired when `append` returns, with one journal sync, and its entries read back from memory
/// or the database alike. An append that finds an op queued ahead of it waits in the queue.
#[tokio::test(flavor = "current_thread")]
async fn an_append_to_an_idle_writer_is_durable_when_it_returns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = backend_in(&dir);
    let (mut log, sm) = open_storage(&backend, Limits::default()).expect("open");
    let syncs_before = sm.store().fsync_latency().count();
    for index in 1..=3 {
        let (tx, mut rx) = TypeConfig::oneshot();
        log.append(vec![entry(index)], IOFlushed::signal(tx))
            .await
            .expect("append");
        rx.try_recv()
            .expect("the callback fired before append returned")
            .expect("durable");
        assert_eq!(sm.store().fsync_latency().count(), syncs_before + index);
    }
    // A vote goes through the queue. Polled once, it is queued; the writer (a task on this
    // thread) cannot run before this test awaits, so the next append finds it there and
    // queues behind it instead of passing it.
    let mut vote_log = log.clone();
    let vote_value = Vote::new(2, LEADER);
    let mut vote = Box::pin(vote_log.save_vote(&vote_value));
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(vote.as_mut().poll(&mut context).is_pending());
    let (tx, mut rx) = TypeConfig::oneshot();
    log.append(vec![entry(4)], IOFlushed::signal(tx))
        .await
        .expect("append");
    assert!(
        rx.try_recv().is_err(),
        "an append passed an op queued before it"
    );
    rx.await.expect("callback fired").expect("durable");
    vote.await.expect("vote durable");
    let all = log.try_get_log_entries(1..=4).await.expect("read");
    assert_eq!(
        all.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        log.read_vote().await.expect("vote"),
        Some(Vote::new(2, LEADER))
    );
}

/// On a leader of other voters every append goes through the writer's queue; a committed
/// index saved there is not queued (it would wake the writer's thread for a round that writes
/// nothing) but rides with the next round that reaches past it. Saving one runs no round; the
/// next append's round carries it; a close keeps the newest one behind a durable round, and
/// never one past the durable log.
#[tokio::test(flavor = "current_thread")]
async fn a_committed_index_saved_behind_the_queue_runs_no_round_of_its_own() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = backend_in(&dir);
    {
        let (mut log, _sm) = open_storage(&backend, Limits::default()).expect("open");
        log.set_appends_inline(false);
        let (tx, rx) = TypeConfig::oneshot();
        log.append((1..=3).map(entry), IOFlushed::signal(tx))
            .await
            .expect("append");
        rx.await.expect("callback").expect("durable");
        let rounds = log.log_writer_rounds();
        for index in 1..=3 {
            log.save_committed(Some(log_id(index))).await.expect("save");
        }
        // The writer (a task on this thread) gets every chance to run.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(
            log.log_writer_rounds(),
            rounds,
            "a committed index ran a round"
        );
        assert_eq!(
            log.read_committed().await.expect("committed"),
            Some(log_id(3))
        );
        // The next append's round takes it.
        let (tx, rx) = TypeConfig::oneshot();
        log.append(vec![entry(4)], IOFlushed::signal(tx))
            .await
            .expect("append");
        rx.await.expect("callback").expect("durable");
        assert_eq!(log.log_writer_rounds(), rounds + 1);
        // Saved right after a durable round: the close writes it.
        log.save_committed(Some(log_id(4))).await.expect("save");
    }
    let (mut log, sm) = open_storage(&backend, Limits::default()).expect("reopen");
    assert_last_and_committed(&mut log, 4).await;
    {
        log.set_appends_inline(false);
        // Queued and never written (the close comes first): the committed index saved behind
        // it covers entries that are not durable, and the close does not write it.
        let (tx, _rx) = TypeConfig::oneshot();
        log.append((5..=6).map(entry), IOFlushed::signal(tx))
            .await
            .expect("append");
        log.save_committed(Some(log_id(6))).await.expect("save");
        drop(log);
        drop(sm);
    }
    let (mut log, _sm) = open_storage(&backend, Limits::default()).expect("reopen");
    assert_last_and_committed(&mut log, 4).await;
}

/// The log's last entry and its committed index are both at `index`.
async fn assert_last_and_committed(log: &mut aspen_storage::LogStore, index: u64) {
    assert_eq!(
        log.get_log_state().await.expect("log state").last_log_id,
        Some(log_id(index))
    );
    assert_eq!(
        log.read_committed().await.expect("committed"),
        Some(log_id(index))
    );
}
