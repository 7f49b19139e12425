//! The seed sweep: `aspen-sim --seeds 0..300` runs each seed, prints every failing one with
//! the command that replays it as it happens, a progress line now and then, and ends with
//! `N passed, M failed`. `--seed N` runs one seed and prints its details (nemesis log, trace
//! tail, failures).
//!
//! A sweep runs its seeds in worker processes, re-executions of this binary with
//! `--worker --seeds A..B`, each at most `--seeds-per-worker` seeds: whatever a seed leaves
//! behind in the heap goes back to the system when its worker exits, so the sweep's memory
//! does not grow with the seed count. The sweep watches its worker: a seed that passes the
//! memory budget (the worker's resident set) or the wall-clock budget fails with its replay
//! line, its worker is killed, and the sweep goes on with a new worker at the next seed; so
//! does a seed whose worker dies (an abort, the OOM killer).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aspen_sim::limits::{
    SWEEP_POLL_MS, SWEEP_PROGRESS_MS, SWEEP_SEED_WALL_MS_MAX, SWEEP_SEEDS_PER_WORKER,
    SWEEP_WORKER_RSS_MIB_MAX,
};
use aspen_sim::{EXECUTOR, SeedReport, SimConfig, run_seed};

/// Most seeds one invocation runs.
const SEEDS_MAX: u64 = 100_000_000;

const USAGE: &str = "usage: aspen-sim (--seed N | --seeds A..B) [--nodes 3|5] \
[--unsafe-local-reads] [--drop-watch-event] [--split-lease-expiry] [--resume-past-compaction] [--lying-fsync] [--fault-ms MS] [--healed-ms MS] [--verbose] \
[--seeds-per-worker N] [--worker-rss-mib MIB] [--seed-wall-ms MS]";

/// How the process runs its seeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `--seed N`: in this process, with details.
    Single,
    /// `--seeds A..B`: in worker processes, watched.
    Sweep,
    /// `--worker --seeds A..B`: in this process, reporting each seed to the sweep on stdout.
    Worker,
}

struct Args {
    seeds: std::ops::Range<u64>,
    mode: Mode,
    template: SimConfig,
    verbose: bool,
    /// The options a worker gets as they were given (the scenario's, not the sweep's).
    scenario_args: Vec<String>,
    seeds_per_worker: u64,
    worker_rss_mib_max: u64,
    seed_wall_ms_max: u64,
}

fn parse_range(text: &str) -> Result<std::ops::Range<u64>, String> {
    let (start, end) = text
        .split_once("..")
        .ok_or(format!("expected A..B, got {text:?}"))?;
    let start: u64 = start.parse().map_err(|e| format!("bad range start: {e}"))?;
    let end: u64 = end.parse().map_err(|e| format!("bad range end: {e}"))?;
    if end <= start || end - start > SEEDS_MAX {
        return Err(format!("the range must hold 1 to {SEEDS_MAX} seeds"));
    }
    Ok(start..end)
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut parsed = Args {
        seeds: 0..10,
        mode: Mode::Sweep,
        template: SimConfig::new(0),
        verbose: false,
        scenario_args: Vec::new(),
        seeds_per_worker: SWEEP_SEEDS_PER_WORKER,
        worker_rss_mib_max: SWEEP_WORKER_RSS_MIB_MAX,
        seed_wall_ms_max: SWEEP_SEED_WALL_MS_MAX,
    };
    let mut worker = false;
    let number = |value: Option<String>, flag: &str| -> Result<u64, String> {
        value
            .ok_or(format!("{flag} needs a value"))?
            .parse()
            .map_err(|e| format!("{flag}: {e}"))
    };
    while let Some(arg) = args.next() {
        let scenario_value = |value: u64, args: &mut Vec<String>| {
            args.push(arg.clone());
            args.push(value.to_string());
            value
        };
        match arg.as_str() {
            "--seed" => {
                let seed = number(args.next(), "--seed")?;
                parsed.seeds = seed..seed + 1;
                parsed.mode = Mode::Single;
            }
            "--seeds" => parsed.seeds = parse_range(&args.next().ok_or("--seeds needs A..B")?)?,
            "--worker" => worker = true,
            "--nodes" => {
                let nodes = number(args.next(), "--nodes")?;
                parsed.template.nodes = Some(scenario_value(nodes, &mut parsed.scenario_args));
            }
            "--unsafe-local-reads" => {
                parsed.template.unsafe_local_reads = true;
                parsed.scenario_args.push(arg.clone());
            }
            "--drop-watch-event" => {
                parsed.template.drop_watch_event = true;
                parsed.scenario_args.push(arg.clone());
            }
            "--split-lease-expiry" => {
                parsed.template.split_lease_expiry = true;
                parsed.scenario_args.push(arg.clone());
            }
            "--resume-past-compaction" => {
                parsed.template.resume_past_compaction = true;
                parsed.scenario_args.push(arg.clone());
            }
            "--lying-fsync" => {
                parsed.template.lying_fsync = true;
                parsed.scenario_args.push(arg.clone());
            }
            "--fault-ms" => {
                let ms = number(args.next(), "--fault-ms")?;
                parsed.template.fault_phase_ms = scenario_value(ms, &mut parsed.scenario_args);
            }
            "--healed-ms" => {
                let ms = number(args.next(), "--healed-ms")?;
                parsed.template.healed_phase_ms = scenario_value(ms, &mut parsed.scenario_args);
            }
            "--seeds-per-worker" => {
                parsed.seeds_per_worker = number(args.next(), "--seeds-per-worker")?
            }
            "--worker-rss-mib" => {
                parsed.worker_rss_mib_max = number(args.next(), "--worker-rss-mib")?
            }
            "--seed-wall-ms" => parsed.seed_wall_ms_max = number(args.next(), "--seed-wall-ms")?,
            "--verbose" | "-v" => parsed.verbose = true,
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if worker {
        parsed.mode = Mode::Worker;
    }
    if parsed.template.nodes.is_some_and(|n| n != 3 && n != 5) {
        return Err("--nodes must be 3 or 5".to_string());
    }
    if parsed.seeds_per_worker == 0 || parsed.worker_rss_mib_max == 0 {
        return Err("--seeds-per-worker and --worker-rss-mib must be positive".to_string());
    }
    Ok(parsed)
}

fn print_details(report: &SeedReport) {
    println!("nemesis:");
    for line in &report.nemesis_log {
        println!("  {line}");
    }
    println!("last trace events:");
    for line in &report.trace_tail {
        println!("  {line}");
    }
    if let Some(revision) = report.converged_revision {
        println!("converged at revision {revision}");
    }
}

fn config_for(args: &Args, seed: u64) -> SimConfig {
    SimConfig {
        seed,
        ..args.template.clone()
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// `--seed N`: one seed, here, with everything it did.
fn run_single(args: &Args) -> ExitCode {
    let config = config_for(args, args.seeds.start);
    let report = run_seed(&config);
    println!("{}", report.summary());
    print_details(&report);
    if report.passed() {
        println!("1 passed, 0 failed");
        return ExitCode::SUCCESS;
    }
    println!(
        "FAILED seed {}: {}",
        config.seed,
        first_line(&report.failures[0])
    );
    for failure in &report.failures {
        println!("{failure}");
    }
    println!("  replay: {}", config.replay_command());
    println!("0 passed, 1 failed");
    ExitCode::FAILURE
}

/// `--worker`: the seeds here, one protocol line each on stdout for the sweep:
/// `@start N`, then `@pass N` or `@fail N <first failure>`; `@say <text>` lines are printed
/// by the sweep as they are.
fn run_worker(args: &Args) -> ExitCode {
    for seed in args.seeds.clone() {
        println!("@start {seed}");
        let report = run_seed(&config_for(args, seed));
        if args.verbose {
            println!("@say {}", report.summary());
        }
        if report.passed() {
            println!("@pass {seed}");
            continue;
        }
        println!("@fail {seed} {}", first_line(&report.failures[0]));
        if args.verbose {
            for failure in &report.failures {
                for line in failure.lines() {
                    println!("@say {line}");
                }
            }
        }
    }
    ExitCode::SUCCESS
}

/// The sweep's counts, printed as it goes.
#[derive(Debug, Default)]
struct Tally {
    passed: u64,
    failed: u64,
    workers: u64,
    /// Largest peak resident set (VmHWM) seen in one worker, in KiB.
    worker_peak_kib: u64,
}

/// A line from a worker's stdout, or its end.
enum FromWorker {
    Line(String),
    End,
}

fn worker_command(args: &Args, seeds: &std::ops::Range<u64>) -> Command {
    // /proc/self/exe is this very binary even if a rebuild replaced the file meanwhile.
    let exe = if std::path::Path::new("/proc/self/exe").exists() {
        std::path::PathBuf::from("/proc/self/exe")
    } else {
        std::env::current_exe().unwrap_or_else(|_| std::path::PathBuf::from("aspen-sim"))
    };
    let mut command = Command::new(exe);
    command
        .arg("--worker")
        .arg("--seeds")
        .arg(format!("{}..{}", seeds.start, seeds.end))
        .args(&args.scenario_args);
    if args.verbose {
        command.arg("--verbose");
    }
    command.stdin(Stdio::null()).stdout(Stdio::piped());
    command
}

/// A process's resident set and its peak, in KiB, from /proc (Linux); `None` elsewhere.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|line| line.starts_with(name))?;
        line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:").unwrap_or(0)))
}

fn wall_budget_reason(args: &Args) -> String {
    format!(
        "ran past the sweep's time budget of {} ms (--seed-wall-ms)",
        args.seed_wall_ms_max
    )
}

fn fail_seed(args: &Args, tally: &mut Tally, seed: u64, why: &str) {
    tally.failed += 1;
    println!("FAILED seed {seed}: {why}");
    println!("  replay: {}", config_for(args, seed).replay_command());
}

/// Runs `seeds` in one worker; returns the first seed it did not finish (the seed after one
/// that failed by budget or took its worker down).
fn sweep_with_worker(
    args: &Args,
    seeds: std::ops::Range<u64>,
    tally: &mut Tally,
    progress: &mut Progress,
) -> Result<u64, String> {
    let mut child: Child = worker_command(args, &seeds)
        .spawn()
        .map_err(|e| format!("cannot start a worker process: {e}"))?;
    tally.workers += 1;
    let stdout = child.stdout.take().ok_or("the worker has no stdout")?;
    let (send, receive) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if send.send(FromWorker::Line(line)).is_err() {
                return;
            }
        }
        let _ = send.send(FromWorker::End);
    });
    let pid = child.id();
    let mut next = seeds.start;
    // The seed the worker is running, and since when.
    let mut running: Option<(u64, Instant)> = None;
    let mut killed_for: Option<String> = None;
    loop {
        match receive.recv_timeout(Duration::from_millis(SWEEP_POLL_MS)) {
            Ok(FromWorker::Line(line)) => {
                if let Some(seed) = line.strip_prefix("@start ") {
                    let seed: u64 = seed.parse().map_err(|_| format!("worker said {line:?}"))?;
                    running = Some((seed, Instant::now()));
                } else if let Some(seed) = line.strip_prefix("@pass ") {
                    let seed: u64 = seed.parse().map_err(|_| format!("worker said {line:?}"))?;
                    // A seed that finished past its budget between two polls fails as one
                    // still running would (the watch below only sees running seeds).
                    let budget = Duration::from_millis(args.seed_wall_ms_max);
                    if running.is_some_and(|(_, since)| since.elapsed() > budget) {
                        fail_seed(args, tally, seed, &wall_budget_reason(args));
                    } else {
                        tally.passed += 1;
                    }
                    running = None;
                    next = seed + 1;
                } else if let Some(rest) = line.strip_prefix("@fail ") {
                    let (seed, why) = rest.split_once(' ').unwrap_or((rest, ""));
                    let seed: u64 = seed.parse().map_err(|_| format!("worker said {line:?}"))?;
                    fail_seed(args, tally, seed, why);
                    running = None;
                    next = seed + 1;
                } else if let Some(text) = line.strip_prefix("@say ") {
                    println!("{text}");
                } else {
                    println!("{line}");
                }
            }
            Ok(FromWorker::End) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some((rss, peak)) = rss_kib(pid) {
            tally.worker_peak_kib = tally.worker_peak_kib.max(peak).max(rss);
            if rss / 1024 > args.worker_rss_mib_max && killed_for.is_none() {
                killed_for = Some(format!(
                    "ran past the sweep's memory budget: its worker's resident set reached {} MiB \
                     (--worker-rss-mib {})",
                    rss / 1024,
                    args.worker_rss_mib_max
                ));
            }
        }
        if let Some((_, since)) = running
            && since.elapsed() > Duration::from_millis(args.seed_wall_ms_max)
            && killed_for.is_none()
        {
            killed_for = Some(wall_budget_reason(args));
        }
        if killed_for.is_some() {
            let _ = child.kill();
            break;
        }
        progress.maybe_print(tally, next);
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for a worker: {e}"))?;
    let _ = reader.join();
    if let Some((seed, _)) = running {
        let why = killed_for.unwrap_or_else(|| format!("its worker process died ({status})"));
        fail_seed(args, tally, seed, &why);
        return Ok(seed + 1);
    }
    if let Some(why) = killed_for {
        // Killed between two seeds: the budget was passed by what the finished seeds left.
        if next < seeds.end {
            fail_seed(args, tally, next, &why);
            return Ok(next + 1);
        }
        return Ok(next);
    }
    if next < seeds.end {
        // Exited between seeds without finishing: no seed to blame but the next.
        fail_seed(
            args,
            tally,
            next,
            &format!("its worker process exited ({status}) before running it"),
        );
        return Ok(next + 1);
    }
    Ok(next)
}

/// Prints a progress line on stderr every `SWEEP_PROGRESS_MS`.
struct Progress {
    started: Instant,
    last: Instant,
    total: u64,
    first: u64,
}

impl Progress {
    fn maybe_print(&mut self, tally: &Tally, next: u64) {
        if self.last.elapsed() < Duration::from_millis(SWEEP_PROGRESS_MS) {
            return;
        }
        self.last = Instant::now();
        let done = next.saturating_sub(self.first);
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        eprintln!(
            "progress: {done}/{} seeds, {} passed, {} failed, {:.2} seeds/s, {} workers, \
             largest worker peak RSS {} MiB",
            self.total,
            tally.passed,
            tally.failed,
            done as f64 / elapsed,
            tally.workers,
            tally.worker_peak_kib / 1024
        );
    }
}

/// `--seeds A..B`: every seed in worker processes, at most `--seeds-per-worker` each.
fn run_sweep(args: &Args) -> ExitCode {
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut progress = Progress {
        started,
        last: started,
        total: args.seeds.end - args.seeds.start,
        first: args.seeds.start,
    };
    let mut next = args.seeds.start;
    while next < args.seeds.end {
        let chunk = next..next
            .saturating_add(args.seeds_per_worker)
            .min(args.seeds.end);
        match sweep_with_worker(args, chunk, &mut tally, &mut progress) {
            Ok(after) => {
                assert!(after > next, "the sweep moves forward");
                next = after;
            }
            Err(message) => {
                eprintln!("{message}");
                return ExitCode::from(2);
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let seeds = args.seeds.end - args.seeds.start;
    let per_second = seeds as f64 / elapsed.max(1e-9);
    eprintln!(
        "{seeds} seeds in {elapsed:.1}s ({per_second:.2} seeds/s, {:.0} seeds/hour) on {EXECUTOR}, \
         {} worker processes, largest worker peak RSS {} MiB",
        per_second * 3600.0,
        tally.workers,
        tally.worker_peak_kib / 1024
    );
    println!("{} passed, {} failed", tally.passed, tally.failed);
    if tally.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match args.mode {
        Mode::Single => run_single(&args),
        Mode::Worker => run_worker(&args),
        Mode::Sweep => run_sweep(&args),
    }
}
