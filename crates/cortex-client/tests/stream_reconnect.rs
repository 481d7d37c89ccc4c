//! How a cut stream comes back, against a scripted server of the stateless
//! revision (2026-07-28): its `subscriptions/listen` streams are asked again
//! after the server's `retry:` advice, not sooner, however short our own
//! backoff is.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use cortex_client::discovery::Protocol;
use cortex_client::{ClientConfig, Endpoint, McpClient, NetworkMcpClient, StaticDiscovery};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;

/// The `retry:` the server sends on every listen stream.
const SERVER_RETRY: Duration = Duration::from_millis(300);

/// When each `subscriptions/listen` arrived.
type Listens = Arc<Mutex<Vec<Instant>>>;

async fn mcp(State(listens): State<Listens>, Json(message): Json<Value>) -> Response {
    let id = message["id"].clone();
    let reply =
        |result: Value| Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response();
    match message["method"].as_str().unwrap_or_default() {
        // No sessions here: the client falls back to the stateless revision.
        "initialize" => (
            StatusCode::BAD_REQUEST,
            Json(json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "no initialize"}})),
        )
            .into_response(),
        "server/discover" => reply(json!({
            "supportedVersions": ["2026-07-28"],
            "capabilities": {"resources": {}},
            "serverInfo": {"name": "script", "version": "1"}
        })),
        "ping" => reply(json!({})),
        "subscriptions/listen" => {
            listens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Instant::now());
            // Advice, then the stream ends at once: the client must listen again.
            let body = format!("retry: {}\n\n", SERVER_RETRY.as_millis());
            ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
        }
        _ => Json(json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "no"}}))
            .into_response(),
    }
}

#[tokio::test]
async fn a_listen_is_asked_again_after_the_servers_retry_advice() {
    let listens = Listens::default();
    let app = Router::new()
        .route("/mcp", post(mcp))
        .with_state(listens.clone());
    let url = format!("{}/mcp", common::serve(app).await);

    let discovery = StaticDiscovery::new();
    discovery.register(
        "svc",
        vec![Endpoint::new(&url).with_protocol(Protocol::Mcp)],
    );
    // Our own backoff alone would listen again within milliseconds.
    let config = ClientConfig::builder()
        .initial_backoff(Duration::from_millis(5))
        .max_backoff(Duration::from_millis(20))
        .build()
        .unwrap_or_else(|e| panic!("config: {e}"));
    let client = NetworkMcpClient::builder(Arc::new(discovery))
        .config(config)
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"));

    let mut stream = client
        .stream_resource("svc", "things/1")
        .await
        .unwrap_or_else(|e| panic!("stream: {e}"));
    // No update ever comes; the stream keeps listening meanwhile.
    let polled = tokio::time::timeout(Duration::from_millis(1200), stream.next()).await;
    assert!(polled.is_err(), "no update was sent: {polled:?}");

    let listens = listens.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        listens.len() >= 2,
        "the cut listen was asked again: {listens:?}"
    );
    for pair in listens.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= SERVER_RETRY,
            "listened again after {gap:?}, sooner than the server's retry: {SERVER_RETRY:?}"
        );
    }
}
