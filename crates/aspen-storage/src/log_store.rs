//! The Raft log, vote, committed index and purge point, in the log database (`log.redb`).
//!
//! Every write goes through the group-commit writer (`log_writer`): `append` returns as soon as
//! its entries are readable, and one journal record and one fsync (`journal.rs`) make
//! everything queued since the previous round durable. openraft batches concurrent client
//! writes into one append, and the writer batches appends that arrive during an fsync. A flush
//! callback fires only after the record holding its entries is durable. Vote, truncate and
//! purge are ops of the writer too, after everything queued before them.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use aspen_core::TypeConfig;
use aspen_core::convert::usize_from;
use aspen_core::limits::LOG_READ_ENTRIES_MAX;
use aspen_core::type_config::alias::{Entry, LogId, Vote};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use redb::{ReadableDatabase, ReadableTable};

use crate::backend::Store;
use crate::error::{Result, decode};
use crate::log_writer::{LogWriter, MetaOp, WriteOp};
use crate::schema::{META_COMMITTED, META_LAST_PURGED, META_VOTE, RAFT_LOG, RAFT_META};

/// Log storage; also serves as its own reader (clones share the database and the writer).
#[derive(Clone, Debug)]
pub struct LogStore {
    store: Store,
    writer: LogWriter,
}

impl LogStore {
    pub fn new(store: Store) -> LogStore {
        let writer = LogWriter::new(store.clone());
        LogStore { store, writer }
    }

    /// Whether an append may be made durable on the caller's own thread when the log writer
    /// is idle (on by default: a lone write then waits for one sync, without waking the
    /// writer's thread and being woken by it). Off, every append goes through the writer's
    /// queue; tests use it to hold the log's durability back behind other work.
    pub fn set_appends_inline(&self, inline: bool) {
        self.writer.set_rounds_inline(inline);
    }

    /// Rounds the log writer has run, on its thread or inline: each one takes what is queued
    /// and makes it durable with at most one journal write and sync. A diagnostic, for tests.
    pub fn log_writer_rounds(&self) -> u64 {
        self.writer.rounds()
    }

    /// Waits until everything appended or queued so far is durable.
    pub(crate) async fn flush(&self) -> Result<()> {
        self.writer.flush().await
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let db = self.store.log_db();
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

    /// The entries in `range`, durable or not: those still waiting for the writer come from
    /// its pending set, the ones before them from the database. At most `LOG_READ_ENTRIES_MAX`.
    ///
    /// Fails once a log commit has failed. The failed commit's entries left the pending set
    /// and never reached the database, so a read would come back short, and openraft applies
    /// committed entries by reading them back: it takes a short read as the whole range,
    /// applies what it got and reports the rest applied too, so its metrics' `last_applied`
    /// runs ahead of the state machine and linearizable reads, which wait for it, serve stale
    /// state (the simulator's seeds 15023 and 10920). An error instead stops the apply and Raft.
    fn read_entries(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry>> {
        let entries = self.read_entries_unchecked(range)?;
        // Checked after the read: the writer marks a failure before it drops the failed
        // commit's entries from the pending set, so a read that missed them sees it here.
        if self.writer.has_failed() {
            return Err(self.writer.failed_error());
        }
        Ok(entries)
    }

    fn read_entries_unchecked(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry>> {
        // Pending first, database second. Pending entries run to the end of the log, so every
        // entry below the first of them is durable; and one the writer commits in between is
        // in the database read, which starts after the commit, so none is missed.
        let pending = self
            .writer
            .pending_in(range, usize_from(LOG_READ_ENTRIES_MAX));
        let Some(first_pending) = pending.first().map(|entry| entry.log_id.index) else {
            return self.read_durable_entries(range);
        };
        let starts_below_pending = match range.0 {
            Bound::Included(start) => start < first_pending,
            Bound::Excluded(start) => start + 1 < first_pending,
            Bound::Unbounded => true,
        };
        let mut entries = if starts_below_pending {
            self.read_durable_entries((range.0, Bound::Excluded(first_pending)))?
        } else {
            Vec::new()
        };
        if entries.len() as u64 >= LOG_READ_ENTRIES_MAX {
            return Ok(entries);
        }
        if let Some(last) = entries.last() {
            assert_eq!(last.log_id.index + 1, first_pending, "hole in the raft log");
        }
        entries.extend(pending);
        entries.truncate(usize_from(LOG_READ_ENTRIES_MAX));
        Ok(entries)
    }

    fn read_durable_entries(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry>> {
        let db = self.store.log_db();
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
        let db = self.store.log_db();
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

    /// openraft's apply path: every entry of `range` the log holds, read `LOG_READ_ENTRIES_MAX`
    /// at a time. The default reads once, and one read stops at `LOG_READ_ENTRIES_MAX`:
    /// openraft would report the rest of a longer range applied without applying it.
    async fn entries_stream<RB>(
        &mut self,
        range: RB,
    ) -> impl futures_util::Stream<Item = std::result::Result<Entry, std::io::Error>> + OptionalSend
    where
        RB: RangeBounds<u64> + Clone + Debug + OptionalSend,
    {
        let (start, end) = owned_bounds(&range);
        let first = match start {
            Bound::Included(index) => Some(index),
            Bound::Excluded(index) => index.checked_add(1),
            Bound::Unbounded => Some(0),
        };
        let reader = self.clone();
        let chunks = futures_util::stream::unfold(first, move |next| {
            let reader = reader.clone();
            async move {
                let from = next?;
                let chunk = reader.read_entries((Bound::Included(from), end));
                let (items, next) = match chunk {
                    Err(error) => (vec![Err(std::io::Error::from(error))], None),
                    Ok(entries) => {
                        // A full chunk may have more behind it; a shorter one is the end.
                        let next = if entries.len() as u64 >= LOG_READ_ENTRIES_MAX {
                            entries
                                .last()
                                .and_then(|entry| entry.log_id.index.checked_add(1))
                        } else {
                            None
                        };
                        (entries.into_iter().map(Ok).collect::<Vec<_>>(), next)
                    }
                };
                Some((futures_util::stream::iter(items), next))
            }
        });
        futures_util::StreamExt::flatten(chunks)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> std::result::Result<LogState<TypeConfig>, std::io::Error> {
        let last_purged_log_id: Option<LogId> =
            self.read_meta::<Option<LogId>>(META_LAST_PURGED)?.flatten();
        let last_log_id = match self.writer.last_pending() {
            Some(id) => Some(id),
            None => match self.last_entry_log_id()? {
                Some(id) => Some(id),
                None => last_purged_log_id,
            },
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
        self.writer.flush().await?;
        Ok(self.writer.meta(MetaOp::Vote(*vote)).await?)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId>,
    ) -> std::result::Result<(), std::io::Error> {
        // Not fsynced on its own: it rides along with a later log commit (see
        // `log_writer::WriterState`), and a stale committed index only means re-applying a
        // little less on restart.
        if let Some(committed) = &committed {
            self.store.stage_clock().committed_up_to(committed.index);
        }
        // Not counted in the queue bound: openraft saves a committed index only after the
        // entries it covers were appended, so these are as many as the appends at most.
        Ok(self.writer.submit(WriteOp::Committed(committed), None)?)
    }

    async fn read_committed(&mut self) -> std::result::Result<Option<LogId>, std::io::Error> {
        // The log writer writes the committed index with only some commits: what this process
        // saved last wins over the database's copy.
        if let Some(saved) = self.writer.committed_saved() {
            return Ok(saved);
        }
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
        let entries: Vec<_> = entries.into_iter().map(std::sync::Arc::new).collect();
        // Backpressure: wait (without holding a thread) for room in the writer's bounded
        // queue, at most until the commit in progress ends.
        let room = self.writer.reserve(&entries).await?;
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            let clock = self.store.stage_clock();
            clock.appended(first.log_id.index, last.log_id.index);
        }
        // An empty append still gets its callback, in order with the others.
        Ok(self
            .writer
            .submit(WriteOp::Append { entries, callback }, Some(room))?)
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogId>,
    ) -> std::result::Result<(), std::io::Error> {
        // Everything queued first is done, so `pending` holds nothing the truncation removes
        // and the appends after it find the log's end where it leaves it.
        self.writer.flush().await?;
        let from = last_log_id.map_or(0, |id| id.index + 1);
        Ok(self.writer.meta(MetaOp::Truncate { from }).await?)
    }

    async fn purge(&mut self, log_id: LogId) -> std::result::Result<(), std::io::Error> {
        self.writer.flush().await?;
        let previous = self.read_meta::<Option<LogId>>(META_LAST_PURGED)?.flatten();
        if let Some(previous) = &previous {
            assert!(
                previous.index <= log_id.index,
                "purge point moved backwards"
            );
        }
        // The invariant that lets the state database skip fsyncs: the log is never purged past
        // the applied index the state database has made durable, so whatever a crash takes from
        // the state machine is still in the log to re-apply.
        // openraft purges only what a snapshot covers (at most the applied index); openraft's
        // storage Suite also purges logs that no state machine applied, and there everything
        // applied must be durable.
        if self.store.state_durable_applied_index() < log_id.index {
            let applied_index = self.store.make_state_durable()?;
            let durable_applied = self.store.state_durable_applied_index();
            assert!(
                durable_applied >= log_id.index || durable_applied == applied_index,
                "purging the log to {} past the state machine's durable applied index \
                 {durable_applied} (applied {applied_index})",
                log_id.index
            );
        }
        Ok(self.writer.meta(MetaOp::Purge(log_id)).await?)
    }
}
