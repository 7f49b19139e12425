//! The key index, in memory (`state_machine/key_index.rs`) with a checkpoint file
//! (`state_machine/index_checkpoint.rs`): what a crash leaves (a checkpoint older than the state
//! database, or a damaged one, or none) is completed or rebuilt from `kv_revs` on open, and
//! every read, HashKV and snapshot agrees with the store before the crash.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use std::path::Path;

use aspen_core::limits::Limits;
use aspen_core::type_config::alias::Entry;
use aspen_core::{Command, DeleteRangeRequest, PutRequest, RangeRequest, TypeConfig};
use aspen_storage::state_machine::ReadOutcome;
use aspen_storage::{StateMachine, StorageBackend, open_storage};
use openraft::EntryPayload;

const KEYS: u64 = 12;

fn entry(index: u64, command: Command) -> Entry {
    openraft::Entry {
        log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
        payload: EntryPayload::Normal(command),
    }
}

fn key(n: u64) -> Vec<u8> {
    format!("k{:02}", n % KEYS).into_bytes()
}

/// Puts and deletes over a few keys, in batches of 1..=5 entries; returns the last log index.
fn write_history(sm: &StateMachine, commands: u64) -> u64 {
    let mut index = 0;
    let mut batch = Vec::new();
    for n in 0..commands {
        index += 1;
        let command = if n % 7 == 6 {
            Command::DeleteRange(DeleteRangeRequest {
                key: key(n * 5),
                ..Default::default()
            })
        } else {
            Command::Put(PutRequest {
                key: key(n * 3),
                value: format!("v{n}").into_bytes(),
                ..Default::default()
            })
        };
        batch.push(entry(index, command));
        if batch.len() as u64 == 1 + n % 5 {
            sm.apply_entries(&batch).expect("apply");
            batch.clear();
        }
    }
    if !batch.is_empty() {
        sm.apply_entries(&batch).expect("apply");
    }
    index
}

/// Every key at every revision, as ranges over all keys and single-key gets.
fn everything(sm: &StateMachine) -> Vec<ReadOutcome> {
    let revision = sm.reader().applied_state().expect("state").revision;
    let mut reads = Vec::new();
    for at in 1..=revision {
        reads.push(
            sm.reader()
                .range(&RangeRequest {
                    key: b"k".to_vec(),
                    range_end: b"l".to_vec(),
                    revision: at,
                    ..Default::default()
                })
                .expect("range"),
        );
        for n in 0..KEYS {
            reads.push(
                sm.reader()
                    .range(&RangeRequest {
                        key: key(n),
                        revision: at,
                        ..Default::default()
                    })
                    .expect("get"),
            );
        }
    }
    reads
}

fn hash(sm: &StateMachine) -> u32 {
    sm.reader()
        .hash_kv(0)
        .expect("hash")
        .expect("not compacted")
        .hash
}

const CHECKPOINT: &str = "key_index.ckpt";

/// The revision a checkpoint file holds (bytes 8..16, `index_checkpoint.rs`).
fn checkpoint_revision(dir: &Path) -> u64 {
    let bytes = std::fs::read(dir.join(CHECKPOINT)).expect("a checkpoint");
    u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"))
}

fn reopen(backend: &StorageBackend) -> (aspen_storage::LogStore, StateMachine) {
    open_storage(backend, Limits::default()).expect("reopen")
}

#[test]
fn a_stale_damaged_or_missing_checkpoint_is_completed_from_kv_revs_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = StorageBackend::Redb {
        dir: dir.path().to_path_buf(),
    };
    // A clean close writes a checkpoint at the store's revision.
    let first_revision = {
        let (_log, sm) = open_storage(&backend, Limits::default()).expect("open");
        write_history(&sm, 40);
        sm.reader().applied_state().expect("state").revision
    };
    assert_eq!(checkpoint_revision(dir.path()), first_revision);
    let stale = std::fs::read(dir.path().join(CHECKPOINT)).expect("checkpoint");

    // More history on top; then the stale checkpoint put back, as a crash before the next
    // checkpoint leaves it.
    let (before, hash_before) = {
        let (_log, sm) = reopen(&backend);
        let mut index = sm
            .reader()
            .applied_state()
            .expect("state")
            .last_applied
            .expect("id")
            .index;
        for n in 0..50 {
            index += 1;
            let command = if n % 6 == 5 {
                Command::DeleteRange(DeleteRangeRequest {
                    key: key(n),
                    ..Default::default()
                })
            } else {
                Command::Put(PutRequest {
                    key: key(n * 7),
                    value: format!("x{n}").into_bytes(),
                    ..Default::default()
                })
            };
            sm.apply_entries(&[entry(index, command)]).expect("apply");
        }
        (everything(&sm), hash(&sm))
    };
    assert!(checkpoint_revision(dir.path()) > first_revision);
    std::fs::write(dir.path().join(CHECKPOINT), &stale).expect("put back");
    {
        let (_log, sm) = reopen(&backend);
        assert_eq!(
            everything(&sm),
            before,
            "reads after replaying above a stale checkpoint"
        );
        assert_eq!(hash(&sm), hash_before);
    }

    // A damaged checkpoint is not used: the index is rebuilt from all of `kv_revs`.
    let mut damaged = std::fs::read(dir.path().join(CHECKPOINT)).expect("checkpoint");
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    std::fs::write(dir.path().join(CHECKPOINT), &damaged).expect("damage");
    {
        let (_log, sm) = reopen(&backend);
        assert_eq!(everything(&sm), before, "reads after a rebuild");
        assert_eq!(hash(&sm), hash_before);
    }

    // None at all, and a half-written one a crash left: the same, and the half is removed.
    std::fs::remove_file(dir.path().join(CHECKPOINT)).expect("remove");
    let unfinished = dir.path().join(format!("{CHECKPOINT}.tmp"));
    std::fs::write(&unfinished, &stale[..stale.len() / 2]).expect("a torn write");
    let (_log, sm) = reopen(&backend);
    assert_eq!(everything(&sm), before, "reads without a checkpoint");
    assert_eq!(hash(&sm), hash_before);
    assert!(
        !unfinished.exists(),
        "the unfinished checkpoint is removed at open"
    );
}

/// Compaction removes no record above the checkpoint an open would replay from: the compactor
/// writes a checkpoint at or above the compaction revision first. Reads and HashKV agree
/// after a reopen from it.
#[test]
fn compaction_first_checkpoints_at_or_above_its_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = StorageBackend::Redb {
        dir: dir.path().to_path_buf(),
    };
    let (_log, sm) = open_storage(&backend, Limits::default()).expect("open");
    let mut index = write_history(&sm, 60);
    let revision = sm.reader().applied_state().expect("state").revision;
    assert!(
        !dir.path().join(CHECKPOINT).exists(),
        "none before a close or a compaction"
    );
    index += 1;
    sm.apply_entries(&[entry(
        index,
        Command::Compact {
            revision: revision - 5,
            physical: true,
        },
    )])
    .expect("compact");
    sm.compact_until_done().expect("compaction");
    assert!(checkpoint_revision(dir.path()) >= revision - 5);
    let checkpoint = std::fs::read(dir.path().join(CHECKPOINT)).expect("checkpoint");
    let compacted = |sm: &StateMachine| {
        let at = sm.reader().applied_state().expect("state").revision;
        (revision - 5..=at)
            .map(|rev| {
                sm.reader()
                    .range(&RangeRequest {
                        key: b"k".to_vec(),
                        range_end: b"l".to_vec(),
                        revision: rev,
                        ..Default::default()
                    })
                    .expect("range")
            })
            .collect::<Vec<_>>()
    };
    let before = compacted(&sm);
    let hash_before = hash(&sm);
    drop(sm);
    drop(_log);
    // As a crash right after the compaction leaves it.
    std::fs::write(dir.path().join(CHECKPOINT), &checkpoint).expect("put back");
    let (_log, sm) = reopen(&backend);
    assert_eq!(compacted(&sm), before);
    assert_eq!(hash(&sm), hash_before);
}

#[test]
fn reads_agree_before_and_after_durable_commits_compaction_and_snapshots() {
    let (_log, sm) = open_storage(&StorageBackend::InMemory, Limits::default()).expect("open");
    let last = write_history(&sm, 60);
    let not_durable = everything(&sm);
    let hash_not_durable = hash(&sm);
    sm.store().make_state_durable().expect("durable");
    assert_eq!(everything(&sm), not_durable);
    assert_eq!(hash(&sm), hash_not_durable);

    // More history, not durable, then a snapshot of it installed into a fresh store: the
    // snapshot carries its versions.
    let mut index = last;
    for n in 0..30 {
        index += 1;
        sm.apply_entries(&[entry(
            index,
            Command::Put(PutRequest {
                key: key(n),
                value: format!("w{n}").into_bytes(),
                ..Default::default()
            }),
        )])
        .expect("apply");
    }
    let mixed = everything(&sm);
    let hash_mixed = hash(&sm);
    let export = aspen_storage::state_machine::export_snapshot(sm.store()).expect("export");
    let (_log2, copy) = open_storage(&StorageBackend::InMemory, Limits::default()).expect("open");
    copy.install(export.meta(), export.data()).expect("install");
    assert_eq!(everything(&copy), mixed, "the installed copy reads alike");
    assert_eq!(hash(&copy), hash_mixed);

    // Compaction at the current revision; reads at and above it
    // stay the same.
    let revision = sm.reader().applied_state().expect("state").revision;
    index += 1;
    sm.apply_entries(&[entry(
        index,
        Command::Compact {
            revision,
            physical: false,
        },
    )])
    .expect("compact");
    sm.compact_until_done().expect("compaction");
    let at_revision = RangeRequest {
        key: b"k".to_vec(),
        range_end: b"l".to_vec(),
        revision,
        ..Default::default()
    };
    assert_eq!(
        sm.reader().range(&at_revision).expect("range"),
        copy.reader().range(&at_revision).expect("range"),
    );
}
