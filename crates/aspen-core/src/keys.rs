//! etcd's key-range conventions, in one place.
//!
//! A request names a key and a `range_end`:
//! - empty `range_end`: exactly `key`;
//! - `range_end == [0]`: every key `>= key` (with `key == [0]` too: every key);
//! - otherwise: the half-open interval `[key, range_end)`.

use std::ops::Bound;

/// A decoded key range. `end == None` means unbounded above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    Single(Vec<u8>),
    Interval {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
}

impl KeyRange {
    pub fn new(key: &[u8], range_end: &[u8]) -> KeyRange {
        if range_end.is_empty() {
            return KeyRange::Single(key.to_vec());
        }
        if range_end == [0u8] {
            return KeyRange::Interval {
                start: key.to_vec(),
                end: None,
            };
        }
        KeyRange::Interval {
            start: key.to_vec(),
            end: Some(range_end.to_vec()),
        }
    }

    pub fn contains(&self, candidate: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => k.as_slice() == candidate,
            KeyRange::Interval { start, end } => {
                candidate >= start.as_slice()
                    && end.as_ref().is_none_or(|e| candidate < e.as_slice())
            }
        }
    }

    /// True when the interval can hold no key (`range_end <= key`).
    pub fn is_empty(&self) -> bool {
        match self {
            KeyRange::Single(_) => false,
            KeyRange::Interval { start, end } => end.as_ref().is_some_and(|e| e <= start),
        }
    }

    pub fn start(&self) -> &[u8] {
        match self {
            KeyRange::Single(k) => k,
            KeyRange::Interval { start, .. } => start,
        }
    }

    /// The range as bounds over byte strings.
    pub fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        match self {
            KeyRange::Single(k) => (Bound::Included(k.as_slice()), Bound::Included(k.as_slice())),
            KeyRange::Interval { start, end } => (
                Bound::Included(start.as_slice()),
                match end {
                    Some(e) => Bound::Excluded(e.as_slice()),
                    None => Bound::Unbounded,
                },
            ),
        }
    }

    /// Two ranges share at least one key.
    pub fn overlaps(&self, other: &KeyRange) -> bool {
        if self.is_empty() || other.is_empty() {
            return false;
        }
        let (a_lo, a_hi) = self.closed_open();
        let (b_lo, b_hi) = other.closed_open();
        let a_before_b_ends = b_hi
            .as_ref()
            .is_none_or(|hi| a_lo.as_slice() < hi.as_slice());
        let b_before_a_ends = a_hi
            .as_ref()
            .is_none_or(|hi| b_lo.as_slice() < hi.as_slice());
        a_before_b_ends && b_before_a_ends
    }

    /// `[lo, hi)` form; a single key `k` becomes `[k, k\0)`.
    fn closed_open(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        match self {
            KeyRange::Single(k) => {
                let mut hi = k.clone();
                hi.push(0);
                (k.clone(), Some(hi))
            }
            KeyRange::Interval { start, end } => (start.clone(), end.clone()),
        }
    }
}

/// The `range_end` that selects every key with `prefix` (etcd's `--prefix`): the prefix with
/// its last byte below 0xff raised by one; `[0]` (to the end) when every byte is 0xff.
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conventions() {
        assert_eq!(KeyRange::new(b"a", b""), KeyRange::Single(b"a".to_vec()));
        assert!(KeyRange::new(b"a", b"\0").contains(b"zzzz"));
        assert!(!KeyRange::new(b"b", b"\0").contains(b"a"));
        assert!(KeyRange::new(b"\0", b"\0").contains(b"\0"));
        let r = KeyRange::new(b"a", b"c");
        assert!(r.contains(b"a") && r.contains(b"bzz") && !r.contains(b"c"));
        assert!(KeyRange::new(b"c", b"a").is_empty());
        assert_eq!(prefix_range_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn overlap() {
        let single = KeyRange::new(b"b", b"");
        assert!(single.overlaps(&KeyRange::new(b"a", b"c")));
        assert!(!single.overlaps(&KeyRange::new(b"c", b"d")));
        assert!(single.overlaps(&KeyRange::new(b"b", b"")));
        assert!(!single.overlaps(&KeyRange::new(b"a", b"")));
        assert!(KeyRange::new(b"a", b"\0").overlaps(&KeyRange::new(b"z", b"")));
        assert!(!KeyRange::new(b"a", b"b").overlaps(&KeyRange::new(b"b", b"c")));
    }
}
