//! aspenctl: an etcd v3 command-line client for Aspen (etcdctl's commands, flags and output)
//! and a closed-loop benchmark (`aspenctl bench`) that measures etcd and Aspen alike.
//!
//! A separate binary from the server, so `aspen`'s flags stay exactly etcd's.

pub mod bench;
pub mod cli;
pub mod cmd;
pub mod connect;
pub mod error;
pub mod limits;
pub mod output;
pub mod request;
pub mod txn;

use clap::Parser;

use crate::error::{CliError, EXIT_OK, EXIT_USAGE};

/// Worker threads for `command`: one, except for a benchmark of several clients, which gets
/// one per client up to the machine's cores. A second idle worker costs a lone request
/// a wake of that worker on every hand-off between tasks: on a 2-core machine it added about
/// 40 µs to a lone put's round trip and took CPU from the server being measured
/// (docs/performance.md, session 15).
fn runtime_workers(command: &cli::Command) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let wanted = match command {
        cli::Command::Bench(bench) => usize::try_from(bench.clients).unwrap_or(usize::MAX),
        _ => 1,
    };
    wanted.clamp(1, cores.max(1))
}

/// Parses `args`, runs the command, prints any error as one line, and returns the exit code.
pub fn main_with_args(args: Vec<std::ffi::OsString>) -> u8 {
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                EXIT_USAGE
            } else {
                EXIT_OK
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(runtime_workers(&cli.command))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("aspenctl: cannot start the async runtime: {error}");
            return error::EXIT_REQUEST_FAILED;
        }
    };
    let result: Result<(), CliError> = runtime.block_on(cmd::run(cli));
    // Watch and keep-alive streams may still be open: don't wait for them.
    runtime.shutdown_background();
    match result {
        Ok(()) => EXIT_OK,
        Err(error) => {
            eprintln!("{error}");
            error.exit_code()
        }
    }
}
