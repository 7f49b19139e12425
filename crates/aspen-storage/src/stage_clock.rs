//! When each recent log index reached each stage of a write on this node (appended, durable,
//! committed, applied), so that the node can tell where a put's time went once it is answered.
//!
//! The log store, its writer and the state machine stamp indices as they pass; `Node::write`
//! reads its proposal's stamps back when `client_write` returns, and turns them into the
//! per-stage histograms. The clock is a fixed ring of `STAGE_CLOCK_INDICES_MAX` slots indexed
//! by log index modulo the capacity: an index older than the ring is overwritten, never kept,
//! so memory is fixed however many entries pass. Each slot has its own mutex, uncontended in
//! practice (one stage at a time stamps an index), so a stamp costs a lock and a compare, and a
//! batch shares one clock read. A stamp for an index the slot does not hold (never appended
//! here, or already overwritten) is ignored, and a stage reached twice keeps its first stamp:
//! these are metrics, best effort, never a reason to panic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use aspen_core::convert::{nanos, usize_from};
use aspen_core::limits::STAGE_CLOCK_INDICES_MAX;

/// The stages the storage layer sees, in the order a write reaches them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// `LogStore::append` received the entry.
    Appended = 0,
    /// The log writer's commit holding the entry returned (fsynced).
    Durable = 1,
    /// openraft called `save_committed` with an index at or past the entry.
    Committed = 2,
    /// The state machine's batch holding the entry was committed.
    Applied = 3,
}

const STAGE_COUNT: usize = 4;

/// One index's stamps, in nanoseconds since the clock's origin (`StageClock::now_ns`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageTimes {
    pub appended_ns: Option<u64>,
    pub durable_ns: Option<u64>,
    pub committed_ns: Option<u64>,
    pub applied_ns: Option<u64>,
}

#[derive(Debug, Default)]
struct Slot {
    /// The log index these stamps belong to; `None` until one is appended here.
    index: Option<u64>,
    /// Per `Stage`; 0 means not reached (`now_ns` never returns 0).
    at_ns: [u64; STAGE_COUNT],
}

#[derive(Debug)]
pub struct StageClock {
    origin: Instant,
    slots: Box<[Mutex<Slot>]>,
    /// The next index a commit stamps: `save_committed` names only the newest committed index,
    /// so the clock remembers where the previous one ended.
    committed_next: AtomicU64,
}

impl Default for StageClock {
    fn default() -> StageClock {
        StageClock::with_capacity(STAGE_CLOCK_INDICES_MAX)
    }
}

fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    // A panic while holding a slot leaves at worst a wrong stamp: reading through is sound.
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl StageClock {
    /// A clock remembering the newest `capacity` indices; a power of two.
    pub fn with_capacity(capacity: u64) -> StageClock {
        assert!(
            capacity.is_power_of_two(),
            "stage clock capacity {capacity} is not a power of two"
        );
        StageClock {
            origin: Instant::now(),
            slots: (0..capacity).map(|_| Mutex::new(Slot::default())).collect(),
            committed_next: AtomicU64::new(0),
        }
    }

    /// Slots in the ring; fixed for the clock's life.
    pub fn capacity(&self) -> u64 {
        self.slots.len() as u64
    }

    /// Nanoseconds since the clock was made, at least 1: the unit of every stamp.
    pub fn now_ns(&self) -> u64 {
        nanos(self.origin.elapsed()).max(1)
    }

    fn slot(&self, index: u64) -> &Mutex<Slot> {
        &self.slots[usize_from(index & (self.capacity() - 1))]
    }

    /// The part of `first..=last` the ring can hold: its newest `capacity` indices.
    fn clamp(&self, first: u64, last: u64) -> std::ops::RangeInclusive<u64> {
        first.max(last.saturating_sub(self.capacity() - 1))..=last
    }

    /// `first..=last` were appended: their slots start over (an index appended again after a
    /// truncation is a new entry).
    pub fn appended(&self, first: u64, last: u64) {
        let now_ns = self.now_ns();
        for index in self.clamp(first, last) {
            let mut slot = lock(self.slot(index));
            slot.index = Some(index);
            slot.at_ns = [0; STAGE_COUNT];
            slot.at_ns[Stage::Appended as usize] = now_ns;
        }
    }

    /// `first..=last` reached `stage` now. An empty range is nothing to stamp.
    pub fn reached(&self, stage: Stage, first: u64, last: u64) {
        if first > last {
            return;
        }
        let now_ns = self.now_ns();
        for index in self.clamp(first, last) {
            let mut slot = lock(self.slot(index));
            if slot.index == Some(index) && slot.at_ns[stage as usize] == 0 {
                slot.at_ns[stage as usize] = now_ns;
            }
        }
    }

    /// Everything up to `index` is committed; stamps the indices not stamped by an earlier
    /// commit. A commit index that moved backwards stamps nothing.
    pub fn committed_up_to(&self, index: u64) {
        let first = self
            .committed_next
            .fetch_max(index.saturating_add(1), Ordering::Relaxed);
        self.reached(Stage::Committed, first, index);
    }

    /// The stamps of `index`, if the ring still holds it.
    pub fn times(&self, index: u64) -> Option<StageTimes> {
        let slot = lock(self.slot(index));
        if slot.index != Some(index) {
            return None;
        }
        let at = |stage: Stage| Some(slot.at_ns[stage as usize]).filter(|&ns| ns != 0);
        Some(StageTimes {
            appended_ns: at(Stage::Appended),
            durable_ns: at(Stage::Durable),
            committed_ns: at(Stage::Committed),
            applied_ns: at(Stage::Applied),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_more_indices_than_slots_keep_memory_fixed_and_the_newest_stamps() {
        let clock = StageClock::with_capacity(8);
        for index in 0..10_000 {
            clock.appended(index, index);
            clock.reached(Stage::Durable, index, index);
        }
        assert_eq!(clock.capacity(), 8);
        assert_eq!(clock.slots.len(), 8);
        assert_eq!(clock.times(0), None, "overwritten long ago");
        assert_eq!(clock.times(9_991), None, "overwritten by 9,999");
        for index in 9_992..10_000 {
            let times = clock.times(index).expect("among the newest 8");
            assert!(times.appended_ns.is_some() && times.durable_ns.is_some());
            assert_eq!(times.committed_ns, None);
        }
        // One batch wider than the ring stamps only what the ring can hold.
        clock.appended(0, 1_000_000);
        assert_eq!(clock.times(999_992), None);
        assert!(clock.times(999_993).is_some());
        assert!(clock.times(1_000_000).is_some());
    }

    #[test]
    fn missing_and_out_of_order_stages_are_ignored() {
        let clock = StageClock::with_capacity(16);
        // Never appended: later stages have nothing to stamp.
        clock.reached(Stage::Durable, 3, 5);
        clock.committed_up_to(5);
        assert_eq!(clock.times(4), None);
        // Applied before durable (as a quorum can commit before the leader's fsync).
        clock.appended(6, 7);
        clock.reached(Stage::Applied, 6, 6);
        let times = clock.times(6).expect("appended");
        assert!(times.applied_ns.is_some());
        assert_eq!(times.durable_ns, None);
        // A stage reached twice keeps its first stamp.
        let first_applied = times.applied_ns;
        clock.reached(Stage::Applied, 6, 6);
        assert_eq!(clock.times(6).expect("appended").applied_ns, first_applied);
        // A commit index that moves backwards, an empty range, extreme indices: no panic.
        clock.committed_up_to(7);
        let committed = clock.times(7).expect("appended").committed_ns;
        assert!(committed.is_some());
        clock.committed_up_to(2);
        clock.reached(Stage::Durable, 9, 8);
        clock.appended(u64::MAX, u64::MAX);
        clock.reached(Stage::Durable, 0, u64::MAX);
        clock.committed_up_to(u64::MAX);
        assert!(
            clock
                .times(u64::MAX)
                .expect("appended")
                .durable_ns
                .is_some()
        );
        assert_eq!(clock.times(7).expect("kept").committed_ns, committed);
        // Appended again after a truncation: the slot starts over.
        clock.appended(7, 7);
        assert_eq!(clock.times(7).expect("appended").committed_ns, None);
    }
}
