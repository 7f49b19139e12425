//! etcd's Auth service, with etcd 3.4's semantics and messages: enabling and disabling auth,
//! Authenticate (simple tokens, or JWTs with `--auth-token jwt,...`), and managing users and
//! roles. Changes go through Raft as `Command::Auth`; reads (UserGet, RoleGet, the lists,
//! AuthStatus) are linearizable reads of the replicated store. Who may do what is etcd's: while
//! auth is enabled, everything here but Authenticate and AuthStatus needs a root user, except
//! that a user may read itself and the roles it holds.

use aspen_core::auth::{AuthCommand, Permission, PermissionType};
use aspen_core::{ApplyError, ApplyResponse, Command, CommandResult};
use aspen_node::Node;
use aspen_proto::authpb;
use aspen_proto::etcdserverpb::{self as pb, auth_server::Auth};
use tonic::{Request, Response, Status};

use crate::access::{Access, Caller, fill_random};
use crate::header::header;
use crate::status::{self, from_apply, from_node, invalid};

/// Authenticate retries this many times when the auth store moves between the password check
/// and the token's assignment (etcd retries without bound; a store changing that fast is a
/// client problem).
const AUTHENTICATE_ATTEMPTS_MAX: u32 = 8;
/// Letters in a token's random part (etcd's simple token prefix length).
const TOKEN_PREFIX_LETTERS: usize = 16;

#[derive(Clone)]
pub struct AuthService {
    node: Node,
    access: Access,
}

impl AuthService {
    pub fn new(node: Node, access: Access) -> AuthService {
        AuthService { node, access }
    }

    /// Proposes `command` for `caller`, who must be a root user while auth is enabled.
    async fn propose(&self, caller: &Caller, command: AuthCommand) -> Result<u64, Status> {
        caller.check_admin()?;
        let command = caller.authorize(Command::Auth(command));
        let ApplyResponse { revision, result } =
            self.node.write(command).await.map_err(from_node)?;
        result.map_err(|e| from_apply(&e))?;
        Ok(revision)
    }

    /// A change by `request`'s caller; returns the header for the response.
    async fn change<T>(
        &self,
        request: &Request<T>,
        command: AuthCommand,
    ) -> Result<Option<pb::ResponseHeader>, Status> {
        let caller = self.access.caller(request)?;
        let revision = self.propose(&caller, command).await?;
        Ok(header(&self.node, revision))
    }

    /// Waits until this member has applied everything committed when the read arrived, then
    /// resolves the caller against that state.
    async fn read<T>(&self, request: &Request<T>) -> Result<(Caller, u64), Status> {
        self.node.read_barrier().await.map_err(from_node)?;
        let caller = self.access.caller(request)?;
        let revision = self.node.applied_state().map_err(from_node)?.revision;
        Ok((caller, revision))
    }

    async fn hash(&self, password: String, hashed: String) -> Result<Option<String>, Status> {
        if !hashed.is_empty() {
            // etcd 3.5's `hashedPassword`: the client hashed it.
            return Ok(Some(hashed));
        }
        Ok(Some(self.access.hash_password(password).await?))
    }

    /// Checks the password against the store at its current revision and proposes the token;
    /// the apply refuses it if the store moved since, and then the check runs again.
    async fn authenticate_inner(&self, name: String, password: String) -> Result<String, Status> {
        self.node.read_barrier().await.map_err(from_node)?;
        for _ in 0..AUTHENTICATE_ATTEMPTS_MAX {
            let auth = self.access.auth_state();
            if !auth.enabled() {
                return Err(from_apply(&ApplyError::AuthNotEnabled));
            }
            let user = auth.users.get(&name);
            if user.is_some_and(|u| u.password_hash.is_none()) {
                // As etcd 3.4 (CheckPassword): a user without a password cannot authenticate
                // with one, and is told so.
                return Err(status::no_password_user());
            }
            let hash = user.and_then(|u| u.password_hash.clone());
            // The same bcrypt work whether or not the user exists: a failure reveals nothing.
            if !self.access.verify_password(password.clone(), hash).await? {
                tracing::info!(user = %name, "authentication failed");
                return Err(from_apply(&ApplyError::AuthFailed));
            }
            if let Some(keys) = self.access.jwt() {
                // etcd's JWT: signed here, at the revision the password was checked at; no
                // Raft round. Should the store move on meanwhile, the token is refused as old
                // and the client authenticates again.
                return keys
                    .sign(&name, auth.revision(), crate::access::unix_now())
                    .map_err(|e| status::token_signing(e.message()));
            }
            let command = Command::Auth(AuthCommand::Authenticate {
                name: name.clone(),
                token_prefix: token_prefix(),
                checked_revision: auth.revision(),
            });
            let ApplyResponse { result, .. } = self.node.write(command).await.map_err(from_node)?;
            match result {
                Ok(CommandResult::Authenticate { token }) => {
                    // The leader applied the assignment; wait until this member has too, so
                    // the token works here at once (and the store it is checked against is
                    // the one it was issued at). The token is valid either way.
                    if let Err(error) = self.node.read_barrier().await {
                        tracing::info!(%error, "read barrier after authenticate");
                    }
                    return Ok(token);
                }
                Ok(other) => {
                    return Err(Status::internal(format!(
                        "unexpected apply result {other:?}"
                    )));
                }
                Err(ApplyError::AuthOldRevision) => {
                    tracing::info!("auth store moved during a password check; checking again");
                    // Wait until this member has the newer store before checking again.
                    self.node.read_barrier().await.map_err(from_node)?;
                }
                Err(e) => return Err(from_apply(&e)),
            }
        }
        Err(from_apply(&ApplyError::AuthOldRevision))
    }
}

/// A token's random part: letters, as etcd's simple tokens.
fn token_prefix() -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut bytes = [0u8; TOKEN_PREFIX_LETTERS];
    fill_random(&mut bytes);
    // 256 = 4 x 52 + 48: a slight bias towards the first 48 letters, harmless for an opaque
    // token whose secrecy rests on its 16 x 5.7 bits.
    bytes
        .iter()
        .map(|b| LETTERS[*b as usize % LETTERS.len()] as char)
        .collect()
}

fn permission_from_pb(perm: Option<authpb::Permission>) -> Result<Permission, Status> {
    let perm = perm.ok_or_else(|| invalid(status::PERMISSION_MISSING))?;
    let perm_type = match authpb::permission::Type::try_from(perm.perm_type) {
        Ok(authpb::permission::Type::Read) => PermissionType::Read,
        Ok(authpb::permission::Type::Write) => PermissionType::Write,
        Ok(authpb::permission::Type::Readwrite) => PermissionType::ReadWrite,
        Err(_) => return Err(invalid(status::PERMISSION_TYPE_UNKNOWN)),
    };
    Ok(Permission {
        perm_type,
        key: perm.key,
        range_end: perm.range_end,
    })
}

fn permission_to_pb(perm: &Permission) -> authpb::Permission {
    let perm_type = match perm.perm_type {
        PermissionType::Read => authpb::permission::Type::Read,
        PermissionType::Write => authpb::permission::Type::Write,
        PermissionType::ReadWrite => authpb::permission::Type::Readwrite,
    };
    authpb::Permission {
        perm_type: perm_type as i32,
        key: perm.key.clone(),
        range_end: perm.range_end.clone(),
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        let header = self.change(&request, AuthCommand::Enable).await?;
        Ok(Response::new(pb::AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        request: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        let header = self.change(&request, AuthCommand::Disable).await?;
        Ok(Response::new(pb::AuthDisableResponse { header }))
    }

    async fn auth_status(
        &self,
        request: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        let (caller, revision) = self.read(&request).await?;
        Ok(Response::new(pb::AuthStatusResponse {
            header: header(&self.node, revision),
            enabled: caller.auth().enabled(),
            auth_revision: caller.auth().revision(),
        }))
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let request = request.into_inner();
        let token = self
            .authenticate_inner(request.name, request.password)
            .await?;
        let revision = self.node.applied_state().map_err(from_node)?.revision;
        Ok(Response::new(pb::AuthenticateResponse {
            header: header(&self.node, revision),
            token,
        }))
    }

    async fn user_add(
        &self,
        request: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        let caller = self.access.caller(&request)?;
        // Refused before the (slow) hash when the caller may not add users anyway.
        caller.check_admin()?;
        let request = request.into_inner();
        let no_password = request.options.is_some_and(|o| o.no_password);
        let password_hash = if no_password {
            None
        } else {
            self.hash(request.password, request.hashed_password).await?
        };
        let command = AuthCommand::UserAdd {
            name: request.name,
            password_hash,
        };
        let revision = self.propose(&caller, command).await?;
        Ok(Response::new(pb::AuthUserAddResponse {
            header: header(&self.node, revision),
        }))
    }

    async fn user_get(
        &self,
        request: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let (caller, revision) = self.read(&request).await?;
        let name = request.into_inner().name;
        if let Err(e) = caller.admin()
            && caller.user() != Some(name.as_str())
        {
            return Err(from_apply(&e));
        }
        let user = caller
            .auth()
            .users
            .get(&name)
            .ok_or_else(|| from_apply(&ApplyError::UserNotFound))?;
        Ok(Response::new(pb::AuthUserGetResponse {
            header: header(&self.node, revision),
            roles: user.roles.clone(),
        }))
    }

    async fn user_list(
        &self,
        request: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        let (caller, revision) = self.read(&request).await?;
        caller.check_admin()?;
        Ok(Response::new(pb::AuthUserListResponse {
            header: header(&self.node, revision),
            users: caller.auth().users.keys().cloned().collect(),
        }))
    }

    async fn user_delete(
        &self,
        request: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        let name = request.get_ref().name.clone();
        let header = self
            .change(&request, AuthCommand::UserDelete { name })
            .await?;
        Ok(Response::new(pb::AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        request: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        let caller = self.access.caller(&request)?;
        caller.check_admin()?;
        let request = request.into_inner();
        let password_hash = self.hash(request.password, request.hashed_password).await?;
        let command = AuthCommand::UserChangePassword {
            name: request.name,
            password_hash,
        };
        let revision = self.propose(&caller, command).await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse {
            header: header(&self.node, revision),
        }))
    }

    async fn user_grant_role(
        &self,
        request: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let pb::AuthUserGrantRoleRequest { user, role } = request.get_ref().clone();
        let header = self
            .change(&request, AuthCommand::UserGrantRole { user, role })
            .await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let pb::AuthUserRevokeRoleRequest { name, role } = request.get_ref().clone();
        let header = self
            .change(&request, AuthCommand::UserRevokeRole { name, role })
            .await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        request: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        let name = request.get_ref().name.clone();
        let header = self.change(&request, AuthCommand::RoleAdd { name }).await?;
        Ok(Response::new(pb::AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        request: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let (caller, revision) = self.read(&request).await?;
        let role = request.into_inner().role;
        // etcd: a user may read a role it holds; anything else needs root.
        let holds = caller
            .user()
            .is_some_and(|user| caller.auth().has_role(user, &role));
        if !holds {
            caller.check_admin()?;
        }
        let record = caller
            .auth()
            .roles
            .get(&role)
            .ok_or_else(|| from_apply(&ApplyError::RoleNotFound))?;
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: header(&self.node, revision),
            perm: record.permissions.iter().map(permission_to_pb).collect(),
        }))
    }

    async fn role_list(
        &self,
        request: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        let (caller, revision) = self.read(&request).await?;
        caller.check_admin()?;
        Ok(Response::new(pb::AuthRoleListResponse {
            header: header(&self.node, revision),
            roles: caller.auth().roles.keys().cloned().collect(),
        }))
    }

    async fn role_delete(
        &self,
        request: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        let role = request.get_ref().role.clone();
        let header = self
            .change(&request, AuthCommand::RoleDelete { role })
            .await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let pb::AuthRoleGrantPermissionRequest { name, perm } = request.get_ref().clone();
        let permission = permission_from_pb(perm)?;
        let header = self
            .change(
                &request,
                AuthCommand::RoleGrantPermission { name, permission },
            )
            .await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse {
            header,
        }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let pb::AuthRoleRevokePermissionRequest {
            role,
            key,
            range_end,
        } = request.get_ref().clone();
        let command = AuthCommand::RoleRevokePermission {
            role,
            key,
            range_end,
        };
        let header = self.change(&request, command).await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse {
            header,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_convert_both_ways_and_bad_ones_are_refused() {
        for perm_type in [
            authpb::permission::Type::Read,
            authpb::permission::Type::Write,
            authpb::permission::Type::Readwrite,
        ] {
            let wire = authpb::Permission {
                perm_type: perm_type as i32,
                key: b"a".to_vec(),
                range_end: b"b".to_vec(),
            };
            let permission = permission_from_pb(Some(wire.clone())).expect("valid");
            assert_eq!(permission_to_pb(&permission), wire);
        }
        let missing = permission_from_pb(None).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::InvalidArgument);
        let unknown = authpb::Permission {
            perm_type: 7,
            ..Default::default()
        };
        let unknown = permission_from_pb(Some(unknown)).unwrap_err();
        assert_eq!(
            (unknown.code(), unknown.message()),
            (
                tonic::Code::InvalidArgument,
                status::PERMISSION_TYPE_UNKNOWN
            )
        );
    }

    #[test]
    fn token_prefixes_are_letters_and_differ() {
        let a = token_prefix();
        let b = token_prefix();
        assert_eq!(a.len(), TOKEN_PREFIX_LETTERS);
        assert!(a.chars().all(|c| c.is_ascii_alphabetic()));
        assert_ne!(a, b);
    }
}
