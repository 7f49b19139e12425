//! Restoring a saved snapshot (what `Maintenance.Snapshot` streams and `etcdctl snapshot save`
//! writes) into a fresh data dir, from which a member of a new cluster starts.
//!
//! A saved file is etcd's (a bbolt database, then the SHA-256 of it: what Aspen's Snapshot RPC
//! sends, and etcd's) or, from Aspen versions before that, `Aspen snapshot stream ‖ zero
//! padding (to a 512-byte multiple) ‖ SHA-256 of all preceding bytes`; the content tells. Every member of the new cluster restores the same file with the same
//! member list, so all start from the same log position and membership and elect a leader.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use aspen_core::convert::usize_from;
use aspen_core::limits::Limits;
use aspen_core::type_config::alias::{LogId, SnapshotMeta, StoredMembership, Vote};
use aspen_core::{NodeId, NodeInfo};
use openraft::storage::RaftLogStorage;
use openraft::vote::RaftLeaderIdExt;
use sha2::Digest;

use crate::backend::{StorageBackend, open_storage};
use crate::error::{Result, StorageError};
use crate::snapshot::{SnapshotData, verify};
use aspen_etcd_snapshot::EtcdSnapshot;

/// Bytes of the SHA-256 trailer etcd's snapshot format ends with.
pub const SAVED_SNAPSHOT_SHA_BYTES: u64 = 32;
/// Zero padding before the trailer is shorter than one 512-byte block.
pub const SAVED_SNAPSHOT_PADDING_BYTES_MAX: u64 = 511;
/// The log position a restored cluster starts from (term 1, index 1).
pub const RESTORED_TERM: u64 = 1;
pub const RESTORED_INDEX: u64 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
    pub revision: u64,
    pub keys: u64,
    pub snapshot_bytes: u64,
}

/// Checks the SHA-256 trailer and finds where the snapshot stream ends; returns its length.
pub fn check_saved_file(path: &Path) -> Result<u64> {
    let io = |source| StorageError::SnapshotIo {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len <= SAVED_SNAPSHOT_SHA_BYTES + 8 {
        return Err(StorageError::Snapshot(format!(
            "{} is too short to be a snapshot",
            path.display()
        )));
    }
    let body_len = len - SAVED_SNAPSHOT_SHA_BYTES;
    let mut hasher = sha2::Sha256::new();
    let mut remaining = body_len;
    let mut buffer = vec![0u8; 256 * 1024];
    let mut tail: Vec<u8> = Vec::with_capacity(usize_from(SAVED_SNAPSHOT_PADDING_BYTES_MAX));
    while remaining > 0 {
        let want = buffer.len().min(usize_from(remaining));
        file.read_exact(&mut buffer[..want]).map_err(io)?;
        hasher.update(&buffer[..want]);
        remaining -= want as u64;
        keep_tail(&mut tail, &buffer[..want]);
    }
    let mut trailer = [0u8; usize_from(SAVED_SNAPSHOT_SHA_BYTES)];
    file.read_exact(&mut trailer).map_err(io)?;
    if hasher.finalize().as_slice() != trailer {
        return Err(StorageError::Snapshot(format!(
            "{}: SHA-256 trailer does not match (corrupt file)",
            path.display()
        )));
    }
    // The stream ends with a CRC that may itself end in zero bytes: try each possible
    // padding, shortest first, and keep the first length that verifies.
    let zeros = tail.iter().rev().take_while(|b| **b == 0).count() as u64;
    for padding in 0..=zeros.min(SAVED_SNAPSHOT_PADDING_BYTES_MAX) {
        let stream_len = body_len - padding;
        if verify(&SnapshotData::from_file_prefix(path, stream_len)?).is_ok() {
            return Ok(stream_len);
        }
    }
    Err(StorageError::Snapshot(format!(
        "{}: not a valid Aspen snapshot",
        path.display()
    )))
}

fn keep_tail(tail: &mut Vec<u8>, chunk: &[u8]) {
    let keep = usize_from(SAVED_SNAPSHOT_PADDING_BYTES_MAX);
    tail.extend_from_slice(chunk);
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
}

/// The format of a saved snapshot, told by its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavedFormat {
    /// Aspen's own snapshot stream (what Aspen's Snapshot RPC sent before it spoke etcd's).
    Aspen,
    /// etcd's: a bbolt database (from `etcdctl snapshot save` against etcd or Aspen).
    Etcd,
}

pub fn saved_format(path: &Path) -> Result<SavedFormat> {
    if aspen_etcd_snapshot::file::looks_like_bbolt(path)? {
        return Ok(SavedFormat::Etcd);
    }
    let mut magic = [0u8; 8];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic));
    match read {
        Ok(()) if &magic == crate::snapshot::SNAPSHOT_MAGIC => Ok(SavedFormat::Aspen),
        Ok(()) => Err(StorageError::Snapshot(format!(
            "{} is neither an etcd snapshot (a bbolt database) nor an Aspen snapshot",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(StorageError::Snapshot(
            format!("{} is too short to be a snapshot", path.display()),
        )),
        Err(source) => Err(StorageError::SnapshotIo {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Restores `saved_file` (either format, told apart by content) into `backend`, which must
/// hold no Raft state yet, as the starting state of a new cluster made of `members` (all
/// voters). The whole file is checked before anything is written.
pub async fn restore_saved_snapshot(
    saved_file: &Path,
    backend: &StorageBackend,
    limits: Limits,
    members: BTreeMap<NodeId, NodeInfo>,
) -> Result<RestoreSummary> {
    assert!(!members.is_empty(), "a restored cluster needs members");
    enum Checked {
        Aspen(SnapshotData, u64),
        Etcd(Box<EtcdSnapshot>, aspen_etcd_snapshot::Summary),
    }
    let checked = match saved_format(saved_file)? {
        SavedFormat::Aspen => {
            let stream_len = check_saved_file(saved_file)?;
            Checked::Aspen(
                SnapshotData::from_file_prefix(saved_file, stream_len)?,
                stream_len,
            )
        }
        SavedFormat::Etcd => {
            let snapshot = EtcdSnapshot::open(saved_file)?;
            let summary = snapshot.summary()?;
            Checked::Etcd(Box::new(snapshot), summary)
        }
    };
    let (mut log_store, state_machine) = open_storage(backend, limits)?;
    let log_state = log_store
        .get_log_state()
        .await
        .map_err(|e| StorageError::Invariant(e.to_string()))?;
    let applied = state_machine.reader().applied_state()?;
    if log_state.last_log_id.is_some() || applied.last_applied.is_some() {
        return Err(StorageError::Snapshot(
            "the data dir already holds a member's state; restore needs an empty one".into(),
        ));
    }
    let leader = <aspen_core::TypeConfig as openraft::RaftTypeConfig>::LeaderId::new_committed(
        RESTORED_TERM,
        0,
    );
    let log_id = LogId::new(leader, RESTORED_INDEX);
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    let membership = openraft::Membership::new(vec![voters], members)
        .map_err(|e| StorageError::Invariant(format!("restored membership: {e}")))?;
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), membership),
    };
    let snapshot_bytes = match &checked {
        Checked::Aspen(data, stream_len) => {
            state_machine.install(&meta, data)?;
            *stream_len
        }
        Checked::Etcd(snapshot, summary) => {
            state_machine.import_etcd(snapshot, summary, &meta)?;
            std::fs::metadata(saved_file)
                .map_err(|source| StorageError::SnapshotIo {
                    path: saved_file.to_path_buf(),
                    source,
                })?
                .len()
        }
    };
    let io = |e: std::io::Error| StorageError::Invariant(e.to_string());
    log_store
        .save_vote(&Vote::new_committed(RESTORED_TERM, 0))
        .await
        .map_err(io)?;
    log_store.purge(log_id).await.map_err(io)?;
    log_store.save_committed(Some(log_id)).await.map_err(io)?;
    let restored = state_machine.reader().applied_state()?;
    let everything = aspen_core::RangeRequest {
        key: vec![0],
        range_end: vec![0],
        count_only: true,
        ..Default::default()
    };
    let keys = match state_machine.reader().range(&everything)? {
        Ok((result, _)) => result.count,
        Err(e) => return Err(StorageError::Invariant(e.to_string())),
    };
    Ok(RestoreSummary {
        revision: restored.revision,
        keys,
        snapshot_bytes,
    })
}
