//! etcd's Lock service (`v3lockpb.Lock`): etcd 3.4's `v3lock` server, which runs
//! `concurrency.Mutex` inside the server.
//!
//! Lock puts `<name>/<lease hex>` with the caller's lease (or reuses it when that lease already
//! queued it), then waits until every key under `<name>/` created before it is gone. The
//! answer's key exists while the caller holds the lock; Unlock deletes it, and so does the
//! lease's end.

use aspen_core::TxnRequest;
use aspen_node::Node;
use aspen_proto::v3lockpb::{self as pb, lock_server::Lock};
use prost::Message;
use tonic::{Request, Response, Status};

use aspen_core::keys::prefix_range_end;

use crate::access::Access;
use crate::header::header;
use crate::recipe::{self, CancelGuard, Recipes};
use crate::status::{self, from_recipe, invalid};

#[derive(Clone)]
pub struct LockService {
    recipes: Recipes,
    access: Access,
}

impl LockService {
    pub fn new(node: Node, access: Access) -> LockService {
        LockService {
            recipes: Recipes::new(node),
            access,
        }
    }

    fn node(&self) -> &Node {
        self.recipes.node()
    }

    /// etcd refuses a request whose encoding exceeds --max-request-bytes.
    fn check_size<M: Message>(&self, message: &M) -> Result<(), Status> {
        if message.encoded_len() as u64 > self.node().limits().request_bytes_max {
            return Err(invalid(status::REQUEST_TOO_LARGE));
        }
        Ok(())
    }
}

impl LockService {
    async fn lock_inner(
        &self,
        request: Request<pb::LockRequest>,
    ) -> Result<Response<pb::LockResponse>, Status> {
        let caller = self.access.caller(&request)?;
        let request = request.into_inner();
        self.check_size(&request)?;
        let prefix = recipe::prefix(&request.name);
        // The recipe reads the queue under the prefix and writes its own key there.
        caller.check_read(&prefix, &prefix_range_end(&prefix))?;
        let recipes = self.recipes.for_caller(caller.clone());
        let lease = recipes.session_lease(request.lease).await?;
        let key = recipe::queue_key(&prefix, lease);
        caller.check_write(&key, &[])?;
        // Queue this key (or find it queued by this lease), and read the current holder in
        // the same revision: the uncontended path takes one Raft round.
        let owner = aspen_core::RequestOp::Range(recipe::first_created(&prefix));
        let txn = TxnRequest {
            compare: vec![recipe::create_revision_is(&key, 0)],
            success: vec![recipe::put(&key, b"", lease), owner.clone()],
            failure: vec![recipe::get(&key), owner],
        };
        let outcome = recipes.txn(txn).await?;
        let my_revision = if outcome.succeeded {
            outcome.revision
        } else {
            let existing = outcome.range(0)?.kvs.first();
            let existing = existing.ok_or_else(|| Status::internal("lock key vanished in txn"))?;
            existing.create_revision
        };
        let owner = outcome.range(1)?.kvs.first().map(|kv| kv.create_revision);
        if owner.is_none_or(|owner| owner == my_revision) {
            return Ok(Response::new(pb::LockResponse {
                header: header(self.node(), outcome.revision),
                key,
            }));
        }
        // Wait for the keys queued before this one. If the client goes away or the wait
        // fails, the key is deleted (etcd's Mutex.Lock unlocks on a failed wait).
        let guard = CancelGuard::new(&recipes, &key, my_revision);
        let revision = recipes.wait_deletes(&prefix, my_revision - 1).await?;
        guard.disarm();
        Ok(Response::new(pb::LockResponse {
            header: header(self.node(), revision),
            key,
        }))
    }

    async fn unlock_inner(
        &self,
        request: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        let caller = self.access.caller(&request)?;
        let request = request.into_inner();
        if request.key.is_empty() {
            return Err(invalid(status::EMPTY_KEY));
        }
        self.check_size(&request)?;
        caller.check_write(&request.key, &[])?;
        let revision = self.recipes.for_caller(caller).delete(&request.key).await?;
        Ok(Response::new(pb::UnlockResponse {
            header: header(self.node(), revision),
        }))
    }
}

/// Every error goes out as etcd 3.4 sends it (`status::from_recipe`).
#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(
        &self,
        request: Request<pb::LockRequest>,
    ) -> Result<Response<pb::LockResponse>, Status> {
        self.lock_inner(request).await.map_err(from_recipe)
    }

    async fn unlock(
        &self,
        request: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        self.unlock_inner(request).await.map_err(from_recipe)
    }
}
