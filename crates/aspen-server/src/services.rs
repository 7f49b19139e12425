//! The client-facing gRPC router: every etcd service Aspen serves (KV, Watch, Lease, Cluster,
//! Maintenance, Auth, and etcd's server-side Lock and Election), plus the standard gRPC health
//! service.

use aspen_api::{Access, AuthService, ClusterService, KvService, MaintenanceService};
use aspen_node::Node;
use aspen_proto::etcdserverpb::auth_server::AuthServer;
use aspen_proto::etcdserverpb::cluster_server::ClusterServer;
use aspen_proto::etcdserverpb::kv_server::KvServer;
use aspen_proto::etcdserverpb::lease_server::LeaseServer;
use aspen_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use aspen_proto::etcdserverpb::watch_server::WatchServer;
use aspen_proto::v3electionpb::election_server::ElectionServer;
use aspen_proto::v3lockpb::lock_server::LockServer;

/// gRPC message limit for clients: etcd allows the request limit plus 512 KiB of overhead.
pub fn client_message_bytes_max(node: &Node) -> usize {
    (node.limits().request_bytes_max + 512 * 1024) as usize
}

/// Responses may be larger than requests (a big range): etcd's send limit is effectively
/// unbounded (math.MaxInt32); we keep the same.
const CLIENT_SEND_BYTES_MAX: usize = i32::MAX as usize;

pub async fn client_router(node: &Node, access: &Access) -> tonic::transport::server::Router {
    let bytes_max = client_message_bytes_max(node);
    let kv = KvServer::new(KvService::new(node.clone(), access.clone()))
        .max_decoding_message_size(bytes_max)
        .max_encoding_message_size(CLIENT_SEND_BYTES_MAX);
    let cluster = ClusterServer::new(ClusterService::new(node.clone(), access.clone()))
        .max_decoding_message_size(bytes_max);
    let maintenance = MaintenanceServer::new(MaintenanceService::new(node.clone(), access.clone()))
        .max_decoding_message_size(bytes_max)
        .max_encoding_message_size(CLIENT_SEND_BYTES_MAX);
    let watch = WatchServer::new(aspen_api::WatchService::new(node.clone(), access.clone()))
        .max_decoding_message_size(bytes_max)
        .max_encoding_message_size(CLIENT_SEND_BYTES_MAX);
    let lease = LeaseServer::new(aspen_api::LeaseService::new(node.clone(), access.clone()))
        .max_decoding_message_size(bytes_max);
    let lock = LockServer::new(aspen_api::LockService::new(node.clone(), access.clone()))
        .max_decoding_message_size(bytes_max);
    let election = ElectionServer::new(aspen_api::ElectionService::new(
        node.clone(),
        access.clone(),
    ))
    .max_decoding_message_size(bytes_max)
    .max_encoding_message_size(CLIENT_SEND_BYTES_MAX);
    let auth = AuthServer::new(AuthService::new(node.clone(), access.clone()))
        .max_decoding_message_size(bytes_max);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health)
        .add_service(kv)
        .add_service(cluster)
        .add_service(maintenance)
        .add_service(auth)
        .add_service(watch)
        .add_service(lease)
        .add_service(lock)
        .add_service(election)
}
