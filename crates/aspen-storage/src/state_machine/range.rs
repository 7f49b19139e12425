//! Range reads at the current or an older revision, with etcd's conventions.
//!
//! Generic over redb's readable tables, so the same code serves read transactions (client
//! reads) and write transactions (reads inside a Txn, which see the Txn's earlier writes).

use std::cmp::Ordering;

use aspen_core::convert::usize_from;
use aspen_core::keys::KeyRange;
use aspen_core::response::RangeResult;
use aspen_core::{ApplyError, KeyValue, RangeRequest, SortOrder, SortTarget};
use redb::ReadableTable;

use super::mvcc::{IndexSource, RevKey, for_each_visible, load_record};
use super::records::StoredVersion;
use crate::error::Result;

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

/// Serves one Range request at `at_revision` (already checked by [`read_revision`]).
pub(crate) fn range<X, R>(
    index: &X,
    revs: &R,
    request: &RangeRequest,
    at_revision: u64,
) -> Result<RangeResult>
where
    X: IndexSource,
    R: ReadableTable<RevKey, &'static [u8]>,
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
        request.limit.saturating_add(1)
    } else {
        u64::MAX
    };
    let mut count: u64 = 0;
    let mut kvs: Vec<KeyValue> = Vec::new();
    // Values live apart from the index: read them only when the response carries them (or a
    // sort by value needs them).
    let with_value = !request.count_only
        && (!request.keys_only || (sorted && request.sort_target == SortTarget::Value));
    // Keys past `fetch_max` are only counted; their values are not read.
    for_each_visible(
        index,
        revs,
        &key_range,
        at_revision,
        false,
        |key, mut version| {
            count += 1;
            if !request.count_only
                && (kvs.len() as u64) < fetch_max
                && passes_filters(request, &version)
            {
                if with_value {
                    version.value =
                        load_record(revs, version.mod_revision, version.sub_revision)?.value;
                }
                kvs.push(version.to_key_value(key));
            }
            // Without count we could stop at fetch_max; etcd reports the full count, so keep going.
            Ok(true)
        },
    )?;
    if sorted {
        sort_kvs(&mut kvs, sort_order, request.sort_target);
    }
    let mut more = false;
    if request.limit > 0 && kvs.len() as u64 > request.limit {
        kvs.truncate(usize_from(request.limit));
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
