//! `cortex login URL` against an authorization server and MCP server on
//! loopback that approve at once: the URL is printed, the browser's part
//! is played by an HTTP client following the redirects, the token lands in
//! a file of mode 0600, and `cortex --url URL tools` sends it.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

#[derive(Default)]
struct Seen {
    base: String,
    bearers: Vec<String>,
    redirect_uris: Vec<String>,
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
        "scopes_supported": ["tools:read"],
    }))
    .into_response()
}

async fn server_metadata(State(state): State<Shared>) -> Response {
    let base = seen(&state).base.clone();
    axum::Json(json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "registration_endpoint": format!("{base}/register"),
        "token_endpoint_auth_methods_supported": ["none"],
        "code_challenge_methods_supported": ["S256"],
    }))
    .into_response()
}

async fn register() -> Response {
    (
        StatusCode::CREATED,
        axum::Json(json!({"client_id": "cli-client"})),
    )
        .into_response()
}

async fn authorize(
    State(state): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let redirect_uri = query.get("redirect_uri").cloned().unwrap_or_default();
    seen(&state).redirect_uris.push(redirect_uri.clone());
    let location = format!(
        "{redirect_uri}?code=the-code&state={}",
        query.get("state").cloned().unwrap_or_default()
    );
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

async fn token(body: String) -> Response {
    assert!(body.contains("code_verifier="), "{body}");
    axum::Json(json!({
        "access_token": "cli-access-token",
        "token_type": "Bearer",
        "expires_in": 3600,
        "refresh_token": "cli-refresh-token",
    }))
    .into_response()
}

async fn mcp(State(state): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let base = seen(&state).base.clone();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    if bearer.as_deref() != Some("cli-access-token") {
        let challenge = format!(
            r#"Bearer resource_metadata="{base}/.well-known/oauth-protected-resource/mcp""#
        );
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge)],
        )
            .into_response();
    }
    seen(&state).bearers.extend(bearer);
    let message: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if message.get("id").is_none() {
        return StatusCode::ACCEPTED.into_response();
    }
    let result = match message["method"].as_str().unwrap_or_default() {
        "initialize" => json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "login-test", "version": "1"},
        }),
        "tools/list" => json!({"tools": [{"name": "whoami", "inputSchema": {"type": "object"}}]}),
        _ => json!({}),
    };
    axum::Json(json!({"jsonrpc": "2.0", "id": message["id"], "result": result})).into_response()
}

#[test]
fn login_keeps_a_private_token_that_later_commands_send() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let state: Shared = Arc::default();
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
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    seen(&state).base = base.clone();
    runtime.spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let url = format!("{base}/mcp");
    let mut login = common::cortex()
        .args(["login", &url, "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The authorization URL is printed on stderr: play the browser.
    let mut stderr = BufReader::new(login.stderr.take().unwrap()).lines();
    let mut printed = Vec::new();
    let mut authorize_url = None;
    for line in stderr.by_ref() {
        let line = line.unwrap();
        printed.push(line.clone());
        if let Some(at) = line.find("http").filter(|_| line.contains("/authorize?")) {
            authorize_url = Some(line[at..].trim().to_string());
            break;
        }
    }
    // Keep reading what it says while it waits.
    std::thread::spawn(move || stderr.for_each(drop));
    let authorize_url =
        authorize_url.unwrap_or_else(|| panic!("no authorization URL printed: {printed:?}"));
    assert!(
        authorize_url.contains("code_challenge_method=S256"),
        "{authorize_url}"
    );
    let page = runtime
        .block_on(async { reqwest::get(&authorize_url).await?.text().await })
        .unwrap();
    assert!(page.contains("Authorized"), "{page}");
    let output = login.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "login failed: {stdout}");
    assert!(stdout.contains(&format!("logged in to {url}")), "{stdout}");
    assert!(seen(&state).redirect_uris[0].starts_with("http://127.0.0.1:"));

    let file = dir.path().join("oauth-tokens.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the token file is private");
    }
    let kept = std::fs::read_to_string(&file).unwrap();
    assert!(kept.contains("cli-refresh-token"), "{kept}");

    // A later command on the same data directory sends the token.
    let tools = common::cortex()
        .env("CORTEX_DATA_DIR", dir.path())
        .args(["--url", &url, "tools"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&tools.stdout);
    assert!(
        tools.status.success(),
        "{listing} {}",
        String::from_utf8_lossy(&tools.stderr)
    );
    assert!(listing.contains("whoami"), "{listing}");
    assert!(!seen(&state).bearers.is_empty());
}

#[test]
fn login_help_teaches() {
    let run = common::run(&["login", "--help"], None).ok();
    for needle in [
        "oauth-tokens.json",
        "--open",
        "--port",
        "--scope",
        "cortex --url",
    ] {
        assert!(
            run.stdout.contains(needle),
            "`cortex login --help` lacks {needle}"
        );
    }
}
