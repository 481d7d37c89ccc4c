//! [`CallContext`]: what a handler knows about the call it serves, and
//! what it may send back to its caller before its answer (log messages,
//! progress), and what it may ask its MCP caller (elicitation, sampling).

use http::HeaderMap;
use http::request::Parts;
use serde_json::Value;

use crate::error::ServiceError;

/// A request's headers, taken out of it rather than copied: axum's
/// `HeaderMap` extractor clones every entry of them for each request, and
/// a call's context keeps them (see [`CallContext::headers`]). Extractors
/// after this one see no headers; the handlers that take it read the rest
/// of the request (its body, URI and extensions) only.
pub(crate) struct TakenHeaders(pub(crate) HeaderMap);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for TakenHeaders {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(std::mem::take(&mut parts.headers)))
    }
}

/// What a handler knows about the call it serves.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// The request id (the caller's `X-Request-ID`, or one generated).
    pub request_id: String,
    /// The caller's `Idempotency-Key`, if it sent one. A handler that writes
    /// data may record it in the same transaction (see [`crate::idempotency`]).
    pub idempotency_key: Option<String>,
    /// The request headers (authorization, tracing), for propagation.
    pub headers: HeaderMap,
    /// Who is calling, as their verified token says; `None` when
    /// authentication is off or the call comes from inside the process
    /// (see [`crate::auth`]). Check it with [`CallContext::authorize_user`].
    pub caller: Option<crate::auth::Caller>,
    /// Where [`CallContext::log`] sends: the caller's MCP session, if the
    /// call came over one.
    pub(crate) notifier: Option<crate::notify::Notifier>,
    /// The call's MCP response stream, when its answer can become one: where
    /// [`CallContext::elicit`] and [`CallContext::sample`] send.
    pub(crate) stream: Option<crate::ask::CallStream>,
}

impl CallContext {
    /// Whether the caller may act for `user_id` (see [`Caller::may_act_for`](crate::auth::Caller::may_act_for)).
    /// True without a caller: authentication is off, or the call came from
    /// inside the process.
    pub fn may_act_for(&self, user_id: &str) -> bool {
        self.caller.as_ref().is_none_or(|c| c.may_act_for(user_id))
    }

    /// `Ok` when the caller may act for `user_id`, else `403 forbidden`
    /// (see [`authorize`](crate::auth::authorize)).
    pub fn authorize_user(&self, user_id: &str) -> Result<(), ServiceError> {
        crate::auth::authorize(self.caller.as_ref(), user_id)
    }

    /// Sends a log message to the caller, as MCP `notifications/message`
    /// with `data`, when the call came over an MCP session whose level
    /// (`logging/setLevel`, `info` until set) is at or below `level`.
    /// Returns whether it was queued; it never waits. Other callers (the
    /// Cortex dialect, in process) get nothing. See [`crate::notify`] for
    /// the bounds.
    pub fn log(&self, level: crate::notify::LogLevel, data: Value) -> bool {
        self.log_as(level, None, data)
    }

    /// Reports progress to the caller, as MCP `notifications/progress`,
    /// when the call is an MCP `tools/call` whose request gave a
    /// `_meta.progressToken` and whose answer is therefore a stream (see
    /// `docs/mcp.md`); otherwise nothing is sent. `progress` should grow
    /// with each report. Returns whether it was queued; it never waits.
    pub fn progress(&self, progress: f64, total: Option<f64>, message: Option<&str>) -> bool {
        self.notifier
            .as_ref()
            .is_some_and(|n| n.progress(progress, total, message))
    }

    /// [`CallContext::log`] naming the `logger`.
    pub fn log_as(
        &self,
        level: crate::notify::LogLevel,
        logger: Option<&str>,
        data: Value,
    ) -> bool {
        self.notifier
            .as_ref()
            .is_some_and(|n| n.log(level, logger, data))
    }
}

impl CallContext {
    /// Asks the MCP client for input from its user (`elicitation/create`):
    /// `message` says what is asked, `requested_schema` is the form, a flat
    /// JSON Schema object of primitive properties (see the MCP
    /// specification). The request goes out on the call's response stream,
    /// which the answer to a `tools/call` becomes as soon as this is called;
    /// the client's answer comes back as a POST of the same session.
    ///
    /// Fails without sending when the call has no MCP client that can
    /// answer (the Cortex dialect, in process, a client without the
    /// `elicitation` capability); fails after `McpConfig::client_request_timeout`
    /// without an answer. See [`crate::ask`] for every bound.
    pub async fn elicit(
        &self,
        message: impl Into<String>,
        requested_schema: Value,
    ) -> Result<crate::ask::ElicitResult, crate::ask::ClientRequestError> {
        const METHOD: &str = "elicitation/create";
        let stream = self
            .stream
            .as_ref()
            .ok_or(crate::ask::ClientRequestError::NoClient)?;
        let params = serde_json::json!({
            "message": message.into(),
            "requestedSchema": requested_schema,
        });
        let result = stream.ask(METHOD, params).await?;
        crate::ask::typed(METHOD, result)
    }

    /// Asks the MCP client to sample a message from its language model
    /// (`sampling/createMessage`), as [`CallContext::elicit`] asks for
    /// input: the client must have declared `sampling`.
    pub async fn sample(
        &self,
        params: crate::ask::CreateMessageParams,
    ) -> Result<crate::ask::CreateMessageResult, crate::ask::ClientRequestError> {
        const METHOD: &str = "sampling/createMessage";
        let stream = self
            .stream
            .as_ref()
            .ok_or(crate::ask::ClientRequestError::NoClient)?;
        let params = serde_json::to_value(params).map_err(|e| {
            crate::ask::ClientRequestError::InvalidAnswer {
                method: METHOD,
                reason: e.to_string(),
            }
        })?;
        let result = stream.ask(METHOD, params).await?;
        crate::ask::typed(METHOD, result)
    }

    /// Ends the call's MCP response stream now, while the call goes on: the
    /// client reconnects (a `GET` with `Last-Event-ID`) after the stream's
    /// `retry:` delay and receives what the call sends next, its answer
    /// included. This lets a long call release its connection (SSE polling).
    /// Returns whether the stream will end: only a stream with event ids (a
    /// session at revision 2025-11-25 or later) can be resumed, and only an
    /// MCP `tools/call` from a client accepting `text/event-stream` has one.
    pub fn end_stream(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(crate::ask::CallStream::end_early)
    }
}

impl CallContext {
    /// The context of a request: its id, its `Idempotency-Key` if it sent a
    /// non-empty one, its headers (credentials and tracing, for
    /// propagation), and the caller the auth layer verified for the request
    /// this task is serving.
    pub fn from_headers(headers: HeaderMap) -> Self {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .map(str::to_string)
        };
        Self {
            request_id: text(cortex_proto::REQUEST_ID_HEADER).unwrap_or_default(),
            idempotency_key: text(cortex_proto::IDEMPOTENCY_KEY_HEADER).filter(|k| !k.is_empty()),
            headers,
            caller: crate::auth::current_caller(),
            notifier: None,
            stream: None,
        }
    }
}
