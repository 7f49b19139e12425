//! When the state database commits durably.
//!
//! Apply batches commit with `Durability::None` (or stay uncommitted for a while in the apply
//! path's parked transaction, `parked.rs`): the Raft log is the durable record, and after a
//! crash openraft re-applies the committed log from the state machine's last durable applied
//! index (`get_initial_state` in openraft's `storage/helper.rs`). A durable commit of its own
//! follows a batch, once the batch is answered (`AfterAnswer` in `state_machine/mod.rs`), when
//! one of these bounds is reached, checked at each apply (nothing runs on a timer):
//!
//! - `STATE_DURABLE_INTERVAL_MS` since the last durable commit;
//! - `STATE_DIRTY_ENTRIES_MAX` entries applied since then;
//! - `STATE_DIRTY_BYTES_MAX` bytes written to the state file and not yet synced.
//!
//! That commit writes and syncs the pages the batches since the last one dirtied. The key index
//! lives in memory (`state_machine/key_index.rs`); a durable commit may start a checkpoint of
//! it (`Store::commit_state_durable`), and an open replays what is above the checkpoint.
//!
//! Besides, the state database is made durable before a snapshot is recorded (that commit is
//! durable), before any log purge (`LogStore::purge` asks for it), by defragment, and at close.
//! The invariant all of this serves, asserted in `LogStore::purge`: **the log is never purged
//! past the applied index the state database has made durable.**

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aspen_core::limits::{
    STATE_DIRTY_BYTES_MAX, STATE_DIRTY_ENTRIES_MAX, STATE_DURABLE_INTERVAL_MS,
};
use redb::Database;

use crate::error::Result;

/// What of the state database is durable, and what is not yet.
#[derive(Debug)]
pub(crate) struct StateDurability {
    /// Last applied log index known to be durable in the state file (0: none).
    durable_applied_index: AtomicU64,
    /// The log journal's `durable_bytes_total` read before the last durable commit began:
    /// entries made durable in the log after it may not be in the state file yet, and will
    /// take space there (in redb's write buffer, or not applied yet). See [`Self::owed_bytes`].
    log_bytes_at_durable: AtomicU64,
    dirty: Mutex<Dirty>,
}

#[derive(Debug)]
struct Dirty {
    /// Entries applied by non-durable commits since the last durable one.
    entries: u64,
    /// When the last durable commit happened (the simulator's clock under madsim).
    durable_at: tokio::time::Instant,
}

impl StateDurability {
    pub fn new(durable_applied_index: u64) -> StateDurability {
        StateDurability {
            durable_applied_index: AtomicU64::new(durable_applied_index),
            log_bytes_at_durable: AtomicU64::new(0),
            dirty: Mutex::new(Dirty {
                entries: 0,
                durable_at: tokio::time::Instant::now(),
            }),
        }
    }

    pub fn durable_applied_index(&self) -> u64 {
        self.durable_applied_index.load(Ordering::Acquire)
    }

    /// Whether the apply batch about to commit, of `batch_entries` entries, should commit
    /// durably; `unsynced_bytes` is what the state file holds unsynced now.
    pub fn batch_is_due(&self, batch_entries: u64, unsynced_bytes: u64) -> bool {
        let dirty = self.lock();
        let interval = Duration::from_millis(STATE_DURABLE_INTERVAL_MS);
        dirty.entries + batch_entries >= STATE_DIRTY_ENTRIES_MAX
            || unsynced_bytes >= STATE_DIRTY_BYTES_MAX
            || dirty.durable_at.elapsed() >= interval
    }

    /// A batch of `entries` committed without an fsync.
    pub fn record_not_durable(&self, entries: u64) {
        let mut dirty = self.lock();
        dirty.entries += entries;
    }

    /// Payload bytes of log entries the state file may still have to take, given the log's
    /// running total now (`JournalGauge::durable_bytes_total`): those made durable in the log
    /// since the last durable state commit began. Their pages stay in redb's write buffer (or
    /// a parked transaction) until the next durable commit writes them.
    pub fn owed_bytes(&self, log_bytes_total: u64) -> u64 {
        log_bytes_total.saturating_sub(self.log_bytes_at_durable.load(Ordering::Acquire))
    }

    /// A durable commit made everything applied up to `applied_index` durable;
    /// `log_bytes_before` is the log's running total read before that commit began.
    pub fn record_durable(&self, applied_index: u64, log_bytes_before: u64) {
        self.log_bytes_at_durable
            .fetch_max(log_bytes_before, Ordering::AcqRel);
        let mut dirty = self.lock();
        dirty.entries = 0;
        dirty.durable_at = tokio::time::Instant::now();
        // Never backwards: a snapshot install may set a lower applied index only by replacing
        // the whole state, and that install is itself durable and recorded here first.
        let previous = self
            .durable_applied_index
            .swap(applied_index, Ordering::AcqRel);
        if applied_index < previous {
            tracing::debug!(
                previous,
                applied_index,
                "durable applied index moved back (snapshot install)"
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Dirty> {
        self.dirty
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Commits a durable transaction on the state database: every earlier non-durable commit
/// becomes durable with it. Returns the applied index and store revision it made durable.
pub(crate) fn commit_durable(shared: &crate::backend::Shared, db: &Database) -> Result<(u64, u64)> {
    commit_state(shared, db, redb::Durability::Immediate)
}

/// Commits a transaction of its own on the state database with `durability`: a durable one
/// makes every earlier non-durable one durable. Returns the applied index and the store
/// revision it holds.
pub(crate) fn commit_state(
    shared: &crate::backend::Shared,
    db: &Database,
    durability: redb::Durability,
) -> Result<(u64, u64)> {
    let mut txn = shared.begin_state_write(db)?;
    txn.set_durability(durability)?;
    let state = crate::state_machine::read_applied_write(&txn)?;
    txn.commit()?;
    Ok((applied_index_in(&state), state.revision))
}

/// The applied index the state database holds (after a restart, all of it is durable).
pub(crate) fn read_applied_index(db: &Database) -> Result<u64> {
    use redb::ReadableDatabase;
    let txn = db.begin_read()?;
    Ok(applied_index_in(&crate::state_machine::read_applied(&txn)?))
}

fn applied_index_in(state: &crate::state_machine::AppliedState) -> u64 {
    state.last_applied.as_ref().map_or(0, |id| id.index)
}
