//! Reopening a redb store: everything written through the openraft traits comes back, and files
//! that are not Aspen's (a second opener, garbage, a foreign redb database) are refused with the
//! path in the message, and left as they were.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use aspen_core::command::{AlarmAction, AlarmType};
use aspen_core::limits::Limits;
use aspen_core::type_config::alias::{Entry, LogId, Membership, StoredMembership, Vote};
use aspen_core::{
    ApplyResponse, Command, CommandResult, DeleteRangeRequest, NodeInfo, PutRequest, RangeRequest,
    TypeConfig,
};
use aspen_storage::state_machine::ReadOutcome;
use aspen_storage::{
    LogStore, SnapshotData, StateMachine, StorageBackend, StorageError, open_storage,
};
use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, RaftLogReader, RaftSnapshotBuilder};

const TERM: u64 = 2;
const LEADER: u64 = 1;

fn log_id(index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(TERM, LEADER, index)
}

fn normal(index: u64, command: Command) -> Entry {
    openraft::Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(command),
    }
}

fn put(key: &str, value: &str, lease: u64) -> Command {
    Command::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        lease,
        ..Default::default()
    })
}

fn membership() -> Membership {
    let voters: BTreeSet<u64> = [1, 2, 3].into_iter().collect();
    let nodes: BTreeMap<u64, NodeInfo> = voters
        .iter()
        .map(|id| {
            let info = NodeInfo {
                name: format!("node-{id}"),
                peer_urls: vec![format!("http://10.0.0.{id}:2380")],
                client_urls: vec![format!("http://10.0.0.{id}:2379")],
            };
            (*id, info)
        })
        .collect();
    Membership::new(vec![voters], nodes).expect("valid membership")
}

/// Entries 1..=10: a membership change, a blank, then writes that exercise history, deletes,
/// leases, compaction and an alarm.
fn first_entries() -> Vec<Entry> {
    let mut entries = vec![
        openraft::Entry {
            log_id: log_id(1),
            payload: EntryPayload::Membership(membership()),
        },
        openraft::Entry {
            log_id: log_id(2),
            payload: EntryPayload::Blank,
        },
    ];
    let commands = [
        put("alpha", "1", 0),
        put("alpha", "2", 0),
        Command::LeaseGrant {
            id: 77,
            ttl_seconds: 30,
        },
        put("beta", "1", 77),
        put("gamma", "1", 0),
        Command::DeleteRange(DeleteRangeRequest {
            key: b"gamma".to_vec(),
            ..Default::default()
        }),
        Command::Compact {
            revision: 3,
            physical: true,
        },
        Command::Alarm {
            action: AlarmAction::Activate,
            member_id: 3,
            alarm: AlarmType::Corrupt,
        },
    ];
    for (index, command) in (3..).zip(commands) {
        entries.push(normal(index, command));
    }
    assert_eq!(entries.len(), 10);
    entries
}

async fn append(log: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(tx))
        .await
        .expect("append");
    rx.await
        .expect("flush callback called")
        .expect("flush succeeded");
}

async fn apply(sm: &mut StateMachine, entries: Vec<Entry>) {
    let stream = futures_util::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    sm.apply(stream).await.expect("apply");
}

/// The snapshot's bytes, written first if it is a point's deferred data.
fn read_all(data: &SnapshotData) -> Vec<u8> {
    let data = data.materialized().expect("snapshot data written");
    let mut bytes = Vec::new();
    data.reader()
        .read_to_end(&mut bytes)
        .expect("snapshot readable");
    assert_eq!(bytes.len() as u64, data.len_bytes());
    bytes
}

fn range_all(sm: &StateMachine, revision: u64) -> ReadOutcome {
    let request = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        ..Default::default()
    };
    sm.reader().range(&request).expect("storage read")
}

/// What the first store saw, to compare after reopening.
struct Observed {
    vote: Vote,
    snapshot_meta: aspen_core::type_config::alias::SnapshotMeta,
    snapshot_bytes: Vec<u8>,
    reads: Vec<(u64, ReadOutcome)>,
    revision: u64,
}

async fn write_everything(backend: &StorageBackend) -> Observed {
    let (mut log, mut sm) = open_storage(backend, Limits::default()).expect("open new store");
    let vote = Vote::new_committed(TERM, LEADER);
    log.save_vote(&vote).await.expect("save vote");

    append(&mut log, first_entries()).await;
    log.save_committed(Some(log_id(10)))
        .await
        .expect("save committed");
    apply(&mut sm, first_entries()).await;
    // The in-memory mirror that linearizable reads check follows each apply.
    assert_eq!(sm.store().applied_index(), 10);

    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build snapshot");
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(10)));
    assert_eq!(
        snapshot.meta.last_membership,
        StoredMembership::new(Some(log_id(1)), membership())
    );
    // The build recorded a point; its data is written when read, here as a leader would.
    let current = sm
        .get_current_snapshot()
        .await
        .expect("read current snapshot")
        .expect("a snapshot exists");
    assert_eq!(current.meta, snapshot.meta);
    let snapshot_bytes = read_all(&current.snapshot);

    // Two more entries, committed but not yet applied when the store closes.
    let tail = vec![
        normal(11, put("delta", "1", 0)),
        normal(12, put("alpha", "3", 0)),
    ];
    append(&mut log, tail).await;
    log.save_committed(Some(log_id(12)))
        .await
        .expect("save committed");
    log.purge(log_id(10))
        .await
        .expect("purge behind the snapshot");

    let state = sm.reader().applied_state().expect("applied state");
    // Puts of alpha at 2 and 3, beta at 4, gamma at 5; gamma deleted at 6.
    assert_eq!(state.revision, 6);
    let reads = (0..=state.revision + 1)
        .map(|revision| (revision, range_all(&sm, revision)))
        .collect();
    Observed {
        vote,
        snapshot_bytes,
        snapshot_meta: snapshot.meta,
        reads,
        revision: state.revision,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = StorageBackend::Redb {
        dir: dir.path().join("node.redb"),
    };
    let observed = write_everything(&backend).await;

    let (mut log, mut sm) = open_storage(&backend, Limits::default()).expect("reopen");
    assert_eq!(log.read_vote().await.expect("vote"), Some(observed.vote));
    assert_eq!(
        log.read_committed().await.expect("committed"),
        Some(log_id(12))
    );
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(10)));
    assert_eq!(state.last_log_id, Some(log_id(12)));
    let mut reader = log.get_log_reader().await;
    let entries = reader.try_get_log_entries(0..100).await.expect("entries");
    assert_eq!(
        entries,
        vec![
            normal(11, put("delta", "1", 0)),
            normal(12, put("alpha", "3", 0))
        ]
    );

    let (last_applied, stored_membership) = sm.applied_state().await.expect("applied");
    assert_eq!(last_applied, Some(log_id(10)));
    // The in-memory mirror that linearizable reads check starts from the file.
    assert_eq!(sm.store().applied_index(), 10);
    assert_eq!(
        stored_membership,
        StoredMembership::new(Some(log_id(1)), membership())
    );
    let applied = sm.reader().applied_state().expect("applied state");
    assert_eq!(applied.revision, observed.revision);
    assert_eq!(applied.compact_revision, 3);
    assert_eq!(applied.alarms, vec![(3, AlarmType::Corrupt)]);
    for (revision, before) in &observed.reads {
        assert_eq!(&range_all(&sm, *revision), before, "read at {revision}");
    }

    let current = sm
        .get_current_snapshot()
        .await
        .expect("read current snapshot")
        .expect("a snapshot exists");
    assert_eq!(current.meta, observed.snapshot_meta);
    assert_eq!(read_all(&current.snapshot), observed.snapshot_bytes);

    // The restarted node re-applies the committed tail; the lease from before the restart
    // still holds its key.
    let responses = sm
        .apply_entries(&[
            normal(11, put("delta", "1", 0)),
            normal(12, put("alpha", "3", 0)),
            normal(13, Command::LeaseRevoke { id: 77 }),
        ])
        .expect("apply tail");
    let revisions: Vec<u64> = responses.iter().map(|r| r.revision).collect();
    assert_eq!(revisions, vec![7, 8, 9]);
    assert_eq!(responses[2].result, Ok(CommandResult::LeaseRevoke));
    let (result, _) = range_all(&sm, 0).expect("read");
    let keys: Vec<&[u8]> = result.kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, vec![&b"alpha"[..], &b"delta"[..]]);
    assert_eq!(result.kvs[0].version, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_from_before_a_restart_installs_elsewhere() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = StorageBackend::Redb {
        dir: dir.path().join("node.redb"),
    };
    let observed = write_everything(&backend).await;
    let (_log, mut sm) = open_storage(&backend, Limits::default()).expect("reopen");
    let current = sm
        .get_current_snapshot()
        .await
        .expect("read current snapshot")
        .expect("a snapshot exists");

    let (_other_log, mut other) =
        open_storage(&StorageBackend::InMemory, Limits::default()).expect("open memory");
    other
        .install_snapshot(&current.meta, current.snapshot)
        .await
        .expect("install");
    // The snapshot covers all ten entries: every read the source saw, the target sees.
    for (revision, before) in &observed.reads {
        assert_eq!(&range_all(&other, *revision), before, "read at {revision}");
    }
    let (last_applied, membership_after) = other.applied_state().await.expect("applied");
    assert_eq!(last_applied, Some(log_id(10)));
    assert_eq!(membership_after, observed.snapshot_meta.last_membership);
}

/// Opens the storage directory that holds `path` (its state or log file) and expects a refusal
/// that names `path`.
fn expect_refused(path: &Path, what: &str) -> StorageError {
    let backend = StorageBackend::Redb {
        dir: path.parent().expect("a file in a directory").to_path_buf(),
    };
    let error =
        open_storage(&backend, Limits::default()).expect_err(&format!("{what} must be refused"));
    let message = error.to_string();
    eprintln!("{what}: {message}");
    assert!(
        message.contains(&path.display().to_string()),
        "{what}: the error names the path: {message}"
    );
    error
}

#[test]
fn a_second_opener_is_refused_while_the_first_is_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store_dir = dir.path().join("node");
    let backend = StorageBackend::Redb {
        dir: store_dir.clone(),
    };
    let (log, sm) = open_storage(&backend, Limits::default()).expect("first open");
    sm.apply_entries(&[normal(1, put("k", "v", 0))])
        .expect("apply");

    // The log file is opened first, so it is the one reported locked.
    let error = expect_refused(
        &store_dir.join(aspen_storage::LOG_FILE_NAME),
        "a second open",
    );
    assert!(matches!(error, StorageError::Locked { .. }), "{error:?}");
    assert!(error.to_string().contains("data dir locked"), "{error}");

    // The refused opener changed nothing; once the first closes, the file opens again.
    drop((log, sm));
    let (_log, sm) = open_storage(&backend, Limits::default()).expect("open after close");
    let (result, revision) = range_all(&sm, 0).expect("read");
    assert_eq!(revision, 2);
    assert_eq!(result.kvs.len(), 1);
}

#[test]
fn garbage_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("node")).expect("storage dir");
    let path = dir.path().join("node").join(aspen_storage::STATE_FILE_NAME);
    // A deterministic xorshift stream: not a redb file by any chance.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let garbage: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect();
    std::fs::write(&path, &garbage).expect("write garbage");

    let error = expect_refused(&path, "a file of garbage");
    assert!(
        matches!(
            error,
            StorageError::Open { .. } | StorageError::Foreign { .. }
        ),
        "{error:?}"
    );
    assert_eq!(std::fs::read(&path).expect("read back"), garbage);
}

#[test]
fn a_foreign_redb_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("node")).expect("storage dir");
    let path = dir.path().join("node").join(aspen_storage::LOG_FILE_NAME);
    let other: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("someone_elses");
    {
        let db = redb::Database::create(&path).expect("create plain redb");
        let txn = db.begin_write().expect("begin");
        txn.open_table(other)
            .expect("open table")
            .insert("answer", 42)
            .expect("insert");
        txn.commit().expect("commit");
    }

    let error = expect_refused(&path, "a foreign redb database");
    assert!(matches!(error, StorageError::Foreign { .. }), "{error:?}");

    use redb::{ReadableDatabase, TableHandle};
    let db = redb::Database::open(&path).expect("still a valid redb file");
    let txn = db.begin_read().expect("begin read");
    let tables: Vec<String> = txn
        .list_tables()
        .expect("list")
        .map(|t| t.name().to_string())
        .collect();
    assert_eq!(tables, vec!["someone_elses".to_string()]);
    let value = txn
        .open_table(other)
        .expect("table")
        .get("answer")
        .expect("get")
        .map(|v| v.value());
    assert_eq!(value, Some(42));
}

#[test]
fn a_missing_file_in_a_missing_directory_is_created() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("does/not/exist/yet/node");
    let backend = StorageBackend::Redb { dir: path.clone() };
    {
        let (_log, sm) = open_storage(&backend, Limits::default()).expect("create");
        let responses = sm
            .apply_entries(&[normal(1, put("k", "v", 0))])
            .expect("apply");
        assert_eq!(
            responses,
            vec![ApplyResponse {
                revision: 2,
                result: Ok(CommandResult::Put { prev_kv: None })
            }]
        );
    }
    assert!(
        path.join(aspen_storage::LOG_FILE_NAME).is_file()
            && path.join(aspen_storage::STATE_FILE_NAME).is_file(),
        "{} was created with both files",
        path.display()
    );
    let (_log, sm) = open_storage(&backend, Limits::default()).expect("reopen");
    let (result, revision) = range_all(&sm, 0).expect("read");
    assert_eq!(revision, 2);
    assert_eq!(result.kvs[0].value, b"v".to_vec());
}

#[test]
fn a_log_file_in_the_state_files_place_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store_dir = dir.path().join("node");
    let backend = StorageBackend::Redb {
        dir: store_dir.clone(),
    };
    drop(open_storage(&backend, Limits::default()).expect("create"));
    let log = store_dir.join(aspen_storage::LOG_FILE_NAME);
    let state = store_dir.join(aspen_storage::STATE_FILE_NAME);
    let swap = store_dir.join("swap");
    std::fs::rename(&log, &swap).expect("rename");
    std::fs::rename(&state, &log).expect("rename");
    std::fs::rename(&swap, &state).expect("rename");
    let error = expect_refused(&log, "a state file named log.redb");
    assert!(matches!(error, StorageError::Foreign { .. }), "{error:?}");
    assert!(
        error.to_string().contains("expected Aspen's log database"),
        "{error}"
    );
}
