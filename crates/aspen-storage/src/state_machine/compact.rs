//! Physical compaction: removing the versions that no read at or above the compaction
//! revision can see, in bounded steps off the apply path.
//!
//! Applying `Compact { revision }` only raises the compaction revision: from then on, reads
//! below it fail. The versions it makes unreadable are removed afterwards, a step at a time,
//! each step its own short write transaction (`StateMachine::compact_step`), so a compaction
//! of millions of revisions never holds the apply path for long. A version at or below the
//! compaction revision is unreadable when the key has a newer version also at or below it, or
//! when it is a tombstone (nothing older survives it). What is physically left does not change
//! any read, nor HashKV, which hashes the logical content (`hash.rs`), so replicas may compact
//! at their own pace.

use redb::ReadableTable;

use super::mvcc::{IndexRecord, RevKey, RevRecordView};
use super::tables::WriteTables;
use crate::error::{Result, decode};

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CompactStep {
    /// Where the next step starts in `kv_revs`.
    pub next: RevKey,
    /// Versions removed.
    pub removed: u64,
    /// True when everything at or below the compaction revision has been looked at.
    pub done: bool,
}

/// Looks at up to `records_max` versions of `kv_revs` from `from`, at or below
/// `compact_revision`, and removes the unreadable ones.
pub(crate) fn compact_step(
    tables: &mut WriteTables<'_>,
    compact_revision: u64,
    from: RevKey,
    records_max: u32,
) -> Result<CompactStep> {
    assert!(records_max > 0);
    let mut looked_at: Vec<(RevKey, Vec<u8>, bool)> = Vec::new();
    for item in tables
        .revs
        .range::<RevKey>(from..=(compact_revision, u32::MAX))?
        .take(records_max as usize)
    {
        let (position, bytes) = item?;
        let record: RevRecordView<'_> =
            aspen_core::codec::decode_borrowed(bytes.value()).map_err(|source| {
                crate::error::StorageError::Codec {
                    table: "kv_revs",
                    source,
                }
            })?;
        looked_at.push((position.value(), record.key.to_vec(), record.version == 0));
    }
    let done = (looked_at.len() as u64) < u64::from(records_max);
    let next = match looked_at.last() {
        Some(((main, sub), _, _)) => match sub.checked_add(1) {
            Some(next_sub) => (*main, next_sub),
            None => (main + 1, 0),
        },
        None => from,
    };
    let mut removed: u64 = 0;
    for ((main, sub), key, is_tombstone) in &looked_at {
        let superseded =
            is_tombstone_or_superseded(tables, key, *main, *is_tombstone, compact_revision)?;
        if superseded {
            let index_entry = tables.index.remove((key.as_slice(), *main))?;
            if let Some(entry) = index_entry {
                let entry: IndexRecord = decode("kv_index", entry.value())?;
                assert_eq!(entry.sub_revision, *sub, "kv_index and kv_revs disagree");
            }
            tables.revs.remove((*main, *sub))?;
            removed += 1;
        }
    }
    Ok(CompactStep {
        next,
        removed,
        done,
    })
}

fn is_tombstone_or_superseded(
    tables: &WriteTables<'_>,
    key: &[u8],
    main: u64,
    is_tombstone: bool,
    compact_revision: u64,
) -> Result<bool> {
    assert!(main <= compact_revision);
    if is_tombstone {
        return Ok(true);
    }
    if main == compact_revision {
        return Ok(false);
    }
    let newer = tables
        .index
        .range::<(&[u8], u64)>((key, main + 1)..=(key, compact_revision))?
        .next()
        .transpose()?;
    Ok(newer.is_some())
}
