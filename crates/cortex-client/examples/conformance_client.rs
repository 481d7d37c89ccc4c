//! The client side of the MCP conformance suite
//! (npm `@modelcontextprotocol/conformance`): `scripts/conformance.sh client`
//! runs it as `conformance_client <server-url>` once per scenario, with the
//! scenario's name in `MCP_CONFORMANCE_SCENARIO`.
//!
//! Everything goes through the public API of [`NetworkMcpClient`], with the
//! server registered as an `mcp` endpoint: `connect` (initialize,
//! `notifications/initialized`, `ping`), `mcp_tools` (`tools/list`), then
//! each listed tool called with arguments made from its input schema (or,
//! when the scenario's context lists `toolCalls`, those calls), and
//! `close` (DELETE of the session). It answers the server's elicitation
//! requests as an application would that accepts each form with its
//! defaults (SEP-1034), through a [`ServerRequestHandler`].
//!
//! The `auth/*` scenarios put OAuth on the server ([`OAuth`]): the suite's
//! authorization servers approve at once, so the authorization URL is
//! asked directly and the code read from its redirect
//! ([`FollowRedirect`]), as the official SDKs' conformance clients do.
//! What a scenario hands over (pre-registered credentials, a private key,
//! an identity provider's ID token) comes as JSON in
//! `MCP_CONFORMANCE_CONTEXT`.
//!
//! Run by hand: `cargo run -p cortex-client --features oauth-jwt --example conformance_client -- http://127.0.0.1:3001/mcp`

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cortex_client::discovery::Protocol;
use cortex_client::oauth::{FollowRedirect, Grant, OAuth, OAuthConfig};
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
    let mut builder = NetworkMcpClient::builder(Arc::new(discovery))
        .config(config)
        .server_requests(Arc::new(AcceptDefaults));
    if scenario.starts_with("auth/") {
        let context = std::env::var("MCP_CONFORMANCE_CONTEXT")
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .unwrap_or(Value::Null);
        builder = builder.oauth("server", Arc::new(oauth_for(scenario, &context)));
    }
    let client = builder.build()?;
    // `connect` is a `ping`, which some stateless (2026-07-28) servers
    // answer -32601: the session is open all the same, so go on.
    match client.connect("server").await {
        Ok(()) => eprintln!("{scenario}: connected: {:?}", client.mcp_sessions("server")),
        Err(error) if error.is_auth() => return Err(error),
        Err(error) => eprintln!("{scenario}: ping refused ({error}); going on"),
    }
    let tools = client.mcp_tools("server").await?;
    // A scenario may name the calls to make (`toolCalls` in its context):
    // those, with their arguments, instead of one call per listed tool.
    let context = std::env::var("MCP_CONFORMANCE_CONTEXT")
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .unwrap_or(Value::Null);
    if let Some(calls) = context.get("toolCalls").and_then(Value::as_array) {
        for call in calls {
            let Some(name) = call.get("name").and_then(Value::as_str) else {
                continue;
            };
            let arguments = call.get("arguments").cloned().unwrap_or_else(|| json!({}));
            let result = client.call_tool("server", name, arguments).await?;
            eprintln!("{scenario}: {name} -> {result}");
        }
        client.close().await;
        return Ok(());
    }
    // Scored on the listing alone (the client must not fetch a `$ref`'s
    // URL): its server lists a tool it does not serve.
    if scenario == "json-schema-ref-no-deref" {
        eprintln!("{scenario}: listed {} tools", tools.len());
        client.close().await;
        return Ok(());
    }
    // The suite cannot see what the client kept of a listed schema, so it
    // asks for it back: the schema of one tool, as listed, goes to an echo
    // tool verbatim, and the suite compares what arrives with what it sent.
    if scenario == "json-schema-2020-12-preservation" {
        let schema = tools
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("json_schema_2020_12_tool"))
            .and_then(|t| t.get("inputSchema"))
            .cloned()
            .ok_or_else(|| cortex_client::McpError::ToolNotFound {
                service: "server".into(),
                tool: "json_schema_2020_12_tool".into(),
            })?;
        let result = client
            .call_tool("server", "json_schema_echo", json!({ "schema": schema }))
            .await?;
        eprintln!("{scenario}: json_schema_echo -> {result}");
        client.close().await;
        return Ok(());
    }
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

/// The client's URL-based id where a server supports Client ID Metadata
/// Documents: the one the suite expects.
const CLIENT_METADATA_URL: &str = "https://conformance-test.local/client-metadata.json";

/// OAuth as the scenario's context says: pre-registered credentials, a
/// private key (`private_key_jwt`), an identity provider's ID token
/// (enterprise-managed authorization), or nothing (the code flow with
/// discovery and registration).
fn oauth_for(scenario: &str, context: &Value) -> OAuth {
    let text = |key: &str| context.get(key).and_then(Value::as_str).map(str::to_string);
    let grant = if let Some(private_key_pem) = text("private_key_pem") {
        Grant::PrivateKeyJwt {
            private_key_pem,
            algorithm: text("signing_algorithm").unwrap_or_else(|| "ES256".into()),
        }
    } else if let (Some(idp_token_endpoint), Some(id_token)) =
        (text("idp_token_endpoint"), text("idp_id_token"))
    {
        Grant::IdentityAssertion {
            idp_token_endpoint,
            id_token,
            idp_client_id: text("idp_client_id").unwrap_or_default(),
            idp_client_secret: None,
        }
    } else if scenario.starts_with("auth/client-credentials") {
        Grant::ClientCredentials
    } else {
        Grant::AuthorizationCode
    };
    let config = OAuthConfig {
        grant,
        client_id: text("client_id"),
        client_secret: text("client_secret"),
        client_metadata_url: Some(CLIENT_METADATA_URL.into()),
        client_name: "cortex-conformance-client".into(),
        ..OAuthConfig::default()
    };
    OAuth::new(config).with_handler(Arc::new(FollowRedirect::new(
        "http://localhost:3000/callback",
    )))
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
