//! Embedding an Aspen member in a Rust program: start it in-process, then write and read
//! through the `Node` handle, without gRPC.
//!
//! ```sh
//! cargo run -p aspen-server --example embedded
//! ```
//!
//! The member still serves the etcd API on its client listener (here an ephemeral port), so
//! `etcdctl` could talk to it at the same time.

use std::collections::HashMap;

use aspen_core::{ApplyResponse, Command, CommandResult, PutRequest, RangeRequest};
use aspen_server::config::ClusterBootstrapConfig;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data_dir = std::env::temp_dir().join(format!("aspen-embedded-{}", std::process::id()));
    let args: Vec<String> = [
        "aspen",
        "--name",
        "embedded",
        "--data-dir",
        data_dir.to_str().ok_or("temp dir is not UTF-8")?,
        "--listen-client-urls",
        "http://127.0.0.1:0",
        "--advertise-client-urls",
        "http://127.0.0.1:2379",
        "--listen-peer-urls",
        "http://127.0.0.1:0",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-cluster",
        "embedded=http://127.0.0.1:2380",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let config = ClusterBootstrapConfig::from_sources(&args, &HashMap::new())?;
    let handle = aspen_server::bootstrap_node(&config).await?;
    let node = handle.node.clone();

    // A write goes through Raft (forwarded to the leader if this member were a follower).
    let put = PutRequest {
        key: b"greeting".to_vec(),
        value: b"hello".to_vec(),
        ..Default::default()
    };
    let ApplyResponse { revision, result } = node.write(Command::Put(put)).await?;
    assert!(matches!(result, Ok(CommandResult::Put { .. })));
    println!("put greeting at revision {revision}");

    // A linearizable read (ReadIndex), as etcd's default Range.
    let request = RangeRequest {
        key: b"greeting".to_vec(),
        ..Default::default()
    };
    let (found, read_revision) = node.range(&request).await?;
    let value = found
        .kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
    println!("greeting = {value:?} (read at revision {read_revision})");

    handle.shutdown().await;
    std::fs::remove_dir_all(&data_dir)?;
    Ok(())
}
