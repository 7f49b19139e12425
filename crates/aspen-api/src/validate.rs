//! Request checks done before proposing, as etcd's v3rpc does them (checkTxnRequest,
//! checkIntervals); a request that fails here never reaches Raft.

use std::collections::BTreeSet;

use aspen_core::keys::KeyRange;
use aspen_core::limits::TXN_NESTING_DEPTH_MAX;
use aspen_proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, request_op::Request,
};
use tonic::Status;

use crate::status::{self, invalid};

pub fn check_range(request: &RangeRequest) -> Result<(), Status> {
    if request.key.is_empty() {
        return Err(invalid(status::EMPTY_KEY));
    }
    Ok(())
}

pub fn check_put(request: &PutRequest) -> Result<(), Status> {
    if request.key.is_empty() {
        return Err(invalid(status::EMPTY_KEY));
    }
    if request.ignore_value && !request.value.is_empty() {
        return Err(invalid(status::VALUE_PROVIDED));
    }
    if request.ignore_lease && request.lease != 0 {
        return Err(invalid(status::LEASE_PROVIDED));
    }
    Ok(())
}

pub fn check_delete(request: &DeleteRangeRequest) -> Result<(), Status> {
    if request.key.is_empty() {
        return Err(invalid(status::EMPTY_KEY));
    }
    Ok(())
}

/// etcd's checkTxnRequest plus its duplicate-key check. Recursion is bounded by
/// `TXN_NESTING_DEPTH_MAX`.
pub fn check_txn(request: &TxnRequest, txn_ops_max: u32) -> Result<(), Status> {
    check_txn_shape(request, txn_ops_max, 0)?;
    check_intervals(&request.success, 0)?;
    check_intervals(&request.failure, 0)?;
    Ok(())
}

fn check_txn_shape(request: &TxnRequest, txn_ops_max: u32, depth: u32) -> Result<(), Status> {
    if depth >= TXN_NESTING_DEPTH_MAX {
        return Err(invalid("etcdserver: txn nested too deeply"));
    }
    let max = txn_ops_max as usize;
    if request.compare.len() > max || request.success.len() > max || request.failure.len() > max {
        return Err(invalid(status::TOO_MANY_OPS));
    }
    if request.compare.iter().any(|c| c.key.is_empty()) {
        return Err(invalid(status::EMPTY_KEY));
    }
    for op in request.success.iter().chain(request.failure.iter()) {
        match &op.request {
            Some(Request::RequestRange(r)) => check_range(r)?,
            Some(Request::RequestPut(p)) => check_put(p)?,
            Some(Request::RequestDeleteRange(d)) => check_delete(d)?,
            Some(Request::RequestTxn(t)) => check_txn_shape(t, txn_ops_max, depth + 1)?,
            None => {}
        }
    }
    Ok(())
}

/// Puts and deletes a branch may make; two writes to one key in one Txn are refused.
struct Writes {
    puts: BTreeSet<Vec<u8>>,
    deletes: Vec<KeyRange>,
}

impl Writes {
    fn deletes_key(&self, key: &[u8]) -> bool {
        let point = KeyRange::Single(key.to_vec());
        self.deletes.iter().any(|d| d.overlaps(&point))
    }
}

fn duplicate() -> Status {
    invalid(status::DUPLICATE_KEY)
}

fn check_intervals(ops: &[RequestOp], depth: u32) -> Result<Writes, Status> {
    if depth >= TXN_NESTING_DEPTH_MAX {
        return Err(invalid("etcdserver: txn nested too deeply"));
    }
    let mut writes = Writes {
        puts: BTreeSet::new(),
        deletes: Vec::new(),
    };
    for op in ops {
        if let Some(Request::RequestDeleteRange(d)) = &op.request {
            writes.deletes.push(KeyRange::new(&d.key, &d.range_end));
        }
    }
    for op in ops {
        let Some(Request::RequestTxn(txn)) = &op.request else {
            continue;
        };
        let then_writes = check_intervals(&txn.success, depth + 1)?;
        let else_writes = check_intervals(&txn.failure, depth + 1)?;
        for key in &then_writes.puts {
            if writes.puts.contains(key) || writes.deletes_key(key) {
                return Err(duplicate());
            }
        }
        for key in &else_writes.puts {
            // A key put in both branches is fine: only one branch runs.
            let clash = writes.puts.contains(key) && !then_writes.puts.contains(key);
            if clash || writes.deletes_key(key) {
                return Err(duplicate());
            }
        }
        writes.puts.extend(then_writes.puts);
        writes.puts.extend(else_writes.puts);
        writes.deletes.extend(then_writes.deletes);
        writes.deletes.extend(else_writes.deletes);
    }
    for op in ops {
        let Some(Request::RequestPut(put)) = &op.request else {
            continue;
        };
        if writes.puts.contains(&put.key) || writes.deletes_key(&put.key) {
            return Err(duplicate());
        }
        writes.puts.insert(put.key.clone());
    }
    Ok(writes)
}
