//! The nodes of one run: each a real `aspen_node::Node` on its own [`SimDisk`], started,
//! crashed and restarted by the simulator, reachable only through the [`SimNet`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use aspen_core::limits::Limits;
use aspen_core::{NodeId, NodeInfo};
use aspen_node::{Node, NodeOptions, RaftTiming, TestingOptions};
use aspen_storage::{LogJournal, StorageBackend};
use openraft::ServerState;

use crate::disk::NodeDisks;
use crate::net::SimNet;
use crate::transport::SimEndpoint;

struct Slot {
    disk: NodeDisks,
    info: NodeInfo,
    /// The incarnation running now, if any.
    running: Option<Node>,
    restarts: u32,
    /// The disks' `faults_hit` and `failed_syncs` when the running incarnation started.
    faults_at_start: u64,
    failed_syncs_at_start: u64,
    /// A start is under way (the nemesis and the supervisor both restart nodes).
    starting: bool,
}

struct ClusterState {
    slots: BTreeMap<NodeId, Slot>,
}

/// Every node of a run. Cheap to clone; only the nemesis starts and stops nodes.
#[derive(Clone)]
pub struct Cluster {
    net: SimNet,
    /// Real directory for snapshot files (one per node, beside a nominal database path).
    dir: PathBuf,
    timing: RaftTiming,
    testing: TestingOptions,
    state: Arc<Mutex<ClusterState>>,
}

pub fn node_info(id: NodeId) -> NodeInfo {
    NodeInfo {
        name: format!("n{id}"),
        peer_urls: vec![format!("sim://n{id}")],
        client_urls: vec![format!("sim://n{id}/client")],
    }
}

impl Cluster {
    pub fn new(
        net: SimNet,
        dir: PathBuf,
        timing: RaftTiming,
        testing: TestingOptions,
        ids: &[NodeId],
    ) -> Cluster {
        assert!(!ids.is_empty() && ids.len() as u64 <= crate::limits::NODES_MAX);
        let slots = ids
            .iter()
            .map(|&id| {
                let slot = Slot {
                    disk: NodeDisks::new(),
                    info: node_info(id),
                    running: None,
                    restarts: 0,
                    faults_at_start: 0,
                    failed_syncs_at_start: 0,
                    starting: false,
                };
                (id, slot)
            })
            .collect();
        Cluster {
            net,
            dir,
            timing,
            testing,
            state: Arc::new(Mutex::new(ClusterState { slots })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ClusterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn net(&self) -> &SimNet {
        &self.net
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.lock().slots.keys().copied().collect()
    }

    /// Starts `id` on whatever its disk holds: empty at first, the durable bytes after a crash.
    /// A node already running or starting is left alone.
    pub async fn start(&self, id: NodeId) -> Result<(), String> {
        let (disk, info) = {
            let mut state = self.lock();
            let slot = state.slots.get_mut(&id).ok_or(format!("no node {id}"))?;
            if slot.running.is_some() || slot.starting {
                return Ok(());
            }
            slot.starting = true;
            (slot.disk.clone(), slot.info.clone())
        };
        let started = self.start_on(id, disk, info).await;
        let mut state = self.lock();
        let Some(slot) = state.slots.get_mut(&id) else {
            unreachable!("slot checked above");
        };
        slot.starting = false;
        let node = started?;
        slot.running = Some(node);
        slot.faults_at_start = slot.disk.faults_hit();
        slot.failed_syncs_at_start = slot.disk.failed_syncs();
        Ok(())
    }

    async fn start_on(&self, id: NodeId, disk: NodeDisks, info: NodeInfo) -> Result<Node, String> {
        let incarnation = self.net.begin_incarnation(id);
        let endpoint = SimEndpoint {
            net: self.net.clone(),
            id,
            incarnation,
        };
        let dir = self.dir.join(format!("n{id}"));
        let (log_store, state_machine) = aspen_storage::open_storage_with_backends(
            &dir,
            Limits::default(),
            disk.log.attach(),
            // Small, so that runs checkpoint often (every few dozen commits).
            LogJournal::new(disk.journal.attach()).with_bytes(crate::limits::LOG_JOURNAL_BYTES),
            disk.state.attach(),
        )
        .map_err(|e| format!("node {id}: opening storage: {e}"))?;
        let options = NodeOptions {
            id,
            info,
            cluster_id: 1,
            cluster_name: "aspen-sim".to_string(),
            timing: self.timing,
            backend: StorageBackend::InMemory,
            limits: Limits::default(),
        };
        let forwarder = Arc::new(endpoint.clone());
        let node = Node::start_with_storage(
            options,
            log_store,
            state_machine,
            endpoint,
            forwarder,
            self.testing,
        )
        .await
        .map_err(|e| format!("node {id}: start: {e}"))?;
        self.net.set_running(id, incarnation, node.clone());
        Ok(node)
    }

    /// `id`'s disks (they outlive its incarnations).
    pub fn disks(&self, id: NodeId) -> Option<NodeDisks> {
        self.lock().slots.get(&id).map(|slot| slot.disk.clone())
    }

    /// Failed syncs the running incarnation of `id` has hit.
    pub fn failed_syncs_hit(&self, id: NodeId) -> u64 {
        self.lock()
            .slots
            .get(&id)
            .filter(|slot| slot.running.is_some())
            .map_or(0, |slot| {
                slot.disk.failed_syncs() - slot.failed_syncs_at_start
            })
    }

    /// Disk faults (failed syncs, refused growths) the running incarnation of `id` has hit.
    pub fn disk_faults_hit(&self, id: NodeId) -> u64 {
        self.lock()
            .slots
            .get(&id)
            .filter(|slot| slot.running.is_some())
            .map_or(0, |slot| slot.disk.faults_hit() - slot.faults_at_start)
    }

    /// Power loss on `id`: off the network at once, its disk back to the synced bytes, and
    /// its Raft told to stop (its storage already fails, so nothing it does lands anywhere).
    pub fn crash(&self, id: NodeId) {
        self.crash_with(id, None);
    }

    /// As `crash`, but mid-writeback: each unsynced page is kept or lost as `keep` draws.
    pub fn crash_torn(&self, id: NodeId, keep: &mut dyn FnMut() -> bool) {
        self.crash_with(id, Some(keep));
    }

    fn crash_with(&self, id: NodeId, keep: Option<&mut dyn FnMut() -> bool>) {
        let old = self.net.take_down(id);
        let mut state = self.lock();
        let Some(slot) = state.slots.get_mut(&id) else {
            return;
        };
        match keep {
            Some(keep) => {
                slot.disk.crash_torn(keep);
            }
            None => slot.disk.crash(),
        }
        slot.running = None;
        slot.restarts += 1;
        drop(state);
        if let Some(node) = old {
            tokio::spawn(async move {
                let _ = node.shutdown().await;
            });
        }
    }

    pub fn node(&self, id: NodeId) -> Option<Node> {
        self.lock().slots.get(&id).and_then(|s| s.running.clone())
    }

    pub fn running(&self) -> Vec<(NodeId, Node)> {
        self.lock()
            .slots
            .iter()
            .filter_map(|(id, slot)| slot.running.clone().map(|node| (*id, node)))
            .collect()
    }

    pub fn crashed(&self) -> Vec<NodeId> {
        self.lock()
            .slots
            .iter()
            .filter(|(_, slot)| slot.running.is_none() && !slot.starting)
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn restarts(&self) -> u32 {
        self.lock().slots.values().map(|s| s.restarts).sum()
    }

    /// The running node that believes it leads in the highest term, if any.
    pub fn leader(&self) -> Option<(NodeId, Node)> {
        self.running()
            .into_iter()
            .filter(|(_, node)| node.raft_metrics().state == ServerState::Leader)
            .max_by_key(|(id, node)| (node.current_term(), *id))
    }

    /// Voters and learners as the leader last saw them.
    pub fn members(&self) -> Option<BTreeSet<NodeId>> {
        let (_, leader) = self.leader()?;
        Some(leader.members().iter().map(|m| m.id).collect())
    }

    pub fn voters(&self) -> Option<BTreeSet<NodeId>> {
        let (_, leader) = self.leader()?;
        Some(
            leader
                .members()
                .iter()
                .filter(|m| !m.is_learner)
                .map(|m| m.id)
                .collect(),
        )
    }

    /// Initializes the founders as the first voters, from every founder (as the server does).
    pub async fn initialize(&self, founders: &[NodeId]) -> Result<(), String> {
        let members: BTreeMap<NodeId, NodeInfo> =
            founders.iter().map(|&id| (id, node_info(id))).collect();
        for &id in founders {
            let node = self
                .node(id)
                .ok_or(format!("founder {id} is not running"))?;
            node.initialize(members.clone())
                .await
                .map_err(|e| format!("initializing node {id}: {e}"))?;
        }
        Ok(())
    }

    /// Durable bytes per node: the simulated disks' sizes, for the report.
    pub fn disk_summary(&self) -> Vec<(NodeId, u64, u64)> {
        self.lock()
            .slots
            .iter()
            .map(|(id, s)| (*id, s.disk.durable_len_bytes(), s.disk.syncs()))
            .collect()
    }
}
