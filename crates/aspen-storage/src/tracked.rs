//! A redb storage backend wrapper that keeps the file's length and the bytes written since the
//! last sync in atomics, so that sizes are read without a transaction and without walking pages.
//!
//! redb grows a file only through `set_len`, so the tracked length is the file's length; a
//! `write` past it (which redb does not do) raises it too. "Unsynced" counts every byte written
//! since the last `sync_data`: what a crash could lose, and what the state machine's durable
//! cadence bounds.

use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{BackendError, StorageBackend};

use crate::disk::IoFailures;

type BackendIoError = std::io::Error;

/// Sizes of one tracked file, shared between the backend (inside redb) and the store.
#[derive(Debug, Default)]
pub(crate) struct FileGauge {
    len_bytes: AtomicU64,
    unsynced_bytes: AtomicU64,
    syncs: AtomicU64,
}

impl FileGauge {
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes.load(Ordering::Acquire)
    }

    pub fn unsynced_bytes(&self) -> u64 {
        self.unsynced_bytes.load(Ordering::Acquire)
    }

    /// `sync_data` calls so far.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Acquire)
    }
}

/// `inner` with its sizes mirrored into a [`FileGauge`].
#[derive(Debug)]
pub(crate) struct TrackedBackend<B: StorageBackend> {
    inner: B,
    gauge: Arc<FileGauge>,
    /// Where a failed write, resize or sync is recorded, named by `file`.
    failures: Arc<IoFailures>,
    file: String,
}

impl<B: StorageBackend> TrackedBackend<B> {
    pub fn new(
        inner: B,
        failures: Arc<IoFailures>,
        file: String,
    ) -> Result<(TrackedBackend<B>, Arc<FileGauge>), BackendIoError> {
        let gauge = Arc::new(FileGauge::default());
        gauge.len_bytes.store(inner.len()?, Ordering::Release);
        let tracked = TrackedBackend {
            inner,
            gauge: Arc::clone(&gauge),
            failures,
            file,
        };
        Ok((tracked, gauge))
    }

    /// Passes `result` through, recording an error as this file's failure.
    fn noted<T>(&self, verb: &str, result: Result<T, BackendIoError>) -> Result<T, BackendIoError> {
        if let Err(error) = &result {
            self.failures
                .record(&format!("{verb} {}", self.file), error);
        }
        result
    }
}

impl<B: StorageBackend> StorageBackend for TrackedBackend<B> {
    fn len(&self) -> Result<u64, BackendIoError> {
        let len = self.inner.len()?;
        self.gauge.len_bytes.store(len, Ordering::Release);
        Ok(len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendIoError> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), BackendIoError> {
        self.noted("resizing", self.inner.set_len(len))?;
        self.gauge.len_bytes.store(len, Ordering::Release);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), BackendIoError> {
        // Bytes written while the sync runs may or may not be covered: count them as unsynced
        // (subtract what was counted before, never reset to zero).
        let before = self.gauge.unsynced_bytes.load(Ordering::Acquire);
        self.noted("syncing", self.inner.sync_data())?;
        self.gauge
            .unsynced_bytes
            .fetch_sub(before, Ordering::AcqRel);
        self.gauge.syncs.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendIoError> {
        self.noted("writing", self.inner.write(offset, data))?;
        let end = offset.saturating_add(data.len() as u64);
        self.gauge.len_bytes.fetch_max(end, Ordering::AcqRel);
        self.gauge
            .unsynced_bytes
            .fetch_add(data.len() as u64, Ordering::AcqRel);
        Ok(())
    }

    fn close(&self) -> Result<(), BackendIoError> {
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
