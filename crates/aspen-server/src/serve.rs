//! Serving one listener: Aspen's own accept loop over hyper's connection builders, with the
//! client, peer and metrics routers inside.
//!
//! Before this module the gRPC listeners ran through `tonic::transport::Server`; serving hyper
//! directly lets us choose every HTTP/2 setting (no `date` header on every response, bounded
//! concurrent streams, window and frame sizes; values in `aspen_core::limits`), put gRPC and
//! plain HTTP (`/health`, `/version`, `/metrics`, later etcd's JSON gateway) on one port as
//! etcd does, and gives the TLS handshake one place to go ([`Protocols`] says what a listener
//! speaks).
//!
//! Per connection: accept, `TCP_NODELAY`, on an https listener the TLS handshake (on the
//! connection's own task, bounded in time and in how many run at once, so a slow or silent
//! client never holds up the accept loop; a refused one is logged as etcd logs "rejected
//! connection"), then hyper's HTTP/2 server (or, where HTTP/1.1 is allowed too, hyper-util's
//! auto-detecting builder) with an [`App`] as the service: a router, or on the client port the
//! service that sends KV requests straight to the KV service.
//! A stop signal stops the accept loop at once (the port closes), asks every connection to
//! finish gracefully (HTTP/2 GOAWAY: in-flight requests complete, no new ones start), and waits
//! until all have closed; the caller bounds that wait.

use std::convert::Infallible;
use std::time::Duration;

use std::sync::Arc;

use aspen_core::limits;
use aspen_tls::ServerTls;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::coalesce::{CoalescingIo, InFlight, InFlightGuard};

/// What a listener serves: a router (peer and metrics ports), or the client port's service,
/// which sends KV requests past the router (`services::ClientService`).
#[derive(Clone)]
pub enum App {
    Router(Router),
    Client(crate::services::ClientService),
}

impl App {
    /// This app for one TLS connection whose verified client certificate names `user`: the
    /// user reaches every request as a `CertificateUser` extension.
    fn with_certificate_user(self, user: aspen_api::CertificateUser) -> App {
        match self {
            App::Router(router) => App::Router(router.layer(axum::Extension(user))),
            App::Client(client) => App::Client(client.with_certificate_user(user)),
        }
    }
}

impl tower_service::Service<Request<Incoming>> for App {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        // Routers and the client service are always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        match self {
            App::Router(router) => Box::pin(router.call(request)),
            App::Client(client) => client.call(request),
        }
    }
}

/// A connection's app, counting the requests whose response is not ready yet, so that the
/// connection's writes can wait for their responses' turn (`coalesce.rs`).
#[derive(Clone)]
struct Counted {
    app: App,
    in_flight: InFlight,
}

impl tower_service::Service<Request<Incoming>> for Counted {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = CountedFuture;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.app.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> CountedFuture {
        CountedFuture {
            guard: Some(self.in_flight.enter()),
            inner: self.app.call(request),
        }
    }
}

/// A request's response future, counted in flight until it is ready.
struct CountedFuture {
    guard: Option<InFlightGuard>,
    inner: BoxFuture<'static, Result<Response<Body>, Infallible>>,
}

impl std::future::Future for CountedFuture {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let ready = self.inner.as_mut().poll(cx);
        if ready.is_ready() {
            self.guard = None;
        }
        ready
    }
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    /// gRPC only (the peer port): HTTP/2 with prior knowledge.
    Http2Only,
    /// gRPC and plain HTTP on one port (the client and metrics ports): HTTP/2 and HTTP/1.1,
    /// told apart by the connection preface, as etcd serves its client port.
    Http1AndHttp2,
}

/// HTTP/2 settings for one kind of listener.
#[derive(Debug, Clone, Copy)]
pub struct Http2Settings {
    pub streams_concurrent_max: u32,
}

impl Http2Settings {
    pub const CLIENT: Http2Settings = Http2Settings {
        streams_concurrent_max: limits::HTTP2_CLIENT_STREAMS_CONCURRENT_MAX,
    };
    pub const PEER: Http2Settings = Http2Settings {
        streams_concurrent_max: limits::HTTP2_PEER_STREAMS_CONCURRENT_MAX,
    };
}

impl Protocols {
    /// What an https listener offers in ALPN (clients that send none are served all the same).
    pub fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Protocols::Http2Only => vec![b"h2".to_vec()],
            Protocols::Http1AndHttp2 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

/// Serves `listener` with `app` until `stop` turns true, then drains its connections. With
/// `tls`, every connection is a TLS connection (its config must offer `protocols.alpn()`).
pub fn spawn(
    listener: TcpListener,
    app: App,
    protocols: Protocols,
    settings: Http2Settings,
    tls: Option<ServerTls>,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
) -> JoinHandle<()> {
    let builder = connection_builder(protocols, settings);
    let handshakes = Arc::new(Semaphore::new(limits::TLS_HANDSHAKES_IN_FLIGHT_MAX));
    tokio::spawn(async move {
        // Every connection task holds a receiver: once the sender is closed, all have ended.
        let (drain, draining) = watch::channel(false);
        loop {
            // On an https listener a slot for the handshake first: accepting more connections
            // than can be handshaken leaves them in the kernel's backlog, not in memory here.
            let slot = match &tls {
                Some(_) => tokio::select! {
                    () = wait_until_true(&mut stop) => break,
                    slot = handshakes.clone().acquire_owned() => slot.ok(),
                },
                None => None,
            };
            let accepted = tokio::select! {
                () = wait_until_true(&mut stop) => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let connection = Connection {
                        app: app.clone(),
                        builder: builder.clone(),
                        draining: draining.clone(),
                        what,
                    };
                    match &tls {
                        Some(tls) => connection.spawn_tls(stream, peer, tls.clone(), slot),
                        None => connection.spawn_plain(stream),
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, what, "accept failed");
                    tokio::time::sleep(Duration::from_millis(limits::ACCEPT_ERROR_PAUSE_MS)).await;
                }
            }
        }
        drop(listener);
        let _ = drain.send(true);
        drop(draining);
        drain.closed().await;
    })
}

fn connection_builder(
    protocols: Protocols,
    settings: Http2Settings,
) -> auto::Builder<TokioExecutor> {
    assert!(settings.streams_concurrent_max > 0);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if protocols == Protocols::Http2Only {
        builder = builder.http2_only();
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        // The `date` header costs a formatted timestamp and its HPACK encoding on every
        // response; gRPC clients ignore it and etcd's gRPC responses carry none.
        .auto_date_header(false)
        .max_concurrent_streams(settings.streams_concurrent_max)
        .initial_stream_window_size(limits::HTTP2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(limits::HTTP2_CONNECTION_WINDOW_BYTES)
        .max_frame_size(limits::HTTP2_FRAME_BYTES_MAX);
    // hyper enforces its HTTP/1 header read timeout only with a timer.
    builder.http1().timer(TokioTimer::new());
    builder
}

/// What one accepted connection is served with.
struct Connection {
    app: App,
    builder: auto::Builder<TokioExecutor>,
    draining: watch::Receiver<bool>,
    what: &'static str,
}

impl Connection {
    fn spawn_plain(self, stream: TcpStream) {
        set_nodelay(&stream);
        tokio::spawn(self.serve(stream));
    }

    /// The handshake runs on the connection's task, holding `slot` until it ends; a stop
    /// during the handshake drops the connection.
    fn spawn_tls(
        mut self,
        stream: TcpStream,
        peer: std::net::SocketAddr,
        tls: ServerTls,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        set_nodelay(&stream);
        tokio::spawn(async move {
            let handshake = tokio::select! {
                handshake = tls.accept(stream) => handshake,
                () = wait_until_true(&mut self.draining) => return,
            };
            drop(slot);
            match handshake {
                Ok(stream) => {
                    // A verified client certificate (asked for only with
                    // --client-cert-auth): its Common Name is the user when auth is enabled
                    // and the request carries no token, as etcd's rule.
                    let common_name = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|leaf| aspen_tls::subject_common_name(leaf));
                    if let Some(name) = common_name {
                        self.app = self
                            .app
                            .with_certificate_user(aspen_api::CertificateUser(name));
                    }
                    self.serve(stream).await
                }
                Err(error) => {
                    tracing::warn!(%error, remote = %peer, what = self.what, "rejected connection");
                }
            }
        });
    }

    async fn serve<S>(mut self, stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let in_flight = InFlight::default();
        let service = TowerToHyperService::new(Counted {
            app: self.app,
            in_flight: in_flight.clone(),
        });
        let connection = self
            .builder
            .serve_connection(TokioIo::new(CoalescingIo::new(stream, in_flight)), service);
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = wait_until_true(&mut self.draining) => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, "connection ended with an error");
        }
    }
}

/// Small responses must leave at once, not wait out Nagle's algorithm.
fn set_nodelay(stream: &TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
}

/// Returns once `flag` is true, or its sender is gone (which also means: stop).
async fn wait_until_true(flag: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await: it is not `Send`.
    let _ = flag.wait_for(|value| *value).await.map(|_| ());
}

/// A router's answer for a path nobody serves: gRPC's Unimplemented for a gRPC request (what
/// tonic answers), 404 for plain HTTP (what etcd's client port answers).
pub async fn not_found(request: Request<Body>) -> Result<Response<Body>, Infallible> {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"));
    let response = if grpc {
        tonic::Status::unimplemented("").into_http()
    } else {
        let mut response = Response::new(Body::from("404 page not found\n"));
        *response.status_mut() = StatusCode::NOT_FOUND;
        response
    };
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

    /// The server's end of a connection: counts the writes that carried bytes and, as a
    /// `TcpStream` does, says it takes vectored writes.
    struct CountingIo {
        inner: DuplexStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for CountingIo {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountingIo {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let written = Pin::new(&mut self.inner).poll_write(cx, buf);
            if let Poll::Ready(Ok(bytes)) = written
                && bytes > 0
            {
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
            written
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            // One write per call, as one `writev` would be: the first buffer with bytes.
            let first = bufs
                .iter()
                .find(|buf| !buf.is_empty())
                .map_or(&[][..], |buf| &**buf);
            self.poll_write(cx, first)
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// What a unary gRPC response's body is: one DATA frame, then trailers.
    struct DataThenTrailers {
        data: Option<Bytes>,
        trailers: Option<http::HeaderMap>,
    }

    impl http_body::Body for DataThenTrailers {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            if let Some(data) = self.data.take() {
                return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
            }
            if let Some(trailers) = self.trailers.take() {
                return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
            }
            Poll::Ready(None)
        }
    }

    const PAYLOAD_BYTES: usize = 300;

    async fn unary_response() -> Response<Body> {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        Response::new(Body::new(DataThenTrailers {
            data: Some(Bytes::from(vec![7u8; PAYLOAD_BYTES])),
            trailers: Some(trailers),
        }))
    }

    /// Serves `router` on one in-memory HTTP/2 connection through `Connection::serve`, whose
    /// writes carrying bytes are counted; returns the client's sender, the count, and the stop
    /// signal's sender (dropping it drains the connection).
    async fn serve_counting_writes(
        router: Router,
    ) -> (
        hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
        Arc<AtomicUsize>,
        watch::Sender<bool>,
    ) {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(AtomicUsize::new(0));
        let (stop, draining) = watch::channel(false);
        let connection = Connection {
            app: App::Router(router),
            builder: connection_builder(Protocols::Http2Only, Http2Settings::CLIENT),
            draining,
            what: "test",
        };
        tokio::spawn(connection.serve(CountingIo {
            inner: server_io,
            writes: writes.clone(),
        }));
        let (sender, client_connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client_io))
                .await
                .expect("HTTP/2 handshake");
        tokio::spawn(client_connection);
        (sender, writes, stop)
    }

    /// h2 chains a DATA payload over 256 bytes as its own buffer when the stream takes
    /// vectored writes, and takes no further frame until that buffer is written: the trailers
    /// then need a second write. Served by `Connection::serve`, a response of 300 bytes and
    /// trailers is one write (h2 told the stream takes no vectored writes, by `CoalescingIo`;
    /// without that this test sees two).
    #[tokio::test]
    async fn a_unary_response_and_its_trailers_leave_in_one_write() {
        let router = Router::new().route("/unary", axum::routing::post(unary_response));
        let (mut sender, writes, _stop) = serve_counting_writes(router).await;
        let rounds = 4;
        for round in 0..rounds {
            let before = writes.load(Ordering::SeqCst);
            let request = Request::post("http://test/unary")
                .body(http_body_util::Empty::<Bytes>::new())
                .expect("request");
            let response = sender.send_request(request).await.expect("response");
            let collected = response.into_body().collect().await.expect("body");
            let trailers = collected.trailers().cloned().expect("trailers");
            assert_eq!(
                trailers.get("grpc-status").map(|v| v.as_bytes()),
                Some(&b"0"[..])
            );
            assert_eq!(collected.to_bytes().len(), PAYLOAD_BYTES);
            let response_writes = writes.load(Ordering::SeqCst) - before;
            // The first round also carries the connection's SETTINGS frames.
            if round > 0 {
                assert_eq!(
                    response_writes, 1,
                    "round {round}: the response took {response_writes} writes"
                );
            }
        }
    }

    /// Responses that become ready together leave in fewer writes than responses
    /// (`coalesce.rs`). Requests on one connection wait for one signal; once it is given their
    /// handlers finish together. On a one-worker multi-threaded runtime (tokio's LIFO slot runs
    /// the woken connection task right after each handler) the connection wrote each response
    /// as it came: one write each (16 and 48, checked with the deferral off). Now 16 take 1-2
    /// writes (a self-wake) and 48 take 13-14 (tokio's deferred wake, ended early by the next
    /// response): at most half as many writes as responses.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn responses_ready_together_share_writes() {
        // Below and above the count from which a write waits for an idle worker.
        responses_ready_together(16).await;
        responses_ready_together(2 * crate::coalesce::DEFER_TO_IDLE_IN_FLIGHT_MIN).await;
    }

    async fn responses_ready_together(requests: usize) {
        let (go, ready) = watch::channel(false);
        let arrived = Arc::new(AtomicUsize::new(0));
        let handler = {
            let arrived = arrived.clone();
            move || {
                let mut ready = ready.clone();
                let arrived = arrived.clone();
                async move {
                    arrived.fetch_add(1, Ordering::SeqCst);
                    let _ = ready.wait_for(|go| *go).await;
                    unary_response().await
                }
            }
        };
        let router = Router::new().route("/unary", axum::routing::post(handler));
        let (sender, writes, _stop) = serve_counting_writes(router).await;
        let mut calls = Vec::new();
        for _ in 0..requests {
            let mut sender = sender.clone();
            calls.push(tokio::spawn(async move {
                let request = Request::post("http://test/unary")
                    .body(http_body_util::Empty::<Bytes>::new())
                    .expect("request");
                let response = sender.send_request(request).await.expect("response");
                let collected = response.into_body().collect().await.expect("body");
                collected.to_bytes().len()
            }));
        }
        while arrived.load(Ordering::SeqCst) < requests {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Every handler waits; what the connection wrote so far (SETTINGS, acks) is done.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let before = writes.load(Ordering::SeqCst);
        go.send(true).expect("handlers listen");
        for call in calls {
            assert_eq!(call.await.expect("call"), PAYLOAD_BYTES);
        }
        let response_writes = writes.load(Ordering::SeqCst) - before;
        assert!(
            response_writes <= requests / 2,
            "{requests} responses ready together took {response_writes} writes"
        );
    }
}
