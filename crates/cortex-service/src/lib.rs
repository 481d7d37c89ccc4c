//! The Cortex service kit: register tools and resources once, serve them over
//! the Cortex HTTP dialect.
//!
//! A service is a [`Service`]: a registry of [`Tool`]s (name, description,
//! JSON Schema of the arguments, async handler) and [`Resource`]s (URI
//! pattern, read handler, optional live-stream handler). [`serve`] runs it on a
//! listener the caller owns until a shutdown future the caller owns resolves,
//! so tests bind `127.0.0.1:0` and drive a real server.
//!
//! The registry is also callable directly ([`Service::call_tool`],
//! [`Service::read_resource`], [`Service::stream_resource`]): that is what an
//! in-process client uses, so both transports run the same validation,
//! idempotency and panic handling.
//!
//! # Layout
//! - [`registry`]: the [`Service`], [`Tool`] and [`Resource`] types and dispatch.
//! - [`error`]: [`ServiceError`], what handlers return, and how it becomes a response.
//! - [`idempotency`]: keyed tool calls run once; the store that remembers them.
//! - [`pattern`]: resource URI patterns such as `history/{user_id}/limit/{n}`.
//! - [`prompt`]: [`Prompt`]s (MCP `prompts/*`) and completers of their
//!   arguments and of resource pattern parameters (`completion/complete`).
//! - [`notify`]: [`CallContext::log`], log messages to an MCP caller.
//! - [`ask`]: [`CallContext::elicit`] and [`CallContext::sample`], requests
//!   from a handler to its MCP caller, answered on the same session.
//! - [`routes`]: the axum routes of the dialect.
//! - [`metrics`]: `GET /metrics`: per tool and resource pattern, calls,
//!   errors by code and latency; open streams and connections.
//! - [`mcp`]: standard MCP (Streamable HTTP) at `/mcp`, from the same registry.
//! - [`server`]: [`serve`] with graceful shutdown.
//! - [`config`]: [`ServiceConfig`], [`McpConfig`] and [`HttpLimits`]:
//!   limits, timings, and the bounds on what one client can hold.
//! - [`auth`]: [`AuthConfig`]: bearer tokens (JWT) checked in front of every
//!   route, and the verified [`Caller`] in each handler's [`CallContext`].
//! - [`tls`]: [`TlsConfig`]: TLS on the listener from PEM files,
//!   optionally requiring client certificates (mutual TLS).
//! - [`in_process`]: [`InProcessMcpClient`], the `McpClient` of services in
//!   this process: the registry called directly, no sockets.
//!
//! # Example
//! ```no_run
//! use cortex_service::{serve, Service, Tool, ServiceConfig};
//! use serde_json::json;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let service = Service::builder("echo", "0.1.0")
//!     .tool(Tool::new(
//!         "echo",
//!         "Returns its arguments.",
//!         json!({"type": "object"}),
//!         |_ctx, args| async move { Ok(serde_json::Value::Object(args)) },
//!     ))
//!     .build()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! serve(listener, service, ServiceConfig::default(), async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! # Ok(()) }
//! ```

pub mod ask;
pub mod auth;
mod bounds;
pub mod call;
pub mod config;
mod conn;
pub mod error;
pub mod idempotency;
pub mod in_process;
pub mod mcp;
pub mod metrics;
pub mod notify;
mod outbox;
mod paths;
pub mod pattern;
mod preface;
pub mod prompt;
mod rate_log;
pub mod registry;
pub mod routes;
pub mod server;
pub mod tls;

pub use ask::{
    ClientRequestError, CreateMessageParams, CreateMessageResult, ElicitAction, ElicitResult,
    SamplingMessage, SamplingRole,
};
pub use auth::{AuthConfig, Caller};
pub use config::{HttpLimits, McpConfig, ServiceConfig};
pub use error::ServiceError;
pub use idempotency::{IdempotencyStore, InMemoryIdempotencyStore};
pub use in_process::InProcessMcpClient;
pub use notify::LogLevel;
pub use pattern::{MAX_SEGMENT_ID_BYTES, Params, check_id_length, check_segment_id};
pub use prompt::{Completer, Prompt, PromptArgument, PromptContent, PromptMessage, Role};
pub use registry::{
    BuildError, CallContext, EventStream, Resource, ResourceContent, Service, ServiceBuilder, Tool,
};
pub use routes::Stopping;
pub use server::{serve, shutdown_signal};
pub use tls::{TlsConfig, TlsSetupError};
