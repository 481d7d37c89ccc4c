//! Exit codes and the one failure type every command returns.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | ok |
//! | 1 | other failure (a port in use, a failed demo step, an I/O error) |
//! | 2 | usage: bad flags, invalid JSON arguments, a missing `@FILE`, a bad config |
//! | 3 | not found: unknown service, tool or resource |
//! | 4 | unavailable: connection refused, timeout, circuit open, pool timeout, 5xx after retries, unhealthy |
//! | 5 | tool error: the service refused the call (a 4xx envelope such as `invalid_arguments`) |

use std::fmt;

use cortex_client::McpError;
use cortex_proto::ErrorCode;

/// The documented exit codes (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    /// 0: nothing went wrong; used to stop early and quietly (stdout closed).
    Ok = 0,
    /// 1: anything else.
    Other = 1,
    /// 2: the command line or its input is wrong.
    Usage = 2,
    /// 3: the service, tool or resource does not exist.
    NotFound = 3,
    /// 4: the service cannot answer now.
    Unavailable = 4,
    /// 5: the service refused the call.
    ToolError = 5,
}

/// The text of `cortex --help`'s exit code section.
pub(crate) const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  ok
  1  other failure (a port in use, a failed demo step, an I/O error)
  2  usage: bad flags, invalid JSON arguments, a missing @FILE, a bad config
  3  not found: unknown service, tool or resource
  4  unavailable: connection refused, timeout, circuit open, 5xx after retries, unhealthy
  5  tool error: the service refused the call (4xx such as invalid_arguments)

Errors are one line on stderr: `cortex: <message>`.";

/// A failed command: its exit code and a one-line message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) code: Code,
    pub(crate) message: String,
    /// The client error's kind (`connection`, `tool_not_found`, …), when a
    /// client error caused it.
    pub(crate) kind: Option<&'static str>,
}

impl Failure {
    pub(crate) fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            kind: None,
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(Code::Usage, message)
    }

    pub(crate) fn other(message: impl Into<String>) -> Self {
        Self::new(Code::Other, message)
    }

    /// Stdout was closed by its reader (`cortex stream … | head`): stop
    /// quietly, exit 0.
    pub(crate) fn stdout_closed() -> Self {
        Self::new(Code::Ok, "")
    }

    /// The process exit code.
    pub(crate) fn exit_code(&self) -> u8 {
        self.code as u8
    }

    /// The failure for `--json`: `{"error": {"exit_code", "code", "kind",
    /// "message"}}`, where `code` names the exit code (`usage`,
    /// `not_found`, `unavailable`, `tool_error`, `other`).
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let code = match self.code {
            Code::Ok => "ok",
            Code::Other => "other",
            Code::Usage => "usage",
            Code::NotFound => "not_found",
            Code::Unavailable => "unavailable",
            Code::ToolError => "tool_error",
        };
        serde_json::json!({"error": {
            "exit_code": self.exit_code(),
            "code": code,
            "kind": self.kind,
            "message": self.to_string(),
        }})
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, whatever the message holds.
        let line: String = self
            .message
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        f.write_str(&line)
    }
}

impl From<McpError> for Failure {
    fn from(error: McpError) -> Self {
        let text = error.to_string();
        // A service that repeats the client's words: say them once.
        let text = match text.split_once(": ") {
            Some((head, tail)) if head == tail => head.to_string(),
            _ => text,
        };
        Self {
            kind: Some(error.kind()),
            ..Self::new(code_for(&error), text)
        }
    }
}

/// One line for a clap error: its first paragraph, and where to find help.
pub(crate) fn clap_line(rendered: &str) -> String {
    let first: Vec<&str> = rendered
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    let mut text = first.join(" ");
    if let Some(rest) = text.strip_prefix("error: ") {
        text = rest.to_string();
    }
    let command: Option<String> = rendered
        .lines()
        .find_map(|line| line.trim().strip_prefix("Usage: "))
        .map(|usage| {
            usage
                .split_whitespace()
                .take_while(|word| !word.starts_with('[') && !word.starts_with('<'))
                .collect::<Vec<_>>()
                .join(" ")
        });
    match command {
        Some(command) if !command.is_empty() => format!("{text} (see `{command} --help`)"),
        _ => format!("{text} (see `cortex --help`)"),
    }
}

/// The exit code of a client error: the one place errors become codes.
pub(crate) fn code_for(error: &McpError) -> Code {
    match error {
        McpError::ServiceNotFound { .. }
        | McpError::ToolNotFound { .. }
        | McpError::ResourceNotFound { .. } => Code::NotFound,
        McpError::Tool { code, status, .. } => match (code, status) {
            (ErrorCode::Unavailable, _) => Code::Unavailable,
            (_, 404) => Code::NotFound,
            _ => Code::ToolError,
        },
        McpError::ServiceCall { status, .. } | McpError::ResourceRead { status, .. }
            if *status >= 400 =>
        {
            Code::Unavailable
        }
        McpError::ResourceStream { .. }
        | McpError::CircuitOpen { .. }
        | McpError::Connection { .. }
        | McpError::Discovery { .. }
        | McpError::Timeout { .. }
        | McpError::PoolTimeout { .. } => Code::Unavailable,
        McpError::Config(_) | McpError::InvalidRequest { .. } => Code::Usage,
        // The server's authorization refused or could not be had.
        McpError::Auth { .. } => Code::ToolError,
        _ => Code::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_become_one_line() {
        let rendered = "error: the following required arguments were not provided:\n  <TOOL>\n\nUsage: cortex call <SERVICE> <TOOL> [ARGS]\n\nFor more information, try '--help'.\n";
        assert_eq!(
            clap_line(rendered),
            "the following required arguments were not provided: <TOOL> (see `cortex call --help`)"
        );
    }

    #[test]
    fn message_is_one_line() {
        let failure = Failure::other("a\nb\r\nc");
        assert_eq!(failure.to_string(), "a b  c");
    }
}
