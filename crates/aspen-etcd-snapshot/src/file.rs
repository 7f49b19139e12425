//! A saved etcd snapshot: a bbolt database, then (from `etcdctl snapshot save`) the SHA-256
//! of the database. Opening checks the trailer when there is one, then the meta; the walks
//! check every record they pass.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::bolt_read::{BoltReader, Bucket, FLAG_META, MAGIC, PAGE_HEADER_BYTES};
use crate::crc32c::Crc32c;
use crate::error::{Error, Result};
use crate::int::usize_from;
use crate::layout::{
    AUTH_ENABLED, AUTH_REVISION, BUCKET_AUTH, BUCKET_AUTH_ROLES, BUCKET_AUTH_USERS, BUCKET_KEY,
    BUCKET_LEASE, BUCKET_META, KeyValue, Lease, META_CONSISTENT_INDEX, META_FINISHED_COMPACT,
    META_SCHEDULED_COMPACT, Revision, Role, User,
};
use crate::limits::{READ_CHUNK_BYTES, SAVED_ALIGN_BYTES, SHA256_BYTES};

// The trailer is a SHA-256 digest (the arrays below).
const _: () = assert!(SHA256_BYTES == 32);

/// Whether the file's SHA-256 trailer was there (and matched: a mismatch fails `open`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sha256Trailer {
    Verified,
    Absent,
}

/// One version from the `key` bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub revision: Revision,
    pub tombstone: bool,
    pub kv: KeyValue,
}

/// What a whole walk of the file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The store revision etcd starts at: the newest version's, or the compaction's if higher,
    /// and at least 1.
    pub revision: u64,
    /// The newest version's main revision (what `etcdctl snapshot status` calls revision).
    pub newest_version_revision: u64,
    /// Reads below this fail once restored (the scheduled compaction, else the finished one).
    pub compact_revision: u64,
    pub consistent_index: u64,
    pub versions: u64,
    /// The largest sub-revision (Aspen keeps 32 bits of it).
    pub sub_revision_max: u64,
    pub tombstones: u64,
    pub leases: u64,
    /// The `auth` bucket: whether auth is enabled, and the auth revision.
    pub auth_enabled: bool,
    pub auth_revision: u64,
    pub users: u64,
    pub roles: u64,
    pub db_bytes: u64,
    pub sha256: Sha256Trailer,
}

pub struct EtcdSnapshot {
    reader: BoltReader,
    sha256: Sha256Trailer,
    key: Bucket,
    lease: Option<Bucket>,
    meta: Option<Bucket>,
    auth: Option<Bucket>,
    auth_users: Option<Bucket>,
    auth_roles: Option<Bucket>,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `path` starts like a bbolt database (a meta page's magic after the page header),
/// as the restore tells formats apart by content.
pub fn looks_like_bbolt(path: &Path) -> Result<bool> {
    let mut head = [0u8; PAGE_HEADER_BYTES + 4];
    let mut file = File::open(path).map_err(io_error(path))?;
    match file.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(io_error(path)(e)),
    }
    let flags = u16::from_le_bytes([head[8], head[9]]);
    let magic = u32::from_le_bytes([head[16], head[17], head[18], head[19]]);
    Ok(flags == FLAG_META && magic == MAGIC)
}

/// Hashes the first `len` bytes of `file`.
fn sha256_prefix(file: &mut File, path: &Path, len: u64) -> Result<[u8; 32]> {
    let mut sha = Sha256::new();
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut remaining = len;
    while remaining > 0 {
        let want = usize_from(remaining.min(chunk.len() as u64));
        file.read_exact(&mut chunk[..want])
            .map_err(io_error(path))?;
        sha.update(&chunk[..want]);
        remaining -= want as u64;
    }
    Ok(sha.finalize().into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl EtcdSnapshot {
    /// Opens a saved snapshot: refuses a file that is not bbolt, checks the SHA-256 trailer
    /// (present when the size is a multiple of 512 plus 32, etcd's own test), the meta pages,
    /// and that the `key` bucket exists.
    pub fn open(path: &Path) -> Result<EtcdSnapshot> {
        if !looks_like_bbolt(path)? {
            return Err(Error::Foreign(path.to_path_buf()));
        }
        let mut file = File::open(path).map_err(io_error(path))?;
        let file_bytes = file.metadata().map_err(io_error(path))?.len();
        let has_trailer = file_bytes % SAVED_ALIGN_BYTES == SHA256_BYTES;
        let (db_bytes, sha256) = if has_trailer {
            let db_bytes = file_bytes - SHA256_BYTES;
            let actual = sha256_prefix(&mut file, path, db_bytes)?;
            let mut expected = [0u8; 32];
            file.read_exact(&mut expected).map_err(io_error(path))?;
            if actual != expected {
                return Err(Error::Sha256Mismatch {
                    path: path.to_path_buf(),
                    expected: hex(&expected),
                    actual: hex(&actual),
                });
            }
            (db_bytes, Sha256Trailer::Verified)
        } else {
            (file_bytes, Sha256Trailer::Absent)
        };
        let reader = BoltReader::open(file, path, db_bytes)?;
        let root = reader.root();
        let not_etcd = |reason: &str| Error::NotEtcd {
            path: PathBuf::from(path),
            reason: reason.to_string(),
        };
        let key = reader
            .bucket(&root, BUCKET_KEY)?
            .ok_or_else(|| not_etcd("a bbolt database without etcd's key bucket"))?;
        let lease = reader.bucket(&root, BUCKET_LEASE)?;
        let meta = reader.bucket(&root, BUCKET_META)?;
        let auth = reader.bucket(&root, BUCKET_AUTH)?;
        let auth_users = reader.bucket(&root, BUCKET_AUTH_USERS)?;
        let auth_roles = reader.bucket(&root, BUCKET_AUTH_ROLES)?;
        Ok(EtcdSnapshot {
            reader,
            sha256,
            key,
            lease,
            meta,
            auth,
            auth_users,
            auth_roles,
        })
    }

    pub fn sha256(&self) -> Sha256Trailer {
        self.sha256
    }

    pub fn db_bytes(&self) -> u64 {
        self.reader.meta().pages * u64::from(self.reader.meta().page_size)
    }

    fn corrupt(&self, reason: impl Into<String>) -> Error {
        self.reader.corrupt(reason)
    }

    /// Calls `visit` for every version in the `key` bucket, in revision order, each checked:
    /// a revision key, a KeyValue that decodes, a put's mod revision equal to its revision.
    pub fn for_each_version<E: From<Error>>(
        &self,
        mut visit: impl FnMut(Version) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        self.reader.for_each(&self.key, |key, value, is_bucket| {
            if is_bucket {
                return Err(self.corrupt("a bucket inside etcd's key bucket").into());
            }
            let (revision, tombstone) = Revision::parse(key).map_err(|e| self.corrupt(e))?;
            let kv = KeyValue::decode(value).map_err(|e| {
                self.corrupt(format!("revision {}.{}: {e}", revision.main, revision.sub))
            })?;
            if kv.key.is_empty() {
                return Err(self
                    .corrupt(format!(
                        "revision {}.{} has an empty key",
                        revision.main, revision.sub
                    ))
                    .into());
            }
            if !tombstone
                && (kv.mod_revision != revision.main
                    || kv.version == 0
                    || kv.create_revision == 0
                    || kv.create_revision > kv.mod_revision)
            {
                return Err(self
                    .corrupt(format!(
                        "revision {}.{} holds a version with create {}, mod {}, version {}",
                        revision.main,
                        revision.sub,
                        kv.create_revision,
                        kv.mod_revision,
                        kv.version
                    ))
                    .into());
            }
            visit(Version {
                revision,
                tombstone,
                kv,
            })
        })
    }

    /// Calls `visit` for every lease in the `lease` bucket.
    pub fn for_each_lease<E: From<Error>>(
        &self,
        mut visit: impl FnMut(Lease) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let Some(bucket) = &self.lease else {
            return Ok(());
        };
        self.reader.for_each(bucket, |key, value, is_bucket| {
            let lease = Lease::decode(value).map_err(|e| self.corrupt(e))?;
            if is_bucket
                || key.len() != 8
                || u64::from_be_bytes([
                    key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7],
                ]) != lease.id
            {
                return Err(self
                    .corrupt("a lease bucket entry whose key is not its lease id")
                    .into());
            }
            visit(lease)
        })
    }

    /// (enabled, auth revision) from the `auth` bucket; a file without it has auth disabled.
    pub fn auth_meta(&self) -> Result<(bool, u64)> {
        let (mut enabled, mut revision) = (false, 0);
        let Some(bucket) = &self.auth else {
            return Ok((false, 0));
        };
        self.reader
            .for_each(bucket, |key, value, is_bucket| -> Result<()> {
                if is_bucket {
                    return Err(self.corrupt("a bucket inside etcd's auth bucket"));
                }
                match key {
                    AUTH_ENABLED => {
                        // etcd: enabled when the value is exactly [1].
                        if value.len() != 1 {
                            return Err(self.corrupt(format!(
                                "auth authEnabled is {} bytes, not 1",
                                value.len()
                            )));
                        }
                        enabled = value[0] == 1;
                    }
                    AUTH_REVISION => {
                        let bytes: [u8; 8] = value
                            .try_into()
                            .map_err(|_| self.corrupt("auth authRevision is not 8 bytes"))?;
                        revision = u64::from_be_bytes(bytes);
                    }
                    _ => {}
                }
                Ok(())
            })?;
        Ok((enabled, revision))
    }

    /// A record of `authUsers` or `authRoles`: its key must be its (non-empty, UTF-8) name.
    fn auth_record_name(&self, what: &str, key: &[u8], name: &[u8]) -> Result<String> {
        if key != name {
            return Err(self.corrupt(format!(
                "{what} {:?} holds the record of {:?}",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(name)
            )));
        }
        if name.is_empty() {
            return Err(self.corrupt(format!("{what} with an empty name")));
        }
        String::from_utf8(name.to_vec()).map_err(|_| {
            self.corrupt(format!(
                "{what} {:?}: the name is not UTF-8",
                String::from_utf8_lossy(name)
            ))
        })
    }

    /// Calls `visit` for every user in `authUsers`, in name order, each checked (the record
    /// decodes, its name is its key).
    pub fn for_each_user<E: From<Error>>(
        &self,
        mut visit: impl FnMut(String, User) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let Some(bucket) = &self.auth_users else {
            return Ok(());
        };
        self.reader.for_each(bucket, |key, value, is_bucket| {
            if is_bucket {
                return Err(self
                    .corrupt("a bucket inside etcd's authUsers bucket")
                    .into());
            }
            let user = User::decode(value).map_err(|e| {
                self.corrupt(format!("authUsers {:?}: {e}", String::from_utf8_lossy(key)))
            })?;
            let name = self.auth_record_name("authUsers user", key, &user.name)?;
            visit(name, user)
        })
    }

    /// Calls `visit` for every role in `authRoles`, in name order, each checked as users are.
    pub fn for_each_role<E: From<Error>>(
        &self,
        mut visit: impl FnMut(String, Role) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let Some(bucket) = &self.auth_roles else {
            return Ok(());
        };
        self.reader.for_each(bucket, |key, value, is_bucket| {
            if is_bucket {
                return Err(self
                    .corrupt("a bucket inside etcd's authRoles bucket")
                    .into());
            }
            let role = Role::decode(value).map_err(|e| {
                self.corrupt(format!("authRoles {:?}: {e}", String::from_utf8_lossy(key)))
            })?;
            let name = self.auth_record_name("authRoles role", key, &role.name)?;
            visit(name, role)
        })
    }

    /// (consistent index, scheduled compaction, finished compaction) from the `meta` bucket.
    pub fn meta_values(&self) -> Result<(u64, u64, u64)> {
        let (mut index, mut scheduled, mut finished) = (0, 0, 0);
        let Some(bucket) = &self.meta else {
            return Ok((0, 0, 0));
        };
        self.reader
            .for_each(bucket, |key, value, _| -> Result<()> {
                let revision_of = |value: &[u8]| {
                    Revision::parse(value).map(|(r, _)| r.main).map_err(|e| {
                        self.corrupt(format!("meta {}: {e}", String::from_utf8_lossy(key)))
                    })
                };
                match key {
                    META_CONSISTENT_INDEX => {
                        let bytes: [u8; 8] = value
                            .try_into()
                            .map_err(|_| self.corrupt("meta consistent_index is not 8 bytes"))?;
                        index = u64::from_be_bytes(bytes);
                    }
                    META_SCHEDULED_COMPACT => scheduled = revision_of(value)?,
                    META_FINISHED_COMPACT => finished = revision_of(value)?,
                    _ => {}
                }
                Ok(())
            })?;
        Ok((index, scheduled, finished))
    }

    /// Walks the whole file, checking every record, and sums it up. Run it before importing
    /// anything: a file that fails here is refused with nothing written.
    pub fn summary(&self) -> Result<Summary> {
        let (consistent_index, scheduled, finished) = self.meta_values()?;
        let compact_revision = scheduled.max(finished);
        let (mut versions, mut tombstones, mut newest, mut sub_max) = (0u64, 0u64, 0u64, 0u64);
        let mut last: Option<Revision> = None;
        self.for_each_version(|version| -> Result<()> {
            if last.is_some_and(|l| l >= version.revision) {
                return Err(self.corrupt("two versions at one revision"));
            }
            last = Some(version.revision);
            versions += 1;
            sub_max = sub_max.max(version.revision.sub);
            tombstones += u64::from(version.tombstone);
            newest = version.revision.main;
            Ok(())
        })?;
        let mut leases = 0u64;
        self.for_each_lease(|_| -> Result<()> {
            leases += 1;
            Ok(())
        })?;
        let (auth_enabled, auth_revision) = self.auth_meta()?;
        let (mut users, mut roles) = (0u64, 0u64);
        self.for_each_user(|_, _| -> Result<()> {
            users += 1;
            Ok(())
        })?;
        self.for_each_role(|_, _| -> Result<()> {
            roles += 1;
            Ok(())
        })?;
        Ok(Summary {
            revision: newest.max(compact_revision).max(1),
            newest_version_revision: newest,
            compact_revision,
            consistent_index,
            versions,
            sub_revision_max: sub_max,
            tombstones,
            leases,
            auth_enabled,
            auth_revision,
            users,
            roles,
            db_bytes: self.db_bytes(),
            sha256: self.sha256,
        })
    }

    /// `etcdctl snapshot status`'s hash and "total keys" (entries of every bucket): every
    /// top-level bucket's name, then its keys and values, in order, CRC-32C.
    pub fn etcd_status_hash(&self) -> Result<(u32, u64)> {
        let mut crc = Crc32c::new();
        let mut entries = 0u64;
        let mut buckets = Vec::new();
        self.reader
            .for_each(&self.reader.root(), |name, value, is_bucket| {
                if !is_bucket {
                    return Err(
                        self.corrupt("a value at the top level, where etcd has only buckets")
                    );
                }
                buckets.push((name.to_vec(), self.reader.bucket_of(value)?));
                Ok(())
            })?;
        for (name, bucket) in &buckets {
            crc.update(name);
            self.reader
                .for_each(bucket, |key, value, is_bucket| -> Result<()> {
                    crc.update(key);
                    if !is_bucket {
                        crc.update(value);
                    }
                    entries += 1;
                    Ok(())
                })?;
        }
        Ok((crc.finalize(), entries))
    }
}
