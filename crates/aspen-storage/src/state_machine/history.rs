//! Replaying MVCC history as watch events: what a watcher that fell behind (or asked for an
//! old start revision) reads instead of the live feed.
//!
//! Versions are stored by revision (`kv_revs`), so a revision window is read in order,
//! directly; each event's previous version comes from the key index. A page holds at most
//! `events_max` events and `WATCH_PAGE_BYTES_MAX` bytes (plus the rest of the revision that
//! crossed them: a revision is never split) and looks at most `EVENT_SCAN_RECORDS_MAX` versions, so its time and memory are
//! bounded however much history the window holds; a page cut short ends at a revision
//! boundary and says where (`through_revision`).

use aspen_core::keys::KeyRange;
use aspen_core::limits::WATCH_PAGE_BYTES_MAX;
use aspen_core::{ApplyError, Event, EventKind};
use redb::ReadableTable;

use super::MvccReader;
use super::mvcc::{self, RevKey, RevRecord};
use super::records::StoredVersion;
use crate::error::{Result, decode};
use crate::schema;

/// Versions one page looks at, matching or not: bounds a page over a long window of other
/// keys' writes. The next page goes on from where this one stopped.
pub const EVENT_SCAN_RECORDS_MAX: u32 = 16_384;

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
        let view = super::read_view(&self.store, &db)?;
        let txn = &view.txn;
        let state = &view.state;
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
        let index = view.index();
        let revs = txn.open_table(schema::KV_REVS)?;
        let mut events: Vec<Event> = Vec::new();
        let mut through_revision = end;
        let mut revision_of_last: Option<u64> = None;
        // Where the events of the revision being read start in `events`.
        let mut revision_start: usize = 0;
        let mut page_bytes: u64 = 0;
        let window = revs.range::<RevKey>((start, 0)..=(end, u32::MAX))?;
        for (scanned, item) in (0u32..).zip(window) {
            let (position, bytes) = item?;
            let (main, sub) = position.value();
            if revision_of_last != Some(main) {
                // Stop only between revisions, once the page is full or has looked far enough.
                if revision_of_last.is_some()
                    && (events.len() >= events_max as usize
                        || page_bytes >= WATCH_PAGE_BYTES_MAX
                        || scanned >= EVENT_SCAN_RECORDS_MAX)
                {
                    through_revision = main - 1;
                    break;
                }
                revision_of_last = Some(main);
                revision_start = events.len();
            }
            let record: RevRecord = decode("kv_revs", bytes.value())?;
            if !range.contains(&record.key) {
                continue;
            }
            let version = record.to_version(main, sub);
            let previous = previous_version(&index, &revs, &record.key, main)?;
            let event = event_for(&record.key, previous.as_ref(), &version);
            page_bytes += event.held_bytes();
            events.push(event);
            // A revision that would overfill the page goes to the next one, unless it is the
            // page's first: one revision alone may exceed `events_max` or the byte bound.
            let overfull = events.len() > events_max as usize || page_bytes > WATCH_PAGE_BYTES_MAX;
            if overfull && revision_start > 0 {
                events.truncate(revision_start);
                through_revision = main - 1;
                break;
            }
        }
        debug_assert!(events.windows(2).all(|w| w[0].position() < w[1].position()));
        Ok(Ok(EventPage {
            events,
            through_revision,
        }))
    }
}

/// `key`'s version just before revision `main`, with its value (none if absent, deleted, or
/// compacted away).
fn previous_version<X, R>(
    index: &X,
    revs: &R,
    key: &[u8],
    main: u64,
) -> Result<Option<StoredVersion>>
where
    X: mvcc::IndexSource,
    R: ReadableTable<RevKey, &'static [u8]>,
{
    if main == 0 {
        return Ok(None);
    }
    mvcc::version_at(index, revs, key, main - 1, true)
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
