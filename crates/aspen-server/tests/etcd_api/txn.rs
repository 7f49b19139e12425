//! KV: Txn: every compare, both branches, nested txns, the op limit, duplicate keys, and all or
//! nothing.

use aspen_proto::etcdserverpb::compare::{CompareResult, TargetUnion};
use aspen_proto::etcdserverpb::request_op::Request as Op;
use aspen_proto::etcdserverpb::response_op::Response as OpResponse;
use aspen_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeResponse, RequestOp, TxnRequest,
};
use tonic::Code;

use crate::fixture::*;

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
    assert_eq!(
        v.range(prefix("t/many/")).await.count,
        i64::try_from(TXN_OPS_MAX).expect("a small constant")
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_one_member() {
    txn_checks(&Fixture::start(1).await.via()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_three_members() {
    txn_checks(&Fixture::start(3).await.via()).await;
}
