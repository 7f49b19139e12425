//! The workloads: what one request is, how keys are chosen, and the setup each needs (keys
//! written before get/range, watchers created before watch-fanout).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::connect::AuthedChannel;
use aspen_core::convert::{millis, nanos, usize_from};
use aspen_proto::etcdserverpb::{self as pb, kv_client::KvClient, watch_client::WatchClient};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::Workload;
use super::driver::{Report, Rng, Settings, Stats, Worker, drive, histogram, record_us};
use super::wire::{KvUris, WireChannel};
use crate::cli::Consistency;
use crate::error::CliError;
use crate::limits::{
    BENCH_PREPOPULATE_CONCURRENCY_MAX, BENCH_WATCH_DRAIN_MS_MAX, RESPONSE_BYTES_MAX,
};
use crate::request::prefix_end;

/// Every key a bench writes starts with this, so a run is easy to find and delete.
pub const KEY_PREFIX: &str = "aspenctl-bench/";
/// Bytes of the send timestamp at the start of a watch-fanout value.
const TIMESTAMP_BYTES: usize = 8;
const TIMESTAMP_BYTES_U32: u32 = 8;
const _: () = assert!(TIMESTAMP_BYTES_U32 as usize == TIMESTAMP_BYTES);

fn key(kind: &str, index: u64) -> Vec<u8> {
    format!("{KEY_PREFIX}{kind}/{index:012}").into_bytes()
}

/// A value of `bytes` printable bytes, different per seed so nothing is trivially shared.
fn value(bytes: u32, rng: &mut Rng) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..bytes)
        .map(|_| ALPHABET[usize_from(rng.below(ALPHABET.len() as u64))])
        .collect()
}

/// One connection the bench's KV calls go over: tonic's channel, or the bench's own unary
/// client (`wire.rs`) with the URIs it calls.
#[derive(Clone)]
pub enum KvConn {
    Tonic(AuthedChannel),
    Wire(WireChannel, Arc<KvUris>),
}

/// One worker's KV client.
enum KvCaller {
    Tonic(KvClient<AuthedChannel>),
    Wire(WireChannel, Arc<KvUris>),
}

impl KvCaller {
    async fn put(&mut self, request: pb::PutRequest) -> Result<pb::PutResponse, Status> {
        match self {
            KvCaller::Tonic(kv) => kv.put(request).await.map(tonic::Response::into_inner),
            KvCaller::Wire(wire, uris) => wire.unary(&uris.put, &request).await,
        }
    }

    async fn range(&mut self, request: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
        match self {
            KvCaller::Tonic(kv) => kv.range(request).await.map(tonic::Response::into_inner),
            KvCaller::Wire(wire, uris) => wire.unary(&uris.range, &request).await,
        }
    }

    async fn txn(&mut self, request: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
        match self {
            KvCaller::Tonic(kv) => kv.txn(request).await.map(tonic::Response::into_inner),
            KvCaller::Wire(wire, uris) => wire.unary(&uris.txn, &request).await,
        }
    }
}

fn kv_client(conns: &[KvConn], index: usize) -> KvCaller {
    match &conns[index % conns.len()] {
        KvConn::Tonic(channel) => KvCaller::Tonic(
            KvClient::new(channel.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX),
        ),
        KvConn::Wire(wire, uris) => KvCaller::Wire(wire.clone(), uris.clone()),
    }
}

/// The tonic channels among `conns` (watch-fanout's watchers are streams, which only tonic's
/// client sends).
fn tonic_channels(conns: &[KvConn]) -> Vec<AuthedChannel> {
    conns
        .iter()
        .filter_map(|conn| match conn {
            KvConn::Tonic(channel) => Some(channel.clone()),
            KvConn::Wire(..) => None,
        })
        .collect()
}

pub async fn run(
    workload: &Workload,
    channels: &[KvConn],
    settings: &Settings,
) -> Result<Report, CliError> {
    let stats = Arc::new(Stats::default());
    let name = workload.name();
    let mut extra = Vec::new();
    let (latency, duration) = match *workload {
        Workload::Put {
            key_space,
            val_size,
            sequential_keys,
        } => {
            let next_key = sequential_keys.then(|| Arc::new(AtomicU64::new(0)));
            let workers = put_workers(channels, settings, key_space, val_size, next_key);
            drive(workers, settings, stats.clone(), &name).await
        }
        Workload::Get {
            consistency,
            key_space,
            val_size,
            no_populate,
        } => {
            if !no_populate {
                populate(channels, settings, key_space, val_size).await?;
            }
            let workers = get_workers(channels, settings, key_space, consistency, 0);
            drive(workers, settings, stats.clone(), &name).await
        }
        Workload::Range {
            limit,
            consistency,
            key_space,
            val_size,
            no_populate,
        } => {
            if !no_populate {
                populate(channels, settings, key_space, val_size).await?;
            }
            extra.push(("limit".to_string(), json!(limit)));
            let workers = get_workers(channels, settings, key_space, consistency, limit);
            drive(workers, settings, stats.clone(), &name).await
        }
        Workload::TxnCas {
            key_space,
            val_size,
        } => {
            let conflicts = Arc::new(AtomicU64::new(0));
            let workers = cas_workers(channels, settings, key_space, val_size, &conflicts);
            let measured = drive(workers, settings, stats.clone(), &name).await;
            let conflicts = conflicts.load(Ordering::Relaxed);
            extra.push(("conflicts".to_string(), json!(conflicts)));
            measured
        }
        Workload::WatchFanout { watchers, val_size } => {
            return watch_fanout(channels, settings, watchers, val_size).await;
        }
    };
    Ok(Report {
        workload: name,
        clients: settings.clients,
        ops: stats.done.load(Ordering::Relaxed),
        errors: stats.errors.load(Ordering::Relaxed),
        duration,
        latency: Some(latency),
        first_error: stats.first_error(),
        extra,
        ..Default::default()
    })
}

fn put_workers(
    channels: &[KvConn],
    settings: &Settings,
    key_space: u64,
    val_size: u32,
    next_key: Option<Arc<AtomicU64>>,
) -> Vec<PutWorker> {
    (0..settings.clients as usize)
        .map(|i| {
            let mut rng = Rng::new(settings.seed, i as u64);
            PutWorker {
                kv: kv_client(channels, i),
                value: value(val_size, &mut rng),
                key_space,
                rng,
                next_key: next_key.clone(),
            }
        })
        .collect()
}

fn get_workers(
    channels: &[KvConn],
    settings: &Settings,
    key_space: u64,
    consistency: Consistency,
    limit: i64,
) -> Vec<GetWorker> {
    (0..settings.clients as usize)
        .map(|i| GetWorker {
            kv: kv_client(channels, i),
            key_space,
            serializable: consistency == Consistency::S,
            limit,
            rng: Rng::new(settings.seed, i as u64),
        })
        .collect()
}

/// Client i works on key `i % key_space`; a key space of 0 gives each client its own key.
fn cas_workers(
    channels: &[KvConn],
    settings: &Settings,
    key_space: u64,
    val_size: u32,
    conflicts: &Arc<AtomicU64>,
) -> Vec<CasWorker> {
    let clients = settings.clients as usize;
    let key_space = if key_space == 0 {
        clients as u64
    } else {
        key_space
    };
    (0..clients)
        .map(|i| {
            let mut rng = Rng::new(settings.seed, i as u64);
            CasWorker {
                kv: kv_client(channels, i),
                key: key("cas", i as u64 % key_space),
                value: value(val_size, &mut rng),
                mod_revision: 0,
                conflicts: conflicts.clone(),
            }
        })
        .collect()
}

/// Puts a random key, or with `next_key` (shared by the clients) the next key in order.
struct PutWorker {
    kv: KvCaller,
    value: Vec<u8>,
    key_space: u64,
    rng: Rng,
    next_key: Option<Arc<AtomicU64>>,
}

impl PutWorker {
    fn next_index(&mut self) -> u64 {
        match &self.next_key {
            Some(next) => next.fetch_add(1, Ordering::Relaxed) % self.key_space,
            None => self.rng.below(self.key_space),
        }
    }
}

impl Worker for PutWorker {
    fn op(&mut self) -> impl Future<Output = Result<(), Status>> + Send {
        let request = pb::PutRequest {
            key: key("kv", self.next_index()),
            value: self.value.clone(),
            ..Default::default()
        };
        async move { self.kv.put(request).await.map(|_| ()) }
    }
}

/// get (limit 0: one key) and range (limit > 0: up to `limit` keys from a random start).
struct GetWorker {
    kv: KvCaller,
    key_space: u64,
    serializable: bool,
    limit: i64,
    rng: Rng,
}

impl Worker for GetWorker {
    fn op(&mut self) -> impl Future<Output = Result<(), Status>> + Send {
        let start = key("kv", self.rng.below(self.key_space));
        let range_end = if self.limit > 0 {
            prefix_end(format!("{KEY_PREFIX}kv/").as_bytes())
        } else {
            Vec::new()
        };
        let request = pb::RangeRequest {
            key: start,
            range_end,
            limit: self.limit,
            serializable: self.serializable,
            ..Default::default()
        };
        async move { self.kv.range(request).await.map(|_| ()) }
    }
}

/// Compare-and-swap on one key: put if mod_revision is still the last one seen; on a
/// conflict the failure branch reads the key, so the next attempt knows the new revision.
struct CasWorker {
    kv: KvCaller,
    key: Vec<u8>,
    value: Vec<u8>,
    mod_revision: i64,
    conflicts: Arc<AtomicU64>,
}

impl Worker for CasWorker {
    fn op(&mut self) -> impl Future<Output = Result<(), Status>> + Send {
        use pb::compare::{CompareResult, CompareTarget, TargetUnion};
        use pb::request_op::Request;
        let request = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: self.key.clone(),
                range_end: Vec::new(),
                target_union: Some(TargetUnion::ModRevision(self.mod_revision)),
            }],
            success: vec![pb::RequestOp {
                request: Some(Request::RequestPut(pb::PutRequest {
                    key: self.key.clone(),
                    value: self.value.clone(),
                    ..Default::default()
                })),
            }],
            failure: vec![pb::RequestOp {
                request: Some(Request::RequestRange(pb::RangeRequest {
                    key: self.key.clone(),
                    ..Default::default()
                })),
            }],
        };
        async move {
            let response = self.kv.txn(request).await?;
            if response.succeeded {
                self.mod_revision = response.header.map_or(0, |h| h.revision);
            } else {
                self.conflicts.fetch_add(1, Ordering::Relaxed);
                self.mod_revision = response
                    .responses
                    .first()
                    .and_then(|r| match &r.response {
                        Some(pb::response_op::Response::ResponseRange(range)) => range.kvs.first(),
                        _ => None,
                    })
                    .map_or(0, |kv| kv.mod_revision);
            }
            Ok(())
        }
    }
}

/// Writes keys 0..key_space once, `BENCH_PREPOPULATE_CONCURRENCY_MAX` at a time at most.
async fn populate(
    channels: &[KvConn],
    settings: &Settings,
    key_space: u64,
    val_size: u32,
) -> Result<(), CliError> {
    // Setup, not measurement: as concurrent as allowed, whatever --clients is.
    let concurrency = u64::from(BENCH_PREPOPULATE_CONCURRENCY_MAX).min(key_space);
    let bar = populate_progress(settings, key_space);
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..concurrency {
        let bar = bar.clone();
        let mut kv = kv_client(channels, usize_from(task));
        let mut rng = Rng::new(settings.seed, u64::MAX - task);
        let value = value(val_size, &mut rng);
        let timeout = settings.command_timeout;
        tasks.spawn(async move {
            let mut index = task;
            // Bounded: key_space / concurrency puts.
            while index < key_space {
                let request = pb::PutRequest {
                    key: key("kv", index),
                    value: value.clone(),
                    ..Default::default()
                };
                match tokio::time::timeout(timeout, kv.put(request)).await {
                    Ok(Ok(_)) => bar.inc(1),
                    Ok(Err(status)) => {
                        return Err(CliError::from_status("bench: writing keys", &status));
                    }
                    Err(_) => return Err(CliError::request("bench: writing keys: timed out")),
                }
                index += concurrency;
            }
            Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(result) => result?,
            Err(error) => panic!("bench populate task failed: {error}"),
        }
    }
    bar.finish_and_clear();
    Ok(())
}

fn populate_progress(settings: &Settings, key_space: u64) -> ProgressBar {
    if !settings.show_progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(key_space);
    if let Ok(style) = ProgressStyle::with_template("writing keys [{bar:30}] {pos}/{len}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Puts carry their send time (nanoseconds since `base`) in the first 8 bytes of the value;
/// watchers in this process read it back. One clock, so no skew.
struct StampedPutWorker {
    kv: KvCaller,
    key: Vec<u8>,
    value: Vec<u8>,
    base: Instant,
    puts_ok: Arc<AtomicU64>,
}

impl Worker for StampedPutWorker {
    fn op(&mut self) -> impl Future<Output = Result<(), Status>> + Send {
        let sent_ns = nanos(self.base.elapsed());
        self.value[..TIMESTAMP_BYTES].copy_from_slice(&sent_ns.to_le_bytes());
        let request = pb::PutRequest {
            key: self.key.clone(),
            value: self.value.clone(),
            ..Default::default()
        };
        async move {
            self.kv.put(request).await?;
            self.puts_ok.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }
}

/// What one watcher saw.
struct WatcherResult {
    latencies: Histogram<u64>,
    events: u64,
}

/// Shared between the putters' coordinator and the watchers: how many events to wait for
/// (u64::MAX until the puts end) and until when.
struct Drain {
    expected: AtomicU64,
    deadline_ms: AtomicU64,
}

async fn watch_fanout(
    channels: &[KvConn],
    settings: &Settings,
    watchers: u32,
    val_size: u32,
) -> Result<Report, CliError> {
    let base = Instant::now();
    let prefix = format!("{KEY_PREFIX}watch/").into_bytes();
    let drain = Arc::new(Drain {
        expected: AtomicU64::new(u64::MAX),
        deadline_ms: AtomicU64::new(u64::MAX),
    });
    let watch_channels = tonic_channels(channels);
    if watch_channels.is_empty() {
        return Err(CliError::usage(
            "bench watch-fanout: its watchers need tonic's client (--wire tonic)",
        ));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..watchers as usize {
        let client = WatchClient::new(watch_channels[index % watch_channels.len()].clone())
            .max_decoding_message_size(RESPONSE_BYTES_MAX);
        let stream = open_watch(client, &prefix, settings.command_timeout).await?;
        tasks.spawn(watcher(stream, base, drain.clone()));
    }
    let puts_ok = Arc::new(AtomicU64::new(0));
    let workers = stamped_put_workers(channels, settings, val_size, base, &puts_ok);
    let stats = Arc::new(Stats::default());
    let (put_latency, duration) = drive(workers, settings, stats.clone(), "watch-fanout").await;
    let drain_deadline_ms = millis(base.elapsed()) + BENCH_WATCH_DRAIN_MS_MAX;
    drain
        .deadline_ms
        .store(drain_deadline_ms, Ordering::Relaxed);
    drain
        .expected
        .store(puts_ok.load(Ordering::Relaxed), Ordering::Relaxed);
    let (latencies, events) = collect_watchers(tasks, &stats).await;
    let puts = puts_ok.load(Ordering::Relaxed);
    let expected_events = puts * u64::from(watchers);
    Ok(Report {
        workload: "watch-fanout".into(),
        clients: settings.clients,
        ops: stats.done.load(Ordering::Relaxed),
        errors: stats.errors.load(Ordering::Relaxed),
        duration,
        latency: Some(latencies),
        first_error: stats.first_error(),
        extra: vec![
            ("watchers".into(), json!(watchers)),
            ("events".into(), json!(events)),
            (
                "events_missing".into(),
                json!(expected_events.saturating_sub(events)),
            ),
            (
                "events_per_s".into(),
                json!((events as f64 / duration.as_secs_f64().max(1e-9)).round()),
            ),
            (
                "put_p50_us".into(),
                json!(put_latency.value_at_quantile(0.5)),
            ),
            (
                "put_p99_us".into(),
                json!(put_latency.value_at_quantile(0.99)),
            ),
        ],
        ..Default::default()
    })
}

fn stamped_put_workers(
    channels: &[KvConn],
    settings: &Settings,
    val_size: u32,
    base: Instant,
    puts_ok: &Arc<AtomicU64>,
) -> Vec<StampedPutWorker> {
    (0..settings.clients as usize)
        .map(|i| {
            let mut rng = Rng::new(settings.seed, i as u64);
            StampedPutWorker {
                kv: kv_client(channels, i),
                key: key("watch", i as u64),
                value: value(val_size.max(TIMESTAMP_BYTES_U32), &mut rng),
                base,
                puts_ok: puts_ok.clone(),
            }
        })
        .collect()
}

/// Waits for every watcher; merges their latencies and counts their events.
async fn collect_watchers(
    mut tasks: tokio::task::JoinSet<Result<WatcherResult, Status>>,
    stats: &Stats,
) -> (Histogram<u64>, u64) {
    let mut latencies = histogram();
    let mut events: u64 = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(seen)) => {
                let _ = latencies.add(&seen.latencies);
                events += seen.events;
            }
            Ok(Err(status)) => stats.error(&status),
            Err(error) => panic!("bench watcher task failed: {error}"),
        }
    }
    (latencies, events)
}

type WatchStream = (
    mpsc::Sender<pb::WatchRequest>,
    tonic::Streaming<pb::WatchResponse>,
);

/// Opens a watch on `prefix` and waits for the server to confirm it.
async fn open_watch(
    mut client: WatchClient<AuthedChannel>,
    prefix: &[u8],
    timeout: Duration,
) -> Result<WatchStream, CliError> {
    let (requests, receiver) = mpsc::channel(1);
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                ..Default::default()
            },
        )),
    };
    let _ = requests.send(create).await;
    let opened = async {
        let mut stream = client
            .watch(ReceiverStream::new(receiver))
            .await?
            .into_inner();
        // Bounded: the first response answers the create.
        match stream.message().await? {
            Some(response) if response.created && !response.canceled => Ok(stream),
            Some(response) => Err(Status::internal(format!(
                "watch not created: {}",
                response.cancel_reason
            ))),
            None => Err(Status::unavailable("the watch stream ended")),
        }
    };
    match tokio::time::timeout(timeout, opened).await {
        Ok(Ok(stream)) => Ok((requests, stream)),
        Ok(Err(status)) => Err(CliError::from_status("bench: creating a watcher", &status)),
        Err(_) => Err(CliError::request("bench: creating a watcher: timed out")),
    }
}

/// Receives events until it has seen every put or the drain deadline passes.
async fn watcher(
    stream: WatchStream,
    base: Instant,
    drain: Arc<Drain>,
) -> Result<WatcherResult, Status> {
    const POLL_MS: u64 = 100;
    let (_requests, mut stream) = stream;
    let mut seen = WatcherResult {
        latencies: histogram(),
        events: 0,
    };
    // Bounded: the puts are bounded, and after them the drain deadline ends the loop.
    loop {
        if seen.events >= drain.expected.load(Ordering::Relaxed)
            || millis(base.elapsed()) >= drain.deadline_ms.load(Ordering::Relaxed)
        {
            return Ok(seen);
        }
        let message =
            match tokio::time::timeout(Duration::from_millis(POLL_MS), stream.message()).await {
                Err(_) => continue,
                Ok(message) => message?,
            };
        let Some(response) = message else {
            return Ok(seen);
        };
        let now_ns = nanos(base.elapsed());
        for event in &response.events {
            let Some(kv) = &event.kv else { continue };
            let Some(stamp) = kv.value.get(..TIMESTAMP_BYTES) else {
                continue;
            };
            let mut bytes = [0u8; TIMESTAMP_BYTES];
            bytes.copy_from_slice(stamp);
            let sent_ns = u64::from_le_bytes(bytes);
            record_us(
                &mut seen.latencies,
                Duration::from_nanos(now_ns.saturating_sub(sent_ns)),
            );
            seen.events += 1;
        }
    }
}
