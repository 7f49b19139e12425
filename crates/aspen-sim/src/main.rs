//! The seed sweep: `aspen-sim --seeds 0..300` runs each seed, prints every failing one with
//! the command that replays it, and ends with `N passed, M failed`. `--seed N` runs one seed
//! and prints its details (nemesis log, trace tail, failures).

use std::process::ExitCode;
use std::time::Instant;

use aspen_sim::{EXECUTOR, SeedReport, SimConfig, run_seed};

/// Most seeds one invocation runs.
const SEEDS_MAX: u64 = 1_000_000;

const USAGE: &str = "usage: aspen-sim (--seed N | --seeds A..B) [--nodes 3|5] \
[--unsafe-local-reads] [--drop-watch-event] [--fault-ms MS] [--healed-ms MS] [--verbose]";

struct Args {
    seeds: std::ops::Range<u64>,
    single: bool,
    template: SimConfig,
    verbose: bool,
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
        single: false,
        template: SimConfig::new(0),
        verbose: false,
    };
    let number = |value: Option<String>, flag: &str| -> Result<u64, String> {
        value
            .ok_or(format!("{flag} needs a value"))?
            .parse()
            .map_err(|e| format!("{flag}: {e}"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seed" => {
                let seed = number(args.next(), "--seed")?;
                parsed.seeds = seed..seed + 1;
                parsed.single = true;
            }
            "--seeds" => parsed.seeds = parse_range(&args.next().ok_or("--seeds needs A..B")?)?,
            "--nodes" => parsed.template.nodes = Some(number(args.next(), "--nodes")?),
            "--unsafe-local-reads" => parsed.template.unsafe_local_reads = true,
            "--drop-watch-event" => parsed.template.drop_watch_event = true,
            "--fault-ms" => parsed.template.fault_phase_ms = number(args.next(), "--fault-ms")?,
            "--healed-ms" => parsed.template.healed_phase_ms = number(args.next(), "--healed-ms")?,
            "--verbose" | "-v" => parsed.verbose = true,
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if parsed.template.nodes.is_some_and(|n| n != 3 && n != 5) {
        return Err("--nodes must be 3 or 5".to_string());
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

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let (mut passed, mut failed) = (0u64, 0u64);
    for seed in args.seeds.clone() {
        let config = SimConfig {
            seed,
            ..args.template.clone()
        };
        let report = run_seed(&config);
        if args.single || args.verbose {
            println!("{}", report.summary());
        }
        if args.single {
            print_details(&report);
        }
        if report.passed() {
            passed += 1;
            continue;
        }
        failed += 1;
        println!(
            "FAILED seed {seed}: {}",
            report.failures[0].lines().next().unwrap_or("")
        );
        if args.single || args.verbose {
            for failure in &report.failures {
                println!("{failure}");
            }
        }
        println!("  replay: {}", config.replay_command());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let seeds = args.seeds.end - args.seeds.start;
    eprintln!(
        "{seeds} seeds in {elapsed:.1}s ({:.2} seeds/s) on {EXECUTOR}",
        seeds as f64 / elapsed.max(1e-9)
    );
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
