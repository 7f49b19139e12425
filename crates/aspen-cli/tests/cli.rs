//! aspenctl against a real single-member Aspen: starts `target/debug/aspen` (building it first
//! if it is missing), runs the commands a person would, and checks their output and exit codes.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to answer its first health check.
const SERVER_READY_S_MAX: u64 = 60;

fn aspenctl() -> &'static str {
    env!("CARGO_BIN_EXE_aspenctl")
}

/// `target/debug/aspen` beside this package (or under CARGO_TARGET_DIR), built if missing.
fn aspen_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let binary = target.join("debug/aspen");
    if !binary.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "aspen-server", "--bin", "aspen"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build -p aspen-server");
        assert!(status.success(), "cargo build -p aspen-server failed");
    }
    assert!(binary.is_file(), "no aspen binary at {}", binary.display());
    binary
}

/// Distinct free ports: every listener is held until all are chosen.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local addr").port())
}

/// A running member, stopped when dropped.
struct Server {
    child: Child,
    endpoint: String,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> Server {
    let data = tempfile::tempdir().expect("temp dir");
    let [client, peer] = free_ports();
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(aspen_binary())
        .args(["--name", "n1", "--data-dir"])
        .arg(data.path().join("n1"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("n1={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start aspen");
    let server = Server {
        child,
        endpoint: format!("127.0.0.1:{client}"),
        _data: data,
    };
    let deadline = Instant::now() + Duration::from_secs(SERVER_READY_S_MAX);
    // Bounded by the deadline.
    while ctl(&server, &["endpoint", "health"], None).status.code() != Some(0) {
        assert!(Instant::now() < deadline, "aspen did not become healthy");
        std::thread::sleep(Duration::from_millis(200));
    }
    server
}

fn ctl(server: &Server, args: &[&str], stdin: Option<&str>) -> Output {
    run_ctl(&server.endpoint, args, stdin)
}

fn run_ctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(aspenctl())
        .args(["--endpoints", endpoint])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run aspenctl");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("aspenctl output")
}

/// Runs a command that must succeed; returns its stdout.
fn ok(server: &Server, args: &[&str]) -> String {
    ok_with_stdin(server, args, None)
}

fn ok_with_stdin(server: &Server, args: &[&str], stdin: Option<&str>) -> String {
    let out = ctl(server, args, stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "aspenctl {args:?} failed: {stderr}"
    );
    String::from_utf8(out.stdout).expect("utf8 stdout")
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn commands_against_a_running_member() {
    let server = start_server();

    assert_eq!(ok(&server, &["put", "foo", "bar"]), "OK\n");
    assert_eq!(ok(&server, &["get", "foo"]), "foo\nbar\n");
    assert_eq!(ok(&server, &["put", "foo2", "baz"]), "OK\n");
    assert_eq!(
        ok(&server, &["get", "foo", "--prefix", "--keys-only"]),
        "foo\n\nfoo2\n\n"
    );
    assert_eq!(
        ok(&server, &["get", "foo", "--prefix", "--count-only"]),
        "2\n"
    );
    assert_eq!(
        ok(
            &server,
            &[
                "get",
                "foo",
                "--prefix",
                "--sort-by",
                "key",
                "--order",
                "descend",
                "--limit",
                "1"
            ]
        ),
        "foo2\nbaz\n"
    );
    let got = json(&ok(&server, &["get", "foo", "-w", "json"]));
    assert_eq!(got["kvs"][0]["key"], "Zm9v");
    assert_eq!(got["kvs"][0]["value"], "YmFy");
    assert_eq!(got["count"], 1);

    // txn: the compare holds, so the success branch runs.
    let script = "value(\"foo\") = \"bar\"\n\nput foo new\nget foo\n\nget foo\n";
    assert_eq!(
        ok_with_stdin(&server, &["txn"], Some(script)),
        "SUCCESS\n\nOK\n\nfoo\nnew\n"
    );
    // Now it does not: the failure branch reads the key.
    assert_eq!(
        ok_with_stdin(&server, &["txn"], Some(script)),
        "FAILURE\n\nfoo\nnew\n"
    );
    let modified = "mod(\"foo\") > \"0\"\n\ndel foo2\n\n";
    assert_eq!(
        ok_with_stdin(&server, &["txn"], Some(modified)),
        "SUCCESS\n\n1\n"
    );

    assert_eq!(ok(&server, &["del", "foo", "--prev-kv"]), "1\nfoo\nnew\n");
    assert_eq!(ok(&server, &["del", "missing"]), "0\n");
    assert_eq!(ok(&server, &["get", "foo"]), "");

    // A member publishes its client URLs through Raft shortly after it starts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let members = loop {
        let members = ok(&server, &["member", "list"]);
        if members.trim_end().ends_with(", false") && !members.contains(", , false") {
            break members;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "client URL never published: {members}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(members.lines().count(), 1, "{members}");
    assert!(
        members.contains(", started, n1, http://127.0.0.1:"),
        "{members}"
    );
    let listed = json(&ok(&server, &["member", "list", "-w", "json"]));
    assert_eq!(listed["members"][0]["name"], "n1");

    let table = ok(&server, &["endpoint", "status", "--cluster", "-w", "table"]);
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(rows.len(), 2, "{table}");
    for header in [
        "ID",
        "NAME",
        "ENDPOINT",
        "LEADER",
        "TERM",
        "RAFT INDEX",
        "APPLIED INDEX",
        "DB SIZE",
    ] {
        assert!(rows[0].contains(header), "no {header} column: {table}");
    }
    let cells: Vec<&str> = rows[1].split('|').map(str::trim).collect();
    assert_eq!(cells[2], "n1", "{table}");
    assert_eq!(cells[3], server.endpoint, "{table}");
    assert_eq!(cells[4], "yes", "{table}");

    // watch from a past revision: deterministic, no race with the puts.
    let first = json(&ok(&server, &["put", "w/a", "1", "-w", "json"]));
    let from = first["header"]["revision"]
        .as_u64()
        .expect("revision")
        .to_string();
    ok(&server, &["put", "w/a", "2"]);
    let events = ok(
        &server,
        &[
            "watch",
            "w/",
            "--prefix",
            "--rev",
            &from,
            "--max-events",
            "2",
        ],
    );
    assert_eq!(events, "PUT\nw/a\n1\nPUT\nw/a\n2\n");

    let granted = ok(&server, &["lease", "grant", "60"]);
    let id = granted
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    assert_eq!(granted, format!("lease {id} granted with TTL(60s)\n"));
    assert_eq!(ok(&server, &["put", "leased", "v", "--lease", &id]), "OK\n");
    let ttl = ok(&server, &["lease", "timetolive", &id, "--keys"]);
    assert!(ttl.ends_with(", attached keys([leased])\n"), "{ttl}");
    assert_eq!(
        ok(&server, &["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(ok(&server, &["get", "leased"]), "");

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("snap.db");
    let file_arg = file.to_str().expect("utf8 path");
    let saved = ok(&server, &["snapshot", "save", file_arg]);
    assert_eq!(saved, format!("Snapshot saved at {file_arg}\n"));
    assert!(file.is_file());
    assert!(!dir.path().join("snap.db.part").exists());
    let status = ok(&server, &["snapshot", "status", file_arg]);
    // The Snapshot RPC sends etcd's format: etcdctl's own hash, revision and key count.
    assert!(
        status.starts_with("etcd v3 (bbolt), sha256 ok, crc32 -, hash "),
        "{status}"
    );
}

#[test]
fn failures_exit_with_their_codes() {
    let server = start_server();
    // Usage: a missing argument, a bad txn script, conflicting flags.
    assert_eq!(ctl(&server, &["get"], None).status.code(), Some(2));
    let bad = ctl(&server, &["txn"], Some("size(\"k\") = \"1\"\n"));
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.starts_with("aspenctl: txn: malformed comparison"),
        "{stderr}"
    );
    assert_eq!(
        ctl(&server, &["get", "a", "--prefix", "--from-key"], None)
            .status
            .code(),
        Some(2)
    );
    // The server says no: one line with etcd's text, exit 1.
    let refused = ctl(&server, &["put", "k", "v", "--lease", "1234"], None);
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr),
        "aspenctl: put k: etcdserver: requested lease not found\n"
    );
    // Nobody listens: exit 3.
    let [port] = free_ports();
    let unreachable = run_ctl(&format!("127.0.0.1:{port}"), &["get", "k"], None);
    assert_eq!(unreachable.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert!(
        stderr.starts_with(&format!("aspenctl: cannot connect to 127.0.0.1:{port}")),
        "{stderr}"
    );
    // --help is not an error.
    assert_eq!(ctl(&server, &["--help"], None).status.code(), Some(0));
}

/// A member serving clients over https with `--client-cert-auth`, and the TLS files aspenctl
/// is given (from a CA made for the test).
struct TlsServer {
    child: Child,
    endpoint: String,
    dir: tempfile::TempDir,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsServer {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// aspenctl with `flags` (TLS flags) then `args`.
    fn ctl(&self, flags: &[String], args: &[&str]) -> Output {
        Command::new(aspenctl())
            .args(["--endpoints", &self.endpoint, "--dial-timeout", "2s"])
            .args(flags)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run aspenctl")
    }

    fn good_flags(&self) -> Vec<String> {
        vec![
            format!("--cacert={}", self.path("ca.pem")),
            format!("--cert={}", self.path("client.pem")),
            format!("--key={}", self.path("client-key.pem")),
        ]
    }
}

fn start_tls_server() -> TlsServer {
    use aspen_tls::{CertificateAuthority, LeafOptions};
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = CertificateAuthority::new("cli test ca").expect("ca");
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).expect("write ca");
    let issue = |name: &str, hosts: &[&str]| {
        ca.issue(&LeafOptions::new(name, hosts))
            .expect("issue")
            .write(dir.path(), name)
            .expect("write")
    };
    let (server_cert, server_key) = issue("server", &["127.0.0.1"]);
    issue("client", &[]);
    // Client certificates whose Common Names are user names (etcd's --client-cert-auth rule).
    issue("root", &[]);
    issue("alice", &[]);
    let other = CertificateAuthority::new("other ca").expect("ca");
    std::fs::write(dir.path().join("other-ca.pem"), other.cert_pem()).expect("write");
    let [client, peer] = free_ports();
    let client_url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(aspen_binary())
        .args(["--name", "n1", "--data-dir"])
        .arg(dir.path().join("n1"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("n1={peer_url}")])
        .arg("--cert-file")
        .arg(&server_cert)
        .arg("--key-file")
        .arg(&server_key)
        .arg("--trusted-ca-file")
        .arg(dir.path().join("ca.pem"))
        .arg("--client-cert-auth")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start aspen");
    let server = TlsServer {
        child,
        endpoint: format!("127.0.0.1:{client}"),
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(SERVER_READY_S_MAX);
    // Bounded by the deadline.
    while server
        .ctl(&server.good_flags(), &["endpoint", "health"])
        .status
        .code()
        != Some(0)
    {
        assert!(Instant::now() < deadline, "aspen did not become healthy");
        std::thread::sleep(Duration::from_millis(200));
    }
    server
}

#[test]
fn tls_flags_against_a_mutual_tls_member() {
    let server = start_tls_server();
    let good = server.good_flags();
    let stdout = |out: &Output| String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = |out: &Output| String::from_utf8_lossy(&out.stderr).into_owned();

    let out = server.ctl(&good, &["put", "k", "v"]);
    assert_eq!(stdout(&out), "OK\n", "{}", stderr(&out));
    let out = server.ctl(&good, &["get", "k", "--print-value-only"]);
    assert_eq!(stdout(&out), "v\n", "{}", stderr(&out));
    // The member's advertised https URL, found through MemberList, dialed with TLS.
    // (The member publishes its client URLs just after it starts serving: retry, bounded.)
    let deadline = Instant::now() + Duration::from_secs(SERVER_READY_S_MAX);
    let out = loop {
        let out = server.ctl(&good, &["endpoint", "status", "--cluster", "-w", "json"]);
        if out.status.code() == Some(0) || Instant::now() >= deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let expected = format!("\"Endpoint\":\"{}\"", server.endpoint);
    assert!(stdout(&out).contains(&expected), "{}", stdout(&out));
    // bench takes the same flags.
    let out = server.ctl(
        &good,
        &["bench", "--clients", "4", "--total", "200", "--json", "put"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("\"errors\":0"), "{}", stdout(&out));

    // No client certificate: the member refuses it.
    let ca_only = vec![format!("--cacert={}", server.path("ca.pem"))];
    let out = server.ctl(&ca_only, &["get", "k"]);
    assert_ne!(out.status.code(), Some(0));
    // With TLS 1.3 the client may be writing when the member's alert arrives: the message
    // is the alert (CertificateRequired) or the connection it closed.
    assert!(
        stderr(&out).starts_with("aspenctl: get k: "),
        "{}",
        stderr(&out)
    );
    // A CA that did not sign the member's certificate: aspenctl refuses the member (exit 3).
    let wrong_ca = vec![
        format!("--cacert={}", server.path("other-ca.pem")),
        format!("--cert={}", server.path("client.pem")),
        format!("--key={}", server.path("client-key.pem")),
    ];
    let out = server.ctl(&wrong_ca, &["get", "k"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("UnknownIssuer"), "{}", stderr(&out));
    // --insecure-skip-tls-verify skips that check (the client certificate is still sent).
    let insecure = vec![
        "--insecure-skip-tls-verify".to_string(),
        format!("--cert={}", server.path("client.pem")),
        format!("--key={}", server.path("client-key.pem")),
    ];
    let out = server.ctl(&insecure, &["get", "k", "--print-value-only"]);
    assert_eq!(stdout(&out), "v\n", "{}", stderr(&out));
    // A key that is not the certificate's: a usage error before anything is sent.
    let mismatched = vec![
        format!("--cacert={}", server.path("ca.pem")),
        format!("--cert={}", server.path("client.pem")),
        format!("--key={}", server.path("server-key.pem")),
    ];
    let out = server.ctl(&mismatched, &["get", "k"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a usable pair"),
        "{}",
        stderr(&out)
    );
    // Plain HTTP/2 to the https port fails.
    let out = Command::new(aspenctl())
        .args(["--endpoints", &format!("http://{}", server.endpoint)])
        .args([
            "--dial-timeout",
            "2s",
            "--command-timeout",
            "3s",
            "get",
            "k",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run aspenctl");
    assert_ne!(out.status.code(), Some(0));
}

/// Runs a command that must fail; returns its stderr.
fn fails(server: &Server, args: &[&str], code: i32) -> String {
    let out = ctl(server, args, None);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "aspenctl {args:?}: {stderr}");
    stderr
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn users_roles_and_auth_through_aspenctl() {
    let server = start_server();
    let root = ["--user", "root:rootpw"];
    let with = |user: &[&str], args: &[&str]| -> Vec<String> {
        user.iter().chain(args).map(|s| s.to_string()).collect()
    };

    assert_eq!(
        ok(&server, &["user", "add", "root:rootpw"]),
        "User root created\n"
    );
    // The root role is missing: like etcdctl, `auth enable` adds and grants it, then enables.
    assert_eq!(ok(&server, &["auth", "enable"]), "Authentication Enabled\n");
    let status = ok(&server, &as_strs(&with(&root, &["auth", "status"])));
    assert!(
        status.starts_with("Authentication Status: true\n"),
        "{status}"
    );
    assert!(
        fails(&server, &["put", "k", "v"], 1).contains("etcdserver: user name is empty"),
        "no user"
    );
    assert!(
        fails(&server, &["--user", "root:wrong", "get", "k"], 1)
            .contains("etcdserver: authentication failed, invalid user ID or password")
    );
    assert!(fails(&server, &["--user", "root", "get", "k"], 2).contains("needs a password"));

    for args in [
        vec!["role", "add", "app"],
        vec![
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "app/",
            "--prefix",
        ],
        vec!["role", "grant-permission", "app", "read", "k1", "k5"],
        vec!["user", "add", "alice", "--new-user-password", "alicepw"],
        vec!["user", "grant-role", "alice", "app"],
    ] {
        ok(&server, &as_strs(&with(&root, &args)));
    }
    assert_eq!(
        ok(&server, &as_strs(&with(&root, &["role", "get", "app"]))),
        "Role app\nKV Read:\n\t[app/, app0) (prefix app/)\n\t[k1, k5)\nKV Write:\n\t[app/, app0) (prefix app/)\n"
    );
    assert_eq!(
        ok(&server, &as_strs(&with(&root, &["user", "get", "alice"]))),
        "User: alice\nRoles: app\n"
    );
    assert_eq!(
        ok(&server, &as_strs(&with(&root, &["user", "list"]))),
        "alice\nroot\n"
    );

    // alice, with --user NAME --password: her prefix only.
    let alice = ["--user", "alice", "--password", "alicepw"];
    assert_eq!(
        ok(&server, &as_strs(&with(&alice, &["put", "app/1", "v"]))),
        "OK\n"
    );
    assert_eq!(
        ok(
            &server,
            &as_strs(&with(&alice, &["get", "app/", "--prefix"]))
        ),
        "app/1\nv\n"
    );
    let denied = fails(&server, &as_strs(&with(&alice, &["put", "k2", "v"])), 1);
    assert!(denied.contains("etcdserver: permission denied"), "{denied}");
    let denied = fails(&server, &as_strs(&with(&alice, &["user", "list"])), 1);
    assert!(denied.contains("etcdserver: permission denied"), "{denied}");

    // A changed password: the old one fails, the new one works.
    assert_eq!(
        ok_with_stdin(
            &server,
            &as_strs(&with(&root, &["user", "passwd", "alice"])),
            Some("newpw\n")
        ),
        "Password updated\n"
    );
    fails(&server, &as_strs(&with(&alice, &["get", "app/1"])), 1);
    ok(&server, &["--user", "alice:newpw", "get", "app/1"]);

    // bench takes --user too: its requests carry the token (its keys are under
    // aspenctl-bench/, which alice may write once granted).
    let grant = [
        "role",
        "grant-permission",
        "app",
        "readwrite",
        "aspenctl-bench/",
        "--prefix",
    ];
    // Before the grant, through either client: the server's status, word for word.
    for wire in ["h2", "tonic"] {
        let denied = fails(
            &server,
            &[
                "--user",
                "alice:newpw",
                "bench",
                "--wire",
                wire,
                "--total",
                "5",
                "put",
            ],
            1,
        );
        assert!(
            denied.contains("etcdserver: permission denied"),
            "{wire}: {denied}"
        );
    }
    ok(&server, &as_strs(&with(&root, &grant)));
    let bench = ok(
        &server,
        &[
            "--user",
            "alice:newpw",
            "bench",
            "--total",
            "20",
            "--clients",
            "2",
            "--json",
            "put",
        ],
    );
    assert_eq!(json(&bench)["ops"], 20, "{bench}");

    assert_eq!(
        ok(
            &server,
            &as_strs(&with(
                &root,
                &["role", "revoke-permission", "app", "k1", "k5"]
            ))
        ),
        "Permission of range [k1, k5) is revoked from role app\n"
    );
    assert_eq!(
        ok(&server, &as_strs(&with(&root, &["auth", "disable"]))),
        "Authentication Disabled\n"
    );
    assert_eq!(ok(&server, &["get", "app/1", "--print-value-only"]), "v\n");
}

/// With `--client-cert-auth` and auth enabled, a request without a token acts as the user its
/// client certificate names (Common Name), as etcd does; a token still wins.
#[test]
fn a_client_certificate_names_the_user_once_auth_is_enabled() {
    let server = start_tls_server();
    let as_cert = |name: &str| -> Vec<String> {
        vec![
            format!("--cacert={}", server.path("ca.pem")),
            format!("--cert={}", server.path(&format!("{name}.pem"))),
            format!("--key={}", server.path(&format!("{name}-key.pem"))),
        ]
    };
    let run = |name: &str, args: &[&str]| -> (Option<i32>, String, String) {
        let out = server.ctl(&as_cert(name), args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for args in [
        vec!["user", "add", "root:rootpw"],
        vec!["user", "add", "alice", "--new-user-password", "alicepw"],
        vec!["role", "add", "reader"],
        vec![
            "role",
            "grant-permission",
            "reader",
            "read",
            "shared/",
            "--prefix",
        ],
        vec!["user", "grant-role", "alice", "reader"],
        vec!["put", "shared/k", "v"],
        vec!["auth", "enable"],
    ] {
        let (code, _, stderr) = run("root", &args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
    }
    // The root certificate, no token: root.
    let (code, stdout, stderr) = run("root", &["put", "shared/k", "v2"]);
    assert_eq!(
        (code, stdout.as_str()),
        (
            Some(0),
            "OK
"
        ),
        "{stderr}"
    );
    // alice's certificate: her read permission, and nothing more.
    let (code, stdout, stderr) = run("alice", &["get", "shared/k", "--print-value-only"]);
    assert_eq!(
        (code, stdout.as_str()),
        (
            Some(0),
            "v2
"
        ),
        "{stderr}"
    );
    let (code, _, stderr) = run("alice", &["put", "shared/k", "v3"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("etcdserver: permission denied"), "{stderr}");
    // A certificate whose name is no user ("client"): denied, never anonymous access.
    let (code, _, stderr) = run("client", &["get", "shared/k"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("permission denied"), "{stderr}");
    // A token wins over the certificate: alice's certificate with root's password is root.
    let mut args: Vec<String> = vec!["--user".into(), "root:rootpw".into()];
    args.extend(["put", "shared/k", "v4"].map(String::from));
    let out = server.ctl(
        &as_cert("alice"),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "OK\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every unary workload over both clients (`--wire h2`, the bench's own, and `--wire tonic`):
/// the requests land (the keys are there afterwards, the CAS keys advance) and nothing fails.
/// A server's error status through either client: `users_roles_and_auth_through_aspenctl`.
#[test]
fn bench_workloads_over_both_wires() {
    let server = start_server();
    for wire in ["h2", "tonic"] {
        let prefix_count = |prefix: &str| {
            let out = ok(
                &server,
                &["get", prefix, "--prefix", "--count-only", "-w", "json"],
            );
            json(&out)["count"].as_i64().unwrap_or(0)
        };
        ok(&server, &["del", "aspenctl-bench/", "--prefix"]);
        let put = ok(
            &server,
            &[
                "bench",
                "--wire",
                wire,
                "--clients",
                "8",
                "--conns",
                "2",
                "--json",
                "put",
                "--sequential-keys",
                "--key-space",
                "300",
            ],
        );
        assert_eq!(json(&put)["ops"], 300, "{wire}: {put}");
        assert_eq!(json(&put)["errors"], 0, "{wire}: {put}");
        assert_eq!(prefix_count("aspenctl-bench/kv/"), 300, "{wire}");
        for workload in [
            vec!["get", "--key-space", "300", "--no-populate"],
            vec![
                "get",
                "--consistency",
                "s",
                "--key-space",
                "300",
                "--no-populate",
            ],
            vec![
                "range",
                "--limit",
                "10",
                "--key-space",
                "300",
                "--no-populate",
            ],
            vec!["txn-cas", "--key-space", "2"],
        ] {
            let mut args = vec!["bench", "--wire", wire, "--clients", "4", "--total", "200"];
            args.push("--json");
            args.extend(workload.iter().copied());
            let out = ok(&server, &args);
            assert_eq!(json(&out)["ops"], 200, "{wire} {workload:?}: {out}");
            assert_eq!(json(&out)["errors"], 0, "{wire} {workload:?}: {out}");
        }
        // 200 CAS attempts over two keys: the ones that succeeded advanced the keys'
        // versions; a conflict reads the key back, so every attempt either wrote or saw
        // another's write.
        let cas = ok(
            &server,
            &["get", "aspenctl-bench/cas/", "--prefix", "-w", "json"],
        );
        let versions: i64 = json(&cas)["kvs"]
            .as_array()
            .map(|kvs| kvs.iter().filter_map(|kv| kv["version"].as_i64()).sum())
            .unwrap_or(0);
        assert!(versions > 0, "{wire}: {cas}");
    }
}
