//! member list, add, remove and promote.

use aspen_proto::etcdserverpb as pb;
use serde_json::{Value, json};

use super::Ctx;
use crate::cli::MemberCommand;
use crate::connect::Conn;
use crate::error::CliError;
use crate::output::{self, WriteOut, hex_id, print_json};
use crate::request::parse_member_id;

pub async fn run(ctx: &Ctx, command: MemberCommand) -> Result<(), CliError> {
    match command {
        MemberCommand::List => list(ctx).await,
        MemberCommand::Add {
            name,
            peer_urls,
            learner,
        } => add(ctx, &name, peer_urls, learner).await,
        MemberCommand::Remove { id } => remove(ctx, &id).await,
        MemberCommand::Promote { id } => promote(ctx, &id).await,
    }
}

/// MemberList on one connection; also used by `--cluster` discovery.
pub async fn member_list(conn: &Conn) -> Result<pb::MemberListResponse, CliError> {
    let request = pb::MemberListRequest {
        linearizable: false,
    };
    conn.call(
        "member list",
        conn.cluster().member_list(conn.request(request)),
    )
    .await
}

fn members_json(header: Option<&pb::ResponseHeader>, members: &[pb::Member]) -> Value {
    json!({
        "header": output::header_json(header),
        "members": members.iter().map(output::member_json).collect::<Vec<_>>(),
    })
}

/// etcdctl's member row: id, status, name, peer URLs, client URLs, learner.
pub fn member_row(member: &pb::Member) -> Vec<String> {
    let status = if member.name.is_empty() {
        "unstarted"
    } else {
        "started"
    };
    vec![
        hex_id(member.id),
        status.to_string(),
        member.name.clone(),
        member.peer_ur_ls.join(","),
        member.client_ur_ls.join(","),
        member.is_learner.to_string(),
    ]
}

async fn list(ctx: &Ctx) -> Result<(), CliError> {
    let conn = ctx.conn().await?;
    let response = member_list(&conn).await?;
    let rows: Vec<Vec<String>> = response.members.iter().map(member_row).collect();
    match ctx.write_out {
        WriteOut::Json => print_json(&members_json(response.header.as_ref(), &response.members)),
        WriteOut::Table => print!(
            "{}",
            output::table(
                &[
                    "ID",
                    "STATUS",
                    "NAME",
                    "PEER ADDRS",
                    "CLIENT ADDRS",
                    "IS LEARNER"
                ],
                &rows
            )
        ),
        WriteOut::Simple => {
            for row in rows {
                println!("{}", row.join(", "));
            }
        }
    }
    Ok(())
}

async fn add(ctx: &Ctx, name: &str, peer_urls: Vec<String>, learner: bool) -> Result<(), CliError> {
    if peer_urls.iter().any(|u| u.trim().is_empty()) {
        return Err(CliError::usage("member add: empty peer URL"));
    }
    let conn = ctx.conn().await?;
    let request = pb::MemberAddRequest {
        peer_ur_ls: peer_urls.clone(),
        is_learner: learner,
    };
    let what = format!("member add {name}");
    let response = conn
        .call(&what, conn.cluster().member_add(conn.request(request)))
        .await?;
    let new_id = response.member.as_ref().map_or(0, |m| m.id);
    let cluster_id = response.header.as_ref().map_or(0, |h| h.cluster_id);
    if ctx.write_out == WriteOut::Json {
        let mut value = members_json(response.header.as_ref(), &response.members);
        if let Some(member) = &response.member {
            value["member"] = output::member_json(member);
        }
        print_json(&value);
        return Ok(());
    }
    let kind = if learner { "as learner " } else { "" };
    println!("Member {new_id:16x} added {kind}to cluster {cluster_id:16x}");
    // What the new member needs to start, as Aspen's environment variables.
    let initial_cluster: Vec<String> = response
        .members
        .iter()
        .flat_map(|m| {
            let member_name = if m.id == new_id {
                name
            } else {
                m.name.as_str()
            };
            m.peer_ur_ls
                .iter()
                .filter(|_| !member_name.is_empty())
                .map(move |u| format!("{member_name}={u}"))
        })
        .collect();
    println!();
    println!("ASPEN_NAME=\"{name}\"");
    println!("ASPEN_INITIAL_CLUSTER=\"{}\"", initial_cluster.join(","));
    println!(
        "ASPEN_INITIAL_ADVERTISE_PEER_URLS=\"{}\"",
        peer_urls.join(",")
    );
    println!("ASPEN_INITIAL_CLUSTER_STATE=\"existing\"");
    Ok(())
}

async fn remove(ctx: &Ctx, id: &str) -> Result<(), CliError> {
    let member = parse_member_id(id)?;
    let conn = ctx.conn().await?;
    let what = format!("member remove {id}");
    let response = conn
        .call(
            &what,
            conn.cluster()
                .member_remove(conn.request(pb::MemberRemoveRequest { id: member })),
        )
        .await?;
    let cluster_id = response.header.as_ref().map_or(0, |h| h.cluster_id);
    match ctx.write_out {
        WriteOut::Json => print_json(&members_json(response.header.as_ref(), &response.members)),
        _ => println!("Member {member:16x} removed from cluster {cluster_id:16x}"),
    }
    Ok(())
}

async fn promote(ctx: &Ctx, id: &str) -> Result<(), CliError> {
    let member = parse_member_id(id)?;
    let conn = ctx.conn().await?;
    let what = format!("member promote {id}");
    let response = conn
        .call(
            &what,
            conn.cluster()
                .member_promote(conn.request(pb::MemberPromoteRequest { id: member })),
        )
        .await?;
    let cluster_id = response.header.as_ref().map_or(0, |h| h.cluster_id);
    match ctx.write_out {
        WriteOut::Json => print_json(&members_json(response.header.as_ref(), &response.members)),
        _ => println!("Member {member:16x} promoted in cluster {cluster_id:16x}"),
    }
    Ok(())
}
