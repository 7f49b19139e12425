//! Watch and Lease over gRPC against in-process members started by `bootstrap_node`, as the
//! binary starts them: watches on keys and prefixes with prev_kv and filters, replay from a
//! start revision, compaction cancels, cancel, many watchers on one stream, a slow watcher,
//! progress notices, leases (grant, keep-alive, time-to-live, revoke, expiry) and a follower
//! serving watches and forwarding keep-alives.
//!
//! The harness here is deliberately small and self-contained (the process-level one lives in
//! `common/`).

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use std::collections::HashMap;
use std::time::Duration;

use aspen_proto::etcdserverpb::kv_client::KvClient;
use aspen_proto::etcdserverpb::lease_client::LeaseClient;
use aspen_proto::etcdserverpb::watch_client::WatchClient;
use aspen_proto::etcdserverpb::watch_create_request::FilterType;
use aspen_proto::etcdserverpb::watch_request::RequestUnion;
use aspen_proto::etcdserverpb::{
    CompactionRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
    request_op,
};
use aspen_proto::mvccpb::event::EventType;
use aspen_server::config::ClusterBootstrapConfig;
use aspen_server::{NodeHandle, bootstrap_node};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Longest wait for any single expected response.
const RESPONSE_WAIT_MS: u64 = 10_000;
/// Longest wait for a leader after start.
const LEADER_WAIT_MS: u64 = 15_000;

/// Ports come from the shared harness, which never hands out one port twice.
mod common;
use common::free_port;

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
}

struct Server {
    handles: Vec<NodeHandle>,
    members: Vec<Member>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(size: usize) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                metrics_port: free_port(),
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut handles = Vec::new();
        for member in &members {
            let client = format!("http://127.0.0.1:{}", member.client_port);
            let peer = format!("http://127.0.0.1:{}", member.peer_port);
            let args: Vec<String> = vec![
                "aspen".into(),
                format!("--name={}", member.name),
                format!("--data-dir={}", dir.path().join(&member.name).display()),
                format!("--listen-client-urls={client}"),
                format!("--advertise-client-urls={client}"),
                format!("--listen-peer-urls={peer}"),
                format!("--initial-advertise-peer-urls={peer}"),
                format!("--initial-cluster={initial_cluster}"),
                format!(
                    "--listen-metrics-urls=http://127.0.0.1:{}",
                    member.metrics_port
                ),
                "--storage-backend=memory".into(),
            ];
            let config = ClusterBootstrapConfig::from_sources(&args, &HashMap::new())
                .unwrap_or_else(|e| panic!("config: {e}"));
            handles.push(bootstrap_node(&config).await.expect("member starts"));
        }
        let server = Server {
            handles,
            members,
            _dir: dir,
        };
        server.wait_for_leader().await;
        server
    }

    async fn wait_for_leader(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(LEADER_WAIT_MS);
        loop {
            let leaders = self.handles.iter().filter(|h| h.node.is_leader()).count();
            let all_know = self.handles.iter().all(|h| h.node.leader_id().is_some());
            if leaders == 1 && all_know {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "no leader elected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn leader_index(&self) -> usize {
        self.handles
            .iter()
            .position(|h| h.node.is_leader())
            .expect("a leader")
    }

    async fn channel(&self, index: usize) -> Channel {
        let url = format!("http://127.0.0.1:{}", self.members[index].client_port);
        Channel::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("connect")
    }

    async fn shutdown(self) {
        for handle in self.handles {
            handle.shutdown().await;
        }
    }
}

/// One watch stream.
struct Watcher {
    requests: mpsc::Sender<WatchRequest>,
    responses: tonic::Streaming<WatchResponse>,
}

impl Watcher {
    async fn open(channel: Channel) -> Watcher {
        let (requests, receiver) = mpsc::channel(16);
        let responses = WatchClient::new(channel)
            .watch(ReceiverStream::new(receiver))
            .await
            .expect("watch stream")
            .into_inner();
        Watcher {
            requests,
            responses,
        }
    }

    async fn send(&self, request: RequestUnion) {
        let request = WatchRequest {
            request_union: Some(request),
        };
        self.requests.send(request).await.expect("stream open");
    }

    /// Creates a watcher and returns the `created` response.
    async fn create(&mut self, create: WatchCreateRequest) -> WatchResponse {
        self.send(RequestUnion::CreateRequest(create)).await;
        let response = self.next().await;
        assert!(response.created, "expected created, got {response:?}");
        response
    }

    async fn next(&mut self) -> WatchResponse {
        let wait = Duration::from_millis(RESPONSE_WAIT_MS);
        match tokio::time::timeout(wait, self.responses.message()).await {
            Ok(Ok(Some(response))) => response,
            other => panic!("no watch response: {other:?}"),
        }
    }

    /// Nothing arrives within `ms`.
    async fn quiet(&mut self, ms: u64) {
        let wait = tokio::time::timeout(Duration::from_millis(ms), self.responses.message());
        if let Ok(result) = wait.await {
            panic!("unexpected watch response {result:?}");
        }
    }

    /// Reads responses until `count` events arrived; returns them as (type, key, value,
    /// mod_revision, prev value).
    async fn events(&mut self, count: usize) -> Vec<Seen> {
        let mut seen = Vec::new();
        while seen.len() < count {
            let response = self.next().await;
            assert!(!response.canceled, "cancelled: {response:?}");
            seen.extend(response.events.into_iter().map(|e| {
                let kv = e.kv.expect("kv");
                Seen {
                    kind: EventType::try_from(e.r#type).expect("event type"),
                    key: String::from_utf8(kv.key).expect("utf8"),
                    value: String::from_utf8(kv.value).expect("utf8"),
                    mod_revision: kv.mod_revision,
                    prev_value: e.prev_kv.map(|p| String::from_utf8(p.value).expect("utf8")),
                }
            }));
        }
        assert_eq!(seen.len(), count, "more events than expected");
        seen
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    kind: EventType,
    key: String,
    value: String,
    mod_revision: i64,
    prev_value: Option<String>,
}

fn watch_key(key: &str) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn watch_prefix(prefix: &str) -> WatchCreateRequest {
    WatchCreateRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: aspen_core::keys::prefix_range_end(prefix.as_bytes()),
        ..Default::default()
    }
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: &str) -> i64 {
    put_with_lease(kv, key, value, 0).await.expect("put")
}

async fn put_with_lease(
    kv: &mut KvClient<Channel>,
    key: &str,
    value: &str,
    lease: i64,
) -> Result<i64, tonic::Status> {
    let request = PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        lease,
        ..Default::default()
    };
    let response = kv.put(request).await?.into_inner();
    Ok(response.header.expect("header").revision)
}

async fn delete(kv: &mut KvClient<Channel>, key: &str) -> i64 {
    let request = aspen_proto::etcdserverpb::DeleteRangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    };
    let response = kv.delete_range(request).await.expect("delete").into_inner();
    response.header.expect("header").revision
}

async fn count(kv: &mut KvClient<Channel>, prefix: &str) -> i64 {
    let request = RangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: aspen_core::keys::prefix_range_end(prefix.as_bytes()),
        count_only: true,
        ..Default::default()
    };
    kv.range(request).await.expect("range").into_inner().count
}

fn put_event(key: &str, value: &str, rev: i64, prev: Option<&str>) -> Seen {
    Seen {
        kind: EventType::Put,
        key: key.into(),
        value: value.into(),
        mod_revision: rev,
        prev_value: prev.map(Into::into),
    }
}

fn delete_event(key: &str, rev: i64, prev: Option<&str>) -> Seen {
    Seen {
        kind: EventType::Delete,
        key: key.into(),
        value: String::new(),
        mod_revision: rev,
        prev_value: prev.map(Into::into),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_keys_prefixes_filters_and_cancel() {
    let server = Server::start(1).await;
    let channel = server.channel(0).await;
    let mut kv = KvClient::new(channel.clone());
    let mut stream = Watcher::open(channel).await;
    let key = stream.create(watch_key("foo")).await.watch_id;
    let prefix = stream
        .create(WatchCreateRequest {
            prev_kv: true,
            ..watch_prefix("p/")
        })
        .await
        .watch_id;
    let no_put = stream
        .create(WatchCreateRequest {
            filters: vec![FilterType::Noput as i32],
            ..watch_prefix("p/")
        })
        .await
        .watch_id;
    assert_eq!(
        (key, prefix, no_put),
        (0, 1, 2),
        "etcd numbers watchers from 0"
    );

    let r1 = put(&mut kv, "foo", "1").await;
    put(&mut kv, "other", "x").await;
    let r2 = put(&mut kv, "p/a", "1").await;
    let r3 = put(&mut kv, "p/a", "2").await;
    let r4 = delete(&mut kv, "p/a").await;
    let mut by_watcher: HashMap<i64, Vec<Seen>> = HashMap::new();
    for _ in 0..5 {
        let response = stream.next().await;
        let seen = by_watcher.entry(response.watch_id).or_default();
        for e in response.events {
            let kv = e.kv.expect("kv");
            seen.push(Seen {
                kind: EventType::try_from(e.r#type).expect("type"),
                key: String::from_utf8(kv.key).expect("utf8"),
                value: String::from_utf8(kv.value).expect("utf8"),
                mod_revision: kv.mod_revision,
                prev_value: e.prev_kv.map(|p| String::from_utf8(p.value).expect("utf8")),
            });
        }
    }
    assert_eq!(by_watcher[&key], vec![put_event("foo", "1", r1, None)]);
    assert_eq!(
        by_watcher[&prefix],
        vec![
            put_event("p/a", "1", r2, None),
            put_event("p/a", "2", r3, Some("1")),
            delete_event("p/a", r4, Some("2")),
        ]
    );
    assert_eq!(by_watcher[&no_put], vec![delete_event("p/a", r4, None)]);

    stream
        .send(RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: key,
        }))
        .await;
    let cancelled = stream.next().await;
    assert!(cancelled.canceled && cancelled.watch_id == key);
    put(&mut kv, "foo", "2").await;
    stream.quiet(500).await;

    // A duplicate id and an empty range are refused as etcd refuses them.
    let duplicate = stream
        .create(WatchCreateRequest {
            watch_id: prefix,
            ..watch_key("x")
        })
        .await;
    assert!(duplicate.canceled);
    assert_eq!(
        duplicate.cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    let empty = stream
        .create(WatchCreateRequest {
            key: b"b".to_vec(),
            range_end: b"a".to_vec(),
            ..Default::default()
        })
        .await;
    assert!(empty.canceled && empty.cancel_reason == "mvcc: empty watcher range");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_from_start_revision_and_reports_compaction() {
    let server = Server::start(1).await;
    let channel = server.channel(0).await;
    let mut kv = KvClient::new(channel.clone());
    let r1 = put(&mut kv, "h", "1").await;
    let r2 = put(&mut kv, "h", "2").await;
    let r3 = delete(&mut kv, "h").await;
    let r4 = put(&mut kv, "h", "3").await;

    let mut stream = Watcher::open(channel.clone()).await;
    let created = stream
        .create(WatchCreateRequest {
            start_revision: r1,
            prev_kv: true,
            ..watch_key("h")
        })
        .await;
    assert_eq!(created.header.expect("header").revision, r4);
    let seen = stream.events(4).await;
    assert_eq!(
        seen,
        vec![
            put_event("h", "1", r1, None),
            put_event("h", "2", r2, Some("1")),
            delete_event("h", r3, Some("2")),
            put_event("h", "3", r4, None),
        ]
    );
    // Then live: the replayed watcher is synced and sees the next write.
    let r5 = put(&mut kv, "h", "4").await;
    assert_eq!(
        stream.events(1).await,
        vec![put_event("h", "4", r5, Some("3"))]
    );

    // A future start revision waits for it.
    let future = stream
        .create(WatchCreateRequest {
            start_revision: r5 + 2,
            ..watch_key("h")
        })
        .await
        .watch_id;
    put(&mut kv, "h", "5").await; // r5 + 1: for the first watcher only
    let response = stream.next().await;
    assert_ne!(response.watch_id, future);
    let r7 = put(&mut kv, "h", "6").await;
    let mut got_future = false;
    for _ in 0..2 {
        let response = stream.next().await;
        if response.watch_id == future {
            assert_eq!(response.events[0].kv.as_ref().expect("kv").mod_revision, r7);
            got_future = true;
        }
    }
    assert!(got_future);

    let mut kv_compact = KvClient::new(channel.clone());
    kv_compact
        .compact(CompactionRequest {
            revision: r4,
            physical: true,
        })
        .await
        .expect("compact");
    let mut late = Watcher::open(channel).await;
    let created = late
        .create(WatchCreateRequest {
            start_revision: r2,
            ..watch_key("h")
        })
        .await;
    let cancelled = late.next().await;
    assert_eq!(cancelled.watch_id, created.watch_id);
    assert!(cancelled.canceled);
    assert_eq!(cancelled.compact_revision, r4);
    // etcd 3.4 gives no reason and no header revision: the compaction is the reason.
    assert_eq!(cancelled.cancel_reason, "");
    assert_eq!(cancelled.header.as_ref().map(|h| h.revision), Some(0));
    // At the compaction revision itself the watch is allowed, as in etcd.
    let at_compaction = late
        .create(WatchCreateRequest {
            start_revision: r4,
            ..watch_key("h")
        })
        .await;
    let replayed = late.next().await;
    assert_eq!(replayed.watch_id, at_compaction.watch_id);
    assert!(!replayed.canceled);
    assert_eq!(replayed.events[0].kv.as_ref().expect("kv").mod_revision, r4);
    server.shutdown().await;
}

/// A watch from exactly the compaction revision gets that revision's delete: compaction keeps
/// a tombstone at the compaction revision, as etcd does since 3.4.34 / 3.5.15 (etcd issue
/// 18089; the simulator's seed 17150 lost such a delete across a snapshot install).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_the_compaction_revision_gets_the_delete_at_it() {
    let server = Server::start(1).await;
    let channel = server.channel(0).await;
    let mut kv = KvClient::new(channel.clone());
    put(&mut kv, "t", "1").await;
    let deleted = delete(&mut kv, "t").await;
    let after = put(&mut kv, "t", "2").await;
    kv.compact(CompactionRequest {
        revision: deleted,
        physical: true,
    })
    .await
    .expect("compact");
    let mut stream = Watcher::open(channel).await;
    stream
        .create(WatchCreateRequest {
            start_revision: deleted,
            ..watch_key("t")
        })
        .await;
    assert_eq!(
        stream.events(2).await,
        vec![
            delete_event("t", deleted, None),
            put_event("t", "2", after, None)
        ]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_share_one_stream() {
    const WATCHERS: usize = 50;
    let server = Server::start(1).await;
    let channel = server.channel(0).await;
    let mut kv = KvClient::new(channel.clone());
    let mut stream = Watcher::open(channel).await;
    let mut ids = Vec::new();
    for i in 0..WATCHERS {
        ids.push(stream.create(watch_key(&format!("m/{i}"))).await.watch_id);
    }
    // One Txn writes every key at one revision: each watcher gets exactly its own event.
    let success = (0..WATCHERS)
        .map(|i| RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: format!("m/{i}").into_bytes(),
                value: format!("v{i}").into_bytes(),
                ..Default::default()
            })),
        })
        .collect();
    let txn = TxnRequest {
        success,
        ..Default::default()
    };
    let revision = kv
        .txn(txn)
        .await
        .expect("txn")
        .into_inner()
        .header
        .expect("header")
        .revision;
    let mut seen: HashMap<i64, Vec<String>> = HashMap::new();
    for _ in 0..WATCHERS {
        let response = stream.next().await;
        for e in response.events {
            let kv = e.kv.expect("kv");
            assert_eq!(kv.mod_revision, revision);
            seen.entry(response.watch_id)
                .or_default()
                .push(String::from_utf8(kv.key).expect("utf8"));
        }
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(seen[id], vec![format!("m/{i}")]);
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_gets_every_event_in_order() {
    const PUTS: usize = 600;
    let server = Server::start(1).await;
    let channel = server.channel(0).await;
    let mut kv = KvClient::new(channel.clone());
    let mut stream = Watcher::open(channel).await;
    stream.create(watch_prefix("s/")).await;
    let value = "x".repeat(8 * 1024);
    let mut revisions = Vec::new();
    for i in 0..PUTS {
        revisions.push(put(&mut kv, &format!("s/{}", i % 7), &value).await);
    }
    // Far more than the queues hold was written while nobody read: the hub must have
    // turned to history for this watcher.
    let hub = server.handles[0].node.watch_hub();
    assert_eq!(hub.watcher_count(), 1);
    assert!(
        hub.unsynced_count() > 0,
        "the queue bound was never reached"
    );
    let seen = stream.events(PUTS).await;
    let got: Vec<i64> = seen.iter().map(|s| s.mod_revision).collect();
    assert_eq!(got, revisions, "events out of order, missing or repeated");
    assert!(
        seen.iter()
            .all(|s| s.kind == EventType::Put && s.value == value)
    );
    assert_eq!(hub.unsynced_count(), 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notices() {
    let server = Server::start(1).await;
    let node = server.handles[0].node.clone();
    let access = server.handles[0].access.clone();
    // A Watch service with a short progress interval on its own listener.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = aspen_api::WatchService::with_progress_notify_interval(
        node,
        access,
        Duration::from_millis(300),
    );
    let router = tonic::transport::Server::builder().add_service(
        aspen_proto::etcdserverpb::watch_server::WatchServer::new(service),
    );
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let serving = tokio::spawn(router.serve_with_incoming(incoming));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut kv = KvClient::new(server.channel(0).await);
    let revision = put(&mut kv, "q", "1").await;

    let mut stream = Watcher::open(channel).await;
    let id = stream
        .create(WatchCreateRequest {
            progress_notify: true,
            ..watch_key("q")
        })
        .await
        .watch_id;
    let notice = stream.next().await;
    assert_eq!(notice.watch_id, id);
    assert!(notice.events.is_empty() && !notice.canceled);
    assert_eq!(notice.header.expect("header").revision, revision);

    stream
        .send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    loop {
        let response = stream.next().await;
        if response.watch_id == -1 {
            assert_eq!(response.header.expect("header").revision, revision);
            break;
        }
    }
    serving.abort();
    server.shutdown().await;
}

async fn grant(lease: &mut LeaseClient<Channel>, ttl: i64) -> i64 {
    let request = LeaseGrantRequest { ttl, id: 0 };
    let response = lease
        .lease_grant(request)
        .await
        .expect("grant")
        .into_inner();
    assert!(response.id > 0);
    response.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_grant_keep_alive_time_to_live_and_revoke() {
    let server = Server::start(1).await;
    let channel = server.channel(0).await;
    let mut kv = KvClient::new(channel.clone());
    let mut lease = LeaseClient::new(channel.clone());

    let granted = lease
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .expect("grant")
        .into_inner();
    let id = granted.id;
    assert_eq!(granted.ttl, 30);
    // Below the minimum (ceil(1.5 s) with a 1 s election timeout): raised to it.
    let short = lease
        .lease_grant(LeaseGrantRequest { ttl: 1, id: 4242 })
        .await
        .expect("grant")
        .into_inner();
    assert_eq!((short.id, short.ttl), (4242, 2));
    let exists = lease
        .lease_grant(LeaseGrantRequest { ttl: 10, id: 4242 })
        .await
        .expect_err("duplicate id");
    assert_eq!(exists.message(), "etcdserver: lease already exists");
    let too_long = lease
        .lease_grant(LeaseGrantRequest {
            ttl: 9_000_000_001,
            id: 0,
        })
        .await
        .expect_err("too long");
    assert_eq!(too_long.code(), tonic::Code::OutOfRange);
    assert_eq!(too_long.message(), "etcdserver: too large lease TTL");

    put_with_lease(&mut kv, "l/a", "1", id).await.expect("put");
    put_with_lease(&mut kv, "l/b", "2", id).await.expect("put");
    let unknown = put_with_lease(&mut kv, "l/c", "3", 777)
        .await
        .expect_err("no lease");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert_eq!(unknown.message(), "etcdserver: requested lease not found");

    let (sender, receiver) = mpsc::channel(4);
    let mut answers = lease
        .lease_keep_alive(ReceiverStream::new(receiver))
        .await
        .expect("keep-alive")
        .into_inner();
    sender
        .send(LeaseKeepAliveRequest { id })
        .await
        .expect("send");
    let answer = answers.message().await.expect("answer").expect("open");
    assert_eq!((answer.id, answer.ttl), (id, 30));
    sender
        .send(LeaseKeepAliveRequest { id: 999 })
        .await
        .expect("send");
    let answer = answers.message().await.expect("answer").expect("open");
    assert_eq!((answer.id, answer.ttl), (999, 0), "unknown lease: TTL 0");

    let ttl = lease
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
        .await
        .expect("ttl")
        .into_inner();
    assert_eq!(ttl.granted_ttl, 30);
    assert!(ttl.ttl > 25 && ttl.ttl <= 30, "remaining {}", ttl.ttl);
    assert_eq!(ttl.keys, vec![b"l/a".to_vec(), b"l/b".to_vec()]);
    let unknown_ttl = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: 999,
            keys: false,
        })
        .await
        .expect("ttl")
        .into_inner();
    assert_eq!(unknown_ttl.ttl, -1);

    let mut leases: Vec<i64> = lease
        .lease_leases(LeaseLeasesRequest {})
        .await
        .expect("leases")
        .into_inner()
        .leases
        .into_iter()
        .map(|l| l.id)
        .collect();
    leases.sort_unstable();
    let mut expected = vec![id, 4242];
    expected.sort_unstable();
    assert_eq!(leases, expected);

    // Revoking deletes the lease's keys in one revision, seen by a watch as one response.
    let mut stream = Watcher::open(channel).await;
    stream.create(watch_prefix("l/")).await;
    let revoked = lease
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .expect("revoke")
        .into_inner()
        .header
        .expect("header")
        .revision;
    let response = stream.next().await;
    let deleted: Vec<(i32, i64)> = response
        .events
        .iter()
        .map(|e| (e.r#type, e.kv.as_ref().expect("kv").mod_revision))
        .collect();
    let delete = EventType::Delete as i32;
    assert_eq!(deleted, vec![(delete, revoked), (delete, revoked)]);
    assert_eq!(count(&mut kv, "l/").await, 0);
    let again = lease
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .expect_err("revoked twice");
    assert_eq!(again.message(), "etcdserver: requested lease not found");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_deletes_its_keys() {
    let server = Server::start(1).await;
    let channel = server.channel(0).await;
    let mut kv = KvClient::new(channel.clone());
    let mut lease = LeaseClient::new(channel.clone());
    let id = grant(&mut lease, 2).await;
    let kept = grant(&mut lease, 60).await;
    put_with_lease(&mut kv, "e/a", "1", id).await.expect("put");
    put_with_lease(&mut kv, "e/b", "2", id).await.expect("put");
    put_with_lease(&mut kv, "e/kept", "3", kept)
        .await
        .expect("put");
    let mut stream = Watcher::open(channel).await;
    stream
        .create(WatchCreateRequest {
            prev_kv: true,
            ..watch_prefix("e/")
        })
        .await;
    let started = tokio::time::Instant::now();
    let seen = stream.events(2).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1000),
        "expired early: {waited:?}"
    );
    assert!(
        waited <= Duration::from_millis(4000),
        "expired late: {waited:?}"
    );
    let revision = seen[0].mod_revision;
    assert_eq!(
        seen,
        vec![
            delete_event("e/a", revision, Some("1")),
            delete_event("e/b", revision, Some("2")),
        ]
    );
    assert_eq!(count(&mut kv, "e/").await, 1);
    let ttl = lease
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
        .await
        .expect("ttl")
        .into_inner();
    assert_eq!(ttl.ttl, -1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_serves_watches_and_forwards_keep_alives() {
    let server = Server::start(3).await;
    let leader = server.leader_index();
    let follower = (leader + 1) % 3;
    let follower_channel = server.channel(follower).await;
    let mut leader_kv = KvClient::new(server.channel(leader).await);
    let mut stream = Watcher::open(follower_channel.clone()).await;
    stream
        .create(WatchCreateRequest {
            prev_kv: true,
            ..watch_key("f")
        })
        .await;
    let r1 = put(&mut leader_kv, "f", "1").await;
    let r2 = put(&mut leader_kv, "f", "2").await;
    assert_eq!(
        stream.events(2).await,
        vec![
            put_event("f", "1", r1, None),
            put_event("f", "2", r2, Some("1"))
        ]
    );

    // Grant and keep alive through the follower: both reach the leader's lessor.
    let mut lease = LeaseClient::new(follower_channel);
    let id = grant(&mut lease, 5).await;
    let (sender, receiver) = mpsc::channel(4);
    let mut answers = lease
        .lease_keep_alive(ReceiverStream::new(receiver))
        .await
        .expect("keep-alive")
        .into_inner();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(2000)).await;
        sender
            .send(LeaseKeepAliveRequest { id })
            .await
            .expect("send");
        let answer = answers.message().await.expect("answer").expect("open");
        assert_eq!(
            (answer.id, answer.ttl),
            (id, 5),
            "renewed through the follower"
        );
    }
    let ttl = lease
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
        .await
        .expect("ttl")
        .into_inner();
    assert!(ttl.ttl >= 3, "kept alive past its first TTL: {ttl:?}");
    server.shutdown().await;
}
