//! Log messages from a handler to its MCP caller (`notifications/message`),
//! through [`CallContext::log`](crate::CallContext::log).
//!
//! A call served over an MCP session carries a notifier for its
//! session; any other call (the Cortex dialect, in process, the stateless
//! MCP revision) carries none and its log messages go nowhere. A message is
//! sent only at or above the level the session set with
//! `logging/setLevel` ([`LogLevel::Info`] until it sets one). It is queued
//! on the session's notification buffer, read by the session's GET stream:
//! queueing never waits (the buffer drops its oldest entry when full), and
//! one call may queue at most [`MAX_LOGS_PER_CALL`] messages of at most
//! [`MAX_LOG_BYTES`] each; the rest are dropped and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::outbox::Outbox;

/// At most this many log messages are sent for one call.
pub const MAX_LOGS_PER_CALL: u64 = 64;

/// At most this many progress notifications are sent for one call.
pub const MAX_PROGRESS_PER_CALL: u64 = 1024;

/// A log message whose `data` is larger than this (as JSON) is dropped.
pub const MAX_LOG_BYTES: usize = 16 * 1024;

pub use cortex_mcp_api::LogLevel;

/// A level as kept in a session's atomic, and back.
fn level_from_u8(value: u8) -> LogLevel {
    LogLevel::ALL
        .get(usize::from(value))
        .copied()
        .unwrap_or(LogLevel::Emergency)
}

/// Where a call's log messages go: its session's notification buffer.
#[derive(Clone)]
pub(crate) struct Notifier {
    outbox: Arc<Outbox>,
    /// The session's level, which `logging/setLevel` changes at any time.
    level: Arc<AtomicU8>,
    /// Messages this call sent or tried to (shared by the context's clones).
    sent: Arc<AtomicU64>,
    /// The request's `_meta.progressToken`, when its answer is a stream
    /// that can carry progress.
    progress_token: Option<Value>,
    progress_sent: Arc<AtomicU64>,
    /// Set once the call is answered: later messages (from a task the
    /// handler left running) are dropped, so they cannot push the answer
    /// out of a bounded buffer.
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("level", &self.level())
            .finish_non_exhaustive()
    }
}

/// A session's log level, as `logging/setLevel` sets it.
pub(crate) fn session_level() -> Arc<AtomicU8> {
    Arc::new(AtomicU8::new(LogLevel::Info as u8))
}

/// Sets a session's level.
pub(crate) fn set_level(level: &AtomicU8, to: LogLevel) {
    level.store(to as u8, Ordering::Relaxed);
}

impl Notifier {
    pub(crate) fn new(outbox: Arc<Outbox>, level: Arc<AtomicU8>) -> Self {
        Self {
            outbox,
            level,
            sent: Arc::new(AtomicU64::new(0)),
            progress_token: None,
            progress_sent: Arc::new(AtomicU64::new(0)),
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Sends progress with `token`.
    pub(crate) fn with_progress(mut self, token: Value) -> Self {
        self.progress_token = Some(token);
        self
    }

    /// The call is answered: nothing more is sent.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Queues `notifications/progress`; true if it was queued.
    pub(crate) fn progress(
        &self,
        progress: f64,
        total: Option<f64>,
        message: Option<&str>,
    ) -> bool {
        let Some(token) = &self.progress_token else {
            return false;
        };
        if self.closed.load(Ordering::Acquire) || !progress.is_finite() {
            return false;
        }
        if self.progress_sent.fetch_add(1, Ordering::Relaxed) >= MAX_PROGRESS_PER_CALL {
            return false;
        }
        let mut params = json!({"progressToken": token, "progress": progress});
        if let Some(total) = total.filter(|t| t.is_finite()) {
            params["total"] = json!(total);
        }
        if let Some(message) = message {
            let message: String = message.chars().take(1024).collect();
            params["message"] = json!(message);
        }
        self.outbox
            .push(notification("notifications/progress", params), None)
    }

    fn level(&self) -> LogLevel {
        level_from_u8(self.level.load(Ordering::Relaxed))
    }

    /// Queues `notifications/message`; true if it was queued.
    pub(crate) fn log(&self, level: LogLevel, logger: Option<&str>, data: Value) -> bool {
        if level < self.level() || self.closed.load(Ordering::Acquire) {
            return false;
        }
        let count = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        if count > MAX_LOGS_PER_CALL {
            if count == MAX_LOGS_PER_CALL + 1 {
                tracing::debug!(
                    limit = MAX_LOGS_PER_CALL,
                    "a call reached its limit of MCP log messages; the rest are dropped"
                );
            }
            return false;
        }
        let size = serde_json::to_vec(&data).map(|v| v.len()).unwrap_or(0);
        if size > MAX_LOG_BYTES {
            tracing::debug!(
                size,
                limit = MAX_LOG_BYTES,
                "an MCP log message was too large; dropped"
            );
            return false;
        }
        let mut params = json!({"level": level.as_str(), "data": data});
        if let Some(logger) = logger {
            params["logger"] = json!(logger);
        }
        self.outbox
            .push(notification("notifications/message", params), None)
    }
}

/// A JSON-RPC notification (the same shape as `mcp::jsonrpc`'s, built here
/// so that this module stays below the MCP transport).
fn notification(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_round_trip_and_order() {
        for level in LogLevel::ALL {
            assert_eq!(LogLevel::parse(level.as_str()), Some(level));
            assert_eq!(level_from_u8(level as u8), level);
        }
        assert!(LogLevel::Warning > LogLevel::Info);
        assert_eq!(LogLevel::parse("verbose"), None);
    }

    #[test]
    fn filters_by_level_and_caps_each_call() {
        let outbox = Arc::new(Outbox::new(1000));
        let level = session_level();
        let notifier = Notifier::new(outbox.clone(), level.clone());
        assert!(!notifier.log(LogLevel::Debug, None, json!("hidden")));
        assert!(notifier.log(LogLevel::Info, Some("kit"), json!("shown")));
        set_level(&level, LogLevel::Error);
        assert!(!notifier.log(LogLevel::Warning, None, json!("hidden")));
        let big = "x".repeat(MAX_LOG_BYTES + 1);
        assert!(!notifier.log(LogLevel::Error, None, json!(big)));
        for _ in 0..MAX_LOGS_PER_CALL {
            notifier.log(LogLevel::Error, None, json!("many"));
        }
        assert_eq!(outbox.pending() as u64, MAX_LOGS_PER_CALL - 1);
        let first = &outbox.take_after(0)[0].message;
        assert_eq!(first["method"], "notifications/message");
        assert_eq!(first["params"]["level"], "info");
        assert_eq!(first["params"]["logger"], "kit");
        assert_eq!(first["params"]["data"], "shown");
    }
}
