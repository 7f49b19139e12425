//! The pieces of etcd's `clientv3/concurrency` package that its server-side Lock and Election
//! services run (etcd 3.4 `v3lock`, `v3election`), built on the node's writes, linearizable
//! reads and watch hub instead of an in-process client.
//!
//! A lock or an election is a queue of keys `<name>/<lease id in hex>` under one prefix,
//! ordered by create revision: the first key holds the lock (leads). A waiter waits until no
//! key created before its own is left (`wait_deletes`).

use aspen_core::convert::wire_i64;
use aspen_core::keys::{KeyRange, prefix_range_end};
use aspen_core::response::RangeResult;
use aspen_core::{
    ApplyResponse, Command, CommandResult, Compare, CompareResult, CompareTarget,
    DeleteRangeRequest, EventKind, PutRequest, RangeRequest, RequestOp, ResponseOp, SortOrder,
    SortTarget, TxnRequest,
};
use aspen_node::{Node, NodeError};
use aspen_watch::{WatchMessage, WatchRequest, WatchStream};
use tokio::sync::mpsc;
use tonic::Status;

use crate::access::Caller;
use crate::status::{from_apply, from_node, from_watch};

/// TTL of the lease etcd's session grants when a request names no lease (lease 0):
/// `concurrency.NewSession`'s default.
pub const DEFAULT_SESSION_TTL_SECONDS: i64 = 60;

/// A Txn's outcome: which branch ran, its responses, the store revision after it.
pub struct TxnOutcome {
    pub succeeded: bool,
    pub responses: Vec<ResponseOp>,
    pub revision: u64,
}

impl TxnOutcome {
    /// The range result of response `index` (the caller built the Txn, so it is a range).
    pub fn range(&self, index: usize) -> Result<&RangeResult, Status> {
        match self.responses.get(index) {
            Some(ResponseOp::Range(range)) => Ok(range),
            other => Err(Status::internal(format!(
                "unexpected txn response {other:?}"
            ))),
        }
    }
}

/// `<name>/`: the prefix of a lock's or an election's keys.
pub fn prefix(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// `<name>/<lease>`, the lease printed as Go's `%x` prints an int64 (a sign, then hex digits).
pub fn queue_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    key.extend_from_slice(hex.as_bytes());
    key
}

/// The session lease a request names, as the wire carries it: 0 means none.
pub fn lease_id(lease: i64) -> u64 {
    crate::convert::lease_id(lease)
}

pub fn create_revision_is(key: &[u8], revision: u64) -> Compare {
    Compare {
        result: CompareResult::Equal,
        target: CompareTarget::CreateRevision(revision),
        key: key.to_vec(),
        range_end: Vec::new(),
    }
}

pub fn put(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        lease: lease_id(lease),
        ..Default::default()
    })
}

pub fn get(key: &[u8]) -> RequestOp {
    RequestOp::Range(RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    })
}

pub fn delete(key: &[u8]) -> RequestOp {
    RequestOp::DeleteRange(DeleteRangeRequest {
        key: key.to_vec(),
        ..Default::default()
    })
}

/// etcd's `WithFirstCreate`: the key under `prefix` created first.
pub fn first_created(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_range_end(prefix),
        limit: 1,
        sort_order: SortOrder::Ascend,
        sort_target: SortTarget::Create,
        ..Default::default()
    }
}

/// etcd's `WithLastCreate` + `WithMaxCreateRev`: the key under `prefix` created last at or
/// before `max_create_revision`.
fn last_created_before(prefix: &[u8], max_create_revision: u64) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_range_end(prefix),
        limit: 1,
        sort_order: SortOrder::Descend,
        sort_target: SortTarget::Create,
        max_create_revision,
        ..Default::default()
    }
}

/// Deletes a queued key (with `spawn_delete_if_created_at`) if dropped while armed: a Lock
/// or Campaign whose client went away while it waited leaves no key behind, as in etcd.
pub struct CancelGuard {
    recipes: Recipes,
    key: Vec<u8>,
    create_revision: u64,
    armed: bool,
}

impl CancelGuard {
    pub fn new(recipes: &Recipes, key: &[u8], create_revision: u64) -> CancelGuard {
        CancelGuard {
            recipes: recipes.clone(),
            key: key.to_vec(),
            create_revision,
            armed: true,
        }
    }

    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            let key = std::mem::take(&mut self.key);
            self.recipes
                .spawn_delete_if_created_at(key, self.create_revision);
        }
    }
}

/// The node calls the recipes make.
#[derive(Clone)]
pub struct Recipes {
    node: Node,
    /// Whose request this runs for: its writes are proposed as that caller's, checked at the
    /// auth revision the caller was checked at (`Caller::authorize`).
    caller: Option<Caller>,
}

impl Recipes {
    pub fn new(node: Node) -> Recipes {
        Recipes { node, caller: None }
    }

    /// The same recipes, run for `caller` (whose permissions the service checked).
    pub fn for_caller(&self, caller: Caller) -> Recipes {
        Recipes {
            node: self.node.clone(),
            caller: Some(caller),
        }
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    async fn propose(&self, command: Command) -> Result<(CommandResult, u64), Status> {
        let command = match &self.caller {
            Some(caller) => caller.authorize(command),
            None => command,
        };
        let ApplyResponse { revision, result } =
            self.node.write(command).await.map_err(from_node)?;
        let result = result.map_err(|e| from_apply(&e))?;
        Ok((result, revision))
    }

    pub async fn txn(&self, request: TxnRequest) -> Result<TxnOutcome, Status> {
        let (result, revision) = self.propose(Command::Txn(request)).await?;
        let CommandResult::Txn {
            succeeded,
            responses,
        } = result
        else {
            return Err(Status::internal(format!(
                "unexpected apply result {result:?}"
            )));
        };
        Ok(TxnOutcome {
            succeeded,
            responses,
            revision,
        })
    }

    /// A linearizable range and the revision it read at.
    pub async fn range(&self, request: &RangeRequest) -> Result<(RangeResult, u64), Status> {
        self.node.range(request).await.map_err(from_node)
    }

    /// Deletes one key; the store revision after the delete.
    pub async fn delete(&self, key: &[u8]) -> Result<u64, Status> {
        let request = DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        let (_, revision) = self.propose(Command::DeleteRange(request)).await?;
        Ok(revision)
    }

    /// The lease a request's session uses: its own, or (lease 0) a new one with etcd's
    /// default session TTL, as `concurrency.NewSession` grants.
    pub async fn session_lease(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let command = Command::LeaseGrant {
            id: 0,
            ttl_seconds: DEFAULT_SESSION_TTL_SECONDS,
        };
        match self.propose(command).await? {
            (CommandResult::LeaseGrant { id, .. }, _) => Ok(wire_i64(id)),
            (other, _) => Err(Status::internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    /// Deletes `key` if it is still the one created at `create_revision` (etcd's
    /// `Election.Resign`, and `Mutex.Unlock` of a waiter that gave up). Runs on its own task:
    /// it is called from the drop of a cancelled request.
    pub fn spawn_delete_if_created_at(&self, key: Vec<u8>, create_revision: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the server is shutting down
        };
        let recipes = self.clone();
        runtime.spawn(async move {
            let txn = TxnRequest {
                compare: vec![create_revision_is(&key, create_revision)],
                success: vec![delete(&key)],
                failure: Vec::new(),
            };
            if let Err(status) = recipes.txn(txn).await {
                tracing::warn!(%status, "deleting the key of a cancelled lock or campaign");
            }
        });
    }

    /// etcd's `waitDeletes`: waits until no key under `prefix` was created at or before
    /// `max_create_revision`, each time watching the newest such key until it is deleted.
    /// Returns the revision of the last (empty) read.
    pub async fn wait_deletes(
        &self,
        prefix: &[u8],
        max_create_revision: u64,
    ) -> Result<u64, Status> {
        let request = last_created_before(prefix, max_create_revision);
        loop {
            let (result, revision) = self.range(&request).await?;
            let Some(newest) = result.kvs.first() else {
                return Ok(revision);
            };
            self.wait_delete(&newest.key, revision).await?;
        }
    }

    /// etcd's `waitDelete`: watches `key` from `revision` until a delete event.
    async fn wait_delete(&self, key: &[u8], revision: u64) -> Result<(), Status> {
        let mut watch = self.watch(KeyRange::new(key, b""), revision, true)?;
        loop {
            if watch
                .next()
                .await?
                .iter()
                .any(|e| e.kind == EventKind::Delete)
            {
                return Ok(());
            }
        }
    }

    /// A watch of `range` from `start_revision` on the node's hub; with `deletes_only`, puts
    /// are filtered out.
    pub fn watch(
        &self,
        range: KeyRange,
        start_revision: u64,
        deletes_only: bool,
    ) -> Result<Watch, Status> {
        let (stream, queue) = self.node.watch_hub().open_stream();
        let request = WatchRequest {
            watch_id: None,
            range,
            start_revision,
            filter_put: deletes_only,
            filter_delete: false,
            prev_kv: false,
        };
        stream.watch(request).map_err(|e| from_watch(&e))?;
        Ok(Watch {
            _stream: stream,
            queue,
        })
    }
}

/// One watcher on its own hub stream; dropping it removes the watcher.
pub struct Watch {
    _stream: WatchStream,
    queue: mpsc::Receiver<WatchMessage>,
}

impl Watch {
    /// The next batch of events (whole revisions, oldest first) and the hub's revision when
    /// they were queued.
    pub async fn next_batch(&mut self) -> Result<(Vec<aspen_core::Event>, u64), Status> {
        loop {
            match self.queue.recv().await {
                Some(WatchMessage::Events {
                    events, revision, ..
                }) => return Ok((events, revision)),
                Some(WatchMessage::Progress { .. }) => {}
                Some(WatchMessage::Compacted {
                    compact_revision, ..
                }) => {
                    return Err(from_apply(&aspen_core::ApplyError::Compacted {
                        compact_revision,
                    }));
                }
                None => return Err(from_node(NodeError::Stopped)),
            }
        }
    }

    /// The next batch of events.
    pub async fn next(&mut self) -> Result<Vec<aspen_core::Event>, Status> {
        Ok(self.next_batch().await?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_print_the_lease_as_go_does() {
        assert_eq!(queue_key(b"l/", 0x694d77aa9e38260f), b"l/694d77aa9e38260f");
        assert_eq!(queue_key(b"l/", 10), b"l/a");
        assert_eq!(queue_key(b"l/", -1), b"l/-1");
        assert_eq!(queue_key(&prefix(b""), 1), b"/1");
    }
}
