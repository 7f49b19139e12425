//! The start-up configuration: defaults, precedence of the four sources, every refusal, ids and
//! help. The environment is always injected; no test touches the process's own.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use aspen_core::limits::{
    Limits, QUOTA_BACKEND_BYTES_DEFAULT, REQUEST_BYTES_MAX_DEFAULT, TXN_OPS_MAX_DEFAULT,
};
use aspen_server::config::{
    ClusterBootstrapConfig, ClusterState, ConfigErrors, InitialMember, LogLevel, cluster_id,
    member_id,
};
use aspen_storage::StorageBackend;

fn args(flags: &[&str]) -> Vec<String> {
    std::iter::once("aspen")
        .chain(flags.iter().copied())
        .map(String::from)
        .collect()
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load(flags: &[&str], vars: &[(&str, &str)]) -> ClusterBootstrapConfig {
    match ClusterBootstrapConfig::from_sources(&args(flags), &env(vars)) {
        Ok(config) => config,
        Err(errors) => panic!("expected a configuration, got:\n{errors}"),
    }
}

fn problems(flags: &[&str], vars: &[(&str, &str)]) -> Vec<String> {
    match ClusterBootstrapConfig::from_sources(&args(flags), &env(vars)) {
        Ok(config) => panic!("expected problems, got {config:?}"),
        Err(ConfigErrors::Invalid(problems)) => problems,
        Err(other) => panic!("expected problems, got {other:?}"),
    }
}

/// Asserts that `flags` is refused with exactly `expected` among the problems.
fn refused(flags: &[&str], expected: &str) {
    let found = problems(flags, &[]);
    assert!(
        found.iter().any(|p| p == expected),
        "expected the problem\n  {expected}\ngot\n  {}",
        found.join("\n  ")
    );
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write temp file");
    file
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

#[test]
fn defaults_follow_etcd() {
    let config = load(&[], &[]);
    assert_eq!(config.name, "default");
    assert_eq!(config.data_dir, PathBuf::from("default.aspen"));
    assert_eq!(
        config.storage_backend,
        StorageBackend::Redb {
            dir: PathBuf::from("default.aspen/member")
        }
    );
    assert_eq!(config.listen_client_addrs, vec![addr("127.0.0.1:2379")]);
    assert_eq!(config.advertise_client_urls, vec!["http://127.0.0.1:2379"]);
    assert_eq!(config.listen_peer_addrs, vec![addr("127.0.0.1:2380")]);
    assert_eq!(
        config.initial_advertise_peer_urls,
        vec!["http://127.0.0.1:2380"]
    );
    assert_eq!(
        config.initial_cluster,
        vec![InitialMember {
            name: "default".to_string(),
            peer_urls: vec!["http://127.0.0.1:2380".to_string()],
        }]
    );
    assert_eq!(config.initial_cluster_state, ClusterState::New);
    assert_eq!(config.initial_cluster_token, "aspen-cluster");
    assert_eq!(config.heartbeat_interval_ms, 100);
    assert_eq!(config.election_timeout_ms, 1000);
    assert_eq!(config.snapshot_count, 100_000);
    assert_eq!(config.limits, Limits::default());
    assert_eq!(
        config.limits.quota_backend_bytes,
        QUOTA_BACKEND_BYTES_DEFAULT
    );
    assert_eq!(config.limits.request_bytes_max, REQUEST_BYTES_MAX_DEFAULT);
    assert_eq!(config.limits.txn_ops_max, TXN_OPS_MAX_DEFAULT);
    assert!(config.listen_metrics_addrs.is_empty());
    assert_eq!(config.log_level, LogLevel::Info);
    assert_eq!(config.config_file, None);
    assert!(config.warnings.is_empty());
}

#[test]
fn defaults_derive_from_name_and_listen_urls() {
    let config = load(
        &[
            "--name",
            "n1",
            "--listen-client-urls",
            "http://10.0.0.1:3379",
            "--listen-peer-urls",
            "http://10.0.0.1:3380,http://10.0.0.2:3380",
        ],
        &[],
    );
    assert_eq!(config.data_dir, PathBuf::from("n1.aspen"));
    assert_eq!(config.advertise_client_urls, vec!["http://10.0.0.1:3379"]);
    assert_eq!(
        config.initial_advertise_peer_urls,
        vec!["http://10.0.0.1:3380", "http://10.0.0.2:3380"]
    );
    assert_eq!(config.initial_cluster.len(), 1);
    assert_eq!(config.initial_cluster[0].name, "n1");
    assert_eq!(
        config.initial_cluster[0].peer_urls,
        config.initial_advertise_peer_urls
    );
}

#[test]
fn precedence_is_flag_then_env_then_file_then_default() {
    let file = config_file(
        "name = \"from-file\"\n\
         heartbeat-interval = 150\n\
         listen-client-urls = \"http://127.0.0.1:5001\"\n\
         log-level = \"warn\"\n",
    );
    let path = file.path().to_str().expect("utf-8 temp path");
    let vars = [
        ("ASPEN_NAME", "from-env"),
        ("ASPEN_HEARTBEAT_INTERVAL", "160"),
        ("ASPEN_LISTEN_CLIENT_URLS", "http://127.0.0.1:5002"),
    ];
    let flags = [
        "--config-file",
        path,
        "--name",
        "from-flag",
        "--heartbeat-interval",
        "170",
        "--listen-client-urls",
        "http://127.0.0.1:5003",
    ];

    let defaults = load(&[], &[]);
    assert_eq!(defaults.name, "default");
    assert_eq!(defaults.heartbeat_interval_ms, 100);
    assert_eq!(defaults.listen_client_addrs, vec![addr("127.0.0.1:2379")]);

    let file_only = load(&flags[..2], &[]);
    assert_eq!(file_only.name, "from-file");
    assert_eq!(file_only.heartbeat_interval_ms, 150);
    assert_eq!(file_only.listen_client_addrs, vec![addr("127.0.0.1:5001")]);
    assert_eq!(file_only.log_level, LogLevel::Warn);
    assert_eq!(file_only.config_file.as_deref(), Some(file.path()));

    let file_and_env = load(&flags[..2], &vars);
    assert_eq!(file_and_env.name, "from-env");
    assert_eq!(file_and_env.heartbeat_interval_ms, 160);
    assert_eq!(
        file_and_env.listen_client_addrs,
        vec![addr("127.0.0.1:5002")]
    );
    assert_eq!(
        file_and_env.log_level,
        LogLevel::Warn,
        "env leaves it to the file"
    );

    let all = load(&flags, &vars);
    assert_eq!(all.name, "from-flag");
    assert_eq!(all.heartbeat_interval_ms, 170);
    assert_eq!(all.listen_client_addrs, vec![addr("127.0.0.1:5003")]);
    assert_eq!(all.log_level, LogLevel::Warn, "flags leave it to the file");
    assert_eq!(all.data_dir, PathBuf::from("from-flag.aspen"));
}

#[test]
fn env_alone_overrides_defaults_and_may_name_the_config_file() {
    let file = config_file("snapshot-count = 42\nelection-timeout = 2000\n");
    let path = file.path().to_str().expect("utf-8 temp path");
    let config = load(
        &["--election-timeout", "3000"],
        &[("ASPEN_CONFIG_FILE", path), ("ASPEN_MAX_TXN_OPS", "256")],
    );
    assert_eq!(config.snapshot_count, 42);
    assert_eq!(config.election_timeout_ms, 3000);
    assert_eq!(config.limits.txn_ops_max, 256);
    assert_eq!(config.config_file.as_deref(), Some(file.path()));
}

#[test]
fn a_flag_names_the_config_file_over_the_env() {
    let from_env = config_file("name = \"env-file\"\n");
    let from_flag = config_file("name = \"flag-file\"\n");
    let config = load(
        &["--config-file", from_flag.path().to_str().expect("utf-8")],
        &[(
            "ASPEN_CONFIG_FILE",
            from_env.path().to_str().expect("utf-8"),
        )],
    );
    assert_eq!(config.name, "flag-file");
}

#[test]
fn empty_env_values_are_unset_and_unknown_aspen_vars_warn() {
    let config = load(
        &[],
        &[
            ("ASPEN_NAME", ""),
            ("ASPEN_FROBNICATE", "1"),
            ("PATH", "/bin"),
        ],
    );
    assert_eq!(config.name, "default");
    assert_eq!(
        config.warnings,
        vec!["ignoring unrecognized environment variable ASPEN_FROBNICATE"]
    );
}

#[test]
fn last_repeated_flag_wins() {
    let config = load(&["--name", "a", "--name", "b"], &[]);
    assert_eq!(config.name, "b");
}

#[test]
fn a_multi_member_cluster_resolves() {
    let config = load(
        &[
            "--name",
            "n2",
            "--listen-peer-urls",
            "http://0.0.0.0:2380",
            "--initial-advertise-peer-urls",
            "http://b:2380,http://b2:2380",
            "--initial-cluster",
            "n1=http://a:2380,n2=http://b2:2380,n3=http://c:2380,n2=http://B:2380",
            "--initial-cluster-state",
            "existing",
            "--storage-backend",
            "memory",
            "--listen-metrics-urls",
            "http://localhost:9090,http://[::1]:9091",
            "--log-level",
            "debug",
        ],
        &[],
    );
    let names: Vec<&str> = config
        .initial_cluster
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(names, ["n1", "n2", "n3"]);
    assert_eq!(
        config.initial_cluster[1].peer_urls,
        vec!["http://b2:2380", "http://b:2380"],
        "URLs in order given, host names lower-cased"
    );
    assert_eq!(config.listen_peer_addrs, vec![addr("0.0.0.0:2380")]);
    assert_eq!(config.initial_cluster_state, ClusterState::Existing);
    assert_eq!(config.storage_backend, StorageBackend::InMemory);
    assert_eq!(
        config.listen_metrics_addrs,
        vec![addr("127.0.0.1:9090"), addr("[::1]:9091")]
    );
    assert_eq!(config.log_level, LogLevel::Debug);
    assert_eq!(
        config.member_id(),
        config.initial_cluster[1].member_id("aspen-cluster")
    );
}

#[test]
fn refuses_each_bad_setting_with_a_clear_line() {
    refused(
        &["--name", "n1", "--initial-cluster", "n1=http://a:2380,n2"],
        "--initial-cluster: member 'n2' has no URL",
    );
    refused(
        &["--name", "n1", "--initial-cluster", "n1=http://a:2380,n2="],
        "--initial-cluster: member 'n2' has no URL",
    );
    refused(
        &["--election-timeout", "50"],
        "--election-timeout (50 ms) must be at least 5x --heartbeat-interval (100 ms)",
    );
    refused(
        &["--election-timeout", "60000", "--heartbeat-interval", "100"],
        "--election-timeout (60000 ms) must be at most 50000 ms",
    );
    refused(
        &["--heartbeat-interval", "0"],
        "--heartbeat-interval must be greater than 0 ms",
    );
    refused(
        &["--listen-client-urls", "htp://x"],
        "--listen-client-urls: 'htp://x' is not an http:// or https:// URL with host and port",
    );
    refused(
        &["--listen-client-urls", "http://127.0.0.1"],
        "--listen-client-urls: 'http://127.0.0.1' is not an http:// or https:// URL with host and port",
    );
    refused(
        &["--initial-cluster", "n1=http://a:2380", "--name", "x"],
        "--name 'x' is not in --initial-cluster",
    );
    refused(
        &["--name", "x", "--initial-cluster", "x=http://a:2380"],
        "--initial-advertise-peer-urls do not match the URLs of 'x' in --initial-cluster \
         (http://127.0.0.1:2380 vs http://a:2380)",
    );
    refused(
        &["--initial-cluster-state", "foo"],
        "--initial-cluster-state must be 'new' or 'existing', got 'foo'",
    );
    refused(
        &["--storage-backend", "rocks"],
        "--storage-backend must be 'redb' or 'memory', got 'rocks'",
    );
    refused(
        &["--log-level", "loud"],
        "--log-level must be 'debug', 'info', 'warn' or 'error', got 'loud'",
    );
    refused(
        &["--snapshot-count", "0"],
        "--snapshot-count must be greater than 0",
    );
    refused(&["--name", ""], "--name must not be empty");
}

#[test]
fn https_without_a_certificate_is_refused_with_etcds_messages() {
    refused(
        &["--listen-client-urls", "https://127.0.0.1:2379"],
        "TLS key/cert (--cert-file, --key-file) must be provided for client url \
         https://127.0.0.1:2379 with HTTPS scheme",
    );
    refused(
        &["--listen-peer-urls", "https://127.0.0.1:2380"],
        "cannot listen on TLS for 127.0.0.1:2380: KeyFile and CertFile are not presented",
    );
    refused(
        &["--listen-metrics-urls", "https://127.0.0.1:2381"],
        "cannot listen on TLS for 127.0.0.1:2381: KeyFile and CertFile are not presented",
    );
    refused(
        &["--cert-file", "c.pem"],
        "--cert-file and --key-file must be given together",
    );
    refused(
        &["--peer-key-file", "k.pem"],
        "--peer-cert-file and --peer-key-file must be given together",
    );
    refused(
        &[
            "--cert-file",
            "c.pem",
            "--key-file",
            "k.pem",
            "--client-cert-auth",
        ],
        "--client-cert-auth needs --trusted-ca-file (the CA that client certificates must \
         chain to)",
    );
    refused(
        &["--cipher-suites", "TLS_NOT_A_SUITE"],
        "--cipher-suites: unexpected TLS cipher suite \"TLS_NOT_A_SUITE\"",
    );
}

#[test]
fn tls_flags_resolve_per_listener() {
    use aspen_server::tls::CertSource;
    let config = load(
        &[
            "--listen-client-urls",
            "https://127.0.0.1:2379,http://127.0.0.1:22379",
            "--advertise-client-urls",
            "https://127.0.0.1:2379",
            "--listen-peer-urls",
            "https://127.0.0.1:2380",
            "--cert-file",
            "server.pem",
            "--key-file",
            "server-key.pem",
            "--trusted-ca-file",
            "ca.pem",
            "--client-cert-auth",
            "--peer-auto-tls",
            "--cipher-suites",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        ],
        &[("ASPEN_PEER_CLIENT_CERT_AUTH", "true")],
    );
    let tls = &config.tls;
    assert_eq!(tls.client_https, vec![true, false]);
    assert_eq!(tls.peer_https, vec![true]);
    assert!(tls.peers_use_tls, "the member's own peer URL is https");
    assert_eq!(
        tls.client.cert,
        Some(CertSource::Files {
            cert_file: PathBuf::from("server.pem"),
            key_file: PathBuf::from("server-key.pem"),
        })
    );
    assert!(tls.client.client_cert_auth);
    assert_eq!(tls.peer.cert, Some(CertSource::Auto));
    assert!(tls.peer.client_cert_auth);
    assert_eq!(tls.cipher_suites.len(), 2);
    assert_eq!(config.advertise_client_urls, vec!["https://127.0.0.1:2379"]);
    assert_eq!(
        config.initial_cluster[0].peer_urls,
        vec!["https://127.0.0.1:2380"]
    );
    // --print-config round-trips the TLS settings.
    let file = config_file(&config.to_toml());
    let path = file.path().display().to_string();
    let again = load(&["--config-file", &path], &[]);
    assert_eq!(again.tls, config.tls);
    assert_eq!(again.listen_client_addrs, config.listen_client_addrs);
}

#[test]
fn certificates_on_http_urls_are_a_warning_as_in_etcd() {
    let config = load(&["--cert-file", "c.pem", "--key-file", "k.pem"], &[]);
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.starts_with("scheme is HTTP while key and cert files are present")),
        "{:?}",
        config.warnings
    );
}

#[test]
fn refuses_bad_urls_of_every_kind() {
    refused(
        &["--listen-client-urls", "http://example.com:2379"],
        "--listen-client-urls: 'http://example.com:2379' names host 'example.com'; listen URLs \
         take an IP address or localhost",
    );
    refused(
        &["--listen-client-urls", "http://127.0.0.1:2379/v3"],
        "--listen-client-urls: 'http://127.0.0.1:2379/v3' has a path or query; give only \
         http://host:port",
    );
    refused(
        &["--advertise-client-urls", "http://0.0.0.0:2379"],
        "--advertise-client-urls: 'http://0.0.0.0:2379' is the wildcard address 0.0.0.0, which \
         nobody can reach; advertise a specific address",
    );
    refused(
        &["--listen-client-urls", "http://0.0.0.0:2379"],
        "--advertise-client-urls (defaulted from --listen-client-urls): 'http://0.0.0.0:2379' is \
         the wildcard address 0.0.0.0, which nobody can reach; advertise a specific address",
    );
    refused(
        &["--listen-client-urls", ""],
        "--listen-client-urls: no URL given",
    );
    refused(
        &["--listen-client-urls", "http://127.0.0.1:2380"],
        "--listen-peer-urls: 127.0.0.1:2380 is also in --listen-client-urls",
    );
    refused(
        &[
            "--listen-client-urls",
            "http://127.0.0.1:1,http://localhost:1",
        ],
        "--listen-client-urls: 127.0.0.1:1 is listed twice",
    );
    refused(
        &[
            "--initial-cluster",
            "default=http://127.0.0.1:2380,n2=http://127.0.0.1:2380",
        ],
        "--initial-cluster: URL 'http://127.0.0.1:2380' is listed more than once",
    );
}

#[test]
fn a_wrong_listen_url_is_not_reported_again_under_its_advertised_default() {
    let found = problems(&["--listen-client-urls", "htp://x"], &[]);
    assert_eq!(
        found,
        vec![
            "--listen-client-urls: 'htp://x' is not an http:// or https:// URL with host and port"
        ]
    );
}

#[test]
fn refuses_limits_through_limits_validate() {
    refused(
        &["--max-txn-ops", "0"],
        "--max-txn-ops must be greater than 0",
    );
    refused(
        &["--quota-backend-bytes", "1000"],
        "--quota-backend-bytes must be at least 1 MiB",
    );
    refused(
        &["--max-request-bytes", "0"],
        "--max-request-bytes must be greater than 0",
    );
}

#[test]
fn reports_every_problem_at_once() {
    let found = problems(
        &[
            "--election-timeout",
            "50",
            "--storage-backend",
            "x",
            "--initial-cluster-state",
            "foo",
            "--listen-peer-urls",
            "https://1.2.3.4:1",
        ],
        &[],
    );
    assert_eq!(found.len(), 4, "{found:#?}");
}

#[test]
fn refuses_unparsable_sources_naming_each() {
    let file = config_file("heartbeat-interval = \"fast\"\n");
    let path = file.path().to_str().expect("utf-8 temp path");
    // The file is named by the environment: a command line that does not parse names nothing.
    let found = problems(
        &["--bogus"],
        &[
            ("ASPEN_CONFIG_FILE", path),
            ("ASPEN_ELECTION_TIMEOUT", "soon"),
        ],
    );
    assert_eq!(found.len(), 3, "{found:#?}");
    assert_eq!(found[0], "unexpected argument '--bogus' found");
    assert!(
        found[1].starts_with(
            "ASPEN_ELECTION_TIMEOUT: invalid value 'soon' for '--election-timeout <MS>'"
        ),
        "{found:#?}"
    );
    assert_eq!(
        found[2],
        format!(
            "--config-file: {path}: line 1, column 22: invalid type: string \"fast\", \
             expected u64"
        )
    );
}

#[test]
fn refuses_config_file_syntax_errors_and_missing_files() {
    let file = config_file("name = \"unterminated\n");
    let path = file.path().to_str().expect("utf-8 temp path");
    let found = problems(&["--config-file", path], &[]);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].starts_with(&format!("--config-file: {path}: line 1, column ")));

    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.toml");
    let found = problems(&["--config-file", missing.to_str().expect("utf-8")], &[]);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].starts_with(&format!("--config-file: {}: ", missing.display())));
}

#[test]
fn refuses_every_unknown_config_file_key() {
    let file = config_file("name = \"a\"\nlisten_client_urls = \"x\"\nfoo = 1\n[bar]\n");
    let path = file.path().to_str().expect("utf-8 temp path");
    let found = problems(&["--config-file", path], &[]);
    assert_eq!(
        found,
        vec![
            format!(
                "--config-file: {path}: line 2: unknown key 'listen_client_urls' \
                 (did you mean 'listen-client-urls'?)"
            ),
            format!("--config-file: {path}: line 3: unknown key 'foo'"),
            format!("--config-file: {path}: line 4: unknown key 'bar'"),
        ]
    );
}

#[test]
fn help_and_version_are_not_errors() {
    let help = ClusterBootstrapConfig::from_sources(&args(&["--help"]), &env(&[]));
    let Err(help @ ConfigErrors::HelpOrVersion(_)) = help else {
        panic!("expected help, got {help:?}");
    };
    assert_eq!(help.exit_code(), 0);
    assert!(help.to_string().contains("--initial-cluster-token"));
    assert!(
        help.to_string()
            .contains("[env: ASPEN_INITIAL_CLUSTER_TOKEN]")
    );
    let version = ClusterBootstrapConfig::from_sources(&args(&["--version"]), &env(&[]));
    assert!(
        matches!(version, Err(ConfigErrors::HelpOrVersion(text)) if text.starts_with("aspen "))
    );
}

#[test]
fn help_lists_every_flag_with_its_default_and_variable() {
    let help = ClusterBootstrapConfig::command().render_help().to_string();
    let flags_and_defaults = [
        ("name", "default".to_string()),
        ("data-dir", "${name}.aspen".to_string()),
        ("listen-client-urls", "http://127.0.0.1:2379".to_string()),
        ("advertise-client-urls", "--listen-client-urls".to_string()),
        ("listen-peer-urls", "http://127.0.0.1:2380".to_string()),
        (
            "initial-advertise-peer-urls",
            "--listen-peer-urls".to_string(),
        ),
        (
            "initial-cluster",
            "${name}=${initial-advertise-peer-urls}".to_string(),
        ),
        ("initial-cluster-state", "new".to_string()),
        ("initial-cluster-token", "aspen-cluster".to_string()),
        ("heartbeat-interval", "100".to_string()),
        ("election-timeout", "1000".to_string()),
        ("snapshot-count", "100000".to_string()),
        (
            "quota-backend-bytes",
            QUOTA_BACKEND_BYTES_DEFAULT.to_string(),
        ),
        ("max-request-bytes", REQUEST_BYTES_MAX_DEFAULT.to_string()),
        ("max-txn-ops", TXN_OPS_MAX_DEFAULT.to_string()),
        ("listen-metrics-urls", "none".to_string()),
        ("log-level", "info".to_string()),
        ("storage-backend", "redb".to_string()),
        ("config-file", "none".to_string()),
    ];
    for (flag, default) in flags_and_defaults {
        let variable = format!("ASPEN_{}", flag.to_uppercase().replace('-', "_"));
        let entry = help
            .split("\n\n")
            .flat_map(|block| block.split("\n      --"))
            .find(|entry| {
                entry
                    .trim_start_matches("      --")
                    .starts_with(&format!("{flag} "))
            })
            .unwrap_or_else(|| panic!("--{flag} missing from help:\n{help}"));
        assert!(
            entry.contains(&format!("[default: {default}]")),
            "--{flag} does not show default {default}: {entry}"
        );
        assert!(
            entry.contains(&format!("[env: {variable}]")),
            "--{flag} does not name {variable}: {entry}"
        );
    }
}

#[test]
fn printed_config_reads_back_as_the_same_config() {
    let original = load(
        &[
            "--name",
            "n\"1",
            "--initial-cluster",
            "n\"1=http://127.0.0.1:2380,n2=http://h2:2380",
            "--listen-metrics-urls",
            "http://127.0.0.1:9000",
            "--storage-backend",
            "memory",
            "--max-txn-ops",
            "64",
        ],
        &[],
    );
    let file = config_file(&original.to_toml());
    let path = file.path().to_str().expect("utf-8 temp path");
    let mut read_back = load(&["--config-file", path], &[]);
    assert_eq!(read_back.config_file.as_deref(), Some(file.path()));
    read_back.config_file = None;
    assert_eq!(read_back, original);
}

#[test]
fn member_and_cluster_ids_are_stable() {
    let urls = vec![
        "http://10.0.0.2:2380".to_string(),
        "http://10.0.0.1:2380".to_string(),
    ];
    let id = member_id("n1", &urls, "aspen-cluster");
    // Computed once; ids live in the Raft log, so this value must never change.
    assert_eq!(id, 15_409_466_192_346_129_534);
    let reversed: Vec<String> = urls.iter().rev().cloned().collect();
    assert_eq!(
        member_id("n1", &reversed, "aspen-cluster"),
        id,
        "URL order is irrelevant"
    );
    assert_eq!(
        member_id("renamed", &urls, "aspen-cluster"),
        id,
        "the name is not hashed"
    );
    assert_ne!(member_id("n1", &urls, "other-token"), id);
    assert_ne!(member_id("n1", &urls[..1], "aspen-cluster"), id);

    let cluster = cluster_id(&[3, 1, 2], "aspen-cluster");
    assert_eq!(cluster, 3_123_823_213_176_409_389);
    assert_eq!(cluster_id(&[2, 3, 1], "aspen-cluster"), cluster);
    assert_ne!(cluster_id(&[1, 2], "aspen-cluster"), cluster);
    assert_ne!(cluster_id(&[3, 1, 2], "other-token"), cluster);

    let config = load(&[], &[]);
    let expected = member_id(
        "default",
        &["http://127.0.0.1:2380".to_string()],
        "aspen-cluster",
    );
    assert_eq!(config.member_id(), expected);
    assert_eq!(
        config.initial_cluster_id(),
        cluster_id(&[expected], "aspen-cluster")
    );
}

#[test]
fn auth_flags_default_to_etcds_and_are_checked() {
    let config = load(&[], &[]);
    assert_eq!(config.auth.token_ttl, std::time::Duration::from_secs(300));
    assert_eq!(config.auth.bcrypt_cost, 10);
    let config = load(
        &["--auth-token", "simple", "--auth-token-ttl", "60"],
        &[("ASPEN_BCRYPT_COST", "4")],
    );
    assert_eq!(config.auth.token_ttl, std::time::Duration::from_secs(60));
    assert_eq!(config.auth.bcrypt_cost, 4);
    refused(
        &[
            "--auth-token",
            "jwt,pub-key=/nonexistent/a,sign-method=RS256",
        ],
        "--auth-token: cannot read pub-key '/nonexistent/a': No such file or directory (os \
         error 2)",
    );
    refused(
        &["--auth-token", "jwt,pub-key=a,pub-key=b,sign-method=RS256"],
        "--auth-token: jwt option 'pub-key' is given twice",
    );
    refused(
        &["--auth-token", "jwt,sign-method"],
        "--auth-token: 'sign-method' is not key=value",
    );
    refused(
        &["--auth-token", "opaque"],
        "--auth-token 'opaque' is not a token type; use \"simple\" or \"jwt,...\"",
    );
    refused(
        &["--auth-token-ttl", "0"],
        "--auth-token-ttl must be greater than 0 seconds",
    );
    refused(
        &["--bcrypt-cost", "3"],
        "--bcrypt-cost 3 is out of bcrypt's range 4 to 31",
    );
}

#[test]
fn force_new_cluster_comes_from_every_source_and_is_off_by_default() {
    assert!(!load(&[], &[]).force_new_cluster);
    assert!(load(&["--force-new-cluster"], &[]).force_new_cluster);
    assert!(load(&["--force-new-cluster=true"], &[]).force_new_cluster);
    assert!(load(&[], &[("ASPEN_FORCE_NEW_CLUSTER", "true")]).force_new_cluster);
    let file = config_file("force-new-cluster = true\n");
    let path = file.path().to_str().expect("utf-8 path");
    let from_file = load(&["--config-file", path], &[]);
    assert!(from_file.force_new_cluster);
    // A flag overrides the file, as every setting.
    assert!(!load(&["--config-file", path, "--force-new-cluster=false"], &[]).force_new_cluster);
    // --print-config writes it back only when on.
    assert!(from_file.to_toml().contains("force-new-cluster = true"));
    assert!(!load(&[], &[]).to_toml().contains("force-new-cluster"));
    let help = ClusterBootstrapConfig::command().render_help().to_string();
    assert!(help.contains("--force-new-cluster"), "{help}");
    assert!(help.contains("ASPEN_FORCE_NEW_CLUSTER"), "{help}");
}
