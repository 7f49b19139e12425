//! The key index an install or an import builds while it writes a snapshot's versions into
//! `kv_revs`; it replaces the store's once the transaction has committed.
//!
//! The versions come in revision order (a snapshot's frames and an etcd file's versions do)
//! and the index wants them by key, so the build is a sort. Inserting them into the map one by
//! one, at random keys, took half of an install's time at 1M keys; one sort of every entry at
//! the end took a fifth, and the commit (every page written, one fdatasync) another fifth.
//! So, from `BUILD_CHUNK_ENTRIES` versions on:
//! - a second thread sorts each chunk of versions while this one inserts the next into redb;
//! - at the end it merges the sorted chunks and builds the map while this thread commits.
//!
//! Whatever the build could refuse (two versions of one key at one revision) is known before
//! the commit: a chunk holds every version of the revisions in it, so the check is per chunk.
//! Versions out of revision order (not what Aspen or etcd write) are built whole, and checked,
//! before the commit.

use std::sync::mpsc;

use super::key_bytes::KeyBytes;
use super::key_index::{KeyMap, Versions};
use super::mvcc::{IndexRecord, write_record};
use super::records::StoredVersion;
use crate::error::{Result, StorageError};

/// Versions per chunk handed to the sorting thread. A run smaller than one chunk is built on
/// the writer's thread.
const BUILD_CHUNK_ENTRIES: usize = 65_536;

type BuildEntry = (KeyBytes, u64, IndexRecord);

/// Gathers an install's or an import's index entries as their versions are written.
pub(super) struct IndexRun {
    /// Entries not yet handed to the sorter (all of them while there is none).
    chunk: Vec<BuildEntry>,
    /// `BUILD_CHUNK_ENTRIES`; smaller in tests.
    chunk_entries: usize,
    /// The previous entry's main revision (None before the first), across hand-offs.
    last_main: Option<u64>,
    /// Whether an entry came below the previous one's main revision.
    out_of_revision_order: bool,
    sorter: Option<Sorter>,
}

/// The sorting thread: chunks go in; whether they hold two versions of one key at one
/// revision comes out once the last has been sorted, then the built map.
struct Sorter {
    chunks: mpsc::Sender<Vec<BuildEntry>>,
    checked: mpsc::Receiver<Result<()>>,
    built: Built,
}

impl Default for IndexRun {
    fn default() -> IndexRun {
        IndexRun::with_chunk_entries(BUILD_CHUNK_ENTRIES)
    }
}

impl IndexRun {
    fn with_chunk_entries(chunk_entries: usize) -> IndexRun {
        assert!(chunk_entries > 0);
        IndexRun {
            chunk: Vec::new(),
            chunk_entries,
            last_main: None,
            out_of_revision_order: false,
            sorter: None,
        }
    }

    /// Writes `version` of `key` into `kv_revs` and gathers its index entry.
    pub(super) fn write(
        &mut self,
        tables: &mut super::tables::WriteTables<'_>,
        key: &[u8],
        version: &StoredVersion,
        encoded: &mut Vec<u8>,
    ) -> Result<()> {
        if !write_record(tables.revs_mut()?, key, version, encoded)? {
            return Err(StorageError::Snapshot(format!(
                "snapshot holds two versions at revision {}.{}",
                version.mod_revision, version.sub_revision
            )));
        }
        self.push(
            KeyBytes::from(key),
            version.mod_revision,
            IndexRecord::of(version),
        );
        Ok(())
    }

    fn push(&mut self, key: KeyBytes, main: u64, record: IndexRecord) {
        if let Some(last_main) = self.last_main {
            if main < last_main {
                self.out_of_revision_order = true;
            }
            // A chunk ends between revisions, never inside one (the per-chunk check).
            if main != last_main && self.chunk.len() >= self.chunk_entries {
                self.hand_off_chunk();
            }
        }
        self.last_main = Some(main);
        self.chunk.push((key, main, record));
    }

    /// Hands the gathered chunk to the sorter, starting it if needed. Where no thread can be
    /// started (the simulator forbids them) the chunk stays and keeps growing.
    fn hand_off_chunk(&mut self) {
        if self.sorter.is_none() && !cfg!(madsim) {
            self.sorter = Sorter::start();
        }
        if let Some(sorter) = &self.sorter {
            let chunk = std::mem::take(&mut self.chunk);
            // The sorter only stops receiving by panicking, which `built` reports.
            let _ = sorter.chunks.send(chunk);
        }
    }

    /// The index built: each key's versions in revision order.
    pub(super) fn finish(self) -> Result<KeyMap> {
        build_whole(self.chunk, self.sorter)
    }

    /// Runs `commit` on this thread while the sorter finishes the index; returns both. The
    /// build's check passed before `commit` runs, so a snapshot it would refuse never commits.
    pub(super) fn finish_beside<T>(
        self,
        commit: impl FnOnce() -> Result<T>,
    ) -> Result<(KeyMap, T)> {
        let sorter = match self.sorter {
            Some(sorter) if !self.out_of_revision_order => sorter,
            sorter => {
                let keys = build_whole(self.chunk, sorter)?;
                return Ok((keys, commit()?));
            }
        };
        let (checked, built) = sorter.last_chunk(self.chunk);
        match checked.recv() {
            Ok(Ok(())) => {}
            Ok(Err(refused)) => {
                drop(join(built));
                return Err(refused);
            }
            // The sorter panicked before its verdict.
            Err(mpsc::RecvError) => {
                join(built)?;
                unreachable!("the sorter sends its verdict unless it panics");
            }
        }
        let committed = commit();
        // Checked before the commit, so this cannot fail; if it did, the error stops the
        // state machine, and the next open rebuilds the index from `kv_revs` (the install
        // removed the checkpoint before its commit).
        let keys = join(built).map_err(|refused| {
            StorageError::Invariant(format!(
                "the key index build failed after its check: {refused}"
            ))
        })?;
        Ok((keys, committed?))
    }
}

impl Sorter {
    fn start() -> Option<Sorter> {
        let (chunks, chunks_rx) = mpsc::channel();
        let (checked_tx, checked) = mpsc::channel();
        let built = std::thread::Builder::new()
            .name("aspen-index-build".into())
            .spawn(move || sort_chunks(chunks_rx, checked_tx))
            .ok()?;
        Some(Sorter {
            chunks,
            checked,
            built,
        })
    }

    /// Hands over the last chunk and closes the channel: the sorter reports its check, then
    /// builds the map.
    fn last_chunk(self, chunk: Vec<BuildEntry>) -> (mpsc::Receiver<Result<()>>, Built) {
        // The sorter only stops receiving by panicking, which `built` reports.
        let _ = self.chunks.send(chunk);
        (self.checked, self.built)
    }
}

/// The index built from `chunk` and whatever the sorter (if any) holds, checked whole.
fn build_whole(chunk: Vec<BuildEntry>, sorter: Option<Sorter>) -> Result<KeyMap> {
    match sorter {
        Some(sorter) => join(sorter.last_chunk(chunk).1),
        None => {
            let mut entries = chunk;
            sort_by_key_and_revision(&mut entries);
            group_sorted(entries)
        }
    }
}

type Built = std::thread::JoinHandle<Result<KeyMap>>;

fn join(built: Built) -> Result<KeyMap> {
    match built.join() {
        Ok(keys) => keys,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The sorter's thread: sorts and checks each chunk as it comes, reports the check once the
/// sender is gone, then merges the chunks (a stable sort of sorted runs) and builds the map.
fn sort_chunks(
    chunks: mpsc::Receiver<Vec<BuildEntry>>,
    checked: mpsc::Sender<Result<()>>,
) -> Result<KeyMap> {
    let mut sorted: Vec<BuildEntry> = Vec::new();
    let mut verdict = Ok(());
    for mut chunk in chunks.iter() {
        sort_by_key_and_revision(&mut chunk);
        if verdict.is_ok() && two_versions_at_one_revision_in(&chunk) {
            verdict = Err(two_versions_at_one_revision());
        }
        sorted.append(&mut chunk);
    }
    // The writer waits for this only when it commits beside the build.
    let _ = checked.send(verdict);
    sort_by_key_and_revision(&mut sorted);
    group_sorted(sorted)
}

/// Stable, so sorted runs (the chunks) are merged rather than sorted again.
fn sort_by_key_and_revision(entries: &mut [BuildEntry]) {
    entries.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
}

fn two_versions_at_one_revision_in(sorted: &[BuildEntry]) -> bool {
    sorted
        .windows(2)
        .any(|pair| pair[0].1 == pair[1].1 && pair[0].0 == pair[1].0)
}

/// Groups entries sorted by (key, revision) into the key index, refusing two versions of one
/// key at one main revision.
fn group_sorted(entries: Vec<BuildEntry>) -> Result<KeyMap> {
    let mut grouped: Vec<(KeyBytes, Versions)> = Vec::new();
    for (key, main, record) in entries {
        match grouped.last_mut() {
            Some((last_key, versions)) if *last_key == key => {
                if versions.last().is_some_and(|(last, _)| *last == main) {
                    return Err(two_versions_at_one_revision());
                }
                versions.push((main, record));
            }
            _ => grouped.push((key, vec![(main, record)])),
        }
    }
    // Sorted input: the map is built in bulk.
    Ok(grouped.into_iter().collect())
}

fn two_versions_at_one_revision() -> StorageError {
    StorageError::Snapshot("snapshot holds two versions of one key at one revision".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sub_revision: u32) -> IndexRecord {
        IndexRecord {
            sub_revision,
            create_revision: 1,
            version: 1,
            lease: 0,
        }
    }

    fn run_of(chunk_entries: usize, entries: &[(&str, u64, u32)]) -> IndexRun {
        let mut run = IndexRun::with_chunk_entries(chunk_entries);
        for (key, main, sub) in entries {
            run.push(KeyBytes::from(key.as_bytes()), *main, record(*sub));
        }
        run
    }

    /// Revisions 1..=n, one or two keys each, some keys written again later.
    fn in_order(n: u64) -> Vec<(String, u64, u32)> {
        let mut entries = Vec::new();
        for main in 1..=n {
            entries.push((format!("k{:03}", (main * 7) % 50), main, 0));
            if main % 3 == 0 {
                entries.push((format!("j{:03}", main % 11), main, 1));
            }
        }
        entries
    }

    fn as_refs(entries: &[(String, u64, u32)]) -> Vec<(&str, u64, u32)> {
        entries
            .iter()
            .map(|(k, m, s)| (k.as_str(), *m, *s))
            .collect()
    }

    /// `run` is refused as a snapshot error, and its commit never runs.
    fn assert_refused_before_the_commit(run: IndexRun) {
        let outcome = run.finish_beside(|| -> Result<()> {
            panic!("a refused snapshot committed");
        });
        assert!(
            matches!(outcome, Err(StorageError::Snapshot(_))),
            "{:?}",
            outcome.err()
        );
    }

    #[test]
    fn chunked_build_matches_the_whole_one() {
        let entries = in_order(400);
        let whole = run_of(usize::MAX, &as_refs(&entries)).finish().unwrap();
        for chunk_entries in [1, 4, 64] {
            let run = run_of(chunk_entries, &as_refs(&entries));
            assert!(run.sorter.is_some(), "the chunks went to a sorter");
            let mut committed = false;
            let (keys, ()) = run
                .finish_beside(|| {
                    committed = true;
                    Ok(())
                })
                .unwrap();
            assert!(committed);
            assert_eq!(keys, whole);
        }
        assert_eq!(whole.values().map(Vec::len).sum::<usize>(), entries.len());
        for versions in whole.values() {
            assert!(versions.windows(2).all(|pair| pair[0].0 < pair[1].0));
        }
    }

    #[test]
    fn two_versions_of_a_key_at_one_revision_never_commit() {
        // In revision order, the pair inside one chunk (checked before the commit) and
        // across a chunk's end (a chunk never ends inside a revision).
        for at in [5, 100, 399] {
            let mut entries = in_order(400);
            let position = entries.iter().position(|e| e.1 == at).unwrap();
            let duplicate = (entries[position].0.clone(), at, 9);
            entries.insert(position + 1, duplicate);
            for chunk_entries in [1, 4, usize::MAX] {
                assert_refused_before_the_commit(run_of(chunk_entries, &as_refs(&entries)));
                // An import builds before its commit, through `finish`.
                let outcome = run_of(chunk_entries, &as_refs(&entries)).finish();
                assert!(matches!(outcome, Err(StorageError::Snapshot(_))), "at {at}");
            }
        }
        // Out of revision order: the pair far apart, in different chunks.
        let mut entries = in_order(400);
        entries.push(("k007".into(), 1, 5));
        let run = run_of(4, &as_refs(&entries));
        assert!(run.out_of_revision_order);
        assert_refused_before_the_commit(run);
    }

    /// An entry below the previous one's revision right after a chunk was handed off is out
    /// of order too: here its pair sits in the first chunk, out of reach of the per-chunk check.
    #[test]
    fn a_step_back_right_after_a_hand_off_is_out_of_order() {
        let entries = [("a", 1, 0), ("b", 2, 0), ("c", 3, 0), ("a", 1, 1)];
        let run = run_of(3, &entries);
        assert!(run.sorter.is_some(), "the first three went to the sorter");
        assert!(run.out_of_revision_order);
        assert_refused_before_the_commit(run);
    }

    #[test]
    fn out_of_order_runs_build_whole_before_the_commit() {
        let mut entries = in_order(100);
        entries.reverse();
        let expected = run_of(usize::MAX, &as_refs(&in_order(100)))
            .finish()
            .unwrap();
        let run = run_of(4, &as_refs(&entries));
        assert!(run.out_of_revision_order);
        let (keys, ()) = run.finish_beside(|| Ok(())).unwrap();
        assert_eq!(keys, expected);
    }
}
