//! Malformed protobuf and an unknown method, through a raw gRPC client.

use aspen_proto::etcdserverpb::PutRequest;
use bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Status};

use crate::fixture::*;

/// Sends bytes as they are and returns the reply's bytes as they are.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

async fn raw_call(
    cluster: &Cluster,
    index: usize,
    path: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(cluster.channel(index));
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    let reply = grpc
        .unary(
            tonic::Request::new(body),
            PathAndQuery::from_static(path),
            RawCodec,
        )
        .await?;
    Ok(reply.into_inner())
}

async fn bad_input_checks(cluster: &Cluster, index: usize) {
    let malformed: [(&str, Vec<u8>); 5] = [
        ("a length past the end", vec![0x0a, 0x05, b'a']),
        ("wire type 7", vec![0x0f]),
        (
            "a varint of 11 bytes",
            vec![
                0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ),
        ("a truncated varint", vec![0x12, 0x80]),
        ("field number 0", vec![0x02, 0x01, b'x']),
    ];
    for (what, body) in malformed {
        let result = raw_call(cluster, index, "/etcdserverpb.KV/Put", body).await;
        let status = result.expect_err(what);
        // As grpc-go answers a request it cannot unmarshal.
        assert_eq!(status.code(), Code::Internal, "{what}: {status}");
        // The next request on a fresh connection is served.
        cluster
            .kv(index)
            .put(PutRequest {
                key: b("bad/after"),
                value: b(what),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|status| panic!("put after {what}: {status}"));
    }
    // An empty body is a valid, empty PutRequest: refused for its missing key.
    assert_status(
        raw_call(cluster, index, "/etcdserverpb.KV/Put", Vec::new()).await,
        Code::InvalidArgument,
        EMPTY_KEY,
        "an empty PutRequest",
    );
    // An unknown method.
    let status = raw_call(cluster, index, "/etcdserverpb.KV/NoSuchMethod", Vec::new())
        .await
        .expect_err("an unknown method");
    assert_eq!(status.code(), Code::Unimplemented, "{status}");
    // Still up and consistent.
    let reply = cluster
        .get(index, "bad/after", false)
        .await
        .expect("read after the bad input");
    assert_eq!(pairs(&reply.kvs)[0].1, "field number 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_one_member() {
    let f = Fixture::start(1).await;
    bad_input_checks(&f.cluster, f.writer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_through_a_follower_three_members() {
    let f = Fixture::start(3).await;
    bad_input_checks(&f.cluster, f.writer).await;
}
