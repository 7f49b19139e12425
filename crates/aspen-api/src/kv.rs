//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.

use aspen_core::convert::{micros, nanos, wire_i64};
use aspen_core::{ApplyResponse, Command, CommandResult};
use aspen_node::Node;
use aspen_proto::etcdserverpb::{self as pb, kv_server::Kv};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::access::Access;
use crate::convert;
use crate::header::header;
use crate::status::{self, from_apply, from_node, invalid};
use crate::validate;

#[derive(Clone)]
pub struct KvService {
    node: Node,
    access: Access,
}

impl KvService {
    pub fn new(node: Node, access: Access) -> KvService {
        KvService { node, access }
    }

    /// etcd refuses a request whose encoding exceeds --max-request-bytes.
    fn check_size<M: Message>(&self, message: &M) -> Result<(), Status> {
        if message.encoded_len() as u64 > self.node.limits().request_bytes_max {
            return Err(invalid(status::REQUEST_TOO_LARGE));
        }
        Ok(())
    }

    async fn propose(&self, command: Command) -> Result<(CommandResult, u64), Status> {
        let ApplyResponse { revision, result } =
            self.node.write(command).await.map_err(from_node)?;
        let result = result.map_err(|e| from_apply(&e))?;
        Ok((result, revision))
    }
}

fn unexpected(result: &CommandResult) -> Status {
    Status::internal(format!("unexpected apply result {result:?}"))
}

impl KvService {
    async fn range_inner(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let caller = self.access.caller(&request)?;
        let request = request.into_inner();
        validate::check_range(&request)?;
        caller.check_range(&request)?;
        let (result, revision) = self
            .node
            .range(&convert::range_request(&request))
            .await
            .map_err(from_node)?;
        Ok(Response::new(convert::range_response(
            result,
            header(&self.node, revision),
        )))
    }

    /// `write_ns` is set to the time spent in `Node::write`, so `put` can tell the API layer's
    /// share of the request from the node's.
    async fn put_inner(
        &self,
        request: Request<pb::PutRequest>,
        write_ns: &mut u64,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let caller = self.access.caller(&request)?;
        let request = request.into_inner();
        validate::check_put(&request)?;
        self.check_size(&request)?;
        caller.check_put(&self.node, &request)?;
        let command = caller.authorize(Command::Put(convert::put_request(&request)));
        let write_started = std::time::Instant::now();
        let proposed = self.propose(command).await;
        *write_ns = nanos(write_started.elapsed());
        let (result, revision) = proposed?;
        let CommandResult::Put { prev_kv } = result else {
            return Err(unexpected(&result));
        };
        Ok(Response::new(pb::PutResponse {
            header: header(&self.node, revision),
            prev_kv: prev_kv.map(convert::key_value),
        }))
    }

    async fn delete_range_inner(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let caller = self.access.caller(&request)?;
        let request = request.into_inner();
        validate::check_delete(&request)?;
        self.check_size(&request)?;
        caller.check_delete(&request)?;
        let command = Command::DeleteRange(convert::delete_request(&request));
        let (result, revision) = self.propose(caller.authorize(command)).await?;
        let CommandResult::DeleteRange { deleted, prev_kvs } = result else {
            return Err(unexpected(&result));
        };
        Ok(Response::new(pb::DeleteRangeResponse {
            header: header(&self.node, revision),
            deleted: wire_i64(deleted),
            prev_kvs: prev_kvs.into_iter().map(convert::key_value).collect(),
        }))
    }

    async fn txn_inner(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let caller = self.access.caller(&request)?;
        let request = request.into_inner();
        validate::check_txn(&request, self.node.limits().txn_ops_max)?;
        self.check_size(&request)?;
        caller.check_txn(&self.node, &request)?;
        let command = Command::Txn(convert::txn_request(&request));
        let (result, revision) = self.propose(caller.authorize(command)).await?;
        let CommandResult::Txn {
            succeeded,
            responses,
        } = result
        else {
            return Err(unexpected(&result));
        };
        Ok(Response::new(pb::TxnResponse {
            header: header(&self.node, revision),
            succeeded,
            responses: convert::txn_responses(responses, revision),
        }))
    }

    async fn compact_inner(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        // Root only while auth is enabled (etcd 3.4 lets any user compact; Aspen treats
        // compaction as administration, as the Maintenance calls are).
        let caller = self.access.caller(&request)?;
        caller.check_admin()?;
        let request = request.into_inner();
        let command = Command::Compact {
            revision: request.revision.max(0) as u64,
            physical: request.physical,
        };
        let (_, revision) = self.propose(caller.authorize(command)).await?;
        if request.physical {
            // As etcd: the call returns once this member has removed the compacted versions.
            self.node
                .wait_compacted(request.revision.max(0) as u64)
                .await
                .map_err(from_node)?;
        }
        Ok(Response::new(pb::CompactionResponse {
            header: header(&self.node, revision),
        }))
    }
}

/// Times each call into the node's per-method client metrics.
macro_rules! timed {
    ($self:ident, $method:expr, $call:expr) => {{
        let started = std::time::Instant::now();
        let result = $call.await;
        let elapsed_us = micros(started.elapsed());
        $self
            .node
            .metrics()
            .observe_client($method, result.is_ok(), elapsed_us);
        result
    }};
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        timed!(self, 0, self.range_inner(request))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let started = std::time::Instant::now();
        let mut write_ns = 0;
        let result = timed!(self, 1, self.put_inner(request, &mut write_ns));
        if result.is_ok() {
            let api_ns = nanos(started.elapsed()).saturating_sub(write_ns);
            self.node.metrics().put_stages.observe_api_ns(api_ns);
        }
        result
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        timed!(self, 2, self.delete_range_inner(request))
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        timed!(self, 3, self.txn_inner(request))
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        timed!(self, 4, self.compact_inner(request))
    }
}
