//! The revision-keyed MVCC layout, as etcd's: every version is written once, in revision order,
//! into `kv_revs`; the key index (in memory, `key_index.rs`) maps (key, revision) to the small
//! metadata of each version, so a key's version at a revision is its newest index entry at or
//! below it.
//!
//! A put adds one small index entry in memory and appends one record with the value at the
//! right edge of `kv_revs`; the previous version stays where it is. Reads are generic over
//! redb's readable tables, so the same code serves read transactions (client reads) and the
//! apply's write transaction (reads inside a Txn).

use aspen_core::keys::KeyRange;
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::key_index::KeyIndex;
use super::records::StoredVersion;
use crate::error::{Result, StorageError, decode};

/// `kv_revs` key: (main revision, sub-revision).
pub(crate) type RevKey = (u64, u32);
/// A key index entry: its main revision and record.
type IndexEntry = (u64, IndexRecord);

/// One version's metadata in the key index. `version == 0` is a deletion tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRecord {
    pub sub_revision: u32,
    pub create_revision: u64,
    pub version: u64,
    pub lease: u64,
}

impl IndexRecord {
    pub fn is_tombstone(&self) -> bool {
        self.version == 0
    }

    /// The version this entry describes, at `mod_revision`, with `value`.
    pub fn to_version(self, mod_revision: u64, value: Vec<u8>) -> StoredVersion {
        StoredVersion {
            value,
            create_revision: self.create_revision,
            mod_revision,
            sub_revision: self.sub_revision,
            version: self.version,
            lease: self.lease,
        }
    }

    pub fn of(version: &StoredVersion) -> IndexRecord {
        IndexRecord {
            sub_revision: version.sub_revision,
            create_revision: version.create_revision,
            version: version.version,
            lease: version.lease,
        }
    }
}

#[cfg(test)]
impl IndexRecord {
    /// A key's entry at `version` (0: a tombstone), created at revision 1: for tests.
    pub(crate) fn of_version(version: u64) -> IndexRecord {
        IndexRecord {
            sub_revision: 0,
            create_revision: 1,
            version,
            lease: 0,
        }
    }
}

/// One version in `kv_revs`: everything about it, so a revision window reads as events
/// without the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevRecord {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub version: u64,
    pub lease: u64,
}

/// A `RevRecord` read without copying its key or value: what compaction and the key index's
/// replay at open look at.
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // compaction decodes `value` only to reach `version`.
pub(crate) struct RevRecordView<'a> {
    #[serde(borrow, with = "serde_bytes")]
    pub key: &'a [u8],
    #[serde(borrow, with = "serde_bytes")]
    pub value: &'a [u8],
    pub create_revision: u64,
    pub version: u64,
    pub lease: u64,
}

impl RevRecord {
    pub fn to_version(&self, mod_revision: u64, sub_revision: u32) -> StoredVersion {
        StoredVersion {
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision,
            sub_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

/// Writes `version` of `key`: its entry into the key index and its record into `kv_revs`.
pub(crate) fn write_version(
    index: &KeyIndex,
    revs: &mut redb::Table<'_, RevKey, &'static [u8]>,
    key: &[u8],
    version: &StoredVersion,
    buffer: &mut Vec<u8>,
) -> Result<()> {
    let replaced = index.insert(key, version.mod_revision, IndexRecord::of(version));
    // The API refuses a Txn that writes one key twice (etcd's "duplicate key"); should a
    // command still do it, the last write at the revision wins.
    if let Some(replaced) = replaced {
        revs.remove((version.mod_revision, replaced.sub_revision))?;
    }
    let inserted = write_record(revs, key, version, buffer)?;
    assert!(inserted, "two versions at one revision position");
    Ok(())
}

/// Writes `version`'s record into `kv_revs` only (an install writes the index entries apart,
/// sorted; see `snapshot_io::install`). False if the position was taken (and is now replaced).
pub(crate) fn write_record(
    revs: &mut redb::Table<'_, RevKey, &'static [u8]>,
    key: &[u8],
    version: &StoredVersion,
    buffer: &mut Vec<u8>,
) -> Result<bool> {
    buffer.clear();
    let record = RevRecordRef {
        key,
        value: &version.value,
        create_revision: version.create_revision,
        version: version.version,
        lease: version.lease,
    };
    aspen_core::codec::encode_into(&record, buffer);
    let previous = revs.insert(
        (version.mod_revision, version.sub_revision),
        buffer.as_slice(),
    )?;
    Ok(previous.is_none())
}

/// `RevRecord`'s encoding, borrowed (no copy of the value to write it).
#[derive(Serialize)]
struct RevRecordRef<'a> {
    #[serde(with = "serde_bytes")]
    key: &'a [u8],
    #[serde(with = "serde_bytes")]
    value: &'a [u8],
    create_revision: u64,
    version: u64,
    lease: u64,
}

/// What [`IndexSource::for_each_entry`] calls with each entry: (key, main revision, record);
/// false stops the walk.
pub(crate) type EntryVisitor<'v> = dyn FnMut(&[u8], u64, IndexRecord) -> Result<bool> + 'v;

/// Where index entries are read from: the in-memory key index as of a revision
/// (`key_index::IndexAt`).
pub(crate) trait IndexSource {
    /// `key`'s newest entry at or below `at_revision` (tombstones included).
    fn entry_at(&self, key: &[u8], at_revision: u64) -> Result<Option<IndexEntry>>;

    /// Every entry of `range` in (key, revision) order; `visit` returns false to stop.
    fn for_each_entry(&self, range: &KeyRange, visit: &mut EntryVisitor<'_>) -> Result<()>;
}

/// The record at (main, sub); an index entry without one is corruption.
pub(crate) fn load_record<R>(revs: &R, main: u64, sub: u32) -> Result<RevRecord>
where
    R: ReadableTable<RevKey, &'static [u8]>,
{
    match revs.get((main, sub))? {
        Some(bytes) => decode("kv_revs", bytes.value()),
        None => Err(StorageError::Invariant(format!(
            "the key index names revision {main}.{sub}, which kv_revs does not hold"
        ))),
    }
}

/// `key`'s live version at `at_revision` (none if absent or deleted there); the value is read
/// only if `with_value`.
pub(crate) fn version_at<X, R>(
    index: &X,
    revs: &R,
    key: &[u8],
    at_revision: u64,
    with_value: bool,
) -> Result<Option<StoredVersion>>
where
    X: IndexSource + ?Sized,
    R: ReadableTable<RevKey, &'static [u8]>,
{
    let Some((main, record)) = index.entry_at(key, at_revision)? else {
        return Ok(None);
    };
    if record.is_tombstone() {
        return Ok(None);
    }
    let value = if with_value {
        load_record(revs, main, record.sub_revision)?.value
    } else {
        Vec::new()
    };
    Ok(Some(record.to_version(main, value)))
}

/// Calls `visit` for each key in `range` with its live version at `at_revision`, in key order
/// (values read only if `with_value`). `visit` returns false to stop early.
pub(crate) fn for_each_visible<X, R>(
    index: &X,
    revs: &R,
    range: &KeyRange,
    at_revision: u64,
    with_value: bool,
    mut visit: impl FnMut(&[u8], StoredVersion) -> Result<bool>,
) -> Result<()>
where
    X: IndexSource + ?Sized,
    R: ReadableTable<RevKey, &'static [u8]>,
{
    if range.is_empty() {
        return Ok(());
    }
    if let KeyRange::Single(key) = range {
        if let Some(version) = version_at(index, revs, key, at_revision, with_value)? {
            visit(key, version)?;
        }
        return Ok(());
    }
    // Walk (key, revision) in order; a key's visible entry is its last one at or below
    // `at_revision`, known once the walk moves past the key.
    let mut current: Option<(Vec<u8>, Option<IndexEntry>)> = None;
    let mut stopped = false;
    index.for_each_entry(range, &mut |key, main, record| {
        if current.as_ref().is_none_or(|(k, _)| k.as_slice() != key) {
            if let Some((done_key, Some(entry))) = current.take()
                && !emit(revs, &done_key, entry, with_value, &mut visit)?
            {
                stopped = true;
                return Ok(false);
            }
            current = Some((key.to_vec(), None));
        }
        if main <= at_revision
            && let Some((_, visible)) = current.as_mut()
        {
            *visible = Some((main, record));
        }
        Ok(true)
    })?;
    if !stopped && let Some((done_key, Some(entry))) = current.take() {
        emit(revs, &done_key, entry, with_value, &mut visit)?;
    }
    Ok(())
}

fn emit<R>(
    revs: &R,
    key: &[u8],
    (main, record): (u64, IndexRecord),
    with_value: bool,
    visit: &mut impl FnMut(&[u8], StoredVersion) -> Result<bool>,
) -> Result<bool>
where
    R: ReadableTable<RevKey, &'static [u8]>,
{
    if record.is_tombstone() {
        return Ok(true);
    }
    let value = if with_value {
        load_record(revs, main, record.sub_revision)?.value
    } else {
        Vec::new()
    };
    visit(key, record.to_version(main, value))
}
