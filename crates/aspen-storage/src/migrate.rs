//! Storage format 1 to 3, on first open (through format 2's layout of files).
//!
//! Format 1 kept everything in one redb file, `aspen.redb`, with snapshots in
//! `aspen.redb.snapshots/`. Format 2 splits it: `log.redb` (Raft log, vote, committed, purge
//! point), `state.redb` (the state machine, its versions re-laid out by revision: `kv_revs` and
//! the key index apart, in format 3 in memory, instead of `kv_latest` and `kv_history`) and
//! `snapshots/`. The migration copies
//! the two log tables into a new log file and turns the old file into the state file:
//!
//! 1. if `aspen.redb` is still format 1: write `log.redb.tmp` with the log tables (durable
//!    commit), rename it to `log.redb`, fsync the directory;
//! 2. move `aspen.redb.snapshots/` to `snapshots/`;
//! 3. in `aspen.redb`, in one durable transaction: drop the log tables, rewrite the key-value
//!    versions in format 2's layout, mark it format 2, role state;
//! 4. rename `aspen.redb` to `state.redb`, fsync the directory.
//!
//! Until step 3 the old file is unchanged, and step 1 starts over from it; after step 3 the
//! log file is complete. So a crash at any point leaves a directory the next open finishes,
//! and nothing is lost.

use std::path::Path;

use redb::{Database, ReadableTable};

use crate::backend::{LOG_FILE_NAME, SNAPSHOT_DIR_NAME, STATE_FILE_NAME};
use crate::error::{Result, StorageError, decode};
use crate::schema;
use crate::state_machine::mvcc::write_record;
use crate::state_machine::records::StoredVersion;

/// Format 1's single database file and its snapshot directory.
pub const V1_FILE_NAME: &str = "aspen.redb";
pub const V1_SNAPSHOT_DIR_NAME: &str = "aspen.redb.snapshots";
const V1_FORMAT_VERSION: u64 = 1;
const LOG_TMP_FILE_NAME: &str = "log.redb.tmp";

/// Migrates a format-1 directory in place; does nothing to any other.
pub(crate) fn migrate_v1_if_present(dir: &Path) -> Result<()> {
    let v1_path = dir.join(V1_FILE_NAME);
    if !v1_path.exists() {
        return Ok(());
    }
    if dir.join(STATE_FILE_NAME).exists() {
        return Err(StorageError::Open {
            path: dir.to_path_buf(),
            reason: format!(
                "holds both {V1_FILE_NAME} (format 1) and {STATE_FILE_NAME} (format 2); \
                 move one of them away"
            ),
        });
    }
    tracing::info!(dir = %dir.display(), "migrating storage from format 1");
    let old = open_plain(&v1_path)?;
    let (version, role) = read_format(&old)?;
    match (version, role) {
        (Some(V1_FORMAT_VERSION), None) => {
            copy_log_tables(&old, dir)?;
            move_snapshot_dir(dir)?;
            turn_into_state_file(&old)?;
        }
        (
            Some(schema::FORMAT_VERSION_INDEX_TABLE | schema::FORMAT_VERSION),
            Some(schema::ROLE_STATE),
        ) => {
            // Step 3 was done before a crash; the log file is complete.
            move_snapshot_dir(dir)?;
        }
        other => {
            return Err(StorageError::Foreign {
                path: v1_path,
                reason: format!("unexpected format marker {other:?} in a format-1 file"),
            });
        }
    }
    drop(old);
    rename_synced(dir, &v1_path, &dir.join(STATE_FILE_NAME))?;
    tracing::info!(dir = %dir.display(), "storage migrated from format 1");
    Ok(())
}

fn open_plain(path: &Path) -> Result<Database> {
    redb::Builder::new()
        .create(path)
        .map_err(|e| crate::backend::open_error(path, e))
}

fn read_format(db: &Database) -> Result<(Option<u64>, Option<u64>)> {
    let txn = db.begin_write()?;
    let found = {
        let format = txn.open_table(schema::FORMAT)?;
        let version = format.get(schema::FORMAT_KEY)?.map(|v| v.value());
        let role = format.get(schema::FORMAT_ROLE_KEY)?.map(|v| v.value());
        (version, role)
    };
    txn.abort()?;
    Ok(found)
}

/// Step 1: the log tables into `log.redb`, via a temporary file renamed into place.
fn copy_log_tables(old: &Database, dir: &Path) -> Result<()> {
    let tmp_path = dir.join(LOG_TMP_FILE_NAME);
    match std::fs::remove_file(&tmp_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(&tmp_path, e)),
    }
    let log = open_plain(&tmp_path)?;
    let read = {
        use redb::ReadableDatabase;
        old.begin_read()?
    };
    let mut write = log.begin_write()?;
    write.set_durability(redb::Durability::Immediate)?;
    let mut copied_entries: u64 = 0;
    {
        let mut format = write.open_table(schema::FORMAT)?;
        format.insert(schema::FORMAT_KEY, schema::FORMAT_VERSION)?;
        format.insert(schema::FORMAT_ROLE_KEY, schema::ROLE_LOG)?;
        let mut log_table = write.open_table(schema::RAFT_LOG)?;
        for item in read.open_table(schema::RAFT_LOG)?.iter()? {
            let (index, bytes) = item?;
            log_table.insert(index.value(), bytes.value())?;
            copied_entries += 1;
        }
        let mut meta = write.open_table(schema::RAFT_META)?;
        for item in read.open_table(schema::RAFT_META)?.iter()? {
            let (key, bytes) = item?;
            meta.insert(key.value(), bytes.value())?;
        }
    }
    write.commit()?;
    drop(log);
    rename_synced(dir, &tmp_path, &dir.join(LOG_FILE_NAME))?;
    tracing::info!(copied_entries, "migration: log tables copied");
    Ok(())
}

/// Step 2: `aspen.redb.snapshots/` becomes `snapshots/` (snapshot records name files only).
fn move_snapshot_dir(dir: &Path) -> Result<()> {
    let old = dir.join(V1_SNAPSHOT_DIR_NAME);
    if !old.exists() {
        return Ok(());
    }
    let new = dir.join(SNAPSHOT_DIR_NAME);
    if new.exists() {
        // Only an empty one can be there (nothing writes snapshots before the migration ends).
        std::fs::remove_dir(&new).map_err(|e| io_error(&new, e))?;
    }
    rename_synced(dir, &old, &new)
}

/// Format 1's key-value tables: the current version of each live key, and superseded versions
/// and tombstones by (key, revision). Later formats keep every version once in `kv_revs`, by
/// revision; format 3's key index is rebuilt from it in memory at the first open.
const V1_KV_LATEST: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("kv_latest");
const V1_KV_HISTORY: redb::TableDefinition<(&[u8], u64), &[u8]> =
    redb::TableDefinition::new("kv_history");

/// Step 3: the old file keeps the state machine tables only, in format 2's layout, and says so.
fn turn_into_state_file(old: &Database) -> Result<()> {
    let mut txn = old.begin_write()?;
    txn.set_durability(redb::Durability::Immediate)?;
    txn.delete_table(schema::RAFT_LOG)?;
    txn.delete_table(schema::RAFT_META)?;
    let mut converted: u64 = 0;
    {
        let mut revs = txn.open_table(schema::KV_REVS)?;
        let mut buffer = Vec::with_capacity(512);
        let history = txn.open_table(V1_KV_HISTORY)?;
        for item in history.iter()? {
            let (table_key, bytes) = item?;
            let (key, _) = table_key.value();
            let version: StoredVersion = decode("kv_history", bytes.value())?;
            // The key index is rebuilt from `kv_revs` at the first open.
            let inserted = write_record(&mut revs, key, &version, &mut buffer)?;
            assert!(inserted, "two format-1 versions at one revision position");
            converted += 1;
        }
        let latest = txn.open_table(V1_KV_LATEST)?;
        for item in latest.iter()? {
            let (key, bytes) = item?;
            let version: StoredVersion = decode("kv_latest", bytes.value())?;
            // The key index is rebuilt from `kv_revs` at the first open.
            let inserted = write_record(&mut revs, key.value(), &version, &mut buffer)?;
            assert!(inserted, "two format-1 versions at one revision position");
            converted += 1;
        }
    }
    txn.delete_table(V1_KV_HISTORY)?;
    txn.delete_table(V1_KV_LATEST)?;
    tracing::info!(
        converted,
        "migration: key-value versions re-laid out by revision"
    );
    {
        let mut format = txn.open_table(schema::FORMAT)?;
        format.insert(schema::FORMAT_KEY, schema::FORMAT_VERSION)?;
        format.insert(schema::FORMAT_ROLE_KEY, schema::ROLE_STATE)?;
    }
    txn.commit()?;
    Ok(())
}

fn rename_synced(dir: &Path, from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| io_error(from, e))?;
    let handle = std::fs::File::open(dir).map_err(|e| io_error(dir, e))?;
    handle.sync_all().map_err(|e| io_error(dir, e))?;
    Ok(())
}

fn io_error(path: &Path, error: std::io::Error) -> StorageError {
    StorageError::Open {
        path: path.to_path_buf(),
        reason: format!("migrating from format 1: {error}"),
    }
}
