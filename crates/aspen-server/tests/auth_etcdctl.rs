//! Authentication and RBAC end to end: real `etcdctl` (etcd 3.4's) against a 3-member cluster
//! of the real `aspen` binary. Users, roles, `auth enable`; permitted and denied access through
//! every API (Range, Put, DeleteRange, Txn compares and ops, Watch, lease keys, Lock,
//! Election, maintenance); wrong passwords; missing, unknown and stale tokens. The messages are
//! etcd 3.4's, as `etcdctl` prints them.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use std::process::Command;
use std::time::Duration;

use aspen_proto::etcdserverpb::auth_client::AuthClient;
use aspen_proto::etcdserverpb::kv_client::KvClient;
use aspen_proto::etcdserverpb::{AuthenticateRequest, PutRequest, RangeRequest};
use common::{Backend, Cluster, poll};
use tonic::Code;
use tonic::metadata::MetadataValue;

/// One `etcdctl` run: exit success, and stdout + stderr without the client's JSON log lines.
struct Ran {
    ok: bool,
    out: String,
}

fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Ran {
    // `timeout`: a watch or an election that were wrongly allowed would block forever.
    let mut command = Command::new("timeout");
    command
        .arg("20")
        .arg("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command
        .spawn()
        .expect("etcdctl must be installed (etcd-client)");
    {
        use std::io::Write;
        let mut input = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).expect("stdin write");
        }
    }
    let output = child.wait_with_output().expect("etcdctl output");
    let mut out = String::from_utf8_lossy(&output.stdout).into_owned();
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        if !line.starts_with("{\"level\"") {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ran {
        ok: output.status.success(),
        out,
    }
}

#[track_caller]
fn expect_ok(ran: Ran, contains: &str, what: &str) {
    assert!(ran.ok, "{what}: expected success, got: {}", ran.out);
    assert!(
        ran.out.contains(contains),
        "{what}: expected {contains:?} in: {}",
        ran.out
    );
}

#[track_caller]
fn expect_err(ran: Ran, message: &str, what: &str) {
    assert!(!ran.ok, "{what}: expected a failure, got: {}", ran.out);
    assert!(
        ran.out.contains(message),
        "{what}: expected {message:?} in: {}",
        ran.out
    );
}

const DENIED: &str = "etcdserver: permission denied";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_roles_and_permissions_through_etcdctl() {
    let mut cluster = Cluster::new(3, Backend::Redb, None);
    cluster.start_all();
    let leader = cluster.wait_leader(&[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    // host:port without the scheme: etcdctl 3.4 dials maintenance calls (defrag, hashkv) with
    // the endpoint string as the HTTP/2 authority, which a scheme makes invalid.
    let bare = |index: usize| cluster.members[index].client_url().replace("http://", "");
    let on_leader = bare(leader);
    let on_follower = bare(follower);
    let root = ["--user", "root:rootpw"];
    let run = |endpoint: &str, user: &[&str], args: &[&str]| {
        let all: Vec<&str> = user.iter().chain(args.iter()).copied().collect();
        etcdctl(endpoint, &all, None)
    };

    // Setting up, as etcd's docs do it; enabling needs a root user with the root role
    // (etcdctl grants the role itself when the server says it is missing).
    expect_err(
        run(&on_leader, &[], &["auth", "enable"]),
        "etcdserver: root user does not exist",
        "enable without root",
    );
    expect_ok(
        run(&on_leader, &[], &["user", "add", "root:rootpw"]),
        "User root created",
        "add root",
    );
    expect_ok(
        run(&on_leader, &[], &["auth", "enable"]),
        "Authentication Enabled",
        "enable",
    );
    expect_err(
        run(&on_leader, &[], &["put", "a", "1"]),
        "etcdserver: user name is empty",
        "no user",
    );
    expect_err(
        run(&on_leader, &["--user", "root:wrong"], &["get", "a"]),
        "etcdserver: authentication failed, invalid user ID or password",
        "wrong password",
    );
    expect_err(
        run(&on_leader, &["--user", "nobody:wrong"], &["get", "a"]),
        "etcdserver: authentication failed, invalid user ID or password",
        "unknown user: the same answer",
    );
    for args in [
        vec!["role", "add", "app"],
        vec![
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "--prefix",
            "app/",
        ],
        vec!["role", "grant-permission", "app", "read", "shared"],
        vec!["user", "add", "alice:alicepw"],
        vec!["user", "grant-role", "alice", "app"],
    ] {
        let ran = run(&on_leader, &root, &args);
        assert!(ran.ok, "{args:?}: {}", ran.out);
    }
    expect_ok(
        run(&on_follower, &root, &["role", "get", "app"]),
        "[app/, app0) (prefix app/)",
        "role get through a follower",
    );
    expect_ok(
        run(&on_follower, &root, &["user", "list"]),
        "alice",
        "user list",
    );
    expect_err(
        run(
            &on_follower,
            &root,
            &["user", "grant-role", "alice", "nosuch"],
        ),
        "etcdserver: role name not found",
        "grant of an unknown role",
    );
    expect_err(
        run(&on_leader, &root, &["user", "delete", "root"]),
        "etcdserver: invalid auth management",
        "root cannot be deleted while auth is on",
    );
    expect_ok(
        run(&on_leader, &root, &["put", "shared", "s"]),
        "OK",
        "root writes anywhere",
    );
    expect_ok(
        run(&on_leader, &root, &["put", "secret", "x"]),
        "OK",
        "root writes anywhere",
    );

    // alice, through both members: her prefix, read-only `shared`, nothing else.
    let alice = ["--user", "alice:alicepw"];
    for endpoint in [&on_leader, &on_follower] {
        expect_ok(
            run(endpoint, &alice, &["put", "app/1", "v"]),
            "OK",
            "put in prefix",
        );
        expect_ok(
            run(endpoint, &alice, &["get", "app/", "--prefix"]),
            "app/1",
            "prefix read",
        );
        expect_ok(
            run(endpoint, &alice, &["get", "shared"]),
            "s",
            "read-only key",
        );
        expect_err(
            run(endpoint, &alice, &["put", "shared", "v"]),
            DENIED,
            "write a read-only key",
        );
        expect_err(
            run(endpoint, &alice, &["get", "secret"]),
            DENIED,
            "read outside",
        );
        expect_err(
            run(endpoint, &alice, &["get", "app", "--prefix"]),
            DENIED,
            "wider range",
        );
        expect_err(
            run(endpoint, &alice, &["del", "secret"]),
            DENIED,
            "delete outside",
        );
        expect_ok(
            run(endpoint, &alice, &["del", "app/1"]),
            "1",
            "delete inside",
        );
        expect_err(
            run(endpoint, &alice, &["user", "list"]),
            DENIED,
            "user list",
        );
        expect_ok(
            run(endpoint, &alice, &["user", "get", "alice"]),
            "Roles: app",
            "herself",
        );
        expect_err(
            run(endpoint, &alice, &["user", "get", "root"]),
            DENIED,
            "another user",
        );
        expect_err(
            run(endpoint, &alice, &["auth", "disable"]),
            DENIED,
            "auth disable",
        );
        expect_err(
            run(endpoint, &alice, &["compaction", "1"]),
            DENIED,
            "compaction",
        );
        expect_err(
            run(endpoint, &alice, &["defrag"]),
            "auth: permission denied",
            "defragment (etcd 3.4's raw error)",
        );
        expect_err(
            run(endpoint, &alice, &["endpoint", "hashkv"]),
            "auth: permission denied",
            "hashkv",
        );
    }
    let snapshot = cluster.dir.path().join("denied.db");
    expect_err(
        run(
            &on_leader,
            &alice,
            &["snapshot", "save", snapshot.to_str().unwrap()],
        ),
        "auth: permission denied",
        "snapshot",
    );

    // Txn: every compare and every op is checked, both branches.
    let txn = |input: &str| {
        etcdctl(
            &on_follower,
            &["--user", "alice:alicepw", "txn"],
            Some(input),
        )
    };
    expect_ok(
        txn("value(\"app/t\") = \"\"\n\nput app/t 1\n\nput app/u 2\n\n"),
        "",
        "txn inside",
    );
    expect_err(
        txn("value(\"secret\") = \"x\"\n\nput app/t 1\n\n\n"),
        DENIED,
        "compare outside",
    );
    expect_err(
        txn("value(\"app/t\") = \"1\"\n\nput app/t 2\n\nput secret y\n\n"),
        DENIED,
        "failure branch outside",
    );
    expect_err(txn("\nget secret\n\n\n"), DENIED, "range op outside");

    // Lease keys: revoking a lease deletes its keys, so alice may revoke only if she can write
    // them all; asking for the keys needs read on them.
    let granted = run(&on_leader, &root, &["lease", "grant", "100"]);
    assert!(granted.ok, "{}", granted.out);
    let lease = granted
        .out
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    expect_ok(
        run(
            &on_leader,
            &root,
            &["put", "secret2", "z", "--lease", &lease],
        ),
        "OK",
        "root attaches",
    );
    expect_err(
        run(&on_leader, &alice, &["lease", "revoke", &lease]),
        DENIED,
        "revoke a lease on others' keys",
    );
    expect_err(
        run(
            &on_leader,
            &alice,
            &["lease", "timetolive", &lease, "--keys"],
        ),
        DENIED,
        "keys of the lease",
    );
    expect_err(
        run(
            &on_leader,
            &alice,
            &["put", "app/l", "v", "--lease", &lease],
        ),
        DENIED,
        "attach to it",
    );
    expect_ok(
        run(&on_leader, &alice, &["lease", "timetolive", &lease]),
        "granted with TTL",
        "ttl without keys",
    );

    // Lock and Election: inside her prefix only.
    expect_ok(
        run(&on_follower, &alice, &["lock", "app/lk", "echo", "held"]),
        "held",
        "lock inside",
    );
    expect_err(
        run(&on_follower, &alice, &["lock", "locks/x", "echo", "held"]),
        DENIED,
        "lock outside",
    );
    expect_err(
        run(&on_follower, &alice, &["elect", "elections/x", "me"]),
        DENIED,
        "campaign outside",
    );
    expect_err(
        run(&on_follower, &alice, &["elect", "-l", "elections/x"]),
        "elect:",
        "observe outside",
    );

    // Watch: refused at creation with etcd's cancel reason.
    let watched = run(&on_follower, &alice, &["watch", "secret"]);
    assert!(
        watched.out.contains("permission denied"),
        "watch outside: {}",
        watched.out
    );

    // A token issued before a password change stops working: etcd's "invalid auth token".
    let channel = cluster.channel(follower);
    let token = AuthClient::new(channel.clone())
        .authenticate(AuthenticateRequest {
            name: "alice".into(),
            password: "alicepw".into(),
        })
        .await
        .expect("authenticate")
        .into_inner()
        .token;
    let with_token = |token: &str, key: &str| {
        let mut request = tonic::Request::new(RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        });
        let value = MetadataValue::try_from(token).expect("ascii token");
        request.metadata_mut().insert("token", value);
        request
    };
    let mut kv = KvClient::new(channel.clone());
    kv.range(with_token(&token, "app/t"))
        .await
        .expect("token works");
    let denied = kv.range(with_token(&token, "secret")).await.unwrap_err();
    assert_eq!(
        (denied.code(), denied.message()),
        (Code::PermissionDenied, DENIED)
    );
    let forged = kv.range(with_token("forged.1", "app/t")).await.unwrap_err();
    assert_eq!(
        (forged.code(), forged.message()),
        (Code::Unauthenticated, "etcdserver: invalid auth token")
    );
    let passwd = [
        "--user",
        "root:rootpw",
        "user",
        "passwd",
        "alice",
        "--interactive=false",
    ];
    expect_ok(
        etcdctl(&on_leader, &passwd, Some("newpw\n")),
        "Password updated",
        "passwd",
    );
    let stale = poll("the old token refused on the follower", || {
        let mut kv = kv.clone();
        let request = with_token(&token, "app/t");
        async move { kv.range(request).await.err() }
    })
    .await;
    assert_eq!(
        (stale.code(), stale.message()),
        (Code::Unauthenticated, "etcdserver: invalid auth token")
    );

    // A role revocation moves the auth revision: older tokens stop working even though the
    // user and password are unchanged (clients authenticate again on this error).
    let token = AuthClient::new(channel.clone())
        .authenticate(AuthenticateRequest {
            name: "root".into(),
            password: "rootpw".into(),
        })
        .await
        .expect("authenticate root")
        .into_inner()
        .token;
    let mut put = tonic::Request::new(PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    });
    put.metadata_mut().insert(
        "token",
        MetadataValue::try_from(token.as_str()).expect("ascii"),
    );
    kv.put(put).await.expect("fresh root token");
    expect_ok(
        run(
            &on_leader,
            &root,
            &["role", "revoke-permission", "app", "shared"],
        ),
        "",
        "revoke",
    );
    let old = poll("the pre-revocation token refused", || {
        let mut kv = kv.clone();
        let request = with_token(&token, "k");
        async move { kv.range(request).await.err() }
    })
    .await;
    assert_eq!(
        (old.code(), old.message()),
        (
            Code::InvalidArgument,
            "etcdserver: revision of auth store is old"
        )
    );

    // Disabling auth opens everything again.
    expect_ok(
        run(&on_leader, &root, &["auth", "disable"]),
        "Authentication Disabled",
        "disable",
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    expect_ok(
        run(&on_follower, &[], &["get", "secret"]),
        "x",
        "open again",
    );
    cluster.terminate(&[0, 1, 2], 5_000).await;
}

/// `--auth-token-ttl`: a token unused for longer stops working, one in use stays valid; and a
/// restart keeps users, roles and the flag (replicated state) but no token (memory only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_ttl_and_restart() {
    let cluster = Cluster::new(1, Backend::Redb, None);
    let mut args = cluster.args(0, &[0], "new");
    args.extend(["--auth-token-ttl".to_string(), "2".to_string()]);
    args.extend(["--bcrypt-cost".to_string(), "4".to_string()]);
    let log = cluster.dir.path().join("ttl.log");
    let mut process = common::spawn_aspen(&args, &log);
    let endpoint = cluster.members[0].client_url().replace("http://", "");
    poll("the member serving", || async {
        etcdctl(&endpoint, &["endpoint", "health"], None)
            .ok
            .then_some(())
    })
    .await;
    expect_ok(
        etcdctl(&endpoint, &["user", "add", "root:pw"], None),
        "created",
        "root",
    );
    expect_ok(
        etcdctl(&endpoint, &["auth", "enable"], None),
        "Enabled",
        "enable",
    );

    let channel = cluster.channel(0);
    let authenticate = || {
        let channel = channel.clone();
        async move {
            AuthClient::new(channel)
                .authenticate(AuthenticateRequest {
                    name: "root".into(),
                    password: "pw".into(),
                })
                .await
                .expect("authenticate")
                .into_inner()
                .token
        }
    };
    let get = |token: String| {
        let mut kv = KvClient::new(channel.clone());
        async move {
            let mut request = tonic::Request::new(RangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            });
            let value = MetadataValue::try_from(token.as_str()).expect("ascii");
            request.metadata_mut().insert("token", value);
            kv.range(request).await
        }
    };
    let idle = authenticate().await;
    let busy = authenticate().await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        get(busy.clone()).await.expect("a token in use stays valid");
    }
    let expired = get(idle).await.expect_err("idle for 3.2 s, TTL 2 s");
    assert_eq!(
        (expired.code(), expired.message()),
        (Code::Unauthenticated, "etcdserver: invalid auth token")
    );

    // Restart: the auth store is on disk, tokens are not.
    process.sigterm();
    assert!(process.wait_exit(10_000).await.is_some(), "stopped");
    let mut process = common::spawn_aspen(&args, &cluster.dir.path().join("ttl-2.log"));
    poll("the member serving again", || async {
        let ran = etcdctl(
            &endpoint,
            &["--user", "root:pw", "endpoint", "health"],
            None,
        );
        ran.ok.then_some(())
    })
    .await;
    expect_err(
        etcdctl(&endpoint, &["get", "k"], None),
        "etcdserver: user name is empty",
        "auth still enabled after a restart",
    );
    let forgotten = get(busy)
        .await
        .expect_err("tokens do not survive a restart");
    assert_eq!(forgotten.code(), Code::Unauthenticated);
    let fresh = authenticate().await;
    get(fresh).await.expect("a new token works");
    process.sigterm();
    process.wait_exit(10_000).await;
}
