//! Per-call options of an MCP `tools/call`: progress delivered to the
//! caller, and a deadline that progress may push out.
//!
//! ```no_run
//! use std::time::Duration;
//! use cortex_client::progress::CallOptions;
//! use cortex_client::{McpFeatures, NetworkMcpClient};
//! use serde_json::json;
//!
//! # async fn run(client: &NetworkMcpClient) -> Result<(), cortex_client::McpError> {
//! let options = CallOptions::new()
//!     .on_progress(|p| eprintln!("{} of {:?}: {}", p.progress, p.total, p.message.as_deref().unwrap_or("")))
//!     // Each progress notification starts the request timeout over, for
//!     // at most ten minutes in all.
//!     .reset_timeout_on_progress(Duration::from_secs(600));
//! let result = client
//!     .call_tool_with("everything", "trigger-long-running-operation", json!({"duration": 5, "steps": 5}), options)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! The client sends `_meta.progressToken` only when the options ask for
//! progress (a handler, or the deadline reset). Notifications are queued
//! for the handler, which runs on a task of its own: at most
//! [`PROGRESS_QUEUE`] wait for it, and when a slow handler lets more pile
//! up the oldest are dropped (progress is a state, the latest matters).
//! Every notification that arrived before the result is handed to the
//! handler before the call returns, unless the handler is still busy a
//! second after the result.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// How many progress notifications wait for a slow handler, at most.
pub const PROGRESS_QUEUE: usize = 64;

/// One `notifications/progress` of a call.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// How far the work is (increases with every notification).
    pub progress: f64,
    /// The total `progress` will reach, when the server knows it.
    pub total: Option<f64>,
    /// What the server says it is doing.
    pub message: Option<String>,
}

impl Progress {
    /// A notification's content (for tests and for other sources of progress).
    pub fn new(progress: f64, total: Option<f64>, message: Option<String>) -> Self {
        Self {
            progress,
            total,
            message,
        }
    }

    /// `progress / total` in `0.0..=1.0`, when the total is known and positive.
    pub fn fraction(&self) -> Option<f64> {
        self.total
            .filter(|t| *t > 0.0)
            .map(|t| (self.progress / t).clamp(0.0, 1.0))
    }
}

/// What receives a call's progress.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// Options of one `tools/call` over MCP
/// ([`McpFeatures::call_tool_with`](crate::McpFeatures::call_tool_with)).
/// `CallOptions::default()` is a plain call.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct CallOptions {
    /// Receives each `notifications/progress` of the call (on a task of
    /// its own; see the module docs for the bound).
    pub on_progress: Option<ProgressFn>,
    /// When set, each progress notification starts the call's request
    /// timeout over, and the value is the most the call may take in all.
    /// Unset, the deadline stands whatever the server reports.
    pub reset_timeout_on_progress: Option<Duration>,
}

impl CallOptions {
    /// A plain call: no progress asked for.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hands each progress notification of the call to `handler`.
    pub fn on_progress(mut self, handler: impl Fn(Progress) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(Arc::new(handler));
        self
    }

    /// Lets each progress notification start the request timeout over,
    /// for at most `max_total` from the start of the call.
    pub fn reset_timeout_on_progress(mut self, max_total: Duration) -> Self {
        self.reset_timeout_on_progress = Some(max_total);
        self
    }

    /// Whether the call asks the server for progress (`progressToken`).
    pub fn wants_progress(&self) -> bool {
        self.on_progress.is_some() || self.reset_timeout_on_progress.is_some()
    }
}

impl fmt::Debug for CallOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallOptions")
            .field("on_progress", &self.on_progress.as_ref().map(|_| "Fn"))
            .field("reset_timeout_on_progress", &self.reset_timeout_on_progress)
            .finish()
    }
}
