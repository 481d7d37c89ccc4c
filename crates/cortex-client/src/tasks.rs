//! The tasks extension of MCP (`io.modelcontextprotocol/tasks`, with the
//! 2026-07-28 revision): a server may answer a `tools/call` with a task
//! handle instead of the result, and the client polls until the task ends.
//!
//! Opt in with
//! [`NetworkMcpClientBuilder::tasks`](crate::NetworkMcpClientBuilder::tasks):
//! the client then declares the extension in its capabilities (in every
//! stateless request's `_meta`, and at `initialize`), and `call_tool` /
//! `call_tool_with` follow a task to its end transparently:
//!
//! ```no_run
//! use std::sync::Arc;
//! use cortex_client::tasks::TaskPolicy;
//! use cortex_client::{McpClient, NetworkMcpClient, StaticDiscovery};
//! use serde_json::json;
//!
//! # async fn run(discovery: Arc<StaticDiscovery>) -> Result<(), cortex_client::McpError> {
//! let client = NetworkMcpClient::builder(discovery)
//!     .tasks(TaskPolicy::default())
//!     .build()?;
//! // Whether the server runs it as a task or not, this is the tool's result.
//! let report = client.call_tool("ci", "run-pipeline", json!({"ref": "main"})).await?;
//! # Ok(()) }
//! ```
//!
//! - A result with `resultType: "task"` is polled with `tasks/get`
//!   (`Mcp-Name` carrying the task id, on the endpoint that created it),
//!   waiting the server's `pollIntervalMs` between polls, kept within
//!   [`TaskPolicy::min_interval`] and [`TaskPolicy::max_interval`].
//! - `completed`: its `result` is the tool's result. `failed`: its `error`
//!   is the call's error. `cancelled`: an error.
//! - `input_required`: each new entry of `inputRequests` goes to the
//!   [`ServerRequestHandler`](crate::server_requests::ServerRequestHandler),
//!   and the answers are sent with `tasks/update`; a key is answered once.
//! - The call's deadline bounds the whole: the request timeout from the
//!   task's creation, or, with
//!   [`CallOptions::reset_timeout_on_progress`](crate::progress::CallOptions::reset_timeout_on_progress),
//!   started over by each poll that shows the task changed (status,
//!   message or `lastUpdatedAt`), never past its maximum. At most
//!   [`TaskPolicy::max_polls`] polls.
//! - A caller that drops the call, a deadline that passes, or a poll
//!   budget spent sends `tasks/cancel` (from a task of its own, for 5 s at
//!   most).
//! - A task for a request other than `tools/call`, a task the client did
//!   not declare it takes, a task without `taskId` or with an unknown
//!   `status`, a `completed` task without a `result` object or a `failed`
//!   one without an `error` object is an error naming what was wrong.
//!
//! Not done: `notifications/tasks` (the client polls), and resuming a task
//! after the client restarts (the task id is not handed to the caller).

use std::time::Duration;

use crate::ConfigError;

/// How the client follows tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskPolicy {
    /// The wait between polls when the server suggests none.
    pub default_interval: Duration,
    /// The shortest wait between polls, whatever the server suggests.
    pub min_interval: Duration,
    /// The longest wait between polls, whatever the server suggests.
    pub max_interval: Duration,
    /// At most this many `tasks/get` per call.
    pub max_polls: u32,
}

impl Default for TaskPolicy {
    fn default() -> Self {
        Self {
            default_interval: Duration::from_secs(1),
            min_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(30),
            max_polls: 10_000,
        }
    }
}

impl TaskPolicy {
    /// A policy polling every `interval` unless the server says otherwise
    /// (within `min_interval` and `max_interval`), at most `max_polls`
    /// times; validated.
    pub fn try_new(
        default_interval: Duration,
        min_interval: Duration,
        max_interval: Duration,
        max_polls: u32,
    ) -> Result<Self, ConfigError> {
        let policy = Self {
            default_interval,
            min_interval,
            max_interval,
            max_polls,
        };
        policy.validate()?;
        Ok(policy)
    }

    /// Checks the bounds: a positive `min_interval` no longer than
    /// `default_interval`, itself no longer than `max_interval`; at least
    /// one poll.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |option: &str, reason: &str| ConfigError::Invalid {
            option: option.into(),
            reason: reason.into(),
        };
        if self.min_interval.is_zero() {
            return Err(invalid("tasks.min_interval", "must be positive"));
        }
        if self.default_interval < self.min_interval || self.default_interval > self.max_interval {
            return Err(invalid(
                "tasks.default_interval",
                "must lie between min_interval and max_interval",
            ));
        }
        if self.max_polls == 0 {
            return Err(invalid("tasks.max_polls", "must be at least 1"));
        }
        Ok(())
    }

    /// The wait before the next poll, given the server's `pollIntervalMs`.
    pub(crate) fn interval(&self, suggested_ms: Option<u64>) -> Duration {
        suggested_ms
            .map_or(self.default_interval, Duration::from_millis)
            .clamp(self.min_interval, self.max_interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_stay_within_bounds() {
        let policy = TaskPolicy::default();
        assert_eq!(policy.interval(None), Duration::from_secs(1));
        assert_eq!(policy.interval(Some(0)), Duration::from_millis(100));
        assert_eq!(policy.interval(Some(u64::MAX)), Duration::from_secs(30));
        assert_eq!(policy.interval(Some(2500)), Duration::from_millis(2500));
        assert!(TaskPolicy::try_new(Duration::ZERO, Duration::ZERO, Duration::ZERO, 1).is_err());
        assert!(
            TaskPolicy::try_new(
                Duration::from_secs(1),
                Duration::from_millis(10),
                Duration::from_secs(2),
                0
            )
            .is_err()
        );
    }
}
