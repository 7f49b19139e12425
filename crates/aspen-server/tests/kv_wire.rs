//! The KV methods' gRPC framing (`aspen-server/src/kv_unary.rs`) over a real HTTP/2
//! connection: a message split over frames is read whole, and every malformed call gets the
//! status tonic's own server gives it (code and text), so clients see no difference.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use aspen_proto::etcdserverpb::{PutRequest, PutResponse, RangeRequest, RangeResponse};
use bytes::Bytes;
use common::{Backend, Cluster, grpc_frame};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use prost::Message;

/// What came back: HTTP status, `grpc-status` (from trailers, or from the headers of a
/// trailers-only answer), `grpc-message`, and the body's bytes.
#[derive(Debug)]
struct Answer {
    content_type: String,
    /// Whether the headers carry a `content-length` (tonic's answers never do).
    content_length: bool,
    grpc_status: String,
    grpc_message: String,
    data: Bytes,
}

async fn call(
    sender: &mut SendRequest<Full<Bytes>>,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    let mut request = http::Request::post(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body))).expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), 200, "gRPC answers with HTTP 200");
    let head = response.headers().clone();
    let collected = response.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let field = |name: &str| {
        trailers
            .get(name)
            .or_else(|| head.get(name))
            .map(|v| v.to_str().expect("ascii").to_string())
            .unwrap_or_default()
    };
    Answer {
        content_type: head
            .get("content-type")
            .map(|v| v.to_str().expect("ascii").to_string())
            .unwrap_or_default(),
        content_length: head.contains_key("content-length"),
        grpc_status: field("grpc-status"),
        grpc_message: field("grpc-message"),
        data: collected.to_bytes(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_calls_are_framed_as_tonic_frames_them() {
    let mut cluster = Cluster::new(1, Backend::Redb, None);
    cluster.start_all();
    cluster.wait_leader(&[0]).await;
    let port = cluster.members[0].client_port;
    let mut sender = common::http2_sender(port).await;

    // A put, then a range that reads it back.
    let put = PutRequest {
        key: b"wire".to_vec(),
        value: b"framed".to_vec(),
        ..Default::default()
    };
    let answer = call(
        &mut sender,
        port,
        "/etcdserverpb.KV/Put",
        &[],
        grpc_frame(0, &put.encode_to_vec()),
    )
    .await;
    assert_eq!(answer.grpc_status, "0", "{answer:?}");
    assert_eq!(answer.content_type, "application/grpc");
    assert!(!answer.content_length, "{answer:?}");
    let put_response = PutResponse::decode(&answer.data[5..]).expect("a PutResponse");
    let revision = put_response.header.expect("header").revision;
    assert!(revision >= 2);
    let range = RangeRequest {
        key: b"wire".to_vec(),
        ..Default::default()
    };
    let answer = call(
        &mut sender,
        port,
        "/etcdserverpb.KV/Range",
        &[("grpc-encoding", "identity")],
        grpc_frame(0, &range.encode_to_vec()),
    )
    .await;
    assert_eq!(answer.grpc_status, "0", "{answer:?}");
    let got = RangeResponse::decode(&answer.data[5..]).expect("a RangeResponse");
    assert_eq!(got.kvs.len(), 1);
    assert_eq!(got.kvs[0].value, b"framed");
    assert_eq!(got.kvs[0].mod_revision, revision);

    // The client port's limit is the request limit (1.5 MiB by default) plus 512 KiB.
    let limit_bytes = 1_572_864 + 512 * 1024;
    let oversized = u32::try_from(limit_bytes + 1).expect("fits");
    let mut prefix_only = vec![0u8];
    prefix_only.extend_from_slice(&oversized.to_be_bytes());
    let answer = call(&mut sender, port, "/etcdserverpb.KV/Put", &[], prefix_only).await;
    assert_eq!(answer.grpc_status, "11", "OUT_OF_RANGE: {answer:?}");
    assert_eq!(
        answer.grpc_message,
        format!(
            "Error,%20decoded%20message%20length%20too%20large:%20found%20{}%20bytes,%20the%20limit%20is:%20{limit_bytes}%20bytes",
            limit_bytes + 1
        )
    );

    let answer = call(&mut sender, port, "/etcdserverpb.KV/Put", &[], Vec::new()).await;
    assert_eq!(answer.grpc_status, "13", "INTERNAL: {answer:?}");
    assert_eq!(answer.grpc_message, "Missing%20request%20message.");

    let mut truncated = grpc_frame(0, &put.encode_to_vec());
    truncated.truncate(truncated.len() - 2);
    let answer = call(&mut sender, port, "/etcdserverpb.KV/Put", &[], truncated).await;
    assert_eq!(answer.grpc_status, "13", "{answer:?}");
    assert_eq!(answer.grpc_message, "Unexpected%20EOF%20decoding%20stream.");

    // Field 1 (key) as a varint, which a bytes field cannot be.
    let answer = call(
        &mut sender,
        port,
        "/etcdserverpb.KV/Put",
        &[],
        grpc_frame(0, &[0x08, 0x01]),
    )
    .await;
    assert_eq!(answer.grpc_status, "13", "{answer:?}");
    assert!(
        answer
            .grpc_message
            .starts_with("failed%20to%20decode%20Protobuf%20message"),
        "{answer:?}"
    );

    let answer = call(
        &mut sender,
        port,
        "/etcdserverpb.KV/Put",
        &[],
        grpc_frame(1, &put.encode_to_vec()),
    )
    .await;
    assert_eq!(answer.grpc_status, "13", "{answer:?}");
    assert!(
        answer.grpc_message.contains("compressed-flag"),
        "{answer:?}"
    );

    // What tonic's own KV server still answers: a compressed call and an unknown method.
    let answer = call(
        &mut sender,
        port,
        "/etcdserverpb.KV/Put",
        &[("grpc-encoding", "gzip")],
        grpc_frame(1, b"not really gzip"),
    )
    .await;
    assert_eq!(answer.grpc_status, "12", "UNIMPLEMENTED: {answer:?}");
    let answer = call(
        &mut sender,
        port,
        "/etcdserverpb.KV/Nope",
        &[],
        grpc_frame(0, &[]),
    )
    .await;
    assert_eq!(answer.grpc_status, "12", "UNIMPLEMENTED: {answer:?}");

    // An etcd error keeps its code and text.
    let empty_key = PutRequest::default();
    let answer = call(
        &mut sender,
        port,
        "/etcdserverpb.KV/Put",
        &[],
        grpc_frame(0, &empty_key.encode_to_vec()),
    )
    .await;
    assert_eq!(answer.grpc_status, "3", "INVALID_ARGUMENT: {answer:?}");
    assert_eq!(
        answer.grpc_message,
        "etcdserver:%20key%20is%20not%20provided"
    );
}
