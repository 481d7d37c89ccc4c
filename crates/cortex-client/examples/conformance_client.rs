//! The client side of the MCP conformance suite
//! (npm `@modelcontextprotocol/conformance`): `scripts/conformance.sh client`
//! runs it as `conformance_client <server-url>` once per scenario, with the
//! scenario's name in `MCP_CONFORMANCE_SCENARIO`.
//!
//! Everything goes through the public API of [`NetworkMcpClient`], with the
//! server registered as an `mcp` endpoint: `connect` (initialize,
//! `notifications/initialized`, `ping`), `mcp_tools` (`tools/list`), then
//! each listed tool called with arguments made from its input schema, and
//! `close` (DELETE of the session). It answers the server's elicitation
//! requests as an application would that accepts each form with its
//! defaults (SEP-1034), through a [`ServerRequestHandler`].
//!
//! Run by hand: `cargo run -p cortex-client --example conformance_client -- http://127.0.0.1:3001/mcp`

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cortex_client::discovery::Protocol;
use cortex_client::server_requests::{RequestError, ServerRequestHandler, schema_defaults};
use cortex_client::{ClientConfig, Endpoint, McpClient, NetworkMcpClient, StaticDiscovery};
use serde_json::{Map, Value, json};

/// Accepts every elicitation with the defaults of its schema.
struct AcceptDefaults;

#[async_trait]
impl ServerRequestHandler for AcceptDefaults {
    fn capabilities(&self) -> Value {
        json!({"elicitation": {}})
    }

    async fn handle(
        &self,
        _service: &str,
        method: &str,
        params: Value,
    ) -> Result<Value, RequestError> {
        match method {
            "elicitation/create" => Ok(json!({
                "action": "accept",
                "content": schema_defaults(&params["requestedSchema"]),
            })),
            other => Err(RequestError::method_not_found(other)),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: conformance_client <server-url>");
        std::process::exit(2);
    };
    let scenario = std::env::var("MCP_CONFORMANCE_SCENARIO").unwrap_or_default();
    if let Err(error) = run(&url, &scenario).await {
        eprintln!("conformance_client ({scenario}): {error}");
        std::process::exit(1);
    }
}

async fn run(url: &str, scenario: &str) -> Result<(), cortex_client::McpError> {
    let discovery = StaticDiscovery::new();
    discovery.register(
        "server",
        vec![Endpoint::new(url).with_protocol(Protocol::Mcp)],
    );
    let config = ClientConfig::builder()
        .request_timeout(Duration::from_secs(20))
        .build()?;
    let client = NetworkMcpClient::builder(Arc::new(discovery))
        .config(config)
        .server_requests(Arc::new(AcceptDefaults))
        .build()?;
    client.connect("server").await?;
    eprintln!("{scenario}: connected: {:?}", client.mcp_sessions("server"));
    let tools = client.mcp_tools("server").await?;
    for tool in &tools {
        let Some(name) = tool.get("name").and_then(Value::as_str) else {
            continue;
        };
        let arguments = arguments_for(tool.get("inputSchema").unwrap_or(&Value::Null));
        let result = client.call_tool("server", name, arguments).await?;
        eprintln!("{scenario}: {name} -> {result}");
    }
    client.close().await;
    Ok(())
}

/// Arguments that satisfy a simple input schema: each required property
/// gets a value of its type.
fn arguments_for(schema: &Value) -> Value {
    let mut arguments = Map::new();
    let required = schema
        .get("required")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for name in required.iter().filter_map(Value::as_str) {
        let kind = schema
            .pointer(&format!("/properties/{name}/type"))
            .and_then(Value::as_str);
        let value = match kind {
            Some("number") | Some("integer") => json!(arguments.len() + 2),
            Some("boolean") => json!(true),
            Some("array") => json!([]),
            Some("object") => json!({}),
            _ => json!("conformance"),
        };
        arguments.insert(name.to_string(), value);
    }
    Value::Object(arguments)
}
