//! Discovery: what a 401 says (`WWW-Authenticate`), the protected
//! resource's metadata (RFC 9728) and its authorization server's
//! (RFC 8414, OpenID Connect Discovery), in the order the MCP
//! authorization specification gives, with the 2025-03-26 fallbacks.

use serde_json::Value;

use super::error::OAuthError;
use super::http::Http;

/// What a `WWW-Authenticate: Bearer ...` challenge says.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Challenge {
    /// `error` (`invalid_token`, `insufficient_scope`).
    pub(crate) error: Option<String>,
    /// `scope`: the scopes the request needs, space-separated.
    pub(crate) scope: Option<String>,
    /// `resource_metadata`: where the protected resource metadata is.
    pub(crate) resource_metadata: Option<String>,
}

impl Challenge {
    /// The Bearer challenge of a `WWW-Authenticate` value (other schemes'
    /// parameters ignored); an empty one when there is none.
    pub(crate) fn parse(header: &str) -> Self {
        let mut out = Self::default();
        let mut in_bearer = false;
        let mut rest = header.trim();
        while !rest.is_empty() {
            // A scheme name starts a challenge: a token not followed by `=`.
            let token_end = rest
                .find(|c: char| c == '=' || c == ',' || c.is_whitespace())
                .unwrap_or(rest.len());
            let token = &rest[..token_end];
            let after = rest[token_end..].trim_start();
            if !token.is_empty() && !after.starts_with('=') {
                in_bearer = token.eq_ignore_ascii_case("bearer");
                rest = after.trim_start_matches(',').trim_start();
                continue;
            }
            if token.is_empty() {
                rest = after.trim_start_matches(',').trim_start();
                if token_end == 0 && !rest.is_empty() && rest.len() == after.len() {
                    rest = &rest[1..]; // skip a stray character
                }
                continue;
            }
            // name = value
            let value_text = after[1..].trim_start();
            let (value, remaining) = if let Some(quoted) = value_text.strip_prefix('"') {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, escaped)) = chars.next() {
                                value.push(escaped);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, &quoted[end.min(quoted.len())..])
            } else {
                let end = value_text.find(',').unwrap_or(value_text.len());
                (value_text[..end].trim().to_string(), &value_text[end..])
            };
            if in_bearer {
                match token.to_ascii_lowercase().as_str() {
                    "error" => out.error = Some(value),
                    "scope" => out.scope = Some(value),
                    "resource_metadata" => out.resource_metadata = Some(value),
                    _ => {}
                }
            }
            rest = remaining.trim_start().trim_start_matches(',').trim_start();
        }
        out
    }

    /// Whether it asks for more scopes (`error="insufficient_scope"`).
    pub(crate) fn insufficient_scope(&self) -> bool {
        self.error.as_deref() == Some("insufficient_scope")
    }
}

/// Protected resource metadata (RFC 9728), the fields used.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResourceMetadata {
    /// The resource identifier; checked against the server's URL.
    pub(crate) resource: Option<String>,
    /// Authorization server issuers; the first is used.
    pub(crate) authorization_servers: Vec<String>,
    pub(crate) scopes_supported: Option<Vec<String>>,
}

/// Authorization server metadata (RFC 8414), the fields used.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServerMetadata {
    pub(crate) issuer: String,
    pub(crate) authorization_endpoint: Option<String>,
    pub(crate) token_endpoint: String,
    pub(crate) registration_endpoint: Option<String>,
    pub(crate) scopes_supported: Option<Vec<String>>,
    /// `None` when the document omits it (then PKCE is not supported).
    pub(crate) code_challenge_methods_supported: Option<Vec<String>>,
    /// `None`: RFC 8414's default, `client_secret_basic`.
    pub(crate) token_endpoint_auth_methods_supported: Option<Vec<String>>,
    pub(crate) client_id_metadata_document_supported: bool,
    /// RFC 9207: the authorization response carries `iss`.
    pub(crate) authorization_response_iss_parameter_supported: bool,
    /// Whether the endpoints are the 2025-03-26 defaults, not a document.
    pub(crate) defaulted: bool,
}

impl ServerMetadata {
    /// The 2025-03-26 defaults for a server with no metadata: `/authorize`,
    /// `/token` and `/register` at `origin`.
    pub(crate) fn defaults(origin: &str) -> Self {
        Self {
            issuer: origin.to_string(),
            authorization_endpoint: Some(format!("{origin}/authorize")),
            token_endpoint: format!("{origin}/token"),
            registration_endpoint: Some(format!("{origin}/register")),
            scopes_supported: None,
            code_challenge_methods_supported: Some(vec!["S256".into()]),
            token_endpoint_auth_methods_supported: None,
            client_id_metadata_document_supported: false,
            authorization_response_iss_parameter_supported: false,
            defaulted: true,
        }
    }

    /// Whether the server supports PKCE with S256 (the MCP specification:
    /// a client must refuse to go on otherwise).
    pub(crate) fn supports_s256(&self) -> bool {
        self.code_challenge_methods_supported
            .as_ref()
            .is_some_and(|methods| methods.iter().any(|m| m == "S256"))
    }

    /// Whether the token endpoint accepts `method` (RFC 8414's default
    /// when the document lists none: `client_secret_basic`).
    pub(crate) fn accepts_auth_method(&self, method: &str) -> bool {
        match &self.token_endpoint_auth_methods_supported {
            Some(methods) => methods.iter().any(|m| m == method),
            None => method == "client_secret_basic",
        }
    }

    fn from_json(doc: &Value, url: &str) -> Result<Self, OAuthError> {
        let bad = |what: &str| OAuthError::metadata(format!("{url}: {what}"));
        let text = |key: &str| doc.get(key).and_then(Value::as_str).map(str::to_string);
        let issuer = text("issuer").ok_or_else(|| bad("no `issuer`"))?;
        let token_endpoint = text("token_endpoint").ok_or_else(|| bad("no `token_endpoint`"))?;
        for (key, value) in [
            ("token_endpoint", Some(&token_endpoint)),
            (
                "authorization_endpoint",
                text("authorization_endpoint").as_ref(),
            ),
            (
                "registration_endpoint",
                text("registration_endpoint").as_ref(),
            ),
        ] {
            if let Some(value) = value
                && !(value.starts_with("https://") || value.starts_with("http://"))
            {
                return Err(bad(&format!("`{key}` is not an absolute http(s) URL")));
            }
        }
        Ok(Self {
            issuer,
            authorization_endpoint: text("authorization_endpoint"),
            token_endpoint,
            registration_endpoint: text("registration_endpoint"),
            scopes_supported: strings(doc, "scopes_supported"),
            code_challenge_methods_supported: strings(doc, "code_challenge_methods_supported"),
            token_endpoint_auth_methods_supported: strings(
                doc,
                "token_endpoint_auth_methods_supported",
            ),
            client_id_metadata_document_supported: doc
                .get("client_id_metadata_document_supported")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            authorization_response_iss_parameter_supported: doc
                .get("authorization_response_iss_parameter_supported")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            defaulted: false,
        })
    }
}

/// An array of strings under `key`; `None` when absent or not one.
fn strings(doc: &Value, key: &str) -> Option<Vec<String>> {
    doc.get(key)?.as_array().map(|items| {
        items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    })
}

/// `scheme://authority` and the path (no query, no trailing `/`) of `url`.
pub(crate) fn split_url(url: &str) -> Result<(String, String), OAuthError> {
    let uri = http::Uri::try_from(url)
        .map_err(|e| OAuthError::config(format!("`{url}` is not a URL: {e}")))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(OAuthError::config(format!(
            "`{url}` is not an absolute URL"
        )));
    };
    let origin = format!(
        "{}://{}",
        scheme.to_ascii_lowercase(),
        authority.as_str().to_ascii_lowercase()
    );
    Ok((origin, uri.path().trim_end_matches('/').to_string()))
}

/// The canonical URI of the MCP server at `url` (the `resource` of RFC
/// 8707): lower-case scheme and host, the path, no query or fragment, no
/// trailing `/`.
pub(crate) fn canonical_resource(url: &str) -> Result<String, OAuthError> {
    let url = url.split('#').next().unwrap_or(url);
    let (origin, path) = split_url(url)?;
    Ok(format!("{origin}{path}"))
}

/// Whether the protected resource metadata's `resource` may stand for the
/// server at `server`: the same origin, and its path a prefix of the
/// server's, segment by segment.
pub(crate) fn resource_covers(resource: &str, server: &str) -> bool {
    let (Ok((r_origin, r_path)), Ok((s_origin, s_path))) = (split_url(resource), split_url(server))
    else {
        return false;
    };
    r_origin == s_origin
        && (r_path.is_empty() || s_path == r_path || s_path.starts_with(&format!("{r_path}/")))
}

/// Finds the protected resource metadata of the server at `server_url`:
/// the challenge's `resource_metadata` first, then the well-known URIs
/// (path-suffixed, then the root). `None`: the server publishes none (the
/// 2025-03-26 way). A document that is found but unusable is an error.
pub(crate) async fn discover_resource(
    http: &Http,
    server_url: &str,
    pointer: Option<&str>,
) -> Result<Option<(String, ResourceMetadata)>, OAuthError> {
    let (origin, path) = split_url(server_url)?;
    let mut candidates = Vec::new();
    if let Some(pointer) = pointer {
        candidates.push(pointer.to_string());
    }
    if !path.is_empty() {
        candidates.push(format!(
            "{origin}/.well-known/oauth-protected-resource{path}"
        ));
    }
    candidates.push(format!("{origin}/.well-known/oauth-protected-resource"));
    for url in candidates {
        let reply = http.get(&url).await?;
        if !reply.status.is_success() {
            tracing::debug!(%url, status = %reply.status, "no protected resource metadata here");
            continue;
        }
        let doc = reply
            .json()
            .map_err(|e| OAuthError::metadata(format!("{url}: {e}")))?;
        let servers = strings(&doc, "authorization_servers").unwrap_or_default();
        if servers.is_empty() {
            return Err(OAuthError::metadata(format!(
                "{url}: no `authorization_servers`"
            )));
        }
        let metadata = ResourceMetadata {
            resource: doc
                .get("resource")
                .and_then(Value::as_str)
                .map(str::to_string),
            authorization_servers: servers,
            scopes_supported: strings(&doc, "scopes_supported"),
        };
        if let Some(resource) = &metadata.resource
            && !resource_covers(resource, server_url)
        {
            return Err(OAuthError::metadata(format!(
                "{url}: its `resource` {resource} is not the server {server_url}"
            )));
        }
        return Ok(Some((url, metadata)));
    }
    Ok(None)
}

/// The metadata URLs of the authorization server `issuer`, in the MCP
/// specification's order: RFC 8414 with the path inserted, OpenID Connect
/// with the path inserted, OpenID Connect with the path appended; for an
/// issuer without a path, RFC 8414 then OpenID Connect at the root.
pub(crate) fn server_metadata_urls(issuer: &str) -> Result<Vec<String>, OAuthError> {
    let (origin, path) = split_url(issuer)?;
    Ok(if path.is_empty() {
        vec![
            format!("{origin}/.well-known/oauth-authorization-server"),
            format!("{origin}/.well-known/openid-configuration"),
        ]
    } else {
        vec![
            format!("{origin}/.well-known/oauth-authorization-server{path}"),
            format!("{origin}/.well-known/openid-configuration{path}"),
            format!("{origin}{path}/.well-known/openid-configuration"),
        ]
    })
}

/// The metadata of the authorization server `issuer`. `strict`: its
/// `issuer` must be the one asked for (RFC 8414 §3.3); the 2025-03-26
/// fallback (the MCP server's origin taken as the authorization server)
/// is not strict. `None`: no document at any of the URLs.
pub(crate) async fn discover_server(
    http: &Http,
    issuer: &str,
    strict: bool,
) -> Result<Option<ServerMetadata>, OAuthError> {
    for url in server_metadata_urls(issuer)? {
        let reply = http.get(&url).await?;
        if !reply.status.is_success() {
            tracing::debug!(%url, status = %reply.status, "no authorization server metadata here");
            continue;
        }
        let doc = reply
            .json()
            .map_err(|e| OAuthError::metadata(format!("{url}: {e}")))?;
        let metadata = ServerMetadata::from_json(&doc, &url)?;
        if strict && metadata.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(OAuthError::metadata(format!(
                "{url}: its `issuer` {} is not {issuer}",
                metadata.issuer
            )));
        }
        return Ok(Some(metadata));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges() {
        let c = Challenge::parse(
            r#"Bearer error="insufficient_scope", scope="mcp:basic mcp:write", resource_metadata="http://h/.well-known/oauth-protected-resource/mcp""#,
        );
        assert!(c.insufficient_scope());
        assert_eq!(c.scope.as_deref(), Some("mcp:basic mcp:write"));
        assert_eq!(
            c.resource_metadata.as_deref(),
            Some("http://h/.well-known/oauth-protected-resource/mcp")
        );
        let other = Challenge::parse(r#"Basic realm="x", Bearer scope=read, error="a\"b""#);
        assert_eq!(other.scope.as_deref(), Some("read"));
        assert_eq!(other.error.as_deref(), Some("a\"b"));
        assert_eq!(Challenge::parse("Bearer"), Challenge::default());
        assert_eq!(Challenge::parse(r#"Basic realm="r""#), Challenge::default());
    }

    #[test]
    fn well_known_urls() {
        assert_eq!(
            server_metadata_urls("https://a.example/tenant1").unwrap_or_default(),
            [
                "https://a.example/.well-known/oauth-authorization-server/tenant1",
                "https://a.example/.well-known/openid-configuration/tenant1",
                "https://a.example/tenant1/.well-known/openid-configuration",
            ]
        );
        assert_eq!(
            server_metadata_urls("https://a.example/").unwrap_or_default(),
            [
                "https://a.example/.well-known/oauth-authorization-server",
                "https://a.example/.well-known/openid-configuration",
            ]
        );
    }

    #[test]
    fn resources() {
        assert_eq!(
            canonical_resource("HTTPS://Mcp.Example.com/mcp/#frag").unwrap_or_default(),
            "https://mcp.example.com/mcp"
        );
        assert!(resource_covers("http://h:1/mcp", "http://h:1/mcp"));
        assert!(resource_covers("http://h:1", "http://h:1/mcp"));
        assert!(!resource_covers("http://h:1/mc", "http://h:1/mcp"));
        assert!(!resource_covers(
            "https://evil.example.com/mcp",
            "http://h:1/mcp"
        ));
    }
}
