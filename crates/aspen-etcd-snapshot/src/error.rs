//! What can be wrong with a snapshot file; every message says what and where.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: not a bbolt database (no valid bbolt meta page): not an etcd snapshot")]
    Foreign(PathBuf),
    #[error("{path}: truncated: {reason}")]
    Truncated { path: PathBuf, reason: String },
    #[error("{path}: corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "{path}: snapshot file integrity check failed: expected sha256 {expected}, got {actual}"
    )]
    Sha256Mismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: not an etcd snapshot: {reason}")]
    NotEtcd { path: PathBuf, reason: String },
    #[error("writing the snapshot: {0}")]
    Write(std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
