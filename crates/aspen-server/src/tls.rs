//! TLS settings of a member, from etcd's flags: which listeners are https, the certificates of
//! the client side (client and metrics listeners) and of the peer side (peer listeners and
//! this member's connections to other members), `--auto-tls`, `--cipher-suites`.
//!
//! Checked at start-up with etcd's messages; the files themselves are read when the member
//! starts (`build_*`), so a missing or unusable file stops start-up with its path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aspen_tls::{ClientTls, ClientTlsOptions, ServerTls, ServerTlsOptions, TlsError};

/// Where a listener's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    Files {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
    /// `--auto-tls` / `--peer-auto-tls`: self-signed, generated under the data dir on first
    /// start (`fixtures/client` or `fixtures/peer`, as etcd) and reused after.
    Auto,
}

/// The TLS of one side (client or peer), as the flags give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideTls {
    /// `None` when neither files nor auto TLS were given (only possible when no listener of
    /// that side is https).
    pub cert: Option<CertSource>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
}

impl SideTls {
    fn is_empty(&self) -> bool {
        self.cert.is_none() && self.trusted_ca_file.is_none() && !self.client_cert_auth
    }
}

/// Every TLS setting of a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub client: SideTls,
    pub peer: SideTls,
    /// `--cipher-suites`, IANA names of TLS 1.2 suites; empty: rustls' defaults.
    pub cipher_suites: Vec<String>,
    /// Per listener, in the order of the listen flags: is it https?
    pub client_https: Vec<bool>,
    pub peer_https: Vec<bool>,
    pub metrics_https: Vec<bool>,
    /// Whether any member's peer URL is https: then this member dials peers with TLS.
    pub peers_use_tls: bool,
}

impl TlsConfig {
    /// No TLS anywhere: every URL http://.
    pub fn none() -> TlsConfig {
        TlsConfig {
            client: SideTls {
                cert: None,
                trusted_ca_file: None,
                client_cert_auth: false,
            },
            peer: SideTls {
                cert: None,
                trusted_ca_file: None,
                client_cert_auth: false,
            },
            cipher_suites: Vec::new(),
            client_https: Vec::new(),
            peer_https: Vec::new(),
            metrics_https: Vec::new(),
            peers_use_tls: false,
        }
    }
}

/// The flags' raw values, as `config.rs` parsed them.
pub(crate) struct TlsFlags<'a> {
    pub cert_file: Option<&'a str>,
    pub key_file: Option<&'a str>,
    pub trusted_ca_file: Option<&'a str>,
    pub client_cert_auth: bool,
    pub auto_tls: bool,
    pub peer_cert_file: Option<&'a str>,
    pub peer_key_file: Option<&'a str>,
    pub peer_trusted_ca_file: Option<&'a str>,
    pub peer_client_cert_auth: bool,
    pub peer_auto_tls: bool,
    pub cipher_suites: Option<&'a str>,
}

/// Which listeners are https, per flag, with their addresses (for etcd's messages).
pub(crate) struct HttpsListeners<'a> {
    pub client: &'a [(SocketAddr, bool)],
    pub client_urls_text: &'a [String],
    pub peer: &'a [(SocketAddr, bool)],
    pub metrics: &'a [(SocketAddr, bool)],
    pub peers_use_tls: bool,
}

fn side(
    prefix: &str,
    files: (Option<&str>, Option<&str>),
    trusted_ca_file: Option<&str>,
    client_cert_auth: bool,
    auto_tls: bool,
    problems: &mut Vec<String>,
) -> SideTls {
    let non_empty = |v: Option<&str>| v.filter(|v| !v.trim().is_empty()).map(PathBuf::from);
    let cert = match (non_empty(files.0), non_empty(files.1)) {
        (Some(cert_file), Some(key_file)) => Some(CertSource::Files {
            cert_file,
            key_file,
        }),
        (None, None) if auto_tls => Some(CertSource::Auto),
        (None, None) => None,
        _ => {
            problems.push(format!(
                "--{prefix}cert-file and --{prefix}key-file must be given together"
            ));
            None
        }
    };
    let trusted_ca_file = non_empty(trusted_ca_file);
    if client_cert_auth && trusted_ca_file.is_none() && cert != Some(CertSource::Auto) {
        problems.push(format!(
            "--{prefix}client-cert-auth needs --{prefix}trusted-ca-file (the CA that client \
             certificates must chain to)"
        ));
    }
    SideTls {
        cert,
        trusted_ca_file,
        client_cert_auth,
    }
}

/// Checks the TLS flags against the URLs, with etcd's messages where etcd has one.
pub(crate) fn resolve(
    flags: &TlsFlags<'_>,
    listeners: &HttpsListeners<'_>,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> TlsConfig {
    let client = side(
        "",
        (flags.cert_file, flags.key_file),
        flags.trusted_ca_file,
        flags.client_cert_auth,
        flags.auto_tls,
        problems,
    );
    let peer = side(
        "peer-",
        (flags.peer_cert_file, flags.peer_key_file),
        flags.peer_trusted_ca_file,
        flags.peer_client_cert_auth,
        flags.peer_auto_tls,
        problems,
    );
    let any_client_https = listeners.client.iter().any(|(_, tls)| *tls);
    if client.cert.is_none() {
        for ((_, tls), text) in listeners.client.iter().zip(listeners.client_urls_text) {
            if *tls {
                problems.push(format!(
                    "TLS key/cert (--cert-file, --key-file) must be provided for client url \
                     {text} with HTTPS scheme"
                ));
            }
        }
        for (addr, tls) in listeners.metrics {
            if *tls {
                problems.push(format!(
                    "cannot listen on TLS for {addr}: KeyFile and CertFile are not presented"
                ));
            }
        }
    }
    if peer.cert.is_none() {
        for (addr, tls) in listeners.peer {
            if *tls {
                problems.push(format!(
                    "cannot listen on TLS for {addr}: KeyFile and CertFile are not presented"
                ));
            }
        }
    }
    let any_metrics_https = listeners.metrics.iter().any(|(_, tls)| *tls);
    if !client.is_empty() && !any_client_https && !any_metrics_https {
        warnings.push(
            "scheme is HTTP while key and cert files are present; ignoring key and cert files \
             (client)"
                .to_string(),
        );
    }
    let any_peer_https = listeners.peer.iter().any(|(_, tls)| *tls);
    if !peer.is_empty() && !any_peer_https && !listeners.peers_use_tls {
        warnings.push(
            "scheme is HTTP while key and cert files are present; ignoring key and cert files \
             (peer)"
                .to_string(),
        );
    }
    let cipher_suites: Vec<String> = flags
        .cipher_suites
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if !cipher_suites.is_empty()
        && let Err(error) = ServerTls::check_cipher_suites(&cipher_suites)
    {
        problems.push(format!("--cipher-suites: {error}"));
    }
    TlsConfig {
        client,
        peer,
        cipher_suites,
        client_https: listeners.client.iter().map(|(_, tls)| *tls).collect(),
        peer_https: listeners.peer.iter().map(|(_, tls)| *tls).collect(),
        metrics_https: listeners.metrics.iter().map(|(_, tls)| *tls).collect(),
        peers_use_tls: listeners.peers_use_tls,
    }
}

/// The kinds of listener, for their TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// gRPC and plain HTTP; the client side's certificates.
    Client,
    /// /metrics, /health, /version; the client side's certificates, as etcd.
    Metrics,
    /// Raft between members (HTTP/2); the peer side's certificates.
    Peer,
}

/// The certificate pair of a side: its files, or the auto-TLS pair (generated if missing)
/// for `hosts` under `<data dir>/fixtures/<side>`.
fn cert_files(
    source: &CertSource,
    data_dir: &Path,
    side: &str,
    hosts: &[String],
) -> Result<(PathBuf, PathBuf), TlsError> {
    match source {
        CertSource::Files {
            cert_file,
            key_file,
        } => Ok((cert_file.clone(), key_file.clone())),
        CertSource::Auto => {
            let dir = data_dir.join("fixtures").join(side);
            let pair = aspen_tls::write_self_signed(&dir, hosts)?;
            tracing::info!(dir = %dir.display(), side, "auto TLS: using a self-signed certificate");
            Ok(pair)
        }
    }
}

/// The server TLS of one side, if it has any https listener. `hosts` go into an auto-TLS
/// certificate's names.
pub fn build_server(
    tls: &TlsConfig,
    kind: ListenerKind,
    data_dir: &Path,
    hosts: &[String],
) -> Result<Option<ServerTls>, TlsError> {
    use crate::serve::Protocols;
    // The protocols each listener is served with (bootstrap.rs), offered in ALPN.
    let (side, name, protocols, https) = match kind {
        ListenerKind::Client => (
            &tls.client,
            "client",
            Protocols::Http1AndHttp2,
            &tls.client_https,
        ),
        ListenerKind::Metrics => (
            &tls.client,
            "client",
            Protocols::Http1AndHttp2,
            &tls.metrics_https,
        ),
        ListenerKind::Peer => (&tls.peer, "peer", Protocols::Http2Only, &tls.peer_https),
    };
    let any_https = https.iter().any(|h| *h);
    let Some(source) = side.cert.as_ref().filter(|_| any_https) else {
        return Ok(None);
    };
    let (cert_file, key_file) = cert_files(source, data_dir, name, hosts)?;
    // etcd: with auto TLS nobody signed the clients' certificates either, so client
    // certificate authentication has nothing to check against; it is skipped.
    let client_cert_auth = side.client_cert_auth && *source != CertSource::Auto;
    if side.client_cert_auth && !client_cert_auth {
        tracing::warn!(
            side = name,
            "client certificate authentication is off with auto TLS"
        );
    }
    ServerTls::new(&ServerTlsOptions {
        cert_file,
        key_file,
        trusted_ca_file: side.trusted_ca_file.clone(),
        client_cert_auth,
        cipher_suites: tls.cipher_suites.clone(),
        alpn_protocols: protocols.alpn(),
    })
    .map(Some)
}

/// How this member dials https peers: the peer certificate as its client certificate, the
/// peer CA as trust roots; with `--peer-auto-tls`, peers' certificates are not verified
/// (nobody signed them), as etcd.
pub fn build_peer_client(
    tls: &TlsConfig,
    data_dir: &Path,
    hosts: &[String],
) -> Result<Option<ClientTls>, TlsError> {
    if !tls.peers_use_tls {
        return Ok(None);
    }
    let peer = &tls.peer;
    let (cert_file, key_file) = match &peer.cert {
        Some(source) => {
            let (cert, key) = cert_files(source, data_dir, "peer", hosts)?;
            (Some(cert), Some(key))
        }
        None => (None, None),
    };
    ClientTls::new(&ClientTlsOptions {
        ca_file: peer.trusted_ca_file.clone(),
        cert_file,
        key_file,
        insecure_skip_verify: peer.cert == Some(CertSource::Auto) && peer.trusted_ca_file.is_none(),
    })
    .map(Some)
}

/// The hosts of URLs (`https://a:1` -> `a`), for an auto-TLS certificate's names.
pub fn url_hosts(urls: &[String]) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    for url in urls {
        let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        let host = match rest.rsplit_once(':') {
            Some((host, _port)) => host,
            None => rest,
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if !host.is_empty() && !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    hosts
}
