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
//! # Expiry
//! A certificate nobody renewed fails every client at once, so the service
//! says so before it happens. `/metrics` carries
//! `cortex_tls_certificate_expiry_timestamp_seconds` (per certificate
//! file), the Unix time at which the served chain's first certificate to
//! expire does, for an alert such as "less than 14 days left". The log
//! names the date at start and after each reload, warns (at most hourly)
//! once less than a sixth of that certificate's lifetime is left (15 days
//! of a 90-day certificate, 1 of a 6-day one: ACME clients renew with a
//! third left, so renewal is then well overdue), and reports an error
//! (hourly) once it has expired. Dates that cannot be read (a certificate
//! rustls accepts but the parser does not) are logged, and the gauge reads
//! 0, which an expiry alert takes for the past.
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
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// How often a running service reads its TLS files again, by default.
pub const DEFAULT_RELOAD_EVERY: Duration = Duration::from_secs(10);

/// At most how often an unrenewed or expired certificate is logged.
const EXPIRY_LOG_EVERY: Duration = Duration::from_secs(3600);

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
    served: RwLock<Served>,
    paths: Paths,
    /// The files' contents when they were last read (`None`: one could
    /// not be read), to notice a change.
    seen: Mutex<Option<Pem>>,
}

/// What new handshakes get, made from one reading of the files.
struct Served {
    acceptor: TlsAcceptor,
    /// The validity of the chain's first certificate to expire (`None`:
    /// its dates could not be read).
    validity: Option<Validity>,
}

/// When a certificate is valid, in Unix seconds, as it states them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Validity {
    not_before: i64,
    not_after: i64,
}

/// What a certificate's validity calls for at some moment.
#[derive(Debug, PartialEq, Eq)]
enum Expiry {
    /// Well within its lifetime, or renewal is not yet overdue.
    Fine,
    /// Less than a sixth of its lifetime is left: `left` of it.
    RenewalOverdue { left: Duration },
    /// Expired `ago`: clients refuse it.
    Expired { ago: Duration },
}

impl Validity {
    /// At `now` (Unix seconds).
    fn at(&self, now: i64) -> Expiry {
        let seconds = |s: i64| Duration::from_secs(s.unsigned_abs());
        if now >= self.not_after {
            return Expiry::Expired {
                ago: seconds(now - self.not_after),
            };
        }
        let left = self.not_after - now;
        let lifetime = (self.not_after - self.not_before).max(0);
        if left < lifetime / 6 {
            Expiry::RenewalOverdue {
                left: seconds(left),
            }
        } else {
            Expiry::Fine
        }
    }
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
        let served = served(&paths, &pem)?;
        Ok(Self {
            inner: Arc::new(Inner {
                served: RwLock::new(served),
                paths,
                seen: Mutex::new(Some(pem)),
            }),
            reload_every: DEFAULT_RELOAD_EVERY,
        })
    }

    /// When the first certificate of the served chain to expire does
    /// (`None` when its dates could not be read).
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.validity().map(|v| system_time(v.not_after))
    }

    fn served(&self) -> std::sync::RwLockReadGuard<'_, Served> {
        self.inner.served.read().unwrap_or_else(|e| e.into_inner())
    }

    fn validity(&self) -> Option<Validity> {
        self.served().validity
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
            now.and_then(|pem| served(&inner.paths, &pem))
                .map(|served| {
                    *inner.served.write().unwrap_or_else(|e| e.into_inner()) = served;
                }),
        )
    }

    /// Reads the files again every [`Self::reload_every`] until
    /// `stopping`, logging what changed; keeps `expiry` (the
    /// `/metrics` gauge) at the served chain's expiry, and logs a
    /// certificate whose renewal is overdue (see the module docs).
    pub(crate) async fn watch_files(
        self,
        service: String,
        expiry: prometheus_client::metrics::gauge::Gauge,
        mut stopping: watch::Receiver<bool>,
    ) {
        let mut logged_expiry: Option<tokio::time::Instant> = None;
        self.report_validity(&service, &expiry);
        loop {
            self.log_expiry(&service, &mut logged_expiry);
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
                Some(Ok(())) => {
                    tracing::info!(
                        service,
                        cert = %self.inner.paths.cert.display(),
                        "TLS files changed: new connections get the new certificate"
                    );
                    self.report_validity(&service, &expiry);
                    // A renewed certificate is judged afresh.
                    logged_expiry = None;
                }
                Some(Err(error)) => tracing::warn!(
                    service,
                    %error,
                    "TLS files changed but cannot be used; new connections keep the previous certificate until they change again"
                ),
            }
        }
    }

    /// Sets the gauge to the served chain's expiry and logs it.
    fn report_validity(&self, service: &str, expiry: &prometheus_client::metrics::gauge::Gauge) {
        let cert = self.inner.paths.cert.display();
        match self.validity() {
            Some(validity) => {
                expiry.set(validity.not_after);
                tracing::info!(
                    service,
                    %cert,
                    expires_unix = validity.not_after,
                    "the served TLS certificate chain is valid until {}",
                    date_text(validity.not_after)
                );
            }
            None => {
                // Not the last certificate's date: 0, which an expiry
                // alert takes for the past.
                expiry.set(0);
                tracing::warn!(
                    service,
                    %cert,
                    "the served TLS certificate's validity dates could not be read; its expiry is reported as 0"
                );
            }
        }
    }

    /// Logs an overdue renewal or an expired certificate, at most every
    /// [`EXPIRY_LOG_EVERY`].
    fn log_expiry(&self, service: &str, logged: &mut Option<tokio::time::Instant>) {
        if logged.is_some_and(|at| at.elapsed() < EXPIRY_LOG_EVERY) {
            return;
        }
        let Some(validity) = self.validity() else {
            return;
        };
        let cert = self.inner.paths.cert.display();
        let expires = date_text(validity.not_after);
        match validity.at(unix_seconds(SystemTime::now())) {
            Expiry::Fine => return,
            Expiry::RenewalOverdue { left } => tracing::warn!(
                service,
                %cert,
                hours_left = left.as_secs() / 3600,
                "the served TLS certificate expires at {expires} and has not been renewed; \
                 clients will refuse it then"
            ),
            Expiry::Expired { ago } => tracing::error!(
                service,
                %cert,
                hours_ago = ago.as_secs() / 3600,
                "the served TLS certificate expired at {expires}: clients refuse it; \
                 renew it (the files are read again every {} s)",
                self.reload_every.as_secs_f64()
            ),
        }
        *logged = Some(tokio::time::Instant::now());
    }

    /// The certificate chain file.
    pub fn certificate_path(&self) -> &Path {
        &self.inner.paths.cert
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
        self.served().acceptor.accept(io)
    }
}

/// What to serve from what the files hold: the certificate chain, its key,
/// and the client CAs (`paths` name them in errors).
fn served(paths: &Paths, pem: &Pem) -> Result<Served, TlsSetupError> {
    let (cert, key) = (paths.cert.as_path(), paths.key.as_path());
    let chain = parse_certificates(TlsFile::Certificate, cert, &pem.cert)?;
    let validity = chain_validity(&chain);
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
    Ok(Served {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        validity,
    })
}

/// The validity of the first certificate of `chain` to expire; `None`
/// when one's dates cannot be read.
fn chain_validity(chain: &[CertificateDer<'_>]) -> Option<Validity> {
    let mut first: Option<Validity> = None;
    for der in chain {
        let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
        let dates = certificate.validity();
        let validity = Validity {
            not_before: dates.not_before.timestamp(),
            not_after: dates.not_after.timestamp(),
        };
        if first.is_none_or(|f| validity.not_after < f.not_after) {
            first = Some(validity);
        }
    }
    first
}

fn system_time(unix: i64) -> SystemTime {
    let magnitude = Duration::from_secs(unix.unsigned_abs());
    if unix >= 0 {
        SystemTime::UNIX_EPOCH + magnitude
    } else {
        SystemTime::UNIX_EPOCH - magnitude
    }
}

/// `Dec  5 04:22:59 2026 +00:00` (as OpenSSL writes certificate dates),
/// for the log.
fn date_text(unix: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(unix)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{unix} (Unix time)"))
}

fn unix_seconds(at: SystemTime) -> i64 {
    match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);
    /// A day in Unix seconds.
    const D: i64 = 86_400;

    #[test]
    fn renewal_is_overdue_with_a_sixth_of_the_lifetime_left() {
        let issued = 1_000 * D;
        let ninety_days = Validity {
            not_before: issued,
            not_after: issued + 90 * D,
        };
        assert_eq!(ninety_days.at(issued + D), Expiry::Fine);
        // ACME clients renew with 30 days left: not yet overdue.
        assert_eq!(ninety_days.at(issued + 60 * D), Expiry::Fine);
        assert_eq!(ninety_days.at(issued + 75 * D), Expiry::Fine);
        assert_eq!(
            ninety_days.at(issued + 76 * D),
            Expiry::RenewalOverdue { left: 14 * DAY }
        );
        assert_eq!(
            ninety_days.at(issued + 91 * D),
            Expiry::Expired { ago: DAY }
        );
        // A six-day certificate is overdue with one day left.
        let six_days = Validity {
            not_before: issued,
            not_after: issued + 6 * D,
        };
        assert_eq!(six_days.at(issued + 4 * D), Expiry::Fine);
        assert!(matches!(
            six_days.at(issued + 5 * D + 1),
            Expiry::RenewalOverdue { .. }
        ));
    }

    #[test]
    fn dates_read_as_openssl_writes_them() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_444_579);
        assert_eq!(date_text(unix_seconds(at)), "Dec  5 04:22:59 2026 +00:00");
        assert_eq!(unix_seconds(at), 1_796_444_579);
    }
}
