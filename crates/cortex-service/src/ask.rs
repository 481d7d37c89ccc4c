//! Requests from a handler to its MCP client: elicitation
//! (`elicitation/create`, through [`CallContext::elicit`]) and sampling
//! (`sampling/createMessage`, through [`CallContext::sample`]).
//!
//! A `tools/call` that came over an MCP session from a client accepting
//! `text/event-stream` can ask its client a question: the request goes out
//! on the call's own response stream (its POST answer becomes an SSE stream
//! the moment the handler asks), the client POSTs its JSON-RPC response to
//! `/mcp` with the same session, and the handler's future resolves with it.
//!
//! Bounds:
//! - the client must have declared the capability (`elicitation`,
//!   `sampling`) at `initialize`; otherwise nothing is sent and the handler
//!   gets [`ClientRequestError::Unsupported`];
//! - a session waits for at most `McpConfig::max_client_requests` answers at
//!   once ([`ClientRequestError::TooMany`] beyond);
//! - each answer is awaited for at most `McpConfig::client_request_timeout`
//!   ([`ClientRequestError::Timeout`], and the client is sent
//!   `notifications/cancelled`);
//! - a waiting request is forgotten when the handler's future is dropped (the
//!   call was cancelled, or its stream went away) or the session ends, so
//!   nothing is left behind;
//! - an answer is taken only from the session that was asked (whose requests
//!   are authenticated as its owner's), and only for an id it is waiting
//!   for; any other is refused.
//!
//! [`CallContext::elicit`]: crate::CallContext::elicit
//! [`CallContext::sample`]: crate::CallContext::sample

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cortex_proto::ErrorCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::{oneshot, watch};

use crate::error::ServiceError;
use crate::outbox::Outbox;

/// Why a request to the client got no usable answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientRequestError {
    /// The call has no MCP client to ask: it came over the Cortex dialect,
    /// in process, the stateless MCP revision, a batch, or from a client
    /// that does not accept `text/event-stream`.
    #[error(
        "this call cannot ask its caller anything: it did not come over an MCP session \
         whose client accepts a text/event-stream answer"
    )]
    NoClient,
    /// The client did not declare the capability at `initialize`.
    #[error("the MCP client did not declare the `{capability}` capability at initialize")]
    Unsupported {
        /// `elicitation` or `sampling`.
        capability: &'static str,
    },
    /// The session already waits for its maximum of answers.
    #[error("the MCP session already waits for {limit} answers from its client")]
    TooMany {
        /// `McpConfig::max_client_requests`.
        limit: usize,
    },
    /// The client did not answer in time.
    #[error("the MCP client did not answer `{method}` within {} s", .timeout.as_secs_f64())]
    Timeout {
        /// The request's method.
        method: &'static str,
        /// How long it waited.
        timeout: Duration,
    },
    /// The session ended (or the service is stopping) before an answer came.
    #[error("the MCP session ended before its client answered `{method}`")]
    SessionEnded {
        /// The request's method.
        method: &'static str,
    },
    /// The client answered with a JSON-RPC error.
    #[error("the MCP client refused `{method}`: {message} ({code})")]
    Refused {
        /// The request's method.
        method: &'static str,
        /// The JSON-RPC error code.
        code: i64,
        /// The client's message.
        message: String,
    },
    /// The client's result does not have the shape the method defines.
    #[error("the MCP client's answer to `{method}` is not valid: {reason}")]
    InvalidAnswer {
        /// The request's method.
        method: &'static str,
        /// What was wrong.
        reason: String,
    },
}

impl ClientRequestError {
    /// The client did not answer in time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }

    /// The client cannot be asked this (no capability, or no client).
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Self::Unsupported { .. } | Self::NoClient)
    }
}

impl From<ClientRequestError> for ServiceError {
    fn from(error: ClientRequestError) -> Self {
        let code = match &error {
            ClientRequestError::NoClient | ClientRequestError::Unsupported { .. } => {
                ErrorCode::InvalidRequest
            }
            ClientRequestError::TooMany { .. }
            | ClientRequestError::Timeout { .. }
            | ClientRequestError::SessionEnded { .. } => ErrorCode::Unavailable,
            ClientRequestError::Refused { .. } | ClientRequestError::InvalidAnswer { .. } => {
                ErrorCode::ToolExecutionError
            }
        };
        ServiceError::new(code, error.to_string())
    }
}

/// What the user did with an elicitation form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ElicitAction {
    /// Submitted the form: `content` holds the values.
    Accept,
    /// Explicitly declined.
    Decline,
    /// Dismissed it without choosing.
    Cancel,
}

/// The answer to `elicitation/create`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ElicitResult {
    /// What the user did.
    pub action: ElicitAction,
    /// The submitted values (with `Accept`), as the requested schema names
    /// them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Map<String, Value>>,
}

/// Who a sampling message is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplingRole {
    /// The user.
    User,
    /// The assistant.
    Assistant,
}

/// One message of a sampling conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingMessage {
    /// Who it is from.
    pub role: SamplingRole,
    /// An MCP content block (`{"type": "text", "text": …}`, an image, audio).
    pub content: Value,
}

impl SamplingMessage {
    /// A text message from the user.
    pub fn user(text: impl Into<String>) -> Self {
        Self {
            role: SamplingRole::User,
            content: json!({"type": "text", "text": text.into()}),
        }
    }
}

/// The parameters of `sampling/createMessage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateMessageParams {
    /// The conversation to continue.
    pub messages: Vec<SamplingMessage>,
    /// The most tokens the client should sample.
    pub max_tokens: u32,
    /// A system prompt the client may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// Model preferences (`hints`, `costPriority`, …), as MCP defines them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_preferences: Option<Value>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Sequences that end sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_sequences: Option<Vec<String>>,
}

impl CreateMessageParams {
    /// One user message, at most `max_tokens` back.
    pub fn user(text: impl Into<String>, max_tokens: u32) -> Self {
        Self {
            messages: vec![SamplingMessage::user(text)],
            max_tokens,
            system_prompt: None,
            model_preferences: None,
            temperature: None,
            stop_sequences: None,
        }
    }
}

/// The answer to `sampling/createMessage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateMessageResult {
    /// Who the sampled message is from (the assistant).
    pub role: SamplingRole,
    /// The sampled content block.
    pub content: Value,
    /// The model that sampled it.
    pub model: String,
    /// Why sampling stopped (`endTurn`, `maxTokens`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
}

impl CreateMessageResult {
    /// The sampled text, when the content is a text block.
    pub fn text(&self) -> Option<&str> {
        self.content.get("text").and_then(Value::as_str)
    }
}

/// What the client declared it can be asked, at `initialize`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ClientCapabilities {
    pub(crate) elicitation: bool,
    pub(crate) sampling: bool,
}

impl ClientCapabilities {
    /// From `initialize`'s `params.capabilities`.
    pub(crate) fn declared(capabilities: Option<&Value>) -> Self {
        let has = |name: &str| {
            capabilities
                .and_then(|c| c.get(name))
                .is_some_and(Value::is_object)
        };
        Self {
            elicitation: has("elicitation"),
            sampling: has("sampling"),
        }
    }
}

/// A client's answer: its `result`, or its `error`'s code and message.
pub(crate) type Answer = Result<Value, (i64, String)>;

struct PendingState {
    next_id: u64,
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
    /// Set when the session ended: nothing more is asked.
    closed: bool,
}

/// The requests a session waits on answers for.
pub(crate) struct Pending {
    state: Mutex<PendingState>,
    limit: usize,
}

impl Pending {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            state: Mutex::new(PendingState {
                next_id: 1,
                waiting: HashMap::new(),
                closed: false,
            }),
            limit: limit.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PendingState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(
        &self,
        method: &'static str,
    ) -> Result<(u64, oneshot::Receiver<Answer>), ClientRequestError> {
        let mut state = self.lock();
        if state.closed {
            return Err(ClientRequestError::SessionEnded { method });
        }
        if state.waiting.len() >= self.limit {
            return Err(ClientRequestError::TooMany { limit: self.limit });
        }
        let id = state.next_id;
        state.next_id += 1;
        let (tx, rx) = oneshot::channel();
        state.waiting.insert(id, tx);
        Ok((id, rx))
    }

    fn forget(&self, id: u64) {
        self.lock().waiting.remove(&id);
    }

    /// Hands the client's answer to the request `id` waits on; false when
    /// no request of this session waits on that id.
    pub(crate) fn answer(&self, id: &Value, answer: Answer) -> bool {
        let Some(id) = id.as_u64() else {
            return false;
        };
        let waiting = self.lock().waiting.remove(&id);
        match waiting {
            Some(tx) => tx.send(answer).is_ok(),
            None => false,
        }
    }

    /// The session ended: every waiting request fails, and nothing more is
    /// asked.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.waiting.clear();
    }

    /// Requests waiting for an answer.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().waiting.len()
    }
}

/// Forgets a request when its waiter goes away, answered or not.
struct Forget<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.pending.forget(self.id);
    }
}

/// A call's response stream, as its handler sees it: where requests to the
/// client go, and how the handler ends the stream early.
#[derive(Clone)]
pub(crate) struct CallStream {
    /// The call's own messages (requests to the client, then its response).
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) pending: Arc<Pending>,
    pub(crate) capabilities: ClientCapabilities,
    pub(crate) timeout: Duration,
    /// Turned true by [`CallStream::end_early`]: the stream ends, the call
    /// goes on, and the client resumes with `Last-Event-ID`.
    pub(crate) end: Arc<watch::Sender<bool>>,
    /// Whether the stream carries event ids the client can resume from.
    pub(crate) resumable: bool,
}

impl std::fmt::Debug for CallStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallStream")
            .field("capabilities", &self.capabilities)
            .field("resumable", &self.resumable)
            .finish_non_exhaustive()
    }
}

impl CallStream {
    /// Sends `method` to the client and waits for its answer.
    pub(crate) async fn ask(
        &self,
        method: &'static str,
        params: Value,
    ) -> Result<Value, ClientRequestError> {
        let declared = match method {
            "elicitation/create" => ("elicitation", self.capabilities.elicitation),
            _ => ("sampling", self.capabilities.sampling),
        };
        if !declared.1 {
            return Err(ClientRequestError::Unsupported {
                capability: declared.0,
            });
        }
        let (id, answer) = self.pending.register(method)?;
        let _forget = Forget {
            pending: &self.pending,
            id,
        };
        self.outbox.push(
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
            None,
        );
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err((code, message)))) => Err(ClientRequestError::Refused {
                method,
                code,
                message,
            }),
            Ok(Err(_)) => Err(ClientRequestError::SessionEnded { method }),
            Err(_) => {
                self.outbox.push(
                    json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {
                        "requestId": id,
                        "reason": format!("no answer within {} s", self.timeout.as_secs_f64()),
                    }}),
                    None,
                );
                Err(ClientRequestError::Timeout {
                    method,
                    timeout: self.timeout,
                })
            }
        }
    }

    /// Ends the response stream now, if the client can resume it; true if
    /// it will end.
    pub(crate) fn end_early(&self) -> bool {
        if self.resumable {
            self.end.send_replace(true);
        }
        self.resumable
    }
}

/// Reads a result into the method's type.
pub(crate) fn typed<T: serde::de::DeserializeOwned>(
    method: &'static str,
    result: Value,
) -> Result<T, ClientRequestError> {
    serde_json::from_value(result).map_err(|e| ClientRequestError::InvalidAnswer {
        method,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(capabilities: ClientCapabilities, limit: usize) -> CallStream {
        CallStream {
            outbox: Arc::new(Outbox::new(8)),
            pending: Arc::new(Pending::new(limit)),
            capabilities,
            timeout: Duration::from_millis(50),
            end: Arc::new(watch::Sender::new(false)),
            resumable: true,
        }
    }

    #[test]
    fn capabilities_are_read_from_initialize() {
        let both = json!({"elicitation": {}, "sampling": {}});
        assert_eq!(
            ClientCapabilities::declared(Some(&both)),
            ClientCapabilities {
                elicitation: true,
                sampling: true
            }
        );
        assert_eq!(
            ClientCapabilities::declared(Some(&json!({"roots": {}}))),
            ClientCapabilities::default()
        );
        assert_eq!(
            ClientCapabilities::declared(None),
            ClientCapabilities::default()
        );
    }

    #[tokio::test]
    async fn undeclared_capability_sends_nothing() {
        let stream = stream(ClientCapabilities::default(), 4);
        let error = stream
            .ask("elicitation/create", json!({}))
            .await
            .expect_err("no capability");
        assert!(error.is_unsupported(), "{error}");
        assert!(stream.outbox.take_after(0).is_empty());
    }

    #[tokio::test]
    async fn answers_resolve_and_unknown_ids_are_refused() {
        let stream = stream(
            ClientCapabilities {
                elicitation: true,
                sampling: true,
            },
            4,
        );
        let asking = {
            let stream = stream.clone();
            tokio::spawn(async move { stream.ask("sampling/createMessage", json!({})).await })
        };
        let mut changed = stream.outbox.watch();
        while stream.outbox.take_after(0).is_empty() {
            changed.changed().await.ok();
        }
        let sent = stream.outbox.take_after(0)[0].message.clone();
        assert_eq!(sent["method"], "sampling/createMessage");
        assert!(!stream.pending.answer(&json!(999), Ok(json!({}))));
        assert!(!stream.pending.answer(&json!("1"), Ok(json!({}))));
        assert!(stream.pending.answer(&sent["id"], Ok(json!({"ok": true}))));
        assert_eq!(
            asking.await.ok().and_then(Result::ok),
            Some(json!({"ok": true}))
        );
        assert_eq!(stream.pending.len(), 0);
    }

    #[tokio::test]
    async fn timeouts_cancel_and_forget() {
        let stream = stream(
            ClientCapabilities {
                elicitation: true,
                sampling: false,
            },
            1,
        );
        let error = stream
            .ask("elicitation/create", json!({}))
            .await
            .expect_err("no answer");
        assert!(error.is_timeout(), "{error}");
        assert_eq!(stream.pending.len(), 0);
        let sent = stream.outbox.take_after(0);
        assert_eq!(sent[1].message["method"], "notifications/cancelled");
        assert_eq!(
            sent[1].message["params"]["requestId"],
            sent[0].message["id"]
        );
    }

    #[tokio::test]
    async fn the_cap_and_the_end_of_the_session_bound_waiting() {
        let stream = stream(
            ClientCapabilities {
                elicitation: true,
                sampling: true,
            },
            1,
        );
        let first = {
            let stream = stream.clone();
            tokio::spawn(async move { stream.ask("elicitation/create", json!({})).await })
        };
        while stream.pending.len() == 0 {
            tokio::task::yield_now().await;
        }
        let second = stream.ask("elicitation/create", json!({})).await;
        assert_eq!(second, Err(ClientRequestError::TooMany { limit: 1 }));
        stream.pending.close();
        let first = first.await.ok().and_then(Result::err);
        assert_eq!(
            first,
            Some(ClientRequestError::SessionEnded {
                method: "elicitation/create"
            })
        );
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_nothing() {
        let stream = stream(
            ClientCapabilities {
                elicitation: true,
                sampling: true,
            },
            4,
        );
        let waiting = {
            let stream = stream.clone();
            tokio::spawn(async move { stream.ask("elicitation/create", json!({})).await })
        };
        while stream.pending.len() == 0 {
            tokio::task::yield_now().await;
        }
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(stream.pending.len(), 0);
    }
}
