//! HashKV and snapshot export: stores that applied the same commands hash the same, on either
//! backend and whether their state came from applying or from a snapshot; any difference in the
//! data changes the hash; a hash at an old revision does not move as writes go on; the bounds
//! are etcd's. An export is a complete snapshot that never becomes Raft's current one and leaves
//! no file behind. A saved file in either format (etcd's bbolt, Aspen's older stream) restores
//! to the same store.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use std::path::{Path, PathBuf};

use aspen_core::limits::Limits;
use aspen_core::type_config::alias::{Entry, Membership};
use aspen_core::{
    ApplyError, Command, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, TypeConfig,
};
use aspen_storage::snapshot::verify;
use aspen_storage::state_machine::{KvHash, export_snapshot};
use aspen_storage::{StateMachine, StorageBackend, open_storage};
use openraft::EntryPayload;
use openraft::storage::RaftStateMachine;

const KEYS_TOTAL: u64 = 200;
const LEASE_ID: u64 = 7;

fn key(i: u64) -> Vec<u8> {
    format!("key/{i:04}").into_bytes()
}

fn put(i: u64, round: u32, lease: u64) -> Command {
    Command::Put(PutRequest {
        key: key(i),
        value: format!("v{round}-{i}").into_bytes(),
        lease,
        ..Default::default()
    })
}

fn entry(index: u64, payload: EntryPayload<Command, u64, aspen_core::NodeInfo>) -> Entry {
    openraft::Entry {
        log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
        payload,
    }
}

/// Applies commands as consecutive log entries and remembers the next index.
struct Applier<'a> {
    sm: &'a StateMachine,
    next_index: u64,
}

impl Applier<'_> {
    fn new(sm: &StateMachine) -> Applier<'_> {
        let voters = [1u64, 2, 3].into_iter().collect();
        let membership = Membership::new_with_defaults(vec![voters], []);
        sm.apply_entries(&[entry(1, EntryPayload::Membership(membership))])
            .expect("membership");
        Applier { sm, next_index: 2 }
    }

    fn apply(&mut self, commands: Vec<Command>) {
        let entries: Vec<Entry> = commands
            .into_iter()
            .enumerate()
            .map(|(i, c)| entry(self.next_index + i as u64, EntryPayload::Normal(c)))
            .collect();
        self.next_index += entries.len() as u64;
        for response in self.sm.apply_entries(&entries).expect("apply") {
            assert!(response.result.is_ok(), "{response:?}");
        }
    }

    fn revision(&self) -> u64 {
        self.sm.reader().applied_state().expect("state").revision
    }
}

/// Puts, overwrites inside Txns, a lease, deletions (single and ranged), a compaction and keys
/// coming back after deletion. Returns (compact revision, revision before the last round).
fn build_history(sm: &StateMachine) -> (u64, u64) {
    let mut applier = Applier::new(sm);
    applier.apply(vec![Command::LeaseGrant {
        id: LEASE_ID,
        ttl_seconds: 60,
    }]);
    applier.apply(
        (0..KEYS_TOTAL)
            .map(|i| put(i, 1, if i % 9 == 0 { LEASE_ID } else { 0 }))
            .collect(),
    );
    let evens: Vec<u64> = (0..KEYS_TOTAL).filter(|i| i % 2 == 0).collect();
    applier.apply(
        evens
            .chunks(10)
            .map(|chunk| {
                Command::Txn(TxnRequest {
                    compare: Vec::new(),
                    success: chunk
                        .iter()
                        .map(|&i| match put(i, 2, 0) {
                            Command::Put(p) => RequestOp::Put(p),
                            _ => unreachable!("put builds a put"),
                        })
                        .collect(),
                    failure: Vec::new(),
                })
            })
            .collect(),
    );
    let compact_revision = applier.revision();
    let mut deletes: Vec<Command> = (0..KEYS_TOTAL)
        .filter(|i| i % 7 == 0)
        .map(|i| {
            Command::DeleteRange(DeleteRangeRequest {
                key: key(i),
                ..Default::default()
            })
        })
        .collect();
    deletes.push(Command::DeleteRange(DeleteRangeRequest {
        key: key(150),
        range_end: key(160),
        prev_kv: false,
    }));
    applier.apply(deletes);
    applier.apply(vec![Command::Compact {
        revision: compact_revision,
        physical: true,
    }]);
    let before_last_round = applier.revision();
    applier.apply(
        (0..KEYS_TOTAL)
            .filter(|i| i % 14 == 0)
            .map(|i| put(i, 3, 0))
            .collect(),
    );
    (compact_revision, before_last_round)
}

fn memory() -> StateMachine {
    open_storage(&StorageBackend::InMemory, Limits::default())
        .expect("open memory")
        .1
}

fn hash(sm: &StateMachine, revision: u64) -> Result<KvHash, ApplyError> {
    sm.reader().hash_kv(revision).expect("hash_kv")
}

fn snapshot_dir(storage_dir: &Path) -> PathBuf {
    storage_dir.join(aspen_storage::SNAPSHOT_DIR_NAME)
}

fn dir_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("snapshot dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    entries
}

#[test]
fn identical_histories_hash_identically_on_both_backends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_log, on_redb) = open_storage(
        &StorageBackend::Redb {
            dir: dir.path().join("a.redb"),
        },
        Limits::default(),
    )
    .expect("open redb");
    let in_memory = memory();
    let (compact_revision, before_last_round) = build_history(&on_redb);
    build_history(&in_memory);

    let current = hash(&on_redb, 0).expect("hash");
    assert_eq!(current, hash(&in_memory, 0).expect("hash"));
    assert_eq!(current.compact_revision, compact_revision);
    assert_eq!(current.hash_revision, current.current_revision);
    for revision in [
        compact_revision + 1,
        before_last_round,
        current.current_revision,
    ] {
        let a = hash(&on_redb, revision).expect("hash");
        assert_eq!(
            a,
            hash(&in_memory, revision).expect("hash"),
            "at {revision}"
        );
        assert_eq!(a.hash_revision, revision);
    }
    assert_eq!(
        hash(&on_redb, current.current_revision).expect("hash").hash,
        current.hash
    );
    assert_ne!(
        hash(&on_redb, before_last_round).expect("hash").hash,
        current.hash,
        "a hash at an older revision leaves out later versions"
    );
}

#[test]
fn any_difference_in_the_data_changes_the_hash() {
    let base = memory();
    build_history(&base);
    let base_hash = hash(&base, 0).expect("hash");
    let next_index = base
        .reader()
        .applied_state()
        .expect("state")
        .last_applied
        .expect("applied")
        .index
        + 1;

    // Each variant writes at the same next revision; pairs differ in one field only.
    let variants: [Command; 5] = [
        put(3, 9, 0),
        put(3, 8, 0),          // another value
        put(3, 9, LEASE_ID),   // another lease
        put(KEYS_TOTAL, 9, 0), // a new key
        Command::DeleteRange(DeleteRangeRequest {
            key: key(3),
            ..Default::default()
        }),
    ];
    let mut seen = vec![base_hash.hash];
    for variant in variants {
        let sm = memory();
        build_history(&sm);
        let mut applier = Applier {
            sm: &sm,
            next_index,
        };
        applier.apply(vec![variant.clone()]);
        let changed = hash(&sm, 0).expect("hash");
        assert!(!seen.contains(&changed.hash), "{variant:?} kept a hash");
        seen.push(changed.hash);
        // History up to the old revision is untouched by the new write.
        assert_eq!(
            hash(&sm, base_hash.current_revision).expect("hash").hash,
            base_hash.hash,
            "{variant:?}"
        );
    }
}

#[test]
fn a_hash_at_a_revision_does_not_move_as_writes_go_on() {
    let sm = memory();
    let mut applier = Applier::new(&sm);
    applier.apply((0..20).map(|i| put(i, 1, 0)).collect());
    let at = applier.revision();
    let before = hash(&sm, at).expect("hash");
    // Overwrites move versions from kv_latest to kv_history: the hash must not notice.
    applier.apply((0..20).map(|i| put(i, 2, 0)).collect());
    applier.apply(vec![Command::DeleteRange(DeleteRangeRequest {
        key: key(0),
        range_end: key(10),
        prev_kv: false,
    })]);
    let after = hash(&sm, at).expect("hash");
    assert_eq!(after.hash, before.hash);
    assert_eq!(after.hash_revision, at);
    assert!(after.current_revision > before.current_revision);
}

#[test]
fn revision_bounds_are_etcds() {
    let sm = memory();
    let (compact_revision, _) = build_history(&sm);
    let current = hash(&sm, 0).expect("hash").current_revision;
    assert_eq!(
        hash(&sm, compact_revision),
        Err(ApplyError::Compacted { compact_revision })
    );
    assert_eq!(
        hash(&sm, compact_revision - 1),
        Err(ApplyError::Compacted { compact_revision })
    );
    assert!(hash(&sm, compact_revision + 1).is_ok());
    assert_eq!(hash(&sm, current + 1), Err(ApplyError::FutureRevision));

    let empty = memory();
    let empty_hash = hash(&empty, 0).expect("hash of an empty store");
    assert_eq!(empty_hash.current_revision, 1);
    assert_eq!(empty_hash.compact_revision, 0);
    assert_eq!(empty_hash, hash(&memory(), 0).expect("hash"));
}

#[tokio::test]
async fn an_export_is_a_complete_snapshot_that_raft_never_sees() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db_path = dir.path().join("source.redb");
    let (_log, mut source) = open_storage(
        &StorageBackend::Redb {
            dir: db_path.clone(),
        },
        Limits::default(),
    )
    .expect("open source");
    build_history(&source);
    let files_before = dir_entries(&snapshot_dir(&db_path));

    let export = export_snapshot(source.store()).expect("export");
    verify(export.data()).expect("a well-formed snapshot");
    let state = source.reader().applied_state().expect("state");
    assert_eq!(export.meta().last_log_id, state.last_applied);
    assert!(
        source
            .get_current_snapshot()
            .await
            .expect("current snapshot")
            .is_none(),
        "an export must not become Raft's snapshot"
    );

    // Installed elsewhere, it reproduces the source exactly.
    let target = memory();
    target
        .install(export.meta(), export.data())
        .expect("install export");
    assert_eq!(
        hash(&target, 0).expect("hash"),
        hash(&source, 0).expect("hash")
    );

    drop(export);
    assert_eq!(
        dir_entries(&snapshot_dir(&db_path)),
        files_before,
        "the export's file is removed when it is dropped"
    );

    let in_memory = export_snapshot(target.store()).expect("export from memory");
    verify(in_memory.data()).expect("a well-formed snapshot");
}

#[test]
fn physical_compaction_progress_does_not_change_the_hash() {
    // Two replicas with the same history; one removes what the compaction made unreadable,
    // step by step, the other not at all: they must hash alike at every point.
    let compacting = memory();
    let lagging = memory();
    let (compact_revision, _) = build_history(&compacting);
    build_history(&lagging);
    assert!(compacting.compaction_pending().expect("pending"));
    let expected = hash(&lagging, 0).expect("hash");
    let mut steps: u32 = 0;
    while compacting.compact_step_bounded(7).expect("compaction step") {
        steps += 1;
        assert_eq!(
            hash(&compacting, 0).expect("hash"),
            expected,
            "after {steps} steps"
        );
        assert_eq!(
            hash(&compacting, compact_revision + 1).expect("hash"),
            hash(&lagging, compact_revision + 1).expect("hash"),
            "after {steps} steps"
        );
    }
    assert!(
        steps > 2,
        "the compaction took {steps} steps: too few to interleave"
    );
    assert!(!compacting.compaction_pending().expect("pending"));
    assert_eq!(hash(&compacting, 0).expect("hash"), expected);
    // The removal was real: the compacted store's state file holds fewer bytes in use (once
    // both have committed durably).
    for sm in [&compacting, &lagging] {
        sm.store().make_state_durable().expect("durable");
    }
    let in_use = |sm: &StateMachine| sm.store().measure_db_size_in_use_bytes().expect("in use");
    assert!(
        in_use(&compacting) < in_use(&lagging),
        "{} bytes in use after compaction, {} without",
        in_use(&compacting),
        in_use(&lagging)
    );
}

#[tokio::test]
async fn waiting_for_a_physical_compaction_ends_when_its_steps_do() {
    let sm = memory();
    let (compact_revision, _) = build_history(&sm);
    assert!(sm.compaction_pending().expect("pending"));
    let waiter = {
        let sm = sm.clone();
        tokio::spawn(async move { sm.wait_compacted(compact_revision).await })
    };
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "returned before any step ran");
    let mut steps: u32 = 0;
    while sm.compact_step_bounded(5).expect("step") {
        steps += 1;
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "returned after {steps} steps, before the last"
        );
    }
    waiter.await.expect("waiter task").expect("wait_compacted");
    assert!(!sm.compaction_pending().expect("pending"));
    // Nothing pending: returns at once.
    sm.wait_compacted(compact_revision).await.expect("wait");
}

/// Writes `body` as `etcdctl snapshot save` stores a stream: zero padding to 512 bytes, then
/// the SHA-256 of everything before it.
fn saved_file(dir: &Path, body: &[u8]) -> PathBuf {
    use sha2::Digest;
    let mut bytes = body.to_vec();
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    let digest = sha2::Sha256::digest(&bytes);
    bytes.extend_from_slice(&digest);
    let path = dir.join("saved.db");
    std::fs::write(&path, &bytes).expect("write");
    path
}

/// Restores a saved file into a new redb data dir, as `aspen snapshot restore` does, and checks
/// the result holds what `source` holds: revisions, history hashes, lease attachments.
async fn restore_and_compare(saved: &Path, dir: &Path, source: &StateMachine) {
    let (compact_revision, before_last) = {
        let state = source.reader().applied_state().expect("state");
        (state.compact_revision, state.revision - 1)
    };
    let backend = StorageBackend::Redb {
        dir: dir.join("member"),
    };
    let node = aspen_core::NodeInfo {
        name: "n1".into(),
        peer_urls: vec!["http://127.0.0.1:1".into()],
        client_urls: Vec::new(),
    };
    let summary = aspen_storage::restore::restore_saved_snapshot(
        saved,
        &backend,
        Limits::default(),
        [(1u64, node)].into_iter().collect(),
    )
    .await
    .expect("restore");
    let (_log, target) = open_storage(&backend, Limits::default()).expect("reopen");
    let (source_state, target_state) = (
        source.reader().applied_state().expect("state"),
        target.reader().applied_state().expect("state"),
    );
    assert_eq!(summary.revision, source_state.revision);
    assert_eq!(target_state.revision, source_state.revision);
    assert_eq!(target_state.compact_revision, compact_revision);
    for revision in [0, before_last, compact_revision + 1] {
        assert_eq!(
            hash(&target, revision).expect("hash"),
            hash(source, revision).expect("hash"),
            "at {revision}"
        );
    }
    let attached = |sm: &StateMachine| sm.reader().lease_keys(LEASE_ID).expect("lease keys");
    assert_eq!(attached(&target), attached(source));
    assert!(
        !attached(source).is_empty(),
        "the history attaches keys to the lease"
    );
}

/// The user-facing export is etcd's format (a bbolt file): restored into a new data dir, it
/// gives back the same history, compaction point, revision, leases and lease attachments.
#[tokio::test]
async fn an_etcd_format_export_restores_to_the_same_store() {
    let source = memory();
    build_history(&source);
    let export = aspen_storage::state_machine::export_etcd_snapshot(source.store())
        .expect("export in etcd's format");
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut export.data().reader(), &mut body).expect("read export");
    assert_eq!(body.len() % 4096, 0, "whole bbolt pages, no padding needed");
    let dir = tempfile::tempdir().expect("tempdir");
    let saved = saved_file(dir.path(), &body);
    restore_and_compare(&saved, dir.path(), &source).await;
}

/// A file saved from an Aspen before its Snapshot RPC spoke etcd's format (Aspen's own stream)
/// still restores: the restore tells the formats apart by content.
#[tokio::test]
async fn an_aspen_format_saved_file_still_restores() {
    let source = memory();
    build_history(&source);
    let export = export_snapshot(source.store()).expect("export in Aspen's format");
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut export.data().reader(), &mut body).expect("read export");
    let dir = tempfile::tempdir().expect("tempdir");
    let saved = saved_file(dir.path(), &body);
    restore_and_compare(&saved, dir.path(), &source).await;
}

/// `dbSizeInUse` is a page walk: one caller at a time measures, everyone else reuses the last
/// value.
#[test]
fn bytes_in_use_are_measured_by_one_caller_and_reused() {
    let sm = memory();
    build_history(&sm);
    let store = sm.store();
    assert_eq!(
        store.db_size_in_use_last(),
        (None, true),
        "first caller measures"
    );
    assert_eq!(
        store.db_size_in_use_last(),
        (None, false),
        "a second caller does not measure while the first has not finished"
    );
    let measured = store.measure_db_size_in_use_bytes().expect("measure");
    assert!(measured > 0);
    // Reused for 100 times the walk: on this tiny store that window may already have passed
    // (a loaded machine), and then this caller is the one to measure again; either way it
    // gets the last value, and only one caller measures.
    let (bytes, claimed) = store.db_size_in_use_last();
    assert_eq!(bytes, Some(measured));
    if claimed {
        assert_eq!(
            store.db_size_in_use_last(),
            (Some(measured), false),
            "one measurement at a time"
        );
    }
}
