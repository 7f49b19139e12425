//! Leases on the leader: expiry deadlines in memory, renewals, and the task that revokes
//! expired leases through Raft.
//!
//! Which leases exist is replicated state (the `leases` table); when they expire is not.
//! Only the leader keeps deadlines, as etcd's primary lessor does. A node that becomes leader
//! gives every lease a fresh deadline of now + its TTL, so a leader change extends leases and
//! never cuts one short. Followers forward keep-alives and TTL queries to the leader.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::Duration;

use aspen_core::limits::{LEASE_EXPIRE_BATCH_MAX, LEASE_TTL_SECONDS_MAX, lease_ttl_seconds_min};
use aspen_core::{ApplyError, ApplyResponse, Command, CommandResult};
use aspen_storage::MvccReader;
use tokio::time::Instant;

use crate::error::NodeError;
use crate::forward::{ForwardRequest, ForwardResponse};
use crate::node::Node;

/// Attempts to draw a random lease id that is not in use.
const LEASE_ID_DRAWS_MAX: u32 = 16;

/// A lease as TimeToLive reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTtl {
    pub id: u64,
    /// Seconds left, truncated as etcd reports them.
    pub ttl_seconds: i64,
    pub granted_ttl_seconds: i64,
    pub keys: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    granted_ttl_seconds: i64,
}

#[derive(Debug)]
struct LessorState {
    /// The term this node leads with its deadlines loaded; `None` when not the leader.
    primary_term: Option<u64>,
    deadlines: HashMap<u64, Deadline>,
    /// xorshift state for lease ids; seeded once per process.
    random: u64,
}

/// The lease deadlines of this node while it leads. Every method is cheap and never awaits.
#[derive(Debug)]
pub struct Lessor {
    ttl_seconds_min: i64,
    state: Mutex<LessorState>,
}

fn deadline_after(now: Instant, ttl_seconds: i64) -> Instant {
    let ttl = Duration::from_secs(ttl_seconds.clamp(0, LEASE_TTL_SECONDS_MAX) as u64);
    // A TTL beyond what the clock can represent never expires in practice.
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

impl Lessor {
    /// A lessor for a node whose election timeout is `election_timeout_ms`; the minimum TTL is
    /// derived from it as etcd derives its own.
    pub fn new(election_timeout_ms: u64) -> Lessor {
        let seed = RandomState::new().hash_one(std::process::id()) | 1;
        Lessor {
            ttl_seconds_min: lease_ttl_seconds_min(election_timeout_ms),
            state: Mutex::new(LessorState {
                primary_term: None,
                deadlines: HashMap::new(),
                random: seed,
            }),
        }
    }

    pub fn ttl_seconds_min(&self) -> i64 {
        self.ttl_seconds_min
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LessorState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Becomes the lessor for `term` if not already: every lease gets now + its TTL.
    pub fn promote(&self, term: u64, reader: &MvccReader) -> Result<(), NodeError> {
        if self.lock().primary_term == Some(term) {
            return Ok(());
        }
        let leases = reader.leases()?;
        let now = Instant::now();
        let mut state = self.lock();
        state.deadlines = leases
            .into_iter()
            .map(|(id, record)| {
                let deadline = Deadline {
                    at: deadline_after(now, record.ttl_seconds),
                    granted_ttl_seconds: record.ttl_seconds,
                };
                (id, deadline)
            })
            .collect();
        state.primary_term = Some(term);
        tracing::info!(term, leases = state.deadlines.len(), "lessor promoted");
        Ok(())
    }

    /// Stops keeping deadlines (this node no longer leads).
    pub fn demote(&self) {
        let mut state = self.lock();
        if state.primary_term.take().is_some() {
            state.deadlines.clear();
            tracing::info!("lessor demoted");
        }
    }

    pub fn is_primary(&self) -> bool {
        self.lock().primary_term.is_some()
    }

    /// Brings the deadlines in line with the stored leases: a lease applied since (granted
    /// through another leader's log) gets now + TTL; a revoked one is dropped.
    pub fn reconcile(&self, reader: &MvccReader) -> Result<(), NodeError> {
        let leases = reader.leases()?;
        let now = Instant::now();
        let mut state = self.lock();
        if state.primary_term.is_none() {
            return Ok(());
        }
        let stored: HashMap<u64, i64> = leases
            .into_iter()
            .map(|(id, record)| (id, record.ttl_seconds))
            .collect();
        state.deadlines.retain(|id, _| stored.contains_key(id));
        for (id, ttl_seconds) in stored {
            state.deadlines.entry(id).or_insert(Deadline {
                at: deadline_after(now, ttl_seconds),
                granted_ttl_seconds: ttl_seconds,
            });
        }
        Ok(())
    }

    /// The lease's deadline, learning it from storage if it was applied after the last
    /// reconcile. `None`: no such lease.
    fn lookup(&self, id: u64, reader: &MvccReader) -> Result<Option<Deadline>, NodeError> {
        // Storage is the truth: a lease revoked since its deadline was recorded is gone, even
        // though the deadline has not passed yet.
        let Some(record) = reader.lease(id)? else {
            self.lock().deadlines.remove(&id);
            return Ok(None);
        };
        if let Some(deadline) = self.lock().deadlines.get(&id) {
            return Ok(Some(*deadline));
        }
        let deadline = Deadline {
            at: deadline_after(Instant::now(), record.ttl_seconds),
            granted_ttl_seconds: record.ttl_seconds,
        };
        Ok(Some(*self.lock().deadlines.entry(id).or_insert(deadline)))
    }

    /// Renews lease `id` for its full TTL; returns the TTL. An expired lease awaiting its
    /// revocation is not found, as in etcd.
    pub fn renew(&self, id: u64, reader: &MvccReader) -> Result<i64, NodeError> {
        let Some(deadline) = self.lookup(id, reader)? else {
            return Err(NodeError::Apply(ApplyError::LeaseNotFound));
        };
        let now = Instant::now();
        if deadline.at <= now {
            return Err(NodeError::Apply(ApplyError::LeaseNotFound));
        }
        let renewed = Deadline {
            at: deadline_after(now, deadline.granted_ttl_seconds),
            ..deadline
        };
        self.lock().deadlines.insert(id, renewed);
        Ok(deadline.granted_ttl_seconds)
    }

    /// Seconds left and the granted TTL of lease `id`; `None` if there is no such lease.
    pub fn time_to_live(
        &self,
        id: u64,
        reader: &MvccReader,
    ) -> Result<Option<(i64, i64)>, NodeError> {
        let Some(deadline) = self.lookup(id, reader)? else {
            return Ok(None);
        };
        let left = deadline.at.saturating_duration_since(Instant::now());
        Ok(Some((left.as_secs() as i64, deadline.granted_ttl_seconds)))
    }

    /// Up to `LEASE_EXPIRE_BATCH_MAX` leases past their deadline, earliest first.
    pub fn expired(&self) -> Vec<u64> {
        let now = Instant::now();
        let state = self.lock();
        let mut expired: Vec<(Instant, u64)> = state
            .deadlines
            .iter()
            .filter(|(_, d)| d.at <= now)
            .map(|(id, d)| (d.at, *id))
            .collect();
        expired.sort_unstable();
        expired.truncate(LEASE_EXPIRE_BATCH_MAX as usize);
        expired.into_iter().map(|(_, id)| id).collect()
    }

    pub fn forget(&self, ids: &[u64]) {
        let mut state = self.lock();
        for id in ids {
            state.deadlines.remove(id);
        }
    }

    /// The leader's last touch on a proposal: a grant gets its final id (a random positive
    /// one not in use, when the client left it 0) and a TTL no shorter than the minimum.
    pub fn prepare(&self, command: Command, reader: &MvccReader) -> Result<Command, NodeError> {
        let Command::LeaseGrant { id, ttl_seconds } = command else {
            return Ok(command);
        };
        let ttl_seconds = ttl_seconds.max(self.ttl_seconds_min);
        if id != 0 {
            return Ok(Command::LeaseGrant { id, ttl_seconds });
        }
        for _ in 0..LEASE_ID_DRAWS_MAX {
            let candidate = self.draw_id();
            let known = self.lock().deadlines.contains_key(&candidate);
            if !known && reader.lease(candidate)?.is_none() {
                return Ok(Command::LeaseGrant {
                    id: candidate,
                    ttl_seconds,
                });
            }
        }
        Err(NodeError::Apply(ApplyError::LeaseExists))
    }

    /// Records the deadline of a lease this leader just granted.
    pub fn observe(&self, response: &ApplyResponse) {
        if let Ok(CommandResult::LeaseGrant { id, ttl_seconds }) = &response.result {
            let deadline = Deadline {
                at: deadline_after(Instant::now(), *ttl_seconds),
                granted_ttl_seconds: *ttl_seconds,
            };
            let mut state = self.lock();
            if state.primary_term.is_some() {
                state.deadlines.insert(*id, deadline);
            }
        }
    }

    /// A random id in 1..=i64::MAX (etcd's wire type is int64; ids are positive).
    fn draw_id(&self) -> u64 {
        let mut state = self.lock();
        loop {
            let mut x = state.random;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            state.random = x;
            let id = x & (i64::MAX as u64);
            if id != 0 {
                return id;
            }
        }
    }
}

impl Node {
    /// One lessor step: follow leadership, learn new leases, revoke expired ones.
    pub(crate) async fn lease_tick(&self) {
        let lessor = self.lessor();
        if !self.is_leader() {
            lessor.demote();
            return;
        }
        let reader = self.reader();
        let loaded = lessor
            .promote(self.current_term(), reader)
            .and_then(|()| lessor.reconcile(reader));
        if let Err(error) = loaded {
            tracing::warn!(%error, "lessor could not read leases");
            return;
        }
        let expired = lessor.expired();
        if expired.is_empty() {
            return;
        }
        let command = Command::LeaseExpire {
            ids: expired.clone(),
        };
        match self.write_as_leader(command).await {
            Ok(_) => lessor.forget(&expired),
            Err(error) => tracing::warn!(%error, "revoking expired leases; will retry"),
        }
    }

    /// Renews lease `id` on the leader; returns its TTL in seconds.
    pub async fn lease_keep_alive(&self, id: u64) -> Result<i64, NodeError> {
        let request = ForwardRequest::LeaseKeepAlive { id };
        let ForwardResponse::LeaseTtl { ttl_seconds, .. } = self.lease_on_leader(request).await?
        else {
            return Err(NodeError::Peer("unexpected keep-alive response".into()));
        };
        Ok(ttl_seconds)
    }

    /// The remaining TTL (from the leader) and, if asked, the attached keys of lease `id`;
    /// `None` if it does not exist.
    pub async fn lease_time_to_live(
        &self,
        id: u64,
        keys: bool,
    ) -> Result<Option<LeaseTtl>, NodeError> {
        let request = ForwardRequest::LeaseTimeToLive { id };
        let (ttl_seconds, granted_ttl_seconds) = match self.lease_on_leader(request).await {
            Ok(ForwardResponse::LeaseTtl {
                ttl_seconds,
                granted_ttl_seconds,
            }) => (ttl_seconds, granted_ttl_seconds),
            Ok(_) => return Err(NodeError::Peer("unexpected time-to-live response".into())),
            Err(NodeError::Apply(ApplyError::LeaseNotFound)) => return Ok(None),
            Err(error) => return Err(error),
        };
        let keys = if keys {
            self.read_barrier().await?;
            self.reader().lease_keys(id)?
        } else {
            Vec::new()
        };
        Ok(Some(LeaseTtl {
            id,
            ttl_seconds,
            granted_ttl_seconds,
            keys,
        }))
    }

    /// Every lease id, as of a linearizable read.
    pub async fn lease_leases(&self) -> Result<Vec<u64>, NodeError> {
        self.read_barrier().await?;
        Ok(self
            .reader()
            .leases()?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// Runs a lease request here if this node leads, else on the leader.
    async fn lease_on_leader(&self, request: ForwardRequest) -> Result<ForwardResponse, NodeError> {
        self.on_leader(
            || self.lease_as_leader(request.clone()),
            |leader| self.forward_to(leader, request.clone()),
        )
        .await
    }

    /// The leader's side of `LeaseKeepAlive` and `LeaseTimeToLive`.
    pub(crate) async fn lease_as_leader(
        &self,
        request: ForwardRequest,
    ) -> Result<ForwardResponse, NodeError> {
        if !self.is_leader() {
            return Err(NodeError::LeaderChanged);
        }
        let lessor = self.lessor();
        lessor.promote(self.current_term(), self.reader())?;
        match request {
            ForwardRequest::LeaseKeepAlive { id } => {
                let ttl_seconds = lessor.renew(id, self.reader())?;
                Ok(ForwardResponse::LeaseTtl {
                    ttl_seconds,
                    granted_ttl_seconds: ttl_seconds,
                })
            }
            ForwardRequest::LeaseTimeToLive { id } => {
                let Some((ttl_seconds, granted_ttl_seconds)) =
                    lessor.time_to_live(id, self.reader())?
                else {
                    return Err(NodeError::Apply(ApplyError::LeaseNotFound));
                };
                Ok(ForwardResponse::LeaseTtl {
                    ttl_seconds,
                    granted_ttl_seconds,
                })
            }
            other => Err(NodeError::Peer(format!("not a lease request: {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_ttl_follows_the_election_timeout() {
        assert_eq!(lease_ttl_seconds_min(1000), 2);
        assert_eq!(lease_ttl_seconds_min(100), 1);
        assert_eq!(lease_ttl_seconds_min(2000), 3);
        assert_eq!(Lessor::new(1000).ttl_seconds_min(), 2);
    }

    #[test]
    fn drawn_ids_are_positive_int64() {
        let lessor = Lessor::new(1000);
        for _ in 0..1000 {
            let id = lessor.draw_id();
            assert!(id > 0 && id <= i64::MAX as u64);
        }
    }
}
