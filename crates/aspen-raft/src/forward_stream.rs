//! A follower's long-lived forward stream to each leader: its forwarded requests (write
//! batches, ReadIndex, lease calls) travel as messages on one `ForwardStream` call, each with
//! an id, and the leader answers each as it completes. A unary `Forward` per request cost
//! both members a new HTTP/2 stream each time (request and response headers, trailers, a
//! server task, tonic's per-call setup); etcd's followers hand proposals to the leader over a
//! stream they already hold.
//!
//! The rules:
//! - One pipe per (leader, peer URL), opened by the first request and kept while its stream
//!   lives. A pipe whose stream ended is dropped; the next request opens a new one.
//! - A request that never left this member (the queue to the stream was closed, or the
//!   connection could not be made) fails with `NoLeader`, which may be retried elsewhere. A
//!   request on a stream that ended after it was queued fails as "outcome unknown": the leader
//!   may have applied it, so it is not retried (`retry.rs`).
//! - Each request waits at most `FORWARD_TIMEOUT_MS` for its answer, as a unary call did.
//! - A leader that does not serve `ForwardStream` (an older build, during a rolling upgrade)
//!   answers `Unimplemented`: its requests go as unary `Forward` calls from then on.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aspen_core::{NodeId, codec};
use aspen_node::{ForwardRequest, NodeError};
use aspen_proto::peer::RaftMessage;
use aspen_proto::peer::raft_peer_client::RaftPeerClient;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

use crate::wire::{
    FORWARD_STREAM_QUEUE_CALLS_MAX, FORWARD_TIMEOUT_MS, ForwardReply, ForwardStreamReply,
};

/// Which leader a pipe goes to: its id and the peer URL it was reached at.
pub(crate) type PipeKey = (NodeId, String);

/// A stream call as it is encoded: the same bytes as `wire::ForwardStreamCall`, borrowing the
/// request so that it can still go as a unary call if the leader has no stream.
#[derive(Serialize)]
struct CallRef<'r> {
    id: u64,
    request: &'r ForwardRequest,
}

/// How a stream call ended.
pub(crate) enum Outcome {
    /// The leader's answer.
    Reply(ForwardReply),
    /// No answer; the error says whether the request may be retried.
    Failed(NodeError),
    /// The leader does not serve `ForwardStream`: send the request as a unary `Forward`.
    Unsupported,
}

/// The pipes of one member, by leader.
#[derive(Default)]
pub(crate) struct ForwardPipes {
    pipes: Mutex<HashMap<PipeKey, Pipe>>,
    /// Leaders that answered `Unimplemented`.
    unary_only: Mutex<HashSet<PipeKey>>,
}

/// The sending end of one stream, kept in the map: dropping it (with the map entry) ends the
/// stream's requests, and the leader then ends its replies.
#[derive(Clone)]
struct Pipe {
    requests: mpsc::Sender<RaftMessage>,
    shared: Arc<Shared>,
}

/// What the pipe's reader task and its callers share.
#[derive(Default)]
struct Shared {
    next_id: AtomicU64,
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    calls: HashMap<u64, oneshot::Sender<Outcome>>,
    /// Set once the stream ended: no call may start waiting any more.
    closed: bool,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each change under these locks is one call: a panic leaves them whole.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// Hands `outcome` to the call with `id`, if it still waits (it may have timed out).
    fn deliver(&self, id: u64, outcome: Outcome) {
        let sender = locked(&self.waiting).calls.remove(&id);
        if let Some(sender) = sender {
            // The caller may have gone (its client hung up): nothing to tell.
            let _ = sender.send(outcome);
        }
    }

    /// Ends the pipe: every waiting call gets the outcome `end` makes for it.
    fn close(&self, end: impl Fn() -> Outcome) {
        let calls = {
            let mut waiting = locked(&self.waiting);
            waiting.closed = true;
            std::mem::take(&mut waiting.calls)
        };
        for (_, sender) in calls {
            let _ = sender.send(end());
        }
    }

    fn forget(&self, id: u64) {
        locked(&self.waiting).calls.remove(&id);
    }
}

impl ForwardPipes {
    /// Whether requests for `key` go as unary calls (its leader has no stream).
    pub(crate) fn unary_only(&self, key: &PipeKey) -> bool {
        locked(&self.unary_only).contains(key)
    }

    /// Sends `request` on the pipe to `key`'s leader (opened with `client` and `stamp` if
    /// there is none) and waits for its outcome.
    pub(crate) async fn call(
        self: &Arc<Self>,
        key: PipeKey,
        client: RaftPeerClient<Channel>,
        stamp: impl FnOnce(&mut tonic::metadata::MetadataMap),
        request: &ForwardRequest,
    ) -> Outcome {
        let pipe = self.pipe(&key, client, stamp);
        let id = pipe.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        {
            let mut waiting = locked(&pipe.shared.waiting);
            if waiting.closed {
                // Its stream ended since the pipe was taken from the map; nothing was sent.
                return Outcome::Failed(NodeError::NoLeader);
            }
            let replaced = waiting.calls.insert(id, sender);
            assert!(replaced.is_none(), "forward stream ids repeat");
        }
        let message = RaftMessage {
            data: codec::encode(&CallRef { id, request }),
        };
        if pipe.requests.send(message).await.is_err() {
            // The stream's request side is gone: this request never left.
            pipe.shared.forget(id);
            self.drop_shared(&key, &pipe.shared);
            return Outcome::Failed(NodeError::NoLeader);
        }
        let timeout = Duration::from_millis(FORWARD_TIMEOUT_MS);
        match tokio::time::timeout(timeout, receiver).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Outcome::Failed(outcome_unknown("the forward stream was dropped")),
            Err(_) => {
                pipe.shared.forget(id);
                Outcome::Failed(NodeError::Timeout)
            }
        }
    }

    /// The live pipe to `key`'s leader, or a new one whose reader task is started.
    fn pipe(
        self: &Arc<Self>,
        key: &PipeKey,
        mut client: RaftPeerClient<Channel>,
        stamp: impl FnOnce(&mut tonic::metadata::MetadataMap),
    ) -> Pipe {
        let mut pipes = locked(&self.pipes);
        if let Some(pipe) = pipes.get(key)
            && !locked(&pipe.shared.waiting).closed
        {
            return pipe.clone();
        }
        let (requests, receiver) = mpsc::channel(FORWARD_STREAM_QUEUE_CALLS_MAX);
        let pipe = Pipe {
            requests,
            shared: Arc::default(),
        };
        pipes.insert(key.clone(), pipe.clone());
        drop(pipes);
        let outgoing = futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|message| (message, receiver))
        });
        let mut call = tonic::Request::new(outgoing);
        stamp(call.metadata_mut());
        let pipes = Arc::clone(self);
        let shared = Arc::clone(&pipe.shared);
        let key = key.clone();
        tokio::spawn(async move {
            let end = read_replies(&mut client, call, &shared).await;
            if matches!(end, End::Unsupported) {
                locked(&pipes.unary_only).insert(key.clone());
            }
            pipes.drop_shared(&key, &shared);
            shared.close(|| end.outcome());
        });
        pipe
    }

    /// Removes the pipe with `shared` from the map if it is still the one there.
    fn drop_shared(&self, key: &PipeKey, shared: &Arc<Shared>) {
        let mut pipes = locked(&self.pipes);
        if pipes
            .get(key)
            .is_some_and(|current| Arc::ptr_eq(&current.shared, shared))
        {
            pipes.remove(key);
        }
    }
}

/// Why a stream ended.
enum End {
    /// The leader has no `ForwardStream`.
    Unsupported,
    /// The connection could not be made: nothing was sent.
    NeverSent,
    /// The stream broke or ended: what was sent may have been applied.
    Lost(String),
}

impl End {
    fn outcome(&self) -> Outcome {
        match self {
            End::Unsupported => Outcome::Unsupported,
            End::NeverSent => Outcome::Failed(NodeError::NoLeader),
            End::Lost(reason) => Outcome::Failed(outcome_unknown(reason)),
        }
    }
}

fn outcome_unknown(reason: &str) -> NodeError {
    NodeError::Peer(format!(
        "connection to the leader lost, outcome unknown: {reason}"
    ))
}

fn end_of(status: &tonic::Status) -> End {
    match status.code() {
        tonic::Code::Unimplemented => End::Unsupported,
        tonic::Code::Unavailable if crate::network::never_sent(status) => End::NeverSent,
        _ => End::Lost(status.message().to_string()),
    }
}

/// Opens the stream and hands each reply to its caller until the stream ends.
async fn read_replies<S>(
    client: &mut RaftPeerClient<Channel>,
    call: tonic::Request<S>,
    shared: &Shared,
) -> End
where
    S: futures_util::Stream<Item = RaftMessage> + Send + 'static,
{
    let mut replies = match client.forward_stream(call).await {
        Ok(response) => response.into_inner(),
        Err(status) => return end_of(&status),
    };
    loop {
        match replies.message().await {
            Ok(Some(message)) => match codec::decode::<ForwardStreamReply>(&message.data) {
                Ok(reply) => shared.deliver(reply.id, Outcome::Reply(reply.reply)),
                Err(error) => return End::Lost(format!("bad forward stream reply: {error}")),
            },
            Ok(None) => return End::Lost("the leader ended the forward stream".into()),
            Err(status) => return end_of(&status),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::AtomicUsize;

    use aspen_core::NodeInfo;
    use aspen_node::forward::{ForwardResponse, Forwarder};
    use aspen_node::{NodeError, Retry};
    use aspen_proto::peer::SnapshotChunk;
    use aspen_proto::peer::raft_peer_server::{RaftPeer, RaftPeerServer};
    use futures_util::StreamExt;
    use tonic::{Request, Response, Status, Streaming};

    use super::*;
    use crate::wire::ForwardStreamCall;

    /// How the fake leader answers.
    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        /// Takes stream calls two at a time and answers each pair in reverse order.
        PairsReversed,
        /// Has no `ForwardStream` (an older build); answers unary `Forward` calls.
        UnaryOnly,
        /// Takes one stream call, then breaks the stream without answering it.
        BreaksAfterOne,
    }

    #[derive(Clone)]
    struct FakeLeader {
        mode: Mode,
        streams_opened: Arc<AtomicUsize>,
        unary_calls: Arc<AtomicUsize>,
    }

    /// A lease TTL call carries `n`; the fake answers it with TTL `n`, so each caller can
    /// check that it got its own answer.
    fn answer(request: &ForwardRequest) -> ForwardReply {
        match request {
            ForwardRequest::LeaseTimeToLive { id } => {
                let ttl = i64::try_from(*id).expect("small id");
                Ok(ForwardResponse::LeaseTtl {
                    ttl_seconds: ttl,
                    granted_ttl_seconds: ttl,
                })
            }
            other => Err(NodeError::Peer(format!("unexpected {other:?}"))),
        }
    }

    type Replies =
        Pin<Box<dyn futures_util::Stream<Item = Result<RaftMessage, Status>> + Send + 'static>>;

    fn unused<T>() -> Result<T, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    #[tonic::async_trait]
    impl RaftPeer for FakeLeader {
        type AppendStreamStream = Replies;
        type ForwardStreamStream = Replies;

        async fn vote(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
            unused()
        }
        async fn append_entries(
            &self,
            _: Request<RaftMessage>,
        ) -> Result<Response<RaftMessage>, Status> {
            unused()
        }
        async fn append_stream(
            &self,
            _: Request<Streaming<RaftMessage>>,
        ) -> Result<Response<Replies>, Status> {
            unused()
        }
        async fn install_snapshot(
            &self,
            _: Request<Streaming<SnapshotChunk>>,
        ) -> Result<Response<RaftMessage>, Status> {
            unused()
        }
        async fn transfer_leader(
            &self,
            _: Request<RaftMessage>,
        ) -> Result<Response<RaftMessage>, Status> {
            unused()
        }
        async fn forward(
            &self,
            request: Request<RaftMessage>,
        ) -> Result<Response<RaftMessage>, Status> {
            self.unary_calls.fetch_add(1, Ordering::SeqCst);
            let call: ForwardRequest =
                codec::decode(&request.get_ref().data).expect("a forward call");
            Ok(Response::new(RaftMessage {
                data: codec::encode(&answer(&call)),
            }))
        }
        async fn forward_stream(
            &self,
            request: Request<Streaming<RaftMessage>>,
        ) -> Result<Response<Replies>, Status> {
            if self.mode == Mode::UnaryOnly {
                return Err(Status::unimplemented("no ForwardStream here"));
            }
            self.streams_opened.fetch_add(1, Ordering::SeqCst);
            let calls = request.into_inner().map(|message| {
                let message = message.expect("a stream message");
                codec::decode::<ForwardStreamCall>(&message.data).expect("a stream call")
            });
            let replies: Replies = match self.mode {
                Mode::PairsReversed => Box::pin(calls.chunks(2).flat_map(|mut pair| {
                    pair.reverse();
                    futures_util::stream::iter(pair.into_iter().map(|call| {
                        let reply = ForwardStreamReply {
                            id: call.id,
                            reply: answer(&call.request),
                        };
                        Ok(RaftMessage {
                            data: codec::encode(&reply),
                        })
                    }))
                })),
                Mode::BreaksAfterOne => Box::pin(
                    calls
                        .take(1)
                        .map(|_| Err(Status::internal("the leader went away"))),
                ),
                Mode::UnaryOnly => unreachable!("answered above"),
            };
            Ok(Response::new(replies))
        }
    }

    /// Starts the fake on a free port; returns it (for its counters) and the member to call.
    async fn start(mode: Mode) -> (FakeLeader, NodeInfo) {
        let fake = FakeLeader {
            mode,
            streams_opened: Arc::default(),
            unary_calls: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let incoming = futures_util::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| stream);
            Some((accepted, listener))
        });
        let server = tonic::transport::Server::builder()
            .add_service(RaftPeerServer::new(fake.clone()))
            .serve_with_incoming(incoming);
        tokio::spawn(server);
        let member = NodeInfo {
            peer_urls: vec![format!("http://127.0.0.1:{port}")],
            ..Default::default()
        };
        (fake, member)
    }

    fn clients() -> crate::PeerClients {
        crate::PeerClients::new(
            aspen_core::limits::REQUEST_BYTES_MAX_DEFAULT,
            Arc::new(crate::PeerIdentity::new(1)),
            None,
        )
    }

    fn ttl_call(n: u64) -> ForwardRequest {
        ForwardRequest::LeaseTimeToLive { id: n }
    }

    fn ttl_of(result: Result<ForwardResponse, NodeError>) -> i64 {
        match result.expect("an answer") {
            ForwardResponse::LeaseTtl { ttl_seconds, .. } => ttl_seconds,
            other => panic!("unexpected answer {other:?}"),
        }
    }

    #[tokio::test]
    async fn concurrent_calls_share_one_stream_and_each_gets_its_own_answer() {
        let (fake, member) = start(Mode::PairsReversed).await;
        let clients = clients();
        for round in 0..3_u64 {
            let first = clients.forward(2, member.clone(), ttl_call(10 + round));
            let second = clients.forward(2, member.clone(), ttl_call(20 + round));
            let (first, second) = tokio::join!(first, second);
            // The fake answered the pair in reverse order; the ids put them right.
            let expected_first = i64::try_from(10 + round).expect("small");
            let expected_second = i64::try_from(20 + round).expect("small");
            assert_eq!(ttl_of(first), expected_first);
            assert_eq!(ttl_of(second), expected_second);
        }
        assert_eq!(fake.streams_opened.load(Ordering::SeqCst), 1, "one stream");
        assert_eq!(fake.unary_calls.load(Ordering::SeqCst), 0, "no unary call");
    }

    #[tokio::test]
    async fn a_leader_without_the_stream_gets_unary_calls() {
        let (fake, member) = start(Mode::UnaryOnly).await;
        let clients = clients();
        assert_eq!(
            ttl_of(clients.forward(2, member.clone(), ttl_call(7)).await),
            7
        );
        assert_eq!(
            ttl_of(clients.forward(2, member.clone(), ttl_call(8)).await),
            8
        );
        assert_eq!(fake.unary_calls.load(Ordering::SeqCst), 2);
        // The first call learned that the stream is missing; the second did not try it.
        assert_eq!(fake.streams_opened.load(Ordering::SeqCst), 0);
    }

    /// A call on a stream that broke after the call was sent may have been applied: its error
    /// must not be retried. The next call opens a new stream.
    #[tokio::test]
    async fn a_call_lost_with_its_stream_is_not_retried_and_the_next_opens_another() {
        let (fake, member) = start(Mode::BreaksAfterOne).await;
        let clients = clients();
        for opened in 1..=2 {
            let error = clients
                .forward(2, member.clone(), ttl_call(1))
                .await
                .expect_err("the stream broke");
            assert_eq!(error.retry(), Retry::Unsafe, "{error}");
            assert_eq!(fake.streams_opened.load(Ordering::SeqCst), opened);
        }
    }
}
