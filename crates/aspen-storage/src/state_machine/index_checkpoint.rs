//! The key index's checkpoint (`key_index.ckpt` in the data dir): the whole in-memory index
//! (`key_index.rs`) as of a store revision that the state database had made durable, written
//! now and then so an open replays only the `kv_revs` records above it.
//!
//! Layout: `MAGIC` (8 bytes), the revision (u64 LE), then per key in key order a postcard
//! `(key, versions)`, then the key count (u64 LE) and a crc32 (LE) of everything before it. Written
//! to a temporary file, synced, renamed over the old one, and the directory synced: a crash
//! leaves the old checkpoint or the new one, never a part.
//!
//! The rules that make a checkpoint safe to load:
//! - its revision is one the state database had made durable when it was written, so after a
//!   crash the database holds at least that revision, and every `kv_revs` record above it;
//! - compaction removes no `kv_revs` record above the checkpoint's revision (the compactor
//!   writes a checkpoint first when it must: `StateMachine::compact_step_bounded`), so the
//!   replay finds every version above it;
//! - an install or an import deletes it before it commits: what it describes is gone.
//!
//! A checkpoint may hold versions that compaction removed while it was written: an open
//! compacts the loaded index again.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::key_bytes::KeyBytes;
use super::key_index::{KeyIndex, KeyMap, Stamp, Versions};
use super::mvcc::IndexRecord;
use crate::error::{Result, StorageError};

pub(crate) const CHECKPOINT_FILE_NAME: &str = "key_index.ckpt";
const CHECKPOINT_TEMP_SUFFIX: &str = ".tmp";
const MAGIC: &[u8; 8] = b"ASPNIDX1";
const HEADER_BYTES: usize = 8 + 8;
const COUNT_BYTES: usize = 8;
const CRC_BYTES: usize = 4;
const WRITE_BUFFER_BYTES: usize = 1024 * 1024;

/// A checkpoint read back: its revision and the index it holds.
pub(crate) struct Loaded {
    pub revision: u64,
    pub keys: KeyMap,
}

pub(crate) fn path_in(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT_FILE_NAME)
}

/// What [`write`] wrote.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Written {
    pub bytes: u64,
    /// Index entries (versions, over all keys) in the checkpoint.
    pub entries: u64,
}

/// Writes `index`'s entries at or below `revision` to `path`. The writer goes on meanwhile
/// (the index is copied a chunk at a time).
pub(crate) fn write(path: &Path, index: &KeyIndex, revision: u64) -> Result<Written> {
    let temp = temp_path(path);
    let file = File::create(&temp).map_err(|e| io_error(&temp, "create", e))?;
    let mut out = CrcWriter {
        inner: BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
        crc: crc32fast::Hasher::new(),
        bytes: 0,
    };
    out.put(MAGIC)?;
    out.put(&revision.to_le_bytes())?;
    let mut keys: u64 = 0;
    let mut entries: u64 = 0;
    let mut encoded = Vec::with_capacity(256);
    index.for_each_chunk(revision, |chunk| {
        for (key, versions) in chunk {
            encoded.clear();
            let entry = Entry {
                key: &key,
                versions: &versions,
            };
            encoded = postcard::to_extend(&entry, std::mem::take(&mut encoded))
                .map_err(|e| StorageError::Invariant(format!("key index checkpoint: {e}")))?;
            out.put(&encoded)?;
            keys += 1;
            entries += versions.len() as u64;
        }
        Ok(())
    })?;
    out.put(&keys.to_le_bytes())?;
    let crc = out.crc.clone().finalize();
    out.put(&crc.to_le_bytes())?;
    let bytes = out.bytes;
    let file = out
        .inner
        .into_inner()
        .map_err(|e| io_error(&temp, "write", e.into_error()))?;
    file.sync_data().map_err(|e| io_error(&temp, "sync", e))?;
    drop(file);
    std::fs::rename(&temp, path).map_err(|e| io_error(path, "rename", e))?;
    sync_dir(path)?;
    Ok(Written { bytes, entries })
}

/// A checkpoint is written once the store revision has moved this far past the last one, or
/// as far as the last checkpoint had index entries if that is more (or the index has now, if
/// it has fewer). Writing one costs about as much as replaying that many records, so the
/// writes cost at most about one entry's encoding per put, and a restart after a crash
/// replays at most that many records (`docs/storage-format.md`). Spacing by the last
/// checkpoint's size, not the index's now, keeps a store that only grows checkpointing: its
/// index gains an entry per revision, so it never falls that far behind its own size, and
/// its checkpoints come at revisions that double (262,144, 524,288, about 1M, ...).
pub(crate) const CHECKPOINT_REVISIONS_MIN: u64 = 262_144;

/// The key index's checkpoints of a store: where they go (None: an in-memory store, or one on
/// caller-built backends, which rebuilds its index from `kv_revs` at every open) and the
/// revision of the newest one written.
#[derive(Debug)]
pub(crate) struct Checkpoints {
    path: Option<PathBuf>,
    /// `Limits::index_checkpoint_revisions`: None for the rule above.
    every_revisions: Option<u64>,
    revision: AtomicU64,
    /// The index entries the newest checkpoint holds; `u64::MAX` while there is none.
    entries: AtomicU64,
    /// Held by whoever writes or removes the file: one at a time.
    writing: Mutex<()>,
    /// A background write is under way (at most one).
    running: AtomicBool,
}

impl Checkpoints {
    /// `revision` and `entries`: the newest checkpoint's (`Opened`); revision 0 for none.
    pub fn new(
        path: Option<PathBuf>,
        revision: u64,
        entries: u64,
        every_revisions: Option<u64>,
    ) -> Checkpoints {
        assert_ne!(every_revisions, Some(0), "Limits::validate refuses 0");
        Checkpoints {
            path,
            every_revisions,
            revision: AtomicU64::new(revision),
            entries: AtomicU64::new(if revision == 0 { u64::MAX } else { entries }),
            writing: Mutex::new(()),
            running: AtomicBool::new(false),
        }
    }

    /// The revision every `kv_revs` record above which an open replays: compaction removes
    /// none above it. `u64::MAX` without checkpoints (an open replays every record).
    pub fn revision(&self) -> u64 {
        match self.path {
            Some(_) => self.revision.load(Ordering::Acquire),
            None => u64::MAX,
        }
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.writing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a checkpoint at `durable_revision` is due, with `index_entries` in the index now
    /// (see `CHECKPOINT_REVISIONS_MIN`).
    pub fn due(&self, durable_revision: u64, index_entries: u64) -> bool {
        let last_entries = self.entries.load(Ordering::Acquire);
        let every = self
            .every_revisions
            .unwrap_or(CHECKPOINT_REVISIONS_MIN.max(index_entries.min(last_entries)));
        self.path.is_some()
            && !self.running.load(Ordering::Acquire)
            && durable_revision.saturating_sub(self.revision.load(Ordering::Acquire)) >= every
    }

    /// Writes a checkpoint of `index` at `durable_revision` (a revision the state database has
    /// made durable) now, unless one at or above it exists.
    pub fn write_now(&self, index: &KeyIndex, durable_revision: u64) -> Result<()> {
        self.write_if(index, durable_revision, None)
    }

    /// As [`Checkpoints::write_now`], and only if no install or import replaced the index since
    /// `stamp` was taken (`durable_revision` is the replaced state's then).
    fn write_if(
        &self,
        index: &KeyIndex,
        durable_revision: u64,
        stamp: Option<Stamp>,
    ) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let _writing = self.lock();
        if self.revision.load(Ordering::Acquire) >= durable_revision {
            return Ok(());
        }
        if stamp.is_some_and(|stamp| !index.still_matches(stamp, u64::MAX)) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let written = write(path, index, durable_revision)?;
        self.entries.store(written.entries, Ordering::Release);
        self.revision.store(durable_revision, Ordering::Release);
        tracing::debug!(
            revision = durable_revision,
            bytes = written.bytes,
            entries = written.entries,
            ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "key index checkpoint written"
        );
        Ok(())
    }

    /// Writes a checkpoint at `durable_revision` on a thread of its own (the apply path goes
    /// on); one at a time. A failure is logged: the previous checkpoint stays, and the next
    /// durable commit tries again. An install or import that replaces the index before the
    /// thread writes makes it write nothing (what `durable_revision` described is gone).
    pub fn write_in_background(self: &Arc<Self>, index: &Arc<KeyIndex>, durable_revision: u64) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let stamp = index.stamp();
        let (checkpoints, index) = (Arc::clone(self), Arc::clone(index));
        let spawned = std::thread::Builder::new()
            .name("aspen-index-ckpt".into())
            .spawn(move || {
                if let Err(error) = checkpoints.write_if(&index, durable_revision, Some(stamp)) {
                    tracing::warn!(%error, "key index checkpoint not written");
                }
                checkpoints.running.store(false, Ordering::Release);
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "key index checkpoint thread not started");
            self.running.store(false, Ordering::Release);
        }
    }

    /// Removes the checkpoint (an install or import replaces what it describes); the guard
    /// keeps any other from being written until the replacement has committed.
    pub fn remove(&self) -> Result<MutexGuard<'_, ()>> {
        let writing = self.lock();
        if let Some(path) = &self.path {
            remove(path)?;
        }
        self.revision.store(0, Ordering::Release);
        self.entries.store(u64::MAX, Ordering::Release);
        Ok(writing)
    }
}

/// A state database's key index as [`load_index`] built it.
pub(crate) struct Opened {
    pub index: KeyIndex,
    /// The revision of the checkpoint it was loaded from; 0 if none.
    pub checkpoint_revision: u64,
    /// The entries that checkpoint held.
    pub checkpoint_entries: u64,
}

/// The key index of a state database just opened: the checkpoint at `path` if there is a
/// sound one, then every `kv_revs` record above it, then compaction at the store's compaction
/// revision.
pub(crate) fn load_index(db: &redb::Database, path: Option<&Path>) -> Result<Opened> {
    use redb::ReadableDatabase;
    let started = std::time::Instant::now();
    if let Some(path) = path {
        // What a crash in the middle of a write left: never read, and not kept.
        let temp = temp_path(path);
        match std::fs::remove_file(&temp) {
            Ok(()) => tracing::info!(path = %temp.display(), "removed an unfinished checkpoint"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&temp, "remove", e)),
        }
    }
    let txn = db.begin_read()?;
    let state = super::read_applied(&txn)?;
    let loaded = match path.map(read).transpose() {
        Ok(loaded) => loaded.flatten(),
        Err(error) => {
            tracing::warn!(%error, "key index checkpoint not used: rebuilt from kv_revs");
            None
        }
    };
    let (keys, from) = match loaded {
        Some(loaded) if loaded.revision <= state.revision => (loaded.keys, loaded.revision),
        Some(loaded) => {
            tracing::warn!(
                checkpoint = loaded.revision,
                revision = state.revision,
                "key index checkpoint is newer than the state database: rebuilt from kv_revs"
            );
            (KeyMap::new(), 0)
        }
        None => (KeyMap::new(), 0),
    };
    let index = KeyIndex::from_map(keys);
    let checkpoint_entries = index.len();
    let revs = txn.open_table(crate::schema::KV_REVS)?;
    let mut replayed: u64 = 0;
    for item in revs.range::<super::mvcc::RevKey>((from + 1, 0)..)? {
        let (position, bytes) = item?;
        let (main, sub) = position.value();
        let record: super::mvcc::RevRecordView<'_> =
            aspen_core::codec::decode_borrowed(bytes.value()).map_err(|source| {
                StorageError::Codec {
                    table: "kv_revs",
                    source,
                }
            })?;
        let entry = IndexRecord {
            sub_revision: sub,
            create_revision: record.create_revision,
            version: record.version,
            lease: record.lease,
        };
        index.insert(record.key, main, entry);
        replayed += 1;
    }
    let compacted = index.compact_all(state.compact_revision);
    tracing::info!(
        checkpoint = from,
        replayed,
        compacted,
        keys = index.keys_len(),
        ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "key index loaded"
    );
    Ok(Opened {
        index,
        checkpoint_revision: from,
        checkpoint_entries,
    })
}

#[derive(serde::Serialize)]
struct Entry<'a> {
    #[serde(with = "serde_bytes")]
    key: &'a [u8],
    versions: &'a [(u64, IndexRecord)],
}

#[derive(serde::Deserialize)]
struct OwnedEntry {
    #[serde(with = "serde_bytes")]
    key: Vec<u8>,
    versions: Versions,
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(CHECKPOINT_TEMP_SUFFIX);
    PathBuf::from(name)
}

struct CrcWriter {
    inner: BufWriter<File>,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl CrcWriter {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.crc.update(bytes);
        self.bytes += bytes.len() as u64;
        self.inner
            .write_all(bytes)
            .map_err(|e| StorageError::Invariant(format!("key index checkpoint: write: {e}")))
    }
}

/// Reads the checkpoint at `path`: None if there is none; an error if it is damaged (the
/// caller then rebuilds from `kv_revs`).
pub(crate) fn read(path: &Path) -> Result<Option<Loaded>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path, "read", e)),
    };
    let damaged = |why: &str| StorageError::Invariant(format!("{}: {why}", path.display()));
    if bytes.len() < HEADER_BYTES + COUNT_BYTES + CRC_BYTES || &bytes[..8] != MAGIC {
        return Err(damaged("not a key index checkpoint"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - CRC_BYTES);
    let crc = u32::from_le_bytes(crc.try_into().map_err(|_| damaged("short"))?);
    if crc32fast::hash(body) != crc {
        return Err(damaged("checksum mismatch"));
    }
    let revision = u64::from_le_bytes(body[8..16].try_into().map_err(|_| damaged("short"))?);
    let (entries, keys_len) =
        body[HEADER_BYTES..].split_at(body.len() - HEADER_BYTES - COUNT_BYTES);
    let keys_len = u64::from_le_bytes(keys_len.try_into().map_err(|_| damaged("short"))?);
    let mut rest = entries;
    let mut pairs: Vec<(KeyBytes, Versions)> = Vec::new();
    while !rest.is_empty() {
        let (entry, tail): (OwnedEntry, _) =
            postcard::take_from_bytes(rest).map_err(|_| damaged("entry does not decode"))?;
        let in_order = entry.versions.windows(2).all(|w| w[0].0 < w[1].0)
            && entry
                .versions
                .last()
                .is_some_and(|(main, _)| *main <= revision);
        let keys_in_order = pairs
            .last()
            .is_none_or(|(last, _)| last.as_bytes() < entry.key.as_slice());
        if !in_order || !keys_in_order {
            return Err(damaged("entries out of order"));
        }
        pairs.push((KeyBytes::from(entry.key), entry.versions));
        rest = tail;
    }
    if pairs.len() as u64 != keys_len {
        return Err(damaged("key count mismatch"));
    }
    Ok(Some(Loaded {
        revision,
        keys: pairs.into_iter().collect(),
    }))
}

/// Removes the checkpoint at `path` (an install or import replaces what it describes), and
/// syncs the directory so the removal survives a crash.
pub(crate) fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(path, "remove", e)),
    }
}

fn sync_dir(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, "sync", e))
}

fn io_error(path: &Path, what: &str, error: std::io::Error) -> StorageError {
    StorageError::Invariant(format!("{what} {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_reads_back_what_was_at_or_below_its_revision() {
        let dir = tempfile::tempdir().expect("dir");
        let path = path_in(dir.path());
        assert!(read(&path).expect("none").is_none());
        let index = KeyIndex::default();
        for n in 0..3000u64 {
            index.insert(
                format!("k{n}").as_bytes(),
                n + 1,
                IndexRecord::of_version(1),
            );
        }
        index.insert(b"k1", 3001, IndexRecord::of_version(2));
        let written = write(&path, &index, 3000).expect("write");
        assert_eq!(written.bytes, std::fs::metadata(&path).expect("meta").len());
        assert_eq!(
            written.entries, 3000,
            "k1's version at 3001 is above the revision"
        );
        let loaded = read(&path).expect("read").expect("some");
        assert_eq!(loaded.revision, 3000);
        assert_eq!(loaded.keys.len(), 3000);
        assert_eq!(
            loaded.keys[b"k1".as_slice()],
            vec![(2, IndexRecord::of_version(1))]
        );

        let mut damaged = std::fs::read(&path).expect("bytes");
        let middle = damaged.len() / 2;
        damaged[middle] ^= 1;
        std::fs::write(&path, &damaged).expect("write");
        assert!(read(&path).is_err(), "a flipped bit is found");
        remove(&path).expect("remove");
        assert!(read(&path).expect("none").is_none());
    }

    #[test]
    fn a_background_checkpoint_of_a_replaced_index_writes_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let path = path_in(dir.path());
        let checkpoints = Checkpoints::new(Some(path.clone()), 0, 0, None);
        let index = KeyIndex::default();
        index.insert(b"a", 5, IndexRecord::of_version(1));
        let stamp = index.stamp();
        index.replace(KeyMap::new());
        checkpoints
            .write_if(&index, 5, Some(stamp))
            .expect("nothing to write");
        assert!(
            read(&path).expect("read").is_none(),
            "an install came between"
        );
        checkpoints
            .write_if(&index, 5, Some(index.stamp()))
            .expect("write");
        assert_eq!(read(&path).expect("read").expect("some").revision, 5);
        assert_eq!(checkpoints.revision(), 5);
        assert_eq!(
            checkpoints.entries.load(Ordering::Acquire),
            0,
            "the install left the index empty"
        );
        let _writing = checkpoints.remove().expect("remove");
        assert_eq!(checkpoints.entries.load(Ordering::Acquire), u64::MAX);
    }

    /// Walks revisions in steps of 4,096 from `from` to `to`, with the index holding
    /// `entries_at(revision)` entries; each due checkpoint is taken as written (what
    /// `write_if` records). Returns the revisions written at.
    fn due_revisions(
        checkpoints: &Checkpoints,
        from: u64,
        to: u64,
        entries_at: impl Fn(u64) -> u64,
    ) -> Vec<u64> {
        let mut written = Vec::new();
        for revision in (from..=to).step_by(4096) {
            if checkpoints.due(revision, entries_at(revision)) {
                checkpoints
                    .entries
                    .store(entries_at(revision), Ordering::Release);
                checkpoints.revision.store(revision, Ordering::Release);
                written.push(revision);
            }
        }
        written
    }

    #[test]
    fn a_store_that_only_grows_checkpoints_at_doubling_revisions() {
        let dir = tempfile::tempdir().expect("dir");
        let checkpoints = Checkpoints::new(Some(path_in(dir.path())), 0, 0, None);
        // One entry per revision: every put a new key, nothing compacted. Spaced by the
        // index's size now, only the first would ever be due.
        let written = due_revisions(&checkpoints, 4096, 4_300_000, |revision| revision);
        assert_eq!(written, [262_144, 524_288, 1_048_576, 2_097_152, 4_194_304]);
        for pair in written.windows(2) {
            let replay_max = pair[1] - pair[0];
            assert!(replay_max <= pair[0].max(CHECKPOINT_REVISIONS_MIN));
        }
    }

    #[test]
    fn a_checkpoint_loaded_at_open_spaces_the_next_one_and_a_shrunken_index_brings_it_closer() {
        let dir = tempfile::tempdir().expect("dir");
        // Opened from a checkpoint of 1M entries at revision 1M.
        let checkpoints = Checkpoints::new(Some(path_in(dir.path())), 1 << 20, 1 << 20, None);
        assert!(!checkpoints.due((1 << 20) + (1 << 19), 3 << 19));
        assert!(checkpoints.due(2 << 20, 2 << 20));
        // Compaction left 10,000 entries: the minimum spacing, not the last checkpoint's size.
        let checkpoints = Checkpoints::new(Some(path_in(dir.path())), 1 << 20, 1 << 20, None);
        assert!(!checkpoints.due((1 << 20) + CHECKPOINT_REVISIONS_MIN - 1, 10_000));
        assert!(checkpoints.due((1 << 20) + CHECKPOINT_REVISIONS_MIN, 10_000));
        // Opened without one: due as soon as the revision reaches the index's size.
        let checkpoints = Checkpoints::new(Some(path_in(dir.path())), 0, 0, None);
        assert!(!checkpoints.due(CHECKPOINT_REVISIONS_MIN - 1, 100));
        assert!(checkpoints.due(600_000, 600_000));
        // Without a path (in memory) never.
        let checkpoints = Checkpoints::new(None, 0, 0, None);
        assert!(!checkpoints.due(u64::MAX / 2, 1));
    }
}
