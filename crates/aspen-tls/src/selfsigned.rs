//! Generated certificates: `--auto-tls`'s self-signed pair, and a small CA for tests and
//! tools (a CA certificate that issues server, client and peer certificates).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::{SELF_SIGNED_VALIDITY_DAYS, TlsError};

fn gen_error(e: rcgen::Error) -> TlsError {
    TlsError::Config(format!("cannot generate a certificate: {e}"))
}

fn sans(hosts: &[String]) -> Result<Vec<SanType>, TlsError> {
    hosts
        .iter()
        .map(|host| match host.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(
                host.clone().try_into().map_err(gen_error)?,
            )),
        })
        .collect()
}

/// `--auto-tls`: a self-signed certificate for `hosts` in `dir/cert.pem` and `dir/key.pem`
/// (the key readable by the owner only). As etcd, an existing pair in `dir` is reused, so a
/// restarted member keeps its certificate.
pub fn write_self_signed(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let file_error = |path: &Path, e: std::io::Error| TlsError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    let key = KeyPair::generate().map_err(gen_error)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans(hosts)?;
    params
        .distinguished_name
        .push(DnType::OrganizationName, "aspen");
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(i64::from(SELF_SIGNED_VALIDITY_DAYS));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.self_signed(&key).map_err(gen_error)?;
    write_private(&key_path, key.serialize_pem().as_bytes())
        .map_err(|e| file_error(&key_path, e))?;
    std::fs::write(&cert_path, cert.pem()).map_err(|e| file_error(&cert_path, e))?;
    Ok((cert_path, key_path))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// A certificate authority: its certificate (PEM) and what it needs to sign.
pub struct CertificateAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// What a certificate issued by [`CertificateAuthority::issue`] says.
#[derive(Debug, Clone)]
pub struct LeafOptions {
    pub common_name: String,
    /// DNS names and IP addresses (as text).
    pub hosts: Vec<String>,
    /// Valid from `now + valid_from_days` to `now + valid_until_days` (negative: the past).
    pub valid_from_days: i64,
    pub valid_until_days: i64,
}

impl LeafOptions {
    /// A certificate for server and client use, valid from yesterday for a year.
    pub fn new(common_name: &str, hosts: &[&str]) -> LeafOptions {
        LeafOptions {
            common_name: common_name.to_string(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            valid_from_days: -1,
            valid_until_days: 365,
        }
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

impl IssuedCertificate {
    /// Writes `<dir>/<name>.pem` and `<dir>/<name>-key.pem`; returns (cert, key) paths.
    pub fn write(&self, dir: &Path, name: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}-key.pem"));
        std::fs::write(&cert_path, &self.cert_pem)?;
        write_private(&key_path, self.key_pem.as_bytes())?;
        Ok((cert_path, key_path))
    }
}

impl CertificateAuthority {
    /// A new self-signed CA, valid from yesterday for ten years.
    pub fn new(common_name: &str) -> Result<CertificateAuthority, TlsError> {
        let key = KeyPair::generate().map_err(gen_error)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key).map_err(gen_error)?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate usable by servers and clients (etcd's peers are both).
    pub fn issue(&self, options: &LeafOptions) -> Result<IssuedCertificate, TlsError> {
        let key = KeyPair::generate().map_err(gen_error)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, options.common_name.as_str());
        params.subject_alt_names = sans(&options.hosts)?;
        let now = OffsetDateTime::now_utc();
        params.not_before = now + Duration::days(options.valid_from_days);
        params.not_after = now + Duration::days(options.valid_until_days);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_error)?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
