//! Real `aspen` processes on loopback: election, replication through a follower, failover,
//! catch-up after a crash, snapshot catch-up of a new member, membership changes, restarts
//! that keep acknowledged writes, the data-dir lock and a clean SIGTERM; batched ReadIndex
//! (linearizable follower reads under concurrent writes, a lagging and a cut-off follower).
//!
//! One test at a time (`TURNS`), whatever `--test-threads` says: every test starts several
//! processes, and several of them time elections and follower lag.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aspen_proto::etcdserverpb::kv_client::KvClient;
use aspen_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest,
    PutRequest, RangeRequest, RangeResponse, StatusRequest,
};
use common::{Backend, Cluster, Turns, poll, put_retry};
use tokio::time::Instant;
use tonic::transport::Channel;

/// The tests of this binary run one at a time.
static TURNS: Turns = Turns::new(1);

/// Longest a SIGTERM'd member may take to exit.
const STOP_WAIT_MS_MAX: u64 = 10_000;
/// Longest the second process on a locked data dir may run before it must have failed.
const LOCKED_EXIT_WAIT_MS_MAX: u64 = 5_000;

/// The value of the only key in `reply`, if there is exactly one.
fn single_value(reply: &RangeResponse) -> Option<(&[u8], i64)> {
    match reply.kvs.as_slice() {
        [kv] => Some((kv.value.as_slice(), kv.mod_revision)),
        _ => None,
    }
}

fn header_revision(reply: &RangeResponse) -> i64 {
    reply.header.as_ref().expect("response header").revision
}

/// Reads `key` linearizably from each of `members`; each must return `value` written at
/// `mod_revision`, and all must report the same header revision, which is returned.
async fn assert_linearizable_everywhere(
    cluster: &Cluster,
    members: &[usize],
    key: &str,
    value: &str,
    mod_revision: i64,
) -> i64 {
    let mut revisions = BTreeMap::new();
    for &index in members {
        let reply = poll(
            &format!("linearizable read of {key} on member {index}"),
            || async {
                match cluster.get(index, key, false).await {
                    Ok(reply) => Some(reply),
                    Err(status) => {
                        eprintln!(
                            "linearizable read of {key} on member {index}: {status}; retrying"
                        );
                        None
                    }
                }
            },
        )
        .await;
        assert_eq!(
            single_value(&reply),
            Some((value.as_bytes(), mod_revision)),
            "{key} on member {index}"
        );
        revisions.insert(index, header_revision(&reply));
    }
    let first = *revisions.values().next().expect("at least one member");
    assert!(
        revisions.values().all(|r| *r == first),
        "members disagree on the revision: {revisions:?}"
    );
    first
}

/// Waits until `index` serves `key` = `value` on a serializable (local) read whose header
/// revision is `revision`: the member has caught up with the cluster by itself.
async fn wait_caught_up(cluster: &Cluster, index: usize, key: &str, value: &str, revision: i64) {
    let what = format!("member {index} to serve {key}={value} at revision {revision}");
    poll(&what, || async {
        let reply = cluster.get(index, key, true).await.ok()?;
        let caught_up = single_value(&reply).map(|(v, _)| v) == Some(value.as_bytes())
            && header_revision(&reply) == revision;
        caught_up.then_some(())
    })
    .await;
}

/// Test 1 and 4: election, a write through a follower read linearizably everywhere, SIGKILL
/// of the leader, failover, and catch-up of the restarted member in `restart_state`.
async fn elect_replicate_failover(cluster: &mut Cluster, restart_state: &str) {
    let all = [0, 1, 2];
    let leader = cluster.wait_leader(&all).await;
    for index in all {
        let health = common::http_get(cluster.members[index].metrics_port, "/health").await;
        let (status, body) = health.unwrap_or_else(|| panic!("member {index}: no /health"));
        assert_eq!(status, 200, "member {index} /health: {body}");
        assert!(
            body.contains(r#""health":"true""#),
            "member {index} /health: {body}"
        );
    }
    // Maintenance.Status names the same leader on every member, and each member its own id.
    let leader_id = cluster.member_id(leader);
    poll("every member's Status to name the leader", || async {
        for index in all {
            let status = cluster
                .maintenance(index)
                .status(StatusRequest {})
                .await
                .ok()?;
            let status = status.into_inner();
            let member_id = status.header.as_ref().map(|h| h.member_id);
            assert_eq!(member_id, Some(cluster.member_id(index)), "member {index}");
            if status.leader != leader_id {
                return None;
            }
        }
        Some(())
    })
    .await;
    let follower = *all.iter().find(|&&i| i != leader).expect("a follower");

    let revision = cluster.put(follower, "greeting", "hello").await;
    assert_linearizable_everywhere(cluster, &all, "greeting", "hello", revision).await;

    cluster.kill(leader);
    let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    let new_leader = cluster.wait_leader(&survivors).await;
    assert_ne!(new_leader, leader, "a killed member cannot lead");
    let writer = *survivors
        .iter()
        .find(|&&i| i != new_leader)
        .expect("a surviving follower");
    let after_failover = cluster.put(writer, "greeting", "after-failover").await;
    let second = cluster
        .put(new_leader, "second", "written-by-the-new-leader")
        .await;
    assert!(second > after_failover, "revisions strictly increase");
    let cluster_revision = assert_linearizable_everywhere(
        cluster,
        &survivors,
        "second",
        "written-by-the-new-leader",
        second,
    )
    .await;
    assert_eq!(cluster_revision, second);

    let founders: Vec<usize> = all.to_vec();
    cluster.start_with(leader, &founders, restart_state);
    wait_caught_up(
        cluster,
        leader,
        "second",
        "written-by-the-new-leader",
        second,
    )
    .await;
    wait_caught_up(cluster, leader, "greeting", "after-failover", second).await;
    // The restarted member follows a leader the other two agree on.
    cluster.wait_leader(&all).await;
    // It serves linearizable reads too, and a write through it reaches everyone.
    let third = cluster
        .put(leader, "third", "via-the-restarted-member")
        .await;
    assert_linearizable_everywhere(cluster, &all, "third", "via-the-restarted-member", third).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_replicate_failover_and_catch_up() {
    let _turn = TURNS.take().await;
    let mut cluster = Cluster::new(3, Backend::Redb, None);
    cluster.start_all();
    // Every founder publishes its client URL into the leader's member list (the initial
    // membership holds only names and peer URLs, identical on every founder).
    let leader = cluster.wait_leader(&[0, 1, 2]).await;
    poll("every member to publish its client URL", || async {
        let members = member_list(&cluster, leader).await;
        let published = members.len() == 3
            && members
                .iter()
                .all(|m| !m.client_ur_ls.is_empty() && !m.name.is_empty());
        published.then_some(())
    })
    .await;
    // Restarted with the very same flags: its redb file holds its log, vote and state.
    elect_replicate_failover(&mut cluster, "new").await;
}

/// The memory backend keeps nothing across a restart, so the killed leader comes back as an
/// empty process with the same member id (the id derives from peer URLs and token, so the
/// same flags give the same id). It is started with `--initial-cluster-state existing`: it
/// must not found a cluster, only wait for the leader, which still lists it as a voter and
/// replicates the whole log (nothing was purged at the default snapshot count) to it.
///
/// Observed and expected: the member rejoins and converges to the same revision. What the
/// memory backend cannot give is durability: a member forgets its vote when it restarts, so
/// it could vote twice in one term (harmless here since the other two remember theirs), and a
/// full-cluster restart loses every write. That is the documented contract of
/// `--storage-backend memory` (tests and simulation only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend_three_nodes() {
    let _turn = TURNS.take().await;
    let mut cluster = Cluster::new(3, Backend::Memory, None);
    cluster.start_all();
    elect_replicate_failover(&mut cluster, "existing").await;
}

/// A background client: puts `live/<n>` through one member and reads it back linearizably,
/// every few milliseconds until stopped, and records which writes were acknowledged and the
/// longest time without a successful write and read.
struct LiveWriter {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<String>, Duration)>,
}

/// Pause between two background writes.
const LIVE_WRITE_INTERVAL_MS: u64 = 20;
/// Most background writes (bounds the loop even if stop never comes).
const LIVE_WRITES_MAX: u32 = 5_000;
/// Longest the cluster may go without accepting a write during membership changes.
const LIVE_WRITE_GAP_MS_MAX: u64 = 5_000;

impl LiveWriter {
    fn start(cluster: &Cluster, via: usize) -> LiveWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let kv = cluster.kv(via);
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut last_success = Instant::now();
            let mut gap_max = Duration::ZERO;
            for n in 0..LIVE_WRITES_MAX {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("live/{n:05}");
                match write_then_read(&kv, &key).await {
                    Ok(()) => {
                        gap_max = gap_max.max(last_success.elapsed());
                        last_success = Instant::now();
                        acknowledged.push(key);
                    }
                    Err(error) => eprintln!("background {key}: {error}"),
                }
                tokio::time::sleep(Duration::from_millis(LIVE_WRITE_INTERVAL_MS)).await;
            }
            gap_max = gap_max.max(last_success.elapsed());
            (acknowledged, gap_max)
        });
        LiveWriter { stop, task }
    }

    async fn finish(self) -> (Vec<String>, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("background writer")
    }
}

/// Puts `key` = `key`, then reads it back linearizably through the same member.
async fn write_then_read(kv: &KvClient<Channel>, key: &str) -> Result<(), String> {
    let put = PutRequest {
        key: key.as_bytes().to_vec(),
        value: key.as_bytes().to_vec(),
        ..Default::default()
    };
    kv.clone()
        .put(put)
        .await
        .map_err(|status| format!("put: {status}"))?;
    let range = RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    };
    let reply = kv
        .clone()
        .range(range)
        .await
        .map_err(|status| format!("linearizable range: {status}"))?
        .into_inner();
    match single_value(&reply) {
        Some((value, _)) if value == key.as_bytes() => Ok(()),
        other => panic!("read {key} right after writing it, got {other:?}"),
    }
}

async fn member_list(cluster: &Cluster, via: usize) -> Vec<Member> {
    poll(&format!("member list from member {via}"), || async {
        let request = MemberListRequest { linearizable: true };
        match cluster.cluster_api(via).member_list(request).await {
            Ok(reply) => Some(reply.into_inner().members),
            Err(status) => {
                eprintln!("member list from member {via}: {status}; retrying");
                None
            }
        }
    })
    .await
}

/// Every key under `prefix` on member `index` (serializable: what the member holds itself).
async fn local_keys(
    cluster: &Cluster,
    index: usize,
    prefix: &str,
) -> Option<BTreeMap<String, String>> {
    let reply = cluster.get_prefix(index, prefix, true).await.ok()?;
    Some(pairs(&reply))
}

/// Calls a Cluster API change until it succeeds, retrying failures a leader change explains.
/// A change racing another one (a starting member publishes its name through a membership
/// change) must be serialized by the server, as etcd does, never reach the client.
async fn membership_change<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    poll(what, || {
        let reply = call();
        async move {
            match reply.await {
                Ok(reply) => Some(reply.into_inner()),
                Err(status) => {
                    assert!(
                        !status.message().contains("configuration change"),
                        "{what}: {status}"
                    );
                    eprintln!("{what}: {status}; retrying");
                    None
                }
            }
        }
    })
    .await
}

/// Number of keys written to make the leader snapshot and purge its log.
const SNAPSHOT_TEST_KEYS: u32 = 500;
/// Concurrent writers filling the cluster (their writes share fsyncs).
const FILL_WRITERS: u32 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_catch_up_and_membership_changes() {
    let _turn = TURNS.take().await;
    let mut cluster = Cluster::new(3, Backend::Redb, Some(50));
    cluster.start_all();
    let originals = [0, 1, 2];
    let leader = cluster.wait_leader(&originals).await;

    // 500 writes at --snapshot-count 50: the leader snapshots every 50 entries and keeps
    // only 50 entries behind its snapshot, so the start of the log is gone.
    let mut expected = BTreeMap::new();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..FILL_WRITERS {
        let via = originals[writer as usize % originals.len()];
        let kv = cluster.kv(via);
        let keys: Vec<u32> = (0..SNAPSHOT_TEST_KEYS)
            .filter(|k| k % FILL_WRITERS == writer)
            .collect();
        for &k in &keys {
            expected.insert(format!("snap/{k:04}"), format!("value-{k}"));
        }
        writers.spawn(async move {
            for k in keys {
                put_retry(
                    &kv,
                    &format!("snap/{k:04}"),
                    &format!("value-{k}"),
                    "filler",
                )
                .await;
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.expect("filler task");
    }

    let remaining_originals: Vec<usize> =
        originals.iter().copied().filter(|&i| i != leader).collect();
    // Removed later: a follower; the background writer goes through the other follower.
    let (victim, writer_via) = (remaining_originals[0], remaining_originals[1]);
    let live = LiveWriter::start(&cluster, writer_via);

    // The new member runs at the default snapshot count so that it never snapshots by itself:
    // a snapshot file in its data dir can only come from the leader.
    let newcomer = cluster.plan_member(None);
    let newcomer_url = cluster.members[newcomer].peer_url();
    // Through a follower: the change is forwarded to the leader.
    let added = membership_change("MemberAdd of the learner", || {
        let request = MemberAddRequest {
            peer_ur_ls: vec![newcomer_url.clone()],
            is_learner: true,
        };
        let mut api = cluster.cluster_api(writer_via);
        async move { api.member_add(request).await }
    })
    .await
    .member
    .expect("the added member");
    assert!(added.is_learner);
    assert_eq!(added.peer_ur_ls, vec![newcomer_url.clone()]);
    let newcomer_id = added.id;

    cluster.start_with(newcomer, &[0, 1, 2, newcomer], "existing");
    poll("the learner to hold every key", || async {
        let keys = local_keys(&cluster, newcomer, "snap/").await?;
        (keys == expected).then_some(())
    })
    .await;
    let snapshots_dir = cluster.members[newcomer].data_dir.join("member/snapshots");
    let installed = std::fs::read_dir(&snapshots_dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        })
        .unwrap_or(false);
    assert!(
        installed,
        "the learner caught up without a snapshot in {}",
        snapshots_dir.display()
    );
    // The new member publishes its name and client URL under the id the cluster gave it,
    // as an etcd member does once it starts.
    let newcomer_client_url = cluster.members[newcomer].client_url();
    let newcomer_name = cluster.members[newcomer].name.clone();
    poll("the learner to publish its name under its id", || async {
        let members = member_list(&cluster, leader).await;
        members
            .iter()
            .any(|m| {
                m.id == newcomer_id
                    && m.is_learner
                    && m.name == newcomer_name
                    && m.client_ur_ls == vec![newcomer_client_url.clone()]
            })
            .then_some(())
    })
    .await;

    membership_change("MemberPromote of the learner", || {
        let request = MemberPromoteRequest { id: newcomer_id };
        let mut api = cluster.cluster_api(newcomer);
        async move { api.member_promote(request).await }
    })
    .await;
    let members = member_list(&cluster, newcomer).await;
    assert_eq!(members.len(), 4, "{members:?}");
    assert!(members.iter().all(|m| !m.is_learner), "{members:?}");

    let victim_id = cluster.member_id(victim);
    membership_change("MemberRemove of an original member", || {
        let request = MemberRemoveRequest { id: victim_id };
        let mut api = cluster.cluster_api(newcomer);
        async move { api.member_remove(request).await }
    })
    .await;
    let statuses = cluster.terminate(&[victim], STOP_WAIT_MS_MAX).await;
    assert!(
        statuses[0].is_some_and(|s| s.success()),
        "removed member's exit: {statuses:?}"
    );
    let members_left = [leader, writer_via, newcomer];
    let members = member_list(&cluster, writer_via).await;
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(!ids.contains(&victim_id), "{members:?}");
    assert!(ids.contains(&newcomer_id), "{members:?}");

    // The three remaining members elect, write and read on their own (the background writer
    // stopped first, so that all three report the same revision).
    cluster.wait_leader(&members_left).await;
    let (acknowledged, gap_max) = live.finish().await;
    let revision = cluster.put(newcomer, "after/remove", "still-serving").await;
    // A member that joined later reports the founders' cluster id, not one derived from its
    // own (longer) member list.
    let founders_cluster_id = header_cluster_id(&cluster, writer_via).await;
    poll("the newcomer to adopt the founders' cluster id", || async {
        (header_cluster_id(&cluster, newcomer).await == founders_cluster_id).then_some(())
    })
    .await;
    assert_linearizable_everywhere(
        &cluster,
        &members_left,
        "after/remove",
        "still-serving",
        revision,
    )
    .await;

    assert!(!acknowledged.is_empty(), "no background write succeeded");
    assert!(
        gap_max <= Duration::from_millis(LIVE_WRITE_GAP_MS_MAX),
        "writes stalled for {gap_max:?} during the membership changes"
    );
    let reply = poll("linearizable read of the background writes", || async {
        cluster.get_prefix(newcomer, "live/", false).await.ok()
    })
    .await;
    let live_keys: Vec<String> = reply
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect();
    for key in &acknowledged {
        assert!(live_keys.contains(key), "acknowledged {key} is missing");
    }
}

/// Writes acknowledged before a stop must survive the restart of every member.
const RESTART_TEST_KEYS: u32 = 100;

/// Keys and values of a range reply.
fn pairs(reply: &RangeResponse) -> BTreeMap<String, String> {
    reply
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect()
}

/// What `held` lacks or has wrong compared to `expected`, in a few lines.
fn differences(held: &BTreeMap<String, String>, expected: &BTreeMap<String, String>) -> String {
    let missing: Vec<&String> = expected.keys().filter(|k| !held.contains_key(*k)).collect();
    let wrong: Vec<&String> = expected
        .iter()
        .filter(|(k, v)| held.get(*k).is_some_and(|h| h != *v))
        .map(|(k, _)| k)
        .collect();
    let extra: Vec<&String> = held.keys().filter(|k| !expected.contains_key(*k)).collect();
    format!("missing {missing:?}, wrong {wrong:?}, unexpected {extra:?}")
}

/// Checks that every member of `members` holds exactly `expected` under `prefix`, on a
/// linearizable read and on a local (serializable) one. Reads every member before asserting
/// so that a failure shows the whole cluster.
async fn assert_all_hold(
    cluster: &Cluster,
    members: &[usize],
    prefix: &str,
    expected: &BTreeMap<String, String>,
) {
    let mut report = Vec::new();
    let mut all_hold = true;
    for &index in members {
        for serializable in [false, true] {
            let what = format!("read of {prefix} on member {index} (serializable: {serializable})");
            let reply = poll(&what, || async {
                match cluster.get_prefix(index, prefix, serializable).await {
                    Ok(reply) => Some(reply),
                    Err(status) => {
                        eprintln!("{what}: {status}; retrying");
                        None
                    }
                }
            })
            .await;
            let held = pairs(&reply);
            all_hold &= &held == expected;
            report.push(format!(
                "{what}: revision {}, {} keys, {}",
                header_revision(&reply),
                held.len(),
                differences(&held, expected)
            ));
        }
    }
    assert!(all_hold, "acknowledged writes lost:\n{}", report.join("\n"));
}

async fn write_keys(
    cluster: &Cluster,
    range: std::ops::Range<u32>,
    expected: &mut BTreeMap<String, String>,
) {
    for k in range {
        let key = format!("durable/{k:04}");
        let value = format!("value-{k}");
        cluster.put(k as usize % 3, &key, &value).await;
        expected.insert(key, value);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cluster_restart_keeps_acknowledged_writes() {
    let _turn = TURNS.take().await;
    let mut cluster = Cluster::new(3, Backend::Redb, None);
    let all = [0, 1, 2];
    cluster.start_all();
    cluster.wait_leader(&all).await;
    let mut expected = BTreeMap::new();
    write_keys(&cluster, 0..RESTART_TEST_KEYS, &mut expected).await;

    let statuses = cluster.terminate(&all, STOP_WAIT_MS_MAX).await;
    for (index, status) in statuses.iter().enumerate() {
        assert!(
            status.is_some_and(|s| s.code() == Some(0)),
            "member {index} after SIGTERM: {status:?}"
        );
    }
    cluster.start_all();
    cluster.wait_leader(&all).await;
    assert_all_hold(&cluster, &all, "durable/", &expected).await;

    // More writes, then SIGKILL right after their acknowledgement: nothing gets flushed at
    // exit, so only what was durable before the reply survives.
    write_keys(
        &cluster,
        RESTART_TEST_KEYS..RESTART_TEST_KEYS * 2,
        &mut expected,
    )
    .await;
    for index in all {
        cluster.kill(index);
    }
    cluster.start_all();
    cluster.wait_leader(&all).await;
    assert_all_hold(&cluster, &all, "durable/", &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_process_on_same_data_dir_fails_fast() {
    let _turn = TURNS.take().await;
    let mut cluster = Cluster::new(1, Backend::Redb, None);
    cluster.start(0);
    cluster.wait_leader(&[0]).await;

    // The same member on other ports, over the same data dir.
    let second = cluster.plan_member(None);
    cluster.members[second].data_dir = cluster.members[0].data_dir.clone();
    let args = cluster.args(second, &[second], "new");
    let log_path = cluster.next_log_path(second);
    let mut process = common::spawn_aspen(&args, &log_path);
    let status = process.wait_exit(LOCKED_EXIT_WAIT_MS_MAX).await;
    let log = process.log();
    let status = status.unwrap_or_else(|| panic!("second process still runs; its log:\n{log}"));
    assert!(
        !status.success(),
        "second process exited with {status}; log:\n{log}"
    );
    assert!(log.contains("data dir locked"), "stderr:\n{log}");

    // The first one is unaffected.
    let revision = cluster.put(0, "still", "here").await;
    assert_linearizable_everywhere(&cluster, &[0], "still", "here", revision).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero() {
    let _turn = TURNS.take().await;
    let mut cluster = Cluster::new(1, Backend::Redb, None);
    cluster.start(0);
    cluster.wait_leader(&[0]).await;
    for n in 0..STAGE_TEST_PUTS {
        cluster.put(0, &format!("stage/{n}"), "v").await;
    }
    assert_put_stages_counted(&cluster, 0, STAGE_TEST_PUTS).await;
    cluster.put(0, "before", "stop").await;
    let started = Instant::now();
    let statuses = cluster.terminate(&[0], STOP_WAIT_MS_MAX).await;
    let status =
        statuses[0].unwrap_or_else(|| panic!("still running {STOP_WAIT_MS_MAX} ms after SIGTERM"));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    eprintln!("stopped {:?} after SIGTERM", started.elapsed());
}

/// Puts made before scraping the per-stage put latency.
const STAGE_TEST_PUTS: u64 = 5;

/// Issue 11: every stage of a put on the leader, from the API layer to the response, has at
/// least `puts` observations in `aspen_put_stage_duration_seconds`.
async fn assert_put_stages_counted(cluster: &Cluster, index: usize, puts: u64) {
    let text = cluster.metrics(index).await.expect("metrics");
    for stage in aspen_node::metrics::PUT_STAGES {
        let name = format!("aspen_put_stage_duration_seconds_count{{stage=\"{stage}\"}}");
        let count = common::gauge(&text, &name).unwrap_or_else(|| panic!("no {name}"));
        assert!(count >= puts, "{name} = {count} after {puts} puts");
    }
}

/// The cluster id in a serializable read's response header.
async fn header_cluster_id(cluster: &Cluster, index: usize) -> u64 {
    let request = aspen_proto::etcdserverpb::RangeRequest {
        key: b"after/remove".to_vec(),
        serializable: true,
        ..Default::default()
    };
    let response = cluster
        .kv(index)
        .range(request)
        .await
        .expect("serializable range");
    response
        .into_inner()
        .header
        .expect("response header")
        .cluster_id
}

/// Writers in the follower-read test, one key each.
const READ_TEST_WRITERS: usize = 2;
/// Acknowledged writes per writer (values 1..=this, increasing).
const READ_TEST_WRITES_PER_WRITER: u64 = 150;
/// Concurrent linearizable readers on each follower.
const READ_TEST_READERS_PER_FOLLOWER: usize = 6;
/// Most reads per reader (bounds the loop if the writers stall).
const READ_TEST_READS_PER_READER_MAX: u32 = 2_000;
/// Writes made while a follower is frozen, so it has a log to catch up on when it resumes.
const LAGGING_WRITES: u32 = 100;

fn read_test_key(writer: usize) -> String {
    format!("batch/writer-{writer}")
}

/// One linearizable or serializable read of `key` through `kv`: its value parsed as a number
/// (0 when the key is absent).
async fn read_counter(
    kv: &KvClient<Channel>,
    key: &str,
    serializable: bool,
) -> Result<u64, tonic::Status> {
    let request = RangeRequest {
        key: key.as_bytes().to_vec(),
        serializable,
        ..Default::default()
    };
    let reply = kv.clone().range(request).await?.into_inner();
    Ok(single_value(&reply).map_or(0, |(value, _)| {
        std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse().ok())
            .expect("a counter value")
    }))
}

/// Reads on `follower` until the writers are done: each linearizable read must see at least
/// the value its writer had acknowledged before the read started. Returns (reads that
/// succeeded, reads that failed, violations).
async fn follower_reader(
    kv: KvClient<Channel>,
    follower: usize,
    reader: usize,
    acknowledged: Arc<Vec<AtomicU64>>,
    writers_done: Arc<AtomicBool>,
) -> (u32, u32, Vec<String>) {
    let (mut ok, mut failed, mut violations) = (0, 0, Vec::new());
    for n in 0..READ_TEST_READS_PER_READER_MAX {
        if writers_done.load(Ordering::SeqCst) {
            break;
        }
        let writer = (reader + n as usize) % READ_TEST_WRITERS;
        let key = read_test_key(writer);
        let floor = acknowledged[writer].load(Ordering::SeqCst);
        match read_counter(&kv, &key, false).await {
            Ok(value) if value >= floor => ok += 1,
            Ok(value) => violations.push(format!(
                "member {follower}: read {key} = {value} after {floor} was acknowledged"
            )),
            Err(status) => {
                failed += 1;
                eprintln!("member {follower} reader {reader}: {status}");
            }
        }
    }
    (ok, failed, violations)
}

/// A metric with labels, e.g. `aspen_read_index_rounds_total{source="forwarded"}`.
async fn labelled_counter(cluster: &Cluster, index: usize, name: &str, source: &str) -> u64 {
    let text = cluster.metrics(index).await.expect("metrics");
    common::gauge(&text, &format!("{name}{{source=\"{source}\"}}")).expect(name)
}

/// Issue 11: batched ReadIndex. Writers put increasing values while linearizable readers on
/// both followers read concurrently; a read must never return less than what was acknowledged
/// before it started. The followers' metrics show reads sharing forwarded ReadIndex rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_reads_see_every_write_acknowledged_before_them() {
    let _turn = TURNS.take().await;
    let mut cluster = Cluster::new(3, Backend::Redb, None);
    let all = [0, 1, 2];
    cluster.start_all();
    let leader = cluster.wait_leader(&all).await;
    let followers: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    let acknowledged: Arc<Vec<AtomicU64>> =
        Arc::new((0..READ_TEST_WRITERS).map(|_| AtomicU64::new(0)).collect());
    let writers_done = Arc::new(AtomicBool::new(false));

    let mut readers = Vec::new();
    for &follower in &followers {
        for reader in 0..READ_TEST_READERS_PER_FOLLOWER {
            readers.push(tokio::spawn(follower_reader(
                cluster.kv(follower),
                follower,
                reader,
                acknowledged.clone(),
                writers_done.clone(),
            )));
        }
    }
    // Writer 0 writes through the leader, the others through a follower (forwarded).
    let mut writers = Vec::new();
    for writer in 0..READ_TEST_WRITERS {
        let via = if writer == 0 {
            leader
        } else {
            followers[writer % followers.len()]
        };
        let kv = cluster.kv(via);
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            let key = read_test_key(writer);
            for value in 1..=READ_TEST_WRITES_PER_WRITER {
                put_retry(&kv, &key, &value.to_string(), &format!("member {via}")).await;
                acknowledged[writer].store(value, Ordering::SeqCst);
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    writers_done.store(true, Ordering::SeqCst);
    let (mut ok, mut failed, mut violations) = (0, 0, Vec::new());
    for reader in readers {
        let (o, f, v) = reader.await.expect("reader");
        ok += o;
        failed += f;
        violations.extend(v);
    }
    assert!(violations.is_empty(), "stale reads: {violations:#?}");
    assert!(ok > 0, "no read succeeded ({failed} failed)");
    assert!(failed * 10 <= ok, "{failed} reads failed, {ok} succeeded");
    // After the writers: every follower serves the last value of every writer.
    for &follower in &followers {
        for writer in 0..READ_TEST_WRITERS {
            let value = read_counter(&cluster.kv(follower), &read_test_key(writer), false)
                .await
                .expect("a read after the writers finished");
            assert_eq!(value, READ_TEST_WRITES_PER_WRITER, "member {follower}");
        }
    }
    for &follower in &followers {
        let name = "aspen_read_index";
        let rounds = labelled_counter(
            &cluster,
            follower,
            &format!("{name}_rounds_total"),
            "forwarded",
        )
        .await;
        let reads = labelled_counter(
            &cluster,
            follower,
            &format!("{name}_reads_total"),
            "forwarded",
        )
        .await;
        eprintln!("member {follower}: {reads} linearizable reads in {rounds} forwarded rounds");
        assert!(
            rounds > 0 && rounds < reads,
            "member {follower}: {reads} reads in {rounds} rounds: not batched"
        );
    }
    let rounds =
        labelled_counter(&cluster, leader, "aspen_read_index_rounds_total", "leader").await;
    let reads = labelled_counter(&cluster, leader, "aspen_read_index_reads_total", "leader").await;
    eprintln!("leader {leader}: {reads} read indexes in {rounds} quorum confirmations");
    assert!(rounds > 0 && rounds <= reads);
}

/// A follower that lags (frozen while the others commit) answers a linearizable read only
/// with what was acknowledged before it; one cut off from the rest (both others frozen)
/// answers with an error, never with its local state.
///
/// What this harness cannot do: partition a running follower while the majority keeps
/// accepting writes (the members talk over loopback, and the tests have no network fault
/// injection); freezing with SIGSTOP is the closest. The simulator (`aspen-sim`) covers true
/// partitions, with the `--unsafe-local-reads` planted bug as its check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_or_cut_off_follower_never_serves_stale_reads() {
    let _turn = TURNS.take().await;
    let mut cluster = Cluster::new(3, Backend::Redb, None);
    let all = [0, 1, 2];
    cluster.start_all();
    let leader = cluster.wait_leader(&all).await;
    let follower = *all.iter().find(|&&i| i != leader).expect("a follower");
    let other = *all
        .iter()
        .find(|&&i| i != leader && i != follower)
        .expect("a second follower");
    let key = "stale/counter";
    cluster.put(leader, key, "0").await;
    poll("the follower to hold the first value", || async {
        let value = read_counter(&cluster.kv(follower), key, true).await.ok()?;
        (value == 0).then_some(())
    })
    .await;

    // Lagging: frozen while the others commit, then reads right after it resumes.
    cluster.stop(follower);
    for value in 1..=LAGGING_WRITES {
        cluster.put(leader, key, &value.to_string()).await;
    }
    cluster.cont(follower);
    let kv = cluster.kv(follower);
    let local = read_counter(&kv, key, true).await;
    let reads: Vec<_> = (0..4)
        .map(|_| {
            let kv = kv.clone();
            tokio::spawn(async move { read_counter(&kv, key, false).await })
        })
        .collect();
    for read in reads {
        match read.await.expect("reader") {
            Ok(value) => assert_eq!(
                value,
                u64::from(LAGGING_WRITES),
                "a linearizable read on the resumed follower missed an acknowledged write"
            ),
            Err(status) => eprintln!("read on the resumed follower: {status}"),
        }
    }
    eprintln!("serializable read on the resumed follower, just before: {local:?}");

    // Cut off: the leader and the other follower frozen. Linearizable reads must fail.
    cluster.stop(leader);
    cluster.stop(other);
    let reads: Vec<_> = (0..3)
        .map(|_| {
            let kv = kv.clone();
            tokio::spawn(async move { read_counter(&kv, key, false).await })
        })
        .collect();
    for read in reads {
        let result = read.await.expect("reader");
        assert!(
            result.is_err(),
            "a follower cut off from the cluster served a linearizable read: {result:?}"
        );
    }
    // It is alive: a serializable read is still served from its own state.
    let local = read_counter(&kv, key, true).await;
    assert_eq!(local.ok(), Some(u64::from(LAGGING_WRITES)));
    cluster.cont(leader);
    cluster.cont(other);
    let after = LAGGING_WRITES + 1;
    cluster.put(follower, key, &after.to_string()).await;
    poll(
        "a linearizable read on the follower after healing",
        || async { read_counter(&kv, key, false).await.ok() },
    )
    .await;
    assert_eq!(
        read_counter(&kv, key, false).await.ok(),
        Some(u64::from(after))
    );
}

/// Concurrent writers through one follower in the batched-forwarding test.
const BATCH_TEST_WRITERS: usize = 32;
/// Puts per writer, each to its own key.
const BATCH_TEST_PUTS_PER_WRITER: usize = 20;

/// Issue 11: a follower gathers concurrent writes into batches forwarded to the leader. Every
/// acknowledged write is in the store, and each reply belongs to its own write: its revision
/// is the key's mod revision read back from the leader. Puts with `prev_kv` (not batched: their
/// reply carries a value) run beside them and get their previous values. The follower's
/// metrics show fewer batches than batched writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_batches_forwarded_writes_and_answers_each() {
    let _turn = TURNS.take().await;
    let mut cluster = Cluster::new(3, Backend::Redb, None);
    let all = [0, 1, 2];
    cluster.start_all();
    let leader = cluster.wait_leader(&all).await;
    let follower = all.into_iter().find(|&i| i != leader).expect("a follower");
    // Through the follower first, so the forwarding path is known to work before the load.
    put_retry(&cluster.kv(follower), "fwd/warm", "0", "the follower").await;

    let mut writers = Vec::new();
    for writer in 0..BATCH_TEST_WRITERS {
        let kv = cluster.kv(follower);
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for n in 0..BATCH_TEST_PUTS_PER_WRITER {
                let key = format!("fwd/{writer:02}/{n:02}");
                let with_prev = writer == 0;
                let request = PutRequest {
                    key: if with_prev {
                        b"fwd/prev".to_vec()
                    } else {
                        key.clone().into_bytes()
                    },
                    value: format!("{writer}-{n}").into_bytes(),
                    prev_kv: with_prev,
                    ..Default::default()
                };
                let reply =
                    kv.clone().put(request).await.unwrap_or_else(|status| {
                        panic!("put {key} through the follower: {status}")
                    });
                let reply = reply.into_inner();
                let revision = reply.header.expect("header").revision;
                if with_prev {
                    let expected = n.checked_sub(1).map(|p| format!("0-{p}").into_bytes());
                    assert_eq!(
                        reply.prev_kv.map(|kv| kv.value),
                        expected,
                        "prev_kv of put {n}"
                    );
                } else {
                    acknowledged.push((key, revision));
                }
            }
            acknowledged
        }));
    }
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.expect("writer"));
    }
    assert_eq!(
        acknowledged.len(),
        (BATCH_TEST_WRITERS - 1) * BATCH_TEST_PUTS_PER_WRITER
    );
    let kv = cluster.kv(leader);
    for (key, revision) in &acknowledged {
        let request = RangeRequest {
            key: key.clone().into_bytes(),
            ..Default::default()
        };
        let reply = kv.clone().range(request).await.expect("range").into_inner();
        let stored = reply.kvs.first().unwrap_or_else(|| panic!("{key} lost"));
        assert_eq!(
            stored.mod_revision, *revision,
            "{key}: the reply's revision is not its write's"
        );
    }
    let text = cluster.metrics(follower).await.expect("metrics");
    let batches = common::gauge(&text, "aspen_forward_write_batches_total").expect("batches");
    let batched = common::gauge(&text, "aspen_forward_write_batched_total").expect("batched");
    eprintln!("member {follower}: {batched} forwarded writes in {batches} batches");
    assert!(
        batched >= acknowledged.len() as u64 && batches < batched,
        "{batched} writes in {batches} batches: not batched"
    );
}

/// Linearizable reads through the leader in the heartbeat-pipe test: each ReadIndex round
/// sends every follower a heartbeat.
const PIPE_TEST_READS: u32 = 300;

/// Issue 11: openraft sends each heartbeat (and so each ReadIndex round's leadership
/// confirmation) as an append stream of one request. The peer client keeps one long-lived
/// stream for them instead of opening one per heartbeat: after hundreds of rounds, each
/// follower has accepted few streams and many appends over them, and every read was answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_share_one_stream_per_follower() {
    let _turn = TURNS.take().await;
    let mut cluster = Cluster::new(3, Backend::Redb, None);
    let all = [0, 1, 2];
    cluster.start_all();
    let leader = cluster.wait_leader(&all).await;
    put_retry(&cluster.kv(leader), "pipe/key", "1", "the leader").await;
    let kv = cluster.kv(leader);
    for n in 0..PIPE_TEST_READS {
        let value = read_counter(&kv, "pipe/key", false)
            .await
            .unwrap_or_else(|status| panic!("linearizable read {n}: {status}"));
        assert_eq!(value, 1);
    }
    for follower in all.into_iter().filter(|&i| i != leader) {
        let text = cluster.metrics(follower).await.expect("metrics");
        let streams = common::gauge(&text, "aspen_peer_append_streams_total").expect("streams");
        let appends = common::gauge(&text, "aspen_peer_append_messages_total").expect("appends");
        eprintln!("member {follower}: {appends} appends over {streams} streams");
        assert!(
            appends >= u64::from(PIPE_TEST_READS) / 2,
            "member {follower}: {appends} appends for {PIPE_TEST_READS} ReadIndex rounds"
        );
        assert!(
            streams * 10 < appends,
            "member {follower}: {appends} appends over {streams} streams: a stream per heartbeat"
        );
    }
}
