//! Raft timing, set explicitly: never a library default.

use std::sync::Arc;

/// The knobs an operator sets (etcd's names), from which the openraft config is derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    /// Applied entries between snapshots (etcd's --snapshot-count).
    pub snapshot_count: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            snapshot_count: 100_000,
        }
    }
}

/// Entries sent per AppendEntries RPC at most.
pub const REPLICATION_ENTRIES_MAX: u64 = 4096;
/// Client writes grouped into one log append at most (group commit).
pub const PROPOSAL_BATCH_MAX: u64 = 4096;
/// Applied entries kept in the log behind a snapshot, so slightly lagging followers catch up
/// from the log rather than by snapshot.
pub const LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES: u64 = 5000;

impl RaftTiming {
    pub fn to_openraft(&self, cluster_name: &str) -> Result<Arc<openraft::Config>, String> {
        assert!(self.heartbeat_interval_ms > 0);
        let config = openraft::Config {
            cluster_name: cluster_name.to_string(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_ms,
            election_timeout_max: self.election_timeout_ms * 2,
            install_snapshot_timeout: 10_000.max(self.election_timeout_ms * 10),
            max_payload_entries: REPLICATION_ENTRIES_MAX,
            replication_lag_threshold: self.snapshot_count.max(LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES)
                * 2,
            // Snapshots are triggered by the node (`snapshot_schedule.rs`): every
            // `snapshot_count` entries.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES.min(self.snapshot_count),
            purge_batch_size: 256.min(self.snapshot_count.max(1)),
            api_batch_capacity: PROPOSAL_BATCH_MAX,
            api_batch_linger_ms: 0,
            enable_pre_vote: Some(true),
            enable_tick: true,
            enable_heartbeat: true,
            enable_elect: true,
            // A leader restored at restart without an election serves ReadIndex reads at its
            // persisted committed index, which lags: applies and the committed index are not
            // fsynced on their own (redb Durability::None). A linearizable read could then
            // miss an acknowledged write. An election commits a fresh blank entry first.
            enable_leader_restore: Some(false),
            ..Default::default()
        };
        config.validate().map(Arc::new).map_err(|e| e.to_string())
    }
}
