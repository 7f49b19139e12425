//! JWT auth tokens end to end (`--auth-token jwt,...`, etcd 3.4's meaning): the real `aspen`
//! binary and real `etcdctl`. Keys are made by the test (rcgen for ECDSA, openssl for RSA).
//! A token issued by one member works on every member (no Raft round: each verifies with the
//! public key); a token from another key, an expired one or one with a tampered payload is
//! "invalid auth token"; after a password change the old token is refused as "revision of auth
//! store is old"; a restart keeps tokens valid (they are not state), also on a member that has
//! only the public key (verify-only, which cannot issue); the ttl option bounds them.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use aspen_api::jwt::{JwtKeys, SignMethod};
use aspen_proto::etcdserverpb::auth_client::AuthClient;
use aspen_proto::etcdserverpb::kv_client::KvClient;
use aspen_proto::etcdserverpb::{AuthStatusRequest, AuthenticateRequest, RangeRequest};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Backend, Cluster, poll};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

const INVALID_TOKEN: &str = "etcdserver: invalid auth token";
const OLD_REVISION: &str = "etcdserver: revision of auth store is old";

/// etcdctl 3.4: (success, stdout + stderr without the JSON log lines).
fn etcdctl(endpoint: &str, args: &[&str]) -> (bool, String) {
    etcdctl_input(endpoint, args, "")
}

fn etcdctl_input(endpoint: &str, args: &[&str], input: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("timeout")
        .arg("20")
        .arg("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("etcdctl must be installed");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let output = child.wait_with_output().expect("etcdctl output");
    let mut out = String::from_utf8_lossy(&output.stdout).into_owned();
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        if !line.starts_with("{\"level\"") {
            out.push_str(line);
            out.push('\n');
        }
    }
    (output.status.success(), out)
}

#[track_caller]
fn ok(ran: (bool, String), contains: &str, what: &str) {
    assert!(ran.0, "{what}: expected success, got: {}", ran.1);
    assert!(
        ran.1.contains(contains),
        "{what}: expected {contains:?} in: {}",
        ran.1
    );
}

#[track_caller]
fn refused(ran: (bool, String), message: &str, what: &str) {
    assert!(!ran.0, "{what}: expected a failure, got: {}", ran.1);
    assert!(
        ran.1.contains(message),
        "{what}: expected {message:?} in: {}",
        ran.1
    );
}

/// A P-256 key pair as PEM files `<name>.key` (PKCS#8) and `<name>.pub` (SubjectPublicKeyInfo).
fn ec_keys(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec key");
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    std::fs::write(&private, pair.serialize_pem()).expect("write key");
    std::fs::write(&public, pair.public_key_pem()).expect("write pub");
    (private, public)
}

/// A 2048-bit RSA key pair made with openssl (ring cannot generate RSA keys): the private key
/// as openssl writes it, the public key as a "PUBLIC KEY" PEM.
fn rsa_keys(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let made = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&private)
        .arg("2048")
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl must be installed");
    assert!(made.success());
    let made = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(made.success());
    (private, public)
}

fn jwt_flag(private: &Path, public: &Path, method: &str, ttl: Option<&str>) -> Vec<String> {
    let mut value = format!(
        "jwt,pub-key={},priv-key={},sign-method={method}",
        public.display(),
        private.display()
    );
    if let Some(ttl) = ttl {
        value.push_str(&format!(",ttl={ttl}"));
    }
    vec![
        "--auth-token".to_string(),
        value,
        "--bcrypt-cost".to_string(),
        "4".to_string(),
    ]
}

async fn authenticate(channel: Channel, name: &str, password: &str) -> String {
    AuthClient::new(channel)
        .authenticate(AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        })
        .await
        .expect("authenticate")
        .into_inner()
        .token
}

async fn get(channel: Channel, token: &str) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(RangeRequest {
        key: b"k".to_vec(),
        ..Default::default()
    });
    let value = MetadataValue::try_from(token).expect("ascii token");
    request.metadata_mut().insert("token", value);
    KvClient::new(channel).range(request).await.map(|_| ())
}

#[track_caller]
fn assert_status(result: Result<(), tonic::Status>, code: Code, message: &str, what: &str) {
    let status = result.expect_err(what);
    assert_eq!((status.code(), status.message()), (code, message), "{what}");
}

fn claims(token: &str) -> serde_json::Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT: {token}");
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("b64")).expect("json");
    assert_eq!(header, serde_json::json!({"alg": "ES256", "typ": "JWT"}));
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_across_a_three_member_cluster() {
    let mut cluster = Cluster::new(3, Backend::Redb, None);
    let (private, public) = ec_keys(cluster.dir.path(), "jwt");
    cluster.extra_args = jwt_flag(&private, &public, "ES256", None);
    cluster.start_all();
    let leader = cluster.wait_leader(&[0, 1, 2]).await;
    let bare = |index: usize| cluster.members[index].client_url().replace("http://", "");
    let (a, b, c) = (leader, (leader + 1) % 3, (leader + 2) % 3);

    ok(
        etcdctl(&bare(a), &["user", "add", "root:rootpw"]),
        "User root created",
        "root",
    );
    ok(
        etcdctl(&bare(a), &["auth", "enable"]),
        "Authentication Enabled",
        "enable",
    );
    let root = ["--user", "root:rootpw"];
    for args in [
        vec!["user", "add", "alice:alicepw"],
        vec!["role", "add", "app"],
        vec!["role", "grant-permission", "app", "readwrite", "k"],
        vec!["user", "grant-role", "alice", "app"],
        vec!["put", "k", "v1"],
    ] {
        let all: Vec<&str> = root.iter().chain(args.iter()).copied().collect();
        ok(etcdctl(&bare(a), &all), "", &args.join(" "));
    }
    // etcdctl --user authenticates on the member it talks to; every member issues tokens.
    let mut last = "v1".to_string();
    for index in [a, b, c] {
        let wanted = format!("k\n{last}\n");
        ok(
            etcdctl(&bare(index), &["--user", "alice:alicepw", "get", "k"]),
            &wanted,
            "alice get",
        );
        last = format!("v-{index}");
        ok(
            etcdctl(
                &bare(index),
                &["--user", "alice:alicepw", "put", "k", &last],
            ),
            "OK",
            "alice put",
        );
        refused(
            etcdctl(
                &bare(index),
                &["--user", "alice:alicepw", "put", "other", "x"],
            ),
            "etcdserver: permission denied",
            "alice outside her role",
        );
    }
    refused(
        etcdctl(&bare(b), &["--user", "alice:wrong", "get", "k"]),
        "etcdserver: authentication failed, invalid user ID or password",
        "wrong password",
    );

    // A token issued by a follower is etcd's JWT, and works on the other members as it is.
    let token = authenticate(cluster.channel(b), "alice", "alicepw").await;
    let auth_revision = AuthClient::new(cluster.channel(a))
        .auth_status(AuthStatusRequest {})
        .await
        .expect("auth status")
        .into_inner()
        .auth_revision;
    let found = claims(&token);
    assert_eq!(found["username"], "alice");
    assert_eq!(found["revision"], auth_revision);
    let exp = found["exp"].as_u64().expect("exp");
    let expected = unix_now() + 300;
    assert!(
        exp + 10 >= expected && exp <= expected,
        "exp {exp}: now + 5 min by default"
    );
    for index in [a, b, c] {
        get(cluster.channel(index), &token)
            .await
            .expect("token from b works everywhere");
    }

    // A token signed with another key, one with the right key but expired, and a payload
    // swapped for root's under alice's signature: all "invalid auth token".
    let (other_private, other_public) = ec_keys(cluster.dir.path(), "other");
    let read = |path: &Path| std::fs::read(path).expect("key file");
    let other = JwtKeys::from_pem(
        SignMethod::ES256,
        Some(&read(&other_public)),
        Some(&read(&other_private)),
        Duration::from_secs(300),
    )
    .expect("other keys");
    let foreign = other.sign("root", auth_revision, unix_now()).expect("sign");
    let ours = JwtKeys::from_pem(
        SignMethod::ES256,
        Some(&read(&public)),
        Some(&read(&private)),
        Duration::from_secs(60),
    )
    .expect("our keys");
    let expired = ours
        .sign("alice", auth_revision, unix_now() - 3_600)
        .expect("sign");
    let fresh = ours.sign("alice", auth_revision, unix_now()).expect("sign");
    get(cluster.channel(c), &fresh)
        .await
        .expect("the server's own key: accepted");
    let parts: Vec<&str> = token.split('.').collect();
    let swapped = URL_SAFE_NO_PAD.encode(
        serde_json::json!({"exp": exp, "revision": auth_revision, "username": "root"}).to_string(),
    );
    let forged = format!("{}.{}.{}", parts[0], swapped, parts[2]);
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    for (bad, what) in [
        (foreign.as_str(), "another key"),
        (expired.as_str(), "expired"),
        (forged.as_str(), "tampered payload"),
        (unsigned.as_str(), "alg none"),
        ("not-a-jwt", "malformed"),
    ] {
        for index in [a, c] {
            assert_status(
                get(cluster.channel(index), bad).await,
                Code::Unauthenticated,
                INVALID_TOKEN,
                what,
            );
        }
    }

    // A password change moves the auth revision: the old token is refused as old everywhere,
    // the new password works through etcdctl, the old one no longer does.
    // etcdctl 3.4 reads the new password from stdin with --interactive=false.
    ok(
        etcdctl_input(
            &bare(a),
            &[
                "--user",
                "root:rootpw",
                "user",
                "passwd",
                "alice",
                "--interactive=false",
            ],
            "newpw\n",
        ),
        "Password updated",
        "passwd",
    );
    for index in [a, b, c] {
        let refused_old = poll("the password change applied", || async {
            match get(cluster.channel(index), &token).await {
                Err(status) if status.message() == OLD_REVISION => Some(status),
                _ => None,
            }
        })
        .await;
        assert_eq!(refused_old.code(), Code::InvalidArgument);
    }
    ok(
        etcdctl(&bare(c), &["--user", "alice:newpw", "get", "k"]),
        &format!("k\n{last}\n"),
        "new password",
    );
    refused(
        etcdctl(&bare(c), &["--user", "alice:alicepw", "get", "k"]),
        "etcdserver: authentication failed, invalid user ID or password",
        "old password",
    );
    let renewed = authenticate(cluster.channel(c), "alice", "newpw").await;
    get(cluster.channel(a), &renewed)
        .await
        .expect("a new token after the change");
}

/// RS256 with openssl's key and a short `ttl`, on one member, restarted verify-only (only
/// `pub-key`). A JWT is not state: it survives a restart (simple tokens do not), and lapses at
/// its `exp`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_tokens_survive_a_verify_only_restart_and_expire_at_their_ttl() {
    let cluster = Cluster::new(1, Backend::Redb, None);
    let (private, public) = rsa_keys(cluster.dir.path(), "rsa");
    let mut args = cluster.args(0, &[0], "new");
    args.extend(jwt_flag(&private, &public, "RS256", Some("3s")));
    let mut process = common::spawn_aspen(&args, &cluster.dir.path().join("rs256.log"));
    let endpoint = cluster.members[0].client_url().replace("http://", "");
    poll("the member serving", || async {
        etcdctl(&endpoint, &["endpoint", "health"]).0.then_some(())
    })
    .await;
    ok(
        etcdctl(&endpoint, &["user", "add", "root:pw"]),
        "created",
        "root",
    );
    ok(etcdctl(&endpoint, &["auth", "enable"]), "Enabled", "enable");
    ok(
        etcdctl(&endpoint, &["--user", "root:pw", "put", "k", "v"]),
        "OK",
        "put as root",
    );

    let token = authenticate(cluster.channel(0), "root", "pw").await;
    let header = URL_SAFE_NO_PAD
        .decode(token.split('.').next().expect("header"))
        .expect("b64");
    assert_eq!(header, br#"{"alg":"RS256","typ":"JWT"}"#);
    get(cluster.channel(0), &token).await.expect("fresh token");

    // Restarted with only the public key (etcd's verify-only mode): the token from before the
    // restart still verifies; issuing a new one is etcd's ErrVerifyOnly.
    process.sigterm();
    assert!(process.wait_exit(10_000).await.is_some(), "stopped");
    let mut verify_only = cluster.args(0, &[0], "new");
    verify_only.extend([
        "--auth-token".to_string(),
        format!("jwt,pub-key={},sign-method=RS256", public.display()),
    ]);
    let mut process = common::spawn_aspen(&verify_only, &cluster.dir.path().join("rs256-2.log"));
    let channel = cluster.channel(0);
    poll("the restarted member accepting the old token", || async {
        get(channel.clone(), &token).await.ok()
    })
    .await;
    let status = AuthClient::new(cluster.channel(0))
        .authenticate(AuthenticateRequest {
            name: "root".into(),
            password: "pw".into(),
        })
        .await
        .expect_err("verify-only");
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::Unknown,
            "auth: token signing attempted with verify-only key"
        )
    );
    refused(
        etcdctl(&endpoint, &["--user", "root:pw", "get", "k"]),
        "auth: token signing attempted with verify-only key",
        "etcdctl on a verify-only member",
    );
    // ttl=3s: the token's exp is at most 3 s after its issue (plus the second it was issued in).
    tokio::time::sleep(Duration::from_millis(4_200)).await;
    assert_status(
        get(cluster.channel(0), &token).await,
        Code::Unauthenticated,
        INVALID_TOKEN,
        "expired after ttl",
    );
    process.sigterm();
    process.wait_exit(10_000).await;
}

/// Configuration mistakes stop `aspen` at start with the other problems, each named.
#[test]
fn jwt_configuration_errors_stop_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (private, public) = ec_keys(dir.path(), "ec");
    let (_, other_public) = ec_keys(dir.path(), "other");
    let (p, q, o) = (private.display(), public.display(), other_public.display());
    let cases = [
        (
            format!("jwt,pub-key={q},priv-key={p},sign-method=XS256"),
            "--auth-token: unknown sign-method 'XS256'".to_string(),
        ),
        (
            format!("jwt,pub-key={q},priv-key={p}"),
            "--auth-token jwt needs sign-method=METHOD".to_string(),
        ),
        (
            format!("jwt,pub-key={q},priv-key=/nonexistent/key.pem,sign-method=ES256"),
            "--auth-token: cannot read priv-key '/nonexistent/key.pem'".to_string(),
        ),
        (
            format!("jwt,pub-key={q},priv-key={p},sign-method=RS256"),
            "--auth-token jwt: priv-key is not a usable RSA private key".to_string(),
        ),
        (
            format!("jwt,pub-key={o},priv-key={p},sign-method=ES256"),
            "--auth-token jwt: pub-key does not match priv-key".to_string(),
        ),
        (
            format!("jwt,pub-key={q},priv-key={p},sign-method=ES256,ttl=soon"),
            "--auth-token: ttl:".to_string(),
        ),
        (
            format!("jwt,pub-key={q},priv-key={p},sign-method=ES256,colour=blue"),
            "--auth-token: unknown jwt option 'colour'".to_string(),
        ),
        (
            format!("jwt,pub-key={q},priv-key={p},sign-method=ES512"),
            "sign-method ES512 (P-521) is not supported by Aspen".to_string(),
        ),
    ];
    for (value, expected) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_aspen"))
            .args(["--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--auth-token", &value])
            .output()
            .expect("aspen");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{value}: started");
        assert!(
            stderr.contains(&expected),
            "{value}: expected {expected:?} in:\n{stderr}"
        );
    }
}
