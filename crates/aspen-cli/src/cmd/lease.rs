//! lease grant, revoke, timetolive, list and keep-alive, printed as etcdctl prints them.

use std::time::Duration;

use aspen_proto::etcdserverpb as pb;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::Ctx;
use crate::cli::LeaseCommand;
use crate::error::CliError;
use crate::output::{self, WriteOut, print_json, text};
use crate::request::parse_lease_id;

/// Keep-alive requests in flight; one is sent per renewal, so two is plenty.
const KEEPALIVE_REQUESTS_BUFFERED_MAX: usize = 2;
/// Shortest pause between renewals, whatever the TTL.
const KEEPALIVE_INTERVAL_MS_MIN: u64 = 500;

pub async fn run(ctx: &Ctx, command: LeaseCommand) -> Result<(), CliError> {
    match command {
        LeaseCommand::Grant { ttl } => grant(ctx, ttl).await,
        LeaseCommand::Revoke { id } => revoke(ctx, &id).await,
        LeaseCommand::Timetolive { id, keys } => time_to_live(ctx, &id, keys).await,
        LeaseCommand::List => list(ctx).await,
        LeaseCommand::KeepAlive { id, once } => keep_alive(ctx, &id, once).await,
    }
}

async fn grant(ctx: &Ctx, ttl: i64) -> Result<(), CliError> {
    if ttl <= 0 {
        return Err(CliError::usage(
            "lease grant: the TTL must be positive (seconds)",
        ));
    }
    let conn = ctx.conn().await?;
    let request = pb::LeaseGrantRequest { ttl, id: 0 };
    let response = conn
        .call(
            "lease grant",
            conn.lease().lease_grant(conn.request(request)),
        )
        .await?;
    if !response.error.is_empty() {
        return Err(CliError::request(format!(
            "lease grant: {}",
            response.error
        )));
    }
    match ctx.write_out {
        WriteOut::Json => print_json(&json!({
            "header": output::header_json(response.header.as_ref()),
            "ID": response.id,
            "TTL": response.ttl,
        })),
        _ => println!(
            "lease {:016x} granted with TTL({}s)",
            response.id as u64, response.ttl
        ),
    }
    Ok(())
}

async fn revoke(ctx: &Ctx, id: &str) -> Result<(), CliError> {
    let lease = parse_lease_id(id)?;
    let conn = ctx.conn().await?;
    let request = pb::LeaseRevokeRequest { id: lease };
    let what = format!("lease revoke {id}");
    let response = conn
        .call(&what, conn.lease().lease_revoke(conn.request(request)))
        .await?;
    match ctx.write_out {
        WriteOut::Json => print_json(&json!({
            "header": output::header_json(response.header.as_ref()),
        })),
        _ => println!("lease {:016x} revoked", lease as u64),
    }
    Ok(())
}

async fn time_to_live(ctx: &Ctx, id: &str, keys: bool) -> Result<(), CliError> {
    let lease = parse_lease_id(id)?;
    let conn = ctx.conn().await?;
    let request = pb::LeaseTimeToLiveRequest { id: lease, keys };
    let what = format!("lease timetolive {id}");
    let response = conn
        .call(
            &what,
            conn.lease().lease_time_to_live(conn.request(request)),
        )
        .await?;
    if ctx.write_out == WriteOut::Json {
        let keys: Vec<String> = response.keys.iter().map(|k| output::base64(k)).collect();
        print_json(&json!({
            "header": output::header_json(response.header.as_ref()),
            "ID": response.id,
            "TTL": response.ttl,
            "granted-ttl": response.granted_ttl,
            "keys": keys,
        }));
        return Ok(());
    }
    if response.ttl == -1 {
        println!("lease {:016x} already expired", lease as u64);
        return Ok(());
    }
    let mut line = format!(
        "lease {:016x} granted with TTL({}s), remaining({}s)",
        lease as u64, response.granted_ttl, response.ttl
    );
    if keys {
        let names: Vec<String> = response.keys.iter().map(|k| text(k)).collect();
        line.push_str(&format!(", attached keys([{}])", names.join(" ")));
    }
    println!("{line}");
    Ok(())
}

async fn list(ctx: &Ctx) -> Result<(), CliError> {
    let conn = ctx.conn().await?;
    let response = conn
        .call(
            "lease list",
            conn.lease()
                .lease_leases(conn.request(pb::LeaseLeasesRequest {})),
        )
        .await?;
    match ctx.write_out {
        WriteOut::Json => {
            let ids: Vec<_> = response
                .leases
                .iter()
                .map(|l| json!({ "ID": l.id }))
                .collect();
            print_json(&json!({
                "header": output::header_json(response.header.as_ref()),
                "leases": ids,
            }));
        }
        WriteOut::Table => {
            let rows: Vec<Vec<String>> = response
                .leases
                .iter()
                .map(|l| vec![format!("{:016x}", l.id as u64)])
                .collect();
            print!("{}", output::table(&["ID"], &rows));
        }
        WriteOut::Simple => {
            println!("found {} leases", response.leases.len());
            for lease in &response.leases {
                println!("{:016x}", lease.id as u64);
            }
        }
    }
    Ok(())
}

/// Renews every TTL/3 (as clientv3 does) until Ctrl-C, the lease ends, or after one renewal
/// with `--once`.
async fn keep_alive(ctx: &Ctx, id: &str, once: bool) -> Result<(), CliError> {
    let lease = parse_lease_id(id)?;
    let conn = ctx.conn().await?;
    let what = format!("lease keep-alive {id}");
    let (requests, receiver) = mpsc::channel(KEEPALIVE_REQUESTS_BUFFERED_MAX);
    let _ = requests.send(pb::LeaseKeepAliveRequest { id: lease }).await;
    let mut responses = conn
        .lease()
        .lease_keep_alive(ReceiverStream::new(receiver))
        .await
        .map_err(|status| CliError::from_status(&what, &status))?
        .into_inner();
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    // Bounded by Ctrl-C, the lease's end, or --once.
    loop {
        let message = tokio::select! {
            message = tokio::time::timeout(conn.command_timeout, responses.message()) => message,
            _ = &mut interrupted => return Ok(()),
        };
        let response = match message {
            Ok(Ok(Some(response))) => response,
            Ok(Ok(None)) => {
                return Err(CliError::connection(format!(
                    "{what}: the server closed the stream"
                )));
            }
            Ok(Err(status)) => return Err(CliError::from_status(&what, &status)),
            Err(_) => {
                return Err(CliError::request(format!(
                    "{what}: no answer within {:?} (--command-timeout)",
                    conn.command_timeout
                )));
            }
        };
        if response.ttl <= 0 {
            return Err(CliError::request(format!(
                "{what}: lease {:016x} expired or revoked",
                lease as u64
            )));
        }
        print_keep_alive(ctx, &response);
        if once {
            return Ok(());
        }
        let pause_ms = (response.ttl as u64 * 1000 / 3).max(KEEPALIVE_INTERVAL_MS_MIN);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(pause_ms)) => {}
            _ = &mut interrupted => return Ok(()),
        }
        if requests
            .send(pb::LeaseKeepAliveRequest { id: lease })
            .await
            .is_err()
        {
            return Err(CliError::connection(format!("{what}: the stream ended")));
        }
    }
}

fn print_keep_alive(ctx: &Ctx, response: &pb::LeaseKeepAliveResponse) {
    match ctx.write_out {
        WriteOut::Json => print_json(&json!({
            "header": output::header_json(response.header.as_ref()),
            "ID": response.id,
            "TTL": response.ttl,
        })),
        _ => println!(
            "lease {:016x} keepalived with TTL({})",
            response.id as u64, response.ttl
        ),
    }
}
