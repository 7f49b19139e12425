//! A simulated disk for one node: redb writes land in volatile `live` bytes, `sync_data`
//! makes them durable, and a crash throws away everything written since the last sync.
//!
//! Two crash models: the strict one (every unsynced write is lost), and a torn one (each page
//! written since the last sync independently made it to the platter or not, as a power loss
//! mid-writeback leaves a file). redb promises that a commit is durable once its sync returns,
//! and that the file opens at its last durable commit either way; the storage layer adds its
//! own promise on top: a state machine batch committed without a sync may be lost, but never
//! past the durable log.
//!
//! Faults: an armed sync fails once (EIO), and, as Linux does after a failed fsync, the
//! pages it should have written are marked clean: a later sync reports success without
//! writing them, so a program that carries on after a failed fsync loses data. A full disk
//! refuses to grow the file (ENOSPC) until space is freed.
//!
//! A handle from before a crash is detached: every call on it fails, as I/O on a dead
//! process's file descriptors would, so a crashed node's leftover tasks cannot touch the
//! disk its next incarnation opens.

use std::collections::BTreeSet;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use aspen_core::convert::usize_from;

/// Dirty tracking granularity: syncing copies only the pages written since the last sync.
const PAGE_BYTES: u64 = 4096;

#[derive(Debug, Default)]
struct DiskState {
    live: Vec<u8>,
    durable: Vec<u8>,
    dirty_pages: BTreeSet<u64>,
    /// Bumped by every crash; handles of an older epoch are detached.
    epoch: u64,
    syncs: u64,
    /// The next sync fails (once).
    fail_next_sync: bool,
    /// The planted bug: the failing sync reports success (its pages are dropped all the
    /// same), so the node carries on as if it had been made durable.
    lie_about_failed_sync: bool,
    /// Syncs that failed, across crashes.
    failed_syncs: u64,
    /// While set, the file cannot grow past this many bytes (a full disk).
    len_bytes_max: Option<u64>,
    /// Growths refused for want of space, across crashes.
    refused_growths: u64,
}

/// One node's disk; survives the node's crashes. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A redb backend on this disk's current contents, for a node (re)starting now.
    pub fn attach(&self) -> SimDiskBackend {
        let epoch = self.lock().epoch;
        SimDiskBackend {
            state: self.state.clone(),
            epoch,
        }
    }

    /// Power loss: the disk keeps only what was synced, and every handle attached before is
    /// detached.
    pub fn crash(&self) {
        let mut state = self.lock();
        state.live = state.durable.clone();
        state.dirty_pages.clear();
        state.epoch += 1;
        // An armed sync failure belonged to the incarnation that ended.
        state.fail_next_sync = false;
    }

    /// Power loss mid-writeback: each page written since the last sync is kept or lost at
    /// random (`keep` draws one bit per page, in page order), then as `crash`.
    pub fn crash_torn(&self, keep: &mut dyn FnMut() -> bool) -> u64 {
        let mut state = self.lock();
        let DiskState {
            live,
            durable,
            dirty_pages,
            ..
        } = &mut *state;
        let mut kept = 0;
        // The file's length is metadata: keep the longer one, so that a kept page fits.
        if live.len() > durable.len() {
            durable.resize(live.len(), 0);
        }
        for page in std::mem::take(dirty_pages) {
            let start = aspen_core::convert::usize_from(page * PAGE_BYTES);
            if start >= live.len() || !keep() {
                continue;
            }
            let end = (start + aspen_core::convert::usize_from(PAGE_BYTES)).min(live.len());
            durable[start..end].copy_from_slice(&live[start..end]);
            kept += 1;
        }
        drop(state);
        self.crash();
        kept
    }

    /// The next sync fails with an I/O error; with `lie`, it drops its pages but reports
    /// success (the planted bug `--lying-fsync`: a node that carries on after a failed fsync).
    pub fn fail_next_sync(&self, lie: bool) {
        let mut state = self.lock();
        state.fail_next_sync = true;
        state.lie_about_failed_sync = lie;
    }

    /// The disk is full: the file cannot grow past its current length.
    pub fn fill(&self) {
        let mut state = self.lock();
        state.len_bytes_max = Some(state.live.len() as u64);
    }

    /// Space is freed: the file may grow again; and no sync failure is armed any more.
    pub fn free(&self) {
        let mut state = self.lock();
        state.len_bytes_max = None;
        state.fail_next_sync = false;
    }

    pub fn is_full(&self) -> bool {
        self.lock().len_bytes_max.is_some()
    }

    /// Syncs so far, across crashes.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Failed syncs so far, across crashes.
    pub fn failed_syncs(&self) -> u64 {
        self.lock().failed_syncs
    }

    /// Failed syncs and refused growths so far, across crashes.
    pub fn faults_hit(&self) -> u64 {
        let state = self.lock();
        state.failed_syncs + state.refused_growths
    }

    pub fn durable_len_bytes(&self) -> u64 {
        self.lock().durable.len() as u64
    }
}

/// A node's three files, the log database, its journal and the state database, each on its own
/// simulated disk; a power loss hits all at once. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct NodeDisks {
    pub log: SimDisk,
    /// The log's journal: each durable round of the log writer is a record synced here, the
    /// log database's file only at checkpoints (`aspen_storage::journal`).
    pub journal: SimDisk,
    pub state: SimDisk,
}

impl NodeDisks {
    pub fn new() -> NodeDisks {
        NodeDisks::default()
    }

    /// The three disks, always in this order (a torn crash draws for them in it).
    fn each(&self) -> [&SimDisk; 3] {
        [&self.log, &self.journal, &self.state]
    }

    /// Power loss on all three files.
    pub fn crash(&self) {
        self.each().iter().for_each(|disk| disk.crash());
    }

    /// Power loss mid-writeback on all three files; returns the unsynced pages that were kept.
    pub fn crash_torn(&self, keep: &mut dyn FnMut() -> bool) -> u64 {
        self.each().iter().map(|disk| disk.crash_torn(keep)).sum()
    }

    /// Failed syncs on all three files so far.
    pub fn failed_syncs(&self) -> u64 {
        self.each().iter().map(|disk| disk.failed_syncs()).sum()
    }

    /// Failed syncs and refused growths on all three files so far.
    pub fn faults_hit(&self) -> u64 {
        self.each().iter().map(|disk| disk.faults_hit()).sum()
    }

    pub fn is_full(&self) -> bool {
        self.each().iter().any(|disk| disk.is_full())
    }

    /// Syncs so far on all three files, across crashes.
    pub fn syncs(&self) -> u64 {
        self.each().iter().map(|disk| disk.syncs()).sum()
    }

    pub fn durable_len_bytes(&self) -> u64 {
        self.each()
            .iter()
            .map(|disk| disk.durable_len_bytes())
            .sum()
    }

    /// A full disk under all three files.
    pub fn fill(&self) {
        self.each().iter().for_each(|disk| disk.fill());
    }

    /// Space back under all three files.
    pub fn free(&self) {
        self.each().iter().for_each(|disk| disk.free());
    }
}

/// The redb side of a [`SimDisk`], valid until the disk's next crash.
#[derive(Debug)]
pub struct SimDiskBackend {
    state: Arc<Mutex<DiskState>>,
    epoch: u64,
}

fn detached() -> io::Error {
    io::Error::other("simulated disk: this handle was detached by a crash")
}

impl SimDiskBackend {
    fn lock(&self) -> Result<MutexGuard<'_, DiskState>, io::Error> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.epoch != self.epoch {
            return Err(detached());
        }
        Ok(state)
    }
}

fn range_of(offset: u64, len: usize) -> Result<std::ops::Range<usize>, io::Error> {
    let start = usize::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
    let end = start
        .checked_add(len)
        .ok_or_else(|| io::Error::other("range overflows"))?;
    Ok(start..end)
}

impl redb::StorageBackend for SimDiskBackend {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.lock()?.live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let state = self.lock()?;
        let range = range_of(offset, out.len())?;
        let source = state
            .live
            .get(range)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        out.copy_from_slice(source);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut state = self.lock()?;
        if state.len_bytes_max.is_some_and(|max| len > max) {
            state.refused_growths += 1;
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "simulated disk: No space left on device",
            ));
        }
        let len = usize::try_from(len).map_err(|_| io::Error::other("length too large"))?;
        state.live.resize(len, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut state = self.lock()?;
        if state.fail_next_sync {
            state.fail_next_sync = false;
            state.failed_syncs += 1;
            // Linux marks the pages of a failed writeback clean: they are never written.
            state.dirty_pages.clear();
            if state.lie_about_failed_sync {
                state.syncs += 1;
                return Ok(());
            }
            return Err(io::Error::other("simulated disk: fsync failed (EIO)"));
        }
        let DiskState {
            live,
            durable,
            dirty_pages,
            syncs,
            ..
        } = &mut *state;
        durable.resize(live.len(), 0);
        for page in std::mem::take(dirty_pages) {
            let start = usize_from(page * PAGE_BYTES);
            if start >= live.len() {
                continue;
            }
            let end = (start + usize_from(PAGE_BYTES)).min(live.len());
            durable[start..end].copy_from_slice(&live[start..end]);
        }
        *syncs += 1;
        debug_assert!(durable.len() == live.len());
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut state = self.lock()?;
        let range = range_of(offset, data.len())?;
        if range.end > state.live.len() {
            return Err(io::Error::other("write past the end"));
        }
        state.live[range.clone()].copy_from_slice(data);
        if !data.is_empty() {
            let first = range.start as u64 / PAGE_BYTES;
            let last = (range.end as u64 - 1) / PAGE_BYTES;
            state.dirty_pages.extend(first..=last);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, StorageBackend};

    #[test]
    fn crash_keeps_only_synced_bytes() {
        let disk = SimDisk::new();
        let backend = disk.attach();
        backend.set_len(3 * PAGE_BYTES).unwrap();
        backend.write(10, b"synced").unwrap();
        backend.sync_data().unwrap();
        backend.write(PAGE_BYTES * 2, b"lost").unwrap();
        disk.crash();
        assert!(
            backend.read(0, &mut [0u8; 4]).is_err(),
            "old handle is detached"
        );
        let after = disk.attach();
        let mut out = [0u8; 6];
        after.read(10, &mut out).unwrap();
        assert_eq!(&out, b"synced");
        let mut out = [0u8; 4];
        after.read(PAGE_BYTES * 2, &mut out).unwrap();
        assert_eq!(out, [0u8; 4]);
    }

    #[test]
    fn a_failed_sync_loses_its_pages_for_good_and_a_full_disk_refuses_to_grow() {
        let disk = SimDisk::new();
        let backend = disk.attach();
        backend.set_len(2 * PAGE_BYTES).unwrap();
        backend.write(0, b"lost").unwrap();
        disk.fail_next_sync(false);
        assert!(backend.sync_data().is_err());
        // A retried sync "succeeds" without writing the pages the failed one dropped.
        backend.sync_data().unwrap();
        disk.crash();
        let after = disk.attach();
        let mut out = [0u8; 4];
        after.read(0, &mut out).unwrap();
        assert_eq!(out, [0u8; 4]);
        assert_eq!(disk.faults_hit(), 1);
        disk.fill();
        let error = after.set_len(3 * PAGE_BYTES).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::StorageFull);
        after.set_len(PAGE_BYTES).unwrap();
        disk.free();
        after.set_len(3 * PAGE_BYTES).unwrap();
        assert_eq!(disk.faults_hit(), 2);
    }

    #[test]
    fn a_torn_crash_keeps_some_unsynced_pages() {
        let disk = SimDisk::new();
        let backend = disk.attach();
        backend.set_len(2 * PAGE_BYTES).unwrap();
        backend.sync_data().unwrap();
        backend.write(0, b"kept").unwrap();
        backend.write(PAGE_BYTES, b"gone").unwrap();
        let mut first = true;
        let kept = disk.crash_torn(&mut || std::mem::replace(&mut first, false));
        assert_eq!(kept, 1);
        let after = disk.attach();
        let mut out = [0u8; 4];
        after.read(0, &mut out).unwrap();
        assert_eq!(&out, b"kept");
        after.read(PAGE_BYTES, &mut out).unwrap();
        assert_eq!(out, [0u8; 4]);
    }

    #[test]
    fn redb_reopens_from_durable_bytes() {
        let table: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("t");
        let disk = SimDisk::new();
        let db = redb::Builder::new()
            .create_with_backend(disk.attach())
            .unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(table).unwrap().insert(1, 1).unwrap();
        txn.commit().unwrap();
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(redb::Durability::None).unwrap();
        txn.open_table(table).unwrap().insert(2, 2).unwrap();
        txn.commit().unwrap();
        disk.crash();
        drop(db);
        let db = redb::Builder::new()
            .create_with_backend(disk.attach())
            .unwrap();
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(table).unwrap();
        assert_eq!(t.get(1).unwrap().map(|v| v.value()), Some(1));
        assert_eq!(t.get(2).unwrap().map(|v| v.value()), None);
    }
}
