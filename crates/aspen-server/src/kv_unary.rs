//! The KV methods' unary gRPC calls, framed here rather than by tonic's generic codec: the
//! request's one message is decoded from the body's bytes as they arrive (no copy when it came
//! in one frame), the handler is the same `Kv` implementation tonic would call, and the answer
//! is one prebuilt message frame and its `grpc-status: 0` trailers.
//!
//! Why: tonic's unary path allocates an 8 KiB decode buffer and an 8 KiB encode buffer per
//! call, runs its streaming decoder and encoder over one message, and builds the success
//! trailers from a `Status`; a profile of puts at 256 clients put about 8 % of the server's CPU
//! in that machinery (docs/performance.md, session 21).
//!
//! What stays tonic's: every error a client can see is the `Status` tonic would send, with the
//! same code and text (a message over the size limit, a compressed-flag without an encoding, a
//! truncated or undecodable message, no message at all); a request with a `grpc-encoding`
//! other than `identity`, or a KV path this module does not know, goes to tonic's `KvServer`.
//! One difference, for clients that break the unary contract only: bytes after the first
//! message are read and dropped, where tonic decodes further messages and fails the call if
//! one of them is malformed or too large.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use aspen_api::KvService;
use aspen_proto::etcdserverpb::kv_server::Kv;
use axum::http::{HeaderMap, HeaderValue, Request, Response, header};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tonic::Status;

use crate::unary_body::MESSAGE_PREFIX_BYTES;

/// The compression flag of a message sent as is.
const FLAG_UNCOMPRESSED: u8 = 0;
/// The compression flag of a message compressed with the call's `grpc-encoding`.
const FLAG_COMPRESSED: u8 = 1;
/// The only `grpc-encoding` this server reads (tonic is built without compression).
const ENCODING_IDENTITY: &str = "identity";
const GRPC_CONTENT_TYPE: &str = "application/grpc";
const GRPC_ENCODING: &str = "grpc-encoding";

/// The KV methods served here, by their gRPC path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Range,
    Put,
    DeleteRange,
    Txn,
    Compact,
}

impl Method {
    /// The method at `path`, if this module serves it.
    pub fn from_path(path: &str) -> Option<Method> {
        match path {
            "/etcdserverpb.KV/Range" => Some(Method::Range),
            "/etcdserverpb.KV/Put" => Some(Method::Put),
            "/etcdserverpb.KV/DeleteRange" => Some(Method::DeleteRange),
            "/etcdserverpb.KV/Txn" => Some(Method::Txn),
            "/etcdserverpb.KV/Compact" => Some(Method::Compact),
            _ => None,
        }
    }
}

/// Whether this module can read `request`'s message: no `grpc-encoding`, or `identity`.
pub fn reads_encoding<B>(request: &Request<B>) -> bool {
    match request.headers().get(GRPC_ENCODING) {
        None => true,
        Some(value) => value.as_bytes() == ENCODING_IDENTITY.as_bytes(),
    }
}

/// Answers one call of `method` on `kv`; `bytes_max` bounds the request's message as tonic's
/// `max_decoding_message_size` does.
pub async fn call<B>(
    kv: &KvService,
    method: Method,
    request: Request<B>,
    bytes_max: usize,
) -> Response<axum::body::Body>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    match method {
        Method::Range => unary(request, bytes_max, |r| kv.range(r)).await,
        Method::Put => unary(request, bytes_max, |r| kv.put(r)).await,
        Method::DeleteRange => unary(request, bytes_max, |r| kv.delete_range(r)).await,
        Method::Txn => unary(request, bytes_max, |r| kv.txn(r)).await,
        Method::Compact => unary(request, bytes_max, |r| kv.compact(r)).await,
    }
}

async fn unary<B, Req, Resp, F, Fut>(
    request: Request<B>,
    bytes_max: usize,
    handler: F,
) -> Response<axum::body::Body>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
    Req: prost::Message + Default,
    Resp: prost::Message,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let (parts, mut body) = request.into_parts();
    let message = match read_message(&mut body, bytes_max).await {
        Ok(bytes) => bytes,
        Err(status) => return status.into_http(),
    };
    let message = match Req::decode(message) {
        Ok(message) => message,
        Err(error) => return Status::internal(error.to_string()).into_http(),
    };
    let answer = handler(tonic::Request::from_http(Request::from_parts(
        parts, message,
    )))
    .await;
    // The body lives until the answer: by then the client's end of stream has usually
    // arrived, and dropping it reads that without a task of its own (`unary_body.rs`).
    drop(body);
    match answer {
        Ok(response) => respond(response),
        Err(status) => status.into_http(),
    }
}

/// Reads the body to its end and returns its first message (without its prefix). The length
/// is checked against `bytes_max` as soon as the prefix is in, before the message is gathered;
/// what follows the message is read and dropped, so memory stays bounded by one message and
/// one frame whatever the client sends.
async fn read_message<B>(body: &mut B, bytes_max: usize) -> Result<Bytes, Status>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    let mut reader = MessageReader::new(bytes_max);
    // Bounded in memory by `MessageReader`; in time by the body's end (our `UnaryBody` ends a
    // write's body at its message) or the connection's own timeouts.
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| Status::from_error(error.into()))?;
        let Ok(data) = frame.into_data() else {
            continue; // Trailers: a unary request has none worth reading.
        };
        reader.take(data)?;
    }
    reader.finish()
}

/// The first message of a request body, gathered from its frames.
struct MessageReader {
    gathered: Gathered,
    bytes_max: usize,
    /// The prefix's and the message's bytes, once the prefix is in.
    message_end: Option<usize>,
}

impl MessageReader {
    fn new(bytes_max: usize) -> MessageReader {
        MessageReader {
            gathered: Gathered::default(),
            bytes_max,
            message_end: None,
        }
    }

    /// Takes one frame's bytes: kept until the message is whole, dropped after.
    fn take(&mut self, data: Bytes) -> Result<(), Status> {
        if self
            .message_end
            .is_some_and(|end| self.gathered.len() >= end)
        {
            return Ok(());
        }
        self.gathered.push(data);
        if self.message_end.is_none()
            && let Some(prefix) = self.gathered.prefix()
        {
            let message_bytes = check_prefix(prefix, self.bytes_max)?;
            self.message_end = Some(MESSAGE_PREFIX_BYTES + message_bytes);
        }
        Ok(())
    }

    /// The message, or tonic's error for a body that ended without a whole one.
    fn finish(self) -> Result<Bytes, Status> {
        let Some(end) = self.message_end else {
            return Err(if self.gathered.is_empty() {
                Status::internal("Missing request message.")
            } else {
                Status::internal("Unexpected EOF decoding stream.")
            });
        };
        let mut bytes = self.gathered.into_bytes();
        if bytes.len() < end {
            return Err(Status::internal("Unexpected EOF decoding stream."));
        }
        bytes.truncate(end);
        bytes.advance(MESSAGE_PREFIX_BYTES);
        Ok(bytes)
    }
}

/// The message length in `prefix`, or tonic's error for its flag or its length.
fn check_prefix(prefix: [u8; MESSAGE_PREFIX_BYTES], bytes_max: usize) -> Result<usize, Status> {
    let [flag, a, b, c, d] = prefix;
    match flag {
        FLAG_UNCOMPRESSED => {}
        FLAG_COMPRESSED => {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ));
        }
        other => {
            return Err(Status::internal(format!(
                "protocol error: received message with invalid compression flag: {other} (valid flags are 0 and 1), while sending request"
            )));
        }
    }
    let message_bytes = usize::try_from(u32::from_be_bytes([a, b, c, d])).unwrap_or(usize::MAX);
    if message_bytes > bytes_max {
        return Err(Status::out_of_range(format!(
            "Error, decoded message length too large: found {message_bytes} bytes, the limit is: {bytes_max} bytes"
        )));
    }
    Ok(message_bytes)
}

/// The body's bytes so far: the first chunk as it came (the usual case: one chunk holds the
/// whole message), or every chunk copied into one buffer.
#[derive(Default)]
enum Gathered {
    #[default]
    Empty,
    One(Bytes),
    Joined(BytesMut),
}

impl Gathered {
    fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        *self = match std::mem::take(self) {
            Gathered::Empty => Gathered::One(data),
            Gathered::One(first) => {
                let mut joined = BytesMut::with_capacity(first.len() + data.len());
                joined.put_slice(&first);
                joined.put_slice(&data);
                Gathered::Joined(joined)
            }
            Gathered::Joined(mut joined) => {
                joined.put_slice(&data);
                Gathered::Joined(joined)
            }
        };
    }

    fn is_empty(&self) -> bool {
        matches!(self, Gathered::Empty)
    }

    fn len(&self) -> usize {
        match self {
            Gathered::Empty => 0,
            Gathered::One(bytes) => bytes.len(),
            Gathered::Joined(bytes) => bytes.len(),
        }
    }

    fn prefix(&self) -> Option<[u8; MESSAGE_PREFIX_BYTES]> {
        let bytes: &[u8] = match self {
            Gathered::Empty => return None,
            Gathered::One(bytes) => bytes,
            Gathered::Joined(bytes) => bytes,
        };
        bytes.get(..MESSAGE_PREFIX_BYTES)?.try_into().ok()
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Gathered::Empty => Bytes::new(),
            Gathered::One(bytes) => bytes,
            Gathered::Joined(bytes) => bytes.freeze(),
        }
    }
}

/// A successful answer: the response's metadata as headers, its message as one frame, and
/// `grpc-status: 0` as trailers (what tonic sends, built without a `Status`).
fn respond<Resp: prost::Message>(response: tonic::Response<Resp>) -> Response<axum::body::Body> {
    let (metadata, message, extensions) = response.into_parts();
    let message_bytes = message.encoded_len();
    let encode_bytes_max = crate::services::CLIENT_SEND_BYTES_MAX;
    let length = match u32::try_from(message_bytes) {
        Ok(length) if message_bytes <= encode_bytes_max => length,
        _ => {
            return Status::out_of_range(format!(
                "Error, encoded message length too large: found {message_bytes} bytes, the limit is: {encode_bytes_max} bytes"
            ))
            .into_http();
        }
    };
    let mut frame = BytesMut::with_capacity(MESSAGE_PREFIX_BYTES + message_bytes);
    frame.put_u8(FLAG_UNCOMPRESSED);
    frame.put_u32(length);
    message.encode_raw(&mut frame);
    assert_eq!(frame.len(), MESSAGE_PREFIX_BYTES + message_bytes);

    let mut http = Response::new(axum::body::Body::new(OneMessage {
        message: Some(frame.freeze()),
        trailers: Some(ok_trailers()),
    }));
    *http.headers_mut() = metadata.into_headers();
    http.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(GRPC_CONTENT_TYPE),
    );
    *http.extensions_mut() = extensions;
    http
}

fn ok_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert(Status::GRPC_STATUS, HeaderValue::from_static("0"));
    trailers
}

/// A response body of one message frame and then trailers.
struct OneMessage {
    message: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for OneMessage {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && self.trailers.is_none()
    }

    /// Unknown, as tonic's encoder reports: an exact size would make hyper add a
    /// `content-length` header, which tonic's answers never carry.
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut bytes = vec![flag];
        bytes.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
        bytes.extend_from_slice(message);
        bytes
    }

    /// Frames of a scripted request body.
    type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;

    /// A body that yields `chunks` one frame each.
    fn chunked(chunks: Vec<Vec<u8>>) -> StreamBody<Frames> {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = chunks
            .into_iter()
            .map(|c| Ok(Frame::data(Bytes::from(c))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn read(chunks: Vec<Vec<u8>>, bytes_max: usize) -> Result<Bytes, Status> {
        read_message(&mut chunked(chunks), bytes_max).await
    }

    #[tokio::test]
    async fn a_message_in_one_frame_or_many_reads_the_same() {
        let whole = framed(0, b"hello world");
        assert_eq!(
            read(vec![whole.clone()], 64).await.expect("one frame"),
            Bytes::from_static(b"hello world")
        );
        let split: Vec<Vec<u8>> = whole.chunks(3).map(<[u8]>::to_vec).collect();
        assert!(split.len() > 3);
        assert_eq!(
            read(split, 64).await.expect("many frames"),
            Bytes::from_static(b"hello world")
        );
        // An empty message (a request with every field at its default) is a message.
        assert_eq!(
            read(vec![framed(0, b"")], 64).await.expect("empty"),
            Bytes::new()
        );
    }

    #[test]
    fn bytes_after_the_message_are_dropped_not_kept() {
        let message = framed(0, b"first");
        let mut reader = MessageReader::new(64);
        reader.take(Bytes::from(message.clone())).expect("message");
        let extra = Bytes::from(vec![7u8; 1024 * 1024]);
        for _ in 0..1_000 {
            reader
                .take(extra.clone())
                .expect("extra bytes are not an error");
        }
        assert_eq!(reader.gathered.len(), message.len());
        assert_eq!(
            reader.finish().expect("message"),
            Bytes::from_static(b"first")
        );
        // A message whose last frame carries more: the rest of that frame is cut off.
        let mut reader = MessageReader::new(64);
        let mut joined = framed(0, b"second");
        joined.extend_from_slice(&framed(0, b"third"));
        reader.take(Bytes::from(joined)).expect("two messages");
        assert_eq!(
            reader.finish().expect("first"),
            Bytes::from_static(b"second")
        );
    }

    #[tokio::test]
    async fn bad_bodies_get_tonics_statuses() {
        let missing = read(vec![], 64).await.expect_err("no message");
        assert_eq!(missing.code(), tonic::Code::Internal);
        assert_eq!(missing.message(), "Missing request message.");

        let short = read(vec![vec![0, 0, 0]], 64)
            .await
            .expect_err("short prefix");
        assert_eq!(short.message(), "Unexpected EOF decoding stream.");
        let mut truncated = framed(0, b"hello");
        truncated.pop();
        let truncated = read(vec![truncated], 64).await.expect_err("truncated");
        assert_eq!(truncated.message(), "Unexpected EOF decoding stream.");

        let large = read(vec![framed(0, &[7; 65])], 64)
            .await
            .expect_err("large");
        assert_eq!(large.code(), tonic::Code::OutOfRange);
        assert_eq!(
            large.message(),
            "Error, decoded message length too large: found 65 bytes, the limit is: 64 bytes"
        );
        // Refused on the prefix alone: the rest never has to arrive.
        let prefix_only = framed(0, &[7; 1000])[..MESSAGE_PREFIX_BYTES].to_vec();
        let early = read(vec![prefix_only], 64).await.expect_err("prefix");
        assert_eq!(early.code(), tonic::Code::OutOfRange);

        let compressed = read(vec![framed(1, b"x")], 64).await.expect_err("flag 1");
        assert_eq!(compressed.code(), tonic::Code::Internal);
        assert!(compressed.message().contains("compressed-flag"));
        let odd = read(vec![framed(9, b"x")], 64).await.expect_err("flag 9");
        assert!(odd.message().contains("invalid compression flag: 9"));
    }

    #[tokio::test]
    async fn an_answer_is_one_frame_then_ok_trailers() {
        use aspen_proto::etcdserverpb as pb;
        let message = pb::PutResponse {
            header: Some(pb::ResponseHeader {
                revision: 42,
                ..Default::default()
            }),
            prev_kv: None,
        };
        let mut response = tonic::Response::new(message.clone());
        response
            .metadata_mut()
            .insert("x-aspen-test", "yes".parse().expect("ascii"));
        let http = respond(response);
        assert_eq!(http.headers()[header::CONTENT_TYPE], GRPC_CONTENT_TYPE);
        assert_eq!(http.headers()["x-aspen-test"], "yes");
        let mut body = http.into_body();
        let data = body
            .frame()
            .await
            .expect("a frame")
            .expect("no error")
            .into_data()
            .expect("data first");
        let decoded = read_message(&mut Full::new(data), usize::MAX)
            .await
            .expect("framed");
        assert_eq!(
            <pb::PutResponse as prost::Message>::decode(decoded).expect("decodes"),
            message
        );
        let trailers = body
            .frame()
            .await
            .expect("a frame")
            .expect("no error")
            .into_trailers()
            .expect("trailers second");
        assert_eq!(trailers[Status::GRPC_STATUS], "0");
        assert!(body.frame().await.is_none());
    }

    #[test]
    fn only_the_five_kv_paths_and_identity_are_served_here() {
        assert_eq!(Method::from_path("/etcdserverpb.KV/Put"), Some(Method::Put));
        assert_eq!(
            Method::from_path("/etcdserverpb.KV/Compact"),
            Some(Method::Compact)
        );
        assert_eq!(Method::from_path("/etcdserverpb.KV/Nope"), None);
        let plain = Request::new(());
        assert!(reads_encoding(&plain));
        let identity = Request::builder()
            .header(GRPC_ENCODING, "identity")
            .body(())
            .expect("request");
        assert!(reads_encoding(&identity));
        let gzip = Request::builder()
            .header(GRPC_ENCODING, "gzip")
            .body(())
            .expect("request");
        assert!(!reads_encoding(&gzip));
    }
}
