//! Counters and histograms the node keeps; the server renders them as Prometheus text.

use std::sync::atomic::AtomicU64;

pub use aspen_core::metrics::{Histogram, LATENCY_BUCKETS_US};

#[derive(Debug, Default)]
pub struct NodeMetrics {
    pub proposals_committed: AtomicU64,
    pub proposals_failed: AtomicU64,
    pub proposals_forwarded: AtomicU64,
    pub leader_changes: AtomicU64,
    pub db_size_bytes: AtomicU64,
    pub db_size_in_use_bytes: AtomicU64,
    pub proposal_latency: Histogram,
}
