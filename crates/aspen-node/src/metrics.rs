//! Counters and histograms the node keeps; the server renders them as Prometheus text.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use aspen_core::metrics::{Histogram, LATENCY_BUCKETS_US, STAGE_BUCKETS_US};
use aspen_storage::stage_clock::StageTimes;

#[derive(Debug, Default)]
pub struct NodeMetrics {
    pub proposals_committed: AtomicU64,
    pub proposals_failed: AtomicU64,
    pub proposals_forwarded: AtomicU64,
    pub leader_changes: AtomicU64,
    pub proposal_latency: Histogram,
    /// ReadIndex rounds this node ran as the leader, for its own linearizable reads and the
    /// read indexes followers forwarded to it.
    pub read_index_leader: Arc<ReadIndexMetrics>,
    /// ReadIndex rounds this node forwarded to the leader as a follower.
    pub read_index_forwarded: Arc<ReadIndexMetrics>,
    /// Append streams peers opened to this node, and the appends (heartbeats included) that
    /// came over them.
    pub peer_append_streams: AtomicU64,
    pub peer_append_messages: AtomicU64,
    /// Write batches this node forwarded to the leader as a follower, and their writes.
    pub forward_write_batches: Arc<crate::forward_batch::WriteBatchMetrics>,
    /// Client gRPC requests by method, indexed as `CLIENT_METHODS`.
    pub client: [MethodMetrics; CLIENT_METHODS.len()],
    /// Where a put's time goes, stage by stage.
    pub put_stages: PutStageMetrics,
    /// Compactions the server's auto-compactor completed while this node led, and the
    /// highest revision it compacted at.
    pub auto_compactions: AtomicU64,
    pub auto_compaction_revision: AtomicU64,
    /// Writes this node refused as the leader because its disk was below the reserve.
    pub disk_low_refusals: AtomicU64,
}

/// The stages of a put, in order: the `stage` label of `aspen_put_stage_duration_seconds`.
/// `grpc` is the API layer's time (`KvService::put` minus `Node::write`); the other five
/// tile the leader's `Raft::client_write` call, so on the leader they add up to it.
pub const PUT_STAGES: [&str; 6] = [
    "grpc",
    "proposal_to_append",
    "append_to_durable",
    "durable_to_committed",
    "committed_to_applied",
    "applied_to_response",
];

/// One histogram per `PUT_STAGES` entry, over `STAGE_BUCKETS_US`.
#[derive(Debug)]
pub struct PutStageMetrics {
    pub stages: [Histogram; PUT_STAGES.len()],
}

impl Default for PutStageMetrics {
    fn default() -> PutStageMetrics {
        PutStageMetrics {
            stages: std::array::from_fn(|_| Histogram::with_bounds_us(&STAGE_BUCKETS_US)),
        }
    }
}

impl PutStageMetrics {
    /// The API layer's share of one successful put.
    pub fn observe_api_ns(&self, api_ns: u64) {
        self.stages[0].observe_ns(api_ns);
    }

    /// The leader's stages of one put: proposed, then the storage layer's stamps, then
    /// answered, all on one `StageClock`. The five always add up to proposed .. answered, so
    /// every put is counted in each. On three nodes two followers can make the quorum before
    /// the leader's own fsync returns: a stage not yet reached when the put was answered ends
    /// where the next one reached does (append_to_durable then runs to the commit, and
    /// durable_to_committed is 0), and a stage reached before the one ahead of it takes no
    /// time.
    pub fn observe_write(&self, proposed_ns: u64, times: &StageTimes, answered_ns: u64) {
        let mut points = [
            proposed_ns,
            times.appended_ns.unwrap_or(0),
            times.durable_ns.unwrap_or(0),
            times.committed_ns.unwrap_or(0),
            times.applied_ns.unwrap_or(0),
            answered_ns,
        ];
        // Missing (0) takes the next point reached, from the answer backwards.
        for k in (1..points.len() - 1).rev() {
            if points[k] == 0 {
                points[k] = points[k + 1];
            }
        }
        let mut previous = points[0];
        for (stage, &point) in self.stages[1..].iter().zip(points[1..].iter()) {
            let point = point.max(previous);
            stage.observe_ns(point - previous);
            previous = point;
        }
    }
}

/// The client methods whose requests and latency are counted (a fixed set: bounded memory).
pub const CLIENT_METHODS: [&str; 5] = ["Range", "Put", "DeleteRange", "Txn", "Compact"];

/// One read batcher's rounds and the reads they served; reads / rounds is the batching ratio.
#[derive(Debug, Default)]
pub struct ReadIndexMetrics {
    pub rounds: AtomicU64,
    pub reads: AtomicU64,
}

#[derive(Debug, Default)]
pub struct MethodMetrics {
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    pub latency: Histogram,
}

impl NodeMetrics {
    /// Records one client request of `CLIENT_METHODS[method]`.
    pub fn observe_client(&self, method: usize, ok: bool, elapsed_us: u64) {
        assert!(
            method < CLIENT_METHODS.len(),
            "unknown client method index {method}"
        );
        let entry = &self.client[method];
        entry.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            entry.failures.fetch_add(1, Ordering::Relaxed);
        }
        entry.latency.observe_us(elapsed_us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_stages_tile_the_call_whatever_is_missing_or_out_of_order() {
        let metrics = PutStageMetrics::default();
        // A quorum committed before the leader's own fsync returned.
        let early_commit = StageTimes {
            appended_ns: Some(1_100),
            durable_ns: Some(4_000),
            committed_ns: Some(3_000),
            applied_ns: Some(5_000),
        };
        metrics.observe_write(1_000, &early_commit, 10_000);
        // Answered before the leader's own fsync returned.
        let no_durable = StageTimes {
            durable_ns: None,
            ..early_commit
        };
        metrics.observe_write(1_000, &no_durable, 10_000);
        let counts: Vec<u64> = metrics.stages.iter().map(Histogram::count).collect();
        assert_eq!(counts, [0, 2, 2, 2, 2, 2]);
        let sums: Vec<String> = metrics
            .stages
            .iter()
            .map(|h| {
                let mut out = String::new();
                h.render("h", "", &mut out);
                out.lines()
                    .find(|l| l.starts_with("h_sum"))
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        // Each put: 9 us in all, proposed .. answered. The second's append_to_durable runs to
        // the commit (1,900 ns), its durable_to_committed is 0.
        assert_eq!(
            sums,
            [
                "h_sum 0",
                "h_sum 0.0000002",
                "h_sum 0.0000048",
                "h_sum 0",
                "h_sum 0.000003",
                "h_sum 0.00001"
            ]
        );
    }
}
