//! Every redb table, named once. Each table stores one Rust type, encoded by
//! `aspen_core::codec` (a version byte, then postcard); `docs/storage-format.md` lists them.
//!
//! A node has two databases (format 2): the log database holds `RAFT_LOG` and `RAFT_META`, the
//! state database every other table. Both hold `FORMAT` with the version and their role.

use redb::TableDefinition;

/// Marks a file as Aspen's: `"format" -> FORMAT_VERSION`, `"role" -> ROLE_LOG | ROLE_STATE`.
/// A file without it is refused; so is a log file opened as a state file and the reverse.
pub const FORMAT: TableDefinition<&str, u64> = TableDefinition::new("aspen_format");
pub const FORMAT_KEY: &str = "format";
pub const FORMAT_ROLE_KEY: &str = "role";
/// 1: one file (`aspen.redb`); 2: a log file and a state file (migrated from 1 on open).
pub const FORMAT_VERSION: u64 = 3;
/// Format 2 kept the key index in `KV_INDEX`; an open upgrades it in place to 3 (drops that
/// table: the index is rebuilt in memory from `KV_REVS`).
pub const FORMAT_VERSION_INDEX_TABLE: u64 = 2;
pub const ROLE_LOG: u64 = 1;
pub const ROLE_STATE: u64 = 2;

/// Raft log: index -> `Entry`.
pub const RAFT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Raft log metadata: `vote` -> `Vote`, `committed` -> `Option<LogId>`,
/// `last_purged` -> `Option<LogId>`, `journal_generation` -> u64 (8 bytes, little-endian): the
/// generation of `log.journal`'s records this file may lack (`journal.rs`); absent in a file
/// that has never checkpointed.
pub const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
pub const META_VOTE: &str = "vote";
pub const META_COMMITTED: &str = "committed";
pub const META_LAST_PURGED: &str = "last_purged";
pub const META_JOURNAL_GENERATION: &str = "journal_generation";

/// State machine metadata, always written in the same transaction as the data it describes:
/// `applied` -> `AppliedState` (last-applied log id, membership, revisions, alarms),
/// `snapshot` -> `SnapshotRecord` (the newest written snapshot's meta and where its data is),
/// `snapshot_point` -> `SnapshotMeta` (the newest snapshot point: the state database itself,
/// made durable at that meta; `state_machine/snapshot_io.rs`; absent before the first),
/// `compacted_to` -> `(u64, u32)`: this replica's physical compaction has removed what it
/// should from `KV_REVS` below that position (local progress, not replicated state).
pub const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
pub const SM_APPLIED: &str = "applied";
pub const SM_SNAPSHOT: &str = "snapshot";
pub const SM_SNAPSHOT_POINT: &str = "snapshot_point";
pub const SM_COMPACTED_TO: &str = "compacted_to";
/// `index_flushed` (format 2 only, removed by the upgrade): how far `KV_INDEX` was complete.
pub const SM_INDEX_FLUSHED: &str = "index_flushed";
/// `auth` -> `AuthMeta` (auth enabled, auth revision); absent: disabled, revision 0.
pub const SM_AUTH: &str = "auth";

/// Every version of every key (puts and deletion tombstones), each written once, keyed by
/// revision: (main revision, sub-revision) -> `RevRecord` (key, value, create revision,
/// version, lease). Writes append at the tree's right edge; watch catch-up and compaction read
/// revision windows in order.
pub const KV_REVS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("kv_revs");
/// Format 2's key index: (key, main revision) -> `IndexRecord`. Format 3 keeps the index in
/// memory (`state_machine/key_index.rs`) with a checkpoint file beside the database; the
/// upgrade from 2 deletes this table.
pub const KV_INDEX: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("kv_index");
/// Leases: id -> `LeaseRecord`.
pub const LEASES: TableDefinition<u64, &[u8]> = TableDefinition::new("leases");
/// Keys attached to each lease: (lease id, key) -> ().
pub const LEASE_KEYS: TableDefinition<(u64, &[u8]), ()> = TableDefinition::new("lease_keys");
/// Auth users: name -> `UserRecord` (bcrypt hash, sorted roles). Added after format 2 was
/// first written: opening an older state database creates it empty (no users), which is what
/// that database meant.
pub const AUTH_USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("auth_users");
/// Auth roles: name -> `RoleRecord` (key permissions sorted by key). As `AUTH_USERS`.
pub const AUTH_ROLES: TableDefinition<&str, &[u8]> = TableDefinition::new("auth_roles");
