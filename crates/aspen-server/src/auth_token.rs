//! `--auth-token`: etcd's option string, `simple` or
//! `jwt,pub-key=PATH,priv-key=PATH,sign-method=METHOD[,ttl=DURATION]`.
//!
//! Parsed as etcd's `decomposeOpts`: comma-separated, the token type first, then `key=value`
//! pairs, each key once. Stricter than etcd, an unknown key is an error rather than ignored.

use std::sync::Arc;

use aspen_api::jwt::{JWT_TTL_DEFAULT, JwtKeys, SignMethod};

/// Keys read from files at most this long (a PEM key or an HMAC secret is a few KiB).
const KEY_FILE_BYTES_MAX: u64 = 64 * 1024;

/// The JWT keys `text` asks for: `Ok(None)` for simple tokens, every problem found otherwise.
pub fn resolve(text: &str) -> Result<Option<Arc<JwtKeys>>, Vec<String>> {
    let mut parts = text.split(',');
    let kind = parts.next().unwrap_or_default();
    match kind {
        "simple" => return Ok(None),
        "jwt" => {}
        other => {
            return Err(vec![format!(
                "--auth-token '{other}' is not a token type; use \"simple\" or \"jwt,...\""
            )]);
        }
    }
    let mut problems = Vec::new();
    let (mut public, mut private, mut method, mut ttl) = (None, None, None, None);
    for pair in parts {
        let Some((key, value)) = pair.split_once('=').filter(|(_, v)| !v.contains('=')) else {
            problems.push(format!("--auth-token: '{pair}' is not key=value"));
            continue;
        };
        let slot = match key {
            "pub-key" => &mut public,
            "priv-key" => &mut private,
            "sign-method" => &mut method,
            "ttl" => &mut ttl,
            _ => {
                problems.push(format!(
                    "--auth-token: unknown jwt option '{key}' (expected pub-key, priv-key, \
                     sign-method, ttl)"
                ));
                continue;
            }
        };
        if slot.replace(value).is_some() {
            problems.push(format!("--auth-token: jwt option '{key}' is given twice"));
        }
    }
    let method = match method {
        None => {
            problems.push("--auth-token jwt needs sign-method=METHOD".to_string());
            None
        }
        Some(name) => {
            let found = SignMethod::from_name(name);
            if found.is_none() {
                let names: Vec<&str> = SignMethod::ALL.iter().map(|m| m.name()).collect();
                problems.push(format!(
                    "--auth-token: unknown sign-method '{name}' (one of {})",
                    names.join(", ")
                ));
            }
            found
        }
    };
    let ttl = match ttl {
        None => Some(JWT_TTL_DEFAULT),
        Some(text) => match crate::auto_compaction::parse_duration(text) {
            Ok(ttl) if ttl.as_secs() >= 1 => Some(ttl),
            Ok(_) => {
                problems.push(format!("--auth-token: ttl '{text}' must be at least 1s"));
                None
            }
            Err(error) => {
                problems.push(format!("--auth-token: ttl: {error}"));
                None
            }
        },
    };
    let public = public.and_then(|path| read_key("pub-key", path, &mut problems));
    let private = private.and_then(|path| read_key("priv-key", path, &mut problems));
    if !problems.is_empty() {
        return Err(problems);
    }
    let (Some(method), Some(ttl)) = (method, ttl) else {
        unreachable!("a missing method or ttl is a problem reported above");
    };
    JwtKeys::from_pem(method, public.as_deref(), private.as_deref(), ttl)
        .map(|keys| Some(Arc::new(keys)))
        .map_err(|error| vec![format!("--auth-token jwt: {error}")])
}

fn read_key(option: &str, path: &str, problems: &mut Vec<String>) -> Option<Vec<u8>> {
    let result = std::fs::metadata(path).and_then(|meta| {
        if meta.len() > KEY_FILE_BYTES_MAX {
            return Err(std::io::Error::other(format!(
                "longer than {KEY_FILE_BYTES_MAX} bytes"
            )));
        }
        std::fs::read(path)
    });
    match result {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            problems.push(format!(
                "--auth-token: cannot read {option} '{path}': {error}"
            ));
            None
        }
    }
}
