//! The Raft peer transport over gRPC (tonic): the client side that openraft drives
//! ([`network::PeerNetworkFactory`]), the server side that feeds incoming RPCs to the local
//! Raft ([`service::PeerService`]), and forwarding of client requests to the leader.
//!
//! Payloads are Aspen's versioned codec inside an opaque protobuf envelope
//! (`aspen_peer.proto`), so the Raft types never leak into the wire schema.

mod forward_stream;
pub mod identity;
pub mod network;
pub mod service;
pub mod split;
pub mod wire;

pub use identity::PeerIdentity;
pub use network::{PeerClients, PeerNetworkFactory};
pub use service::PeerService;
