//! The writer's files read back through the reader, whatever their shape (many pages, several
//! branch levels, values spanning overflow pages, empty and inline buckets), and damaged files
//! refused with the reason, never a panic. Files from real etcd and acceptance by etcd's own
//! tools are tested in aspen-server's `etcd_snapshot` test.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use std::io::{Cursor, Write};
use std::path::Path;

use aspen_etcd_snapshot::bolt_read::{BoltReader, Bucket};
use aspen_etcd_snapshot::bolt_write::BoltWriter;
use aspen_etcd_snapshot::layout::{
    AUTH_ENABLED, AUTH_REVISION, BUCKET_AUTH, BUCKET_AUTH_ROLES, BUCKET_AUTH_USERS, BUCKET_KEY,
    BUCKET_LEASE, BUCKET_META, BUCKETS,
};
use aspen_etcd_snapshot::{
    Error, EtcdSnapshot, KeyValue, Lease, Permission, PermissionType, Revision, Role, User,
};
use sha2::Digest;

type Entries = Vec<(Vec<u8>, Vec<u8>)>;
/// Damages a file's bytes in one way.
type Damage = Box<dyn Fn(&mut Vec<u8>)>;

/// One bucket per name, with its entries; returns the database bytes.
fn write_db(buckets: &[(&[u8], Entries)]) -> Vec<u8> {
    let mut writer = BoltWriter::new(Cursor::new(Vec::new())).expect("writer");
    let mut values = Vec::new();
    for (name, entries) in buckets {
        let mut tree = writer.begin_bucket();
        for (key, value) in entries {
            writer.put(&mut tree, key, value).expect("put");
        }
        values.push((*name, writer.finish_bucket(tree).expect("finish bucket")));
    }
    let (cursor, bytes) = writer.finish(&values).expect("finish");
    let data = cursor.into_inner();
    assert_eq!(data.len() as u64, bytes);
    assert_eq!(data.len() % 4096, 0);
    data
}

fn read_all(path: &Path, len: u64, bucket: &[u8]) -> Result<Entries, Error> {
    let reader = BoltReader::open(std::fs::File::open(path).expect("open"), path, len)?;
    let Some(bucket) = reader.bucket(&reader.root(), bucket)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    reader.for_each(&bucket, |k, v, _| -> Result<(), Error> {
        out.push((k.to_vec(), v.to_vec()));
        Ok(())
    })?;
    Ok(out)
}

fn file_with(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(bytes))
        .expect("write");
    path
}

#[test]
fn written_trees_read_back_in_order_at_every_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 0 entries (inline), 1 (a root leaf), a few pages, three levels, and large values.
    for count in [0usize, 1, 300, 60_000] {
        let entries: Entries = (0..count)
            .map(|i| {
                let size = if i % 997 == 5 { 9_000 + i % 50 } else { i % 40 };
                (
                    format!("k{i:07}").into_bytes(),
                    vec![u8::try_from(i % 251).expect("below 251"); size],
                )
            })
            .collect();
        let db = write_db(&[
            (b"a", Vec::new()),
            (b"data", entries.clone()),
            (b"z", vec![(b"one".to_vec(), b"1".to_vec())]),
        ]);
        let path = file_with(dir.path(), &format!("{count}.db"), &db);
        assert_eq!(
            read_all(&path, db.len() as u64, b"data").expect("read"),
            entries,
            "{count}"
        );
        assert_eq!(
            read_all(&path, db.len() as u64, b"a").expect("read"),
            Vec::new()
        );
        assert_eq!(
            read_all(&path, db.len() as u64, b"z").expect("read").len(),
            1
        );
        let reader = BoltReader::open(
            std::fs::File::open(&path).expect("open"),
            &path,
            db.len() as u64,
        )
        .expect("open");
        let empty = reader
            .bucket(&reader.root(), b"a")
            .expect("bucket")
            .expect("exists");
        assert!(
            matches!(empty, Bucket::Inline(_)),
            "an empty bucket is inline"
        );
        // Every page is used: metas, the trees, the root bucket, the freelist.
        assert_eq!(reader.meta().pages * 4096, db.len() as u64);
    }
}

/// An etcd-layout file with a few versions, a lease and the compaction (the damage tests know
/// where its pages are).
fn etcd_file() -> Vec<u8> {
    let buckets: Vec<(&[u8], Entries)> = etcd_buckets()
        .into_iter()
        .map(|(name, entries)| match name {
            BUCKET_AUTH | BUCKET_AUTH_USERS | BUCKET_AUTH_ROLES => (name, Vec::new()),
            _ => (name, entries),
        })
        .collect();
    write_db(&buckets)
}

/// The same with an auth store: auth enabled at revision 7, two users, two roles.
fn etcd_file_with_auth() -> Vec<u8> {
    write_db(&etcd_buckets())
}

/// A user's and a role's records, as etcd keeps them.
fn auth_records() -> (Entries, Entries) {
    let mut buffer = Vec::new();
    let mut users = Vec::new();
    for (name, roles) in [
        ("alice", vec!["r1".to_string()]),
        ("root", vec!["root".into()]),
    ] {
        User {
            name: name.as_bytes().to_vec(),
            password: b"$2a$10$abcdefghijklmnopqrstuv".to_vec(),
            roles,
            no_password: false,
        }
        .encode_into(&mut buffer);
        users.push((name.as_bytes().to_vec(), buffer.clone()));
    }
    let mut roles = Vec::new();
    Role {
        name: b"r1".to_vec(),
        permissions: vec![Permission {
            perm_type: PermissionType::ReadWrite,
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
        }],
    }
    .encode_into(&mut buffer);
    roles.push((b"r1".to_vec(), buffer.clone()));
    Role {
        name: b"root".to_vec(),
        permissions: Vec::new(),
    }
    .encode_into(&mut buffer);
    roles.push((b"root".to_vec(), buffer.clone()));
    (users, roles)
}

fn etcd_buckets() -> Vec<(&'static [u8], Entries)> {
    let mut key_bucket = Vec::new();
    let mut buffer = Vec::new();
    for main in 2..40u64 {
        let tombstone = main % 10 == 0;
        let kv = if tombstone {
            KeyValue {
                key: format!("k{}", main % 7).into_bytes(),
                ..Default::default()
            }
        } else {
            KeyValue {
                key: format!("k{}", main % 7).into_bytes(),
                create_revision: 2,
                mod_revision: main,
                version: main - 1,
                value: vec![b'v'; usize::try_from(main).expect("a small revision")],
                lease: if main == 39 { 77 } else { 0 },
            }
        };
        kv.encode_into(&mut buffer);
        key_bucket.push((
            Revision { main, sub: 0 }.key_bytes(tombstone),
            buffer.clone(),
        ));
    }
    let lease = Lease {
        id: 77,
        ttl_seconds: 60,
    };
    lease.encode_into(&mut buffer);
    let lease_bucket = vec![(lease.key_bytes().to_vec(), buffer.clone())];
    let compacted = Revision { main: 5, sub: 0 }.key_bytes(false);
    let meta_bucket = vec![
        (b"consistent_index".to_vec(), 9u64.to_be_bytes().to_vec()),
        (b"finishedCompactRev".to_vec(), compacted.clone()),
        (b"scheduledCompactRev".to_vec(), compacted),
    ];
    let (users, roles) = auth_records();
    let auth_bucket = vec![
        (AUTH_ENABLED.to_vec(), vec![1]),
        (AUTH_REVISION.to_vec(), 7u64.to_be_bytes().to_vec()),
    ];
    BUCKETS
        .iter()
        .map(|name| {
            let entries = match *name {
                BUCKET_KEY => key_bucket.clone(),
                BUCKET_LEASE => lease_bucket.clone(),
                BUCKET_META => meta_bucket.clone(),
                BUCKET_AUTH => auth_bucket.clone(),
                BUCKET_AUTH_USERS => users.clone(),
                BUCKET_AUTH_ROLES => roles.clone(),
                _ => Vec::new(),
            };
            (*name, entries)
        })
        .collect()
}

fn saved(db: &[u8]) -> Vec<u8> {
    let mut bytes = db.to_vec();
    bytes.extend_from_slice(&sha2::Sha256::digest(db));
    bytes
}

#[test]
fn an_etcd_layout_file_sums_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = file_with(dir.path(), "saved.db", &saved(&etcd_file_with_auth()));
    let snapshot = EtcdSnapshot::open(&path).expect("open");
    let summary = snapshot.summary().expect("summary");
    assert_eq!(summary.revision, 39);
    assert_eq!(summary.compact_revision, 5);
    assert_eq!(summary.consistent_index, 9);
    assert_eq!(
        (summary.versions, summary.tombstones, summary.leases),
        (38, 3, 1)
    );
    assert_eq!(
        summary.sha256,
        aspen_etcd_snapshot::file::Sha256Trailer::Verified
    );
    assert_eq!(
        (
            summary.auth_enabled,
            summary.auth_revision,
            summary.users,
            summary.roles
        ),
        (true, 7, 2, 2)
    );
    let mut users = Vec::new();
    snapshot
        .for_each_user(|name, user| -> Result<(), Error> {
            users.push((name, user.roles));
            Ok(())
        })
        .expect("users");
    assert_eq!(
        users,
        [
            ("alice".to_string(), vec!["r1".to_string()]),
            ("root".to_string(), vec!["root".to_string()])
        ]
    );
}

/// Malformed auth records: each file is refused by the walk that runs before an import
/// writes anything, with a message that names the record.
#[test]
fn malformed_auth_records_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (users, roles) = auth_records();
    let with = |bucket: &[u8], entries: Entries| -> Vec<u8> {
        let buckets: Vec<(&[u8], Entries)> = etcd_buckets()
            .into_iter()
            .map(|(name, old)| {
                if name == bucket {
                    (name, entries.clone())
                } else {
                    (name, old)
                }
            })
            .collect();
        write_db(&buckets)
    };
    let replaced = |entries: &Entries, at: usize, value: &[u8]| -> Entries {
        let mut entries = entries.clone();
        entries[at].1 = value.to_vec();
        entries
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "authUsers \"alice\": User: a field runs past the end",
            with(BUCKET_AUTH_USERS, replaced(&users, 0, &[0x0a, 9, b'a'])),
        ),
        (
            "authUsers user \"alice\" holds the record of \"bob\"",
            with(BUCKET_AUTH_USERS, replaced(&users, 0, b"\x0a\x03bob")),
        ),
        (
            "authUsers \"root\": a user's role name is not UTF-8",
            with(
                BUCKET_AUTH_USERS,
                replaced(&users, 1, b"\x0a\x04root\x1a\x01\xff"),
            ),
        ),
        (
            "authRoles \"r1\": a permission of unknown type 7",
            with(
                BUCKET_AUTH_ROLES,
                replaced(&roles, 0, b"\x0a\x02r1\x12\x02\x08\x07"),
            ),
        ),
        (
            "authRoles \"r1\": Role field 2 has the wrong type",
            with(
                BUCKET_AUTH_ROLES,
                replaced(&roles, 0, b"\x0a\x02r1\x10\x01"),
            ),
        ),
        (
            "authRoles role \"r1\" holds the record of \"\"",
            with(BUCKET_AUTH_ROLES, replaced(&roles, 0, b"")),
        ),
        (
            "auth authRevision is not 8 bytes",
            with(BUCKET_AUTH, vec![(AUTH_REVISION.to_vec(), vec![0, 0, 1])]),
        ),
        (
            "auth authEnabled is 2 bytes, not 1",
            with(BUCKET_AUTH, vec![(AUTH_ENABLED.to_vec(), vec![1, 1])]),
        ),
    ];
    for (expected, db) in cases {
        let error = open_error(dir.path(), "bad-auth", &db);
        assert!(error.contains("corrupt"), "{expected}: {error}");
        assert!(error.contains(expected), "{expected}: {error}");
    }
}

/// The auth record decoders on random and randomly changed bytes: each input is decoded or
/// refused, never a panic; whatever decodes encodes back to a record that decodes the same.
#[test]
fn auth_record_decoders_never_panic() {
    const CASES: u64 = 20_000;
    let (users, roles) = auth_records();
    let mut state: u64 = 0xa07;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let seeds: Vec<Vec<u8>> = users.iter().chain(&roles).map(|(_, v)| v.clone()).collect();
    let (mut decoded, mut refused) = (0u64, 0u64);
    let mut buffer = Vec::new();
    for case in 0..CASES {
        let mut bytes = if case % 4 == 0 {
            (0..next() % 40).map(|_| next().to_le_bytes()[0]).collect()
        } else {
            seeds[usize::try_from(next() % seeds.len() as u64).expect("below a length")].clone()
        };
        if !bytes.is_empty() {
            for _ in 0..1 + next() % 3 {
                let at = usize::try_from(next() % bytes.len() as u64).expect("below a length");
                bytes[at] = next().to_le_bytes()[0];
            }
        }
        match User::decode(&bytes) {
            Ok(user) => {
                decoded += 1;
                user.encode_into(&mut buffer);
                assert_eq!(User::decode(&buffer), Ok(user));
            }
            Err(_) => refused += 1,
        }
        match Role::decode(&bytes) {
            Ok(role) => {
                decoded += 1;
                role.encode_into(&mut buffer);
                assert_eq!(Role::decode(&buffer), Ok(role));
            }
            Err(_) => refused += 1,
        }
    }
    assert!(
        decoded > CASES / 20 && refused > CASES / 20,
        "{decoded} {refused}"
    );
}

fn open_error(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = file_with(dir, name, bytes);
    match EtcdSnapshot::open(&path).and_then(|s| s.summary()) {
        Ok(_) => panic!("{name} was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn damaged_files_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = etcd_file();
    let page = 4096;

    let error = open_error(dir.path(), "truncated", &db[..db.len() - page]);
    assert!(error.contains("truncated"), "{error}");

    let mut bad_hash = saved(&db);
    bad_hash[3 * page] ^= 1;
    let error = open_error(dir.path(), "bad-hash", &bad_hash);
    assert!(
        error.contains("integrity check failed: expected sha256"),
        "{error}"
    );

    let error = open_error(dir.path(), "foreign", &[7u8; 3 * 4096]);
    assert!(error.contains("not a bbolt database"), "{error}");

    // Both metas' checksums broken: no valid meta.
    let mut no_meta = db.clone();
    no_meta[16 + 20] ^= 1;
    no_meta[page + 16 + 20] ^= 1;
    let error = open_error(dir.path(), "no-meta", &no_meta);
    assert!(error.contains("not a bbolt database"), "{error}");

    // One meta broken: the other one serves.
    let mut one_meta = db.clone();
    one_meta[page + 16 + 20] ^= 1;
    let path = file_with(dir.path(), "one-meta", &one_meta);
    assert_eq!(
        EtcdSnapshot::open(&path)
            .and_then(|s| s.summary())
            .expect("the other meta")
            .revision,
        39
    );

    // Damage inside pages, one kind at a time (no trailer: the structure must catch it).
    let first_leaf = 2 * page;
    let mut damages: Vec<(&str, Damage)> = Vec::new();
    damages.push((
        "has flags",
        Box::new(move |d: &mut Vec<u8>| d[first_leaf + 8] = 0x40),
    ));
    damages.push((
        "has id",
        Box::new(move |d: &mut Vec<u8>| d[first_leaf] ^= 1),
    ));
    damages.push((
        "overflow",
        Box::new(move |d: &mut Vec<u8>| d[first_leaf + 15] = 0x7F),
    ));
    damages.push((
        "do not fit",
        Box::new(move |d: &mut Vec<u8>| {
            d[first_leaf + 10..first_leaf + 12].copy_from_slice(&600u16.to_le_bytes())
        }),
    ));
    damages.push((
        "does not fit its page",
        Box::new(move |d: &mut Vec<u8>| {
            d[first_leaf + 16 + 8..first_leaf + 16 + 12].copy_from_slice(&100_000u32.to_le_bytes())
        }),
    ));
    damages.push((
        "KeyValue",
        Box::new(move |d: &mut Vec<u8>| {
            // The first element's value starts after its 17-byte key: make its first field's
            // length run past the end.
            let count = u16::from_le_bytes([d[first_leaf + 10], d[first_leaf + 11]]) as usize;
            let value_at = first_leaf + 16 + count * 16 + 17;
            d[value_at + 1] = 0x7F;
        }),
    ));
    for (expected, damage) in damages {
        let mut damaged = db.clone();
        damage(&mut damaged);
        let error = open_error(dir.path(), "damaged", &damaged);
        assert!(error.contains(expected), "{expected}: {error}");
    }
}

/// A small fuzzer: thousands of files, each a valid one with a few random bytes changed or cut
/// short, are read through. Each is accepted or refused; none panics or loops.
#[test]
fn randomly_damaged_files_never_panic() {
    const CASES: u64 = 1_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = etcd_file_with_auth();
    let path = dir.path().join("fuzz.db");
    // SplitMix64: reproducible without a dependency.
    let mut state: u64 = 0x5eed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let (mut accepted, mut refused) = (0u64, 0u64);
    for case in 0..CASES {
        let mut bytes = db.clone();
        for _ in 0..1 + next() % 4 {
            let at = usize::try_from(next() % bytes.len() as u64).expect("below a length");
            bytes[at] = next().to_le_bytes()[0];
        }
        if case % 5 == 0 {
            bytes.truncate(usize::try_from(next() % bytes.len() as u64).expect("below a length"));
        }
        std::fs::write(&path, &bytes).expect("write");
        let walked = EtcdSnapshot::open(&path).and_then(|snapshot| {
            snapshot.summary()?;
            snapshot.etcd_status_hash()?;
            snapshot.for_each_version(|_| -> Result<(), Error> { Ok(()) })?;
            snapshot.for_each_user(|_, _| -> Result<(), Error> { Ok(()) })?;
            snapshot.for_each_role(|_, _| -> Result<(), Error> { Ok(()) })
        });
        match walked {
            Ok(()) => accepted += 1,
            Err(_) => refused += 1,
        }
    }
    // Most changes land in free space inside pages; many hit structure and are refused.
    assert_eq!(accepted + refused, CASES);
    assert!(
        refused > CASES / 20,
        "only {refused} of {CASES} damaged files refused"
    );
}
