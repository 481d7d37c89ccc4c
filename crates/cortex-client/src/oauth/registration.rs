//! The client's identity at an authorization server, in the order the MCP
//! specification gives: credentials registered beforehand, a client
//! registered earlier and kept with the token, a Client ID Metadata
//! Document (its HTTPS URL is the `client_id`) when the server supports
//! them, then dynamic client registration (RFC 7591).

use serde_json::{Value, json};

use super::error::OAuthError;
use super::http::Http;
use super::metadata::ServerMetadata;
use super::store::StoredToken;

/// Who the client is at one authorization server, and how it proves it
/// at the token endpoint.
#[derive(Clone, PartialEq)]
pub(crate) struct ClientIdentity {
    pub(crate) client_id: String,
    pub(crate) client_secret: Option<String>,
    /// `none`, `client_secret_basic`, `client_secret_post` or
    /// `private_key_jwt`.
    pub(crate) auth_method: String,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("auth_method", &self.auth_method)
            .finish()
    }
}

/// What the application says about the client (from
/// [`OAuthConfig`](super::OAuthConfig)).
pub(crate) struct ClientFacts<'a> {
    pub(crate) client_id: Option<&'a str>,
    pub(crate) client_secret: Option<&'a str>,
    pub(crate) metadata_url: Option<&'a str>,
    pub(crate) client_name: &'a str,
    /// `None` for grants without a redirect.
    pub(crate) redirect_uri: Option<&'a str>,
    pub(crate) grant_types: &'a [&'a str],
    /// A method the grant needs (`private_key_jwt`), whatever the server lists.
    pub(crate) forced_method: Option<&'a str>,
}

/// The method a client holding a secret uses: the first the server
/// accepts of basic and post; basic when it accepts neither (RFC 8414's
/// default).
fn secret_method(server: &ServerMetadata) -> &'static str {
    if server.accepts_auth_method("client_secret_basic") {
        "client_secret_basic"
    } else if server.accepts_auth_method("client_secret_post") {
        "client_secret_post"
    } else {
        "client_secret_basic"
    }
}

/// The client's identity at `server`; registers it when it has to.
pub(crate) async fn identify(
    http: &Http,
    facts: &ClientFacts<'_>,
    server: &ServerMetadata,
    kept: Option<&StoredToken>,
) -> Result<ClientIdentity, OAuthError> {
    if let Some(client_id) = facts.client_id {
        let client_secret = facts.client_secret.map(str::to_string);
        let auth_method = match (facts.forced_method, &client_secret) {
            (Some(method), _) => method.to_string(),
            (None, Some(_)) => secret_method(server).to_string(),
            (None, None) => "none".to_string(),
        };
        return Ok(ClientIdentity {
            client_id: client_id.to_string(),
            client_secret,
            auth_method,
        });
    }
    if let Some(kept) = kept.filter(|k| k.issuer == server.issuer) {
        return Ok(ClientIdentity {
            client_id: kept.client_id.clone(),
            client_secret: kept.client_secret.clone(),
            auth_method: kept.auth_method.clone(),
        });
    }
    if server.client_id_metadata_document_supported
        && let Some(url) = facts.metadata_url
    {
        if !url.starts_with("https://") {
            return Err(OAuthError::config(format!(
                "the client metadata document URL {url} is not https"
            )));
        }
        return Ok(ClientIdentity {
            client_id: url.to_string(),
            client_secret: None,
            auth_method: "none".into(),
        });
    }
    let Some(endpoint) = &server.registration_endpoint else {
        return Err(OAuthError::registration(format!(
            "the authorization server {} offers no registration and no client id was configured",
            server.issuer
        )));
    };
    register(http, facts, server, endpoint).await
}

/// Dynamic client registration (RFC 7591) at `endpoint`.
async fn register(
    http: &Http,
    facts: &ClientFacts<'_>,
    server: &ServerMetadata,
    endpoint: &str,
) -> Result<ClientIdentity, OAuthError> {
    // A native application cannot keep a secret: a public client when the
    // server allows one.
    let method = if server.accepts_auth_method("none") {
        "none"
    } else {
        secret_method(server)
    };
    let mut request = json!({
        "client_name": facts.client_name,
        "grant_types": facts.grant_types,
        "token_endpoint_auth_method": method,
    });
    if let Some(redirect_uri) = facts.redirect_uri {
        request["redirect_uris"] = json!([redirect_uri]);
        request["response_types"] = json!(["code"]);
        request["application_type"] = json!("native");
    }
    let reply = http.post_json(endpoint, &request).await?;
    let doc = reply.json().ok();
    if !reply.status.is_success() {
        let code = doc
            .as_ref()
            .and_then(|d| d.get("error"))
            .and_then(Value::as_str)
            .map(str::to_string);
        return Err(OAuthError::registration(format!(
            "registration at {endpoint} was refused: HTTP {}",
            reply.status
        ))
        .with_code(code));
    }
    let doc = doc.ok_or_else(|| {
        OAuthError::registration(format!(
            "registration at {endpoint}: the answer is not a JSON object"
        ))
    })?;
    let client_id = doc
        .get("client_id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            OAuthError::registration(format!(
                "registration at {endpoint}: no `client_id` in the answer"
            ))
        })?;
    let client_secret = doc
        .get("client_secret")
        .and_then(Value::as_str)
        .map(str::to_string);
    let auth_method = doc
        .get("token_endpoint_auth_method")
        .and_then(Value::as_str)
        .map(str::to_string)
        // Not said: the method asked for stands.
        .unwrap_or_else(|| method.to_string());
    Ok(ClientIdentity {
        client_id: client_id.to_string(),
        client_secret,
        auth_method,
    })
}
