//! etcd's auto-compaction (`--auto-compaction-mode`, `--auto-compaction-retention`), with
//! etcd 3.4's compactors' timing, run by the leader through Raft (a `Compact` proposal, as a
//! client's): only the member that leads compacts; the others keep sampling, so a new leader
//! takes over with the same view of history.
//!
//! - `periodic` keeps the history of the last retention period `P`: the current revision is
//!   sampled every `min(P, 1h) / 10`; once `P` has passed since start (then every
//!   `min(P, 1h)`), the store is compacted at the oldest sample, the revision of about `P` ago.
//! - `revision` keeps the last `N` revisions: every 5 minutes (etcd's fixed interval; Aspen's
//!   `--experimental-auto-compaction-interval` changes it), the store is compacted at
//!   `current - N` if that moved since the last compaction.
//!
//! Each compaction is logged (start and finish, as etcd's "Starting/Finished auto-compaction")
//! and counted on /metrics (`aspen_auto_compactions_total`, `aspen_auto_compaction_revision`).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aspen_core::{ApplyError, Command};
use aspen_node::{Node, NodeError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// etcd's periodic compactor compacts at most every hour...
const PERIODIC_INTERVAL_MAX: Duration = Duration::from_secs(3600);
/// ...and samples revisions ten times per interval (`retryDivisor`).
const PERIODIC_SAMPLES_PER_INTERVAL: u32 = 10;
/// etcd's revision compactor's interval (`revInterval`).
pub const REVISION_INTERVAL_DEFAULT: Duration = Duration::from_secs(5 * 60);
/// The shortest period or interval accepted: sampling faster than every 100 ms buys nothing.
const PERIOD_MIN: Duration = Duration::from_secs(1);

/// What `--auto-compaction-mode` and `--auto-compaction-retention` ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep the history of the last `retention`.
    Periodic { retention: Duration },
    /// Keep the last `retention` revisions, checked every `interval`.
    Revision { retention: u64, interval: Duration },
}

impl AutoCompaction {
    /// etcd's parsing: a retention of `0` turns auto-compaction off; an integer is hours in
    /// periodic mode and revisions in revision mode; otherwise a Go duration (`30m`, `1h30m`,
    /// `90s`) in periodic mode.
    pub fn parse(
        mode: Option<&str>,
        retention: Option<&str>,
        interval: Option<&str>,
    ) -> Result<Option<AutoCompaction>, String> {
        let mode = mode.unwrap_or("periodic");
        let retention = retention.unwrap_or("0").trim();
        let interval = match interval {
            None => REVISION_INTERVAL_DEFAULT,
            Some(text) => parse_duration(text).map_err(|error| {
                format!("--experimental-auto-compaction-interval {text:?}: {error}")
            })?,
        };
        if interval < PERIOD_MIN {
            return Err(format!(
                "--experimental-auto-compaction-interval must be at least {PERIOD_MIN:?}"
            ));
        }
        let whole: Option<u64> = retention.parse().ok();
        let policy = match mode {
            "periodic" => {
                let retention = match whole {
                    Some(hours) => Duration::from_secs(hours.saturating_mul(3600)),
                    None => parse_duration(retention).map_err(|error| {
                        format!("--auto-compaction-retention {retention:?}: {error}")
                    })?,
                };
                if retention.is_zero() {
                    return Ok(None);
                }
                if retention < PERIOD_MIN {
                    return Err(format!(
                        "--auto-compaction-retention must be at least {PERIOD_MIN:?} in periodic mode"
                    ));
                }
                AutoCompaction::Periodic { retention }
            }
            "revision" => {
                let Some(retention) = whole else {
                    return Err(format!(
                        "--auto-compaction-retention {retention:?}: revision mode takes a number of revisions"
                    ));
                };
                if retention == 0 {
                    return Ok(None);
                }
                AutoCompaction::Revision {
                    retention,
                    interval,
                }
            }
            other => {
                return Err(format!(
                    "--auto-compaction-mode {other:?}: unknown mode (periodic or revision)"
                ));
            }
        };
        Ok(Some(policy))
    }

    /// The flags' values that give this policy back: (mode, retention, interval).
    pub fn to_flags(&self) -> (&'static str, String, Option<String>) {
        match self {
            AutoCompaction::Periodic { retention } => {
                ("periodic", format!("{}ms", retention.as_millis()), None)
            }
            AutoCompaction::Revision {
                retention,
                interval,
            } => (
                "revision",
                retention.to_string(),
                Some(format!("{}ms", interval.as_millis())),
            ),
        }
    }
}

/// A Go duration (`time.ParseDuration`): numbers with units `ns`, `us`, `µs`, `ms`, `s`, `m`,
/// `h`, possibly fractional and in sequence (`1h30m`, `1.5h`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("not a duration".to_string());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration {text:?}"))?;
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| format!("not a duration: {text:?}"))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_ns = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            unit => return Err(format!("unknown unit {unit:?} in duration {text:?}")),
        };
        rest = &rest[unit_len..];
        total_ns += number * unit_ns;
    }
    if !total_ns.is_finite() || total_ns > 1e18 {
        return Err(format!("duration {text:?} is too long"));
    }
    #[allow(
        clippy::cast_possible_truncation,
        reason = "checked just above: finite, non-negative (no sign is parsed) and at most 1e18"
    )]
    let total_ns = total_ns as u64;
    Ok(Duration::from_nanos(total_ns))
}

/// Runs `policy` on `node` until `stop`.
pub fn spawn(
    node: Node,
    policy: AutoCompaction,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        tracing::info!(?policy, "auto-compaction enabled");
        tokio::select! {
            () = run(&node, policy) => {}
            _ = stop.wait_for(|stopped| *stopped) => {}
        }
    })
}

async fn run(node: &Node, policy: AutoCompaction) {
    match policy {
        AutoCompaction::Periodic { retention } => run_periodic(node, retention).await,
        AutoCompaction::Revision {
            retention,
            interval,
        } => run_revision(node, retention, interval).await,
    }
}

fn current_revision(node: &Node) -> u64 {
    node.applied_state().map_or(0, |state| state.revision)
}

/// etcd 3.4's `Periodic.Run`.
async fn run_periodic(node: &Node, retention: Duration) {
    let interval = retention.min(PERIODIC_INTERVAL_MAX);
    let sample_every = interval / PERIODIC_SAMPLES_PER_INTERVAL;
    let samples_max = (retention.as_nanos() / sample_every.as_nanos()) as usize + 1;
    assert!(samples_max >= 2 && !sample_every.is_zero());
    let mut samples: VecDeque<u64> = VecDeque::with_capacity(samples_max + 1);
    let mut last_success = Instant::now();
    // The first compaction waits a whole retention period, the next ones an interval.
    let mut wait = retention;
    loop {
        samples.push_back(current_revision(node));
        if samples.len() > samples_max {
            samples.pop_front(); // the front is the revision of one retention period ago
        }
        tokio::time::sleep(sample_every).await;
        if !node.is_leader() || last_success.elapsed() < wait {
            continue;
        }
        wait = interval;
        let revision = samples[0];
        let retention_text = format!("{retention:?}");
        if compact(node, revision, &retention_text).await {
            last_success = Instant::now();
        }
    }
}

/// etcd 3.4's `Revision.Run`.
async fn run_revision(node: &Node, retention: u64, interval: Duration) {
    let mut previous = 0;
    loop {
        tokio::time::sleep(interval).await;
        if !node.is_leader() {
            continue;
        }
        let revision = current_revision(node).saturating_sub(retention);
        if revision == 0 || revision == previous {
            continue;
        }
        let retention_text = format!("{retention} revisions");
        if compact(node, revision, &retention_text).await {
            previous = revision;
        }
    }
}

/// Proposes the compaction; true when it is done (or history was already compacted past it).
async fn compact(node: &Node, revision: u64, retention: &str) -> bool {
    if revision <= 1 {
        return true; // nothing below revision 1 to drop
    }
    tracing::info!(revision, retention, "starting auto-compaction");
    let command = Command::Compact {
        revision,
        physical: false,
    };
    match node.write(command).await {
        Ok(_) | Err(NodeError::Apply(ApplyError::Compacted { .. })) => {
            tracing::info!(revision, "finished auto-compaction");
            let metrics = node.metrics();
            metrics.auto_compactions.fetch_add(1, Ordering::Relaxed);
            metrics
                .auto_compaction_revision
                .fetch_max(revision, Ordering::Relaxed);
            true
        }
        Err(error) => {
            tracing::warn!(revision, %error, "auto-compaction failed; will retry");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_parses_as_etcd_does() {
        let parse = |mode, retention| AutoCompaction::parse(Some(mode), Some(retention), None);
        let hour = Duration::from_secs(3600);
        assert_eq!(
            parse("periodic", "1"),
            Ok(Some(AutoCompaction::Periodic { retention: hour }))
        );
        assert_eq!(
            parse("periodic", "1h30m"),
            Ok(Some(AutoCompaction::Periodic {
                retention: hour + hour / 2
            }))
        );
        assert_eq!(
            parse("periodic", "1.5h"),
            Ok(Some(AutoCompaction::Periodic {
                retention: hour + hour / 2
            }))
        );
        assert_eq!(parse("periodic", "0"), Ok(None));
        assert_eq!(AutoCompaction::parse(None, None, None), Ok(None));
        assert_eq!(
            parse("revision", "1000"),
            Ok(Some(AutoCompaction::Revision {
                retention: 1000,
                interval: REVISION_INTERVAL_DEFAULT
            }))
        );
        assert!(parse("revision", "1h").is_err());
        assert!(parse("daily", "1").is_err());
        assert!(parse("periodic", "10x").is_err());
        assert!(parse("periodic", "500ms").is_err());
        for policy in [
            parse("periodic", "90s").unwrap().unwrap(),
            parse("revision", "7").unwrap().unwrap(),
        ] {
            let (mode, retention, interval) = policy.to_flags();
            let again = AutoCompaction::parse(Some(mode), Some(&retention), interval.as_deref());
            assert_eq!(again, Ok(Some(policy)));
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m3s"), Ok(Duration::from_secs(123)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("h").is_err());
    }
}
