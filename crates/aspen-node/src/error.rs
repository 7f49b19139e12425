//! Node errors: what can go wrong between a client request and the state machine.

use aspen_core::ApplyError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum NodeError {
    /// The request applied to an etcd error (compacted, lease not found, ...).
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    /// More linearizable reads wait for a read index than `READ_INDEX_WAITERS_MAX`.
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("storage: {0}")]
    Storage(String),
    /// A storage operation failed because the filesystem had no room (ENOSPC, EDQUOT).
    #[error("storage: the disk is full: {0}")]
    DiskFull(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("peer: {0}")]
    Peer(String),
}

impl From<aspen_storage::StorageError> for NodeError {
    fn from(e: aspen_storage::StorageError) -> Self {
        if e.is_disk_full() {
            return NodeError::DiskFull(e.to_string());
        }
        NodeError::Storage(e.to_string())
    }
}
