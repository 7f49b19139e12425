//! Output in etcdctl's three styles: `simple` (etcdctl's text), `json` (etcdctl's field names,
//! bytes as base64, zero fields left out as Go's `omitempty` does) and `table`.

use aspen_proto::etcdserverpb as pb;
use aspen_proto::mvccpb;
use base64::Engine;
use serde_json::{Map, Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WriteOut {
    Simple,
    Json,
    Table,
}

/// Bytes as text: keys and values are usually UTF-8; anything else is shown lossily.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Member and lease ids, as etcdctl prints them.
pub fn hex_id(id: u64) -> String {
    format!("{id:x}")
}

/// Sizes as etcd prints them (go-humanize's SI `Bytes`): "20 kB", "1.2 MB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 10 {
        return format!("{bytes} B");
    }
    // The largest unit the size reaches: 1000^exponent <= bytes.
    let mut exponent = 0;
    let mut whole = bytes;
    let mut divisor = 1f64;
    while whole >= 1000 && exponent < UNITS.len() - 1 {
        whole /= 1000;
        exponent += 1;
        divisor *= 1000.0;
    }
    let value = bytes as f64 / divisor;
    let rounded = (value * 10.0).round() / 10.0;
    if rounded < 10.0 && exponent > 0 {
        format!("{rounded:.1} {}", UNITS[exponent])
    } else {
        format!("{:.0} {}", rounded, UNITS[exponent])
    }
}

/// A table in etcdctl's style: a ruled header, one row per item.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let rule: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    let line = |cells: Vec<String>| -> String {
        let mut out = String::new();
        for (cell, width) in cells.iter().zip(&widths) {
            let pad = width - cell.chars().count();
            out.push_str(&format!("| {cell}{} ", " ".repeat(pad)));
        }
        out + "|\n"
    };
    let mut out = rule.clone();
    out.push_str(&line(headers.iter().map(|h| h.to_string()).collect()));
    out.push_str(&rule);
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out.push_str(&rule);
    out
}

/// Inserts `value` unless it is Go's zero value (`omitempty`).
fn put_nonzero(map: &mut Map<String, Value>, name: &str, value: Value) {
    let zero = match &value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_i64() == Some(0) || n.as_u64() == Some(0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(_) => false,
    };
    if !zero {
        map.insert(name.to_string(), value);
    }
}

pub fn header_json(header: Option<&pb::ResponseHeader>) -> Value {
    let mut map = Map::new();
    if let Some(h) = header {
        put_nonzero(&mut map, "cluster_id", json!(h.cluster_id));
        put_nonzero(&mut map, "member_id", json!(h.member_id));
        put_nonzero(&mut map, "revision", json!(h.revision));
        put_nonzero(&mut map, "raft_term", json!(h.raft_term));
    }
    Value::Object(map)
}

pub fn kv_json(kv: &mvccpb::KeyValue) -> Value {
    let mut map = Map::new();
    put_nonzero(&mut map, "key", json!(base64(&kv.key)));
    put_nonzero(&mut map, "create_revision", json!(kv.create_revision));
    put_nonzero(&mut map, "mod_revision", json!(kv.mod_revision));
    put_nonzero(&mut map, "version", json!(kv.version));
    put_nonzero(&mut map, "value", json!(base64(&kv.value)));
    put_nonzero(&mut map, "lease", json!(kv.lease));
    Value::Object(map)
}

fn kvs_json(kvs: &[mvccpb::KeyValue]) -> Value {
    Value::Array(kvs.iter().map(kv_json).collect())
}

pub fn range_json(response: &pb::RangeResponse) -> Value {
    let mut map = Map::new();
    map.insert("header".into(), header_json(response.header.as_ref()));
    put_nonzero(&mut map, "kvs", kvs_json(&response.kvs));
    put_nonzero(&mut map, "more", json!(response.more));
    put_nonzero(&mut map, "count", json!(response.count));
    Value::Object(map)
}

pub fn put_json(response: &pb::PutResponse) -> Value {
    let mut map = Map::new();
    map.insert("header".into(), header_json(response.header.as_ref()));
    if let Some(prev) = &response.prev_kv {
        map.insert("prev_kv".into(), kv_json(prev));
    }
    Value::Object(map)
}

pub fn delete_json(response: &pb::DeleteRangeResponse) -> Value {
    let mut map = Map::new();
    map.insert("header".into(), header_json(response.header.as_ref()));
    put_nonzero(&mut map, "deleted", json!(response.deleted));
    put_nonzero(&mut map, "prev_kvs", kvs_json(&response.prev_kvs));
    Value::Object(map)
}

pub fn txn_json(response: &pb::TxnResponse) -> Value {
    use pb::response_op::Response as Op;
    let responses: Vec<Value> = response
        .responses
        .iter()
        .map(|op| match &op.response {
            Some(Op::ResponseRange(r)) => {
                json!({ "Response": { "response_range": range_json(r) } })
            }
            Some(Op::ResponsePut(r)) => json!({ "Response": { "response_put": put_json(r) } }),
            Some(Op::ResponseDeleteRange(r)) => {
                json!({ "Response": { "response_delete_range": delete_json(r) } })
            }
            Some(Op::ResponseTxn(r)) => json!({ "Response": { "response_txn": txn_json(r) } }),
            None => Value::Null,
        })
        .collect();
    let mut map = Map::new();
    map.insert("header".into(), header_json(response.header.as_ref()));
    put_nonzero(&mut map, "succeeded", json!(response.succeeded));
    put_nonzero(&mut map, "responses", Value::Array(responses));
    Value::Object(map)
}

pub fn member_json(member: &pb::Member) -> Value {
    let mut map = Map::new();
    put_nonzero(&mut map, "ID", json!(member.id));
    put_nonzero(&mut map, "name", json!(member.name));
    put_nonzero(&mut map, "peerURLs", json!(member.peer_ur_ls));
    put_nonzero(&mut map, "clientURLs", json!(member.client_ur_ls));
    put_nonzero(&mut map, "isLearner", json!(member.is_learner));
    Value::Object(map)
}

/// etcdctl's simple form of one key-value: key line, value line.
pub fn print_kv(kv: &mvccpb::KeyValue) {
    println!("{}", text(&kv.key));
    println!("{}", text(&kv.value));
}

pub fn print_json(value: &Value) {
    println!("{value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_matches_go_humanize() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(20_480), "20 kB");
        assert_eq!(human_bytes(1_234_567), "1.2 MB");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(25_000_000), "25 MB");
    }

    #[test]
    fn tables_pad_every_column() {
        let out = table(&["ID", "NAME"], &[vec!["1".into(), "node-one".into()]]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "+----+----------+");
        assert_eq!(lines[1], "| ID | NAME     |");
        assert_eq!(lines[3], "| 1  | node-one |");
        assert_eq!(lines.len(), 5);
    }

    #[test]
    fn json_leaves_out_zero_fields_and_encodes_bytes() {
        let kv = mvccpb::KeyValue {
            key: b"foo".to_vec(),
            value: b"bar".to_vec(),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            lease: 0,
        };
        assert_eq!(
            kv_json(&kv).to_string(),
            r#"{"create_revision":2,"key":"Zm9v","mod_revision":2,"value":"YmFy","version":1}"#
        );
    }
}
