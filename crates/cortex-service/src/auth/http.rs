//! The HTTP side of authentication: the layer in front of every route, its
//! challenges (RFC 6750), and the protected-resource metadata (RFC 9728).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cortex_proto::ErrorCode;
use serde_json::json;

use super::{ADMIN_ROLE, AuthConfig, AuthError, METRICS_ROLE, serve_as};
use crate::error::ServiceError;

/// Where the protected-resource metadata is served (RFC 9728 §3).
pub(crate) const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The metadata of `/mcp` itself, at the path-suffixed well-known URL that
/// MCP hosts try when a challenge names none (RFC 9728 §3.1).
const MCP_METADATA_PATH: &str = "/.well-known/oauth-protected-resource/mcp";

struct Gate {
    auth: AuthConfig,
    /// The service's name: the challenge's realm and the metadata's
    /// `resource_name`.
    realm: String,
}

/// Puts the auth layer in front of every route of `router` and adds the
/// protected-resource metadata; returns `router` unchanged when `auth` is
/// off. Call it after every route and fallback is added: a layer covers
/// only what is already there.
pub(crate) fn protect<S>(router: Router<S>, auth: &AuthConfig, service: &str) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    if !auth.is_enabled() {
        return router;
    }
    let gate = Arc::new(Gate {
        auth: auth.clone(),
        realm: service.to_string(),
    });
    let (root, mcp) = (gate.clone(), gate.clone());
    router
        .route(
            METADATA_PATH,
            get(move |headers: HeaderMap| async move { root.metadata(&headers, "") }),
        )
        .route(
            MCP_METADATA_PATH,
            get(move |headers: HeaderMap| async move { mcp.metadata(&headers, crate::paths::MCP_PATH) }),
        )
        .layer(middleware::from_fn_with_state(gate, authenticate))
}

/// [`protect`] as a step of a router's builder chain.
pub(crate) trait Protect {
    /// See [`protect`].
    fn protected_by(self, auth: &AuthConfig, service: &str) -> Self;
}

impl<S> Protect for Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    fn protected_by(self, auth: &AuthConfig, service: &str) -> Self {
        protect(self, auth, service)
    }
}

/// Lets a request through as its verified caller, or answers it with a
/// challenge.
async fn authenticate(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if gate.is_open(request.method(), path) {
        return next.run(request).await;
    }
    let metrics = path == "/metrics";
    let mut values = request.headers().get_all(header::AUTHORIZATION).iter();
    let first = values.next();
    let verified = if values.next().is_some() {
        // Two credentials: which one counts would be a guess.
        Err(AuthError::Malformed(
            "the request has more than one Authorization header".into(),
        ))
    } else {
        gate.auth.verify(first).await
    };
    let caller = match verified {
        Ok(Some(caller)) => caller,
        Ok(None) => return next.run(request).await,
        Err(error) => {
            tracing::debug!(%error, path, "request refused: no valid token");
            return gate.refuse(&error, request.headers());
        }
    };
    if metrics && !(caller.has_role(ADMIN_ROLE) || caller.has_role(METRICS_ROLE)) {
        return gate.forbidden_metrics(request.headers());
    }
    let challenge = gate.challenge(Some("invalid_token"), None, request.headers());
    let mut response = serve_as(caller, next.run(request)).await;
    // A 401 from further in (a dependency refusing the forwarded token)
    // still tells the client how to authenticate.
    if response.status() == StatusCode::UNAUTHORIZED
        && !response.headers().contains_key(header::WWW_AUTHENTICATE)
        && let Some(challenge) = challenge
    {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge);
    }
    response
}

impl Gate {
    /// Routes served without a token: health (for load balancers and
    /// orchestrators), the metadata that says how to get a token, CORS
    /// preflights of `/mcp` (browsers send them without credentials), and
    /// `/metrics` when configured open.
    fn is_open(&self, method: &Method, path: &str) -> bool {
        path == "/health"
            || path == METADATA_PATH
            || path == MCP_METADATA_PATH
            || (path == "/metrics" && self.auth.open_metrics())
            || (method == Method::OPTIONS && path == crate::paths::MCP_PATH)
    }

    /// The base URL of this service as the client reached it: the
    /// configured resource, else `http://` and the request's `Host`.
    fn base_url(&self, headers: &HeaderMap) -> String {
        if let Some(resource) = &self.auth.resource {
            return resource.clone();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.parse::<http::uri::Authority>().ok())
            .filter(|a| !a.as_str().contains('@'))
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|| "localhost".into());
        format!("http://{host}")
    }

    /// `WWW-Authenticate: Bearer realm=…, error=…, error_description=…,
    /// resource_metadata=…`.
    fn challenge(
        &self,
        error: Option<&str>,
        description: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<HeaderValue> {
        let mut text = format!("Bearer realm=\"{}\"", quoted(&self.realm));
        if let Some(error) = error {
            text.push_str(&format!(", error=\"{error}\""));
        }
        if let Some(description) = description {
            text.push_str(&format!(", error_description=\"{}\"", quoted(description)));
        }
        text.push_str(&format!(
            ", resource_metadata=\"{}{METADATA_PATH}\"",
            quoted(&self.base_url(headers))
        ));
        HeaderValue::from_str(&text).ok()
    }

    fn refuse(&self, error: &AuthError, headers: &HeaderMap) -> Response {
        let mut response = error.service_error().into_response();
        match error {
            AuthError::KeysUnavailable(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {
                let description = (error != &AuthError::Missing).then(|| error.to_string());
                if let Some(challenge) =
                    self.challenge(error.challenge_code(), description.as_deref(), headers)
                {
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, challenge);
                }
            }
        }
        response
    }

    fn forbidden_metrics(&self, headers: &HeaderMap) -> Response {
        let message = "/metrics needs a token with the role `admin` or `metrics`";
        let mut response = ServiceError::new(ErrorCode::Forbidden, message).into_response();
        if let Some(challenge) = self.challenge(Some("insufficient_scope"), Some(message), headers)
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }

    /// The protected-resource metadata (RFC 9728 §2) of the resource at
    /// `suffix` under the base URL.
    fn metadata(&self, headers: &HeaderMap, suffix: &str) -> Response {
        let body = json!({
            "resource": format!("{}{suffix}", self.base_url(headers)),
            "authorization_servers": self.auth.authorization_servers,
            "bearer_methods_supported": ["header"],
            "resource_name": self.realm,
        });
        ([(header::CACHE_CONTROL, "no-cache")], axum::Json(body)).into_response()
    }
}

/// Text safe inside a quoted-string of a challenge (RFC 6750 §3: no `"`
/// or `\`, visible ASCII and spaces only).
fn quoted(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c == ' ' || c.is_ascii_graphic() => c,
            _ => '?',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_text_is_safe() {
        assert_eq!(quoted("a \"b\" \\ é\n"), "a 'b' ' ??");
    }
}
