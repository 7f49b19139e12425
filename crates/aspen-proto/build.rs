//! Compiles `proto/` into Rust at build time without a `protoc` binary:
//! `protox` (a pure-Rust protobuf compiler) parses the files into a
//! `FileDescriptorSet`, which `tonic-prost-build` turns into prost messages
//! plus tonic client and server stubs in `OUT_DIR` (one file per package), and keeps the
//! encoded descriptor set beside them (`FILE_DESCRIPTOR_SET`).

use std::path::PathBuf;

const PROTO_ROOT: &str = "proto";

const PROTOS: &[&str] = &[
    "etcd/mvccpb/kv.proto",
    "etcd/authpb/auth.proto",
    "etcd/etcdserverpb/rpc.proto",
    "etcd/v3lockpb/v3lock.proto",
    "etcd/v3electionpb/v3election.proto",
    "aspen/aspen_peer.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={PROTO_ROOT}/{proto}");
    }

    let files: Vec<PathBuf> = PROTOS
        .iter()
        .map(|p| PathBuf::from(PROTO_ROOT).join(p))
        .collect();
    let fds = protox::compile(&files, [PROTO_ROOT])?;
    // The descriptors themselves, for the JSON gateway (field names, types, methods).
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("file_descriptor_set.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(true)
        .compile_fds(fds)?;
    Ok(())
}
