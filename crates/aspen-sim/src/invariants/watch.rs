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
//! (d) it skipped, as compacted, only revisions below a compaction the compactor asked for
//!     and the replica applied: a span cancelled as compacted ends right below a compact
//!     revision (the hub says where history starts, and the watcher resumes exactly there).
//!
//! The history is the one `history.rs` rebuilds (without the hub's history reader), captured
//! before each compaction and completed from a converged replica, so revisions below the
//! compaction point are checked too.

use std::collections::BTreeMap;

use crate::history::{self, HistoryTap};
use crate::limits::WATCH_CATCH_UP_WAIT_MS_MAX;
use crate::watchers::{Change, SeenEvent, WATCHED_KEY, WATCHED_RANGE_END, WatchLog};

/// Differences reported per watcher, in words; the rest are counted.
const DIFFERENCES_REPORTED_MAX: usize = 8;

/// Each revision's events in the watched range, from `base + 1` on.
struct History {
    /// Events at or below this revision are not checked (1, the empty store's revision: the
    /// tap holds the history below every compaction).
    base: u64,
    events: BTreeMap<u64, Vec<SeenEvent>>,
}

/// Checks every watcher against the history in `tap` (captured through the converged
/// `final_revision`); `compactions` are the revisions the compactor asked to compact at, and
/// `compact_revision` the converged replica's.
pub fn check(
    tap: &HistoryTap,
    final_revision: u64,
    compactions: &[u64],
    compact_revision: u64,
    logs: &[WatchLog],
) -> Vec<String> {
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
    for log in logs {
        for gap in &log.compacted {
            let resumed_at = gap.to + 1;
            if !compactions.contains(&resumed_at) || resumed_at > compact_revision {
                failures.push(format!(
                    "watch gap: watcher {} skipped revisions {}..={} as compacted, but no \
                     compaction at {resumed_at} was applied ({} compactions asked; the \
                     replica is compacted at {compact_revision})",
                    log.watcher_id,
                    gap.from,
                    gap.to,
                    compactions.len()
                ));
            }
        }
    }
    let history = from_tap(tap);
    for log in logs {
        failures.extend(compare(log, &history, final_revision));
    }
    failures
}

/// (b) for one watcher. No allowance at a compact revision: compaction keeps a tombstone at
/// the compact revision (as etcd does since 3.4.34 / 3.5.15), so a watch that starts there,
/// or resumes its catch-up there (seed 17150: a snapshot install made a watcher read from
/// history at the compact revision), is owed that revision's deletes.
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

/// The watched range's events, as the watchers see them (no lease).
fn from_tap(tap: &HistoryTap) -> History {
    let events = tap
        .in_range(WATCHED_KEY, WATCHED_RANGE_END)
        .into_iter()
        .map(|(revision, events)| {
            let seen = events
                .into_iter()
                .map(|event| SeenEvent {
                    revision,
                    key: event.key,
                    change: match event.change {
                        history::Change::Put {
                            value,
                            create_revision,
                            version,
                            ..
                        } => Change::Put {
                            value,
                            create_revision,
                            version,
                        },
                        history::Change::Delete => Change::Delete,
                    },
                })
                .collect();
            (revision, seen)
        })
        .collect();
    History { base: 1, events }
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

    /// Seed 17150: a watch that starts (or resumes) at a compact revision is owed the
    /// deletes at it; compaction keeps their tombstones.
    #[test]
    fn a_delete_at_the_compact_revision_a_watch_starts_at_is_owed() {
        let delete = SeenEvent {
            revision: 3,
            key: b"k1".to_vec(),
            change: Change::Delete,
        };
        let all = [put("k1", 2), delete, put("k2", 4)];
        let history = history(&all);
        let mut from_the_compact_revision = log(&[all[2].clone()], 4);
        from_the_compact_revision.start_revision = 3;
        let gap = compare(&from_the_compact_revision, &history, 4);
        assert_eq!(gap.len(), 1, "{gap:?}");
        assert!(gap[0].starts_with("watch gap: watcher 1 never received delete k1 at revision 3"));
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
