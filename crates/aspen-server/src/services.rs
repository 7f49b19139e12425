//! The client port's router: every etcd gRPC service Aspen serves (KV, Watch, Lease, Cluster,
//! Maintenance, Auth, and etcd's server-side Lock and Election), the standard gRPC health
//! service (following etcd's /health), and plain HTTP beside them: etcd's JSON gateway
//! (`/v3/...`), `/health`, `/version` and `/metrics`, as etcd's client port serves them.
//! `serve.rs` serves it. Also the peer port's router.

use std::convert::Infallible;
use std::task::{Context, Poll};

use aspen_api::{
    Access, AuthService, CertificateUser, ClusterService, KvService, MaintenanceService,
};
use aspen_node::Node;
use aspen_proto::etcdserverpb::auth_server::AuthServer;
use aspen_proto::etcdserverpb::cluster_server::ClusterServer;
use aspen_proto::etcdserverpb::kv_server::KvServer;
use aspen_proto::etcdserverpb::lease_server::LeaseServer;
use aspen_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use aspen_proto::etcdserverpb::watch_server::WatchServer;
use aspen_proto::peer::raft_peer_server::RaftPeerServer;
use aspen_proto::v3electionpb::election_server::ElectionServer;
use aspen_proto::v3lockpb::lock_server::LockServer;
use aspen_raft::PeerService;
use axum::http::{Request, Response};
use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tonic::service::Routes;

/// How often the gRPC health service's status is brought in line with `/health`.
pub const GRPC_HEALTH_CHECK_INTERVAL_MS: u64 = 1_000;

/// gRPC message limit for clients: etcd allows the request limit plus 512 KiB of overhead.
pub fn client_message_bytes_max(node: &Node) -> usize {
    aspen_core::convert::usize_from(node.limits().request_bytes_max + 512 * 1024)
}

/// Responses may be larger than requests (a big range): etcd's send limit is effectively
/// unbounded (math.MaxInt32); we keep the same.
pub(crate) const CLIENT_SEND_BYTES_MAX: usize = i32::MAX as usize;

/// The KV gRPC service `kv` with the client port's message limits.
fn kv_server(node: &Node, kv: std::sync::Arc<KvService>) -> KvServer<KvService> {
    KvServer::from_arc(kv)
        .max_decoding_message_size(client_message_bytes_max(node))
        .max_encoding_message_size(CLIENT_SEND_BYTES_MAX)
}

/// The client port's gRPC services, behind the `hasleader` check (`require_leader.rs`). The
/// health service's overall status follows `http::check_health` until `stop`.
pub async fn client_routes(node: &Node, access: &Access, stop: watch::Receiver<bool>) -> Routes {
    let bytes_max = client_message_bytes_max(node);
    let kv = kv_server(
        node,
        std::sync::Arc::new(KvService::new(node.clone(), access.clone())),
    );
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
    let (reporter, health) = tonic_health::server::health_reporter();
    let status = health_status(node).await;
    reporter.set_service_status("", status).await;
    tokio::spawn(follow_health(node.clone(), reporter, stop.clone()));
    let routes = Routes::new(health)
        .add_service(kv)
        .add_service(cluster)
        .add_service(maintenance)
        .add_service(auth)
        .add_service(watch)
        .add_service(lease)
        .add_service(lock)
        .add_service(election);
    let monitor = crate::require_leader::LeaderMonitor::spawn(node.clone(), stop);
    let require_leader =
        axum::middleware::from_fn_with_state(monitor, crate::require_leader::require_leader);
    Routes::from(routes.into_axum_router().layer(require_leader))
}

/// Everything the client port answers: gRPC by path, the JSON gateway (which calls the same
/// gRPC routes in process), and `/health`, `/version`, `/metrics`.
pub async fn client_service(
    node: &Node,
    access: &Access,
    stop: watch::Receiver<bool>,
) -> ClientService {
    let grpc = client_routes(node, access, stop).await;
    let gateway = crate::gateway::router(grpc.clone(), node.limits().request_bytes_max);
    let router = grpc
        .into_axum_router()
        .merge(crate::http::router(node.clone()))
        .merge(gateway)
        .fallback(crate::serve::not_found)
        .with_state(());
    let kv_direct = std::sync::Arc::new(KvService::new(node.clone(), access.clone()));
    ClientService {
        kv: kv_server(node, kv_direct.clone()),
        kv_direct,
        kv_bytes_max: client_message_bytes_max(node),
        router,
        certificate_user: None,
    }
}

/// The path prefix of every KV method (Range, Put, DeleteRange, Txn, Compact).
const KV_PATH_PREFIX: &str = "/etcdserverpb.KV/";
const KV_RANGE_PATH: &str = "/etcdserverpb.KV/Range";

/// The client port's service. A KV request (what every put and range is) goes straight to the
/// KV gRPC service: no router, no middleware. Routing and the `hasleader` middleware cost about
/// 4 % of a put's server CPU (docs/performance.md, "The client port's direct KV route").
/// Everything else goes through the router: the other gRPC services, the JSON gateway, the
/// HTTP endpoints, and any request that asks for a leader (`hasleader`), whose check is the
/// router's middleware.
#[derive(Clone)]
pub struct ClientService {
    /// tonic's KV server: a KV call `kv_unary.rs` does not frame itself (a compressed
    /// request, an unknown method).
    kv: KvServer<KvService>,
    /// The same service (one instance), for the calls `kv_unary.rs` frames.
    kv_direct: std::sync::Arc<KvService>,
    /// The request message limit tonic's KV server is built with.
    kv_bytes_max: usize,
    router: axum::Router,
    /// The verified client certificate's Common Name on a TLS connection (`serve.rs`).
    certificate_user: Option<CertificateUser>,
}

impl ClientService {
    /// This service for one connection whose client certificate names `user`.
    pub fn with_certificate_user(mut self, user: CertificateUser) -> ClientService {
        self.certificate_user = Some(user);
        self
    }
}

impl<B> tower_service::Service<Request<B>> for ClientService
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin + Send + 'static,
    B::Error: Into<axum::BoxError> + Send + 'static,
{
    type Response = Response<axum::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<axum::body::Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both inner services are always ready (tonic's generated servers and axum's router).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if let Some(user) = &self.certificate_user {
            request.extensions_mut().insert(user.clone());
        }
        let direct = request.uri().path().starts_with(KV_PATH_PREFIX)
            && !request
                .headers()
                .contains_key(crate::require_leader::REQUIRE_LEADER_KEY);
        if direct {
            let mut kv = self.kv.clone();
            // Writes start once their message is in (`unary_body.rs`); a range is answered
            // so fast that the client's end-of-stream would mostly arrive after it, and the
            // task left to read it cost more CPU than the read saved.
            let path = request.uri().path();
            let write = path != KV_RANGE_PATH;
            let method = crate::kv_unary::Method::from_path(path);
            let request = request.map(|body| crate::unary_body::UnaryBody::new(body, write));
            if let Some(method) = method
                && crate::kv_unary::reads_encoding(&request)
            {
                let kv = self.kv_direct.clone();
                let bytes_max = self.kv_bytes_max;
                return Box::pin(async move {
                    Ok(crate::kv_unary::call(&kv, method, request, bytes_max).await)
                });
            }
            Box::pin(async move {
                match kv.call(request).await {
                    Ok(response) => Ok(response.map(axum::body::Body::new)),
                    Err(never) => match never {},
                }
            })
        } else {
            let mut router = self.router.clone();
            Box::pin(async move { router.call(request).await })
        }
    }
}

/// The peer port's router: Aspen's Raft peer service only.
pub fn peer_router(
    node: &Node,
    identity: std::sync::Arc<aspen_raft::PeerIdentity>,
    message_bytes_max: usize,
) -> axum::Router {
    let peer_service = PeerService::new(node.clone(), node.state_machine().clone(), identity);
    let service = RaftPeerServer::new(peer_service)
        .max_decoding_message_size(message_bytes_max)
        .max_encoding_message_size(message_bytes_max);
    tonic::service::Routes::new(service)
        .into_axum_router()
        .fallback(crate::serve::not_found)
        .with_state(())
}

async fn health_status(node: &Node) -> tonic_health::ServingStatus {
    match crate::http::check_health(node).await {
        Ok(()) => tonic_health::ServingStatus::Serving,
        Err(_) => tonic_health::ServingStatus::NotServing,
    }
}

/// Keeps the gRPC health service's overall status (`""`) equal to what `/health` answers.
async fn follow_health(
    node: Node,
    reporter: tonic_health::server::HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    let interval = std::time::Duration::from_millis(GRPC_HEALTH_CHECK_INTERVAL_MS);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let status = health_status(&node).await;
        reporter.set_service_status("", status).await;
    }
}
