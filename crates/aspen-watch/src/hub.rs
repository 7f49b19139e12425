//! The hub: every watcher of one node, fed by that node's state machine after each commit.
//!
//! One mutex guards the watcher sets and the hub's revision. `publish` (the apply path) and
//! the catch-up step both run under it, so a watcher moves between synced and unsynced
//! atomically with respect to the batches: a batch is delivered either live or later from
//! history, never both and never neither. Every queue send is a `try_send` under the lock, so
//! a full queue never blocks the apply path; it only makes that watcher unsynced.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aspen_core::event::CommittedBatch;
use aspen_core::keys::KeyRange;
use aspen_core::{ApplyError, Event, limits};
use aspen_storage::state_machine::EventSink;
use aspen_storage::{MvccReader, StorageError};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc};

use crate::stream::{Created, Held, WatchError, WatchMessage, WatchRequest, WatchStream};
use crate::watcher::{Watcher, WatcherKey};

/// The hub's bounds; tests shrink them to reach full queues and short pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubOptions {
    pub stream_queue_messages_max: u32,
    pub watchers_per_stream_max: u32,
    pub watchers_max: u32,
    pub sync_batch_events_max: u32,
    pub sync_watchers_max: u32,
    pub sync_interval_ms: u64,
    pub stream_queue_bytes_max: u64,
    pub queued_bytes_max: u64,
    pub sync_round_bytes_max: u64,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            stream_queue_messages_max: limits::WATCH_STREAM_QUEUE_MESSAGES_MAX,
            watchers_per_stream_max: limits::WATCHERS_PER_STREAM_MAX,
            watchers_max: limits::WATCHERS_MAX,
            sync_batch_events_max: limits::WATCH_SYNC_BATCH_EVENTS_MAX,
            sync_watchers_max: limits::WATCH_SYNC_WATCHERS_MAX,
            sync_interval_ms: limits::WATCH_SYNC_INTERVAL_MS,
            stream_queue_bytes_max: limits::WATCH_STREAM_QUEUE_BYTES_MAX,
            queued_bytes_max: limits::WATCH_QUEUED_BYTES_MAX,
            sync_round_bytes_max: limits::WATCH_SYNC_ROUND_BYTES_MAX,
        }
    }
}

/// The watch hub of one node. Cheap to clone.
#[derive(Clone)]
pub struct WatchHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    reader: MvccReader,
    options: HubOptions,
    state: Mutex<HubState>,
    /// Watchers in the hub, read without the lock on every apply batch.
    watcher_count: AtomicU64,
    /// Wakes the catch-up task when a watcher falls behind.
    lagging: Notify,
}

struct StreamEntry {
    queue: mpsc::Sender<WatchMessage>,
    /// Event bytes of this stream's messages not yet taken by gRPC (`Held`).
    held_bytes: Arc<AtomicU64>,
    watch_ids: BTreeSet<i64>,
    next_auto_id: i64,
}

struct HubState {
    /// The last revision whose events were handed to watchers.
    revision: u64,
    watchers: BTreeMap<WatcherKey, Watcher>,
    unsynced: BTreeSet<WatcherKey>,
    streams: HashMap<u64, StreamEntry>,
    next_stream_id: u64,
    /// Where the last catch-up step stopped, so every lagging watcher gets its turn.
    sync_cursor: Option<WatcherKey>,
    /// Event bytes of every stream's messages not yet taken by gRPC.
    held_bytes: Arc<AtomicU64>,
    stream_bytes_max: u64,
    hub_bytes_max: u64,
}

impl WatchHub {
    /// A hub at the state machine's current revision. Connect it with
    /// `StateMachine::set_event_sink(hub.event_sink())` before anything is applied.
    pub fn new(reader: MvccReader, options: HubOptions) -> Result<WatchHub, StorageError> {
        assert!(options.stream_queue_messages_max > 0 && options.sync_batch_events_max > 0);
        assert!(options.watchers_per_stream_max <= options.watchers_max);
        let revision = reader.applied_state()?.revision;
        let state = HubState {
            revision,
            watchers: BTreeMap::new(),
            unsynced: BTreeSet::new(),
            streams: HashMap::new(),
            next_stream_id: 1,
            sync_cursor: None,
            held_bytes: Arc::default(),
            stream_bytes_max: options.stream_queue_bytes_max,
            hub_bytes_max: options.queued_bytes_max,
        };
        Ok(WatchHub {
            inner: Arc::new(HubInner {
                reader,
                options,
                state: Mutex::new(state),
                watcher_count: AtomicU64::new(0),
                lagging: Notify::new(),
            }),
        })
    }

    pub fn event_sink(&self) -> Arc<dyn EventSink> {
        self.inner.clone()
    }

    /// Runs catch-up steps every `sync_interval_ms`, sooner when a watcher falls behind; the
    /// task ends once the hub is dropped.
    pub fn spawn_sync_task(&self) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        let interval = Duration::from_millis(self.inner.options.sync_interval_ms);
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let _ = tokio::time::timeout(interval, inner.lagging.notified()).await;
                inner.sync_once();
            }
        })
    }

    /// Opens a stream: its handle and the queue the hub fills for it.
    pub fn open_stream(&self) -> (WatchStream, mpsc::Receiver<WatchMessage>) {
        let (sender, receiver) =
            mpsc::channel(self.inner.options.stream_queue_messages_max as usize);
        let mut state = self.inner.lock();
        let id = state.next_stream_id;
        state.next_stream_id += 1;
        let entry = StreamEntry {
            queue: sender,
            held_bytes: Arc::default(),
            watch_ids: BTreeSet::new(),
            next_auto_id: 0,
        };
        assert!(state.streams.insert(id, entry).is_none());
        let stream = WatchStream {
            hub: self.clone(),
            id,
        };
        (stream, receiver)
    }

    /// One catch-up step over at most `sync_watchers_max` lagging watchers; returns how many
    /// are still lagging. The sync task calls it; tests may call it directly.
    pub fn sync_once(&self) -> u32 {
        self.inner.sync_once()
    }

    pub fn revision(&self) -> u64 {
        self.inner.lock().revision
    }

    pub fn watcher_count(&self) -> u64 {
        self.inner.watcher_count.load(Ordering::Relaxed)
    }

    /// Event bytes queued for all streams and not yet taken by gRPC (bounded by
    /// `queued_bytes_max`, plus one message when nothing else is held).
    pub fn held_bytes(&self) -> u64 {
        self.inner.lock().held_bytes.load(Ordering::Acquire)
    }

    pub fn unsynced_count(&self) -> u64 {
        self.inner.lock().unsynced.len() as u64
    }

    pub(crate) fn add_watcher(
        &self,
        stream_id: u64,
        request: WatchRequest,
    ) -> Result<Created, WatchError> {
        self.inner.add_watcher(stream_id, request)
    }

    pub(crate) fn remove_watcher(&self, key: WatcherKey) -> bool {
        let mut state = self.inner.lock();
        let removed = state.remove_watcher(key);
        self.inner.count(&state);
        removed
    }

    pub(crate) fn close_stream(&self, stream_id: u64) {
        let mut state = self.inner.lock();
        state.close_stream(stream_id);
        self.inner.count(&state);
    }

    pub(crate) fn progress_one(&self, key: WatcherKey) -> bool {
        let state = self.inner.lock();
        let synced = state.watchers.get(&key).is_some_and(|w| w.synced);
        let revision = state.revision;
        synced
            && state.send(
                key.0,
                WatchMessage::Progress {
                    watch_id: key.1,
                    revision,
                },
            ) == Sent::Queued
    }

    pub(crate) fn progress_all(&self, stream_id: u64) -> bool {
        let state = self.inner.lock();
        let Some(stream) = state.streams.get(&stream_id) else {
            return false;
        };
        let all_synced = stream.watch_ids.iter().all(|id| {
            state
                .watchers
                .get(&(stream_id, *id))
                .is_some_and(|w| w.synced)
        });
        let message = WatchMessage::Progress {
            watch_id: -1,
            revision: state.revision,
        };
        all_synced && state.send(stream_id, message) == Sent::Queued
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Queued,
    Full,
    Closed,
}

impl HubState {
    /// Whether `stream_id` may take a message of `bytes` event bytes now: a free slot, and
    /// room in its budget and the hub's. A message larger than a budget goes only when nothing
    /// is held against that budget, so one large revision is never stuck for good.
    fn room_for(&self, stream_id: u64, bytes: u64) -> bool {
        let Some(stream) = self.streams.get(&stream_id) else {
            return true;
        };
        let fits = |held: u64, max: u64| held == 0 || held.saturating_add(bytes) <= max;
        stream.queue.capacity() > 0
            && fits(
                stream.held_bytes.load(Ordering::Acquire),
                self.stream_bytes_max,
            )
            && fits(self.held_bytes.load(Ordering::Acquire), self.hub_bytes_max)
    }

    /// Events for a watcher, holding their bytes against the budgets.
    fn events_message(&self, key: WatcherKey, revision: u64, events: Vec<Event>) -> WatchMessage {
        let bytes = events.iter().map(Event::held_bytes).sum();
        let held = match self.streams.get(&key.0) {
            Some(stream) => Held::take(bytes, &stream.held_bytes, &self.held_bytes),
            None => Held::default(),
        };
        WatchMessage::Events {
            watch_id: key.1,
            revision,
            events,
            held,
        }
    }

    fn send(&self, stream_id: u64, message: WatchMessage) -> Sent {
        let Some(stream) = self.streams.get(&stream_id) else {
            return Sent::Closed;
        };
        match stream.queue.try_send(message) {
            Ok(()) => Sent::Queued,
            Err(TrySendError::Full(_)) => Sent::Full,
            Err(TrySendError::Closed(_)) => Sent::Closed,
        }
    }

    /// Room for a history page of up to `page_bytes_max`: a free slot, and room for it in
    /// both budgets, so a page is read only when it can be delivered.
    fn has_room(&self, stream_id: u64, page_bytes_max: u64) -> bool {
        self.streams.get(&stream_id).is_some_and(|s| {
            let fits = |held: u64, max: u64| held == 0 || held + page_bytes_max <= max;
            s.queue.capacity() > 0
                && fits(s.held_bytes.load(Ordering::Acquire), self.stream_bytes_max)
                && fits(self.held_bytes.load(Ordering::Acquire), self.hub_bytes_max)
        })
    }

    fn remove_watcher(&mut self, key: WatcherKey) -> bool {
        self.unsynced.remove(&key);
        if let Some(stream) = self.streams.get_mut(&key.0) {
            stream.watch_ids.remove(&key.1);
        }
        self.watchers.remove(&key).is_some()
    }

    fn close_stream(&mut self, stream_id: u64) {
        let Some(stream) = self.streams.remove(&stream_id) else {
            return;
        };
        for id in stream.watch_ids {
            self.unsynced.remove(&(stream_id, id));
            self.watchers.remove(&(stream_id, id));
        }
    }

    fn mark_unsynced(&mut self, key: WatcherKey) {
        if let Some(watcher) = self.watchers.get_mut(&key) {
            watcher.synced = false;
            self.unsynced.insert(key);
        }
    }

    fn mark_synced(&mut self, key: WatcherKey) {
        if let Some(watcher) = self.watchers.get_mut(&key) {
            assert!(
                watcher.next_revision > self.revision,
                "promoting a lagging watcher"
            );
            watcher.synced = true;
            self.unsynced.remove(&key);
        }
    }
}

impl HubInner {
    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding the lock leaves watcher bookkeeping that is still consistent
        // for every completed operation; keep serving rather than poison every stream.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, state: &HubState) {
        self.watcher_count
            .store(state.watchers.len() as u64, Ordering::Relaxed);
    }

    fn add_watcher(&self, stream_id: u64, request: WatchRequest) -> Result<Created, WatchError> {
        if request.range.is_empty() {
            return Err(WatchError::EmptyRange);
        }
        let mut state = self.lock();
        let total = state.watchers.len() as u64;
        let revision = state.revision;
        let Some(stream) = state.streams.get_mut(&stream_id) else {
            panic!("a watch stream handle outlived its hub entry");
        };
        if stream.watch_ids.len() as u64 >= u64::from(self.options.watchers_per_stream_max)
            || total >= u64::from(self.options.watchers_max)
        {
            return Err(WatchError::TooManyWatchers);
        }
        let watch_id = match request.watch_id {
            Some(id) if stream.watch_ids.contains(&id) => return Err(WatchError::DuplicateId),
            Some(id) => id,
            None => {
                // Bounded: at most watchers_per_stream_max ids are taken.
                let mut id = stream.next_auto_id;
                while stream.watch_ids.contains(&id) {
                    id += 1;
                }
                stream.next_auto_id = id + 1;
                id
            }
        };
        stream.watch_ids.insert(watch_id);
        let next_revision = match request.start_revision {
            0 => revision + 1,
            start => start,
        };
        let synced = next_revision > revision;
        let watcher = Watcher {
            range: request.range,
            filter_put: request.filter_put,
            filter_delete: request.filter_delete,
            prev_kv: request.prev_kv,
            next_revision,
            synced,
        };
        let key = (stream_id, watch_id);
        assert!(state.watchers.insert(key, watcher).is_none());
        if !synced {
            state.unsynced.insert(key);
            self.lagging.notify_one();
        }
        self.count(&state);
        Ok(Created { watch_id, revision })
    }

    fn publish(&self, batch: CommittedBatch) {
        assert!(batch.revision_after >= batch.revision_before);
        let mut state = self.lock();
        let became_lagging = match &batch.events {
            Some(events) if batch.revision_before == state.revision => {
                deliver(&mut state, events, batch.revision_after)
            }
            _ => unsync_through(&mut state, batch.revision_after),
        };
        state.revision = batch.revision_after;
        if became_lagging {
            self.lagging.notify_one();
        }
        self.count(&state);
    }

    /// One catch-up round: picks lagging watchers under the lock, reads their history pages
    /// with the lock released (so `publish`, on the apply path, never waits for a history
    /// read), then delivers the pages under the lock again, each only if its watcher is still
    /// there, still lagging, and still owed the revision the page starts at.
    fn sync_once(&self) -> u32 {
        let work: Vec<PageWork> = {
            let mut state = self.lock();
            plan_round(&mut state, self.options.sync_watchers_max as usize)
        };
        // Pages are read until the round's bytes reach `sync_round_bytes_max`; the watchers
        // after that wait for the next round, which starts after the last one read.
        let mut pages: Vec<(PageWork, PageRead)> = Vec::new();
        let mut round_bytes: u64 = 0;
        let planned = work.len();
        for work in work {
            if round_bytes >= self.options.sync_round_bytes_max {
                break;
            }
            let read = self.reader.events(
                &work.range,
                work.next_revision,
                work.revision,
                self.options.sync_batch_events_max,
            );
            if let Ok(Ok(page)) = &read {
                round_bytes += page.events.iter().map(Event::held_bytes).sum::<u64>();
            }
            pages.push((work, read));
        }
        let mut state = self.lock();
        if pages.len() < planned {
            state.sync_cursor = pages.last().map(|(work, _)| work.key);
        }
        for (work, read) in pages {
            deliver_page(&mut state, work, read);
        }
        self.count(&state);
        // Unsynced watchers are watchers: at most `watchers_max`, a u32.
        u32::try_from(state.unsynced.len()).unwrap_or(u32::MAX)
    }
}

/// Under the lock: pages for up to `quota` lagging watchers, taken in turn from where the last
/// round stopped. Watchers whose stream has no room for a page are passed over (they hold
/// nothing and cost one lookup), so a reader is not kept waiting behind many that never read.
fn plan_round(state: &mut HubState, quota: usize) -> Vec<PageWork> {
    let total = state.unsynced.len();
    let mut work = Vec::new();
    let mut visited = 0;
    let mut cursor = state.sync_cursor;
    while work.len() < quota && visited < total {
        let after = match cursor {
            Some(after) => (std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded),
            None => (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded),
        };
        let chunk: Vec<WatcherKey> = state.unsynced.range(after).take(quota).copied().collect();
        if chunk.is_empty() {
            if cursor.is_none() {
                break;
            }
            cursor = None; // wrap around
            continue;
        }
        for key in chunk {
            visited += 1;
            cursor = Some(key);
            work.extend(plan_page(state, key));
            if work.len() >= quota || visited >= total {
                break;
            }
        }
    }
    state.sync_cursor = cursor;
    work
}

/// A history page one lagging watcher is owed.
struct PageWork {
    key: WatcherKey,
    range: KeyRange,
    next_revision: u64,
    /// The hub's revision when the page was planned: the page reads up to it.
    revision: u64,
}

type PageRead = aspen_storage::error::Result<aspen_storage::state_machine::EventsOutcome>;

/// Under the lock: the page `key` is owed, or `None` when it is owed none now (gone, caught up
/// and promoted, or its stream's queue is full).
fn plan_page(state: &mut HubState, key: WatcherKey) -> Option<PageWork> {
    let revision = state.revision;
    let Some(watcher) = state.watchers.get(&key) else {
        state.unsynced.remove(&key);
        return None;
    };
    if watcher.next_revision > revision {
        state.mark_synced(key);
        return None;
    }
    if !state.has_room(key.0, limits::WATCH_PAGE_BYTES_MAX) {
        return None;
    }
    Some(PageWork {
        key,
        range: watcher.range.clone(),
        next_revision: watcher.next_revision,
        revision,
    })
}

/// Under the lock: hands a page read without it to its watcher, and promotes the watcher once
/// caught up with the hub's revision now.
fn deliver_page(state: &mut HubState, work: PageWork, read: PageRead) {
    let key = work.key;
    let still_owed = state.unsynced.contains(&key)
        && state
            .watchers
            .get(&key)
            .is_some_and(|w| w.next_revision == work.next_revision);
    if !still_owed {
        return;
    }
    let revision = state.revision;
    let page = match read {
        Ok(Ok(page)) => page,
        Ok(Err(ApplyError::Compacted { compact_revision })) => {
            let message = WatchMessage::Compacted {
                watch_id: key.1,
                compact_revision,
                revision,
            };
            if state.send(key.0, message) != Sent::Full {
                state.remove_watcher(key);
            }
            return;
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, "watch catch-up refused");
            return;
        }
        Err(error) => {
            tracing::warn!(%error, "watch catch-up could not read history");
            return;
        }
    };
    assert!(
        page.through_revision >= work.next_revision,
        "a catch-up page made no progress"
    );
    let Some(watcher) = state.watchers.get(&key) else {
        return;
    };
    let events = watcher.select(&page.events);
    drop(page.events);
    if !events.is_empty() {
        // Only the hub sends, under the lock; the room checked when planning may be gone if
        // another page of the same stream was delivered first: then try again next round.
        let bytes = events.iter().map(Event::held_bytes).sum();
        if !state.room_for(key.0, bytes) {
            return;
        }
        let message = state.events_message(key, revision, events);
        match state.send(key.0, message) {
            Sent::Queued => {}
            Sent::Full => unreachable!("a queue with room refused a message"),
            Sent::Closed => {
                state.close_stream(key.0);
                return;
            }
        }
    }
    if let Some(watcher) = state.watchers.get_mut(&key) {
        watcher.next_revision = page.through_revision + 1;
    }
    if page.through_revision >= revision {
        state.mark_synced(key);
    }
}

/// Hands a batch's events to every synced watcher; one whose queue is full becomes unsynced
/// at the batch's first revision. Returns whether any watcher fell behind.
fn deliver(state: &mut HubState, events: &[Event], revision_after: u64) -> bool {
    let mut by_key: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for (index, event) in events.iter().enumerate() {
        by_key
            .entry(event.kv.key.as_slice())
            .or_default()
            .push(index);
    }
    let mut fallen: Vec<WatcherKey> = Vec::new();
    let mut closed: Vec<u64> = Vec::new();
    let mut delivered: Vec<WatcherKey> = Vec::new();
    let synced: Vec<WatcherKey> = state
        .watchers
        .iter()
        .filter(|(_, w)| w.synced)
        .map(|(k, _)| *k)
        .collect();
    for key in synced {
        let Some(watcher) = state.watchers.get(&key) else {
            continue;
        };
        let mut indices: Vec<usize> = by_key
            .range::<[u8], _>(watcher.range.bounds())
            .flat_map(|(_, indices)| indices.iter().copied())
            .collect();
        indices.sort_unstable();
        let wanted: Vec<&Event> = indices
            .iter()
            .map(|&i| &events[i])
            .filter(|e| e.revision() >= watcher.next_revision && watcher.wants(e))
            .collect();
        if !wanted.is_empty() {
            // Measured before anything is copied: a watcher with no room copies nothing.
            let bytes: u64 = wanted.iter().map(|e| watcher.shaped_bytes(e)).sum();
            if !state.room_for(key.0, bytes) {
                fallen.push(key);
                continue;
            }
            let selected = watcher.select(wanted);
            let message = state.events_message(key, revision_after, selected);
            let sent = state.streams.get(&key.0).map(|s| s.queue.try_send(message));
            match sent {
                Some(Ok(())) => {}
                Some(Err(TrySendError::Full(_))) => {
                    fallen.push(key);
                    continue;
                }
                Some(Err(TrySendError::Closed(_))) | None => {
                    closed.push(key.0);
                    continue;
                }
            }
        }
        delivered.push(key);
    }
    for key in delivered {
        if let Some(watcher) = state.watchers.get_mut(&key) {
            watcher.next_revision = watcher.next_revision.max(revision_after + 1);
        }
    }
    for stream_id in closed {
        state.close_stream(stream_id);
    }
    let became_lagging = !fallen.is_empty();
    for key in fallen {
        state.mark_unsynced(key);
    }
    became_lagging
}

/// The batch's events were not recorded: every synced watcher that should have seen part of
/// it reads it from history instead.
fn unsync_through(state: &mut HubState, revision_after: u64) -> bool {
    let behind: Vec<WatcherKey> = state
        .watchers
        .iter()
        .filter(|(_, w)| w.synced && w.next_revision <= revision_after)
        .map(|(k, _)| *k)
        .collect();
    let became_lagging = !behind.is_empty();
    for key in behind {
        state.mark_unsynced(key);
    }
    became_lagging
}

impl EventSink for HubInner {
    fn wants_events(&self) -> bool {
        self.watcher_count.load(Ordering::Relaxed) > 0
    }

    fn publish(&self, batch: CommittedBatch) {
        HubInner::publish(self, batch);
    }

    fn reset(&self, revision: u64) {
        let mut state = self.lock();
        let synced: Vec<WatcherKey> = state
            .watchers
            .iter()
            .filter(|(_, w)| w.synced)
            .map(|(k, _)| *k)
            .collect();
        for key in &synced {
            state.mark_unsynced(*key);
        }
        state.revision = revision;
        if !state.unsynced.is_empty() {
            self.lagging.notify_one();
        }
    }
}
