//! The error a handler returns, and its one translation into a response.

use cortex_proto::{ErrorCode, ErrorEnvelope};
use serde_json::{Value, json};

/// A failure a service reports to its caller.
///
/// Handlers return it; the kit turns it into the error envelope with the
/// status its code implies. Internals stay out of `message`: it is sent to
/// the caller as is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServiceError {
    /// The envelope code; decides the HTTP status.
    pub code: ErrorCode,
    /// One sentence for the caller.
    pub message: String,
    /// Structured context, such as the offending field.
    pub details: Value,
}

impl ServiceError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Value::Null,
        }
    }

    /// Adds structured details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// 400 `invalid_arguments`, naming the field at fault.
    pub fn invalid_argument(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::new(ErrorCode::InvalidArguments, format!("{field}: {message}"))
            .with_details(json!({ "field": field }))
    }

    /// 400 `invalid_request`.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// 404 `resource_not_found`.
    pub fn resource_not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ResourceNotFound, message)
    }

    /// 500 `tool_execution_error`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ToolExecutionError, message)
    }

    /// 503 `unavailable`: a dependency is down; the caller may retry.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// The wire form.
    pub fn envelope(&self) -> ErrorEnvelope {
        ErrorEnvelope::new(self.code.clone(), self.message.clone())
            .with_details(self.details.clone())
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.code.status()
    }
}

impl From<ErrorEnvelope> for ServiceError {
    fn from(envelope: ErrorEnvelope) -> Self {
        Self {
            code: envelope.error.code,
            message: envelope.error.message,
            details: envelope.error.details,
        }
    }
}

impl axum::response::IntoResponse for ServiceError {
    fn into_response(self) -> axum::response::Response {
        let status = axum::http::StatusCode::from_u16(self.status())
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(code = %self.code, message = %self.message, "request failed");
        }
        (status, axum::Json(self.envelope())).into_response()
    }
}
