//! The server side: a rustls `ServerConfig` from etcd's flags, and the handshake of one
//! accepted connection (bounded in time, with a clear refusal of plaintext).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::keypair::ReloadingKeyPair;
use crate::{PROTOCOL_VERSIONS, TLS_HANDSHAKE_TIMEOUT_MS, TlsError};

/// etcd's flags for one kind of listener (client or peer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerTlsOptions {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate that chains to `trusted_ca_file`.
    pub client_cert_auth: bool,
    /// `--cipher-suites`: IANA names of TLS 1.2 suites; empty means rustls' defaults. As in
    /// Go (and so etcd), TLS 1.3 suites are not configurable and always offered.
    pub cipher_suites: Vec<String>,
    /// ALPN protocols offered, e.g. `h2` and `http/1.1`.
    pub alpn_protocols: Vec<Vec<u8>>,
}

/// TLS 1.2 suites Aspen can offer (rustls with ring: AEAD with forward secrecy only), by
/// their IANA names, which are also Go's and so etcd's.
pub const CIPHER_SUITES_SUPPORTED: &[&str] = &[
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// Go's suite names that rustls does not implement (CBC, RSA key exchange, RC4, 3DES): etcd
/// accepts them, Aspen refuses them by name rather than as unknown.
const CIPHER_SUITES_GO_ONLY: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// Go's older names for the ChaCha20 suites.
fn canonical_suite_name(name: &str) -> &str {
    match name {
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        other => other,
    }
}

/// The provider with its TLS 1.2 suites narrowed to `names` (TLS 1.3 suites kept).
pub(crate) fn provider_with_suites(names: &[String]) -> Result<CryptoProvider, TlsError> {
    let mut provider = crate::ring_provider();
    if names.is_empty() {
        return Ok(provider);
    }
    let mut wanted = Vec::with_capacity(names.len());
    for name in names {
        let name = canonical_suite_name(name.trim());
        if CIPHER_SUITES_GO_ONLY.contains(&name) {
            return Err(TlsError::Config(format!(
                "--cipher-suites: {name} is not supported (Aspen offers only {})",
                CIPHER_SUITES_SUPPORTED.join(", ")
            )));
        }
        if !CIPHER_SUITES_SUPPORTED.contains(&name) {
            // etcd's message for a name Go does not know.
            return Err(TlsError::Config(format!(
                "unexpected TLS cipher suite \"{name}\""
            )));
        }
        wanted.push(name);
    }
    provider.cipher_suites.retain(|suite| {
        let is_tls13 = suite.tls13().is_some();
        let name = format!("{:?}", suite.suite());
        is_tls13 || wanted.contains(&name.as_str())
    });
    Ok(provider)
}

/// Why one connection's handshake failed. None of these stops the listener.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("client sent plaintext to a TLS port")]
    Plaintext,
    #[error("TLS handshake not finished within {TLS_HANDSHAKE_TIMEOUT_MS} ms")]
    Timeout,
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
}

/// A listener's TLS: its config (certificate re-read on change) and the handshake.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    config: Arc<ServerConfig>,
}

impl ServerTls {
    /// Reads the certificate, key and CA now, so start-up reports a bad file.
    pub fn new(options: &ServerTlsOptions) -> Result<ServerTls, TlsError> {
        let provider = Arc::new(provider_with_suites(&options.cipher_suites)?);
        let keypair =
            ReloadingKeyPair::load(&options.cert_file, &options.key_file, provider.clone())?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = if options.client_cert_auth {
            let ca_file = options.trusted_ca_file.as_ref().ok_or_else(|| {
                TlsError::Config("client certificate authentication needs a trusted CA file".into())
            })?;
            let roots = crate::files::read_ca_roots(ca_file)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(format!("{}: {e}", ca_file.display())))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_cert_resolver(Arc::new(keypair));
        config.alpn_protocols = options.alpn_protocols.clone();
        let config = Arc::new(config);
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(config.clone()),
            config,
        })
    }

    /// Whether `--cipher-suites` names only suites Aspen offers.
    pub fn check_cipher_suites(names: &[String]) -> Result<(), TlsError> {
        provider_with_suites(names).map(|_| ())
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// The handshake of one accepted connection, within `TLS_HANDSHAKE_TIMEOUT_MS`. Plaintext
    /// is refused as Go's servers refuse it: an HTTP/1 request gets "400 Bad Request" with
    /// "Client sent an HTTP request to an HTTPS server.", anything else is closed.
    pub async fn accept(&self, mut tcp: TcpStream) -> Result<TlsStream<TcpStream>, HandshakeError> {
        let deadline = Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS);
        let work = async {
            let mut first = [0u8; 5];
            let seen = tcp.peek(&mut first).await.map_err(HandshakeError::Tls)?;
            // 0x16: a TLS handshake record, which every ClientHello starts with.
            if seen > 0 && first[0] != 0x16 {
                if looks_like_http1(&first[..seen]) {
                    let _ = tcp
                        .write_all(
                            b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n",
                        )
                        .await;
                }
                let _ = tcp.shutdown().await;
                return Err(HandshakeError::Plaintext);
            }
            self.acceptor.accept(tcp).await.map_err(HandshakeError::Tls)
        };
        tokio::time::timeout(deadline, work)
            .await
            .unwrap_or(Err(HandshakeError::Timeout))
    }
}

fn looks_like_http1(first: &[u8]) -> bool {
    const METHODS: &[&[u8]] = &[
        b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELET", b"OPTIO", b"PATCH",
    ];
    METHODS.iter().any(|method| {
        let n = method.len().min(first.len());
        n >= 3 && first[..n] == method[..n]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_suites_by_name() {
        let all = provider_with_suites(&[]).expect("defaults");
        let one = provider_with_suites(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into()])
            .expect("one suite");
        let tls12: Vec<String> = one
            .cipher_suites
            .iter()
            .filter(|s| s.tls13().is_none())
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(tls12, vec!["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]);
        // TLS 1.3 suites stay, as in Go.
        assert!(one.cipher_suites.iter().any(|s| s.tls13().is_some()));
        assert!(all.cipher_suites.len() > one.cipher_suites.len());
        let unknown = provider_with_suites(&["TLS_NOPE".into()]).expect_err("unknown");
        assert_eq!(
            unknown.to_string(),
            "unexpected TLS cipher suite \"TLS_NOPE\""
        );
        let cbc = provider_with_suites(&["TLS_RSA_WITH_AES_128_CBC_SHA".into()]).expect_err("cbc");
        assert!(cbc.to_string().contains("not supported"), "{cbc}");
        // Every name we advertise is one rustls has.
        for name in CIPHER_SUITES_SUPPORTED {
            provider_with_suites(&[name.to_string()]).expect(name);
        }
    }

    #[test]
    fn http1_detection() {
        assert!(looks_like_http1(b"GET /"));
        assert!(looks_like_http1(b"POST "));
        assert!(!looks_like_http1(b"PRI *"));
        assert!(!looks_like_http1(&[0x16, 3, 1, 0, 0]));
    }
}
