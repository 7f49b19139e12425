//! A certificate and key read from files and read again when the files change.
//!
//! etcd re-reads its certificate files on every handshake. Here every new handshake stats both
//! files (two `stat` calls, no reads) and reloads only when one of them changed. A pair that
//! does not load (a half-written file during a rotation, a key that does not match the
//! certificate) is reported once and the previous pair keeps serving; the next handshake
//! tries again, so a rotation that completes a moment later is picked up.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;

use crate::TlsError;
use crate::files::{parse_certificates, read_bounded};

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len_bytes: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: meta.modified().ok(),
        len_bytes: meta.len(),
        inode: meta.ino(),
    })
}

#[derive(Debug)]
struct Loaded {
    stamps: (Option<FileStamp>, Option<FileStamp>),
    key: Arc<CertifiedKey>,
    /// The stamps of the last pair that failed to load, so its error is logged once.
    failed: Option<(Option<FileStamp>, Option<FileStamp>)>,
}

/// A certificate chain and its private key, from `cert_path` and `key_path`.
#[derive(Debug)]
pub struct ReloadingKeyPair {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    loaded: Mutex<Loaded>,
}

impl ReloadingKeyPair {
    /// Loads the pair now: a missing file, bad PEM or a key that does not match the
    /// certificate is an error here (start-up refuses), and later only a warning.
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<ReloadingKeyPair, TlsError> {
        let stamps = (stamp(cert_path), stamp(key_path));
        let key = load_pair(cert_path, key_path, &provider)?;
        Ok(ReloadingKeyPair {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            provider,
            loaded: Mutex::new(Loaded {
                stamps,
                key: Arc::new(key),
                failed: None,
            }),
        })
    }

    /// The pair to use for a new handshake: reloaded first if either file changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let stamps = (stamp(&self.cert_path), stamp(&self.key_path));
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if stamps == loaded.stamps || loaded.failed == Some(stamps) {
            return loaded.key.clone();
        }
        match load_pair(&self.cert_path, &self.key_path, &self.provider) {
            Ok(key) => {
                tracing::info!(
                    cert = %self.cert_path.display(),
                    "certificate files changed; new handshakes use the new pair"
                );
                loaded.key = Arc::new(key);
                loaded.stamps = stamps;
                loaded.failed = None;
            }
            Err(error) => {
                tracing::warn!(%error, "certificate files changed but do not load; still using the previous pair");
                loaded.failed = Some(stamps);
            }
        }
        loaded.key.clone()
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }
}

fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let certs = parse_certificates(cert_path, &read_bounded(cert_path)?)?;
    let key = crate::files::read_private_key(key_path)?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| {
        TlsError::Config(format!(
            "{} and {} are not a usable pair: {e}",
            cert_path.display(),
            key_path.display()
        ))
    })
}

impl rustls::server::ResolvesServerCert for ReloadingKeyPair {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for ReloadingKeyPair {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
