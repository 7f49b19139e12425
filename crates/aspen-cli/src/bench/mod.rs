//! `aspenctl bench`: a closed-loop load generator over the etcd v3 API, so the same command
//! measures etcd and Aspen. `--clients` requests are in flight at once, each client sending its
//! next request when its last one is answered, over `--conns` gRPC channels spread round-robin
//! over the endpoints (as etcd's own `benchmark` tool spreads them).

mod driver;
mod wire;
mod workloads;

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use crate::cli::Consistency;
use crate::cmd::Ctx;
use crate::error::CliError;
use crate::limits::{
    BENCH_CLIENTS_MAX, BENCH_CONNS_MAX, BENCH_DURATION_S_MAX, BENCH_KEY_SPACE_MAX,
    BENCH_RANGE_LIMIT_MAX, BENCH_VAL_BYTES_MAX, BENCH_WATCHERS_MAX,
};

pub use driver::Report;
use workloads::KvConn;

/// Seconds a run lasts when neither `--total` nor `--duration-s` is given.
const DURATION_S_DEFAULT: u64 = 10;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Requests in flight at once (closed loop)
    #[arg(long, default_value_t = 1)]
    pub clients: u32,
    /// gRPC channels (HTTP/2 connections) shared by the clients, round-robin over --endpoints
    #[arg(long, default_value_t = 1)]
    pub conns: u32,
    /// Stop after this many requests
    #[arg(long, conflicts_with = "duration_s")]
    pub total: Option<u64>,
    /// Stop after this many seconds [default: 10 when --total is not given]
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// Print one JSON object on stdout (for scripts) instead of text
    #[arg(long)]
    pub json: bool,
    /// Seed for the keys each client picks
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How KV calls are sent: h2 (the bench's own unary gRPC client, a request's frames in one
    /// write as grpc-go sends them) or tonic (tonic's generated client); watch-fanout's
    /// watchers are streams and always use tonic
    #[arg(long, value_enum, default_value = "h2")]
    pub wire: Wire,
    #[command(subcommand)]
    pub workload: Workload,
}

#[derive(Debug, Subcommand)]
pub enum Workload {
    /// Put random keys (or, with --sequential-keys, keys 0, 1, 2, ... in order)
    Put {
        /// Distinct keys written
        #[arg(long, default_value_t = 100_000)]
        key_space: u64,
        /// Value size in bytes
        #[arg(long, default_value_t = 256)]
        val_size: u32,
        /// Put keys 0, 1, 2, ... in order, shared by the clients (wrapping at --key-space),
        /// instead of random keys; without --total or --duration-s the run puts each key of
        /// the key space exactly once, then stops
        #[arg(long)]
        sequential_keys: bool,
    },
    /// Get random keys (written first)
    Get {
        /// l: linearizable, s: serializable
        #[arg(long, value_enum, default_value = "l")]
        consistency: Consistency,
        #[arg(long, default_value_t = 1_000)]
        key_space: u64,
        #[arg(long, default_value_t = 256)]
        val_size: u32,
        /// Do not write the keys first (an earlier run wrote them, e.g. `put --sequential-keys`)
        #[arg(long)]
        no_populate: bool,
    },
    /// Compare-and-swap: Txn(mod_revision = last seen) then put, else read the key back
    TxnCas {
        /// Distinct keys (0: one per client, no conflicts)
        #[arg(long, default_value_t = 0)]
        key_space: u64,
        #[arg(long, default_value_t = 256)]
        val_size: u32,
    },
    /// Range reads of --limit keys from a random start (keys written first)
    Range {
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long, value_enum, default_value = "l")]
        consistency: Consistency,
        #[arg(long, default_value_t = 10_000)]
        key_space: u64,
        #[arg(long, default_value_t = 256)]
        val_size: u32,
        /// Do not write the keys first (an earlier run wrote them, e.g. `put --sequential-keys`)
        #[arg(long)]
        no_populate: bool,
    },
    /// --clients put; latency is from each put to each watcher seeing it
    WatchFanout {
        #[arg(long, default_value_t = 100)]
        watchers: u32,
        #[arg(long, default_value_t = 64)]
        val_size: u32,
    },
}

impl Workload {
    pub fn name(&self) -> String {
        match self {
            Workload::Put { .. } => "put".into(),
            Workload::Get { consistency, .. } => format!("get-{}", consistency_name(*consistency)),
            Workload::TxnCas { .. } => "txn-cas".into(),
            Workload::Range { consistency, .. } => {
                format!("range-{}", consistency_name(*consistency))
            }
            Workload::WatchFanout { .. } => "watch-fanout".into(),
        }
    }

    fn check(&self) -> Result<(), CliError> {
        let (key_space, val_size) = match self {
            Workload::Put {
                key_space,
                val_size,
                ..
            }
            | Workload::Get {
                key_space,
                val_size,
                ..
            }
            | Workload::Range {
                key_space,
                val_size,
                ..
            } => (*key_space, *val_size),
            Workload::TxnCas {
                key_space,
                val_size,
            } => ((*key_space).max(1), *val_size),
            Workload::WatchFanout { watchers, val_size } => {
                if *watchers == 0 || *watchers > BENCH_WATCHERS_MAX {
                    return Err(CliError::usage(format!(
                        "bench: --watchers must be 1..={BENCH_WATCHERS_MAX}"
                    )));
                }
                (1, *val_size)
            }
        };
        if key_space == 0 || key_space > BENCH_KEY_SPACE_MAX {
            return Err(CliError::usage(format!(
                "bench: --key-space must be 1..={BENCH_KEY_SPACE_MAX}"
            )));
        }
        if val_size > BENCH_VAL_BYTES_MAX {
            return Err(CliError::usage(format!(
                "bench: --val-size must be at most {BENCH_VAL_BYTES_MAX}"
            )));
        }
        if let Workload::Range { limit, .. } = self
            && (*limit <= 0 || *limit > BENCH_RANGE_LIMIT_MAX)
        {
            return Err(CliError::usage(format!(
                "bench: --limit must be 1..={BENCH_RANGE_LIMIT_MAX}"
            )));
        }
        Ok(())
    }
}

fn consistency_name(consistency: Consistency) -> &'static str {
    match consistency {
        Consistency::L => "linearizable",
        Consistency::S => "serializable",
    }
}

/// The client that sends the bench's unary KV calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Wire {
    H2,
    Tonic,
}

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Total(u64),
    Duration(Duration),
}

fn limit(args: &BenchArgs) -> Result<Limit, CliError> {
    match (args.total, args.duration_s) {
        (Some(0), _) => Err(CliError::usage("bench: --total must be positive")),
        (Some(total), _) => Ok(Limit::Total(total)),
        (None, Some(seconds)) if seconds == 0 || seconds > BENCH_DURATION_S_MAX => {
            Err(CliError::usage(format!(
                "bench: --duration-s must be 1..={BENCH_DURATION_S_MAX}"
            )))
        }
        (None, None) => match args.workload {
            // Each key of the key space once.
            Workload::Put {
                key_space,
                sequential_keys: true,
                ..
            } => Ok(Limit::Total(key_space)),
            _ => Ok(Limit::Duration(Duration::from_secs(DURATION_S_DEFAULT))),
        },
        (None, Some(seconds)) => Ok(Limit::Duration(Duration::from_secs(seconds))),
    }
}

/// Opens `--conns` connections now, spread round-robin over the endpoints, so an unreachable
/// server is a connection error before the run starts.
/// With --user, each authenticates on its endpoint and its requests carry the token.
async fn connections(ctx: &Ctx, conns: u32, wire: Wire) -> Result<Vec<KvConn>, CliError> {
    let mut connections = Vec::with_capacity(conns as usize);
    for index in 0..conns as usize {
        let url = &ctx.endpoints[index % ctx.endpoints.len()];
        let conn = match wire {
            Wire::Tonic => KvConn::Tonic(ctx.dial.connect_authed(url).await?),
            Wire::H2 => {
                let token = ctx.dial.token_for(url).await?;
                let tls = ctx.dial.tls_connector(url)?;
                let channel =
                    wire::WireChannel::connect(url, ctx.dial.dial_timeout, tls, token).await?;
                let uris = std::sync::Arc::new(channel.kv_uris()?);
                KvConn::Wire(channel, uris)
            }
        };
        connections.push(conn);
    }
    Ok(connections)
}

pub async fn run(ctx: &Ctx, args: BenchArgs) -> Result<(), CliError> {
    if args.clients == 0 || args.clients > BENCH_CLIENTS_MAX {
        return Err(CliError::usage(format!(
            "bench: --clients must be 1..={BENCH_CLIENTS_MAX}"
        )));
    }
    if args.conns == 0 || args.conns > BENCH_CONNS_MAX {
        return Err(CliError::usage(format!(
            "bench: --conns must be 1..={BENCH_CONNS_MAX}"
        )));
    }
    args.workload.check()?;
    let limit = limit(&args)?;
    let wire = match args.workload {
        Workload::WatchFanout { .. } => Wire::Tonic,
        _ => args.wire,
    };
    let connections = connections(ctx, args.conns, wire).await?;
    let settings = driver::Settings {
        clients: args.clients,
        limit,
        seed: args.seed,
        show_progress: true,
        command_timeout: ctx.dial.command_timeout,
    };
    let mut report = workloads::run(&args.workload, &connections, &settings).await?;
    report.conns = args.conns;
    // At most ENDPOINTS_MAX (64), checked when the list is parsed.
    report.endpoints = u32::try_from(ctx.endpoints.len()).unwrap_or(u32::MAX);
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    if report.ops == 0 {
        return Err(CliError::request(format!(
            "bench {}: no request succeeded{}",
            report.workload,
            report
                .first_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> BenchArgs {
        let argv = std::iter::once("bench").chain(args.iter().copied());
        Wrapper::try_parse_from(argv)
            .expect("valid bench args")
            .bench
    }

    #[test]
    fn sequential_keys_put_each_key_once_unless_limited() {
        let once = parse(&["put", "--sequential-keys", "--key-space", "500"]);
        assert_eq!(limit(&once).ok(), Some(Limit::Total(500)));
        let total = parse(&[
            "--total",
            "20",
            "put",
            "--sequential-keys",
            "--key-space",
            "500",
        ]);
        assert_eq!(limit(&total).ok(), Some(Limit::Total(20)));
        let timed = parse(&["--duration-s", "3", "put", "--sequential-keys"]);
        assert_eq!(
            limit(&timed).ok(),
            Some(Limit::Duration(Duration::from_secs(3)))
        );
        let random = parse(&["put", "--key-space", "500"]);
        assert_eq!(
            limit(&random).ok(),
            Some(Limit::Duration(Duration::from_secs(DURATION_S_DEFAULT)))
        );
    }

    #[test]
    fn get_and_range_can_skip_writing_keys() {
        let get = parse(&["get", "--no-populate"]);
        assert!(matches!(
            get.workload,
            Workload::Get {
                no_populate: true,
                ..
            }
        ));
        let range = parse(&["range"]);
        assert!(matches!(
            range.workload,
            Workload::Range {
                no_populate: false,
                ..
            }
        ));
    }
}
