//! OAuth against a real authorization server and MCP server on loopback,
//! written here: discovery, the code flow with PKCE, registration, one
//! authorization for many refused calls, refresh, step-up, client
//! credentials, the token file, and bad metadata as a typed error.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use cortex_client::discovery::Protocol;
use cortex_client::oauth::{
    FileTokenStore, FollowRedirect, Grant, OAuth, OAuthConfig, OAuthError, OAuthErrorKind,
    TokenStore,
};
use cortex_client::{
    ClientConfig, Endpoint, McpClient, McpError, NetworkMcpClient, StaticDiscovery,
};
use serde_json::{Value, json};
use sha2::Digest as _;

/// What the servers saw, and how they behave.
#[derive(Default)]
struct Seen {
    base: String,
    /// `expires_in` of the tokens issued.
    expires_in: u64,
    /// Serve broken authorization server metadata.
    broken_metadata: bool,
    /// Leave PKCE out of the metadata.
    no_pkce: bool,
    registrations: usize,
    authorizations: Vec<HashMap<String, String>>,
    /// `grant_type` of each token request.
    grants: Vec<String>,
    /// Issued access tokens and their scopes.
    tokens: HashMap<String, String>,
    refresh_tokens: HashMap<String, String>,
    /// Authorization code -> (PKCE challenge, scope).
    codes: HashMap<String, (String, String)>,
    /// Bearer tokens the MCP server accepted.
    accepted: Vec<String>,
    next: usize,
}

type Shared = Arc<Mutex<Seen>>;

fn seen(state: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    state.lock().unwrap_or_else(|p| p.into_inner())
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
        "tools/list" => json!({"tools": [
            {"name": "read", "inputSchema": {"type": "object"}},
            {"name": "write", "inputSchema": {"type": "object"}},
        ]}),
        "tools/call" => json!({"content": [{"type": "text", "text": "done"}]}),
        _ => json!({}),
    };
    axum::Json(json!({"jsonrpc": "2.0", "id": message["id"], "result": result})).into_response()
}

/// The servers, on one loopback origin; their state.
async fn servers(configure: impl FnOnce(&mut Seen)) -> (String, Shared) {
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
    let base = common::serve(app).await;
    {
        let mut seen = seen(&state);
        seen.base = base.clone();
        if seen.expires_in == 0 {
            seen.expires_in = 3600;
        }
    }
    (base, state)
}

fn client(base: &str, oauth: OAuth) -> NetworkMcpClient {
    let discovery = StaticDiscovery::new();
    discovery.register(
        "remote",
        vec![Endpoint::new(format!("{base}/mcp")).with_protocol(Protocol::Mcp)],
    );
    let config = common::fast_config()
        .build()
        .unwrap_or_else(|e| panic!("config: {e}"));
    NetworkMcpClient::builder(Arc::new(discovery))
        .config(config)
        .oauth("remote", Arc::new(oauth))
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"))
}

fn code_flow() -> OAuth {
    OAuth::new(OAuthConfig::default())
        .with_handler(Arc::new(FollowRedirect::new("http://127.0.0.1:9/callback")))
}

fn oauth_error(error: &McpError) -> &OAuthError {
    std::error::Error::source(error)
        .and_then(|cause| cause.downcast_ref::<OAuthError>())
        .unwrap_or_else(|| panic!("no OAuth error under {error:?}"))
}

#[tokio::test]
async fn a_401_discovers_registers_authorizes_with_pkce_and_retries() {
    let (base, state) = servers(|_| {}).await;
    let client = client(&base, code_flow());
    let result = client
        .call_tool("remote", "read", json!({}))
        .await
        .unwrap_or_else(|e| panic!("call: {e}"));
    assert!(result.to_string().contains("done"), "{result}");
    let seen = seen(&state);
    assert_eq!(seen.registrations, 1, "registered dynamically once");
    assert_eq!(seen.authorizations.len(), 1);
    let request = &seen.authorizations[0];
    // RFC 8707 resource, and the resource metadata's scopes.
    assert_eq!(request["resource"], format!("{base}/mcp"));
    assert_eq!(request["scope"], "read");
    assert_eq!(request["client_id"], "client-1");
    assert_eq!(
        seen.grants,
        ["authorization_code"],
        "PKCE verified at /token"
    );
    assert!(seen.accepted.iter().all(|t| t == "access-2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_refused_together_share_one_authorization() {
    let (base, state) = servers(|_| {}).await;
    let client = client(&base, code_flow());
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.call_tool("remote", "read", json!({})).await })
        })
        .collect();
    for call in calls {
        call.await
            .unwrap_or_else(|e| panic!("join: {e}"))
            .unwrap_or_else(|e| panic!("call: {e}"));
    }
    let seen = seen(&state);
    assert_eq!(seen.authorizations.len(), 1, "single flight");
    assert_eq!(seen.registrations, 1);
}

#[tokio::test]
async fn a_token_about_to_expire_is_refreshed_before_it_is_sent() {
    // Tokens live 5 s, under the 60 s refresh margin: each later call
    // refreshes first.
    let (base, state) = servers(|s| s.expires_in = 5).await;
    let client = client(&base, code_flow());
    for _ in 0..3 {
        client
            .call_tool("remote", "read", json!({}))
            .await
            .unwrap_or_else(|e| panic!("call: {e}"));
    }
    let seen = seen(&state);
    assert_eq!(seen.authorizations.len(), 1, "no second authorization");
    assert!(
        seen.grants.iter().filter(|g| *g == "refresh_token").count() >= 2,
        "grants: {:?}",
        seen.grants
    );
    let last = seen.accepted.last().cloned().unwrap_or_default();
    assert_ne!(last, "access-2", "the refreshed token was sent");
}

#[tokio::test]
async fn insufficient_scope_steps_up_once() {
    let (base, state) = servers(|_| {}).await;
    let client = client(&base, code_flow());
    client
        .call_tool("remote", "read", json!({}))
        .await
        .unwrap_or_else(|e| panic!("read: {e}"));
    client
        .call_tool("remote", "write", json!({}))
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    let seen = seen(&state);
    assert_eq!(seen.authorizations.len(), 2);
    assert_eq!(seen.authorizations[1]["scope"], "read write");
    assert_eq!(seen.registrations, 1, "the registration is reused");
}

#[tokio::test]
async fn client_credentials_with_a_secret() {
    let (base, state) = servers(|_| {}).await;
    let oauth = OAuth::new(OAuthConfig {
        grant: Grant::ClientCredentials,
        client_id: Some("machine".into()),
        client_secret: Some("s3cret".into()),
        ..OAuthConfig::default()
    });
    let client = client(&base, oauth);
    client
        .call_tool("remote", "read", json!({}))
        .await
        .unwrap_or_else(|e| panic!("call: {e}"));
    let seen = seen(&state);
    assert_eq!(seen.grants, ["client_credentials"]);
    assert!(seen.authorizations.is_empty() && seen.registrations == 0);
}

#[cfg(unix)]
#[tokio::test]
async fn tokens_are_kept_in_a_private_file_and_reused() {
    use std::os::unix::fs::PermissionsExt as _;
    let (base, state) = servers(|_| {}).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let path = dir.path().join("oauth").join("tokens.json");
    let store = Arc::new(FileTokenStore::new(&path));
    let client1 = client(&base, code_flow().with_store(store.clone()));
    client1
        .call_tool("remote", "read", json!({}))
        .await
        .unwrap_or_else(|e| panic!("call: {e}"));
    let mode = std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("metadata: {e}"))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let kept = store
        .load(&format!("{base}/mcp"))
        .unwrap_or_else(|e| panic!("load: {e}"))
        .unwrap_or_else(|| panic!("no token kept"));
    assert_eq!(kept.issuer, base);
    assert!(
        !format!("{kept:?}").contains(&kept.access_token),
        "Debug redacts"
    );

    // Another client on the same file, with no way to ask a person, uses it.
    let oauth = OAuth::new(OAuthConfig::default()).with_store(Arc::new(FileTokenStore::new(&path)));
    let client2 = client(&base, oauth);
    client2
        .call_tool("remote", "read", json!({}))
        .await
        .unwrap_or_else(|e| panic!("call with the kept token: {e}"));
    assert_eq!(seen(&state).authorizations.len(), 1);
}

#[tokio::test]
async fn bad_metadata_is_a_typed_error() {
    let (base, state) = servers(|s| s.broken_metadata = true).await;
    let client = client(&base, code_flow());
    let error = client
        .call_tool("remote", "read", json!({}))
        .await
        .err()
        .unwrap_or_else(|| panic!("a call with broken metadata succeeded"));
    assert!(error.is_auth(), "{error:?}");
    assert!(matches!(error, McpError::Auth { .. }));
    assert_eq!(oauth_error(&error).kind(), OAuthErrorKind::Metadata);
    assert!(seen(&state).authorizations.is_empty());
}

#[tokio::test]
async fn a_server_without_pkce_s256_is_refused() {
    let (base, state) = servers(|s| s.no_pkce = true).await;
    let client = client(&base, code_flow());
    let error = client
        .call_tool("remote", "read", json!({}))
        .await
        .err()
        .unwrap_or_else(|| panic!("authorized without PKCE"));
    assert!(oauth_error(&error).is_metadata(), "{error}");
    assert!(error.to_string().contains("S256"), "{error}");
    assert!(
        seen(&state).authorizations.is_empty(),
        "never sent to /authorize"
    );
}

#[tokio::test]
async fn without_a_handler_the_code_flow_is_an_auth_error() {
    let (base, _state) = servers(|_| {}).await;
    let client = client(&base, OAuth::new(OAuthConfig::default()));
    let error = client
        .call_tool("remote", "read", json!({}))
        .await
        .err()
        .unwrap_or_else(|| panic!("authorized without a handler"));
    assert_eq!(oauth_error(&error).kind(), OAuthErrorKind::Authorization);
}

#[tokio::test]
async fn login_gets_and_keeps_a_token_before_any_call() {
    let (base, state) = servers(|_| {}).await;
    let oauth = code_flow();
    let token = oauth
        .login(&format!("{base}/mcp"), &ClientConfig::default())
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    assert_eq!(token.resource, format!("{base}/mcp"));
    assert_eq!(token.scope.as_deref(), Some("read"));
    assert!(
        oauth
            .stored(&format!("{base}/mcp"))
            .ok()
            .flatten()
            .is_some()
    );
    assert_eq!(seen(&state).authorizations.len(), 1);
}
