//! A full disk under the log and the state database: the write fails (its flush callback gets
//! the error, later writes fail too), the store records the first failure and says the disk was
//! full, and everything committed before it is intact when the files are opened again. The
//! disk reserve is off at 0, capped at 1/8 of the filesystem, and not checked in memory (the
//! process test `aspen-server/tests/disk_full.rs` fills a real tmpfs past it).

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aspen_core::limits::Limits;
use aspen_core::type_config::alias::{Entry, LogId};
use aspen_core::{Command, PutRequest, TypeConfig};
use aspen_storage::{LogJournal, StorageBackend, open_storage, open_storage_with_backends};
use common::FaultyDisk;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, RaftLogReader};

const TERM: u64 = 1;
const LEADER: u64 = 1;
const ENTRIES_BEFORE_FULL: u64 = 20;
const VALUE_BYTES: usize = 4096;

fn disk(path: &std::path::Path, full: &Arc<AtomicBool>) -> FaultyDisk {
    FaultyDisk::open(path, full, &Arc::new(AtomicBool::new(false)))
}

fn log_id(index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(TERM, LEADER, index)
}

fn entry(index: u64) -> Entry {
    openraft::Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Command::Put(PutRequest {
            key: format!("k{index}").into_bytes(),
            value: vec![b'v'; VALUE_BYTES],
            ..Default::default()
        })),
    }
}

/// Appends `index` and waits for its flush callback; returns what the callback got.
async fn append(log: &mut aspen_storage::LogStore, index: u64) -> Result<(), std::io::Error> {
    let (tx, rx) = TypeConfig::oneshot();
    log.append(vec![entry(index)], IOFlushed::signal(tx))
        .await?;
    rx.await.expect("callback fired")
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_disk_fails_the_write_names_the_cause_and_keeps_what_was_durable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let full = Arc::new(AtomicBool::new(false));
    let open = |full: &Arc<AtomicBool>| {
        open_storage_with_backends(
            dir.path(),
            Limits::default(),
            disk(&dir.path().join("log.redb"), full),
            // The journal is filled when created, so overwriting it needs no new space.
            LogJournal::new(disk(
                &dir.path().join("log.journal"),
                &Arc::new(AtomicBool::new(false)),
            )),
            disk(&dir.path().join("state.redb"), full),
        )
        .expect("open")
    };
    let (mut log, sm) = open(&full);
    for index in 1..=ENTRIES_BEFORE_FULL {
        append(&mut log, index).await.expect("room on the disk");
    }
    assert_eq!(sm.store().io_failure(), None);

    full.store(true, Ordering::Release);
    // Enough to need new pages. The journal is preallocated, so an append's record is durable
    // and its callback succeeds; `log.redb` then fails to take it, and the next append's
    // callback reports that, with its cause.
    let mut failed = None;
    let mut acknowledged = ENTRIES_BEFORE_FULL;
    // (`log.redb` takes the journal's records a megabyte at a time: 4 MiB of values is enough.)
    for index in ENTRIES_BEFORE_FULL + 1..=ENTRIES_BEFORE_FULL + 1000 {
        if let Err(error) = append(&mut log, index).await {
            failed = Some(error);
            break;
        }
        acknowledged = index;
    }
    let error = failed.expect("a commit on a full disk fails");
    assert!(error.to_string().contains("No space left"), "{error}");
    let failure = sm.store().io_failure().expect("the failure is recorded");
    assert!(failure.disk_full, "{failure:?}");
    assert!(failure.message.contains("log.redb"), "{failure:?}");
    // The writer does not carry on after a failed commit, even with room again.
    full.store(false, Ordering::Release);
    let next = ENTRIES_BEFORE_FULL + 2000;
    assert!(append(&mut log, next).await.is_err());
    drop((log, sm));

    // Reopened with room: every acknowledged entry is there, in order, including those the
    // journal held when `log.redb` could not take them.
    let (mut log, sm) = open(&full);
    assert_eq!(sm.store().io_failure(), None);
    let entries = log
        .try_get_log_entries(1..=acknowledged)
        .await
        .expect("read the log");
    assert_eq!(entries.len() as u64, acknowledged);
    for (entry, index) in entries.iter().zip(1..) {
        assert_eq!(entry.log_id, log_id(index));
    }
    let state = log.get_log_state().await.expect("log state");
    let last = state.last_log_id.expect("a last entry").index;
    assert!(
        last >= acknowledged,
        "last {last}, acknowledged {acknowledged}"
    );
    // And it takes writes again.
    append(&mut log, last + 1).await.expect("room again");
}

#[test]
fn the_reserve_is_off_at_zero_capped_by_the_filesystem_and_never_checked_in_memory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (free, total) = aspen_storage::disk::filesystem_space(dir.path()).expect("statvfs");
    assert!(free <= total && total > 0);
    let open = |reserve: u64| {
        let backend = StorageBackend::Redb {
            dir: dir.path().join(format!("node-{reserve}")),
        };
        let limits = Limits {
            disk_reserve_bytes: reserve,
            ..Default::default()
        };
        open_storage(&backend, limits).expect("open").1
    };
    // 0: off. A reserve larger than the whole filesystem is capped at 1/8 of it, which is
    // free here unless the disk is nearly full.
    assert_eq!(open(0).store().disk_low(), None);
    let capped = aspen_storage::disk::effective_reserve_bytes(u64::MAX, total);
    assert_eq!(capped, total / aspen_core::limits::DISK_RESERVE_FS_DIVISOR);
    if free > capped {
        assert_eq!(open(u64::MAX).store().disk_low(), None);
    }
    // In memory: nothing to check.
    let limits = Limits {
        disk_reserve_bytes: u64::MAX,
        ..Default::default()
    };
    let (_, sm) = open_storage(&StorageBackend::InMemory, limits).expect("open");
    assert_eq!(sm.store().disk_low(), None);
    assert_eq!(
        aspen_storage::disk::effective_reserve_bytes(4096, 1 << 40),
        4096
    );
}

/// The disk check counts what the store's files will still write for entries already taken
/// (`Store::owed_disk_bytes`): an appended entry is owed to `log.redb` (it sits in the
/// journal) and to `state.redb` (not applied, or applied without a durable commit); a durable
/// state commit settles the second, and reopening (which checkpoints the journal) the first.
#[tokio::test(flavor = "current_thread")]
async fn owed_disk_bytes_count_taken_entries_until_their_files_have_them() {
    const ENTRIES: u64 = 20;
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = StorageBackend::Redb {
        dir: dir.path().join("node"),
    };
    let (mut log, sm) = open_storage(&backend, Limits::default()).expect("open");
    assert_eq!(sm.store().owed_disk_bytes(), 0);

    for index in 1..=ENTRIES {
        append(&mut log, index).await.expect("append");
    }
    let payload_min = ENTRIES * VALUE_BYTES as u64;
    let factor = 2;
    let appended = sm.store().owed_disk_bytes();
    // Owed to both files, each at twice the payload (which holds at least the values).
    assert!(
        appended >= 2 * factor * payload_min,
        "owed {appended} after {ENTRIES} appends"
    );

    let entries = log
        .try_get_log_entries(1..=ENTRIES)
        .await
        .expect("read the log");
    sm.apply_entries(&entries).expect("apply");
    // Applied without a durable commit (unless the batch came due for one, on a slow run):
    // still in redb's write buffer, still owed.
    if sm.store().state_durable_applied_index() < ENTRIES {
        assert_eq!(sm.store().owed_disk_bytes(), appended);
    }
    sm.store().make_state_durable().expect("durable");
    let log_owed = sm.store().owed_disk_bytes();
    assert_eq!(log_owed, appended / 2, "only log.redb's part is left");
    assert!(log_owed >= factor * payload_min);

    drop((log, sm));
    let (_log, sm) = open_storage(&backend, Limits::default()).expect("reopen");
    assert_eq!(
        sm.store().owed_disk_bytes(),
        0,
        "the journal was checkpointed"
    );
}
