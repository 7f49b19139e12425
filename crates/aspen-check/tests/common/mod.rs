//! Shorthands for writing key-value histories by hand in tests.

#![allow(dead_code)]

use aspen_check::{Completion, KvHistory, KvInput, KvOutput, OpId, Operation};

pub fn put(key: &str, value: &str) -> KvInput {
    KvInput::Put {
        key: key.into(),
        value: value.into(),
    }
}

pub fn get(key: &str) -> KvInput {
    KvInput::Get { key: key.into() }
}

pub fn delete(key: &str) -> KvInput {
    KvInput::Delete { key: key.into() }
}

pub fn cas(key: &str, expected: Option<&str>, new: &str) -> KvInput {
    KvInput::Cas {
        key: key.into(),
        expected: expected.map(Into::into),
        new: new.into(),
    }
}

pub fn got(value: Option<&str>) -> KvOutput {
    KvOutput::Get {
        value: value.map(Into::into),
    }
}

pub const PUT_OK: KvOutput = KvOutput::Put;

pub fn deleted(deleted: bool) -> KvOutput {
    KvOutput::Delete { deleted }
}

pub fn cas_ok(succeeded: bool) -> KvOutput {
    KvOutput::Cas { succeeded }
}

/// Records an operation that returned `output` over `[invoke_ns, return_ns]`.
pub fn op(
    history: &mut KvHistory,
    client_id: u64,
    input: KvInput,
    invoke_ns: u64,
    return_ns: u64,
    output: KvOutput,
) -> OpId {
    let id = history.invoke(client_id, input, invoke_ns);
    history
        .complete(id, output, return_ns)
        .expect("test history is well formed");
    id
}

/// Records an operation whose client gave up on it.
pub fn lost(history: &mut KvHistory, client_id: u64, input: KvInput, invoke_ns: u64) -> OpId {
    let id = history.invoke(client_id, input, invoke_ns);
    history
        .indeterminate(id)
        .expect("test history is well formed");
    id
}

/// A whole operation, for `History::push`.
pub fn operation(
    client_id: u64,
    input: KvInput,
    invoke_ns: u64,
    completion: Completion<KvOutput>,
) -> Operation<KvInput, KvOutput> {
    Operation {
        client_id,
        input,
        invoke_ns,
        completion,
    }
}

/// SplitMix64: a tiny deterministic generator, so tests need no extra dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (bias is irrelevant here).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}
