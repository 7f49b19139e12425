//! One seed, start to finish: draw the scenario, start the cluster, run clients and the
//! nemesis, heal, wait for convergence, check every invariant, and report.
//!
//! The whole run happens on the calling thread, on a simulated clock: time only moves when
//! every task waits, and then straight to the next timer. So a run costs the work it does, not
//! the simulated seconds it covers, and with every random choice drawn from the seed (the
//! simulator's, openraft's and, under madsim, the scheduler's), a seed replays exactly.
//!
//! Two executors, one run: built with `RUSTFLAGS="--cfg madsim"` (the documented sweep and
//! CI), each seed runs in a `madsim::runtime::Runtime` seeded with the seed (madsim's
//! executor, which polls ready tasks in a seeded random order, its clock and its RNG); in a
//! plain build (what `cargo test --workspace` can run), in a single-threaded tokio runtime
//! with a paused clock.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aspen_check::KvHistory;
use aspen_core::NodeId;
use aspen_node::{RaftTiming, TestingOptions};
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::compactor::{CompactLog, SharedTap, lock_tap, run_compactor};
use crate::faults::Nemesis;
use crate::history::HistoryTap;
use crate::invariants::{convergence, durability, leases, linearizable, revision, watch};
use crate::leases::{LeaseLog, run_lease_client};
use crate::limits::{
    CLIENT_TIMEOUT_MS, CLIENTS_MAX, CLIENTS_MIN, ELECTION_TIMEOUT_MS, FAULT_PHASE_MS,
    FIRST_LEADER_WAIT_MS_MAX, HEALED_PHASE_MS, HEARTBEAT_INTERVAL_MS, LEASE_CLIENTS_MAX,
    LEASE_CLIENTS_MIN, LEASE_DRAIN_WAIT_MS_MAX, MONITOR_INTERVAL_MS, POLL_INTERVAL_MS,
    SNAPSHOT_COUNT_MAX, SNAPSHOT_COUNT_MIN, WATCH_CATCH_UP_WAIT_MS_MAX, WATCHERS_MAX, WATCHERS_MIN,
};
use crate::net::SimNet;
use crate::rng::SimRng;
use crate::supervisor::run_supervisor;
use crate::watchers::{WatchLog, WatcherSetup, run_watcher};
use crate::workload::{SharedRecorder, run_client};

/// The executor this build runs seeds on.
pub const EXECUTOR: &str = if cfg!(madsim) {
    "madsim"
} else {
    "tokio, paused clock (build with RUSTFLAGS=\"--cfg madsim\" for madsim)"
};

/// What to run. Everything not fixed here is drawn from the seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    pub seed: u64,
    /// Founding voters: 3 or 5; `None` draws it from the seed.
    pub nodes: Option<u64>,
    /// The planted bug: linearizable reads skip the ReadIndex barrier.
    pub unsafe_local_reads: bool,
    /// The planted watch bug: watcher 1 loses one event from its stream.
    pub drop_watch_event: bool,
    /// The planted lease bug (in the node's lessor): an expiry deletes one attached key in a
    /// revision of its own before revoking the lease.
    pub split_lease_expiry: bool,
    /// The planted compaction bug: a watcher cancelled as compacted resumes one revision past
    /// the compact revision.
    pub resume_past_compaction: bool,
    /// The planted disk bug: an fsync the nemesis fails drops its pages but reports success,
    /// so the node carries on as if they were durable.
    pub lying_fsync: bool,
    pub fault_phase_ms: u64,
    pub healed_phase_ms: u64,
}

impl SimConfig {
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            nodes: None,
            unsafe_local_reads: false,
            drop_watch_event: false,
            split_lease_expiry: false,
            resume_past_compaction: false,
            lying_fsync: false,
            fault_phase_ms: FAULT_PHASE_MS,
            healed_phase_ms: HEALED_PHASE_MS,
        }
    }

    /// The command line that replays this configuration, on the executor this build runs
    /// (a seed runs differently on madsim and on the paused tokio runtime).
    pub fn replay_command(&self) -> String {
        let build = if cfg!(madsim) {
            "RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target/sim "
        } else {
            ""
        };
        let mut command = format!(
            "{build}cargo run -p aspen-sim --release -- --seed {}",
            self.seed
        );
        if let Some(nodes) = self.nodes {
            command.push_str(&format!(" --nodes {nodes}"));
        }
        if self.unsafe_local_reads {
            command.push_str(" --unsafe-local-reads");
        }
        if self.drop_watch_event {
            command.push_str(" --drop-watch-event");
        }
        if self.split_lease_expiry {
            command.push_str(" --split-lease-expiry");
        }
        if self.resume_past_compaction {
            command.push_str(" --resume-past-compaction");
        }
        if self.lying_fsync {
            command.push_str(" --lying-fsync");
        }
        if self.fault_phase_ms != FAULT_PHASE_MS {
            command.push_str(&format!(" --fault-ms {}", self.fault_phase_ms));
        }
        if self.healed_phase_ms != HEALED_PHASE_MS {
            command.push_str(&format!(" --healed-ms {}", self.healed_phase_ms));
        }
        command
    }
}

/// What one seed did and found.
#[derive(Debug, Clone)]
pub struct SeedReport {
    pub config: SimConfig,
    pub founders: u64,
    pub snapshot_count: u64,
    pub clients: u64,
    pub watchers: u64,
    /// Events the watchers received, over all of them.
    pub watch_events: u64,
    /// Watches the watchers opened, over all of them (the first ones and every resume).
    pub watch_attaches: u64,
    /// Watches the hubs cancelled as compacted (each followed by a resume).
    pub watch_compacted: u64,
    pub lease_clients: u64,
    pub leases_granted: u64,
    /// Leases whose attached keys the history shows deleted (by revocation or expiry).
    pub leases_revoked_with_keys: u64,
    pub lease_revokes_acked: u64,
    pub compactions_acked: u64,
    /// Nodes the supervisor found stopped after a disk fault (and restarted).
    pub disk_fault_stops: u64,
    /// Every invariant violation (or harness failure), in words; empty on a pass.
    pub failures: Vec<String>,
    /// Hash of the ordered network deliveries and client results: equal for equal runs.
    pub trace_hash: u64,
    pub trace_events: u64,
    pub trace_tail: Vec<String>,
    pub nemesis_log: Vec<String>,
    pub ops_completed: u64,
    pub ops_indeterminate: u64,
    pub writes_indeterminate: u64,
    pub acked_writes: u64,
    pub restarts: u32,
    pub simulated_ms: u64,
    pub net: crate::net::NetStats,
    pub converged_revision: Option<u64>,
}

impl SeedReport {
    fn new(config: &SimConfig) -> SeedReport {
        SeedReport {
            config: config.clone(),
            founders: 0,
            snapshot_count: 0,
            clients: 0,
            watchers: 0,
            watch_events: 0,
            watch_attaches: 0,
            watch_compacted: 0,
            lease_clients: 0,
            leases_granted: 0,
            leases_revoked_with_keys: 0,
            lease_revokes_acked: 0,
            compactions_acked: 0,
            disk_fault_stops: 0,
            failures: Vec::new(),
            trace_hash: 0,
            trace_events: 0,
            trace_tail: Vec::new(),
            nemesis_log: Vec::new(),
            ops_completed: 0,
            ops_indeterminate: 0,
            writes_indeterminate: 0,
            acked_writes: 0,
            restarts: 0,
            simulated_ms: 0,
            net: Default::default(),
            converged_revision: None,
        }
    }

    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// One line for a seed sweep.
    pub fn summary(&self) -> String {
        format!(
            "seed {} ({} nodes, snapshot every {}, {} clients, {} watchers, {} lease clients): {} ops ok, {} indeterminate \
             ({} writes), {} watch events ({} watches opened, {} cancelled as compacted), {} leases granted ({} revoked with keys, \
             {} revokes acked), {} compactions acked, {} stops after disk faults, {} restarts, {} msgs ({} lost, {} dup, {} snapshots delivered), {} simulated ms, \
             trace {:016x}",
            self.config.seed,
            self.founders,
            self.snapshot_count,
            self.clients,
            self.watchers,
            self.lease_clients,
            self.ops_completed,
            self.ops_indeterminate,
            self.writes_indeterminate,
            self.watch_events,
            self.watch_attaches,
            self.watch_compacted,
            self.leases_granted,
            self.leases_revoked_with_keys,
            self.lease_revokes_acked,
            self.compactions_acked,
            self.disk_fault_stops,
            self.restarts,
            self.net.sent,
            self.net.lost,
            self.net.duplicated,
            self.net.arrived_by_kind[crate::net::MsgKind::Snapshot as usize],
            self.simulated_ms,
            self.trace_hash,
        )
    }
}

/// The per-seed choices, drawn before anything runs.
struct Scenario {
    founders: Vec<NodeId>,
    spares: Vec<NodeId>,
    snapshot_count: u64,
    clients: u64,
    watchers: u64,
    lease_clients: u64,
}

fn draw_scenario(config: &SimConfig, rng: &mut SimRng) -> Scenario {
    let founders = config
        .nodes
        .unwrap_or(if rng.below(2) == 0 { 3 } else { 5 });
    assert!(founders == 3 || founders == 5, "3 or 5 founding nodes");
    Scenario {
        founders: (1..=founders).collect(),
        spares: vec![founders + 1],
        snapshot_count: rng.between(SNAPSHOT_COUNT_MIN, SNAPSHOT_COUNT_MAX),
        clients: rng.between(CLIENTS_MIN, CLIENTS_MAX),
        watchers: rng.between(WATCHERS_MIN, WATCHERS_MAX),
        lease_clients: rng.between(LEASE_CLIENTS_MIN, LEASE_CLIENTS_MAX),
    }
}

/// Runs one seed on this thread and returns its report.
pub fn run_seed(config: &SimConfig) -> SeedReport {
    // openraft's election timeouts are drawn through this thread's seeded generator.
    aspen_core::runtime::seed_thread_rng(config.seed ^ 0x5EED_0FA5_BE4A_1700);
    let dir = run_dir(config.seed);
    // madsim does not catch a task's panic (it ends `block_on`), nor a run where every task
    // waits and no timer is set: either fails the seed, with the panic's message.
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        block_on_simulated(config.seed, run(config.clone(), dir.clone()))
    }));
    aspen_core::runtime::unseed_thread_rng();
    let _ = std::fs::remove_dir_all(&dir);
    let (mut report, history) = outcome.unwrap_or_else(|panic| {
        let mut report = SeedReport::new(config);
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or(panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        report
            .failures
            .push(format!("the simulation panicked: {message}"));
        (report, None)
    });
    // Checked here, outside the simulation: the checker's time budget is wall-clock time,
    // and madsim's clock (which `Instant::now` reads inside it) stands still while it runs.
    if let Some(history) = history {
        report.failures.extend(linearizable::check(&history));
    }
    report
}

/// Runs a scripted scenario (a test's own sequence of faults, not a drawn one) on the same
/// simulated executor a seed runs on, with openraft's random draws seeded from `seed`.
pub fn run_script<F: Future>(seed: u64, script: F) -> F::Output {
    aspen_core::runtime::seed_thread_rng(seed ^ 0x5EED_0FA5_BE4A_1700);
    let output = block_on_simulated(seed, script);
    aspen_core::runtime::unseed_thread_rng();
    output
}

/// One seed's run for a madsim runtime the caller built and entered (madsim's own
/// determinism check, `Runtime::check_determinism`, runs it twice and compares every random
/// draw). Seeds openraft's generator on this thread; checks everything but linearizability.
#[cfg(madsim)]
pub async fn run_inside_madsim(config: SimConfig) -> SeedReport {
    aspen_core::runtime::seed_thread_rng(config.seed ^ 0x5EED_0FA5_BE4A_1700);
    let dir = run_dir(config.seed);
    let (report, _history) = run(config, dir.clone()).await;
    aspen_core::runtime::unseed_thread_rng();
    let _ = std::fs::remove_dir_all(&dir);
    report
}

/// Runs `future` to completion on a paused-clock, single-threaded tokio runtime.
#[cfg(not(madsim))]
fn block_on_simulated<F: Future>(_seed: u64, future: F) -> F::Output {
    #[allow(
        clippy::expect_used,
        reason = "no simulation runs without its runtime: the sweep reports the seed's panic"
    )]
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds");
    let output = runtime.block_on(future);
    // Dropping the runtime drops every task still parked (crashed nodes' leftovers included).
    drop(runtime);
    output
}

/// Runs `future` to completion on a madsim runtime seeded with `seed`: madsim's executor
/// (ready tasks polled in a seeded random order), clock and random numbers.
#[cfg(madsim)]
fn block_on_simulated<F: Future>(seed: u64, future: F) -> F::Output {
    let runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    let output = runtime.block_on(future);
    // Dropping the runtime drops every task still parked (crashed nodes' leftovers included).
    drop(runtime);
    output
}

/// A fresh real directory for the run's snapshot files.
fn run_dir(seed: u64) -> PathBuf {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("aspen-sim-{}-{seed}-{run}", std::process::id()))
}

/// The run and, when it got that far, the clients' history (checked by the caller).
async fn run(config: SimConfig, dir: PathBuf) -> (SeedReport, Option<KvHistory>) {
    let started = Instant::now();
    let mut rng = SimRng::new(config.seed);
    let scenario = draw_scenario(&config, &mut rng);
    let net = SimNet::new(rng.fork());
    let timing = RaftTiming {
        heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS,
        election_timeout_ms: ELECTION_TIMEOUT_MS,
        snapshot_count: scenario.snapshot_count,
    };
    let testing = TestingOptions {
        unsafe_local_reads_for_testing: config.unsafe_local_reads,
        split_lease_expiry_for_testing: config.split_lease_expiry,
    };
    let all: Vec<NodeId> = scenario
        .founders
        .iter()
        .chain(&scenario.spares)
        .copied()
        .collect();
    let cluster = Cluster::new(net.clone(), dir, timing, testing, &all);
    let mut report = SeedReport {
        founders: scenario.founders.len() as u64,
        snapshot_count: scenario.snapshot_count,
        clients: scenario.clients,
        watchers: scenario.watchers,
        lease_clients: scenario.lease_clients,
        ..SeedReport::new(&config)
    };
    let mut history = None;
    if let Err(e) = boot(&cluster, &scenario.founders).await {
        report.failures.push(e);
    } else {
        history = Some(exercise(&config, &scenario, &cluster, &mut rng, &mut report).await);
    }
    let trace = net.trace();
    report.trace_hash = trace.hash();
    report.trace_events = trace.events();
    report.trace_tail = trace.tail().cloned().collect();
    report.restarts = cluster.restarts();
    report.net = net.stats();
    report.simulated_ms = aspen_core::convert::millis(started.elapsed());
    // The router holds every running node, and every node holds the router (its transport):
    // take them off it, or the whole cluster (disks included) outlives the run.
    for id in cluster.ids() {
        let _ = net.take_down(id);
    }
    (report, history)
}

/// Starts every node, initializes the founders and waits for the first leader.
async fn boot(cluster: &Cluster, founders: &[NodeId]) -> Result<(), String> {
    for id in cluster.ids() {
        cluster.start(id).await?;
    }
    cluster.initialize(founders).await?;
    for _ in 0..FIRST_LEADER_WAIT_MS_MAX / POLL_INTERVAL_MS {
        if cluster.leader().is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
    Err(format!(
        "no leader within {FIRST_LEADER_WAIT_MS_MAX}ms of a fault-free start"
    ))
}

/// Clients and faults, then healing, convergence and the checks but linearizability: returns
/// the clients' history for that one.
async fn exercise(
    config: &SimConfig,
    scenario: &Scenario,
    cluster: &Cluster,
    rng: &mut SimRng,
    report: &mut SeedReport,
) -> KvHistory {
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let recorder = SharedRecorder::default();
    let run_ms = config.fault_phase_ms + config.healed_phase_ms;
    let monitor = spawn_monitor(cluster.net().clone(), stop.clone(), run_ms);
    let mut clients = Vec::new();
    for client_id in 1..=scenario.clients {
        let task = run_client(
            client_id,
            cluster.clone(),
            recorder.clone(),
            stop.clone(),
            rng.fork(),
            started,
        );
        clients.push(tokio::spawn(task));
    }
    // Watchers run until every one has caught up after convergence, or the wait ends.
    let watch_stop = Arc::new(AtomicBool::new(false));
    let mut watchers = Vec::new();
    for watcher_id in 1..=scenario.watchers {
        let covered = Arc::new(AtomicU64::new(0));
        let setup = WatcherSetup {
            watcher_id,
            cluster: cluster.clone(),
            rng: rng.fork(),
            stop: watch_stop.clone(),
            covered: covered.clone(),
            drop_one_event: config.drop_watch_event && watcher_id == 1,
            resume_past_compaction: config.resume_past_compaction,
        };
        watchers.push((covered, tokio::spawn(run_watcher(setup))));
    }
    let mut lease_clients = Vec::new();
    for client_id in 1..=scenario.lease_clients {
        let task = run_lease_client(client_id, cluster.clone(), stop.clone(), rng.fork());
        lease_clients.push(tokio::spawn(task));
    }
    let tap: SharedTap = Arc::new(std::sync::Mutex::new(HistoryTap::new()));
    let compactor = tokio::spawn(run_compactor(
        cluster.clone(),
        stop.clone(),
        rng.fork(),
        tap.clone(),
    ));
    let supervisor_stop = Arc::new(AtomicBool::new(false));
    let supervisor = tokio::spawn(run_supervisor(cluster.clone(), supervisor_stop.clone()));
    let crashed_max = (scenario.founders.len() - 1) / 2;
    let mut nemesis = Nemesis::new(
        cluster.clone(),
        rng.fork(),
        scenario.spares.clone(),
        crashed_max,
    );
    nemesis.lying_fsync = config.lying_fsync;
    let fault_end_ms = cluster.net().now_ms() + config.fault_phase_ms;
    nemesis.run(fault_end_ms).await;
    nemesis.heal().await;
    tokio::time::sleep(Duration::from_millis(config.healed_phase_ms)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        if client.await.is_err() {
            report.failures.push("a client task panicked".to_string());
        }
    }
    let mut lease_logs = Vec::new();
    for client in lease_clients {
        match client.await {
            Ok(log) => lease_logs.push(log),
            Err(_) => report
                .failures
                .push("a lease client task panicked".to_string()),
        }
    }
    let compact_log = compactor.await.unwrap_or_else(|_| {
        report.failures.push("the compactor panicked".to_string());
        CompactLog::default()
    });
    // Every lease left is one nobody keeps alive: each must expire (bounded), and none may
    // write while the replicas are compared.
    if let Err(e) = drain_leases(cluster).await {
        report.failures.push(e);
    }
    let replicas = convergence::wait(cluster).await;
    let watch_logs = stop_watchers(&replicas, watchers, watch_stop, report).await;
    supervisor_stop.store(true, Ordering::Relaxed);
    match supervisor.await {
        Ok(log) => {
            report.disk_fault_stops = log.stops_after_disk_fault;
            report.failures.extend(log.failures);
            if log.failures_more > 0 {
                report
                    .failures
                    .push(format!("supervisor: {} more failures", log.failures_more));
            }
        }
        Err(_) => report.failures.push("the supervisor panicked".to_string()),
    }
    let monitor = match monitor.await {
        Ok(monitor) => monitor,
        Err(_) => {
            report
                .failures
                .push("the revision monitor panicked".to_string());
            revision::RevisionMonitor::default()
        }
    };
    report.nemesis_log = std::mem::take(&mut nemesis.log);
    report.failures.extend(nemesis.failures.iter().cloned());
    let checked = Checked {
        watch_logs,
        lease_logs,
        compact_log,
        tap: std::mem::take(&mut *lock_tap(&tap)),
    };
    check_all(report, &recorder, &monitor, replicas, checked)
}

/// Waits (bounded) until no lease is left: the lease clients have stopped, so every lease
/// left must expire on the leader's lessor.
async fn drain_leases(cluster: &Cluster) -> Result<(), String> {
    let mut left = 0;
    for _ in 0..LEASE_DRAIN_WAIT_MS_MAX / POLL_INTERVAL_MS {
        if let Some((_, leader)) = cluster.leader() {
            match leader.reader().leases() {
                Ok(leases) if leases.is_empty() => return Ok(()),
                Ok(leases) => left = leases.len(),
                Err(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
    Err(format!(
        "lease: {left} leases nobody keeps alive were still there {LEASE_DRAIN_WAIT_MS_MAX} ms \
         after the clients stopped (expiry never came)"
    ))
}

/// What the run's observers recorded, for the checks.
struct Checked {
    watch_logs: Vec<WatchLog>,
    lease_logs: Vec<LeaseLog>,
    compact_log: CompactLog,
    tap: HistoryTap,
}

/// Gives the watchers (bounded) time to cover the converged revision, then stops them and
/// returns what they saw.
async fn stop_watchers(
    replicas: &Result<Vec<(NodeId, aspen_node::Node)>, String>,
    watchers: Vec<(Arc<AtomicU64>, tokio::task::JoinHandle<WatchLog>)>,
    stop: Arc<AtomicBool>,
    report: &mut SeedReport,
) -> Vec<WatchLog> {
    let target = replicas
        .as_ref()
        .ok()
        .and_then(|replicas| replicas.first())
        .and_then(|(_, node)| node.reader().applied_state().ok())
        .map(|state| state.revision);
    if let Some(target) = target {
        for _ in 0..WATCH_CATCH_UP_WAIT_MS_MAX / POLL_INTERVAL_MS {
            if watchers
                .iter()
                .all(|(covered, _)| covered.load(Ordering::Relaxed) >= target)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for (_, watcher) in watchers {
        match watcher.await {
            Ok(log) => logs.push(log),
            Err(_) => report.failures.push("a watcher task panicked".to_string()),
        }
    }
    logs
}

fn spawn_monitor(
    net: SimNet,
    stop: Arc<AtomicBool>,
    run_ms: u64,
) -> tokio::task::JoinHandle<revision::RevisionMonitor> {
    tokio::spawn(async move {
        let mut monitor = revision::RevisionMonitor::default();
        // Bounded well past the run's end (clients' last requests, clock jumps).
        let samples_max = 2 * (run_ms + CLIENT_TIMEOUT_MS) / MONITOR_INTERVAL_MS;
        for _ in 0..samples_max {
            monitor.sample(&net);
            if stop.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(MONITOR_INTERVAL_MS)).await;
        }
        monitor
    })
}

fn check_all(
    report: &mut SeedReport,
    recorder: &SharedRecorder,
    monitor: &revision::RevisionMonitor,
    replicas: Result<Vec<(NodeId, aspen_node::Node)>, String>,
    checked: Checked,
) -> KvHistory {
    let Checked {
        watch_logs,
        lease_logs,
        compact_log,
        mut tap,
    } = checked;
    report.watch_events = watch_logs.iter().map(|log| log.received).sum();
    report.watch_attaches = watch_logs.iter().map(|log| log.attaches).sum();
    report.watch_compacted = watch_logs.iter().map(|log| log.compacted_resumes).sum();
    report.leases_granted = lease_logs.iter().map(|log| log.granted).sum();
    report.lease_revokes_acked = lease_logs
        .iter()
        .map(|log| log.acked_revokes.len() as u64)
        .sum();
    report.compactions_acked = compact_log.acked;
    report.failures.extend(compact_log.problems.iter().cloned());
    for log in &lease_logs {
        report.failures.extend(log.unexpected.iter().cloned());
    }
    let recorded = recorder.take();
    report.ops_completed = recorded.completed;
    report.ops_indeterminate = recorded.indeterminate;
    report.writes_indeterminate = recorded.indeterminate_writes;
    report.acked_writes = recorded.acked.len() as u64;
    report.failures.extend(recorded.unexpected.iter().cloned());
    report.failures.extend(monitor.violations.iter().cloned());
    report
        .failures
        .extend(revision::check_acked(&recorded.acked));
    let replicas = match replicas {
        Ok(replicas) => replicas,
        Err(e) => {
            report.failures.push(e);
            return recorded.history;
        }
    };
    match convergence::compare(&replicas) {
        Ok(revision) => {
            report.converged_revision = Some(revision);
            report
                .failures
                .extend(revision::check_final(monitor, revision));
            if let Some((id, node)) = replicas.first() {
                check_histories(
                    report,
                    (*id, node),
                    revision,
                    &mut tap,
                    &watch_logs,
                    &lease_logs,
                    &compact_log,
                );
            }
        }
        Err(problems) => report.failures.extend(problems),
    }
    report
        .failures
        .extend(durability::check(&replicas, &recorded.acked, &tap));
    recorded.history
}

/// Completes the history from a converged replica, then checks the watchers and the leases
/// against it.
fn check_histories(
    report: &mut SeedReport,
    (id, node): (NodeId, &aspen_node::Node),
    revision: u64,
    tap: &mut HistoryTap,
    watch_logs: &[WatchLog],
    lease_logs: &[LeaseLog],
    compact_log: &CompactLog,
) {
    if let Err(e) = tap.capture(node, revision) {
        report.failures.push(format!(
            "history: reading node {id} from revision {} to {revision}: {e}",
            tap.through + 1
        ));
        return;
    }
    let state = match node.reader().applied_state() {
        Ok(state) => state,
        Err(e) => {
            report.failures.push(format!("history: node {id}: {e}"));
            return;
        }
    };
    report.failures.extend(watch::check(
        tap,
        revision,
        &compact_log.requested,
        state.compact_revision,
        watch_logs,
    ));
    match node.reader().leases() {
        Ok(table) => {
            let ids = table.into_iter().map(|(id, _)| id).collect();
            report.failures.extend(leases::check(tap, &ids, lease_logs));
        }
        Err(e) => report
            .failures
            .push(format!("lease: node {id}: reading leases: {e}")),
    }
    report.leases_revoked_with_keys = leases::revoked_with_keys(tap);
}
