//! Authentication and the caller's identity: one layer every service gets.
//!
//! With [`AuthConfig`] enabled (in [`ServiceConfig::auth`]), every route but
//! `GET /health` and the protected-resource metadata needs an
//! `Authorization: Bearer <JWT>` header:
//!
//! - **Keys.** HS256 with a shared secret of at least 32 bytes
//!   ([`AuthConfig::hs256`]), or RS256/RS384/RS512/PS256/PS384/PS512,
//!   ES256/ES384 and EdDSA keys from a JWKS URL ([`AuthConfig::jwks`]),
//!   cached, fetched again when a token names an unknown `kid` (at most once
//!   per [`JwksSettings::min_refresh_interval`]) or when the set is older
//!   than [`JwksSettings::max_age`].
//! - **Algorithms come from the key, never from the token.** An HS256
//!   configuration accepts HS256 only; a JWKS key accepts the one algorithm
//!   its `alg` (or, without one, its key type and curve) names. So `alg:
//!   none`, and a token signed with HMAC over an RSA public key, are refused.
//! - **Claims.** `exp` is required; `nbf` is checked when present; `iss` and
//!   `aud` are required and checked when configured; 30 s of leeway. The
//!   user is the `oid` claim, else `sub`; roles are the `roles` claim (an
//!   array of strings).
//! - **Failures.** A missing, malformed, expired or wrongly signed token is
//!   `401 unauthorized` (the usual error envelope) with `WWW-Authenticate:
//!   Bearer realm="<service>", error="invalid_token", …` (RFC 6750) and a
//!   `resource_metadata` pointer to `/.well-known/oauth-protected-resource`
//!   (RFC 9728), which names the authorization servers, so a standard MCP
//!   host can find where to get a token. A JWKS that cannot be fetched is
//!   `503 unavailable`: the token may be fine.
//! - **`/metrics`** needs a token with the role `admin` or `metrics`
//!   (`403 forbidden` otherwise), unless [`AuthConfig::with_open_metrics`].
//!
//! The verified caller reaches handlers as [`CallContext::caller`](crate::registry::CallContext::caller); a
//! handler checks it with [`CallContext::authorize_user`](crate::registry::CallContext::authorize_user) (the caller must
//! be that user, or hold the role `admin` or `service`).
//!
//! # Without a caller
//!
//! `ctx.caller` is `None` when authentication is off (the library default:
//! a service embedded in a program or a test) and for calls made inside
//! the process through [`InProcessMcpClient`](crate::InProcessMcpClient),
//! which act as the process itself: trusted, like any other code in it.
//! Such calls pass every check. An in-process client given an
//! [`AuthConfig`] ([`InProcessMcpClient::verify_forwarded`](crate::InProcessMcpClient::verify_forwarded))
//! verifies a forwarded caller's token the way the HTTP layer does, and the
//! callee then sees that caller.
//!
//! [`ServiceConfig::auth`]: crate::ServiceConfig::auth

mod http;
mod jwks;
mod jwt;

use std::sync::Arc;
use std::time::Duration;

use cortex_proto::ErrorCode;

use crate::error::ServiceError;

pub use jwks::JwksSettings;
pub use jwt::{MintError, TokenClaims, mint_hs256};

pub(crate) use http::Protect;

/// The role that may read and change any user's data and read `/metrics`.
pub const ADMIN_ROLE: &str = "admin";
/// The role of a trusted service acting for a user it names (the core
/// application draining its outbox after a user's token expired). It is
/// checked like [`ADMIN_ROLE`] for user data, but does not open `/metrics`.
pub const SERVICE_ROLE: &str = "service";
/// The role that may read `/metrics` and nothing else.
pub const METRICS_ROLE: &str = "metrics";

/// The shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key at
/// least as long as the hash output (256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

/// The clock skew allowed on `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Who made a call, as the verified token says. Cheap to clone (shared):
/// every request copies it from the verifier's memory of tokens into the
/// request's context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(Arc<CallerInner>);

#[derive(Debug, PartialEq, Eq)]
struct CallerInner {
    user_id: String,
    roles: Vec<String>,
}

impl Caller {
    /// A caller with a user id and roles.
    pub fn new(user_id: impl Into<String>, roles: Vec<String>) -> Self {
        Self(Arc::new(CallerInner {
            user_id: user_id.into(),
            roles,
        }))
    }

    /// The user: the token's `oid` claim, else its `sub`.
    pub fn user_id(&self) -> &str {
        &self.0.user_id
    }

    /// The token's `roles`.
    pub fn roles(&self) -> &[String] {
        &self.0.roles
    }

    /// Whether the token carries `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.0.roles.iter().any(|r| r == role)
    }

    /// Whether this caller may read and change `user_id`'s data: it is that
    /// user, or an `admin`, or a `service` acting for them.
    pub fn may_act_for(&self, user_id: &str) -> bool {
        self.0.user_id == user_id || self.has_role(ADMIN_ROLE) || self.has_role(SERVICE_ROLE)
    }
}

tokio::task_local! {
    /// The caller the auth layer verified for the request being served.
    static CALLER: Caller;
}

/// The caller of the request this task is serving, if the auth layer
/// verified one. [`CallContext::from_headers`] reads it, so every context
/// made while serving a request carries its caller, whichever route or
/// protocol made it.
pub(crate) fn current_caller() -> Option<Caller> {
    CALLER.try_with(Clone::clone).ok()
}

/// `future`, run as serving a request of `caller`.
pub(crate) fn serve_as<F: std::future::Future>(
    caller: Caller,
    future: F,
) -> tokio::task::futures::TaskLocalFuture<Caller, F> {
    CALLER.scope(caller, future)
}

/// `Ok` when `caller` may act for `user_id` (or there is no caller: see
/// the module documentation), else `403 forbidden`, naming neither the
/// caller's roles nor anything about `user_id`'s data.
pub fn authorize(caller: Option<&Caller>, user_id: &str) -> Result<(), ServiceError> {
    match caller {
        Some(caller) if !caller.may_act_for(user_id) => Err(ServiceError::new(
            ErrorCode::Forbidden,
            format!(
                "user `{}` may not act for user `{user_id}`",
                caller.user_id()
            ),
        )),
        _ => Ok(()),
    }
}

/// How a service checks callers: off, or on with a key source and claim
/// rules. Part of [`ServiceConfig`](crate::ServiceConfig); cheap to clone
/// (the keys and the JWKS cache are shared).
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// `None`: authentication is off.
    verifier: Option<Arc<jwt::Verifier>>,
    /// The authorization servers named in the protected-resource metadata.
    authorization_servers: Vec<String>,
    /// The resource identifier (the service's base URL) published in the
    /// metadata; by default `http://` (`https://` over TLS) and the request's `Host`.
    resource: Option<String>,
    /// `/metrics` without a token.
    open_metrics: bool,
}

/// Why an [`AuthConfig`] cannot be made: a start-up error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthSetupError {
    /// The HS256 secret is shorter than [`MIN_SECRET_BYTES`].
    #[error(
        "the JWT secret is {len} bytes long; HS256 needs at least {MIN_SECRET_BYTES} bytes (256 bits)"
    )]
    SecretTooShort {
        /// Its length.
        len: usize,
    },
    /// The JWKS URL cannot be used.
    #[error("JWKS URL `{url}`: {reason}")]
    JwksUrl {
        /// The URL as given.
        url: String,
        /// Why not.
        reason: String,
    },
    /// The CA file for an `https://` JWKS URL cannot be used.
    #[error("JWKS CA file {}: {reason}", path.display())]
    JwksCa {
        /// The file as given.
        path: std::path::PathBuf,
        /// Why not.
        reason: String,
    },
    /// A setting is out of range.
    #[error("{0}")]
    Invalid(String),
}

impl AuthConfig {
    /// Authentication off: every caller is served, `ctx.caller` is `None`.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// HS256 tokens signed with `secret` (at least [`MIN_SECRET_BYTES`]).
    pub fn hs256(secret: impl AsRef<[u8]>) -> Result<Self, AuthSetupError> {
        let verifier = jwt::Verifier::hs256(secret.as_ref())?;
        Ok(Self::with_verifier(verifier))
    }

    /// Tokens signed by the keys published at `url` (`https://`, checked
    /// against the system's trusted CAs, or `http://`), with the default
    /// [`JwksSettings`].
    pub fn jwks(url: &str) -> Result<Self, AuthSetupError> {
        Self::jwks_with(url, JwksSettings::default())
    }

    /// As [`Self::jwks`], with the cache's timings.
    pub fn jwks_with(url: &str, settings: JwksSettings) -> Result<Self, AuthSetupError> {
        let verifier = jwt::Verifier::jwks(url, settings, None)?;
        Ok(Self::with_verifier(verifier))
    }

    /// As [`Self::jwks_with`] for an `https://` URL whose certificate may
    /// also be signed by a CA in `ca_file` (PEM): a private identity
    /// provider's. The file is read now; a missing or malformed one is an
    /// [`AuthSetupError::JwksCa`].
    pub fn jwks_trusting(
        url: &str,
        settings: JwksSettings,
        ca_file: &std::path::Path,
    ) -> Result<Self, AuthSetupError> {
        let verifier = jwt::Verifier::jwks(url, settings, Some(ca_file))?;
        Ok(Self::with_verifier(verifier))
    }

    fn with_verifier(verifier: jwt::Verifier) -> Self {
        Self {
            verifier: Some(Arc::new(verifier)),
            ..Self::default()
        }
    }

    /// Whether callers are checked.
    pub fn is_enabled(&self) -> bool {
        self.verifier.is_some()
    }

    fn adjust(mut self, change: impl FnOnce(&mut jwt::Verifier)) -> Self {
        if let Some(verifier) = self.verifier.take() {
            let mut verifier = Arc::unwrap_or_clone(verifier);
            change(&mut verifier);
            self.verifier = Some(Arc::new(verifier));
        }
        self
    }

    /// Requires the `iss` claim to be `issuer`.
    pub fn with_issuer(self, issuer: impl Into<String>) -> Self {
        let issuer = issuer.into();
        self.adjust(|v| v.set_issuer(issuer))
    }

    /// Requires the `aud` claim to hold `audience`. Without one, `aud` is
    /// not checked.
    pub fn with_audience(self, audience: impl Into<String>) -> Self {
        let audience = audience.into();
        self.adjust(|v| v.set_audience(audience))
    }

    /// The clock skew allowed on `exp` and `nbf` (default 30 s).
    pub fn with_leeway(self, leeway: Duration) -> Self {
        self.adjust(|v| v.set_leeway(leeway))
    }

    /// The authorization servers (issuer URLs) published in the
    /// protected-resource metadata, where an MCP host gets its tokens.
    pub fn with_authorization_servers(mut self, servers: Vec<String>) -> Self {
        self.authorization_servers = servers;
        self
    }

    /// The resource identifier published in the metadata (the service's
    /// public base URL, such as `https://memory.example.com`), for a service
    /// behind a proxy; by default `http://` (`https://` over TLS) and the request's `Host`.
    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into().trim_end_matches('/').to_string());
        self
    }

    /// Serves `/metrics` without a token (default: a token with the role
    /// `admin` or `metrics` is needed).
    pub fn with_open_metrics(mut self, open: bool) -> Self {
        self.open_metrics = open;
        self
    }

    /// Whether `/metrics` answers without a token.
    pub fn open_metrics(&self) -> bool {
        self.open_metrics || !self.is_enabled()
    }

    /// The caller of an `Authorization` header value verified lately (see
    /// [`Self::verify`]), found without waiting; `None` when it is not
    /// known (or authentication is off) and must be verified in full.
    pub(crate) fn remembered(&self, authorization: &::http::HeaderValue) -> Option<Caller> {
        self.verifier.as_ref()?.remembered(Some(authorization))
    }

    /// Verifies an `Authorization` header value: the caller it names, or
    /// why not. `Ok(None)` when authentication is off.
    pub async fn verify(
        &self,
        authorization: Option<&::http::HeaderValue>,
    ) -> Result<Option<Caller>, AuthError> {
        match &self.verifier {
            None => Ok(None),
            Some(verifier) => verifier.verify(authorization).await.map(Some),
        }
    }
}

/// Why a request's credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization: Bearer …` header.
    #[error("a bearer token is required (Authorization: Bearer <token>)")]
    Missing,
    /// The header or the token cannot be read.
    #[error("the bearer token is malformed: {0}")]
    Malformed(String),
    /// `exp` has passed (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` has not come yet (beyond the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// The signature does not verify with the key.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// The token's `alg` is not the one its key allows (`none`, HMAC
    /// where the key is RSA, …).
    #[error("the token's algorithm is not accepted: {0}")]
    Algorithm(String),
    /// No published key has the token's `kid`.
    #[error("no key `{0}` is published for this service")]
    UnknownKey(String),
    /// A claim is missing or wrong (`exp`, `iss`, `aud`, the user).
    #[error("the token's claims are not accepted: {0}")]
    Claims(String),
    /// The keys could not be fetched, so the token could not be checked.
    #[error("the token cannot be checked now: {0}")]
    KeysUnavailable(String),
}

impl AuthError {
    /// The RFC 6750 error code of the challenge, if any. A request without
    /// a token gets none (RFC 6750 §3.1).
    pub fn challenge_code(&self) -> Option<&'static str> {
        match self {
            Self::Missing | Self::KeysUnavailable(_) => None,
            _ => Some("invalid_token"),
        }
    }

    /// The error a caller sees: `401 unauthorized`, or `503 unavailable`
    /// when the keys could not be fetched.
    pub fn service_error(&self) -> ServiceError {
        match self {
            Self::KeysUnavailable(_) => ServiceError::unavailable(self.to_string()),
            _ => ServiceError::new(ErrorCode::Unauthorized, self.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acting_for_a_user() {
        let own = Caller::new("u1", vec![]);
        assert!(own.may_act_for("u1"));
        assert!(!own.may_act_for("u2"));
        assert!(Caller::new("a", vec![ADMIN_ROLE.into()]).may_act_for("u2"));
        assert!(Caller::new("core", vec![SERVICE_ROLE.into()]).may_act_for("u2"));
        assert!(!Caller::new("m", vec![METRICS_ROLE.into()]).may_act_for("u2"));
        let mut ctx = crate::registry::CallContext::default();
        assert!(ctx.authorize_user("anyone").is_ok(), "no caller: trusted");
        ctx.caller = Some(own);
        let refused = ctx.authorize_user("u2").map_err(|e| e.code);
        assert_eq!(refused, Err(ErrorCode::Forbidden));
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(
            AuthConfig::hs256([7u8; 31]).map(|_| ()),
            Err(AuthSetupError::SecretTooShort { len: 31 })
        );
        assert!(AuthConfig::hs256([7u8; 32]).is_ok_and(|c| c.is_enabled()));
        assert!(!AuthConfig::disabled().is_enabled());
    }
}
