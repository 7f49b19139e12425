//! Lease revocation and expiry delete exactly the attached keys, once. Over the whole MVCC
//! history of the lease clients' keys (`history.rs`; the workload deletes them only by
//! revoking or letting their lease expire):
//!
//! - every delete of a lease key is of a key attached to a lease (by its last put), and one
//!   revision deletes, for each lease it revokes, exactly the keys attached to it: not one
//!   fewer (a key left behind, or deleted at another revision), not one more (a detached key,
//!   or another lease's);
//! - a lease's keys are deleted at one revision only, and no key is attached to a lease after
//!   that revision (a put with a revoked lease must fail);
//! - once converged, a key still attached to a lease has that lease in the lease table, and a
//!   lease whose revocation was acknowledged is neither in the table nor holding keys;
//! - every acknowledged put with a lease is in the history at its revision, with that lease.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{Change, HistoryTap};
use crate::leases::{LEASE_KEYS_END, LEASE_KEYS_START, LeaseLog};

/// Violations reported in words; the rest are counted.
const LEASE_FAILURES_REPORTED_MAX: usize = 12;

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// Checks the lease history in `tap` (captured through the converged revision) against the
/// lease table `leases` (ids) of a converged replica and what the lease clients were told.
pub fn check(tap: &HistoryTap, leases: &BTreeSet<u64>, logs: &[LeaseLog]) -> Vec<String> {
    let mut failures = Vec::new();
    let history = tap.in_range(LEASE_KEYS_START, LEASE_KEYS_END);
    // Each key's lease (0: none) as of the revision being looked at.
    let mut attached: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let mut revoked_at: BTreeMap<u64, u64> = BTreeMap::new();
    for (revision, events) in &history {
        let mut deleted: BTreeMap<u64, BTreeSet<Vec<u8>>> = BTreeMap::new();
        for event in events {
            match &event.change {
                Change::Delete => match attached.get(&event.key).copied().unwrap_or(0) {
                    0 => failures.push(format!(
                        "lease: {} was deleted at revision {revision}, but no lease held it",
                        show(&event.key)
                    )),
                    lease => {
                        deleted.entry(lease).or_default().insert(event.key.clone());
                    }
                },
                Change::Put { lease, .. } => {
                    if let Some(at) = revoked_at.get(lease) {
                        failures.push(format!(
                            "lease: {} was attached to lease {lease:x} at revision {revision}, \
                             after that lease was revoked at revision {at}",
                            show(&event.key)
                        ));
                    }
                }
            }
        }
        for (lease, keys) in deleted {
            if let Some(at) = revoked_at.get(&lease) {
                failures.push(format!(
                    "lease: lease {lease:x}'s keys were deleted at revision {at} and again at \
                     {revision}"
                ));
            }
            let expected: BTreeSet<Vec<u8>> = attached
                .iter()
                .filter(|(_, l)| **l == lease)
                .map(|(key, _)| key.clone())
                .collect();
            if keys != expected {
                let names = |set: &BTreeSet<Vec<u8>>| -> Vec<String> {
                    set.iter().map(|k| show(k)).collect()
                };
                failures.push(format!(
                    "lease: revoking lease {lease:x} at revision {revision} deleted {:?}, but \
                     {:?} were attached to it",
                    names(&keys),
                    names(&expected)
                ));
            }
            revoked_at.insert(lease, *revision);
        }
        for event in events {
            match &event.change {
                Change::Delete => {
                    attached.remove(&event.key);
                }
                Change::Put { lease, .. } => {
                    attached.insert(event.key.clone(), *lease);
                }
            }
        }
    }
    for (key, lease) in &attached {
        if *lease != 0 && !leases.contains(lease) {
            failures.push(format!(
                "lease: {} is still attached to lease {lease:x}, which no longer exists \
                 (revision {})",
                show(key),
                tap.through
            ));
        }
    }
    for log in logs {
        for (lease, revision) in &log.acked_revokes {
            if leases.contains(lease) {
                failures.push(format!(
                    "lease: the revocation of lease {lease:x} was acknowledged at revision \
                     {revision}, but the lease still exists"
                ));
            }
            if let Some(key) = attached.iter().find(|(_, l)| *l == lease).map(|(k, _)| k) {
                failures.push(format!(
                    "lease: the revocation of lease {lease:x} was acknowledged at revision \
                     {revision}, but {} is still attached to it",
                    show(key)
                ));
            }
            if revoked_at.get(lease).is_some_and(|at| at > revision) {
                failures.push(format!(
                    "lease: the revocation of lease {lease:x} was acknowledged at revision \
                     {revision}, but its keys were deleted only at {}",
                    revoked_at[lease]
                ));
            }
        }
        for put in &log.acked_puts {
            let found = history.get(&put.revision).is_some_and(|events| {
                events.iter().any(|event| {
                    event.key == put.key
                        && matches!(event.change, Change::Put { lease, .. } if lease == put.lease)
                })
            });
            if !found {
                failures.push(format!(
                    "lease: the acknowledged put of {} with lease {:x} at revision {} is not in \
                     the history",
                    show(&put.key),
                    put.lease,
                    put.revision
                ));
            }
        }
    }
    let more = failures.len().saturating_sub(LEASE_FAILURES_REPORTED_MAX);
    failures.truncate(LEASE_FAILURES_REPORTED_MAX);
    if more > 0 {
        failures.push(format!("lease: {more} more violations"));
    }
    failures
}

/// Leases whose keys the history shows deleted (revoked or expired with keys attached).
pub fn revoked_with_keys(tap: &HistoryTap) -> u64 {
    let mut attached: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let mut revoked = BTreeSet::new();
    for events in tap.in_range(LEASE_KEYS_START, LEASE_KEYS_END).values() {
        for event in events {
            match &event.change {
                Change::Delete => {
                    if let Some(lease) = attached.remove(&event.key).filter(|l| *l != 0) {
                        revoked.insert(lease);
                    }
                }
                Change::Put { lease, .. } => {
                    attached.insert(event.key.clone(), *lease);
                }
            }
        }
    }
    revoked.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::KvEvent;

    fn put(key: &str, lease: u64, revision: u64) -> KvEvent {
        KvEvent {
            revision,
            key: key.as_bytes().to_vec(),
            change: Change::Put {
                value: b"v".to_vec(),
                create_revision: revision,
                version: 1,
                lease,
            },
        }
    }

    fn delete(key: &str, revision: u64) -> KvEvent {
        KvEvent {
            revision,
            key: key.as_bytes().to_vec(),
            change: Change::Delete,
        }
    }

    fn tap(events: &[KvEvent]) -> HistoryTap {
        let mut tap = HistoryTap::new();
        for event in events {
            tap.events
                .entry(event.revision)
                .or_default()
                .push(event.clone());
            tap.through = tap.through.max(event.revision);
        }
        tap
    }

    #[test]
    fn a_revocation_of_exactly_the_attached_keys_passes() {
        let history = tap(&[
            put("l1/0/0", 7, 2),
            put("l1/0/1", 7, 3),
            put("l1/0/0", 0, 4),
            delete("l1/0/1", 5),
        ]);
        let failures = check(&history, &BTreeSet::new(), &[]);
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(revoked_with_keys(&history), 1);
    }

    #[test]
    fn a_key_left_behind_or_deleted_apart_fails() {
        let split = tap(&[
            put("l1/0/0", 7, 2),
            put("l1/0/1", 7, 3),
            delete("l1/0/0", 4),
            delete("l1/0/1", 5),
        ]);
        let failures = check(&split, &BTreeSet::new(), &[]);
        assert!(
            failures
                .iter()
                .any(|f| f.contains("revoking lease 7 at revision 4")),
            "{failures:?}"
        );
        let orphan = tap(&[put("l1/0/0", 7, 2)]);
        let failures = check(&orphan, &BTreeSet::new(), &[]);
        assert!(
            failures
                .iter()
                .any(|f| f.contains("which no longer exists")),
            "{failures:?}"
        );
        assert!(check(&orphan, &BTreeSet::from([7]), &[]).is_empty());
    }

    #[test]
    fn a_detached_key_must_survive() {
        let history = tap(&[
            put("l1/0/0", 7, 2),
            put("l1/0/1", 7, 3),
            put("l1/0/0", 0, 4),
            delete("l1/0/0", 5),
            delete("l1/0/1", 5),
        ]);
        let failures = check(&history, &BTreeSet::new(), &[]);
        assert!(
            failures.iter().any(|f| f.contains("no lease held it")),
            "{failures:?}"
        );
    }
}
