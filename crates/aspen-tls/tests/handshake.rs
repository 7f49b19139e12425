//! Handshakes over loopback between `ServerTls` and `ClientTls`: mutual TLS, each refusal the
//! issue lists (unknown CA, expired certificate, wrong key, plaintext), and rotation of the
//! server's files while a connection stays open.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aspen_tls::{
    CertificateAuthority, ClientTls, ClientTlsOptions, LeafOptions, ServerTls, ServerTlsOptions,
};
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Fixture {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    ca: CertificateAuthority,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        let ca = CertificateAuthority::new("test ca").expect("ca");
        std::fs::write(path.join("ca.pem"), ca.cert_pem()).expect("write ca");
        Fixture {
            _dir: dir,
            dir: path,
            ca,
        }
    }

    fn issue(&self, name: &str, options: LeafOptions) -> (std::path::PathBuf, std::path::PathBuf) {
        self.ca
            .issue(&options)
            .expect("issue")
            .write(&self.dir, name)
            .expect("write")
    }

    fn server(&self, client_cert_auth: bool) -> ServerTls {
        let (cert, key) = self.issue(
            "server",
            LeafOptions::new("server", &["127.0.0.1", "localhost"]),
        );
        ServerTls::new(&ServerTlsOptions {
            cert_file: cert,
            key_file: key,
            trusted_ca_file: Some(self.dir.join("ca.pem")),
            client_cert_auth,
            cipher_suites: Vec::new(),
            alpn_protocols: vec![b"h2".to_vec()],
        })
        .expect("server tls")
    }

    fn client(&self, cert: Option<(&Path, &Path)>) -> ClientTls {
        ClientTls::new(&ClientTlsOptions {
            ca_file: Some(self.dir.join("ca.pem")),
            cert_file: cert.map(|c| c.0.to_path_buf()),
            key_file: cert.map(|c| c.1.to_path_buf()),
            insecure_skip_verify: false,
        })
        .expect("client tls")
    }
}

/// An echo server: every accepted connection is handshaken; each byte read is written back.
/// Returns its address and a channel of handshake results.
async fn echo_server(
    tls: ServerTls,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let tls = tls.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tls.accept(tcp).await {
                    Ok(mut stream) => {
                        let _ = tx.send("ok".to_string());
                        let mut buf = [0u8; 64];
                        while let Ok(n) = stream.read(&mut buf).await {
                            if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                    Err(error) => {
                        let _ = tx.send(error.to_string());
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn connect(
    client: &ClientTls,
    addr: std::net::SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(client.config());
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut stream = connector.connect(name, tcp).await?;
    // TLS 1.3: the server's verdict on a client certificate arrives after the client's
    // handshake ends, so a round trip is what proves the connection works.
    stream.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    Ok(stream)
}

fn peer_cert_cn_bytes(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    let (_, conn) = stream.get_ref();
    conn.peer_certificates().expect("peer certs")[0].to_vec()
}

#[tokio::test]
async fn mutual_tls_and_its_refusals() {
    let fx = Fixture::new();
    let (addr, mut results) = echo_server(fx.server(true)).await;

    // A client certificate from the right CA: accepted.
    let (cert, key) = fx.issue("client", LeafOptions::new("alice", &[]));
    connect(&fx.client(Some((&cert, &key))), addr)
        .await
        .expect("mTLS with a good certificate");
    assert_eq!(results.recv().await.as_deref(), Some("ok"));

    // No client certificate: refused.
    assert!(connect(&fx.client(None), addr).await.is_err());
    let verdict = results.recv().await.expect("verdict");
    assert!(verdict.contains("handshake failed"), "{verdict}");

    // A certificate from another CA: refused.
    let other = CertificateAuthority::new("other ca").expect("ca");
    let (ocert, okey) = other
        .issue(&LeafOptions::new("mallory", &[]))
        .expect("issue")
        .write(&fx.dir, "other")
        .expect("write");
    assert!(
        connect(&fx.client(Some((&ocert, &okey))), addr)
            .await
            .is_err()
    );
    let verdict = results.recv().await.expect("verdict");
    assert!(verdict.contains("UnknownIssuer"), "{verdict}");

    // An expired certificate: refused.
    let mut expired = LeafOptions::new("old", &[]);
    expired.valid_from_days = -30;
    expired.valid_until_days = -1;
    let (ecert, ekey) = fx.issue("expired", expired);
    assert!(
        connect(&fx.client(Some((&ecert, &ekey))), addr)
            .await
            .is_err()
    );
    let verdict = results.recv().await.expect("verdict");
    assert!(verdict.contains("certificate expired"), "{verdict}");

    // A good certificate with another key: the client cannot even load the pair...
    let (_, wrong_key) = fx.issue("wrong", LeafOptions::new("bob", &[]));
    let error = ClientTls::new(&ClientTlsOptions {
        ca_file: Some(fx.dir.join("ca.pem")),
        cert_file: Some(cert.clone()),
        key_file: Some(wrong_key.clone()),
        insecure_skip_verify: false,
    })
    .expect_err("mismatched pair");
    assert!(error.to_string().contains("not a usable pair"), "{error}");
    // ... and a client that sends it anyway fails the server's signature check.
    let forged = forged_client(&fx, &cert, &wrong_key);
    assert!(connect(&forged, addr).await.is_err());
    let verdict = results.recv().await.expect("verdict");
    assert!(verdict.contains("handshake failed"), "{verdict}");

    // Plaintext HTTP/1 to the TLS port: Go's answer, then closed.
    let mut tcp = TcpStream::connect(addr).await.expect("tcp");
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.0 400 Bad Request"), "{answer}");
    assert!(answer.contains("Client sent an HTTP request to an HTTPS server."));
    assert_eq!(
        results.recv().await.as_deref(),
        Some("client sent plaintext to a TLS port")
    );

    // The server is still up: a good client still gets in.
    connect(&fx.client(Some((&cert, &key))), addr)
        .await
        .expect("still serving");
    assert_eq!(results.recv().await.as_deref(), Some("ok"));
}

/// A client config whose resolver sends `cert` with a key that is not its own.
fn forged_client(fx: &Fixture, cert: &Path, key: &Path) -> ClientTls {
    #[derive(Debug)]
    struct Forged(Arc<rustls::sign::CertifiedKey>);
    impl rustls::client::ResolvesClientCert for Forged {
        fn resolve(
            &self,
            _: &[&[u8]],
            _: &[rustls::SignatureScheme],
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
        fn has_certs(&self) -> bool {
            true
        }
    }
    let provider = aspen_tls::provider();
    let certs = aspen_tls::read_certificates(cert).expect("certs");
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).expect("key");
    let signer = provider.key_provider.load_private_key(key).expect("signer");
    let forged = Arc::new(rustls::sign::CertifiedKey::new(certs, signer));
    let base = fx.client(None).config();
    let mut config = (*base).clone();
    config.client_auth_cert_resolver = Arc::new(Forged(forged));
    ClientTls::from_config(Arc::new(config))
}

#[tokio::test]
async fn rotation_reaches_new_handshakes_and_spares_open_connections() {
    let fx = Fixture::new();
    let (addr, mut results) = echo_server(fx.server(false)).await;
    // Without resumption: a resumed session shows the certificate of the session it resumes.
    let mut config = (*fx.client(None).config()).clone();
    config.resumption = rustls::client::Resumption::disabled();
    let client = ClientTls::from_config(Arc::new(config));
    let mut old = connect(&client, addr).await.expect("first");
    assert_eq!(results.recv().await.as_deref(), Some("ok"));
    let first_cert = peer_cert_cn_bytes(&old);

    // Replace both files (write to temporaries, rename over: what cert-manager does).
    let fresh = fx
        .ca
        .issue(&LeafOptions::new("server-2", &["127.0.0.1"]))
        .expect("issue");
    let (tmp_cert, tmp_key) = fresh.write(&fx.dir, "staged").expect("stage");
    std::fs::rename(&tmp_cert, fx.dir.join("server.pem")).expect("rename cert");
    std::fs::rename(&tmp_key, fx.dir.join("server-key.pem")).expect("rename key");

    let new = connect(&client, addr).await.expect("after rotation");
    assert_eq!(results.recv().await.as_deref(), Some("ok"));
    let second_cert = peer_cert_cn_bytes(&new);
    assert_ne!(
        first_cert, second_cert,
        "new handshakes get the new certificate"
    );
    let expected = aspen_tls::read_certificates(&fx.dir.join("server.pem")).expect("read");
    assert_eq!(second_cert, expected[0].to_vec());

    // The connection opened before the rotation still works.
    old.write_all(b"pong").await.expect("old write");
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), old.read_exact(&mut buf))
        .await
        .expect("in time")
        .expect("old read");
    assert_eq!(&buf, b"pong");

    // A half-written rotation (a key that does not match) keeps the current pair serving.
    let (_, stray_key) = fx.issue("stray", LeafOptions::new("stray", &[]));
    std::fs::copy(&stray_key, fx.dir.join("server-key.pem")).expect("bad key");
    let still = connect(&client, addr)
        .await
        .expect("still the previous pair");
    assert_eq!(results.recv().await.as_deref(), Some("ok"));
    assert_eq!(peer_cert_cn_bytes(&still), second_cert);
}
