//! The client side: a rustls `ClientConfig` from etcdctl's flags (`--cacert`, `--cert`,
//! `--key`, `--insecure-skip-tls-verify`) or a member's peer flags, and a connector that gives
//! tonic channels TLS connections.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::keypair::ReloadingKeyPair;
use crate::{PROTOCOL_VERSIONS, TlsError};

/// Where the system's CA bundle usually is (Debian, Ubuntu, Alpine; then Fedora/RHEL).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsOptions {
    /// Trust roots; without one, `SSL_CERT_FILE` or the system bundle.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and key, re-read when the files change.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate (signatures are still checked). For `--auto-tls` peers,
    /// whose certificates nobody signed, and etcdctl's `--insecure-skip-tls-verify`.
    pub insecure_skip_verify: bool,
}

/// A client TLS configuration, shared by every connection made with it.
#[derive(Clone, Debug)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

impl ClientTls {
    pub fn new(options: &ClientTlsOptions) -> Result<ClientTls, TlsError> {
        let provider = crate::provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = if options.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCertificate {
                    provider: provider.clone(),
                }))
        } else {
            builder.with_root_certificates(trust_roots(options.ca_file.as_deref())?)
        };
        let mut config = match (&options.cert_file, &options.key_file) {
            (Some(cert), Some(key)) => builder
                .with_client_cert_resolver(Arc::new(ReloadingKeyPair::load(cert, key, provider)?)),
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(TlsError::Config(
                    "a client certificate needs both its certificate and its key file".into(),
                ));
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    /// A client from a config built elsewhere (tests that need an unusual resolver).
    pub fn from_config(config: Arc<ClientConfig>) -> ClientTls {
        ClientTls { config }
    }

    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// A connector for `Endpoint::connect_with_connector[_lazy]`.
    pub fn connector(&self) -> TlsConnector {
        TlsConnector {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
        }
    }
}

fn trust_roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, TlsError> {
    if let Some(path) = ca_file {
        return crate::files::read_ca_roots(path);
    }
    let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let system = SYSTEM_CA_BUNDLES
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists());
    match from_env.or(system) {
        Some(path) => crate::files::read_ca_roots(&path),
        None => Err(TlsError::Config(
            "no CA file given and no system CA bundle found".into(),
        )),
    }
}

/// Opens a TCP connection to the URI's host and port and runs the TLS handshake, naming the
/// host (DNS name or IP address) for certificate verification.
#[derive(Clone)]
pub struct TlsConnector {
    connector: tokio_rustls::TlsConnector,
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move { Ok(TokioIo::new(connector.connect_tls(&uri).await?)) })
    }
}

/// The port of an `https://` URI that names none.
const HTTPS_PORT_DEFAULT: u16 = 443;

/// The URI's host, without an IPv6 literal's brackets.
fn uri_host(uri: &http::Uri) -> std::io::Result<&str> {
    let host = uri.host().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: no host"))
    })?;
    Ok(host.trim_start_matches('[').trim_end_matches(']'))
}

/// A TCP connection (`TCP_NODELAY` on) to the URI's host and port (`default_port` if it names
/// none): what `TlsConnector` runs TLS over, and what a client speaking plain HTTP/2 itself
/// (aspenctl bench's unary client) dials. Errors are worded as hyper's own connector words
/// them ("tcp connect error"), so callers that tell "never sent" from "maybe sent" by the
/// message see the same text either way.
pub async fn connect_tcp(uri: &http::Uri, default_port: u16) -> std::io::Result<TcpStream> {
    let host = uri_host(uri)?;
    let port = uri.port_u16().unwrap_or(default_port);
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("tcp connect error: {e}")))?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

impl TlsConnector {
    /// A TLS connection to the URI's host and port, for clients that speak HTTP/2 themselves
    /// (aspenctl bench's unary client) rather than through tonic's channel.
    pub async fn connect_tls(&self, uri: &http::Uri) -> std::io::Result<TlsStream<TcpStream>> {
        let host = uri_host(uri)?;
        let name = ServerName::try_from(host.to_string()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{uri}: host is not a valid TLS server name"),
            )
        })?;
        let tcp = connect_tcp(uri, HTTPS_PORT_DEFAULT).await?;
        self.connector.connect(name, tcp).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("error trying to connect: TLS handshake: {e}"),
            )
        })
    }
}

/// `--insecure-skip-tls-verify` and auto-TLS peers: any certificate is accepted, but the
/// handshake's signatures are still verified, so the peer must hold the key it presents.
#[derive(Debug)]
struct AnyServerCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
