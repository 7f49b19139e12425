//! Linearizability of the clients' history, by `aspen_check` (per key: every request of the
//! workload touches one key).

use aspen_check::{CheckConfig, KvHistory, Verdict, check_kv};

use crate::limits::CHECK_TIME_BUDGET_MS;

pub fn check(history: &KvHistory) -> Vec<String> {
    let config = CheckConfig {
        time_budget_ms: CHECK_TIME_BUDGET_MS,
        ..CheckConfig::default()
    };
    match check_kv(history, &config) {
        Verdict::Linearizable => Vec::new(),
        Verdict::NotLinearizable { key, explanation } => vec![format!(
            "not linearizable on key {:?}:\n{explanation}",
            String::from_utf8_lossy(&key)
        )],
        // A bound hit is not a pass: the seed is reported so a person looks at it.
        Verdict::Unknown { reason } => vec![format!("linearizability unknown: {reason}")],
    }
}
