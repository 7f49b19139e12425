//! Opening storage: one redb database per node, on a file or in memory.
//!
//! [`StorageBackend`] picks where the bytes live; everything above it is the same code. The
//! [`Store`] handle is shared by the log store, the state machine and readers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use aspen_core::limits::Limits;
use redb::{Database, ReadableDatabase, ReadableTable};

use crate::error::{Result, StorageError};
use crate::log_store::LogStore;
use crate::schema;
use crate::snapshot::SnapshotStore;
use crate::state_machine::StateMachine;

/// redb's page cache, set explicitly rather than left to the library default.
pub const REDB_CACHE_BYTES_DEFAULT: usize = 256 * 1024 * 1024;

/// Where a node keeps its Raft log and state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageBackend {
    /// One redb file; snapshots go in a `<file>.snapshots` directory beside it.
    Redb { path: PathBuf },
    /// Everything in memory; gone when the process ends. For tests and simulation.
    InMemory,
}

/// Shared handle to one node's database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    /// Write-locked only by `defragment`, which needs the database to itself.
    db: RwLock<Database>,
    pub(crate) backend: StorageBackend,
    pub(crate) snapshots: SnapshotStore,
    pub(crate) limits: Limits,
    /// Durations of durable log commits (each one fsync), in microseconds.
    pub(crate) fsync_latency: aspen_core::metrics::Histogram,
}

/// Opens (creating if missing) the log store and state machine for `backend`.
pub fn open_storage(backend: &StorageBackend, limits: Limits) -> Result<(LogStore, StateMachine)> {
    let store = Store::open(backend, limits)?;
    Ok((LogStore::new(store.clone()), StateMachine::new(store)?))
}

/// As [`open_storage`] with `StorageBackend::Redb { path }`, but the database's bytes go through
/// `file_backend`, a caller-built redb backend over the file at `path` (normally wrapping
/// `redb::backends::FileBackend`). For benchmarks and fault injection only: a backend that
/// counts `sync_data` calls measures fsyncs per commit. `path` still names the database in
/// errors and places the snapshot directory beside it.
pub fn open_storage_with_file_backend(
    path: &Path,
    limits: Limits,
    file_backend: impl redb::StorageBackend,
) -> Result<(LogStore, StateMachine)> {
    let store = Store::open_with_file_backend(path, limits, file_backend)?;
    Ok((LogStore::new(store.clone()), StateMachine::new(store)?))
}

impl Store {
    pub fn open(backend: &StorageBackend, limits: Limits) -> Result<Store> {
        check_limits(&limits)?;
        let (db, snapshots) = match backend {
            StorageBackend::Redb { path } => (open_file(path)?, SnapshotStore::open_dir(path)?),
            StorageBackend::InMemory => {
                let db = redb::Builder::new()
                    .set_cache_size(REDB_CACHE_BYTES_DEFAULT)
                    .create_with_backend(redb::backends::InMemoryBackend::new())?;
                (db, SnapshotStore::memory())
            }
        };
        Store::from_database(db, snapshots, backend.clone(), limits)
    }

    /// See [`open_storage_with_file_backend`].
    pub fn open_with_file_backend(
        path: &Path,
        limits: Limits,
        file_backend: impl redb::StorageBackend,
    ) -> Result<Store> {
        check_limits(&limits)?;
        let db = redb::Builder::new()
            .set_cache_size(REDB_CACHE_BYTES_DEFAULT)
            .create_with_backend(file_backend)
            .map_err(|e| open_error(path, e))?;
        let snapshots = SnapshotStore::open_dir(path)?;
        let backend = StorageBackend::Redb {
            path: path.to_path_buf(),
        };
        Store::from_database(db, snapshots, backend, limits)
    }

    fn from_database(
        db: Database,
        snapshots: SnapshotStore,
        backend: StorageBackend,
        limits: Limits,
    ) -> Result<Store> {
        let path = match &backend {
            StorageBackend::Redb { path } => path.clone(),
            StorageBackend::InMemory => PathBuf::from("<memory>"),
        };
        check_format(&db, &path)?;
        let store = Store {
            shared: Arc::new(Shared {
                db: RwLock::new(db),
                backend,
                snapshots,
                limits,
                fsync_latency: aspen_core::metrics::Histogram::default(),
            }),
        };
        store
            .shared
            .snapshots
            .remove_unreferenced(&store.current_snapshot_file()?)?;
        Ok(store)
    }

    /// The database, for one transaction. Never hold the guard across an `.await`.
    pub(crate) fn db(&self) -> RwLockReadGuard<'_, Database> {
        // A poisoned lock means a panic while holding it; the database itself is still
        // consistent (redb transactions are atomic), so reading through is sound.
        self.shared
            .db
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn backend(&self) -> &StorageBackend {
        &self.shared.backend
    }

    /// Latency of durable log commits: one fsync each.
    pub fn fsync_latency(&self) -> &aspen_core::metrics::Histogram {
        &self.shared.fsync_latency
    }

    pub fn limits(&self) -> Limits {
        self.shared.limits
    }

    /// Bytes the database occupies: allocated pages, as etcd's "dbSize".
    pub fn db_size_bytes(&self) -> Result<u64> {
        let txn = self.db().begin_write()?;
        let stats = txn.stats()?;
        txn.abort()?;
        Ok(stats.allocated_pages() * stats.page_size() as u64)
    }

    /// Bytes holding live data, as etcd's "dbSizeInUse".
    pub fn db_size_in_use_bytes(&self) -> Result<u64> {
        let txn = self.db().begin_write()?;
        let stats = txn.stats()?;
        txn.abort()?;
        Ok(stats.stored_bytes() + stats.metadata_bytes())
    }

    /// True when the database has grown past the configured quota. The node raises etcd's
    /// NOSPACE alarm through Raft when this turns true, so every replica refuses the same writes.
    pub fn quota_exceeded(&self) -> Result<bool> {
        Ok(self.db_size_bytes()? > self.shared.limits.quota_backend_bytes)
    }

    /// Reclaims free space (etcd's defragment): redb's compaction, with the database held
    /// exclusively. Returns the size in bytes afterwards.
    pub fn defragment(&self) -> Result<u64> {
        {
            let mut db = self
                .shared
                .db
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // compact() returns false when there was nothing more to do; loop a bounded number
            // of times because each pass can free pages for the next.
            const DEFRAGMENT_PASSES_MAX: u32 = 8;
            for _ in 0..DEFRAGMENT_PASSES_MAX {
                if !db.compact()? {
                    break;
                }
            }
        }
        self.db_size_bytes()
    }

    fn current_snapshot_file(&self) -> Result<Option<String>> {
        let db = self.db();
        let txn = db.begin_read()?;
        let table = match txn.open_table(schema::SM_META) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(bytes) = table.get(schema::SM_SNAPSHOT)? else {
            return Ok(None);
        };
        let record: crate::snapshot::SnapshotRecord =
            crate::error::decode("sm_meta", bytes.value())?;
        Ok(record.file_name)
    }
}

fn open_file(path: &Path) -> Result<Database> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| StorageError::Open {
            path: path.to_path_buf(),
            reason: format!("cannot create directory {}: {e}", parent.display()),
        })?;
    }
    let opened = redb::Builder::new()
        .set_cache_size(REDB_CACHE_BYTES_DEFAULT)
        .create(path);
    opened.map_err(|e| open_error(path, e))
}

fn open_error(path: &Path, error: redb::DatabaseError) -> StorageError {
    match error {
        redb::DatabaseError::DatabaseAlreadyOpen => StorageError::Locked {
            path: path.to_path_buf(),
        },
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

/// A new database gets Aspen's format marker; an existing one must carry it.
fn check_format(db: &Database, path: &Path) -> Result<()> {
    let txn = db.begin_write()?;
    let table_count = txn.list_tables()?.count();
    {
        let mut format = txn.open_table(schema::FORMAT)?;
        let found = format.get(schema::FORMAT_KEY)?.map(|v| v.value());
        match found {
            Some(schema::FORMAT_VERSION) => {}
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
            }
        }
    }
    // Every table exists from the start, so readers never meet a missing one.
    txn.open_table(schema::RAFT_LOG)?;
    txn.open_table(schema::RAFT_META)?;
    txn.open_table(schema::SM_META)?;
    txn.open_table(schema::KV_LATEST)?;
    txn.open_table(schema::KV_HISTORY)?;
    txn.open_table(schema::LEASES)?;
    txn.open_table(schema::LEASE_KEYS)?;
    txn.commit()?;
    Ok(())
}
