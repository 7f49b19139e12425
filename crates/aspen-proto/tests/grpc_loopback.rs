//! End-to-end over TCP on 127.0.0.1: a tonic server built from the generated server stubs,
//! called through the generated clients. Covers unary, client-streaming and bidirectional
//! streaming RPCs, and several services behind one listener.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use std::pin::Pin;

use aspen_proto::etcdserverpb::kv_server::{Kv, KvServer};
use aspen_proto::etcdserverpb::watch_server::{Watch, WatchServer};
use aspen_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
    WatchCreateRequest, WatchRequest, WatchResponse, kv_client::KvClient,
    watch_client::WatchClient, watch_request,
};
use aspen_proto::mvccpb::KeyValue;
use aspen_proto::peer::raft_peer_client::RaftPeerClient;
use aspen_proto::peer::raft_peer_server::{RaftPeer, RaftPeerServer};
use aspen_proto::peer::{RaftMessage, SnapshotChunk};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

struct TestKv;

#[tonic::async_trait]
impl Kv for TestKv {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let req = req.into_inner();
        Ok(Response::new(RangeResponse {
            header: Some(ResponseHeader {
                revision: 42,
                ..Default::default()
            }),
            kvs: vec![KeyValue {
                key: req.key,
                value: b"hello".to_vec(),
                ..Default::default()
            }],
            more: false,
            count: 1,
        }))
    }
    async fn put(&self, _: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        Err(Status::unimplemented("put"))
    }
    async fn delete_range(
        &self,
        _: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        Err(Status::unimplemented("delete_range"))
    }
    async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        Err(Status::unimplemented("txn"))
    }
    async fn compact(
        &self,
        _: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        Err(Status::unimplemented("compact"))
    }
}

struct TestWatch;

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for TestWatch {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // Acknowledge each create request with `created`, echoing the client's watch_id.
        let out = req.into_inner().filter_map(|msg| match msg {
            Ok(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(c)),
            }) => Some(Ok(WatchResponse {
                watch_id: c.watch_id,
                created: true,
                ..Default::default()
            })),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        });
        Ok(Response::new(Box::pin(out)))
    }
}

struct TestPeer;

type EchoStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<RaftMessage, Status>> + Send>>;

#[tonic::async_trait]
impl RaftPeer for TestPeer {
    type AppendStreamStream = EchoStream;
    type ForwardStreamStream = EchoStream;

    async fn forward_stream(
        &self,
        req: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Self::ForwardStreamStream>, Status> {
        Ok(Response::new(Box::pin(req.into_inner())))
    }

    async fn append_stream(
        &self,
        req: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        Ok(Response::new(Box::pin(req.into_inner())))
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        Ok(Response::new(req.into_inner()))
    }
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        Ok(Response::new(req.into_inner()))
    }
    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        // Concatenate meta of the first chunk and all data, stop at `done`.
        let mut stream = req.into_inner();
        let mut data = Vec::new();
        let mut first = true;
        while let Some(chunk) = stream.message().await? {
            if first {
                data.extend_from_slice(&chunk.meta);
                first = false;
            }
            data.extend_from_slice(&chunk.data);
            if chunk.done {
                break;
            }
        }
        Ok(Response::new(RaftMessage { data }))
    }
    async fn transfer_leader(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        Ok(Response::new(req.into_inner()))
    }
    async fn forward(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let mut data = req.into_inner().data;
        data.reverse();
        Ok(Response::new(RaftMessage { data }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_call_over_tcp() {
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .add_service(KvServer::new(TestKv))
            .add_service(WatchServer::new(TestWatch))
            .add_service(RaftPeerServer::new(TestPeer))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            }),
    );

    let endpoint = format!("http://{addr}");

    // Unary etcd KV call.
    let mut kv = KvClient::connect(endpoint.clone()).await.unwrap();
    let resp = kv
        .range(RangeRequest {
            key: b"foo".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.header.unwrap().revision, 42);
    assert_eq!(resp.kvs[0].key, b"foo");
    assert_eq!(resp.kvs[0].value, b"hello");
    let err = kv.put(PutRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);

    // Bidirectional watch stream.
    let mut watch = WatchClient::connect(endpoint.clone()).await.unwrap();
    let reqs = tokio_stream::iter([7, 8].map(|id| WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: b"k".to_vec(),
                watch_id: id,
                ..Default::default()
            },
        )),
    }));
    let mut responses = watch.watch(reqs).await.unwrap().into_inner();
    for id in [7, 8] {
        let r = responses.message().await.unwrap().unwrap();
        assert!(r.created);
        assert_eq!(r.watch_id, id);
    }

    // Raft peer service: unary and client-streaming.
    let mut peer = RaftPeerClient::connect(endpoint).await.unwrap();
    let echoed = peer
        .vote(RaftMessage {
            data: vec![1, 2, 3],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(echoed.data, [1, 2, 3]);
    let fwd = peer
        .forward(RaftMessage {
            data: vec![1, 2, 3],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fwd.data, [3, 2, 1]);
    let chunks = tokio_stream::iter(vec![
        SnapshotChunk {
            meta: b"M".to_vec(),
            data: b"ab".to_vec(),
            done: false,
        },
        SnapshotChunk {
            meta: Vec::new(),
            data: b"cd".to_vec(),
            done: true,
        },
    ]);
    let installed = peer.install_snapshot(chunks).await.unwrap().into_inner();
    assert_eq!(installed.data, b"Mabcd");
    let calls = tokio_stream::iter(vec![
        RaftMessage { data: vec![4] },
        RaftMessage { data: vec![5] },
    ]);
    let mut replies = peer.forward_stream(calls).await.unwrap().into_inner();
    assert_eq!(replies.message().await.unwrap().unwrap().data, [4]);
    assert_eq!(replies.message().await.unwrap().unwrap().data, [5]);
    assert!(replies.message().await.unwrap().is_none());

    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}
