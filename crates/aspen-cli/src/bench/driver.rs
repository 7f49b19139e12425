//! The closed loop: one task per client, each sending its next request when the last one is
//! answered, until the request budget or the deadline; latencies in per-client histograms
//! merged at the end; progress drawn from shared counters.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aspen_core::convert::micros;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value, json};
use tonic::Status;

use super::Limit;
use crate::error::status_text;
use crate::limits::{BENCH_ERRORS_MAX, BENCH_LATENCY_US_MAX};

/// How often the progress line is redrawn.
const PROGRESS_TICK_MS: u64 = 200;

#[derive(Debug, Clone)]
pub struct Settings {
    pub clients: u32,
    pub limit: Limit,
    pub seed: u64,
    pub show_progress: bool,
    /// Each request's deadline: a stuck server shows up as errors, not as a hung run.
    pub command_timeout: Duration,
}

/// One client's request; `op` is called again as soon as the last call returns.
pub trait Worker: Send + 'static {
    fn op(&mut self) -> impl Future<Output = Result<(), Status>> + Send;
}

/// A latency histogram in microseconds, 1 µs .. 60 s at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, BENCH_LATENCY_US_MAX, 3) {
        Ok(histogram) => histogram,
        Err(error) => unreachable!("constant histogram bounds are valid: {error}"),
    }
}

pub fn record_us(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let us = micros(elapsed).clamp(1, BENCH_LATENCY_US_MAX);
    histogram.saturating_record(us);
}

/// Counters shared by the clients and the progress line.
#[derive(Default)]
pub struct Stats {
    pub issued: AtomicU64,
    pub done: AtomicU64,
    pub errors: AtomicU64,
    pub stop: AtomicBool,
    pub first_error: Mutex<Option<String>>,
}

impl Stats {
    pub fn error(&self, status: &Status) {
        let errors = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut first) = self.first_error.lock()
            && first.is_none()
        {
            *first = Some(status_text(status));
        }
        if errors >= BENCH_ERRORS_MAX {
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|e| e.clone())
    }
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub workload: String,
    pub clients: u32,
    pub conns: u32,
    pub endpoints: u32,
    pub ops: u64,
    pub errors: u64,
    pub duration: Duration,
    pub latency: Option<Histogram<u64>>,
    pub first_error: Option<String>,
    /// Workload-specific figures (conflicts, events, ...), in the order added.
    pub extra: Vec<(String, Value)>,
}

impl Report {
    pub fn ops_per_s(&self) -> f64 {
        let seconds = self.duration.as_secs_f64();
        if seconds > 0.0 {
            self.ops as f64 / seconds
        } else {
            0.0
        }
    }

    fn quantile_us(&self, quantile: f64) -> u64 {
        self.latency
            .as_ref()
            .filter(|h| !h.is_empty())
            .map_or(0, |h| h.value_at_quantile(quantile))
    }

    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("workload".into(), json!(self.workload));
        map.insert("clients".into(), json!(self.clients));
        map.insert("conns".into(), json!(self.conns));
        map.insert("endpoints".into(), json!(self.endpoints));
        map.insert("ops".into(), json!(self.ops));
        map.insert("errors".into(), json!(self.errors));
        map.insert(
            "duration_s".into(),
            json!(round3(self.duration.as_secs_f64())),
        );
        map.insert("ops_per_s".into(), json!(round3(self.ops_per_s())));
        map.insert("p50_us".into(), json!(self.quantile_us(0.5)));
        map.insert("p99_us".into(), json!(self.quantile_us(0.99)));
        map.insert("p999_us".into(), json!(self.quantile_us(0.999)));
        map.insert(
            "max_us".into(),
            json!(self.latency.as_ref().map_or(0, |h| h.max())),
        );
        map.insert(
            "mean_us".into(),
            json!(round3(self.latency.as_ref().map_or(0.0, |h| h.mean()))),
        );
        for (name, value) in &self.extra {
            map.insert(name.clone(), value.clone());
        }
        if let Some(error) = &self.first_error {
            map.insert("first_error".into(), json!(error));
        }
        Value::Object(map)
    }

    pub fn to_text(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        let mut out = format!(
            "{}: {} ops in {:.2} s = {:.1} ops/s ({} clients, {} conns, {} endpoints), {} errors\n",
            self.workload,
            self.ops,
            self.duration.as_secs_f64(),
            self.ops_per_s(),
            self.clients,
            self.conns,
            self.endpoints,
            self.errors
        );
        out.push_str(&format!(
            "latency: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms\n",
            ms(self.quantile_us(0.5)),
            ms(self.quantile_us(0.99)),
            ms(self.quantile_us(0.999)),
            ms(self.latency.as_ref().map_or(0, |h| h.max()))
        ));
        for (name, value) in &self.extra {
            out.push_str(&format!("{name}: {value}\n"));
        }
        if let Some(error) = &self.first_error {
            out.push_str(&format!("first error: {error}\n"));
        }
        out
    }
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// A progress line on stderr (hidden when stderr is not a terminal).
pub fn progress(settings: &Settings, label: &str) -> ProgressBar {
    if !settings.show_progress {
        return ProgressBar::hidden();
    }
    let (length, template) = match settings.limit {
        Limit::Total(total) => (
            total,
            "{prefix} [{elapsed_precise}] [{bar:30}] {pos}/{len} {msg}",
        ),
        Limit::Duration(d) => (
            d.as_secs().max(1),
            "{prefix} [{elapsed_precise}] [{bar:30}] {msg}",
        ),
    };
    let bar = ProgressBar::new(length);
    let style = ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    bar
}

/// Redraws `bar` from `stats` until `stop` is set.
pub fn spawn_progress(
    bar: ProgressBar,
    stats: Arc<Stats>,
    limit: Limit,
    started: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(PROGRESS_TICK_MS));
        // Bounded: ends when the run sets `stop` (the run itself is bounded).
        while !stats.stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let done = stats.done.load(Ordering::Relaxed);
            let elapsed = started.elapsed().as_secs_f64();
            let rate = if elapsed > 0.0 {
                done as f64 / elapsed
            } else {
                0.0
            };
            match limit {
                Limit::Total(_) => bar.set_position(done),
                Limit::Duration(_) => bar.set_position(started.elapsed().as_secs()),
            }
            bar.set_message(format!(
                "{done} ops, {rate:.0} ops/s, {} errors",
                stats.errors.load(Ordering::Relaxed)
            ));
        }
        bar.finish_and_clear();
    })
}

/// Runs every worker in a closed loop until the limit; returns the merged latencies and the
/// wall time from the first request to the last answer.
pub async fn drive<W: Worker>(
    workers: Vec<W>,
    settings: &Settings,
    stats: Arc<Stats>,
    label: &str,
) -> (Histogram<u64>, Duration) {
    let started = Instant::now();
    let deadline = match settings.limit {
        Limit::Duration(d) => Some(started + d),
        Limit::Total(_) => None,
    };
    let total = match settings.limit {
        Limit::Total(total) => total,
        Limit::Duration(_) => u64::MAX,
    };
    let progress = spawn_progress(
        progress(settings, label),
        stats.clone(),
        settings.limit,
        started,
    );
    let mut tasks = tokio::task::JoinSet::new();
    for mut worker in workers {
        let stats = stats.clone();
        let timeout = settings.command_timeout;
        tasks.spawn(async move {
            let mut latencies = histogram();
            // Bounded by `total`, `deadline`, or BENCH_ERRORS_MAX errors (which set `stop`).
            loop {
                if stats.stop.load(Ordering::Relaxed)
                    || stats.issued.fetch_add(1, Ordering::Relaxed) >= total
                    || deadline.is_some_and(|d| Instant::now() >= d)
                {
                    break;
                }
                let sent = Instant::now();
                let result = match tokio::time::timeout(timeout, worker.op()).await {
                    Ok(result) => result,
                    Err(_) => Err(Status::deadline_exceeded(
                        "request timed out (--command-timeout)",
                    )),
                };
                match result {
                    Ok(()) => {
                        record_us(&mut latencies, sent.elapsed());
                        stats.done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(status) => stats.error(&status),
                }
            }
            latencies
        });
    }
    let mut merged = histogram();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(latencies) => {
                let _ = merged.add(&latencies);
            }
            Err(error) => panic!("bench client task failed: {error}"),
        }
    }
    let elapsed = started.elapsed();
    stats.stop.store(true, Ordering::Relaxed);
    let _ = progress.await;
    (merged, elapsed)
}

/// SplitMix64: a small, seedable generator; the keys need spread, not cryptography.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64, stream: u64) -> Rng {
        Rng(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in 0..bound for key choice (bound > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(Arc<AtomicU64>);

    impl Worker for Counter {
        fn op(&mut self) -> impl Future<Output = Result<(), Status>> + Send {
            let counter = self.0.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    struct Failing;

    impl Worker for Failing {
        async fn op(&mut self) -> Result<(), Status> {
            Err(Status::unavailable("etcdserver: no leader"))
        }
    }

    fn settings(limit: Limit) -> Settings {
        Settings {
            clients: 4,
            limit,
            seed: 1,
            show_progress: false,
            command_timeout: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn a_total_is_exact_across_clients() {
        let count = Arc::new(AtomicU64::new(0));
        let workers: Vec<Counter> = (0..4).map(|_| Counter(count.clone())).collect();
        let stats = Arc::new(Stats::default());
        let (latencies, _) =
            drive(workers, &settings(Limit::Total(1_000)), stats.clone(), "t").await;
        assert_eq!(count.load(Ordering::Relaxed), 1_000);
        assert_eq!(stats.done.load(Ordering::Relaxed), 1_000);
        assert_eq!(latencies.len(), 1_000);
    }

    #[tokio::test]
    async fn a_dead_server_stops_the_run_after_the_error_bound() {
        let stats = Arc::new(Stats::default());
        let limit = Limit::Duration(Duration::from_secs(60));
        let (latencies, elapsed) =
            drive(vec![Failing, Failing], &settings(limit), stats.clone(), "t").await;
        assert!(latencies.is_empty());
        assert!(stats.errors.load(Ordering::Relaxed) >= BENCH_ERRORS_MAX);
        assert!(elapsed < Duration::from_secs(30));
        assert_eq!(
            stats.first_error().as_deref(),
            Some("etcdserver: no leader")
        );
    }

    #[test]
    fn reports_have_flat_json_for_scripts() {
        let mut latencies = histogram();
        for us in [100, 200, 300, 400, 10_000] {
            latencies.record(us).expect("in range");
        }
        let report = Report {
            workload: "put".into(),
            clients: 2,
            conns: 1,
            endpoints: 1,
            ops: 5,
            duration: Duration::from_secs(1),
            latency: Some(latencies),
            extra: vec![("conflicts".into(), json!(0))],
            ..Default::default()
        };
        let value = report.to_json();
        assert_eq!(value["ops_per_s"], json!(5.0));
        assert_eq!(value["p50_us"], json!(300));
        assert_eq!(value["conflicts"], json!(0));
        assert!(
            report
                .to_text()
                .starts_with("put: 5 ops in 1.00 s = 5.0 ops/s")
        );
    }

    #[test]
    fn rng_stays_below_its_bound() {
        let mut rng = Rng::new(7, 3);
        assert!((0..1_000).all(|_| rng.below(10) < 10));
    }
}
