//! Fixed-bucket latency histograms, rendered as Prometheus text; shared by every layer.

use std::sync::atomic::{AtomicU64, Ordering};

/// Buckets per histogram (a fixed set: bounded memory).
pub const HISTOGRAM_BUCKETS: usize = 14;

/// Upper bounds of latency buckets, in microseconds: requests and fsyncs.
pub const LATENCY_BUCKETS_US: [u64; HISTOGRAM_BUCKETS] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000,
];

/// Upper bounds for the stages of one write, in microseconds: several stages are hand-offs of
/// a few microseconds, which `LATENCY_BUCKETS_US` would put all in its first bucket.
pub const STAGE_BUCKETS_US: [u64; HISTOGRAM_BUCKETS] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000,
];

#[derive(Debug)]
pub struct Histogram {
    bounds_us: &'static [u64; HISTOGRAM_BUCKETS],
    buckets: [AtomicU64; HISTOGRAM_BUCKETS],
    count: AtomicU64,
    /// In nanoseconds, so that the mean of sub-microsecond stages is not rounded to zero.
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::with_bounds_us(&LATENCY_BUCKETS_US)
    }
}

impl Histogram {
    /// A histogram over `bounds_us`, which must increase strictly.
    pub fn with_bounds_us(bounds_us: &'static [u64; HISTOGRAM_BUCKETS]) -> Histogram {
        assert!(
            bounds_us.windows(2).all(|pair| pair[0] < pair[1]),
            "histogram bounds must increase strictly"
        );
        Histogram {
            bounds_us,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe_us(&self, value_us: u64) {
        self.observe_ns(value_us.saturating_mul(1_000));
    }

    pub fn observe_ns(&self, value_ns: u64) {
        for (bound_us, bucket) in self.bounds_us.iter().zip(self.buckets.iter()) {
            if value_ns <= bound_us * 1_000 {
                bucket.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(value_ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Renders in Prometheus text format with seconds as the unit, cumulative buckets.
    pub fn render(&self, name: &str, labels: &str, out: &mut String) {
        use std::fmt::Write;
        let mut cumulative = 0u64;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, bucket) in self.bounds_us.iter().zip(self.buckets.iter()) {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_buckets_keep_microseconds_and_the_sum_keeps_nanoseconds() {
        let histogram = Histogram::with_bounds_us(&STAGE_BUCKETS_US);
        histogram.observe_ns(400);
        histogram.observe_ns(7_000);
        histogram.observe_us(2_000_000);
        let mut out = String::new();
        histogram.render("h", "stage=\"x\"", &mut out);
        assert!(
            out.contains("h_bucket{stage=\"x\",le=\"0.000005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("h_bucket{stage=\"x\",le=\"0.00001\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("h_bucket{stage=\"x\",le=\"1\"} 2\n"), "{out}");
        assert!(
            out.contains("h_bucket{stage=\"x\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("h_sum{stage=\"x\"} 2.0000074\n"), "{out}");
        assert_eq!(histogram.count(), 3);
    }
}
