//! `--log-format`, etcd's `--logger` and `--log-outputs`: the real binary's log lines (JSON
//! objects with level, message and target; text; to files, stdout and stderr), and bad values
//! reported with every other configuration problem, naming where they came from.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use aspen_server::config::{ClusterBootstrapConfig, ConfigErrors, LogFormat, LogOutput};
use common::{Process, free_port, poll, spawn_aspen};

/// The line the server logs once it serves, and the last one before it exits.
const SERVING: &str = "aspen is serving";
const STOPPED: &str = "stopped";
/// Longest a stopping server may take to exit.
const EXIT_WAIT_MS: u64 = 10_000;

/// A one-member in-memory server's flags, on free loopback ports, plus `extra`.
fn member_args(extra: &[&str]) -> Vec<String> {
    let client = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let base = [
        "--storage-backend",
        "memory",
        "--listen-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
    ];
    base.iter()
        .chain(extra)
        .map(|arg| arg.to_string())
        .collect()
}

/// Waits until `path` holds the serving line, then stops the server and waits for its exit.
async fn serve_then_stop(process: &mut Process, path: &Path) -> String {
    poll(&format!("'{SERVING}' in {}", path.display()), || async {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.contains(SERVING).then_some(())
    })
    .await;
    process.sigterm();
    let status = process.wait_exit(EXIT_WAIT_MS).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}; stderr:\n{}",
        process.log()
    );
    std::fs::read_to_string(path).expect("read log output")
}

/// Every line of `text` as a JSON object with string `level`, `message` and `target`; the
/// messages, in order.
fn json_messages(text: &str) -> Vec<String> {
    let mut messages = Vec::new();
    for line in text.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
        let field = |name: &str| -> String {
            value[name]
                .as_str()
                .unwrap_or_else(|| panic!("no string '{name}' in {line}"))
                .to_string()
        };
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&field("level").as_str()),
            "{line}"
        );
        assert!(!field("target").is_empty(), "{line}");
        messages.push(field("message"));
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_go_to_a_file_one_object_per_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("aspen.json.log");
    let file_text = file.to_str().expect("utf-8 path");
    let args = member_args(&["--log-format", "json", "--log-outputs", file_text]);
    let mut process = spawn_aspen(&args, &dir.path().join("stderr"));
    let text = serve_then_stop(&mut process, &file).await;
    let messages = json_messages(&text);
    assert!(messages.iter().any(|m| m == SERVING), "{text}");
    assert_eq!(messages.last().map(String::as_str), Some(STOPPED), "{text}");
    let stderr = process.log();
    assert!(
        !stderr.contains(SERVING),
        "logs went to stderr as well: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logger_zap_writes_json_to_stdout_and_a_file_alike() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("aspen.log");
    // A file's earlier content is kept: outputs are appended to, as etcd's.
    std::fs::write(&file, "").expect("create log file");
    let outputs = format!("stdout,{}", file.display());
    let stdout_path = dir.path().join("stdout");
    let args = member_args(&["--logger", "zap", "--log-outputs", &outputs]);
    let stdout = std::fs::File::create(&stdout_path).expect("stdout file");
    let child = Command::new(env!("CARGO_BIN_EXE_aspen"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr file"))
        .spawn()
        .expect("spawn aspen");
    let mut process = Process::from_child(child, dir.path().join("stderr"));
    let from_file = serve_then_stop(&mut process, &file).await;
    let from_stdout = std::fs::read_to_string(&stdout_path).expect("read stdout");
    assert_eq!(json_messages(&from_file), json_messages(&from_stdout));
    assert!(json_messages(&from_file).iter().any(|m| m == SERVING));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_to_a_file_have_no_colour_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("aspen.log");
    let args = member_args(&[
        "--logger",
        "capnslog",
        "--log-outputs",
        file.to_str().unwrap(),
    ]);
    let mut process = spawn_aspen(&args, &dir.path().join("stderr"));
    let text = serve_then_stop(&mut process, &file).await;
    let serving = text
        .lines()
        .find(|line| line.contains(SERVING))
        .expect("serving line");
    assert!(serving.contains(" INFO "), "{serving}");
    assert!(serde_json::from_str::<serde_json::Value>(serving).is_err());
    assert!(!text.contains('\u{1b}'), "escape codes in a file: {text}");
}

#[test]
fn bad_log_settings_are_reported_with_the_other_problems_by_the_binary() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config_file = dir.path().join("aspen.toml");
    std::fs::write(&config_file, "log-format = \"yaml\"\n").expect("write config file");
    let unwritable = "/nonexistent-aspen-dir/aspen.log";
    let output = Command::new(env!("CARGO_BIN_EXE_aspen"))
        .args(["--config-file", config_file.to_str().unwrap()])
        .args(["--log-outputs", unwritable, "--snapshot-count", "0"])
        .env("ASPEN_LOGGER", "loud")
        .stdin(Stdio::null())
        .output()
        .expect("run aspen");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "aspen: --snapshot-count must be greater than 0".to_string(),
            "aspen: --logger must be 'zap' or 'capnslog', got 'loud' (from ASPEN_LOGGER)"
                .to_string(),
            format!(
                "aspen: --log-format must be 'text' or 'json', got 'yaml' (from --config-file {})",
                config_file.display()
            ),
            format!(
                "aspen: --log-outputs: open sink \"{unwritable}\": No such file or directory \
                 (os error 2)"
            ),
        ]
    );
}

fn resolve(flags: &[&str]) -> Result<ClusterBootstrapConfig, ConfigErrors> {
    let args: Vec<String> = std::iter::once("aspen")
        .chain(flags.iter().copied())
        .map(String::from)
        .collect();
    ClusterBootstrapConfig::from_sources(&args, &HashMap::new())
}

fn problems(flags: &[&str]) -> Vec<String> {
    match resolve(flags) {
        Err(ConfigErrors::Invalid(problems)) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn log_flags_resolve_as_etcds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("a.log");
    let file_text = file.to_str().unwrap();
    let config = resolve(&[]).expect("defaults");
    assert_eq!(config.log_format, LogFormat::Text);
    assert_eq!(config.log_outputs, vec![LogOutput::Stderr]);

    let config = resolve(&["--logger", "zap"]).expect("zap");
    assert_eq!(config.log_format, LogFormat::Json);
    let outputs = format!("stdout,{file_text},stderr");
    let config = resolve(&["--log-format", "json", "--log-outputs", &outputs]).expect("outputs");
    assert_eq!(
        config.log_outputs,
        vec![
            LogOutput::Stdout,
            LogOutput::File(PathBuf::from(file_text)),
            LogOutput::Stderr
        ]
    );
    assert!(file.exists(), "the file is created when checked");
    // --print-config writes them back.
    let printed = config.to_toml();
    assert!(
        printed.contains(&format!("log-outputs = \"{outputs}\"")),
        "{printed}"
    );
    assert!(printed.contains("log-format = \"json\""), "{printed}");

    assert_eq!(
        problems(&["--log-outputs", "default,stdout"]),
        ["--log-outputs: multi logoutput for \"default\" is not supported yet"]
    );
    assert_eq!(
        problems(&["--log-outputs", "stdout,stdout"]),
        ["--log-outputs: 'stdout' is listed twice"]
    );
    assert_eq!(
        problems(&["--log-outputs", ","]),
        ["--log-outputs: no output given"]
    );
    assert_eq!(
        problems(&["--logger", "zap", "--log-format", "text"]),
        ["--log-format text conflicts with --logger zap, which writes json"]
    );
    let dir_as_file = dir.path().to_str().unwrap();
    let found = problems(&["--log-outputs", dir_as_file]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with(&format!("--log-outputs: open sink \"{dir_as_file}\": ")),
        "{found:?}"
    );
}
