//! What a client call can fail with.
//!
//! Every error names what failed (service, tool or resource, endpoint, and
//! how many attempts were made), keeps the cause it came from
//! ([`std::error::Error::source`]: the I/O or HTTP error underneath), and
//! callers ask questions of it instead of matching strings:
//! [`McpError::is_retryable`], [`McpError::is_connect`],
//! [`McpError::is_refused`], [`McpError::is_timeout`],
//! [`McpError::is_not_found`], [`McpError::status`], [`McpError::attempts`].
//!
//! One classifier, [`McpError::retry`], says whether repeating what failed
//! is safe and may help; the client's retry loop and `is_retryable` both
//! ask it, so they cannot disagree.
//!
//! Discovery's errors convert into it (in `cortex-discovery`), so one `?`
//! serves a function that builds its discovery backend and then calls
//! services.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use cortex_proto::ErrorCode;
use cortex_resilience::human::HumanDuration;
use serde_json::Value;

/// The error underneath a client error (an I/O or HTTP failure), shared so
/// that [`McpError`] stays `Clone`. [`McpError`]'s `source()` is the error
/// itself (an `std::io::Error` can be downcast from it), not this wrapper:
/// the wrapper derefs to it and is not an error of its own.
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl Cause {
    /// Wraps `error`.
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(error))
    }
}

impl From<Box<dyn std::error::Error + Send + Sync + 'static>> for Cause {
    fn from(error: Box<dyn std::error::Error + Send + Sync + 'static>) -> Self {
        Self(Arc::from(error))
    }
}

impl std::ops::Deref for Cause {
    type Target = dyn std::error::Error + Send + Sync + 'static;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

/// Whether repeating a failed operation is safe and may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retry {
    /// Not without changing the request (or the configuration).
    Never,
    /// Only if repeating the operation is safe: it may have run (HTTP 500,
    /// a connection lost or a deadline passed after the request was sent).
    IfIdempotent,
    /// Yes: nothing was done (nothing sent, 408, 429, 502, 503, 504,
    /// discovery had no endpoint for a moment).
    Always,
    /// Yes, once the service's circuit breaker lets a probe through (see
    /// [`McpError::CircuitOpen`]'s `retry_after`); not at once.
    Later,
}

impl Retry {
    /// What an HTTP error status says: the seed's retryable statuses, a 500
    /// only for an operation that is safe to repeat.
    pub fn for_status(status: u16) -> Self {
        match status {
            408 | 429 | 502 | 503 | 504 => Self::Always,
            500 => Self::IfIdempotent,
            _ => Self::Never,
        }
    }
}

/// A failed client operation.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum McpError {
    /// Discovery does not know the service.
    #[error("service `{service}` not found: {reason}")]
    ServiceNotFound {
        /// The service name asked for.
        service: String,
        /// What discovery said.
        reason: String,
    },
    /// Discovery knows the service but could not give an endpoint to call
    /// now: its backend failed, it lists no endpoint, or the one endpoint
    /// a call was bound to (an MCP session's) is no longer listed.
    #[error("discovery gave no endpoint for service `{service}`: {reason}")]
    Discovery {
        /// The service.
        service: String,
        /// Why.
        reason: String,
        /// The discovery backend's error, when there is one.
        #[source]
        cause: Option<Cause>,
    },
    /// The service has no such tool.
    #[error("tool `{tool}` not found on service `{service}`")]
    ToolNotFound {
        /// The service.
        service: String,
        /// The tool asked for.
        tool: String,
    },
    /// The service has no such resource (or the item it names is gone).
    #[error("resource `{uri}` not found on service `{service}`: {message}")]
    ResourceNotFound {
        /// The service.
        service: String,
        /// The resource URI asked for.
        uri: String,
        /// The service's own words.
        message: String,
    },
    /// The service answered with its own error envelope for a request it
    /// judged wrong (bad arguments, forbidden, ...): not retried.
    #[error("`{operation}` on service `{service}` was refused: {code}: {message}")]
    Tool {
        /// The service.
        service: String,
        /// The tool or resource.
        operation: String,
        /// The envelope's code.
        code: ErrorCode,
        /// The envelope's message.
        message: String,
        /// The envelope's details.
        details: Value,
        /// The HTTP status it came with.
        status: u16,
    },
    /// A tool call failed on the service's side (5xx, 429) after every
    /// attempt the retry rules allowed.
    #[error(
        "call to tool `{tool}` on service `{service}` ({endpoint}) failed after {attempts} attempt(s): HTTP {status}: {message}"
    )]
    ServiceCall {
        /// The service.
        service: String,
        /// The tool.
        tool: String,
        /// The endpoint of the last attempt.
        endpoint: String,
        /// Attempts made.
        attempts: u32,
        /// The last HTTP status.
        status: u16,
        /// The service's message, or the reason.
        message: String,
    },
    /// A resource read failed on the service's side after every attempt.
    #[error(
        "read of resource `{uri}` on service `{service}` ({endpoint}) failed after {attempts} attempt(s): HTTP {status}: {message}"
    )]
    ResourceRead {
        /// The service.
        service: String,
        /// The resource.
        uri: String,
        /// The endpoint of the last attempt.
        endpoint: String,
        /// Attempts made.
        attempts: u32,
        /// The last HTTP status.
        status: u16,
        /// The service's message.
        message: String,
    },
    /// A resource stream failed and could not be resumed.
    #[error("stream of resource `{uri}` on service `{service}` failed: {reason}")]
    ResourceStream {
        /// The service.
        service: String,
        /// The resource.
        uri: String,
        /// Why, including how many reconnects were tried.
        reason: String,
    },
    /// The circuit breaker of every endpoint of the service is open.
    #[error(
        "circuit open for service `{service}` ({endpoint}); next probe in {}",
        HumanDuration(*retry_after)
    )]
    CircuitOpen {
        /// The service.
        service: String,
        /// The endpoint whose breaker refused.
        endpoint: String,
        /// Time until the breaker lets a probe through.
        retry_after: Duration,
    },
    /// No connection could be made or kept (refused, reset, DNS).
    #[error("cannot reach service `{service}` at {endpoint} after {attempts} attempt(s): {reason}")]
    Connection {
        /// The service.
        service: String,
        /// The endpoint of the last attempt.
        endpoint: String,
        /// The request may have reached the service before the connection
        /// failed (so repeating it is safe only if it is idempotent).
        sent: bool,
        /// The I/O or HTTP error underneath, when there is one.
        #[source]
        cause: Option<Cause>,
        /// Attempts made.
        attempts: u32,
        /// The underlying I/O failure.
        reason: String,
    },
    /// The operation ran out of time (its overall deadline, over all attempts).
    #[error(
        "`{operation}` on service `{service}` timed out after {} ({attempts} attempt(s))",
        HumanDuration(*elapsed)
    )]
    Timeout {
        /// The service.
        service: String,
        /// The tool or resource.
        operation: String,
        /// Time spent.
        elapsed: Duration,
        /// Attempts made.
        attempts: u32,
    },
    /// Every connection to the endpoint stayed busy for the whole wait.
    #[error(
        "no connection to service `{service}` at {endpoint} became free within {} (max_connections = {max_connections})",
        HumanDuration(*waited)
    )]
    PoolTimeout {
        /// The service.
        service: String,
        /// The endpoint.
        endpoint: String,
        /// How long the call waited.
        waited: Duration,
        /// The cap that was reached.
        max_connections: usize,
    },
    /// The request could not be put into HTTP form (a header value such as
    /// a token or a resume id with characters HTTP forbids); nothing was sent.
    #[error("cannot send `{operation}` to service `{service}`: {reason}")]
    InvalidRequest {
        /// The service.
        service: String,
        /// The tool or resource.
        operation: String,
        /// What could not be encoded.
        reason: String,
    },
    /// The service asked for authorization (HTTP 401, or 403 with
    /// `insufficient_scope`) and none could be obtained: discovery of its
    /// authorization server, registration, the user's consent or the token
    /// request failed, or the server kept refusing the token it gave.
    /// Nothing was retried after it; the cause says which step failed.
    #[error("authorization for service `{service}` failed: {reason}")]
    Auth {
        /// The service.
        service: String,
        /// What failed, in words.
        reason: String,
        /// The typed failure underneath (the client's OAuth error), when
        /// there is one.
        #[source]
        cause: Option<Cause>,
    },
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
}

impl McpError {
    /// Whether repeating what failed is safe and may help: the one
    /// classifier behind both the client's retry loop and
    /// [`Self::is_retryable`].
    pub fn retry(&self) -> Retry {
        match self {
            Self::ServiceCall { status, .. } | Self::ResourceRead { status, .. } => {
                Retry::for_status(*status)
            }
            Self::Tool { code, .. } if *code == ErrorCode::Unavailable => Retry::Always,
            // A refused TLS handshake: the client's TLS layer reports its
            // failures (a certificate refused by either side, a peer that
            // does not speak TLS) as I/O errors of kind `InvalidData`, which
            // nothing else raises before a request is sent. The same
            // handshake would fail the same way.
            Self::Connection { sent: false, .. }
                if self.io_kind() == Some(std::io::ErrorKind::InvalidData) =>
            {
                Retry::Never
            }
            Self::Connection { sent: false, .. } | Self::PoolTimeout { .. } => Retry::Always,
            // It may have run; and a timeout has used up its call's deadline.
            Self::Connection { sent: true, .. } | Self::Timeout { .. } => Retry::IfIdempotent,
            Self::Discovery { .. } | Self::ResourceStream { .. } => Retry::Always,
            Self::CircuitOpen { .. } => Retry::Later,
            _ => Retry::Never,
        }
    }

    /// True when trying again later may succeed: the failure was the
    /// network's, discovery's or the service's, not the request's
    /// (anything but [`Retry::Never`] from [`Self::retry`]).
    pub fn is_retryable(&self) -> bool {
        self.retry() != Retry::Never
    }

    /// No connection could be made to the service, or the request could
    /// not be written: nothing reached it.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connection { sent: false, .. })
    }

    /// The service's host refused the connection (nothing listens there:
    /// a service that is not running, a wrong port).
    pub fn is_refused(&self) -> bool {
        self.io_kind() == Some(std::io::ErrorKind::ConnectionRefused)
    }

    /// A deadline passed: the call's, the pool's wait for a connection, or
    /// the connect timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::PoolTimeout { .. })
            || self.io_kind() == Some(std::io::ErrorKind::TimedOut)
    }

    /// The service, tool or resource does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::ServiceNotFound { .. }
                | Self::ToolNotFound { .. }
                | Self::ResourceNotFound { .. }
        )
    }

    /// Every endpoint's circuit breaker is open: the call failed fast.
    pub fn is_circuit_open(&self) -> bool {
        matches!(self, Self::CircuitOpen { .. })
    }

    /// Discovery could not give an endpoint (not: the service is unknown).
    pub fn is_discovery(&self) -> bool {
        matches!(self, Self::Discovery { .. })
    }

    /// The service wants credentials this client could not obtain or that
    /// it refused: an authorization that failed ([`Self::Auth`]), or an
    /// answer of HTTP 401 or 403.
    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Auth { .. }) || matches!(self.status(), Some(401 | 403))
    }

    /// How many attempts were made, where the error counts them.
    pub fn attempts(&self) -> Option<u32> {
        match self {
            Self::ServiceCall { attempts, .. }
            | Self::ResourceRead { attempts, .. }
            | Self::Connection { attempts, .. }
            | Self::Timeout { attempts, .. } => Some(*attempts),
            _ => None,
        }
    }

    /// The kind of the first I/O error in the chain of causes.
    fn io_kind(&self) -> Option<std::io::ErrorKind> {
        let mut cause = self.source();
        while let Some(error) = cause {
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                return Some(io.kind());
            }
            cause = error.source();
        }
        None
    }

    /// The HTTP status behind the error, when a service answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::ServiceCall { status, .. }
            | Self::ResourceRead { status, .. }
            | Self::Tool { status, .. } => Some(*status),
            Self::ToolNotFound { .. } | Self::ResourceNotFound { .. } => Some(404),
            _ => None,
        }
    }

    /// Arguments that are not a JSON object, refused before anything is
    /// sent: what every implementation answers for them.
    pub fn arguments_not_an_object(service: &str, tool: &str, arguments: &Value) -> Self {
        Self::Tool {
            service: service.into(),
            operation: tool.into(),
            code: ErrorCode::InvalidArguments,
            message: format!(
                "arguments must be a JSON object, got {}",
                cortex_proto::envelope::json_type(arguments)
            ),
            details: Value::Null,
            status: 400,
        }
    }

    /// A short, stable name of the variant, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ServiceNotFound { .. } => "service_not_found",
            Self::Discovery { .. } => "discovery",
            Self::ToolNotFound { .. } => "tool_not_found",
            Self::ResourceNotFound { .. } => "resource_not_found",
            Self::Tool { .. } => "tool_error",
            Self::ServiceCall { .. } => "service_call",
            Self::ResourceRead { .. } => "resource_read",
            Self::ResourceStream { .. } => "resource_stream",
            Self::CircuitOpen { .. } => "circuit_open",
            Self::Connection { .. } => "connection",
            Self::Timeout { .. } => "timeout",
            Self::PoolTimeout { .. } => "pool_timeout",
            Self::InvalidRequest { .. } => "invalid_request",
            Self::Auth { .. } => "auth",
            Self::Config(_) => "config",
            Self::Closed => "closed",
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An option has a value of the wrong type or outside its allowed range.
    #[error("invalid value for `{option}`: {reason}")]
    Invalid {
        /// The option as given: `max_connections`,
        /// `services.memory.max_connections` or `CORTEX_CLIENT_MAX_CONNECTIONS`.
        option: String,
        /// What is wrong, with the allowed range.
        reason: String,
    },
    /// A key or `CORTEX_CLIENT_*` variable that names no option.
    #[error("unknown configuration option `{0}`")]
    Unknown(String),
    /// The config file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    File {
        /// The path of the file.
        path: String,
        /// Why it could not be read.
        reason: String,
    },
    /// The text is not TOML.
    #[error("config file is not valid TOML: {0}")]
    Parse(String),
}

impl ConfigError {
    /// [`ConfigError::Invalid`] of `option`, saying what is wrong.
    pub fn invalid(option: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            option: option.into(),
            reason: reason.into(),
        }
    }
}
