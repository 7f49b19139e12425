//! Start-up configuration of one Aspen node.
//!
//! The flags are etcd's, with etcd's names, meanings and defaults. Every setting is read from, in
//! rising precedence: built-in defaults, a TOML file (`--config-file`), `ASPEN_<FLAG>`
//! environment variables, then the command line. (etcd instead ignores flags and environment
//! when given a config file; layering is kinder to operators who override one setting.)
//!
//! The libraries do the work:
//! - clap parses the command line, and each `ASPEN_*` variable as its flag would be, into the
//!   all-optional [`RawConfig`]; toml parses the file into the same struct.
//! - figment layers the sources (file, then each variable, then the command line: the last
//!   that sets a key wins) and remembers which source set each key, so that a problem with a
//!   value that did not come from the command line names its source.
//! - The merged result is checked as a whole ([`resolve`]: defaults, then checks) and every
//!   problem is reported at once, one line each, so an operator fixes a config in one pass.
//!
//! Adding a flag: one field in [`RawConfig`] (its doc comment is the `--help` line, with the
//! default), one in [`ClusterBootstrapConfig`], its default and checks in [`resolve`], and its
//! line in [`ClusterBootstrapConfig::to_toml`]. The environment variable and config-file key
//! come with the field.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use aspen_core::limits::{
    CLUSTER_MEMBERS_MAX, DISK_RESERVE_BYTES_DEFAULT, DISK_RESERVE_FS_DIVISOR, Limits,
    QUOTA_BACKEND_BYTES_DEFAULT, REQUEST_BYTES_MAX_DEFAULT, TXN_OPS_MAX_DEFAULT,
};
use aspen_storage::StorageBackend;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub const NAME_DEFAULT: &str = "default";
pub const LISTEN_CLIENT_URLS_DEFAULT: &str = "http://127.0.0.1:2379";
pub const LISTEN_PEER_URLS_DEFAULT: &str = "http://127.0.0.1:2380";
pub const INITIAL_CLUSTER_TOKEN_DEFAULT: &str = "aspen-cluster";
pub const HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 100;
pub const ELECTION_TIMEOUT_MS_DEFAULT: u64 = 1000;
/// etcd refuses election timeouts above 50 s: a cluster that slow to fail over is a mistake.
pub const ELECTION_TIMEOUT_MS_MAX: u64 = 50_000;
/// etcd's rule: an election timeout shorter than 5 heartbeats causes needless elections.
pub const ELECTION_TIMEOUT_HEARTBEATS_MIN: u64 = 5;
pub const SNAPSHOT_COUNT_DEFAULT: u64 = 100_000;
/// A config file is a few hundred bytes; refusing big files bounds what start-up reads.
pub const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Most URLs one flag (or one member of --initial-cluster) may list.
pub const URLS_PER_FLAG_MAX: u32 = 16;
/// Most destinations `--log-outputs` may list (each is written every log line).
pub const LOG_OUTPUTS_MAX: u32 = 16;
/// Environment variables for flags are this prefix plus the flag, upper-cased, `-` to `_`.
pub const ENV_PREFIX: &str = "ASPEN_";
/// The log filter (a tracing `EnvFilter` directive, read by the binary): an `ASPEN_*` variable
/// that is not a flag's, so not warned about.
pub const LOG_FILTER_ENV: &str = "ASPEN_LOG";
/// Where the redb file lives under `--data-dir`, as etcd keeps its data under `member/`.
/// The storage directory inside `--data-dir`: `log.redb`, `state.redb`, `snapshots/`.
pub const STORAGE_DIR_IN_DATA_DIR: &str = "member";

const ENV_HELP: &str = "Every flag can also be set by an environment variable ASPEN_<FLAG> \
(upper-cased, '-' as '_', e.g. ASPEN_LISTEN_CLIENT_URLS) or by a key in --config-file named as \
the flag without '--' (e.g. listen-client-urls = \"http://127.0.0.1:2379\"). Precedence: command \
line > environment > config file > default. URLs are http:// or https:// (TLS: --cert-file, \
--key-file, --auto-tls for clients and metrics; --peer-* for peers).";

/// The name figment records for the command line's layer: problems with values set there are
/// not annotated, since the flag each problem names is what the operator typed.
const COMMAND_LINE: &str = "the command line";

/// Whether this node starts a new cluster or joins one that exists (etcd's meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ClusterState {
    #[default]
    New,
    Existing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, ValueEnum)]
pub enum LogLevel {
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

/// How log lines are written (`--log-format`, or etcd's `--logger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (etcd's capnslog logger).
    #[default]
    Text,
    /// One JSON object per line, with `timestamp`, `level`, `target`, `message` and the
    /// event's fields (etcd's zap logger writes JSON lines too).
    Json,
}

/// etcd 3.4's `--logger`: only which format it implies is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
enum Logger {
    Zap,
    #[default]
    Capnslog,
}

/// `--storage-backend`; the directory of redb's comes from `--data-dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
enum StorageKind {
    #[default]
    Redb,
    Memory,
}

/// The name of an enum value as flags, variables and the config file spell it.
pub fn value_name<T: ValueEnum>(value: &T) -> String {
    value
        .to_possible_value()
        .map(|possible| possible.get_name().to_string())
        .unwrap_or_default()
}

/// One destination of `--log-outputs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOutput {
    Stderr,
    Stdout,
    /// Appended to; created when missing.
    File(PathBuf),
}

/// Opens a `--log-outputs` file as the server writes it: appending, created when missing.
pub fn open_log_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// One member of `--initial-cluster`: its name and its peer URLs, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    /// Canonical `http://host:port` strings.
    pub peer_urls: Vec<String>,
}

impl InitialMember {
    pub fn member_id(&self, token: &str) -> u64 {
        member_id(&self.name, &self.peer_urls, token)
    }
}

/// A node's validated start-up configuration. Build it with [`Self::from_sources`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterBootstrapConfig {
    pub name: String,
    pub data_dir: PathBuf,
    /// `Redb { dir: data_dir/member }` or `InMemory`.
    pub storage_backend: StorageBackend,
    pub listen_client_addrs: Vec<SocketAddr>,
    /// Canonical `http://host:port` strings; hosts may be names, never resolved here.
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_addrs: Vec<SocketAddr>,
    /// Canonical `http://host:port` strings; they equal this node's URLs in `initial_cluster`.
    pub initial_advertise_peer_urls: Vec<String>,
    /// In order of first appearance; contains `name`.
    pub initial_cluster: Vec<InitialMember>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    /// Applied entries between snapshots.
    pub snapshot_count: u64,
    pub limits: Limits,
    /// Empty: no separate listener for /metrics, /health and /version.
    pub listen_metrics_addrs: Vec<SocketAddr>,
    /// Which listeners are https, their certificates, and how peers are dialed.
    pub tls: crate::tls::TlsConfig,
    /// `--auto-compaction-mode` and `--auto-compaction-retention`; `None`: off.
    pub auto_compaction: Option<crate::auto_compaction::AutoCompaction>,
    pub log_level: LogLevel,
    /// `--force-new-cluster`: start as the only member of the cluster, with all this member's
    /// data (etcd's unsafe recovery flag; `aspen_storage::force_new_cluster`).
    pub force_new_cluster: bool,
    /// `--log-format`, or what `--logger` implies.
    pub log_format: LogFormat,
    /// `--log-outputs`: at least one, none twice; files were opened once to check them.
    pub log_outputs: Vec<LogOutput>,
    /// `--auth-token` (simple or jwt,...), `--auth-token-ttl`, `--bcrypt-cost`.
    pub auth: aspen_api::AuthOptions,
    /// The file read, if any; kept so the operator can be told where settings came from.
    pub config_file: Option<PathBuf>,
    /// Not errors, but worth printing at start-up (e.g. unrecognized `ASPEN_*` variables).
    pub warnings: Vec<String>,
}

/// Why no configuration came out of the sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigErrors {
    /// `--help` or `--version` was asked for: print this text to stdout and exit 0.
    HelpOrVersion(String),
    /// The configuration is unusable: every problem found, one line each.
    Invalid(Vec<String>),
}

impl ConfigErrors {
    /// The problems, one line each; empty for `HelpOrVersion`.
    pub fn problems(&self) -> &[String] {
        match self {
            ConfigErrors::HelpOrVersion(_) => &[],
            ConfigErrors::Invalid(problems) => problems,
        }
    }

    /// 0 for help or version, 2 (a usage error, as clap) for an invalid configuration.
    pub fn exit_code(&self) -> u8 {
        match self {
            ConfigErrors::HelpOrVersion(_) => 0,
            ConfigErrors::Invalid(_) => 2,
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigErrors::HelpOrVersion(text) => f.write_str(text),
            ConfigErrors::Invalid(problems) => f.write_str(&problems.join("\n")),
        }
    }
}

impl std::error::Error for ConfigErrors {}

/// Every setting as one source gives it: `None` means "this source does not say".
///
/// Deliberately no clap defaults: a default would hide whether the command line said anything,
/// and precedence needs to know. Defaults are applied in [`resolve`] and written in the help.
/// Enums and URLs stay strings here and are parsed in [`resolve`] (with clap's `ValueEnum` and
/// `http::Uri`), so that a wrong one is reported together with every other problem.
#[derive(Parser, Deserialize, Serialize, Debug, Default, Clone, PartialEq, Eq)]
#[command(
    name = "aspen",
    version,
    about = "Aspen: an etcd v3 compatible replicated key-value store",
    long_about = None,
    after_help = ENV_HELP,
    args_override_self = true
)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    /// Human-readable name of this member [default: default]
    #[arg(long, env = "ASPEN_NAME", value_name = "NAME")]
    name: Option<String>,
    /// Directory for this member's data [default: ${name}.aspen]
    #[arg(long, env = "ASPEN_DATA_DIR", value_name = "DIR")]
    data_dir: Option<String>,
    /// Comma-separated http:// or https:// URLs to serve clients on [default: http://127.0.0.1:2379]
    #[arg(long, env = "ASPEN_LISTEN_CLIENT_URLS", value_name = "URLS")]
    listen_client_urls: Option<String>,
    /// Comma-separated client URLs to advertise to the cluster [default: --listen-client-urls]
    #[arg(long, env = "ASPEN_ADVERTISE_CLIENT_URLS", value_name = "URLS")]
    advertise_client_urls: Option<String>,
    /// Comma-separated http:// or https:// URLs to serve peers on [default: http://127.0.0.1:2380]
    #[arg(long, env = "ASPEN_LISTEN_PEER_URLS", value_name = "URLS")]
    listen_peer_urls: Option<String>,
    /// Comma-separated peer URLs of this member, as the others reach it [default: --listen-peer-urls]
    #[arg(long, env = "ASPEN_INITIAL_ADVERTISE_PEER_URLS", value_name = "URLS")]
    initial_advertise_peer_urls: Option<String>,
    /// Initial members, "n1=http://a:2380,n2=http://b:2380"; repeat a name for more URLs [default: ${name}=${initial-advertise-peer-urls}]
    #[arg(long, env = "ASPEN_INITIAL_CLUSTER", value_name = "MEMBERS")]
    initial_cluster: Option<String>,
    /// "new" to bootstrap a cluster, "existing" to join one [default: new]
    #[arg(long, env = "ASPEN_INITIAL_CLUSTER_STATE", value_name = "STATE")]
    initial_cluster_state: Option<String>,
    /// Token that tells clusters apart; part of every member id [default: aspen-cluster]
    #[arg(long, env = "ASPEN_INITIAL_CLUSTER_TOKEN", value_name = "TOKEN")]
    initial_cluster_token: Option<String>,
    /// Time between leader heartbeats, in milliseconds [default: 100]
    #[arg(long, env = "ASPEN_HEARTBEAT_INTERVAL", value_name = "MS")]
    heartbeat_interval: Option<u64>,
    /// Time without a leader before an election, in milliseconds; at least 5 heartbeats [default: 1000]
    #[arg(long, env = "ASPEN_ELECTION_TIMEOUT", value_name = "MS")]
    election_timeout: Option<u64>,
    /// Applied entries between snapshots, as etcd's (a snapshot is one durable commit of the state; its data is written only for a follower that needs it) [default: 100000]
    #[arg(long, env = "ASPEN_SNAPSHOT_COUNT", value_name = "ENTRIES")]
    snapshot_count: Option<u64>,
    #[arg(
        long,
        env = "ASPEN_QUOTA_BACKEND_BYTES",
        value_name = "BYTES",
        help = format!(
            "Database size that raises the NOSPACE alarm [default: {QUOTA_BACKEND_BYTES_DEFAULT}]"
        )
    )]
    quota_backend_bytes: Option<u64>,
    #[arg(
        long,
        env = "ASPEN_DISK_RESERVE_BYTES",
        value_name = "BYTES",
        help = format!(
            "Free space kept on the data dir's filesystem (at most 1/{DISK_RESERVE_FS_DIVISOR} \
             of it): below it, writes that grow the store fail with NOSPACE; 0: off \
             [default: {DISK_RESERVE_BYTES_DEFAULT}]"
        )
    )]
    disk_reserve_bytes: Option<u64>,
    #[arg(
        long,
        env = "ASPEN_MAX_REQUEST_BYTES",
        value_name = "BYTES",
        help = format!("Largest client request accepted [default: {REQUEST_BYTES_MAX_DEFAULT}]")
    )]
    max_request_bytes: Option<u64>,
    #[arg(
        long,
        env = "ASPEN_MAX_TXN_OPS",
        value_name = "OPS",
        help = format!("Most operations in one transaction [default: {TXN_OPS_MAX_DEFAULT}]")
    )]
    max_txn_ops: Option<u32>,
    /// Comma-separated http:// or https:// URLs for a separate /metrics, /health, /version listener [default: none]
    #[arg(long, env = "ASPEN_LISTEN_METRICS_URLS", value_name = "URLS")]
    listen_metrics_urls: Option<String>,
    /// Token type: "simple" (etcd's simple tokens) or "jwt,pub-key=PATH,priv-key=PATH,sign-method=METHOD[,ttl=DURATION]" (etcd's JWTs) [default: simple]
    #[arg(long, env = "ASPEN_AUTH_TOKEN", value_name = "TYPE[,OPTIONS]")]
    auth_token: Option<String>,
    /// Seconds an unused simple token stays valid [default: 300]
    #[arg(long, env = "ASPEN_AUTH_TOKEN_TTL", value_name = "SECONDS")]
    auth_token_ttl: Option<u64>,
    /// bcrypt cost for password hashes, 4 to 31 [default: 10]
    #[arg(long, env = "ASPEN_BCRYPT_COST", value_name = "COST")]
    bcrypt_cost: Option<u32>,
    /// debug, info, warn or error [default: info]
    #[arg(long, env = "ASPEN_LOG_LEVEL", value_name = "LEVEL")]
    log_level: Option<String>,
    /// "text" or "json" (one JSON object per line) [default: text, or json with --logger zap]
    #[arg(long, env = "ASPEN_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<String>,
    /// etcd's logger: "zap" (JSON lines, as --log-format json) or "capnslog" (text) [default: capnslog]
    #[arg(long, env = "ASPEN_LOGGER", value_name = "LOGGER")]
    logger: Option<String>,
    /// Comma-separated log destinations: "stderr", "stdout" or file paths (appended to); "default" is stderr [default: default]
    #[arg(long, env = "ASPEN_LOG_OUTPUTS", value_name = "OUTPUTS")]
    log_outputs: Option<String>,
    /// "redb" (a file under --data-dir) or "memory" (lost on exit; for tests) [default: redb]
    #[arg(long, env = "ASPEN_STORAGE_BACKEND", value_name = "BACKEND")]
    storage_backend: Option<String>,
    /// Client TLS certificate (PEM); re-read when the file changes [default: none]
    #[arg(long, env = "ASPEN_CERT_FILE", value_name = "PATH")]
    cert_file: Option<String>,
    /// Client TLS private key (PEM) [default: none]
    #[arg(long, env = "ASPEN_KEY_FILE", value_name = "PATH")]
    key_file: Option<String>,
    /// CA that client certificates must chain to (with --client-cert-auth) [default: none]
    #[arg(long, env = "ASPEN_TRUSTED_CA_FILE", value_name = "PATH")]
    trusted_ca_file: Option<String>,
    /// Require client certificates signed by --trusted-ca-file [default: false]
    #[arg(long, env = "ASPEN_CLIENT_CERT_AUTH", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    client_cert_auth: Option<bool>,
    /// Serve https client URLs with a generated self-signed certificate [default: false]
    #[arg(long, env = "ASPEN_AUTO_TLS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    auto_tls: Option<bool>,
    /// Peer TLS certificate (PEM), also this member's client certificate towards peers [default: none]
    #[arg(long, env = "ASPEN_PEER_CERT_FILE", value_name = "PATH")]
    peer_cert_file: Option<String>,
    /// Peer TLS private key (PEM) [default: none]
    #[arg(long, env = "ASPEN_PEER_KEY_FILE", value_name = "PATH")]
    peer_key_file: Option<String>,
    /// CA that peers' certificates must chain to [default: none]
    #[arg(long, env = "ASPEN_PEER_TRUSTED_CA_FILE", value_name = "PATH")]
    peer_trusted_ca_file: Option<String>,
    /// Require peers' client certificates signed by --peer-trusted-ca-file [default: false]
    #[arg(long, env = "ASPEN_PEER_CLIENT_CERT_AUTH", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    peer_client_cert_auth: Option<bool>,
    /// Peer TLS with a generated self-signed certificate; peers are not verified [default: false]
    #[arg(long, env = "ASPEN_PEER_AUTO_TLS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    peer_auto_tls: Option<bool>,
    /// Comma-separated TLS 1.2 cipher suites (IANA names); TLS 1.3 suites are always on [default: rustls' list]
    #[arg(long, env = "ASPEN_CIPHER_SUITES", value_name = "SUITES")]
    cipher_suites: Option<String>,
    /// "periodic" (keep --auto-compaction-retention of time) or "revision" (keep that many revisions) [default: periodic]
    #[arg(long, env = "ASPEN_AUTO_COMPACTION_MODE", value_name = "MODE")]
    auto_compaction_mode: Option<String>,
    /// History kept by auto-compaction: hours or a duration ("30m", "1h30m") in periodic mode, revisions in revision mode; 0 turns it off [default: 0]
    #[arg(
        long,
        env = "ASPEN_AUTO_COMPACTION_RETENTION",
        value_name = "RETENTION"
    )]
    auto_compaction_retention: Option<String>,
    /// How often revision-mode auto-compaction checks, a duration [default: 5m, as etcd]
    #[arg(
        long,
        env = "ASPEN_EXPERIMENTAL_AUTO_COMPACTION_INTERVAL",
        value_name = "DURATION"
    )]
    experimental_auto_compaction_interval: Option<String>,
    /// Unsafe: restart this member as a one-member cluster with all its data, to recover from a lost majority; remove it after the member has started [default: false]
    #[arg(long, env = "ASPEN_FORCE_NEW_CLUSTER", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    force_new_cluster: Option<bool>,
    /// TOML file of settings, keys named as the flags [default: none]
    #[arg(long, env = "ASPEN_CONFIG_FILE", value_name = "PATH")]
    #[serde(skip)]
    config_file: Option<PathBuf>,
}

impl ClusterBootstrapConfig {
    /// Reads every source and checks the result. `args` starts with the program name, as
    /// `std::env::args()`; `env` is the process environment (only `ASPEN_*` keys are read), passed
    /// in so tests need not touch the real one. An empty environment value counts as unset.
    ///
    /// # Errors
    /// [`ConfigErrors::HelpOrVersion`] when `--help` or `--version` was given, else
    /// [`ConfigErrors::Invalid`] with every problem found. When a source cannot be parsed at all
    /// (a bad flag, a bad `ASPEN_*` value, a config file with bad TOML), the parse problems of
    /// every source are returned without checking the merged values. A command line that does
    /// not parse names no config file, so only `ASPEN_CONFIG_FILE` is read then.
    pub fn from_sources(
        args: &[String],
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigErrors> {
        let mut problems = Vec::new();
        let cli = parse_command_line(args, &mut problems)?;
        let (env_layers, warnings) = environment_layers(env, &mut problems);
        let config_file = cli
            .as_ref()
            .and_then(|cli| cli.config_file.clone())
            .or_else(|| {
                env_layers
                    .iter()
                    .find_map(|layer| layer.raw.config_file.clone())
            });
        let file_layer = config_file.as_ref().map(|path| Layer {
            name: format!("--config-file {}", path.display()),
            raw: read_config_file(path, &mut problems),
        });
        // Without every layer parsed, the merged values are unknown and checking them would
        // report problems the operator does not have.
        let Some(cli) = cli.filter(|_| problems.is_empty()) else {
            return Err(ConfigErrors::Invalid(problems));
        };
        let cli_layer = Layer {
            name: COMMAND_LINE.to_string(),
            raw: cli,
        };
        let figment = file_layer
            .into_iter()
            .chain(env_layers)
            .chain([cli_layer])
            .fold(Figment::new(), Figment::merge);
        let merged: RawConfig = figment.extract().map_err(|errors| {
            ConfigErrors::Invalid(errors.into_iter().map(|e| e.to_string()).collect())
        })?;
        let mut config = resolve(&merged).map_err(|problems| {
            let annotated = problems.into_iter().map(|p| with_source(p, &figment));
            ConfigErrors::Invalid(annotated.collect())
        })?;
        config.config_file = config_file;
        config.warnings.splice(0..0, warnings);
        Ok(config)
    }

    /// The clap command, for rendering help (`command().render_help()`). Help names each
    /// variable but never shows its current value, which may be a secret one day.
    pub fn command() -> clap::Command {
        RawConfig::command().mut_args(|arg| arg.hide_env_values(true))
    }

    /// This node's member id.
    pub fn member_id(&self) -> u64 {
        member_id(
            &self.name,
            &self.initial_advertise_peer_urls,
            &self.initial_cluster_token,
        )
    }

    /// The id of the cluster `initial_cluster` bootstraps. Meaningful for state "new" only: a
    /// node joining an existing cluster learns the id from it.
    pub fn initial_cluster_id(&self) -> u64 {
        let token = &self.initial_cluster_token;
        let ids: Vec<u64> = self
            .initial_cluster
            .iter()
            .map(|member| member.member_id(token))
            .collect();
        cluster_id(&ids, token)
    }

    /// The configuration as a config file: feeding it back through `--config-file` gives the
    /// same configuration. Written by toml from the same struct the file is read into.
    pub fn to_toml(&self) -> String {
        let urls = |addrs: &[SocketAddr], https: &[bool]| -> Option<String> {
            let urls: Vec<String> = addrs
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let tls = https.get(i).copied().unwrap_or(false);
                    format!("{}://{a}", if tls { "https" } else { "http" })
                })
                .collect();
            Some(urls.join(","))
        };
        let cluster: Vec<String> = self
            .initial_cluster
            .iter()
            .flat_map(|m| m.peer_urls.iter().map(move |u| format!("{}={u}", m.name)))
            .collect();
        let storage = match self.storage_backend {
            StorageBackend::Redb { .. } => StorageKind::Redb,
            StorageBackend::InMemory => StorageKind::Memory,
        };
        let log_outputs: Vec<String> = self
            .log_outputs
            .iter()
            .map(|output| match output {
                LogOutput::Stderr => "stderr".to_string(),
                LogOutput::Stdout => "stdout".to_string(),
                LogOutput::File(path) => path.to_string_lossy().into_owned(),
            })
            .collect();
        let compaction = self.auto_compaction.map(|policy| policy.to_flags());
        let mut raw = RawConfig {
            name: Some(self.name.clone()),
            data_dir: Some(self.data_dir.to_string_lossy().into_owned()),
            listen_client_urls: urls(&self.listen_client_addrs, &self.tls.client_https),
            advertise_client_urls: Some(self.advertise_client_urls.join(",")),
            listen_peer_urls: urls(&self.listen_peer_addrs, &self.tls.peer_https),
            initial_advertise_peer_urls: Some(self.initial_advertise_peer_urls.join(",")),
            initial_cluster: Some(cluster.join(",")),
            initial_cluster_state: Some(value_name(&self.initial_cluster_state)),
            initial_cluster_token: Some(self.initial_cluster_token.clone()),
            heartbeat_interval: Some(self.heartbeat_interval_ms),
            election_timeout: Some(self.election_timeout_ms),
            snapshot_count: Some(self.snapshot_count),
            quota_backend_bytes: Some(self.limits.quota_backend_bytes),
            disk_reserve_bytes: Some(self.limits.disk_reserve_bytes),
            max_request_bytes: Some(self.limits.request_bytes_max),
            max_txn_ops: Some(self.limits.txn_ops_max),
            listen_metrics_urls: urls(&self.listen_metrics_addrs, &self.tls.metrics_https),
            auth_token: Some(self.auth.auth_token.clone()),
            auth_token_ttl: Some(self.auth.token_ttl.as_secs()),
            bcrypt_cost: Some(self.auth.bcrypt_cost),
            log_level: Some(value_name(&self.log_level)),
            log_format: Some(value_name(&self.log_format)),
            log_outputs: Some(log_outputs.join(",")),
            storage_backend: Some(value_name(&storage)),
            auto_compaction_mode: compaction.as_ref().map(|c| c.0.to_string()),
            auto_compaction_retention: compaction.as_ref().map(|c| c.1.clone()),
            experimental_auto_compaction_interval: compaction.and_then(|c| c.2),
            // Written only when on: a printed config must not turn it on by itself.
            force_new_cluster: self.force_new_cluster.then_some(true),
            ..RawConfig::default()
        };
        tls_settings(&self.tls, &mut raw);
        // Every field is a string, number or boolean: nothing toml cannot write.
        toml::to_string(&raw).unwrap_or_else(|error| format!("# not printable: {error}\n"))
    }
}

/// The TLS settings that are set, as the flags that give them.
fn tls_settings(tls: &crate::tls::TlsConfig, raw: &mut RawConfig) {
    use crate::tls::CertSource;
    let path = |p: &PathBuf| Some(p.to_string_lossy().into_owned());
    let files = |cert: &Option<CertSource>| match cert {
        Some(CertSource::Files {
            cert_file,
            key_file,
        }) => (path(cert_file), path(key_file), None),
        Some(CertSource::Auto) => (None, None, Some(true)),
        None => (None, None, None),
    };
    (raw.cert_file, raw.key_file, raw.auto_tls) = files(&tls.client.cert);
    raw.trusted_ca_file = tls.client.trusted_ca_file.as_ref().and_then(path);
    raw.client_cert_auth = tls.client.client_cert_auth.then_some(true);
    (raw.peer_cert_file, raw.peer_key_file, raw.peer_auto_tls) = files(&tls.peer.cert);
    raw.peer_trusted_ca_file = tls.peer.trusted_ca_file.as_ref().and_then(path);
    raw.peer_client_cert_auth = tls.peer.client_cert_auth.then_some(true);
    raw.cipher_suites = (!tls.cipher_suites.is_empty()).then(|| tls.cipher_suites.join(","));
}

/// The process's arguments, never panicking on ones that are not UTF-8 (they are converted
/// lossily, so a bad one shows up in an error message instead of aborting start-up).
pub fn process_args() -> Vec<String> {
    std::env::args_os()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect()
}

/// The process environment, converted as [`process_args`] does.
pub fn process_env() -> HashMap<String, String> {
    std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect()
}

// Ids are derived in aspen-core so that MemberAdd gives a joining member the id its own
// flags produce.
pub use aspen_core::ids::{cluster_id, member_id};

// ---------------------------------------------------------------------------------------------
// Reading the sources.

/// One source's settings as a figment provider, named for problem messages: the settings it
/// does not give (`None`) are left out, so they do not hide a lower layer's.
struct Layer {
    name: String,
    raw: RawConfig,
}

impl figment::Provider for Layer {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(self.name.clone())
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut data = figment::providers::Serialized::defaults(&self.raw).data()?;
        for dict in data.values_mut() {
            dict.retain(|_, value| !matches!(value, figment::value::Value::Empty(..)));
        }
        Ok(data)
    }
}

/// A problem about a value set by the environment or the config file says so: "(from
/// ASPEN_SNAPSHOT_COUNT)". Problems start with the flag they are about, when about one.
fn with_source(problem: String, figment: &Figment) -> String {
    let key = problem.strip_prefix("--").and_then(|rest| {
        rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .next()
    });
    match key.and_then(|key| figment.find_metadata(key)) {
        Some(source) if source.name != COMMAND_LINE => format!("{problem} (from {})", source.name),
        _ => problem,
    }
}

/// Parses the command line. Help and version come back as `Err`; a parse error is recorded in
/// `problems` and gives `Ok(None)`, so the other sources are still read and reported on.
fn parse_command_line(
    args: &[String],
    problems: &mut Vec<String>,
) -> Result<Option<RawConfig>, ConfigErrors> {
    match parse_without_env(args) {
        Ok(raw) => Ok(Some(raw)),
        Err(error) => match error.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                // Rendered again by the command that knows the variables, so help names them.
                // clap stops at --help before it reads any variable, so this reads none.
                let text = match ClusterBootstrapConfig::command().try_get_matches_from(args) {
                    Err(full) if full.kind() == error.kind() => full.to_string(),
                    _ => error.to_string(),
                };
                Err(ConfigErrors::HelpOrVersion(text))
            }
            _ => {
                problems.push(clap_error_line(&error));
                Ok(None)
            }
        },
    }
}

/// Parses with clap's own environment lookup switched off: the environment is a separate,
/// injected layer (the `env` attributes remain, so `--help` still names each variable).
fn parse_without_env(args: &[String]) -> Result<RawConfig, clap::Error> {
    let command = RawConfig::command().mut_args(|arg| arg.env(None::<&'static str>));
    let matches = command.try_get_matches_from(args)?;
    RawConfig::from_arg_matches(&matches)
}

/// clap's message is several lines with a usage hint; one line reads better in a list.
fn clap_error_line(error: &clap::Error) -> String {
    let text = error.to_string();
    let first = text.lines().next().unwrap_or("invalid command line");
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

/// The `ASPEN_*` layers, one per variable (in name order), each parsed by clap as its flag
/// would be, so a value means the same in both places and a bad one is reported under the
/// variable's name. Unknown `ASPEN_*` names are warnings (as in etcd): other tools may share
/// the prefix.
fn environment_layers(
    env: &HashMap<String, String>,
    problems: &mut Vec<String>,
) -> (Vec<Layer>, Vec<String>) {
    let command = RawConfig::command();
    let mut layers = Vec::new();
    let mut warnings = Vec::new();
    let vars: BTreeMap<&String, &String> = env
        .iter()
        .filter(|(key, value)| {
            key.starts_with(ENV_PREFIX) && *key != LOG_FILTER_ENV && !value.is_empty()
        })
        .collect();
    for (var, value) in vars {
        let flag = command
            .get_arguments()
            .find(|arg| arg.get_env().is_some_and(|name| name == var.as_str()))
            .and_then(|arg| arg.get_long());
        let Some(flag) = flag else {
            warnings.push(format!("ignoring unrecognized environment variable {var}"));
            continue;
        };
        match parse_without_env(&["aspen".to_string(), format!("--{flag}={value}")]) {
            Ok(raw) => layers.push(Layer {
                name: var.clone(),
                raw,
            }),
            Err(error) => problems.push(format!("{var}: {}", clap_error_line(&error))),
        }
    }
    (layers, warnings)
}

/// The file layer. Problems are prefixed "--config-file: <path>:".
fn read_config_file(path: &Path, problems: &mut Vec<String>) -> RawConfig {
    let prefix = format!("--config-file: {}", path.display());
    let text = match read_bounded(path) {
        Ok(text) => text,
        Err(reason) => {
            problems.push(format!("{prefix}: {reason}"));
            return RawConfig::default();
        }
    };
    // serde's deny_unknown_fields stops at the first unknown key; every one is named here,
    // with its line, before the values are read.
    let keys = match toml::from_str::<BTreeMap<toml::Spanned<String>, serde::de::IgnoredAny>>(&text)
    {
        Ok(keys) => keys,
        Err(error) => {
            problems.push(format!("{prefix}: {}", toml_error_line(&text, &error)));
            return RawConfig::default();
        }
    };
    let command = RawConfig::command();
    let known: Vec<&str> = command
        .get_arguments()
        .filter_map(|arg| arg.get_long())
        .filter(|long| *long != "config-file")
        .collect();
    let mut unknown: Vec<(usize, String)> = Vec::new();
    for key in keys
        .keys()
        .filter(|key| !known.contains(&key.get_ref().as_str()))
    {
        let name = key.get_ref();
        let dashed = name.replace('_', "-").to_lowercase();
        let hint = if name == "config-file" {
            " (a config file cannot name another)".to_string()
        } else if known.contains(&dashed.as_str()) {
            format!(" (did you mean '{dashed}'?)")
        } else {
            String::new()
        };
        let (line, _) = line_and_column(&text, key.span().start);
        let problem = format!("{prefix}: line {line}: unknown key '{name}'{hint}");
        unknown.push((key.span().start, problem));
    }
    if !unknown.is_empty() {
        unknown.sort();
        problems.extend(unknown.into_iter().map(|(_, problem)| problem));
        return RawConfig::default();
    }
    toml::from_str::<RawConfig>(&text).unwrap_or_else(|error| {
        problems.push(format!("{prefix}: {}", toml_error_line(&text, &error)));
        RawConfig::default()
    })
}

fn read_bounded(path: &Path) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(CONFIG_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > CONFIG_FILE_BYTES_MAX {
        return Err(format!("larger than {CONFIG_FILE_BYTES_MAX} bytes"));
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())
}

/// toml's own rendering is several lines with a caret; one line with the position reads
/// better among other problems.
fn toml_error_line(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim().replace('\n', " ");
    match error.span() {
        Some(span) => {
            let (line, column) = line_and_column(text, span.start);
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

// ---------------------------------------------------------------------------------------------
// Defaults and checks.

/// Applies defaults and checks everything, collecting every problem.
fn resolve(raw: &RawConfig) -> Result<ClusterBootstrapConfig, Vec<String>> {
    let mut problems = Vec::new();
    let urls = resolve_urls(raw, &mut problems);
    let name = raw.name.clone().unwrap_or_else(|| NAME_DEFAULT.to_string());
    check_name(&name, &mut problems);
    let data_dir = PathBuf::from(
        raw.data_dir
            .clone()
            .unwrap_or_else(|| format!("{name}.aspen")),
    );
    if data_dir.as_os_str().is_empty() {
        problems.push("--data-dir must not be empty".to_string());
    }
    let token = raw
        .initial_cluster_token
        .clone()
        .unwrap_or_else(|| INITIAL_CLUSTER_TOKEN_DEFAULT.to_string());
    if token.is_empty() {
        problems.push("--initial-cluster-token must not be empty".to_string());
    }
    let initial_cluster = resolve_initial_cluster(
        raw.initial_cluster.as_deref(),
        &name,
        urls.initial_advertise_peer.as_deref(),
        &mut problems,
    );
    let heartbeat_interval_ms = raw
        .heartbeat_interval
        .unwrap_or(HEARTBEAT_INTERVAL_MS_DEFAULT);
    let election_timeout_ms = raw.election_timeout.unwrap_or(ELECTION_TIMEOUT_MS_DEFAULT);
    check_timing(heartbeat_interval_ms, election_timeout_ms, &mut problems);
    let snapshot_count = raw.snapshot_count.unwrap_or(SNAPSHOT_COUNT_DEFAULT);
    if snapshot_count == 0 {
        problems.push("--snapshot-count must be greater than 0".to_string());
    }
    let limits = resolve_limits(raw, &mut problems);
    let initial_cluster_state = parse_enum(
        "--initial-cluster-state",
        raw.initial_cluster_state.as_deref(),
        &mut problems,
    );
    let storage_backend = match parse_enum(
        "--storage-backend",
        raw.storage_backend.as_deref(),
        &mut problems,
    ) {
        StorageKind::Redb => StorageBackend::Redb {
            dir: data_dir.join(STORAGE_DIR_IN_DATA_DIR),
        },
        StorageKind::Memory => StorageBackend::InMemory,
    };
    let log_level = parse_enum("--log-level", raw.log_level.as_deref(), &mut problems);
    let log_format = resolve_log_format(raw, &mut problems);
    let log_outputs = parse_log_outputs(raw.log_outputs.as_deref(), &mut problems);
    let mut warnings = Vec::new();
    let tls = resolve_tls(raw, &urls, &initial_cluster, &mut problems, &mut warnings);
    let auto_compaction = crate::auto_compaction::AutoCompaction::parse(
        raw.auto_compaction_mode.as_deref(),
        raw.auto_compaction_retention.as_deref(),
        raw.experimental_auto_compaction_interval.as_deref(),
    )
    .unwrap_or_else(|problem| {
        problems.push(problem);
        None
    });
    let auth = resolve_auth(raw, &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }
    let plain =
        |l: Vec<(SocketAddr, bool)>| -> Vec<SocketAddr> { l.into_iter().map(|(a, _)| a).collect() };
    Ok(ClusterBootstrapConfig {
        name,
        data_dir,
        storage_backend,
        listen_client_addrs: plain(urls.listen_client),
        advertise_client_urls: urls.advertise_client,
        listen_peer_addrs: plain(urls.listen_peer),
        initial_advertise_peer_urls: urls.initial_advertise_peer.unwrap_or_default(),
        initial_cluster,
        initial_cluster_state,
        initial_cluster_token: token,
        heartbeat_interval_ms,
        election_timeout_ms,
        snapshot_count,
        limits,
        listen_metrics_addrs: plain(urls.listen_metrics),
        tls,
        auto_compaction,
        log_level,
        force_new_cluster: raw.force_new_cluster.unwrap_or(false),
        log_format,
        log_outputs,
        auth,
        config_file: None,
        warnings,
    })
}

fn resolve_tls(
    raw: &RawConfig,
    urls: &ResolvedUrls,
    initial_cluster: &[InitialMember],
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> crate::tls::TlsConfig {
    let flags = crate::tls::TlsFlags {
        cert_file: raw.cert_file.as_deref(),
        key_file: raw.key_file.as_deref(),
        trusted_ca_file: raw.trusted_ca_file.as_deref(),
        client_cert_auth: raw.client_cert_auth.unwrap_or(false),
        auto_tls: raw.auto_tls.unwrap_or(false),
        peer_cert_file: raw.peer_cert_file.as_deref(),
        peer_key_file: raw.peer_key_file.as_deref(),
        peer_trusted_ca_file: raw.peer_trusted_ca_file.as_deref(),
        peer_client_cert_auth: raw.peer_client_cert_auth.unwrap_or(false),
        peer_auto_tls: raw.peer_auto_tls.unwrap_or(false),
        cipher_suites: raw.cipher_suites.as_deref(),
    };
    // Members dial each other with TLS when any peer URL of the cluster is https.
    let peers_use_tls = initial_cluster
        .iter()
        .flat_map(|member| &member.peer_urls)
        .chain(urls.initial_advertise_peer.iter().flatten())
        .any(|url| url.starts_with("https://"));
    let listeners = crate::tls::HttpsListeners {
        client: &urls.listen_client,
        client_urls_text: &urls.listen_client_text,
        peer: &urls.listen_peer,
        metrics: &urls.listen_metrics,
        peers_use_tls,
    };
    crate::tls::resolve(&flags, &listeners, problems, warnings)
}

fn resolve_auth(raw: &RawConfig, problems: &mut Vec<String>) -> aspen_api::AuthOptions {
    use aspen_core::limits::{
        AUTH_TOKEN_TTL_SECONDS_DEFAULT, BCRYPT_COST_DEFAULT, BCRYPT_COST_MAX, BCRYPT_COST_MIN,
    };
    let auth_token = raw
        .auth_token
        .clone()
        .unwrap_or_else(|| "simple".to_string());
    let jwt = crate::auth_token::resolve(&auth_token).unwrap_or_else(|found| {
        problems.extend(found);
        None
    });
    let ttl_seconds = raw.auth_token_ttl.unwrap_or(AUTH_TOKEN_TTL_SECONDS_DEFAULT);
    if ttl_seconds == 0 {
        problems.push("--auth-token-ttl must be greater than 0 seconds".to_string());
    }
    let bcrypt_cost = raw.bcrypt_cost.unwrap_or(BCRYPT_COST_DEFAULT);
    if !(BCRYPT_COST_MIN..=BCRYPT_COST_MAX).contains(&bcrypt_cost) {
        problems.push(format!(
            "--bcrypt-cost {bcrypt_cost} is out of bcrypt's range {BCRYPT_COST_MIN} to \
             {BCRYPT_COST_MAX}"
        ));
    }
    aspen_api::AuthOptions {
        token_ttl: std::time::Duration::from_secs(ttl_seconds),
        bcrypt_cost,
        jwt,
        auth_token,
    }
}

fn resolve_limits(raw: &RawConfig, problems: &mut Vec<String>) -> Limits {
    let limits = Limits {
        request_bytes_max: raw.max_request_bytes.unwrap_or(REQUEST_BYTES_MAX_DEFAULT),
        txn_ops_max: raw.max_txn_ops.unwrap_or(TXN_OPS_MAX_DEFAULT),
        quota_backend_bytes: raw
            .quota_backend_bytes
            .unwrap_or(QUOTA_BACKEND_BYTES_DEFAULT),
        disk_reserve_bytes: raw.disk_reserve_bytes.unwrap_or(DISK_RESERVE_BYTES_DEFAULT),
        index_checkpoint_revisions: None,
    };
    // Limits' messages begin with the flag's name, without the dashes.
    problems.extend(limits.validate().into_iter().map(|p| format!("--{p}")));
    limits
}

fn check_name(name: &str, problems: &mut Vec<String>) {
    if name.is_empty() {
        problems.push("--name must not be empty".to_string());
    } else if name.contains([',', '=']) || name.trim() != name {
        problems.push(format!(
            "--name '{name}' must not contain ',' or '=' or start or end with a space \
             (it is written in --initial-cluster)"
        ));
    }
}

fn check_timing(heartbeat_interval_ms: u64, election_timeout_ms: u64, problems: &mut Vec<String>) {
    if heartbeat_interval_ms == 0 {
        problems.push("--heartbeat-interval must be greater than 0 ms".to_string());
    }
    let election_timeout_ms_min =
        heartbeat_interval_ms.saturating_mul(ELECTION_TIMEOUT_HEARTBEATS_MIN);
    if election_timeout_ms < election_timeout_ms_min {
        problems.push(format!(
            "--election-timeout ({election_timeout_ms} ms) must be at least \
             {ELECTION_TIMEOUT_HEARTBEATS_MIN}x --heartbeat-interval ({heartbeat_interval_ms} ms)"
        ));
    }
    if election_timeout_ms > ELECTION_TIMEOUT_MS_MAX {
        problems.push(format!(
            "--election-timeout ({election_timeout_ms} ms) must be at most \
             {ELECTION_TIMEOUT_MS_MAX} ms"
        ));
    }
}

/// An enum flag's value, or its default when not given; a wrong one is reported with the
/// values clap's `ValueEnum` knows.
fn parse_enum<T: ValueEnum + Default>(
    flag: &str,
    value: Option<&str>,
    problems: &mut Vec<String>,
) -> T {
    let Some(text) = value else {
        return T::default();
    };
    T::from_str(text, false).unwrap_or_else(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .map(|variant| format!("'{}'", value_name(variant)))
            .collect();
        let expected = match names.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        problems.push(format!("{flag} must be {expected}, got '{text}'"));
        T::default()
    })
}

// ---------------------------------------------------------------------------------------------
// Logs.

/// `--log-format`, else what etcd's `--logger` implies (zap writes JSON lines), else text.
fn resolve_log_format(raw: &RawConfig, problems: &mut Vec<String>) -> LogFormat {
    let logger = raw
        .logger
        .as_deref()
        .map(|text| parse_enum::<Logger>("--logger", Some(text), problems));
    let implied = logger.map(|logger| match logger {
        Logger::Zap => LogFormat::Json,
        Logger::Capnslog => LogFormat::Text,
    });
    let Some(text) = raw.log_format.as_deref() else {
        return implied.unwrap_or_default();
    };
    let format = parse_enum("--log-format", Some(text), problems);
    if let (Some(logger), Some(implied)) = (logger, implied)
        && implied != format
    {
        problems.push(format!(
            "--log-format {} conflicts with --logger {}, which writes {}",
            value_name(&format),
            value_name(&logger),
            value_name(&implied)
        ));
    }
    format
}

/// `--log-outputs`, as etcd 3.4's zap logger takes it: "default" (stderr here; etcd means
/// journald or stderr) alone, or any of "stderr", "stdout" and file paths. Each file is opened
/// (and created) now, so that one that cannot be written is reported with the other problems.
fn parse_log_outputs(text: Option<&str>, problems: &mut Vec<String>) -> Vec<LogOutput> {
    const FLAG: &str = "--log-outputs";
    let items: Vec<&str> = text
        .unwrap_or("default")
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .collect();
    if items.is_empty() {
        problems.push(format!("{FLAG}: no output given"));
    }
    if items.len() > LOG_OUTPUTS_MAX as usize {
        problems.push(format!(
            "{FLAG}: {} outputs, at most {LOG_OUTPUTS_MAX} allowed",
            items.len()
        ));
        return Vec::new();
    }
    if items.len() > 1 && items.contains(&"default") {
        // etcd's message.
        problems.push(format!(
            "{FLAG}: multi logoutput for \"default\" is not supported yet"
        ));
    }
    let mut outputs = Vec::new();
    for item in items {
        let output = match item {
            "default" | "stderr" => LogOutput::Stderr,
            "stdout" => LogOutput::Stdout,
            path => {
                // etcd's words: open sink "PATH": ...
                if let Err(error) = open_log_file(Path::new(path)) {
                    problems.push(format!("{FLAG}: open sink \"{path}\": {error}"));
                    continue;
                }
                LogOutput::File(PathBuf::from(path))
            }
        };
        if outputs.contains(&output) {
            problems.push(format!("{FLAG}: '{item}' is listed twice"));
            continue;
        }
        outputs.push(output);
    }
    outputs
}

// ---------------------------------------------------------------------------------------------
// URLs.

struct ResolvedUrls {
    /// Each with whether it is https.
    listen_client: Vec<(SocketAddr, bool)>,
    /// The listen URLs as given, for etcd's TLS messages.
    listen_client_text: Vec<String>,
    advertise_client: Vec<String>,
    listen_peer: Vec<(SocketAddr, bool)>,
    initial_advertise_peer: Option<Vec<String>>,
    listen_metrics: Vec<(SocketAddr, bool)>,
}

fn resolve_urls(raw: &RawConfig, problems: &mut Vec<String>) -> ResolvedUrls {
    let listen_client_text = raw.listen_client_urls.as_deref();
    let listen_client_text = listen_client_text.unwrap_or(LISTEN_CLIENT_URLS_DEFAULT);
    let listen_peer_text = raw.listen_peer_urls.as_deref();
    let listen_peer_text = listen_peer_text.unwrap_or(LISTEN_PEER_URLS_DEFAULT);
    let before = problems.len();
    let listen_client = parse_listen_urls("--listen-client-urls", listen_client_text, problems);
    let listen_client_ok = problems.len() == before;
    let before = problems.len();
    let listen_peer = parse_listen_urls("--listen-peer-urls", listen_peer_text, problems);
    let listen_peer_ok = problems.len() == before;
    let listen_metrics = match raw.listen_metrics_urls.as_deref() {
        None => Vec::new(),
        Some(text) if text.trim().is_empty() => Vec::new(),
        Some(text) => parse_listen_urls("--listen-metrics-urls", text, problems),
    };
    let addrs =
        |l: &[(SocketAddr, bool)]| -> Vec<SocketAddr> { l.iter().map(|(a, _)| *a).collect() };
    check_no_shared_listener(
        &addrs(&listen_client),
        &addrs(&listen_peer),
        &addrs(&listen_metrics),
        problems,
    );
    // Advertised URLs default to the listened ones (etcd's own default for
    // advertise-client-urls is http://localhost:2379).
    let advertise_client = resolve_advertise_urls(
        "--advertise-client-urls",
        raw.advertise_client_urls.as_deref(),
        ("--listen-client-urls", listen_client_text, listen_client_ok),
        problems,
    );
    let initial_advertise_peer = resolve_advertise_urls(
        "--initial-advertise-peer-urls",
        raw.initial_advertise_peer_urls.as_deref(),
        ("--listen-peer-urls", listen_peer_text, listen_peer_ok),
        problems,
    );
    let listen_client_text = listen_client_text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect();
    ResolvedUrls {
        listen_client,
        listen_client_text,
        advertise_client: advertise_client.unwrap_or_default(),
        listen_peer,
        initial_advertise_peer,
        listen_metrics,
    }
}

/// The advertised URLs as given, or else those of the listen flag `fallback` names (flag, text,
/// whether it parsed). `None` when they have problems, which are reported once: a listen flag
/// that is wrong is not reported again under the flag that defaults to it.
fn resolve_advertise_urls(
    flag: &str,
    given: Option<&str>,
    fallback: (&str, &str, bool),
    problems: &mut Vec<String>,
) -> Option<Vec<String>> {
    let (fallback_flag, fallback_text, fallback_ok) = fallback;
    let before = problems.len();
    let urls = match given {
        Some(text) => parse_advertise_urls(flag, text, problems),
        None if !fallback_ok => return None,
        None => {
            let label = format!("{flag} (defaulted from {fallback_flag})");
            parse_advertise_urls(&label, fallback_text, problems)
        }
    };
    (problems.len() == before).then_some(urls)
}

/// Two listeners on one address would fail to bind; say which flags collide instead.
fn check_no_shared_listener(
    client: &[SocketAddr],
    peer: &[SocketAddr],
    metrics: &[SocketAddr],
    problems: &mut Vec<String>,
) {
    let lists = [
        ("--listen-client-urls", client),
        ("--listen-peer-urls", peer),
        ("--listen-metrics-urls", metrics),
    ];
    for (i, (flag_a, addrs_a)) in lists.iter().enumerate() {
        for (flag_b, addrs_b) in &lists[i + 1..] {
            for addr in addrs_a.iter().filter(|a| a.port() != 0) {
                if addrs_b.contains(addr) {
                    problems.push(format!("{flag_b}: {addr} is also in {flag_a}"));
                }
            }
        }
    }
}

enum UrlHost {
    Ip(IpAddr),
    /// A DNS name, lower-cased.
    Name(String),
}

struct HttpUrl {
    host: UrlHost,
    port: u16,
    /// https://
    tls: bool,
}

impl HttpUrl {
    /// `http://host:port`, with IPs in their standard form and IPv6 in brackets.
    fn canonical(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        match &self.host {
            UrlHost::Ip(ip) => format!("{scheme}://{}", SocketAddr::new(*ip, self.port)),
            UrlHost::Name(name) => format!("{scheme}://{name}:{}", self.port),
        }
    }
}

/// Parses `http://host:port` or `https://host:port` with `http::Uri`, then refuses what etcd's
/// URLs may not have: another scheme, user info, a missing port, or anything after the port.
/// The error is a message without the flag's name.
fn parse_http_url(text: &str) -> Result<HttpUrl, String> {
    let malformed = || format!("'{text}' is not an http:// or https:// URL with host and port");
    let uri: http::Uri = text.parse().map_err(|_| malformed())?;
    let tls = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(malformed()),
    };
    let authority = uri.authority().ok_or_else(malformed)?;
    let after_scheme = text.split_once("://").map_or("", |(_, rest)| rest);
    if after_scheme.len() > authority.as_str().len() {
        let scheme = if tls { "https" } else { "http" };
        return Err(format!(
            "'{text}' has a path or query; give only {scheme}://host:port"
        ));
    }
    if authority.as_str().contains('@') {
        return Err(malformed());
    }
    let port = authority.port_u16().ok_or_else(malformed)?;
    let host = authority.host();
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => UrlHost::Ip(IpAddr::V6(v6.parse().map_err(|_| malformed())?)),
        None if host.parse::<Ipv4Addr>().is_ok() => {
            UrlHost::Ip(host.parse().map_err(|_| malformed())?)
        }
        // http::Uri allows characters in names that DNS does not (and user info).
        None if host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !host.starts_with(['-', '.'])
            && !host.is_empty() =>
        {
            UrlHost::Name(host.to_ascii_lowercase())
        }
        None => return Err(malformed()),
    };
    Ok(HttpUrl { host, port, tls })
}

/// Splits a comma-separated list, skipping empty items (a trailing comma is harmless), and
/// checks the count. Problems are prefixed with `flag`.
fn split_url_list<'a>(flag: &str, text: &'a str, problems: &mut Vec<String>) -> Vec<&'a str> {
    let items: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .collect();
    if items.is_empty() {
        problems.push(format!("{flag}: no URL given"));
    }
    if items.len() > URLS_PER_FLAG_MAX as usize {
        problems.push(format!(
            "{flag}: {} URLs, at most {URLS_PER_FLAG_MAX} allowed",
            items.len()
        ));
    }
    items
}

/// The addresses to listen on, each with whether it is https.
fn parse_listen_urls(
    flag: &str,
    text: &str,
    problems: &mut Vec<String>,
) -> Vec<(SocketAddr, bool)> {
    let mut addrs: Vec<(SocketAddr, bool)> = Vec::new();
    for item in split_url_list(flag, text, problems) {
        let url = match parse_http_url(item) {
            Ok(url) => url,
            Err(message) => {
                problems.push(format!("{flag}: {message}"));
                continue;
            }
        };
        let ip = match url.host {
            UrlHost::Ip(ip) => ip,
            UrlHost::Name(name) if name == "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            UrlHost::Name(name) => {
                problems.push(format!(
                    "{flag}: '{item}' names host '{name}'; listen URLs take an IP address \
                     or localhost"
                ));
                continue;
            }
        };
        let addr = SocketAddr::new(ip, url.port);
        if addrs.iter().any(|(a, _)| *a == addr) && addr.port() != 0 {
            problems.push(format!("{flag}: {addr} is listed twice"));
        }
        addrs.push((addr, url.tls));
    }
    addrs
}

/// An advertised URL must be one others can reach: a name or a specific IP, and a real port.
fn parse_advertised_url(text: &str) -> Result<String, String> {
    let url = parse_http_url(text)?;
    if let UrlHost::Ip(ip) = url.host
        && ip.is_unspecified()
    {
        return Err(format!(
            "'{text}' is the wildcard address {ip}, which nobody can reach; advertise a \
             specific address"
        ));
    }
    if url.port == 0 {
        return Err(format!(
            "'{text}' has port 0; advertise the port actually served"
        ));
    }
    Ok(url.canonical())
}

fn parse_advertise_urls(flag: &str, text: &str, problems: &mut Vec<String>) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for item in split_url_list(flag, text, problems) {
        match parse_advertised_url(item) {
            Ok(url) if urls.contains(&url) => {
                problems.push(format!("{flag}: '{url}' is listed twice"));
            }
            Ok(url) => urls.push(url),
            Err(message) => problems.push(format!("{flag}: {message}")),
        }
    }
    urls
}

// ---------------------------------------------------------------------------------------------
// The initial cluster.

/// `--initial-cluster`, or `${name}=${initial-advertise-peer-urls}` when not given, checked
/// against this member's name and advertised URLs.
fn resolve_initial_cluster(
    text: Option<&str>,
    name: &str,
    advertise_peer: Option<&[String]>,
    problems: &mut Vec<String>,
) -> Vec<InitialMember> {
    let Some(text) = text else {
        let Some(advertise_peer) = advertise_peer else {
            return Vec::new(); // already reported under --initial-advertise-peer-urls
        };
        return vec![InitialMember {
            name: name.to_string(),
            peer_urls: advertise_peer.to_vec(),
        }];
    };
    let before = problems.len();
    let members = parse_initial_cluster(text, problems);
    if problems.len() > before {
        return members;
    }
    match members.iter().find(|member| member.name == name) {
        None => problems.push(format!("--name '{name}' is not in --initial-cluster")),
        Some(member) => {
            if let Some(advertise_peer) = advertise_peer
                && sorted(advertise_peer) != sorted(&member.peer_urls)
            {
                problems.push(format!(
                    "--initial-advertise-peer-urls do not match the URLs of '{name}' in \
                     --initial-cluster ({} vs {})",
                    advertise_peer.join(","),
                    member.peer_urls.join(",")
                ));
            }
        }
    }
    members
}

fn sorted(urls: &[String]) -> Vec<&str> {
    let mut urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    urls
}

/// Parses "n1=http://a:2380,n2=http://b:2380,n1=http://c:2380" into members in order of first
/// appearance, each with all of its URLs.
fn parse_initial_cluster(text: &str, problems: &mut Vec<String>) -> Vec<InitialMember> {
    const FLAG: &str = "--initial-cluster";
    let before = problems.len();
    let mut members: Vec<InitialMember> = Vec::new();
    let mut all_urls: Vec<String> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (member_name, url_text) = match item.split_once('=') {
            Some((n, u)) => (n.trim(), u.trim()),
            None => (item, ""),
        };
        if member_name.is_empty() {
            problems.push(format!("{FLAG}: '{item}' has no member name before '='"));
            continue;
        }
        if url_text.is_empty() {
            problems.push(format!("{FLAG}: member '{member_name}' has no URL"));
            continue;
        }
        let url = match parse_advertised_url(url_text) {
            Ok(url) => url,
            Err(message) => {
                problems.push(format!("{FLAG}: member '{member_name}': {message}"));
                continue;
            }
        };
        if all_urls.contains(&url) {
            problems.push(format!("{FLAG}: URL '{url}' is listed more than once"));
            continue;
        }
        all_urls.push(url.clone());
        match members.iter_mut().find(|m| m.name == member_name) {
            Some(member) => member.peer_urls.push(url),
            None => members.push(InitialMember {
                name: member_name.to_string(),
                peer_urls: vec![url],
            }),
        }
    }
    if members.is_empty() && problems.len() == before {
        problems.push(format!("{FLAG}: no member given"));
    }
    check_cluster_bounds(&members, problems);
    members
}

fn check_cluster_bounds(members: &[InitialMember], problems: &mut Vec<String>) {
    if members.len() > CLUSTER_MEMBERS_MAX as usize {
        problems.push(format!(
            "--initial-cluster: {} members, at most {CLUSTER_MEMBERS_MAX} allowed",
            members.len()
        ));
    }
    for member in members {
        if member.peer_urls.len() > URLS_PER_FLAG_MAX as usize {
            problems.push(format!(
                "--initial-cluster: member '{}' has {} URLs, at most {URLS_PER_FLAG_MAX} allowed",
                member.name,
                member.peer_urls.len()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_from_one() {
        assert_eq!(line_and_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_and_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_and_column("ab", 99), (1, 3));
    }
}
