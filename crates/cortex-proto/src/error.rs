//! Error codes of the dialect and the HTTP status each one travels with.

use serde::{Deserialize, Serialize};

/// The `error.code` of an error envelope.
///
/// Codes are the contract; statuses follow from them. Unknown codes from a
/// newer peer deserialize as [`ErrorCode::Other`] so a client never fails to
/// read an error because of its code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request itself is malformed (not JSON, wrong shape, bad header).
    InvalidRequest,
    /// The arguments break the tool's schema or its rules.
    InvalidArguments,
    /// No credentials, or credentials that do not verify.
    Unauthorized,
    /// Credentials that verify but do not grant this.
    Forbidden,
    /// The tool does not exist on this service.
    ToolNotFound,
    /// The resource (or an item it names) does not exist.
    ResourceNotFound,
    /// The request body is larger than the service accepts.
    PayloadTooLarge,
    /// The tool ran and failed, or panicked.
    ToolExecutionError,
    /// A dependency of the service (such as its database) is down.
    Unavailable,
    /// A code this version does not know.
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// The HTTP status this code is sent with.
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidRequest | Self::InvalidArguments => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::ToolNotFound | Self::ResourceNotFound => 404,
            Self::PayloadTooLarge => 413,
            Self::ToolExecutionError | Self::Other => 500,
            Self::Unavailable => 503,
        }
    }

    /// The code as it appears on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidArguments => "invalid_arguments",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::ToolNotFound => "tool_not_found",
            Self::ResourceNotFound => "resource_not_found",
            Self::PayloadTooLarge => "payload_too_large",
            Self::ToolExecutionError => "tool_execution_error",
            Self::Unavailable => "unavailable",
            Self::Other => "other",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
