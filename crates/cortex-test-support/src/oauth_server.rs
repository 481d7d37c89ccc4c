//! An OAuth authorization server and an MCP server that wants its tokens,
//! on one loopback origin: discovery metadata (RFC 9728 and RFC 8414),
//! dynamic registration, the code flow with PKCE checked for real, refresh
//! and client credentials (client `machine`, secret `s3cret`), and
//! `insufficient_scope` for step-up.
//!
//! Shared so that the client library's OAuth tests and `cortex login` meet
//! the same server: a login that passes there passes against a server that
//! verifies the PKCE verifier and the RFC 8707 resource, not one that
//! approves whatever it is sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};
use sha2::Digest as _;

/// What the servers saw, and how they behave (set before they start).
pub struct Seen {
    /// `http://127.0.0.1:PORT`, the origin of both servers.
    pub base: String,
    /// `expires_in` of the tokens issued.
    pub expires_in: u64,
    /// Serve broken authorization server metadata.
    pub broken_metadata: bool,
    /// Leave PKCE out of the metadata.
    pub no_pkce: bool,
    /// The tools the MCP server lists; calling `write` needs the `write`
    /// scope, any other tool `read`.
    pub tools: Vec<&'static str>,
    /// Dynamic client registrations.
    pub registrations: usize,
    /// The query of each authorization request.
    pub authorizations: Vec<HashMap<String, String>>,
    /// `grant_type` of each token request.
    pub grants: Vec<String>,
    /// Issued access tokens and their scopes.
    pub tokens: HashMap<String, String>,
    /// Issued refresh tokens and their scopes.
    pub refresh_tokens: HashMap<String, String>,
    /// Authorization code -> (PKCE challenge, scope).
    codes: HashMap<String, (String, String)>,
    /// Bearer tokens the MCP server accepted.
    pub accepted: Vec<String>,
    /// Numbers the codes and tokens issued (`code-1`, `access-2`, ...).
    next: usize,
}

impl Default for Seen {
    fn default() -> Self {
        Self {
            base: String::new(),
            expires_in: 3600,
            broken_metadata: false,
            no_pkce: false,
            tools: vec!["read", "write"],
            registrations: 0,
            authorizations: Vec::new(),
            grants: Vec::new(),
            tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            codes: HashMap::new(),
            accepted: Vec::new(),
            next: 0,
        }
    }
}

/// The servers' state, shared with the test.
pub type Shared = Arc<Mutex<Seen>>;

/// Locks the state; a handler that panicked on an assertion does not
/// poison it for the test that reads it next.
pub fn seen(state: &Shared) -> MutexGuard<'_, Seen> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the servers on a free loopback port, behaving as `configure`
/// says; they run until the test's runtime ends. Their base URL (the MCP
/// server is at `{base}/mcp`) and state.
pub async fn start(configure: impl FnOnce(&mut Seen)) -> (String, Shared) {
    let state: Shared = Arc::default();
    configure(&mut seen(&state));
    let app = Router::new()
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(resource_metadata),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(server_metadata),
        )
        .route("/register", post(register))
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .route("/mcp", post(mcp))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind loopback: {e}"));
    let base = format!(
        "http://{}",
        listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local addr: {e}"))
    );
    seen(&state).base = base.clone();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, state)
}

async fn resource_metadata(State(state): State<Shared>) -> Response {
    let base = seen(&state).base.clone();
    axum::Json(json!({
        "resource": format!("{base}/mcp"),
        "authorization_servers": [base],
        "scopes_supported": ["read"],
    }))
    .into_response()
}

async fn server_metadata(State(state): State<Shared>) -> Response {
    let seen = seen(&state);
    if seen.broken_metadata {
        return (StatusCode::OK, "<html>not metadata</html>").into_response();
    }
    let base = &seen.base;
    let mut doc = json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "registration_endpoint": format!("{base}/register"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic"],
        "code_challenge_methods_supported": ["S256"],
    });
    if seen.no_pkce {
        doc.as_object_mut()
            .map(|d| d.remove("code_challenge_methods_supported"));
    }
    axum::Json(doc).into_response()
}

async fn register(State(state): State<Shared>, body: String) -> Response {
    let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let mut seen = seen(&state);
    seen.registrations += 1;
    assert_eq!(request["token_endpoint_auth_method"], "none");
    assert!(request["redirect_uris"][0].is_string());
    (
        StatusCode::CREATED,
        axum::Json(json!({"client_id": format!("client-{}", seen.registrations)})),
    )
        .into_response()
}

/// Approves at once: redirects to the client's `redirect_uri` with a code.
async fn authorize(
    State(state): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut seen = seen(&state);
    assert_eq!(
        query.get("code_challenge_method").map(String::as_str),
        Some("S256")
    );
    seen.next += 1;
    let code = format!("code-{}", seen.next);
    let challenge = query.get("code_challenge").cloned().unwrap_or_default();
    let scope = query.get("scope").cloned().unwrap_or_default();
    seen.codes.insert(code.clone(), (challenge, scope));
    seen.authorizations.push(query.clone());
    let redirect = format!(
        "{}?code={code}&state={}",
        query.get("redirect_uri").cloned().unwrap_or_default(),
        query.get("state").cloned().unwrap_or_default()
    );
    (StatusCode::FOUND, [(header::LOCATION, redirect)]).into_response()
}

fn form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

fn token_error(code: &str) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({"error": code}))).into_response()
}

async fn token(State(state): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let form = form(&body);
    let mut seen = seen(&state);
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    seen.grants.push(grant.clone());
    let scope = match grant.as_str() {
        "authorization_code" => {
            let Some((challenge, scope)) = form.get("code").and_then(|c| seen.codes.remove(c))
            else {
                return token_error("invalid_grant");
            };
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(verifier.as_bytes()));
            if computed != challenge {
                return token_error("invalid_grant");
            }
            if form.get("resource") != Some(&format!("{}/mcp", seen.base)) {
                return token_error("invalid_target");
            }
            scope
        }
        "refresh_token" => {
            match form
                .get("refresh_token")
                .and_then(|r| seen.refresh_tokens.get(r).cloned())
            {
                Some(scope) => scope,
                None => return token_error("invalid_grant"),
            }
        }
        "client_credentials" => {
            // The one confidential client: `machine`, secret `s3cret`.
            let expected = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("machine:s3cret")
            );
            if headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                != Some(expected.as_str())
            {
                return (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"error": "invalid_client"})),
                )
                    .into_response();
            }
            form.get("scope").cloned().unwrap_or_default()
        }
        _ => return token_error("unsupported_grant_type"),
    };
    seen.next += 1;
    let access = format!("access-{}", seen.next);
    let refresh = format!("refresh-{}", seen.next);
    seen.tokens.insert(access.clone(), scope.clone());
    seen.refresh_tokens.insert(refresh.clone(), scope.clone());
    axum::Json(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": seen.expires_in,
        "refresh_token": refresh,
        "scope": scope,
    }))
    .into_response()
}

/// A stateless MCP server that wants a token with `read`, and `write`
/// for tools/call of `write`.
async fn mcp(State(state): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let message: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let method = message["method"].as_str().unwrap_or_default().to_string();
    let mut seen = seen(&state);
    let metadata = format!("{}/.well-known/oauth-protected-resource/mcp", seen.base);
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let Some(scope) = bearer.as_ref().and_then(|t| seen.tokens.get(t).cloned()) else {
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                format!(r#"Bearer error="invalid_token", resource_metadata="{metadata}""#),
            )],
        )
            .into_response();
    };
    if method == "tools/call"
        && message["params"]["name"] == "write"
        && !scope.split(' ').any(|s| s == "write")
    {
        return (
            StatusCode::FORBIDDEN,
            [(
                header::WWW_AUTHENTICATE,
                format!(
                    r#"Bearer error="insufficient_scope", scope="read write", resource_metadata="{metadata}""#
                ),
            )],
        )
            .into_response();
    }
    seen.accepted.extend(bearer);
    if message.get("id").is_none() {
        return StatusCode::ACCEPTED.into_response();
    }
    let result = match method.as_str() {
        "initialize" => json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "oauth-test", "version": "1"},
        }),
        "tools/list" => {
            let tools: Vec<Value> = seen
                .tools
                .iter()
                .map(|name| json!({"name": name, "inputSchema": {"type": "object"}}))
                .collect();
            json!({ "tools": tools })
        }
        "tools/call" => json!({"content": [{"type": "text", "text": "done"}]}),
        _ => json!({}),
    };
    axum::Json(json!({"jsonrpc": "2.0", "id": message["id"], "result": result})).into_response()
}
