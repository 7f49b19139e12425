//! The entry points: check a whole history, or split it by key and check each part, and say
//! what was found as a [`Verdict`].

use std::collections::BTreeMap;
use std::fmt;

use crate::explain::{Explanation, explain};
use crate::history::History;
use crate::kv::{KvHistory, KvModel};
use crate::limits::{CACHE_BYTES_MAX_DEFAULT, STATES_EXPLORED_MAX_DEFAULT, TIME_BUDGET_MS_DEFAULT};
use crate::model::{Model, PartitionedModel};
use crate::search::{Budget, Exhausted, Outcome, search};

/// How much a check may spend before it answers [`Verdict::Unknown`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckConfig {
    /// Most distinct configurations (linearized set, model state) explored per partition.
    pub states_explored_max: u64,
    /// Wall-clock budget for the whole check, all partitions together. The clock is read
    /// every few thousand steps, so a check may overrun it by a few milliseconds.
    pub time_budget_ms: u64,
    /// Most estimated bytes one partition's memoization cache may hold (an estimate: it
    /// counts entries and the state's reported heap bytes, not the table's spare capacity).
    pub cache_bytes_max: u64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            states_explored_max: STATES_EXPLORED_MAX_DEFAULT,
            time_budget_ms: TIME_BUDGET_MS_DEFAULT,
            cache_bytes_max: CACHE_BYTES_MAX_DEFAULT,
        }
    }
}

/// What a check found. `K` names a partition: the key for a partitioned check, `()` for a
/// whole-history check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<K> {
    /// Some order of the operations, consistent with real time, explains every output.
    Linearizable,
    /// No order explains the outputs of the sub-history of `key`.
    NotLinearizable { key: K, explanation: Explanation },
    /// A limit was reached first. Never read this as "ok".
    Unknown { reason: UnknownReason },
}

impl<K> Verdict<K> {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }

    pub fn is_not_linearizable(&self) -> bool {
        matches!(self, Verdict::NotLinearizable { .. })
    }
}

/// Which limit stopped a check, and in which partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnknownReason {
    StatesExploredMax {
        partition: String,
        states_explored_max: u64,
    },
    CacheBytesMax {
        partition: String,
        cache_bytes_max: u64,
    },
    TimeBudgetExceeded {
        partition: String,
        time_budget_ms: u64,
        elapsed_ms: u64,
    },
}

impl fmt::Display for UnknownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnknownReason::StatesExploredMax {
                partition,
                states_explored_max,
            } => write!(
                f,
                "{partition}: explored more than {states_explored_max} states without deciding"
            ),
            UnknownReason::CacheBytesMax {
                partition,
                cache_bytes_max,
            } => write!(
                f,
                "{partition}: memoization cache grew past {cache_bytes_max} bytes without deciding"
            ),
            UnknownReason::TimeBudgetExceeded {
                partition,
                time_budget_ms,
                elapsed_ms,
            } => write!(
                f,
                "{partition}: time budget of {time_budget_ms} ms exceeded after {elapsed_ms} ms"
            ),
        }
    }
}

const WHOLE_HISTORY: &str = "whole history";

/// Checks `history` against `M` as one object, from `M::init()`.
pub fn check<M: Model>(
    history: &History<M::Input, M::Output>,
    config: &CheckConfig,
) -> Verdict<()> {
    check_from::<M>(history, M::init(), config)
}

/// Checks `history` against `M` as one object, from `init`: for a store that held data
/// before the recorded run began.
pub fn check_from<M: Model>(
    history: &History<M::Input, M::Output>,
    init: M::State,
    config: &CheckConfig,
) -> Verdict<()> {
    let budget = Budget::new(config);
    let ops: Vec<usize> = (0..history.len()).collect();
    match search::<M>(history, &ops, init, &budget) {
        Outcome::Linearizable => Verdict::Linearizable,
        Outcome::NotLinearizable(failure) => Verdict::NotLinearizable {
            key: (),
            explanation: explain::<M>(history, &ops, failure, WHOLE_HISTORY),
        },
        Outcome::Exhausted(exhausted) => Verdict::Unknown {
            reason: unknown_reason(exhausted, WHOLE_HISTORY.to_string(), config),
        },
    }
}

/// Checks `history` key by key (see [`PartitionedModel`] for why that is exact), in key
/// order, each key from `M::init()`. The first key found not linearizable decides; a key
/// that exhausts its state or memory bound makes the answer `Unknown` unless a later key is
/// found not linearizable; running out of time stops the check.
pub fn check_partitioned<M: PartitionedModel>(
    history: &History<M::Input, M::Output>,
    config: &CheckConfig,
) -> Verdict<M::Key> {
    let budget = Budget::new(config);
    let mut partitions: BTreeMap<M::Key, Vec<usize>> = BTreeMap::new();
    for (index, operation) in history.ops().iter().enumerate() {
        let key = M::partition_key(&operation.input);
        partitions.entry(key).or_default().push(index);
    }
    let mut first_unknown: Option<UnknownReason> = None;
    for (key, ops) in partitions {
        let partition = format!("key {}", M::describe_key(&key));
        match search::<M>(history, &ops, M::init(), &budget) {
            Outcome::Linearizable => {}
            Outcome::NotLinearizable(failure) => {
                let explanation = explain::<M>(history, &ops, failure, &partition);
                return Verdict::NotLinearizable { key, explanation };
            }
            Outcome::Exhausted(exhausted) => {
                let reason = unknown_reason(exhausted, partition, config);
                if matches!(exhausted, Exhausted::TimeBudget { .. }) {
                    return Verdict::Unknown { reason };
                }
                first_unknown.get_or_insert(reason);
            }
        }
    }
    match first_unknown {
        Some(reason) => Verdict::Unknown { reason },
        None => Verdict::Linearizable,
    }
}

/// Checks a key-value history key by key: [`check_partitioned`] with [`KvModel`].
pub fn check_kv(history: &KvHistory, config: &CheckConfig) -> Verdict<Vec<u8>> {
    check_partitioned::<KvModel>(history, config)
}

fn unknown_reason(exhausted: Exhausted, partition: String, config: &CheckConfig) -> UnknownReason {
    match exhausted {
        Exhausted::StatesExploredMax => UnknownReason::StatesExploredMax {
            partition,
            states_explored_max: config.states_explored_max,
        },
        Exhausted::CacheBytesMax => UnknownReason::CacheBytesMax {
            partition,
            cache_bytes_max: config.cache_bytes_max,
        },
        Exhausted::TimeBudget { elapsed_ms } => UnknownReason::TimeBudgetExceeded {
            partition,
            time_budget_ms: config.time_budget_ms,
            elapsed_ms,
        },
    }
}
