//! Model-based test of the MVCC state machine against etcd's semantics.
//!
//! Random sequences of Put, DeleteRange, Txn, Compact, lease and alarm commands are applied
//! through `StateMachine::apply_entries`, and the same commands are applied to a small model
//! kept here (every version of every key, revision starting at 1, +1 per command that writes).
//! After each batch the responses are compared, and range reads at the current revision, at
//! older ones, below the compaction point and in the future are compared too. At the end every
//! readable revision is compared, and the redb store is reopened and compared again.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use std::collections::{BTreeMap, BTreeSet};

use aspen_core::command::{AlarmAction, AlarmType};
use aspen_core::limits::Limits;
use aspen_core::response::RangeResult;
use aspen_core::type_config::alias::Entry;
use aspen_core::{
    ApplyError, ApplyResponse, Command, CommandResult, Compare, CompareResult, CompareTarget,
    DeleteRangeRequest, KeyValue, PutRequest, RangeRequest, RequestOp, ResponseOp, SortOrder,
    SortTarget, TxnRequest, TypeConfig,
};
use aspen_storage::state_machine::ReadOutcome;
use aspen_storage::{StateMachine, StorageBackend, open_storage};
use openraft::EntryPayload;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestCaseResult};

/// Few, short keys, so that commands collide. `\xff` exercises the prefix end rule.
const KEYS: [&[u8]; 6] = [b"a", b"ab", b"b", b"bc", b"c", b"\xff"];
/// Range endpoints: the keys and points between them.
const BOUNDS: [&[u8]; 9] = [
    b"\0", b"a", b"aa", b"ab", b"b", b"b\0", b"bc", b"c", b"\xff",
];
const PREFIXES: [&[u8]; 4] = [b"a", b"b", b"ab", b"\xff"];
const VALUES: [&[u8]; 4] = [b"", b"x", b"xy", b"y"];
/// Lease ids granted are 1..=LEASE_ID_MAX; puts also name LEASE_ID_MAX + 1, never granted.
const LEASE_ID_MAX: u64 = 2;

const CASES: u32 = 96;
const BATCHES_MIN: usize = 8;
const BATCHES_MAX: usize = 20;
const BATCH_COMMANDS_MAX: usize = 4;
const READS_PER_BATCH_MAX: usize = 4;

// ---------------------------------------------------------------------------------------------
// The model.

#[derive(Debug, Clone)]
struct ModelVersion {
    revision: u64,
    /// `None`: a deletion.
    kv: Option<KeyValue>,
}

#[derive(Debug, Clone)]
struct Model {
    revision: u64,
    compact_revision: u64,
    /// Every version of every key ever written, oldest first.
    keys: BTreeMap<Vec<u8>, Vec<ModelVersion>>,
    leases: BTreeMap<u64, i64>,
    alarms: BTreeSet<(u64, AlarmType)>,
}

type Checked<T> = Result<T, ApplyError>;

fn range_contains(key: &[u8], range_end: &[u8], candidate: &[u8]) -> bool {
    if range_end.is_empty() {
        return candidate == key;
    }
    if range_end == [0u8] {
        return candidate >= key;
    }
    candidate >= key && candidate < range_end
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Model {
    fn new() -> Model {
        Model {
            revision: 1,
            compact_revision: 0,
            keys: BTreeMap::new(),
            leases: BTreeMap::new(),
            alarms: BTreeSet::new(),
        }
    }

    /// The live keys visible at `at` (`None`: the newest, including a Txn's own writes).
    fn visible(&self, at: Option<u64>) -> Vec<KeyValue> {
        let mut out = Vec::new();
        for versions in self.keys.values() {
            let found = versions
                .iter()
                .rev()
                .find(|v| at.is_none_or(|at| v.revision <= at));
            if let Some(ModelVersion { kv: Some(kv), .. }) = found {
                out.push(kv.clone());
            }
        }
        out
    }

    fn latest(&self, key: &[u8]) -> Option<KeyValue> {
        self.keys
            .get(key)
            .and_then(|versions| versions.last())
            .and_then(|v| v.kv.clone())
    }

    fn live_in(&self, key: &[u8], range_end: &[u8]) -> Vec<KeyValue> {
        self.visible(None)
            .into_iter()
            .filter(|kv| range_contains(key, range_end, &kv.key))
            .collect()
    }

    fn check_revision(&self, revision: u64) -> Checked<Option<u64>> {
        if revision == 0 {
            return Ok(None);
        }
        if revision > self.revision {
            return Err(ApplyError::FutureRevision);
        }
        if revision < self.compact_revision {
            return Err(ApplyError::Compacted {
                compact_revision: self.compact_revision,
            });
        }
        Ok(Some(revision))
    }

    /// etcd's Range at `at`, already checked.
    fn range(&self, request: &RangeRequest, at: Option<u64>) -> RangeResult {
        let in_range: Vec<KeyValue> = self
            .visible(at)
            .into_iter()
            .filter(|kv| range_contains(&request.key, &request.range_end, &kv.key))
            .collect();
        let count = in_range.len() as u64;
        if request.count_only {
            return RangeResult {
                kvs: Vec::new(),
                more: false,
                count,
            };
        }
        let mut kvs: Vec<KeyValue> = in_range
            .into_iter()
            .filter(|kv| passes_filters(request, kv))
            .collect();
        sort_model(&mut kvs, request.sort_order, request.sort_target);
        let mut more = false;
        if request.limit > 0 && kvs.len() as u64 > request.limit {
            kvs.truncate(usize::try_from(request.limit).expect("a small limit"));
            more = true;
        }
        if request.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        RangeResult { kvs, more, count }
    }

    fn write(&mut self, key: &[u8], revision: u64, kv: Option<KeyValue>) {
        self.keys
            .entry(key.to_vec())
            .or_default()
            .push(ModelVersion { revision, kv });
    }

    fn check_put(&self, put: &PutRequest) -> Checked<()> {
        if (put.ignore_value || put.ignore_lease) && self.latest(&put.key).is_none() {
            return Err(ApplyError::KeyNotFound);
        }
        if !put.ignore_lease && put.lease != 0 && !self.leases.contains_key(&put.lease) {
            return Err(ApplyError::LeaseNotFound);
        }
        Ok(())
    }

    fn put(&mut self, put: &PutRequest, revision: u64) -> Option<KeyValue> {
        let previous = self.latest(&put.key);
        let kv = KeyValue {
            key: put.key.clone(),
            value: match (&previous, put.ignore_value) {
                (Some(p), true) => p.value.clone(),
                _ => put.value.clone(),
            },
            create_revision: previous.as_ref().map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: previous.as_ref().map_or(1, |p| p.version + 1),
            lease: match (&previous, put.ignore_lease) {
                (Some(p), true) => p.lease,
                _ => put.lease,
            },
        };
        self.write(&put.key, revision, Some(kv));
        if put.prev_kv { previous } else { None }
    }

    fn delete(&mut self, delete: &DeleteRangeRequest, revision: u64) -> (u64, Vec<KeyValue>) {
        let victims = self.live_in(&delete.key, &delete.range_end);
        for kv in &victims {
            self.write(&kv.key, revision, None);
        }
        let prev_kvs = if delete.prev_kv {
            victims.clone()
        } else {
            Vec::new()
        };
        (victims.len() as u64, prev_kvs)
    }

    /// Deletes the lease's keys at the next revision; true if any key went.
    fn revoke(&mut self, id: u64) -> bool {
        let revision = self.revision + 1;
        let attached: Vec<KeyValue> = self
            .visible(None)
            .into_iter()
            .filter(|kv| kv.lease == id)
            .collect();
        for kv in &attached {
            self.write(&kv.key, revision, None);
        }
        self.leases.remove(&id);
        if !attached.is_empty() {
            self.revision = revision;
        }
        !attached.is_empty()
    }

    fn apply(&mut self, command: &Command) -> ApplyResponse {
        let result = if self.no_space() && grows_store(command) {
            Err(ApplyError::NoSpace)
        } else {
            self.apply_checked(command)
        };
        ApplyResponse {
            revision: self.revision,
            result,
        }
    }

    fn no_space(&self) -> bool {
        self.alarms.iter().any(|(_, a)| *a == AlarmType::NoSpace)
    }

    fn apply_checked(&mut self, command: &Command) -> Checked<CommandResult> {
        match command {
            Command::Put(put) => {
                self.check_put(put)?;
                let revision = self.revision + 1;
                let prev_kv = self.put(put, revision);
                self.revision = revision;
                Ok(CommandResult::Put { prev_kv })
            }
            Command::DeleteRange(delete) => {
                let (deleted, prev_kvs) = self.delete(delete, self.revision + 1);
                if deleted > 0 {
                    self.revision += 1;
                }
                Ok(CommandResult::DeleteRange { deleted, prev_kvs })
            }
            Command::Txn(txn) => self.txn(txn),
            Command::Compact { revision, .. } => {
                if *revision <= self.compact_revision {
                    return Err(ApplyError::Compacted {
                        compact_revision: self.compact_revision,
                    });
                }
                if *revision > self.revision {
                    return Err(ApplyError::FutureRevision);
                }
                self.compact_revision = *revision;
                Ok(CommandResult::Compact)
            }
            Command::LeaseGrant { id, ttl_seconds } => {
                if *id == 0 {
                    return Err(ApplyError::LeaseNotFound);
                }
                if self.leases.contains_key(id) {
                    return Err(ApplyError::LeaseExists);
                }
                self.leases.insert(*id, *ttl_seconds);
                Ok(CommandResult::LeaseGrant {
                    id: *id,
                    ttl_seconds: *ttl_seconds,
                })
            }
            Command::LeaseRevoke { id } => {
                if !self.leases.contains_key(id) {
                    return Err(ApplyError::LeaseNotFound);
                }
                self.revoke(*id);
                Ok(CommandResult::LeaseRevoke)
            }
            Command::LeaseExpire { ids } => {
                let mut expired = 0u32;
                for id in ids {
                    if self.leases.contains_key(id) {
                        self.revoke(*id);
                        expired += 1;
                    }
                }
                Ok(CommandResult::LeaseExpire { expired })
            }
            Command::Alarm {
                action,
                member_id,
                alarm,
            } => {
                match action {
                    AlarmAction::Activate => self.alarms.insert((*member_id, *alarm)),
                    AlarmAction::Deactivate => self.alarms.remove(&(*member_id, *alarm)),
                };
                Ok(CommandResult::Alarm {
                    active: self.alarms.iter().copied().collect(),
                })
            }
            // Auth has its own tests (tests/auth_store.rs); the model's workload has none.
            Command::Auth(_) | Command::Authorized { .. } => {
                unreachable!("the model generates no auth commands")
            }
        }
    }

    /// etcd's Txn: every compare (nested ones too) against the state before the Txn, then the
    /// chosen ops checked, then applied in order at one revision.
    fn txn(&mut self, txn: &TxnRequest) -> Checked<CommandResult> {
        let mut path = Vec::new();
        self.choose(txn, &mut path);
        let mut cursor = 0;
        self.check_txn(txn, &path, &mut cursor)?;
        let revision = self.revision + 1;
        let mut changes: u64 = 0;
        let mut cursor = 0;
        let (succeeded, responses) = self.execute(txn, &path, &mut cursor, revision, &mut changes);
        assert_eq!(cursor, path.len());
        if changes > 0 {
            self.revision = revision;
        }
        Ok(CommandResult::Txn {
            succeeded,
            responses,
        })
    }

    fn choose(&self, txn: &TxnRequest, path: &mut Vec<bool>) {
        let succeeded = txn.compare.iter().all(|c| self.compare_holds(c));
        path.push(succeeded);
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        for op in ops {
            if let RequestOp::Txn(inner) = op {
                self.choose(inner, path);
            }
        }
    }

    fn compare_holds(&self, compare: &Compare) -> bool {
        let live = self.live_in(&compare.key, &compare.range_end);
        if live.is_empty() {
            return compare_kv(compare, None);
        }
        live.iter().all(|kv| compare_kv(compare, Some(kv)))
    }

    fn check_txn(&self, txn: &TxnRequest, path: &[bool], cursor: &mut usize) -> Checked<()> {
        let ops = if path[*cursor] {
            &txn.success
        } else {
            &txn.failure
        };
        *cursor += 1;
        for op in ops {
            match op {
                RequestOp::Put(put) => self.check_put(put)?,
                RequestOp::Range(range) => {
                    self.check_revision(range.revision)?;
                }
                RequestOp::DeleteRange(_) => {}
                RequestOp::Txn(inner) => self.check_txn(inner, path, cursor)?,
            }
        }
        Ok(())
    }

    fn execute(
        &mut self,
        txn: &TxnRequest,
        path: &[bool],
        cursor: &mut usize,
        revision: u64,
        changes: &mut u64,
    ) -> (bool, Vec<ResponseOp>) {
        let succeeded = path[*cursor];
        *cursor += 1;
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut responses = Vec::new();
        for op in ops {
            responses.push(match op {
                RequestOp::Put(put) => {
                    *changes += 1;
                    ResponseOp::Put {
                        prev_kv: self.put(put, revision),
                    }
                }
                RequestOp::DeleteRange(delete) => {
                    let (deleted, prev_kvs) = self.delete(delete, revision);
                    *changes += deleted;
                    ResponseOp::DeleteRange { deleted, prev_kvs }
                }
                RequestOp::Range(range) => {
                    let at = (range.revision != 0).then_some(range.revision);
                    ResponseOp::Range(self.range(range, at))
                }
                RequestOp::Txn(inner) => {
                    let (succeeded, responses) =
                        self.execute(inner, path, cursor, revision, changes);
                    ResponseOp::Txn {
                        succeeded,
                        responses,
                    }
                }
            });
        }
        (succeeded, responses)
    }
}

fn passes_filters(request: &RangeRequest, kv: &KeyValue) -> bool {
    (request.min_mod_revision == 0 || kv.mod_revision >= request.min_mod_revision)
        && (request.max_mod_revision == 0 || kv.mod_revision <= request.max_mod_revision)
        && (request.min_create_revision == 0 || kv.create_revision >= request.min_create_revision)
        && (request.max_create_revision == 0 || kv.create_revision <= request.max_create_revision)
}

/// etcd sorts by the target; a target other than the key with no order sorts ascending. Ties
/// keep key order (the store documents a stable sort).
fn sort_model(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    let order = match (order, target) {
        (SortOrder::None, SortTarget::Key) => return,
        (SortOrder::None, _) => SortOrder::Ascend,
        (order, _) => order,
    };
    let key_of = |kv: &KeyValue| -> (u64, Vec<u8>) {
        match target {
            SortTarget::Key => (0, kv.key.clone()),
            SortTarget::Version => (kv.version, Vec::new()),
            SortTarget::Create => (kv.create_revision, Vec::new()),
            SortTarget::Mod => (kv.mod_revision, Vec::new()),
            SortTarget::Value => (0, kv.value.clone()),
        }
    };
    match order {
        SortOrder::Descend => kvs.sort_by_key(|kv| std::cmp::Reverse(key_of(kv))),
        _ => kvs.sort_by_key(key_of),
    }
}

fn compare_kv(compare: &Compare, kv: Option<&KeyValue>) -> bool {
    let zero = KeyValue::default();
    let ordering = match (&compare.target, kv) {
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Value(want), Some(kv)) => kv.value.cmp(want),
        (CompareTarget::Version(want), kv) => kv.unwrap_or(&zero).version.cmp(want),
        (CompareTarget::CreateRevision(want), kv) => kv.unwrap_or(&zero).create_revision.cmp(want),
        (CompareTarget::ModRevision(want), kv) => kv.unwrap_or(&zero).mod_revision.cmp(want),
        (CompareTarget::Lease(want), kv) => kv.unwrap_or(&zero).lease.cmp(want),
    };
    match compare.result {
        CompareResult::Equal => ordering.is_eq(),
        CompareResult::NotEqual => ordering.is_ne(),
        CompareResult::Greater => ordering.is_gt(),
        CompareResult::Less => ordering.is_lt(),
    }
}

/// etcd refuses Put, LeaseGrant and any Txn holding a put (in any branch) under NOSPACE.
fn grows_store(command: &Command) -> bool {
    fn txn_puts(txn: &TxnRequest) -> bool {
        txn.success.iter().chain(&txn.failure).any(|op| match op {
            RequestOp::Put(_) => true,
            RequestOp::Txn(inner) => txn_puts(inner),
            _ => false,
        })
    }
    match command {
        Command::Put(_) | Command::LeaseGrant { .. } => true,
        Command::Txn(txn) => txn_puts(txn),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Abstract operations: generated up front, turned into commands against the model's state
// (so that revisions and compare targets land near real values).

#[derive(Debug, Clone)]
enum RangePick {
    Single(usize),
    Interval(usize, usize),
    Prefix(usize),
    FromKey(usize),
    All,
}

impl RangePick {
    fn resolve(&self) -> (Vec<u8>, Vec<u8>) {
        match self {
            RangePick::Single(k) => (KEYS[*k].to_vec(), Vec::new()),
            RangePick::Interval(a, b) => (BOUNDS[*a].to_vec(), BOUNDS[*b].to_vec()),
            RangePick::Prefix(p) => (PREFIXES[*p].to_vec(), prefix_end(PREFIXES[*p])),
            RangePick::FromKey(a) => (BOUNDS[*a].to_vec(), vec![0]),
            RangePick::All => (vec![0], vec![0]),
        }
    }
}

#[derive(Debug, Clone)]
enum RevPick {
    Latest,
    /// `current - n` (at least 1): `Back(0)` names the current revision explicitly.
    Back(u64),
    Future(u64),
}

impl RevPick {
    fn resolve(&self, current: u64) -> u64 {
        match self {
            RevPick::Latest => 0,
            RevPick::Back(n) => current.saturating_sub(*n).max(1),
            RevPick::Future(n) => current + n,
        }
    }
}

#[derive(Debug, Clone)]
struct ReadPick {
    range: RangePick,
    revision: RevPick,
    limit: u64,
    sort_order: SortOrder,
    sort_target: SortTarget,
    keys_only: bool,
    count_only: bool,
    /// min_mod, max_mod, min_create, max_create, each as a distance below the current revision.
    filters: [Option<u64>; 4],
}

impl ReadPick {
    fn resolve(&self, current: u64) -> RangeRequest {
        let (key, range_end) = self.range.resolve();
        let filter = |f: Option<u64>| f.map_or(0, |back| current.saturating_sub(back));
        RangeRequest {
            key,
            range_end,
            limit: self.limit,
            revision: self.revision.resolve(current),
            sort_order: self.sort_order,
            sort_target: self.sort_target,
            serializable: false,
            keys_only: self.keys_only,
            count_only: self.count_only,
            min_mod_revision: filter(self.filters[0]),
            max_mod_revision: filter(self.filters[1]),
            min_create_revision: filter(self.filters[2]),
            max_create_revision: filter(self.filters[3]),
        }
    }
}

#[derive(Debug, Clone)]
struct PutPick {
    key: usize,
    value: usize,
    lease: u64,
    prev_kv: bool,
    ignore_value: bool,
    ignore_lease: bool,
}

impl PutPick {
    fn resolve(&self) -> PutRequest {
        PutRequest {
            key: KEYS[self.key].to_vec(),
            value: VALUES[self.value].to_vec(),
            // etcd's API refuses a lease together with ignore_lease.
            lease: if self.ignore_lease { 0 } else { self.lease },
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        }
    }
}

#[derive(Debug, Clone)]
enum TargetPick {
    Version,
    Create,
    Mod,
    Lease,
    /// `None`: the key's own value.
    Value(Option<usize>),
}

#[derive(Debug, Clone)]
struct ComparePick {
    range: RangePick,
    result: CompareResult,
    target: TargetPick,
    offset: i64,
}

impl ComparePick {
    /// Targets are the first live key's own values, nudged by `offset`, so compares hold often.
    fn resolve(&self, model: &Model) -> Compare {
        let (key, range_end) = self.range.resolve();
        let first = model.live_in(&key, &range_end).into_iter().next();
        let first = first.unwrap_or_default();
        let nudge = |n: u64| n.saturating_add_signed(self.offset);
        let target = match &self.target {
            TargetPick::Version => CompareTarget::Version(nudge(first.version)),
            TargetPick::Create => CompareTarget::CreateRevision(nudge(first.create_revision)),
            TargetPick::Mod => CompareTarget::ModRevision(nudge(first.mod_revision)),
            TargetPick::Lease => CompareTarget::Lease(nudge(first.lease)),
            TargetPick::Value(None) => CompareTarget::Value(first.value),
            TargetPick::Value(Some(v)) => CompareTarget::Value(VALUES[*v].to_vec()),
        };
        Compare {
            result: self.result,
            target,
            key,
            range_end,
        }
    }
}

#[derive(Debug, Clone)]
enum TxnOpPick {
    Put(PutPick),
    Delete(RangePick, bool),
    Range(ReadPick),
    Txn(TxnPick),
}

#[derive(Debug, Clone)]
struct TxnPick {
    compare: Vec<ComparePick>,
    success: Vec<TxnOpPick>,
    failure: Vec<TxnOpPick>,
}

impl TxnPick {
    fn resolve(&self, model: &Model) -> TxnRequest {
        TxnRequest {
            compare: self.compare.iter().map(|c| c.resolve(model)).collect(),
            success: self.success.iter().map(|op| op.resolve(model)).collect(),
            failure: self.failure.iter().map(|op| op.resolve(model)).collect(),
        }
    }
}

impl TxnOpPick {
    fn resolve(&self, model: &Model) -> RequestOp {
        match self {
            TxnOpPick::Put(put) => RequestOp::Put(put.resolve()),
            TxnOpPick::Delete(range, prev_kv) => {
                let (key, range_end) = range.resolve();
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key,
                    range_end,
                    prev_kv: *prev_kv,
                })
            }
            TxnOpPick::Range(read) => RequestOp::Range(read.resolve(model.revision)),
            TxnOpPick::Txn(inner) => RequestOp::Txn(inner.resolve(model)),
        }
    }
}

/// Drops puts that etcd's API would refuse as "duplicate key": a key put twice in one Txn, or
/// put inside a range the same Txn deletes. (Conservative: all branches count together.)
fn make_etcd_valid(txn: &mut TxnRequest) {
    let mut deleted: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    collect_deletes(txn, &mut deleted);
    let mut put_keys: BTreeSet<Vec<u8>> = BTreeSet::new();
    drop_conflicting_puts(txn, &deleted, &mut put_keys);
}

fn collect_deletes(txn: &TxnRequest, out: &mut Vec<(Vec<u8>, Vec<u8>)>) {
    for op in txn.success.iter().chain(&txn.failure) {
        match op {
            RequestOp::DeleteRange(d) => out.push((d.key.clone(), d.range_end.clone())),
            RequestOp::Txn(inner) => collect_deletes(inner, out),
            _ => {}
        }
    }
}

fn drop_conflicting_puts(
    txn: &mut TxnRequest,
    deleted: &[(Vec<u8>, Vec<u8>)],
    put_keys: &mut BTreeSet<Vec<u8>>,
) {
    for ops in [&mut txn.success, &mut txn.failure] {
        ops.retain(|op| match op {
            RequestOp::Put(put) => {
                let in_delete = deleted
                    .iter()
                    .any(|(k, end)| range_contains(k, end, &put.key));
                !in_delete && put_keys.insert(put.key.clone())
            }
            _ => true,
        });
        for op in ops.iter_mut() {
            if let RequestOp::Txn(inner) = op {
                drop_conflicting_puts(inner, deleted, put_keys);
            }
        }
    }
}

#[derive(Debug, Clone)]
enum CommandPick {
    Put(PutPick),
    Delete(RangePick, bool),
    Txn(TxnPick),
    /// Distance below the current revision; `None`: one above it.
    Compact(Option<u64>),
    LeaseGrant(u64, i64),
    LeaseRevoke(u64),
    LeaseExpire(Vec<u64>),
    Alarm(bool, u64),
}

impl CommandPick {
    fn resolve(&self, model: &Model) -> Command {
        match self {
            CommandPick::Put(put) => Command::Put(put.resolve()),
            CommandPick::Delete(range, prev_kv) => {
                let (key, range_end) = range.resolve();
                Command::DeleteRange(DeleteRangeRequest {
                    key,
                    range_end,
                    prev_kv: *prev_kv,
                })
            }
            CommandPick::Txn(txn) => {
                let mut request = txn.resolve(model);
                make_etcd_valid(&mut request);
                Command::Txn(request)
            }
            CommandPick::Compact(back) => Command::Compact {
                revision: back.map_or(model.revision + 1, |b| model.revision.saturating_sub(b)),
                physical: false,
            },
            CommandPick::LeaseGrant(id, ttl_seconds) => Command::LeaseGrant {
                id: *id,
                ttl_seconds: *ttl_seconds,
            },
            CommandPick::LeaseRevoke(id) => Command::LeaseRevoke { id: *id },
            CommandPick::LeaseExpire(ids) => Command::LeaseExpire { ids: ids.clone() },
            CommandPick::Alarm(activate, member_id) => Command::Alarm {
                action: if *activate {
                    AlarmAction::Activate
                } else {
                    AlarmAction::Deactivate
                },
                member_id: *member_id,
                alarm: AlarmType::NoSpace,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies.

fn range_pick() -> impl Strategy<Value = RangePick> {
    prop_oneof![
        4 => (0..KEYS.len()).prop_map(RangePick::Single),
        3 => (0..BOUNDS.len(), 0..BOUNDS.len()).prop_map(|(a, b)| RangePick::Interval(a, b)),
        2 => (0..PREFIXES.len()).prop_map(RangePick::Prefix),
        1 => (0..BOUNDS.len()).prop_map(RangePick::FromKey),
        1 => Just(RangePick::All),
    ]
}

fn rev_pick() -> impl Strategy<Value = RevPick> {
    prop_oneof![
        3 => Just(RevPick::Latest),
        4 => (0u64..12).prop_map(RevPick::Back),
        1 => (1u64..3).prop_map(RevPick::Future),
    ]
}

fn sort_order() -> impl Strategy<Value = SortOrder> {
    prop_oneof![
        Just(SortOrder::None),
        Just(SortOrder::Ascend),
        Just(SortOrder::Descend)
    ]
}

fn sort_target() -> impl Strategy<Value = SortTarget> {
    prop_oneof![
        3 => Just(SortTarget::Key),
        1 => Just(SortTarget::Version),
        1 => Just(SortTarget::Create),
        1 => Just(SortTarget::Mod),
        1 => Just(SortTarget::Value),
    ]
}

fn filter_pick() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![6 => Just(None), 1 => (0u64..10).prop_map(Some)]
}

fn read_pick() -> impl Strategy<Value = ReadPick> {
    (
        range_pick(),
        rev_pick(),
        prop_oneof![3 => Just(0u64), 2 => 1u64..4],
        sort_order(),
        sort_target(),
        proptest::bool::weighted(0.2),
        proptest::bool::weighted(0.1),
        [filter_pick(), filter_pick(), filter_pick(), filter_pick()],
    )
        .prop_map(
            |(range, revision, limit, sort_order, sort_target, keys_only, count_only, filters)| {
                ReadPick {
                    range,
                    revision,
                    limit,
                    sort_order,
                    sort_target,
                    keys_only,
                    count_only,
                    filters,
                }
            },
        )
}

fn put_pick() -> impl Strategy<Value = PutPick> {
    (
        0..KEYS.len(),
        0..VALUES.len(),
        prop_oneof![3 => Just(0u64), 2 => 1..=LEASE_ID_MAX + 1],
        any::<bool>(),
        proptest::bool::weighted(0.12),
        proptest::bool::weighted(0.12),
    )
        .prop_map(
            |(key, value, lease, prev_kv, ignore_value, ignore_lease)| PutPick {
                key,
                value,
                lease,
                prev_kv,
                ignore_value,
                ignore_lease,
            },
        )
}

fn compare_pick() -> impl Strategy<Value = ComparePick> {
    let result = prop_oneof![
        Just(CompareResult::Equal),
        Just(CompareResult::NotEqual),
        Just(CompareResult::Less),
        Just(CompareResult::Greater),
    ];
    let target = prop_oneof![
        Just(TargetPick::Version),
        Just(TargetPick::Create),
        Just(TargetPick::Mod),
        Just(TargetPick::Lease),
        Just(TargetPick::Value(None)),
        (0..VALUES.len()).prop_map(|v| TargetPick::Value(Some(v))),
    ];
    let range = prop_oneof![4 => (0..KEYS.len()).prop_map(RangePick::Single), 1 => range_pick()];
    (range, result, target, -1i64..=1).prop_map(|(range, result, target, offset)| ComparePick {
        range,
        result,
        target,
        offset,
    })
}

fn txn_op_leaf() -> impl Strategy<Value = TxnOpPick> {
    prop_oneof![
        3 => put_pick().prop_map(TxnOpPick::Put),
        2 => (range_pick(), any::<bool>()).prop_map(|(r, p)| TxnOpPick::Delete(r, p)),
        2 => read_pick().prop_map(TxnOpPick::Range),
    ]
}

fn txn_pick_with(op: BoxedStrategy<TxnOpPick>) -> impl Strategy<Value = TxnPick> {
    (
        prop::collection::vec(compare_pick(), 0..3),
        prop::collection::vec(op.clone(), 0..4),
        prop::collection::vec(op, 0..4),
    )
        .prop_map(|(compare, success, failure)| TxnPick {
            compare,
            success,
            failure,
        })
}

/// Txns nest up to two levels below the top.
fn txn_pick() -> impl Strategy<Value = TxnPick> {
    let op = txn_op_leaf().prop_recursive(2, 24, 4, |inner| {
        prop_oneof![
            4 => txn_op_leaf(),
            1 => txn_pick_with(inner.boxed()).prop_map(TxnOpPick::Txn),
        ]
    });
    txn_pick_with(op.boxed())
}

fn command_pick() -> impl Strategy<Value = CommandPick> {
    prop_oneof![
        8 => put_pick().prop_map(CommandPick::Put),
        3 => (range_pick(), any::<bool>()).prop_map(|(r, p)| CommandPick::Delete(r, p)),
        4 => txn_pick().prop_map(CommandPick::Txn),
        2 => prop_oneof![8 => (0u64..10).prop_map(Some), 1 => Just(None)]
            .prop_map(CommandPick::Compact),
        3 => (0..=LEASE_ID_MAX, prop_oneof![Just(5i64), Just(60i64)])
            .prop_map(|(id, ttl)| CommandPick::LeaseGrant(id, ttl)),
        // Weight 2, not 1: a revoke that deletes keys (a lease granted, then put with, then
        // revoked) came 3-13 times per 96 cases at weight 1, and now and then never, which
        // failed the coverage check.
        2 => (1..=LEASE_ID_MAX + 1).prop_map(CommandPick::LeaseRevoke),
        1 => prop::collection::vec(1..=LEASE_ID_MAX + 1, 0..3).prop_map(CommandPick::LeaseExpire),
        1 => (proptest::bool::weighted(0.3), 1u64..=2).prop_map(|(a, m)| CommandPick::Alarm(a, m)),
    ]
}

#[derive(Debug, Clone)]
struct Batch {
    commands: Vec<CommandPick>,
    reads: Vec<ReadPick>,
}

fn batches() -> impl Strategy<Value = Vec<Batch>> {
    let batch = (
        prop::collection::vec(command_pick(), 1..=BATCH_COMMANDS_MAX),
        prop::collection::vec(read_pick(), 1..=READS_PER_BATCH_MAX),
    )
        .prop_map(|(commands, reads)| Batch { commands, reads });
    prop::collection::vec(batch, BATCHES_MIN..=BATCHES_MAX)
}

// ---------------------------------------------------------------------------------------------
// The runner.

fn entry(index: u64, command: Command) -> Entry {
    openraft::Entry {
        log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
        payload: EntryPayload::Normal(command),
    }
}

fn model_read(model: &Model, request: &RangeRequest) -> ReadOutcome {
    let at = model.check_revision(request.revision)?;
    Ok((model.range(request, at), model.revision))
}

fn store_read(sm: &StateMachine, request: &RangeRequest) -> Result<ReadOutcome, TestCaseError> {
    sm.reader()
        .range(request)
        .map_err(|e| TestCaseError::fail(format!("storage error on read: {e}")))
}

fn compare_read(
    sm: &StateMachine,
    model: &Model,
    request: &RangeRequest,
    coverage: &mut Coverage,
) -> Result<(), TestCaseError> {
    let expected = model_read(model, request);
    let actual = store_read(sm, request)?;
    prop_assert_eq!(&actual, &expected, "read {:?}", request);
    coverage.read(request, &expected, model.revision);
    Ok(())
}

/// Every revision, from below the compaction point to beyond the current one.
fn compare_all_revisions(
    sm: &StateMachine,
    model: &Model,
    coverage: &mut Coverage,
) -> Result<(), TestCaseError> {
    let (key, range_end) = RangePick::All.resolve();
    for revision in 1..=model.revision + 1 {
        let request = RangeRequest {
            key: key.clone(),
            range_end: range_end.clone(),
            revision,
            ..Default::default()
        };
        compare_read(sm, model, &request, coverage)?;
    }
    let applied = sm
        .reader()
        .applied_state()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(applied.revision, model.revision);
    prop_assert_eq!(applied.compact_revision, model.compact_revision);
    prop_assert_eq!(
        applied.alarms,
        model.alarms.iter().copied().collect::<Vec<_>>()
    );
    Ok(())
}

fn run_batches(
    sm: &StateMachine,
    model: &mut Model,
    batches: &[Batch],
    coverage: &mut Coverage,
) -> Result<(), TestCaseError> {
    let mut next_index: u64 = 1;
    for batch in batches {
        let mut entries = Vec::new();
        let mut expected = Vec::new();
        for pick in &batch.commands {
            let command = pick.resolve(model);
            let revision_before = model.revision;
            let response = model.apply(&command);
            coverage.command(&command, &response, revision_before);
            expected.push((command.clone(), response));
            entries.push(entry(next_index, command));
            next_index += 1;
        }
        let responses = sm
            .apply_entries(&entries)
            .map_err(|e| TestCaseError::fail(format!("storage error on apply: {e}")))?;
        prop_assert_eq!(responses.len(), expected.len());
        for (response, (command, want)) in responses.iter().zip(&expected) {
            prop_assert_eq!(response, want, "command {:?}", command);
        }
        // Physical compaction in tiny steps between batches, as the node's compactor
        // interleaves it with applies: no read may notice how far it got.
        let records = 1 + (next_index % 3) as u32;
        sm.compact_step_bounded(records)
            .map_err(|e| TestCaseError::fail(format!("storage error compacting: {e}")))?;
        // Now and then a durable commit, as the durability cadence makes: reads must not
        // tell what is durable from what is not.
        if next_index.is_multiple_of(3) {
            sm.store().make_state_durable().map_err(|e| {
                TestCaseError::fail(format!("storage error on a durable commit: {e}"))
            })?;
        }
        for read in &batch.reads {
            compare_read(sm, model, &read.resolve(model.revision), coverage)?;
        }
    }
    compare_all_revisions(sm, model, coverage)?;
    sm.compact_until_done()
        .map_err(|e| TestCaseError::fail(format!("storage error compacting: {e}")))?;
    compare_all_revisions(sm, model, coverage)
}

#[derive(Debug, Clone, Copy)]
enum Backend {
    Memory,
    Redb,
}

fn run_case(backend: Backend, batches: &[Batch], coverage: &mut Coverage) -> TestCaseResult {
    let fail = |e: &dyn std::fmt::Display| TestCaseError::fail(e.to_string());
    let mut model = Model::new();
    match backend {
        Backend::Memory => {
            let (_log, sm) =
                open_storage(&StorageBackend::InMemory, Limits::default()).map_err(|e| fail(&e))?;
            run_batches(&sm, &mut model, batches, coverage)
        }
        Backend::Redb => {
            let dir = tempfile::tempdir().map_err(|e| fail(&e))?;
            let backend = StorageBackend::Redb {
                dir: dir.path().join("node.redb"),
            };
            {
                let (_log, sm) = open_storage(&backend, Limits::default()).map_err(|e| fail(&e))?;
                run_batches(&sm, &mut model, batches, coverage)?;
            }
            // Everything, history included, survives a close and reopen.
            let (_log, sm) = open_storage(&backend, Limits::default()).map_err(|e| fail(&e))?;
            compare_all_revisions(&sm, &model, coverage)
        }
    }
}

/// Counts the outcomes the generator reached, so that a generator that stopped reaching the
/// interesting cases (a compacted read, a nested Txn, a lease revoke that deletes keys) fails
/// the test instead of passing vacuously.
#[derive(Debug, Default)]
struct Coverage {
    counts: BTreeMap<&'static str, u64>,
}

impl Coverage {
    fn hit(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    fn read(&mut self, request: &RangeRequest, outcome: &ReadOutcome, current: u64) {
        match outcome {
            Err(ApplyError::Compacted { .. }) => self.hit("read compacted"),
            Err(ApplyError::FutureRevision) => self.hit("read future"),
            Err(_) => self.hit("read other error"),
            Ok((result, _)) => {
                if request.revision != 0 && request.revision < current && !result.kvs.is_empty() {
                    self.hit("read old revision with data");
                }
                if result.more {
                    self.hit("read more");
                }
                if request.sort_target != SortTarget::Key && result.kvs.len() > 1 {
                    self.hit("read sorted");
                }
            }
        }
    }

    fn command(&mut self, command: &Command, response: &ApplyResponse, revision_before: u64) {
        let wrote = response.revision > revision_before;
        match (&response.result, command) {
            (Err(ApplyError::NoSpace), _) => self.hit("nospace refused"),
            (Err(ApplyError::LeaseNotFound), Command::Put(_)) => self.hit("put lease not found"),
            (Err(ApplyError::KeyNotFound), _) => self.hit("key not found"),
            (Ok(_), Command::Put(p)) if p.lease != 0 => self.hit("put with lease"),
            (Ok(_), Command::DeleteRange(_)) if wrote => self.hit("delete wrote"),
            (
                Ok(CommandResult::Txn {
                    succeeded,
                    responses,
                }),
                Command::Txn(_),
            ) => {
                self.hit(if *succeeded {
                    "txn success"
                } else {
                    "txn failure"
                });
                if responses
                    .iter()
                    .any(|r| matches!(r, ResponseOp::Txn { .. }))
                {
                    self.hit("nested txn");
                }
                if wrote {
                    self.hit("txn wrote");
                }
            }
            (Err(_), Command::Txn(_)) => self.hit("txn refused"),
            (Ok(_), Command::Compact { .. }) => self.hit("compact"),
            (Err(_), Command::Compact { .. }) => self.hit("compact refused"),
            (Ok(_), Command::LeaseRevoke { .. }) if wrote => self.hit("revoke deleted keys"),
            (Ok(CommandResult::LeaseExpire { expired }), _) if *expired > 0 => {
                self.hit("lease expired")
            }
            _ => {}
        }
    }

    fn assert_reached(&self) {
        const EXPECTED: [&str; 19] = [
            "read compacted",
            "read future",
            "read old revision with data",
            "read more",
            "read sorted",
            "nospace refused",
            "put lease not found",
            "key not found",
            "put with lease",
            "delete wrote",
            "txn success",
            "txn failure",
            "nested txn",
            "txn wrote",
            "txn refused",
            "compact",
            "compact refused",
            "revoke deleted keys",
            "lease expired",
        ];
        for what in EXPECTED {
            assert!(
                self.counts.get(what).copied().unwrap_or(0) > 0,
                "the generator never reached {what:?}; reached: {:?}",
                self.counts
            );
        }
    }
}

fn run_property(backend: Backend) {
    let config = ProptestConfig {
        cases: CASES,
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let coverage = std::cell::RefCell::new(Coverage::default());
    let result = runner.run(&batches(), |batches| {
        run_case(backend, &batches, &mut coverage.borrow_mut())
    });
    if let Err(error) = result {
        panic!("{backend:?}: {error}");
    }
    eprintln!("{backend:?} coverage: {:?}", coverage.borrow().counts);
    coverage.borrow().assert_reached();
}

#[test]
fn mvcc_matches_model_in_memory() {
    run_property(Backend::Memory);
}

#[test]
fn mvcc_matches_model_on_redb() {
    run_property(Backend::Redb);
}

/// Hand-written cases that random ones might reach rarely, with the model as the oracle.
#[test]
fn model_sanity_against_store() {
    let (_log, sm) = open_storage(&StorageBackend::InMemory, Limits::default()).expect("open");
    let mut model = Model::new();
    let put = |key: &[u8], value: &[u8], lease: u64| {
        Command::Put(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })
    };
    let commands = vec![
        put(b"a", b"1", 0),
        put(b"a", b"2", 0),
        Command::LeaseGrant {
            id: 7,
            ttl_seconds: 60,
        },
        put(b"b", b"1", 7),
        put(b"c", b"1", 8),
        Command::DeleteRange(DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: Vec::new(),
            prev_kv: true,
        }),
        put(b"a", b"3", 0),
        Command::LeaseRevoke { id: 7 },
        Command::Compact {
            revision: 3,
            physical: true,
        },
    ];
    let mut index = 1;
    for command in commands {
        let want = model.apply(&command);
        let got = sm
            .apply_entries(&[entry(index, command.clone())])
            .expect("apply")
            .remove(0);
        assert_eq!(got, want, "{command:?}");
        index += 1;
    }
    // put a@2, a@3, b@4 (lease 7), delete a@5, a@6, revoke deletes b@7.
    assert_eq!(model.revision, 7);
    let got = sm
        .apply_entries(&[entry(index, put(b"c", b"1", 8))])
        .expect("apply");
    assert_eq!(got[0].result, Err(ApplyError::LeaseNotFound));
    assert_eq!(got[0].revision, 7);
    let at_4 = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision: 4,
        ..Default::default()
    };
    let (result, revision) = sm
        .reader()
        .range(&at_4)
        .expect("read")
        .expect("not compacted");
    assert_eq!(revision, 7);
    let keys: Vec<&[u8]> = result.kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, vec![&b"a"[..], &b"b"[..]]);
    assert_eq!(result.kvs[0].version, 2);
    assert_eq!(result.kvs[1].lease, 7);
    let at_2 = RangeRequest {
        revision: 2,
        ..at_4.clone()
    };
    assert_eq!(
        sm.reader().range(&at_2).expect("read"),
        Err(ApplyError::Compacted {
            compact_revision: 3
        })
    );
    let at_8 = RangeRequest {
        revision: 8,
        ..at_4
    };
    assert_eq!(
        sm.reader().range(&at_8).expect("read"),
        Err(ApplyError::FutureRevision)
    );
    compare_all_revisions(&sm, &model, &mut Coverage::default()).expect("all revisions");
}
