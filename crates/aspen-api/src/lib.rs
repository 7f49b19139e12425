//! The etcd v3 gRPC API over an Aspen node: each service validates and translates requests,
//! calls the node, and maps errors to etcd's exact codes and messages (in `status`).
//!
//! Nothing here touches storage directly except through the node and its read handle.

pub mod convert;
pub mod header;
pub mod kv;
pub mod status;
pub mod validate;

pub use kv::KvService;
