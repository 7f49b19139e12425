//! A fixed-size set of small integers: which operations of a partition are linearized.

/// Bits `0..capacity`, packed in words. Hashes and compares by content, so it can key the
/// memoization cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct BitSet {
    words: Box<[u64]>,
}

impl BitSet {
    pub(crate) fn with_capacity(bits: usize) -> BitSet {
        BitSet {
            words: vec![0; bits.div_ceil(64)].into_boxed_slice(),
        }
    }

    pub(crate) fn insert(&mut self, bit: usize) {
        self.words[bit / 64] |= 1 << (bit % 64);
    }

    pub(crate) fn remove(&mut self, bit: usize) {
        self.words[bit / 64] &= !(1 << (bit % 64));
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, bit: usize) -> bool {
        self.words[bit / 64] & (1 << (bit % 64)) != 0
    }

    /// Heap bytes held, for the cache memory estimate.
    pub(crate) fn heap_bytes(&self) -> u64 {
        (self.words.len() * size_of::<u64>()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_across_words() {
        let mut set = BitSet::with_capacity(130);
        for bit in [0, 63, 64, 129] {
            assert!(!set.contains(bit));
            set.insert(bit);
            assert!(set.contains(bit));
        }
        set.remove(64);
        assert!(!set.contains(64));
        assert!(set.contains(63) && set.contains(129));
        assert_eq!(set.heap_bytes(), 24);
        let mut other = BitSet::with_capacity(130);
        for bit in [129, 63, 0] {
            other.insert(bit);
        }
        assert_eq!(set, other);
    }
}
