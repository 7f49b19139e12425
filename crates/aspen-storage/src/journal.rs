//! The log's journal (`log.journal`): a durable log commit is one record appended to a
//! preallocated file and one `fdatasync`. The log database (`log.redb`) takes the same
//! operations right after, in a transaction that does not sync, and is synced only at
//! checkpoints.
//!
//! Why: a durable redb commit of even a one-entry append writes about eight pages (leaf,
//! branches, table tree, system tables, header) and runs redb's commit machinery (checksums,
//! the freed-page bookkeeping) before its sync. A lone put measured that at 287 µs against a
//! 115-123 µs `fdatasync` (`docs/performance.md`, session 10). Here the sync waits for one
//! sequential write of the operations themselves, and the redb commit runs after the round's
//! callbacks have fired, off the put's path.
//!
//! **A round.** The log writer (`log_writer.rs`) puts one round's operations into a [`Record`]
//! in the order openraft issued them: appended entries (encoded as `raft_log` stores them), a
//! truncation, a purge, a vote, and the newest committed index. [`Journal::commit`] appends it
//! and syncs. Then the round's callbacks fire, and [`apply_record`] applies the same payload to
//! `log.redb`: what the database takes is what the journal made durable. Until then the entries
//! stay in the writer's pending set, readable.
//!
//! **Generations.** `log.redb` keeps, in `raft_meta`, the generation of the records it may lack
//! (`journal_generation`). A **checkpoint** is one durable transaction of `log.redb` that also
//! sets a new generation; the journal then writes that generation's records from offset 0. So
//! no record older than `log.redb`'s durable state is ever replayed over it, and there is no
//! window between the sync and the switch: they are one commit. A checkpoint runs when a record
//! would not fit in what is left of the journal, when `log.redb` holds
//! [`LOG_DB_UNSYNCED_BYTES_MAX`] bytes written since its last sync, after a replay, and at close.
//! A round too large for one record ([`RECORD_PAYLOAD_BYTES_MAX`], or a quarter of the journal)
//! is committed straight into `log.redb` as a checkpoint.
//!
//! **Replay.** On open, the records of `log.redb`'s generation are read from offset 0 in
//! sequence (1, 2, …) up to the first torn, foreign or out-of-sequence one, applied to
//! `log.redb` in order, and checkpointed. redb's own recovery leaves `log.redb` at its last
//! durable commit, which is the last checkpoint, so the records start exactly where it ends.
//!
//! Record layout (little-endian), each starting on a [`BLOCK_BYTES`] boundary so that a torn
//! write never reaches an earlier record's block: `magic u32, crc32 u32, generation u64,
//! sequence u64, payload_bytes u32, ops u32`, then per op `kind u8, index u64, bytes u32, data`.
//! The crc covers everything after itself up to the payload's end. The ops:
//!
//! | kind | index | data |
//! |---|---|---|
//! | 1 append | the entry's index | the entry, as `raft_log` stores it |
//! | 2 truncate | the first index removed (and every one after it) | none |
//! | 3 purge | the last index removed (and every one before it) | `Option<LogId>`, the purge point |
//! | 4 vote | 0 | `Vote` |
//! | 5 committed | 0 | `Option<LogId>` |

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aspen_core::codec;
use aspen_core::convert::usize_from;
use aspen_core::type_config::alias::{Entry, LogId, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, StorageBackend};

use crate::error::{Result, StorageError};
use crate::schema::{
    META_COMMITTED, META_JOURNAL_GENERATION, META_LAST_PURGED, META_VOTE, RAFT_LOG, RAFT_META,
};

/// The journal file's length by default. A record that does not fit in what is left makes a
/// checkpoint. (The simulator uses a far smaller one, so that its runs checkpoint often.)
pub const JOURNAL_BYTES: u64 = 8 * 1024 * 1024;
/// The journal of the in-memory backend: nothing to make sequential there, so it only keeps
/// the same code running (and checkpointing often) without 8 MiB of memory per node.
pub const JOURNAL_BYTES_IN_MEMORY: u64 = 256 * 1024;
/// The smallest journal [`LogJournal::with_bytes`] accepts.
pub const JOURNAL_BYTES_MIN: u64 = 16 * BLOCK_BYTES;
/// Records start on block boundaries, so a torn write never reaches an earlier record's block.
pub const BLOCK_BYTES: u64 = 4096;
/// A round whose payload is larger than this (or than a quarter of the journal) is committed
/// straight into `log.redb` instead, as a checkpoint.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Bytes `log.redb` may hold written since its last sync (its non-durable commits) before the
/// next round checkpoints. redb reuses the pages a transaction frees only after a durable
/// commit, so this bounds how far the file grows between checkpoints, and with it how much a
/// replay after a crash must write (a member on a nearly full disk needs that room; the server's
/// `disk_full` test found 64 MiB too much for a 40 MiB filesystem).
pub const LOG_DB_UNSYNCED_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Zeroes written at a time while the journal file is first filled.
const FILL_CHUNK_BYTES: usize = 1024 * 1024;

/// "APNL" little-endian: Aspen's journal of log operations. (The page journal before it used
/// "APNJ", `page_journal.rs`.)
const RECORD_MAGIC: u32 = 0x4c4e_5041;
pub(crate) const RECORD_HEADER_BYTES: usize = 32;
const OP_HEADER_BYTES: usize = 1 + 8 + 4;
const OP_APPEND: u8 = 1;
const OP_TRUNCATE: u8 = 2;
const OP_PURGE: u8 = 3;
const OP_VOTE: u8 = 4;
const OP_COMMITTED: u8 = 5;

const _: () = assert!(JOURNAL_BYTES.is_multiple_of(BLOCK_BYTES));
const _: () = assert!((RECORD_PAYLOAD_BYTES_MAX as u64) < JOURNAL_BYTES);
const _: () = assert!(RECORD_HEADER_BYTES as u64 <= BLOCK_BYTES);
const _: () = assert!(crate::page_journal::PAGE_RECORD_MAGIC != RECORD_MAGIC);

/// The journal's backend and its length, as a caller hands them to the store.
#[derive(Debug)]
pub struct LogJournal<J: StorageBackend> {
    backend: J,
    bytes: u64,
}

impl<J: StorageBackend> LogJournal<J> {
    /// A journal of [`JOURNAL_BYTES`] on `backend`.
    pub fn new(backend: J) -> LogJournal<J> {
        LogJournal {
            backend,
            bytes: JOURNAL_BYTES,
        }
    }

    /// `bytes` (a multiple of [`BLOCK_BYTES`], at least [`JOURNAL_BYTES_MIN`]) instead.
    pub fn with_bytes(self, bytes: u64) -> LogJournal<J> {
        assert!(bytes >= JOURNAL_BYTES_MIN, "journal of {bytes} bytes");
        assert!(
            bytes.is_multiple_of(BLOCK_BYTES),
            "journal of {bytes} bytes"
        );
        LogJournal { bytes, ..self }
    }

    pub(crate) fn into_parts(self) -> (J, u64) {
        (self.backend, self.bytes)
    }
}

/// The journal's counters, shared with the store for `/metrics`.
#[derive(Debug, Default)]
pub struct JournalGauge {
    replayed_records: AtomicU64,
    records: AtomicU64,
    checkpoints: AtomicU64,
    /// Payload bytes made durable since the journal was opened: journaled records, and
    /// records too large for one that went straight into `log.redb`.
    durable_bytes_total: AtomicU64,
    /// `durable_bytes_total` at the last checkpoint: everything up to it is written into
    /// `log.redb`; what is past it is still owed to that file (see [`Self::owed_bytes`]).
    checkpointed_bytes_total: AtomicU64,
}

impl JournalGauge {
    /// Payload bytes made durable since the journal was opened (a running total).
    pub fn durable_bytes_total(&self) -> u64 {
        self.durable_bytes_total.load(Ordering::Acquire)
    }

    /// Payload bytes of records `log.redb` has not written to its file yet: they are in the
    /// journal, or in the database's write buffer (applied by non-durable commits), until the
    /// next checkpoint writes them. Space on the disk they will take.
    pub fn owed_bytes(&self) -> u64 {
        let checkpointed = self.checkpointed_bytes_total.load(Ordering::Acquire);
        self.durable_bytes_total().saturating_sub(checkpointed)
    }

    pub fn stats(&self) -> JournalStats {
        JournalStats {
            replayed_records: self.replayed_records.load(Ordering::Acquire),
            records: self.records.load(Ordering::Acquire),
            checkpoints: self.checkpoints.load(Ordering::Acquire),
        }
    }
}

/// What the journal has done since it was opened.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JournalStats {
    /// Records applied to `log.redb` when it was opened.
    pub replayed_records: u64,
    /// Durable log commits written as one record.
    pub records: u64,
    /// Durable commits of `log.redb` itself (each starts a new generation).
    pub checkpoints: u64,
}

/// One writer round's operations, encoded as a record's payload, in the order they were added.
#[derive(Debug, Default)]
pub(crate) struct Record {
    payload: Vec<u8>,
    ops: u32,
    /// Where the last committed op's data is in `payload`.
    committed: Option<(usize, usize)>,
    appended_entries: u64,
}

impl Record {
    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }

    pub fn append(&mut self, entry: &Entry) {
        let data_start = self.start_op(OP_APPEND, entry.log_id.index);
        codec::encode_into(entry, &mut self.payload);
        self.finish_op(data_start);
        self.appended_entries += 1;
    }

    /// Removes every entry at `from` and after.
    pub fn truncate(&mut self, from: u64) {
        let data_start = self.start_op(OP_TRUNCATE, from);
        self.finish_op(data_start);
    }

    /// Removes every entry up to `upto` and records it as the purge point.
    pub fn purge(&mut self, upto: &LogId) {
        let data_start = self.start_op(OP_PURGE, upto.index);
        codec::encode_into(&Some(*upto), &mut self.payload);
        self.finish_op(data_start);
    }

    pub fn vote(&mut self, vote: &Vote) {
        let data_start = self.start_op(OP_VOTE, 0);
        codec::encode_into(vote, &mut self.payload);
        self.finish_op(data_start);
    }

    pub fn committed(&mut self, committed: &Option<LogId>) {
        let data_start = self.start_op(OP_COMMITTED, 0);
        codec::encode_into(committed, &mut self.payload);
        let bytes = self.finish_op(data_start);
        self.committed = Some((data_start, data_start + bytes));
    }

    /// The encoded committed index of the record's last committed op, if it has one.
    pub fn committed_bytes(&self) -> Option<&[u8]> {
        self.committed.map(|(start, end)| &self.payload[start..end])
    }

    /// The payload bytes of a record holding `entries` appends of `entries_bytes` encoded bytes
    /// in all, and a committed index: what [`Journal::commits_without_checkpoint`] is asked.
    pub fn payload_bytes_for(entries: usize, entries_bytes: usize) -> usize {
        /// A committed index's encoding (an optional log id) is well under this.
        const COMMITTED_BYTES_MAX: usize = 64;
        entries_bytes
            .saturating_add(entries.saturating_mul(OP_HEADER_BYTES))
            .saturating_add(OP_HEADER_BYTES + COMMITTED_BYTES_MAX)
    }

    /// Entries appended.
    pub fn appended_entries(&self) -> u64 {
        self.appended_entries
    }

    fn start_op(&mut self, kind: u8, index: u64) -> usize {
        self.payload.push(kind);
        self.payload.extend_from_slice(&index.to_le_bytes());
        self.payload.extend_from_slice(&[0; 4]); // the data's length, set by finish_op
        self.payload.len()
    }

    fn finish_op(&mut self, data_start: usize) -> usize {
        let bytes = self.payload.len() - data_start;
        // An op's data is one entry, vote or log id: far below 4 GiB (entries are bounded by
        // the request and peer message limits).
        assert!(
            bytes <= u32::MAX as usize,
            "a log op's data of {bytes} bytes"
        );
        let bytes_u32 = u32::try_from(bytes).unwrap_or(u32::MAX);
        self.payload[data_start - 4..data_start].copy_from_slice(&bytes_u32.to_le_bytes());
        self.ops += 1;
        bytes
    }

    fn decode(&self) -> Vec<LogOp<'_>> {
        let decoded = decode_ops(&self.payload, self.ops);
        assert!(
            decoded.is_some(),
            "a record this process encoded does not decode"
        );
        decoded.unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogOp<'a> {
    Append { index: u64, entry: &'a [u8] },
    Truncate { from: u64 },
    Purge { upto: u64, purged: &'a [u8] },
    Vote(&'a [u8]),
    Committed(&'a [u8]),
}

/// The payload's ops, or None if it does not hold exactly `ops` well-formed ones.
fn decode_ops(payload: &[u8], ops: u32) -> Option<Vec<LogOp<'_>>> {
    let mut decoded = Vec::with_capacity(usize::try_from(ops).unwrap_or(0).min(4096));
    let mut rest = payload;
    for _ in 0..ops {
        let (header, tail) = rest.split_at_checked(OP_HEADER_BYTES)?;
        let kind = header[0];
        let index = u64::from_le_bytes(header[1..9].try_into().ok()?);
        let bytes = u32::from_le_bytes(header[9..13].try_into().ok()?);
        let (data, tail) = tail.split_at_checked(usize::try_from(bytes).ok()?)?;
        rest = tail;
        decoded.push(match kind {
            OP_APPEND => LogOp::Append { index, entry: data },
            OP_TRUNCATE if data.is_empty() => LogOp::Truncate { from: index },
            OP_PURGE => LogOp::Purge {
                upto: index,
                purged: data,
            },
            OP_VOTE => LogOp::Vote(data),
            OP_COMMITTED => LogOp::Committed(data),
            _ => return None,
        });
    }
    rest.is_empty().then_some(decoded)
}

/// Applies `ops` to `txn` in order. Returns the last committed op's data: the committed index is
/// written into `raft_meta` by checkpoints only (every record carries the newest one).
fn apply_ops<'a>(txn: &redb::WriteTransaction, ops: &[LogOp<'a>]) -> Result<Option<&'a [u8]>> {
    let mut committed = None;
    let mut log = None;
    let mut meta = None;
    // The index the next append must have, once known (None: an empty log, anything goes).
    let mut expected: Option<Option<u64>> = None;
    for op in ops {
        match *op {
            LogOp::Append { index, entry } => {
                let table = match &mut log {
                    Some(table) => table,
                    None => log.insert(txn.open_table(RAFT_LOG)?),
                };
                let next = match expected {
                    Some(next) => next,
                    None => table.last()?.map(|(last, _)| last.value() + 1),
                };
                if let Some(next) = next {
                    assert_eq!(index, next, "append would leave a hole in the log");
                }
                table.insert(index, entry)?;
                expected = Some(Some(index + 1));
            }
            LogOp::Truncate { from } => {
                let table = match &mut log {
                    Some(table) => table,
                    None => log.insert(txn.open_table(RAFT_LOG)?),
                };
                table.retain_in::<u64, _>(from.., |_, _| false)?;
                expected = None;
            }
            LogOp::Purge { upto, purged } => {
                let table = match &mut log {
                    Some(table) => table,
                    None => log.insert(txn.open_table(RAFT_LOG)?),
                };
                table.retain_in::<u64, _>(..=upto, |_, _| false)?;
                expected = None;
                let table = match &mut meta {
                    Some(table) => table,
                    None => meta.insert(txn.open_table(RAFT_META)?),
                };
                table.insert(META_LAST_PURGED, purged)?;
            }
            LogOp::Vote(vote) => {
                let table = match &mut meta {
                    Some(table) => table,
                    None => meta.insert(txn.open_table(RAFT_META)?),
                };
                table.insert(META_VOTE, vote)?;
            }
            LogOp::Committed(bytes) => committed = Some(bytes),
        }
    }
    Ok(committed)
}

/// How a round became durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durable {
    /// As a journal record, kept among the unapplied ones until `log.redb` takes it
    /// ([`Journal::apply_unapplied`], or a checkpoint).
    Journaled,
    /// Committed straight into `log.redb` (too large for a record): nothing left to do.
    InDatabase,
}

/// The journal as the log writer uses it. One at a time: the store keeps it behind a mutex.
pub(crate) struct Journal {
    file: Box<dyn StorageBackend>,
    bytes: u64,
    /// Rounds with a larger payload go straight into `log.redb`.
    payload_bytes_max: usize,
    generation: u64,
    /// The next record's sequence number in this generation (1 for the first).
    next_sequence: u64,
    /// Where the next record goes.
    write_offset_bytes: u64,
    /// A journal write, a sync or a checkpoint failed: what it held may not be durable, so no
    /// later commit may report success (as Linux's fsync after a failure).
    failed: bool,
    /// Records made durable here that `log.redb` has not taken yet, in order: applied together
    /// by [`Journal::apply_unapplied`], or by the next checkpoint.
    unapplied: Vec<Record>,
    /// Their payload bytes.
    unapplied_bytes: usize,
    gauge: Arc<JournalGauge>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("bytes", &self.bytes)
            .field("generation", &self.generation)
            .field("next_sequence", &self.next_sequence)
            .field("write_offset_bytes", &self.write_offset_bytes)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

fn io_error(error: std::io::Error) -> StorageError {
    StorageError::Redb(redb::Error::Io(error))
}

impl Journal {
    /// Opens the journal of `db` (`log.redb`): fills a new or short file with zeroes to its
    /// length (so that later syncs allocate no blocks), replays the records of `db`'s
    /// generation into it, and checkpoints if it replayed any (or `db` is new).
    pub fn open(file: Box<dyn StorageBackend>, bytes: u64, db: &Database) -> Result<Journal> {
        assert!(bytes >= JOURNAL_BYTES_MIN && bytes.is_multiple_of(BLOCK_BYTES));
        if file.len().map_err(io_error)? < bytes {
            fill_with_zeroes(file.as_ref(), bytes).map_err(io_error)?;
        }
        let stored = read_generation(db)?;
        let payload_bytes_max =
            RECORD_PAYLOAD_BYTES_MAX.min(usize::try_from(bytes / 4).unwrap_or(usize::MAX));
        let mut journal = Journal {
            file,
            bytes,
            payload_bytes_max,
            generation: stored.unwrap_or(0),
            next_sequence: 1,
            write_offset_bytes: 0,
            failed: false,
            unapplied: Vec::new(),
            unapplied_bytes: 0,
            gauge: Arc::new(JournalGauge::default()),
        };
        // A database without a generation has never checkpointed: no record can be its.
        let replay = match stored {
            Some(generation) => read_records(journal.file.as_ref(), bytes, generation)?,
            None => Vec::new(),
        };
        if stored.is_none() || !replay.is_empty() {
            let txn = begin_durable(db)?;
            let mut committed = None;
            for (payload, ops) in &replay {
                let decoded = decode_ops(payload, *ops).ok_or_else(|| {
                    StorageError::Invariant(
                        "log.journal: a record with a valid checksum does not decode".to_string(),
                    )
                })?;
                committed = apply_ops(&txn, &decoded)?.map(<[u8]>::to_vec).or(committed);
            }
            journal.checkpoint_in(&txn, committed.as_deref())?;
            txn.commit()?;
            journal.checkpointed();
            if !replay.is_empty() {
                tracing::info!(records = replay.len(), "log.journal replayed into log.redb");
            }
        }
        journal
            .gauge
            .replayed_records
            .store(replay.len() as u64, Ordering::Release);
        Ok(journal)
    }

    /// The counters, readable without the journal's lock.
    pub fn gauge(&self) -> Arc<JournalGauge> {
        Arc::clone(&self.gauge)
    }

    /// Makes `record` durable: as one journal record and one sync (after a checkpoint when it
    /// does not fit, or `log.redb` holds `db_unsynced_bytes` past the bound), then keeps it
    /// among the unapplied records; or, too large for a record, straight into `db` as a
    /// checkpoint. A checkpoint applies the unapplied records first. `committed_durable` is the
    /// newest committed index whose entries are durable, which a checkpoint writes into `db`.
    pub fn commit(
        &mut self,
        db: &Database,
        record: Record,
        committed_durable: Option<&[u8]>,
        db_unsynced_bytes: u64,
    ) -> Result<Durable> {
        assert!(!record.is_empty());
        if self.failed {
            return Err(StorageError::Invariant(
                "an earlier log.journal write, sync or checkpoint failed".to_string(),
            ));
        }
        let payload_bytes = u64::try_from(record.payload.len()).unwrap_or(u64::MAX);
        if record.payload.len() > self.payload_bytes_max {
            self.gauge
                .durable_bytes_total
                .fetch_add(payload_bytes, Ordering::AcqRel);
            let committed = record.committed_bytes().or(committed_durable);
            let committed = committed.map(<[u8]>::to_vec);
            self.checkpoint_with(db, Some(&record), committed.as_deref())?;
            return Ok(Durable::InDatabase);
        }
        let record_bytes = block_round_up(RECORD_HEADER_BYTES as u64 + record.payload.len() as u64);
        let fits = self.write_offset_bytes + record_bytes <= self.bytes;
        if !fits || db_unsynced_bytes >= LOG_DB_UNSYNCED_BYTES_MAX {
            self.checkpoint_with(db, None, committed_durable)?;
        }
        assert!(self.write_offset_bytes + record_bytes <= self.bytes);
        let encoded = encode_record(
            self.generation,
            self.next_sequence,
            record.ops,
            &record.payload,
            record_bytes,
        );
        let written = self
            .file
            .write(self.write_offset_bytes, &encoded)
            .and_then(|()| self.file.sync_data());
        if let Err(error) = written {
            self.failed = true;
            return Err(io_error(error));
        }
        self.write_offset_bytes += record_bytes;
        self.next_sequence += 1;
        self.gauge.records.fetch_add(1, Ordering::AcqRel);
        self.gauge
            .durable_bytes_total
            .fetch_add(payload_bytes, Ordering::AcqRel);
        self.unapplied_bytes += record.payload.len();
        self.unapplied.push(record);
        Ok(Durable::Journaled)
    }

    /// True when [`Journal::commit`] would take a record of up to `payload_bytes` with one
    /// write and one sync: it fits behind the last record, and `log.redb` (with
    /// `db_unsynced_bytes` unsynced) needs no checkpoint first.
    pub fn commits_without_checkpoint(&self, payload_bytes: usize, db_unsynced_bytes: u64) -> bool {
        let record_bytes = block_round_up(
            RECORD_HEADER_BYTES as u64 + u64::try_from(payload_bytes).unwrap_or(u64::MAX),
        );
        !self.failed
            && payload_bytes <= self.payload_bytes_max
            && self.write_offset_bytes + record_bytes <= self.bytes
            && db_unsynced_bytes < LOG_DB_UNSYNCED_BYTES_MAX
    }

    /// Payload bytes of the records `log.redb` has not taken yet.
    pub fn unapplied_bytes(&self) -> usize {
        self.unapplied_bytes
    }

    /// True when `log.redb` holds every record made durable so far.
    pub fn all_applied(&self) -> bool {
        self.unapplied.is_empty()
    }

    /// Applies the unapplied records to `db` in one transaction without a sync.
    pub fn apply_unapplied(&mut self, db: &Database) -> Result<()> {
        if self.unapplied.is_empty() {
            return Ok(());
        }
        let applied = (|| {
            let mut txn = db.begin_write()?;
            txn.set_durability(redb::Durability::None)?;
            for record in &self.unapplied {
                apply_ops(&txn, &record.decode())?;
            }
            txn.commit()?;
            Ok(())
        })();
        match applied {
            Ok(()) => {
                self.unapplied.clear();
                self.unapplied_bytes = 0;
                Ok(())
            }
            Err(error) => {
                // `db` lacks records a checkpoint would declare durable: no more of either.
                self.failed = true;
                Err(error)
            }
        }
    }

    /// A checkpoint: every record so far is in `db` (applied by the writer), so one durable
    /// commit of `db` holding `committed` and a new generation retires them all.
    pub fn checkpoint(&mut self, db: &Database, committed: Option<&[u8]>) -> Result<()> {
        if self.failed {
            return Err(StorageError::Invariant(
                "an earlier log.journal write, sync or checkpoint failed".to_string(),
            ));
        }
        self.checkpoint_with(db, None, committed)
    }

    fn checkpoint_with(
        &mut self,
        db: &Database,
        record: Option<&Record>,
        committed: Option<&[u8]>,
    ) -> Result<()> {
        let result = (|| {
            let txn = begin_durable(db)?;
            for unapplied in &self.unapplied {
                apply_ops(&txn, &unapplied.decode())?;
            }
            if let Some(record) = record {
                apply_ops(&txn, &record.decode())?;
            }
            self.checkpoint_in(&txn, committed)?;
            txn.commit()?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.unapplied.clear();
                self.unapplied_bytes = 0;
                self.checkpointed();
                Ok(())
            }
            Err(error) => {
                self.failed = true;
                Err(error)
            }
        }
    }

    /// Writes a new generation (and `committed`) into a checkpoint's transaction.
    fn checkpoint_in(
        &mut self,
        txn: &redb::WriteTransaction,
        committed: Option<&[u8]>,
    ) -> Result<()> {
        let next = fresh_generation(self.generation);
        let mut meta = txn.open_table(RAFT_META)?;
        meta.insert(META_JOURNAL_GENERATION, next.to_le_bytes().as_slice())?;
        if let Some(committed) = committed {
            meta.insert(META_COMMITTED, committed)?;
        }
        self.generation = next;
        Ok(())
    }

    /// After a checkpoint's commit: the new generation's records go from offset 0.
    fn checkpointed(&mut self) {
        self.next_sequence = 1;
        self.write_offset_bytes = 0;
        self.gauge.checkpoints.fetch_add(1, Ordering::AcqRel);
        let durable = self.gauge.durable_bytes_total();
        self.gauge
            .checkpointed_bytes_total
            .store(durable, Ordering::Release);
    }
}

/// A durable transaction of `log.redb` (a replay's or a checkpoint's). It records redb's
/// allocator state too, so an open after a crash need not rebuild it (`backend::RepairedOnOpen`).
fn begin_durable(db: &Database) -> Result<redb::WriteTransaction> {
    let mut txn = db.begin_write()?;
    txn.set_durability(redb::Durability::Immediate)?;
    txn.set_quick_repair(true);
    Ok(txn)
}

fn read_generation(db: &Database) -> Result<Option<u64>> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(RAFT_META) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let Some(value) = table.get(META_JOURNAL_GENERATION)? else {
        return Ok(None);
    };
    let bytes: [u8; 8] = value.value().try_into().map_err(|_| {
        StorageError::Invariant("raft_meta: journal_generation is not 8 bytes".to_string())
    })?;
    Ok(Some(u64::from_le_bytes(bytes)))
}

pub(crate) fn block_round_up(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

fn encode_record(
    generation: u64,
    sequence: u64,
    ops: u32,
    payload: &[u8],
    record_bytes: u64,
) -> Vec<u8> {
    // Records hold at most RECORD_PAYLOAD_BYTES_MAX (larger rounds go straight to log.redb).
    assert!(payload.len() <= RECORD_PAYLOAD_BYTES_MAX);
    let payload_bytes = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut record = Vec::with_capacity(usize_from(record_bytes));
    record.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    record.extend_from_slice(&[0; 4]); // the crc, below
    record.extend_from_slice(&generation.to_le_bytes());
    record.extend_from_slice(&sequence.to_le_bytes());
    record.extend_from_slice(&payload_bytes.to_le_bytes());
    record.extend_from_slice(&ops.to_le_bytes());
    assert_eq!(record.len(), RECORD_HEADER_BYTES);
    record.extend_from_slice(payload);
    let crc = crc32fast::hash(&record[8..]);
    record[4..8].copy_from_slice(&crc.to_le_bytes());
    record.resize(usize_from(record_bytes), 0);
    record
}

/// The payloads (and op counts) of `generation`'s records from offset 0, in sequence, up to
/// the first that is torn, of another generation or out of sequence.
fn read_records(
    file: &dyn StorageBackend,
    file_bytes: u64,
    generation: u64,
) -> Result<Vec<(Vec<u8>, u32)>> {
    let mut records = Vec::new();
    let mut offset = 0u64;
    let mut header = [0u8; RECORD_HEADER_BYTES];
    while offset + BLOCK_BYTES <= file_bytes {
        file.read(offset, &mut header).map_err(io_error)?;
        let word = |at: usize| {
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        let long = |at: usize| u64::from(word(at)) | (u64::from(word(at + 4)) << 32);
        let expected_sequence = records.len() as u64 + 1;
        if word(0) != RECORD_MAGIC || long(8) != generation || long(16) != expected_sequence {
            break;
        }
        let (payload_bytes, ops) = (word(24), word(28));
        let record_bytes = block_round_up(RECORD_HEADER_BYTES as u64 + u64::from(payload_bytes));
        if payload_bytes as usize > RECORD_PAYLOAD_BYTES_MAX || offset + record_bytes > file_bytes {
            break;
        }
        let mut payload = vec![0u8; payload_bytes as usize];
        file.read(offset + RECORD_HEADER_BYTES as u64, &mut payload)
            .map_err(io_error)?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header[8..]);
        hasher.update(&payload);
        if hasher.finalize() != word(4) {
            break;
        }
        records.push((payload, ops));
        offset += record_bytes;
    }
    Ok(records)
}

fn fill_with_zeroes(file: &dyn StorageBackend, bytes: u64) -> std::io::Result<()> {
    file.set_len(bytes)?;
    let zeroes = vec![0u8; FILL_CHUNK_BYTES];
    let mut offset = 0u64;
    while offset < bytes {
        let chunk = (bytes - offset).min(FILL_CHUNK_BYTES as u64);
        file.write(offset, &zeroes[..usize_from(chunk)])?;
        offset += chunk;
    }
    file.sync_data()
}

/// A generation number unlike `previous` (and, with overwhelming odds, unlike any stale record
/// still further into the journal).
fn fresh_generation(previous: u64) -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(previous);
    let generation = hasher.finish();
    if generation == previous {
        generation.wrapping_add(1)
    } else {
        generation
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::expect_used,
        reason = "a test: a failed expect is a failed test"
    )]

    use std::sync::{Mutex, MutexGuard};

    use aspen_core::TypeConfig;

    use super::*;

    type IoResult<T> = std::result::Result<T, std::io::Error>;

    /// A disk that loses every write since its last sync when it crashes. Handles from before
    /// a crash are detached: their calls fail, as a dead process's would.
    #[derive(Debug, Default)]
    struct Platter {
        live: Vec<u8>,
        durable: Vec<u8>,
        epoch: u64,
    }

    #[derive(Debug, Clone, Default)]
    struct CrashDisk(Arc<Mutex<Platter>>);

    #[derive(Debug)]
    struct CrashHandle {
        disk: CrashDisk,
        epoch: u64,
    }

    impl CrashDisk {
        fn attach(&self) -> CrashHandle {
            CrashHandle {
                disk: self.clone(),
                epoch: self.platter().epoch,
            }
        }

        fn platter(&self) -> MutexGuard<'_, Platter> {
            self.0.lock().expect("platter lock")
        }

        fn crash(&self) {
            let mut platter = self.platter();
            platter.live = platter.durable.clone();
            platter.epoch += 1;
        }
    }

    impl CrashHandle {
        fn platter(&self) -> IoResult<MutexGuard<'_, Platter>> {
            let platter = self.disk.platter();
            if platter.epoch != self.epoch {
                return Err(std::io::Error::other("detached by a crash"));
            }
            Ok(platter)
        }
    }

    impl StorageBackend for CrashHandle {
        fn len(&self) -> IoResult<u64> {
            Ok(self.platter()?.live.len() as u64)
        }

        fn read(&self, offset: u64, out: &mut [u8]) -> IoResult<()> {
            let platter = self.platter()?;
            let start = usize_from(offset);
            let source = platter
                .live
                .get(start..start + out.len())
                .ok_or_else(|| std::io::Error::other("read past the end"))?;
            out.copy_from_slice(source);
            Ok(())
        }

        fn set_len(&self, len: u64) -> IoResult<()> {
            self.platter()?.live.resize(usize_from(len), 0);
            Ok(())
        }

        fn sync_data(&self) -> IoResult<()> {
            let mut platter = self.platter()?;
            platter.durable = platter.live.clone();
            Ok(())
        }

        fn write(&self, offset: u64, data: &[u8]) -> IoResult<()> {
            let mut platter = self.platter()?;
            let start = usize_from(offset);
            let end = start + data.len();
            if platter.live.len() < end {
                platter.live.resize(end, 0);
            }
            platter.live[start..end].copy_from_slice(data);
            Ok(())
        }
    }

    #[derive(Debug, Clone, Default)]
    struct Disks {
        db: CrashDisk,
        journal: CrashDisk,
    }

    impl Disks {
        fn open(&self, journal_bytes: u64) -> (Database, Journal) {
            let db = Database::builder()
                .create_with_backend(self.db.attach())
                .expect("open log.redb");
            let journal = Journal::open(Box::new(self.journal.attach()), journal_bytes, &db)
                .expect("open the journal");
            (db, journal)
        }

        fn crash(&self) {
            self.db.crash();
            self.journal.crash();
        }
    }

    fn entry(index: u64, value_bytes: usize) -> Entry {
        openraft::Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
            payload: openraft::EntryPayload::Normal(aspen_core::Command::Put(
                aspen_core::PutRequest {
                    key: format!("k{index}").into_bytes(),
                    value: vec![b'v'; value_bytes],
                    ..Default::default()
                },
            )),
        }
    }

    /// One writer round as the log writer runs it: durable first, then into `log.redb`.
    fn round(db: &Database, journal: &mut Journal, record: Record) -> Durable {
        let unsynced = 0;
        let durable = journal.commit(db, record, None, unsynced).expect("commit");
        journal.apply_unapplied(db).expect("apply");
        durable
    }

    fn appends(indexes: std::ops::RangeInclusive<u64>, value_bytes: usize) -> Record {
        let mut record = Record::default();
        for index in indexes {
            record.append(&entry(index, value_bytes));
        }
        record
    }

    fn log_indexes(db: &Database) -> Vec<u64> {
        let txn = db.begin_read().expect("read");
        let table = txn.open_table(RAFT_LOG).expect("raft_log");
        table
            .iter()
            .expect("iter")
            .map(|item| item.expect("item").0.value())
            .collect()
    }

    fn meta(db: &Database, key: &str) -> Option<Vec<u8>> {
        let txn = db.begin_read().expect("read");
        let table = txn.open_table(RAFT_META).expect("raft_meta");
        table.get(key).expect("get").map(|v| v.value().to_vec())
    }

    #[test]
    fn a_crash_loses_nothing_a_record_made_durable() {
        let disks = Disks::default();
        {
            let (db, mut journal) = disks.open(JOURNAL_BYTES);
            for index in 1..=50 {
                let mut record = appends(index..=index, 100);
                record.committed(&Some(openraft::testing::log_id::<TypeConfig>(1, 1, index)));
                assert_eq!(round(&db, &mut journal, record), Durable::Journaled);
            }
            // log.redb took every record without a sync: a crash takes them all from it.
            disks.crash();
        }
        let (db, journal) = disks.open(JOURNAL_BYTES);
        assert_eq!(journal.gauge().stats().replayed_records, 50);
        assert_eq!(log_indexes(&db), (1..=50).collect::<Vec<_>>());
        assert_eq!(
            meta(&db, META_COMMITTED),
            Some(codec::encode(&Some(
                openraft::testing::log_id::<TypeConfig>(1, 1, 50)
            )))
        );
        drop((db, journal));
        // The replay checkpointed: a second crash finds nothing to replay and loses nothing.
        disks.crash();
        let (db, journal) = disks.open(JOURNAL_BYTES);
        assert_eq!(journal.gauge().stats().replayed_records, 0);
        assert_eq!(log_indexes(&db), (1..=50).collect::<Vec<_>>());
    }

    #[test]
    fn replay_stops_at_a_torn_record() {
        let disks = Disks::default();
        {
            let (db, mut journal) = disks.open(JOURNAL_BYTES);
            for index in 1..=3 {
                round(&db, &mut journal, appends(index..=index, 100));
            }
            disks.crash();
        }
        // Tear the second record: one flipped payload byte fails its crc.
        {
            let mut platter = disks.journal.platter();
            let at = usize_from(BLOCK_BYTES) + RECORD_HEADER_BYTES + 3;
            platter.durable[at] ^= 0xff;
            platter.live = platter.durable.clone();
        }
        let (db, journal) = disks.open(JOURNAL_BYTES);
        assert_eq!(journal.gauge().stats().replayed_records, 1);
        assert_eq!(log_indexes(&db), vec![1]);
    }

    #[test]
    fn checkpoints_retire_records_and_a_crash_after_many_keeps_everything() {
        let disks = Disks::default();
        let journal_bytes = JOURNAL_BYTES_MIN;
        let last = 200;
        {
            let (db, mut journal) = disks.open(journal_bytes);
            for index in 1..=last {
                round(&db, &mut journal, appends(index..=index, 300));
            }
            // A truncation and a vote, then appends at the truncated index.
            let mut record = Record::default();
            record.truncate(last - 9);
            record.vote(&Vote::new(2, 2));
            round(&db, &mut journal, record);
            round(&db, &mut journal, appends(last - 9..=last - 5, 10));
            // A purge.
            let mut record = Record::default();
            record.purge(&openraft::testing::log_id::<TypeConfig>(1, 1, 100));
            round(&db, &mut journal, record);
            // One record per block: 16 blocks hold 16 records, so these checkpointed often.
            assert!(journal.gauge().stats().checkpoints >= last / 16);
            disks.crash();
        }
        let (db, _journal) = disks.open(journal_bytes);
        assert_eq!(
            log_indexes(&db),
            (101..=last - 5).collect::<Vec<_>>(),
            "purged to 100, truncated after {} and appended to {}",
            last - 10,
            last - 5
        );
        assert_eq!(meta(&db, META_VOTE), Some(codec::encode(&Vote::new(2, 2))));
        assert_eq!(
            meta(&db, META_LAST_PURGED),
            Some(codec::encode(&Some(
                openraft::testing::log_id::<TypeConfig>(1, 1, 100)
            )))
        );
    }

    #[test]
    fn a_round_too_large_for_a_record_goes_straight_into_the_database() {
        let disks = Disks::default();
        let journal_bytes = JOURNAL_BYTES_MIN;
        {
            let (db, mut journal) = disks.open(journal_bytes);
            let checkpoints = journal.gauge().stats().checkpoints;
            // 40 KiB of entries against a 64 KiB journal (records at most a quarter of it).
            let durable = round(&db, &mut journal, appends(1..=10, 4096));
            assert_eq!(durable, Durable::InDatabase);
            assert_eq!(journal.gauge().stats().checkpoints, checkpoints + 1);
            assert_eq!(
                round(&db, &mut journal, appends(11..=11, 10)),
                Durable::Journaled
            );
            disks.crash();
        }
        let (db, _journal) = disks.open(journal_bytes);
        assert_eq!(log_indexes(&db), (1..=11).collect::<Vec<_>>());
    }

    #[test]
    fn records_of_an_older_generation_are_never_replayed() {
        let disks = Disks::default();
        {
            let (db, mut journal) = disks.open(JOURNAL_BYTES);
            // The old generation: records 1 and 2 at offsets 0 and one block.
            round(&db, &mut journal, appends(1..=5, 100));
            round(&db, &mut journal, appends(6..=6, 100));
            journal.checkpoint(&db, None).expect("checkpoint");
            // The new generation's record 1 overwrites offset 0; the old record 2 stays
            // behind it with the next sequence number.
            let mut record = Record::default();
            record.truncate(3);
            round(&db, &mut journal, record);
            disks.crash();
        }
        let (db, journal) = disks.open(JOURNAL_BYTES);
        assert_eq!(journal.gauge().stats().replayed_records, 1);
        assert_eq!(log_indexes(&db), vec![1, 2]);
    }

    #[test]
    fn records_left_unapplied_reach_the_database_at_the_next_checkpoint_or_apply() {
        let disks = Disks::default();
        let journal_bytes = JOURNAL_BYTES_MIN;
        {
            let (db, mut journal) = disks.open(journal_bytes);
            // Twenty rounds without applying: the journal (16 blocks) fills, and the
            // checkpoint that makes room applies the records it holds first.
            for index in 1..=20 {
                journal
                    .commit(&db, appends(index..=index, 100), None, 0)
                    .expect("commit");
            }
            assert!(!journal.all_applied());
            assert_eq!(log_indexes(&db), (1..=16).collect::<Vec<_>>());
            journal.apply_unapplied(&db).expect("apply");
            assert!(journal.all_applied());
            assert_eq!(journal.unapplied_bytes(), 0);
            assert_eq!(log_indexes(&db), (1..=20).collect::<Vec<_>>());
            // Three more left unapplied, then a crash: replay brings them back.
            for index in 21..=23 {
                journal
                    .commit(&db, appends(index..=index, 100), None, 0)
                    .expect("commit");
            }
            disks.crash();
        }
        let (db, journal) = disks.open(journal_bytes);
        assert_eq!(log_indexes(&db), (1..=23).collect::<Vec<_>>());
        assert!(journal.all_applied());
    }
}
