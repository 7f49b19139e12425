//! TLS end to end with real `aspen` processes: a 3-node cluster with mutual TLS on the client
//! and peer ports driven by real etcdctl (`--cacert`, `--cert`, `--key`); each refusal the
//! issue lists (plaintext to a TLS port, TLS to a plaintext port, an unknown CA, an expired
//! certificate, a peer with a certificate from another CA, a peer from another cluster),
//! after which the node still serves; certificate rotation under load; `--auto-tls`.
//!
//! etcdctl is needed for the etcdctl parts: CI installs it (`.ci/run`); elsewhere, without it,
//! those parts say so on stderr and are skipped (the rest still runs).

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aspen_proto::etcdserverpb::PutRequest;
use aspen_proto::etcdserverpb::kv_client::KvClient;
use aspen_tls::rustls;
use aspen_tls::{CertificateAuthority, LeafOptions};
use common::{Backend, Cluster, free_port, poll, spawn_aspen};

/// `member list` attempts, 200 ms apart, until every member's client URL is published.
const MEMBER_LIST_ATTEMPTS: u32 = 50;
use tonic::transport::Endpoint;

/// etcdctl's own deadlines, short: a refused connection should fail fast.
const ETCDCTL_TIMEOUTS: [&str; 2] = ["--dial-timeout=2s", "--command-timeout=5s"];

/// `etcdctl` when installed; in CI it must be.
fn etcdctl() -> Option<&'static str> {
    let found = Command::new("etcdctl").arg("version").output().is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "etcdctl is not installed, and CI must run the etcdctl parts"
        );
        eprintln!("etcdctl not installed: skipping the etcdctl parts of this test");
    }
    found.then_some("etcdctl")
}

/// Runs etcdctl (API v3) with `args`; returns (success, stdout, stderr).
fn run_etcdctl(args: &[String]) -> (bool, String, String) {
    let output = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(ETCDCTL_TIMEOUTS)
        .args(args)
        .output()
        .expect("run etcdctl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Waits until the log at `path` contains `needle`.
async fn wait_log(path: &Path, needle: &str) {
    let what = format!("{} to say {needle:?}", path.display());
    let path = path.to_path_buf();
    poll(&what, || {
        let path = path.clone();
        async move {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            text.contains(needle).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_etcdctl_with_client_certificates_and_refuses_the_rest() {
    let mut cluster = Cluster::new(3, Backend::Memory, None).with_tls();
    cluster.start_all();
    cluster.wait_leader(&[0, 1, 2]).await;
    // Writes go through peers (forwarding, replication) over mutual TLS.
    cluster.put(1, "through-peers", "v").await;
    let reply = cluster.get(2, "through-peers", false).await.expect("get");
    assert_eq!(reply.kvs[0].value, b"v");
    let Some(_) = etcdctl() else { return };
    let log0 = cluster.process(0).log_path.clone();

    let pki = cluster.pki.as_ref().expect("pki");
    let endpoint = format!("--endpoints=127.0.0.1:{}", cluster.members[0].client_port);
    let with_cert = |extra: &[&str]| -> Vec<String> {
        let mut args = vec![endpoint.clone()];
        args.extend(pki.etcdctl_flags());
        args.extend(strings(extra));
        args
    };
    let (ok, out, err) = run_etcdctl(&with_cert(&["put", "greeting", "hello"]));
    assert!(ok, "etcdctl put over TLS: {err}");
    assert_eq!(out.trim(), "OK");
    let (ok, out, err) = run_etcdctl(&with_cert(&["get", "greeting"]));
    assert!(ok, "etcdctl get over TLS: {err}");
    assert_eq!(out.trim(), "greeting\nhello");
    // Each member publishes its own client URLs as it starts (a membership change of its
    // own), so a list right after the cluster formed may not show them all yet.
    let mut listed = None;
    for _ in 0..MEMBER_LIST_ATTEMPTS {
        let (ok, out, err) = run_etcdctl(&with_cert(&["member", "list"]));
        assert!(ok, "etcdctl member list: {err}");
        let published = cluster
            .members
            .iter()
            .all(|member| out.contains(&member.client_url()));
        listed = Some(out);
        if published {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = listed.expect("at least one member list");
    for member in &cluster.members {
        assert!(out.contains(&member.peer_url()), "{out}");
        assert!(out.contains(&member.client_url()), "{out}");
        assert!(member.peer_url().starts_with("https://"));
    }
    let all_endpoints = format!(
        "--endpoints={}",
        cluster
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut health = vec![all_endpoints];
    health.extend(pki.etcdctl_flags());
    health.extend(strings(&["endpoint", "health"]));
    let (ok, _, err) = run_etcdctl(&health);
    assert!(ok, "endpoint health over TLS: {err}");
    assert_eq!(err.matches("is healthy").count(), 3, "{err}");

    // Refusals, each with the node still up afterwards.
    let plaintext = vec![endpoint.clone(), "get".into(), "greeting".into()];
    let (ok, _, _) = run_etcdctl(&plaintext);
    assert!(!ok, "plaintext etcdctl against a TLS port must fail");
    wait_log(&log0, "client sent plaintext to a TLS port").await;

    let no_cert = vec![
        endpoint.clone(),
        format!("--cacert={}", pki.ca_file.display()),
        "get".into(),
        "greeting".into(),
    ];
    let (ok, _, _) = run_etcdctl(&no_cert);
    assert!(
        !ok,
        "no client certificate with --client-cert-auth must fail"
    );
    wait_log(&log0, "peer sent no certificates").await;

    let other_ca = CertificateAuthority::new("someone else's ca").expect("ca");
    let (stranger_cert, stranger_key) = other_ca
        .issue(&LeafOptions::new("stranger", &[]))
        .expect("issue")
        .write(&pki.dir, "stranger")
        .expect("write");
    let (ok, _, _) = run_etcdctl(&client_args(
        &endpoint,
        &pki.ca_file,
        &stranger_cert,
        &stranger_key,
    ));
    assert!(!ok, "a client certificate from an unknown CA must fail");
    wait_log(&log0, "UnknownIssuer").await;

    let mut expired = LeafOptions::new("old", &[]);
    expired.valid_from_days = -60;
    expired.valid_until_days = -1;
    let (old_cert, old_key) = pki
        .ca
        .issue(&expired)
        .expect("issue")
        .write(&pki.dir, "expired")
        .expect("write");
    let (ok, _, _) = run_etcdctl(&client_args(&endpoint, &pki.ca_file, &old_cert, &old_key));
    assert!(!ok, "an expired client certificate must fail");
    wait_log(&log0, "certificate expired").await;

    // A client that does not trust the server's CA refuses the server.
    let stranger_ca = pki.dir.join("stranger-ca.pem");
    std::fs::write(&stranger_ca, other_ca.cert_pem()).expect("write");
    let (ok, _, _) = run_etcdctl(&client_args(
        &endpoint,
        &stranger_ca,
        &pki.client_cert,
        &pki.client_key,
    ));
    assert!(
        !ok,
        "a server certificate from a CA the client does not trust must fail"
    );

    let (ok, out, err) = run_etcdctl(&with_cert(&["get", "greeting", "--print-value-only"]));
    assert!(ok, "the node still serves after the refusals: {err}");
    assert_eq!(out.trim(), "hello");
}

fn client_args(endpoint: &str, ca: &Path, cert: &Path, key: &Path) -> Vec<String> {
    vec![
        endpoint.to_string(),
        format!("--cacert={}", ca.display()),
        format!("--cert={}", cert.display()),
        format!("--key={}", key.display()),
        "get".into(),
        "greeting".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_plaintext_port_fails_and_the_node_stays_up() {
    let mut cluster = Cluster::new(1, Backend::Memory, None);
    cluster.start_all();
    cluster.wait_leader(&[0]).await;
    let pki = common::TestPki::new(cluster.dir.path());
    let url = format!("https://127.0.0.1:{}", cluster.members[0].client_port);
    let channel = Endpoint::from_shared(url)
        .expect("url")
        .connect_timeout(Duration::from_millis(2_000))
        .timeout(Duration::from_millis(3_000))
        .connect_with_connector_lazy(pki.client.connector());
    let request = PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    let status = KvClient::new(channel)
        .put(request)
        .await
        .expect_err("TLS to a plaintext port must fail");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    // Still serving plaintext.
    cluster.put(0, "k", "v").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_certificate_from_another_ca_cannot_talk_raft() {
    let mut cluster = Cluster::new(3, Backend::Memory, None).with_tls();
    cluster.start_all();
    cluster.wait_leader(&[0, 1, 2]).await;
    let log0 = cluster.process(0).log_path.clone();
    let pki = cluster.pki.as_ref().expect("pki");

    // The rogue trusts the cluster's CA (so it accepts member 0's certificate) but presents
    // one from its own CA, and lists member 0 as a peer: it campaigns and sends votes there.
    let rogue_ca = CertificateAuthority::new("rogue ca").expect("ca");
    let (rogue_cert, rogue_key) = rogue_ca
        .issue(&LeafOptions::new("m0", &["127.0.0.1"]))
        .expect("issue")
        .write(&pki.dir, "rogue")
        .expect("write");
    let rogue_peer = format!("https://127.0.0.1:{}", free_port());
    let rogue_client = format!("http://127.0.0.1:{}", free_port());
    let args = rogue_args(
        &cluster,
        &rogue_peer,
        &rogue_client,
        &cluster.token,
        &[
            format!("--peer-cert-file={}", rogue_cert.display()),
            format!("--peer-key-file={}", rogue_key.display()),
            format!("--peer-trusted-ca-file={}", pki.ca_file.display()),
        ],
    );
    let rogue_log = cluster.dir.path().join("rogue.log");
    let _rogue = spawn_aspen(&args, &rogue_log);

    wait_log(&log0, "UnknownIssuer").await;
    let log = cluster.process(0).log();
    assert!(
        log.lines()
            .any(|l| l.contains("rejected connection") && l.contains("peer")),
        "member 0 names the refused peer connection"
    );
    // The cluster goes on: same leader set, writes commit.
    cluster.put(0, "after-rogue", "v").await;
    cluster.wait_leader(&[0, 1, 2]).await;
}

/// Without TLS too: a member of another cluster (another token, so another cluster id) that
/// reaches member 0's peer port is refused with etcd's reason. (The unknown-member and
/// wrong-target refusals are in aspen-raft's `identity` unit tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_refuse_messages_from_another_cluster() {
    let mut cluster = Cluster::new(3, Backend::Memory, None);
    cluster.start_all();
    cluster.wait_leader(&[0, 1, 2]).await;
    let log0 = cluster.process(0).log_path.clone();

    // Another cluster (another token) that lists member 0's peer URL.
    let other = rogue_args(
        &cluster,
        &format!("http://127.0.0.1:{}", free_port()),
        &format!("http://127.0.0.1:{}", free_port()),
        "another-cluster",
        &[],
    );
    let _other = spawn_aspen(&other, &cluster.dir.path().join("other.log"));
    wait_log(&log0, "cluster ID mismatch").await;
    let log = cluster.process(0).log();
    assert!(
        log.lines()
            .any(|l| l.contains("refused a peer message") && l.contains("cluster ID mismatch")),
        "member 0 logs the refusal with its reason"
    );

    cluster.put(1, "still", "serving").await;
    cluster.wait_leader(&[0, 1, 2]).await;
}

/// A lone member named "rogue" whose --initial-cluster also lists member 0, so it campaigns
/// and sends Raft messages to member 0.
fn rogue_args(
    cluster: &Cluster,
    peer_url: &str,
    client_url: &str,
    token: &str,
    extra: &[String],
) -> Vec<String> {
    let m0 = &cluster.members[0];
    let mut args = strings(&["--name", "rogue", "--storage-backend", "memory"]);
    args.extend([
        format!("--data-dir={}", cluster.dir.path().join("rogue").display()),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--listen-client-urls={client_url}"),
        format!("--advertise-client-urls={client_url}"),
        format!(
            "--initial-cluster=rogue={peer_url},{}={}",
            m0.name,
            m0.peer_url()
        ),
        format!("--initial-cluster-token={token}"),
        "--heartbeat-interval=50".to_string(),
        "--election-timeout=500".to_string(),
    ]);
    args.extend(extra.iter().cloned());
    args
}

/// The certificate a TLS server presents to a new, non-resumed connection.
async fn served_certificate(pki: &common::TestPki, port: u16) -> Vec<u8> {
    let mut config = (*pki.client.config()).clone();
    config.resumption = rustls::client::Resumption::disabled();
    let connector = aspen_tls::tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let stream = connector.connect(name, tcp).await.expect("handshake");
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("certificates")[0]
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_request() {
    let mut cluster = Cluster::new(3, Backend::Memory, None).with_tls();
    cluster.start_all();
    cluster.wait_leader(&[0, 1, 2]).await;
    let before = served_certificate(
        cluster.pki.as_ref().expect("pki"),
        cluster.members[0].client_port,
    )
    .await;

    // Load: writers on long-lived connections, and one that opens a new connection (a new
    // handshake) for every few requests.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for writer in 0..4u64 {
        let fresh_connections = writer == 0;
        let member = (writer % 3) as usize;
        let channels: Vec<_> = (0..64).map(|_| cluster.channel(member)).collect();
        let (stop, done) = (stop.clone(), done.clone());
        writers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) && sent < 100_000 {
                let channel = if fresh_connections {
                    channels[(usize::try_from(sent).expect("a small count") / 4) % channels.len()]
                        .clone()
                } else {
                    channels[0].clone()
                };
                let request = PutRequest {
                    key: format!("w{writer}/{}", sent % 100).into_bytes(),
                    value: sent.to_le_bytes().to_vec(),
                    ..Default::default()
                };
                if let Err(status) = KvClient::new(channel).put(request).await {
                    failures.push(status.to_string());
                }
                sent += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            (sent, failures)
        }));
    }
    let wait_for = |count: u64| {
        let done = done.clone();
        poll("the load to make progress", move || {
            let done = done.clone();
            async move { (done.load(Ordering::Relaxed) >= count).then_some(()) }
        })
    };
    wait_for(200).await;

    // Rotate every member's pair (client, peer and peer-client side): new files written
    // aside and renamed over the old ones, as certificate managers do.
    let pki = cluster.pki.as_ref().expect("pki");
    for member in &cluster.members {
        rotate(pki, &member.name);
    }
    let rotated_at = done.load(Ordering::Relaxed);
    let after = served_certificate(pki, cluster.members[0].client_port).await;
    assert_ne!(before, after, "a new connection gets the new certificate");
    let on_disk = aspen_tls::read_certificates(&pki.dir.join("m0.pem")).expect("read");
    assert_eq!(after, on_disk[0].to_vec());
    wait_for(rotated_at + 200).await;

    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for writer in writers {
        let (sent, failures) = writer.await.expect("writer");
        assert!(
            failures.is_empty(),
            "requests failed during rotation: {failures:?}"
        );
        total += sent;
    }
    assert!(total >= 400, "{total} requests");
    // Writes through every member still replicate over the rotated peer certificates.
    cluster.put(2, "after-rotation", "v").await;
    let reply = cluster.get(0, "after-rotation", false).await.expect("get");
    assert_eq!(reply.kvs[0].value, b"v");
}

fn rotate(pki: &common::TestPki, name: &str) {
    let staged = format!("{name}-staged");
    let (cert, key) = pki.issue(&staged);
    let final_cert: PathBuf = pki.dir.join(format!("{name}.pem"));
    let final_key: PathBuf = pki.dir.join(format!("{name}-key.pem"));
    std::fs::rename(&key, &final_key).expect("rename key");
    std::fs::rename(&cert, &final_cert).expect("rename cert");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_tls_serves_https_with_a_generated_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = format!("https://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let metrics_port = free_port();
    let data_dir = dir.path().join("auto");
    let mut args = strings(&[
        "--name",
        "auto",
        "--auto-tls",
        "--storage-backend",
        "memory",
    ]);
    args.extend([
        format!("--data-dir={}", data_dir.display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--listen-metrics-urls=https://127.0.0.1:{metrics_port}"),
    ]);
    let process = spawn_aspen(&args, &dir.path().join("auto.log"));
    let cert = data_dir.join("fixtures/client/cert.pem");
    let insecure = aspen_tls::ClientTls::new(&aspen_tls::ClientTlsOptions {
        insecure_skip_verify: true,
        ..Default::default()
    })
    .expect("client");
    let channel = Endpoint::from_shared(client.clone())
        .expect("url")
        .timeout(Duration::from_millis(3_000))
        .connect_with_connector_lazy(insecure.connector());
    let kv = KvClient::new(channel);
    common::put_retry(&kv, "auto", "tls", "the auto-TLS member").await;
    assert!(
        cert.exists(),
        "the generated certificate is under the data dir"
    );
    // Verifying clients refuse a certificate nobody signed.
    let verifying = aspen_tls::ClientTls::new(&aspen_tls::ClientTlsOptions {
        ca_file: Some(cert.clone()),
        ..Default::default()
    });
    assert!(
        verifying.is_ok(),
        "the generated certificate is a valid PEM certificate"
    );
    if etcdctl().is_some() {
        let endpoint = client.trim_start_matches("https://");
        let (ok, out, err) = run_etcdctl(&[
            format!("--endpoints={endpoint}"),
            "--insecure-skip-tls-verify".into(),
            "--insecure-transport=false".into(),
            "get".into(),
            "auto".into(),
            "--print-value-only".into(),
        ]);
        assert!(
            ok,
            "etcdctl --insecure-skip-tls-verify against --auto-tls: {err}"
        );
        assert_eq!(out.trim(), "tls");
    }
    // The metrics listener is https too, with the client side's certificate; plain HTTP to
    // it gets Go's answer.
    let health = https_get(&insecure, metrics_port, "/health").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"health\":\"true\""), "{health}");
    // The client port serves /health too (HTTP/1.1 offered in ALPN, as curl does).
    let client_port: u16 = client
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let health = https_get(&insecure, client_port, "/health").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let (status, body) = common::http_get(metrics_port, "/health")
        .await
        .expect("an answer");
    assert_eq!(status, 400);
    assert_eq!(body, "Client sent an HTTP request to an HTTPS server.\n");
    drop(process);
}

/// GET `path` over HTTP/1.1 with TLS on loopback; the whole response as text.
async fn https_get(tls: &aspen_tls::ClientTls, port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = (*tls.config()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = aspen_tls::tokio_rustls::TlsConnector::from(Arc::new(config));
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let mut stream = connector.connect(name, tcp).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.take(1024 * 1024).read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    tokio::time::timeout(Duration::from_millis(5_000), exchange)
        .await
        .expect("an https answer in time")
        .expect("an https answer")
}

/// A key that is not the certificate's, or a missing file, stops start-up with a clear line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_certificate_pair_stops_start_up_with_its_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = common::TestPki::new(dir.path());
    let (cert, _) = pki.issue("server");
    let (_, other_key) = pki.issue("other");
    let client = format!("https://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let start = |key: &Path, log: &str| {
        let mut args = strings(&["--name", "bad", "--storage-backend", "memory"]);
        args.extend([
            format!("--data-dir={}", dir.path().join("bad").display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--cert-file={}", cert.display()),
            format!("--key-file={}", key.display()),
        ]);
        spawn_aspen(&args, &dir.path().join(log))
    };
    let mut mismatched = start(&other_key, "mismatched.log");
    let status = mismatched
        .wait_exit(common::WAIT_MS_MAX)
        .await
        .expect("exits");
    assert!(!status.success());
    let log = mismatched.log();
    assert!(log.contains("client TLS:"), "{log}");
    assert!(log.contains("are not a usable pair"), "{log}");
    assert!(log.contains(&cert.display().to_string()), "{log}");

    let missing = dir.path().join("no-such-key.pem");
    let mut absent = start(&missing, "missing.log");
    let status = absent.wait_exit(common::WAIT_MS_MAX).await.expect("exits");
    assert!(!status.success());
    let log = absent.log();
    assert!(
        log.contains(&format!("cannot read {}", missing.display())),
        "{log}"
    );
}
