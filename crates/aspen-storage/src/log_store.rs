//! The Raft log, vote, committed index and purge point, in redb.
//!
//! One `append` call is one redb write transaction with immediate durability: one fsync per
//! batch, never per entry. openraft batches concurrent client writes into one append, which is
//! where group commit comes from. The flush callback fires only after that commit returns.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use aspen_core::TypeConfig;
use aspen_core::codec;
use aspen_core::limits::LOG_READ_ENTRIES_MAX;
use aspen_core::type_config::alias::{Entry, LogId, Vote};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use redb::{ReadableDatabase, ReadableTable};

use crate::backend::Store;
use crate::error::{Result, StorageError, decode};
use crate::schema::{META_COMMITTED, META_LAST_PURGED, META_VOTE, RAFT_LOG, RAFT_META};

/// Log storage; also serves as its own reader (clones share the database).
#[derive(Clone, Debug)]
pub struct LogStore {
    store: Store,
}

impl LogStore {
    pub fn new(store: Store) -> LogStore {
        LogStore { store }
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let db = self.store.db();
        let txn = db.begin_read()?;
        let table = match txn.open_table(RAFT_META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match table.get(key)? {
            Some(bytes) => Ok(Some(decode("raft_meta", bytes.value())?)),
            None => Ok(None),
        }
    }

    fn write_meta<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let db = self.store.db();
        let mut txn = db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|e| StorageError::Invariant(e.to_string()))?;
        {
            let mut table = txn.open_table(RAFT_META)?;
            table.insert(key, codec::encode(value).as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    fn read_entries(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry>> {
        let db = self.store.db();
        let txn = db.begin_read()?;
        let table = match txn.open_table(RAFT_LOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut entries = Vec::new();
        for item in table.range::<u64>(range)? {
            let (index, bytes) = item?;
            let entry: Entry = decode("raft_log", bytes.value())?;
            assert_eq!(
                entry.log_id.index,
                index.value(),
                "log entry stored under a wrong index"
            );
            if let Some(prev) = entries.last() {
                let prev: &Entry = prev;
                assert_eq!(
                    prev.log_id.index + 1,
                    entry.log_id.index,
                    "hole in the raft log"
                );
            }
            entries.push(entry);
            if entries.len() as u64 >= LOG_READ_ENTRIES_MAX {
                break;
            }
        }
        Ok(entries)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>> {
        let db = self.store.db();
        let txn = db.begin_read()?;
        let table = match txn.open_table(RAFT_LOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match table.last()? {
            Some((_, bytes)) => {
                let entry: Entry = decode("raft_log", bytes.value())?;
                Ok(Some(entry.log_id))
            }
            None => Ok(None),
        }
    }

    fn append_durably(&self, entries: &[Entry]) -> Result<()> {
        let db = self.store.db();
        let mut txn = db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|e| StorageError::Invariant(e.to_string()))?;
        {
            let mut table = txn.open_table(RAFT_LOG)?;
            let mut expected_index = table.last()?.map(|(index, _)| index.value() + 1);
            let mut buffer = Vec::with_capacity(512);
            for entry in entries {
                if let Some(expected) = expected_index {
                    assert_eq!(
                        entry.log_id.index, expected,
                        "append would leave a hole in the log"
                    );
                }
                buffer.clear();
                codec::encode_into(entry, &mut buffer);
                table.insert(entry.log_id.index, buffer.as_slice())?;
                expected_index = Some(entry.log_id.index + 1);
            }
        }
        let started = std::time::Instant::now();
        txn.commit()?;
        let elapsed_us = started.elapsed().as_micros() as u64;
        self.store.shared.fsync_latency.observe_us(elapsed_us);
        Ok(())
    }

    /// Removes entries with index `>= from` (truncate) or `<= upto` (purge) and records the purge
    /// point, in one durable transaction.
    fn remove_entries(
        &self,
        range: (Bound<u64>, Bound<u64>),
        purged: Option<&LogId>,
    ) -> Result<()> {
        let db = self.store.db();
        let mut txn = db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|e| StorageError::Invariant(e.to_string()))?;
        {
            let mut table = txn.open_table(RAFT_LOG)?;
            table.retain_in::<u64, _>(range, |_, _| false)?;
            if let Some(log_id) = purged {
                let mut meta = txn.open_table(RAFT_META)?;
                meta.insert(META_LAST_PURGED, codec::encode(&Some(*log_id)).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

fn owned_bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> std::result::Result<Vec<Entry>, std::io::Error> {
        Ok(self.read_entries(owned_bounds(&range))?)
    }

    async fn read_vote(&mut self) -> std::result::Result<Option<Vote>, std::io::Error> {
        Ok(self.read_meta::<Vote>(META_VOTE)?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> std::result::Result<LogState<TypeConfig>, std::io::Error> {
        let last_purged_log_id: Option<LogId> =
            self.read_meta::<Option<LogId>>(META_LAST_PURGED)?.flatten();
        let last_log_id = match self.last_entry_log_id()? {
            Some(id) => Some(id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> std::result::Result<(), std::io::Error> {
        Ok(self.write_meta(META_VOTE, vote)?)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId>,
    ) -> std::result::Result<(), std::io::Error> {
        // Not fsynced on its own: it becomes durable with the next log append, and a stale
        // committed index only means re-applying a little less on restart.
        let db = self.store.db();
        let mut txn = db.begin_write().map_err(StorageError::from)?;
        txn.set_durability(redb::Durability::None)
            .map_err(|e| StorageError::Invariant(e.to_string()))?;
        {
            let mut table = txn.open_table(RAFT_META).map_err(StorageError::from)?;
            table
                .insert(META_COMMITTED, codec::encode(&committed).as_slice())
                .map_err(StorageError::from)?;
        }
        txn.commit().map_err(StorageError::from)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> std::result::Result<Option<LogId>, std::io::Error> {
        Ok(self.read_meta::<Option<LogId>>(META_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> std::result::Result<(), std::io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let result = self.append_durably(&entries);
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                let message = error.to_string();
                callback.io_completed(Err(std::io::Error::other(message.clone())));
                Err(std::io::Error::other(message))
            }
        }
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogId>,
    ) -> std::result::Result<(), std::io::Error> {
        let from = match last_log_id {
            Some(id) => Bound::Excluded(id.index),
            None => Bound::Unbounded,
        };
        Ok(self.remove_entries((from, Bound::Unbounded), None)?)
    }

    async fn purge(&mut self, log_id: LogId) -> std::result::Result<(), std::io::Error> {
        let previous = self.read_meta::<Option<LogId>>(META_LAST_PURGED)?.flatten();
        if let Some(previous) = &previous {
            assert!(
                previous.index <= log_id.index,
                "purge point moved backwards"
            );
        }
        Ok(self.remove_entries(
            (Bound::Unbounded, Bound::Included(log_id.index)),
            Some(&log_id),
        )?)
    }
}
