//! etcd's authentication store: users, roles and their key permissions, the enabled flag and
//! the auth revision. The same state lives in the state machine's tables (replicated through
//! Raft) and, whole, in memory for permission checks; [`AuthState::apply`] is the one place
//! that changes it, run by every replica on the same commands in the same order.
//!
//! The rules are etcd 3.4's (`auth/store.go`): `root` is a user name and a role name with
//! special meaning; enabling auth needs a `root` user holding the `root` role; while enabled,
//! neither can be taken apart; every change but a grant of a role the user already has moves
//! the auth revision, and a token issued at an older revision stops working.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::keys::KeyRange;
use crate::limits::{AUTH_NAME_BYTES_MAX, AUTH_PERMISSIONS_PER_ROLE_MAX, AUTH_ROLES_MAX};
use crate::limits::{AUTH_ROLES_PER_USER_MAX, AUTH_USERS_MAX};
use crate::response::ApplyError;

/// The user name and the role name etcd treats as the administrator.
pub const ROOT: &str = "root";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PermissionType {
    Read,
    Write,
    ReadWrite,
}

impl PermissionType {
    /// Whether a permission of this type allows an access of type `wanted` (`Read` or `Write`).
    pub fn allows(self, wanted: PermissionType) -> bool {
        self == PermissionType::ReadWrite || self == wanted
    }
}

/// A permission on a key (`range_end` empty), a range `[key, range_end)`, or every key from
/// `key` on (`range_end == [0]`), as etcd's `authpb.Permission`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub perm_type: PermissionType,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
}

/// A user as stored: the bcrypt hash of its password (none for a user added with
/// `no_password`, who cannot authenticate with a password) and its roles, sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub password_hash: Option<String>,
    pub roles: Vec<String>,
}

/// A role as stored: its permissions, sorted by key as etcd keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRecord {
    pub permissions: Vec<Permission>,
}

/// The flag and the revision, stored together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthMeta {
    pub enabled: bool,
    /// Moves on every change to users, roles or the flag (etcd's auth revision); 0 before the
    /// first.
    pub revision: u64,
}

/// A change to the auth store, replicated through Raft. Passwords never travel: the node that
/// receives the request hashes it (bcrypt) before proposing, as etcd does, so applying stays
/// cheap and every replica stores the same hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthCommand {
    Enable,
    Disable,
    /// A password was checked on the receiving node at auth revision `checked_revision`; the
    /// token is assigned on every replica (`<token_prefix>.<log index>`), as etcd's simple
    /// tokens are.
    Authenticate {
        name: String,
        token_prefix: String,
        /// Refused ("revision of auth store is old") if the store moved since: the password
        /// may have changed; the receiving node checks it again and retries.
        checked_revision: u64,
    },
    UserAdd {
        name: String,
        password_hash: Option<String>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: Option<String>,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        name: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        role: String,
    },
    RoleGrantPermission {
        name: String,
        permission: Permission,
    },
    RoleRevokePermission {
        role: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        range_end: Vec<u8>,
    },
}

impl AuthCommand {
    /// Commands only a root user may send while auth is enabled (etcd's `needAdminPermission`).
    pub fn needs_admin(&self) -> bool {
        !matches!(self, AuthCommand::Authenticate { .. })
    }

    /// A short name for logs: never a password hash or a token.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthCommand::Enable => "enable",
            AuthCommand::Disable => "disable",
            AuthCommand::Authenticate { .. } => "authenticate",
            AuthCommand::UserAdd { .. } => "user_add",
            AuthCommand::UserDelete { .. } => "user_delete",
            AuthCommand::UserChangePassword { .. } => "user_change_password",
            AuthCommand::UserGrantRole { .. } => "user_grant_role",
            AuthCommand::UserRevokeRole { .. } => "user_revoke_role",
            AuthCommand::RoleAdd { .. } => "role_add",
            AuthCommand::RoleDelete { .. } => "role_delete",
            AuthCommand::RoleGrantPermission { .. } => "role_grant_permission",
            AuthCommand::RoleRevokePermission { .. } => "role_revoke_permission",
        }
    }
}

/// What applying an [`AuthCommand`] changed, for the caller to persist and announce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthChanges {
    /// Users whose record changed or went away.
    pub users: Vec<String>,
    /// Roles whose record changed or went away.
    pub roles: Vec<String>,
    /// The flag or the revision changed.
    pub meta: bool,
    /// Tokens of these users must stop working (deleted, or the password changed).
    pub invalidated_users: Vec<String>,
    /// Auth was disabled: every token is dropped.
    pub disabled: bool,
}

/// The whole auth store. Bounded by the `AUTH_*_MAX` limits, so a copy in memory is small.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthState {
    pub meta: AuthMeta,
    pub users: BTreeMap<String, UserRecord>,
    pub roles: BTreeMap<String, RoleRecord>,
}

type Applied = Result<(), ApplyError>;

impl AuthState {
    pub fn enabled(&self) -> bool {
        self.meta.enabled
    }

    pub fn revision(&self) -> u64 {
        self.meta.revision
    }

    fn commit_revision(&mut self, changes: &mut AuthChanges) {
        self.meta.revision += 1;
        changes.meta = true;
    }

    pub fn has_root_role(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == ROOT))
    }

    /// Applies `command`; on error nothing changed. `changes` names what did.
    pub fn apply(&mut self, command: &AuthCommand, changes: &mut AuthChanges) -> Applied {
        match command {
            AuthCommand::Enable => {
                if self.meta.enabled {
                    return Ok(());
                }
                if !self.users.contains_key(ROOT) {
                    return Err(ApplyError::RootUserNotExist);
                }
                if !self.has_root_role(ROOT) {
                    return Err(ApplyError::RootRoleNotExist);
                }
                self.meta.enabled = true;
                self.commit_revision(changes);
            }
            AuthCommand::Disable => {
                if !self.meta.enabled {
                    return Ok(());
                }
                self.meta.enabled = false;
                changes.disabled = true;
                self.commit_revision(changes);
            }
            AuthCommand::Authenticate {
                name,
                checked_revision,
                ..
            } => self.check_authenticate(name, *checked_revision)?,
            AuthCommand::UserAdd {
                name,
                password_hash,
            } => {
                check_name(name, ApplyError::UserEmpty)?;
                if self.users.contains_key(name) {
                    return Err(ApplyError::UserAlreadyExist);
                }
                if self.users.len() >= AUTH_USERS_MAX as usize {
                    return Err(ApplyError::AuthTooMany);
                }
                self.users.insert(
                    name.clone(),
                    UserRecord {
                        password_hash: password_hash.clone(),
                        roles: Vec::new(),
                    },
                );
                changes.users.push(name.clone());
                self.commit_revision(changes);
            }
            AuthCommand::UserDelete { name } => {
                if self.meta.enabled && name == ROOT {
                    return Err(ApplyError::InvalidAuthMgmt);
                }
                if self.users.remove(name).is_none() {
                    return Err(ApplyError::UserNotFound);
                }
                changes.users.push(name.clone());
                changes.invalidated_users.push(name.clone());
                self.commit_revision(changes);
            }
            AuthCommand::UserChangePassword {
                name,
                password_hash,
            } => {
                let user = self.users.get_mut(name).ok_or(ApplyError::UserNotFound)?;
                user.password_hash = password_hash.clone();
                changes.users.push(name.clone());
                changes.invalidated_users.push(name.clone());
                self.commit_revision(changes);
            }
            AuthCommand::UserGrantRole { user, role } => {
                if !self.users.contains_key(user) {
                    return Err(ApplyError::UserNotFound);
                }
                if role != ROOT && !self.roles.contains_key(role) {
                    return Err(ApplyError::RoleNotFound);
                }
                let record = self.users.get_mut(user).ok_or(ApplyError::UserNotFound)?;
                match record.roles.binary_search(role) {
                    // etcd ignores a grant of a role the user has, without a new revision.
                    Ok(_) => return Ok(()),
                    Err(at) => {
                        if record.roles.len() >= AUTH_ROLES_PER_USER_MAX as usize {
                            return Err(ApplyError::AuthTooMany);
                        }
                        record.roles.insert(at, role.clone());
                    }
                }
                changes.users.push(user.clone());
                self.commit_revision(changes);
            }
            AuthCommand::UserRevokeRole { name, role } => {
                if self.meta.enabled && name == ROOT && role == ROOT {
                    return Err(ApplyError::InvalidAuthMgmt);
                }
                let record = self.users.get_mut(name).ok_or(ApplyError::UserNotFound)?;
                let at = record
                    .roles
                    .binary_search(role)
                    .map_err(|_| ApplyError::RoleNotGranted)?;
                record.roles.remove(at);
                changes.users.push(name.clone());
                self.commit_revision(changes);
            }
            AuthCommand::RoleAdd { name } => {
                check_name(name, ApplyError::RoleEmpty)?;
                if self.roles.contains_key(name) {
                    return Err(ApplyError::RoleAlreadyExist);
                }
                if self.roles.len() >= AUTH_ROLES_MAX as usize {
                    return Err(ApplyError::AuthTooMany);
                }
                self.roles.insert(name.clone(), RoleRecord::default());
                changes.roles.push(name.clone());
                self.commit_revision(changes);
            }
            AuthCommand::RoleDelete { role } => {
                if self.meta.enabled && role == ROOT {
                    return Err(ApplyError::InvalidAuthMgmt);
                }
                if self.roles.remove(role).is_none() {
                    return Err(ApplyError::RoleNotFound);
                }
                changes.roles.push(role.clone());
                for (name, user) in self.users.iter_mut() {
                    if let Ok(at) = user.roles.binary_search(role) {
                        user.roles.remove(at);
                        changes.users.push(name.clone());
                    }
                }
                self.commit_revision(changes);
            }
            AuthCommand::RoleGrantPermission { name, permission } => {
                let role = self.roles.get_mut(name).ok_or(ApplyError::RoleNotFound)?;
                let same = role
                    .permissions
                    .iter_mut()
                    .find(|p| p.key == permission.key && p.range_end == permission.range_end);
                match same {
                    Some(existing) => existing.perm_type = permission.perm_type,
                    None => {
                        if role.permissions.len() >= AUTH_PERMISSIONS_PER_ROLE_MAX as usize {
                            return Err(ApplyError::AuthTooMany);
                        }
                        role.permissions.push(permission.clone());
                        // Stable: permissions on one key keep their order, as etcd's sort.
                        role.permissions.sort_by(|a, b| a.key.cmp(&b.key));
                    }
                }
                changes.roles.push(name.clone());
                self.commit_revision(changes);
            }
            AuthCommand::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let record = self.roles.get_mut(role).ok_or(ApplyError::RoleNotFound)?;
                let at = record
                    .permissions
                    .iter()
                    .position(|p| &p.key == key && &p.range_end == range_end)
                    .ok_or(ApplyError::PermissionNotGranted)?;
                record.permissions.remove(at);
                changes.roles.push(role.clone());
                self.commit_revision(changes);
            }
        }
        Ok(())
    }

    /// Whether a token may be assigned to `name` (its password was checked before proposing).
    pub fn check_authenticate(&self, name: &str, checked_revision: u64) -> Applied {
        if !self.meta.enabled {
            return Err(ApplyError::AuthNotEnabled);
        }
        if checked_revision != self.meta.revision {
            return Err(ApplyError::AuthOldRevision);
        }
        if !self.users.contains_key(name) {
            return Err(ApplyError::AuthFailed);
        }
        Ok(())
    }

    /// etcd's `IsAdminPermitted`: anyone while auth is disabled; otherwise a user holding the
    /// root role.
    pub fn check_admin(&self, user: Option<&str>) -> Applied {
        if !self.meta.enabled {
            return Ok(());
        }
        let user = user
            .filter(|u| !u.is_empty())
            .ok_or(ApplyError::UserEmpty)?;
        if !self.users.contains_key(user) {
            return Err(ApplyError::UserNotFound);
        }
        if !self.has_root_role(user) {
            return Err(ApplyError::PermissionDenied);
        }
        Ok(())
    }

    /// etcd's `isOpPermitted`: may `user`, authenticated at auth revision `revision`, access
    /// every key of `[key, range_end)` (etcd's range conventions) for `wanted` (`Read` or
    /// `Write`)?
    pub fn check_op(
        &self,
        user: Option<(&str, u64)>,
        key: &[u8],
        range_end: &[u8],
        wanted: PermissionType,
    ) -> Applied {
        if !self.meta.enabled {
            return Ok(());
        }
        let (user, revision) = user.ok_or(ApplyError::UserEmpty)?;
        if revision == 0 {
            return Err(ApplyError::UserEmpty);
        }
        if revision < self.meta.revision {
            return Err(ApplyError::AuthOldRevision);
        }
        let record = self.users.get(user).ok_or(ApplyError::PermissionDenied)?;
        if record.roles.iter().any(|r| r == ROOT) {
            return Ok(());
        }
        if self.range_permitted(record, key, range_end, wanted) {
            Ok(())
        } else {
            Err(ApplyError::PermissionDenied)
        }
    }

    /// Whether the union of the user's permissions of the wanted type covers the request.
    fn range_permitted(
        &self,
        user: &UserRecord,
        key: &[u8],
        range_end: &[u8],
        wanted: PermissionType,
    ) -> bool {
        let mut intervals: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        for role in user.roles.iter().filter_map(|name| self.roles.get(name)) {
            for permission in &role.permissions {
                if permission.perm_type.allows(wanted) {
                    intervals.push(as_interval(&permission.key, &permission.range_end));
                }
            }
        }
        let (start, end) = as_interval(key, range_end);
        if matches!(&end, Some(e) if *e <= start) {
            // An empty request range reads or writes nothing; etcd still asks for a
            // permission covering its start.
            return covered(&mut intervals, &start, &Some(successor(&start)));
        }
        covered(&mut intervals, &start, &end)
    }

    /// etcd's `HasRole`: used to let a user read a role it holds.
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }
}

/// A key `k` as the interval `[k, k\0)`; `range_end == [0]` as unbounded.
fn as_interval(key: &[u8], range_end: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    match KeyRange::new(key, range_end) {
        KeyRange::Single(k) => {
            let end = successor(&k);
            (k, Some(end))
        }
        KeyRange::Interval { start, end } => (start, end),
    }
}

/// The smallest key after `key`.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

/// Whether the union of `intervals` covers `[start, end)` (`None`: unbounded).
fn covered(
    intervals: &mut [(Vec<u8>, Option<Vec<u8>>)],
    start: &[u8],
    end: &Option<Vec<u8>>,
) -> bool {
    intervals.sort_by(|a, b| a.0.cmp(&b.0));
    // `reached`: everything in [start, reached) is covered; None once unbounded.
    let mut reached: Option<Vec<u8>> = Some(start.to_vec());
    for (from, to) in intervals.iter() {
        let Some(point) = &reached else { break };
        if from.as_slice() > point.as_slice() {
            break;
        }
        match to {
            None => reached = None,
            Some(to) if to.as_slice() > point.as_slice() => reached = Some(to.clone()),
            Some(_) => {}
        }
    }
    match (&reached, end) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(point), Some(end)) => point.as_slice() >= end.as_slice(),
    }
}

fn check_name(name: &str, empty: ApplyError) -> Applied {
    if name.is_empty() {
        return Err(empty);
    }
    if name.len() > AUTH_NAME_BYTES_MAX as usize {
        return Err(ApplyError::AuthNameTooLong);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(perms: &[(PermissionType, &[u8], &[u8])]) -> AuthState {
        let mut state = AuthState::default();
        let mut changes = AuthChanges::default();
        for command in [
            AuthCommand::UserAdd {
                name: ROOT.into(),
                password_hash: None,
            },
            AuthCommand::UserGrantRole {
                user: ROOT.into(),
                role: ROOT.into(),
            },
            AuthCommand::RoleAdd { name: "r".into() },
            AuthCommand::UserAdd {
                name: "u".into(),
                password_hash: None,
            },
            AuthCommand::UserGrantRole {
                user: "u".into(),
                role: "r".into(),
            },
        ] {
            state.apply(&command, &mut changes).unwrap();
        }
        for (perm_type, key, range_end) in perms {
            let permission = Permission {
                perm_type: *perm_type,
                key: key.to_vec(),
                range_end: range_end.to_vec(),
            };
            let command = AuthCommand::RoleGrantPermission {
                name: "r".into(),
                permission,
            };
            state.apply(&command, &mut changes).unwrap();
        }
        state.apply(&AuthCommand::Enable, &mut changes).unwrap();
        state
    }

    #[test]
    fn ranges_are_covered_by_the_union_of_permissions() {
        use PermissionType::*;
        let state = state_with(&[
            (Read, b"a", b"c"),
            (ReadWrite, b"c", b"e"),
            (Write, b"k", b""),
        ]);
        let rev = state.revision();
        let u = Some(("u", rev));
        assert_eq!(state.check_op(u, b"b", b"", Read), Ok(()));
        assert_eq!(state.check_op(u, b"a", b"e", Read), Ok(()));
        assert_eq!(
            state.check_op(u, b"a", b"e\0", Read),
            Err(ApplyError::PermissionDenied)
        );
        assert_eq!(
            state.check_op(u, b"a", b"d", Write),
            Err(ApplyError::PermissionDenied)
        );
        assert_eq!(state.check_op(u, b"c", b"d", Write), Ok(()));
        assert_eq!(state.check_op(u, b"k", b"", Write), Ok(()));
        assert_eq!(
            state.check_op(u, b"k", b"", Read),
            Err(ApplyError::PermissionDenied)
        );
        assert_eq!(
            state.check_op(u, b"k", b"\0", Write),
            Err(ApplyError::PermissionDenied)
        );
        assert_eq!(
            state.check_op(None, b"b", b"", Read),
            Err(ApplyError::UserEmpty)
        );
        assert_eq!(
            state.check_op(Some(("u", rev - 1)), b"b", b"", Read),
            Err(ApplyError::AuthOldRevision)
        );
        assert_eq!(
            state.check_op(Some((ROOT, rev)), b"zz", b"\0", Write),
            Ok(())
        );
        assert_eq!(
            state.check_admin(Some("u")),
            Err(ApplyError::PermissionDenied)
        );
        assert_eq!(state.check_admin(Some(ROOT)), Ok(()));
        assert_eq!(
            state.check_admin(Some("nobody")),
            Err(ApplyError::UserNotFound)
        );
    }

    #[test]
    fn an_open_ended_permission_covers_everything_after() {
        use PermissionType::*;
        let state = state_with(&[(Read, b"m", b"\0")]);
        let u = Some(("u", state.revision()));
        assert_eq!(state.check_op(u, b"m", b"\0", Read), Ok(()));
        assert_eq!(state.check_op(u, b"zzz", b"", Read), Ok(()));
        assert_eq!(
            state.check_op(u, b"l", b"\0", Read),
            Err(ApplyError::PermissionDenied)
        );
    }

    #[test]
    fn root_rules_follow_etcd() {
        let mut state = AuthState::default();
        let mut changes = AuthChanges::default();
        assert_eq!(
            state.apply(&AuthCommand::Enable, &mut changes),
            Err(ApplyError::RootUserNotExist)
        );
        let add_root = AuthCommand::UserAdd {
            name: ROOT.into(),
            password_hash: None,
        };
        state.apply(&add_root, &mut changes).unwrap();
        assert_eq!(
            state.apply(&AuthCommand::Enable, &mut changes),
            Err(ApplyError::RootRoleNotExist)
        );
        let grant = AuthCommand::UserGrantRole {
            user: ROOT.into(),
            role: ROOT.into(),
        };
        state.apply(&grant, &mut changes).unwrap();
        let before = state.revision();
        state.apply(&grant, &mut changes).unwrap();
        assert_eq!(
            state.revision(),
            before,
            "a repeated grant keeps the revision"
        );
        state.apply(&AuthCommand::Enable, &mut changes).unwrap();
        assert!(state.enabled());
        let delete = AuthCommand::UserDelete { name: ROOT.into() };
        assert_eq!(
            state.apply(&delete, &mut changes),
            Err(ApplyError::InvalidAuthMgmt)
        );
        let revoke = AuthCommand::UserRevokeRole {
            name: ROOT.into(),
            role: ROOT.into(),
        };
        assert_eq!(
            state.apply(&revoke, &mut changes),
            Err(ApplyError::InvalidAuthMgmt)
        );
        let role_delete = AuthCommand::RoleDelete { role: ROOT.into() };
        assert_eq!(
            state.apply(&role_delete, &mut changes),
            Err(ApplyError::InvalidAuthMgmt)
        );
        state.apply(&AuthCommand::Disable, &mut changes).unwrap();
        state.apply(&delete, &mut changes).unwrap();
        assert!(changes.disabled);
        assert_eq!(changes.invalidated_users, vec![ROOT.to_string()]);
    }
}
