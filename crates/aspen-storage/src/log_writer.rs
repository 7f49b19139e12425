//! Group commit for the Raft log: `append` returns at once, and one writer makes everything
//! queued since its last commit durable in one redb transaction (one fsync).
//!
//! openraft's contract for `RaftLogStorage::append` is "return as soon as the entries are
//! readable, call the callback once they are on disk", and its core awaits `append` before it
//! takes the next client writes. Committing inside `append` made the core wait out every fsync,
//! so batches stayed as small as whatever arrived during one fsync. Now:
//!
//! - `append` puts the entries in `pending` (readable at once, see `LogStore::read_entries`)
//!   and queues them for the writer;
//! - the writer takes everything queued, writes it in one transaction with immediate
//!   durability, then removes those entries from `pending` and calls their callbacks, in order;
//! - `save_committed` is queued too and rides along with every
//!   `LOG_COMMITS_PER_COMMITTED_WRITE`th round of the writer, so most log commits touch the log
//!   table alone and a round with only a committed index commits nothing (it was never fsynced
//!   on its own; `read_committed` answers the value saved last in this process; the close
//!   writes the newest one whose entries are durable);
//! - vote, truncate and purge first wait until everything queued before them is durable, then
//!   write as before, so the order of log operations on disk is the order openraft issued them;
//! - after a failed commit every later write and every read fails (`LogStore::read_entries`):
//!   the failed commit's entries are in neither `pending` nor the database, and a short read
//!   on openraft's apply path would be reported applied.
//!
//! The queue is bounded (`LOG_WRITER_QUEUE_ENTRIES_MAX` entries and
//! `LOG_WRITER_QUEUE_BYTES_MAX` encoded bytes, appended but not yet durable): `append` first
//! waits for room, so openraft slows to the disk's pace instead of the queue growing without
//! bound. The wait is an await, never a blocked thread, and it lasts until the commit in
//! progress finishes (one fsync): that commit frees its entries' room before its callbacks
//! fire. An append larger than the whole bound waits for an empty queue and then goes alone.
//!
//! On a multi-threaded tokio runtime (the server) the writer is its own thread, so an fsync
//! never holds a worker thread and a commit costs one thread hand-off each way. On a
//! current-thread runtime (tests, the paused-clock simulator) and under madsim it is a task
//! that commits inline, which keeps a simulation deterministic.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use aspen_core::TypeConfig;
use aspen_core::codec;
use aspen_core::convert::{micros, usize_from};
use aspen_core::limits::{LOG_WRITER_QUEUE_BYTES_MAX, LOG_WRITER_QUEUE_ENTRIES_MAX};
use aspen_core::type_config::alias::{Entry, LogId};
use openraft::storage::IOFlushed;
use redb::ReadableTable;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::backend::Store;
use crate::error::{Result, StorageError};
use crate::schema::{META_COMMITTED, RAFT_LOG, RAFT_META};
use crate::stage_clock::Stage;

// The byte room is taken as a u32 (tokio's semaphore).
const _: () = assert!(LOG_WRITER_QUEUE_BYTES_MAX <= u32::MAX as u64);

/// Queued operations one commit takes at most; bounds the transaction and the time until the
/// first of them is acknowledged.
pub const LOG_COMMIT_OPS_MAX: usize = 4096;

/// Writer rounds between two that write openraft's committed index. Writing it touches a
/// second table (its leaf and the table tree's entry) in a commit that otherwise writes only
/// the log, and a round that has nothing else to write would be a transaction of its own, whose
/// dirty pages the next durable commit writes and syncs. So it rides along with every 64th
/// round. A committed index that lags on disk is harmless: openraft re-applies up to it at
/// start-up and finds the rest committed again after an election (the stock
/// `save_committed` writes nothing at all).
pub const LOG_COMMITS_PER_COMMITTED_WRITE: u64 = 64;

/// What the writer carries from one round to the next.
#[derive(Default)]
struct WriterState {
    /// The newest committed index openraft saved that no commit has written yet.
    committed_held: Option<Option<LogId>>,
    /// The newest committed index openraft saved, written or held.
    committed_newest: Option<Option<LogId>>,
    /// Rounds since the committed index was last written.
    rounds_since_committed: u64,
}

impl WriterState {
    /// The committed index this round writes, if any: the newest one held, every
    /// `LOG_COMMITS_PER_COMMITTED_WRITE`th round.
    fn committed_to_write(&mut self, saved: Option<Option<LogId>>) -> Option<Option<LogId>> {
        if saved.is_some() {
            self.committed_held = saved;
            self.committed_newest = saved;
        }
        self.rounds_since_committed += 1;
        if self.rounds_since_committed < LOG_COMMITS_PER_COMMITTED_WRITE {
            return None;
        }
        self.rounds_since_committed = 0;
        self.committed_held.take()
    }
}

pub(crate) enum WriteOp {
    /// Shared with the pending set, so queueing an entry never copies it.
    Append {
        entries: Vec<Arc<Entry>>,
        callback: IOFlushed<TypeConfig>,
    },
    /// openraft's committed index; durable with the next log commit.
    Committed(Option<LogId>),
}

struct Queued {
    /// 1, 2, 3, … in the order `LogWriter::submit` was called.
    seq: u64,
    op: WriteOp,
    /// The queue room an append holds until its commit is done.
    room: Option<QueueRoom>,
}

/// Room in the bounded queue, given back when dropped.
pub(crate) struct QueueRoom {
    _entries: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// The state shared by a log store's clones and its writer.
pub(crate) struct WriterShared {
    store: Store,
    /// Appended but not yet durable, by index. Every appended entry is here, in the database,
    /// or both: the writer removes an entry from here only after its commit.
    pending: Mutex<BTreeMap<u64, Arc<Entry>>>,
    /// The last `seq` handed out.
    submitted_seq: AtomicU64,
    /// The last `seq` the writer has finished (made durable, or failed).
    finished_seq: watch::Sender<u64>,
    /// Set after a failed commit: the log is no longer trustworthy in memory, so every later
    /// write and read fails too (openraft stops the node on a storage error). Set before the
    /// failed commit's entries leave `pending`.
    failed: AtomicBool,
    /// Queue room, in entries and in encoded bytes, not held by an uncommitted append.
    room_entries: Arc<Semaphore>,
    room_bytes: Arc<Semaphore>,
    /// The committed index openraft saved last in this process, written or not
    /// (`WriterState` writes it with every `LOG_COMMITS_PER_COMMITTED_WRITE`th commit).
    committed_saved: Mutex<Option<Option<LogId>>>,
    /// The newest committed index whose entries are all durable: the newest one the writer
    /// had seen when a round's commit succeeded (openraft saves a committed index only after
    /// appending what it covers, and rounds take the queue in order, so that round or an
    /// earlier one wrote those entries). What the close writes; `committed_saved` may name
    /// entries still queued, and a committed index past the durable log stops a restart
    /// (openraft re-applies up to it from the log).
    committed_durable_safe: Mutex<Option<Option<LogId>>>,
    /// Taken by the writer task when it starts (on the first write).
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Queued>>>,
}

impl Drop for WriterShared {
    /// At close the newest committed index whose entries are durable
    /// (`committed_durable_safe`) is written, durably, so a clean restart re-applies all of it
    /// at start-up (`WriterState` writes it only every `LOG_COMMITS_PER_COMMITTED_WRITE`th
    /// round). Never one past the durable log: openraft would fail to start, looking for
    /// entries to re-apply that are not there (the simulator's seeds 10798 and 10897, when
    /// the close wrote the index saved last). Best effort, as the state database's own
    /// durable commit at close: after a failure, or under a simulated crash whose disk
    /// refuses writes, the older value on disk stays, which is harmless.
    fn drop(&mut self) {
        if self.failed.load(Ordering::Acquire) {
            return;
        }
        let Some(committed) = *lock(&self.committed_durable_safe) else {
            return;
        };
        if let Err(error) = write_committed_durably(&self.store, committed) {
            tracing::debug!(%error, "committed index not written at close");
        }
    }
}

fn write_committed_durably(store: &Store, committed: Option<LogId>) -> Result<()> {
    let db = store.log_db();
    let mut txn = db.begin_write()?;
    txn.set_durability(redb::Durability::Immediate)?;
    {
        let mut table = txn.open_table(RAFT_META)?;
        table.insert(META_COMMITTED, codec::encode(&committed).as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

impl std::fmt::Debug for WriterShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterShared")
            .field("submitted_seq", &self.submitted_seq.load(Ordering::Relaxed))
            .field("finished_seq", &*self.finished_seq.borrow())
            .field("failed", &self.failed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A log store's handle on its writer. Clones share one writer; the writer task ends when
/// the last clone is dropped (what it had queued and not committed is lost, like a crash).
#[derive(Debug, Clone)]
pub(crate) struct LogWriter {
    shared: Arc<WriterShared>,
    sender: mpsc::UnboundedSender<Queued>,
}

pub(crate) fn commit_failed() -> StorageError {
    StorageError::Invariant("an earlier log commit failed".to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LogWriter {
    pub fn new(store: Store) -> LogWriter {
        let (sender, receiver) = mpsc::unbounded_channel();
        let (finished_seq, _) = watch::channel(0);
        LogWriter {
            shared: Arc::new(WriterShared {
                store,
                pending: Mutex::new(BTreeMap::new()),
                submitted_seq: AtomicU64::new(0),
                finished_seq,
                failed: AtomicBool::new(false),
                room_entries: Arc::new(Semaphore::new(usize_from(u64::from(
                    LOG_WRITER_QUEUE_ENTRIES_MAX,
                )))),
                room_bytes: Arc::new(Semaphore::new(usize_from(LOG_WRITER_QUEUE_BYTES_MAX))),
                committed_saved: Mutex::new(None),
                committed_durable_safe: Mutex::new(None),
                receiver: Mutex::new(Some(receiver)),
            }),
            sender,
        }
    }

    /// Entries appended but not yet durable in `range`, at most `limit`.
    pub fn pending_in(
        &self,
        range: (std::ops::Bound<u64>, std::ops::Bound<u64>),
        limit: usize,
    ) -> Vec<Entry> {
        lock(&self.shared.pending)
            .range(range)
            .take(limit)
            .map(|(_, entry)| Entry::clone(entry))
            .collect()
    }

    /// True once a commit has failed: from then on the log in memory is not trustworthy (the
    /// failed commit's entries are gone from `pending` and were never written), so every read
    /// and write fails.
    pub fn has_failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// The committed index saved last in this process, if any (the database may hold an older
    /// one).
    pub fn committed_saved(&self) -> Option<Option<LogId>> {
        *lock(&self.shared.committed_saved)
    }

    /// The last appended entry's id if it is not yet durable.
    pub fn last_pending(&self) -> Option<LogId> {
        lock(&self.shared.pending)
            .last_key_value()
            .map(|(_, entry)| entry.log_id)
    }

    /// Waits until the queue has room for `entries` (all of it, if they alone exceed the
    /// bound), and takes that room. Nothing is changed before it returns, so dropping the
    /// wait is harmless.
    pub async fn reserve(&self, entries: &[Arc<Entry>]) -> Result<QueueRoom> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(commit_failed());
        }
        let count = u32::try_from(entries.len())
            .unwrap_or(u32::MAX)
            .min(LOG_WRITER_QUEUE_ENTRIES_MAX);
        let bytes: usize = entries
            .iter()
            .map(|entry| codec::encoded_len(entry.as_ref()))
            .sum();
        // Capped by the bound, which fits a u32 (asserted at compile time).
        let bytes = u64::try_from(bytes)
            .unwrap_or(u64::MAX)
            .min(LOG_WRITER_QUEUE_BYTES_MAX);
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        let entries_room = take_room(&self.shared.room_entries, count).await?;
        let bytes_room = take_room(&self.shared.room_bytes, bytes).await?;
        Ok(QueueRoom {
            _entries: entries_room,
            _bytes: bytes_room,
        })
    }

    /// Queues `op`; an append's entries are readable when this returns. An append should hold
    /// room from [`LogWriter::reserve`], which its commit gives back.
    pub fn submit(&self, op: WriteOp, room: Option<QueueRoom>) -> Result<()> {
        if self.shared.failed.load(Ordering::Acquire) {
            let error = commit_failed();
            if let WriteOp::Append { callback, .. } = op {
                callback.io_completed(Err(std::io::Error::other(error.to_string())));
            }
            return Err(error);
        }
        self.start_if_needed();
        if let WriteOp::Committed(committed) = &op {
            *lock(&self.shared.committed_saved) = Some(*committed);
        }
        if let WriteOp::Append { entries, .. } = &op {
            let mut pending = lock(&self.shared.pending);
            for entry in entries {
                if let Some((_, last)) = pending.last_key_value() {
                    assert_eq!(
                        last.log_id.index + 1,
                        entry.log_id.index,
                        "append would leave a hole in the log"
                    );
                }
                pending.insert(entry.log_id.index, Arc::clone(entry));
            }
        }
        let seq = self.shared.submitted_seq.fetch_add(1, Ordering::AcqRel) + 1;
        self.sender
            .send(Queued { seq, op, room })
            .map_err(|_| StorageError::Invariant("log writer stopped".to_string()))
    }

    /// Waits until everything submitted so far is durable (or has failed).
    pub async fn flush(&self) -> Result<()> {
        let target = self.shared.submitted_seq.load(Ordering::Acquire);
        if target > 0 {
            let mut finished = self.shared.finished_seq.subscribe();
            finished
                .wait_for(|done| *done >= target)
                .await
                .map_err(|_| StorageError::Invariant("log writer stopped".to_string()))?;
        }
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(commit_failed());
        }
        Ok(())
    }

    fn start_if_needed(&self) {
        let Some(receiver) = lock(&self.shared.receiver).take() else {
            return;
        };
        // The writer holds the shared state weakly: dropping the last log store closes the
        // database at once, not whenever the writer next runs.
        let shared = Arc::downgrade(&self.shared);
        // Its own thread on a multi-threaded runtime, where an fsync on a worker would stall
        // every task queued behind it; a task committing inline elsewhere (deterministic).
        if aspen_core::runtime::blocking_work_may_leave_the_task() {
            let spawned = std::thread::Builder::new()
                .name("aspen-log-writer".to_string())
                .spawn(move || run_writer_thread(shared, receiver));
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start the log writer thread");
                self.shared.failed.store(true, Ordering::Release);
            }
        } else {
            tokio::spawn(run_writer_task(shared, receiver));
        }
    }
}

/// Takes `permits` from `room`, without yielding when they are there (an await on a tokio
/// semaphore may yield to spend the task's budget, which would split a group commit).
async fn take_room(room: &Arc<Semaphore>, permits: u32) -> Result<OwnedSemaphorePermit> {
    if let Ok(taken) = Arc::clone(room).try_acquire_many_owned(permits) {
        return Ok(taken);
    }
    Arc::clone(room)
        .acquire_many_owned(permits)
        .await
        .map_err(|_| StorageError::Invariant("log writer stopped".to_string()))
}

fn run_writer_thread(shared: Weak<WriterShared>, mut receiver: mpsc::UnboundedReceiver<Queued>) {
    let mut state = WriterState::default();
    while let Some(first) = receiver.blocking_recv() {
        let batch = take_batch(first, &mut receiver);
        write_batch(&shared, batch, &mut state);
    }
}

async fn run_writer_task(
    shared: Weak<WriterShared>,
    mut receiver: mpsc::UnboundedReceiver<Queued>,
) {
    let mut state = WriterState::default();
    while let Some(first) = receiver.recv().await {
        let batch = take_batch(first, &mut receiver);
        write_batch(&shared, batch, &mut state);
    }
}

/// `first` and whatever else is queued, up to `LOG_COMMIT_OPS_MAX`, in order.
fn take_batch(first: Queued, receiver: &mut mpsc::UnboundedReceiver<Queued>) -> Vec<Queued> {
    let mut batch = vec![first];
    while batch.len() < LOG_COMMIT_OPS_MAX {
        match receiver.try_recv() {
            Ok(queued) => batch.push(queued),
            Err(_) => break,
        }
    }
    batch
}

/// Commits `batch` in one transaction, then reports: pending entries dropped, the finished
/// sequence number published, callbacks fired in order. The shared state (and with it the
/// database) is held only until the callbacks: whoever drops the store after its last
/// callback finds the database closed.
fn write_batch(shared: &Weak<WriterShared>, batch: Vec<Queued>, state: &mut WriterState) {
    assert!(!batch.is_empty());
    let last_seq = batch.last().map_or(0, |q| q.seq);
    let mut entries = Vec::new();
    let mut committed = None;
    let mut callbacks = Vec::new();
    let mut rooms = Vec::new();
    for queued in batch {
        rooms.extend(queued.room);
        match queued.op {
            WriteOp::Append {
                entries: more,
                callback,
            } => {
                entries.extend(more);
                callbacks.push(callback);
            }
            WriteOp::Committed(id) => committed = Some(id),
        }
    }
    let committed = state.committed_to_write(committed);
    let result = match shared.upgrade() {
        // The store is gone: nothing queued can be made durable; the callbacks are dropped.
        None => return,
        Some(shared) => {
            let result = if shared.failed.load(Ordering::Acquire) {
                Err(commit_failed())
            } else {
                commit(&shared.store, &entries, committed)
            };
            if result.is_ok() && state.committed_newest.is_some() {
                *lock(&shared.committed_durable_safe) = state.committed_newest;
            }
            if let (Ok(()), Some(first), Some(last)) = (&result, entries.first(), entries.last()) {
                let clock = shared.store.stage_clock();
                clock.reached(Stage::Durable, first.log_id.index, last.log_id.index);
            }
            // A failed commit's entries are in neither `pending` nor the database once they
            // leave `pending`: mark the failure first, so that no read finds them missing
            // without also finding the failure (`LogStore::read_entries` checks it after
            // reading). A short read on openraft's apply path is reported applied.
            if let Err(error) = &result {
                tracing::error!(%error, "log commit failed");
                shared.failed.store(true, Ordering::Release);
            }
            let mut pending = lock(&shared.pending);
            for entry in &entries {
                let index = entry.log_id.index;
                // A truncation and a new append may have put another entry at this index.
                if pending.get(&index).is_some_and(|p| Arc::ptr_eq(p, entry)) {
                    pending.remove(&index);
                }
            }
            drop(pending);
            // The entries are durable (or failed) and gone from `pending`: their room is free
            // before their callbacks fire, so the next append can queue at once.
            drop(rooms);
            shared.finished_seq.send_replace(last_seq);
            result
        }
    };
    for callback in callbacks {
        let outcome = match &result {
            Ok(()) => Ok(()),
            Err(error) => Err(std::io::Error::other(error.to_string())),
        };
        callback.io_completed(outcome);
    }
}

/// One redb transaction: `entries` appended, the committed index updated; immediately
/// durable (one fsync) when it appends anything.
fn commit(store: &Store, entries: &[Arc<Entry>], committed: Option<Option<LogId>>) -> Result<()> {
    if entries.is_empty() && committed.is_none() {
        return Ok(());
    }
    let db = store.log_db();
    let mut txn = db.begin_write()?;
    let durability = if entries.is_empty() {
        redb::Durability::None
    } else {
        redb::Durability::Immediate
    };
    txn.set_durability(durability)?;
    let mut appended_bytes: u64 = 0;
    if !entries.is_empty() {
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
            codec::encode_into(entry.as_ref(), &mut buffer);
            appended_bytes += buffer.len() as u64;
            table.insert(entry.log_id.index, buffer.as_slice())?;
            expected_index = Some(entry.log_id.index + 1);
        }
    }
    if let Some(committed) = committed {
        let mut table = txn.open_table(RAFT_META)?;
        table.insert(META_COMMITTED, codec::encode(&committed).as_slice())?;
    }
    let started = std::time::Instant::now();
    txn.commit()?;
    if !entries.is_empty() {
        let elapsed_us = micros(started.elapsed());
        store.shared.fsync_latency.observe_us(elapsed_us);
        store.record_log_appended(entries.len() as u64, appended_bytes);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(index: u64) -> Option<LogId> {
        Some(openraft::testing::log_id::<TypeConfig>(1, 1, index))
    }

    #[test]
    fn the_committed_index_rides_with_every_64th_round() {
        let mut state = WriterState::default();
        // Rounds 1..63 hold it back, keeping only the newest.
        for round in 1..LOG_COMMITS_PER_COMMITTED_WRITE {
            assert_eq!(state.committed_to_write(Some(id(round))), None);
        }
        // The 64th writes the newest held one.
        assert_eq!(
            state.committed_to_write(None),
            Some(id(LOG_COMMITS_PER_COMMITTED_WRITE - 1))
        );
        // Nothing is held now: the next 64th round writes nothing.
        for _ in 0..LOG_COMMITS_PER_COMMITTED_WRITE {
            assert_eq!(state.committed_to_write(None), None);
        }
        // openraft's "no committed index" is a value too.
        for _ in 1..LOG_COMMITS_PER_COMMITTED_WRITE {
            assert_eq!(state.committed_to_write(Some(None)), None);
        }
        assert_eq!(state.committed_to_write(None), Some(None));
    }
}
