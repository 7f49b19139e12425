//! The key index's recent entries, in memory: applies write `kv_index` entries here instead of
//! into redb, and a flush writes them into `kv_index` in key order on the state database's
//! durability cadence (etcd keeps its whole key index in memory; this keeps only what is not
//! yet in `kv_index`).
//!
//! Why: a put's index entry lands at a random place in `kv_index`, so every apply batch copied
//! (copy-on-write) one leaf page per put, and committed them. Gathered here and flushed once
//! `OVERLAY_FLUSH_ENTRIES` are waiting (and at snapshot points, before compaction, and by the
//! durable commits of shutdown and log purges), each leaf is copied once per flush however
//! many puts hit it, and an apply batch's own commit dirties only the right edge of `kv_revs`
//! and the meta.
//!
//! The contract between the overlay and the database (`sm_meta`'s `index_flushed`, "f"):
//!
//! - In every committed state, `kv_index` holds exactly the index entries at revisions <= f;
//!   a flush writes the overlay's entries and sets f to the store revision in one transaction.
//!   So an entry found in the overlay is newer than any in `kv_index`.
//! - The overlay holds every index entry above `floor` that it was given. Entries leave it only
//!   when a flush that wrote them into `kv_index` has committed, and then only one flush later
//!   (`retired`), so a read that began just before a flush still finds them.
//! - A reader takes a read transaction, reads its f and revision R, and copies the overlay's
//!   entries in (f, R] (`copy`). If `floor > f` the entries it needs may be gone: it starts
//!   again with a newer transaction. The union of both is the index as of its transaction.
//! - Only the holder of the state database's write transaction changes the overlay's entries
//!   (the apply, the compactor, an install), so a writer reads it without copying.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use aspen_core::keys::KeyRange;
use redb::ReadableTable;

use super::latest::{Latest, LatestEntry};
use super::mvcc::{IndexRecord, RevKey, RevRecord};
use crate::error::{Result, decode};
use crate::schema;

/// Entries the overlay holds before they are flushed into `kv_index` (~100 bytes each; the
/// writer's lookups do not read them, `latest.rs`), in a commit of its own after the batch
/// that reached it is answered (`AfterAnswer` in `state_machine/mod.rs`). Durable commits do
/// not flush (session 20): a crash leaves at most this many entries to rebuild from
/// `kv_revs` (`load`). Until session 19 every durable commit flushed too, and at 256 clients
/// that commit held applies for about 40 ms every 500 ms (a 19 ms flush of ~16,500 entries,
/// 8.5 ms writing 9.5 MB, 8.5 ms syncing): with the flush apart and both after the answers,
/// the put p99 fell from 42-46 ms to 25-28 (`bench/node-ab`, three alternating runs). The
/// bound is about what one durable commit's flush held at 30k puts/s, so the pages a flush
/// dirties stay what they were at 1M keys; session 17's flush on a bound of 65,536 alone
/// raised RSS at 1M keys (630 MiB against 520). One batch's own entries are never split: a
/// batch that grows past it flushes after it.
pub(crate) const OVERLAY_FLUSH_ENTRIES: usize = 16_384;

/// A key's entries in one map, oldest first (revisions only grow while a map is active).
type Versions = Vec<(u64, IndexRecord)>;
/// Entries by key: a lookup borrows the key, nothing is allocated.
type Entries = BTreeMap<Vec<u8>, Versions>;

/// One copied entry: (key, main revision, record).
pub(crate) type CopiedEntry = (Vec<u8>, u64, IndexRecord);

#[derive(Debug, Default)]
pub(crate) struct IndexOverlay {
    layers: RwLock<Layers>,
    /// Held by a flush from its start to its end (commit and `Flush::finish`, or drop), and by
    /// `reset`. Writers take it inside their write transaction, whose lock a flush's commit
    /// releases before the flush ends: without it, another writer's flush (or an install)
    /// could start, commit and end in between, and the two ends would drop each other's
    /// entries from memory while readers still needed them.
    serial: Mutex<()>,
}

/// A flush in progress (see [`IndexOverlay::begin_flush`]); no other starts until it ends.
/// Dropped without [`Flush::finish`] (its transaction did not commit), its entries stay in
/// memory and the next flush writes them again.
pub(crate) struct Flush<'o> {
    overlay: &'o IndexOverlay,
    entries: Arc<Entries>,
    _serial: MutexGuard<'o, ()>,
}

impl Flush<'_> {
    /// The entries to write into `kv_index`, by key, each key's revisions in order.
    pub fn entries(&self) -> &Entries {
        &self.entries
    }

    /// The flush's transaction committed with `index_flushed = flushed`.
    pub fn finish(self, flushed: u64) {
        let mut layers = self.overlay.write();
        assert!(
            flushed >= layers.last_flushed,
            "flushed revision moved back"
        );
        let flushing = std::mem::take(&mut layers.flushing);
        let old_retired = std::mem::replace(&mut layers.retired, flushing);
        layers.floor = layers.last_flushed;
        layers.last_flushed = flushed;
        drop(layers);
        drop(old_retired);
    }
}

#[derive(Debug, Default)]
struct Layers {
    /// Every entry above this revision that the overlay was given is still in one of the maps.
    floor: u64,
    /// The f of the last finished flush: `floor` once the next flush finishes.
    last_flushed: u64,
    /// Entries given since the last flush began, and how many.
    active: Entries,
    active_len: usize,
    /// Entries a flush is writing into `kv_index` (its transaction has not committed yet).
    flushing: Arc<Entries>,
    /// Entries the last finished flush wrote, kept one flush longer for readers (see above).
    /// The writer never needs them: its transaction holds them in `kv_index`.
    retired: Arc<Entries>,
    /// Every key's newest entry, for the writer's lookups (`latest.rs`).
    latest: Latest,
}

/// Which maps a lookup consults.
#[derive(Clone, Copy)]
enum Who {
    Writer,
    Reader,
}

/// The newest of `versions` in `(above, at_most]`.
fn newest_in(versions: &Versions, above: u64, at_most: u64) -> Option<(u64, IndexRecord)> {
    let past = versions.partition_point(|(main, _)| *main <= at_most);
    let (main, record) = versions.get(past.checked_sub(1)?)?;
    (*main > above).then_some((*main, *record))
}

impl Layers {
    fn maps(&self, who: Who) -> impl Iterator<Item = &Entries> {
        let retired = match who {
            Who::Writer => None,
            Who::Reader => Some(&*self.retired),
        };
        [Some(&self.active), Some(&*self.flushing), retired]
            .into_iter()
            .flatten()
            .filter(|map| !map.is_empty())
    }

    /// `key`'s newest entry in `(above, at_most]`, in any map `who` consults.
    fn entry_at(
        &self,
        who: Who,
        key: &[u8],
        above: u64,
        at_most: u64,
    ) -> Option<(u64, IndexRecord)> {
        if at_most <= above {
            return None;
        }
        self.maps(who)
            .filter_map(|map| newest_in(map.get(key)?, above, at_most))
            .max_by_key(|(main, _)| *main)
    }

    fn copy(
        &self,
        who: Who,
        range: Option<&KeyRange>,
        above: u64,
        at_most: u64,
    ) -> Vec<CopiedEntry> {
        let mut copied: Vec<CopiedEntry> = Vec::new();
        if at_most <= above || range.is_some_and(KeyRange::is_empty) {
            return copied;
        }
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) = match range {
            None => (Bound::Unbounded, Bound::Unbounded),
            Some(range) => range.bounds(),
        };
        for map in self.maps(who) {
            for (key, versions) in map.range::<[u8], _>(bounds) {
                for (main, record) in versions {
                    if *main > above && *main <= at_most {
                        copied.push((key.clone(), *main, *record));
                    }
                }
            }
        }
        copied.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        copied.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        copied
    }
}

impl IndexOverlay {
    /// An empty overlay for a database whose `kv_index` is complete up to `flushed`.
    pub fn new(flushed: u64) -> IndexOverlay {
        IndexOverlay {
            layers: RwLock::new(Layers {
                floor: flushed,
                last_flushed: flushed,
                ..Layers::default()
            }),
            serial: Mutex::new(()),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Layers> {
        // A panic while holding the lock leaves the maps whole (each change is one call).
        self.layers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Layers> {
        self.layers
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Entries waiting for a flush (the active ones).
    pub fn active_len(&self) -> usize {
        self.read().active_len
    }

    /// Adds an entry (writer only); returns the entry it replaced at the same position.
    pub fn insert(&self, key: &[u8], main: u64, record: IndexRecord) -> Option<IndexRecord> {
        let mut layers = self.write();
        assert!(
            main > layers.floor,
            "index entry at or below the flushed revision"
        );
        let layers = &mut *layers;
        let versions = match layers.active.get_mut(key) {
            Some(versions) => versions,
            None => layers.active.entry(key.to_vec()).or_default(),
        };
        let replaced = match versions.last_mut() {
            Some((last, replaced)) if *last == main => Some(std::mem::replace(replaced, record)),
            last => {
                assert!(
                    last.is_none_or(|(last, _)| *last < main),
                    "index entries out of revision order"
                );
                versions.push((main, record));
                layers.active_len += 1;
                None
            }
        };
        layers.latest.record(key, main, record);
        replaced
    }

    /// The writer's lookup of `key`'s newest entry in memory: `Some(None)` if it has none,
    /// None if that is not known yet (read the index).
    pub fn latest_entry(&self, key: &[u8]) -> Option<Option<LatestEntry>> {
        self.read().latest.get(key)
    }

    /// Where the in-memory newest entries still need loading from (writer only; None once
    /// complete).
    pub fn latest_load_from(&self) -> Option<Vec<u8>> {
        self.read().latest.load_from().map(<[u8]>::to_vec)
    }

    /// One loaded chunk of newest entries (writer only; `Latest::load_chunk`).
    pub fn latest_load_chunk(&self, entries: Vec<(Vec<u8>, LatestEntry)>, next: Option<Vec<u8>>) {
        self.write().latest.load_chunk(entries, next);
    }

    /// Compaction removed `key`'s version at `main` (writer only).
    pub fn latest_removed(&self, key: &[u8], main: u64) {
        self.write().latest.forget_tombstone(key, main);
    }

    /// The writer's view: `key`'s newest entry at or below `at_most` in the overlay (none
    /// means `kv_index` has the newest, if any).
    pub fn entry_at(&self, key: &[u8], at_most: u64) -> Option<(u64, IndexRecord)> {
        self.read().entry_at(Who::Writer, key, 0, at_most)
    }

    /// A reader's copy of the entries in `range` (every key if None) at revisions in
    /// `(above, at_most]`, sorted by (key, revision); None if some of them may be gone
    /// (`floor > above`): read again from a newer transaction.
    pub fn copy(
        &self,
        range: Option<&KeyRange>,
        above: u64,
        at_most: u64,
    ) -> Option<Vec<CopiedEntry>> {
        let layers = self.read();
        if layers.floor > above {
            return None;
        }
        Some(layers.copy(Who::Reader, range, above, at_most))
    }

    /// The writer's copy: as [`IndexOverlay::copy`] without the floor check and without the
    /// retired entries (the writer's transaction holds them, and all a finished flush dropped).
    pub fn copy_unchecked(
        &self,
        range: Option<&KeyRange>,
        above: u64,
        at_most: u64,
    ) -> Vec<CopiedEntry> {
        self.read().copy(Who::Writer, range, above, at_most)
    }

    /// Starts a flush (writer only, inside its write transaction; waits for one in progress
    /// to end): the active entries move to `flushing`, still visible, and are handed out for
    /// writing into `kv_index`.
    pub fn begin_flush(&self) -> Flush<'_> {
        let serial = self.serial();
        let mut layers = self.write();
        let active = std::mem::take(&mut layers.active);
        layers.active_len = 0;
        if layers.flushing.is_empty() {
            layers.flushing = Arc::new(active);
        } else {
            // An earlier flush did not commit: its entries are flushed again with these (newer
            // revisions, so each key's list stays in order).
            let mut merged = (*layers.flushing).clone();
            for (key, versions) in active {
                merged.entry(key).or_default().extend(versions);
            }
            layers.flushing = Arc::new(merged);
        }
        Flush {
            overlay: self,
            entries: Arc::clone(&layers.flushing),
            _serial: serial,
        }
    }

    fn serial(&self) -> MutexGuard<'_, ()> {
        self.serial
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A writer's transaction that added entries above `committed_revision` did not commit:
    /// those entries never happened. A flush it began is retried by the next one.
    pub fn discard_above(&self, committed_revision: u64) {
        let mut layers = self.write();
        // The newest entries it recorded may be gone, and what they replaced is not kept.
        layers.latest.restart_load();
        let kept = |map: &mut Entries| {
            map.retain(|_, versions| {
                versions.retain(|(main, _)| *main <= committed_revision);
                !versions.is_empty()
            });
            map.values().map(Vec::len).sum::<usize>()
        };
        layers.active_len = kept(&mut layers.active);
        let newer_flushing = layers.flushing.values().any(|versions| {
            versions
                .last()
                .is_some_and(|(main, _)| *main > committed_revision)
        });
        if newer_flushing {
            let mut flushing = (*layers.flushing).clone();
            kept(&mut flushing);
            layers.flushing = Arc::new(flushing);
        }
    }

    /// The whole index was replaced (snapshot install, import) and is complete up to
    /// `flushed`: everything here is dropped, and readers of older transactions start again.
    pub fn reset(&self, flushed: u64) {
        let _serial = self.serial();
        let mut layers = self.write();
        let floor = flushed.max(layers.last_flushed);
        let old = std::mem::replace(
            &mut *layers,
            Layers {
                floor,
                last_flushed: flushed,
                ..Layers::default()
            },
        );
        drop(layers);
        drop(old);
    }
}

/// `sm_meta`'s `index_flushed` (f): `kv_index` holds every entry at or below it. A database
/// written before the overlay existed has none, and its `kv_index` is complete: f is its
/// revision then.
pub(crate) fn read_flushed(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    revision: u64,
) -> Result<u64> {
    match table.get(schema::SM_INDEX_FLUSHED)? {
        Some(bytes) => decode("sm_meta", bytes.value()),
        None => Ok(revision),
    }
}

pub(crate) fn write_flushed(txn: &redb::WriteTransaction, flushed: u64) -> Result<()> {
    let mut table = txn.open_table(schema::SM_META)?;
    table.insert(
        schema::SM_INDEX_FLUSHED,
        aspen_core::codec::encode(&flushed).as_slice(),
    )?;
    Ok(())
}

/// Writes the overlay's active entries into `kv_index` in `txn` and records f = `revision`
/// (the store revision `txn` commits: every entry at or below it is in the overlay or the
/// table). Once `txn` has committed, call [`Flush::finish`] with `revision`; until then no
/// other flush starts.
pub(crate) fn flush_into<'o>(
    txn: &redb::WriteTransaction,
    overlay: &'o IndexOverlay,
    revision: u64,
) -> Result<Flush<'o>> {
    let flush = overlay.begin_flush();
    {
        let mut index = txn.open_table(schema::KV_INDEX)?;
        let mut buffer = Vec::with_capacity(64);
        for (key, versions) in flush.entries() {
            for (main, record) in versions {
                assert!(*main <= revision, "flushing an entry above the revision");
                buffer.clear();
                aspen_core::codec::encode_into(record, &mut buffer);
                index.insert((key.as_slice(), *main), buffer.as_slice())?;
            }
        }
    }
    write_flushed(txn, revision)?;
    Ok(flush)
}

/// The overlay for a state database just opened: its f, and the entries above f rebuilt from
/// `kv_revs` (every record carries what its index entry holds). After a clean close or a
/// durable commit f is the revision and nothing is rebuilt; after a crash, at most what was
/// applied since the last flush. Records f if the database had none.
pub(crate) fn load(db: &redb::Database) -> Result<IndexOverlay> {
    use redb::ReadableDatabase;
    let (flushed, revision, recorded) = {
        let txn = db.begin_read()?;
        let state = super::read_applied(&txn)?;
        let meta = txn.open_table(schema::SM_META)?;
        let recorded = meta.get(schema::SM_INDEX_FLUSHED)?.is_some();
        (
            read_flushed(&meta, state.revision)?,
            state.revision,
            recorded,
        )
    };
    if !recorded {
        let mut txn = db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        write_flushed(&txn, flushed)?;
        txn.commit()?;
    }
    assert!(flushed <= revision, "index flushed past the store revision");
    let overlay = IndexOverlay::new(flushed);
    if flushed < revision {
        let txn = db.begin_read()?;
        let revs = txn.open_table(schema::KV_REVS)?;
        let mut rebuilt: u64 = 0;
        for item in revs.range::<RevKey>((flushed + 1, 0)..)? {
            let (position, bytes) = item?;
            let (main, sub) = position.value();
            let record: RevRecord = decode("kv_revs", bytes.value())?;
            let entry = IndexRecord {
                sub_revision: sub,
                create_revision: record.create_revision,
                version: record.version,
                lease: record.lease,
            };
            overlay.insert(&record.key, main, entry);
            rebuilt += 1;
        }
        tracing::debug!(flushed, revision, rebuilt, "key index overlay rebuilt");
    }
    Ok(overlay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: u64) -> IndexRecord {
        IndexRecord::of_version(version)
    }

    #[test]
    fn a_reader_sees_entries_above_its_flushed_revision_up_to_its_revision() {
        let overlay = IndexOverlay::new(1);
        overlay.insert(b"a", 2, record(1));
        overlay.insert(b"a", 3, record(2));
        overlay.insert(b"b", 4, record(1));
        let copied = overlay.copy(None, 1, 3).expect("floor 1");
        assert_eq!(
            copied,
            vec![(b"a".to_vec(), 2, record(1)), (b"a".to_vec(), 3, record(2))]
        );
        assert_eq!(overlay.entry_at(b"a", u64::MAX), Some((3, record(2))));
        assert_eq!(overlay.entry_at(b"a", 2), Some((2, record(1))));
        assert_eq!(overlay.entry_at(b"b", 3), None);
        let single = overlay
            .copy(Some(&KeyRange::Single(b"a".to_vec())), 1, 4)
            .expect("floor 1");
        assert_eq!(
            single,
            vec![(b"a".to_vec(), 2, record(1)), (b"a".to_vec(), 3, record(2))]
        );
    }

    #[test]
    fn flushed_entries_stay_one_flush_longer_then_readers_start_again() {
        let overlay = IndexOverlay::new(0);
        overlay.insert(b"a", 1, record(1));
        let flushing = overlay.begin_flush();
        assert_eq!(flushing.entries().len(), 1);
        // While the flush is uncommitted, and after it, a reader of the old state finds it.
        assert_eq!(overlay.copy(None, 0, 1).expect("floor 0").len(), 1);
        flushing.finish(1);
        assert_eq!(overlay.copy(None, 0, 1).expect("floor 0").len(), 1);
        overlay.insert(b"a", 2, record(2));
        overlay.begin_flush().finish(2);
        // Two flushes later, a reader whose transaction predates both must start again.
        assert!(overlay.copy(None, 0, 2).is_none());
        // One whose transaction saw the first flush finds the second's entries.
        assert_eq!(
            overlay.copy(None, 1, 2).expect("floor 1"),
            vec![(b"a".to_vec(), 2, record(2))]
        );
    }

    #[test]
    fn a_flush_waits_for_the_one_in_progress_to_end() {
        // The compactor's flush has committed but not ended when an apply's flush starts: the
        // second must wait, or its end and the first's would drop each other's entries.
        let overlay = Arc::new(IndexOverlay::new(0));
        overlay.insert(b"a", 1, record(1));
        let first = overlay.begin_flush();
        let second_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let second = {
            let (overlay, done) = (Arc::clone(&overlay), Arc::clone(&second_done));
            std::thread::spawn(move || {
                overlay.begin_flush().finish(2);
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            !second_done.load(std::sync::atomic::Ordering::SeqCst),
            "a second flush ran while the first was in progress"
        );
        first.finish(1);
        second.join().expect("second flush");
        // A reader whose transaction saw the first flush still finds the entry it needs.
        assert_eq!(overlay.copy(None, 1, 2).expect("floor 1"), Vec::new());
        assert_eq!(
            overlay.copy(None, 0, 1),
            None,
            "two flushes ended: a reader from before both starts again"
        );
    }

    #[test]
    fn an_uncommitted_batch_is_discarded_and_an_uncommitted_flush_is_retried() {
        let overlay = IndexOverlay::new(0);
        overlay.insert(b"a", 1, record(1));
        // A flush whose transaction does not commit: dropped unfinished.
        drop(overlay.begin_flush());
        overlay.insert(b"b", 2, record(1));
        overlay.discard_above(1);
        assert_eq!(overlay.active_len(), 0);
        overlay.insert(b"c", 2, record(1));
        let again = overlay.begin_flush();
        assert_eq!(
            again.entries().len(),
            2,
            "the failed flush's entry and the new one"
        );
        drop(again);
        overlay.reset(5);
        assert!(overlay.copy(None, 2, 5).is_none());
        assert_eq!(overlay.copy(None, 5, 9).expect("floor 5"), Vec::new());
    }
}
