//! The network client against third-party MCP servers, started here:
//!
//! - `@modelcontextprotocol/server-everything` (npm, the TypeScript SDK's
//!   reference server) in `streamableHttp` mode, and in `sse` mode (the
//!   legacy HTTP+SSE transport of 2024-11-05);
//! - a server on the official Python SDK (PyPI `mcp`, `MCPServer`, formerly
//!   FastMCP): `cortex-test-support/fixtures/mcp_python_server.py`, dual-era (handshake)
//!   and modern-only (the stateless 2026-07-28 revision);
//! - the project's own memory service at `/mcp`.
//!
//! The third-party servers are installed by `scripts/install-interop.sh`
//! into `.tools/`; a test whose server is missing FAILS and says so. Each
//! listens on a port the system chooses and prints it (see `start`); what
//! it writes on stdout and stderr is shown when its test fails.

use std::sync::Arc;
use std::time::Duration;

use cortex_client::discovery::Protocol;
use cortex_client::{
    ClientConfig, Endpoint, McpClient, McpError, McpFeatures, NetworkMcpClient, StaticDiscovery,
};
use cortex_test_support::mcp_servers::{everything, python};
use futures::StreamExt;
use serde_json::{Value, json};

fn client(url: &str, protocol: Protocol) -> NetworkMcpClient {
    let discovery = StaticDiscovery::new();
    discovery.register("svc", vec![Endpoint::new(url).with_protocol(protocol)]);
    let config = ClientConfig::builder()
        .request_timeout(Duration::from_secs(20))
        .initial_backoff(Duration::from_millis(20))
        .build()
        .unwrap_or_else(|e| panic!("config: {e}"));
    NetworkMcpClient::builder(Arc::new(discovery))
        .config(config)
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"))
}

async fn ok<T>(what: &str, outcome: Result<T, McpError>) -> T {
    outcome.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn transport(client: &NetworkMcpClient) -> (String, &'static str) {
    let sessions = client.mcp_sessions("svc");
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    (sessions[0].version.clone(), sessions[0].transport)
}

/// The next stream event within 20 s.
async fn next_event(stream: &mut cortex_client::EventStream) -> cortex_client::StreamEvent {
    let item = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .unwrap_or_else(|_| panic!("no resource update within 20 s"));
    item.unwrap_or_else(|| panic!("the stream ended"))
        .unwrap_or_else(|e| panic!("stream: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_over_streamable_http() {
    let server = everything("streamableHttp");
    let client = client(
        &format!("http://127.0.0.1:{}/mcp", server.port),
        Protocol::Mcp,
    );
    ok("connect (ping)", client.connect("svc").await).await;
    assert_eq!(
        transport(&client),
        ("2025-11-25".to_string(), "streamable-http")
    );

    let echo = ok(
        "echo",
        client
            .call_tool("svc", "echo", json!({"message": "hi"}))
            .await,
    )
    .await;
    assert_eq!(echo, json!("Echo: hi"));
    let sum = ok(
        "get-sum",
        client
            .call_tool("svc", "get-sum", json!({"a": 2, "b": 3}))
            .await,
    )
    .await;
    assert_eq!(sum, json!("The sum of 2 and 3 is 5."));
    let weather = ok(
        "structured",
        client
            .call_tool(
                "svc",
                "get-structured-content",
                json!({"location": "Chicago"}),
            )
            .await,
    )
    .await;
    assert!(
        weather.get("temperature").is_some(),
        "structuredContent: {weather}"
    );
    let missing = client.call_tool("svc", "no-such-tool", json!({})).await;
    assert!(
        matches!(
            missing,
            Err(McpError::ToolNotFound { .. }) | Err(McpError::Tool { .. })
        ),
        "{missing:?}"
    );

    // A template URI without its scheme gets the server's (`demo`).
    let text = ok(
        "read",
        client.read_resource("svc", "resource/dynamic/text/1").await,
    )
    .await;
    assert!(
        text.content
            .as_str()
            .is_some_and(|t| t.starts_with("Resource 1:")),
        "{text:?}"
    );
    assert_eq!(text.mime_type, "text/plain");

    // Updates arrive on the session's GET stream once the server is told
    // to send them (its tool acts on the calling session: ours is shared).
    let uri = "demo://resource/dynamic/text/1";
    let mut stream = ok("stream", client.stream_resource("svc", uri).await).await;
    ok(
        "toggle",
        client
            .call_tool("svc", "toggle-subscriber-updates", json!({}))
            .await,
    )
    .await;
    let event = next_event(&mut stream).await;
    assert_eq!(event.event, "notifications/resources/updated");
    assert!(
        event
            .data
            .as_str()
            .is_some_and(|t| t.starts_with("Resource 1:")),
        "{event:?}"
    );
    drop(stream);

    // Prompts, completion and logging (McpFeatures).
    let prompts = ok("prompts/list", client.list_prompts("svc").await).await;
    let names: Vec<&str> = prompts.iter().filter_map(|p| p["name"].as_str()).collect();
    for name in ["simple-prompt", "args-prompt", "completable-prompt"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let prompt = ok(
        "prompts/get",
        client
            .get_prompt("svc", "args-prompt", json!({"city": "Lisbon"}))
            .await,
    )
    .await;
    assert_eq!(
        prompt["messages"][0]["content"]["text"],
        "What's weather in Lisbon?"
    );
    let reference = json!({"type": "ref/prompt", "name": "completable-prompt"});
    let departments = ok(
        "completion/complete",
        client
            .complete("svc", reference.clone(), "department", "Eng", json!({}))
            .await,
    )
    .await;
    assert_eq!(departments["values"], json!(["Engineering"]));
    // The second argument's choices depend on the first (the context).
    let names = ok(
        "completion/complete with context",
        client
            .complete("svc", reference, "name", "", json!({"department": "Sales"}))
            .await,
    )
    .await;
    assert_eq!(names["values"], json!(["David", "Eve", "Frank"]));
    ok(
        "logging/setLevel",
        client.set_log_level("svc", "debug").await,
    )
    .await;
    let unknown = client.get_prompt("svc", "no-such-prompt", json!({})).await;
    assert!(unknown.is_err(), "{unknown:?}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_over_the_legacy_sse_transport() {
    let server = everything("sse");
    let client = client(
        &format!("http://127.0.0.1:{}/sse", server.port),
        Protocol::Mcp,
    );
    let echo = ok(
        "echo",
        client
            .call_tool("svc", "echo", json!({"message": "old"}))
            .await,
    )
    .await;
    assert_eq!(echo, json!("Echo: old"));
    assert_eq!(transport(&client).1, "http+sse");
    let text = ok(
        "read",
        client
            .read_resource("svc", "demo://resource/dynamic/text/2")
            .await,
    )
    .await;
    assert!(
        text.content
            .as_str()
            .is_some_and(|t| t.starts_with("Resource 2:")),
        "{text:?}"
    );
    ok("ping", client.connect("svc").await).await;
    client.close().await;
}

/// Calls, errors and reads that read the same in both eras.
async fn python_calls(client: &NetworkMcpClient) {
    let sum = ok(
        "add",
        client
            .call_tool("svc", "add", json!({"a": 2, "b": 3}))
            .await,
    )
    .await;
    assert_eq!(sum, json!({"result": 5}));
    let failed = client
        .call_tool("svc", "fail", json!({"reason": "on purpose"}))
        .await;
    match failed {
        Err(McpError::Tool {
            message, details, ..
        }) => {
            assert!(message.contains("on purpose"), "{message}");
            assert_eq!(details["isError"], json!(true));
        }
        other => panic!("isError must be a tool error: {other:?}"),
    }
    let missing = client.call_tool("svc", "nope", json!({})).await;
    assert!(
        matches!(missing, Err(McpError::ToolNotFound { .. })),
        "{missing:?}"
    );
    let counter = ok(
        "read counter",
        client.read_resource("svc", "counter://value").await,
    )
    .await;
    assert!(counter.content.get("count").is_some(), "{counter:?}");
    assert_eq!(counter.mime_type, "application/json");
    let greeting = ok("read greeting", client.read_resource("svc", "World").await).await;
    assert_eq!(greeting.content, json!("Hello, World!"));
    let unknown = client.read_resource("svc", "counter://nope").await;
    assert!(
        matches!(
            unknown,
            Err(McpError::ResourceNotFound { .. }) | Err(McpError::Tool { .. })
        ),
        "{unknown:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_server_with_the_handshake() {
    let server = python(false);
    let client = client(
        &format!("http://127.0.0.1:{}/mcp", server.port),
        Protocol::Mcp,
    );
    python_calls(&client).await;
    assert_eq!(
        transport(&client),
        ("2025-11-25".to_string(), "streamable-http")
    );
    // The SDK's handshake era has no resources/subscribe: said plainly.
    let stream = client.stream_resource("svc", "counter://value").await;
    assert!(
        matches!(&stream, Err(McpError::ResourceStream { reason, .. }) if reason.contains("subscribe")),
        "{:?}",
        stream.err()
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_server_speaking_only_the_stateless_revision() {
    let server = python(true);
    let client = client(
        &format!("http://127.0.0.1:{}/mcp", server.port),
        Protocol::Mcp,
    );
    python_calls(&client).await;
    assert_eq!(transport(&client), ("2026-07-28".to_string(), "stateless"));
    let before = ok("read", client.read_resource("svc", "counter://value").await)
        .await
        .content["count"]
        .as_i64();
    let mut stream = ok(
        "stream",
        client.stream_resource("svc", "counter://value").await,
    )
    .await;
    let bumped = ok("bump", client.call_tool("svc", "bump", json!({})).await).await;
    let event = next_event(&mut stream).await;
    assert_eq!(event.event, "notifications/resources/updated");
    assert_eq!(
        event.data["count"].as_i64(),
        before.map(|n| n + 1),
        "{event:?} after {bumped}"
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_finds_mcp_where_no_cortex_dialect_answers() {
    let server = python(false);
    let client = client(
        &format!("http://127.0.0.1:{}/mcp", server.port),
        Protocol::Auto,
    );
    let sum = ok(
        "add",
        client
            .call_tool("svc", "add", json!({"a": 1, "b": 1}))
            .await,
    )
    .await;
    assert_eq!(sum, json!({"result": 2}));
    assert_eq!(transport(&client).1, "streamable-http");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_service_over_its_own_mcp_endpoint() {
    let (server, _dir) =
        cortex_test_support::start_memory(cortex_service::ServiceConfig::default()).await;
    let mcp = client(&server.url("/mcp"), Protocol::Mcp);
    let args = json!({"user_id": "u1", "input_data": {"content": "hello over MCP"}});
    let stored = ok(
        "store_input",
        mcp.call_tool("svc", "store_input", args).await,
    )
    .await;
    assert!(stored.get("item_id").is_some(), "{stored}");
    let tools = ok("tools/list", mcp.mcp_tools("svc").await).await;
    assert!(
        tools.iter().any(|t| t["name"] == json!("store_input")),
        "{tools:?}"
    );
    let resources: Vec<Value> = ok("resources/list", mcp.mcp_resources("svc").await).await;
    assert!(!resources.is_empty() || !tools.is_empty());
    mcp.close().await;
    // `auto` on the service's base URL keeps the Cortex dialect.
    let auto = client(&server.url(""), Protocol::Auto);
    let again = ok(
        "auto",
        auto.call_tool(
            "svc",
            "store_input",
            json!({"user_id": "u1", "input_data": {"content": "cortex"}}),
        )
        .await,
    )
    .await;
    assert!(again.get("item_id").is_some(), "{again}");
    assert!(
        auto.mcp_sessions("svc").is_empty(),
        "auto chose the Cortex dialect"
    );
    // MCP-only features on a Cortex-dialect service: a clear refusal.
    let prompts = auto.list_prompts("svc").await;
    assert!(
        matches!(&prompts, Err(McpError::InvalidRequest { reason, .. }) if reason.contains("Cortex dialect")),
        "{prompts:?}"
    );
}
