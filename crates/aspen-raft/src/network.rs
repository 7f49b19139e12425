//! Client side: openraft's network over tonic channels, one lazily connected channel per peer.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aspen_core::codec;
use aspen_core::convert::usize_from;
use aspen_core::limits::{PEER_APPEND_BYTES_MAX, SNAPSHOT_CHUNK_BYTES_MAX};
use aspen_core::type_config::alias::Vote;
use aspen_core::{NodeId, NodeInfo, TypeConfig};
use aspen_node::forward::ForwardResult;
use aspen_node::{ForwardRequest, Forwarder, NodeError};
use aspen_proto::peer::raft_peer_client::RaftPeerClient;
use aspen_proto::peer::{RaftMessage, SnapshotChunk};
use aspen_storage::SnapshotData;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use openraft::base::BoxStream;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::SnapshotOf;
use tonic::transport::{Channel, Endpoint};

use crate::forward_stream::{ForwardPipes, Outcome};
use crate::identity::PeerIdentity;
use crate::wire::{
    self, AppendReply, SnapshotHeader, SnapshotReply, StreamAppendReply, TransferLeaderReply,
    VoteCall, VoteReply,
};

/// Channels to peers, shared by Raft replication and request forwarding.
#[derive(Clone)]
pub struct PeerClients {
    channels: Arc<Mutex<HashMap<(NodeId, String), Channel>>>,
    message_bytes_max: usize,
    /// Stamped on every message (sender, target, cluster id).
    identity: Arc<PeerIdentity>,
    /// For https:// peer URLs: the peer CA and this member's peer certificate.
    tls: Option<aspen_tls::ClientTls>,
    /// Forwarded requests go on one long-lived stream per leader (`forward_stream.rs`).
    forward_pipes: Arc<ForwardPipes>,
}

impl PeerClients {
    pub fn new(
        request_bytes_max: u64,
        identity: Arc<PeerIdentity>,
        tls: Option<aspen_tls::ClientTls>,
    ) -> PeerClients {
        PeerClients {
            channels: Arc::default(),
            message_bytes_max: wire::peer_message_bytes_max(request_bytes_max),
            identity,
            tls,
            forward_pipes: Arc::default(),
        }
    }

    /// The peer URL requests to `target` go to (its first).
    fn peer_url(target: NodeId, node: &NodeInfo) -> Result<String, String> {
        node.peer_urls
            .first()
            .cloned()
            .ok_or_else(|| format!("member {target} has no peer URL"))
    }

    fn client(&self, target: NodeId, node: &NodeInfo) -> Result<RaftPeerClient<Channel>, String> {
        let url = Self::peer_url(target, node)?;
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(&(target, url.clone())) {
            Some(channel) => channel.clone(),
            None => {
                let endpoint = Endpoint::from_shared(url.clone())
                    .map_err(|e| format!("bad peer URL {url}: {e}"))?
                    .connect_timeout(Duration::from_millis(wire::PEER_CONNECT_TIMEOUT_MS))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(5));
                let channel = if url.starts_with("https://") {
                    let tls = self.tls.as_ref().ok_or_else(|| {
                        format!("peer URL {url} is https, but this member has no peer TLS")
                    })?;
                    endpoint.connect_with_connector_lazy(tls.connector())
                } else {
                    endpoint.connect_lazy()
                };
                channels.insert((target, url), channel.clone());
                channel
            }
        };
        Ok(RaftPeerClient::new(channel)
            .max_decoding_message_size(self.message_bytes_max)
            .max_encoding_message_size(self.message_bytes_max))
    }
}

impl Forwarder for PeerClients {
    fn forward(
        &self,
        target: NodeId,
        node: NodeInfo,
        request: ForwardRequest,
    ) -> BoxFuture<'static, ForwardResult> {
        let client = self.client(target, &node);
        let identity = self.identity.clone();
        let pipes = Arc::clone(&self.forward_pipes);
        let key = Self::peer_url(target, &node).map(|url| (target, url));
        Box::pin(async move {
            let client = client.map_err(NodeError::Peer)?;
            let key = key.map_err(NodeError::Peer)?;
            if !pipes.unary_only(&key) {
                let stamp = |metadata: &mut tonic::metadata::MetadataMap| {
                    identity.stamp(metadata, target);
                };
                match pipes.call(key, client.clone(), stamp, &request).await {
                    Outcome::Reply(reply) => return reply,
                    Outcome::Failed(error) => return Err(error),
                    Outcome::Unsupported => {}
                }
            }
            forward_unary(client, &identity, target, request).await
        })
    }
}

/// One forwarded request as its own `Forward` call (to a leader without `ForwardStream`).
async fn forward_unary(
    mut client: RaftPeerClient<Channel>,
    identity: &PeerIdentity,
    target: NodeId,
    request: ForwardRequest,
) -> ForwardResult {
    let message = RaftMessage {
        data: codec::encode(&request),
    };
    let mut call = stamped(identity, target, message);
    call.set_timeout(Duration::from_millis(wire::FORWARD_TIMEOUT_MS));
    let reply = client
        .forward(call)
        .await
        .map_err(|status| match status.code() {
            // Only a request that never left this node may be retried elsewhere: a
            // forwarded write the leader received and then lost its connection over
            // may have been applied, and sending it again would apply it twice.
            tonic::Code::Unavailable if never_sent(&status) => NodeError::NoLeader,
            tonic::Code::Unavailable => NodeError::Peer(format!(
                "connection to the leader lost, outcome unknown: {}",
                status.message()
            )),
            tonic::Code::DeadlineExceeded => NodeError::Timeout,
            _ => NodeError::Peer(status.message().to_string()),
        })?;
    let reply: wire::ForwardReply =
        codec::decode(&reply.into_inner().data).map_err(|e| NodeError::Peer(e.to_string()))?;
    reply
}

/// Creates one [`PeerNetwork`] per replication target.
#[derive(Clone)]
pub struct PeerNetworkFactory {
    clients: PeerClients,
}

impl PeerNetworkFactory {
    pub fn new(clients: PeerClients) -> PeerNetworkFactory {
        PeerNetworkFactory { clients }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerNetwork {
        PeerNetwork {
            target,
            client: self.clients.client(target, node),
            identity: self.clients.identity.clone(),
            heartbeat_pipe: None,
        }
    }
}

pub struct PeerNetwork {
    target: NodeId,
    client: Result<RaftPeerClient<Channel>, String>,
    identity: Arc<PeerIdentity>,
    /// One long-lived append stream for single empty appends: openraft's heartbeat worker
    /// (which also confirms leadership for every ReadIndex round) sends each heartbeat as a
    /// stream of one request, and opening a stream per heartbeat cost each side a new HTTP/2
    /// stream, a server task and openraft's per-stream pipeline. Present only between calls
    /// that ended well; see [`PeerNetwork::single_empty_append`].
    heartbeat_pipe: Option<HeartbeatPipe>,
}

/// The client end of a long-lived `append_stream` call: one request in, one reply out, in
/// turn.
struct HeartbeatPipe {
    requests: tokio::sync::mpsc::Sender<RaftMessage>,
    replies: tonic::Streaming<RaftMessage>,
}

/// A request to `target`, stamped with who sends it and the cluster it belongs to.
fn stamped<T>(identity: &PeerIdentity, target: NodeId, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    identity.stamp(request.metadata_mut(), target);
    request
}

fn unreachable<E>(message: impl ToString) -> E
where
    E: From<Unreachable<TypeConfig>>,
{
    E::from(Unreachable::from_string(message))
}

impl PeerNetwork {
    fn client(&self) -> Result<RaftPeerClient<Channel>, String> {
        self.client.clone()
    }

    async fn call_unary<Req: serde::Serialize, Rep: serde::de::DeserializeOwned>(
        &self,
        method: PeerMethod,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Rep, RPCError<TypeConfig>> {
        let mut client = self.client().map_err(unreachable::<RPCError<TypeConfig>>)?;
        let message = RaftMessage {
            data: codec::encode(request),
        };
        let mut call = stamped(&self.identity, self.target, message);
        call.set_timeout(option.hard_ttl());
        let reply = match method {
            PeerMethod::Vote => client.vote(call).await,
            PeerMethod::Append => client.append_entries(call).await,
            PeerMethod::TransferLeader => client.transfer_leader(call).await,
        };
        let reply = reply.map_err(|status| status_to_rpc_error(self.target, status))?;
        codec::decode(&reply.into_inner().data)
            .map_err(|e| RPCError::Network(NetworkError::from_string(e)))
    }
}

impl PeerNetwork {
    /// Sends one append with no entries over the heartbeat pipe, opening it first if there is
    /// none, and returns its reply. The pipe is taken out for the call and put back only when
    /// the reply came and was a success: a call dropped halfway (openraft's heartbeat timeout)
    /// drops the pipe with it, so no later call can read an earlier call's reply, and the
    /// follower ends its side of the stream after any error reply, so that pipe is not kept
    /// either.
    async fn single_empty_append(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
    ) -> Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>> {
        assert!(
            request.entries.is_empty(),
            "only empty appends use the pipe"
        );
        let target = self.target;
        let mut pipe = match self.heartbeat_pipe.take() {
            Some(pipe) => pipe,
            None => self.open_heartbeat_pipe().await?,
        };
        let message = RaftMessage {
            data: codec::encode(&request),
        };
        if pipe.requests.send(message).await.is_err() {
            return Err(unreachable(format!(
                "peer {target}: heartbeat stream closed"
            )));
        }
        let reply = match pipe.replies.message().await {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                return Err(unreachable(format!(
                    "peer {target}: heartbeat stream ended"
                )));
            }
            Err(status) => return Err(status_to_rpc_error(target, status)),
        };
        let result = decode_stream_reply(&reply)?;
        if result.is_ok() {
            self.heartbeat_pipe = Some(pipe);
        }
        Ok(result)
    }

    async fn open_heartbeat_pipe(&self) -> Result<HeartbeatPipe, RPCError<TypeConfig>> {
        let mut client = self.client().map_err(unreachable::<RPCError<TypeConfig>>)?;
        // One request waits at most: the pipe carries one call at a time.
        let (requests, receiver) = tokio::sync::mpsc::channel(1);
        let outgoing = futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|message| (message, receiver))
        });
        let response = client
            .append_stream(stamped(&self.identity, self.target, outgoing))
            .await
            .map_err(|status| status_to_rpc_error(self.target, status))?;
        Ok(HeartbeatPipe {
            requests,
            replies: response.into_inner(),
        })
    }

    /// Vote and pre-vote share one RPC; the call says which.
    async fn call_vote(
        &self,
        call: VoteCall,
        option: &RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let reply: VoteReply = self.call_unary(PeerMethod::Vote, &call, option).await?;
        reply.map_err(|e| RPCError::Network(NetworkError::from_string(e)))
    }
}

/// One reply of an append stream: the follower's answer, or its error as a network error.
fn decode_stream_reply(
    message: &RaftMessage,
) -> Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>> {
    let reply: StreamAppendReply = codec::decode(&message.data)
        .map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
    reply.map_err(|e| RPCError::Network(NetworkError::from_string(e)))
}

enum PeerMethod {
    Vote,
    Append,
    TransferLeader,
}

fn status_to_rpc_error(target: NodeId, status: tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
            unreachable::<RPCError<TypeConfig>>(format!("peer {target}: {}", status.message()))
        }
        _ => RPCError::Network(NetworkError::from_string(format!(
            "peer {target}: {status}"
        ))),
    }
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // A batch too large for one message: send its first part and report how far it
        // got; openraft sends the rest next (its contract for `PartialSuccess`).
        let mut parts = crate::split::split_append(rpc, PEER_APPEND_BYTES_MAX).into_iter();
        let Some(first) = parts.next() else {
            unreachable!("split_append returns at least one part")
        };
        let split = parts.next().is_some();
        let last_sent = first.entries.last().map(|e| e.log_id);
        let reply: AppendReply = self.call_unary(PeerMethod::Append, &first, &option).await?;
        let reply = reply.map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
        Ok(match reply {
            AppendEntriesResponse::Success if split => {
                AppendEntriesResponse::PartialSuccess(last_sent)
            }
            other => other,
        })
    }

    /// Pipelined replication over one bidirectional stream: the leader sends the next batch
    /// without waiting for the previous reply (openraft's default sends one at a time).
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: futures_util::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let target = self.target;
        let client = self.client();
        let identity = self.identity.clone();
        Box::pin(async move {
            // openraft sleeps out its backoff (after an `Unreachable` peer) inside the request
            // stream, when the next request is taken. tonic takes the first one only after the
            // connection is up, so a peer that refuses connections was retried with no pause
            // at all (thousands of attempts a second). Taking the first request before
            // connecting puts every attempt behind the backoff.
            let mut input = input;
            let Some(first) = input.next().await else {
                return Ok(Box::pin(futures_util::stream::empty()) as BoxStream<'s, _>);
            };
            // A stream that ends after one empty append is a heartbeat: it goes over the
            // long-lived pipe. Anything else (replication) gets its own stream, as before.
            let second = if first.entries.is_empty() {
                match input.next().now_or_never() {
                    Some(None) => {
                        // A failure is the call's, as when a one-request stream fails to open.
                        let result = self.single_empty_append(first).await?;
                        let reply = futures_util::stream::once(std::future::ready(Ok(result)));
                        return Ok(Box::pin(reply) as BoxStream<'s, _>);
                    }
                    second => second.flatten(),
                }
            } else {
                None
            };
            let head = std::iter::once(first).chain(second);
            let mut client = client.map_err(unreachable::<RPCError<TypeConfig>>)?;
            let input = futures_util::stream::iter(head).chain(input);
            // Each batch split to fit a peer message; the replies joined back, one a batch.
            let counts = crate::split::PartCounts::default();
            let outgoing =
                crate::split::split_stream(input, counts.clone()).map(|request| RaftMessage {
                    data: codec::encode(&request),
                });
            let response = client
                .append_stream(stamped(&identity, target, outgoing))
                .await
                .map_err(|status| status_to_rpc_error(target, status))?;
            let replies = response.into_inner().map(move |item| {
                let message = item.map_err(|status| status_to_rpc_error(target, status))?;
                decode_stream_reply(&message)
            });
            let replies = crate::split::join_replies(Box::pin(replies), counts);
            let replies: BoxStream<'s, _> = Box::pin(replies);
            Ok(replies)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call_vote(
            VoteCall {
                pre_vote: false,
                request: rpc,
            },
            &option,
        )
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call_vote(
            VoteCall {
                pre_vote: true,
                request: rpc,
            },
            &option,
        )
        .await
    }

    /// Without this (openraft's default answers "not implemented"), a leader asked to hand
    /// over (MoveLeader) only stepped down: the followers kept honouring its lease, and
    /// whichever member timed out first won the election, not the one asked for.
    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let reply: TransferLeaderReply = self
            .call_unary(PeerMethod::TransferLeader, &rpc, &option)
            .await?;
        reply.map_err(|e| RPCError::Network(NetworkError::from_string(e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self
            .client()
            .map_err(unreachable::<StreamingError<TypeConfig>>)?;
        // A snapshot point's data is written now (the whole state, as of the view the
        // snapshot holds), on a blocking thread: Raft's workers and applies go on meanwhile.
        let deferred = snapshot.snapshot;
        let data = tokio::task::spawn_blocking(move || deferred.materialized())
            .await
            .map_err(|e| StreamingError::Network(NetworkError::from_string(e.to_string())))?
            .map_err(|e| StreamingError::Network(NetworkError::from_string(e.to_string())))?;
        let header = SnapshotHeader {
            vote,
            meta: snapshot.meta.clone(),
            len_bytes: data.len_bytes(),
        };
        let chunks = snapshot_chunks(codec::encode(&header), data);
        let mut call = stamped(&self.identity, self.target, tokio_stream::iter(chunks));
        call.set_timeout(option.hard_ttl().max(Duration::from_secs(60)));
        let send = client.install_snapshot(call);
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            reply = send => reply,
        };
        let reply = reply.map_err(|status| {
            StreamingError::Network(NetworkError::from_string(status.to_string()))
        })?;
        let reply: SnapshotReply = codec::decode(&reply.into_inner().data)
            .map_err(|e| StreamingError::Network(NetworkError::from_string(e)))?;
        reply.map_err(|e| StreamingError::Network(NetworkError::from_string(e)))
    }
}

/// Splits a snapshot into bounded chunks, read lazily: memory stays at one chunk.
fn snapshot_chunks(
    header: Vec<u8>,
    data: SnapshotData,
) -> impl Iterator<Item = SnapshotChunk> + Send {
    let mut reader = data.reader();
    let mut header = Some(header);
    let mut finished = false;
    std::iter::from_fn(move || {
        if finished {
            return None;
        }
        let mut buffer = vec![0u8; usize_from(SNAPSHOT_CHUNK_BYTES_MAX)];
        let mut filled = 0usize;
        while filled < buffer.len() {
            match reader.read(&mut buffer[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(error) => {
                    // Ending the stream early makes the receiver reject the snapshot
                    // (its checksum cannot match), which is the right outcome.
                    tracing::warn!(%error, "reading snapshot to send");
                    finished = true;
                    return None;
                }
            }
        }
        buffer.truncate(filled);
        let done = filled < usize_from(SNAPSHOT_CHUNK_BYTES_MAX);
        finished = done;
        Some(SnapshotChunk {
            meta: header.take().unwrap_or_default(),
            data: buffer,
            done,
        })
    })
}

/// True when tonic failed before sending: the connection could not be made. Decided by the
/// error's type (tonic wraps every failure to connect in `ConnectError`, and keeps it as the
/// status's source), never by its text.
pub(crate) fn never_sent(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        source = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use aspen_core::Command;
    use aspen_node::Retry;

    use super::*;

    fn member_at(port: u16) -> NodeInfo {
        NodeInfo {
            peer_urls: vec![format!("http://127.0.0.1:{port}")],
            ..Default::default()
        }
    }

    fn write() -> ForwardRequest {
        ForwardRequest::Write(Command::Compact {
            revision: 1,
            physical: false,
        })
    }

    /// A port nothing listens on (bound, then closed).
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    }

    #[tokio::test]
    async fn a_forward_that_could_not_connect_is_safe_to_retry() {
        let clients = PeerClients::new(
            aspen_core::limits::REQUEST_BYTES_MAX_DEFAULT,
            std::sync::Arc::new(crate::PeerIdentity::new(1)),
            None,
        );
        let error = clients
            .forward(2, member_at(closed_port()), write())
            .await
            .expect_err("nothing listens");
        assert_eq!(error, NodeError::NoLeader, "{error}");
        assert_eq!(error.retry(), Retry::Safe);
    }

    /// The leader took the request and then the connection broke: it may have been applied,
    /// so the error must not be retried.
    #[tokio::test]
    async fn a_forward_lost_after_it_was_sent_is_not_retried() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            stream
                .set_read_timeout(Some(Duration::from_millis(500)))
                .expect("timeout");
            // Read the preface, the settings and the request, then hang up without answering.
            let mut buffer = [0u8; 4096];
            let mut read = 0;
            while let Ok(n) = stream.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                read += n;
            }
            read
        });
        let clients = PeerClients::new(
            aspen_core::limits::REQUEST_BYTES_MAX_DEFAULT,
            std::sync::Arc::new(crate::PeerIdentity::new(1)),
            None,
        );
        let error = clients
            .forward(2, member_at(port), write())
            .await
            .expect_err("the peer hung up");
        let read = server.join().expect("server thread");
        assert!(read > 24, "the request reached the peer ({read} bytes)");
        assert_eq!(error.retry(), Retry::Unsafe, "{error}");
    }

    /// openraft's replication backoff sleeps inside the request stream, when a request is
    /// taken: a stream to a peer that refuses connections must take its first request before
    /// it fails, or the leader retries that peer with no pause at all.
    /// Both ways a stream leaves: a lone empty append (a heartbeat, over the heartbeat pipe)
    /// and a stream of several (replication, a stream of its own).
    #[tokio::test]
    async fn a_stream_to_an_unreachable_peer_takes_its_first_request_before_failing() {
        for requests in [1, 2] {
            let clients = PeerClients::new(
                aspen_core::limits::REQUEST_BYTES_MAX_DEFAULT,
                std::sync::Arc::new(crate::PeerIdentity::new(1)),
                None,
            );
            let mut factory = PeerNetworkFactory::new(clients);
            let mut network = factory.new_client(2, &member_at(closed_port())).await;
            let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counter = taken.clone();
            let request = AppendEntriesRequest::<TypeConfig> {
                vote: Vote::new(1, 1),
                prev_log_id: None,
                leader_commit: None,
                entries: Vec::new(),
            };
            let input = futures_util::stream::iter(vec![request; requests]).inspect(move |_| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
            let error = match network
                .stream_append(input, RPCOption::new(Duration::from_millis(500)))
                .await
            {
                Err(error) => error,
                Ok(_) => panic!("nothing listens, yet the stream of {requests} opened"),
            };
            assert!(matches!(error, RPCError::Unreachable(_)), "{error}");
            assert!(
                taken.load(std::sync::atomic::Ordering::SeqCst) >= 1,
                "the first request was not taken before the connection failed"
            );
            assert!(network.heartbeat_pipe.is_none(), "a failed pipe was kept");
        }
    }

    /// The text of a connect failure without the error itself is not taken for one.
    #[test]
    fn never_sent_looks_at_the_error_type_not_its_text() {
        let text_only = tonic::Status::unavailable("tcp connect error: error trying to connect");
        assert!(!never_sent(&text_only));
        let typed = tonic::Status::from_error(Box::new(tonic::ConnectError(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into(),
        )));
        assert_eq!(typed.code(), tonic::Code::Unavailable);
        assert!(never_sent(&typed));
    }
}
