//! put, get, del, txn and compaction.

use std::io::{IsTerminal, Read};

use aspen_proto::etcdserverpb as pb;
use serde_json::json;

use super::Ctx;
use crate::cli::{
    CompactionArgs, Consistency, DelArgs, GetArgs, PutArgs, SortBy, SortOrder, TxnArgs,
};
use crate::error::CliError;
use crate::limits::TXN_LINE_BYTES_MAX;
use crate::output::{self, WriteOut, print_json, print_kv, text};
use crate::request::{GetOptions, delete_request, parse_lease_id, range_request};

pub async fn put(ctx: &Ctx, args: PutArgs) -> Result<(), CliError> {
    let value = match (&args.value, args.ignore_value) {
        (Some(_), true) => {
            return Err(CliError::usage(
                "a value cannot be given with --ignore-value",
            ));
        }
        (Some(value), false) => value.clone(),
        (None, true) => String::new(),
        (None, false) => read_value_from_stdin()?,
    };
    if args.key.is_empty() {
        return Err(CliError::usage("put: empty key"));
    }
    let lease = match &args.lease {
        Some(id) => parse_lease_id(id)?,
        None => 0,
    };
    let conn = ctx.conn().await?;
    let request = pb::PutRequest {
        key: args.key.clone().into_bytes(),
        value: value.into_bytes(),
        lease,
        prev_kv: args.prev_kv,
        ignore_value: args.ignore_value,
        ignore_lease: args.ignore_lease,
    };
    let what = format!("put {}", args.key);
    let response = conn
        .call(&what, conn.kv().put(conn.request(request)))
        .await?;
    match ctx.write_out {
        WriteOut::Json => print_json(&output::put_json(&response)),
        _ => print_put(&response),
    }
    Ok(())
}

/// As etcdctl: without a value argument, the value is stdin (not a terminal).
fn read_value_from_stdin() -> Result<String, CliError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(CliError::usage(
            "put: a value is required (as an argument or on stdin)",
        ));
    }
    let mut value = String::new();
    stdin
        .lock()
        .take(TXN_LINE_BYTES_MAX as u64 * 64)
        .read_to_string(&mut value)
        .map_err(|e| CliError::usage(format!("put: reading the value from stdin: {e}")))?;
    Ok(value.strip_suffix('\n').unwrap_or(&value).to_string())
}

fn print_put(response: &pb::PutResponse) {
    println!("OK");
    if let Some(prev) = &response.prev_kv {
        print_kv(prev);
    }
}

/// etcdctl sorts by key when only `--order` is given.
pub fn get_options(args: &GetArgs) -> GetOptions {
    use pb::range_request::{SortOrder as Order, SortTarget as Target};
    let sort_target = match args.sort_by {
        None | Some(SortBy::Key) => Target::Key,
        Some(SortBy::Version) => Target::Version,
        Some(SortBy::Create) => Target::Create,
        Some(SortBy::Modify) => Target::Mod,
        Some(SortBy::Value) => Target::Value,
    };
    let sort_order = match (args.sort_by, args.order) {
        (None, None) => Order::None,
        (_, None) | (_, Some(SortOrder::Ascend)) => Order::Ascend,
        (_, Some(SortOrder::Descend)) => Order::Descend,
    };
    GetOptions {
        prefix: args.prefix,
        from_key: args.from_key,
        limit: args.limit,
        revision: args.rev,
        keys_only: args.keys_only,
        count_only: args.count_only,
        serializable: args.consistency == Consistency::S,
        sort_target,
        sort_order,
    }
}

pub async fn get(ctx: &Ctx, args: GetArgs) -> Result<(), CliError> {
    let options = get_options(&args);
    let request = range_request(&args.key, args.range_end.as_deref(), &options)?;
    let conn = ctx.conn().await?;
    let what = format!("get {}", args.key);
    let response = conn
        .call(&what, conn.kv().range(conn.request(request)))
        .await?;
    match ctx.write_out {
        WriteOut::Json => print_json(&output::range_json(&response)),
        WriteOut::Table => print_range_table(&response),
        WriteOut::Simple => print_range(&response, args.count_only, args.print_value_only),
    }
    Ok(())
}

fn print_range(response: &pb::RangeResponse, count_only: bool, value_only: bool) {
    if count_only {
        println!("{}", response.count);
        return;
    }
    for kv in &response.kvs {
        if value_only {
            println!("{}", text(&kv.value));
        } else {
            print_kv(kv);
        }
    }
}

fn print_range_table(response: &pb::RangeResponse) {
    let rows: Vec<Vec<String>> = response
        .kvs
        .iter()
        .map(|kv| {
            vec![
                text(&kv.key),
                text(&kv.value),
                kv.create_revision.to_string(),
                kv.mod_revision.to_string(),
                kv.version.to_string(),
                if kv.lease == 0 {
                    String::new()
                } else {
                    output::hex_id(kv.lease as u64)
                },
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &["KEY", "VALUE", "CREATE REV", "MOD REV", "VERSION", "LEASE"],
            &rows
        )
    );
}

pub async fn del(ctx: &Ctx, args: DelArgs) -> Result<(), CliError> {
    let request = delete_request(
        &args.key,
        args.range_end.as_deref(),
        args.prefix,
        args.from_key,
        args.prev_kv,
    )?;
    let conn = ctx.conn().await?;
    let what = format!("del {}", args.key);
    let response = conn
        .call(&what, conn.kv().delete_range(conn.request(request)))
        .await?;
    match ctx.write_out {
        WriteOut::Json => print_json(&output::delete_json(&response)),
        _ => print_delete(&response),
    }
    Ok(())
}

fn print_delete(response: &pb::DeleteRangeResponse) {
    println!("{}", response.deleted);
    for kv in &response.prev_kvs {
        print_kv(kv);
    }
}

pub async fn txn(ctx: &Ctx, args: TxnArgs) -> Result<(), CliError> {
    let stdin = std::io::stdin();
    let mut stderr = std::io::stderr();
    let prompts: Option<&mut dyn std::io::Write> = if args.interactive {
        Some(&mut stderr)
    } else {
        None
    };
    let request = crate::txn::read_txn(&mut stdin.lock(), prompts)?;
    let conn = ctx.conn().await?;
    let response = conn
        .call("txn", conn.kv().txn(conn.request(request)))
        .await?;
    match ctx.write_out {
        WriteOut::Json => print_json(&output::txn_json(&response)),
        _ => print_txn(&response),
    }
    Ok(())
}

/// etcdctl's simple form: SUCCESS or FAILURE, then each response after a blank line.
fn print_txn(response: &pb::TxnResponse) {
    use pb::response_op::Response as Op;
    println!(
        "{}",
        if response.succeeded {
            "SUCCESS"
        } else {
            "FAILURE"
        }
    );
    for op in &response.responses {
        println!();
        match &op.response {
            Some(Op::ResponseRange(r)) => print_range(r, false, false),
            Some(Op::ResponsePut(r)) => print_put(r),
            Some(Op::ResponseDeleteRange(r)) => print_delete(r),
            Some(Op::ResponseTxn(r)) => print_txn(r),
            None => println!("unexpected empty response"),
        }
    }
}

pub async fn compaction(ctx: &Ctx, args: CompactionArgs) -> Result<(), CliError> {
    if args.revision <= 0 {
        return Err(CliError::usage("compaction: the revision must be positive"));
    }
    let conn = ctx.conn().await?;
    let request = pb::CompactionRequest {
        revision: args.revision,
        physical: args.physical,
    };
    let what = format!("compaction {}", args.revision);
    let response = conn
        .call(&what, conn.kv().compact(conn.request(request)))
        .await?;
    match ctx.write_out {
        WriteOut::Json => print_json(&json!({
            "header": output::header_json(response.header.as_ref()),
            "compacted_revision": args.revision,
        })),
        _ => println!("compacted revision {}", args.revision),
    }
    Ok(())
}
