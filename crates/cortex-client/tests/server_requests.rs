//! Requests from an MCP server to the client on the session's standalone
//! event stream (GET), against a scripted server: the client declares its
//! handler's capabilities, opens the stream by itself, answers what the
//! handler offers and refuses the rest at once.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use cortex_client::discovery::Protocol;
use cortex_client::server_requests::{RequestError, ServerRequestHandler, schema_defaults};
use cortex_client::{ClientConfig, Endpoint, McpClient, NetworkMcpClient, StaticDiscovery};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// What the scripted server saw.
struct Script {
    /// The `capabilities` the client declared at `initialize`.
    capabilities: Mutex<Option<Value>>,
    /// The client's answers to the server's requests, with when they came.
    answers: mpsc::UnboundedSender<(Value, Instant)>,
    /// When the server sent its requests on the GET stream.
    asked: Mutex<Option<Instant>>,
}

type Shared = Arc<Script>;

async fn post_mcp(State(script): State<Shared>, body: Bytes) -> Response {
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    match (
        message.get("method").and_then(Value::as_str),
        message.get("id"),
    ) {
        (Some("initialize"), Some(id)) => {
            *script
                .capabilities
                .lock()
                .unwrap_or_else(|p| p.into_inner()) =
                Some(message["params"]["capabilities"].clone());
            let result = json!({"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}, "serverInfo": {"name": "script", "version": "1"}});
            (
                [("mcp-session-id", "s1")],
                axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})),
            )
                .into_response()
        }
        (Some("ping"), Some(id)) => {
            axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": {}})).into_response()
        }
        // An answer to one of the server's requests.
        (None, Some(_)) => {
            let _ = script.answers.send((message, Instant::now()));
            StatusCode::ACCEPTED.into_response()
        }
        _ => StatusCode::ACCEPTED.into_response(),
    }
}

/// The standalone stream: two requests of the server's own at once, then
/// held open.
async fn get_mcp(State(script): State<Shared>, headers: HeaderMap) -> Response {
    if headers.get("mcp-session-id").is_none() {
        return StatusCode::BAD_REQUEST.into_response();
    }
    *script.asked.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    let elicit = json!({"jsonrpc": "2.0", "id": "e1", "method": "elicitation/create", "params": {
        "message": "your name?",
        "requestedSchema": {"type": "object", "properties": {"name": {"type": "string", "default": "Ada"}}}
    }});
    let sample = json!({"jsonrpc": "2.0", "id": "s1", "method": "sampling/createMessage", "params": {"messages": []}});
    let first = format!("id: 1\ndata: {elicit}\n\nid: 2\ndata: {sample}\n\n");
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(first)) })
        .chain(futures::stream::pending());
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Accepts elicitations with their defaults; offers nothing else.
struct Elicitation;

#[async_trait]
impl ServerRequestHandler for Elicitation {
    fn capabilities(&self) -> Value {
        json!({"elicitation": {}})
    }

    async fn handle(
        &self,
        service: &str,
        method: &str,
        params: Value,
    ) -> Result<Value, RequestError> {
        assert_eq!(service, "svc");
        match method {
            "elicitation/create" => Ok(json!({
                "action": "accept",
                "content": schema_defaults(&params["requestedSchema"]),
            })),
            other => Err(RequestError::method_not_found(other)),
        }
    }
}

#[tokio::test]
async fn requests_on_the_standalone_stream_are_answered_by_the_handler() {
    let (answers, mut received) = mpsc::unbounded_channel();
    let script = Arc::new(Script {
        capabilities: Mutex::new(None),
        answers,
        asked: Mutex::new(None),
    });
    let app = Router::new()
        .route("/mcp", post(post_mcp).get(get_mcp))
        .with_state(script.clone());
    let url = format!("{}/mcp", common::serve(app).await);
    let discovery = StaticDiscovery::new();
    discovery.register("svc", vec![Endpoint::new(url).with_protocol(Protocol::Mcp)]);
    let client = NetworkMcpClient::builder(Arc::new(discovery))
        .config(ClientConfig::default())
        .server_requests(Arc::new(Elicitation))
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"));

    // Opening the session is all it takes: the client opens the stream.
    client
        .connect("svc")
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    assert_eq!(
        script
            .capabilities
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        Some(json!({"elicitation": {}}))
    );
    let mut by_id = std::collections::HashMap::new();
    for _ in 0..2 {
        let (answer, at) = tokio::time::timeout(Duration::from_secs(5), received.recv())
            .await
            .unwrap_or_else(|_| panic!("a server request was not answered within 5 s"))
            .unwrap_or_else(|| panic!("the server stopped"));
        let asked = script
            .asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or_else(|| panic!("answered before it was asked"));
        eprintln!(
            "{} answered {:?} after the request was sent",
            answer["id"],
            at - asked
        );
        by_id.insert(
            answer["id"].as_str().unwrap_or_default().to_string(),
            answer,
        );
    }
    assert_eq!(
        by_id["e1"]["result"],
        json!({"action": "accept", "content": {"name": "Ada"}})
    );
    // What the handler does not offer is refused, not left waiting.
    assert_eq!(by_id["s1"]["error"]["code"], -32601, "{}", by_id["s1"]);
    client.close().await;
}
