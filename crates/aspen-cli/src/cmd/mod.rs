//! Command dispatch: each command connects, sends its requests and prints in the format asked.

pub mod auth;
pub mod endpoint;
pub mod kv;
pub mod lease;
pub mod member;
pub mod snapshot;
pub mod watch;

use crate::cli::{Cli, Command};
use crate::connect::{Conn, Dial, endpoint_list};
use crate::error::CliError;
use crate::output::WriteOut;

/// What every command needs: where the servers are, how to reach them, how to print.
pub struct Ctx {
    pub dial: Dial,
    pub endpoints: Vec<String>,
    pub write_out: WriteOut,
}

impl Ctx {
    /// The first endpoint that answers.
    pub async fn conn(&self) -> Result<Conn, CliError> {
        self.dial.connect_any(&self.endpoints).await
    }
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    let tls = crate::connect::TlsFlags::new(aspen_tls::ClientTlsOptions {
        ca_file: cli.cacert.clone(),
        cert_file: cli.cert.clone(),
        key_file: cli.key.clone(),
        insecure_skip_verify: cli.insecure_skip_tls_verify,
    });
    let ctx = Ctx {
        endpoints: endpoint_list(&cli.endpoints, tls.any_given())?,
        dial: crate::connect::Dial {
            dial_timeout: cli.dial_timeout,
            command_timeout: cli.command_timeout,
            tls,
            credentials: crate::connect::Credentials::parse(
                cli.user.as_deref(),
                cli.password.as_deref(),
            )?,
        },
        write_out: cli.write_out,
    };
    match cli.command {
        Command::Put(args) => kv::put(&ctx, args).await,
        Command::Get(args) => kv::get(&ctx, args).await,
        Command::Del(args) => kv::del(&ctx, args).await,
        Command::Txn(args) => kv::txn(&ctx, args).await,
        Command::Compaction(args) => kv::compaction(&ctx, args).await,
        Command::Watch(args) => watch::watch(&ctx, args).await,
        Command::Lease(command) => lease::run(&ctx, command).await,
        Command::Member(command) => member::run(&ctx, command).await,
        Command::Endpoint(command) => endpoint::run(&ctx, command).await,
        Command::Defrag(args) => endpoint::defrag(&ctx, args).await,
        Command::Snapshot(command) => snapshot::run(&ctx, command).await,
        Command::Bench(args) => crate::bench::run(&ctx, args).await,
        Command::Auth(command) => auth::auth(&ctx, command).await,
        Command::User(command) => auth::user(&ctx, command).await,
        Command::Role(command) => auth::role(&ctx, command).await,
    }
}
