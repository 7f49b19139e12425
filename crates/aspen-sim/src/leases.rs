//! A lease client: grants a lease, attaches keys to it, keeps it alive for a while, then
//! revokes it or lets it expire, over and over, through the node's entry points the etcd
//! Lease service calls (`Node::write` with `LeaseGrant`/`LeaseRevoke` and puts with a lease,
//! `Node::lease_keep_alive`); expiry is the leader's lessor task's own doing.
//!
//! Its keys are `l<client>/<lease>/<n>`, outside the watched range and the linearizability
//! check's keys; each key is attached to one lease only, and sometimes detached again (put
//! with no lease), so that a revocation must spare it. What it was told is recorded for the
//! lease check (`invariants/leases.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aspen_core::{ApplyError, Command, CommandResult, PutRequest};
use aspen_node::{Node, NodeError};

use crate::cluster::Cluster;
use crate::limits::{
    CLIENT_BACKOFF_MS_MAX, CLIENT_BACKOFF_MS_MIN, CLIENT_THINK_MS_MAX, CLIENT_TIMEOUT_MS,
    LEASE_DETACH_PPM, LEASE_KEEP_ALIVES_MAX, LEASE_KEYS_MAX, LEASE_KEYS_MIN, LEASE_REVOKE_PPM,
    LEASE_TTL_SECONDS_MAX, LEASES_PER_CLIENT_MAX, POLL_INTERVAL_MS,
};
use crate::rng::SimRng;

/// The first key of the lease clients' keys, and the end of their range.
pub const LEASE_KEYS_START: &[u8] = b"l";
pub const LEASE_KEYS_END: &[u8] = b"m";

/// A put with a lease the cluster acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedPut {
    pub key: Vec<u8>,
    /// 0: the put detached the key.
    pub lease: u64,
    pub revision: u64,
}

/// What the lease clients were told.
#[derive(Debug, Clone, Default)]
pub struct LeaseLog {
    pub granted: u64,
    pub keep_alives: u64,
    /// Keep-alives answered "not found": the lease had expired (or been revoked) already.
    pub keep_alives_not_found: u64,
    pub abandoned: u64,
    pub acked_puts: Vec<AttachedPut>,
    /// Revocations acknowledged, with the revision of the response.
    pub acked_revokes: Vec<(u64, u64)>,
    /// Revocations answered "not found" (the lease had expired first).
    pub revokes_not_found: u64,
    /// Responses no correct cluster gives this workload.
    pub unexpected: Vec<String>,
}

/// What one request came to.
enum Outcome<T> {
    Done(T),
    /// The lease does not exist (expired or revoked): a definite answer.
    NotFound,
    /// Failed or timed out: it may have happened or may yet.
    Unknown,
}

/// One lease client, until `stop` or `LEASES_PER_CLIENT_MAX` leases.
pub async fn run_lease_client(
    client_id: u64,
    cluster: Cluster,
    stop: Arc<AtomicBool>,
    mut rng: SimRng,
) -> LeaseLog {
    let mut log = LeaseLog::default();
    for lease_seq in 0..LEASES_PER_CLIENT_MAX {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        sleep_ms(rng.below(CLIENT_THINK_MS_MAX + 1)).await;
        let ttl_seconds = aspen_core::convert::wire_i64(rng.between(1, LEASE_TTL_SECONDS_MAX));
        let grant = Command::LeaseGrant { id: 0, ttl_seconds };
        let (id, ttl_seconds) = match request(&cluster, &mut rng, grant, &mut log).await {
            Outcome::Done(response) => match response.result {
                Ok(CommandResult::LeaseGrant { id, ttl_seconds }) => (id, ttl_seconds),
                other => {
                    log.unexpected
                        .push(format!("lease grant answered {other:?}"));
                    continue;
                }
            },
            Outcome::NotFound | Outcome::Unknown => {
                backoff(&mut rng).await;
                continue;
            }
        };
        log.granted += 1;
        cluster.net().record(&[8, client_id, lease_seq], || {
            format!("lease client {client_id}: lease {lease_seq} granted, ttl {ttl_seconds}s")
        });
        let keys: Vec<Vec<u8>> = (0..rng.between(LEASE_KEYS_MIN, LEASE_KEYS_MAX))
            .map(|n| format!("l{client_id}/{lease_seq}/{n}").into_bytes())
            .collect();
        for key in &keys {
            attach(&cluster, &mut rng, key, id, &mut log).await;
        }
        if rng.chance_ppm(LEASE_DETACH_PPM) {
            attach(&cluster, &mut rng, &keys[0], 0, &mut log).await;
        }
        let period_ms = (ttl_seconds.max(1) as u64) * 1000 / 3;
        for _ in 0..rng.below(LEASE_KEEP_ALIVES_MAX + 1) {
            sleep_ms(period_ms).await;
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let Some((_, node)) = pick(&cluster, &mut rng) else {
                continue;
            };
            let kept = timed(node.lease_keep_alive(id)).await;
            match kept {
                Outcome::Done(_) => log.keep_alives += 1,
                Outcome::NotFound => {
                    log.keep_alives_not_found += 1;
                    break;
                }
                Outcome::Unknown => {}
            }
        }
        if !rng.chance_ppm(LEASE_REVOKE_PPM) {
            log.abandoned += 1;
            continue;
        }
        match request(&cluster, &mut rng, Command::LeaseRevoke { id }, &mut log).await {
            Outcome::Done(response) => match response.result {
                Ok(CommandResult::LeaseRevoke) => log.acked_revokes.push((id, response.revision)),
                Err(ApplyError::LeaseNotFound) => log.revokes_not_found += 1,
                other => log
                    .unexpected
                    .push(format!("lease revoke answered {other:?}")),
            },
            Outcome::NotFound => log.revokes_not_found += 1,
            Outcome::Unknown => {}
        }
        cluster.net().record(&[9, client_id, lease_seq], || {
            format!("lease client {client_id}: lease {lease_seq} done")
        });
    }
    log
}

/// Puts `key` with lease `id` (0: no lease), recording an acknowledged put.
async fn attach(cluster: &Cluster, rng: &mut SimRng, key: &[u8], id: u64, log: &mut LeaseLog) {
    let put = Command::Put(PutRequest {
        key: key.to_vec(),
        value: format!("lease {id}").into_bytes(),
        lease: id,
        ..PutRequest::default()
    });
    match request(cluster, rng, put, log).await {
        Outcome::Done(response) => match response.result {
            Ok(CommandResult::Put { .. }) => log.acked_puts.push(AttachedPut {
                key: key.to_vec(),
                lease: id,
                revision: response.revision,
            }),
            Err(ApplyError::LeaseNotFound) => {}
            other => log
                .unexpected
                .push(format!("a put with lease {id} answered {other:?}")),
        },
        Outcome::NotFound | Outcome::Unknown => {}
    }
}

async fn request(
    cluster: &Cluster,
    rng: &mut SimRng,
    command: Command,
    _log: &mut LeaseLog,
) -> Outcome<aspen_core::ApplyResponse> {
    let Some((_, node)) = pick(cluster, rng) else {
        sleep_ms(POLL_INTERVAL_MS).await;
        return Outcome::Unknown;
    };
    timed(node.write(command)).await
}

async fn timed<T>(future: impl std::future::Future<Output = Result<T, NodeError>>) -> Outcome<T> {
    match tokio::time::timeout(Duration::from_millis(CLIENT_TIMEOUT_MS), future).await {
        Ok(Ok(value)) => Outcome::Done(value),
        Ok(Err(NodeError::Apply(ApplyError::LeaseNotFound))) => Outcome::NotFound,
        Ok(Err(_)) | Err(_) => Outcome::Unknown,
    }
}

/// A running member, as a client configured with the cluster's endpoints picks.
fn pick(cluster: &Cluster, rng: &mut SimRng) -> Option<(u64, Node)> {
    let running = cluster.running();
    let candidates: Vec<(u64, Node)> = match cluster.members() {
        Some(members) => running
            .into_iter()
            .filter(|(id, _)| members.contains(id))
            .collect(),
        None => running,
    };
    if candidates.is_empty() {
        return None;
    }
    Some(rng.pick(&candidates).clone())
}

async fn backoff(rng: &mut SimRng) {
    sleep_ms(rng.between(CLIENT_BACKOFF_MS_MIN, CLIENT_BACKOFF_MS_MAX)).await;
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
