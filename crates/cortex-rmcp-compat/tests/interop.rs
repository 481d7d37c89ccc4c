//! Interoperability with rmcp, the official Rust SDK of MCP, over
//! Streamable HTTP on loopback: rmcp's client against the Cortex service
//! kit, and the Cortex network client against rmcp's server. Each side
//! lists the tools, calls one for its structured value, and meets a tool
//! that fails and a tool that does not exist.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use cortex_client::{McpClient, McpError};
use cortex_rmcp_compat::{
    FAILURE, SERVICE, cortex_client, cortex_kit, item, rmcp_client, rmcp_server,
};
use rmcp::model::CallToolRequestParams;
use serde_json::json;

fn arguments() -> serde_json::Map<String, serde_json::Value> {
    json!({"item_id": 1}).as_object().cloned().unwrap()
}

#[tokio::test]
async fn rmcps_client_lists_and_calls_the_kits_tools() {
    let kit = cortex_kit().await;
    let client = rmcp_client(&kit.url("/mcp")).await;

    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort_unstable();
    assert_eq!(names, ["fail", "item"]);
    let listed = tools.iter().find(|t| t.name == "item").unwrap();
    assert_eq!(
        listed.input_schema["properties"]["item_id"]["type"],
        "integer"
    );

    let result = client
        .call_tool(CallToolRequestParams::new("item").with_arguments(arguments()))
        .await
        .unwrap();
    assert_eq!(result.structured_content, Some(item()));
    assert_ne!(result.is_error, Some(true));
    // The text copy, for hosts that read only `content`.
    let text = result.content[0].as_text().expect("a text content");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text.text).unwrap(),
        item()
    );
}

#[tokio::test]
async fn rmcps_client_gets_the_kits_tool_failures_and_unknown_tools() {
    let kit = cortex_kit().await;
    let client = rmcp_client(&kit.url("/mcp")).await;

    let failed = client
        .call_tool(CallToolRequestParams::new("fail"))
        .await
        .unwrap();
    assert_eq!(failed.is_error, Some(true), "{failed:?}");
    let text = failed.content[0].as_text().expect("a text content");
    assert!(text.text.contains(FAILURE), "{}", text.text);

    let unknown = client
        .call_tool(CallToolRequestParams::new("no_such_tool"))
        .await
        .unwrap_err();
    assert!(
        unknown.to_string().contains("no_such_tool"),
        "the error names the tool: {unknown}"
    );
}

#[tokio::test]
async fn the_network_client_lists_and_calls_rmcps_tools() {
    let server = rmcp_server().await;
    let client = cortex_client(&server.url);

    let tools = client.list_tools(SERVICE).await.unwrap();
    let names: Vec<&str> = tools.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["fail", "item"], "sorted by name");
    assert_eq!(
        tools.tools[1].input_schema["properties"]["item_id"]["type"],
        "integer"
    );

    let value = client
        .call_tool(SERVICE, "item", json!({"item_id": 1}))
        .await
        .unwrap();
    assert_eq!(value, item());
}

#[tokio::test]
async fn the_network_client_types_rmcps_tool_failures_and_unknown_tools() {
    let server = rmcp_server().await;
    let client = cortex_client(&server.url);

    let failed = client
        .call_tool(SERVICE, "fail", json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(&failed, McpError::Tool { message, .. } if message.contains(FAILURE)),
        "{failed:?}"
    );
    assert!(!failed.is_retryable(), "{failed:?}");

    let unknown = client
        .call_tool(SERVICE, "no_such_tool", json!({}))
        .await
        .unwrap_err();
    assert!(
        unknown.to_string().contains("no_such_tool"),
        "the error names the tool: {unknown:?}"
    );
    assert!(!unknown.is_retryable(), "{unknown:?}");
}
