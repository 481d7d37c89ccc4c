//! TLS on a service's listener, with rustls.
//!
//! [`TlsConfig`] (in [`ServiceConfig::tls`](crate::ServiceConfig::tls)) is
//! made from PEM files: the server's certificate chain and its private key,
//! and optionally the CA certificates that sign clients' certificates. With
//! a client CA, every client must present a certificate it signed (mutual
//! TLS); without one, none is asked for.
//!
//! The files are read when the configuration is made, so that a missing,
//! unreadable or malformed file, or a key that is not the certificate's,
//! is a start-up error naming the file ([`TlsSetupError`]) rather than a
//! failure of every handshake later.
//!
//! # Certificate rotation
//! While the service runs, the files are read again every
//! [`TlsConfig::reload_every`] (10 s by default): when any of them changed,
//! the configuration is made again from them and new handshakes use it;
//! connections already open keep theirs. Files that changed but cannot be
//! used (a half-written file, a key not yet matching its new certificate)
//! are logged and the previous configuration stays, until the files change
//! again. So a certificate renewed in place (by an ACME client, or a
//! mounted secret being updated) is served without a restart.
//!
//! # Where the handshake runs
//! The accept loop (`server.rs`) only accepts and admits: the handshake
//! runs in the connection's own task, so a peer that opens TCP and never
//! sends a `ClientHello` cannot hold up anyone else's accept. Until it
//! completes, the connection holds a slot of
//! [`HttpLimits::max_connections`](crate::HttpLimits::max_connections) like
//! any other, counts as idle since it was accepted (so it is among the
//! first closed when the cap is reached), and has the header timeout from
//! accept for the handshake and its first request head together: a
//! silent or trickling peer is closed when it runs out.
//!
//! ALPN chooses `h2` for a client that offers it, else `http/1.1`; the
//! connection's first bytes then tell the server which it speaks, as on
//! plain TCP. TLS 1.3 and 1.2,
//! with the `ring` provider (see the workspace's Cargo.toml for why not the
//! default one).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// How often a running service reads its TLS files again, by default.
pub const DEFAULT_RELOAD_EVERY: Duration = Duration::from_secs(10);

/// TLS settings of a service's listener: what it presents and whom it
/// asks for a certificate. Cheap to clone (shared), as the service's
/// configuration is cloned for every request.
#[derive(Clone)]
pub struct TlsConfig {
    inner: Arc<Inner>,
    reload_every: Duration,
}

struct Inner {
    /// Made from the files as last read well; replaced when they change.
    acceptor: RwLock<TlsAcceptor>,
    paths: Paths,
    /// The files' contents when they were last read (`None`: one could
    /// not be read), to notice a change.
    seen: Mutex<Option<Pem>>,
}

/// Where the TLS files are.
struct Paths {
    /// The certificate chain file.
    cert: PathBuf,
    /// The private key file.
    key: PathBuf,
    /// The client CA file, when client certificates are required.
    client_ca: Option<PathBuf>,
}

/// What the TLS files hold.
#[derive(Clone, PartialEq)]
struct Pem {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Paths {
    fn read(&self) -> Result<Pem, TlsSetupError> {
        Ok(Pem {
            cert: read_file(TlsFile::Certificate, &self.cert)?,
            key: read_file(TlsFile::Key, &self.key)?,
            client_ca: match &self.client_ca {
                Some(path) => Some(read_file(TlsFile::ClientCa, path)?),
                None => None,
            },
        })
    }
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("cert", &self.inner.paths.cert)
            .field("client_ca", &self.inner.paths.client_ca)
            .finish_non_exhaustive()
    }
}

/// Which of the files a [`TlsSetupError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsFile {
    /// The server's certificate chain (PEM, its own certificate first).
    Certificate,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    Key,
    /// The CA certificates that sign clients' certificates (PEM).
    ClientCa,
    /// The CA certificates trusted for an `https://` JWKS URL (PEM).
    JwksCa,
}

impl std::fmt::Display for TlsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Certificate => "TLS certificate file",
            Self::Key => "TLS private key file",
            Self::ClientCa => "TLS client CA file",
            Self::JwksCa => "JWKS CA file",
        })
    }
}

/// Why a [`TlsConfig`] cannot be made: a start-up error that names the
/// file at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// The file cannot be read.
    #[error("cannot read the {file} {}: {source}", path.display())]
    Read {
        /// Which file.
        file: TlsFile,
        /// Its path, as given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold what it should (no PEM certificate, no PEM
    /// key, a certificate or key rustls cannot use).
    #[error("the {file} {}: {reason}", path.display())]
    Invalid {
        /// Which file.
        file: TlsFile,
        /// Its path, as given.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The private key is not the key of the certificate.
    #[error(
        "the private key in {} is not the key of the certificate in {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate chain file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

impl TlsSetupError {
    /// The file at fault (for a key that does not match, the key file).
    pub fn path(&self) -> &Path {
        match self {
            Self::Read { path, .. } | Self::Invalid { path, .. } => path,
            Self::KeyMismatch { key, .. } => key,
        }
    }

    /// Which file is at fault.
    pub fn file(&self) -> TlsFile {
        match self {
            Self::Read { file, .. } | Self::Invalid { file, .. } => *file,
            Self::KeyMismatch { .. } => TlsFile::Key,
        }
    }
}

impl TlsConfig {
    /// Reads the certificate chain at `cert` (PEM, the server's own
    /// certificate first, then any intermediates), its private key at
    /// `key`, and, when given, the CA certificates at `client_ca`: with
    /// them, every client must present a certificate one of them signed
    /// (mutual TLS). One file holding both the chain and the key may be
    /// named twice.
    pub fn from_pem_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
        client_ca: Option<&Path>,
    ) -> Result<Self, TlsSetupError> {
        let paths = Paths {
            cert: cert.as_ref().to_path_buf(),
            key: key.as_ref().to_path_buf(),
            client_ca: client_ca.map(Path::to_path_buf),
        };
        let pem = paths.read()?;
        let config = server_config(&paths, &pem)?;
        Ok(Self {
            inner: Arc::new(Inner {
                acceptor: RwLock::new(TlsAcceptor::from(Arc::new(config))),
                paths,
                seen: Mutex::new(Some(pem)),
            }),
            reload_every: DEFAULT_RELOAD_EVERY,
        })
    }

    /// Reads the files again every `every` while the service runs (see
    /// the module docs); at least every 10 ms.
    pub fn reload_every(mut self, every: Duration) -> Self {
        self.reload_every = every.max(Duration::from_millis(10));
        self
    }

    /// Makes the configuration again when a file changed since it was
    /// last read: `None` when none did, else whether the new files are
    /// used. Files that cannot be used leave the configuration as it was.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsSetupError>> {
        let inner = &self.inner;
        let now = inner.paths.read();
        {
            let mut seen = inner.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.as_ref() == now.as_ref().ok() {
                return None;
            }
            // Remembered even when unusable: the same bad files are not
            // tried (and logged) again every period.
            *seen = now.as_ref().ok().cloned();
        }
        // Made from the bytes just compared, not from a second read.
        Some(
            now.and_then(|pem| server_config(&inner.paths, &pem))
                .map(|config| {
                    let acceptor = TlsAcceptor::from(Arc::new(config));
                    *inner.acceptor.write().unwrap_or_else(|e| e.into_inner()) = acceptor;
                }),
        )
    }

    /// Reads the files again every [`Self::reload_every`] until
    /// `stopping`, logging what changed.
    pub(crate) async fn watch_files(self, service: String, mut stopping: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.reload_every) => {}
                _ = stopping.wait_for(|stopping| *stopping) => return,
            }
            // File reads and key parsing: off the runtime's workers.
            let this = self.clone();
            let Ok(outcome) = tokio::task::spawn_blocking(move || this.reload_if_changed()).await
            else {
                return;
            };
            match outcome {
                None => {}
                Some(Ok(())) => tracing::info!(
                    service,
                    cert = %self.inner.paths.cert.display(),
                    "TLS files changed: new connections get the new certificate"
                ),
                Some(Err(error)) => tracing::warn!(
                    service,
                    %error,
                    "TLS files changed but cannot be used; new connections keep the previous certificate until they change again"
                ),
            }
        }
    }

    /// Whether clients must present a certificate (mutual TLS).
    pub fn requires_client_certificate(&self) -> bool {
        self.inner.paths.client_ca.is_some()
    }

    /// The server side of a TLS handshake on `io`; the caller bounds it in
    /// time.
    pub(crate) fn accept<IO>(&self, io: IO) -> tokio_rustls::Accept<IO>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let acceptor = self
            .inner
            .acceptor
            .read()
            .unwrap_or_else(|e| e.into_inner());
        acceptor.accept(io)
    }
}

/// A server configuration from what the files hold: the certificate
/// chain, its key, and the client CAs (`paths` name them in errors).
fn server_config(paths: &Paths, pem: &Pem) -> Result<rustls::ServerConfig, TlsSetupError> {
    let (cert, key) = (paths.cert.as_path(), paths.key.as_path());
    let chain = parse_certificates(TlsFile::Certificate, cert, &pem.cert)?;
    let key_der = parse_private_key(key, &pem.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(TlsFile::Certificate, cert, e.to_string()))?;
    // `Paths::read` reads a client CA exactly when there is one to read.
    let builder = match paths.client_ca.as_deref().zip(pem.client_ca.as_deref()) {
        None => builder.with_no_client_auth(),
        Some((path, client_ca)) => {
            let mut roots = RootCertStore::empty();
            let certificates = parse_certificates(TlsFile::ClientCa, path, client_ca)?;
            let count = certificates.len();
            for (i, certificate) in certificates.into_iter().enumerate() {
                roots.add(certificate).map_err(|e| {
                    invalid(
                        TlsFile::ClientCa,
                        path,
                        format!(
                            "certificate {} of {count} is not a usable CA certificate: {e}",
                            i + 1
                        ),
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| invalid(TlsFile::ClientCa, path, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsSetupError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            },
            other => invalid(TlsFile::Key, key, other.to_string()),
        })?;
    // HTTP/2 for a client that offers it (the network client does for
    // resource streams, which then share connections), else HTTP/1.1;
    // a client offering neither is refused in the handshake rather than
    // misunderstood after it. The connection's first bytes tell the
    // server which to speak, as on plain TCP.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn invalid(file: TlsFile, path: &Path, reason: String) -> TlsSetupError {
    TlsSetupError::Invalid {
        file,
        path: path.to_path_buf(),
        reason,
    }
}

fn read_file(file: TlsFile, path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|source| TlsSetupError::Read {
        file,
        path: path.to_path_buf(),
        source,
    })
}

/// The certificates (`-----BEGIN CERTIFICATE-----`) of a PEM file, in
/// order; other sections (a private key) are skipped. None is an error.
pub(crate) fn read_certificates(
    file: TlsFile,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    parse_certificates(file, path, &read_file(file, path)?)
}

/// The certificates of `pem`, the contents of `path` (see
/// [`read_certificates`]).
fn parse_certificates(
    file: TlsFile,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(file, path, format!("not valid PEM: {e}")))?;
    if certificates.is_empty() {
        return Err(invalid(
            file,
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    }
    Ok(certificates)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of `pem`, the contents
/// of `path`.
fn parse_private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => invalid(
            TlsFile::Key,
            path,
            "holds no PEM private key (-----BEGIN PRIVATE KEY-----, or RSA or EC PRIVATE KEY)"
                .to_owned(),
        ),
        other => invalid(TlsFile::Key, path, format!("not valid PEM: {other}")),
    })
}
