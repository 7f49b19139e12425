//! The sweep binary: seeds run in worker processes, each failure is printed with its replay
//! line as it happens, and a seed past the memory or time budget fails on its own instead of
//! taking the sweep (or the machine) down.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use std::process::Command;

fn sweep(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_aspen-sim"))
        .args(args)
        .output()
        .expect("the aspen-sim binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_sweep_runs_its_seeds_in_worker_processes() {
    let (code, stdout, stderr) = sweep(&[
        "--seeds",
        "0..3",
        "--seeds-per-worker",
        "2",
        "--fault-ms",
        "2000",
        "--healed-ms",
        "1000",
    ]);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.ends_with("3 passed, 0 failed\n"), "{stdout}");
    assert!(stderr.contains("2 worker processes"), "{stderr}");
    assert!(stderr.contains("seeds/hour"), "{stderr}");
}

#[test]
fn a_seed_past_the_memory_budget_fails_with_its_replay_line_and_the_sweep_goes_on() {
    let (code, stdout, stderr) = sweep(&["--seeds", "5..7", "--worker-rss-mib", "1"]);
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for seed in [5, 6] {
        assert!(
            stdout.contains(&format!(
                "FAILED seed {seed}: ran past the sweep's memory budget"
            )),
            "{stdout}"
        );
        assert!(stdout.contains(&format!("--seed {seed}\n")), "{stdout}");
    }
    assert!(stdout.ends_with("0 passed, 2 failed\n"), "{stdout}");
    assert!(stderr.contains("2 worker processes"), "{stderr}");
}

#[test]
fn a_seed_past_the_time_budget_fails_with_its_replay_line() {
    let (code, stdout, stderr) = sweep(&["--seeds", "8..9", "--seed-wall-ms", "1"]);
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("FAILED seed 8: ran past the sweep's time budget of 1 ms"),
        "{stdout}"
    );
    assert!(
        stdout.contains("replay: ") && stdout.contains("--seed 8\n"),
        "{stdout}"
    );
    assert!(stdout.ends_with("0 passed, 1 failed\n"), "{stdout}");
}
