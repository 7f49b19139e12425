//! The page journal of format 2's first log databases (sessions 9 and 10), read once to
//! upgrade a data dir left by a crash.
//!
//! That journal (`log.journal`) held, per durable commit of `log.redb`, a copy of every page
//! write redb had made since the previous one; the file itself was synced only at checkpoints.
//! A directory such a build left after a clean stop holds nothing to replay (its close
//! checkpointed). After a crash, the records of the generation starting at offset 0 must be
//! written into `log.redb` before redb opens it, or `log.redb` lacks its newest durable
//! commits. [`replay_if_present`] does that, syncs `log.redb`, and clears the journal's first
//! block so the records are never replayed again; the file then becomes the log's journal of
//! operations (`journal.rs`), whose records carry a different magic.
//!
//! Record layout (little-endian), each starting on a [`BLOCK_BYTES`] boundary:
//! `magic u32, crc32 u32, generation u64, sequence u64, payload_bytes u32, ops u32`, then the
//! payload: per op `kind u8` and either `offset u64, bytes u32, stored u32, data` (a write of
//! `bytes` bytes whose first `stored` are in `data` and the rest are zeroes) or `len u64` (a
//! resize). The crc covers everything after itself up to the payload's end.

use redb::StorageBackend;

use crate::journal::{BLOCK_BYTES, RECORD_HEADER_BYTES, block_round_up};

type BackendIoError = std::io::Error;

/// "APNJ" little-endian: the page journal's records.
pub(crate) const PAGE_RECORD_MAGIC: u32 = 0x4a4e_5041;
/// The page journal's cap on one record's payload.
const RECORD_PAYLOAD_BYTES_MAX: usize = 2 * 1024 * 1024;
const OP_WRITE: u8 = 1;
const OP_SET_LEN: u8 = 2;
const RECORD_MAGIC: u32 = PAGE_RECORD_MAGIC;

/// If `journal` starts with a page-journal record, replays that generation's records into
/// `main`, syncs it, and zeroes the journal's first block (synced). Returns the records
/// replayed. A journal of any other kind (or none) is left alone.
pub(crate) fn replay_if_present(
    main: &impl StorageBackend,
    journal: &impl StorageBackend,
) -> Result<u64, BackendIoError> {
    if journal.len()? < BLOCK_BYTES {
        return Ok(0);
    }
    let mut magic = [0u8; 4];
    journal.read(0, &mut magic)?;
    if u32::from_le_bytes(magic) != PAGE_RECORD_MAGIC {
        return Ok(0);
    }
    let replayed = replay(main, journal)?;
    main.sync_data()?;
    journal.write(0, &vec![0u8; aspen_core::convert::usize_from(BLOCK_BYTES)])?;
    journal.sync_data()?;
    if replayed.records > 0 {
        tracing::info!(
            records = replayed.records,
            "log.redb: replayed the page journal a crash left"
        );
    }
    Ok(replayed.records)
}

struct Replay {
    records: u64,
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
    Ok(Replay { records })
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

#[cfg(test)]
mod tests {
    #![allow(
        clippy::expect_used,
        reason = "a test: a failed expect is a failed test"
    )]

    use redb::backends::InMemoryBackend;

    use super::*;

    /// A page-journal record as those builds wrote it.
    fn record(generation: u64, sequence: u64, ops: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&PAGE_RECORD_MAGIC.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&generation.to_le_bytes());
        out.extend_from_slice(&sequence.to_le_bytes());
        out.extend_from_slice(&u32::try_from(payload.len()).expect("len").to_le_bytes());
        out.extend_from_slice(&ops.to_le_bytes());
        out.extend_from_slice(payload);
        let crc = crc32fast::hash(&out[8..]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        out.resize(
            usize::try_from(block_round_up(out.len() as u64)).expect("len"),
            0,
        );
        out
    }

    fn write_op(offset: u64, bytes: u32, stored: &[u8]) -> Vec<u8> {
        let mut op = vec![OP_WRITE];
        op.extend_from_slice(&offset.to_le_bytes());
        op.extend_from_slice(&bytes.to_le_bytes());
        op.extend_from_slice(&u32::try_from(stored.len()).expect("len").to_le_bytes());
        op.extend_from_slice(stored);
        op
    }

    #[test]
    fn a_page_journal_left_by_a_crash_is_replayed_once_and_cleared() {
        let main = InMemoryBackend::new();
        main.set_len(16384).expect("len");
        let journal = InMemoryBackend::new();
        journal.set_len(16 * BLOCK_BYTES).expect("len");
        let generation = 77;
        journal
            .write(0, &record(generation, 0, 0, &[]))
            .expect("write");
        journal
            .write(
                BLOCK_BYTES,
                &record(generation, 1, 1, &write_op(8192, 4096, b"page")),
            )
            .expect("write");
        // A torn third record: not replayed.
        let mut torn = record(generation, 2, 1, &write_op(0, 4, b"torn"));
        torn[40] ^= 0xff;
        journal.write(2 * BLOCK_BYTES, &torn).expect("write");

        // The generation's empty first record and the write.
        assert_eq!(replay_if_present(&main, &journal).expect("replay"), 2);
        let mut page = [0u8; 8];
        main.read(8192, &mut page).expect("read");
        assert_eq!(&page, b"page\0\0\0\0");
        let mut start = [0u8; 4];
        main.read(0, &mut start).expect("read");
        assert_eq!(start, [0; 4], "the torn record was replayed");
        let mut first = [0u8; 4];
        journal.read(0, &mut first).expect("read");
        assert_eq!(first, [0; 4], "the journal's first block was not cleared");
        // A second open finds nothing to replay.
        assert_eq!(replay_if_present(&main, &journal).expect("replay"), 0);
    }

    #[test]
    fn a_journal_of_another_kind_is_left_alone() {
        let main = InMemoryBackend::new();
        let journal = InMemoryBackend::new();
        journal.set_len(4 * BLOCK_BYTES).expect("len");
        journal.write(0, b"APNL").expect("write");
        assert_eq!(replay_if_present(&main, &journal).expect("replay"), 0);
        let mut first = [0u8; 4];
        journal.read(0, &mut first).expect("read");
        assert_eq!(&first, b"APNL");
    }
}
