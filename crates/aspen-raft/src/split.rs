//! Splitting an AppendEntries batch so that no peer message exceeds
//! [`PEER_APPEND_BYTES_MAX`](aspen_core::limits::PEER_APPEND_BYTES_MAX).
//!
//! openraft bounds a batch by entry count only (4096), so a batch of large entries could
//! encode to gigabytes, and the receiver would have to accept messages that large. The leader
//! splits instead: each part carries consecutive entries, its `prev_log_id` is the previous
//! part's last entry, and vote and `leader_commit` are the original's (a follower commits only
//! up to what it has, so an early `leader_commit` is harmless). A single entry larger than the
//! bound travels alone, which the receiver's limit allows (`peer_message_bytes_max`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use aspen_core::TypeConfig;
use aspen_core::codec;
use aspen_core::limits::PEER_APPEND_BYTES_MAX;
use futures_util::{Stream, StreamExt};
use openraft::raft::AppendEntriesRequest;

/// `request` as one or more requests whose entries encode to at most `bytes_max` each (or to
/// one entry). Together they carry the same entries, in order.
pub fn split_append(
    request: AppendEntriesRequest<TypeConfig>,
    bytes_max: u64,
) -> Vec<AppendEntriesRequest<TypeConfig>> {
    assert!(bytes_max > 0);
    let total: u64 = request
        .entries
        .iter()
        .map(|e| codec::encoded_len(e) as u64)
        .sum();
    if total <= bytes_max {
        return vec![request];
    }
    let AppendEntriesRequest {
        vote,
        prev_log_id,
        leader_commit,
        entries,
    } = request;
    let mut parts = Vec::new();
    let mut prev = prev_log_id;
    let mut current = Vec::new();
    let mut current_bytes: u64 = 0;
    for entry in entries {
        let bytes = codec::encoded_len(&entry) as u64;
        if !current.is_empty() && current_bytes + bytes > bytes_max {
            let part: Vec<_> = std::mem::take(&mut current);
            let next_prev = part
                .last()
                .map(|e: &aspen_core::type_config::alias::Entry| e.log_id);
            parts.push(AppendEntriesRequest {
                vote,
                prev_log_id: prev,
                leader_commit,
                entries: part,
            });
            prev = next_prev;
            current_bytes = 0;
        }
        current_bytes += bytes;
        current.push(entry);
    }
    parts.push(AppendEntriesRequest {
        vote,
        prev_log_id: prev,
        leader_commit,
        entries: current,
    });
    parts
}

/// Parts sent for each original request, oldest first: the reply side folds that many replies
/// back into one.
#[derive(Clone, Default)]
pub struct PartCounts(Arc<Mutex<VecDeque<usize>>>);

impl PartCounts {
    fn push(&self, parts: usize) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(parts);
    }

    fn pop(&self) -> usize {
        let popped = self.0.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        popped.unwrap_or(1)
    }
}

/// Each request of `input` split as [`split_append`] does, with the part counts recorded.
pub fn split_stream<S>(
    input: S,
    counts: PartCounts,
) -> impl Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + 'static
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + 'static,
{
    input.flat_map(move |request| {
        let parts = split_append(request, PEER_APPEND_BYTES_MAX);
        counts.push(parts.len());
        futures_util::stream::iter(parts)
    })
}

/// Folds the replies to split requests back into one reply per original request: the last
/// part's reply if every part succeeded, else the first failure (the parts after it are
/// skipped; the follower's stream ends after a failure anyway).
pub fn join_replies<S, T, E, F>(
    replies: S,
    counts: PartCounts,
) -> impl Stream<Item = Result<Result<T, E>, F>> + Send
where
    S: Stream<Item = Result<Result<T, E>, F>> + Send + Unpin,
    T: Send,
    E: Send,
    F: Send,
{
    futures_util::stream::unfold(
        (replies, counts, 0usize),
        |(mut replies, counts, mut skip)| async move {
            loop {
                let first = replies.next().await?;
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                let mut remaining = counts.pop().saturating_sub(1);
                let mut result = first;
                while remaining > 0 && matches!(result, Ok(Ok(_))) {
                    match replies.next().await {
                        Some(next) => {
                            result = next;
                            remaining -= 1;
                        }
                        None => break,
                    }
                }
                skip = remaining;
                return Some((result, (replies, counts, skip)));
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aspen_core::type_config::alias::{Entry, LogId};
    use aspen_core::{Command, PutRequest};
    use openraft::EntryPayload;

    fn log_id(index: u64) -> LogId {
        openraft::testing::log_id::<TypeConfig>(1, 1, index)
    }

    fn entry(index: u64, value_bytes: usize) -> Entry {
        openraft::Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(Command::Put(PutRequest {
                key: format!("k{index}").into_bytes(),
                value: vec![b'v'; value_bytes],
                ..Default::default()
            })),
        }
    }

    fn request(entries: Vec<Entry>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: aspen_core::type_config::alias::Vote::new_committed(1, 1),
            prev_log_id: Some(log_id(9)),
            leader_commit: Some(log_id(5)),
            entries,
        }
    }

    #[test]
    fn a_large_batch_splits_into_chained_parts_within_the_bound() {
        let bytes_max = 10_000;
        let entries: Vec<Entry> = (10..60).map(|i| entry(i, 1000)).collect();
        let parts = split_append(request(entries.clone()), bytes_max);
        assert!(parts.len() > 1);
        let mut prev = Some(log_id(9));
        let mut rejoined = Vec::new();
        for part in &parts {
            assert_eq!(part.prev_log_id, prev, "each part follows the previous one");
            assert_eq!(part.leader_commit, Some(log_id(5)));
            let bytes: usize = part.entries.iter().map(codec::encoded_len).sum();
            assert!(bytes as u64 <= bytes_max, "part of {bytes} bytes");
            prev = part.entries.last().map(|e| e.log_id);
            rejoined.extend(part.entries.iter().cloned());
        }
        assert_eq!(rejoined, entries);
    }

    #[test]
    fn small_batches_stay_whole_and_a_huge_entry_goes_alone() {
        let whole = split_append(request(vec![entry(10, 10), entry(11, 10)]), 10_000);
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0].entries.len(), 2);
        let parts = split_append(
            request(vec![entry(10, 10), entry(11, 50_000), entry(12, 10)]),
            10_000,
        );
        let sizes: Vec<usize> = parts.iter().map(|p| p.entries.len()).collect();
        assert_eq!(sizes, vec![1, 1, 1]);
        assert_eq!(parts[2].prev_log_id, Some(log_id(11)));
        let empty = split_append(request(Vec::new()), 10_000);
        assert_eq!(empty.len(), 1, "a heartbeat is still sent");
    }

    #[tokio::test]
    async fn replies_to_parts_fold_into_one_per_request() {
        let counts = PartCounts::default();
        counts.push(3);
        counts.push(1);
        counts.push(2);
        let replies: Vec<Result<Result<u64, &str>, ()>> = vec![
            Ok(Ok(1)),
            Ok(Ok(2)),
            Ok(Ok(3)),
            Ok(Ok(4)),
            Ok(Err("conflict")),
            Ok(Ok(6)),
        ];
        let joined: Vec<_> = join_replies(futures_util::stream::iter(replies), counts)
            .collect()
            .await;
        assert_eq!(joined, vec![Ok(Ok(3)), Ok(Ok(4)), Ok(Err("conflict"))]);
    }
}
