//! Hashing the key-value history for etcd's Hash and HashKV: replicas that applied the same
//! commands must produce the same hash, so it covers only replicated content, in a fixed order,
//! with a fixed encoding that does not depend on the storage codec or on which table (latest or
//! history) holds a version.

use aspen_core::ApplyError;
use redb::{ReadableDatabase, ReadableTable};

use super::records::StoredVersion;
use super::{MvccReader, read_applied};
use crate::error::{Result, decode};
use crate::schema;

/// Written first, as etcd writes its key bucket's name first: a hash of nothing is not zero.
const HASH_DOMAIN: &[u8] = b"aspen/kv";

/// What HashKV reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    /// CRC-32 (IEEE) over every version with `mod_revision <= hash_revision`.
    pub hash: u32,
    /// The store's compaction revision when hashed (0: never compacted).
    pub compact_revision: u64,
    /// The revision hashed up to: the one asked for, or the current one for 0.
    pub hash_revision: u64,
    /// The store revision when hashed, for the response header.
    pub current_revision: u64,
}

/// A hash the request itself made fail (compacted, future revision).
pub type HashOutcome = std::result::Result<KvHash, ApplyError>;

/// etcd's HashByRev bounds: unlike a range read, hashing *at* the compaction revision is
/// refused too, because the versions at it may be partly gone.
pub(crate) fn hash_revision(
    revision: u64,
    current: u64,
    compact_revision: u64,
) -> std::result::Result<u64, ApplyError> {
    if revision == 0 {
        return Ok(current);
    }
    if revision <= compact_revision {
        return Err(ApplyError::Compacted { compact_revision });
    }
    if revision > current {
        return Err(ApplyError::FutureRevision);
    }
    Ok(revision)
}

impl MvccReader {
    /// Hashes every stored version (values, tombstones and all metadata) with
    /// `mod_revision <= revision` (0: the current revision), in (key, revision) order, as of
    /// one read transaction. Reads the whole history: run it off the async executor.
    pub fn hash_kv(&self, revision: u64) -> Result<HashOutcome> {
        let db = self.store.state_db();
        let txn = db.begin_read()?;
        let state = read_applied(&txn)?;
        let at = match hash_revision(revision, state.revision, state.compact_revision) {
            Ok(at) => at,
            Err(e) => return Ok(Err(e)),
        };
        let latest = txn.open_table(schema::KV_LATEST)?;
        let history = txn.open_table(schema::KV_HISTORY)?;
        let hash = hash_versions(&latest, &history, at)?;
        Ok(Ok(KvHash {
            hash,
            compact_revision: state.compact_revision,
            hash_revision: at,
            current_revision: state.revision,
        }))
    }
}

/// Walks history and latest together. For each key its history (ascending revision) comes
/// first, then its current version, which is always the newest.
fn hash_versions<L, H>(latest: &L, history: &H, at_revision: u64) -> Result<u32>
where
    L: ReadableTable<&'static [u8], &'static [u8]>,
    H: ReadableTable<(&'static [u8], u64), &'static [u8]>,
{
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(HASH_DOMAIN);
    let mut latest_iter = latest.iter()?;
    let mut pending_latest = latest_iter.next().transpose()?;
    for item in history.iter()? {
        let (history_key, bytes) = item?;
        let (key, revision) = history_key.value();
        // Current versions of keys before this one are complete: their history is behind us.
        while let Some((latest_key, latest_bytes)) = &pending_latest {
            if latest_key.value() >= key {
                break;
            }
            hash_latest(
                &mut hasher,
                latest_key.value(),
                latest_bytes.value(),
                at_revision,
            )?;
            pending_latest = latest_iter.next().transpose()?;
        }
        if revision <= at_revision {
            let version: StoredVersion = decode("kv_history", bytes.value())?;
            debug_assert_eq!(
                version.mod_revision, revision,
                "history keyed by mod revision"
            );
            hash_version(&mut hasher, key, &version);
        }
    }
    while let Some((latest_key, latest_bytes)) = &pending_latest {
        hash_latest(
            &mut hasher,
            latest_key.value(),
            latest_bytes.value(),
            at_revision,
        )?;
        pending_latest = latest_iter.next().transpose()?;
    }
    Ok(hasher.finalize())
}

fn hash_latest(
    hasher: &mut crc32fast::Hasher,
    key: &[u8],
    bytes: &[u8],
    at_revision: u64,
) -> Result<()> {
    let version: StoredVersion = decode("kv_latest", bytes)?;
    if version.mod_revision <= at_revision {
        hash_version(hasher, key, &version);
    }
    Ok(())
}

/// A fixed, self-delimiting encoding: lengths before variable fields, integers little-endian.
fn hash_version(hasher: &mut crc32fast::Hasher, key: &[u8], version: &StoredVersion) {
    hasher.update(&(key.len() as u64).to_le_bytes());
    hasher.update(key);
    hasher.update(&version.mod_revision.to_le_bytes());
    hasher.update(&version.sub_revision.to_le_bytes());
    hasher.update(&version.create_revision.to_le_bytes());
    hasher.update(&version.version.to_le_bytes());
    hasher.update(&version.lease.to_le_bytes());
    hasher.update(&(version.value.len() as u64).to_le_bytes());
    hasher.update(&version.value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_revision_follows_etcd_bounds() {
        assert_eq!(hash_revision(0, 10, 4), Ok(10));
        assert_eq!(hash_revision(5, 10, 4), Ok(5));
        assert_eq!(hash_revision(10, 10, 4), Ok(10));
        assert_eq!(
            hash_revision(4, 10, 4),
            Err(ApplyError::Compacted {
                compact_revision: 4
            })
        );
        assert_eq!(hash_revision(11, 10, 4), Err(ApplyError::FutureRevision));
        assert_eq!(hash_revision(1, 10, 0), Ok(1));
    }
}
