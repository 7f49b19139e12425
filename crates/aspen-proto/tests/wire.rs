//! Byte-level checks that the generated types put etcd's field numbers on the wire.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use aspen_proto::etcdserverpb::{
    Compare, PutRequest, RangeResponse, ResponseHeader, compare, range_request,
};
use aspen_proto::mvccpb::KeyValue;
use prost::Message;

#[test]
fn put_request_field_tags() {
    let req = PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        lease: 5,
        prev_kv: true,
        ..Default::default()
    };
    let bytes = req.encode_to_vec();
    assert_eq!(
        bytes,
        [
            0x0a, 0x01, b'k', // 1: key (LEN)
            0x12, 0x01, b'v', // 2: value (LEN)
            0x18, 0x05, // 3: lease (VARINT)
            0x20, 0x01, // 4: prev_kv (VARINT)
        ]
    );
    assert_eq!(PutRequest::decode(bytes.as_slice()).unwrap(), req);
}

#[test]
fn compare_range_end_is_field_64() {
    let cmp = Compare {
        result: compare::CompareResult::Greater as i32,
        target: compare::CompareTarget::Mod as i32,
        key: b"a".to_vec(),
        range_end: b"b".to_vec(),
        target_union: Some(compare::TargetUnion::ModRevision(7)),
    };
    let bytes = cmp.encode_to_vec();
    assert_eq!(
        bytes,
        [
            0x08, 0x01, // 1: result = GREATER
            0x10, 0x02, // 2: target = MOD
            0x1a, 0x01, b'a', // 3: key
            0x30, 0x07, // 6: mod_revision (target_union)
            0x82, 0x04, 0x01, b'b', // 64: range_end -> tag (64 << 3 | 2) = 514 = 0x82 0x04
        ]
    );
    assert_eq!(Compare::decode(bytes.as_slice()).unwrap(), cmp);
}

#[test]
fn compare_target_union_value_and_lease() {
    let value = Compare {
        target_union: Some(compare::TargetUnion::Value(b"x".to_vec())),
        ..Default::default()
    };
    assert_eq!(value.encode_to_vec(), [0x3a, 0x01, b'x']); // 7: value
    let lease = Compare {
        target_union: Some(compare::TargetUnion::Lease(3)),
        ..Default::default()
    };
    assert_eq!(lease.encode_to_vec(), [0x40, 0x03]); // 8: lease
}

#[test]
fn range_response_decodes_hand_built_bytes() {
    #[rustfmt::skip]
    let bytes: &[u8] = &[
        // 1: header (LEN 8)
        0x0a, 0x08,
            0x08, 0x01, // cluster_id = 1
            0x10, 0x02, // member_id = 2
            0x18, 0x07, // revision = 7
            0x20, 0x03, // raft_term = 3
        // 2: kvs[0] (LEN 14)
        0x12, 0x0e,
            0x0a, 0x01, b'a', // key
            0x10, 0x05,       // create_revision = 5
            0x18, 0x07,       // mod_revision = 7
            0x20, 0x02,       // version = 2
            0x2a, 0x01, b'v', // value
            0x30, 0x09,       // lease = 9
        // 3: more = true
        0x18, 0x01,
        // 4: count = 5
        0x20, 0x05,
    ];
    let resp = RangeResponse::decode(bytes).unwrap();
    assert_eq!(
        resp,
        RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 7,
                raft_term: 3,
            }),
            kvs: vec![KeyValue {
                key: b"a".to_vec(),
                create_revision: 5,
                mod_revision: 7,
                version: 2,
                value: b"v".to_vec(),
                lease: 9,
            }],
            more: true,
            count: 5,
        }
    );
    // Canonical encoding round-trips byte for byte.
    assert_eq!(resp.encode_to_vec(), bytes);
}

#[test]
fn enum_values_match_etcd() {
    assert_eq!(range_request::SortOrder::Descend as i32, 2);
    assert_eq!(range_request::SortTarget::Value as i32, 4);
    assert_eq!(compare::CompareResult::NotEqual as i32, 3);
    assert_eq!(compare::CompareTarget::Lease as i32, 4);
    assert_eq!(aspen_proto::etcdserverpb::AlarmType::Corrupt as i32, 2);
    assert_eq!(aspen_proto::mvccpb::event::EventType::Delete as i32, 1);
    assert_eq!(
        aspen_proto::etcdserverpb::watch_create_request::FilterType::Nodelete as i32,
        1
    );
}

#[test]
fn watch_create_request_tags() {
    use aspen_proto::etcdserverpb::{WatchCreateRequest, WatchRequest, watch_request};
    let req = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: b"k".to_vec(),
                progress_notify: true,
                filters: vec![1],
                prev_kv: true,
                watch_id: 4,
                fragment: true,
                ..Default::default()
            },
        )),
    };
    assert_eq!(
        req.encode_to_vec(),
        [
            0x0a, 0x0e, // 1: create_request (LEN 14)
            0x0a, 0x01, b'k', // 1: key
            0x20, 0x01, // 4: progress_notify
            0x2a, 0x01, 0x01, // 5: filters, packed [NODELETE]
            0x30, 0x01, // 6: prev_kv
            0x38, 0x04, // 7: watch_id
            0x40, 0x01, // 8: fragment
        ]
    );
}

#[test]
fn status_response_34_fields() {
    use aspen_proto::etcdserverpb::StatusResponse;
    let resp = StatusResponse {
        raft_applied_index: 1,
        errors: vec!["e".into()],
        db_size_in_use: 2,
        is_learner: true,
        ..Default::default()
    };
    assert_eq!(
        resp.encode_to_vec(),
        [
            0x38, 0x01, // 7: raftAppliedIndex
            0x42, 0x01, b'e', // 8: errors
            0x48, 0x02, // 9: dbSizeInUse
            0x50, 0x01, // 10: isLearner
        ]
    );
}

#[test]
fn grpc_service_names_match_etcd() {
    use aspen_proto::etcdserverpb::{
        auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
        lease_server::LeaseServer, maintenance_server::MaintenanceServer,
        watch_server::WatchServer,
    };
    use aspen_proto::peer::raft_peer_server::RaftPeerServer;
    use tonic::server::NamedService;

    fn name<S: NamedService>() -> &'static str {
        S::NAME
    }
    // The type parameter is irrelevant to NAME; use a dummy that satisfies no bound.
    struct Any;
    assert_eq!(name::<KvServer<Any>>(), "etcdserverpb.KV");
    assert_eq!(name::<WatchServer<Any>>(), "etcdserverpb.Watch");
    assert_eq!(name::<LeaseServer<Any>>(), "etcdserverpb.Lease");
    assert_eq!(name::<ClusterServer<Any>>(), "etcdserverpb.Cluster");
    assert_eq!(name::<MaintenanceServer<Any>>(), "etcdserverpb.Maintenance");
    assert_eq!(name::<AuthServer<Any>>(), "etcdserverpb.Auth");
    assert_eq!(name::<RaftPeerServer<Any>>(), "aspenpb.peer.RaftPeer");
    assert_eq!(
        name::<aspen_proto::v3lockpb::lock_server::LockServer<Any>>(),
        "v3lockpb.Lock"
    );
    assert_eq!(
        name::<aspen_proto::v3electionpb::election_server::ElectionServer<Any>>(),
        "v3electionpb.Election"
    );
}

/// etcd's `LeaderKey` and `ProclaimRequest`, hand-encoded: name=1, key=2, rev=3, lease=4;
/// leader=1, value=2.
#[test]
fn election_message_tags() {
    use aspen_proto::v3electionpb::{LeaderKey, ProclaimRequest};
    let leader = LeaderKey {
        name: b"e".to_vec(),
        key: b"e/1".to_vec(),
        rev: 5,
        lease: 1,
    };
    let bytes = leader.encode_to_vec();
    assert_eq!(
        bytes,
        vec![0x0a, 1, b'e', 0x12, 3, b'e', b'/', b'1', 0x18, 5, 0x20, 1]
    );
    let proclaim = ProclaimRequest {
        leader: Some(leader),
        value: b"v".to_vec(),
    };
    let mut expected = vec![0x0a, u8::try_from(bytes.len()).expect("a short message")];
    expected.extend_from_slice(&bytes);
    expected.extend_from_slice(&[0x12, 1, b'v']);
    assert_eq!(proclaim.encode_to_vec(), expected);
}

/// etcd's `LockRequest`: name=1, lease=2.
#[test]
fn lock_request_tags() {
    use aspen_proto::v3lockpb::LockRequest;
    let request = LockRequest {
        name: b"l".to_vec(),
        lease: 7,
    };
    assert_eq!(request.encode_to_vec(), vec![0x0a, 1, b'l', 0x10, 7]);
}
