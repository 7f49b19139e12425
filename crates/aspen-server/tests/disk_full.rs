//! A member whose data dir's disk fills up, with real processes on a small tmpfs:
//! - With the disk reserve (the default): writes under load start failing with etcd's NOSPACE
//!   (`etcdserver: mvcc: database space exceeded`, ResourceExhausted) while the member keeps
//!   serving reads; once space is freed, writes succeed again without a restart, and after a
//!   restart every acknowledged write reads back with its value.
//! - Without the reserve (`--disk-reserve-bytes 0`), the disk really fills under a write: Raft
//!   stops, and the process exits with code 75 and says why, instead of staying up unable to
//!   serve. A restart on the still-full disk either serves (reads, and NOSPACE for writes) or
//!   exits 75 again, never hangs; once space is freed a restart serves every acknowledged write
//!   and takes new ones.
//!
//! The tmpfs is mounted by the test (root, or CAP_SYS_ADMIN). Where mounting is not permitted
//! the tests are skipped with a loud message, unless `ASPEN_REQUIRE_TMPFS=1` (set by
//! `.ci/run`, which runs as root), which makes them fail: as `ASPEN_REQUIRE_ETCD` for the tests
//! that need etcd.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use aspen_proto::etcdserverpb::kv_client::KvClient;
use aspen_proto::etcdserverpb::{PutRequest, RangeRequest};
use common::{Backend, Cluster, WAIT_MS_MAX, poll};
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

/// The filesystem's size: big enough for a member to start, small enough to fill in seconds.
/// 48 MiB: 32 MiB for the member, as before the log's journal, the 8 MiB journal file a member
/// creates at once (`aspen_storage::journal::JOURNAL_BYTES`), and the filler below.
const TMPFS_BYTES: u64 = 48 * 1024 * 1024;
/// "Other data" on the same disk, deleted to free space. Writes are acknowledged once their
/// journal record is durable, and `log.redb` takes them afterwards, so a member whose disk
/// filled may hold acknowledged entries only in its journal; the restart after freeing writes
/// them into `log.redb` (up to `LOG_DB_UNSYNCED_BYTES_MAX` plus a deferred megabyte) and must
/// still leave more free than the disk reserve (an eighth of the filesystem) for new writes.
const FILLER_BYTES: usize = 16 * 1024 * 1024;
/// Each put's value; the log and the state database each hold a copy.
const VALUE_BYTES: usize = 100 * 1024;
/// Concurrent writers: the disk fills under load, not one put at a time.
const WRITERS: usize = 4;
/// More puts than the filesystem can hold: a writer that gets this far without an error fails.
const PUTS_PER_WRITER_MAX: usize =
    (aspen_core::convert::usize_from(TMPFS_BYTES) / VALUE_BYTES) / WRITERS * 2;
/// The exit code of a member whose disk filled (`aspen_server::bootstrap::EXIT_DISK_FULL`).
const EXIT_DISK_FULL: i32 = aspen_server::bootstrap::EXIT_DISK_FULL as i32;
/// Restarts a test's supervisor makes on a disk that is still full.
const FULL_DISK_RESTARTS_MAX: u32 = 3;
const NOSPACE: &str = "etcdserver: mvcc: database space exceeded";

/// A tmpfs of `TMPFS_BYTES` on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// None (after a loud message) when mounting is not permitted; a failure then if
    /// `ASPEN_REQUIRE_TMPFS=1`.
    fn mount(test: &str) -> Option<Tmpfs> {
        let dir = tempfile::Builder::new()
            .prefix("aspen-tmpfs-")
            .tempdir()
            .expect("tempdir");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={TMPFS_BYTES}"))
            .arg("tmpfs")
            .arg(dir.path())
            .output();
        let error = match output {
            Ok(out) if out.status.success() => return Some(Tmpfs { dir }),
            Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
            Err(error) => format!("cannot run mount: {error}"),
        };
        assert!(
            std::env::var("ASPEN_REQUIRE_TMPFS").as_deref() != Ok("1"),
            "{test}: cannot mount a tmpfs ({error}) and ASPEN_REQUIRE_TMPFS=1. This test needs \
             root (or CAP_SYS_ADMIN) to make a small filesystem"
        );
        // Straight to the process's stderr: libtest captures `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "\n######## SKIPPED {test}: cannot mount a tmpfs ({error}): \
             it needs root (or CAP_SYS_ADMIN); this test did NOT run (ASPEN_REQUIRE_TMPFS=1 \
             makes this a failure). ########\n"
        );
        None
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    /// Fills `FILLER_BYTES` with a file, as other data sharing the disk.
    fn add_filler(&self) {
        std::fs::write(self.filler(), vec![0x5a_u8; FILLER_BYTES]).expect("write the filler");
    }

    fn remove_filler(&self) {
        std::fs::remove_file(self.filler()).expect("remove the filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// The value a key is put with: the key repeated, so every key's value differs.
fn value_of(key: &str) -> Vec<u8> {
    key.bytes()
        .chain([b';'])
        .cycle()
        .take(VALUE_BYTES)
        .collect()
}

/// How a writer's run ended.
#[derive(Debug)]
struct WriterRun {
    acknowledged: Vec<String>,
    /// The status of the put that failed first.
    first_error: tonic::Status,
}

/// Puts keys `w<writer>/<n>` until one fails; returns what was acknowledged and the error.
async fn write_until_refused(mut kv: KvClient<Channel>, writer: usize) -> WriterRun {
    let mut acknowledged = Vec::new();
    for n in 0..PUTS_PER_WRITER_MAX {
        let key = format!("w{writer}/{n:05}");
        let request = PutRequest {
            key: key.clone().into_bytes(),
            value: value_of(&key),
            ..Default::default()
        };
        match kv.put(request).await {
            Ok(_) => acknowledged.push(key),
            Err(first_error) => {
                return WriterRun {
                    acknowledged,
                    first_error,
                };
            }
        }
    }
    panic!("writer {writer}: {PUTS_PER_WRITER_MAX} puts of {VALUE_BYTES} bytes never failed");
}

/// `WRITERS` writers at once against member 0; every run ends with an error.
async fn fill(cluster: &Cluster) -> Vec<WriterRun> {
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| tokio::spawn(write_until_refused(cluster.kv(0), writer)))
        .collect();
    let mut runs = Vec::new();
    for writer in writers {
        runs.push(writer.await.expect("writer task"));
    }
    runs
}

async fn put(cluster: &Cluster, key: &str) -> Result<(), tonic::Status> {
    let request = PutRequest {
        key: key.as_bytes().to_vec(),
        value: value_of(key),
        ..Default::default()
    };
    cluster.kv(0).put(request).await.map(|_| ())
}

/// Reads every acknowledged key back (linearizable) and checks its value.
async fn check_acknowledged(cluster: &Cluster, keys: &[String]) {
    assert!(!keys.is_empty(), "no write was acknowledged");
    for key in keys {
        let request = RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        let reply = cluster
            .kv(0)
            .range(request)
            .await
            .unwrap_or_else(|status| panic!("read {key}: {status}"))
            .into_inner();
        assert_eq!(reply.kvs.len(), 1, "acknowledged {key} is missing");
        assert!(
            reply.kvs[0].value == value_of(key),
            "acknowledged {key} has another value"
        );
    }
}

/// Waits until member 0 answers a linearizable read.
async fn wait_serving(cluster: &Cluster) {
    poll("member 0 serving reads", || async {
        cluster.get(0, "probe", false).await.ok()
    })
    .await;
}

/// Waits for member 0's process to exit on its own; None if it is still up after
/// `WAIT_MS_MAX`.
async fn wait_exit(cluster: &mut Cluster) -> Option<ExitStatus> {
    cluster.process(0).wait_exit(WAIT_MS_MAX).await
}

/// One member with its data dir on `tmpfs`; `extra` flags after the harness's.
async fn start_member(tmpfs: &Tmpfs, extra: &[&str]) -> Cluster {
    let mut cluster = Cluster::new(1, Backend::Redb, None);
    cluster.members[0].data_dir = tmpfs.path().join("m0");
    cluster.extra_args = extra.iter().map(|s| s.to_string()).collect();
    cluster.start(0);
    cluster.wait_leader(&[0]).await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nearly_full_disk_refuses_writes_with_nospace_until_space_is_freed() {
    let Some(tmpfs) = Tmpfs::mount("a_nearly_full_disk_refuses_writes") else {
        return;
    };
    tmpfs.add_filler();
    let mut cluster = start_member(&tmpfs, &[]).await;

    let runs = fill(&cluster).await;
    for run in &runs {
        let error = &run.first_error;
        assert!(
            error.code() == Code::ResourceExhausted && error.message() == NOSPACE,
            "a write on a nearly full disk failed with {error:?}, not NOSPACE"
        );
    }
    let acknowledged: Vec<String> = runs.into_iter().flat_map(|r| r.acknowledged).collect();
    eprintln!("{} puts acknowledged before NOSPACE", acknowledged.len());

    // Still up and serving: reads work, writes keep failing with NOSPACE.
    assert!(cluster.process(0).wait_exit(0).await.is_none(), "exited");
    check_acknowledged(&cluster, &acknowledged[..1]).await;
    let refused = put(&cluster, "while-full")
        .await
        .expect_err("a put while full");
    assert_eq!(refused.message(), NOSPACE);
    let metrics = cluster.metrics(0).await.expect("metrics");
    let refusals = common::gauge(&metrics, "aspen_disk_low_refusals_total").expect("counter");
    assert!(refusals > WRITERS as u64, "refusals {refusals}");

    // Space freed by hand (other data deleted): writes go through again, no restart.
    tmpfs.remove_filler();
    poll("a put after space was freed", || async {
        put(&cluster, "after-freeing").await.ok()
    })
    .await;
    assert!(cluster.process(0).wait_exit(0).await.is_none(), "exited");

    // Nothing acknowledged was lost or damaged, across a restart too.
    let statuses = cluster.terminate(&[0], WAIT_MS_MAX).await;
    assert_eq!(statuses[0].and_then(|s| s.code()), Some(0), "clean stop");
    cluster.start(0);
    wait_serving(&cluster).await;
    check_acknowledged(&cluster, &acknowledged).await;
    check_acknowledged(&cluster, &["after-freeing".to_string()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_stopping_on_a_full_disk_exits_75_and_a_restart_serves_every_acknowledged_write() {
    let Some(tmpfs) = Tmpfs::mount("raft_stopping_on_a_full_disk_exits_75") else {
        return;
    };
    tmpfs.add_filler();
    let mut cluster = start_member(&tmpfs, &["--disk-reserve-bytes", "0"]).await;

    let runs = fill(&cluster).await;
    for run in &runs {
        // The put that met the full disk gets etcd's "server stopped"; the others find the
        // process stopping or gone: a put sent as the exiting server's HTTP/2 GOAWAY crosses
        // it fails in the client's transport (tonic reports it as Internal, "h2 protocol
        // error" with the GOAWAY as its source), never processed.
        let code = run.first_error.code();
        let crossed_goaway = code == Code::Internal
            && format!("{:?}", run.first_error).contains("GoAway(b\"\", NO_ERROR, Remote)");
        assert!(
            matches!(code, Code::Unavailable | Code::Unknown | Code::Cancelled) || crossed_goaway,
            "a write on a full disk failed with {:?}",
            run.first_error
        );
    }
    let acknowledged: Vec<String> = runs.into_iter().flat_map(|r| r.acknowledged).collect();
    eprintln!(
        "{} puts acknowledged before the disk filled",
        acknowledged.len()
    );

    let status = wait_exit(&mut cluster).await;
    let log = cluster.process(0).log();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(EXIT_DISK_FULL),
        "a member whose disk filled must exit {EXIT_DISK_FULL}; log:\n{log}"
    );
    assert!(
        log.contains("the data dir's disk is full")
            && log.contains(&format!("exiting with code {EXIT_DISK_FULL}")),
        "the exit says why; log:\n{log}"
    );
    cluster.kill(0);

    // A supervisor restarts it while the disk is still full: it serves reads (writes get
    // NOSPACE from the reserve) or exits 75 again; it never stays up unable to serve.
    for restart in 1..=FULL_DISK_RESTARTS_MAX {
        cluster.extra_args.clear();
        cluster.start(0);
        let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
        let outcome = loop {
            if let Some(status) = cluster.process(0).wait_exit(0).await {
                break Err(status);
            }
            if cluster.get(0, "probe", false).await.is_ok() {
                break Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "restart {restart} on a full disk neither serves nor exits"
            );
            tokio::time::sleep(Duration::from_millis(common::POLL_INTERVAL_MS)).await;
        };
        match outcome {
            Ok(()) => {
                eprintln!("restart {restart} on the full disk serves reads");
                let refused = put(&cluster, "still-full").await.expect_err("full disk");
                assert_eq!(refused.message(), NOSPACE);
                cluster.terminate(&[0], WAIT_MS_MAX).await;
                break;
            }
            Err(status) => {
                eprintln!("restart {restart} on the full disk exited: {status}");
                assert_eq!(status.code(), Some(EXIT_DISK_FULL), "restart {restart}");
                cluster.kill(0);
            }
        }
    }

    // Space freed: the supervisor's next restart serves everything acknowledged, and writes.
    tmpfs.remove_filler();
    cluster.start(0);
    wait_serving(&cluster).await;
    check_acknowledged(&cluster, &acknowledged).await;
    poll("a put after space was freed", || async {
        put(&cluster, "after-freeing").await.ok()
    })
    .await;
    check_acknowledged(&cluster, &["after-freeing".to_string()]).await;
}
