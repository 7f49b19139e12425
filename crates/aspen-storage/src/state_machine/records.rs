//! The records the state machine stores, one Rust type per table (see `schema`).

use aspen_core::KeyValue;
use aspen_core::command::AlarmType;
use aspen_core::type_config::alias::{LogId, StoredMembership};
use serde::{Deserialize, Serialize};

/// One version of a key, without the key (the table key holds it). `version == 0` marks a
/// deletion tombstone in `kv_history`; `kv_latest` never holds one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVersion {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    /// Order of this change within its revision (a Txn writes several keys at one revision).
    pub sub_revision: u32,
    pub version: u64,
    pub lease: u64,
}

impl StoredVersion {
    pub fn tombstone(mod_revision: u64, sub_revision: u32) -> StoredVersion {
        StoredVersion {
            value: Vec::new(),
            create_revision: 0,
            mod_revision,
            sub_revision,
            version: 0,
            lease: 0,
        }
    }

    pub fn is_tombstone(&self) -> bool {
        self.version == 0
    }

    pub fn to_key_value(&self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub ttl_seconds: i64,
}

/// Everything the state machine knows besides the data, written in the same transaction as the
/// data: a crash never separates them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    /// The store revision: 1 for an empty store, +1 per applied command that writes.
    pub revision: u64,
    /// Reads below this revision fail with "compacted". 0: never compacted.
    pub compact_revision: u64,
    /// Raised alarms: (member id, alarm).
    pub alarms: Vec<(u64, AlarmType)>,
}

impl Default for AppliedState {
    fn default() -> Self {
        AppliedState {
            last_applied: None,
            membership: StoredMembership::default(),
            revision: 1,
            compact_revision: 0,
            alarms: Vec::new(),
        }
    }
}

impl AppliedState {
    pub fn no_space(&self) -> bool {
        self.alarms
            .iter()
            .any(|(_, alarm)| *alarm == AlarmType::NoSpace)
    }
}
