//! etcd 3.4's backend layout: which buckets exist and what their keys and values are.
//!
//! - `key`: one entry per version. The key is the revision, `main` (8 bytes big-endian), `_`,
//!   `sub` (8 bytes big-endian), with a trailing `t` for a deletion tombstone; the value is an
//!   `mvccpb.KeyValue` (a tombstone's holds only the key). Big-endian keys make bbolt's byte
//!   order the revision order.
//! - `lease`: lease id (8 bytes big-endian) -> `leasepb.Lease` (id, TTL).
//! - `meta`: `consistent_index` (8 bytes big-endian), `scheduledCompactRev` and
//!   `finishedCompactRev` (revision keys, as above).
//! - `auth`: `authEnabled` (one byte, 1 when enabled) and `authRevision` (8 bytes big-endian).
//! - `authUsers`: user name -> `authpb.User` (name, bcrypt hash of the password, role names,
//!   options with `no_password`).
//! - `authRoles`: role name -> `authpb.Role` (name, key permissions sorted by key).
//! - `alarm`, `cluster`, `members`, `members_removed`: etcd creates them; `etcdctl snapshot
//!   restore` rewrites the membership ones.

use crate::proto::{self, Field};

pub const BUCKET_KEY: &[u8] = b"key";
pub const BUCKET_LEASE: &[u8] = b"lease";
pub const BUCKET_META: &[u8] = b"meta";
pub const BUCKET_AUTH: &[u8] = b"auth";
pub const BUCKET_AUTH_USERS: &[u8] = b"authUsers";
pub const BUCKET_AUTH_ROLES: &[u8] = b"authRoles";
/// In `auth`: one byte, `1` enabled (anything else reads as disabled, as etcd reads it).
pub const AUTH_ENABLED: &[u8] = b"authEnabled";
/// In `auth`: the auth revision, 8 bytes big-endian.
pub const AUTH_REVISION: &[u8] = b"authRevision";
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
            main: u64_be(&key[..8]),
            sub: u64_be(&key[9..17]),
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

/// Eight big-endian bytes (a revision key's parts).
fn u64_be(bytes: &[u8]) -> u64 {
    let mut be = [0u8; 8];
    be.copy_from_slice(bytes);
    u64::from_be_bytes(be)
}

fn non_negative(value: u64, what: &str) -> Result<u64, String> {
    if i64::try_from(value).is_err() {
        return Err(format!("a negative {what}"));
    }
    Ok(value)
}

impl KeyValue {
    /// Encodes as etcd does: fields 1..6 in order, zero values left out.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        proto::put_bytes(out, 1, &self.key);
        proto::put_non_negative_int64(out, 2, self.create_revision);
        proto::put_non_negative_int64(out, 3, self.mod_revision);
        proto::put_non_negative_int64(out, 4, self.version);
        proto::put_bytes(out, 5, &self.value);
        proto::put_non_negative_int64(out, 6, self.lease);
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
        proto::put_non_negative_int64(out, 1, self.id);
        proto::put_int64(out, 2, self.ttl_seconds);
    }

    pub fn decode(bytes: &[u8]) -> Result<Lease, String> {
        let mut lease = Lease::default();
        let mut reader = proto::Reader::new(bytes);
        while let Some((field, value)) = reader.next().map_err(|e| format!("Lease: {e}"))? {
            match (field, value) {
                (1, Field::Varint(v)) => lease.id = non_negative(v, "lease id")?,
                (2, Field::Varint(v)) => lease.ttl_seconds = proto::int64_from_varint(v),
                (1..=3, Field::Bytes(_)) => {
                    return Err(format!("Lease field {field} has the wrong type"));
                }
                _ => {}
            }
        }
        Ok(lease)
    }
}

/// `authpb.Permission.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermissionType {
    Read = 0,
    Write = 1,
    ReadWrite = 2,
}

/// `authpb.Permission`: a key (`range_end` empty), a range `[key, range_end)`, or every key
/// from `key` on (`range_end == [0]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    pub perm_type: PermissionType,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

/// `authpb.User`. etcd 3.4's clients always send the options, so etcd stores them even when
/// `no_password` is false; we write them the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    pub name: Vec<u8>,
    /// The bcrypt hash of the password; empty for a user added with `--no-password`.
    pub password: Vec<u8>,
    pub roles: Vec<String>,
    pub no_password: bool,
}

/// `authpb.Role`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Role {
    pub name: Vec<u8>,
    pub permissions: Vec<Permission>,
}

fn utf8(bytes: &[u8], what: &str) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
}

impl User {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        proto::put_bytes(out, 1, &self.name);
        proto::put_bytes(out, 2, &self.password);
        for role in &self.roles {
            proto::put_field_bytes(out, 3, role.as_bytes());
        }
        let mut options = Vec::with_capacity(2);
        proto::put_int64(&mut options, 1, i64::from(self.no_password));
        proto::put_field_bytes(out, 4, &options);
    }

    pub fn decode(bytes: &[u8]) -> Result<User, String> {
        let mut user = User::default();
        let mut reader = proto::Reader::new(bytes);
        while let Some((field, value)) = reader.next().map_err(|e| format!("User: {e}"))? {
            match (field, value) {
                (1, Field::Bytes(b)) => user.name = b.to_vec(),
                (2, Field::Bytes(b)) => user.password = b.to_vec(),
                (3, Field::Bytes(b)) => user.roles.push(utf8(b, "a user's role name")?),
                (4, Field::Bytes(b)) => {
                    let mut options = proto::Reader::new(b);
                    while let Some((field, value)) =
                        options.next().map_err(|e| format!("User options: {e}"))?
                    {
                        match (field, value) {
                            (1, Field::Varint(v)) => user.no_password = v != 0,
                            (1, _) => {
                                return Err("User option no_password has the wrong type".into());
                            }
                            _ => {}
                        }
                    }
                }
                (1..=4, _) => return Err(format!("User field {field} has the wrong type")),
                _ => {}
            }
        }
        Ok(user)
    }
}

impl Permission {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        proto::put_int64(out, 1, self.perm_type as i64);
        proto::put_bytes(out, 2, &self.key);
        proto::put_bytes(out, 3, &self.range_end);
    }

    fn decode(bytes: &[u8]) -> Result<Permission, String> {
        let mut permission = Permission {
            perm_type: PermissionType::Read,
            key: Vec::new(),
            range_end: Vec::new(),
        };
        let mut reader = proto::Reader::new(bytes);
        while let Some((field, value)) = reader.next().map_err(|e| format!("Permission: {e}"))? {
            match (field, value) {
                (1, Field::Varint(v)) => {
                    permission.perm_type = match v {
                        0 => PermissionType::Read,
                        1 => PermissionType::Write,
                        2 => PermissionType::ReadWrite,
                        _ => return Err(format!("a permission of unknown type {v}")),
                    }
                }
                (2, Field::Bytes(b)) => permission.key = b.to_vec(),
                (3, Field::Bytes(b)) => permission.range_end = b.to_vec(),
                (1..=3, _) => return Err(format!("Permission field {field} has the wrong type")),
                _ => {}
            }
        }
        Ok(permission)
    }
}

impl Role {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        proto::put_bytes(out, 1, &self.name);
        let mut encoded = Vec::with_capacity(64);
        for permission in &self.permissions {
            permission.encode_into(&mut encoded);
            proto::put_field_bytes(out, 2, &encoded);
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Role, String> {
        let mut role = Role::default();
        let mut reader = proto::Reader::new(bytes);
        while let Some((field, value)) = reader.next().map_err(|e| format!("Role: {e}"))? {
            match (field, value) {
                (1, Field::Bytes(b)) => role.name = b.to_vec(),
                (2, Field::Bytes(b)) => role.permissions.push(Permission::decode(b)?),
                (1..=2, _) => return Err(format!("Role field {field} has the wrong type")),
                _ => {}
            }
        }
        Ok(role)
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

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// Records copied from etcd 3.4.23's `authUsers` bucket (`etcdctl user add alice:alicepw`,
    /// `user grant-role alice r1`; `user add nopw --no-password`).
    #[test]
    fn users_encode_as_etcd_and_decode() {
        let hash = "$2a$10$XtFCzxYZvyC2XIkZsT2BaeBsGdIkzGaz/8B8IhW5VAFf1ggJQinKW";
        let alice = User {
            name: b"alice".to_vec(),
            password: hash.as_bytes().to_vec(),
            roles: vec!["r1".into()],
            no_password: false,
        };
        let etcd_alice = unhex(
            "0a05616c696365123c24326124313024587446437a78595a7679433258496b5a735432426165427347\
             64496b7a47617a2f38423849685735564146663167674a51696e4b571a0272312200",
        );
        let mut bytes = Vec::new();
        alice.encode_into(&mut bytes);
        assert_eq!(bytes, etcd_alice);
        assert_eq!(User::decode(&etcd_alice), Ok(alice));

        let nopw = User {
            name: b"nopw".to_vec(),
            no_password: true,
            ..User::default()
        };
        let etcd_nopw = unhex("0a046e6f707722020801");
        nopw.encode_into(&mut bytes);
        assert_eq!(bytes, etcd_nopw);
        assert_eq!(User::decode(&etcd_nopw), Ok(nopw));
        // An older client's user without options reads the same as `no_password: false`.
        assert_eq!(
            User::decode(&unhex("0a0161")).map(|u| (u.name, u.no_password)),
            Ok((b"a".to_vec(), false))
        );
        assert!(
            User::decode(&unhex("1a02ff00")).is_err(),
            "a role name not UTF-8"
        );
        assert!(
            User::decode(&unhex("0801")).is_err(),
            "a name that is a varint"
        );
    }

    /// etcd 3.4.23's record of role r1 after `role grant-permission r1 read key1`, `... write
    /// k2 k5` and `... --prefix r1 readwrite pre/` (etcd keeps them sorted by key), and of
    /// role root.
    #[test]
    fn roles_encode_as_etcd_and_decode() {
        let r1 = Role {
            name: b"r1".to_vec(),
            permissions: vec![
                Permission {
                    perm_type: PermissionType::Write,
                    key: b"k2".to_vec(),
                    range_end: b"k5".to_vec(),
                },
                Permission {
                    perm_type: PermissionType::Read,
                    key: b"key1".to_vec(),
                    range_end: Vec::new(),
                },
                Permission {
                    perm_type: PermissionType::ReadWrite,
                    key: b"pre/".to_vec(),
                    range_end: b"pre0".to_vec(),
                },
            ],
        };
        let etcd_r1 = unhex(
            "0a027231120a080112026b321a026b35120612046b657931120e080212047072652f1a0470726530",
        );
        let mut bytes = Vec::new();
        r1.encode_into(&mut bytes);
        assert_eq!(bytes, etcd_r1);
        assert_eq!(Role::decode(&etcd_r1), Ok(r1));
        let root = Role {
            name: b"root".to_vec(),
            permissions: Vec::new(),
        };
        root.encode_into(&mut bytes);
        assert_eq!(bytes, unhex("0a04726f6f74"));
        assert!(
            Role::decode(&unhex("12020803")).is_err(),
            "permission type 3"
        );
        assert!(
            Role::decode(&unhex("12050801")).is_err(),
            "a permission cut short"
        );
    }
}
