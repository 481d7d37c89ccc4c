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
                if map.len() == 1
                    && matches!(map.get("arguments"), Some(Value::Object(_)))
                    && let Some(Value::Object(arguments)) = map.remove("arguments")
                {
                    return Ok(Self {
                        arguments,
                        enveloped: true,
                    });
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
                } else if let Some(summary) = html_summary(text) {
                    format!("HTTP {status} with an HTML page: {summary}")
                } else {
                    text.chars().take(512).collect()
                }
            });
        Self::new(code, message)
    }
}

/// The gist of an HTML error page (a proxy's or a web framework's): the
/// text of its body, else its title, on one line and at most 160
/// characters; `None` when `text` is not HTML. A whole page in an error
/// line helps nobody.
pub fn html_summary(text: &str) -> Option<String> {
    let lower = text.trim_start().to_ascii_lowercase();
    if !(lower.starts_with("<!doctype html")
        || lower.starts_with("<html")
        || lower.starts_with("<head")
        || lower.starts_with("<body"))
    {
        return None;
    }
    let section = |name: &str| -> Option<&str> {
        let open = lower.find(&format!("<{name}"))?;
        let start = open + lower[open..].find('>')? + 1;
        let end = lower[start..]
            .find(&format!("</{name}"))
            .map_or(lower.len(), |i| start + i);
        text.get(start..end)
    };
    let mut summary = section("body").map(visible_text).unwrap_or_default();
    if summary.is_empty() {
        summary = section("title").map(visible_text).unwrap_or_default();
    }
    if summary.is_empty() {
        summary = "(no text)".into();
    }
    if summary.chars().count() > 160 {
        summary = summary.chars().take(159).collect::<String>() + "…";
    }
    Some(summary)
}

/// The text of an HTML fragment: tags, scripts and styles dropped, the
/// common entities decoded, white space collapsed.
fn visible_text(html: &str) -> String {
    let mut out = String::new();
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        out.push(' ');
        let tag = rest[open + 1..].to_ascii_lowercase();
        let skip_to = ["script", "style"]
            .iter()
            .find(|t| tag.starts_with(*t))
            .and_then(|t| tag.find(&format!("</{t}")))
            .map_or(0, |i| i + open + 1);
        let from = open.max(skip_to);
        rest = match rest[from..].find('>') {
            Some(close) => &rest[from + close + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    let out = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    out.split_whitespace().collect::<Vec<_>>().join(" ")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_error_pages_are_summarised() {
        // Express, as the official MCP servers answer an unknown path.
        let express = b"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Error</title>\n</head>\n<body>\n<pre>Cannot GET /mcp/tools</pre>\n</body>\n</html>\n";
        let envelope = ErrorEnvelope::from_response(404, express);
        assert_eq!(
            envelope.error.message,
            "HTTP 404 with an HTML page: Cannot GET /mcp/tools"
        );
        assert_eq!(envelope.error.code, ErrorCode::ResourceNotFound);
        // nginx: no script or style text, entities decoded.
        let nginx = "<html><head><title>502 Bad Gateway</title><style>body{x:1}</style></head><body><script>var a = '<b>';</script><center><h1>502 Bad Gateway</h1></center><hr><center>nginx &amp; co</center></body></html>";
        assert_eq!(
            html_summary(nginx).as_deref(),
            Some("502 Bad Gateway nginx & co")
        );
        // A title alone; a long body is cut.
        assert_eq!(
            html_summary("<html><head><title> Down </title></head></html>").as_deref(),
            Some("Down")
        );
        let long = format!("<html><body>{}</body></html>", "word ".repeat(100));
        let summary = html_summary(&long).unwrap_or_default();
        assert!(
            summary.chars().count() == 160 && summary.ends_with('…'),
            "{summary}"
        );
        // Not HTML: untouched.
        assert_eq!(html_summary("plain failure"), None);
        assert_eq!(
            ErrorEnvelope::from_response(500, b"plain failure")
                .error
                .message,
            "plain failure"
        );
    }
}
