//! Translation between etcd's protobuf messages and Aspen's commands and results.
//!
//! etcd uses int64 for revisions, versions and lease ids; Aspen uses u64. A negative value on
//! the wire means "none" where etcd treats it so (revision <= 0: current) and otherwise maps
//! to a value that cannot exist (a negative lease id is never granted).

use aspen_core::convert::wire_i64;
use aspen_core::response::RangeResult;
use aspen_core::{self as core, KeyValue, ResponseOp};
use aspen_proto::etcdserverpb as pb;
use aspen_proto::mvccpb;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::range_request::{SortOrder, SortTarget};

fn non_negative(value: i64) -> u64 {
    value.max(0) as u64
}

/// Lease ids: 0 is "no lease"; negatives map to ids no one can hold.
pub fn lease_id(value: i64) -> u64 {
    value as u64
}

pub fn range_request(r: &pb::RangeRequest) -> core::RangeRequest {
    core::RangeRequest {
        key: r.key.clone(),
        range_end: r.range_end.clone(),
        limit: non_negative(r.limit),
        revision: non_negative(r.revision),
        sort_order: match SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None) {
            SortOrder::None => core::SortOrder::None,
            SortOrder::Ascend => core::SortOrder::Ascend,
            SortOrder::Descend => core::SortOrder::Descend,
        },
        sort_target: match SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key) {
            SortTarget::Key => core::SortTarget::Key,
            SortTarget::Version => core::SortTarget::Version,
            SortTarget::Create => core::SortTarget::Create,
            SortTarget::Mod => core::SortTarget::Mod,
            SortTarget::Value => core::SortTarget::Value,
        },
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: non_negative(r.min_mod_revision),
        max_mod_revision: non_negative(r.max_mod_revision),
        min_create_revision: non_negative(r.min_create_revision),
        max_create_revision: non_negative(r.max_create_revision),
    }
}

pub fn put_request(r: &pb::PutRequest) -> core::PutRequest {
    core::PutRequest {
        key: r.key.clone(),
        value: r.value.clone(),
        lease: lease_id(r.lease),
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

pub fn delete_request(r: &pb::DeleteRangeRequest) -> core::DeleteRangeRequest {
    core::DeleteRangeRequest {
        key: r.key.clone(),
        range_end: r.range_end.clone(),
        prev_kv: r.prev_kv,
    }
}

fn compare(c: &pb::Compare) -> core::Compare {
    let result = match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => core::CompareResult::Equal,
        CompareResult::Greater => core::CompareResult::Greater,
        CompareResult::Less => core::CompareResult::Less,
        CompareResult::NotEqual => core::CompareResult::NotEqual,
    };
    // etcd reads the operand that matches `target`; a missing operand compares as zero.
    let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
    let int_operand =
        |want: fn(&TargetUnion) -> Option<i64>| c.target_union.as_ref().and_then(want).unwrap_or(0);
    let target = match target {
        CompareTarget::Version => {
            core::CompareTarget::Version(non_negative(int_operand(|u| match u {
                TargetUnion::Version(v) => Some(*v),
                _ => None,
            })))
        }
        CompareTarget::Create => {
            core::CompareTarget::CreateRevision(non_negative(int_operand(|u| match u {
                TargetUnion::CreateRevision(v) => Some(*v),
                _ => None,
            })))
        }
        CompareTarget::Mod => {
            core::CompareTarget::ModRevision(non_negative(int_operand(|u| match u {
                TargetUnion::ModRevision(v) => Some(*v),
                _ => None,
            })))
        }
        CompareTarget::Lease => core::CompareTarget::Lease(lease_id(int_operand(|u| match u {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        }))),
        CompareTarget::Value => core::CompareTarget::Value(match &c.target_union {
            Some(TargetUnion::Value(v)) => v.clone(),
            _ => Vec::new(),
        }),
    };
    core::Compare {
        result,
        target,
        key: c.key.clone(),
        range_end: c.range_end.clone(),
    }
}

/// Nesting depth was checked by validation before this runs.
pub fn txn_request(r: &pb::TxnRequest) -> core::TxnRequest {
    core::TxnRequest {
        compare: r.compare.iter().map(compare).collect(),
        success: r.success.iter().filter_map(request_op).collect(),
        failure: r.failure.iter().filter_map(request_op).collect(),
    }
}

fn request_op(op: &pb::RequestOp) -> Option<core::RequestOp> {
    use pb::request_op::Request;
    Some(match op.request.as_ref()? {
        Request::RequestRange(r) => core::RequestOp::Range(range_request(r)),
        Request::RequestPut(p) => core::RequestOp::Put(put_request(p)),
        Request::RequestDeleteRange(d) => core::RequestOp::DeleteRange(delete_request(d)),
        Request::RequestTxn(t) => core::RequestOp::Txn(txn_request(t)),
    })
}

pub fn key_value(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: wire_i64(kv.create_revision),
        mod_revision: wire_i64(kv.mod_revision),
        version: wire_i64(kv.version),
        value: kv.value,
        lease: wire_i64(kv.lease),
    }
}

pub fn range_response(
    result: RangeResult,
    header: Option<pb::ResponseHeader>,
) -> pb::RangeResponse {
    pb::RangeResponse {
        header,
        kvs: result.kvs.into_iter().map(key_value).collect(),
        more: result.more,
        count: wire_i64(result.count),
    }
}

/// The responses of a Txn that applied at store revision `revision`. As etcd's applier fills
/// them, each op's header holds only the revision that op saw inside the Txn's write: the one
/// before the Txn until the Txn's first change, the Txn's own from then on. A nested Txn's
/// header is empty.
pub fn txn_responses(responses: Vec<ResponseOp>, revision: u64) -> Vec<pb::ResponseOp> {
    let changed = responses.iter().any(changes_store);
    let mut revisions = TxnRevisions {
        before: if changed {
            revision.saturating_sub(1)
        } else {
            revision
        },
        changed: false,
    };
    responses
        .into_iter()
        .map(|r| revisions.response_op(r))
        .collect()
}

/// Whether an op that ran made a change (etcd: added to the write's `changes`).
fn changes_store(op: &ResponseOp) -> bool {
    match op {
        ResponseOp::Range(_) => false,
        ResponseOp::Put { .. } => true,
        ResponseOp::DeleteRange { deleted, .. } => *deleted > 0,
        ResponseOp::Txn { responses, .. } => responses.iter().any(changes_store),
    }
}

struct TxnRevisions {
    /// The store revision before the Txn.
    before: u64,
    /// Whether an op so far made a change.
    changed: bool,
}

impl TxnRevisions {
    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            revision: wire_i64(self.before + u64::from(self.changed)),
            ..Default::default()
        })
    }

    fn response_op(&mut self, op: ResponseOp) -> pb::ResponseOp {
        use pb::response_op::Response;
        if !matches!(op, ResponseOp::Txn { .. }) && changes_store(&op) {
            self.changed = true;
        }
        let response = match op {
            ResponseOp::Range(result) => {
                Response::ResponseRange(range_response(result, self.header()))
            }
            ResponseOp::Put { prev_kv } => Response::ResponsePut(pb::PutResponse {
                header: self.header(),
                prev_kv: prev_kv.map(key_value),
            }),
            ResponseOp::DeleteRange { deleted, prev_kvs } => {
                Response::ResponseDeleteRange(pb::DeleteRangeResponse {
                    header: self.header(),
                    deleted: wire_i64(deleted),
                    prev_kvs: prev_kvs.into_iter().map(key_value).collect(),
                })
            }
            ResponseOp::Txn {
                succeeded,
                responses,
            } => Response::ResponseTxn(pb::TxnResponse {
                header: Some(pb::ResponseHeader::default()),
                succeeded,
                responses: responses.into_iter().map(|r| self.response_op(r)).collect(),
            }),
        };
        pb::ResponseOp {
            response: Some(response),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::response_op::Response;

    fn range() -> ResponseOp {
        ResponseOp::Range(RangeResult {
            kvs: Vec::new(),
            more: false,
            count: 0,
        })
    }

    fn delete(deleted: u64) -> ResponseOp {
        ResponseOp::DeleteRange {
            deleted,
            prev_kvs: Vec::new(),
        }
    }

    /// The header revision of each op, depth first; -1 for a nested Txn's empty header.
    fn revisions(ops: &[pb::ResponseOp]) -> Vec<i64> {
        let mut out = Vec::new();
        for op in ops {
            let header = match op.response.as_ref().expect("a response") {
                Response::ResponseRange(r) => r.header,
                Response::ResponsePut(p) => p.header,
                Response::ResponseDeleteRange(d) => d.header,
                Response::ResponseTxn(t) => {
                    assert_eq!(t.header, Some(pb::ResponseHeader::default()));
                    out.push(-1);
                    out.extend(revisions(&t.responses));
                    continue;
                }
            };
            let header = header.expect("a header");
            assert_eq!(
                (header.cluster_id, header.member_id, header.raft_term),
                (0, 0, 0)
            );
            out.push(header.revision);
        }
        out
    }

    #[test]
    fn txn_ops_see_the_revision_before_the_first_change_and_after() {
        let ops = vec![
            range(),
            delete(0),
            ResponseOp::Put { prev_kv: None },
            range(),
            delete(0),
        ];
        assert_eq!(revisions(&txn_responses(ops, 8)), vec![7, 7, 8, 8, 8]);
        let ops = vec![range(), delete(2), range()];
        assert_eq!(revisions(&txn_responses(ops, 8)), vec![7, 8, 8]);
    }

    #[test]
    fn a_txn_that_changes_nothing_reports_the_current_revision() {
        let ops = vec![range(), delete(0)];
        assert_eq!(revisions(&txn_responses(ops, 5)), vec![5, 5]);
    }

    #[test]
    fn nested_txns_share_the_outer_revisions_and_have_empty_headers() {
        let nested = ResponseOp::Txn {
            succeeded: true,
            responses: vec![range(), ResponseOp::Put { prev_kv: None }],
        };
        let ops = vec![range(), nested, range()];
        assert_eq!(revisions(&txn_responses(ops, 4)), vec![3, -1, 3, 4, 4]);
    }
}
