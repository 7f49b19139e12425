//! Every named limit in Aspen, in one place, with units last.
//!
//! Defaults follow etcd where etcd has one, so that an etcd user's expectations carry over.
//! Limits that a user may change at start-up live in [`Limits`]; the rest are constants.

/// Largest client request etcd accepts by default (`--max-request-bytes`): 1.5 MiB.
pub const REQUEST_BYTES_MAX_DEFAULT: u64 = 1536 * 1024;
/// The largest `--max-request-bytes` a user may set: 64 MiB.
pub const REQUEST_BYTES_MAX_CONFIGURABLE: u64 = 64 * 1024 * 1024;
/// Most operations in one Txn branch (`--max-txn-ops`), as etcd.
pub const TXN_OPS_MAX_DEFAULT: u32 = 128;
/// Database quota set at creation (`--quota-backend-bytes`): 10 GiB, as the design record asks.
pub const QUOTA_BACKEND_BYTES_DEFAULT: u64 = 10 * 1024 * 1024 * 1024;
/// A hard upper bound on the quota a user may configure: 64 GiB.
pub const QUOTA_BACKEND_BYTES_MAX: u64 = 64 * 1024 * 1024 * 1024;
/// `--disk-reserve-bytes`' default: writes that grow the store are refused (NOSPACE) while the
/// data dir's filesystem has less than this free, so deletes, compaction and defragmentation
/// still find room, and the Raft log never meets a full disk in normal use.
pub const DISK_RESERVE_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// The reserve never exceeds this fraction (1/N) of the filesystem's size, so a small
/// filesystem (a test's tmpfs) keeps most of its space usable.
pub const DISK_RESERVE_FS_DIVISOR: u64 = 8;
/// How long one measurement of the filesystem's free space is reused by the write path (one
/// `statvfs` per interval, not per write).
pub const DISK_FREE_CHECK_INTERVAL_MS: u64 = 10;

/// Deepest Txn nesting accepted. etcd bounds nesting only through the op count; we also bound
/// depth so that evaluation, which recurses over nesting, never goes deeper than this.
pub const TXN_NESTING_DEPTH_MAX: u32 = 16;

/// Size of one snapshot chunk on the wire and on disk.
pub const SNAPSHOT_CHUNK_BYTES_MAX: u64 = 1024 * 1024;
/// Largest single frame inside a snapshot stream: one key record with its value. A value is
/// bounded by the request size, so a frame is too; the margin covers key and metadata.
pub const SNAPSHOT_FRAME_BYTES_MAX: u64 = 2 * REQUEST_BYTES_MAX_DEFAULT + 64 * 1024;
/// Records written per redb transaction while installing a snapshot is one transaction in all;
/// this bounds how many records are decoded before they are inserted.
pub const SNAPSHOT_INSTALL_BATCH_RECORDS_MAX: u32 = 4096;

/// Log entries appended but not yet durable that the log writer holds at most; an append
/// beyond it waits (backpressure to openraft) until a commit makes room. Two full proposal
/// batches (openraft appends at most 4096 entries at a time), so one batch is queued while the
/// previous one is being synced.
pub const LOG_WRITER_QUEUE_ENTRIES_MAX: u32 = 8192;
/// Encoded bytes of log entries appended but not yet durable, at most; as the entry bound.
/// An append larger than this on its own waits for an empty queue, then goes alone.
pub const LOG_WRITER_QUEUE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Encoded entries one AppendEntries message carries at most: a leader splits a larger batch
/// into several messages (one entry larger than this goes alone). With 4096 entries per batch
/// and 1.5 MiB requests, an unsplit message could reach 6 GiB.
pub const PEER_APPEND_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// The peer message size bound is `peer_message_bytes_max`: the larger of an append's bound
/// and one request with this margin (log id, tags, the AppendEntries header, the envelope).
pub const PEER_MESSAGE_MARGIN_BYTES: u64 = 64 * 1024;

/// Largest message one peer accepts from (or sends to) another: an append split at
/// [`PEER_APPEND_BYTES_MAX`], or one entry of the largest request, plus the margin. 16 MiB and
/// 64 KiB with the default request size. The decoder refuses anything larger before
/// allocating it.
pub const fn peer_message_bytes_max(request_bytes_max: u64) -> u64 {
    let one_entry = request_bytes_max + PEER_MESSAGE_MARGIN_BYTES;
    let append = PEER_APPEND_BYTES_MAX;
    (if one_entry > append {
        one_entry
    } else {
        append
    }) + PEER_MESSAGE_MARGIN_BYTES
}

/// Most log entries returned by one log read: bounds memory for replication reads.
pub const LOG_READ_ENTRIES_MAX: u64 = 65_536;

/// Log indices whose write stages (appended, durable, committed, applied) a node remembers,
/// for the per-stage put latency metrics: a ring, so the newest this many are kept and older
/// ones are overwritten. A proposal is read back as soon as it is applied, so this only needs
/// to exceed the entries in flight at once (bounded by client concurrency); 56 bytes each,
/// under 1 MiB per node.
pub const STAGE_CLOCK_INDICES_MAX: u64 = 16_384;

/// The state machine commits apply batches without an fsync (the Raft log is the durable
/// record; a crash re-applies from it) and makes them durable on this cadence, whichever
/// bound is reached first, checked at each apply (nothing runs on a timer): the first batch
/// applied this long after the last durable commit is followed (once answered) by a durable
/// commit of its own. etcd's backend commits every 100 ms; here a durable commit blocks
/// applies while it writes and syncs every page dirtied since the last, and at 100 ms those
/// fsyncs took a fifth of apply time at 1M keys (storage_bench: 63k puts/s at 100 ms, 86k at
/// 1 s), so the interval is longer...
pub const STATE_DURABLE_INTERVAL_MS: u64 = 500;
/// ...or the batch that brings the entries applied since the last durable commit to this
/// many, which bounds what a restart after a crash re-applies (25,000 entries: about 0.3 s)...
pub const STATE_DIRTY_ENTRIES_MAX: u64 = 25_000;
/// ...or the batch that brings the command bytes applied since then to this many. These bound
/// what a restart re-applies from the log, and the pages a crash can lose.
pub const STATE_DIRTY_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// The apply path leaves its write transaction open after a batch ("parked", see
/// aspen-storage's `parked.rs`) until this many entries are in it... (each read of the state
/// database commits it first, so this bounds only a run of batches with no read between:
/// the memory their dirty pages hold, and the pause of the commit that ends the run)
pub const STATE_PARKED_ENTRIES_MAX: u64 = 256;
/// ...or this long after its first batch began.
pub const STATE_PARKED_MS_MAX: u64 = 10;

/// Versions one physical compaction step looks at; a compaction with more work takes several
/// steps, each consistent. A step finds what to remove in a read transaction, then holds
/// applies only while it removes that and commits (about 0.6 ms at 100 versions on a 300,000-key
/// store on the development VM). etcd's batch is 1,000; here, at 250 (1.2 ms held), a lone
/// writer's put p99 doubled while a compaction of 500,000 revisions ran, at 100 it stayed
/// within 1.1-1.3x (docs/performance.md, session 10)...
pub const COMPACT_STEP_VERSIONS_MAX: u32 = 100;
/// ...and at least this far apart, so writes interleave (etcd's `compactionSleepInterval` is
/// 10 ms)...
pub const COMPACT_STEP_PAUSE_MS: u64 = 2;
/// ...and at least this many times the step's own duration. On a 1M-key store a step costs
/// more (its index lookups miss redb's cache), and with 2 ms pauses a lone writer's put p99 was
/// 2.4x during a compaction. Three times the step bounds compaction to about a quarter of a
/// core: p99 1.2-2.3x in A/B runs on that store, for a compaction 1.25x as long (1.6x at 300k
/// keys).
pub const COMPACT_STEP_PAUSE_PER_STEP_TIME: u32 = 3;

/// Keys a DeleteRange (or a lease revoke) finds and deletes per chunk: it holds one chunk's
/// keys, and their values when a watcher or `prev_kv` needs them, at a time, never the whole
/// range. The chunks are one revision and one transaction, as before.
pub const DELETE_RANGE_CHUNK_KEYS_MAX: u32 = 1000;

/// Most members in one cluster.
pub const CLUSTER_MEMBERS_MAX: u32 = 64;

/// The smallest lease TTL granted with the default election timeout (1000 ms); shorter
/// requests are raised to it. etcd derives it from the election timeout, as
/// [`lease_ttl_seconds_min`] does: a lease must outlive a leader election, after which the
/// new leader extends every lease by its full TTL.
pub const LEASE_TTL_SECONDS_MIN: i64 = lease_ttl_seconds_min(1000);
/// The largest lease TTL etcd accepts (`MaxLeaseTTL`): 9,000,000,000 seconds.
pub const LEASE_TTL_SECONDS_MAX: i64 = 9_000_000_000;

/// etcd's minimum lease TTL: ceil(1.5 * election timeout), in seconds.
pub const fn lease_ttl_seconds_min(election_timeout_ms: u64) -> i64 {
    let ttl_ms_min = election_timeout_ms * 3 / 2;
    let seconds = ttl_ms_min.div_ceil(1000);
    assert!(
        seconds <= i64::MAX as u64,
        "an election timeout past any TTL"
    );
    #[allow(clippy::cast_possible_wrap, reason = "asserted just above")]
    let seconds = seconds as i64;
    seconds
}

/// How often the leader looks for expired leases.
pub const LEASE_CHECK_INTERVAL_MS: u64 = 500;
/// Most leases revoked by one `LeaseExpire` command; more wait for the next check.
pub const LEASE_EXPIRE_BATCH_MAX: u32 = 1000;
/// Keep-alive replies queued for one stream before its reader stops taking requests.
pub const LEASE_KEEPALIVE_QUEUE_MAX: u32 = 16;

/// Messages queued between the watch hub and one watch stream (etcd's `chanBufLen`). A
/// stream whose queue is full falls behind and catches up from MVCC history instead:
/// nothing is buffered without bound.
pub const WATCH_STREAM_QUEUE_MESSAGES_MAX: u32 = 128;
/// Watchers one watch stream may hold.
pub const WATCHERS_PER_STREAM_MAX: u32 = 10_000;
/// Watchers one node may hold across all streams.
pub const WATCHERS_MAX: u32 = 100_000;
/// Events read from history for one lagging watcher in one catch-up step (one revision is
/// never split, so a single larger revision is read whole).
pub const WATCH_SYNC_BATCH_EVENTS_MAX: u32 = 1000;
/// Lagging watchers caught up in one step (etcd's `maxWatchersPerSync`).
pub const WATCH_SYNC_WATCHERS_MAX: u32 = 512;
/// How often lagging watchers are caught up (etcd: 100 ms).
pub const WATCH_SYNC_INTERVAL_MS: u64 = 100;
/// How often a watcher that asked for progress notifications gets one when idle (etcd: 10
/// minutes).
pub const WATCH_PROGRESS_NOTIFY_INTERVAL_MS: u64 = 10 * 60 * 1000;
/// Responses queued for one watch stream's gRPC sender.
pub const WATCH_RESPONSE_QUEUE_MAX: u32 = 16;
/// Event bytes (keys and values, with previous values) queued for one watch stream: from the
/// hub's queue until the gRPC layer takes the response. A stream past it (a slow consumer, or
/// one that never reads) falls behind and catches up from history once it has read, so what
/// it holds does not grow with the writes it misses. One message larger than this alone (one
/// revision) still goes, when nothing else of the stream is queued.
pub const WATCH_STREAM_QUEUE_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Event bytes queued across all watch streams of a node: with every watcher copying each
/// event it receives, fan-out (10,000 watchers of one 1.5 MiB value) is bounded here, not by
/// the number of streams.
pub const WATCH_QUEUED_BYTES_MAX: u64 = 128 * 1024 * 1024;
/// Event bytes one history page holds (whole revisions: a single larger revision is read
/// whole), as `WATCH_SYNC_BATCH_EVENTS_MAX` bounds its events.
pub const WATCH_PAGE_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// History bytes one catch-up round reads before it delivers; the next round goes on.
pub const WATCH_SYNC_ROUND_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// The JSON gateway's bound on one request body (or one message of a streamed body), for a
/// server whose protobuf requests may be `request_bytes_max` long: bytes travel in base64
/// (4/3 of their size) inside JSON, so twice the protobuf limit plus room for the rest.
pub const fn gateway_json_bytes_max(request_bytes_max: u64) -> u64 {
    2 * request_bytes_max + 64 * 1024
}
/// Requests of one streamed JSON call (watch, lease keep-alive) decoded ahead of the gRPC
/// service that takes them: the HTTP body is read no faster than the service reads.
pub const GATEWAY_STREAM_REQUESTS_QUEUED_MAX: u32 = 16;

/// Linearizable reads that may wait for the next ReadIndex round on one node (per source: the
/// leader's own confirmation, or the one forwarded to the leader). One more is refused with
/// "too many requests" rather than queued without bound.
pub const READ_INDEX_WAITERS_MAX: u32 = 65_536;
/// A backstop on one ReadIndex round: longer than the peer forward deadline (10 s) and
/// openraft's own wait for a quorum, so it only fires if a source never answers, and then a
/// stuck round cannot hold back every later read.
pub const READ_INDEX_ROUND_MS_MAX: u64 = 15_000;

/// Writes a follower gathers into one batch forwarded to the leader (`aspen-node`'s
/// `forward_batch`), and the command bytes one batch carries at most (a larger write still
/// goes, alone). Both far inside a peer message (`peer_message_bytes_max`, 16 MiB or more).
pub const FORWARD_WRITE_BATCH_WRITES_MAX: u32 = 256;
pub const FORWARD_WRITE_BATCH_BYTES_MAX: u64 = 1024 * 1024;
/// Batches one follower has in flight to the leader at once. Below it, a batch still leaves
/// only when none is out or when it is at least as large as all those out (`forward_batch`'s
/// rule); at it, new writes queue until a batch completes.
pub const FORWARD_WRITE_BATCHES_IN_FLIGHT_MAX: u32 = 4;
/// Writes that may wait in a follower's forwarding queue; one more is refused with "too many
/// requests" rather than queued without bound.
pub const FORWARD_WRITE_WAITERS_MAX: u32 = 65_536;

/// Users the auth store holds at most. etcd has no bound; the whole store is kept in memory
/// for permission checks, so it has one here.
pub const AUTH_USERS_MAX: u32 = 10_000;
/// Roles the auth store holds at most.
pub const AUTH_ROLES_MAX: u32 = 10_000;
/// Roles one user holds at most.
pub const AUTH_ROLES_PER_USER_MAX: u32 = 256;
/// Key permissions one role holds at most.
pub const AUTH_PERMISSIONS_PER_ROLE_MAX: u32 = 1_000;
/// Longest user or role name.
pub const AUTH_NAME_BYTES_MAX: u32 = 1_024;
/// etcd's default `--bcrypt-cost`, and bcrypt's bounds on it.
pub const BCRYPT_COST_DEFAULT: u32 = 10;
pub const BCRYPT_COST_MIN: u32 = 4;
pub const BCRYPT_COST_MAX: u32 = 31;
/// etcd's default `--auth-token-ttl`: a simple token unused this long stops working.
pub const AUTH_TOKEN_TTL_SECONDS_DEFAULT: u64 = 300;
/// Simple tokens a node keeps at most; when full, the one closest to expiry is dropped.
pub const AUTH_TOKENS_MAX: u32 = 100_000;
/// Longest JWT auth token looked at; longer ones are "invalid auth token" unread (ours are
/// well under 1 KiB even with RSA-4096 signatures).
pub const AUTH_JWT_BYTES_MAX: u32 = 8_192;

/// Limits a user may set at start-up. Every replica of a cluster must use the same values for
/// the ones that change apply results (`txn_ops_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub request_bytes_max: u64,
    pub txn_ops_max: u32,
    pub quota_backend_bytes: u64,
    /// Free bytes kept on the data dir's filesystem (capped at 1/`DISK_RESERVE_FS_DIVISOR` of
    /// it); 0 turns the check off.
    pub disk_reserve_bytes: u64,
    /// Revisions between two background checkpoints of the in-memory key index. None (the
    /// default, and what the server uses): the storage crate's rule, at least 262,144 and at
    /// least the index's entries (`aspen-storage` `index_checkpoint.rs`). Tests set it low so
    /// that a kill lands during a checkpoint; there is no flag for it.
    pub index_checkpoint_revisions: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_bytes_max: REQUEST_BYTES_MAX_DEFAULT,
            txn_ops_max: TXN_OPS_MAX_DEFAULT,
            quota_backend_bytes: QUOTA_BACKEND_BYTES_DEFAULT,
            disk_reserve_bytes: DISK_RESERVE_BYTES_DEFAULT,
            index_checkpoint_revisions: None,
        }
    }
}

impl Limits {
    /// Checks the relations between limits; returns one message per problem.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.request_bytes_max == 0 {
            problems.push("max-request-bytes must be greater than 0".to_string());
        }
        if self.request_bytes_max > REQUEST_BYTES_MAX_CONFIGURABLE {
            problems.push("max-request-bytes must be at most 64 MiB".to_string());
        }
        if self.txn_ops_max == 0 {
            problems.push("max-txn-ops must be greater than 0".to_string());
        }
        if self.quota_backend_bytes < 1024 * 1024 {
            problems.push("quota-backend-bytes must be at least 1 MiB".to_string());
        }
        if self.index_checkpoint_revisions == Some(0) {
            problems.push("index checkpoint revisions must be greater than 0".to_string());
        }
        if self.quota_backend_bytes > QUOTA_BACKEND_BYTES_MAX {
            problems.push(format!(
                "quota-backend-bytes must be at most {QUOTA_BACKEND_BYTES_MAX}"
            ));
        }
        problems
    }
}

/// TLS handshakes one listener runs at once; further connections wait in the kernel's backlog
/// until a slot frees (each handshake is bounded in time by
/// `aspen_tls::TLS_HANDSHAKE_TIMEOUT_MS`).
pub const TLS_HANDSHAKES_IN_FLIGHT_MAX: usize = 256;

const _: () = assert!(SNAPSHOT_FRAME_BYTES_MAX > REQUEST_BYTES_MAX_DEFAULT);
const _: () = assert!(SNAPSHOT_CHUNK_BYTES_MAX <= 4 * 1024 * 1024);
const _: () = assert!(LEASE_TTL_SECONDS_MIN < LEASE_TTL_SECONDS_MAX);
const _: () = assert!(LEASE_TTL_SECONDS_MIN == 2);
const _: () = assert!(WATCHERS_PER_STREAM_MAX <= WATCHERS_MAX);
const _: () = assert!(WATCH_SYNC_BATCH_EVENTS_MAX > 0 && WATCH_STREAM_QUEUE_MESSAGES_MAX > 1);
const _: () = assert!(QUOTA_BACKEND_BYTES_DEFAULT <= QUOTA_BACKEND_BYTES_MAX);
const _: () = assert!(DELETE_RANGE_CHUNK_KEYS_MAX > 1);
const _: () = assert!(REQUEST_BYTES_MAX_CONFIGURABLE == 64 * 1024 * 1024);
const _: () = assert!(LOG_WRITER_QUEUE_BYTES_MAX >= 2 * PEER_APPEND_BYTES_MAX);
const _: () = assert!(peer_message_bytes_max(REQUEST_BYTES_MAX_DEFAULT) < 17 * 1024 * 1024);

/// HTTP/2 streams one client connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS
/// on the client and metrics ports). etcd's clients multiplex everything over one connection
/// per endpoint, so this bounds a connection's in-flight requests, not the number of clients;
/// a client at the limit queues further calls itself. Each stream holds at most one request.
pub const HTTP2_CLIENT_STREAMS_CONCURRENT_MAX: u32 = 4096;
/// The same for a peer connection: replication streams, forwarded requests, snapshot chunks.
pub const HTTP2_PEER_STREAMS_CONCURRENT_MAX: u32 = 1024;
/// Flow-control window of one HTTP/2 stream, what a client may send before we read: one
/// largest request (1.5 MiB by default) arrives without waiting for a window update.
pub const HTTP2_STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
/// Flow-control window of a whole HTTP/2 connection: a few largest requests at once.
pub const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// Largest HTTP/2 frame payload we accept. 64 KiB instead of the protocol's 16 KiB floor:
/// a large put arrives in a quarter of the frames.
pub const HTTP2_FRAME_BYTES_MAX: u32 = 64 * 1024;
/// After a failed accept (typically out of file descriptors), the pause before the next try,
/// so that the accept loop does not spin.
pub const ACCEPT_ERROR_PAUSE_MS: u64 = 50;

/// etcd's `dbSizeInUse` is measured by walking the state database's pages (milliseconds on a
/// small store, seconds on a multi-GiB one). A measurement is reused for this many times as
/// long as it took, so that however often Status or /metrics is asked, the walks take at most
/// about 1 % of a core...
pub const DB_IN_USE_REUSE_PER_WALK: u32 = 100;
/// ...but for no longer than this.
pub const DB_IN_USE_REUSE_MS_MAX: u64 = 10 * 60 * 1000;
/// How long a Status call or a /metrics scrape waits for a new `dbSizeInUse` measurement
/// before it answers with the previous one (the measurement goes on in the background).
pub const DB_IN_USE_WAIT_MS: u64 = 300;
