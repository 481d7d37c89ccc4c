//! Standard MCP at `/mcp`: the Streamable HTTP transport over the same
//! registry the Cortex dialect serves.
//!
//! Every service built on the kit answers MCP clients (Inspector, desktop
//! assistants, SDK clients) as well as Cortex clients: the tools, resources,
//! schema checks, idempotency and panic handling are the ones
//! [`Service::call_tool`], [`Service::read_resource`] and
//! [`Service::stream_resource`] run for the dialect.
//!
//! # Protocol revisions
//! - `2025-03-26`, `2025-06-18`, `2025-11-25`: `initialize` opens a session
//!   (`Mcp-Session-Id`); a `GET` opens the session's server→client SSE stream,
//!   where `notifications/resources/updated` arrive for subscribed resources;
//!   `DELETE` ends the session. JSON-RPC batches are accepted only on a
//!   session negotiated at (or a request declaring) `2025-03-26`.
//! - `2026-07-28` (stateless): a request carrying
//!   `_meta["io.modelcontextprotocol/protocolVersion"]` and no session is
//!   served on its own, with `server/discover`, the mirrored request headers
//!   (`Mcp-Method`, `Mcp-Name`, `Mcp-Param-*`) checked against the body, and
//!   `subscriptions/listen` in place of `resources/subscribe`.
//!
//! # Mapping
//! | MCP | registry |
//! |---|---|
//! | `tools/list` | [`Service::tools`]: `name`, `description`, `inputSchema` |
//! | `tools/call` | [`Service::call_tool`]; a failure is a result with `isError: true` |
//! | `resources/list` | patterns without parameters, as `<scheme>://<pattern>` |
//! | `resources/templates/list` | patterns with parameters, as `uriTemplate` |
//! | `resources/read` | [`Service::read_resource`] on the URI without its scheme |
//! | `resources/subscribe` | [`Service::stream_resource`] run in a task per subscription |
//!
//! The URI scheme is the service's name (`memory://history/{user_id}`), see
//! [`uri_scheme`].
//!
//! [`Service::call_tool`]: crate::Service::call_tool
//! [`Service::read_resource`]: crate::Service::read_resource
//! [`Service::stream_resource`]: crate::Service::stream_resource
//! [`Service::tools`]: crate::Service::tools

mod dispatch;
mod http;
mod jsonrpc;
mod outbox;
mod resources;
mod session;
mod stateless;

use std::time::Duration;

use axum::Router;
use tokio::sync::watch;

use crate::registry::Service;
use crate::server::ServiceConfig;

pub use resources::uri_scheme;

/// The path MCP is served at.
pub const MCP_PATH: &str = "/mcp";

/// The session-based revisions served, newest first. An `initialize` asking
/// for another version is answered with the first.
pub const SESSION_VERSIONS: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];

/// The stateless revision served beside the session-based ones.
pub const STATELESS_VERSION: &str = "2026-07-28";

/// Limits and policy of the MCP endpoint; part of [`ServiceConfig`].
#[derive(Debug, Clone)]
pub struct McpConfig {
    /// Serve `/mcp` at all.
    pub enabled: bool,
    /// A session unused for this long (and with no open stream) is ended;
    /// its id then gets 404, which tells the client to initialize again.
    pub session_ttl: Duration,
    /// Sessions open at once; an `initialize` beyond gets 503.
    pub max_sessions: usize,
    /// Browser origins allowed besides loopback ones (`http://localhost:*`,
    /// `http://127.0.0.1:*`, `http://[::1]:*`), exact `scheme://host[:port]`
    /// strings; `"*"` allows every origin. A request with another `Origin`
    /// gets 403. Requests without `Origin` (not from a browser) are allowed.
    pub allowed_origins: Vec<String>,
    /// Notifications kept per session (or per `subscriptions/listen`
    /// stream) for a reader that is slow or reconnecting; when full, the
    /// oldest is dropped, with a log line.
    pub notification_buffer: usize,
    /// Resource subscriptions per session (or per `subscriptions/listen`).
    pub max_subscriptions: usize,
    /// Tool calls of one JSON-RPC batch run at most this many at a time.
    pub batch_concurrency: usize,
    /// How long a stateless (2026-07-28) client may cache `tools/list`,
    /// `resources/list`, `resources/templates/list` and `server/discover`
    /// (`ttlMs`, with `cacheScope: "public"`: the registry is the same for
    /// every caller and fixed while the process runs).
    pub list_cache_ttl: Duration,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            session_ttl: Duration::from_secs(30 * 60),
            max_sessions: 10_000,
            allowed_origins: Vec::new(),
            notification_buffer: 256,
            max_subscriptions: 64,
            batch_concurrency: 8,
            list_cache_ttl: Duration::from_secs(60),
        }
    }
}

/// Mounts `/mcp` on `router` (unless [`McpConfig::enabled`] is false).
/// Streams and subscriptions end when `stopping` turns true.
pub fn mount<S>(
    router: Router<S>,
    service: &Service,
    config: &ServiceConfig,
    stopping: &watch::Receiver<bool>,
) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    if !config.mcp.enabled {
        return router;
    }
    router.route_service(
        MCP_PATH,
        http::endpoint(service.clone(), config.clone(), stopping.clone()),
    )
}
