//! What one `StateMachine::apply_entries` call costs, by batch size: fills a redb store with
//! `KEYS` keys (256-byte values, batches of 1,024), then applies 20,000 overwrites of random
//! keys in batches of each size in `BATCHES`, and prints wall time and process CPU (user +
//! system, from `/proc/self/stat`) per put. CPU is the figure to read on a shared machine.
//!
//! Run: `KEYS=1000000 BATCHES=1,8,32,128 cargo run --release -p aspen-storage --example apply_cost`
//! (defaults: 100,000 keys; batches 1, 8, 32 and 128). Linux only (`/proc`).

use std::time::Instant;

use aspen_core::limits::Limits;
use aspen_core::type_config::alias::{Entry, LogId};
use aspen_core::{Command, PutRequest, TypeConfig};
use aspen_storage::{StorageBackend, open_storage};
use openraft::EntryPayload;

const KEYS_DEFAULT: u64 = 100_000;
const FILL_BATCH_ENTRIES: u64 = 1024;
const PUTS_PER_BATCH_SIZE: u64 = 20_000;
const VALUE_BYTES: usize = 256;
/// `/proc`'s clock ticks per second: Linux's user-visible HZ, 100 on every architecture Rust
/// targets.
const USER_HZ: f64 = 100.0;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

fn log_id(index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(1, 1, index)
}

/// The `n`th key: 16 hex digits of a bijective mix of `n` (unique keys in random order).
fn key_of(n: u64) -> Vec<u8> {
    let mut x = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    format!("{x:016x}").into_bytes()
}

fn put_entry(index: u64, key: Vec<u8>) -> Entry {
    openraft::Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Command::Put(PutRequest {
            key,
            value: vec![b'v'; VALUE_BYTES],
            ..Default::default()
        })),
    }
}

/// This process's CPU time (user + system) in microseconds.
fn process_cpu_us() -> BenchResult<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .ok_or("no ')' in /proc/self/stat")?
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks * 1e6 / USER_HZ)
}

fn env_u64s(name: &str, default: &[u64]) -> BenchResult<Vec<u64>> {
    match std::env::var(name) {
        Ok(text) => Ok(text
            .split(',')
            .map(|part| part.trim().parse::<u64>())
            .collect::<Result<_, _>>()?),
        Err(_) => Ok(default.to_vec()),
    }
}

fn main() -> BenchResult<()> {
    // The state machine's apply does not need a runtime's threads, but its notifications are
    // tokio's: run it as the server does, inside one.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async { run() })
}

fn run() -> BenchResult<()> {
    let keys = env_u64s("KEYS", &[KEYS_DEFAULT])?[0];
    let batches = env_u64s("BATCHES", &[1, 8, 32, 128])?;
    assert!(keys > 0 && batches.iter().all(|&b| b > 0 && b <= PUTS_PER_BATCH_SIZE));
    let dir = tempfile::tempdir()?;
    let backend = StorageBackend::Redb {
        dir: dir.path().join("store"),
    };
    let (_log, state_machine) = open_storage(&backend, Limits::default())?;
    let mut index = 0u64;
    let mut filled = 0u64;
    while filled < keys {
        let count = FILL_BATCH_ENTRIES.min(keys - filled);
        let batch: Vec<Entry> = (0..count)
            .map(|_| {
                index += 1;
                filled += 1;
                put_entry(index, key_of(filled))
            })
            .collect();
        state_machine.apply_entries(&batch)?;
    }
    println!("filled {keys} keys");
    for &batch_entries in &batches {
        let rounds = PUTS_PER_BATCH_SIZE / batch_entries;
        let puts = (rounds * batch_entries) as f64;
        let started = Instant::now();
        let cpu_before_us = process_cpu_us()?;
        for round in 0..rounds {
            let batch: Vec<Entry> = (0..batch_entries)
                .map(|i| {
                    index += 1;
                    // Overwrites spread over the whole key space.
                    let n = (round * batch_entries + i).wrapping_mul(7919) % keys + 1;
                    put_entry(index, key_of(n))
                })
                .collect();
            state_machine.apply_entries(&batch)?;
        }
        let wall_us = started.elapsed().as_secs_f64() * 1e6;
        let cpu_us = process_cpu_us()? - cpu_before_us;
        println!(
            "batch {batch_entries:>4}: wall {:>7.1} us/put, cpu {:>6.1} us/put",
            wall_us / puts,
            cpu_us / puts
        );
    }
    Ok(())
}
