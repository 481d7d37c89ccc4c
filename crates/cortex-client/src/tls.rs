//! TLS to `https://` endpoints, with rustls.
//!
//! An endpoint whose URL is `https://` (from any discovery backend) is
//! reached over TLS; `http://` endpoints are not affected. Four options of
//! [`ClientConfig`](crate::ClientConfig) (per service too) say whom to trust and who we are:
//!
//! - [`tls_system_roots`](crate::ClientConfig::tls_system_roots) (on): trust the
//!   operating system's certificate authorities (on Linux the OpenSSL
//!   bundle, found as OpenSSL finds it; `SSL_CERT_FILE` and `SSL_CERT_DIR`
//!   are honoured). Read once per process.
//! - [`ca_file`](crate::ClientConfig::ca_file): a PEM file of CA certificates
//!   trusted besides (or, with `tls_system_roots = false`, instead of) the
//!   system's: a private CA.
//! - [`client_cert`](crate::ClientConfig::client_cert) and
//!   [`client_key`](crate::ClientConfig::client_key): a PEM certificate chain and
//!   its PEM private key (PKCS#8, PKCS#1 or SEC1), presented to servers
//!   that ask for one (mutual TLS). Both or neither; one file holding both
//!   may be named twice.
//!
//! The files are read and checked when the configuration is validated (an
//! unreadable or malformed file, or a key that does not match the
//! certificate, is a [`ConfigError`](crate::ConfigError) naming the option
//! and the path), and read again when the client first connects to an
//! endpoint. A relative path is relative to the working directory.
//!
//! # How a connection is made
//! TCP (or a `CONNECT` tunnel through a proxy: TLS then runs inside the
//! tunnel, end to end, so the proxy sees only ciphertext), then the TLS
//! handshake: TLS 1.3 or 1.2, the server name (SNI, and the name the
//! certificate must be valid for) is the endpoint's host, ALPN offers
//! `http/1.1` (and `h2` first, for a connection that resource streams are
//! to share: HTTP/2 if the server chooses it), and `connect_timeout` bounds
//! the whole of it. HTTP/1.1 (or HTTP/2) then runs over the TLS stream, pooled and capped as any connection: a
//! kept-alive connection costs one handshake, however many calls it
//! carries. `https://` targets behind a forwarding proxy are always
//! tunnelled: a forwarded request would hand the proxy the plaintext.
//!
//! # Failures
//! A failed handshake is [`McpError::Connection`](crate::McpError) with
//! nothing sent, whose source is an `std::io::Error` of kind `InvalidData`
//! carrying the rustls error (its own source in turn): the server's
//! certificate is not trusted, is not valid for the endpoint's host, has
//! expired; the server refused our certificate or asked for one we do not
//! have; or the peer does not speak TLS. None of these heals by trying
//! again, so [`McpError::retry`](crate::McpError::retry) says `Never` for
//! them and the call fails at its first attempt. [`rustls_error`] gets the
//! rustls error out of any client error. A handshake cut by the network
//! (reset, end of stream) or too slow keeps its I/O kind and is retried as
//! any connection failure.
//!
//! With TLS 1.3 a server checks the client's certificate after the client
//! has finished its side of the handshake, so a refusal (no certificate, an
//! untrusted one) arrives as an alert on the first read, after the request
//! was written. The pool recognises those alerts and reports the request as
//! not sent, which it was not: the server's TLS layer never accepted the
//! connection. When the alert closes the connection before the request is
//! dispatched, though, all hyper reports is a closed channel. So a client
//! without a certificate that a server asked for one waits, before the
//! connection is used, for the server's verdict: as long as the handshake
//! took (at least 10 ms, at most 1 s). A refusal then fails the handshake
//! with the server's alert and its advice; silence means the certificate
//! was optional.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cortex_discovery::Endpoint;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{AlertDescription, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The rustls crate the client is built with, so that a caller can match on
/// [`rustls_error`]'s answer without depending on the same version itself.
pub use rustls;

/// What dialling one `https://` endpoint needs, made once per endpoint.
#[derive(Clone)]
pub(crate) struct Tls {
    /// Offers ALPN `http/1.1` alone: calls, one request per connection.
    connector: TlsConnector,
    /// The same, offering `h2` first: resource streams, which share a
    /// connection when the server chooses HTTP/2.
    connector_h2: TlsConnector,
    /// Whether a client certificate is configured; without one, each
    /// handshake notes whether the server asked for one.
    has_client_cert: bool,
    server_name: ServerName<'static>,
    /// The endpoint's host, for messages.
    host: Arc<str>,
    /// What is trusted, for the message of an untrusted certificate.
    trusted: Arc<str>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.host)
            .field("trusted", &self.trusted)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Tls {
    /// The same endpoint with the same rustls configuration.
    fn eq(&self, other: &Self) -> bool {
        self.server_name == other.server_name
            && Arc::ptr_eq(self.connector.config(), other.connector.config())
    }
}

/// Whether the server chose HTTP/2 (ALPN `h2`) in `stream`'s handshake.
pub(crate) fn negotiated_h2<IO>(stream: &TlsStream<IO>) -> bool {
    stream.get_ref().1.alpn_protocol() == Some(b"h2")
}

/// The TLS options of a service's effective configuration (the
/// `tls_system_roots`, `ca_file`, `client_cert` and `client_key` rows of
/// [`ClientConfig`](crate::ClientConfig)), named here so that this module
/// needs nothing from the configuration's.
pub(crate) struct TlsSettings<'a> {
    pub(crate) system_roots: bool,
    pub(crate) ca_file: &'a Option<PathBuf>,
    pub(crate) client_cert: &'a Option<PathBuf>,
    pub(crate) client_key: &'a Option<PathBuf>,
}

impl Tls {
    /// The TLS settings of `endpoint` under a service's effective `config`:
    /// `None` for an `http://` endpoint. Reads `ca_file`, `client_cert` and
    /// `client_key`; the error says which file is wrong and why.
    pub(crate) fn for_endpoint(
        config: &TlsSettings<'_>,
        endpoint: &Endpoint,
    ) -> Result<Option<Self>, String> {
        if !endpoint.is_tls() {
            return Ok(None);
        }
        let host = endpoint
            .host()
            .ok_or_else(|| format!("endpoint `{}` has no host", endpoint.url))?;
        let server_name = ServerName::try_from(host.to_owned()).map_err(|e| {
            format!(
                "endpoint `{}`: `{host}` cannot be a TLS server name: {e}",
                endpoint.url
            )
        })?;

        let mut roots = RootCertStore::empty();
        let mut trusted = Vec::new();
        if config.system_roots {
            let system = system_roots();
            roots.extend(system.roots.iter().cloned());
            trusted.push(format!("{} system roots", system.roots.len()));
        } else {
            trusted.push("no system roots (tls_system_roots = false)".to_owned());
        }
        match config.ca_file {
            Some(path) => {
                let added = add_ca_file(&mut roots, path)?;
                trusted.push(format!("{added} from ca_file {}", path.display()));
            }
            None => trusted.push("no ca_file".to_owned()),
        }

        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots);
        let mut tls = match (config.client_cert, config.client_key) {
            (Some(cert), Some(key)) => {
                let chain = read_certificates(cert)?;
                let key_der = read_private_key(key)?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| identity_error(cert, key, &e))?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => return Err("client_cert is set without client_key".to_owned()),
            (None, Some(_)) => return Err("client_key is set without client_cert".to_owned()),
        };
        // One request at a time per connection is what the pool counts on
        // for calls; streams may share HTTP/2 connections.
        let mut tls_h2 = tls.clone();
        tls_h2.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let has_client_cert = config.client_cert.is_some();
        Ok(Some(Self {
            connector: TlsConnector::from(Arc::new(tls)),
            connector_h2: TlsConnector::from(Arc::new(tls_h2)),
            has_client_cert,
            server_name,
            host: Arc::from(host),
            trusted: Arc::from(trusted.join(", ")),
        }))
    }

    /// The TLS handshake on `io` (a TCP stream, or a tunnel through a
    /// proxy), within `timeout`, offering HTTP/2 too when `offer_h2` (see
    /// [`negotiated_h2`]). A rustls failure comes back as an
    /// `InvalidData` I/O error holding a `TlsError` that names the
    /// server (see [the module docs](self#failures)); a time-out as
    /// `TimedOut`; anything else with its own kind.
    pub(crate) async fn handshake<IO>(
        &self,
        io: IO,
        timeout: Duration,
        offer_h2: bool,
    ) -> Result<TlsStream<IO>, std::io::Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let offered = if offer_h2 {
            &self.connector_h2
        } else {
            &self.connector
        };
        // Without a certificate of our own: note whether the server asks.
        let asked = (!self.has_client_cert).then(|| Arc::new(AskedForCertificate::default()));
        let connector = match &asked {
            Some(asked) => {
                let mut config = (**offered.config()).clone();
                config.client_auth_cert_resolver = asked.clone();
                TlsConnector::from(Arc::new(config))
            }
            None => offered.clone(),
        };
        let started = tokio::time::Instant::now();
        let connect = connector.connect(self.server_name.clone(), io);
        match tokio::time::timeout(timeout, connect).await {
            // An HTTP/2 server speaks first (its SETTINGS), so the verdict
            // cannot be read here: a refusal of ours fails the first
            // request on the connection instead (see `pool::shared_failure`).
            Ok(Ok(stream)) if negotiated_h2(&stream) => Ok(stream),
            Ok(Ok(stream)) if asked.is_some_and(|a| a.0.load(Ordering::Acquire)) => {
                self.verdict(stream, started.elapsed()).await
            }
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => Err(self.failed(error)),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "TLS handshake with {} timed out after {}",
                    self.host,
                    cortex_resilience::human::HumanDuration(timeout)
                ),
            )),
        }
    }

    /// Waits for a server that asked for a client certificate (and got
    /// none) to refuse the connection, for as long as the handshake took
    /// (10 ms to 1 s): a TLS 1.3 server's verdict comes after our side of
    /// the handshake. Its alert fails the handshake; silence keeps the
    /// connection. An HTTP/1.1 server never speaks first, so nothing of
    /// the application's is read here.
    async fn verdict<IO>(
        &self,
        mut stream: TlsStream<IO>,
        took: Duration,
    ) -> Result<TlsStream<IO>, std::io::Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let wait = took.clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut first = [0u8; 1];
        match tokio::time::timeout(wait, stream.read(&mut first)).await {
            Err(_) => Ok(stream),
            Ok(Err(error)) => Err(self.failed(error)),
            Ok(Ok(0)) => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                format!(
                    "TLS handshake with {} failed: the server closed the connection after asking \
                     for a client certificate (set client_cert and client_key)",
                    self.host
                ),
            )),
            Ok(Ok(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} sent data before any request (not an HTTP/1.1 server?)",
                    self.host
                ),
            )),
        }
    }

    /// `error` (from sending a request on this connection) as a refused
    /// handshake, if it is the server's refusal arriving after our side of
    /// the handshake had finished: a fatal alert that a server sends only
    /// while a handshake fails. Its TLS layer then accepted nothing, so the
    /// request was not sent, whatever the connection's state says. The
    /// same `InvalidData` error as [`Self::handshake`]'s.
    pub(crate) fn refusal(&self, error: &(dyn StdError + 'static)) -> Option<std::io::Error> {
        match rustls_error(error) {
            Some(rustls::Error::AlertReceived(alert)) if refuses_handshake(*alert) => {
                Some(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    TlsError {
                        server: self.host.to_string(),
                        source: rustls::Error::AlertReceived(*alert),
                        trusted: self.trusted.to_string(),
                    },
                ))
            }
            _ => None,
        }
    }

    /// As [`Self::refusal`], for a request that failed on an HTTP/2
    /// connection: the `h2` layer keeps an I/O error's kind and message but
    /// not the error inside, so rustls's alert is only text by then. Over
    /// TLS an I/O error of kind `InvalidData` is rustls's (HTTP/2's own
    /// failures are not I/O errors): the server refused the connection
    /// after the handshake, most often for want of a client certificate.
    pub(crate) fn refusal_over_h2(
        &self,
        error: &(dyn StdError + 'static),
    ) -> Option<std::io::Error> {
        if let Some(refusal) = self.refusal(error) {
            return Some(refusal);
        }
        let mut current = Some(error);
        while let Some(error) = current {
            if let Some(io) = error.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::InvalidData
            {
                let advice = if self.has_client_cert {
                    ""
                } else {
                    " (if it asks for a client certificate, set client_cert and client_key)"
                };
                return Some(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "TLS with {} failed after the handshake: {io}{advice}",
                        self.host
                    ),
                ));
            }
            current = error.source();
        }
        None
    }

    /// A handshake's I/O error with the server named. rustls's own errors
    /// (kind `InvalidData`) are put under a [`TlsError`], so that they are
    /// in the chain of sources and say what to do; the others (reset, end of
    /// stream) keep their kind, which the retry rules read.
    fn failed(&self, error: std::io::Error) -> std::io::Error {
        let kind = error.kind();
        let is_rustls = error
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>());
        if kind == std::io::ErrorKind::InvalidData && is_rustls {
            let inner = error
                .into_inner()
                .map(|inner| inner.downcast::<rustls::Error>());
            if let Some(Ok(source)) = inner {
                return std::io::Error::new(
                    kind,
                    TlsError {
                        server: self.host.to_string(),
                        source: *source,
                        trusted: self.trusted.to_string(),
                    },
                );
            }
            // Not reached: `is_rustls` said it is one.
            return std::io::Error::new(kind, format!("TLS handshake with {} failed", self.host));
        }
        std::io::Error::new(
            kind,
            format!("TLS handshake with {} failed: {error}", self.host),
        )
    }
}

/// A TLS handshake that rustls refused, with the server it was with. It is
/// the inner error of an `std::io::Error` of kind `InvalidData`, and its
/// source is the [`rustls::Error`].
#[derive(Debug, thiserror::Error)]
#[error(
    "TLS handshake with {server} failed: {source}{}",
    advice(source, trusted)
)]
pub(crate) struct TlsError {
    server: String,
    #[source]
    source: rustls::Error,
    /// What was trusted, for the advice on an unknown issuer.
    trusted: String,
}

/// What to do about a refused handshake, when there is something to say.
fn advice(error: &rustls::Error, trusted: &str) -> String {
    use rustls::CertificateError as Cert;
    match error {
        rustls::Error::InvalidCertificate(Cert::UnknownIssuer) => format!(
            " (its issuer is not trusted; trusted: {trusted}; set ca_file to the PEM file of the CA that signed it)"
        ),
        rustls::Error::InvalidCertificate(
            Cert::NotValidForName | Cert::NotValidForNameContext { .. },
        ) => " (the endpoint's host must be a name or address in the certificate)".to_owned(),
        rustls::Error::AlertReceived(alert) if refuses_handshake(*alert) => {
            " (the server refused the handshake: it may want a client certificate it trusts, set with client_cert and client_key)".to_owned()
        }
        rustls::Error::InvalidMessage(_) => " (does the endpoint speak TLS? use http:// if not)".to_owned(),
        _ => String::new(),
    }
}

/// The rustls error behind `error`, if a TLS failure caused it: looked for
/// along the chain of sources, and inside the I/O errors on it (where a
/// failure after the handshake, such as a server's refusal of a client
/// certificate under TLS 1.3, keeps it).
///
/// ```
/// # fn check(error: &cortex_client::McpError) {
/// use cortex_client::tls::{rustls, rustls_error};
/// if let Some(rustls::Error::InvalidCertificate(why)) = rustls_error(error) {
///     eprintln!("the server's certificate was refused: {why:?}");
/// }
/// # }
/// ```
pub fn rustls_error<'e>(error: &'e (dyn StdError + 'static)) -> Option<&'e rustls::Error> {
    // Bounded: a chain of sources is finite, but a buggy one could be cyclic.
    let mut current = Some(error);
    for _ in 0..64 {
        let error = current?;
        if let Some(found) = error.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(found) = error.downcast_ref::<TlsError>() {
            return Some(&found.source);
        }
        if let Some(inner) = error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            if let Some(found) = inner.downcast_ref::<rustls::Error>() {
                return Some(found);
            }
            if let Some(found) = inner.downcast_ref::<TlsError>() {
                return Some(&found.source);
            }
        }
        current = error.source();
    }
    None
}

/// Notes that the server asked for a client certificate; offers none (the
/// handshake goes on with an empty certificate, as without a resolver).
#[derive(Debug, Default)]
struct AskedForCertificate(AtomicBool);

impl ResolvesClientCert for AskedForCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.store(true, Ordering::Release);
        None
    }

    fn has_certs(&self) -> bool {
        // Asked, so that `resolve` learns of the request; it gives nothing.
        true
    }
}

/// The alerts of a failing handshake (RFC 8446 §6.2, RFC 5246 §7.2.2):
/// the peer's certificate, or its absence, or the parameters were refused
/// (`decrypt_error`: a handshake signature did not verify, as when a
/// certificate names a trusted CA as its issuer but another key signed it).
fn refuses_handshake(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::HandshakeFailure
            | AlertDescription::DecryptError
            | AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateRequired
    )
}

/// The crypto provider: ring's, named here rather than taken from the
/// process default, which would have to be installed first (and which
/// rustls cannot choose by itself when another crate enables aws-lc-rs).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The operating system's trust anchors.
struct SystemRoots {
    roots: Vec<rustls::pki_types::TrustAnchor<'static>>,
}

/// The system's roots, loaded at the first `https://` endpoint of the
/// process and kept: reading and parsing the bundle (about 150
/// certificates) for every endpoint would cost milliseconds each, and the
/// store rarely changes while a process runs. What could not be read is
/// logged once; an empty store is not an error here, since `ca_file` may be
/// all that is needed (and without it a handshake fails saying so).
fn system_roots() -> &'static SystemRoots {
    static ROOTS: OnceLock<SystemRoots> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "could not read some of the system's CA certificates");
        }
        let mut store = RootCertStore::empty();
        let (added, ignored) = store.add_parsable_certificates(found.certs);
        if ignored > 0 {
            tracing::debug!(ignored, "system CA certificates that are not usable trust anchors");
        }
        if added == 0 {
            tracing::warn!(
                "no system CA certificates found: https:// endpoints are trusted only through ca_file"
            );
        }
        SystemRoots { roots: store.roots }
    })
}

/// Adds the certificates of the PEM file at `path` to `roots`; how many.
fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<usize, String> {
    let certificates = read_certificates(path)?;
    let count = certificates.len();
    for (i, certificate) in certificates.into_iter().enumerate() {
        roots.add(certificate).map_err(|e| {
            format!(
                "{}: certificate {} of {count} is not a usable CA certificate: {e}",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(count)
}

/// The file at `path`, for reading PEM out of it.
fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The certificates (`-----BEGIN CERTIFICATE-----`) of a PEM file, in
/// order; other sections (a private key) are skipped. None is an error.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certificates)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "{} holds no PEM private key (-----BEGIN PRIVATE KEY-----, or RSA or EC PRIVATE KEY)",
            path.display()
        ),
        other => format!("{} is not valid PEM: {other}", path.display()),
    })
}

/// The message of a certificate and key rustls cannot pair.
fn identity_error(cert: &Path, key: &Path, error: &rustls::Error) -> String {
    match error {
        rustls::Error::InconsistentKeys(_) => format!(
            "the private key in {} is not the key of the certificate in {}",
            key.display(),
            cert.display()
        ),
        other => format!(
            "cannot use the certificate in {} with the key in {}: {other}",
            cert.display(),
            key.display()
        ),
    }
}

/// The check of the `ca_file` option: a readable PEM file of at least one
/// usable CA certificate.
pub(crate) fn check_ca_file(path: &Option<PathBuf>) -> Result<(), String> {
    match path {
        Some(path) => add_ca_file(&mut RootCertStore::empty(), path).map(|_| ()),
        None => Ok(()),
    }
}

/// The check of the `client_cert` option: a readable PEM file of at least
/// one certificate, and `client_key` set too.
pub(crate) fn check_client_cert(
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
) -> Result<(), String> {
    let Some(cert) = cert else {
        return Ok(());
    };
    read_certificates(cert)?;
    if key.is_none() {
        return Err("client_key is not set".to_owned());
    }
    Ok(())
}

/// The check of the `client_key` option: a readable PEM private key,
/// `client_cert` set too, and the key the certificate's.
pub(crate) fn check_client_key(
    key: &Option<PathBuf>,
    cert: &Option<PathBuf>,
) -> Result<(), String> {
    let Some(key) = key else {
        return Ok(());
    };
    let key_der = read_private_key(key)?;
    let Some(cert) = cert else {
        return Err("client_cert is not set".to_owned());
    };
    // The certificate's own problems are `client_cert`'s, checked first.
    let Ok(chain) = read_certificates(cert) else {
        return Ok(());
    };
    rustls::sign::CertifiedKey::from_der(chain, key_der, &provider())
        .map(|_| ())
        .map_err(|e| identity_error(cert, key, &e))
}

/// `result`'s problem as the detail of a limit's message: ` (why)`.
pub(crate) fn problem(result: Result<(), String>) -> String {
    match result {
        Ok(()) => String::new(),
        Err(reason) => format!(" ({reason})"),
    }
}
