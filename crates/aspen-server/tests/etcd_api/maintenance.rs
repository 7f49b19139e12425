//! Maintenance: Status, Alarm (NOSPACE), Defragment, Hash and HashKV, the Snapshot stream and
//! MoveLeader, on one member and on three.

use aspen_proto::etcdserverpb::alarm_request::AlarmAction;
use aspen_proto::etcdserverpb::lease_client::LeaseClient;
use aspen_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DeleteRangeRequest,
    HashKvRequest, HashRequest, LeaseGrantRequest, MoveLeaderRequest, PutRequest, SnapshotRequest,
    StatusRequest, StatusResponse, TxnRequest,
};
use sha2::{Digest, Sha256};
use tonic::{Code, Status};

use crate::fixture::*;

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

/// Status on every member: the same leader, its own id, sane Raft indexes.
async fn status_checks(f: &Fixture) {
    let (cluster, all) = (&f.cluster, f.all.clone());
    let leader = f.leader().await;
    let leader_id = cluster.member_id(leader);

    // Status: the same leader everywhere, each member its own id, sane Raft indexes.
    for &index in &all {
        let reply = poll(
            &format!("member {index}'s Status to name the leader"),
            || async move {
                let reply = status(cluster, index).await.ok()?;
                (reply.leader == leader_id).then_some(reply)
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_one_member() {
    status_checks(&Fixture::start(1).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_three_members() {
    status_checks(&Fixture::start(3).await).await;
}

/// A NOSPACE alarm refuses puts, txns with puts and lease grants on every member, serves reads
/// and deletes, and clears.
async fn alarm_nospace_checks(f: &Fixture) {
    let (cluster, via, all) = (&f.cluster, f.writer, f.all.clone());
    let leader = f.leader().await;
    let leader_id = cluster.member_id(leader);

    // Alarms: none at first.
    for &index in &all {
        let reply = alarm(cluster, index, AlarmAction::Get, 0, AlarmType::None).await;
        assert!(reply.alarms.is_empty(), "member {index}: {reply:?}");
    }
    cluster.put(via, "alarm/k", "before").await;
    let nospace = AlarmMember {
        member_id: leader_id,
        alarm: AlarmType::Nospace as i32,
    };
    let reply = alarm(
        cluster,
        via,
        AlarmAction::Activate,
        leader_id,
        AlarmType::Nospace,
    )
    .await;
    assert_eq!(reply.alarms, vec![nospace]);
    for &index in &all {
        let reply = alarm(cluster, index, AlarmAction::Get, 0, AlarmType::None).await;
        assert_eq!(reply.alarms, vec![nospace], "member {index}");
        let reply = alarm(cluster, index, AlarmAction::Get, 0, AlarmType::Nospace).await;
        assert_eq!(reply.alarms, vec![nospace], "member {index}");
        let reply = alarm(cluster, index, AlarmAction::Get, 0, AlarmType::Corrupt).await;
        assert!(reply.alarms.is_empty(), "member {index}: {reply:?}");
        let expected_error = format!("memberID:{leader_id} alarm:NOSPACE ");
        poll(&format!("member {index}'s Status to list NOSPACE"), || {
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
        cluster,
        via,
        AlarmAction::Deactivate,
        leader_id,
        AlarmType::Nospace,
    )
    .await;
    assert_eq!(reply.alarms, vec![nospace], "the cleared alarm");
    for &index in &all {
        let reply = alarm(cluster, index, AlarmAction::Get, 0, AlarmType::None).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_nospace_one_member() {
    alarm_nospace_checks(&Fixture::start(1).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_nospace_three_members() {
    alarm_nospace_checks(&Fixture::start(3).await).await;
}

/// Defragment on every member, then the cluster writes on.
async fn defragment_checks(f: &Fixture) {
    let (cluster, via, all) = (&f.cluster, f.writer, f.all.clone());

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
        let after = status(cluster, index).await.expect("status");
        assert!(after.db_size > 0, "{after:?}");
    }
    cluster.put(via, "after/defrag", "ok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defragment_one_member() {
    defragment_checks(&Fixture::start(1).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defragment_three_members() {
    defragment_checks(&Fixture::start(3).await).await;
}

/// Hash and HashKV agree across members at one revision.
async fn hash_and_hash_kv_checks(f: &Fixture) {
    let (cluster, via, all) = (&f.cluster, f.writer, f.all.clone());

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
    wait_applied_everywhere(cluster, &all, latest).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_and_hash_kv_one_member() {
    hash_and_hash_kv_checks(&Fixture::start(1).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_and_hash_kv_three_members() {
    hash_and_hash_kv_checks(&Fixture::start(3).await).await;
}

/// The Snapshot stream on every member: chunks counting down, then their SHA-256.
async fn snapshot_stream_checks(f: &Fixture) {
    let (cluster, all) = (&f.cluster, f.all.clone());

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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_stream_one_member() {
    snapshot_stream_checks(&Fixture::start(1).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_stream_three_members() {
    snapshot_stream_checks(&Fixture::start(3).await).await;
}

/// MoveLeader: an unknown transferee is refused; on three members leadership moves to a
/// follower.
async fn move_leader_case(f: &Fixture) {
    let (cluster, all) = (&f.cluster, f.all.clone());
    let leader = f.leader().await;

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
    if all.len() > 1 {
        move_leader_checks(cluster, &all, leader).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_one_member() {
    move_leader_case(&Fixture::start(1).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_three_members() {
    move_leader_case(&Fixture::start(3).await).await;
}

/// Leadership moves to a follower: every member names it, and it serves.
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
