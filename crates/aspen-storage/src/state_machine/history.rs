//! Replaying MVCC history as watch events: what a watcher that fell behind (or asked for an
//! old start revision) reads instead of the live feed.
//!
//! History is keyed by key, then revision, so a revision window is found by walking the keys
//! of the range and picking each version whose revision falls in it; the picks are then put
//! in revision order. Memory stays bounded by `events_max` (plus one revision's events, which
//! are never split) however much history the range holds.

use std::collections::BTreeMap;

use aspen_core::keys::KeyRange;
use aspen_core::{ApplyError, Event, EventKind};
use redb::ReadableDatabase;

use super::range::history_range;
use super::records::StoredVersion;
use super::{MvccReader, read_applied};
use crate::error::{Result, decode};
use crate::schema;

/// Events read from history: every event in the range with a revision in
/// `start ..= through_revision`, in order. `through_revision < start` means nothing was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPage {
    pub events: Vec<Event>,
    pub through_revision: u64,
}

/// An event read the request itself made fail (the start revision was compacted).
pub type EventsOutcome = std::result::Result<EventPage, ApplyError>;

impl MvccReader {
    /// The events in `range` with `start_revision <= revision <= end_revision` (and at most the
    /// store revision), oldest first, each with the version it replaced when history still
    /// holds it. At most `events_max` events unless one revision alone has more; a page cut
    /// short ends at a revision boundary. Fails with `Compacted` if `start_revision` is below
    /// the compaction point, as etcd's watch does.
    pub fn events(
        &self,
        range: &KeyRange,
        start_revision: u64,
        end_revision: u64,
        events_max: u32,
    ) -> Result<EventsOutcome> {
        assert!(events_max > 0, "an event page must hold at least one event");
        let start = start_revision.max(1);
        let db = self.store.state_db();
        let txn = db.begin_read()?;
        let state = read_applied(&txn)?;
        if start < state.compact_revision {
            return Ok(Err(ApplyError::Compacted {
                compact_revision: state.compact_revision,
            }));
        }
        let end = end_revision.min(state.revision);
        if start > end || range.is_empty() {
            return Ok(Ok(EventPage {
                events: Vec::new(),
                through_revision: end.max(start - 1),
            }));
        }
        let mut picker = Picker::new(events_max);
        let latest = txn.open_table(schema::KV_LATEST)?;
        let history = txn.open_table(schema::KV_HISTORY)?;
        let mut latest_iter = latest.range::<&[u8]>(range.bounds())?.peekable();
        let mut group: Option<KeyGroup> = None;
        for item in history_range(&history, range)? {
            let (table_key, bytes) = item?;
            let (key, revision) = table_key.value();
            if group.as_ref().is_none_or(|g| g.key.as_slice() != key) {
                if let Some(done) = group.take() {
                    finish_group(done, &mut latest_iter, start, end, &mut picker)?;
                }
                group = Some(KeyGroup {
                    key: key.to_vec(),
                    previous: None,
                });
            }
            if revision > end {
                continue;
            }
            let version: StoredVersion = decode("kv_history", bytes.value())?;
            if let Some(group) = group.as_mut() {
                group.visit(version, start, &mut picker);
            }
        }
        if let Some(done) = group.take() {
            finish_group(done, &mut latest_iter, start, end, &mut picker)?;
        }
        drain_latest(&mut latest_iter, None, start, end, &mut picker)?;
        Ok(Ok(picker.finish(end)))
    }
}

type LatestIter<'a> = std::iter::Peekable<redb::Range<'a, &'static [u8], &'static [u8]>>;

/// One key's versions, walked in revision order.
struct KeyGroup {
    key: Vec<u8>,
    /// The version before the one being visited (a tombstone ends a generation).
    previous: Option<StoredVersion>,
}

impl KeyGroup {
    fn visit(&mut self, version: StoredVersion, start: u64, picker: &mut Picker) {
        if version.mod_revision >= start {
            picker.offer(event_for(&self.key, self.previous.as_ref(), &version));
        }
        self.previous = Some(version);
    }
}

/// Ends a key's history: keys only in `kv_latest` before it, then its own current version.
fn finish_group(
    mut group: KeyGroup,
    latest: &mut LatestIter<'_>,
    start: u64,
    end: u64,
    picker: &mut Picker,
) -> Result<()> {
    drain_latest(latest, Some(&group.key), start, end, picker)?;
    let current = match latest.peek() {
        Some(Ok((key, _))) if key.value() == group.key.as_slice() => latest.next(),
        _ => None,
    };
    if let Some(item) = current {
        let (_, bytes) = item?;
        let version: StoredVersion = decode("kv_latest", bytes.value())?;
        if version.mod_revision <= end {
            group.visit(version, start, picker);
        }
    }
    Ok(())
}

/// Visits current versions of keys below `before` (all, if `None`): keys without history.
fn drain_latest(
    latest: &mut LatestIter<'_>,
    before: Option<&[u8]>,
    start: u64,
    end: u64,
    picker: &mut Picker,
) -> Result<()> {
    loop {
        let below = match latest.peek() {
            Some(Ok((key, _))) => before.is_none_or(|b| key.value() < b),
            Some(Err(_)) => true,
            None => false,
        };
        if !below {
            return Ok(());
        }
        let Some(item) = latest.next() else {
            return Ok(());
        };
        let (key, bytes) = item?;
        let version: StoredVersion = decode("kv_latest", bytes.value())?;
        if version.mod_revision >= start && version.mod_revision <= end {
            picker.offer(event_for(key.value(), None, &version));
        }
    }
}

fn event_for(key: &[u8], previous: Option<&StoredVersion>, version: &StoredVersion) -> Event {
    let prev_kv = previous
        .filter(|p| !p.is_tombstone())
        .map(|p| p.to_key_value(key));
    if version.is_tombstone() {
        return Event::delete(key, version.mod_revision, version.sub_revision, prev_kv);
    }
    Event {
        kind: EventKind::Put,
        kv: version.to_key_value(key),
        prev_kv,
        sub_revision: version.sub_revision,
    }
}

/// Keeps the earliest events offered, whole revisions only, at most `events_max` of them
/// unless the earliest revision alone has more.
struct Picker {
    events_max: usize,
    picked: BTreeMap<(u64, u32), Event>,
    /// The lowest revision dropped: revisions from here on are incomplete and are left out.
    cut_revision: Option<u64>,
}

impl Picker {
    fn new(events_max: u32) -> Picker {
        Picker {
            events_max: events_max as usize,
            picked: BTreeMap::new(),
            cut_revision: None,
        }
    }

    fn offer(&mut self, event: Event) {
        if self.cut_revision.is_some_and(|cut| event.revision() >= cut) {
            return;
        }
        let previous = self.picked.insert(event.position(), event);
        assert!(previous.is_none(), "two events at one position");
        while self.picked.len() > self.events_max {
            let (Some((first, _)), Some((last, _))) =
                (self.picked.first_key_value(), self.picked.last_key_value())
            else {
                break;
            };
            let (first_revision, last_revision) = (first.0, last.0);
            if first_revision == last_revision {
                break;
            }
            while self
                .picked
                .last_key_value()
                .is_some_and(|(position, _)| position.0 == last_revision)
            {
                self.picked.pop_last();
            }
            self.cut_revision = Some(last_revision);
        }
    }

    fn finish(self, end: u64) -> EventPage {
        let through_revision = self.cut_revision.map_or(end, |cut| cut - 1);
        let events: Vec<Event> = self.picked.into_values().collect();
        debug_assert!(events.windows(2).all(|w| w[0].position() < w[1].position()));
        assert!(
            events
                .last()
                .is_none_or(|e| e.revision() <= through_revision)
        );
        EventPage {
            events,
            through_revision,
        }
    }
}
