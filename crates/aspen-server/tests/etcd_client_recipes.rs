//! The `etcd-client` crate (the Rust etcd v3 client) against one real `aspen` process: KV,
//! Txn, leases and watches through the client's own API, and etcd's lock and election
//! recipes.
//!
//! etcd-client's `lock`/`unlock` and `campaign`/`proclaim`/`leader`/`observe`/`resign` call
//! etcd's server-side Lock and Election gRPC services (`v3lockpb.Lock`,
//! `v3electionpb.Election`), which aspen serves; one test drives them through those helpers.
//! The same recipes are also built here as etcd's Go `concurrency` package builds them (and as
//! etcdctl's `lock`/`elect` run them client-side), on a lease, Txn and Watch only, through
//! etcd-client's KV, Lease and Watch API:
//! - a lock: a key `<name>/<lease id in hex>` with the session's lease; the holder is the key
//!   created first; a waiter watches the key created just before its own until it is deleted;
//! - an election: the same queue of keys, whose first key's value is the leader's
//!   proclamation; `observe` follows the first key's puts and deletes.
//!
//! The client's TLS options (a CA, a client identity) against a member with mutual TLS are
//! tested here too.
//!
//! Orderings are asserted with timestamps and, for mutual exclusion, with a counter of
//! holders that must never exceed one.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use common::{Backend, Cluster};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, Error, EventType, GetOptions, KeyValue, LockOptions,
    ProclaimOptions, PutOptions, ResignOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Longest wait for one expected answer or event.
const WAIT_MS: u64 = 10_000;
/// How long a waiter is watched to make sure it does not acquire early.
const HOLD_MS: u64 = 500;
/// TTL of the sessions that are kept alive.
const SESSION_TTL_SECONDS: i64 = 10;
/// TTL of a session whose owner stops keeping it alive.
const SHORT_TTL_SECONDS: i64 = 2;
/// After its TTL, how long an abandoned session's lease may take to be revoked.
const EXPIRY_SLACK_MS: u64 = 3_000;

/// One `aspen` process and a connected etcd-client.
async fn single_member() -> (Cluster, Client) {
    let mut cluster = Cluster::new(1, Backend::Redb, None);
    cluster.start_all();
    cluster.wait_leader(&[0]).await;
    let url = cluster.members[0].client_url();
    let client = Client::connect([url], None)
        .await
        .expect("etcd-client connects");
    (cluster, client)
}

/// Awaits `future` for at most `WAIT_MS`, naming `what` if it does not finish.
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_millis(WAIT_MS), future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT_MS} ms waiting for {what}"))
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.expect("response header").revision()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_txn_lease_and_watch_through_etcd_client() {
    let (_cluster, mut client) = single_member().await;

    let put = client.put("app/a", "1", None).await.expect("put");
    let r1 = revision_of(put.header());
    client.put("app/b", "2", None).await.expect("put");
    let replaced = client
        .put("app/a", "3", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put with prev kv");
    assert_eq!(replaced.prev_key().map(KeyValue::value), Some(&b"1"[..]));

    let got = client.get("app/a", None).await.expect("get");
    let kv = &got.kvs()[0];
    assert_eq!(
        (kv.value(), kv.create_revision(), kv.version()),
        (&b"3"[..], r1, 2)
    );
    let listed = client
        .get(
            "app/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend),
            ),
        )
        .await
        .expect("get prefix");
    let keys: Vec<&[u8]> = listed.kvs().iter().map(KeyValue::key).collect();
    assert_eq!(keys, vec![&b"app/b"[..], &b"app/a"[..]]);
    assert_eq!(listed.count(), 2);

    // Compare-and-swap: the first succeeds, the second sees the changed value.
    for (expected_value, succeeds) in [("3", true), ("3", false)] {
        let txn = Txn::new()
            .when([Compare::value("app/a", CompareOp::Equal, expected_value)])
            .and_then([TxnOp::put("app/a", "4", None)])
            .or_else([TxnOp::get("app/a", None)]);
        let answer = client.txn(txn).await.expect("txn");
        assert_eq!(answer.succeeded(), succeeds);
        if !succeeds {
            let TxnOpResponse::Get(current) = &answer.op_responses()[0] else {
                panic!("expected a range response");
            };
            assert_eq!(current.kvs()[0].value(), b"4");
        }
    }

    // A watch from the first revision replays history, then goes live.
    let mut stream = client
        .watch(
            "app/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(r1)
                    .with_prev_key(),
            ),
        )
        .await
        .expect("watch");
    let created = within("the watch to be created", stream.message())
        .await
        .expect("watch stream")
        .expect("open");
    assert!(created.created());
    let deleted = client
        .delete("app/b", Some(DeleteOptions::new().with_prev_key()))
        .await
        .expect("delete");
    assert_eq!(deleted.deleted(), 1);
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let response = within("watch events", stream.message())
            .await
            .expect("watch stream")
            .expect("open");
        for event in response.events() {
            let kv = event.kv().expect("kv");
            seen.push((
                event.event_type(),
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            ));
        }
    }
    let expected = [
        (EventType::Put, "app/a", "1"),
        (EventType::Put, "app/b", "2"),
        (EventType::Put, "app/a", "3"),
        (EventType::Put, "app/a", "4"),
        (EventType::Delete, "app/b", ""),
    ];
    let expected: Vec<(EventType, String, String)> = expected
        .iter()
        .map(|(t, k, v)| (*t, k.to_string(), v.to_string()))
        .collect();
    assert_eq!(seen, expected);

    // Leases: grant, attach, keep alive, time to live, revoke (deletes the key).
    let lease = client.lease_grant(30, None).await.expect("grant");
    assert_eq!(lease.ttl(), 30);
    client
        .put(
            "app/leased",
            "x",
            Some(PutOptions::new().with_lease(lease.id())),
        )
        .await
        .expect("put with lease");
    let (mut keeper, mut answers) = client.lease_keep_alive(lease.id()).await.expect("keeper");
    keeper.keep_alive().await.expect("keep alive");
    let answer = within("a keep-alive answer", answers.message())
        .await
        .expect("keep-alive stream")
        .expect("open");
    assert_eq!((answer.id(), answer.ttl()), (lease.id(), 30));
    let ttl = client
        .lease_time_to_live(
            lease.id(),
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .expect("time to live");
    assert!(ttl.ttl() > 25 && ttl.granted_ttl() == 30, "{ttl:?}");
    assert_eq!(ttl.keys(), &[b"app/leased".to_vec()]);
    let leases = client.leases().await.expect("leases");
    assert!(leases.leases().iter().any(|l| l.id() == lease.id()));
    client.lease_revoke(lease.id()).await.expect("revoke");
    let gone = client.get("app/leased", None).await.expect("get");
    assert!(gone.kvs().is_empty(), "revoking deletes the lease's keys");
}

/// etcd-client's `lock`/`unlock` and `campaign`/`proclaim`/`leader`/`observe`/`resign` call
/// etcd's server-side Lock and Election services, which aspen serves as etcd 3.4 does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_services_through_etcd_client() {
    let (_cluster, mut client) = single_member().await;
    let a = Session::new(&client, SESSION_TTL_SECONDS, true).await;
    let b = Session::new(&client, SESSION_TTL_SECONDS, true).await;
    let status_of = |result: Result<(), Error>, what: &str| match result {
        Err(Error::GRpcStatus(status)) => (status.code(), status.message().to_string()),
        other => panic!("{what}: expected an error status, got {other:?}"),
    };
    let poller = client.clone();
    let queued = move |key: String| {
        let client = poller.clone();
        async move {
            common::poll(&format!("{key} to be queued"), || {
                let mut reader = client.clone();
                let key = key.clone();
                async move {
                    let found = reader.get(key, None).await.ok()?;
                    (!found.kvs().is_empty()).then_some(())
                }
            })
            .await;
        }
    };

    // Lock: A holds; B waits until A unlocks, then holds.
    let held = within(
        "A's lock",
        client.lock("cl", Some(LockOptions::new().with_lease(a.lease))),
    )
    .await
    .expect("A locks");
    assert_eq!(held.key(), format!("cl/{:x}", a.lease).as_bytes());
    let mut b_client = client.clone();
    let b_lease = b.lease;
    let waiter = tokio::spawn(async move {
        b_client
            .lock("cl", Some(LockOptions::new().with_lease(b_lease)))
            .await
    });
    queued(format!("cl/{:x}", b.lease)).await;
    tokio::time::sleep(Duration::from_millis(HOLD_MS)).await;
    assert!(!waiter.is_finished(), "B locked while A holds the lock");
    let unlocked = client.unlock(held.key()).await.expect("A unlocks");
    let got = within("B's lock after A unlocked", waiter)
        .await
        .expect("lock task")
        .expect("B locks");
    assert_eq!(got.key(), format!("cl/{:x}", b.lease).as_bytes());
    assert!(revision_of(got.header()) >= revision_of(unlocked.header()));
    client.unlock(got.key()).await.expect("B unlocks");
    let unknown = client
        .lock("cl", Some(LockOptions::new().with_lease(0x1234)))
        .await
        .map(drop);
    assert_eq!(
        status_of(unknown, "Lock with an unknown lease"),
        (
            tonic::Code::Unknown,
            "etcdserver: requested lease not found".to_string()
        )
    );

    // Election: nobody leads; A campaigns and proclaims; B queues; A resigns; B leads.
    let no_leader = (tonic::Code::Unknown, "election: no leader".to_string());
    assert_eq!(
        status_of(client.leader("ce").await.map(drop), "Leader"),
        no_leader
    );
    let mut observer = client.observe("ce").await.expect("observe");
    let mut observed = async || {
        let response = within("an observed leader", observer.message())
            .await
            .expect("observe stream")
            .expect("observe stream open");
        String::from_utf8_lossy(response.kv().expect("kv").value()).into_owned()
    };
    let won = within("A's campaign", client.campaign("ce", "a", a.lease))
        .await
        .expect("A campaigns");
    let a_key = won.leader().expect("leader key").clone();
    assert_eq!(a_key.key(), format!("ce/{:x}", a.lease).as_bytes());
    assert_eq!((a_key.name(), a_key.lease()), (&b"ce"[..], a.lease));
    assert_eq!(observed().await, "a");
    let proclaim_a = ProclaimOptions::new().with_leader(a_key.clone());
    client
        .proclaim("a2", Some(proclaim_a.clone()))
        .await
        .expect("A proclaims");
    assert_eq!(observed().await, "a2");
    let current = client.leader("ce").await.expect("leader");
    assert_eq!(current.kv().expect("kv").value(), b"a2");

    let mut b_client = client.clone();
    let b_campaign = tokio::spawn(async move { b_client.campaign("ce", "b", b_lease).await });
    queued(format!("ce/{:x}", b.lease)).await;
    tokio::time::sleep(Duration::from_millis(HOLD_MS)).await;
    assert!(
        !b_campaign.is_finished(),
        "B leads while A has not resigned"
    );
    client
        .resign(Some(ResignOptions::new().with_leader(a_key.clone())))
        .await
        .expect("A resigns");
    let b_won = within("B's campaign after A resigned", b_campaign)
        .await
        .expect("campaign task")
        .expect("B campaigns");
    let b_key = b_won.leader().expect("leader key").clone();
    assert_eq!(observed().await, "b");
    let current = client.leader("ce").await.expect("leader");
    assert_eq!(current.kv().expect("kv").key(), b_key.key());
    assert_eq!(
        status_of(
            client.proclaim("a3", Some(proclaim_a)).await.map(drop),
            "Proclaim by a resigned leader"
        ),
        (tonic::Code::Unknown, "election: not leader".to_string())
    );
    client
        .resign(Some(ResignOptions::new().with_leader(b_key)))
        .await
        .expect("B resigns");
    assert_eq!(
        status_of(client.leader("ce").await.map(drop), "Leader"),
        no_leader
    );
    a.close(&client).await;
    b.close(&client).await;
}

/// etcd's `concurrency.Session`: a lease, kept alive by a task until the session closes.
struct Session {
    lease: i64,
    keeper: Option<JoinHandle<()>>,
}

impl Session {
    /// A session whose lease is kept alive every TTL / 3 (as etcd's client does), or not at
    /// all (an owner that died).
    async fn new(client: &Client, ttl: i64, keep_alive: bool) -> Session {
        let mut client = client.clone();
        let lease = client.lease_grant(ttl, None).await.expect("grant").id();
        let keeper = if keep_alive {
            let (mut keeper, mut answers) = client.lease_keep_alive(lease).await.expect("keeper");
            let interval = Duration::from_millis(ttl as u64 * 1000 / 3);
            Some(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(interval).await;
                    keeper.keep_alive().await.expect("keep alive");
                    let answer = answers.message().await.expect("keep-alive answer");
                    assert!(answer.is_some_and(|a| a.ttl() > 0), "session lease lost");
                }
            }))
        } else {
            None
        };
        Session { lease, keeper }
    }

    /// Stops the keep-alives and revokes the lease (etcd's `Session.Close`).
    async fn close(mut self, client: &Client) {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
        client
            .clone()
            .lease_revoke(self.lease)
            .await
            .expect("revoke");
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
    }
}

/// `WithFirstCreate`: the key under `prefix` created first.
fn first_created() -> GetOptions {
    GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1)
}

fn range_response(response: &TxnOpResponse) -> &etcd_client::GetResponse {
    match response {
        TxnOpResponse::Get(get) => get,
        other => panic!("expected a range response, got {other:?}"),
    }
}

/// etcd's `waitDelete`: watches `key` from `revision` until it is deleted.
async fn wait_delete(client: &mut Client, key: &[u8], revision: i64) {
    let options = WatchOptions::new().with_start_revision(revision);
    let mut stream = client.watch(key, Some(options)).await.expect("watch");
    loop {
        let response = stream
            .message()
            .await
            .expect("watch stream")
            .expect("watch stream open");
        assert!(
            !response.canceled(),
            "watch cancelled: {}",
            response.cancel_reason()
        );
        if response
            .events()
            .iter()
            .any(|e| e.event_type() == EventType::Delete)
        {
            return;
        }
    }
}

/// etcd's `waitDeletes`: waits until no key under `prefix` was created at or before
/// `max_create_revision`, each time watching the newest such key until it is deleted.
async fn wait_deletes(client: &mut Client, prefix: &str, max_create_revision: i64) {
    loop {
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(1)
            .with_max_create_revision(max_create_revision);
        let newest = client.get(prefix, Some(options)).await.expect("get");
        let Some(kv) = newest.kvs().first() else {
            return;
        };
        let key = kv.key().to_vec();
        wait_delete(client, &key, revision_of(newest.header())).await;
    }
}

/// etcd's `concurrency.Mutex`.
struct Mutex {
    client: Client,
    /// `<name>/`.
    prefix: String,
    key: String,
    lease: i64,
}

impl Mutex {
    fn new(client: &Client, session: &Session, name: &str) -> Mutex {
        let prefix = format!("{name}/");
        Mutex {
            client: client.clone(),
            key: format!("{prefix}{:x}", session.lease),
            prefix,
            lease: session.lease,
        }
    }

    /// Queues this session's key and waits until every key created before it is gone.
    async fn lock(&mut self) {
        let put = PutOptions::new().with_lease(self.lease);
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key.as_str(),
                CompareOp::Equal,
                0,
            )])
            .and_then([
                TxnOp::put(self.key.as_str(), "", Some(put)),
                TxnOp::get(self.prefix.as_str(), Some(first_created())),
            ])
            .or_else([
                TxnOp::get(self.key.as_str(), None),
                TxnOp::get(self.prefix.as_str(), Some(first_created())),
            ]);
        let answer = self.client.txn(txn).await.expect("lock txn");
        let responses = answer.op_responses();
        let my_revision = if answer.succeeded() {
            revision_of(answer.header())
        } else {
            range_response(&responses[0]).kvs()[0].create_revision()
        };
        let owner = range_response(&responses[1])
            .kvs()
            .first()
            .map(KeyValue::create_revision);
        if owner != Some(my_revision) {
            wait_deletes(&mut self.client, &self.prefix, my_revision - 1).await;
        }
        // The session may have expired while waiting: the key must still be there.
        let mine = self.client.get(self.key.as_str(), None).await.expect("get");
        assert_eq!(
            mine.kvs().first().map(KeyValue::create_revision),
            Some(my_revision),
            "lock key {} lost while waiting",
            self.key
        );
    }

    async fn unlock(&mut self) {
        self.client
            .delete(self.key.as_str(), None)
            .await
            .expect("unlock");
    }
}

/// What a locker reports: when it held the lock, as seen by the test.
#[derive(Debug, Clone, Copy)]
struct Held {
    acquired: Instant,
    released: Instant,
}

/// Locks `name`, checks it is the only holder, holds for `hold`, unlocks.
async fn lock_hold_unlock(
    client: Client,
    session: Arc<Session>,
    name: &'static str,
    holders: Arc<AtomicI64>,
    hold: Duration,
    queued: oneshot::Sender<()>,
) -> Held {
    let mut mutex = Mutex::new(&client, &session, name);
    // The key is queued by the lock's first request; report once it is visible.
    let key = mutex.key.clone();
    let mut reader = client.clone();
    let mut queued = Some(queued);
    {
        let locking = mutex.lock();
        tokio::pin!(locking);
        loop {
            tokio::select! {
                () = &mut locking => break,
                () = tokio::time::sleep(Duration::from_millis(20)), if queued.is_some() => {
                    let found = reader.get(key.as_str(), None).await.expect("get");
                    if !found.kvs().is_empty()
                        && let Some(sender) = queued.take()
                    {
                        let _ = sender.send(());
                    }
                }
            }
        }
    }
    if let Some(sender) = queued.take() {
        let _ = sender.send(());
    }
    let acquired = Instant::now();
    let before = holders.fetch_add(1, Ordering::SeqCst);
    assert_eq!(
        before, 0,
        "{name}: another holder inside the critical section"
    );
    tokio::time::sleep(hold).await;
    holders.fetch_sub(1, Ordering::SeqCst);
    let released = Instant::now();
    mutex.unlock().await;
    Held { acquired, released }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_recipe_orders_holders_and_survives_a_dead_owner() {
    let (_cluster, client) = single_member().await;
    let holders = Arc::new(AtomicI64::new(0));
    let hold = Duration::from_millis(HOLD_MS);

    // Three lockers queue in order A, B, C; each holds for a while; they must take turns in
    // that order, each starting only after the previous one released.
    let mut tasks = Vec::new();
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let session = Arc::new(Session::new(&client, SESSION_TTL_SECONDS, true).await);
        let (queued, is_queued) = oneshot::channel();
        sessions.push(session.clone());
        tasks.push(tokio::spawn(lock_hold_unlock(
            client.clone(),
            session,
            "lk",
            holders.clone(),
            hold,
            queued,
        )));
        within("the locker's key to be queued", is_queued)
            .await
            .expect("locker runs");
    }
    let mut held = Vec::new();
    for task in tasks {
        held.push(within("a locker to finish", task).await.expect("locker"));
    }
    for (index, pair) in held.windows(2).enumerate() {
        assert!(
            pair[1].acquired >= pair[0].released,
            "locker {} acquired before locker {index} released: {held:?}",
            index + 1
        );
    }
    // A waiter does not just acquire eventually: it waited for the holder.
    assert!(held[1].acquired.duration_since(held[0].acquired) >= hold);
    assert_eq!(holders.load(Ordering::SeqCst), 0);
    let mut reader = client.clone();
    let left = reader
        .get("lk/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert!(left.kvs().is_empty(), "every lock key was deleted");
    for session in sessions {
        let session = Arc::into_inner(session).expect("lockers finished");
        session.close(&client).await;
    }

    // An owner that dies (its lease is not kept alive) loses the lock when the lease
    // expires; the waiter then acquires, not before.
    let granted = Instant::now();
    let dead = Session::new(&client, SHORT_TTL_SECONDS, false).await;
    let mut dead_mutex = Mutex::new(&client, &dead, "lk2");
    within("the doomed owner to lock", dead_mutex.lock()).await;
    let waiter = Session::new(&client, SESSION_TTL_SECONDS, true).await;
    let mut waiting = Mutex::new(&client, &waiter, "lk2");
    let ttl = Duration::from_secs(SHORT_TTL_SECONDS as u64);
    tokio::time::timeout(ttl + Duration::from_millis(EXPIRY_SLACK_MS), waiting.lock())
        .await
        .expect("the waiter acquires once the dead owner's lease expires");
    let waited = granted.elapsed();
    assert!(waited >= ttl, "acquired {waited:?} after the owner's grant");
    eprintln!("the waiter acquired {waited:?} after the dead owner's lease was granted");
    waiting.unlock().await;
    waiter.close(&client).await;
}

/// etcd's `concurrency.Election`.
struct Election {
    client: Client,
    /// `<name>/`.
    prefix: String,
    lease: i64,
    /// This candidate's key and its create revision while it campaigns or leads.
    leader: Option<(String, i64)>,
}

#[derive(Debug, PartialEq, Eq)]
struct NotLeader;

impl Election {
    fn new(client: &Client, session: &Session, name: &str) -> Election {
        Election {
            client: client.clone(),
            prefix: format!("{name}/"),
            lease: session.lease,
            leader: None,
        }
    }

    /// Queues this candidate with `value` and waits until it leads.
    async fn campaign(&mut self, value: &str) {
        let key = format!("{}{:x}", self.prefix, self.lease);
        let put = PutOptions::new().with_lease(self.lease);
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), value, Some(put))])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let answer = self.client.txn(txn).await.expect("campaign txn");
        let mut revision = revision_of(answer.header());
        if !answer.succeeded() {
            let responses = answer.op_responses();
            let existing = &range_response(&responses[0]).kvs()[0];
            revision = existing.create_revision();
            self.leader = Some((key.clone(), revision));
            if existing.value() != value.as_bytes() {
                self.proclaim(value).await.expect("proclaim own key");
            }
        }
        self.leader = Some((key, revision));
        wait_deletes(&mut self.client, &self.prefix, revision - 1).await;
    }

    /// Replaces the leader's value, if this candidate still holds its key.
    async fn proclaim(&mut self, value: &str) -> Result<(), NotLeader> {
        let (key, revision) = self.leader.clone().ok_or(NotLeader)?;
        let put = PutOptions::new().with_lease(self.lease);
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.as_str(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(key.as_str(), value, Some(put))]);
        let answer = self.client.txn(txn).await.expect("proclaim txn");
        if answer.succeeded() {
            Ok(())
        } else {
            self.leader = None;
            Err(NotLeader)
        }
    }

    /// Gives up leadership (or the place in the queue).
    async fn resign(&mut self) {
        let Some((key, revision)) = self.leader.take() else {
            return;
        };
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.as_str(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        self.client.txn(txn).await.expect("resign txn");
    }

    /// The current leader's value, if there is a leader.
    async fn leader_value(client: &mut Client, name: &str) -> Option<String> {
        let first = client
            .get(format!("{name}/"), Some(first_created()))
            .await
            .expect("get");
        first
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
    }
}

/// etcd's `Election.Observe`: sends every leader value, in order, as leadership changes
/// hands or the leader proclaims.
async fn observe(mut client: Client, name: String, values: mpsc::Sender<(String, Instant)>) {
    let prefix = format!("{name}/");
    loop {
        let first = client
            .get(prefix.as_str(), Some(first_created()))
            .await
            .expect("get");
        let (key, value, revision) = match first.kvs().first() {
            Some(kv) => (
                kv.key().to_vec(),
                kv.value().to_vec(),
                revision_of(first.header()),
            ),
            None => {
                // No leader yet: wait for the first put under the prefix.
                let options = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision_of(first.header()));
                let mut stream = client
                    .watch(prefix.as_str(), Some(options))
                    .await
                    .expect("watch");
                loop {
                    let response = stream.message().await.expect("watch").expect("open");
                    let put = response
                        .events()
                        .iter()
                        .find(|e| e.event_type() == EventType::Put)
                        .and_then(|e| e.kv());
                    if let Some(kv) = put {
                        break (kv.key().to_vec(), kv.value().to_vec(), kv.mod_revision());
                    }
                }
            }
        };
        let value = String::from_utf8_lossy(&value).into_owned();
        if values.send((value, Instant::now())).await.is_err() {
            return;
        }
        // Follow the leader's key until it is deleted.
        let options = WatchOptions::new().with_start_revision(revision + 1);
        let mut stream = client.watch(key, Some(options)).await.expect("watch");
        'leader: loop {
            let response = stream.message().await.expect("watch").expect("open");
            for event in response.events() {
                if event.event_type() == EventType::Delete {
                    break 'leader;
                }
                let value = String::from_utf8_lossy(event.kv().expect("kv").value()).into_owned();
                if values.send((value, Instant::now())).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_recipe_hands_over_only_on_resign() {
    let (_cluster, client) = single_member().await;
    let (values_sender, mut values) = mpsc::channel(16);
    let observer = tokio::spawn(observe(client.clone(), "el".to_string(), values_sender));
    let mut reader = client.clone();
    assert_eq!(Election::leader_value(&mut reader, "el").await, None);

    let session_a = Session::new(&client, SESSION_TTL_SECONDS, true).await;
    let session_b = Session::new(&client, SESSION_TTL_SECONDS, true).await;
    let mut a = Election::new(&client, &session_a, "el");
    within("A to win an empty election", a.campaign("a")).await;
    let (value, _) = within("the observer to see A", values.recv())
        .await
        .expect("observer");
    assert_eq!(value, "a");

    // B queues behind A and must not lead while A does.
    let (b_won, mut b_won_at) = oneshot::channel();
    let mut b = Election::new(&client, &session_b, "el");
    let b_task = tokio::spawn(async move {
        b.campaign("b").await;
        let _ = b_won.send(Instant::now());
        b
    });
    let b_key = format!("el/{:x}", session_b.lease);
    common::poll("B's key to be queued", || {
        let mut reader = client.clone();
        let b_key = b_key.clone();
        async move {
            let found = reader.get(b_key, None).await.ok()?;
            (!found.kvs().is_empty()).then_some(())
        }
    })
    .await;

    a.proclaim("a2").await.expect("A leads and proclaims");
    let (value, _) = within("the observer to see A's proclamation", values.recv())
        .await
        .expect("observer");
    assert_eq!(value, "a2");
    assert_eq!(
        Election::leader_value(&mut reader, "el").await.as_deref(),
        Some("a2")
    );
    tokio::time::sleep(Duration::from_millis(HOLD_MS)).await;
    assert!(
        b_won_at.try_recv().is_err(),
        "B leads while A has not resigned"
    );

    let resigned = Instant::now();
    a.resign().await;
    let b_at = within("B to win after A resigned", &mut b_won_at)
        .await
        .expect("B campaigns");
    assert!(b_at >= resigned, "B won before A resigned");
    let mut b = within("B's campaign task", b_task)
        .await
        .expect("B campaigns");
    let (value, observed_at) = within("the observer to see B", values.recv())
        .await
        .expect("observer");
    assert_eq!(value, "b");
    assert!(observed_at >= resigned);
    assert_eq!(
        Election::leader_value(&mut reader, "el").await.as_deref(),
        Some("b")
    );
    // A is no longer the leader: its proclamation is refused.
    assert_eq!(a.proclaim("a3").await, Err(NotLeader));
    assert_eq!(
        Election::leader_value(&mut reader, "el").await.as_deref(),
        Some("b")
    );

    b.resign().await;
    assert_eq!(Election::leader_value(&mut reader, "el").await, None);
    observer.abort();
    session_a.close(&client).await;
    session_b.close(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_options_of_etcd_client_against_mutual_tls() {
    use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
    let mut cluster = Cluster::new(1, Backend::Memory, None).with_tls();
    cluster.start_all();
    cluster.wait_leader(&[0]).await;
    let pki = cluster.pki.as_ref().expect("pki");
    let read = |path: &std::path::Path| std::fs::read(path).expect("read pem");
    let ca = Certificate::from_pem(read(&pki.ca_file));
    let identity = Identity::from_pem(read(&pki.client_cert), read(&pki.client_key));
    let url = cluster.members[0].client_url();
    assert!(url.starts_with("https://"));

    let options = ConnectOptions::new().with_tls(
        TlsOptions::new()
            .ca_certificate(ca.clone())
            .identity(identity),
    );
    let mut client = within(
        "a TLS connection",
        Client::connect([url.clone()], Some(options)),
    )
    .await
    .expect("etcd-client connects with TLS");
    client
        .put("tls/key", "value", None)
        .await
        .expect("put over TLS");
    let got = client.get("tls/key", None).await.expect("get over TLS");
    assert_eq!(got.kvs()[0].value(), b"value");

    // Without a client certificate the member (--client-cert-auth) refuses the connection.
    let no_identity = ConnectOptions::new()
        .with_tls(TlsOptions::new().ca_certificate(ca))
        .with_connect_timeout(Duration::from_millis(2_000))
        .with_timeout(Duration::from_millis(2_000));
    let refused = match Client::connect([url], Some(no_identity)).await {
        Err(error) => Err(error),
        Ok(mut client) => client.get("tls/key", None).await.map(|_| ()),
    };
    assert!(refused.is_err(), "no client certificate must be refused");
    // The member still serves the client that has one.
    let got = client.get("tls/key", None).await.expect("still serving");
    assert_eq!(got.kvs()[0].value(), b"value");
}

/// etcd-client's auth: users and roles through its Auth API, then `ConnectOptions::with_user`
/// (it authenticates and sends the token itself): a user's prefix is open, the rest is
/// refused with etcd's code and message, and a wrong password fails the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_through_etcd_client() {
    use etcd_client::{ConnectOptions, Permission};
    let (cluster, mut root) = single_member().await;
    let url = cluster.members[0].client_url();
    root.user_add("root", "rootpw", None)
        .await
        .expect("add root");
    root.role_add("root").await.expect("add the root role");
    root.user_grant_role("root", "root")
        .await
        .expect("grant root");
    root.role_add("app").await.expect("add app");
    root.role_grant_permission("app", Permission::read_write("app/").with_prefix())
        .await
        .expect("grant app/");
    root.user_add("alice", "alicepw", None)
        .await
        .expect("add alice");
    root.user_grant_role("alice", "app")
        .await
        .expect("grant app");
    root.auth_enable().await.expect("auth enable");

    let status = |error: Error| match error {
        Error::GRpcStatus(status) => (status.code(), status.message().to_string()),
        other => panic!("expected a gRPC status, got {other}"),
    };
    let denied = (
        tonic::Code::PermissionDenied,
        "etcdserver: permission denied".to_string(),
    );
    // The client connected before auth was enabled has no token now.
    let no_user = root.put("app/x", "v", None).await.expect_err("no user");
    assert_eq!(
        status(no_user),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: user name is empty".to_string()
        )
    );

    let options = ConnectOptions::new().with_user("alice", "alicepw");
    let mut alice = Client::connect([url.clone()], Some(options))
        .await
        .expect("alice connects");
    alice
        .put("app/1", "v1", None)
        .await
        .expect("inside her prefix");
    let got = alice.get("app/1", None).await.expect("read inside");
    assert_eq!(got.kvs()[0].value(), b"v1");
    assert_eq!(
        status(alice.put("other", "v", None).await.unwrap_err()),
        denied
    );
    assert_eq!(status(alice.get("other", None).await.unwrap_err()), denied);
    let txn = Txn::new()
        .when([Compare::value("other", CompareOp::Equal, "v")])
        .and_then([TxnOp::put("app/2", "v2", None)]);
    assert_eq!(status(alice.txn(txn).await.unwrap_err()), denied);
    assert_eq!(status(alice.user_list().await.unwrap_err()), denied);

    let wrong = ConnectOptions::new().with_user("alice", "wrong");
    let Err(refused) = Client::connect([url.clone()], Some(wrong)).await else {
        panic!("a wrong password connected");
    };
    assert_eq!(
        status(refused),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password".to_string()
        )
    );
    let root_options = ConnectOptions::new().with_user("root", "rootpw");
    let mut admin = Client::connect([url], Some(root_options))
        .await
        .expect("root connects");
    admin.auth_disable().await.expect("auth disable");
    drop(cluster);
}
