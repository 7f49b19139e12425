//! Replicas converge after healing: every member applies everything the leader has, and then
//! all of them hold the same keys, values, metadata and revision.

use std::collections::BTreeSet;
use std::time::Duration;

use aspen_core::response::KeyValue;
use aspen_core::{NodeId, RangeRequest};
use aspen_node::Node;

use crate::cluster::Cluster;
use crate::limits::{CONVERGE_KEYS_MAX, CONVERGE_WAIT_MS_MAX, POLL_INTERVAL_MS};

/// Waits, bounded, until some leader's whole log is applied on every member; returns the
/// members (running) or why they never got there.
pub async fn wait(cluster: &Cluster) -> Result<Vec<(NodeId, Node)>, String> {
    let polls = CONVERGE_WAIT_MS_MAX / POLL_INTERVAL_MS;
    let mut last_problem = String::from("never polled");
    for _ in 0..polls {
        match converged(cluster) {
            Ok(members) => return Ok(members),
            Err(problem) => last_problem = problem,
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
    Err(format!(
        "no convergence within {CONVERGE_WAIT_MS_MAX}ms of healing: {last_problem}"
    ))
}

fn converged(cluster: &Cluster) -> Result<Vec<(NodeId, Node)>, String> {
    let (leader_id, leader) = cluster.leader().ok_or("no leader")?;
    let leader_metrics = leader.raft_metrics();
    let last_log = leader_metrics.last_log_index.unwrap_or(0);
    let members: BTreeSet<NodeId> = leader.members().iter().map(|m| m.id).collect();
    let mut replicas = Vec::new();
    for id in members {
        let node = cluster
            .node(id)
            .ok_or(format!("member {id} is not running"))?;
        let metrics = node.raft_metrics();
        let applied = metrics.last_applied.as_ref().map_or(0, |l| l.index);
        if applied != last_log || metrics.current_leader != Some(leader_id) {
            return Err(format!(
                "member {id} applied {applied} of leader {leader_id}'s {last_log} (sees leader {:?})",
                metrics.current_leader
            ));
        }
        replicas.push((id, node));
    }
    Ok(replicas)
}

type Image = (u64, Vec<KeyValue>);

fn image(node: &Node) -> Result<Image, String> {
    let request = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        limit: CONVERGE_KEYS_MAX,
        serializable: true,
        ..RangeRequest::default()
    };
    let (result, revision) = node
        .reader()
        .range(&request)
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if result.more {
        return Err(format!("more than {CONVERGE_KEYS_MAX} keys"));
    }
    Ok((revision, result.kvs))
}

/// Compares every replica's whole key space and revision with the first's. Returns the
/// common revision, or the differences.
pub fn compare(replicas: &[(NodeId, Node)]) -> Result<u64, Vec<String>> {
    let mut images = Vec::new();
    for (id, node) in replicas {
        match image(node) {
            Ok(image) => images.push((*id, image)),
            Err(e) => return Err(vec![format!("node {id}: reading its state: {e}")]),
        }
    }
    let Some((first_id, (first_revision, first_kvs))) = images.first().cloned() else {
        return Err(vec!["no replicas to compare".to_string()]);
    };
    let mut problems = Vec::new();
    for (id, (revision, kvs)) in &images[1..] {
        if *revision != first_revision {
            problems.push(format!(
                "node {id} is at revision {revision}, node {first_id} at {first_revision}"
            ));
        }
        if *kvs != first_kvs {
            problems.push(format!(
                "node {id} holds {kvs:?}, node {first_id} holds {first_kvs:?}"
            ));
        }
    }
    if problems.is_empty() {
        Ok(first_revision)
    } else {
        Err(problems)
    }
}
