//! The key index, all of it in memory, as etcd's `treeIndex`: for every key, the (main
//! revision, [`IndexRecord`]) of each of its versions that compaction has not removed, oldest
//! first. `kv_revs` holds the versions themselves, by revision; nothing about the index is
//! written per put. A checkpoint of it is written to a file of its own now and then
//! (`index_checkpoint.rs`), and an open loads that and replays the `kv_revs` records above it.
//!
//! Why: kept in a redb table, every put inserted one entry at a random place in it, and redb
//! rebuilds the leaf on each insert: at 1M keys that was more than half of an apply's time
//! however the inserts were batched (session 23's profile of `storage_bench`).
//!
//! The contract with readers:
//!
//! - The writer (the holder of the state database's write transaction: an apply, the
//!   compactor, an install) is the only one to change the index. An apply adds entries before
//!   its transaction commits; a reader only uses entries at or below the store revision its
//!   own read transaction holds, so it never sees a batch that its transaction does not.
//! - A batch whose transaction does not commit takes its entries back (`discard_above`).
//! - Compaction removes versions that no read at or above the compaction revision needs. A
//!   reader whose transaction predates the `Compact` may still read below it, so every reader
//!   registers a [`View`] before its transaction begins, and the compactor waits until every
//!   registered view has seen the compaction (`wait_views_compacted_to`).
//! - An install or an import replaces the whole index: it waits for every view to end and
//!   admits no new one until it has committed and swapped the index in (`exclusive`).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use aspen_core::keys::KeyRange;

use super::key_bytes::KeyBytes;
use super::mvcc::{EntryVisitor, IndexRecord, IndexSource};
use crate::error::Result;

/// A key's versions, oldest first.
pub(crate) type Versions = Vec<(u64, IndexRecord)>;
/// Every key's versions, by key.
pub(crate) type KeyMap = BTreeMap<KeyBytes, Versions>;
/// Keys copied out of the index with their versions, in key order.
pub(crate) type Chunk = Vec<(Vec<u8>, Versions)>;

/// Keys a reader's walk copies per hold of the read lock: the writer waits at most one chunk.
const VISIT_CHUNK_KEYS: usize = 1024;

/// How long the compactor or an install waits for readers before it logs that it still waits.
const VIEW_WAIT_LOG_MS: u64 = 1_000;

#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    map: RwLock<Entries>,
    views: Mutex<Views>,
    views_changed: Condvar,
    /// Bumped by each [`KeyIndex::replace`]: an unregistered view checks it (see [`Stamp`]).
    generation: AtomicU64,
    /// The highest compaction revision whose index removals have started.
    removing_for: AtomicU64,
}

/// What an unregistered view (a deferred snapshot's, which may live for long and so must not
/// hold compaction or installs back) records before its transaction begins, and checks before
/// and after it reads: if an install replaced the index, or a compaction above the view's
/// started removing entries, what it read may be wrong and it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    generation: u64,
}

#[derive(Debug, Default)]
struct Entries {
    keys: KeyMap,
    /// Entries in `keys`, over all keys.
    len: u64,
}

/// The registered reader views, by the compaction revision each one's transaction holds
/// (`VIEW_PENDING` until it is known).
#[derive(Debug, Default)]
struct Views {
    by_compact_revision: BTreeMap<u64, u64>,
    /// While an install or import replaces the index, no view opens.
    exclusive: bool,
    /// Threads in `wait_views` (the compactor, an install): a view that moves wakes them only
    /// if there are any, so a read costs no `futex` wake.
    waiters: u32,
}

/// A view whose transaction has not begun or not been read yet: it holds back every compaction.
const VIEW_PENDING: u64 = 0;

/// The newest of `versions` at or below `at_most`.
fn newest_at(versions: &Versions, at_most: u64) -> Option<(u64, IndexRecord)> {
    let past = versions.partition_point(|(main, _)| *main <= at_most);
    versions.get(past.checked_sub(1)?).copied()
}

/// What compaction at `compact_revision` keeps of `versions` (the rule of `compact.rs`): above
/// it, everything; at or below it, only the newest version there, and that only if it is not
/// a tombstone below the compaction revision. Returns the removed entries' revisions.
pub(crate) fn compact_versions(versions: &mut Versions, compact_revision: u64) -> Vec<u64> {
    let at_or_below = versions.partition_point(|(main, _)| *main <= compact_revision);
    let Some(newest) = at_or_below.checked_sub(1) else {
        return Vec::new();
    };
    let (newest_main, newest_record) = versions[newest];
    let drop_newest = newest_record.is_tombstone() && newest_main < compact_revision;
    let removed_len = if drop_newest { newest + 1 } else { newest };
    versions
        .drain(..removed_len)
        .map(|(main, _)| main)
        .collect()
}

impl KeyIndex {
    /// An index holding `keys` (each key's versions in revision order).
    pub fn from_map(keys: KeyMap) -> KeyIndex {
        let len = keys.values().map(|v| v.len() as u64).sum();
        KeyIndex {
            map: RwLock::new(Entries { keys, len }),
            ..KeyIndex::default()
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Entries> {
        // Each change is one call that cannot panic half way: a poisoned map is whole.
        self.map
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Entries> {
        self.map
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn views(&self) -> MutexGuard<'_, Views> {
        self.views
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Entries held, over all keys.
    pub fn len(&self) -> u64 {
        self.read().len
    }

    /// Keys held (live or not).
    pub fn keys_len(&self) -> u64 {
        self.read().keys.len() as u64
    }

    /// Adds `key`'s entry at `main` (writer only); returns the entry it replaced at the same
    /// revision (a Txn writing one key twice: the last write wins).
    pub fn insert(&self, key: &[u8], main: u64, record: IndexRecord) -> Option<IndexRecord> {
        let mut map = self.write();
        let map = &mut *map;
        let Some(versions) = map.keys.get_mut(key) else {
            map.keys.insert(KeyBytes::from(key), vec![(main, record)]);
            map.len += 1;
            return None;
        };
        match versions.last_mut() {
            Some((last, replaced)) if *last == main => Some(std::mem::replace(replaced, record)),
            last => {
                assert!(
                    last.is_none_or(|(last, _)| *last < main),
                    "index entries out of revision order"
                );
                versions.push((main, record));
                map.len += 1;
                None
            }
        }
    }

    /// `key`'s newest entry at or below `at_most` (tombstones included).
    pub fn entry_at(&self, key: &[u8], at_most: u64) -> Option<(u64, IndexRecord)> {
        newest_at(self.read().keys.get(key)?, at_most)
    }

    /// A writer's transaction that added entries above `committed_revision` did not commit:
    /// they never happened. Rare (an I/O failure), so it walks every key.
    pub fn discard_above(&self, committed_revision: u64) {
        let mut map = self.write();
        let map = &mut *map;
        let mut removed: u64 = 0;
        map.keys.retain(|_, versions| {
            let kept = versions.partition_point(|(main, _)| *main <= committed_revision);
            removed += (versions.len() - kept) as u64;
            versions.truncate(kept);
            !versions.is_empty()
        });
        map.len -= removed;
    }

    /// Compaction removed `key`'s version at `main` (writer only, after the removal's commit;
    /// see [`KeyIndex::wait_views_compacted_to`]).
    pub fn remove(&self, key: &[u8], main: u64) {
        let mut map = self.write();
        let map = &mut *map;
        let Some(versions) = map.keys.get_mut(key) else {
            return;
        };
        if let Ok(position) = versions.binary_search_by_key(&main, |(m, _)| *m) {
            versions.remove(position);
            map.len -= 1;
            if versions.is_empty() {
                map.keys.remove(key);
            }
        }
    }

    /// Applies compaction at `compact_revision` to every key (an open, after loading: the
    /// checkpoint may hold versions that compaction removed since). Returns the entries removed.
    pub fn compact_all(&self, compact_revision: u64) -> u64 {
        if compact_revision == 0 {
            return 0;
        }
        let mut map = self.write();
        let map = &mut *map;
        let mut removed: u64 = 0;
        map.keys.retain(|_, versions| {
            removed += compact_versions(versions, compact_revision).len() as u64;
            !versions.is_empty()
        });
        map.len -= removed;
        removed
    }

    /// Replaces the whole index (an install or an import, holding [`KeyIndex::exclusive`]).
    pub fn replace(&self, keys: KeyMap) {
        let len = keys.values().map(|v| v.len() as u64).sum();
        let old = {
            let mut map = self.write();
            self.generation.fetch_add(1, Ordering::AcqRel);
            std::mem::replace(&mut *map, Entries { keys, len })
        };
        drop(old);
    }

    /// The compactor is about to remove entries that compaction at `compact_revision` made
    /// unreadable (after [`KeyIndex::wait_views_compacted_to`]).
    pub fn note_removing(&self, compact_revision: u64) {
        self.removing_for
            .fetch_max(compact_revision, Ordering::AcqRel);
    }

    /// An unregistered view's stamp: take it before the view's transaction begins.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            generation: self.generation.load(Ordering::Acquire),
        }
    }

    /// Whether an unregistered view stamped `stamp`, whose transaction holds
    /// `compact_revision`, still reads this index as its transaction's.
    pub fn still_matches(&self, stamp: Stamp, compact_revision: u64) -> bool {
        self.generation.load(Ordering::Acquire) == stamp.generation
            && self.removing_for.load(Ordering::Acquire) <= compact_revision
    }

    /// Copies up to `VISIT_CHUNK_KEYS` keys of `bounds` with their entries at or below
    /// `at_most` (keys with none are skipped); returns them and where the next chunk starts.
    fn copy_chunk(
        &self,
        bounds: (Bound<&[u8]>, Bound<&[u8]>),
        at_most: u64,
    ) -> (Chunk, Option<Vec<u8>>) {
        let map = self.read();
        let mut chunk = Vec::new();
        let mut last: Option<&KeyBytes> = None;
        for (walked, (key, versions)) in map.keys.range::<[u8], _>(bounds).enumerate() {
            if walked == VISIT_CHUNK_KEYS {
                return (chunk, last.map(|key| key.to_vec()));
            }
            last = Some(key);
            let visible = versions.partition_point(|(main, _)| *main <= at_most);
            if visible > 0 {
                chunk.push((key.to_vec(), versions[..visible].to_vec()));
            }
        }
        (chunk, None)
    }

    /// Registers a reader's view: call before its read transaction begins, then
    /// [`View::seen`] with the compaction revision that transaction holds.
    pub fn open_view(self: &Arc<Self>) -> View {
        let mut views = self.views();
        while views.exclusive {
            views = self
                .views_changed
                .wait(views)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        *views.by_compact_revision.entry(VIEW_PENDING).or_default() += 1;
        View {
            index: Arc::clone(self),
            compact_revision: VIEW_PENDING,
        }
    }

    fn move_view(&self, from: u64, to: Option<u64>) {
        let mut views = self.views();
        let count = views.by_compact_revision.entry(from).or_default();
        assert!(*count > 0, "a view moved that was not registered");
        *count -= 1;
        if *count == 0 {
            views.by_compact_revision.remove(&from);
        }
        if let Some(to) = to {
            *views.by_compact_revision.entry(to).or_default() += 1;
        }
        let waiters = views.waiters > 0;
        drop(views);
        if waiters {
            self.views_changed.notify_all();
        }
    }

    /// Waits until every registered view's transaction holds a compaction at or above
    /// `compact_revision`: none of them reads below it, so the versions it made unreadable can
    /// leave the index. A view that registers later begins its transaction after the
    /// `Compact` committed (the caller read it from a committed state).
    pub fn wait_views_compacted_to(&self, compact_revision: u64) {
        let _views = self.wait_views(|views| {
            views
                .by_compact_revision
                .first_key_value()
                .is_none_or(|(oldest, _)| *oldest >= compact_revision)
        });
    }

    fn wait_views(&self, done: impl Fn(&Views) -> bool) -> MutexGuard<'_, Views> {
        let started = std::time::Instant::now();
        let mut logged = false;
        let mut views = self.views();
        while !done(&views) {
            views.waiters += 1;
            let (mut guard, _) = self
                .views_changed
                .wait_timeout(views, std::time::Duration::from_millis(VIEW_WAIT_LOG_MS))
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            guard.waiters -= 1;
            views = guard;
            if !logged && started.elapsed().as_millis() >= u128::from(VIEW_WAIT_LOG_MS) {
                tracing::info!("key index: waiting for long reads to end");
                logged = true;
            }
        }
        views
    }

    /// Waits until no view is open and admits no new one until the returned guard drops: an
    /// install or import commits and calls [`KeyIndex::replace`] meanwhile, so no reader pairs
    /// a transaction with the other index.
    pub fn exclusive(&self) -> Exclusive<'_> {
        let mut views = self.wait_views(|views| !views.exclusive);
        views.exclusive = true;
        drop(views);
        drop(self.wait_views(|views| views.by_compact_revision.is_empty()));
        Exclusive { index: self }
    }

    /// A copy of every key's entries at or below `at_most`, in chunks (the checkpoint writer;
    /// the writer goes on between chunks). `visit` gets each chunk in key order.
    pub fn for_each_chunk(
        &self,
        at_most: u64,
        mut visit: impl FnMut(Chunk) -> Result<()>,
    ) -> Result<()> {
        self.walk_chunks((Bound::Unbounded, Bound::Unbounded), at_most, |chunk| {
            visit(chunk).map(|()| true)
        })
    }

    /// Copies the keys in `bounds` with their entries at or below `at_most` a chunk at a time
    /// (`copy_chunk`), handing each to `visit` with no lock held; `visit` returns false to
    /// stop.
    fn walk_chunks(
        &self,
        (start, end): (Bound<&[u8]>, Bound<&[u8]>),
        at_most: u64,
        mut visit: impl FnMut(Chunk) -> Result<bool>,
    ) -> Result<()> {
        let mut from: Bound<Vec<u8>> = start.map(<[u8]>::to_vec);
        loop {
            let (chunk, next) = self.copy_chunk((bound_ref(&from), end), at_most);
            if !visit(chunk)? {
                return Ok(());
            }
            match next {
                Some(last) => from = Bound::Excluded(last),
                None => return Ok(()),
            }
        }
    }
}

fn bound_ref(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Unbounded => Bound::Unbounded,
        Bound::Included(key) => Bound::Included(key.as_slice()),
        Bound::Excluded(key) => Bound::Excluded(key.as_slice()),
    }
}

/// A reader's registration (see [`KeyIndex::open_view`]); it ends when dropped.
#[derive(Debug)]
pub(crate) struct View {
    index: Arc<KeyIndex>,
    compact_revision: u64,
}

impl View {
    /// The view's transaction holds `compact_revision`.
    pub fn seen(&mut self, compact_revision: u64) {
        let to = compact_revision.max(1);
        self.index.move_view(self.compact_revision, Some(to));
        self.compact_revision = to;
    }
}

impl Drop for View {
    fn drop(&mut self) {
        self.index.move_view(self.compact_revision, None);
    }
}

/// Held by an install or an import while it replaces the index (see [`KeyIndex::exclusive`]).
pub(crate) struct Exclusive<'i> {
    index: &'i KeyIndex,
}

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        self.index.views().exclusive = false;
        self.index.views_changed.notify_all();
    }
}

/// The index as of a store revision: a reader's (its transaction's revision) or the writer's
/// (`u64::MAX`: every entry, its own batch's included).
pub(crate) struct IndexAt<'i> {
    pub index: &'i KeyIndex,
    pub revision: u64,
}

impl IndexSource for IndexAt<'_> {
    fn entry_at(&self, key: &[u8], at_revision: u64) -> Result<Option<(u64, IndexRecord)>> {
        Ok(self.index.entry_at(key, at_revision.min(self.revision)))
    }

    fn for_each_entry(&self, range: &KeyRange, visit: &mut EntryVisitor<'_>) -> Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        self.index
            .walk_chunks(range.bounds(), self.revision, |chunk| {
                for (key, versions) in chunk {
                    for (main, record) in versions {
                        if !visit(&key, main, record)? {
                            return Ok(false);
                        }
                    }
                }
                Ok(true)
            })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn record(version: u64) -> IndexRecord {
        IndexRecord::of_version(version)
    }

    fn all(index: &IndexAt<'_>, range: &KeyRange) -> Vec<(Vec<u8>, u64)> {
        let mut seen = Vec::new();
        index
            .for_each_entry(range, &mut |key, main, _| {
                seen.push((key.to_vec(), main));
                Ok(true)
            })
            .expect("walk");
        seen
    }

    #[test]
    fn a_reader_sees_entries_up_to_its_revision_only() {
        let index = KeyIndex::default();
        index.insert(b"a", 2, record(1));
        index.insert(b"a", 3, record(2));
        index.insert(b"b", 4, record(1));
        let reader = IndexAt {
            index: &index,
            revision: 3,
        };
        let every = KeyRange::new(b"\0", b"\0");
        assert_eq!(
            all(&reader, &every),
            vec![(b"a".to_vec(), 2), (b"a".to_vec(), 3)]
        );
        assert_eq!(
            reader.entry_at(b"a", u64::MAX).expect("ok"),
            Some((3, record(2)))
        );
        assert_eq!(reader.entry_at(b"b", u64::MAX).expect("ok"), None);
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn a_walk_crosses_chunks_in_key_order_and_stops_when_asked() {
        let index = KeyIndex::default();
        let keys = VISIT_CHUNK_KEYS * 2 + 7;
        for n in 0..keys {
            index.insert(format!("k{n:05}").as_bytes(), n as u64 + 1, record(1));
        }
        let writer = IndexAt {
            index: &index,
            revision: u64::MAX,
        };
        let seen = all(&writer, &KeyRange::new(b"k", b"l"));
        assert_eq!(seen.len(), keys);
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "key order");
        let mut visited = 0;
        writer
            .for_each_entry(&KeyRange::new(b"k", b"l"), &mut |_, _, _| {
                visited += 1;
                Ok(visited < 5)
            })
            .expect("walk");
        assert_eq!(visited, 5);
    }

    #[test]
    fn compaction_keeps_the_newest_version_and_drops_tombstones_below_it() {
        let mut versions: Versions = vec![(2, record(1)), (4, record(2)), (6, record(3))];
        assert_eq!(compact_versions(&mut versions, 5), vec![2]);
        assert_eq!(versions, vec![(4, record(2)), (6, record(3))]);
        let mut deleted: Versions = vec![(2, record(1)), (3, record(0))];
        assert_eq!(compact_versions(&mut deleted, 5), vec![2, 3]);
        assert!(deleted.is_empty());
        // A tombstone exactly at the compaction revision stays (watches starting there).
        let mut at: Versions = vec![(2, record(1)), (5, record(0))];
        assert_eq!(compact_versions(&mut at, 5), vec![2]);
        assert_eq!(at, vec![(5, record(0))]);

        let index = KeyIndex::default();
        index.insert(b"a", 1, record(1));
        index.insert(b"a", 2, record(0));
        index.insert(b"b", 3, record(1));
        assert_eq!(index.compact_all(3), 2);
        assert_eq!(index.keys_len(), 1);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn an_uncommitted_batch_is_discarded() {
        let index = KeyIndex::default();
        index.insert(b"a", 1, record(1));
        index.insert(b"a", 2, record(2));
        index.insert(b"b", 2, record(1));
        index.discard_above(1);
        assert_eq!(index.entry_at(b"a", u64::MAX), Some((1, record(1))));
        assert_eq!(index.entry_at(b"b", u64::MAX), None);
        assert_eq!(index.len(), 1);
        assert_eq!(index.keys_len(), 1);
    }

    #[test]
    fn the_compactor_waits_for_views_older_than_its_compaction() {
        let index = Arc::new(KeyIndex::default());
        let mut old = index.open_view();
        old.seen(3);
        let done = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (index, done) = (Arc::clone(&index), Arc::clone(&done));
            std::thread::spawn(move || {
                index.wait_views_compacted_to(5);
                done.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!done.load(Ordering::SeqCst), "went past a view at 3");
        // A view that has seen the compaction does not hold it back.
        let mut new = index.open_view();
        new.seen(5);
        drop(old);
        waiter.join().expect("waiter");
        assert!(done.load(Ordering::SeqCst));
        drop(new);
    }

    #[test]
    fn an_unregistered_view_is_refused_after_an_install_or_a_newer_compaction() {
        let index = KeyIndex::default();
        let stamp = index.stamp();
        assert!(index.still_matches(stamp, 3));
        index.note_removing(3);
        assert!(index.still_matches(stamp, 3), "a compaction it has seen");
        index.note_removing(4);
        assert!(
            !index.still_matches(stamp, 3),
            "a newer compaction removes entries"
        );
        let stamp = index.stamp();
        index.replace(KeyMap::new());
        assert!(
            !index.still_matches(stamp, 4),
            "an install replaced the index"
        );
    }

    #[test]
    fn an_install_waits_for_every_view_and_holds_new_ones_back() {
        let index = Arc::new(KeyIndex::default());
        let mut open = index.open_view();
        open.seen(1);
        let installed = Arc::new(AtomicBool::new(false));
        let installer = {
            let (index, installed) = (Arc::clone(&index), Arc::clone(&installed));
            std::thread::spawn(move || {
                let exclusive = index.exclusive();
                index.replace(KeyMap::from([(
                    KeyBytes::from(b"x".as_slice()),
                    vec![(9, record(1))],
                )]));
                installed.store(true, Ordering::SeqCst);
                drop(exclusive);
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            !installed.load(Ordering::SeqCst),
            "replaced under an open view"
        );
        drop(open);
        installer.join().expect("installer");
        let later = index.open_view();
        assert_eq!(index.entry_at(b"x", u64::MAX), Some((9, record(1))));
        drop(later);
    }
}
