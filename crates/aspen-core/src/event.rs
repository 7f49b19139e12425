//! Watch events: what one committed change to one key looks like to a watcher.
//!
//! The state machine records them while applying (live) and rebuilds them from MVCC history
//! (catch-up); both produce the same values, in the same order: by revision, then by the
//! change's position within its revision (`sub_revision`).

use serde::{Deserialize, Serialize};

use crate::response::KeyValue;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key. A `Delete` carries only the key and the deletion revision in `kv`,
/// as etcd's do; `prev_kv` is the version the change replaced, when history still holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
    /// Order of this change within its revision (a Txn changes several keys at one revision).
    pub sub_revision: u32,
}

impl Event {
    /// Bytes the event holds (keys and values, with the previous version's), for budgets.
    pub fn held_bytes(&self) -> u64 {
        const FIXED_BYTES: u64 = 64;
        let kv = |kv: &crate::response::KeyValue| (kv.key.len() + kv.value.len()) as u64;
        FIXED_BYTES + kv(&self.kv) + self.prev_kv.as_ref().map_or(0, kv)
    }

    /// The revision that made this change.
    pub fn revision(&self) -> u64 {
        self.kv.mod_revision
    }

    /// The event's position in the store's total order of changes.
    pub fn position(&self) -> (u64, u32) {
        (self.kv.mod_revision, self.sub_revision)
    }

    pub fn delete(
        key: &[u8],
        revision: u64,
        sub_revision: u32,
        prev_kv: Option<KeyValue>,
    ) -> Event {
        Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.to_vec(),
                mod_revision: revision,
                ..KeyValue::default()
            },
            prev_kv,
            sub_revision,
        }
    }
}

/// What one committed apply batch changed, handed to watchers after the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedBatch {
    /// The store revision before the batch.
    pub revision_before: u64,
    /// The store revision after the batch; every event's revision lies in
    /// `revision_before + 1 ..= revision_after`.
    pub revision_after: u64,
    /// The batch's events in order, or `None` when none were recorded (no one was watching
    /// when the batch began); a watcher then reads these revisions back from history.
    pub events: Option<Vec<Event>>,
}
