//! A watch stream: the handle one client stream uses to add and cancel watchers, and the
//! messages the hub queues for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aspen_core::Event;
use aspen_core::keys::KeyRange;

use crate::hub::WatchHub;

/// What a stream asks to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRequest {
    /// `None`: the hub picks the lowest free id, as etcd does.
    pub watch_id: Option<i64>,
    pub range: KeyRange,
    /// The first revision to deliver; 0: the revision after the current one.
    pub start_revision: u64,
    pub filter_put: bool,
    pub filter_delete: bool,
    pub prev_kv: bool,
}

/// A watcher was added: its id, and the hub's revision when it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    pub watch_id: i64,
    pub revision: u64,
}

/// Why a watcher was not added. The messages are etcd's where etcd has the case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchError {
    DuplicateId,
    EmptyRange,
    TooManyWatchers,
}

impl std::error::Error for WatchError {}

impl std::fmt::Display for WatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WatchError::DuplicateId => "mvcc: duplicate watch ID provided on the WatchStream",
            WatchError::EmptyRange => "mvcc: empty watcher range",
            WatchError::TooManyWatchers => "mvcc: too many watchers",
        })
    }
}

/// What the hub queues for a stream, in the order the stream must send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    /// Events for one watcher, of one or more whole revisions, oldest first. `revision` is
    /// the hub's revision when they were queued.
    Events {
        watch_id: i64,
        revision: u64,
        events: Vec<Event>,
        /// The events' bytes, counted against the stream's and the hub's budgets until the
        /// last clone of this is dropped: the session passes it along with the responses it
        /// makes, so they count until gRPC takes them.
        held: Held,
    },
    /// Everything up to `revision` has been queued for the watcher (`watch_id == -1`: for
    /// every watcher of the stream).
    Progress { watch_id: i64, revision: u64 },
    /// The watcher needs history that compaction removed; it is gone from the hub.
    Compacted {
        watch_id: i64,
        compact_revision: u64,
        revision: u64,
    },
}

/// One client stream's handle on the hub. Dropping it removes its watchers.
pub struct WatchStream {
    pub(crate) hub: WatchHub,
    pub(crate) id: u64,
}

impl WatchStream {
    /// Adds a watcher. Events for it arrive on the stream's queue after this returns.
    pub fn watch(&self, request: WatchRequest) -> Result<Created, WatchError> {
        self.hub.add_watcher(self.id, request)
    }

    /// Removes a watcher; false if the stream has no watcher with this id. Messages for it
    /// may still be queued: the caller drops them.
    pub fn cancel(&self, watch_id: i64) -> bool {
        self.hub.remove_watcher((self.id, watch_id))
    }

    /// Queues a progress notice for the watcher if it is synced (etcd's `RequestProgress`);
    /// returns whether one was queued.
    pub fn request_progress(&self, watch_id: i64) -> bool {
        self.hub.progress_one((self.id, watch_id))
    }

    /// Queues a stream-wide progress notice (watch id -1) if every watcher of the stream is
    /// synced, so the revision it names is a true promise; returns whether one was queued.
    pub fn request_progress_all(&self) -> bool {
        self.hub.progress_all(self.id)
    }

    /// The hub's revision: the last revision whose events were handed to watchers.
    pub fn revision(&self) -> u64 {
        self.hub.revision()
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.hub.close_stream(self.id);
    }
}

/// Bytes of queued events, given back to their stream's and the hub's budgets when the last
/// clone is dropped. Compares equal to any other: it is accounting, not content.
#[derive(Debug, Clone, Default)]
pub struct Held(Option<Arc<HeldBytes>>);

#[derive(Debug)]
struct HeldBytes {
    bytes: u64,
    stream: Arc<AtomicU64>,
    hub: Arc<AtomicU64>,
}

impl Held {
    /// Takes `bytes` from both budgets until dropped.
    pub(crate) fn take(bytes: u64, stream: &Arc<AtomicU64>, hub: &Arc<AtomicU64>) -> Held {
        stream.fetch_add(bytes, Ordering::AcqRel);
        hub.fetch_add(bytes, Ordering::AcqRel);
        Held(Some(Arc::new(HeldBytes {
            bytes,
            stream: Arc::clone(stream),
            hub: Arc::clone(hub),
        })))
    }

    /// The bytes held (0 for an empty hold).
    pub fn bytes(&self) -> u64 {
        self.0.as_ref().map_or(0, |held| held.bytes)
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.stream.fetch_sub(self.bytes, Ordering::AcqRel);
        self.hub.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl PartialEq for Held {
    fn eq(&self, _: &Held) -> bool {
        true
    }
}

impl Eq for Held {}
