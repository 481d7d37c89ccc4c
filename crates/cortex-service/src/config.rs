//! The settings of a service's HTTP front: limits, timings, and standard
//! MCP's. Plain data with defaults; every module that serves reads them,
//! and this one imports none of those.

use std::time::Duration;

/// Limits and timings of the HTTP front of a service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Largest request body accepted; larger gets 413 `payload_too_large`.
    pub max_body_bytes: usize,
    /// A silent stream gets a `: keep-alive` comment this often, so proxies
    /// and the client's idle timeout can tell a quiet stream from a dead one.
    pub keep_alive: Duration,
    /// How long in-flight calls may run after shutdown starts.
    pub grace_period: Duration,
    /// Reconnect advice sent as `retry:` at the start of every stream.
    pub stream_retry: Duration,
    /// Standard MCP at `/mcp`: sessions, origins, buffers.
    pub mcp: McpConfig,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            keep_alive: Duration::from_secs(15),
            grace_period: Duration::from_secs(10),
            stream_retry: Duration::from_millis(1000),
            mcp: McpConfig::default(),
        }
    }
}

/// Limits and policy of the MCP endpoint (`/mcp`); part of [`ServiceConfig`].
#[derive(Debug, Clone)]
pub struct McpConfig {
    /// Serve `/mcp` at all.
    pub enabled: bool,
    /// A session unused for this long (and with no open stream) is ended;
    /// its id then gets 404, which tells the client to initialize again.
    pub session_ttl: Duration,
    /// Sessions open at once; an `initialize` beyond gets 503.
    pub max_sessions: usize,
    /// Browser origins allowed besides loopback ones (`http://localhost:*`,
    /// `http://127.0.0.1:*`, `http://[::1]:*`), exact `scheme://host[:port]`
    /// strings; `"*"` allows every origin. A request with another `Origin`
    /// gets 403. Requests without `Origin` (not from a browser) are allowed.
    pub allowed_origins: Vec<String>,
    /// Notifications kept per session (or per `subscriptions/listen`
    /// stream) for a reader that is slow or reconnecting; when full, the
    /// oldest is dropped, with a log line.
    pub notification_buffer: usize,
    /// Resource subscriptions per session (or per `subscriptions/listen`).
    pub max_subscriptions: usize,
    /// Tool calls of one JSON-RPC batch run at most this many at a time.
    pub batch_concurrency: usize,
    /// How long a stateless (2026-07-28) client may cache `tools/list`,
    /// `resources/list`, `resources/templates/list` and `server/discover`
    /// (`ttlMs`, with `cacheScope: "public"`: the registry is the same for
    /// every caller and fixed while the process runs).
    pub list_cache_ttl: Duration,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            session_ttl: Duration::from_secs(30 * 60),
            max_sessions: 10_000,
            allowed_origins: Vec::new(),
            notification_buffer: 256,
            max_subscriptions: 64,
            batch_concurrency: 8,
            list_cache_ttl: Duration::from_secs(60),
        }
    }
}
