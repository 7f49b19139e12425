//! Shared by the storage tests that need a disk that fails.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend as RedbBackend};

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

/// redb's file backend with two switches a test flips to make the disk fail as a real one
/// does: while `full` is set, writes and resizes fail with ENOSPC; once `fail_next_sync` is
/// set, the next `sync_data` fails with EIO (and the switch clears). Everything else passes
/// through.
#[derive(Debug)]
pub struct FaultyDisk {
    inner: FileBackend,
    full: Arc<AtomicBool>,
    fail_next_sync: Arc<AtomicBool>,
}

impl FaultyDisk {
    pub fn open(path: &Path, full: &Arc<AtomicBool>, fail_next_sync: &Arc<AtomicBool>) -> Self {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .expect("open file");
        FaultyDisk {
            inner: FileBackend::new(file).expect("file backend"),
            full: Arc::clone(full),
            fail_next_sync: Arc::clone(fail_next_sync),
        }
    }

    fn check_room(&self) -> Result<(), std::io::Error> {
        if self.full.load(Ordering::Acquire) {
            return Err(std::io::Error::from_raw_os_error(ENOSPC));
        }
        Ok(())
    }
}

impl RedbBackend for FaultyDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.check_room()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        if self.fail_next_sync.swap(false, Ordering::AcqRel) {
            return Err(std::io::Error::from_raw_os_error(EIO));
        }
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.check_room()?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}
