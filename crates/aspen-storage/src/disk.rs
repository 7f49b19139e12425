//! The data dir's filesystem: its free space against the reserve (below it the node refuses
//! writes that grow the store, so a full disk is the exception, not the normal way to stop),
//! and the first I/O failure any of the node's files met (why Raft stopped, if it did).
//!
//! A redb database that fails a write (a full disk, EIO) refuses every later operation until
//! it is reopened, and openraft stops its core on the first storage error. So nothing in here
//! tries to carry on after a failure: the failure is recorded, and the server turns it into an
//! orderly exit with its own exit code (`aspen-server/src/main.rs`), for a supervisor to
//! restart the process once there is room again. The reserve keeps that from happening in the
//! common case, where the node's own data fills the disk.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use aspen_core::limits::{DISK_FREE_CHECK_INTERVAL_MS, DISK_RESERVE_FS_DIVISOR};

/// The first I/O error one of the node's files met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoFailure {
    /// The filesystem was full (ENOSPC) or a quota was exceeded (EDQUOT).
    pub disk_full: bool,
    /// What failed, and the OS's message.
    pub message: String,
}

/// Where a store records its first I/O failure; shared by its files' backends.
#[derive(Debug, Default)]
pub(crate) struct IoFailures {
    first: OnceLock<IoFailure>,
}

impl IoFailures {
    /// Records `error` if it is the first failure; later ones are consequences of it.
    pub fn record(&self, what: &str, error: &io::Error) {
        let failure = IoFailure {
            disk_full: is_disk_full(error),
            message: format!("{what}: {error}"),
        };
        if self.first.set(failure).is_ok() {
            tracing::error!(what, %error, "storage I/O failed");
        }
    }

    pub fn first(&self) -> Option<IoFailure> {
        self.first.get().cloned()
    }
}

/// Whether an I/O error means the filesystem has no room (ENOSPC, EDQUOT).
pub fn is_disk_full(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Free and total bytes of the filesystem holding `path`, for an unprivileged user.
pub fn filesystem_space(path: &Path) -> io::Result<(u64, u64)> {
    let stat = rustix::fs::statvfs(path).map_err(io::Error::from)?;
    let block_bytes = stat.f_frsize.max(1);
    Ok((
        stat.f_bavail.saturating_mul(block_bytes),
        stat.f_blocks.saturating_mul(block_bytes),
    ))
}

/// The bytes kept free on a filesystem of `total_bytes` for `--disk-reserve-bytes`: the flag's
/// value, at most 1/`DISK_RESERVE_FS_DIVISOR` of the filesystem.
pub fn effective_reserve_bytes(reserve_bytes: u64, total_bytes: u64) -> u64 {
    reserve_bytes.min(total_bytes / DISK_RESERVE_FS_DIVISOR)
}

/// Bytes of a page-aligned redb allocation per payload byte, at most: redb rounds an
/// allocation up to a power of two of pages, so a value just past one takes nearly twice its
/// size. Applied to the bytes the store owes the disk (`Shared::owed_disk_bytes`).
pub(crate) const OWED_ALLOCATION_FACTOR: u64 = 2;

/// The disk is below the reserve: what a refused write reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLow {
    pub free_bytes: u64,
    pub reserve_bytes: u64,
    /// What the store's files will still write without any new request (see
    /// `Store::disk_low`).
    pub owed_bytes: u64,
}

/// The write path's view of the data dir's free space: measured at most every
/// `DISK_FREE_CHECK_INTERVAL_MS`, the last measurement reused in between.
#[derive(Debug)]
pub(crate) struct DiskSpace {
    /// None: in memory, nothing to check.
    dir: Option<PathBuf>,
    reserve_bytes: u64,
    started: Instant,
    /// Milliseconds after `started` of the last measurement, plus one (0: never measured).
    checked_ms: AtomicU64,
    free_bytes: AtomicU64,
    effective_reserve_bytes: AtomicU64,
}

impl DiskSpace {
    pub fn new(dir: Option<PathBuf>, reserve_bytes: u64) -> DiskSpace {
        DiskSpace {
            dir: dir.filter(|_| reserve_bytes > 0),
            reserve_bytes,
            started: Instant::now(),
            checked_ms: AtomicU64::new(0),
            free_bytes: AtomicU64::new(u64::MAX),
            effective_reserve_bytes: AtomicU64::new(0),
        }
    }

    /// `Some` while the filesystem has less free than the reserve plus `owed_bytes`, what the
    /// store will write anyway (the bytes it already took and has not put in its files yet:
    /// refusing new writes must leave room for them). A failed measurement counts as room:
    /// the check is a guard, and a real failure shows up in the write itself.
    pub fn low(&self, owed_bytes: u64) -> Option<DiskLow> {
        let dir = self.dir.as_ref()?;
        let now_ms = aspen_core::convert::millis(self.started.elapsed()) + 1;
        let checked_ms = self.checked_ms.load(Ordering::Acquire);
        if checked_ms == 0 || now_ms.saturating_sub(checked_ms) >= DISK_FREE_CHECK_INTERVAL_MS {
            self.measure(dir, now_ms);
        }
        let free_bytes = self.free_bytes.load(Ordering::Acquire);
        let reserve_bytes = self.effective_reserve_bytes.load(Ordering::Acquire);
        if free_bytes >= reserve_bytes.saturating_add(owed_bytes) {
            return None;
        }
        Some(DiskLow {
            free_bytes,
            reserve_bytes,
            owed_bytes,
        })
    }

    fn measure(&self, dir: &Path, now_ms: u64) {
        self.checked_ms.store(now_ms, Ordering::Release);
        let Ok((free_bytes, total_bytes)) = filesystem_space(dir) else {
            self.free_bytes.store(u64::MAX, Ordering::Release);
            return;
        };
        let reserve_bytes = effective_reserve_bytes(self.reserve_bytes, total_bytes);
        self.free_bytes.store(free_bytes, Ordering::Release);
        self.effective_reserve_bytes
            .store(reserve_bytes, Ordering::Release);
    }
}
