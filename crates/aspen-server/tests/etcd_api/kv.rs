//! KV: Range, its sorting and filters, Put, DeleteRange and Compact; writes through one
//! follower read at once on another.

use aspen_proto::etcdserverpb::compare::{CompareResult, TargetUnion};
use aspen_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use aspen_proto::etcdserverpb::{
    DeleteRangeRequest, HashKvRequest, PutRequest, RangeRequest, StatusRequest, TxnRequest,
};
use tonic::Code;

use crate::fixture::*;

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
    assert_eq!(
        everything.count,
        i64::try_from(all_keys.len()).expect("a small count")
    );
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
    assert_eq!(
        reply.count,
        i64::try_from(expected.len()).expect("a small count")
    );

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
    assert_eq!(
        (reply.count, reply.more),
        (i64::try_from(expected.len()).expect("a small count"), true)
    );

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_one_member() {
    range_checks(&Fixture::start(1).await.via()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_three_members() {
    range_checks(&Fixture::start(3).await.via()).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sort_and_filter_one_member() {
    sort_and_filter_checks(&Fixture::start(1).await.via()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sort_and_filter_three_members() {
    sort_and_filter_checks(&Fixture::start(3).await.via()).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_one_member() {
    put_checks(&Fixture::start(1).await.via()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_three_members() {
    put_checks(&Fixture::start(3).await.via()).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_range_one_member() {
    delete_checks(&Fixture::start(1).await.via()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_range_three_members() {
    delete_checks(&Fixture::start(3).await.via()).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_one_member() {
    compact_checks(&Fixture::start(1).await.via()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_three_members() {
    compact_checks(&Fixture::start(3).await.via()).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_then_read_at_once_one_member() {
    follower_checks(&Fixture::start(1).await.via()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_then_read_at_once_through_followers_three_members() {
    follower_checks(&Fixture::start(3).await.via()).await;
}
