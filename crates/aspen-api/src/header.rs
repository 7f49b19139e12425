//! Response headers, filled as etcd fills them.

use aspen_core::convert::wire_i64;
use aspen_node::Node;
use aspen_proto::etcdserverpb::ResponseHeader;

/// A header for a response that saw store revision `revision`.
pub fn header(node: &Node, revision: u64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        cluster_id: node.cluster_id(),
        member_id: node.id(),
        revision: wire_i64(revision),
        raft_term: node.current_term(),
    })
}
