//! Requests a follower hands to the leader, and the seam through which it sends them.

use aspen_core::{ApplyResponse, Command, NodeId, NodeInfo};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::NodeError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardRequest {
    /// Propose a command; the leader answers once it is applied.
    Write(Command),
    /// Propose each command, concurrently; the leader answers with one result per command,
    /// in order, once each is applied or failed (a follower's batch, `forward_batch.rs`).
    Writes(Vec<Command>),
    /// Confirm leadership with a quorum and return the log index a linearizable read must
    /// wait for (ReadIndex).
    ReadIndex,
    AddMember {
        id: NodeId,
        info: NodeInfo,
        learner: bool,
    },
    PromoteMember {
        id: NodeId,
    },
    RemoveMember {
        id: NodeId,
    },
    UpdateMember {
        id: NodeId,
        info: NodeInfo,
    },
    TransferLeader {
        to: NodeId,
    },
    /// Renew a lease on the leader, whose lessor keeps the deadlines; answers `LeaseTtl`.
    LeaseKeepAlive {
        id: u64,
    },
    /// Remaining and granted TTL of a lease from the leader's lessor; answers `LeaseTtl`.
    LeaseTimeToLive {
        id: u64,
    },
    /// The cluster id the founding members derived; a member that joins later adopts it.
    ClusterId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardResponse {
    Write(ApplyResponse),
    Writes(Vec<Result<ApplyResponse, NodeError>>),
    ReadIndex(u64),
    Done,
    ClusterId(u64),
    /// A lease's remaining TTL and the TTL it was granted with, in seconds.
    LeaseTtl {
        ttl_seconds: i64,
        granted_ttl_seconds: i64,
    },
}

pub type ForwardResult = Result<ForwardResponse, NodeError>;

/// Sends a request to another member (the leader). Implemented by the gRPC peer client and
/// by the simulator's network.
pub trait Forwarder: Send + Sync + 'static {
    fn forward(
        &self,
        target: NodeId,
        node: NodeInfo,
        request: ForwardRequest,
    ) -> BoxFuture<'static, ForwardResult>;
}
