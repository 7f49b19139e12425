//! The Raft type configuration shared by storage, node and network.

use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::response::ApplyResponse;

/// Node ids are `u64`, derived stably from the member list by the server.
pub type NodeId = u64;

/// What a member advertises: its name and URLs, as etcd's member list shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", self.name, self.peer_urls.join(","))
    }
}

openraft::declare_raft_types!(
    /// Aspen's Raft types: our command and response, u64 ids, and member info.
    pub TypeConfig:
        D = Command,
        R = ApplyResponse,
        NodeId = NodeId,
        Node = NodeInfo,
        AsyncRuntime = crate::runtime::AspenRuntime,
);

/// Shorthands for openraft's generic types, named once.
pub mod alias {
    use super::TypeConfig;
    pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
    pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
    pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
    pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
    pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
    pub type Membership = openraft::Membership<super::NodeId, super::NodeInfo>;
}
