//! etcd's auth store through `restore_saved_snapshot`: a file's users (bcrypt hashes, roles,
//! no-password users), roles (permissions in etcd's order), flag and auth revision land in the
//! state machine as they were; a file whose auth store Aspen cannot hold (beyond its auth
//! limits) is refused before anything is written. Real etcd files and etcdctl are tested in
//! aspen-server's `etcd_snapshot` test.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use std::io::Cursor;
use std::path::Path;

use aspen_core::auth::{AuthMeta, Permission, PermissionType, RoleRecord, UserRecord};
use aspen_core::limits::{AUTH_ROLES_PER_USER_MAX, Limits};
use aspen_etcd_snapshot::bolt_write::BoltWriter;
use aspen_etcd_snapshot::layout::{
    AUTH_ENABLED, AUTH_REVISION, BUCKET_AUTH, BUCKET_AUTH_ROLES, BUCKET_AUTH_USERS, BUCKETS,
};
use aspen_storage::{StorageBackend, open_storage};

const HASH: &str = "$2a$10$XtFCzxYZvyC2XIkZsT2BaeBsGdIkzGaz/8B8IhW5VAFf1ggJQinKW";

/// An etcd-layout file with no keys and the given auth store.
fn etcd_file(
    path: &Path,
    users: &[aspen_etcd_snapshot::User],
    roles: &[aspen_etcd_snapshot::Role],
) {
    let mut writer = BoltWriter::new(Cursor::new(Vec::new())).expect("writer");
    let mut buckets = Vec::new();
    let mut encoded = Vec::new();
    for name in BUCKETS {
        let mut tree = writer.begin_bucket();
        match name {
            BUCKET_AUTH => {
                writer.put(&mut tree, AUTH_ENABLED, &[1]).expect("put");
                writer
                    .put(&mut tree, AUTH_REVISION, &9u64.to_be_bytes())
                    .expect("put");
            }
            BUCKET_AUTH_USERS => {
                for user in users {
                    user.encode_into(&mut encoded);
                    writer.put(&mut tree, &user.name, &encoded).expect("put");
                }
            }
            BUCKET_AUTH_ROLES => {
                for role in roles {
                    role.encode_into(&mut encoded);
                    writer.put(&mut tree, &role.name, &encoded).expect("put");
                }
            }
            _ => {}
        }
        buckets.push((name, writer.finish_bucket(tree).expect("bucket")));
    }
    let (cursor, _) = writer.finish(&buckets).expect("finish");
    std::fs::write(path, cursor.into_inner()).expect("write");
}

fn user(name: &str, password: &str, roles: &[&str]) -> aspen_etcd_snapshot::User {
    aspen_etcd_snapshot::User {
        name: name.as_bytes().to_vec(),
        password: password.as_bytes().to_vec(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        no_password: password.is_empty(),
    }
}

async fn restore(file: &Path, dir: &Path) -> aspen_storage::error::Result<StorageBackend> {
    let backend = StorageBackend::Redb {
        dir: dir.join("member"),
    };
    let node = aspen_core::NodeInfo {
        name: "n1".into(),
        peer_urls: vec!["http://127.0.0.1:1".into()],
        client_urls: Vec::new(),
    };
    aspen_storage::restore::restore_saved_snapshot(
        file,
        &backend,
        Limits::default(),
        [(1u64, node)].into_iter().collect(),
    )
    .await?;
    Ok(backend)
}

#[tokio::test]
async fn an_etcd_auth_store_restores_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("auth.db");
    let r1 = aspen_etcd_snapshot::Role {
        name: b"r1".to_vec(),
        permissions: vec![
            aspen_etcd_snapshot::Permission {
                perm_type: aspen_etcd_snapshot::PermissionType::Write,
                key: b"k2".to_vec(),
                range_end: b"k5".to_vec(),
            },
            aspen_etcd_snapshot::Permission {
                perm_type: aspen_etcd_snapshot::PermissionType::Read,
                key: b"key1".to_vec(),
                range_end: Vec::new(),
            },
            aspen_etcd_snapshot::Permission {
                perm_type: aspen_etcd_snapshot::PermissionType::ReadWrite,
                key: b"pre/".to_vec(),
                range_end: b"pre0".to_vec(),
            },
        ],
    };
    let root = aspen_etcd_snapshot::Role {
        name: b"root".to_vec(),
        permissions: Vec::new(),
    };
    etcd_file(
        &file,
        &[
            user("alice", HASH, &["r1"]),
            user("nopw", "", &["r1"]),
            user("root", HASH, &["root"]),
        ],
        &[r1, root],
    );
    let backend = restore(&file, dir.path()).await.expect("restore");
    let (_log, state_machine) = open_storage(&backend, Limits::default()).expect("open");
    let auth = state_machine.auth_state();
    assert_eq!(
        auth.meta,
        AuthMeta {
            enabled: true,
            revision: 9
        }
    );
    assert_eq!(
        auth.users.get("alice"),
        Some(&UserRecord {
            password_hash: Some(HASH.into()),
            roles: vec!["r1".into()],
        })
    );
    assert_eq!(
        auth.users.get("nopw"),
        Some(&UserRecord {
            password_hash: None,
            roles: vec!["r1".into()],
        })
    );
    assert_eq!(auth.users.len(), 3);
    assert_eq!(
        auth.roles.get("r1"),
        Some(&RoleRecord {
            permissions: vec![
                Permission {
                    perm_type: PermissionType::Write,
                    key: b"k2".to_vec(),
                    range_end: b"k5".to_vec(),
                },
                Permission {
                    perm_type: PermissionType::Read,
                    key: b"key1".to_vec(),
                    range_end: Vec::new(),
                },
                Permission {
                    perm_type: PermissionType::ReadWrite,
                    key: b"pre/".to_vec(),
                    range_end: b"pre0".to_vec(),
                },
            ],
        })
    );
    assert_eq!(auth.roles.get("root"), Some(&RoleRecord::default()));
}

#[tokio::test]
async fn an_auth_store_beyond_aspens_limits_is_refused_with_nothing_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("big.db");
    let roles: Vec<String> = (0..=AUTH_ROLES_PER_USER_MAX)
        .map(|i| format!("r{i:04}"))
        .collect();
    let role_refs: Vec<&str> = roles.iter().map(String::as_str).collect();
    etcd_file(&file, &[user("big", HASH, &role_refs)], &[]);
    let error = restore(&file, dir.path())
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains(&format!(
            "etcd user \"big\": {} roles; Aspen allows {AUTH_ROLES_PER_USER_MAX} per user",
            AUTH_ROLES_PER_USER_MAX + 1
        )),
        "{error}"
    );
    // Refused before the import's transaction: the state machine is as new.
    let backend = StorageBackend::Redb {
        dir: dir.path().join("member"),
    };
    let (_log, state_machine) = open_storage(&backend, Limits::default()).expect("open");
    let applied = state_machine.reader().applied_state().expect("state");
    assert!(applied.last_applied.is_none());
    assert!(state_machine.auth_state().users.is_empty());
}
