//! The key-value specification: etcd-style put, get, delete and compare-and-swap on single
//! keys, as [`KvModel`] (checked key by key) and [`RevisionedKvModel`] (also checks the
//! store revision each response reports, so it must be checked whole).

use std::collections::BTreeMap;
use std::fmt;

use crate::history::History;
use crate::model::{Model, PartitionedModel};

/// One client request on one key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum KvInput {
    /// Set `key` to `value`.
    Put { key: Vec<u8>, value: Vec<u8> },
    /// Read `key`.
    Get { key: Vec<u8> },
    /// Remove `key`.
    Delete { key: Vec<u8> },
    /// An etcd Txn on one key: if the value of `key` equals `expected` (`None`: the key is
    /// absent, version 0) then put `new`; otherwise do nothing.
    Cas {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    },
}

impl KvInput {
    /// The one key this request touches.
    pub fn key(&self) -> &[u8] {
        match self {
            KvInput::Put { key, .. }
            | KvInput::Get { key }
            | KvInput::Delete { key }
            | KvInput::Cas { key, .. } => key,
        }
    }
}

/// What a client is told for a [`KvInput`] of the same kind.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// A put was acknowledged.
    Put,
    /// The value read, `None` if the key was absent.
    Get { value: Option<Vec<u8>> },
    /// Whether a key was removed (etcd's `deleted` count is 0 or 1 for one key).
    Delete { deleted: bool },
    /// Whether the compare held and the put took effect.
    Cas { succeeded: bool },
}

/// The whole store: every present key and its value.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct KvState {
    pub entries: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl KvState {
    /// Applies one request in place and returns its output: the etcd semantics both models share.
    pub fn apply(&mut self, input: &KvInput) -> KvOutput {
        match input {
            KvInput::Put { key, value } => {
                self.entries.insert(key.clone(), value.clone());
                KvOutput::Put
            }
            KvInput::Get { key } => KvOutput::Get {
                value: self.entries.get(key).cloned(),
            },
            KvInput::Delete { key } => KvOutput::Delete {
                deleted: self.entries.remove(key).is_some(),
            },
            KvInput::Cas { key, expected, new } => {
                let succeeded = self.entries.get(key) == expected.as_ref();
                if succeeded {
                    self.entries.insert(key.clone(), new.clone());
                }
                KvOutput::Cas { succeeded }
            }
        }
    }

    fn heap_bytes(&self) -> u64 {
        // Keys, values and a rough B-tree node share per entry.
        const ENTRY_OVERHEAD_BYTES: u64 = 64;
        let payload: usize = self.entries.iter().map(|(k, v)| k.len() + v.len()).sum();
        payload as u64 + ENTRY_OVERHEAD_BYTES * self.entries.len() as u64
    }
}

/// A history of key-value requests, as a harness records it.
pub type KvHistory = History<KvInput, KvOutput>;

/// The key-value store without revisions. Every request touches one key and keys are
/// independent, so histories are checked key by key ([`crate::check_kv`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct KvModel;

impl Model for KvModel {
    type State = KvState;
    type Input = KvInput;
    type Output = KvOutput;

    fn init() -> KvState {
        KvState::default()
    }

    fn step(state: &KvState, input: &KvInput) -> (KvState, KvOutput) {
        let mut next = state.clone();
        let output = next.apply(input);
        (next, output)
    }

    fn state_heap_bytes(state: &KvState) -> u64 {
        state.heap_bytes()
    }
}

impl PartitionedModel for KvModel {
    type Key = Vec<u8>;

    fn partition_key(input: &KvInput) -> Vec<u8> {
        input.key().to_vec()
    }

    fn describe_key(key: &Vec<u8>) -> String {
        format!("{:?}", ShowBytes(key))
    }
}

/// The store together with its etcd revision: the revision starts at 1 on an empty store and
/// grows by one on every request that changes it (a put, a successful CAS, a delete that
/// removed a key).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RevisionedKvState {
    pub kv: KvState,
    pub revision: u64,
}

/// The revision etcd reports for a store no request has changed.
pub const REVISION_INITIAL: u64 = 1;

impl Default for RevisionedKvState {
    fn default() -> Self {
        RevisionedKvState {
            kv: KvState::default(),
            revision: REVISION_INITIAL,
        }
    }
}

/// A [`KvOutput`] with the response header's revision: the store revision right after the
/// request took effect. `None` in an observed output means the client did not record it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RevisionedKvOutput {
    pub output: KvOutput,
    pub revision: Option<u64>,
}

/// The key-value store with its global revision. The revision couples all keys, so this
/// model is not partitioned: check it whole with [`crate::check`] or [`crate::check_from`],
/// which costs more on long, highly concurrent histories.
#[derive(Debug, Clone, Copy, Default)]
pub struct RevisionedKvModel;

impl Model for RevisionedKvModel {
    type State = RevisionedKvState;
    type Input = KvInput;
    type Output = RevisionedKvOutput;

    fn init() -> RevisionedKvState {
        RevisionedKvState::default()
    }

    fn step(state: &RevisionedKvState, input: &KvInput) -> (RevisionedKvState, RevisionedKvOutput) {
        let mut next = state.clone();
        let output = next.kv.apply(input);
        let changed = match &output {
            KvOutput::Put => true,
            KvOutput::Get { .. } => false,
            KvOutput::Delete { deleted } => *deleted,
            KvOutput::Cas { succeeded } => *succeeded,
        };
        if changed {
            next.revision += 1;
        }
        let revision = Some(next.revision);
        (next, RevisionedKvOutput { output, revision })
    }

    fn output_matches(model_output: &RevisionedKvOutput, observed: &RevisionedKvOutput) -> bool {
        model_output.output == observed.output
            && observed
                .revision
                .is_none_or(|revision| model_output.revision == Some(revision))
    }

    fn state_heap_bytes(state: &RevisionedKvState) -> u64 {
        state.kv.heap_bytes()
    }
}

/// Bytes as a quoted string, non-printable bytes escaped: keys and values in tests and
/// harnesses are mostly text, and explanations must be readable.
pub(crate) struct ShowBytes<'a>(pub &'a [u8]);

impl fmt::Debug for ShowBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

struct ShowOptBytes<'a>(Option<&'a [u8]>);

impl fmt::Debug for ShowOptBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(bytes) => write!(f, "Some({:?})", ShowBytes(bytes)),
            None => f.write_str("None"),
        }
    }
}

impl fmt::Debug for KvInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvInput::Put { key, value } => {
                write!(f, "Put({:?} = {:?})", ShowBytes(key), ShowBytes(value))
            }
            KvInput::Get { key } => write!(f, "Get({:?})", ShowBytes(key)),
            KvInput::Delete { key } => write!(f, "Delete({:?})", ShowBytes(key)),
            KvInput::Cas { key, expected, new } => write!(
                f,
                "Cas({:?}: expect {:?}, new {:?})",
                ShowBytes(key),
                ShowOptBytes(expected.as_deref()),
                ShowBytes(new)
            ),
        }
    }
}

impl fmt::Debug for KvOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvOutput::Put => f.write_str("Put(ok)"),
            KvOutput::Get { value } => write!(f, "Get({:?})", ShowOptBytes(value.as_deref())),
            KvOutput::Delete { deleted } => write!(f, "Delete(deleted={deleted})"),
            KvOutput::Cas { succeeded } => write!(f, "Cas(succeeded={succeeded})"),
        }
    }
}

impl fmt::Debug for KvState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.entries
                    .iter()
                    .map(|(k, v)| (ShowBytes(k), ShowBytes(v))),
            )
            .finish()
    }
}

impl fmt::Debug for RevisionedKvState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} @rev {}", self.kv, self.revision)
    }
}

impl fmt::Debug for RevisionedKvOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.revision {
            Some(revision) => write!(f, "{:?} @rev {revision}", self.output),
            None => write!(f, "{:?} @rev ?", self.output),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> KvInput {
        KvInput::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn cas_compares_against_absent_and_present() {
        let state = KvModel::init();
        let cas_absent = KvInput::Cas {
            key: b"k".to_vec(),
            expected: None,
            new: b"1".to_vec(),
        };
        let (state, out) = KvModel::step(&state, &cas_absent);
        assert_eq!(out, KvOutput::Cas { succeeded: true });
        let (state, out) = KvModel::step(&state, &cas_absent);
        assert_eq!(out, KvOutput::Cas { succeeded: false });
        let cas_present = KvInput::Cas {
            key: b"k".to_vec(),
            expected: Some(b"1".to_vec()),
            new: b"2".to_vec(),
        };
        let (state, out) = KvModel::step(&state, &cas_present);
        assert_eq!(out, KvOutput::Cas { succeeded: true });
        assert_eq!(state.entries.get(&b"k"[..]), Some(&b"2".to_vec()));
    }

    #[test]
    fn revision_grows_only_on_changes() {
        let state = RevisionedKvModel::init();
        assert_eq!(state.revision, REVISION_INITIAL);
        let (state, out) = RevisionedKvModel::step(&state, &put("a", "1"));
        assert_eq!(out.revision, Some(2));
        let (state, out) = RevisionedKvModel::step(&state, &KvInput::Get { key: b"a".to_vec() });
        assert_eq!(out.revision, Some(2));
        let (state, out) = RevisionedKvModel::step(&state, &KvInput::Delete { key: b"b".to_vec() });
        assert_eq!(out.revision, Some(2));
        let (_, out) = RevisionedKvModel::step(&state, &KvInput::Delete { key: b"a".to_vec() });
        assert_eq!(out.revision, Some(3));
    }

    #[test]
    fn unrecorded_revision_matches_any() {
        let model = RevisionedKvOutput {
            output: KvOutput::Put,
            revision: Some(7),
        };
        let observed = RevisionedKvOutput {
            output: KvOutput::Put,
            revision: None,
        };
        assert!(RevisionedKvModel::output_matches(&model, &observed));
        let wrong = RevisionedKvOutput {
            output: KvOutput::Put,
            revision: Some(6),
        };
        assert!(!RevisionedKvModel::output_matches(&model, &wrong));
    }

    #[test]
    fn debug_renders_bytes_as_text() {
        assert_eq!(format!("{:?}", put("k", "v\n")), r#"Put("k" = "v\n")"#);
        let mut state = KvState::default();
        state.apply(&put("k", "v"));
        assert_eq!(format!("{state:?}"), r#"{"k": "v"}"#);
    }
}
