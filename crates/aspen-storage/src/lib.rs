//! Aspen's storage: the Raft log, the vote and the committed index in one redb database, the MVCC
//! state machine in another, each durable on its own schedule (`backend`, `durability`), and
//! snapshots streamed in bounded chunks.
//!
//! The in-memory backend is the same code on redb's `InMemoryBackend`, so both backends pass the
//! same tests by construction. This crate knows nothing of networks or the client API.

pub mod backend;
mod direct_writes;
pub mod disk;
mod durability;
pub mod error;
pub mod force_new_cluster;
pub mod journal;
pub mod log_store;
pub mod log_writer;
mod migrate;
mod page_journal;
mod parked;
pub mod restore;
pub mod schema;
pub mod snapshot;
pub mod stage_clock;
pub mod state_machine;
mod tracked;

pub use backend::{
    LOG_FILE_NAME, LOG_JOURNAL_FILE_NAME, RepairedOnOpen, SNAPSHOT_DIR_NAME, STATE_FILE_NAME,
    StorageBackend, Store, open_storage, open_storage_with_backends,
};
pub use error::StorageError;
pub use journal::LogJournal;
pub use log_store::LogStore;
pub use migrate::{V1_FILE_NAME, V1_SNAPSHOT_DIR_NAME};
pub use snapshot::{SnapshotData, SnapshotReceiver};
pub use state_machine::{AuthSink, MvccReader, StateMachine};
