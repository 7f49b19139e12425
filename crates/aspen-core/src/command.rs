//! The replicated command: the payload of every normal Raft log entry.
//!
//! It carries everything the etcd v3 API can ask the state machine to change. Reads travel in
//! it only inside a Txn, where they must see the Txn's own writes. Field types are explicitly
//! sized; revisions and lease ids are `u64` (etcd's wire uses int64; the API layer converts
//! and rejects negatives).

use serde::{Deserialize, Serialize};

/// A request replicated through Raft and applied, in log order, by every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    /// Drop history below `revision`: reads below it fail once applied; the versions it makes
    /// unreadable are removed afterwards, in steps. With `physical`, the client's call returns
    /// only once this member has removed them, as etcd's does (the API layer waits).
    Compact {
        revision: u64,
        physical: bool,
    },
    /// Grant a lease. The leader picks `id` before proposing, so every replica stores the same.
    LeaseGrant {
        id: u64,
        ttl_seconds: i64,
    },
    /// Revoke a lease on a client's request: its keys are deleted in one revision.
    LeaseRevoke {
        id: u64,
    },
    /// The leader found these leases expired; each is revoked as by `LeaseRevoke`.
    LeaseExpire {
        ids: Vec<u64>,
    },
    /// Raise or clear an alarm (etcd's NOSPACE). While NOSPACE is raised, writes that can grow
    /// the store are refused; reads, deletes and compaction still work.
    Alarm {
        action: AlarmAction,
        member_id: u64,
        alarm: AlarmType,
    },
    /// A change to the auth store (users, roles, the enabled flag, tokens).
    Auth(crate::auth::AuthCommand),
    /// `command`, sent by `user` whose permissions the API layer checked against the auth
    /// store at `auth_revision`. While auth is enabled, it applies only if the auth store is
    /// still at that revision (otherwise etcd's "revision of auth store is old"), so a grant
    /// revoked between the check and the apply is never used. Sent only while auth is enabled.
    Authorized {
        user: String,
        auth_revision: u64,
        command: Box<Command>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlarmAction {
    Activate,
    Deactivate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AlarmType {
    NoSpace,
    Corrupt,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// 0: no lease.
    pub lease: u64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    /// 0: no limit.
    pub limit: u64,
    /// 0: the current revision.
    pub revision: u64,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub serializable: bool,
    pub keys_only: bool,
    pub count_only: bool,
    /// 0: no bound.
    pub min_mod_revision: u64,
    pub max_mod_revision: u64,
    pub min_create_revision: u64,
    pub max_create_revision: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(u64),
    CreateRevision(u64),
    ModRevision(u64),
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    Lease(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub result: CompareResult,
    pub target: CompareTarget,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

impl Command {
    /// Client requests that are checked against the auth store while auth is enabled, and so
    /// must come wrapped in `Authorized` (etcd checks these when it applies them). The others
    /// are either internal (lease expiry, alarms the node raises) or unchecked by etcd
    /// (lease grants), and the leader may rewrite them before proposing (a grant's id).
    pub fn needs_auth_user(&self) -> bool {
        match self {
            Command::Put(_)
            | Command::DeleteRange(_)
            | Command::Txn(_)
            | Command::Compact { .. }
            | Command::LeaseRevoke { .. } => true,
            Command::Auth(auth) => auth.needs_admin(),
            Command::LeaseGrant { .. }
            | Command::LeaseExpire { .. }
            | Command::Alarm { .. }
            | Command::Authorized { .. } => false,
        }
    }

    /// True when applying this command can make the store larger; such commands are refused
    /// while the NOSPACE alarm is raised (etcd refuses Put, Txn and LeaseGrant).
    pub fn may_grow_store(&self) -> bool {
        match self {
            Command::Put(_) | Command::LeaseGrant { .. } => true,
            Command::Txn(txn) => txn_has_put(txn, 0),
            Command::Authorized { command, .. } => command.may_grow_store(),
            Command::DeleteRange(_)
            | Command::Compact { .. }
            | Command::LeaseRevoke { .. }
            | Command::LeaseExpire { .. }
            | Command::Alarm { .. }
            | Command::Auth(_) => false,
        }
    }

    /// True when this command's reply is a few dozen bytes whatever the store holds: a put or
    /// delete without `prev_kv`, or a txn made only of those (no range, at any depth). A
    /// follower gathers such writes into one forwarded batch (`aspen-node`'s
    /// `forward_batch`); a reply that may carry values or key ranges goes alone, so no batch's
    /// reply can outgrow a peer message.
    pub fn reply_is_small(&self) -> bool {
        match self {
            Command::Put(put) => !put.prev_kv,
            Command::DeleteRange(delete) => !delete.prev_kv,
            Command::Txn(txn) => txn_reply_is_small(txn, 0),
            Command::Authorized { command, .. } => command.reply_is_small(),
            // Small replies too, but rare, or (a physical compaction) slow to answer: a batch
            // answers when its slowest write does.
            Command::Compact { .. }
            | Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. }
            | Command::LeaseExpire { .. }
            | Command::Alarm { .. }
            | Command::Auth(_) => false,
        }
    }
}

fn txn_reply_is_small(txn: &TxnRequest, depth: u32) -> bool {
    if depth >= crate::limits::TXN_NESTING_DEPTH_MAX {
        return false;
    }
    txn.success
        .iter()
        .chain(txn.failure.iter())
        .all(|op| match op {
            RequestOp::Put(put) => !put.prev_kv,
            RequestOp::DeleteRange(delete) => !delete.prev_kv,
            RequestOp::Txn(inner) => txn_reply_is_small(inner, depth + 1),
            RequestOp::Range(_) => false,
        })
}

/// Nesting is bounded by `TXN_NESTING_DEPTH_MAX`; a deeper txn counts as writing, so it is
/// refused under NOSPACE and later rejected by validation.
fn txn_has_put(txn: &TxnRequest, depth: u32) -> bool {
    if depth >= crate::limits::TXN_NESTING_DEPTH_MAX {
        return true;
    }
    txn.success
        .iter()
        .chain(txn.failure.iter())
        .any(|op| match op {
            RequestOp::Put(_) => true,
            RequestOp::Txn(inner) => txn_has_put(inner, depth + 1),
            RequestOp::Range(_) | RequestOp::DeleteRange(_) => false,
        })
}

impl std::fmt::Display for Command {
    /// A short form for logs: the kind and the first key, never a value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Put(p) => write!(f, "put({})", String::from_utf8_lossy(&p.key)),
            Command::DeleteRange(d) => {
                write!(f, "delete_range({})", String::from_utf8_lossy(&d.key))
            }
            Command::Txn(t) => write!(f, "txn({} compares)", t.compare.len()),
            Command::Compact { revision, .. } => write!(f, "compact({revision})"),
            Command::LeaseGrant { id, ttl_seconds } => {
                write!(f, "lease_grant({id},{ttl_seconds}s)")
            }
            Command::LeaseRevoke { id } => write!(f, "lease_revoke({id})"),
            Command::LeaseExpire { ids } => write!(f, "lease_expire({} leases)", ids.len()),
            Command::Alarm { action, alarm, .. } => write!(f, "alarm({action:?} {alarm:?})"),
            Command::Auth(auth) => write!(f, "auth({})", auth.kind()),
            Command::Authorized { user, command, .. } => write!(f, "{command} by {user}"),
        }
    }
}
