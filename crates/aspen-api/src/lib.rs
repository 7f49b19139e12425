//! The etcd v3 gRPC API over an Aspen node: each service validates and translates requests,
//! calls the node, and maps errors to etcd's exact codes and messages (in `status`). The Lock
//! and Election services run etcd's concurrency recipes server-side, as etcd does (`recipe`).
//!
//! Nothing here touches storage directly except through the node and its read handle.

pub mod access;
pub mod auth;
pub mod cluster;
pub mod convert;
pub mod election;
pub mod header;
pub mod jwt;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod recipe;
pub mod status;
pub mod validate;
pub mod watch;

pub use access::{Access, AuthOptions, CertificateUser};
pub use auth::AuthService;
pub use cluster::ClusterService;
pub use election::ElectionService;
pub use kv::KvService;
pub use lease::LeaseService;
pub use lock::LockService;
pub use maintenance::MaintenanceService;
pub use watch::WatchService;
