//! The fuzz harnesses, as plain functions: the cargo-fuzz targets (`fuzz_targets/`) call them
//! on libFuzzer's inputs, and `tests/replay.rs` calls them on the committed corpus with the
//! stable toolchain (what CI runs). Each returns normally on any input; a panic, a hang or an
//! oversized allocation is the bug libFuzzer reports.

use std::collections::BTreeMap;
use std::io::Write;

use aspen_core::codec;
use aspen_core::limits::Limits;
use aspen_core::type_config::alias::Entry;
use aspen_core::{Command, NodeId, NodeInfo, TypeConfig};
use aspen_storage::StorageBackend;

pub mod client;

/// What the first input byte selects in [`storage_decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageInput {
    LogEntry,
    StateRecord,
    AspenSnapshotStream,
    AspenSnapshotFile,
    EtcdSnapshotFile,
}

impl StorageInput {
    pub const ALL: [StorageInput; 5] = [
        StorageInput::LogEntry,
        StorageInput::StateRecord,
        StorageInput::AspenSnapshotStream,
        StorageInput::AspenSnapshotFile,
        StorageInput::EtcdSnapshotFile,
    ];

    pub fn tag(self) -> u8 {
        self as u8
    }
}

/// Every decoder of bytes Aspen reads back from disk, on `data[1..]`, chosen by `data[0]`:
/// a log entry, each state-table record, Aspen's snapshot stream (frames, lengths, checksum),
/// a whole saved Aspen snapshot file (its SHA-256 trailer made valid here, so the fuzzer
/// reaches the parser behind it) restored as `aspen snapshot restore` does, and an etcd
/// snapshot file (bbolt) read and restored the same way. Each must give a clean error.
pub fn storage_decode(data: &[u8]) {
    let Some((&tag, body)) = data.split_first() else {
        return;
    };
    let Some(kind) = StorageInput::ALL.get(usize::from(tag) % StorageInput::ALL.len()) else {
        return;
    };
    match kind {
        StorageInput::LogEntry => {
            if let Ok(entry) = codec::decode::<Entry>(body) {
                // What decodes re-encodes to something that decodes to the same entry.
                let again: Entry = codec::decode(&codec::encode(&entry)).expect("re-decode");
                assert_eq!(again, entry);
            }
            let _ = codec::decode::<Option<aspen_core::type_config::alias::LogId>>(body);
            let _ = codec::decode::<aspen_core::type_config::alias::Vote>(body);
        }
        StorageInput::StateRecord => {
            use aspen_storage::state_machine::records::{AppliedState, LeaseRecord, StoredVersion};
            use aspen_storage::state_machine::{IndexRecord, RevRecord};
            let _ = codec::decode::<StoredVersion>(body);
            let _ = codec::decode::<LeaseRecord>(body);
            let _ = codec::decode::<AppliedState>(body);
            let _ = codec::decode::<IndexRecord>(body);
            let _ = codec::decode::<RevRecord>(body);
        }
        StorageInput::AspenSnapshotStream => {
            let mut stream = aspen_storage::snapshot::SNAPSHOT_MAGIC.to_vec();
            stream.extend_from_slice(body);
            let file = temp_file(&stream);
            let data =
                aspen_storage::SnapshotData::from_file_prefix(file.path(), stream.len() as u64)
                    .expect("snapshot data over a temp file");
            let _ = aspen_storage::snapshot::verify(&data);
        }
        StorageInput::AspenSnapshotFile => {
            let mut saved = aspen_storage::snapshot::SNAPSHOT_MAGIC.to_vec();
            saved.extend_from_slice(body);
            let trailer = sha256(&saved);
            saved.extend_from_slice(&trailer);
            restore(&saved);
        }
        StorageInput::EtcdSnapshotFile => {
            let file = temp_file(body);
            if let Ok(snapshot) = aspen_etcd_snapshot::EtcdSnapshot::open(file.path()) {
                let _ = snapshot.summary();
            }
            restore(body);
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn temp_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(bytes).expect("write temp file");
    file.flush().expect("flush temp file");
    file
}

/// `aspen snapshot restore` of `saved` into an in-memory store: an error is fine; if it
/// succeeds, the restored store must answer reads.
fn restore(saved: &[u8]) {
    let file = temp_file(saved);
    let members = BTreeMap::from([(
        1 as NodeId,
        NodeInfo {
            name: "fuzz".into(),
            peer_urls: vec!["http://127.0.0.1:2380".into()],
            client_urls: Vec::new(),
        },
    )]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let restored = runtime.block_on(aspen_storage::restore::restore_saved_snapshot(
        file.path(),
        &StorageBackend::InMemory,
        Limits::default(),
        members,
    ));
    drop(restored);
}

/// Peer messages from a peer that sends garbage: each message type a peer receives is
/// decoded from `data` as the peer service does (`aspen_raft::service`); a message that
/// decodes must re-encode to one that decodes the same (nothing half-read reaches Raft).
pub fn peer_messages(data: &[u8]) {
    use aspen_raft::wire::{AppendCall, ForwardCall, SnapshotHeader, TransferLeaderCall, VoteCall};
    fn round_trip<T>(data: &[u8])
    where
        T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        if let Ok(decoded) = codec::decode::<T>(data) {
            let encoded = codec::encode(&decoded);
            let again: T = codec::decode(&encoded).expect("a decoded message re-decodes");
            assert_eq!(format!("{again:?}"), format!("{decoded:?}"));
        }
    }
    round_trip::<VoteCall>(data);
    round_trip::<AppendCall>(data);
    round_trip::<TransferLeaderCall>(data);
    round_trip::<ForwardCall>(data);
    round_trip::<SnapshotHeader>(data);
    round_trip::<aspen_raft::wire::AppendReply>(data);
    round_trip::<aspen_raft::wire::StreamAppendReply>(data);
    round_trip::<aspen_raft::wire::ForwardReply>(data);
    // An append that decodes, split as a leader would split it, carries the same entries.
    if let Ok(append) = codec::decode::<openraft::raft::AppendEntriesRequest<TypeConfig>>(data) {
        let entries = append.entries.clone();
        let parts = aspen_raft::split::split_append(append, 1024);
        let rejoined: Vec<Entry> = parts.into_iter().flat_map(|p| p.entries).collect();
        assert_eq!(rejoined, entries);
    }
    let _ = codec::decode::<Command>(data);
}
