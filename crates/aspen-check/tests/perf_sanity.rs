//! A realistically sized history (5 clients, 2000 operations, 5 keys) decides well within
//! the default budget. The time is not asserted, only that the answer is decided and right.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use std::time::Instant;

use aspen_check::{CheckConfig, Completion, KvHistory, KvInput, KvState, Verdict, check_kv};
use common::{Rng, operation};

const CLIENTS: u64 = 5;
const CLIENTS_USIZE: usize = 5;
const _: () = assert!(CLIENTS_USIZE as u64 == CLIENTS);
const OPS: u64 = 2000;
const KEYS: u64 = 5;

struct Planned {
    client_id: u64,
    invoke_ns: u64,
    return_ns: u64,
    point_ns: u64,
    /// The client gave up on it; it still takes effect unless `dropped`.
    indeterminate: bool,
    dropped: bool,
}

/// Each client issues operations back to back with random gaps and durations; each takes
/// effect at a random point inside its interval.
fn plan(rng: &mut Rng) -> Vec<Planned> {
    let mut cursor_ns = [0u64; CLIENTS_USIZE];
    let mut planned = Vec::new();
    for index in 0..OPS {
        let client_id = index % CLIENTS;
        let invoke_ns =
            cursor_ns[usize::try_from(client_id).expect("below CLIENTS")] + rng.below(50);
        let return_ns = invoke_ns + 10 + rng.below(300);
        cursor_ns[usize::try_from(client_id).expect("below CLIENTS")] = return_ns;
        let indeterminate = rng.below(100) == 0;
        planned.push(Planned {
            client_id,
            invoke_ns,
            return_ns,
            point_ns: invoke_ns + rng.below(return_ns - invoke_ns + 1),
            indeterminate,
            dropped: indeterminate && rng.below(2) == 0,
        });
    }
    planned.sort_by_key(|p| p.point_ns);
    planned
}

/// Picks each request knowing the state at its point, so that many CASes succeed.
fn request(rng: &mut Rng, state: &KvState, sequence: u64) -> KvInput {
    let key = format!("key{}", rng.below(KEYS)).into_bytes();
    let value = format!("value{sequence}").into_bytes();
    match rng.below(10) {
        0..=2 => KvInput::Put { key, value },
        3..=6 => KvInput::Get { key },
        7 => KvInput::Delete { key },
        _ => {
            let current = state.entries.get(&key).cloned();
            let expected = if rng.below(2) == 0 {
                current
            } else {
                Some(b"stale".to_vec())
            };
            KvInput::Cas {
                key,
                expected,
                new: value,
            }
        }
    }
}

fn concurrent_history(seed: u64) -> KvHistory {
    let mut rng = Rng(seed);
    let mut state = KvState::default();
    let mut history = KvHistory::new();
    for (sequence, planned) in plan(&mut rng).into_iter().enumerate() {
        let input = request(&mut rng, &state, sequence as u64);
        let completion = if planned.dropped {
            Completion::Indeterminate
        } else {
            let output = state.apply(&input);
            if planned.indeterminate {
                Completion::Indeterminate
            } else {
                Completion::Returned {
                    output,
                    at_ns: planned.return_ns,
                }
            }
        };
        history
            .push(operation(
                planned.client_id,
                input,
                planned.invoke_ns,
                completion,
            ))
            .expect("generated history is well formed");
    }
    history
}

#[test]
fn five_clients_two_thousand_ops_five_keys() {
    for seed in [1, 2, 3] {
        let history = concurrent_history(seed);
        assert_eq!(history.len() as u64, OPS);
        let started = Instant::now();
        let verdict = check_kv(&history, &CheckConfig::default());
        println!(
            "seed {seed}: {:?} in {:?}",
            verdict.is_linearizable(),
            started.elapsed()
        );
        assert_eq!(verdict, Verdict::Linearizable);
    }
}
