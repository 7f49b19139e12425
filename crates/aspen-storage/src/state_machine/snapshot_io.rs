//! Snapshot points (Raft's snapshots: one durable commit, no copy), snapshot data written from a
//! pinned read view when a follower needs it, and installing one in a single write transaction.

use std::io::BufReader;

use aspen_core::type_config::alias::SnapshotMeta;
use redb::ReadableTable;

use super::index_build::IndexRun;
use super::mvcc::{IndexSource, RevRecord};
use super::records::AppliedState;
use super::records::StoredVersion;
use super::{read_applied_write, write_applied};
use crate::backend::Store;
use crate::error::{Result, StorageError, decode, decode_found};
use crate::schema::{self, SM_META, SM_SNAPSHOT, SM_SNAPSHOT_POINT};
use crate::snapshot::{
    Frame, FrameReader, Materialize, SNAPSHOT_MAGIC, SnapshotData, SnapshotExport, SnapshotRecord,
    SnapshotSink,
};

/// Records a **snapshot point** at the applied state: one durable commit of the state database
/// that writes the point's meta, and drops the
/// record (and file) of an older written snapshot. Nothing of the state is copied: the state
/// database itself is the snapshot, as etcd's bbolt file is. Its data is written only when
/// someone reads it ([`current`]: a leader sending it to a follower).
///
/// Returns the point's meta. Raft may purge the log up to it: the commit made the state
/// machine durable at least that far.
pub(crate) fn record_point(store: &Store) -> Result<SnapshotMeta> {
    let db = store.state_db();
    // Durable (redb's default): it makes every earlier apply durable too.
    let txn = store.begin_state_write(&db)?;
    let state = read_applied_write(&txn)?;
    let meta = SnapshotMeta {
        last_log_id: state.last_applied,
        last_membership: state.membership.clone(),
    };
    let replaced = {
        let mut table = txn.open_table(SM_META)?;
        let record: Option<SnapshotRecord> = decode_found("sm_meta", table.get(SM_SNAPSHOT)?)?;
        table.insert(
            SM_SNAPSHOT_POINT,
            aspen_core::codec::encode(&meta).as_slice(),
        )?;
        match record {
            Some(record) if record.meta.last_log_id <= meta.last_log_id => {
                table.remove(SM_SNAPSHOT)?;
                Some(record.file_name)
            }
            _ => None,
        }
    };
    let log_bytes_before = store.shared.log_durable_bytes();
    txn.commit()?;
    drop(db);
    let applied_index = state.last_applied.as_ref().map_or(0, |id| id.index);
    store
        .shared
        .durability
        .record_durable(applied_index, log_bytes_before);
    if let Some(file_name) = replaced {
        store.shared.snapshots.clear_memory_current();
        store
            .shared
            .snapshots
            .remove_replaced(file_name.as_deref(), None)?;
    }
    Ok(meta)
}

/// The current snapshot: the written one if it is at least as new as the snapshot point,
/// else a deferred one of the state as it is now (one read transaction, pinned until the
/// data is written or dropped), whose meta is at or past the point. None before either exists.
///
/// openraft reads this at start (only the meta: nothing is written then) and to send a
/// follower the state (`SnapshotData::materialized` writes it then, off the state machine
/// worker, and records it as the current written snapshot).
pub(crate) fn current(store: &Store) -> Result<Option<(SnapshotMeta, SnapshotData)>> {
    let db = store.state_db();
    let (record, point) = {
        let txn = store.begin_state_read(&db)?;
        let table = txn.open_table(SM_META)?;
        let record: Option<SnapshotRecord> = decode_found("sm_meta", table.get(SM_SNAPSHOT)?)?;
        let point: Option<SnapshotMeta> = decode_found("sm_meta", table.get(SM_SNAPSHOT_POINT)?)?;
        (record, point)
    };
    let written_is_current = match (&record, &point) {
        (Some(record), Some(point)) => point.last_log_id <= record.meta.last_log_id,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if let (true, Some(record)) = (written_is_current, record) {
        let data = store.shared.snapshots.open(&record)?;
        return Ok(Some((record.meta, data)));
    }
    let Some(point) = point else {
        return Ok(None);
    };
    // Unregistered: the snapshot may be kept for long before a leader writes it, and must not
    // hold compaction or installs back meanwhile; it is refused when written if either
    // changed the key index under it (`Materialize for Deferred`).
    let view = super::read_view_unregistered(store, &db)?;
    drop(db);
    let meta = SnapshotMeta {
        last_log_id: view.state.last_applied,
        last_membership: view.state.membership.clone(),
    };
    // Applies only move forward, and an install that moves them back removes the point.
    assert!(meta.last_log_id >= point.last_log_id);
    let deferred = Deferred {
        store: store.clone(),
        meta: meta.clone(),
        slot: std::sync::Mutex::new(Slot::View(Box::new(view))),
    };
    Ok(Some((
        meta,
        SnapshotData::deferred(std::sync::Arc::new(deferred)),
    )))
}

/// A snapshot of the state one read view holds, written the first time it is read.
struct Deferred {
    store: Store,
    meta: SnapshotMeta,
    slot: std::sync::Mutex<Slot>,
}

enum Slot {
    /// Not written yet (a failed write leaves the view for another try).
    View(Box<super::ReadView>),
    /// Written; the view is released.
    Written(SnapshotData),
}

impl Materialize for Deferred {
    fn materialize(&self) -> Result<SnapshotData> {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        let view = match &*slot {
            Slot::Written(data) => return Ok(data.clone()),
            Slot::View(view) => view,
        };
        let overtaken = || {
            StorageError::Snapshot(
                "the snapshot's view was overtaken by a compaction or an install; the next \
                 snapshot request takes a new one"
                    .into(),
            )
        };
        if !view.index_still_matches() {
            return Err(overtaken());
        }
        let bytes_max = self.store.limits().quota_backend_bytes.saturating_mul(2);
        let mut sink = self.store.shared.snapshots.new_sink(bytes_max)?;
        let meta = write_view(view, &mut sink)?;
        assert_eq!(meta, self.meta, "a deferred snapshot's view moved");
        if !view.index_still_matches() {
            return Err(overtaken());
        }
        let data = record_written(&self.store, meta, sink)?;
        *slot = Slot::Written(data.clone());
        Ok(data)
    }
}

/// Finishes a written snapshot (synced, under its final name) and makes it the current one
/// unless a newer one was recorded meanwhile.
fn record_written(store: &Store, meta: SnapshotMeta, sink: SnapshotSink) -> Result<SnapshotData> {
    let (data, file_name) = sink.finish()?;
    let record = SnapshotRecord {
        meta,
        file_name,
        len_bytes: data.len_bytes(),
    };
    if let CurrentUpdate::Replaced { replaced } = set_current_if_newer(store, &record)? {
        store.shared.snapshots.set_memory_current(&data);
        store
            .shared
            .snapshots
            .remove_replaced(replaced.as_deref(), record.file_name.as_deref())?;
    }
    Ok(data)
}

/// A point-in-time copy of the state machine in the snapshot format, for a client (etcd's
/// Snapshot RPC). Unlike a Raft snapshot it is never recorded and not synced; its file, if
/// any, is deleted when the export is dropped.
pub fn export_snapshot(store: &Store) -> Result<SnapshotExport> {
    let bytes_max = store.limits().quota_backend_bytes.saturating_mul(2);
    let mut sink = store.shared.snapshots.new_export_sink(bytes_max)?;
    let view = {
        let db = store.state_db();
        super::read_view(store, &db)?
    };
    let meta = write_view(&view, &mut sink)?;
    let data = sink.finish_export()?;
    Ok(SnapshotExport::new(meta, data))
}

/// Writes every state machine table, as of one read view, as snapshot frames with the
/// trailer; returns the meta describing that state.
fn write_view(view: &super::ReadView, sink: &mut SnapshotSink) -> Result<SnapshotMeta> {
    let txn = &view.txn;
    let state = &view.state;
    let mut buffer = Vec::with_capacity(4096);
    let mut frames: u64 = 0;
    sink.write_raw(SNAPSHOT_MAGIC)?;
    let header = Frame::Header {
        revision: state.revision,
        compact_revision: state.compact_revision,
        alarms: state.alarms.clone(),
    };
    sink.write_frame(&header, &mut buffer)?;
    frames += 1;
    frames += write_versions(view, sink, &mut buffer)?;
    for item in txn.open_table(schema::LEASES)?.iter()? {
        let (id, bytes) = item?;
        let frame = Frame::Lease {
            id: id.value(),
            record: decode("leases", bytes.value())?,
        };
        sink.write_frame(&frame, &mut buffer)?;
        frames += 1;
    }
    frames += write_auth(txn, sink, &mut buffer)?;
    sink.write_frame(&Frame::End { frames }, &mut buffer)?;
    sink.write_trailer()?;
    Ok(SnapshotMeta {
        last_log_id: state.last_applied,
        last_membership: state.membership.clone(),
    })
}

/// Writes every version compaction keeps, in revision order (one ordered scan of `kv_revs`, so
/// an install appends them in order too): a key's newest version as `Latest` (unless it is a
/// tombstone), the others as `History`. Returns the frame count.
fn write_versions(
    view: &super::ReadView,
    sink: &mut SnapshotSink,
    buffer: &mut Vec<u8>,
) -> Result<u64> {
    let mut frames: u64 = 0;
    for_each_kept_version(view, |key, version, newest_live| {
        let frame = if newest_live {
            Frame::Latest { key, version }
        } else {
            Frame::History {
                key,
                revision: version.mod_revision,
                version,
            }
        };
        sink.write_frame(&frame, buffer)?;
        frames += 1;
        Ok(())
    })?;
    Ok(frames)
}

/// Calls `visit(key, version, newest_live)` for every version compaction keeps, in revision
/// order; `newest_live` marks a key's newest version when it is not a tombstone.
pub(super) fn for_each_kept_version(
    view: &super::ReadView,
    mut visit: impl FnMut(Vec<u8>, StoredVersion, bool) -> Result<()>,
) -> Result<()> {
    let (txn, state) = (&view.txn, &view.state);
    let index = view.index();
    let revs = txn.open_table(schema::KV_REVS)?;
    for item in revs.iter()? {
        let (position, bytes) = item?;
        let (main, sub) = position.value();
        let record: RevRecord = decode("kv_revs", bytes.value())?;
        let version = record.to_version(main, sub);
        let Some((newest, _)) = index.entry_at(&record.key, u64::MAX)? else {
            return Err(StorageError::Invariant(format!(
                "kv_revs holds {main}.{sub}, which the key index does not name"
            )));
        };
        if main <= state.compact_revision {
            // The same rule as compaction (`compact.rs`): at or below the compaction revision
            // only a key's newest version there survives, and a tombstone only at the
            // compaction revision itself (a watch starting there is owed its deletes).
            let newest_at_compaction = index
                .entry_at(&record.key, state.compact_revision)?
                .map_or(0, |(m, _)| m);
            let dropped_tombstone = version.is_tombstone() && main < state.compact_revision;
            if dropped_tombstone || newest_at_compaction != main {
                continue;
            }
        }
        let newest_live = newest == main && !version.is_tombstone();
        visit(record.key, version, newest_live)?;
    }
    Ok(())
}

/// Writes the auth store (meta, users, roles); returns the frame count.
fn write_auth(
    txn: &redb::ReadTransaction,
    sink: &mut SnapshotSink,
    buffer: &mut Vec<u8>,
) -> Result<u64> {
    let state = super::auth::load_read(txn)?;
    let mut frames: u64 = 0;
    sink.write_frame(&Frame::AuthMeta(state.meta), buffer)?;
    frames += 1;
    for (name, record) in state.users {
        sink.write_frame(&Frame::AuthUser { name, record }, buffer)?;
        frames += 1;
    }
    for (name, record) in state.roles {
        sink.write_frame(&Frame::AuthRole { name, record }, buffer)?;
        frames += 1;
    }
    Ok(frames)
}

/// What [`set_current_if_newer`] did.
enum CurrentUpdate {
    /// A newer snapshot is current; the new one was not recorded.
    KeptNewer,
    /// The new snapshot is current; `replaced` is the file of the one it replaced, if any.
    Replaced { replaced: Option<String> },
}

/// Durably records `record` as the current snapshot unless the current one is newer.
fn set_current_if_newer(store: &Store, record: &SnapshotRecord) -> Result<CurrentUpdate> {
    let db = store.state_db();
    let txn = store.begin_state_write(&db)?;
    let replaced = {
        let mut table = txn.open_table(SM_META)?;
        let existing: Option<SnapshotRecord> = decode_found("sm_meta", table.get(SM_SNAPSHOT)?)?;
        if let Some(existing) = &existing
            && existing.meta.last_log_id > record.meta.last_log_id
        {
            return Ok(CurrentUpdate::KeptNewer);
        }
        table.insert(SM_SNAPSHOT, aspen_core::codec::encode(record).as_slice())?;
        existing.and_then(|e| e.file_name)
    };
    // Durable (redb's default): it makes every earlier apply durable too.
    let applied_index = read_applied_write(&txn)?
        .last_applied
        .as_ref()
        .map_or(0, |id| id.index);
    let log_bytes_before = store.shared.log_durable_bytes();
    txn.commit()?;
    store
        .shared
        .durability
        .record_durable(applied_index, log_bytes_before);
    Ok(CurrentUpdate::Replaced { replaced })
}

/// Replaces every state machine table with the snapshot's frames in one durable transaction.
pub(crate) fn install(
    store: &Store,
    meta: &SnapshotMeta,
    data: &SnapshotData,
    record: &SnapshotRecord,
) -> Result<()> {
    let mut reader = FrameReader::new(BufReader::with_capacity(256 * 1024, data.reader()))?;
    let mut buffer = Vec::with_capacity(4096);
    let db = store.state_db();
    let txn = store.begin_state_write(&db)?;
    txn.delete_table(schema::KV_REVS)?;
    txn.delete_table(schema::LEASES)?;
    txn.delete_table(schema::LEASE_KEYS)?;
    txn.delete_table(schema::AUTH_USERS)?;
    txn.delete_table(schema::AUTH_ROLES)?;
    // Recreated at once: readers never meet a missing table, even if no frame follows for it.
    super::tables::create_all(&txn)?;
    let mut auth_meta: Option<aspen_core::auth::AuthMeta> = None;
    let Some(Frame::Header {
        revision,
        compact_revision,
        alarms,
    }) = reader.next_frame(&mut buffer)?
    else {
        return Err(StorageError::Snapshot(
            "snapshot does not start with a header".into(),
        ));
    };
    let index_run = {
        let mut tables = super::tables::WriteTables::open(&txn);
        let mut encoded = Vec::with_capacity(4096);
        let mut index_run = IndexRun::default();
        while let Some(frame) = reader.next_frame(&mut buffer)? {
            encoded.clear();
            match frame {
                Frame::Latest { key, version } => {
                    // Snapshot bytes come from the network or the disk: a bad record is an
                    // error (the transaction is dropped, nothing changes), never a panic. The
                    // checksum is only known at the end, so a damaged frame can get here.
                    if version.is_tombstone() {
                        return Err(StorageError::Snapshot(
                            "snapshot holds a tombstone as a live key".into(),
                        ));
                    }
                    if version.mod_revision > revision {
                        return Err(StorageError::Snapshot(format!(
                            "snapshot key modified at {} is newer than its revision {revision}",
                            version.mod_revision
                        )));
                    }
                    index_run.write(&mut tables, &key, &version, &mut encoded)?;
                    if version.lease != 0 {
                        tables
                            .lease_keys_mut()?
                            .insert((version.lease, key.as_slice()), ())?;
                    }
                }
                Frame::History {
                    key,
                    revision: rev,
                    version,
                } => {
                    if version.mod_revision != rev || rev > revision {
                        return Err(StorageError::Snapshot(format!(
                            "snapshot history record at {rev} holds a version modified at {} \
                             (snapshot revision {revision})",
                            version.mod_revision
                        )));
                    }
                    index_run.write(&mut tables, &key, &version, &mut encoded)?;
                }
                Frame::Lease { id, record } => {
                    aspen_core::codec::encode_into(&record, &mut encoded);
                    tables.leases_mut()?.insert(id, encoded.as_slice())?;
                }
                Frame::AuthMeta(meta) => auth_meta = Some(meta),
                Frame::AuthUser { name, record } => {
                    aspen_core::codec::encode_into(&record, &mut encoded);
                    txn.open_table(schema::AUTH_USERS)?
                        .insert(name.as_str(), encoded.as_slice())?;
                }
                Frame::AuthRole { name, record } => {
                    aspen_core::codec::encode_into(&record, &mut encoded);
                    txn.open_table(schema::AUTH_ROLES)?
                        .insert(name.as_str(), encoded.as_slice())?;
                }
                Frame::End { .. } => {}
                Frame::Header { .. } => {
                    return Err(StorageError::Snapshot("second header in snapshot".into()));
                }
            }
        }
        index_run
    };
    let state = AppliedState {
        last_applied: meta.last_log_id,
        membership: meta.last_membership.clone(),
        revision,
        compact_revision,
        alarms,
    };
    write_applied(&txn, &state)?;
    {
        let mut table = txn.open_table(SM_META)?;
        table.insert(SM_SNAPSHOT, aspen_core::codec::encode(record).as_slice())?;
        // The installed snapshot replaces the state a point described.
        table.remove(SM_SNAPSHOT_POINT)?;
        // The installed versions are compacted as the source had them: no progress carries.
        table.remove(schema::SM_COMPACTED_TO)?;
        // A snapshot from before auth existed has no auth frames: auth disabled, no users.
        match auth_meta {
            Some(meta) => {
                table.insert(schema::SM_AUTH, aspen_core::codec::encode(&meta).as_slice())?;
            }
            None => {
                table.remove(schema::SM_AUTH)?;
            }
        }
    }
    // The checkpoint describes the replaced state: gone before the commit (a crash between
    // leaves the old state without one, and its open replays all of `kv_revs`).
    let _no_checkpoint = store.shared.index_checkpoints.remove()?;
    let (installed_index, (_exclusive, log_bytes_before)) = index_run.finish_beside(|| {
        // No reader pairs a transaction with the other index (`key_index.rs`).
        let exclusive = store.shared.key_index.exclusive();
        // Immediate: the log is purged behind this snapshot, so it must survive a crash.
        let log_bytes_before = store.shared.log_durable_bytes();
        txn.commit()?;
        Ok((exclusive, log_bytes_before))
    })?;
    store.shared.key_index.replace(installed_index);
    let applied_index = meta.last_log_id.as_ref().map_or(0, |id| id.index);
    store
        .shared
        .durability
        .record_durable(applied_index, log_bytes_before);
    Ok(())
}
