//! Translation between etcd's protobuf messages and Aspen's commands and results.
//!
//! etcd uses int64 for revisions, versions and lease ids; Aspen uses u64. A negative value on
//! the wire means "none" where etcd treats it so (revision <= 0: current) and otherwise maps
//! to a value that cannot exist (a negative lease id is never granted).

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
        create_revision: kv.create_revision as i64,
        mod_revision: kv.mod_revision as i64,
        version: kv.version as i64,
        value: kv.value,
        lease: kv.lease as i64,
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
        count: result.count as i64,
    }
}

/// Responses inside a Txn carry the Txn's header, as etcd's do.
pub fn response_op(op: ResponseOp, header: &Option<pb::ResponseHeader>) -> pb::ResponseOp {
    use pb::response_op::Response;
    let response = match op {
        ResponseOp::Range(result) => {
            Response::ResponseRange(range_response(result, header.clone()))
        }
        ResponseOp::Put { prev_kv } => Response::ResponsePut(pb::PutResponse {
            header: header.clone(),
            prev_kv: prev_kv.map(key_value),
        }),
        ResponseOp::DeleteRange { deleted, prev_kvs } => {
            Response::ResponseDeleteRange(pb::DeleteRangeResponse {
                header: header.clone(),
                deleted: deleted as i64,
                prev_kvs: prev_kvs.into_iter().map(key_value).collect(),
            })
        }
        ResponseOp::Txn {
            succeeded,
            responses,
        } => Response::ResponseTxn(pb::TxnResponse {
            header: header.clone(),
            succeeded,
            responses: responses
                .into_iter()
                .map(|r| response_op(r, header))
                .collect(),
        }),
    };
    pb::ResponseOp {
        response: Some(response),
    }
}
