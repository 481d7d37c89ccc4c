//! [`NetworkMcpClient`]: the Cortex HTTP dialect over the capped pool, with a
//! circuit breaker per endpoint, safe retries and resumable streams.
//!
//! One call runs as attempts inside one deadline (`request_timeout`):
//! resolve the service (every attempt: a moved service is found again), pick
//! an endpoint whose breaker admits the call (one not tried yet first), take
//! a pooled connection, send, classify the outcome. Whether an outcome may be
//! retried follows the design's safety rules:
//!
//! | outcome | breaker | retried |
//! |---|---|---|
//! | nothing sent (connect failed, pool full) | failure (pool full: ignored) | always |
//! | 408 | ignored | always |
//! | 429, 502, 503, 504 | failure | always, honouring `Retry-After` |
//! | 500, or lost after sending | failure | only when the call is idempotent |
//! | other 4xx | ignored | never |
//! | response started | success | never: streams resume instead |
//!
//! Tool calls carry an `Idempotency-Key` (the same on every attempt), which
//! our services honour, so they count as idempotent; reads are GETs.
//! Retries draw from a per-service budget so that they cannot multiply load
//! during an outage.
//!
//! When the discovery runs active health checks (a
//! [`HealthChecked`](cortex_discovery::HealthChecked)), the client observes
//! them ([`ServiceDiscovery::observe_health`]): an endpoint that passes a
//! check while its breaker is open gets its breaker half-open at once
//! ([`CircuitBreaker::probe_now`]), so the next call probes it instead of
//! failing fast for the rest of `reset_timeout`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use cortex_proto::envelope::{ToolRequest, unwrap_result};
use cortex_proto::listing::{Health, ResourceList, ToolList};
use cortex_proto::{ErrorCode, ErrorEnvelope};
use cortex_resilience::backoff::{Backoff, Jitter, next_delay, parse_retry_after};
use cortex_resilience::breaker::{BreakerConfig, CircuitBreaker};
use cortex_resilience::budget::RetryBudget;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::time::Instant;

use crate::api::{EventStream, McpClient, Resource};
use crate::config::ClientConfig;
use crate::error::{Cause, McpError, Retry};
use crate::metrics::Metrics;
use crate::pool::{AcquireError, EndpointPool, PoolSettings, PoolStats, PooledConn, SendError};
use crate::stream;
use cortex_discovery::{
    Balancer, CallOutcome, DiscoveryError, Endpoint, HealthObserver, ServiceDiscovery,
};

/// Largest response body read into memory; a bigger one is an error, not an
/// out-of-memory.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Supplies the bearer token sent with every request, except those made
/// for a caller inside [`crate::with_authorization`], which carry the
/// caller's header instead.
#[async_trait]
pub trait TokenProvider: Send + Sync + 'static {
    /// The token, or `None` to send no `Authorization` header.
    async fn token(&self) -> Option<String>;
}

/// A token that never changes.
#[derive(Debug, Clone)]
pub struct StaticToken(pub String);

#[async_trait]
impl TokenProvider for StaticToken {
    async fn token(&self) -> Option<String> {
        Some(self.0.clone())
    }
}

/// The MCP client over HTTP. Cheap to clone; clones share pools, breakers
/// and metrics.
#[derive(Clone)]
pub struct NetworkMcpClient {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for NetworkMcpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkMcpClient").finish_non_exhaustive()
    }
}

/// Builds a [`NetworkMcpClient`].
pub struct NetworkMcpClientBuilder {
    discovery: Arc<dyn ServiceDiscovery>,
    config: ClientConfig,
    balancer: Balancer,
    tokens: Option<Arc<dyn TokenProvider>>,
    user_agent: String,
}

impl NetworkMcpClientBuilder {
    /// Uses `config` (validated at build).
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Sends `Authorization: Bearer <token>` from `provider`.
    pub fn token_provider(mut self, provider: Arc<dyn TokenProvider>) -> Self {
        self.tokens = Some(provider);
        self
    }

    /// How an endpoint is chosen among a service's replicas (default:
    /// power of two choices).
    pub fn balancer(mut self, balancer: Balancer) -> Self {
        self.balancer = balancer;
        self
    }

    /// Overrides the `User-Agent`.
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// Validates the configuration and builds the client.
    pub fn build(self) -> Result<NetworkMcpClient, McpError> {
        self.config.validate()?;
        let user_agent = HeaderValue::from_str(&self.user_agent).map_err(|_| {
            crate::config::ConfigError::Invalid {
                option: "user_agent".into(),
                reason: "not a valid header value".into(),
            }
        })?;
        let inner = Arc::new(Inner {
            discovery: self.discovery,
            config: self.config,
            services: Mutex::new(HashMap::new()),
            tokens: self.tokens,
            balancer: self.balancer,
            user_agent,
            closed: AtomicBool::new(false),
            metrics: Arc::new(Metrics::default()),
            mcp: crate::mcp::McpState::default(),
        });
        // Passing health checks let open breakers probe at once. Held
        // weakly: a dropped client is forgotten by its discovery.
        let observer: Weak<dyn HealthObserver> = Arc::<Inner>::downgrade(&inner);
        if inner.discovery.observe_health(observer) {
            tracing::debug!(
                "discovery runs active health checks: a passing one half-opens the endpoint's open breaker"
            );
        }
        Ok(NetworkMcpClient { inner })
    }
}

pub(crate) struct Inner {
    discovery: Arc<dyn ServiceDiscovery>,
    config: ClientConfig,
    services: Mutex<HashMap<String, Arc<ServiceState>>>,
    tokens: Option<Arc<dyn TokenProvider>>,
    balancer: Balancer,
    user_agent: HeaderValue,
    closed: AtomicBool,
    pub(crate) metrics: Arc<Metrics>,
    /// Standard MCP: sessions per (service, endpoint), dialects per service
    /// (see [`crate::mcp`]).
    pub(crate) mcp: crate::mcp::McpState,
}

impl HealthObserver for Inner {
    /// `endpoint` of `service` answered its health check: if its breaker is
    /// open, let the next call probe it now rather than after the rest of
    /// `reset_timeout`. Not closed: the probe still has to succeed.
    fn check_passed(&self, service: &str, endpoint: &Endpoint) {
        let Some(state) = lock(&self.services).get(service).cloned() else {
            return; // never called, or the client is closed
        };
        // The check tested the URL; a breaker belongs to the endpoint with it.
        let matching: Vec<Arc<EndpointState>> = lock(&state.endpoints)
            .values()
            .filter(|e| e.endpoint.url == endpoint.url)
            .cloned()
            .collect();
        for endpoint_state in matching {
            if endpoint_state.breaker.probe_now() {
                tracing::info!(
                    service,
                    endpoint = %endpoint.url,
                    "endpoint passed a health check: its open circuit breaker is half-open now"
                );
            }
        }
    }
}

/// Per service: its effective config, retry machinery, and endpoints.
pub(crate) struct ServiceState {
    pub(crate) name: String,
    pub(crate) config: ClientConfig,
    backoff: Backoff,
    budget: RetryBudget,
    breaker: BreakerConfig,
    endpoints: Mutex<HashMap<Endpoint, Arc<EndpointState>>>,
    /// Round-robin start for endpoint choice.
    next: AtomicUsize,
}

/// Per endpoint of a service: its pool and its breaker.
pub(crate) struct EndpointState {
    pub(crate) endpoint: Endpoint,
    /// The `Host` header, made once.
    host: HeaderValue,
    pool: Arc<EndpointPool>,
    pub(crate) breaker: CircuitBreaker,
}

/// What one exchange is, for errors, metrics and retry safety.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Operation<'a> {
    Tool(&'a str),
    Read(&'a str),
    Stream(&'a str),
}

impl Operation<'_> {
    fn name(&self) -> &str {
        match self {
            Self::Tool(name) | Self::Read(name) | Self::Stream(name) => name,
        }
    }
}

/// One HTTP exchange to run with retries.
pub(crate) struct Exchange<'a> {
    pub(crate) operation: Operation<'a>,
    method: Method,
    path: String,
    body: Bytes,
    accept: &'static str,
    /// The same on every attempt of one call.
    idempotency_key: Option<HeaderValue>,
    pub(crate) last_event_id: Option<String>,
    /// Repeating it is safe even after it may have reached the service.
    idempotent: bool,
    /// At most this many attempts (a stream reconnect makes one; its own
    /// loop backs off).
    pub(crate) max_attempts: u32,
    // Hooks for the MCP transport (all off for the Cortex dialect).
    /// Only this endpoint (by URL): an MCP session lives on one endpoint.
    pub(crate) pin: Option<Endpoint>,
    /// Per chosen endpoint, the MCP session's headers and body; `None` means
    /// the endpoint has no session yet: nothing is sent and the answer is
    /// [`Answer::Unprepared`], so the caller can open one and call again.
    pub(crate) prepare: Option<&'a PrepareFn<'a>>,
    /// Hand an SSE answer over as a stream (an MCP POST may answer so).
    stream_sse: bool,
    /// Hand a 4xx answer (but 408 and 429) back as [`Answer::Rejected`]:
    /// MCP carries JSON-RPC errors, and session expiry, in them.
    raw_client_errors: bool,
}

/// The MCP hook of an exchange: what the chosen endpoint's session adds.
pub(crate) type PrepareFn<'f> = dyn Fn(&Endpoint) -> Option<Prepared> + Send + Sync + 'f;

/// What an MCP session adds to one request on one endpoint.
#[derive(Debug, Clone, Default)]
pub(crate) struct Prepared {
    pub(crate) headers: HeaderMap,
    /// Replaces the exchange's body (the JSON-RPC shape depends on the era).
    pub(crate) body: Option<Bytes>,
    /// Replaces the exchange's path (the legacy SSE transport posts elsewhere).
    pub(crate) path: Option<String>,
}

impl<'a> Exchange<'a> {
    /// A plain GET of `path` (for listings and health), retried like a read;
    /// every other exchange starts from it and changes what differs.
    pub(crate) fn get(operation: Operation<'a>, path: impl Into<String>) -> Self {
        Self {
            operation,
            method: Method::GET,
            path: path.into(),
            body: Bytes::new(),
            accept: "application/json",
            idempotency_key: None,
            last_event_id: None,
            idempotent: true,
            max_attempts: u32::MAX,
            pin: None,
            prepare: None,
            stream_sse: false,
            raw_client_errors: false,
        }
    }

    /// An MCP exchange with the endpoint's URL: `method` with a JSON-RPC
    /// `body`. An SSE answer comes back as [`Answer::Streaming`], a 4xx as
    /// [`Answer::Rejected`]; retried like any call, a 500 or a lost request
    /// only when `idempotent`.
    pub(crate) fn mcp(
        operation: Operation<'a>,
        method: Method,
        body: Bytes,
        accept: &'static str,
        idempotent: bool,
    ) -> Self {
        Self {
            method,
            path: String::new(),
            body,
            accept,
            idempotent,
            stream_sse: true,
            raw_client_errors: true,
            ..Self::get(operation, String::new())
        }
    }
}

/// A 2xx answer.
pub(crate) enum Answer {
    /// A unary answer, read to the end (its connection is back in the pool).
    Full { headers: HeaderMap, body: Bytes },
    /// A streamed answer: the body and the connection it holds.
    Streaming {
        headers: HeaderMap,
        body: Incoming,
        conn: PooledConn,
    },
    /// MCP only: the exchange's `prepare` had nothing for the chosen
    /// endpoint; nothing was sent.
    Unprepared,
    /// MCP only: a 4xx answer, read to the end.
    Rejected { status: StatusCode, body: Bytes },
}

/// One failed attempt. Whether the call goes on is the error's
/// classification ([`McpError::retry`]), with one rule of the call's own:
/// once an answer has started, the call is never repeated.
struct AttemptFailure {
    error: McpError,
    retry_after: Option<Duration>,
    answer_started: bool,
}

impl From<McpError> for AttemptFailure {
    fn from(error: McpError) -> Self {
        Self {
            error,
            retry_after: None,
            answer_started: false,
        }
    }
}

impl NetworkMcpClient {
    /// A client resolving names through `discovery`, with the default
    /// configuration.
    pub fn builder(discovery: Arc<dyn ServiceDiscovery>) -> NetworkMcpClientBuilder {
        NetworkMcpClientBuilder {
            discovery,
            config: ClientConfig::default(),
            balancer: Balancer::default(),
            tokens: None,
            user_agent: format!("cortex-client/{}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// A client with default configuration.
    pub fn new(discovery: Arc<dyn ServiceDiscovery>) -> Result<Self, McpError> {
        Self::builder(discovery).build()
    }

    /// Calls, errors, latency, retries, breaker state and pool use, per
    /// service and tool.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The state of every endpoint this client has used.
    pub fn endpoint_status(&self) -> Vec<EndpointStatus> {
        let services: Vec<Arc<ServiceState>> =
            lock(&self.inner.services).values().cloned().collect();
        let mut out = Vec::new();
        for service in services {
            for endpoint in lock(&service.endpoints).values() {
                out.push(EndpointStatus {
                    service: service.name.clone(),
                    url: endpoint.endpoint.url.clone(),
                    breaker: endpoint.breaker.state(),
                    breaker_retry_after: endpoint.breaker.retry_after(),
                    pool: endpoint.pool.stats(),
                });
            }
        }
        out.sort_by(|a, b| (&a.service, &a.url).cmp(&(&b.service, &b.url)));
        out
    }

    /// Prometheus text of [`Self::metrics`], with breaker and pool gauges.
    pub fn prometheus(&self) -> String {
        self.inner.metrics.render(&self.endpoint_status())
    }

    /// The discovery this client resolves names with.
    pub(crate) fn discovery(&self) -> &Arc<dyn ServiceDiscovery> {
        &self.inner.discovery
    }

    pub(crate) fn service_state(&self, service: &str) -> Result<Arc<ServiceState>, McpError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(McpError::Closed);
        }
        let mut services = lock(&self.inner.services);
        if let Some(state) = services.get(service) {
            return Ok(state.clone());
        }
        let config = self.inner.config.for_service(service);
        let invalid = |option: &str, reason: String| {
            McpError::Config(crate::config::ConfigError::Invalid {
                option: format!("services.{service}.{option}"),
                reason,
            })
        };
        let jitter = if config.jitter {
            Jitter::Full
        } else {
            Jitter::None
        };
        let backoff = Backoff::try_new(
            config.initial_backoff,
            config.backoff_factor,
            config.max_backoff,
            jitter,
        )
        .map_err(|e| invalid(e.field(), e.to_string()))?;
        let budget = RetryBudget::try_new(
            config.retry_budget_window,
            config.retry_budget_min_per_sec,
            config.retry_budget_ratio as f32,
        )
        .map_err(|e| invalid(e.field(), e.to_string()))?;
        let breaker = BreakerConfig::try_new(
            config.failure_threshold,
            config.reset_timeout,
            config.half_open_max_calls,
        )
        .map_err(|e| invalid("failure_threshold", e.to_string()))?;
        let state = Arc::new(ServiceState {
            name: service.to_string(),
            config,
            backoff,
            budget,
            breaker,
            endpoints: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
        });
        services.insert(service.to_string(), state.clone());
        Ok(state)
    }

    fn endpoint_state(
        &self,
        service: &ServiceState,
        endpoint: &Endpoint,
    ) -> Result<Arc<EndpointState>, String> {
        let mut endpoints = lock(&service.endpoints);
        if let Some(state) = endpoints.get(endpoint) {
            return Ok(state.clone());
        }
        let authority = endpoint
            .authority()
            .ok_or_else(|| format!("endpoint `{}` is not an http:// URL", endpoint.url))?;
        let settings = PoolSettings {
            max_connections: service.config.max_connections,
            idle_timeout: service.config.idle_timeout,
            connect_timeout: service.config.connect_timeout,
        };
        let metrics = self.inner.metrics.clone();
        let service_name = service.name.clone();
        let breaker = CircuitBreaker::new(format!("{}@{}", service.name, endpoint.url), service.breaker.clone())
            .with_listener(move |name, transition| {
                tracing::info!(breaker = name, from = ?transition.from, to = ?transition.to, "circuit breaker transition");
                metrics.breaker_transition(&service_name, transition.to);
            });
        let host = HeaderValue::from_str(&authority)
            .map_err(|_| format!("endpoint `{}` has an invalid host", endpoint.url))?;
        let state = Arc::new(EndpointState {
            endpoint: endpoint.clone(),
            host,
            pool: EndpointPool::new(authority, settings),
            breaker,
        });
        endpoints.insert(endpoint.clone(), state.clone());
        Ok(state)
    }

    /// Runs `exchange` on `service` with retries inside its deadline.
    pub(crate) async fn execute(
        &self,
        service: &ServiceState,
        exchange: &Exchange<'_>,
    ) -> Result<(Arc<EndpointState>, Answer), McpError> {
        let started = Instant::now();
        let deadline = started + service.config.request_timeout;
        let ids = CallIds::new();
        service.budget.deposit();
        // Endpoints that failed this call: a retry prefers the others.
        // Recorded only on failure, so a call that succeeds at once keeps
        // no list.
        let mut tried: Vec<Endpoint> = Vec::new();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let mut attempted = None;
            let failure = match self
                .attempt(
                    service,
                    exchange,
                    &tried,
                    &mut attempted,
                    deadline,
                    attempt,
                    &ids,
                )
                .await
            {
                Ok(answer) => return Ok(answer),
                Err(failure) => failure,
            };
            if let Some(state) = attempted {
                tried.push(state.endpoint.clone());
            }
            let retryable = !failure.answer_started
                && match failure.error.retry() {
                    Retry::Always => true,
                    Retry::IfIdempotent => exchange.idempotent,
                    // An open breaker's wait is longer than a backoff; and
                    // a class this version does not know is not retried.
                    _ => false,
                };
            if !retryable || attempt >= exchange.max_attempts.min(service.config.max_retries + 1) {
                return Err(failure.error);
            }
            let delay = next_delay(
                &service.backoff,
                attempt - 1,
                failure.retry_after,
                service.config.retry_after_cap,
            );
            if Instant::now() + delay >= deadline {
                tracing::debug!(service = %service.name, "no time left for another attempt");
                return Err(failure.error);
            }
            if !service.budget.try_withdraw() {
                tracing::warn!(service = %service.name, "retry budget exhausted; not retrying");
                return Err(failure.error);
            }
            self.inner.metrics.retry(
                &service.name,
                &crate::metrics::operation_label(&exchange.operation),
            );
            tracing::debug!(service = %service.name, attempt, ?delay, error = %failure.error, "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        service: &ServiceState,
        exchange: &Exchange<'_>,
        tried: &[Endpoint],
        attempted: &mut Option<Arc<EndpointState>>,
        deadline: Instant,
        attempt: u32,
        ids: &CallIds,
    ) -> Result<(Arc<EndpointState>, Answer), AttemptFailure> {
        let discovery_error = |reason: String, cause: Option<Cause>| {
            AttemptFailure::from(McpError::Discovery {
                service: service.name.clone(),
                reason,
                cause,
            })
        };
        let set = self
            .inner
            .discovery
            .resolve(&service.name)
            .await
            .map_err(|e| match e {
                DiscoveryError::Unknown(_) => AttemptFailure::from(McpError::ServiceNotFound {
                    service: service.name.clone(),
                    reason: e.to_string(),
                }),
                other => discovery_error(other.to_string(), Some(Cause::new(other))),
            })?;
        if set.endpoints.is_empty() {
            return Err(discovery_error("it lists none now".into(), None));
        }
        // An MCP session pins its exchanges to its endpoint.
        let pinned: Vec<Endpoint>;
        let endpoints = match &exchange.pin {
            Some(pin) => {
                pinned = set
                    .endpoints
                    .iter()
                    .filter(|e| e.url == pin.url)
                    .cloned()
                    .collect();
                if pinned.is_empty() {
                    return Err(discovery_error(
                        format!("endpoint {} is no longer listed", pin.url),
                        None,
                    ));
                }
                &pinned[..]
            }
            None => &set.endpoints[..],
        };
        let order = self.choose_order(service, endpoints, tried);
        let mut refused: Option<(Arc<EndpointState>, Duration)> = None;
        let mut chosen = None;
        for endpoint in order {
            let state = self
                .endpoint_state(service, endpoint)
                .map_err(|reason| discovery_error(reason, None))?;
            match state.breaker.try_acquire() {
                Ok(permit) => {
                    chosen = Some((state, permit));
                    break;
                }
                Err(rejected) => {
                    if refused
                        .as_ref()
                        .is_none_or(|(_, left)| rejected.retry_after < *left)
                    {
                        refused = Some((state, rejected.retry_after));
                    }
                }
            }
        }
        let Some((state, permit)) = chosen else {
            let (state, retry_after) = refused
                .map(|(s, d)| (s.endpoint.url.clone(), d))
                .unwrap_or_default();
            return Err(AttemptFailure::from(McpError::CircuitOpen {
                service: service.name.clone(),
                endpoint: state,
                retry_after,
            }));
        };
        *attempted = Some(state.clone());
        let prepared = match exchange.prepare {
            Some(prepare) => match prepare(&state.endpoint) {
                Some(prepared) => Some(prepared),
                None => {
                    permit.ignore();
                    return Ok((state, Answer::Unprepared));
                }
            },
            None => None,
        };
        let url = state.endpoint.url.clone();
        let report = |outcome| {
            self.inner
                .discovery
                .report(&service.name, &state.endpoint, outcome)
        };
        let connection_error =
            |reason: String, sent: bool, cause: Option<Cause>| McpError::Connection {
                service: service.name.clone(),
                endpoint: url.clone(),
                sent,
                cause,
                attempts: attempt,
                reason,
            };
        let timeout_error = || McpError::Timeout {
            service: service.name.clone(),
            operation: exchange.operation.name().to_string(),
            elapsed: service
                .config
                .request_timeout
                .saturating_sub(deadline.saturating_duration_since(Instant::now())),
            attempts: attempt,
        };

        // Built before a connection is taken: a slow token provider does not
        // hold a pool slot, and a request that cannot be built costs none.
        let request = match self.request(&state, exchange, prepared.as_ref(), ids).await {
            Ok(request) => request,
            Err(reason) => {
                permit.ignore();
                return Err(AttemptFailure::from(McpError::InvalidRequest {
                    service: service.name.clone(),
                    operation: exchange.operation.name().to_string(),
                    reason,
                }));
            }
        };
        let pool_deadline = deadline.min(Instant::now() + service.config.pool_timeout);
        let mut conn = match state.pool.acquire(pool_deadline).await {
            Ok(conn) => conn,
            Err(AcquireError::PoolTimeout { waited }) => {
                permit.ignore();
                let error = if pool_deadline >= deadline {
                    timeout_error()
                } else {
                    McpError::PoolTimeout {
                        service: service.name.clone(),
                        endpoint: url.clone(),
                        waited,
                        max_connections: service.config.max_connections,
                    }
                };
                return Err(AttemptFailure::from(error));
            }
            Err(AcquireError::Connect(cause)) => {
                permit.failure();
                report(CallOutcome::Failure);
                let error = connection_error(cause.to_string(), false, Some(cause));
                return Err(AttemptFailure::from(error));
            }
        };

        // One timer for the whole exchange (sending, then reading the
        // answer), armed once rather than once per phase.
        let expiry = tokio::time::sleep_until(deadline);
        tokio::pin!(expiry);
        let response = match within(expiry.as_mut(), conn.send(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(SendError::NotSent(cause))) => {
                permit.failure();
                report(CallOutcome::Failure);
                let error = connection_error(cause.to_string(), false, Some(Cause::new(cause)));
                return Err(AttemptFailure::from(error));
            }
            Ok(Err(SendError::Closed)) => {
                permit.ignore();
                let error = connection_error("connection closed".into(), false, None);
                return Err(AttemptFailure::from(error));
            }
            Ok(Err(SendError::MaybeSent(cause))) => {
                permit.failure();
                report(CallOutcome::Failure);
                let reason = format!("connection lost after the request was sent: {cause}");
                let error = connection_error(reason, true, Some(Cause::new(cause)));
                return Err(AttemptFailure::from(error));
            }
            // The call's deadline: no time is left for another attempt.
            Err(_) => {
                permit.failure();
                report(CallOutcome::Failure);
                return Err(AttemptFailure::from(timeout_error()));
            }
        };
        let (parts, body) = response.into_parts();
        let status = parts.status;
        if status.is_success() {
            permit.success();
            report(CallOutcome::Success);
            let sse = || {
                parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
            };
            if matches!(exchange.operation, Operation::Stream(_)) || (exchange.stream_sse && sse())
            {
                return Ok((
                    state,
                    Answer::Streaming {
                        headers: parts.headers,
                        body,
                        conn,
                    },
                ));
            }
            return match within(
                expiry.as_mut(),
                Limited::new(body, MAX_RESPONSE_BYTES).collect(),
            )
            .await
            {
                Ok(Ok(collected)) => {
                    conn.release();
                    Ok((
                        state,
                        Answer::Full {
                            headers: parts.headers,
                            body: collected.to_bytes(),
                        },
                    ))
                }
                // The answer started: never repeat the call (it ran).
                Ok(Err(error)) => {
                    let reason = format!("reading the answer failed: {error}");
                    Err(AttemptFailure {
                        answer_started: true,
                        ..AttemptFailure::from(connection_error(
                            reason,
                            true,
                            Some(Cause::from(error)),
                        ))
                    })
                }
                Err(_) => Err(AttemptFailure {
                    answer_started: true,
                    ..AttemptFailure::from(timeout_error())
                }),
            };
        }
        // An error answer: read its (small) body for the message.
        let body = match within(expiry.as_mut(), Limited::new(body, 1024 * 1024).collect()).await {
            Ok(Ok(collected)) => {
                conn.release();
                collected.to_bytes()
            }
            _ => Bytes::new(),
        };
        if exchange.raw_client_errors
            && status.is_client_error()
            && !matches!(status.as_u16(), 408 | 429)
        {
            permit.ignore();
            return Ok((state, Answer::Rejected { status, body }));
        }
        let retry_after = parts
            .headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let envelope = ErrorEnvelope::from_response(status.as_u16(), &body);
        if is_health_failure(status) {
            permit.failure();
            report(CallOutcome::Failure);
        } else {
            permit.ignore();
        }
        let error = error_for(
            &service.name,
            exchange.operation,
            &url,
            attempt,
            status,
            envelope,
        );
        Err(AttemptFailure {
            retry_after,
            ..AttemptFailure::from(error)
        })
    }

    /// The endpoints to try, best first: ones this call has not tried yet
    /// before ones it has, and among those the balancer's pick first.
    fn choose_order<'e>(
        &self,
        service: &ServiceState,
        endpoints: &'e [Endpoint],
        tried: &[Endpoint],
    ) -> Vec<&'e Endpoint> {
        cortex_discovery::balance::order(
            self.inner.balancer,
            endpoints,
            tried,
            &service.next,
            |e| self.in_flight(service, e),
        )
    }

    /// Calls in flight on an endpoint (0 for one never used).
    fn in_flight(&self, service: &ServiceState, endpoint: &Endpoint) -> usize {
        lock(&service.endpoints)
            .get(endpoint)
            .map_or(0, |state| state.pool.stats().in_use)
    }

    /// The HTTP request of one attempt. Built straight into a `HeaderMap`
    /// sized for it, with header names fixed at compile time and values
    /// made once per endpoint or per call where they can be: on loopback
    /// this is a good part of the client's own cost per call.
    async fn request(
        &self,
        endpoint: &EndpointState,
        exchange: &Exchange<'_>,
        prepared: Option<&Prepared>,
        ids: &CallIds,
    ) -> Result<http::Request<Full<Bytes>>, String> {
        let body = prepared
            .and_then(|p| p.body.clone())
            .unwrap_or_else(|| exchange.body.clone());
        let base = endpoint.endpoint.base_path();
        let path = match prepared.and_then(|p| p.path.as_deref()) {
            // The legacy SSE transport names its POST URL: absolute path as is.
            Some(path) if path.starts_with('/') => http::Uri::try_from(path),
            Some("") if base.is_empty() => Ok(http::Uri::from_static("/")),
            Some(path) => http::Uri::try_from(format!("{base}{path}")),
            None if base.is_empty() && exchange.path.is_empty() => Ok(http::Uri::from_static("/")),
            None if base.is_empty() => http::Uri::try_from(exchange.path.as_str()),
            None => http::Uri::try_from(format!("{base}{}", exchange.path)),
        }
        .map_err(|e| format!("cannot form the request path: {e}"))?;

        let extra = prepared.map_or(0, |p| p.headers.len());
        let mut headers = HeaderMap::with_capacity(12 + extra);
        headers.insert(header::HOST, endpoint.host.clone());
        headers.insert(header::USER_AGENT, self.inner.user_agent.clone());
        headers.insert(header::ACCEPT, HeaderValue::from_static(exchange.accept));
        headers.insert(
            const { HeaderName::from_static(cortex_proto::REQUEST_ID_HEADER) },
            ids.request_id.clone(),
        );
        headers.insert(
            const { HeaderName::from_static(cortex_proto::TRACE_ID_HEADER) },
            ids.trace_id.clone(),
        );
        headers.insert(
            const { HeaderName::from_static("traceparent") },
            ids.traceparent(),
        );
        if !body.is_empty() {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        if let Some(prepared) = prepared {
            for (name, value) in &prepared.headers {
                headers.append(name, value.clone());
            }
        }
        let text = |name: &str, value: &str| {
            HeaderValue::from_str(value).map_err(|_| format!("{name} is not a valid header value"))
        };
        if let Some(key) = &exchange.idempotency_key {
            headers.insert(
                const { HeaderName::from_static(cortex_proto::IDEMPOTENCY_KEY_HEADER) },
                key.clone(),
            );
        }
        if let Some(id) = &exchange.last_event_id {
            headers.insert(
                const { HeaderName::from_static(cortex_proto::LAST_EVENT_ID_HEADER) },
                text("Last-Event-ID", id)?,
            );
        }
        // A caller's credentials forwarded for this work win over our own.
        if let Some(authorization) = crate::forward::forwarded() {
            headers.insert(header::AUTHORIZATION, authorization);
        } else if let Some(tokens) = &self.inner.tokens
            && let Some(token) = tokens.token().await
        {
            headers.insert(
                header::AUTHORIZATION,
                text("the bearer token", &format!("Bearer {token}"))?,
            );
        }
        let mut request = http::Request::new(Full::new(body));
        *request.method_mut() = exchange.method.clone();
        *request.uri_mut() = path;
        *request.headers_mut() = headers;
        Ok(request)
    }

    /// Opens a stream of `uri` after `last_event_id`, with at most
    /// `max_attempts` attempts.
    pub(crate) async fn open_stream(
        &self,
        service: &ServiceState,
        uri: &str,
        last_event_id: Option<String>,
        max_attempts: u32,
    ) -> Result<(HeaderMap, Incoming, PooledConn), McpError> {
        let exchange = Exchange {
            accept: "text/event-stream",
            last_event_id,
            max_attempts,
            ..Exchange::get(
                Operation::Stream(uri),
                format!("/resource/{}", cortex_proto::path::encode_resource_uri(uri)),
            )
        };
        match self.execute(service, &exchange).await? {
            (
                _,
                Answer::Streaming {
                    headers,
                    body,
                    conn,
                },
            ) => Ok((headers, body, conn)),
            (state, _) => Err(McpError::ResourceStream {
                service: service.name.clone(),
                uri: uri.to_string(),
                reason: format!("{} answered without a stream", state.endpoint.url),
            }),
        }
    }
}

/// `work`'s output, or `Err(())` when `expiry` comes first; unlike
/// `tokio::time::timeout`, one `Sleep` can bound several steps.
async fn within<F: std::future::Future>(
    expiry: std::pin::Pin<&mut tokio::time::Sleep>,
    work: F,
) -> Result<F::Output, ()> {
    tokio::select! {
        biased;
        output = work => Ok(output),
        () = expiry => Err(()),
    }
}

/// Whether an error status counts against the endpoint's health (its
/// breaker and passive ejection): a 5xx or a 429. A 408 or another 4xx is
/// the request's fault, not the endpoint's. Whether the call is repeated
/// is another question, answered by [`McpError::retry`].
fn is_health_failure(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// The error for a non-2xx answer.
fn error_for(
    service: &str,
    operation: Operation<'_>,
    endpoint: &str,
    attempts: u32,
    status: StatusCode,
    envelope: ErrorEnvelope,
) -> McpError {
    let ErrorEnvelope { error } = envelope;
    let status = status.as_u16();
    match (operation, status, &error.code) {
        (Operation::Tool(tool), 404, ErrorCode::ToolNotFound) => McpError::ToolNotFound {
            service: service.into(),
            tool: tool.into(),
        },
        (Operation::Read(uri) | Operation::Stream(uri), 404, _) => McpError::ResourceNotFound {
            service: service.into(),
            uri: uri.into(),
            message: error.message,
        },
        (Operation::Tool(tool), s, _) if s >= 500 || s == 429 || s == 408 => {
            McpError::ServiceCall {
                service: service.into(),
                tool: tool.into(),
                endpoint: endpoint.into(),
                attempts,
                status: s,
                message: error.message,
            }
        }
        (Operation::Read(uri), s, _) if s >= 500 || s == 429 || s == 408 => {
            McpError::ResourceRead {
                service: service.into(),
                uri: uri.into(),
                endpoint: endpoint.into(),
                attempts,
                status: s,
                message: error.message,
            }
        }
        (Operation::Stream(uri), s, _) if s >= 500 || s == 429 || s == 408 => {
            McpError::ResourceStream {
                service: service.into(),
                uri: uri.into(),
                reason: format!(
                    "{endpoint} answered HTTP {s} after {attempts} attempt(s): {}",
                    error.message
                ),
            }
        }
        (operation, s, _) => McpError::Tool {
            service: service.into(),
            operation: operation.name().into(),
            code: error.code,
            message: error.message,
            details: error.details,
            status: s,
        },
    }
}

/// The ids one call sends on every attempt (W3C trace context: the trace id
/// is the call's, the span id is new per attempt).
pub(crate) struct CallIds {
    request_id: HeaderValue,
    trace_id: HeaderValue,
    trace_hex: [u8; 32],
}

impl CallIds {
    pub(crate) fn new() -> Self {
        let mut request_hex = [0u8; 32];
        let mut trace_hex = [0u8; 32];
        random_id().simple().encode_lower(&mut request_hex);
        random_id().simple().encode_lower(&mut trace_hex);
        Self {
            request_id: hex_header(&request_hex),
            trace_id: hex_header(&trace_hex),
            trace_hex,
        }
    }

    /// `traceparent` for one attempt: `00-<trace id>-<new span id>-01`.
    fn traceparent(&self) -> HeaderValue {
        let mut span_hex = [0u8; 32];
        random_id().simple().encode_lower(&mut span_hex);
        let mut value = [0u8; 55];
        value[..3].copy_from_slice(b"00-");
        value[3..35].copy_from_slice(&self.trace_hex);
        value[35] = b'-';
        value[36..52].copy_from_slice(&span_hex[..16]);
        value[52..].copy_from_slice(b"-01");
        hex_header(&value)
    }
}

/// A fresh `Idempotency-Key`: a UUID in its hyphenated form.
fn idempotency_key() -> HeaderValue {
    let mut key = [0u8; 36];
    random_id().hyphenated().encode_lower(&mut key);
    hex_header(&key)
}

/// A header value of ASCII hex digits and dashes (always valid).
fn hex_header(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// A random (version 4) UUID from a fast user-space generator: ids and
/// idempotency keys need uniqueness, not secrecy, and the operating
/// system's generator costs a system call (about a microsecond) per id.
pub(crate) fn random_id() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid()
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What one endpoint looks like now.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointStatus {
    /// The service.
    pub service: String,
    /// The endpoint's URL.
    pub url: String,
    /// Its breaker's state.
    pub breaker: cortex_resilience::breaker::BreakerState,
    /// Time until an open breaker admits a probe.
    pub breaker_retry_after: Option<Duration>,
    /// Its pool.
    pub pool: PoolStats,
}

#[async_trait]
impl McpClient for NetworkMcpClient {
    async fn connect(&self, service: &str) -> Result<(), McpError> {
        let state = self.service_state(service)?;
        // Standard MCP services (see `crate::mcp`): `ping` is the health check.
        if crate::mcp::speaks_mcp(self, &state).await? {
            return Box::pin(crate::mcp::ping(self, &state, None))
                .await
                .map(|_| ());
        }
        self.execute(&state, &Exchange::get(Operation::Read("health"), "/health"))
            .await
            .map(|_| ())
    }

    async fn call_tool(
        &self,
        service: &str,
        tool: &str,
        arguments: Value,
    ) -> Result<Value, McpError> {
        let started = Instant::now();
        let outcome = async {
            let state = self.service_state(service)?;
            if !arguments.is_object() {
                return Err(McpError::arguments_not_an_object(service, tool, &arguments));
            }
            // Standard MCP services: `tools/call` (see `crate::mcp`).
            if crate::mcp::speaks_mcp(self, &state).await? {
                // Boxed: the MCP path's state would otherwise be carried by every
                // Cortex call's future too (it was 4x its size).
                return Box::pin(crate::mcp::call_tool(self, &state, tool, arguments)).await;
            }
            let body = ToolRequest::encode_envelope(&arguments).map_err(|e| McpError::Tool {
                service: service.into(),
                operation: tool.into(),
                code: ErrorCode::InvalidArguments,
                message: format!("arguments cannot be encoded: {e}"),
                details: Value::Null,
                status: 400,
            })?;
            let exchange = Exchange {
                method: Method::POST,
                body: Bytes::from(body),
                idempotency_key: Some(idempotency_key()),
                ..Exchange::get(Operation::Tool(tool), cortex_proto::path::tool(tool))
            };
            let (state_ep, answer) = self.execute(&state, &exchange).await?;
            let Answer::Full { body, .. } = answer else {
                return Err(McpError::ServiceCall {
                    service: service.into(),
                    tool: tool.into(),
                    endpoint: state_ep.endpoint.url.clone(),
                    attempts: 1,
                    status: 200,
                    message: "unexpected streamed answer".into(),
                });
            };
            if body.is_empty() {
                return Ok(Value::Null);
            }
            let value: Value =
                serde_json::from_slice(&body).map_err(|e| McpError::ServiceCall {
                    service: service.into(),
                    tool: tool.into(),
                    endpoint: state_ep.endpoint.url.clone(),
                    attempts: 1,
                    status: 200,
                    message: format!("the answer is not JSON: {e}"),
                })?;
            Ok(unwrap_result(value))
        }
        .await;
        self.inner
            .metrics
            .record(service, tool, started.elapsed(), outcome.as_ref().err());
        outcome
    }

    async fn read_resource(&self, service: &str, uri: &str) -> Result<Resource, McpError> {
        let started = Instant::now();
        let outcome = async {
            let state = self.service_state(service)?;
            // Standard MCP services: `resources/read` (see `crate::mcp`).
            if crate::mcp::speaks_mcp(self, &state).await? {
                return Box::pin(crate::mcp::read(self, &state, uri)).await;
            }
            let exchange = Exchange {
                accept: "application/json, text/event-stream;q=0.5, */*;q=0.1",
                ..Exchange::get(
                    Operation::Read(uri),
                    format!("/resource/{}", cortex_proto::path::encode_resource_uri(uri)),
                )
            };
            let (endpoint, answer) = self.execute(&state, &exchange).await?;
            let Answer::Full { headers, body } = answer else {
                return Err(McpError::ResourceRead {
                    service: service.into(),
                    uri: uri.into(),
                    endpoint: endpoint.endpoint.url.clone(),
                    attempts: 1,
                    status: 200,
                    message: "unexpected streamed answer".into(),
                });
            };
            let mime_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/octet-stream")
                .to_string();
            decode_resource(&mime_type, &body).map_err(|message| McpError::ResourceRead {
                service: service.into(),
                uri: uri.into(),
                endpoint: endpoint.endpoint.url.clone(),
                attempts: 1,
                status: 200,
                message,
            })
        }
        .await;
        self.inner.metrics.record(
            service,
            &format!("read:{}", first_segment(uri)),
            started.elapsed(),
            outcome.as_ref().err(),
        );
        outcome
    }

    async fn stream_resource(&self, service: &str, uri: &str) -> Result<EventStream, McpError> {
        let state = self.service_state(service)?;
        // Standard MCP services: a subscription (see `crate::mcp`).
        if crate::mcp::speaks_mcp(self, &state).await? {
            return Box::pin(crate::mcp::stream(self, state, uri)).await;
        }
        let (_, body, conn) = self.open_stream(&state, uri, None, u32::MAX).await?;
        Ok(stream::resumable(
            self.clone(),
            state,
            uri.to_string(),
            None,
            body,
            conn,
        ))
    }

    async fn list_tools(&self, service: &str) -> Result<ToolList, McpError> {
        self.tools_of(service).await
    }

    async fn list_resources(&self, service: &str) -> Result<ResourceList, McpError> {
        self.resources_of(service).await
    }

    async fn health(&self, service: &str) -> Result<(u16, Health), McpError> {
        self.health_now(service).await
    }

    async fn close(&self) {
        // MCP sessions end first (DELETE), while the pools are still open.
        crate::mcp::close(self).await;
        self.inner.closed.store(true, Ordering::Release);
        let services: Vec<Arc<ServiceState>> =
            lock(&self.inner.services).drain().map(|(_, s)| s).collect();
        for service in services {
            for endpoint in lock(&service.endpoints).values() {
                endpoint.pool.close_idle();
            }
        }
    }
}

/// The first path segment, to group resource metrics (`history`, `item`).
fn first_segment(uri: &str) -> &str {
    uri.trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
}

/// A read's body as a value: JSON as JSON; an SSE body (a server that only
/// streams resources) collected into a JSON array; anything else as text.
fn decode_resource(mime_type: &str, body: &[u8]) -> Result<Resource, String> {
    let essence = mime_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let content = if essence == "application/json" || essence.ends_with("+json") {
        serde_json::from_slice(body)
            .map_err(|e| format!("the {mime_type} body is not JSON: {e}"))?
    } else if essence == "text/event-stream" {
        let mut decoder = cortex_proto::sse::Decoder::new();
        let events = decoder.feed(body).map_err(|e| e.to_string())?;
        Value::Array(
            events
                .into_iter()
                .map(|e| crate::api::StreamEvent::from_sse(e).data)
                .collect(),
        )
    } else {
        Value::String(String::from_utf8_lossy(body).into_owned())
    };
    Ok(Resource {
        content,
        mime_type: mime_type.to_string(),
    })
}
#[cfg(test)]
mod future_size {
    use super::*;

    /// Every call allocates its future, and moves it: the MCP path inlined
    /// into the Cortex one made it 6 KiB. Boxed, it is under 2 KiB; the
    /// bound leaves room for compiler changes but not for a relapse.
    #[tokio::test]
    async fn a_tool_call_future_stays_small() {
        let discovery = Arc::new(cortex_discovery::StaticDiscovery::new());
        let client = NetworkMcpClient::new(discovery).unwrap_or_else(|e| panic!("client: {e}"));
        let call = client.call_tool("memory", "get_item", Value::Null);
        let size = std::mem::size_of_val(&*call);
        assert!(size <= 3 * 1024, "call_tool's future is {size} bytes");
    }
}
