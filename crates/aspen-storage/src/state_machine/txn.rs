//! Txn: compares evaluated against the state before the Txn, then one branch applied at one
//! revision, as etcd does it.
//!
//! Nesting is bounded by `TXN_NESTING_DEPTH_MAX`, so the recursion below is too.

use aspen_core::keys::KeyRange;
use aspen_core::limits::TXN_NESTING_DEPTH_MAX;
use aspen_core::{
    ApplyError, CommandResult, Compare, CompareResult, CompareTarget, RequestOp, ResponseOp,
    TxnRequest,
};

use super::apply::{Applier, Outcome, WriteRevision};
use super::range::read_revision;
use super::records::StoredVersion;
use crate::error::Result;

type Checked<T> = std::result::Result<T, ApplyError>;

impl<'a, 't> Applier<'a, 't> {
    pub(crate) fn txn(&mut self, txn: &TxnRequest, rev: &mut WriteRevision) -> Result<Outcome> {
        // Choose every branch first, against the state before any write, then check the chosen
        // ops, then write: a failing check leaves nothing half-applied.
        let mut path: Vec<bool> = Vec::new();
        if let Err(e) = self.choose_branches(txn, 0, &mut path)? {
            return Ok(Err(e));
        }
        let mut cursor = 0usize;
        if let Err(e) = self.check_ops(txn, &path, &mut cursor)? {
            return Ok(Err(e));
        }
        assert_eq!(
            cursor,
            path.len(),
            "checked a different number of txns than chosen"
        );
        let mut cursor = 0usize;
        let (succeeded, responses) = self.execute(txn, &path, &mut cursor, rev)?;
        assert_eq!(cursor, path.len());
        Ok(Ok(CommandResult::Txn {
            succeeded,
            responses,
        }))
    }

    fn choose_branches(
        &self,
        txn: &TxnRequest,
        depth: u32,
        path: &mut Vec<bool>,
    ) -> Result<Checked<()>> {
        if depth >= TXN_NESTING_DEPTH_MAX {
            return Ok(Err(ApplyError::TxnTooDeep));
        }
        let mut succeeded = true;
        for compare in &txn.compare {
            if !self.compare_holds(compare)? {
                succeeded = false;
                break;
            }
        }
        path.push(succeeded);
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        for op in ops {
            if let RequestOp::Txn(inner) = op
                && let Err(e) = self.choose_branches(inner, depth + 1, path)?
            {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }

    fn check_ops(
        &self,
        txn: &TxnRequest,
        path: &[bool],
        cursor: &mut usize,
    ) -> Result<Checked<()>> {
        let succeeded = path[*cursor];
        *cursor += 1;
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        for op in ops {
            let checked = match op {
                RequestOp::Put(put) => self.check_put(put)?,
                RequestOp::Range(range) => read_revision(
                    range.revision,
                    self.state.revision,
                    self.state.compact_revision,
                )
                .map(|_| ()),
                RequestOp::DeleteRange(_) => Ok(()),
                RequestOp::Txn(inner) => self.check_ops(inner, path, cursor)?,
            };
            if checked.is_err() {
                return Ok(checked);
            }
        }
        Ok(Ok(()))
    }

    fn execute(
        &mut self,
        txn: &TxnRequest,
        path: &[bool],
        cursor: &mut usize,
        rev: &mut WriteRevision,
    ) -> Result<(bool, Vec<ResponseOp>)> {
        let succeeded = path[*cursor];
        *cursor += 1;
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match op {
                RequestOp::Put(put) => ResponseOp::Put {
                    prev_kv: self.put(put, rev)?,
                },
                RequestOp::DeleteRange(delete) => {
                    let (deleted, prev_kvs) = self.delete_range(delete, rev)?;
                    ResponseOp::DeleteRange { deleted, prev_kvs }
                }
                RequestOp::Range(range) => {
                    let result = self.range(range)?;
                    // Revisions were checked before any write; a failure here is a bug.
                    let result =
                        result.map_err(|e| crate::error::StorageError::Invariant(e.to_string()))?;
                    ResponseOp::Range(result)
                }
                RequestOp::Txn(inner) => {
                    let (succeeded, responses) = self.execute(inner, path, cursor, rev)?;
                    ResponseOp::Txn {
                        succeeded,
                        responses,
                    }
                }
            };
            responses.push(response);
        }
        Ok((succeeded, responses))
    }

    /// etcd's rule: every key in the compare's range must satisfy it; an empty range compares
    /// against a zero key (and a value compare on it fails).
    fn compare_holds(&self, compare: &Compare) -> Result<bool> {
        let range = KeyRange::new(&compare.key, &compare.range_end);
        if range.is_empty() {
            return Ok(compare_version(compare, None));
        }
        let mut seen_any = false;
        let mut holds = true;
        let with_value = matches!(compare.target, CompareTarget::Value(_));
        super::mvcc::for_each_visible(
            &self.index()?,
            self.tables.revs()?,
            &range,
            u64::MAX,
            with_value,
            |_, version| {
                seen_any = true;
                holds = compare_version(compare, Some(&version));
                Ok(holds)
            },
        )?;
        if !seen_any {
            return Ok(compare_version(compare, None));
        }
        Ok(holds)
    }
}

fn compare_version(compare: &Compare, version: Option<&StoredVersion>) -> bool {
    let ordering = match (&compare.target, version) {
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Value(want), Some(v)) => v.value.as_slice().cmp(want.as_slice()),
        (CompareTarget::Version(want), v) => v.map_or(0, |v| v.version).cmp(want),
        (CompareTarget::CreateRevision(want), v) => v.map_or(0, |v| v.create_revision).cmp(want),
        (CompareTarget::ModRevision(want), v) => v.map_or(0, |v| v.mod_revision).cmp(want),
        (CompareTarget::Lease(want), v) => v.map_or(0, |v| v.lease).cmp(want),
    };
    match compare.result {
        CompareResult::Equal => ordering.is_eq(),
        CompareResult::NotEqual => ordering.is_ne(),
        CompareResult::Greater => ordering.is_gt(),
        CompareResult::Less => ordering.is_lt(),
    }
}
