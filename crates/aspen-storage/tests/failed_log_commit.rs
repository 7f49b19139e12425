//! A log commit that fails (its fsync returns EIO, or the disk is full) must never make the
//! entries it held read as absent. openraft applies committed entries by reading them back
//! from the log (`RaftLogReader::entries_stream`) and, when the read comes back short, reports
//! the whole range applied anyway: its metrics' `last_applied` then runs ahead of the state
//! machine, and a linearizable read, which waits for that applied index, serves state from
//! before the read index. The simulator found it (seeds 15023 and 10920): a follower catching
//! up after a partition queued entries 30..=45, their commit's fsync failed, the writer dropped
//! them from its pending set, openraft's apply of 30..=42 read nothing, and the node answered a
//! linearizable `Get` at "applied 42" from a state machine at 29, before its Raft stopped.
//! After a failed commit every log read now fails, so the apply fails and Raft stops instead.
//! Also here: a stream longer than one read's bound (`LOG_READ_ENTRIES_MAX`) is read whole.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::FaultyDisk;

use aspen_core::TypeConfig;
use aspen_core::limits::{LOG_READ_ENTRIES_MAX, Limits};
use aspen_core::type_config::alias::{Entry, LogId};
use aspen_storage::{
    LogJournal, LogStore, StorageBackend, open_storage, open_storage_with_backends,
};
use futures_util::StreamExt;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, RaftLogReader};

const TERM: u64 = 1;
const LEADER: u64 = 1;

fn log_id(index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(TERM, LEADER, index)
}

fn blank(index: u64) -> Entry {
    openraft::Entry {
        log_id: log_id(index),
        payload: EntryPayload::Blank,
    }
}

/// Appends `first..=last` in one append; returns the flush callback's receiver.
async fn append(
    log: &mut LogStore,
    first: u64,
    last: u64,
) -> impl std::future::Future<Output = Result<(), std::io::Error>> + use<> {
    let (tx, rx) = TypeConfig::oneshot();
    log.append((first..=last).map(blank), IOFlushed::signal(tx))
        .await
        .expect("append queues");
    async move { rx.await.expect("callback fired") }
}

/// The indexes an `entries_stream` read yields, or its first error.
async fn stream_indexes(log: &mut LogStore, first: u64, end: u64) -> Result<Vec<u64>, String> {
    let mut reader = log.get_log_reader().await;
    let items: Vec<_> = reader.entries_stream(first..end).await.collect().await;
    items
        .into_iter()
        .map(|item| {
            item.map(|entry| entry.log_id.index)
                .map_err(|e| e.to_string())
        })
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn entries_of_a_failed_log_commit_are_never_read_as_absent() {
    failed_commit_then_reads(false).await;
}

/// The same fault on an append made durable inline (the writer idle): the append's callback
/// reports the failure before `append` returns, and every read after it fails.
#[tokio::test(flavor = "current_thread")]
async fn a_failed_inline_log_commit_fails_every_later_read() {
    failed_commit_then_reads(true).await;
}

/// `inline`: appends may be made durable on the caller's thread; off, each waits in the
/// writer's queue, so its entries are readable before its commit fails.
async fn failed_commit_then_reads(inline: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let fail_next_sync = Arc::new(AtomicBool::new(false));
    let never = Arc::new(AtomicBool::new(false));
    let (mut log, _sm) = open_storage_with_backends(
        dir.path(),
        Limits::default(),
        FaultyDisk::open(&dir.path().join("log.redb"), &never, &fail_next_sync),
        // A log commit's sync is its journal's.
        LogJournal::new(FaultyDisk::open(
            &dir.path().join("log.journal"),
            &never,
            &fail_next_sync,
        )),
        FaultyDisk::open(&dir.path().join("state.redb"), &never, &never),
    )
    .expect("open");
    log.set_appends_inline(inline);
    append(&mut log, 1, 29)
        .await
        .await
        .expect("durable before the fault");

    // The follower catching up: 30..=45 arrive in one append, and their commit's fsync fails.
    fail_next_sync.store(true, Ordering::Release);
    let flushed = append(&mut log, 30, 45).await;
    if !inline {
        // Readable as soon as `append` returns (openraft applies committed entries before
        // they are durable)...
        assert_eq!(
            stream_indexes(&mut log, 30, 43).await,
            Ok((30..43).collect())
        );
    }
    let error = flushed.await.expect_err("the commit's fsync failed");
    assert!(error.to_string().contains("I/O error"), "{error}");

    // ... and after the failed commit, openraft's apply of the committed 30..=42 reads them
    // again: a short or empty answer would be applied as nothing and reported applied. It must
    // fail, so that the apply fails and Raft stops.
    let applied_read = stream_indexes(&mut log, 30, 43).await;
    assert!(
        applied_read.is_err(),
        "after a failed commit the log read {applied_read:?} instead of failing"
    );
    let direct = log.try_get_log_entries(30..43).await;
    assert!(
        direct.is_err(),
        "after a failed commit the log read {:?} instead of failing",
        direct.map(|entries| entries.len())
    );
    // Nothing in the log is trusted any more, durable entries included.
    assert!(log.try_get_log_entries(1..30).await.is_err());
}

#[tokio::test(flavor = "current_thread")]
async fn an_entries_stream_longer_than_one_read_is_read_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = StorageBackend::Redb {
        dir: dir.path().to_path_buf(),
    };
    let (mut log, _sm) = open_storage(&backend, Limits::default()).expect("open");
    let last = LOG_READ_ENTRIES_MAX * 2 + 3;
    // In pieces: the durable part read from the database, the rest still pending.
    append(&mut log, 1, LOG_READ_ENTRIES_MAX + 1)
        .await
        .await
        .expect("durable");
    let flushed = append(&mut log, LOG_READ_ENTRIES_MAX + 2, last).await;
    let read = stream_indexes(&mut log, 1, last + 1).await.expect("read");
    assert_eq!(read.len() as u64, last, "a stream stopped early");
    assert!(read.iter().copied().eq(1..=last));
    // Past the end of the log: what there is, no error.
    let tail = stream_indexes(&mut log, last - 1, last + 100)
        .await
        .expect("read");
    assert_eq!(tail, vec![last - 1, last]);
    flushed.await.expect("durable");
}
