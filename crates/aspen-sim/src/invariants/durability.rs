//! No acknowledged write is lost: every mutation a client was told succeeded is, on every
//! converged replica, in the MVCC history at exactly the revision the client was told.

use aspen_core::RangeRequest;
use aspen_node::Node;

use crate::workload::{AckedWrite, Effect};

pub fn check(replicas: &[(u64, Node)], acked: &[AckedWrite]) -> Vec<String> {
    let mut violations = Vec::new();
    for (id, node) in replicas {
        for write in acked {
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
