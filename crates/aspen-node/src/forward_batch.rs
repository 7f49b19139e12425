//! A follower's forwarded writes, gathered into batches: one peer request carries every write
//! that queued while earlier batches were out, as etcd's followers hand proposals to the
//! leader over one stream instead of one call each.
//!
//! The rules:
//! - A batch leaves when no batch is out, or when it would carry at least as many writes as
//!   all the batches already out together, and fewer than `FORWARD_WRITE_BATCHES_IN_FLIGHT_MAX`
//!   are out. So a lone write leaves at once, light load keeps a few small batches out, and
//!   under heavy load the batches grow and few are out: the leader gets its writes in bursts
//!   that one group commit takes whole, instead of a stream that costs a log commit (on every
//!   member) per few writes. A batch's completion sends what waits if the rule allows it, so
//!   no write is left behind.
//! - A batch holds writes for one leader, in the order they queued, at most
//!   `FORWARD_WRITE_BATCH_WRITES_MAX` of them and `FORWARD_WRITE_BATCH_BYTES_MAX` bytes (a
//!   larger write goes alone).
//! - Only writes whose reply is small by construction are batched
//!   (`Command::reply_is_small`), so a batch's reply always fits a peer message.
//! - The leader proposes a batch's writes concurrently and answers each on its own; the
//!   writes of one batch are concurrent requests, with no order among them.
//! - An error for the whole batch (never sent, the leader changed, the connection lost)
//!   reaches every write in it, and whether each may be retried is the error's to say, as for
//!   a single forwarded write (`retry.rs`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use aspen_core::codec;
use aspen_core::limits::{
    FORWARD_WRITE_BATCH_BYTES_MAX, FORWARD_WRITE_BATCH_WRITES_MAX,
    FORWARD_WRITE_BATCHES_IN_FLIGHT_MAX, FORWARD_WRITE_WAITERS_MAX,
};
use aspen_core::{ApplyResponse, Command, NodeId};
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

use crate::error::NodeError;

pub type WriteResult = Result<ApplyResponse, NodeError>;
/// The leader's answer to a batch: one result per write, in the batch's order.
pub type BatchResult = Result<Vec<WriteResult>, NodeError>;

/// Where batches go: the leader, over the peer network.
pub trait WriteBatchSink: Send + Sync + 'static {
    fn send(&self, leader: NodeId, commands: Vec<Command>) -> BoxFuture<'static, BatchResult>;
}

/// Batches sent, and the writes they carried.
#[derive(Debug, Default)]
pub struct WriteBatchMetrics {
    pub batches: AtomicU64,
    pub writes: AtomicU64,
}

/// Gathers forwarded writes into batches over one [`WriteBatchSink`]. Cheap to clone.
#[derive(Clone)]
pub struct WriteBatcher {
    shared: Arc<Shared>,
}

struct Shared {
    sink: Box<dyn WriteBatchSink>,
    metrics: Arc<WriteBatchMetrics>,
    state: Mutex<BatchState>,
}

struct BatchState {
    queue: VecDeque<Queued>,
    /// Batches out (each sender task has one out, or is about to take one).
    batches_out: u32,
    /// Writes in the batches out.
    writes_out: u64,
}

impl BatchState {
    /// Whether another batch may leave now (see the module's rules).
    fn may_send(&self) -> bool {
        !self.queue.is_empty()
            && (self.batches_out == 0
                || (self.batches_out < FORWARD_WRITE_BATCHES_IN_FLIGHT_MAX
                    && self.queue.len() as u64 >= self.writes_out))
    }
}

struct Queued {
    leader: NodeId,
    command: Command,
    len_bytes: u64,
    reply: oneshot::Sender<WriteResult>,
}

impl WriteBatcher {
    pub fn new(sink: impl WriteBatchSink, metrics: Arc<WriteBatchMetrics>) -> WriteBatcher {
        WriteBatcher {
            shared: Arc::new(Shared {
                sink: Box::new(sink),
                metrics,
                state: Mutex::new(BatchState {
                    queue: VecDeque::new(),
                    batches_out: 0,
                    writes_out: 0,
                }),
            }),
        }
    }

    /// Queues `command` for `leader` now (before the returned future is first polled) and
    /// resolves with the leader's answer to it. Fails at once with `TooManyRequests` when
    /// `FORWARD_WRITE_WAITERS_MAX` writes already wait.
    pub fn forward(
        &self,
        leader: NodeId,
        command: Command,
    ) -> impl Future<Output = WriteResult> + Send + 'static {
        debug_assert!(
            command.reply_is_small(),
            "only small-reply writes are batched"
        );
        let queued = self.enqueue(leader, command);
        async move { queued?.await.map_err(|_| NodeError::Stopped)? }
    }

    fn enqueue(
        &self,
        leader: NodeId,
        command: Command,
    ) -> Result<oneshot::Receiver<WriteResult>, NodeError> {
        let len_bytes = u64::try_from(codec::encoded_len(&command)).unwrap_or(u64::MAX);
        let (reply, receiver) = oneshot::channel();
        let start_sender = {
            let mut state = self.shared.lock();
            if state.queue.len() >= FORWARD_WRITE_WAITERS_MAX as usize {
                return Err(NodeError::TooManyRequests);
            }
            state.queue.push_back(Queued {
                leader,
                command,
                len_bytes,
                reply,
            });
            let start = state.may_send();
            if start {
                state.batches_out += 1;
            }
            start
        };
        if start_sender {
            tokio::spawn(run_sender(self.shared.clone()));
        }
        Ok(receiver)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, BatchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The next batch from the queue's front: writes for the first one's leader, in order, until
/// a write for another leader or one that would break a bound.
fn take_batch(queue: &mut VecDeque<Queued>) -> Vec<Queued> {
    let Some(leader) = queue.front().map(|q| q.leader) else {
        return Vec::new();
    };
    let mut batch: Vec<Queued> = Vec::new();
    let mut len_bytes: u64 = 0;
    while let Some(next) = queue.front() {
        let fits = batch.is_empty()
            || (batch.len() < FORWARD_WRITE_BATCH_WRITES_MAX as usize
                && len_bytes.saturating_add(next.len_bytes) <= FORWARD_WRITE_BATCH_BYTES_MAX);
        if next.leader != leader || !fits {
            break;
        }
        len_bytes = len_bytes.saturating_add(next.len_bytes);
        batch.extend(queue.pop_front());
    }
    assert!(!batch.is_empty() && batch.len() <= FORWARD_WRITE_BATCH_WRITES_MAX as usize);
    batch
}

/// Sends a batch, then another while the rules allow one when it completes. Unbounded only
/// as the node's other background tasks are: every iteration sends at least one write, and it
/// ends when writes stop coming.
async fn run_sender(shared: Arc<Shared>) {
    let mut task = SenderTask {
        shared: shared.clone(),
        writes_out: 0,
        finished: false,
    };
    loop {
        let batch = {
            let mut state = shared.lock();
            assert!(state.batches_out > 0, "a sender runs only while counted");
            if state.queue.is_empty() {
                // Another sender took what was queued when this one was started.
                state.batches_out -= 1;
                task.finished = true;
                return;
            }
            let batch = take_batch(&mut state.queue);
            state.writes_out += batch.len() as u64;
            task.writes_out = batch.len() as u64;
            batch
        };
        let leader = batch[0].leader;
        let count = batch.len();
        let (commands, replies): (Vec<Command>, Vec<oneshot::Sender<WriteResult>>) =
            batch.into_iter().map(|q| (q.command, q.reply)).unzip();
        shared.metrics.batches.fetch_add(1, Ordering::Relaxed);
        shared
            .metrics
            .writes
            .fetch_add(count as u64, Ordering::Relaxed);
        let answer = shared.sink.send(leader, commands).await;
        deliver(answer, replies);
        let mut state = shared.lock();
        assert!(state.writes_out >= task.writes_out);
        state.writes_out -= task.writes_out;
        task.writes_out = 0;
        // This batch is no longer out; the next is this task's if the rules allow one.
        state.batches_out -= 1;
        if !state.may_send() {
            task.finished = true;
            return;
        }
        state.batches_out += 1;
    }
}

/// Hands each write of a batch its result.
fn deliver(answer: BatchResult, replies: Vec<oneshot::Sender<WriteResult>>) {
    let count = replies.len();
    let results: Vec<WriteResult> = match answer {
        Ok(results) if results.len() == count => results,
        // The leader proposed them, so their outcome is unknown: not safe to retry.
        Ok(results) => vec![
            Err(NodeError::Peer(format!(
                "the leader answered {} of {count} forwarded writes",
                results.len()
            )));
            count
        ],
        Err(error) => vec![Err(error); count],
    };
    for (reply, result) in replies.into_iter().zip(results) {
        // A write whose caller went away dropped its receiver: nothing to deliver.
        let _ = reply.send(result);
    }
}

/// Keeps the counts true if a sender task ends any other way than by the rules (a panic in
/// the sink, the runtime shutting down): its batch's writes fail with `Stopped` (their
/// senders are dropped), and what waited on it leaves.
struct SenderTask {
    shared: Arc<Shared>,
    writes_out: u64,
    finished: bool,
}

impl Drop for SenderTask {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut state = self.shared.lock();
        state.batches_out = state.batches_out.saturating_sub(1);
        state.writes_out = state.writes_out.saturating_sub(self.writes_out);
        // What waited on this batch goes now, as it would have when the batch completed.
        if state.may_send()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            state.batches_out += 1;
            runtime.spawn(run_sender(self.shared.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use aspen_core::CommandResult;
    use aspen_core::command::PutRequest;
    use futures_util::future::join_all;
    use tokio::sync::{Semaphore, mpsc};

    /// A fake leader: records each batch (leader, keys) and answers it once the test grants a
    /// permit; each write's answer carries its key's length as the revision, so a test can
    /// tell whose answer it got.
    struct FakeSink {
        sent: mpsc::UnboundedSender<(NodeId, Vec<Vec<u8>>)>,
        release: Arc<Semaphore>,
        fail_with: Option<NodeError>,
        short_answer: bool,
    }

    /// A write with a key this long makes the fake leader panic while answering its batch.
    const PANIC_KEY_LEN: usize = 99;

    impl WriteBatchSink for FakeSink {
        fn send(&self, leader: NodeId, commands: Vec<Command>) -> BoxFuture<'static, BatchResult> {
            let keys: Vec<Vec<u8>> = commands
                .iter()
                .map(|c| match c {
                    Command::Put(p) => p.key.clone(),
                    other => panic!("unexpected {other:?}"),
                })
                .collect();
            let _ = self.sent.send((leader, keys.clone()));
            let release = self.release.clone();
            let fail_with = self.fail_with.clone();
            let short = self.short_answer;
            Box::pin(async move {
                release.acquire().await.expect("open").forget();
                let panics = keys.iter().any(|k| k.len() == PANIC_KEY_LEN);
                assert!(!panics, "the fake leader panics on this batch, as asked");
                if let Some(error) = fail_with {
                    return Err(error);
                }
                let take = if short { keys.len() - 1 } else { keys.len() };
                Ok(keys[..take].iter().map(|k| Ok(answer(k.len()))).collect())
            })
        }
    }

    fn answer(revision: usize) -> ApplyResponse {
        ApplyResponse {
            revision: revision as u64,
            result: Ok(CommandResult::Put { prev_kv: None }),
        }
    }

    fn put(key_len: usize) -> Command {
        Command::Put(PutRequest {
            key: vec![b'k'; key_len],
            value: b"v".to_vec(),
            ..Default::default()
        })
    }

    struct Harness {
        batcher: WriteBatcher,
        metrics: Arc<WriteBatchMetrics>,
        sent: mpsc::UnboundedReceiver<(NodeId, Vec<Vec<u8>>)>,
        release: Arc<Semaphore>,
    }

    fn harness(fail_with: Option<NodeError>, short_answer: bool) -> Harness {
        let (sent_tx, sent) = mpsc::unbounded_channel();
        let release = Arc::new(Semaphore::new(0));
        let metrics = Arc::new(WriteBatchMetrics::default());
        let sink = FakeSink {
            sent: sent_tx,
            release: release.clone(),
            fail_with,
            short_answer,
        };
        Harness {
            batcher: WriteBatcher::new(sink, metrics.clone()),
            metrics,
            sent,
            release,
        }
    }

    /// Longest a test waits for a batch before failing.
    const TEST_WAIT_MS_MAX: u64 = 5_000;

    impl Harness {
        async fn next_batch(&mut self) -> (NodeId, Vec<Vec<u8>>) {
            let wait = Duration::from_millis(TEST_WAIT_MS_MAX);
            tokio::time::timeout(wait, self.sent.recv())
                .await
                .expect("a batch to be sent")
                .expect("the sink is alive")
        }
    }

    fn revision(result: &WriteResult) -> u64 {
        match result {
            Ok(response) => response.revision,
            Err(error) => panic!("unexpected {error:?}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_lone_write_leaves_at_once_alone() {
        let mut h = harness(None, false);
        let write = tokio::spawn(h.batcher.forward(2, put(3)));
        assert_eq!(h.next_batch().await, (2, vec![b"kkk".to_vec()]));
        h.release.add_permits(1);
        assert_eq!(revision(&write.await.unwrap()), 3);
        assert_eq!(h.metrics.batches.load(Ordering::Relaxed), 1);
    }

    /// A batch leaves when it would carry as many writes as are out: the batches grow 1, 1,
    /// 2, 4 while the leader holds them, and each write gets its own answer.
    #[tokio::test(flavor = "current_thread")]
    async fn batches_grow_with_the_writes_out() {
        let mut h = harness(None, false);
        let mut writes = Vec::new();
        let mut key_len = 0;
        for expected in [1, 1, 2, 4] {
            for _ in 0..expected {
                key_len += 1;
                writes.push(tokio::spawn(h.batcher.forward(2, put(key_len))));
                tokio::task::yield_now().await;
            }
            let (_, keys) = h.next_batch().await;
            assert_eq!(keys.len(), expected, "batch sizes follow the writes out");
        }
        assert!(h.sent.try_recv().is_err());
        h.release.add_permits(4);
        for (i, write) in writes.into_iter().enumerate() {
            assert_eq!(revision(&write.await.unwrap()), i as u64 + 1);
        }
        assert_eq!(h.metrics.batches.load(Ordering::Relaxed), 4);
        assert_eq!(h.metrics.writes.load(Ordering::Relaxed), 8);
    }

    /// A write that would make a batch smaller than what is out waits, and leaves with the
    /// others when a batch completes.
    #[tokio::test(flavor = "current_thread")]
    async fn a_small_batch_waits_for_a_completion() {
        let mut h = harness(None, false);
        let first: Vec<_> = (0..3).map(|i| h.batcher.forward(2, put(i + 1))).collect();
        let first = tokio::spawn(join_all(first));
        assert_eq!(h.next_batch().await.1.len(), 3);
        // Three writes out: two queued writes are fewer, so they wait.
        let second: Vec<_> = (0..2).map(|i| h.batcher.forward(2, put(10 + i))).collect();
        let second = tokio::spawn(join_all(second));
        tokio::task::yield_now().await;
        assert!(
            h.sent.try_recv().is_err(),
            "a batch smaller than what is out left"
        );
        h.release.add_permits(1);
        assert_eq!(
            h.next_batch().await.1.len(),
            2,
            "the completion sends what waited"
        );
        h.release.add_permits(1);
        assert_eq!(first.await.unwrap().len(), 3);
        let revisions: Vec<u64> = second.await.unwrap().iter().map(revision).collect();
        assert_eq!(revisions, vec![10, 11]);
    }

    /// Fills every batch slot (1, 1, 2, 4, ... writes), so what comes next queues.
    async fn occupy_senders(h: &mut Harness) -> Vec<tokio::task::JoinHandle<WriteResult>> {
        let mut busy = Vec::new();
        let mut out = 0usize;
        for _ in 0..FORWARD_WRITE_BATCHES_IN_FLIGHT_MAX {
            let count = out.max(1);
            for _ in 0..count {
                busy.push(tokio::spawn(h.batcher.forward(2, put(1))));
                tokio::task::yield_now().await;
            }
            assert_eq!(h.next_batch().await.1.len(), count);
            out += count;
        }
        busy
    }

    /// With every slot taken, however many writes queue, none leaves until a batch completes.
    #[tokio::test(flavor = "current_thread")]
    async fn no_batch_leaves_while_every_slot_is_taken() {
        let mut h = harness(None, false);
        let busy = occupy_senders(&mut h).await;
        let queued: Vec<_> = (0..100).map(|_| h.batcher.forward(2, put(2))).collect();
        let queued = tokio::spawn(join_all(queued));
        tokio::task::yield_now().await;
        assert!(h.sent.try_recv().is_err());
        h.release.add_permits(1);
        assert_eq!(h.next_batch().await.1.len(), 100);
        h.release.add_permits(1_000);
        assert!(queued.await.unwrap().iter().all(Result::is_ok));
        for write in busy {
            assert!(write.await.unwrap().is_ok());
        }
    }

    /// Writes queued together before any sender ran leave as one batch.
    #[tokio::test(flavor = "current_thread")]
    async fn writes_queued_at_once_leave_together() {
        let mut h = harness(None, false);
        let writes: Vec<_> = (0..10).map(|i| h.batcher.forward(2, put(i + 1))).collect();
        let all = tokio::spawn(join_all(writes));
        assert_eq!(h.next_batch().await.1.len(), 10);
        h.release.add_permits(1);
        let results = all.await.unwrap();
        let revisions: Vec<u64> = results.iter().map(revision).collect();
        assert_eq!(revisions, (1..=10).collect::<Vec<u64>>());
        assert_eq!(h.metrics.batches.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn batches_keep_their_bounds_and_leaders() {
        let mut h = harness(None, false);
        let busy = occupy_senders(&mut h).await;
        let count_max = FORWARD_WRITE_BATCH_WRITES_MAX as usize;
        // More writes than one batch holds, then one for another leader, then one larger
        // than a batch's bytes, then small ones again.
        let mut writes = Vec::new();
        for _ in 0..count_max + 3 {
            writes.push(tokio::spawn(h.batcher.forward(2, put(2))));
        }
        writes.push(tokio::spawn(h.batcher.forward(3, put(2))));
        let big = usize::try_from(FORWARD_WRITE_BATCH_BYTES_MAX).expect("fits") + 10;
        writes.push(tokio::spawn(h.batcher.forward(3, put(big))));
        writes.push(tokio::spawn(h.batcher.forward(3, put(2))));
        tokio::task::yield_now().await;
        h.release.add_permits(1_000);
        let mut batches = Vec::new();
        while batches
            .iter()
            .map(|(_, k): &(NodeId, Vec<Vec<u8>>)| k.len())
            .sum::<usize>()
            < writes.len()
        {
            batches.push(h.next_batch().await);
        }
        let shape: Vec<(NodeId, usize)> = batches.iter().map(|(l, k)| (*l, k.len())).collect();
        assert_eq!(shape, vec![(2, count_max), (2, 3), (3, 1), (3, 1), (3, 1)]);
        assert_eq!(batches[3].1[0].len(), big);
        for write in busy.into_iter().chain(writes) {
            assert!(write.await.unwrap().is_ok());
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_error_reaches_each_of_its_writes() {
        let mut h = harness(Some(NodeError::LeaderChanged), false);
        let writes: Vec<_> = (0..3).map(|i| h.batcher.forward(2, put(i + 1))).collect();
        let all = tokio::spawn(join_all(writes));
        h.next_batch().await;
        h.release.add_permits(100);
        for result in all.await.unwrap() {
            assert_eq!(result, Err(NodeError::LeaderChanged));
        }
    }

    /// An answer that does not match the batch leaves every write's outcome unknown: an error
    /// that may not be retried.
    #[tokio::test(flavor = "current_thread")]
    async fn a_short_answer_fails_the_batch_as_outcome_unknown() {
        let mut h = harness(None, true);
        let busy = occupy_senders(&mut h).await;
        let writes: Vec<_> = (0..5).map(|i| h.batcher.forward(2, put(i + 1))).collect();
        let all = tokio::spawn(join_all(writes));
        tokio::task::yield_now().await;
        h.release.add_permits(100);
        for result in all.await.unwrap() {
            let error = result.expect_err("a short answer is an error");
            assert_eq!(error.retry(), crate::retry::Retry::Unsafe, "{error:?}");
        }
        drop(busy);
    }

    /// A sender that dies fails its own batch's writes with `Stopped`; the writes that waited
    /// on it still leave, and later writes are served.
    #[tokio::test(flavor = "current_thread")]
    async fn a_sender_that_dies_fails_only_its_batch() {
        let mut h = harness(None, false);
        let dying: Vec<_> = [1, PANIC_KEY_LEN, 2]
            .map(|len| h.batcher.forward(2, put(len)))
            .into_iter()
            .collect();
        let dying = tokio::spawn(join_all(dying));
        assert_eq!(h.next_batch().await.1.len(), 3);
        let waiting: Vec<_> = (0..2).map(|i| h.batcher.forward(2, put(10 + i))).collect();
        let waiting = tokio::spawn(join_all(waiting));
        tokio::task::yield_now().await;
        assert!(h.sent.try_recv().is_err());
        h.release.add_permits(1);
        for result in dying.await.unwrap() {
            assert_eq!(result, Err(NodeError::Stopped));
        }
        assert_eq!(h.next_batch().await.1.len(), 2);
        h.release.add_permits(1);
        let revisions: Vec<u64> = waiting.await.unwrap().iter().map(revision).collect();
        assert_eq!(revisions, vec![10, 11]);
        let later = tokio::spawn(h.batcher.forward(2, put(5)));
        assert_eq!(h.next_batch().await.1.len(), 1);
        h.release.add_permits(1);
        assert_eq!(revision(&later.await.unwrap()), 5);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_queue_is_bounded() {
        let mut h = harness(None, false);
        let _busy = occupy_senders(&mut h).await;
        let mut queued = Vec::new();
        for _ in 0..FORWARD_WRITE_WAITERS_MAX {
            queued.push(h.batcher.forward(2, put(1)));
        }
        let refused = h.batcher.forward(2, put(1)).await;
        assert_eq!(refused, Err(NodeError::TooManyRequests));
    }
}
