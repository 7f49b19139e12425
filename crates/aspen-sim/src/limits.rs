//! Every bound and default of the simulator, in one place, with units last. Times are
//! simulated milliseconds: a seed's cost is the events it runs, not the time it covers.

/// Most nodes one simulated cluster holds (founders and spares).
pub const NODES_MAX: u64 = 7;

/// Raft timing in the simulation: the production defaults, so that the real timers race.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;
pub const ELECTION_TIMEOUT_MS: u64 = 1000;
/// Snapshot every this many applied entries, drawn per seed: small, so that snapshots are
/// built, purge the log and are sent to lagging followers while faults go on.
pub const SNAPSHOT_COUNT_MIN: u64 = 8;
pub const SNAPSHOT_COUNT_MAX: u64 = 40;

/// One-way network delay, drawn per message; a spike is a rare long delay.
pub const NET_DELAY_MS_MIN: u64 = 1;
pub const NET_DELAY_MS_MAX: u64 = 12;
pub const NET_DELAY_SPIKE_MS_MAX: u64 = 400;
/// Fault rates are in parts per million of messages.
pub const PPM: u32 = 1_000_000;
pub const NET_LOSS_PPM_MAX: u32 = 150_000;
pub const NET_DUPLICATE_PPM_MAX: u32 = 100_000;
pub const NET_SPIKE_PPM_MAX: u32 = 50_000;
/// How long a caller waits for a request the network lost before it gives up, when openraft
/// gave no deadline of its own (gRPC's call timeout plays this part in production).
pub const NET_RPC_TIMEOUT_MS: u64 = 2_000;
/// How long a refused connection (a partition that resets instead of dropping) takes to fail.
pub const NET_CONNECT_FAIL_MS: u64 = 5;
/// Snapshots travel in chunks this large (small, so that installs take several chunks).
pub const SNAPSHOT_CHUNK_BYTES: usize = 16 * 1024;
/// Largest snapshot the simulated network carries; the workload's stay far below.
pub const SNAPSHOT_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Forwarded requests (follower to leader) time out after this, as the gRPC forwarder does.
pub const FORWARD_TIMEOUT_MS: u64 = 3_000;

/// The run's phases: faults with clients, then healed with clients, then quiet convergence.
pub const FAULT_PHASE_MS: u64 = 12_000;
pub const HEALED_PHASE_MS: u64 = 3_000;
/// Longest the cluster may take to converge once healed before the seed fails (liveness).
pub const CONVERGE_WAIT_MS_MAX: u64 = 30_000;
/// Polling interval while waiting for leaders and convergence.
pub const POLL_INTERVAL_MS: u64 = 50;
/// Longest wait for the founding cluster to elect its first leader.
pub const FIRST_LEADER_WAIT_MS_MAX: u64 = 20_000;

/// Nemesis: time between fault actions, and how many it takes at most per run.
pub const NEMESIS_STEP_MS_MIN: u64 = 300;
pub const NEMESIS_STEP_MS_MAX: u64 = 1_500;
pub const NEMESIS_ACTIONS_MAX: u32 = 64;
/// Longest forward jump of the shared simulated clock.
pub const CLOCK_JUMP_MS_MAX: u64 = 3_000;

/// Clients and their requests.
pub const CLIENTS_MIN: u64 = 3;
pub const CLIENTS_MAX: u64 = 5;
pub const CLIENT_OPS_MAX: u32 = 120;
pub const CLIENT_TIMEOUT_MS: u64 = 4_000;
pub const CLIENT_THINK_MS_MAX: u64 = 40;
/// After a request that failed or timed out, a client backs off this long, as a real one
/// does. It also keeps the number of indeterminate writes (each one multiplies the states the
/// linearizability check must consider) in proportion to the faults, not to the clients' speed.
pub const CLIENT_BACKOFF_MS_MIN: u64 = 100;
pub const CLIENT_BACKOFF_MS_MAX: u64 = 1_000;
/// Keys the workload touches: few, so that operations conflict, and enough that each key's
/// sub-history (checked on its own) stays small.
pub const WORKLOAD_KEYS: u64 = 8;

/// Watchers per run, drawn per seed: each follows the whole key set (prefix `k`) through one
/// node's watch hub, resuming elsewhere when its node crashes or leaves.
pub const WATCHERS_MIN: u64 = 1;
pub const WATCHERS_MAX: u64 = 3;
/// Events one watcher records for the no-gap check; past it the watcher stops recording and
/// its check covers the revisions it recorded. A run makes at most `CLIENTS_MAX *
/// CLIENT_OPS_MAX` (600) revisions, one event each, so the cap is never reached today.
pub const WATCH_EVENTS_RECORDED_MAX: usize = 4_096;
/// How often a watcher checks that its node is still up and a member, asks for a progress
/// notice (which tells it what it has covered), and may move to another node.
pub const WATCH_TICK_MS: u64 = 100;
/// Chance per tick that a watcher drops its stream and resumes on another node anyway, as a
/// client does when its connection breaks: about once every 5 simulated seconds.
pub const WATCH_SWITCH_PPM: u32 = 20_000;
/// Ordering and duplicate violations one watcher records in words (the rest are counted).
pub const WATCH_VIOLATIONS_MAX: usize = 16;
/// After convergence, how long every watcher has to report (by a progress notice) that it has
/// covered the converged revision. The lag allowed at the end is zero revisions: the cluster is
/// healed and every member has applied everything, so a watcher on a member gets every event
/// once its hub replays history; the bound is time (catch-up pages every
/// `WATCH_SYNC_INTERVAL_MS`, one `WATCH_TICK_MS` per progress notice), not revisions.
pub const WATCH_CATCH_UP_WAIT_MS_MAX: u64 = 10_000;
/// With `--drop-watch-event` (the planted watch bug), watcher 1 loses its event with this
/// index (0-based, counted over everything it received) and moves on as if it had seen it.
pub const WATCH_DROPPED_EVENT_INDEX: u64 = 5;

/// How often the revision monitor samples every replica.
pub const MONITOR_INTERVAL_MS: u64 = 20;

/// Wall-clock budget for one seed's linearizability check.
pub const CHECK_TIME_BUDGET_MS: u64 = 30_000;

/// Events kept, in order, for a failing seed's report.
pub const TRACE_TAIL_EVENTS_MAX: usize = 64;
/// Most keys one convergence comparison reads (the workload uses `WORKLOAD_KEYS`).
pub const CONVERGE_KEYS_MAX: u64 = 1_000;

const _: () = assert!(SNAPSHOT_COUNT_MIN > 0 && SNAPSHOT_COUNT_MIN <= SNAPSHOT_COUNT_MAX);
const _: () = assert!(NET_DELAY_MS_MIN > 0 && NET_DELAY_MS_MIN <= NET_DELAY_MS_MAX);
const _: () = assert!(NET_LOSS_PPM_MAX < PPM && NET_DUPLICATE_PPM_MAX < PPM);
const _: () = assert!(HEARTBEAT_INTERVAL_MS * 3 < ELECTION_TIMEOUT_MS);
const _: () = assert!(CLIENTS_MIN > 0 && CLIENTS_MIN <= CLIENTS_MAX);
const _: () = assert!(NEMESIS_STEP_MS_MIN <= NEMESIS_STEP_MS_MAX);
const _: () = assert!(WATCHERS_MIN > 0 && WATCHERS_MIN <= WATCHERS_MAX);

/// The sweep runs its seeds in worker processes (re-executions of the same binary), each at
/// most this many seeds, so that whatever a seed leaves behind in the heap is returned to the
/// system when its worker exits: the sweep's memory does not grow with the seed count.
pub const SWEEP_SEEDS_PER_WORKER: u64 = 20;
/// A worker whose resident memory passes this fails the seed it is running (with its replay
/// line) and is killed; the sweep goes on with a new worker at the next seed. A seed uses
/// tens of MiB; a worker that has run `SWEEP_SEEDS_PER_WORKER` seeds, a few hundred.
pub const SWEEP_WORKER_RSS_MIB_MAX: u64 = 2_048;
/// Wall-clock budget of one seed in the sweep (a seed takes well under a second, and its
/// linearizability check at most `CHECK_TIME_BUDGET_MS`): past it the seed fails, with its
/// replay line, and its worker is killed.
pub const SWEEP_SEED_WALL_MS_MAX: u64 = 120_000;
/// How often the sweep samples its worker's memory and time.
pub const SWEEP_POLL_MS: u64 = 200;
/// How often the sweep prints a progress line (stderr).
pub const SWEEP_PROGRESS_MS: u64 = 30_000;

const _: () = assert!(SWEEP_SEEDS_PER_WORKER > 0);
const _: () = assert!(SWEEP_SEED_WALL_MS_MAX > CHECK_TIME_BUDGET_MS);

/// Lease clients per run, drawn per seed; each grants leases one after another.
pub const LEASE_CLIENTS_MIN: u64 = 1;
pub const LEASE_CLIENTS_MAX: u64 = 2;
/// Leases one lease client grants at most in a run.
pub const LEASES_PER_CLIENT_MAX: u64 = 64;
/// TTL drawn per lease, in seconds (the node raises it to its minimum, 2 s with the
/// simulation's 1 s election timeout): short, so that leases expire during the run.
pub const LEASE_TTL_SECONDS_MAX: u64 = 4;
/// Keys attached to one lease: at least two, so that a revocation that deletes them apart
/// is seen.
pub const LEASE_KEYS_MIN: u64 = 2;
pub const LEASE_KEYS_MAX: u64 = 4;
/// Chance that one of a lease's keys is detached again (put with no lease) before the end:
/// the revocation must spare it.
pub const LEASE_DETACH_PPM: u32 = 250_000;
/// Keep-alives sent per lease at most, every third of its TTL.
pub const LEASE_KEEP_ALIVES_MAX: u64 = 4;
/// Chance that a lease is revoked by its client; otherwise it is left to expire.
pub const LEASE_REVOKE_PPM: u32 = 400_000;

/// The compactor: time between compactions, how far below the head it compacts (in
/// revisions), and how many compactions one run makes at most.
pub const COMPACT_INTERVAL_MS_MIN: u64 = 800;
pub const COMPACT_INTERVAL_MS_MAX: u64 = 3_000;
pub const COMPACT_BEHIND_HEAD_MAX: u64 = 8;
pub const COMPACTIONS_MAX: u64 = 64;
/// When a watcher reconnects, the chance that it first stays away (as a client whose
/// connection broke), and for how long at most: long enough for a compaction to pass it.
pub const WATCH_AWAY_PPM: u32 = 500_000;
pub const WATCH_AWAY_MS_MAX: u64 = 2_500;

const _: () = assert!(LEASE_CLIENTS_MIN > 0 && LEASE_CLIENTS_MIN <= LEASE_CLIENTS_MAX);
const _: () = assert!(LEASE_KEYS_MIN >= 2 && LEASE_KEYS_MIN <= LEASE_KEYS_MAX);
const _: () = assert!(COMPACT_INTERVAL_MS_MIN <= COMPACT_INTERVAL_MS_MAX);
/// After the clients stop, how long every lease left (nobody keeps it alive) may take to
/// expire before the seed fails: the longest TTL, a leader change (a new leader restarts
/// every deadline), and the lessor's check interval, with room.
pub const LEASE_DRAIN_WAIT_MS_MAX: u64 = 20_000;

/// Share of the nemesis's actions that are disk faults (a failing fsync, a full disk, space
/// freed), in percent.
pub const DISK_FAULT_ACTIONS_PERCENT: u64 = 10;
/// The supervisor (a process manager: systemd, Kubernetes) looks at every node this often.
pub const SUPERVISOR_TICK_MS: u64 = 100;
/// A node that hit a disk fault (a failed fsync, a refused growth) must have stopped its
/// Raft within this long, or the seed fails: it would be carrying on as if the write landed.
pub const DISK_FAULT_STOP_MS_MAX: u64 = 2_000;
/// How long the supervisor waits before it restarts a node that stopped.
pub const SUPERVISOR_RESTART_DELAY_MS: u64 = 300;

/// Each node's log journal (`aspen_storage::journal`): far smaller than a real node's 8 MiB, so
/// that runs checkpoint every few dozen rounds and crashes land on both sides of a checkpoint.
pub const LOG_JOURNAL_BYTES: u64 = 256 * 1024;
