//! The search over one partition: Wing & Gong's backtracking over a list of call and return
//! events, pruned by Lowe's cache of configurations already explored, driven by an explicit
//! stack so that its depth never touches the thread's stack.

use std::collections::HashSet;
use std::hash::Hash;
use std::time::Instant;

use crate::bitset::BitSet;
use crate::check::CheckConfig;
use crate::history::History;
use crate::limits::{
    CACHE_ENTRY_OVERHEAD_BYTES, DEADLINE_CHECK_INTERVAL_STEPS, EXPLANATION_STATES_MAX,
};
use crate::model::Model;

/// The limits of one check, shared by all its partitions.
pub(crate) struct Budget {
    started: Instant,
    time_budget_ms: u64,
    states_explored_max: u64,
    cache_bytes_max: u64,
}

impl Budget {
    pub(crate) fn new(config: &CheckConfig) -> Budget {
        Budget {
            started: Instant::now(),
            time_budget_ms: config.time_budget_ms,
            states_explored_max: config.states_explored_max,
            cache_bytes_max: config.cache_bytes_max,
        }
    }

    pub(crate) fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn time_exceeded(&self) -> bool {
        self.elapsed_ms() > self.time_budget_ms
    }
}

/// Which limit stopped a search before it could decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exhausted {
    StatesExploredMax,
    CacheBytesMax,
    TimeBudget { elapsed_ms: u64 },
}

/// Where a decided-negative search got furthest, in partition-local indices.
pub(crate) struct Failure<S> {
    /// The operation whose return the search could never get past.
    pub(crate) failing_op: usize,
    /// Operations invoked in the smallest failing prefix, in invocation order.
    pub(crate) prefix_ops: Vec<usize>,
    /// Distinct states reached just before that return, at most [`EXPLANATION_STATES_MAX`].
    pub(crate) candidate_states: Vec<S>,
    pub(crate) candidate_states_truncated: bool,
}

pub(crate) enum Outcome<S> {
    Linearizable,
    NotLinearizable(Failure<S>),
    Exhausted(Exhausted),
}

/// The head sentinel of the event list.
const HEAD: usize = 0;

/// Call and return events of a partition in real-time order, as a doubly linked list from
/// which the search unlinks an operation (and relinks it, on backtracking) in O(1).
/// Entries are numbered by their position in time order: 1..=2n, with sentinels at 0 and 2n+1.
struct Events {
    /// Per entry: the partition-local operation.
    op: Vec<usize>,
    /// Per entry: a return (true) or a call (false).
    is_return: Vec<bool>,
    /// Per operation: its call and return entries.
    call_entry: Vec<usize>,
    return_entry: Vec<usize>,
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl Events {
    fn new<I, O>(history: &History<I, O>, ops: &[usize]) -> Events {
        // Sort key (time, kind, op). Calls sort before returns at the same instant, so two
        // operations that meet at one instant count as concurrent: the weaker real-time
        // order, which can only make the checker more permissive, never wrongly reject.
        // Pending and indeterminate operations return at +infinity, after every real time.
        let infinity_ns = u128::from(u64::MAX) + 1;
        let mut keys: Vec<(u128, bool, usize)> = Vec::with_capacity(2 * ops.len());
        for (local, &index) in ops.iter().enumerate() {
            let operation = &history.ops()[index];
            keys.push((u128::from(operation.invoke_ns), false, local));
            let return_ns = operation.return_ns().map_or(infinity_ns, u128::from);
            keys.push((return_ns, true, local));
        }
        keys.sort_unstable();

        let entries = keys.len() + 2;
        let mut events = Events {
            op: vec![usize::MAX; entries],
            is_return: vec![false; entries],
            call_entry: vec![0; ops.len()],
            return_entry: vec![0; ops.len()],
            next: (1..=entries).collect(),
            prev: (0..entries).map(|e| e.saturating_sub(1)).collect(),
        };
        for (position, &(_, is_return, local)) in keys.iter().enumerate() {
            let entry = position + 1;
            events.op[entry] = local;
            events.is_return[entry] = is_return;
            if is_return {
                events.return_entry[local] = entry;
            } else {
                events.call_entry[local] = entry;
            }
        }
        events
    }

    fn tail(&self) -> usize {
        self.op.len() - 1
    }

    fn unlink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    /// Undoes `unlink(entry)`; relinks must come in the reverse order of their unlinks.
    fn relink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = entry;
        self.prev[next] = entry;
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_entry[op]);
        self.unlink(self.return_entry[op]);
    }

    fn unlift(&mut self, op: usize) {
        self.relink(self.return_entry[op]);
        self.relink(self.call_entry[op]);
    }
}

/// One linearized operation on the explicit stack, with the state to restore on backtracking.
struct Frame<S> {
    op: usize,
    state_before: S,
}

/// The configuration the search stands in: the model state after the linearized operations.
struct Frontier<S> {
    state: S,
    linearized: BitSet,
    stack: Vec<Frame<S>>,
    /// Operations with a known output not yet linearized. At zero the search is done: what
    /// remains is indeterminate, and taking effect after everything else (or never) is a
    /// valid choice for each of them, since nothing observes the store afterwards.
    determinate_left: usize,
}

/// Lowe's memoization: configurations (linearized set, state) already explored. Reaching one
/// again by another order leads to exactly the same futures, so it is skipped.
struct Cache<S> {
    seen: HashSet<(BitSet, S)>,
    states_explored: u64,
    /// Estimate: entry sizes plus heap data; the hash table's spare capacity is not counted.
    bytes: u64,
}

impl<S: Clone + Hash + Eq> Cache<S> {
    /// Records a configuration; false if it was already explored.
    fn insert_new<M: Model<State = S>>(
        &mut self,
        linearized: &BitSet,
        state: &S,
        budget: &Budget,
    ) -> Result<bool, Exhausted> {
        if !self.seen.insert((linearized.clone(), state.clone())) {
            return Ok(false);
        }
        self.states_explored += 1;
        self.bytes += linearized.heap_bytes()
            + size_of::<(BitSet, S)>() as u64
            + M::state_heap_bytes(state)
            + CACHE_ENTRY_OVERHEAD_BYTES;
        if self.states_explored > budget.states_explored_max {
            return Err(Exhausted::StatesExploredMax);
        }
        if self.bytes > budget.cache_bytes_max {
            return Err(Exhausted::CacheBytesMax);
        }
        Ok(true)
    }
}

/// The furthest return the search was ever stopped at, and the states it stood in there.
/// The history cut just after that return is the smallest prefix that is not linearizable:
/// getting past an earlier return on some path means that path linearizes the prefix cut
/// there.
struct Blocked<S> {
    entry: usize,
    states: Vec<S>,
    truncated: bool,
}

impl<S: Clone + Eq> Blocked<S> {
    fn record(&mut self, entry: usize, state: &S) {
        if entry > self.entry {
            self.entry = entry;
            self.states.clear();
            self.truncated = false;
        }
        if entry < self.entry || self.states.contains(state) {
            return;
        }
        if self.states.len() < EXPLANATION_STATES_MAX {
            self.states.push(state.clone());
        } else {
            self.truncated = true;
        }
    }
}

/// Decides whether the operations `ops` (indices into `history`) linearize from `init`.
pub(crate) fn search<M: Model>(
    history: &History<M::Input, M::Output>,
    ops: &[usize],
    init: M::State,
    budget: &Budget,
) -> Outcome<M::State> {
    match run::<M>(history, ops, init, budget) {
        Ok(None) => Outcome::Linearizable,
        Ok(Some(failure)) => Outcome::NotLinearizable(failure),
        Err(exhausted) => Outcome::Exhausted(exhausted),
    }
}

/// The search loop: `Ok(None)` when linearizable, `Ok(Some(_))` when not.
fn run<M: Model>(
    history: &History<M::Input, M::Output>,
    ops: &[usize],
    init: M::State,
    budget: &Budget,
) -> Result<Option<Failure<M::State>>, Exhausted> {
    let operation = |local: usize| &history.ops()[ops[local]];
    let mut events = Events::new(history, ops);
    let mut frontier = Frontier {
        state: init,
        linearized: BitSet::with_capacity(ops.len()),
        stack: Vec::with_capacity(ops.len()),
        determinate_left: (0..ops.len())
            .filter(|&local| operation(local).output().is_some())
            .count(),
    };
    let mut cache = Cache {
        seen: HashSet::new(),
        states_explored: 0,
        bytes: 0,
    };
    let mut blocked = Blocked {
        entry: HEAD,
        states: Vec::new(),
        truncated: false,
    };
    let mut entry = events.next[HEAD];
    let mut steps: u64 = 0;
    while frontier.determinate_left > 0 {
        steps += 1;
        if steps.is_multiple_of(DEADLINE_CHECK_INTERVAL_STEPS) && budget.time_exceeded() {
            let elapsed_ms = budget.elapsed_ms();
            return Err(Exhausted::TimeBudget { elapsed_ms });
        }
        // An unlinearized determinate operation's return lies ahead, so the scan stops there.
        assert_ne!(entry, events.tail(), "scan ran past every return");
        let op = events.op[entry];
        if !events.is_return[entry] {
            if try_linearize::<M>(operation(op), op, &mut frontier, &mut cache, budget)? {
                events.lift(op);
                entry = events.next[HEAD];
            } else {
                entry = events.next[entry];
            }
            continue;
        }
        // A return whose operation is not linearized: every order from here is stuck.
        debug_assert!(operation(op).output().is_some(), "blocked at +infinity");
        blocked.record(entry, &frontier.state);
        let Some(frame) = frontier.stack.pop() else {
            return Ok(Some(failure(&events, blocked)));
        };
        frontier.linearized.remove(frame.op);
        frontier.state = frame.state_before;
        if operation(frame.op).output().is_some() {
            frontier.determinate_left += 1;
        }
        events.unlift(frame.op);
        entry = events.next[events.call_entry[frame.op]];
    }
    Ok(None)
}

/// Tries to take `op` as the next operation to take effect; on success the frontier moves
/// forward and the caller unlinks `op` from the event list.
fn try_linearize<M: Model>(
    operation: &crate::history::Operation<M::Input, M::Output>,
    op: usize,
    frontier: &mut Frontier<M::State>,
    cache: &mut Cache<M::State>,
    budget: &Budget,
) -> Result<bool, Exhausted> {
    let (next_state, output) = M::step(&frontier.state, &operation.input);
    if let Some(observed) = operation.output()
        && !M::output_matches(&output, observed)
    {
        return Ok(false);
    }
    frontier.linearized.insert(op);
    if !cache.insert_new::<M>(&frontier.linearized, &next_state, budget)? {
        frontier.linearized.remove(op);
        return Ok(false);
    }
    let state_before = std::mem::replace(&mut frontier.state, next_state);
    frontier.stack.push(Frame { op, state_before });
    if operation.output().is_some() {
        frontier.determinate_left -= 1;
    }
    Ok(true)
}

fn failure<S>(events: &Events, blocked: Blocked<S>) -> Failure<S> {
    let prefix_ops = (1..=blocked.entry)
        .filter(|&entry| !events.is_return[entry])
        .map(|entry| events.op[entry])
        .collect();
    Failure {
        failing_op: events.op[blocked.entry],
        prefix_ops,
        candidate_states: blocked.states,
        candidate_states_truncated: blocked.truncated,
    }
}
