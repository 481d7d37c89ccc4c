//! The grants: authorization code with PKCE (RFC 6749 §4.1, RFC 7636,
//! RFC 9207's `iss` check), client credentials (with a secret, or with a
//! signed assertion, RFC 7523 `private_key_jwt`), the enterprise-managed
//! exchange of an identity provider's ID token for an ID-JAG and the
//! ID-JAG for a token (RFC 8693, RFC 7523), and refresh. Every token
//! request carries the resource indicator (RFC 8707).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderValue;
use serde_json::Value;

use super::error::OAuthError;
use super::http::{Http, form_component, form_encode};
use super::metadata::ServerMetadata;
use super::pkce::{Pkce, random_token};
use super::redirect::AuthorizationHandler;
use super::registration::ClientIdentity;
use super::store::now_secs;

/// A successful token response (RFC 6749 §5.1).
#[derive(Clone)]
pub(crate) struct TokenResponse {
    pub(crate) access_token: String,
    pub(crate) refresh_token: Option<String>,
    pub(crate) expires_in: Option<u64>,
    pub(crate) scope: Option<String>,
}

impl TokenResponse {
    /// When the token expires, in seconds since the epoch.
    pub(crate) fn expires_at(&self) -> Option<u64> {
        self.expires_in.map(|s| now_secs().saturating_add(s))
    }
}

/// How the client proves who it is at a token endpoint.
pub(crate) struct ClientAuth<'a> {
    pub(crate) identity: &'a ClientIdentity,
    /// For `private_key_jwt`: the signing key and its algorithm.
    pub(crate) signer: Option<&'a Signer>,
    /// The `aud` of an assertion: the authorization server's issuer.
    pub(crate) audience: &'a str,
}

/// A private key that signs client assertions (`private_key_jwt`).
#[cfg(feature = "oauth-jwt")]
pub(crate) struct Signer {
    key: jsonwebtoken::EncodingKey,
    algorithm: jsonwebtoken::Algorithm,
}

/// Without the `oauth-jwt` feature there is no signer.
#[cfg(not(feature = "oauth-jwt"))]
pub(crate) struct Signer;

#[cfg(not(feature = "oauth-jwt"))]
impl Signer {
    pub(crate) fn from_pem(_pem: &str, _algorithm: &str) -> Result<Self, OAuthError> {
        Err(OAuthError::config(
            "private_key_jwt needs cortex-client's `oauth-jwt` feature",
        ))
    }

    fn assertion(&self, _client_id: &str, _audience: &str) -> Result<String, OAuthError> {
        Err(OAuthError::config(
            "private_key_jwt needs cortex-client's `oauth-jwt` feature",
        ))
    }
}

#[cfg(feature = "oauth-jwt")]
impl Signer {
    /// A signer from a PKCS#8 PEM private key and a JWS algorithm name
    /// (`ES256`, `ES384`).
    pub(crate) fn from_pem(pem: &str, algorithm: &str) -> Result<Self, OAuthError> {
        let algorithm = match algorithm {
            "ES256" => jsonwebtoken::Algorithm::ES256,
            "ES384" => jsonwebtoken::Algorithm::ES384,
            other => {
                return Err(OAuthError::config(format!(
                    "signing algorithm {other} is not supported (ES256, ES384 are)"
                )));
            }
        };
        let body: String = pem
            .lines()
            .map(str::trim)
            .filter(|line| !line.starts_with("-----"))
            .collect();
        let der = STANDARD
            .decode(body.as_bytes())
            .map_err(|e| OAuthError::config(format!("the private key is not PEM: {e}")))?;
        Ok(Self {
            key: jsonwebtoken::EncodingKey::from_ec_der(&der),
            algorithm,
        })
    }

    /// A client assertion (RFC 7523 §3): issued by and about `client_id`,
    /// for `audience`, valid five minutes, used once.
    fn assertion(&self, client_id: &str, audience: &str) -> Result<String, OAuthError> {
        let now = now_secs();
        let claims = serde_json::json!({
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "iat": now,
            "exp": now + 300,
            "jti": random_token(16)?,
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(self.algorithm),
            &claims,
            &self.key,
        )
        .map_err(|e| OAuthError::config(format!("cannot sign the client assertion: {e}")))
    }
}

/// Sends a token request with `form` to `endpoint`, authenticated as
/// `client` says; the token, or the server's refusal as a typed error.
pub(crate) async fn token_request(
    http: &Http,
    endpoint: &str,
    mut form: Vec<(&str, String)>,
    client: &ClientAuth<'_>,
) -> Result<TokenResponse, OAuthError> {
    let identity = client.identity;
    // RFC 8693: an exchanged token that is not an access token (an
    // ID-JAG) has the type `N_A`.
    let exchange = form
        .iter()
        .any(|(k, v)| *k == "grant_type" && v.ends_with(":token-exchange"));
    let mut basic = None;
    match identity.auth_method.as_str() {
        "client_secret_basic" => {
            let secret = identity.client_secret.as_deref().unwrap_or_default();
            // RFC 6749 §2.3.1: each part form-encoded before base64.
            let pair = format!(
                "{}:{}",
                form_component(&identity.client_id),
                form_component(secret)
            );
            basic = Some(
                HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(pair))).map_err(
                    |_| OAuthError::config("the client credentials cannot go in a header"),
                )?,
            );
        }
        "client_secret_post" => {
            form.push(("client_id", identity.client_id.clone()));
            form.push((
                "client_secret",
                identity.client_secret.clone().unwrap_or_default(),
            ));
        }
        "private_key_jwt" => {
            let signer = client.signer.ok_or_else(|| {
                OAuthError::config("private_key_jwt needs a private key, and none was configured")
            })?;
            form.push(("client_id", identity.client_id.clone()));
            form.push((
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
            ));
            form.push((
                "client_assertion",
                signer.assertion(&identity.client_id, client.audience)?,
            ));
        }
        _ => form.push(("client_id", identity.client_id.clone())),
    }
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let reply = http.post_form(endpoint, &pairs, basic).await?;
    let doc = reply.json();
    if !reply.status.is_success() {
        let doc = doc.unwrap_or(Value::Null);
        let code = doc.get("error").and_then(Value::as_str).map(str::to_string);
        let description = doc
            .get("error_description")
            .and_then(Value::as_str)
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        return Err(OAuthError::token(format!(
            "the token endpoint {endpoint} refused: HTTP {}{description}",
            reply.status
        ))
        .with_code(code));
    }
    let doc = doc.map_err(|e| OAuthError::token(format!("{endpoint}: {e}")))?;
    parse_token(&doc, !exchange).map_err(|e| OAuthError::token(format!("{endpoint}: {e}")))
}

/// A token response's fields, checked; `bearer`: the token must be one.
fn parse_token(doc: &Value, bearer: bool) -> Result<TokenResponse, String> {
    let access_token = doc
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or("no `access_token` in the answer")?;
    if let Some(kind) = doc.get("token_type").and_then(Value::as_str)
        && bearer
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(format!("token type `{kind}` is not Bearer"));
    }
    let expires_in = match doc.get("expires_in") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_u64()
                .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
                .ok_or("`expires_in` is not a number of seconds")?,
        ),
    };
    Ok(TokenResponse {
        access_token: access_token.to_string(),
        refresh_token: doc
            .get("refresh_token")
            .and_then(Value::as_str)
            .map(str::to_string),
        expires_in,
        scope: doc.get("scope").and_then(Value::as_str).map(str::to_string),
    })
}

/// What an authorization code flow asks for.
pub(crate) struct CodeRequest<'a> {
    pub(crate) server: &'a ServerMetadata,
    pub(crate) client: &'a ClientAuth<'a>,
    pub(crate) resource: &'a str,
    pub(crate) scope: Option<&'a str>,
}

/// The authorization code flow with PKCE: the user authorizes through
/// `handler`, the code is exchanged.
pub(crate) async fn authorization_code(
    http: &Http,
    handler: &dyn AuthorizationHandler,
    request: &CodeRequest<'_>,
) -> Result<TokenResponse, OAuthError> {
    let server = request.server;
    if !server.supports_s256() {
        return Err(OAuthError::metadata(format!(
            "the authorization server {} does not list PKCE S256 in `code_challenge_methods_supported`",
            server.issuer
        )));
    }
    let endpoint = server.authorization_endpoint.as_deref().ok_or_else(|| {
        OAuthError::metadata(format!(
            "the authorization server {} has no `authorization_endpoint`",
            server.issuer
        ))
    })?;
    let pkce = Pkce::new()?;
    let state = random_token(16)?;
    let redirect_uri = handler.redirect_uri();
    let client_id = request.client.identity.client_id.as_str();
    let mut query = vec![
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect_uri.as_str()),
        ("code_challenge", pkce.challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("state", state.as_str()),
        ("resource", request.resource),
    ];
    if let Some(scope) = request.scope {
        query.push(("scope", scope));
    }
    let separator = if endpoint.contains('?') { '&' } else { '?' };
    let url = format!("{endpoint}{separator}{}", form_encode(&query));
    let response = handler.authorize(&url).await?;
    if let Some(error) = response.error {
        let description = response
            .error_description
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        return Err(OAuthError::authorization(format!(
            "the authorization was refused{description}"
        ))
        .with_code(Some(error)));
    }
    if response.state.as_deref() != Some(state.as_str()) {
        return Err(OAuthError::authorization(
            "the redirect's `state` is not the one sent",
        ));
    }
    check_issuer(
        response.iss.as_deref(),
        &server.issuer,
        server.authorization_response_iss_parameter_supported,
    )?;
    let code = response
        .code
        .ok_or_else(|| OAuthError::authorization("the redirect carries no code"))?;
    let form = vec![
        ("grant_type", "authorization_code".to_string()),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("code_verifier", pkce.verifier),
        ("resource", request.resource.to_string()),
    ];
    token_request(http, &server.token_endpoint, form, request.client).await
}

/// The client credentials grant.
pub(crate) async fn client_credentials(
    http: &Http,
    server: &ServerMetadata,
    client: &ClientAuth<'_>,
    resource: &str,
    scope: Option<&str>,
) -> Result<TokenResponse, OAuthError> {
    let mut form = vec![
        ("grant_type", "client_credentials".to_string()),
        ("resource", resource.to_string()),
    ];
    if let Some(scope) = scope {
        form.push(("scope", scope.to_string()));
    }
    token_request(http, &server.token_endpoint, form, client).await
}

/// Refreshes with `refresh_token`.
pub(crate) async fn refresh(
    http: &Http,
    token_endpoint: &str,
    client: &ClientAuth<'_>,
    refresh_token: &str,
    resource: &str,
) -> Result<TokenResponse, OAuthError> {
    let form = vec![
        ("grant_type", "refresh_token".to_string()),
        ("refresh_token", refresh_token.to_string()),
        ("resource", resource.to_string()),
    ];
    token_request(http, token_endpoint, form, client).await
}

/// What the enterprise-managed grant starts from: an identity provider's
/// ID token and where to exchange it.
pub(crate) struct IdentityAssertion<'a> {
    pub(crate) idp_token_endpoint: &'a str,
    pub(crate) id_token: &'a str,
    pub(crate) idp_client: &'a ClientIdentity,
}

/// Exchanges the ID token for an ID-JAG at the identity provider (RFC
/// 8693), then the ID-JAG for an access token at the authorization server
/// (RFC 7523 JWT bearer grant).
pub(crate) async fn id_jag(
    http: &Http,
    server: &ServerMetadata,
    client: &ClientAuth<'_>,
    assertion: &IdentityAssertion<'_>,
    resource: &str,
    scope: Option<&str>,
) -> Result<TokenResponse, OAuthError> {
    let mut form = vec![
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange".to_string(),
        ),
        (
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:id-jag".to_string(),
        ),
        ("subject_token", assertion.id_token.to_string()),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:id_token".to_string(),
        ),
        ("audience", server.issuer.clone()),
        ("resource", resource.to_string()),
    ];
    if let Some(scope) = scope {
        form.push(("scope", scope.to_string()));
    }
    let idp = ClientAuth {
        identity: assertion.idp_client,
        signer: None,
        audience: assertion.idp_token_endpoint,
    };
    let grant = token_request(http, assertion.idp_token_endpoint, form, &idp).await?;
    let mut form = vec![
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:jwt-bearer".to_string(),
        ),
        ("assertion", grant.access_token),
    ];
    if let Some(scope) = scope {
        form.push(("scope", scope.to_string()));
    }
    token_request(http, &server.token_endpoint, form, client).await
}

/// RFC 9207: the redirect's issuer, when sent (it must be, when the server
/// advertises it), is the server the request went to (a mix-up attack
/// otherwise), compared as plain strings (§2.4): no case folding, no
/// trailing-slash or default-port normalization, which would let a
/// look-alike through.
fn check_issuer(iss: Option<&str>, issuer: &str, advertised: bool) -> Result<(), OAuthError> {
    match (iss, advertised) {
        (Some(iss), _) if iss != issuer => Err(OAuthError::authorization(format!(
            "the redirect's `iss` {iss} is not the authorization server {issuer}"
        ))),
        (None, true) => Err(OAuthError::authorization(
            "the redirect has no `iss`, which the authorization server advertises",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redirects_issuer_must_be_the_servers_exactly() {
        let issuer = "https://auth.example.com";
        assert!(check_issuer(Some(issuer), issuer, true).is_ok());
        assert!(
            check_issuer(None, issuer, false).is_ok(),
            "not advertised, not sent"
        );
        assert!(
            check_issuer(None, issuer, true).is_err(),
            "advertised, not sent"
        );
        for look_alike in [
            "https://auth.example.com/",
            "HTTPS://auth.example.com",
            "https://AUTH.example.com",
            "https://auth.example.com:443",
            "https://evil.example.com",
        ] {
            assert!(
                check_issuer(Some(look_alike), issuer, true).is_err(),
                "{look_alike}"
            );
        }
    }

    #[test]
    fn token_responses_are_checked() {
        let ok = parse_token(
            &serde_json::json!({
                "access_token": "a", "token_type": "bearer", "expires_in": 60, "scope": "x y"
            }),
            true,
        );
        assert!(ok.is_ok_and(|t| t.expires_in == Some(60) && t.scope.as_deref() == Some("x y")));
        assert!(parse_token(&serde_json::json!({"token_type": "Bearer"}), true).is_err());
        assert!(
            parse_token(
                &serde_json::json!({"access_token": "a", "token_type": "DPoP"}),
                true
            )
            .is_err()
        );
        assert!(
            parse_token(
                &serde_json::json!({"access_token": "a", "expires_in": "soon"}),
                true
            )
            .is_err()
        );
    }
}
