//! HTTP endpoints as etcd 3.4 serves them: Prometheus text on /metrics, /health and
//! /version. The metrics listener serves them alone; the client port serves them beside the
//! JSON gateway (`gateway.rs`).

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aspen_node::Node;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde::Serialize;

/// The etcd version Aspen reports; current etcd clients accept it.
pub const ETCD_VERSION: &str = "3.5.0";
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";
/// How long /health waits for its linearizable read (etcd 3.4's QGET: 1 s).
pub const HEALTH_READ_TIMEOUT_MS: u64 = 1_000;

/// `/metrics`, `/health` and `/version`: the metrics port serves this router alone, the client
/// port serves it beside gRPC.
pub fn router(node: Node) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/version", get(version))
        .with_state(node)
}

#[derive(Serialize)]
struct Version {
    etcdserver: &'static str,
    etcdcluster: &'static str,
}

async fn version() -> String {
    let version = Version {
        etcdserver: ETCD_VERSION,
        etcdcluster: ETCD_CLUSTER_VERSION,
    };
    match serde_json::to_string(&version) {
        Ok(json) => json,
        Err(error) => unreachable!("two strings serialize: {error}"),
    }
}

/// Why a member is unhealthy, as etcd 3.4's /health decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unhealthy {
    /// An alarm is active (etcd: any alarm, e.g. NOSPACE).
    Alarm,
    /// The member knows no leader.
    NoLeader,
    /// A linearizable read did not complete within `HEALTH_READ_TIMEOUT_MS`.
    ReadFailed,
}

/// etcd 3.4's health check: no active alarm, a known leader, and a linearizable read that
/// completes within a second (etcd's QGET through Raft; here a ReadIndex barrier).
pub async fn check_health(node: &Node) -> Result<(), Unhealthy> {
    let alarms = node.applied_state().map(|s| s.alarms.len()).unwrap_or(0);
    if alarms > 0 {
        return Err(Unhealthy::Alarm);
    }
    if !node.has_live_leader() {
        return Err(Unhealthy::NoLeader);
    }
    let timeout = Duration::from_millis(HEALTH_READ_TIMEOUT_MS);
    match tokio::time::timeout(timeout, node.read_barrier()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(Unhealthy::ReadFailed),
    }
}

#[derive(Serialize)]
struct Health {
    health: &'static str,
}

/// etcd 3.4's /health: `{"health":"true"}` with 200, or `{"health":"false"}` with 503.
async fn health(State(node): State<Node>) -> (StatusCode, String) {
    let (status, health) = match check_health(&node).await {
        Ok(()) => (StatusCode::OK, "true"),
        Err(reason) => {
            tracing::warn!(?reason, "/health reports unhealthy");
            (StatusCode::SERVICE_UNAVAILABLE, "false")
        }
    };
    let body = match serde_json::to_string(&Health { health }) {
        Ok(json) => json,
        Err(error) => unreachable!("a string serializes: {error}"),
    };
    (status, body)
}

async fn metrics(State(node): State<Node>) -> String {
    let in_use_bytes = node.db_size_in_use_bytes().await;
    let mut out = String::with_capacity(4096);
    let raft = node.raft_metrics();
    let m = node.metrics();
    let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
    let counter = |out: &mut String, name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    };
    gauge(
        &mut out,
        "etcd_server_has_leader",
        "Whether a leader exists.",
        node.has_live_leader() as u64,
    );
    gauge(
        &mut out,
        "etcd_server_is_leader",
        "Whether this member is the leader.",
        node.is_leader() as u64,
    );
    gauge(
        &mut out,
        "aspen_raft_term",
        "The current Raft term.",
        raft.current_term,
    );
    counter(
        &mut out,
        "etcd_server_leader_changes_seen_total",
        "Leader changes seen.",
        m.leader_changes.load(Ordering::Relaxed),
    );
    let commit = raft.local_committed.as_ref().map_or(0, |id| id.index);
    let applied = raft.last_applied.as_ref().map_or(0, |id| id.index);
    gauge(
        &mut out,
        "etcd_server_proposals_committed_total",
        "The committed Raft index.",
        commit,
    );
    gauge(
        &mut out,
        "etcd_server_proposals_applied_total",
        "The applied Raft index.",
        applied,
    );
    counter(
        &mut out,
        "aspen_proposals_succeeded_total",
        "Client proposals that completed.",
        m.proposals_committed.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "etcd_server_proposals_failed_total",
        "Client proposals that failed.",
        m.proposals_failed.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "aspen_proposals_forwarded_total",
        "Requests forwarded to the leader (each write of a batch counted).",
        m.proposals_forwarded.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "aspen_peer_append_streams_total",
        "Append streams peers opened to this member (replication, and one per heartbeat pipe).",
        m.peer_append_streams.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "aspen_peer_append_messages_total",
        "Appends received over those streams, heartbeats included.",
        m.peer_append_messages.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "aspen_forward_write_batches_total",
        "Batches of writes this member forwarded to the leader as a follower.",
        m.forward_write_batches.batches.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "aspen_forward_write_batched_total",
        "Writes this member forwarded to the leader in batches.",
        m.forward_write_batches.writes.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "etcd_mvcc_db_total_size_in_bytes",
        "State database file size in bytes.",
        node.store().db_size_bytes(),
    );
    gauge(
        &mut out,
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "State database bytes in use.",
        in_use_bytes,
    );
    gauge(
        &mut out,
        "aspen_log_db_size_in_bytes",
        "Raft log database file size in bytes.",
        node.store().log_size_bytes(),
    );
    counter(
        &mut out,
        "aspen_state_db_syncs_total",
        "Durable commits (fsyncs) of the state database.",
        node.store().state_syncs(),
    );
    counter(
        &mut out,
        "aspen_log_db_syncs_total",
        "Fsyncs of the Raft log: its journal's and the log database's.",
        node.store().log_syncs(),
    );
    let journal = node.store().log_journal_stats();
    counter(
        &mut out,
        "aspen_log_journal_records_total",
        "Durable rounds of the log writer, each one record and one fsync of the log's journal.",
        journal.records,
    );
    counter(
        &mut out,
        "aspen_log_journal_checkpoints_total",
        "Checkpoints: durable commits of the log database that retire the journal's records (the journal was full, the log database held 4 MiB unsynced, a round too large for a record, open after a replay, or close).",
        journal.checkpoints,
    );
    let _ = writeln!(
        out,
        "# HELP aspen_proposal_duration_seconds Client proposal latency.\n# TYPE aspen_proposal_duration_seconds histogram"
    );
    m.proposal_latency
        .render("aspen_proposal_duration_seconds", "", &mut out);
    let _ = writeln!(
        out,
        "# HELP etcd_disk_wal_fsync_duration_seconds Durable log commit latency.\n# TYPE etcd_disk_wal_fsync_duration_seconds histogram"
    );
    node.store()
        .fsync_latency()
        .render("etcd_disk_wal_fsync_duration_seconds", "", &mut out);
    let methods = aspen_node::metrics::CLIENT_METHODS
        .iter()
        .zip(m.client.iter());
    let _ = writeln!(
        out,
        "# HELP aspen_client_requests_total Client gRPC requests by method.\n# TYPE aspen_client_requests_total counter"
    );
    for (name, entry) in methods.clone() {
        let requests = entry.requests.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "aspen_client_requests_total{{method=\"{name}\"}} {requests}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP aspen_client_requests_failed_total Failed client gRPC requests by method.\n# TYPE aspen_client_requests_failed_total counter"
    );
    for (name, entry) in methods.clone() {
        let failures = entry.failures.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "aspen_client_requests_failed_total{{method=\"{name}\"}} {failures}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP aspen_client_request_duration_seconds Client gRPC latency by method.\n# TYPE aspen_client_request_duration_seconds histogram"
    );
    for (name, entry) in methods {
        let labels = format!("method=\"{name}\"");
        entry
            .latency
            .render("aspen_client_request_duration_seconds", &labels, &mut out);
    }
    counter(
        &mut out,
        "aspen_auto_compactions_total",
        "Auto-compactions (--auto-compaction-mode) this member proposed as the leader and saw done.",
        m.auto_compactions.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "aspen_auto_compaction_revision",
        "The highest revision this member auto-compacted at (0: none yet).",
        m.auto_compaction_revision.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "aspen_disk_owed_bytes",
        "Bytes the log and state databases will still write for entries already taken (at twice their payload, for page rounding); the disk reserve check adds them to --disk-reserve-bytes.",
        node.store().owed_disk_bytes(),
    );
    counter(
        &mut out,
        "aspen_disk_low_refusals_total",
        "Writes this member refused as the leader (NOSPACE) because its data dir's disk had less free than --disk-reserve-bytes plus aspen_disk_owed_bytes.",
        m.disk_low_refusals.load(Ordering::Relaxed),
    );
    render_read_index(m, &mut out);
    render_put_stages(m, &mut out);
    out
}

/// Where a put's time goes: the API layer, then the leader's stages from proposal to answer.
fn render_put_stages(m: &aspen_node::metrics::NodeMetrics, out: &mut String) {
    let name = "aspen_put_stage_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} A put's time by stage: the API layer (grpc), then on the leader \
         proposal to append, append to durable (fsync), durable to committed, committed to \
         applied, applied to response.\n# TYPE {name} histogram"
    );
    let stages = aspen_node::metrics::PUT_STAGES
        .iter()
        .zip(m.put_stages.stages.iter());
    for (stage, histogram) in stages {
        histogram.render(name, &format!("stage=\"{stage}\""), out);
    }
}

/// The read batchers' rounds and the reads they served: reads / rounds is the batching ratio.
fn render_read_index(m: &aspen_node::metrics::NodeMetrics, out: &mut String) {
    let sources = [
        ("leader", &m.read_index_leader),
        ("forwarded", &m.read_index_forwarded),
    ];
    let rounds = sources.map(|(source, metrics)| (source, metrics.rounds.load(Ordering::Relaxed)));
    let reads = sources.map(|(source, metrics)| (source, metrics.reads.load(Ordering::Relaxed)));
    labelled_counter(
        out,
        "aspen_read_index_rounds_total",
        "ReadIndex rounds (leader: quorum confirmations; forwarded: ReadIndex requests to the leader).",
        ("source", &rounds),
    );
    labelled_counter(
        out,
        "aspen_read_index_reads_total",
        "Read index requests served by ReadIndex rounds.",
        ("source", &reads),
    );
}

/// One counter family: `name{label="value"} count` for each (value, count).
fn labelled_counter(
    out: &mut String,
    name: &str,
    help: &str,
    (label, values): (&str, &[(&str, u64)]),
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value, count) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {count}");
    }
}
