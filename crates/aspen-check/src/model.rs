//! The sequential specification a history is checked against: the [`Model`] trait, and the
//! [`PartitionedModel`] refinement that lets the checker split a history into independent parts.

use std::fmt::Debug;
use std::hash::Hash;

/// A deterministic sequential object: a state, and a total transition function that maps a
/// state and an input to the next state and the output a client would observe.
///
/// The checker explores states by value, so `State` must be cheap enough to clone and hash;
/// two states that compare equal must behave identically for every future input (the
/// memoization cache relies on it).
pub trait Model {
    /// Everything the object remembers between operations.
    type State: Clone + Hash + Eq + Debug;
    /// What a client asks for.
    type Input: Debug;
    /// What a client is told.
    type Output: Debug + PartialEq;

    /// The state before any operation.
    fn init() -> Self::State;

    /// Applies `input` to `state`: the next state and the output the operation returns.
    /// Must be a pure function of its arguments.
    fn step(state: &Self::State, input: &Self::Input) -> (Self::State, Self::Output);

    /// Whether an `observed` output is consistent with the `model_output` the specification
    /// produced. Equality by default; a model whose outputs carry fields a client may not
    /// have recorded (say, a revision) overrides it to ignore those fields.
    fn output_matches(model_output: &Self::Output, observed: &Self::Output) -> bool {
        model_output == observed
    }

    /// Heap bytes owned by `state`, for the memoization cache's memory estimate. Zero by
    /// default: a model whose state owns heap data should override it so that
    /// `CheckConfig::cache_bytes_max` bounds real memory.
    fn state_heap_bytes(state: &Self::State) -> u64 {
        let _ = state;
        0
    }
}

/// A model that is a product of independent objects, one per key, where every input touches
/// exactly one key.
///
/// Linearizability is local (Herlihy & Wing, 1990): a history of such a product is
/// linearizable if and only if each key's sub-history is linearizable on its own. The
/// checker uses this to search each key separately, which turns one search exponential in
/// the whole history's concurrency into many small ones.
///
/// Implementing this trait is a promise: for every input `i` with key `k`, `step` reads and
/// writes only the part of the state that belongs to `k`, and its output depends only on that
/// part. An input that spans keys (a range read, a multi-key transaction) or an output that
/// depends on global state (a store-wide revision) breaks the promise; such a model must be
/// checked whole with [`crate::check`] instead.
pub trait PartitionedModel: Model {
    /// What names one independent object.
    type Key: Clone + Ord + Debug;

    /// The one key `input` touches.
    fn partition_key(input: &Self::Input) -> Self::Key;

    /// A human-readable rendering of `key` for explanations.
    fn describe_key(key: &Self::Key) -> String {
        format!("{key:?}")
    }
}
