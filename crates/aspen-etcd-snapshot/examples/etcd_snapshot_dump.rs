//! Prints what the reader finds in an etcd snapshot file: `cargo run --example
//! etcd_snapshot_dump -- FILE [--versions | --raw BUCKET]`. A debugging aid for the format.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: etcd_snapshot_dump FILE [--versions]");
        return std::process::ExitCode::from(2);
    };
    let result = (|| -> aspen_etcd_snapshot::Result<()> {
        let snapshot = aspen_etcd_snapshot::EtcdSnapshot::open(std::path::Path::new(path))?;
        println!("{:?}", snapshot.summary()?);
        println!(
            "etcd status hash and total keys: {:?}",
            snapshot.etcd_status_hash()?
        );
        if args.get(2).map(String::as_str) == Some("--raw") {
            raw(std::path::Path::new(path), args[3].as_bytes())?;
        }
        if args.get(2).map(String::as_str) == Some("--copy") {
            copy(std::path::Path::new(path), std::path::Path::new(&args[3]))?;
        }
        if args.get(2).map(String::as_str) == Some("--versions") {
            snapshot.for_each_version(|v| -> aspen_etcd_snapshot::Result<()> {
                println!(
                    "{}.{}{} {} create={} mod={} version={} lease={} value={}B",
                    v.revision.main,
                    v.revision.sub,
                    if v.tombstone { " (tombstone)" } else { "" },
                    String::from_utf8_lossy(&v.kv.key),
                    v.kv.create_revision,
                    v.kv.mod_revision,
                    v.kv.version,
                    v.kv.lease,
                    v.kv.value.len()
                );
                Ok(())
            })?;
            snapshot.for_each_lease(|l| -> aspen_etcd_snapshot::Result<()> {
                println!("lease {:x} ttl {}", l.id, l.ttl_seconds);
                Ok(())
            })?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Prints one top-level bucket's entries, keys and values in hex.
fn raw(path: &std::path::Path, name: &[u8]) -> aspen_etcd_snapshot::Result<()> {
    use aspen_etcd_snapshot::bolt_read::BoltReader;
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let io = |source| aspen_etcd_snapshot::Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let db_bytes = if len % 512 == 32 { len - 32 } else { len };
    let reader = BoltReader::open(file, path, db_bytes)?;
    let Some(bucket) = reader.bucket(&reader.root(), name)? else {
        println!("no bucket {}", String::from_utf8_lossy(name));
        return Ok(());
    };
    reader.for_each(&bucket, |k, v, _| -> aspen_etcd_snapshot::Result<()> {
        println!("{} ({}) = {}", hex(k), String::from_utf8_lossy(k), hex(v));
        Ok(())
    })
}

/// Rewrites every top-level bucket of `from` with our writer into `to` (no trailer).
fn copy(from: &std::path::Path, to: &std::path::Path) -> aspen_etcd_snapshot::Result<()> {
    use aspen_etcd_snapshot::bolt_read::BoltReader;
    use aspen_etcd_snapshot::bolt_write::BoltWriter;
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| aspen_etcd_snapshot::Error::Io { path, source }
    };
    let file = std::fs::File::open(from).map_err(io(from))?;
    let len = file.metadata().map_err(io(from))?.len();
    let db_bytes = if len % 512 == 32 { len - 32 } else { len };
    let reader = BoltReader::open(file, from, db_bytes)?;
    let out = std::fs::File::create(to).map_err(io(to))?;
    let mut writer = BoltWriter::new(std::io::BufWriter::new(out))?;
    let mut names = Vec::new();
    reader.for_each(&reader.root(), |name, value, _| {
        names.push((name.to_vec(), reader.bucket_of(value)?));
        Ok(())
    })?;
    let mut buckets = Vec::new();
    for (name, bucket) in &names {
        let mut tree = writer.begin_bucket();
        reader.for_each(bucket, |k, v, _| writer.put(&mut tree, k, v))?;
        buckets.push((name.clone(), writer.finish_bucket(tree)?));
    }
    let refs: Vec<(&[u8], _)> = buckets
        .iter()
        .map(|(n, b)| {
            (
                n.as_slice(),
                aspen_etcd_snapshot::bolt_write::BucketValue(b.0.clone()),
            )
        })
        .collect();
    writer.finish(&refs)?;
    Ok(())
}
