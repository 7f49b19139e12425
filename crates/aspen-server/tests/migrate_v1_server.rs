//! A user upgrades: the `aspen` binary started on a data dir that an older Aspen wrote (storage
//! format 1, the fixture in `aspen-storage/tests/fixtures/v1`) migrates it on start and serves
//! every key, revision and lease it held, takes new writes, and keeps all of it across a
//! restart.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aspen_proto::etcdserverpb::kv_client::KvClient;
use aspen_proto::etcdserverpb::lease_client::LeaseClient;
use aspen_proto::etcdserverpb::{LeaseLeasesRequest, PutRequest, RangeRequest};
use common::{Process, WAIT_MS_MAX, free_port, poll, spawn_aspen};
use tonic::transport::{Channel, Endpoint};

/// The fixture's member: its name and the peer URL its member id was derived from. Advertising
/// the same URL gives the same member id, so the restored membership names this member; it
/// listens elsewhere (a single member never dials itself).
const FIXTURE_NAME: &str = "fix";
const FIXTURE_PEER_URL: &str = "http://127.0.0.1:23800";
const FIXTURE_REVISION: i64 = 21;
const FIXTURE_LEASE_ID: i64 = 0x3385_f500_3ac4_5706;

fn fixture_member_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../aspen-storage/tests/fixtures/v1/member")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn start(data_dir: &Path, client_port: u16, peer_port: u16, log: &Path) -> Process {
    let args: Vec<String> = [
        "--name",
        FIXTURE_NAME,
        "--data-dir",
        &data_dir.to_string_lossy(),
        "--listen-client-urls",
        &format!("http://127.0.0.1:{client_port}"),
        "--listen-peer-urls",
        &format!("http://127.0.0.1:{peer_port}"),
        "--initial-advertise-peer-urls",
        FIXTURE_PEER_URL,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    spawn_aspen(&args, log)
}

async fn channel(client_port: u16) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{client_port}"))
        .expect("endpoint")
        .timeout(Duration::from_millis(WAIT_MS_MAX));
    poll("the migrated member to accept connections", || {
        let endpoint = endpoint.clone();
        async move { endpoint.connect().await.ok() }
    })
    .await
}

async fn value_at(
    kv: &mut KvClient<Channel>,
    key: &str,
    revision: i64,
) -> Option<(String, i64, i64, i64)> {
    let request = RangeRequest {
        key: key.as_bytes().to_vec(),
        revision,
        ..Default::default()
    };
    let response = kv.range(request).await.expect("range").into_inner();
    response.kvs.first().map(|kv| {
        (
            String::from_utf8(kv.value.clone()).expect("utf-8"),
            kv.create_revision,
            kv.mod_revision,
            kv.version,
        )
    })
}

/// What the fixture holds, read through the gRPC API (see the fixture's README).
async fn check_fixture(kv: &mut KvClient<Channel>) {
    // The first linearizable read waits for the member to lead again after its restart.
    let key1 = poll("a linearizable read on the migrated member", || {
        let mut kv = kv.clone();
        async move {
            let request = RangeRequest {
                key: b"key1".to_vec(),
                ..Default::default()
            };
            kv.range(request).await.ok().map(|r| r.into_inner())
        }
    })
    .await;
    assert!(
        key1.header.as_ref().expect("header").revision >= FIXTURE_REVISION,
        "{key1:?}"
    );
    assert_eq!(value_at(kv, "key1", 0).await, Some(("x3".into(), 2, 21, 5)));
    assert_eq!(value_at(kv, "key1", 6).await, Some(("v1".into(), 2, 2, 1)));
    assert_eq!(value_at(kv, "key3", 0).await, Some(("w3".into(), 4, 14, 2)));
    assert_eq!(
        value_at(kv, "key9", 0).await,
        Some(("v9".into(), 10, 10, 1))
    );
    assert_eq!(
        value_at(kv, "key10", 16).await,
        Some(("v10".into(), 11, 11, 1))
    );
    assert_eq!(value_at(kv, "key10", 0).await, None);
    let leased = kv
        .range(RangeRequest {
            key: b"leased".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(leased.kvs[0].lease, FIXTURE_LEASE_ID);
}

#[tokio::test]
async fn a_format_1_data_dir_is_migrated_and_served() {
    let temp = tempfile::tempdir().expect("temp dir");
    let data_dir = temp.path().join("data");
    let member_dir = data_dir.join("member");
    copy_dir(&fixture_member_dir(), &member_dir);
    let client_port = free_port();
    let peer_port = free_port();

    let mut server = start(
        &data_dir,
        client_port,
        peer_port,
        &temp.path().join("1.log"),
    );
    let channel = channel(client_port).await;
    let mut client = KvClient::new(channel.clone());
    check_fixture(&mut client).await;
    assert!(
        server.log().contains("storage migrated from format 1"),
        "{}",
        server.log()
    );
    assert!(member_dir.join("log.redb").is_file());
    assert!(member_dir.join("state.redb").is_file());
    assert!(!member_dir.join("aspen.redb").exists());
    let leases = LeaseClient::new(channel)
        .lease_leases(LeaseLeasesRequest {})
        .await
        .expect("lease list")
        .into_inner();
    assert_eq!(
        leases.leases.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![FIXTURE_LEASE_ID]
    );
    let put = client
        .put(PutRequest {
            key: b"after-migration".to_vec(),
            value: b"yes".to_vec(),
            ..Default::default()
        })
        .await
        .expect("put after migration")
        .into_inner();
    let put_revision = put.header.expect("header").revision;
    assert!(put_revision > FIXTURE_REVISION);

    // A clean restart opens format 2 directly and loses nothing.
    server.sigterm();
    let status = server
        .wait_exit(WAIT_MS_MAX)
        .await
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}: {}", server.log());
    let server = start(
        &data_dir,
        client_port,
        peer_port,
        &temp.path().join("2.log"),
    );
    let mut client = KvClient::new(self::channel(client_port).await);
    check_fixture(&mut client).await;
    assert_eq!(
        value_at(&mut client, "after-migration", 0).await,
        Some(("yes".into(), put_revision, put_revision, 1))
    );
    assert!(!server.log().contains("migrating"), "{}", server.log());
}
