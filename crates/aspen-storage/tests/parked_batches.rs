//! The apply path leaves its write transaction open between batches (`parked.rs`): answered
//! batches that are not committed yet. These tests hold it to its contract: a read sees every
//! batch answered before it began, another writer never takes answered batches down with it,
//! a durable commit covers them, and a failed commit of them fails every later read and write
//! instead of serving state without them.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::FaultyDisk;

use aspen_core::limits::Limits;
use aspen_core::type_config::alias::Entry;
use aspen_core::{Command, PutRequest, RangeRequest, TypeConfig};
use aspen_storage::{
    LogJournal, StateMachine, StorageBackend, open_storage, open_storage_with_backends,
};
use openraft::EntryPayload;

fn put_entry(index: u64) -> Entry {
    openraft::Entry {
        log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
        payload: EntryPayload::Normal(Command::Put(PutRequest {
            key: format!("key-{index:08}").into_bytes(),
            value: index.to_le_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

/// The store revision a read sees (one revision per put, from 1).
fn read_revision(sm: &StateMachine) -> Result<u64, String> {
    let request = RangeRequest {
        key: b"key-".to_vec(),
        range_end: b"key.".to_vec(),
        count_only: true,
        ..Default::default()
    };
    match sm.reader().range(&request) {
        Ok(Ok((_, revision))) => Ok(revision),
        Ok(Err(error)) => Err(format!("{error:?}")),
        Err(error) => Err(error.to_string()),
    }
}

fn backends(dir: &std::path::Path) -> [StorageBackend; 2] {
    [
        StorageBackend::Redb {
            dir: dir.to_path_buf(),
        },
        StorageBackend::InMemory,
    ]
}

#[test]
fn a_lone_batch_is_parked_and_the_next_read_sees_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    for backend in backends(dir.path()) {
        let (_log, sm) = open_storage(&backend, Limits::default()).expect("open");
        sm.apply_entries(&[put_entry(1)]).expect("apply");
        assert!(
            sm.store().state_batches_uncommitted(),
            "a one-entry batch commits nothing ({backend:?})"
        );
        assert_eq!(read_revision(&sm), Ok(2), "the read sees the answered put");
        assert!(
            !sm.store().state_batches_uncommitted(),
            "the read committed it"
        );
    }
}

/// One thread applies one-put batches and publishes each once `apply_entries` returned (what
/// answering a client is); readers on other threads note what was published, then read: the
/// revision they see must include it. Readers that skipped the parked transaction see the
/// last committed revision, one or more batches behind.
#[test]
fn a_read_sees_every_batch_answered_before_it_began() {
    const PUTS: u64 = 3_000;
    const READERS: usize = 2;
    let dir = tempfile::tempdir().expect("temp dir");
    for backend in backends(dir.path()) {
        let (_log, sm) = open_storage(&backend, Limits::default()).expect("open");
        let answered = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let parked_seen = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..READERS)
            .map(|_| {
                let (sm, answered, done) = (sm.clone(), answered.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut reads: u64 = 0;
                    while !done.load(Ordering::Acquire) {
                        let before = answered.load(Ordering::Acquire);
                        let revision = read_revision(&sm).expect("read");
                        assert!(
                            revision > before,
                            "a read saw revision {revision} after put {before} was answered"
                        );
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for index in 1..=PUTS {
            sm.apply_entries(&[put_entry(index)]).expect("apply");
            if sm.store().state_batches_uncommitted() {
                parked_seen.fetch_add(1, Ordering::Relaxed);
            }
            answered.store(index, Ordering::Release);
        }
        done.store(true, Ordering::Release);
        let reads: u64 = readers.into_iter().map(|r| r.join().expect("reader")).sum();
        assert!(reads > 0, "the readers ran");
        assert!(
            parked_seen.load(Ordering::Relaxed) > 0,
            "some batches were left uncommitted for the readers to find ({backend:?})"
        );
        assert_eq!(read_revision(&sm), Ok(PUTS + 1));
    }
}

/// A durable commit (what a log purge asks for first) covers parked batches: the applied index
/// it reports is the last answered one, and a reopened store holds them.
#[test]
fn a_durable_commit_covers_parked_batches() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = StorageBackend::Redb {
        dir: dir.path().to_path_buf(),
    };
    {
        let (_log, sm) = open_storage(&backend, Limits::default()).expect("open");
        for index in 1..=3 {
            sm.apply_entries(&[put_entry(index)]).expect("apply");
        }
        assert!(sm.store().state_batches_uncommitted());
        assert_eq!(sm.store().make_state_durable().expect("durable"), 3);
        assert!(!sm.store().state_batches_uncommitted());
    }
    let (_log, sm) = open_storage(&backend, Limits::default()).expect("reopen");
    assert_eq!(read_revision(&sm), Ok(4));
}

/// A batch after which the durability cadence is due is committed, never left open (parked),
/// and a durable commit follows it (`apply_entries` does it once the batch is answered): a
/// parked batch would be committed without an fsync by the next one after the node had
/// recorded it durable (and so let the log be purged past it).
#[test]
fn a_batch_due_for_durability_is_never_parked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = StorageBackend::Redb {
        dir: dir.path().to_path_buf(),
    };
    let (_log, sm) = open_storage(&backend, Limits::default()).expect("open");
    for index in 1..=2 {
        sm.apply_entries(&[put_entry(index)]).expect("apply");
        assert!(sm.store().state_batches_uncommitted(), "a lone batch parks");
        assert!(read_revision(&sm).is_ok(), "a read commits it");
    }
    // The cadence's time bound passes: the next batch is due.
    std::thread::sleep(std::time::Duration::from_millis(
        aspen_core::limits::STATE_DURABLE_INTERVAL_MS + 50,
    ));
    let syncs_before = sm.store().state_syncs();
    sm.apply_entries(&[put_entry(3)]).expect("apply");
    assert!(
        !sm.store().state_batches_uncommitted(),
        "the durable batch committed"
    );
    assert!(sm.store().state_syncs() > syncs_before, "with an fsync");
    assert_eq!(sm.store().state_durable_applied_index(), 3);
}

/// A batch that fails in a transaction holding parked batches (the disk is full when it
/// needs a page) takes them with it: they were answered, so every later read and apply fails,
/// even once the disk has room again, rather than serving a state without them. openraft
/// stops on the failed apply; a restart re-applies them from the log.
#[test]
fn a_batch_failing_over_parked_batches_fails_every_later_read_and_apply() {
    const BIG_VALUE_BYTES: usize = 8 * 1024 * 1024;
    let dir = tempfile::tempdir().expect("temp dir");
    let full = Arc::new(AtomicBool::new(false));
    let never = Arc::new(AtomicBool::new(false));
    let (_log, sm) = open_storage_with_backends(
        dir.path(),
        Limits::default(),
        FaultyDisk::open(&dir.path().join("log.redb"), &never, &never),
        LogJournal::new(FaultyDisk::open(
            &dir.path().join("log.journal"),
            &never,
            &never,
        )),
        FaultyDisk::open(&dir.path().join("state.redb"), &full, &never),
    )
    .expect("open");
    sm.apply_entries(&[put_entry(1)]).expect("apply");
    assert_eq!(read_revision(&sm), Ok(2));
    sm.apply_entries(&[put_entry(2)]).expect("apply");
    assert!(sm.store().state_batches_uncommitted());
    full.store(true, Ordering::Release);
    let mut big = put_entry(3);
    if let EntryPayload::Normal(Command::Put(put)) = &mut big.payload {
        put.value = vec![7; BIG_VALUE_BYTES];
    }
    let failed = sm
        .apply_entries(&[big])
        .expect_err("the file cannot grow for the big value");
    full.store(false, Ordering::Release);
    for _ in 0..2 {
        let again = read_revision(&sm).expect_err("later reads fail");
        assert!(again.contains("restarted"), "{again} (after {failed})");
    }
    assert!(
        sm.apply_entries(&[put_entry(4)]).is_err(),
        "applies fail too"
    );
}
