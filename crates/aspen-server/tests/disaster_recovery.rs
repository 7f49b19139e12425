//! Disaster recovery with real processes, as the README's runbook does it:
//! - a lost majority: three members under write load, one follower hung (SIGSTOP), then
//!   SIGKILL of the leader and of the hung follower, then of the surviving follower, which
//!   restarts with `--force-new-cluster` as a one-member cluster holding every acknowledged
//!   write (value and revision), the lease and the auth store; an old member that
//!   comes back with its old data cannot disrupt it; `MemberAdd` plus a member started with
//!   `--initial-cluster-state existing` grows it back to three, and the new members catch up
//!   and serve linearizable reads;
//! - a lost cluster: a snapshot file saved from one member (the Maintenance `Snapshot` RPC that
//!   `etcdctl snapshot save` calls), `aspen snapshot restore` for each member of a new
//!   cluster, which then serves the same keys, revisions and leases and takes writes.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aspen_proto::authpb::{Permission, UserAddOptions, permission};
use aspen_proto::etcdserverpb::auth_client::AuthClient;
use aspen_proto::etcdserverpb::lease_client::LeaseClient;
use aspen_proto::etcdserverpb::{
    AuthRoleAddRequest, AuthRoleGetRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
    AuthUserGetRequest, AuthUserGrantRoleRequest, CompactionRequest, DeleteRangeRequest,
    HashKvRequest, LeaseGrantRequest, LeaseTimeToLiveRequest, MemberAddRequest, MemberListRequest,
    PutRequest, RangeRequest, RangeResponse, SnapshotRequest,
};
use common::{Backend, Cluster, poll, put_retry};
use tokio::task::JoinHandle;

/// Acknowledged writes to collect before the majority is killed.
const ACKED_WRITES_MIN: u64 = 300;
/// Concurrent writers, spread over the members.
const WRITERS: usize = 6;
/// One write attempt's deadline: a write the cluster cannot commit fails instead of hanging.
const WRITE_ATTEMPT_MS_MAX: u64 = 2_000;
/// The lease the tests attach keys to: long enough to outlive the test.
const LEASE_TTL_S: i64 = 600;
const PREFIX: &str = "dr/";

/// A put the cluster acknowledged, with the revision it reported.
#[derive(Debug, Clone)]
struct Acked {
    key: String,
    value: String,
    revision: i64,
}

/// Writers putting unique keys under `PREFIX` through `members` until `stop`; each returns
/// the writes that were acknowledged. An attempt that fails or times out is not retried (its
/// outcome is unknown) and the next key is written.
fn spawn_writers(
    cluster: &Cluster,
    members: &[usize],
    stop: &Arc<AtomicBool>,
    acked_total: &Arc<AtomicU64>,
) -> Vec<JoinHandle<Vec<Acked>>> {
    (0..WRITERS)
        .map(|writer| {
            let mut kv = cluster.kv(members[writer % members.len()]);
            let stop = stop.clone();
            let acked_total = acked_total.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let key = format!("{PREFIX}w{writer}/{seq:06}");
                    let value = format!("value of {key}");
                    let request = PutRequest {
                        key: key.clone().into_bytes(),
                        value: value.clone().into_bytes(),
                        ..Default::default()
                    };
                    let attempt = Duration::from_millis(WRITE_ATTEMPT_MS_MAX);
                    if let Ok(Ok(reply)) = tokio::time::timeout(attempt, kv.put(request)).await {
                        let revision = reply.into_inner().header.expect("header").revision;
                        acked.push(Acked {
                            key,
                            value,
                            revision,
                        });
                        acked_total.fetch_add(1, Ordering::Relaxed);
                    }
                }
                acked
            })
        })
        .collect()
}

/// key -> (value, create revision, mod revision, version, lease).
type Keyspace = BTreeMap<String, (String, i64, i64, i64, i64)>;

fn keyspace(reply: &RangeResponse) -> Keyspace {
    reply
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                (
                    String::from_utf8_lossy(&kv.value).into_owned(),
                    kv.create_revision,
                    kv.mod_revision,
                    kv.version,
                    kv.lease,
                ),
            )
        })
        .collect()
}

/// Every key of member `index`, read linearizably, and the store revision.
async fn all_keys(cluster: &Cluster, index: usize) -> (Keyspace, i64) {
    let everything = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    let reply = cluster
        .kv(index)
        .range(everything)
        .await
        .unwrap_or_else(|status| panic!("range on member {index}: {status}"))
        .into_inner();
    let revision = reply.header.as_ref().expect("header").revision;
    (keyspace(&reply), revision)
}

fn assert_every_acked_write_is_there(acked: &[Acked], keys: &Keyspace, what: &str) {
    for write in acked {
        let Some((value, create, modified, version, _)) = keys.get(&write.key) else {
            panic!("{what}: acknowledged {write:?} is missing");
        };
        assert_eq!(value, &write.value, "{what}: value of {}", write.key);
        assert_eq!(
            (*create, *modified, *version),
            (write.revision, write.revision, 1),
            "{what}: revisions of {} (written once, acknowledged at {})",
            write.key,
            write.revision
        );
    }
}

/// A lease with one key on it, and a user holding a role with a permission (auth stays off).
async fn write_lease_and_auth(cluster: &Cluster, index: usize) -> i64 {
    let mut leases = LeaseClient::new(cluster.channel(index));
    let lease = leases
        .lease_grant(LeaseGrantRequest {
            ttl: LEASE_TTL_S,
            id: 0,
        })
        .await
        .expect("lease grant")
        .into_inner()
        .id;
    cluster
        .kv(index)
        .put(PutRequest {
            key: b"leased".to_vec(),
            value: b"on a lease".to_vec(),
            lease,
            ..Default::default()
        })
        .await
        .expect("put on the lease");
    let mut auth = AuthClient::new(cluster.channel(index));
    auth.user_add(AuthUserAddRequest {
        name: "operator".into(),
        options: Some(UserAddOptions { no_password: true }),
        ..Default::default()
    })
    .await
    .expect("user add");
    auth.role_add(AuthRoleAddRequest {
        name: "reader".into(),
    })
    .await
    .expect("role add");
    auth.role_grant_permission(AuthRoleGrantPermissionRequest {
        name: "reader".into(),
        perm: Some(Permission {
            perm_type: permission::Type::Read as i32,
            key: PREFIX.as_bytes().to_vec(),
            range_end: common::prefix_end(PREFIX.as_bytes()),
        }),
    })
    .await
    .expect("grant permission");
    auth.user_grant_role(AuthUserGrantRoleRequest {
        user: "operator".into(),
        role: "reader".into(),
    })
    .await
    .expect("grant role");
    lease
}

async fn assert_lease_and_auth(cluster: &Cluster, index: usize, lease: i64) {
    let ttl = LeaseClient::new(cluster.channel(index))
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: lease,
            keys: true,
        })
        .await
        .expect("lease time to live")
        .into_inner();
    assert!(ttl.ttl > 0, "lease {lease:x} is gone: {ttl:?}");
    assert_eq!(ttl.keys, vec![b"leased".to_vec()]);
    let mut auth = AuthClient::new(cluster.channel(index));
    let user = auth
        .user_get(AuthUserGetRequest {
            name: "operator".into(),
        })
        .await
        .expect("user get")
        .into_inner();
    assert_eq!(user.roles, vec!["reader".to_string()]);
    let role = auth
        .role_get(AuthRoleGetRequest {
            role: "reader".into(),
        })
        .await
        .expect("role get")
        .into_inner();
    assert_eq!(role.perm.len(), 1);
    assert_eq!(role.perm[0].key, PREFIX.as_bytes());
}

async fn member_ids(cluster: &Cluster, index: usize) -> Vec<u64> {
    let reply = cluster
        .cluster_api(index)
        .member_list(MemberListRequest::default())
        .await
        .expect("member list")
        .into_inner();
    let mut ids: Vec<u64> = reply.members.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    ids
}

fn raft_term(reply: &RangeResponse) -> u64 {
    reply.header.as_ref().expect("header").raft_term
}

/// `etcdctl member add` for planned member `fresh` through member `via`, then starts it with
/// `--initial-cluster-state existing` and `--initial-cluster` listing `members` and itself;
/// returns once it serves a linearizable read of `key` with `value`.
async fn add_member_back(
    cluster: &mut Cluster,
    via: usize,
    fresh: usize,
    members: &[usize],
    key: &str,
    value: &str,
) {
    let added = cluster
        .cluster_api(via)
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![cluster.members[fresh].peer_url()],
            is_learner: false,
        })
        .await
        .expect("member add")
        .into_inner();
    assert_eq!(
        added.member.expect("added member").id,
        cluster.member_id(fresh),
        "MemberAdd gives the id the new member's flags derive"
    );
    let mut initial: Vec<usize> = members.to_vec();
    initial.push(fresh);
    cluster.start_with(fresh, &initial, "existing");
    let description = format!("a linearizable read of {key} on new member {fresh}");
    poll(&description, || async {
        let reply = cluster.get(fresh, key, false).await.ok()?;
        let kv = reply.kvs.first()?;
        (kv.value == value.as_bytes()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_after_losing_two_of_three_keeps_every_acknowledged_write() {
    let mut cluster = Cluster::new(3, Backend::Redb, None);
    cluster.start_all();
    let all = [0, 1, 2];
    let leader = cluster.wait_leader(&all).await;
    let followers: Vec<usize> = all.into_iter().filter(|i| *i != leader).collect();
    // The survivor is a follower: it learns that an entry is committed only from the leader's
    // next message, so the last acknowledged writes are in its log past the committed index it
    // recorded. The other follower hangs (SIGSTOP), so every acknowledged write had the
    // survivor in its quorum: a rule that kept only the recorded committed entries would lose
    // some.
    let (survivor, frozen) = (followers[0], followers[1]);
    let lease = write_lease_and_auth(&cluster, leader).await;
    cluster.stop(frozen);

    // Writes through the leader and the survivor, acknowledged or not, while both die.
    let stop = Arc::new(AtomicBool::new(false));
    let acked_total = Arc::new(AtomicU64::new(0));
    let writers = spawn_writers(&cluster, &[leader, survivor], &stop, &acked_total);
    poll("acknowledged writes under load", || async {
        (acked_total.load(Ordering::Relaxed) >= ACKED_WRITES_MIN).then_some(())
    })
    .await;
    cluster.kill(leader);
    cluster.kill(frozen);
    // Nothing commits any more: the writers' attempts now fail.
    poll("writes to stop being acknowledged", || async {
        let before = acked_total.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(WRITE_ATTEMPT_MS_MAX + 500)).await;
        (acked_total.load(Ordering::Relaxed) == before).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(writer.await.expect("writer"));
    }
    assert!(acked.len() as u64 >= ACKED_WRITES_MIN);
    let acked_revision_max = acked.iter().map(|w| w.revision).max().unwrap_or(0);
    cluster.kill(survivor);

    // The survivor's own flags, plus --force-new-cluster.
    cluster.extra_args.push("--force-new-cluster".into());
    cluster.start(survivor);
    cluster.extra_args.pop();
    cluster.wait_leader(&[survivor]).await;
    let log = cluster.process(survivor).log();
    assert!(
        log.contains("this member is now the only member of its cluster"),
        "{log}"
    );
    assert_eq!(
        member_ids(&cluster, survivor).await,
        vec![cluster.member_id(survivor)]
    );
    let (keys, revision) = all_keys(&cluster, survivor).await;
    assert_every_acked_write_is_there(&acked, &keys, "after --force-new-cluster");
    assert!(
        revision >= acked_revision_max,
        "store revision {revision} below an acknowledged write's {acked_revision_max}"
    );
    assert_lease_and_auth(&cluster, survivor, lease).await;
    let after = put_retry(&cluster.kv(survivor), "after-force", "1", "the survivor").await;
    assert!(after > revision, "a new write gets a new revision");

    // An old member that comes back with its old data is refused by the survivor, whose term
    // does not move: it keeps leading and writing.
    let term = raft_term(
        &cluster
            .get(survivor, "after-force", false)
            .await
            .expect("get"),
    );
    let old = frozen;
    cluster.start(old);
    let survivor_log = cluster.process(survivor).log_path.clone();
    poll("the survivor refusing the old member", || async {
        let log = std::fs::read_to_string(&survivor_log).unwrap_or_default();
        (log.contains("refused a peer message") && log.contains("is not a member of cluster"))
            .then_some(())
    })
    .await;
    put_retry(
        &cluster.kv(survivor),
        "after-old-member",
        "1",
        "the survivor",
    )
    .await;
    let reply = cluster
        .get(survivor, "after-old-member", false)
        .await
        .expect("get");
    assert_eq!(
        raft_term(&reply),
        term,
        "the old member moved the survivor's term"
    );
    cluster.kill(old);

    // Grow back to three members, then lose one of them: the cluster is a real three.
    let first = cluster.plan_member(None);
    add_member_back(
        &mut cluster,
        survivor,
        first,
        &[survivor],
        "after-old-member",
        "1",
    )
    .await;
    let second = cluster.plan_member(None);
    add_member_back(
        &mut cluster,
        survivor,
        second,
        &[survivor, first],
        "after-old-member",
        "1",
    )
    .await;
    let mut ids = vec![
        cluster.member_id(survivor),
        cluster.member_id(first),
        cluster.member_id(second),
    ];
    ids.sort_unstable();
    assert_eq!(member_ids(&cluster, second).await, ids);
    for index in [first, second] {
        let (copy, _) = all_keys(&cluster, index).await;
        assert_every_acked_write_is_there(&acked, &copy, &format!("new member {index}"));
        assert_lease_and_auth(&cluster, index, lease).await;
    }
    cluster.kill(first);
    put_retry(&cluster.kv(second), "two-of-three", "1", "a new member").await;
    let (survivor_keys, _) = all_keys(&cluster, survivor).await;
    let (second_keys, _) = all_keys(&cluster, second).await;
    assert_eq!(survivor_keys, second_keys);
}

/// A saved snapshot from `via`, as `etcdctl snapshot save` writes it.
async fn save_snapshot(cluster: &Cluster, via: usize, file: &Path) {
    let mut stream = cluster
        .maintenance(via)
        .snapshot(SnapshotRequest {})
        .await
        .expect("snapshot")
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(message) = stream.message().await.expect("snapshot chunk") {
        bytes.extend_from_slice(&message.blob);
    }
    std::fs::write(file, &bytes).expect("write snapshot file");
}

fn restore(file: &Path, flags: &[String]) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_aspen"))
        .args(["snapshot", "restore"])
        .arg(file)
        .args(flags)
        .output()
        .expect("run aspen snapshot restore");
    assert!(
        output.status.success(),
        "aspen snapshot restore: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_cluster_comes_back_from_a_snapshot_file() {
    let mut source = Cluster::new(3, Backend::Redb, None);
    source.start_all();
    let all = [0, 1, 2];
    let leader = source.wait_leader(&all).await;
    for i in 0..50 {
        source
            .put(leader, &format!("{PREFIX}{i:03}"), &format!("first {i}"))
            .await;
    }
    for i in 0..10 {
        source
            .put(leader, &format!("{PREFIX}{i:03}"), &format!("second {i}"))
            .await;
    }
    source
        .kv(leader)
        .delete_range(DeleteRangeRequest {
            key: format!("{PREFIX}049").into_bytes(),
            ..Default::default()
        })
        .await
        .expect("delete");
    source
        .kv(leader)
        .compact(CompactionRequest {
            revision: 20,
            physical: true,
        })
        .await
        .expect("compact");
    let lease = write_lease_and_auth(&source, leader).await;
    let (expected, revision) = all_keys(&source, leader).await;
    let file = source.dir.path().join("backup.db");
    save_snapshot(&source, leader, &file).await;
    // The whole cluster is lost.
    for index in all {
        source.kill(index);
    }

    // A new cluster (new data dirs and ports) restored from the file, member by member.
    let mut restored = Cluster::new(3, Backend::Redb, None);
    for index in all {
        restore(&file, &restored.args(index, &all, "new"));
    }
    restored.start_all();
    let leader = restored.wait_leader(&all).await;
    let (keys, restored_revision) = all_keys(&restored, leader).await;
    assert_eq!(
        keys, expected,
        "keys, values, revisions, versions and leases"
    );
    assert_eq!(restored_revision, revision);
    assert_lease_and_auth(&restored, leader, lease).await;
    let after = restored.put(leader, "after-restore", "1").await;
    assert_eq!(after, revision + 1);
    let mut hashes = Vec::new();
    for index in all {
        // Each member has applied the write before its hash is taken.
        poll("the write on every member", || async {
            let reply = restored.get(index, "after-restore", true).await.ok()?;
            (!reply.kvs.is_empty()).then_some(())
        })
        .await;
        let hash = restored
            .maintenance(index)
            .hash_kv(HashKvRequest { revision: 0 })
            .await
            .expect("hash kv")
            .into_inner()
            .hash;
        hashes.push(hash);
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
}
