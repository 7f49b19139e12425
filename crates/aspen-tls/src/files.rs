//! Reading PEM files: bounded in size, every error naming the file.

use std::io::Read;
use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{CERT_CHAIN_LEN_MAX, PEM_FILE_BYTES_MAX, TlsError};

pub(crate) fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    let file_error = |reason: String| TlsError::File {
        path: path.display().to_string(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| file_error(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(PEM_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| file_error(e.to_string()))?;
    if bytes.len() as u64 > PEM_FILE_BYTES_MAX {
        return Err(file_error(format!(
            "larger than {PEM_FILE_BYTES_MAX} bytes"
        )));
    }
    Ok(bytes)
}

fn pem_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The certificates of a PEM file, leaf first (as written).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_bounded(path)?;
    parse_certificates(path, &bytes)
}

pub(crate) fn parse_certificates(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(bytes) {
        let cert = cert.map_err(|e| pem_error(path, format!("bad PEM certificate: {e}")))?;
        if certs.len() == CERT_CHAIN_LEN_MAX {
            return Err(pem_error(
                path,
                format!("more than {CERT_CHAIN_LEN_MAX} certificates"),
            ));
        }
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(pem_error(path, "no PEM certificate found"));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_bounded(path)?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| pem_error(path, format!("no usable PEM private key: {e}")))
}

/// Trust roots from a CA bundle; every certificate in it must parse as a trust anchor.
pub fn read_ca_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let bytes = read_bounded(path)?;
    let mut roots = RootCertStore::empty();
    let mut found = 0usize;
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| pem_error(path, format!("bad PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| pem_error(path, format!("not a usable CA certificate: {e}")))?;
        found += 1;
    }
    if found == 0 {
        return Err(pem_error(path, "no PEM certificate found"));
    }
    Ok(roots)
}
