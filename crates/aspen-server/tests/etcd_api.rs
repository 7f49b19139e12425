//! The etcd v3 gRPC API of real `aspen` processes, through the generated etcd client: KV (Range,
//! Put, DeleteRange, Txn, Compact), Cluster and Maintenance, on a one-member and a three-member
//! cluster, checked against etcd's semantics, status codes and messages. On three members every
//! KV write goes through a follower (forwarded to the leader) and every read is a linearizable
//! one on the other follower, right after the write. A raw gRPC client sends malformed protobuf.
//!
//! Run with `--test-threads=2` at most: every test starts its own processes.

mod common;

use std::fmt::Debug;
use std::future::Future;

use aspen_proto::etcdserverpb::alarm_request::AlarmAction;
use aspen_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use aspen_proto::etcdserverpb::kv_client::KvClient;
use aspen_proto::etcdserverpb::lease_client::LeaseClient;
use aspen_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use aspen_proto::etcdserverpb::request_op::Request as Op;
use aspen_proto::etcdserverpb::response_op::Response as OpResponse;
use aspen_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, CompactionRequest, Compare,
    DefragmentRequest, DeleteRangeRequest, DeleteRangeResponse, HashKvRequest, HashRequest,
    LeaseGrantRequest, LeaseRevokeRequest, Member, MemberAddRequest, MemberListRequest,
    MemberPromoteRequest, MemberRemoveRequest, MoveLeaderRequest, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseHeader, SnapshotRequest, StatusRequest,
    StatusResponse, TxnRequest, TxnResponse,
};
use aspen_proto::mvccpb::KeyValue;
use bytes::{Buf, BufMut};
use common::{Backend, Cluster, poll, prefix_end};
use sha2::{Digest, Sha256};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// etcd's messages, byte for byte (clients match on them).
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE_REVISION: &str = "etcdserver: mvcc: required revision is a future revision";
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
const KEY_NOT_FOUND: &str = "etcdserver: key not found";
const VALUE_PROVIDED: &str = "etcdserver: value is provided";
const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
const EMPTY_KEY: &str = "etcdserver: key is not provided";
const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
const LEARNER_NOT_READY: &str =
    "etcdserver: can only promote a learner member which is in sync with leader";
const NOT_LEARNER: &str = "etcdserver: can only promote a learner member";
const PEER_URL_EXISTS: &str = "etcdserver: Peer URLs already exists";
const BAD_MEMBER_URLS: &str = "etcdserver: given member URLs are invalid";
const BAD_LEADER_TRANSFEREE: &str = "etcdserver: bad leader transferee";

/// etcd's default --max-request-bytes (1.5 MiB).
const REQUEST_BYTES_MAX: usize = 1536 * 1024;
/// etcd's default --max-txn-ops.
const TXN_OPS_MAX: usize = 128;
/// TTL of the leases granted here: far longer than any test, so none expires midway (an
/// expiry would be a write of its own and break the exact revision counts).
const LEASE_TTL_SECONDS: i64 = 600;
/// A lease id no one granted.
const UNKNOWN_LEASE: i64 = 0x0123_4567_89ab;
/// A member id no one has.
const UNKNOWN_MEMBER: u64 = 0x00de_adbe_ef00_0001;
/// Length of the SHA-256 trailer of a Snapshot stream.
const SHA256_BYTES: usize = 32;
/// `etcdctl snapshot save` wants the body a multiple of this (see aspen-api maintenance.rs).
const SNAPSHOT_ALIGN_BYTES: usize = 512;

// ---------------------------------------------------------------------------------------------
// Small helpers.

fn b(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn header(header: &Option<ResponseHeader>) -> ResponseHeader {
    header.expect("a response header")
}

fn revision(h: &Option<ResponseHeader>) -> i64 {
    header(h).revision
}

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter().map(|kv| text(&kv.key)).collect()
}

fn pairs(kvs: &[KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| (text(&kv.key), text(&kv.value)))
        .collect()
}

fn owned(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Asserts that `result` failed with exactly `code` and `message`.
fn assert_status<T: Debug>(result: Result<T, Status>, code: Code, message: &str, what: &str) {
    match result {
        Ok(reply) => panic!("{what}: expected {code:?} {message:?}, got success {reply:?}"),
        Err(status) => {
            assert_eq!(
                (status.code(), status.message()),
                (code, message),
                "{what}: {status}"
            );
        }
    }
}

fn range_of(key: &[u8], range_end: &[u8]) -> RangeRequest {
    RangeRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        ..Default::default()
    }
}

fn prefix(key: &str) -> RangeRequest {
    range_of(key.as_bytes(), &prefix_end(key.as_bytes()))
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: b(key),
            value: b(value),
            ..Default::default()
        })),
    }
}

fn range_op(request: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestRange(request)),
    }
}

fn delete_op(key: &str, range_end: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
            key: b(key),
            range_end: range_end.to_vec(),
            prev_kv: false,
        })),
    }
}

fn compare(key: &str, result: CompareResult, target: TargetUnion) -> Compare {
    let target_kind = match target {
        TargetUnion::Version(_) => CompareTarget::Version,
        TargetUnion::CreateRevision(_) => CompareTarget::Create,
        TargetUnion::ModRevision(_) => CompareTarget::Mod,
        TargetUnion::Value(_) => CompareTarget::Value,
        TargetUnion::Lease(_) => CompareTarget::Lease,
    };
    Compare {
        result: result as i32,
        target: target_kind as i32,
        key: b(key),
        range_end: Vec::new(),
        target_union: Some(target),
    }
}

// ---------------------------------------------------------------------------------------------
// Who serves what.

/// The members one KV run talks to.
struct Via<'a> {
    cluster: &'a Cluster,
    /// Receives every write: a follower when there is one.
    writer: usize,
    /// Serves every read, linearizable: another follower when there is one.
    reader: usize,
    /// Every member.
    all: Vec<usize>,
}

impl Via<'_> {
    fn kv_writer(&self) -> KvClient<Channel> {
        self.cluster.kv(self.writer)
    }

    fn kv_reader(&self) -> KvClient<Channel> {
        self.cluster.kv(self.reader)
    }

    fn lease(&self) -> LeaseClient<Channel> {
        LeaseClient::new(self.cluster.channel(self.writer))
    }

    async fn put(&self, key: &str, value: &str) -> PutResponse {
        self.put_with(PutRequest {
            key: b(key),
            value: b(value),
            ..Default::default()
        })
        .await
    }

    async fn put_with(&self, request: PutRequest) -> PutResponse {
        let what = format!("put {} via member {}", text(&request.key), self.writer);
        self.kv_writer()
            .put(request)
            .await
            .unwrap_or_else(|status| panic!("{what}: {status}"))
            .into_inner()
    }

    async fn try_put(&self, request: PutRequest) -> Result<PutResponse, Status> {
        Ok(self.kv_writer().put(request).await?.into_inner())
    }

    /// A linearizable range on the reader.
    async fn range(&self, request: RangeRequest) -> RangeResponse {
        self.try_range(request)
            .await
            .unwrap_or_else(|status| panic!("range via member {}: {status}", self.reader))
    }

    async fn try_range(&self, request: RangeRequest) -> Result<RangeResponse, Status> {
        Ok(self.kv_reader().range(request).await?.into_inner())
    }

    async fn get(&self, key: &str) -> Option<KeyValue> {
        let reply = self.range(range_of(key.as_bytes(), b"")).await;
        assert!(reply.kvs.len() <= 1, "{key}: {reply:?}");
        reply.kvs.into_iter().next()
    }

    async fn delete(&self, request: DeleteRangeRequest) -> DeleteRangeResponse {
        self.kv_writer()
            .delete_range(request)
            .await
            .unwrap_or_else(|status| panic!("delete via member {}: {status}", self.writer))
            .into_inner()
    }

    async fn txn(&self, request: TxnRequest) -> TxnResponse {
        self.try_txn(request)
            .await
            .unwrap_or_else(|status| panic!("txn via member {}: {status}", self.writer))
    }

    async fn try_txn(&self, request: TxnRequest) -> Result<TxnResponse, Status> {
        Ok(self.kv_writer().txn(request).await?.into_inner())
    }

    async fn compact(&self, revision: i64, physical: bool) -> Result<i64, Status> {
        let request = CompactionRequest { revision, physical };
        let reply = self.kv_writer().compact(request).await?.into_inner();
        Ok(self::revision(&reply.header))
    }

    /// The cluster's revision now, seen by a linearizable read.
    async fn current_revision(&self) -> i64 {
        revision(&self.range(range_of(b"\0", b"")).await.header)
    }

    async fn grant(&self) -> i64 {
        let request = LeaseGrantRequest {
            ttl: LEASE_TTL_SECONDS,
            id: 0,
        };
        let reply = self
            .lease()
            .lease_grant(request)
            .await
            .expect("lease grant")
            .into_inner();
        assert!(reply.id > 0, "{reply:?}");
        assert_eq!(reply.ttl, LEASE_TTL_SECONDS);
        reply.id
    }

    async fn revoke(&self, id: i64) {
        self.lease()
            .lease_revoke(LeaseRevokeRequest { id })
            .await
            .expect("lease revoke");
    }
}

/// Starts `size` members and picks who writes and who reads: on three members two different
/// followers, so every write is forwarded and every read is on a member that did not take it.
async fn start(size: usize) -> (Cluster, usize, usize) {
    let mut cluster = Cluster::new(size, Backend::Redb, None);
    cluster.start_all();
    let all: Vec<usize> = (0..size).collect();
    let leader = cluster.wait_leader(&all).await;
    let followers: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    let (writer, reader) = match followers.as_slice() {
        [] => (leader, leader),
        [only] => (*only, leader),
        [first, second, ..] => (*first, *second),
    };
    // Every member takes a write and serves a linearizable read before the checks start.
    for &index in &all {
        cluster.put(index, "warmup", &format!("via-{index}")).await;
        poll(
            &format!("a linearizable read on member {index}"),
            || async { cluster.get(index, "warmup", false).await.ok() },
        )
        .await;
    }
    (cluster, writer, reader)
}

// ---------------------------------------------------------------------------------------------
// KV: Range.

async fn range_checks(v: &Via<'_>) {
    for (key, value) in [
        ("r/a", "1"),
        ("r/b", "2"),
        ("r/c", "3"),
        ("r/d", "4"),
        ("r0", "5"),
    ] {
        v.put(key, value).await;
    }

    // A single key, and a missing one.
    let reply = v.range(range_of(b"r/b", b"")).await;
    assert_eq!(pairs(&reply.kvs), owned(&[("r/b", "2")]));
    assert_eq!((reply.count, reply.more), (1, false));
    let reply = v.range(range_of(b"r/zz", b"")).await;
    assert!(reply.kvs.is_empty(), "{reply:?}");
    assert_eq!((reply.count, reply.more), (0, false));

    // [key, range_end).
    let reply = v.range(range_of(b"r/b", b"r/d")).await;
    assert_eq!(keys(&reply.kvs), ["r/b", "r/c"]);
    assert_eq!(reply.count, 2);

    // A prefix: range_end is the prefix with its last byte plus one ("r/" -> "r0").
    let reply = v.range(prefix("r/")).await;
    assert_eq!(keys(&reply.kvs), ["r/a", "r/b", "r/c", "r/d"]);
    assert_eq!((reply.count, reply.more), (4, false));

    // Every key: key = range_end = "\0".
    let everything = v.range(range_of(b"\0", b"\0")).await;
    let all_keys = keys(&everything.kvs);
    for key in ["r/a", "r/b", "r/c", "r/d", "r0", "warmup"] {
        assert!(all_keys.contains(&key.to_string()), "{key}: {all_keys:?}");
    }
    assert!(all_keys.windows(2).all(|w| w[0] < w[1]), "{all_keys:?}");
    assert_eq!(everything.count, all_keys.len() as i64);
    assert!(!everything.more);

    // From a key on: range_end = "\0".
    let reply = v.range(range_of(b"r/c", b"\0")).await;
    let expected: Vec<String> = all_keys
        .iter()
        .filter(|k| k.as_str() >= "r/c")
        .cloned()
        .collect();
    assert_eq!(keys(&reply.kvs), expected);
    assert_eq!(&keys(&reply.kvs)[..3], ["r/c", "r/d", "r0"]);
    assert_eq!(reply.count, expected.len() as i64);

    // Limit: `more` says whether keys were left out, `count` counts them all.
    let reply = v
        .range(RangeRequest {
            limit: 2,
            ..prefix("r/")
        })
        .await;
    assert_eq!(keys(&reply.kvs), ["r/a", "r/b"]);
    assert_eq!((reply.count, reply.more), (4, true));
    let reply = v
        .range(RangeRequest {
            limit: 4,
            ..prefix("r/")
        })
        .await;
    assert_eq!(reply.kvs.len(), 4);
    assert_eq!((reply.count, reply.more), (4, false));
    let reply = v
        .range(RangeRequest {
            limit: 1,
            ..range_of(b"r/c", b"\0")
        })
        .await;
    assert_eq!(keys(&reply.kvs), ["r/c"]);
    assert_eq!((reply.count, reply.more), (expected.len() as i64, true));

    // Reads at an older revision see the value of then.
    let old = revision(&v.put("r/v", "old").await.header);
    let new = revision(&v.put("r/v", "new").await.header);
    assert_eq!(new, old + 1);
    let reply = v
        .range(RangeRequest {
            revision: old,
            ..range_of(b"r/v", b"")
        })
        .await;
    assert_eq!(pairs(&reply.kvs), owned(&[("r/v", "old")]));
    assert_eq!(reply.kvs[0].mod_revision, old);
    assert_eq!(reply.kvs[0].version, 1);
    // The header carries the store's current revision, not the one read at.
    assert_eq!(revision(&reply.header), new);
    let reply = v
        .range(RangeRequest {
            revision: old - 1,
            ..prefix("r/")
        })
        .await;
    assert_eq!(keys(&reply.kvs), ["r/a", "r/b", "r/c", "r/d"]);
    let reply = v
        .range(RangeRequest {
            revision: new,
            ..range_of(b"r/v", b"")
        })
        .await;
    assert_eq!(pairs(&reply.kvs), owned(&[("r/v", "new")]));
    assert_eq!(reply.kvs[0].version, 2);
    // One past the current revision is the future.
    let result = v
        .try_range(RangeRequest {
            revision: new + 1,
            ..range_of(b"r/v", b"")
        })
        .await;
    assert_status(
        result,
        Code::OutOfRange,
        FUTURE_REVISION,
        "range at a future revision",
    );
    assert_status(
        v.try_range(range_of(b"", b"")).await,
        Code::InvalidArgument,
        EMPTY_KEY,
        "range of an empty key",
    );
}

// ---------------------------------------------------------------------------------------------
// KV: Range sorting, keys_only, count_only and revision filters.

async fn sort_and_filter_checks(v: &Via<'_>) {
    // Written so that each sort target orders the three keys differently:
    //   key:     a b c
    //   version: b(1) a(2) c(3)
    //   create:  c b a
    //   mod:     b c a
    //   value:   c(v1) a(v2) b(v3)
    let writes = [
        ("s/c", "v1"),
        ("s/b", "v3"),
        ("s/a", "v2"),
        ("s/c", "v1"),
        ("s/c", "v1"),
        ("s/a", "v2"),
    ];
    let mut revisions = Vec::new();
    for (key, value) in writes {
        revisions.push(revision(&v.put(key, value).await.header));
    }
    let (create_c, create_b) = (revisions[0], revisions[1]);
    let mod_c = revisions[4];

    let ascending: [(SortTarget, [&str; 3]); 5] = [
        (SortTarget::Key, ["s/a", "s/b", "s/c"]),
        (SortTarget::Version, ["s/b", "s/a", "s/c"]),
        (SortTarget::Create, ["s/c", "s/b", "s/a"]),
        (SortTarget::Mod, ["s/b", "s/c", "s/a"]),
        (SortTarget::Value, ["s/c", "s/a", "s/b"]),
    ];
    for (target, order) in ascending {
        for sort_order in [SortOrder::Ascend, SortOrder::Descend] {
            let reply = v
                .range(RangeRequest {
                    sort_order: sort_order as i32,
                    sort_target: target as i32,
                    ..prefix("s/")
                })
                .await;
            let mut expected = strings(&order);
            if sort_order == SortOrder::Descend {
                expected.reverse();
            }
            assert_eq!(keys(&reply.kvs), expected, "{target:?} {sort_order:?}");
            assert_eq!(reply.count, 3);
        }
    }
    // As etcd: no order with a target other than the key sorts ascending.
    let reply = v
        .range(RangeRequest {
            sort_order: SortOrder::None as i32,
            sort_target: SortTarget::Version as i32,
            ..prefix("s/")
        })
        .await;
    assert_eq!(keys(&reply.kvs), ["s/b", "s/a", "s/c"]);
    // Sorting happens before the limit.
    let reply = v
        .range(RangeRequest {
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Mod as i32,
            limit: 2,
            ..prefix("s/")
        })
        .await;
    assert_eq!(keys(&reply.kvs), ["s/a", "s/c"]);
    assert_eq!((reply.count, reply.more), (3, true));

    // keys_only: everything but the values.
    let full = v.range(prefix("s/")).await;
    let reply = v
        .range(RangeRequest {
            keys_only: true,
            ..prefix("s/")
        })
        .await;
    assert_eq!(keys(&reply.kvs), ["s/a", "s/b", "s/c"]);
    for (bare, whole) in reply.kvs.iter().zip(full.kvs.iter()) {
        assert!(bare.value.is_empty(), "{bare:?}");
        assert_eq!(
            (bare.create_revision, bare.mod_revision, bare.version),
            (whole.create_revision, whole.mod_revision, whole.version)
        );
    }
    assert_eq!(
        full.kvs.iter().map(|kv| kv.version).collect::<Vec<_>>(),
        [2, 1, 3]
    );

    // count_only: no keys, just the count.
    let reply = v
        .range(RangeRequest {
            count_only: true,
            ..prefix("s/")
        })
        .await;
    assert!(reply.kvs.is_empty(), "{reply:?}");
    assert_eq!((reply.count, reply.more), (3, false));

    // Revision filters.
    let filtered = |request: RangeRequest| async move { keys(&v.range(request).await.kvs) };
    let cases: [(RangeRequest, &[&str]); 5] = [
        (
            RangeRequest {
                min_mod_revision: mod_c,
                ..prefix("s/")
            },
            &["s/a", "s/c"],
        ),
        (
            RangeRequest {
                max_mod_revision: mod_c - 1,
                ..prefix("s/")
            },
            &["s/b"],
        ),
        (
            RangeRequest {
                min_create_revision: create_b,
                ..prefix("s/")
            },
            &["s/a", "s/b"],
        ),
        (
            RangeRequest {
                max_create_revision: create_b,
                ..prefix("s/")
            },
            &["s/b", "s/c"],
        ),
        (
            RangeRequest {
                min_create_revision: create_b,
                min_mod_revision: mod_c,
                ..prefix("s/")
            },
            &["s/a"],
        ),
    ];
    for (request, expected) in cases {
        let what = format!("{request:?}");
        assert_eq!(filtered(request).await, strings(expected), "{what}");
    }
    let reply = v
        .range(RangeRequest {
            max_create_revision: create_c,
            ..prefix("s/")
        })
        .await;
    assert_eq!(keys(&reply.kvs), ["s/c"]);

    // Serializable reads on every member (a follower answers from its own store, so it may
    // lag for a moment: polled).
    let latest = v.current_revision().await;
    for &index in &v.all {
        let request = RangeRequest {
            serializable: true,
            ..prefix("s/")
        };
        let reply = poll(&format!("serializable read on member {index}"), || {
            let request = request.clone();
            async move {
                let reply = v.cluster.kv(index).range(request).await.ok()?.into_inner();
                (revision(&reply.header) >= latest).then_some(reply)
            }
        })
        .await;
        assert_eq!(
            pairs(&reply.kvs),
            owned(&[("s/a", "v2"), ("s/b", "v3"), ("s/c", "v1")]),
            "member {index}"
        );
        assert_eq!(header(&reply.header).member_id, v.cluster.member_id(index));
    }
}

// ---------------------------------------------------------------------------------------------
// KV: Put.

async fn put_checks(v: &Via<'_>) {
    let first = v
        .put_with(PutRequest {
            key: b("p/k"),
            value: b("v1"),
            prev_kv: true,
            ..Default::default()
        })
        .await;
    assert_eq!(first.prev_kv, None);
    let first_revision = revision(&first.header);
    let second = v
        .put_with(PutRequest {
            key: b("p/k"),
            value: b("v2"),
            prev_kv: true,
            ..Default::default()
        })
        .await;
    let prev = second.prev_kv.expect("prev_kv");
    assert_eq!(
        (
            text(&prev.key),
            text(&prev.value),
            prev.version,
            prev.create_revision,
            prev.mod_revision
        ),
        ("p/k".into(), "v1".into(), 1, first_revision, first_revision)
    );
    // Without prev_kv, none is sent.
    let third = v.put("p/k", "v3").await;
    assert_eq!(third.prev_kv, None);

    // Header: cluster id non-zero and the same everywhere, member id of the serving member
    // (as Maintenance.Status reports it), one revision per put, a Raft term.
    let h = header(&third.header);
    assert_ne!(h.cluster_id, 0);
    assert_eq!(h.member_id, v.cluster.member_id(v.writer));
    assert!(h.raft_term > 0, "{h:?}");
    assert_eq!(revision(&second.header), first_revision + 1);
    assert_eq!(h.revision, first_revision + 2);
    let status = v
        .cluster
        .maintenance(v.writer)
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(header(&status.header).member_id, h.member_id);
    for &index in &v.all {
        let reply = v
            .cluster
            .kv(index)
            .range(range_of(b"p/k", b""))
            .await
            .expect("linearizable range")
            .into_inner();
        let read = header(&reply.header);
        assert_eq!(read.cluster_id, h.cluster_id, "member {index}");
        assert_eq!(read.member_id, v.cluster.member_id(index), "member {index}");
        assert!(read.raft_term > 0, "member {index}");
        assert_eq!(read.revision, h.revision, "member {index}");
        assert_eq!(pairs(&reply.kvs), owned(&[("p/k", "v3")]));
    }
    let mut last = h.revision;
    for n in 0..5 {
        let reply = v.put(&format!("p/seq/{n}"), "x").await;
        assert_eq!(revision(&reply.header), last + 1, "put {n}");
        last += 1;
    }

    // Leases.
    let lease = v.grant().await;
    let leased = v
        .put_with(PutRequest {
            key: b("p/leased"),
            value: b("x"),
            lease,
            ..Default::default()
        })
        .await;
    last += 1;
    assert_eq!(revision(&leased.header), last);
    let kv = v.get("p/leased").await.expect("p/leased");
    assert_eq!(kv.lease, lease);
    let result = v
        .try_put(PutRequest {
            key: b("p/k"),
            value: b("lost"),
            lease: UNKNOWN_LEASE,
            ..Default::default()
        })
        .await;
    assert_status(
        result,
        Code::NotFound,
        LEASE_NOT_FOUND,
        "put with an unknown lease",
    );

    // ignore_value keeps the value and may change the lease.
    let reply = v
        .put_with(PutRequest {
            key: b("p/k"),
            ignore_value: true,
            lease,
            prev_kv: true,
            ..Default::default()
        })
        .await;
    last += 1;
    assert_eq!(revision(&reply.header), last);
    assert_eq!(reply.prev_kv.map(|kv| kv.value), Some(b("v3")));
    let kv = v.get("p/k").await.expect("p/k");
    assert_eq!(
        (text(&kv.value), kv.lease, kv.version),
        ("v3".into(), lease, 4)
    );
    let result = v
        .try_put(PutRequest {
            key: b("p/missing"),
            ignore_value: true,
            ..Default::default()
        })
        .await;
    assert_status(
        result,
        Code::InvalidArgument,
        KEY_NOT_FOUND,
        "ignore_value on a missing key",
    );
    let result = v
        .try_put(PutRequest {
            key: b("p/k"),
            value: b("given"),
            ignore_value: true,
            ..Default::default()
        })
        .await;
    assert_status(
        result,
        Code::InvalidArgument,
        VALUE_PROVIDED,
        "ignore_value with a value",
    );

    // ignore_lease keeps the lease and changes the value.
    v.put_with(PutRequest {
        key: b("p/leased"),
        value: b("y"),
        ignore_lease: true,
        ..Default::default()
    })
    .await;
    last += 1;
    let kv = v.get("p/leased").await.expect("p/leased");
    assert_eq!(
        (text(&kv.value), kv.lease, kv.version),
        ("y".into(), lease, 2)
    );
    let result = v
        .try_put(PutRequest {
            key: b("p/missing"),
            value: b("z"),
            ignore_lease: true,
            ..Default::default()
        })
        .await;
    assert_status(
        result,
        Code::InvalidArgument,
        KEY_NOT_FOUND,
        "ignore_lease on a missing key",
    );
    let result = v
        .try_put(PutRequest {
            key: b("p/leased"),
            value: b("z"),
            lease,
            ignore_lease: true,
            ..Default::default()
        })
        .await;
    assert_status(
        result,
        Code::InvalidArgument,
        LEASE_PROVIDED,
        "ignore_lease with a lease",
    );
    // A key without the lease outlives it.
    v.put("p/detached", "1").await;
    last += 1;

    // Bad keys and sizes.
    let result = v
        .try_put(PutRequest {
            key: Vec::new(),
            value: b("v"),
            ..Default::default()
        })
        .await;
    assert_status(
        result,
        Code::InvalidArgument,
        EMPTY_KEY,
        "put of an empty key",
    );
    let result = v
        .try_put(PutRequest {
            key: b("p/huge"),
            value: vec![b'x'; REQUEST_BYTES_MAX + 1],
            ..Default::default()
        })
        .await;
    assert_status(
        result,
        Code::InvalidArgument,
        REQUEST_TOO_LARGE,
        "put over 1.5 MiB",
    );
    // A large value under the limit is fine.
    let big = vec![b'y'; 1024 * 1024];
    v.put_with(PutRequest {
        key: b("p/big"),
        value: big.clone(),
        ..Default::default()
    })
    .await;
    last += 1;
    assert_eq!(v.get("p/big").await.map(|kv| kv.value), Some(big));

    // None of the refused puts took a revision.
    assert_eq!(v.current_revision().await, last);

    // Revoking the lease deletes its keys (one revision for both).
    v.revoke(lease).await;
    last += 1;
    assert_eq!(v.get("p/leased").await, None);
    assert_eq!(v.get("p/k").await, None);
    assert!(v.get("p/detached").await.is_some());
    assert_eq!(v.current_revision().await, last);
}

// ---------------------------------------------------------------------------------------------
// KV: DeleteRange.

async fn delete_checks(v: &Via<'_>) {
    for key in ["d/a", "d/b", "d/c", "d/d", "d0"] {
        v.put(key, &format!("value of {key}")).await;
    }
    let before = v.current_revision().await;

    let reply = v
        .delete(DeleteRangeRequest {
            key: b("d/a"),
            range_end: Vec::new(),
            prev_kv: true,
        })
        .await;
    assert_eq!(reply.deleted, 1);
    assert_eq!(pairs(&reply.prev_kvs), owned(&[("d/a", "value of d/a")]));
    assert_eq!(revision(&reply.header), before + 1);
    assert_eq!(v.get("d/a").await, None);

    // [d/b, d/d) without prev_kv.
    let reply = v
        .delete(DeleteRangeRequest {
            key: b("d/b"),
            range_end: b("d/d"),
            prev_kv: false,
        })
        .await;
    assert_eq!(reply.deleted, 2);
    assert!(reply.prev_kvs.is_empty());
    assert_eq!(revision(&reply.header), before + 2);
    assert_eq!(keys(&v.range(prefix("d/")).await.kvs), ["d/d"]);

    // A prefix.
    v.put("d/x", "x").await;
    v.put("d/y", "y").await;
    let reply = v
        .delete(DeleteRangeRequest {
            key: b("d/"),
            range_end: prefix_end(b"d/"),
            prev_kv: true,
        })
        .await;
    assert_eq!(reply.deleted, 3);
    assert_eq!(keys(&reply.prev_kvs), ["d/d", "d/x", "d/y"]);
    let now = revision(&reply.header);
    assert_eq!(now, before + 5);
    assert!(v.range(prefix("d/")).await.kvs.is_empty());
    assert!(v.get("d0").await.is_some(), "outside the prefix");

    // Deleting nothing changes nothing, not even the revision.
    for (key, range_end) in [("d/none", Vec::new()), ("d/", prefix_end(b"d/"))] {
        let reply = v
            .delete(DeleteRangeRequest {
                key: b(key),
                range_end,
                prev_kv: true,
            })
            .await;
        assert_eq!(reply.deleted, 0);
        assert!(reply.prev_kvs.is_empty());
        assert_eq!(revision(&reply.header), now, "delete of {key}");
    }
    assert_eq!(v.current_revision().await, now);

    // From a key on (range_end "\0"): "zzz/" sorts after every other key written here.
    v.put("zzz/1", "1").await;
    v.put("zzz/2", "2").await;
    let reply = v
        .delete(DeleteRangeRequest {
            key: b("zzz/"),
            range_end: b("\0"),
            prev_kv: false,
        })
        .await;
    assert_eq!(reply.deleted, 2);
    assert!(v.range(range_of(b"zzz/", b"\0")).await.kvs.is_empty());
    // A key deleted and written again starts over at version 1, with no prev_kv.
    let reply = v
        .put_with(PutRequest {
            key: b("d/a"),
            value: b("again"),
            prev_kv: true,
            ..Default::default()
        })
        .await;
    assert_eq!(reply.prev_kv, None);
    let kv = v.get("d/a").await.expect("d/a");
    assert_eq!(
        (kv.version, kv.create_revision),
        (1, revision(&reply.header))
    );

    let result = v
        .kv_writer()
        .delete_range(DeleteRangeRequest::default())
        .await;
    assert_status(
        result,
        Code::InvalidArgument,
        EMPTY_KEY,
        "delete of an empty key",
    );
}

// ---------------------------------------------------------------------------------------------
// KV: Txn.

/// Where the key's actual value lies relative to a compare's operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relation {
    Below,
    Equal,
    Above,
}

fn holds(result: CompareResult, relation: Relation) -> bool {
    match result {
        CompareResult::Equal => relation == Relation::Equal,
        CompareResult::NotEqual => relation != Relation::Equal,
        CompareResult::Less => relation == Relation::Below,
        CompareResult::Greater => relation == Relation::Above,
    }
}

async fn txn_checks(v: &Via<'_>) {
    // t/k: three versions, the last one with a lease.
    let lease = v.grant().await;
    let create = revision(&v.put("t/k", "v0").await.header);
    v.put("t/k", "v1").await;
    let modified = revision(
        &v.put_with(PutRequest {
            key: b("t/k"),
            value: b("v2"),
            lease,
            ..Default::default()
        })
        .await
        .header,
    );
    let now = modified;

    // Every target with every result, against operands below, at and above the key's.
    let operands: [[TargetUnion; 3]; 5] = [
        [
            TargetUnion::Value(b("v3")),
            TargetUnion::Value(b("v2")),
            TargetUnion::Value(b("v1")),
        ],
        [
            TargetUnion::Version(4),
            TargetUnion::Version(3),
            TargetUnion::Version(2),
        ],
        [
            TargetUnion::CreateRevision(create + 1),
            TargetUnion::CreateRevision(create),
            TargetUnion::CreateRevision(create - 1),
        ],
        [
            TargetUnion::ModRevision(modified + 1),
            TargetUnion::ModRevision(modified),
            TargetUnion::ModRevision(modified - 1),
        ],
        [
            TargetUnion::Lease(lease + 1),
            TargetUnion::Lease(lease),
            TargetUnion::Lease(lease - 1),
        ],
    ];
    let relations = [Relation::Below, Relation::Equal, Relation::Above];
    for target in operands {
        for (operand, relation) in target.into_iter().zip(relations) {
            for result in [
                CompareResult::Equal,
                CompareResult::NotEqual,
                CompareResult::Less,
                CompareResult::Greater,
            ] {
                let request = TxnRequest {
                    compare: vec![compare("t/k", result, operand.clone())],
                    success: vec![range_op(range_of(b"t/k", b""))],
                    failure: Vec::new(),
                };
                let what = format!("{:?}", request.compare[0]);
                let reply = v.txn(request).await;
                assert_eq!(reply.succeeded, holds(result, relation), "{what}");
                assert_eq!(revision(&reply.header), now, "{what}: a read-only txn");
                assert_eq!(
                    reply.responses.len(),
                    usize::from(reply.succeeded),
                    "{what}"
                );
            }
        }
    }
    // A missing key compares as version, create and mod revision 0; a value compare on it
    // always fails.
    let missing_cases = [
        (CompareResult::Equal, TargetUnion::Version(0), true),
        (CompareResult::Equal, TargetUnion::CreateRevision(0), true),
        (CompareResult::Equal, TargetUnion::ModRevision(0), true),
        (CompareResult::Equal, TargetUnion::Lease(0), true),
        (CompareResult::Greater, TargetUnion::Version(0), false),
        (CompareResult::NotEqual, TargetUnion::Value(b("x")), false),
        (CompareResult::Equal, TargetUnion::Value(Vec::new()), false),
    ];
    for (result, operand, expected) in missing_cases {
        let request = TxnRequest {
            compare: vec![compare("t/missing", result, operand)],
            ..Default::default()
        };
        let what = format!("{:?}", request.compare[0]);
        assert_eq!(v.txn(request).await.succeeded, expected, "{what}");
    }
    // All compares must hold.
    let request = TxnRequest {
        compare: vec![
            compare("t/k", CompareResult::Equal, TargetUnion::Value(b("v2"))),
            compare("t/k", CompareResult::Equal, TargetUnion::Version(2)),
        ],
        ..Default::default()
    };
    assert!(!v.txn(request).await.succeeded);

    // Success and failure branches.
    let branches = |value: &str| TxnRequest {
        compare: vec![compare(
            "t/k",
            CompareResult::Equal,
            TargetUnion::Value(b(value)),
        )],
        success: vec![put_op("t/then", value)],
        failure: vec![put_op("t/else", value)],
    };
    let reply = v.txn(branches("v2")).await;
    assert!(reply.succeeded);
    assert_eq!(revision(&reply.header), now + 1);
    assert!(matches!(
        reply.responses.as_slice(),
        [r] if matches!(r.response, Some(OpResponse::ResponsePut(_)))
    ));
    assert_eq!(v.get("t/then").await.map(|kv| kv.value), Some(b("v2")));
    assert_eq!(v.get("t/else").await, None);
    let reply = v.txn(branches("nope")).await;
    assert!(!reply.succeeded);
    assert_eq!(revision(&reply.header), now + 2);
    assert_eq!(v.get("t/else").await.map(|kv| kv.value), Some(b("nope")));
    assert_eq!(v.get("t/then").await.map(|kv| kv.value), Some(b("v2")));
    let now = now + 2;

    // A nested txn: the inner compare picks the inner branch.
    let inner = |version: i64| {
        RequestOp {
            request: Some(Op::RequestTxn(TxnRequest {
                compare: vec![compare(
                    "t/k",
                    CompareResult::Equal,
                    TargetUnion::Version(version),
                )],
                // Both branches may put one key: only one of them runs.
                success: vec![put_op("t/nested", &format!("then-{version}"))],
                failure: vec![put_op("t/nested", &format!("else-{version}"))],
            })),
        }
    };
    for (version, expected) in [(3, "then-3"), (7, "else-7")] {
        let reply = v
            .txn(TxnRequest {
                success: vec![inner(version)],
                ..Default::default()
            })
            .await;
        assert!(reply.succeeded);
        let Some(OpResponse::ResponseTxn(nested)) = &reply.responses[0].response else {
            panic!("a nested txn response: {reply:?}");
        };
        assert_eq!(nested.succeeded, version == 3);
        assert_eq!(nested.responses.len(), 1);
        assert_eq!(
            v.get("t/nested").await.map(|kv| text(&kv.value)),
            Some(expected.into())
        );
    }
    let now = now + 2;

    // A range inside the txn sees the txn's own earlier put, at the txn's revision.
    let reply = v
        .txn(TxnRequest {
            success: vec![
                range_op(range_of(b"t/own", b"")),
                put_op("t/own", "mine"),
                range_op(range_of(b"t/own", b"")),
            ],
            ..Default::default()
        })
        .await;
    assert!(reply.succeeded);
    assert_eq!(revision(&reply.header), now + 1);
    let ranges: Vec<&RangeResponse> = reply
        .responses
        .iter()
        .filter_map(|r| match &r.response {
            Some(OpResponse::ResponseRange(range)) => Some(range),
            _ => None,
        })
        .collect();
    assert_eq!(ranges.len(), 2, "{reply:?}");
    assert!(ranges[0].kvs.is_empty(), "before the put: {:?}", ranges[0]);
    assert_eq!(pairs(&ranges[1].kvs), owned(&[("t/own", "mine")]));
    assert_eq!(ranges[1].kvs[0].mod_revision, now + 1);
    let now = now + 1;

    // Several puts take one revision.
    let reply = v
        .txn(TxnRequest {
            success: vec![
                put_op("t/m/1", "a"),
                put_op("t/m/2", "b"),
                put_op("t/m/3", "c"),
            ],
            ..Default::default()
        })
        .await;
    let txn_revision = revision(&reply.header);
    assert_eq!(txn_revision, now + 1);
    let written = v.range(prefix("t/m/")).await;
    assert_eq!(written.kvs.len(), 3);
    assert!(
        written.kvs.iter().all(|kv| kv.mod_revision == txn_revision),
        "{written:?}"
    );

    // A compare over a range holds only if it holds for every key in it.
    let over = |result: CompareResult, target: TargetUnion| Compare {
        range_end: prefix_end(b"t/m/"),
        ..compare("t/m/", result, target)
    };
    for (compare, expected) in [
        (over(CompareResult::Equal, TargetUnion::Version(1)), true),
        (
            over(CompareResult::Equal, TargetUnion::ModRevision(txn_revision)),
            true,
        ),
        (
            over(CompareResult::Equal, TargetUnion::Value(b("a"))),
            false,
        ),
        (
            over(CompareResult::Greater, TargetUnion::Value(b("0"))),
            true,
        ),
    ] {
        let what = format!("{compare:?}");
        let reply = v
            .txn(TxnRequest {
                compare: vec![compare],
                ..Default::default()
            })
            .await;
        assert_eq!(reply.succeeded, expected, "{what}");
    }
    // Puts with prev_kv and deletes report inside the txn response as on their own.
    let reply = v
        .txn(TxnRequest {
            success: vec![
                RequestOp {
                    request: Some(Op::RequestPut(PutRequest {
                        key: b("t/m/1"),
                        value: b("a2"),
                        prev_kv: true,
                        ..Default::default()
                    })),
                },
                RequestOp {
                    request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                        key: b("t/m/2"),
                        range_end: b("t/m/4"),
                        prev_kv: true,
                    })),
                },
            ],
            ..Default::default()
        })
        .await;
    let txn_revision = txn_revision + 1;
    assert_eq!(revision(&reply.header), txn_revision);
    match reply.responses.as_slice() {
        [put, delete] => {
            let Some(OpResponse::ResponsePut(put)) = &put.response else {
                panic!("a put response: {reply:?}");
            };
            assert_eq!(
                put.prev_kv.as_ref().map(|kv| kv.value.clone()),
                Some(b("a"))
            );
            let Some(OpResponse::ResponseDeleteRange(delete)) = &delete.response else {
                panic!("a delete response: {reply:?}");
            };
            assert_eq!(delete.deleted, 2);
            assert_eq!(keys(&delete.prev_kvs), ["t/m/2", "t/m/3"]);
        }
        other => panic!("two responses: {other:?}"),
    }
    assert_eq!(keys(&v.range(prefix("t/m/")).await.kvs), ["t/m/1"]);

    // The op limit: 128 ops are fine, 129 are refused.
    let ops = |count: usize| -> Vec<RequestOp> {
        (0..count)
            .map(|i| put_op(&format!("t/many/{i:03}"), "x"))
            .collect()
    };
    let reply = v
        .txn(TxnRequest {
            success: ops(TXN_OPS_MAX),
            ..Default::default()
        })
        .await;
    assert_eq!(revision(&reply.header), txn_revision + 1);
    assert_eq!(v.range(prefix("t/many/")).await.count, TXN_OPS_MAX as i64);
    for request in [
        TxnRequest {
            success: ops(TXN_OPS_MAX + 1),
            ..Default::default()
        },
        TxnRequest {
            failure: ops(TXN_OPS_MAX + 1),
            ..Default::default()
        },
        TxnRequest {
            compare: vec![
                compare("t/k", CompareResult::Equal, TargetUnion::Version(3));
                TXN_OPS_MAX + 1
            ],
            ..Default::default()
        },
    ] {
        assert_status(
            v.try_txn(request).await,
            Code::InvalidArgument,
            TOO_MANY_OPS,
            "129 ops",
        );
    }

    // One key written twice in a branch is refused.
    let duplicates = [
        vec![put_op("t/dup", "1"), put_op("t/dup", "2")],
        vec![delete_op("t/", &prefix_end(b"t/")), put_op("t/dup", "1")],
        vec![
            put_op("t/dup", "1"),
            RequestOp {
                request: Some(Op::RequestTxn(TxnRequest {
                    success: vec![put_op("t/dup", "2")],
                    ..Default::default()
                })),
            },
        ],
    ];
    for success in duplicates {
        let what = format!("duplicate in {success:?}");
        let result = v
            .try_txn(TxnRequest {
                success,
                ..Default::default()
            })
            .await;
        assert_status(result, Code::InvalidArgument, DUPLICATE_KEY, &what);
    }

    // A txn is all or nothing: an unknown lease in its second put fails the first too.
    let result = v
        .try_txn(TxnRequest {
            success: vec![
                put_op("t/atomic", "1"),
                RequestOp {
                    request: Some(Op::RequestPut(PutRequest {
                        key: b("t/atomic-2"),
                        value: b("2"),
                        lease: UNKNOWN_LEASE,
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        })
        .await;
    assert_status(
        result,
        Code::NotFound,
        LEASE_NOT_FOUND,
        "txn with an unknown lease",
    );
    assert_eq!(v.get("t/atomic").await, None);
    assert_eq!(v.current_revision().await, txn_revision + 1);

    v.revoke(lease).await;
    assert_eq!(v.get("t/k").await, None, "revoked with its lease");
}

// ---------------------------------------------------------------------------------------------
// KV: Compact.

async fn compact_checks(v: &Via<'_>) {
    let old = revision(&v.put("c/k", "old").await.header);
    let new = revision(&v.put("c/k", "new").await.header);
    let newer = revision(&v.put("c/k", "newer").await.header);
    let at = |revision: i64| RangeRequest {
        revision,
        ..range_of(b"c/k", b"")
    };
    assert_eq!(pairs(&v.range(at(old)).await.kvs)[0].1, "old");

    let header_revision = v.compact(new, true).await.expect("physical compaction");
    assert_eq!(header_revision, newer);
    assert_status(
        v.try_range(at(old)).await,
        Code::OutOfRange,
        COMPACTED,
        "range below the compaction",
    );
    assert_status(
        v.try_range(RangeRequest {
            revision: 1,
            ..range_of(b"\0", b"\0")
        })
        .await,
        Code::OutOfRange,
        COMPACTED,
        "range of everything at revision 1",
    );
    // At the compaction revision itself the values of then are still there.
    assert_eq!(pairs(&v.range(at(new)).await.kvs)[0].1, "new");
    assert_eq!(pairs(&v.range(at(newer)).await.kvs)[0].1, "newer");

    // Compacting again at or below the compaction revision is refused; so is the future.
    for revision in [new, old] {
        assert_status(
            v.compact(revision, false).await,
            Code::OutOfRange,
            COMPACTED,
            &format!("compact at {revision} after compacting at {new}"),
        );
    }
    assert_status(
        v.compact(newer + 1, false).await,
        Code::OutOfRange,
        FUTURE_REVISION,
        "compact at a future revision",
    );
    // A logical (non-physical) compaction further on.
    v.compact(newer, false)
        .await
        .expect("non-physical compaction");
    assert_status(
        v.try_range(at(new)).await,
        Code::OutOfRange,
        COMPACTED,
        "range below the second compaction",
    );
    assert_eq!(pairs(&v.range(at(0)).await.kvs)[0].1, "newer");

    // HashKV refuses revisions at or below the compaction and reports where it is.
    let mut maintenance = v.cluster.maintenance(v.reader);
    for revision in [old, newer] {
        assert_status(
            maintenance.hash_kv(HashKvRequest { revision }).await,
            Code::OutOfRange,
            COMPACTED,
            &format!("HashKV at {revision}, compacted at {newer}"),
        );
    }
    let hashed = maintenance
        .hash_kv(HashKvRequest { revision: 0 })
        .await
        .expect("HashKV now")
        .into_inner();
    assert_eq!(hashed.compact_revision, newer);

    // Every member compacted: its own (serializable) reads below fail too.
    for &index in &v.all {
        poll(
            &format!("member {index} to apply the compaction"),
            || async {
                let request = RangeRequest {
                    serializable: true,
                    ..at(new)
                };
                let status = v.cluster.kv(index).range(request).await.err()?;
                assert_eq!(status.code(), Code::OutOfRange, "member {index}: {status}");
                (status.message() == COMPACTED).then_some(())
            },
        )
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// Writes through one follower, read at once on another.

async fn follower_checks(v: &Via<'_>) {
    for n in 0..10 {
        let key = format!("f/{n}");
        let written = revision(&v.put(&key, &format!("value-{n}")).await.header);
        let read = v.range(range_of(key.as_bytes(), b"")).await;
        assert_eq!(
            pairs(&read.kvs),
            vec![(key.clone(), format!("value-{n}"))],
            "linearizable read on member {} right after a write through member {}",
            v.reader,
            v.writer
        );
        assert_eq!(read.kvs[0].mod_revision, written);
        assert!(revision(&read.header) >= written);
    }
    // Deletes and txns are forwarded as well.
    let reply = v
        .delete(DeleteRangeRequest {
            key: b("f/"),
            range_end: prefix_end(b"f/"),
            prev_kv: false,
        })
        .await;
    assert_eq!(reply.deleted, 10);
    assert!(v.range(prefix("f/")).await.kvs.is_empty());
    let reply = v
        .txn(TxnRequest {
            compare: vec![compare(
                "f/0",
                CompareResult::Equal,
                TargetUnion::Version(0),
            )],
            success: vec![put_op("f/txn", "forwarded")],
            ..Default::default()
        })
        .await;
    assert!(reply.succeeded);
    assert_eq!(
        v.get("f/txn").await.map(|kv| kv.value),
        Some(b("forwarded"))
    );
}

// ---------------------------------------------------------------------------------------------
// Malformed protobuf through a raw gRPC client.

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

// ---------------------------------------------------------------------------------------------
// The KV tests.

async fn kv_suite(size: usize) {
    let (cluster, writer, reader) = start(size).await;
    let v = Via {
        cluster: &cluster,
        writer,
        reader,
        all: (0..size).collect(),
    };
    range_checks(&v).await;
    sort_and_filter_checks(&v).await;
    put_checks(&v).await;
    delete_checks(&v).await;
    txn_checks(&v).await;
    follower_checks(&v).await;
    // Last: compaction makes the older revisions above unreadable.
    compact_checks(&v).await;
    bad_input_checks(&cluster, writer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_one_member() {
    kv_suite(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_three_members_through_followers() {
    kv_suite(3).await;
}

// ---------------------------------------------------------------------------------------------
// Cluster.

/// Calls a Cluster API change, retrying only what a leader change explains (Unavailable).
async fn membership<T, F, Fut>(what: &str, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    poll(what, || {
        let reply = call();
        async move {
            match reply.await {
                Ok(reply) => Some(Ok(reply.into_inner())),
                Err(status) if status.code() == Code::Unavailable => {
                    eprintln!("{what}: {status}; retrying");
                    None
                }
                Err(status) => Some(Err(status)),
            }
        }
    })
    .await
}

fn by_id(mut members: Vec<Member>) -> Vec<Member> {
    members.sort_by_key(|m| m.id);
    members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_api_three_members() {
    let (cluster, follower, other_follower) = start(3).await;
    let all = [0, 1, 2];
    let expected: Vec<Member> = by_id(
        all.iter()
            .map(|&i| Member {
                id: cluster.member_id(i),
                name: cluster.members[i].name.clone(),
                peer_ur_ls: vec![cluster.members[i].peer_url()],
                client_ur_ls: vec![cluster.members[i].client_url()],
                is_learner: false,
            })
            .collect(),
    );
    // Every member lists all three, once each has published its name and client URL.
    let mut cluster_ids = Vec::new();
    for index in all {
        for linearizable in [true, false] {
            let reply = poll(
                &format!("member {index} to list every published member"),
                || async {
                    let request = MemberListRequest { linearizable };
                    let reply = cluster
                        .cluster_api(index)
                        .member_list(request)
                        .await
                        .ok()?
                        .into_inner();
                    (by_id(reply.members.clone()) == expected).then_some(reply)
                },
            )
            .await;
            let h = header(&reply.header);
            assert_eq!(h.member_id, cluster.member_id(index));
            assert_ne!(h.cluster_id, 0);
            cluster_ids.push(h.cluster_id);
        }
    }
    assert!(
        cluster_ids.windows(2).all(|w| w[0] == w[1]),
        "{cluster_ids:?}"
    );

    // A learner, added through a follower and never started.
    let learner_url = format!("http://127.0.0.1:{}", common::free_port());
    let added = membership("MemberAdd of a learner", || {
        let request = MemberAddRequest {
            peer_ur_ls: vec![learner_url.clone()],
            is_learner: true,
        };
        let mut api = cluster.cluster_api(follower);
        async move { api.member_add(request).await }
    })
    .await
    .expect("MemberAdd");
    let learner = added.member.clone().expect("the added member");
    assert!(learner.is_learner);
    assert_eq!(learner.peer_ur_ls, vec![learner_url.clone()]);
    assert!(learner.name.is_empty() && learner.client_ur_ls.is_empty());
    assert_ne!(learner.id, 0);
    assert_eq!(added.members.len(), 4, "{added:?}");
    assert!(added.members.contains(&learner), "{added:?}");
    assert_eq!(header(&added.header).member_id, cluster.member_id(follower));
    let listed = cluster
        .cluster_api(other_follower)
        .member_list(MemberListRequest { linearizable: true })
        .await
        .expect("member list")
        .into_inner();
    assert_eq!(listed.members.len(), 4);
    assert!(listed.members.contains(&learner), "{listed:?}");

    // The same peer URL twice, and a URL that is not one.
    let result = membership("MemberAdd of a taken URL", || {
        let request = MemberAddRequest {
            peer_ur_ls: vec![learner_url.clone()],
            is_learner: true,
        };
        let mut api = cluster.cluster_api(follower);
        async move { api.member_add(request).await }
    })
    .await;
    assert_status(
        result,
        Code::FailedPrecondition,
        PEER_URL_EXISTS,
        "MemberAdd of a taken URL",
    );
    let result = cluster
        .cluster_api(follower)
        .member_add(MemberAddRequest {
            peer_ur_ls: vec!["not a url".into()],
            is_learner: true,
        })
        .await;
    assert_status(
        result,
        Code::InvalidArgument,
        BAD_MEMBER_URLS,
        "MemberAdd of a bad URL",
    );

    // A learner that never started cannot be promoted; neither can a voter.
    let result = membership("MemberPromote of an unstarted learner", || {
        let request = MemberPromoteRequest { id: learner.id };
        let mut api = cluster.cluster_api(other_follower);
        async move { api.member_promote(request).await }
    })
    .await;
    assert_status(
        result,
        Code::FailedPrecondition,
        LEARNER_NOT_READY,
        "MemberPromote of an unstarted learner",
    );
    let voter = cluster.member_id(follower);
    let result = membership("MemberPromote of a voter", || {
        let request = MemberPromoteRequest { id: voter };
        let mut api = cluster.cluster_api(follower);
        async move { api.member_promote(request).await }
    })
    .await;
    assert_status(
        result,
        Code::FailedPrecondition,
        NOT_LEARNER,
        "MemberPromote of a voter",
    );

    // Remove the learner; then it, and any id no one has, is unknown.
    let removed = membership("MemberRemove of the learner", || {
        let request = MemberRemoveRequest { id: learner.id };
        let mut api = cluster.cluster_api(other_follower);
        async move { api.member_remove(request).await }
    })
    .await
    .expect("MemberRemove");
    assert_eq!(by_id(removed.members), expected);
    for id in [learner.id, UNKNOWN_MEMBER] {
        let result = membership("MemberRemove of an unknown id", || {
            let request = MemberRemoveRequest { id };
            let mut api = cluster.cluster_api(follower);
            async move { api.member_remove(request).await }
        })
        .await;
        assert_status(
            result,
            Code::NotFound,
            MEMBER_NOT_FOUND,
            &format!("MemberRemove of {id:#x}"),
        );
    }
    let result = cluster
        .cluster_api(follower)
        .member_promote(MemberPromoteRequest { id: UNKNOWN_MEMBER })
        .await;
    assert_status(
        result,
        Code::NotFound,
        MEMBER_NOT_FOUND,
        "MemberPromote of an unknown id",
    );

    // The three members still serve.
    for index in all {
        poll(&format!("member {index} to list three members"), || async {
            let reply = cluster
                .cluster_api(index)
                .member_list(MemberListRequest { linearizable: true })
                .await
                .ok()?
                .into_inner();
            (by_id(reply.members) == expected).then_some(())
        })
        .await;
    }
    let revision = cluster.put(follower, "after/membership", "ok").await;
    let reply = cluster
        .get(other_follower, "after/membership", false)
        .await
        .expect("linearizable read");
    assert_eq!(reply.kvs[0].mod_revision, revision);
}

// ---------------------------------------------------------------------------------------------
// Maintenance.

async fn status(cluster: &Cluster, index: usize) -> Result<StatusResponse, Status> {
    Ok(cluster
        .maintenance(index)
        .status(StatusRequest {})
        .await?
        .into_inner())
}

async fn alarm(
    cluster: &Cluster,
    index: usize,
    action: AlarmAction,
    member_id: u64,
    alarm: AlarmType,
) -> AlarmResponse {
    let request = AlarmRequest {
        action: action as i32,
        member_id,
        alarm: alarm as i32,
    };
    cluster
        .maintenance(index)
        .alarm(request)
        .await
        .unwrap_or_else(|status| panic!("alarm {action:?} via member {index}: {status}"))
        .into_inner()
}

/// Waits until every member serves `revision` from its own store; returns nothing else.
async fn wait_applied_everywhere(cluster: &Cluster, all: &[usize], revision: i64) {
    for &index in all {
        poll(
            &format!("member {index} to apply revision {revision}"),
            || async {
                let reply = cluster.get(index, "warmup", true).await.ok()?;
                (reply.header?.revision == revision).then_some(())
            },
        )
        .await;
    }
}

async fn maintenance_suite(size: usize) {
    let (cluster, via, _) = start(size).await;
    let all: Vec<usize> = (0..size).collect();
    let leader = cluster.wait_leader(&all).await;
    let leader_id = cluster.member_id(leader);

    // Status: the same leader everywhere, each member its own id, sane Raft indexes.
    for &index in &all {
        let reply = poll(
            &format!("member {index}'s Status to name the leader"),
            || {
                let cluster = &cluster;
                async move {
                    let reply = status(cluster, index).await.ok()?;
                    (reply.leader == leader_id).then_some(reply)
                }
            },
        )
        .await;
        let h = header(&reply.header);
        assert_eq!(h.member_id, cluster.member_id(index));
        assert_ne!(h.cluster_id, 0);
        assert!(h.revision > 0, "{reply:?}");
        assert!(reply.raft_applied_index > 0, "{reply:?}");
        assert!(reply.raft_index >= reply.raft_applied_index, "{reply:?}");
        assert!(reply.raft_term > 0, "{reply:?}");
        assert!(reply.db_size > 0, "{reply:?}");
        assert!(reply.db_size_in_use > 0, "{reply:?}");
        assert!(!reply.version.is_empty(), "{reply:?}");
        assert!(!reply.is_learner, "{reply:?}");
        assert!(reply.errors.is_empty(), "{reply:?}");
    }

    // Alarms: none at first.
    for &index in &all {
        let reply = alarm(&cluster, index, AlarmAction::Get, 0, AlarmType::None).await;
        assert!(reply.alarms.is_empty(), "member {index}: {reply:?}");
    }
    cluster.put(via, "alarm/k", "before").await;
    let nospace = AlarmMember {
        member_id: leader_id,
        alarm: AlarmType::Nospace as i32,
    };
    let reply = alarm(
        &cluster,
        via,
        AlarmAction::Activate,
        leader_id,
        AlarmType::Nospace,
    )
    .await;
    assert_eq!(reply.alarms, vec![nospace]);
    for &index in &all {
        let reply = alarm(&cluster, index, AlarmAction::Get, 0, AlarmType::None).await;
        assert_eq!(reply.alarms, vec![nospace], "member {index}");
        let reply = alarm(&cluster, index, AlarmAction::Get, 0, AlarmType::Nospace).await;
        assert_eq!(reply.alarms, vec![nospace], "member {index}");
        let reply = alarm(&cluster, index, AlarmAction::Get, 0, AlarmType::Corrupt).await;
        assert!(reply.alarms.is_empty(), "member {index}: {reply:?}");
        let expected_error = format!("memberID:{leader_id} alarm:NOSPACE ");
        poll(&format!("member {index}'s Status to list NOSPACE"), || {
            let cluster = &cluster;
            let expected_error = expected_error.clone();
            async move {
                let reply = status(cluster, index).await.ok()?;
                reply.errors.contains(&expected_error).then_some(())
            }
        })
        .await;
        // Writes that may grow the store are refused; deletes and reads are served.
        let result = cluster
            .kv(index)
            .put(PutRequest {
                key: b("alarm/k"),
                value: b("refused"),
                ..Default::default()
            })
            .await;
        assert_status(
            result,
            Code::ResourceExhausted,
            NO_SPACE,
            &format!("put via member {index} under NOSPACE"),
        );
        let result = cluster
            .kv(index)
            .txn(TxnRequest {
                success: vec![put_op("alarm/txn", "refused")],
                ..Default::default()
            })
            .await;
        assert_status(
            result,
            Code::ResourceExhausted,
            NO_SPACE,
            &format!("txn with a put via member {index} under NOSPACE"),
        );
        let reply = cluster
            .kv(index)
            .txn(TxnRequest {
                success: vec![range_op(range_of(b"alarm/k", b""))],
                ..Default::default()
            })
            .await
            .expect("a read-only txn under NOSPACE")
            .into_inner();
        assert!(reply.succeeded);
        let result = LeaseClient::new(cluster.channel(index))
            .lease_grant(LeaseGrantRequest {
                ttl: LEASE_TTL_SECONDS,
                id: 0,
            })
            .await;
        assert_status(
            result,
            Code::ResourceExhausted,
            NO_SPACE,
            &format!("lease grant via member {index} under NOSPACE"),
        );
    }
    let reply = cluster
        .get(via, "alarm/k", false)
        .await
        .expect("a read under NOSPACE");
    assert_eq!(pairs(&reply.kvs)[0].1, "before");
    let deleted = cluster
        .kv(via)
        .delete_range(DeleteRangeRequest {
            key: b("alarm/k"),
            ..Default::default()
        })
        .await
        .expect("a delete under NOSPACE")
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    let reply = alarm(
        &cluster,
        via,
        AlarmAction::Deactivate,
        leader_id,
        AlarmType::Nospace,
    )
    .await;
    assert_eq!(reply.alarms, vec![nospace], "the cleared alarm");
    for &index in &all {
        let reply = alarm(&cluster, index, AlarmAction::Get, 0, AlarmType::None).await;
        assert!(reply.alarms.is_empty(), "member {index}: {reply:?}");
        cluster
            .kv(index)
            .put(PutRequest {
                key: b("alarm/k"),
                value: format!("after-{index}").into_bytes(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|status| panic!("put via member {index} after DEACTIVATE: {status}"));
    }

    // Defragment every member.
    for &index in &all {
        let reply = cluster
            .maintenance(index)
            .defragment(DefragmentRequest {})
            .await
            .unwrap_or_else(|status| panic!("defragment member {index}: {status}"))
            .into_inner();
        assert_eq!(
            reply.header, None,
            "etcd 3.4 answers Defragment without a header"
        );
        let after = status(&cluster, index).await.expect("status");
        assert!(after.db_size > 0, "{after:?}");
    }
    cluster.put(via, "after/defrag", "ok").await;

    // Hash and HashKV agree across members at one revision.
    for n in 0..20 {
        cluster
            .put(via, &format!("hash/{n:02}"), &format!("{n}"))
            .await;
    }
    cluster
        .kv(via)
        .delete_range(DeleteRangeRequest {
            key: b("hash/00"),
            ..Default::default()
        })
        .await
        .expect("delete");
    let latest = cluster.put(via, "hash/last", "x").await;
    wait_applied_everywhere(&cluster, &all, latest).await;
    let mut hashes = Vec::new();
    let mut hashes_kv = Vec::new();
    let mut hashes_kv_before = Vec::new();
    for &index in &all {
        let mut api = cluster.maintenance(index);
        let hash = api.hash(HashRequest {}).await.expect("hash").into_inner();
        assert_eq!(revision(&hash.header), latest, "member {index}");
        hashes.push(hash.hash);
        let at_latest = api
            .hash_kv(HashKvRequest { revision: latest })
            .await
            .expect("hash kv")
            .into_inner();
        assert_eq!(revision(&at_latest.header), latest, "member {index}");
        let now = api
            .hash_kv(HashKvRequest { revision: 0 })
            .await
            .expect("hash kv now")
            .into_inner();
        assert_eq!(
            now.hash, at_latest.hash,
            "member {index}: revision 0 is now"
        );
        hashes_kv.push((at_latest.hash, at_latest.compact_revision));
        let before = api
            .hash_kv(HashKvRequest {
                revision: latest - 1,
            })
            .await
            .expect("hash kv before")
            .into_inner();
        hashes_kv_before.push(before.hash);
        assert_ne!(before.hash, at_latest.hash, "member {index}");
        assert_status(
            api.hash_kv(HashKvRequest {
                revision: latest + 1,
            })
            .await,
            Code::OutOfRange,
            FUTURE_REVISION,
            "HashKV at a future revision",
        );
    }
    for list in [&hashes, &hashes_kv_before] {
        assert!(list.windows(2).all(|w| w[0] == w[1]), "{list:?}");
    }
    assert!(hashes_kv.windows(2).all(|w| w[0] == w[1]), "{hashes_kv:?}");

    // Snapshot: chunks counting down to zero, then the SHA-256 of all of them.
    for &index in &all {
        let mut stream = cluster
            .maintenance(index)
            .snapshot(SnapshotRequest {})
            .await
            .expect("snapshot")
            .into_inner();
        let mut messages = Vec::new();
        while let Some(message) = stream.message().await.expect("snapshot chunk") {
            messages.push(message);
        }
        let (digest, chunks) = messages.split_last().expect("at least the digest");
        assert!(!chunks.is_empty(), "member {index}: no body");
        assert!(
            messages[0].header.is_some(),
            "the first message has a header"
        );
        assert_eq!(digest.blob.len(), SHA256_BYTES);
        assert_eq!(digest.remaining_bytes, 0);
        let body: Vec<u8> = chunks.iter().flat_map(|m| m.blob.clone()).collect();
        assert_eq!(
            digest.blob,
            Sha256::digest(&body).to_vec(),
            "member {index}"
        );
        assert_eq!(body.len() % SNAPSHOT_ALIGN_BYTES, 0);
        let mut remaining = body.len() as u64;
        for chunk in chunks {
            remaining -= chunk.blob.len() as u64;
            assert_eq!(chunk.remaining_bytes, remaining, "member {index}");
        }
        assert_eq!(chunks.last().map(|c| c.remaining_bytes), Some(0));
    }

    // MoveLeader to no member is refused.
    assert_status(
        cluster
            .maintenance(leader)
            .move_leader(MoveLeaderRequest {
                target_id: UNKNOWN_MEMBER,
            })
            .await,
        Code::FailedPrecondition,
        BAD_LEADER_TRANSFEREE,
        "MoveLeader to an unknown id",
    );
    if size > 1 {
        move_leader_checks(&cluster, &all, leader).await;
    }
    if size == 1 {
        bad_input_checks(&cluster, 0).await;
    }
}

async fn move_leader_checks(cluster: &Cluster, all: &[usize], leader: usize) {
    let target = *all.iter().find(|&&i| i != leader).expect("a follower");
    let target_id = cluster.member_id(target);
    let reply = cluster
        .maintenance(leader)
        .move_leader(MoveLeaderRequest { target_id })
        .await
        .expect("MoveLeader")
        .into_inner();
    assert_eq!(header(&reply.header).member_id, cluster.member_id(leader));
    for &index in all {
        poll(
            &format!("member {index}'s Status to name member {target} leader"),
            || async {
                let reply = status(cluster, index).await.ok()?;
                (reply.leader == target_id).then_some(())
            },
        )
        .await;
    }
    assert_eq!(cluster.wait_leader(all).await, target);
    // The new leader refuses an unknown transferee too, and the cluster writes on.
    assert_status(
        cluster
            .maintenance(target)
            .move_leader(MoveLeaderRequest {
                target_id: UNKNOWN_MEMBER,
            })
            .await,
        Code::FailedPrecondition,
        BAD_LEADER_TRANSFEREE,
        "MoveLeader to an unknown id on the new leader",
    );
    let written = cluster.put(leader, "after/move", "ok").await;
    let reply = cluster
        .get(target, "after/move", false)
        .await
        .expect("linearizable read on the new leader");
    assert_eq!(reply.kvs[0].mod_revision, written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_one_member_and_bad_input() {
    maintenance_suite(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_three_members() {
    maintenance_suite(3).await;
}
