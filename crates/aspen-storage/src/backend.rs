//! Opening storage: two redb databases per node, the Raft log and the state machine, on files
//! in a directory or in memory.
//!
//! The two are durable on their own schedules. The log is durable once per group-commit batch
//! (`log_writer`), as one record of its journal (`journal.rs`); the log database itself takes
//! each batch without an fsync and is synced at the journal's checkpoints. The state database commits each apply batch without an
//! fsync and durably on a cadence (`durability`), so applies and log commits never wait for
//! each other's write lock, and a log commit writes only log pages. The rule that ties them:
//! the log is never purged past the applied index the state database has made durable, so a
//! crash can always re-apply from the log what the state database lost.
//!
//! [`StorageBackend`] picks where the bytes live; everything above it is the same code. The
//! [`Store`] handle is shared by the log store, the state machine and readers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use aspen_core::limits::{DB_IN_USE_REUSE_MS_MAX, DB_IN_USE_REUSE_PER_WALK, Limits};
use redb::{Database, ReadableTable};

use crate::disk::{DiskLow, DiskSpace, IoFailure, IoFailures};
use crate::durability::StateDurability;
use crate::error::{Result, StorageError};
use crate::journal::{Journal, JournalGauge, LogJournal};
use crate::log_store::LogStore;
use crate::schema;
use crate::snapshot::SnapshotStore;
use crate::stage_clock::StageClock;
use crate::state_machine::StateMachine;
use crate::tracked::{FileGauge, TrackedBackend};

/// redb's page cache for the state database, set explicitly rather than left to the default.
/// Since the key index moved to memory (format 3) the hot pages are few: the right edge of
/// `kv_revs`, where every version is appended, and the tables' roots. 64 MiB left puts, gets and
/// a compaction at 1M keys as fast as 256 MiB did, and one node's peak RSS after `bench/vs-etcd`'s
/// one-node step 230 MiB instead of 308-355 (`docs/performance.md`, session 26). A read of
/// history that misses it reads from the OS page cache.
pub const REDB_CACHE_BYTES_DEFAULT: usize = 64 * 1024 * 1024;
/// redb's page cache for the log database: the log is read back mostly while it is still
/// pending in memory, so a small cache suffices.
pub const REDB_LOG_CACHE_BYTES_DEFAULT: usize = 32 * 1024 * 1024;

/// File names inside a redb backend's directory.
pub const LOG_FILE_NAME: &str = "log.redb";
/// The log's journal (`journal.rs`): each durable log commit is a record here.
pub const LOG_JOURNAL_FILE_NAME: &str = "log.journal";
pub const STATE_FILE_NAME: &str = "state.redb";
pub const SNAPSHOT_DIR_NAME: &str = "snapshots";

/// Where a node keeps its Raft log and state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageBackend {
    /// A directory holding `log.redb`, `state.redb` and `snapshots/` (format 2,
    /// `docs/storage-format.md`). A format-1 directory (one `aspen.redb`) is migrated on open.
    Redb { dir: PathBuf },
    /// Everything in memory, in two redb databases as on disk; gone when the process ends.
    /// For tests and simulation.
    InMemory,
}

/// Which of a node's two databases a file is; recorded in each file's format table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Log,
    State,
}

impl Role {
    fn code(self) -> u64 {
        match self {
            Role::Log => schema::ROLE_LOG,
            Role::State => schema::ROLE_STATE,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Log => "log",
            Role::State => "state",
        }
    }
}

/// Shared handle to one node's databases. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    /// The Raft log, vote, committed index and purge point. Written by the log writer and
    /// the log store only.
    log_db: Database,
    /// The MVCC state machine and snapshot record. Write-locked only by `defragment`, which
    /// needs the database to itself.
    state_db: RwLock<Database>,
    log_file: Arc<FileGauge>,
    /// The log's journal (`journal.rs`), used by the log writer one round at a time.
    log_journal: Mutex<Journal>,
    /// Its records and checkpoints, readable without its lock.
    log_journal_gauge: Arc<JournalGauge>,
    /// The journal file's syncs.
    log_journal_file: Arc<FileGauge>,
    state_file: Arc<FileGauge>,
    /// What redb repaired when this store opened.
    repaired_on_open: RepairedOnOpen,
    /// What of the state database is durable, and when to make more of it so.
    pub(crate) durability: StateDurability,
    /// The last applied log index, set after each apply batch has committed or been parked
    /// (never before: a read transaction begun after it, through `begin_state_read`, finds the
    /// batch's writes), so a read can check the state machine holds its read index without a
    /// transaction of its own.
    applied_index: AtomicU64,
    /// The key index, all of it in memory (`state_machine/key_index.rs`).
    pub(crate) key_index: Arc<crate::state_machine::key_index::KeyIndex>,
    /// Its checkpoints (`state_machine/index_checkpoint.rs`).
    pub(crate) index_checkpoints: Arc<crate::state_machine::index_checkpoint::Checkpoints>,
    /// The applied state after the last apply batch (committed, or parked: `parked.rs`), so the
    /// next batch need not read and decode it again, and a commit of parked batches can write
    /// it. Taken by a batch, put back after its commit or park; emptied by an install or an
    /// import, which write it themselves (`StateMachine::apply_entries`).
    pub(crate) applied_state: Mutex<Option<crate::state_machine::AppliedState>>,
    /// The state database's writer role, and the apply path's transaction parked between
    /// batches (`parked.rs`). Every write and read of the state database goes through it
    /// ([`Store::begin_state_write`], [`Store::begin_state_read`]).
    pub(crate) writer: crate::parked::WriterSlot,
    pub(crate) backend: StorageBackend,
    pub(crate) snapshots: SnapshotStore,
    pub(crate) limits: Limits,
    /// Durations of durable log commits (each one fsync), in microseconds.
    pub(crate) fsync_latency: aspen_core::metrics::Histogram,
    /// When recent log indices were appended, made durable, committed and applied here.
    pub(crate) stage_clock: StageClock,
    /// The last `dbSizeInUse` measurement (a page walk), reused for a while.
    in_use: InUseGauge,
    /// Held by a compaction step from its plan to its removals, and by a snapshot install or
    /// an etcd import for their whole length, so that no install falls between a step's two
    /// transactions (`state_machine/compact.rs`).
    compaction_gate: std::sync::Mutex<()>,
    /// The first I/O failure of the databases or snapshot files.
    io_failures: Arc<IoFailures>,
    /// The data dir's free space against `--disk-reserve-bytes`.
    disk: DiskSpace,
}

/// The last measurement of the state database's bytes in use, and who is measuring.
#[derive(Debug, Default)]
struct InUseGauge {
    /// (bytes, when measured, until when it is reused); None before the first measurement.
    last: Mutex<Option<(u64, Instant, Duration)>>,
    /// True while one caller has claimed the next measurement.
    measuring: AtomicBool,
}

impl Shared {
    /// The log's running total of payload bytes made durable (`JournalGauge`), read before a
    /// durable state commit so the commit can say which of them it holds.
    pub(crate) fn log_durable_bytes(&self) -> u64 {
        self.log_journal_gauge.durable_bytes_total()
    }

    /// Bytes the store's files will take on the disk without any new write: log entries the
    /// log database and the state database have not written to their files yet (held in the
    /// journal, redb's write buffers, a parked transaction), each counted at
    /// `OWED_ALLOCATION_FACTOR` times its payload for redb's page rounding.
    pub(crate) fn owed_disk_bytes(&self) -> u64 {
        let log_total = self.log_durable_bytes();
        let log_owed = self.log_journal_gauge.owed_bytes();
        let state_owed = self.durability.owed_bytes(log_total);
        log_owed
            .saturating_add(state_owed)
            .saturating_mul(crate::disk::OWED_ALLOCATION_FACTOR)
    }

    /// A read transaction of the state database that sees every batch applied before the call:
    /// answered batches the apply path left uncommitted (`parked.rs`) are committed first.
    pub(crate) fn begin_state_read(&self, db: &Database) -> Result<redb::ReadTransaction> {
        use redb::ReadableDatabase;
        self.writer
            .commit_answered(|parked| self.commit_parked(parked))?;
        Ok(db.begin_read()?)
    }

    /// The state database's writer role and a write transaction of the caller's own (redb's
    /// default durability, `Immediate`), once any parked batches are committed (`parked.rs`).
    pub(crate) fn begin_state_write(&self, db: &Database) -> Result<crate::parked::StateWrite<'_>> {
        let mut claim = self.writer.claim()?;
        if let Some(parked) = claim.take_parked() {
            self.commit_claimed(&claim, parked)?;
        }
        let mut txn = db.begin_write()?;
        // A durable commit also records redb's allocator state (and commits in two phases),
        // so an open after a crash loads it instead of walking every page of the file to
        // rebuild it: 550 ms at 1M keys (`docs/performance.md`, session 26). A non-durable
        // commit (an apply batch's) ignores the setting.
        txn.set_quick_repair(true);
        Ok(crate::parked::StateWrite::new(txn, claim))
    }

    /// Commits `parked`, which `claim` took: no answered batch is left uncommitted after it,
    /// or, if the commit fails, they are lost and the slot turns failed.
    pub(crate) fn commit_claimed(
        &self,
        claim: &crate::parked::Claim<'_>,
        parked: crate::parked::Parked,
    ) -> Result<()> {
        match self.commit_parked(parked) {
            Ok(()) => {
                claim.committed();
                Ok(())
            }
            Err(error) => {
                claim.lost(format!("committing parked batches: {error}"));
                Err(error)
            }
        }
    }

    /// Commits a parked transaction (its durability as the apply path set it), with the applied
    /// state of its last batch.
    pub(crate) fn commit_parked(&self, parked: crate::parked::Parked) -> Result<()> {
        let state = self
            .applied_state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .ok_or_else(|| {
                StorageError::Invariant("parked batches without their applied state".into())
            })?;
        crate::state_machine::write_applied(&parked.txn, &state)?;
        parked.txn.commit()?;
        Ok(())
    }
}

impl Drop for Shared {
    /// At shutdown the state database is made durable, so a clean restart re-applies nothing.
    /// After a crash of the disk underneath (the simulator's), this fails and changes nothing.
    fn drop(&mut self) {
        let db = self
            .state_db
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match crate::durability::commit_durable(self, &db) {
            // A clean restart loads the index from this checkpoint and replays nothing.
            Ok((_, revision)) => {
                if let Err(error) = self.index_checkpoints.write_now(&self.key_index, revision) {
                    tracing::warn!(%error, "key index checkpoint not written at close");
                }
            }
            Err(error) => {
                tracing::debug!(%error, "state database not made durable at close");
            }
        }
    }
}

/// Opens (creating if missing) the log store and state machine for `backend`.
pub fn open_storage(backend: &StorageBackend, limits: Limits) -> Result<(LogStore, StateMachine)> {
    let store = Store::open(backend, limits)?;
    Ok((LogStore::new(store.clone()), StateMachine::new(store)?))
}

/// As [`open_storage`] with `StorageBackend::Redb { dir }`, but the databases' bytes go through
/// caller-built redb backends (normally wrapping `redb::backends::FileBackend`, or a simulated
/// disk): the log database's file, its journal's (`journal.rs`), and the state database's.
/// For benchmarks, simulation and fault injection: a backend that counts `sync_data` calls
/// measures fsyncs per commit. `dir` still names the databases in errors and holds the snapshot
/// directory.
pub fn open_storage_with_backends(
    dir: &Path,
    limits: Limits,
    log_backend: impl redb::StorageBackend,
    log_journal: LogJournal<impl redb::StorageBackend>,
    state_backend: impl redb::StorageBackend,
) -> Result<(LogStore, StateMachine)> {
    check_limits(&limits)?;
    let databases = Databases::open(
        (&dir.join(LOG_FILE_NAME), log_backend, log_journal),
        (&dir.join(STATE_FILE_NAME), state_backend),
    )?;
    let snapshots = SnapshotStore::open_dir(&dir.join(SNAPSHOT_DIR_NAME))?;
    let backend = StorageBackend::Redb {
        dir: dir.to_path_buf(),
    };
    // Caller-built backends (the simulator's disk) keep no checkpoint file beside them: the
    // index is rebuilt from `kv_revs` at each open.
    let store = Store::from_databases(databases, snapshots, backend, limits, None)?;
    Ok((LogStore::new(store.clone()), StateMachine::new(store)?))
}

struct Databases {
    log_db: Database,
    state_db: Database,
    log_file: Arc<FileGauge>,
    log_journal: Journal,
    log_journal_file: Arc<FileGauge>,
    state_file: Arc<FileGauge>,
    io_failures: Arc<IoFailures>,
    repaired: RepairedOnOpen,
}

/// Which of a store's databases redb had to repair when it opened them: walk every page to
/// rebuild its allocator state, because the last durable commit before a crash recorded none.
/// Every durable commit Aspen makes records it (`Shared::begin_state_write`, the journal's
/// checkpoints), so only a crash right after a defragment, or a file written by an older
/// build, leads here; each repair is logged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepairedOnOpen {
    pub log: bool,
    pub state: bool,
}

impl Databases {
    /// Opens the log and the state database on their backends (`path` names each in errors),
    /// and the log's journal (`journal.rs`), whose records are replayed into the log database.
    /// A page journal left by an older build's crash is replayed first (`page_journal.rs`).
    fn open(
        (log_path, log_backend, journal): (
            &Path,
            impl redb::StorageBackend,
            LogJournal<impl redb::StorageBackend>,
        ),
        (state_path, state_backend): (&Path, impl redb::StorageBackend),
    ) -> Result<Databases> {
        let io_failures = Arc::<IoFailures>::default();
        let journal_error = |source: std::io::Error| {
            if crate::disk::is_disk_full(&source) {
                StorageError::NoSpace {
                    path: log_path.to_path_buf(),
                    source,
                }
            } else {
                StorageError::Open {
                    path: log_path.to_path_buf(),
                    reason: format!("opening its journal ({LOG_JOURNAL_FILE_NAME}): {source}"),
                }
            }
        };
        let (journal_backend, journal_bytes) = journal.into_parts();
        crate::page_journal::replay_if_present(&log_backend, &journal_backend)
            .map_err(journal_error)?;
        let (log_db, log_file, log_repaired) = open_database(
            log_path,
            log_backend,
            REDB_LOG_CACHE_BYTES_DEFAULT,
            &io_failures,
        )?;
        // Before the journal writes into it: a foreign file is refused untouched.
        check_format(&log_db, log_path, Role::Log)?;
        let journal_name = log_path.with_file_name(LOG_JOURNAL_FILE_NAME);
        let (journal_file, log_journal_file) = TrackedBackend::new(
            journal_backend,
            Arc::clone(&io_failures),
            journal_name.display().to_string(),
        )
        .map_err(journal_error)?;
        let log_journal =
            Journal::open(Box::new(journal_file), journal_bytes, &log_db).map_err(|error| {
                match error.io_source() {
                    Some(source) => {
                        journal_error(std::io::Error::new(source.kind(), source.to_string()))
                    }
                    None => error,
                }
            })?;
        let (state_db, state_file, state_repaired) = open_database(
            state_path,
            state_backend,
            REDB_CACHE_BYTES_DEFAULT,
            &io_failures,
        )?;
        Ok(Databases {
            log_db,
            state_db,
            log_file,
            log_journal,
            log_journal_file,
            state_file,
            io_failures,
            repaired: RepairedOnOpen {
                log: log_repaired,
                state: state_repaired,
            },
        })
    }
}

impl Store {
    pub fn open(backend: &StorageBackend, limits: Limits) -> Result<Store> {
        check_limits(&limits)?;
        let (databases, snapshots) = match backend {
            StorageBackend::Redb { dir } => {
                create_dir(dir)?;
                crate::migrate::migrate_v1_if_present(dir)?;
                let log_path = dir.join(LOG_FILE_NAME);
                let journal_path = dir.join(LOG_JOURNAL_FILE_NAME);
                let state_path = dir.join(STATE_FILE_NAME);
                let databases = Databases::open(
                    (
                        &log_path,
                        file_backend(&log_path)?,
                        LogJournal::new(crate::direct_writes::DirectWrites::new(
                            file_backend(&journal_path)?,
                            &journal_path,
                        )),
                    ),
                    (&state_path, file_backend(&state_path)?),
                )?;
                let snapshots = SnapshotStore::open_dir(&dir.join(SNAPSHOT_DIR_NAME))?;
                (databases, snapshots)
            }
            StorageBackend::InMemory => {
                let memory = PathBuf::from("<memory>");
                let databases = Databases::open(
                    (
                        &memory,
                        redb::backends::InMemoryBackend::new(),
                        LogJournal::new(redb::backends::InMemoryBackend::new())
                            .with_bytes(crate::journal::JOURNAL_BYTES_IN_MEMORY),
                    ),
                    (&memory, redb::backends::InMemoryBackend::new()),
                )?;
                (databases, SnapshotStore::memory())
            }
        };
        let checkpoint_path = match backend {
            StorageBackend::Redb { dir } => {
                Some(crate::state_machine::index_checkpoint::path_in(dir))
            }
            StorageBackend::InMemory => None,
        };
        Store::from_databases(
            databases,
            snapshots,
            backend.clone(),
            limits,
            checkpoint_path,
        )
    }

    fn from_databases(
        databases: Databases,
        snapshots: SnapshotStore,
        backend: StorageBackend,
        limits: Limits,
        checkpoint_path: Option<PathBuf>,
    ) -> Result<Store> {
        let state_path = match &backend {
            StorageBackend::Redb { dir } => dir.join(STATE_FILE_NAME),
            StorageBackend::InMemory => PathBuf::from("<memory>"),
        };
        check_format(&databases.state_db, &state_path, Role::State)?;
        let durable_applied = crate::durability::read_applied_index(&databases.state_db)?;
        let opened = crate::state_machine::index_checkpoint::load_index(
            &databases.state_db,
            checkpoint_path.as_deref(),
        )?;
        let index_checkpoints = crate::state_machine::index_checkpoint::Checkpoints::new(
            checkpoint_path,
            opened.checkpoint_revision,
            opened.checkpoint_entries,
            limits.index_checkpoint_revisions,
        );
        let key_index = opened.index;
        let disk_dir = match &backend {
            StorageBackend::Redb { dir } => Some(dir.clone()),
            StorageBackend::InMemory => None,
        };
        let store = Store {
            shared: Arc::new(Shared {
                log_db: databases.log_db,
                state_db: RwLock::new(databases.state_db),
                log_file: databases.log_file,
                log_journal_gauge: databases.log_journal.gauge(),
                log_journal: Mutex::new(databases.log_journal),
                log_journal_file: databases.log_journal_file,
                state_file: databases.state_file,
                durability: StateDurability::new(durable_applied),
                applied_index: AtomicU64::new(durable_applied),
                key_index: Arc::new(key_index),
                index_checkpoints: Arc::new(index_checkpoints),
                applied_state: Mutex::new(None),
                writer: crate::parked::WriterSlot::default(),
                backend,
                snapshots,
                limits,
                fsync_latency: aspen_core::metrics::Histogram::default(),
                stage_clock: StageClock::default(),
                in_use: InUseGauge::default(),
                compaction_gate: std::sync::Mutex::new(()),
                io_failures: databases.io_failures,
                repaired_on_open: databases.repaired,
                disk: DiskSpace::new(disk_dir, limits.disk_reserve_bytes),
            }),
        };
        store
            .shared
            .snapshots
            .remove_unreferenced(&store.current_snapshot_file()?)?;
        Ok(store)
    }

    /// The last applied log index of the state database's last committed transaction.
    pub fn applied_index(&self) -> u64 {
        self.shared.applied_index.load(Ordering::Acquire)
    }

    /// Called after a state-database transaction that moved the applied index has committed
    /// or been parked (never before: a reader that sees `index` must find its writes, and
    /// `begin_state_read` commits parked ones first).
    pub(crate) fn record_applied(&self, index: u64) {
        self.shared.applied_index.store(index, Ordering::Release);
    }

    /// The log database. Only the log store and its writer write to it.
    pub(crate) fn log_db(&self) -> &Database {
        &self.shared.log_db
    }

    /// The state database, for one transaction. Never hold the guard across an `.await`.
    pub(crate) fn state_db(&self) -> RwLockReadGuard<'_, Database> {
        // A poisoned lock means a panic while holding it; the database itself is still
        // consistent (redb transactions are atomic), so reading through is sound.
        self.shared
            .state_db
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether apply batches that were answered are not committed to the state database yet
    /// (the apply path's parked transaction, `parked.rs`); the next read commits them. For
    /// tests and diagnostics.
    pub fn state_batches_uncommitted(&self) -> bool {
        self.shared.writer.uncommitted()
    }

    /// See [`Shared::begin_state_read`].
    pub(crate) fn begin_state_read(&self, db: &Database) -> Result<redb::ReadTransaction> {
        self.shared.begin_state_read(db)
    }

    /// See [`Shared::begin_state_write`].
    pub(crate) fn begin_state_write(&self, db: &Database) -> Result<crate::parked::StateWrite<'_>> {
        self.shared.begin_state_write(db)
    }

    pub fn backend(&self) -> &StorageBackend {
        &self.shared.backend
    }

    /// Which databases redb had to repair when this store opened ([`RepairedOnOpen`]).
    pub fn repaired_on_open(&self) -> RepairedOnOpen {
        self.shared.repaired_on_open
    }

    /// Latency of durable log commits: one fsync each.
    pub fn fsync_latency(&self) -> &aspen_core::metrics::Histogram {
        &self.shared.fsync_latency
    }

    /// When recent log indices reached each stage of a write, for the per-stage metrics.
    pub fn stage_clock(&self) -> &StageClock {
        &self.shared.stage_clock
    }

    pub fn limits(&self) -> Limits {
        self.shared.limits
    }

    /// Bytes the state database's file occupies, as etcd's "dbSize" (the bbolt file's size).
    /// Read from the file's tracked length: no transaction, no page walk.
    pub fn db_size_bytes(&self) -> u64 {
        self.shared.state_file.len_bytes()
    }

    /// Bytes the log database's file occupies (etcd's WAL, which etcd does not count in
    /// "dbSize" either).
    pub fn log_size_bytes(&self) -> u64 {
        self.shared.log_file.len_bytes()
    }

    /// Durable (fsynced) commits of the state database so far.
    pub fn state_syncs(&self) -> u64 {
        self.shared.state_file.syncs()
    }

    /// Bytes written to the state file since its last fsync.
    pub(crate) fn state_unsynced_bytes(&self) -> u64 {
        self.shared.state_file.unsynced_bytes()
    }

    /// What the log's journal did since the store was opened (`journal.rs`).
    pub fn log_journal_stats(&self) -> crate::journal::JournalStats {
        self.shared.log_journal_gauge.stats()
    }

    /// Syncs of the log so far: its journal's (one per durable round) and the log database's
    /// (one per checkpoint).
    pub fn log_syncs(&self) -> u64 {
        self.shared.log_file.syncs() + self.shared.log_journal_file.syncs()
    }

    /// Bytes written to the log database since its last sync.
    pub(crate) fn log_unsynced_bytes(&self) -> u64 {
        self.shared.log_file.unsynced_bytes()
    }

    /// The log's journal, for one round of the log writer.
    pub(crate) fn log_journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.shared
            .log_journal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The last log index whose effects the state database holds durably.
    pub fn state_durable_applied_index(&self) -> u64 {
        self.shared.durability.durable_applied_index()
    }

    /// etcd's `dbSizeInUse` as last measured, and whether the caller should measure it now
    /// (with [`Store::measure_db_size_in_use_bytes`], off the async workers): true for one
    /// caller at a time, once the last measurement is older than `DB_IN_USE_REUSE_PER_WALK`
    /// times the walk it took (at most `DB_IN_USE_REUSE_MS_MAX`): fresh on a small store, at
    /// most ~1 % of a core on a large one. None before the first measurement.
    pub fn db_size_in_use_last(&self) -> (Option<u64>, bool) {
        let gauge = &self.shared.in_use;
        let last = *gauge
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let stale = last.is_none_or(|(_, at, reuse)| at.elapsed() >= reuse);
        let claimed = stale
            && gauge
                .measuring
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        (last.map(|(bytes, _, _)| bytes), claimed)
    }

    /// Measures the bytes the state database's tables hold (etcd's `dbSizeInUse`) from a read
    /// transaction's table stats, and remembers the result for [`Store::db_size_in_use_last`].
    /// This walks every page of every table: its cost grows with the data (seconds on a
    /// multi-GiB store), so callers reuse the last measurement.
    pub fn measure_db_size_in_use_bytes(&self) -> Result<u64> {
        let gauge = &self.shared.in_use;
        let started = Instant::now();
        let measured = self.walk_db_size_in_use_bytes();
        if let Ok(bytes) = measured {
            let reuse = (started.elapsed() * DB_IN_USE_REUSE_PER_WALK)
                .min(Duration::from_millis(DB_IN_USE_REUSE_MS_MAX));
            *gauge
                .last
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) =
                Some((bytes, Instant::now(), reuse));
        }
        gauge.measuring.store(false, Ordering::Release);
        measured
    }

    fn walk_db_size_in_use_bytes(&self) -> Result<u64> {
        use redb::ReadableTableMetadata;
        let db = self.state_db();
        let txn = self.begin_state_read(&db)?;
        let mut bytes: u64 = 0;
        macro_rules! add_table {
            ($($table:expr),*) => {$(
                let stats = txn.open_table($table)?.stats()?;
                bytes += stats.stored_bytes() + stats.metadata_bytes();
            )*};
        }
        add_table!(
            schema::SM_META,
            schema::KV_REVS,
            schema::LEASES,
            schema::LEASE_KEYS,
            schema::AUTH_USERS,
            schema::AUTH_ROLES
        );
        Ok(bytes)
    }

    /// The first I/O failure of this store's files (a full disk, EIO): once there is one, the
    /// databases refuse every write until reopened, and Raft has stopped or is stopping.
    pub fn io_failure(&self) -> Option<IoFailure> {
        self.shared.io_failures.first()
    }

    /// Records a failure met outside the databases (a snapshot file).
    pub(crate) fn note_failure(&self, error: &StorageError) {
        if let Some(source) = error.io_source() {
            self.shared.io_failures.record("snapshot file", source);
        }
    }

    /// `Some` while the data dir's filesystem has less free space than the reserve
    /// (`--disk-reserve-bytes`) plus what the store's files already owe the disk (entries
    /// durable in the log's journal but not yet written into `log.redb` or `state.redb`);
    /// writes that grow the store are refused then. Free space is measured at most every
    /// `DISK_FREE_CHECK_INTERVAL_MS`.
    pub fn disk_low(&self) -> Option<DiskLow> {
        self.shared.disk.low(self.shared.owed_disk_bytes())
    }

    /// What the store's files will still write to the disk for entries already taken, at
    /// `OWED_ALLOCATION_FACTOR` times their payload (see `disk_low`): for `/metrics`.
    pub fn owed_disk_bytes(&self) -> u64 {
        self.shared.owed_disk_bytes()
    }

    /// True when the state database has grown past the configured quota. The node raises etcd's
    /// NOSPACE alarm through Raft when this turns true, so every replica refuses the same writes.
    pub fn quota_exceeded(&self) -> bool {
        self.db_size_bytes() > self.shared.limits.quota_backend_bytes
    }

    /// Makes everything the state machine has applied durable now (one fsync of the state
    /// database); returns the applied index that is now durable.
    pub fn make_state_durable(&self) -> Result<u64> {
        self.commit_state_durable(self.shared.log_durable_bytes())
    }

    /// A durable commit of the state database; `log_bytes_before` is the log's running total
    /// (`JournalGauge::durable_bytes_total`) read before the last batch it makes durable was
    /// applied: entries the log took after that are still owed to the state file. Starts a
    /// checkpoint of the key index in the background when one is due.
    pub(crate) fn commit_state_durable(&self, log_bytes_before: u64) -> Result<u64> {
        let (index, revision) = {
            let db = self.state_db();
            crate::durability::commit_state(&self.shared, &db, redb::Durability::Immediate)?
        };
        self.shared
            .durability
            .record_durable(index, log_bytes_before);
        let checkpoints = &self.shared.index_checkpoints;
        if checkpoints.due(revision, self.shared.key_index.len()) {
            checkpoints.write_in_background(&self.shared.key_index, revision);
        }
        Ok(index)
    }

    /// The revision of the key index's newest checkpoint (`u64::MAX` for a store without
    /// checkpoints): compaction removes no `kv_revs` record above it.
    pub(crate) fn index_checkpoint_revision(&self) -> u64 {
        self.shared.index_checkpoints.revision()
    }

    /// Makes the state durable and writes a checkpoint of the key index at its revision (the
    /// compactor, before it removes records above the last checkpoint).
    pub(crate) fn checkpoint_key_index_now(&self) -> Result<()> {
        let (index, revision) = {
            let db = self.state_db();
            crate::durability::commit_durable(&self.shared, &db)?
        };
        self.shared
            .durability
            .record_durable(index, self.shared.log_durable_bytes());
        self.shared
            .index_checkpoints
            .write_now(&self.shared.key_index, revision)
    }

    /// The compaction gate (see `Shared::compaction_gate`); nothing inside it panics while
    /// holding data that the lock guards, so a poisoned gate is taken as is.
    pub(crate) fn compaction_gate(&self) -> std::sync::MutexGuard<'_, ()> {
        self.shared
            .compaction_gate
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reclaims free space (etcd's defragment): redb's compaction of the state database, with
    /// it held exclusively. Returns the size in bytes afterwards.
    pub fn defragment(&self) -> Result<u64> {
        {
            let mut db = self
                .shared
                .state_db
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let log_bytes_before = self.shared.log_durable_bytes();
            // No claim is held while the lock is ours (claims are taken under `state_db()`), so
            // this commits any parked batches without waiting: compact() needs no write open.
            self.shared
                .writer
                .commit_answered(|parked| self.shared.commit_parked(parked))?;
            // compact() returns false when there was nothing more to do; loop a bounded number
            // of times because each pass can free pages for the next.
            const DEFRAGMENT_PASSES_MAX: u32 = 8;
            for _ in 0..DEFRAGMENT_PASSES_MAX {
                if !db.compact()? {
                    break;
                }
            }
            // compact() commits durably: everything applied is durable now.
            let index = crate::durability::read_applied_index(&db)?;
            self.shared
                .durability
                .record_durable(index, log_bytes_before);
        }
        Ok(self.db_size_bytes())
    }

    fn current_snapshot_file(&self) -> Result<Option<String>> {
        Ok(self
            .current_snapshot_record()?
            .and_then(|record| record.file_name))
    }

    /// The written snapshot's record (`sm_meta` `snapshot`), if there is one.
    pub(crate) fn current_snapshot_record(
        &self,
    ) -> Result<Option<crate::snapshot::SnapshotRecord>> {
        let db = self.state_db();
        let txn = self.begin_state_read(&db)?;
        let table = txn.open_table(schema::SM_META)?;
        crate::error::decode_found("sm_meta", table.get(schema::SM_SNAPSHOT)?)
    }
}

pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| StorageError::Open {
        path: dir.to_path_buf(),
        reason: format!("cannot create directory: {e}"),
    })
}

/// redb's file backend on `path`, created if missing.
pub(crate) fn file_backend(path: &Path) -> Result<redb::backends::FileBackend> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| StorageError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    redb::backends::FileBackend::new(file).map_err(|e| open_error(path, e))
}

fn open_database(
    path: &Path,
    backend: impl redb::StorageBackend,
    cache_bytes: usize,
    io_failures: &Arc<IoFailures>,
) -> Result<(Database, Arc<FileGauge>, bool)> {
    let file = path.display().to_string();
    let repairing = Arc::new(AtomicBool::new(false));
    let repair_seen = Arc::clone(&repairing);
    let repair_file = file.clone();
    let (tracked, gauge) =
        TrackedBackend::new(backend, Arc::clone(io_failures), file).map_err(|e| {
            StorageError::Open {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
    let db = redb::Builder::new()
        .set_cache_size(cache_bytes)
        .set_repair_callback(move |session| {
            if !repair_seen.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    file = %repair_file,
                    "not closed cleanly, and its last durable commit recorded no allocator \
                     state: redb is reading the whole file to rebuild it"
                );
            }
            tracing::debug!(file = %repair_file, progress = session.progress(), "repairing");
        })
        .create_with_backend(tracked)
        .map_err(|e| open_error(path, e))?;
    let repaired = repairing.load(Ordering::Relaxed);
    Ok((db, gauge, repaired))
}

pub(crate) fn open_error(path: &Path, error: redb::DatabaseError) -> StorageError {
    match error {
        redb::DatabaseError::DatabaseAlreadyOpen => StorageError::Locked {
            path: path.to_path_buf(),
        },
        redb::DatabaseError::Storage(redb::StorageError::Io(source))
            if crate::disk::is_disk_full(&source) =>
        {
            StorageError::NoSpace {
                path: path.to_path_buf(),
                source,
            }
        }
        other => StorageError::Open {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

fn check_limits(limits: &Limits) -> Result<()> {
    let problems = limits.validate();
    if !problems.is_empty() {
        return Err(StorageError::Invariant(problems.join("; ")));
    }
    Ok(())
}

/// A new database gets Aspen's format marker and its role; an existing one must carry both,
/// so a log file is never opened as a state file or the other way round.
fn check_format(db: &Database, path: &Path, role: Role) -> Result<()> {
    let mut txn = db.begin_write()?;
    // A durable commit at every open: it records the allocator state too, as the state
    // database's others do (`Shared::begin_state_write`), so a crash right after an open
    // still reopens without a repair walk.
    txn.set_quick_repair(true);
    let table_count = txn.list_tables()?.count();
    {
        let mut format = txn.open_table(schema::FORMAT)?;
        let found = format.get(schema::FORMAT_KEY)?.map(|v| v.value());
        match found {
            Some(schema::FORMAT_VERSION) => {}
            Some(schema::FORMAT_VERSION_INDEX_TABLE) => {
                // Format 2 to 3: the key index leaves the state database for memory (and a
                // checkpoint file); the log database is unchanged. One durable commit.
                tracing::info!(path = %path.display(), "upgrading storage format 2 to 3");
                format.insert(schema::FORMAT_KEY, schema::FORMAT_VERSION)?;
            }
            Some(other) => {
                return Err(StorageError::Foreign {
                    path: path.to_path_buf(),
                    reason: format!(
                        "format version {other}, this build reads {}",
                        schema::FORMAT_VERSION
                    ),
                });
            }
            None if table_count > 0 => {
                return Err(StorageError::Foreign {
                    path: path.to_path_buf(),
                    reason: "a redb database without Aspen's format marker".to_string(),
                });
            }
            None => {
                format.insert(schema::FORMAT_KEY, schema::FORMAT_VERSION)?;
                format.insert(schema::FORMAT_ROLE_KEY, role.code())?;
            }
        }
        let found_role = format.get(schema::FORMAT_ROLE_KEY)?.map(|v| v.value());
        if found_role != Some(role.code()) {
            return Err(StorageError::Foreign {
                path: path.to_path_buf(),
                reason: format!(
                    "expected Aspen's {} database, found role {found_role:?}",
                    role.name()
                ),
            });
        }
    }
    // Every table exists from the start, so readers never meet a missing one.
    match role {
        Role::Log => {
            txn.open_table(schema::RAFT_LOG)?;
            txn.open_table(schema::RAFT_META)?;
        }
        // The auth tables are absent from state databases written before auth existed:
        // created here, empty.
        Role::State => {
            crate::state_machine::tables::create_all(&txn)?;
            use redb::TableHandle;
            let old_index = schema::KV_INDEX.name().to_string();
            if txn.list_tables()?.any(|table| table.name() == old_index) {
                txn.delete_table(schema::KV_INDEX)?;
                txn.open_table(schema::SM_META)?
                    .remove(schema::SM_INDEX_FLUSHED)?;
            }
        }
    }
    txn.commit()?;
    Ok(())
}
