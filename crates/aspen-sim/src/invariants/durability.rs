//! No acknowledged write is lost: every mutation a client was told succeeded is, on every
//! converged replica, in the MVCC history at exactly the revision the client was told. A
//! write below a replica's compaction point can no longer be read there: it is checked in the
//! history captured before the compaction (`history.rs`), from committed state.

use aspen_core::RangeRequest;
use aspen_node::Node;

use crate::history::{Change, HistoryTap};
use crate::workload::{AckedWrite, Effect};

pub fn check(replicas: &[(u64, Node)], acked: &[AckedWrite], tap: &HistoryTap) -> Vec<String> {
    let mut violations = Vec::new();
    for write in acked {
        let in_tap = tap.events.get(&write.revision).is_some_and(|events| {
            events.iter().any(|event| {
                event.key == write.key
                    && match (&write.effect, &event.change) {
                        (Effect::Put(value), Change::Put { value: found, .. }) => found == value,
                        (Effect::Deleted, Change::Delete) => true,
                        _ => false,
                    }
            })
        });
        if write.revision <= tap.through && !in_tap {
            violations.push(format!(
                "history: acknowledged {} on {:?} at revision {} ({}) is not in the history \
                 captured through revision {}",
                describe(&write.effect),
                String::from_utf8_lossy(&write.key),
                write.revision,
                write.op,
                tap.through
            ));
        }
    }
    for (id, node) in replicas {
        let compacted_below = node
            .reader()
            .applied_state()
            .map_or(0, |state| state.compact_revision);
        for write in acked {
            if write.revision < compacted_below {
                continue;
            }
            if let Err(problem) = check_one(node, write) {
                violations.push(format!(
                    "node {id}: acknowledged {} on {:?} at revision {} ({}): {problem}",
                    describe(&write.effect),
                    String::from_utf8_lossy(&write.key),
                    write.revision,
                    write.op,
                ));
            }
        }
    }
    violations
}

fn describe(effect: &Effect) -> String {
    match effect {
        Effect::Put(value) => format!("put {:?}", String::from_utf8_lossy(value)),
        Effect::Deleted => "delete".to_string(),
    }
}

fn check_one(node: &Node, write: &AckedWrite) -> Result<(), String> {
    let request = RangeRequest {
        key: write.key.clone(),
        revision: write.revision,
        serializable: true,
        ..RangeRequest::default()
    };
    let (result, _) = match node.reader().range(&request) {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => return Err(format!("read at that revision refused: {e}")),
        Err(e) => return Err(format!("storage error: {e}")),
    };
    let found = result.kvs.first();
    match (&write.effect, found) {
        (Effect::Put(value), Some(kv))
            if &kv.value == value && kv.mod_revision == write.revision =>
        {
            Ok(())
        }
        (Effect::Deleted, None) => Ok(()),
        (_, Some(kv)) => Err(format!(
            "found {:?} modified at revision {}",
            String::from_utf8_lossy(&kv.value),
            kv.mod_revision
        )),
        (_, None) => Err("the key is absent".to_string()),
    }
}
