//! The simulator's seeds 15023 and 10920, as a fixed script: a follower partitioned while the
//! cluster moves on comes back, the commit of the entries it catches up on fails (fsync EIO),
//! and it must not answer a linearizable read from a state machine behind the read index
//! before its Raft stops. It did: openraft applied the committed entries by reading them
//! back from the log, the log writer had dropped the failed commit's entries, openraft took
//! the empty read as the whole range and reported it applied, and the read, waiting for that
//! applied index, served the value from before the partition. `tests/failed_log_commit.rs` in
//! aspen-storage pins the mechanism; this runs it through real nodes on the simulated network
//! and disks (the plain build's paused tokio runtime: deterministic).

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use std::collections::BTreeSet;
use std::time::Duration;

use aspen_core::{Command, NodeId, PutRequest, RangeRequest};
use aspen_node::{Node, RaftTiming, TestingOptions};
use aspen_sim::cluster::Cluster;
use aspen_sim::limits::{ELECTION_TIMEOUT_MS, HEARTBEAT_INTERVAL_MS};
use aspen_sim::net::{NetFaults, SimNet};
use aspen_sim::rng::SimRng;

const KEY: &[u8] = b"k";
/// Writes while the follower is away: more than one append's worth to catch up on.
const WRITES_WHILE_AWAY: u64 = 12;
/// How long the follower's reads are watched after the heal.
const WATCH_AFTER_HEAL_MS: u64 = 3_000;
const READ_INTERVAL_MS: u64 = 5;
const SEED: u64 = 15_023;

async fn put(node: &Node, value: &str) {
    node.write(Command::Put(PutRequest {
        key: KEY.to_vec(),
        value: value.as_bytes().to_vec(),
        ..PutRequest::default()
    }))
    .await
    .expect("a write on the majority side");
}

/// A linearizable read of `KEY` on `node`: its value, or the error.
async fn get(node: &Node) -> Result<Option<String>, String> {
    let request = RangeRequest {
        key: KEY.to_vec(),
        ..RangeRequest::default()
    };
    let (result, _) = node.range(&request).await.map_err(|e| e.to_string())?;
    Ok(result
        .kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

fn blocked_around(id: NodeId, others: &[NodeId]) -> BTreeSet<(NodeId, NodeId)> {
    others
        .iter()
        .flat_map(|&other| [(id, other), (other, id)])
        .collect()
}

async fn leader(cluster: &Cluster) -> (NodeId, Node) {
    for _ in 0..200 {
        if let Some(found) = cluster.leader() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader");
}

async fn scenario(dir: std::path::PathBuf) -> Outcome {
    let net = SimNet::new(SimRng::new(SEED));
    let timing = RaftTiming {
        heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS,
        election_timeout_ms: ELECTION_TIMEOUT_MS,
        snapshot_count: 1_000,
    };
    let ids = [1, 2, 3];
    let cluster = Cluster::new(net.clone(), dir, timing, TestingOptions::default(), &ids);
    for id in ids {
        cluster.start(id).await.expect("start");
    }
    cluster.initialize(&ids).await.expect("initialize");
    let (leader_id, leader_node) = leader(&cluster).await;
    let follower = *ids.iter().find(|&&id| id != leader_id).expect("a follower");
    let follower_node = cluster.node(follower).expect("follower running");
    put(&leader_node, "before").await;
    assert_eq!(get(&follower_node).await, Ok(Some("before".to_string())));

    // The follower is cut off while the majority writes on.
    let others: Vec<NodeId> = ids.iter().copied().filter(|&id| id != follower).collect();
    net.set_faults(NetFaults {
        blocked: blocked_around(follower, &others),
        blocked_refuses: true,
        ..NetFaults::default()
    });
    for n in 1..=WRITES_WHILE_AWAY {
        put(&leader_node, &format!("after-{n}")).await;
    }
    let latest = format!("after-{WRITES_WHILE_AWAY}");
    // Its next log fsync fails (a log commit syncs the log's journal), and the network heals.
    let disks = cluster.disks(follower).expect("disks");
    disks.journal.fail_next_sync(false);
    net.set_faults(NetFaults::default());

    // Reads on the follower until its Raft stops (the failed commit stops it) or time is up:
    // each one answered must be the latest value, and openraft must never say more is applied
    // than the state machine holds.
    let mut outcome = Outcome::default();
    let mut reads = Vec::new();
    for _ in 0..WATCH_AFTER_HEAL_MS / READ_INTERVAL_MS {
        let metrics = follower_node.raft_metrics();
        let reported = metrics.last_applied.as_ref().map_or(0, |id| id.index);
        if let Ok(state) = follower_node.reader().applied_state() {
            let held = state.last_applied.as_ref().map_or(0, |id| id.index);
            if reported > held {
                outcome.ahead.push(format!(
                    "at {} ms openraft reports {reported} applied, the state machine holds {held}",
                    net.now_ms()
                ));
            }
        }
        if metrics.running_state.is_err() {
            break;
        }
        let reader = follower_node.clone();
        reads.push(tokio::spawn(async move { get(&reader).await }));
        tokio::time::sleep(Duration::from_millis(READ_INTERVAL_MS)).await;
    }
    // Every read issued ends: answered, refused, or timed out (the node's own bounds).
    for read in reads {
        match read.await.expect("read task") {
            Ok(Some(value)) if value == latest => outcome.latest += 1,
            Ok(other) => outcome.stale.push(format!("{other:?}")),
            Err(_) => outcome.refused += 1,
        }
    }
    outcome.failed_syncs = disks.failed_syncs();
    outcome.stopped = follower_node.raft_metrics().running_state.is_err();
    for id in ids {
        let _ = net.take_down(id);
    }
    outcome
}

#[derive(Debug, Default)]
struct Outcome {
    failed_syncs: u64,
    stopped: bool,
    /// Linearizable reads on the follower answered with the latest value.
    latest: u64,
    /// ... with anything else.
    stale: Vec<String>,
    /// ... refused (an error).
    refused: u64,
    /// Moments openraft's applied index was past the state machine's.
    ahead: Vec<String>,
}

/// Panics anywhere in the run (a task's panic does not fail a test on its own): openraft's
/// debug build asserts that an apply read every entry it asked for.
static PANICS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

#[test]
fn a_follower_whose_log_commit_failed_serves_no_stale_linearizable_read() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(info.to_string());
        previous(info);
    }));
    // Snapshot files go here (the disks are simulated).
    let dir = std::env::temp_dir().join(format!("aspen-sim-failed-log-{}", std::process::id()));
    let outcome = aspen_sim::run_script(SEED, scenario(dir.clone()));
    let _ = std::fs::remove_dir_all(&dir);
    let panics = PANICS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(panics.is_empty(), "panics during the run: {panics:#?}");
    assert!(
        outcome.failed_syncs > 0,
        "the armed fsync failure never hit the follower's log: the script no longer reaches \
         the fault: {outcome:?}"
    );
    assert!(
        outcome.stopped,
        "the follower's Raft did not stop after its log commit failed: {outcome:?}"
    );
    assert!(
        outcome.stale.is_empty() && outcome.ahead.is_empty(),
        "the follower's state machine fell behind what openraft reports applied: {outcome:#?}"
    );
}
