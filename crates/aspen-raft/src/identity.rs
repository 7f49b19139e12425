//! Who sends and who receives a peer message, carried in gRPC metadata, so a member refuses
//! messages from another cluster, from members it does not know, and meant for another
//! member (a peer URL that now points at the wrong process). This is etcd's
//! `X-Etcd-Cluster-ID` / `X-Server-From` check, and it holds with or without TLS.

use std::sync::atomic::{AtomicU64, Ordering};

use aspen_core::NodeId;
use tonic::Status;
use tonic::metadata::MetadataMap;

pub const HEADER_FROM: &str = "aspen-from";
pub const HEADER_TO: &str = "aspen-to";
pub const HEADER_CLUSTER_ID: &str = "aspen-cluster-id";

/// This member's id and, once known, its cluster's id (0 = not known yet: a member that
/// joins an existing cluster learns it from the leader, and until then neither sends nor
/// checks it).
#[derive(Debug)]
pub struct PeerIdentity {
    member_id: NodeId,
    cluster_id: AtomicU64,
}

impl PeerIdentity {
    pub fn new(member_id: NodeId) -> PeerIdentity {
        PeerIdentity {
            member_id,
            cluster_id: AtomicU64::new(0),
        }
    }

    pub fn member_id(&self) -> NodeId {
        self.member_id
    }

    pub fn set_cluster_id(&self, cluster_id: u64) {
        self.cluster_id.store(cluster_id, Ordering::Relaxed);
    }

    pub fn cluster_id(&self) -> Option<u64> {
        Some(self.cluster_id.load(Ordering::Relaxed)).filter(|id| *id != 0)
    }

    /// Stamps an outgoing message for `target`.
    pub fn stamp(&self, metadata: &mut MetadataMap, target: NodeId) {
        let hex = |id: u64| match format!("{id:x}").parse() {
            Ok(value) => value,
            Err(_) => unreachable!("hex digits are valid ASCII metadata"),
        };
        metadata.insert(HEADER_FROM, hex(self.member_id));
        metadata.insert(HEADER_TO, hex(target));
        if let Some(cluster_id) = self.cluster_id() {
            metadata.insert(HEADER_CLUSTER_ID, hex(cluster_id));
        }
    }

    /// Checks an incoming message's stamps, the cluster first (the most telling reason); `is_member` says whether an id is in this
    /// member's current membership (`None`: this member knows no membership yet). Returns
    /// the sender's id.
    pub fn check(
        &self,
        metadata: &MetadataMap,
        is_member: impl Fn(NodeId) -> Option<bool>,
    ) -> Result<NodeId, Status> {
        let from = read_id(metadata, HEADER_FROM)?.ok_or_else(|| {
            Status::invalid_argument("peer message without its sender's member id")
        })?;
        let to = read_id(metadata, HEADER_TO)?
            .ok_or_else(|| Status::invalid_argument("peer message without its target member id"))?;
        if let (Some(ours), Some(theirs)) =
            (self.cluster_id(), read_id(metadata, HEADER_CLUSTER_ID)?)
            && ours != theirs
        {
            return Err(Status::failed_precondition(format!(
                "cluster ID mismatch: member {from:x} is in cluster {theirs:x}, this member in \
                 cluster {ours:x}"
            )));
        }
        if to != self.member_id {
            return Err(Status::failed_precondition(format!(
                "peer message for member {to:x} reached member {:x}",
                self.member_id
            )));
        }
        if is_member(from) == Some(false) {
            let cluster = self
                .cluster_id()
                .map_or("?".to_string(), |id| format!("{id:x}"));
            return Err(Status::failed_precondition(format!(
                "member {from:x} is not a member of cluster {cluster}"
            )));
        }
        Ok(from)
    }
}

fn read_id(metadata: &MetadataMap, key: &str) -> Result<Option<u64>, Status> {
    let Some(value) = metadata.get(key) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| u64::from_str_radix(text, 16).ok())
        .map(Some)
        .ok_or_else(|| Status::invalid_argument(format!("peer message with a malformed {key}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamped(sender: &PeerIdentity, target: NodeId) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        sender.stamp(&mut metadata, target);
        metadata
    }

    #[test]
    fn refuses_strangers_and_misdirected_messages() {
        let a = PeerIdentity::new(0xa);
        let b = PeerIdentity::new(0xb);
        a.set_cluster_id(0xc1);
        b.set_cluster_id(0xc1);
        let known = |id: NodeId| Some(id == 0xa || id == 0xb);
        assert_eq!(b.check(&stamped(&a, 0xb), known).expect("accepted"), 0xa);

        let wrong_target = b.check(&stamped(&a, 0xd), known).expect_err("misdirected");
        assert_eq!(
            wrong_target.message(),
            "peer message for member d reached member b"
        );

        let other = PeerIdentity::new(0xa);
        other.set_cluster_id(0xc2);
        let error = b
            .check(&stamped(&other, 0xb), known)
            .expect_err("other cluster");
        assert!(
            error.message().starts_with("cluster ID mismatch"),
            "{}",
            error.message()
        );

        let stranger = PeerIdentity::new(0xe);
        stranger.set_cluster_id(0xc1);
        let error = b
            .check(&stamped(&stranger, 0xb), known)
            .expect_err("stranger");
        assert_eq!(error.message(), "member e is not a member of cluster c1");

        let error = b.check(&MetadataMap::new(), known).expect_err("unstamped");
        assert_eq!(error.code(), tonic::Code::InvalidArgument);

        // A joining member knows neither the cluster id nor the members yet: it accepts the
        // leader's messages, and the leader accepts its unstamped cluster id.
        let joiner = PeerIdentity::new(0xf);
        assert_eq!(
            joiner.check(&stamped(&a, 0xf), |_| None).expect("joiner"),
            0xa
        );
        let to_leader = stamped(&joiner, 0xa);
        assert!(to_leader.get(HEADER_CLUSTER_ID).is_none());
        let known_with_joiner = |id: NodeId| Some(id == 0xb || id == 0xf);
        assert_eq!(a.check(&to_leader, known_with_joiner).expect("leader"), 0xf);
    }
}
