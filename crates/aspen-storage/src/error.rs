//! Storage errors: one enum for the layer, wrapping redb's, with the path where it matters.

use std::path::PathBuf;

use aspen_core::codec::CodecError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("data dir locked: {path} is already opened by another process")]
    Locked { path: PathBuf },
    #[error("cannot open {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("{path} is not an Aspen database: {reason}")]
    Foreign { path: PathBuf, reason: String },
    #[error("storage engine error: {0}")]
    Redb(#[from] redb::Error),
    #[error("corrupt record in table {table}: {source}")]
    Codec {
        table: &'static str,
        source: CodecError,
    },
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error("snapshot file {path}: {source}")]
    SnapshotIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invariant violated: {0}")]
    Invariant(String),
    #[error("cannot open {path}: the disk is full: {source}")]
    NoSpace {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl StorageError {
    /// The OS error underneath, when there is one.
    pub fn io_source(&self) -> Option<&std::io::Error> {
        match self {
            StorageError::SnapshotIo { source, .. } | StorageError::NoSpace { source, .. } => {
                Some(source)
            }
            StorageError::Redb(redb::Error::Io(source)) => Some(source),
            _ => None,
        }
    }

    /// The filesystem had no room (ENOSPC, EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        self.io_source().is_some_and(crate::disk::is_disk_full)
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self { StorageError::Redb(redb::Error::from(e)) }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::CompactionError,
    redb::DatabaseError,
    redb::SetDurabilityError
);

impl From<StorageError> for std::io::Error {
    fn from(e: StorageError) -> Self {
        std::io::Error::other(e)
    }
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// Decodes a value `table.get(..)` may have found, naming the table if it is corrupt.
pub(crate) fn decode_found<T: serde::de::DeserializeOwned>(
    table: &'static str,
    found: Option<redb::AccessGuard<'_, &'static [u8]>>,
) -> Result<Option<T>> {
    found.map(|bytes| decode(table, bytes.value())).transpose()
}

/// Decodes a value read from `table`, naming the table if it is corrupt.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    table: &'static str,
    bytes: &[u8],
) -> Result<T> {
    aspen_core::codec::decode(bytes).map_err(|source| StorageError::Codec { table, source })
}
