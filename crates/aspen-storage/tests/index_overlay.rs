//! The key index's in-memory overlay (`state_machine/overlay.rs`): what a crash leaves (records
//! in `kv_revs` above the flushed revision, their index entries lost with the process) is
//! rebuilt on open, and every read, HashKV and snapshot agrees with the store before the crash.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use std::path::Path;

use aspen_core::limits::Limits;
use aspen_core::type_config::alias::Entry;
use aspen_core::{Command, DeleteRangeRequest, PutRequest, RangeRequest, TypeConfig};
use aspen_storage::schema;
use aspen_storage::state_machine::ReadOutcome;
use aspen_storage::{STATE_FILE_NAME, StateMachine, StorageBackend, open_storage};
use openraft::EntryPayload;
use redb::{ReadableDatabase, ReadableTable};

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

/// Rewinds `index_flushed` to `flushed` and removes `kv_index`'s entries above it: the state
/// file a crash leaves when the last durable commit did not flush the overlay.
fn lose_index_above(dir: &Path, flushed: u64) -> u64 {
    let db = redb::Database::open(dir.join(STATE_FILE_NAME)).expect("open state file");
    let txn = db.begin_write().expect("write");
    let mut lost = 0;
    {
        let mut index = txn.open_table(schema::KV_INDEX).expect("kv_index");
        let above: Vec<(Vec<u8>, u64)> = index
            .iter()
            .expect("iter")
            .map(|item| {
                let (k, _) = item.expect("item");
                let (key, main) = k.value();
                (key.to_vec(), main)
            })
            .filter(|(_, main)| *main > flushed)
            .collect();
        for (key, main) in &above {
            index.remove((key.as_slice(), *main)).expect("remove");
            lost += 1;
        }
        let mut meta = txn.open_table(schema::SM_META).expect("sm_meta");
        meta.insert(
            schema::SM_INDEX_FLUSHED,
            aspen_core::codec::encode(&flushed).as_slice(),
        )
        .expect("insert");
    }
    txn.commit().expect("commit");
    lost
}

#[test]
fn index_entries_lost_with_a_crash_are_rebuilt_from_kv_revs_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = StorageBackend::Redb {
        dir: dir.path().to_path_buf(),
    };
    let (before, hash_before, revision) = {
        let (_log, sm) = open_storage(&backend, Limits::default()).expect("open");
        write_history(&sm, 90);
        let revision = sm.reader().applied_state().expect("state").revision;
        (everything(&sm), hash(&sm), revision)
    };
    assert!(revision > 40, "revision {revision}");
    let flushed = revision / 3;
    let lost = lose_index_above(dir.path(), flushed);
    assert!(lost > 20, "only {lost} index entries removed");
    let (_log, sm) = open_storage(&backend, Limits::default()).expect("reopen");
    assert_eq!(everything(&sm), before, "reads after the rebuild");
    assert_eq!(hash(&sm), hash_before);
    // Flushed again (durably), the entries are back in `kv_index`: a second reopen rebuilds
    // nothing and reads the same.
    sm.store().make_state_durable().expect("durable");
    drop(sm);
    drop(_log);
    let db = redb::Database::open(dir.path().join(STATE_FILE_NAME)).expect("open state file");
    let restored = db
        .begin_read()
        .expect("read")
        .open_table(schema::KV_INDEX)
        .expect("kv_index")
        .iter()
        .expect("iter")
        .filter(|item| item.as_ref().expect("item").0.value().1 > flushed)
        .count();
    assert_eq!(
        restored as u64, lost,
        "every lost index entry is back in kv_index"
    );
    drop(db);
    let (_log, sm) = open_storage(&backend, Limits::default()).expect("reopen");
    assert_eq!(everything(&sm), before, "reads after the flush");
}

#[test]
fn reads_agree_before_and_after_flushes_compaction_and_snapshots() {
    let (_log, sm) = open_storage(&StorageBackend::InMemory, Limits::default()).expect("open");
    let last = write_history(&sm, 60);
    let unflushed = everything(&sm);
    let hash_unflushed = hash(&sm);
    sm.store().make_state_durable().expect("durable");
    assert_eq!(everything(&sm), unflushed);
    assert_eq!(hash(&sm), hash_unflushed);

    // More history, unflushed, then a snapshot of it installed into a fresh store: the
    // snapshot carries the overlay's entries.
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

    // Compaction at the current revision flushes what it needs first; reads at and above it
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
