//! TLS for Aspen on rustls (ring as the only crypto provider; TLS 1.2 and 1.3, never lower):
//! the server side of the client, peer and metrics listeners, the client side of peer
//! channels and aspenctl, and the self-signed certificates of `--auto-tls`.
//!
//! Certificate files are read again when they change: every new handshake checks the files'
//! modification time, size and inode (`keypair.rs`), so replacing them on disk rotates the
//! certificate without a restart, as etcd does; connections already open keep theirs.
//!
//! The limits below live here rather than in `aspen-core/src/limits.rs` because aspenctl uses
//! this crate and must not depend on the server's core (as `aspen-cli/src/limits.rs`).

mod client;
mod common_name;
mod files;
mod keypair;
mod selfsigned;
mod server;

// The rustls types callers see (configs, certificates), so they need not pin their own.
pub use {rustls, tokio_rustls};

pub use client::{ClientTls, ClientTlsOptions, TlsConnector, connect_tcp};
pub use common_name::{COMMON_NAME_BYTES_MAX, subject_common_name};
pub use files::{read_ca_roots, read_certificates, read_private_key};
pub use keypair::ReloadingKeyPair;
pub use selfsigned::{CertificateAuthority, IssuedCertificate, LeafOptions, write_self_signed};
pub use server::{CIPHER_SUITES_SUPPORTED, HandshakeError, ServerTls, ServerTlsOptions};

/// Largest PEM file read (certificate chain, key or CA bundle). Real ones are a few KiB; a
/// system CA bundle is ~200 KiB.
pub const PEM_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// A TLS handshake that has not finished by then is dropped, so a client that opens a
/// connection and sends nothing cannot hold a slot forever.
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Certificates in one chain file.
pub const CERT_CHAIN_LEN_MAX: usize = 16;
/// Validity of a certificate made by `--auto-tls` (etcd's default: one year).
pub const SELF_SIGNED_VALIDITY_DAYS: u32 = 365;

/// Why TLS could not be set up. Every variant names the file or the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    File { path: String, reason: String },
    #[error("{path}: {reason}")]
    Pem { path: String, reason: String },
    #[error("{0}")]
    Config(String),
}

/// The one crypto provider Aspen uses.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(ring_provider())
}

/// rustls marks ring's provider deprecated because it lacks post-quantum key exchange, which
/// only aws-lc-rs offers; aws-lc-rs means a C/cmake build of aws-lc on every machine and CI
/// run. etcd (Go 1.19's crypto/tls) offers no post-quantum exchange either.
#[allow(deprecated)]
pub(crate) fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// TLS 1.2 and 1.3: etcd's minimum is 1.2, and rustls has nothing older.
pub(crate) const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
