//! What applying a [`crate::Command`] returns, and the MVCC key-value record.

use serde::{Deserialize, Serialize};

/// One version of a key, with etcd's metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    /// 1 on creation, +1 on every put; a deletion ends the key's generation.
    pub version: u64,
    /// 0: no lease.
    pub lease: u64,
}

/// The outcome of applying one command. `revision` is the store revision after the command,
/// which etcd reports in the response header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResponse {
    pub revision: u64,
    pub result: Result<CommandResult, ApplyError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    Put {
        prev_kv: Option<KeyValue>,
    },
    DeleteRange {
        deleted: u64,
        prev_kvs: Vec<KeyValue>,
    },
    Txn {
        succeeded: bool,
        responses: Vec<ResponseOp>,
    },
    Range(RangeResult),
    Compact,
    LeaseGrant {
        id: u64,
        ttl_seconds: i64,
    },
    LeaseRevoke,
    LeaseExpire {
        expired: u32,
    },
    Alarm {
        active: Vec<(u64, crate::command::AlarmType)>,
    },
    /// An auth store change applied (or was a no-op, as etcd's repeated enable).
    Auth,
    /// A token was assigned to an authenticated user.
    Authenticate {
        token: String,
    },
    /// A blank or membership entry: nothing for a client.
    Empty,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    Range(RangeResult),
    Put {
        prev_kv: Option<KeyValue>,
    },
    DeleteRange {
        deleted: u64,
        prev_kvs: Vec<KeyValue>,
    },
    Txn {
        succeeded: bool,
        responses: Vec<ResponseOp>,
    },
}

/// A request that applied deterministically to an error. Every replica reaches the same one.
/// The messages are etcd's, so that etcd clients that match on them keep working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted { compact_revision: u64 },
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: invalid range end")]
    InvalidRangeEnd,
    #[error("etcdserver: txn nested too deeply")]
    TxnTooDeep,
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// Aspen's own bounds on the auth store (`AUTH_*_MAX`); etcd has none.
    #[error("etcdserver: too many users, roles or permissions")]
    AuthTooMany,
    #[error("etcdserver: user or role name is too long")]
    AuthNameTooLong,
}
