//! Structure-aware client requests (`arbitrary`) against an in-process state machine on the
//! in-memory backend, with a reference model of the latest version of every key.
//!
//! Every command is applied as a committed log entry (`StateMachine::apply_entries`), the way
//! a replica applies what Raft hands it, so nothing is filtered by the API's validation first:
//! the state machine must cope with any command. Puts without flags or lease and deletes of
//! well-formed ranges are checked against the model (result, revision, and the keys and
//! values a read then returns); everything else (Txn of any depth, compaction, leases,
//! flagged puts) is checked only for a clean outcome, after which the model takes the store's
//! contents as they are.

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use aspen_core::command::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest, RequestOp, SortOrder,
    SortTarget, TxnRequest,
};
use aspen_core::limits::Limits;
use aspen_core::response::RangeResult;
use aspen_core::type_config::alias::Entry;
use aspen_core::{ApplyResponse, Command, CommandResult, RangeRequest, TypeConfig};
use aspen_storage::{StateMachine, StorageBackend, open_storage};
use openraft::EntryPayload;

/// Keys come from a small alphabet so that requests collide, plus empty and huge ones.
#[derive(Debug, Clone, Arbitrary)]
pub enum FuzzKey {
    Small(u8),
    Pair(u8, u8),
    Empty,
    Zero,
    /// `'h'` repeated (n + 1) * 4 KiB: up to 1 MiB.
    Huge(u8),
}

impl FuzzKey {
    fn bytes(&self) -> Vec<u8> {
        match self {
            FuzzKey::Small(a) => vec![b'a' + a % 8],
            FuzzKey::Pair(a, b) => vec![b'a' + a % 8, b'a' + b % 8],
            FuzzKey::Empty => Vec::new(),
            FuzzKey::Zero => vec![0],
            FuzzKey::Huge(n) => vec![b'h'; (usize::from(*n) + 1) * 4096],
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
pub enum FuzzValue {
    Small(u8),
    Bytes(Vec<u8>),
    /// Up to 1.5 MiB, the default request limit.
    Huge(u8),
}

impl FuzzValue {
    fn bytes(&self) -> Vec<u8> {
        match self {
            FuzzValue::Small(v) => vec![*v],
            FuzzValue::Bytes(b) => b.clone(),
            FuzzValue::Huge(n) => vec![b'v'; (usize::from(*n) % 193) * 8192],
        }
    }
}

/// Numbers biased to the edges.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Extreme {
    Zero,
    One,
    Small(u8),
    Max,
    MaxI64,
    Any(u64),
}

impl Extreme {
    fn value(self) -> u64 {
        match self {
            Extreme::Zero => 0,
            Extreme::One => 1,
            Extreme::Small(n) => u64::from(n),
            Extreme::Max => u64::MAX,
            Extreme::MaxI64 => i64::MAX as u64,
            Extreme::Any(n) => n,
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
pub enum FuzzRangeEnd {
    None,
    AllFrom,
    Key(FuzzKey),
}

impl FuzzRangeEnd {
    fn bytes(&self) -> Vec<u8> {
        match self {
            FuzzRangeEnd::None => Vec::new(),
            FuzzRangeEnd::AllFrom => vec![0],
            FuzzRangeEnd::Key(k) => k.bytes(),
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
pub struct FuzzRange {
    key: FuzzKey,
    range_end: FuzzRangeEnd,
    limit: Extreme,
    revision: Extreme,
    sort: u8,
    keys_only: bool,
    count_only: bool,
    min_mod: Extreme,
    max_mod: Extreme,
    min_create: Extreme,
    max_create: Extreme,
}

impl FuzzRange {
    fn request(&self) -> RangeRequest {
        let orders = [SortOrder::None, SortOrder::Ascend, SortOrder::Descend];
        let targets = [
            SortTarget::Key,
            SortTarget::Version,
            SortTarget::Create,
            SortTarget::Mod,
            SortTarget::Value,
        ];
        RangeRequest {
            key: self.key.bytes(),
            range_end: self.range_end.bytes(),
            limit: self.limit.value(),
            revision: self.revision.value(),
            sort_order: orders[usize::from(self.sort) % 3],
            sort_target: targets[usize::from(self.sort / 3) % 5],
            serializable: true,
            keys_only: self.keys_only,
            count_only: self.count_only,
            min_mod_revision: self.min_mod.value(),
            max_mod_revision: self.max_mod.value(),
            min_create_revision: self.min_create.value(),
            max_create_revision: self.max_create.value(),
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
pub struct FuzzPut {
    key: FuzzKey,
    value: FuzzValue,
    lease: Extreme,
    prev_kv: bool,
    ignore_value: bool,
    ignore_lease: bool,
}

impl FuzzPut {
    fn request(&self) -> PutRequest {
        PutRequest {
            key: self.key.bytes(),
            value: self.value.bytes(),
            lease: self.lease.value(),
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
pub struct FuzzDelete {
    key: FuzzKey,
    range_end: FuzzRangeEnd,
    prev_kv: bool,
}

impl FuzzDelete {
    fn request(&self) -> DeleteRangeRequest {
        DeleteRangeRequest {
            key: self.key.bytes(),
            range_end: self.range_end.bytes(),
            prev_kv: self.prev_kv,
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
pub enum FuzzTarget {
    Version(Extreme),
    Create(Extreme),
    Mod(Extreme),
    Value(FuzzValue),
    Lease(Extreme),
}

#[derive(Debug, Clone, Arbitrary)]
pub struct FuzzCompare {
    result: u8,
    target: FuzzTarget,
    key: FuzzKey,
    range_end: FuzzRangeEnd,
}

#[derive(Debug, Clone, Arbitrary)]
pub enum FuzzOp {
    Range(FuzzRange),
    Put(FuzzPut),
    Delete(FuzzDelete),
    Txn(Box<FuzzTxn>),
}

#[derive(Debug, Clone, Arbitrary)]
pub struct FuzzTxn {
    compare: Vec<FuzzCompare>,
    success: Vec<FuzzOp>,
    failure: Vec<FuzzOp>,
}

impl FuzzTxn {
    fn request(&self) -> TxnRequest {
        let results = [
            CompareResult::Equal,
            CompareResult::Greater,
            CompareResult::Less,
            CompareResult::NotEqual,
        ];
        TxnRequest {
            compare: self
                .compare
                .iter()
                .map(|c| Compare {
                    result: results[usize::from(c.result) % 4],
                    target: match &c.target {
                        FuzzTarget::Version(v) => CompareTarget::Version(v.value()),
                        FuzzTarget::Create(v) => CompareTarget::CreateRevision(v.value()),
                        FuzzTarget::Mod(v) => CompareTarget::ModRevision(v.value()),
                        FuzzTarget::Value(v) => CompareTarget::Value(v.bytes()),
                        FuzzTarget::Lease(v) => CompareTarget::Lease(v.value()),
                    },
                    key: c.key.bytes(),
                    range_end: c.range_end.bytes(),
                })
                .collect(),
            success: self.success.iter().map(FuzzOp::request).collect(),
            failure: self.failure.iter().map(FuzzOp::request).collect(),
        }
    }
}

impl FuzzOp {
    fn request(&self) -> RequestOp {
        match self {
            FuzzOp::Range(r) => RequestOp::Range(r.request()),
            FuzzOp::Put(p) => RequestOp::Put(p.request()),
            FuzzOp::Delete(d) => RequestOp::DeleteRange(d.request()),
            FuzzOp::Txn(t) => RequestOp::Txn(t.request()),
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
pub enum FuzzCommand {
    Put(FuzzPut),
    Delete(FuzzDelete),
    Txn(FuzzTxn),
    Range(FuzzRange),
    Compact(Extreme),
    LeaseGrant(Extreme, Extreme),
    LeaseRevoke(Extreme),
    LeaseExpire(Vec<Extreme>),
}

/// Commands applied at most per input: bounds the time one input takes.
pub const COMMANDS_MAX: usize = 64;

#[derive(Debug)]
pub struct ClientInput {
    pub commands: Vec<FuzzCommand>,
}

impl<'a> Arbitrary<'a> for ClientInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut commands = Vec::new();
        while commands.len() < COMMANDS_MAX && !u.is_empty() {
            commands.push(FuzzCommand::arbitrary(u)?);
        }
        Ok(ClientInput { commands })
    }
}

/// The latest version of each live key.
#[derive(Debug, Default)]
struct Model {
    revision: u64,
    keys: BTreeMap<Vec<u8>, Latest>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Latest {
    value: Vec<u8>,
    create_revision: u64,
    mod_revision: u64,
    version: u64,
    lease: u64,
}

fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        key == start
    } else if end == [0] {
        key >= start
    } else {
        key >= start && key < end
    }
}

/// A range the model handles: a non-empty key and an end that is empty, `\0` or after it.
fn well_formed(start: &[u8], end: &[u8]) -> bool {
    !start.is_empty() && (end.is_empty() || end == [0] || end > start)
}

pub fn client_requests(input: &ClientInput) {
    let (_log, sm) = open_storage(&StorageBackend::InMemory, Limits::default()).expect("open");
    // A new store is at revision 1, as etcd's.
    let mut model = Model {
        revision: read_all(&sm).1,
        keys: BTreeMap::new(),
    };
    let mut index = 0u64;
    for command in &input.commands {
        match command {
            FuzzCommand::Range(range) => check_range(&sm, &model, &range.request()),
            FuzzCommand::Put(put) => {
                let request = put.request();
                let modelled = request.lease == 0
                    && !request.ignore_value
                    && !request.ignore_lease
                    && !request.key.is_empty();
                let response = apply(&sm, &mut index, Command::Put(request.clone()));
                if modelled {
                    let Ok(CommandResult::Put { prev_kv }) = &response.result else {
                        panic!("plain put failed: {:?}", response.result);
                    };
                    let previous = model.keys.get(&request.key).cloned();
                    if request.prev_kv {
                        assert_eq!(
                            prev_kv.as_ref().map(|kv| kv.value.clone()),
                            previous.as_ref().map(|p| p.value.clone())
                        );
                    }
                    model.revision += 1;
                    assert_eq!(
                        response.revision, model.revision,
                        "a put makes one revision"
                    );
                    let latest = Latest {
                        value: request.value.clone(),
                        create_revision: previous
                            .as_ref()
                            .map_or(model.revision, |p| p.create_revision),
                        mod_revision: model.revision,
                        version: previous.as_ref().map_or(1, |p| p.version + 1),
                        lease: 0,
                    };
                    model.keys.insert(request.key, latest);
                } else {
                    resync(&sm, &mut model, &response);
                }
            }
            FuzzCommand::Delete(delete) => {
                let request = delete.request();
                let response = apply(&sm, &mut index, Command::DeleteRange(request.clone()));
                if well_formed(&request.key, &request.range_end) {
                    let Ok(CommandResult::DeleteRange { deleted, prev_kvs }) = &response.result
                    else {
                        panic!("delete failed: {:?}", response.result);
                    };
                    let victims: Vec<Vec<u8>> = model
                        .keys
                        .keys()
                        .filter(|k| in_range(k, &request.key, &request.range_end))
                        .cloned()
                        .collect();
                    assert_eq!(*deleted, victims.len() as u64, "deleted count");
                    if request.prev_kv {
                        let keys: Vec<Vec<u8>> = prev_kvs.iter().map(|kv| kv.key.clone()).collect();
                        assert_eq!(keys, victims, "prev_kvs are the deleted keys, in order");
                    }
                    if !victims.is_empty() {
                        model.revision += 1;
                    }
                    assert_eq!(response.revision, model.revision, "delete revision");
                    for key in victims {
                        model.keys.remove(&key);
                    }
                } else {
                    resync(&sm, &mut model, &response);
                }
            }
            FuzzCommand::Txn(txn) => {
                let response = apply(&sm, &mut index, Command::Txn(txn.request()));
                resync(&sm, &mut model, &response);
            }
            FuzzCommand::Compact(revision) => {
                let response = apply(
                    &sm,
                    &mut index,
                    Command::Compact {
                        revision: revision.value(),
                        physical: false,
                    },
                );
                assert_eq!(
                    response.revision, model.revision,
                    "compaction makes no revision"
                );
                sm.compact_until_done().expect("physical compaction");
                resync(&sm, &mut model, &response);
            }
            FuzzCommand::LeaseGrant(id, ttl) => {
                let command = Command::LeaseGrant {
                    id: id.value(),
                    ttl_seconds: ttl.value() as i64,
                };
                let response = apply(&sm, &mut index, command);
                resync(&sm, &mut model, &response);
            }
            FuzzCommand::LeaseRevoke(id) => {
                let response = apply(&sm, &mut index, Command::LeaseRevoke { id: id.value() });
                resync(&sm, &mut model, &response);
            }
            FuzzCommand::LeaseExpire(ids) => {
                let ids = ids.iter().take(16).map(|id| id.value()).collect();
                let response = apply(&sm, &mut index, Command::LeaseExpire { ids });
                resync(&sm, &mut model, &response);
            }
        }
    }
    check_all(&sm, &model);
}

fn apply(sm: &StateMachine, index: &mut u64, command: Command) -> ApplyResponse {
    *index += 1;
    let entry: Entry = openraft::Entry {
        log_id: openraft::testing::log_id::<TypeConfig>(1, 1, *index),
        payload: EntryPayload::Normal(command),
    };
    let mut responses = sm.apply_entries(&[entry]).expect("apply: no storage error");
    assert_eq!(responses.len(), 1);
    responses.pop().expect("one response")
}

fn read_all(sm: &StateMachine) -> (RangeResult, u64) {
    let request = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        serializable: true,
        ..Default::default()
    };
    sm.reader()
        .range(&request)
        .expect("read")
        .expect("a read at the current revision succeeds")
}

/// After a command the model does not follow: a clean outcome, a revision that never goes
/// back, and the store's contents taken as the model's.
fn resync(sm: &StateMachine, model: &mut Model, response: &ApplyResponse) {
    assert!(
        response.revision >= model.revision,
        "the revision went back"
    );
    model.revision = response.revision;
    model.keys = read_all(sm)
        .0
        .kvs
        .into_iter()
        .map(|kv| {
            let latest = Latest {
                value: kv.value,
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                version: kv.version,
                lease: kv.lease,
            };
            (kv.key, latest)
        })
        .collect();
    check_all(sm, model);
}

fn check_all(sm: &StateMachine, model: &Model) {
    let (all, revision) = read_all(sm);
    assert_eq!(
        revision, model.revision,
        "the store's revision is the model's"
    );
    assert_eq!(all.count, all.kvs.len() as u64);
    assert!(!all.more);
    let store: Vec<(Vec<u8>, Latest)> = all
        .kvs
        .into_iter()
        .map(|kv| {
            let latest = Latest {
                value: kv.value,
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                version: kv.version,
                lease: kv.lease,
            };
            (kv.key, latest)
        })
        .collect();
    let expected: Vec<(Vec<u8>, Latest)> = model
        .keys
        .iter()
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(store, expected, "the store's contents are the model's");
    for (_, latest) in &expected {
        assert!(latest.create_revision <= latest.mod_revision);
        assert!(latest.mod_revision <= model.revision);
        assert!(latest.version >= 1);
    }
}

/// A read: a clean outcome always; for a plain read of the current revision, the model's
/// keys, honouring the limit.
fn check_range(sm: &StateMachine, model: &Model, request: &RangeRequest) {
    let outcome = sm.reader().range(request).expect("read: no storage error");
    let Ok((result, revision)) = outcome else {
        return;
    };
    assert_eq!(revision, model.revision);
    if !result.kvs.is_empty() && !request.count_only {
        assert!(request.limit == 0 || result.kvs.len() as u64 <= request.limit);
    }
    let plain = request.revision == 0
        && request.min_mod_revision == 0
        && request.max_mod_revision == 0
        && request.min_create_revision == 0
        && request.max_create_revision == 0
        && request.sort_order == SortOrder::None
        && well_formed(&request.key, &request.range_end);
    if !plain {
        return;
    }
    let expected: Vec<(&Vec<u8>, &Latest)> = model
        .keys
        .iter()
        .filter(|(k, _)| in_range(k, &request.key, &request.range_end))
        .collect();
    assert_eq!(result.count, expected.len() as u64, "range count");
    if request.count_only {
        assert!(result.kvs.is_empty());
        return;
    }
    let shown = match request.limit {
        0 => expected.len(),
        limit => expected
            .len()
            .min(usize::try_from(limit).unwrap_or(usize::MAX)),
    };
    assert_eq!(result.more, shown < expected.len(), "more");
    let keys: Vec<&Vec<u8>> = result.kvs.iter().map(|kv| &kv.key).collect();
    let want: Vec<&Vec<u8>> = expected.iter().take(shown).map(|(k, _)| *k).collect();
    assert_eq!(keys, want, "range keys");
    for (kv, (_, latest)) in result.kvs.iter().zip(&expected) {
        assert_eq!(kv.mod_revision, latest.mod_revision);
        assert_eq!(kv.version, latest.version);
        if request.keys_only {
            assert!(kv.value.is_empty());
        } else {
            assert_eq!(kv.value, latest.value);
        }
    }
}
