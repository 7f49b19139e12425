//! The `aspen` server: start-up configuration, bootstrapping a member, the client port's router
//! (gRPC and plain HTTP), the peer and metrics routers, and serving listeners (`serve.rs`). The binary in `main.rs` only parses and runs.

pub mod auth_token;
pub mod auto_compaction;
pub mod bootstrap;
mod coalesce;
pub mod config;
pub mod gateway;
pub mod http;
mod kv_unary;
pub mod require_leader;
pub mod restore;
pub mod serve;
pub mod services;
pub mod tls;
mod unary_body;

pub use bootstrap::{NodeHandle, bootstrap_node};
