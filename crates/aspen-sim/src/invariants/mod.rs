//! What every seed must satisfy, one invariant per file. Each check returns the violations it
//! found, in words; an empty list is a pass.

pub mod convergence;
pub mod durability;
pub mod leases;
pub mod linearizable;
pub mod revision;
pub mod watch;
