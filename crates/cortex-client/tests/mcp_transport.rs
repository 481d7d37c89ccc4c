//! The MCP transport's rules against a scripted server: session expiry,
//! retry safety of tool calls, cancellation on timeout, DELETE on close.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use cortex_client::discovery::Protocol;
use cortex_client::{
    ClientConfig, Endpoint, McpClient, McpError, NetworkMcpClient, StaticDiscovery,
};
use serde_json::{Value, json};

#[derive(Default)]
struct Script {
    /// Sessions handed out so far.
    sessions: AtomicU32,
    /// Sessions below this number are forgotten (answered 404).
    forgotten_below: AtomicU32,
    /// Every session is forgotten at once.
    forget_all: std::sync::atomic::AtomicBool,
    /// `tools/call` per tool name.
    calls: Mutex<Vec<String>>,
    /// Notifications and DELETEs received, with their params.
    received: Mutex<Vec<(String, Value)>>,
    /// Every message's method with the `Authorization` it came with.
    authorization: Mutex<Vec<(String, Option<String>)>>,
}

type Shared = Arc<Script>;

async fn mcp(
    State(script): State<Shared>,
    headers: HeaderMap,
    Json(message): Json<Value>,
) -> Response {
    let method = message["method"].as_str().unwrap_or_default().to_string();
    let id = message["id"].clone();
    script
        .authorization
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((
            method.clone(),
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        ));
    let session = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u32>().ok());
    if method == "initialize" {
        let n = script.sessions.fetch_add(1, Ordering::SeqCst) + 1;
        let result = json!({"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}, "serverInfo": {"name": "script", "version": "1"}});
        return (
            [("mcp-session-id", n.to_string())],
            Json(json!({"jsonrpc": "2.0", "id": id, "result": result})),
        )
            .into_response();
    }
    let forgotten = session.is_none_or(|s| {
        script.forget_all.load(Ordering::SeqCst)
            || s < script.forgotten_below.load(Ordering::SeqCst)
    });
    if forgotten {
        return (StatusCode::NOT_FOUND, "session not found").into_response();
    }
    if message.get("id").is_none() {
        script
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((method, message["params"].clone()));
        return StatusCode::ACCEPTED.into_response();
    }
    let reply =
        |result: Value| Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response();
    match method.as_str() {
        "ping" => reply(json!({})),
        "tools/list" => reply(json!({"tools": [
            {"name": "safe", "inputSchema": {"type": "object"}, "annotations": {"idempotentHint": true}},
            {"name": "unsafe", "inputSchema": {"type": "object"}},
            {"name": "slow", "inputSchema": {"type": "object"}},
            {"name": "echo", "inputSchema": {"type": "object"}}
        ]})),
        "tools/call" => {
            let name = message["params"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let seen = {
                let mut calls = script.calls.lock().unwrap_or_else(|p| p.into_inner());
                calls.push(name.clone());
                calls.iter().filter(|c| **c == name).count()
            };
            match name.as_str() {
                "safe" | "unsafe" if seen == 1 => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()
                }
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    reply(json!({"content": [{"type": "text", "text": "late"}]}))
                }
                _ => reply(json!({"content": [{"type": "text", "text": format!("{name} ok")}]})),
            }
        }
        _ => Json(json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "no"}}))
            .into_response(),
    }
}

async fn delete(State(script): State<Shared>, headers: HeaderMap) -> StatusCode {
    let session = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    script
        .received
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(("DELETE".into(), json!(session)));
    StatusCode::OK
}

async fn serve() -> (Shared, String) {
    let script = Shared::default();
    let app = Router::new()
        .route("/mcp", post(mcp).delete(delete))
        .with_state(script.clone());
    let url = format!("{}/mcp", common::serve(app).await);
    (script, url)
}

fn client(url: &str, request_timeout: Duration) -> NetworkMcpClient {
    let discovery = StaticDiscovery::new();
    discovery.register("svc", vec![Endpoint::new(url).with_protocol(Protocol::Mcp)]);
    let config = ClientConfig::builder()
        .request_timeout(request_timeout)
        .initial_backoff(Duration::from_millis(5))
        .max_backoff(Duration::from_millis(20))
        .failure_threshold(1_000)
        .build()
        .unwrap_or_else(|e| panic!("config: {e}"));
    NetworkMcpClient::builder(Arc::new(discovery))
        .config(config)
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"))
}

fn received(script: &Script, method: &str) -> Vec<Value> {
    let received = script.received.lock().unwrap_or_else(|p| p.into_inner());
    received
        .iter()
        .filter(|(m, _)| m == method)
        .map(|(_, p)| p.clone())
        .collect()
}

#[tokio::test]
async fn an_expired_session_is_opened_again_once() {
    let (script, url) = serve().await;
    let client = client(&url, Duration::from_secs(5));
    let first = client.call_tool("svc", "echo", json!({})).await;
    assert_eq!(first.ok(), Some(json!("echo ok")));
    assert_eq!(received(&script, "notifications/initialized").len(), 1);

    // The server forgets session 1: the call re-initializes and succeeds.
    script.forgotten_below.store(2, Ordering::SeqCst);
    let second = client.call_tool("svc", "echo", json!({})).await;
    assert_eq!(second.ok(), Some(json!("echo ok")));
    assert_eq!(script.sessions.load(Ordering::SeqCst), 2);

    // A server that forgets every session: one renewal, then the error.
    script.forget_all.store(true, Ordering::SeqCst);
    let third = client.call_tool("svc", "echo", json!({})).await;
    let message = third.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("404"), "{message}");
    assert_eq!(
        script.sessions.load(Ordering::SeqCst),
        3,
        "renewed once only"
    );
}

#[tokio::test]
async fn a_500_is_retried_only_for_tools_that_say_they_are_idempotent() {
    let (script, url) = serve().await;
    let client = client(&url, Duration::from_secs(5));
    let safe = client.call_tool("svc", "safe", json!({})).await;
    assert_eq!(safe.ok(), Some(json!("safe ok")), "idempotentHint: retried");
    let unsafe_call = client.call_tool("svc", "unsafe", json!({})).await;
    assert!(
        matches!(unsafe_call, Err(McpError::ServiceCall { status: 500, .. })),
        "{unsafe_call:?}"
    );
    let calls = script
        .calls
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert_eq!(calls, vec!["safe", "safe", "unsafe"]);
}

#[tokio::test]
async fn a_timeout_tells_the_server_with_notifications_cancelled() {
    let (script, url) = serve().await;
    let client = client(&url, Duration::from_millis(400));
    client
        .connect("svc")
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let slow = client.call_tool("svc", "slow", json!({})).await;
    assert!(matches!(slow, Err(McpError::Timeout { .. })), "{slow:?}");
    for _ in 0..100 {
        if let Some(params) = received(&script, "notifications/cancelled").first() {
            assert!(params["requestId"].is_u64(), "{params}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no notifications/cancelled arrived");
}

#[tokio::test]
async fn close_deletes_the_session() {
    let (script, url) = serve().await;
    let client = client(&url, Duration::from_secs(5));
    client
        .connect("svc")
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    client.close().await;
    assert_eq!(received(&script, "DELETE"), vec![json!("1")]);
    assert!(matches!(
        client.call_tool("svc", "echo", json!({})).await,
        Err(McpError::Closed)
    ));
}

/// A call made for a caller carries the caller's `Authorization`, but the
/// session it opens on the way, and the tool listing the client caches,
/// belong to the client and are asked with its own token: a later caller
/// must not use a session or listing opened as someone else.
#[tokio::test]
async fn a_forwarded_caller_token_never_opens_the_shared_session() {
    let (script, url) = serve().await;
    let discovery = StaticDiscovery::new();
    discovery.register(
        "svc",
        vec![Endpoint::new(&url).with_protocol(Protocol::Mcp)],
    );
    let client = NetworkMcpClient::builder(Arc::new(discovery))
        .token_provider(Arc::new(cortex_client::StaticToken::new("own")))
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"));
    let caller = axum::http::HeaderValue::from_static("Bearer caller");
    // `connect` pings: the session is opened on the caller's first request.
    let (connected, answer) = cortex_client::with_authorization(Some(caller), async {
        let connected = client.connect("svc").await;
        (connected, client.call_tool("svc", "echo", json!({})).await)
    })
    .await;
    assert!(connected.is_ok(), "{connected:?}");
    assert_eq!(answer.ok(), Some(json!("echo ok")));

    let seen = script
        .authorization
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let of = |method: &str| -> Vec<Option<String>> {
        seen.iter()
            .filter(|(m, _)| m == method)
            .map(|(_, a)| a.clone())
            .collect()
    };
    let own = Some("Bearer own".to_string());
    assert_eq!(of("initialize"), vec![own.clone()], "{seen:?}");
    assert_eq!(
        of("notifications/initialized"),
        vec![own.clone()],
        "{seen:?}"
    );
    assert_eq!(of("tools/list"), vec![own], "{seen:?}");
    assert_eq!(
        of("ping"),
        vec![Some("Bearer caller".to_string())],
        "{seen:?}"
    );
    assert_eq!(
        of("tools/call"),
        vec![Some("Bearer caller".to_string())],
        "{seen:?}"
    );
}

/// Opens a stream of `uri`, retrying briefly while the server still counts
/// subscriptions that dropped streams gave back (the unsubscribe is sent
/// from a task); gives up after about two seconds.
async fn open_stream(client: &NetworkMcpClient, uri: &str) -> cortex_client::EventStream {
    let mut last = None;
    for _ in 0..100 {
        match client.stream_resource("svc", uri).await {
            Ok(stream) => return stream,
            Err(error) => last = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no stream of {uri}: {last:?}");
}

/// Servers cap the subscriptions a session may hold (ours: 2 here). Streams
/// that are dropped give theirs back, so a client can stream any number of
/// resources over time; a URI streamed twice stays subscribed until its
/// last stream is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_resource_streams_give_their_subscriptions_back() {
    let mut config = cortex_service::ServiceConfig::default();
    config.mcp.max_subscriptions = 2;
    let (server, _dir) = cortex_test_support::start_memory(config).await;
    let client = client(&server.url("/mcp"), Duration::from_secs(5));

    for user in ["a", "b", "c", "d", "e"] {
        let stream = open_stream(&client, &format!("history/{user}/stream")).await;
        drop(stream);
    }

    // Two streams of one URI; dropping one leaves the other subscribed.
    let first = open_stream(&client, "history/u1/stream").await;
    let mut second = open_stream(&client, "history/u1/stream").await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stored = client
        .call_tool(
            "svc",
            "store_input",
            json!({"user_id": "u1", "input_data": {"content": "still listening"}}),
        )
        .await;
    assert!(stored.is_ok(), "{stored:?}");
    let event = tokio::time::timeout(
        Duration::from_secs(5),
        futures::StreamExt::next(&mut second),
    )
    .await
    .unwrap_or_else(|_| panic!("no update on the remaining stream"));
    assert!(matches!(event, Some(Ok(_))), "{event:?}");
}
