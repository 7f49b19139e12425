//! The log database's journal: a redb backend that makes each durable commit one sequential
//! write and one `fdatasync`.
//!
//! A durable redb commit writes its pages where they live (for the log database: the header
//! and about seven pages scattered over the file), then syncs. On a disk where each scattered
//! page is its own I/O, that costs up to twice a one-write sync (`docs/performance.md`; how
//! much depends on the disk: 284 against 137 µs on this project's VM once, 173 against 135 µs
//! another day). Here every
//! write still goes to the main file at once (so reads see it), but without a sync. A copy of
//! each write since the last sync is kept in memory; `sync_data` appends that copy to the
//! journal file as one checksummed record and syncs the journal only.
//!
//! The journal is a fixed-size file. When a record does not fit (or the writes since the last
//! sync outgrew [`RECORD_PAYLOAD_BYTES_MAX`]), the sync is a *checkpoint* instead: the main file
//! is synced, which makes every write so far durable, and the journal starts over: an empty
//! record of a new generation is written and synced at offset 0. Replay follows one generation
//! from offset 0, so no record older than the main file's last sync is ever replayed over it.
//! Opening, and closing, start a new generation the same way.
//!
//! On open, the records of the generation that starts at offset 0 are replayed into the main
//! file in order, up to the first torn or foreign one, and the main file is synced. That leaves
//! it as it was at its last durable commit (plus, possibly, writes redb made after it and never
//! synced, which redb's own recovery already expects), so redb opens it as usual.
//!
//! Record layout (little-endian), each starting on a [`BLOCK_BYTES`] boundary:
//! `magic u32, crc32 u32, generation u64, sequence u64, payload_bytes u32, ops u32`, then the
//! payload: per op `kind u8` and either `offset u64, bytes u32, stored u32, data` (a write of
//! `bytes` bytes whose first `stored` are in `data` and the rest are zeroes: redb writes whole
//! pages, mostly empty in a small database) or `len u64` (a resize). The crc covers everything
//! after itself up to the payload's end.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use redb::{BackendError, StorageBackend};

type BackendIoError = std::io::Error;

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
/// Writes since the last sync are copied up to this size (or a quarter of the journal, if that
/// is less); past it, the next sync is a checkpoint (and the copy is dropped), so memory stays
/// bounded whatever a commit writes.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Zeroes written at a time while the journal file is first filled.
const FILL_CHUNK_BYTES: usize = 1024 * 1024;

const RECORD_MAGIC: u32 = 0x4a4e_5041; // "APNJ" little-endian: Aspen journal
const RECORD_HEADER_BYTES: usize = 32;
const OP_WRITE: u8 = 1;
const OP_SET_LEN: u8 = 2;
const OP_WRITE_HEADER_BYTES: usize = 1 + 8 + 4 + 4;
const OP_SET_LEN_BYTES: usize = 1 + 8;

const _: () = assert!(JOURNAL_BYTES.is_multiple_of(BLOCK_BYTES));
const _: () = assert!((RECORD_PAYLOAD_BYTES_MAX as u64) < JOURNAL_BYTES);
const _: () = assert!(RECORD_HEADER_BYTES as u64 <= BLOCK_BYTES);

/// The journal's backend and its length.
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
}

/// A main redb backend whose syncs go to a journal backend (module docs).
pub struct JournaledBackend<M: StorageBackend, J: StorageBackend> {
    main: M,
    journal: J,
    /// The journal's length: records go below it.
    journal_bytes: u64,
    /// Writes since the last sync are copied up to this many bytes.
    payload_bytes_max: usize,
    state: Mutex<JournalState>,
    gauge: Arc<JournalGauge>,
}

#[derive(Debug)]
struct JournalState {
    /// Encoded ops since the last sync, in the order they reached the main file.
    pending: Vec<u8>,
    pending_ops: u32,
    /// The writes since the last sync outgrew the copy: the next sync checkpoints.
    overflowed: bool,
    generation: u64,
    next_sequence: u64,
    /// Where the next record goes in the journal.
    write_offset_bytes: u64,
    /// A journal write or sync failed. What it held may not be durable and the main file was
    /// not synced, so no later sync may report success (as Linux's fsync after a failure).
    failed: bool,
}

/// The journal's counters, shared with the store for `/metrics`.
#[derive(Debug, Default)]
pub struct JournalGauge {
    replayed_records: AtomicU64,
    records: AtomicU64,
    checkpoints: AtomicU64,
}

impl JournalGauge {
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
    /// Records replayed into the main file when it was opened.
    pub replayed_records: u64,
    /// Syncs that appended a record.
    pub records: u64,
    /// Syncs that synced the main file instead.
    pub checkpoints: u64,
}

/// By hand: the pending copy (up to 2 MiB of page bytes) is left out.
impl<M: StorageBackend, J: StorageBackend> fmt::Debug for JournaledBackend<M, J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JournaledBackend")
            .field("main", &self.main)
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

impl<M: StorageBackend, J: StorageBackend> JournaledBackend<M, J> {
    /// Replays `journal` into `main` and syncs it, then returns the pair ready for redb. A new
    /// or short journal file is then filled with zeroes to its length (`LogJournal`), so its
    /// later syncs write data only (no block allocation).
    pub fn open(main: M, journal: LogJournal<J>) -> Result<JournaledBackend<M, J>, BackendIoError> {
        let LogJournal {
            backend: journal,
            bytes: journal_bytes,
        } = journal;
        let replay = replay(&main, &journal)?;
        if replay.records > 0 {
            main.sync_data()?;
            tracing::debug!(records = replay.records, "log journal replayed");
        }
        if journal.len()? < journal_bytes {
            fill_with_zeroes(&journal, journal_bytes)?;
        }
        let generation = fresh_generation(replay.generation);
        start_generation(&journal, generation)?;
        let state = JournalState {
            pending: Vec::new(),
            pending_ops: 0,
            overflowed: false,
            generation,
            next_sequence: 1,
            write_offset_bytes: BLOCK_BYTES,
            failed: false,
        };
        let gauge = Arc::new(JournalGauge::default());
        gauge
            .replayed_records
            .store(replay.records, Ordering::Release);
        let payload_bytes_max = RECORD_PAYLOAD_BYTES_MAX
            .min(usize::try_from(journal_bytes / 4).unwrap_or(RECORD_PAYLOAD_BYTES_MAX));
        Ok(JournaledBackend {
            main,
            journal,
            journal_bytes,
            payload_bytes_max,
            state: Mutex::new(state),
            gauge,
        })
    }

    pub fn stats(&self) -> JournalStats {
        self.gauge.stats()
    }

    /// The counters, readable after redb owns the backend.
    pub fn gauge(&self) -> Arc<JournalGauge> {
        Arc::clone(&self.gauge)
    }

    fn lock(&self) -> MutexGuard<'_, JournalState> {
        // The state is plain data updated in whole steps; a panic mid-update cannot leave a
        // half-written record in `pending` that a later sync would trust (the crc is computed
        // at sync time over what is there), so reading through a poisoned lock is sound.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every write so far durable by syncing the main file, then starts a new generation
    /// with an empty record at the journal's start (synced), so no record of the old one is
    /// ever replayed over what the main file now holds. Any failure poisons the journal.
    fn checkpoint(&self, state: &mut JournalState) -> Result<(), BackendIoError> {
        state.pending.clear();
        state.pending_ops = 0;
        state.overflowed = false;
        let generation = state.generation.wrapping_add(1);
        let started = self
            .main
            .sync_data()
            .and_then(|()| start_generation(&self.journal, generation));
        if let Err(error) = started {
            state.failed = true;
            return Err(error);
        }
        state.generation = generation;
        state.next_sequence = 1;
        state.write_offset_bytes = BLOCK_BYTES;
        self.gauge.checkpoints.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

/// Writes generation `generation`'s first record, one without ops, at the journal's start and
/// syncs it: from then on replay stops wherever this generation's records end.
fn start_generation(journal: &impl StorageBackend, generation: u64) -> Result<(), BackendIoError> {
    let record = encode_record(generation, 0, 0, &[], BLOCK_BYTES);
    journal.write(0, &record)?;
    journal.sync_data()
}

fn record_op(
    state: &mut JournalState,
    payload_bytes_max: usize,
    op_bytes: usize,
    encode: impl FnOnce(&mut Vec<u8>),
) {
    if state.overflowed {
        return;
    }
    if state.pending.len().saturating_add(op_bytes) > payload_bytes_max {
        state.overflowed = true;
        state.pending = Vec::new();
        state.pending_ops = 0;
        return;
    }
    let before = state.pending.len();
    encode(&mut state.pending);
    assert_eq!(state.pending.len() - before, op_bytes);
    state.pending_ops += 1;
}

impl<M: StorageBackend, J: StorageBackend> StorageBackend for JournaledBackend<M, J> {
    fn len(&self) -> Result<u64, BackendIoError> {
        self.main.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendIoError> {
        self.main.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), BackendIoError> {
        let mut state = self.lock();
        self.main.set_len(len)?;
        record_op(
            &mut state,
            self.payload_bytes_max,
            OP_SET_LEN_BYTES,
            |out| {
                out.push(OP_SET_LEN);
                out.extend_from_slice(&len.to_le_bytes());
            },
        );
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendIoError> {
        let mut state = self.lock();
        self.main.write(offset, data)?;
        // A write too large for one op is never copied (record_op overflows), so the next sync
        // checkpoints.
        let data_bytes = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let stored = data.len() - data.iter().rev().take_while(|byte| **byte == 0).count();
        let stored_bytes = u32::try_from(stored).unwrap_or(u32::MAX);
        let op_bytes = OP_WRITE_HEADER_BYTES.saturating_add(stored);
        record_op(&mut state, self.payload_bytes_max, op_bytes, |out| {
            out.push(OP_WRITE);
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&data_bytes.to_le_bytes());
            out.extend_from_slice(&stored_bytes.to_le_bytes());
            out.extend_from_slice(&data[..stored]);
        });
        Ok(())
    }

    fn sync_data(&self) -> Result<(), BackendIoError> {
        let mut state = self.lock();
        if state.failed {
            return Err(BackendIoError::other(
                "an earlier journal write or sync failed; nothing written since is durable",
            ));
        }
        if state.pending_ops == 0 && !state.overflowed {
            return Ok(());
        }
        let record_bytes = block_round_up(RECORD_HEADER_BYTES as u64 + state.pending.len() as u64);
        let fits = state.write_offset_bytes + record_bytes <= self.journal_bytes;
        if state.overflowed || !fits {
            return self.checkpoint(&mut state);
        }
        let record = encode_record(
            state.generation,
            state.next_sequence,
            state.pending_ops,
            &state.pending,
            record_bytes,
        );
        let written = self
            .journal
            .write(state.write_offset_bytes, &record)
            .and_then(|()| self.journal.sync_data());
        if let Err(error) = written {
            state.failed = true;
            return Err(error);
        }
        state.write_offset_bytes += record_bytes;
        state.next_sequence += 1;
        state.pending.clear();
        state.pending_ops = 0;
        self.gauge.records.fetch_add(1, Ordering::AcqRel);
        assert!(state.write_offset_bytes <= self.journal_bytes);
        Ok(())
    }

    fn close(&self) -> Result<(), BackendIoError> {
        // redb syncs before it closes a database it wrote; a checkpoint here leaves the main file
        // complete on its own, so the journal holds nothing a reader of the main file needs.
        let mut state = self.lock();
        let checkpointed = if state.failed {
            Ok(())
        } else {
            self.checkpoint(&mut state)
        };
        let closed_main = self.main.close();
        let closed_journal = self.journal.close();
        checkpointed.and(closed_main).and(closed_journal)
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.main.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.main.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.main.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.main.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.main.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.main.query_lock_range(start, end)
    }
}

fn block_round_up(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

fn encode_record(
    generation: u64,
    sequence: u64,
    ops: u32,
    payload: &[u8],
    record_bytes: u64,
) -> Vec<u8> {
    assert!(payload.len() <= RECORD_PAYLOAD_BYTES_MAX);
    let payload_bytes = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut record = Vec::with_capacity(usize::try_from(record_bytes).unwrap_or(0));
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
    record.resize(aspen_core::convert::usize_from(record_bytes), 0);
    record
}

fn fill_with_zeroes(journal: &impl StorageBackend, bytes: u64) -> Result<(), BackendIoError> {
    journal.set_len(bytes)?;
    let zeroes = vec![0u8; FILL_CHUNK_BYTES];
    let mut offset = 0u64;
    while offset < bytes {
        let chunk = (bytes - offset).min(FILL_CHUNK_BYTES as u64);
        journal.write(offset, &zeroes[..usize::try_from(chunk).unwrap_or(0)])?;
        offset += chunk;
    }
    journal.sync_data()
}

struct Replay {
    records: u64,
    /// The replayed generation, if any record was valid.
    generation: Option<u64>,
}

/// Applies, in order, the records of the generation that starts at the journal's offset 0,
/// stopping at the first record that is torn, of another generation or out of sequence.
fn replay(
    main: &impl StorageBackend,
    journal: &impl StorageBackend,
) -> Result<Replay, BackendIoError> {
    let journal_bytes = journal.len()?;
    let mut offset = 0u64;
    let mut generation = None;
    let mut records = 0u64;
    let mut header = [0u8; RECORD_HEADER_BYTES];
    while offset + BLOCK_BYTES <= journal_bytes {
        journal.read(offset, &mut header)?;
        let field = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&header[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        let word = |at: usize| {
            let mut bytes = [0u8; 4];
            bytes.copy_from_slice(&header[at..at + 4]);
            u32::from_le_bytes(bytes)
        };
        if word(0) != RECORD_MAGIC {
            break;
        }
        let (record_generation, sequence) = (field(8), field(16));
        let (payload_bytes, ops) = (word(24), word(28));
        if generation.is_some_and(|g| g != record_generation) || sequence != records {
            break;
        }
        let record_bytes = block_round_up(RECORD_HEADER_BYTES as u64 + u64::from(payload_bytes));
        if payload_bytes as usize > RECORD_PAYLOAD_BYTES_MAX
            || offset + record_bytes > journal_bytes
        {
            break;
        }
        let mut payload = vec![0u8; payload_bytes as usize];
        journal.read(offset + RECORD_HEADER_BYTES as u64, &mut payload)?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header[8..]);
        hasher.update(&payload);
        if hasher.finalize() != word(4) {
            break;
        }
        let Some(decoded) = decode_ops(&payload, ops) else {
            break;
        };
        for op in decoded {
            match op {
                Op::Write {
                    offset,
                    bytes,
                    stored,
                } => {
                    let mut data = stored.to_vec();
                    data.resize(bytes, 0);
                    main.write(offset, &data)?;
                }
                Op::SetLen { len } => main.set_len(len)?,
            }
        }
        generation = Some(record_generation);
        records += 1;
        offset += record_bytes;
    }
    Ok(Replay {
        records,
        generation,
    })
}

enum Op<'a> {
    /// `bytes` bytes at `offset`: `stored`, then zeroes.
    Write {
        offset: u64,
        bytes: usize,
        stored: &'a [u8],
    },
    SetLen {
        len: u64,
    },
}

/// The payload's ops, or None if it does not hold exactly `ops` well-formed ones.
fn decode_ops(payload: &[u8], ops: u32) -> Option<Vec<Op<'_>>> {
    let mut decoded = Vec::new();
    let mut rest = payload;
    let take = |rest: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        let (head, tail) = rest.split_at_checked(n)?;
        *rest = tail;
        Some(head.to_vec())
    };
    for _ in 0..ops {
        let kind = *take(&mut rest, 1)?.first()?;
        match kind {
            OP_WRITE => {
                let offset = u64::from_le_bytes(take(&mut rest, 8)?.try_into().ok()?);
                let bytes = u32::from_le_bytes(take(&mut rest, 4)?.try_into().ok()?) as usize;
                let stored = u32::from_le_bytes(take(&mut rest, 4)?.try_into().ok()?) as usize;
                if stored > bytes {
                    return None;
                }
                let (stored, tail) = rest.split_at_checked(stored)?;
                rest = tail;
                decoded.push(Op::Write {
                    offset,
                    bytes,
                    stored,
                });
            }
            OP_SET_LEN => {
                let len = u64::from_le_bytes(take(&mut rest, 8)?.try_into().ok()?);
                decoded.push(Op::SetLen { len });
            }
            _ => return None,
        }
    }
    rest.is_empty().then_some(decoded)
}

/// A generation number unlike `replayed` (and, with overwhelming odds, unlike any stale record
/// still further into the journal): records of the new generation are written from offset 0.
fn fresh_generation(replayed: Option<u64>) -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(replayed.unwrap_or(0));
    let mut generation = hasher.finish();
    if Some(generation) == replayed {
        generation = generation.wrapping_add(1);
    }
    generation
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::expect_used,
        reason = "a test: a failed expect is a failed test"
    )]

    use redb::{Database, ReadableDatabase, TableDefinition};

    use super::*;

    /// A disk that loses every write since its last sync when it crashes. Handles from before
    /// a crash are detached: their calls fail, as a dead process's would.
    #[derive(Debug, Default)]
    struct Platter {
        live: Vec<u8>,
        durable: Vec<u8>,
        epoch: u64,
        syncs: u64,
        fail_next_sync: bool,
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

        fn syncs(&self) -> u64 {
            self.platter().syncs
        }
    }

    impl CrashHandle {
        fn platter(&self) -> Result<MutexGuard<'_, Platter>, BackendIoError> {
            let platter = self.disk.platter();
            if platter.epoch != self.epoch {
                return Err(BackendIoError::other("detached by a crash"));
            }
            Ok(platter)
        }
    }

    impl StorageBackend for CrashHandle {
        fn len(&self) -> Result<u64, BackendIoError> {
            Ok(self.platter()?.live.len() as u64)
        }

        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendIoError> {
            let platter = self.platter()?;
            let start = usize::try_from(offset).expect("offset");
            let source = platter
                .live
                .get(start..start + out.len())
                .ok_or_else(|| BackendIoError::other("read past the end"))?;
            out.copy_from_slice(source);
            Ok(())
        }

        fn set_len(&self, len: u64) -> Result<(), BackendIoError> {
            let len = usize::try_from(len).expect("len");
            self.platter()?.live.resize(len, 0);
            Ok(())
        }

        fn sync_data(&self) -> Result<(), BackendIoError> {
            let mut platter = self.platter()?;
            if std::mem::take(&mut platter.fail_next_sync) {
                return Err(BackendIoError::other("injected EIO"));
            }
            platter.durable = platter.live.clone();
            platter.syncs += 1;
            Ok(())
        }

        fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendIoError> {
            let mut platter = self.platter()?;
            let start = usize::try_from(offset).expect("offset");
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
        main: CrashDisk,
        journal: CrashDisk,
    }

    impl Disks {
        fn open(&self) -> JournaledBackend<CrashHandle, CrashHandle> {
            JournaledBackend::open(self.main.attach(), LogJournal::new(self.journal.attach()))
                .expect("open")
        }

        fn crash(&self) {
            self.main.crash();
            self.journal.crash();
        }

        fn main_bytes(&self, offset: usize, len: usize) -> Vec<u8> {
            self.main.platter().live[offset..offset + len].to_vec()
        }
    }

    const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    fn value(i: u64, bytes: usize) -> Vec<u8> {
        let mut value = i.to_le_bytes().to_vec();
        value.resize(bytes, u8::try_from(i % 251).expect("byte"));
        value
    }

    #[test]
    fn a_crash_keeps_every_durable_redb_commit_and_loses_the_main_files_unsynced_writes() {
        let disks = Disks::default();
        let commits = 400u64;
        let stats = {
            let backend = disks.open();
            let db = Database::builder()
                .create_with_backend(backend)
                .expect("create");
            for i in 0..commits {
                // Mostly small commits (journal records); every 97th one is larger than a
                // record may be (a checkpoint); together they wrap the journal several times.
                let bytes = if i % 97 == 50 {
                    3 * 1024 * 1024
                } else {
                    20_000
                };
                let txn = db.begin_write().expect("begin");
                txn.open_table(TABLE)
                    .expect("table")
                    .insert(i, value(i, bytes).as_slice())
                    .expect("insert");
                txn.commit().expect("commit");
            }
            let main_syncs = disks.main.syncs();
            disks.crash();
            // The crash came before redb could close: the main file was synced only at
            // checkpoints, so what the last ones left is all the platter kept of it.
            assert!(main_syncs < commits / 4, "main synced {main_syncs} times");
            drop(db);
            main_syncs
        };
        let db = Database::builder()
            .create_with_backend(disks.open())
            .expect("reopen after the crash");
        let txn = db.begin_read().expect("read");
        let table = txn.open_table(TABLE).expect("table");
        for i in 0..commits {
            let bytes = if i % 97 == 50 {
                3 * 1024 * 1024
            } else {
                20_000
            };
            let found = table.get(i).expect("get").map(|v| v.value().to_vec());
            assert_eq!(found, Some(value(i, bytes)), "commit {i} lost");
        }
        assert!(stats > 0);
    }

    #[test]
    fn replay_restores_synced_writes_and_stops_at_a_torn_record() {
        let disks = Disks::default();
        {
            let backend = disks.open();
            backend.set_len(8192).expect("set_len");
            backend.write(0, b"first").expect("write");
            backend.sync_data().expect("sync");
            backend.write(4096, b"second").expect("write");
            backend.sync_data().expect("sync");
            backend.write(0, b"third").expect("write");
            backend.sync_data().expect("sync");
            backend.write(0, b"never").expect("write"); // not synced: lost
            assert_eq!(backend.stats().records, 3);
            assert_eq!(disks.main.syncs(), 0, "records only, no checkpoint yet");
        }
        disks.crash();
        // Tear the third record (the one that wrote "third"): its last payload byte.
        {
            let mut journal = disks.journal.platter();
            let third = usize::try_from(3 * BLOCK_BYTES).expect("offset");
            let payload_end = third + RECORD_HEADER_BYTES + OP_WRITE_HEADER_BYTES + 5;
            journal.durable[payload_end - 1] ^= 0xff;
            journal.live = journal.durable.clone();
        }
        let backend = disks.open();
        assert_eq!(
            backend.stats().replayed_records,
            3,
            "the empty first record and two"
        );
        assert_eq!(disks.main_bytes(0, 5), b"first");
        assert_eq!(disks.main_bytes(4096, 6), b"second");
    }

    #[test]
    fn after_a_checkpoint_no_older_record_is_replayed_over_the_main_file() {
        let disks = Disks::default();
        {
            let backend = disks.open();
            backend.set_len(8192).expect("set_len");
            backend.write(0, b"old").expect("write");
            backend.sync_data().expect("sync"); // a record
            backend.write(0, b"new").expect("write");
            let big = vec![7u8; RECORD_PAYLOAD_BYTES_MAX + 1];
            backend.write(8192, &big).expect("write");
            backend.sync_data().expect("sync"); // too large for a record: a checkpoint
            assert_eq!(backend.stats().checkpoints, 1);
        }
        disks.crash();
        let backend = disks.open();
        assert_eq!(
            backend.stats().replayed_records,
            1,
            "only the new generation's start"
        );
        assert_eq!(disks.main_bytes(0, 3), b"new");
        assert_eq!(disks.main_bytes(8192, 1), [7]);
    }

    #[test]
    fn a_failed_journal_sync_fails_every_later_sync() {
        let disks = Disks::default();
        let backend = disks.open();
        backend.write(0, b"a").expect("write");
        disks.journal.platter().fail_next_sync = true;
        assert!(backend.sync_data().is_err());
        backend.write(0, b"b").expect("write");
        let error = backend.sync_data().expect_err("poisoned");
        assert!(error.to_string().contains("earlier journal"), "{error}");
    }

    #[test]
    fn a_full_journal_checkpoints_and_starts_over() {
        let disks = Disks::default();
        let backend = disks.open();
        backend.set_len(4096).expect("set_len");
        let page = vec![1u8; 4096];
        // Each record is two blocks (a header and a page do not fit in one).
        let records_to_fill = JOURNAL_BYTES / (2 * BLOCK_BYTES);
        for _ in 0..records_to_fill + 2 {
            backend.write(0, &page).expect("write");
            backend.sync_data().expect("sync");
        }
        let stats = backend.stats();
        assert_eq!(stats.checkpoints, 1, "{stats:?}");
        assert_eq!(stats.records, records_to_fill + 1, "{stats:?}");
    }

    #[test]
    fn a_pages_trailing_zeroes_are_not_stored_but_are_replayed() {
        let disks = Disks::default();
        {
            let backend = disks.open();
            backend.write(0, &[0xffu8; 4096]).expect("write");
            let big = vec![7u8; RECORD_PAYLOAD_BYTES_MAX + 1];
            backend.write(4096, &big).expect("write");
            backend.sync_data().expect("sync"); // a checkpoint: 0xff is durable in main
            let mut page = vec![0u8; 4096];
            page[..2].copy_from_slice(b"ab");
            backend.write(0, &page).expect("write");
            backend.sync_data().expect("sync"); // a record holding 2 of the page's bytes
            let block = usize::try_from(BLOCK_BYTES).expect("block");
            let record = disks.journal.platter().durable[block..2 * block].to_vec();
            let payload_bytes = u32::from_le_bytes(record[24..28].try_into().expect("4"));
            assert_eq!(payload_bytes as usize, OP_WRITE_HEADER_BYTES + 2);
        }
        disks.crash();
        assert_eq!(
            disks.main_bytes(0, 3),
            [0xff, 0xff, 0xff],
            "lost with the crash"
        );
        let _backend = disks.open();
        let mut expected = vec![0u8; 4096];
        expected[..2].copy_from_slice(b"ab");
        assert_eq!(disks.main_bytes(0, 4096), expected);
    }
}
