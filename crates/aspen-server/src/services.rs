//! The client-facing gRPC router: every etcd service Aspen serves.

use aspen_api::KvService;
use aspen_node::Node;
use aspen_proto::etcdserverpb::kv_server::KvServer;

/// gRPC message limit for clients: etcd allows the request limit plus 512 KiB of overhead.
pub fn client_message_bytes_max(node: &Node) -> usize {
    (node.limits().request_bytes_max + 512 * 1024) as usize
}

pub fn client_router(node: &Node) -> tonic::transport::server::Router {
    let bytes_max = client_message_bytes_max(node);
    // Responses may be larger than requests (a big range): etcd's default send limit is
    // effectively unbounded (math.MaxInt32); we keep the same.
    let send_max = i32::MAX as usize;
    let kv = KvServer::new(KvService::new(node.clone()))
        .max_decoding_message_size(bytes_max)
        .max_encoding_message_size(send_max);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(kv)
}
