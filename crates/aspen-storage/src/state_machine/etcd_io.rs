//! etcd 3.4's snapshot format (a bbolt file, `aspen-etcd-snapshot`) in and out of the state
//! machine: the user-facing backup. Raft snapshots between members keep Aspen's own format.
//!
//! - Import: every version of etcd's `key` bucket (history and tombstones as etcd kept them)
//!   goes to `kv_revs` (and the key index) at its revision, leases to `leases`, and each key's newest
//!   live version's lease to `lease_keys`; the store and compaction revisions come from the
//!   versions and etcd's `meta` bucket; the auth store (`auth`, `authUsers`, `authRoles`: the
//!   flag, the auth revision, users with their bcrypt hashes and roles, roles with their
//!   permissions) to `sm_meta` `auth`, `auth_users` and `auth_roles`, checked against Aspen's
//!   auth limits before the transaction opens. One write transaction, streaming: memory does
//!   not grow with the file.
//! - Export: one read transaction, streamed into bbolt pages with etcd's buckets: every
//!   version compaction keeps (the same rule as HashKV and Aspen's snapshots), leases, and the
//!   meta entries etcd reads back (consistent index, compaction revisions), and the auth
//!   store as etcd 3.4 keeps it (bounded by Aspen's auth limits, and already in memory).

use aspen_core::auth::{AuthMeta, Permission, PermissionType, RoleRecord, UserRecord};
use aspen_core::limits::{
    AUTH_NAME_BYTES_MAX, AUTH_PERMISSIONS_PER_ROLE_MAX, AUTH_ROLES_MAX, AUTH_ROLES_PER_USER_MAX,
    AUTH_USERS_MAX,
};
use aspen_core::type_config::alias::SnapshotMeta;
use aspen_etcd_snapshot::bolt_write::{BoltWriter, BucketValue};
use aspen_etcd_snapshot::layout::{
    AUTH_ENABLED, AUTH_REVISION, BUCKET_AUTH, BUCKET_AUTH_ROLES, BUCKET_AUTH_USERS, BUCKET_KEY,
    BUCKET_LEASE, BUCKET_META, BUCKETS, META_CONSISTENT_INDEX, META_FINISHED_COMPACT,
    META_SCHEDULED_COMPACT,
};
use aspen_etcd_snapshot::{EtcdSnapshot, KeyValue, Lease, Revision, Summary};
use redb::ReadableTable;
use redb::Table;

use super::index_build::IndexRun;
use super::records::{AppliedState, LeaseRecord, StoredVersion};
use super::snapshot_io::for_each_kept_version;
use super::write_applied;
use crate::backend::Store;
use crate::error::{Result, StorageError, decode};
use crate::schema::{self, SM_META};
use crate::snapshot::SnapshotExport;

impl From<aspen_etcd_snapshot::Error> for StorageError {
    fn from(error: aspen_etcd_snapshot::Error) -> Self {
        StorageError::Snapshot(error.to_string())
    }
}

/// The state machine's version of an etcd one.
fn stored_version(version: aspen_etcd_snapshot::file::Version) -> Result<(Vec<u8>, StoredVersion)> {
    let sub_revision = u32::try_from(version.revision.sub).map_err(|_| {
        StorageError::Snapshot(format!(
            "revision {}.{}: Aspen keeps sub-revisions below 2^32",
            version.revision.main, version.revision.sub
        ))
    })?;
    let kv = version.kv;
    let stored = if version.tombstone {
        StoredVersion::tombstone(version.revision.main, sub_revision)
    } else {
        StoredVersion {
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            sub_revision,
            version: kv.version,
            lease: kv.lease,
        }
    };
    Ok((kv.key, stored))
}

/// An etcd user as Aspen stores it, or why Aspen cannot: a name or role list beyond Aspen's
/// auth limits, a password hash that is not text (bcrypt's is ASCII).
fn user_record(name: &str, user: aspen_etcd_snapshot::User) -> Result<UserRecord> {
    let refuse = |reason: String| StorageError::Snapshot(format!("etcd user {name:?}: {reason}"));
    check_name(name).map_err(&refuse)?;
    let password_hash = if user.no_password || user.password.is_empty() {
        None
    } else {
        Some(
            String::from_utf8(user.password)
                .map_err(|_| refuse("the password hash is not text".into()))?,
        )
    };
    let mut roles = user.roles;
    roles.sort();
    roles.dedup();
    if roles.len() > AUTH_ROLES_PER_USER_MAX as usize {
        return Err(refuse(format!(
            "{} roles; Aspen allows {AUTH_ROLES_PER_USER_MAX} per user",
            roles.len()
        )));
    }
    for role in &roles {
        check_name(role).map_err(|e| refuse(format!("role {role:?}: {e}")))?;
    }
    Ok(UserRecord {
        password_hash,
        roles,
    })
}

fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.len() > AUTH_NAME_BYTES_MAX as usize {
        return Err(format!(
            "a {}-byte name; Aspen allows {AUTH_NAME_BYTES_MAX}",
            name.len()
        ));
    }
    Ok(())
}

/// An etcd role as Aspen stores it: permissions sorted by key (stable, as etcd sorts them).
fn role_record(name: &str, role: aspen_etcd_snapshot::Role) -> Result<RoleRecord> {
    let refuse = |reason: String| StorageError::Snapshot(format!("etcd role {name:?}: {reason}"));
    check_name(name).map_err(&refuse)?;
    if role.permissions.len() > AUTH_PERMISSIONS_PER_ROLE_MAX as usize {
        return Err(refuse(format!(
            "{} permissions; Aspen allows {AUTH_PERMISSIONS_PER_ROLE_MAX} per role",
            role.permissions.len()
        )));
    }
    let mut permissions: Vec<Permission> = role
        .permissions
        .into_iter()
        .map(|p| Permission {
            perm_type: match p.perm_type {
                aspen_etcd_snapshot::PermissionType::Read => PermissionType::Read,
                aspen_etcd_snapshot::PermissionType::Write => PermissionType::Write,
                aspen_etcd_snapshot::PermissionType::ReadWrite => PermissionType::ReadWrite,
            },
            key: p.key,
            range_end: p.range_end,
        })
        .collect();
    permissions.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(RoleRecord { permissions })
}

/// Checks the file's auth store against Aspen's limits: called before the import's
/// transaction opens, so a file Aspen cannot hold is refused with nothing written.
fn check_auth(snapshot: &EtcdSnapshot, summary: &Summary) -> Result<()> {
    if summary.users > u64::from(AUTH_USERS_MAX) {
        return Err(StorageError::Snapshot(format!(
            "{} etcd users; Aspen allows {AUTH_USERS_MAX}",
            summary.users
        )));
    }
    if summary.roles > u64::from(AUTH_ROLES_MAX) {
        return Err(StorageError::Snapshot(format!(
            "{} etcd roles; Aspen allows {AUTH_ROLES_MAX}",
            summary.roles
        )));
    }
    snapshot.for_each_user(|name, user| user_record(&name, user).map(drop))?;
    snapshot.for_each_role(|name, role| role_record(&name, role).map(drop))
}

/// Writes the file's auth store into the (empty) auth tables and `sm_meta`.
fn import_auth(
    txn: &redb::WriteTransaction,
    snapshot: &EtcdSnapshot,
    summary: &Summary,
) -> Result<()> {
    let mut encoded = Vec::with_capacity(256);
    let mut users: Table<&str, &[u8]> = txn.open_table(schema::AUTH_USERS)?;
    snapshot.for_each_user(|name, user| -> Result<()> {
        let record = user_record(&name, user)?;
        encoded.clear();
        aspen_core::codec::encode_into(&record, &mut encoded);
        users.insert(name.as_str(), encoded.as_slice())?;
        Ok(())
    })?;
    let mut roles: Table<&str, &[u8]> = txn.open_table(schema::AUTH_ROLES)?;
    snapshot.for_each_role(|name, role| -> Result<()> {
        let record = role_record(&name, role)?;
        encoded.clear();
        aspen_core::codec::encode_into(&record, &mut encoded);
        roles.insert(name.as_str(), encoded.as_slice())?;
        Ok(())
    })?;
    let meta = AuthMeta {
        enabled: summary.auth_enabled,
        revision: summary.auth_revision,
    };
    txn.open_table(SM_META)?
        .insert(schema::SM_AUTH, aspen_core::codec::encode(&meta).as_slice())?;
    Ok(())
}

/// Replaces the (empty) state machine with an etcd snapshot's contents, applied at `meta`'s
/// log position, in one durable transaction. `summary` is the file's, from a complete walk
/// made before anything was written (`EtcdSnapshot::summary`).
pub(crate) fn import(
    store: &Store,
    snapshot: &EtcdSnapshot,
    summary: &Summary,
    meta: &SnapshotMeta,
) -> Result<()> {
    if summary.sub_revision_max > u64::from(u32::MAX) {
        return Err(StorageError::Snapshot(format!(
            "a sub-revision of {}: Aspen keeps sub-revisions below 2^32",
            summary.sub_revision_max
        )));
    }
    check_auth(snapshot, summary)?;
    let db = store.state_db();
    let txn = store.begin_state_write(&db)?;
    let imported_index = {
        let mut tables = super::tables::WriteTables::open(&txn);
        let mut encoded = Vec::with_capacity(4096);
        let mut index_run = IndexRun::default();
        snapshot.for_each_version(|version| -> Result<()> {
            if version.revision.main > summary.revision {
                return Err(StorageError::Snapshot(
                    "a version newer than the snapshot's revision".into(),
                ));
            }
            let (key, stored) = stored_version(version)?;
            index_run.write(&mut tables, &key, &stored, &mut encoded)
        })?;
        let keys = index_run.finish()?;
        snapshot.for_each_lease(|lease| -> Result<()> {
            let record = LeaseRecord {
                ttl_seconds: lease.ttl_seconds,
            };
            encoded.clear();
            aspen_core::codec::encode_into(&record, &mut encoded);
            tables.leases_mut()?.insert(lease.id, encoded.as_slice())?;
            Ok(())
        })?;
        attach_leases(&mut tables, &keys)?;
        keys
    };
    let state = AppliedState {
        last_applied: meta.last_log_id,
        membership: meta.last_membership.clone(),
        revision: summary.revision,
        compact_revision: summary.compact_revision,
        alarms: Vec::new(),
    };
    write_applied(&txn, &state)?;
    import_auth(&txn, snapshot, summary)?;
    {
        let mut table = txn.open_table(SM_META)?;
        // Physical compaction starts from the beginning: etcd's file may hold versions below
        // its compaction revision that Aspen's compactor removes.
        table.remove(schema::SM_COMPACTED_TO)?;
    }
    // As an install (`snapshot_io::install`): the old checkpoint goes before the commit, and
    // no reader pairs a transaction with the other index.
    let _no_checkpoint = store.shared.index_checkpoints.remove()?;
    let _exclusive = store.shared.key_index.exclusive();
    let log_bytes_before = store.shared.log_durable_bytes();
    txn.commit()?;
    store.shared.key_index.replace(imported_index);
    let applied_index = meta.last_log_id.as_ref().map_or(0, |id| id.index);
    store
        .shared
        .durability
        .record_durable(applied_index, log_bytes_before);
    store.record_applied(applied_index);
    Ok(())
}

/// Fills `lease_keys` from the index: a key is attached to the lease of its newest version,
/// if that version is live.
fn attach_leases(
    tables: &mut super::tables::WriteTables<'_>,
    keys: &super::key_index::KeyMap,
) -> Result<()> {
    let lease_keys = tables.lease_keys_mut()?;
    for (key, versions) in keys {
        if let Some((_, record)) = versions.last()
            && !record.is_tombstone()
            && record.lease != 0
        {
            lease_keys.insert((record.lease, key.as_bytes()), ())?;
        }
    }
    Ok(())
}

/// A version as etcd's `key` bucket holds it: its revision key and its KeyValue.
fn etcd_version(key: Vec<u8>, version: StoredVersion) -> (Vec<u8>, KeyValue) {
    let revision = Revision {
        main: version.mod_revision,
        sub: u64::from(version.sub_revision),
    };
    let tombstone = version.is_tombstone();
    let kv = if tombstone {
        // etcd writes a deletion as a KeyValue holding only the key.
        KeyValue {
            key,
            ..KeyValue::default()
        }
    } else {
        KeyValue {
            key,
            create_revision: version.create_revision,
            mod_revision: version.mod_revision,
            version: version.version,
            value: version.value,
            lease: version.lease,
        }
    };
    (revision.key_bytes(tombstone), kv)
}

/// The state machine, as of one read transaction, as an etcd 3.4 snapshot (a bbolt database)
/// in an export file; see the module doc.
pub fn export_etcd_snapshot(store: &Store) -> Result<SnapshotExport> {
    let bytes_max = store.limits().quota_backend_bytes.saturating_mul(2);
    let mut sink = store.shared.snapshots.new_export_sink(bytes_max)?;
    let db = store.state_db();
    let view = super::read_view(store, &db)?;
    let (txn, state) = (&view.txn, &view.state);
    let mut writer = BoltWriter::new(&mut sink)?;
    let mut buckets: Vec<(&[u8], BucketValue)> = Vec::with_capacity(BUCKETS.len());
    let mut encoded = Vec::with_capacity(4096);
    // Bounded by Aspen's auth limits; the state machine holds the same in memory.
    let auth = super::auth::load_read(txn)?;
    for name in BUCKETS {
        let mut tree = writer.begin_bucket();
        match name {
            BUCKET_KEY => {
                for_each_kept_version(&view, |key, version, _| {
                    let (revision_key, kv) = etcd_version(key, version);
                    kv.encode_into(&mut encoded);
                    writer.put(&mut tree, &revision_key, &encoded)?;
                    Ok(())
                })?;
            }
            BUCKET_LEASE => {
                for item in txn.open_table(schema::LEASES)?.iter()? {
                    let (id, bytes) = item?;
                    let record: LeaseRecord = decode("leases", bytes.value())?;
                    let lease = Lease {
                        id: id.value(),
                        ttl_seconds: record.ttl_seconds,
                    };
                    lease.encode_into(&mut encoded);
                    writer.put(&mut tree, &lease.key_bytes(), &encoded)?;
                }
            }
            BUCKET_META => {
                let applied_index = state.last_applied.as_ref().map_or(0, |id| id.index);
                writer.put(
                    &mut tree,
                    META_CONSISTENT_INDEX,
                    &applied_index.to_be_bytes(),
                )?;
                if state.compact_revision > 0 {
                    let compacted = Revision {
                        main: state.compact_revision,
                        sub: 0,
                    }
                    .key_bytes(false);
                    writer.put(&mut tree, META_FINISHED_COMPACT, &compacted)?;
                    writer.put(&mut tree, META_SCHEDULED_COMPACT, &compacted)?;
                }
            }
            BUCKET_AUTH => {
                // Byte order: authEnabled < authRevision.
                writer.put(&mut tree, AUTH_ENABLED, &[u8::from(auth.meta.enabled)])?;
                writer.put(&mut tree, AUTH_REVISION, &auth.meta.revision.to_be_bytes())?;
            }
            BUCKET_AUTH_USERS => {
                // BTreeMap<String> order is byte order, as bbolt needs.
                for (name, record) in &auth.users {
                    let user = aspen_etcd_snapshot::User {
                        name: name.as_bytes().to_vec(),
                        password: record
                            .password_hash
                            .as_deref()
                            .unwrap_or_default()
                            .as_bytes()
                            .to_vec(),
                        roles: record.roles.clone(),
                        no_password: record.password_hash.is_none(),
                    };
                    user.encode_into(&mut encoded);
                    writer.put(&mut tree, name.as_bytes(), &encoded)?;
                }
            }
            BUCKET_AUTH_ROLES => {
                for (name, record) in &auth.roles {
                    let role = aspen_etcd_snapshot::Role {
                        name: name.as_bytes().to_vec(),
                        permissions: record
                            .permissions
                            .iter()
                            .map(|p| aspen_etcd_snapshot::Permission {
                                perm_type: match p.perm_type {
                                    PermissionType::Read => {
                                        aspen_etcd_snapshot::PermissionType::Read
                                    }
                                    PermissionType::Write => {
                                        aspen_etcd_snapshot::PermissionType::Write
                                    }
                                    PermissionType::ReadWrite => {
                                        aspen_etcd_snapshot::PermissionType::ReadWrite
                                    }
                                },
                                key: p.key.clone(),
                                range_end: p.range_end.clone(),
                            })
                            .collect(),
                    };
                    role.encode_into(&mut encoded);
                    writer.put(&mut tree, name.as_bytes(), &encoded)?;
                }
            }
            _ => {}
        }
        buckets.push((name, writer.finish_bucket(tree)?));
    }
    writer.finish(&buckets)?;
    let data = sink.finish_export()?;
    let meta = SnapshotMeta {
        last_log_id: state.last_applied,
        last_membership: state.membership.clone(),
    };
    Ok(SnapshotExport::new(meta, data))
}
