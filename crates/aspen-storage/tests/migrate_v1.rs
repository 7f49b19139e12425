//! Storage format 1 (one `aspen.redb`) is migrated to format 2 (`log.redb`, `state.redb`,
//! `snapshots/`) on first open, with nothing lost, and a crash at any step of the migration
//! leaves a directory that the next open finishes.
//!
//! The fixture `tests/fixtures/v1/member` is a real member's storage directory written by the
//! format-1 server (commit c470497); `tests/fixtures/v1/README.md` says how it was made and what
//! it holds, which is what these tests check, value by value.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod fixture_dirs;

use fixture_dirs::{check_fixture_keys, copy_dir};
use std::path::{Path, PathBuf};

use aspen_core::limits::Limits;
use aspen_storage::{
    LOG_FILE_NAME, LogStore, SNAPSHOT_DIR_NAME, STATE_FILE_NAME, StateMachine, StorageBackend,
    V1_FILE_NAME, V1_SNAPSHOT_DIR_NAME, open_storage,
};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{LogIdOptionExt, RaftLogReader};

/// What the fixture's member had done: see the fixture's README.
const FIXTURE_LAST_LOG_INDEX: u64 = 24;
const FIXTURE_REVISION: u64 = 21;
const FIXTURE_COMPACT_REVISION: u64 = 5;
const FIXTURE_LEASE_ID: u64 = 0x3385_f500_3ac4_5706;
const FIXTURE_TERM: u64 = 1;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1/member")
}

fn open(dir: &Path) -> (LogStore, StateMachine) {
    let backend = StorageBackend::Redb {
        dir: dir.to_path_buf(),
    };
    open_storage(&backend, Limits::default()).expect("open migrated storage")
}

/// Everything the fixture holds, checked through the format-2 stores.
async fn check_contents(dir: &Path) {
    // The layout: format 2's files, none of format 1's.
    assert!(dir.join(LOG_FILE_NAME).is_file(), "log.redb");
    assert!(dir.join(STATE_FILE_NAME).is_file(), "state.redb");
    assert!(dir.join(SNAPSHOT_DIR_NAME).is_dir(), "snapshots/");
    assert!(!dir.join(V1_FILE_NAME).exists(), "aspen.redb is gone");
    assert!(
        !dir.join(V1_SNAPSHOT_DIR_NAME).exists(),
        "aspen.redb.snapshots is gone"
    );

    let (mut log, mut sm) = open(dir);

    // The Raft log, vote and committed index came across.
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_log_id.index(), Some(FIXTURE_LAST_LOG_INDEX));
    let purged = state.last_purged_log_id.index().unwrap_or(0);
    let entries = log
        .try_get_log_entries(purged + 1..=FIXTURE_LAST_LOG_INDEX)
        .await
        .expect("log entries");
    assert_eq!(entries.len() as u64, FIXTURE_LAST_LOG_INDEX - purged);
    let vote = log.read_vote().await.expect("vote").expect("a vote");
    assert_eq!(vote.leader_id.term, FIXTURE_TERM);
    let committed = log.read_committed().await.expect("committed");
    assert_eq!(committed.index(), Some(FIXTURE_LAST_LOG_INDEX));

    // The state machine: applied position, revisions, keys with their history, the lease.
    let applied = sm.reader().applied_state().expect("applied state");
    assert_eq!(applied.last_applied.index(), Some(FIXTURE_LAST_LOG_INDEX));
    assert_eq!(applied.revision, FIXTURE_REVISION);
    assert_eq!(applied.compact_revision, FIXTURE_COMPACT_REVISION);
    assert_eq!(applied.membership.membership().voter_ids().count(), 1);

    check_fixture_keys(&sm, FIXTURE_LEASE_ID);
    let leases: Vec<u64> = sm
        .reader()
        .leases()
        .expect("leases")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(leases, vec![FIXTURE_LEASE_ID]);
    assert_eq!(
        sm.reader()
            .lease_keys(FIXTURE_LEASE_ID)
            .expect("lease keys"),
        vec![b"leased".to_vec()]
    );

    // The snapshot moved with its directory and still reads back whole.
    let snapshot = sm
        .get_current_snapshot()
        .await
        .expect("current snapshot")
        .expect("the fixture has a snapshot");
    aspen_storage::snapshot::verify(&snapshot.snapshot).expect("snapshot reads back whole");
    assert!(snapshot.meta.last_log_id.index() <= Some(FIXTURE_LAST_LOG_INDEX));
    let files = std::fs::read_dir(dir.join(SNAPSHOT_DIR_NAME))
        .expect("snapshots dir")
        .count();
    assert_eq!(files, 1, "exactly the current snapshot file");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime")
}

#[test]
fn a_v1_directory_is_migrated_on_open_with_nothing_lost() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("member");
    copy_dir(&fixture_dir(), &dir);
    drop(open(&dir));
    runtime().block_on(check_contents(&dir));
    // A second open is a plain format-2 open.
    runtime().block_on(check_contents(&dir));
}

#[test]
fn a_crash_after_any_migration_step_is_finished_by_the_next_open() {
    // A complete migration, for the files each step leaves behind.
    let temp = tempfile::tempdir().expect("temp dir");
    let migrated = temp.path().join("migrated");
    copy_dir(&fixture_dir(), &migrated);
    drop(open(&migrated));

    // Step 1 interrupted: a partial temporary log file beside the untouched v1 file.
    let during_copy = temp.path().join("during-copy");
    copy_dir(&fixture_dir(), &during_copy);
    std::fs::write(during_copy.join("log.redb.tmp"), b"half a file").expect("write tmp");
    drop(open(&during_copy));
    runtime().block_on(check_contents(&during_copy));

    // After step 1: log.redb complete, aspen.redb untouched, snapshots not moved.
    let after_copy = temp.path().join("after-copy");
    copy_dir(&fixture_dir(), &after_copy);
    std::fs::copy(migrated.join(LOG_FILE_NAME), after_copy.join(LOG_FILE_NAME)).expect("copy");
    drop(open(&after_copy));
    runtime().block_on(check_contents(&after_copy));

    // After step 3: aspen.redb already the state file, log.redb complete, snapshots moved.
    let after_state = temp.path().join("after-state");
    std::fs::create_dir_all(&after_state).expect("dir");
    std::fs::copy(
        migrated.join(LOG_FILE_NAME),
        after_state.join(LOG_FILE_NAME),
    )
    .expect("copy");
    std::fs::copy(
        migrated.join(STATE_FILE_NAME),
        after_state.join(V1_FILE_NAME),
    )
    .expect("copy");
    copy_dir(
        &migrated.join(SNAPSHOT_DIR_NAME),
        &after_state.join(SNAPSHOT_DIR_NAME),
    );
    drop(open(&after_state));
    runtime().block_on(check_contents(&after_state));
}

#[test]
fn a_directory_with_both_formats_is_refused_and_left_alone() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("member");
    copy_dir(&fixture_dir(), &dir);
    let v1_bytes = std::fs::read(dir.join(V1_FILE_NAME)).expect("read v1");
    std::fs::write(dir.join(STATE_FILE_NAME), b"someone else's").expect("write");
    let backend = StorageBackend::Redb { dir: dir.clone() };
    let error = open_storage(&backend, Limits::default()).expect_err("both formats");
    let message = error.to_string();
    assert!(
        message.contains("format 1") && message.contains("format 2"),
        "{message}"
    );
    assert_eq!(
        std::fs::read(dir.join(V1_FILE_NAME)).expect("read v1"),
        v1_bytes
    );
}
