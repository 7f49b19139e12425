//! A linearizability checker for histories of a key-value store, such as the ones Aspen's
//! test harnesses record against a cluster under faults.
//!
//! A harness records a [`History`]: for every client operation, when it was invoked, and
//! either when it returned and with what output, or that its outcome is unknown (a timeout,
//! a lost connection). The checker decides whether some total order of the operations that
//! respects real time (an operation that returned before another was invoked comes first)
//! explains every observed output under a sequential [`Model`]: the answer is a [`Verdict`].
//!
//! ```
//! use aspen_check::{CheckConfig, KvHistory, KvInput, KvOutput, check_kv};
//!
//! let mut history = KvHistory::new();
//! let put = history.invoke(1, KvInput::Put { key: b"k".to_vec(), value: b"v".to_vec() }, 0);
//! let get = history.invoke(2, KvInput::Get { key: b"k".to_vec() }, 5);
//! history.complete(put, KvOutput::Put, 10).unwrap();
//! history.complete(get, KvOutput::Get { value: None }, 12).unwrap(); // concurrent: ok
//! assert!(check_kv(&history, &CheckConfig::default()).is_linearizable());
//! ```
//!
//! # The algorithm
//!
//! **Wing & Gong (1993).** Lay out every operation's invocation ("call") and completion
//! ("return") as events in time order. Scan the events from the start. At a call, try to
//! *linearize* that operation now: apply it to the model state; if the model's output
//! matches what the client observed, remove the operation's call and return from the list,
//! remember the choice on a stack, and restart the scan at the front. At a return, the
//! operation that returned has not been linearized, yet every operation must take effect
//! before it returns: this order is stuck, so pop the last choice, restore the state and the
//! operation's events, and try the next call after it. An empty stack at a return means no
//! order works. Only operations whose call precedes every pending return are ever tried, so
//! every order built respects real time.
//!
//! **Lowe (2017).** The scan may reach the same configuration (the set of linearized
//! operations, the model state) by many orders; what can follow depends only on the
//! configuration. A cache of configurations already explored prunes every repeat, which
//! turns the factorial search into one bounded by the distinct configurations. The set is a
//! bitset over the partition's operations.
//!
//! **Indeterminate operations** return at +infinity with an unknown output, so any output
//! matches and they never block the scan. Once every operation with a known output is
//! linearized, the search succeeds: the remaining indeterminate ones may take effect after
//! everything else, which no one observes, the same as never.
//!
//! **Partitioning (P-compositionality).** Linearizability is local (Herlihy & Wing, 1990):
//! a history over independent objects is linearizable exactly when each object's
//! sub-history is. With [`KvModel`] every operation touches one key and keys do not
//! interact, so [`check_kv`] checks each key's sub-history on its own, which keeps each
//! search small. This is only valid while every operation touches exactly one key and its
//! output depends only on that key: range reads, multi-key transactions or outputs that
//! carry the store-wide revision ([`RevisionedKvModel`]) couple keys, and such histories must
//! be checked whole with [`check`].
//!
//! **Bounds.** The search runs on an explicit stack (its depth is at most the number of
//! operations in the partition), and a [`CheckConfig`] bounds the configurations explored,
//! the cache's estimated memory and the wall-clock time. When a bound is hit the answer is
//! [`Verdict::Unknown`], never a false "linearizable".
//!
//! **Explanations.** The search remembers the furthest return it was ever stuck at. The
//! history cut just after that return is the smallest failing prefix (getting past an
//! earlier return on some path means that path linearizes the prefix cut there), and that
//! return's operation is the one that cannot be linearized; the [`Explanation`] names it,
//! its client and times, the model states the search stood in there, and the operations
//! leading up to it.

mod bitset;
mod check;
mod explain;
pub mod history;
pub mod kv;
pub mod limits;
pub mod model;
mod search;

pub use check::{
    CheckConfig, UnknownReason, Verdict, check, check_from, check_kv, check_partitioned,
};
pub use explain::Explanation;
pub use history::{Completion, History, HistoryError, OpId, Operation};
pub use kv::{
    KvHistory, KvInput, KvModel, KvOutput, KvState, RevisionedKvModel, RevisionedKvOutput,
    RevisionedKvState,
};
pub use model::{Model, PartitionedModel};
