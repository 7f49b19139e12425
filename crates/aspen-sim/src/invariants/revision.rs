//! Revisions only move forward. On each replica incarnation, the applied revision and log
//! index never decrease; across replicas, one log index always means one revision; no state
//! ever seen is lost for good (the converged revision is at least every revision observed);
//! and acknowledged mutations got distinct revisions, ordered as they happened in real time.

use std::collections::BTreeMap;

use aspen_core::NodeId;

use crate::net::SimNet;
use crate::workload::AckedWrite;

/// Samples every running replica; keeps what it saw and what was wrong.
#[derive(Debug, Default)]
pub struct RevisionMonitor {
    /// Last (applied index, revision) per (node, incarnation).
    last: BTreeMap<(NodeId, u64), (u64, u64)>,
    /// The revision that follows applying each log index, as first observed, and where.
    revision_at_index: BTreeMap<u64, (u64, NodeId)>,
    pub revision_seen_max: u64,
    pub samples: u64,
    pub violations: Vec<String>,
}

impl RevisionMonitor {
    pub fn sample(&mut self, net: &SimNet) {
        for (id, incarnation, node) in net.running() {
            let state = match node.applied_state() {
                Ok(state) => state,
                // A node whose storage fails has crashed mid-read; its next sample will tell.
                Err(_) => continue,
            };
            let index = state.last_applied.as_ref().map_or(0, |l| l.index);
            self.samples += 1;
            self.observe(id, incarnation, index, state.revision);
        }
    }

    fn observe(&mut self, id: NodeId, incarnation: u64, index: u64, revision: u64) {
        self.revision_seen_max = self.revision_seen_max.max(revision);
        if let Some(&(last_index, last_revision)) = self.last.get(&(id, incarnation))
            && (index < last_index || revision < last_revision)
        {
            self.violations.push(format!(
                "node {id} (incarnation {incarnation}) went back from index {last_index} revision \
                 {last_revision} to index {index} revision {revision}"
            ));
        }
        self.last.insert((id, incarnation), (index, revision));
        if index == 0 {
            return;
        }
        match self.revision_at_index.get(&index) {
            Some(&(expected, first)) if expected != revision => self.violations.push(format!(
                "log index {index} gave revision {expected} on node {first} but {revision} on \
                 node {id}"
            )),
            Some(_) => {}
            None => {
                self.revision_at_index.insert(index, (revision, id));
            }
        }
    }
}

/// Acknowledged mutations have distinct revisions, and one that completed before another
/// was invoked has the smaller revision.
pub fn check_acked(acked: &[AckedWrite]) -> Vec<String> {
    let mut by_revision: Vec<&AckedWrite> = acked.iter().collect();
    by_revision.sort_by_key(|w| (w.revision, w.op));
    let mut violations = Vec::new();
    for pair in by_revision.windows(2) {
        if pair[0].revision == pair[1].revision {
            violations.push(format!(
                "{} and {} were both acknowledged at revision {}",
                pair[0].op, pair[1].op, pair[0].revision
            ));
        }
    }
    // Walking down the revisions, remember the earliest completion among higher revisions:
    // a lower revision invoked after it went back in time.
    let mut earliest_higher: Option<&AckedWrite> = None;
    for write in by_revision.iter().rev() {
        if let Some(higher) = earliest_higher
            && higher.complete_ns < write.invoke_ns
            && higher.revision > write.revision
        {
            violations.push(format!(
                "{} got revision {} although {} (revision {}) completed before it was invoked",
                write.op, write.revision, higher.op, higher.revision
            ));
        }
        if earliest_higher.is_none_or(|h| write.complete_ns < h.complete_ns) {
            earliest_higher = Some(write);
        }
    }
    violations
}

/// The converged state keeps every revision any replica ever reached.
pub fn check_final(monitor: &RevisionMonitor, converged_revision: u64) -> Vec<String> {
    if converged_revision < monitor.revision_seen_max {
        return vec![format!(
            "replicas converged at revision {converged_revision}, below the revision {} a \
             replica had reached: applied state was lost",
            monitor.revision_seen_max
        )];
    }
    Vec::new()
}
