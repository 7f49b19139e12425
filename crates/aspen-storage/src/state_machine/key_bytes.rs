//! A key as the in-memory key index holds it (`key_index.rs`): up to `INLINE_BYTES_MAX` bytes
//! inside the map's node itself, longer ones on the heap.
//!
//! Why: the index is a `BTreeMap`, and a lookup compares the sought key with several keys of
//! every node on its way down. With `Vec<u8>` keys each comparison followed a pointer to a
//! cache line of its own: at 1M keys a cold lookup took about 2.7 µs, 46 % of an apply's put
//! (`storage_bench`'s profile, session 24). Inline, a node's keys sit in its own lines.

use std::borrow::Borrow;
use std::cmp::Ordering;

/// Keys up to this long are stored inline (the enum is 32 bytes, a `Vec<u8>`'s 24 plus 8): 30
/// covers `bench/vs-etcd`'s keys (`aspenctl-bench/kv/` and 12 digits) and many real ones.
pub(crate) const INLINE_BYTES_MAX: usize = 30;

#[derive(Clone)]
pub(crate) enum KeyBytes {
    Inline {
        len: u8,
        bytes: [u8; INLINE_BYTES_MAX],
    },
    Heap(Box<[u8]>),
}

impl KeyBytes {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            KeyBytes::Inline { len, bytes } => &bytes[..usize::from(*len)],
            KeyBytes::Heap(bytes) => bytes,
        }
    }
}

impl From<&[u8]> for KeyBytes {
    fn from(key: &[u8]) -> KeyBytes {
        if key.len() <= INLINE_BYTES_MAX {
            let mut bytes = [0u8; INLINE_BYTES_MAX];
            bytes[..key.len()].copy_from_slice(key);
            let len = u8::try_from(key.len()).unwrap_or(u8::MAX);
            KeyBytes::Inline { len, bytes }
        } else {
            KeyBytes::Heap(key.into())
        }
    }
}

impl From<Vec<u8>> for KeyBytes {
    fn from(key: Vec<u8>) -> KeyBytes {
        if key.len() <= INLINE_BYTES_MAX {
            KeyBytes::from(key.as_slice())
        } else {
            KeyBytes::Heap(key.into_boxed_slice())
        }
    }
}

impl std::ops::Deref for KeyBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

// Borrow<[u8]> lets the map be searched by `&[u8]`: equality and order are the bytes', as
// `Borrow` requires.
impl Borrow<[u8]> for KeyBytes {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for KeyBytes {
    fn eq(&self, other: &KeyBytes) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for KeyBytes {}

impl PartialOrd for KeyBytes {
    fn partial_cmp(&self, other: &KeyBytes) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for KeyBytes {
    fn cmp(&self, other: &KeyBytes) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_inline_long_ones_on_the_heap_and_both_order_as_bytes() {
        assert_eq!(std::mem::size_of::<KeyBytes>(), 32);
        let short = KeyBytes::from(b"abc".as_slice());
        assert!(matches!(short, KeyBytes::Inline { .. }));
        let long = KeyBytes::from(vec![b'a'; INLINE_BYTES_MAX + 1]);
        assert!(matches!(long, KeyBytes::Heap(_)));
        let edge = KeyBytes::from(vec![b'z'; INLINE_BYTES_MAX]);
        assert!(matches!(edge, KeyBytes::Inline { .. }));
        assert_eq!(&*edge, vec![b'z'; INLINE_BYTES_MAX].as_slice());
        let empty = KeyBytes::from(Vec::new());
        let mut keys = [edge.clone(), long.clone(), short.clone(), empty.clone()];
        keys.sort();
        let bytes: Vec<&[u8]> = keys.iter().map(KeyBytes::as_bytes).collect();
        let mut expected: Vec<&[u8]> = vec![&edge, &long, &short, &empty];
        expected.sort();
        assert_eq!(bytes, expected);
        let map: std::collections::BTreeMap<KeyBytes, u8> =
            [(short, 1), (long, 2)].into_iter().collect();
        assert_eq!(map.get(b"abc".as_slice()), Some(&1));
    }
}
