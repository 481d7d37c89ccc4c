//! What an MCP server may ask of its client: `elicitation/create` (ask the
//! user for input), `sampling/createMessage` (ask the application's model),
//! `roots/list` (the directories the application exposes).
//!
//! An application that offers any of them registers one
//! [`ServerRequestHandler`] on the client
//! ([`NetworkMcpClientBuilder::server_requests`](crate::network::NetworkMcpClientBuilder::server_requests)).
//! The client then declares the handler's [`capabilities`](ServerRequestHandler::capabilities)
//! at `initialize`, opens each session's standalone event stream (GET) so
//! requests that do not belong to a call of ours can arrive, and answers
//! every request with what the handler returns, whether it came on that
//! stream or inside the answer to one of our calls. Without a handler, a
//! request is answered at once with JSON-RPC `-32601` (method not found):
//! a server never waits on a client that cannot answer.
//!
//! ```no_run
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use cortex_client::server_requests::{RequestError, ServerRequestHandler, schema_defaults};
//! use serde_json::{Value, json};
//!
//! /// Accepts every elicitation with the defaults its schema gives.
//! struct Defaults;
//!
//! #[async_trait]
//! impl ServerRequestHandler for Defaults {
//!     fn capabilities(&self) -> Value {
//!         json!({"elicitation": {}})
//!     }
//!
//!     async fn handle(&self, _service: &str, method: &str, params: Value) -> Result<Value, RequestError> {
//!         match method {
//!             "elicitation/create" => {
//!                 let content = schema_defaults(&params["requestedSchema"]);
//!                 Ok(json!({"action": "accept", "content": content}))
//!             }
//!             other => Err(RequestError::method_not_found(other)),
//!         }
//!     }
//! }
//! # fn build(discovery: Arc<dyn cortex_client::ServiceDiscovery>) -> Result<(), cortex_client::McpError> {
//! let client = cortex_client::NetworkMcpClient::builder(discovery)
//!     .server_requests(Arc::new(Defaults))
//!     .build()?;
//! # Ok(()) }
//! ```

use async_trait::async_trait;
use serde_json::{Map, Value, json};

/// JSON-RPC's "method not found".
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC's "invalid params".
pub const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC's "internal error".
pub const INTERNAL_ERROR: i64 = -32603;

/// Answers the requests an MCP server sends its client.
#[async_trait]
pub trait ServerRequestHandler: Send + Sync + 'static {
    /// The client capabilities declared at `initialize`, such as
    /// `{"elicitation": {}, "sampling": {}, "roots": {"listChanged": true}}`:
    /// what [`handle`](Self::handle) answers. A server sends only what is
    /// declared.
    fn capabilities(&self) -> Value;

    /// The result of `method` (`params` as the server sent them) asked by
    /// `service`, or the error to answer with. It may take as long as it
    /// needs (a person answering a form); other calls go on meanwhile.
    async fn handle(
        &self,
        service: &str,
        method: &str,
        params: Value,
    ) -> Result<Value, RequestError>;
}

/// A JSON-RPC error answered to a server's request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code})")]
pub struct RequestError {
    /// The JSON-RPC error code.
    pub code: i64,
    /// One sentence for the server.
    pub message: String,
}

impl RequestError {
    /// `-32601`: the client does not offer `method`.
    pub fn method_not_found(method: &str) -> Self {
        Self {
            code: METHOD_NOT_FOUND,
            message: format!("the client does not offer {method}"),
        }
    }

    /// `-32602`: the request's parameters are not usable.
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self {
            code: INVALID_PARAMS,
            message: message.into(),
        }
    }

    /// `-32603`: the handler failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            code: INTERNAL_ERROR,
            message: message.into(),
        }
    }
}

/// The answer to request `id`: the handler's result or error; `ping` is
/// answered here, and anything without a handler is "method not found".
pub(crate) async fn answer(
    handler: Option<&dyn ServerRequestHandler>,
    service: &str,
    id: &Value,
    method: &str,
    params: Value,
) -> Value {
    let outcome = match (method, handler) {
        ("ping", _) => Ok(json!({})),
        (_, Some(handler)) => handler.handle(service, method, params).await,
        (_, None) => Err(RequestError::method_not_found(method)),
    };
    match outcome {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(error) => json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {"code": error.code, "message": error.message},
        }),
    }
}

/// The `default` of each property of an elicitation's `requestedSchema`
/// (a flat object schema of primitives, as MCP allows): what a client that
/// accepts without asking, or that fills a form's initial values, sends.
/// Properties without a default are left out.
pub fn schema_defaults(requested_schema: &Value) -> Map<String, Value> {
    requested_schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|properties| {
            properties
                .iter()
                .filter_map(|(name, property)| {
                    property
                        .get("default")
                        .map(|value| (name.clone(), value.clone()))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Elicits;

    #[async_trait]
    impl ServerRequestHandler for Elicits {
        fn capabilities(&self) -> Value {
            json!({"elicitation": {}})
        }

        async fn handle(
            &self,
            service: &str,
            method: &str,
            params: Value,
        ) -> Result<Value, RequestError> {
            match method {
                "elicitation/create" => Ok(
                    json!({"action": "accept", "content": {"from": service, "asked": params["message"]}}),
                ),
                other => Err(RequestError::method_not_found(other)),
            }
        }
    }

    #[tokio::test]
    async fn requests_are_answered_by_the_handler_or_refused_at_once() {
        let id = json!(7);
        let with = Some(&Elicits as &dyn ServerRequestHandler);
        let answer_of = |handler, method: &'static str| {
            let id = id.clone();
            async move { answer(handler, "s", &id, method, json!({"message": "name?"})).await }
        };
        assert_eq!(
            answer_of(with, "elicitation/create").await,
            json!({"jsonrpc": "2.0", "id": 7, "result": {"action": "accept", "content": {"from": "s", "asked": "name?"}}})
        );
        assert_eq!(
            answer_of(with, "sampling/createMessage").await["error"]["code"],
            METHOD_NOT_FOUND
        );
        assert_eq!(
            answer_of(None, "elicitation/create").await["error"]["code"],
            METHOD_NOT_FOUND
        );
        assert_eq!(answer_of(None, "ping").await["result"], json!({}));
    }

    #[test]
    fn defaults_come_from_the_schema() {
        let schema = json!({"type": "object", "properties": {
            "name": {"type": "string", "default": "John Doe"},
            "age": {"type": "integer", "default": 30},
            "nick": {"type": "string"}
        }});
        let defaults = schema_defaults(&schema);
        assert_eq!(
            Value::Object(defaults),
            json!({"name": "John Doe", "age": 30})
        );
        assert!(schema_defaults(&json!("not a schema")).is_empty());
    }
}
