//! The Cortex network MCP client.
//!
//! One interface, [`McpClient`], to call tools and read and stream resources
//! on named services, implemented here by [`NetworkMcpClient`] over HTTP
//! (the Cortex dialect or standard MCP). The interface and its errors live
//! in the small `cortex-mcp-api` crate, re-exported here; services in the
//! same process are called through `cortex_service::InProcessMcpClient`,
//! which implements the same trait, so this crate compiles no server code.
//!
//! # Layout
//! - [`api`]: the [`McpClient`] trait, [`Resource`], [`StreamEvent`]
//!   (re-exported from `cortex-mcp-api`).
//! - [`error`]: [`McpError`], what every call can fail with (re-exported).
//! - [`config`]: [`ClientConfig`]: the seed's nine options and ours, from code, TOML and env.
//! - [`discovery`]: names to endpoints ([`ServiceDiscovery`], [`StaticDiscovery`];
//!   [`DiscoverySpec`] names a backend in one string, as the config file's `discovery` key).
//! - [`network`]: [`NetworkMcpClient`]: picks a dialect per service.
//! - `engine`: one call's life: deadline, budget, endpoint choice, breaker,
//!   pool, retries, classification; imports no module above it.
//! - `dialect`: what a dialect answers; `cortex`: the Cortex dialect.
//! - [`forward`]: [`with_authorization`], a caller's credentials on the calls made for it
//!   (re-exported).
//! - [`progress`]: [`progress::CallOptions`], per-call options of an MCP
//!   tool call: progress to the caller, a deadline progress pushes out.
//! - [`tasks`]: [`tasks::TaskPolicy`], the MCP tasks extension: a tool call
//!   the server runs as a task, polled to its end.
//! - [`notifications`]: [`notifications::NotificationHandler`], a server's
//!   log messages and list changes for the application.
//! - [`oauth`]: OAuth 2.1 for MCP servers that require authorization
//!   ([`NetworkMcpClientBuilder::oauth`]).
//! - `mcp`: standard MCP (Streamable HTTP, the stateless 2026-07-28
//!   revision, the legacy HTTP+SSE transport) for services whose discovery
//!   entry says `protocol = "mcp"` (or `"auto"`), over the same machinery.
//! - `pool`: the connection pool with a hard cap per endpoint, waiters
//!   served in turn.
//! - [`proxy`]: HTTP proxies (forwarding or `CONNECT`), [`proxy::ProxyError`].
//! - [`tls`]: TLS to `https://` endpoints (rustls): trust and client certificates.
//! - `operation`: what one exchange is, for errors, metrics and retry safety.
//! - `stream`: resumable SSE streams.
//! - [`metrics`]: per service and operation counters, Prometheus text.
//! - [`typed`]: [`MemoryServiceClient`], [`CognitionServiceClient`], [`call_batch`].
//!
//! # Example
//! ```no_run
//! use std::sync::Arc;
//! use cortex_client::{McpClient, NetworkMcpClient, StaticDiscovery};
//! use serde_json::json;
//!
//! # async fn run() -> Result<(), cortex_client::McpError> {
//! let discovery = Arc::new(StaticDiscovery::new().with("memory", "http://127.0.0.1:9000"));
//! let client = NetworkMcpClient::new(discovery)?;
//! let stored = client
//!     .call_tool("memory", "store_input", json!({"user_id": "u1", "input_data": {"content": "hi"}}))
//!     .await?;
//! let history = client.read_resource("memory", "history/u1").await?;
//! println!("{stored} {}", history.content);
//! # Ok(()) }
//! ```

pub use cortex_mcp_api::{api, error, forward};
pub mod config;
/// Service discovery, re-exported from `cortex-discovery`.
pub use cortex_discovery as discovery;
mod cortex;
mod dialect;
mod engine;
mod health_probe;
mod mcp;
pub mod metrics;
pub mod network;
pub mod notifications;
pub mod oauth;
mod operation;
mod pool;
pub mod progress;
pub mod proxy;
pub mod server_requests;
mod stream;
pub mod tasks;
pub mod tls;
pub mod typed;

pub use config::ClientConfig;
pub use cortex_discovery::Balancer;
pub use cortex_discovery::{
    DiscoveryError, DiscoverySpec, DiscoverySpecError, Endpoint, EndpointSet, ServiceDiscovery,
    StaticDiscovery,
};
pub use cortex_mcp_api::{
    Cause, ConfigError, EventStream, McpClient, McpError, Resource, Retry, StreamEvent,
    with_authorization,
};
pub use engine::{StaticToken, TokenProvider};
pub use health_probe::ClientHealthProbe;
pub use mcp::McpSessionInfo;
pub use metrics::EndpointStatus;
pub use network::{McpFeatures, NetworkMcpClient, NetworkMcpClientBuilder};
pub use pool::PoolStats;
pub use typed::{
    BatchCall, CognitionServiceClient, ContextQuery, HistoryPage, MemoryServiceClient,
    StoreReceipt, call_batch,
};

/// `next`, `take`, `map` and the rest on an [`EventStream`], re-exported
/// from `futures` so that reading a stream needs no dependency of its own:
/// `use cortex_client::StreamExt;`, then `stream.next().await`.
pub use futures::StreamExt;

/// The README's Rust examples, compiled as doc tests
/// (`cargo test -p cortex-client --doc`), so that they keep compiling.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

#[cfg(test)]
mod readme {
    /// The README's "Using the client from Rust" shows
    /// `examples/quickstart.rs` as it is, so the program a reader copies is
    /// the one `cargo build --examples` builds.
    #[test]
    fn the_readme_shows_the_quickstart_example_as_it_is() {
        let readme = include_str!("../../../README.md");
        let example = include_str!("../examples/quickstart.rs");
        let block = readme
            .split_once("## Using the client from Rust")
            .and_then(|(_, section)| section.split_once("```rust,no_run\n"))
            .and_then(|(_, rest)| rest.split_once("\n```\n"))
            .map(|(block, _)| format!("{block}\n"))
            .unwrap_or_else(|| {
                panic!("README.md: no ```rust,no_run block under \"## Using the client from Rust\"")
            });
        assert!(
            block == example,
            "the README's quickstart differs from crates/cortex-client/examples/quickstart.rs: \
             copy the file into the README's ```rust,no_run block"
        );
    }
}
