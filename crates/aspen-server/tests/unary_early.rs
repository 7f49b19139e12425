//! A KV write is answered once its request message is in, without waiting for the client to
//! end its request stream (`aspen-server/src/unary_body.rs`): tonic's unary server waited for
//! END_STREAM, which a tonic client sends in a packet of its own after the message.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use std::convert::Infallible;
use std::time::Duration;

use aspen_proto::etcdserverpb::{PutRequest, PutResponse};
use bytes::Bytes;
use common::{Backend, Cluster};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use prost::Message;

/// How long the response may take; the request stream stays open all that time.
const ANSWER_TIMEOUT_MS: u64 = 10_000;

fn grpc_message(message: &impl Message) -> Bytes {
    Bytes::from(common::grpc_frame(0, &message.encode_to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_is_answered_before_the_client_ends_its_request_stream() {
    let mut cluster = Cluster::new(1, Backend::Redb, None);
    cluster.start_all();
    cluster.wait_leader(&[0]).await;
    let port = cluster.members[0].client_port;
    let mut sender = common::http2_sender(port).await;

    // The body sends the put's message and then nothing: END_STREAM only when `frames` is
    // dropped, after the answer.
    let (frames, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
    let put = PutRequest {
        key: b"early".to_vec(),
        value: b"answer".to_vec(),
        ..Default::default()
    };
    frames
        .send(Ok(Frame::data(grpc_message(&put))))
        .await
        .expect("queue the message");
    let request = http::Request::post(format!("http://127.0.0.1:{port}/etcdserverpb.KV/Put"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .expect("request");
    let answered = tokio::time::timeout(Duration::from_millis(ANSWER_TIMEOUT_MS), async {
        let response = sender.send_request(request).await.expect("response");
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.expect("body")
    })
    .await
    .expect("the put was not answered while its request stream was open");
    let trailers = answered.trailers().cloned().expect("trailers");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..]),
        "{trailers:?}"
    );
    let data = answered.to_bytes();
    assert!(data.len() >= 5, "a framed message");
    let response = PutResponse::decode(&data[5..]).expect("a PutResponse");
    assert!(response.header.expect("header").revision >= 2);
    drop(frames);
}
