//! The MCP features beyond tools and resources against the TypeScript
//! SDK's reference server (`@modelcontextprotocol/server-everything`,
//! installed by `scripts/install-interop.sh`; a missing server fails the
//! test and says so): progress of a long tool call with the deadline
//! pushed out by it, sampling, elicitation and roots answered by the
//! application's handler, log messages reaching the application.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::{Hear, Heard, eventually_within, lock};
use cortex_client::discovery::Protocol;
use cortex_client::progress::{CallOptions, Progress};
use cortex_client::server_requests::{RequestError, ServerRequestHandler};
use cortex_client::{
    ClientConfig, Endpoint, McpClient, McpError, McpFeatures, NetworkMcpClient, StaticDiscovery,
};
use cortex_test_support::mcp_servers::everything;
use serde_json::{Value, json};

/// Answers as an application with a model, a person and one root would.
struct App {
    asked: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl ServerRequestHandler for App {
    fn capabilities(&self) -> Value {
        json!({"sampling": {}, "elicitation": {}, "roots": {"listChanged": true}})
    }

    async fn handle(
        &self,
        service: &str,
        method: &str,
        params: Value,
    ) -> Result<Value, RequestError> {
        assert_eq!(service, "svc");
        lock(&self.asked).push(method.to_string());
        match method {
            "sampling/createMessage" => {
                let asked = params["messages"][0]["content"]["text"]
                    .as_str()
                    .unwrap_or_default();
                Ok(json!({
                    "role": "assistant",
                    "content": {"type": "text", "text": format!("model saw [{asked}]")},
                    "model": "scripted-model",
                    "stopReason": "endTurn",
                }))
            }
            "elicitation/create" => Ok(json!({
                "action": "accept",
                "content": {"name": "Ada Lovelace", "check": true, "email": "ada@example.org"},
            })),
            "roots/list" => {
                Ok(json!({"roots": [{"uri": "file:///srv/cortex-root", "name": "cortex root"}]}))
            }
            other => Err(RequestError::method_not_found(other)),
        }
    }
}

async fn ok<T>(what: &str, outcome: Result<T, McpError>) -> T {
    outcome.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join("\n"),
        other => other.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_progress_requests_and_notifications() {
    let server = everything("streamableHttp");
    let discovery = StaticDiscovery::new();
    let url = format!("http://127.0.0.1:{}/mcp", server.port);
    discovery.register("svc", vec![Endpoint::new(url).with_protocol(Protocol::Mcp)]);
    // A one-second timeout: the long tool below takes longer.
    let config = ClientConfig::builder()
        .request_timeout(Duration::from_secs(1))
        .initial_backoff(Duration::from_millis(20))
        .build()
        .unwrap_or_else(|e| panic!("config: {e}"));
    let asked = Arc::new(Mutex::new(Vec::new()));
    let heard = Arc::new(Heard::default());
    let client = NetworkMcpClient::builder(Arc::new(discovery))
        .config(config)
        .server_requests(Arc::new(App {
            asked: asked.clone(),
        }))
        .notifications(Hear::any(heard.clone()))
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"));
    ok("connect", client.connect("svc").await).await;

    // Roots: the server asks on the standalone stream soon after the
    // handshake, and logs what it got.
    eventually_within(
        "the server's roots/list and its log",
        Duration::from_secs(10),
        || {
            lock(&heard.logs).iter().any(|m| {
                m.data
                    .as_str()
                    .is_some_and(|d| d.contains("1 root(s) received"))
            })
        },
    )
    .await;
    assert!(lock(&asked).contains(&"roots/list".to_string()));
    let roots = ok(
        "get-roots-list",
        client.call_tool("svc", "get-roots-list", json!({})).await,
    )
    .await;
    assert!(text(&roots).contains("file:///srv/cortex-root"), "{roots}");

    // Progress of a 2.4 s operation in 3 steps, each under the 1 s timeout
    // that progress starts over.
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let sink = seen.clone();
    let options = CallOptions::new()
        .on_progress(move |p| lock(&sink).push(p))
        .reset_timeout_on_progress(Duration::from_secs(20));
    let args = json!({"duration": 2.4, "steps": 3});
    let done = ok(
        "trigger-long-running-operation",
        client
            .call_tool_with(
                "svc",
                "trigger-long-running-operation",
                args.clone(),
                options,
            )
            .await,
    )
    .await;
    assert!(
        text(&done).contains("Long running operation completed"),
        "{done}"
    );
    let seen = lock(&seen).clone();
    assert_eq!(
        seen.iter()
            .map(|p| (p.progress, p.total))
            .collect::<Vec<_>>(),
        vec![(1.0, Some(3.0)), (2.0, Some(3.0)), (3.0, Some(3.0))]
    );
    // Without the reset the one-second deadline cuts it.
    let cut = client
        .call_tool_with(
            "svc",
            "trigger-long-running-operation",
            args,
            CallOptions::new().on_progress(|_| {}),
        )
        .await;
    assert!(matches!(cut, Err(McpError::Timeout { .. })), "{cut:?}");

    // Sampling and elicitation, asked inside the tool call's answer.
    let sampled = ok(
        "trigger-sampling-request",
        client
            .call_tool(
                "svc",
                "trigger-sampling-request",
                json!({"prompt": "two words", "maxTokens": 5}),
            )
            .await,
    )
    .await;
    let sampled = text(&sampled);
    assert!(
        sampled.contains("model saw [") && sampled.contains("two words"),
        "{sampled}"
    );
    assert!(sampled.contains("scripted-model"), "{sampled}");
    let elicited = ok(
        "trigger-elicitation-request",
        client
            .call_tool("svc", "trigger-elicitation-request", json!({}))
            .await,
    )
    .await;
    let elicited = text(&elicited);
    assert!(elicited.contains("Name: Ada Lovelace"), "{elicited}");
    assert!(elicited.contains("Agreed to terms: true"), "{elicited}");

    // Logging: at `debug` every simulated message is sent; the first at once.
    ok(
        "logging/setLevel",
        client.set_log_level("svc", "debug").await,
    )
    .await;
    let before = lock(&heard.logs).len();
    let started = ok(
        "toggle-simulated-logging",
        client
            .call_tool("svc", "toggle-simulated-logging", json!({}))
            .await,
    )
    .await;
    assert!(text(&started).contains("Started simulated"), "{started}");
    eventually_within("a simulated log message", Duration::from_secs(10), || {
        lock(&heard.logs)[before..].iter().any(|m| {
            m.data
                .as_str()
                .is_some_and(|d| d.contains("message - SessionId"))
        })
    })
    .await;
    ok(
        "toggle off",
        client
            .call_tool("svc", "toggle-simulated-logging", json!({}))
            .await,
    )
    .await;
    client.close().await;
}
