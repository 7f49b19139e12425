//! The node's two transport seams over [`SimNet`]: openraft's `RaftNetworkFactory` /
//! `RaftNetworkV2` (vote, pre-vote, append, full snapshot) and Aspen's `Forwarder`. They
//! mirror `aspen-raft`'s gRPC client: the same calls reach the same `Raft` and `Node` entry
//! points on the receiver, and failures map to the same openraft and node errors.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use aspen_core::type_config::alias::Vote;
use aspen_core::{NodeId, NodeInfo, TypeConfig};
use aspen_node::forward::ForwardResult;
use aspen_node::{ForwardRequest, Forwarder, NodeError};
use aspen_storage::SnapshotData;
use futures_util::future::BoxFuture;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::SnapshotOf;

use crate::limits::{FORWARD_TIMEOUT_MS, SNAPSHOT_BYTES_MAX, SNAPSHOT_CHUNK_BYTES};
use crate::net::{CallError, MsgKind, Route, SimNet};

/// The sending side of one node incarnation.
#[derive(Clone)]
pub struct SimEndpoint {
    pub net: SimNet,
    pub id: NodeId,
    pub incarnation: u64,
}

impl SimEndpoint {
    fn route(&self, to: NodeId) -> Route {
        Route {
            from: self.id,
            from_incarnation: self.incarnation,
            to,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for SimEndpoint {
    type Network = SimRaftClient;

    async fn new_client(&mut self, target: NodeId, _node: &NodeInfo) -> SimRaftClient {
        SimRaftClient {
            endpoint: self.clone(),
            target,
        }
    }
}

/// Raft RPCs from one node to one target.
pub struct SimRaftClient {
    endpoint: SimEndpoint,
    target: NodeId,
}

fn rpc_error(target: NodeId, error: CallError) -> RPCError<TypeConfig> {
    match error {
        CallError::Unreachable => RPCError::Unreachable(Unreachable::from_string(format!(
            "peer {target}: connection refused"
        ))),
        CallError::Timeout => RPCError::Network(NetworkError::from_string(format!(
            "peer {target}: deadline exceeded"
        ))),
    }
}

impl SimRaftClient {
    async fn vote_call(
        &self,
        kind: MsgKind,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let pre_vote = kind == MsgKind::PreVote;
        let route = self.endpoint.route(self.target);
        let reply = self
            .endpoint
            .net
            .call(route, kind, option.hard_ttl(), move |node| {
                let rpc = rpc.clone();
                async move {
                    let raft = node.raft();
                    let result = if pre_vote {
                        raft.pre_vote(rpc).await
                    } else {
                        raft.vote(rpc).await
                    };
                    result.map_err(|e| e.to_string())
                }
            })
            .await
            .map_err(|e| rpc_error(self.target, e))?;
        reply.map_err(|e| RPCError::Network(NetworkError::from_string(e)))
    }
}

impl RaftNetworkV2<TypeConfig> for SimRaftClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let route = self.endpoint.route(self.target);
        let reply = self
            .endpoint
            .net
            .call(route, MsgKind::Append, option.hard_ttl(), move |node| {
                let rpc = rpc.clone();
                async move {
                    node.raft()
                        .append_entries(rpc)
                        .await
                        .map_err(|e| e.to_string())
                }
            })
            .await
            .map_err(|e| rpc_error(self.target, e))?;
        reply.map_err(|e| RPCError::Network(NetworkError::from_string(e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.vote_call(MsgKind::Vote, rpc, option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.vote_call(MsgKind::PreVote, rpc, option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let bytes = Arc::new(read_snapshot(&snapshot.snapshot)?);
        let meta = snapshot.meta;
        let route = self.endpoint.route(self.target);
        let target = self.target;
        let call =
            self.endpoint
                .net
                .call(route, MsgKind::Snapshot, option.hard_ttl(), move |node| {
                    let (bytes, meta, vote) = (bytes.clone(), meta.clone(), vote);
                    async move { receive_snapshot(node, &bytes, meta, vote).await }
                });
        // Biased: a cancelled transmission stops even if the reply is ready at the same time,
        // and no random branch choice enters the run.
        let reply = tokio::select! {
            biased;
            closed = cancel => return Err(StreamingError::Closed(closed)),
            reply = call => reply,
        };
        let reply = reply.map_err(|e| match rpc_error(target, e) {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            other => StreamingError::Network(NetworkError::from_string(other.to_string())),
        })?;
        reply.map_err(|e| StreamingError::Network(NetworkError::from_string(e)))
    }
}

fn read_snapshot(data: &SnapshotData) -> Result<Vec<u8>, StreamingError<TypeConfig>> {
    // A snapshot point's data is written now, on the simulator's one thread (deterministic).
    let data = data
        .materialized()
        .map_err(|e| StreamingError::Network(NetworkError::from_string(e.to_string())))?;
    let len_bytes = data.len_bytes();
    if len_bytes > SNAPSHOT_BYTES_MAX {
        return Err(StreamingError::Network(NetworkError::from_string(format!(
            "snapshot of {len_bytes} bytes exceeds the simulator's {SNAPSHOT_BYTES_MAX}"
        ))));
    }
    let mut bytes = Vec::with_capacity(aspen_core::convert::usize_from(len_bytes));
    data.reader()
        .read_to_end(&mut bytes)
        .map_err(|e| StreamingError::Network(NetworkError::from_string(e)))?;
    Ok(bytes)
}

/// The receiver's side, as `aspen-raft`'s `install_snapshot` service: chunks into a
/// receiver, which checks the stream, then Raft installs it.
async fn receive_snapshot(
    node: aspen_node::Node,
    bytes: &[u8],
    meta: aspen_core::type_config::alias::SnapshotMeta,
    vote: Vote,
) -> Result<SnapshotResponse<TypeConfig>, String> {
    let mut receiver = node
        .state_machine()
        .snapshot_receiver()
        .map_err(|e| e.to_string())?;
    for chunk in bytes.chunks(SNAPSHOT_CHUNK_BYTES) {
        receiver.write_chunk(chunk).map_err(|e| e.to_string())?;
    }
    let data = receiver.finish().map_err(|e| e.to_string())?;
    let snapshot = openraft::storage::Snapshot {
        meta,
        snapshot: data,
    };
    node.raft()
        .install_full_snapshot(vote, snapshot)
        .await
        .map_err(|e| e.to_string())
}

impl Forwarder for SimEndpoint {
    fn forward(
        &self,
        target: NodeId,
        _node: NodeInfo,
        request: ForwardRequest,
    ) -> BoxFuture<'static, ForwardResult> {
        let net = self.net.clone();
        let route = self.route(target);
        Box::pin(async move {
            let deadline = Duration::from_millis(FORWARD_TIMEOUT_MS);
            let reply = net
                .call(route, MsgKind::Forward, deadline, move |node| {
                    let request = request.clone();
                    async move { node.handle_forward(request).await }
                })
                .await;
            match reply {
                Ok(answer) => answer,
                // As the gRPC forwarder: a refused connection reads as "no leader" (the
                // request was not delivered, so the node may retry), a deadline as a timeout.
                Err(CallError::Unreachable) => Err(NodeError::NoLeader),
                Err(CallError::Timeout) => Err(NodeError::Timeout),
            }
        })
    }
}
