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
    /// Bearer tokens checked in front of every route (see [`crate::auth`]).
    /// Off by default, for a service embedded in a program or a test;
    /// `cortex serve` and `cortex up` turn it on.
    pub auth: crate::auth::AuthConfig,
    /// Bounds on what one client can hold: timeouts, connection, request
    /// and stream caps, header and URI sizes, accepted `Host` names.
    pub limits: HttpLimits,
    /// TLS on the listener (see [`crate::tls`]): `None` serves plain
    /// HTTP. With a client CA, clients must present a certificate.
    pub tls: Option<crate::tls::TlsConfig>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            keep_alive: Duration::from_secs(15),
            grace_period: Duration::from_secs(10),
            stream_retry: Duration::from_millis(1000),
            mcp: McpConfig::default(),
            auth: crate::auth::AuthConfig::default(),
            limits: HttpLimits::default(),
            tls: None,
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
    /// Sessions one client may hold: the token's user when the caller is
    /// authenticated, else the peer's IP address. Its `initialize` beyond
    /// this ends its least recently used session without an open stream
    /// (that session's id then gets 404, as after expiry), so one client
    /// cannot fill the table for everyone else.
    pub max_sessions_per_client: usize,
    /// Browser origins allowed besides loopback ones (`http://localhost:*`,
    /// `http://127.0.0.1:*`, `http://[::1]:*`), exact `scheme://host[:port]`
    /// strings; `"*"` allows every origin. A request with another `Origin`
    /// gets 403, on `/mcp` and on every other route (a web page must not be
    /// able to write through a browser). Requests without `Origin` (not from
    /// a browser) are allowed.
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
    /// How long a handler waits for its client's answer to an elicitation
    /// or sampling request ([`CallContext::elicit`](crate::CallContext::elicit)).
    pub client_request_timeout: Duration,
    /// Requests to its client one session may wait on at once.
    pub max_client_requests: usize,
    /// Response streams of a session's calls kept for a client to resume
    /// (`GET` with `Last-Event-ID`) after they ended early or broke; the
    /// oldest is forgotten beyond this. Each keeps at most
    /// `notification_buffer` messages.
    pub max_resumable_streams: usize,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            session_ttl: Duration::from_secs(30 * 60),
            max_sessions: 10_000,
            max_sessions_per_client: 64,
            allowed_origins: Vec::new(),
            notification_buffer: 256,
            max_subscriptions: 64,
            batch_concurrency: 8,
            list_cache_ttl: Duration::from_secs(60),
            client_request_timeout: Duration::from_secs(60),
            max_client_requests: 16,
            max_resumable_streams: 16,
        }
    }
}

/// Bounds on the HTTP front, so that no single client can take a service
/// down: every wait has a timeout, and every resource a client can hold
/// (connections, requests in progress, streams) has a cap. Part of
/// [`ServiceConfig`].
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// A request head (request line and headers) must arrive within this
    /// long of its first byte, and a new connection must finish its TLS
    /// handshake (when [`ServiceConfig::tls`] is set) and send its first
    /// head within this long of being accepted; otherwise the connection is
    /// closed. Slowloris clients that trickle a header byte at a time hold
    /// a connection for at most this long.
    pub header_timeout: Duration,
    /// A request body must arrive in full within this long of its head;
    /// otherwise the call is answered `400 invalid_request` and the
    /// connection closed.
    pub body_timeout: Duration,
    /// A kept-alive connection with no request for this long is closed.
    /// Longer than the client's pool idle timeout (60 s), so the client
    /// normally closes first and never reuses a connection the service is
    /// closing. Also how long a response write may make no progress (a
    /// peer that stopped reading) before the connection is dropped.
    pub idle_timeout: Duration,
    /// Connections open at once. At the cap, a new connection closes the
    /// ones idle longest (between requests, or still sending their first
    /// head; 16 at a time); when every connection is busy, new ones are accepted into
    /// [`health_connections`](Self::health_connections), and past those
    /// they wait in the listen backlog. Lowered at start to fit the
    /// process's open-file limit.
    pub max_connections: usize,
    /// Extra connections accepted when all [`max_connections`](Self::max_connections)
    /// are busy, so `GET /health` stays reachable: they serve one request,
    /// `/health` only (anything else gets `503 unavailable`), then close.
    pub health_connections: usize,
    /// Requests handled at once (until their response starts); one beyond
    /// gets `503 unavailable` with `Retry-After: 1` at once instead of
    /// queueing. `GET /health` is not counted.
    pub max_requests: usize,
    /// Streams open at once: SSE resource streams, MCP notification streams
    /// and MCP resource subscriptions. One beyond gets `503 unavailable`.
    pub max_streams: usize,
    /// Largest request head (request line and headers) read; a larger one
    /// gets `431` with the error envelope, and the connection is closed.
    /// At least 8192.
    pub max_header_bytes: usize,
    /// Longest request target (path and query); a longer one gets `414`
    /// with the error envelope.
    pub max_uri_bytes: usize,
    /// Host names accepted in the `Host` header besides loopback ones
    /// (`localhost`, `127.0.0.1`, `[::1]`) and the address the service is
    /// bound to (any IP address when it is bound to a wildcard address):
    /// exact names, any port; `"*"` accepts every name. A request naming
    /// another host gets `403 forbidden`: a web page that rebinds its own
    /// DNS name to this address (DNS rebinding) cannot reach the service.
    pub allowed_hosts: Vec<String>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            max_connections: 4096,
            health_connections: 16,
            max_requests: 1024,
            max_streams: 1024,
            max_header_bytes: 64 * 1024,
            max_uri_bytes: 8 * 1024,
            allowed_hosts: Vec::new(),
        }
    }
}
