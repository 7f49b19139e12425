//! A simulated disk for one node: redb writes land in volatile `live` bytes, `sync_data`
//! makes them durable, and a crash throws away everything written since the last sync.
//!
//! The crash model is the strict one: every unsynced write is lost, none survives torn or
//! reordered. redb promises exactly this much (a commit is durable once its sync returns),
//! and the storage layer adds its own promise on top: a state machine batch committed
//! without a sync may be lost, but never past the durable log.
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
    }

    /// Syncs so far, across crashes.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    pub fn durable_len_bytes(&self) -> u64 {
        self.lock().durable.len() as u64
    }
}

/// A node's two files, the log database and the state database, each on its own simulated
/// disk; a power loss hits both at once. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct NodeDisks {
    pub log: SimDisk,
    pub state: SimDisk,
}

impl NodeDisks {
    pub fn new() -> NodeDisks {
        NodeDisks::default()
    }

    /// Power loss on both files.
    pub fn crash(&self) {
        self.log.crash();
        self.state.crash();
    }

    /// Syncs so far on both files, across crashes.
    pub fn syncs(&self) -> u64 {
        self.log.syncs() + self.state.syncs()
    }

    pub fn durable_len_bytes(&self) -> u64 {
        self.log.durable_len_bytes() + self.state.durable_len_bytes()
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
        let len = usize::try_from(len).map_err(|_| io::Error::other("length too large"))?;
        state.live.resize(len, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut state = self.lock()?;
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
