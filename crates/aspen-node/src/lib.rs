//! The Aspen node: one Raft member with its storage, and the operations a client needs
//! (writes, linearizable and serializable reads, membership changes), independent of how
//! peers and clients reach it.
//!
//! Peer transport comes in through openraft's `RaftNetworkFactory` and our [`Forwarder`], so
//! the same node runs over gRPC in the server and over a simulated network in tests.

pub mod error;
pub mod forward;
pub mod forward_batch;
pub mod lessor;
pub mod metrics;
pub mod node;
pub mod raft_config;
pub mod read_batch;
pub mod retry;
pub mod snapshot_schedule;

pub use error::NodeError;
pub use forward::{ForwardRequest, ForwardResponse, Forwarder};
pub use lessor::{LeaseTtl, Lessor};
pub use node::{AspenRaft, FatalStop, Member, Node, NodeOptions, TestingOptions};
pub use raft_config::RaftTiming;
pub use retry::Retry;
