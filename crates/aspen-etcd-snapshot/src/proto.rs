//! The little of protobuf's wire format etcd's records need: varints and length-delimited
//! bytes, written in field order with zero values left out (as Go's generated code writes
//! them, so our bytes equal etcd's), read back skipping fields we do not know.

pub const WIRE_VARINT: u8 = 0;
pub const WIRE_FIXED64: u8 = 1;
pub const WIRE_LEN: u8 = 2;
pub const WIRE_FIXED32: u8 = 5;
/// A varint takes at most 10 bytes.
const VARINT_BYTES_MAX: usize = 10;

pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        // The low 7 bits, with the continuation bit.
        out.push(value.to_le_bytes()[0] | 0x80);
        value >>= 7;
    }
    // Below 0x80 here: the whole value is its low byte.
    out.push(value.to_le_bytes()[0]);
}

/// An int64 field; zero is left out.
pub fn put_int64(out: &mut Vec<u8>, field: u32, value: i64) {
    if value != 0 {
        put_varint(out, u64::from(field << 3 | u32::from(WIRE_VARINT)));
        put_varint(out, value as u64);
    }
}

/// A non-negative int64 field held as a u64 (revisions, versions, lease ids); zero is left
/// out. Its varint is the u64's; one past `i64::MAX` would read back negative, so it is a bug.
#[track_caller]
pub fn put_non_negative_int64(out: &mut Vec<u8>, field: u32, value: u64) {
    assert!(
        i64::try_from(value).is_ok(),
        "field {field}: {value} is past int64"
    );
    if value != 0 {
        put_varint(out, u64::from(field << 3 | u32::from(WIRE_VARINT)));
        put_varint(out, value);
    }
}

/// An int64 read from its varint: protobuf writes an int64 as the varint of its two's
/// complement bits, so the same 64 bits are taken back as signed.
pub fn int64_from_varint(value: u64) -> i64 {
    i64::from_ne_bytes(value.to_ne_bytes())
}

/// A bytes field; empty is left out.
pub fn put_bytes(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    if !value.is_empty() {
        put_varint(out, u64::from(field << 3 | u32::from(WIRE_LEN)));
        put_varint(out, value.len() as u64);
        out.extend_from_slice(value);
    }
}

/// A bytes field written even when empty (a repeated or message field: present means
/// something).
pub fn put_field_bytes(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    put_varint(out, u64::from(field << 3 | u32::from(WIRE_LEN)));
    put_varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// One field read from a message.
pub enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

/// Reads fields in order; `next` returns `Ok(None)` at the end and `Err` with a reason.
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut value: u64 = 0;
        for i in 0..VARINT_BYTES_MAX {
            let Some(byte) = self.bytes.get(self.at) else {
                return Err("a varint runs past the end");
            };
            self.at += 1;
            value |= u64::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a varint longer than 10 bytes")
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], &'static str> {
        let end = (self.at as u64)
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len() as u64)
            .ok_or("a field runs past the end")?;
        let end = crate::int::usize_from(end);
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    pub fn next(&mut self) -> Result<Option<(u32, Field<'a>)>, &'static str> {
        if self.at == self.bytes.len() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let field = u32::try_from(tag >> 3).map_err(|_| "a field number out of range")?;
        if field == 0 {
            return Err("field number 0");
        }
        let value = match (tag & 7) as u8 {
            WIRE_VARINT => Field::Varint(self.varint()?),
            WIRE_LEN => {
                let len = self.varint()?;
                Field::Bytes(self.take(len)?)
            }
            WIRE_FIXED64 => {
                self.take(8)?;
                Field::Other
            }
            WIRE_FIXED32 => {
                self.take(4)?;
                Field::Other
            }
            _ => return Err("an unknown wire type"),
        };
        Ok(Some((field, value)))
    }
}
