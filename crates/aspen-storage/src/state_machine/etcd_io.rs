//! etcd 3.4's snapshot format (a bbolt file, `aspen-etcd-snapshot`) in and out of the state
//! machine: the user-facing backup. Raft snapshots between members keep Aspen's own format.
//!
//! - Import: every version of etcd's `key` bucket (history and tombstones as etcd kept them)
//!   goes to `kv_revs`/`kv_index` at its revision, leases to `leases`, and each key's newest
//!   live version's lease to `lease_keys`; the store and compaction revisions come from the
//!   versions and etcd's `meta` bucket. One write transaction, streaming: memory does not grow
//!   with the file.
//! - Export: one read transaction, streamed into bbolt pages with etcd's buckets: every
//!   version compaction keeps (the same rule as HashKV and Aspen's snapshots), leases, and the
//!   meta entries etcd reads back (consistent index, compaction revisions).

use aspen_core::type_config::alias::SnapshotMeta;
use aspen_etcd_snapshot::bolt_write::{BoltWriter, BucketValue};
use aspen_etcd_snapshot::layout::{
    BUCKET_KEY, BUCKET_LEASE, BUCKET_META, BUCKETS, META_CONSISTENT_INDEX, META_FINISHED_COMPACT,
    META_SCHEDULED_COMPACT,
};
use aspen_etcd_snapshot::{EtcdSnapshot, KeyValue, Lease, Revision, Summary};
use redb::{ReadableDatabase, ReadableTable};

use super::mvcc::IndexRecord;
use super::read_applied;
use super::records::{AppliedState, LeaseRecord, StoredVersion};
use super::snapshot_io::{IndexRun, for_each_kept_version};
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
    let db = store.state_db();
    let txn = db.begin_write()?;
    {
        let mut tables = super::tables::WriteTables::open(&txn)?;
        let mut encoded = Vec::with_capacity(4096);
        let mut index_run = IndexRun::default();
        snapshot.for_each_version(|version| -> Result<()> {
            if version.revision.main > summary.revision {
                return Err(StorageError::Snapshot(
                    "a version newer than the snapshot's revision".into(),
                ));
            }
            let (key, stored) = stored_version(version)?;
            index_run.write(&mut tables, key, &stored, &mut encoded)
        })?;
        index_run.flush(&mut tables, &mut encoded)?;
        snapshot.for_each_lease(|lease| -> Result<()> {
            let record = LeaseRecord {
                ttl_seconds: lease.ttl_seconds,
            };
            encoded.clear();
            aspen_core::codec::encode_into(&record, &mut encoded);
            tables.leases.insert(lease.id, encoded.as_slice())?;
            Ok(())
        })?;
        attach_leases(&mut tables)?;
    }
    let state = AppliedState {
        last_applied: meta.last_log_id,
        membership: meta.last_membership.clone(),
        revision: summary.revision,
        compact_revision: summary.compact_revision,
        alarms: Vec::new(),
    };
    write_applied(&txn, &state)?;
    {
        let mut table = txn.open_table(SM_META)?;
        // Physical compaction starts from the beginning: etcd's file may hold versions below
        // its compaction revision that Aspen's compactor removes.
        table.remove(schema::SM_COMPACTED_TO)?;
    }
    txn.commit()?;
    let applied_index = meta.last_log_id.as_ref().map_or(0, |id| id.index);
    store.shared.durability.record_durable(applied_index);
    Ok(())
}

/// Fills `lease_keys` from the index: a key is attached to the lease of its newest version,
/// if that version is live. One ordered scan; memory holds one key's entry.
fn attach_leases(tables: &mut super::tables::WriteTables<'_>) -> Result<()> {
    let super::tables::WriteTables {
        index, lease_keys, ..
    } = tables;
    let mut attach = |entry: Option<(Vec<u8>, IndexRecord)>| -> Result<()> {
        if let Some((key, record)) = entry
            && !record.is_tombstone()
            && record.lease != 0
        {
            lease_keys.insert((record.lease, key.as_slice()), ())?;
        }
        Ok(())
    };
    let mut newest: Option<(Vec<u8>, IndexRecord)> = None;
    for item in index.iter()? {
        let (table_key, bytes) = item?;
        let (key, _) = table_key.value();
        let record: IndexRecord = decode("kv_index", bytes.value())?;
        if newest.as_ref().is_some_and(|(k, _)| k.as_slice() != key) {
            attach(newest.take())?;
        }
        newest = Some((key.to_vec(), record));
    }
    attach(newest)
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
    let txn = db.begin_read()?;
    let state = read_applied(&txn)?;
    let mut writer = BoltWriter::new(&mut sink)?;
    let mut buckets: Vec<(&[u8], BucketValue)> = Vec::with_capacity(BUCKETS.len());
    let mut encoded = Vec::with_capacity(4096);
    for name in BUCKETS {
        let mut tree = writer.begin_bucket();
        match name {
            BUCKET_KEY => {
                for_each_kept_version(&txn, &state, |key, version, _| {
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
