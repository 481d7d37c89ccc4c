//! [`CallContext`]: what a handler knows about the call it serves, and
//! what it may send back to its caller before its answer (log messages,
//! progress).

use http::HeaderMap;
use serde_json::Value;

use crate::error::ServiceError;

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
        }
    }
}
