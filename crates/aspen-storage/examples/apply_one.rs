//! Cost of applying one entry per transaction, as a lone client's put is applied.
//!
//! Run: `cargo run --release -p aspen-storage --example apply_one -- [--puts N]` (default
//! 5,000). Prints the mean time per single-entry `apply_entries` on the redb backend, keys
//! overwritten at random over 10,000 keys.

use std::time::Instant;

use aspen_core::limits::Limits;
use aspen_core::{Command, PutRequest, TypeConfig};
use aspen_storage::{StorageBackend, open_storage};
use openraft::EntryPayload;

const PUTS_DEFAULT: u64 = 5_000;
const KEY_SPACE: u64 = 10_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let puts = match args.as_slice() {
        [] => PUTS_DEFAULT,
        [flag, n] if flag == "--puts" => n.parse()?,
        _ => return Err("usage: apply_one [--puts N]".into()),
    };
    let temp = tempfile::tempdir()?;
    let backend = StorageBackend::Redb {
        dir: temp.path().join("node"),
    };
    let (_log, sm) = open_storage(&backend, Limits::default())?;
    let value = vec![b'v'; 256];
    let started = Instant::now();
    for index in 1..=puts {
        let key = format!("key-{:08}", (index * 7919) % KEY_SPACE);
        let entry = openraft::Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
            payload: EntryPayload::Normal(Command::Put(PutRequest {
                key: key.into_bytes(),
                value: value.clone(),
                ..Default::default()
            })),
        };
        sm.apply_entries(&[entry])?;
    }
    let elapsed = started.elapsed();
    println!(
        "{puts} single-entry applies: {:.1} us each",
        elapsed.as_secs_f64() * 1e6 / puts as f64
    );
    Ok(())
}
