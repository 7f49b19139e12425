//! Member and cluster ids, derived from what an operator configures. Every component that
//! names a member (start-up flags, the Cluster API's MemberAdd) derives its id here, so a
//! process started with a member's flags runs under the id the cluster knows it by.

/// A member's id: FNV-1a 64 over the token, a 0x00 byte, then the peer URLs sorted and joined
/// by ','. A given input gives the same id in every version: ids are stored in the Raft log.
/// The name is not hashed (as in etcd), so renaming a member keeps its id; 0 is mapped to 1
/// because openraft and etcd treat 0 as "no member".
///
/// # Panics
/// If `peer_urls` is empty: a validated configuration or request never has such a member.
pub fn member_id(name: &str, peer_urls: &[String], token: &str) -> u64 {
    assert!(!peer_urls.is_empty(), "member '{name}' has no peer URL");
    let mut sorted: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut hash = Fnv1a64::new();
    hash.write(token.as_bytes());
    hash.write(&[0x00]);
    for (index, url) in sorted.iter().enumerate() {
        if index > 0 {
            hash.write(b",");
        }
        hash.write(url.as_bytes());
    }
    hash.finish_nonzero()
}

/// A cluster's id: FNV-1a 64 over the token, a 0x00 byte, then the member ids sorted, each as 8
/// big-endian bytes. Stable across versions like [`member_id`], and never 0.
///
/// # Panics
/// If `member_ids` is empty: a cluster has at least one member.
pub fn cluster_id(member_ids: &[u64], token: &str) -> u64 {
    assert!(!member_ids.is_empty(), "a cluster has at least one member");
    let mut sorted = member_ids.to_vec();
    sorted.sort_unstable();
    let mut hash = Fnv1a64::new();
    hash.write(token.as_bytes());
    hash.write(&[0x00]);
    for id in sorted {
        hash.write(&id.to_be_bytes());
    }
    hash.finish_nonzero()
}

/// FNV-1a, 64-bit: tiny, well specified and fixed forever, unlike std's hashers.
struct Fnv1a64(u64);

impl Fnv1a64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Self {
        Fnv1a64(Self::OFFSET_BASIS)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    fn finish_nonzero(&self) -> u64 {
        if self.0 == 0 { 1 } else { self.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_published_vectors() {
        let hash = |bytes: &[u8]| {
            let mut fnv = Fnv1a64::new();
            fnv.write(bytes);
            fnv.0
        };
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn zero_hash_becomes_one() {
        assert_eq!(Fnv1a64(0).finish_nonzero(), 1);
        assert_eq!(Fnv1a64(7).finish_nonzero(), 7);
    }
}
