//! endpoint status, endpoint health and defrag: one request per endpoint, or per member with
//! `--cluster` (members found through MemberList).

use std::time::{Duration, Instant};

use aspen_proto::etcdserverpb as pb;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::Ctx;
use super::member::member_list;
use crate::cli::{DefragArgs, EndpointCommand};
use crate::connect::{Dial, display_endpoint, endpoint_url};
use crate::error::{CliError, ErrorKind};
use crate::limits::CLUSTER_MEMBERS_MAX;
use crate::output::{self, WriteOut, hex_id, human_bytes, print_json};

pub async fn run(ctx: &Ctx, command: EndpointCommand) -> Result<(), CliError> {
    match command {
        EndpointCommand::Status(flag) => status(ctx, flag.cluster).await,
        EndpointCommand::Health(flag) => health(ctx, flag.cluster).await,
    }
}

/// The endpoints to ask and the members (for names). With `cluster`, every member's client
/// URLs; otherwise `--endpoints`, with the member list fetched only for names (best effort).
async fn targets(ctx: &Ctx, cluster: bool) -> Result<(Vec<String>, Vec<pb::Member>), CliError> {
    if !cluster {
        let members = match ctx.conn().await {
            Ok(conn) => member_list(&conn)
                .await
                .map(|r| r.members)
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        return Ok((ctx.endpoints.clone(), members));
    }
    let conn = ctx.conn().await?;
    let members = member_list(&conn).await?.members;
    if members.len() > CLUSTER_MEMBERS_MAX {
        return Err(CliError::request(format!(
            "member list: {} members, --cluster asks at most {CLUSTER_MEMBERS_MAX}",
            members.len()
        )));
    }
    let mut urls: Vec<String> = Vec::new();
    for member in &members {
        for url in &member.client_ur_ls {
            let url = endpoint_url(url, ctx.dial.tls.any_given())?;
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
    }
    if urls.is_empty() {
        return Err(CliError::request(
            "member list: no member advertises a client URL",
        ));
    }
    Ok((urls, members))
}

/// Runs `query` against every endpoint concurrently; results keep the endpoints' order.
async fn for_each_endpoint<T, F, Fut>(
    dial: &Dial,
    urls: &[String],
    query: F,
) -> Vec<Result<T, CliError>>
where
    T: Send + 'static,
    F: Fn(Dial, String) -> Fut,
    Fut: std::future::Future<Output = Result<T, CliError>> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    for (index, url) in urls.iter().enumerate() {
        let fut = query(dial.clone(), url.clone());
        tasks.spawn(async move { (index, fut.await) });
    }
    let mut results: Vec<Option<Result<T, CliError>>> = urls.iter().map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, result)) => results[index] = Some(result),
            Err(error) => task_panicked(error),
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(CliError::request("query task failed"))))
        .collect()
}

/// A query task panicked: that is a bug in aspenctl, so crash loudly.
fn task_panicked(error: tokio::task::JoinError) -> ! {
    panic!("endpoint query task failed: {error}")
}

/// The error to exit with after some endpoints failed: a connection failure if nothing at all
/// could be reached, else a request failure.
fn summary_error(what: &str, results_failed: &[&CliError], total: usize) -> CliError {
    let all_unreachable = results_failed.len() == total
        && results_failed
            .iter()
            .all(|e| e.kind == ErrorKind::Connection);
    let message = format!(
        "{what}: {} of {total} endpoints failed",
        results_failed.len()
    );
    if all_unreachable {
        CliError::connection(message)
    } else {
        CliError::request(message)
    }
}

async fn status_of(dial: Dial, url: String) -> Result<pb::StatusResponse, CliError> {
    let conn = dial.connect_conn(&url).await?;
    let what = format!("endpoint status {}", conn.endpoint);
    conn.call(
        &what,
        conn.maintenance()
            .status(conn.request(pb::StatusRequest {})),
    )
    .await
}

async fn status(ctx: &Ctx, cluster: bool) -> Result<(), CliError> {
    let (urls, members) = targets(ctx, cluster).await?;
    let results = for_each_endpoint(&ctx.dial, &urls, status_of).await;
    let name_of = |id: u64| {
        members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.name.clone())
            .unwrap_or_default()
    };
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    let mut failed = Vec::new();
    for (url, result) in urls.iter().zip(&results) {
        let endpoint = display_endpoint(url);
        match result {
            Ok(status) => {
                let id = status.header.as_ref().map_or(0, |h| h.member_id);
                rows.push(status_row(&endpoint, &name_of(id), status));
                json_rows.push(status_json(&endpoint, status));
                if ctx.write_out == WriteOut::Simple {
                    println!("{}", status_simple(&endpoint, status));
                }
            }
            Err(error) => {
                eprintln!("{error}");
                let mut row = vec!["-".to_string(); STATUS_HEADERS.len()];
                row[2] = endpoint.clone();
                row[STATUS_HEADERS.len() - 1] = short_error(error);
                rows.push(row);
                failed.push(error);
            }
        }
    }
    // A member that has not published its client URLs yet cannot be asked; still one row each.
    for member in members
        .iter()
        .filter(|m| cluster && m.client_ur_ls.is_empty())
    {
        let mut row = vec!["-".to_string(); STATUS_HEADERS.len()];
        row[0] = hex_id(member.id);
        row[1] = member.name.clone();
        row[STATUS_HEADERS.len() - 1] = "no client URL advertised".to_string();
        rows.push(row);
    }
    match ctx.write_out {
        WriteOut::Json => print_json(&Value::Array(json_rows)),
        WriteOut::Table => print!("{}", output::table(&STATUS_HEADERS, &rows)),
        WriteOut::Simple => {}
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(summary_error("endpoint status", &failed, urls.len()))
    }
}

const STATUS_HEADERS: [&str; 10] = [
    "ID",
    "NAME",
    "ENDPOINT",
    "LEADER",
    "TERM",
    "RAFT INDEX",
    "APPLIED INDEX",
    "DB SIZE",
    "VERSION",
    "ERRORS",
];

fn status_row(endpoint: &str, name: &str, status: &pb::StatusResponse) -> Vec<String> {
    let id = status.header.as_ref().map_or(0, |h| h.member_id);
    let leader = if status.leader != 0 && status.leader == id {
        "yes"
    } else {
        "no"
    };
    let leader = if status.is_learner {
        "no (learner)"
    } else {
        leader
    };
    vec![
        hex_id(id),
        name.to_string(),
        endpoint.to_string(),
        leader.to_string(),
        status.raft_term.to_string(),
        status.raft_index.to_string(),
        status.raft_applied_index.to_string(),
        human_bytes(status.db_size.max(0) as u64),
        status.version.clone(),
        status.errors.join("; "),
    ]
}

/// etcdctl's simple line: endpoint, id, version, db size, is leader, is learner, raft term,
/// raft index, raft applied index, errors.
fn status_simple(endpoint: &str, status: &pb::StatusResponse) -> String {
    let id = status.header.as_ref().map_or(0, |h| h.member_id);
    format!(
        "{endpoint}, {}, {}, {}, {}, {}, {}, {}, {}, {}",
        hex_id(id),
        status.version,
        human_bytes(status.db_size.max(0) as u64),
        status.leader != 0 && status.leader == id,
        status.is_learner,
        status.raft_term,
        status.raft_index,
        status.raft_applied_index,
        status.errors.join(", ")
    )
}

fn status_json(endpoint: &str, status: &pb::StatusResponse) -> Value {
    json!({
        "Endpoint": endpoint,
        "Status": {
            "header": output::header_json(status.header.as_ref()),
            "version": status.version,
            "dbSize": status.db_size,
            "leader": status.leader,
            "raftIndex": status.raft_index,
            "raftTerm": status.raft_term,
            "raftAppliedIndex": status.raft_applied_index,
            "errors": status.errors,
            "dbSizeInUse": status.db_size_in_use,
            "isLearner": status.is_learner,
        }
    })
}

fn short_error(error: &CliError) -> String {
    error.message.clone()
}

struct Health {
    endpoint: String,
    took: Duration,
    error: Option<String>,
}

/// etcdctl's health check: a linearizable read of "health" commits through the leader, and
/// no alarm may be raised.
async fn health_of(dial: Dial, url: String) -> Result<Health, CliError> {
    let endpoint = display_endpoint(&url);
    let conn = match dial.connect_conn(&url).await {
        Ok(conn) => conn,
        Err(error) => {
            return Ok(Health {
                endpoint,
                took: Duration::ZERO,
                error: Some(error.message),
            });
        }
    };
    let start = Instant::now();
    let read = pb::RangeRequest {
        key: b"health".to_vec(),
        ..Default::default()
    };
    let result = conn
        .call("get health", conn.kv().range(conn.request(read)))
        .await;
    let took = start.elapsed();
    if let Err(error) = result {
        return Ok(Health {
            endpoint,
            took,
            error: Some(format!("failed to commit proposal: {}", error.message)),
        });
    }
    let alarms = pb::AlarmRequest {
        action: pb::alarm_request::AlarmAction::Get as i32,
        member_id: 0,
        alarm: pb::AlarmType::None as i32,
    };
    let alarms = conn
        .call("alarm list", conn.maintenance().alarm(conn.request(alarms)))
        .await;
    let error = match alarms {
        Ok(response) if !response.alarms.is_empty() => {
            let names: Vec<&str> = response
                .alarms
                .iter()
                .map(|a| pb::AlarmType::try_from(a.alarm).map_or("UNKNOWN", |t| t.as_str_name()))
                .collect();
            Some(format!("Active Alarm(s): {}", names.join(", ")))
        }
        Ok(_) => None,
        Err(error) => Some(error.message),
    };
    Ok(Health {
        endpoint,
        took,
        error,
    })
}

async fn health(ctx: &Ctx, cluster: bool) -> Result<(), CliError> {
    let (urls, _) = targets(ctx, cluster).await?;
    let results = for_each_endpoint(&ctx.dial, &urls, health_of).await;
    let checks: Vec<Health> = results.into_iter().filter_map(Result::ok).collect();
    let unhealthy = checks.iter().filter(|h| h.error.is_some()).count();
    match ctx.write_out {
        WriteOut::Json => {
            let rows: Vec<Value> = checks
                .iter()
                .map(|h| {
                    json!({
                        "endpoint": h.endpoint,
                        "health": h.error.is_none(),
                        "took": format!("{:?}", h.took),
                        "error": h.error.clone().unwrap_or_default(),
                    })
                })
                .collect();
            print_json(&Value::Array(rows));
        }
        WriteOut::Table => {
            let rows: Vec<Vec<String>> = checks
                .iter()
                .map(|h| {
                    vec![
                        h.endpoint.clone(),
                        h.error.is_none().to_string(),
                        format!("{:?}", h.took),
                        h.error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(&["ENDPOINT", "HEALTH", "TOOK", "ERROR"], &rows)
            );
        }
        WriteOut::Simple => {
            for h in &checks {
                match &h.error {
                    None => println!(
                        "{} is healthy: successfully committed proposal: took = {:?}",
                        h.endpoint, h.took
                    ),
                    Some(error) => eprintln!("{} is unhealthy: {error}", h.endpoint),
                }
            }
        }
    }
    if unhealthy == 0 {
        Ok(())
    } else {
        Err(CliError::request(format!(
            "endpoint health: {unhealthy} of {} endpoints unhealthy",
            checks.len()
        )))
    }
}

/// Defragments one endpoint at a time: defragmenting holds a member's storage exclusively.
pub async fn defrag(ctx: &Ctx, args: DefragArgs) -> Result<(), CliError> {
    let (urls, _) = targets(ctx, args.cluster).await?;
    let mut failed = Vec::new();
    for url in &urls {
        let endpoint = display_endpoint(url);
        let result = async {
            let conn = ctx.dial.connect_conn(url).await?;
            let what = format!("defrag {endpoint}");
            conn.call(
                &what,
                conn.maintenance()
                    .defragment(conn.request(pb::DefragmentRequest {})),
            )
            .await
        }
        .await;
        match result {
            Ok(_) => match ctx.write_out {
                WriteOut::Json => {
                    print_json(&json!({ "endpoint": endpoint, "defragmented": true }))
                }
                _ => println!("Finished defragmenting etcd member[{endpoint}]"),
            },
            Err(error) => {
                eprintln!("{error}");
                failed.push(error);
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        let failed: Vec<&CliError> = failed.iter().collect();
        Err(summary_error("defrag", &failed, urls.len()))
    }
}
