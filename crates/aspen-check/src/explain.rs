//! Turning a failed search into something a person can act on: the smallest failing prefix,
//! the operation that could not be placed, and the states the model could have been in.

use std::fmt::{self, Write as _};

use crate::history::{History, OpId, Operation};
use crate::limits::{EXPLANATION_OPS_MAX, HISTORY_OPS_MAX};
use crate::model::Model;
use crate::search::Failure;

/// Why a (sub-)history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The operation that could not be linearized. The smallest failing prefix of the
    /// (sub-)history ends just after it returned: every prefix cut at an earlier return is
    /// linearizable, this one is not.
    pub failing_op: OpId,
    pub client_id: u64,
    /// When the failing operation returned: the end of the smallest failing prefix.
    pub prefix_end_ns: u64,
    /// Operations invoked within the smallest failing prefix, in invocation order.
    pub prefix_ops: Vec<OpId>,
    /// Model states (rendered) the search stood in just before the failing operation
    /// returned, at most a few.
    pub candidate_states: Vec<String>,
    /// All of the above as a human-readable report.
    pub text: String,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

pub(crate) fn explain<M: Model>(
    history: &History<M::Input, M::Output>,
    ops: &[usize],
    failure: Failure<M::State>,
    partition: &str,
) -> Explanation {
    // Indexes into the history, which holds at most HISTORY_OPS_MAX (u32::MAX) operations.
    let op_id = |local: usize| match u32::try_from(ops[local]) {
        Ok(index) => OpId(index),
        Err(_) => unreachable!("a history holds at most {HISTORY_OPS_MAX} operations"),
    };
    let failing = &history.ops()[ops[failure.failing_op]];
    let failing_op = op_id(failure.failing_op);
    let Some(prefix_end_ns) = failing.return_ns() else {
        unreachable!("the search only stops at the returns of operations with an output");
    };
    let prefix_ops: Vec<OpId> = failure
        .prefix_ops
        .iter()
        .map(|&local| op_id(local))
        .collect();

    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(text, "{partition}: not linearizable.");
    let _ = writeln!(
        text,
        "Smallest failing prefix: the {} operation(s) invoked up to {prefix_end_ns} ns, cut just \
         after op {failing_op} returned (every prefix cut at an earlier return is linearizable).",
        prefix_ops.len()
    );
    let _ = writeln!(
        text,
        "Op {failing_op} (client {}, invoked at {} ns, returned at {prefix_end_ns} ns) cannot be \
         linearized: {:?} -> {}",
        failing.client_id,
        failing.invoke_ns,
        failing.input,
        describe_output(failing.output()),
    );
    let candidate_states = write_candidates::<M>(&mut text, failing, &failure);
    write_context(&mut text, history, &prefix_ops, failing_op);
    Explanation {
        failing_op,
        client_id: failing.client_id,
        prefix_end_ns,
        prefix_ops,
        candidate_states,
        text,
    }
}

/// Lists the states the failing operation could have applied to, and what it would have
/// returned in each.
fn write_candidates<M: Model>(
    text: &mut String,
    failing: &Operation<M::Input, M::Output>,
    failure: &Failure<M::State>,
) -> Vec<String> {
    let more = if failure.candidate_states_truncated {
        ", more not shown"
    } else {
        ""
    };
    let _ = writeln!(
        text,
        "Model states reachable just before it returned ({} distinct{more}), and what it would \
         have returned in each:",
        failure.candidate_states.len()
    );
    let mut rendered = Vec::with_capacity(failure.candidate_states.len());
    for state in &failure.candidate_states {
        let (_, output) = M::step(state, &failing.input);
        let matches = failing
            .output()
            .is_some_and(|observed| M::output_matches(&output, observed));
        let note = if matches {
            " (as observed, but then no order fits the operations that returned before it)"
        } else {
            ""
        };
        let _ = writeln!(text, "  {state:?}: {output:?}{note}");
        rendered.push(format!("{state:?}"));
    }
    rendered
}

/// Lists the last operations of the failing prefix: usually enough to see the write the
/// failing operation should (or should not) have observed.
fn write_context<I: fmt::Debug, O: fmt::Debug>(
    text: &mut String,
    history: &History<I, O>,
    prefix_ops: &[OpId],
    failing_op: OpId,
) {
    let shown = &prefix_ops[prefix_ops.len().saturating_sub(EXPLANATION_OPS_MAX)..];
    let _ = writeln!(
        text,
        "Last {} operation(s) of the failing prefix, in invocation order (* = failing op):",
        shown.len()
    );
    for &op in shown {
        let Some(operation) = history.get(op) else {
            continue;
        };
        let marker = if op == failing_op { "*" } else { " " };
        let _ = writeln!(text, " {marker}{}", describe_op(op, operation));
    }
}

fn describe_op<I: fmt::Debug, O: fmt::Debug>(op: OpId, operation: &Operation<I, O>) -> String {
    let span = match operation.return_ns() {
        Some(at_ns) => format!("[{} ns, {at_ns} ns]", operation.invoke_ns),
        None => format!("[{} ns, ?]", operation.invoke_ns),
    };
    format!(
        "{op} client {} {span} {:?} -> {}",
        operation.client_id,
        operation.input,
        describe_output(operation.output())
    )
}

fn describe_output<O: fmt::Debug>(output: Option<&O>) -> String {
    match output {
        Some(output) => format!("{output:?}"),
        None => "? (indeterminate)".to_string(),
    }
}
