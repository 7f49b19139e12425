//! etcd's Watch service: one bidirectional stream carries many watchers.
//!
//! Each client stream gets a session task that owns the stream's handle on the node's watch
//! hub. Requests (create, cancel, progress) and the hub's messages are handled in one loop,
//! so a watcher's `created` response always precedes its events and nothing is sent for a
//! watcher after its cancel. Sending to a slow client blocks only this session; the hub then
//! finds the session's queue full and replays from history later (see `aspen-watch`).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use aspen_core::convert::wire_i64;
use aspen_core::keys::KeyRange;
use aspen_core::limits::{
    WATCH_PROGRESS_NOTIFY_INTERVAL_MS, WATCH_RESPONSE_QUEUE_MAX, WATCH_SYNC_INTERVAL_MS,
};
use aspen_core::{Event, EventKind};
use aspen_node::Node;
use aspen_proto::etcdserverpb::watch_create_request::FilterType;
use aspen_proto::etcdserverpb::watch_request::RequestUnion;
use aspen_proto::etcdserverpb::{self as pb, watch_server::Watch};
use aspen_proto::mvccpb;
use aspen_watch::{Held, WatchMessage, WatchRequest, WatchStream};
use futures_util::Stream;
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::access::Access;
use crate::convert;
use crate::header::header;

#[derive(Clone)]
pub struct WatchService {
    node: Node,
    access: Access,
    progress_notify_interval: Duration,
}

impl WatchService {
    pub fn new(node: Node, access: Access) -> WatchService {
        let interval = Duration::from_millis(WATCH_PROGRESS_NOTIFY_INTERVAL_MS);
        WatchService::with_progress_notify_interval(node, access, interval)
    }

    /// As `new`, with idle watchers that asked for it notified every `interval` (tests use a
    /// short one; etcd's is 10 minutes).
    pub fn with_progress_notify_interval(
        node: Node,
        access: Access,
        interval: Duration,
    ) -> WatchService {
        assert!(!interval.is_zero());
        WatchService {
            node,
            access,
            progress_notify_interval: interval,
        }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ResponseStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // Each watcher is checked when created, against the stream's token (or certificate
        // user) as it stands then, as etcd does.
        let credentials = Credentials {
            access: self.access.clone(),
            metadata: request.metadata().clone(),
            extensions: request.extensions().clone(),
        };
        let incoming = request.into_inner();
        let (stream, queue) = self.node.watch_hub().open_stream();
        let (sender, receiver) = mpsc::channel(WATCH_RESPONSE_QUEUE_MAX as usize);
        let session = Session {
            node: self.node.clone(),
            credentials,
            stream,
            sender,
            watchers: BTreeMap::new(),
            progress_all_pending: false,
        };
        tokio::spawn(session.run(incoming, queue, self.progress_notify_interval));
        // A response's events count against the stream's budget (`Held`) until gRPC takes
        // the response to encode it; what waits beyond is bounded by HTTP/2 flow control.
        let responses = ReceiverStream::new(receiver).map(|(response, _held)| response);
        Ok(Response::new(Box::pin(responses)))
    }
}

/// A response on its way to gRPC, with the event bytes it holds.
type Outgoing = (Result<pb::WatchResponse, Status>, Held);

/// What the session remembers of each of its watchers.
struct WatcherInfo {
    progress_notify: bool,
    fragment: bool,
    /// Whether events went out since the last progress tick (etcd then skips the notice).
    sent_since_tick: bool,
}

/// What a stream's watchers are checked against.
struct Credentials {
    access: Access,
    metadata: tonic::metadata::MetadataMap,
    extensions: tonic::Extensions,
}

impl Credentials {
    /// etcd's `isWatchPermitted`: read permission on the watched range; a bad token denies.
    fn permits(&self, create: &pb::WatchCreateRequest) -> bool {
        self.access
            .caller_from(&self.metadata, &self.extensions)
            .and_then(|caller| caller.check_read(&create.key, &create.range_end))
            .is_ok()
    }
}

struct Session {
    node: Node,
    credentials: Credentials,
    stream: WatchStream,
    sender: mpsc::Sender<Outgoing>,
    watchers: BTreeMap<i64, WatcherInfo>,
    /// A stream-wide progress request waits until every watcher is synced.
    progress_all_pending: bool,
}

/// Why a session ends: the client went away or its request stream failed.
struct Closed;

impl Session {
    async fn run(
        mut self,
        mut incoming: Streaming<pb::WatchRequest>,
        mut queue: mpsc::Receiver<WatchMessage>,
        progress_notify_interval: Duration,
    ) {
        let start = tokio::time::Instant::now();
        let mut progress =
            tokio::time::interval_at(start + progress_notify_interval, progress_notify_interval);
        progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(Duration::from_millis(WATCH_SYNC_INTERVAL_MS));
        retry.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut requests_open = true;
        loop {
            let step = tokio::select! {
                request = incoming.message(), if requests_open => match request {
                    Ok(Some(request)) => self.on_request(request).await,
                    // A client that closes its side (as etcd's JSON gateway does when the
                    // request body ends) keeps its watchers: etcd's recvLoop ends on EOF
                    // without ending the stream, which lasts until the client goes away.
                    Ok(None) => {
                        requests_open = false;
                        Ok(())
                    }
                    Err(_) => Err(Closed),
                },
                message = queue.recv() => match message {
                    Some(message) => self.on_message(message).await,
                    None => Err(Closed),
                },
                _ = progress.tick() => {
                    self.on_progress_tick();
                    Ok(())
                }
                _ = retry.tick(), if self.progress_all_pending => {
                    self.progress_all_pending = !self.stream.request_progress_all();
                    Ok(())
                }
                () = self.sender.closed() => Err(Closed),
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn send(&self, response: pb::WatchResponse) -> Result<(), Closed> {
        self.send_held(response, Held::default()).await
    }

    async fn send_held(&self, response: pb::WatchResponse, held: Held) -> Result<(), Closed> {
        self.sender
            .send((Ok(response), held))
            .await
            .map_err(|_| Closed)
    }

    async fn on_request(&mut self, request: pb::WatchRequest) -> Result<(), Closed> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.watchers.remove(&cancel.watch_id).is_none() {
                    return Ok(());
                }
                self.stream.cancel(cancel.watch_id);
                let response = pb::WatchResponse {
                    header: header(&self.node, self.stream.revision()),
                    watch_id: cancel.watch_id,
                    canceled: true,
                    ..Default::default()
                };
                self.send(response).await
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_all_pending = !self.stream.request_progress_all();
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, create: pb::WatchCreateRequest) -> Result<(), Closed> {
        if !self.credentials.permits(&create) {
            // etcd 3.4 answers with the gRPC error's text as the cancel reason.
            let response = pb::WatchResponse {
                header: header(&self.node, self.stream.revision()),
                watch_id: create.watch_id,
                created: true,
                canceled: true,
                cancel_reason: crate::status::WATCH_PERMISSION_DENIED.to_string(),
                ..Default::default()
            };
            return self.send(response).await;
        }
        let request = WatchRequest {
            watch_id: (create.watch_id != 0).then_some(create.watch_id),
            range: KeyRange::new(&create.key, &create.range_end),
            start_revision: create.start_revision.max(0) as u64,
            filter_put: create.filters.contains(&(FilterType::Noput as i32)),
            filter_delete: create.filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: create.prev_kv,
        };
        let response = match self.stream.watch(request) {
            Ok(created) => {
                let info = WatcherInfo {
                    progress_notify: create.progress_notify,
                    fragment: create.fragment,
                    sent_since_tick: false,
                };
                self.watchers.insert(created.watch_id, info);
                pb::WatchResponse {
                    header: header(&self.node, created.revision),
                    watch_id: created.watch_id,
                    created: true,
                    ..Default::default()
                }
            }
            Err(error) => pb::WatchResponse {
                header: header(&self.node, self.stream.revision()),
                watch_id: -1,
                created: true,
                canceled: true,
                cancel_reason: error.to_string(),
                ..Default::default()
            },
        };
        self.send(response).await
    }

    async fn on_message(&mut self, message: WatchMessage) -> Result<(), Closed> {
        match message {
            WatchMessage::Events {
                watch_id,
                revision,
                events,
                held,
            } => {
                let Some(info) = self.watchers.get_mut(&watch_id) else {
                    return Ok(()); // cancelled meanwhile
                };
                info.sent_since_tick = true;
                let fragment = info.fragment;
                let response = pb::WatchResponse {
                    header: header(&self.node, revision),
                    watch_id,
                    events: events.into_iter().map(event).collect(),
                    ..Default::default()
                };
                let bytes_max = self.node.limits().request_bytes_max;
                for part in fragments(response, fragment, bytes_max) {
                    self.send_held(part, held.clone()).await?;
                }
                Ok(())
            }
            WatchMessage::Progress { watch_id, revision } => {
                if watch_id != -1 && !self.watchers.contains_key(&watch_id) {
                    return Ok(());
                }
                let response = pb::WatchResponse {
                    header: header(&self.node, revision),
                    watch_id,
                    ..Default::default()
                };
                self.send(response).await
            }
            WatchMessage::Compacted {
                watch_id,
                compact_revision,
                revision: _,
            } => {
                if self.watchers.remove(&watch_id).is_none() {
                    return Ok(());
                }
                // As etcd 3.4 sends it: no revision in the header and no cancel reason (its
                // clients read the compaction from `compact_revision`).
                let response = pb::WatchResponse {
                    header: header(&self.node, 0),
                    watch_id,
                    canceled: true,
                    compact_revision: wire_i64(compact_revision),
                    ..Default::default()
                };
                self.send(response).await
            }
        }
    }

    /// etcd's progress notify: a watcher that asked for it and got no events since the last
    /// tick is told the current revision (if it is synced; otherwise it is busy anyway).
    fn on_progress_tick(&mut self) {
        for (watch_id, info) in self.watchers.iter_mut() {
            if info.progress_notify && !info.sent_since_tick {
                self.stream.request_progress(*watch_id);
            }
            info.sent_since_tick = false;
        }
    }
}

fn event(event: Event) -> mvccpb::Event {
    let kind = match event.kind {
        EventKind::Put => mvccpb::event::EventType::Put,
        EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(convert::key_value(event.kv)),
        prev_kv: event.prev_kv.map(convert::key_value),
    }
}

/// etcd's `sendFragments`: a response larger than the request limit is split, when the
/// watcher allowed it, into parts marked `fragment` except the last.
fn fragments(response: pb::WatchResponse, allowed: bool, bytes_max: u64) -> Vec<pb::WatchResponse> {
    if !allowed || response.events.len() < 2 || response.encoded_len() as u64 <= bytes_max {
        return vec![response];
    }
    let mut parts = Vec::new();
    let template = pb::WatchResponse {
        events: Vec::new(),
        ..response.clone()
    };
    let mut current = template.clone();
    for event in response.events {
        let event_bytes = event.encoded_len() as u64 + 8;
        let full = current.encoded_len() as u64 + event_bytes > bytes_max;
        if full && !current.events.is_empty() {
            let mut done = std::mem::replace(&mut current, template.clone());
            done.fragment = true;
            parts.push(done);
        }
        current.events.push(event);
    }
    parts.push(current);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_responses_split_only_when_allowed() {
        let kv = mvccpb::KeyValue {
            key: b"k".to_vec(),
            value: vec![b'v'; 100],
            ..Default::default()
        };
        let events: Vec<mvccpb::Event> = (0..10)
            .map(|_| mvccpb::Event {
                r#type: 0,
                kv: Some(kv.clone()),
                prev_kv: None,
            })
            .collect();
        let response = pb::WatchResponse {
            watch_id: 3,
            events,
            ..Default::default()
        };
        assert_eq!(fragments(response.clone(), false, 300).len(), 1);
        let parts = fragments(response, true, 300);
        assert!(parts.len() > 1);
        assert_eq!(parts.iter().map(|p| p.events.len()).sum::<usize>(), 10);
        assert!(parts[..parts.len() - 1].iter().all(|p| p.fragment));
        assert!(!parts.last().unwrap().fragment);
        assert!(parts.iter().all(|p| p.watch_id == 3));
    }
}
