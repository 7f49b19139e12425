//! Compaction: drop history that no read at or above the compaction revision can see.
//!
//! For each key, of its versions at or below the compaction revision only the newest can still
//! be read, and only if it is not a tombstone and the key's current version is newer than the
//! compaction revision. Everything else at or below it goes.

use redb::ReadableTable;

use super::records::StoredVersion;
use super::tables::WriteTables;
use crate::error::{Result, decode};

/// Removes unreadable history below `compact_revision`; returns how many versions went.
pub(crate) fn compact_history(tables: &mut WriteTables<'_>, compact_revision: u64) -> Result<u64> {
    let mut doomed: Vec<(Vec<u8>, u64)> = Vec::new();
    let mut group_key: Option<Vec<u8>> = None;
    let mut group: Vec<(u64, bool)> = Vec::new(); // (revision, is_tombstone), ascending
    for item in tables.history.iter()? {
        let (key, bytes) = item?;
        let (user_key, revision) = key.value();
        if group_key.as_deref() != Some(user_key) {
            if let Some(done) = group_key.take() {
                judge_group(tables, &done, &group, compact_revision, &mut doomed)?;
            }
            group_key = Some(user_key.to_vec());
            group.clear();
        }
        if revision <= compact_revision {
            let version: StoredVersion = decode("kv_history", bytes.value())?;
            group.push((revision, version.is_tombstone()));
        }
    }
    if let Some(done) = group_key.take() {
        judge_group(tables, &done, &group, compact_revision, &mut doomed)?;
    }
    for (key, revision) in &doomed {
        tables.history.remove((key.as_slice(), *revision))?;
    }
    Ok(doomed.len() as u64)
}

fn judge_group(
    tables: &WriteTables<'_>,
    key: &[u8],
    at_or_below: &[(u64, bool)],
    compact_revision: u64,
    doomed: &mut Vec<(Vec<u8>, u64)>,
) -> Result<()> {
    let Some(&(newest_revision, newest_is_tombstone)) = at_or_below.last() else {
        return Ok(());
    };
    let current_is_old_enough = match tables.latest.get(key)? {
        Some(bytes) => {
            decode::<StoredVersion>("kv_latest", bytes.value())?.mod_revision <= compact_revision
        }
        None => false,
    };
    let keep_newest = !newest_is_tombstone && !current_is_old_enough;
    for &(revision, _) in at_or_below {
        if revision == newest_revision && keep_newest {
            continue;
        }
        doomed.push((key.to_vec(), revision));
    }
    Ok(())
}
