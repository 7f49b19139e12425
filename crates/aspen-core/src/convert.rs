//! Conversions between Aspen's integer types and etcd's, and from durations, each with the
//! bound that makes it exact stated once (the workspace denies `as` casts that may truncate or
//! wrap: root Cargo.toml `[workspace.lints]`).

use std::time::Duration;

// Aspen builds for 64-bit targets only: there every u64 fits a usize.
const _: () = assert!(usize::BITS == u64::BITS, "Aspen needs a 64-bit target");

/// A revision, version, count, byte size or lease id as etcd's int64. Aspen keeps them as u64
/// and none exceeds `i64::MAX`: revisions and versions count writes from 1, counts count stored
/// keys, file sizes are int64 (`off_t`) already, and lease ids are granted only as positive
/// int64s (`LeaseGrant` refuses negative ones, the lessor masks its own to 63 bits). A larger
/// value is a broken invariant, not an input.
#[track_caller]
pub fn wire_i64(value: u64) -> i64 {
    match i64::try_from(value) {
        Ok(value) => value,
        Err(_) => panic!("{value} is past etcd's int64: a revision, count or lease id overflowed"),
    }
}

/// `value` as a usize: exact on the 64-bit targets Aspen builds for (asserted above).
#[allow(
    clippy::cast_possible_truncation,
    reason = "usize has 64 bits (asserted at compile time above)"
)]
pub const fn usize_from(value: u64) -> usize {
    value as usize
}

/// Whole microseconds in `duration`, saturating at `u64::MAX` (over 584,000 years).
pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Whole milliseconds in `duration`, saturating at `u64::MAX`.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Whole nanoseconds in `duration`, saturating at `u64::MAX` (over 584 years).
pub fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_are_exact_within_their_bounds() {
        assert_eq!(wire_i64(i64::MAX as u64), i64::MAX);
        assert_eq!(usize_from(u64::MAX), usize::MAX);
        assert_eq!(micros(Duration::from_millis(3)), 3_000);
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(nanos(Duration::from_secs(1)), 1_000_000_000);
    }

    #[test]
    #[should_panic(expected = "past etcd's int64")]
    fn a_value_past_int64_is_a_broken_invariant() {
        wire_i64(1 << 63);
    }
}
