//! Integer conversions with their bounds stated (the workspace denies `as` casts that may
//! truncate or wrap).

// Built for 64-bit targets only (as Aspen is): there every u64 fits a usize.
const _: () = assert!(usize::BITS == u64::BITS, "a 64-bit target");

/// `value` as a usize: exact on 64-bit targets (asserted above).
#[allow(
    clippy::cast_possible_truncation,
    reason = "usize has 64 bits (asserted at compile time above)"
)]
pub(crate) const fn usize_from(value: u64) -> usize {
    value as usize
}

/// `value` as one of bbolt's u32 page fields (an element's offset or length, a page's
/// overflow count, the page size). The writer only builds pages for Aspen's keys and values,
/// bounded by its request size limit far below 4 GiB, so a larger one is a bug.
#[track_caller]
pub(crate) fn u32_field(value: usize, what: &str) -> u32 {
    match u32::try_from(value) {
        Ok(value) => value,
        Err(_) => panic!("{what} of {value} does not fit bbolt's u32 field"),
    }
}
