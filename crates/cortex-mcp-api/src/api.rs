//! The one client interface and the values it returns.

use cortex_proto::listing::{Health, ResourceList, ToolList};
use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;
use serde_json::Value;

use crate::error::McpError;

/// The content of a resource read, with its media type (the seed's
/// `(content, mime_type)` pair).
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// JSON content; text content arrives as a JSON string.
    pub content: Value,
    /// The media type the service declared.
    pub mime_type: String,
}

/// One event of a resource stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    /// The event id (resumable position), when the service sent one.
    pub id: Option<String>,
    /// The event type (`message` when untyped).
    pub event: String,
    /// The data, parsed as JSON; data that is not JSON arrives as a string.
    pub data: Value,
}

impl StreamEvent {
    /// The event as a caller sees it: data parsed as JSON where it is JSON,
    /// the event name `message` when the stream gave none.
    pub fn from_sse(event: cortex_proto::sse::Event) -> Self {
        let data = serde_json::from_str(&event.data).unwrap_or(Value::String(event.data));
        Self {
            id: event.id,
            event: event.event.unwrap_or_else(|| "message".to_string()),
            data,
        }
    }
}

/// A stream of events. Ends when the service ends the stream; after
/// reconnects are exhausted it yields one error and ends.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, McpError>> + Send>>;

/// Calls tools and reads and streams resources on named services.
///
/// Both `cortex_client::NetworkMcpClient` and
/// `cortex_service::in_process::InProcessMcpClient` implement it, and one
/// test suite runs against both.
#[async_trait]
pub trait McpClient: Send + Sync {
    /// Checks that `service` can be reached (resolves it and asks its
    /// health). Calls do not need it: they connect on demand.
    async fn connect(&self, service: &str) -> Result<(), McpError>;

    /// Calls `tool` on `service` with `arguments` (a JSON object); returns
    /// the tool's result.
    async fn call_tool(
        &self,
        service: &str,
        tool: &str,
        arguments: Value,
    ) -> Result<Value, McpError>;

    /// As [`call_tool`](Self::call_tool), with the caller's idempotency
    /// key: a later call with the same key (after a lost answer, or from a
    /// restarted process) runs nothing and answers as the first did, where
    /// the service keeps keys (the Cortex dialect's `Idempotency-Key`; the
    /// memory service keeps them durably). Repeating such a call is safe, so
    /// it is retried after it may have run. Over standard MCP, which has no
    /// idempotency key, the key is not sent and the call is retried only as
    /// the tool's `idempotentHint` allows.
    async fn call_tool_with_key(
        &self,
        service: &str,
        tool: &str,
        arguments: Value,
        idempotency_key: &str,
    ) -> Result<Value, McpError>;

    /// Reads the resource `uri` (such as `history/u1`) of `service`.
    async fn read_resource(&self, service: &str, uri: &str) -> Result<Resource, McpError>;

    /// Streams the resource `uri` of `service`. Fails fast (unknown service
    /// or resource, circuit open) before returning; later faults are retried
    /// by resuming after the last event, and only arrive as an item once
    /// reconnects are exhausted.
    async fn stream_resource(&self, service: &str, uri: &str) -> Result<EventStream, McpError>;

    /// Every tool of `service`, sorted by name, with its description and
    /// the JSON Schema of its arguments (`GET /tools`, or `tools/list` over
    /// MCP).
    async fn list_tools(&self, service: &str) -> Result<ToolList, McpError>;

    /// Every resource pattern of `service` (`GET /resources`, or resource
    /// templates and resources over MCP).
    async fn list_resources(&self, service: &str) -> Result<ResourceList, McpError>;

    /// The health of `service` now, asked once: `200` and `healthy`, or
    /// `503` and `unhealthy` with the failing checks. Over MCP a `ping`
    /// that answers is healthy. An unreachable service is an error.
    async fn health(&self, service: &str) -> Result<(u16, Health), McpError>;

    /// Closes every connection; later calls fail with [`McpError::Closed`].
    async fn close(&self);
}
