//! The nemesis: while clients run, it partitions the network (symmetric, asymmetric, or the
//! leader alone), makes it lossy, slow, reordering and duplicating, crashes and restarts
//! nodes from their durable bytes, jumps the clock, forces snapshots, and changes the
//! membership, fails a node's next fsync, fills and frees its disk, crashes a node mid-
//! writeback (some unsynced pages kept), one action at a time, every choice drawn from its
//! own generator. At the end it heals everything, so the run can check that the cluster
//! converges.

use std::collections::BTreeSet;
use std::time::Duration;

use aspen_core::NodeId;
use aspen_node::ForwardRequest;

use crate::cluster::{Cluster, node_info};
use crate::limits::{
    CLOCK_JUMP_MS_MAX, DISK_FAULT_ACTIONS_PERCENT, FORWARD_TIMEOUT_MS, NEMESIS_ACTIONS_MAX,
    NEMESIS_STEP_MS_MAX, NEMESIS_STEP_MS_MIN, NET_DELAY_MS_MAX, NET_DUPLICATE_PPM_MAX,
    NET_LOSS_PPM_MAX, NET_SPIKE_PPM_MAX,
};
use crate::net::NetFaults;
use crate::rng::SimRng;

/// Fewest voters the nemesis leaves when it removes one.
const VOTERS_MIN: usize = 3;

pub struct Nemesis {
    cluster: Cluster,
    rng: SimRng,
    /// Nodes that were never founders and may join through a membership change.
    spares: Vec<NodeId>,
    /// Nodes removed from the membership; never re-added (a removed member's data is stale).
    removed: BTreeSet<NodeId>,
    /// What it did, in words, for the report.
    pub log: Vec<String>,
    /// Restarts that failed: a node that cannot reopen its own durable bytes is a bug.
    pub failures: Vec<String>,
    /// Crash at most this many nodes at once, so that a majority can make progress.
    crashed_max: usize,
    /// The planted disk bug: a failing fsync reports success (`SimDisk::fail_next_sync`).
    pub lying_fsync: bool,
}

impl Nemesis {
    pub fn new(cluster: Cluster, rng: SimRng, spares: Vec<NodeId>, crashed_max: usize) -> Nemesis {
        Nemesis {
            cluster,
            rng,
            spares,
            removed: BTreeSet::new(),
            log: Vec::new(),
            failures: Vec::new(),
            crashed_max,
            lying_fsync: false,
        }
    }

    fn note(&mut self, action: String) {
        let now_ms = self.cluster.net().now_ms();
        let word = crate::trace::hash_bytes(action.as_bytes());
        self.cluster
            .net()
            .record(&[5, word], || format!("nemesis: {action}"));
        self.log.push(format!("{now_ms:>7}ms {action}"));
    }

    /// Acts until `until_ms` of simulated time, at most `NEMESIS_ACTIONS_MAX` times.
    pub async fn run(&mut self, until_ms: u64) {
        for _ in 0..NEMESIS_ACTIONS_MAX {
            let pause_ms = self.rng.between(NEMESIS_STEP_MS_MIN, NEMESIS_STEP_MS_MAX);
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            if self.cluster.net().now_ms() >= until_ms {
                return;
            }
            self.act().await;
        }
    }

    async fn act(&mut self) {
        if self.rng.below(100) < DISK_FAULT_ACTIONS_PERCENT {
            return self.disk_fault();
        }
        match self.rng.below(100) {
            0..12 => self.partition_halves(),
            12..20 => self.partition_one_way(),
            20..30 => self.isolate_leader(),
            30..42 => self.heal_partitions(),
            42..54 => self.chaos(),
            54..60 => self.calm(),
            60..70 => self.crash_one(),
            70..80 => self.restart_one().await,
            80..85 => self.clock_jump().await,
            85..92 => self.snapshot_one(),
            _ => self.change_membership(),
        }
    }

    fn partition_halves(&mut self) {
        let ids = self.cluster.ids();
        let mut side_a = BTreeSet::new();
        for &id in &ids {
            if self.rng.below(2) == 0 {
                side_a.insert(id);
            }
        }
        if side_a.is_empty() || side_a.len() == ids.len() {
            side_a = BTreeSet::from([*self.rng.pick(&ids)]);
        }
        let mut faults = self.cluster.net().faults();
        for &a in &side_a {
            for &b in ids.iter().filter(|b| !side_a.contains(b)) {
                faults.blocked.insert((a, b));
                faults.blocked.insert((b, a));
            }
        }
        faults.blocked_refuses = self.rng.below(2) == 0;
        self.cluster.net().set_faults(faults);
        self.note(format!("partition {side_a:?} | rest"));
    }

    fn partition_one_way(&mut self) {
        let ids = self.cluster.ids();
        let from = *self.rng.pick(&ids);
        let mut faults = self.cluster.net().faults();
        let mut cut = Vec::new();
        for &to in ids.iter().filter(|&&to| to != from) {
            if self.rng.below(2) == 0 {
                faults.blocked.insert((from, to));
                cut.push(to);
            }
        }
        self.cluster.net().set_faults(faults);
        self.note(format!("one-way: {from} cannot reach {cut:?}"));
    }

    fn isolate_leader(&mut self) {
        let Some((leader, _)) = self.cluster.leader() else {
            self.note("isolate leader: no leader".to_string());
            return;
        };
        let mut faults = self.cluster.net().faults();
        for other in self.cluster.ids().into_iter().filter(|&o| o != leader) {
            faults.blocked.insert((leader, other));
            faults.blocked.insert((other, leader));
        }
        self.cluster.net().set_faults(faults);
        self.note(format!("isolate leader {leader}"));
    }

    fn heal_partitions(&mut self) {
        let mut faults = self.cluster.net().faults();
        faults.blocked.clear();
        self.cluster.net().set_faults(faults);
        self.note("heal partitions".to_string());
    }

    fn chaos(&mut self) {
        let mut faults = self.cluster.net().faults();
        // Each draw is at most its u32 bound.
        let ppm = |rng: &mut SimRng, max: u32| {
            u32::try_from(rng.below(u64::from(max) + 1)).unwrap_or(max)
        };
        faults.loss_ppm = ppm(&mut self.rng, NET_LOSS_PPM_MAX);
        faults.duplicate_ppm = ppm(&mut self.rng, NET_DUPLICATE_PPM_MAX);
        faults.spike_ppm = ppm(&mut self.rng, NET_SPIKE_PPM_MAX);
        faults.delay_ms_max = self.rng.between(NET_DELAY_MS_MAX / 2, NET_DELAY_MS_MAX * 4);
        let (loss, dup, spike, delay) = (
            faults.loss_ppm,
            faults.duplicate_ppm,
            faults.spike_ppm,
            faults.delay_ms_max,
        );
        self.cluster.net().set_faults(faults);
        self.note(format!(
            "chaos: loss {loss}ppm dup {dup}ppm spikes {spike}ppm delay<={delay}ms"
        ));
    }

    fn calm(&mut self) {
        let mut faults = self.cluster.net().faults();
        faults.loss_ppm = 0;
        faults.duplicate_ppm = 0;
        faults.spike_ppm = 0;
        faults.delay_ms_max = NET_DELAY_MS_MAX;
        self.cluster.net().set_faults(faults);
        self.note("calm network".to_string());
    }

    fn crash_one(&mut self) {
        if self.cluster.crashed().len() >= self.crashed_max {
            return self.note("crash: enough nodes down".to_string());
        }
        let running: Vec<NodeId> = self.cluster.running().iter().map(|(id, _)| *id).collect();
        if running.is_empty() {
            return;
        }
        let id = *self.rng.pick(&running);
        if self.rng.below(2) == 0 {
            self.cluster.crash(id);
            self.note(format!("crash {id}"));
        } else {
            let rng = &mut self.rng;
            self.cluster.crash_torn(id, &mut || rng.below(2) == 0);
            self.note(format!(
                "crash {id} mid-writeback (torn: some unsynced pages kept)"
            ));
        }
    }

    /// A disk fault on a running node: its next fsync fails, its disk fills up, or every
    /// full disk gets space back. The supervisor (`supervisor.rs`) checks that a node that hit
    /// one stops, and restarts it once its disk has room.
    fn disk_fault(&mut self) {
        let running: Vec<NodeId> = self.cluster.running().iter().map(|(id, _)| *id).collect();
        if running.is_empty() {
            return;
        }
        let id = *self.rng.pick(&running);
        let Some(disks) = self.cluster.disks(id) else {
            return;
        };
        match self.rng.below(3) {
            0 => {
                let (disk, file) = match self.rng.below(3) {
                    0 => (&disks.journal, "log journal"),
                    1 => (&disks.log, "log"),
                    _ => (&disks.state, "state"),
                };
                disk.fail_next_sync(self.lying_fsync);
                self.note(format!("the next fsync of {id}'s {file} file fails"));
            }
            1 => {
                disks.fill();
                self.note(format!("disk full on {id}"));
            }
            _ => {
                self.free_disks();
                self.note("disk space freed everywhere".to_string());
            }
        }
    }

    fn free_disks(&self) {
        for id in self.cluster.ids() {
            if let Some(disks) = self.cluster.disks(id) {
                disks.free();
            }
        }
    }

    async fn restart_one(&mut self) {
        // A node on a full disk stays down until space is freed (its supervisor waits too).
        let crashed: Vec<NodeId> = self
            .cluster
            .crashed()
            .into_iter()
            .filter(|id| self.cluster.disks(*id).is_some_and(|d| !d.is_full()))
            .collect();
        if crashed.is_empty() {
            return;
        }
        let id = *self.rng.pick(&crashed);
        match self.cluster.start(id).await {
            Ok(()) => self.note(format!("restart {id}")),
            Err(e) => {
                self.failures
                    .push(format!("restart of node {id} failed: {e}"));
                self.note(format!("restart {id} FAILED: {e}"));
            }
        }
    }

    /// Jumps the one simulated clock every node shares: every timer that was due in the gap
    /// fires at once, as after a VM pause of the whole cluster.
    async fn clock_jump(&mut self) {
        let jump_ms = self.rng.between(100, CLOCK_JUMP_MS_MAX);
        self.note(format!("clock jumps {jump_ms}ms"));
        // tokio's paused clock fires the due timers as it advances; madsim's `advance` is
        // synchronous and expires them at once, their tasks run when this one yields.
        #[cfg(not(madsim))]
        tokio::time::advance(Duration::from_millis(jump_ms)).await;
        #[cfg(madsim)]
        {
            tokio::time::advance(Duration::from_millis(jump_ms));
            tokio::task::yield_now().await;
        }
    }

    fn snapshot_one(&mut self) {
        let running = self.cluster.running();
        if running.is_empty() {
            return;
        }
        let (id, node) = self.rng.pick(&running).clone();
        tokio::spawn(async move {
            let _ = node.raft().trigger().snapshot().await;
        });
        self.note(format!("snapshot on {id}"));
    }

    /// Adds a spare (as a voter, or as a learner promoted by a later action), or removes a
    /// voter while enough remain. The change runs in its own task: under faults it may take
    /// long or fail, and the nemesis goes on.
    fn change_membership(&mut self) {
        let (Some(voters), Some(members)) = (self.cluster.voters(), self.cluster.members()) else {
            return self.note("membership: no leader".to_string());
        };
        let running = self.cluster.running();
        if running.is_empty() {
            return;
        }
        let (via, node) = self.rng.pick(&running).clone();
        let usable = |id: &NodeId| !self.removed.contains(id);
        let joinable = self
            .spares
            .iter()
            .copied()
            .filter(|id| !members.contains(id) && usable(id));
        let learner = self
            .spares
            .iter()
            .copied()
            .find(|id| members.contains(id) && !voters.contains(id) && usable(id));
        let request = if let Some(id) = joinable.min() {
            ForwardRequest::AddMember {
                id,
                info: node_info(id),
                learner: self.rng.below(2) == 0,
            }
        } else if let Some(id) = learner {
            ForwardRequest::PromoteMember { id }
        } else if voters.len() > VOTERS_MIN {
            let candidates: Vec<NodeId> = voters.iter().copied().collect();
            let id = *self.rng.pick(&candidates);
            self.removed.insert(id);
            ForwardRequest::RemoveMember { id }
        } else {
            return self.note("membership: nothing to change".to_string());
        };
        self.note(format!("membership via {via}: {request:?}"));
        let net = self.cluster.net().clone();
        tokio::spawn(async move {
            let timeout = Duration::from_millis(FORWARD_TIMEOUT_MS * 2);
            let result = tokio::time::timeout(timeout, node.change_membership(request)).await;
            let outcome = match result {
                Ok(Ok(())) => "done".to_string(),
                Ok(Err(e)) => format!("failed: {e}"),
                Err(_) => "timed out".to_string(),
            };
            let word = crate::trace::hash_bytes(outcome.as_bytes());
            net.record(&[6, word], || format!("membership change {outcome}"));
        });
    }

    /// Ends every fault: the network is whole and calm, every crashed node restarts.
    pub async fn heal(&mut self) {
        self.cluster.net().set_faults(NetFaults::default());
        self.free_disks();
        for id in self.cluster.crashed() {
            match self.cluster.start(id).await {
                Ok(()) => self.note(format!("heal: restart {id}")),
                Err(e) => {
                    self.failures
                        .push(format!("restart of node {id} failed: {e}"));
                    self.note(format!("heal: restart {id} FAILED: {e}"));
                }
            }
        }
        self.note("healed".to_string());
    }

    pub fn removed(&self) -> &BTreeSet<NodeId> {
        &self.removed
    }
}
