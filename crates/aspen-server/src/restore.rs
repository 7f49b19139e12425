//! `aspen snapshot restore FILE [flags]`: builds a member's data dir from a saved snapshot, as
//! `etcdctl snapshot restore` does for etcd: one saved from etcd 3.4 or from Aspen (both are
//! etcd's format, a bbolt file), or Aspen's older own format; the content tells which.
//!
//! The flags are the server's (`--name`, `--data-dir`, `--initial-cluster`,
//! `--initial-cluster-token`, `--initial-advertise-peer-urls`); run it once per member with
//! the same file and cluster, then start every member with the same flags.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use aspen_core::NodeInfo;
use aspen_storage::StorageBackend;

use crate::config::{self, ClusterBootstrapConfig, ConfigErrors};

const USAGE: &str = "usage: aspen snapshot restore FILE --name NAME --data-dir DIR \\
    --initial-cluster NAME=URL,... --initial-cluster-token TOKEN --initial-advertise-peer-urls URL";

pub fn main(args: &[String]) -> ExitCode {
    if args.get(2).map(String::as_str) != Some("restore")
        || args.len() < 4
        || args[3].starts_with('-')
    {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let file = PathBuf::from(&args[3]);
    let mut server_args = vec![args[0].clone()];
    server_args.extend(args[4..].iter().cloned());
    let config = match ClusterBootstrapConfig::from_sources(&server_args, &config::process_env()) {
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
    match restore(&file, &config) {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("aspen: snapshot restore: {message}");
            ExitCode::FAILURE
        }
    }
}

fn restore(file: &std::path::Path, config: &ClusterBootstrapConfig) -> Result<String, String> {
    if !matches!(config.storage_backend, StorageBackend::Redb { .. }) {
        return Err("--storage-backend memory keeps nothing to restore into; use redb".into());
    }
    let data_dir_existed = config.data_dir.exists();
    let data_dir_in_use = std::fs::read_dir(&config.data_dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if data_dir_in_use {
        return Err(format!(
            "data dir {} already exists and is not empty",
            config.data_dir.display()
        ));
    }
    let members: BTreeMap<u64, NodeInfo> = config
        .initial_cluster
        .iter()
        .map(|m| {
            let id = m.member_id(&config.initial_cluster_token);
            let info = NodeInfo {
                name: m.name.clone(),
                peer_urls: m.peer_urls.clone(),
                client_urls: Vec::new(),
            };
            (id, info)
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let restored = runtime.block_on(aspen_storage::restore::restore_saved_snapshot(
        file,
        &config.storage_backend,
        config.limits,
        members,
    ));
    let summary = match restored {
        Ok(summary) => summary,
        Err(error) => {
            // The file is checked whole before anything is written; whatever a later failure
            // left in the (new or empty) data dir goes, so a retry finds it empty again.
            remove_partial_restore(&config.data_dir, data_dir_existed);
            return Err(error.to_string());
        }
    };
    Ok(format!(
        "restored {} ({} bytes): revision {}, {} keys, into {} for member {} of a {}-member cluster",
        file.display(),
        summary.snapshot_bytes,
        summary.revision,
        summary.keys,
        config.data_dir.display(),
        config.name,
        config.initial_cluster.len()
    ))
}

/// Empties a data dir a failed restore wrote into: it was empty or absent before.
fn remove_partial_restore(data_dir: &std::path::Path, existed: bool) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = removed {
            eprintln!(
                "aspen: snapshot restore: cannot remove {}: {e}",
                path.display()
            );
        }
    }
    if !existed {
        let _ = std::fs::remove_dir(data_dir);
    }
}
