//! Watches: the hub that takes each committed batch of MVCC events from the state machine and
//! delivers it to every watcher whose range it touches, as etcd's watchable store does.
//!
//! Watchers that keep up are *synced* and get events as batches commit. A watcher whose
//! stream queue is full, or that asked for an old start revision, is *unsynced*: a background
//! step replays its missing revisions from MVCC history in bounded pages until it has caught
//! up, then it is synced again. Each watcher sees every event in its range exactly once, in
//! revision order, or is cancelled with the compaction revision if history no longer holds
//! what it needs. Nothing is buffered without bound: queues are bounded in messages and in
//! event bytes, per stream and across the hub (`Held`), so a stream that never reads holds at
//! most its budget, and history pages and catch-up rounds are bounded in bytes too.
//!
//! This crate knows storage and the core types only; the gRPC translation lives in
//! `aspen-api`.

mod hub;
mod stream;
mod watcher;

pub use hub::{HubOptions, WatchHub};
pub use stream::{Created, Held, WatchError, WatchMessage, WatchRequest, WatchStream};
