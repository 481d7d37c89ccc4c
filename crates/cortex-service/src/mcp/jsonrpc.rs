//! JSON-RPC 2.0 messages as MCP uses them, hand-written over `serde_json`.

use serde_json::{Map, Value, json};

use crate::error::ServiceError;
use cortex_proto::ErrorCode;

/// Invalid JSON.
pub(crate) const PARSE_ERROR: i64 = -32700;
/// Not a valid JSON-RPC message (or not allowed here, such as a batch).
pub(crate) const INVALID_REQUEST: i64 = -32600;
/// No such method.
pub(crate) const METHOD_NOT_FOUND: i64 = -32601;
/// Bad parameters, an unknown tool, (2026-07-28) an unknown resource.
pub(crate) const INVALID_PARAMS: i64 = -32602;
/// Anything else that failed inside the server.
pub(crate) const INTERNAL_ERROR: i64 = -32603;
/// Resource not found (2025-11-25 and earlier).
pub(crate) const RESOURCE_NOT_FOUND: i64 = -32002;
/// 2026-07-28: the mirrored headers do not match the body.
pub(crate) const HEADER_MISMATCH: i64 = -32020;
/// 2026-07-28: the declared protocol version is not served.
pub(crate) const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RpcError {
    pub(crate) code: i64,
    pub(crate) message: String,
    pub(crate) data: Option<Value>,
}

impl RpcError {
    pub(crate) fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub(crate) fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// Names the resource URI the error is about in `data.uri`.
    pub(crate) fn with_uri(mut self, uri: &str) -> Self {
        match &mut self.data {
            Some(Value::Object(data)) => {
                data.insert("uri".into(), uri.into());
            }
            _ => self.data = Some(json!({ "uri": uri })),
        }
        self
    }

    pub(crate) fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(INVALID_PARAMS, message)
    }

    /// A kit error from a resource read or subscription: not found as the
    /// revision's not-found code, bad parameters as -32602, the rest as
    /// -32603; `data` carries the Cortex error (`code`, `message`, `details`).
    pub(crate) fn from_service(error: &ServiceError, stateless: bool) -> Self {
        let code = match error.code {
            ErrorCode::ResourceNotFound if stateless => INVALID_PARAMS,
            ErrorCode::ResourceNotFound => RESOURCE_NOT_FOUND,
            ErrorCode::InvalidArguments | ErrorCode::InvalidRequest | ErrorCode::ToolNotFound => {
                INVALID_PARAMS
            }
            _ => INTERNAL_ERROR,
        };
        let data = serde_json::to_value(error.envelope().error).unwrap_or(Value::Null);
        Self::new(code, error.message.clone()).with_data(data)
    }

    fn to_value(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), self.code.into());
        error.insert("message".into(), self.message.clone().into());
        if let Some(data) = &self.data {
            error.insert("data".into(), data.clone());
        }
        Value::Object(error)
    }
}

/// A response to one message, kept in parts until it is written: answered
/// as JSON it is encoded straight from them, and no envelope `Value` is
/// built; queued on a stream or joined to a batch it becomes one
/// ([`Response::into_value`]).
#[derive(Debug)]
pub(crate) struct Response {
    id: Value,
    outcome: Result<Value, RpcError>,
}

impl Response {
    /// A success response.
    pub(crate) fn result(id: Value, result: Value) -> Self {
        Self {
            id,
            outcome: Ok(result),
        }
    }

    /// An error response; `id` is `null` when the request's id could not
    /// be read.
    pub(crate) fn error(id: Option<Value>, error: RpcError) -> Self {
        Self {
            id: id.unwrap_or(Value::Null),
            outcome: Err(error),
        }
    }

    /// The response as a message. Built by hand: `json!` would copy the
    /// result (a whole tool result) through `to_value`.
    pub(crate) fn into_value(self) -> Value {
        let mut message = Map::new();
        message.insert("jsonrpc".into(), Value::from("2.0"));
        message.insert("id".into(), self.id);
        match self.outcome {
            Ok(result) => message.insert("result".into(), result),
            Err(error) => message.insert("error".into(), error.to_value()),
        };
        Value::Object(message)
    }
}

/// The same bytes as [`Response::into_value`] encodes to: keys in a
/// `Value` object's order (sorted).
impl serde::Serialize for Response {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut message = serializer.serialize_map(Some(3))?;
        match &self.outcome {
            Ok(result) => {
                message.serialize_entry("id", &self.id)?;
                message.serialize_entry("jsonrpc", "2.0")?;
                message.serialize_entry("result", result)?;
            }
            Err(error) => {
                message.serialize_entry("error", &error.to_value())?;
                message.serialize_entry("id", &self.id)?;
                message.serialize_entry("jsonrpc", "2.0")?;
            }
        }
        message.end()
    }
}

/// A notification from the server.
pub(crate) fn notification(method: &str, params: Value) -> Value {
    let mut message = Map::new();
    message.insert("jsonrpc".into(), Value::from("2.0"));
    message.insert("method".into(), Value::from(method));
    message.insert("params".into(), params);
    Value::Object(message)
}

/// One message a client sent.
#[derive(Debug, Clone)]
pub(crate) enum Message {
    /// Expects a response.
    Request {
        id: Value,
        method: String,
        params: Map<String, Value>,
    },
    /// Expects none.
    Notification { method: String },
    /// A response to a request of ours (`elicitation/create`,
    /// `sampling/createMessage`): its id, and its `result` or its `error`'s
    /// code and message.
    Response {
        id: Value,
        answer: crate::ask::Answer,
    },
}

impl Message {
    /// Reads one message; the error names the id when it could be read.
    pub(crate) fn parse(value: Value) -> Result<Self, (Option<Value>, RpcError)> {
        let Value::Object(mut object) = value else {
            return Err((
                None,
                RpcError::new(INVALID_REQUEST, "a JSON-RPC message must be an object"),
            ));
        };
        let id = object.remove("id");
        let usable_id = id
            .clone()
            .filter(|id| matches!(id, Value::String(_) | Value::Number(_)));
        if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err((
                usable_id,
                RpcError::new(INVALID_REQUEST, "`jsonrpc` must be \"2.0\""),
            ));
        }
        match object.remove("method") {
            Some(Value::String(method)) => {
                let params = match object.remove("params") {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(params)) => params,
                    Some(_) => {
                        return Err((
                            usable_id,
                            RpcError::new(INVALID_REQUEST, "`params` must be an object"),
                        ));
                    }
                };
                match id {
                    None => Ok(Self::Notification { method }),
                    Some(id @ (Value::String(_) | Value::Number(_))) => {
                        Ok(Self::Request { id, method, params })
                    }
                    Some(_) => Err((
                        None,
                        RpcError::new(
                            INVALID_REQUEST,
                            "a request id must be a string or a number (not null)",
                        ),
                    )),
                }
            }
            Some(_) => Err((
                usable_id,
                RpcError::new(INVALID_REQUEST, "`method` must be a string"),
            )),
            None if usable_id.is_some()
                && (object.contains_key("result") || object.contains_key("error")) =>
            {
                let id = usable_id.unwrap_or_default();
                let answer = match object.remove("result") {
                    Some(result) => Ok(result),
                    None => {
                        let error = object.remove("error").unwrap_or_default();
                        let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
                        let message: String = error
                            .get("message")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .chars()
                            .take(1024)
                            .collect();
                        Err((code, message))
                    }
                };
                Ok(Self::Response { id, answer })
            }
            None => Err((
                usable_id,
                RpcError::new(INVALID_REQUEST, "a JSON-RPC message needs a `method`"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_encodes_as_its_message_does() {
        let responses = || {
            [
                Response::result(json!(7), json!({"b": [1, "x"], "a": null})),
                Response::result(json!("r-1"), Value::Null),
                Response::error(None, RpcError::new(PARSE_ERROR, "Parse error")),
                Response::error(
                    Some(json!(3)),
                    RpcError::invalid_params("bad").with_data(json!({"uri": "u"})),
                ),
            ]
        };
        for (typed, message) in responses().into_iter().zip(responses()) {
            let message = message.into_value();
            assert_eq!(
                serde_json::to_string(&typed).expect("a response encodes"),
                serde_json::to_string(&message).expect("a message encodes")
            );
            assert_eq!(message["jsonrpc"], "2.0");
        }
    }

    #[test]
    fn classifies_messages() {
        let request =
            Message::parse(json!({"jsonrpc": "2.0", "id": 7, "method": "ping"})).expect("valid");
        assert!(matches!(request, Message::Request { ref method, .. } if method == "ping"));
        let note = Message::parse(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .expect("valid");
        assert!(matches!(note, Message::Notification { .. }));
        let response =
            Message::parse(json!({"jsonrpc": "2.0", "id": "a", "result": {}})).expect("valid");
        assert!(matches!(response, Message::Response { ref id, answer: Ok(_) } if id == "a"));
        let refused = Message::parse(
            json!({"jsonrpc": "2.0", "id": 3, "error": {"code": -1, "message": "no"}}),
        )
        .expect("valid");
        assert!(matches!(refused, Message::Response { answer: Err((-1, ref m)), .. } if m == "no"));
    }

    #[test]
    fn rejects_malformed_messages() {
        for bad in [
            json!([1]),
            json!({"id": 1, "method": "ping"}),
            json!({"jsonrpc": "2.0", "id": null, "method": "ping"}),
            json!({"jsonrpc": "2.0", "id": 1, "method": 3}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1]}),
            json!({"jsonrpc": "2.0", "id": 1}),
        ] {
            let Err((_, error)) = Message::parse(bad.clone()) else {
                panic!("{bad} should be rejected");
            };
            assert_eq!(error.code, INVALID_REQUEST, "{bad}");
        }
    }

    #[test]
    fn not_found_code_depends_on_the_revision() {
        let error = ServiceError::resource_not_found("nope");
        assert_eq!(
            RpcError::from_service(&error, false).code,
            RESOURCE_NOT_FOUND
        );
        assert_eq!(RpcError::from_service(&error, true).code, INVALID_PARAMS);
        let data = RpcError::from_service(&error, false)
            .data
            .unwrap_or_default();
        assert_eq!(data["code"], "resource_not_found");
    }
}
