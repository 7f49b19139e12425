//! Leases on the leader: expiry deadlines in memory, renewals, and the task that revokes
//! expired leases through Raft.
//!
//! Which leases exist is replicated state (the `leases` table); when they expire is not.
//! Only the leader keeps deadlines, as etcd's primary lessor does. A node that becomes leader
//! gives every lease a fresh deadline of now + its TTL, so a leader change extends leases and
//! never cuts one short. Followers forward keep-alives and TTL queries to the leader.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aspen_core::convert::millis;
use aspen_core::limits::{LEASE_EXPIRE_BATCH_MAX, LEASE_TTL_SECONDS_MAX, lease_ttl_seconds_min};
use aspen_core::{ApplyError, ApplyResponse, Command, CommandResult};
use aspen_storage::MvccReader;
use tokio::time::Instant;

use crate::error::NodeError;
use crate::forward::{ForwardRequest, ForwardResponse};
use crate::node::Node;

/// Attempts to find a lease id not in use (ids only collide with a client's chosen ones).
const LEASE_ID_DRAWS_MAX: u32 = 16;
/// etcd's id generator (`idutil.Generator`): the member's low 16 bits over a 48-bit suffix
/// of 40 bits of milliseconds since the epoch at start-up and an 8-bit counter.
const LEASE_ID_SUFFIX_BITS: u32 = 48;
const LEASE_ID_COUNTER_BITS: u32 = 8;
const LEASE_ID_TIME_BITS: u32 = LEASE_ID_SUFFIX_BITS - LEASE_ID_COUNTER_BITS;

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
    /// The last lease id suffix handed out (see `next_id`).
    id_suffix: u64,
}

/// The lease deadlines of this node while it leads. Every method is cheap and never awaits.
#[derive(Debug)]
pub struct Lessor {
    ttl_seconds_min: i64,
    /// The member's low 16 bits, shifted over the suffix: ids from different leaders differ.
    id_prefix: u64,
    state: Mutex<LessorState>,
}

fn deadline_after(now: Instant, ttl_seconds: i64) -> Instant {
    let ttl = Duration::from_secs(ttl_seconds.clamp(0, LEASE_TTL_SECONDS_MAX) as u64);
    // A TTL beyond what the clock can represent never expires in practice.
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

impl Lessor {
    /// A lessor for member `member_id`, whose election timeout is `election_timeout_ms`; the
    /// minimum TTL is derived from it as etcd derives its own.
    pub fn new(member_id: u64, election_timeout_ms: u64) -> Lessor {
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, millis);
        let time_mask = (1u64 << LEASE_ID_TIME_BITS) - 1;
        Lessor {
            ttl_seconds_min: lease_ttl_seconds_min(election_timeout_ms),
            id_prefix: (member_id & 0xffff) << LEASE_ID_SUFFIX_BITS,
            state: Mutex::new(LessorState {
                primary_term: None,
                deadlines: HashMap::new(),
                id_suffix: (now_ms & time_mask) << LEASE_ID_COUNTER_BITS,
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
        // At most the granted TTL, an i64.
        let left_seconds = i64::try_from(left.as_secs()).unwrap_or(i64::MAX);
        Ok(Some((left_seconds, deadline.granted_ttl_seconds)))
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

    /// The leader's last touch on a proposal: a grant gets its final id (the next one from
    /// etcd's generator not in use, when the client left it 0) and a TTL no shorter than the
    /// minimum.
    pub fn prepare(&self, command: Command, reader: &MvccReader) -> Result<Command, NodeError> {
        let Command::LeaseGrant { id, ttl_seconds } = command else {
            return Ok(command);
        };
        let ttl_seconds = ttl_seconds.max(self.ttl_seconds_min);
        if id != 0 {
            return Ok(Command::LeaseGrant { id, ttl_seconds });
        }
        for _ in 0..LEASE_ID_DRAWS_MAX {
            let candidate = self.next_id();
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

    /// etcd's lease id: the generator's next id, masked to a positive int64. Ids grow over
    /// time (the suffix starts from the clock at start-up and only counts up) and differ
    /// between members (the prefix), so they are unique across the cluster's leaders.
    fn next_id(&self) -> u64 {
        let suffix_mask = (1u64 << LEASE_ID_SUFFIX_BITS) - 1;
        let mut state = self.lock();
        loop {
            state.id_suffix = state.id_suffix.wrapping_add(1);
            let id = (self.id_prefix | (state.id_suffix & suffix_mask)) & (i64::MAX as u64);
            if id != 0 {
                return id;
            }
        }
    }

    /// `ids` in etcd's LeaseLeases order: by time left, soonest first, on the leader (its
    /// deadlines); etcd's followers know no deadlines, and neither do Aspen's, which list by
    /// id (the order of grants).
    pub fn sort_by_expiry(&self, ids: &mut [u64]) {
        let state = self.lock();
        ids.sort_by_key(|id| {
            let deadline = state.deadlines.get(id).map(|d| d.at);
            (deadline.is_none(), deadline, *id)
        });
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
        if self.testing().split_lease_expiry_for_testing {
            self.split_expiry_for_testing(&expired).await;
        }
        let command = Command::LeaseExpire {
            ids: expired.clone(),
        };
        match self.write_as_leader(command).await {
            Ok(_) => lessor.forget(&expired),
            Err(error) => tracing::warn!(%error, "revoking expired leases; will retry"),
        }
    }

    /// The planted bug behind `TestingOptions::split_lease_expiry_for_testing`: deletes the
    /// first key of each expired lease holding two or more, in a revision of its own.
    async fn split_expiry_for_testing(&self, expired: &[u64]) {
        for id in expired {
            let Ok(keys) = self.reader().lease_keys(*id) else {
                continue;
            };
            if keys.len() < 2 {
                continue;
            }
            let delete = Command::DeleteRange(aspen_core::DeleteRangeRequest {
                key: keys[0].clone(),
                range_end: Vec::new(),
                prev_kv: false,
            });
            let _ = self.write_as_leader(delete).await;
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
        let mut ids: Vec<u64> = self
            .reader()
            .leases()?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        self.lessor().sort_by_expiry(&mut ids);
        Ok(ids)
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
        assert_eq!(Lessor::new(1, 1000).ttl_seconds_min(), 2);
    }

    #[test]
    fn ids_grow_are_positive_int64_and_carry_the_member() {
        let lessor = Lessor::new(0xabcd_1234, 1000);
        let mut last = 0;
        for _ in 0..1000 {
            let id = lessor.next_id();
            assert!(id > last && id <= i64::MAX as u64);
            assert_eq!(id >> LEASE_ID_SUFFIX_BITS, 0x1234);
            last = id;
        }
        // Another member's ids never meet these.
        let other = Lessor::new(0x5678, 1000);
        assert_eq!(other.next_id() >> LEASE_ID_SUFFIX_BITS, 0x5678);
        // A later start counts on from its own clock (ms << 8), past this start's clock.
        std::thread::sleep(Duration::from_millis(5));
        let restarted = Lessor::new(0xabcd_1234, 1000);
        assert!(restarted.next_id() > last - 1000 + (4 << LEASE_ID_COUNTER_BITS));
    }

    #[test]
    fn leases_list_soonest_expiry_first_then_unknown_by_id() {
        let lessor = Lessor::new(1, 1000);
        let now = Instant::now();
        {
            let mut state = lessor.lock();
            for (id, ttl) in [(10, 30), (20, 5), (30, 60)] {
                let deadline = Deadline {
                    at: deadline_after(now, ttl),
                    granted_ttl_seconds: ttl,
                };
                state.deadlines.insert(id, deadline);
            }
        }
        let mut ids = vec![40, 30, 5, 20, 10];
        lessor.sort_by_expiry(&mut ids);
        assert_eq!(ids, vec![20, 10, 30, 5, 40]);
    }
}
