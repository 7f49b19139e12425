//! Storage format 2 (the key index in the state database's `kv_index` table) is upgraded to
//! format 3 (the key index in memory, `state_machine/key_index.rs`) on first open, with nothing
//! lost; the upgraded directory opens again, from the key index's checkpoint.
//!
//! The fixture `tests/fixtures/v2/member` is a real member's storage directory written by the
//! format-2 server; `tests/fixtures/v2/README.md` says how it was made and what it holds.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod fixture_dirs;

use fixture_dirs::{check_fixture_keys, copy_dir};
use std::path::{Path, PathBuf};

use aspen_core::limits::Limits;
use aspen_storage::{STATE_FILE_NAME, StateMachine, StorageBackend, open_storage, schema};
use redb::{ReadableDatabase, TableHandle};

const FIXTURE_REVISION: u64 = 21;
const FIXTURE_COMPACT_REVISION: u64 = 5;
const FIXTURE_LEASE_ID: u64 = 0x3d13_a252_340b_a301;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v2/member")
}

fn check_contents(sm: &StateMachine) {
    let applied = sm.reader().applied_state().expect("applied state");
    assert_eq!(applied.revision, FIXTURE_REVISION);
    assert_eq!(applied.compact_revision, FIXTURE_COMPACT_REVISION);
    check_fixture_keys(sm, FIXTURE_LEASE_ID);
    assert_eq!(
        sm.reader()
            .lease_keys(FIXTURE_LEASE_ID)
            .expect("lease keys"),
        vec![b"leased".to_vec()]
    );
}

/// The state file's format marker and whether it still has `kv_index` (store closed).
fn format_of(dir: &Path) -> (u64, bool) {
    let db = redb::Database::open(dir.join(STATE_FILE_NAME)).expect("open state file");
    let txn = db.begin_read().expect("read");
    let format = txn
        .open_table(schema::FORMAT)
        .expect("format table")
        .get(schema::FORMAT_KEY)
        .expect("get")
        .expect("a format marker")
        .value();
    let has_index = txn
        .list_tables()
        .expect("tables")
        .any(|table| table.name() == schema::KV_INDEX.name());
    (format, has_index)
}

#[test]
fn a_format_2_directory_is_upgraded_to_3_with_nothing_lost() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path().join("member");
    copy_dir(&fixture_dir(), &dir);
    assert_eq!(format_of(&dir), (2, true), "the fixture is format 2");
    let backend = StorageBackend::Redb { dir: dir.clone() };
    {
        let (_log, sm) = open_storage(&backend, Limits::default()).expect("open and upgrade");
        check_contents(&sm);
    }
    assert_eq!(
        format_of(&dir),
        (schema::FORMAT_VERSION, false),
        "format 3, kv_index dropped"
    );
    assert!(
        dir.join("key_index.ckpt").is_file(),
        "a checkpoint written at close"
    );
    // Again, now from the checkpoint.
    let (_log, sm) = open_storage(&backend, Limits::default()).expect("reopen");
    check_contents(&sm);
}
