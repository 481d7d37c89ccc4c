//! The HTTP side of authentication: the layer in front of every route, its
//! challenges (RFC 6750), and the protected-resource metadata (RFC 9728).
//!
//! The layer is on the path of every request, so what it does for a
//! request that passes is kept to the token check itself: it is a tower
//! service of its own rather than `axum::middleware::from_fn`, which boxes
//! the inner service and takes the request apart and back together for
//! every request; and a challenge header, needed only for a `401`, is made
//! only when one goes out.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cortex_proto::ErrorCode;
use futures::future::BoxFuture;
use pin_project_lite::pin_project;
use serde_json::json;
use tokio::task::futures::TaskLocalFuture;

use super::{ADMIN_ROLE, AuthConfig, AuthError, Caller, METRICS_ROLE, serve_as};
use crate::error::ServiceError;

/// Where the protected-resource metadata is served (RFC 9728 §3).
pub(crate) const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The metadata of `/mcp` itself, at the path-suffixed well-known URL that
/// MCP hosts try when a challenge names none (RFC 9728 §3.1).
const MCP_METADATA_PATH: &str = "/.well-known/oauth-protected-resource/mcp";

pub(crate) struct Gate {
    auth: AuthConfig,
    /// The service's name: the challenge's realm and the metadata's
    /// `resource_name`.
    realm: String,
    /// `https` when the service is served over TLS, else `http`: the
    /// scheme of the default resource URL.
    scheme: &'static str,
}

/// Puts the auth layer in front of every route of `router` and adds the
/// protected-resource metadata; returns `router` unchanged when `auth` is
/// off. `tls`: the service is served over TLS. Call it after every route
/// and fallback is added: a layer covers only what is already there.
pub(crate) fn protect<S>(
    router: Router<S>,
    auth: &AuthConfig,
    service: &str,
    tls: bool,
) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    if !auth.is_enabled() {
        return router;
    }
    let gate = Arc::new(Gate {
        auth: auth.clone(),
        realm: service.to_string(),
        scheme: if tls { "https" } else { "http" },
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
        .layer(AuthLayer(gate))
}

/// [`protect`] as a step of a router's builder chain.
pub(crate) trait Protect {
    /// See [`protect`].
    fn protected_by(self, auth: &AuthConfig, service: &str, tls: bool) -> Self;
}

impl<S> Protect for Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    fn protected_by(self, auth: &AuthConfig, service: &str, tls: bool) -> Self {
        protect(self, auth, service, tls)
    }
}

/// The auth layer: [`Authenticate`] around each route.
#[derive(Clone)]
struct AuthLayer(Arc<Gate>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            gate: self.0.clone(),
            inner,
        }
    }
}

/// Lets a request through to `inner` as its verified caller, or answers it
/// with a challenge.
#[derive(Clone)]
struct Authenticate<S> {
    gate: Arc<Gate>,
    inner: S,
}

impl<S> tower::Service<Request> for Authenticate<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Authenticated<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let path = request.uri().path();
        if self.gate.is_open(request.method(), path) {
            return Authenticated::Open {
                inner: self.inner.call(request),
            };
        }
        // A token verified lately (a client reusing its token, the usual
        // case) is known at once: the request goes straight in, with no
        // future of its own to allocate and no clone of the inner service.
        let values = request.headers().get_all(header::AUTHORIZATION);
        let mut each = values.iter();
        if let (Some(value), None) = (each.next(), each.next())
            && let Some(caller) = self.gate.auth.remembered(value)
            && (path != "/metrics" || may_read_metrics(&caller))
        {
            return self.serve(caller, request);
        }
        // Everything else (a token seen for the first time, a JWKS that
        // may need fetching, a refusal) is checked in full. The service
        // that was made ready serves the request; a clone takes its place
        // for the next (tower's usual move).
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        Authenticated::Checking {
            check: Box::pin(authenticate(self.gate.clone(), inner, request)),
        }
    }
}

impl<S> Authenticate<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    /// `request` served by `inner` as `caller`'s.
    fn serve(&mut self, caller: Caller, request: Request) -> Authenticated<S::Future> {
        // Kept for a challenge on a 401 from further in (a handle on the
        // request's buffer, not a copy); the challenge is made only then.
        let host = request.headers().get(header::HOST).cloned();
        Authenticated::Serving {
            inner: serve_as(caller, self.inner.call(request)),
            gate: self.gate.clone(),
            host,
        }
    }
}

fn may_read_metrics(caller: &Caller) -> bool {
    caller.has_role(ADMIN_ROLE) || caller.has_role(METRICS_ROLE)
}

pin_project! {
    /// The response of [`Authenticate`]: an open route's, a verified
    /// caller's, or that of a full check (boxed: it may wait on a JWKS
    /// fetch, and is rare once a client's token is known).
    #[project = AuthenticatedProj]
    pub(crate) enum Authenticated<F> {
        Open { #[pin] inner: F },
        Serving {
            #[pin]
            inner: TaskLocalFuture<Caller, F>,
            gate: Arc<Gate>,
            host: Option<HeaderValue>,
        },
        Checking { check: BoxFuture<'static, Result<Response, Infallible>> },
    }
}

impl<F> Future for Authenticated<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AuthenticatedProj::Open { inner } => inner.poll(cx),
            AuthenticatedProj::Serving { inner, gate, host } => {
                let Ok(response) = std::task::ready!(inner.poll(cx));
                Poll::Ready(Ok(gate.challenge_inner_refusal(response, host.as_ref())))
            }
            AuthenticatedProj::Checking { check } => check.as_mut().poll(cx),
        }
    }
}

async fn authenticate<S>(
    gate: Arc<Gate>,
    mut inner: S,
    request: Request,
) -> Result<Response, Infallible>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    let path = request.uri().path();
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
        Ok(None) => return inner.call(request).await,
        Err(error) => {
            tracing::debug!(%error, path, "request refused: no valid token");
            return Ok(gate.refuse(&error, request.headers()));
        }
    };
    if metrics && !may_read_metrics(&caller) {
        return Ok(gate.forbidden_metrics(request.headers()));
    }
    let host = request.headers().get(header::HOST).cloned();
    let response = serve_as(caller, inner.call(request)).await?;
    Ok(gate.challenge_inner_refusal(response, host.as_ref()))
}

impl Gate {
    /// A 401 from further in (a dependency refusing the forwarded token)
    /// still tells the client how to authenticate.
    fn challenge_inner_refusal(
        &self,
        mut response: Response,
        host: Option<&HeaderValue>,
    ) -> Response {
        if response.status() == StatusCode::UNAUTHORIZED
            && !response.headers().contains_key(header::WWW_AUTHENTICATE)
            && let Some(challenge) = self.challenge(Some("invalid_token"), None, host)
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }

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
    /// configured resource, else `http://` (`https://` over TLS) and the
    /// request's `Host`.
    fn base_url(&self, host: Option<&HeaderValue>) -> String {
        if let Some(resource) = &self.auth.resource {
            return resource.clone();
        }
        let host = host
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.parse::<http::uri::Authority>().ok())
            .filter(|a| !a.as_str().contains('@'))
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|| "localhost".into());
        format!("{}://{host}", self.scheme)
    }

    /// `WWW-Authenticate: Bearer realm=…, error=…, error_description=…,
    /// resource_metadata=…`.
    fn challenge(
        &self,
        error: Option<&str>,
        description: Option<&str>,
        host: Option<&HeaderValue>,
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
            quoted(&self.base_url(host))
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
                if let Some(challenge) = self.challenge(
                    error.challenge_code(),
                    description.as_deref(),
                    headers.get(header::HOST),
                ) {
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
        if let Some(challenge) = self.challenge(
            Some("insufficient_scope"),
            Some(message),
            headers.get(header::HOST),
        ) {
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
            "resource": format!("{}{suffix}", self.base_url(headers.get(header::HOST))),
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
