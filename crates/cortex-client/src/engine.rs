//! The engine: one call's life, whatever the dialect. It owns the deadline,
//! the retry budget, endpoint choice, the breakers, the pool, retries and the
//! classification of outcomes; the dialects ([`crate::cortex`],
//! [`crate::mcp`]) say what to send and read what comes back, and
//! [`crate::network`] picks one per service. The engine imports no module
//! above it.
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
//! An [`Exchange`] says whether it is idempotent: the Cortex dialect's tool
//! calls carry an `Idempotency-Key` (the same on every attempt), which our
//! services honour, so they are; reads are GETs.
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
use cortex_proto::{ErrorCode, ErrorEnvelope};
use cortex_resilience::backoff::{Backoff, Jitter, next_delay, parse_retry_after};
use cortex_resilience::breaker::{BreakerConfig, CircuitBreaker};
use cortex_resilience::budget::RetryBudget;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::config::ClientConfig;
use crate::error::{Cause, McpError, Retry};
use crate::metrics::{EndpointStatus, Metrics};
use crate::operation::Operation;
use crate::pool::{AcquireError, EndpointPool, PoolSettings, PooledConn, Purpose, SendError};
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

    /// The whole `Authorization` header value, for a provider whose token
    /// never changes: made once, so that a request takes a handle on it
    /// instead of asking [`Self::token`] and formatting and checking the
    /// header again. `None` (the default): [`Self::token`] is asked for
    /// every request.
    fn fixed_header(&self) -> Option<HeaderValue> {
        None
    }
}

/// A token that never changes.
#[derive(Clone)]
pub struct StaticToken {
    token: String,
    /// `Bearer <token>`, made once; `None` when the token cannot be a
    /// header value, which each request then reports.
    header: Option<HeaderValue>,
}

impl StaticToken {
    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn new(token: impl Into<String>) -> Self {
        let token = token.into();
        let header = HeaderValue::from_str(&format!("Bearer {token}"))
            .ok()
            .map(|mut value| {
                value.set_sensitive(true);
                value
            });
        Self { token, header }
    }
}

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticToken")
            .field("token", &"<redacted>")
            .finish()
    }
}

/// The credentials of one service that the service itself can ask to
/// change: OAuth ([`crate::oauth`]). Its token goes on every request to the
/// service (not on those made inside [`crate::with_authorization`]); a 401,
/// or a 403 with `insufficient_scope`, is handed to
/// [`Authorizer::challenged`], and the request is sent again when it says
/// so, outside the retry budget and with a fresh deadline (an
/// authorization may wait on a person).
#[async_trait]
pub(crate) trait Authorizer: Send + Sync + 'static {
    /// The bearer token for requests to `at.endpoint`, if there is one.
    async fn token(&self, at: &AuthTarget<'_>) -> Option<String>;

    /// The service refused a request; `Ok(true)`: a new token is ready, send
    /// it again; `Ok(false)`: nothing more can be done, the refusal stands.
    async fn challenged(
        &self,
        at: &AuthTarget<'_>,
        challenge: &AuthChallenge,
    ) -> Result<bool, McpError>;
}

/// Where an [`Authorizer`] is asked for a token.
pub(crate) struct AuthTarget<'a> {
    pub(crate) service: &'a str,
    pub(crate) endpoint: &'a Endpoint,
    /// The service's effective settings (proxy, TLS, timeouts), which the
    /// authorizer's own requests follow.
    pub(crate) config: &'a ClientConfig,
}

/// A refusal that asks for (other) credentials.
#[derive(Clone)]
pub(crate) struct AuthChallenge {
    /// 401 or 403.
    pub(crate) status: u16,
    /// The `WWW-Authenticate` header, when there was one.
    pub(crate) www_authenticate: Option<String>,
    /// The token the refused request carried.
    pub(crate) sent: Option<String>,
}

/// Authorizations one call may run before the refusal stands: the first
/// authorization, and one step-up (more scopes) after it.
const MAX_AUTH_ROUNDS: u32 = 2;

#[async_trait]
impl TokenProvider for StaticToken {
    async fn token(&self) -> Option<String> {
        Some(self.token.clone())
    }

    fn fixed_header(&self) -> Option<HeaderValue> {
        self.header.clone()
    }
}

/// What every call of one client shares: discovery, per-service state
/// (config, backoff, budget, endpoints with their pools and breakers),
/// credentials and metrics. Dialects hold it in an `Arc`.
pub(crate) struct Engine {
    discovery: Arc<dyn ServiceDiscovery>,
    config: ClientConfig,
    services: Mutex<HashMap<String, Arc<ServiceState>>>,
    tokens: Option<Arc<dyn TokenProvider>>,
    /// Per service: its own credentials (OAuth), which win over `tokens`.
    authorizers: HashMap<String, Arc<dyn Authorizer>>,
    balancer: Balancer,
    user_agent: HeaderValue,
    closed: AtomicBool,
    pub(crate) metrics: Arc<Metrics>,
}

impl Engine {
    /// An engine resolving names through `discovery`. Registers itself
    /// (weakly) with the discovery's health checks, if it runs any.
    pub(crate) fn new(
        discovery: Arc<dyn ServiceDiscovery>,
        config: ClientConfig,
        balancer: Balancer,
        tokens: Option<Arc<dyn TokenProvider>>,
        authorizers: HashMap<String, Arc<dyn Authorizer>>,
        user_agent: HeaderValue,
    ) -> Arc<Self> {
        let engine = Arc::new(Self {
            discovery,
            config,
            services: Mutex::new(HashMap::new()),
            tokens,
            authorizers,
            balancer,
            user_agent,
            closed: AtomicBool::new(false),
            metrics: Arc::new(Metrics::default()),
        });
        // Passing health checks let open breakers probe at once. Held
        // weakly: a dropped client is forgotten by its discovery.
        let observer: Weak<dyn HealthObserver> = Arc::<Self>::downgrade(&engine);
        if engine.discovery.observe_health(observer) {
            tracing::debug!(
                "discovery runs active health checks: a passing one half-opens the endpoint's open breaker"
            );
        }
        engine
    }

    /// Later calls fail with [`McpError::Closed`]; idle connections close.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let services: Vec<Arc<ServiceState>> =
            lock(&self.services).drain().map(|(_, s)| s).collect();
        for service in services {
            for endpoint in lock(&service.endpoints).values() {
                endpoint.pool.close_idle();
            }
        }
    }
}

impl HealthObserver for Engine {
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
    /// Its own credentials (OAuth), when it has them.
    auth: Option<Arc<dyn Authorizer>>,
}

/// Per endpoint of a service: its pool and its breaker.
pub(crate) struct EndpointState {
    pub(crate) endpoint: Endpoint,
    /// The `Host` header, made once.
    host: HeaderValue,
    pool: Arc<EndpointPool>,
    pub(crate) breaker: CircuitBreaker,
}

/// One HTTP exchange to run with retries.
pub(crate) struct Exchange<'a> {
    pub(crate) operation: Operation<'a>,
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) body: Bytes,
    pub(crate) accept: &'static str,
    /// The same on every attempt of one call.
    pub(crate) idempotency_key: Option<HeaderValue>,
    pub(crate) last_event_id: Option<String>,
    /// Repeating it is safe even after it may have reached the service.
    pub(crate) idempotent: bool,
    /// At most this many attempts (a stream reconnect makes one; its own
    /// loop backs off).
    pub(crate) max_attempts: u32,
    /// Only this endpoint (by URL): for what lives on one replica (an MCP
    /// session, a health check of one replica).
    pub(crate) pin: Option<Endpoint>,
    /// Per chosen endpoint, headers, body or path that only that endpoint
    /// gives (an MCP session's); `None` from it means the endpoint is not
    /// ready: nothing is sent and the answer is [`Answer::Unprepared`], so
    /// the dialect can prepare it and call again.
    pub(crate) prepare: Option<&'a PrepareFn<'a>>,
    /// Hand a 2xx SSE answer over as a stream even when the exchange is not
    /// a stream (an MCP POST may answer so).
    pub(crate) stream_sse: bool,
    /// Hand a 4xx answer (but 408 and 429) back as [`Answer::Rejected`] for
    /// the dialect to read (MCP carries JSON-RPC errors, and session
    /// expiry, in them) instead of classifying it here.
    pub(crate) raw_client_errors: bool,
    /// A stream that may share an HTTP/2 connection
    /// ([`Purpose::SharedStream`]): a Cortex resource stream, of which a
    /// client may hold thousands against a service that speaks HTTP/2. Not
    /// an MCP session's event stream: one per session, and MCP servers
    /// speak HTTP/1.1, so trying HTTP/2 would only cost a first attempt.
    pub(crate) shared_stream: bool,
}

/// What an exchange asks of the chosen endpoint before sending (see
/// [`Exchange::prepare`]).
pub(crate) type PrepareFn<'f> = dyn Fn(&Endpoint) -> Option<Prepared> + Send + Sync + 'f;

/// What one endpoint adds to one request (an MCP session's headers).
#[derive(Debug, Clone, Default)]
pub(crate) struct Prepared {
    /// Added to the request's headers (an MCP session's id, revision,
    /// `Mcp-Method`, …).
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
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
            shared_stream: false,
        }
    }

    /// A JSON-RPC exchange with the endpoint's URL (standard MCP):
    /// `method` with a `body`. An SSE answer comes back as [`Answer::Streaming`], a 4xx as
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
    /// The exchange's `prepare` had nothing for the chosen
    /// endpoint; nothing was sent.
    Unprepared,
    /// A 4xx answer, read to the end, when the exchange asked for them
    /// ([`Exchange::raw_client_errors`]).
    Rejected { status: StatusCode, body: Bytes },
}

/// One failed attempt. Whether the call goes on is the error's
/// classification ([`McpError::retry`]), with one rule of the call's own:
/// once an answer has started, the call is never repeated.
struct AttemptFailure {
    error: McpError,
    retry_after: Option<Duration>,
    answer_started: bool,
    /// The service asked for credentials (see [`Authorizer`]).
    challenge: Option<AuthChallenge>,
}

impl From<McpError> for AttemptFailure {
    fn from(error: McpError) -> Self {
        Self {
            error,
            retry_after: None,
            answer_started: false,
            challenge: None,
        }
    }
}

impl Engine {
    /// Calls, errors, latency, retries, breaker state and pool use, per
    /// service and tool.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The state of every endpoint this client has used.
    pub(crate) fn endpoint_status(&self) -> Vec<EndpointStatus> {
        let services: Vec<Arc<ServiceState>> = lock(&self.services).values().cloned().collect();
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

    /// The discovery this client resolves names with.
    pub(crate) fn discovery(&self) -> &Arc<dyn ServiceDiscovery> {
        &self.discovery
    }

    pub(crate) fn service_state(&self, service: &str) -> Result<Arc<ServiceState>, McpError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(McpError::Closed);
        }
        let mut services = lock(&self.services);
        if let Some(state) = services.get(service) {
            return Ok(state.clone());
        }
        let config = self.config.for_service(service);
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
            auth: self.authorizers.get(service).cloned(),
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
            .ok_or_else(|| format!("endpoint `{}` is not an http(s):// URL", endpoint.url))?;
        let settings = PoolSettings {
            max_connections: service.config.max_connections,
            idle_timeout: service.config.idle_timeout,
            connect_timeout: service.config.connect_timeout,
            stream_http2: service.config.stream_http2,
            route: crate::proxy::Route::for_target(
                &service.config.proxy,
                &service.config.no_proxy,
                service.config.proxy_tunnel,
                &authority,
                endpoint.is_tls(),
            )?,
            tls: crate::tls::Tls::for_endpoint(
                &crate::tls::TlsSettings {
                    system_roots: service.config.tls_system_roots,
                    ca_file: &service.config.ca_file,
                    client_cert: &service.config.client_cert,
                    client_key: &service.config.client_key,
                },
                endpoint,
            )?,
        };
        let metrics = self.metrics.clone();
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
        let mut deadline = started + service.config.request_timeout;
        let ids = CallIds::new();
        let mut auth_rounds = 0;
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
            if let (Some(challenge), Some(auth), Some(state)) =
                (&failure.challenge, &service.auth, &attempted)
            {
                if auth_rounds >= MAX_AUTH_ROUNDS {
                    return Err(failure.error);
                }
                auth_rounds += 1;
                let target = AuthTarget {
                    service: &service.name,
                    endpoint: &state.endpoint,
                    config: &service.config,
                };
                // Boxed: rare, and its state would weigh on every call.
                if !Box::pin(auth.challenged(&target, challenge)).await? {
                    return Err(failure.error);
                }
                // Not a retry: the same request with new credentials, with
                // the time the authorization took given back.
                attempt -= 1;
                deadline = Instant::now() + service.config.request_timeout;
                continue;
            }
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
            self.metrics.retry(
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
            self.discovery
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
        let request = match self
            .request(service, &state, exchange, prepared.as_ref(), ids)
            .await
        {
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
        // What a refusal asking for credentials is checked against: the
        // bearer token sent, when the service's own authorizer gave it.
        let sent_bearer: Option<Option<String>> =
            (service.auth.is_some() && crate::forward::forwarded().is_none()).then(|| {
                request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::to_string)
            });
        let pool_deadline = deadline.min(Instant::now() + service.config.pool_timeout);
        // A resource stream waits on its connection for as long as it
        // lives: one dialled for it reads through a small buffer.
        let purpose = match exchange.operation {
            Operation::Stream(_) if exchange.shared_stream => Purpose::SharedStream,
            Operation::Stream(_) => Purpose::Stream,
            Operation::Tool(_) | Operation::Read(_) => Purpose::Call,
        };
        let mut conn = match state.pool.acquire(pool_deadline, purpose).await {
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
            // The proxy refused the tunnel (407, 403): not the endpoint's failure.
            Err(AcquireError::Proxy(cause)) => {
                permit.ignore();
                let error = connection_error(cause.to_string(), false, Some(cause));
                return Err(AttemptFailure::from(error));
            }
        };

        // One timer for the whole exchange (sending, then reading the
        // answer), armed once rather than once per phase.
        let expiry = tokio::time::sleep_until(deadline);
        tokio::pin!(expiry);
        // Boxed: sending (with its proxy handling) would otherwise add its
        // state to every call's future, which every call moves.
        let response = match within(expiry.as_mut(), Box::pin(conn.send(request))).await {
            Ok(Ok(response)) => response,
            Ok(Err(SendError::NotSent(cause))) => {
                permit.failure();
                report(CallOutcome::Failure);
                let error = connection_error(cause.to_string(), false, Some(cause));
                return Err(AttemptFailure::from(error));
            }
            Ok(Err(SendError::Closed)) => {
                permit.ignore();
                let error = connection_error("connection closed".into(), false, None);
                return Err(AttemptFailure::from(error));
            }
            // A server restarting or closing an idle connection: not its
            // failure, and the request is safe to send again.
            Ok(Err(SendError::GoingAway(cause))) => {
                permit.ignore();
                let reason = format!(
                    "the server is closing the connection (GOAWAY) and did not process the request: {cause}"
                );
                let error = connection_error(reason, false, Some(Cause::new(cause)));
                return Err(AttemptFailure::from(error));
            }
            // A stream connection of a kind the endpoint cannot take (an
            // answer head larger than its small read buffer, or no h2c):
            // the client's choice, not the endpoint's failure. A stream's
            // GET may be asked again, and the pool now dials this
            // endpoint's stream connections the way that works.
            Ok(Err(SendError::Unsuited(why, cause))) => {
                permit.ignore();
                let reason = format!("{why}: {cause}");
                let error = connection_error(reason, why.sent(), Some(Cause::new(cause)));
                return Err(AttemptFailure::from(error));
            }
            // The proxy refused the request (407): not the endpoint's failure.
            Ok(Err(SendError::Proxy(cause))) => {
                permit.ignore();
                let error = connection_error(cause.to_string(), false, Some(cause));
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
        if let Some(challenge) =
            sent_bearer.and_then(|sent| auth_challenge(status, &parts.headers, sent))
        {
            permit.ignore();
            let envelope = ErrorEnvelope::from_response(status.as_u16(), &body);
            let error = error_for(
                &service.name,
                exchange.operation,
                &url,
                attempt,
                status,
                envelope,
            );
            return Err(AttemptFailure {
                challenge: Some(challenge),
                ..AttemptFailure::from(error)
            });
        }
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
        cortex_discovery::balance::order(self.balancer, endpoints, tried, &service.next, |e| {
            self.in_flight(service, e)
        })
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
        service: &ServiceState,
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
        headers.insert(header::USER_AGENT, self.user_agent.clone());
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
                headers.append(name.clone(), value.clone());
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
        } else if let Some(auth) = &service.auth {
            let target = AuthTarget {
                service: &service.name,
                endpoint: &endpoint.endpoint,
                config: &service.config,
            };
            // Boxed: a refresh may run inside, which would otherwise weigh
            // on every call's future.
            if let Some(token) = Box::pin(auth.token(&target)).await {
                headers.insert(
                    header::AUTHORIZATION,
                    text("the bearer token", &format!("Bearer {token}"))?,
                );
            }
        } else if let Some(tokens) = &self.tokens
            && let Some(authorization) = tokens.fixed_header()
        {
            headers.insert(header::AUTHORIZATION, authorization);
        } else if let Some(tokens) = &self.tokens
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

/// The challenge of a refusal that asks for credentials: a 401, or a 403
/// whose `WWW-Authenticate` says `insufficient_scope` (any other 403 is a
/// plain refusal: the same credentials will not do better).
fn auth_challenge(
    status: StatusCode,
    headers: &HeaderMap,
    sent: Option<String>,
) -> Option<AuthChallenge> {
    let www_authenticate = headers
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let asks = match status {
        StatusCode::UNAUTHORIZED => true,
        StatusCode::FORBIDDEN => www_authenticate
            .as_deref()
            .is_some_and(|w| w.contains("insufficient_scope")),
        _ => false,
    };
    asks.then(|| AuthChallenge {
        status: status.as_u16(),
        www_authenticate,
        sent,
    })
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
pub(crate) fn idempotency_key() -> HeaderValue {
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
