//! Counters and histograms the node keeps; the server renders them as Prometheus text.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use aspen_core::metrics::{Histogram, LATENCY_BUCKETS_US};

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
    /// Client gRPC requests by method, indexed as `CLIENT_METHODS`.
    pub client: [MethodMetrics; CLIENT_METHODS.len()],
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
