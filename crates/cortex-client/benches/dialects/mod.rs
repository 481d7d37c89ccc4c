//! What `mcp_vs_cortex` and `mcp_vs_cortex_allocs` share: one in-process
//! memory service holding one item, and a network client of it per
//! dialect.

use std::sync::Arc;
use std::time::Duration;

use cortex_client::discovery::{Endpoint, Protocol};
use cortex_client::{ClientConfig, McpClient, NetworkMcpClient, StaticDiscovery};
use cortex_service::ServiceConfig;
use cortex_test_support::TestServer;
use serde_json::json;

/// The service (and its data directory: both must be kept for as long as
/// the clients call), the item's id, and a client of it over the Cortex
/// dialect and one over MCP (`/mcp`).
pub(crate) struct Setup {
    pub(crate) _service: (TestServer, tempfile::TempDir),
    pub(crate) item: i64,
    pub(crate) cortex: NetworkMcpClient,
    pub(crate) mcp: NetworkMcpClient,
}

/// Starts the service and stores the item; each client holds at most
/// `connections` connections.
pub(crate) async fn setup(connections: usize) -> Setup {
    let (server, dir) = cortex_test_support::start_memory(ServiceConfig::default()).await;
    let cortex = client(server.url(""), Protocol::Cortex, connections);
    let mcp = client(server.url("/mcp"), Protocol::Mcp, connections);
    let stored = cortex
        .call_tool(
            "memory",
            "store_input",
            json!({"user_id": "u1", "input_data": {"content": "x"}}),
        )
        .await
        .unwrap();
    Setup {
        item: stored["item_id"].as_i64().unwrap(),
        _service: (server, dir),
        cortex,
        mcp,
    }
}

fn client(url: String, protocol: Protocol, connections: usize) -> NetworkMcpClient {
    let discovery = StaticDiscovery::new();
    discovery.register("memory", vec![Endpoint::new(url).with_protocol(protocol)]);
    let config = ClientConfig::builder()
        .max_connections(connections)
        .pool_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    NetworkMcpClient::builder(Arc::new(discovery))
        .config(config)
        .build()
        .unwrap()
}
