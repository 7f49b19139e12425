//! etcd's Cluster service: MemberList, MemberAdd, MemberRemove, MemberUpdate, MemberPromote,
//! over Raft membership changes made by the leader.

use aspen_core::{NodeId, NodeInfo};
use aspen_node::{ForwardRequest, Member, Node, NodeError};
use aspen_proto::etcdserverpb::{self as pb, cluster_server::Cluster};
use tonic::{Request, Response, Status};

use crate::access::Access;
use crate::header::header;
use crate::status::{self, from_node, invalid};

/// Peer URLs one member may list; etcd has no limit, but a request must be bounded.
pub const MEMBER_PEER_URLS_MAX: usize = 16;
/// Longest URL accepted, in bytes.
pub const MEMBER_URL_BYTES_MAX: usize = 1024;

#[derive(Clone)]
pub struct ClusterService {
    node: Node,
    access: Access,
}

impl ClusterService {
    pub fn new(node: Node, access: Access) -> ClusterService {
        ClusterService { node, access }
    }

    /// Member changes are administration: root only while auth is enabled (etcd 3.4 checks
    /// none; listing stays open, as there).
    fn check_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.access.caller(request)?.check_admin()
    }

    /// The header etcd's cluster server sends: cluster id, member id and Raft term, but no
    /// revision (etcd's `ClusterServer.header()` leaves it 0, so clients see none).
    fn header(&self) -> Result<Option<pb::ResponseHeader>, Status> {
        Ok(header(&self.node, 0))
    }

    /// The members after a change: waits until this node has applied what the leader had, so
    /// a follower that forwarded the change lists it too. The change is done either way; if
    /// the barrier fails, the local view is the best answer left.
    async fn members_after_change(&self) -> Vec<pb::Member> {
        // The leader proposed the change, so its own membership already shows it (and a
        // one-member cluster that just added a voter has no quorum for a barrier until the new
        // member starts).
        if self.node.is_leader() {
            return member_list(&self.node.members());
        }
        if let Err(error) = self.node.read_barrier().await {
            tracing::debug!(%error, "member list after a change may lag");
        }
        member_list(&self.node.members())
    }
}

/// A header carrying the store's current revision, for responses that wrote nothing.
pub(crate) fn current_header(node: &Node) -> Result<Option<pb::ResponseHeader>, Status> {
    let state = node.applied_state().map_err(from_node)?;
    Ok(header(node, state.revision))
}

pub fn member_pb(member: &Member) -> pb::Member {
    pb::Member {
        id: member.id,
        name: member.info.name.clone(),
        peer_ur_ls: member.info.peer_urls.clone(),
        client_ur_ls: member.info.client_urls.clone(),
        is_learner: member.is_learner,
    }
}

pub fn member_list(members: &[Member]) -> Vec<pb::Member> {
    members.iter().map(member_pb).collect()
}

/// One URL as etcd's `types.NewURLs` accepts it: `http` or `https`, `host:port`, no user, path,
/// query or fragment. IPv6 hosts are bracketed.
pub fn url_is_valid(url: &str) -> bool {
    if url.len() > MEMBER_URL_BYTES_MAX {
        return false;
    }
    let Some(authority) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    if authority.contains(['/', '?', '#', '@']) {
        return false;
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return false;
        };
        let Some(port) = after.strip_prefix(':') else {
            return false;
        };
        if !host.contains(':')
            || !host
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return false;
        }
        (host, port)
    } else {
        let Some((host, port)) = authority.rsplit_once(':') else {
            return false;
        };
        let host_ok = host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !host_ok {
            return false;
        }
        (host, port)
    };
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.chars().all(|c| c.is_ascii_digit())
        && port.parse::<u16>().is_ok();
    !host.is_empty() && port_ok
}

/// Checks peer URLs and returns them sorted, as etcd stores them.
pub fn peer_urls(urls: &[String]) -> Result<Vec<String>, Status> {
    if urls.is_empty() || urls.len() > MEMBER_PEER_URLS_MAX {
        return Err(invalid(status::MEMBER_BAD_URLS));
    }
    if !urls.iter().all(|u| url_is_valid(u)) {
        return Err(invalid(status::MEMBER_BAD_URLS));
    }
    let mut sorted = urls.to_vec();
    sorted.sort();
    Ok(sorted)
}

fn find_member(members: &[Member], id: NodeId) -> Result<&Member, Status> {
    members
        .iter()
        .find(|m| m.id == id)
        .ok_or_else(|| from_node(NodeError::MemberNotFound))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        self.check_admin(&request)?;
        let request = request.into_inner();
        let urls = peer_urls(&request.peer_ur_ls)?;
        // The id the new member's process derives from its own flags (peer URLs and cluster
        // token), so the member started with --initial-cluster-state existing runs under the
        // id added here. A clash with a current member is refused as "Peer URLs already exists".
        let id = self.node.member_id_for(&urls);
        let info = NodeInfo {
            name: String::new(),
            peer_urls: urls,
            client_urls: Vec::new(),
        };
        let added = Member {
            id,
            info: info.clone(),
            is_learner: request.is_learner,
        };
        self.node
            .change_membership(ForwardRequest::AddMember {
                id,
                info,
                learner: request.is_learner,
            })
            .await
            .map_err(from_node)?;
        let members = self.members_after_change().await;
        Ok(Response::new(pb::MemberAddResponse {
            header: self.header()?,
            member: Some(member_pb(&added)),
            members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        self.check_admin(&request)?;
        let id = request.into_inner().id;
        self.node
            .change_membership(ForwardRequest::RemoveMember { id })
            .await
            .map_err(from_node)?;
        let members = self.members_after_change().await;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: self.header()?,
            members,
        }))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        self.check_admin(&request)?;
        let request = request.into_inner();
        let urls = peer_urls(&request.peer_ur_ls)?;
        let members = self.node.members();
        let current = find_member(&members, request.id)?;
        let clash = members
            .iter()
            .any(|m| m.id != request.id && m.info.peer_urls.iter().any(|u| urls.contains(u)));
        if clash {
            return Err(from_node(NodeError::PeerUrlExists));
        }
        // Only the peer URLs change; name and client URLs are the member's own to publish.
        let info = NodeInfo {
            name: current.info.name.clone(),
            peer_urls: urls,
            client_urls: current.info.client_urls.clone(),
        };
        self.node
            .change_membership(ForwardRequest::UpdateMember {
                id: request.id,
                info,
            })
            .await
            .map_err(from_node)?;
        let members = self.members_after_change().await;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: self.header()?,
            members,
        }))
    }

    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.node.read_barrier().await.map_err(from_node)?;
        }
        Ok(Response::new(pb::MemberListResponse {
            header: self.header()?,
            members: member_list(&self.node.members()),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        self.check_admin(&request)?;
        let id = request.into_inner().id;
        self.node
            .change_membership(ForwardRequest::PromoteMember { id })
            .await
            .map_err(from_node)?;
        let members = self.members_after_change().await;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: self.header()?,
            members,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn valid_urls_are_accepted() {
        for url in [
            "http://127.0.0.1:2380",
            "https://node-1.example.com:2380",
            "http://localhost:1",
            "http://[::1]:2380",
            "http://[fe80::1]:65535",
        ] {
            assert!(url_is_valid(url), "{url}");
        }
    }

    #[test]
    fn invalid_urls_are_refused() {
        for url in [
            "",
            "127.0.0.1:2380",
            "ftp://127.0.0.1:2380",
            "http://127.0.0.1",
            "http://127.0.0.1:",
            "http://:2380",
            "http://127.0.0.1:2380/",
            "http://127.0.0.1:2380/path",
            "http://127.0.0.1:65536",
            "http://127.0.0.1:abc",
            "http://user@127.0.0.1:2380",
            "http://127.0.0.1:2380?x=1",
            "http://::1:2380",
            "http://[::1]2380",
            "http://[]:2380",
            "http://a b:2380",
        ] {
            assert!(!url_is_valid(url), "{url}");
        }
    }

    #[test]
    fn peer_urls_are_sorted_and_checked() {
        let sorted = peer_urls(&urls(&["http://b:2", "http://a:1"])).expect("valid");
        assert_eq!(sorted, urls(&["http://a:1", "http://b:2"]));
        for bad in [urls(&[]), urls(&["http://a:1", "nope"])] {
            let status = peer_urls(&bad).expect_err("invalid");
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert_eq!(status.message(), status::MEMBER_BAD_URLS);
        }
        let too_many: Vec<String> = (0..=MEMBER_PEER_URLS_MAX)
            .map(|i| format!("http://h:{}", 1000 + i))
            .collect();
        assert!(peer_urls(&too_many).is_err());
    }

    #[test]
    fn members_map_to_etcd_members() {
        let member = Member {
            id: 7,
            info: NodeInfo {
                name: String::new(),
                peer_urls: urls(&["http://a:1"]),
                client_urls: Vec::new(),
            },
            is_learner: true,
        };
        let pb = member_pb(&member);
        assert_eq!(pb.id, 7);
        assert!(pb.name.is_empty());
        assert_eq!(pb.peer_ur_ls, urls(&["http://a:1"]));
        assert!(pb.client_ur_ls.is_empty());
        assert!(pb.is_learner);
    }
}
