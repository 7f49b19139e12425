//! Generated code only: Rust types and tonic gRPC stubs for Aspen's wire protocols.
//!
//! Nothing here is written by hand apart from this module tree. The sources are the
//! `.proto` files under `proto/`, compiled at build time by `protox` (pure Rust, no
//! `protoc` needed) and `tonic-prost-build`:
//!
//! * [`etcdserverpb`], [`mvccpb`], [`authpb`]: the etcd v3 client API (v3.4/v3.5 wire
//!   format, identical gRPC paths such as `/etcdserverpb.KV/Range`).
//! * [`v3lockpb`], [`v3electionpb`]: etcd's server-side Lock and Election services
//!   (`/v3lockpb.Lock/Lock`, `/v3electionpb.Election/Campaign`, ...).
//! * [`peer`] (`aspenpb.peer`): the Raft peer transport between Aspen members.
//!
//! Each proto package becomes a module at the same nesting as its package name so that
//! cross-package references in the generated code (`super::mvccpb::KeyValue`, ...)
//! resolve. Every service `Foo` yields `foo_server::{Foo, FooServer}` (trait + tower
//! service) and `foo_client::FooClient`.

/// etcd `mvccpb`: `KeyValue` and watch `Event`.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd `authpb`: users, roles and permissions.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// etcd `etcdserverpb`: the KV, Watch, Lease, Cluster, Maintenance and Auth services.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd `v3lockpb`: the Lock service (Lock, Unlock).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// etcd `v3electionpb`: the Election service (Campaign, Proclaim, Leader, Observe, Resign).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// Aspen's own proto namespace (`aspenpb.*`).
pub mod aspenpb {
    /// `aspenpb.peer`: the `RaftPeer` service carrying opaque, Rust-encoded Raft messages.
    #[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
    pub mod peer {
        tonic::include_proto!("aspenpb.peer");
    }
}

pub use aspenpb::peer;

/// Every message and service above as an encoded `google.protobuf.FileDescriptorSet`, as
/// compiled from `proto/`: what the JSON gateway reads field names, types and methods from.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));
