//! `--force-new-cluster`: before Raft starts, rewrites a member's Raft state so that it comes
//! up as the only member of its cluster with all of its data, as etcd's flag does.
//!
//! etcd appends configuration changes removing every other member to its WAL and marks them
//! committed. Here the same is one membership entry holding only this member, appended after the
//! last entry of the log at a term above every term this member has seen (its vote's and its
//! log's), with this member's committed vote for that term and the committed index moved to
//! that entry. openraft then starts with this member as the sole voter: it re-applies the log
//! up to that entry, elects itself (one vote is a quorum) and serves.
//!
//! Unlike etcd, which discards the entries after the commit index its WAL recorded, every entry
//! in the log is kept and becomes committed. A follower learns that an entry is committed only
//! with the leader's next message, and the committed index is not made durable on its own, so
//! the recorded index may lag what the cluster acknowledged: keeping the whole log keeps every
//! acknowledged write this member holds. An entry that was never committed may then take
//! effect, as a write whose client saw a timeout may.
//!
//! Crash safety: the vote is written first (a higher vote alone changes nothing), then the entry
//! and the committed index in one durable log commit. A crash in between leaves either the old
//! state with a higher vote, or the new membership (then uncommitted, but this member is its
//! only voter and commits it when it elects itself); starting again with the flag finishes the
//! job or finds nothing to do.

use std::collections::{BTreeMap, BTreeSet};

use aspen_core::type_config::alias::{Entry, LogId, Membership, Vote};
use aspen_core::{NodeId, NodeInfo, TypeConfig};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage, StorageHelper};
use openraft::vote::RaftLeaderIdExt;

use crate::error::{Result, StorageError};
use crate::log_store::LogStore;
use crate::state_machine::StateMachine;

/// What `force_new_cluster` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForceOutcome {
    /// The data dir holds no Raft state (never initialized, or the memory backend): there is
    /// nothing to keep, and the member starts as its other flags say (etcd ignores the flag
    /// without a WAL too).
    NoState,
    /// The membership already holds only this member (it was forced before, or always was a
    /// single-member cluster): nothing was changed.
    AlreadyAlone,
    /// This member is not in the membership its data dir holds, so it cannot be the one to keep
    /// (its id comes from `--initial-advertise-peer-urls` and `--initial-cluster-token`).
    NotAMember { members: Vec<NodeId> },
    /// The membership was rewritten to this member alone.
    Forced(ForcedCluster),
}

/// The rewrite `force_new_cluster` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForcedCluster {
    /// The members dropped from the membership, learners included.
    pub removed: Vec<NodeId>,
    /// Where the new membership entry went; also the new committed index.
    pub membership_log_id: LogId,
    /// The term of the new entry and of this member's vote.
    pub term: u64,
    /// The committed index the log recorded before (0: none).
    pub committed_index_before: u64,
    /// Entries after that index, kept and now committed.
    pub uncommitted_entries_kept: u64,
}

fn io_error(error: std::io::Error) -> StorageError {
    match error.downcast::<StorageError>() {
        Ok(storage) => storage,
        Err(other) => StorageError::Invariant(other.to_string()),
    }
}

/// Rewrites the Raft state in `log_store` so that member `me` (advertising `info`) is the only
/// member; the state machine's data is not touched. Call before Raft starts on this storage.
pub async fn force_new_cluster(
    log_store: &mut LogStore,
    state_machine: &mut StateMachine,
    me: NodeId,
    info: NodeInfo,
) -> Result<ForceOutcome> {
    let vote: Option<Vote> = log_store.read_vote().await.map_err(io_error)?;
    let log_state = log_store.get_log_state().await.map_err(io_error)?;
    let committed = log_store.read_committed().await.map_err(io_error)?;
    let applied = state_machine.reader().applied_state()?.last_applied;
    if vote.is_none() && log_state.last_log_id.is_none() && applied.is_none() {
        return Ok(ForceOutcome::NoState);
    }
    let membership_state = StorageHelper::new(log_store, state_machine)
        .with_id(me)
        .get_membership()
        .await
        .map_err(|e| StorageError::Invariant(format!("reading the membership: {e}")))?;
    let membership = membership_state.effective().membership().clone();
    let members: Vec<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
    if membership.get_node(&me).is_none() {
        return Ok(ForceOutcome::NotAMember { members });
    }
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let alone = membership.get_joint_config().len() == 1
        && voters == BTreeSet::from([me])
        && members == [me];
    if alone {
        return Ok(ForceOutcome::AlreadyAlone);
    }

    // openraft purges a log that a snapshot overtook at start; do it first, so the new entry
    // follows both the log and the state machine without a hole.
    let mut last_log_id = log_state.last_log_id;
    if let Some(applied) = applied.filter(|a| Some(a.index) > last_log_id.map(|l| l.index)) {
        log_store.purge(applied).await.map_err(io_error)?;
        last_log_id = Some(applied);
    }
    let Some(last_log_id) = last_log_id else {
        // A member is in a membership only through a log entry or an applied snapshot.
        return Err(StorageError::Invariant(
            "a membership without a log position".into(),
        ));
    };
    let vote_term = vote.map_or(0, |v| v.leader_id().term);
    let term = vote_term.max(last_log_id.committed_leader_id().term) + 1;
    let index = last_log_id.index + 1;
    let leader = <TypeConfig as openraft::RaftTypeConfig>::LeaderId::new_committed(term, me);
    let membership_log_id = LogId::new(leader, index);
    let alone = Membership::new(vec![BTreeSet::from([me])], BTreeMap::from([(me, info)]))
        .map_err(|e| StorageError::Invariant(format!("single-member membership: {e}")))?;

    let new_vote = Vote::new_committed(term, me);
    log_store.save_vote(&new_vote).await.map_err(io_error)?;
    log_store
        .append(
            [Entry::new_membership(membership_log_id, alone)],
            IOFlushed::noop(),
        )
        .await
        .map_err(io_error)?;
    log_store
        .save_committed(Some(membership_log_id))
        .await
        .map_err(io_error)?;
    log_store.flush().await?;

    // What openraft will read back at start.
    let reread = log_store.get_log_state().await.map_err(io_error)?;
    assert_eq!(reread.last_log_id, Some(membership_log_id));
    assert_eq!(
        log_store.read_committed().await.map_err(io_error)?,
        Some(membership_log_id)
    );
    assert_eq!(
        log_store.read_vote().await.map_err(io_error)?,
        Some(new_vote)
    );
    let committed_index_before = committed.map_or(0, |c| c.index);
    Ok(ForceOutcome::Forced(ForcedCluster {
        removed: members.into_iter().filter(|id| *id != me).collect(),
        membership_log_id,
        term,
        committed_index_before,
        uncommitted_entries_kept: last_log_id.index.saturating_sub(committed_index_before),
    }))
}
