//! Server side: incoming Raft RPCs and forwarded client requests, handed to the local node.

use std::pin::Pin;

use aspen_core::codec;
use aspen_core::type_config::alias::SnapshotMeta;
use aspen_node::Node;
use aspen_proto::peer::raft_peer_server::RaftPeer;
use aspen_proto::peer::{RaftMessage, SnapshotChunk};
use aspen_storage::StateMachine;
use futures_util::StreamExt;
use openraft::async_runtime::watch::WatchReceiver;
use tonic::{Request, Response, Status, Streaming};

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::identity::PeerIdentity;
use crate::wire::{
    AppendCall, AppendReply, FORWARD_STREAM_CALLS_IN_FLIGHT_MAX, ForwardCall, ForwardReply,
    ForwardStreamCall, ForwardStreamReply, SnapshotHeader, SnapshotReply, TransferLeaderCall,
    TransferLeaderReply, VoteCall, VoteReply,
};

#[derive(Clone)]
pub struct PeerService {
    node: Node,
    /// For receiving snapshots into this node's snapshot store.
    state_machine: StateMachine,
    /// Checks every message's sender, target and cluster id.
    identity: Arc<PeerIdentity>,
}

impl PeerService {
    pub fn new(
        node: Node,
        state_machine: StateMachine,
        identity: Arc<PeerIdentity>,
    ) -> PeerService {
        PeerService {
            node,
            state_machine,
            identity,
        }
    }

    /// Refuses a message from another cluster, from a member this one does not know, or meant
    /// for another member. A member that knows no membership yet (one joining an existing
    /// cluster, before the leader's first entries) accepts any sender.
    fn check_sender(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let metrics = self.node.raft().metrics();
        let metrics = metrics.borrow_watched();
        let membership = metrics.membership_config.membership();
        let knows_members = membership.get_node(&self.identity.member_id()).is_some();
        let result = self.identity.check(metadata, |id| {
            knows_members.then(|| membership.get_node(&id).is_some())
        });
        if let Err(status) = &result {
            tracing::warn!(reason = status.message(), "refused a peer message");
        }
        result.map(|_| ())
    }
}

fn decode<T: serde::de::DeserializeOwned>(message: &RaftMessage) -> Result<T, Status> {
    codec::decode(&message.data)
        .map_err(|e| Status::invalid_argument(format!("bad peer message: {e}")))
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    Ok(Response::new(RaftMessage {
        data: codec::encode(value),
    }))
}

/// The replies of a streaming peer call (append stream, forward stream).
type PeerReplies =
    Pin<Box<dyn futures_util::Stream<Item = Result<RaftMessage, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RaftPeer for PeerService {
    type AppendStreamStream = PeerReplies;
    type ForwardStreamStream = PeerReplies;

    /// A follower's forwarded requests on one stream: each is handled as `forward` handles
    /// one (at most `FORWARD_STREAM_CALLS_IN_FLIGHT_MAX` at once) and answered with its id as
    /// soon as it completes, in any order. A request that does not decode ends the stream;
    /// the follower then fails every call still waiting on it.
    async fn forward_stream(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Self::ForwardStreamStream>, Status> {
        self.check_sender(request.metadata())?;
        let node = self.node.clone();
        let calls = request
            .into_inner()
            .map(|item| {
                item.ok()
                    .and_then(|m| codec::decode::<ForwardStreamCall>(&m.data).ok())
            })
            .take_while(|decoded| futures_util::future::ready(decoded.is_some()))
            .filter_map(futures_util::future::ready);
        let replies = calls
            .map(move |call| {
                let node = node.clone();
                async move {
                    let reply: ForwardReply = node.handle_forward(call.request).await;
                    ForwardStreamReply { id: call.id, reply }
                }
            })
            .buffer_unordered(FORWARD_STREAM_CALLS_IN_FLIGHT_MAX)
            .map(|reply| {
                Ok(RaftMessage {
                    data: codec::encode(&reply),
                })
            });
        Ok(Response::new(Box::pin(replies)))
    }

    /// Pipelined replication: openraft processes the requests in order as they arrive and
    /// answers each; a request that does not decode ends the stream.
    async fn append_stream(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        self.check_sender(request.metadata())?;
        let metrics = self.node.metrics().clone();
        metrics.peer_append_streams.fetch_add(1, Ordering::Relaxed);
        let node = self.node.clone();
        let requests = request
            .into_inner()
            .inspect(move |_| {
                metrics.peer_append_messages.fetch_add(1, Ordering::Relaxed);
                node.note_leader_contact();
            })
            .map(|item| {
                item.ok()
                    .and_then(|m| codec::decode::<AppendCall>(&m.data).ok())
            })
            .take_while(|decoded| futures_util::future::ready(decoded.is_some()))
            .filter_map(futures_util::future::ready);
        let replies = self.node.raft().stream_append(requests).map(|item| {
            let reply: crate::wire::StreamAppendReply = item.map_err(|e| e.to_string());
            Ok(RaftMessage {
                data: codec::encode(&reply),
            })
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check_sender(request.metadata())?;
        let call: VoteCall = decode(request.get_ref())?;
        let raft = self.node.raft();
        let result = if call.pre_vote {
            raft.pre_vote(call.request).await
        } else {
            raft.vote(call.request).await
        };
        let answer: VoteReply = result.map_err(|e| e.to_string());
        reply(&answer)
    }

    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.check_sender(request.metadata())?;
        let call: AppendCall = decode(request.get_ref())?;
        self.node.note_leader_contact();
        let answer: AppendReply = self
            .node
            .raft()
            .append_entries(call)
            .await
            .map_err(|e| e.to_string());
        reply(&answer)
    }

    async fn transfer_leader(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.check_sender(request.metadata())?;
        let call: TransferLeaderCall = decode(request.get_ref())?;
        let answer: TransferLeaderReply = self
            .node
            .raft()
            .handle_transfer_leader(call)
            .await
            .map_err(|e| e.to_string());
        reply(&answer)
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.check_sender(request.metadata())?;
        let mut stream: Pin<Box<Streaming<SnapshotChunk>>> = Box::pin(request.into_inner());
        let mut header: Option<SnapshotHeader> = None;
        let mut receiver = self
            .state_machine
            .snapshot_receiver()
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut done = false;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            self.node.note_leader_contact();
            if header.is_none() {
                let decoded: SnapshotHeader = codec::decode(&chunk.meta)
                    .map_err(|e| Status::invalid_argument(format!("bad snapshot header: {e}")))?;
                header = Some(decoded);
            }
            receiver
                .write_chunk(&chunk.data)
                .map_err(|e| Status::resource_exhausted(e.to_string()))?;
            if chunk.done {
                done = true;
                break;
            }
        }
        let header = header.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        if !done {
            return Err(Status::aborted(
                "snapshot stream ended before its last chunk",
            ));
        }
        if receiver.received_bytes() != header.len_bytes {
            return Err(Status::data_loss(format!(
                "snapshot has {} bytes, sender announced {}",
                receiver.received_bytes(),
                header.len_bytes
            )));
        }
        let data = receiver
            .finish()
            .map_err(|e| Status::data_loss(e.to_string()))?;
        let meta: SnapshotMeta = header.meta;
        let snapshot = openraft::storage::Snapshot {
            meta,
            snapshot: data,
        };
        let answer: SnapshotReply = self
            .node
            .raft()
            .install_full_snapshot(header.vote, snapshot)
            .await
            .map_err(|e| e.to_string());
        reply(&answer)
    }

    async fn forward(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.check_sender(request.metadata())?;
        let call: ForwardCall = decode(request.get_ref())?;
        let answer: ForwardReply = self.node.handle_forward(call).await;
        reply(&answer)
    }
}
