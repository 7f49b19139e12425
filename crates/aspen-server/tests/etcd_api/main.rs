//! The etcd v3 gRPC API of real `aspen` processes, through the generated etcd client: KV (Range,
//! Put, DeleteRange, Txn, Compact), Cluster and Maintenance, on a one-member and a three-member
//! cluster, checked against etcd's semantics, status codes and messages. On three members every
//! KV write goes through a follower (forwarded to the leader) and every read is a linearizable
//! one on the other follower, right after the write. A raw gRPC client sends malformed protobuf.
//!
//! Each test is one named case on a cluster of its own (`fixture.rs` `Fixture::start`: about a
//! second to start on loopback), so a case depends on no other and any one runs alone
//! (`cargo test -p aspen-server --test etcd_api -- kv::put_three_members`). At most two cases
//! run their processes at once (`fixture::TURNS`), whatever `--test-threads` says.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

#[path = "../common/mod.rs"]
mod common;

mod cluster;
mod fixture;
mod kv;
mod maintenance;
mod raw;
mod txn;
