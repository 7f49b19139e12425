//! Harness for the real-process cluster tests: `aspen` processes on free loopback ports,
//! killed when dropped, etcd gRPC clients, and bounded polling. Every wait has a deadline;
//! nothing sleeps for a fixed time and then asserts.

// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use aspen_proto::etcdserverpb::cluster_client::ClusterClient;
use aspen_proto::etcdserverpb::kv_client::KvClient;
use aspen_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use aspen_proto::etcdserverpb::{PutRequest, RangeRequest, RangeResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

/// Longest any single condition is waited for.
pub const WAIT_MS_MAX: u64 = 20_000;
/// Time between two checks of a polled condition.
pub const POLL_INTERVAL_MS: u64 = 50;
/// Small Raft timings keep elections and failover fast on loopback.
pub const HEARTBEAT_INTERVAL_MS: u64 = 50;
pub const ELECTION_TIMEOUT_MS: u64 = 500;
/// Deadline of one gRPC call from a test; a forwarded write may wait for a leader (5 s).
pub const RPC_TIMEOUT_MS: u64 = 8_000;
/// Deadline of one HTTP request to a metrics listener.
pub const HTTP_TIMEOUT_MS: u64 = 2_000;
/// Largest HTTP response read from a metrics listener.
pub const HTTP_RESPONSE_BYTES_MAX: u64 = 1024 * 1024;
/// Lines of each member's log printed when a test fails.
pub const LOG_TAIL_LINES: usize = 40;

/// How many tests of one test binary run their `aspen` processes at once, whatever
/// `--test-threads` says (libtest runs as many tests at once as there are cores): a test that
/// starts processes takes a turn first and holds it until it ends (a panic gives it back too).
/// Each binary sets its own limit:
///
/// ```ignore
/// static TURNS: Turns = Turns::new(1);
/// let _turn = TURNS.take().await;
/// ```
///
/// A test's own deadlines start once it has its turn, so waiting for one never times it out.
pub struct Turns {
    semaphore: tokio::sync::Semaphore,
}

impl Turns {
    pub const fn new(at_once: usize) -> Turns {
        assert!(
            at_once > 0,
            "a test binary runs at least one test at a time"
        );
        Turns {
            semaphore: tokio::sync::Semaphore::const_new(at_once),
        }
    }

    /// Waits until fewer than `at_once` tests of this binary hold a turn, then holds one.
    pub async fn take(&'static self) -> tokio::sync::SemaphorePermit<'static> {
        match self.semaphore.acquire().await {
            Ok(turn) => turn,
            Err(closed) => unreachable!("the turns' semaphore is never closed: {closed}"),
        }
    }
}

/// A port that was free a moment ago: bind port 0 on loopback, read it, release it.
/// A loopback port free now and not handed out before by this process: the OS may give the
/// same ephemeral port to two binds in a row once the first listener is closed, and two flags
/// of one member then name the same port.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    const ATTEMPTS_MAX: u32 = 1000;
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..ATTEMPTS_MAX {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        if handed_out.insert(port) {
            return port;
        }
    }
    panic!("no new free port after {ATTEMPTS_MAX} attempts");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Redb,
    Memory,
}

impl Backend {
    fn flag(self) -> &'static str {
        match self {
            Backend::Redb => "redb",
            Backend::Memory => "memory",
        }
    }
}

/// Where one member listens and keeps its data. Fixed for the member's life, so a restart
/// uses the same flags (and therefore the same member id).
#[derive(Debug, Clone)]
pub struct MemberSpec {
    pub name: String,
    pub data_dir: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    pub metrics_port: u16,
    /// `--snapshot-count`, or the default when `None`.
    pub snapshot_count: Option<u64>,
    /// Client and peer URLs are https (mutual TLS on both); metrics stay http.
    pub tls: bool,
}

impl MemberSpec {
    fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    pub fn client_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.peer_port)
    }

    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.metrics_port)
    }
}

/// One running `aspen` process. Killed (SIGKILL) and reaped when dropped.
pub struct Process {
    child: Child,
    pub log_path: PathBuf,
}

impl Process {
    /// A process the test spawned itself (e.g. to keep its stdout), with its stderr in
    /// `log_path`; killed and reaped when dropped, as those from [`spawn_aspen`].
    pub fn from_child(child: Child, log_path: PathBuf) -> Process {
        Process { child, log_path }
    }

    /// The process id, for reading `/proc/<pid>`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: `pid` is our own child, not yet reaped, so the id names that process.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(
            rc,
            0,
            "kill(SIGTERM) failed: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, ...) without waiting.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: `pid` is our own child, not yet reaped, so the id names that process.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill({signal}) failed: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Waits for the process to exit, polling until `timeout_ms`.
    pub async fn wait_exit(&mut self, timeout_ms: u64) -> Option<ExitStatus> {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `aspen` with exactly `args`; its stderr (where it logs and reports errors) goes to
/// `log_path`. Stdout carries only help and `--print-config`, unused here.
pub fn spawn_aspen(args: &[String], log_path: &Path) -> Process {
    let log = File::create(log_path).expect("create log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_aspen"));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // Only the flags given here configure the member; the test's own ASPEN_* variables must
    // not leak in. ASPEN_LOG (the log filter) is kept for debugging a failing run.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("ASPEN_") && key != "ASPEN_LOG" {
            command.env_remove(&key);
        }
    }
    let child = command.spawn().expect("spawn aspen");
    Process {
        child,
        log_path: log_path.to_path_buf(),
    }
}

/// A test CA and the certificates it issued, in `<cluster dir>/pki`: one per member (used for
/// both its client and peer listeners, and as its client certificate towards peers), and one
/// for the test's clients (CN "root").
pub struct TestPki {
    pub dir: PathBuf,
    pub ca: aspen_tls::CertificateAuthority,
    pub ca_file: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub client: aspen_tls::ClientTls,
}

impl TestPki {
    pub fn new(dir: &Path) -> TestPki {
        let dir = dir.join("pki");
        std::fs::create_dir_all(&dir).expect("pki dir");
        let ca = aspen_tls::CertificateAuthority::new("aspen test ca").expect("ca");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).expect("write ca");
        let (client_cert, client_key) = ca
            .issue(&aspen_tls::LeafOptions::new("root", &[]))
            .expect("client cert")
            .write(&dir, "client")
            .expect("write client cert");
        let client = aspen_tls::ClientTls::new(&aspen_tls::ClientTlsOptions {
            ca_file: Some(ca_file.clone()),
            cert_file: Some(client_cert.clone()),
            key_file: Some(client_key.clone()),
            insecure_skip_verify: false,
        })
        .expect("client tls");
        TestPki {
            dir,
            ca,
            ca_file,
            client_cert,
            client_key,
            client,
        }
    }

    /// Issues `<name>.pem` / `<name>-key.pem` for 127.0.0.1 and localhost (overwriting).
    pub fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        self.ca
            .issue(&aspen_tls::LeafOptions::new(
                name,
                &["127.0.0.1", "localhost"],
            ))
            .expect("issue")
            .write(&self.dir, name)
            .expect("write cert")
    }

    /// etcdctl's TLS flags for the test client's certificate.
    pub fn etcdctl_flags(&self) -> Vec<String> {
        vec![
            format!("--cacert={}", self.ca_file.display()),
            format!("--cert={}", self.client_cert.display()),
            format!("--key={}", self.client_key.display()),
        ]
    }
}

/// A set of members, some running. Members are indices into `members`.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub token: String,
    pub backend: Backend,
    pub members: Vec<MemberSpec>,
    /// Set by [`Cluster::with_tls`].
    pub pki: Option<TestPki>,
    processes: Vec<Option<Process>>,
    starts: u32,
    /// Flags every member gets after the harness's own.
    pub extra_args: Vec<String>,
}

impl Cluster {
    /// Plans `size` members (nothing starts yet).
    pub fn new(size: usize, backend: Backend, snapshot_count: Option<u64>) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("aspen-cluster-")
            .tempdir()
            .expect("tempdir");
        let token = format!(
            "test-{}-{}",
            std::process::id(),
            dir.path().file_name().unwrap_or_default().to_string_lossy()
        );
        let mut cluster = Cluster {
            dir,
            token,
            backend,
            members: Vec::new(),
            pki: None,
            processes: Vec::new(),
            starts: 0,
            extra_args: Vec::new(),
        };
        for _ in 0..size {
            cluster.plan_member(snapshot_count);
        }
        cluster
    }

    /// Every member serves clients and peers over https with mutual TLS (certificates from a
    /// fresh test CA); call before starting any member.
    pub fn with_tls(mut self) -> Cluster {
        let pki = TestPki::new(self.dir.path());
        for member in &mut self.members {
            member.tls = true;
            pki.issue(&member.name);
        }
        self.pki = Some(pki);
        self
    }

    /// Plans one more member with fresh ports and data dir; returns its index.
    pub fn plan_member(&mut self, snapshot_count: Option<u64>) -> usize {
        let index = self.members.len();
        let name = format!("m{index}");
        let data_dir = self.dir.path().join(&name);
        self.members.push(MemberSpec {
            name,
            data_dir,
            client_port: free_port(),
            peer_port: free_port(),
            metrics_port: free_port(),
            snapshot_count,
            tls: self.pki.is_some(),
        });
        if let Some(pki) = &self.pki {
            pki.issue(&format!("m{index}"));
        }
        self.processes.push(None);
        index
    }

    /// `--initial-cluster` listing `members`.
    pub fn initial_cluster(&self, members: &[usize]) -> String {
        let entries: Vec<String> = members
            .iter()
            .map(|&i| format!("{}={}", self.members[i].name, self.members[i].peer_url()))
            .collect();
        entries.join(",")
    }

    /// The flags member `index` runs with.
    pub fn args(&self, index: usize, initial_cluster: &[usize], state: &str) -> Vec<String> {
        let spec = &self.members[index];
        let mut args = vec![
            "--name".to_string(),
            spec.name.clone(),
            "--data-dir".into(),
            spec.data_dir.display().to_string(),
            "--listen-client-urls".into(),
            spec.client_url(),
            "--advertise-client-urls".into(),
            spec.client_url(),
            "--listen-peer-urls".into(),
            spec.peer_url(),
            "--initial-advertise-peer-urls".into(),
            spec.peer_url(),
            "--listen-metrics-urls".into(),
            spec.metrics_url(),
            "--initial-cluster".into(),
            self.initial_cluster(initial_cluster),
            "--initial-cluster-state".into(),
            state.into(),
            "--initial-cluster-token".into(),
            self.token.clone(),
            "--heartbeat-interval".into(),
            HEARTBEAT_INTERVAL_MS.to_string(),
            "--election-timeout".into(),
            ELECTION_TIMEOUT_MS.to_string(),
            "--storage-backend".into(),
            self.backend.flag().into(),
        ];
        if let Some(count) = spec.snapshot_count {
            args.push("--snapshot-count".into());
            args.push(count.to_string());
        }
        if let Some(pki) = self.pki.as_ref().filter(|_| spec.tls) {
            let cert = pki.dir.join(format!("{}.pem", spec.name));
            let key = pki.dir.join(format!("{}-key.pem", spec.name));
            let ca = &pki.ca_file;
            for prefix in ["", "peer-"] {
                args.push(format!("--{prefix}cert-file={}", cert.display()));
                args.push(format!("--{prefix}key-file={}", key.display()));
                args.push(format!("--{prefix}trusted-ca-file={}", ca.display()));
                args.push(format!("--{prefix}client-cert-auth"));
            }
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// A fresh log file for the next start of member `index`.
    pub fn next_log_path(&mut self, index: usize) -> PathBuf {
        self.starts += 1;
        let name = format!("{}-start{}.log", self.members[index].name, self.starts);
        self.dir.path().join(name)
    }

    /// Starts member `index` with `--initial-cluster` listing `initial_cluster`.
    pub fn start_with(&mut self, index: usize, initial_cluster: &[usize], state: &str) {
        assert!(
            self.processes[index].is_none(),
            "member {index} already runs"
        );
        let args = self.args(index, initial_cluster, state);
        let log_path = self.next_log_path(index);
        self.processes[index] = Some(spawn_aspen(&args, &log_path));
    }

    /// Starts (or restarts) member `index` as a founding member of the planned cluster.
    pub fn start(&mut self, index: usize) {
        let founders: Vec<usize> = (0..self.members.len()).collect();
        self.start_with(index, &founders, "new");
    }

    pub fn start_all(&mut self) {
        for index in 0..self.members.len() {
            self.start(index);
        }
    }

    pub fn process(&mut self, index: usize) -> &mut Process {
        self.processes[index]
            .as_mut()
            .unwrap_or_else(|| panic!("member {index} is not running"))
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&mut self, index: usize) {
        let process = self.processes[index].take();
        assert!(process.is_some(), "member {index} is not running");
        drop(process);
    }

    /// Whether member `index` has a process (running or stopped).
    pub fn is_running(&self, index: usize) -> bool {
        self.processes[index].is_some()
    }

    /// SIGSTOP: the process freezes with its sockets open, as a member that hangs would.
    pub fn stop(&mut self, index: usize) {
        self.process(index).signal(libc::SIGSTOP);
    }

    /// SIGCONT: a stopped member resumes where it froze.
    pub fn cont(&mut self, index: usize) {
        self.process(index).signal(libc::SIGCONT);
    }

    /// Sends SIGTERM to every member in `indices` at once, then waits for each to exit and
    /// returns their statuses (None: still running after `timeout_ms`, then killed).
    pub async fn terminate(
        &mut self,
        indices: &[usize],
        timeout_ms: u64,
    ) -> Vec<Option<ExitStatus>> {
        for &index in indices {
            self.process(index).sigterm();
        }
        let mut statuses = Vec::with_capacity(indices.len());
        for &index in indices {
            let mut process = self.processes[index].take().expect("running");
            statuses.push(process.wait_exit(timeout_ms).await);
        }
        statuses
    }

    pub fn channel(&self, index: usize) -> Channel {
        let endpoint = Endpoint::from_shared(self.members[index].client_url())
            .expect("client url")
            .connect_timeout(Duration::from_millis(1_000))
            .timeout(Duration::from_millis(RPC_TIMEOUT_MS));
        match self.pki.as_ref().filter(|_| self.members[index].tls) {
            Some(pki) => endpoint.connect_with_connector_lazy(pki.client.connector()),
            None => endpoint.connect_lazy(),
        }
    }

    pub fn kv(&self, index: usize) -> KvClient<Channel> {
        KvClient::new(self.channel(index))
    }

    pub fn cluster_api(&self, index: usize) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel(index))
    }

    pub fn maintenance(&self, index: usize) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channel(index))
    }

    /// The id member `index` derives from its flags (peer URLs and token).
    pub fn member_id(&self, index: usize) -> u64 {
        aspen_server::config::member_id(
            &self.members[index].name,
            &[self.members[index].peer_url()],
            &self.token,
        )
    }

    /// Member `index`'s Prometheus text, if its metrics listener answers.
    pub async fn metrics(&self, index: usize) -> Option<String> {
        let (status, body) = http_get(self.members[index].metrics_port, "/metrics").await?;
        (status == 200).then_some(body)
    }

    /// Waits until every member of `among` reports a leader and exactly one of them reports
    /// being it; returns that one.
    pub async fn wait_leader(&self, among: &[usize]) -> usize {
        let description = format!("a leader among members {among:?}");
        poll(&description, || async {
            let mut leaders = Vec::new();
            for &index in among {
                let text = self.metrics(index).await?;
                if gauge(&text, "etcd_server_has_leader")? != 1 {
                    return None;
                }
                if gauge(&text, "etcd_server_is_leader")? == 1 {
                    leaders.push(index);
                }
            }
            (leaders.len() == 1).then(|| leaders[0])
        })
        .await
    }

    /// Puts `key` through member `index`, retrying failed attempts (printed) until the
    /// deadline; returns the revision of the write that was acknowledged.
    pub async fn put(&self, index: usize, key: &str, value: &str) -> i64 {
        put_retry(&self.kv(index), key, value, &format!("member {index}")).await
    }

    /// One range of exactly `key` on member `index`; no retry.
    pub async fn get(
        &self,
        index: usize,
        key: &str,
        serializable: bool,
    ) -> Result<RangeResponse, tonic::Status> {
        let request = RangeRequest {
            key: key.as_bytes().to_vec(),
            serializable,
            ..Default::default()
        };
        Ok(self.kv(index).range(request).await?.into_inner())
    }

    /// Every key under `prefix` on member `index`.
    pub async fn get_prefix(
        &self,
        index: usize,
        prefix: &str,
        serializable: bool,
    ) -> Result<RangeResponse, tonic::Status> {
        let request = RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            serializable,
            ..Default::default()
        };
        Ok(self.kv(index).range(request).await?.into_inner())
    }

    /// Prints the tail of every log this cluster wrote; called when a test fails.
    pub fn dump_logs(&self) {
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        let mut logs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for path in logs {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!("===== {} (last {} lines) =====", path.display(), tail.len());
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        // Processes are killed by their own Drop before the temp dir goes away.
        self.processes.clear();
    }
}

/// Puts `key` through `kv`, retrying failed attempts (printed) until the deadline; returns
/// the revision of the acknowledged write. A retried put may apply twice, which a test that
/// compares values (not counts of revisions) does not mind.
pub async fn put_retry(kv: &KvClient<Channel>, key: &str, value: &str, via: &str) -> i64 {
    let description = format!("put {key} via {via}");
    poll(&description, || {
        let mut kv = kv.clone();
        let request = PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        };
        let description = description.clone();
        async move {
            match kv.put(request).await {
                Ok(reply) => Some(reply.into_inner().header.expect("header").revision),
                Err(status) => {
                    eprintln!("{description}: {status}; retrying");
                    None
                }
            }
        }
    })
    .await
}

/// The smallest key greater than every key starting with `prefix` (etcd's prefix range end).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Calls `check` every `POLL_INTERVAL_MS` until it returns `Some`, for at most `WAIT_MS_MAX`;
/// panics naming `what` when the deadline passes.
pub async fn poll<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT_MS_MAX} ms waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
}

/// A gauge's value from Prometheus text.
pub fn gauge(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// A minimal HTTP/1.1 GET on loopback: (status, body), or None if the listener does not answer.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        let mut limited = (&mut stream).take(HTTP_RESPONSE_BYTES_MAX);
        limited.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status: u16 = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_millis(HTTP_TIMEOUT_MS), exchange)
        .await
        .ok()
        .flatten()
}

/// A raw HTTP/2 connection to a client port, for tests that send gRPC frames by hand; its
/// connection task runs on the test's runtime.
pub async fn http2_sender<B>(port: u16) -> hyper::client::conn::http2::SendRequest<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    sender
}

/// One gRPC message on the wire: `flag` (0: as is, 1: compressed), its length, its bytes.
pub fn grpc_frame(flag: u8, message: &[u8]) -> Vec<u8> {
    let mut framed = vec![flag];
    framed.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    framed.extend_from_slice(message);
    framed
}
