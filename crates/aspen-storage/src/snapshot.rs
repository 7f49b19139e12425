//! Snapshot data: a stream of bounded frames, kept in a file (redb backend) or in memory.
//!
//! Stream format (documented in `docs/storage-format.md`):
//! `MAGIC` (8 bytes), then frames, each `[u32 big-endian length][codec-encoded Frame]`, the last
//! being `Frame::End`, then a big-endian CRC-32 of every byte before it. Building and
//! installing both work frame by frame, so memory does not grow with the data.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aspen_core::codec;
use aspen_core::convert::usize_from;
use aspen_core::limits::SNAPSHOT_FRAME_BYTES_MAX;
use aspen_core::type_config::alias::SnapshotMeta;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StorageError};

/// The stream's frames and magic live in `aspen-core` (`snapshot_format.rs`), which
/// `aspenctl snapshot status` reads them with too.
pub use aspen_core::snapshot_format::{Frame, SNAPSHOT_MAGIC};

// A frame's length is written as a u32.
const _: () = assert!(SNAPSHOT_FRAME_BYTES_MAX <= u32::MAX as u64);

const PARTIAL_SUFFIX: &str = ".partial";
const SNAPSHOT_SUFFIX: &str = ".snap";

/// Where the current snapshot is; stored in `sm_meta` next to the data it describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotRecord {
    pub meta: SnapshotMeta,
    /// File name inside the snapshot directory; `None` on the in-memory backend.
    pub file_name: Option<String>,
    pub len_bytes: u64,
}

/// A complete snapshot, readable from the start any number of times, or one not written yet
/// ([`SnapshotData::materialized`] writes it).
#[derive(Clone)]
pub struct SnapshotData {
    body: Body,
}

/// Writes a snapshot that so far is only a pinned view of the state machine
/// (`state_machine/snapshot_io.rs` `Deferred`), once, the first time it is needed.
pub(crate) trait Materialize: Send + Sync {
    fn materialize(&self) -> Result<SnapshotData>;
}

#[derive(Clone)]
enum Body {
    File {
        file: Arc<File>,
        path: PathBuf,
        len_bytes: u64,
    },
    Memory(Arc<Vec<u8>>),
    /// Not written yet: a view of the state at the snapshot's meta.
    Deferred(Arc<dyn Materialize>),
    /// The data of a snapshot point (`snapshot_io::record_point`) as the builder returns it:
    /// openraft keeps only its meta, and the data comes from `get_current_snapshot`.
    Unavailable {
        applied_index: u64,
    },
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.body {
            Body::File {
                path, len_bytes, ..
            } => write!(f, "SnapshotData({}, {len_bytes} bytes)", path.display()),
            Body::Memory(bytes) => write!(f, "SnapshotData(memory, {} bytes)", bytes.len()),
            Body::Deferred(_) => write!(f, "SnapshotData(deferred)"),
            Body::Unavailable { applied_index } => {
                write!(f, "SnapshotData(point at {applied_index}, no data)")
            }
        }
    }
}

impl SnapshotData {
    /// The first `len_bytes` of an existing file, read in place (restore reads a saved file
    /// this way). Fails if the file is shorter.
    pub fn from_file_prefix(path: &Path, len_bytes: u64) -> Result<SnapshotData> {
        let io = |source| StorageError::SnapshotIo {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        if file_len < len_bytes {
            return Err(StorageError::Snapshot(format!(
                "{} has {file_len} bytes, fewer than {len_bytes}",
                path.display()
            )));
        }
        Ok(SnapshotData {
            body: Body::File {
                file: Arc::new(file),
                path: path.to_path_buf(),
                len_bytes,
            },
        })
    }

    pub(crate) fn deferred(materialize: Arc<dyn Materialize>) -> SnapshotData {
        SnapshotData {
            body: Body::Deferred(materialize),
        }
    }

    pub(crate) fn unavailable(applied_index: u64) -> SnapshotData {
        SnapshotData {
            body: Body::Unavailable { applied_index },
        }
    }

    /// This snapshot with its data written: itself if it already is, else a file (or bytes,
    /// on the in-memory backend) written now from the view it holds, and recorded as the
    /// current snapshot. Blocks for as long as writing the whole state takes: call it off the
    /// async workers.
    pub fn materialized(&self) -> Result<SnapshotData> {
        match &self.body {
            Body::File { .. } | Body::Memory(_) => Ok(self.clone()),
            Body::Deferred(materialize) => {
                let data = materialize.materialize()?;
                assert!(data.is_written());
                Ok(data)
            }
            Body::Unavailable { applied_index } => Err(StorageError::Snapshot(format!(
                "the snapshot at applied index {applied_index} is a point without data; \
                 get_current_snapshot returns data for it"
            ))),
        }
    }

    /// Whether the data is written ([`SnapshotData::len_bytes`] and [`SnapshotData::reader`]
    /// need it to be).
    pub fn is_written(&self) -> bool {
        matches!(&self.body, Body::File { .. } | Body::Memory(_))
    }

    /// The data's length. The data must be written ([`SnapshotData::materialized`]).
    pub fn len_bytes(&self) -> u64 {
        match &self.body {
            Body::File { len_bytes, .. } => *len_bytes,
            Body::Memory(bytes) => bytes.len() as u64,
            Body::Deferred(_) | Body::Unavailable { .. } => {
                panic!("the length of a snapshot not written yet: call materialized() first")
            }
        }
    }

    /// A reader from the first byte; chunks for the network are read from it. The data must
    /// be written ([`SnapshotData::materialized`]).
    pub fn reader(&self) -> SnapshotReader {
        assert!(
            self.is_written(),
            "reading a snapshot not written yet: call materialized() first"
        );
        SnapshotReader {
            body: self.body.clone(),
            offset_bytes: 0,
        }
    }

    fn file_path(&self) -> Option<&Path> {
        match &self.body {
            Body::File { path, .. } => Some(path),
            Body::Memory(_) | Body::Deferred(_) | Body::Unavailable { .. } => None,
        }
    }
}

pub struct SnapshotReader {
    body: Body,
    offset_bytes: u64,
}

impl Read for SnapshotReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let read = match &self.body {
            Body::File {
                file, len_bytes, ..
            } => {
                let remaining = len_bytes.saturating_sub(self.offset_bytes);
                let want = out.len().min(usize_from(remaining));
                if want == 0 {
                    return Ok(0);
                }
                std::os::unix::fs::FileExt::read_at(
                    file.as_ref(),
                    &mut out[..want],
                    self.offset_bytes,
                )?
            }
            Body::Memory(bytes) => {
                let start = usize_from(self.offset_bytes).min(bytes.len());
                let n = out.len().min(bytes.len() - start);
                out[..n].copy_from_slice(&bytes[start..start + n]);
                n
            }
            Body::Deferred(_) | Body::Unavailable { .. } => {
                unreachable!("SnapshotData::reader takes written data only")
            }
        };
        self.offset_bytes += read as u64;
        Ok(read)
    }
}

/// Where a node keeps snapshot data.
#[derive(Debug)]
pub(crate) enum SnapshotStore {
    Dir(PathBuf),
    Memory(Mutex<Option<Arc<Vec<u8>>>>),
}

static SNAPSHOT_NAME_COUNTER: AtomicU64 = AtomicU64::new(0);

impl SnapshotStore {
    /// Snapshot files live in `dir` (`snapshots/` in a node's storage directory).
    pub fn open_dir(dir: &Path) -> Result<SnapshotStore> {
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| StorageError::SnapshotIo {
            path: dir.clone(),
            source,
        })?;
        Ok(SnapshotStore::Dir(dir))
    }

    pub fn memory() -> SnapshotStore {
        SnapshotStore::Memory(Mutex::new(None))
    }

    /// Deletes snapshot files other than `current`: leftovers of a crash or of replaced
    /// snapshots. Only at start: while running, a file that is not current yet may be a
    /// snapshot being received.
    pub fn remove_unreferenced(&self, current: &Option<String>) -> Result<()> {
        let SnapshotStore::Dir(dir) = self else {
            return Ok(());
        };
        let entries = std::fs::read_dir(dir).map_err(|source| StorageError::SnapshotIo {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| StorageError::SnapshotIo {
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = name.ends_with(SNAPSHOT_SUFFIX) || name.ends_with(PARTIAL_SUFFIX);
            if ours && current.as_deref() != Some(name.as_str()) {
                let path = entry.path();
                std::fs::remove_file(&path)
                    .map_err(|source| StorageError::SnapshotIo { path, source })?;
            }
        }
        Ok(())
    }

    /// Removes the file of the snapshot that `current` just replaced, and nothing else: other
    /// files may belong to a receive in progress, or to one received and not yet installed.
    /// Leftovers of a crash go at the next start, in [`SnapshotStore::remove_unreferenced`].
    pub fn remove_replaced(&self, replaced: Option<&str>, current: Option<&str>) -> Result<()> {
        let (SnapshotStore::Dir(dir), Some(name)) = (self, replaced) else {
            return Ok(());
        };
        if Some(name) == current {
            return Ok(());
        }
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(source) if source.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StorageError::SnapshotIo { path, source }),
        }
    }

    pub fn new_sink(&self, bytes_max: u64) -> Result<SnapshotSink> {
        let target = match self {
            SnapshotStore::Dir(dir) => {
                let counter = SNAPSHOT_NAME_COUNTER.fetch_add(1, Ordering::Relaxed);
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let name = format!(
                    "snap-{nanos:x}-{}-{counter}{SNAPSHOT_SUFFIX}",
                    std::process::id()
                );
                let partial = dir.join(format!("{name}{PARTIAL_SUFFIX}"));
                let file = File::create(&partial).map_err(|source| StorageError::SnapshotIo {
                    path: partial.clone(),
                    source,
                })?;
                SinkTarget::file(dir, partial, name, file)
            }
            SnapshotStore::Memory(_) => SinkTarget::Memory(Vec::new()),
        };
        Ok(SnapshotSink::new(target, bytes_max))
    }

    /// A sink for an export (etcd's Snapshot RPC): a `.partial` file opened for reading and
    /// writing, so the export is read back through the handle that wrote it, whatever happens
    /// to its name. It is never renamed and never becomes current.
    pub fn new_export_sink(&self, bytes_max: u64) -> Result<SnapshotSink> {
        let target = match self {
            SnapshotStore::Dir(dir) => {
                let counter = SNAPSHOT_NAME_COUNTER.fetch_add(1, Ordering::Relaxed);
                let name = format!(
                    "export-{}-{counter}{SNAPSHOT_SUFFIX}{PARTIAL_SUFFIX}",
                    std::process::id()
                );
                let partial = dir.join(&name);
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&partial)
                    .map_err(|source| StorageError::SnapshotIo {
                        path: partial.clone(),
                        source,
                    })?;
                SinkTarget::file(dir, partial, name, file)
            }
            SnapshotStore::Memory(_) => SinkTarget::Memory(Vec::new()),
        };
        Ok(SnapshotSink::new(target, bytes_max))
    }

    pub fn open(&self, record: &SnapshotRecord) -> Result<SnapshotData> {
        match (self, &record.file_name) {
            (SnapshotStore::Dir(dir), Some(name)) => {
                let path = dir.join(name);
                let file = File::open(&path).map_err(|source| StorageError::SnapshotIo {
                    path: path.clone(),
                    source,
                })?;
                let len_bytes = file
                    .metadata()
                    .map_err(|source| StorageError::SnapshotIo {
                        path: path.clone(),
                        source,
                    })?
                    .len();
                if len_bytes != record.len_bytes {
                    return Err(StorageError::Snapshot(format!(
                        "{} has {len_bytes} bytes, expected {}",
                        path.display(),
                        record.len_bytes
                    )));
                }
                Ok(SnapshotData {
                    body: Body::File {
                        file: Arc::new(file),
                        path,
                        len_bytes,
                    },
                })
            }
            (SnapshotStore::Memory(current), None) => {
                let guard = current.lock().unwrap_or_else(|p| p.into_inner());
                let bytes = guard
                    .clone()
                    .ok_or_else(|| StorageError::Snapshot("in-memory snapshot missing".into()))?;
                Ok(SnapshotData {
                    body: Body::Memory(bytes),
                })
            }
            _ => Err(StorageError::Snapshot(
                "snapshot record does not match the backend".into(),
            )),
        }
    }

    /// Makes `data` this store's own: a file already in our directory is used as it is,
    /// anything else is copied in, chunk by chunk. Returns the data and its file name.
    pub fn adopt(
        &self,
        data: &SnapshotData,
        bytes_max: u64,
    ) -> Result<(SnapshotData, Option<String>)> {
        let data = &data.materialized()?;
        if let (SnapshotStore::Dir(dir), Some(path)) = (self, data.file_path())
            && path.parent() == Some(dir.as_path())
        {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            return Ok((data.clone(), name));
        }
        if let (SnapshotStore::Memory(_), Body::Memory(_)) = (self, &data.body) {
            return Ok((data.clone(), None));
        }
        let mut sink = self.new_sink(bytes_max)?;
        let mut reader = data.reader();
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            let n = reader
                .read(&mut chunk)
                .map_err(|e| StorageError::Snapshot(format!("reading snapshot: {e}")))?;
            if n == 0 {
                break;
            }
            sink.write_raw(&chunk[..n])?;
        }
        sink.finish()
    }

    /// Records `bytes` as the current in-memory snapshot (memory backend only).
    pub fn set_memory_current(&self, data: &SnapshotData) {
        if let (SnapshotStore::Memory(current), Body::Memory(bytes)) = (self, &data.body) {
            *current.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes.clone());
        }
    }

    /// Drops the current in-memory snapshot (memory backend only): a snapshot point replaced
    /// its record.
    pub fn clear_memory_current(&self) {
        if let SnapshotStore::Memory(current) = self {
            *current.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }
}

/// Writes a new snapshot; nothing is visible until `finish`.
pub(crate) struct SnapshotSink {
    target: SinkTarget,
    /// The end of the data: the furthest byte written.
    written_bytes: u64,
    /// Where the next write goes: the end, unless an export seeked back (see `Seek`).
    position_bytes: u64,
    bytes_max: u64,
    crc: crc32fast::Hasher,
}

enum SinkTarget {
    File {
        writer: BufWriter<File>,
        partial: PathBuf,
        dir: PathBuf,
        name: String,
    },
    Memory(Vec<u8>),
}

impl SinkTarget {
    fn file(dir: &Path, partial: PathBuf, name: String, file: File) -> SinkTarget {
        SinkTarget::File {
            writer: BufWriter::with_capacity(256 * 1024, file),
            partial,
            dir: dir.to_path_buf(),
            name,
        }
    }
}

impl SnapshotSink {
    fn new(target: SinkTarget, bytes_max: u64) -> SnapshotSink {
        SnapshotSink {
            target,
            written_bytes: 0,
            position_bytes: 0,
            bytes_max,
            crc: crc32fast::Hasher::new(),
        }
    }

    /// Writes bytes as they are at the current position (the end, unless the sink was
    /// seeked), with the size limit enforced.
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        let end_bytes = self.position_bytes + bytes.len() as u64;
        if end_bytes > self.bytes_max {
            return Err(StorageError::Snapshot(format!(
                "snapshot larger than the limit of {} bytes",
                self.bytes_max
            )));
        }
        self.crc.update(bytes);
        match &mut self.target {
            SinkTarget::File {
                writer, partial, ..
            } => writer
                .write_all(bytes)
                .map_err(|source| StorageError::SnapshotIo {
                    path: partial.clone(),
                    source,
                })?,
            SinkTarget::Memory(buffer) => {
                let at = usize_from(self.position_bytes);
                let overlap = bytes.len().min(buffer.len().saturating_sub(at));
                buffer[at..at + overlap].copy_from_slice(&bytes[..overlap]);
                buffer.extend_from_slice(&bytes[overlap..]);
            }
        }
        self.position_bytes = end_bytes;
        self.written_bytes = self.written_bytes.max(end_bytes);
        Ok(())
    }

    pub fn write_frame(&mut self, frame: &Frame, buffer: &mut Vec<u8>) -> Result<()> {
        buffer.clear();
        buffer.extend_from_slice(&[0u8; 4]);
        codec::encode_into(frame, buffer);
        let body_len = (buffer.len() - 4) as u64;
        assert!(
            body_len <= SNAPSHOT_FRAME_BYTES_MAX,
            "snapshot frame of {body_len} bytes exceeds the frame limit"
        );
        let Ok(body_len) = u32::try_from(body_len) else {
            unreachable!("asserted: at most SNAPSHOT_FRAME_BYTES_MAX, which fits a u32");
        };
        buffer[..4].copy_from_slice(&body_len.to_be_bytes());
        let bytes = std::mem::take(buffer);
        let result = self.write_raw(&bytes);
        *buffer = bytes;
        result
    }

    /// Appends the CRC trailer when building; used by the builder before `finish`.
    pub fn write_trailer(&mut self) -> Result<()> {
        let crc = self.crc.clone().finalize();
        self.write_raw(&crc.to_be_bytes())
    }

    /// Makes the snapshot durable and visible under its final name.
    pub fn finish(self) -> Result<(SnapshotData, Option<String>)> {
        match self.target {
            SinkTarget::Memory(bytes) => Ok((
                SnapshotData {
                    body: Body::Memory(Arc::new(bytes)),
                },
                None,
            )),
            SinkTarget::File {
                writer,
                partial,
                dir,
                name,
            } => {
                let io = |source| StorageError::SnapshotIo {
                    path: partial.clone(),
                    source,
                };
                let file = writer.into_inner().map_err(|e| io(e.into_error()))?;
                file.sync_all().map_err(io)?;
                drop(file);
                let path = dir.join(&name);
                std::fs::rename(&partial, &path).map_err(io)?;
                File::open(&dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|source| StorageError::SnapshotIo {
                        path: dir.clone(),
                        source,
                    })?;
                let file = File::open(&path).map_err(|source| StorageError::SnapshotIo {
                    path: path.clone(),
                    source,
                })?;
                let len_bytes = self.written_bytes;
                Ok((
                    SnapshotData {
                        body: Body::File {
                            file: Arc::new(file),
                            path,
                            len_bytes,
                        },
                    },
                    Some(name),
                ))
            }
        }
    }
}

impl SnapshotSink {
    /// Ends an export sink (see [`SnapshotStore::new_export_sink`]): flushed but not synced
    /// (an export need not survive a crash), readable through the handle that wrote it.
    pub fn finish_export(self) -> Result<SnapshotData> {
        let len_bytes = self.written_bytes;
        match self.target {
            SinkTarget::Memory(bytes) => Ok(SnapshotData {
                body: Body::Memory(Arc::new(bytes)),
            }),
            SinkTarget::File {
                writer, partial, ..
            } => {
                let file = writer.into_inner().map_err(|e| StorageError::SnapshotIo {
                    path: partial.clone(),
                    source: e.into_error(),
                })?;
                Ok(SnapshotData {
                    body: Body::File {
                        file: Arc::new(file),
                        path: partial,
                        len_bytes,
                    },
                })
            }
        }
    }
}

/// An export in etcd's format (a bbolt file) is written front to back, then its meta pages
/// at the start: the sink is a `Write + Seek` for it. The CRC is meaningless then, and unused.
impl Write for SnapshotSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.write_raw(bytes).map_err(std::io::Error::other)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.target {
            SinkTarget::File { writer, .. } => writer.flush(),
            SinkTarget::Memory(_) => Ok(()),
        }
    }
}

impl Seek for SnapshotSink {
    /// Only to a place already written or its end: a sink has no holes.
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let SeekFrom::Start(position_bytes) = to else {
            return Err(std::io::Error::other(
                "a snapshot sink seeks from the start only",
            ));
        };
        if position_bytes > self.written_bytes {
            return Err(std::io::Error::other(
                "seek past the end of a snapshot sink",
            ));
        }
        if let SinkTarget::File { writer, .. } = &mut self.target {
            writer.seek(SeekFrom::Start(position_bytes))?;
        }
        self.position_bytes = position_bytes;
        Ok(position_bytes)
    }
}

/// A point-in-time copy of the state machine in the snapshot format, made for a client (etcd's
/// Snapshot RPC) and never installed or offered to Raft. Its file, if any, is deleted on drop.
pub struct SnapshotExport {
    meta: SnapshotMeta,
    data: SnapshotData,
}

impl SnapshotExport {
    pub(crate) fn new(meta: SnapshotMeta, data: SnapshotData) -> SnapshotExport {
        SnapshotExport { meta, data }
    }

    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// The exported bytes: magic, frames, CRC trailer, as a Raft snapshot.
    pub fn data(&self) -> &SnapshotData {
        &self.data
    }
}

impl std::fmt::Debug for SnapshotExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapshotExport({:?})", self.data)
    }
}

impl Drop for SnapshotExport {
    fn drop(&mut self) {
        let Some(path) = self.data.file_path() else {
            return;
        };
        // Readers holding a clone keep their handle; unlinking only frees the name. A file
        // left by a crash is removed by `remove_unreferenced` at the next start.
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "removing snapshot export")
            }
        }
    }
}

/// Receives a snapshot from the network chunk by chunk; `finish` checks it is complete.
///
/// Its file is its own business: a receive that is refused or abandoned removes it, since
/// nothing else does before the next restart (see [`SnapshotStore::remove_replaced`]).
pub struct SnapshotReceiver {
    /// `None` only inside `finish`.
    sink: Option<SnapshotSink>,
}

impl SnapshotReceiver {
    pub(crate) fn new(sink: SnapshotSink) -> SnapshotReceiver {
        SnapshotReceiver { sink: Some(sink) }
    }

    fn sink(&mut self) -> &mut SnapshotSink {
        let Some(sink) = self.sink.as_mut() else {
            unreachable!("a receiver holds its sink until finish");
        };
        sink
    }

    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<()> {
        self.sink().write_raw(chunk)
    }

    pub fn received_bytes(&self) -> u64 {
        self.sink.as_ref().map_or(0, |sink| sink.written_bytes)
    }

    pub fn finish(mut self) -> Result<SnapshotData> {
        let Some(sink) = self.sink.take() else {
            unreachable!("a receiver holds its sink until finish");
        };
        let (data, _) = sink.finish()?;
        if let Err(error) = verify(&data) {
            // A refused snapshot must not stay on disk until the next restart: a leader that
            // keeps sending a damaged one would otherwise fill the disk.
            if let Some(path) = data.file_path() {
                remove_file_logged(path, "a refused snapshot");
            }
            return Err(error);
        }
        Ok(data)
    }
}

impl Drop for SnapshotReceiver {
    /// An abandoned receive (the leader went away mid-transfer) removes its partial file.
    fn drop(&mut self) {
        if let Some(SnapshotSink {
            target: SinkTarget::File { partial, .. },
            ..
        }) = &self.sink
        {
            remove_file_logged(partial, "an abandoned snapshot receive");
        }
    }
}

/// Removes a file the caller no longer needs; a failure only costs disk space until the next
/// start (which removes every unreferenced snapshot file), so it is logged, not returned.
fn remove_file_logged(path: &Path, what: &str) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove {what}"),
    }
}

/// Reads frames back, checking lengths and, at the end, the CRC.
pub(crate) struct FrameReader<R: Read> {
    reader: R,
    crc: crc32fast::Hasher,
    frames_read: u64,
    finished: bool,
}

impl<R: Read> FrameReader<R> {
    pub fn new(mut reader: R) -> Result<FrameReader<R>> {
        let mut magic = [0u8; 8];
        reader
            .read_exact(&mut magic)
            .map_err(|e| StorageError::Snapshot(format!("reading magic: {e}")))?;
        if &magic != SNAPSHOT_MAGIC {
            return Err(StorageError::Snapshot(
                "not an Aspen snapshot (bad magic)".into(),
            ));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&magic);
        Ok(FrameReader {
            reader,
            crc,
            frames_read: 0,
            finished: false,
        })
    }

    /// The next frame; `None` after `End` once the trailer has been checked.
    pub fn next_frame(&mut self, buffer: &mut Vec<u8>) -> Result<Option<Frame>> {
        if self.finished {
            return Ok(None);
        }
        let truncated =
            |e: std::io::Error| StorageError::Snapshot(format!("truncated snapshot: {e}"));
        let mut len = [0u8; 4];
        self.reader.read_exact(&mut len).map_err(truncated)?;
        let body_len = u32::from_be_bytes(len) as u64;
        if body_len > SNAPSHOT_FRAME_BYTES_MAX {
            return Err(StorageError::Snapshot(format!(
                "frame of {body_len} bytes exceeds the limit"
            )));
        }
        buffer.resize(usize_from(body_len), 0);
        self.reader.read_exact(buffer).map_err(truncated)?;
        self.crc.update(&len);
        self.crc.update(buffer);
        let frame: Frame = crate::error::decode("snapshot", buffer)?;
        self.frames_read += 1;
        if let Frame::End { frames } = &frame {
            if *frames + 1 != self.frames_read {
                return Err(StorageError::Snapshot(format!(
                    "snapshot says {frames} frames, read {}",
                    self.frames_read - 1
                )));
            }
            let mut trailer = [0u8; 4];
            self.reader.read_exact(&mut trailer).map_err(truncated)?;
            let expected = self.crc.clone().finalize();
            if u32::from_be_bytes(trailer) != expected {
                return Err(StorageError::Snapshot("snapshot checksum mismatch".into()));
            }
            let mut extra = [0u8; 1];
            if self.reader.read(&mut extra).map_err(truncated)? != 0 {
                return Err(StorageError::Snapshot(
                    "bytes after the snapshot trailer".into(),
                ));
            }
            self.finished = true;
        }
        Ok(Some(frame))
    }
}

/// Reads a whole snapshot through, checking framing and checksum, without applying it.
pub fn verify(data: &SnapshotData) -> Result<()> {
    let mut reader =
        FrameReader::new(std::io::BufReader::with_capacity(256 * 1024, data.reader()))?;
    let mut buffer = Vec::new();
    while reader.next_frame(&mut buffer)?.is_some() {}
    Ok(())
}
