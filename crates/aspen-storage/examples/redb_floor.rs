//! The floor under `storage_bench`'s apply figure: raw redb inserts of the same keys, with
//! none of Aspen's code in the way.
//!
//! Run: `cargo run --release -p aspen-storage --example redb_floor -- [--keys N]`
//! (default 1,000,000). Each transaction inserts a batch of keys, exactly as the state
//! machine's apply does: a point lookup, then an insert, non-durable commits (redb
//! `Durability::None`), the same 16-byte pseudo-random hex keys and a 290-byte record (a
//! 256-byte value plus the per-key metadata). Two layouts are measured:
//!
//! - `one table`: key → record, as `kv_latest` stores it;
//! - `split`: key → 40-byte metadata, plus an append-only revision → record table, the layout
//!   etcd's bbolt uses (random inserts into a small tree, sequential into a large one).
//!
//! Whatever apply achieves is bounded by these figures; Aspen's own work per put (decoding,
//! encoding, lease checks) comes on top.

use std::time::Instant;

use redb::{Database, Durability, ReadableTable, TableDefinition};

const KEYS_DEFAULT: u64 = 1_000_000;
const KEYS_MAX: u64 = 100_000_000;
const BATCH_SIZES: [u64; 3] = [1024, 4096, 16384];
const RECORD_BYTES: usize = 290;
const META_BYTES: usize = 40;
const KEY_BYTES: usize = 16;

const LATEST: TableDefinition<&[u8], &[u8]> = TableDefinition::new("latest");
const BY_REVISION: TableDefinition<u64, &[u8]> = TableDefinition::new("by_revision");

#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    OneTable,
    Split,
}

/// The same key sequence as `storage_bench`: a bijective mix of `n`, as 16 hex digits.
fn key_of(n: u64) -> [u8; KEY_BYTES] {
    let mut x = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    let mut key = [0u8; KEY_BYTES];
    for (i, byte) in key.iter_mut().enumerate() {
        let nibble = ((x >> (60 - 4 * i)) & 0xf) as u8;
        *byte = if nibble < 10 {
            b'0' + nibble
        } else {
            b'a' + nibble - 10
        };
    }
    key
}

/// Inserts `keys` keys in batches of `batch`; returns (inserts/s, file bytes).
fn run(
    dir: &std::path::Path,
    layout: Layout,
    keys: u64,
    batch: u64,
) -> Result<(f64, u64), Box<dyn std::error::Error>> {
    assert!(batch > 0);
    let path = dir.join("floor.redb");
    let db = Database::create(&path)?;
    let record = vec![b'v'; RECORD_BYTES];
    let meta = vec![b'm'; META_BYTES];
    let started = Instant::now();
    let mut next = 0;
    while next < keys {
        let end = (next + batch).min(keys);
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::None)?;
        {
            let mut latest = txn.open_table(LATEST)?;
            let mut by_revision = txn.open_table(BY_REVISION)?;
            for n in next..end {
                let key = key_of(n);
                let existed = latest.get(key.as_slice())?.is_some();
                assert!(!existed, "keys are unique");
                match layout {
                    Layout::OneTable => {
                        latest.insert(key.as_slice(), record.as_slice())?;
                    }
                    Layout::Split => {
                        latest.insert(key.as_slice(), meta.as_slice())?;
                        by_revision.insert(n, record.as_slice())?;
                    }
                }
            }
        }
        txn.commit()?;
        next = end;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(db);
    let bytes = std::fs::metadata(&path)?.len();
    std::fs::remove_file(&path)?;
    Ok((keys as f64 / seconds, bytes))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let keys = match args.as_slice() {
        [] => KEYS_DEFAULT,
        [flag, n] if flag == "--keys" => n.parse()?,
        _ => return Err("usage: redb_floor [--keys N]".into()),
    };
    if keys == 0 || keys > KEYS_MAX {
        return Err(format!("--keys must be in 1..={KEYS_MAX}").into());
    }
    let dir = tempfile::Builder::new()
        .prefix("aspen-redb-floor-")
        .tempdir()?;
    let raw_bytes = keys * (KEY_BYTES + RECORD_BYTES) as u64;
    println!("redb floor: {keys} keys, {RECORD_BYTES}-byte records, non-durable commits");
    println!("layout    | batch | inserts/s | file/raw");
    for layout in [Layout::OneTable, Layout::Split] {
        for batch in BATCH_SIZES {
            let (rate, bytes) = run(dir.path(), layout, keys, batch)?;
            let name = match layout {
                Layout::OneTable => "one table",
                Layout::Split => "split",
            };
            println!(
                "{name:9} | {batch:5} | {rate:9.0} | {:.2}",
                bytes as f64 / raw_bytes as f64
            );
        }
    }
    Ok(())
}
