//! `--auto-compaction-mode revision|periodic` with real processes: the leader compacts
//! through Raft (every member then refuses reads below the compaction), the compaction is on
//! /metrics and in the log.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use aspen_proto::etcdserverpb::RangeRequest;
use common::{Backend, Cluster, gauge, poll};
use tonic::Code;

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

/// A serializable range of `key` at `revision` on member `index`: Ok, or the error's message.
async fn read_at(cluster: &Cluster, index: usize, key: &str, revision: i64) -> Result<(), String> {
    let request = RangeRequest {
        key: key.as_bytes().to_vec(),
        revision,
        serializable: true,
        ..Default::default()
    };
    match cluster.kv(index).range(request).await {
        Ok(_) => Ok(()),
        Err(status) => {
            assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
            Err(status.message().to_string())
        }
    }
}

async fn auto_compaction_revision(cluster: &Cluster, index: usize) -> Option<u64> {
    gauge(
        &cluster.metrics(index).await?,
        "aspen_auto_compaction_revision",
    )
}

fn logs_of(cluster: &Cluster) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(cluster.dir.path()).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_mode_keeps_the_last_n_revisions_on_every_member() {
    let mut cluster = Cluster::new(3, Backend::Memory, None);
    cluster.extra_args = ["--auto-compaction-mode", "revision"]
        .into_iter()
        .chain(["--auto-compaction-retention", "5"])
        .chain(["--experimental-auto-compaction-interval", "1s"])
        .map(String::from)
        .collect();
    cluster.start_all();
    let all = [0, 1, 2];
    let leader = cluster.wait_leader(&all).await;
    let mut last = 0;
    for i in 0..20 {
        last = cluster.put(leader, "k", &i.to_string()).await;
    }
    let kept_from = last - 5;
    let compacted_at = poll("the leader to auto-compact at last - 5", || async {
        let revision = auto_compaction_revision(&cluster, leader).await?;
        (revision == kept_from as u64).then_some(revision)
    })
    .await;
    assert_eq!(compacted_at, kept_from as u64);
    for index in all {
        // Through Raft: every member compacted at the same revision.
        poll(
            &format!("member {index} to apply the compaction"),
            || async {
                let below = read_at(&cluster, index, "k", kept_from - 1).await;
                (below == Err(COMPACTED.to_string())).then_some(())
            },
        )
        .await;
        read_at(&cluster, index, "k", kept_from)
            .await
            .expect("the kept revisions stay readable");
        if index != leader {
            // Only the leader compacts.
            assert_eq!(auto_compaction_revision(&cluster, index).await, Some(0));
        }
    }
    let logs = logs_of(&cluster);
    assert!(
        logs.contains("starting auto-compaction") && logs.contains("finished auto-compaction"),
        "no auto-compaction in the logs"
    );
    let metrics = cluster.metrics(leader).await.expect("metrics");
    assert!(gauge(&metrics, "aspen_auto_compactions_total").unwrap_or(0) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_mode_keeps_the_last_period() {
    let mut cluster = Cluster::new(1, Backend::Memory, None);
    cluster.extra_args = ["--auto-compaction-mode", "periodic"]
        .into_iter()
        .chain(["--auto-compaction-retention", "2s"])
        .map(String::from)
        .collect();
    cluster.start_all();
    cluster.wait_leader(&[0]).await;
    let mut last = 0;
    for i in 0..10 {
        last = cluster.put(0, "p", &i.to_string()).await;
    }
    // Nothing is written after: about 2 s later, the revision of 2 s ago is the last one.
    poll("a periodic compaction at the last revision", || async {
        let revision = auto_compaction_revision(&cluster, 0).await?;
        (revision == last as u64).then_some(())
    })
    .await;
    assert_eq!(
        read_at(&cluster, 0, "p", last - 1).await,
        Err(COMPACTED.to_string())
    );
    read_at(&cluster, 0, "p", last)
        .await
        .expect("the last revision stays");
    // A write after the compaction is kept for the next period, then compacted too.
    let newer = cluster.put(0, "p", "later").await;
    read_at(&cluster, 0, "p", last)
        .await
        .expect("within the period");
    poll("the next periodic compaction", || async {
        let revision = auto_compaction_revision(&cluster, 0).await?;
        (revision == newer as u64).then_some(())
    })
    .await;
    let logs = logs_of(&cluster);
    assert!(
        logs.contains("starting auto-compaction"),
        "no auto-compaction in the logs"
    );
}
