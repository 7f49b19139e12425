//! Shared by the tests that open a committed storage directory (`fixtures/`): a copy of it to
//! work on, what a range over it returns, and the keys both fixtures hold (each was written by
//! the same commands: `fixtures/v1/README.md`).

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

/// Checks the keys the fixtures' commands wrote: their versions, the history kept above the
/// compaction at 5, key10's delete at 17, and `leased` on `lease_id`.
pub fn check_fixture_keys(sm: &StateMachine, lease_id: u64) {
    let mut expected = vec![("key1".to_string(), "x3".to_string(), 2, 21, 5, 0)];
    for i in 2..=5u64 {
        expected.push((format!("key{i}"), format!("w{i}"), i + 1, i + 11, 2, 0));
    }
    for i in 6..=9u64 {
        expected.push((format!("key{i}"), format!("v{i}"), i + 1, i + 1, 1, 0));
    }
    assert_eq!(range(sm, "key", "kez", 0), expected);
    assert_eq!(
        range(sm, "key1", "", 6),
        vec![("key1".to_string(), "v1".to_string(), 2, 2, 1, 0)],
        "history kept above the compaction point"
    );
    assert_eq!(
        range(sm, "key10", "", 16),
        vec![("key10".to_string(), "v10".to_string(), 11, 11, 1, 0)],
        "key10 before its delete at 17"
    );
    assert!(range(sm, "key10", "", 0).is_empty(), "key10 deleted");
    assert_eq!(
        range(sm, "leased", "", 0),
        vec![("leased".to_string(), "v".to_string(), 18, 18, 1, lease_id)]
    );
}
