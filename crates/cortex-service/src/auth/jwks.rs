//! Keys published at a JWKS URL: fetched on first use, kept, and fetched
//! again when a token names a key the set does not hold (a rotation) or the
//! set is old, at most once per [`JwksSettings::min_refresh_interval`], so
//! tokens with made-up `kid`s cannot make the service hammer its identity
//! provider.
//!
//! The fetch is one HTTP/1 `GET` over hyper, the way discovery's health
//! checks reach a service, over TLS for an `https://` URL (rustls, the
//! same `ring` provider as the kit's listener). An identity provider's
//! certificate is checked against the operating system's trust store and,
//! when given, the CA certificates of a PEM file (a private provider's or a
//! test's CA): [`AuthConfig::jwks_trusting`](super::AuthConfig::jwks_trusting).
//! Identity providers publish their keys over `https://`; `http://` is for
//! a provider's sidecar or one on a trusted network.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::{AuthError, AuthSetupError};

/// The asymmetric algorithms a JWKS key may be published for: the RSA
/// ones first ([`RSA`]), then one per elliptic curve and Ed25519.
pub(super) const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The algorithms an RSA key may verify: the first six of [`ASYMMETRIC`].
const RSA: &[Algorithm] = ASYMMETRIC.split_at(6).0;

/// The largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// The most keys taken from one document.
const MAX_KEYS: usize = 64;

/// How the JWKS cache behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksSettings {
    /// Fetches (refreshes, retries after a failure) are at least this far
    /// apart (default 10 s). A token naming an unknown key within that time
    /// of the last fetch is refused without a fetch.
    pub min_refresh_interval: Duration,
    /// A set older than this is fetched again on the next token (default
    /// 10 min), so a key the provider retired stops being accepted; if that
    /// fetch fails, the old set is kept.
    pub max_age: Duration,
    /// How long one fetch may take, connection included (default 5 s).
    pub fetch_timeout: Duration,
}

impl Default for JwksSettings {
    fn default() -> Self {
        Self {
            min_refresh_interval: Duration::from_secs(10),
            max_age: Duration::from_secs(600),
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

/// A key from the set, with the one algorithm it verifies.
pub(super) struct PublishedKey {
    kid: Option<String>,
    pub(super) algorithm: Algorithm,
    pub(super) key: DecodingKey,
}

#[derive(Default)]
struct KeySet {
    keys: Vec<Arc<PublishedKey>>,
    fetched_at: Option<Instant>,
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

enum Refresh {
    /// The set was fetched (by this call or a concurrent one).
    Done,
    /// Too soon after the last fetch; the last failure, if it failed.
    TooSoon(Option<String>),
    /// The fetch failed.
    Failed(String),
}

/// Where the set is fetched from.
struct Target {
    /// `host:port` to connect to.
    address: String,
    /// The `Host` header.
    host: String,
    /// The request target.
    path: String,
    /// For an `https://` URL: the TLS client and the name the provider's
    /// certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

/// The JWKS cache of one service.
pub(super) struct Jwks {
    url: String,
    target: Target,
    settings: JwksSettings,
    set: RwLock<Arc<KeySet>>,
    /// Bumped by every successful fetch, so concurrent callers that waited
    /// on one fetch do not start another.
    generation: AtomicU64,
    refresh: tokio::sync::Mutex<RefreshState>,
}

impl Jwks {
    /// The cache of the keys at `url`; `ca_file`: CA certificates (PEM)
    /// trusted besides the system's for an `https://` URL.
    pub(super) fn new(
        url: &str,
        settings: JwksSettings,
        ca_file: Option<&Path>,
    ) -> Result<Self, AuthSetupError> {
        let refuse = |reason: &str| AuthSetupError::JwksUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: http::Uri = url
            .trim()
            .parse()
            .map_err(|e| refuse(&format!("not a URL: {e}")))?;
        let secure = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(refuse("the URL must start with https:// or http://")),
        };
        if !secure && let Some(path) = ca_file {
            // A CA file with a plain URL says the operator expected TLS.
            return Err(AuthSetupError::JwksCa {
                path: path.to_path_buf(),
                reason: "a CA file applies to an https:// JWKS URL only".into(),
            });
        }
        let authority = uri
            .authority()
            .ok_or_else(|| refuse("the URL has no host"))?;
        if authority.as_str().contains('@') {
            return Err(refuse("credentials in the URL are not supported"));
        }
        let port = authority
            .port_u16()
            .unwrap_or(if secure { 443 } else { 80 });
        let host = authority.host();
        let tls = if secure {
            let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                .map_err(|e| refuse(&format!("`{host}` is not a TLS server name: {e}")))?;
            Some((connector(ca_file)?, name))
        } else {
            None
        };
        let address = if host.starts_with('[') || !host.contains(':') {
            format!("{host}:{port}")
        } else {
            format!("[{host}]:{port}")
        };
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        if settings.fetch_timeout.is_zero() {
            return Err(AuthSetupError::Invalid(
                "the JWKS fetch timeout must be positive".into(),
            ));
        }
        Ok(Self {
            url: url.trim().to_string(),
            target: Target {
                address,
                host: authority.as_str().to_string(),
                path,
                tls,
            },
            settings,
            set: RwLock::new(Arc::new(KeySet::default())),
            generation: AtomicU64::new(0),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
        })
    }

    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// Whether the key set was fetched less than `max_age` ago.
    pub(super) fn is_fresh(&self) -> bool {
        let (set, _) = self.snapshot();
        set.fetched_at
            .is_some_and(|at| at.elapsed() < self.settings.max_age)
    }

    /// Which fetch the current key set came from: it changes whenever the
    /// set does.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn snapshot(&self) -> (Arc<KeySet>, u64) {
        let set = self.set.read().unwrap_or_else(|p| p.into_inner()).clone();
        (set, self.generation.load(Ordering::Acquire))
    }

    /// The key that may have signed a token with `kid` and `alg`, fetching
    /// the set when it lacks that key or is old (within the rate limit).
    pub(super) async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<PublishedKey>, AuthError> {
        let (set, generation) = self.snapshot();
        let found = find(&set, kid, alg);
        let stale = set
            .fetched_at
            .is_none_or(|at| at.elapsed() >= self.settings.max_age);
        if let Ok(key) = &found
            && !stale
        {
            return Ok(key.clone());
        }
        match self.refresh(generation).await {
            Refresh::Done | Refresh::TooSoon(None) => {}
            Refresh::TooSoon(Some(reason)) | Refresh::Failed(reason) => {
                // An old set still answers for the keys it holds.
                if let Ok(key) = found {
                    return Ok(key);
                }
                return Err(AuthError::KeysUnavailable(format!(
                    "the signing keys could not be fetched from {}: {reason}",
                    self.url
                )));
            }
        }
        let (set, _) = self.snapshot();
        find(&set, kid, alg)
    }

    /// Fetches the set unless another caller did since `seen` or the last
    /// attempt was too recent.
    async fn refresh(&self, seen: u64) -> Refresh {
        let mut state = self.refresh.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return Refresh::Done;
        }
        if let Some(last) = state.last_attempt
            && last.elapsed() < self.settings.min_refresh_interval
        {
            return Refresh::TooSoon(state.last_error.clone());
        }
        state.last_attempt = Some(Instant::now());
        match tokio::time::timeout(self.settings.fetch_timeout, self.fetch()).await {
            Ok(Ok(keys)) => {
                tracing::info!(url = %self.url, keys = keys.len(), "JWKS fetched");
                *self.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(KeySet {
                    keys,
                    fetched_at: Some(Instant::now()),
                });
                self.generation.fetch_add(1, Ordering::AcqRel);
                state.last_error = None;
                Refresh::Done
            }
            outcome => {
                let reason = match outcome {
                    Ok(Err(reason)) => reason,
                    _ => format!("no answer within {}", humanize(self.settings.fetch_timeout)),
                };
                tracing::warn!(url = %self.url, %reason, "JWKS fetch failed");
                state.last_error = Some(reason.clone());
                Refresh::Failed(reason)
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Arc<PublishedKey>>, String> {
        let stream = tokio::net::TcpStream::connect(&self.target.address)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        match &self.target.tls {
            None => self.exchange(stream).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|e| format!("TLS handshake failed: {e}"))?;
                self.exchange(stream).await
            }
        }
    }

    /// The `GET` of the set on an open connection.
    async fn exchange<IO>(&self, io: IO) -> Result<Vec<Arc<PublishedKey>>, String>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
        // Drives the connection; it ends with the response (Connection: close).
        let driver = tokio::spawn(connection);
        let request = http::Request::get(&self.target.path)
            .header(http::header::HOST, &self.target.host)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::CONNECTION, "close")
            .header(
                http::header::USER_AGENT,
                concat!("cortex-service/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let outcome = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("HTTP {}", response.status().as_u16()));
            }
            let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e}"))?
                .to_bytes();
            parse(&body)
        }
        .await;
        driver.abort();
        outcome
    }
}

/// The TLS client of an `https://` fetch: the system's trusted roots and
/// those of `ca_file`; HTTP/1.1 only, as the fetch speaks.
fn connector(ca_file: Option<&Path>) -> Result<TlsConnector, AuthSetupError> {
    let mut roots = RootCertStore::empty();
    // A system store that fails to load in part still gives what it read;
    // with no root at all, nothing could be verified: a start-up error.
    let system = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    if let Some(path) = ca_file {
        let certificates = crate::tls::read_certificates(crate::tls::TlsFile::JwksCa, path)
            .map_err(|e| AuthSetupError::JwksCa {
                path: path.to_path_buf(),
                reason: match e {
                    crate::tls::TlsSetupError::Read { source, .. } => {
                        format!("cannot read it: {source}")
                    }
                    crate::tls::TlsSetupError::Invalid { reason, .. } => reason,
                    other => other.to_string(),
                },
            })?;
        let (_, unusable) = roots.add_parsable_certificates(certificates);
        if unusable > 0 {
            return Err(AuthSetupError::JwksCa {
                path: path.to_path_buf(),
                reason: format!("{unusable} certificate(s) in it are not usable CA certificates"),
            });
        }
    }
    if roots.is_empty() {
        return Err(AuthSetupError::Invalid(
            "an https:// JWKS URL needs trusted CA certificates: the system has none; give a \
             CA file"
                .into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AuthSetupError::Invalid(format!("TLS for the JWKS fetch: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The key for `kid` (any algorithm: the caller compares), or without a
/// `kid` the only key for `alg`.
fn find(set: &KeySet, kid: Option<&str>, alg: Algorithm) -> Result<Arc<PublishedKey>, AuthError> {
    match kid {
        Some(kid) => set
            .keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(kid))
            .cloned()
            .ok_or_else(|| AuthError::UnknownKey(kid.chars().take(64).collect())),
        None => {
            let mut candidates = set.keys.iter().filter(|k| k.algorithm == alg);
            match (candidates.next(), candidates.next()) {
                (Some(key), None) => Ok(key.clone()),
                // Several could have signed it: the token must say which.
                _ => Err(AuthError::UnknownKey("(the token names no kid)".into())),
            }
        }
    }
}

/// The usable signing keys of a JWKS document. Keys that are not for
/// signatures, symmetric (`oct`: a shared secret is never taken from a
/// URL), of an unsupported type, or malformed are skipped.
fn parse(body: &[u8]) -> Result<Vec<Arc<PublishedKey>>, String> {
    let document: Value =
        serde_json::from_slice(body).map_err(|e| format!("not a JWKS (JSON: {e})"))?;
    let Some(Value::Array(entries)) = document.get("keys") else {
        return Err("not a JWKS: no `keys` array".into());
    };
    let keys: Vec<Arc<PublishedKey>> = entries
        .iter()
        .filter_map(|entry| serde_json::from_value::<Jwk>(entry.clone()).ok())
        .filter_map(|jwk| {
            let algorithm = algorithm_of(&jwk)?;
            let key = DecodingKey::from_jwk(&jwk).ok()?;
            Some(Arc::new(PublishedKey {
                kid: jwk.common.key_id.clone(),
                algorithm,
                key,
            }))
        })
        .take(MAX_KEYS)
        .collect();
    if keys.is_empty() && !entries.is_empty() {
        tracing::warn!(
            entries = entries.len(),
            "the JWKS holds no usable signing key"
        );
    }
    Ok(keys)
}

/// The one algorithm a key verifies: its `alg` when it has one (and that
/// fits its type and curve), else the usual one for its type and curve.
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    if let Some(usage) = &jwk.common.public_key_use
        && *usage != PublicKeyUse::Signature
    {
        return None;
    }
    let fits: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA,
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(params) => match params.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            _ => return None,
        },
        _ => return None,
    };
    let algorithm = match jwk.common.key_algorithm {
        Some(named) => Algorithm::try_from(named).ok()?,
        None => fits[0],
    };
    (fits.contains(&algorithm) && ASYMMETRIC.contains(&algorithm)).then_some(algorithm)
}

fn humanize(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_or_https_with_a_host() {
        let settings = JwksSettings::default();
        assert!(Jwks::new("http://127.0.0.1:8080/keys", settings, None).is_ok());
        let refused = |url: &str| Jwks::new(url, settings, None).err().map(|e| e.to_string());
        assert!(refused("ftp://idp/keys").is_some_and(|e| e.contains("https://")));
        assert!(refused("not a url").is_some());
        assert!(refused("http://user:pw@idp/keys").is_some());
        let jwks =
            Jwks::new("http://[::1]:9/k?x=1", settings, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(jwks.target.address, "[::1]:9");
        assert_eq!(jwks.target.path, "/k?x=1");
        assert!(jwks.target.tls.is_none());
        let default = Jwks::new("http://idp", settings, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(default.target.address, "idp:80");
        assert_eq!(default.target.path, "/");
    }

    #[test]
    fn a_ca_file_is_read_at_setup_and_only_for_https() {
        let settings = JwksSettings::default();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let missing = dir.path().join("missing.pem");
        let error = Jwks::new("https://idp.example/keys", settings, Some(&missing))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("missing.pem"), "{error}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "no certificate here").unwrap_or_else(|e| panic!("{e}"));
        let error = Jwks::new("https://idp.example/keys", settings, Some(&garbage))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("no PEM certificate"), "{error}");
        let error = Jwks::new("http://idp.example/keys", settings, Some(&garbage))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("https:// JWKS URL only"), "{error}");
    }

    #[test]
    fn only_asymmetric_signing_keys_are_taken() {
        let body = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "kid": "hmac"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "ed"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "enc", "use": "enc"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "lies", "alg": "RS256"},
            {"kty": "weird", "kid": "w"},
            "not an object"
        ]});
        let keys = parse(body.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let kids: Vec<_> = keys.iter().map(|k| k.kid.clone()).collect();
        assert_eq!(kids, [Some("ed".to_string())]);
        assert_eq!(keys[0].algorithm, Algorithm::EdDSA);
        assert!(parse(b"{}").is_err());
        assert!(parse(b"nope").is_err());
    }
}
