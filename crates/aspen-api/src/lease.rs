//! etcd's Lease service: grant and revoke go through Raft; keep-alive and time-to-live are
//! answered by the leader's lessor (a follower forwards them); the lease list is read locally
//! after a ReadIndex barrier.

use std::pin::Pin;

use aspen_core::auth::PermissionType;
use aspen_core::convert::wire_i64;
use aspen_core::limits::{LEASE_KEEPALIVE_QUEUE_MAX, LEASE_TTL_SECONDS_MAX};
use aspen_core::{ApplyError, ApplyResponse, Command, CommandResult};
use aspen_node::{Node, NodeError};
use aspen_proto::etcdserverpb::{self as pb, lease_server::Lease};
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::access::Access;
use crate::header::header;
use crate::status::{self, from_apply, from_node, invalid};

/// Lease ids are positive int64 on etcd's wire; 0 asks the leader to pick one.
pub const LEASE_ID_NEGATIVE: &str = "etcdserver: lease ID must not be negative";

#[derive(Clone)]
pub struct LeaseService {
    node: Node,
    access: Access,
}

impl LeaseService {
    pub fn new(node: Node, access: Access) -> LeaseService {
        LeaseService { node, access }
    }

    async fn propose(&self, command: Command) -> Result<(CommandResult, u64), Status> {
        let ApplyResponse { revision, result } =
            self.node.write(command).await.map_err(from_node)?;
        let result = result.map_err(|e| from_apply(&e))?;
        Ok((result, revision))
    }

    /// A header for a response that read no particular revision: the local store's.
    fn current_header(&self) -> Result<Option<pb::ResponseHeader>, Status> {
        let revision = self.node.applied_state().map_err(from_node)?.revision;
        Ok(header(&self.node, revision))
    }
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        // A bad token is refused, as etcd refuses it for every request it proposes.
        let caller = self.access.caller(&request)?;
        let request = request.into_inner();
        if request.ttl > LEASE_TTL_SECONDS_MAX {
            return Err(Status::out_of_range(status::LEASE_TTL_TOO_LARGE));
        }
        if request.id < 0 {
            return Err(invalid(LEASE_ID_NEGATIVE));
        }
        let command = Command::LeaseGrant {
            id: request.id as u64,
            ttl_seconds: request.ttl,
        };
        let (result, revision) = self.propose(caller.authorize(command)).await?;
        let CommandResult::LeaseGrant { id, ttl_seconds } = result else {
            return Err(Status::internal(format!(
                "unexpected apply result {result:?}"
            )));
        };
        Ok(Response::new(pb::LeaseGrantResponse {
            header: header(&self.node, revision),
            id: wire_i64(id),
            ttl: ttl_seconds,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let caller = self.access.caller(&request)?;
        let id = request.into_inner().id;
        if id <= 0 {
            return Err(from_apply(&ApplyError::LeaseNotFound));
        }
        // etcd: revoking deletes the attached keys, so the caller must be able to write each.
        caller.check_lease_keys(&self.node, id as u64, PermissionType::Write)?;
        let command = caller.authorize(Command::LeaseRevoke { id: id as u64 });
        let (_, revision) = self.propose(command).await?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: header(&self.node, revision),
        }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut incoming = request.into_inner();
        let (sender, receiver) = mpsc::channel(LEASE_KEEPALIVE_QUEUE_MAX as usize);
        let service = self.clone();
        tokio::spawn(async move {
            // One renewal at a time: a client that sends faster than the leader answers
            // waits on its own stream, never on an unbounded queue.
            while let Ok(Some(request)) = incoming.message().await {
                let response = service.keep_alive_once(request.id).await;
                if sender.send(response).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let caller = self.access.caller(&request)?;
        let request = request.into_inner();
        let found = if request.id <= 0 {
            None
        } else {
            let id = request.id as u64;
            self.node
                .lease_time_to_live(id, request.keys)
                .await
                .map_err(from_node)?
        };
        // The attached keys are shown only to a caller who may read every one of them.
        if let Some(lease) = &found {
            for key in &lease.keys {
                caller.check_read(key, &[])?;
            }
        }
        // As etcd: an unknown lease is not an error here but a TTL of -1.
        let response = match found {
            Some(lease) => pb::LeaseTimeToLiveResponse {
                header: self.current_header()?,
                id: request.id,
                ttl: lease.ttl_seconds,
                granted_ttl: lease.granted_ttl_seconds,
                keys: lease.keys,
            },
            None => pb::LeaseTimeToLiveResponse {
                header: self.current_header()?,
                id: request.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        };
        Ok(Response::new(response))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let ids = self.node.lease_leases().await.map_err(from_node)?;
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: self.current_header()?,
            leases: ids
                .into_iter()
                .map(|id| pb::LeaseStatus { id: wire_i64(id) })
                .collect(),
        }))
    }
}

impl LeaseService {
    /// One keep-alive answer. As etcd: an unknown or expired lease answers TTL 0, not an error.
    async fn keep_alive_once(&self, id: i64) -> Result<pb::LeaseKeepAliveResponse, Status> {
        let ttl = if id <= 0 {
            0
        } else {
            match self.node.lease_keep_alive(id as u64).await {
                Ok(ttl) => ttl,
                Err(NodeError::Apply(ApplyError::LeaseNotFound)) => 0,
                Err(error) => return Err(from_node(error)),
            }
        };
        Ok(pb::LeaseKeepAliveResponse {
            header: self.current_header()?,
            id,
            ttl,
        })
    }
}
