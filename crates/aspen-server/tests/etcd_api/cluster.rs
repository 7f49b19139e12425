//! Cluster: MemberList on every member, MemberAdd of a learner, MemberPromote and MemberRemove
//! with etcd's refusals, on three members.

use std::future::Future;

use aspen_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest,
};
use tonic::{Code, Status};

use crate::common;
use crate::fixture::*;

/// Calls a Cluster API change, retrying only what a leader change explains (Unavailable).
async fn membership<T, F, Fut>(what: &str, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    poll(what, || {
        let reply = call();
        async move {
            match reply.await {
                Ok(reply) => Some(Ok(reply.into_inner())),
                Err(status) if status.code() == Code::Unavailable => {
                    eprintln!("{what}: {status}; retrying");
                    None
                }
                Err(status) => Some(Err(status)),
            }
        }
    })
    .await
}

fn by_id(mut members: Vec<Member>) -> Vec<Member> {
    members.sort_by_key(|m| m.id);
    members
}

/// The three members as every member lists them once each has published its name and client
/// URL.
fn expected_members(cluster: &Cluster, all: [usize; 3]) -> Vec<Member> {
    by_id(
        all.iter()
            .map(|&i| Member {
                id: cluster.member_id(i),
                name: cluster.members[i].name.clone(),
                peer_ur_ls: vec![cluster.members[i].peer_url()],
                client_ur_ls: vec![cluster.members[i].client_url()],
                is_learner: false,
            })
            .collect(),
    )
}

/// Every member lists all three (linearizable or not), once each has published its name and
/// client URL; every header names its member and one cluster id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_list_three_members() {
    let f = Fixture::start(3).await;
    let cluster = &f.cluster;
    let all = [0, 1, 2];
    let expected = expected_members(cluster, all);
    let mut cluster_ids = Vec::new();
    for index in all {
        for linearizable in [true, false] {
            let reply = poll(
                &format!("member {index} to list every published member"),
                || async {
                    let request = MemberListRequest { linearizable };
                    let reply = cluster
                        .cluster_api(index)
                        .member_list(request)
                        .await
                        .ok()?
                        .into_inner();
                    (by_id(reply.members.clone()) == expected).then_some(reply)
                },
            )
            .await;
            let h = header(&reply.header);
            assert_eq!(h.member_id, cluster.member_id(index));
            assert_ne!(h.cluster_id, 0);
            cluster_ids.push(h.cluster_id);
        }
    }
    assert!(
        cluster_ids.windows(2).all(|w| w[0] == w[1]),
        "{cluster_ids:?}"
    );
}

/// A learner added through a follower and never started: a taken or bad URL is refused, it
/// cannot be promoted (nor can a voter), it is removed, and then it (or any unknown id) is not
/// found; the three members serve on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_add_promote_remove_three_members() {
    let f = Fixture::start(3).await;
    let (cluster, follower, other_follower) = (&f.cluster, f.writer, f.reader);
    let all = [0, 1, 2];
    let expected = expected_members(cluster, all);
    // Every member has published itself: the lists compared below are complete.
    for index in all {
        poll(
            &format!("member {index} to list every published member"),
            || async {
                let reply = cluster
                    .cluster_api(index)
                    .member_list(MemberListRequest { linearizable: true })
                    .await
                    .ok()?
                    .into_inner();
                (by_id(reply.members) == expected).then_some(())
            },
        )
        .await;
    }

    // A learner, added through a follower and never started.
    let learner_url = format!("http://127.0.0.1:{}", common::free_port());
    let added = membership("MemberAdd of a learner", || {
        let request = MemberAddRequest {
            peer_ur_ls: vec![learner_url.clone()],
            is_learner: true,
        };
        let mut api = cluster.cluster_api(follower);
        async move { api.member_add(request).await }
    })
    .await
    .expect("MemberAdd");
    let learner = added.member.clone().expect("the added member");
    assert!(learner.is_learner);
    assert_eq!(learner.peer_ur_ls, vec![learner_url.clone()]);
    assert!(learner.name.is_empty() && learner.client_ur_ls.is_empty());
    assert_ne!(learner.id, 0);
    assert_eq!(added.members.len(), 4, "{added:?}");
    assert!(added.members.contains(&learner), "{added:?}");
    assert_eq!(header(&added.header).member_id, cluster.member_id(follower));
    let listed = cluster
        .cluster_api(other_follower)
        .member_list(MemberListRequest { linearizable: true })
        .await
        .expect("member list")
        .into_inner();
    assert_eq!(listed.members.len(), 4);
    assert!(listed.members.contains(&learner), "{listed:?}");

    // The same peer URL twice, and a URL that is not one.
    let result = membership("MemberAdd of a taken URL", || {
        let request = MemberAddRequest {
            peer_ur_ls: vec![learner_url.clone()],
            is_learner: true,
        };
        let mut api = cluster.cluster_api(follower);
        async move { api.member_add(request).await }
    })
    .await;
    assert_status(
        result,
        Code::FailedPrecondition,
        PEER_URL_EXISTS,
        "MemberAdd of a taken URL",
    );
    let result = cluster
        .cluster_api(follower)
        .member_add(MemberAddRequest {
            peer_ur_ls: vec!["not a url".into()],
            is_learner: true,
        })
        .await;
    assert_status(
        result,
        Code::InvalidArgument,
        BAD_MEMBER_URLS,
        "MemberAdd of a bad URL",
    );

    // A learner that never started cannot be promoted; neither can a voter.
    let result = membership("MemberPromote of an unstarted learner", || {
        let request = MemberPromoteRequest { id: learner.id };
        let mut api = cluster.cluster_api(other_follower);
        async move { api.member_promote(request).await }
    })
    .await;
    assert_status(
        result,
        Code::FailedPrecondition,
        LEARNER_NOT_READY,
        "MemberPromote of an unstarted learner",
    );
    let voter = cluster.member_id(follower);
    let result = membership("MemberPromote of a voter", || {
        let request = MemberPromoteRequest { id: voter };
        let mut api = cluster.cluster_api(follower);
        async move { api.member_promote(request).await }
    })
    .await;
    assert_status(
        result,
        Code::FailedPrecondition,
        NOT_LEARNER,
        "MemberPromote of a voter",
    );

    // Remove the learner; then it, and any id no one has, is unknown.
    let removed = membership("MemberRemove of the learner", || {
        let request = MemberRemoveRequest { id: learner.id };
        let mut api = cluster.cluster_api(other_follower);
        async move { api.member_remove(request).await }
    })
    .await
    .expect("MemberRemove");
    assert_eq!(by_id(removed.members), expected);
    for id in [learner.id, UNKNOWN_MEMBER] {
        let result = membership("MemberRemove of an unknown id", || {
            let request = MemberRemoveRequest { id };
            let mut api = cluster.cluster_api(follower);
            async move { api.member_remove(request).await }
        })
        .await;
        assert_status(
            result,
            Code::NotFound,
            MEMBER_NOT_FOUND,
            &format!("MemberRemove of {id:#x}"),
        );
    }
    let result = cluster
        .cluster_api(follower)
        .member_promote(MemberPromoteRequest { id: UNKNOWN_MEMBER })
        .await;
    assert_status(
        result,
        Code::NotFound,
        MEMBER_NOT_FOUND,
        "MemberPromote of an unknown id",
    );

    // The three members still serve.
    for index in all {
        poll(&format!("member {index} to list three members"), || async {
            let reply = cluster
                .cluster_api(index)
                .member_list(MemberListRequest { linearizable: true })
                .await
                .ok()?
                .into_inner();
            (by_id(reply.members) == expected).then_some(())
        })
        .await;
    }
    let revision = cluster.put(follower, "after/membership", "ok").await;
    let reply = cluster
        .get(other_follower, "after/membership", false)
        .await
        .expect("linearizable read");
    assert_eq!(reply.kvs[0].mod_revision, revision);
}
