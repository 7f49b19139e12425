//! Watch streams have no gaps. For each watcher of the run, after healing:
//!
//! (a) the revisions of the events it received never decrease, and no (revision, key) event
//!     came twice (checked as they arrived, across every resume; see `WatchLog::observe`);
//! (b) over the revisions it covered (its start revision through the last one it was told
//!     about, less spans the hub cancelled it for as compacted), the events it received are
//!     exactly the MVCC history of the watched range: every put with its value, create
//!     revision and version, every delete, at its revision, nothing more;
//! (c) it covered the converged revision within `WATCH_CATCH_UP_WAIT_MS_MAX` of convergence.
//!
//! The history is rebuilt from a converged replica without the watch code's history reader
//! (`MvccReader::events`, which the hub's catch-up uses): the range is read at every revision
//! with `MvccReader::range`, and each revision's events are the keys whose `mod_revision` is
//! that revision (puts) and the keys present one revision earlier and absent now (deletes).
//! A revision that deletes and re-creates one key would read as a put only; the workload never
//! does both to one key in one revision.

use std::collections::BTreeMap;

use aspen_core::response::KeyValue;
use aspen_core::{NodeId, RangeRequest};
use aspen_node::Node;

use crate::limits::{CONVERGE_KEYS_MAX, WATCH_CATCH_UP_WAIT_MS_MAX};
use crate::watchers::{Change, SeenEvent, WATCHED_KEY, WATCHED_RANGE_END, WatchLog};

/// Differences reported per watcher, in words; the rest are counted.
const DIFFERENCES_REPORTED_MAX: usize = 8;

/// Each revision's events in the watched range, from `base + 1` on.
struct History {
    /// Events at or below this revision are not checked: history below the compaction point
    /// is gone (this simulation never compacts, so it is 1, the empty store's revision).
    base: u64,
    events: BTreeMap<u64, Vec<SeenEvent>>,
}

/// Checks every watcher against the history of `replica`, converged at `final_revision`.
pub fn check(replica: (NodeId, &Node), final_revision: u64, logs: &[WatchLog]) -> Vec<String> {
    let mut failures = Vec::new();
    for log in logs {
        let id = log.watcher_id;
        failures.extend(
            log.violations
                .iter()
                .map(|v| format!("watch order: watcher {id}: {v}")),
        );
        if log.violations_more > 0 {
            failures.push(format!(
                "watch order: watcher {id}: {} more violations",
                log.violations_more
            ));
        }
        failures.extend(
            log.refusals
                .iter()
                .map(|r| format!("watch: watcher {id}: {r}")),
        );
        if log.covered_through < final_revision {
            failures.push(format!(
                "watch behind: watcher {id} covered revisions only through {} of the converged \
                 {final_revision}, {WATCH_CATCH_UP_WAIT_MS_MAX} ms after convergence \
                 ({} events received, {} watches opened)",
                log.covered_through, log.received, log.attaches
            ));
        }
    }
    let (node_id, node) = replica;
    let history = match history(node, final_revision) {
        Ok(history) => history,
        Err(e) => {
            failures.push(format!(
                "watch: reading the history of node {node_id} up to revision {final_revision}: {e}"
            ));
            return failures;
        }
    };
    for log in logs {
        failures.extend(compare(log, &history, final_revision));
    }
    failures
}

/// (b) for one watcher.
fn compare(log: &WatchLog, history: &History, final_revision: u64) -> Vec<String> {
    let id = log.watcher_id;
    let first = log.start_revision.max(history.base + 1);
    let last = log
        .covered_through
        .min(log.recorded_through.unwrap_or(u64::MAX));
    let checked = |revision: u64| {
        revision >= first
            && revision <= last
            && !log
                .compacted
                .iter()
                .any(|gap| gap.from <= revision && revision <= gap.to)
    };
    let mut failures = Vec::new();
    let mut received: BTreeMap<u64, Vec<SeenEvent>> = BTreeMap::new();
    for event in &log.events {
        if event.revision > final_revision {
            failures.push(format!(
                "watch: watcher {id} received {event}, past the converged revision {final_revision}"
            ));
        } else if checked(event.revision) {
            received
                .entry(event.revision)
                .or_default()
                .push(event.clone());
        }
    }
    let mut differences = Vec::new();
    let span = format!(
        "(it covered revisions {first}..={last}; {} events received, {} watches opened)",
        log.received, log.attaches
    );
    let empty = Vec::new();
    for revision in first..=last.min(final_revision) {
        if !checked(revision) {
            continue;
        }
        let mut expected = history.events.get(&revision).unwrap_or(&empty).clone();
        let mut got = received.remove(&revision).unwrap_or_default();
        expected.sort();
        got.sort();
        if expected == got {
            continue;
        }
        for event in expected.iter().filter(|e| !got.contains(e)) {
            differences.push(format!(
                "watch gap: watcher {id} never received {event} {span}"
            ));
        }
        for event in got.iter().filter(|e| !expected.contains(e)) {
            differences.push(format!(
                "watch: watcher {id} received {event}, which is not in the history {span}"
            ));
        }
    }
    let more = differences.len().saturating_sub(DIFFERENCES_REPORTED_MAX);
    failures.extend(differences.into_iter().take(DIFFERENCES_REPORTED_MAX));
    if more > 0 {
        failures.push(format!("watch: watcher {id}: {more} more differences"));
    }
    failures
}

fn history(node: &Node, final_revision: u64) -> Result<History, String> {
    let compact_revision = node
        .reader()
        .applied_state()
        .map_err(|e| e.to_string())?
        .compact_revision;
    let base = compact_revision.max(1);
    let mut events = BTreeMap::new();
    let mut previous = image(node, base)?;
    for revision in base + 1..=final_revision {
        let current = image(node, revision)?;
        let mut at: Vec<SeenEvent> = current
            .values()
            .filter(|kv| kv.mod_revision == revision)
            .map(|kv| SeenEvent {
                revision,
                key: kv.key.clone(),
                change: Change::Put {
                    value: kv.value.clone(),
                    create_revision: kv.create_revision,
                    version: kv.version,
                },
            })
            .collect();
        at.extend(
            previous
                .keys()
                .filter(|key| !current.contains_key(*key))
                .map(|key| SeenEvent {
                    revision,
                    key: key.clone(),
                    change: Change::Delete,
                }),
        );
        if !at.is_empty() {
            events.insert(revision, at);
        }
        previous = current;
    }
    Ok(History { base, events })
}

/// The watched range as it was at `revision`.
fn image(node: &Node, revision: u64) -> Result<BTreeMap<Vec<u8>, KeyValue>, String> {
    let request = RangeRequest {
        key: WATCHED_KEY.to_vec(),
        range_end: WATCHED_RANGE_END.to_vec(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watchers::CompactedGap;

    fn put(key: &str, revision: u64) -> SeenEvent {
        SeenEvent {
            revision,
            key: key.as_bytes().to_vec(),
            change: Change::Put {
                value: b"v".to_vec(),
                create_revision: revision,
                version: 1,
            },
        }
    }

    fn history(events: &[SeenEvent]) -> History {
        let mut by_revision: BTreeMap<u64, Vec<SeenEvent>> = BTreeMap::new();
        for event in events {
            by_revision
                .entry(event.revision)
                .or_default()
                .push(event.clone());
        }
        History {
            base: 1,
            events: by_revision,
        }
    }

    fn log(events: &[SeenEvent], covered_through: u64) -> WatchLog {
        let mut log = WatchLog::new(1);
        log.events = events.to_vec();
        log.covered_through = covered_through;
        log
    }

    #[test]
    fn equal_streams_pass_and_gaps_and_extras_fail() {
        let all = [put("k1", 2), put("k2", 3), put("k1", 4)];
        let history = history(&all);
        assert!(compare(&log(&all, 4), &history, 4).is_empty());
        // Covering less is (b)'s business only for what was covered.
        assert!(compare(&log(&all[..2], 3), &history, 4).is_empty());
        let gap = compare(&log(&[all[0].clone(), all[2].clone()], 4), &history, 4);
        assert_eq!(gap.len(), 1, "{gap:?}");
        assert!(gap[0].starts_with("watch gap: watcher 1 never received put k2"));
        let extra = compare(&log(&[all[0].clone(), put("k3", 3)], 3), &history, 4);
        assert_eq!(extra.len(), 2, "{extra:?}");
        assert!(extra.iter().any(|f| f.contains("not in the history")));
    }

    #[test]
    fn a_compacted_span_is_not_expected() {
        let all = [put("k1", 2), put("k2", 3), put("k1", 4)];
        let history = history(&all);
        let mut skipped = log(&[all[0].clone(), all[2].clone()], 4);
        skipped.compacted.push(CompactedGap { from: 3, to: 3 });
        assert!(compare(&skipped, &history, 4).is_empty());
    }
}
