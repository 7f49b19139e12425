//! etcd 3.4's snapshot file, in and out: a bbolt database (our own read-only reader and
//! streaming writer of bbolt's page format) holding etcd's buckets, optionally followed by the
//! SHA-256 of the database that `etcdctl snapshot save` appends.
//!
//! - [`bolt_read`]: meta pages (checksummed), branch and leaf pages, buckets (inline too),
//!   overflow pages; every offset is checked, so a truncated or damaged file is an error.
//! - [`bolt_write`]: writes a database page by page in one pass over sorted keys, with memory
//!   bounded by the tree's height (one open page per level), whatever the data size.
//! - [`layout`]: etcd's buckets, revision keys and the protobuf records in them.
//! - [`file`]: a saved snapshot file: trailer check, then the etcd layout on the reader.

pub mod bolt_read;
pub mod bolt_write;
mod crc32c;
pub mod error;
pub mod file;
mod int;
pub mod layout;
pub mod limits;
mod proto;

pub use error::{Error, Result};
pub use file::{EtcdSnapshot, Summary};
pub use layout::{KeyValue, Lease, Permission, PermissionType, Revision, Role, User};
