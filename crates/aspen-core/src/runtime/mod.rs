//! openraft's async runtime for Aspen: tokio, with the two things a seeded simulation must
//! control made deterministic, and nothing else changed.
//!
//! - openraft's random draws (election timeouts, tick jitter) come from a per-thread
//!   generator that a simulator can seed. In production nothing seeds it and every draw
//!   comes from the operating system's entropy, as with openraft's own `TokioRuntime`.
//! - Watch channels wake their receivers in a fixed order ([`watch`]); tokio's watch picks
//!   among internal queues at random.
//!
//! The simulator (`aspen-sim`) runs a whole cluster on one thread and calls
//! [`seed_thread_rng`] first, so that a seed replays the same elections. Everything else is
//! delegated to `TokioRuntime` unchanged.
//!
//! Under `--cfg madsim` (the simulator's build, never production) the runtime is madsim's
//! instead ([`madsim_rt`]): spawn, sleep and timeouts on madsim's executor and clock; the
//! channels, mutex and watch stay the same tokio-sync-based types, which need no executor.

#[cfg(madsim)]
mod madsim_rt;
pub mod watch;

use std::cell::Cell;
use std::convert::Infallible;
#[cfg(not(madsim))]
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
#[cfg(not(madsim))]
use std::time::Duration;

#[cfg(not(madsim))]
use openraft::rt::{AsyncRuntime, OptionalSend};
#[cfg(not(madsim))]
use openraft_rt_tokio::TokioRuntime;

#[cfg(madsim)]
pub use madsim_rt::{AspenRuntime, MadsimTimeout};

#[cfg(not(madsim))]
type Tokio = TokioRuntime;

thread_local! {
    /// SplitMix64 state of this thread's seeded generator; `None`: draw from entropy.
    static SEEDED_STATE: Cell<Option<u64>> = const { Cell::new(None) };
}

/// True when blocking storage work (an fsync, a compaction step) may move off the calling task
/// to another thread: only on a multi-threaded tokio runtime (the server). A current-thread
/// runtime (tests, the paused-clock simulator) and madsim keep it on the task, so that a
/// simulation's interleaving never depends on the OS scheduler.
#[cfg(not(madsim))]
pub fn blocking_work_may_leave_the_task() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|handle| handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Under madsim: never (madsim refuses other threads in a run).
#[cfg(madsim)]
pub fn blocking_work_may_leave_the_task() -> bool {
    false
}

/// Makes every later draw by openraft on this thread come from a generator seeded with
/// `seed`. For simulation only: a seeded election timeout is predictable.
pub fn seed_thread_rng(seed: u64) {
    SEEDED_STATE.with(|state| state.set(Some(seed)));
}

/// Returns this thread to entropy-seeded draws.
pub fn unseed_thread_rng() {
    SEEDED_STATE.with(|state| state.set(None));
}

/// SplitMix64: one step of the state and its output.
fn splitmix64(state: u64) -> (u64, u64) {
    let next = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = next;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (next, z ^ (z >> 31))
}

fn next_u64() -> u64 {
    SEEDED_STATE.with(|state| match state.get() {
        Some(current) => {
            let (next, output) = splitmix64(current);
            state.set(Some(next));
            output
        }
        // Each RandomState gets fresh keys, drawn once per thread from the OS.
        None => RandomState::new().hash_one(0u64),
    })
}

/// The generator openraft gets from [`AspenRuntime::thread_rng`]: a handle on this thread's
/// state, seeded or not.
#[derive(Debug, Clone, Copy, Default)]
pub struct RaftRng;

impl rand_core::TryRng for RaftRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((next_u64() >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let bytes = next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

/// Tokio, with [`RaftRng`] as openraft's random source.
#[cfg(not(madsim))]
#[derive(Debug)]
pub struct AspenRuntime {
    inner: Tokio,
}

#[cfg(not(madsim))]
impl AsyncRuntime for AspenRuntime {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as AsyncRuntime>::Sleep;
    type Instant = <Tokio as AsyncRuntime>::Instant;
    type TimeoutError = <Tokio as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Tokio as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = RaftRng;

    #[inline]
    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        Tokio::spawn(future)
    }

    #[inline]
    fn sleep(duration: Duration) -> Self::Sleep {
        Tokio::sleep(duration)
    }

    #[inline]
    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }

    #[inline]
    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout(duration, future)
    }

    #[inline]
    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout_at(deadline, future)
    }

    #[inline]
    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }

    #[inline]
    fn thread_rng() -> Self::ThreadLocalRng {
        RaftRng
    }

    type Mpsc = <Tokio as AsyncRuntime>::Mpsc;
    type Watch = watch::AspenWatch;
    type Oneshot = <Tokio as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::Mutex<T>;

    fn new(threads: usize) -> Self {
        AspenRuntime {
            inner: Tokio::new(threads),
        }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.inner.block_on(future)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::Rng;

    #[test]
    fn seeded_draws_repeat_and_unseeded_draws_differ() {
        seed_thread_rng(42);
        let first: Vec<u64> = (0..4).map(|_| RaftRng.next_u64()).collect();
        seed_thread_rng(42);
        let second: Vec<u64> = (0..4).map(|_| RaftRng.next_u64()).collect();
        assert_eq!(first, second);
        unseed_thread_rng();
        let a = RaftRng.next_u64();
        let b = RaftRng.next_u64();
        assert_ne!(a, b);
    }
}
