//! The `aspen` binary: resolve the configuration, start the member, run until SIGINT or
//! SIGTERM, then stop in order and exit 0.

use std::process::ExitCode;

use aspen_server::config::{self, ClusterBootstrapConfig, ConfigErrors, LogFormat, LogOutput};

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
    if let Err(problem) = init_logging(&config) {
        eprintln!("aspen: {problem}");
        return ExitCode::FAILURE;
    }
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

/// Logs as `--log-level`, `--log-format` and `--log-outputs` say (`ASPEN_LOG`, an
/// `EnvFilter` directive, overrides the level). Each line goes to every output.
fn init_logging(config: &ClusterBootstrapConfig) -> Result<(), String> {
    use std::io::IsTerminal;
    use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
    let filter = tracing_subscriber::EnvFilter::try_from_env(config::LOG_FILTER_ENV)
        .unwrap_or_else(|_| {
            let level = config::value_name(&config.log_level);
            tracing_subscriber::EnvFilter::new(format!("{level},openraft=warn"))
        });
    let mut writer: Option<BoxMakeWriter> = None;
    for output in &config.log_outputs {
        let next = match output {
            LogOutput::Stderr => BoxMakeWriter::new(std::io::stderr),
            LogOutput::Stdout => BoxMakeWriter::new(std::io::stdout),
            LogOutput::File(path) => {
                let file = config::open_log_file(path).map_err(|error| {
                    format!("--log-outputs: open sink \"{}\": {error}", path.display())
                })?;
                BoxMakeWriter::new(std::sync::Arc::new(file))
            }
        };
        writer = Some(match writer {
            None => next,
            Some(before) => BoxMakeWriter::new(before.and(next)),
        });
    }
    // Colours only where every output is a terminal: never escape codes in files or pipes.
    let ansi = config.log_outputs.iter().all(|output| match output {
        LogOutput::Stderr => std::io::stderr().is_terminal(),
        LogOutput::Stdout => std::io::stdout().is_terminal(),
        LogOutput::File(_) => false,
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer.unwrap_or_else(|| BoxMakeWriter::new(std::io::stderr)))
        .with_ansi(ansi);
    match config.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    Ok(())
}

async fn run(config: ClusterBootstrapConfig) -> ExitCode {
    let handle = match aspen_server::bootstrap_node(&config).await {
        Ok(handle) => handle,
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
    wait_for_stop_signal().await;
    tracing::info!("stopping: finishing in-flight requests");
    handle.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
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
