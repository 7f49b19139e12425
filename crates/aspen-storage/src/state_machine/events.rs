//! Handing committed changes to watchers: the sink the state machine publishes to, and the
//! recording of events while a batch applies.
//!
//! Recording costs a copy of every changed key and value, so it happens only while the sink
//! says someone is watching. A batch applied without recording is still announced (with
//! `events: None`), so a watcher that appeared meanwhile knows to read it back from history.

use std::sync::{Arc, OnceLock};

use aspen_core::event::CommittedBatch;
use aspen_core::{Event, EventKind};

use super::StateMachine;
use super::apply::Applier;
use super::records::StoredVersion;

/// Receives every committed batch, in commit order, after its commit.
pub trait EventSink: Send + Sync + 'static {
    /// Whether the next batch should record its events.
    fn wants_events(&self) -> bool;
    /// Called once per committed apply batch, in order; batches are contiguous in revision.
    fn publish(&self, batch: CommittedBatch);
    /// The whole state was replaced (a snapshot was installed) and is now at `revision`;
    /// what happened since the last batch can only be read from history.
    fn reset(&self, revision: u64);
}

/// The sink, set once; shared by every clone of the state machine.
#[derive(Default)]
pub(crate) struct EventHook {
    sink: OnceLock<Arc<dyn EventSink>>,
}

impl std::fmt::Debug for EventHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventHook(set: {})", self.sink.get().is_some())
    }
}

impl EventHook {
    pub(crate) fn wants_events(&self) -> bool {
        self.sink.get().is_some_and(|sink| sink.wants_events())
    }

    pub(crate) fn publish(&self, batch: CommittedBatch) {
        if let Some(sink) = self.sink.get() {
            sink.publish(batch);
        }
    }

    pub(crate) fn reset(&self, revision: u64) {
        if let Some(sink) = self.sink.get() {
            sink.reset(revision);
        }
    }
}

impl StateMachine {
    /// Connects the sink that receives committed events. Set it before Raft starts applying;
    /// returns false (and changes nothing) if a sink was already set.
    pub fn set_event_sink(&self, sink: Arc<dyn EventSink>) -> bool {
        self.events.sink.set(sink).is_ok()
    }
}

impl<'a, 't> Applier<'a, 't> {
    /// Records a put of `key` from `previous` to `new`, if this batch records events.
    pub(crate) fn record_put(
        &mut self,
        key: &[u8],
        previous: Option<&StoredVersion>,
        new: &StoredVersion,
    ) {
        let Some(events) = self.events.as_mut() else {
            return;
        };
        debug_assert!(!new.is_tombstone());
        debug_assert!(
            events
                .last()
                .is_none_or(|e| e.position() < (new.mod_revision, new.sub_revision))
        );
        events.push(Event {
            kind: EventKind::Put,
            kv: new.to_key_value(key),
            prev_kv: previous.map(|p| p.to_key_value(key)),
            sub_revision: new.sub_revision,
        });
    }

    /// Records the deletion of `key`'s `current` version at `revision`.
    pub(crate) fn record_delete(
        &mut self,
        key: &[u8],
        current: &StoredVersion,
        revision: u64,
        sub_revision: u32,
    ) {
        let Some(events) = self.events.as_mut() else {
            return;
        };
        events.push(Event::delete(
            key,
            revision,
            sub_revision,
            Some(current.to_key_value(key)),
        ));
    }
}
