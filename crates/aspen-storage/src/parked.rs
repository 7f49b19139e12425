//! Who writes the state database, and the apply path's write transaction left open
//! ("parked") between batches.
//!
//! Why: in a running node a one-entry apply batch took ~78 µs, of which ~30 µs was its redb
//! commit with `Durability::None` (table roots, system tables, a `pwrite` of every dirty page)
//! and ~6 µs writing the applied state (docs/performance.md, session 14). Now a batch that does
//! not commit durably may leave its transaction
//! here, answered but not committed, and the next batch continues in it. It is committed:
//!
//! - by any reader of the state database first ([`crate::Store::begin_state_read`]), so a read
//!   sees every batch applied before it began, as if each batch had committed;
//! - by any other writer first ([`crate::Store::begin_state_write`]: the compactor, a snapshot
//!   point, an install, a durable commit, an import), which then begins its own transaction;
//!   so an error that aborts such a writer never takes answered batches with it;
//! - by the apply path, with any batch after which a durable commit of its own is due
//!   (`AfterAnswer` in `state_machine/mod.rs`), once
//!   `STATE_PARKED_ENTRIES_MAX` entries are in it or `STATE_PARKED_MS_MAX` has passed since its
//!   first batch, and before its next batch when a reader is waiting for it.
//!
//! The slot is also the state database's writer lock: a writer claims it ([`WriterSlot::claim`])
//! before it begins a redb write transaction and holds it to the end. Without that, a writer
//! could block in redb's `begin_write` behind a parked transaction that only it could commit.
//!
//! A crash loses a parked batch as it loses a non-durable commit: openraft re-applies the log
//! from the durable applied index. A failure is different: if a parked transaction cannot be
//! committed, or the apply path fails in a transaction that holds parked batches, batches that
//! were already answered are gone from this process's state. The slot then turns failed: every
//! later read and write of the state database returns an error (openraft stops on the failed
//! apply; a restart re-applies them from the log).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::ThreadId;

use redb::WriteTransaction;

use crate::error::{Result, StorageError};

/// An open write transaction holding answered apply batches that are not committed yet.
pub(crate) struct Parked {
    pub txn: WriteTransaction,
    /// Entries applied in it.
    pub entries: u64,
    /// When its first batch began (the simulator's clock under madsim).
    pub begun_at: tokio::time::Instant,
    /// The store revision before its first batch: what the database's readers see until it
    /// commits, and what the key index goes back to if it is lost.
    pub revision_before: u64,
}

enum Slot {
    /// No writer, nothing parked.
    Free,
    /// No writer; this transaction holds answered batches (boxed: a redb transaction is large,
    /// and the slot is mostly `Free` or `Claimed`).
    Parked(Box<Parked>),
    /// A writer on this thread holds the writer role (and redb's write lock, or is taking it).
    Claimed(ThreadId),
}

pub(crate) struct WriterSlot {
    slot: Mutex<Slot>,
    /// Notified whenever the slot changes.
    changed: Condvar,
    /// True from a park until the parked batches commit (also while the apply path continues
    /// in them). Set before the batches' effects are announced (applied index, responses), so
    /// a read that starts after them sees it; readers check it without the lock.
    uncommitted: AtomicBool,
    /// A reader is waiting for the parked batches: the apply path commits them first.
    wanted: AtomicBool,
    /// Why answered batches were lost, once they were (see the module docs).
    failed: Mutex<Option<String>>,
    /// Whether `failed` holds a reason: every read checks this, not the lock.
    has_failed: AtomicBool,
}

impl Default for WriterSlot {
    fn default() -> WriterSlot {
        WriterSlot {
            slot: Mutex::new(Slot::Free),
            changed: Condvar::new(),
            uncommitted: AtomicBool::new(false),
            wanted: AtomicBool::new(false),
            failed: Mutex::new(None),
            has_failed: AtomicBool::new(false),
        }
    }
}

impl std::fmt::Debug for WriterSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WriterSlot {{ uncommitted: {} }}",
            self.uncommitted.load(Ordering::Relaxed)
        )
    }
}

/// The writer role, held until dropped; see [`WriterSlot::claim`].
pub(crate) struct Claim<'s> {
    owner: &'s WriterSlot,
    parked: Option<Parked>,
    released: bool,
}

impl<'s> Claim<'s> {
    /// The parked transaction the claim found, if any: the caller commits it or continues in
    /// it (only the apply path continues).
    pub fn take_parked(&mut self) -> Option<Parked> {
        self.parked.take()
    }

    /// Whether a reader is waiting for the parked batches (the apply path commits them before
    /// its own batch then).
    pub fn reader_waiting(&self) -> bool {
        self.owner.wanted.load(Ordering::Acquire)
    }

    /// A commit holding every answered batch succeeded: none is left uncommitted.
    pub fn committed(&self) {
        self.owner.uncommitted.store(false, Ordering::Release);
        self.owner.wanted.store(false, Ordering::Release);
    }

    /// Answered batches could not be committed: every later read and write fails.
    pub fn lost(&self, reason: String) {
        self.owner.fail(reason);
    }

    /// Leaves `parked` open for the next batch and gives up the writer role.
    pub fn park(mut self, parked: Parked) {
        assert!(parked.entries > 0, "parking a transaction with no entries");
        assert!(
            self.parked.is_none(),
            "parking over a transaction not taken"
        );
        let mut slot = self.owner.lock_slot();
        assert!(
            matches!(*slot, Slot::Claimed(_)),
            "parking without the claim"
        );
        self.owner.uncommitted.store(true, Ordering::Release);
        *slot = Slot::Parked(Box::new(parked));
        self.released = true;
        drop(slot);
        self.owner.changed.notify_all();
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        assert!(
            self.parked.is_none() || std::thread::panicking(),
            "a claim dropped with a parked transaction it neither committed nor continued"
        );
        let mut slot = self.owner.lock_slot();
        *slot = Slot::Free;
        drop(slot);
        self.owner.changed.notify_all();
    }
}

impl WriterSlot {
    /// Waits until no other writer holds the role, then takes it, with the parked
    /// transaction if there is one. Never call it while this thread holds a claim.
    pub fn claim(&self) -> Result<Claim<'_>> {
        self.check()?;
        let me = std::thread::current().id();
        let mut slot = self.lock_slot();
        loop {
            match std::mem::replace(&mut *slot, Slot::Claimed(me)) {
                Slot::Free => {
                    return Ok(Claim {
                        owner: self,
                        parked: None,
                        released: false,
                    });
                }
                Slot::Parked(parked) => {
                    return Ok(Claim {
                        owner: self,
                        parked: Some(*parked),
                        released: false,
                    });
                }
                Slot::Claimed(owner) => {
                    assert!(owner != me, "claiming the state writer twice on one thread");
                    *slot = Slot::Claimed(owner);
                    slot = self
                        .changed
                        .wait(slot)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    self.check()?;
                }
            }
        }
    }

    /// For a reader: returns once no answered batch is left uncommitted, committing a parked
    /// transaction with `commit` if it finds one, waiting if the apply path is continuing in
    /// it. A read on a thread that holds the claim (nested in a writer) does not wait.
    pub fn commit_answered(&self, commit: impl FnOnce(Parked) -> Result<()>) -> Result<()> {
        self.check()?;
        if !self.uncommitted.load(Ordering::Acquire) {
            return Ok(());
        }
        let me = std::thread::current().id();
        let mut slot = self.lock_slot();
        loop {
            self.check()?;
            if !self.uncommitted.load(Ordering::Acquire) {
                return Ok(());
            }
            match std::mem::replace(&mut *slot, Slot::Claimed(me)) {
                Slot::Parked(parked) => {
                    drop(slot);
                    let result = commit(*parked);
                    match &result {
                        Ok(()) => {
                            self.uncommitted.store(false, Ordering::Release);
                            self.wanted.store(false, Ordering::Release);
                        }
                        Err(error) => self.fail(format!("committing parked batches: {error}")),
                    }
                    *self.lock_slot() = Slot::Free;
                    self.changed.notify_all();
                    return result;
                }
                Slot::Claimed(owner) if owner == me => {
                    *slot = Slot::Claimed(owner);
                    return Ok(());
                }
                Slot::Free => {
                    // Answered batches uncommitted and no transaction holding them: they were
                    // lost without `fail` (never expected; never wait for them forever).
                    *slot = Slot::Free;
                    drop(slot);
                    self.fail("answered batches left uncommitted with no transaction".into());
                    return self.check();
                }
                other => {
                    // Claimed: the apply path is continuing in them.
                    *slot = other;
                    self.wanted.store(true, Ordering::Release);
                    slot = self
                        .changed
                        .wait(slot)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
            }
        }
    }

    /// Whether answered batches are left uncommitted.
    pub fn uncommitted(&self) -> bool {
        self.uncommitted.load(Ordering::Acquire)
    }

    /// An error once answered batches were lost.
    pub fn check(&self) -> Result<()> {
        if !self.has_failed.load(Ordering::Acquire) {
            return Ok(());
        }
        match &*self.lock_failed() {
            Some(reason) => Err(StorageError::Invariant(format!(
                "the state machine lost answered batches and must be restarted: {reason}"
            ))),
            None => Ok(()),
        }
    }

    fn fail(&self, reason: String) {
        {
            let mut failed = self.lock_failed();
            if failed.is_none() {
                *failed = Some(reason);
            }
            self.has_failed.store(true, Ordering::Release);
        }
        // Waiters re-check and see the failure.
        let _slot = self.lock_slot();
        self.changed.notify_all();
    }

    fn lock_slot(&self) -> MutexGuard<'_, Slot> {
        // Nothing panics while holding it with the slot half-changed.
        self.slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_failed(&self) -> MutexGuard<'_, Option<String>> {
        self.failed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A write transaction of the state database with the writer role (see
/// [`crate::Store::begin_state_write`]); dropped without [`StateWrite::commit`], it aborts.
pub(crate) struct StateWrite<'s> {
    // Dropped first: redb's write lock goes before the role does.
    txn: WriteTransaction,
    claim: Claim<'s>,
}

impl<'s> StateWrite<'s> {
    pub fn new(txn: WriteTransaction, claim: Claim<'s>) -> StateWrite<'s> {
        StateWrite { txn, claim }
    }

    pub fn commit(self) -> Result<()> {
        let StateWrite { txn, claim } = self;
        let committed = txn.commit();
        drop(claim);
        Ok(committed?)
    }

    pub fn abort(self) -> Result<()> {
        let StateWrite { txn, claim } = self;
        let aborted = txn.abort();
        drop(claim);
        Ok(aborted?)
    }
}

impl std::ops::Deref for StateWrite<'_> {
    type Target = WriteTransaction;

    fn deref(&self) -> &WriteTransaction {
        &self.txn
    }
}

impl std::ops::DerefMut for StateWrite<'_> {
    fn deref_mut(&mut self) -> &mut WriteTransaction {
        &mut self.txn
    }
}

#[cfg(test)]
mod tests {
    use aspen_core::limits::Limits;
    use aspen_core::type_config::alias::Entry;
    use aspen_core::{Command, PutRequest, RangeRequest, TypeConfig};
    use openraft::EntryPayload;

    use crate::{StateMachine, StorageBackend, open_storage};

    fn put(sm: &StateMachine, index: u64) {
        let entry: Entry = openraft::Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
            payload: EntryPayload::Normal(Command::Put(PutRequest {
                key: format!("k{index}").into_bytes(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        };
        sm.apply_entries(&[entry]).expect("apply");
    }

    fn revision(sm: &StateMachine) -> u64 {
        let all = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            count_only: true,
            ..Default::default()
        };
        sm.reader().range(&all).expect("read").expect("range").1
    }

    /// Another writer commits the parked batches before its own transaction begins, so a
    /// writer that aborts (an install of a damaged snapshot, a compaction step that starts
    /// over) never takes answered batches with it.
    #[test]
    fn a_writer_that_aborts_leaves_parked_batches_committed() {
        let (_log, sm) = open_storage(&StorageBackend::InMemory, Limits::default()).expect("open");
        put(&sm, 1);
        put(&sm, 2);
        assert!(sm.store().state_batches_uncommitted());
        {
            let db = sm.store().state_db();
            let txn = sm.store().begin_state_write(&db).expect("write");
            assert!(!sm.store().state_batches_uncommitted(), "committed first");
            txn.abort().expect("abort");
        }
        assert_eq!(revision(&sm), 3, "both answered puts are there");
        put(&sm, 3);
        assert_eq!(revision(&sm), 4);
    }

    /// The apply path continues in a parked transaction (no commit in between) for a run of
    /// batches with no read, and a run never exceeds the entry bound.
    #[test]
    fn runs_of_batches_share_one_transaction() {
        let (_log, sm) = open_storage(&StorageBackend::InMemory, Limits::default()).expect("open");
        let bound = aspen_core::limits::STATE_PARKED_ENTRIES_MAX;
        let mut run: u64 = 0;
        let mut longest_run: u64 = 0;
        for index in 1..=3 * bound {
            put(&sm, index);
            run = if sm.store().state_batches_uncommitted() {
                run + 1
            } else {
                0
            };
            longest_run = longest_run.max(run);
        }
        assert!(longest_run > 1, "batches were left parked for the next");
        assert!(longest_run < bound, "a run ends at the entry bound");
        let bound = 3 * bound;
        assert_eq!(revision(&sm), bound + 1);
    }
}
