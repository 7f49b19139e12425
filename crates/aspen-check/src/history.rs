//! Recording what clients did: each operation's client, invocation time and completion, as
//! plain data a test harness fills while it runs.

use std::fmt;

use crate::limits::HISTORY_OPS_MAX;

/// Names one operation of a [`History`]: its index in invocation-recording order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u32);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// How an operation ended, as far as its client knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion<O> {
    /// Invoked, nothing recorded since. The checker treats it as [`Completion::Indeterminate`]:
    /// a run may stop with requests in flight.
    Pending,
    /// The client received `output` at `at_ns`.
    Returned { output: O, at_ns: u64 },
    /// The client gave up (timeout, lost connection): the operation may or may not have
    /// taken effect, at any time after its invocation. Its output is unknown and its
    /// completion is taken as +infinity.
    Indeterminate,
}

/// One client operation: an interval in real time during which it took effect (if it did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// Which client issued it; for explanations only, the checker does not require a
    /// client's operations to be sequential.
    pub client_id: u64,
    pub input: I,
    /// When the client sent it, in nanoseconds on one clock shared by all clients.
    pub invoke_ns: u64,
    pub completion: Completion<O>,
}

impl<I, O> Operation<I, O> {
    /// The completion time, `None` for +infinity (pending or indeterminate).
    pub fn return_ns(&self) -> Option<u64> {
        match &self.completion {
            Completion::Returned { at_ns, .. } => Some(*at_ns),
            Completion::Pending | Completion::Indeterminate => None,
        }
    }

    /// The observed output, `None` when it is unknown.
    pub fn output(&self) -> Option<&O> {
        match &self.completion {
            Completion::Returned { output, .. } => Some(output),
            Completion::Pending | Completion::Indeterminate => None,
        }
    }
}

/// Why a history could not record what it was given: each is a harness bug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryError {
    /// The id was not returned by this history.
    UnknownOp { op: OpId },
    /// The operation already returned or was declared indeterminate.
    AlreadyCompleted { op: OpId },
    /// A completion earlier than the invocation: the clock is not shared or not monotonic.
    CompletedBeforeInvoke {
        op: OpId,
        invoke_ns: u64,
        at_ns: u64,
    },
    /// More than [`HISTORY_OPS_MAX`] operations.
    TooManyOps,
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::UnknownOp { op } => write!(f, "operation {op} is not in this history"),
            HistoryError::AlreadyCompleted { op } => {
                write!(
                    f,
                    "operation {op} already completed or was declared indeterminate"
                )
            }
            HistoryError::CompletedBeforeInvoke {
                op,
                invoke_ns,
                at_ns,
            } => write!(
                f,
                "operation {op} completed at {at_ns} ns, before its invocation at {invoke_ns} ns"
            ),
            HistoryError::TooManyOps => {
                write!(f, "a history holds at most {HISTORY_OPS_MAX} operations")
            }
        }
    }
}

impl std::error::Error for HistoryError {}

/// A concurrent history: operations in the order the harness recorded their invocations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History<I, O> {
    ops: Vec<Operation<I, O>>,
}

impl<I, O> Default for History<I, O> {
    fn default() -> Self {
        History { ops: Vec::new() }
    }
}

impl<I, O> History<I, O> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `client_id` sent `input` at `invoke_ns`; the operation is pending until
    /// [`History::complete`] or [`History::indeterminate`].
    ///
    /// # Panics
    /// Past [`HISTORY_OPS_MAX`] operations (4 billion: memory runs out long before); use
    /// [`History::push`] to get an error instead.
    pub fn invoke(&mut self, client_id: u64, input: I, invoke_ns: u64) -> OpId {
        let operation = Operation {
            client_id,
            input,
            invoke_ns,
            completion: Completion::Pending,
        };
        match self.push(operation) {
            Ok(op) => op,
            Err(error) => panic!("History::invoke: {error}"),
        }
    }

    /// Records that `op` returned `output` at `at_ns`.
    pub fn complete(&mut self, op: OpId, output: O, at_ns: u64) -> Result<(), HistoryError> {
        let operation = self.pending_mut(op)?;
        if at_ns < operation.invoke_ns {
            return Err(HistoryError::CompletedBeforeInvoke {
                op,
                invoke_ns: operation.invoke_ns,
                at_ns,
            });
        }
        operation.completion = Completion::Returned { output, at_ns };
        Ok(())
    }

    /// Records that `op`'s client gave up on it: it may or may not take effect, ever.
    /// Declaring an indeterminate operation indeterminate again is allowed.
    pub fn indeterminate(&mut self, op: OpId) -> Result<(), HistoryError> {
        let operation = self.get_mut(op)?;
        if matches!(operation.completion, Completion::Indeterminate) {
            return Ok(());
        }
        let operation = self.pending_mut(op)?;
        operation.completion = Completion::Indeterminate;
        Ok(())
    }

    /// Appends a whole operation, for harnesses that build histories from their own records.
    pub fn push(&mut self, operation: Operation<I, O>) -> Result<OpId, HistoryError> {
        let index = u32::try_from(self.ops.len()).map_err(|_| HistoryError::TooManyOps)?;
        if u64::from(index) >= HISTORY_OPS_MAX {
            return Err(HistoryError::TooManyOps);
        }
        let op = OpId(index);
        if let Some(at_ns) = operation.return_ns()
            && at_ns < operation.invoke_ns
        {
            return Err(HistoryError::CompletedBeforeInvoke {
                op,
                invoke_ns: operation.invoke_ns,
                at_ns,
            });
        }
        self.ops.push(operation);
        Ok(op)
    }

    /// All operations, indexed by `OpId`.
    pub fn ops(&self) -> &[Operation<I, O>] {
        &self.ops
    }

    pub fn get(&self, op: OpId) -> Option<&Operation<I, O>> {
        self.ops.get(op.0 as usize)
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn get_mut(&mut self, op: OpId) -> Result<&mut Operation<I, O>, HistoryError> {
        self.ops
            .get_mut(op.0 as usize)
            .ok_or(HistoryError::UnknownOp { op })
    }

    fn pending_mut(&mut self, op: OpId) -> Result<&mut Operation<I, O>, HistoryError> {
        let operation = self.get_mut(op)?;
        match operation.completion {
            Completion::Pending => Ok(operation),
            Completion::Returned { .. } | Completion::Indeterminate => {
                Err(HistoryError::AlreadyCompleted { op })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_records_and_rejects_misuse() {
        let mut history: History<&str, u32> = History::new();
        let a = history.invoke(1, "a", 10);
        let b = history.invoke(2, "b", 20);
        assert_eq!(
            history.complete(a, 1, 5),
            Err(HistoryError::CompletedBeforeInvoke {
                op: a,
                invoke_ns: 10,
                at_ns: 5
            })
        );
        assert_eq!(history.complete(a, 1, 10), Ok(()));
        assert_eq!(
            history.complete(a, 1, 11),
            Err(HistoryError::AlreadyCompleted { op: a })
        );
        assert_eq!(
            history.indeterminate(a),
            Err(HistoryError::AlreadyCompleted { op: a })
        );
        assert_eq!(history.indeterminate(b), Ok(()));
        assert_eq!(history.indeterminate(b), Ok(()));
        assert_eq!(
            history.complete(b, 2, 30),
            Err(HistoryError::AlreadyCompleted { op: b })
        );
        assert_eq!(
            history.complete(OpId(9), 0, 0),
            Err(HistoryError::UnknownOp { op: OpId(9) })
        );
        assert_eq!(history.len(), 2);
        assert_eq!(history.get(a).and_then(|o| o.return_ns()), Some(10));
        assert_eq!(history.get(b).and_then(|o| o.output()), None);
    }

    #[test]
    fn push_validates_times() {
        let mut history: History<(), ()> = History::new();
        let bad = Operation {
            client_id: 0,
            input: (),
            invoke_ns: 5,
            completion: Completion::Returned {
                output: (),
                at_ns: 4,
            },
        };
        assert!(matches!(
            history.push(bad),
            Err(HistoryError::CompletedBeforeInvoke { .. })
        ));
        assert!(history.is_empty());
    }
}
