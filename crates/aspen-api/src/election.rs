//! etcd's Election service (`v3electionpb.Election`): etcd 3.4's `v3election` server, which
//! runs `concurrency.Election` inside the server.
//!
//! Candidates queue keys `<name>/<lease hex>` holding their proclaimed value; the key created
//! first leads. Campaign waits until its key is first; Proclaim and Resign act only while the
//! key is the one the campaign created (compare on its create revision); Leader reads the
//! first key; Observe streams it and every change to it.

use std::pin::Pin;

use aspen_core::convert::wire_i64;
use aspen_core::keys::KeyRange;
use aspen_core::limits::WATCH_RESPONSE_QUEUE_MAX;
use aspen_core::{EventKind, KeyValue, TxnRequest, keys::prefix_range_end};
use aspen_node::Node;
use aspen_proto::v3electionpb::{self as pb, election_server::Election};
use futures_util::Stream;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::access::Access;
use crate::convert;
use crate::header::header;
use crate::recipe::{self, CancelGuard, Recipes};
use crate::status::{self, from_recipe, invalid};

#[derive(Clone)]
pub struct ElectionService {
    recipes: Recipes,
    access: Access,
}

impl ElectionService {
    pub fn new(node: Node, access: Access) -> ElectionService {
        ElectionService {
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

    /// etcd's `Election.Proclaim`: puts `value` on the leader's key if it is still the key
    /// created at `leader.rev`; the store revision after, or None if it is not.
    async fn proclaim_as(
        &self,
        recipes: &Recipes,
        leader: &pb::LeaderKey,
        value: &[u8],
    ) -> Result<Option<u64>, Status> {
        let rev = leader.rev.max(0) as u64;
        let txn = TxnRequest {
            compare: vec![recipe::create_revision_is(&leader.key, rev)],
            success: vec![recipe::put(&leader.key, value, leader.lease)],
            failure: Vec::new(),
        };
        let outcome = recipes.txn(txn).await?;
        Ok(outcome.succeeded.then_some(outcome.revision))
    }

    /// etcd's `Election.Resign`: deletes the leader's key if it is still the key created at
    /// `leader.rev`; the store revision after.
    async fn resign_as(&self, recipes: &Recipes, leader: &pb::LeaderKey) -> Result<u64, Status> {
        let rev = leader.rev.max(0) as u64;
        let txn = TxnRequest {
            compare: vec![recipe::create_revision_is(&leader.key, rev)],
            success: vec![recipe::delete(&leader.key)],
            failure: Vec::new(),
        };
        Ok(recipes.txn(txn).await?.revision)
    }
}

/// The `leader` of a Proclaim or Resign request: required, with a key.
fn leader_key(leader: Option<&pb::LeaderKey>) -> Result<&pb::LeaderKey, Status> {
    let leader = leader.ok_or_else(|| status::election(status::MISSING_LEADER_KEY))?;
    if leader.key.is_empty() {
        return Err(invalid(status::EMPTY_KEY));
    }
    Ok(leader)
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaderResponse, Status>> + Send>>;

impl ElectionService {
    async fn campaign_inner(
        &self,
        request: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        let caller = self.access.caller(&request)?;
        let request = request.into_inner();
        self.check_size(&request)?;
        let prefix = recipe::prefix(&request.name);
        // The recipe reads the candidates under the prefix and writes its own key there.
        caller.check_read(&prefix, &prefix_range_end(&prefix))?;
        let recipes = self.recipes.for_caller(caller.clone());
        let lease = recipes.session_lease(request.lease).await?;
        let key = recipe::queue_key(&prefix, lease);
        caller.check_write(&key, &[])?;
        let txn = TxnRequest {
            compare: vec![recipe::create_revision_is(&key, 0)],
            success: vec![recipe::put(&key, &request.value, lease)],
            failure: vec![recipe::get(&key)],
        };
        let outcome = recipes.txn(txn).await?;
        let mut leader = pb::LeaderKey {
            name: request.name,
            key,
            rev: wire_i64(outcome.revision),
            lease,
        };
        if !outcome.succeeded {
            // This lease already campaigns: keep its place, update its value.
            let existing = outcome.range(0)?.kvs.first();
            let existing =
                existing.ok_or_else(|| Status::internal("campaign key vanished in txn"))?;
            leader.rev = wire_i64(existing.create_revision);
            if existing.value != request.value {
                match self.proclaim_as(&recipes, &leader, &request.value).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        self.resign_as(&recipes, &leader).await?;
                        return Err(status::election(status::ELECTION_NOT_LEADER));
                    }
                    Err(error) => {
                        self.resign_as(&recipes, &leader).await?;
                        return Err(error);
                    }
                }
            }
        }
        // Wait for the candidates queued before this one. A client that goes away while
        // waiting resigns (etcd resigns when the campaign's context ends).
        let guard = CancelGuard::new(&recipes, &leader.key, leader.rev as u64);
        let waited = recipes
            .wait_deletes(&prefix, (leader.rev as u64).saturating_sub(1))
            .await;
        guard.disarm();
        waited?;
        Ok(Response::new(pb::CampaignResponse {
            header: header(self.node(), outcome.revision),
            leader: Some(leader),
        }))
    }

    async fn proclaim_inner(
        &self,
        request: Request<pb::ProclaimRequest>,
    ) -> Result<Response<pb::ProclaimResponse>, Status> {
        let caller = self.access.caller(&request)?;
        let request = request.into_inner();
        self.check_size(&request)?;
        let mut leader = leader_key(request.leader.as_ref())?.clone();
        caller.check_read(&leader.key, &[])?;
        caller.check_write(&leader.key, &[])?;
        let recipes = self.recipes.for_caller(caller);
        // etcd resumes the election on a session with the leader's lease, which grants a
        // 60 s lease when it is 0; the proclaimed value is put with that lease.
        leader.lease = recipes.session_lease(leader.lease).await?;
        let Some(revision) = self.proclaim_as(&recipes, &leader, &request.value).await? else {
            return Err(status::election(status::ELECTION_NOT_LEADER));
        };
        Ok(Response::new(pb::ProclaimResponse {
            header: header(self.node(), revision),
        }))
    }

    async fn leader_inner(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<pb::LeaderResponse>, Status> {
        let caller = self.access.caller(&request)?;
        let request = request.into_inner();
        let prefix = recipe::prefix(&request.name);
        caller.check_read(&prefix, &prefix_range_end(&prefix))?;
        let (result, revision) = self.recipes.range(&recipe::first_created(&prefix)).await?;
        let Some(kv) = result.kvs.into_iter().next() else {
            return Err(status::election(status::ELECTION_NO_LEADER));
        };
        Ok(Response::new(pb::LeaderResponse {
            header: header(self.node(), revision),
            kv: Some(convert::key_value(kv)),
        }))
    }

    async fn observe_inner(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<ObserveStream>, Status> {
        let caller = self.access.caller(&request)?;
        let request = request.into_inner();
        let prefix = recipe::prefix(&request.name);
        caller.check_read(&prefix, &prefix_range_end(&prefix))?;
        let (sender, receiver) = mpsc::channel(WATCH_RESPONSE_QUEUE_MAX as usize);
        let observer = Observer {
            recipes: self.recipes.clone(),
            prefix: recipe::prefix(&request.name),
            sender: sender.clone(),
        };
        tokio::spawn(async move {
            tokio::select! {
                result = observer.run() => {
                    // etcd's Observe returns nil when its observer gives up: the stream ends
                    // with OK, whatever went wrong inside.
                    if let Err(Some(status)) = result {
                        tracing::warn!(%status, "election observe ended");
                    }
                }
                () = sender.closed() => {}
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn resign_inner(
        &self,
        request: Request<pb::ResignRequest>,
    ) -> Result<Response<pb::ResignResponse>, Status> {
        let caller = self.access.caller(&request)?;
        let request = request.into_inner();
        let leader = leader_key(request.leader.as_ref())?;
        caller.check_read(&leader.key, &[])?;
        caller.check_write(&leader.key, &[])?;
        let recipes = self.recipes.for_caller(caller);
        // As Proclaim: etcd's session grants a 60 s lease for lease 0, used for nothing else.
        recipes.session_lease(leader.lease).await?;
        let revision = self.resign_as(&recipes, leader).await?;
        Ok(Response::new(pb::ResignResponse {
            header: header(self.node(), revision),
        }))
    }
}

/// Every error goes out as etcd 3.4 sends it (`status::from_recipe`).
#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        self.campaign_inner(request).await.map_err(from_recipe)
    }

    async fn proclaim(
        &self,
        request: Request<pb::ProclaimRequest>,
    ) -> Result<Response<pb::ProclaimResponse>, Status> {
        self.proclaim_inner(request).await.map_err(from_recipe)
    }

    async fn leader(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<pb::LeaderResponse>, Status> {
        self.leader_inner(request).await.map_err(from_recipe)
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        self.observe_inner(request).await.map_err(from_recipe)
    }

    async fn resign(
        &self,
        request: Request<pb::ResignRequest>,
    ) -> Result<Response<pb::ResignResponse>, Status> {
        self.resign_inner(request).await.map_err(from_recipe)
    }
}

/// One Observe stream: etcd's `Election.observe`. Memory is bounded by the response queue
/// (the sender waits for a slow client) and the watch hub's per-stream queue (a watcher that
/// falls behind catches up from history).
struct Observer {
    recipes: Recipes,
    prefix: Vec<u8>,
    sender: mpsc::Sender<Result<pb::LeaderResponse, Status>>,
}

impl Observer {
    /// Ends with `Err(None)` when the client went away, `Err(Some(status))` on a failure.
    async fn run(&self) -> Result<(), Option<Status>> {
        loop {
            let (leader, revision) = self.current_leader().await?;
            let key = leader.key.clone();
            self.send(leader, revision).await?;
            // Follow the leader's key (new values) until it is deleted.
            let range = KeyRange::new(&key, b"");
            let mut watch = self.recipes.watch(range, revision + 1, false)?;
            'leader: loop {
                let (events, revision) = watch.next_batch().await?;
                for event in events {
                    if event.kind == EventKind::Delete {
                        break 'leader;
                    }
                    self.send(event.kv, revision).await?;
                }
            }
        }
    }

    /// The first key under the prefix and the revision it was read at; with no leader, waits
    /// for the first put under the prefix (and reports its revision).
    async fn current_leader(&self) -> Result<(KeyValue, u64), Status> {
        let (result, revision) = self
            .recipes
            .range(&recipe::first_created(&self.prefix))
            .await?;
        if let Some(kv) = result.kvs.into_iter().next() {
            return Ok((kv, revision));
        }
        let range = KeyRange::new(&self.prefix, &prefix_range_end(&self.prefix));
        let mut watch = self.recipes.watch(range, revision, false)?;
        loop {
            let (events, _) = watch.next_batch().await?;
            if let Some(put) = events.into_iter().find(|e| e.kind == EventKind::Put) {
                let revision = put.kv.mod_revision;
                return Ok((put.kv, revision));
            }
        }
    }

    async fn send(&self, kv: KeyValue, revision: u64) -> Result<(), Option<Status>> {
        let response = pb::LeaderResponse {
            header: header(self.recipes.node(), revision),
            kv: Some(convert::key_value(kv)),
        };
        self.sender.send(Ok(response)).await.map_err(|_| None)
    }
}
