//! The bench's unary KV calls on the `h2` crate directly (`--wire h2`, the default).
//!
//! Why: tonic's client queues a request's HEADERS from the calling task and its DATA from a
//! second task that pipes the body, and the connection task flushes after each, so every
//! request cost the client two socket writes (measured: 2.0 `writev` per put at 256 clients
//! over 16 connections, ~30 % of the client's CPU in the kernel's TCP send path). On a 2-core
//! machine the load client shares the cores with the servers it measures, so its cost caps
//! both servers' throughput. Here the calling task queues both frames before the connection
//! task runs: a request is at most one write, and under load several share one, as grpc-go's
//! writer (etcdctl's and etcd's own benchmark tool's) sends them. `--wire tonic` keeps the old
//! path for comparison.
//!
//! What a call does, and its limits: one HTTP/2 stream per call (POST, `application/grpc`,
//! `te: trailers`, the auth token if any); the request is one gRPC message, uncompressed; the
//! answer must be one uncompressed message of at most `RESPONSE_BYTES_MAX` bytes followed by
//! `grpc-status: 0`, or a trailers-only status, which is returned as that `Status`. No retries
//! and no keepalive: a bench run is short and counts every failed call.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderValue, TE};
use http::{Method, Request, Uri};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::{Code, Status};

use crate::error::CliError;
use crate::limits::RESPONSE_BYTES_MAX;

/// The port of an `http://` endpoint that names none.
const HTTP_PORT_DEFAULT: u16 = 80;
/// gRPC's message prefix: a compression flag and a big-endian u32 length.
const MESSAGE_PREFIX_BYTES: usize = 5;
/// hyper's client defaults, which tonic's channel uses: what one stream and one connection may
/// receive before the client releases capacity.
const STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 5 * 1024 * 1024;

pub const PATH_RANGE: &str = "/etcdserverpb.KV/Range";
pub const PATH_PUT: &str = "/etcdserverpb.KV/Put";
pub const PATH_TXN: &str = "/etcdserverpb.KV/Txn";

/// One HTTP/2 connection; clones share it.
#[derive(Clone)]
pub struct WireChannel {
    send: h2::client::SendRequest<Bytes>,
    /// `scheme://authority`, without a path.
    base: String,
    token: Option<HeaderValue>,
}

/// The three URIs a bench calls, made once per worker.
#[derive(Clone)]
pub struct KvUris {
    pub range: Uri,
    pub put: Uri,
    pub txn: Uri,
}

impl WireChannel {
    /// Connects to `url` (`http://` or `https://`, host and port) within `dial_timeout`; every
    /// request carries `token` as etcd's `token` metadata.
    pub async fn connect(
        url: &str,
        dial_timeout: std::time::Duration,
        tls: Option<aspen_tls::TlsConnector>,
        token: Option<HeaderValue>,
    ) -> Result<WireChannel, CliError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| CliError::usage(format!("--endpoints: {url}: {e}")))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(CliError::usage(format!(
                "--endpoints: {url}: needs a scheme and a host"
            )));
        };
        let base = format!("{scheme}://{authority}");
        let connecting = async {
            match tls {
                Some(tls) => {
                    let stream = tls
                        .connect_tls(&uri)
                        .await
                        .map_err(|e| connection_error(url, &e.to_string()))?;
                    handshake(stream, url).await
                }
                None => {
                    let tcp = aspen_tls::connect_tcp(&uri, HTTP_PORT_DEFAULT)
                        .await
                        .map_err(|e| connection_error(url, &e.to_string()))?;
                    handshake(tcp, url).await
                }
            }
        };
        let send = match tokio::time::timeout(dial_timeout, connecting).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(connection_error(
                    url,
                    &format!("timed out after {dial_timeout:?} (--dial-timeout)"),
                ));
            }
        };
        Ok(WireChannel { send, base, token })
    }

    pub fn kv_uris(&self) -> Result<KvUris, CliError> {
        let uri = |path: &str| {
            format!("{}{path}", self.base)
                .parse::<Uri>()
                .map_err(|e| CliError::usage(format!("{}{path}: {e}", self.base)))
        };
        Ok(KvUris {
            range: uri(PATH_RANGE)?,
            put: uri(PATH_PUT)?,
            txn: uri(PATH_TXN)?,
        })
    }

    /// One unary call: `request` to `uri`, its one answer decoded as `R`.
    pub async fn unary<Q: Message, R: Message + Default>(
        &self,
        uri: &Uri,
        request: &Q,
    ) -> Result<R, Status> {
        let body = encode(request)?;
        let mut head = Request::new(());
        *head.method_mut() = Method::POST;
        *head.uri_mut() = uri.clone();
        let headers = head.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        if let Some(token) = &self.token {
            headers.insert("token", token.clone());
        }
        let mut send = self.send.clone().ready().await.map_err(h2_status)?;
        let (response, mut stream) = send.send_request(head, false).map_err(h2_status)?;
        // Queued before the connection task next flushes: HEADERS and DATA in one write.
        stream.send_data(body, true).map_err(h2_status)?;
        let response = response.await.map_err(h2_status)?;
        let (parts, mut body) = response.into_parts();
        // A trailers-only answer: its status is in the headers, and nothing follows.
        if let Some(status) = Status::from_header_map(&parts.headers) {
            if status.code() != Code::Ok {
                return Err(status);
            }
            return Err(Status::internal("an OK status without a message"));
        }
        if parts.status != http::StatusCode::OK {
            return Err(Status::unknown(format!(
                "HTTP status {} without a grpc-status",
                parts.status
            )));
        }
        let message = read_message(&mut body).await?;
        let trailers = body.trailers().await.map_err(h2_status)?;
        match trailers.as_ref().and_then(Status::from_header_map) {
            Some(status) if status.code() == Code::Ok => {}
            Some(status) => return Err(status),
            None => return Err(Status::internal("the answer ended without a grpc-status")),
        }
        decode(message)
    }
}

async fn handshake<T>(io: T, url: &str) -> Result<h2::client::SendRequest<Bytes>, CliError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = Coalesce::new(io);
    let (send, connection) = h2::client::Builder::new()
        .enable_push(false)
        .initial_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .handshake::<Coalesce<T>, Bytes>(io)
        .await
        .map_err(|e| connection_error(url, &format!("HTTP/2 handshake: {e}")))?;
    // Ends when the connection closes; its error reaches every call on it as theirs.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(send)
}

/// The connection's socket, with its writes gathered: h2 writes frames into `pending`, and a
/// flush that finds bytes there first yields to the scheduler (the task is woken at once and
/// runs again after the tasks already runnable); the bytes go to the socket at the first flush
/// of a later poll of the connection. The requests that other workers queue meanwhile go out
/// in the same write, as grpc-go's writer gathers them. A lone request waits one scheduler
/// pass: with nothing else runnable the connection is polled again at once.
///
/// Why: a worker's call wakes the connection task, which tokio runs next on the same thread
/// (its LIFO slot), and h2 flushes after every DATA frame of 256 bytes or more (it chains such
/// a payload instead of copying it), so each request went out in a `writev` of its own
/// (measured: 1.00 per put at 256 clients over 16 connections).
///
/// "A later poll": h2's connection reads the socket before it sends in every poll and ends
/// every send with a flush, so a read since the flush that yielded marks the next poll.
struct Coalesce<T> {
    inner: T,
    /// Bytes h2 wrote that the socket has not taken yet, from `written` on.
    pending: Vec<u8>,
    written: usize,
    /// Counts reads; a new value means a new poll of the connection.
    reads: u64,
    /// `reads` when a flush yielded with bytes pending; cleared when the socket took them.
    yielded_at: Option<u64>,
}

/// What `pending` may hold before h2's next write waits for the socket.
const COALESCE_BYTES_MAX: usize = 64 * 1024;

impl<T: AsyncRead + AsyncWrite + Unpin> Coalesce<T> {
    fn new(inner: T) -> Coalesce<T> {
        Coalesce {
            inner,
            pending: Vec::with_capacity(COALESCE_BYTES_MAX),
            written: 0,
            reads: 0,
            yielded_at: None,
        }
    }

    /// Writes `pending` to the socket until it is all taken (Ready) or the socket is full
    /// (Pending, with the task woken when it can take more).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Bounded: each pass takes at least one byte or returns.
        while self.written < self.pending.len() {
            let taken =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if taken == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += taken;
        }
        self.pending.clear();
        self.written = 0;
        self.yielded_at = None;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.reads = self.reads.wrapping_add(1);
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[std::io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.pending.len() >= COALESCE_BYTES_MAX {
            ready!(self.poll_drain(cx))?;
        }
        let mut taken: usize = 0;
        for buf in bufs {
            self.pending.extend_from_slice(buf);
            taken += buf.len();
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.written == self.pending.len() {
            return Poll::Ready(Ok(()));
        }
        match self.yielded_at {
            None => {
                self.yielded_at = Some(self.reads);
                cx.waker().wake_by_ref();
                Poll::Ready(Ok(()))
            }
            // This poll yielded already: the next one writes.
            Some(reads) if reads == self.reads => Poll::Ready(Ok(())),
            Some(_) => self.poll_drain(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn connection_error(url: &str, what: &str) -> CliError {
    CliError::connection(format!(
        "cannot connect to {}: {what}",
        crate::connect::display_endpoint(url)
    ))
}

/// An h2 error as the status a gRPC client reports for it: the server's RST_STREAM or GOAWAY
/// code where there is one, else the connection is gone (UNAVAILABLE).
fn h2_status(error: h2::Error) -> Status {
    if let Some(reason) = error.reason() {
        let code = match reason {
            h2::Reason::REFUSED_STREAM => Code::Unavailable,
            h2::Reason::CANCEL => Code::Cancelled,
            h2::Reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
            h2::Reason::INADEQUATE_SECURITY => Code::PermissionDenied,
            _ => Code::Internal,
        };
        return Status::new(code, format!("h2 protocol error: {error}"));
    }
    Status::unavailable(format!("connection error: {error}"))
}

/// `[0][length u32][message]`.
fn encode<Q: Message>(request: &Q) -> Result<Bytes, Status> {
    let length = request.encoded_len();
    let length_u32 = u32::try_from(length)
        .map_err(|_| Status::out_of_range(format!("request of {length} bytes")))?;
    let mut buffer = BytesMut::with_capacity(MESSAGE_PREFIX_BYTES + length);
    buffer.put_u8(0);
    buffer.put_u32(length_u32);
    request
        .encode(&mut buffer)
        .map_err(|e| Status::internal(format!("encode: {e}")))?;
    debug_assert_eq!(buffer.len(), MESSAGE_PREFIX_BYTES + length);
    Ok(buffer.freeze())
}

/// The answer's DATA, gathered (no copy when it came in one frame); capacity is released as
/// it is read, so the connection's window never closes on unread answers.
async fn read_message(body: &mut h2::RecvStream) -> Result<Bytes, Status> {
    // The first chunk as it came; a copy only once a second one arrives.
    let mut first = Bytes::new();
    let mut gathered: Option<BytesMut> = None;
    let mut total_bytes: usize = 0;
    // Bounded: each chunk adds to total_bytes, which is checked against the limit.
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(h2_status)?;
        let _ = body.flow_control().release_capacity(chunk.len());
        total_bytes = total_bytes.saturating_add(chunk.len());
        if total_bytes > RESPONSE_BYTES_MAX.saturating_add(MESSAGE_PREFIX_BYTES) {
            return Err(Status::out_of_range(format!(
                "an answer of more than {RESPONSE_BYTES_MAX} bytes"
            )));
        }
        match &mut gathered {
            Some(all) => all.put_slice(&chunk),
            None if first.is_empty() => first = chunk,
            None => {
                let mut all = BytesMut::with_capacity(total_bytes);
                all.put_slice(&first);
                all.put_slice(&chunk);
                gathered = Some(all);
            }
        }
    }
    Ok(gathered.map_or(first, BytesMut::freeze))
}

/// One message out of `[flag][length][message]`, exactly.
fn decode<R: Message + Default>(mut frame: Bytes) -> Result<R, Status> {
    if frame.len() < MESSAGE_PREFIX_BYTES {
        return Err(Status::internal(format!(
            "an answer of {} bytes, shorter than a gRPC message prefix",
            frame.len()
        )));
    }
    let compressed = frame.get_u8();
    let length = frame.get_u32() as usize;
    if compressed != 0 {
        return Err(Status::internal(
            "a compressed answer; this client asks for none",
        ));
    }
    if length != frame.len() {
        return Err(Status::internal(format!(
            "an answer announcing {length} bytes carries {}",
            frame.len()
        )));
    }
    R::decode(frame).map_err(|e| Status::internal(format!("decode the answer: {e}")))
}

#[cfg(test)]
mod tests {
    use aspen_proto::etcdserverpb as pb;

    use super::*;

    #[test]
    fn a_message_round_trips_through_the_prefix() {
        let request = pb::PutRequest {
            key: b"k".to_vec(),
            value: vec![7; 300],
            ..Default::default()
        };
        let framed = encode(&request).expect("encode");
        assert_eq!(framed[0], 0);
        assert_eq!(
            u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize,
            framed.len() - MESSAGE_PREFIX_BYTES
        );
        let back: pb::PutRequest = decode(framed).expect("decode");
        assert_eq!(back, request);
    }

    #[test]
    fn malformed_answers_are_errors_not_messages() {
        let short = decode::<pb::PutResponse>(Bytes::from_static(&[0, 0, 0]));
        assert_eq!(short.expect_err("short").code(), Code::Internal);
        let compressed = decode::<pb::PutResponse>(Bytes::from_static(&[1, 0, 0, 0, 0]));
        assert_eq!(compressed.expect_err("compressed").code(), Code::Internal);
        let long = decode::<pb::PutResponse>(Bytes::from_static(&[0, 0, 0, 0, 9, 1]));
        assert!(
            long.expect_err("length")
                .message()
                .contains("announcing 9 bytes carries 1")
        );
        let garbage = decode::<pb::RangeResponse>(Bytes::from_static(&[0, 0, 0, 0, 2, 0xff, 0xff]));
        assert_eq!(garbage.expect_err("garbage").code(), Code::Internal);
        let empty: pb::PutResponse = decode(Bytes::from_static(&[0, 0, 0, 0, 0])).expect("empty");
        assert_eq!(empty, pb::PutResponse::default());
    }
}
