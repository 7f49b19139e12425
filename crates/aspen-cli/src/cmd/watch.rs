//! watch: one watch stream, printed as etcdctl prints it, until Ctrl-C or `--max-events`.

use aspen_core::convert::usize_from;
use aspen_proto::etcdserverpb as pb;
use aspen_proto::mvccpb;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::Ctx;
use crate::cli::WatchArgs;
use crate::connect::Conn;
use crate::error::CliError;
use crate::limits::WATCH_REQUESTS_BUFFERED_MAX;
use crate::output::{self, WriteOut, print_kv};
use crate::request::key_range;

pub async fn watch(ctx: &Ctx, args: WatchArgs) -> Result<(), CliError> {
    if args.rev < 0 {
        return Err(CliError::usage("--rev must not be negative"));
    }
    if args.max_events == Some(0) {
        return Ok(());
    }
    let range = key_range(&args.key, args.range_end.as_deref(), args.prefix, false)?;
    let create = pb::WatchCreateRequest {
        key: range.key,
        range_end: range.range_end,
        start_revision: args.rev,
        prev_kv: args.prev_kv,
        ..Default::default()
    };
    let what = format!("watch {}", args.key);
    let conn = ctx.conn().await?;
    let (requests, mut responses) = open(&conn, create, &what).await?;
    let mut events_seen: u64 = 0;
    let limit = args.max_events.unwrap_or(u64::MAX);
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    // Bounded by --max-events, Ctrl-C, or the server ending the stream.
    loop {
        let message = tokio::select! {
            message = responses.message() => message,
            _ = &mut interrupted => return Ok(()),
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => {
                return Err(CliError::connection(format!(
                    "{what}: the server closed the stream"
                )));
            }
            Err(status) => return Err(CliError::from_status(&what, &status)),
        };
        if response.canceled || response.compact_revision != 0 {
            let reason = if response.cancel_reason.is_empty() {
                format!(
                    "required revision {} has been compacted",
                    response.compact_revision
                )
            } else {
                response.cancel_reason.clone()
            };
            return Err(CliError::request(format!(
                "{what}: watch was canceled ({reason})"
            )));
        }
        let room = usize_from(limit - events_seen);
        let events = &response.events[..response.events.len().min(room)];
        events_seen += events.len() as u64;
        if !events.is_empty() || (ctx.write_out == WriteOut::Json && !response.created) {
            print_events(ctx.write_out, &response, events);
        }
        if events_seen >= limit {
            // Dropping the request sender ends the stream; the server cancels the watch.
            drop(requests);
            return Ok(());
        }
    }
}

type WatchStream = (
    mpsc::Sender<pb::WatchRequest>,
    tonic::Streaming<pb::WatchResponse>,
);

/// Opens the stream with its create request; keep the sender: dropping it ends the watch.
async fn open(
    conn: &Conn,
    create: pb::WatchCreateRequest,
    what: &str,
) -> Result<WatchStream, CliError> {
    let (requests, receiver) = mpsc::channel(WATCH_REQUESTS_BUFFERED_MAX);
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
    };
    // The channel is empty and its receiver alive: this cannot fail.
    let _ = requests.send(create).await;
    let responses = conn
        .watch()
        .watch(ReceiverStream::new(receiver))
        .await
        .map_err(|status| CliError::from_status(what, &status))?
        .into_inner();
    Ok((requests, responses))
}

fn print_events(write_out: WriteOut, response: &pb::WatchResponse, events: &[mvccpb::Event]) {
    if write_out == WriteOut::Json {
        let mut map = Map::new();
        map.insert(
            "Header".into(),
            output::header_json(response.header.as_ref()),
        );
        map.insert(
            "Events".into(),
            Value::Array(events.iter().map(event_json).collect()),
        );
        map.insert("CompactRevision".into(), json!(response.compact_revision));
        map.insert("Canceled".into(), json!(response.canceled));
        map.insert("Created".into(), json!(response.created));
        output::print_json(&Value::Object(map));
        return;
    }
    for event in events {
        println!("{}", event_type(event));
        if let Some(prev) = &event.prev_kv {
            print_kv(prev);
        }
        if let Some(kv) = &event.kv {
            print_kv(kv);
        }
    }
}

fn event_type(event: &mvccpb::Event) -> &'static str {
    match mvccpb::event::EventType::try_from(event.r#type) {
        Ok(mvccpb::event::EventType::Delete) => "DELETE",
        _ => "PUT",
    }
}

fn event_json(event: &mvccpb::Event) -> Value {
    let mut map = Map::new();
    if event.r#type != 0 {
        map.insert("type".into(), json!(1));
    }
    if let Some(kv) = &event.kv {
        map.insert("kv".into(), output::kv_json(kv));
    }
    if let Some(prev) = &event.prev_kv {
        map.insert("prev_kv".into(), output::kv_json(prev));
    }
    Value::Object(map)
}
