//! When to take a snapshot.
//!
//! etcd's `--snapshot-count` says how many entries apply between snapshots, and so does
//! Aspen's. A snapshot is a **point** (`aspen-storage` `snapshot_io.rs` `record_point`): one
//! durable commit of the state database that records the applied log id, after which Raft may
//! purge the log behind it. Nothing of the state is copied then, whatever the store's size: the
//! data is written only when a follower needs it. So the count alone decides, as in etcd.
//! (Until session 12 each snapshot wrote the whole state, and a second rule spaced them out
//! on a large store.)
//!
//! openraft's own policy is `Never`; a node task checks every `SNAPSHOT_CHECK_INTERVAL_MS` (a
//! read of Raft's metrics) and calls `Raft::trigger().snapshot()`.

/// How often the node checks whether a snapshot is due.
pub const SNAPSHOT_CHECK_INTERVAL_MS: u64 = 100;
/// After a trigger, no new one for the same snapshot until this long has passed (a build
/// that failed, or was refused because one was running, is then retried).
pub const SNAPSHOT_RETRIGGER_MS: u64 = 10_000;

/// Whether a snapshot is due: `snapshot_count` entries applied since the last one.
pub fn snapshot_due(entries_since: u64, snapshot_count: u64) -> bool {
    assert!(snapshot_count > 0);
    entries_since >= snapshot_count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_every_snapshot_count_entries() {
        assert!(!snapshot_due(0, 100_000));
        assert!(!snapshot_due(99_999, 100_000));
        assert!(snapshot_due(100_000, 100_000));
        assert!(snapshot_due(u64::MAX, 1));
    }
}
