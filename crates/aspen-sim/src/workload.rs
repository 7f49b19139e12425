//! Concurrent clients doing put, get, delete and compare-and-swap on a few keys, each request
//! sent to a random running node, recorded with its invocation and completion time into an
//! `aspen_check` history. A request that times out or fails is indeterminate: it may have
//! taken effect, or may yet.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aspen_check::{KvHistory, KvInput, KvOutput, OpId};
use aspen_core::response::RangeResult;
use aspen_core::{
    ApplyResponse, Command, CommandResult, Compare, CompareResult, CompareTarget,
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use aspen_node::Node;
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::limits::{
    CLIENT_BACKOFF_MS_MAX, CLIENT_BACKOFF_MS_MIN, CLIENT_OPS_MAX, CLIENT_THINK_MS_MAX,
    CLIENT_TIMEOUT_MS, POLL_INTERVAL_MS, WORKLOAD_KEYS,
};
use crate::rng::SimRng;
use crate::trace::hash_bytes;

/// What an acknowledged mutation did, as its client was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The key holds this value from `revision` on.
    Put(Vec<u8>),
    /// The key was deleted at `revision`.
    Deleted,
}

/// A mutation the cluster acknowledged, at the revision it reported.
#[derive(Debug, Clone)]
pub struct AckedWrite {
    pub op: OpId,
    pub key: Vec<u8>,
    pub effect: Effect,
    pub revision: u64,
    pub invoke_ns: u64,
    pub complete_ns: u64,
}

/// Everything the clients saw.
#[derive(Debug, Default)]
pub struct Recorder {
    pub history: KvHistory,
    pub acked: Vec<AckedWrite>,
    /// Responses that no correct cluster gives this workload (an apply error, a wrong kind).
    pub unexpected: Vec<String>,
    pub completed: u64,
    pub indeterminate: u64,
    /// Of `indeterminate`, the mutations (the checker's hard cases).
    pub indeterminate_writes: u64,
}

/// The recorder shared by every client of a run.
#[derive(Clone, Default)]
pub struct SharedRecorder {
    inner: Arc<Mutex<Recorder>>,
}

impl SharedRecorder {
    pub fn lock(&self) -> MutexGuard<'_, Recorder> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn take(&self) -> Recorder {
        std::mem::take(&mut *self.lock())
    }
}

/// A request's result as the history records it, plus the revision the reply carried.
struct Observed {
    output: KvOutput,
    revision: u64,
}

/// One client's loop; returns when told to stop or after `CLIENT_OPS_MAX` requests.
pub async fn run_client(
    client_id: u64,
    cluster: Cluster,
    recorder: SharedRecorder,
    stop: Arc<AtomicBool>,
    mut rng: SimRng,
    started: Instant,
) {
    let mut last_seen: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    for seq in 0..CLIENT_OPS_MAX {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let think_ms = rng.below(CLIENT_THINK_MS_MAX + 1);
        tokio::time::sleep(Duration::from_millis(think_ms)).await;
        let running = choose_candidates(&cluster, &mut rng);
        if running.is_empty() {
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
            continue;
        }
        let (node_id, node) = rng.pick(&running).clone();
        let input = next_input(&mut rng, client_id, seq, &last_seen);
        let invoke_ns = elapsed_ns(started);
        let op = recorder
            .lock()
            .history
            .invoke(client_id, input.clone(), invoke_ns);
        let timeout = Duration::from_millis(CLIENT_TIMEOUT_MS);
        let result = tokio::time::timeout(timeout, execute(&node, &input)).await;
        let complete_ns = elapsed_ns(started);
        let outcome = match result {
            Ok(Ok(Ok(observed))) => Ok(observed),
            Ok(Ok(Err(unexpected))) => Err(Some(unexpected)),
            Ok(Err(_)) | Err(_) => Err(None),
        };
        let code = record(
            &recorder,
            op,
            &input,
            outcome,
            invoke_ns,
            complete_ns,
            &mut last_seen,
        );
        cluster
            .net()
            .record(&[4, client_id, u64::from(seq), node_id, code], || {
                format!("client {client_id} op {seq} on n{node_id}: {input:?} -> code {code:x}")
            });
        if code == 0 {
            let backoff_ms = rng.between(CLIENT_BACKOFF_MS_MIN, CLIENT_BACKOFF_MS_MAX);
            tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
        }
    }
}

/// The nodes a request may go to: mostly the members as the leader sees them (clients are
/// configured with the cluster's endpoints), now and then any running node, such as one not
/// yet added or already removed (a client with a stale endpoint list).
fn choose_candidates(cluster: &Cluster, rng: &mut SimRng) -> Vec<(u64, Node)> {
    let running = cluster.running();
    if rng.below(10) == 0 {
        return running;
    }
    let Some(members) = cluster.members() else {
        return running;
    };
    running
        .into_iter()
        .filter(|(id, _)| members.contains(id))
        .collect()
}

fn elapsed_ns(started: Instant) -> u64 {
    aspen_core::convert::nanos(started.elapsed())
}

/// Records one finished request; returns a word summarising it for the trace.
fn record(
    recorder: &SharedRecorder,
    op: OpId,
    input: &KvInput,
    outcome: Result<Observed, Option<String>>,
    invoke_ns: u64,
    complete_ns: u64,
    last_seen: &mut BTreeMap<Vec<u8>, Option<Vec<u8>>>,
) -> u64 {
    let mut recorder = recorder.lock();
    let observed = match outcome {
        Ok(observed) => observed,
        Err(unexpected) => {
            if let Some(message) = unexpected {
                recorder
                    .unexpected
                    .push(format!("{op} {input:?}: {message}"));
            }
            recorder.indeterminate += 1;
            if !matches!(input, KvInput::Get { .. }) {
                recorder.indeterminate_writes += 1;
            }
            if let Err(error) = recorder.history.indeterminate(op) {
                unreachable!("an operation is completed once: {error}");
            }
            return 0;
        }
    };
    recorder.completed += 1;
    let key = input.key().to_vec();
    let effect = match (input, &observed.output) {
        (KvInput::Put { value, .. }, KvOutput::Put) => Some(Effect::Put(value.clone())),
        (KvInput::Cas { new, .. }, KvOutput::Cas { succeeded: true }) => {
            Some(Effect::Put(new.clone()))
        }
        (KvInput::Delete { .. }, KvOutput::Delete { deleted: true }) => Some(Effect::Deleted),
        _ => None,
    };
    match (&effect, &observed.output) {
        (Some(Effect::Put(value)), _) => {
            last_seen.insert(key.clone(), Some(value.clone()));
        }
        (Some(Effect::Deleted), _) => {
            last_seen.insert(key.clone(), None);
        }
        (None, KvOutput::Get { value }) => {
            last_seen.insert(key.clone(), value.clone());
        }
        (None, _) => {}
    }
    if let Some(effect) = effect {
        recorder.acked.push(AckedWrite {
            op,
            key,
            effect,
            revision: observed.revision,
            invoke_ns,
            complete_ns,
        });
    }
    let word = output_word(&observed.output) ^ observed.revision.rotate_left(32);
    if let Err(error) = recorder.history.complete(op, observed.output, complete_ns) {
        unreachable!("the simulated clock never goes backwards: {error}");
    }
    word | 1
}

fn output_word(output: &KvOutput) -> u64 {
    match output {
        KvOutput::Put => 2,
        KvOutput::Get { value } => 3 ^ value.as_deref().map_or(0, hash_bytes),
        KvOutput::Delete { deleted } => 4 + u64::from(*deleted),
        KvOutput::Cas { succeeded } => 6 + u64::from(*succeeded),
    }
}

/// Draws the next request: reads most often, then puts, compare-and-swaps and deletes.
fn next_input(
    rng: &mut SimRng,
    client_id: u64,
    seq: u32,
    last_seen: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
) -> KvInput {
    let key = format!("k{}", rng.below(WORKLOAD_KEYS)).into_bytes();
    let value = format!("c{client_id}s{seq}").into_bytes();
    match rng.below(100) {
        0..35 => KvInput::Get { key },
        35..65 => KvInput::Put { key, value },
        65..85 => {
            // Mostly the value this client last saw, so that some swaps succeed.
            let expected = if rng.below(10) < 7 {
                last_seen.get(&key).cloned().flatten()
            } else {
                None
            };
            KvInput::Cas {
                key,
                expected,
                new: value,
            }
        }
        _ => KvInput::Delete { key },
    }
}

/// Sends one request through the node's client entry points (`write` and `range`), the same
/// ones the etcd API layer calls. The outer error is the node's (indeterminate); the inner
/// one a response this workload should never get.
async fn execute(
    node: &Node,
    input: &KvInput,
) -> Result<Result<Observed, String>, aspen_node::NodeError> {
    match input {
        KvInput::Get { key } => {
            let request = RangeRequest {
                key: key.clone(),
                ..RangeRequest::default()
            };
            let (result, revision) = node.range(&request).await?;
            Ok(observe_get(result, revision))
        }
        KvInput::Put { key, value } => {
            let command = Command::Put(PutRequest {
                key: key.clone(),
                value: value.clone(),
                ..PutRequest::default()
            });
            Ok(observe_write(node.write(command).await?))
        }
        KvInput::Delete { key } => {
            let command = Command::DeleteRange(DeleteRangeRequest {
                key: key.clone(),
                range_end: Vec::new(),
                prev_kv: false,
            });
            Ok(observe_write(node.write(command).await?))
        }
        KvInput::Cas { key, expected, new } => Ok(observe_write(
            node.write(cas_command(key, expected, new)).await?,
        )),
    }
}

/// An etcd Txn: if the key holds `expected` (or is absent, version 0) put `new`.
fn cas_command(key: &[u8], expected: &Option<Vec<u8>>, new: &[u8]) -> Command {
    let target = match expected {
        Some(value) => CompareTarget::Value(value.clone()),
        None => CompareTarget::Version(0),
    };
    Command::Txn(TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal,
            target,
            key: key.to_vec(),
            range_end: Vec::new(),
        }],
        success: vec![RequestOp::Put(PutRequest {
            key: key.to_vec(),
            value: new.to_vec(),
            ..PutRequest::default()
        })],
        failure: Vec::new(),
    })
}

fn observe_get(result: RangeResult, revision: u64) -> Result<Observed, String> {
    if result.kvs.len() > 1 {
        return Err(format!(
            "a single-key range returned {} keys",
            result.kvs.len()
        ));
    }
    let value = result.kvs.into_iter().next().map(|kv| kv.value);
    Ok(Observed {
        output: KvOutput::Get { value },
        revision,
    })
}

fn observe_write(response: ApplyResponse) -> Result<Observed, String> {
    let output = match response.result {
        Ok(CommandResult::Put { .. }) => KvOutput::Put,
        Ok(CommandResult::DeleteRange { deleted, .. }) => {
            if deleted > 1 {
                return Err(format!("a single-key delete removed {deleted} keys"));
            }
            KvOutput::Delete {
                deleted: deleted == 1,
            }
        }
        Ok(CommandResult::Txn { succeeded, .. }) => KvOutput::Cas { succeeded },
        Ok(other) => return Err(format!("unexpected result {other:?}")),
        Err(error) => return Err(format!("apply error: {error}")),
    };
    Ok(Observed {
        output,
        revision: response.revision,
    })
}
