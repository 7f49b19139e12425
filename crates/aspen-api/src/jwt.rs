//! etcd 3.4's JWT auth tokens (`--auth-token jwt,...`), signed and verified with ring.
//!
//! A token is `base64url(header).base64url(claims).base64url(signature)` (no padding), with
//! the header `{"alg":METHOD,"typ":"JWT"}` and etcd's claims `{"exp":..,"revision":..,
//! "username":..}`: the user, the auth revision the password was checked at, and the expiry
//! (seconds since the epoch, issue time + ttl). Any member holding the public key (or, for
//! HS*, the shared secret) verifies a token by itself, with no Raft round.
//!
//! Verification refuses, without panicking, anything but a well-formed token whose header
//! names exactly the configured method, whose signature is right for the configured key, and
//! whose claims carry a user, a revision and an unexpired `exp`. `alg: none` never verifies.
//!
//! Keys, as etcd reads them (`auth/options.go`): HS* use the bytes of the `priv-key` file as
//! the secret; RS*/PS* take PKCS#1 ("RSA PRIVATE KEY") or PKCS#8 ("PRIVATE KEY") private keys
//! and "PUBLIC KEY" (SubjectPublicKeyInfo) public keys; ES256/ES384 take SEC1 ("EC PRIVATE
//! KEY") or PKCS#8 private keys. With only a public key a member verifies but cannot issue
//! (etcd's verify-only mode). ES512 (P-521) is refused at start: ring has no P-521.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};

use aspen_core::limits::AUTH_JWT_BYTES_MAX;

/// etcd's default token lifetime (`ttl` option): 5 minutes.
pub const JWT_TTL_DEFAULT: Duration = Duration::from_secs(5 * 60);
/// Longest user name a token may carry (etcd bounds none; ours keeps tokens small).
const USERNAME_BYTES_MAX: usize = 1024;

/// The signing methods etcd 3.4 accepts (jwt-go's names), ES512 included so that its refusal
/// can say why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignMethod {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    ES512,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    RsaPss,
    Ecdsa,
}

impl SignMethod {
    pub const ALL: [SignMethod; 12] = [
        SignMethod::HS256,
        SignMethod::HS384,
        SignMethod::HS512,
        SignMethod::RS256,
        SignMethod::RS384,
        SignMethod::RS512,
        SignMethod::PS256,
        SignMethod::PS384,
        SignMethod::PS512,
        SignMethod::ES256,
        SignMethod::ES384,
        SignMethod::ES512,
    ];

    /// The method named `name` (case-sensitive, as jwt-go's `GetSigningMethod`).
    pub fn from_name(name: &str) -> Option<SignMethod> {
        SignMethod::ALL.into_iter().find(|m| m.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            SignMethod::HS256 => "HS256",
            SignMethod::HS384 => "HS384",
            SignMethod::HS512 => "HS512",
            SignMethod::RS256 => "RS256",
            SignMethod::RS384 => "RS384",
            SignMethod::RS512 => "RS512",
            SignMethod::PS256 => "PS256",
            SignMethod::PS384 => "PS384",
            SignMethod::PS512 => "PS512",
            SignMethod::ES256 => "ES256",
            SignMethod::ES384 => "ES384",
            SignMethod::ES512 => "ES512",
        }
    }

    fn family(self) -> Family {
        match self {
            SignMethod::HS256 | SignMethod::HS384 | SignMethod::HS512 => Family::Hmac,
            SignMethod::RS256 | SignMethod::RS384 | SignMethod::RS512 => Family::Rsa,
            SignMethod::PS256 | SignMethod::PS384 | SignMethod::PS512 => Family::RsaPss,
            SignMethod::ES256 | SignMethod::ES384 | SignMethod::ES512 => Family::Ecdsa,
        }
    }

    fn hmac(self) -> ring::hmac::Algorithm {
        match self {
            SignMethod::HS384 => ring::hmac::HMAC_SHA384,
            SignMethod::HS512 => ring::hmac::HMAC_SHA512,
            _ => ring::hmac::HMAC_SHA256,
        }
    }

    fn rsa_signing(self) -> &'static dyn signature::RsaEncoding {
        match self {
            SignMethod::RS256 => &signature::RSA_PKCS1_SHA256,
            SignMethod::RS384 => &signature::RSA_PKCS1_SHA384,
            SignMethod::RS512 => &signature::RSA_PKCS1_SHA512,
            SignMethod::PS256 => &signature::RSA_PSS_SHA256,
            SignMethod::PS384 => &signature::RSA_PSS_SHA384,
            _ => &signature::RSA_PSS_SHA512,
        }
    }

    fn verification(self) -> &'static dyn signature::VerificationAlgorithm {
        match self {
            SignMethod::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            SignMethod::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            SignMethod::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            SignMethod::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
            SignMethod::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
            SignMethod::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
            SignMethod::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
            _ => &signature::ECDSA_P256_SHA256_FIXED,
        }
    }

    fn ecdsa_signing(self) -> &'static signature::EcdsaSigningAlgorithm {
        match self {
            SignMethod::ES384 => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            _ => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        }
    }

    /// The curve's OID contents (SEC 2) for ES256/ES384.
    fn curve_oid(self) -> &'static [u8] {
        match self {
            SignMethod::ES384 => OID_SECP384R1,
            _ => OID_PRIME256V1,
        }
    }
}

/// rsaEncryption, 1.2.840.113549.1.1.1.
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// id-ecPublicKey, 1.2.840.10045.2.1.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// prime256v1 (P-256), 1.2.840.10045.3.1.7.
const OID_PRIME256V1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// secp384r1 (P-384), 1.3.132.0.34.
const OID_SECP384R1: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

enum Signer {
    Hmac(ring::hmac::Key),
    Rsa(RsaKeyPair),
    Ecdsa(EcdsaKeyPair),
}

enum Verifier {
    Hmac(ring::hmac::Key),
    /// DER RSAPublicKey (RSA) or the uncompressed point (ECDSA), as ring takes them.
    Public(Vec<u8>),
}

/// One member's JWT keys and settings. Built once at start from the key files.
pub struct JwtKeys {
    method: SignMethod,
    ttl: Duration,
    signer: Option<Signer>,
    verifier: Verifier,
    rng: SystemRandom,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("method", &self.method)
            .field("ttl", &self.ttl)
            .field("can_sign", &self.signer.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a token could not be issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignError {
    /// Only a public key is configured (etcd's `ErrVerifyOnly`).
    VerifyOnly,
    Failed,
}

impl SignError {
    pub fn message(&self) -> &'static str {
        match self {
            SignError::VerifyOnly => "auth: token signing attempted with verify-only key",
            SignError::Failed => "auth: failed to sign the JWT token",
        }
    }
}

impl JwtKeys {
    /// Keys for `method` from PEM file contents. `private` is the `priv-key` file (the shared
    /// secret for HS*), `public` the `pub-key` file. Errors say what is wrong, for the
    /// configuration report.
    pub fn from_pem(
        method: SignMethod,
        public: Option<&[u8]>,
        private: Option<&[u8]>,
        ttl: Duration,
    ) -> Result<JwtKeys, String> {
        let rng = SystemRandom::new();
        let (signer, verifier) = match method.family() {
            Family::Hmac => {
                let secret = private.filter(|s| !s.is_empty()).ok_or_else(|| {
                    format!(
                        "sign-method {} needs priv-key (the shared secret)",
                        method.name()
                    )
                })?;
                let key = ring::hmac::Key::new(method.hmac(), secret);
                (Some(Signer::Hmac(key.clone())), Verifier::Hmac(key))
            }
            Family::Rsa | Family::RsaPss => rsa_keys(method, public, private)?,
            Family::Ecdsa => ecdsa_keys(method, public, private, &rng)?,
        };
        if ttl.is_zero() {
            return Err("ttl must be greater than 0".to_string());
        }
        Ok(JwtKeys {
            method,
            ttl,
            signer,
            verifier,
            rng,
        })
    }

    pub fn method(&self) -> SignMethod {
        self.method
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Can this member issue tokens (it has the private key)?
    pub fn can_sign(&self) -> bool {
        self.signer.is_some()
    }

    /// A token for `username` at auth `revision`, expiring `ttl` after `now_unix` seconds.
    pub fn sign(&self, username: &str, revision: u64, now_unix: u64) -> Result<String, SignError> {
        let signer = self.signer.as_ref().ok_or(SignError::VerifyOnly)?;
        let header = serde_json::json!({ "alg": self.method.name(), "typ": "JWT" });
        let exp = now_unix.saturating_add(self.ttl.as_secs().max(1));
        // Key order as etcd's (Go marshals maps sorted): exp, revision, username.
        let claims = serde_json::json!({ "exp": exp, "revision": revision, "username": username });
        let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = match signer {
            Signer::Hmac(key) => ring::hmac::sign(key, token.as_bytes()).as_ref().to_vec(),
            Signer::Rsa(pair) => {
                let mut out = vec![0u8; pair.public().modulus_len()];
                pair.sign(
                    self.method.rsa_signing(),
                    &self.rng,
                    token.as_bytes(),
                    &mut out,
                )
                .map_err(|_| SignError::Failed)?;
                out
            }
            Signer::Ecdsa(pair) => pair
                .sign(&self.rng, token.as_bytes())
                .map_err(|_| SignError::Failed)?
                .as_ref()
                .to_vec(),
        };
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature));
        assert!(token.split('.').count() == 3);
        Ok(token)
    }

    /// The user and auth revision of a valid `token` at `now_unix`; `None` for anything else
    /// (etcd's "invalid auth token").
    pub fn verify(&self, token: &str, now_unix: u64) -> Option<(String, u64)> {
        if token.len() > AUTH_JWT_BYTES_MAX as usize {
            return None;
        }
        let mut parts = token.split('.');
        let (header_b64, claims_b64, signature_b64) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header_b64).ok()?).ok()?;
        // jwt-go's key function: the header must name the configured method.
        if header.get("alg")?.as_str()? != self.method.name() {
            return None;
        }
        let signature = URL_SAFE_NO_PAD.decode(signature_b64).ok()?;
        let signed = &token.as_bytes()[..header_b64.len() + 1 + claims_b64.len()];
        match &self.verifier {
            Verifier::Hmac(key) => ring::hmac::verify(key, signed, &signature).ok()?,
            Verifier::Public(key) => {
                signature::UnparsedPublicKey::new(self.method.verification(), key)
                    .verify(signed, &signature)
                    .ok()?
            }
        }
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims_b64).ok()?).ok()?;
        let username = claims.get("username")?.as_str()?;
        if username.len() > USERNAME_BYTES_MAX {
            return None;
        }
        let revision = claim_u64(claims.get("revision")?)?;
        let exp = claim_u64(claims.get("exp")?)?;
        // jwt-go: valid while now <= exp.
        if now_unix > exp {
            return None;
        }
        Some((username.to_string(), revision))
    }
}

/// A non-negative integral JSON number (Go writes them as integers; a float such as 3.0 from
/// another writer is taken too).
fn claim_u64(value: &serde_json::Value) -> Option<u64> {
    if let Some(n) = value.as_u64() {
        return Some(n);
    }
    let f = value.as_f64()?;
    #[allow(
        clippy::cast_possible_truncation,
        reason = "checked first: integral, non-negative and below 2^64"
    )]
    (f >= 0.0 && f.fract() == 0.0 && f < 1.8e19).then_some(f as u64)
}

fn rsa_keys(
    method: SignMethod,
    public: Option<&[u8]>,
    private: Option<&[u8]>,
) -> Result<(Option<Signer>, Verifier), String> {
    let pair = match private {
        None => None,
        Some(pem) => {
            let pair = match PrivateKeyDer::from_pem_slice(pem)
                .map_err(|e| format!("priv-key is not a PEM private key: {e}"))?
            {
                PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
                PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
                _ => {
                    return Err(format!(
                        "priv-key is not an RSA private key, as sign-method {} needs",
                        method.name()
                    ));
                }
            }
            .map_err(|e| format!("priv-key is not a usable RSA private key: {e}"))?;
            Some(pair)
        }
    };
    let public = match public {
        None => None,
        Some(pem) => {
            let (oid, _params, key) = spki(pem)?;
            if oid != OID_RSA {
                return Err(format!(
                    "pub-key is not an RSA public key, as sign-method {} needs",
                    method.name()
                ));
            }
            Some(key)
        }
    };
    let pair = pair.map(|pair| {
        let own = pair.public().as_ref().to_vec();
        (Signer::Rsa(pair), own)
    });
    signer_and_verifier(method, pair, public)
}

fn ecdsa_keys(
    method: SignMethod,
    public: Option<&[u8]>,
    private: Option<&[u8]>,
    rng: &SystemRandom,
) -> Result<(Option<Signer>, Verifier), String> {
    if method == SignMethod::ES512 {
        return Err(
            "sign-method ES512 (P-521) is not supported by Aspen; use ES256 or ES384, \
                    or an RS*/PS* method"
                .to_string(),
        );
    }
    let curve = if method == SignMethod::ES384 {
        "P-384"
    } else {
        "P-256"
    };
    let wrong_curve = || {
        format!(
            "priv-key is not an ECDSA {curve} private key, as sign-method {} needs",
            method.name()
        )
    };
    let pair = match private {
        None => None,
        Some(pem) => {
            let pair = match PrivateKeyDer::from_pem_slice(pem)
                .map_err(|e| format!("priv-key is not a PEM private key: {e}"))?
            {
                PrivateKeyDer::Pkcs8(der) => {
                    EcdsaKeyPair::from_pkcs8(method.ecdsa_signing(), der.secret_pkcs8_der(), rng)
                        .map_err(|_| wrong_curve())?
                }
                PrivateKeyDer::Sec1(der) => {
                    let (scalar, point) = sec1_parts(der.secret_sec1_der(), method.curve_oid())
                        .ok_or_else(wrong_curve)?;
                    EcdsaKeyPair::from_private_key_and_public_key(
                        method.ecdsa_signing(),
                        scalar,
                        point,
                        rng,
                    )
                    .map_err(|_| wrong_curve())?
                }
                _ => return Err(wrong_curve()),
            };
            Some(pair)
        }
    };
    let public = match public {
        None => None,
        Some(pem) => {
            let (oid, params, key) = spki(pem)?;
            if oid != OID_EC_PUBLIC_KEY || params != method.curve_oid() {
                return Err(format!(
                    "pub-key is not an ECDSA {curve} public key, as sign-method {} needs",
                    method.name()
                ));
            }
            Some(key)
        }
    };
    let pair = pair.map(|pair| {
        let own = pair.public_key().as_ref().to_vec();
        (Signer::Ecdsa(pair), own)
    });
    signer_and_verifier(method, pair, public)
}

/// A SubjectPublicKeyInfo's algorithm OID, its parameters' OID (empty when not an OID) and the
/// key bits (RSAPublicKey DER for RSA, the point for EC).
type SpkiParts = (Vec<u8>, Vec<u8>, Vec<u8>);

/// A "PUBLIC KEY" PEM's parts.
/// A key pair (its signer and its own public key) and a configured public key: either alone
/// works (a public key alone verifies only, as etcd's verify-only mode); both must agree.
fn signer_and_verifier(
    method: SignMethod,
    pair: Option<(Signer, Vec<u8>)>,
    public: Option<Vec<u8>>,
) -> Result<(Option<Signer>, Verifier), String> {
    match (pair, public) {
        (None, None) => Err(format!(
            "sign-method {} needs priv-key or pub-key",
            method.name()
        )),
        (None, Some(key)) => Ok((None, Verifier::Public(key))),
        (Some((signer, own)), key) => {
            if key.as_ref().is_some_and(|key| *key != own) {
                return Err("pub-key does not match priv-key".to_string());
            }
            Ok((Some(signer), Verifier::Public(own)))
        }
    }
}

fn spki(pem: &[u8]) -> Result<SpkiParts, String> {
    let der = SubjectPublicKeyInfoDer::from_pem_slice(pem)
        .map_err(|e| format!("pub-key is not a PEM \"PUBLIC KEY\": {e}"))?;
    spki_parts(der.as_ref()).ok_or_else(|| "pub-key is a malformed \"PUBLIC KEY\"".to_string())
}

fn spki_parts(der: &[u8]) -> Option<SpkiParts> {
    let (tag, body, rest) = der::next(der)?;
    if tag != der::SEQUENCE || !rest.is_empty() {
        return None;
    }
    let (tag, algorithm, rest) = der::next(body)?;
    if tag != der::SEQUENCE {
        return None;
    }
    let (tag, bits, rest) = der::next(rest)?;
    if tag != der::BIT_STRING || !rest.is_empty() {
        return None;
    }
    let (tag, oid, params) = der::next(algorithm)?;
    if tag != der::OID {
        return None;
    }
    let params = match der::next(params) {
        Some((der::OID, curve, _)) => curve.to_vec(),
        _ => Vec::new(),
    };
    // The bit string's first byte counts unused bits: none in a key.
    let (&unused, key) = bits.split_first()?;
    (unused == 0).then(|| (oid.to_vec(), params, key.to_vec()))
}

/// SEC1's ECPrivateKey: the private scalar and the public point, checking the curve when named.
fn sec1_parts<'a>(der: &'a [u8], curve_oid: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    let (tag, body, _) = der::next(der)?;
    if tag != der::SEQUENCE {
        return None;
    }
    let (tag, version, rest) = der::next(body)?;
    if tag != der::INTEGER || version != [1] {
        return None;
    }
    let (tag, scalar, mut rest) = der::next(rest)?;
    if tag != der::OCTET_STRING {
        return None;
    }
    let mut point = None;
    while !rest.is_empty() {
        let (tag, field, after) = der::next(rest)?;
        match tag {
            // [0] parameters: the named curve.
            0xa0 => {
                let (tag, oid, _) = der::next(field)?;
                if tag != der::OID || oid != curve_oid {
                    return None;
                }
            }
            // [1] publicKey BIT STRING.
            0xa1 => {
                let (tag, bits, _) = der::next(field)?;
                let (&unused, key) = bits.split_first()?;
                if tag != der::BIT_STRING || unused != 0 {
                    return None;
                }
                point = Some(key);
            }
            _ => return None,
        }
        rest = after;
    }
    Some((scalar, point?))
}

/// Just enough DER to read key structures: definite lengths, checked against the input.
mod der {
    pub const INTEGER: u8 = 0x02;
    pub const BIT_STRING: u8 = 0x03;
    pub const OCTET_STRING: u8 = 0x04;
    pub const OID: u8 = 0x06;
    pub const SEQUENCE: u8 = 0x30;

    /// The first element of `input`: (tag, contents, what follows).
    pub fn next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            // Keys here are far below 4 GiB; longer or indefinite lengths are refused.
            if count == 0 || count > 4 || rest.len() < count {
                return None;
            }
            let mut len = 0usize;
            for &byte in &rest[..count] {
                len = (len << 8) | usize::from(byte);
            }
            rest = &rest[count..];
            len
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], &rest[len..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    /// A fresh PEM key pair for `method` (private, public), made with openssl (RSA, which ring
    /// cannot generate) or ring (ECDSA), or a random secret (HMAC, public empty).
    fn keys_for(method: SignMethod, dir: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
        match method.family() {
            Family::Hmac => {
                let mut secret = vec![0u8; 32];
                crate::access::fill_random(&mut secret);
                (secret, Vec::new())
            }
            Family::Rsa | Family::RsaPss => rsa_pem(dir),
            Family::Ecdsa => {
                let alg = method.ecdsa_signing();
                let rng = SystemRandom::new();
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
                let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
                let private = pem("PRIVATE KEY", pkcs8.as_ref());
                let public = pem("PUBLIC KEY", &ec_spki(method, pair.public_key().as_ref()));
                (private, public)
            }
        }
    }

    fn rsa_pem(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let private = dir.join(format!("rsa{n}.pem"));
        let public = dir.join(format!("rsa{n}.pub"));
        let status = std::process::Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&private)
            .arg("2048")
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl (tests make RSA keys with it)");
        assert!(status.success());
        let status = std::process::Command::new("openssl")
            .args(["rsa", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        (
            std::fs::read(private).unwrap(),
            std::fs::read(public).unwrap(),
        )
    }

    fn pem(label: &str, der: &[u8]) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out.into_bytes()
    }

    fn der_wrap(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if body.len() < 0x80 {
            out.push(u8::try_from(body.len()).expect("a short length"));
        } else {
            out.push(0x81);
            out.push(u8::try_from(body.len()).expect("the test's DER bodies are under 256 bytes"));
        }
        out.extend_from_slice(body);
        out
    }

    fn ec_spki(method: SignMethod, point: &[u8]) -> Vec<u8> {
        let mut alg = der_wrap(der::OID, OID_EC_PUBLIC_KEY);
        alg.extend(der_wrap(der::OID, method.curve_oid()));
        let mut body = der_wrap(der::SEQUENCE, &alg);
        let mut bits = vec![0u8];
        bits.extend_from_slice(point);
        body.extend(der_wrap(der::BIT_STRING, &bits));
        der_wrap(der::SEQUENCE, &body)
    }

    fn load(method: SignMethod, private: &[u8], public: &[u8]) -> JwtKeys {
        let public = (!public.is_empty()).then_some(public);
        JwtKeys::from_pem(method, public, Some(private), Duration::from_secs(60)).unwrap()
    }

    fn b64_json(value: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(value.to_string())
    }

    #[test]
    fn every_supported_method_round_trips_and_refuses_tampering() {
        let dir = tempfile::tempdir().unwrap();
        for method in SignMethod::ALL {
            if method == SignMethod::ES512 {
                continue;
            }
            let (private, public) = keys_for(method, dir.path());
            let keys = load(method, &private, &public);
            let token = keys.sign("alice", 7, NOW).unwrap();
            assert_eq!(
                keys.verify(&token, NOW),
                Some(("alice".to_string(), 7)),
                "{method:?}"
            );
            assert_eq!(
                keys.verify(&token, NOW + 60),
                Some(("alice".to_string(), 7))
            );
            assert_eq!(keys.verify(&token, NOW + 61), None, "expired: {method:?}");

            let parts: Vec<&str> = token.split('.').collect();
            let claims: serde_json::Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
            assert_eq!(
                claims,
                serde_json::json!({"exp": NOW + 60, "revision": 7, "username": "alice"})
            );
            // A payload naming someone else, under the original signature.
            let forged = b64_json(&serde_json::json!({
                "exp": NOW + 60, "revision": 7, "username": "root"
            }));
            let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
            assert_eq!(keys.verify(&tampered, NOW), None, "payload: {method:?}");
            // Another header (same alg, different bytes) under the original signature.
            let header = b64_json(&serde_json::json!({"alg": method.name(), "typ": "jwt"}));
            let tampered = format!("{}.{}.{}", header, parts[1], parts[2]);
            assert_eq!(keys.verify(&tampered, NOW), None, "header: {method:?}");
            // A flipped signature byte.
            let mut signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
            signature[0] ^= 1;
            let tampered = format!(
                "{}.{}.{}",
                parts[0],
                parts[1],
                URL_SAFE_NO_PAD.encode(&signature)
            );
            assert_eq!(keys.verify(&tampered, NOW), None, "signature: {method:?}");
            // alg: none, without a signature.
            let none = b64_json(&serde_json::json!({"alg": "none", "typ": "JWT"}));
            assert_eq!(keys.verify(&format!("{none}.{}.", parts[1]), NOW), None);

            // Another key of the same kind refuses the token.
            let (private2, public2) = keys_for(method, dir.path());
            let other = load(method, &private2, &public2);
            assert_eq!(other.verify(&token, NOW), None, "wrong key: {method:?}");
        }
    }

    #[test]
    fn a_token_for_another_method_is_refused_even_with_the_same_key_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = keys_for(SignMethod::RS256, dir.path());
        let rs = load(SignMethod::RS256, &private, &public);
        let ps = load(SignMethod::PS256, &private, &public);
        let token = rs.sign("alice", 1, NOW).unwrap();
        assert_eq!(ps.verify(&token, NOW), None);
        // An HS256 token keyed with the RSA public key's PEM (the classic confusion attack).
        let hs = JwtKeys::from_pem(SignMethod::HS256, None, Some(&public), JWT_TTL_DEFAULT)
            .unwrap()
            .sign("root", 1, NOW)
            .unwrap();
        assert_eq!(rs.verify(&hs, NOW), None);
    }

    #[test]
    fn verify_only_keys_verify_but_cannot_sign() {
        let dir = tempfile::tempdir().unwrap();
        for method in [SignMethod::RS384, SignMethod::ES256] {
            let (private, public) = keys_for(method, dir.path());
            let full = load(method, &private, &public);
            let public_only =
                JwtKeys::from_pem(method, Some(&public), None, JWT_TTL_DEFAULT).unwrap();
            assert!(!public_only.can_sign());
            assert_eq!(public_only.sign("a", 1, NOW), Err(SignError::VerifyOnly));
            let token = full.sign("bob", 3, NOW).unwrap();
            assert_eq!(
                public_only.verify(&token, NOW),
                Some(("bob".to_string(), 3))
            );
        }
    }

    #[test]
    fn keys_that_do_not_fit_the_method_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = JWT_TTL_DEFAULT;
        let (rsa_private, rsa_public) = keys_for(SignMethod::RS256, dir.path());
        let (ec_private, ec_public) = keys_for(SignMethod::ES256, dir.path());
        let (_, rsa_public2) = keys_for(SignMethod::RS256, dir.path());
        let (_, ec_public2) = keys_for(SignMethod::ES256, dir.path());
        let err = |m, public: Option<&[u8]>, private: Option<&[u8]>| {
            JwtKeys::from_pem(m, public, private, ttl).unwrap_err()
        };
        assert!(err(SignMethod::RS256, None, Some(&ec_private)).contains("RSA private key"));
        assert!(err(SignMethod::RS256, Some(&ec_public), None).contains("not an RSA public key"));
        assert!(err(SignMethod::ES256, None, Some(&rsa_private)).contains("ECDSA P-256"));
        assert!(err(SignMethod::ES384, None, Some(&ec_private)).contains("ECDSA P-384"));
        assert!(err(SignMethod::ES256, Some(&rsa_public), None).contains("ECDSA P-256"));
        assert!(
            err(SignMethod::RS256, Some(&rsa_public2), Some(&rsa_private))
                .contains("does not match")
        );
        assert!(
            err(SignMethod::ES256, Some(&ec_public2), Some(&ec_private)).contains("does not match")
        );
        assert!(err(SignMethod::ES512, Some(&ec_public), None).contains("P-521"));
        assert!(err(SignMethod::RS256, None, None).contains("needs priv-key or pub-key"));
        assert!(err(SignMethod::HS256, Some(&rsa_public), None).contains("shared secret"));
        assert!(err(SignMethod::RS256, None, Some(b"not pem")).contains("not a PEM"));
        assert!(err(SignMethod::RS256, Some(b"nope"), None).contains("PUBLIC KEY"));
    }

    /// The "traditional" PEMs openssl writes with `ecparam -genkey` and `genrsa -traditional`
    /// (SEC1 and PKCS#1), besides the PKCS#8 the other tests use.
    #[test]
    fn sec1_and_pkcs1_private_keys_load() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, &[&str], SignMethod, &str); 3] = [
            (
                "ec.pem",
                &[
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                ],
                SignMethod::ES256,
                "EC PRIVATE KEY",
            ),
            (
                "ec384.pem",
                &["ecparam", "-name", "secp384r1", "-genkey", "-noout", "-out"],
                SignMethod::ES384,
                "EC PRIVATE KEY",
            ),
            (
                "rsa.pem",
                &["genrsa", "-traditional", "-out"],
                SignMethod::PS512,
                "RSA PRIVATE KEY",
            ),
        ];
        for (file, args, method, label) in cases {
            let key = dir.path().join(file);
            let mut command = std::process::Command::new("openssl");
            command.args(args).arg(&key);
            if method == SignMethod::PS512 {
                command.arg("2048");
            }
            let status = command
                .stderr(std::process::Stdio::null())
                .status()
                .expect("openssl");
            assert!(status.success());
            let private = std::fs::read(&key).unwrap();
            assert!(String::from_utf8_lossy(&private).contains(label));
            let keys = JwtKeys::from_pem(method, None, Some(&private), JWT_TTL_DEFAULT).unwrap();
            let token = keys.sign("carol", 9, NOW).unwrap();
            assert_eq!(keys.verify(&token, NOW), Some(("carol".to_string(), 9)));
            // SEC1 names its curve: a P-256 key is not taken for ES384.
            if method == SignMethod::ES256 {
                let wrong =
                    JwtKeys::from_pem(SignMethod::ES384, None, Some(&private), JWT_TTL_DEFAULT);
                assert!(wrong.unwrap_err().contains("P-384"));
            }
        }
    }

    #[test]
    fn malformed_tokens_are_refused_without_panicking() {
        let keys =
            JwtKeys::from_pem(SignMethod::HS256, None, Some(b"secret"), JWT_TTL_DEFAULT).unwrap();
        let good = keys.sign("alice", 1, NOW).unwrap();
        let header = good.split('.').next().unwrap().to_string();
        let sign = |claims: serde_json::Value| {
            let body = format!("{header}.{}", b64_json(&claims));
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"secret");
            let tag = ring::hmac::sign(&key, body.as_bytes());
            format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
        };
        // Properly signed, but the claims are not etcd's.
        for claims in [
            serde_json::json!({"revision": 1, "username": "a"}),
            serde_json::json!({"exp": NOW + 5, "username": "a"}),
            serde_json::json!({"exp": NOW + 5, "revision": 1}),
            serde_json::json!({"exp": NOW + 5, "revision": -1, "username": "a"}),
            serde_json::json!({"exp": NOW + 5, "revision": 1.5, "username": "a"}),
            serde_json::json!({"exp": "soon", "revision": 1, "username": "a"}),
            serde_json::json!({"exp": NOW + 5, "revision": 1, "username": 5}),
            serde_json::json!([1, 2]),
        ] {
            assert_eq!(keys.verify(&sign(claims.clone()), NOW), None, "{claims}");
        }
        assert_eq!(
            keys.verify(
                &sign(serde_json::json!({"exp": NOW, "revision": 2.0, "username": "a"})),
                NOW
            ),
            Some(("a".to_string(), 2))
        );
        let long = "a".repeat(AUTH_JWT_BYTES_MAX as usize + 1);
        for bad in [
            "",
            ".",
            "..",
            "...",
            "a.b",
            "a.b.c",
            "a.b.c.d",
            "!!!.***.???",
            "e30.e30.",
            "bnVsbA.bnVsbA.AA",
            "é.é.é",
            long.as_str(),
            &format!("{good}."),
            &format!("{good}x"),
            &good[1..],
            &good.replace('.', ""),
        ] {
            assert_eq!(keys.verify(bad, NOW), None, "{bad:?}");
        }
        // Every truncation of a good token, none of which may panic or verify.
        for end in 0..good.len() {
            assert_eq!(keys.verify(&good[..end], NOW), None);
        }
    }
}
