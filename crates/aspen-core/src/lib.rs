//! Aspen's shared vocabulary: the Raft type configuration, the replicated command and its
//! response, the one versioned binary codec, the snapshot stream's frames, and every named limit.
//!
//! This crate knows nothing of storage engines, networks or the client API; every other Aspen
//! crate depends on it and on nothing above it.

pub mod auth;
pub mod codec;
pub mod command;
pub mod convert;
pub mod event;
pub mod ids;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod response;
pub mod runtime;
pub mod snapshot_format;
pub mod type_config;

pub use command::{
    Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest, RangeRequest,
    RequestOp, SortOrder, SortTarget, TxnRequest,
};
pub use event::{Event, EventKind};
pub use response::{ApplyError, ApplyResponse, CommandResult, KeyValue, ResponseOp};
pub use type_config::{NodeId, NodeInfo, TypeConfig};
