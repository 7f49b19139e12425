//! The subject Common Name of an X.509 certificate: what etcd takes as the user name of a
//! client that authenticated with a certificate (`--client-cert-auth` with auth enabled).
//!
//! A small DER walk of our own (RFC 5280): Certificate → tbsCertificate → subject →
//! RDNSequence → the first AttributeTypeAndValue whose type is id-at-commonName (2.5.4.3).
//! Every length is checked against what contains it; a malformed certificate gives `None`,
//! never a panic. The handshake has already verified the certificate chain, so this only reads.

/// DER tags used on the way to the subject.
const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_OID: u8 = 0x06;
/// `[0] EXPLICIT Version`, present in v2 and v3 certificates.
const TAG_VERSION: u8 = 0xa0;
/// The string types a CN may use: UTF8String, PrintableString, TeletexString, IA5String,
/// UniversalString is not accepted (etcd's Go parser reads it, but nobody issues it).
const TAGS_STRING: [u8; 4] = [0x0c, 0x13, 0x14, 0x16];
/// id-at-commonName, DER-encoded object identifier contents.
const OID_COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];
/// Longest Common Name returned: RFC 5280's upper bound (ub-common-name) is 64 characters;
/// a UTF-8 string of 64 characters is at most 256 bytes.
pub const COMMON_NAME_BYTES_MAX: usize = 256;

/// One DER element: its tag, its contents, and what follows it.
struct Element<'a> {
    tag: u8,
    contents: &'a [u8],
    rest: &'a [u8],
}

fn element(input: &[u8]) -> Option<Element<'_>> {
    let (&tag, after_tag) = input.split_first()?;
    // Multi-byte tags (low five bits all set) never occur on this path.
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, after_length) = after_tag.split_first()?;
    let (length, after_length) = if first & 0x80 == 0 {
        (usize::from(first), after_length)
    } else {
        let length_bytes = usize::from(first & 0x7f);
        // DER: no indefinite length; four length bytes cover any certificate (4 GiB).
        if length_bytes == 0 || length_bytes > 4 || after_length.len() < length_bytes {
            return None;
        }
        let (bytes, after) = after_length.split_at(length_bytes);
        let length = bytes
            .iter()
            .fold(0usize, |length, &byte| (length << 8) | usize::from(byte));
        (length, after)
    };
    if after_length.len() < length {
        return None;
    }
    let (contents, rest) = after_length.split_at(length);
    Some(Element {
        tag,
        contents,
        rest,
    })
}

fn expect(input: &[u8], tag: u8) -> Option<Element<'_>> {
    element(input).filter(|e| e.tag == tag)
}

/// The subject's Common Name of a DER certificate, if it has one that is a valid string.
pub fn subject_common_name(certificate_der: &[u8]) -> Option<String> {
    let certificate = expect(certificate_der, TAG_SEQUENCE)?;
    let tbs = expect(certificate.contents, TAG_SEQUENCE)?;
    let mut fields = tbs.contents;
    if fields.first() == Some(&TAG_VERSION) {
        fields = element(fields)?.rest;
    }
    // serialNumber, signature, issuer, validity: skipped; then the subject.
    for _ in 0..4 {
        fields = element(fields)?.rest;
    }
    let subject = expect(fields, TAG_SEQUENCE)?;
    let mut names = subject.contents;
    while !names.is_empty() {
        let set = expect(names, TAG_SET)?;
        names = set.rest;
        let mut attributes = set.contents;
        while !attributes.is_empty() {
            let attribute = expect(attributes, TAG_SEQUENCE)?;
            attributes = attribute.rest;
            let oid = expect(attribute.contents, TAG_OID)?;
            if oid.contents != OID_COMMON_NAME {
                continue;
            }
            let value = element(oid.rest)?;
            if !TAGS_STRING.contains(&value.tag) || value.contents.len() > COMMON_NAME_BYTES_MAX {
                return None;
            }
            return String::from_utf8(value.contents.to_vec()).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate_with_subject(common_name: Option<&str>) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "aspen tests");
        if let Some(name) = common_name {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
        }
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("sign").der().to_vec()
    }

    #[test]
    fn the_subject_common_name_is_read() {
        let der = certificate_with_subject(Some("alice"));
        assert_eq!(subject_common_name(&der).as_deref(), Some("alice"));
        let der = certificate_with_subject(Some("ünïcode user"));
        assert_eq!(subject_common_name(&der).as_deref(), Some("ünïcode user"));
    }

    #[test]
    fn no_common_name_gives_none() {
        let der = certificate_with_subject(None);
        assert_eq!(subject_common_name(&der), None);
    }

    #[test]
    fn every_truncation_and_byte_flip_is_refused_without_panicking() {
        let der = certificate_with_subject(Some("alice"));
        for length in 0..der.len() {
            // A truncated certificate may still reach the subject (it comes before the
            // signature); what matters is no panic and no name that is not the real one.
            let name = subject_common_name(&der[..length]);
            assert!(name.is_none() || name.as_deref() == Some("alice"));
        }
        for position in 0..der.len() {
            let mut damaged = der.clone();
            damaged[position] ^= 0xff;
            let _ = subject_common_name(&damaged);
        }
    }
}
