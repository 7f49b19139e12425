//! The MVCC state machine: applies committed commands, serves reads, builds and installs
//! snapshots.
//!
//! Each apply batch is one redb write transaction on the state database holding the data, the
//! last-applied log id, the membership and the revisions together. Most batches commit without
//! an fsync: the log (its own database) is the durable record, so a crash can roll the state
//! machine back, and openraft re-applies the committed log from there. A batch commits durably
//! on the cadence `durability.rs` describes; the log is never purged past what is durable here.

mod apply;
pub(crate) mod auth;
mod compact;
mod etcd_io;
mod events;
mod hash;
mod history;
mod index_build;
pub(crate) mod index_checkpoint;
mod key_bytes;
pub(crate) mod key_index;
mod lease_read;
pub(crate) mod mvcc;
pub(crate) mod range;
pub mod records;
mod snapshot_io;
pub(crate) mod tables;
mod txn;

use std::io;

use aspen_core::limits::{STATE_PARKED_ENTRIES_MAX, STATE_PARKED_MS_MAX};
use aspen_core::response::RangeResult;
use aspen_core::type_config::alias::{Entry, LogId, SnapshotMeta, StoredMembership};
use aspen_core::{ApplyError, ApplyResponse, CommandResult, RangeRequest, TypeConfig};
use futures_util::StreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use redb::ReadableTable;

pub use auth::AuthSink;
pub use etcd_io::export_etcd_snapshot;
pub use events::EventSink;
pub use hash::{HashOutcome, KvHash};
pub use history::{EVENT_SCAN_RECORDS_MAX, EventPage, EventsOutcome};
pub use mvcc::{IndexRecord, RevRecord};
pub use records::AppliedState;
pub use snapshot_io::export_snapshot;

use crate::backend::Store;
use crate::error::{Result, StorageError, decode};
use crate::schema::{self, SM_APPLIED, SM_META};
use crate::snapshot::{SnapshotData, SnapshotReceiver, SnapshotRecord};
use crate::stage_clock::Stage;

/// What one apply batch returns besides its commit: responses, events, the auth store's
/// changes.
type AppliedBatch = (
    Vec<ApplyResponse>,
    Option<Vec<aspen_core::Event>>,
    std::sync::Arc<aspen_core::auth::AuthState>,
    auth::BatchAuthEffects,
);

/// Entries applied per write transaction at most; a longer stream commits in several batches.
const APPLY_BATCH_ENTRIES_MAX: usize = 4096;

#[derive(Clone, Debug)]
pub struct StateMachine {
    store: Store,
    /// Where committed events go; shared by every clone.
    events: std::sync::Arc<events::EventHook>,
    /// Signalled when a batch applied a compaction (physical removal is pending).
    compaction: std::sync::Arc<tokio::sync::Notify>,
    /// The last compaction revision whose physical removal finished here.
    compacted: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    /// The committed auth store, in memory, and where token changes go.
    auth: std::sync::Arc<auth::AuthHook>,
}

impl StateMachine {
    pub fn new(store: Store) -> Result<StateMachine> {
        let auth = std::sync::Arc::<auth::AuthHook>::default();
        {
            let db = store.state_db();
            let txn = store.begin_state_read(&db)?;
            auth.replace(std::sync::Arc::new(auth::load_read(&txn)?));
        }
        Ok(StateMachine {
            store,
            events: std::sync::Arc::default(),
            compaction: std::sync::Arc::default(),
            compacted: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
            auth,
        })
    }

    /// The committed auth store (users, roles, flag, revision), for permission checks: a
    /// shared, immutable copy, replaced whenever an apply batch changes it.
    pub fn auth_state(&self) -> std::sync::Arc<aspen_core::auth::AuthState> {
        self.auth.current()
    }

    /// Connects the keeper of tokens. Set it before clients can authenticate; returns false
    /// (and changes nothing) if one was already set.
    pub fn set_auth_sink(&self, sink: std::sync::Arc<dyn AuthSink>) -> bool {
        self.auth.set_sink(sink)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A read handle that shares the database; use it for client reads.
    pub fn reader(&self) -> MvccReader {
        MvccReader {
            store: self.store.clone(),
        }
    }

    /// Starts receiving a snapshot from the leader, bounded by twice the database quota.
    pub fn snapshot_receiver(&self) -> Result<SnapshotReceiver> {
        let bytes_max = self.store.limits().quota_backend_bytes.saturating_mul(2);
        Ok(SnapshotReceiver::new(
            self.store.shared.snapshots.new_sink(bytes_max)?,
        ))
    }

    /// Applies a batch in one write transaction; returns one response per entry. The
    /// transaction may be one that earlier batches left open, and this batch may leave it open
    /// for the next (`parked.rs`): readers commit it first, so they see this batch once it
    /// returns.
    pub fn apply_entries(&self, entries: &[Entry]) -> Result<Vec<ApplyResponse>> {
        let (responses, after) = self.apply_batch(entries)?;
        self.after_answer(after)?;
        Ok(responses)
    }

    /// Applies a batch as [`Self::apply_entries`] does, except for the work that
    /// [`AfterAnswer`] holds, which the caller does with [`Self::after_answer`] once it has
    /// answered the batch.
    fn apply_batch(&self, entries: &[Entry]) -> Result<(Vec<ApplyResponse>, AfterAnswer)> {
        let shared = &self.store.shared;
        let batch_entries = entries.len() as u64;
        // Read before the batch: what the log made durable after this may not be in it.
        let log_bytes_before = shared.log_durable_bytes();
        let durable_due = shared
            .durability
            .batch_is_due(batch_entries, self.store.state_unsynced_bytes());
        let db = self.store.state_db();
        let mut claim = shared.writer.claim()?;
        let mut parked = claim.take_parked();
        if let Some(waited_for) = parked.take_if(|_| claim.reader_waiting()) {
            // A reader is waiting for the parked batches: they commit before this one.
            shared.commit_claimed(&claim, waited_for)?;
        }
        let (mut txn, parked_entries, begun_at, parked_revision) = match parked {
            Some(parked) => (
                parked.txn,
                parked.entries,
                parked.begun_at,
                Some(parked.revision_before),
            ),
            None => (db.begin_write()?, 0, tokio::time::Instant::now(), None),
        };
        txn.set_durability(redb::Durability::None)?;
        let cached = self.take_applied_state();
        assert!(
            parked_revision.is_none() || cached.is_some(),
            "parked batches without their applied state"
        );
        let mut state = match cached {
            Some(cached) => {
                debug_assert!(
                    parked_revision.is_some()
                        || Some(&cached) == read_applied_write(&txn).ok().as_ref()
                );
                cached
            }
            None => read_applied_write(&txn)?,
        };
        let revision_before = state.revision;
        // What the database's readers see now: the key index goes back to it if this fails.
        let committed_revision = parked_revision.unwrap_or(revision_before);
        let compact_revision_before = state.compact_revision;
        let applied = self.apply_in(&txn, entries, &mut state);
        // A batch after which a commit of its own is due is never parked: that commit needs
        // the writer to itself.
        let open_entries = parked_entries + batch_entries;
        let park = !durable_due
            && open_entries < STATE_PARKED_ENTRIES_MAX
            && begun_at.elapsed() < std::time::Duration::from_millis(STATE_PARKED_MS_MAX);
        let (batch, to_park) = match applied {
            Ok(batch) if park => (
                batch,
                Some(crate::parked::Parked {
                    txn,
                    entries: open_entries,
                    begun_at,
                    revision_before: committed_revision,
                }),
            ),
            Ok(batch) => match commit_batch(txn, &state) {
                Ok(()) => (batch, None),
                Err(error) => {
                    return Err(self.batch_failed(
                        error,
                        &claim,
                        committed_revision,
                        parked_entries,
                    ));
                }
            },
            Err(error) => {
                drop(txn);
                return Err(self.batch_failed(error, &claim, committed_revision, parked_entries));
            }
        };
        let (responses, events, auth_state, auth_effects) = batch;
        // Before the claim goes: a reader that commits a parked transaction writes this state.
        *self.applied_state_slot() = Some(state.clone());
        match to_park {
            Some(parked) => claim.park(parked),
            None => {
                claim.committed();
                drop(claim);
            }
        }
        drop(db);
        self.store
            .record_applied(state.last_applied.as_ref().map_or(0, |id| id.index));
        if auth_effects.changed {
            self.auth.replace(auth_state);
        }
        self.auth.announce(&auth_effects);
        shared.durability.record_not_durable(batch_entries);
        if state.compact_revision != compact_revision_before {
            self.compaction.notify_one();
        }
        self.events.publish(aspen_core::event::CommittedBatch {
            revision_before,
            revision_after: state.revision,
            events,
        });
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            let clock = self.store.stage_clock();
            clock.reached(Stage::Applied, first.log_id.index, last.log_id.index);
        }
        let after = AfterAnswer {
            durable_from: durable_due.then_some(log_bytes_before),
        };
        Ok((responses, after))
    }

    /// The commit an applied batch left to do after its answers, if any: a durable commit
    /// the cadence made due (`durability.rs`).
    fn after_answer(&self, after: AfterAnswer) -> Result<()> {
        if let Some(log_bytes_before) = after.durable_from {
            self.store.commit_state_durable(log_bytes_before)?;
        }
        Ok(())
    }

    /// A batch failed before its commit, or in it: redb dropped the transaction, so its index
    /// entries go (and those of batches parked in it, which were answered: the store fails).
    fn batch_failed(
        &self,
        error: StorageError,
        claim: &crate::parked::Claim<'_>,
        committed_revision: u64,
        parked_entries: u64,
    ) -> StorageError {
        self.store
            .shared
            .key_index
            .discard_above(committed_revision);
        if parked_entries > 0 {
            claim.lost(format!(
                "an apply batch failed in a transaction holding {parked_entries} answered \
                 entries: {error}"
            ));
        }
        error
    }

    /// The applied state the last committed batch wrote, if no install or import came since
    /// (`Shared::applied_state`).
    fn take_applied_state(&self) -> Option<AppliedState> {
        self.applied_state_slot().take()
    }

    /// Before an install or an import writes the applied state itself: commits any parked
    /// batches (with the cached state they need) and empties the cache.
    fn forget_applied_state(&self) -> Result<()> {
        let shared = &self.store.shared;
        {
            let _db = self.store.state_db();
            shared
                .writer
                .commit_answered(|parked| shared.commit_parked(parked))?;
        }
        self.take_applied_state();
        Ok(())
    }

    fn applied_state_slot(&self) -> std::sync::MutexGuard<'_, Option<AppliedState>> {
        self.store
            .shared
            .applied_state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `entries` in `txn` (index entries into the key index); returns the responses, the
    /// events and the auth store's changes.
    fn apply_in(
        &self,
        txn: &redb::WriteTransaction,
        entries: &[Entry],
        state: &mut AppliedState,
    ) -> Result<AppliedBatch> {
        let mut responses = Vec::with_capacity(entries.len());
        let mut tables = tables::WriteTables::open(txn);
        let mut applier = apply::Applier {
            tables: &mut tables,
            index: &self.store.shared.key_index,
            state,
            buffer: Vec::with_capacity(256),
            events: self.events.wants_events().then(Vec::new),
            auth: self.auth.current(),
            auth_changes: Default::default(),
            auth_effects: Default::default(),
            log_index: 0,
        };
        for entry in entries {
            let index_before = applier.state.last_applied.as_ref().map(|id| id.index);
            assert!(
                index_before.is_none_or(|i| i < entry.log_id.index),
                "applying an entry twice or out of order"
            );
            applier.log_index = entry.log_id.index;
            let response = match &entry.payload {
                EntryPayload::Normal(command) => applier.apply(command)?,
                EntryPayload::Membership(membership) => {
                    applier.state.membership =
                        StoredMembership::new(Some(entry.log_id), membership.clone());
                    ApplyResponse {
                        revision: applier.state.revision,
                        result: Ok(CommandResult::Empty),
                    }
                }
                EntryPayload::Blank => ApplyResponse {
                    revision: applier.state.revision,
                    result: Ok(CommandResult::Empty),
                },
            };
            applier.state.last_applied = Some(entry.log_id);
            responses.push(response);
        }
        let events = applier.events.take();
        if applier.auth_effects.changed {
            auth::persist(txn, &applier.auth, &applier.auth_changes)?;
        }
        Ok((responses, events, applier.auth, applier.auth_effects))
    }

    /// Records a snapshot point and writes its data now (what a leader does when a follower
    /// needs the state): for tests and tools. Raft records points only
    /// ([`RaftSnapshotBuilder::build_snapshot`]) and writes data on demand.
    pub fn snapshot_written(
        &self,
    ) -> Result<openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>> {
        snapshot_io::record_point(&self.store)?;
        let Some((meta, data)) = snapshot_io::current(&self.store)? else {
            return Err(StorageError::Invariant(
                "no current snapshot right after recording a point".to_string(),
            ));
        };
        Ok(Snapshot {
            meta,
            snapshot: data.materialized()?,
        })
    }

    /// Replaces the whole state machine with the snapshot's contents, durably.
    pub fn install(&self, meta: &SnapshotMeta, data: &SnapshotData) -> Result<()> {
        // No compaction step plans on the tables this replaces and removes from the new ones.
        let _gate = self.store.compaction_gate();
        let bytes_max = self.store.limits().quota_backend_bytes.saturating_mul(2);
        let (data, file_name) = self.store.shared.snapshots.adopt(data, bytes_max)?;
        let previous = self.store.current_snapshot_record()?;
        self.forget_applied_state()?;
        let record = SnapshotRecord {
            meta: meta.clone(),
            file_name,
            len_bytes: data.len_bytes(),
        };
        snapshot_io::install(&self.store, meta, &data, &record)?;
        self.store
            .record_applied(meta.last_log_id.as_ref().map_or(0, |id| id.index));
        {
            let db = self.store.state_db();
            let txn = self.store.begin_state_read(&db)?;
            self.auth
                .replace(std::sync::Arc::new(auth::load_read(&txn)?));
        }
        self.auth.invalidate_all();
        self.events.reset(self.reader().applied_state()?.revision);
        self.store.shared.snapshots.set_memory_current(&data);
        if let Some(previous) = previous {
            self.store
                .shared
                .snapshots
                .remove_replaced(previous.file_name.as_deref(), record.file_name.as_deref())?;
        }
        Ok(())
    }
}

impl StateMachine {
    /// Fills this (empty) state machine from an etcd snapshot, as applied at `meta`'s log
    /// position, then records a snapshot point there (what a member sends a new member). The
    /// caller has walked the whole file (`summary`) before anything was written.
    pub fn import_etcd(
        &self,
        snapshot: &aspen_etcd_snapshot::EtcdSnapshot,
        summary: &aspen_etcd_snapshot::Summary,
        meta: &SnapshotMeta,
    ) -> Result<()> {
        let _gate = self.store.compaction_gate();
        self.forget_applied_state()?;
        etcd_io::import(&self.store, snapshot, summary, meta)?;
        {
            let db = self.store.state_db();
            let txn = self.store.begin_state_read(&db)?;
            self.auth
                .replace(std::sync::Arc::new(auth::load_read(&txn)?));
        }
        self.events.reset(self.reader().applied_state()?.revision);
        snapshot_io::record_point(&self.store)?;
        Ok(())
    }
}

/// Physical compaction's progress on this replica (`sm_meta` `compacted_to`): for which
/// compaction revision, and where in `kv_revs` the next step starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct CompactProgress {
    compact_revision: u64,
    next: mvcc::RevKey,
    done: bool,
}

impl StateMachine {
    /// True when the compaction revision has versions left to remove (physically).
    pub fn compaction_pending(&self) -> Result<bool> {
        let db = self.store.state_db();
        let txn = self.store.begin_state_read(&db)?;
        let state = read_applied(&txn)?;
        let progress = read_compact_progress(&txn.open_table(SM_META)?)?;
        Ok(compact_from(&state, progress).is_some())
    }

    /// One step of physical compaction (see `compact.rs`): looks at up to
    /// `COMPACT_STEP_VERSIONS_MAX` versions and removes the unreadable ones. Returns true while
    /// more steps are needed.
    pub fn compact_step(&self) -> Result<bool> {
        self.compact_step_bounded(aspen_core::limits::COMPACT_STEP_VERSIONS_MAX)
    }

    /// [`StateMachine::compact_step`] looking at up to `records_max` versions (tests use tiny
    /// steps to interleave compaction with everything else).
    ///
    /// A step finds what it removes in a read transaction, so applies go on meanwhile, and
    /// holds the write lock only to remove it. What it found stays true until then: only
    /// compaction changes versions at or below the compaction revision, and the compaction
    /// gate keeps snapshot installs (and other steps) out between the two transactions. A
    /// `Compact` that applied in between makes the step start over.
    pub fn compact_step_bounded(&self, records_max: u32) -> Result<bool> {
        let _gate = self.store.compaction_gate();
        let db = self.store.state_db();
        let (compact_revision, from, plan) = {
            let txn = self.store.begin_state_read(&db)?;
            let state = read_applied(&txn)?;
            let meta = txn.open_table(SM_META)?;
            let Some(from) = compact_from(&state, read_compact_progress(&meta)?) else {
                return Ok(false);
            };
            // No `kv_revs` record above the key index's checkpoint may go: an open replays
            // them (`index_checkpoint.rs`). One at or above the compaction revision first.
            if self.store.index_checkpoint_revision() < state.compact_revision {
                drop(meta);
                drop(txn);
                drop(db);
                self.store.checkpoint_key_index_now()?;
                return Ok(true);
            }
            let plan = compact::plan_step(
                &txn.open_table(schema::KV_REVS)?,
                &self.store.shared.key_index,
                state.compact_revision,
                from,
                records_max,
            )?;
            (state.compact_revision, from, plan)
        };
        // Readers whose transactions predate the `Compact` may still read below it: the index
        // entries go once none is left (`key_index.rs`).
        self.store
            .shared
            .key_index
            .wait_views_compacted_to(compact_revision);
        let mut txn = self.store.begin_state_write(&db)?;
        txn.set_durability(redb::Durability::None)?;
        let state = read_applied_write(&txn)?;
        let progress = read_compact_progress(&txn.open_table(SM_META)?)?;
        if state.compact_revision != compact_revision
            || compact_from(&state, progress) != Some(from)
        {
            // A newer `Compact` applied since the plan: start over at its revision.
            txn.abort()?;
            return Ok(true);
        }
        {
            let mut tables = tables::WriteTables::open(&txn);
            self.store.shared.key_index.note_removing(compact_revision);
            compact::remove_planned(&mut tables, &self.store.shared.key_index, &plan)?;
        }
        let removed = plan.removals.len();
        let progress = CompactProgress {
            compact_revision,
            next: plan.next,
            done: plan.done,
        };
        txn.open_table(SM_META)?.insert(
            schema::SM_COMPACTED_TO,
            aspen_core::codec::encode(&progress).as_slice(),
        )?;
        txn.commit()?;
        drop(db);
        self.store.shared.durability.record_not_durable(0);
        if plan.done {
            self.compacted.send_replace(compact_revision);
        }
        if removed > 0 || plan.done {
            tracing::debug!(
                compact_revision,
                removed,
                done = plan.done,
                "compaction step"
            );
        }
        Ok(!plan.done)
    }

    /// Runs compaction steps until none is pending (tests and tools; the node runs steps from
    /// its compactor task).
    pub fn compact_until_done(&self) -> Result<()> {
        while self.compact_step()? {}
        Ok(())
    }

    /// Wakes whoever waits for compaction work (the node's compactor) after a `Compact` applies.
    pub fn compaction_notify(&self) -> &std::sync::Arc<tokio::sync::Notify> {
        &self.compaction
    }

    /// Waits until this replica has physically finished a compaction at `revision` or later
    /// (etcd's `physical` compaction: the call returns once the space is reclaimable).
    pub async fn wait_compacted(&self, revision: u64) -> Result<()> {
        if !self.compaction_pending()? {
            return Ok(());
        }
        let mut done = self.compacted.subscribe();
        done.wait_for(|compacted| *compacted >= revision)
            .await
            .map_err(|_| StorageError::Invariant("state machine closed".to_string()))?;
        Ok(())
    }
}

/// Commits an apply batch's transaction (without an fsync) with the applied state.
fn commit_batch(txn: redb::WriteTransaction, state: &AppliedState) -> Result<()> {
    write_applied(&txn, state)?;
    txn.commit()?;
    Ok(())
}

/// What an applied batch leaves to do once it is answered (`StateMachine::apply_batch`): a
/// durable commit of the state database of its own, which takes tens of milliseconds at 30k
/// puts/s (it writes and syncs every page dirtied since the last) and holds the next batch
/// meanwhile. Done
/// after the answers, the batch's clients send their next requests and the log takes them
/// while the state database commits.
#[derive(Debug, Clone, Copy)]
#[must_use]
struct AfterAnswer {
    /// A durable commit is due (`durability.rs`); the log's running total read before the
    /// batch (`Store::commit_state_durable`).
    durable_from: Option<u64>,
}

/// Where the next compaction step starts in `kv_revs`, or None when none is pending. A new
/// compaction revision walks from the start: versions that survived the last one may be
/// superseded now.
fn compact_from(state: &AppliedState, progress: Option<CompactProgress>) -> Option<mvcc::RevKey> {
    match progress {
        _ if state.compact_revision == 0 => None,
        Some(p) if p.compact_revision == state.compact_revision => (!p.done).then_some(p.next),
        _ => Some((0, 0)),
    }
}

fn read_compact_progress(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<CompactProgress>> {
    match table.get(schema::SM_COMPACTED_TO)? {
        Some(bytes) => Ok(Some(decode("sm_meta", bytes.value())?)),
        None => Ok(None),
    }
}

/// `sm_meta`'s `applied`, from an open `sm_meta` table (default before the first apply).
fn applied_in(table: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<AppliedState> {
    match table.get(SM_APPLIED)? {
        Some(bytes) => decode("sm_meta", bytes.value()),
        None => Ok(AppliedState::default()),
    }
}

pub(crate) fn read_applied_write(txn: &redb::WriteTransaction) -> Result<AppliedState> {
    applied_in(&txn.open_table(SM_META)?)
}

pub(crate) fn write_applied(txn: &redb::WriteTransaction, state: &AppliedState) -> Result<()> {
    let mut table = txn.open_table(SM_META)?;
    table.insert(SM_APPLIED, aspen_core::codec::encode(state).as_slice())?;
    Ok(())
}

pub(crate) fn read_applied(txn: &redb::ReadTransaction) -> Result<AppliedState> {
    applied_in(&txn.open_table(SM_META)?)
}

/// A read transaction, its applied state, and its registration with the key index (which
/// keeps compaction from removing index entries the transaction may still read, and installs
/// from replacing the index under it: `key_index.rs`).
pub(crate) struct ReadView {
    pub txn: redb::ReadTransaction,
    pub state: AppliedState,
    index: std::sync::Arc<key_index::KeyIndex>,
    /// A registered view (`read_view`), or the stamp of an unregistered one
    /// (`read_view_unregistered`).
    registration: Registration,
}

enum Registration {
    View(#[allow(dead_code)] key_index::View),
    Stamp(key_index::Stamp),
}

impl ReadView {
    /// The key index as of this view's transaction.
    pub fn index(&self) -> key_index::IndexAt<'_> {
        key_index::IndexAt {
            index: &self.index,
            revision: self.state.revision,
        }
    }

    /// False if this view is unregistered and an install or a newer compaction has changed
    /// the index since it began: what it read from the index may not be its transaction's.
    pub fn index_still_matches(&self) -> bool {
        match &self.registration {
            Registration::View(_) => true,
            Registration::Stamp(stamp) => self
                .index
                .still_matches(*stamp, self.state.compact_revision),
        }
    }
}

/// Opens a [`ReadView`] of `db` (the store's state database).
pub(crate) fn read_view(store: &Store, db: &redb::Database) -> Result<ReadView> {
    let index = std::sync::Arc::clone(&store.shared.key_index);
    let mut view = index.open_view();
    let txn = store.begin_state_read(db)?;
    let state = read_applied(&txn)?;
    view.seen(state.compact_revision);
    Ok(ReadView {
        txn,
        state,
        index,
        registration: Registration::View(view),
    })
}

/// A [`ReadView`] that does not register: for a view that may be kept long (a deferred
/// snapshot's), which must not hold compaction or installs back. Check
/// [`ReadView::index_still_matches`] after reading.
pub(crate) fn read_view_unregistered(store: &Store, db: &redb::Database) -> Result<ReadView> {
    let index = std::sync::Arc::clone(&store.shared.key_index);
    let stamp = index.stamp();
    let txn = store.begin_state_read(db)?;
    let state = read_applied(&txn)?;
    Ok(ReadView {
        txn,
        state,
        index,
        registration: Registration::Stamp(stamp),
    })
}

/// Reads from the state machine's committed state, concurrently with applies.
#[derive(Clone, Debug)]
pub struct MvccReader {
    store: Store,
}

/// A read that the request itself made fail (compacted, future revision).
pub type ReadOutcome = std::result::Result<(RangeResult, u64), ApplyError>;

impl MvccReader {
    /// Serves a Range; on success also returns the store revision the read saw.
    pub fn range(&self, request: &RangeRequest) -> Result<ReadOutcome> {
        let db = self.store.state_db();
        let view = read_view(&self.store, &db)?;
        let state = &view.state;
        let at =
            match range::read_revision(request.revision, state.revision, state.compact_revision) {
                Ok(at) => at,
                Err(e) => return Ok(Err(e)),
            };
        let revs = view.txn.open_table(schema::KV_REVS)?;
        let result = range::range(&view.index(), &revs, request, at)?;
        Ok(Ok((result, state.revision)))
    }

    pub fn applied_state(&self) -> Result<AppliedState> {
        let db = self.store.state_db();
        let txn = self.store.begin_state_read(&db)?;
        read_applied(&txn)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> std::result::Result<(Option<LogId>, StoredMembership), io::Error> {
        let state = self.reader().applied_state()?;
        Ok((state.last_applied, state.membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> std::result::Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = std::result::Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        let mut batch: Vec<Entry> = Vec::new();
        let mut responders = Vec::new();
        loop {
            let next = entries.next().await;
            let done = next.is_none();
            if let Some(item) = next {
                let (entry, responder) = item?;
                batch.push(entry);
                responders.push(responder);
            }
            if !batch.is_empty() && (done || batch.len() >= APPLY_BATCH_ENTRIES_MAX) {
                let (responses, after) = self.apply_batch(&batch)?;
                assert_eq!(responses.len(), responders.len());
                for (responder, response) in responders.drain(..).zip(responses) {
                    if let Some(responder) = responder {
                        responder.send(response);
                    }
                }
                batch.clear();
                // After the answers: see `AfterAnswer`.
                self.after_answer(after)?;
            }
            if done {
                return Ok(());
            }
        }
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> std::result::Result<(), io::Error> {
        self.install(meta, &snapshot).map_err(|error| {
            self.store.note_failure(&error);
            error.into()
        })
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> std::result::Result<
        Option<openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>>,
        io::Error,
    > {
        let current = snapshot_io::current(&self.store).inspect_err(|error| {
            self.store.note_failure(error);
        })?;
        Ok(current.map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}

/// Records a snapshot point (`snapshot_io::record_point`): one durable commit, no copy of the
/// state. The data is written when a follower needs it (`get_current_snapshot`).
#[derive(Debug)]
pub struct SnapshotBuilder {
    store: Store,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(
        &mut self,
    ) -> std::result::Result<
        openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>,
        io::Error,
    > {
        let meta = snapshot_io::record_point(&self.store).inspect_err(|error| {
            self.store.note_failure(error);
        })?;
        let applied_index = meta.last_log_id.as_ref().map_or(0, |id| id.index);
        Ok(Snapshot {
            meta,
            snapshot: SnapshotData::unavailable(applied_index),
        })
    }
}

#[cfg(test)]
mod tests {
    use aspen_core::limits::{Limits, STATE_DURABLE_INTERVAL_MS};
    use aspen_core::type_config::alias::Entry;
    use aspen_core::{Command, PutRequest, TypeConfig};
    use openraft::EntryPayload;

    use crate::{StorageBackend, open_storage};

    fn puts(first_index: u64, count: u64) -> Vec<Entry> {
        (first_index..first_index + count)
            .map(|index| openraft::Entry {
                log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
                payload: EntryPayload::Normal(Command::Put(PutRequest {
                    key: format!("k{index}").into_bytes(),
                    value: vec![b'v'; 8],
                    ..Default::default()
                })),
            })
            .collect()
    }

    /// A batch the durable cadence made due is answered before its durable commit: the batch
    /// comes back with the commit still to do (`AfterAnswer`), committed without an fsync and
    /// not parked; the commit after it makes everything durable.
    #[test]
    fn a_due_durable_commit_waits_for_the_answers() {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = StorageBackend::Redb {
            dir: dir.path().to_path_buf(),
        };
        let (_log, sm) = open_storage(&backend, Limits::default()).expect("open");
        sm.apply_entries(&puts(1, 3)).expect("apply");
        std::thread::sleep(std::time::Duration::from_millis(
            STATE_DURABLE_INTERVAL_MS + 50,
        ));
        let syncs_before = sm.store().state_syncs();
        let (responses, after) = sm.apply_batch(&puts(4, 2)).expect("apply");
        assert_eq!(responses.len(), 2);
        assert!(after.durable_from.is_some(), "the cadence is due");
        assert!(!sm.store().state_batches_uncommitted(), "not parked");
        assert_eq!(sm.store().state_syncs(), syncs_before, "no fsync yet");
        assert!(sm.store().state_durable_applied_index() < 5);

        sm.after_answer(after).expect("durable commit");
        assert!(sm.store().state_syncs() > syncs_before);
        assert_eq!(sm.store().state_durable_applied_index(), 5);
        assert_eq!(sm.store().shared.key_index.len(), 5);
    }
}
