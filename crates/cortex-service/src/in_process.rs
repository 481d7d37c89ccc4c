//! [`InProcessMcpClient`]: the same interface over services registered in
//! this process (the seed's Phase 3): no sockets, the service kit's registry
//! called directly, so validation, idempotency and panic isolation are the
//! same as over HTTP.
//!
//! It has no token of its own: a call acts as the process itself, trusted
//! like any other code in it (`ctx.caller` is `None`, which every check
//! allows). Given an [`AuthConfig`](crate::AuthConfig) with
//! [`InProcessMcpClient::verify_forwarded`], it verifies a forwarded
//! caller's `Authorization` as the HTTP layer would, and the callee sees
//! that caller.

use std::collections::HashMap;
use std::sync::RwLock;

use async_trait::async_trait;
use cortex_mcp_api::{EventStream, McpClient, McpError, Resource, StreamEvent};
use cortex_proto::ErrorCode;
use cortex_proto::listing::{Health, ResourceList, ToolList};
use futures::StreamExt;
use serde_json::Value;

use crate::error::ServiceError;
use crate::registry::{CallContext, ResourceContent, Service};

/// Calls services registered in the same process.
#[derive(Default)]
pub struct InProcessMcpClient {
    services: RwLock<HashMap<String, Service>>,
    /// Set by `close`: later calls fail with `Closed`, as over the network.
    closed: std::sync::atomic::AtomicBool,
    /// Verifies a forwarded caller's token (see [`Self::verify_forwarded`]).
    auth: crate::auth::AuthConfig,
}

impl std::fmt::Debug for InProcessMcpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessMcpClient").finish_non_exhaustive()
    }
}

impl InProcessMcpClient {
    /// A client with no services.
    pub fn new() -> Self {
        Self::default()
    }

    /// Verifies the token of a forwarded caller (a handler's work inside
    /// `with_authorization`) with `auth`, as the HTTP layer would: the
    /// callee then sees that caller in `ctx.caller`, and a bad token fails
    /// the call with `unauthorized`. Calls without a forwarded caller act
    /// as the process itself, trusted (`ctx.caller` is `None`), with this
    /// or without it.
    pub fn verify_forwarded(mut self, auth: crate::auth::AuthConfig) -> Self {
        self.auth = auth;
        self
    }

    /// Registers `service` under its own name.
    pub fn register(&self, service: Service) {
        self.services
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(service.name().to_string(), service);
    }

    fn service(&self, name: &str) -> Result<Service, McpError> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(McpError::Closed);
        }
        self.services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| McpError::ServiceNotFound {
                service: name.to_string(),
                reason: "not registered in this process".into(),
            })
    }

    /// A tool call, keyed when `idempotency_key` is given (the registry
    /// then runs it once per key, as over HTTP).
    async fn call(
        &self,
        service: &str,
        tool: &str,
        arguments: Value,
        idempotency_key: Option<&str>,
    ) -> Result<Value, McpError> {
        let registry = self.service(service)?;
        let Value::Object(arguments) = arguments else {
            return Err(McpError::arguments_not_an_object(service, tool, &arguments));
        };
        // The callee runs as itself, as a remote one would: its own calls
        // do not carry our caller's credentials unless it forwards them.
        let mut ctx = self
            .context()
            .await
            .map_err(|e| map_error(service, Operation::Tool(tool), e))?;
        ctx.idempotency_key = idempotency_key.map(str::to_owned);
        cortex_mcp_api::forward::as_client(registry.call_tool(ctx, tool, arguments))
            .await
            .map_err(|e| map_error(service, Operation::Tool(tool), e))
    }

    /// The callee's context: a new request id, the forwarded caller's
    /// `Authorization` (as the network client would send it) and, when
    /// this client verifies forwarded tokens, the caller it names.
    async fn context(&self) -> Result<CallContext, ServiceError> {
        let forwarded = cortex_mcp_api::forward::forwarded();
        let caller = match &forwarded {
            Some(value) if self.auth.is_enabled() => self
                .auth
                .verify(Some(value))
                .await
                .map_err(|e| e.service_error())?,
            _ => None,
        };
        Ok(CallContext {
            request_id: uuid::Uuid::new_v4().to_string(),
            // Every call runs once here; a caller's key makes a repeat replay.
            idempotency_key: None,
            // As the network client would send it: a forwarded caller's
            // credentials (see `cortex_mcp_api::forward`).
            headers: forwarded
                .map(|value| {
                    let mut headers = http::HeaderMap::new();
                    headers.insert(http::header::AUTHORIZATION, value);
                    headers
                })
                .unwrap_or_default(),
            caller,
            notifier: None,
            stream: None,
        })
    }
}

/// The error a network client would have produced for the same envelope.
fn map_error(service: &str, operation: Operation<'_>, error: ServiceError) -> McpError {
    match (operation, &error.code) {
        (Operation::Tool(tool), ErrorCode::ToolNotFound) => McpError::ToolNotFound {
            service: service.into(),
            tool: tool.into(),
        },
        (Operation::Resource(uri), ErrorCode::ResourceNotFound) => McpError::ResourceNotFound {
            service: service.into(),
            uri: uri.into(),
            message: error.message,
        },
        (Operation::Tool(tool), _) if error.status() >= 500 => McpError::ServiceCall {
            service: service.into(),
            tool: tool.into(),
            endpoint: "in-process".into(),
            attempts: 1,
            status: error.status(),
            message: error.message,
        },
        (Operation::Resource(uri), _) if error.status() >= 500 => McpError::ResourceRead {
            service: service.into(),
            uri: uri.into(),
            endpoint: "in-process".into(),
            attempts: 1,
            status: error.status(),
            message: error.message,
        },
        (operation, _) => McpError::Tool {
            service: service.into(),
            operation: operation.name().into(),
            status: error.status(),
            code: error.code,
            message: error.message,
            details: error.details,
        },
    }
}

#[derive(Clone, Copy)]
enum Operation<'a> {
    Tool(&'a str),
    Resource(&'a str),
}

impl Operation<'_> {
    fn name(&self) -> &str {
        match self {
            Self::Tool(n) | Self::Resource(n) => n,
        }
    }
}

#[async_trait]
impl McpClient for InProcessMcpClient {
    async fn connect(&self, service: &str) -> Result<(), McpError> {
        let service = self.service(service)?;
        match service
            .check_health()
            .await
            .into_iter()
            .find_map(|(name, r)| r.err().map(|e| format!("{name}: {e}")))
        {
            None => Ok(()),
            Some(reason) => Err(McpError::Connection {
                service: service.name().into(),
                endpoint: "in-process".into(),
                sent: false,
                cause: None,
                attempts: 1,
                reason,
            }),
        }
    }

    async fn call_tool(
        &self,
        service: &str,
        tool: &str,
        arguments: Value,
    ) -> Result<Value, McpError> {
        self.call(service, tool, arguments, None).await
    }

    async fn call_tool_with_key(
        &self,
        service: &str,
        tool: &str,
        arguments: Value,
        idempotency_key: &str,
    ) -> Result<Value, McpError> {
        self.call(service, tool, arguments, Some(idempotency_key))
            .await
    }

    async fn read_resource(&self, service: &str, uri: &str) -> Result<Resource, McpError> {
        let registry = self.service(service)?;
        let ctx = self
            .context()
            .await
            .map_err(|e| map_error(service, Operation::Resource(uri), e))?;
        let encoded = cortex_proto::path::encode_resource_uri(uri);
        let read = registry.read_resource(ctx, &encoded);
        match cortex_mcp_api::forward::as_client(read).await {
            Ok(ResourceContent::Json(content)) => Ok(Resource {
                content,
                mime_type: "application/json".into(),
            }),
            Ok(ResourceContent::Text { text, mime_type }) => Ok(Resource {
                content: Value::String(text),
                mime_type,
            }),
            // As base64 text, as an MCP client would read a `blob`.
            Ok(ResourceContent::Binary { data, mime_type }) => {
                use base64::Engine as _;
                Ok(Resource {
                    content: Value::String(base64::engine::general_purpose::STANDARD.encode(data)),
                    mime_type,
                })
            }
            Err(e) => Err(map_error(service, Operation::Resource(uri), e)),
        }
    }

    async fn stream_resource(&self, service: &str, uri: &str) -> Result<EventStream, McpError> {
        let registry = self.service(service)?;
        let ctx = self
            .context()
            .await
            .map_err(|e| map_error(service, Operation::Resource(uri), e))?;
        let encoded = cortex_proto::path::encode_resource_uri(uri);
        let open = registry.stream_resource(ctx, &encoded, None);
        let events = cortex_mcp_api::forward::as_client(open)
            .await
            .map_err(|e| map_error(service, Operation::Resource(uri), e))?;
        let service = service.to_string();
        let uri = uri.to_string();
        Ok(events
            .map(move |item| match item {
                Ok(event) => Ok(StreamEvent::from_sse(event)),
                Err(error) => Err(McpError::ResourceStream {
                    service: service.clone(),
                    uri: uri.clone(),
                    reason: error.to_string(),
                }),
            })
            .boxed())
    }

    async fn list_tools(&self, service: &str) -> Result<ToolList, McpError> {
        Ok(ToolList {
            tools: self.service(service)?.tools(),
        })
    }

    async fn list_resources(&self, service: &str) -> Result<ResourceList, McpError> {
        Ok(ResourceList {
            resources: self.service(service)?.resources(),
        })
    }

    async fn health(&self, service: &str) -> Result<(u16, Health), McpError> {
        Ok(self.service(service)?.health().await)
    }

    async fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.services
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}
