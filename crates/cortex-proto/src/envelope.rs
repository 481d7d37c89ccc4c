//! Tool-call requests and the result and error envelopes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ErrorCode;

/// A tool call's arguments, and the shape the caller used to send them.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolRequest {
    /// The arguments object.
    pub arguments: Map<String, Value>,
    /// True when the body was `{"arguments": {...}}`; the answer then is
    /// `{"result": ...}`. False for bare arguments, answered bare.
    pub enveloped: bool,
}

/// Why a request body is not a tool call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tool arguments must be a JSON object, got {found}")]
pub struct NotAnObject {
    /// The JSON type that was sent instead.
    pub found: &'static str,
}

impl ToolRequest {
    /// Reads a request body.
    ///
    /// A body is the envelope exactly when it is an object whose only key is
    /// `arguments` holding an object; anything else that is an object is bare
    /// arguments (so a tool that takes a single argument called `arguments`
    /// of a non-object type still works bare).
    pub fn from_body(body: Value) -> Result<Self, NotAnObject> {
        match body {
            Value::Object(mut map) => {
                if map.len() == 1 && matches!(map.get("arguments"), Some(Value::Object(_))) {
                    if let Some(Value::Object(arguments)) = map.remove("arguments") {
                        return Ok(Self {
                            arguments,
                            enveloped: true,
                        });
                    }
                }
                Ok(Self {
                    arguments: map,
                    enveloped: false,
                })
            }
            other => Err(NotAnObject {
                found: json_type(&other),
            }),
        }
    }

    /// The envelope form of `arguments` (`{"arguments": ...}`), encoded, as
    /// our client sends it; written straight from the borrowed arguments.
    pub fn encode_envelope(arguments: &Value) -> Result<Vec<u8>, serde_json::Error> {
        #[derive(Serialize)]
        struct Envelope<'a> {
            arguments: &'a Value,
        }
        serde_json::to_vec(&Envelope { arguments })
    }

    /// The response body for `result`, mirroring the request's shape.
    pub fn respond(&self, result: Value) -> Value {
        if self.enveloped {
            wrap_result(result)
        } else {
            result
        }
    }
}

/// `{"result": value}`.
pub fn wrap_result(result: Value) -> Value {
    let mut map = Map::new();
    map.insert("result".into(), result);
    Value::Object(map)
}

/// Reads a tool-call response body: unwraps `{"result": x}` (an object whose
/// only key is `result`), and passes anything else through as a bare result.
pub fn unwrap_result(body: Value) -> Value {
    match body {
        Value::Object(mut map) if map.len() == 1 && map.contains_key("result") => {
            map.remove("result").unwrap_or(Value::Null)
        }
        other => other,
    }
}

/// The name of a JSON value's type, for error messages.
pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The body of every non-2xx answer: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    /// The error itself.
    pub error: ErrorBody,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code; decides the HTTP status.
    pub code: ErrorCode,
    /// One human-readable sentence.
    pub message: String,
    /// Structured context (the offending field, the limit, ...).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub details: Value,
}

impl ErrorEnvelope {
    /// An envelope with no details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorBody {
                code,
                message: message.into(),
                details: Value::Null,
            },
        }
    }

    /// Adds structured details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.error.details = details;
        self
    }

    /// The HTTP status this envelope is sent with.
    pub fn status(&self) -> u16 {
        self.error.code.status()
    }

    /// Reads an error body liberally, as peers written against other Cortex
    /// documents send it: the envelope; else FastAPI's `{"detail": ...}`;
    /// else a top-level `{"message": ...}`; else the raw text. `status`
    /// supplies the code when the body has none.
    pub fn from_response(status: u16, body: &[u8]) -> Self {
        if let Ok(envelope) = serde_json::from_slice::<ErrorEnvelope>(body) {
            return envelope;
        }
        let code = code_for_status(status);
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let message = parsed
            .as_ref()
            .and_then(|v| {
                let pick = |key: &str| v.get(key).map(text_of);
                v.get("error")
                    .and_then(|e| e.get("message"))
                    .map(text_of)
                    .or_else(|| pick("detail"))
                    .or_else(|| pick("message"))
            })
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                if text.is_empty() {
                    format!("HTTP {status}")
                } else {
                    text.chars().take(512).collect()
                }
            });
        Self::new(code, message)
    }
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The code a bare HTTP status stands for, when a peer sent no envelope.
pub fn code_for_status(status: u16) -> ErrorCode {
    match status {
        400 | 422 => ErrorCode::InvalidRequest,
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::ResourceNotFound,
        413 => ErrorCode::PayloadTooLarge,
        503 => ErrorCode::Unavailable,
        500 => ErrorCode::ToolExecutionError,
        _ => ErrorCode::Other,
    }
}
