//! Watches and leases across a leader crash, with real `aspen` processes (redb): 100
//! watchers on six streams spread over the three members, 100 leases kept alive from one
//! client stream, a writer putting continuously, SIGKILL of the leader, election, restart.
//!
//! Clients behave as etcd's do: a watch stream that breaks is reopened on another member with
//! every watcher resuming at its last seen revision + 1; a keep-alive stream that breaks is
//! reopened on another member. At the end:
//! - every watcher saw exactly the history of its range after the base revision, in order,
//!   with no gap and no duplicate (the history itself is checked against every acknowledged
//!   put and every key's final version);
//! - no kept-alive lease expired (each still has a positive TTL and its key);
//! - leases that were not kept alive expired no earlier than their TTL after the grant (and,
//!   since a new leader restarts every deadline, no earlier than TTL after the crash), and
//!   were revoked within a bounded time.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aspen_proto::etcdserverpb::kv_client::KvClient;
use aspen_proto::etcdserverpb::lease_client::LeaseClient;
use aspen_proto::etcdserverpb::watch_client::WatchClient;
use aspen_proto::etcdserverpb::watch_request::RequestUnion;
use aspen_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, WatchCreateRequest, WatchRequest, request_op,
};
use aspen_proto::mvccpb::event::EventType;
use common::{Backend, Cluster, poll, prefix_end};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

const MEMBERS: usize = 3;
const WATCHERS: usize = 100;
const WATCH_STREAMS: usize = 6;
/// Keys the writer puts and the watchers watch: `w/k00` .. `w/k19`.
const WATCHED_KEYS: usize = 20;
const LEASES: usize = 100;
const LEASE_TTL_SECONDS: i64 = 10;
const KEEP_ALIVE_INTERVAL_MS: u64 = 2_000;
/// Longest wait for one round of keep-alive answers before the stream is given up.
const KEEP_ALIVE_ANSWER_WAIT_MS: u64 = 5_000;
const SHORT_LEASES: usize = 5;
const SHORT_LEASE_TTL_SECONDS: i64 = 6;
/// After the crash, how long the short leases may take beyond their TTL to be revoked:
/// election, the new leader's lease check interval, Raft commit and slack.
const SHORT_LEASE_REVOKE_SLACK_MS: u64 = 8_000;
/// How often the short leases' keys are read.
const SHORT_LEASE_POLL_MS: u64 = 100;
/// Pause between two puts of the writer.
const WRITE_PAUSE_MS: u64 = 5;
/// Pause before a client retries on another member.
const RETRY_PAUSE_MS: u64 = 100;
/// Phases of the run.
const STEADY_MS: u64 = 2_000;
const SHORT_LEASE_TO_KILL_MS: u64 = 1_000;
const AFTER_KILL_MS: u64 = 2_000;
const AFTER_RESTART_MS: u64 = 2_000;
/// Longest the whole test may take.
const TEST_MS_MAX: u64 = 60_000;

/// A channel without a per-call deadline: watch and keep-alive streams stay open for long.
fn stream_channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_string())
        .expect("client url")
        .connect_timeout(Duration::from_millis(1_000))
        .connect_lazy()
}

fn watched_key(index: usize) -> String {
    format!("w/k{index:02}")
}

/// What one watcher watches: a single key or `[key, range_end)`.
#[derive(Debug, Clone)]
struct WatchSpec {
    key: Vec<u8>,
    range_end: Vec<u8>,
}

impl WatchSpec {
    fn contains(&self, key: &[u8]) -> bool {
        if self.range_end.is_empty() {
            key == self.key.as_slice()
        } else {
            key >= self.key.as_slice() && key < self.range_end.as_slice()
        }
    }
}

/// Single keys, prefixes and ranges over the watched keys.
fn watch_spec(index: usize) -> WatchSpec {
    let key = |i: usize| watched_key(i).into_bytes();
    match index % 5 {
        0 | 3 => WatchSpec {
            key: key((index * 7) % WATCHED_KEYS),
            range_end: Vec::new(),
        },
        1 => {
            let prefix = format!("w/k{}", (index / 5) % 2);
            WatchSpec {
                range_end: prefix_end(prefix.as_bytes()),
                key: prefix.into_bytes(),
            }
        }
        2 => {
            let first = index % (WATCHED_KEYS - 5);
            WatchSpec {
                key: key(first),
                range_end: key(first + 5),
            }
        }
        _ => WatchSpec {
            key: b"w/".to_vec(),
            range_end: prefix_end(b"w/"),
        },
    }
}

/// One event as a watcher saw it, or as history has it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    revision: i64,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{}={}",
            String::from_utf8_lossy(&self.key),
            self.revision,
            String::from_utf8_lossy(&self.value)
        )
    }
}

/// What the clients share with the test.
struct Shared {
    urls: Vec<String>,
    specs: Vec<WatchSpec>,
    /// Events per watcher, in the order received.
    seen: Mutex<Vec<Vec<Seen>>>,
    /// Problems a client met that fail the test (cancelled watcher, lost lease, ...).
    failures: Mutex<Vec<String>>,
    /// Watch streams reopened after an error, and on request.
    watch_resumes: AtomicU64,
    keep_alive_reconnects: AtomicU64,
    keep_alive_rounds: AtomicU64,
}

impl Shared {
    fn fail(&self, failure: String) {
        eprintln!("FAILURE: {failure}");
        self.failures.lock().expect("failures").push(failure);
    }

    /// The events seen so far (a panicking test must not take every client down with it).
    fn seen(&self) -> std::sync::MutexGuard<'_, Vec<Vec<Seen>>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_member(&self, member: usize) -> usize {
        (member + 1) % self.urls.len()
    }
}

/// One etcd-style watch client: `watchers` (global indices) on one gRPC stream, reopened on
/// another member when it breaks (or on the member sent on `moves`), every watcher resuming
/// at its last seen revision + 1.
async fn watch_client(
    shared: Arc<Shared>,
    mut member: usize,
    watchers: Vec<usize>,
    base_revision: i64,
    mut moves: mpsc::Receiver<usize>,
    mut stop: watch::Receiver<bool>,
) {
    let mut first = true;
    loop {
        if *stop.borrow() {
            return;
        }
        if !first {
            shared.watch_resumes.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let (requests, receiver) = mpsc::channel(watchers.len() + 1);
        {
            let seen = shared.seen();
            for (local, &global) in watchers.iter().enumerate() {
                let last = seen[global].last().map_or(base_revision, |s| s.revision);
                let spec = &shared.specs[global];
                let create = WatchCreateRequest {
                    key: spec.key.clone(),
                    range_end: spec.range_end.clone(),
                    start_revision: last + 1,
                    watch_id: i64::try_from(local).expect("a small index"),
                    ..Default::default()
                };
                let request = WatchRequest {
                    request_union: Some(RequestUnion::CreateRequest(create)),
                };
                requests.try_send(request).expect("room for every create");
            }
        }
        let mut client = WatchClient::new(stream_channel(&shared.urls[member]));
        let opened = tokio::select! {
            opened = client.watch(ReceiverStream::new(receiver)) => opened,
            _ = stop.changed() => return,
        };
        let mut responses = match opened {
            Ok(responses) => responses.into_inner(),
            Err(status) => {
                eprintln!("watch stream on member {member}: {status}; trying another member");
                member = shared.next_member(member);
                tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                message = responses.message() => match message {
                    Ok(Some(response)) => {
                        let Some(&global) = usize::try_from(response.watch_id)
                            .ok()
                            .and_then(|local| watchers.get(local))
                        else {
                            shared.fail(format!("response for unknown watch id: {response:?}"));
                            continue;
                        };
                        if response.canceled {
                            shared.fail(format!(
                                "watcher {global} cancelled on member {member}: {}",
                                response.cancel_reason
                            ));
                        }
                        let mut seen = shared.seen();
                        for event in response.events {
                            let kv = event.kv.unwrap_or_default();
                            if event.r#type != EventType::Put as i32 {
                                shared.fail(format!("watcher {global}: unexpected event {kv:?}"));
                            }
                            seen[global].push(Seen {
                                revision: kv.mod_revision,
                                key: kv.key,
                                value: kv.value,
                            });
                        }
                    }
                    Ok(None) | Err(_) => {
                        eprintln!("watch stream on member {member} broke; resuming elsewhere");
                        member = shared.next_member(member);
                        tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
                        break;
                    }
                },
                target = moves.recv() => {
                    if let Some(target) = target {
                        eprintln!("watch stream moves from member {member} to {target}");
                        member = target;
                    }
                    break;
                }
                _ = stop.changed() => return,
            }
        }
    }
}

/// Keeps `leases` alive every `KEEP_ALIVE_INTERVAL_MS` over one stream, reopened on another
/// member when it breaks. A lease answered with TTL 0 (not found) is a failure.
async fn keep_alive_client(
    shared: Arc<Shared>,
    mut member: usize,
    leases: Vec<i64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut reconnect = false;
    loop {
        if *stop.borrow() {
            return;
        }
        if reconnect {
            shared.keep_alive_reconnects.fetch_add(1, Ordering::Relaxed);
            member = shared.next_member(member);
            tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
        }
        reconnect = true;
        let (requests, receiver) = mpsc::channel(leases.len());
        let mut client = LeaseClient::new(stream_channel(&shared.urls[member]));
        let opened = tokio::select! {
            opened = client.lease_keep_alive(ReceiverStream::new(receiver)) => opened,
            _ = stop.changed() => return,
        };
        let mut answers = match opened {
            Ok(answers) => answers.into_inner(),
            Err(status) => {
                eprintln!("keep-alive stream on member {member}: {status}");
                continue;
            }
        };
        'rounds: loop {
            let round_start = Instant::now();
            for &id in &leases {
                if requests.send(LeaseKeepAliveRequest { id }).await.is_err() {
                    eprintln!("keep-alive stream on member {member} closed; reconnecting");
                    break 'rounds;
                }
            }
            let deadline = Instant::now() + Duration::from_millis(KEEP_ALIVE_ANSWER_WAIT_MS);
            for _ in 0..leases.len() {
                let answer = tokio::select! {
                    answer = tokio::time::timeout_at(deadline, answers.message()) => answer,
                    _ = stop.changed() => return,
                };
                match answer {
                    Ok(Ok(Some(answer))) => {
                        if answer.ttl != LEASE_TTL_SECONDS {
                            shared.fail(format!(
                                "keep-alive of lease {} via member {member} answered TTL {}",
                                answer.id, answer.ttl
                            ));
                        }
                    }
                    other => {
                        eprintln!("keep-alive stream on member {member}: {other:?}; reconnecting");
                        break 'rounds;
                    }
                }
            }
            shared.keep_alive_rounds.fetch_add(1, Ordering::Relaxed);
            let next = round_start + Duration::from_millis(KEEP_ALIVE_INTERVAL_MS);
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// An acknowledged put.
#[derive(Debug, Clone)]
struct Acked {
    revision: i64,
    key: Vec<u8>,
    value: Vec<u8>,
    at: Instant,
}

/// What the writer did: every attempted value (unique) with its key, and the acknowledged
/// puts in order.
#[derive(Default)]
struct WriterLog {
    attempted: HashMap<Vec<u8>, Vec<u8>>,
    acked: Vec<Acked>,
}

/// Puts continuously, mostly on watched keys (one in five on an unwatched key); a failed
/// put is not retried (its value may or may not be applied) and the next goes to another
/// member.
async fn writer(
    shared: Arc<Shared>,
    mut member: usize,
    log: Arc<Mutex<WriterLog>>,
    stop: watch::Receiver<bool>,
) {
    let channel_for = |member: usize| {
        Endpoint::from_shared(shared.urls[member].clone())
            .expect("client url")
            .connect_timeout(Duration::from_millis(1_000))
            .timeout(Duration::from_millis(common::RPC_TIMEOUT_MS))
            .connect_lazy()
    };
    let mut kv = KvClient::new(channel_for(member));
    let mut watched_puts = 0usize;
    for sequence in 0u64.. {
        if *stop.borrow() {
            return;
        }
        let key = if sequence % 5 == 4 {
            format!("x/{sequence}")
        } else {
            watched_puts += 1;
            watched_key(watched_puts % WATCHED_KEYS)
        };
        let value = format!("v{sequence}");
        log.lock()
            .expect("log")
            .attempted
            .insert(value.clone().into_bytes(), key.clone().into_bytes());
        let request = PutRequest {
            key: key.clone().into_bytes(),
            value: value.clone().into_bytes(),
            ..Default::default()
        };
        // An abandoned put could still be applied after the test reads the final state, so
        // the writer stops only between puts.
        match kv.put(request).await {
            Ok(reply) => {
                let revision = reply.into_inner().header.expect("header").revision;
                log.lock().expect("log").acked.push(Acked {
                    revision,
                    key: key.into_bytes(),
                    value: value.into_bytes(),
                    at: Instant::now(),
                });
                tokio::time::sleep(Duration::from_millis(WRITE_PAUSE_MS)).await;
            }
            Err(status) => {
                eprintln!("writer: put {key} via member {member}: {status}; next member");
                member = shared.next_member(member);
                kv = KvClient::new(channel_for(member));
                tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
            }
        }
    }
}

/// Reads the short leases' keys until all are gone; returns when each was first seen
/// missing. A read that fails is retried on another member.
async fn short_lease_watch(
    shared: Arc<Shared>,
    keys: Vec<Vec<u8>>,
    deadline: Instant,
) -> Vec<Option<Instant>> {
    let mut gone: Vec<Option<Instant>> = vec![None; keys.len()];
    let mut member = 0;
    let mut kv = KvClient::new(stream_channel(&shared.urls[member]));
    while gone.iter().any(Option::is_none) && Instant::now() < deadline {
        let request = RangeRequest {
            key: b"s/".to_vec(),
            range_end: prefix_end(b"s/"),
            keys_only: true,
            ..Default::default()
        };
        let read = tokio::time::timeout(Duration::from_millis(2_000), kv.range(request)).await;
        match read {
            Ok(Ok(reply)) => {
                let now = Instant::now();
                let present: Vec<Vec<u8>> = reply
                    .into_inner()
                    .kvs
                    .into_iter()
                    .map(|kv| kv.key)
                    .collect();
                for (index, key) in keys.iter().enumerate() {
                    if gone[index].is_none() && !present.contains(key) {
                        gone[index] = Some(now);
                    }
                }
            }
            _ => {
                member = shared.next_member(member);
                kv = KvClient::new(stream_channel(&shared.urls[member]));
            }
        }
        tokio::time::sleep(Duration::from_millis(SHORT_LEASE_POLL_MS)).await;
    }
    gone
}

/// Grants a lease through `lease`, retrying (a retried grant may leave an unused lease
/// behind, which expires unnoticed).
async fn grant(lease: LeaseClient<Channel>, ttl: i64) -> i64 {
    poll("a lease grant", || {
        let mut lease = lease.clone();
        async move {
            match lease.lease_grant(LeaseGrantRequest { ttl, id: 0 }).await {
                Ok(reply) => Some(reply.into_inner().id),
                Err(status) => {
                    eprintln!("grant: {status}; retrying");
                    None
                }
            }
        }
    })
    .await
}

/// Attaches `keys[i]` to `leases[i]` in one Txn; returns its revision.
async fn attach(cluster: &Cluster, member: usize, keys: &[String], leases: &[i64]) -> i64 {
    poll("the lease keys' Txn", || async {
        let success = keys
            .iter()
            .zip(leases)
            .map(|(key, &lease)| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: b"leased".to_vec(),
                    lease,
                    ..Default::default()
                })),
            })
            .collect();
        let txn = TxnRequest {
            success,
            ..Default::default()
        };
        match cluster.kv(member).txn(txn).await {
            Ok(reply) => Some(reply.into_inner().header.expect("header").revision),
            Err(status) => {
                eprintln!("lease keys' Txn: {status}; retrying");
                None
            }
        }
    })
    .await
}

async fn put_with_lease(cluster: &Cluster, member: usize, key: &str, lease: i64) -> i64 {
    poll(&format!("put {key} with lease {lease}"), || async {
        let request = PutRequest {
            key: key.as_bytes().to_vec(),
            value: b"leased".to_vec(),
            lease,
            ..Default::default()
        };
        match cluster.kv(member).put(request).await {
            Ok(reply) => Some(reply.into_inner().header.expect("header").revision),
            Err(status) => {
                eprintln!("put {key}: {status}; retrying");
                None
            }
        }
    })
    .await
}

/// The history of `w/` after `base_revision` through `last_revision`, replayed by a new
/// watcher on `member`.
async fn history(cluster: &Cluster, member: usize, base_revision: i64, last: i64) -> Vec<Seen> {
    let (requests, receiver) = mpsc::channel(1);
    let create = WatchCreateRequest {
        key: b"w/".to_vec(),
        range_end: prefix_end(b"w/"),
        start_revision: base_revision + 1,
        ..Default::default()
    };
    requests
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        })
        .await
        .expect("send create");
    let url = cluster.members[member].client_url();
    let mut responses = WatchClient::new(stream_channel(&url))
        .watch(ReceiverStream::new(receiver))
        .await
        .expect("history stream")
        .into_inner();
    let deadline = Instant::now() + Duration::from_millis(common::WAIT_MS_MAX);
    let mut events = Vec::new();
    while events.last().is_none_or(|e: &Seen| e.revision < last) {
        let response = tokio::time::timeout_at(deadline, responses.message())
            .await
            .expect("history in time")
            .expect("history stream")
            .expect("history stream open");
        assert!(
            !response.canceled,
            "history watcher cancelled: {response:?}"
        );
        for event in response.events {
            assert_eq!(event.r#type, EventType::Put as i32, "only puts under w/");
            let kv = event.kv.expect("kv");
            events.push(Seen {
                revision: kv.mod_revision,
                key: kv.key,
                value: kv.value,
            });
        }
    }
    drop(requests);
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_with_100_watchers_and_100_leases() {
    let test_start = Instant::now();
    let mut cluster = Cluster::new(MEMBERS, Backend::Redb, None);
    cluster.start_all();
    let all: Vec<usize> = (0..MEMBERS).collect();
    let leader = cluster.wait_leader(&all).await;
    let followers: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    eprintln!("leader: member {leader}");

    // 100 leases granted at once through the members in turn, kept alive from right after.
    let mut grants = tokio::task::JoinSet::new();
    for index in 0..LEASES {
        let lease = LeaseClient::new(cluster.channel(index % MEMBERS));
        grants.spawn(async move { (index, grant(lease, LEASE_TTL_SECONDS).await) });
    }
    let mut leases = vec![0; LEASES];
    while let Some(granted) = grants.join_next().await {
        let (index, id) = granted.expect("grant task");
        leases[index] = id;
    }
    eprintln!("granted {LEASES} leases after {:?}", test_start.elapsed());

    let shared = Arc::new(Shared {
        urls: cluster.members.iter().map(|m| m.client_url()).collect(),
        specs: (0..WATCHERS).map(watch_spec).collect(),
        seen: Mutex::new(vec![Vec::new(); WATCHERS]),
        failures: Mutex::new(Vec::new()),
        watch_resumes: AtomicU64::new(0),
        keep_alive_reconnects: AtomicU64::new(0),
        keep_alive_rounds: AtomicU64::new(0),
    });
    let (stop_sender, stop) = watch::channel(false);
    // Keep-alives start on the leader, so its crash breaks their stream.
    let keeper = tokio::spawn(keep_alive_client(
        shared.clone(),
        leader,
        leases.clone(),
        stop.clone(),
    ));
    // Each lease gets its own key.
    let lease_keys: Vec<String> = (0..LEASES).map(|i| format!("l/{i:03}")).collect();
    let lease_keys_revision = attach(&cluster, leader, &lease_keys, &leases).await;

    // Watchers from the revision after this one: nothing under w/ exists yet.
    let base_revision = cluster.put(leader, "base", "0").await;
    let mut watch_tasks = Vec::new();
    let mut move_senders = Vec::new();
    for stream in 0..WATCH_STREAMS {
        let watchers: Vec<usize> = (stream..WATCHERS).step_by(WATCH_STREAMS).collect();
        let (move_sender, moves) = mpsc::channel(1);
        move_senders.push(move_sender);
        watch_tasks.push(tokio::spawn(watch_client(
            shared.clone(),
            stream % MEMBERS,
            watchers,
            base_revision,
            moves,
            stop.clone(),
        )));
    }
    let writer_log = Arc::new(Mutex::new(WriterLog::default()));
    let (stop_writer, writer_stop) = watch::channel(false);
    let writer_task = tokio::spawn(writer(
        shared.clone(),
        leader,
        writer_log.clone(),
        writer_stop,
    ));
    tokio::time::sleep(Duration::from_millis(STEADY_MS)).await;

    // Leases that nobody keeps alive, granted just before the crash.
    let mut short_grants = Vec::with_capacity(SHORT_LEASES);
    let mut short_keys = Vec::with_capacity(SHORT_LEASES);
    for index in 0..SHORT_LEASES {
        let sent = Instant::now();
        let id = grant(
            LeaseClient::new(cluster.channel(leader)),
            SHORT_LEASE_TTL_SECONDS,
        )
        .await;
        let key = format!("s/{index}");
        put_with_lease(&cluster, leader, &key, id).await;
        short_grants.push(sent);
        short_keys.push(key.into_bytes());
    }
    let short_watch = tokio::spawn(short_lease_watch(
        shared.clone(),
        short_keys.clone(),
        Instant::now()
            + Duration::from_secs(SHORT_LEASE_TTL_SECONDS as u64)
            + Duration::from_millis(SHORT_LEASE_TO_KILL_MS + SHORT_LEASE_REVOKE_SLACK_MS),
    ));
    tokio::time::sleep(Duration::from_millis(SHORT_LEASE_TO_KILL_MS)).await;

    let acked_before_kill = writer_log.lock().expect("log").acked.len();
    let killed_at = Instant::now();
    cluster.kill(leader);
    eprintln!(
        "killed leader {leader} after {:?} ({acked_before_kill} puts acknowledged)",
        test_start.elapsed()
    );
    let new_leader = cluster.wait_leader(&followers).await;
    let elected_after = killed_at.elapsed();
    eprintln!("member {new_leader} leads after {elected_after:?}");
    tokio::time::sleep(Duration::from_millis(AFTER_KILL_MS)).await;

    cluster.start(leader);
    cluster.wait_leader(&all).await;
    eprintln!("restarted member {leader} after {:?}", test_start.elapsed());
    // A stream that was on a follower moves to the restarted member, which may still be
    // catching up: its watchers wait there for revisions it has not applied yet.
    let mover = (0..WATCH_STREAMS)
        .find(|s| s % MEMBERS != leader)
        .expect("a stream on a follower");
    move_senders[mover].send(leader).await.expect("mover runs");
    tokio::time::sleep(Duration::from_millis(AFTER_RESTART_MS)).await;

    // The short leases: not revoked before their TTL, revoked in time.
    let gone = short_watch.await.expect("short lease reader");
    for (index, gone_at) in gone.iter().enumerate() {
        let gone_at = gone_at.unwrap_or_else(|| {
            panic!(
                "short lease key s/{index} still exists {:?} after the crash",
                killed_at.elapsed()
            )
        });
        let after_grant = gone_at.duration_since(short_grants[index]);
        let after_kill = gone_at.duration_since(killed_at);
        eprintln!("s/{index} gone {after_grant:?} after its grant, {after_kill:?} after the crash");
        let ttl = Duration::from_secs(SHORT_LEASE_TTL_SECONDS as u64);
        assert!(
            after_grant >= ttl,
            "s/{index} expired early: {after_grant:?}"
        );
        // The new leader restarts every deadline at its election: no lease is cut short.
        assert!(
            after_kill >= ttl,
            "s/{index} expired {after_kill:?} after the crash; the new leader must give it a full TTL"
        );
    }

    // Stop writing; everything written must reach every watcher.
    stop_writer.send(true).expect("writer runs");
    writer_task.await.expect("writer");
    let acked = std::mem::take(&mut writer_log.lock().expect("log").acked);
    let mut attempted = std::mem::take(&mut writer_log.lock().expect("log").attempted);
    let acked_after_election = acked
        .iter()
        .filter(|a| a.at >= killed_at + elected_after)
        .count();
    eprintln!(
        "{} puts acknowledged ({acked_after_election} after the election), {} attempted",
        acked.len(),
        attempted.len()
    );
    assert!(acked_before_kill > 0, "no put before the crash");
    assert!(acked_after_election > 0, "writes did not continue");
    assert!(
        acked.windows(2).all(|w| w[0].revision < w[1].revision),
        "acknowledged revisions of one sequential writer must increase"
    );

    // A last put under w/ closes the checked history: everything up to its revision must
    // have reached every watcher (a put the writer saw fail might in principle still be
    // applied later; it would land after this one and is not checked).
    let reader = cluster.wait_leader(&all).await;
    attempted.insert(b"end".to_vec(), b"w/zz".to_vec());
    let last = cluster.put(reader, "w/zz", "end").await;
    // The state of w/ at that revision: every key's version.
    let state = poll("a range of w/ at the last revision", || async {
        let request = RangeRequest {
            key: b"w/".to_vec(),
            range_end: prefix_end(b"w/"),
            revision: last,
            ..Default::default()
        };
        cluster
            .kv(reader)
            .range(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| eprintln!("range w/: {status}; retrying"))
            .ok()
    })
    .await;
    let mut history = history(&cluster, reader, base_revision, last).await;
    history.retain(|e| e.revision <= last);
    assert!(
        history.windows(2).all(|w| w[0].revision < w[1].revision),
        "history out of order"
    );
    assert_eq!(history.last().map(|e| e.revision), Some(last));
    for event in &history {
        assert_eq!(
            attempted.get(&event.value),
            Some(&event.key),
            "history holds a put nobody made: {event}"
        );
    }
    // No gap in history: each key's version counts its puts since it was created.
    let mut puts_per_key: BTreeMap<&[u8], i64> = BTreeMap::new();
    for event in &history {
        *puts_per_key.entry(event.key.as_slice()).or_default() += 1;
    }
    for kv in &state.kvs {
        assert_eq!(
            puts_per_key.get(kv.key.as_slice()).copied(),
            Some(kv.version),
            "history of {} vs its version",
            String::from_utf8_lossy(&kv.key)
        );
    }
    let by_revision: HashMap<i64, &Seen> = history.iter().map(|e| (e.revision, e)).collect();
    for put in acked.iter().filter(|a| a.key.starts_with(b"w/")) {
        let event = by_revision.get(&put.revision).unwrap_or_else(|| {
            panic!(
                "acknowledged put {}@{} missing from history",
                String::from_utf8_lossy(&put.key),
                put.revision
            )
        });
        assert_eq!(
            (&event.key, &event.value),
            (&put.key, &put.value),
            "history at revision {}",
            put.revision
        );
    }

    // Every watcher: exactly its range's history, in order, once.
    let expected: Vec<Vec<Seen>> = shared
        .specs
        .iter()
        .map(|spec| {
            history
                .iter()
                .filter(|e| spec.contains(&e.key))
                .cloned()
                .collect()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_millis(common::WAIT_MS_MAX);
    loop {
        let behind: Vec<usize> = {
            let seen = shared.seen();
            (0..WATCHERS)
                .filter(|&i| {
                    seen[i].iter().filter(|e| e.revision <= last).count() < expected[i].len()
                })
                .collect()
        };
        if behind.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            // The comparison below names the first missing or extra event.
            eprintln!("watchers {behind:?} did not receive every event in time");
            break;
        }
        tokio::time::sleep(Duration::from_millis(common::POLL_INTERVAL_MS)).await;
    }
    {
        let seen = shared.seen();
        for (index, (got, want)) in seen.iter().zip(&expected).enumerate() {
            for pair in got.windows(2) {
                assert!(
                    pair[0].revision < pair[1].revision,
                    "watcher {index} ({:?}): {} then {}",
                    shared.specs[index],
                    pair[0],
                    pair[1]
                );
            }
            let got: Vec<Seen> = got.iter().filter(|e| e.revision <= last).cloned().collect();
            if &got != want {
                let first = got
                    .iter()
                    .zip(want)
                    .position(|(g, w)| g != w)
                    .unwrap_or(got.len().min(want.len()));
                panic!(
                    "watcher {index} ({:?}): {} events, history has {}; first difference at \
                     {first}: got {:?}, history {:?}",
                    shared.specs[index],
                    got.len(),
                    want.len(),
                    got.get(first).map(ToString::to_string),
                    want.get(first).map(ToString::to_string),
                );
            }
        }
        let total: usize = seen.iter().map(Vec::len).sum();
        eprintln!(
            "{WATCHERS} watchers received {total} events ({} history events), {} stream resumes",
            history.len(),
            shared.watch_resumes.load(Ordering::Relaxed)
        );
    }
    // The two streams on the crashed leader and the moved one resumed elsewhere.
    assert!(shared.watch_resumes.load(Ordering::Relaxed) >= 3);

    // Every kept-alive lease is alive with its key untouched since it was attached.
    let mut lease_client = LeaseClient::new(cluster.channel(reader));
    for (index, &id) in leases.iter().enumerate() {
        let ttl = lease_client
            .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
            .await
            .expect("time to live")
            .into_inner();
        let key = lease_keys[index].clone().into_bytes();
        assert!(ttl.ttl > 0, "lease {index} ({id}) expired: {ttl:?}");
        assert_eq!(ttl.keys, vec![key], "lease {index} keys");
    }
    let stored = cluster
        .get_prefix(reader, "l/", false)
        .await
        .expect("range l/");
    let stored: Vec<(String, i64)> = stored
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.mod_revision,
            )
        })
        .collect();
    let attached: Vec<(String, i64)> = lease_keys
        .iter()
        .map(|key| (key.clone(), lease_keys_revision))
        .collect();
    assert_eq!(stored, attached, "lease keys deleted or rewritten");
    stop_sender.send(true).expect("clients run");
    keeper.await.expect("keeper");
    for task in watch_tasks {
        task.await.expect("watch client");
    }
    let rounds = shared.keep_alive_rounds.load(Ordering::Relaxed);
    let reconnects = shared.keep_alive_reconnects.load(Ordering::Relaxed);
    eprintln!("{rounds} keep-alive rounds, {reconnects} keep-alive reconnects");
    assert!(reconnects >= 1, "the keep-alive stream on the leader broke");
    let failures = shared.failures.lock().expect("failures");
    assert!(failures.is_empty(), "client failures: {failures:#?}");
    let elapsed = test_start.elapsed();
    eprintln!("done in {elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(TEST_MS_MAX),
        "took {elapsed:?}"
    );
}
