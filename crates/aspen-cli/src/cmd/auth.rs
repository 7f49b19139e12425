//! auth, user and role commands, printed as etcdctl prints them.

use aspen_proto::authpb;
use aspen_proto::etcdserverpb as pb;
use serde_json::json;

use super::Ctx;
use crate::cli::{AuthCommand, PermType, RoleCommand, UserCommand};
use crate::connect::Conn;
use crate::error::CliError;
use crate::output::{self, WriteOut, print_json, text};
use crate::request::key_range;

/// etcd's error for enabling auth when the root user lacks the root role; etcdctl then adds
/// the role and grants it, and tries again.
const ROOT_ROLE_MISSING: &str = "etcdserver: root user does not have root role";

pub async fn auth(ctx: &Ctx, command: AuthCommand) -> Result<(), CliError> {
    let conn = ctx.conn().await?;
    match command {
        AuthCommand::Enable => {
            let mut granted_root = false;
            loop {
                let result = conn
                    .call(
                        "auth enable",
                        conn.auth()
                            .auth_enable(conn.request(pb::AuthEnableRequest {})),
                    )
                    .await;
                match result {
                    Ok(_) => break,
                    Err(error) if !granted_root && error.message.ends_with(ROOT_ROLE_MISSING) => {
                        add_root_role(&conn).await?;
                        granted_root = true;
                    }
                    Err(error) => return Err(error),
                }
            }
            done(ctx, "Authentication Enabled");
        }
        AuthCommand::Disable => {
            conn.call(
                "auth disable",
                conn.auth()
                    .auth_disable(conn.request(pb::AuthDisableRequest {})),
            )
            .await?;
            done(ctx, "Authentication Disabled");
        }
        AuthCommand::Status => {
            let response = conn
                .call(
                    "auth status",
                    conn.auth()
                        .auth_status(conn.request(pb::AuthStatusRequest {})),
                )
                .await?;
            match ctx.write_out {
                WriteOut::Json => print_json(&json!({
                    "header": output::header_json(response.header.as_ref()),
                    "enabled": response.enabled,
                    "authRevision": response.auth_revision,
                })),
                _ => println!(
                    "Authentication Status: {}\nAuthRevision: {}",
                    response.enabled, response.auth_revision
                ),
            }
        }
    }
    Ok(())
}

/// etcdctl's recovery when enabling: the root role, granted to root (an existing role is fine).
async fn add_root_role(conn: &Conn) -> Result<(), CliError> {
    let added = conn
        .call(
            "role add root",
            conn.auth().role_add(conn.request(pb::AuthRoleAddRequest {
                name: "root".into(),
            })),
        )
        .await;
    if let Err(error) = added
        && !error
            .message
            .ends_with("etcdserver: role name already exists")
    {
        return Err(error);
    }
    conn.call(
        "user grant-role root root",
        conn.auth()
            .user_grant_role(conn.request(pb::AuthUserGrantRoleRequest {
                user: "root".into(),
                role: "root".into(),
            })),
    )
    .await?;
    Ok(())
}

/// Prints a change's confirmation (simple) or `{}` with the outcome (json).
fn done(ctx: &Ctx, message: &str) {
    match ctx.write_out {
        WriteOut::Json => print_json(&json!({ "result": message })),
        _ => println!("{message}"),
    }
}

/// The first line of stdin, for a password not given on the command line.
fn password_from_stdin(what: &str) -> Result<String, CliError> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| CliError::usage(format!("{what}: reading the password from stdin: {e}")))?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err(CliError::usage(format!("{what}: empty password")));
    }
    Ok(password)
}

pub async fn user(ctx: &Ctx, command: UserCommand) -> Result<(), CliError> {
    let conn = ctx.conn().await?;
    let auth = conn.auth();
    match command {
        UserCommand::Add {
            user,
            new_user_password,
            no_password,
        } => {
            let (name, password) = match (user.split_once(':'), new_user_password) {
                (Some(_), Some(_)) => {
                    return Err(CliError::usage(
                        "user add: give the password once: NAME:PASSWORD or --new-user-password",
                    ));
                }
                (Some((name, password)), None) => (name.to_string(), password.to_string()),
                (None, Some(password)) => (user.clone(), password),
                (None, None) if no_password => (user.clone(), String::new()),
                (None, None) => (user.clone(), password_from_stdin("user add")?),
            };
            let request = pb::AuthUserAddRequest {
                name: name.clone(),
                password,
                options: Some(authpb::UserAddOptions { no_password }),
                hashed_password: String::new(),
            };
            conn.call("user add", auth.clone().user_add(conn.request(request)))
                .await?;
            done(ctx, &format!("User {name} created"));
        }
        UserCommand::Delete { user } => {
            let request = pb::AuthUserDeleteRequest { name: user.clone() };
            conn.call(
                "user delete",
                auth.clone().user_delete(conn.request(request)),
            )
            .await?;
            done(ctx, &format!("User {user} deleted"));
        }
        UserCommand::Get { user, detail } => {
            let request = pb::AuthUserGetRequest { name: user.clone() };
            let response = conn
                .call("user get", auth.clone().user_get(conn.request(request)))
                .await?;
            if ctx.write_out == WriteOut::Json {
                print_json(&json!({
                    "header": output::header_json(response.header.as_ref()),
                    "roles": response.roles,
                }));
                return Ok(());
            }
            println!("User: {user}");
            if detail {
                for role in &response.roles {
                    let request = pb::AuthRoleGetRequest { role: role.clone() };
                    let got = conn
                        .call("role get", auth.clone().role_get(conn.request(request)))
                        .await?;
                    print_role(role, &got.perm);
                }
            } else {
                let roles: String = response.roles.iter().map(|r| format!(" {r}")).collect();
                println!("Roles:{roles}");
            }
        }
        UserCommand::List => {
            let response = conn
                .call(
                    "user list",
                    auth.clone()
                        .user_list(conn.request(pb::AuthUserListRequest {})),
                )
                .await?;
            print_names(ctx, response.header.as_ref(), "users", &response.users);
        }
        UserCommand::Passwd { user, new_password } => {
            let password = match new_password {
                Some(password) => password,
                None => password_from_stdin("user passwd")?,
            };
            let request = pb::AuthUserChangePasswordRequest {
                name: user,
                password,
                hashed_password: String::new(),
            };
            conn.call(
                "user passwd",
                auth.clone().user_change_password(conn.request(request)),
            )
            .await?;
            done(ctx, "Password updated");
        }
        UserCommand::GrantRole { user, role } => {
            let request = pb::AuthUserGrantRoleRequest {
                user: user.clone(),
                role: role.clone(),
            };
            conn.call(
                "user grant-role",
                auth.clone().user_grant_role(conn.request(request)),
            )
            .await?;
            done(ctx, &format!("Role {role} is granted to user {user}"));
        }
        UserCommand::RevokeRole { user, role } => {
            let request = pb::AuthUserRevokeRoleRequest {
                name: user.clone(),
                role: role.clone(),
            };
            conn.call(
                "user revoke-role",
                auth.clone().user_revoke_role(conn.request(request)),
            )
            .await?;
            done(ctx, &format!("Role {role} is revoked from user {user}"));
        }
    }
    Ok(())
}

pub async fn role(ctx: &Ctx, command: RoleCommand) -> Result<(), CliError> {
    let conn = ctx.conn().await?;
    let auth = conn.auth();
    match command {
        RoleCommand::Add { role } => {
            let request = pb::AuthRoleAddRequest { name: role.clone() };
            conn.call("role add", auth.clone().role_add(conn.request(request)))
                .await?;
            done(ctx, &format!("Role {role} created"));
        }
        RoleCommand::Delete { role } => {
            let request = pb::AuthRoleDeleteRequest { role: role.clone() };
            conn.call(
                "role delete",
                auth.clone().role_delete(conn.request(request)),
            )
            .await?;
            done(ctx, &format!("Role {role} deleted"));
        }
        RoleCommand::Get { role } => {
            let request = pb::AuthRoleGetRequest { role: role.clone() };
            let response = conn
                .call("role get", auth.clone().role_get(conn.request(request)))
                .await?;
            match ctx.write_out {
                WriteOut::Json => print_json(&json!({
                    "header": output::header_json(response.header.as_ref()),
                    "perm": response.perm.iter().map(|p| json!({
                        "permType": p.perm_type,
                        "key": output::base64(&p.key),
                        "range_end": output::base64(&p.range_end),
                    })).collect::<Vec<_>>(),
                })),
                _ => print_role(&role, &response.perm),
            }
        }
        RoleCommand::List => {
            let response = conn
                .call(
                    "role list",
                    auth.clone()
                        .role_list(conn.request(pb::AuthRoleListRequest {})),
                )
                .await?;
            print_names(ctx, response.header.as_ref(), "roles", &response.roles);
        }
        RoleCommand::GrantPermission {
            role,
            perm_type,
            key,
            range_end,
            prefix,
            from_key,
        } => {
            let range = key_range(&key, range_end.as_deref(), prefix, from_key)?;
            let perm_type = match perm_type {
                PermType::Read => authpb::permission::Type::Read,
                PermType::Write => authpb::permission::Type::Write,
                PermType::Readwrite => authpb::permission::Type::Readwrite,
            };
            let request = pb::AuthRoleGrantPermissionRequest {
                name: role.clone(),
                perm: Some(authpb::Permission {
                    perm_type: perm_type as i32,
                    key: range.key,
                    range_end: range.range_end,
                }),
            };
            conn.call(
                "role grant-permission",
                auth.clone().role_grant_permission(conn.request(request)),
            )
            .await?;
            done(ctx, &format!("Role {role} updated"));
        }
        RoleCommand::RevokePermission {
            role,
            key,
            range_end,
            prefix,
            from_key,
        } => {
            let range = key_range(&key, range_end.as_deref(), prefix, from_key)?;
            let request = pb::AuthRoleRevokePermissionRequest {
                role: role.clone(),
                key: range.key.clone(),
                range_end: range.range_end.clone(),
            };
            conn.call(
                "role revoke-permission",
                auth.clone().role_revoke_permission(conn.request(request)),
            )
            .await?;
            let (key, end) = (text(&range.key), text(&range.range_end));
            let message = if end.is_empty() {
                format!("Permission of key {key} is revoked from role {role}")
            } else if range.range_end != [0] {
                format!("Permission of range [{key}, {end}) is revoked from role {role}")
            } else {
                format!("Permission of range [{key}, <open ended> is revoked from role {role}")
            };
            done(ctx, &message);
        }
    }
    Ok(())
}

/// etcdctl's role listing: keys, ranges and prefixes under "KV Read:" and "KV Write:".
fn print_role(role: &str, permissions: &[authpb::Permission]) {
    println!("Role {role}");
    for (title, wanted) in [
        ("KV Read:", authpb::permission::Type::Read),
        ("KV Write:", authpb::permission::Type::Write),
    ] {
        println!("{title}");
        for permission in permissions {
            let allows = permission.perm_type == wanted as i32
                || permission.perm_type == authpb::permission::Type::Readwrite as i32;
            if allows {
                println!("\t{}", permission_text(permission));
            }
        }
    }
}

fn permission_text(permission: &authpb::Permission) -> String {
    let key = text(&permission.key);
    if permission.range_end.is_empty() {
        return key;
    }
    let mut line = if permission.range_end == [0] {
        format!("[{key}, <open ended>")
    } else {
        format!("[{key}, {})", text(&permission.range_end))
    };
    if crate::request::prefix_end(&permission.key) == permission.range_end {
        line.push_str(&format!(" (prefix {key})"));
    }
    line
}

/// `user list` and `role list`: the names, one a line, or `{"header", FIELD: [names]}`.
fn print_names(ctx: &Ctx, header: Option<&pb::ResponseHeader>, field: &str, names: &[String]) {
    match ctx.write_out {
        WriteOut::Json => print_json(&json!({
            "header": output::header_json(header),
            field: names,
        })),
        _ => names.iter().for_each(|name| println!("{name}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permission(key: &[u8], range_end: &[u8]) -> authpb::Permission {
        authpb::Permission {
            perm_type: authpb::permission::Type::Read as i32,
            key: key.to_vec(),
            range_end: range_end.to_vec(),
        }
    }

    #[test]
    fn permissions_print_as_etcdctl_prints_them() {
        assert_eq!(permission_text(&permission(b"foo", b"")), "foo");
        assert_eq!(permission_text(&permission(b"k1", b"k5")), "[k1, k5)");
        assert_eq!(
            permission_text(&permission(b"p/", b"p0")),
            "[p/, p0) (prefix p/)"
        );
        assert_eq!(
            permission_text(&permission(b"m", b"\0")),
            "[m, <open ended>"
        );
    }
}
