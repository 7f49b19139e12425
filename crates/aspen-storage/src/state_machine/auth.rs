//! The auth store in the state machine: its tables (`auth_users`, `auth_roles`, `sm_meta`
//! `auth`), the in-memory copy the API checks permissions against, and the hook that tells
//! the token keeper about tokens assigned and users invalidated.
//!
//! The in-memory copy always equals the committed tables: it is loaded at open and after a
//! snapshot install, and replaced after each batch that changed auth, once that batch has
//! committed. An apply batch starts from it (no table read on the hot path) and writes back
//! only the users and roles a command changed.

use std::sync::{Arc, OnceLock, RwLock};

use aspen_core::auth::{AuthChanges, AuthMeta, AuthState, RoleRecord, UserRecord};
use redb::{ReadableTable, Table};

use crate::error::{Result, decode};
use crate::schema;

/// Told about token changes, on every replica, after the batch that made them committed.
pub trait AuthSink: Send + Sync + 'static {
    /// Authenticate applied: `token` now stands for `user` at auth revision `auth_revision`.
    fn token_assigned(&self, token: &str, user: &str, auth_revision: u64);
    /// These users were deleted or their passwords changed: their tokens stop working.
    fn users_invalidated(&self, users: &[String]);
    /// Auth was disabled, or the whole store replaced by a snapshot: every token stops
    /// working.
    fn all_invalidated(&self);
}

/// One change to tokens made by an apply batch, announced in log order.
#[derive(Debug, Clone)]
pub(crate) enum TokenEffect {
    Assigned {
        token: String,
        user: String,
        auth_revision: u64,
    },
    UsersInvalidated(Vec<String>),
    AllInvalidated,
}

/// What a batch did to auth, announced after it committed.
#[derive(Debug, Default)]
pub(crate) struct BatchAuthEffects {
    /// The store changed (its tables need writing, its copy replacing).
    pub changed: bool,
    /// In the order the batch's entries made them.
    pub tokens: Vec<TokenEffect>,
}

/// The committed auth store and the sink; shared by every clone of the state machine.
#[derive(Default)]
pub(crate) struct AuthHook {
    current: RwLock<Arc<AuthState>>,
    sink: OnceLock<Arc<dyn AuthSink>>,
}

impl std::fmt::Debug for AuthHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuthHook(sink set: {})", self.sink.get().is_some())
    }
}

impl AuthHook {
    pub(crate) fn current(&self) -> Arc<AuthState> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(crate) fn replace(&self, state: Arc<AuthState>) {
        match self.current.write() {
            Ok(mut guard) => *guard = state,
            Err(poisoned) => *poisoned.into_inner() = state,
        }
    }

    pub(crate) fn set_sink(&self, sink: Arc<dyn AuthSink>) -> bool {
        self.sink.set(sink).is_ok()
    }

    /// Announces a committed batch's effects.
    pub(crate) fn announce(&self, effects: &BatchAuthEffects) {
        let Some(sink) = self.sink.get() else {
            return;
        };
        for effect in &effects.tokens {
            match effect {
                TokenEffect::Assigned {
                    token,
                    user,
                    auth_revision,
                } => sink.token_assigned(token, user, *auth_revision),
                TokenEffect::UsersInvalidated(users) => sink.users_invalidated(users),
                TokenEffect::AllInvalidated => sink.all_invalidated(),
            }
        }
    }

    pub(crate) fn invalidate_all(&self) {
        if let Some(sink) = self.sink.get() {
            sink.all_invalidated();
        }
    }
}

/// Reads the whole auth store from its tables.
pub(crate) fn load(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    users: &impl ReadableTable<&'static str, &'static [u8]>,
    roles: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<AuthState> {
    let mut state = AuthState::default();
    if let Some(bytes) = meta.get(schema::SM_AUTH)? {
        state.meta = decode::<AuthMeta>("sm_meta", bytes.value())?;
    }
    for item in users.iter()? {
        let (name, bytes) = item?;
        let record: UserRecord = decode("auth_users", bytes.value())?;
        state.users.insert(name.value().to_string(), record);
    }
    for item in roles.iter()? {
        let (name, bytes) = item?;
        let record: RoleRecord = decode("auth_roles", bytes.value())?;
        state.roles.insert(name.value().to_string(), record);
    }
    Ok(state)
}

pub(crate) fn load_read(txn: &redb::ReadTransaction) -> Result<AuthState> {
    load(
        &txn.open_table(schema::SM_META)?,
        &txn.open_table(schema::AUTH_USERS)?,
        &txn.open_table(schema::AUTH_ROLES)?,
    )
}

/// Writes what `changes` names from `state` into the tables (a name no longer in `state` is
/// removed).
pub(crate) fn persist(
    txn: &redb::WriteTransaction,
    state: &AuthState,
    changes: &AuthChanges,
) -> Result<()> {
    let mut users: Table<&str, &[u8]> = txn.open_table(schema::AUTH_USERS)?;
    for name in &changes.users {
        match state.users.get(name) {
            Some(record) => {
                users.insert(name.as_str(), aspen_core::codec::encode(record).as_slice())?;
            }
            None => {
                users.remove(name.as_str())?;
            }
        }
    }
    let mut roles: Table<&str, &[u8]> = txn.open_table(schema::AUTH_ROLES)?;
    for name in &changes.roles {
        match state.roles.get(name) {
            Some(record) => {
                roles.insert(name.as_str(), aspen_core::codec::encode(record).as_slice())?;
            }
            None => {
                roles.remove(name.as_str())?;
            }
        }
    }
    if changes.meta {
        let mut meta = txn.open_table(schema::SM_META)?;
        meta.insert(
            schema::SM_AUTH,
            aspen_core::codec::encode(&state.meta).as_slice(),
        )?;
    }
    Ok(())
}
