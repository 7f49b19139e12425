//! The backend quota and etcd's NOSPACE alarm, on redb.
//!
//! The store grows past a 4 MiB quota; the node raises NOSPACE through Raft (applied here
//! directly). Then writes that can grow the store are refused at an unchanged revision, while
//! reads, deletes and compaction go on; deleting, compacting and defragmenting brings the size
//! back under the quota, and once the alarm is cleared writes succeed again. The alarm and the
//! data survive a restart.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use std::path::Path;

use aspen_core::command::{AlarmAction, AlarmType};
use aspen_core::limits::Limits;
use aspen_core::response::RangeResult;
use aspen_core::type_config::alias::Entry;
use aspen_core::{
    ApplyError, ApplyResponse, Command, CommandResult, DeleteRangeRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest, TypeConfig,
};
use aspen_storage::{StateMachine, StorageBackend, open_storage};
use openraft::EntryPayload;

const QUOTA_BYTES: u64 = 4 * 1024 * 1024;
const VALUE_BYTES: usize = 1024;
const FILL_BATCH_PUTS: u64 = 64;
/// Far more keys than 4 MiB of 1 KiB values: the fill loop must end well before.
const FILL_KEYS_MAX: u64 = 16 * 1024;
const MEMBER_ID: u64 = 1;

fn limits() -> Limits {
    Limits {
        quota_backend_bytes: QUOTA_BYTES,
        ..Default::default()
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("fill/{i:06}").into_bytes()
}

fn put(key: Vec<u8>) -> PutRequest {
    PutRequest {
        key,
        value: vec![b'v'; VALUE_BYTES],
        ..Default::default()
    }
}

/// Applies commands as consecutive log entries.
struct Applier {
    sm: StateMachine,
    next_index: u64,
}

impl Applier {
    fn apply_all(&mut self, commands: Vec<Command>) -> Vec<ApplyResponse> {
        let entries: Vec<Entry> = commands
            .into_iter()
            .map(|command| {
                let entry = openraft::Entry {
                    log_id: openraft::testing::log_id::<TypeConfig>(1, 1, self.next_index),
                    payload: EntryPayload::Normal(command),
                };
                self.next_index += 1;
                entry
            })
            .collect();
        self.sm.apply_entries(&entries).expect("apply")
    }

    fn apply(&mut self, command: Command) -> ApplyResponse {
        self.apply_all(vec![command]).remove(0)
    }

    fn revision(&self) -> u64 {
        self.sm.reader().applied_state().expect("state").revision
    }

    fn count(&self, prefix: &[u8]) -> u64 {
        let mut range_end = prefix.to_vec();
        let last = range_end.last_mut().expect("non-empty prefix");
        *last += 1;
        let request = RangeRequest {
            key: prefix.to_vec(),
            range_end,
            count_only: true,
            ..Default::default()
        };
        let (result, _) = self.read(&request);
        result.count
    }

    fn read(&self, request: &RangeRequest) -> (RangeResult, u64) {
        self.sm
            .reader()
            .range(request)
            .expect("storage read")
            .expect("a readable revision")
    }
}

fn alarm(action: AlarmAction) -> Command {
    Command::Alarm {
        action,
        member_id: MEMBER_ID,
        alarm: AlarmType::NoSpace,
    }
}

/// Puts distinct keys with 1 KiB values until the database is over its quota; returns how many.
fn fill_past_quota(applier: &mut Applier) -> u64 {
    let store = applier.sm.store().clone();
    let mut written: u64 = 0;
    while !store.quota_exceeded() {
        assert!(
            written < FILL_KEYS_MAX,
            "still under the quota after {written} KiB of values"
        );
        let batch = (written..written + FILL_BATCH_PUTS)
            .map(|i| Command::Put(put(key(i))))
            .collect();
        for response in applier.apply_all(batch) {
            assert!(response.result.is_ok(), "{response:?}");
        }
        written += FILL_BATCH_PUTS;
    }
    written
}

/// Every command that can grow the store is refused, at the same revision.
fn assert_growth_refused(applier: &mut Applier) {
    let revision = applier.revision();
    let txn_with_put = Command::Txn(TxnRequest {
        compare: Vec::new(),
        success: vec![RequestOp::Put(put(b"txn-key".to_vec()))],
        failure: Vec::new(),
    });
    // etcd refuses a Txn holding a put in any branch, even one that would not run.
    let txn_with_put_in_failure = Command::Txn(TxnRequest {
        compare: Vec::new(),
        success: Vec::new(),
        failure: vec![RequestOp::Put(put(b"txn-key".to_vec()))],
    });
    let refused = [
        Command::Put(put(b"one-more".to_vec())),
        txn_with_put,
        txn_with_put_in_failure,
        Command::LeaseGrant {
            id: 5,
            ttl_seconds: 60,
        },
    ];
    for command in refused {
        let response = applier.apply(command.clone());
        assert_eq!(
            response,
            ApplyResponse {
                revision,
                result: Err(ApplyError::NoSpace)
            },
            "{command:?}"
        );
        let error = response.result.expect_err("refused");
        assert_eq!(
            error.to_string(),
            "etcdserver: mvcc: database space exceeded"
        );
    }
    assert_eq!(applier.count(b"one-more"), 0);
    assert_eq!(applier.count(b"txn-key"), 0);
}

fn open(path: &Path) -> Applier {
    let backend = StorageBackend::Redb {
        dir: path.to_path_buf(),
    };
    let (_log, sm) = open_storage(&backend, limits()).expect("open");
    let next_index = sm
        .reader()
        .applied_state()
        .expect("state")
        .last_applied
        .map_or(1, |id| id.index + 1);
    Applier { sm, next_index }
}

#[test]
fn nospace_refuses_growth_until_space_is_reclaimed_and_the_alarm_cleared() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("node.redb");
    let mut applier = open(&path);
    let written = fill_past_quota(&mut applier);
    let store = applier.sm.store().clone();
    let size_full_bytes = store.db_size_bytes();
    assert!(size_full_bytes > QUOTA_BYTES);
    assert!(
        written >= 1024,
        "1 MiB of values cannot exceed 4 MiB: {written}"
    );

    // The node raises NOSPACE through Raft when it sees the quota exceeded.
    let revision = applier.revision();
    let raised = applier.apply(alarm(AlarmAction::Activate));
    assert_eq!(
        raised,
        ApplyResponse {
            revision,
            result: Ok(CommandResult::Alarm {
                active: vec![(MEMBER_ID, AlarmType::NoSpace)]
            })
        }
    );
    assert_growth_refused(&mut applier);

    // The alarm is part of the applied state: it survives a restart.
    drop((applier, store));
    let mut applier = open(&path);
    let store = applier.sm.store().clone();
    assert_eq!(
        applier.sm.reader().applied_state().expect("state").alarms,
        vec![(MEMBER_ID, AlarmType::NoSpace)]
    );
    assert_growth_refused(&mut applier);

    // Reads, a Txn without puts, deletes and compaction still work.
    assert_eq!(applier.count(b"fill/"), written);
    let read_only_txn = applier.apply(Command::Txn(TxnRequest {
        compare: Vec::new(),
        success: vec![RequestOp::Range(RangeRequest {
            key: key(0),
            ..Default::default()
        })],
        failure: Vec::new(),
    }));
    assert!(read_only_txn.result.is_ok(), "{read_only_txn:?}");
    assert_eq!(read_only_txn.revision, revision);
    let keep = written / 10;
    let deleted = applier.apply(Command::DeleteRange(DeleteRangeRequest {
        key: key(keep),
        range_end: b"fill0".to_vec(),
        prev_kv: false,
    }));
    assert_eq!(
        deleted,
        ApplyResponse {
            revision: revision + 1,
            result: Ok(CommandResult::DeleteRange {
                deleted: written - keep,
                prev_kvs: Vec::new()
            })
        }
    );
    let compacted = applier.apply(Command::Compact {
        revision: revision + 1,
        physical: true,
    });
    assert_eq!(compacted.result, Ok(CommandResult::Compact));
    assert_eq!(applier.count(b"fill/"), keep);
    // What the node's compactor does after a Compact applies: remove the versions it made
    // unreadable, in bounded steps.
    applier
        .sm
        .compact_until_done()
        .expect("physical compaction");

    // Defragmenting gives the space back.
    let size_after_bytes = store.defragment().expect("defragment");
    eprintln!(
        "{written} keys filled {size_full_bytes} bytes; {size_after_bytes} bytes after defragment"
    );
    assert!(
        size_after_bytes < QUOTA_BYTES,
        "{size_after_bytes} bytes after defragment, quota {QUOTA_BYTES}"
    );
    assert!(size_after_bytes < size_full_bytes);
    assert_eq!(store.db_size_bytes(), size_after_bytes);
    assert!(!store.quota_exceeded());
    // Still refused: only clearing the alarm (through Raft) lets writes in.
    assert_growth_refused(&mut applier);

    let cleared = applier.apply(alarm(AlarmAction::Deactivate));
    assert_eq!(
        cleared.result,
        Ok(CommandResult::Alarm { active: Vec::new() })
    );
    let accepted = applier.apply(Command::Put(put(b"after".to_vec())));
    assert_eq!(
        accepted,
        ApplyResponse {
            revision: revision + 2,
            result: Ok(CommandResult::Put { prev_kv: None })
        }
    );
    let granted = applier.apply(Command::LeaseGrant {
        id: 5,
        ttl_seconds: 60,
    });
    assert!(granted.result.is_ok(), "{granted:?}");

    // After a restart: the data, the revision and the cleared alarm are all there.
    drop((applier, store));
    let applier = open(&path);
    let state = applier.sm.reader().applied_state().expect("state");
    assert_eq!(state.revision, revision + 2);
    assert_eq!(state.compact_revision, revision + 1);
    assert!(state.alarms.is_empty());
    assert_eq!(applier.count(b"fill/"), keep);
    let (after, _) = applier.read(&RangeRequest {
        key: b"after".to_vec(),
        ..Default::default()
    });
    assert_eq!(after.kvs.len(), 1);
    assert_eq!(after.kvs[0].value.len(), VALUE_BYTES);
    let (first, _) = applier.read(&RangeRequest {
        key: key(0),
        ..Default::default()
    });
    assert_eq!(first.kvs[0].version, 1);
    assert!(!applier.sm.store().quota_exceeded());
}

#[test]
fn a_quota_below_one_mebibyte_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = StorageBackend::Redb {
        dir: dir.path().join("node.redb"),
    };
    let too_small = Limits {
        quota_backend_bytes: 1024 * 1024 - 1,
        ..Default::default()
    };
    let error = open_storage(&backend, too_small).expect_err("a quota under 1 MiB");
    assert!(error.to_string().contains("quota-backend-bytes"), "{error}");
    let smallest = Limits {
        quota_backend_bytes: 1024 * 1024,
        ..Default::default()
    };
    open_storage(&backend, smallest).expect("1 MiB is allowed");
}
