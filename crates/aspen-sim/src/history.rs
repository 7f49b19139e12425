//! The MVCC history of the whole key space, rebuilt for the checks without the code under
//! test's history reader (`MvccReader::events`, which the watch hub's catch-up uses): the
//! store is read at every revision with `MvccReader::range`, and each revision's events are
//! the keys whose `mod_revision` is that revision (puts, with their lease) and the keys present
//! one revision earlier and absent now (deletes). A revision that deletes and re-creates one
//! key would read as a put only; the workload never does both to one key in one revision.
//!
//! Compaction makes old revisions unreadable, so the history is taken in two parts: the
//! compactor captures every revision up to the one it is about to compact at, on the node it
//! asks, before it asks (applied revisions are committed: they are the same on every
//! replica and never change); the checks capture the rest from a converged replica.

use std::collections::BTreeMap;

use aspen_core::RangeRequest;
use aspen_core::response::KeyValue;
use aspen_node::Node;

use crate::limits::CONVERGE_KEYS_MAX;

/// What one event did to its key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    Put {
        value: Vec<u8>,
        create_revision: u64,
        version: u64,
        lease: u64,
    },
    Delete,
}

/// One event of the history.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KvEvent {
    pub revision: u64,
    pub key: Vec<u8>,
    pub change: Change,
}

/// Every revision's events, from revision 2 (the first write) through `through`.
#[derive(Debug, Default)]
pub struct HistoryTap {
    pub events: BTreeMap<u64, Vec<KvEvent>>,
    /// Captured through this revision (1: nothing yet; the empty store's revision).
    pub through: u64,
    /// The whole store at `through`, to tell the deletes of the next revision.
    image: BTreeMap<Vec<u8>, KeyValue>,
}

impl HistoryTap {
    pub fn new() -> HistoryTap {
        HistoryTap {
            through: 1,
            ..HistoryTap::default()
        }
    }

    /// Reads `node` at every revision after `through` up to `revision` (which the node has
    /// applied) and records their events.
    pub fn capture(&mut self, node: &Node, revision: u64) -> Result<(), String> {
        for at in self.through + 1..=revision {
            let current = image(node, at)?;
            let mut events: Vec<KvEvent> = current
                .values()
                .filter(|kv| kv.mod_revision == at)
                .map(|kv| KvEvent {
                    revision: at,
                    key: kv.key.clone(),
                    change: Change::Put {
                        value: kv.value.clone(),
                        create_revision: kv.create_revision,
                        version: kv.version,
                        lease: kv.lease,
                    },
                })
                .collect();
            events.extend(
                self.image
                    .keys()
                    .filter(|key| !current.contains_key(*key))
                    .map(|key| KvEvent {
                        revision: at,
                        key: key.clone(),
                        change: Change::Delete,
                    }),
            );
            if !events.is_empty() {
                self.events.insert(at, events);
            }
            self.image = current;
            self.through = at;
        }
        Ok(())
    }

    /// Events with `range.0 <= key < range.1`, by revision.
    pub fn in_range(&self, start: &[u8], end: &[u8]) -> BTreeMap<u64, Vec<KvEvent>> {
        let mut out: BTreeMap<u64, Vec<KvEvent>> = BTreeMap::new();
        for (revision, events) in &self.events {
            let inside: Vec<KvEvent> = events
                .iter()
                .filter(|e| e.key.as_slice() >= start && e.key.as_slice() < end)
                .cloned()
                .collect();
            if !inside.is_empty() {
                out.insert(*revision, inside);
            }
        }
        out
    }
}

/// The whole store as it was at `revision`.
fn image(node: &Node, revision: u64) -> Result<BTreeMap<Vec<u8>, KeyValue>, String> {
    let request = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        limit: CONVERGE_KEYS_MAX,
        serializable: true,
        ..RangeRequest::default()
    };
    let (result, _) = node
        .reader()
        .range(&request)
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("at revision {revision}: {e}"))?;
    if result.more {
        return Err(format!("more than {CONVERGE_KEYS_MAX} keys"));
    }
    Ok(result
        .kvs
        .into_iter()
        .map(|kv| (kv.key.clone(), kv))
        .collect())
}
