//! etcd's server-side Lock (`v3lockpb.Lock`) and Election (`v3electionpb.Election`) services
//! against real `aspen` processes, through the generated gRPC clients.
//!
//! "Blocks" is asserted by watching a call for `HOLD_MS` and seeing it not finish; everything
//! else waits with a deadline for what must happen.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use std::time::Duration;

use aspen_proto::etcdserverpb::lease_client::LeaseClient;
use aspen_proto::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest};
use aspen_proto::v3electionpb::election_client::ElectionClient;
use aspen_proto::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ResignRequest,
};
use aspen_proto::v3lockpb::lock_client::LockClient;
use aspen_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest};
use common::{Backend, Cluster};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

/// Longest wait for one expected answer.
const WAIT_MS: u64 = 10_000;
/// How long a blocked call is watched to make sure it stays blocked.
const HOLD_MS: u64 = 500;

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_millis(WAIT_MS), future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT_MS} ms waiting for {what}"))
}

/// Asserts `task` is still running after `HOLD_MS`.
async fn still_blocked<T>(what: &str, task: &JoinHandle<T>) {
    tokio::time::sleep(Duration::from_millis(HOLD_MS)).await;
    assert!(!task.is_finished(), "{what} finished while it should block");
}

/// A channel without a per-call deadline: Lock and Campaign may wait, Observe streams.
fn channel(cluster: &Cluster, index: usize) -> Channel {
    Endpoint::from_shared(cluster.members[index].client_url())
        .expect("client url")
        .connect_timeout(Duration::from_millis(1_000))
        .connect_lazy()
}

async fn single_member() -> (Cluster, Channel) {
    let mut cluster = Cluster::new(1, Backend::Redb, None);
    cluster.start_all();
    cluster.wait_leader(&[0]).await;
    let channel = channel(&cluster, 0);
    (cluster, channel)
}

async fn grant(channel: &Channel, ttl: i64) -> i64 {
    let request = LeaseGrantRequest { ttl, id: 0 };
    let granted = LeaseClient::new(channel.clone())
        .lease_grant(request)
        .await
        .expect("grant");
    granted.into_inner().id
}

async fn revoke(channel: &Channel, id: i64) {
    LeaseClient::new(channel.clone())
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .expect("revoke");
}

fn spawn_lock(
    channel: &Channel,
    name: &str,
    lease: i64,
) -> JoinHandle<Result<LockResponse, Status>> {
    let mut client = LockClient::new(channel.clone());
    let request = LockRequest {
        name: name.as_bytes().to_vec(),
        lease,
    };
    tokio::spawn(async move { client.lock(request).await.map(|r| r.into_inner()) })
}

async fn lock(channel: &Channel, name: &str, lease: i64) -> Result<LockResponse, Status> {
    within("lock", spawn_lock(channel, name, lease))
        .await
        .expect("lock task")
}

async fn unlock(channel: &Channel, key: &[u8]) -> Result<i64, Status> {
    let request = UnlockRequest { key: key.to_vec() };
    let response = LockClient::new(channel.clone()).unlock(request).await?;
    Ok(response.into_inner().header.expect("header").revision)
}

fn revision(response: &LockResponse) -> i64 {
    response.header.as_ref().expect("header").revision
}

/// The key's create revision, if it exists.
async fn create_revision(cluster: &Cluster, key: &[u8]) -> Option<i64> {
    let key = std::str::from_utf8(key).expect("utf-8 key");
    let found = cluster.get(0, key, false).await.expect("get");
    found.kvs.first().map(|kv| kv.create_revision)
}

async fn wait_queued(cluster: &Cluster, key: &str) {
    common::poll(&format!("{key} to be queued"), || async {
        let found = cluster.get(0, key, false).await.ok()?;
        (!found.kvs.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_locker_waits_until_the_first_unlocks() {
    let (cluster, channel) = single_member().await;
    let a = grant(&channel, 30).await;
    let b = grant(&channel, 30).await;

    let held = lock(&channel, "lk", a).await.expect("A locks");
    assert_eq!(held.key, format!("lk/{a:x}").into_bytes());
    let a_created = create_revision(&cluster, &held.key).await;
    assert_eq!(
        a_created,
        Some(revision(&held)),
        "the uncontended lock put the key"
    );
    // Locking again with the same lease is the same acquisition: at once, same key.
    let again = lock(&channel, "lk", a).await.expect("A locks again");
    assert_eq!(again.key, held.key);
    assert_eq!(create_revision(&cluster, &held.key).await, a_created);

    let waiter = spawn_lock(&channel, "lk", b);
    wait_queued(&cluster, &format!("lk/{b:x}")).await;
    still_blocked("B's lock while A holds it", &waiter).await;

    let unlocked_at = unlock(&channel, &held.key).await.expect("unlock");
    let got = within("B's lock after A unlocked", waiter)
        .await
        .expect("lock task")
        .expect("B locks");
    assert_eq!(got.key, format!("lk/{b:x}").into_bytes());
    assert!(
        revision(&got) >= unlocked_at,
        "{got:?} before {unlocked_at}"
    );
    assert_eq!(create_revision(&cluster, &held.key).await, None);

    // A queues behind B now.
    let a_waits = spawn_lock(&channel, "lk", a);
    wait_queued(&cluster, &format!("lk/{a:x}")).await;
    still_blocked("A's lock while B holds it", &a_waits).await;
    unlock(&channel, &got.key).await.expect("unlock");
    let a_again = within("A's lock after B unlocked", a_waits)
        .await
        .expect("lock task")
        .expect("A locks");
    unlock(&channel, &a_again.key).await.expect("unlock");
    let left = cluster.get_prefix(0, "lk/", false).await.expect("get");
    assert!(left.kvs.is_empty(), "every lock key was deleted: {left:?}");

    // Unlocking a key that does not exist is fine; an empty key is refused as etcd 3.4
    // refuses it (`Unknown`, with the KV service's message).
    unlock(&channel, b"lk/none")
        .await
        .expect("unlock of nothing");
    let empty = unlock(&channel, b"").await.expect_err("empty key");
    assert_eq!(empty.code(), Code::Unknown);
    assert_eq!(empty.message(), "etcdserver: key is not provided");
    // An empty name is no error in etcd either: the key is `/<lease>`.
    let unnamed = lock(&channel, "", a)
        .await
        .expect("lock with an empty name");
    assert_eq!(unnamed.key, format!("/{a:x}").into_bytes());
    unlock(&channel, &unnamed.key).await.expect("unlock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_errors_lease_end_and_cancelled_waiters() {
    let (cluster, channel) = single_member().await;

    // An unknown lease: etcd's lease-not-found error, and no key is left. etcd 3.4 sends every
    // Lock and Election error as `Unknown` with etcd's message (its services call an
    // in-process client, which turns status errors into plain errors).
    let unknown = lock(&channel, "lk", 0x1234)
        .await
        .expect_err("unknown lease");
    assert_eq!(unknown.code(), Code::Unknown, "{unknown:?}");
    assert_eq!(unknown.message(), "etcdserver: requested lease not found");
    assert!(
        cluster
            .get_prefix(0, "lk/", false)
            .await
            .unwrap()
            .kvs
            .is_empty()
    );

    // Revoking the holder's lease deletes its key and hands the lock to the waiter.
    let a = grant(&channel, 30).await;
    let b = grant(&channel, 30).await;
    let held = lock(&channel, "lk", a).await.expect("A locks");
    let waiter = spawn_lock(&channel, "lk", b);
    wait_queued(&cluster, &format!("lk/{b:x}")).await;
    still_blocked("B's lock while A holds it", &waiter).await;
    revoke(&channel, a).await;
    let got = within("B's lock after A's lease was revoked", waiter)
        .await
        .expect("lock task")
        .expect("B locks");
    assert_eq!(got.key, format!("lk/{b:x}").into_bytes());
    assert_eq!(create_revision(&cluster, &held.key).await, None);

    // A waiter whose client gives up leaves no key behind (etcd unlocks on a failed wait).
    let c = grant(&channel, 30).await;
    let c_key = format!("lk/{c:x}");
    let mut client = LockClient::new(channel.clone());
    let request = LockRequest {
        name: b"lk".to_vec(),
        lease: c,
    };
    let gave_up = tokio::time::timeout(Duration::from_millis(HOLD_MS), client.lock(request)).await;
    assert!(gave_up.is_err(), "C locked while B holds the lock");
    common::poll("the cancelled waiter's key to be deleted", || async {
        let found = cluster.get(0, &c_key, false).await.ok()?;
        found.kvs.is_empty().then_some(())
    })
    .await;
    assert!(
        create_revision(&cluster, &got.key).await.is_some(),
        "B still holds"
    );

    // Lease 0: like etcd's session, the server grants a 60 s lease for the lock.
    let own = lock(&channel, "lk0", 0)
        .await
        .expect("lock without a lease");
    let key = String::from_utf8(own.key.clone()).expect("utf-8");
    let hex = key
        .strip_prefix("lk0/")
        .expect("key under the lock's prefix");
    let lease = i64::from_str_radix(hex, 16).expect("hex lease id");
    let found = cluster.get(0, &key, false).await.expect("get");
    assert_eq!(found.kvs[0].lease, lease);
    let ttl = LeaseClient::new(channel.clone())
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: lease,
            keys: true,
        })
        .await
        .expect("time to live")
        .into_inner();
    assert_eq!(ttl.granted_ttl, 60);
    assert_eq!(ttl.keys, vec![own.key.clone()]);
}

/// A waiter on a follower: the request is served there (forwarded writes, the follower's own
/// watch hub) and still waits for the holder on the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_through_a_follower() {
    let mut cluster = Cluster::new(3, Backend::Redb, None);
    cluster.start_all();
    let leader = cluster.wait_leader(&[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    let on_leader = channel(&cluster, leader);
    let on_follower = channel(&cluster, follower);
    let a = grant(&on_leader, 30).await;
    let b = grant(&on_follower, 30).await;
    let held = lock(&on_leader, "fl", a).await.expect("A locks");
    let waiter = spawn_lock(&on_follower, "fl", b);
    common::poll("B's key to be queued", || async {
        let found = cluster
            .get(leader, &format!("fl/{b:x}"), false)
            .await
            .ok()?;
        (!found.kvs.is_empty()).then_some(())
    })
    .await;
    still_blocked("B's lock on the follower while A holds it", &waiter).await;
    unlock(&on_leader, &held.key).await.expect("unlock");
    let got = within("B's lock after A unlocked", waiter)
        .await
        .expect("lock task")
        .expect("B locks");
    assert_eq!(got.key, format!("fl/{b:x}").into_bytes());
}

fn leader_request(name: &str) -> LeaderRequest {
    LeaderRequest {
        name: name.as_bytes().to_vec(),
    }
}

fn spawn_campaign(
    channel: &Channel,
    name: &str,
    lease: i64,
    value: &str,
) -> JoinHandle<Result<LeaderKey, Status>> {
    let mut client = ElectionClient::new(channel.clone());
    let request = CampaignRequest {
        name: name.as_bytes().to_vec(),
        lease,
        value: value.as_bytes().to_vec(),
    };
    tokio::spawn(async move {
        let response = client.campaign(request).await?.into_inner();
        Ok(response.leader.expect("leader key"))
    })
}

async fn campaign(channel: &Channel, name: &str, lease: i64, value: &str) -> LeaderKey {
    within("campaign", spawn_campaign(channel, name, lease, value))
        .await
        .expect("campaign task")
        .expect("campaign")
}

async fn proclaim(channel: &Channel, leader: &LeaderKey, value: &str) -> Result<(), Status> {
    let request = ProclaimRequest {
        leader: Some(leader.clone()),
        value: value.as_bytes().to_vec(),
    };
    ElectionClient::new(channel.clone())
        .proclaim(request)
        .await
        .map(drop)
}

async fn resign(channel: &Channel, leader: &LeaderKey) {
    let request = ResignRequest {
        leader: Some(leader.clone()),
    };
    ElectionClient::new(channel.clone())
        .resign(request)
        .await
        .expect("resign");
}

/// The current leader's key and value, or the error.
async fn leader(channel: &Channel, name: &str) -> Result<(Vec<u8>, String), Status> {
    let response = ElectionClient::new(channel.clone())
        .leader(leader_request(name))
        .await?
        .into_inner();
    let kv = response.kv.expect("kv");
    Ok((kv.key, String::from_utf8(kv.value).expect("utf-8")))
}

async fn observed(stream: &mut Streaming<LeaderResponse>) -> String {
    let response = within("an observed leader value", stream.message())
        .await
        .expect("observe stream")
        .expect("observe stream open");
    String::from_utf8(response.kv.expect("kv").value).expect("utf-8")
}

fn assert_election_error(error: &Status, message: &str) {
    // etcd 3.4 returns the election's errors (its own and those of the calls it makes) as
    // plain errors: gRPC `Unknown` with the text.
    assert_eq!(
        (error.code(), error.message()),
        (Code::Unknown, message),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_proclaim_observe_resign_and_hand_over() {
    let (cluster, channel) = single_member().await;
    let no_leader = leader(&channel, "el").await.expect_err("nobody leads");
    assert_election_error(&no_leader, "election: no leader");

    // The observer starts before anyone leads: it waits for the first leader.
    let mut observer = ElectionClient::new(channel.clone())
        .observe(leader_request("el"))
        .await
        .expect("observe")
        .into_inner();

    let a = grant(&channel, 30).await;
    let b = grant(&channel, 30).await;
    let a_key = campaign(&channel, "el", a, "a").await;
    assert_eq!(a_key.name, b"el");
    assert_eq!(a_key.key, format!("el/{a:x}").into_bytes());
    assert_eq!(a_key.lease, a);
    assert_eq!(Some(a_key.rev), create_revision(&cluster, &a_key.key).await);
    assert_eq!(observed(&mut observer).await, "a");
    assert_eq!(
        leader(&channel, "el").await.unwrap(),
        (a_key.key.clone(), "a".into())
    );

    // B queues behind A and does not lead while A does.
    let b_campaign = spawn_campaign(&channel, "el", b, "b");
    wait_queued(&cluster, &format!("el/{b:x}")).await;
    proclaim(&channel, &a_key, "a2").await.expect("A proclaims");
    assert_eq!(observed(&mut observer).await, "a2");
    assert_eq!(leader(&channel, "el").await.unwrap().1, "a2");
    still_blocked("B's campaign while A leads", &b_campaign).await;

    // A campaigning again with its lease keeps its place and updates its value.
    let a_again = campaign(&channel, "el", a, "a3").await;
    assert_eq!(
        (a_again.key.clone(), a_again.rev),
        (a_key.key.clone(), a_key.rev)
    );
    assert_eq!(observed(&mut observer).await, "a3");

    // A resigns: B leads, the observer follows.
    resign(&channel, &a_key).await;
    let b_key = within("B's campaign after A resigned", b_campaign)
        .await
        .expect("campaign task")
        .expect("B campaigns");
    assert_eq!(b_key.key, format!("el/{b:x}").into_bytes());
    assert_eq!(observed(&mut observer).await, "b");
    assert_eq!(
        leader(&channel, "el").await.unwrap(),
        (b_key.key.clone(), "b".into())
    );

    // A no longer leads: its proclamation is refused and changes nothing; its resign is a
    // no-op.
    let refused = proclaim(&channel, &a_key, "stale")
        .await
        .expect_err("not leader");
    assert_election_error(&refused, "election: not leader");
    resign(&channel, &a_key).await;
    assert_eq!(leader(&channel, "el").await.unwrap().1, "b");

    // A request without a leader key is refused as etcd refuses it.
    let missing = ElectionClient::new(channel.clone())
        .proclaim(ProclaimRequest {
            leader: None,
            value: b"x".to_vec(),
        })
        .await
        .expect_err("no leader key");
    assert_election_error(&missing, "\"leader\" field must be provided");

    // The leader's lease ends: the next candidate (A again) leads.
    let a_back = spawn_campaign(&channel, "el", a, "a4");
    wait_queued(&cluster, &format!("el/{a:x}")).await;
    still_blocked("A's campaign while B leads", &a_back).await;
    revoke(&channel, b).await;
    let a_key = within("A's campaign after B's lease ended", a_back)
        .await
        .expect("campaign task")
        .expect("A campaigns");
    assert_eq!(observed(&mut observer).await, "a4");

    resign(&channel, &a_key).await;
    let none = leader(&channel, "el").await.expect_err("nobody leads");
    assert_election_error(&none, "election: no leader");
    let unknown = ElectionClient::new(channel.clone())
        .campaign(CampaignRequest {
            name: b"el".to_vec(),
            lease: 0x4321,
            value: b"v".to_vec(),
        })
        .await
        .expect_err("unknown lease");
    assert_election_error(&unknown, "etcdserver: requested lease not found");
    let empty_key = proclaim(
        &channel,
        &LeaderKey {
            key: Vec::new(),
            ..a_key
        },
        "x",
    )
    .await
    .expect_err("empty leader key");
    assert_election_error(&empty_key, "etcdserver: key is not provided");
}

/// A candidate whose client gives up while queued resigns (etcd resigns when the campaign's
/// context ends): its key is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_campaign_leaves_no_key() {
    let (cluster, channel) = single_member().await;
    let a = grant(&channel, 30).await;
    let b = grant(&channel, 30).await;
    campaign(&channel, "ec", a, "a").await;
    let mut client = ElectionClient::new(channel.clone());
    let request = CampaignRequest {
        name: b"ec".to_vec(),
        lease: b,
        value: b"b".to_vec(),
    };
    let gave_up =
        tokio::time::timeout(Duration::from_millis(HOLD_MS), client.campaign(request)).await;
    assert!(gave_up.is_err(), "B won while A leads");
    let b_key = format!("ec/{b:x}");
    common::poll("the cancelled candidate's key to be deleted", || async {
        let found = cluster.get(0, &b_key, false).await.ok()?;
        found.kvs.is_empty().then_some(())
    })
    .await;
    assert_eq!(leader(&channel, "ec").await.unwrap().1, "a");
}

/// Every lease id and its granted TTL.
async fn leases(channel: &Channel) -> Vec<(i64, i64)> {
    let mut client = LeaseClient::new(channel.clone());
    let listed = client
        .lease_leases(aspen_proto::etcdserverpb::LeaseLeasesRequest {})
        .await
        .expect("leases")
        .into_inner();
    let mut leases = Vec::new();
    for lease in listed.leases {
        let request = LeaseTimeToLiveRequest {
            id: lease.id,
            keys: false,
        };
        let ttl = client.lease_time_to_live(request).await.expect("ttl");
        leases.push((lease.id, ttl.into_inner().granted_ttl));
    }
    leases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proclaim_and_resign_with_lease_zero_grant_etcds_session_lease() {
    let (_cluster, channel) = single_member().await;
    let lease = grant(&channel, 30).await;
    let key = campaign(&channel, "zero", lease, "a").await;
    assert_eq!(leases(&channel).await, vec![(lease, 30)]);

    // Proclaim with lease 0: etcd's session grants a 60 s lease and the value goes with it.
    let zero = LeaderKey {
        lease: 0,
        ..key.clone()
    };
    proclaim(&channel, &zero, "b").await.expect("proclaim");
    let after = leases(&channel).await;
    assert_eq!(after.len(), 2, "{after:?}");
    let (granted, ttl) = *after.iter().find(|(id, _)| *id != lease).unwrap();
    assert_eq!(ttl, 60);
    assert!(granted > lease, "lease ids grow: {granted} after {lease}");
    let response = ElectionClient::new(channel.clone())
        .leader(leader_request("zero"))
        .await
        .expect("leader")
        .into_inner();
    let kv = response.kv.expect("kv");
    assert_eq!((kv.value.as_slice(), kv.lease), (&b"b"[..], granted));

    // Resign with lease 0 grants one more, and resigns.
    resign(&channel, &zero).await;
    let after = leases(&channel).await;
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after.iter().filter(|(_, ttl)| *ttl == 60).count() == 2);
    let error = leader(&channel, "zero").await.expect_err("nobody leads");
    assert_election_error(&error, "election: no leader");
}
