//! One watcher: what it watches, how its events are filtered, and where it is in history.

use aspen_core::keys::KeyRange;
use aspen_core::{Event, EventKind};

/// A watcher is named by its stream and its id within the stream.
pub(crate) type WatcherKey = (u64, i64);

#[derive(Debug)]
pub(crate) struct Watcher {
    pub range: KeyRange,
    pub filter_put: bool,
    pub filter_delete: bool,
    pub prev_kv: bool,
    /// The first revision this watcher has not been sent yet: every event in its range below
    /// this one was delivered (or filtered out), none at or above it was.
    pub next_revision: u64,
    /// Synced watchers get events as batches commit; unsynced ones catch up from history.
    pub synced: bool,
}

impl Watcher {
    /// Whether `event` goes to this watcher, ignoring its position.
    pub fn wants(&self, event: &Event) -> bool {
        let filtered = match event.kind {
            EventKind::Put => self.filter_put,
            EventKind::Delete => self.filter_delete,
        };
        !filtered && self.range.contains(&event.kv.key)
    }

    /// The event as this watcher receives it (without `prev_kv` unless asked for).
    pub fn shape(&self, event: &Event) -> Event {
        if self.prev_kv {
            return event.clone();
        }
        Event {
            kind: event.kind,
            kv: event.kv.clone(),
            prev_kv: None,
            sub_revision: event.sub_revision,
        }
    }

    /// Bytes `event` holds as this watcher receives it (`Event::held_bytes` of `shape`).
    pub fn shaped_bytes(&self, event: &Event) -> u64 {
        let prev_bytes = match (&event.prev_kv, self.prev_kv) {
            (Some(prev), false) => (prev.key.len() + prev.value.len()) as u64,
            _ => 0,
        };
        event.held_bytes() - prev_bytes
    }

    /// The events of `page` (in order) this watcher receives, from `next_revision` on.
    pub fn select<'e>(&self, page: impl IntoIterator<Item = &'e Event>) -> Vec<Event> {
        page.into_iter()
            .filter(|e| e.revision() >= self.next_revision && self.wants(e))
            .map(|e| self.shape(e))
            .collect()
    }
}
