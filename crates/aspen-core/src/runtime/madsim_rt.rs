//! openraft's runtime on madsim (only under `--cfg madsim`, the simulator's build).
//!
//! Spawning, sleeping and timeouts go to madsim's executor and clock through madsim-tokio
//! (`tokio::spawn`, `tokio::time` are madsim's in this build). madsim's clock is read through
//! `std::time::Instant` (madsim intercepts `clock_gettime`), which already implements
//! openraft's `Instant`. madsim's `timeout` returns an unnameable future and it has no
//! `timeout_at`, so [`MadsimTimeout`] races the future against a madsim `Sleep` itself. The
//! random source stays [`RaftRng`](super::RaftRng), seeded by the simulator per thread; the
//! channels, mutex and watch are the tokio-sync-based types the production runtime uses
//! (they need no executor).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use openraft::rt::{AsyncRuntime, OptionalSend};
use openraft_rt_tokio::TokioRuntime;

use super::{RaftRng, watch};

/// madsim, with [`RaftRng`] as openraft's random source.
pub struct AspenRuntime {
    inner: madsim::runtime::Runtime,
}

impl fmt::Debug for AspenRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AspenRuntime").finish_non_exhaustive()
    }
}

/// A future bounded by a deadline on madsim's clock: the future wins ties (polled first).
pub struct MadsimTimeout<F> {
    future: Pin<Box<F>>,
    sleep: tokio::time::Sleep,
}

impl<F: Future> Future for MadsimTimeout<F> {
    type Output = Result<F::Output, tokio::time::error::Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(output) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        // `Sleep` is `Unpin` (a clock handle and a deadline).
        match Pin::new(&mut self.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(tokio::time::error::Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRuntime for AspenRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = Instant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = MadsimTimeout<T>;
    type ThreadLocalRng = RaftRng;

    #[inline]
    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::spawn(future)
    }

    #[inline]
    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    #[inline]
    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline)
    }

    #[inline]
    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        MadsimTimeout {
            future: Box::pin(future),
            sleep: tokio::time::sleep(duration),
        }
    }

    #[inline]
    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        MadsimTimeout {
            future: Box::pin(future),
            sleep: tokio::time::sleep_until(deadline),
        }
    }

    #[inline]
    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    #[inline]
    fn thread_rng() -> Self::ThreadLocalRng {
        RaftRng
    }

    type Mpsc = <TokioRuntime as AsyncRuntime>::Mpsc;
    type Watch = watch::AspenWatch;
    type Oneshot = <TokioRuntime as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::Mutex<T>;

    /// A madsim runtime with seed 0; `threads` is meaningless there (one thread).
    fn new(_threads: usize) -> Self {
        AspenRuntime {
            inner: madsim::runtime::Runtime::new(),
        }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.inner.block_on(future)
    }
}
