//! What a client call can fail with.
//!
//! Every error names what failed (service, tool or resource, endpoint, and
//! how many attempts were made), and callers ask questions of it
//! ([`McpError::is_retryable`], [`McpError::status`]) instead of matching
//! strings.

use std::time::Duration;

use cortex_proto::ErrorCode;
use serde_json::Value;

use crate::config::ConfigError;

/// A failed client operation.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum McpError {
    /// Discovery does not know the service.
    #[error("service `{service}` not found: {reason}")]
    ServiceNotFound {
        /// The service name asked for.
        service: String,
        /// What discovery said.
        reason: String,
    },
    /// The service has no such tool.
    #[error("tool `{tool}` not found on service `{service}`")]
    ToolNotFound {
        /// The service.
        service: String,
        /// The tool asked for.
        tool: String,
    },
    /// The service has no such resource (or the item it names is gone).
    #[error("resource `{uri}` not found on service `{service}`: {message}")]
    ResourceNotFound {
        /// The service.
        service: String,
        /// The resource URI asked for.
        uri: String,
        /// The service's own words.
        message: String,
    },
    /// The service answered with its own error envelope for a request it
    /// judged wrong (bad arguments, forbidden, ...): not retried.
    #[error("`{operation}` on service `{service}` was refused: {code}: {message}")]
    Tool {
        /// The service.
        service: String,
        /// The tool or resource.
        operation: String,
        /// The envelope's code.
        code: ErrorCode,
        /// The envelope's message.
        message: String,
        /// The envelope's details.
        details: Value,
        /// The HTTP status it came with.
        status: u16,
    },
    /// A tool call failed on the service's side (5xx, 429) after every
    /// attempt the retry rules allowed.
    #[error(
        "call to tool `{tool}` on service `{service}` ({endpoint}) failed after {attempts} attempt(s): HTTP {status}: {message}"
    )]
    ServiceCall {
        /// The service.
        service: String,
        /// The tool.
        tool: String,
        /// The endpoint of the last attempt.
        endpoint: String,
        /// Attempts made.
        attempts: u32,
        /// The last HTTP status.
        status: u16,
        /// The service's message, or the reason.
        message: String,
    },
    /// A resource read failed on the service's side after every attempt.
    #[error(
        "read of resource `{uri}` on service `{service}` ({endpoint}) failed after {attempts} attempt(s): HTTP {status}: {message}"
    )]
    ResourceRead {
        /// The service.
        service: String,
        /// The resource.
        uri: String,
        /// The endpoint of the last attempt.
        endpoint: String,
        /// Attempts made.
        attempts: u32,
        /// The last HTTP status.
        status: u16,
        /// The service's message.
        message: String,
    },
    /// A resource stream failed and could not be resumed.
    #[error("stream of resource `{uri}` on service `{service}` failed: {reason}")]
    ResourceStream {
        /// The service.
        service: String,
        /// The resource.
        uri: String,
        /// Why, including how many reconnects were tried.
        reason: String,
    },
    /// The circuit breaker of every endpoint of the service is open.
    #[error("circuit open for service `{service}` ({endpoint}); next probe in {retry_after:?}")]
    CircuitOpen {
        /// The service.
        service: String,
        /// The endpoint whose breaker refused.
        endpoint: String,
        /// Time until the breaker lets a probe through.
        retry_after: Duration,
    },
    /// No connection could be made or kept (refused, reset, DNS).
    #[error("cannot reach service `{service}` at {endpoint} after {attempts} attempt(s): {reason}")]
    Connection {
        /// The service.
        service: String,
        /// The endpoint of the last attempt.
        endpoint: String,
        /// Attempts made.
        attempts: u32,
        /// The underlying I/O failure.
        reason: String,
    },
    /// The operation ran out of time (its overall deadline, over all attempts).
    #[error(
        "`{operation}` on service `{service}` timed out after {elapsed:?} ({attempts} attempt(s))"
    )]
    Timeout {
        /// The service.
        service: String,
        /// The tool or resource.
        operation: String,
        /// Time spent.
        elapsed: Duration,
        /// Attempts made.
        attempts: u32,
    },
    /// Every connection to the endpoint stayed busy for the whole wait.
    #[error(
        "no connection to service `{service}` at {endpoint} became free within {waited:?} (max_connections = {max_connections})"
    )]
    PoolTimeout {
        /// The service.
        service: String,
        /// The endpoint.
        endpoint: String,
        /// How long the call waited.
        waited: Duration,
        /// The cap that was reached.
        max_connections: usize,
    },
    /// The request could not be put into HTTP form (a header value such as
    /// a token or a resume id with characters HTTP forbids); nothing was sent.
    #[error("cannot send `{operation}` to service `{service}`: {reason}")]
    InvalidRequest {
        /// The service.
        service: String,
        /// The tool or resource.
        operation: String,
        /// What could not be encoded.
        reason: String,
    },
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
}

impl McpError {
    /// True when trying again later may succeed: the failure was the
    /// network's or the service's, not the request's.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::ServiceCall { status, .. } | Self::ResourceRead { status, .. } => {
                matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
            }
            Self::Connection { .. }
            | Self::Timeout { .. }
            | Self::PoolTimeout { .. }
            | Self::CircuitOpen { .. }
            | Self::ResourceStream { .. } => true,
            Self::Tool { code, .. } => *code == ErrorCode::Unavailable,
            _ => false,
        }
    }

    /// The HTTP status behind the error, when a service answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::ServiceCall { status, .. }
            | Self::ResourceRead { status, .. }
            | Self::Tool { status, .. } => Some(*status),
            Self::ToolNotFound { .. } | Self::ResourceNotFound { .. } => Some(404),
            _ => None,
        }
    }

    /// Arguments that are not a JSON object, refused before anything is sent.
    pub(crate) fn arguments_not_an_object(service: &str, tool: &str, arguments: &Value) -> Self {
        Self::Tool {
            service: service.into(),
            operation: tool.into(),
            code: ErrorCode::InvalidArguments,
            message: format!(
                "arguments must be a JSON object, got {}",
                cortex_proto::envelope::json_type(arguments)
            ),
            details: Value::Null,
            status: 400,
        }
    }

    /// A short, stable name of the variant, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ServiceNotFound { .. } => "service_not_found",
            Self::ToolNotFound { .. } => "tool_not_found",
            Self::ResourceNotFound { .. } => "resource_not_found",
            Self::Tool { .. } => "tool_error",
            Self::ServiceCall { .. } => "service_call",
            Self::ResourceRead { .. } => "resource_read",
            Self::ResourceStream { .. } => "resource_stream",
            Self::CircuitOpen { .. } => "circuit_open",
            Self::Connection { .. } => "connection",
            Self::Timeout { .. } => "timeout",
            Self::PoolTimeout { .. } => "pool_timeout",
            Self::InvalidRequest { .. } => "invalid_request",
            Self::Config(_) => "config",
            Self::Closed => "closed",
        }
    }
}
