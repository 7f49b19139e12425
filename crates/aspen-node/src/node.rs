//! The node handle: writes through Raft (forwarded to the leader when needed), reads from the
//! local MVCC store after a ReadIndex barrier, and membership changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use aspen_core::command::{AlarmAction, AlarmType};
use aspen_core::convert::{micros, millis};
use aspen_core::limits::{
    COMPACT_STEP_PAUSE_MS, COMPACT_STEP_PAUSE_PER_STEP_TIME, FORWARD_WRITE_BATCH_WRITES_MAX, Limits,
};
use aspen_core::response::RangeResult;
use aspen_core::{ApplyError, ApplyResponse, Command, NodeId, NodeInfo, RangeRequest, TypeConfig};
use aspen_storage::state_machine::AppliedState;
use aspen_storage::{MvccReader, StateMachine, StorageBackend, Store};
use aspen_watch::{HubOptions, WatchHub};
use futures_util::future::{BoxFuture, join_all};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{ChangeMembershipError, ClientWriteError, LinearizableReadError, RaftError};
use openraft::{ChangeMembers, RaftNetworkFactory, ReadPolicy, ServerState};

use crate::error::NodeError;
use crate::forward::{ForwardRequest, ForwardResponse, Forwarder};
use crate::forward_batch::{BatchResult, WriteBatchSink, WriteBatcher};
use crate::lessor::Lessor;
use crate::metrics::NodeMetrics;
use crate::raft_config::RaftTiming;
use crate::read_batch::{ReadBatcher, ReadIndexResult, ReadIndexSource};

pub type AspenRaft = openraft::Raft<TypeConfig, StateMachine>;

/// How long a request waits for a leader to appear before failing with "no leader".
pub const LEADER_WAIT_MS_MAX: u64 = 5_000;
/// How long a follower waits for its state machine to reach a read index.
pub const READ_INDEX_WAIT_MS_MAX: u64 = 5_000;
/// How often `Node::fatal` looks whether Raft has stopped on its own.
pub const RAFT_STOP_POLL_MS: u64 = 100;
/// Attempts to reach a leader (each after a leader change) before giving up.
pub const FORWARD_ATTEMPTS_MAX: u32 = 3;
/// How often the leader is looked at to count leader changes for the metrics.
pub const LEADER_SAMPLE_INTERVAL_MS: u64 = 250;

/// A storage warning is logged for the first refused write and then every this many.
const DISK_LOW_LOG_EVERY: u64 = 1000;

/// Why Raft stopped on its own ([`Node::fatal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatalStop {
    /// The first I/O failure was a full filesystem (ENOSPC, EDQUOT).
    pub disk_full: bool,
    /// The first I/O failure of the node's files, if one was seen.
    pub io_failure: Option<String>,
    /// openraft's error.
    pub raft_error: String,
}

#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub id: NodeId,
    pub info: NodeInfo,
    pub cluster_id: u64,
    pub cluster_name: String,
    pub timing: RaftTiming,
    pub backend: StorageBackend,
    pub limits: Limits,
}

/// Switches for tests and the simulator; every one is off by default and in production.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TestingOptions {
    /// A planted bug for checking the checkers: linearizable reads are served from local
    /// state without the ReadIndex barrier, so a follower or a deposed leader answers stale.
    pub unsafe_local_reads_for_testing: bool,
    /// A planted bug for checking the simulator's lease check: the lessor deletes one key of
    /// each expired lease that holds two or more in a revision of its own, before revoking
    /// the lease (a non-atomic expiry).
    pub split_lease_expiry_for_testing: bool,
}

/// A member as the Cluster API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub info: NodeInfo,
    pub is_learner: bool,
}

/// A running member. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    options: NodeOptions,
    raft: AspenRaft,
    reader: MvccReader,
    store: Store,
    /// A handle on the state machine Raft owns, for receiving snapshots into its store.
    state_machine: StateMachine,
    forwarder: Arc<dyn Forwarder>,
    metrics: Arc<NodeMetrics>,
    /// Watchers of this node, fed by its own state machine (followers serve watches too).
    hub: WatchHub,
    lessor: Lessor,
    /// Linearizable reads while this node leads (its own, and followers' forwarded ReadIndex):
    /// one quorum confirmation per round.
    leader_reads: ReadBatcher,
    /// Linearizable reads while another node leads: one forwarded ReadIndex per round.
    forwarded_reads: ReadBatcher,
    /// Writes while another node leads, gathered into batches for it.
    forwarded_writes: WriteBatcher,
    testing: TestingOptions,
    /// Starts as derived from this member's configuration; see `adopt_cluster_id_from_leader`.
    cluster_id: std::sync::atomic::AtomicU64,
    /// When a leader last reached this node (an append or a snapshot), in milliseconds since
    /// `started`: see `has_live_leader`.
    leader_contact_ms: std::sync::atomic::AtomicU64,
    started: Instant,
}

/// The leader's source of read indexes: one quorum confirmation (`ensure_linearizable`).
struct LeaderReadIndex(Weak<NodeInner>);

impl ReadIndexSource for LeaderReadIndex {
    fn read_index(&self) -> BoxFuture<'static, ReadIndexResult> {
        let weak = self.0.clone();
        Box::pin(async move {
            let inner = weak.upgrade().ok_or(NodeError::Stopped)?;
            Node { inner }.leader_read_index().await
        })
    }
}

/// A follower's source of read indexes: one `ForwardRequest::ReadIndex` to the current leader.
struct ForwardedReadIndex(Weak<NodeInner>);

impl ReadIndexSource for ForwardedReadIndex {
    fn read_index(&self) -> BoxFuture<'static, ReadIndexResult> {
        let weak = self.0.clone();
        Box::pin(async move {
            let node = Node {
                inner: weak.upgrade().ok_or(NodeError::Stopped)?,
            };
            let leader = node.leader_id().ok_or(NodeError::NoLeader)?;
            if leader == node.id() {
                // Became the leader since the reads registered: they retry on `leader_reads`.
                return Err(NodeError::LeaderChanged);
            }
            match node.forward_to(leader, ForwardRequest::ReadIndex).await? {
                ForwardResponse::ReadIndex(index) => Ok(index),
                other => Err(NodeError::Peer(format!(
                    "unexpected forward response {other:?}"
                ))),
            }
        })
    }
}

/// Where a follower's write batches go: one `ForwardRequest::Writes` to `leader`.
struct ForwardedWrites(Weak<NodeInner>);

impl WriteBatchSink for ForwardedWrites {
    fn send(&self, leader: NodeId, commands: Vec<Command>) -> BoxFuture<'static, BatchResult> {
        let weak = self.0.clone();
        Box::pin(async move {
            let node = Node {
                inner: weak.upgrade().ok_or(NodeError::Stopped)?,
            };
            match node
                .forward_to(leader, ForwardRequest::Writes(commands))
                .await?
            {
                ForwardResponse::Writes(results) => Ok(results),
                other => Err(NodeError::Peer(format!(
                    "unexpected forward response {other:?}"
                ))),
            }
        })
    }
}

impl Node {
    /// Opens storage and starts Raft. The caller starts the peer service and, for a new
    /// cluster, calls [`Node::initialize`].
    pub async fn start<N>(
        options: NodeOptions,
        network: N,
        forwarder: Arc<dyn Forwarder>,
    ) -> Result<Node, NodeError>
    where
        N: RaftNetworkFactory<TypeConfig>,
        N::Network:
            openraft::network::NetSnapshot<TypeConfig, SnapshotData = aspen_storage::SnapshotData>,
    {
        let (log_store, state_machine) =
            aspen_storage::open_storage(&options.backend, options.limits)?;
        let testing = TestingOptions::default();
        Node::start_with_storage(
            options,
            log_store,
            state_machine,
            network,
            forwarder,
            testing,
        )
        .await
    }

    /// As [`Node::start`], on storage the caller opened (the simulator's disk, through
    /// `aspen_storage::open_storage_with_file_backend`); `options.backend` is not used.
    pub async fn start_with_storage<N>(
        options: NodeOptions,
        log_store: aspen_storage::LogStore,
        state_machine: StateMachine,
        network: N,
        forwarder: Arc<dyn Forwarder>,
        testing: TestingOptions,
    ) -> Result<Node, NodeError>
    where
        N: RaftNetworkFactory<TypeConfig>,
        N::Network:
            openraft::network::NetSnapshot<TypeConfig, SnapshotData = aspen_storage::SnapshotData>,
    {
        let reader = state_machine.reader();
        let store = state_machine.store().clone();
        let state_machine_handle = state_machine.clone();
        // Subscribe before Raft starts applying, so no committed batch goes unannounced.
        let hub = WatchHub::new(reader.clone(), HubOptions::default())?;
        state_machine_handle.set_event_sink(hub.event_sink());
        hub.spawn_sync_task();
        let lessor = Lessor::new(options.id, options.timing.election_timeout_ms);
        let config = options
            .timing
            .to_openraft(&options.cluster_name)
            .map_err(NodeError::Raft)?;
        let log_switch = log_store.clone();
        let raft = AspenRaft::new(options.id, config, network, log_store, state_machine)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        let metrics = Arc::<NodeMetrics>::default();
        let node = Node {
            inner: Arc::new_cyclic(|weak| NodeInner {
                cluster_id: std::sync::atomic::AtomicU64::new(options.cluster_id),
                leader_contact_ms: std::sync::atomic::AtomicU64::new(0),
                started: Instant::now(),
                options,
                raft,
                reader,
                store,
                state_machine: state_machine_handle,
                forwarder,
                leader_reads: ReadBatcher::new(
                    LeaderReadIndex(weak.clone()),
                    metrics.read_index_leader.clone(),
                ),
                forwarded_reads: ReadBatcher::new(
                    ForwardedReadIndex(weak.clone()),
                    metrics.read_index_forwarded.clone(),
                ),
                forwarded_writes: WriteBatcher::new(
                    ForwardedWrites(weak.clone()),
                    metrics.forward_write_batches.clone(),
                ),
                metrics,
                hub,
                lessor,
                testing,
            }),
        };
        node.spawn_background_tasks();
        node.spawn_log_inline_switch(log_switch);
        node.spawn_lease_task();
        node.spawn_compactor();
        node.spawn_snapshot_scheduler();
        Ok(node)
    }

    /// Initializes a new cluster with `members` as voters, unless this node already has state.
    /// Every founding member may call it with the same list.
    pub async fn initialize(&self, members: BTreeMap<NodeId, NodeInfo>) -> Result<bool, NodeError> {
        assert!(
            members.contains_key(&self.id()),
            "a founding member must be in the initial cluster"
        );
        let initialized = self
            .inner
            .raft
            .is_initialized()
            .await
            .map_err(|e| self.raft_stopped_error(e.to_string()))?;
        if initialized {
            return Ok(false);
        }
        match self.inner.raft.initialize(members).await {
            Ok(()) => Ok(true),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(false),
            Err(e) => Err(self.raft_stopped_error(e.to_string())),
        }
    }

    /// A Raft call's error, named by the storage failure that stopped Raft if there was one
    /// (a full disk at start-up, re-applying the log, is reported as such).
    fn raft_stopped_error(&self, raft_error: String) -> NodeError {
        match self.inner.store.io_failure() {
            Some(failure) if failure.disk_full => NodeError::DiskFull(failure.message),
            Some(failure) => NodeError::Storage(failure.message),
            None => NodeError::Raft(raft_error),
        }
    }

    pub fn id(&self) -> NodeId {
        self.inner.options.id
    }

    pub fn cluster_id(&self) -> u64 {
        self.inner.cluster_id.load(Ordering::Relaxed)
    }

    /// A member that joined an existing cluster derived its cluster id from its own member
    /// list; it adopts the founders' id from the leader. Bounded: gives up after
    /// `FORWARD_ATTEMPTS_MAX` leaders that could not answer.
    pub async fn adopt_cluster_id_from_leader(&self) -> Result<u64, NodeError> {
        let answer = self
            .on_leader(
                || async { Ok(ForwardResponse::ClusterId(self.cluster_id())) },
                |leader| self.forward_to(leader, ForwardRequest::ClusterId),
            )
            .await?;
        match answer {
            ForwardResponse::ClusterId(id) => {
                self.inner.cluster_id.store(id, Ordering::Relaxed);
                Ok(id)
            }
            other => Err(NodeError::Peer(format!(
                "unexpected forward response {other:?}"
            ))),
        }
    }

    /// The id of a member with `peer_urls` in this cluster: the id that member's process
    /// derives from its own flags (peer URLs and cluster token), so MemberAdd and the joining
    /// process agree without asking each other.
    ///
    /// # Panics
    /// If `peer_urls` is empty; callers validate requests first.
    pub fn member_id_for(&self, peer_urls: &[String]) -> NodeId {
        aspen_core::ids::member_id("", peer_urls, &self.inner.options.cluster_name)
    }

    pub fn raft(&self) -> &AspenRaft {
        &self.inner.raft
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// etcd's `dbSizeInUse`. Measuring it walks the state database's pages, seconds on a
    /// multi-GiB store, so a measurement is reused for 100 times as long as it took (at most
    /// 10 min), at most one runs at a time (off the async workers), and a caller waits for a
    /// new one at most
    /// `DB_IN_USE_WAIT_MS`; past that it gets the previous value (the file's size before the
    /// first measurement) while the measurement finishes in the background.
    pub async fn db_size_in_use_bytes(&self) -> u64 {
        let store = self.inner.store.clone();
        let (last, claimed) = store.db_size_in_use_last();
        let fallback = last.unwrap_or_else(|| store.db_size_bytes());
        if !claimed {
            return fallback;
        }
        let measuring = store.clone();
        let measurement = run_blocking(move || measuring.measure_db_size_in_use_bytes());
        let wait = Duration::from_millis(aspen_core::limits::DB_IN_USE_WAIT_MS);
        match tokio::time::timeout(wait, measurement).await {
            Ok(Ok(Ok(bytes))) => bytes,
            Ok(Ok(Err(error))) => {
                tracing::warn!(%error, "cannot measure the state database's bytes in use");
                fallback
            }
            Ok(Err(_)) | Err(_) => fallback,
        }
    }

    pub fn state_machine(&self) -> &StateMachine {
        &self.inner.state_machine
    }

    pub fn reader(&self) -> &MvccReader {
        &self.inner.reader
    }

    pub fn watch_hub(&self) -> &WatchHub {
        &self.inner.hub
    }

    pub fn lessor(&self) -> &Lessor {
        &self.inner.lessor
    }

    pub(crate) fn testing(&self) -> TestingOptions {
        self.inner.testing
    }

    pub fn metrics(&self) -> &Arc<NodeMetrics> {
        &self.inner.metrics
    }

    pub fn limits(&self) -> Limits {
        self.inner.options.limits
    }

    pub fn raft_metrics(&self) -> openraft::RaftMetrics<TypeConfig> {
        self.inner.raft.metrics().borrow_watched().clone()
    }

    pub fn current_term(&self) -> u64 {
        self.inner.raft.metrics().borrow_watched().current_term
    }

    pub fn leader_id(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow_watched().current_leader
    }

    pub fn is_leader(&self) -> bool {
        self.leader_id() == Some(self.id())
    }

    /// The peer layer calls this for every append or snapshot a leader sends.
    pub fn note_leader_contact(&self) {
        let now_ms = millis(self.inner.started.elapsed());
        self.inner
            .leader_contact_ms
            .fetch_max(now_ms, Ordering::Relaxed);
    }

    /// Whether this node has a leader in etcd's sense (`Leader() != None`): openraft keeps a
    /// follower's last leader while it only pre-votes, so a leader also counts as gone once
    /// it has not been heard from for the longest election timeout (a follower), or a leader
    /// has had no quorum acknowledge it for that long (etcd's leaders step down then, under
    /// CheckQuorum). What /health, `hasleader` and `etcd_server_has_leader` report.
    pub fn has_live_leader(&self) -> bool {
        let metrics = self.inner.raft.metrics().borrow_watched().clone();
        let Some(leader) = metrics.current_leader else {
            return false;
        };
        let silence_ms_max = self.inner.options.timing.election_timeout_ms * 2;
        if leader == self.id() {
            // The trait gives `elapsed` to tokio's Instant; madsim's has it inherently, so the
            // import is unused there.
            #[allow(unused_imports)]
            use openraft::Instant as _;
            // A sole voter is its own quorum: openraft records no acknowledgement for it.
            let mut voters = metrics.membership_config.membership().voter_ids();
            if voters.next() == Some(self.id()) && voters.next().is_none() {
                return true;
            }
            return metrics
                .last_quorum_acked
                .is_none_or(|acked| millis(acked.elapsed()) <= silence_ms_max);
        }
        let now_ms = millis(self.inner.started.elapsed());
        let contact_ms = self.inner.leader_contact_ms.load(Ordering::Relaxed);
        now_ms.saturating_sub(contact_ms) <= silence_ms_max
    }

    /// Proposes `command` and returns its result once applied, forwarding to the leader when
    /// this node is not it.
    pub async fn write(&self, command: Command) -> Result<ApplyResponse, NodeError> {
        let started = Instant::now();
        let result = self.write_inner(command).await;
        let metrics = &self.inner.metrics;
        match &result {
            Ok(_) => {
                metrics.proposals_committed.fetch_add(1, Ordering::Relaxed);
                metrics
                    .proposal_latency
                    .observe_us(micros(started.elapsed()));
            }
            Err(_) => {
                metrics.proposals_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn write_inner(&self, command: Command) -> Result<ApplyResponse, NodeError> {
        let answer = self
            .on_leader(
                || async {
                    Ok(ForwardResponse::Write(
                        self.write_as_leader(command.clone()).await?,
                    ))
                },
                |leader| self.forward_write(leader, &command),
            )
            .await?;
        match answer {
            ForwardResponse::Write(response) => Ok(response),
            other => Err(NodeError::Peer(format!(
                "unexpected forward response {other:?}"
            ))),
        }
    }

    /// A write handed to `leader`: in a batch with other writes waiting, when its reply is
    /// small (`forward_batch.rs`), else alone.
    async fn forward_write(
        &self,
        leader: NodeId,
        command: &Command,
    ) -> Result<ForwardResponse, NodeError> {
        if command.reply_is_small() {
            let forwarded = self.inner.forwarded_writes.forward(leader, command.clone());
            return forwarded.await.map(ForwardResponse::Write);
        }
        self.forward_to(leader, ForwardRequest::Write(command.clone()))
            .await
    }

    /// The leader's side of a write: quota check, then Raft.
    pub(crate) async fn write_as_leader(
        &self,
        command: Command,
    ) -> Result<ApplyResponse, NodeError> {
        if command.may_grow_store() && self.quota_exceeded() {
            self.raise_no_space().await?;
            return Err(NodeError::Apply(ApplyError::NoSpace));
        }
        if command.may_grow_store() {
            self.refuse_if_disk_low()?;
        }
        let is_put = matches!(command, Command::Put(_));
        let command = self.inner.lessor.prepare(command, &self.inner.reader)?;
        let clock = self.inner.store.stage_clock();
        let proposed_ns = clock.now_ns();
        match self.inner.raft.client_write(command).await {
            Ok(response) => {
                self.inner.lessor.observe(&response.data);
                if is_put {
                    self.observe_put_stages(response.log_id.index, proposed_ns);
                }
                Ok(response.data)
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(NodeError::LeaderChanged)
            }
            Err(RaftError::APIError(e)) => Err(NodeError::Raft(e.to_string())),
            // Raft stopped (a storage failure): the server exits; etcd's "server stopped"
            // sends the client to another member.
            Err(RaftError::Fatal(e)) => {
                tracing::warn!(error = %e, "write failed: raft has stopped");
                Err(NodeError::Stopped)
            }
        }
    }

    /// Below the disk reserve (`--disk-reserve-bytes`) plus what the store's files still owe
    /// the disk (log entries taken and not yet written into them), writes that grow the store
    /// fail with etcd's NOSPACE error. Unlike the quota's alarm this is this leader's own, not
    /// replicated, and it clears by itself once there is room again: nothing to disarm.
    /// Deletes, compaction and defragmentation still run, to make that room.
    fn refuse_if_disk_low(&self) -> Result<(), NodeError> {
        let Some(low) = self.inner.store.disk_low() else {
            return Ok(());
        };
        let metrics = &self.inner.metrics;
        let refused = metrics.disk_low_refusals.fetch_add(1, Ordering::Relaxed);
        if refused.is_multiple_of(DISK_LOW_LOG_EVERY) {
            tracing::warn!(
                free_bytes = low.free_bytes,
                reserve_bytes = low.reserve_bytes,
                owed_bytes = low.owed_bytes,
                refused_so_far = refused + 1,
                "the data dir's disk is nearly full: refusing writes that grow the store \
                 (etcdserver: mvcc: database space exceeded) until there is room again"
            );
        }
        Err(NodeError::Apply(ApplyError::NoSpace))
    }

    /// The leader's stages of the put at `index`, proposed at `proposed_ns` and answered now.
    fn observe_put_stages(&self, index: u64, proposed_ns: u64) {
        let clock = self.inner.store.stage_clock();
        let answered_ns = clock.now_ns();
        if let Some(times) = clock.times(index) {
            let stages = &self.inner.metrics.put_stages;
            stages.observe_write(proposed_ns, &times, answered_ns);
        }
    }

    /// The state file's length against the quota: read from an atomic the storage backend
    /// keeps, so every write checks the exact size and nothing samples it on a timer.
    fn quota_exceeded(&self) -> bool {
        self.inner.store.quota_exceeded()
    }

    async fn raise_no_space(&self) -> Result<(), NodeError> {
        let state = self.inner.reader.applied_state()?;
        if state.no_space() {
            return Ok(());
        }
        tracing::warn!(
            member = self.id(),
            "database space exceeded the quota: raising NOSPACE"
        );
        let alarm = Command::Alarm {
            action: AlarmAction::Activate,
            member_id: self.id(),
            alarm: AlarmType::NoSpace,
        };
        self.inner
            .raft
            .client_write(alarm)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        Ok(())
    }

    /// Waits until this member has physically removed what a compaction at `revision` made
    /// unreadable (etcd's `physical` flag).
    pub async fn wait_compacted(&self, revision: u64) -> Result<(), NodeError> {
        Ok(self.inner.state_machine.wait_compacted(revision).await?)
    }

    /// Serves a range; linearizable unless `request.serializable`.
    pub async fn range(&self, request: &RangeRequest) -> Result<(RangeResult, u64), NodeError> {
        if !request.serializable && !self.inner.testing.unsafe_local_reads_for_testing {
            self.read_barrier().await?;
        }
        Ok(self.inner.reader.range(request)??)
    }

    /// Waits until this node's state machine reflects every write acknowledged before the call
    /// (ReadIndex): on the leader directly, on a follower via the leader's read index. Reads
    /// are batched (`read_batch`): one round, started after this call, serves every read
    /// waiting for it.
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        let read_index = self
            .on_leader(
                || self.inner.leader_reads.read_index(),
                |_| self.inner.forwarded_reads.read_index(),
            )
            .await?;
        self.wait_applied(read_index).await
    }

    async fn leader_read_index(&self) -> Result<u64, NodeError> {
        match self
            .inner
            .raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
        {
            Ok(read_log_id) => Ok(read_log_id.index()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => {
                Err(NodeError::LeaderChanged)
            }
            Err(e) => Err(NodeError::Raft(e.to_string())),
        }
    }

    async fn wait_applied(&self, index: u64) -> Result<(), NodeError> {
        let applied = self
            .inner
            .raft
            .metrics()
            .borrow_watched()
            .last_applied
            .as_ref()
            .map(|id| id.index);
        if applied.is_none_or(|a| a < index) {
            let wait = self
                .inner
                .raft
                .wait(Some(Duration::from_millis(READ_INDEX_WAIT_MS_MAX)));
            wait.applied_index_at_least(Some(index), "read index")
                .await
                .map_err(|_| NodeError::Timeout)?;
        }
        self.ensure_state_machine_applied(index)
    }

    /// Fails unless the state machine that reads use holds every entry up to `index`, which
    /// openraft's metrics say it applied. They agree on a healthy node (an apply batch commits
    /// before openraft hears of it); openraft reports a range applied even when the log read
    /// behind the apply came back short, and a read served then would be stale (the
    /// simulator's seeds 15023 and 10920, whose cause `LogStore::read_entries` now stops). The
    /// check reads the store's in-memory mirror of its applied index (set after each commit)
    /// and turns any such gap into a refused read.
    fn ensure_state_machine_applied(&self, index: u64) -> Result<(), NodeError> {
        let applied = self.inner.reader.store().applied_index();
        if applied < index {
            tracing::error!(
                applied,
                read_index = index,
                "the state machine is behind the index Raft reports applied; read refused"
            );
            return Err(NodeError::Storage(format!(
                "the state machine has applied index {applied}, behind the read index {index} \
                 that raft reports applied"
            )));
        }
        Ok(())
    }

    /// The current leader, waiting up to `LEADER_WAIT_MS_MAX` for one.
    pub async fn wait_for_leader(&self) -> Result<NodeId, NodeError> {
        if let Some(leader) = self.leader_id() {
            return Ok(leader);
        }
        let mut metrics = self.inner.raft.metrics();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(LEADER_WAIT_MS_MAX);
        loop {
            if let Some(leader) = metrics.borrow_watched().current_leader {
                return Ok(leader);
            }
            // `timeout` with the time left, not `timeout_at`: madsim (the simulator's build)
            // has no `timeout_at`.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, metrics.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(NodeError::Stopped),
                Err(_) => return Err(NodeError::NoLeader),
            }
        }
    }

    pub(crate) async fn forward_to(
        &self,
        leader: NodeId,
        request: ForwardRequest,
    ) -> Result<ForwardResponse, NodeError> {
        let info = self.member_info(leader).ok_or(NodeError::NoLeader)?;
        let proposals = match &request {
            ForwardRequest::Writes(commands) => commands.len() as u64,
            _ => 1,
        };
        self.inner
            .metrics
            .proposals_forwarded
            .fetch_add(proposals, Ordering::Relaxed);
        self.inner.forwarder.forward(leader, info, request).await
    }

    fn member_info(&self, id: NodeId) -> Option<NodeInfo> {
        let metrics = self.inner.raft.metrics();
        let membership = metrics.borrow_watched().membership_config.clone();
        membership.membership().get_node(&id).cloned()
    }

    /// Serves a request forwarded by a follower; only the leader accepts them.
    pub async fn handle_forward(
        &self,
        request: ForwardRequest,
    ) -> Result<ForwardResponse, NodeError> {
        if !self.is_leader() {
            return Err(NodeError::LeaderChanged);
        }
        match request {
            ForwardRequest::Write(command) => {
                Ok(ForwardResponse::Write(self.write_as_leader(command).await?))
            }
            ForwardRequest::Writes(commands) => {
                if commands.len() > FORWARD_WRITE_BATCH_WRITES_MAX as usize {
                    return Err(NodeError::Peer(format!(
                        "a batch of {} forwarded writes, more than {FORWARD_WRITE_BATCH_WRITES_MAX}",
                        commands.len()
                    )));
                }
                let writes = commands.into_iter().map(|c| self.write_as_leader(c));
                Ok(ForwardResponse::Writes(join_all(writes).await))
            }
            // Joins the leader's next round, with its own reads and other followers'.
            ForwardRequest::ReadIndex => Ok(ForwardResponse::ReadIndex(
                self.inner.leader_reads.read_index().await?,
            )),
            ForwardRequest::ClusterId => Ok(ForwardResponse::ClusterId(self.cluster_id())),
            lease @ (ForwardRequest::LeaseKeepAlive { .. }
            | ForwardRequest::LeaseTimeToLive { .. }) => self.lease_as_leader(lease).await,
            other => {
                self.change_membership_as_leader(other).await?;
                Ok(ForwardResponse::Done)
            }
        }
    }

    /// The members, voters first, as the leader last replicated them.
    pub fn members(&self) -> Vec<Member> {
        let metrics = self.inner.raft.metrics();
        let stored = metrics.borrow_watched().membership_config.clone();
        let membership = stored.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, info)| Member {
                id: *id,
                info: info.clone(),
                is_learner: !voters.contains(id),
            })
            .collect()
    }

    /// Adds, promotes, removes or updates a member, forwarding to the leader if needed.
    pub async fn change_membership(&self, request: ForwardRequest) -> Result<(), NodeError> {
        self.on_leader(
            || self.change_membership_as_leader(request.clone()),
            |leader| {
                let forwarded = self.forward_to(leader, request.clone());
                async move { forwarded.await.map(|_| ()) }
            },
        )
        .await
    }

    async fn change_membership_as_leader(&self, request: ForwardRequest) -> Result<(), NodeError> {
        let members = self.members();
        let find = |id: NodeId| members.iter().find(|m| m.id == id).cloned();
        // A voter added to a cluster whose only voter is this leader.
        let mut adds_second_voter = None;
        let change: ChangeMembers<NodeId, NodeInfo> = match request {
            ForwardRequest::AddMember { id, info, learner } => {
                let clash = members.iter().any(|m| {
                    m.id == id || m.info.peer_urls.iter().any(|u| info.peer_urls.contains(u))
                });
                if clash {
                    return Err(NodeError::PeerUrlExists);
                }
                if learner {
                    ChangeMembers::AddNodes(BTreeMap::from([(id, info)]))
                } else {
                    let voters: Vec<NodeId> = members
                        .iter()
                        .filter(|m| !m.is_learner)
                        .map(|m| m.id)
                        .collect();
                    if voters == [self.id()] {
                        adds_second_voter = Some(id);
                    }
                    ChangeMembers::AddVoters(BTreeMap::from([(id, info)]))
                }
            }
            ForwardRequest::PromoteMember { id } => {
                let member = find(id).ok_or(NodeError::MemberNotFound)?;
                if !member.is_learner {
                    return Err(NodeError::NotLearner);
                }
                self.check_learner_ready(id)?;
                ChangeMembers::AddVoterIds(BTreeSet::from([id]))
            }
            ForwardRequest::RemoveMember { id } => {
                let member = find(id).ok_or(NodeError::MemberNotFound)?;
                if member.is_learner {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                }
            }
            ForwardRequest::UpdateMember { id, info } => {
                find(id).ok_or(NodeError::MemberNotFound)?;
                ChangeMembers::SetNodes(BTreeMap::from([(id, info)]))
            }
            ForwardRequest::TransferLeader { to } => {
                find(to).ok_or(NodeError::MemberNotFound)?;
                self.inner
                    .raft
                    .trigger()
                    .transfer_leader(to)
                    .await
                    .map_err(|e| NodeError::Raft(e.to_string()))?;
                return Ok(());
            }
            ForwardRequest::Write(_)
            | ForwardRequest::Writes(_)
            | ForwardRequest::ReadIndex
            | ForwardRequest::ClusterId
            | ForwardRequest::LeaseKeepAlive { .. }
            | ForwardRequest::LeaseTimeToLive { .. } => {
                return Err(NodeError::Raft("not a membership request".into()));
            }
        };
        for _ in 0..FORWARD_ATTEMPTS_MAX {
            match self
                .run_membership_change(change.clone(), adds_second_voter)
                .await?
            {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    return Err(NodeError::LeaderChanged);
                }
                // Another change is still being committed, often a member publishing its own
                // name and client URLs as it starts. etcd serializes configuration changes, so
                // wait for that one to apply rather than fail the operator's request.
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(in_progress),
                ))) => {
                    let index = in_progress.membership_log_id.map_or(0, |id| id.index);
                    self.wait_applied(index).await?;
                }
                Err(e) => return Err(NodeError::Raft(e.to_string())),
            }
        }
        Err(NodeError::Timeout)
    }

    /// Runs `change` to the end on a task of its own and returns its result: openraft takes a
    /// voter change in two steps (a joint configuration, then the new one) driven by the caller,
    /// so a client that went away mid-change would leave the joint configuration behind.
    ///
    /// With `adds_second_voter` (a voter added to a cluster whose only voter is this leader) it
    /// returns once the joint configuration is durable here: etcd counts such a change as
    /// committed once the old configuration's quorum, this member alone, has it, and lets
    /// MemberAdd return (its special case for re-growing a one-member cluster, e.g. after
    /// `--force-new-cluster`). openraft can commit it only once the new member runs, which the
    /// operator starts after MemberAdd returns; the task finishes the change then.
    async fn run_membership_change(
        &self,
        change: ChangeMembers<NodeId, NodeInfo>,
        adds_second_voter: Option<NodeId>,
    ) -> Result<Result<(), RaftError<TypeConfig, ClientWriteError<TypeConfig>>>, NodeError> {
        let raft = self.inner.raft.clone();
        let mut task = tokio::spawn(async move { raft.change_membership(change, false).await });
        type Outcome = Result<
            openraft::raft::ClientWriteResponse<TypeConfig>,
            RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
        >;
        let joined = |result: Result<Outcome, tokio::task::JoinError>| match result {
            Ok(outcome) => Ok(outcome.map(|_| ())),
            Err(error) => Err(NodeError::Raft(format!("membership change task: {error}"))),
        };
        let Some(added) = adds_second_voter else {
            return joined((&mut task).await);
        };
        let mut metrics = self.inner.raft.metrics();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(LEADER_WAIT_MS_MAX);
        loop {
            if self.joint_config_durable_here(added) {
                return Ok(Ok(()));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            tokio::select! {
                result = &mut task => return joined(result),
                changed = tokio::time::timeout(left, metrics.changed()) => match changed {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return Err(NodeError::Stopped),
                    Err(_) => return Err(NodeError::Timeout),
                },
            }
        }
    }

    /// Whether this leader's effective membership has `added` as a voter and its own log has
    /// that membership's entry durably.
    fn joint_config_durable_here(&self, added: NodeId) -> bool {
        let metrics = self.raft_metrics();
        let config = &metrics.membership_config;
        if !config.membership().voter_ids().any(|id| id == added) {
            return false;
        }
        let flushed_here = metrics
            .replication
            .as_ref()
            .and_then(|progress| progress.get(&self.id()).cloned().flatten());
        match (config.log_id(), flushed_here) {
            (Some(entry), Some(flushed)) => flushed.index() >= entry.index(),
            _ => false,
        }
    }

    /// etcd's isLearnerReady: a learner is promoted only once its replicated log reaches 90% of
    /// the leader's. Promoting one that lags (or was never started) would make it a voter the
    /// quorum has to wait for, and a single-node cluster would lose its quorum.
    fn check_learner_ready(&self, id: NodeId) -> Result<(), NodeError> {
        let metrics = self.raft_metrics();
        let Some(replication) = metrics.replication.as_ref() else {
            return Err(NodeError::LeaderChanged);
        };
        // As etcd: a member the leader has no progress for is not held back.
        let Some(matched) = replication.get(&id) else {
            return Ok(());
        };
        let learner = matched.as_ref().map_or(0, |log_id| log_id.index());
        let leader = metrics.last_log_index.unwrap_or(0);
        if u128::from(learner) * 10 < u128::from(leader) * 9 {
            return Err(NodeError::LearnerNotReady);
        }
        Ok(())
    }

    pub fn applied_state(&self) -> Result<AppliedState, NodeError> {
        Ok(self.inner.reader.applied_state()?)
    }

    /// Whether this node is a learner in the current membership.
    pub fn is_learner(&self) -> bool {
        self.raft_metrics().state == ServerState::Learner
    }

    fn spawn_background_tasks(&self) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut last_leader: Option<NodeId> = None;
            loop {
                tokio::time::sleep(Duration::from_millis(LEADER_SAMPLE_INTERVAL_MS)).await;
                let Some(inner) = weak.upgrade() else { return };
                let leader = inner.raft.metrics().borrow_watched().current_leader;
                if leader != last_leader && leader.is_some() {
                    inner.metrics.leader_changes.fetch_add(1, Ordering::Relaxed);
                }
                last_leader = leader;
            }
        });
    }

    /// Keeps the log's inline rounds (`LogStore::set_appends_inline`) on except while this
    /// node leads other voters. openraft's core hands a leader's new entries to its log before
    /// it hands them to replication (`leader_append_entries`: the `AppendEntries` command, then
    /// the `Replicate` ones), so an inline round there holds replication back by the whole
    /// `fdatasync`; queued, the sync runs on the log writer's thread during the followers'
    /// round trip, as etcd's leader syncs its WAL while it sends. A single voter, a follower
    /// and a learner keep them: there the sync is on the path anyway. Driven by openraft's
    /// server metrics (state and membership), which change only with them; ends when Raft
    /// stops.
    fn spawn_log_inline_switch(&self, log_store: aspen_storage::LogStore) {
        let mut server = self.inner.raft.server_metrics();
        tokio::spawn(async move {
            loop {
                let leads_others = {
                    let metrics = server.borrow_watched();
                    metrics.state == ServerState::Leader
                        && metrics.membership_config.membership().voter_ids().count() > 1
                };
                log_store.set_appends_inline(!leads_others);
                if server.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Builds a snapshot whenever `snapshot_schedule::snapshot_due` says so (openraft's own
    /// policy is `Never`, `raft_config.rs`). Holds the node weakly.
    fn spawn_snapshot_scheduler(&self) {
        use crate::snapshot_schedule::{
            SNAPSHOT_CHECK_INTERVAL_MS, SNAPSHOT_RETRIGGER_MS, snapshot_due,
        };
        let weak = Arc::downgrade(&self.inner);
        let snapshot_count = self.inner.options.timing.snapshot_count;
        tokio::spawn(async move {
            // The snapshot index a build was last triggered behind, and when.
            let mut triggered: Option<(u64, Instant)> = None;
            loop {
                tokio::time::sleep(Duration::from_millis(SNAPSHOT_CHECK_INTERVAL_MS)).await;
                let Some(inner) = weak.upgrade() else { return };
                let (applied, snapshot) = {
                    let receiver = inner.raft.metrics();
                    let metrics = receiver.borrow_watched();
                    (
                        metrics.last_applied.as_ref().map_or(0, |id| id.index),
                        metrics.snapshot.as_ref().map_or(0, |id| id.index),
                    )
                };
                let retrigger = Duration::from_millis(SNAPSHOT_RETRIGGER_MS);
                if triggered.is_some_and(|(at, when)| at == snapshot && when.elapsed() < retrigger)
                {
                    continue;
                }
                if !snapshot_due(applied.saturating_sub(snapshot), snapshot_count) {
                    continue;
                }
                if let Err(error) = inner.raft.trigger().snapshot().await {
                    tracing::debug!(%error, "snapshot schedule: trigger refused");
                }
                triggered = Some((snapshot, Instant::now()));
            }
        });
    }

    /// Physical compaction: after a `Compact` applies (and at start, for one a restart
    /// interrupted), removes the versions it made unreadable, one bounded step (a read
    /// transaction, then one short write transaction) at a time off the async workers,
    /// pausing between steps (`compaction_pause`) so applies interleave, as etcd does. Holds
    /// the node weakly: a stopped node's storage closes.
    fn spawn_compactor(&self) {
        let weak = Arc::downgrade(&self.inner);
        let wake = Arc::clone(self.inner.state_machine.compaction_notify());
        tokio::spawn(async move {
            loop {
                loop {
                    let Some(inner) = weak.upgrade() else { return };
                    let state_machine = inner.state_machine.clone();
                    drop(inner);
                    let step_started = Instant::now();
                    match run_blocking(move || state_machine.compact_step()).await {
                        Ok(Ok(true)) => {
                            tokio::time::sleep(compaction_pause(step_started.elapsed())).await;
                        }
                        Ok(Ok(false)) => break,
                        Ok(Err(error)) => {
                            tracing::error!(%error, "compaction step failed");
                            break;
                        }
                        Err(_) => return,
                    }
                }
                wake.notified().await;
            }
        });
    }

    /// The lessor's clock: every `LEASE_CHECK_INTERVAL_MS` the leader revokes expired leases.
    fn spawn_lease_task(&self) {
        let weak = Arc::downgrade(&self.inner);
        let interval = Duration::from_millis(aspen_core::limits::LEASE_CHECK_INTERVAL_MS);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(inner) = weak.upgrade() else { return };
                Node { inner }.lease_tick().await;
            }
        });
    }

    /// Waits until Raft stops on its own: a storage failure (a full disk, an I/O error) stops
    /// openraft's core for good, and the databases refuse every write until reopened, so the
    /// process must restart (the server exits, `aspen-server/src/main.rs`). Never returns
    /// after a [`Node::shutdown`].
    ///
    /// It looks at openraft's running state every `RAFT_STOP_POLL_MS`, and does not wait on the
    /// metrics channel: openraft publishes metrics after nearly every step of its core, and a
    /// waiter there was woken (a worker thread unparked, a syscall) for every put, about 7 % of
    /// a put's server CPU at 256 clients. (The server metrics, which change rarely, do not
    /// close when the core stops on a storage error, so they cannot be the signal either.)
    pub async fn fatal(&self) -> FatalStop {
        let mut metrics = self.inner.raft.metrics();
        loop {
            let state = metrics.borrow_watched().running_state.clone();
            match state {
                Err(openraft::error::Fatal::Stopped) => std::future::pending::<()>().await,
                Err(error) => return self.fatal_stop(error.to_string()),
                Ok(()) => {}
            }
            let closed = futures_util::FutureExt::now_or_never(metrics.changed())
                .is_some_and(|changed| changed.is_err());
            if closed {
                // The core's task ended without saying why: a panic.
                if metrics.borrow_watched().running_state.is_ok() {
                    return self.fatal_stop("raft core ended".to_string());
                }
            }
            tokio::time::sleep(Duration::from_millis(RAFT_STOP_POLL_MS)).await;
        }
    }

    fn fatal_stop(&self, raft_error: String) -> FatalStop {
        let failure = self.inner.store.io_failure();
        FatalStop {
            disk_full: failure.as_ref().is_some_and(|f| f.disk_full),
            io_failure: failure.map(|f| f.message),
            raft_error,
        }
    }

    /// Stops Raft; the storage closes when the last handle is dropped.
    pub async fn shutdown(&self) -> Result<(), NodeError> {
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))
    }
}

/// The pause after a compaction step that took `step`: at least `COMPACT_STEP_PAUSE_MS`, and
/// `COMPACT_STEP_PAUSE_PER_STEP_TIME` times the step itself, so compaction takes at most about
/// a quarter of one core however costly its steps are on a large store.
fn compaction_pause(step: Duration) -> Duration {
    let floor = Duration::from_millis(COMPACT_STEP_PAUSE_MS);
    floor.max(step.saturating_mul(COMPACT_STEP_PAUSE_PER_STEP_TIME))
}

/// Runs blocking storage work off the async workers (tokio's blocking pool) on a
/// multi-threaded runtime; inline on a current-thread one (tests, the paused-clock simulator),
/// where another thread would make the interleaving depend on the OS scheduler.
#[cfg(not(madsim))]
async fn run_blocking<T, F>(work: F) -> Result<T, tokio::task::JoinError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if aspen_core::runtime::blocking_work_may_leave_the_task() {
        tokio::task::spawn_blocking(work).await
    } else {
        Ok(work())
    }
}

/// madsim (the simulator's build) has no blocking pool and no other thread: run it here.
#[cfg(madsim)]
async fn run_blocking<T, F>(work: F) -> Result<T, tokio::task::JoinError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    Ok(work())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compaction_pause_is_the_floor_or_three_times_the_step() {
        let floor = Duration::from_millis(COMPACT_STEP_PAUSE_MS);
        assert_eq!(compaction_pause(Duration::ZERO), floor);
        assert_eq!(compaction_pause(floor / 4), floor);
        let step = Duration::from_millis(2);
        assert_eq!(
            compaction_pause(step),
            step * COMPACT_STEP_PAUSE_PER_STEP_TIME
        );
        // Never more than a quarter of the time spent stepping.
        let cycle = step + compaction_pause(step);
        assert!(step * 4 <= cycle, "{step:?} of {cycle:?}");
    }
}
