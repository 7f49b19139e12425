//! Every bound aspenctl enforces, in one place.

/// Endpoints one `--endpoints` list may name.
pub const ENDPOINTS_MAX: usize = 64;
/// Largest response aspenctl accepts: etcdctl's `MaxCallRecvMsgSize` default (math.MaxInt32),
/// so a large range that etcdctl can read, aspenctl can read too.
pub const RESPONSE_BYTES_MAX: usize = i32::MAX as usize;
/// Lines one `txn` section may hold, and bytes one line may hold.
pub const TXN_LINES_MAX: usize = 1_024;
pub const TXN_LINE_BYTES_MAX: usize = 1024 * 1024;
/// Tokens in one txn operation line (`get k --prefix --limit=3` is four).
pub const TXN_OP_TOKENS_MAX: usize = 16;
/// Watch responses buffered between the stream and the printer.
pub const WATCH_REQUESTS_BUFFERED_MAX: usize = 4;
/// Bytes a snapshot stream may announce; a larger announcement is refused as corrupt.
pub const SNAPSHOT_BYTES_MAX: u64 = 1 << 40;
/// Bytes of one read while checking a snapshot file.
pub const SNAPSHOT_READ_CHUNK_BYTES: usize = 1 << 20;
/// Members one `--cluster` discovery will query.
pub const CLUSTER_MEMBERS_MAX: usize = 64;

/// bench: concurrent requests, channels, watchers, keys, value bytes.
pub const BENCH_CLIENTS_MAX: u32 = 10_000;
pub const BENCH_CONNS_MAX: u32 = 1_000;
pub const BENCH_WATCHERS_MAX: u32 = 10_000;
pub const BENCH_KEY_SPACE_MAX: u64 = 100_000_000;
pub const BENCH_VAL_BYTES_MAX: u32 = 1024 * 1024;
pub const BENCH_RANGE_LIMIT_MAX: i64 = 100_000;
pub const BENCH_DURATION_S_MAX: u64 = 24 * 3600;
/// Failed requests after which a bench run stops instead of spinning on a dead server.
pub const BENCH_ERRORS_MAX: u64 = 1_000;
/// Concurrent puts while pre-populating keys for get/range.
pub const BENCH_PREPOPULATE_CONCURRENCY_MAX: u32 = 64;
/// How long watchers may lag behind the last put before the run ends without them.
pub const BENCH_WATCH_DRAIN_MS_MAX: u64 = 5_000;
/// Highest latency the histograms track (60 s), in microseconds.
pub const BENCH_LATENCY_US_MAX: u64 = 60_000_000;
