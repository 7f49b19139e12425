//! Aspen's own snapshot stream, as members send it to each other (Raft's `InstallSnapshot`) and
//! `aspenctl snapshot status` reads it: the magic, the frames and the records they carry.
//! Format in `docs/storage-format.md`; `aspen-storage` writes and installs it (`snapshot.rs`,
//! `state_machine/snapshot_io.rs`), and stores the same records in its tables.
//!
//! The stream: `SNAPSHOT_MAGIC` (8 bytes), then frames, each `[u32 big-endian length]
//! [codec-encoded Frame]` of at most `limits::SNAPSHOT_FRAME_BYTES_MAX` bytes, the last being
//! `Frame::End`, then a big-endian CRC-32 of every byte before it.

use serde::{Deserialize, Serialize};

use crate::KeyValue;
use crate::auth::{AuthMeta, RoleRecord, UserRecord};
use crate::command::AlarmType;

/// The first 8 bytes of every snapshot stream.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"ASPNSNP1";

/// One unit of a snapshot stream. New variants go at the end only: postcard numbers variants
/// in order, and older snapshots must still decode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    Header {
        revision: u64,
        compact_revision: u64,
        alarms: Vec<(u64, AlarmType)>,
    },
    Latest {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        version: StoredVersion,
    },
    History {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        revision: u64,
        version: StoredVersion,
    },
    Lease {
        id: u64,
        record: LeaseRecord,
    },
    End {
        frames: u64,
    },
    /// The auth store (added after the frames above, so older snapshots, which have none of
    /// these, still read: they install an empty, disabled auth store).
    AuthMeta(AuthMeta),
    AuthUser {
        name: String,
        record: UserRecord,
    },
    AuthRole {
        name: String,
        record: RoleRecord,
    },
}

/// One version of a key, without the key (the table key holds it). `version == 0` marks a
/// deletion tombstone in `kv_history`; `kv_latest` never holds one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVersion {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    /// Order of this change within its revision (a Txn writes several keys at one revision).
    pub sub_revision: u32,
    pub version: u64,
    pub lease: u64,
}

impl StoredVersion {
    pub fn tombstone(mod_revision: u64, sub_revision: u32) -> StoredVersion {
        StoredVersion {
            value: Vec::new(),
            create_revision: 0,
            mod_revision,
            sub_revision,
            version: 0,
            lease: 0,
        }
    }

    pub fn is_tombstone(&self) -> bool {
        self.version == 0
    }

    pub fn to_key_value(&self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub ttl_seconds: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    /// The variant numbers are the format: a reordering would misread every stored snapshot.
    #[test]
    fn frames_keep_their_variant_numbers() {
        let version = StoredVersion::tombstone(3, 0);
        let frames = [
            Frame::Header {
                revision: 7,
                compact_revision: 0,
                alarms: Vec::new(),
            },
            Frame::Latest {
                key: b"k".to_vec(),
                version: version.clone(),
            },
            Frame::History {
                key: b"k".to_vec(),
                revision: 3,
                version,
            },
            Frame::Lease {
                id: 1,
                record: LeaseRecord { ttl_seconds: 5 },
            },
            Frame::End { frames: 4 },
        ];
        for (number, frame) in frames.iter().enumerate() {
            let bytes = codec::encode(frame);
            assert_eq!(bytes[0], codec::CODEC_VERSION);
            assert_eq!(usize::from(bytes[1]), number, "{frame:?}");
            let decoded: Frame = codec::decode(&bytes).expect("decode");
            assert_eq!(&decoded, frame);
        }
    }
}
