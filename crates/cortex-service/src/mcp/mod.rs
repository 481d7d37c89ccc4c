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
//! | `prompts/list`, `prompts/get` | [`Service::prompts`], [`Service::get_prompt`] |
//! | `completion/complete` | the completers of prompt arguments and resource parameters |
//! | `logging/setLevel` | the session's level for [`CallContext::log`] |
//!
//! A `tools/call` whose request carries `_meta.progressToken`, from a client
//! accepting `text/event-stream`, is answered as an SSE stream carrying the
//! call's [`CallContext::progress`] and log messages before its response. A
//! `tools/call` from such a client without one is answered as JSON unless
//! its handler asks the client something ([`CallContext::elicit`],
//! [`CallContext::sample`]) or ends its stream early
//! ([`CallContext::end_stream`]) first: then the answer becomes an SSE
//! stream, and the client's answers come back as POSTed responses of the
//! same session. On 2025-11-25 sessions these streams carry event ids, so a
//! `GET` with `Last-Event-ID` resumes them. Every other request is answered
//! as JSON.
//!
//! The URI scheme is the service's name (`memory://history/{user_id}`), see
//! [`uri_scheme`].
//!
//! [`Service::call_tool`]: crate::Service::call_tool
//! [`Service::read_resource`]: crate::Service::read_resource
//! [`Service::stream_resource`]: crate::Service::stream_resource
//! [`Service::tools`]: crate::Service::tools
//! [`Service::prompts`]: crate::Service::prompts
//! [`Service::get_prompt`]: crate::Service::get_prompt
//! [`CallContext::log`]: crate::CallContext::log
//! [`CallContext::progress`]: crate::CallContext::progress
//! [`CallContext::elicit`]: crate::CallContext::elicit
//! [`CallContext::sample`]: crate::CallContext::sample
//! [`CallContext::end_stream`]: crate::CallContext::end_stream

mod dispatch;
mod http;
pub(crate) mod jsonrpc;
mod param_headers;
mod reply;
mod resources;
mod session;
mod stateless;

use axum::Router;
use tokio::sync::watch;

use crate::config::ServiceConfig;
use crate::registry::Service;

pub use resources::uri_scheme;

pub(crate) use http::check_origin;

/// A request refused before it reached `/mcp` (by the kit's bounds), as
/// MCP clients read errors: a JSON-RPC error without an id.
pub(crate) fn refusal(status: axum::http::StatusCode, message: &str) -> axum::response::Response {
    reply::rpc_error(
        status,
        None,
        &jsonrpc::RpcError::new(jsonrpc::INVALID_REQUEST, message.to_string()),
    )
}

pub use crate::paths::MCP_PATH;

/// The session-based revisions served, newest first. An `initialize` asking
/// for another version is answered with the first.
pub const SESSION_VERSIONS: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];

/// The stateless revision served beside the session-based ones.
pub const STATELESS_VERSION: &str = "2026-07-28";

pub use crate::config::McpConfig;

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
    // A method router, not a service: a service is cloned whole (a boxed
    // route per HTTP method) for every request, a method router's route
    // only for the request's method.
    router.route(
        MCP_PATH,
        http::endpoint(service.clone(), config.clone(), stopping.clone()),
    )
}
