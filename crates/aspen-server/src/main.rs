//! The `aspen` binary: resolve the configuration, start the member, run until SIGINT or
//! SIGTERM, then stop in order and exit 0.

use std::process::ExitCode;

use aspen_node::{FatalStop, NodeError};
use aspen_server::bootstrap::{BootstrapError, EXIT_DISK_FULL, EXIT_STORAGE_FAILED};
use aspen_server::config::{self, ClusterBootstrapConfig, ConfigErrors};

/// mimalloc instead of glibc malloc: a put allocates in tonic, h2, prost and the storage layer on
/// several threads, and glibc's arena locks and free-list work took about 13 % of the server's
/// CPU under put load (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let mut args = config::process_args();
    if args.get(1).map(String::as_str) == Some("snapshot") {
        return aspen_server::restore::main(&args);
    }
    let print_config = args.iter().any(|arg| arg == "--print-config");
    args.retain(|arg| arg != "--print-config");
    let config = match ClusterBootstrapConfig::from_sources(&args, &config::process_env()) {
        Ok(config) => config,
        Err(errors @ ConfigErrors::HelpOrVersion(_)) => {
            print!("{errors}");
            return ExitCode::SUCCESS;
        }
        Err(errors) => {
            for problem in errors.problems() {
                eprintln!("aspen: {problem}");
            }
            return ExitCode::from(errors.exit_code());
        }
    };
    for warning in &config.warnings {
        eprintln!("aspen: warning: {warning}");
    }
    if print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("aspen: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

fn init_logging(config: &ClusterBootstrapConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ASPEN_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{},openraft=warn", config.log_level.as_str()))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(config: ClusterBootstrapConfig) -> ExitCode {
    let handle = match aspen_server::bootstrap_node(&config).await {
        Ok(handle) => handle,
        Err(error @ BootstrapError::Node(NodeError::DiskFull(_))) => {
            eprintln!(
                "aspen: {error}; free space on the data dir's filesystem: exiting with code \
                 {EXIT_DISK_FULL} for a supervisor to restart aspen"
            );
            return ExitCode::from(EXIT_DISK_FULL);
        }
        Err(error) => {
            eprintln!("aspen: {error}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        client = ?handle.client_addrs,
        peer = ?handle.peer_addrs,
        metrics = ?handle.metrics_addrs,
        "aspen is serving"
    );
    let node = handle.node.clone();
    let fatal = tokio::select! {
        _ = wait_for_stop_signal() => None,
        stop = node.fatal() => Some(stop),
    };
    let Some(stop) = fatal else {
        tracing::info!("stopping: finishing in-flight requests");
        handle.shutdown().await;
        tracing::info!("stopped");
        return ExitCode::SUCCESS;
    };
    let code = report_fatal(&stop);
    handle.shutdown().await;
    ExitCode::from(code)
}

/// Says why Raft stopped and picks the exit code: the process cannot serve any more (the
/// databases refuse writes until reopened), so it exits rather than stay up as a zombie that a
/// supervisor would never restart.
fn report_fatal(stop: &FatalStop) -> u8 {
    let cause = stop.io_failure.as_deref().unwrap_or(&stop.raft_error);
    let (code, what) = if stop.disk_full {
        (
            EXIT_DISK_FULL,
            "the data dir's disk is full; free space on its filesystem",
        )
    } else if stop.io_failure.is_some() {
        (EXIT_STORAGE_FAILED, "storage failed")
    } else {
        (EXIT_STORAGE_FAILED, "raft's core ended unexpectedly")
    };
    tracing::error!(cause, raft = %stop.raft_error, code, "raft stopped: {what}; exiting");
    eprintln!(
        "aspen: raft stopped: {what} ({cause}); acknowledged writes are durable: exiting with \
         code {code} for a supervisor to restart aspen"
    );
    code
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    match (interrupt, terminate) {
        (Ok(mut interrupt), Ok(mut terminate)) => {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
        _ => {
            // Without signal handlers the only way to stop is Ctrl-C through tokio's handler.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
