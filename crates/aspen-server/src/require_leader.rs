//! etcd's `hasleader` gRPC metadata (clientv3's `WithRequireLeader`): a call that carries
//! `hasleader: true` fails at once with `etcdserver: no leader` (Unavailable) on a member
//! that knows no leader, and a stream that carries it (a watch, a keep-alive, an observe) is
//! ended with that error once the member has been without a leader for
//! `NO_LEADER_CHECKS` election timeouts in a row, as etcd's `monitorLeader` does. Calls
//! without the metadata are untouched.
//!
//! It is a middleware on the client port's gRPC routes, so the JSON gateway's calls
//! (`Grpc-Metadata-hasleader: true`) get it too.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use aspen_node::{Node, NodeError};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::Frame;
use tokio::sync::watch;

/// etcd's `maxNoLeaderCnt`: leaderless checks, one per election timeout, before streams that
/// require a leader are ended.
pub const NO_LEADER_CHECKS: u32 = 3;

/// The metadata key and value clientv3 sends.
pub const REQUIRE_LEADER_KEY: &str = "hasleader";
const REQUIRE_LEADER_VALUE: &str = "true";

/// Whether the member has been without a leader long enough to end streams that require
/// one; shared by every stream of the member.
#[derive(Clone)]
pub struct LeaderMonitor {
    node: Node,
    lost: watch::Receiver<bool>,
}

impl LeaderMonitor {
    /// Checks the leader once per election timeout until `stop`.
    pub fn spawn(node: Node, mut stop: watch::Receiver<bool>) -> LeaderMonitor {
        let (sender, lost) = watch::channel(false);
        let interval = Duration::from_millis(node.raft().config().election_timeout_min);
        let monitored = node.clone();
        tokio::spawn(async move {
            let mut leaderless_checks = 0u32;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = stop.wait_for(|stopped| *stopped) => return,
                }
                if monitored.has_live_leader() {
                    leaderless_checks = 0;
                } else {
                    leaderless_checks = leaderless_checks.saturating_add(1);
                }
                let lost = leaderless_checks >= NO_LEADER_CHECKS;
                if *sender.borrow() != lost {
                    if lost {
                        tracing::warn!(
                            checks = leaderless_checks,
                            "no leader: ending streams that require one"
                        );
                    }
                    sender.send_replace(lost);
                }
            }
        });
        LeaderMonitor { node, lost }
    }
}

/// The middleware (`axum::middleware::from_fn_with_state`).
pub async fn require_leader(
    State(monitor): State<LeaderMonitor>,
    request: Request,
    next: Next,
) -> Response {
    let required = request
        .headers()
        .get(REQUIRE_LEADER_KEY)
        .is_some_and(|value| value.as_bytes() == REQUIRE_LEADER_VALUE.as_bytes());
    if !required {
        return next.run(request).await;
    }
    if !monitor.node.has_live_leader() {
        return no_leader().into_http::<Body>().into_response();
    }
    let response = next.run(request).await;
    let (parts, body) = response.into_parts();
    let mut lost = monitor.lost.clone();
    let leader_lost = Box::pin(async move {
        // A monitor that stopped (the member is stopping) never ends the stream itself.
        if lost.wait_for(|lost| *lost).await.is_err() {
            std::future::pending::<()>().await;
        }
    });
    let body = Body::new(LeaderBoundBody {
        inner: body,
        leader_lost,
        ended: false,
    });
    Response::from_parts(parts, body)
}

fn no_leader() -> tonic::Status {
    aspen_api::status::from_node(NodeError::NoLeader)
}

/// A response body that ends with `etcdserver: no leader` when the leader is lost.
struct LeaderBoundBody {
    inner: Body,
    leader_lost: Pin<Box<dyn Future<Output = ()> + Send>>,
    ended: bool,
}

impl http_body::Body for LeaderBoundBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            if frame.is_none() {
                self.ended = true;
            }
            return Poll::Ready(frame);
        }
        match self.leader_lost.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.ended = true;
                let (parts, ()) = no_leader().into_http::<()>().into_parts();
                let mut trailers = parts.headers;
                trailers.remove(axum::http::header::CONTENT_TYPE);
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
