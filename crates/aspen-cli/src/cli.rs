//! The command line: etcdctl's commands and flags, plus `bench`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::bench::BenchArgs;
use crate::output::WriteOut;

const AFTER_HELP: &str = "\
Exit codes: 0 success, 1 a request failed, 2 usage error, 3 connection failed.
Keys and values are text; lease and member ids are hex, as etcdctl prints them.";

#[derive(Debug, Parser)]
#[command(
    name = "aspenctl",
    version,
    about = "Command-line client for Aspen (and any etcd v3 server)",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// gRPC endpoints, comma-separated (host:port or http://host:port)
    #[arg(
        long,
        global = true,
        env = "ASPENCTL_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Output format
    #[arg(short = 'w', long, global = true, value_enum, default_value = "simple")]
    pub write_out: WriteOut,
    /// Time limit for one request ("5s", "500ms", "1m"; a bare number is seconds)
    #[arg(long, global = true, value_parser = parse_duration, default_value = "5s")]
    pub command_timeout: Duration,
    /// Time limit for connecting to an endpoint
    #[arg(long, global = true, value_parser = parse_duration, default_value = "2s")]
    pub dial_timeout: Duration,
    /// Verify servers with this CA bundle (PEM); host:port endpoints then use TLS
    #[arg(
        long = "cacert",
        id = "tls_cacert",
        global = true,
        env = "ASPENCTL_CACERT",
        value_name = "FILE"
    )]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) for servers that require one; implies TLS
    #[arg(
        long = "cert",
        id = "tls_cert",
        global = true,
        env = "ASPENCTL_CERT",
        value_name = "FILE"
    )]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert
    #[arg(
        long = "key",
        id = "tls_key",
        global = true,
        env = "ASPENCTL_KEY",
        value_name = "FILE"
    )]
    pub key: Option<PathBuf>,
    /// Use TLS but accept any server certificate (still checks the server holds its key)
    #[arg(long, global = true)]
    pub insecure_skip_tls_verify: bool,
    /// User for authentication: name:password, or name with --password (as etcdctl)
    #[arg(
        long = "user",
        id = "auth_user",
        global = true,
        env = "ASPENCTL_USER",
        value_name = "NAME[:PASSWORD]"
    )]
    pub user: Option<String>,
    /// Password for --user (then --user must not include one)
    #[arg(
        long = "password",
        id = "auth_password",
        global = true,
        env = "ASPENCTL_PASSWORD",
        value_name = "PASSWORD"
    )]
    pub password: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Put a key (the value is read from stdin when not given)
    Put(PutArgs),
    /// Get a key or a range of keys
    Get(GetArgs),
    /// Delete a key or a range of keys
    Del(DelArgs),
    /// Run a transaction read from stdin: compares, blank line, success ops, blank line, failure ops
    Txn(TxnArgs),
    /// Print events on a key or range until Ctrl-C (or --max-events)
    Watch(WatchArgs),
    /// Lease commands
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Cluster membership commands
    #[command(subcommand)]
    Member(MemberCommand),
    /// Status and health of endpoints
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Compact the key history up to a revision
    Compaction(CompactionArgs),
    /// Defragment the storage of the endpoints (or every member with --cluster)
    Defrag(DefragArgs),
    /// Save, restore and check snapshots
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Closed-loop benchmark over the etcd v3 API (works against etcd and Aspen alike)
    Bench(BenchArgs),
    /// Enable or disable authentication, or show whether it is on
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Users: add, delete, get, list, passwd, grant-role, revoke-role
    #[command(subcommand)]
    User(UserCommand),
    /// Roles: add, delete, get, list, grant-permission, revoke-permission
    #[command(subcommand)]
    Role(RoleCommand),
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Enable authentication (needs a root user; grants it the root role if missing)
    Enable,
    /// Disable authentication
    Disable,
    /// Whether authentication is enabled, and the auth revision
    Status,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user: NAME:PASSWORD, or NAME with --new-user-password, or NAME with the password
    /// on stdin's first line
    Add {
        user: String,
        /// The new user's password (instead of NAME:PASSWORD)
        #[arg(long)]
        new_user_password: Option<String>,
        /// A user without a password (it can authenticate only by client certificate)
        #[arg(long)]
        no_password: bool,
    },
    /// Delete a user
    Delete { user: String },
    /// A user's roles
    Get {
        user: String,
        /// Also show each role's permissions
        #[arg(long)]
        detail: bool,
    },
    /// Every user
    List,
    /// Change a user's password (the new one from --new-password or stdin's first line)
    Passwd {
        user: String,
        #[arg(long)]
        new_password: Option<String>,
    },
    /// Grant a role to a user
    GrantRole { user: String, role: String },
    /// Revoke a role from a user
    RevokeRole { user: String, role: String },
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Add a role
    Add { role: String },
    /// Delete a role
    Delete { role: String },
    /// A role's permissions
    Get { role: String },
    /// Every role
    List,
    /// Grant a permission (read, write or readwrite) on a key, a range or a prefix
    GrantPermission {
        role: String,
        #[arg(value_enum)]
        perm_type: PermType,
        key: String,
        range_end: Option<String>,
        /// Every key with KEY as prefix
        #[arg(long)]
        prefix: bool,
        /// Every key from KEY on
        #[arg(long)]
        from_key: bool,
    },
    /// Revoke a permission on a key, a range or a prefix
    RevokePermission {
        role: String,
        key: String,
        range_end: Option<String>,
        #[arg(long)]
        prefix: bool,
        #[arg(long)]
        from_key: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PermType {
    Read,
    Write,
    Readwrite,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    pub key: String,
    pub value: Option<String>,
    /// Attach the key to a lease (hex id)
    #[arg(long)]
    pub lease: Option<String>,
    /// Print the previous key-value
    #[arg(long)]
    pub prev_kv: bool,
    /// Keep the current value (update the lease only)
    #[arg(long)]
    pub ignore_value: bool,
    /// Keep the current lease
    #[arg(long)]
    pub ignore_lease: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum SortBy {
    Key,
    Version,
    Create,
    Modify,
    Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum SortOrder {
    Ascend,
    Descend,
}

/// etcdctl's `--consistency`: `l` linearizable (default), `s` serializable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    L,
    S,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    pub key: String,
    /// Range end (exclusive)
    pub range_end: Option<String>,
    /// Get every key with this prefix
    #[arg(long)]
    pub prefix: bool,
    /// Get every key greater than or equal to the key
    #[arg(long)]
    pub from_key: bool,
    /// At most this many keys (0: no limit)
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Read at this revision (0: the latest)
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Keys only, no values
    #[arg(long)]
    pub keys_only: bool,
    /// Only the number of keys
    #[arg(long)]
    pub count_only: bool,
    /// Print values only
    #[arg(long)]
    pub print_value_only: bool,
    /// Sort by this field
    #[arg(long, value_enum, ignore_case = true)]
    pub sort_by: Option<SortBy>,
    /// Sort order (with --sort-by; default ASCEND)
    #[arg(long, value_enum, ignore_case = true)]
    pub order: Option<SortOrder>,
    /// l: linearizable, s: serializable (served by the member asked, possibly stale)
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
}

#[derive(Debug, Args)]
pub struct DelArgs {
    pub key: String,
    /// Range end (exclusive)
    pub range_end: Option<String>,
    /// Delete every key with this prefix
    #[arg(long)]
    pub prefix: bool,
    /// Delete every key greater than or equal to the key
    #[arg(long)]
    pub from_key: bool,
    /// Print the deleted key-values
    #[arg(long)]
    pub prev_kv: bool,
}

#[derive(Debug, Args)]
pub struct TxnArgs {
    /// Prompt for each section (to stderr)
    #[arg(short, long)]
    pub interactive: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    pub key: String,
    /// Range end (exclusive)
    pub range_end: Option<String>,
    /// Watch every key with this prefix
    #[arg(long)]
    pub prefix: bool,
    /// Start from this revision (0: from now)
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Also print the key-value before each event
    #[arg(long)]
    pub prev_kv: bool,
    /// Stop after this many events
    #[arg(long)]
    pub max_events: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Grant a lease with a TTL in seconds
    Grant { ttl: i64 },
    /// Revoke a lease and delete its keys
    Revoke { id: String },
    /// Remaining TTL of a lease
    Timetolive {
        id: String,
        /// Also list the keys attached
        #[arg(long)]
        keys: bool,
    },
    /// List the active leases
    List,
    /// Keep a lease alive until Ctrl-C
    KeepAlive {
        id: String,
        /// Renew once and exit
        #[arg(long)]
        once: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// List the members
    List,
    /// Add a member
    Add {
        name: String,
        /// Comma-separated peer URLs of the new member
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
        /// Add as a non-voting learner
        #[arg(long)]
        learner: bool,
    },
    /// Remove a member (hex id)
    Remove { id: String },
    /// Promote a learner to a voting member (hex id)
    Promote { id: String },
}

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Status of each endpoint: id, leader, term, raft index, applied index, db size
    Status(ClusterFlag),
    /// Whether each endpoint serves a linearizable read
    Health(ClusterFlag),
}

#[derive(Debug, Args)]
pub struct ClusterFlag {
    /// Ask every member (found through MemberList) instead of the --endpoints
    #[arg(long)]
    pub cluster: bool,
}

#[derive(Debug, Args)]
pub struct CompactionArgs {
    pub revision: i64,
    /// Wait until the compacted history is removed from the backend
    #[arg(long)]
    pub physical: bool,
}

#[derive(Debug, Args)]
pub struct DefragArgs {
    /// Defragment every member (found through MemberList)
    #[arg(long)]
    pub cluster: bool,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Stream a snapshot from one endpoint into FILE (written as FILE.part, then renamed)
    Save { file: PathBuf },
    /// Build a member's data dir from FILE: runs `aspen snapshot restore FILE ARGS...`
    Restore {
        file: PathBuf,
        /// The server's flags: --name, --data-dir, --initial-cluster, ...
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Check a snapshot file: size, SHA-256 trailer, format, revision and keys
    Status { file: PathBuf },
}

/// "5s", "500ms", "2m", "1h", or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (e.g. 5s, 500ms)"))?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => {
            return Err(format!(
                "'{text}': unknown unit '{unit}' (use ms, s, m or h)"
            ));
        }
    };
    if !(seconds > 0.0 && seconds <= 365.0 * 24.0 * 3600.0) {
        return Err(format!("'{text}' must be positive and at most a year"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn command_line_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "aspenctl",
            "--endpoints",
            "a:1,b:2",
            "get",
            "foo",
            "--prefix",
            "--sort-by",
            "modify",
            "-w",
            "json",
        ])
        .expect("parse");
        assert_eq!(cli.endpoints, ["a:1", "b:2"]);
        assert_eq!(cli.write_out, WriteOut::Json);
        let Command::Get(get) = cli.command else {
            panic!("not get");
        };
        assert!(get.prefix);
        assert_eq!(get.sort_by, Some(SortBy::Modify));
    }

    #[test]
    fn restore_passes_server_flags_through() {
        let cli = Cli::try_parse_from([
            "aspenctl",
            "snapshot",
            "restore",
            "s.db",
            "--name",
            "n1",
            "--data-dir",
            "d",
        ])
        .expect("parse");
        let Command::Snapshot(SnapshotCommand::Restore { args, .. }) = cli.command else {
            panic!("not restore");
        };
        assert_eq!(args, ["--name", "n1", "--data-dir", "d"]);
    }
}
