//! Physical compaction: removing the versions that no read at or above the compaction
//! revision can see, in bounded steps off the apply path.
//!
//! Applying `Compact { revision }` only raises the compaction revision: from then on, reads
//! below it fail. The versions it makes unreadable are removed afterwards, a step at a time
//! (`StateMachine::compact_step`): a step finds up to a bounded number of them in a read
//! transaction ([`plan_step`]), while applies go on, then removes them in a short write
//! transaction ([`remove_planned`]), so a compaction of millions of revisions never holds the
//! apply path for long. A version at or below the
//! compaction revision is unreadable when the key has a newer version also at or below it, or
//! when it is a tombstone below the compaction revision (nothing older survives it).
//!
//! A tombstone *at* the compaction revision stays: a watch may start (or a lagging watcher
//! resume its catch-up) at the compaction revision, and is owed that revision's deletes. etcd
//! dropped it until 3.4.34 / 3.5.15 (etcd issue 18089: "Watch dropping an event when
//! compacting on delete"), and keeps it since, as the Compact API says: only superseded
//! versions *below* the compaction revision are removed. The next compaction, at a higher
//! revision, removes it. What is physically left does not change any read, nor HashKV, which
//! hashes the logical content (`hash.rs`), so replicas may compact at their own pace.

use redb::ReadableTable;

use super::key_index::KeyIndex;
use super::mvcc::{RevKey, RevRecordView};
use super::tables::WriteTables;
use crate::error::Result;

/// What one step will remove, found in a read transaction: the write transaction that removes
/// it holds applies only for the removals (see `StateMachine::compact_step_bounded`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CompactPlan {
    /// The unreadable versions found: position in `kv_revs` and key.
    pub removals: Vec<(RevKey, Vec<u8>)>,
    /// Where the next step starts in `kv_revs`.
    pub next: RevKey,
    /// True when everything at or below the compaction revision has been looked at.
    pub done: bool,
}

/// Looks at up to `records_max` versions of `revs` from `from`, at or below
/// `compact_revision`, and lists the unreadable ones. Nothing but compaction changes a
/// version at or below the compaction revision, nor `index`'s entries there, so a plan made in a read transaction still holds when its write
/// transaction runs, as long as no other compaction step or snapshot install ran between.
pub(crate) fn plan_step(
    revs: &impl ReadableTable<RevKey, &'static [u8]>,
    index: &KeyIndex,
    compact_revision: u64,
    from: RevKey,
    records_max: u32,
) -> Result<CompactPlan> {
    assert!(records_max > 0);
    let mut looked_at: u32 = 0;
    let mut last: Option<RevKey> = None;
    let mut removals = Vec::new();
    for item in revs
        .range::<RevKey>(from..=(compact_revision, u32::MAX))?
        .take(records_max as usize)
    {
        let (position, bytes) = item?;
        let position = position.value();
        let record: RevRecordView<'_> =
            aspen_core::codec::decode_borrowed(bytes.value()).map_err(|source| {
                crate::error::StorageError::Codec {
                    table: "kv_revs",
                    source,
                }
            })?;
        looked_at += 1;
        last = Some(position);
        if compaction_removes(
            index,
            record.key,
            position.0,
            record.version == 0,
            compact_revision,
        )? {
            removals.push((position, record.key.to_vec()));
        }
    }
    assert!(looked_at <= records_max);
    assert!(removals.len() as u64 <= u64::from(looked_at));
    let next = match last {
        Some((main, sub)) => match sub.checked_add(1) {
            Some(next_sub) => (main, next_sub),
            None => (main + 1, 0),
        },
        None => from,
    };
    Ok(CompactPlan {
        removals,
        next,
        done: looked_at < records_max,
    })
}

/// Removes what `plan` found from `kv_revs` and from the key index. The caller has waited for
/// every reader that could read below the compaction revision (`wait_views_compacted_to`),
/// so no reader needs the index entries, whether or not the transaction commits.
pub(crate) fn remove_planned(
    tables: &mut WriteTables<'_>,
    index: &KeyIndex,
    plan: &CompactPlan,
) -> Result<()> {
    let revs = tables.revs_mut()?;
    for ((main, sub), key) in &plan.removals {
        if let Some((found, entry)) = index.entry_at(key, *main)
            && found == *main
        {
            assert_eq!(entry.sub_revision, *sub, "key index and kv_revs disagree");
            index.remove(key, *main);
        }
        let version = revs.remove((*main, *sub))?;
        assert!(version.is_some(), "a planned removal is not in kv_revs");
    }
    Ok(())
}

/// Whether compaction at `compact_revision` removes `key`'s version at `main`: a tombstone
/// below the compaction revision, or a version a newer one at or below it supersedes. The
/// version at the compaction revision itself always stays, a tombstone too (see the module
/// doc).
fn compaction_removes(
    index: &KeyIndex,
    key: &[u8],
    main: u64,
    is_tombstone: bool,
    compact_revision: u64,
) -> Result<bool> {
    assert!(main <= compact_revision);
    if main == compact_revision {
        return Ok(false);
    }
    if is_tombstone {
        return Ok(true);
    }
    // The newest version at or below the compaction revision stays; with none there, the key's
    // versions ended in a tombstone that compaction removed already.
    Ok(index
        .entry_at(key, compact_revision)
        .is_none_or(|(newest, _)| newest > main))
}

#[cfg(test)]
mod tests {
    use aspen_core::limits::Limits;
    use aspen_core::type_config::alias::Entry;
    use aspen_core::{Command, DeleteRangeRequest, PutRequest, TypeConfig};
    use openraft::EntryPayload;
    use redb::ReadableTable;

    use crate::schema;
    use crate::{StateMachine, StorageBackend, open_storage};

    fn apply(sm: &StateMachine, index: &mut u64, command: Command) {
        *index += 1;
        let entry: Entry = openraft::Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, *index),
            payload: EntryPayload::Normal(command),
        };
        let response = sm.apply_entries(&[entry]).expect("apply");
        assert!(response[0].result.is_ok(), "{response:?}");
    }

    fn put(key: &[u8]) -> Command {
        Command::Put(PutRequest {
            key: key.to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
    }

    fn compact(sm: &StateMachine, index: &mut u64, revision: u64) {
        apply(
            sm,
            index,
            Command::Compact {
                revision,
                physical: true,
            },
        );
        sm.compact_until_done().expect("compact");
    }

    /// The versions `kv_revs` holds, by (revision, sub-revision).
    fn stored(sm: &StateMachine) -> Vec<(u64, u32)> {
        let db = sm.store().state_db();
        let txn = sm.store().begin_state_read(&db).expect("read");
        let revs = txn.open_table(schema::KV_REVS).expect("kv_revs");
        let positions: Vec<(u64, u32)> = revs
            .iter()
            .expect("iter")
            .map(|item| item.expect("item").0.value())
            .collect();
        assert_eq!(sm.store().shared.key_index.len(), positions.len() as u64);
        positions
    }

    fn delete(key: &[u8]) -> Command {
        Command::DeleteRange(DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })
    }

    /// Revisions 2 to 6: put a, put b, delete a, delete b, put c; then a compaction at 5.
    fn compacted_at_5() -> (StateMachine, u64) {
        let (_log, sm) = open_storage(&StorageBackend::InMemory, Limits::default()).expect("open");
        let mut index = 0;
        for command in [put(b"a"), put(b"b"), delete(b"a"), delete(b"b"), put(b"c")] {
            apply(&sm, &mut index, command);
        }
        compact(&sm, &mut index, 5);
        (sm, index)
    }

    /// A tombstone at the compaction revision stays (a watch from there is owed the delete;
    /// simulator seed 17150), one below it goes, and so does the kept one at the next
    /// compaction.
    #[test]
    fn a_tombstone_at_the_compaction_revision_stays_until_the_next_compaction() {
        let (sm, mut index) = compacted_at_5();
        // a's put and tombstone (below 5) and b's put (superseded) are gone; b's tombstone at
        // the compaction revision stays, and the history reader still finds it there.
        assert_eq!(stored(&sm), vec![(5, 0), (6, 0)]);
        let events = sm
            .reader()
            .events(&aspen_core::keys::KeyRange::new(b"a", b"z"), 5, 6, 10)
            .expect("read")
            .expect("not compacted");
        let positions: Vec<(u64, aspen_core::EventKind)> = events
            .events
            .iter()
            .map(|e| (e.revision(), e.kind))
            .collect();
        assert_eq!(
            positions,
            vec![
                (5, aspen_core::EventKind::Delete),
                (6, aspen_core::EventKind::Put)
            ]
        );

        apply(&sm, &mut index, put(b"d")); // 7
        compact(&sm, &mut index, 7);
        assert_eq!(stored(&sm), vec![(6, 0), (7, 0)]);
    }

    /// HashKV leaves the kept tombstone out: a replica that holds it and one that compacted
    /// before this rule (and so removed it) agree.
    #[test]
    fn hash_kv_is_the_same_with_or_without_the_kept_tombstone() {
        let (kept, _) = compacted_at_5();
        let (removed, _) = compacted_at_5();
        {
            let db = removed.store().state_db();
            let txn = removed.store().begin_state_write(&db).expect("write");
            {
                let mut revs = txn.open_table(schema::KV_REVS).expect("kv_revs");
                assert!(revs.remove((5, 0)).expect("remove").is_some());
                removed.store().shared.key_index.remove(b"b", 5);
            }
            txn.commit().expect("commit");
        }
        assert_eq!(stored(&kept), vec![(5, 0), (6, 0)]);
        assert_eq!(stored(&removed), vec![(6, 0)]);
        let hash = |sm: &StateMachine| sm.reader().hash_kv(6).expect("hash").expect("in range");
        assert_eq!(hash(&kept), hash(&removed));
    }
}
