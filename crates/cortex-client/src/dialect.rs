//! What a dialect is: the calls of [`McpClient`](crate::McpClient), said in
//! one wire language over the [`Engine`](crate::engine::Engine). Two
//! implement it: the Cortex dialect ([`crate::cortex`]) and standard MCP
//! ([`crate::mcp`]); [`crate::network`] picks one per service and has no
//! code of either.

use std::future::Future;
use std::sync::Arc;

use cortex_discovery::Endpoint;
use cortex_proto::listing::{Health, ResourceList, ToolList};
use serde_json::Value;

use crate::api::{EventStream, Resource};
use crate::engine::ServiceState;
use crate::error::McpError;

/// The calls every dialect answers, each on a service whose state the
/// engine keeps. Futures are `Send`: calls run on any runtime thread.
///
/// Dispatched statically (network.rs matches on the service's dialect), so
/// the common path pays for no boxed future.
pub(crate) trait Dialect: Send + Sync {
    /// The service answers (health, or `ping`).
    fn connect(
        &self,
        service: &Arc<ServiceState>,
    ) -> impl Future<Output = Result<(), McpError>> + Send;

    /// Calls `tool` with `arguments` (a JSON object), under the caller's
    /// `idempotency_key` when given.
    fn call_tool(
        &self,
        service: &Arc<ServiceState>,
        tool: &str,
        arguments: Value,
        idempotency_key: Option<&str>,
    ) -> impl Future<Output = Result<Value, McpError>> + Send;

    /// Reads the resource `uri`.
    fn read_resource(
        &self,
        service: &Arc<ServiceState>,
        uri: &str,
    ) -> impl Future<Output = Result<Resource, McpError>> + Send;

    /// Streams the resource `uri`, after `last_event_id` when given.
    fn stream_resource(
        &self,
        service: Arc<ServiceState>,
        uri: &str,
        last_event_id: Option<String>,
    ) -> impl Future<Output = Result<EventStream, McpError>> + Send;

    /// Every tool, with its description and argument schema.
    fn list_tools(
        &self,
        service: &Arc<ServiceState>,
    ) -> impl Future<Output = Result<ToolList, McpError>> + Send;

    /// Every resource pattern.
    fn list_resources(
        &self,
        service: &Arc<ServiceState>,
    ) -> impl Future<Output = Result<ResourceList, McpError>> + Send;

    /// The service's health now, asked once, of one replica when
    /// `endpoint` is given: `200` and `healthy`, or `503` and `unhealthy`.
    fn health(
        &self,
        service: &Arc<ServiceState>,
        endpoint: Option<&Endpoint>,
    ) -> impl Future<Output = Result<(u16, Health), McpError>> + Send;
}
