//! Cortex against rmcp, the official Rust SDK of MCP: the same tools on a
//! Cortex service kit and on an rmcp server, and a client of each kind, for
//! the interop tests (`tests/interop.rs`: each client against each server)
//! and the bench (`benches/mcp_vs_rmcp.rs`). Test and bench support only
//! (`publish = false`).
//!
//! Both servers serve the same two tools: `item` returns [`item`] (as
//! `structuredContent` and its text copy), and `fail` fails as a tool
//! (`isError: true`) with the message [`FAILURE`].

use std::sync::Arc;
use std::time::Duration;

use cortex_client::discovery::{Endpoint, Protocol};
use cortex_client::{ClientConfig, NetworkMcpClient, StaticDiscovery};
use cortex_service::{Service, ServiceConfig, ServiceError, Tool};
use cortex_test_support::TestServer;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData,
    ListToolsResult, PaginatedRequestParams, ProtocolVersion, ServerCapabilities, ServerConfig,
};
use rmcp::service::{MaybeSendFuture, RequestContext, RoleClient, RoleServer, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ClientLifecycleMode, ClientServiceExt, ServerHandler};
use serde_json::{Value, json};
use tokio_util::sync::{CancellationToken, DropGuard};

/// The service name the Cortex client knows either server by.
pub const SERVICE: &str = "bench";

/// What `fail` says on both servers.
pub const FAILURE: &str = "the item is locked";

/// What `item` returns on both servers: the shape of a memory item.
pub fn item() -> Value {
    json!({
        "content": "x",
        "content_type": "text/plain",
        "conversation_id": null,
        "created_at": "2026-12-05T04:31:46.381Z",
        "input_data": {"content": "x"},
        "item_id": 1,
        "timestamp": "2026-12-05T04:31:46.381Z",
        "updated_at": null,
        "user_id": "u1"
    })
}

fn item_schema() -> Value {
    json!({"type": "object", "properties": {"item_id": {"type": "integer"}}})
}

/// The Cortex service kit serving `item` and `fail`, in its defaults.
///
/// # Panics
/// When the service cannot be built or bound.
pub async fn cortex_kit() -> TestServer {
    let service = Service::builder(SERVICE, "1")
        .tool(Tool::new(
            "item",
            "Returns a fixed item.",
            item_schema(),
            |_ctx, _args| async { Ok(item()) },
        ))
        .tool(Tool::new(
            "fail",
            "Fails as a tool.",
            json!({"type": "object"}),
            |_ctx, _args| async { Err(ServiceError::internal(FAILURE)) },
        ))
        .build()
        .unwrap_or_else(|e| panic!("the kit's service: {e}"));
    TestServer::start(service, ServiceConfig::default()).await
}

/// rmcp's server, serving `item` and `fail`.
#[derive(Clone)]
struct ItemServer;

impl ServerHandler for ItemServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<ListToolsResult, ErrorData>> + MaybeSendFuture + '_ {
        let schema = |value: Value| match value {
            Value::Object(map) => Arc::new(map),
            _ => Arc::default(),
        };
        std::future::ready(Ok(ListToolsResult::with_all_items(vec![
            rmcp::model::Tool::new(
                "fail",
                "Fails as a tool.",
                schema(json!({"type": "object"})),
            ),
            rmcp::model::Tool::new("item", "Returns a fixed item.", schema(item_schema())),
        ])))
    }

    fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<CallToolResponse, ErrorData>> + MaybeSendFuture + '_ {
        std::future::ready(match request.name.as_ref() {
            "item" => Ok(CallToolResult::structured(item()).into()),
            "fail" => Ok(CallToolResult::error(vec![ContentBlock::text(FAILURE)]).into()),
            other => Err(ErrorData::invalid_params(
                format!("no tool named `{other}`"),
                None,
            )),
        })
    }
}

/// rmcp's server on loopback, in its fastest setting (no sessions, JSON
/// answers), `TCP_NODELAY` as the kit; it stops when dropped.
pub struct RmcpServer {
    /// Its `/mcp` URL.
    pub url: String,
    _stop: DropGuard,
}

/// Starts rmcp's server.
///
/// # Panics
/// When it cannot bind a loopback port.
pub async fn rmcp_server() -> RmcpServer {
    use axum::serve::ListenerExt;
    let stop = CancellationToken::new();
    let service: StreamableHttpService<ItemServer, LocalSessionManager> =
        StreamableHttpService::new(
            || Ok(ItemServer),
            Default::default(),
            StreamableHttpServerConfig::default()
                .with_legacy_session_mode(false)
                .with_json_response(true)
                .with_cancellation_token(stop.child_token()),
        );
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let url = format!(
        "http://{}/mcp",
        listener
            .local_addr()
            .unwrap_or_else(|e| panic!("address: {e}"))
    );
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let serving = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { serving.cancelled_owned().await })
            .await;
    });
    RmcpServer {
        url,
        _stop: stop.drop_guard(),
    }
}

/// A Cortex network client that knows the MCP server at `url` as
/// [`SERVICE`].
///
/// # Panics
/// When the client cannot be built (it always can).
pub fn cortex_client(url: &str) -> NetworkMcpClient {
    let discovery = StaticDiscovery::new();
    discovery.register(
        SERVICE,
        vec![Endpoint::new(url.to_owned()).with_protocol(Protocol::Mcp)],
    );
    let config = ClientConfig::builder()
        .max_connections(32)
        .pool_timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|e| panic!("config: {e}"));
    NetworkMcpClient::builder(Arc::new(discovery))
        .config(config)
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"))
}

/// An rmcp client of the MCP server at `url`, started: it prefers the
/// stateless revision (2026-07-28) and falls back to 2025-11-25.
///
/// # Panics
/// When it cannot start (the server did not answer its handshake).
pub async fn rmcp_client(url: &str) -> RunningService<RoleClient, rmcp::model::ClientConfig> {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()),
    );
    rmcp::model::ClientConfig::default()
        .serve_with_lifecycle(
            transport,
            ClientLifecycleMode::Auto {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                legacy_version: Some(ProtocolVersion::V_2025_11_25),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("rmcp's client did not start against {url}: {e}"))
}
