//! The one binary encoding Aspen writes to disk and into snapshots.
//!
//! Every encoded value is `[CODEC_VERSION][postcard body]`. postcard's wire format is stable and
//! documented; the leading version byte lets a future format be told apart, and lets a reader
//! refuse bytes it does not understand instead of misreading them (the failure ADR-004 hit:
//! writing one type and reading another). Each table stores exactly one Rust type; see
//! `docs/storage-format.md`.

use serde::{Serialize, de::DeserializeOwned};

/// The format version written in the first byte of every encoded value.
pub const CODEC_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty value: no codec version byte")]
    Empty,
    #[error("unsupported codec version {found} (this build reads version {CODEC_VERSION})")]
    Version { found: u8 },
    #[error("malformed {type_name}: {source}")]
    Malformed {
        type_name: &'static str,
        source: postcard::Error,
    },
}

/// Encodes `value` into a fresh buffer.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    encode_into(value, &mut out);
    out
}

/// Encodes `value`, appending to `out` (a reused buffer on hot paths).
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    out.push(CODEC_VERSION);
    // Serializing our own types into a Vec cannot fail: they hold no maps with non-string keys
    // that postcard refuses, and a Vec grows as needed.
    let written = postcard::to_extend(value, std::mem::take(out));
    match written {
        Ok(buf) => *out = buf,
        Err(error) => panic!("postcard failed to encode an in-memory value: {error}"),
    }
}

/// Bytes [`encode`] would produce for `value`, counted without copying any field.
pub fn encoded_len<T: Serialize>(value: &T) -> usize {
    match postcard::experimental::serialized_size(value) {
        Ok(len) => len + 1,
        Err(error) => panic!("postcard failed to size an in-memory value: {error}"),
    }
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != CODEC_VERSION {
        return Err(CodecError::Version { found: version });
    }
    postcard::from_bytes(body).map_err(|source| CodecError::Malformed {
        type_name: std::any::type_name::<T>(),
        source,
    })
}

/// As [`decode`], borrowing byte fields from `bytes` instead of copying them (for records read
/// only to look at a few fields).
pub fn decode_borrowed<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != CODEC_VERSION {
        return Err(CodecError::Version { found: version });
    }
    postcard::from_bytes(body).map_err(|source| CodecError::Malformed {
        type_name: std::any::type_name::<T>(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, PutRequest};

    #[test]
    fn round_trip_and_refusals() {
        let command = Command::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        });
        let bytes = encode(&command);
        assert_eq!(bytes[0], CODEC_VERSION);
        assert_eq!(decode::<Command>(&bytes).unwrap(), command);
        assert!(matches!(decode::<Command>(&[]), Err(CodecError::Empty)));
        assert!(matches!(
            decode::<Command>(&[9, 0]),
            Err(CodecError::Version { found: 9 })
        ));
        assert!(matches!(
            decode::<Command>(&[CODEC_VERSION, 200]),
            Err(CodecError::Malformed { .. })
        ));
    }
}
