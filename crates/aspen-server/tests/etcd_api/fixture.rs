//! What every case shares: etcd's messages and defaults, small request builders, and the
//! fixture, a started cluster with a writer and a reader picked.

use std::fmt::Debug;

use aspen_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use aspen_proto::etcdserverpb::kv_client::KvClient;
use aspen_proto::etcdserverpb::lease_client::LeaseClient;
use aspen_proto::etcdserverpb::request_op::Request as Op;
use aspen_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest,
    LeaseRevokeRequest, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, TxnRequest, TxnResponse,
};
use aspen_proto::mvccpb::KeyValue;
use tokio::sync::SemaphorePermit;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::common::Turns;
pub use crate::common::{Backend, Cluster, poll, prefix_end};

/// At most two cases of this binary run their processes at once.
static TURNS: Turns = Turns::new(2);

pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
pub const FUTURE_REVISION: &str = "etcdserver: mvcc: required revision is a future revision";
pub const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
pub const KEY_NOT_FOUND: &str = "etcdserver: key not found";
pub const VALUE_PROVIDED: &str = "etcdserver: value is provided";
pub const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
pub const EMPTY_KEY: &str = "etcdserver: key is not provided";
pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
pub const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
pub const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
pub const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
pub const LEARNER_NOT_READY: &str =
    "etcdserver: can only promote a learner member which is in sync with leader";
pub const NOT_LEARNER: &str = "etcdserver: can only promote a learner member";
pub const PEER_URL_EXISTS: &str = "etcdserver: Peer URLs already exists";
pub const BAD_MEMBER_URLS: &str = "etcdserver: given member URLs are invalid";
pub const BAD_LEADER_TRANSFEREE: &str = "etcdserver: bad leader transferee";

/// etcd's default --max-request-bytes (1.5 MiB).
pub const REQUEST_BYTES_MAX: usize = 1536 * 1024;
/// etcd's default --max-txn-ops.
pub const TXN_OPS_MAX: usize = 128;
/// TTL of the leases granted here: far longer than any test, so none expires midway (an
/// expiry would be a write of its own and break the exact revision counts).
pub const LEASE_TTL_SECONDS: i64 = 600;
/// A lease id no one granted.
pub const UNKNOWN_LEASE: i64 = 0x0123_4567_89ab;
/// A member id no one has.
pub const UNKNOWN_MEMBER: u64 = 0x00de_adbe_ef00_0001;
/// Length of the SHA-256 trailer of a Snapshot stream.
pub const SHA256_BYTES: usize = 32;
/// `etcdctl snapshot save` wants the body a multiple of this (see aspen-api maintenance.rs).
pub const SNAPSHOT_ALIGN_BYTES: usize = 512;

// ---------------------------------------------------------------------------------------------
// Small helpers.

pub fn b(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn header(header: &Option<ResponseHeader>) -> ResponseHeader {
    header.expect("a response header")
}

pub fn revision(h: &Option<ResponseHeader>) -> i64 {
    header(h).revision
}

pub fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter().map(|kv| text(&kv.key)).collect()
}

pub fn pairs(kvs: &[KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| (text(&kv.key), text(&kv.value)))
        .collect()
}

pub fn owned(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Asserts that `result` failed with exactly `code` and `message`.
pub fn assert_status<T: Debug>(result: Result<T, Status>, code: Code, message: &str, what: &str) {
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

pub fn range_of(key: &[u8], range_end: &[u8]) -> RangeRequest {
    RangeRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        ..Default::default()
    }
}

pub fn prefix(key: &str) -> RangeRequest {
    range_of(key.as_bytes(), &prefix_end(key.as_bytes()))
}

pub fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: b(key),
            value: b(value),
            ..Default::default()
        })),
    }
}

pub fn range_op(request: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestRange(request)),
    }
}

pub fn delete_op(key: &str, range_end: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
            key: b(key),
            range_end: range_end.to_vec(),
            prev_kv: false,
        })),
    }
}

pub fn compare(key: &str, result: CompareResult, target: TargetUnion) -> Compare {
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
pub struct Via<'a> {
    pub cluster: &'a Cluster,
    /// Receives every write: a follower when there is one.
    pub writer: usize,
    /// Serves every read, linearizable: another follower when there is one.
    pub reader: usize,
    /// Every member.
    pub all: Vec<usize>,
}

impl Via<'_> {
    pub fn kv_writer(&self) -> KvClient<Channel> {
        self.cluster.kv(self.writer)
    }

    pub fn kv_reader(&self) -> KvClient<Channel> {
        self.cluster.kv(self.reader)
    }

    pub fn lease(&self) -> LeaseClient<Channel> {
        LeaseClient::new(self.cluster.channel(self.writer))
    }

    pub async fn put(&self, key: &str, value: &str) -> PutResponse {
        self.put_with(PutRequest {
            key: b(key),
            value: b(value),
            ..Default::default()
        })
        .await
    }

    pub async fn put_with(&self, request: PutRequest) -> PutResponse {
        let what = format!("put {} via member {}", text(&request.key), self.writer);
        self.kv_writer()
            .put(request)
            .await
            .unwrap_or_else(|status| panic!("{what}: {status}"))
            .into_inner()
    }

    pub async fn try_put(&self, request: PutRequest) -> Result<PutResponse, Status> {
        Ok(self.kv_writer().put(request).await?.into_inner())
    }

    /// A linearizable range on the reader.
    pub async fn range(&self, request: RangeRequest) -> RangeResponse {
        self.try_range(request)
            .await
            .unwrap_or_else(|status| panic!("range via member {}: {status}", self.reader))
    }

    pub async fn try_range(&self, request: RangeRequest) -> Result<RangeResponse, Status> {
        Ok(self.kv_reader().range(request).await?.into_inner())
    }

    pub async fn get(&self, key: &str) -> Option<KeyValue> {
        let reply = self.range(range_of(key.as_bytes(), b"")).await;
        assert!(reply.kvs.len() <= 1, "{key}: {reply:?}");
        reply.kvs.into_iter().next()
    }

    pub async fn delete(&self, request: DeleteRangeRequest) -> DeleteRangeResponse {
        self.kv_writer()
            .delete_range(request)
            .await
            .unwrap_or_else(|status| panic!("delete via member {}: {status}", self.writer))
            .into_inner()
    }

    pub async fn txn(&self, request: TxnRequest) -> TxnResponse {
        self.try_txn(request)
            .await
            .unwrap_or_else(|status| panic!("txn via member {}: {status}", self.writer))
    }

    pub async fn try_txn(&self, request: TxnRequest) -> Result<TxnResponse, Status> {
        Ok(self.kv_writer().txn(request).await?.into_inner())
    }

    pub async fn compact(&self, revision: i64, physical: bool) -> Result<i64, Status> {
        let request = CompactionRequest { revision, physical };
        let reply = self.kv_writer().compact(request).await?.into_inner();
        Ok(self::revision(&reply.header))
    }

    /// The cluster's revision now, seen by a linearizable read.
    pub async fn current_revision(&self) -> i64 {
        revision(&self.range(range_of(b"\0", b"")).await.header)
    }

    pub async fn grant(&self) -> i64 {
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

    pub async fn revoke(&self, id: i64) {
        self.lease()
            .lease_revoke(LeaseRevokeRequest { id })
            .await
            .expect("lease revoke");
    }
}

/// A started cluster of its own for one case, with who writes and who reads picked: on three
/// members two different followers, so every write is forwarded and every read is on a member
/// that did not take it. Holds one of the binary's turns until dropped (after the cluster).
pub struct Fixture {
    pub cluster: Cluster,
    /// Receives every write: a follower when there is one.
    pub writer: usize,
    /// Serves every read, linearizable: another follower when there is one.
    pub reader: usize,
    /// Every member.
    pub all: Vec<usize>,
    _turn: SemaphorePermit<'static>,
}

impl Fixture {
    /// Starts `size` members and waits until every member takes a write and serves a
    /// linearizable read.
    pub async fn start(size: usize) -> Fixture {
        let turn = TURNS.take().await;
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
        Fixture {
            cluster,
            writer,
            reader,
            all,
            _turn: turn,
        }
    }

    /// The KV checks' view: writes on the writer, reads on the reader.
    pub fn via(&self) -> Via<'_> {
        Via {
            cluster: &self.cluster,
            writer: self.writer,
            reader: self.reader,
            all: self.all.clone(),
        }
    }

    /// The current leader, once every member agrees on it.
    pub async fn leader(&self) -> usize {
        self.cluster.wait_leader(&self.all).await
    }
}
