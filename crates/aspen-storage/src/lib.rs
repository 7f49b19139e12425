//! Aspen's storage: the Raft log, the vote, the committed index and the MVCC state machine, all
//! in one redb database per node, and snapshots streamed in bounded chunks.
//!
//! The in-memory backend is the same code on redb's `InMemoryBackend`, so both backends pass the
//! same tests by construction. This crate knows nothing of networks or the client API.

pub mod backend;
pub mod error;
pub mod log_store;
pub mod log_writer;
pub mod restore;
pub mod schema;
pub mod snapshot;
pub mod state_machine;

pub use backend::{StorageBackend, Store, open_storage, open_storage_with_file_backend};
pub use error::StorageError;
pub use log_store::LogStore;
pub use snapshot::{SnapshotData, SnapshotReceiver};
pub use state_machine::{MvccReader, StateMachine};
