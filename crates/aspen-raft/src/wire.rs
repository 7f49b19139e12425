//! What travels inside the peer envelope, and the limits on it.

use aspen_core::TypeConfig;
use aspen_core::type_config::alias::{SnapshotMeta, Vote};
use aspen_node::{ForwardRequest, ForwardResponse, NodeError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

/// Largest peer message, sent or accepted: see `aspen_core::limits::peer_message_bytes_max`
/// (16 MiB + 64 KiB with the default request size; appends are split to fit, `split.rs`).
pub fn peer_message_bytes_max(request_bytes_max: u64) -> usize {
    let bytes = aspen_core::limits::peer_message_bytes_max(request_bytes_max);
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// Connect timeout for a peer connection.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Deadline for a forwarded client request (it may wait for a commit and an apply).
pub const FORWARD_TIMEOUT_MS: u64 = 10_000;
/// Calls of one forward stream the leader works on at once; further calls wait in the
/// stream (HTTP/2 flow control holds the follower back). A follower has at most
/// `FORWARD_WRITE_BATCHES_IN_FLIGHT_MAX` write batches out, plus reads and lease calls.
pub const FORWARD_STREAM_CALLS_IN_FLIGHT_MAX: usize = 256;
/// Calls a follower queues for its forward stream before a sender waits.
pub const FORWARD_STREAM_QUEUE_CALLS_MAX: usize = 256;

#[derive(Debug, Serialize, Deserialize)]
pub struct VoteCall {
    pub pre_vote: bool,
    pub request: VoteRequest<TypeConfig>,
}

pub type VoteReply = Result<VoteResponse<TypeConfig>, String>;
pub type AppendCall = AppendEntriesRequest<TypeConfig>;
pub type AppendReply = Result<AppendEntriesResponse<TypeConfig>, String>;
/// One reply of the pipelined append stream (`Err`: the follower's Raft stopped).
pub type StreamAppendReply = Result<openraft::raft::StreamAppendResult<TypeConfig>, String>;
pub type TransferLeaderCall = TransferLeaderRequest<TypeConfig>;
pub type TransferLeaderReply = Result<TransferLeaderResponse<TypeConfig>, String>;
pub type ForwardCall = ForwardRequest;
pub type ForwardReply = Result<ForwardResponse, NodeError>;

/// One request on a forward stream: the follower's id for it (unique on the stream) and the
/// request.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardStreamCall {
    pub id: u64,
    pub request: ForwardCall,
}

/// The leader's answer to the stream call with the same id.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardStreamReply {
    pub id: u64,
    pub reply: ForwardReply,
}

/// The first chunk of a snapshot transfer carries this in `meta`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub len_bytes: u64,
}

pub type SnapshotReply = Result<openraft::raft::SnapshotResponse<TypeConfig>, String>;
