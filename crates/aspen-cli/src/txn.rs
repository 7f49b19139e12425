//! The `txn` script, in etcdctl's syntax: compares, a blank line, success operations, a blank
//! line, failure operations.
//!
//! ```text
//! mod("key1") > "0"
//! value("key2") = "v"
//!
//! put key1 "new value"
//! get key2 --prefix
//!
//! del key1
//! ```
//!
//! A compare is `<target>("<key>") <op> "<value>"` with target `ver|version`, `c|create`,
//! `m|mod`, `val|value` or `lease`, and op `=`, `!=`, `<` or `>`. An operation is a `put`,
//! `get` or `del` command line, split as etcdctl's `Argify` splits it (double quotes with Go
//! escapes, single quotes verbatim).

use std::io::{BufRead, Read, Write};

use aspen_proto::etcdserverpb as pb;

use crate::error::CliError;
use crate::limits::{TXN_LINE_BYTES_MAX, TXN_LINES_MAX, TXN_OP_TOKENS_MAX};
use crate::request::{GetOptions, delete_request, parse_lease_id, range_request};

/// Reads the three sections from `input`. With `prompts`, each section is announced first, as
/// `etcdctl txn -i` does.
pub fn read_txn(
    input: &mut dyn BufRead,
    mut prompts: Option<&mut dyn Write>,
) -> Result<pb::TxnRequest, CliError> {
    let titles = [
        "compares:",
        "success requests (get, put, del):",
        "failure requests (get, put, del):",
    ];
    let mut sections: Vec<Vec<String>> = Vec::with_capacity(titles.len());
    let mut at_eof = false;
    for title in titles {
        if let Some(out) = prompts.as_deref_mut() {
            let _ = writeln!(out, "{title}");
            let _ = out.flush();
        }
        let mut lines = Vec::new();
        if !at_eof {
            at_eof = read_section(input, &mut lines)?;
        }
        sections.push(lines);
    }
    let compare = sections[0]
        .iter()
        .map(|l| parse_compare(l))
        .collect::<Result<Vec<_>, _>>()?;
    let success = sections[1]
        .iter()
        .map(|l| parse_op(l))
        .collect::<Result<Vec<_>, _>>()?;
    let failure = sections[2]
        .iter()
        .map(|l| parse_op(l))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(pb::TxnRequest {
        compare,
        success,
        failure,
    })
}

/// Parses a whole script held in memory.
pub fn parse_txn(script: &str) -> Result<pb::TxnRequest, CliError> {
    read_txn(&mut script.as_bytes(), None)
}

/// Reads lines until a blank line or end of input; returns whether input ended.
fn read_section(input: &mut dyn BufRead, lines: &mut Vec<String>) -> Result<bool, CliError> {
    // Bounded: at most TXN_LINES_MAX lines, each at most TXN_LINE_BYTES_MAX bytes.
    loop {
        let mut line = String::new();
        let read = (&mut *input)
            .take(TXN_LINE_BYTES_MAX as u64 + 1)
            .read_line(&mut line)
            .map_err(|e| CliError::usage(format!("txn: reading stdin: {e}")))?;
        if read == 0 {
            return Ok(true);
        }
        if line.len() > TXN_LINE_BYTES_MAX {
            return Err(CliError::usage(format!(
                "txn: a line is longer than {TXN_LINE_BYTES_MAX} bytes"
            )));
        }
        let line = line.trim();
        if line.is_empty() {
            return Ok(false);
        }
        if lines.len() == TXN_LINES_MAX {
            return Err(CliError::usage(format!(
                "txn: a section has more than {TXN_LINES_MAX} lines"
            )));
        }
        lines.push(line.to_string());
    }
}

fn malformed(line: &str, why: &str) -> CliError {
    CliError::usage(format!("txn: malformed comparison: {line} ({why})"))
}

/// One compare line: `mod("k") > "3"`.
pub fn parse_compare(line: &str) -> Result<pb::Compare, CliError> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let Some((target, rest)) = line.split_once('(') else {
        return Err(malformed(line, "expected target(\"key\")"));
    };
    let (key, rest) = parse_go_quoted(rest.trim_start()).map_err(|why| malformed(line, &why))?;
    let Some(rest) = rest.trim_start().strip_prefix(')') else {
        return Err(malformed(line, "expected ')' after the key"));
    };
    let rest = rest.trim_start();
    let op_len = rest
        .find(|c: char| c.is_whitespace() || c == '"')
        .unwrap_or(rest.len());
    let (op, rest) = rest.split_at(op_len);
    let rest = rest.trim();
    let value = if rest.starts_with('"') || rest.starts_with('`') {
        let (value, tail) = parse_go_quoted(rest).map_err(|why| malformed(line, &why))?;
        if !tail.trim().is_empty() {
            return Err(malformed(line, "text after the value"));
        }
        value
    } else if !rest.is_empty() && !rest.contains(char::is_whitespace) {
        rest.to_string() // etcdctl wants quotes; an unquoted number is accepted too.
    } else {
        return Err(malformed(line, "expected a quoted value"));
    };
    let result = match op {
        "=" | "==" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        "<" => CompareResult::Less,
        ">" => CompareResult::Greater,
        _ => return Err(malformed(line, &format!("unknown operator '{op}'"))),
    };
    let number = || {
        value
            .parse::<i64>()
            .map_err(|_| malformed(line, &format!("'{value}' is not a number")))
    };
    let (target, union) = match target.trim() {
        "ver" | "version" => (CompareTarget::Version, TargetUnion::Version(number()?)),
        "c" | "create" => (
            CompareTarget::Create,
            TargetUnion::CreateRevision(number()?),
        ),
        "m" | "mod" => (CompareTarget::Mod, TargetUnion::ModRevision(number()?)),
        "val" | "value" => (
            CompareTarget::Value,
            TargetUnion::Value(value.clone().into_bytes()),
        ),
        "lease" => (CompareTarget::Lease, TargetUnion::Lease(number()?)),
        other => return Err(malformed(line, &format!("unknown target {other}"))),
    };
    Ok(pb::Compare {
        result: result as i32,
        target: target as i32,
        key: key.into_bytes(),
        range_end: Vec::new(),
        target_union: Some(union),
    })
}

/// A Go `%q` string at the start of `s` (double-quoted with escapes, or back-quoted raw);
/// returns it and the rest of `s`.
pub fn parse_go_quoted(s: &str) -> Result<(String, &str), String> {
    if let Some(raw) = s.strip_prefix('`') {
        let end = raw.find('`').ok_or("unterminated raw string")?;
        return Ok((raw[..end].to_string(), &raw[end + 1..]));
    }
    let body = s.strip_prefix('"').ok_or("expected a quoted string")?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &body[i + 1..])),
            '\\' => {
                let (_, escaped) = chars.next().ok_or("unterminated escape")?;
                match escaped {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    '0' => out.push('\0'),
                    '\\' | '"' | '\'' => out.push(escaped),
                    'x' => {
                        let hex: String = (0..2)
                            .filter_map(|_| chars.next().map(|(_, c)| c))
                            .collect();
                        let byte = u8::from_str_radix(&hex, 16).map_err(|_| "bad \\x escape")?;
                        out.push(char::from(byte));
                    }
                    other => return Err(format!("unknown escape \\{other}")),
                }
            }
            _ => out.push(c),
        }
    }
    Err("unterminated quoted string".to_string())
}

/// Splits an operation line as etcdctl's `Argify`.
pub fn argify(line: &str) -> Result<Vec<String>, CliError> {
    let bad = |why: String| CliError::usage(format!("txn: bad operation '{line}': {why}"));
    let mut args = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        if args.len() == TXN_OP_TOKENS_MAX {
            return Err(bad(format!("more than {TXN_OP_TOKENS_MAX} words")));
        }
        if rest.starts_with('"') {
            let (arg, tail) = parse_go_quoted(rest).map_err(bad)?;
            args.push(arg);
            rest = tail;
        } else if let Some(body) = rest.strip_prefix('\'') {
            let end = body
                .find('\'')
                .ok_or_else(|| bad("unterminated quote".into()))?;
            args.push(body[..end].to_string());
            rest = &body[end + 1..];
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            args.push(rest[..end].to_string());
            rest = &rest[end..];
        }
        rest = rest.trim_start();
    }
    Ok(args)
}

/// One operation line: `put k v`, `get k [end] [flags]`, `del k [end] [flags]`.
pub fn parse_op(line: &str) -> Result<pb::RequestOp, CliError> {
    use pb::request_op::Request;
    let args = argify(line)?;
    let bad = |why: &str| CliError::usage(format!("txn: bad operation '{line}': {why}"));
    let (command, rest) = args.split_first().ok_or_else(|| bad("empty"))?;
    let (positional, flags) = split_flags(rest).map_err(|why| bad(&why))?;
    let request = match command.as_str() {
        "put" => {
            let [key, value] = positional.as_slice() else {
                return Err(bad("put takes a key and a value"));
            };
            let mut put = pb::PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                ..Default::default()
            };
            for (name, value) in &flags {
                match (name.as_str(), value) {
                    ("lease", Some(id)) => put.lease = parse_lease_id(id)?,
                    ("prev-kv", None) => put.prev_kv = true,
                    ("ignore-lease", None) => put.ignore_lease = true,
                    _ => return Err(bad(&format!("unknown put flag --{name}"))),
                }
            }
            Request::RequestPut(put)
        }
        "get" => {
            let (key, end) = key_and_end(&positional).ok_or_else(|| bad("get takes a key"))?;
            let options = get_options(&flags).map_err(|why| bad(&why))?;
            Request::RequestRange(range_request(key, end, &options)?)
        }
        "del" | "delete" => {
            let (key, end) = key_and_end(&positional).ok_or_else(|| bad("del takes a key"))?;
            let (mut prefix, mut from_key, mut prev_kv) = (false, false, false);
            for (name, value) in &flags {
                match (name.as_str(), value) {
                    ("prefix", None) => prefix = true,
                    ("from-key", None) => from_key = true,
                    ("prev-kv", None) => prev_kv = true,
                    _ => return Err(bad(&format!("unknown del flag --{name}"))),
                }
            }
            Request::RequestDeleteRange(delete_request(key, end, prefix, from_key, prev_kv)?)
        }
        other => {
            return Err(bad(&format!(
                "unknown command '{other}' (use get, put or del)"
            )));
        }
    };
    Ok(pb::RequestOp {
        request: Some(request),
    })
}

type Flags = Vec<(String, Option<String>)>;

/// Splits `--name[=value]` (or `--name value` for flags that take one) from positionals.
fn split_flags(args: &[String]) -> Result<(Vec<String>, Flags), String> {
    const TAKES_VALUE: [&str; 3] = ["lease", "limit", "rev"];
    let mut positional = Vec::new();
    let mut flags = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            positional.push(arg.clone());
            continue;
        };
        match flag.split_once('=') {
            Some((name, value)) => flags.push((name.to_string(), Some(value.to_string()))),
            None if TAKES_VALUE.contains(&flag) => {
                let value = iter.next().ok_or(format!("--{flag} needs a value"))?;
                flags.push((flag.to_string(), Some(value.clone())));
            }
            None => flags.push((flag.to_string(), None)),
        }
    }
    Ok((positional, flags))
}

fn key_and_end(positional: &[String]) -> Option<(&str, Option<&str>)> {
    match positional {
        [key] => Some((key, None)),
        [key, end] => Some((key, Some(end))),
        _ => None,
    }
}

fn get_options(flags: &Flags) -> Result<GetOptions, String> {
    let mut options = GetOptions::default();
    let number = |name: &str, value: &str| {
        value
            .parse::<i64>()
            .map_err(|_| format!("--{name}: '{value}' is not a number"))
    };
    for (name, value) in flags {
        match (name.as_str(), value) {
            ("prefix", None) => options.prefix = true,
            ("from-key", None) => options.from_key = true,
            ("keys-only", None) => options.keys_only = true,
            ("count-only", None) => options.count_only = true,
            ("limit", Some(v)) => options.limit = number(name, v)?,
            ("rev", Some(v)) => options.revision = number(name, v)?,
            _ => return Err(format!("unknown get flag --{name}")),
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    use pb::request_op::Request;

    #[test]
    fn value_compare() {
        let compare = parse_compare(r#"value("k") = "v""#).expect("parse");
        assert_eq!(compare.key, b"k");
        assert_eq!(compare.target, CompareTarget::Value as i32);
        assert_eq!(compare.result, CompareResult::Equal as i32);
        assert_eq!(
            compare.target_union,
            Some(TargetUnion::Value(b"v".to_vec()))
        );
    }

    #[test]
    fn mod_compare() {
        let compare = parse_compare(r#"mod("k") > "3""#).expect("parse");
        assert_eq!(compare.target, CompareTarget::Mod as i32);
        assert_eq!(compare.result, CompareResult::Greater as i32);
        assert_eq!(compare.target_union, Some(TargetUnion::ModRevision(3)));
    }

    #[test]
    fn every_target_and_operator() {
        let cases = [
            (
                r#"ver("a") != "1""#,
                CompareTarget::Version,
                CompareResult::NotEqual,
            ),
            (
                r#"version("a") < "2""#,
                CompareTarget::Version,
                CompareResult::Less,
            ),
            (
                r#"c("a") = "5""#,
                CompareTarget::Create,
                CompareResult::Equal,
            ),
            (
                r#"create("a") > "0""#,
                CompareTarget::Create,
                CompareResult::Greater,
            ),
            (r#"m("a") = "0""#, CompareTarget::Mod, CompareResult::Equal),
            (
                r#"val("a") != "x""#,
                CompareTarget::Value,
                CompareResult::NotEqual,
            ),
            (
                r#"lease("a") = "7""#,
                CompareTarget::Lease,
                CompareResult::Equal,
            ),
        ];
        for (line, target, result) in cases {
            let compare = parse_compare(line).expect(line);
            assert_eq!(compare.target, target as i32, "{line}");
            assert_eq!(compare.result, result as i32, "{line}");
        }
    }

    #[test]
    fn quoted_keys_and_values_keep_spaces_and_escapes() {
        let compare = parse_compare(r#"value("a key") = "say \"hi\"""#).expect("parse");
        assert_eq!(compare.key, b"a key");
        assert_eq!(
            compare.target_union,
            Some(TargetUnion::Value(br#"say "hi""#.to_vec()))
        );
    }

    #[test]
    fn malformed_compares_are_usage_errors() {
        for line in [
            r#"value"k" = "v""#,
            r#"value("k" = "v""#,
            r#"value("k") ~ "v""#,
            r#"mod("k") > "three""#,
            r#"size("k") = "1""#,
            r#"value("k") = "v" extra"#,
        ] {
            let error = parse_compare(line).expect_err(line);
            assert_eq!(error.kind, ErrorKind::Usage, "{line}");
            assert!(error.message.contains("malformed comparison"), "{line}");
        }
    }

    #[test]
    fn put_op() {
        let op = parse_op(r#"put k "hello world""#).expect("put");
        let Some(Request::RequestPut(put)) = op.request else {
            panic!("not a put: {op:?}");
        };
        assert_eq!(
            (put.key, put.value),
            (b"k".to_vec(), b"hello world".to_vec())
        );
        let op = parse_op("put k v --lease=1f --prev-kv").expect("put flags");
        let Some(Request::RequestPut(put)) = op.request else {
            panic!("not a put");
        };
        assert_eq!((put.lease, put.prev_kv), (0x1f, true));
    }

    #[test]
    fn del_op() {
        let op = parse_op("del k").expect("del");
        let Some(Request::RequestDeleteRange(del)) = op.request else {
            panic!("not a del: {op:?}");
        };
        assert_eq!((del.key, del.range_end), (b"k".to_vec(), vec![]));
        let op = parse_op("del k --prefix --prev-kv").expect("del prefix");
        let Some(Request::RequestDeleteRange(del)) = op.request else {
            panic!("not a del");
        };
        assert_eq!((del.range_end, del.prev_kv), (b"l".to_vec(), true));
    }

    #[test]
    fn get_op() {
        let op = parse_op("get k").expect("get");
        let Some(Request::RequestRange(get)) = op.request else {
            panic!("not a get: {op:?}");
        };
        assert_eq!((get.key, get.range_end), (b"k".to_vec(), vec![]));
        let op = parse_op("get a z --limit 2 --rev=9 --keys-only").expect("get flags");
        let Some(Request::RequestRange(get)) = op.request else {
            panic!("not a get");
        };
        assert_eq!(get.range_end, b"z");
        assert_eq!((get.limit, get.revision, get.keys_only), (2, 9, true));
    }

    #[test]
    fn bad_ops_are_usage_errors() {
        for line in [
            "put k",
            "get",
            "frob k",
            "get k --bogus",
            "put 'k v",
            "del a b c",
        ] {
            assert_eq!(
                parse_op(line).expect_err(line).kind,
                ErrorKind::Usage,
                "{line}"
            );
        }
    }

    #[test]
    fn argify_splits_like_etcdctl() {
        let args = argify(r#"put 'single quoted' "double \"q\"" plain"#).expect("argify");
        assert_eq!(args, ["put", "single quoted", r#"double "q""#, "plain"]);
    }

    #[test]
    fn whole_script_has_three_sections() {
        let script = "mod(\"k\") > \"3\"\nvalue(\"k\") = \"v\"\n\nput k v\nget k\n\ndel k\n";
        let txn = parse_txn(script).expect("script");
        assert_eq!(txn.compare.len(), 2);
        assert_eq!(txn.success.len(), 2);
        assert_eq!(txn.failure.len(), 1);
    }

    #[test]
    fn sections_may_be_empty_or_missing() {
        let txn = parse_txn("\nput k v\n").expect("no compares");
        assert_eq!(
            (txn.compare.len(), txn.success.len(), txn.failure.len()),
            (0, 1, 0)
        );
        let txn = parse_txn("").expect("empty");
        assert_eq!(txn, pb::TxnRequest::default());
    }

    #[test]
    fn interactive_mode_prompts_for_each_section() {
        let mut prompts = Vec::new();
        let txn = read_txn(&mut "\n\nput a b\n".as_bytes(), Some(&mut prompts)).expect("read");
        assert_eq!(txn.failure.len(), 1);
        let prompts = String::from_utf8(prompts).expect("utf8");
        assert_eq!(
            prompts,
            "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\n"
        );
    }
}
