//! Group commit for the Raft log: `append` returns at once, and one writer makes everything
//! queued since its last round durable with one journal record and one fsync (`journal.rs`).
//!
//! openraft's contract for `RaftLogStorage::append` is "return as soon as the entries are
//! readable, call the callback once they are on disk", and its core awaits `append` before it
//! takes the next client writes. Committing inside `append` made the core wait out every fsync,
//! so batches stayed as small as whatever arrived during one fsync. Now:
//!
//! - `append` puts the entries in `pending` (readable at once, see `LogStore::read_entries`)
//!   and queues them for the writer;
//! - the writer takes everything queued and encodes it, in order, as one journal record
//!   (`journal::Record`), appends that and syncs; then it fires the appends' callbacks. The
//!   records go into `log.redb` later, many in one transaction without a sync
//!   (`Journal::apply_unapplied`, `LOG_APPLY_DEFER_BYTES_MAX`), or at once for a round with a
//!   flush, vote, truncate or purge; only then do their entries leave `pending`;
//! - `save_committed` is queued too: the newest committed index rides in the next record that
//!   holds anything else, and is written into `log.redb` at checkpoints (a round with only a
//!   committed index writes nothing: it was never fsynced on its own; `read_committed` answers
//!   the value saved last in this process);
//! - vote, truncate and purge first wait until everything queued before them is done, then go
//!   through the writer as ops of their own and wait for their round, so the order of log
//!   operations in the journal, and in `log.redb`, is the order openraft issued them;
//! - after a failed round every later write and every read fails (`LogStore::read_entries`):
//!   the failed round's entries may be in neither `pending` nor the database, and a short read
//!   on openraft's apply path would be reported applied.
//!
//! The queue is bounded (`LOG_WRITER_QUEUE_ENTRIES_MAX` entries and
//! `LOG_WRITER_QUEUE_BYTES_MAX` encoded bytes, appended but not yet durable): `append` first
//! waits for room, so openraft slows to the disk's pace instead of the queue growing without
//! bound. The wait is an await, never a blocked thread, and it lasts until the round in
//! progress is durable (one fsync): the round frees its entries' room before its callbacks
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
use aspen_core::type_config::alias::{Entry, LogId, Vote};
use openraft::storage::IOFlushed;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use crate::backend::Store;
use crate::error::{Result, StorageError};
use crate::journal::Record;
use crate::stage_clock::Stage;

// The byte room is taken as a u32 (tokio's semaphore).
const _: () = assert!(LOG_WRITER_QUEUE_BYTES_MAX <= u32::MAX as u64);

/// Queued operations one round takes at most; bounds the record and the time until the first
/// of them is acknowledged.
pub const LOG_COMMIT_OPS_MAX: usize = 4096;

/// Records `log.redb` may lack, in payload bytes, before a round applies them (one transaction
/// for many rounds: a lone put's round otherwise spends as much CPU on its redb commit as on
/// its journal write). Until then their entries stay in `pending`, read from memory.
pub const LOG_APPLY_DEFER_BYTES_MAX: usize = 1024 * 1024;
/// The same bound in entries.
pub const LOG_APPLY_DEFER_ENTRIES_MAX: usize = 1024;

/// Who runs a round.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Round {
    /// The writer thread (or task), with what it took from the queue.
    Writer,
    /// The submitter, with its own op (`LogWriter::try_inline`).
    Inline,
}

/// What `LogWriter::try_inline` did with an op.
enum Inline {
    /// It ran the op's round; `apply_due`: the round left its apply to `log.redb` undone.
    Done { apply_due: bool },
    /// The op goes to the writer's queue.
    Declined(Queued),
}

/// What the writer carries from one round to the next.
#[derive(Default)]
struct WriterState {
    /// The newest committed index openraft saved that no record has carried yet.
    committed_held: Option<Option<LogId>>,
    /// Entries durable in the journal that `log.redb` has not taken yet (still in `pending`).
    unapplied: Vec<Arc<Entry>>,
}

pub(crate) enum WriteOp {
    /// Shared with the pending set, so queueing an entry never copies it.
    Append {
        entries: Vec<Arc<Entry>>,
        callback: IOFlushed<TypeConfig>,
    },
    /// openraft's committed index; durable with the next record that holds anything else.
    Committed(Option<LogId>),
    /// A vote, truncation or purge; `done` reports it durable and in `log.redb`.
    Meta {
        op: MetaOp,
        done: oneshot::Sender<Result<()>>,
    },
    /// Nothing to write: the round that takes it applies every durable record to `log.redb`
    /// (`LogWriter::flush` waits for it).
    Flush,
}

/// The log operations other than appends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum MetaOp {
    Vote(Vote),
    /// Removes every entry at this index and after.
    Truncate {
        from: u64,
    },
    /// Removes every entry up to this one, which becomes the purge point.
    Purge(LogId),
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
    bytes: OwnedSemaphorePermit,
}

impl QueueRoom {
    /// The encoded bytes of the append holding it (capped at the queue's bound).
    fn bytes(&self) -> usize {
        self.bytes.num_permits()
    }
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
    /// The first failed round's error, for the errors after it.
    failure: Mutex<Option<String>>,
    /// Queue room, in entries and in encoded bytes, not held by an uncommitted append.
    room_entries: Arc<Semaphore>,
    room_bytes: Arc<Semaphore>,
    /// The committed index openraft saved last in this process, carried by a record or not
    /// (`WriterState` holds it until a round has something else to write).
    committed_saved: Mutex<Option<Option<LogId>>>,
    /// A committed index saved while the writer could not take it inline, with the `seq` it
    /// was given: not queued, so that saving it never wakes the writer (on a leader of other
    /// voters every append goes through the writer's thread, and a queued committed index
    /// cost each lone put a second wake-up of that thread). The next round whose ops reach up
    /// to its `seq` takes it as if it had been queued there (`take_unqueued_committed`).
    committed_unqueued: Mutex<Option<(u64, Option<LogId>)>>,
    /// The last `seq` of the newest round that was durable: every op up to it is on disk.
    durable_seq: AtomicU64,
    /// Rounds run, on the writer's thread or inline (`LogStore::log_writer_rounds`).
    rounds: AtomicU64,
    /// The newest committed index whose entries are all durable, encoded: what a checkpoint
    /// writes into `log.redb`. openraft saves a committed index only after appending what it
    /// covers, and rounds take the queue in order, so once a round that took it is durable, so
    /// are they; `committed_saved` may name entries still queued, and a committed index past
    /// the durable log stops a restart (openraft re-applies up to it from the log: the
    /// simulator's seeds 10798 and 10897).
    committed_durable: Mutex<Option<Vec<u8>>>,
    /// Taken by the writer task when it starts (on the first write).
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Queued>>>,
    /// Held through a round, by the writer or by a submitter running one inline
    /// (`LogWriter::try_inline`), with what rounds carry from one to the next.
    round: Mutex<WriterState>,
    /// Ops sent to the writer's queue that no round has taken yet.
    queued: AtomicU64,
    /// Light rounds may run on the submitter's thread when the writer is idle (`try_inline`).
    rounds_inline: AtomicBool,
}

impl Drop for WriterShared {
    /// At close the journal checkpoints (`journal.rs`): `log.redb` becomes durable with every
    /// record applied and the newest durable committed index, so a clean restart replays
    /// nothing and re-applies everything committed at start-up. Best effort, as the state
    /// database's own durable commit at close: after a failure, or under a simulated crash
    /// whose disk refuses writes, the journal's records stay and the next open replays them.
    fn drop(&mut self) {
        if self.failed.load(Ordering::Acquire) {
            return;
        }
        // An unqueued committed index right behind a durable round covers durable entries
        // only: every op submitted before it was in that round or an earlier one.
        let durable_seq = self.durable_seq.load(Ordering::Acquire);
        if let Some((seq, committed)) = *lock(&self.committed_unqueued)
            && seq <= durable_seq + 1
        {
            *lock(&self.committed_durable) = Some(codec::encode(&committed));
        }
        let committed = lock(&self.committed_durable).clone();
        let checkpointed = self
            .store
            .log_journal()
            .checkpoint(self.store.log_db(), committed.as_deref());
        if let Err(error) = checkpointed {
            tracing::debug!(%error, "log journal not checkpointed at close");
        }
    }
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
    queue: Arc<WriterQueue>,
}

/// The writer's queue and, on a multi-threaded runtime, its thread. When the last log store
/// clone drops it, the queue closes and the drop waits for the thread to finish its round and
/// exit: a round applies its record to `log.redb` after its callbacks, and a store dropped
/// after its last callback must find the databases closed (reopening them would fail, locked).
struct WriterQueue {
    sender: Option<mpsc::UnboundedSender<Queued>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for WriterQueue {
    fn drop(&mut self) {
        drop(self.sender.take());
        let thread = self
            .thread
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(thread) = thread
            && thread.thread().id() != std::thread::current().id()
            && thread.join().is_err()
        {
            tracing::error!("the log writer thread panicked");
        }
    }
}

impl std::fmt::Debug for WriterQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterQueue").finish_non_exhaustive()
    }
}

/// `error` again, for another waiter: an I/O error keeps its kind (a full disk stays one).
fn same_error(error: &StorageError) -> StorageError {
    match error.io_source() {
        Some(source) => StorageError::Redb(redb::Error::Io(std::io::Error::new(
            source.kind(),
            source.to_string(),
        ))),
        None => StorageError::Invariant(format!("log commit failed: {error}")),
    }
}

impl WriterShared {
    /// The error every write and read returns after a failed round, naming its cause.
    fn failed_error(&self) -> StorageError {
        let cause = lock(&self.failure)
            .clone()
            .unwrap_or_else(|| "unknown".to_string());
        StorageError::Invariant(format!("an earlier log commit failed: {cause}"))
    }
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
                failure: Mutex::new(None),
                room_entries: Arc::new(Semaphore::new(usize_from(u64::from(
                    LOG_WRITER_QUEUE_ENTRIES_MAX,
                )))),
                room_bytes: Arc::new(Semaphore::new(usize_from(LOG_WRITER_QUEUE_BYTES_MAX))),
                committed_saved: Mutex::new(None),
                committed_unqueued: Mutex::new(None),
                durable_seq: AtomicU64::new(0),
                rounds: AtomicU64::new(0),
                committed_durable: Mutex::new(None),
                receiver: Mutex::new(Some(receiver)),
                round: Mutex::new(WriterState::default()),
                queued: AtomicU64::new(0),
                rounds_inline: AtomicBool::new(true),
            }),
            queue: Arc::new(WriterQueue {
                sender: Some(sender),
                thread: Mutex::new(None),
            }),
        }
    }

    /// Whether light rounds may run inline (`try_inline`; on by default). Off, every op goes
    /// through the writer's queue.
    pub fn set_rounds_inline(&self, inline: bool) {
        self.shared.rounds_inline.store(inline, Ordering::Release);
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

    /// The error for a read or write after a failed round.
    pub fn failed_error(&self) -> StorageError {
        self.shared.failed_error()
    }

    /// Rounds run so far, on the writer's thread or inline.
    pub fn rounds(&self) -> u64 {
        self.shared.rounds.load(Ordering::Relaxed)
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
            return Err(self.shared.failed_error());
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
            bytes: bytes_room,
        })
    }

    /// Queues `op`; an append's entries are readable when this returns. An append should hold
    /// room from [`LogWriter::reserve`], which its commit gives back.
    pub fn submit(&self, op: WriteOp, room: Option<QueueRoom>) -> Result<()> {
        if self.shared.failed.load(Ordering::Acquire) {
            let error = self.shared.failed_error();
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
        let seq = self.next_seq();
        match self.try_inline(Queued { seq, op, room }) {
            Inline::Done { apply_due: false } => Ok(()),
            Inline::Done { apply_due: true } => self.enqueue(WriteOp::Flush, None),
            Inline::Declined(Queued {
                seq,
                op: WriteOp::Committed(committed),
                ..
            }) => {
                // Only ever newer: openraft's committed index does not go back.
                *lock(&self.shared.committed_unqueued) = Some((seq, committed));
                Ok(())
            }
            Inline::Declined(queued) => self.send(queued),
        }
    }

    /// The next op's sequence number (1, 2, 3, … in submission order).
    fn next_seq(&self) -> u64 {
        self.shared.submitted_seq.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Queues `op` behind everything submitted before it.
    fn enqueue(&self, op: WriteOp, room: Option<QueueRoom>) -> Result<()> {
        let seq = self.next_seq();
        self.send(Queued { seq, op, room })
    }

    fn send(&self, queued: Queued) -> Result<()> {
        // Counted before it is sent, so that no inline round can pass it (`try_inline`).
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        // The sender is taken only by the queue's drop, after the last handle is gone.
        let Some(sender) = self.queue.sender.as_ref() else {
            return Err(StorageError::Invariant("log writer stopped".to_string()));
        };
        sender
            .send(queued)
            .map_err(|_| StorageError::Invariant("log writer stopped".to_string()))
    }

    /// Runs `queued` as a round of its own on the caller's thread when the writer is idle
    /// (no round running, nothing queued) and the round is light: an append whose record the
    /// journal takes with one write and one sync (no checkpoint first), or a committed index
    /// (no write at all). The caller (openraft's core, the only submitter) then waits for that
    /// sync instead of waking the writer thread and being woken by it: on this VM each such
    /// hand-off to a sleeping thread cost a lone put tens of microseconds. The round's apply to
    /// `log.redb`, when due, is left to the writer (`Inline::Done::apply_due`).
    fn try_inline(&self, queued: Queued) -> Inline {
        if !self.shared.rounds_inline.load(Ordering::Acquire) {
            return Inline::Declined(queued);
        }
        let light = match (&queued.op, &queued.room) {
            (WriteOp::Append { entries, .. }, Some(room)) => {
                let payload_bytes =
                    crate::journal::Record::payload_bytes_for(entries.len(), room.bytes());
                let store = &self.shared.store;
                let unsynced_bytes = store.log_unsynced_bytes();
                store
                    .log_journal()
                    .commits_without_checkpoint(payload_bytes, unsynced_bytes)
            }
            (WriteOp::Committed(_), _) => true,
            _ => false,
        };
        if !light {
            return Inline::Declined(queued);
        }
        let mut state = match self.shared.round.try_lock() {
            Ok(state) => state,
            Err(std::sync::TryLockError::WouldBlock) => return Inline::Declined(queued),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        };
        // Every op submitted before this one was queued (and counted) before this one got its
        // seq; none is left, and no round runs: this one is next.
        if self.shared.queued.load(Ordering::Acquire) != 0 {
            return Inline::Declined(queued);
        }
        let apply_due = run_round(&self.shared, vec![queued], &mut state, Round::Inline);
        Inline::Done { apply_due }
    }

    /// Runs `op` through the writer after everything queued before it, and waits until it is
    /// durable and in `log.redb`.
    pub async fn meta(&self, op: MetaOp) -> Result<()> {
        let (done, finished) = oneshot::channel();
        self.submit(WriteOp::Meta { op, done }, None)?;
        finished
            .await
            .map_err(|_| StorageError::Invariant("log writer stopped".to_string()))?
    }

    /// Waits until everything submitted so far is durable and in `log.redb` (or has failed).
    pub async fn flush(&self) -> Result<()> {
        self.submit(WriteOp::Flush, None)?;
        let target = self.shared.submitted_seq.load(Ordering::Acquire);
        let mut finished = self.shared.finished_seq.subscribe();
        finished
            .wait_for(|done| *done >= target)
            .await
            .map_err(|_| StorageError::Invariant("log writer stopped".to_string()))?;
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(self.shared.failed_error());
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
            match spawned {
                Ok(thread) => *lock(&self.queue.thread) = Some(thread),
                Err(error) => {
                    tracing::error!(%error, "cannot start the log writer thread");
                    *lock(&self.shared.failure) = Some(format!("cannot start its thread: {error}"));
                    self.shared.failed.store(true, Ordering::Release);
                }
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
    while let Some(first) = receiver.blocking_recv() {
        writer_round(&shared, first, &mut receiver);
    }
}

async fn run_writer_task(
    shared: Weak<WriterShared>,
    mut receiver: mpsc::UnboundedReceiver<Queued>,
) {
    while let Some(first) = receiver.recv().await {
        writer_round(&shared, first, &mut receiver);
    }
}

/// The writer's round: `first` and whatever else is queued, taken under the round lock.
fn writer_round(
    shared: &Weak<WriterShared>,
    first: Queued,
    receiver: &mut mpsc::UnboundedReceiver<Queued>,
) {
    let Some(shared) = shared.upgrade() else {
        // The store is gone: nothing queued can be made durable; the callbacks are dropped.
        return;
    };
    let mut state = lock(&shared.round);
    let batch = take_batch(first, receiver);
    let taken = batch.len() as u64;
    let before = shared.queued.fetch_sub(taken, Ordering::AcqRel);
    assert!(before >= taken, "the writer took more ops than were queued");
    run_round(&shared, batch, &mut state, Round::Writer);
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

/// Puts the unqueued committed index (`WriterShared::committed_unqueued`) into `batch` at its
/// place by `seq` when the batch reaches up to it (its last op was submitted right before it,
/// or later): everything submitted before it is then in this round or an earlier one
/// (openraft's core is the only submitter, so ops reach the queue in `seq` order), exactly as
/// if it had been queued.
fn take_unqueued_committed(shared: &WriterShared, batch: &mut Vec<Queued>, last_seq: u64) {
    let mut unqueued = lock(&shared.committed_unqueued);
    let Some((seq, committed)) = *unqueued else {
        return;
    };
    if seq > last_seq + 1 {
        return;
    }
    *unqueued = None;
    drop(unqueued);
    let at = batch.partition_point(|queued| queued.seq < seq);
    assert!(
        batch.get(at).is_none_or(|queued| queued.seq != seq),
        "an unqueued committed index shares its seq with a queued op"
    );
    batch.insert(
        at,
        Queued {
            seq,
            op: WriteOp::Committed(committed),
            room: None,
        },
    );
}

/// One round: `batch` as one journal record (`journal.rs`), then the reports in this order:
/// queue room freed and the appends' callbacks fired once the record is durable; then, if the
/// round has a flush, vote, truncate or purge, or the records `log.redb` lacks have reached
/// `LOG_APPLY_DEFER_BYTES_MAX` / `LOG_APPLY_DEFER_ENTRIES_MAX`, those records applied to
/// `log.redb` in one transaction, their entries dropped from `pending`, the finished sequence
/// number published and the vote, truncate and purge ops completed. The shared state (and
/// with it the database) is held only until then.
///
/// An inline round (`LogWriter::try_inline`) stops after the callbacks when the apply is due
/// and returns true: the caller queues a flush for the writer to do it.
fn run_round(
    shared: &WriterShared,
    mut batch: Vec<Queued>,
    state: &mut WriterState,
    round: Round,
) -> bool {
    assert!(!batch.is_empty());
    let taken_last_seq = batch.last().map_or(0, |q| q.seq);
    take_unqueued_committed(shared, &mut batch, taken_last_seq);
    let last_seq = batch.last().map_or(0, |q| q.seq);
    assert!(last_seq >= taken_last_seq);
    shared.rounds.fetch_add(1, Ordering::Relaxed);
    let mut record = Record::default();
    let mut entries = Vec::new();
    let mut callbacks = Vec::new();
    let mut dones = Vec::new();
    let mut rooms = Vec::new();
    let mut apply_now = false;
    for queued in batch {
        rooms.extend(queued.room);
        match queued.op {
            WriteOp::Append {
                entries: more,
                callback,
            } => {
                for entry in &more {
                    record.append(entry);
                }
                entries.extend(more);
                callbacks.push(callback);
            }
            WriteOp::Committed(id) => state.committed_held = Some(id),
            WriteOp::Meta { op, done } => {
                match op {
                    MetaOp::Vote(vote) => record.vote(&vote),
                    MetaOp::Truncate { from } => record.truncate(from),
                    MetaOp::Purge(upto) => record.purge(&upto),
                }
                dones.push(done);
                apply_now = true;
            }
            WriteOp::Flush => apply_now = true,
        }
    }
    // The committed index rides along with anything else, after what it covers.
    if !record.is_empty()
        && let Some(committed) = state.committed_held.take()
    {
        record.committed(&committed);
    }
    let store = &shared.store;
    let (durable, carried) = if shared.failed.load(Ordering::Acquire) {
        (Err(shared.failed_error()), None)
    } else if record.is_empty() {
        (Ok(()), None)
    } else {
        let started = std::time::Instant::now();
        let committed_durable = lock(&shared.committed_durable).clone();
        let appended = record.appended_entries();
        let carried = record.committed_bytes().map(<[u8]>::to_vec);
        let durable = store.log_journal().commit(
            store.log_db(),
            record,
            committed_durable.as_deref(),
            store.log_unsynced_bytes(),
        );
        if durable.is_ok() && appended > 0 {
            store
                .shared
                .fsync_latency
                .observe_us(micros(started.elapsed()));
        }
        (durable.map(|_| ()), carried)
    };
    // Every op queued before the newest committed index is durable now, so a checkpoint may
    // write it, carried by this record or still held for the next one.
    if durable.is_ok() {
        let newest = match (carried, &state.committed_held) {
            (Some(carried), _) => Some(carried),
            (None, Some(held)) => Some(codec::encode(held)),
            (None, None) => None,
        };
        if newest.is_some() {
            *lock(&shared.committed_durable) = newest;
        }
        shared.durable_seq.fetch_max(last_seq, Ordering::AcqRel);
    }
    if let (Ok(()), Some(first), Some(last)) = (&durable, entries.first(), entries.last()) {
        store
            .stage_clock()
            .reached(Stage::Durable, first.log_id.index, last.log_id.index);
    }
    // Durable (or failed): their room is free before their callbacks fire, so the next append
    // can queue at once; the entries stay readable in `pending` until `log.redb` has them.
    drop(rooms);
    for callback in callbacks {
        let outcome = match &durable {
            Ok(()) => Ok(()),
            Err(error) => Err(std::io::Error::other(error.to_string())),
        };
        callback.io_completed(outcome);
    }
    // Into `log.redb` when a waiter needs it there, or when enough has piled up; a checkpoint
    // (in this round's commit) may have applied everything already.
    state.unapplied.extend(entries);
    let mut apply_due = false;
    let result = durable.and_then(|()| {
        let mut journal = store.log_journal();
        if apply_now
            || journal.unapplied_bytes() >= LOG_APPLY_DEFER_BYTES_MAX
            || state.unapplied.len() >= LOG_APPLY_DEFER_ENTRIES_MAX
        {
            match round {
                Round::Writer => journal.apply_unapplied(store.log_db())?,
                Round::Inline => apply_due = true,
            }
        }
        Ok(())
    });
    // A failed round's entries may be in neither `pending` nor the database once they leave
    // `pending`: mark the failure first, so that no read finds them missing without also
    // finding the failure (`LogStore::read_entries` checks it after reading). A short read on
    // openraft's apply path is reported applied.
    if let Err(error) = &result {
        tracing::error!(%error, "log commit failed");
        lock(&shared.failure).get_or_insert_with(|| error.to_string());
        shared.failed.store(true, Ordering::Release);
    }
    let all_applied = result.is_err() || store.log_journal().all_applied();
    if !all_applied {
        // The ops are durable; `log.redb` takes them with a later round, and `flush` waits
        // for that round (nothing before `last_seq` is done until then).
        assert!(
            dones.is_empty(),
            "a vote, truncate or purge round applies at once"
        );
        return apply_due;
    }
    let mut pending = lock(&shared.pending);
    for entry in state.unapplied.drain(..) {
        let index = entry.log_id.index;
        // A truncation and a new append may have put another entry at this index.
        if pending.get(&index).is_some_and(|p| Arc::ptr_eq(p, &entry)) {
            pending.remove(&index);
        }
    }
    drop(pending);
    shared.finished_seq.send_replace(last_seq);
    for done in dones {
        let outcome = match &result {
            Ok(()) => Ok(()),
            Err(error) => Err(same_error(error)),
        };
        // The waiter may have gone (its future dropped): nothing to tell.
        let _ = done.send(outcome);
    }
    false
}
