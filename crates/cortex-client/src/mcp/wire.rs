//! JSON-RPC messages of standard MCP, and what their answers mean for a
//! caller of [`McpClient`](crate::McpClient).
//!
//! Plain `serde_json::Value`s rather than a typed model: the client reads a
//! handful of fields, and every revision adds optional ones (see
//! `docs/mcp.md`, "Client", for the measured rmcp comparison).

use cortex_proto::ErrorCode;
use serde_json::{Value, json};

use std::sync::Arc;

use super::inflight::Tracker;
use crate::api::Resource;
use crate::error::McpError;

/// The revisions with an `initialize` handshake that the client speaks,
/// newest first; the first is offered.
pub(crate) const HANDSHAKE_VERSIONS: [&str; 4] =
    ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
/// The stateless revision (per-request `_meta`, no session).
pub(crate) const MODERN_VERSION: &str = "2026-07-28";
/// The tasks extension's identifier (in `capabilities.extensions`).
pub(crate) const TASKS_EXTENSION: &str = "io.modelcontextprotocol/tasks";

/// JSON-RPC error codes the client gives a meaning to.
pub(crate) mod code {
    pub(crate) const METHOD_NOT_FOUND: i64 = -32601;
    pub(crate) const INVALID_PARAMS: i64 = -32602;
    pub(crate) const RESOURCE_NOT_FOUND: i64 = -32002;
    /// 2026-07-28: header and body disagree (or a header is missing).
    pub(crate) const HEADER_MISMATCH: i64 = -32020;
    /// 2026-07-28: `UnsupportedProtocolVersionError` (-32004 in drafts).
    pub(crate) const UNSUPPORTED_VERSION: [i64; 2] = [-32022, -32004];
}

/// `clientInfo` of every handshake and modern request.
pub(crate) fn client_info() -> Value {
    json!({"name": "cortex-client", "version": env!("CARGO_PKG_VERSION")})
}

/// A request for a handshake era (no `_meta` of ours, but for `initialize`,
/// see [`initialize_meta`]), encoded. Written from borrowed parts: the
/// params (a tool's arguments) are not copied into a message first.
pub(crate) fn request(id: u64, method: &str, params: &Value) -> Vec<u8> {
    /// Keys in the order a `Value` object would write them.
    #[derive(serde::Serialize)]
    struct Request<'a> {
        id: u64,
        jsonrpc: &'static str,
        method: &'a str,
        #[serde(skip_serializing_if = "Value::is_null")]
        params: &'a Value,
    }
    let request = Request {
        id,
        jsonrpc: "2.0",
        method,
        params,
    };
    // A `Value` and strings always encode.
    serde_json::to_vec(&request).unwrap_or_default()
}

/// A request of the stateless revision: version, identity and the
/// client's `capabilities` travel in `params._meta` of every request.
pub(crate) fn modern_request(id: u64, method: &str, params: &Value, capabilities: &Value) -> Value {
    let mut params = if params.is_object() {
        params.clone()
    } else {
        json!({})
    };
    stamp(&mut params, MODERN_VERSION, capabilities);
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// `initialize`'s params with the same `_meta` a stateless request
/// carries, for `version` (the one offered, as in its
/// `MCP-Protocol-Version` header): a server of 2026-07-28 reads the
/// request as it reads every other, and older ones ignore `_meta`.
pub(crate) fn initialize_meta(params: &mut Value, version: &str, capabilities: &Value) {
    stamp(params, version, capabilities);
}

fn stamp(params: &mut Value, version: &str, capabilities: &Value) {
    let capabilities = if capabilities.is_object() {
        capabilities.clone()
    } else {
        json!({})
    };
    params["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!(version);
    params["_meta"]["io.modelcontextprotocol/clientInfo"] = client_info();
    params["_meta"]["io.modelcontextprotocol/clientCapabilities"] = capabilities;
}

/// A notification (no id, no answer).
pub(crate) fn notification(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params})
}

/// What a JSON-RPC answer to request `id` said.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    Result(Value),
    Error {
        code: i64,
        message: String,
        data: Value,
    },
}

/// Whether `message` is a response to `id` (read it with [`parse_reply`]).
pub(crate) fn is_reply_to(message: &Value, id: u64) -> bool {
    message.get("id").and_then(Value::as_u64) == Some(id) && message.get("method").is_none()
}

/// The reply to `id` among `messages` (a JSON-RPC message, or a batch of
/// them), if one is.
pub(crate) fn reply_in(messages: Value, id: u64) -> Option<Reply> {
    match messages {
        Value::Array(items) => items
            .into_iter()
            .filter(|m| is_reply_to(m, id))
            .find_map(parse_reply),
        one if is_reply_to(&one, id) => parse_reply(one),
        _ => None,
    }
}

/// A response's result or error, whatever its id; taken out of `message`,
/// not copied.
pub(crate) fn parse_reply(message: Value) -> Option<Reply> {
    let Value::Object(mut message) = message else {
        return None;
    };
    if let Some(mut error) = message.remove("error") {
        return Some(Reply::Error {
            code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            data: error
                .as_object_mut()
                .and_then(|e| e.remove("data"))
                .unwrap_or(Value::Null),
        });
    }
    message.remove("result").map(Reply::Result)
}

/// Whether a rejected answer's body proves a server of the stateless
/// revision (so the client must not fall back to a handshake).
pub(crate) fn is_modern_error(body: &[u8]) -> bool {
    let Ok(message) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    match parse_reply(message) {
        Some(Reply::Error { code, data, .. }) => {
            code::UNSUPPORTED_VERSION.contains(&code) && supports_modern(&data)
                || code == code::HEADER_MISMATCH
        }
        _ => false,
    }
}

/// Whether an error's `data.supported` (or a discover result's
/// `supportedVersions`) lists the stateless revision.
pub(crate) fn supports_modern(data: &Value) -> bool {
    ["supported", "supportedVersions"].iter().any(|key| {
        data.get(key)
            .and_then(Value::as_array)
            .is_some_and(|v| v.iter().any(|v| v.as_str() == Some(MODERN_VERSION)))
    })
}

/// The error for a JSON-RPC error answer of `operation`.
pub(crate) fn error(service: &str, operation: &Operation<'_>, reply: Reply) -> McpError {
    let Reply::Error {
        code,
        message,
        data,
    } = reply
    else {
        return McpError::Tool {
            service: service.into(),
            operation: operation.name().into(),
            code: ErrorCode::Other,
            message: "unexpected result".into(),
            details: Value::Null,
            status: 200,
        };
    };
    match (operation, code) {
        (Operation::Tool(tool), code::METHOD_NOT_FOUND | code::INVALID_PARAMS)
            if code == code::METHOD_NOT_FOUND || mentions_unknown(&message) =>
        {
            McpError::ToolNotFound {
                service: service.into(),
                tool: (*tool).into(),
            }
        }
        (Operation::Read(uri), code::RESOURCE_NOT_FOUND | code::INVALID_PARAMS)
            if code == code::RESOURCE_NOT_FOUND || mentions_unknown(&message) =>
        {
            McpError::ResourceNotFound {
                service: service.into(),
                uri: (*uri).into(),
                message,
            }
        }
        _ => McpError::Tool {
            service: service.into(),
            operation: operation.name().into(),
            code: match code {
                code::INVALID_PARAMS => ErrorCode::InvalidArguments,
                -32600 | -32700 => ErrorCode::InvalidRequest,
                code::METHOD_NOT_FOUND => ErrorCode::ToolNotFound,
                code::RESOURCE_NOT_FOUND => ErrorCode::ResourceNotFound,
                _ => ErrorCode::Other,
            },
            message: format!("{message} (JSON-RPC error {code})"),
            details: data,
            status: 200,
        },
    }
}

/// Servers answer an unknown tool or resource with -32602 and words; -32602
/// alone also means bad arguments, which must stay an argument error.
fn mentions_unknown(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "unknown",
        "not found",
        "no such",
        "does not exist",
        "not exist",
    ]
    .iter()
    .any(|w| message.contains(w))
}

/// What an exchange is about, for errors.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Operation<'a> {
    Tool(&'a str),
    Read(&'a str),
    Other(&'a str),
}

impl Operation<'_> {
    pub(crate) fn name(&self) -> &str {
        match self {
            Self::Tool(s) | Self::Read(s) | Self::Other(s) => s,
        }
    }
}

/// A `tools/call` result as a value: `structuredContent` when present,
/// otherwise the content (one text item: its JSON when it is a JSON object
/// or array, else the text; several items: an array of those). `isError`
/// becomes a tool error carrying the whole result as details.
pub(crate) fn tool_value(service: &str, tool: &str, mut result: Value) -> Result<Value, McpError> {
    let content = |result: &Value| -> Value {
        let items = result
            .get("content")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut values: Vec<Value> = items.iter().map(content_value).collect();
        match values.len() {
            0 => Value::Null,
            1 => values.remove(0),
            _ => Value::Array(values),
        }
    };
    if result.get("isError").and_then(Value::as_bool) == Some(true) {
        let message = match content(&result) {
            Value::String(text) => text,
            Value::Null => "the tool reported an error".into(),
            other => other.to_string(),
        };
        return Err(McpError::Tool {
            service: service.into(),
            operation: tool.into(),
            code: ErrorCode::ToolExecutionError,
            message,
            details: result,
            status: 200,
        });
    }
    match result
        .as_object_mut()
        .and_then(|r| r.remove("structuredContent"))
    {
        Some(structured) if !structured.is_null() => Ok(structured),
        _ => Ok(content(&result)),
    }
}

/// One content item: text as its JSON (object or array) or as a string;
/// other kinds (image, audio, resource, link) as they are.
fn content_value(item: &Value) -> Value {
    match (item.get("type").and_then(Value::as_str), item.get("text")) {
        (Some("text"), Some(Value::String(text))) => json_or_text(text),
        _ => item.clone(),
    }
}

fn json_or_text(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(value @ (Value::Object(_) | Value::Array(_))) => value,
        _ => Value::String(text.to_string()),
    }
}

/// A `resources/read` result as a [`Resource`]: the first content's text
/// (JSON when its type says JSON) or its base64 `blob` as a string; several
/// contents become an array of their values.
pub(crate) fn resource(result: &Value) -> Resource {
    let contents = result
        .get("contents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mime_of = |c: &Value| {
        c.get("mimeType")
            .and_then(Value::as_str)
            .unwrap_or("text/plain")
            .to_string()
    };
    let value_of = |c: &Value| -> Value {
        let mime = mime_of(c);
        let json_type = mime.starts_with("application/json") || mime.contains("+json");
        match (c.get("text"), c.get("blob")) {
            (Some(Value::String(text)), _) if json_type => {
                serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
            }
            (Some(text @ Value::String(_)), _) | (_, Some(text @ Value::String(_))) => text.clone(),
            _ => c.clone(),
        }
    };
    match contents.len() {
        0 => Resource {
            content: Value::Null,
            mime_type: "application/octet-stream".into(),
        },
        1 => Resource {
            content: value_of(&contents[0]),
            mime_type: mime_of(&contents[0]),
        },
        _ => Resource {
            content: Value::Array(contents.iter().map(value_of).collect()),
            mime_type: "application/json".into(),
        },
    }
}

/// A header value for `Mcp-Name` or `Mcp-Param-*`: as is when plain
/// visible ASCII (inner spaces allowed; empty is a valid value), else the
/// `=?base64?...?=` form the 2026-07-28 transport defines (non-ASCII,
/// control characters, tabs, leading or trailing spaces, and a value that
/// looks like the sentinel itself). Always a valid header value.
pub(crate) fn header_safe(value: &str) -> String {
    let sentinel = value.starts_with("=?base64?") && value.ends_with("?=");
    let plain = value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !value.starts_with(' ')
        && !value.ends_with(' ')
        && !sentinel;
    if plain {
        value.to_string()
    } else {
        format!("=?base64?{}?=", base64(value.as_bytes()))
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_results_map_to_values() {
        let structured = json!({"content": [{"type": "text", "text": "{\"a\":1}"}], "structuredContent": {"a": 2}});
        assert_eq!(tool_value("s", "t", structured).ok(), Some(json!({"a": 2})));
        let text = json!({"content": [{"type": "text", "text": "hello"}]});
        assert_eq!(tool_value("s", "t", text).ok(), Some(json!("hello")));
        let json_text = json!({"content": [{"type": "text", "text": "[1,2]"}]});
        assert_eq!(tool_value("s", "t", json_text).ok(), Some(json!([1, 2])));
        let failed = json!({"content": [{"type": "text", "text": "boom"}], "isError": true});
        assert!(matches!(
            tool_value("s", "t", failed),
            Err(McpError::Tool { message, code: ErrorCode::ToolExecutionError, .. }) if message == "boom"
        ));
    }

    #[test]
    fn errors_map_to_client_errors() {
        let unknown = Reply::Error {
            code: -32602,
            message: "Unknown tool: x".into(),
            data: Value::Null,
        };
        assert!(matches!(
            error("s", &Operation::Tool("x"), unknown),
            McpError::ToolNotFound { .. }
        ));
        let bad_args = Reply::Error {
            code: -32602,
            message: "Invalid arguments".into(),
            data: Value::Null,
        };
        assert!(matches!(
            error("s", &Operation::Tool("x"), bad_args),
            McpError::Tool {
                code: ErrorCode::InvalidArguments,
                ..
            }
        ));
        let missing = Reply::Error {
            code: -32002,
            message: "Resource not found".into(),
            data: Value::Null,
        };
        assert!(matches!(
            error("s", &Operation::Read("a://b"), missing),
            McpError::ResourceNotFound { .. }
        ));
        let modern = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32022,"message":"x","data":{"supported":["2026-07-28"],"requested":"2025-11-25"}}}"#;
        assert!(is_modern_error(modern));
        assert!(!is_modern_error(b"Cannot POST /sse"));
    }

    #[test]
    fn header_values_and_resources() {
        assert_eq!(header_safe("echo"), "echo");
        assert_eq!(
            header_safe("Hello, 世界"),
            "=?base64?SGVsbG8sIOS4lueVjA==?="
        );
        assert_eq!(header_safe(" padded "), "=?base64?IHBhZGRlZCA=?=");
        assert_eq!(header_safe("us west 1"), "us west 1");
        assert_eq!(header_safe(""), "");
        assert_eq!(header_safe("\tx"), "=?base64?CXg=?=");
        assert_eq!(
            header_safe("=?base64?literal?="),
            "=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?="
        );
        let read = json!({"contents": [{"uri": "a://b", "mimeType": "application/json", "text": "{\"x\":1}"}]});
        assert_eq!(resource(&read).content, json!({"x": 1}));
        let text = json!({"contents": [{"uri": "a://b", "text": "plain"}]});
        assert_eq!(
            (resource(&text).content, resource(&text).mime_type),
            (json!("plain"), "text/plain".to_string())
        );
    }
}

pub(crate) const ACCEPT: &str = "application/json, text/event-stream";

/// One request.
#[derive(Debug, Clone)]
pub(crate) struct Call<'a> {
    pub(crate) method: &'static str,
    pub(crate) params: Value,
    /// What it is about, for errors and metrics.
    pub(crate) op: Operation<'a>,
    /// Repeating it after it may have run is safe.
    pub(crate) idempotent: bool,
    /// Its progress, when the caller asked for it (`_meta.progressToken`).
    pub(crate) progress: Option<Arc<Tracker>>,
    /// Headers mirroring its arguments (a tool's `Mcp-Param-*`).
    pub(crate) headers: Vec<(String, String)>,
}
