//! A connection's socket writes, gathered: responses that become ready together leave in one
//! write, while a lone response leaves at once.
//!
//! h2 writes whatever frames are queued each time the connection's task runs. Under load the
//! responses of one apply batch become ready together, but each handler task that finishes
//! wakes the connection task, and tokio runs a woken task next (its LIFO slot): so the
//! connection wrote each response as it came, one `sendto` per response (0.87 per put at 256
//! clients over 16 connections, 12 % of the server's CPU; docs/performance.md, session 19).
//!
//! [`CoalescingIo`] takes h2's bytes into a buffer of its own (`poll_write` never touches the
//! socket below [`WRITE_BUFFER_BYTES_MAX`]). On `poll_flush`, when other requests of the same
//! connection are still being served ([`InFlight`]), it defers the write once and returns
//! `Pending`, so that handler tasks already runnable queue their responses first and the next
//! flush writes them all:
//! - with few requests in flight, the task wakes itself, which puts it at the back of its
//!   worker's run queue: it waits only for the tasks queued before it;
//! - with [`DEFER_TO_IDLE_IN_FLIGHT_MIN`] or more (one connection carrying most of the load),
//!   it defers as tokio's `yield_now` does, without waking an idle worker: it runs again when
//!   its worker has run out of runnable tasks (at most 61 tasks, when tokio polls for I/O) or
//!   when it is woken before that, which in practice is the next response queued on the
//!   connection. Two or more responses per write, then (the serve test: 48 responses ready
//!   together, 13-14 writes; 16 with the self-wake, 1-2).
//!
//! It waits for nothing else: no timer, and tasks that are not runnable yet (a request
//! waiting on its log sync) are not waited for; new bytes from the client end the wait. With no
//! other request in flight (a lone client, a streaming peer call) the write is immediate, as
//! before, so a lone request pays no extra turn. grpc-go's "loopy writer" gathers writes the
//! same way.
//!
//! h2 is told that the stream takes no vectored writes: it then copies DATA payloads of up to
//! 1 KiB into its own buffer instead of chaining any over 256 bytes as a separate buffer, and
//! its encoder takes no further frame while a chained payload is pending (session 15).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes the buffer takes before `poll_write` first writes some of them to the socket: bounds
/// a connection's memory, and a few dozen small responses fit.
pub const WRITE_BUFFER_BYTES_MAX: usize = 64 * 1024;

/// Requests in flight on a connection from which its deferred write waits as tokio's
/// `yield_now` does instead of by a self-wake. Measured (session 19, alternating runs, one
/// node): at 32 clients over one connection the self-wake lost about 10 % of the put rate (it
/// also wakes an idle worker, which then steals the connection's tasks); at 256 clients over
/// 16 connections (16 in flight on each) it gave the lowest CPU per put.
pub const DEFER_TO_IDLE_IN_FLIGHT_MIN: usize = 24;

/// Requests of one connection whose response is not yet ready. Shared by the connection's
/// service (a [`InFlightGuard`] per request) and its [`CoalescingIo`].
#[derive(Clone, Debug, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Counts one request until the guard drops (its response is ready, or it was dropped).
    pub fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(Arc::clone(&self.0))
    }

    fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let before = self.0.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(before > 0, "in-flight count underflow");
    }
}

/// A connection's stream with its writes gathered (see the module doc).
pub struct CoalescingIo<S> {
    inner: S,
    /// Bytes h2 wrote that the socket has not taken yet; `written` of them already went.
    buffer: Vec<u8>,
    written: usize,
    in_flight: InFlight,
    /// This flush already gave other tasks their turn: the next flush writes.
    deferred: bool,
}

impl<S> CoalescingIo<S> {
    pub fn new(inner: S, in_flight: InFlight) -> CoalescingIo<S> {
        CoalescingIo {
            inner,
            buffer: Vec::new(),
            written: 0,
            in_flight,
            deferred: false,
        }
    }

    fn pending_bytes(&self) -> usize {
        self.buffer.len() - self.written
    }
}

impl<S: AsyncWrite + Unpin> CoalescingIo<S> {
    /// Writes the buffer to the socket until it is empty (`Ready`) or the socket is full
    /// (`Pending`, woken by the socket).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending_bytes() > 0 {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buffer[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
            assert!(self.written <= self.buffer.len());
        }
        self.buffer.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CoalescingIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CoalescingIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.pending_bytes() + buf.len() > WRITE_BUFFER_BYTES_MAX {
            ready!(self.poll_drain(cx))?;
            // A payload the buffer could not hold goes straight to the socket, uncopied.
            if buf.len() >= WRITE_BUFFER_BYTES_MAX {
                return Pin::new(&mut self.inner).poll_write(cx, buf);
            }
        }
        assert!(self.pending_bytes() + buf.len() <= WRITE_BUFFER_BYTES_MAX);
        self.buffer.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending_bytes() > 0 {
            let in_flight = self.in_flight.count();
            if !self.deferred && in_flight > 0 {
                self.deferred = true;
                if in_flight >= DEFER_TO_IDLE_IN_FLIGHT_MIN {
                    // tokio wakes a deferred task once its worker has run out of runnable
                    // tasks (or at its next I/O poll, every 61 tasks at most), unless a
                    // response queued meanwhile wakes it first.
                    let mut turn = std::pin::pin!(tokio::task::yield_now());
                    let _ = std::future::Future::poll(turn.as_mut(), cx);
                } else {
                    // The back of the worker's run queue: behind the tasks queued now.
                    cx.waker().wake_by_ref();
                }
                return Poll::Pending;
            }
            ready!(self.poll_drain(cx))?;
        }
        self.deferred = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;
    use std::task::Waker;

    /// A socket that records each write, and takes at most `take_max` bytes per write (0: the
    /// socket is full, every write is `Pending`).
    #[derive(Default)]
    struct Socket {
        writes: Vec<Vec<u8>>,
        take_max: Option<usize>,
        shut: bool,
    }

    #[derive(Clone, Default)]
    struct SharedSocket(Arc<Mutex<Socket>>);

    impl SharedSocket {
        fn writes(&self) -> Vec<Vec<u8>> {
            self.0.lock().unwrap().writes.clone()
        }
        fn set_take_max(&self, take_max: Option<usize>) {
            self.0.lock().unwrap().take_max = take_max;
        }
    }

    impl AsyncWrite for SharedSocket {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let mut socket = self.0.lock().unwrap();
            let take = socket.take_max.map_or(buf.len(), |max| max.min(buf.len()));
            if take == 0 {
                return Poll::Pending;
            }
            socket.writes.push(buf[..take].to_vec());
            Poll::Ready(Ok(take))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.0.lock().unwrap().shut = true;
            Poll::Ready(Ok(()))
        }
    }

    /// Counts the wake-ups it receives.
    struct CountingWaker(AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A socket, its in-flight count and stream, and a waker counting its wake-ups.
    fn counted_io() -> (
        SharedSocket,
        InFlight,
        CoalescingIo<SharedSocket>,
        Arc<CountingWaker>,
        Waker,
    ) {
        let socket = SharedSocket::default();
        let in_flight = InFlight::default();
        let io = CoalescingIo::new(socket.clone(), in_flight.clone());
        let wakes = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        (socket, in_flight, io, wakes, waker)
    }

    fn write(
        io: &mut CoalescingIo<SharedSocket>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(io).poll_write(cx, bytes)
    }

    fn flush(io: &mut CoalescingIo<SharedSocket>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(io).poll_flush(cx)
    }

    #[test]
    fn with_nothing_else_in_flight_a_flush_writes_at_once() {
        let (socket, _in_flight, mut io, wakes, waker) = counted_io();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(
            write(&mut io, &mut cx, b"one"),
            Poll::Ready(Ok(3))
        ));
        assert!(
            socket.writes().is_empty(),
            "a write before the flush reached the socket"
        );
        assert!(matches!(flush(&mut io, &mut cx), Poll::Ready(Ok(()))));
        assert_eq!(socket.writes(), vec![b"one".to_vec()]);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn with_other_requests_in_flight_a_flush_waits_one_turn_and_then_writes_everything_once() {
        let (socket, in_flight, mut io, wakes, waker) = counted_io();
        let mut cx = Context::from_waker(&waker);
        let other = in_flight.enter();
        assert!(matches!(
            write(&mut io, &mut cx, b"first "),
            Poll::Ready(Ok(6))
        ));
        // Deferred: woken to run again after the tasks already runnable, nothing written.
        assert!(flush(&mut io, &mut cx).is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(socket.writes().is_empty());
        // Meanwhile another response was queued; the next flush writes both in one write,
        // even though a request is still in flight.
        assert!(matches!(
            write(&mut io, &mut cx, b"second"),
            Poll::Ready(Ok(6))
        ));
        assert!(matches!(flush(&mut io, &mut cx), Poll::Ready(Ok(()))));
        assert_eq!(socket.writes(), vec![b"first second".to_vec()]);
        // The next response defers again, once.
        assert!(matches!(
            write(&mut io, &mut cx, b"third"),
            Poll::Ready(Ok(5))
        ));
        assert!(flush(&mut io, &mut cx).is_pending());
        drop(other);
        assert!(matches!(flush(&mut io, &mut cx), Poll::Ready(Ok(()))));
        assert_eq!(socket.writes().len(), 2);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn with_many_requests_in_flight_a_flush_waits_for_the_worker_to_be_idle_once() {
        let (socket, in_flight, mut io, wakes, waker) = counted_io();
        let mut cx = Context::from_waker(&waker);
        let others: Vec<_> = (0..DEFER_TO_IDLE_IN_FLIGHT_MIN)
            .map(|_| in_flight.enter())
            .collect();
        assert!(matches!(
            write(&mut io, &mut cx, b"one"),
            Poll::Ready(Ok(3))
        ));
        assert!(flush(&mut io, &mut cx).is_pending());
        // Outside a runtime tokio's deferred wake is immediate; inside one it comes when the
        // worker runs out of tasks.
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(socket.writes().is_empty());
        assert!(matches!(flush(&mut io, &mut cx), Poll::Ready(Ok(()))));
        assert_eq!(socket.writes(), vec![b"one".to_vec()]);
        drop(others);
        assert_eq!(in_flight.count(), 0);
    }

    #[test]
    fn the_buffer_stays_bounded_and_a_full_socket_holds_the_writer_back() {
        let socket = SharedSocket::default();
        let mut io = CoalescingIo::new(socket.clone(), InFlight::default());
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let chunk = vec![1u8; WRITE_BUFFER_BYTES_MAX / 4];
        for _ in 0..4 {
            assert!(
                matches!(write(&mut io, &mut cx, &chunk), Poll::Ready(Ok(n)) if n == chunk.len())
            );
        }
        assert!(socket.writes().is_empty());
        assert_eq!(io.pending_bytes(), WRITE_BUFFER_BYTES_MAX);
        // Full: the next write first drains the buffer; a socket that takes nothing holds it.
        socket.set_take_max(Some(0));
        assert!(write(&mut io, &mut cx, b"x").is_pending());
        assert_eq!(io.pending_bytes(), WRITE_BUFFER_BYTES_MAX);
        // A socket taking a little at a time: partial writes drain it in order.
        socket.set_take_max(Some(WRITE_BUFFER_BYTES_MAX / 3));
        assert!(matches!(write(&mut io, &mut cx, b"x"), Poll::Ready(Ok(1))));
        assert_eq!(io.pending_bytes(), 1);
        let written: usize = socket.writes().iter().map(Vec::len).sum();
        assert_eq!(written, WRITE_BUFFER_BYTES_MAX);
        // A payload as large as the buffer skips it (after what was buffered before it).
        socket.set_take_max(None);
        let large = vec![2u8; WRITE_BUFFER_BYTES_MAX];
        assert!(matches!(write(&mut io, &mut cx, &large), Poll::Ready(Ok(n)) if n == large.len()));
        let writes = socket.writes();
        assert_eq!(writes[writes.len() - 2], b"x".to_vec());
        assert_eq!(writes[writes.len() - 1], large);
        assert_eq!(io.pending_bytes(), 0);
    }

    #[test]
    fn shutdown_writes_what_is_buffered_first() {
        let socket = SharedSocket::default();
        let in_flight = InFlight::default();
        let _other = in_flight.enter();
        let mut io = CoalescingIo::new(socket.clone(), in_flight);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(matches!(
            write(&mut io, &mut cx, b"goaway"),
            Poll::Ready(Ok(6))
        ));
        assert!(matches!(
            Pin::new(&mut io).poll_shutdown(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(socket.writes(), vec![b"goaway".to_vec()]);
        assert!(socket.0.lock().unwrap().shut);
    }
}
