//! The auth store in the state machine: applied through commands, kept across a reopen, carried
//! by snapshots (and left empty by a snapshot of a store without auth), enforced on writes while
//! enabled (bare client writes refused, wrapped ones only at the auth revision checked), and
//! never part of HashKV, as in etcd.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use std::path::Path;

use aspen_core::auth::{AuthCommand, Permission, PermissionType, ROOT};
use aspen_core::limits::Limits;
use aspen_core::type_config::alias::{Entry, SnapshotMeta};
use aspen_core::{ApplyError, ApplyResponse, Command, CommandResult, PutRequest, TypeConfig};
use aspen_storage::{StateMachine, StorageBackend, open_storage};
use openraft::EntryPayload;

struct Applier {
    sm: StateMachine,
    next_index: u64,
}

impl Applier {
    fn new(sm: StateMachine, next_index: u64) -> Applier {
        Applier { sm, next_index }
    }

    fn apply(&mut self, command: Command) -> ApplyResponse {
        let entry: Entry = openraft::Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, self.next_index),
            payload: EntryPayload::Normal(command),
        };
        self.next_index += 1;
        let mut responses = self.sm.apply_entries(&[entry]).expect("apply");
        responses.pop().expect("one response")
    }

    fn auth(&mut self, command: AuthCommand) -> Result<CommandResult, ApplyError> {
        self.apply(Command::Auth(command)).result
    }
}

fn put(key: &str) -> Command {
    Command::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    })
}

fn as_user(user: &str, auth_revision: u64, command: Command) -> Command {
    Command::Authorized {
        user: user.to_string(),
        auth_revision,
        command: Box::new(command),
    }
}

fn setup(applier: &mut Applier) {
    for command in [
        AuthCommand::UserAdd {
            name: ROOT.into(),
            password_hash: Some("$2b$04$notarealhashbutstoredasis".into()),
        },
        AuthCommand::UserGrantRole {
            user: ROOT.into(),
            role: ROOT.into(),
        },
        AuthCommand::RoleAdd { name: "app".into() },
        AuthCommand::RoleGrantPermission {
            name: "app".into(),
            permission: Permission {
                perm_type: PermissionType::ReadWrite,
                key: b"app/".to_vec(),
                range_end: b"app0".to_vec(),
            },
        },
        AuthCommand::UserAdd {
            name: "alice".into(),
            password_hash: None,
        },
        AuthCommand::UserGrantRole {
            user: "alice".into(),
            role: "app".into(),
        },
        AuthCommand::Enable,
    ] {
        applier.auth(command).expect("setup");
    }
}

fn redb(dir: &Path, name: &str) -> StorageBackend {
    StorageBackend::Redb {
        dir: dir.join(name),
    }
}

#[tokio::test]
async fn auth_applies_persists_and_travels_in_snapshots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, sm) = open_storage(&redb(dir.path(), "source"), Limits::default()).expect("open");
    let hash_before = sm.reader().hash_kv(0).expect("hash").expect("ok").hash;
    let mut applier = Applier::new(sm.clone(), 1);
    setup(&mut applier);
    let state = sm.auth_state();
    assert!(state.enabled());
    assert_eq!(state.revision(), 7, "every change moved the revision");
    assert_eq!(state.users["alice"].roles, vec!["app".to_string()]);
    // Auth is not key-value content: HashKV ignores it, as etcd's does.
    assert_eq!(
        sm.reader().hash_kv(0).expect("hash").expect("ok").hash,
        hash_before
    );

    // While enabled: a bare write has no user; a wrapped one applies at the checked revision
    // only.
    assert_eq!(
        applier.apply(put("app/1")).result,
        Err(ApplyError::UserEmpty)
    );
    let rev = state.revision();
    assert!(
        applier
            .apply(as_user("alice", rev, put("app/1")))
            .result
            .is_ok()
    );
    assert_eq!(
        applier
            .apply(as_user("alice", rev - 1, put("app/1")))
            .result,
        Err(ApplyError::AuthOldRevision)
    );
    let disable = Command::Auth(AuthCommand::Disable);
    assert_eq!(
        applier.apply(as_user("alice", rev, disable.clone())).result,
        Err(ApplyError::PermissionDenied),
        "administration needs root, checked in apply too"
    );
    // A token is named by its log index; the store moving under a password check refuses it.
    let token = applier.auth(AuthCommand::Authenticate {
        name: "alice".into(),
        token_prefix: "abc".into(),
        checked_revision: rev,
    });
    assert!(
        matches!(token, Ok(CommandResult::Authenticate { token }) if token.starts_with("abc."))
    );
    assert_eq!(
        applier.auth(AuthCommand::Authenticate {
            name: "alice".into(),
            token_prefix: "abc".into(),
            checked_revision: rev - 1,
        }),
        Err(ApplyError::AuthOldRevision)
    );

    // Reopen: the tables hold it all.
    drop(applier);
    drop(sm);
    drop(log);
    let (_log, sm) = open_storage(&redb(dir.path(), "source"), Limits::default()).expect("reopen");
    assert_eq!(*sm.auth_state(), *state);

    // A snapshot carries the auth store to another replica.
    let snapshot = sm.snapshot_written().expect("snapshot");
    let (_log2, target) = open_storage(&StorageBackend::InMemory, Limits::default()).expect("open");
    target
        .install(&snapshot.meta, &snapshot.snapshot)
        .expect("install");
    assert_eq!(*target.auth_state(), *state);

    // A snapshot of a store without auth installs an empty, disabled auth store.
    let (_log3, empty) = open_storage(&StorageBackend::InMemory, Limits::default()).expect("open");
    let mut empty_applier = Applier::new(empty.clone(), 1);
    assert!(empty_applier.apply(put("k")).result.is_ok());
    let plain = empty.snapshot_written().expect("snapshot");
    let meta: SnapshotMeta = plain.meta.clone();
    sm.install(&meta, &plain.snapshot)
        .expect("install over auth");
    assert!(!sm.auth_state().enabled());
    assert!(sm.auth_state().users.is_empty());
    assert!(sm.auth_state().roles.is_empty());
}

/// A state database written before auth existed has neither auth table nor `auth` entry: it
/// opens as it is (the tables are created, empty), with auth disabled and its data intact.
#[test]
fn a_state_database_from_before_auth_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = redb(dir.path(), "old");
    {
        let (log, sm) = open_storage(&backend, Limits::default()).expect("open");
        let mut applier = Applier::new(sm.clone(), 1);
        assert!(applier.apply(put("kept")).result.is_ok());
        drop(applier);
        drop(sm);
        drop(log);
    }
    {
        // Make it what an older Aspen wrote: no auth tables.
        let db = redb::Database::open(dir.path().join("old/state.redb")).expect("redb open");
        let txn = db.begin_write().expect("write");
        assert!(
            txn.delete_table(aspen_storage::schema::AUTH_USERS)
                .expect("delete")
        );
        assert!(
            txn.delete_table(aspen_storage::schema::AUTH_ROLES)
                .expect("delete")
        );
        txn.commit().expect("commit");
    }
    let (_log, sm) = open_storage(&backend, Limits::default()).expect("reopen");
    assert_eq!(*sm.auth_state(), aspen_core::auth::AuthState::default());
    let read = sm
        .reader()
        .range(&aspen_core::RangeRequest {
            key: b"kept".to_vec(),
            ..Default::default()
        })
        .expect("read")
        .expect("ok");
    assert_eq!(read.0.kvs.len(), 1);
    // And auth works on it from then on.
    let mut applier = Applier::new(sm.clone(), 2);
    applier
        .auth(AuthCommand::RoleAdd { name: "r".into() })
        .expect("role add");
    assert!(sm.auth_state().roles.contains_key("r"));
}
