//! The one table from Aspen errors to etcd's gRPC status codes and messages. etcd's clients
//! match on these messages, so they are etcd's, byte for byte.

use aspen_core::ApplyError;
use aspen_node::NodeError;
use aspen_watch::WatchError;
use tonic::{Code, Status};

pub const EMPTY_KEY: &str = "etcdserver: key is not provided";
pub const VALUE_PROVIDED: &str = "etcdserver: value is provided";
pub const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
pub const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
pub const LEASE_TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";
pub const MEMBER_BAD_URLS: &str = "etcdserver: given member URLs are invalid";
pub const NOT_CAPABLE: &str = "etcdserver: not capable";
/// RoleGrantPermission without a permission, or with a type other than read, write and
/// readwrite (etcd 3.4 has no message for these: it would store whatever came).
pub const PERMISSION_MISSING: &str = "aspen: the request grants no permission";
pub const PERMISSION_TYPE_UNKNOWN: &str =
    "aspen: unknown permission type (read, write or readwrite)";

/// etcd's `concurrency.ErrElectionNotLeader`: Proclaim by a key that no longer leads.
pub const ELECTION_NOT_LEADER: &str = "election: not leader";
/// etcd's `concurrency.ErrElectionNoLeader`: Leader of an election nobody leads.
pub const ELECTION_NO_LEADER: &str = "election: no leader";
/// etcd's `v3election.ErrMissingLeaderKey`: Proclaim or Resign without a `leader`.
pub const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";

/// A maintenance call refused by the auth store, as etcd 3.4 sends it: its Maintenance
/// service returns the auth store's own error (`auth: permission denied`, `auth: invalid auth
/// token`, ...) without translating it, which gRPC sends as `Unknown` (seen from etcd 3.4.23
/// on Snapshot, Defragment and HashKV).
pub fn maintenance_auth(error: &ApplyError) -> Status {
    let message = error.to_string();
    let reason = message.strip_prefix("etcdserver: ").unwrap_or(&message);
    Status::new(Code::Unknown, format!("auth: {reason}"))
}

/// A JWT Authenticate could not sign (etcd's `ErrVerifyOnly` with only a public key): etcd
/// answers these with code Unknown and the error's text.
pub fn token_signing(message: &str) -> Status {
    Status::new(Code::Unknown, message)
}

/// Authenticate with a password for a user created with `--no-password`: etcd 3.4 answers
/// its `ErrNoPasswordUser` unmapped, so code Unknown with this text.
pub fn no_password_user() -> Status {
    Status::new(
        Code::Unknown,
        "auth: authentication failed, password was given for no password user",
    )
}

/// Password checks run bcrypt off the async workers; a failure there is an internal error.
pub fn internal(message: String) -> Status {
    Status::new(Code::Internal, message)
}

/// The cancel reason etcd 3.4 gives a watcher it refused: the text of its gRPC permission error.
pub const WATCH_PERMISSION_DENIED: &str =
    "rpc error: code = PermissionDenied desc = etcdserver: permission denied";

pub fn invalid(message: &str) -> Status {
    Status::new(Code::InvalidArgument, message)
}

/// The Election service's own errors. etcd 3.4 returns them as plain Go errors, which gRPC
/// sends as `Unknown` with the error's text; clients match on the text.
pub fn election(message: &str) -> Status {
    Status::new(Code::Unknown, message)
}

/// Any error of a Lock or Election call, as etcd 3.4 sends it. Its services run on an
/// in-process etcd client, which turns the server's errors into plain Go errors
/// (`rpctypes.EtcdError`); gRPC then sends every one of them as `Unknown` with the message
/// (checked against etcd 3.4.23: a lock on an unknown lease answers `Unknown`,
/// "etcdserver: requested lease not found").
pub fn from_recipe(status: Status) -> Status {
    if status.code() == Code::Unknown {
        return status;
    }
    Status::new(Code::Unknown, status.message())
}

/// A watch the Lock and Election services open inside the server could not be added.
pub fn from_watch(error: &WatchError) -> Status {
    let code = match error {
        WatchError::TooManyWatchers => Code::ResourceExhausted,
        WatchError::DuplicateId | WatchError::EmptyRange => Code::Internal,
    };
    Status::new(code, error.to_string())
}

pub fn from_apply(error: &ApplyError) -> Status {
    let message = error.to_string();
    let code = match error {
        ApplyError::Compacted { .. } | ApplyError::FutureRevision => Code::OutOfRange,
        ApplyError::LeaseNotFound => Code::NotFound,
        ApplyError::LeaseExists => Code::FailedPrecondition,
        ApplyError::NoSpace => Code::ResourceExhausted,
        ApplyError::KeyNotFound
        | ApplyError::DuplicateKey
        | ApplyError::TooManyOps
        | ApplyError::EmptyKey
        | ApplyError::InvalidRangeEnd
        | ApplyError::TxnTooDeep => Code::InvalidArgument,
        // etcd 3.4's rpctypes codes for the auth errors.
        ApplyError::RootUserNotExist
        | ApplyError::RootRoleNotExist
        | ApplyError::UserAlreadyExist
        | ApplyError::UserNotFound
        | ApplyError::RoleAlreadyExist
        | ApplyError::RoleNotFound
        | ApplyError::RoleNotGranted
        | ApplyError::PermissionNotGranted
        | ApplyError::AuthNotEnabled => Code::FailedPrecondition,
        ApplyError::UserEmpty
        | ApplyError::RoleEmpty
        | ApplyError::AuthFailed
        | ApplyError::InvalidAuthMgmt
        | ApplyError::AuthOldRevision
        | ApplyError::AuthNameTooLong => Code::InvalidArgument,
        ApplyError::PermissionDenied => Code::PermissionDenied,
        ApplyError::InvalidAuthToken => Code::Unauthenticated,
        ApplyError::AuthTooMany => Code::ResourceExhausted,
    };
    Status::new(code, message)
}

pub fn from_node(error: NodeError) -> Status {
    let message = error.to_string();
    let code = match &error {
        NodeError::Apply(apply) => return from_apply(apply),
        NodeError::NoLeader
        | NodeError::LeaderChanged
        | NodeError::Timeout
        | NodeError::Stopped
        | NodeError::Unhealthy => Code::Unavailable,
        NodeError::MemberNotFound => Code::NotFound,
        NodeError::TooManyRequests => Code::ResourceExhausted,
        NodeError::PeerUrlExists
        | NodeError::NotLearner
        | NodeError::LearnerNotReady
        | NodeError::NotEnoughStartedMembers => Code::FailedPrecondition,
        NodeError::Storage(_)
        | NodeError::DiskFull(_)
        | NodeError::Raft(_)
        | NodeError::Peer(_) => Code::Unavailable,
    };
    if matches!(
        error,
        NodeError::Storage(_) | NodeError::DiskFull(_) | NodeError::Raft(_) | NodeError::Peer(_)
    ) {
        tracing::warn!(%error, "request failed");
    }
    Status::new(code, message)
}
