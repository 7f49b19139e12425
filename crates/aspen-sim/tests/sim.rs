//! A small fixed set of seeds, run on every `cargo test`: they must pass, a seed must replay
//! exactly, and the checkers must catch the planted bugs (stale reads, a lost watch event, a
//! lease expiry that deletes its keys apart, a watcher that resumes past a compaction, a node
//! that carries on after a failed fsync). Longer sweeps run from the binary
//! (`cargo run -p aspen-sim --release -- --seeds 0..300`).

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use aspen_sim::{SeedReport, SimConfig, run_seed};

/// Shorter than the binary's default fault phase, to keep `cargo test` (debug) quick.
const TEST_FAULT_PHASE_MS: u64 = 8_000;
const TEST_HEALED_PHASE_MS: u64 = 2_000;

fn config(seed: u64) -> SimConfig {
    SimConfig {
        fault_phase_ms: TEST_FAULT_PHASE_MS,
        healed_phase_ms: TEST_HEALED_PHASE_MS,
        ..SimConfig::new(seed)
    }
}

fn describe_failure(report: &SeedReport) -> String {
    format!(
        "{}\nfailures:\n{}\nnemesis:\n{}\nreplay: {}",
        report.summary(),
        report.failures.join("\n"),
        report.nemesis_log.join("\n"),
        report.config.replay_command()
    )
}

#[test]
fn fixed_seeds_pass_on_three_and_five_nodes() {
    for (seed, nodes) in [(11, 3), (12, 5), (13, 3)] {
        let config = SimConfig {
            nodes: Some(nodes),
            ..config(seed)
        };
        let report = run_seed(&config);
        assert!(report.passed(), "{}", describe_failure(&report));
        assert_eq!(report.founders, nodes);
        assert!(
            report.ops_completed > 0,
            "seed {seed}: no client request completed: {}",
            report.summary()
        );
        assert!(report.converged_revision.is_some());
        assert!(
            report.watchers > 0 && report.watch_events > 0,
            "seed {seed}: the watchers saw nothing: {}",
            report.summary()
        );
        assert!(
            report.leases_granted > 0 && report.leases_revoked_with_keys > 0,
            "seed {seed}: no lease was granted, or none revoked with its keys: {}",
            report.summary()
        );
        assert!(
            report.compactions_acked > 0,
            "seed {seed}: nothing was compacted: {}",
            report.summary()
        );
    }
}

#[test]
fn a_seed_replays_exactly() {
    let first = run_seed(&config(21));
    let second = run_seed(&config(21));
    assert!(first.passed(), "{}", describe_failure(&first));
    assert!(first.trace_events > 100, "too short a run to mean anything");
    assert_eq!(
        (first.trace_hash, first.trace_events),
        (second.trace_hash, second.trace_events),
        "seed 21 ran differently twice:\n{}\n{}",
        first.summary(),
        second.summary()
    );
    assert_eq!(first.ops_completed, second.ops_completed);
    assert_eq!(first.nemesis_log, second.nemesis_log);
    assert_eq!(first.converged_revision, second.converged_revision);
    let other = run_seed(&config(22));
    assert_ne!(
        first.trace_hash, other.trace_hash,
        "different seeds, same run"
    );
}

/// madsim's own check, on top of the trace hash: two runs of one seed make the same random
/// draws, in the same order (every scheduling choice, timer jitter and `getrandom`).
#[cfg(madsim)]
#[test]
fn madsim_draws_the_same_randomness_twice() {
    let report = madsim::runtime::Runtime::check_determinism(21, madsim::Config::default(), || {
        aspen_sim::runner::run_inside_madsim(config(21))
    });
    assert!(report.passed(), "{}", describe_failure(&report));
}

/// Seeds tried with the planted bug before the test gives up on the checkers.
const PLANTED_BUG_SEEDS: u64 = 8;

#[test]
fn the_checkers_catch_reads_without_read_index() {
    let caught = (0..PLANTED_BUG_SEEDS).find_map(|seed| {
        let config = SimConfig {
            unsafe_local_reads: true,
            ..config(seed)
        };
        let report = run_seed(&config);
        (!report.passed()).then_some(report)
    });
    let report = caught.unwrap_or_else(|| {
        panic!("stale local reads went unnoticed for seeds 0..{PLANTED_BUG_SEEDS}")
    });
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.starts_with("not linearizable")),
        "caught, but not by the linearizability check: {:?}",
        report.failures
    );
}

/// Seeds tried with a watcher that loses an event before the test gives up on the watch check.
/// A watcher loses its `WATCH_DROPPED_EVENT_INDEX`th event, so any seed whose first watcher
/// receives more events than that (every seed so far) must fail.
const DROPPED_WATCH_EVENT_SEEDS: u64 = 4;

#[test]
fn the_watch_check_catches_a_lost_event() {
    let caught = (0..DROPPED_WATCH_EVENT_SEEDS).find_map(|seed| {
        let config = SimConfig {
            drop_watch_event: true,
            ..config(seed)
        };
        let report = run_seed(&config);
        (!report.passed()).then_some(report)
    });
    let report = caught.unwrap_or_else(|| {
        panic!("a lost watch event went unnoticed for seeds 0..{DROPPED_WATCH_EVENT_SEEDS}")
    });
    assert!(
        report.failures.iter().any(|f| f.starts_with("watch gap")),
        "caught, but not as a watch gap: {:?}",
        report.failures
    );
    assert!(
        report
            .failures
            .iter()
            .all(|f| f.starts_with("watch gap") || f.starts_with("watch: watcher 1:")),
        "the lost event made other checks fail too: {:?}",
        report.failures
    );
}

/// Seeds tried with the planted lease bug (an expiry deletes one of its lease's keys in a
/// revision of its own) before the test gives up on the lease check.
const SPLIT_LEASE_EXPIRY_SEEDS: u64 = 8;

#[test]
fn the_lease_check_catches_an_expiry_that_deletes_its_keys_apart() {
    let caught = (0..SPLIT_LEASE_EXPIRY_SEEDS).find_map(|seed| {
        let config = SimConfig {
            split_lease_expiry: true,
            ..config(seed)
        };
        let report = run_seed(&config);
        (!report.passed()).then_some(report)
    });
    let report = caught.unwrap_or_else(|| {
        panic!("a split lease expiry went unnoticed for seeds 0..{SPLIT_LEASE_EXPIRY_SEEDS}")
    });
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.starts_with("lease: revoking lease") && f.contains("were attached to it")),
        "caught, but not by the lease check: {:?}",
        report.failures
    );
}

/// Seeds tried with the planted compaction bug (a watcher cancelled as compacted resumes one
/// revision past the compact revision) before the test gives up: only seeds where a watcher
/// comes back below a compaction can show it.
const RESUME_PAST_COMPACTION_SEEDS: u64 = 24;

#[test]
fn the_watch_check_catches_a_resume_past_the_compact_revision() {
    let caught = (0..RESUME_PAST_COMPACTION_SEEDS).find_map(|seed| {
        let config = SimConfig {
            resume_past_compaction: true,
            ..config(seed)
        };
        let report = run_seed(&config);
        (!report.passed()).then_some(report)
    });
    let report = caught.unwrap_or_else(|| {
        panic!(
            "a watcher resuming past a compaction went unnoticed for seeds \
             0..{RESUME_PAST_COMPACTION_SEEDS}"
        )
    });
    assert!(
        report.watch_compacted > 0,
        "failed without a compacted watch: {:?}",
        report.failures
    );
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.starts_with("watch gap: watcher") && f.contains("as compacted")),
        "caught, but not as a watch gap across compaction: {:?}",
        report.failures
    );
}

/// Seeds tried with the planted disk bug (an fsync the nemesis fails reports success, so the
/// node carries on as if its writes were durable) before the test gives up: only seeds where
/// the nemesis fails an fsync and the node then syncs can show it.
const LYING_FSYNC_SEEDS: u64 = 24;

#[test]
fn the_disk_fault_check_catches_a_node_that_carries_on_after_a_failed_fsync() {
    let caught = (0..LYING_FSYNC_SEEDS).find_map(|seed| {
        let config = SimConfig {
            lying_fsync: true,
            ..config(seed)
        };
        let report = run_seed(&config);
        (!report.passed()).then_some(report)
    });
    let report = caught.unwrap_or_else(|| {
        panic!("a node carrying on after a failed fsync went unnoticed for seeds 0..{LYING_FSYNC_SEEDS}")
    });
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.starts_with("supervisor:") && f.contains("carries on")),
        "caught, but not by the disk-fault check: {:?}",
        report.failures
    );
}
