//! Moving between etcd 3.4 and Aspen through etcd's snapshot file (a bbolt database), with real
//! processes on both sides:
//! - etcd -> Aspen: a snapshot saved by `etcdctl snapshot save` from an etcd with history,
//!   deletes, a multi-op txn, a compaction, leases, large values and many keys, restored with
//!   `aspen snapshot restore` on each member of a 3-member cluster: Aspen serves the same keys,
//!   values, revisions, versions, leases and history back to the compaction point, and its
//!   members' HashKV agree.
//! - Aspen -> etcd: `etcdctl snapshot save` from that Aspen, `etcdctl snapshot status`,
//!   `etcdctl snapshot restore`, a real etcd started on it: the same again, and etcd's own
//!   HashKV equals the original etcd's.
//! - Auth: an etcd with users (bcrypt passwords, one without a password), roles with read,
//!   write and readwrite permissions on a key, a range and a prefix, and auth enabled: saved,
//!   restored into Aspen, saved from Aspen, restored into etcd. At each step `etcdctl --user`
//!   is allowed and denied exactly as on the source etcd, `role get`/`user get` print the same,
//!   and the enabled flag and auth revision carry over.
//! - Bad input: truncated, damaged, foreign files and a non-empty data dir are refused, and
//!   nothing is left in the data dir.
//!
//! The real-etcd test needs /usr/bin/etcd and etcdctl (3.4). Without them it is skipped with a
//! loud message, unless `ASPEN_REQUIRE_ETCD=1` (set by `.ci/run`), which makes it fail.
//! `ASPEN_ETCD_SNAPSHOT_KEYS` sets the number of bulk keys (default 20,000).

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aspen_proto::etcdserverpb::auth_client::AuthClient;
use aspen_proto::etcdserverpb::kv_client::KvClient;
use aspen_proto::etcdserverpb::lease_client::LeaseClient;
use aspen_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use aspen_proto::etcdserverpb::{
    AuthStatusRequest, AuthenticateRequest, CompactionRequest, DeleteRangeRequest, HashKvRequest,
    LeaseGrantRequest, LeaseLeasesRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest,
    RequestOp, SnapshotRequest, TxnRequest, request_op,
};
use aspen_proto::mvccpb::KeyValue;
use common::{Backend, Cluster, free_port, poll};
use tonic::transport::{Channel, Endpoint};

const KEYS_DEFAULT: u64 = 20_000;
/// Puts per bulk txn: below etcd's default --max-txn-ops (128).
const TXN_PUTS: u64 = 100;
/// Keys per page when reading a whole keyspace.
const RANGE_PAGE_KEYS: i64 = 1_000;
/// Every this many bulk keys, a value large enough to need bbolt overflow pages.
const LARGE_VALUE_EVERY_KEYS: u64 = 1_000;
const LARGE_VALUE_BYTES: usize = 10_000;
const LEASE_TTL_SECONDS: i64 = 3_600;
const ETCD_BIN: &str = "/usr/bin/etcd";
const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";

fn bulk_keys() -> u64 {
    std::env::var("ASPEN_ETCD_SNAPSHOT_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(KEYS_DEFAULT)
}

/// Whether etcd 3.4 is here; says so loudly when it is not (and fails under
/// `ASPEN_REQUIRE_ETCD=1`).
fn etcd_installed(test: &str) -> bool {
    let installed = Path::new(ETCD_BIN).is_file() && Path::new(ETCDCTL_BIN).is_file();
    if !installed {
        assert!(
            std::env::var("ASPEN_REQUIRE_ETCD").as_deref() != Ok("1"),
            "{test}: ASPEN_REQUIRE_ETCD=1 but {ETCD_BIN} or {ETCDCTL_BIN} is missing"
        );
        // Straight to the process's stderr: libtest captures `eprintln!` of passing tests,
        // and a skip must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "\n######## SKIPPED {test}: {ETCD_BIN} and {ETCDCTL_BIN} (etcd 3.4) are not \
             installed; this test did NOT run. .ci/run installs them and runs it. ########\n"
        );
    }
    installed
}

fn channel(port: u16) -> Channel {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("url")
        .connect_timeout(Duration::from_millis(1_000))
        .timeout(Duration::from_millis(20_000))
        .connect_lazy()
}

/// A real etcd member on loopback, killed when dropped.
struct Etcd {
    child: Child,
    client_port: u16,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Etcd {
    /// Starts etcd on `data_dir` (new, or made by `etcdctl snapshot restore` with the same
    /// name and peer URL) and waits until it serves.
    async fn start(name: &str, data_dir: &Path, peer_port: u16, log_path: &Path) -> Etcd {
        let client_port = free_port();
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(log_path).expect("etcd log");
        let child = Command::new(ETCD_BIN)
            .args(["--name", name, "--data-dir"])
            .arg(data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("{name}={peer_url}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        let etcd = Etcd { child, client_port };
        let kv = etcd.kv();
        poll(&format!("etcd {name} to serve"), || {
            let mut kv = kv.clone();
            // Count only: the whole keyspace of a large store would pass the client's 4 MiB
            // message limit, and the probe would never succeed.
            let probe = RangeRequest {
                count_only: true,
                ..range_all(0)
            };
            async move {
                match kv.range(probe).await {
                    Ok(_) => Some(()),
                    // Auth enabled: serving, but not to an anonymous client.
                    Err(status) if status.message().contains("user name is empty") => Some(()),
                    Err(_) => None,
                }
            }
        })
        .await;
        etcd
    }

    fn kv(&self) -> KvClient<Channel> {
        KvClient::new(channel(self.client_port))
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
}

fn etcdctl(args: &[&str]) -> String {
    let output = Command::new(ETCDCTL_BIN)
        .env("ETCDCTL_API", "3")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl");
    assert!(
        output.status.success(),
        "etcdctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn aspen_restore(file: &Path, flags: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_aspen"))
        .args(["snapshot", "restore"])
        .arg(file)
        .args(flags)
        .stdin(Stdio::null())
        .output()
        .expect("run aspen snapshot restore")
}

fn range_all(revision: i64) -> RangeRequest {
    RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        ..Default::default()
    }
}

fn put(key: &str, value: Vec<u8>, lease: i64) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec(),
        value,
        lease,
        ..Default::default()
    }
}

fn put_op(request: PutRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(request)),
    }
}

/// What the workload left for the comparisons to look at.
struct Written {
    compact_revision: i64,
    /// Revisions up to which every revision is compared (the edits before the bulk keys).
    edits_until_revision: i64,
    final_revision: i64,
}

/// History, deletes, a multi-op txn, leases, a compaction, then edits after it, large values
/// and `bulk` keys.
async fn write_workload(port: u16, bulk: u64) -> Written {
    let mut kv = KvClient::new(channel(port));
    let mut leases = LeaseClient::new(channel(port));
    let mut lease_ids = Vec::new();
    for _ in 0..3 {
        let granted = leases
            .lease_grant(LeaseGrantRequest {
                ttl: LEASE_TTL_SECONDS,
                id: 0,
            })
            .await
            .expect("lease grant")
            .into_inner();
        lease_ids.push(granted.id);
    }
    for round in 0..6 {
        for key in 0..5 {
            let value = format!("hist-{key}-round-{round}").into_bytes();
            kv.put(put(&format!("hist/{key}"), value, 0))
                .await
                .expect("put");
        }
    }
    for key in 0..10 {
        kv.put(put(&format!("del/{key}"), b"doomed".to_vec(), 0))
            .await
            .expect("put");
    }
    kv.delete_range(DeleteRangeRequest {
        key: b"del/0".to_vec(),
        ..Default::default()
    })
    .await
    .expect("delete one");
    for key in 0..8 {
        kv.put(put(
            &format!("leased/{key}"),
            b"v".to_vec(),
            lease_ids[key % 2],
        ))
        .await
        .expect("put leased");
    }
    let before_compaction = kv
        .put(put("hist/0", b"last before compaction".to_vec(), 0))
        .await
        .expect("put")
        .into_inner();
    let compact_revision = before_compaction.header.expect("header").revision;
    kv.compact(CompactionRequest {
        revision: compact_revision,
        physical: true,
    })
    .await
    .expect("compact");
    // After the compaction: a range delete, a txn of several changes in one revision
    // (sub-revisions), a re-put that moves a key to another lease and one that drops its lease.
    kv.delete_range(DeleteRangeRequest {
        key: b"del/5".to_vec(),
        range_end: b"del/8".to_vec(),
        ..Default::default()
    })
    .await
    .expect("delete range");
    let txn = TxnRequest {
        success: vec![
            put_op(put("txn/a", b"1".to_vec(), 0)),
            put_op(put("txn/b", b"2".to_vec(), lease_ids[2])),
            RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: b"hist/1".to_vec(),
                        ..Default::default()
                    },
                )),
            },
        ],
        ..Default::default()
    };
    kv.txn(txn).await.expect("txn");
    kv.put(put("leased/0", b"moved".to_vec(), lease_ids[2]))
        .await
        .expect("put");
    let edits = kv
        .put(put("leased/1", b"free".to_vec(), 0))
        .await
        .expect("put")
        .into_inner();
    let edits_until_revision = edits.header.expect("header").revision;
    let mut final_revision = edits_until_revision;
    let mut next = 0;
    while next < bulk {
        let end = (next + TXN_PUTS).min(bulk);
        let success = (next..end)
            .map(|i| {
                let size = if i % LARGE_VALUE_EVERY_KEYS == 0 {
                    LARGE_VALUE_BYTES
                } else {
                    20 + (i % 50) as usize
                };
                let value: Vec<u8> = (0..size).map(|b| (b as u64 + i).to_le_bytes()[0]).collect();
                put_op(put(&format!("bulk/{i:08}"), value, 0))
            })
            .collect();
        let reply = kv
            .txn(TxnRequest {
                success,
                ..Default::default()
            })
            .await
            .expect("bulk txn")
            .into_inner();
        final_revision = reply.header.expect("header").revision;
        next = end;
    }
    Written {
        compact_revision,
        edits_until_revision,
        final_revision,
    }
}

/// Every key at `revision` (0: current), page by page (later pages at the first page's
/// revision); and that revision.
async fn keyspace(kv: &KvClient<Channel>, revision: i64) -> (i64, Vec<KeyValue>) {
    let mut kv = kv.clone();
    let mut all = Vec::new();
    let mut from = vec![0u8];
    let mut at_revision = revision;
    loop {
        let reply = kv
            .range(RangeRequest {
                key: from.clone(),
                range_end: vec![0],
                revision: at_revision,
                limit: RANGE_PAGE_KEYS,
                ..Default::default()
            })
            .await
            .expect("range")
            .into_inner();
        if at_revision == 0 {
            at_revision = reply.header.expect("header").revision;
        }
        if let Some(last) = reply.kvs.last() {
            from = last.key.clone();
            from.push(0);
        }
        all.extend(reply.kvs);
        if !reply.more {
            return (at_revision, all);
        }
    }
}

/// Leases with their granted TTL and attached keys (sorted).
async fn leases(port: u16) -> Vec<(i64, i64, Vec<Vec<u8>>)> {
    let mut client = LeaseClient::new(channel(port));
    let listed = client
        .lease_leases(LeaseLeasesRequest {})
        .await
        .expect("lease leases")
        .into_inner();
    let mut out = Vec::new();
    for lease in listed.leases {
        let ttl = client
            .lease_time_to_live(LeaseTimeToLiveRequest {
                id: lease.id,
                keys: true,
            })
            .await
            .expect("time to live")
            .into_inner();
        let mut keys = ttl.keys;
        keys.sort();
        out.push((lease.id, ttl.granted_ttl, keys));
    }
    out.sort();
    out
}

/// `b` serves what `a` serves: the current keyspace and revision, every revision from the
/// compaction point through the edits, sampled revisions of the bulk load, the compaction
/// point itself (reads below it fail on both), leases and their keys.
async fn assert_same_store(a: u16, b: u16, written: &Written, what: &str) {
    let (kv_a, kv_b) = (KvClient::new(channel(a)), KvClient::new(channel(b)));
    let (rev_a, now_a) = keyspace(&kv_a, 0).await;
    let (rev_b, now_b) = keyspace(&kv_b, 0).await;
    assert_eq!(rev_a, written.final_revision, "{what}: source revision");
    assert_eq!(rev_b, rev_a, "{what}: store revision");
    assert_eq!(now_a.len(), now_b.len(), "{what}: key count");
    for (x, y) in now_a.iter().zip(&now_b) {
        assert_eq!(x, y, "{what}: key {}", String::from_utf8_lossy(&x.key));
    }
    let mut revisions: Vec<i64> =
        (written.compact_revision..=written.edits_until_revision).collect();
    let step = ((written.final_revision - written.edits_until_revision) / 7).max(1);
    revisions.extend(
        (written.edits_until_revision..=written.final_revision)
            .step_by(usize::try_from(step).expect("a positive step")),
    );
    for revision in revisions {
        let (_, at_a) = keyspace(&kv_a, revision).await;
        let (_, at_b) = keyspace(&kv_b, revision).await;
        assert!(
            at_a == at_b,
            "{what}: keyspace at revision {revision} differs"
        );
    }
    for (port, side) in [(a, "source"), (b, "restored")] {
        let below = KvClient::new(channel(port))
            .range(range_all(written.compact_revision - 1))
            .await
            .expect_err("a read below the compaction point");
        assert_eq!(
            below.message(),
            "etcdserver: mvcc: required revision has been compacted",
            "{what}: {side}"
        );
    }
    let (leases_a, leases_b) = (leases(a).await, leases(b).await);
    assert_eq!(leases_a.len(), 3, "{what}: the workload's leases");
    assert_eq!(leases_a, leases_b, "{what}: leases and their keys");
}

async fn hash_kv(port: u16, revision: i64) -> u32 {
    MaintenanceClient::new(channel(port))
        .hash_kv(HashKvRequest { revision })
        .await
        .expect("hash kv")
        .into_inner()
        .hash
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_to_aspen_and_back_through_snapshot_files() {
    if !etcd_installed("etcd_to_aspen_and_back_through_snapshot_files") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("aspen-etcd-snapshot-")
        .tempdir()
        .expect("tempdir");
    let path = |name: &str| dir.path().join(name);

    // etcd with history, deletes, a compaction, leases and many keys; saved by etcdctl.
    let source = Etcd::start("src", &path("src.etcd"), free_port(), &path("src.log")).await;
    let written = write_workload(source.client_port, bulk_keys()).await;
    let from_etcd = path("from-etcd.db");
    etcdctl(&[
        "--endpoints",
        &source.endpoint(),
        "snapshot",
        "save",
        from_etcd.to_str().expect("utf8"),
    ]);

    // Our reader sees what etcd's own `snapshot status` sees (aspenctl snapshot status uses it).
    let etcd_status = etcdctl(&[
        "snapshot",
        "status",
        from_etcd.to_str().expect("utf8"),
        "-w",
        "json",
    ]);
    let snapshot = aspen_etcd_snapshot::EtcdSnapshot::open(&from_etcd).expect("open etcd's file");
    let (hash, total_keys) = snapshot.etcd_status_hash().expect("hash");
    let summary = snapshot.summary().expect("summary");
    let expected = format!(
        "{{\"hash\":{hash},\"revision\":{},\"totalKey\":{total_keys},\"totalSize\":{}}}",
        summary.newest_version_revision, summary.db_bytes
    );
    assert_eq!(
        etcd_status.trim(),
        expected,
        "etcdctl snapshot status vs our reader"
    );
    assert_eq!(summary.compact_revision, written.compact_revision as u64);
    assert_eq!(summary.revision, written.final_revision as u64);

    // etcd -> Aspen: the same file restored on each of three members.
    let mut cluster = Cluster::new(3, Backend::Redb, None);
    let all = [0, 1, 2];
    for member in all {
        let restored = aspen_restore(&from_etcd, &cluster.args(member, &all, "new"));
        let stdout = String::from_utf8_lossy(&restored.stdout);
        assert!(
            restored.status.success(),
            "aspen snapshot restore: {}",
            String::from_utf8_lossy(&restored.stderr)
        );
        assert!(
            stdout.contains(&format!("revision {}", written.final_revision)),
            "{stdout}"
        );
    }
    cluster.start_all();
    cluster.wait_leader(&all).await;
    let aspen_port = cluster.members[0].client_port;
    assert_same_store(source.client_port, aspen_port, &written, "etcd -> aspen").await;
    let mut member_hashes = Vec::new();
    for member in all {
        member_hashes.push(hash_kv(cluster.members[member].client_port, 0).await);
    }
    assert!(
        member_hashes.windows(2).all(|w| w[0] == w[1]),
        "the restored members' HashKV: {member_hashes:?}"
    );

    // Aspen -> etcd, with etcd's own tools.
    let from_aspen = path("from-aspen.db");
    let aspen_endpoint = format!("127.0.0.1:{aspen_port}");
    let from_aspen_arg = from_aspen.to_str().expect("utf8");
    etcdctl(&[
        "--endpoints",
        &aspen_endpoint,
        "snapshot",
        "save",
        from_aspen_arg,
    ]);
    let status = etcdctl(&["snapshot", "status", from_aspen_arg, "-w", "json"]);
    assert!(
        status.contains(&format!("\"revision\":{}", written.final_revision)),
        "etcdctl snapshot status: {status}"
    );
    let peer_port = free_port();
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let back_dir = path("back.etcd");
    etcdctl(&[
        "snapshot",
        "restore",
        from_aspen_arg,
        "--name",
        "back",
        "--data-dir",
        back_dir.to_str().expect("utf8"),
        "--initial-cluster",
        &format!("back={peer_url}"),
        "--initial-advertise-peer-urls",
        &peer_url,
    ]);
    let back = Etcd::start("back", &back_dir, peer_port, &path("back.log")).await;
    assert_same_store(aspen_port, back.client_port, &written, "aspen -> etcd").await;
    // etcd's own hash of the history agrees after the round trip etcd -> Aspen -> etcd.
    for revision in [0, written.edits_until_revision] {
        assert_eq!(
            hash_kv(source.client_port, revision).await,
            hash_kv(back.client_port, revision).await,
            "etcd HashKV at {revision}: the source and the round-tripped etcd"
        );
    }
    drop(cluster);
    drop((source, back));
}

/// A member's saved snapshot (what `etcdctl snapshot save` writes: the stream's blobs,
/// including the SHA-256 digest) from a fresh Aspen with a few keys.
async fn aspen_saved_snapshot(dir: &Path) -> (PathBuf, Cluster) {
    let mut cluster = Cluster::new(1, Backend::Redb, None);
    cluster.start(0);
    cluster.wait_leader(&[0]).await;
    for i in 0..200 {
        cluster.put(0, &format!("key/{i:04}"), &"x".repeat(i)).await;
    }
    let mut stream = cluster
        .maintenance(0)
        .snapshot(SnapshotRequest {})
        .await
        .expect("snapshot")
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(message) = stream.message().await.expect("chunk") {
        bytes.extend_from_slice(&message.blob);
    }
    let file = dir.join("good.db");
    std::fs::write(&file, &bytes).expect("write snapshot");
    (file, cluster)
}

fn restore_must_fail(file: &Path, cluster: &Cluster, member: usize, expected: &str) {
    let data_dir = &cluster.members[member].data_dir;
    let output = aspen_restore(file, &cluster.args(member, &[member], "new"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "restore of {} succeeded",
        file.display()
    );
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in: {stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(data_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a refused restore left {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_snapshot_files_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (good, source) = aspen_saved_snapshot(dir.path()).await;
    let bytes = std::fs::read(&good).expect("read");
    assert_eq!(
        bytes.len() % 512,
        32,
        "a saved snapshot ends with its SHA-256"
    );
    let page = 4096;
    // Restores go to members planned (never started) in a cluster of their own.
    let mut target = Cluster::new(4, Backend::Redb, None);

    // Truncated mid-page (no trailer any more).
    let truncated = dir.path().join("truncated.db");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2 + 100]).expect("write");
    restore_must_fail(&truncated, &target, 0, "truncated");

    // One byte changed in a data page: the SHA-256 trailer no longer matches.
    let mut damaged = bytes.clone();
    damaged[2 * page + 40] ^= 0xFF;
    let damaged_path = dir.path().join("damaged.db");
    std::fs::write(&damaged_path, &damaged).expect("write");
    restore_must_fail(
        &damaged_path,
        &target,
        1,
        "integrity check failed: expected sha256",
    );

    // The same damage without the trailer: the page itself is found bad (its header's flags).
    let mut unhashed = bytes[..bytes.len() - 32].to_vec();
    unhashed[2 * page + 8] = 0x7F;
    let unhashed_path = dir.path().join("unhashed.db");
    std::fs::write(&unhashed_path, &unhashed).expect("write");
    restore_must_fail(&unhashed_path, &target, 2, "corrupt: page 2 has flags 0x7f");

    // Not a snapshot at all.
    let foreign = dir.path().join("foreign.db");
    std::fs::write(&foreign, "just some text, not a database\n".repeat(100)).expect("write");
    restore_must_fail(&foreign, &target, 3, "neither an etcd snapshot");

    // A data dir that is not empty is refused and left as it was.
    let plan = target.plan_member(None);
    let data_dir = target.members[plan].data_dir.clone();
    std::fs::create_dir_all(&data_dir).expect("mkdir");
    std::fs::write(data_dir.join("precious"), "keep me").expect("write");
    let output = aspen_restore(&good, &target.args(plan, &[plan], "new"));
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("already exists and is not empty"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(data_dir.join("precious")).expect("read"),
        "keep me"
    );

    // And the good file restores.
    let plan = target.plan_member(None);
    let output = aspen_restore(&good, &target.args(plan, &[plan], "new"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("200 keys"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    drop(source);
}

/// What `etcdctl ARGS` did: success or failure, its output, and etcd's error if any (the
/// clients' retry logs left out).
fn etcdctl_outcome(endpoint: &str, args: &[&str]) -> String {
    let output = Command::new(ETCDCTL_BIN)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error = stderr
        .lines()
        .filter(|line| line.starts_with("Error:"))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "etcdctl {}: {} {:?} {error}",
        args.join(" "),
        if output.status.success() {
            "ok"
        } else {
            "failed"
        },
        String::from_utf8_lossy(&output.stdout).trim()
    )
}

/// The same requests against any member; each one's outcome. Puts write the values the setup
/// wrote, so the outcomes do not depend on how often this ran.
fn auth_outcomes(endpoint: &str) -> Vec<String> {
    let checks: &[&[&str]] = &[
        &["get", "key1"],
        &["--user", "alice:alicepw", "get", "key1"],
        &["--user", "alice:alicepw", "put", "key1", "v1"],
        &["--user", "alice:alicepw", "get", "k3"],
        &["--user", "alice:alicepw", "put", "k3", "v3"],
        &["--user", "alice:alicepw", "put", "k5", "v5"],
        &["--user", "alice:alicepw", "get", "pre/a"],
        &["--user", "alice:alicepw", "put", "pre/a", "va"],
        &["--user", "alice:alicepw", "get", "--prefix", "pre/"],
        &["--user", "alice:alicepw", "get", "other"],
        &["--user", "alice:wrong", "get", "key1"],
        &["--user", "bob:bobpw", "put", "other", "z"],
        &["--user", "bob:bobpw", "get", "other"],
        &["--user", "root:rootpw", "get", "other"],
        &["--user", "root:rootpw", "user", "list"],
        &["--user", "root:rootpw", "role", "list"],
        &["--user", "root:rootpw", "role", "get", "r1"],
        &["--user", "root:rootpw", "role", "get", "r2"],
        &["--user", "root:rootpw", "role", "get", "root"],
        &["--user", "root:rootpw", "user", "get", "alice"],
        &["--user", "root:rootpw", "user", "get", "nopw"],
    ];
    let mut outcomes: Vec<String> = checks
        .iter()
        .map(|args| etcdctl_outcome(endpoint, args))
        .collect();
    // A user added with --no-password cannot log in with any password: etcd 3.4 says so with
    // its internal error (gRPC Unknown, "password was given for no password user"), and so
    // does Aspen; the whole outcome is compared.
    let nopw = etcdctl_outcome(endpoint, &["--user", "nopw:anything", "get", "key1"]);
    assert!(
        nopw.contains("password was given for no password user"),
        "{nopw}"
    );
    outcomes.push(format!("nopw: {nopw}"));
    outcomes
}

/// (enabled, auth revision) as an Aspen member reports them (AuthStatus, as root).
async fn aspen_auth_status(port: u16) -> (bool, u64) {
    let channel = channel(port);
    let token = AuthClient::new(channel.clone())
        .authenticate(AuthenticateRequest {
            name: "root".into(),
            password: "rootpw".into(),
        })
        .await
        .expect("authenticate as root")
        .into_inner()
        .token;
    let mut request = tonic::Request::new(AuthStatusRequest {});
    let token = tonic::metadata::MetadataValue::try_from(token.as_str()).expect("ascii token");
    request.metadata_mut().insert("token", token);
    let status = AuthClient::new(channel)
        .auth_status(request)
        .await
        .expect("auth status")
        .into_inner();
    (status.enabled, status.auth_revision)
}

/// (enabled, auth revision, users, roles) that our reader finds in a saved file.
fn file_auth(file: &Path) -> (bool, u64, u64, u64) {
    let summary = aspen_etcd_snapshot::EtcdSnapshot::open(file)
        .and_then(|snapshot| snapshot.summary())
        .expect("read snapshot");
    (
        summary.auth_enabled,
        summary.auth_revision,
        summary.users,
        summary.roles,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_auth_to_aspen_and_back_through_snapshot_files() {
    if !etcd_installed("etcd_auth_to_aspen_and_back_through_snapshot_files") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("aspen-etcd-snapshot-auth-")
        .tempdir()
        .expect("tempdir");
    let path = |name: &str| dir.path().join(name);

    let source = Etcd::start("src", &path("src.etcd"), free_port(), &path("src.log")).await;
    let src = source.endpoint();
    let setup: &[&[&str]] = &[
        &["put", "key1", "v1"],
        &["put", "k3", "v3"],
        &["put", "k5", "v5"],
        &["put", "pre/a", "va"],
        &["put", "other", "z"],
        &["user", "add", "root:rootpw"],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "r1"],
        &["role", "grant-permission", "r1", "read", "key1"],
        &["role", "grant-permission", "r1", "write", "k2", "k5"],
        &[
            "role",
            "grant-permission",
            "--prefix",
            "r1",
            "readwrite",
            "pre/",
        ],
        &["role", "add", "r2"],
        &["role", "grant-permission", "r2", "write", "other"],
        &["user", "add", "alice:alicepw"],
        &["user", "grant-role", "alice", "r1"],
        &["user", "add", "bob:bobpw"],
        &["user", "grant-role", "bob", "r2"],
        &["user", "add", "nopw", "--no-password"],
        &["user", "grant-role", "nopw", "r1"],
        &["auth", "enable"],
    ];
    for args in setup {
        let mut full = vec!["--endpoints", &src];
        full.extend_from_slice(args);
        etcdctl(&full);
    }
    let from_etcd = path("from-etcd.db");
    let from_etcd_arg = from_etcd.to_str().expect("utf8");
    etcdctl(&[
        "--endpoints",
        &src,
        "--user",
        "root:rootpw",
        "snapshot",
        "save",
        from_etcd_arg,
    ]);
    let expected = auth_outcomes(&src);
    // The denials and refusals are there to compare, not an etcdctl that never connected.
    for (at, wanted) in [
        (0, "user name is empty"),
        (2, "permission denied"),
        (3, "permission denied"),
        (5, "permission denied"),
        (9, "permission denied"),
        (10, "authentication failed"),
        (12, "permission denied"),
        (21, "password was given for no password user"),
    ] {
        assert!(expected[at].contains(wanted), "etcd: {}", expected[at]);
    }
    for at in [1, 4, 7, 8, 11, 13, 16] {
        assert!(expected[at].contains(": ok "), "etcd: {}", expected[at]);
    }
    let (enabled, auth_revision, users, roles) = file_auth(&from_etcd);
    assert!(enabled && auth_revision > 1, "{enabled} {auth_revision}");
    assert_eq!((users, roles), (4, 3));

    // etcd -> Aspen.
    let mut cluster = Cluster::new(1, Backend::Redb, None);
    let restored = aspen_restore(&from_etcd, &cluster.args(0, &[0], "new"));
    assert!(
        restored.status.success(),
        "aspen snapshot restore: {}",
        String::from_utf8_lossy(&restored.stderr)
    );
    cluster.start_all();
    cluster.wait_leader(&[0]).await;
    let aspen_port = cluster.members[0].client_port;
    let aspen = format!("127.0.0.1:{aspen_port}");
    assert_eq!(
        aspen_auth_status(aspen_port).await,
        (true, auth_revision),
        "Aspen's auth status after the restore"
    );
    let on_aspen = auth_outcomes(&aspen);
    for (etcd, ours) in expected.iter().zip(&on_aspen) {
        assert_eq!(etcd, ours, "etcd vs Aspen restored from its snapshot");
    }

    // Aspen -> etcd.
    let from_aspen = path("from-aspen.db");
    let from_aspen_arg = from_aspen.to_str().expect("utf8");
    etcdctl(&[
        "--endpoints",
        &aspen,
        "--user",
        "root:rootpw",
        "snapshot",
        "save",
        from_aspen_arg,
    ]);
    assert_eq!(
        file_auth(&from_aspen),
        (true, auth_revision, users, roles),
        "the auth store in Aspen's snapshot"
    );
    drop(cluster);
    let peer_port = free_port();
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let back_dir = path("back.etcd");
    etcdctl(&[
        "snapshot",
        "restore",
        from_aspen_arg,
        "--name",
        "back",
        "--data-dir",
        back_dir.to_str().expect("utf8"),
        "--initial-cluster",
        &format!("back={peer_url}"),
        "--initial-advertise-peer-urls",
        &peer_url,
    ]);
    let back = Etcd::start("back", &back_dir, peer_port, &path("back.log")).await;
    let on_back = auth_outcomes(&back.endpoint());
    for (etcd, back) in expected.iter().zip(&on_back) {
        assert_eq!(etcd, back, "etcd vs etcd restored from Aspen's snapshot");
    }
    // The restored etcd keeps the flag and the revision: its own snapshot says so.
    let from_back = path("from-back.db");
    etcdctl(&[
        "--endpoints",
        &back.endpoint(),
        "--user",
        "root:rootpw",
        "snapshot",
        "save",
        from_back.to_str().expect("utf8"),
    ]);
    assert_eq!(file_auth(&from_back), (true, auth_revision, users, roles));
    drop((source, back));
}
