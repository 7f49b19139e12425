//! Every named limit and default of the checker, in one place, with units last.

/// Default bound on the memoization cache entries (distinct `(linearized set, state)` pairs)
/// explored for one partition before the checker gives up with `Verdict::Unknown`.
pub const STATES_EXPLORED_MAX_DEFAULT: u64 = 10_000_000;

/// Default wall-clock budget for one whole check, across all partitions.
pub const TIME_BUDGET_MS_DEFAULT: u64 = 60_000;

/// Default bound on the estimated memory held by one partition's memoization cache: 1 GiB.
pub const CACHE_BYTES_MAX_DEFAULT: u64 = 1024 * 1024 * 1024;

/// Most operations one history may hold: an `OpId` is a `u32`.
pub const HISTORY_OPS_MAX: u64 = u32::MAX as u64;

/// The search looks at the clock once every this many steps: often enough to stop within a
/// few milliseconds of the deadline, rarely enough that reading the clock costs nothing.
pub const DEADLINE_CHECK_INTERVAL_STEPS: u64 = 4096;

/// Most distinct candidate model states an explanation lists.
pub const EXPLANATION_STATES_MAX: usize = 8;

/// Most operations of the failing prefix an explanation lists as context.
pub const EXPLANATION_OPS_MAX: usize = 16;

/// Fixed per-entry overhead assumed for the memoization hash set (hash, control byte, box
/// header), on top of the entry's own size: part of the cache memory estimate.
pub const CACHE_ENTRY_OVERHEAD_BYTES: u64 = 32;
