//! Chaos against real processes: three `aspen` members on loopback serve concurrent random
//! puts, linearizable gets, deletes and compare-and-swaps from several clients while a nemesis
//! SIGKILLs (then restarts) or SIGSTOPs (then resumes) one member at a time. Afterwards, with
//! every member running again: the recorded history, ending in a linearizable read of every
//! key, must be linearizable (aspen-check); the store's own history (a watch replaying every
//! revision) must hold each acknowledged write exactly once and no value nobody wrote; no two
//! members may have named different leaders for one term; and every member must hold the same
//! data (HashKV at one revision, once all applied the same index).
//!
//! `ASPEN_CHAOS_SECONDS` sets how long the load and faults run (default 8 s, so that
//! `cargo test --workspace` stays quick; CI sets 60). `ASPEN_CHAOS_SEED` replays the nemesis
//! schedule and the clients' choice of operations; timing, and so the interleaving, still
//! differs from run to run. `ASPEN_CHAOS_TLS=1` runs the same with mutual TLS on every client
//! and peer connection (certificates from a test CA).

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aspen_check::{
    CheckConfig, Completion, KvHistory, KvInput, KvOutput, Operation, Verdict, check_kv,
};
use aspen_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use aspen_proto::etcdserverpb::kv_client::KvClient;
use aspen_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use aspen_proto::etcdserverpb::request_op::Request as TxnRequestOp;
use aspen_proto::etcdserverpb::watch_client::WatchClient;
use aspen_proto::etcdserverpb::watch_request::RequestUnion;
use aspen_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, HashKvRequest, HashKvResponse, PutRequest, RangeRequest,
    RequestOp, StatusRequest, TxnRequest, WatchCreateRequest, WatchRequest,
};
use aspen_proto::mvccpb::event::EventType;
use common::{Backend, Cluster, poll};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Load duration when `ASPEN_CHAOS_SECONDS` is not set.
const CHAOS_SECONDS_DEFAULT: u64 = 8;
/// Longest load duration accepted from `ASPEN_CHAOS_SECONDS` (an hour).
const CHAOS_SECONDS_MAX: u64 = 3_600;
const MEMBERS: usize = 3;
/// Concurrent clients, each with its own connection.
const CLIENTS: u64 = 6;
/// The client id of the final reads, after every client stopped.
const FINAL_READER: u64 = CLIENTS;
/// Every key the test writes starts with this.
const KEY_PREFIX: &str = "chaos/";
/// A small key set, so that clients contend on every key.
const KEYS: [&str; 5] = ["chaos/k0", "chaos/k1", "chaos/k2", "chaos/k3", "chaos/k4"];
/// gRPC deadline of one client request.
const REQUEST_TIMEOUT_MS: u64 = 2_000;
const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// A client-side timer backs up the gRPC deadline (a frozen peer must not hang a client).
const REQUEST_TIMER_SLACK_MS: u64 = 500;
/// Pause after a failed request before the next one, on another member.
const ERROR_BACKOFF_MS: u64 = 50;
/// Bound of one client's loop; the deadline ends it long before.
const OPS_PER_CLIENT_MAX: u64 = 10_000_000;
/// Time between the end of one fault and the start of the next.
const FAULT_INTERVAL_MS_MIN: u64 = 1_000;
const FAULT_INTERVAL_MS_MAX: u64 = 3_000;
/// How long a SIGKILLed member stays dead before it restarts with the same flags.
const KILL_DOWN_MS_MIN: u64 = 500;
const KILL_DOWN_MS_MAX: u64 = 1_500;
/// How long a SIGSTOPped member stays frozen before SIGCONT.
const STOP_DOWN_MS_MIN: u64 = 500;
const STOP_DOWN_MS_MAX: u64 = 2_000;
/// Bound of the nemesis loop; the deadline ends it long before.
const FAULTS_MAX: u64 = 100_000;
/// How often the leader observer asks every member for its Status, and its deadline per ask.
const OBSERVE_INTERVAL_MS: u64 = 100;
const OBSERVE_TIMEOUT_MS: u64 = 300;
/// Longest a client or the observer may take to finish after the load deadline: one request
/// with its timer, and a margin for a loaded machine.
const TASK_FINISH_MS_MAX: u64 = 10_000;
/// Length of the error text by which failures are tallied in the report.
const ERROR_KIND_BYTES_MAX: usize = 72;
/// Watch responses without events (the `created` one) tolerated while replaying history.
const WATCH_EMPTY_RESPONSES_MAX: u64 = 16;
/// Unexpected errors printed when the test fails on them.
const UNEXPECTED_ERRORS_SHOWN_MAX: usize = 10;

/// SplitMix64: a tiny seeded generator, so a schedule replays from its seed.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (the modulo bias is irrelevant at these sizes).
    fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "empty range");
        self.next_u64() % n
    }

    /// Uniform in `min..=max`.
    fn between(&mut self, min: u64, max: u64) -> u64 {
        assert!(min <= max, "empty range {min}..={max}");
        min + self.below(max - min + 1)
    }
}

fn chaos_seconds() -> u64 {
    match std::env::var("ASPEN_CHAOS_SECONDS") {
        Ok(text) => {
            let seconds: u64 = text
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("ASPEN_CHAOS_SECONDS={text:?} is not a number"));
            assert!(
                (1..=CHAOS_SECONDS_MAX).contains(&seconds),
                "ASPEN_CHAOS_SECONDS must be 1..={CHAOS_SECONDS_MAX}"
            );
            seconds
        }
        Err(_) => CHAOS_SECONDS_DEFAULT,
    }
}

/// The clients' TLS, when `ASPEN_CHAOS_TLS=1` made the cluster's URLs https.
static CLIENT_TLS: std::sync::OnceLock<aspen_tls::ClientTls> = std::sync::OnceLock::new();

fn chaos_tls() -> bool {
    match std::env::var("ASPEN_CHAOS_TLS").as_deref() {
        Ok("1") | Ok("true") => true,
        Ok("0") | Ok("false") | Err(_) => false,
        Ok(other) => panic!("ASPEN_CHAOS_TLS={other:?}: use 1 or 0"),
    }
}

fn chaos_seed() -> u64 {
    match std::env::var("ASPEN_CHAOS_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("ASPEN_CHAOS_SEED={text:?} is not a u64")),
        Err(_) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            Rng(aspen_core::convert::nanos(now) ^ u64::from(std::process::id())).next_u64()
        }
    }
}

/// Why a request gave no answer.
enum CallError {
    /// The server (or the transport, on its behalf) returned a status.
    Status(Status),
    /// The client-side timer fired first.
    Timer,
    /// The reply contradicts the request: a bug, whatever the history says.
    Protocol(String),
}

impl CallError {
    /// True when the request never left the client: the connection to the member could not
    /// be made (a killed member's port refuses it).
    fn never_sent(&self) -> bool {
        match self {
            CallError::Status(status) => {
                status.code() == Code::Unavailable
                    && status.message().starts_with("tcp connect error")
            }
            CallError::Timer | CallError::Protocol(_) => false,
        }
    }

    /// True when the request may or may not have taken effect; false for definite answers,
    /// which a correct server does not give to these well-formed requests.
    fn outcome_unknown(&self) -> bool {
        match self {
            CallError::Timer => true,
            CallError::Protocol(_) => false,
            CallError::Status(status) => match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                    true
                }
                // h2 reports a connection torn down mid-request (a SIGKILLed peer) as
                // Internal; the server's own Internal errors are bugs.
                Code::Internal => status.message().contains("h2 protocol error"),
                _ => false,
            },
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Status(status) => {
                write!(f, "{:?}: {}", status.code(), status.message())
            }
            CallError::Timer => write!(
                f,
                "no answer within {} ms",
                REQUEST_TIMEOUT_MS + REQUEST_TIMER_SLACK_MS
            ),
            CallError::Protocol(message) => write!(f, "protocol violation: {message}"),
        }
    }
}

impl From<Status> for CallError {
    fn from(status: Status) -> CallError {
        CallError::Status(status)
    }
}

/// The shared record of the run: the history on one monotonic clock, and counters.
struct Recorder {
    started: std::time::Instant,
    history: Mutex<KvHistory>,
    ok: AtomicU64,
    unknown_writes: AtomicU64,
    unknown_reads: AtomicU64,
    /// Writes that failed before a connection existed: they never reached a member.
    unsent_writes: AtomicU64,
    unexpected: Mutex<Vec<String>>,
    /// How often each error (its first bytes) was seen, for the report.
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            started: std::time::Instant::now(),
            history: Mutex::new(KvHistory::new()),
            ok: AtomicU64::new(0),
            unknown_writes: AtomicU64::new(0),
            unknown_reads: AtomicU64::new(0),
            unsent_writes: AtomicU64::new(0),
            unexpected: Mutex::new(Vec::new()),
            errors: Mutex::new(BTreeMap::new()),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn push(&self, operation: Operation<KvInput, KvOutput>) {
        let mut history = self.history.lock().expect("history lock");
        history.push(operation).expect("a well-formed operation");
    }

    fn returned(&self, client_id: u64, input: KvInput, invoke_ns: u64, output: KvOutput) {
        let at_ns = self.now_ns();
        self.ok.fetch_add(1, Ordering::Relaxed);
        self.push(Operation {
            client_id,
            input,
            invoke_ns,
            completion: Completion::Returned { output, at_ns },
        });
    }

    /// A request without an answer. A write that was sent may have taken effect: it enters the
    /// history as indeterminate. A read that returned nothing changed nothing and told
    /// nothing, and a write that was never sent changed nothing, so leaving those out is
    /// exactly equivalent and keeps the checker's search small (every indeterminate write
    /// may take effect anywhere after its invocation, which the search must consider).
    fn failed(&self, client_id: u64, input: KvInput, invoke_ns: u64, error: &CallError) {
        let mut kind = error.to_string();
        kind.truncate(kind.floor_char_boundary(ERROR_KIND_BYTES_MAX));
        *self.errors.lock().expect("lock").entry(kind).or_default() += 1;
        if !error.outcome_unknown() {
            let message = format!("client {client_id}: {input:?} failed: {error}");
            self.unexpected.lock().expect("lock").push(message);
        }
        if matches!(input, KvInput::Get { .. }) {
            self.unknown_reads.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if error.never_sent() {
            self.unsent_writes.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.unknown_writes.fetch_add(1, Ordering::Relaxed);
        self.push(Operation {
            client_id,
            input,
            invoke_ns,
            completion: Completion::Indeterminate,
        });
    }
}

fn client_channel(url: &str) -> Channel {
    let endpoint = Endpoint::from_shared(url.to_string())
        .expect("client url")
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS));
    match CLIENT_TLS.get().filter(|_| url.starts_with("https://")) {
        Some(tls) => endpoint.connect_with_connector_lazy(tls.connector()),
        None => endpoint.connect_lazy(),
    }
}

/// Sends `input` as the etcd request it models, bounded by the client-side timer.
async fn execute(kv: &mut KvClient<Channel>, input: &KvInput) -> Result<KvOutput, CallError> {
    let timer = Duration::from_millis(REQUEST_TIMEOUT_MS + REQUEST_TIMER_SLACK_MS);
    match tokio::time::timeout(timer, send(kv, input)).await {
        Ok(result) => result,
        Err(_) => Err(CallError::Timer),
    }
}

async fn send(kv: &mut KvClient<Channel>, input: &KvInput) -> Result<KvOutput, CallError> {
    match input {
        KvInput::Put { key, value } => {
            let request = PutRequest {
                key: key.clone(),
                value: value.clone(),
                ..Default::default()
            };
            kv.put(request).await?;
            Ok(KvOutput::Put)
        }
        KvInput::Get { key } => {
            let request = RangeRequest {
                key: key.clone(),
                serializable: false,
                ..Default::default()
            };
            let reply = kv.range(request).await?.into_inner();
            match reply.kvs.as_slice() {
                [] => Ok(KvOutput::Get { value: None }),
                [kv] if kv.key == *key => Ok(KvOutput::Get {
                    value: Some(kv.value.clone()),
                }),
                other => Err(CallError::Protocol(format!(
                    "a range of one key returned {} key(s)",
                    other.len()
                ))),
            }
        }
        KvInput::Delete { key } => {
            let request = DeleteRangeRequest {
                key: key.clone(),
                ..Default::default()
            };
            let reply = kv.delete_range(request).await?.into_inner();
            match reply.deleted {
                0 | 1 => Ok(KvOutput::Delete {
                    deleted: reply.deleted == 1,
                }),
                n => Err(CallError::Protocol(format!("deleting one key deleted {n}"))),
            }
        }
        KvInput::Cas { key, expected, new } => {
            let reply = kv.txn(cas_request(key, expected.as_deref(), new)).await?;
            Ok(KvOutput::Cas {
                succeeded: reply.into_inner().succeeded,
            })
        }
    }
}

/// A Txn: if `key`'s value is `expected` (absent: version 0) then put `new`, else nothing.
fn cas_request(key: &[u8], expected: Option<&[u8]>, new: &[u8]) -> TxnRequest {
    let compare = match expected {
        Some(value) => Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: key.to_vec(),
            range_end: Vec::new(),
            target_union: Some(TargetUnion::Value(value.to_vec())),
        },
        None => Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Version as i32,
            key: key.to_vec(),
            range_end: Vec::new(),
            target_union: Some(TargetUnion::Version(0)),
        },
    };
    let put = PutRequest {
        key: key.to_vec(),
        value: new.to_vec(),
        ..Default::default()
    };
    TxnRequest {
        compare: vec![compare],
        success: vec![RequestOp {
            request: Some(TxnRequestOp::RequestPut(put)),
        }],
        failure: Vec::new(),
    }
}

/// One random request on a random key: 30% put, 35% get, 10% delete, 25% compare-and-swap
/// against the value this client last saw there (so that many succeed). Written values are
/// unique: client id and sequence number.
fn random_input(
    rng: &mut Rng,
    client_id: u64,
    seq: u64,
    last_seen: &[Option<Vec<u8>>],
) -> (usize, KvInput) {
    let key_index = usize::try_from(rng.below(KEYS.len() as u64)).expect("below KEYS.len()");
    let key = KEYS[key_index].as_bytes().to_vec();
    let value = format!("c{client_id}-{seq}").into_bytes();
    let input = match rng.below(100) {
        0..30 => KvInput::Put { key, value },
        30..65 => KvInput::Get { key },
        65..75 => KvInput::Delete { key },
        _ => KvInput::Cas {
            key,
            expected: last_seen[key_index].clone(),
            new: value,
        },
    };
    (key_index, input)
}

/// What this client now knows `input`'s key holds, after `output`.
fn observed_value(input: &KvInput, output: &KvOutput) -> Option<Option<Vec<u8>>> {
    match (input, output) {
        (KvInput::Put { value, .. }, KvOutput::Put) => Some(Some(value.clone())),
        (KvInput::Get { .. }, KvOutput::Get { value }) => Some(value.clone()),
        (KvInput::Delete { .. }, KvOutput::Delete { .. }) => Some(None),
        (KvInput::Cas { new, .. }, KvOutput::Cas { succeeded: true }) => Some(Some(new.clone())),
        _ => None,
    }
}

/// One client: random requests through one member until the deadline. After a failure it
/// pauses, reconnects to another member and sends only reads until one succeeds: a failed
/// read costs the checker nothing, while every failed write is one more indeterminate
/// operation, so a client adds at most one of those per outage.
async fn run_client(
    client_id: u64,
    urls: Arc<Vec<String>>,
    recorder: Arc<Recorder>,
    seed: u64,
    deadline: Instant,
) {
    let mut rng = Rng(seed ^ (client_id + 1).wrapping_mul(0xd1b5_4a32_d192_ed03));
    let members = urls.len() as u64;
    let mut member = rng.below(members);
    let mut kv = KvClient::new(client_channel(
        &urls[usize::try_from(member).expect("a member index")],
    ));
    let mut last_seen: Vec<Option<Vec<u8>>> = vec![None; KEYS.len()];
    let mut probing = false;
    for seq in 0..OPS_PER_CLIENT_MAX {
        if Instant::now() >= deadline {
            break;
        }
        let (key_index, input) = random_input(&mut rng, client_id, seq, &last_seen);
        let input = if probing {
            KvInput::Get {
                key: input.key().to_vec(),
            }
        } else {
            input
        };
        let invoke_ns = recorder.now_ns();
        match execute(&mut kv, &input).await {
            Ok(output) => {
                if let Some(value) = observed_value(&input, &output) {
                    last_seen[key_index] = value;
                }
                probing = false;
                recorder.returned(client_id, input, invoke_ns, output);
            }
            Err(error) => {
                recorder.failed(client_id, input, invoke_ns, &error);
                probing = true;
                member = (member + 1 + rng.below(members - 1)) % members;
                kv = KvClient::new(client_channel(
                    &urls[usize::try_from(member).expect("a member index")],
                ));
                tokio::time::sleep(Duration::from_millis(ERROR_BACKOFF_MS)).await;
            }
        }
    }
}

#[derive(Debug, Default)]
struct Faults {
    kills: u64,
    stops: u64,
}

/// Until the deadline: pause, then SIGKILL a member and restart it, or SIGSTOP it and
/// SIGCONT it. Faults run one after the other, so at most one member is ever down. Every
/// member runs, unfrozen, when this returns.
async fn run_nemesis(
    cluster: &mut Cluster,
    rng: &mut Rng,
    recorder: &Recorder,
    deadline: Instant,
) -> Faults {
    let mut faults = Faults::default();
    for _ in 0..FAULTS_MAX {
        let pause =
            Duration::from_millis(rng.between(FAULT_INTERVAL_MS_MIN, FAULT_INTERVAL_MS_MAX));
        if Instant::now() + pause >= deadline {
            tokio::time::sleep_until(deadline).await;
            break;
        }
        tokio::time::sleep(pause).await;
        let (member, chosen) = pick_target(cluster, rng).await;
        let at_ms = recorder.now_ns() / 1_000_000;
        if rng.below(2) == 0 {
            let down_ms = rng.between(KILL_DOWN_MS_MIN, KILL_DOWN_MS_MAX);
            println!(
                "nemesis {at_ms} ms: SIGKILL member {member} ({chosen}), restart after {down_ms} ms"
            );
            cluster.kill(member);
            tokio::time::sleep(Duration::from_millis(down_ms)).await;
            cluster.start(member);
            wait_serving(cluster, member).await;
            faults.kills += 1;
        } else {
            let down_ms = rng.between(STOP_DOWN_MS_MIN, STOP_DOWN_MS_MAX);
            println!(
                "nemesis {at_ms} ms: SIGSTOP member {member} ({chosen}), SIGCONT after {down_ms} ms"
            );
            cluster.stop(member);
            tokio::time::sleep(Duration::from_millis(down_ms)).await;
            cluster.cont(member);
            faults.stops += 1;
        }
    }
    faults
}

/// Half the time the member that leads now (failover is where linearizability breaks), else
/// any member. The draws come from the seeded generator; who leads depends on the run.
/// Returns the member and how it was chosen.
async fn pick_target(cluster: &Cluster, rng: &mut Rng) -> (usize, &'static str) {
    let any = usize::try_from(rng.below(MEMBERS as u64)).expect("below MEMBERS");
    if rng.below(2) == 0 {
        return (any, "random");
    }
    for member in 0..MEMBERS {
        let text = cluster.metrics(member).await.unwrap_or_default();
        if common::gauge(&text, "etcd_server_is_leader") == Some(1) {
            return (member, "leader");
        }
    }
    (any, "random, no leader found")
}

/// Waits until a restarted member answers Status, so that the next fault cannot take down a
/// second member while this one is still starting.
async fn wait_serving(cluster: &Cluster, member: usize) {
    poll(&format!("restarted member {member} to serve"), || async {
        let mut maintenance = cluster.maintenance(member);
        maintenance.status(StatusRequest {}).await.ok().map(|_| ())
    })
    .await;
}

/// Until the deadline, asks every member for Status and records each (term, leader) named.
async fn observe_leaders(urls: Arc<Vec<String>>, deadline: Instant) -> BTreeSet<(u64, u64)> {
    let clients: Vec<MaintenanceClient<Channel>> = urls
        .iter()
        .map(|url| MaintenanceClient::new(client_channel(url)))
        .collect();
    let mut seen = BTreeSet::new();
    let per_ask = Duration::from_millis(OBSERVE_TIMEOUT_MS);
    let rounds_max = aspen_core::convert::millis(deadline.duration_since(Instant::now()))
        / OBSERVE_INTERVAL_MS
        + 1;
    for _ in 0..rounds_max {
        if Instant::now() >= deadline {
            break;
        }
        for client in &clients {
            let mut client = client.clone();
            if let Ok(Ok(reply)) =
                tokio::time::timeout(per_ask, client.status(StatusRequest {})).await
            {
                let status = reply.into_inner();
                if status.leader != 0 {
                    seen.insert((status.raft_term, status.leader));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(OBSERVE_INTERVAL_MS)).await;
    }
    seen
}

/// Terms in which members named more than one leader: Raft allows at most one per term.
fn split_terms(seen: &BTreeSet<(u64, u64)>) -> Vec<(u64, Vec<u64>)> {
    let mut by_term: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for &(term, leader) in seen {
        by_term.entry(term).or_default().push(leader);
    }
    by_term.into_iter().filter(|(_, l)| l.len() > 1).collect()
}

async fn join_bounded<T>(task: JoinHandle<T>, what: &str) -> T {
    tokio::time::timeout(Duration::from_millis(TASK_FINISH_MS_MAX), task)
        .await
        .unwrap_or_else(|_| {
            panic!("{what} still running {TASK_FINISH_MS_MAX} ms after the deadline")
        })
        .unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

/// Reads every key linearizably through `member` and appends the reads to the history: the
/// checker then also proves that no acknowledged write was lost. Returns what was read.
async fn final_reads(
    cluster: &Cluster,
    member: usize,
    recorder: &Recorder,
) -> Vec<(String, Option<Vec<u8>>)> {
    let mut values = Vec::with_capacity(KEYS.len());
    for key in KEYS {
        let what = format!("final linearizable read of {key} via member {member}");
        let value = poll(&what, || async {
            let mut kv = KvClient::new(client_channel(&cluster.members[member].client_url()));
            let input = KvInput::Get {
                key: key.as_bytes().to_vec(),
            };
            let invoke_ns = recorder.now_ns();
            match execute(&mut kv, &input).await {
                Ok(output) => {
                    let value = match &output {
                        KvOutput::Get { value } => value.clone(),
                        other => panic!("a get answered {other:?}"),
                    };
                    recorder.returned(FINAL_READER, input, invoke_ns, output);
                    Some(value)
                }
                Err(error) => {
                    eprintln!("{what}: {error}; retrying");
                    None
                }
            }
        })
        .await;
        values.push((key.to_string(), value));
    }
    values
}

/// Final values that no request ever wrote: an invented or resurrected value.
fn unwritten_values(
    history: &KvHistory,
    finals: &[(String, Option<Vec<u8>>)],
) -> Vec<(String, String)> {
    let written: BTreeSet<(&[u8], &[u8])> = history
        .ops()
        .iter()
        .filter_map(|op| match &op.input {
            KvInput::Put { key, value } => Some((key.as_slice(), value.as_slice())),
            KvInput::Cas { key, new, .. } => Some((key.as_slice(), new.as_slice())),
            KvInput::Get { .. } | KvInput::Delete { .. } => None,
        })
        .collect();
    finals
        .iter()
        .filter_map(|(key, value)| {
            let value = value.as_deref()?;
            let known = written.contains(&(key.as_bytes(), value));
            (!known).then(|| (key.clone(), String::from_utf8_lossy(value).into_owned()))
        })
        .collect()
}

/// One put the store applied: key, value, revision.
type AppliedPut = (Vec<u8>, Vec<u8>, i64);

/// Every put the store applied to the test's keys up to `revision`, in revision order, from a
/// watch on `member` that replays the whole history (nothing is ever compacted here).
async fn applied_puts(cluster: &Cluster, member: usize, revision: i64) -> Vec<AppliedPut> {
    // No per-request timeout: it would cut the response stream; the replay has its own.
    let url = cluster.members[member].client_url();
    let endpoint = Endpoint::from_shared(url.clone())
        .expect("client url")
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS));
    let channel = match CLIENT_TLS.get().filter(|_| url.starts_with("https://")) {
        Some(tls) => endpoint.connect_with_connector_lazy(tls.connector()),
        None => endpoint.connect_lazy(),
    };
    let (requests, receiver) = mpsc::channel(1);
    let mut responses = WatchClient::new(channel)
        .watch(ReceiverStream::new(receiver))
        .await
        .expect("watch stream")
        .into_inner();
    let create = WatchCreateRequest {
        key: KEY_PREFIX.as_bytes().to_vec(),
        range_end: common::prefix_end(KEY_PREFIX.as_bytes()),
        start_revision: 1,
        ..Default::default()
    };
    let request = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    };
    requests.send(request).await.expect("watch stream open");
    let deadline = Instant::now() + Duration::from_millis(common::WAIT_MS_MAX);
    let mut puts = Vec::new();
    // The store starts at revision 1, and every revision after it is a change of a test key.
    let mut replayed_revision = 1;
    let responses_max = u64::try_from(revision).expect("revision") + WATCH_EMPTY_RESPONSES_MAX;
    for _ in 0..responses_max {
        if replayed_revision >= revision {
            break;
        }
        let response = tokio::time::timeout_at(deadline, responses.message())
            .await
            .expect("history replay timed out")
            .expect("watch stream failed")
            .expect("watch stream ended");
        assert!(!response.canceled, "history replay cancelled: {response:?}");
        for event in response.events {
            let kv = event.kv.expect("event without kv");
            replayed_revision = kv.mod_revision;
            if event.r#type == EventType::Put as i32 {
                puts.push((kv.key, kv.value, kv.mod_revision));
            }
        }
    }
    assert_eq!(replayed_revision, revision, "history replay stopped short");
    puts
}

/// What the store's own history says about the recorded writes.
#[derive(Debug, Default)]
struct Audit {
    /// Indeterminate writes the store applied (the others never took effect).
    indeterminate_applied: u64,
    /// Values applied more than once: one write taking effect twice.
    duplicated: Vec<String>,
    /// Values applied that no client wrote.
    invented: Vec<String>,
    /// Acknowledged puts and successful compare-and-swaps missing from the store's history.
    lost: Vec<String>,
}

/// Compares the applied puts with the recorded writes (values are unique), and returns the
/// history to check: without the indeterminate puts and compare-and-swaps whose value the
/// store never applied. Those never took effect, which is one of the outcomes an
/// indeterminate write allows, so the check stays exact; and each one left in would let the
/// search try it at every later point.
fn audit(history: &KvHistory, puts: &[AppliedPut]) -> (KvHistory, Audit) {
    let mut applied: BTreeMap<(&[u8], &[u8]), u64> = BTreeMap::new();
    for (key, value, _) in puts {
        *applied
            .entry((key.as_slice(), value.as_slice()))
            .or_default() += 1;
    }
    let mut audit = Audit::default();
    let mut written = BTreeSet::new();
    let mut checked = KvHistory::new();
    for op in history.ops() {
        let write = match &op.input {
            KvInput::Put { key, value } => Some((key.as_slice(), value.as_slice())),
            KvInput::Cas { key, new, .. } => Some((key.as_slice(), new.as_slice())),
            KvInput::Get { .. } | KvInput::Delete { .. } => None,
        };
        if let Some(write) = write {
            written.insert(write);
            let is_applied = applied.contains_key(&write);
            match &op.completion {
                Completion::Indeterminate if !is_applied => continue,
                Completion::Indeterminate => audit.indeterminate_applied += 1,
                Completion::Returned {
                    output: KvOutput::Put | KvOutput::Cas { succeeded: true },
                    ..
                } if !is_applied => audit.lost.push(format!("{:?}", op.input)),
                _ => {}
            }
        }
        checked.push(op.clone()).expect("a well-formed operation");
    }
    for ((key, value), count) in applied {
        let shown = format!(
            "{}={} (applied {count}x)",
            String::from_utf8_lossy(key),
            String::from_utf8_lossy(value)
        );
        if count > 1 {
            audit.duplicated.push(shown.clone());
        }
        if !written.contains(&(key, value)) {
            audit.invented.push(shown);
        }
    }
    (checked, audit)
}

/// Every member's store after the load: same applied index, then HashKV at one revision.
struct Convergence {
    applied_index: u64,
    revision: i64,
    /// Per member: (hash, compact revision).
    hashes: Vec<(u32, i64)>,
}

/// Waits until every member applied the same Raft index, then asks each for HashKV at the
/// leader's current revision.
async fn converge(cluster: &Cluster, leader: usize) -> Convergence {
    let (applied_index, revision) = poll("every member to apply the same index", || async {
        let mut seen = Vec::with_capacity(MEMBERS);
        for member in 0..MEMBERS {
            let status = cluster
                .maintenance(member)
                .status(StatusRequest {})
                .await
                .ok()?
                .into_inner();
            let revision = status.header.as_ref()?.revision;
            seen.push((status.raft_applied_index, revision));
        }
        seen.iter().all(|s| *s == seen[0]).then_some(seen[leader])
    })
    .await;
    let mut hashes = Vec::with_capacity(MEMBERS);
    for member in 0..MEMBERS {
        let reply = hash_kv(cluster, member, revision).await;
        hashes.push((reply.hash, reply.compact_revision));
    }
    Convergence {
        applied_index,
        revision,
        hashes,
    }
}

async fn hash_kv(cluster: &Cluster, member: usize, revision: i64) -> HashKvResponse {
    let what = format!("HashKV({revision}) of member {member}");
    poll(&what, || async {
        let request = HashKvRequest { revision };
        match cluster.maintenance(member).hash_kv(request).await {
            Ok(reply) => Some(reply.into_inner()),
            Err(status) => {
                eprintln!("{what}: {status}; retrying");
                None
            }
        }
    })
    .await
}

/// Checks the history. When it is not found linearizable, the whole history is written next to
/// the temp dir root so that it outlives the cluster.
fn check_history(history: &KvHistory, seed: u64) -> Verdict<Vec<u8>> {
    let verdict = check_kv(history, &CheckConfig::default());
    if let Verdict::NotLinearizable { explanation, .. } = &verdict {
        println!("{explanation}");
    }
    if !verdict.is_linearizable() {
        let path = std::env::temp_dir().join(format!("aspen-chaos-{seed}.history"));
        let lines: Vec<String> = history
            .ops()
            .iter()
            .enumerate()
            .map(|(index, op)| format!("#{index} {op:?}"))
            .collect();
        match std::fs::write(&path, lines.join("\n")) {
            Ok(()) => println!("history written to {}", path.display()),
            Err(error) => println!("could not write {}: {error}", path.display()),
        }
    }
    verdict
}

fn verdict_name(verdict: &Verdict<Vec<u8>>) -> String {
    match verdict {
        Verdict::Linearizable => "linearizable".to_string(),
        Verdict::NotLinearizable { key, .. } => {
            format!("NOT linearizable ({})", String::from_utf8_lossy(key))
        }
        Verdict::Unknown { reason } => format!("unknown ({reason})"),
    }
}

/// What the load phase produced.
struct Load {
    recorder: Arc<Recorder>,
    faults: Faults,
    /// (term, leader) pairs members reported.
    leaders_seen: BTreeSet<(u64, u64)>,
}

/// Clients and the leader observer run until the deadline while the nemesis injects faults;
/// returns once every task finished and every member runs again.
async fn run_load(cluster: &mut Cluster, seed: u64, seconds: u64) -> Load {
    let urls: Arc<Vec<String>> = Arc::new(cluster.members.iter().map(|m| m.client_url()).collect());
    let recorder = Arc::new(Recorder::new());
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let clients: Vec<JoinHandle<()>> = (0..CLIENTS)
        .map(|id| {
            let client = run_client(id, urls.clone(), recorder.clone(), seed, deadline);
            tokio::spawn(client)
        })
        .collect();
    let observer = tokio::spawn(observe_leaders(urls.clone(), deadline));
    let faults = run_nemesis(cluster, &mut Rng(seed), &recorder, deadline).await;
    for (id, client) in clients.into_iter().enumerate() {
        join_bounded(client, &format!("client {id}")).await;
    }
    let leaders_seen = join_bounded(observer, "leader observer").await;
    Load {
        recorder,
        faults,
        leaders_seen,
    }
}

fn print_summary(
    seed: u64,
    seconds: u64,
    load: &Load,
    audit: &Audit,
    convergence: &Convergence,
    verdict: &Verdict<Vec<u8>>,
) {
    let recorder = &load.recorder;
    let ok = recorder.ok.load(Ordering::Relaxed);
    let unknown_writes = recorder.unknown_writes.load(Ordering::Relaxed);
    let unknown_reads = recorder.unknown_reads.load(Ordering::Relaxed);
    let unsent_writes = recorder.unsent_writes.load(Ordering::Relaxed);
    let terms: BTreeSet<u64> = load.leaders_seen.iter().map(|&(term, _)| term).collect();
    println!(
        "chaos summary: seed={seed} seconds={seconds} ops={} ok={ok} \
         indeterminate={unknown_writes} (applied {}) failed_reads={unknown_reads} \
         unsent_writes={unsent_writes} kills={} stops={} leader_changes_seen={} \
         applied_index={} revision={} hashes={:?} verdict={}",
        ok + unknown_writes + unknown_reads + unsent_writes,
        audit.indeterminate_applied,
        load.faults.kills,
        load.faults.stops,
        terms.len().saturating_sub(1),
        convergence.applied_index,
        convergence.revision,
        convergence.hashes,
        verdict_name(verdict),
    );
    for (kind, count) in recorder.errors.lock().expect("lock").iter() {
        println!("  {count:>6} x {kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_three_nodes_linearizable() {
    let seconds = chaos_seconds();
    let seed = chaos_seed();
    let tls = chaos_tls();
    println!("chaos: {seconds} s, seed {seed} (replay with ASPEN_CHAOS_SEED={seed}), tls {tls}");
    let mut cluster = Cluster::new(MEMBERS, Backend::Redb, None);
    if tls {
        cluster = cluster.with_tls();
        let pki = cluster.pki.as_ref().expect("pki");
        let _ = CLIENT_TLS.set(pki.client.clone());
    }
    cluster.start_all();
    let all: Vec<usize> = (0..MEMBERS).collect();
    cluster.wait_leader(&all).await;
    let load = run_load(&mut cluster, seed, seconds).await;
    let recorder = &load.recorder;

    // Healed: every member runs and none is frozen.
    assert!(all.iter().all(|&m| cluster.is_running(m)));
    let leader = cluster.wait_leader(&all).await;
    let at_ms = || recorder.now_ns() / 1_000_000;
    println!("chaos {} ms: healed, member {leader} leads", at_ms());
    let finals = final_reads(&cluster, leader, recorder).await;
    let convergence = converge(&cluster, leader).await;
    println!("chaos {} ms: converged, checking", at_ms());
    let puts = applied_puts(&cluster, leader, convergence.revision).await;
    let history = recorder.history.lock().expect("history lock").clone();
    let (checked, audit) = audit(&history, &puts);
    let verdict = tokio::task::spawn_blocking(move || check_history(&checked, seed))
        .await
        .expect("checker task");
    print_summary(seed, seconds, &load, &audit, &convergence, &verdict);

    let unexpected = recorder.unexpected.lock().expect("lock").clone();
    let shown = &unexpected[..unexpected.len().min(UNEXPECTED_ERRORS_SHOWN_MAX)];
    assert!(
        unexpected.is_empty(),
        "{} request(s) failed with a definite error, first ones:\n{}",
        unexpected.len(),
        shown.join("\n")
    );
    let split = split_terms(&load.leaders_seen);
    assert!(split.is_empty(), "two leaders in one term: {split:?}");
    assert!(
        verdict.is_linearizable(),
        "seed {seed}: history is {}",
        verdict_name(&verdict)
    );
    assert!(
        audit.lost.is_empty(),
        "acknowledged writes missing from the store's history: {:?}",
        audit.lost
    );
    assert!(
        audit.duplicated.is_empty() && audit.invented.is_empty(),
        "the store's history has writes applied twice {:?} or that no client wrote {:?}",
        audit.duplicated,
        audit.invented
    );
    let unwritten = unwritten_values(&history, &finals);
    assert!(
        unwritten.is_empty(),
        "final values nobody wrote: {unwritten:?}"
    );
    let first = convergence.hashes[0];
    assert!(
        convergence.hashes.iter().all(|h| *h == first),
        "members diverge at revision {}: (hash, compact revision) per member {:?}",
        convergence.revision,
        convergence.hashes
    );
}
