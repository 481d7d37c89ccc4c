//! Verifying a bearer token (and minting HS256 ones for local use).
//!
//! The algorithms a token may use come from the configured key, never from
//! the token: an HS256 secret accepts HS256 only, and a JWKS key the one
//! algorithm it is published for. The token's header `alg` is only compared
//! with that.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::HeaderValue;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::jwks::{ASYMMETRIC, Jwks, JwksSettings};
use super::{AuthError, AuthSetupError, Caller, DEFAULT_LEEWAY, MIN_SECRET_BYTES};

#[derive(Clone)]
enum Keys {
    /// One shared secret.
    Hs256(DecodingKey),
    /// Keys published at a URL, shared by every clone of the config.
    Jwks(Arc<Jwks>),
}

/// Checks tokens against the configured keys and claim rules.
#[derive(Clone)]
pub(crate) struct Verifier {
    keys: Keys,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
    /// One validation per algorithm the keys allow, built when the rules
    /// change, so a request only looks one up.
    validations: Vec<(Algorithm, Validation)>,
    /// Tokens already verified (see [`Verified`]); made anew whenever the
    /// rules change, so no answer outlives the rules it was given by.
    verified: Arc<Verified>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = match &self.keys {
            Keys::Hs256(_) => "HS256 secret".to_string(),
            Keys::Jwks(jwks) => format!("JWKS {}", jwks.url()),
        };
        f.debug_struct("Verifier")
            .field("keys", &keys)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .finish()
    }
}

impl Verifier {
    pub(super) fn hs256(secret: &[u8]) -> Result<Self, AuthSetupError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(AuthSetupError::SecretTooShort { len: secret.len() });
        }
        let key = DecodingKey::from_secret(secret)
            .map_err(|e| AuthSetupError::Invalid(format!("the JWT secret cannot be used: {e}")))?;
        Ok(Self::new(Keys::Hs256(key)))
    }

    pub(super) fn jwks(
        url: &str,
        settings: JwksSettings,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, AuthSetupError> {
        Ok(Self::new(Keys::Jwks(Arc::new(Jwks::new(
            url, settings, ca_file,
        )?))))
    }

    fn new(keys: Keys) -> Self {
        let mut verifier = Self {
            keys,
            issuer: None,
            audience: None,
            leeway: DEFAULT_LEEWAY,
            validations: Vec::new(),
            verified: Arc::default(),
        };
        verifier.rebuild();
        verifier
    }

    pub(super) fn set_issuer(&mut self, issuer: String) {
        self.issuer = Some(issuer);
        self.rebuild();
    }

    pub(super) fn set_audience(&mut self, audience: String) {
        self.audience = Some(audience);
        self.rebuild();
    }

    pub(super) fn set_leeway(&mut self, leeway: Duration) {
        self.leeway = leeway;
        self.rebuild();
    }

    fn rebuild(&mut self) {
        self.verified = Arc::default();
        let algorithms: &[Algorithm] = match self.keys {
            Keys::Hs256(_) => &[Algorithm::HS256],
            Keys::Jwks(_) => &ASYMMETRIC,
        };
        self.validations = algorithms
            .iter()
            .map(|alg| (*alg, self.validation(*alg)))
            .collect();
    }

    /// The rules for a token signed with `alg`: that algorithm only, `exp`
    /// required, `nbf` checked when present, `iss` and `aud` required and
    /// checked when configured.
    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // No audience configured: `aud` is not ours to judge.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    fn validation_for(&self, alg: Algorithm) -> Result<&Validation, AuthError> {
        self.validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or_else(|| AuthError::Algorithm(format!("{alg:?}")))
    }

    /// The caller of an `Authorization` header value whose token was
    /// verified lately and still holds (see [`Verified`]), without waiting
    /// on anything; `None` when it must be checked in full ([`Self::verify`]).
    /// The auth layer tries this first, so a client that reuses its token
    /// costs a lookup and no task of its own.
    pub(super) fn remembered(&self, authorization: Option<&HeaderValue>) -> Option<Caller> {
        let token = bearer_token(authorization).ok()?;
        match &self.keys {
            // The secret does not change while the rules stand: one
            // generation.
            Keys::Hs256(_) => self.verified.get(token, 0, self.leeway),
            // An old set is fetched again first (a key may be retired).
            Keys::Jwks(jwks) if jwks.is_fresh() => {
                self.verified.get(token, jwks.generation(), self.leeway)
            }
            Keys::Jwks(_) => None,
        }
    }

    /// The caller an `Authorization` header value names, or why not.
    pub(super) async fn verify(
        &self,
        authorization: Option<&HeaderValue>,
    ) -> Result<Caller, AuthError> {
        if let Some(caller) = self.remembered(authorization) {
            return Ok(caller);
        }
        let token = bearer_token(authorization)?;
        let (claims, generation) = match &self.keys {
            Keys::Hs256(key) => {
                let validation = self.validation_for(Algorithm::HS256)?;
                (decode(token, key, validation)?, 0)
            }
            Keys::Jwks(jwks) => {
                let generation = jwks.generation();
                let header = jsonwebtoken::decode_header(token).map_err(|e| refusal(&e, token))?;
                let key = jwks.key_for(header.kid.as_deref(), header.alg).await?;
                // The key says which algorithm it signs with; the token's
                // header must agree (no HMAC over an RSA key, no `none`).
                if key.algorithm != header.alg {
                    return Err(AuthError::Algorithm(format!(
                        "{:?} where the key is for {:?}",
                        header.alg, key.algorithm
                    )));
                }
                let validation = self.validation_for(key.algorithm)?;
                (decode(token, &key.key, validation)?, generation)
            }
        };
        let exp = claims.exp.as_ref().and_then(Value::as_f64);
        let caller = claims.into_caller()?;
        if let Some(exp) = exp {
            self.verified
                .put(token, caller.clone(), exp as u64, generation);
        }
        Ok(caller)
    }
}

/// The tokens verified lately, so a client sending the same token with
/// every call pays for one check. An RS256 signature check costs tens of
/// microseconds; an HS256 one about a microsecond, with its header and
/// claims decoded from base64 and parsed (measured: more than a lookup
/// here costs, and a fifth of what the auth layer added to a call through
/// the router). Only the exact token text is found, so a token with any
/// byte changed is checked in full. An entry holds until the token's `exp`
/// (plus the leeway) and, for JWKS keys, only while the key set it was
/// checked against is the current one, so a retired key stops working at
/// once. Bounded: when full it is emptied, which costs only checks done
/// again. A read-write lock: every request reads it, from every worker
/// thread at once (a mutex there was measured to cost more than the HS256
/// check it saves), and only a token seen for the first time writes.
#[derive(Default)]
struct Verified {
    entries: std::sync::RwLock<std::collections::HashMap<String, (Caller, u64, u64)>>,
}

/// The most tokens [`Verified`] holds.
const VERIFIED_CAPACITY: usize = 4096;

/// The longest token [`Verified`] holds; longer ones are checked each time.
const VERIFIED_MAX_TOKEN: usize = 4096;

impl Verified {
    fn get(&self, token: &str, generation: u64, leeway: Duration) -> Option<Caller> {
        {
            let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
            let (caller, exp, checked_with) = entries.get(token)?;
            if *checked_with == generation && unix_now() <= exp.saturating_add(leeway.as_secs()) {
                return Some(caller.clone());
            }
        }
        // Stale (expired, or checked against another key set): forgotten,
        // and checked again by the caller.
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
        None
    }

    fn put(&self, token: &str, caller: Caller, exp: u64, generation: u64) {
        if token.len() > VERIFIED_MAX_TOKEN {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= VERIFIED_CAPACITY {
            entries.clear();
        }
        entries.insert(token.to_string(), (caller, exp, generation));
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The token of `Authorization: Bearer <token>`.
fn bearer_token(authorization: Option<&HeaderValue>) -> Result<&str, AuthError> {
    let value = authorization.ok_or(AuthError::Missing)?;
    let text = value
        .to_str()
        .map_err(|_| AuthError::Malformed("the Authorization header is not visible ASCII".into()))?
        .trim();
    let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme (Basic, …) is no bearer token at all (RFC 6750 §3.1).
        return Err(AuthError::Missing);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Malformed(
            "`Bearer` is followed by no token".into(),
        ));
    }
    Ok(token)
}

fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Claims, AuthError> {
    jsonwebtoken::decode::<Claims>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|e| refusal(&e, token))
}

/// What a verification failure means for the caller.
fn refusal(error: &jsonwebtoken::errors::Error, token: &str) -> AuthError {
    match error.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            AuthError::Algorithm(header_alg(token).unwrap_or_else(|| "unknown".into()))
        }
        ErrorKind::InvalidIssuer => AuthError::Claims("`iss` is not the expected issuer".into()),
        ErrorKind::InvalidAudience => AuthError::Claims("`aud` does not name this service".into()),
        ErrorKind::MissingRequiredClaim(claim) => {
            AuthError::Claims(format!("the `{claim}` claim is required"))
        }
        ErrorKind::InvalidClaimFormat(claim) => {
            AuthError::Claims(format!("the `{claim}` claim has the wrong type"))
        }
        // A header whose `alg` is no algorithm at all (`none`) fails to
        // parse; name it rather than calling the token garbled.
        ErrorKind::Json(_) | ErrorKind::InvalidAlgorithmName => match header_alg(token) {
            Some(alg) if !known_algorithm(&alg) => AuthError::Algorithm(alg),
            _ => AuthError::Malformed("its header or claims are not valid JSON".into()),
        },
        ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
            AuthError::Malformed("it is not three base64url parts".into())
        }
        ErrorKind::InvalidToken => AuthError::Malformed("it is not a JWT".into()),
        // A signature of the wrong length or shape for the key.
        _ => AuthError::BadSignature,
    }
}

fn known_algorithm(alg: &str) -> bool {
    alg.parse::<Algorithm>().is_ok()
}

/// The `alg` of a token's header, read without trusting anything else.
fn header_alg(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let header: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    match header.get("alg")? {
        Value::String(alg) => Some(alg.chars().take(32).collect()),
        other => Some(other.to_string().chars().take(32).collect()),
    }
}

/// The claims that name the caller; the time, issuer and audience claims
/// are the validation's (`exp` is read again to know how long a verified
/// token may be remembered).
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    exp: Option<Value>,
    #[serde(default)]
    oid: Option<Value>,
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    roles: Option<Value>,
}

impl Claims {
    fn into_caller(self) -> Result<Caller, AuthError> {
        let user = match (self.oid, self.sub) {
            (Some(Value::String(oid)), _) if !oid.is_empty() => oid,
            (Some(other), _) if !other.is_null() => {
                return Err(AuthError::Claims("`oid` must be a non-empty string".into()));
            }
            (_, Some(Value::String(sub))) if !sub.is_empty() => sub,
            (_, Some(other)) if !other.is_null() => {
                return Err(AuthError::Claims("`sub` must be a non-empty string".into()));
            }
            _ => {
                return Err(AuthError::Claims(
                    "the token names no user: it has neither `oid` nor `sub`".into(),
                ));
            }
        };
        let roles = match self.roles {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(role)) => vec![role],
            // Anything but a string grants nothing, so it is left out
            // rather than refused.
            Some(Value::Array(items)) => items
                .into_iter()
                .filter_map(|item| match item {
                    Value::String(role) => Some(role),
                    _ => None,
                })
                .collect(),
            Some(_) => {
                return Err(AuthError::Claims(
                    "`roles` must be an array of strings".into(),
                ));
            }
        };
        Ok(Caller::new(user, roles))
    }
}

/// What a locally minted token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// The user (`sub`).
    pub user: String,
    /// The `roles` claim; left out when empty.
    pub roles: Vec<String>,
    /// How long the token is valid from now (`exp`).
    pub ttl: Duration,
    /// `iss`, when the services check one.
    pub issuer: Option<String>,
    /// `aud`, when the services check one.
    pub audience: Option<String>,
}

impl TokenClaims {
    /// A token for `user` with no roles, valid for `ttl`.
    pub fn new(user: impl Into<String>, ttl: Duration) -> Self {
        Self {
            user: user.into(),
            roles: Vec::new(),
            ttl,
            issuer: None,
            audience: None,
        }
    }
}

/// Why a token could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// The secret is shorter than [`MIN_SECRET_BYTES`].
    #[error(
        "the JWT secret is {len} bytes long; HS256 needs at least {MIN_SECRET_BYTES} bytes (256 bits)"
    )]
    SecretTooShort {
        /// Its length.
        len: usize,
    },
    /// The claims are not usable (an empty user, a zero lifetime).
    #[error("{0}")]
    Claims(String),
    /// Signing failed.
    #[error("signing the token failed: {0}")]
    Sign(String),
}

/// An HS256 token signed with `secret`, with `sub`, `iat`, `exp` and, when
/// given, `roles`, `iss` and `aud`: what `cortex token` prints and what the
/// `cortex` client commands send.
pub fn mint_hs256(secret: &[u8], claims: &TokenClaims) -> Result<String, MintError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(MintError::SecretTooShort { len: secret.len() });
    }
    if claims.user.is_empty() {
        return Err(MintError::Claims("the token needs a user".into()));
    }
    if claims.ttl.is_zero() {
        return Err(MintError::Claims(
            "the token's lifetime must be positive".into(),
        ));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut payload = Map::new();
    payload.insert("sub".into(), claims.user.clone().into());
    payload.insert("iat".into(), now.into());
    payload.insert(
        "exp".into(),
        now.saturating_add(claims.ttl.as_secs().max(1)).into(),
    );
    if !claims.roles.is_empty() {
        payload.insert("roles".into(), claims.roles.clone().into());
    }
    if let Some(issuer) = &claims.issuer {
        payload.insert("iss".into(), issuer.clone().into());
    }
    if let Some(audience) = &claims.audience {
        payload.insert("aud".into(), audience.clone().into());
    }
    let key = EncodingKey::from_secret(secret).map_err(|e| MintError::Sign(e.to_string()))?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &payload, &key)
        .map_err(|e| MintError::Sign(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn header(value: &str) -> HeaderValue {
        HeaderValue::from_str(value).unwrap_or_else(|e| panic!("{e}"))
    }

    async fn verify(verifier: &Verifier, value: &str) -> Result<Caller, AuthError> {
        verifier.verify(Some(&header(value))).await
    }

    fn b64(json: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    #[tokio::test]
    async fn minted_tokens_verify_and_name_their_user() {
        let verifier = Verifier::hs256(SECRET).unwrap_or_else(|e| panic!("{e}"));
        let mut claims = TokenClaims::new("ada", Duration::from_secs(60));
        claims.roles = vec!["admin".into()];
        let token = mint_hs256(SECRET, &claims).unwrap_or_else(|e| panic!("{e}"));
        let caller = verify(&verifier, &format!("Bearer {token}")).await;
        assert_eq!(caller, Ok(Caller::new("ada", vec!["admin".into()])));
        // The scheme is case-insensitive.
        assert!(verify(&verifier, &format!("bearer {token}")).await.is_ok());
    }

    #[tokio::test]
    async fn headers_that_are_no_bearer_token() {
        let verifier = Verifier::hs256(SECRET).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(verifier.verify(None).await, Err(AuthError::Missing));
        assert_eq!(
            verify(&verifier, "Basic dTpw").await,
            Err(AuthError::Missing)
        );
        assert!(matches!(
            verify(&verifier, "Bearer ").await,
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            verify(&verifier, "Bearer not-a-jwt").await,
            Err(AuthError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn oid_wins_over_sub_and_roles_are_read_liberally() {
        let claims = |json: &str| -> Result<Caller, AuthError> {
            serde_json::from_str::<Claims>(json)
                .unwrap_or_else(|e| panic!("{e}"))
                .into_caller()
        };
        assert_eq!(
            claims(r#"{"oid":"o","sub":"s"}"#).map(|c| c.user_id().to_string()),
            Ok("o".into())
        );
        assert_eq!(
            claims(r#"{"sub":"s","roles":["a",3,"b"]}"#).map(|c| c.roles().to_vec()),
            Ok(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(
            claims(r#"{"sub":"s","roles":"admin"}"#).map(|c| c.roles().to_vec()),
            Ok(vec!["admin".to_string()])
        );
        assert!(matches!(
            claims(r#"{"roles":[]}"#),
            Err(AuthError::Claims(_))
        ));
        assert!(matches!(claims(r#"{"sub":""}"#), Err(AuthError::Claims(_))));
        assert!(matches!(
            claims(r#"{"oid":5,"sub":"s"}"#),
            Err(AuthError::Claims(_))
        ));
        assert!(matches!(
            claims(r#"{"sub":"s","roles":{"admin":true}}"#),
            Err(AuthError::Claims(_))
        ));
    }

    #[tokio::test]
    async fn alg_none_and_other_algorithms_are_refused() {
        let verifier = Verifier::hs256(SECRET).unwrap_or_else(|e| panic!("{e}"));
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            + 600;
        let payload = b64(&format!(r#"{{"sub":"ada","exp":{exp}}}"#));
        let none = format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
        assert_eq!(
            verify(&verifier, &format!("Bearer {none}")).await,
            Err(AuthError::Algorithm("none".into()))
        );
        let rs = format!("{}.{payload}.c2ln", b64(r#"{"alg":"RS256","typ":"JWT"}"#));
        assert!(matches!(
            verify(&verifier, &format!("Bearer {rs}")).await,
            Err(AuthError::Algorithm(_))
        ));
    }

    #[tokio::test]
    async fn expiry_issuer_and_audience() {
        let verifier = Verifier::hs256(SECRET).unwrap_or_else(|e| panic!("{e}"));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let sign = |claims: Value| {
            let key = EncodingKey::from_secret(SECRET).unwrap_or_else(|e| panic!("{e}"));
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let bearer = |token: String| format!("Bearer {token}");
        // Within the leeway: accepted; past it: expired.
        let recent = sign(serde_json::json!({"sub": "a", "exp": now - 10}));
        assert!(verify(&verifier, &bearer(recent)).await.is_ok());
        let old = sign(serde_json::json!({"sub": "a", "exp": now - 100}));
        assert_eq!(
            verify(&verifier, &bearer(old)).await,
            Err(AuthError::Expired)
        );
        let no_exp = sign(serde_json::json!({"sub": "a"}));
        assert!(matches!(
            verify(&verifier, &bearer(no_exp)).await,
            Err(AuthError::Claims(_))
        ));
        let early = sign(serde_json::json!({"sub": "a", "exp": now + 600, "nbf": now + 300}));
        assert_eq!(
            verify(&verifier, &bearer(early)).await,
            Err(AuthError::NotYetValid)
        );
        // Without a configured audience, `aud` is not judged.
        let with_aud = sign(serde_json::json!({"sub": "a", "exp": now + 60, "aud": "x"}));
        assert!(verify(&verifier, &bearer(with_aud.clone())).await.is_ok());

        let mut strict = verifier.clone();
        strict.set_issuer("https://idp".into());
        strict.set_audience("memory".into());
        let good = sign(serde_json::json!({
            "sub": "a", "exp": now + 60, "iss": "https://idp", "aud": ["memory", "other"]
        }));
        assert!(verify(&strict, &bearer(good)).await.is_ok());
        assert!(matches!(
            verify(&strict, &bearer(with_aud)).await,
            Err(AuthError::Claims(_))
        ));
        // A configured issuer is required, not only checked when present.
        let no_iss = sign(serde_json::json!({"sub": "a", "exp": now + 60, "aud": "memory"}));
        assert!(matches!(
            verify(&strict, &bearer(no_iss)).await,
            Err(AuthError::Claims(_))
        ));
    }

    #[tokio::test]
    async fn a_token_of_another_secret_does_not_verify() {
        let verifier = Verifier::hs256(SECRET).unwrap_or_else(|e| panic!("{e}"));
        let other = b"another secret, also 32 bytes long";
        let token = mint_hs256(other, &TokenClaims::new("a", Duration::from_secs(60)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            verify(&verifier, &format!("Bearer {token}")).await,
            Err(AuthError::BadSignature)
        );
    }

    #[tokio::test]
    async fn hs256_tokens_are_remembered_and_a_changed_one_is_checked_in_full() {
        let verifier = Verifier::hs256(SECRET).unwrap_or_else(|e| panic!("{e}"));
        let token = mint_hs256(SECRET, &TokenClaims::new("a", Duration::from_secs(60)))
            .unwrap_or_else(|e| panic!("{e}"));
        let remembered = |token: &str| {
            verifier
                .verified
                .entries
                .read()
                .map(|e| e.contains_key(token))
                .unwrap_or(false)
        };
        assert!(!remembered(&token));
        let first = verify(&verifier, &format!("Bearer {token}")).await;
        assert_eq!(first.as_ref().map(Caller::user_id), Ok("a"));
        assert!(remembered(&token), "verified once, then remembered");
        assert_eq!(verify(&verifier, &format!("Bearer {token}")).await, first);
        // The same token with a character of its signature changed (not
        // the last, whose low bits are padding) is another text: not
        // found, checked, refused, and not remembered.
        let at = token.len() - 10;
        let changed = if &token[at..=at] == "A" { "B" } else { "A" };
        let forged = format!("{}{changed}{}", &token[..at], &token[at + 1..]);
        assert_eq!(
            verify(&verifier, &format!("Bearer {forged}")).await,
            Err(AuthError::BadSignature)
        );
        assert!(!remembered(&forged));
        // New rules forget what the old ones accepted.
        let mut stricter = verifier.clone();
        stricter.set_issuer("https://issuer.example".into());
        assert!(matches!(
            verify(&stricter, &format!("Bearer {token}")).await,
            Err(AuthError::Claims(_))
        ));
    }

    #[test]
    fn verified_tokens_are_remembered_until_exp_and_only_for_their_key_set() {
        let verified = Verified::default();
        let leeway = Duration::from_secs(30);
        let caller = Caller::new("a", vec![]);
        let now = unix_now();
        verified.put("t", caller.clone(), now + 60, 1);
        assert_eq!(verified.get("t", 1, leeway), Some(caller.clone()));
        assert_eq!(verified.get("t", 2, leeway), None, "another key set");
        assert_eq!(verified.get("t", 1, leeway), None, "and it was dropped");
        verified.put("old", caller.clone(), now - 31, 1);
        assert_eq!(verified.get("old", 1, leeway), None, "expired");
        verified.put("edge", caller.clone(), now - 10, 1);
        assert!(
            verified.get("edge", 1, leeway).is_some(),
            "within the leeway"
        );
        verified.put(
            &"x".repeat(VERIFIED_MAX_TOKEN + 1),
            caller.clone(),
            now + 60,
            1,
        );
        for i in 0..VERIFIED_CAPACITY + 1 {
            verified.put(&i.to_string(), caller.clone(), now + 60, 1);
        }
        let held = verified.entries.read().map(|e| e.len()).unwrap_or(0);
        assert!(held <= VERIFIED_CAPACITY, "{held}");
    }

    #[test]
    fn minting_refuses_what_cannot_verify() {
        let claims = TokenClaims::new("a", Duration::from_secs(60));
        assert_eq!(
            mint_hs256(b"short", &claims),
            Err(MintError::SecretTooShort { len: 5 })
        );
        assert!(matches!(
            mint_hs256(SECRET, &TokenClaims::new("", Duration::from_secs(60))),
            Err(MintError::Claims(_))
        ));
        assert!(matches!(
            mint_hs256(SECRET, &TokenClaims::new("a", Duration::ZERO)),
            Err(MintError::Claims(_))
        ));
    }
}
