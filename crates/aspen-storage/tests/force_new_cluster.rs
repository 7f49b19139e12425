//! `force_new_cluster` on a redb store: the membership becomes this member alone at a higher
//! term, every entry of the log is kept and committed (also those after the recorded committed
//! index), the data is untouched, and what openraft reads at start says so. A second run changes
//! nothing; a member outside the membership and an empty store are told apart.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use std::collections::{BTreeMap, BTreeSet};

use aspen_core::limits::Limits;
use aspen_core::type_config::alias::{Entry, LogId, Membership, Vote};
use aspen_core::{Command, NodeInfo, PutRequest, RangeRequest, TypeConfig};
use aspen_storage::force_new_cluster::{ForceOutcome, force_new_cluster};
use aspen_storage::{LogStore, StateMachine, StorageBackend, open_storage};
use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine, StorageHelper};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, RaftLogReader};

const TERM: u64 = 2;
const LEADER: u64 = 2;
/// The member that survives and is forced.
const ME: u64 = 1;
/// A vote this member cast in a later election that no one won.
const VOTE_TERM: u64 = 5;

fn log_id(index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(TERM, LEADER, index)
}

fn info(id: u64) -> NodeInfo {
    NodeInfo {
        name: format!("node-{id}"),
        peer_urls: vec![format!("http://10.0.0.{id}:2380")],
        client_urls: vec![format!("http://10.0.0.{id}:2379")],
    }
}

fn three_members() -> Membership {
    let ids = [1, 2, 3];
    let nodes: BTreeMap<u64, NodeInfo> = ids.iter().map(|id| (*id, info(*id))).collect();
    Membership::new(vec![ids.into_iter().collect()], nodes).expect("membership")
}

fn put(index: u64) -> Entry {
    openraft::Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Command::Put(PutRequest {
            key: format!("key/{index:03}").into_bytes(),
            value: format!("value {index}").into_bytes(),
            ..Default::default()
        })),
    }
}

/// Entries 0..=20: the three-member membership (openraft's initialization), then puts.
fn entries() -> Vec<Entry> {
    let mut entries = vec![openraft::Entry {
        log_id: log_id(0),
        payload: EntryPayload::Membership(three_members()),
    }];
    entries.extend((1..=20).map(put));
    entries
}

async fn append(log: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(tx))
        .await
        .expect("append");
    rx.await.expect("flush callback").expect("flushed");
}

async fn apply(sm: &mut StateMachine, entries: Vec<Entry>) {
    let stream = futures_util::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    sm.apply(stream).await.expect("apply");
}

fn keys(sm: &StateMachine) -> Vec<String> {
    let request = RangeRequest {
        key: b"key/".to_vec(),
        range_end: b"key0".to_vec(),
        ..Default::default()
    };
    let (result, _) = sm.reader().range(&request).expect("read").expect("range");
    result
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

/// A follower's store as a SIGKILL leaves it: entries up to 20 in the log, 12 applied, the committed
/// index recorded at 10, and a vote in a later term.
async fn follower_store(backend: &StorageBackend) {
    let (mut log, mut sm) = open_storage(backend, Limits::default()).expect("open");
    log.save_vote(&Vote::new(VOTE_TERM, 3)).await.expect("vote");
    append(&mut log, entries()).await;
    apply(&mut sm, entries()[..=12].to_vec()).await;
    log.save_committed(Some(log_id(10)))
        .await
        .expect("committed");
    append(&mut log, Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forcing_keeps_every_entry_and_leaves_this_member_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = StorageBackend::Redb {
        dir: dir.path().join("member"),
    };
    follower_store(&backend).await;

    let (mut log, mut sm) = open_storage(&backend, Limits::default()).expect("reopen");
    let outcome = force_new_cluster(&mut log, &mut sm, ME, info(ME))
        .await
        .expect("force");
    let ForceOutcome::Forced(forced) = outcome else {
        panic!("expected a rewrite, got {outcome:?}");
    };
    assert_eq!(forced.removed, vec![2, 3]);
    assert_eq!(forced.term, VOTE_TERM + 1, "above the vote's term");
    assert_eq!(forced.membership_log_id.index, 21, "after the last entry");
    assert_eq!(forced.committed_index_before, 10);
    assert_eq!(forced.uncommitted_entries_kept, 10);
    drop((log, sm));

    // What openraft reads when it starts on this store.
    let (mut log, mut sm) = open_storage(&backend, Limits::default()).expect("reopen");
    assert_eq!(
        log.read_vote().await.expect("vote"),
        Some(Vote::new_committed(VOTE_TERM + 1, ME))
    );
    assert_eq!(
        log.read_committed().await.expect("committed"),
        Some(forced.membership_log_id)
    );
    let state = StorageHelper::new(&mut log, &mut sm)
        .with_id(ME)
        .get_initial_state()
        .await
        .expect("initial state");
    let effective = state.membership_state.effective().membership().clone();
    assert_eq!(
        effective.voter_ids().collect::<BTreeSet<_>>(),
        BTreeSet::from([ME])
    );
    assert_eq!(effective.nodes().count(), 1);
    assert_eq!(effective.get_node(&ME), Some(&info(ME)));
    // Re-applied up to the new entry: every put in the log, also those after index 10 and 12.
    let applied = sm.reader().applied_state().expect("applied");
    assert_eq!(applied.last_applied, Some(forced.membership_log_id));
    let expected: Vec<String> = (1..=20).map(|i| format!("key/{i:03}")).collect();
    assert_eq!(keys(&sm), expected);
    assert_eq!(applied.revision, 21, "one revision per put, none lost");

    // Left on, the flag finds nothing more to do.
    let again = force_new_cluster(&mut log, &mut sm, ME, info(ME))
        .await
        .expect("force again");
    assert_eq!(again, ForceOutcome::AlreadyAlone);
    assert_eq!(
        log.get_log_state().await.expect("log state").last_log_id,
        Some(forced.membership_log_id),
        "nothing appended the second time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_or_an_empty_store_is_not_forced() {
    let (mut log, mut sm) =
        open_storage(&StorageBackend::InMemory, Limits::default()).expect("open");
    assert_eq!(
        force_new_cluster(&mut log, &mut sm, ME, info(ME))
            .await
            .expect("empty"),
        ForceOutcome::NoState
    );
    append(&mut log, entries()).await;
    apply(&mut sm, entries()).await;
    let outcome = force_new_cluster(&mut log, &mut sm, 9, info(9))
        .await
        .expect("stranger");
    assert_eq!(
        outcome,
        ForceOutcome::NotAMember {
            members: vec![1, 2, 3]
        }
    );
    assert_eq!(
        log.get_log_state().await.expect("log state").last_log_id,
        Some(log_id(20)),
        "a refused force writes nothing"
    );
}
