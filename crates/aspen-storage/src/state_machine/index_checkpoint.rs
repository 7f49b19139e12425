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

/// Writes `index`'s entries at or below `revision` to `path`; returns the bytes written. The
/// writer goes on meanwhile (the index is copied a chunk at a time).
pub(crate) fn write(path: &Path, index: &KeyIndex, revision: u64) -> Result<u64> {
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
    Ok(bytes)
}

/// A checkpoint is written once the store revision has moved this far past the last one, or
/// as far as the index has entries if that is more: writing one costs about as much as
/// replaying that many records, so the writes cost at most one entry's encoding per put, and a
/// restart after a crash replays at most that many records (`docs/storage-format.md`).
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
    /// Held by whoever writes or removes the file: one at a time.
    writing: Mutex<()>,
    /// A background write is under way (at most one).
    running: AtomicBool,
}

impl Checkpoints {
    pub fn new(path: Option<PathBuf>, revision: u64, every_revisions: Option<u64>) -> Checkpoints {
        assert_ne!(every_revisions, Some(0), "Limits::validate refuses 0");
        Checkpoints {
            path,
            every_revisions,
            revision: AtomicU64::new(revision),
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

    /// Whether a checkpoint at `durable_revision` is due (see `CHECKPOINT_REVISIONS_MIN`).
    pub fn due(&self, durable_revision: u64, index_entries: u64) -> bool {
        let every = self
            .every_revisions
            .unwrap_or(CHECKPOINT_REVISIONS_MIN.max(index_entries));
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
        let bytes = write(path, index, durable_revision)?;
        self.revision.store(durable_revision, Ordering::Release);
        tracing::debug!(
            revision = durable_revision,
            bytes,
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
        Ok(writing)
    }
}

/// The key index of a state database just opened, and the revision of the checkpoint it was
/// loaded from (0 if none): the checkpoint at `path` if there is a sound one, then every
/// `kv_revs` record above it, then compaction at the store's compaction revision.
pub(crate) fn load_index(db: &redb::Database, path: Option<&Path>) -> Result<(KeyIndex, u64)> {
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
    Ok((index, from))
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
        let bytes = write(&path, &index, 3000).expect("write");
        assert_eq!(bytes, std::fs::metadata(&path).expect("meta").len());
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
        let checkpoints = Checkpoints::new(Some(path.clone()), 0, None);
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
    }
}
