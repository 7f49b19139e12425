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
