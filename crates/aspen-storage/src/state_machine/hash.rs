//! Hashing the key-value history for etcd's Hash and HashKV: replicas that applied the same
//! commands must produce the same hash, so it covers only replicated content, in a fixed order,
//! with a fixed encoding that does not depend on the storage codec or on the table layout.

use aspen_core::ApplyError;
use redb::ReadableTable;

use aspen_core::keys::KeyRange;

use super::MvccReader;
use super::mvcc::{IndexRecord, IndexSource, RevKey, load_record};
use super::records::StoredVersion;
use crate::error::Result;
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
    /// Hashes every version (values, tombstones and all metadata) with
    /// `mod_revision <= revision` (0: the current revision) that compaction keeps, less a
    /// tombstone at the compaction revision (see `hash_versions`), in (key, revision) order,
    /// as of one read transaction. Versions that compaction removes are left out whether or
    /// not this replica has removed them yet, so replicas agree while they compact at their
    /// own pace. Reads the whole index: run it off the async executor.
    pub fn hash_kv(&self, revision: u64) -> Result<HashOutcome> {
        let db = self.store.state_db();
        let view = super::read_view(&self.store, &db)?;
        let state = &view.state;
        let at = match hash_revision(revision, state.revision, state.compact_revision) {
            Ok(at) => at,
            Err(e) => return Ok(Err(e)),
        };
        let revs = view.txn.open_table(schema::KV_REVS)?;
        let hash = hash_versions(&view.index(), &revs, at, state.compact_revision)?;
        Ok(Ok(KvHash {
            hash,
            compact_revision: state.compact_revision,
            hash_revision: at,
            current_revision: state.revision,
        }))
    }
}

/// Walks the index key by key. Of a key's versions at or below the compaction revision only
/// the newest is hashed, and only if it is not a tombstone; every newer one is. A tombstone
/// at the compaction revision survives compaction (for watchers, `compact.rs`) but is not
/// hashed: compaction before that fix removed it, so hashing it would make the hash depend on
/// which version of compaction a replica ran (etcd's `keep` leaves it out of HashKV too).
fn hash_versions<X, R>(index: &X, revs: &R, at_revision: u64, compact_revision: u64) -> Result<u32>
where
    X: IndexSource,
    R: ReadableTable<RevKey, &'static [u8]>,
{
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(HASH_DOMAIN);
    // The newest version at or below the compaction revision of the key being walked.
    let mut survivor: Option<(Vec<u8>, u64, IndexRecord)> = None;
    let mut key_of_walk: Option<Vec<u8>> = None;
    let every_key = KeyRange::Interval {
        start: Vec::new(),
        end: None,
    };
    index.for_each_entry(&every_key, &mut |key, main, record| {
        if key_of_walk.as_deref() != Some(key) {
            flush_survivor(&mut hasher, revs, &mut survivor, at_revision)?;
            key_of_walk = Some(key.to_vec());
        }
        if main <= compact_revision {
            survivor = Some((key.to_vec(), main, record));
            return Ok(true);
        }
        flush_survivor(&mut hasher, revs, &mut survivor, at_revision)?;
        if main <= at_revision {
            hash_entry(&mut hasher, revs, key, main, record)?;
        }
        Ok(true)
    })?;
    flush_survivor(&mut hasher, revs, &mut survivor, at_revision)?;
    Ok(hasher.finalize())
}

fn flush_survivor<R>(
    hasher: &mut crc32fast::Hasher,
    revs: &R,
    survivor: &mut Option<(Vec<u8>, u64, IndexRecord)>,
    at_revision: u64,
) -> Result<()>
where
    R: ReadableTable<RevKey, &'static [u8]>,
{
    if let Some((key, main, record)) = survivor.take()
        && !record.is_tombstone()
        && main <= at_revision
    {
        hash_entry(hasher, revs, &key, main, record)?;
    }
    Ok(())
}

fn hash_entry<R>(
    hasher: &mut crc32fast::Hasher,
    revs: &R,
    key: &[u8],
    main: u64,
    record: IndexRecord,
) -> Result<()>
where
    R: ReadableTable<RevKey, &'static [u8]>,
{
    let value = if record.is_tombstone() {
        Vec::new()
    } else {
        load_record(revs, main, record.sub_revision)?.value
    };
    hash_version(hasher, key, &record.to_version(main, value));
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
