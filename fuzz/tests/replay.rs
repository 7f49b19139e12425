//! Replays the committed corpus (`fuzz/corpus/<target>/`) through the same harnesses the
//! fuzz targets run, on the stable toolchain: what CI runs instead of a campaign. Each input
//! must finish cleanly and within `INPUT_MS_MAX`.
//!
//! `cargo test --manifest-path fuzz/Cargo.toml --test replay -- --ignored write_seeds`
//! rewrites the hand-made seeds (`seed-*` files) from today's encoders.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use aspen_core::codec;
use aspen_core::limits::Limits;
use aspen_core::type_config::alias::{Entry, Vote};
use aspen_core::{Command, PutRequest, TypeConfig};
use aspen_fuzz::StorageInput;
use aspen_fuzz::client::{ClientInput, client_requests};
use aspen_storage::{StorageBackend, open_storage};

/// Longest one corpus input may take (debug build, shared machine).
const INPUT_MS_MAX: u64 = 30_000;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no inputs", dir.display());
    files
}

fn replay(target: &str, run: impl Fn(&[u8])) {
    for path in corpus(target) {
        let bytes = std::fs::read(&path).expect("read corpus input");
        let started = Instant::now();
        run(&bytes);
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(INPUT_MS_MAX),
            "{} took {took:?}",
            path.display()
        );
    }
}

#[test]
fn storage_decode_corpus() {
    replay("storage_decode", aspen_fuzz::storage_decode);
}

#[test]
fn peer_messages_corpus() {
    replay("peer_messages", aspen_fuzz::peer_messages);
}

#[test]
fn client_requests_corpus() {
    replay("client_requests", |bytes| {
        // As libfuzzer-sys builds a typed input.
        if let Ok(input) = ClientInput::arbitrary_take_rest(Unstructured::new(bytes)) {
            client_requests(&input);
        }
    });
}

fn entry(index: u64, command: Command) -> Entry {
    openraft::Entry {
        log_id: openraft::testing::log_id::<TypeConfig>(2, 1, index),
        payload: openraft::EntryPayload::Normal(command),
    }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    })
}

fn tagged(kind: StorageInput, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![kind.tag()];
    bytes.extend_from_slice(body);
    bytes
}

fn read_all(mut reader: impl Read) -> Vec<u8> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).expect("read snapshot");
    bytes
}

fn write_seed(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

#[test]
#[ignore = "rewrites the committed seeds"]
fn write_seeds() {
    let (_log, sm) = open_storage(&StorageBackend::InMemory, Limits::default()).expect("open");
    let commands = [
        put("a", "1"),
        put("b", "2"),
        Command::LeaseGrant {
            id: 7,
            ttl_seconds: 60,
        },
        Command::Put(PutRequest {
            key: b"leased".to_vec(),
            value: b"x".to_vec(),
            lease: 7,
            ..Default::default()
        }),
        put("a", "3"),
    ];
    let entries: Vec<Entry> = commands
        .iter()
        .enumerate()
        .map(|(i, c)| entry(i as u64 + 1, c.clone()))
        .collect();
    sm.apply_entries(&entries).expect("apply");

    // Storage.
    let log_entry = codec::encode(&entries[3]);
    write_seed(
        "storage_decode",
        "log-entry",
        &tagged(StorageInput::LogEntry, &log_entry),
    );
    let state = codec::encode(&sm.reader().applied_state().expect("applied state"));
    write_seed(
        "storage_decode",
        "applied-state",
        &tagged(StorageInput::StateRecord, &state),
    );
    let export = aspen_storage::state_machine::export_snapshot(sm.store()).expect("export");
    let stream = read_all(export.data().reader());
    let magic = aspen_storage::snapshot::SNAPSHOT_MAGIC.len();
    write_seed(
        "storage_decode",
        "aspen-stream",
        &tagged(StorageInput::AspenSnapshotStream, &stream[magic..]),
    );
    write_seed(
        "storage_decode",
        "aspen-file",
        &tagged(StorageInput::AspenSnapshotFile, &stream[magic..]),
    );
    let etcd = aspen_storage::state_machine::export_etcd_snapshot(sm.store()).expect("etcd");
    let etcd = read_all(etcd.data().reader());
    write_seed(
        "storage_decode",
        "etcd-file",
        &tagged(StorageInput::EtcdSnapshotFile, &etcd),
    );

    // Peer messages.
    let vote = Vote::new_committed(2, 1);
    let append = openraft::raft::AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: Some(entries[0].log_id),
        leader_commit: Some(entries[1].log_id),
        entries: entries[1..].to_vec(),
    };
    write_seed("peer_messages", "append", &codec::encode(&append));
    let forward: aspen_raft::wire::ForwardCall = aspen_node::ForwardRequest::Write(put("k", "v"));
    write_seed("peer_messages", "forward", &codec::encode(&forward));
    let vote_call = aspen_raft::wire::VoteCall {
        pre_vote: true,
        request: openraft::raft::VoteRequest::new(vote, Some(entries[4].log_id)),
    };
    write_seed("peer_messages", "vote", &codec::encode(&vote_call));

    // Client requests: any bytes make an input; these steer towards puts, deletes and txns.
    write_seed(
        "client_requests",
        "puts",
        &[0u8, 0, 1, 0, 2, 0, 0, 1, 1, 0, 3, 0, 0, 0],
    );
    write_seed(
        "client_requests",
        "mixed",
        &(0u8..=255).rev().collect::<Vec<u8>>(),
    );
    write_seed(
        "client_requests",
        "txn",
        &[2u8, 3, 1, 1, 0, 2, 1, 1, 3, 2, 3, 3, 0, 1, 2, 9],
    );
}
