//! The log journal's file with its record writes going around the page cache (`O_DIRECT`).
//!
//! A journal record is whole 4 KiB blocks at a block offset (`journal.rs`), written once and
//! synced at once. Through the page cache that write copies the record into cached pages, and
//! the `fdatasync` after it walks the file's dirty pages, writes them back through ext4's
//! writeback path and waits; with `O_DIRECT` the write goes to the device from the caller's
//! buffer and the `fdatasync` only flushes the device's cache. The zero fill when the file is
//! created is whole blocks too and goes the same way. Everything else (a write that is not
//! whole aligned blocks, the replay's reads, resizing, syncs) goes through the file as before:
//! the kernel writes back and drops cached pages of a range before a direct write to it, so a
//! later buffered read sees what was written directly.
//!
//! A filesystem that refuses `O_DIRECT` (tmpfs before Linux 6.6, some network filesystems)
//! refuses it when the file is opened or at the first direct write (`EINVAL`): the journal then
//! writes through the page cache, as it always did, and says so once in the log.

use std::fs::File;
use std::os::unix::fs::FileExt;
#[cfg(target_os = "linux")]
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use redb::StorageBackend;

type BackendIoError = std::io::Error;

/// The alignment `O_DIRECT` needs for the buffer, the offset and the length on the filesystems
/// Aspen runs on (the logical block size is at most this); a record is whole blocks of it.
pub(crate) const DIRECT_WRITE_ALIGN_BYTES: usize = 4096;

/// The aligned buffer is kept between writes up to this size; a larger write (a record may be
/// up to a quarter of the journal, 2 MiB) grows it for that write, and it is freed afterwards.
const DIRECT_BUFFER_BYTES_KEPT: usize = 1024 * 1024;

/// `inner` for everything, with block-aligned writes through a second descriptor opened with
/// `O_DIRECT` while the filesystem allows it.
#[derive(Debug)]
pub(crate) struct DirectWrites<B: StorageBackend> {
    inner: B,
    direct: Option<File>,
    /// Cleared when a direct write is refused: every later write goes through `inner`.
    direct_ok: AtomicBool,
    /// Writes that went through the direct descriptor (for tests and diagnostics).
    direct_writes: AtomicU64,
    /// The aligned copy of a record (`O_DIRECT` needs an aligned buffer); its start is
    /// rounded up inside the vector, so the vector is one alignment longer than it holds.
    scratch: Mutex<Vec<u8>>,
    path: String,
}

impl<B: StorageBackend> DirectWrites<B> {
    /// `inner` is the file at `path`, already open; `path` is opened a second time for direct
    /// writes, if its filesystem allows.
    pub(crate) fn new(inner: B, path: &Path) -> DirectWrites<B> {
        let direct = open_direct(path);
        let direct = match direct {
            Ok(file) => Some(file),
            Err(error) => {
                tracing::info!(
                    path = %path.display(),
                    %error,
                    "the journal's filesystem refuses O_DIRECT: records go through the page cache"
                );
                None
            }
        };
        DirectWrites {
            inner,
            direct_ok: AtomicBool::new(direct.is_some()),
            direct_writes: AtomicU64::new(0),
            direct,
            scratch: Mutex::new(Vec::new()),
            path: path.display().to_string(),
        }
    }

    /// Writes `data` at `offset` through the direct descriptor. `Ok(false)`: not done, the
    /// caller writes through `inner` (not aligned, or the filesystem refused).
    fn write_direct(&self, offset: u64, data: &[u8]) -> std::io::Result<bool> {
        let aligned = offset.is_multiple_of(DIRECT_WRITE_ALIGN_BYTES as u64)
            && data.len().is_multiple_of(DIRECT_WRITE_ALIGN_BYTES)
            && !data.is_empty();
        let Some(direct) = self.direct.as_ref() else {
            return Ok(false);
        };
        if !aligned || !self.direct_ok.load(Ordering::Acquire) {
            return Ok(false);
        }
        let mut scratch = self
            .scratch
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let needed = data.len() + DIRECT_WRITE_ALIGN_BYTES;
        if scratch.len() < needed {
            scratch.resize(needed, 0);
        }
        let start = scratch.as_ptr().align_offset(DIRECT_WRITE_ALIGN_BYTES);
        assert!(
            start < DIRECT_WRITE_ALIGN_BYTES,
            "no aligned start in the buffer"
        );
        let buffer = &mut scratch[start..start + data.len()];
        buffer.copy_from_slice(data);
        let written = direct.write_all_at(buffer, offset);
        if scratch.len() > DIRECT_BUFFER_BYTES_KEPT + DIRECT_WRITE_ALIGN_BYTES {
            *scratch = Vec::new();
        }
        match written {
            Ok(()) => {
                self.direct_writes.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(error) if error.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                self.direct_ok.store(false, Ordering::Release);
                tracing::info!(
                    path = %self.path,
                    %error,
                    "the journal's filesystem refused a direct write: records go through the \
                     page cache"
                );
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }
}

/// `path` opened for writing with `O_DIRECT` (Linux; elsewhere `Unsupported`).
#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> std::io::Result<File> {
    let direct_flag = i32::try_from(rustix::fs::OFlags::DIRECT.bits())
        .map_err(|_| std::io::Error::other("O_DIRECT does not fit an open flag"))?;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(direct_flag)
        .open(path)
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> std::io::Result<File> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "O_DIRECT is used on Linux only",
    ))
}

impl<B: StorageBackend> StorageBackend for DirectWrites<B> {
    fn len(&self) -> Result<u64, BackendIoError> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendIoError> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), BackendIoError> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), BackendIoError> {
        // Also the device's cache flush for the direct writes: their data is on the device,
        // not necessarily on stable media, until this returns.
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendIoError> {
        // `inner` keeps no length of its own (redb's file backend asks the file), so a direct
        // write that extends the file needs nothing more; the journal's never do (its file is
        // filled to length when created).
        if self.write_direct(offset, data)? {
            return Ok(());
        }
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), BackendIoError> {
        self.inner.close()
    }

    // No byte-range locks: the journal is not a redb database, and nothing locks it (redb's
    // defaults answer `Unsupported`).
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::expect_used,
        reason = "a test: a failed expect is a failed test"
    )]

    use super::*;

    const FILE_BYTES: u64 = 64 * 1024;

    fn opened(dir: &Path) -> DirectWrites<redb::backends::FileBackend> {
        let path = dir.join("journal");
        let inner = crate::backend::file_backend(&path).expect("open");
        let file = DirectWrites::new(inner, &path);
        file.set_len(FILE_BYTES).expect("set_len");
        file
    }

    fn assert_reads(file: &impl StorageBackend, offset: u64, expected: &[u8], what: &str) {
        let mut out = vec![0u8; expected.len()];
        file.read(offset, &mut out).expect("read");
        let first_difference = out.iter().zip(expected).position(|(a, b)| a != b);
        assert!(
            first_difference.is_none(),
            "{what}: byte {first_difference:?} differs"
        );
    }

    /// Aligned blocks (the direct path where the filesystem allows it), an unaligned write
    /// (the page cache), and an aligned write over cached pages: every read sees the last
    /// write, through the same handle and through a fresh one. Returns whether any write went
    /// through the direct descriptor.
    fn check_writes_read_back(dir: &Path, refused: bool) -> bool {
        let file = opened(dir);
        if refused {
            file.direct_ok.store(false, Ordering::Release);
        }
        let block: Vec<u8> = (0..DIRECT_WRITE_ALIGN_BYTES * 2)
            .map(|i| u8::try_from(i % 251).expect("below 251"))
            .collect();
        file.write(4096, &block).expect("aligned write");
        assert_reads(&file, 4096, &block, "aligned write");

        file.write(4096 + 100, b"unaligned")
            .expect("unaligned write");
        let mut expected = block.clone();
        expected[100..109].copy_from_slice(b"unaligned");
        assert_reads(&file, 4096, &expected, "unaligned write");

        let again = vec![7u8; DIRECT_WRITE_ALIGN_BYTES];
        file.write(4096, &again)
            .expect("aligned write over cached pages");
        expected[..DIRECT_WRITE_ALIGN_BYTES].copy_from_slice(&again);
        assert_reads(&file, 4096, &expected, "aligned write over cached pages");
        file.sync_data().expect("sync");
        assert_eq!(file.len().expect("len"), FILE_BYTES);
        let went_direct = file.direct_writes.load(Ordering::Relaxed) > 0;
        file.close().expect("close");
        drop(file);

        let reopened = opened(dir);
        assert_reads(&reopened, 4096, &expected, "after reopening");
        assert_reads(&reopened, 0, &[0u8; 4096], "the block never written");
        went_direct
    }

    #[test]
    fn writes_read_back_on_the_data_dirs_filesystem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let went_direct = check_writes_read_back(dir.path(), false);
        // The filesystems data dirs live on (ext4, xfs, btrfs) take O_DIRECT on Linux.
        let filesystem = rustix::fs::statfs(dir.path()).expect("statfs").f_type;
        let tmpfs = filesystem == 0x0102_1994;
        if cfg!(target_os = "linux") && !tmpfs {
            assert!(went_direct, "aligned writes were not direct in {dir:?}");
        }
    }

    /// tmpfs (`/dev/shm`): it refuses O_DIRECT before Linux 6.6 and takes it since; either
    /// way the journal's writes read back.
    #[test]
    fn writes_read_back_on_tmpfs() {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() { shm } else { Path::new("/tmp") };
        let dir = tempfile::tempdir_in(base).expect("tempdir");
        check_writes_read_back(dir.path(), false);
    }

    /// After a refusal (`direct_ok` cleared, as an `EINVAL` from a direct write clears it)
    /// every write goes through the page cache and reads back.
    #[test]
    fn writes_read_back_after_o_direct_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let went_direct = check_writes_read_back(dir.path(), true);
        assert!(!went_direct, "a write went direct after the refusal");
    }
}
