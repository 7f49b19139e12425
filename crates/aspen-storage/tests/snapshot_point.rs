//! Snapshot points (`state_machine/snapshot_io.rs`): building a snapshot records a point (one
//! durable commit) and writes no copy of the state; the data is written only when it is read
//! (`get_current_snapshot`, then `SnapshotData::materialized`), from a view pinned when it was
//! asked for, and that written snapshot is current until the next point replaces it.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use std::path::{Path, PathBuf};

use aspen_core::limits::Limits;
use aspen_core::type_config::alias::Entry;
use aspen_core::{Command, PutRequest, RangeRequest, TypeConfig};
use aspen_storage::{SnapshotData, StateMachine, StorageBackend, open_storage};
use openraft::storage::RaftStateMachine;
use openraft::type_config::alias::SnapshotOf;
use openraft::{EntryPayload, RaftSnapshotBuilder};

fn put_entry(index: u64, key: &str, value: &str) -> Entry {
    openraft::Entry {
        log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
        payload: EntryPayload::Normal(Command::Put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

/// Applies puts of `key/i` for indices `from..to` (one entry each, value `v{i}`).
fn apply_puts(sm: &StateMachine, from: u64, to: u64) {
    let entries: Vec<Entry> = (from..to)
        .map(|i| put_entry(i, &format!("key/{i:05}"), &format!("v{i}")))
        .collect();
    sm.apply_entries(&entries).expect("apply");
}

/// A redb backend in `node/` under `dir`.
fn node_backend(dir: &Path) -> StorageBackend {
    StorageBackend::Redb {
        dir: dir.join("node"),
    }
}

fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(aspen_storage::SNAPSHOT_DIR_NAME))
        .expect("snapshot dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    files
}

fn key_count(sm: &StateMachine) -> u64 {
    let all = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        count_only: true,
        ..Default::default()
    };
    let (result, _) = sm.reader().range(&all).expect("read").expect("request");
    result.count
}

/// Raft's snapshot build: records a point; returns what the builder returns.
async fn point(sm: &mut StateMachine) -> SnapshotOf<TypeConfig, SnapshotData> {
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build")
}

/// What openraft reads as the current snapshot (one must exist).
async fn current_snapshot(sm: &mut StateMachine) -> SnapshotOf<TypeConfig, SnapshotData> {
    sm.get_current_snapshot()
        .await
        .expect("current")
        .expect("a snapshot exists")
}

fn applied_index(sm: &StateMachine) -> u64 {
    let state = sm.reader().applied_state().expect("applied state");
    state.last_applied.map_or(0, |id| id.index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_writes_nothing_until_a_follower_needs_the_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = node_backend(dir.path());
    let (_log, mut sm) = open_storage(&backend, Limits::default()).expect("open");
    apply_puts(&sm, 1, 501);

    // Building records a point at the applied index, durably, and copies nothing.
    let built = point(&mut sm).await;
    assert_eq!(built.meta.last_log_id.map(|id| id.index), Some(500));
    assert_eq!(sm.store().state_durable_applied_index(), 500);
    assert!(snapshot_files(dir.path().join("node").as_path()).is_empty());
    // The builder's own data is only the point: reading it fails with a clear error.
    let error = built
        .snapshot
        .materialized()
        .expect_err("a point has no data of its own");
    assert!(
        error.to_string().contains("get_current_snapshot"),
        "{error}"
    );

    // More applies: the current snapshot is the state now (a view pinned at this call), at or
    // past the point; still nothing is written.
    apply_puts(&sm, 501, 601);
    let current = current_snapshot(&mut sm).await;
    assert_eq!(current.meta.last_log_id.map(|id| id.index), Some(600));
    assert!(!current.snapshot.is_written());
    assert!(snapshot_files(dir.path().join("node").as_path()).is_empty());

    // Applies after the view was taken are not in its data.
    apply_puts(&sm, 601, 701);
    let data = current.snapshot.materialized().expect("write the data");
    assert!(data.is_written());
    assert_eq!(snapshot_files(dir.path().join("node").as_path()).len(), 1);
    let (_other_log, other) =
        open_storage(&StorageBackend::InMemory, Limits::default()).expect("open other");
    other.install(&current.meta, &data).expect("install");
    assert_eq!(applied_index(&other), 600);
    assert_eq!(key_count(&other), 600);
    assert_eq!(key_count(&sm), 700);

    // The written snapshot is now the current one (it is newer than the point), so a second
    // follower gets the same file without another write.
    let again = current_snapshot(&mut sm).await;
    assert_eq!(again.meta, current.meta);
    assert!(again.snapshot.is_written());
    assert_eq!(snapshot_files(dir.path().join("node").as_path()).len(), 1);

    // The next point replaces it and removes its file.
    let next = point(&mut sm).await;
    assert_eq!(next.meta.last_log_id.map(|id| id.index), Some(700));
    assert!(snapshot_files(dir.path().join("node").as_path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_survives_a_restart_and_the_restart_writes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = node_backend(dir.path());
    {
        let (_log, mut sm) = open_storage(&backend, Limits::default()).expect("open");
        apply_puts(&sm, 1, 301);
        point(&mut sm).await;
        // Applied after the point, not durable: a restart may lose these applies (Raft
        // re-applies them from the log), never the point.
        apply_puts(&sm, 301, 351);
    }
    let (_log, mut sm) = open_storage(&backend, Limits::default()).expect("reopen");
    let durable = applied_index(&sm);
    assert!(
        (300..=350).contains(&durable),
        "applied {durable} after reopen"
    );
    // What openraft reads at start: a snapshot at the state the file holds, at or past the
    // point, and no data written for it.
    let current = current_snapshot(&mut sm).await;
    assert_eq!(current.meta.last_log_id.map(|id| id.index), Some(durable));
    assert!(!current.snapshot.is_written());
    drop(current);
    assert!(snapshot_files(dir.path().join("node").as_path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_replaces_the_point() {
    let (_log, mut source) =
        open_storage(&StorageBackend::InMemory, Limits::default()).expect("open source");
    apply_puts(&source, 1, 101);
    let snapshot = source.snapshot_written().expect("snapshot");
    assert!(snapshot.snapshot.is_written());

    // The target has a point of its own, behind the snapshot it then installs (a follower
    // that fell behind the leader's purged log).
    let (_log2, mut target) =
        open_storage(&StorageBackend::InMemory, Limits::default()).expect("open target");
    apply_puts(&target, 1, 51);
    point(&mut target).await;
    target
        .install_snapshot(&snapshot.meta, snapshot.snapshot.clone())
        .await
        .expect("install");
    let current = current_snapshot(&mut target).await;
    assert_eq!(current.meta, snapshot.meta);
    assert!(current.snapshot.is_written());
    assert_eq!(applied_index(&target), 100);
    assert_eq!(key_count(&target), 100);
    // The source's written snapshot stays its current one until its next point.
    let source_current = current_snapshot(&mut source).await;
    assert_eq!(source_current.meta, snapshot.meta);
}
