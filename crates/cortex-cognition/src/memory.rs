//! Reading the memory service, and what its failures become.
//!
//! Every memory failure goes through one mapping, [`classify`]:
//!
//! | memory call failed with | cognition answers |
//! |---|---|
//! | a retryable error ([`McpError::is_retryable`]: connection refused or reset, timeout, circuit open, pool full, 408/429/5xx, an `unavailable` envelope) | 503 `unavailable` (`get_context`: 200 degraded) |
//! | no answer within the deadline | 503 `unavailable` (`get_context`: 200 degraded) |
//! | discovery does not know the memory service, or the client is closed | 503 `unavailable` (`get_context`: 200 degraded) |
//! | memory refused the request with its envelope (`invalid_arguments`, `forbidden`, …) | the same code and message |
//! | memory has no such resource | 404 `resource_not_found` |
//! | anything else (a misconfigured client, an answer that is not a list of items) | 500 `tool_execution_error` |
//!
//! Messages name what failed without internals (no endpoint addresses); the
//! full client error is logged.

use cortex_resilience::human::HumanDuration;
use std::sync::Arc;
use std::time::Duration;

use cortex_client::{McpClient, McpError};
use cortex_proto::ErrorCode;
use cortex_service::ServiceError;
use serde::Deserialize;
use serde_json::Value;

/// One stored item as memory serves it (the fields cognition uses).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MemoryItem {
    /// Memory's id: increasing in storage order.
    pub item_id: i64,
    /// The owner.
    #[serde(default)]
    pub user_id: String,
    /// The conversation, if any.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// The text.
    #[serde(default)]
    pub content: String,
    /// The caller-supplied (or storage) timestamp.
    #[serde(default)]
    pub timestamp: String,
}

/// Why a memory read gave no items.
#[derive(Debug, Clone, PartialEq)]
pub enum MemoryFailure {
    /// Memory could not answer (down, slow, overloaded, circuit open); the
    /// reason is safe to show a caller.
    Unavailable(String),
    /// Memory answered with an error that is the caller's or ours, already
    /// mapped to the error cognition returns.
    Failed(ServiceError),
}

impl MemoryFailure {
    /// The error a tool returns for this failure.
    pub fn into_service_error(self) -> ServiceError {
        match self {
            Self::Unavailable(reason) => {
                ServiceError::unavailable(format!("memory service is unavailable: {reason}"))
            }
            Self::Failed(error) => error,
        }
    }
}

/// The one mapping of a memory client error (see the module documentation).
pub fn classify(error: &McpError) -> MemoryFailure {
    if error.is_retryable() {
        return MemoryFailure::Unavailable(unavailable_reason(error));
    }
    match error {
        McpError::ServiceNotFound { .. } => {
            MemoryFailure::Unavailable("it is not known to service discovery".into())
        }
        McpError::Closed => MemoryFailure::Unavailable("the memory client is closed".into()),
        McpError::Tool {
            code,
            message,
            details,
            ..
        } => MemoryFailure::Failed(
            ServiceError::new(code.clone(), message.clone()).with_details(details.clone()),
        ),
        McpError::ResourceNotFound { message, .. } => {
            MemoryFailure::Failed(ServiceError::resource_not_found(message.clone()))
        }
        other => MemoryFailure::Failed(ServiceError::new(
            ErrorCode::ToolExecutionError,
            format!("reading memory failed ({})", other.kind()),
        )),
    }
}

/// [`classify`], as the error a tool returns.
pub fn memory_error(error: &McpError) -> ServiceError {
    classify(error).into_service_error()
}

/// Why a retryable error happened, in words without endpoints.
fn unavailable_reason(error: &McpError) -> String {
    match error {
        McpError::Connection { attempts, .. } => {
            format!("cannot connect to it ({attempts} attempt(s))")
        }
        McpError::Timeout {
            elapsed, attempts, ..
        } => format!(
            "no answer within {} ({attempts} attempt(s))",
            HumanDuration(*elapsed)
        ),
        McpError::CircuitOpen { retry_after, .. } => format!(
            "its circuit breaker is open (next probe in {})",
            HumanDuration(*retry_after)
        ),
        McpError::PoolTimeout { .. } => "no connection to it became free".into(),
        McpError::ServiceCall {
            status, message, ..
        }
        | McpError::ResourceRead {
            status, message, ..
        } => format!("HTTP {status}: {message}"),
        McpError::Tool { message, .. } => message.clone(),
        McpError::Discovery { .. } => "discovery has no endpoint for it now".into(),
        other => other.kind().replace('_', " "),
    }
}

/// Percent-encodes one URI segment: everything but ASCII letters, digits and
/// `- . _ ~`, so a `/` or `%` in a conversation id stays inside its segment.
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The memory service, through a client and its discovery name.
#[derive(Clone)]
pub(crate) struct Memory {
    client: Arc<dyn McpClient>,
    service: String,
}

impl Memory {
    pub(crate) fn new(client: Arc<dyn McpClient>, service: String) -> Self {
        Self { client, service }
    }

    /// `history/{user_id}/limit/{n}`: the newest `n` items, newest first.
    pub(crate) fn history_uri(user_id: &str, n: usize) -> String {
        format!("history/{}/limit/{n}", encode_segment(user_id))
    }

    /// `history/{user_id}/conversation/{cid}/limit/{MAX_LIMIT}`: a
    /// conversation's newest items, newest first. Memory reads history a
    /// bounded page at a time; this asks for the largest page cognition
    /// ever needs (its own largest `limit`), not memory's default one.
    pub(crate) fn conversation_uri(user_id: &str, conversation_id: &str) -> String {
        format!(
            "history/{}/conversation/{}/limit/{}",
            encode_segment(user_id),
            encode_segment(conversation_id),
            crate::MAX_LIMIT
        )
    }

    /// Whether memory answers its health check.
    pub(crate) async fn check(&self) -> Result<(), String> {
        self.client
            .connect(&self.service)
            .await
            .map_err(|error| memory_error(&error).message)
    }

    /// Reads a list of items at `uri`, newest (highest id) first; gives up
    /// after `deadline` when one is given.
    pub(crate) async fn items(
        &self,
        uri: &str,
        deadline: Option<Duration>,
    ) -> Result<Vec<MemoryItem>, MemoryFailure> {
        let read = self.client.read_resource(&self.service, uri);
        let outcome = match deadline {
            Some(deadline) => match tokio::time::timeout(deadline, read).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    tracing::warn!(
                        service = %self.service,
                        uri,
                        deadline_ms = deadline.as_millis(),
                        "memory did not answer within the deadline"
                    );
                    return Err(MemoryFailure::Unavailable(format!(
                        "no answer within {}",
                        HumanDuration(deadline)
                    )));
                }
            },
            None => read.await,
        };
        let resource = outcome.map_err(|error| {
            tracing::warn!(service = %self.service, uri, %error, "memory read failed");
            classify(&error)
        })?;
        let mut items = parse_items(resource.content).map_err(|reason| {
            tracing::error!(service = %self.service, uri, reason, "memory answered an unexpected shape");
            MemoryFailure::Failed(ServiceError::internal(format!(
                "memory answered `{uri}` with something other than a list of items"
            )))
        })?;
        items.sort_by_key(|item| std::cmp::Reverse(item.item_id));
        Ok(items)
    }
}

fn parse_items(content: Value) -> Result<Vec<MemoryItem>, String> {
    match content {
        Value::Array(values) => values
            .into_iter()
            .map(|value| serde_json::from_value(value).map_err(|e| e.to_string()))
            .collect(),
        Value::Object(_) => Err("expected a JSON array, got an object".into()),
        _ => Err("expected a JSON array".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("a b/c%d~e.f_g-h"), "a%20b%2Fc%25d~e.f_g-h");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn unavailable_failures_say_so() {
        let error = MemoryFailure::Unavailable("down".into()).into_service_error();
        assert_eq!(error.code, ErrorCode::Unavailable);
        assert_eq!(error.message, "memory service is unavailable: down");
    }

    #[test]
    fn items_parse_and_reject_other_shapes() {
        let items = parse_items(json!([{"item_id": 3, "content": "x", "timestamp": "t"}]));
        assert_eq!(items.map(|i| i.len()), Ok(1));
        assert!(parse_items(json!({"item_id": 3})).is_err());
        assert!(parse_items(json!([{"content": "no id"}])).is_err());
    }
}
