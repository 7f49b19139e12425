//! Applying one committed command to the MVCC store, inside the batch's write transaction.
//!
//! Every replica runs this on the same commands in the same order and must reach the same
//! bytes: nothing here reads a clock, a random source or the local file size.

use aspen_core::command::{AlarmAction, AlarmType};
use aspen_core::keys::KeyRange;
use aspen_core::limits::DELETE_RANGE_CHUNK_KEYS_MAX;
use aspen_core::response::RangeResult;
use aspen_core::{
    ApplyError, ApplyResponse, Command, CommandResult, DeleteRangeRequest, KeyValue, PutRequest,
    RangeRequest,
};
use redb::ReadableTable;

use aspen_core::auth::{AuthChanges, AuthCommand, AuthState};

use super::auth::{BatchAuthEffects, TokenEffect};
use super::key_index::{IndexAt, KeyIndex};
use super::mvcc;
use super::range::{self, read_revision};
use super::records::{AppliedState, LeaseRecord, StoredVersion};
use super::tables::WriteTables;
use crate::error::Result;

/// The revision a write command writes at; its sub-revision counts the changes made.
pub(crate) struct WriteRevision {
    pub main: u64,
    pub next_sub: u32,
}

impl WriteRevision {
    fn take_sub(&mut self) -> u32 {
        let sub = self.next_sub;
        self.next_sub += 1;
        sub
    }
}

pub(crate) type Outcome = std::result::Result<CommandResult, ApplyError>;

pub(crate) struct Applier<'a, 't> {
    pub tables: &'a mut WriteTables<'t>,
    /// The key index, in memory (`key_index.rs`): this batch's entries go into it.
    pub index: &'a KeyIndex,
    pub state: &'a mut AppliedState,
    pub buffer: Vec<u8>,
    /// The batch's events, recorded only while someone watches (see `events.rs`).
    pub events: Option<Vec<aspen_core::Event>>,
    /// The auth store as this batch has it: the committed copy at the start, changed (copied on
    /// first write) by auth commands; written back and published after the batch.
    pub auth: std::sync::Arc<AuthState>,
    /// Which users and roles this batch changed, and the tokens it assigned or invalidated.
    pub auth_changes: AuthChanges,
    pub auth_effects: BatchAuthEffects,
    /// The log index of the entry being applied (names a token uniquely, as etcd's).
    pub log_index: u64,
}

impl<'a, 't> Applier<'a, 't> {
    /// Applies `command`. Storage failures abort the whole batch; request errors become the
    /// response, identically on every replica.
    pub fn apply(&mut self, command: &Command) -> Result<ApplyResponse> {
        let revision_before = self.state.revision;
        let result = if self.state.no_space() && command.may_grow_store() {
            Err(ApplyError::NoSpace)
        } else {
            self.apply_authorized(command)?
        };
        assert!(
            self.state.revision >= revision_before,
            "store revision moved backwards"
        );
        assert!(
            self.state.revision <= revision_before + 1
                || matches!(command, Command::LeaseExpire { .. })
        );
        Ok(ApplyResponse {
            revision: self.state.revision,
            result,
        })
    }

    /// While auth is enabled, a client's request must come wrapped in `Command::Authorized`
    /// from the auth revision it was checked at; a bare one is refused as etcd refuses a
    /// request without a user ("user name is empty").
    fn apply_authorized(&mut self, command: &Command) -> Result<Outcome> {
        if let Command::Authorized {
            user,
            auth_revision,
            command: inner,
        } = command
        {
            if matches!(**inner, Command::Authorized { .. }) {
                return Ok(Err(ApplyError::InvalidAuthMgmt));
            }
            if self.auth.enabled() {
                if *auth_revision != self.auth.revision() {
                    return Ok(Err(ApplyError::AuthOldRevision));
                }
                if let Command::Auth(auth) = &**inner
                    && auth.needs_admin()
                    && let Err(e) = self.auth.check_admin(Some(user))
                {
                    return Ok(Err(e));
                }
            }
            return self.apply_checked(inner);
        }
        if self.auth.enabled() && command.needs_auth_user() {
            return Ok(Err(ApplyError::UserEmpty));
        }
        self.apply_checked(command)
    }

    fn apply_checked(&mut self, command: &Command) -> Result<Outcome> {
        match command {
            Command::Put(put) => self.with_revision(|applier, rev| {
                if let Err(e) = applier.check_put(put)? {
                    return Ok(Err(e));
                }
                let prev_kv = applier.put(put, rev)?;
                Ok(Ok(CommandResult::Put { prev_kv }))
            }),
            Command::DeleteRange(delete) => self.with_revision(|applier, rev| {
                let (deleted, prev_kvs) = applier.delete_range(delete, rev)?;
                Ok(Ok(CommandResult::DeleteRange { deleted, prev_kvs }))
            }),
            Command::Txn(txn) => self.with_revision(|applier, rev| applier.txn(txn, rev)),
            Command::Compact { revision, .. } => self.compact(*revision),
            Command::LeaseGrant { id, ttl_seconds } => self.lease_grant(*id, *ttl_seconds),
            Command::LeaseRevoke { id } => self.with_revision(|applier, rev| {
                if applier.tables.leases()?.get(*id)?.is_none() {
                    return Ok(Err(ApplyError::LeaseNotFound));
                }
                applier.revoke(*id, rev)?;
                Ok(Ok(CommandResult::LeaseRevoke))
            }),
            Command::LeaseExpire { ids } => self.lease_expire(ids),
            Command::Alarm {
                action,
                member_id,
                alarm,
            } => Ok(Ok(self.alarm(*action, *member_id, *alarm))),
            Command::Auth(auth) => Ok(self.apply_auth(auth)),
            Command::Authorized { .. } => Ok(Err(ApplyError::InvalidAuthMgmt)),
        }
    }

    /// Applies an auth command to the batch's copy of the auth store; tables are written once,
    /// when the batch ends (`StateMachine::apply_entries`). Does not move the store revision.
    fn apply_auth(&mut self, command: &AuthCommand) -> Outcome {
        if let AuthCommand::Authenticate {
            name,
            token_prefix,
            checked_revision,
        } = command
        {
            // Changes nothing but the tokens: checked in place, without copying the store.
            self.auth.check_authenticate(name, *checked_revision)?;
            let token = format!("{token_prefix}.{}", self.log_index);
            self.auth_effects.tokens.push(TokenEffect::Assigned {
                token: token.clone(),
                user: name.clone(),
                auth_revision: self.auth.revision(),
            });
            return Ok(CommandResult::Authenticate { token });
        }
        let mut changes = AuthChanges::default();
        // Applied to a copy, so a refused command leaves the batch's copy as it was.
        let mut state = (*self.auth).clone();
        state.apply(command, &mut changes)?;
        if changes != AuthChanges::default() {
            self.auth = std::sync::Arc::new(state);
            self.auth_effects.changed = true;
            if changes.disabled {
                self.auth_effects.tokens.push(TokenEffect::AllInvalidated);
            }
            if !changes.invalidated_users.is_empty() {
                let users = changes.invalidated_users.clone();
                self.auth_effects
                    .tokens
                    .push(TokenEffect::UsersInvalidated(users));
            }
            self.auth_changes.users.extend(changes.users);
            self.auth_changes.roles.extend(changes.roles);
            self.auth_changes.meta |= changes.meta;
        }
        Ok(CommandResult::Auth)
    }

    /// Runs `body` at the next revision; the store revision moves only if `body` wrote.
    fn with_revision(
        &mut self,
        body: impl FnOnce(&mut Self, &mut WriteRevision) -> Result<Outcome>,
    ) -> Result<Outcome> {
        let mut rev = WriteRevision {
            main: self.state.revision + 1,
            next_sub: 0,
        };
        let outcome = body(self, &mut rev)?;
        if rev.next_sub > 0 {
            assert!(
                outcome.is_ok(),
                "a command that failed must not have written"
            );
            self.state.revision = rev.main;
        }
        Ok(outcome)
    }

    /// The key index as this batch has it: every entry, its own included.
    pub(crate) fn index(&self) -> Result<IndexAt<'_>> {
        Ok(IndexAt {
            index: self.index,
            revision: u64::MAX,
        })
    }

    /// `key`'s current version; its value is read only if `with_value` (it lives apart from
    /// the index, in `kv_revs`).
    pub(crate) fn latest(&self, key: &[u8], with_value: bool) -> Result<Option<StoredVersion>> {
        match self.index.entry_at(key, u64::MAX) {
            Some((main, record)) if !record.is_tombstone() => {
                let value = if with_value {
                    mvcc::load_record(self.tables.revs()?, main, record.sub_revision)?.value
                } else {
                    Vec::new()
                };
                Ok(Some(record.to_version(main, value)))
            }
            _ => Ok(None),
        }
    }

    /// etcd's checks before a put: the lease exists, and a key exists to take its value or
    /// lease from when asked to ignore them.
    pub(crate) fn check_put(
        &self,
        put: &PutRequest,
    ) -> Result<std::result::Result<(), ApplyError>> {
        if put.key.is_empty() {
            return Ok(Err(ApplyError::EmptyKey));
        }
        if (put.ignore_value || put.ignore_lease) && self.latest(&put.key, false)?.is_none() {
            return Ok(Err(ApplyError::KeyNotFound));
        }
        if !put.ignore_lease && put.lease != 0 && self.tables.leases()?.get(put.lease)?.is_none() {
            return Ok(Err(ApplyError::LeaseNotFound));
        }
        Ok(Ok(()))
    }

    /// Writes a new version of `put.key`; the one it replaces stays where it is, as history.
    pub(crate) fn put(
        &mut self,
        put: &PutRequest,
        rev: &mut WriteRevision,
    ) -> Result<Option<KeyValue>> {
        let with_value = put.ignore_value || put.prev_kv || self.events.is_some();
        let previous = self.latest(&put.key, with_value)?;
        let sub_revision = rev.take_sub();
        let new = StoredVersion {
            value: match (&previous, put.ignore_value) {
                (Some(prev), true) => prev.value.clone(),
                _ => put.value.clone(),
            },
            create_revision: previous.as_ref().map_or(rev.main, |p| p.create_revision),
            mod_revision: rev.main,
            sub_revision,
            version: previous.as_ref().map_or(1, |p| p.version + 1),
            lease: match (&previous, put.ignore_lease) {
                (Some(prev), true) => prev.lease,
                _ => put.lease,
            },
        };
        self.record_put(&put.key, previous.as_ref(), &new);
        if let Some(prev) = &previous {
            assert!(prev.mod_revision <= rev.main, "revision order");
            if prev.lease != 0 && prev.lease != new.lease {
                self.tables
                    .lease_keys_mut()?
                    .remove((prev.lease, put.key.as_slice()))?;
            }
        }
        if new.lease != 0 {
            self.tables
                .lease_keys_mut()?
                .insert((new.lease, put.key.as_slice()), ())?;
        }
        mvcc::write_version(
            self.index,
            self.tables.revs_mut()?,
            &put.key,
            &new,
            &mut self.buffer,
        )?;
        Ok(if put.prev_kv {
            previous.map(|p| p.to_key_value(&put.key))
        } else {
            None
        })
    }

    /// Deletes every live key in the range at one revision; returns the count and, if asked,
    /// the deleted versions.
    pub(crate) fn delete_range(
        &mut self,
        delete: &DeleteRangeRequest,
        rev: &mut WriteRevision,
    ) -> Result<(u64, Vec<KeyValue>)> {
        let range = KeyRange::new(&delete.key, &delete.range_end);
        if range.is_empty() {
            return Ok((0, Vec::new()));
        }
        // In chunks: the keys (and values, when needed) of one chunk are held at a time, never
        // the whole range. A chunk's deletes hide its keys (their tombstones are the newest
        // versions), and the next chunk starts just after its last key.
        let chunk_keys_max = DELETE_RANGE_CHUNK_KEYS_MAX as usize;
        let with_value = delete.prev_kv || self.events.is_some();
        let mut deleted: u64 = 0;
        let mut prev_kvs = Vec::new();
        let mut chunk_range = range;
        loop {
            let mut victims: Vec<(Vec<u8>, StoredVersion)> = Vec::new();
            mvcc::for_each_visible(
                &self.index()?,
                self.tables.revs()?,
                &chunk_range,
                u64::MAX,
                with_value,
                |key, version| {
                    victims.push((key.to_vec(), version));
                    Ok(victims.len() < chunk_keys_max)
                },
            )?;
            note_delete_chunk(victims.len());
            for (key, version) in &victims {
                self.delete_key(key, version, rev)?;
                if delete.prev_kv {
                    prev_kvs.push(version.to_key_value(key));
                }
            }
            deleted += victims.len() as u64;
            let (KeyRange::Interval { end, .. }, Some((last, _))) = (&chunk_range, victims.last())
            else {
                break;
            };
            if victims.len() < chunk_keys_max {
                break;
            }
            let mut start = last.clone();
            start.push(0);
            chunk_range = KeyRange::Interval {
                start,
                end: end.clone(),
            };
        }
        Ok((deleted, prev_kvs))
    }

    fn delete_key(
        &mut self,
        key: &[u8],
        current: &StoredVersion,
        rev: &mut WriteRevision,
    ) -> Result<()> {
        let sub_revision = rev.take_sub();
        self.record_delete(key, current, rev.main, sub_revision);
        mvcc::write_version(
            self.index,
            self.tables.revs_mut()?,
            key,
            &StoredVersion::tombstone(rev.main, sub_revision),
            &mut self.buffer,
        )?;
        if current.lease != 0 {
            self.tables.lease_keys_mut()?.remove((current.lease, key))?;
        }
        Ok(())
    }

    /// A range read inside a Txn: at revision 0 it sees the Txn's earlier writes, as etcd's do;
    /// at an explicit revision it sees that revision only.
    pub(crate) fn range(
        &self,
        request: &RangeRequest,
    ) -> Result<std::result::Result<RangeResult, ApplyError>> {
        let at = match read_revision(
            request.revision,
            self.state.revision,
            self.state.compact_revision,
        ) {
            Ok(at) => at,
            Err(e) => return Ok(Err(e)),
        };
        // The Txn's own writes already sit in the tables at `revision + 1`: a read of "now" sees
        // them; an explicit revision (even the current one) skips them, as etcd reads it at that
        // revision.
        let at = if request.revision == 0 {
            self.state.revision + 1
        } else {
            at
        };
        Ok(Ok(range::range(
            &self.index()?,
            self.tables.revs()?,
            request,
            at,
        )?))
    }

    fn compact(&mut self, revision: u64) -> Result<Outcome> {
        if revision <= self.state.compact_revision {
            return Ok(Err(ApplyError::Compacted {
                compact_revision: self.state.compact_revision,
            }));
        }
        if revision > self.state.revision {
            return Ok(Err(ApplyError::FutureRevision));
        }
        // Reads below the compaction revision fail from now on; the versions they could have
        // seen are removed afterwards, in bounded steps off the apply path (`compact.rs`).
        self.state.compact_revision = revision;
        Ok(Ok(CommandResult::Compact))
    }

    fn lease_grant(&mut self, id: u64, ttl_seconds: i64) -> Result<Outcome> {
        if id == 0 {
            return Ok(Err(ApplyError::LeaseNotFound));
        }
        if self.tables.leases()?.get(id)?.is_some() {
            return Ok(Err(ApplyError::LeaseExists));
        }
        let record = aspen_core::codec::encode(&LeaseRecord { ttl_seconds });
        self.tables.leases_mut()?.insert(id, record.as_slice())?;
        Ok(Ok(CommandResult::LeaseGrant { id, ttl_seconds }))
    }

    /// Deletes every key attached to lease `id`, then the lease.
    fn revoke(&mut self, id: u64, rev: &mut WriteRevision) -> Result<()> {
        // In chunks, as `delete_range`: deleting a key removes it from `lease_keys`, so each
        // chunk starts again at the lease's first remaining key.
        let chunk_keys_max = DELETE_RANGE_CHUNK_KEYS_MAX as usize;
        loop {
            let mut keys: Vec<Vec<u8>> = Vec::new();
            // Lease `u64::MAX` has no successor to end the range at (found by fuzzing:
            // `id + 1` overflowed).
            let lease_keys = match id.checked_add(1) {
                Some(next) => self
                    .tables
                    .lease_keys()?
                    .range::<(u64, &[u8])>((id, &[][..])..(next, &[][..]))?,
                None => self
                    .tables
                    .lease_keys()?
                    .range::<(u64, &[u8])>((id, &[][..])..)?,
            };
            for item in lease_keys.take(chunk_keys_max) {
                let (key, _) = item?;
                keys.push(key.value().1.to_vec());
            }
            note_delete_chunk(keys.len());
            if keys.is_empty() {
                break;
            }
            self.revoke_keys(id, &keys, rev)?;
        }
        self.tables.leases_mut()?.remove(id)?;
        Ok(())
    }

    fn revoke_keys(&mut self, id: u64, keys: &[Vec<u8>], rev: &mut WriteRevision) -> Result<()> {
        for key in keys {
            let current = self.latest(key, self.events.is_some())?;
            let current = current.ok_or_else(|| {
                crate::error::StorageError::Invariant(format!(
                    "lease {id} lists a key that does not exist"
                ))
            })?;
            assert_eq!(current.lease, id, "lease index out of step with the key");
            self.delete_key(key, &current, rev)?;
        }
        Ok(())
    }

    /// Each expired lease is revoked at its own revision, as etcd revokes them one by one.
    fn lease_expire(&mut self, ids: &[u64]) -> Result<Outcome> {
        let mut expired: u32 = 0;
        for id in ids {
            if self.tables.leases()?.get(*id)?.is_none() {
                continue;
            }
            let outcome = self.with_revision(|applier, rev| {
                applier.revoke(*id, rev)?;
                Ok(Ok(CommandResult::LeaseRevoke))
            })?;
            assert!(outcome.is_ok());
            expired += 1;
        }
        Ok(Ok(CommandResult::LeaseExpire { expired }))
    }

    fn alarm(&mut self, action: AlarmAction, member_id: u64, alarm: AlarmType) -> CommandResult {
        let entry = (member_id, alarm);
        match action {
            AlarmAction::Activate => {
                if !self.state.alarms.contains(&entry) {
                    self.state.alarms.push(entry);
                    self.state.alarms.sort();
                }
            }
            AlarmAction::Deactivate => self.state.alarms.retain(|a| *a != entry),
        }
        CommandResult::Alarm {
            active: self.state.alarms.clone(),
        }
    }
}

/// The most keys one delete chunk held, for the tests that check the chunking.
#[cfg(test)]
pub(crate) static DELETE_CHUNK_KEYS_HIGH_WATER: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

#[cfg(test)]
fn note_delete_chunk(keys: usize) {
    DELETE_CHUNK_KEYS_HIGH_WATER.fetch_max(keys, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(not(test))]
fn note_delete_chunk(keys: usize) {
    debug_assert!(keys <= DELETE_RANGE_CHUNK_KEYS_MAX as usize);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use aspen_core::limits::Limits;
    use aspen_core::type_config::alias::Entry;
    use aspen_core::{CommandResult, TypeConfig};
    use openraft::EntryPayload;

    use super::*;
    use crate::{StateMachine, StorageBackend, open_storage};

    /// Three chunks and a bit: the chunking must not lose or repeat a key at a boundary.
    const KEYS: usize = 3 * DELETE_RANGE_CHUNK_KEYS_MAX as usize + 7;
    const LEASE: u64 = 42;

    fn apply(sm: &StateMachine, index: &mut u64, command: Command) -> ApplyResponse {
        *index += 1;
        let entry: Entry = openraft::Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, *index),
            payload: EntryPayload::Normal(command),
        };
        let mut responses = sm.apply_entries(&[entry]).expect("apply");
        responses.pop().expect("one response")
    }

    fn put(key: String, lease: u64) -> Command {
        Command::Put(PutRequest {
            key: key.into_bytes(),
            value: vec![b'v'; 16],
            lease,
            ..Default::default()
        })
    }

    fn count(sm: &StateMachine, key: &[u8], range_end: &[u8]) -> u64 {
        let request = RangeRequest {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            count_only: true,
            ..Default::default()
        };
        let (result, _) = sm.reader().range(&request).expect("read").expect("range");
        result.count
    }

    /// Found by fuzzing (fuzz/corpus/client_requests/crash-range-limit-u64-max): the largest
    /// limit overflowed "one more than the limit".
    #[test]
    fn a_range_with_the_largest_limit_returns_everything() {
        let (_log, sm) = open_storage(&StorageBackend::InMemory, Limits::default()).expect("open");
        let mut index = 0;
        apply(&sm, &mut index, put("a".to_string(), 0));
        apply(&sm, &mut index, put("b".to_string(), 0));
        let request = RangeRequest {
            key: b"a".to_vec(),
            range_end: vec![0],
            limit: u64::MAX,
            ..Default::default()
        };
        let (result, _) = sm.reader().range(&request).expect("read").expect("range");
        assert_eq!(result.kvs.len(), 2);
        assert_eq!(result.count, 2);
        assert!(!result.more);
    }

    /// DeleteRange and lease revoke over more keys than one chunk: every key deleted exactly
    /// once, at one revision, and no chunk held more than `DELETE_RANGE_CHUNK_KEYS_MAX` keys.
    #[test]
    fn large_deletes_work_in_bounded_chunks() {
        let (_log, sm) = open_storage(&StorageBackend::InMemory, Limits::default()).expect("open");
        let mut index = 0;
        let granted = apply(
            &sm,
            &mut index,
            Command::LeaseGrant {
                id: LEASE,
                ttl_seconds: 60,
            },
        );
        assert!(granted.result.is_ok());
        for i in 0..KEYS {
            apply(&sm, &mut index, put(format!("a/{i:06}"), 0));
            apply(&sm, &mut index, put(format!("l/{i:06}"), LEASE));
        }
        // Neighbours outside the range survive.
        apply(&sm, &mut index, put("a".to_string(), 0));
        apply(&sm, &mut index, put("a0".to_string(), 0));

        let before = apply(&sm, &mut index, put("b".to_string(), 0)).revision;
        let response = apply(
            &sm,
            &mut index,
            Command::DeleteRange(DeleteRangeRequest {
                key: b"a/".to_vec(),
                range_end: b"a0".to_vec(),
                prev_kv: true,
            }),
        );
        assert_eq!(
            response.revision,
            before + 1,
            "one revision for the whole delete"
        );
        let Ok(CommandResult::DeleteRange { deleted, prev_kvs }) = response.result else {
            panic!("delete failed: {:?}", response.result);
        };
        assert_eq!(deleted, KEYS as u64);
        let keys: Vec<Vec<u8>> = prev_kvs.into_iter().map(|kv| kv.key).collect();
        let expected: Vec<Vec<u8>> = (0..KEYS)
            .map(|i| format!("a/{i:06}").into_bytes())
            .collect();
        assert_eq!(keys, expected, "each key once, in order");
        assert_eq!(count(&sm, b"a/", b"a0"), 0);
        assert_eq!(count(&sm, b"a", b""), 1);
        assert_eq!(count(&sm, b"a0", b""), 1);

        let response = apply(&sm, &mut index, Command::LeaseRevoke { id: LEASE });
        assert!(response.result.is_ok(), "{:?}", response.result);
        assert_eq!(response.revision, before + 2, "one revision for the revoke");
        assert_eq!(count(&sm, b"l/", b"l0"), 0, "every attached key deleted");
        assert_eq!(count(&sm, b"b", b""), 1);

        // Found by fuzzing (fuzz/corpus/client_requests/crash-lease-revoke-id-u64-max): the
        // largest lease id overflowed the end of its key range.
        let largest = apply(
            &sm,
            &mut index,
            Command::LeaseGrant {
                id: u64::MAX,
                ttl_seconds: 60,
            },
        );
        assert!(largest.result.is_ok(), "{:?}", largest.result);
        apply(&sm, &mut index, put("m/1".to_string(), u64::MAX));
        let response = apply(&sm, &mut index, Command::LeaseRevoke { id: u64::MAX });
        assert!(response.result.is_ok(), "{:?}", response.result);
        assert_eq!(count(&sm, b"m/", b"m0"), 0);
        let response = apply(&sm, &mut index, Command::LeaseRevoke { id: u64::MAX });
        assert!(response.result.is_err(), "revoked once");

        let high_water = DELETE_CHUNK_KEYS_HIGH_WATER.load(Ordering::Relaxed);
        assert!(
            high_water <= DELETE_RANGE_CHUNK_KEYS_MAX as usize,
            "a delete chunk held {high_water} keys"
        );
        assert!(high_water > 0);
    }
}
