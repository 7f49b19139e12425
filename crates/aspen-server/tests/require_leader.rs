//! `hasleader` (clientv3's WithRequireLeader) and health on a follower cut off from the rest
//! of a 3-member cluster of real processes (the other two SIGSTOPped): the watch that
//! requires a leader is cancelled with `etcdserver: no leader`, a plain watch stays, unary
//! calls with the metadata fail at once, /health and grpc.health.v1 turn unhealthy, and all
//! of it recovers when the others come back.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use std::time::Duration;

use aspen_proto::etcdserverpb::watch_client::WatchClient;
use aspen_proto::etcdserverpb::watch_request::RequestUnion;
use aspen_proto::etcdserverpb::{RangeRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use common::{Backend, Cluster, WAIT_MS_MAX, poll};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const NO_LEADER: &str = "etcdserver: no leader";

struct OpenWatch {
    // Held so the request side stays open.
    _requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
}

async fn open_watch(cluster: &Cluster, index: usize, require_leader: bool) -> OpenWatch {
    let (requests, receiver) = mpsc::channel(4);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"watched".to_vec(),
            ..Default::default()
        })),
    };
    requests.send(create).await.unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(receiver));
    if require_leader {
        request
            .metadata_mut()
            .insert("hasleader", "true".parse().unwrap());
    }
    let mut client = WatchClient::new(cluster.channel(index));
    let mut responses = client.watch(request).await.expect("watch").into_inner();
    let created = responses
        .message()
        .await
        .expect("created")
        .expect("created");
    assert!(created.created);
    OpenWatch {
        _requests: requests,
        responses,
    }
}

async fn range_requiring_leader(cluster: &Cluster, index: usize) -> Result<(), Status> {
    let mut request = tonic::Request::new(RangeRequest {
        key: b"watched".to_vec(),
        serializable: true,
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("hasleader", "true".parse().unwrap());
    cluster.kv(index).range(request).await.map(|_| ())
}

async fn grpc_health(cluster: &Cluster, index: usize) -> Option<ServingStatus> {
    let request = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    let reply = HealthClient::new(cluster.channel(index))
        .check(request)
        .await
        .ok()?;
    ServingStatus::try_from(reply.into_inner().status).ok()
}

/// A watch through the JSON gateway with `Grpc-Metadata-hasleader: true`, open once its
/// `created` line has come.
async fn open_gateway_watch(port: u16) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let body = r#"{"create_request":{"key":"d2F0Y2hlZA=="}}"#;
    let request = format!(
        "POST /v3/watch HTTP/1.1\r\nHost: 127.0.0.1\r\nGrpc-Metadata-hasleader: true\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    read_until(&mut stream, r#""created":true"#).await;
    stream
}

/// Reads `stream` until `text` has come; returns everything read.
async fn read_until(stream: &mut tokio::net::TcpStream, text: &str) -> String {
    let mut seen = Vec::new();
    let reading = async {
        let mut buffer = [0u8; 4096];
        loop {
            let read = stream.read(&mut buffer).await.expect("read");
            assert!(
                read > 0,
                "closed before {text:?}: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buffer[..read]);
            if String::from_utf8_lossy(&seen).contains(text) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(WAIT_MS_MAX), reading)
        .await
        .unwrap_or_else(|_| panic!("no {text:?} within {WAIT_MS_MAX} ms"));
    String::from_utf8_lossy(&seen).into_owned()
}

/// One HTTP/1.1 request to a client port: (status, body).
async fn http(port: u16, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_follower_ends_watches_that_require_a_leader() {
    let mut cluster = Cluster::new(3, Backend::Memory, None);
    cluster.start_all();
    let all = [0, 1, 2];
    let leader = cluster.wait_leader(&all).await;
    let follower = all.into_iter().find(|&i| i != leader).unwrap();
    let others: Vec<usize> = all.into_iter().filter(|&i| i != follower).collect();
    let port = cluster.members[follower].client_port;
    cluster.put(leader, "warmup", "v1").await;

    // With a leader: everything answers.
    let mut required = open_watch(&cluster, follower, true).await;
    let mut plain = open_watch(&cluster, follower, false).await;
    let mut gateway_watch = open_gateway_watch(port).await;
    range_requiring_leader(&cluster, follower)
        .await
        .expect("a range requiring a leader, with one");
    let (status, body) = http(port, "GET", "/health", "", "").await;
    assert_eq!((status, body.as_str()), (200, r#"{"health":"true"}"#));
    let healthy = poll("grpc health SERVING", || async {
        (grpc_health(&cluster, follower).await? == ServingStatus::Serving).then_some(())
    });
    healthy.await;

    // Cut the follower off.
    for &index in &others {
        cluster.stop(index);
    }
    let ended = tokio::time::timeout(
        Duration::from_millis(WAIT_MS_MAX),
        required.responses.message(),
    )
    .await
    .expect("the watch requiring a leader ends");
    let status = ended.expect_err("it ends with an error");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), NO_LEADER);

    // Through the JSON gateway, the stream ends with grpc-gateway's error line.
    read_until(
        &mut gateway_watch,
        r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#,
    )
    .await;

    let error = range_requiring_leader(&cluster, follower)
        .await
        .expect_err("no leader");
    assert_eq!(
        (error.code(), error.message()),
        (Code::Unavailable, NO_LEADER)
    );
    let (status, body) = http(
        port,
        "POST",
        "/v3/kv/range",
        "Grpc-Metadata-hasleader: true\r\n",
        r#"{"key":"d2F0Y2hlZA=="}"#,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body,
        r#"{"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14}"#
    );
    let (status, body) = http(port, "GET", "/health", "", "").await;
    assert_eq!((status, body.as_str()), (503, r#"{"health":"false"}"#));
    poll("grpc health NOT_SERVING", || async {
        (grpc_health(&cluster, follower).await? == ServingStatus::NotServing).then_some(())
    })
    .await;
    // The watch without the metadata is still open: its next message has not come, nor its end.
    let still_open =
        tokio::time::timeout(Duration::from_millis(300), plain.responses.message()).await;
    assert!(still_open.is_err(), "the plain watch ended: {still_open:?}");

    // Back together: healthy again, and the plain watch sees new writes.
    for &index in &others {
        cluster.cont(index);
    }
    cluster.wait_leader(&all).await;
    let revision = cluster.put(follower, "watched", "v2").await;
    let event = tokio::time::timeout(
        Duration::from_millis(WAIT_MS_MAX),
        plain.responses.message(),
    )
    .await
    .expect("an event")
    .expect("an event")
    .expect("an event");
    assert_eq!(event.events[0].kv.as_ref().unwrap().mod_revision, revision);
    poll("/health true again", || async {
        let (status, _) = http(port, "GET", "/health", "", "").await;
        (status == 200).then_some(())
    })
    .await;
    poll("grpc health SERVING again", || async {
        (grpc_health(&cluster, follower).await? == ServingStatus::Serving).then_some(())
    })
    .await;
    range_requiring_leader(&cluster, follower)
        .await
        .expect("a range requiring a leader, with one again");
}
