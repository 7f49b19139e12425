//! The records the state machine stores, one Rust type per table (see `schema`).

use aspen_core::command::AlarmType;
use aspen_core::type_config::alias::{LogId, StoredMembership};
use serde::{Deserialize, Serialize};

/// The key-value and lease records are also what the snapshot stream carries, so they live
/// with its frames in `aspen-core` (which `aspenctl snapshot status` reads too).
pub use aspen_core::snapshot_format::{LeaseRecord, StoredVersion};

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
