//! Bounded memory under abuse, against one real `aspen` process (debug build, redb): 100,000
//! leases, 10,000 watchers on ten streams that stop reading after their watchers are created
//! (slow consumers that never read again), every one of them watching the keys that then get
//! values at the request-size limit, and Txns at `--max-txn-ops` with values that fill the
//! request. The process's peak RSS (`VmHWM`) must stay under `RSS_BYTES_MAX`, the bound
//! README's "Memory" section states; a reader that does read sees every write, and the member
//! still serves afterwards.
//!
//! A monitor kills the process if its RSS passes `KILL_RSS_BYTES`, so a regression fails the
//! test instead of taking the machine down.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use std::time::Duration;

use aspen_proto::etcdserverpb::kv_client::KvClient;
use aspen_proto::etcdserverpb::lease_client::LeaseClient;
use aspen_proto::etcdserverpb::watch_client::WatchClient;
use aspen_proto::etcdserverpb::watch_request::RequestUnion;
use aspen_proto::etcdserverpb::{
    LeaseGrantRequest, PutRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
    WatchResponse, request_op,
};
use common::{Backend, Cluster};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// The bound on the member's peak RSS under this abuse (README, "Memory").
const RSS_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// Far past the bound: the monitor kills the member here.
const KILL_RSS_BYTES: u64 = 4 * RSS_BYTES_MAX;
/// Leases granted by default; `ASPEN_ABUSE_LEASES` changes it (`.ci/run`: 100,000, about
/// four minutes in a debug build on two cores).
const LEASES_DEFAULT: u64 = 20_000;
const LEASE_GRANTERS: u64 = 64;
const LEASE_TTL_SECONDS: i64 = 3_600;
/// Streams that stop reading once their watchers are created.
const SLOW_STREAMS: usize = 10;
const WATCHERS_PER_SLOW_STREAM: usize = 1_000;
/// Puts of values at the request-size limit, each watched by every watcher.
const BIG_PUTS: usize = 16;
/// Room left in a request for the key and the framing.
const REQUEST_OVERHEAD_BYTES: usize = 4 * 1024;
const TXNS: usize = 8;
const TXN_OPS: usize = aspen_core::limits::TXN_OPS_MAX_DEFAULT as usize;
const REQUEST_BYTES: usize =
    aspen_core::convert::usize_from(aspen_core::limits::REQUEST_BYTES_MAX_DEFAULT);
const WATCH_PREFIX: &str = "abuse/";
const MONITOR_INTERVAL_MS: u64 = 20;
const RESPONSE_WAIT_MS: u64 = 60_000;

/// (VmRSS, VmHWM) of `pid`, in bytes.
fn rss(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Watches `pid` and kills it past `KILL_RSS_BYTES`; returns whether it had to.
fn spawn_monitor(pid: u32) -> tokio::task::JoinHandle<bool> {
    tokio::spawn(async move {
        while let Some((rss_bytes, _)) = rss(pid) {
            if rss_bytes > KILL_RSS_BYTES {
                // SAFETY: our own child, still running (its /proc entry was just read).
                unsafe { libc::kill(pid.cast_signed(), libc::SIGKILL) };
                return true;
            }
            tokio::time::sleep(Duration::from_millis(MONITOR_INTERVAL_MS)).await;
        }
        false
    })
}

/// Its own connection: a slow stream's flow control must not hold the others back.
fn channel(cluster: &Cluster) -> Channel {
    Endpoint::from_shared(cluster.members[0].client_url())
        .expect("url")
        .connect_timeout(Duration::from_millis(1_000))
        .connect_lazy()
}

fn watch_all() -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: WATCH_PREFIX.as_bytes().to_vec(),
            range_end: aspen_core::keys::prefix_range_end(WATCH_PREFIX.as_bytes()),
            prev_kv: true,
            ..Default::default()
        })),
    }
}

/// A stream with `watchers` watchers on the prefix, every `created` read; the caller decides
/// whether to read more.
async fn open_watchers(
    cluster: &Cluster,
    watchers: usize,
) -> (mpsc::Sender<WatchRequest>, tonic::Streaming<WatchResponse>) {
    let (requests, receiver) = mpsc::channel(watchers.max(1));
    let mut responses = WatchClient::new(channel(cluster))
        .watch(ReceiverStream::new(receiver))
        .await
        .expect("watch stream")
        .into_inner();
    let sender = requests.clone();
    tokio::spawn(async move {
        for _ in 0..watchers {
            if sender.send(watch_all()).await.is_err() {
                return;
            }
        }
    });
    let mut created = 0;
    while created < watchers {
        let response = next(&mut responses).await;
        assert!(!response.canceled, "watch refused: {response:?}");
        created += usize::from(response.created);
    }
    (requests, responses)
}

async fn next(responses: &mut tonic::Streaming<WatchResponse>) -> WatchResponse {
    let wait = Duration::from_millis(RESPONSE_WAIT_MS);
    match tokio::time::timeout(wait, responses.message()).await {
        Ok(Ok(Some(response))) => response,
        other => panic!("no watch response: {other:?}"),
    }
}

fn leases() -> u64 {
    std::env::var("ASPEN_ABUSE_LEASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LEASES_DEFAULT)
}

async fn grant_leases(cluster: &Cluster, leases: u64) {
    let granters: Vec<_> = (0..LEASE_GRANTERS)
        .map(|_| {
            let mut lease = LeaseClient::new(channel(cluster));
            tokio::spawn(async move {
                for _ in 0..leases.div_ceil(LEASE_GRANTERS) {
                    let request = LeaseGrantRequest {
                        ttl: LEASE_TTL_SECONDS,
                        id: 0,
                    };
                    lease.lease_grant(request).await.expect("lease grant");
                }
            })
        })
        .collect();
    for granter in granters {
        granter.await.expect("granter");
    }
}

fn big_value(i: usize) -> Vec<u8> {
    vec![b"abcdefghijklmnopqrstuvwxyz"[i % 26]; REQUEST_BYTES - REQUEST_OVERHEAD_BYTES]
}

/// A Txn of `TXN_OPS` puts whose values fill the request.
fn full_txn(t: usize) -> TxnRequest {
    let value_bytes = REQUEST_BYTES / TXN_OPS - 256;
    let success = (0..TXN_OPS)
        .map(|op| RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: format!("{WATCH_PREFIX}txn/{t}/{op:03}").into_bytes(),
                value: vec![b"0123456789"[op % 10]; value_bytes],
                ..Default::default()
            })),
        })
        .collect();
    TxnRequest {
        success,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peak_rss_stays_bounded_under_watch_lease_and_large_request_abuse() {
    let mut cluster = Cluster::new(1, Backend::Redb, None);
    cluster.start(0);
    cluster.wait_leader(&[0]).await;
    let pid = cluster.process(0).pid();
    let monitor = spawn_monitor(pid);
    let started = std::time::Instant::now();

    let leases = leases();
    grant_leases(&cluster, leases).await;
    let after_leases = rss(pid).expect("rss");
    eprintln!(
        "{:?} after {leases} leases: rss/hwm {after_leases:?}",
        started.elapsed()
    );

    let mut slow = Vec::new();
    for _ in 0..SLOW_STREAMS {
        slow.push(open_watchers(&cluster, WATCHERS_PER_SLOW_STREAM).await);
    }
    let (_reader_requests, mut reader) = open_watchers(&cluster, 1).await;
    eprintln!(
        "{:?} after watchers: rss/hwm {:?}",
        started.elapsed(),
        rss(pid)
    );

    let mut kv = KvClient::new(channel(&cluster))
        .max_decoding_message_size(2 * REQUEST_BYTES)
        .max_encoding_message_size(2 * REQUEST_BYTES);
    let mut writes = 0;
    for i in 0..BIG_PUTS {
        let request = PutRequest {
            key: format!("{WATCH_PREFIX}big/{i:03}").into_bytes(),
            value: big_value(i),
            ..Default::default()
        };
        kv.put(request).await.expect("put at the request limit");
        writes += 1;
    }
    eprintln!(
        "{:?} after big puts: rss/hwm {:?}",
        started.elapsed(),
        rss(pid)
    );
    for t in 0..TXNS {
        let reply = kv.txn(full_txn(t)).await.expect("txn at max-txn-ops");
        assert!(reply.into_inner().succeeded);
        writes += TXN_OPS;
    }
    eprintln!("{:?} after txns: rss/hwm {:?}", started.elapsed(), rss(pid));

    // The reader, which reads, gets every event.
    let mut events = 0;
    while events < writes {
        events += next(&mut reader).await.events.len();
    }
    assert_eq!(events, writes);
    // Still serving.
    let (_, hwm) = rss(pid).expect("the member is still running");
    cluster.put(0, "after-abuse", "v").await;
    assert!(!monitor.is_finished(), "killed past {KILL_RSS_BYTES} bytes");
    monitor.abort();
    eprintln!(
        "peak RSS {} MiB (bound {} MiB)",
        hwm >> 20,
        RSS_BYTES_MAX >> 20
    );
    assert!(
        hwm < RSS_BYTES_MAX,
        "peak RSS {hwm} bytes passed the bound {RSS_BYTES_MAX}"
    );
    drop(slow);
}
