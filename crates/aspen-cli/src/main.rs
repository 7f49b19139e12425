//! The `aspenctl` binary; see the library for the commands.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(aspen_cli::main_with_args(std::env::args_os().collect()))
}
