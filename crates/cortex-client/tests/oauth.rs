//! OAuth against a real authorization server and MCP server on loopback
//! (`cortex_test_support::oauth_server`): discovery, the code flow with
//! PKCE, registration, one authorization for many refused calls, refresh,
//! step-up, client credentials, the token file, and bad metadata as a typed
//! error.

mod common;

use std::sync::Arc;

use cortex_client::discovery::Protocol;
use cortex_client::oauth::{
    FileTokenStore, FollowRedirect, Grant, OAuth, OAuthConfig, OAuthError, OAuthErrorKind,
    TokenStore,
};
use cortex_client::{
    ClientConfig, Endpoint, McpClient, McpError, NetworkMcpClient, StaticDiscovery,
};
use cortex_test_support::oauth_server::{self, seen};
use serde_json::json;

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
    let (base, state) = oauth_server::start(|_| {}).await;
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
    let (base, state) = oauth_server::start(|_| {}).await;
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
    let (base, state) = oauth_server::start(|s| s.expires_in = 5).await;
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
    let (base, state) = oauth_server::start(|_| {}).await;
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
    let (base, state) = oauth_server::start(|_| {}).await;
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
    let (base, state) = oauth_server::start(|_| {}).await;
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
    let (base, state) = oauth_server::start(|s| s.broken_metadata = true).await;
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
    let (base, state) = oauth_server::start(|s| s.no_pkce = true).await;
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
    let (base, _state) = oauth_server::start(|_| {}).await;
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
    let (base, state) = oauth_server::start(|_| {}).await;
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
