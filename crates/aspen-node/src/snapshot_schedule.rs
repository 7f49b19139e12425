//! When to build a snapshot.
//!
//! etcd's `--snapshot-count` says how many entries apply between snapshots. An etcd snapshot is
//! cheap (its bbolt file already is the state); an Aspen snapshot is a full copy of the state
//! machine, written and fsynced (`aspen-storage` `snapshot_io.rs`). On a large store, building
//! one every `--snapshot-count` entries writes far more than the puts themselves: at 1M keys
//! (a 276 MiB snapshot) and the default 100,000 entries, about 2.8 KiB of snapshot per put of
//! ~300 bytes of log.
//!
//! So a snapshot is due when both hold:
//! - at least `--snapshot-count` entries applied since the last one (etcd's rule), and
//! - the log since the last one is at least `1/SNAPSHOT_LOG_BYTES_DIVISOR` of that snapshot's
//!   size (estimated as entries times the mean encoded entry size): a snapshot never costs
//!   more than `SNAPSHOT_LOG_BYTES_DIVISOR` bytes per byte of log it lets Raft purge.
//!
//! On a small store the second rule always holds first, so snapshots come every
//! `--snapshot-count` entries as before. openraft's own policy is `Never`; a node task checks
//! this rule every `SNAPSHOT_CHECK_INTERVAL_MS` (a read of Raft's metrics and one read
//! transaction) and calls `Raft::trigger().snapshot()`.

/// How often the node checks whether a snapshot is due.
pub const SNAPSHOT_CHECK_INTERVAL_MS: u64 = 100;
/// A snapshot is due once the log since the last is at least this fraction of its size.
pub const SNAPSHOT_LOG_BYTES_DIVISOR: u64 = 4;
/// Assumed mean entry size before this process has made any entry durable.
pub const ENTRY_BYTES_ASSUMED: u64 = 256;
/// After a trigger, no new one for the same snapshot until this long has passed (a build
/// that failed, or was refused because one was running, is then retried).
pub const SNAPSHOT_RETRIGGER_MS: u64 = 10_000;

/// Whether a snapshot is due (module docs).
pub fn snapshot_due(
    entries_since: u64,
    snapshot_count: u64,
    entry_bytes_mean: u64,
    snapshot_bytes: u64,
) -> bool {
    assert!(snapshot_count > 0);
    assert!(entry_bytes_mean > 0);
    let log_bytes_since = entries_since.saturating_mul(entry_bytes_mean);
    entries_since >= snapshot_count
        && log_bytes_since >= snapshot_bytes / SNAPSHOT_LOG_BYTES_DIVISOR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_store_snapshots_every_snapshot_count_entries() {
        // 10k keys: a ~3 MiB snapshot, far less than 100k entries of log.
        assert!(!snapshot_due(99_999, 100_000, 300, 3 << 20));
        assert!(snapshot_due(100_000, 100_000, 300, 3 << 20));
        // No snapshot yet: etcd's rule alone.
        assert!(snapshot_due(100_000, 100_000, 300, 0));
    }

    #[test]
    fn a_large_store_waits_for_a_quarter_of_its_snapshot_in_log() {
        let snapshot_bytes = 276 << 20; // 1M keys
        assert!(!snapshot_due(100_000, 100_000, 300, snapshot_bytes));
        let quarter_in_entries = (snapshot_bytes / 4).div_ceil(300);
        assert!(!snapshot_due(
            quarter_in_entries - 1,
            100_000,
            300,
            snapshot_bytes
        ));
        assert!(snapshot_due(
            quarter_in_entries,
            100_000,
            300,
            snapshot_bytes
        ));
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        assert!(snapshot_due(u64::MAX, 1, u64::MAX, u64::MAX));
    }
}
