//! snapshot save (Maintenance.Snapshot into FILE.part, checked, then renamed), restore
//! (delegates to `aspen snapshot restore`) and status (size, SHA-256 trailer, format, and for
//! etcd's format, a bbolt file, `etcdctl snapshot status`'s hash, revision and total keys).

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aspen_core::codec;
use aspen_core::convert::usize_from;
use aspen_core::limits::SNAPSHOT_FRAME_BYTES_MAX;
use aspen_core::snapshot_format::{Frame, SNAPSHOT_MAGIC};
use aspen_proto::etcdserverpb as pb;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::Ctx;
use crate::cli::SnapshotCommand;
use crate::error::CliError;
use crate::limits::{SNAPSHOT_BYTES_MAX, SNAPSHOT_READ_CHUNK_BYTES};
use crate::output::{self, WriteOut, human_bytes, print_json};

/// Length of the SHA-256 trailer etcd's Snapshot stream ends with.
pub const SHA256_BYTES: u64 = 32;
/// How `snapshot status` names etcd's format (what Aspen's Snapshot RPC sends too).
pub const ETCD_FORMAT: &str = "etcd v3 (bbolt)";
/// How often the restore spinner moves.
const SPINNER_TICK_MS: u64 = 100;

pub async fn run(ctx: &Ctx, command: SnapshotCommand) -> Result<(), CliError> {
    match command {
        SnapshotCommand::Save { file } => save(ctx, &file).await,
        SnapshotCommand::Restore { file, args } => restore(&file, &args).await,
        SnapshotCommand::Status { file } => status(ctx, &file),
    }
}

fn part_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

fn io_error(what: &str, path: &Path, error: &std::io::Error) -> CliError {
    CliError::request(format!("{what} {}: {error}", path.display()))
}

fn bytes_bar(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// Streams the snapshot into `FILE.part`, checks its SHA-256 trailer, fsyncs, renames to
/// `FILE`: a crash or an error never leaves a truncated `FILE`.
async fn save(ctx: &Ctx, file: &Path) -> Result<(), CliError> {
    if ctx.endpoints.len() != 1 {
        return Err(CliError::usage(
            "snapshot save: give exactly one endpoint (--endpoints host:port)",
        ));
    }
    let conn = ctx.conn().await?;
    let part = part_path(file);
    let mut out =
        File::create(&part).map_err(|e| io_error("snapshot save: creating", &part, &e))?;
    let bar = bytes_bar(ctx.write_out == WriteOut::Json);
    let received = tokio::select! {
        result = receive(&conn, &mut out, &bar) => result,
        _ = tokio::signal::ctrl_c() => Err(CliError::request("snapshot save: interrupted")),
    };
    bar.finish_and_clear();
    let finished = received.and_then(|bytes| {
        out.sync_all()
            .map_err(|e| io_error("snapshot save: syncing", &part, &e))?;
        drop(out);
        std::fs::rename(&part, file)
            .map_err(|e| io_error("snapshot save: renaming to", file, &e))?;
        sync_parent_dir(file);
        Ok(bytes)
    });
    let bytes = match finished {
        Ok(bytes) => bytes,
        Err(error) => {
            let _ = std::fs::remove_file(&part);
            return Err(error);
        }
    };
    match ctx.write_out {
        WriteOut::Json => print_json(&json!({ "path": file.display().to_string(), "size": bytes })),
        _ => println!("Snapshot saved at {}", file.display()),
    }
    Ok(())
}

/// The rename is durable once the directory is synced; best effort (not every filesystem
/// lets a directory be opened for that).
fn sync_parent_dir(file: &Path) {
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(dir) = File::open(parent) {
        let _ = dir.sync_all();
    }
}

/// Writes every blob in order; returns the bytes written, after checking the trailer.
async fn receive(
    conn: &crate::connect::Conn,
    out: &mut File,
    bar: &ProgressBar,
) -> Result<u64, CliError> {
    let what = format!("snapshot save from {}", conn.endpoint);
    let mut stream = crate::connect::unary(
        conn.command_timeout,
        &what,
        conn.maintenance().snapshot(pb::SnapshotRequest {}),
    )
    .await?;
    let mut sha = Sha256::new();
    let mut written: u64 = 0;
    let mut expected: Option<u64> = None;
    let mut last_blob: Vec<u8> = Vec::new();
    // Bounded: the server announces the total (at most SNAPSHOT_BYTES_MAX) and every message
    // must stay within it.
    loop {
        let message = stream
            .message()
            .await
            .map_err(|s| CliError::from_status(&what, &s))?;
        let Some(message) = message else { break };
        let total = *expected.get_or_insert(
            written + message.blob.len() as u64 + message.remaining_bytes + SHA256_BYTES,
        );
        if total > SNAPSHOT_BYTES_MAX {
            return Err(CliError::request(format!(
                "{what}: the server announced {total} bytes, more than {SNAPSHOT_BYTES_MAX}"
            )));
        }
        bar.set_length(total);
        written += message.blob.len() as u64;
        if written > total {
            return Err(CliError::request(format!(
                "{what}: received more than the {total} bytes announced"
            )));
        }
        out.write_all(&message.blob)
            .map_err(|e| CliError::request(format!("{what}: writing: {e}")))?;
        bar.set_position(written);
        // The last message is the digest; everything before it is hashed.
        sha.update(&last_blob);
        last_blob = message.blob;
    }
    check_trailer(&what, sha, &last_blob, written, expected)?;
    Ok(written)
}

/// etcd ends the stream with the SHA-256 of everything before it, as its own message.
fn check_trailer(
    what: &str,
    sha: Sha256,
    last: &[u8],
    written: u64,
    expected: Option<u64>,
) -> Result<(), CliError> {
    if expected != Some(written) {
        return Err(CliError::request(format!(
            "{what}: the stream ended after {written} of {} bytes",
            expected.unwrap_or(0)
        )));
    }
    if last.len() as u64 != SHA256_BYTES {
        return Err(CliError::request(format!(
            "{what}: the stream did not end with a SHA-256 digest"
        )));
    }
    if sha.finalize().as_slice() != last {
        return Err(CliError::request(format!(
            "{what}: SHA-256 mismatch: the snapshot is corrupt"
        )));
    }
    Ok(())
}

/// Finds `aspen` next to this executable, else on PATH.
fn find_aspen() -> Result<PathBuf, CliError> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("aspen")));
    if let Some(path) = beside.filter(|p| p.is_file()) {
        return Ok(path);
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .map(|dir| dir.join("aspen"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CliError::request(
                "snapshot restore: cannot find the aspen binary next to aspenctl or on PATH",
            )
        })
}

async fn restore(file: &Path, args: &[String]) -> Result<(), CliError> {
    let aspen = find_aspen()?;
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(format!("restoring {}", file.display()));
    spinner.enable_steady_tick(Duration::from_millis(SPINNER_TICK_MS));
    let output = tokio::process::Command::new(&aspen)
        .arg("snapshot")
        .arg("restore")
        .arg(file)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    spinner.finish_and_clear();
    let output = output.map_err(|e| {
        CliError::request(format!(
            "snapshot restore: running {}: {e}",
            aspen.display()
        ))
    })?;
    print!("{}", String::from_utf8_lossy(&output.stdout));
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let reason = stderr
        .trim()
        .trim_start_matches("aspen: ")
        .trim_start_matches("snapshot restore: ")
        .to_string();
    let error = format!("snapshot restore: {reason}");
    // aspen exits 2 for bad flags: that is a usage error here too.
    if output.status.code() == Some(2) {
        Err(CliError::usage(error))
    } else {
        Err(CliError::request(error))
    }
}

/// What `snapshot status` found in a file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SnapshotReport {
    pub size_bytes: u64,
    /// `Some(true)` if the trailer matches, `Some(false)` if not, `None` without a trailer.
    pub sha256_ok: Option<bool>,
    pub format: String,
    pub revision: Option<u64>,
    pub keys: Option<u64>,
    /// Aspen snapshots end with a CRC-32 of the body.
    pub crc_ok: Option<bool>,
    /// etcd's format: `etcdctl snapshot status`'s hash (CRC-32C of every bucket's contents).
    pub etcd_hash: Option<u32>,
    /// What is wrong with a file of a known format that is not a valid one.
    pub problem: Option<String>,
}

fn status(ctx: &Ctx, file: &Path) -> Result<(), CliError> {
    let report = inspect_snapshot(file)?;
    let sha = match report.sha256_ok {
        Some(true) => "ok",
        Some(false) => "MISMATCH",
        None => "absent",
    };
    let crc = match report.crc_ok {
        Some(true) => "ok",
        Some(false) => "MISMATCH",
        None => "-",
    };
    let or_dash = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let hash = report
        .etcd_hash
        .map_or("-".to_string(), |h| format!("{h:x}"));
    match ctx.write_out {
        WriteOut::Json => print_json(&json!({
            "path": file.display().to_string(),
            "totalSize": report.size_bytes,
            "sha256": sha,
            "format": report.format,
            "revision": report.revision,
            "totalKey": report.keys,
            "crc32": crc,
            "hash": report.etcd_hash,
        })),
        WriteOut::Table => print!(
            "{}",
            output::table(
                &[
                    "FORMAT",
                    "SHA256",
                    "CRC32",
                    "HASH",
                    "REVISION",
                    "TOTAL KEYS",
                    "TOTAL SIZE"
                ],
                &[vec![
                    report.format.clone(),
                    sha.to_string(),
                    crc.to_string(),
                    hash.clone(),
                    or_dash(report.revision),
                    or_dash(report.keys),
                    human_bytes(report.size_bytes),
                ]]
            )
        ),
        WriteOut::Simple => println!(
            "{}, sha256 {sha}, crc32 {crc}, hash {hash}, revision {}, {} keys, {}",
            report.format,
            or_dash(report.revision),
            or_dash(report.keys),
            human_bytes(report.size_bytes)
        ),
    }
    if report.format == "unknown" && report.sha256_ok.is_none() {
        return Err(CliError::request(format!(
            "snapshot status {}: not a snapshot (no known format, no SHA-256 trailer)",
            file.display()
        )));
    }
    if let Some(problem) = &report.problem {
        return Err(CliError::request(format!("snapshot status: {problem}")));
    }
    if report.sha256_ok == Some(false) || report.crc_ok == Some(false) {
        return Err(CliError::request(format!(
            "snapshot status {}: the file is corrupt",
            file.display()
        )));
    }
    Ok(())
}

/// Reads the file twice, streaming: once for the SHA-256 trailer, once to walk its frames
/// (Aspen's format) or its buckets (etcd's). Memory does not depend on the file's size.
pub fn inspect_snapshot(file: &Path) -> Result<SnapshotReport, CliError> {
    let what = format!("snapshot status {}", file.display());
    let io = |e: std::io::Error| CliError::request(format!("{what}: {e}"));
    let size_bytes = std::fs::metadata(file).map_err(io)?.len();
    let mut report = SnapshotReport {
        size_bytes,
        ..Default::default()
    };
    let mut head = [0u8; 64];
    let head_len = read_up_to(&mut File::open(file).map_err(io)?, &mut head).map_err(io)?;
    let head = &head[..head_len];
    // etcd's and Aspen's saved snapshots are a body padded to 512 bytes, then the SHA-256.
    let has_trailer = size_bytes >= SHA256_BYTES && size_bytes % 512 == SHA256_BYTES;
    if aspen_etcd_snapshot::file::looks_like_bbolt(file)
        .map_err(|e| CliError::request(e.to_string()))?
    {
        inspect_etcd(file, &mut report);
        return Ok(report);
    }
    if has_trailer {
        report.sha256_ok = Some(sha256_trailer_matches(file, size_bytes).map_err(io)?);
    }
    if head.starts_with(SNAPSHOT_MAGIC) {
        report.format = "aspen v1".to_string();
        let body_bytes = size_bytes - if has_trailer { SHA256_BYTES } else { 0 };
        match walk_aspen_frames(file, body_bytes) {
            Ok(walked) => {
                report.revision = walked.revision;
                report.keys = Some(walked.keys);
                report.crc_ok = Some(walked.crc_ok);
            }
            // A frame that does not parse is corruption, reported as a failed CRC.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                report.crc_ok = Some(false);
            }
            Err(e) => return Err(io(e)),
        }
    } else {
        report.format = "unknown".to_string();
    }
    Ok(report)
}

/// etcd's format: what `etcdctl snapshot status` reports (its revision is the newest
/// version's; its total keys count every bucket's entries; its size is the database's).
fn inspect_etcd(file: &Path, report: &mut SnapshotReport) {
    use aspen_etcd_snapshot::file::Sha256Trailer;
    report.format = ETCD_FORMAT.to_string();
    let opened = aspen_etcd_snapshot::EtcdSnapshot::open(file);
    let walked = opened.and_then(|snapshot| {
        let summary = snapshot.summary()?;
        let (hash, total_keys) = snapshot.etcd_status_hash()?;
        Ok((summary, hash, total_keys))
    });
    match walked {
        Ok((summary, hash, total_keys)) => {
            report.sha256_ok = (summary.sha256 == Sha256Trailer::Verified).then_some(true);
            report.revision = Some(summary.newest_version_revision);
            report.keys = Some(total_keys);
            report.etcd_hash = Some(hash);
            report.size_bytes = summary.db_bytes;
        }
        Err(aspen_etcd_snapshot::Error::Sha256Mismatch { .. }) => report.sha256_ok = Some(false),
        Err(e) => report.problem = Some(e.to_string()),
    }
}

fn read_up_to(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        let n = reader.read(&mut buffer[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

fn sha256_trailer_matches(file: &Path, size_bytes: u64) -> std::io::Result<bool> {
    let mut reader = BufReader::new(File::open(file)?);
    let mut sha = Sha256::new();
    let mut remaining = size_bytes - SHA256_BYTES;
    let mut chunk = vec![0u8; SNAPSHOT_READ_CHUNK_BYTES];
    while remaining > 0 {
        let want = usize_from(remaining.min(chunk.len() as u64));
        reader.read_exact(&mut chunk[..want])?;
        sha.update(&chunk[..want]);
        remaining -= want as u64;
    }
    let mut trailer = [0u8; usize_from(SHA256_BYTES)];
    reader.read_exact(&mut trailer)?;
    Ok(sha.finalize().as_slice() == trailer)
}

struct Walked {
    revision: Option<u64>,
    keys: u64,
    crc_ok: bool,
}

/// Walks `[u32 BE length][frame]` records after the magic up to the End frame, each decoded as
/// the storage crate writes it (`aspen_core::snapshot_format::Frame`), then checks the CRC-32
/// that follows it.
fn walk_aspen_frames(file: &Path, body_bytes: u64) -> std::io::Result<Walked> {
    let corrupt = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let mut reader = BufReader::new(File::open(file)?);
    let mut crc = crc32fast::Hasher::new();
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic)?;
    crc.update(&magic);
    let mut consumed: u64 = magic.len() as u64;
    let mut walked = Walked {
        revision: None,
        keys: 0,
        crc_ok: false,
    };
    let mut frame = Vec::new();
    // Bounded: every pass consumes at least 4 bytes of a body of `body_bytes`.
    while consumed < body_bytes {
        let mut len = [0u8; 4];
        reader.read_exact(&mut len)?;
        let frame_bytes = u32::from_be_bytes(len);
        if u64::from(frame_bytes) > SNAPSHOT_FRAME_BYTES_MAX {
            return Err(corrupt(&format!(
                "a frame of {frame_bytes} bytes is over the {SNAPSHOT_FRAME_BYTES_MAX}-byte limit"
            )));
        }
        if consumed + 4 + u64::from(frame_bytes) > body_bytes {
            return Err(corrupt("a frame runs past the end of the file"));
        }
        frame.resize(frame_bytes as usize, 0);
        reader.read_exact(&mut frame)?;
        crc.update(&len);
        crc.update(&frame);
        consumed += 4 + u64::from(frame_bytes);
        let decoded: Frame =
            codec::decode(&frame).map_err(|e| corrupt(&format!("a frame does not decode: {e}")))?;
        match decoded {
            Frame::Header { revision, .. } => walked.revision = Some(revision),
            Frame::Latest { .. } => walked.keys += 1,
            Frame::End { .. } => {
                let mut stored = [0u8; 4];
                reader.read_exact(&mut stored)?;
                walked.crc_ok = crc.finalize() == u32::from_be_bytes(stored);
                return Ok(walked);
            }
            _ => {}
        }
    }
    Err(corrupt("no End frame"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_file_sits_beside_the_target() {
        assert_eq!(
            part_path(Path::new("/tmp/s.db")),
            PathBuf::from("/tmp/s.db.part")
        );
    }

    #[test]
    fn status_checks_an_aspen_snapshot_and_its_trailer() {
        let dir = std::env::temp_dir().join(format!("aspenctl-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("snap.db");
        let mut body = SNAPSHOT_MAGIC.to_vec();
        // As aspen-storage writes them: a header, one key with an older version, the end.
        let version =
            |mod_revision: u64, value: &[u8]| aspen_core::snapshot_format::StoredVersion {
                value: value.to_vec(),
                create_revision: 5,
                mod_revision,
                sub_revision: 0,
                version: mod_revision - 4,
                lease: 0,
            };
        let frames = [
            Frame::Header {
                revision: 7,
                compact_revision: 0,
                alarms: Vec::new(),
            },
            Frame::Latest {
                key: b"k".to_vec(),
                version: version(6, b"new"),
            },
            Frame::History {
                key: b"k".to_vec(),
                revision: 5,
                version: version(5, b"old"),
            },
            Frame::End { frames: 3 },
        ];
        for frame in &frames {
            let encoded = codec::encode(frame);
            let len = u32::try_from(encoded.len()).expect("a small frame");
            body.extend_from_slice(&len.to_be_bytes());
            body.extend_from_slice(&encoded);
        }
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_be_bytes());
        body.resize(body.len().div_ceil(512) * 512, 0);
        let digest = Sha256::digest(&body);
        body.extend_from_slice(&digest);
        std::fs::write(&path, &body).expect("write");
        let report = inspect_snapshot(&path).expect("inspect");
        assert_eq!(report.format, "aspen v1");
        assert_eq!(report.sha256_ok, Some(true));
        assert_eq!(report.crc_ok, Some(true));
        assert_eq!((report.revision, report.keys), (Some(7), Some(1)));
        // One flipped bit in the header frame (revision 7 -> 6): both checks notice.
        body[14] ^= 1;
        std::fs::write(&path, &body).expect("write");
        let report = inspect_snapshot(&path).expect("inspect");
        assert_eq!(report.sha256_ok, Some(false));
        assert_eq!(report.crc_ok, Some(false));
        assert_eq!(report.revision, Some(6));
        // A frame that is not one the storage crate writes (an unknown variant) is corruption.
        let unknown_variant = 8 + 4 + 1;
        body[unknown_variant] = 0x7f;
        std::fs::write(&path, &body).expect("write");
        let report = inspect_snapshot(&path).expect("inspect");
        assert_eq!(report.crc_ok, Some(false));
        assert_eq!(report.revision, None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
