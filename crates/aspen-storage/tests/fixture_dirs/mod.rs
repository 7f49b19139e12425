//! Shared by the tests that open a committed storage directory (`fixtures/`): a copy of it to
//! work on, and what a range over it returns.

use std::path::Path;

use aspen_core::RangeRequest;
use aspen_storage::StateMachine;

/// Copies the directory `from` (and everything in it) to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read fixture dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// A range's keys as (key, value, create revision, mod revision, version, lease).
pub fn range(
    sm: &StateMachine,
    key: &str,
    range_end: &str,
    revision: u64,
) -> Vec<(String, String, u64, u64, u64, u64)> {
    let request = RangeRequest {
        key: key.as_bytes().to_vec(),
        range_end: range_end.as_bytes().to_vec(),
        revision,
        ..Default::default()
    };
    let (result, _) = sm
        .reader()
        .range(&request)
        .expect("range")
        .expect("range request");
    result
        .kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8(kv.key).expect("utf-8 key"),
                String::from_utf8(kv.value).expect("utf-8 value"),
                kv.create_revision,
                kv.mod_revision,
                kv.version,
                kv.lease,
            )
        })
        .collect()
}
