//! etcd 3.4's backend layout: which buckets exist and what their keys and values are.
//!
//! - `key`: one entry per version. The key is the revision, `main` (8 bytes big-endian), `_`,
//!   `sub` (8 bytes big-endian), with a trailing `t` for a deletion tombstone; the value is an
//!   `mvccpb.KeyValue` (a tombstone's holds only the key). Big-endian keys make bbolt's byte
//!   order the revision order.
//! - `lease`: lease id (8 bytes big-endian) -> `leasepb.Lease` (id, TTL).
//! - `meta`: `consistent_index` (8 bytes big-endian), `scheduledCompactRev` and
//!   `finishedCompactRev` (revision keys, as above).
//! - `alarm`, `auth`, `authRoles`, `authUsers`, `cluster`, `members`, `members_removed`: etcd
//!   creates them; `etcdctl snapshot restore` rewrites the membership ones.

use crate::proto::{self, Field};

pub const BUCKET_KEY: &[u8] = b"key";
pub const BUCKET_LEASE: &[u8] = b"lease";
pub const BUCKET_META: &[u8] = b"meta";
/// Every bucket an etcd 3.4 backend has, in bbolt's (byte) order.
pub const BUCKETS: [&[u8]; 10] = [
    b"alarm",
    b"auth",
    b"authRoles",
    b"authUsers",
    b"cluster",
    b"key",
    b"lease",
    b"members",
    b"members_removed",
    b"meta",
];
pub const META_CONSISTENT_INDEX: &[u8] = b"consistent_index";
pub const META_FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
pub const META_SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";

pub const REVISION_BYTES: usize = 17;
const TOMBSTONE_MARK: u8 = b't';

/// A version's place: `main` is the store revision of the change, `sub` its order within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Revision {
    pub main: u64,
    pub sub: u64,
}

impl Revision {
    /// The `key` bucket's key for this revision.
    pub fn key_bytes(self, tombstone: bool) -> Vec<u8> {
        let mut key = Vec::with_capacity(REVISION_BYTES + 1);
        key.extend_from_slice(&self.main.to_be_bytes());
        key.push(b'_');
        key.extend_from_slice(&self.sub.to_be_bytes());
        if tombstone {
            key.push(TOMBSTONE_MARK);
        }
        key
    }

    /// Parses a `key` bucket key: the revision and whether it marks a tombstone.
    pub fn parse(key: &[u8]) -> Result<(Revision, bool), String> {
        let tombstone = match key.len() {
            REVISION_BYTES => false,
            len if len == REVISION_BYTES + 1 && key[REVISION_BYTES] == TOMBSTONE_MARK => true,
            len => {
                return Err(format!(
                    "a {len}-byte key in the key bucket is not a revision"
                ));
            }
        };
        if key[8] != b'_' {
            return Err("a key bucket revision without its '_' separator".into());
        }
        let revision = Revision {
            main: u64::from_be_bytes(key[..8].try_into().expect("8 bytes")),
            sub: u64::from_be_bytes(key[9..17].try_into().expect("8 bytes")),
        };
        Ok((revision, tombstone))
    }
}

/// `mvccpb.KeyValue`. etcd's fields are int64; revisions, versions and lease ids are never
/// negative, so they are read as such and a negative one is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    pub value: Vec<u8>,
    pub lease: u64,
}

fn non_negative(value: u64, what: &str) -> Result<u64, String> {
    if (value as i64) < 0 {
        return Err(format!("a negative {what}"));
    }
    Ok(value)
}

impl KeyValue {
    /// Encodes as etcd does: fields 1..6 in order, zero values left out.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        proto::put_bytes(out, 1, &self.key);
        proto::put_int64(out, 2, self.create_revision as i64);
        proto::put_int64(out, 3, self.mod_revision as i64);
        proto::put_int64(out, 4, self.version as i64);
        proto::put_bytes(out, 5, &self.value);
        proto::put_int64(out, 6, self.lease as i64);
    }

    pub fn decode(bytes: &[u8]) -> Result<KeyValue, String> {
        let mut kv = KeyValue::default();
        let mut reader = proto::Reader::new(bytes);
        while let Some((field, value)) = reader.next().map_err(|e| format!("KeyValue: {e}"))? {
            match (field, value) {
                (1, Field::Bytes(b)) => kv.key = b.to_vec(),
                (2, Field::Varint(v)) => kv.create_revision = non_negative(v, "create revision")?,
                (3, Field::Varint(v)) => kv.mod_revision = non_negative(v, "mod revision")?,
                (4, Field::Varint(v)) => kv.version = non_negative(v, "version")?,
                (5, Field::Bytes(b)) => kv.value = b.to_vec(),
                (6, Field::Varint(v)) => kv.lease = non_negative(v, "lease id")?,
                (1..=6, _) => return Err(format!("KeyValue field {field} has the wrong type")),
                _ => {}
            }
        }
        Ok(kv)
    }
}

/// `leasepb.Lease`: id, TTL in seconds (and the remaining TTL etcd 3.4 leaves at zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lease {
    pub id: u64,
    pub ttl_seconds: i64,
}

impl Lease {
    pub fn key_bytes(self) -> [u8; 8] {
        self.id.to_be_bytes()
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        proto::put_int64(out, 1, self.id as i64);
        proto::put_int64(out, 2, self.ttl_seconds);
    }

    pub fn decode(bytes: &[u8]) -> Result<Lease, String> {
        let mut lease = Lease::default();
        let mut reader = proto::Reader::new(bytes);
        while let Some((field, value)) = reader.next().map_err(|e| format!("Lease: {e}"))? {
            match (field, value) {
                (1, Field::Varint(v)) => lease.id = non_negative(v, "lease id")?,
                (2, Field::Varint(v)) => lease.ttl_seconds = v as i64,
                (1..=3, Field::Bytes(_)) => {
                    return Err(format!("Lease field {field} has the wrong type"));
                }
                _ => {}
            }
        }
        Ok(lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys_round_trip_and_sort_by_revision() {
        let a = Revision { main: 5, sub: 1 };
        let b = Revision { main: 256, sub: 0 };
        assert_eq!(Revision::parse(&a.key_bytes(false)), Ok((a, false)));
        assert_eq!(Revision::parse(&b.key_bytes(true)), Ok((b, true)));
        assert!(a.key_bytes(true) < b.key_bytes(false));
        assert!(Revision::parse(b"short").is_err());
    }

    #[test]
    fn key_value_encodes_as_etcd_and_decodes() {
        let kv = KeyValue {
            key: b"foo".to_vec(),
            create_revision: 2,
            mod_revision: 300,
            version: 1,
            value: b"bar".to_vec(),
            lease: 0,
        };
        let mut bytes = Vec::new();
        kv.encode_into(&mut bytes);
        // What Go's mvccpb.KeyValue.Marshal writes for these fields.
        assert_eq!(
            bytes,
            [
                0x0a, 3, b'f', b'o', b'o', 0x10, 2, 0x18, 0xac, 0x02, 0x20, 1, 0x2a, 3, b'b', b'a',
                b'r'
            ]
        );
        assert_eq!(KeyValue::decode(&bytes), Ok(kv));
        assert!(KeyValue::decode(&[0x0a, 9, b'x']).is_err());
    }

    #[test]
    fn lease_round_trips() {
        let lease = Lease {
            id: 0x1234_5678,
            ttl_seconds: 60,
        };
        let mut bytes = Vec::new();
        lease.encode_into(&mut bytes);
        assert_eq!(Lease::decode(&bytes), Ok(lease));
    }
}
