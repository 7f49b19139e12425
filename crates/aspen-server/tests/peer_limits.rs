//! The peer message bound (`aspen_core::limits::peer_message_bytes_max`: 16 MiB + 64 KiB
//! with the default request size), with real processes: a follower that comes back to a
//! backlog larger than one peer message still catches up, because the leader splits the
//! batch (`aspen_raft::split`). Before the split, openraft sent the whole backlog (up to 4096
//! entries) as one message, which a receiver bounded at 16 MiB would refuse forever.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use common::{Backend, Cluster, poll, put_retry};

/// Values of 1 MiB: 40 of them make a 40 MiB backlog, over two peer messages' worth.
const VALUE_BYTES: usize = 1024 * 1024;
const BACKLOG_VALUES: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catches_up_on_a_backlog_larger_than_one_peer_message() {
    let mut cluster = Cluster::new(3, Backend::Redb, None);
    cluster.start_all();
    let leader = cluster.wait_leader(&[0, 1, 2]).await;
    let follower = (0..3).find(|i| *i != leader).expect("a follower");
    cluster.kill(follower);
    let value = "v".repeat(VALUE_BYTES);
    let kv = cluster.kv(leader);
    let mut revision = 0;
    for i in 0..BACKLOG_VALUES {
        revision = put_retry(&kv, &format!("big/{i:03}"), &value, "the leader").await;
    }
    let last_key = format!("big/{:03}", BACKLOG_VALUES - 1);
    cluster.start(follower);
    let what = format!("member {follower} to catch up to revision {revision}");
    poll(&what, || async {
        let reply = cluster.get(follower, &last_key, true).await.ok()?;
        let header = reply.header.as_ref()?;
        let caught_up = header.revision == revision
            && reply
                .kvs
                .first()
                .is_some_and(|kv| kv.value.len() == VALUE_BYTES);
        caught_up.then_some(())
    })
    .await;
}
