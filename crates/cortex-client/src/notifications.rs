//! What an MCP server tells its client without being asked: log messages
//! (`notifications/message`) and changes to its lists
//! (`notifications/tools/list_changed`, `…/resources/list_changed`,
//! `…/prompts/list_changed`).
//!
//! An application that wants them registers one [`NotificationHandler`]
//! on the client
//! ([`NetworkMcpClientBuilder::notifications`](crate::network::NetworkMcpClientBuilder::notifications)).
//! The client then opens each session's standalone event stream (GET), on
//! which servers send what belongs to no call. Log messages also go to
//! `tracing` (target `cortex_client::mcp::server_log`), with or without a
//! handler, and a list change drops what the client keeps of that list.
//!
//! ```no_run
//! use std::sync::Arc;
//! use cortex_client::notifications::{ListKind, LogMessage, NotificationHandler};
//!
//! struct Print;
//!
//! impl NotificationHandler for Print {
//!     fn log(&self, service: &str, message: &LogMessage) {
//!         eprintln!("{service} [{}] {}", message.level, message.data);
//!     }
//!
//!     fn list_changed(&self, service: &str, list: ListKind) {
//!         eprintln!("{service}: its {list} changed");
//!     }
//! }
//! # fn build(discovery: Arc<dyn cortex_client::ServiceDiscovery>) -> Result<(), cortex_client::McpError> {
//! let client = cortex_client::NetworkMcpClient::builder(discovery)
//!     .notifications(Arc::new(Print))
//!     .build()?;
//! # Ok(()) }
//! ```

use std::fmt;

use serde_json::Value;

/// Receives what MCP servers tell the client. Both methods run on the task
/// that reads the server's stream: they must return quickly (hand the
/// work to a channel or a task), or that stream waits.
pub trait NotificationHandler: Send + Sync + 'static {
    /// A `notifications/message` from `service` (at or above the level
    /// set with [`McpFeatures::set_log_level`](crate::McpFeatures::set_log_level)).
    fn log(&self, service: &str, message: &LogMessage) {
        let _ = (service, message);
    }

    /// `service` says one of its lists changed; the client has already
    /// dropped what it kept of it.
    fn list_changed(&self, service: &str, list: ListKind) {
        let _ = (service, list);
    }
}

pub use cortex_mcp_api::LogLevel;

/// One `notifications/message`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LogMessage {
    /// Its severity.
    pub level: LogLevel,
    /// The server's name for the part that logged it, when given.
    pub logger: Option<String>,
    /// What was logged: any JSON value, often a string.
    pub data: Value,
}

impl LogMessage {
    /// The message in `params`, or `None` when they hold no valid level.
    pub(crate) fn from_params(params: &Value) -> Option<Self> {
        Some(Self {
            level: LogLevel::parse(params.get("level")?.as_str()?)?,
            logger: params
                .get("logger")
                .and_then(Value::as_str)
                .map(str::to_string),
            data: params.get("data").cloned().unwrap_or(Value::Null),
        })
    }
}

/// Which list of a server changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListKind {
    /// `tools/list`
    Tools,
    /// `resources/list` and `resources/templates/list`
    Resources,
    /// `prompts/list`
    Prompts,
}

impl ListKind {
    /// The list a `notifications/…/list_changed` method names.
    pub(crate) fn of_notification(method: &str) -> Option<Self> {
        match method {
            "notifications/tools/list_changed" => Some(Self::Tools),
            "notifications/resources/list_changed" => Some(Self::Resources),
            "notifications/prompts/list_changed" => Some(Self::Prompts),
            _ => None,
        }
    }

    /// The listing methods whose results the change makes stale.
    pub(crate) fn methods(self) -> &'static [&'static str] {
        match self {
            Self::Tools => &["tools/list"],
            Self::Resources => &["resources/list", "resources/templates/list"],
            Self::Prompts => &["prompts/list"],
        }
    }
}

impl fmt::Display for ListKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tools => "tools",
            Self::Resources => "resources",
            Self::Prompts => "prompts",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn log_messages_need_a_known_level() {
        let message =
            LogMessage::from_params(&json!({"level": "warning", "logger": "db", "data": {"a": 1}}));
        assert_eq!(
            message,
            Some(LogMessage {
                level: LogLevel::Warning,
                logger: Some("db".into()),
                data: json!({"a": 1})
            })
        );
        assert_eq!(
            LogMessage::from_params(&json!({"level": "loud", "data": 1})),
            None
        );
        assert_eq!(LogMessage::from_params(&json!({"level": 3})), None);
        assert_eq!(LogMessage::from_params(&json!("x")), None);
        assert!(LogLevel::Error > LogLevel::Warning);
    }
}
