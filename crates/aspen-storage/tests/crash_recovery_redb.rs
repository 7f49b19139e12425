//! Crash recovery on the redb backend, with real process kills.
//!
//! The test binary re-executes itself: the child (`crash_recovery_child`, active only when
//! `ASPEN_CRASH_CHILD_DIR` is set) appends batches of Put entries durably, reports each one on
//! stdout once its flush callback fired, applies it, and now and then snapshots and purges. The
//! parent (`crash_recovery_redb`) SIGKILLs the child at a random moment, reopens the file and
//! checks that nothing reported durable was lost and that no batch is half there, neither in
//! the log nor in the state machine.
//!
//! The log and the state machine are two databases, durable on their own schedules (format 2).
//! Children alternate between two roles:
//! - a *leader* applies a batch only after its log flush, as a leader applies committed entries;
//! - a *follower* applies a batch as soon as it is appended, before its log flush (an entry the
//!   leader committed can be applied before this node's own copy is durable), and makes the
//!   state machine durable right then, so a kill often lands with the state machine durably
//!   ahead of the durable log. Its recovery does what openraft's `get_initial_state` does:
//!   purges the log up to the applied index. The parent asserts that this case happened.
//!
//! Batch sizes come from a seeded plan both processes compute, so the parent knows exactly
//! which log indices and keys each batch owns. `ASPEN_CRASH_SEED=<printed seed>` replays a
//! run's batch sizes and kill delays; where each kill lands still depends on the scheduler.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aspen_core::limits::{LOG_READ_ENTRIES_MAX, Limits};
use aspen_core::type_config::alias::{Entry, LogId};
use aspen_core::{Command, PutRequest, RangeRequest, TypeConfig};
use aspen_storage::{LogStore, RepairedOnOpen, StateMachine, StorageBackend, open_storage};
use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, RaftLogReader, RaftSnapshotBuilder};

const CHILD_DIR_ENV: &str = "ASPEN_CRASH_CHILD_DIR";
const SEED_ENV: &str = "ASPEN_CRASH_SEED";
/// `leader` or `follower`: see the module documentation.
const ROLE_ENV: &str = "ASPEN_CRASH_ROLE";
const STORAGE_DIR_NAME: &str = "node";

/// Kill cycles the parent must complete.
const CYCLES_MIN: u32 = 25;
/// Wall-clock budget for all cycles; the test fails if it ends before `CYCLES_MIN`.
const TEST_BUDGET_MS_MAX: u64 = 90_000;
/// How long the child runs before the kill, drawn uniformly from this range.
const KILL_AFTER_MS_MIN: u64 = 50;
const KILL_AFTER_MS_MAX: u64 = 400;
/// Longest wait for a child to finish recovery and report READY.
const CHILD_READY_MS_MAX: u64 = 30_000;
/// A child whose parent vanished stops by itself after this long.
const CHILD_LIFETIME_MS_MAX: u64 = 30_000;
/// Largest batch the child appends; sizes are drawn from 1..=BATCH_ENTRIES_MAX.
const BATCH_ENTRIES_MAX: u64 = 64;
/// The child snapshots and purges once this many batches sit in the log.
const SNAPSHOT_EVERY_BATCHES: u64 = 20;
/// Upper bound on the plan, far above what 90 s can write.
const PLAN_BATCHES_MAX: u64 = 10_000_000;
/// Leader term and node of every entry: one node, one term.
const TERM: u64 = 1;
const NODE_ID: u64 = 1;
/// How long a follower child holds its log flush back after making its state machine durable.
const FOLLOWER_LOG_LAG_MS: u64 = 5;
/// The signal `Child::kill` sends on unix.
const SIGKILL: i32 = 9;
/// Revisions between the child's background checkpoints of the key index (the default is at
/// least 262,144, beyond what a child writes): kills land before, during and after them.
const INDEX_CHECKPOINT_REVISIONS: u64 = 256;
/// The checkpoint's file in the storage dir, its unfinished copy, and where its revision is
/// (after the 8-byte magic, little-endian): `aspen-storage` `index_checkpoint.rs`.
const INDEX_CHECKPOINT_FILE: &str = "key_index.ckpt";
const INDEX_CHECKPOINT_TEMP_FILE: &str = "key_index.ckpt.tmp";
const INDEX_CHECKPOINT_REVISION_AT: usize = 8;

/// The seeded batch layout: batch `b` owns log indices `start(b)..=end(b)`; index 1 is the first.
struct Plan {
    seed: u64,
    /// `ends[b]`: the last log index of batch `b`.
    ends: Vec<u64>,
}

impl Plan {
    fn new(seed: u64) -> Plan {
        Plan {
            seed,
            ends: Vec::new(),
        }
    }

    fn size(&self, batch: u64) -> u64 {
        1 + splitmix64(self.seed ^ batch.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % BATCH_ENTRIES_MAX
    }

    fn extend_to_batch(&mut self, batch: u64) {
        assert!(batch < PLAN_BATCHES_MAX, "plan bound exceeded");
        while self.ends.len() as u64 <= batch {
            let next = self.ends.len() as u64;
            let previous_end = self.ends.last().copied().unwrap_or(0);
            self.ends.push(previous_end + self.size(next));
        }
    }

    fn end(&mut self, batch: u64) -> u64 {
        self.extend_to_batch(batch);
        self.ends[usize::try_from(batch).expect("a batch index")]
    }

    fn start(&mut self, batch: u64) -> u64 {
        if batch == 0 {
            1
        } else {
            self.end(batch - 1) + 1
        }
    }

    /// The batch holding log `index` (>= 1) and the entry's offset within it.
    fn locate(&mut self, index: u64) -> (u64, u64) {
        assert!(index >= 1, "log indices start at 1");
        while self.ends.last().is_none_or(|&end| end < index) {
            self.extend_to_batch(self.ends.len() as u64);
        }
        let batch = self.ends.partition_point(|&end| end < index) as u64;
        (batch, index - self.start(batch))
    }

    /// The batch whose last entry is `index`; `None` when `index` is inside a batch.
    fn batch_ending_at(&mut self, index: u64) -> Option<u64> {
        let (batch, _) = self.locate(index);
        (self.end(batch) == index).then_some(batch)
    }

    /// Batches wholly at or below `index` (which must be a batch end or 0).
    fn batches_through(&mut self, index: u64) -> u64 {
        if index == 0 {
            return 0;
        }
        let batch = self
            .batch_ending_at(index)
            .unwrap_or_else(|| panic!("index {index} splits a batch"));
        batch + 1
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn key_of(batch: u64, offset: u64) -> String {
    format!("b{batch}-{offset}")
}

fn value_of(index: u64) -> String {
    format!("v{index}")
}

fn parse_key(key: &[u8]) -> (u64, u64) {
    let text = std::str::from_utf8(key).expect("key is utf-8");
    let rest = text.strip_prefix('b').expect("key starts with b");
    let (batch, offset) = rest.split_once('-').expect("key has a dash");
    (
        batch.parse().expect("batch number"),
        offset.parse().expect("offset"),
    )
}

fn log_id(index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(TERM, NODE_ID, index)
}

fn batch_entries(plan: &mut Plan, batch: u64) -> Vec<Entry> {
    let start = plan.start(batch);
    (0..plan.size(batch))
        .map(|offset| openraft::Entry {
            log_id: log_id(start + offset),
            payload: EntryPayload::Normal(Command::Put(PutRequest {
                key: key_of(batch, offset).into_bytes(),
                value: value_of(start + offset).into_bytes(),
                ..Default::default()
            })),
        })
        .collect()
}

fn index_of(log_id: &Option<LogId>) -> u64 {
    log_id.as_ref().map_or(0, |id| id.index)
}

/// Reads log entries `first..=last`, in chunks of at most `LOG_READ_ENTRIES_MAX`.
async fn read_log(log: &mut LogStore, first: u64, last: u64) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut next = first;
    while next <= last {
        let chunk = log
            .try_get_log_entries(next..=last)
            .await
            .expect("read log entries");
        assert!(!chunk.is_empty(), "log ends at {next}, expected {last}");
        assert!(chunk.len() as u64 <= LOG_READ_ENTRIES_MAX);
        next += chunk.len() as u64;
        entries.extend(chunk);
    }
    entries
}

// ---------------------------------------------------------------------------------------------
// Child
// ---------------------------------------------------------------------------------------------

/// The child's body; a no-op in a normal test run.
#[test]
fn crash_recovery_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let seed: u64 = std::env::var(SEED_ENV)
        .expect("child needs a seed")
        .parse()
        .expect("seed is a u64");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let follower = match std::env::var(ROLE_ENV).as_deref() {
        Ok("follower") => true,
        Ok("leader") => false,
        other => panic!("child needs {ROLE_ENV}=leader|follower, got {other:?}"),
    };
    runtime.block_on(child_main(
        PathBuf::from(dir).join(STORAGE_DIR_NAME),
        seed,
        follower,
    ));
}

/// Writes one line to stdout; false when the parent has gone (the pipe is closed).
fn report(line: &str) -> bool {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").is_ok() && out.flush().is_ok()
}

async fn child_main(path: PathBuf, seed: u64, follower: bool) {
    let started = Instant::now();
    let mut plan = Plan::new(seed);
    let backend = StorageBackend::Redb { dir: path };
    let limits = Limits {
        index_checkpoint_revisions: Some(INDEX_CHECKPOINT_REVISIONS),
        ..Limits::default()
    };
    let (mut log, mut sm) = open_storage(&backend, limits).expect("child: open");
    // A follower's append must wait in the writer's queue (below), not commit inline.
    log.set_appends_inline(!follower);
    let next_batch = child_recover(&mut plan, &mut log, &mut sm).await;
    if !report(&format!("READY {next_batch}")) {
        return;
    }
    for batch in next_batch..PLAN_BATCHES_MAX {
        if started.elapsed() > Duration::from_millis(CHILD_LIFETIME_MS_MAX) {
            return;
        }
        let entries = batch_entries(&mut plan, batch);
        let last = entries.last().expect("batches are not empty").log_id;
        let (tx, rx) = TypeConfig::oneshot();
        log.append(entries.clone(), IOFlushed::signal(tx))
            .await
            .expect("child: append");
        if follower {
            // Applied and durable in the state machine before the log flush below.
            sm.apply_entries(&entries).expect("child: apply");
            sm.store()
                .make_state_durable()
                .expect("child: state durable");
            // A slow log disk: the writer (a task on this thread) cannot commit during this
            // blocking pause, so a kill often lands with the state machine durably ahead.
            std::thread::sleep(Duration::from_millis(FOLLOWER_LOG_LAG_MS));
        }
        rx.await
            .expect("child: flush callback dropped")
            .expect("child: flush failed");
        if !report(&format!("DURABLE {batch} {}", last.index)) {
            return;
        }
        if !follower {
            sm.apply_entries(&entries).expect("child: apply");
        }
        log.save_committed(Some(last)).await.expect("child: commit");
        child_maybe_snapshot(&mut plan, &mut log, &mut sm).await;
    }
}

/// Applies what the log holds beyond the state machine, batch by batch as first written, and
/// returns the next batch to append.
async fn child_recover(plan: &mut Plan, log: &mut LogStore, sm: &mut StateMachine) -> u64 {
    let (applied, _) = sm.applied_state().await.expect("child: applied state");
    let mut state = log.get_log_state().await.expect("child: log state");
    if index_of(&applied) > index_of(&state.last_log_id) {
        // As openraft's startup: the state machine is ahead of the durable log (a follower
        // applied entries before its own copy was durable), so the log restarts after it.
        log.purge(applied.expect("applied beyond the log"))
            .await
            .expect("child: purge to applied");
        state = log.get_log_state().await.expect("child: log state");
        // openraft then rebuilds the snapshot, which no longer covers the purged log.
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("child: rebuild snapshot");
    }
    let last = index_of(&state.last_log_id);
    let next_batch = plan.batches_through(last);
    let mut batch = plan.batches_through(index_of(&applied));
    while batch < next_batch {
        let (start, end) = (plan.start(batch), plan.end(batch));
        let entries = read_log(log, start, end).await;
        sm.apply_entries(&entries).expect("child: re-apply");
        batch += 1;
    }
    if last > 0 {
        log.save_committed(Some(log_id(last)))
            .await
            .expect("child: commit");
    }
    child_maybe_snapshot(plan, log, sm).await;
    next_batch
}

async fn child_maybe_snapshot(plan: &mut Plan, log: &mut LogStore, sm: &mut StateMachine) {
    let state = log.get_log_state().await.expect("child: log state");
    let in_log = plan.batches_through(index_of(&state.last_log_id))
        - plan.batches_through(index_of(&state.last_purged_log_id));
    if in_log < SNAPSHOT_EVERY_BATCHES {
        return;
    }
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("child: build snapshot");
    let upto = snapshot
        .meta
        .last_log_id
        .expect("child: snapshot of an applied store");
    log.purge(upto).await.expect("child: purge");
}

// ---------------------------------------------------------------------------------------------
// Parent
// ---------------------------------------------------------------------------------------------

/// What the parent knows across cycles.
#[derive(Default)]
struct History {
    /// Highest batch any child reported durable.
    reported_batch_max: Option<u64>,
    last_log_index: u64,
    applied_index: u64,
    kills_before_ready: u32,
    /// Kills after which the state machine was durably ahead of the durable log.
    state_ahead_of_log: u32,
    /// The revision of the key index checkpoint the last reopen left (its close writes one).
    checkpoint_revision: u64,
    /// Kills after which the child's own background checkpoint was there to reopen from.
    reopened_from_child_checkpoint: u32,
    /// Kills that left an unfinished checkpoint file (a kill during its write).
    torn_checkpoints: u32,
}

/// Kills the child if the parent panics, so no writer outlives the test.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn crash_recovery_redb() {
    if std::env::var_os(CHILD_DIR_ENV).is_some() {
        return; // Inside a child: only `crash_recovery_child` runs.
    }
    let seed: u64 = match std::env::var(SEED_ENV) {
        Ok(text) => text.parse().expect("ASPEN_CRASH_SEED is a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(aspen_core::convert::nanos)
            .expect("clock after 1970"),
    };
    eprintln!("crash_recovery_redb: seed {seed} (replay with {SEED_ENV}={seed})");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut plan = Plan::new(seed);
    let mut rng = splitmix64(seed ^ 0x5eed);
    let mut history = History::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let mut cycles: u32 = 0;
    while cycles < CYCLES_MIN && started.elapsed() < Duration::from_millis(TEST_BUDGET_MS_MAX) {
        rng = splitmix64(rng);
        let kill_after_ms = KILL_AFTER_MS_MIN + rng % (KILL_AFTER_MS_MAX - KILL_AFTER_MS_MIN + 1);
        // Every fourth child is killed on a timer from its start, so recovery itself (the
        // re-apply and the snapshot it may take) is interrupted too.
        let timer_from_spawn = cycles % 4 == 3;
        let follower = cycles % 2 == 1;
        let lines = run_child_once(dir.path(), seed, kill_after_ms, timer_from_spawn, follower);
        let reported = check_reported_lines(&mut plan, &lines, &mut history);
        runtime.block_on(verify_store(dir.path(), &mut plan, &mut history, follower));
        eprintln!(
            "cycle {cycles} ({}): killed after {kill_after_ms} ms, {reported} batches reported, \
             log ends at {}, applied {}",
            if follower { "follower" } else { "leader" },
            history.last_log_index,
            history.applied_index
        );
        cycles += 1;
    }
    let elapsed = started.elapsed();
    println!(
        "crash_recovery_redb: {cycles} cycles in {:.1} s, {} batches durable ({} entries), \
         {} kills before READY, {} kills with the state machine durably ahead of the log, \
         {} reopens from a child's own key index checkpoint, {} kills during a checkpoint's \
         write, seed {seed}",
        elapsed.as_secs_f64(),
        plan.batches_through(history.last_log_index),
        history.last_log_index,
        history.kills_before_ready,
        history.state_ahead_of_log,
        history.reopened_from_child_checkpoint,
        history.torn_checkpoints,
    );
    assert!(
        history.reopened_from_child_checkpoint > 0,
        "no reopen found a checkpoint the child wrote in the background: not exercised"
    );
    assert!(
        history.state_ahead_of_log > 0,
        "no kill left the state machine ahead of the log: the follower case was not exercised"
    );
    assert!(
        cycles >= CYCLES_MIN,
        "only {cycles} cycles in {TEST_BUDGET_MS_MAX} ms"
    );
    assert!(
        history.reported_batch_max.is_some(),
        "no child ever reported a durable batch"
    );
}

/// Spawns a child, lets it run, SIGKILLs it; returns every line it printed.
fn run_child_once(
    dir: &Path,
    seed: u64,
    kill_after_ms: u64,
    timer_from_spawn: bool,
    follower: bool,
) -> Vec<String> {
    let exe = std::env::current_exe().expect("test binary path");
    let child = Process::new(exe)
        .args([
            "--exact",
            "crash_recovery_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .env(SEED_ENV, seed.to_string())
        .env(ROLE_ENV, if follower { "follower" } else { "leader" })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let mut guard = ChildGuard(child);
    let stdout = guard.0.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    let spawned = Instant::now();
    let kill_after = Duration::from_millis(kill_after_ms);
    let mut deadline = if timer_from_spawn {
        Some(spawned + kill_after)
    } else {
        None
    };
    loop {
        let wait = match deadline {
            Some(at) => at.saturating_duration_since(Instant::now()),
            None => Duration::from_millis(CHILD_READY_MS_MAX)
                .saturating_sub(spawned.elapsed())
                .max(Duration::from_millis(1)),
        };
        match rx.recv_timeout(wait) {
            Ok(line) => {
                if deadline.is_none() && line.contains("READY ") {
                    deadline = Some(Instant::now() + kill_after);
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                assert!(
                    deadline.is_some(),
                    "child did not report READY within {CHILD_READY_MS_MAX} ms"
                );
                if deadline.is_some_and(|at| Instant::now() >= at) {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = guard.0.wait().expect("wait for child");
                panic!("child exited by itself before the kill: {status}; lines: {lines:?}");
            }
        }
    }
    guard.0.kill().expect("SIGKILL child");
    let status = guard.0.wait().expect("wait for child");
    // Lines written before the kill are still in the pipe; each was durable when printed.
    lines.extend(rx.iter());
    reader.join().expect("stdout reader thread");
    assert_eq!(
        status.signal(),
        Some(SIGKILL),
        "child ended otherwise than by our SIGKILL: {status}"
    );
    lines
}

/// Checks the child's report against the plan; returns how many batches it reported.
fn check_reported_lines(plan: &mut Plan, lines: &[String], history: &mut History) -> u64 {
    let mut expected_next: Option<u64> = None;
    let mut reported: u64 = 0;
    for line in lines {
        // libtest prints "test crash_recovery_child ... " without a newline before READY.
        let line = line.find("READY ").map_or(line.as_str(), |at| &line[at..]);
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["READY", next] => {
                let next: u64 = next.parse().expect("READY batch");
                // Every batch reported before must be there; unreported ones may be too.
                if let Some(max) = history.reported_batch_max {
                    assert!(next > max, "child resumed at {next}, but {max} was durable");
                }
                expected_next = Some(next);
            }
            ["DURABLE", batch, last_index] => {
                let batch: u64 = batch.parse().expect("DURABLE batch");
                let last_index: u64 = last_index.parse().expect("DURABLE index");
                assert_eq!(Some(batch), expected_next, "batches reported out of order");
                assert_eq!(last_index, plan.end(batch), "child and parent plans differ");
                expected_next = Some(batch + 1);
                history.reported_batch_max = Some(batch);
                reported += 1;
            }
            _ => {} // libtest's own output
        }
    }
    if expected_next.is_none() {
        history.kills_before_ready += 1;
    }
    reported
}

/// Reopens the killed child's storage and checks every invariant a crash must keep.
async fn verify_store(dir: &Path, plan: &mut Plan, history: &mut History, follower: bool) {
    let path = dir.join(STORAGE_DIR_NAME);
    if path.join(INDEX_CHECKPOINT_TEMP_FILE).exists() {
        history.torn_checkpoints += 1;
    }
    if checkpoint_revision(&path) > history.checkpoint_revision {
        history.reopened_from_child_checkpoint += 1;
    }
    let backend = StorageBackend::Redb { dir: path.clone() };
    let (mut log, mut sm) = open_storage(&backend, Limits::default())
        .unwrap_or_else(|e| panic!("{} does not reopen after a kill: {e}", path.display()));
    // Every durable commit records redb's allocator state, so no kill leaves a file that redb
    // must walk whole to rebuild it.
    assert_eq!(
        sm.store().repaired_on_open(),
        RepairedOnOpen::default(),
        "redb repaired a database after a kill"
    );

    let state = log.get_log_state().await.expect("log state");
    let purged = index_of(&state.last_purged_log_id);
    let last = index_of(&state.last_log_id);
    assert!(purged <= last, "purged {purged} beyond the log end {last}");
    assert!(
        last == 0 || plan.batch_ending_at(last).is_some(),
        "the log ends inside a batch at {last}: a half-written append"
    );
    assert!(
        purged == 0 || plan.batch_ending_at(purged).is_some(),
        "the purge point {purged} is inside a batch"
    );
    if let Some(max) = history.reported_batch_max {
        let end = plan.end(max);
        assert!(
            end <= last,
            "batch {max} (to {end}) was durable; log ends at {last}"
        );
    }
    assert!(
        last >= history.last_log_index,
        "log end went back from {} to {last}",
        history.last_log_index
    );
    verify_log_entries(&mut log, plan, purged, last).await;

    let applied = verify_state_machine(&mut sm, plan).await;
    if applied > last {
        assert!(
            follower,
            "a leader's state machine at {applied} is ahead of its durable log at {last}"
        );
        history.state_ahead_of_log += 1;
    }
    assert!(
        applied >= purged,
        "purged {purged} beyond the applied {applied}"
    );
    assert!(
        applied >= history.applied_index,
        "applied went back from {} to {applied}: rolled back past a durable commit",
        history.applied_index
    );
    verify_snapshot(&mut sm, &path, purged, applied).await;

    history.last_log_index = last;
    history.applied_index = applied;
    drop((log, sm)); // closes the database before the next child opens it
    // The close wrote a checkpoint at the store's revision (one per applied put, plus one).
    history.checkpoint_revision = checkpoint_revision(&path);
    assert_eq!(history.checkpoint_revision, 1 + applied);
}

/// The revision of the key index checkpoint in the storage dir; 0 without one.
fn checkpoint_revision(storage_dir: &Path) -> u64 {
    let Ok(bytes) = std::fs::read(storage_dir.join(INDEX_CHECKPOINT_FILE)) else {
        return 0;
    };
    let at = INDEX_CHECKPOINT_REVISION_AT;
    let revision = bytes
        .get(at..at + 8)
        .and_then(|field| <[u8; 8]>::try_from(field).ok())
        .expect("a checkpoint is renamed into place whole: its header is there");
    u64::from_le_bytes(revision)
}

/// Every index from the purge point to the end is there, once, holding the plan's key.
async fn verify_log_entries(log: &mut LogStore, plan: &mut Plan, purged: u64, last: u64) {
    let entries = read_log(log, purged + 1, last).await;
    assert_eq!(entries.len() as u64, last - purged, "log not contiguous");
    for (expected_index, entry) in (purged + 1..).zip(&entries) {
        assert_eq!(entry.log_id.index, expected_index, "log not contiguous");
        let (batch, offset) = plan.locate(expected_index);
        match &entry.payload {
            EntryPayload::Normal(Command::Put(put)) => {
                assert_eq!(put.key, key_of(batch, offset).into_bytes());
                assert_eq!(put.value, value_of(expected_index).into_bytes());
            }
            other => panic!("unexpected payload at {expected_index}: {other:?}"),
        }
    }
}

/// The applied state covers whole batches and the keys are exactly those of the applied
/// batches; returns the last applied index.
async fn verify_state_machine(sm: &mut StateMachine, plan: &mut Plan) -> u64 {
    let reader = sm.reader();
    let state = reader.applied_state().expect("applied state");
    let applied = index_of(&state.last_applied);
    assert!(
        applied == 0 || plan.batch_ending_at(applied).is_some(),
        "applied index {applied} is inside a batch: half a batch applied"
    );
    assert_eq!(state.revision, 1 + applied, "revision != 1 + applied puts");
    let all_keys = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    let (result, revision) = reader
        .range(&all_keys)
        .expect("range read")
        .expect("range request");
    assert_eq!(revision, state.revision);
    assert_eq!(result.count, applied, "applied puts != keys in the store");
    assert_eq!(result.kvs.len() as u64, applied);
    // Keys map one-to-one to indices, so `applied` distinct keys all at or below `applied` are
    // exactly the keys of batches 0..=batch_of(applied): every batch whole or absent.
    for kv in &result.kvs {
        let (batch, offset) = parse_key(&kv.key);
        assert!(
            offset < plan.size(batch),
            "key {batch}-{offset} outside its batch"
        );
        let index = plan.start(batch) + offset;
        assert!(
            index <= applied,
            "key of index {index} present; applied {applied}"
        );
        assert_eq!(kv.value, value_of(index).into_bytes());
        assert_eq!(kv.mod_revision, index + 1);
        assert_eq!(kv.create_revision, index + 1);
        assert_eq!(kv.version, 1);
    }
    applied
}

/// A purged log is covered by a snapshot that reads back whole and installs into a fresh store
/// with the state it claims.
async fn verify_snapshot(sm: &mut StateMachine, db_path: &Path, purged: u64, applied: u64) {
    let snapshot = sm.get_current_snapshot().await.expect("current snapshot");
    let snapshot_files = count_snapshot_files(db_path);
    let Some(snapshot) = snapshot else {
        assert_eq!(purged, 0, "log purged to {purged} without a snapshot");
        assert_eq!(snapshot_files, 0, "snapshot files left without a snapshot");
        return;
    };
    // A snapshot point has no file; a written snapshot (none here: nothing sends one) has one.
    assert!(
        snapshot_files <= 1,
        "{snapshot_files} snapshot files: at most the current written one remains"
    );
    let covered = index_of(&snapshot.meta.last_log_id);
    // A snapshot covers the purged log, except when a kill fell between a recovery's purge to
    // the applied index (state machine ahead of the log) and its snapshot rebuild: then the
    // durable state machine covers it (asserted by the caller), and the next start rebuilds.
    assert!(
        covered >= purged || applied >= purged,
        "snapshot at {covered} does not cover purged {purged}, nor does applied {applied}"
    );
    assert!(
        covered <= applied,
        "snapshot at {covered} beyond applied {applied}"
    );
    // What a leader does for a follower: write the point's data now, from the state it holds.
    let data = snapshot
        .snapshot
        .materialized()
        .expect("write the snapshot's data");
    aspen_storage::snapshot::verify(&data).expect("snapshot reads back whole");
    let (_log, fresh) =
        open_storage(&StorageBackend::InMemory, Limits::default()).expect("fresh store");
    fresh
        .install(&snapshot.meta, &data)
        .expect("install snapshot");
    let state = fresh.reader().applied_state().expect("installed state");
    assert_eq!(state.last_applied, snapshot.meta.last_log_id);
    assert_eq!(state.revision, 1 + covered);
    let count_all = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        count_only: true,
        ..Default::default()
    };
    let (result, _) = fresh
        .reader()
        .range(&count_all)
        .expect("range read")
        .expect("range request");
    assert_eq!(
        result.count, covered,
        "snapshot holds a different key count"
    );
}

fn count_snapshot_files(storage_dir: &Path) -> usize {
    match std::fs::read_dir(storage_dir.join(aspen_storage::SNAPSHOT_DIR_NAME)) {
        Ok(entries) => entries.filter(|e| e.is_ok()).count(),
        Err(_) => 0,
    }
}
