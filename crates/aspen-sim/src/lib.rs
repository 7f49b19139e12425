//! Deterministic simulation of Aspen clusters.
//!
//! A run puts 3 or 5 real [`aspen_node::Node`]s (with their Raft configuration, redb state
//! machine and request path) in one thread, on simulated disks that keep only synced bytes
//! across a crash, connected by a simulated network that implements the node's two
//! transport seams. Concurrent clients issue put, get, delete and compare-and-swap requests,
//! lease clients grant, keep alive, revoke and abandon leases with keys attached, a compactor
//! compacts near the head, and watchers follow every key through the nodes' watch hubs, while
//! a nemesis injects faults; afterwards the run heals and checks, per seed: linearizability of
//! the clients' history, convergence of the replicas, that no acknowledged write was lost,
//! that revisions only move forward, that every watch stream matches the MVCC history without
//! a gap (across compactions too), and that lease revocation and expiry delete exactly the
//! attached keys, once.
//!
//! Determinism: built with `RUSTFLAGS="--cfg madsim"`, each seed runs on a madsim runtime
//! seeded with it (madsim's executor, clock and randomness; openraft runs on it through
//! `aspen_core::runtime::AspenRuntime`); in a plain build, on a paused single-threaded tokio
//! runtime. Either way one seeded generator makes every choice the simulator makes, and
//! openraft's own random draws are seeded through `aspen_core::runtime`. The same seed gives
//! the same trace hash; `tests/` asserts it. See README.md for what is simulated and what is
//! not.

pub mod cluster;
pub mod compactor;
pub mod disk;
pub mod faults;
pub mod history;
pub mod invariants;
pub mod leases;
pub mod limits;
pub mod net;
pub mod rng;
pub mod runner;
pub mod supervisor;
pub mod trace;
pub mod transport;
pub mod watchers;
pub mod workload;

pub use runner::{EXECUTOR, SeedReport, SimConfig, run_script, run_seed};
