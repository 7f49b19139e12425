//! Every key's newest index entry, in memory: what an apply looks up for each key it writes
//! (its create revision, version, lease and where its value is), without descending `kv_index`.
//!
//! Why: at 1M keys a put's lookup of its key in `kv_index` (a redb B-tree descent, most often
//! finding nothing for a new key) took 22% of an apply's time, and the overlay's maps another
//! 10% (`docs/performance.md`, session 17). etcd keeps its whole key index in memory; this
//! keeps the newest entry of each key, which is all a write needs.
//!
//! How it stays exact:
//! - Only the holder of the state database's write transaction changes it, in the same calls
//!   that give the overlay its entries (`IndexOverlay::insert`), so an entry here is always the
//!   newest the writer has written for its key.
//! - After an open it is filled from `kv_index` and the overlay by the writer itself, a chunk
//!   of keys per apply batch, in key order (`load_chunk`), from inside its write transaction:
//!   what it reads is the index as the writer has it. Keys below `loaded_to` are complete; a
//!   key above it that is not in the map is unknown, and the caller reads the index instead.
//! - A batch whose transaction does not commit, an install and an import change the index
//!   under it: it is emptied and loaded again (`restart_load`).
//! - Compaction removes a key whose newest entry is a tombstone at or below the compaction
//!   revision; a tombstone here reads as "no such key" either way, and the compactor drops it
//!   (`forget_tombstone`) so a store whose keys come and go does not grow this map.

use std::hash::BuildHasher;

use aspen_core::keys::KeyRange;
use redb::ReadableTable;

use super::mvcc::{Index, IndexRecord, IndexSource, OverlayView};
use super::overlay::IndexOverlay;
use super::tables::WriteTables;
use crate::error::Result;

/// Keys an apply batch loads into the map while it is loading: at 1M keys, about 60 batches
/// after an open, each a few milliseconds longer.
/// (Tests: a few keys, so that small stores load over many batches.)
pub(crate) const LATEST_LOAD_CHUNK_KEYS: usize = if cfg!(test) { 3 } else { 16_384 };

/// A key's newest entry: its main revision and record (`version == 0`: a tombstone).
pub(crate) type LatestEntry = (u64, IndexRecord);

#[derive(Debug)]
pub(crate) struct Latest {
    map: Slots,
    /// Keys below this are all in the map (those that exist); None: every key is.
    loaded_to: Option<Vec<u8>>,
}

impl Default for Latest {
    fn default() -> Latest {
        Latest::loading()
    }
}

impl Latest {
    /// An empty map that knows nothing yet: the first batch starts loading it.
    pub fn loading() -> Latest {
        Latest {
            map: Slots::default(),
            loaded_to: Some(Vec::new()),
        }
    }

    /// An empty map that is complete (a store without keys).
    #[cfg(test)]
    pub fn complete() -> Latest {
        Latest {
            map: Slots::default(),
            loaded_to: None,
        }
    }

    /// The key the next chunk starts at, or None once loaded.
    pub fn load_from(&self) -> Option<&[u8]> {
        self.loaded_to.as_deref()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// `key`'s newest entry: `Some(None)` if it has none (never written, or compacted away),
    /// None if the map does not know yet.
    pub fn get(&self, key: &[u8]) -> Option<Option<LatestEntry>> {
        if let Some(entry) = self.map.get(key) {
            return Some(Some(entry));
        }
        match &self.loaded_to {
            None => Some(None),
            Some(loaded_to) if key < loaded_to.as_slice() => Some(None),
            Some(_) => None,
        }
    }

    /// The writer wrote `key`'s entry at `main` (newer than any it had).
    pub fn record(&mut self, key: &[u8], main: u64, record: IndexRecord) {
        let older = self.map.set(key, (main, record));
        assert!(
            older.is_none_or(|(older, _)| older <= main),
            "the newest entry moved back"
        );
    }

    /// One loaded chunk: each key's newest entry as the writer's index has it (`entries`, in
    /// key order), and the key the next chunk starts at (None: the index has no more keys).
    pub fn load_chunk(&mut self, entries: Vec<(Vec<u8>, LatestEntry)>, next: Option<Vec<u8>>) {
        assert!(
            self.loaded_to.is_some(),
            "a chunk loaded into a complete map"
        );
        let from = self.loaded_to.clone().unwrap_or_default();
        for (key, entry) in entries {
            assert!(key >= from, "a chunk below the loaded keys");
            assert!(
                next.as_ref().is_none_or(|next| key < *next),
                "a chunk past its end"
            );
            // The writer's index is the truth: an entry recorded earlier for this key is in it.
            self.map.set(&key, entry);
        }
        assert!(
            next.as_ref().is_none_or(|next| *next > from),
            "a chunk that did not advance"
        );
        self.loaded_to = next;
    }

    /// The index changed under the map (a batch that did not commit, an install, an import):
    /// it forgets everything and loads again.
    pub fn restart_load(&mut self) {
        *self = Latest::loading();
    }

    /// Compaction removed `key`, whose newest entry was the tombstone at `main`.
    pub fn forget_tombstone(&mut self, key: &[u8], main: u64) {
        if let Some((newest, record)) = self.map.get(key)
            && newest == main
        {
            assert!(record.is_tombstone(), "compaction removed a live key");
            self.map.remove(key);
        }
    }
}

/// The map itself, kept small: one allocation per key holding its entry (five varints) and
/// then the key, and a hash table of pointers to them. At 1M keys, a `HashMap<Vec<u8>,
/// LatestEntry>` took ~170 MB and raised the node's peak RSS above etcd's (`bench/vs-etcd`'s
/// scale step); this takes ~100 MB.
#[derive(Default)]
struct Slots {
    table: hashbrown::HashTable<Box<[u8]>>,
    hasher: foldhash::fast::RandomState,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("len", &self.table.len())
            .finish()
    }
}

/// A slot's entry encoded: postcard's varints for the main revision and the record's four
/// fields (at most 10 bytes each, 5 for the `u32`), after one byte with their length.
const SLOT_ENTRY_BYTES_MAX: usize = 1 + 4 * 10 + 5;

impl Slots {
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }

    fn get(&self, key: &[u8]) -> Option<LatestEntry> {
        let hash = self.hasher.hash_one(key);
        self.table
            .find(hash, |slot| slot_key(slot) == key)
            .map(|slot| slot_entry(slot))
    }

    /// Sets `key`'s entry; returns the one it replaced.
    fn set(&mut self, key: &[u8], entry: LatestEntry) -> Option<LatestEntry> {
        let mut encoded = [0u8; SLOT_ENTRY_BYTES_MAX];
        let encoded = encode_entry(entry, &mut encoded);
        let hash = self.hasher.hash_one(key);
        if let Some(slot) = self.table.find_mut(hash, |slot| slot_key(slot) == key) {
            let older = slot_entry(slot);
            if usize::from(slot[0]) + 1 == encoded.len() {
                slot[..encoded.len()].copy_from_slice(encoded);
            } else {
                *slot = new_slot(encoded, key);
            }
            return Some(older);
        }
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, new_slot(encoded, key), |slot| {
                hasher.hash_one(slot_key(slot))
            });
        None
    }

    fn remove(&mut self, key: &[u8]) {
        let hash = self.hasher.hash_one(key);
        if let Ok(found) = self.table.find_entry(hash, |slot| slot_key(slot) == key) {
            found.remove();
        }
    }
}

fn new_slot(encoded: &[u8], key: &[u8]) -> Box<[u8]> {
    let mut slot = Vec::with_capacity(encoded.len() + key.len());
    slot.extend_from_slice(encoded);
    slot.extend_from_slice(key);
    slot.into_boxed_slice()
}

fn slot_key(slot: &[u8]) -> &[u8] {
    &slot[1 + usize::from(slot[0])..]
}

fn slot_entry(slot: &[u8]) -> LatestEntry {
    let encoded = &slot[1..1 + usize::from(slot[0])];
    match postcard::from_bytes::<LatestEntry>(encoded) {
        Ok(entry) => entry,
        Err(error) => panic!("a slot's entry does not decode: {error}"),
    }
}

fn encode_entry(entry: LatestEntry, out: &mut [u8; SLOT_ENTRY_BYTES_MAX]) -> &[u8] {
    let used = match postcard::to_slice(&entry, &mut out[1..]) {
        Ok(written) => written.len(),
        Err(error) => panic!("a slot's entry does not fit its buffer: {error}"),
    };
    out[0] = u8::try_from(used).unwrap_or(u8::MAX);
    &out[..1 + used]
}

/// Loads the next chunk of newest entries, if the map is still loading, from the writer's
/// index (`tables`' `kv_index`, opened only while loading, and the live overlay): up to
/// `LATEST_LOAD_CHUNK_KEYS` keys of `kv_index` and the overlay's keys among them.
pub(crate) fn load_next_chunk(tables: &WriteTables<'_>, overlay: &IndexOverlay) -> Result<()> {
    let Some(from) = overlay.latest_load_from() else {
        return Ok(());
    };
    let table = tables.index()?;
    // The chunk ends before `kv_index`'s (LATEST_LOAD_CHUNK_KEYS + 1)th key from `from`.
    let mut end: Option<Vec<u8>> = None;
    let mut keys: usize = 0;
    let mut previous: Vec<u8> = Vec::new();
    for item in table.range::<(&[u8], u64)>((from.as_slice(), 0)..)? {
        let (table_key, _) = item?;
        let key = table_key.value().0;
        if keys > 0 && key == previous.as_slice() {
            continue;
        }
        if keys == LATEST_LOAD_CHUNK_KEYS {
            end = Some(key.to_vec());
            break;
        }
        previous.clear();
        previous.extend_from_slice(key);
        keys += 1;
    }
    let range = KeyRange::Interval {
        start: from,
        end: end.clone(),
    };
    let mut entries: Vec<(Vec<u8>, LatestEntry)> = Vec::with_capacity(keys);
    Index::new(table, OverlayView::Live(overlay)).for_each_entry(
        &range,
        &mut |key, main, record| {
            match entries.last_mut() {
                Some((last, newest)) if last.as_slice() == key => *newest = (main, record),
                _ => entries.push((key.to_vec(), (main, record))),
            }
            Ok(true)
        },
    )?;
    // A key whose newest entry is a tombstone reads as absent without one.
    entries.retain(|(_, (_, record))| !record.is_tombstone());
    overlay.latest_load_chunk(entries, end);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: u64) -> IndexRecord {
        IndexRecord::of_version(version)
    }

    #[test]
    fn a_key_not_yet_loaded_is_unknown_and_one_below_the_loaded_keys_is_absent() {
        let mut latest = Latest::loading();
        assert_eq!(latest.get(b"a"), None);
        latest.record(b"m", 5, record(2));
        assert_eq!(latest.get(b"m"), Some(Some((5, record(2)))));
        latest.load_chunk(
            vec![
                (b"b".to_vec(), (2, record(1))),
                (b"m".to_vec(), (5, record(2))),
            ],
            Some(b"n".to_vec()),
        );
        assert_eq!(
            latest.get(b"a"),
            Some(None),
            "below the loaded keys: absent"
        );
        assert_eq!(latest.get(b"b"), Some(Some((2, record(1)))));
        assert_eq!(latest.get(b"z"), None, "not loaded yet");
        latest.record(b"z", 6, record(1));
        assert_eq!(latest.get(b"z"), Some(Some((6, record(1)))));
        latest.load_chunk(vec![(b"z".to_vec(), (6, record(1)))], None);
        assert_eq!(latest.load_from(), None);
        assert_eq!(latest.get(b"y"), Some(None));
        assert_eq!(latest.len(), 3);
    }

    #[test]
    fn a_restarted_load_forgets_and_a_compacted_tombstone_goes() {
        let mut latest = Latest::complete();
        latest.record(b"a", 3, record(1));
        latest.record(b"a", 4, record(0));
        latest.forget_tombstone(b"a", 3);
        assert_eq!(latest.get(b"a"), Some(Some((4, record(0)))), "not that one");
        latest.forget_tombstone(b"a", 4);
        assert_eq!(latest.get(b"a"), Some(None));
        latest.record(b"b", 5, record(1));
        latest.restart_load();
        assert_eq!(latest.get(b"b"), None);
        assert_eq!(latest.len(), 0);
    }

    /// Writes after an open, one per batch while the map loads three keys a batch, hit keys
    /// behind and ahead of the loaded ones, deleted keys and compacted ones. Every lookup is
    /// checked against the index (`Applier::latest`'s debug assertion); the versions read back
    /// are checked here.
    #[test]
    fn writes_during_and_after_the_load_see_each_key_as_the_index_has_it() {
        use aspen_core::limits::Limits;
        use aspen_core::type_config::alias::Entry;
        use aspen_core::{Command, DeleteRangeRequest, PutRequest, RangeRequest, TypeConfig};

        use crate::{StateMachine, StorageBackend, open_storage};

        fn apply(sm: &StateMachine, index: &mut u64, command: Command) {
            *index += 1;
            let entry: Entry = openraft::Entry {
                log_id: openraft::testing::log_id::<TypeConfig>(1, 1, *index),
                payload: openraft::EntryPayload::Normal(command),
            };
            let response = sm.apply_entries(&[entry]).expect("apply");
            assert!(response[0].result.is_ok(), "{response:?}");
        }
        fn put(key: &str) -> Command {
            Command::Put(PutRequest {
                key: key.as_bytes().to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })
        }
        fn delete(key: &str) -> Command {
            Command::DeleteRange(DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            })
        }
        /// (version, create revision) of `key`, None if absent.
        fn read(sm: &StateMachine, key: &str) -> Option<(u64, u64)> {
            let request = RangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            };
            let (result, _) = sm.reader().range(&request).expect("read").expect("ok");
            result
                .kvs
                .first()
                .map(|kv| (kv.version, kv.create_revision))
        }

        let dir = tempfile::tempdir().expect("tempdir");
        let backend = StorageBackend::Redb {
            dir: dir.path().to_path_buf(),
        };
        let mut index = 0;
        {
            let (_log, sm) = open_storage(&backend, Limits::default()).expect("open");
            for n in 0..20 {
                apply(&sm, &mut index, put(&format!("k{n:02}")));
            }
            apply(&sm, &mut index, put("k03")); // version 2
            apply(&sm, &mut index, put("k17")); // version 2
            apply(&sm, &mut index, delete("k05"));
            apply(&sm, &mut index, delete("k18"));
            sm.store().make_state_durable().expect("durable");
        }
        let (_log, sm) = open_storage(&backend, Limits::default()).expect("reopen");
        assert_eq!(
            sm.store().shared.index_overlay.latest_load_from(),
            Some(Vec::new())
        );
        // Ahead of the loaded keys, then behind them, new, deleted and deleted again.
        apply(&sm, &mut index, put("k17"));
        assert_eq!(read(&sm, "k17"), Some((3, 19)));
        apply(&sm, &mut index, put("k18"));
        assert_eq!(
            read(&sm, "k18"),
            Some((1, 27)),
            "a deleted key starts again"
        );
        apply(&sm, &mut index, put("k00"));
        assert_eq!(read(&sm, "k00"), Some((2, 2)));
        apply(&sm, &mut index, put("k05"));
        assert_eq!(read(&sm, "k05"), Some((1, 29)));
        apply(&sm, &mut index, delete("k03"));
        apply(&sm, &mut index, put("k03"));
        assert_eq!(read(&sm, "k03"), Some((1, 31)));
        apply(&sm, &mut index, put("a-new-key"));
        for n in 0..20 {
            apply(&sm, &mut index, put(&format!("k{n:02}")));
        }
        assert_eq!(
            sm.store().shared.index_overlay.latest_load_from(),
            None,
            "loaded after enough batches"
        );
        assert_eq!(read(&sm, "k17"), Some((4, 19)));
        // A compaction removes a deleted key's tombstone; putting the key again starts it anew.
        apply(&sm, &mut index, delete("k10"));
        let deleted_at = index + 1; // the store revision is the log index + 1 here
        apply(&sm, &mut index, put("z"));
        apply(
            &sm,
            &mut index,
            Command::Compact {
                revision: deleted_at + 1,
                physical: true,
            },
        );
        sm.compact_until_done().expect("compact");
        apply(&sm, &mut index, put("k10"));
        assert_eq!(
            read(&sm, "k10"),
            Some((1, deleted_at + 2)),
            "after z; Compact takes no revision"
        );
    }

    #[test]
    fn slots_keep_each_entry_whatever_its_encoded_length() {
        let mut slots = Slots::default();
        let big = IndexRecord {
            sub_revision: u32::MAX,
            create_revision: u64::MAX,
            version: u64::MAX - 1,
            lease: 1 << 63,
        };
        for n in 0..2_000u64 {
            assert_eq!(
                slots.set(format!("key-{n}").as_bytes(), (n, record(n))),
                None
            );
        }
        assert_eq!(slots.set(b"key-7", (u64::MAX, big)), Some((7, record(7))));
        assert_eq!(slots.get(b"key-7"), Some((u64::MAX, big)));
        assert_eq!(slots.set(b"key-7", (8, record(1))), Some((u64::MAX, big)));
        assert_eq!(slots.get(b"key-7"), Some((8, record(1))), "shorter again");
        slots.remove(b"key-9");
        slots.remove(b"no-such-key");
        assert_eq!(slots.get(b"key-9"), None);
        assert_eq!(slots.get(b""), None);
        assert_eq!(
            slots.set(b"", (1, record(1))),
            None,
            "the empty key is a key"
        );
        assert_eq!(slots.len(), 2_000);
        for n in (0..2_000u64).filter(|n| *n != 7 && *n != 9) {
            assert_eq!(
                slots.get(format!("key-{n}").as_bytes()),
                Some((n, record(n)))
            );
        }
    }

    #[test]
    #[should_panic(expected = "moved back")]
    fn an_older_entry_is_refused() {
        let mut latest = Latest::complete();
        latest.record(b"a", 3, record(1));
        latest.record(b"a", 2, record(1));
    }
}
