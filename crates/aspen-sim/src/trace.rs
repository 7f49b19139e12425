//! The run's trace: a hash of every network delivery decision and every client result, in
//! the order they happened, plus the last few events in words for a failure report. Two runs
//! of one seed are deterministic exactly when their trace hashes match.

use std::collections::VecDeque;

use crate::limits::TRACE_TAIL_EVENTS_MAX;

/// FNV-1a over 64-bit words: stable across platforms and Rust versions, unlike `DefaultHasher`.
#[derive(Debug, Clone)]
pub struct Trace {
    hash: u64,
    events: u64,
    tail: VecDeque<String>,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Default for Trace {
    fn default() -> Self {
        Trace {
            hash: FNV_OFFSET,
            events: 0,
            tail: VecDeque::with_capacity(TRACE_TAIL_EVENTS_MAX),
        }
    }
}

impl Trace {
    /// Adds one event: its words go into the hash; `describe` is only called to keep the tail.
    pub fn record(&mut self, words: &[u64], describe: impl FnOnce() -> String) {
        for word in words {
            for byte in word.to_le_bytes() {
                self.hash ^= u64::from(byte);
                self.hash = self.hash.wrapping_mul(FNV_PRIME);
            }
        }
        self.events += 1;
        if print_every_event() {
            eprintln!("trace {:016x} {}", self.hash, describe());
            return;
        }
        if self.tail.len() == TRACE_TAIL_EVENTS_MAX {
            self.tail.pop_front();
        }
        self.tail.push_back(describe());
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn tail(&self) -> impl Iterator<Item = &String> {
        self.tail.iter()
    }
}

/// `ASPEN_SIM_TRACE=1` prints every event to stderr as it happens, with the hash so far:
/// diffing two runs' output finds the first event where they part.
fn print_every_event() -> bool {
    static PRINT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRINT.get_or_init(|| std::env::var_os("ASPEN_SIM_TRACE").is_some_and(|v| v == "1"))
}

/// Hashes bytes (keys, values) into one word for a trace event.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}
