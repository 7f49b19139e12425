//! Snapshot transfer: a snapshot built on one redb store, with history, deletions, a compaction
//! and leases, installs on fresh redb and in-memory stores (directly, and streamed in 64 KiB
//! chunks as the network would carry it) and the targets then read and behave as the source.
//! A corrupt snapshot is refused without touching the target, and an installed snapshot
//! survives a restart.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use std::io::Read;
use std::path::{Path, PathBuf};

use aspen_core::limits::Limits;
use aspen_core::type_config::alias::{Entry, Membership, SnapshotMeta};
use aspen_core::{
    ApplyError, ApplyResponse, Command, CommandResult, DeleteRangeRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest, TypeConfig,
};
use aspen_storage::state_machine::ReadOutcome;
use aspen_storage::{SnapshotData, StateMachine, StorageBackend, StorageError, open_storage};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder};

type Payload = EntryPayload<Command, u64, aspen_core::NodeInfo>;

const KEYS_TOTAL: u64 = 20_000;
const TXN_PUTS: u64 = 50;
const APPLY_BATCH_ENTRIES: usize = 2048;
const CHUNK_BYTES: usize = 64 * 1024;
/// Lease ids: the first two hold keys from the first round, the third from the third round.
const LEASES: [u64; 3] = [11, 12, 13];

fn key(i: u64) -> Vec<u8> {
    format!("key/{i:05}").into_bytes()
}

fn put(i: u64, round: u32, lease: u64) -> PutRequest {
    PutRequest {
        key: key(i),
        value: format!("v{round}-{i}").into_bytes(),
        lease,
        ..Default::default()
    }
}

/// Applies commands as consecutive log entries, in bounded batches.
struct Applier<'a> {
    sm: &'a StateMachine,
    next_index: u64,
}

impl Applier<'_> {
    fn entry(&mut self, payload: Payload) -> Entry {
        let entry = openraft::Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, self.next_index),
            payload,
        };
        self.next_index += 1;
        entry
    }

    fn apply(&mut self, commands: Vec<Command>) -> Vec<ApplyResponse> {
        let mut responses = Vec::with_capacity(commands.len());
        for chunk in commands.chunks(APPLY_BATCH_ENTRIES) {
            let entries: Vec<Entry> = chunk
                .iter()
                .map(|c| self.entry(EntryPayload::Normal(c.clone())))
                .collect();
            responses.extend(self.sm.apply_entries(&entries).expect("apply"));
        }
        for response in &responses {
            assert!(response.result.is_ok(), "{response:?}");
        }
        responses
    }

    fn revision(&self) -> u64 {
        self.sm.reader().applied_state().expect("state").revision
    }
}

/// The source store's history, and the revisions worth reading at.
struct Built {
    compact_revision: u64,
    current_revision: u64,
    next_index: u64,
}

fn build_source(sm: &StateMachine) -> Built {
    let mut applier = Applier { sm, next_index: 1 };
    let voters = [1u64, 2, 3].into_iter().collect();
    let membership_entry = applier.entry(EntryPayload::Membership(Membership::new_with_defaults(
        vec![voters],
        [],
    )));
    sm.apply_entries(&[membership_entry]).expect("membership");

    let grants = LEASES
        .iter()
        .map(|&id| Command::LeaseGrant {
            id,
            ttl_seconds: 60,
        })
        .collect();
    applier.apply(grants);
    let round_1 = (0..KEYS_TOTAL)
        .map(|i| {
            let lease = match i {
                i if i % 97 == 0 => LEASES[0],
                i if i % 89 == 0 => LEASES[1],
                _ => 0,
            };
            Command::Put(put(i, 1, lease))
        })
        .collect();
    applier.apply(round_1);
    // Every even key again, fifty to a Txn: many keys at one revision.
    let evens: Vec<u64> = (0..KEYS_TOTAL).filter(|i| i % 2 == 0).collect();
    let round_2 = evens
        .chunks(usize::try_from(TXN_PUTS).expect("a small constant"))
        .map(|chunk| {
            Command::Txn(TxnRequest {
                compare: Vec::new(),
                success: chunk
                    .iter()
                    .map(|&i| {
                        RequestOp::Put(PutRequest {
                            ignore_lease: true,
                            lease: 0,
                            ..put(i, 2, 0)
                        })
                    })
                    .collect(),
                failure: Vec::new(),
            })
        })
        .collect();
    applier.apply(round_2);
    let compact_revision = applier.revision();

    let round_3 = (0..KEYS_TOTAL)
        .filter(|i| i % 5 == 0)
        .map(|i| Command::Put(put(i, 3, if i % 10 == 0 { LEASES[2] } else { 0 })))
        .collect();
    applier.apply(round_3);
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
        key: key(12_000),
        range_end: key(12_100),
        prev_kv: false,
    }));
    applier.apply(deletes);
    applier.apply(vec![Command::Compact {
        revision: compact_revision,
        physical: true,
    }]);
    // Some deleted keys come back: a new generation after a tombstone.
    let round_4 = (0..KEYS_TOTAL)
        .filter(|i| i % 14 == 0)
        .map(|i| Command::Put(put(i, 4, 0)))
        .collect();
    applier.apply(round_4);
    Built {
        compact_revision,
        current_revision: applier.revision(),
        next_index: applier.next_index,
    }
}

fn read(sm: &StateMachine, request: &RangeRequest) -> ReadOutcome {
    sm.reader().range(request).expect("storage read")
}

fn all_at(revision: u64) -> RangeRequest {
    RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        ..Default::default()
    }
}

/// The revisions compared: below the compaction point, at it, spread up to the current one,
/// and beyond.
fn revisions_to_compare(built: &Built) -> Vec<u64> {
    let mut revisions = vec![0, 1, built.compact_revision - 1, built.compact_revision];
    let span = built.current_revision - built.compact_revision;
    for step in 1..=8 {
        revisions.push(built.compact_revision + span * step / 8);
    }
    revisions.push(built.current_revision + 1);
    revisions
}

/// What the source returns to the reads the targets must answer alike: all keys at revisions
/// spread from below the compaction point to beyond the current one, single keys at every
/// revision of a window, and a limited prefix at many revisions.
struct Expected {
    reads: Vec<(RangeRequest, ReadOutcome)>,
    applied: aspen_storage::state_machine::AppliedState,
}

fn expected_reads(source: &StateMachine, built: &Built) -> Expected {
    let mut requests: Vec<RangeRequest> = revisions_to_compare(built)
        .into_iter()
        .map(all_at)
        .collect();
    for revision in built.compact_revision..built.compact_revision + 64 {
        for i in [0, 14, 35, 70, 12_005] {
            requests.push(RangeRequest {
                key: key(i),
                revision,
                ..Default::default()
            });
        }
    }
    for revision in (built.compact_revision..=built.current_revision).step_by(97) {
        requests.push(RangeRequest {
            key: b"key/119".to_vec(),
            range_end: b"key/11:".to_vec(),
            revision,
            limit: 7,
            ..Default::default()
        });
    }
    Expected {
        reads: requests
            .into_iter()
            .map(|request| {
                let outcome = read(source, &request);
                (request, outcome)
            })
            .collect(),
        applied: source.reader().applied_state().expect("source state"),
    }
}

fn assert_same_reads(expected: &Expected, target: &StateMachine, what: &str) {
    for (request, outcome) in &expected.reads {
        assert_eq!(&read(target, request), outcome, "{what}: {request:?}");
    }
    assert_eq!(
        target.reader().applied_state().expect("target state"),
        expected.applied,
        "{what}: applied state"
    );
    // The in-memory mirror that linearizable reads check follows the install.
    assert_eq!(
        target.store().applied_index(),
        expected
            .applied
            .last_applied
            .as_ref()
            .map_or(0, |id| id.index),
        "{what}: the store's applied index"
    );
}

/// Revoking each lease on both stores deletes the same keys at the same revision.
fn assert_same_lease_behaviour(
    source: &StateMachine,
    target: &StateMachine,
    built: &Built,
    what: &str,
) {
    for (revoked, id) in (1..).zip(LEASES) {
        let entry = openraft::Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, built.next_index + revoked - 1),
            payload: EntryPayload::Normal(Command::LeaseRevoke { id }),
        };
        let expected = source
            .apply_entries(std::slice::from_ref(&entry))
            .expect("source revoke");
        let actual = target.apply_entries(&[entry]).expect("target revoke");
        assert_eq!(actual, expected, "{what}: revoke {id}");
        assert_eq!(actual[0].result, Ok(CommandResult::LeaseRevoke));
        // Every lease still holds keys, so each revoke writes one revision.
        assert_eq!(actual[0].revision, built.current_revision + revoked);
        assert_eq!(
            read(target, &all_at(0)),
            read(source, &all_at(0)),
            "{what}: after revoke {id}"
        );
    }
}

fn redb_backend(dir: &Path, name: &str) -> StorageBackend {
    StorageBackend::Redb {
        dir: dir.join(name),
    }
}

fn snapshot_bytes(data: &SnapshotData) -> Vec<u8> {
    let mut bytes = Vec::new();
    data.reader()
        .read_to_end(&mut bytes)
        .expect("read snapshot");
    assert_eq!(bytes.len() as u64, data.len_bytes());
    bytes
}

/// Streams `bytes` into the target's receiver in 64 KiB chunks, as the network would.
fn receive(target: &StateMachine, bytes: &[u8]) -> Result<SnapshotData, StorageError> {
    let mut receiver = target.snapshot_receiver()?;
    for chunk in bytes.chunks(CHUNK_BYTES) {
        receiver.write_chunk(chunk)?;
    }
    assert_eq!(receiver.received_bytes(), bytes.len() as u64);
    receiver.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_installs_on_redb_and_memory_and_survives_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_source_log, source) =
        open_storage(&redb_backend(dir.path(), "source.redb"), Limits::default())
            .expect("open source");
    let built = build_source(&source);
    let expected = expected_reads(&source, &built);
    // Sanity of the expectations: a compacted read, history, and the current state.
    let compacted = read(&source, &all_at(built.compact_revision - 1));
    assert_eq!(
        compacted,
        Err(ApplyError::Compacted {
            compact_revision: built.compact_revision
        })
    );
    let (at_compaction, _) = read(&source, &all_at(built.compact_revision)).expect("read");
    assert_eq!(at_compaction.count, KEYS_TOTAL);
    let (now, _) = read(&source, &all_at(0)).expect("read");
    // Deleted: every 7th key and key/12000..key/12099; back: every 14th.
    let deleted_now = (0..KEYS_TOTAL)
        .filter(|i| (i % 7 == 0 || (12_000..12_100).contains(i)) && i % 14 != 0)
        .count() as u64;
    assert_eq!(now.count, KEYS_TOTAL - deleted_now);
    // 1, then one revision per put (20,000 + 4,000 + 1,429), per Txn (200), per single-key
    // delete (2,858) and one for the range delete.
    assert_eq!(
        built.current_revision,
        1 + 20_000 + 200 + 4_000 + 2_858 + 1 + 1_429
    );
    let snapshot = source.snapshot_written().expect("snapshot");
    assert_eq!(
        snapshot.meta.last_log_id,
        Some(openraft::testing::log_id::<TypeConfig>(
            1,
            1,
            built.next_index - 1
        ))
    );
    let bytes = snapshot_bytes(&snapshot.snapshot);

    // 1. A fresh redb store, through the openraft trait.
    let target_backend = redb_backend(dir.path(), "target.redb");
    {
        let (_log, mut target) =
            open_storage(&target_backend, Limits::default()).expect("open target");
        target
            .install_snapshot(&snapshot.meta, snapshot.snapshot.clone())
            .await
            .expect("install on redb");
        assert_same_reads(&expected, &target, "redb target");
    }
    // 2. After a restart the target still has the snapshot and the data.
    {
        let (_log, mut target) =
            open_storage(&target_backend, Limits::default()).expect("reopen target");
        let current = target
            .get_current_snapshot()
            .await
            .expect("current snapshot")
            .expect("a snapshot after install");
        assert_eq!(current.meta, snapshot.meta);
        assert_eq!(snapshot_bytes(&current.snapshot), bytes);
        assert_same_reads(&expected, &target, "redb target after restart");
    }
    // 3. A fresh in-memory store that held other data: the install replaces all of it.
    let (_log, memory) =
        open_storage(&StorageBackend::InMemory, Limits::default()).expect("open memory");
    let junk = vec![
        openraft::Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, 1),
            payload: EntryPayload::Normal(Command::LeaseGrant {
                id: 99,
                ttl_seconds: 60,
            }),
        },
        openraft::Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, 2),
            payload: EntryPayload::Normal(Command::Put(PutRequest {
                key: b"zzz-junk".to_vec(),
                value: b"x".to_vec(),
                lease: 99,
                ..Default::default()
            })),
        },
    ];
    memory.apply_entries(&junk).expect("junk");
    memory
        .install(&snapshot.meta, &snapshot.snapshot)
        .expect("install in memory");
    assert_same_reads(&expected, &memory, "memory target");
    let revoke_junk = openraft::Entry {
        log_id: openraft::testing::log_id::<TypeConfig>(1, 1, built.next_index + 100),
        payload: EntryPayload::Normal(Command::LeaseRevoke { id: 99 }),
    };
    let response = memory
        .apply_entries(&[revoke_junk])
        .expect("revoke junk lease");
    assert_eq!(
        response[0].result,
        Err(ApplyError::LeaseNotFound),
        "leases replaced too"
    );

    // 4. Leases came across with their keys: revoking deletes the same keys on both sides.
    let (_log, streamed) = open_storage(
        &redb_backend(dir.path(), "streamed.redb"),
        Limits::default(),
    )
    .expect("open streamed");
    let received = receive(&streamed, &bytes).expect("receive");
    streamed
        .install(&snapshot.meta, &received)
        .expect("install streamed");
    assert_same_reads(&expected, &streamed, "streamed redb target");
    let (_log, reopened) = open_storage(&target_backend, Limits::default()).expect("reopen target");
    assert_same_lease_behaviour(&source, &reopened, &built, "redb target");
}

#[test]
fn corrupt_or_truncated_snapshots_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_source_log, source) =
        open_storage(&StorageBackend::InMemory, Limits::default()).expect("open source");
    small_history(&source, 300);
    let (meta, bytes) = build_snapshot_blocking(&source);

    let target_path = dir.path().join("target.redb");
    let (_log, target) = open_storage(
        &StorageBackend::Redb {
            dir: target_path.clone(),
        },
        Limits::default(),
    )
    .expect("open target");
    target
        .apply_entries(&[put_entry(1, b"existing", b"1")])
        .expect("existing data");
    let before = target_fingerprint(&target);

    // One byte flipped anywhere: the checksum (or the framing) catches it at finish().
    for offset in [
        8,
        bytes.len() / 3,
        bytes.len() / 2,
        bytes.len() - 5,
        bytes.len() - 1,
    ] {
        let mut corrupt = bytes.clone();
        corrupt[offset] ^= 0x5a;
        let error = receive(&target, &corrupt).expect_err("a corrupt snapshot is refused");
        assert!(
            matches!(
                error,
                StorageError::Snapshot(_) | StorageError::Codec { .. }
            ),
            "offset {offset}: {error}"
        );
        if offset == bytes.len() - 1 {
            assert!(error.to_string().contains("checksum"), "{error}");
        }
        assert_eq!(target_fingerprint(&target), before, "offset {offset}");
        // A refused snapshot leaves no file behind to fill the disk.
        assert_eq!(snapshot_files(&target_path), Vec::<PathBuf>::new());
    }
    let error =
        receive(&target, &bytes[..bytes.len() - 100]).expect_err("a truncated snapshot is refused");
    assert!(error.to_string().contains("snapshot"), "{error}");
    let mut extended = bytes.clone();
    extended.push(0);
    receive(&target, &extended).expect_err("bytes after the trailer are refused");
    receive(&target, b"not a snapshot at all").expect_err("garbage is refused");
    assert_eq!(target_fingerprint(&target), before);
    assert_eq!(snapshot_files(&target_path), Vec::<PathBuf>::new());
    // A receive abandoned halfway (the leader went away) removes its partial file.
    let mut abandoned = target.snapshot_receiver().expect("receiver");
    abandoned
        .write_chunk(&bytes[..bytes.len() / 2])
        .expect("first half");
    assert_eq!(snapshot_files(&target_path).len(), 1);
    drop(abandoned);
    assert_eq!(snapshot_files(&target_path), Vec::<PathBuf>::new());

    // The intact stream still installs afterwards.
    let data = receive(&target, &bytes).expect("intact snapshot");
    target.install(&meta, &data).expect("install");
    assert_eq!(read(&target, &all_at(0)), read(&source, &all_at(0)));
}

/// A snapshot file damaged on disk after it was written: installing it from there fails with
/// an error, whichever byte went bad, and the target is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_damaged_on_disk_fails_to_install_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source_path = dir.path().join("source.redb");
    let (_source_log, source) = open_storage(
        &StorageBackend::Redb {
            dir: source_path.clone(),
        },
        Limits::default(),
    )
    .expect("open source");
    small_history(&source, 24);
    let snapshot = source.snapshot_written().expect("snapshot");
    let file = snapshot_file(&source_path);
    let pristine = std::fs::read(&file).expect("read snapshot file");
    assert_eq!(pristine, snapshot_bytes(&snapshot.snapshot));

    let (_log, target) =
        open_storage(&StorageBackend::InMemory, Limits::default()).expect("open target");
    target
        .apply_entries(&[put_entry(1, b"existing", b"1")])
        .expect("existing data");
    let before = target_fingerprint(&target);
    // Every byte position: lengths, headers, keys, versions, leases, the trailer.
    for offset in 0..pristine.len() {
        let mut damaged = pristine.clone();
        damaged[offset] ^= 0x5a;
        std::fs::write(&file, &damaged).expect("damage the file");
        let result = target.install(&snapshot.meta, &snapshot.snapshot);
        assert!(
            result.is_err(),
            "offset {offset}: a damaged snapshot installed"
        );
        assert_eq!(target_fingerprint(&target), before, "offset {offset}");
    }
    std::fs::write(&file, &pristine).expect("restore the file");
    target
        .install(&snapshot.meta, &snapshot.snapshot)
        .expect("the intact file installs");
    assert_eq!(read(&target, &all_at(0)), read(&source, &all_at(0)));
}

/// Every file in the store's snapshot directory (`<storage dir>/snapshots/`).
fn snapshot_files(storage_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(storage_dir.join(aspen_storage::SNAPSHOT_DIR_NAME))
            .expect("snapshot dir")
            .map(|e| e.expect("dir entry").path())
            .collect();
    files.sort();
    files
}

fn snapshot_file(db_path: &Path) -> PathBuf {
    let files = snapshot_files(db_path);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].extension().is_some_and(|e| e == "snap"));
    files[0].clone()
}

fn put_entry(index: u64, key: &[u8], value: &[u8]) -> Entry {
    openraft::Entry {
        log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
        payload: EntryPayload::Normal(Command::Put(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        })),
    }
}

/// `keys` keys with history, a range deletion, a compaction and a lease holding keys.
fn small_history(sm: &StateMachine, keys: u64) -> Built {
    let mut applier = Applier { sm, next_index: 1 };
    applier.apply(vec![Command::LeaseGrant {
        id: LEASES[0],
        ttl_seconds: 60,
    }]);
    applier.apply(
        (0..keys)
            .map(|i| Command::Put(put(i, 1, if i % 3 == 0 { LEASES[0] } else { 0 })))
            .collect(),
    );
    let compact_revision = applier.revision();
    applier.apply(
        (0..keys)
            .step_by(2)
            .map(|i| Command::Put(put(i, 2, 0)))
            .collect(),
    );
    applier.apply(vec![
        Command::DeleteRange(DeleteRangeRequest {
            key: key(keys / 3),
            range_end: key(keys / 2),
            prev_kv: false,
        }),
        Command::Compact {
            revision: compact_revision,
            physical: false,
        },
    ]);
    Built {
        compact_revision,
        current_revision: applier.revision(),
        next_index: applier.next_index,
    }
}

async fn build_snapshot(sm: &StateMachine) -> (SnapshotMeta, Vec<u8>) {
    let snapshot = sm.snapshot_written().expect("snapshot");
    (snapshot.meta, snapshot_bytes(&snapshot.snapshot))
}

fn build_snapshot_blocking(sm: &StateMachine) -> (SnapshotMeta, Vec<u8>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(build_snapshot(sm))
}

/// Everything a failed install must leave as it was.
fn target_fingerprint(
    sm: &StateMachine,
) -> (aspen_storage::state_machine::AppliedState, ReadOutcome) {
    (
        sm.reader().applied_state().expect("state"),
        read(sm, &all_at(0)),
    )
}

/// The node may build its own snapshot while one from the leader is arriving, or has arrived
/// and waits to be installed. The build must not delete the received file: the install would
/// then record a snapshot that is gone after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_built_while_receiving_does_not_delete_the_received_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_source_log, source) =
        open_storage(&StorageBackend::InMemory, Limits::default()).expect("open source");
    small_history(&source, 50);
    let (meta, bytes) = build_snapshot(&source).await;

    let target_path = dir.path().join("target.redb");
    let target_backend = StorageBackend::Redb {
        dir: target_path.clone(),
    };
    {
        let (_log, mut target) = open_storage(&target_backend, Limits::default()).expect("open");
        target
            .apply_entries(&[put_entry(1, b"existing", b"1")])
            .expect("existing data");
        // A receive in progress, then a local build, then the receive completes.
        let mut receiver = target.snapshot_receiver().expect("receiver");
        let (head, tail) = bytes.split_at(bytes.len() / 2);
        receiver.write_chunk(head).expect("first half");
        target
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("local build during the receive");
        receiver.write_chunk(tail).expect("second half");
        let received = receiver.finish().expect("the receive completes");
        // A second local build between the receive and the install.
        target
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("local build before the install");
        target.install(&meta, &received).expect("install");
    }
    let (_log, mut target) = open_storage(&target_backend, Limits::default()).expect("reopen");
    let current = target
        .get_current_snapshot()
        .await
        .expect("the installed snapshot is still there after a restart")
        .expect("a current snapshot");
    assert_eq!(current.meta, meta);
    assert_eq!(snapshot_bytes(&current.snapshot), bytes);
    assert_eq!(read(&target, &all_at(0)), read(&source, &all_at(0)));
    assert_eq!(snapshot_files(&target_path).len(), 1);
}

/// A snapshot without leases (and one of an empty store) installs, and every reader of the
/// installed store works: the install recreates every state table, including those no frame
/// writes to. Found by the simulator (seed 253): once the apply path opened tables lazily, an
/// install without leases left no `leases` table and the lessor's read failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_without_leases_or_keys_installs_with_every_table() {
    for keys in [0u64, 3] {
        let (_source_log, source) =
            open_storage(&StorageBackend::InMemory, Limits::default()).expect("open source");
        let entries: Vec<Entry> = (0..keys).map(|i| put_entry(i + 1, &key(i), b"v")).collect();
        if !entries.is_empty() {
            source.apply_entries(&entries).expect("apply");
        }
        let snapshot = source.snapshot_written().expect("snapshot");
        for backend in ["redb", "memory"] {
            let dir = tempfile::tempdir().expect("temp dir");
            let target_backend = match backend {
                "redb" => redb_backend(dir.path(), "target"),
                _ => StorageBackend::InMemory,
            };
            let (_log, target) = open_storage(&target_backend, Limits::default()).expect("open");
            target
                .install(&snapshot.meta, &snapshot.snapshot)
                .expect("install");
            let reader = target.reader();
            assert_eq!(
                reader.leases().expect("leases table"),
                Vec::new(),
                "{backend}, {keys} keys"
            );
            assert_eq!(reader.lease(11).expect("leases table"), None);
            assert!(reader.lease_keys(11).expect("lease_keys table").is_empty());
            assert_eq!(read(&target, &all_at(0)), read(&source, &all_at(0)));
            // The apply path works on it too: a lease and a key attached to it.
            let next = keys + 1;
            let granted = openraft::Entry {
                log_id: openraft::testing::log_id::<TypeConfig>(1, 1, next),
                payload: EntryPayload::Normal(Command::LeaseGrant {
                    id: 11,
                    ttl_seconds: 60,
                }),
            };
            target.apply_entries(&[granted]).expect("grant");
            assert_eq!(reader.leases().expect("leases").len(), 1);
        }
    }
}

/// An install of more versions than one chunk of the key index's build (65,536: 90,000 puts
/// and a range deletion's tombstones here) sorts them on a second thread while it writes them,
/// and builds the index while its transaction commits (`state_machine/index_build.rs`). It
/// reads as the source, on redb and in memory, and on redb after a restart too.
#[test]
fn a_snapshot_of_more_versions_than_an_index_build_chunk_installs_alike() {
    const KEYS: u64 = 60_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let (_source_log, source) =
        open_storage(&redb_backend(dir.path(), "source.redb"), Limits::default())
            .expect("open source");
    let built = small_history(&source, KEYS);
    let expected = expected_reads(&source, &built);
    let (meta, bytes) = build_snapshot_blocking(&source);
    let versions_at_least = KEYS + KEYS / 2;
    assert!(built.current_revision > versions_at_least);

    let target_backend = redb_backend(dir.path(), "target.redb");
    {
        let (_log, target) = open_storage(&target_backend, Limits::default()).expect("open");
        let received = receive(&target, &bytes).expect("receive");
        target.install(&meta, &received).expect("install on redb");
        assert_same_reads(&expected, &target, "redb target");
    }
    let (_log, reopened) = open_storage(&target_backend, Limits::default()).expect("reopen");
    assert_same_reads(&expected, &reopened, "redb target after restart");

    let (_log, memory) =
        open_storage(&StorageBackend::InMemory, Limits::default()).expect("open memory");
    let received = receive(&memory, &bytes).expect("receive");
    memory.install(&meta, &received).expect("install in memory");
    assert_same_reads(&expected, &memory, "memory target");
}
