//! Request builders shared by the commands and the txn parser: key ranges (`--prefix`,
//! `--from-key`, an explicit end), lease ids, and etcd's Range/Put/DeleteRange messages.

use aspen_proto::etcdserverpb as pb;

use crate::error::CliError;

/// etcd's "no end": a range end of a single zero byte means "every key from `key` on".
const NO_PREFIX_END: &[u8] = &[0];

/// The smallest key greater than every key starting with `prefix` (clientv3's
/// `GetPrefixRangeEnd`); a prefix of only 0xff bytes (or none) has no such key.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    for i in (0..prefix.len()).rev() {
        if prefix[i] < 0xff {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            return end;
        }
    }
    NO_PREFIX_END.to_vec()
}

/// What one `get`/`del`/`watch` names: a key and, unless it names one key, a range end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

pub fn key_range(
    key: &str,
    range_end: Option<&str>,
    prefix: bool,
    from_key: bool,
) -> Result<KeyRange, CliError> {
    if prefix && from_key {
        return Err(CliError::usage(
            "--prefix and --from-key cannot be set at the same time, choose one",
        ));
    }
    if range_end.is_some() && (prefix || from_key) {
        return Err(CliError::usage(
            "a range end cannot be given with --prefix or --from-key",
        ));
    }
    let mut key = key.as_bytes().to_vec();
    let range_end = if prefix {
        if key.is_empty() {
            // As clientv3's WithPrefix: the empty prefix is every key.
            key = NO_PREFIX_END.to_vec();
            NO_PREFIX_END.to_vec()
        } else {
            prefix_end(&key)
        }
    } else if from_key {
        if key.is_empty() {
            key = NO_PREFIX_END.to_vec();
        }
        NO_PREFIX_END.to_vec()
    } else {
        range_end.map(|e| e.as_bytes().to_vec()).unwrap_or_default()
    };
    if key.is_empty() {
        return Err(CliError::usage("empty key"));
    }
    Ok(KeyRange { key, range_end })
}

/// Lease ids are written in hex, as etcdctl prints them.
pub fn parse_lease_id(id: &str) -> Result<i64, CliError> {
    let digits = id.trim().trim_start_matches("0x");
    // As etcdctl's ParseInt(id, 16, 64): a signed 64-bit id.
    i64::from_str_radix(digits, 16)
        .map_err(|_| CliError::usage(format!("bad lease ID '{id}': expected hex")))
}

/// Member ids are written in hex too.
pub fn parse_member_id(id: &str) -> Result<u64, CliError> {
    let digits = id.trim().trim_start_matches("0x");
    u64::from_str_radix(digits, 16)
        .map_err(|_| CliError::usage(format!("bad member ID '{id}': expected hex")))
}

/// The options of a range read, as `get` and txn `get` take them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetOptions {
    pub prefix: bool,
    pub from_key: bool,
    pub limit: i64,
    pub revision: i64,
    pub keys_only: bool,
    pub count_only: bool,
    pub serializable: bool,
    pub sort_target: pb::range_request::SortTarget,
    pub sort_order: pb::range_request::SortOrder,
}

pub fn range_request(
    key: &str,
    range_end: Option<&str>,
    options: &GetOptions,
) -> Result<pb::RangeRequest, CliError> {
    let range = key_range(key, range_end, options.prefix, options.from_key)?;
    if options.limit < 0 {
        return Err(CliError::usage("--limit must not be negative"));
    }
    if options.revision < 0 {
        return Err(CliError::usage("--rev must not be negative"));
    }
    Ok(pb::RangeRequest {
        key: range.key,
        range_end: range.range_end,
        limit: options.limit,
        revision: options.revision,
        sort_order: options.sort_order as i32,
        sort_target: options.sort_target as i32,
        serializable: options.serializable,
        keys_only: options.keys_only,
        count_only: options.count_only,
        ..Default::default()
    })
}

pub fn delete_request(
    key: &str,
    range_end: Option<&str>,
    prefix: bool,
    from_key: bool,
    prev_kv: bool,
) -> Result<pb::DeleteRangeRequest, CliError> {
    let range = key_range(key, range_end, prefix, from_key)?;
    Ok(pb::DeleteRangeRequest {
        key: range.key,
        range_end: range.range_end,
        prev_kv,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn prefix_end_increments_the_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"abc"), b"abd");
        assert_eq!(prefix_end(b"ab\xff"), b"ac");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn key_ranges_follow_clientv3() {
        let one = key_range("foo", None, false, false).expect("one key");
        assert_eq!((one.key, one.range_end), (b"foo".to_vec(), vec![]));
        let prefix = key_range("foo", None, true, false).expect("prefix");
        assert_eq!(prefix.range_end, b"fop");
        let all = key_range("", None, true, false).expect("all");
        assert_eq!((all.key, all.range_end), (vec![0], vec![0]));
        let from = key_range("m", None, false, true).expect("from key");
        assert_eq!(from.range_end, vec![0]);
        let explicit = key_range("a", Some("c"), false, false).expect("range");
        assert_eq!(explicit.range_end, b"c");
    }

    #[test]
    fn conflicting_range_options_are_usage_errors() {
        let both = key_range("a", None, true, true).expect_err("both");
        assert_eq!(both.kind, ErrorKind::Usage);
        assert!(key_range("a", Some("b"), true, false).is_err());
        assert!(key_range("", None, false, false).is_err());
    }

    #[test]
    fn ids_are_hex() {
        assert_eq!(
            parse_lease_id("694d77aa9e38260f").expect("hex"),
            0x694d77aa9e38260f
        );
        assert_eq!(parse_member_id("0x10").expect("0x"), 16);
        assert_eq!(
            parse_lease_id("xyz").expect_err("bad").kind,
            ErrorKind::Usage
        );
    }
}
