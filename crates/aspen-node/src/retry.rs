//! One rule for "run on the leader, else forward; again while that is safe", used by every
//! request a node may have to hand to the leader (writes, ReadIndex, leases, membership
//! changes, the cluster id).
//!
//! Whether a failed attempt may be repeated is a property of the error ([`NodeError::retry`]),
//! decided where the error is made: a request may be sent again only when it certainly did
//! not take effect. A forwarded write whose connection broke after it was sent may have been
//! applied; repeating it could apply it twice, so that error is final.

use std::future::Future;

use aspen_core::NodeId;

use crate::error::NodeError;
use crate::node::{FORWARD_ATTEMPTS_MAX, Node};

/// Whether a request that failed with an error may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// It certainly did not take effect: there was no leader, the node asked was no longer
    /// the leader before it proposed anything, or the request never left this node.
    Safe,
    /// It may have taken effect, or it failed for a reason another attempt would not change.
    Unsafe,
}

impl NodeError {
    /// Whether the request that failed with this error may be sent again.
    pub fn retry(&self) -> Retry {
        match self {
            NodeError::NoLeader | NodeError::LeaderChanged => Retry::Safe,
            NodeError::Apply(_)
            | NodeError::Timeout
            | NodeError::Stopped
            | NodeError::MemberNotFound
            | NodeError::PeerUrlExists
            | NodeError::NotLearner
            | NodeError::LearnerNotReady
            | NodeError::NotEnoughStartedMembers
            | NodeError::Unhealthy
            | NodeError::TooManyRequests
            | NodeError::Storage(_)
            | NodeError::DiskFull(_)
            | NodeError::Raft(_)
            | NodeError::Peer(_) => Retry::Unsafe,
        }
    }
}

impl Node {
    /// Runs `here()` if this node leads, else `there(leader)`; tries again, with whoever leads
    /// then, while the error says a retry is safe, at most `FORWARD_ATTEMPTS_MAX` times. The
    /// last safe-to-retry error is returned when the attempts run out.
    pub(crate) async fn on_leader<T, H, HF, R, RF>(&self, here: H, there: R) -> Result<T, NodeError>
    where
        H: FnMut() -> HF,
        HF: Future<Output = Result<T, NodeError>>,
        R: FnMut(NodeId) -> RF,
        RF: Future<Output = Result<T, NodeError>>,
    {
        retry_on_leader(self.id(), || self.wait_for_leader(), here, there).await
    }
}

/// [`Node::on_leader`] with the leader lookup passed in (`me` is this node's id).
async fn retry_on_leader<T, L, LF, H, HF, R, RF>(
    me: NodeId,
    mut leader: L,
    mut here: H,
    mut there: R,
) -> Result<T, NodeError>
where
    L: FnMut() -> LF,
    LF: Future<Output = Result<NodeId, NodeError>>,
    H: FnMut() -> HF,
    HF: Future<Output = Result<T, NodeError>>,
    R: FnMut(NodeId) -> RF,
    RF: Future<Output = Result<T, NodeError>>,
{
    let mut last = NodeError::LeaderChanged;
    for _ in 0..FORWARD_ATTEMPTS_MAX {
        let leader = leader().await?;
        let result = if leader == me {
            here().await
        } else {
            there(leader).await
        };
        match result {
            Err(error) if error.retry() == Retry::Safe => last = error,
            other => return other,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// Runs `retry_on_leader` as node 1 with leaders and results taken from the scripts in
    /// order; returns its result and the calls made ("here", or "there N").
    fn run(
        leaders: Vec<Result<NodeId, NodeError>>,
        results: Vec<Result<u32, NodeError>>,
    ) -> (Result<u32, NodeError>, Vec<String>) {
        let leaders = RefCell::new(leaders.into_iter());
        let results = RefCell::new(results.into_iter());
        let calls = RefCell::new(Vec::new());
        let next = || results.borrow_mut().next().expect("a scripted result");
        let outcome = futures_util::FutureExt::now_or_never(retry_on_leader(
            1,
            || std::future::ready(leaders.borrow_mut().next().expect("a scripted leader")),
            || {
                calls.borrow_mut().push("here".to_string());
                std::future::ready(next())
            },
            |leader| {
                calls.borrow_mut().push(format!("there {leader}"));
                std::future::ready(next())
            },
        ))
        .expect("ready");
        (outcome, calls.into_inner())
    }

    #[test]
    fn retries_follow_the_leader_while_safe() {
        // Forwarded to 2, which lost leadership; this node leads next and succeeds.
        let (result, calls) = run(
            vec![Ok(2), Ok(1)],
            vec![Err(NodeError::LeaderChanged), Ok(7)],
        );
        assert_eq!(result, Ok(7));
        assert_eq!(calls, vec!["there 2", "here"]);
    }

    #[test]
    fn an_unsafe_error_is_returned_after_one_attempt() {
        let lost = NodeError::Peer("connection to the leader lost, outcome unknown".into());
        let (result, calls) = run(vec![Ok(2)], vec![Err(lost.clone())]);
        assert_eq!(result, Err(lost));
        assert_eq!(calls, vec!["there 2"]);
        let (result, calls) = run(vec![Ok(1)], vec![Err(NodeError::Timeout)]);
        assert_eq!(result, Err(NodeError::Timeout));
        assert_eq!(calls, vec!["here"]);
    }

    #[test]
    fn attempts_are_bounded_and_the_last_safe_error_is_returned() {
        let attempts = FORWARD_ATTEMPTS_MAX as usize;
        let mut results = vec![Err(NodeError::LeaderChanged); attempts - 1];
        results.push(Err(NodeError::NoLeader));
        let (result, calls) = run(vec![Ok(3); attempts], results);
        assert_eq!(result, Err(NodeError::NoLeader));
        assert_eq!(calls.len(), attempts);
        // No leader at all: the wait's own error, without an attempt.
        let (result, calls) = run(vec![Err(NodeError::NoLeader)], Vec::new());
        assert_eq!(result, Err(NodeError::NoLeader));
        assert!(calls.is_empty());
    }

    #[test]
    fn only_errors_that_prove_nothing_happened_are_safe_to_retry() {
        assert_eq!(NodeError::NoLeader.retry(), Retry::Safe);
        assert_eq!(NodeError::LeaderChanged.retry(), Retry::Safe);
        // A lost connection to the leader or a timeout leave the outcome unknown.
        assert_eq!(
            NodeError::Peer("connection lost".into()).retry(),
            Retry::Unsafe
        );
        assert_eq!(NodeError::Timeout.retry(), Retry::Unsafe);
        assert_eq!(
            NodeError::Apply(aspen_core::ApplyError::NoSpace).retry(),
            Retry::Unsafe
        );
    }
}
