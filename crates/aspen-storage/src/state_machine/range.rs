//! Range reads at the current or an older revision, with etcd's conventions.
//!
//! Generic over redb's readable tables, so the same code serves read transactions (client
//! reads) and write transactions (reads inside a Txn, which see the Txn's earlier writes).

use std::cmp::Ordering;
use std::iter::Peekable;

use aspen_core::keys::KeyRange;
use aspen_core::response::RangeResult;
use aspen_core::{ApplyError, KeyValue, RangeRequest, SortOrder, SortTarget};
use redb::ReadableTable;

use super::records::StoredVersion;
use crate::error::{Result, decode};

pub(crate) type HistoryKey = (&'static [u8], u64);

/// Checks `revision` (0: current) against the store's bounds; returns the revision to read at.
pub(crate) fn read_revision(
    revision: u64,
    current: u64,
    compact_revision: u64,
) -> std::result::Result<u64, ApplyError> {
    if revision == 0 {
        return Ok(current);
    }
    if revision > current {
        return Err(ApplyError::FutureRevision);
    }
    if revision < compact_revision {
        return Err(ApplyError::Compacted { compact_revision });
    }
    Ok(revision)
}

/// Calls `visit` for each key in `range` with the version visible at `at_revision`, in key
/// order. `visit` returns false to stop early.
pub(crate) fn for_each_visible<L, H>(
    latest: &L,
    history: &H,
    range: &KeyRange,
    at_revision: u64,
    current_revision: u64,
    mut visit: impl FnMut(&[u8], StoredVersion) -> bool,
) -> Result<()>
where
    L: ReadableTable<&'static [u8], &'static [u8]>,
    H: ReadableTable<HistoryKey, &'static [u8]>,
{
    if range.is_empty() {
        return Ok(());
    }
    let latest_iter = latest.range::<&[u8]>(range.bounds())?;
    if at_revision >= current_revision {
        for item in latest_iter {
            let (key, bytes) = item?;
            let version: StoredVersion = decode("kv_latest", bytes.value())?;
            if !visit(key.value(), version) {
                break;
            }
        }
        return Ok(());
    }
    let history_iter = history_range(history, range)?;
    merge_visible(
        latest_iter.peekable(),
        history_iter.peekable(),
        at_revision,
        visit,
    )
}

pub(crate) fn history_range<'h, H>(
    history: &'h H,
    range: &KeyRange,
) -> Result<redb::Range<'h, HistoryKey, &'static [u8]>>
where
    H: ReadableTable<HistoryKey, &'static [u8]>,
{
    let iter = match range {
        KeyRange::Single(key) => {
            history.range::<(&[u8], u64)>((key.as_slice(), 0)..=(key.as_slice(), u64::MAX))?
        }
        KeyRange::Interval {
            start,
            end: Some(end),
        } => history.range::<(&[u8], u64)>((start.as_slice(), 0)..(end.as_slice(), 0))?,
        KeyRange::Interval { start, end: None } => {
            history.range::<(&[u8], u64)>((start.as_slice(), 0)..)?
        }
    };
    Ok(iter)
}

type LatestIter<'a> = Peekable<redb::Range<'a, &'static [u8], &'static [u8]>>;
type HistoryIter<'a> = Peekable<redb::Range<'a, HistoryKey, &'static [u8]>>;

/// Walks the current versions and the history together, key by key.
fn merge_visible(
    mut latest: LatestIter<'_>,
    mut history: HistoryIter<'_>,
    at_revision: u64,
    mut visit: impl FnMut(&[u8], StoredVersion) -> bool,
) -> Result<()> {
    loop {
        let latest_key: Option<Vec<u8>> = match latest.peek() {
            Some(Ok((k, _))) => Some(k.value().to_vec()),
            Some(Err(_)) => {
                return Err(latest
                    .next()
                    .and_then(|r| r.err())
                    .map(Into::into)
                    .unwrap_or_else(unreachable_error));
            }
            None => None,
        };
        let history_key: Option<Vec<u8>> = match history.peek() {
            Some(Ok((k, _))) => Some(k.value().0.to_vec()),
            Some(Err(_)) => {
                return Err(history
                    .next()
                    .and_then(|r| r.err())
                    .map(Into::into)
                    .unwrap_or_else(unreachable_error));
            }
            None => None,
        };
        let key = match (&latest_key, &history_key) {
            (None, None) => return Ok(()),
            (Some(a), None) => a.clone(),
            (None, Some(b)) => b.clone(),
            (Some(a), Some(b)) => std::cmp::min(a, b).clone(),
        };
        let mut visible: Option<StoredVersion> = None;
        while let Some(Ok((k, _))) = history.peek() {
            if k.value().0 != key.as_slice() {
                break;
            }
            let (k, bytes) = history.next().expect("peeked")?;
            if k.value().1 <= at_revision {
                visible = Some(decode("kv_history", bytes.value())?);
            }
        }
        if latest_key.as_deref() == Some(key.as_slice()) {
            let (_, bytes) = latest.next().expect("peeked")?;
            let current: StoredVersion = decode("kv_latest", bytes.value())?;
            if current.mod_revision <= at_revision {
                visible = Some(current);
            }
        }
        if let Some(version) = visible.filter(|v| !v.is_tombstone())
            && !visit(&key, version)
        {
            return Ok(());
        }
    }
}

fn unreachable_error() -> crate::error::StorageError {
    crate::error::StorageError::Invariant("iterator error vanished between peek and next".into())
}

/// Serves one Range request at `at_revision` (already checked by [`read_revision`]).
pub(crate) fn range<L, H>(
    latest: &L,
    history: &H,
    request: &RangeRequest,
    at_revision: u64,
    current_revision: u64,
) -> Result<RangeResult>
where
    L: ReadableTable<&'static [u8], &'static [u8]>,
    H: ReadableTable<HistoryKey, &'static [u8]>,
{
    let key_range = KeyRange::new(&request.key, &request.range_end);
    let filtered = request.min_mod_revision != 0
        || request.max_mod_revision != 0
        || request.min_create_revision != 0
        || request.max_create_revision != 0;
    // As etcd: a sort target other than the key, with no order given, sorts ascending.
    let sort_order = match (request.sort_order, request.sort_target) {
        (SortOrder::None, SortTarget::Key) => SortOrder::None,
        (SortOrder::None, _) => SortOrder::Ascend,
        (order, _) => order,
    };
    let sorted = !matches!(
        (sort_order, request.sort_target),
        (SortOrder::None, _) | (SortOrder::Ascend, SortTarget::Key)
    );
    // As etcd: fetch one more than the limit to know whether there is more, unless sorting or
    // filtering needs every key first.
    let fetch_max: u64 = if request.limit > 0 && !sorted && !filtered {
        request.limit + 1
    } else {
        u64::MAX
    };
    let mut count: u64 = 0;
    let mut kvs: Vec<KeyValue> = Vec::new();
    for_each_visible(
        latest,
        history,
        &key_range,
        at_revision,
        current_revision,
        |key, version| {
            count += 1;
            if !request.count_only
                && (kvs.len() as u64) < fetch_max
                && passes_filters(request, &version)
            {
                kvs.push(version.to_key_value(key));
            }
            // Without count we could stop at fetch_max; etcd reports the full count, so keep going.
            true
        },
    )?;
    if sorted {
        sort_kvs(&mut kvs, sort_order, request.sort_target);
    }
    let mut more = false;
    if request.limit > 0 && kvs.len() as u64 > request.limit {
        kvs.truncate(request.limit as usize);
        more = true;
    }
    if request.count_only {
        kvs.clear();
    }
    // As etcd: values are dropped only after sorting, so keys_only still sorts by value.
    if request.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResult { kvs, more, count })
}

fn passes_filters(request: &RangeRequest, version: &StoredVersion) -> bool {
    let min_mod_ok =
        request.min_mod_revision == 0 || version.mod_revision >= request.min_mod_revision;
    let max_mod_ok =
        request.max_mod_revision == 0 || version.mod_revision <= request.max_mod_revision;
    let min_create_ok =
        request.min_create_revision == 0 || version.create_revision >= request.min_create_revision;
    let max_create_ok =
        request.max_create_revision == 0 || version.create_revision <= request.max_create_revision;
    min_mod_ok && max_mod_ok && min_create_ok && max_create_ok
}

fn sort_kvs(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    let compare = |a: &KeyValue, b: &KeyValue| -> Ordering {
        match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    // Stable sort: keys stay in key order among equal targets, as etcd's sort.SliceStable.
    match order {
        SortOrder::Descend => kvs.sort_by(|a, b| compare(b, a)),
        SortOrder::None | SortOrder::Ascend => kvs.sort_by(compare),
    }
}
