//! Batched ReadIndex: one read index (a leader's quorum confirmation, or one ReadIndex
//! forwarded to the leader) serves every linearizable read that was waiting when it was asked
//! for, as etcd batches its ReadIndex requests.
//!
//! The rule that keeps this linearizable: a read is served only by a round that *started*
//! after the read registered. A read that arrives while a round is in flight waits for the
//! next one, because the in-flight round's confirmation may have been sent (and its read index
//! fixed) before that read's predecessors were acknowledged. At most one round is in flight;
//! when it completes, every read that joined it gets its answer (index or error), and the next
//! round starts if anyone is waiting.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aspen_core::limits::{READ_INDEX_ROUND_MS_MAX, READ_INDEX_WAITERS_MAX};
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

use crate::error::NodeError;
use crate::metrics::ReadIndexMetrics;

pub type ReadIndexResult = Result<u64, NodeError>;

/// Where a round's read index comes from: the leader's own quorum confirmation, or the leader
/// asked over the network. Each call must obtain an index that covers every write
/// acknowledged before the call.
pub trait ReadIndexSource: Send + Sync + 'static {
    fn read_index(&self) -> BoxFuture<'static, ReadIndexResult>;
}

/// Batches "obtain a read index" over one [`ReadIndexSource`]. Cheap to clone.
#[derive(Clone)]
pub struct ReadBatcher {
    shared: Arc<Shared>,
}

struct Shared {
    source: Box<dyn ReadIndexSource>,
    metrics: Arc<ReadIndexMetrics>,
    state: Mutex<BatchState>,
}

struct BatchState {
    /// A round task is running; new reads wait in `next_round`.
    round_in_flight: bool,
    /// Reads registered since the in-flight round started: none of them may join it.
    next_round: Vec<oneshot::Sender<ReadIndexResult>>,
}

impl ReadBatcher {
    pub fn new(source: impl ReadIndexSource, metrics: Arc<ReadIndexMetrics>) -> ReadBatcher {
        ReadBatcher {
            shared: Arc::new(Shared {
                source: Box::new(source),
                metrics,
                state: Mutex::new(BatchState {
                    round_in_flight: false,
                    next_round: Vec::new(),
                }),
            }),
        }
    }

    /// Registers a read now (before the returned future is first polled) and resolves with
    /// the index of the first round that starts after this call, or that round's error.
    /// Fails at once with `TooManyRequests` when `READ_INDEX_WAITERS_MAX` reads already wait.
    pub fn read_index(&self) -> impl Future<Output = ReadIndexResult> + Send + 'static {
        let registered = self.register();
        async move { registered?.await.map_err(|_| NodeError::Stopped)? }
    }

    /// Registration, apart from waiting so that its moment is the call's, not the first poll's.
    fn register(&self) -> Result<oneshot::Receiver<ReadIndexResult>, NodeError> {
        let (sender, receiver) = oneshot::channel();
        let start_round = {
            let mut state = self.shared.lock();
            if state.next_round.len() >= READ_INDEX_WAITERS_MAX as usize {
                return Err(NodeError::TooManyRequests);
            }
            state.next_round.push(sender);
            !std::mem::replace(&mut state.round_in_flight, true)
        };
        if start_round {
            tokio::spawn(run_rounds(self.shared.clone()));
        }
        Ok(receiver)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, BatchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs rounds until nobody waits. Unbounded only as the node's other background tasks are:
/// every iteration serves at least one read, and it ends when reads stop arriving.
async fn run_rounds(shared: Arc<Shared>) {
    let mut task = RoundTask {
        shared,
        finished: false,
    };
    let shared = task.shared.clone();
    // Swapped with `next_round` each round, so a busy batcher reuses two buffers.
    let mut round: Vec<oneshot::Sender<ReadIndexResult>> = Vec::new();
    loop {
        debug_assert!(round.is_empty());
        {
            let mut state = shared.lock();
            assert!(
                state.round_in_flight,
                "a round runs only while marked in flight"
            );
            if state.next_round.is_empty() {
                state.round_in_flight = false;
                task.finished = true;
                return;
            }
            std::mem::swap(&mut state.next_round, &mut round);
        }
        // Every read in `round` registered before this point; the source is asked after it.
        shared.metrics.rounds.fetch_add(1, Ordering::Relaxed);
        shared
            .metrics
            .reads
            .fetch_add(round.len() as u64, Ordering::Relaxed);
        let deadline = Duration::from_millis(READ_INDEX_ROUND_MS_MAX);
        let result = match tokio::time::timeout(deadline, shared.source.read_index()).await {
            Ok(result) => result,
            Err(_) => Err(NodeError::Timeout),
        };
        for waiter in round.drain(..) {
            // A read whose caller went away dropped its receiver: nothing to deliver.
            let _ = waiter.send(result.clone());
        }
    }
}

/// Owns the in-flight mark while the round task runs. If the task ends any other way than by
/// running out of reads (a panic in the source, the runtime shutting down), the waiting reads
/// fail with `Stopped` and the mark is released, so later reads start a new round instead of
/// waiting for one that will never come.
struct RoundTask {
    shared: Arc<Shared>,
    finished: bool,
}

impl Drop for RoundTask {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut state = self.shared.lock();
        state.round_in_flight = false;
        // Dropping the senders fails their reads with `Stopped`.
        state.next_round.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::AtomicU64;

    use futures_util::future::join_all;
    use tokio::sync::{Notify, mpsc};

    /// A fake source of read indexes: each call is one round, answering the round's number
    /// (1, 2, ...) once the test releases it. It records, on a shared event clock, when each
    /// round started, so a test can tell whether a read registered before its round did.
    struct FakeSource {
        clock: Arc<AtomicU64>,
        round_started_at: Arc<Mutex<Vec<u64>>>,
        started: mpsc::UnboundedSender<u64>,
        release: Arc<Notify>,
        fail_round: Option<u64>,
        panic_round: Option<u64>,
    }

    impl ReadIndexSource for FakeSource {
        fn read_index(&self) -> BoxFuture<'static, ReadIndexResult> {
            let at = self.clock.fetch_add(1, Ordering::SeqCst);
            let round = {
                let mut started = self.round_started_at.lock().unwrap();
                started.push(at);
                started.len() as u64
            };
            let _ = self.started.send(round);
            let release = self.release.clone();
            let fail = self.fail_round == Some(round);
            let panic = self.panic_round == Some(round);
            Box::pin(async move {
                release.notified().await;
                assert!(!panic, "the fake source panics in round {round}, as asked");
                if fail {
                    Err(NodeError::LeaderChanged)
                } else {
                    Ok(round)
                }
            })
        }
    }

    /// Longest a test waits for a round to start before failing.
    const TEST_WAIT_MS_MAX: u64 = 5_000;
    /// Scheduler turns a test gives the batcher before deciding a read was not served.
    const SETTLE_YIELDS: u32 = 10;

    struct Harness {
        batcher: ReadBatcher,
        metrics: Arc<ReadIndexMetrics>,
        clock: Arc<AtomicU64>,
        round_started_at: Arc<Mutex<Vec<u64>>>,
        started: mpsc::UnboundedReceiver<u64>,
        release: Arc<Notify>,
    }

    fn harness(fail_round: Option<u64>) -> Harness {
        harness_with(fail_round, None)
    }

    fn harness_with(fail_round: Option<u64>, panic_round: Option<u64>) -> Harness {
        let clock = Arc::new(AtomicU64::new(0));
        let round_started_at = Arc::new(Mutex::new(Vec::new()));
        let (started_tx, started) = mpsc::unbounded_channel();
        let release = Arc::new(Notify::new());
        let metrics = Arc::new(ReadIndexMetrics::default());
        let source = FakeSource {
            clock: clock.clone(),
            round_started_at: round_started_at.clone(),
            started: started_tx,
            release: release.clone(),
            fail_round,
            panic_round,
        };
        Harness {
            batcher: ReadBatcher::new(source, metrics.clone()),
            metrics,
            clock,
            round_started_at,
            started,
            release,
        }
    }

    impl Harness {
        /// Registers a read, returning the clock at registration and the pending read.
        fn read(&self) -> (u64, tokio::task::JoinHandle<ReadIndexResult>) {
            let at = self.clock.fetch_add(1, Ordering::SeqCst);
            let pending = self.batcher.read_index();
            (at, tokio::spawn(pending))
        }

        /// The number of the next round to start; fails the test rather than hang.
        async fn next_round_started(&mut self) -> u64 {
            let wait = Duration::from_millis(TEST_WAIT_MS_MAX);
            let started = tokio::time::timeout(wait, self.started.recv()).await;
            started
                .expect("a round to start")
                .expect("the source is alive")
        }

        fn rounds(&self) -> u64 {
            self.metrics.rounds.load(Ordering::Relaxed)
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_read_registered_after_a_round_started_is_served_by_a_later_round() {
        let mut h = harness(None);
        let (_, first) = h.read();
        assert_eq!(h.next_round_started().await, 1);
        // Round 1 is in flight (its confirmation may already be out): these must not join it.
        let (_, second) = h.read();
        let (_, third) = h.read();
        h.release.notify_one();
        assert_eq!(first.await.unwrap(), Ok(1));
        for _ in 0..SETTLE_YIELDS {
            tokio::task::yield_now().await;
        }
        assert!(
            !second.is_finished() && !third.is_finished(),
            "a read registered while round 1 was in flight was served by round 1"
        );
        assert_eq!(h.next_round_started().await, 2);
        h.release.notify_one();
        assert_eq!(second.await.unwrap(), Ok(2));
        assert_eq!(third.await.unwrap(), Ok(2));
        assert_eq!(h.rounds(), 2);
        assert_eq!(h.metrics.reads.load(Ordering::Relaxed), 3);
    }

    /// Reads arrive in waves while rounds are in flight; every read's round must have started
    /// after the read registered (checked on the shared event clock).
    #[tokio::test(flavor = "current_thread")]
    async fn every_read_is_served_by_a_round_that_started_after_it_registered() {
        const WAVES: u64 = 20;
        const READS_PER_WAVE: u64 = 7;
        let mut h = harness(None);
        let mut reads = Vec::new();
        for wave in 0..WAVES {
            for _ in 0..READS_PER_WAVE {
                reads.push(h.read());
            }
            // Let the round task run: it starts a round if none is in flight.
            tokio::task::yield_now().await;
            if wave % 2 == 1 {
                h.release.notify_one();
            }
        }
        // Release every remaining round until all reads are answered.
        let mut results = Vec::new();
        for (at, read) in reads {
            loop {
                if read.is_finished() {
                    break;
                }
                h.release.notify_one();
                tokio::task::yield_now().await;
            }
            results.push((at, read.await.unwrap().expect("no round fails here")));
        }
        while h.started.try_recv().is_ok() {}
        let started = h.round_started_at.lock().unwrap().clone();
        for (registered_at, round) in results {
            let round_started_at = started[usize::try_from(round - 1).expect("a round index")];
            assert!(
                round_started_at > registered_at,
                "a read registered at {registered_at} was served by round {round}, \
                 which started at {round_started_at}"
            );
        }
        assert!(h.rounds() < WAVES * READS_PER_WAVE);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_reads_share_one_round() {
        const READS: usize = 100;
        let mut h = harness(None);
        let reads: Vec<_> = (0..READS).map(|_| h.batcher.read_index()).collect();
        let all = tokio::spawn(join_all(reads));
        assert_eq!(h.next_round_started().await, 1);
        h.release.notify_one();
        let results = all.await.unwrap();
        assert!(results.iter().all(|r| *r == Ok(1)), "{results:?}");
        assert_eq!(h.rounds(), 1);
        assert_eq!(h.metrics.reads.load(Ordering::Relaxed), READS as u64);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reads_arriving_during_a_round_share_the_next_one() {
        const READS: usize = 50;
        let mut h = harness(None);
        let early: Vec<_> = (0..READS).map(|_| h.batcher.read_index()).collect();
        let early = tokio::spawn(join_all(early));
        assert_eq!(h.next_round_started().await, 1);
        let late: Vec<_> = (0..READS).map(|_| h.batcher.read_index()).collect();
        let late = tokio::spawn(join_all(late));
        h.release.notify_one();
        assert!(early.await.unwrap().iter().all(|r| *r == Ok(1)));
        assert_eq!(h.next_round_started().await, 2);
        h.release.notify_one();
        assert!(late.await.unwrap().iter().all(|r| *r == Ok(2)));
        assert_eq!(h.rounds(), 2);
        // Nobody waits: no third round starts.
        tokio::task::yield_now().await;
        assert!(h.started.try_recv().is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_round_error_reaches_all_its_reads_and_the_next_round_still_runs() {
        let mut h = harness(Some(1));
        let failing: Vec<_> = (0..3).map(|_| h.batcher.read_index()).collect();
        let failing = tokio::spawn(join_all(failing));
        assert_eq!(h.next_round_started().await, 1);
        let (_, next) = h.read();
        h.release.notify_one();
        let errors = failing.await.unwrap();
        assert!(
            errors.iter().all(|r| *r == Err(NodeError::LeaderChanged)),
            "{errors:?}"
        );
        assert_eq!(h.next_round_started().await, 2);
        h.release.notify_one();
        assert_eq!(next.await.unwrap(), Ok(2));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_round_the_source_never_answers_times_out() {
        let h = harness(None);
        let (_, read) = h.read();
        // Never released: the paused clock jumps to the round's deadline.
        assert_eq!(read.await.unwrap(), Err(NodeError::Timeout));
        let (_, next) = h.read();
        h.release.notify_one();
        assert_eq!(next.await.unwrap(), Ok(2));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_round_task_that_dies_fails_its_reads_and_frees_the_batcher() {
        let mut h = harness_with(None, Some(1));
        let (_, dying) = h.read();
        assert_eq!(h.next_round_started().await, 1);
        let (_, waiting) = h.read();
        h.release.notify_one();
        assert_eq!(dying.await.unwrap(), Err(NodeError::Stopped));
        assert_eq!(waiting.await.unwrap(), Err(NodeError::Stopped));
        let (_, next) = h.read();
        assert_eq!(h.next_round_started().await, 2);
        h.release.notify_one();
        assert_eq!(next.await.unwrap(), Ok(2));
    }
}
