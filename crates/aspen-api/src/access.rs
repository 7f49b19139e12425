//! Who sends a request, and what they may do: etcd's authentication and permission checks.
//!
//! Every service resolves the caller with [`Access::caller`] before doing anything:
//! - auth disabled: anyone may do anything (a token, if sent, is not looked at);
//! - a `token` in the gRPC metadata: the simple token's user, or etcd's "invalid auth token";
//! - otherwise a [`CertificateUser`] request extension, if the transport put one there (the
//!   client certificate's Common Name, etcd's `--client-cert-auth` rule);
//! - otherwise no user, which every check refuses with "user name is empty".
//!
//! Checks read the state machine's in-memory copy of the auth store. A write that passed them
//! is proposed wrapped in `Command::Authorized` with the auth revision it was checked at; it
//! applies only if the store is still at that revision, so a permission revoked in between is
//! never used.
//!
//! With `--auth-token jwt,...` tokens are etcd's JWTs instead ([`crate::jwt`]): Authenticate
//! checks the password and signs a token on the receiving node, at the auth revision checked;
//! every member verifies tokens with its own copy of the key, nothing goes through Raft, and a
//! token lapses at its `exp` or once the auth revision moves past it.
//!
//! Otherwise tokens are etcd's simple tokens: Authenticate checks the password on the receiving
//! node (bcrypt, off the async workers), then proposes the assignment through Raft, so every member
//! learns the token ([`TokenKeeper`], the state machine's auth sink). A token lapses after
//! `--auth-token-ttl` seconds unused, when its user is deleted or changes password, when auth is
//! disabled, and, stricter than etcd 3.4's simple tokens, once the auth revision moves past the
//! one it was issued at (the client then gets "revision of auth store is old", and etcd's clients
//! authenticate again by themselves).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aspen_core::auth::{AuthState, PermissionType};
use aspen_core::limits::{AUTH_TOKEN_TTL_SECONDS_DEFAULT, AUTH_TOKENS_MAX, BCRYPT_COST_DEFAULT};
use aspen_core::{ApplyError, Command};
use aspen_node::Node;
use tonic::Status;

use aspen_proto::etcdserverpb as pb;

use crate::jwt::JwtKeys;
use crate::status::{from_apply, from_node};

/// The gRPC metadata key etcd's clients send their token in.
pub const TOKEN_METADATA_KEY: &str = "token";
/// Where etcd also looks for it: the JSON gateway's `Authorization` header (etcd's
/// `TokenFieldNameSwagger`), which the gateway passes on as metadata.
pub const TOKEN_GATEWAY_METADATA_KEY: &str = "authorization";

/// A user name the transport vouches for: the Common Name of a verified client certificate.
///
/// The TLS layer inserts it into each request's extensions (`request.extensions_mut()`) when
/// the server runs with `--client-cert-auth`. As in etcd, it is used only while auth is enabled
/// and only when the request carries no token (a token wins); a name that is not a user gets
/// "permission denied" from every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateUser(pub String);

/// The server's auth settings (`--auth-token`, `--auth-token-ttl`, `--bcrypt-cost`).
#[derive(Debug, Clone)]
pub struct AuthOptions {
    /// A simple token unused this long stops working.
    pub token_ttl: Duration,
    /// bcrypt's cost for new password hashes.
    pub bcrypt_cost: u32,
    /// `--auth-token jwt,...`: tokens are JWTs signed and verified with these keys instead of
    /// simple tokens.
    pub jwt: Option<Arc<JwtKeys>>,
    /// `--auth-token` as given ("simple" by default), for the effective configuration.
    pub auth_token: String,
}

impl PartialEq for AuthOptions {
    fn eq(&self, other: &Self) -> bool {
        self.token_ttl == other.token_ttl
            && self.bcrypt_cost == other.bcrypt_cost
            && self.auth_token == other.auth_token
            && self.jwt.is_some() == other.jwt.is_some()
    }
}

impl Eq for AuthOptions {}

impl Default for AuthOptions {
    fn default() -> Self {
        AuthOptions {
            token_ttl: Duration::from_secs(AUTH_TOKEN_TTL_SECONDS_DEFAULT),
            bcrypt_cost: BCRYPT_COST_DEFAULT,
            jwt: None,
            auth_token: "simple".to_string(),
        }
    }
}

/// The checks and tokens of one member, shared by all its client services. Cheap to clone.
#[derive(Clone)]
pub struct Access {
    node: Node,
    tokens: Arc<TokenKeeper>,
    options: AuthOptions,
    /// A hash at the configured cost of a password nobody knows: Authenticate checks against
    /// it when the user does not exist, so a failure takes as long either way.
    decoy_hash: Arc<OnceLock<String>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Access {
    /// Creates the member's token keeper and connects it to the state machine, so tokens
    /// assigned through Raft are known here. Call once per node, before serving clients.
    pub fn new(node: &Node, options: AuthOptions) -> Access {
        let tokens = Arc::new(TokenKeeper::new(options.token_ttl));
        let connected = node.state_machine().set_auth_sink(tokens.clone());
        assert!(connected, "Access::new called twice for one node");
        let access = Access {
            node: node.clone(),
            tokens,
            options,
            decoy_hash: Arc::default(),
        };
        // The decoy is ready before the first failed Authenticate needs it (it costs a hash).
        let warm = access.clone();
        tokio::spawn(async move {
            if let Err(status) = warm.decoy().await {
                tracing::warn!(%status, "preparing the decoy password hash");
            }
        });
        access
    }

    pub fn options(&self) -> &AuthOptions {
        &self.options
    }

    /// The JWT keys when the member runs with `--auth-token jwt,...`.
    pub fn jwt(&self) -> Option<&JwtKeys> {
        self.options.jwt.as_deref()
    }

    /// The member's token keeper (tests look at it; the state machine feeds it).
    pub fn tokens(&self) -> &TokenKeeper {
        &self.tokens
    }

    /// The committed auth store as this member has applied it.
    pub fn auth_state(&self) -> Arc<AuthState> {
        self.node.state_machine().auth_state()
    }

    /// Who sends `request` (see the module docs).
    pub fn caller<T>(&self, request: &tonic::Request<T>) -> Result<Caller, Status> {
        self.caller_from(request.metadata(), request.extensions())
    }

    pub fn caller_from(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        extensions: &tonic::Extensions,
    ) -> Result<Caller, Status> {
        let auth = self.auth_state();
        if !auth.enabled() {
            return Ok(Caller { user: None, auth });
        }
        let token = metadata
            .get(TOKEN_METADATA_KEY)
            .or_else(|| metadata.get(TOKEN_GATEWAY_METADATA_KEY));
        if let Some(token) = token {
            let token = token.to_str().unwrap_or_default();
            let found = match self.jwt() {
                Some(keys) => keys.verify(token, unix_now()),
                None => self.tokens.lookup(token),
            };
            let Some((user, revision)) = found else {
                return Err(from_apply(&ApplyError::InvalidAuthToken));
            };
            return Ok(Caller {
                user: Some((user, revision)),
                auth,
            });
        }
        if let Some(CertificateUser(name)) = extensions.get::<CertificateUser>() {
            let revision = auth.revision();
            return Ok(Caller {
                user: Some((name.clone(), revision)),
                auth,
            });
        }
        Ok(Caller { user: None, auth })
    }

    /// Hashes a new password at the configured cost, off the async workers.
    pub(crate) async fn hash_password(&self, password: String) -> Result<String, Status> {
        let cost = self.options.bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| crate::status::internal(format!("password hashing stopped: {e}")))?
            .map_err(|e| crate::status::internal(format!("password hashing failed: {e}")))
    }

    /// Checks `password` against `hash` (the decoy when the user is unknown or has no
    /// password), off the async workers; true only for a real user's right password.
    pub(crate) async fn verify_password(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, Status> {
        let real = hash.is_some();
        let hash = match hash {
            Some(hash) => hash,
            None => self.decoy().await?,
        };
        let matched = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .map_err(|e| crate::status::internal(format!("password check stopped: {e}")))?
            .unwrap_or(false);
        Ok(real && matched)
    }

    async fn decoy(&self) -> Result<String, Status> {
        if let Some(hash) = self.decoy_hash.get() {
            return Ok(hash.clone());
        }
        let mut secret = [0u8; 24];
        fill_random(&mut secret);
        let hash = self
            .hash_password(secret.iter().map(|b| format!("{b:02x}")).collect())
            .await?;
        Ok(self.decoy_hash.get_or_init(|| hash).clone())
    }
}

/// Seconds since the Unix epoch (a JWT's `exp` clock).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Random bytes from the operating system.
pub(crate) fn fill_random(buf: &mut [u8]) {
    if let Err(error) = getrandom::fill(buf) {
        panic!("the operating system's random source failed: {error}");
    }
}

/// The caller of one request, and the auth store it is checked against.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user and the auth revision their token was issued at.
    user: Option<(String, u64)>,
    auth: Arc<AuthState>,
}

impl Caller {
    pub fn user(&self) -> Option<&str> {
        self.user.as_ref().map(|(u, _)| u.as_str())
    }

    pub fn auth(&self) -> &AuthState {
        &self.auth
    }

    fn user_at(&self) -> Option<(&str, u64)> {
        self.user.as_ref().map(|(u, r)| (u.as_str(), *r))
    }

    /// etcd's `isOpPermitted` as an apply error.
    pub fn permit(
        &self,
        key: &[u8],
        range_end: &[u8],
        wanted: PermissionType,
    ) -> Result<(), ApplyError> {
        self.auth.check_op(self.user_at(), key, range_end, wanted)
    }

    /// May the caller read every key of the range?
    pub fn check_read(&self, key: &[u8], range_end: &[u8]) -> Result<(), Status> {
        self.permit(key, range_end, PermissionType::Read)
            .map_err(|e| from_apply(&e))
    }

    /// May the caller write every key of the range?
    pub fn check_write(&self, key: &[u8], range_end: &[u8]) -> Result<(), Status> {
        self.permit(key, range_end, PermissionType::Write)
            .map_err(|e| from_apply(&e))
    }

    /// etcd's `IsAdminPermitted` (a root user), refusing a token older than the auth store.
    pub fn admin(&self) -> Result<(), ApplyError> {
        if !self.auth.enabled() {
            return Ok(());
        }
        if let Some((_, revision)) = &self.user
            && *revision < self.auth.revision()
        {
            return Err(ApplyError::AuthOldRevision);
        }
        self.auth.check_admin(self.user())
    }

    pub fn check_admin(&self) -> Result<(), Status> {
        self.admin().map_err(|e| from_apply(&e))
    }

    /// The command to propose for a request that passed its checks: wrapped with the auth
    /// revision checked at while auth is enabled (for the commands apply checks), unchanged
    /// otherwise.
    pub fn authorize(&self, command: Command) -> Command {
        if !self.auth.enabled() || !command.needs_auth_user() {
            return command;
        }
        Command::Authorized {
            user: self.user().unwrap_or_default().to_string(),
            auth_revision: self.auth.revision(),
            command: Box::new(command),
        }
    }
}

/// etcd's checks for a client's KV requests (`apply_auth.go`), recursively through nested
/// Txns: a range reads its range; a put writes its key (and reads it with `prev_kv`, and may
/// attach a lease only if the caller may write every key already on it); a delete writes its
/// range (and reads it with `prev_kv`); a Txn needs read on every compare and the checks of
/// every operation in both branches.
impl Caller {
    pub fn check_range(&self, request: &pb::RangeRequest) -> Result<(), Status> {
        self.check_read(&request.key, &request.range_end)
    }

    pub fn check_put(&self, node: &Node, request: &pb::PutRequest) -> Result<(), Status> {
        self.check_write(&request.key, &[])?;
        if request.prev_kv {
            self.check_read(&request.key, &[])?;
        }
        if request.lease > 0 {
            self.check_lease_keys(node, request.lease as u64, PermissionType::Write)?;
        }
        Ok(())
    }

    pub fn check_delete(&self, request: &pb::DeleteRangeRequest) -> Result<(), Status> {
        if request.prev_kv {
            self.check_read(&request.key, &request.range_end)?;
        }
        self.check_write(&request.key, &request.range_end)
    }

    pub fn check_txn(&self, node: &Node, request: &pb::TxnRequest) -> Result<(), Status> {
        if !self.auth.enabled() {
            return Ok(());
        }
        self.check_txn_at(node, request, 0)
    }

    fn check_txn_at(&self, node: &Node, txn: &pb::TxnRequest, depth: u32) -> Result<(), Status> {
        // Validation bounds nesting before this runs; the bound here only keeps recursion finite.
        if depth > aspen_core::limits::TXN_NESTING_DEPTH_MAX {
            return Err(from_apply(&ApplyError::TxnTooDeep));
        }
        for compare in &txn.compare {
            self.check_read(&compare.key, &compare.range_end)?;
        }
        for op in txn.success.iter().chain(txn.failure.iter()) {
            match &op.request {
                Some(pb::request_op::Request::RequestRange(range)) => self.check_range(range)?,
                Some(pb::request_op::Request::RequestPut(put)) => self.check_put(node, put)?,
                Some(pb::request_op::Request::RequestDeleteRange(delete)) => {
                    self.check_delete(delete)?
                }
                Some(pb::request_op::Request::RequestTxn(inner)) => {
                    self.check_txn_at(node, inner, depth + 1)?
                }
                None => {}
            }
        }
        Ok(())
    }

    /// `wanted` access to every key attached to lease `id` (etcd's `checkLeasePuts` for
    /// Write; LeaseTimeToLive with keys asks for Read).
    pub fn check_lease_keys(
        &self,
        node: &Node,
        id: u64,
        wanted: PermissionType,
    ) -> Result<(), Status> {
        if !self.auth.enabled() || self.user().is_some_and(|u| self.auth.has_root_role(u)) {
            return Ok(());
        }
        let keys = node
            .reader()
            .lease_keys(id)
            .map_err(|e| from_node(aspen_node::NodeError::from(e)))?;
        for key in keys {
            self.permit(&key, &[], wanted).map_err(|e| from_apply(&e))?;
        }
        Ok(())
    }
}

/// One member's simple tokens: token -> (user, auth revision at issue, deadline). Told about
/// assignments and invalidations by the state machine (every member applies them), bounded by
/// `AUTH_TOKENS_MAX`.
pub struct TokenKeeper {
    ttl: Duration,
    tokens: Mutex<HashMap<String, TokenEntry>>,
}

struct TokenEntry {
    user: String,
    revision: u64,
    deadline: Instant,
}

impl TokenKeeper {
    pub fn new(ttl: Duration) -> TokenKeeper {
        TokenKeeper {
            ttl,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, TokenEntry>> {
        match self.tokens.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The token's user and issue revision, if it is known and unexpired; each use restarts
    /// its TTL, as etcd's simple tokens.
    pub fn lookup(&self, token: &str) -> Option<(String, u64)> {
        let now = Instant::now();
        let mut map = self.map();
        let entry = map.get_mut(token)?;
        if entry.deadline <= now {
            map.remove(token);
            return None;
        }
        entry.deadline = now + self.ttl;
        Some((entry.user.clone(), entry.revision))
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, token: &str, user: &str, revision: u64) {
        let now = Instant::now();
        let mut map = self.map();
        if map.len() >= AUTH_TOKENS_MAX as usize && !map.contains_key(token) {
            map.retain(|_, entry| entry.deadline > now);
            if map.len() >= AUTH_TOKENS_MAX as usize {
                let oldest = map
                    .iter()
                    .min_by_key(|(_, entry)| entry.deadline)
                    .map(|(token, _)| token.clone());
                if let Some(oldest) = oldest {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(
            token.to_string(),
            TokenEntry {
                user: user.to_string(),
                revision,
                deadline: now + self.ttl,
            },
        );
        assert!(map.len() <= AUTH_TOKENS_MAX as usize);
    }
}

impl aspen_storage::AuthSink for TokenKeeper {
    fn token_assigned(&self, token: &str, user: &str, auth_revision: u64) {
        self.insert(token, user, auth_revision);
    }

    fn users_invalidated(&self, users: &[String]) {
        self.map().retain(|_, entry| !users.contains(&entry.user));
    }

    fn all_invalidated(&self) {
        self.map().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aspen_storage::AuthSink;

    #[test]
    fn tokens_expire_unused_and_are_invalidated_by_user() {
        let keeper = TokenKeeper::new(Duration::from_millis(50));
        keeper.token_assigned("a.1", "alice", 3);
        keeper.token_assigned("b.2", "bob", 3);
        assert_eq!(keeper.lookup("a.1"), Some(("alice".to_string(), 3)));
        assert_eq!(keeper.lookup("nope"), None);
        keeper.users_invalidated(&["alice".to_string()]);
        assert_eq!(keeper.lookup("a.1"), None);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(keeper.lookup("b.2"), None, "expired after its TTL unused");
        keeper.token_assigned("c.3", "carol", 4);
        keeper.all_invalidated();
        assert!(keeper.is_empty());
    }
}
