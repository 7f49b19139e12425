//! A client that compacts the store close to its head now and then, as an operator's
//! auto-compaction does, while the watchers resume: a watcher that comes back below the
//! compaction point is cancelled as compacted and must resume at the compact revision.
//!
//! Before it asks for a compaction at revision R it captures, on the node it asks, the
//! history up to R (`history.rs`): that node has applied R, so every revision up to it is
//! committed and final, and nobody compacts past what was captured. The checks read the rest
//! of the history from a converged replica.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aspen_core::{Command, CommandResult};

use crate::cluster::Cluster;
use crate::history::HistoryTap;
use crate::limits::{
    CLIENT_TIMEOUT_MS, COMPACT_BEHIND_HEAD_MAX, COMPACT_INTERVAL_MS_MAX, COMPACT_INTERVAL_MS_MIN,
    COMPACTIONS_MAX,
};
use crate::rng::SimRng;

/// What the compactor asked for and was told.
#[derive(Debug, Clone, Default)]
pub struct CompactLog {
    /// Every revision it asked to compact at (acknowledged or not), increasing.
    pub requested: Vec<u64>,
    pub acked: u64,
    /// Capture failures and unexpected answers, in words.
    pub problems: Vec<String>,
}

/// The history tap shared by the compactor and the final checks.
pub type SharedTap = Arc<Mutex<HistoryTap>>;

pub fn lock_tap(tap: &SharedTap) -> std::sync::MutexGuard<'_, HistoryTap> {
    tap.lock().unwrap_or_else(|p| p.into_inner())
}

/// Compacts until `stop`, at most `COMPACTIONS_MAX` times.
pub async fn run_compactor(
    cluster: Cluster,
    stop: Arc<AtomicBool>,
    mut rng: SimRng,
    tap: SharedTap,
) -> CompactLog {
    let mut log = CompactLog::default();
    for _ in 0..COMPACTIONS_MAX {
        let pause = rng.between(COMPACT_INTERVAL_MS_MIN, COMPACT_INTERVAL_MS_MAX);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let running = cluster.running();
        let candidates: Vec<_> = match cluster.members() {
            Some(members) => running
                .into_iter()
                .filter(|(id, _)| members.contains(id))
                .collect(),
            None => running,
        };
        if candidates.is_empty() {
            continue;
        }
        let (node_id, node) = rng.pick(&candidates).clone();
        let Ok(applied) = node.reader().applied_state() else {
            continue;
        };
        let last = log.requested.last().copied().unwrap_or(1);
        let behind = rng.below(COMPACT_BEHIND_HEAD_MAX + 1);
        let revision = applied.revision.saturating_sub(behind);
        if revision <= last {
            continue;
        }
        if let Err(e) = lock_tap(&tap).capture(&node, revision) {
            // The node crashed under the capture, most likely: no compaction this time.
            if cluster.running().iter().any(|(id, _)| *id == node_id) {
                log.problems.push(format!(
                    "compactor: capturing history through {revision} on running node \
                     {node_id}: {e}"
                ));
            }
            continue;
        }
        log.requested.push(revision);
        let physical = rng.below(2) == 0;
        let command = Command::Compact { revision, physical };
        cluster.net().record(&[10, node_id, revision], || {
            format!("compactor: compact at {revision} on node {node_id}")
        });
        let timeout = Duration::from_millis(CLIENT_TIMEOUT_MS);
        if let Ok(Ok(response)) = tokio::time::timeout(timeout, node.write(command)).await {
            match response.result {
                Ok(CommandResult::Compact) => log.acked += 1,
                other => log.problems.push(format!(
                    "compactor: compact at {revision} answered {other:?}"
                )),
            }
        }
    }
    log
}
