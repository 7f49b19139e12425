//! Histories generated from the model itself, so their answer is known: a sequential run
//! whose operation intervals are then widened around their linearization points stays
//! linearizable; corrupting one read to a value no one wrote makes it not linearizable.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use aspen_check::{
    CheckConfig, Completion, KvHistory, KvInput, KvModel, KvOutput, KvState, OpId, Verdict, check,
    check_kv,
};
use common::operation;
use proptest::prelude::*;

/// Gap between consecutive linearization points.
const POINT_SPACING_NS: u64 = 100;
/// How far an interval may extend on either side of its point: up to ~5 ops overlap.
const WIDEN_NS_MAX: u64 = 250;
const CORRUPT_VALUE: &[u8] = b"never written";

#[derive(Debug, Clone)]
enum Request {
    Put {
        key: u8,
        value: u8,
    },
    Get {
        key: u8,
    },
    Delete {
        key: u8,
    },
    Cas {
        key: u8,
        expected: Option<u8>,
        new: u8,
    },
}

#[derive(Debug, Clone)]
struct Step {
    request: Request,
    client_id: u64,
    invoke_early_ns: u64,
    return_late_ns: u64,
    /// 0: the client saw the result; 1: it gave up but the op took effect; 2: it gave up
    /// and the op never took effect.
    fate: u8,
}

fn key_bytes(key: u8) -> Vec<u8> {
    format!("k{key}").into_bytes()
}

fn value_bytes(value: u8) -> Vec<u8> {
    format!("v{value}").into_bytes()
}

fn request() -> impl Strategy<Value = Request> {
    let key = 0..3u8;
    let value = 0..4u8;
    prop_oneof![
        3 => (key.clone(), value.clone()).prop_map(|(key, value)| Request::Put { key, value }),
        4 => key.clone().prop_map(|key| Request::Get { key }),
        1 => key.clone().prop_map(|key| Request::Delete { key }),
        2 => (key, proptest::option::of(value.clone()), value)
            .prop_map(|(key, expected, new)| Request::Cas { key, expected, new }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let fate = prop_oneof![16 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)];
    (request(), 0..5u64, 0..=WIDEN_NS_MAX, 0..=WIDEN_NS_MAX, fate).prop_map(
        |(request, client_id, invoke_early_ns, return_late_ns, fate)| Step {
            request,
            client_id,
            invoke_early_ns,
            return_late_ns,
            fate,
        },
    )
}

fn input(request: &Request) -> KvInput {
    match *request {
        Request::Put { key, value } => KvInput::Put {
            key: key_bytes(key),
            value: value_bytes(value),
        },
        Request::Get { key } => KvInput::Get {
            key: key_bytes(key),
        },
        Request::Delete { key } => KvInput::Delete {
            key: key_bytes(key),
        },
        Request::Cas { key, expected, new } => KvInput::Cas {
            key: key_bytes(key),
            expected: expected.map(value_bytes),
            new: value_bytes(new),
        },
    }
}

/// Runs `steps` one after another on the model, the i-th taking effect at a point i
/// spacings in, then widens each interval around its point (which keeps that sequential
/// order a valid witness) and records the result.
fn linearizable_history(steps: &[Step]) -> KvHistory {
    let mut state = KvState::default();
    let mut history = KvHistory::new();
    for (index, step) in steps.iter().enumerate() {
        let point_ns = WIDEN_NS_MAX + POINT_SPACING_NS * index as u64;
        let input = input(&step.request);
        let completion = match step.fate {
            0 => Completion::Returned {
                output: state.apply(&input),
                at_ns: point_ns + step.return_late_ns,
            },
            1 => {
                state.apply(&input);
                Completion::Indeterminate
            }
            _ => Completion::Indeterminate,
        };
        let invoke_ns = point_ns - step.invoke_early_ns;
        history
            .push(operation(step.client_id, input, invoke_ns, completion))
            .expect("generated history is well formed");
    }
    history
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn widened_sequential_histories_are_linearizable(steps in prop::collection::vec(step(), 0..40)) {
        let history = linearizable_history(&steps);
        let verdict = check_kv(&history, &CheckConfig::default());
        prop_assert!(verdict.is_linearizable(), "{:#?}", verdict);
        let whole = check::<KvModel>(&history, &CheckConfig::default());
        prop_assert!(whole.is_linearizable(), "{:#?}", whole);
    }

    #[test]
    fn a_read_of_a_value_never_written_is_caught(
        steps in prop::collection::vec(step(), 1..40),
        which in any::<prop::sample::Index>(),
    ) {
        let mut history = linearizable_history(&steps);
        // Make one observed read return a value no one ever wrote.
        let reads: Vec<usize> = (0..history.len())
            .filter(|&i| {
                let operation = &history.ops()[i];
                matches!(operation.input, KvInput::Get { .. }) && operation.output().is_some()
            })
            .collect();
        prop_assume!(!reads.is_empty());
        let target = reads[which.index(reads.len())];
        let mut rebuilt = KvHistory::new();
        for (index, mut operation) in history.ops().iter().cloned().enumerate() {
            if index == target
                && let Completion::Returned { output, .. } = &mut operation.completion
            {
                *output = KvOutput::Get { value: Some(CORRUPT_VALUE.to_vec()) };
            }
            rebuilt.push(operation).expect("same times as before");
        }
        history = rebuilt;
        let corrupted_key = history.ops()[target].input.key().to_vec();
        match check_kv(&history, &CheckConfig::default()) {
            Verdict::NotLinearizable { key, explanation } => {
                prop_assert_eq!(key, corrupted_key);
                // No state ever holds the value, so nothing gets past that read's return, while
                // the original order still linearizes every shorter prefix (a read changes no
                // state, and a prefix may leave it pending).
                prop_assert_eq!(explanation.failing_op, OpId(u32::try_from(target).expect("a small history")));
            }
            other => prop_assert!(false, "expected not linearizable, got {:#?}", other),
        }
    }
}
