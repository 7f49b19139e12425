//! Storage benchmark: log append, one-entry log commit latency beside the disk's raw floor (one
//! page written into a preallocated file, then fdatasync), apply, snapshot build/install and
//! space per key, on redb and in memory.
//!
//! Run: `cargo run --release -p aspen-storage --example storage_bench -- [--keys N]`
//! (default 1,000,000 keys). The redb store lives in a temporary directory under `$TMPDIR`
//! (else `/tmp`). Its file goes through a redb backend that counts `sync_data` calls, which is
//! how redb makes a commit durable (fdatasync on unix), so "fsyncs/batch" is measured, not
//! assumed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aspen_core::convert::usize_from;
use aspen_core::limits::Limits;
use aspen_core::type_config::alias::{Entry, LogId};
use aspen_core::{Command, PutRequest, RangeRequest, TypeConfig};
use aspen_storage::{LogStore, StateMachine, StorageBackend, open_storage};
use openraft::storage::RaftStateMachine;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, RaftSnapshotBuilder};

const KEYS_DEFAULT: u64 = 1_000_000;
/// Keeps a mistyped `--keys` from filling the disk.
const KEYS_MAX: u64 = 100_000_000;
const KEY_BYTES: u64 = 16;
const VALUE_BYTES: u64 = 256;
const APPEND_BATCH_SIZES: [u64; 3] = [1, 64, 1024];
/// Each append measurement stops after this long or this many entries, whichever comes first.
const APPEND_DURATION_MS_MAX: u64 = 2_000;
const APPEND_ENTRIES_MAX: u64 = 200_000;
/// Entries per `apply_entries` call in the apply measurement.
const APPLY_BATCH_ENTRIES: u64 = 1024;
const MIB: f64 = 1024.0 * 1024.0;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The allocator the `aspen` binary runs with (`aspen-server/src/main.rs`), so the figures are
/// the storage layer's as the server runs it: with glibc's malloc, 18 % of the apply's samples
/// were in malloc and free (redb allocates and frees a buffer per page a commit dirties).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Which backend a run uses; for redb, the directory its stores go in.
enum Target {
    Redb { dir: PathBuf },
    Memory,
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Redb { .. } => "redb",
            Target::Memory => "memory",
        }
    }

    /// Opens a fresh store named `name` (a storage directory in the run's directory for redb).
    fn open(&self, name: &str) -> BenchResult<(LogStore, StateMachine)> {
        let backend = match self {
            Target::Redb { dir } => StorageBackend::Redb {
                dir: dir.join(name),
            },
            Target::Memory => StorageBackend::InMemory,
        };
        Ok(open_storage(&backend, Limits::default())?)
    }

    /// Durable commits (`sync_data` calls, fdatasync on unix) of both of a store's files.
    fn syncs(&self, sm: &StateMachine) -> Option<u64> {
        match self {
            Target::Redb { .. } => Some(sm.store().log_syncs() + sm.store().state_syncs()),
            Target::Memory => None,
        }
    }

    /// The store's three files: their lengths, and the bytes the filesystem allocated to
    /// them (`st_blocks`; redb grows a file by doubling it with `set_len`, and the part never
    /// written holds no blocks).
    fn file_bytes(&self, name: &str) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        match self {
            Target::Redb { dir } => {
                let store_dir = dir.join(name);
                let mut length = 0;
                let mut allocated = 0;
                for file in [
                    aspen_storage::LOG_FILE_NAME,
                    aspen_storage::LOG_JOURNAL_FILE_NAME,
                    aspen_storage::STATE_FILE_NAME,
                ] {
                    if let Ok(meta) = std::fs::metadata(store_dir.join(file)) {
                        length += meta.len();
                        allocated += meta.blocks() * 512;
                    }
                }
                Some((length, allocated))
            }
            Target::Memory => None,
        }
    }
}

/// One-entry log commits timed in the latency measurement.
const COMMIT_LATENCY_SAMPLES: u64 = 2_000;
/// The log is purged behind this many entries during the latency measurement, as snapshots
/// keep it short in a running node.
const COMMIT_LATENCY_LOG_KEEP_ENTRIES: u64 = 1_000;
/// The raw floor: one page written into a file preallocated to this size, then fdatasync.
const RAW_FILE_BYTES: u64 = 64 * 1024 * 1024;
const RAW_PAGE_BYTES: usize = 4096;

/// Latency percentiles in microseconds: (p50, p99).
#[derive(Default, Clone, Copy)]
struct Latency {
    p50_us: f64,
    p99_us: f64,
}

impl Latency {
    fn of(mut samples_us: Vec<f64>) -> Latency {
        assert!(!samples_us.is_empty());
        samples_us.sort_by(f64::total_cmp);
        // The sample at `percent` of the sorted run (nearest rank, rounded down).
        let at = |percent: usize| samples_us[(samples_us.len() - 1) * percent / 100];
        Latency {
            p50_us: at(50),
            p99_us: at(99),
        }
    }
}

/// Everything measured on one backend.
#[derive(Default)]
struct Report {
    /// One-entry log commits (append + flush callback), with the log kept short.
    log_commit: Option<Latency>,
    /// One 4 KiB page written into a preallocated file, then fdatasync, on the same disk.
    raw_page_commit: Option<Latency>,
    /// (batch size, entries/s, fsyncs per batch)
    appends: Vec<(u64, f64, Option<f64>)>,
    apply_puts_per_s: f64,
    /// The same keys and batches straight into redb in format 2's layout, no Aspen code.
    raw_layout_puts_per_s: Option<f64>,
    /// The same in Aspen's layout (format 3): versions into redb by revision, the key index in
    /// memory.
    raw_memory_index_puts_per_s: Option<f64>,
    /// The applied store closed (last durable commit and the key index's checkpoint), and
    /// opened again (checkpoint loaded): ms, ms, checkpoint bytes.
    close_reopen: Option<(f64, f64, u64)>,
    apply_with_flush_puts_per_s: f64,
    apply_fsyncs: Option<u64>,
    snapshot_bytes: u64,
    snapshot_point_ms: f64,
    snapshot_build_mib_per_s: f64,
    snapshot_install_mib_per_s: f64,
    /// Length, and bytes allocated on disk.
    file_bytes: Option<(u64, u64)>,
    db_size_bytes: u64,
    db_size_in_use_bytes: u64,
}

fn main() -> BenchResult<()> {
    let keys = parse_keys()?;
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let temp = tempfile::Builder::new()
        .prefix("aspen-storage-bench-")
        .tempdir()?;
    eprintln!(
        "storage_bench: {keys} keys of {KEY_BYTES} bytes, values of {VALUE_BYTES} bytes; redb in {}",
        temp.path().display()
    );
    let targets = [
        Target::Redb {
            dir: temp.path().to_path_buf(),
        },
        Target::Memory,
    ];
    let mut reports = Vec::new();
    for target in &targets {
        let report = runtime.block_on(bench_backend(target, keys))?;
        reports.push(report);
    }
    print_table(keys, &targets, &reports);
    Ok(())
}

fn parse_keys() -> BenchResult<u64> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(KEYS_DEFAULT),
        [flag, n] if flag == "--keys" => {
            let keys: u64 = n.parse()?;
            if keys == 0 || keys > KEYS_MAX {
                return Err(format!("--keys must be in 1..={KEYS_MAX}").into());
            }
            Ok(keys)
        }
        _ => Err("usage: storage_bench [--keys N]".into()),
    }
}

async fn bench_backend(target: &Target, keys: u64) -> BenchResult<Report> {
    let mut report = Report::default();
    eprintln!("[{}] log append", target.name());
    let (mut log, sm) = target.open("append")?;
    let mut next_index = 1;
    for batch_size in APPEND_BATCH_SIZES {
        report
            .appends
            .push(bench_append(target, &mut log, &sm, &mut next_index, batch_size).await?);
    }
    drop((log, sm));

    if let Target::Redb { dir } = target {
        eprintln!("[{}] one-entry log commit latency", target.name());
        let (mut log, _sm) = target.open("commit-latency")?;
        report.log_commit = Some(bench_log_commit_latency(&mut log).await?);
        report.raw_page_commit = Some(bench_raw_page_commit(&dir.join("raw-floor"))?);
    }

    if let Target::Redb { dir } = target {
        eprintln!(
            "[{}] raw redb inserts in Aspen's layout, {keys} keys",
            target.name()
        );
        report.raw_layout_puts_per_s = Some(bench_raw_layout(&dir.join("raw-layout.redb"), keys)?);
        eprintln!(
            "[{}] raw redb inserts by revision, key index in memory, {keys} keys",
            target.name()
        );
        report.raw_memory_index_puts_per_s = Some(bench_raw_memory_index(
            &dir.join("raw-memory-index.redb"),
            keys,
        )?);
    }

    eprintln!("[{}] apply {keys} puts", target.name());
    let (source_log, source) = target.open("source")?;
    bench_apply(target, &source, keys, &mut report).await?;
    report.file_bytes = target.file_bytes("source");
    report.db_size_bytes = source.store().db_size_bytes();
    report.db_size_in_use_bytes = source.store().measure_db_size_in_use_bytes()?;
    let (_source_log, mut source) = match target {
        Target::Redb { dir } => {
            eprintln!("[{}] close and reopen", target.name());
            let started = Instant::now();
            drop((source_log, source));
            let close_ms = started.elapsed().as_secs_f64() * 1000.0;
            let checkpoint_bytes =
                std::fs::metadata(dir.join("source").join("key_index.ckpt")).map_or(0, |m| m.len());
            let started = Instant::now();
            let reopened = target.open("source")?;
            let open_ms = started.elapsed().as_secs_f64() * 1000.0;
            report.close_reopen = Some((close_ms, open_ms, checkpoint_bytes));
            reopened
        }
        Target::Memory => (source_log, source),
    };

    eprintln!("[{}] snapshot build and install", target.name());
    bench_snapshot(target, &mut source, keys, &mut report).await?;
    Ok(report)
}

fn put_entry(index: u64, key: &[u8], value: &[u8]) -> Entry {
    openraft::Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Command::Put(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        })),
    }
}

fn log_id(index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(1, 1, index)
}

/// The `n`th key: 16 hex digits of a bijective mix of `n`, so keys are unique and arrive in
/// random order, as a real workload's would.
fn key_of(n: u64) -> [u8; usize_from(KEY_BYTES)] {
    let mut x = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    let mut key = [0u8; usize_from(KEY_BYTES)];
    key.copy_from_slice(format!("{x:016x}").as_bytes());
    key
}

/// Appends batches of `batch_size` until the time or entry bound; returns
/// (batch size, entries/s, fsyncs per batch).
async fn bench_append(
    target: &Target,
    log: &mut LogStore,
    sm: &StateMachine,
    next_index: &mut u64,
    batch_size: u64,
) -> BenchResult<(u64, f64, Option<f64>)> {
    let value = vec![b'v'; usize_from(VALUE_BYTES)];
    let syncs_before = target.syncs(sm);
    let started = Instant::now();
    let mut entries_done: u64 = 0;
    let mut batches: u64 = 0;
    while started.elapsed() < Duration::from_millis(APPEND_DURATION_MS_MAX)
        && entries_done < APPEND_ENTRIES_MAX
    {
        let batch: Vec<Entry> = (0..batch_size)
            .map(|i| put_entry(*next_index + i, &key_of(*next_index + i), &value))
            .collect();
        let (tx, rx) = TypeConfig::oneshot();
        log.append(batch, IOFlushed::signal(tx)).await?;
        rx.await??;
        *next_index += batch_size;
        entries_done += batch_size;
        batches += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let fsyncs = match (syncs_before, target.syncs(sm)) {
        (Some(before), Some(after)) => Some((after - before) as f64 / batches as f64),
        _ => None,
    };
    Ok((batch_size, entries_done as f64 / seconds, fsyncs))
}

/// Runs `keys` puts straight into a fresh redb file at `path`, in the apply's batches with
/// non-durable commits and one durable commit at the end. `batch(txn, revisions)` does one
/// batch's puts: the put at revision `r` writes `key_of(r - 1)` (see [`raw_record`]).
/// Returns puts/s.
fn raw_puts(
    path: &std::path::Path,
    keys: u64,
    mut batch: impl FnMut(&redb::WriteTransaction, std::ops::RangeInclusive<u64>) -> BenchResult<()>,
) -> BenchResult<f64> {
    let db = redb::Builder::new()
        .set_cache_size(aspen_storage::backend::REDB_CACHE_BYTES_DEFAULT)
        .create(path)?;
    let started = Instant::now();
    let mut revision: u64 = 1;
    while revision <= keys {
        let last = (revision + APPLY_BATCH_ENTRIES - 1).min(keys);
        let mut txn = db.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        batch(&txn, revision + 1..=last + 1)?;
        txn.commit()?;
        revision = last + 1;
    }
    let txn = db.begin_write()?;
    txn.commit()?;
    let seconds = started.elapsed().as_secs_f64();
    drop(db);
    std::fs::remove_file(path)?;
    Ok(keys as f64 / seconds)
}

/// The key of the put at `revision` and, into `record`, that key followed by the value.
fn raw_record(revision: u64, record: &mut Vec<u8>) -> [u8; usize_from(KEY_BYTES)] {
    let key = key_of(revision - 1);
    record.clear();
    record.extend_from_slice(&key);
    record.resize(key.len() + usize_from(VALUE_BYTES), b'v');
    key
}

const RAW_REVS: redb::TableDefinition<(u64, u32), &[u8]> = redb::TableDefinition::new("revs");

/// Format 2's floor, for comparison: the same keys, values and batches inserted straight into a
/// redb file in that layout (per put: the key's newest `kv_index` entry looked up, one index
/// entry and one `kv_revs` record inserted). Returns puts/s.
fn bench_raw_layout(path: &std::path::Path, keys: u64) -> BenchResult<f64> {
    use redb::ReadableTable;
    const INDEX: redb::TableDefinition<(&[u8], u64), &[u8]> = redb::TableDefinition::new("index");
    let meta = [0u8; 12];
    let mut record = Vec::with_capacity(usize_from(VALUE_BYTES) + 64);
    raw_puts(path, keys, |txn, revisions| {
        let mut index = txn.open_table(INDEX)?;
        let mut revs = txn.open_table(RAW_REVS)?;
        for revision in revisions {
            let key = raw_record(revision, &mut record);
            let previous = index
                .range::<(&[u8], u64)>((&key[..], 0)..=(&key[..], u64::MAX))?
                .next_back()
                .transpose()?
                .map(|(k, _)| k.value().1);
            std::hint::black_box(previous);
            index.insert((&key[..], revision), &meta[..])?;
            revs.insert((revision, 0), record.as_slice())?;
        }
        Ok(())
    })
}

/// The floor under apply in Aspen's layout (format 3): the same keys, values and batches as
/// [`bench_raw_layout`], each version inserted into redb by revision only, and the key's
/// revisions looked up and extended in a `BTreeMap` (the key index in memory, as etcd's
/// `treeIndex`; its checkpoints are not in this figure). Returns puts/s.
fn bench_raw_memory_index(path: &std::path::Path, keys: u64) -> BenchResult<f64> {
    let mut index: std::collections::BTreeMap<[u8; usize_from(KEY_BYTES)], Vec<u64>> =
        std::collections::BTreeMap::new();
    let mut record = Vec::with_capacity(usize_from(VALUE_BYTES) + 64);
    let puts_per_s = raw_puts(path, keys, |txn, revisions| {
        let mut revs = txn.open_table(RAW_REVS)?;
        for revision in revisions {
            let key = raw_record(revision, &mut record);
            let versions = index.entry(key).or_default();
            std::hint::black_box(versions.last());
            versions.push(revision);
            revs.insert((revision, 0), record.as_slice())?;
        }
        Ok(())
    })?;
    assert_eq!(index.len(), usize_from(keys), "one index entry per key");
    Ok(puts_per_s)
}

/// Appends one entry at a time and waits for its flush callback (one durable commit each),
/// purging the log behind `COMMIT_LATENCY_LOG_KEEP_ENTRIES` as snapshots would.
async fn bench_log_commit_latency(log: &mut LogStore) -> BenchResult<Latency> {
    let value = vec![b'v'; usize_from(VALUE_BYTES)];
    let mut samples_us = Vec::with_capacity(usize_from(COMMIT_LATENCY_SAMPLES));
    for index in 1..=COMMIT_LATENCY_SAMPLES {
        let entry = put_entry(index, &key_of(index), &value);
        let started = Instant::now();
        let (tx, rx) = TypeConfig::oneshot();
        log.append([entry], IOFlushed::signal(tx)).await?;
        rx.await??;
        samples_us.push(started.elapsed().as_secs_f64() * 1e6);
        if index % COMMIT_LATENCY_LOG_KEEP_ENTRIES == 0 {
            log.purge(log_id(index - COMMIT_LATENCY_LOG_KEEP_ENTRIES / 2))
                .await?;
        }
    }
    Ok(Latency::of(samples_us))
}

/// The floor for a durable commit on this disk: write one page at the next offset of a file
/// preallocated (and synced) beforehand, then fdatasync; as etcd's WAL on its preallocated
/// segment.
fn bench_raw_page_commit(path: &std::path::Path) -> BenchResult<Latency> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..RAW_FILE_BYTES / zeros.len() as u64 {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    let page = vec![b'p'; RAW_PAGE_BYTES];
    let pages = RAW_FILE_BYTES / RAW_PAGE_BYTES as u64;
    let mut samples_us = Vec::with_capacity(usize_from(COMMIT_LATENCY_SAMPLES));
    for i in 0..COMMIT_LATENCY_SAMPLES {
        let offset = (i % pages) * RAW_PAGE_BYTES as u64;
        let started = Instant::now();
        file.write_all_at(&page, offset)?;
        file.sync_data()?;
        samples_us.push(started.elapsed().as_secs_f64() * 1e6);
    }
    drop(file);
    std::fs::remove_file(path)?;
    Ok(Latency::of(samples_us))
}

/// Applies `keys` puts in batches of `APPLY_BATCH_ENTRIES` (the state database's durable
/// cadence commits some of them durably, as in a running node), then one durable commit so the
/// data is on disk when measured.
async fn bench_apply(
    target: &Target,
    sm: &StateMachine,
    keys: u64,
    report: &mut Report,
) -> BenchResult<()> {
    let value = vec![b'v'; usize_from(VALUE_BYTES)];
    let syncs_before = target.syncs(sm);
    let started = Instant::now();
    let mut batch: Vec<Entry> = Vec::with_capacity(usize_from(APPLY_BATCH_ENTRIES));
    let mut index = 1;
    while index <= keys {
        batch.clear();
        let last = (index + APPLY_BATCH_ENTRIES - 1).min(keys);
        for i in index..=last {
            batch.push(put_entry(i, &key_of(i), &value));
        }
        sm.apply_entries(&batch)?;
        index = last + 1;
    }
    let apply_seconds = started.elapsed().as_secs_f64();
    sm.store().make_state_durable()?; // what the durable cadence ends with
    let total_seconds = started.elapsed().as_secs_f64();
    report.apply_puts_per_s = keys as f64 / apply_seconds;
    report.apply_with_flush_puts_per_s = keys as f64 / total_seconds;
    report.apply_fsyncs = match (syncs_before, target.syncs(sm)) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let count_all = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        count_only: true,
        ..Default::default()
    };
    let (result, revision) = sm.reader().range(&count_all)?.map_err(|e| e.to_string())?;
    assert_eq!(result.count, keys, "every put created a key");
    assert_eq!(revision, 1 + keys, "one revision per put");
    Ok(())
}

/// Records a snapshot point on `source` (what Raft does every `--snapshot-count` entries),
/// writes its data (what a leader does for a follower that needs it) and installs it into a
/// fresh store of the same backend.
async fn bench_snapshot(
    target: &Target,
    source: &mut StateMachine,
    keys: u64,
    report: &mut Report,
) -> BenchResult<()> {
    let started = Instant::now();
    let point = source.get_snapshot_builder().await.build_snapshot().await?;
    report.snapshot_point_ms = started.elapsed().as_secs_f64() * 1000.0;
    let started = Instant::now();
    let snapshot = source
        .get_current_snapshot()
        .await?
        .ok_or("no current snapshot after a point")?;
    assert_eq!(snapshot.meta, point.meta);
    let written = snapshot.snapshot.materialized()?;
    let build_seconds = started.elapsed().as_secs_f64();
    let snapshot = openraft::Snapshot {
        meta: snapshot.meta,
        snapshot: written,
    };
    let bytes = snapshot.snapshot.len_bytes();
    report.snapshot_bytes = bytes;
    report.snapshot_build_mib_per_s = bytes as f64 / MIB / build_seconds;

    let (_log, fresh) = target.open("installed")?;
    let started = Instant::now();
    fresh.install(&snapshot.meta, &snapshot.snapshot)?;
    let install_seconds = started.elapsed().as_secs_f64();
    report.snapshot_install_mib_per_s = bytes as f64 / MIB / install_seconds;
    let state = fresh.reader().applied_state()?;
    assert_eq!(state.last_applied, snapshot.meta.last_log_id);
    assert_eq!(
        state.revision,
        1 + keys,
        "installed store has the source's revision"
    );
    Ok(())
}

fn print_table(keys: u64, targets: &[Target], reports: &[Report]) {
    let raw_bytes = keys * (KEY_BYTES + VALUE_BYTES);
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    for (i, &batch_size) in APPEND_BATCH_SIZES.iter().enumerate() {
        rows.push((
            format!("log append, batch {batch_size}: entries/s"),
            reports
                .iter()
                .map(|r| format!("{:.0}", r.appends[i].1))
                .collect(),
        ));
        rows.push((
            format!("log append, batch {batch_size}: fsyncs/batch"),
            reports.iter().map(|r| opt_f(r.appends[i].2, 2)).collect(),
        ));
    }
    let row = |name: &str, f: &dyn Fn(&Report) -> String| {
        (name.to_string(), reports.iter().map(f).collect())
    };
    let latency = |l: Option<Latency>, f: fn(Latency) -> f64| {
        l.map_or("-".into(), |l| format!("{:.0}", f(l)))
    };
    rows.push(row("one-entry log commit: p50 us", &|r| {
        latency(r.log_commit, |l| l.p50_us)
    }));
    rows.push(row("one-entry log commit: p99 us", &|r| {
        latency(r.log_commit, |l| l.p99_us)
    }));
    rows.push(row("raw page write + fdatasync: p50 us", &|r| {
        latency(r.raw_page_commit, |l| l.p50_us)
    }));
    rows.push(row("raw page write + fdatasync: p99 us", &|r| {
        latency(r.raw_page_commit, |l| l.p99_us)
    }));
    rows.push(row(
        "log commit / raw, p50",
        &|r| match (r.log_commit, r.raw_page_commit) {
            (Some(log), Some(raw)) => format!("{:.2}", log.p50_us / raw.p50_us),
            _ => "-".into(),
        },
    ));
    rows.push(row("apply (batches of 1024): puts/s", &|r| {
        format!("{:.0}", r.apply_puts_per_s)
    }));
    rows.push(row(
        "raw redb, this layout (index in memory): puts/s",
        &|r| {
            r.raw_memory_index_puts_per_s
                .map_or("-".into(), |v| format!("{v:.0}"))
        },
    ));
    rows.push(row("apply / raw redb, this layout", &|r| {
        r.raw_memory_index_puts_per_s
            .map_or("-".into(), |raw| format!("{:.2}", r.apply_puts_per_s / raw))
    }));
    rows.push(row(
        "raw redb, format 2's layout (kv_index): puts/s",
        &|r| {
            r.raw_layout_puts_per_s
                .map_or("-".into(), |v| format!("{v:.0}"))
        },
    ));
    rows.push(row("close (durable commit, index checkpoint): ms", &|r| {
        r.close_reopen
            .map_or("-".into(), |(ms, _, _)| format!("{ms:.0}"))
    }));
    rows.push(row("  key index checkpoint: MiB", &|r| {
        r.close_reopen.map_or("-".into(), |(_, _, bytes)| {
            format!("{:.1}", bytes as f64 / MIB)
        })
    }));
    rows.push(row("reopen (index loaded): ms", &|r| {
        r.close_reopen
            .map_or("-".into(), |(_, ms, _)| format!("{ms:.0}"))
    }));
    rows.push(row("apply incl. final durable commit: puts/s", &|r| {
        format!("{:.0}", r.apply_with_flush_puts_per_s)
    }));
    rows.push(row("apply: fsyncs in total", &|r| {
        r.apply_fsyncs.map_or("-".into(), |n| n.to_string())
    }));
    rows.push(row("snapshot size: MiB", &|r| {
        format!("{:.1}", r.snapshot_bytes as f64 / MIB)
    }));
    rows.push(row("snapshot point (Raft's snapshot): ms", &|r| {
        format!("{:.1}", r.snapshot_point_ms)
    }));
    rows.push(row("snapshot data written for a follower: MiB/s", &|r| {
        format!("{:.1}", r.snapshot_build_mib_per_s)
    }));
    rows.push(row("snapshot install: MiB/s", &|r| {
        format!("{:.1}", r.snapshot_install_mib_per_s)
    }));
    // #10's target is in MB/s (10^6 bytes).
    rows.push(row("snapshot install: MB/s", &|r| {
        format!("{:.1}", r.snapshot_install_mib_per_s * MIB / 1e6)
    }));
    rows.push(row("raw key+value bytes", &|_| raw_bytes.to_string()));
    rows.push(row("file bytes", &|r| {
        r.file_bytes.map_or("-".into(), |(b, _)| b.to_string())
    }));
    rows.push(row("file bytes/key", &|r| {
        r.file_bytes.map_or("-".into(), |(b, _)| {
            format!("{:.1}", b as f64 / keys as f64)
        })
    }));
    rows.push(row("file/raw ratio", &|r| {
        r.file_bytes.map_or("-".into(), |(b, _)| {
            format!("{:.2}", b as f64 / raw_bytes as f64)
        })
    }));
    rows.push(row("file bytes allocated on disk", &|r| {
        r.file_bytes.map_or("-".into(), |(_, a)| a.to_string())
    }));
    rows.push(row("allocated/raw ratio", &|r| {
        r.file_bytes.map_or("-".into(), |(_, a)| {
            format!("{:.2}", a as f64 / raw_bytes as f64)
        })
    }));
    rows.push(row("db_size_bytes", &|r| r.db_size_bytes.to_string()));
    rows.push(row("db_size_bytes/key", &|r| {
        format!("{:.1}", r.db_size_bytes as f64 / keys as f64)
    }));
    rows.push(row("db_size_bytes/raw ratio", &|r| {
        format!("{:.2}", r.db_size_bytes as f64 / raw_bytes as f64)
    }));
    rows.push(row("db_size_in_use_bytes", &|r| {
        r.db_size_in_use_bytes.to_string()
    }));

    println!();
    println!(
        "Aspen storage benchmark: {keys} keys ({KEY_BYTES}-byte keys, {VALUE_BYTES}-byte values)"
    );
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    let mut header = format!("{:width$}", "metric");
    for target in targets {
        header.push_str(&format!(" | {:>14}", target.name()));
    }
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for (name, values) in rows {
        let mut line = format!("{name:width$}");
        for value in values {
            line.push_str(&format!(" | {value:>14}"));
        }
        println!("{line}");
    }
}

fn opt_f(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.decimals$}"))
}
