//! The Cortex dialect: `POST /tool/{tool}` with the call envelope,
//! `GET /resource/{uri}` (JSON, text, or SSE to resume with
//! `Last-Event-ID`), `GET /tools`, `GET /resources` and `GET /health`
//! (see docs/protocol.md). Every request goes through the
//! [`Engine`], which owns retries, breakers, the pool and the deadline.

use std::sync::Arc;

use bytes::Bytes;
use cortex_discovery::Endpoint;
use cortex_proto::ErrorCode;
use cortex_proto::envelope::{ToolRequest, unwrap_result};
use cortex_proto::listing::{Health, ResourceList, ToolList};
use http::{HeaderValue, Method, header};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::time::Instant;

use crate::api::{EventStream, Resource, StreamEvent};
use crate::dialect::Dialect;
use crate::engine::{
    Answer, Engine, Exchange, ServiceState, idempotency_key as idempotency_key_header,
};
use crate::error::McpError;
use crate::operation::Operation;
use crate::stream;

/// The Cortex dialect over one client's engine.
pub(crate) struct Cortex {
    engine: Arc<Engine>,
}

impl Cortex {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }

    /// GETs `path` and parses its JSON body, with at most `max_attempts`
    /// attempts, on `pin` only when given; records the call in the metrics
    /// as `operation`.
    async fn get_json<T: DeserializeOwned>(
        &self,
        service: &ServiceState,
        operation: &str,
        path: &str,
        max_attempts: u32,
        pin: Option<&Endpoint>,
    ) -> Result<T, McpError> {
        let started = Instant::now();
        let outcome = async {
            let mut exchange = Exchange::get(Operation::Read(operation), path);
            exchange.max_attempts = max_attempts;
            exchange.pin = pin.cloned();
            let (endpoint, answer) = self.engine.execute(service, &exchange).await?;
            let not_json = |message: String| McpError::ResourceRead {
                service: service.name.clone(),
                uri: operation.into(),
                endpoint: endpoint.endpoint.url.clone(),
                attempts: 1,
                status: 200,
                message,
            };
            let Answer::Full { body, .. } = answer else {
                return Err(not_json("unexpected streamed answer".into()));
            };
            serde_json::from_slice(&body)
                .map_err(|e| not_json(format!("the {path} answer is not what was expected: {e}")))
        }
        .await;
        self.engine.metrics.record(
            &service.name,
            operation,
            started.elapsed(),
            outcome.as_ref().err(),
        );
        outcome
    }
}

impl Dialect for Cortex {
    async fn connect(&self, service: &Arc<ServiceState>) -> Result<(), McpError> {
        self.engine
            .execute(
                service,
                &Exchange::get(Operation::Read("health"), "/health"),
            )
            .await
            .map(|_| ())
    }

    async fn call_tool(
        &self,
        service: &Arc<ServiceState>,
        tool: &str,
        arguments: Value,
        idempotency_key: Option<&str>,
    ) -> Result<Value, McpError> {
        let name = &service.name;
        // The caller's key, or one of ours: the same on every attempt.
        let key = match idempotency_key {
            Some(key) => HeaderValue::from_str(key).map_err(|_| McpError::InvalidRequest {
                service: name.clone(),
                operation: tool.into(),
                reason: "the idempotency key is not a valid header value".into(),
            })?,
            None => idempotency_key_header(),
        };
        let body = ToolRequest::encode_envelope(&arguments).map_err(|e| McpError::Tool {
            service: name.clone(),
            operation: tool.into(),
            code: ErrorCode::InvalidArguments,
            message: format!("arguments cannot be encoded: {e}"),
            details: Value::Null,
            status: 400,
        })?;
        let exchange = Exchange {
            method: Method::POST,
            body: Bytes::from(body),
            idempotency_key: Some(key),
            ..Exchange::get(Operation::Tool(tool), cortex_proto::path::tool(tool))
        };
        let (endpoint, answer) = self.engine.execute(service, &exchange).await?;
        let bad_answer = |message: String| McpError::ServiceCall {
            service: name.clone(),
            tool: tool.into(),
            endpoint: endpoint.endpoint.url.clone(),
            attempts: 1,
            status: 200,
            message,
        };
        let Answer::Full { body, .. } = answer else {
            return Err(bad_answer("unexpected streamed answer".into()));
        };
        if body.is_empty() {
            return Ok(Value::Null);
        }
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| bad_answer(format!("the answer is not JSON: {e}")))?;
        Ok(unwrap_result(value))
    }

    async fn read_resource(
        &self,
        service: &Arc<ServiceState>,
        uri: &str,
    ) -> Result<Resource, McpError> {
        let exchange = Exchange {
            accept: "application/json, text/event-stream;q=0.5, */*;q=0.1",
            ..Exchange::get(
                Operation::Read(uri),
                format!("/resource/{}", cortex_proto::path::encode_resource_uri(uri)),
            )
        };
        let (endpoint, answer) = self.engine.execute(service, &exchange).await?;
        let bad_answer = |message: String| McpError::ResourceRead {
            service: service.name.clone(),
            uri: uri.into(),
            endpoint: endpoint.endpoint.url.clone(),
            attempts: 1,
            status: 200,
            message,
        };
        let Answer::Full { headers, body } = answer else {
            return Err(bad_answer("unexpected streamed answer".into()));
        };
        let mime_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream");
        decode_resource(mime_type, &body).map_err(bad_answer)
    }

    async fn stream_resource(
        &self,
        service: Arc<ServiceState>,
        uri: &str,
        last_event_id: Option<String>,
    ) -> Result<EventStream, McpError> {
        let (_, body, conn) =
            stream::open(&self.engine, &service, uri, last_event_id.clone(), u32::MAX).await?;
        Ok(stream::resumable(
            self.engine.clone(),
            service,
            uri.to_string(),
            last_event_id,
            body,
            conn,
        ))
    }

    async fn list_tools(&self, service: &Arc<ServiceState>) -> Result<ToolList, McpError> {
        self.get_json(service, "tools", "/tools", u32::MAX, None)
            .await
    }

    async fn list_resources(&self, service: &Arc<ServiceState>) -> Result<ResourceList, McpError> {
        self.get_json(service, "resources", "/resources", u32::MAX, None)
            .await
    }

    /// `GET /health`, asked once (no retry: a health check reports the
    /// state now).
    async fn health(
        &self,
        service: &Arc<ServiceState>,
        endpoint: Option<&Endpoint>,
    ) -> Result<(u16, Health), McpError> {
        match self
            .get_json::<Health>(service, "health", "/health", 1, endpoint)
            .await
        {
            Ok(health) => Ok((200, health)),
            // A 503 carries the same `Health` shape; the client reads a
            // non-envelope error body as its message (up to 512 chars).
            Err(McpError::ResourceRead {
                status: 503,
                message,
                ..
            }) => Ok((
                503,
                serde_json::from_str::<Health>(&message).unwrap_or_else(|_| Health {
                    status: "unhealthy".into(),
                    service: service.name.clone(),
                    version: String::new(),
                    checks: [("error".to_string(), message.into())]
                        .into_iter()
                        .collect(),
                }),
            )),
            Err(error) => Err(error),
        }
    }
}

/// A read's body as a value: JSON as JSON; an SSE body (a server that only
/// streams resources) collected into a JSON array; anything else as text.
fn decode_resource(mime_type: &str, body: &[u8]) -> Result<Resource, String> {
    let essence = mime_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let content = if essence == "application/json" || essence.ends_with("+json") {
        serde_json::from_slice(body)
            .map_err(|e| format!("the {mime_type} body is not JSON: {e}"))?
    } else if essence == "text/event-stream" {
        let mut decoder = cortex_proto::sse::Decoder::new();
        let events = decoder.feed(body).map_err(|e| e.to_string())?;
        Value::Array(
            events
                .into_iter()
                .map(|e| StreamEvent::from_sse(e).data)
                .collect(),
        )
    } else {
        Value::String(String::from_utf8_lossy(body).into_owned())
    };
    Ok(Resource {
        content,
        mime_type: mime_type.to_string(),
    })
}
