//! Every named limit in Aspen, in one place, with units last.
//!
//! Defaults follow etcd where etcd has one, so that an etcd user's expectations carry over.
//! Limits that a user may change at start-up live in [`Limits`]; the rest are constants.

/// Largest client request etcd accepts by default (`--max-request-bytes`): 1.5 MiB.
pub const REQUEST_BYTES_MAX_DEFAULT: u64 = 1536 * 1024;
/// Most operations in one Txn branch (`--max-txn-ops`), as etcd.
pub const TXN_OPS_MAX_DEFAULT: u32 = 128;
/// Database quota set at creation (`--quota-backend-bytes`): 10 GiB, as the design record asks.
pub const QUOTA_BACKEND_BYTES_DEFAULT: u64 = 10 * 1024 * 1024 * 1024;
/// A hard upper bound on the quota a user may configure: 64 GiB.
pub const QUOTA_BACKEND_BYTES_MAX: u64 = 64 * 1024 * 1024 * 1024;

/// Deepest Txn nesting accepted. etcd bounds nesting only through the op count; we also bound
/// depth so that evaluation, which recurses over nesting, never goes deeper than this.
pub const TXN_NESTING_DEPTH_MAX: u32 = 16;

/// Size of one snapshot chunk on the wire and on disk.
pub const SNAPSHOT_CHUNK_BYTES_MAX: u64 = 1024 * 1024;
/// Largest single frame inside a snapshot stream: one key record with its value. A value is
/// bounded by the request size, so a frame is too; the margin covers key and metadata.
pub const SNAPSHOT_FRAME_BYTES_MAX: u64 = 2 * REQUEST_BYTES_MAX_DEFAULT + 64 * 1024;
/// Records written per redb transaction while installing a snapshot is one transaction in all;
/// this bounds how many records are decoded before they are inserted.
pub const SNAPSHOT_INSTALL_BATCH_RECORDS_MAX: u32 = 4096;

/// Most log entries returned by one log read: bounds memory for replication reads.
pub const LOG_READ_ENTRIES_MAX: u64 = 65_536;

/// Most keys a compaction deletes per redb write transaction; a compaction that has more work
/// commits in several steps, each consistent.
pub const COMPACT_BATCH_KEYS_MAX: u32 = 10_000;

/// Most members in one cluster.
pub const CLUSTER_MEMBERS_MAX: u32 = 64;

/// The smallest lease TTL etcd grants; shorter requests are raised to it.
pub const LEASE_TTL_SECONDS_MIN: i64 = 5;
/// The largest lease TTL etcd accepts (`MaxLeaseTTL`): 9,000,000,000 seconds.
pub const LEASE_TTL_SECONDS_MAX: i64 = 9_000_000_000;

/// Limits a user may set at start-up. Every replica of a cluster must use the same values for
/// the ones that change apply results (`txn_ops_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub request_bytes_max: u64,
    pub txn_ops_max: u32,
    pub quota_backend_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_bytes_max: REQUEST_BYTES_MAX_DEFAULT,
            txn_ops_max: TXN_OPS_MAX_DEFAULT,
            quota_backend_bytes: QUOTA_BACKEND_BYTES_DEFAULT,
        }
    }
}

impl Limits {
    /// Checks the relations between limits; returns one message per problem.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.request_bytes_max == 0 {
            problems.push("max-request-bytes must be greater than 0".to_string());
        }
        if self.request_bytes_max > 64 * 1024 * 1024 {
            problems.push("max-request-bytes must be at most 64 MiB".to_string());
        }
        if self.txn_ops_max == 0 {
            problems.push("max-txn-ops must be greater than 0".to_string());
        }
        if self.quota_backend_bytes < 1024 * 1024 {
            problems.push("quota-backend-bytes must be at least 1 MiB".to_string());
        }
        if self.quota_backend_bytes > QUOTA_BACKEND_BYTES_MAX {
            problems.push(format!(
                "quota-backend-bytes must be at most {QUOTA_BACKEND_BYTES_MAX}"
            ));
        }
        problems
    }
}

const _: () = assert!(SNAPSHOT_FRAME_BYTES_MAX > REQUEST_BYTES_MAX_DEFAULT);
const _: () = assert!(SNAPSHOT_CHUNK_BYTES_MAX <= 4 * 1024 * 1024);
const _: () = assert!(LEASE_TTL_SECONDS_MIN < LEASE_TTL_SECONDS_MAX);
const _: () = assert!(QUOTA_BACKEND_BYTES_DEFAULT <= QUOTA_BACKEND_BYTES_MAX);
