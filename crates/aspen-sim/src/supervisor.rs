//! The process supervisor every node runs under in production (systemd, Kubernetes), and the
//! disk-fault check: a node whose disk failed an fsync must stop (its Raft core ends with a
//! fatal storage error) within `DISK_FAULT_STOP_MS_MAX`, never carry on as if the write had
//! landed. A full disk (a refused growth) may stop the node or fail just the request that
//! needed the room (a node outside the membership has no log to fail); either is fine. The supervisor sees the stopped node, takes its process down
//! (unsynced bytes lost, as the strict crash model has it) and restarts it once its disk has
//! room, after `SUPERVISOR_RESTART_DELAY_MS`. A node whose Raft stops with no disk fault to
//! explain it fails the seed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aspen_core::NodeId;

use crate::cluster::Cluster;
use crate::limits::{DISK_FAULT_STOP_MS_MAX, SUPERVISOR_RESTART_DELAY_MS, SUPERVISOR_TICK_MS};

/// Failures the supervisor reports in words; the rest are counted.
const SUPERVISOR_FAILURES_MAX: usize = 8;

/// What the supervisor saw.
#[derive(Debug, Clone, Default)]
pub struct SupervisorLog {
    /// Nodes it found stopped after a disk fault, took down and restarted (or tried to).
    pub stops_after_disk_fault: u64,
    pub restarts: u64,
    pub failures: Vec<String>,
    pub failures_more: u64,
}

impl SupervisorLog {
    fn fail(&mut self, failure: String) {
        if self.failures.len() < SUPERVISOR_FAILURES_MAX {
            self.failures.push(failure);
        } else {
            self.failures_more += 1;
        }
    }
}

/// Watches every node until `stop`.
pub async fn run_supervisor(cluster: Cluster, stop: Arc<AtomicBool>) -> SupervisorLog {
    let mut log = SupervisorLog::default();
    // Running nodes that hit a disk fault and have not stopped yet: since when (ms).
    let mut hit_since: BTreeMap<NodeId, u64> = BTreeMap::new();
    // Nodes it took down, to restart at (ms).
    let mut restart_at: BTreeMap<NodeId, u64> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(SUPERVISOR_TICK_MS)).await;
        let now_ms = cluster.net().now_ms();
        let running = cluster.running();
        hit_since.retain(|id, _| running.iter().any(|(r, _)| r == id));
        for (id, node) in running {
            let faults = cluster.disk_faults_hit(id);
            let failed_syncs = cluster.failed_syncs_hit(id);
            let stopped = node.raft_metrics().running_state.err();
            match (stopped, faults) {
                (Some(fatal), 0) => {
                    log.fail(format!(
                        "supervisor: node {id}'s Raft stopped with no disk fault to explain \
                         it: {fatal}"
                    ));
                    cluster.crash(id);
                    restart_at.insert(id, now_ms + SUPERVISOR_RESTART_DELAY_MS);
                }
                (Some(fatal), _) => {
                    log.stops_after_disk_fault += 1;
                    let word = crate::trace::hash_bytes(fatal.to_string().as_bytes());
                    cluster.net().record(&[11, id, word], || {
                        format!("supervisor: node {id} stopped after a disk fault: {fatal}")
                    });
                    cluster.crash(id);
                    hit_since.remove(&id);
                    restart_at.insert(id, now_ms + SUPERVISOR_RESTART_DELAY_MS);
                }
                (None, _) if failed_syncs == 0 => {}
                (None, _) => {
                    let since = *hit_since.entry(id).or_insert(now_ms);
                    if now_ms.saturating_sub(since) > DISK_FAULT_STOP_MS_MAX {
                        log.fail(format!(
                            "supervisor: node {id} still runs {} ms after its disk failed an \
                             fsync ({failed_syncs} failed): it carries on as if the write had \
                             landed",
                            now_ms - since
                        ));
                        // Reported once: take it down so that the run goes on.
                        cluster.crash(id);
                        hit_since.remove(&id);
                        restart_at.insert(id, now_ms + SUPERVISOR_RESTART_DELAY_MS);
                    }
                }
            }
        }
        let due: Vec<NodeId> = restart_at
            .iter()
            .filter(|(_, at)| **at <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let crashed = cluster.crashed().contains(&id);
            if !crashed {
                // Restarted already (by the nemesis or at healing).
                restart_at.remove(&id);
                continue;
            }
            if cluster.disks(id).is_some_and(|disks| disks.is_full()) {
                continue;
            }
            restart_at.remove(&id);
            log.restarts += 1;
            if let Err(e) = cluster.start(id).await {
                log.fail(format!(
                    "supervisor: restart of node {id} after a disk fault failed: {e}"
                ));
            }
        }
    }
    log
}
