//! Health around any backend: active checks and passive ejection.
//!
//! [`HealthChecked`] wraps a discovery backend and filters what it resolves:
//!
//! - **Active**: every `interval`, `GET /health` on each endpoint of each
//!   service resolved so far (timeout `timeout`). `unhealthy_threshold`
//!   failures in a row mark an endpoint unhealthy; `healthy_threshold`
//!   successes in a row mark it healthy again. New endpoints start healthy,
//!   so a fresh replica takes traffic at once. Every passing check is told
//!   to the [`HealthObserver`]s ([`ServiceDiscovery::observe_health`]): a
//!   client lets an open circuit breaker of that endpoint probe at once, so
//!   a recovered endpoint is used again within about one `interval`.
//!   The check is made by a [`HealthProbe`]: by default [`PlainHttp`],
//!   which speaks no TLS, so `https://` endpoints are then not checked and
//!   only passive ejection applies to them; the network client's probe
//!   (`cortex_client::ClientHealthProbe`, given to [`HealthChecked::with_probe`])
//!   reaches them with the client's own TLS settings, proxy and timeouts.
//! - **Passive**: the client reports real calls ([`ServiceDiscovery::report`]).
//!   `ejection_failures` failures in a row eject an endpoint for
//!   `base_ejection` × the number of times it was ejected before (capped at
//!   `max_ejection`); a success resets the count.
//! - **Never all**: if filtering would leave a service with no endpoint, the
//!   unfiltered set is returned: a call that may fail beats a certain
//!   failure, and the breaker still protects the caller.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::endpoint::{Endpoint, EndpointSet};
use crate::registry::Registry;
use crate::{CallOutcome, DiscoveryError, HealthObserver, ServiceDiscovery};

/// Thresholds and timings of health tracking.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Time between active checks (default 30 s).
    pub interval: Duration,
    /// A check slower than this fails (default 5 s).
    pub timeout: Duration,
    /// Successes in a row that make an unhealthy endpoint healthy (default 2).
    pub healthy_threshold: u32,
    /// Failures in a row that make a healthy endpoint unhealthy (default 3).
    pub unhealthy_threshold: u32,
    /// Real-call failures in a row that eject an endpoint (default 5).
    pub ejection_failures: u32,
    /// First ejection time; later ones grow linearly (default 30 s).
    pub base_ejection: Duration,
    /// Longest ejection (default 300 s).
    pub max_ejection: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            ejection_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Default, Clone)]
struct EndpointHealth {
    unhealthy: bool,
    check_successes: u32,
    check_failures: u32,
    call_failures: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

impl EndpointHealth {
    fn usable(&self, now: Instant) -> bool {
        !self.unhealthy && self.ejected_until.is_none_or(|until| until <= now)
    }
}

struct Inner<D> {
    backend: D,
    config: HealthConfig,
    /// Makes each active check.
    probe: Arc<dyn HealthProbe>,
    /// Health per (service, endpoint URL).
    health: Mutex<HashMap<(String, String), EndpointHealth>>,
    /// Services whose checker runs.
    checked: Mutex<Vec<String>>,
    /// Told of every passing check; dead ones are dropped as found.
    observers: Mutex<Vec<Weak<dyn HealthObserver>>>,
    /// The filtered sets, versioned.
    filtered: Registry,
    /// Grows whenever an endpoint becomes usable or unusable, so a cached
    /// filtered set knows when it is stale.
    epoch: AtomicU64,
    /// Per service: the filtered set and what it was computed from. Keeps
    /// `resolve` (called on every attempt) from filtering every time.
    cache: Mutex<HashMap<String, Cached>>,
}

/// A filtered set and the inputs it is valid for.
struct Cached {
    backend_version: u64,
    epoch: u64,
    /// The earliest moment an ejection ends (the set changes then).
    valid_until: Option<Instant>,
    set: Arc<EndpointSet>,
}

/// How an active check asks an endpoint for `GET /health`.
#[async_trait]
pub trait HealthProbe: Send + Sync + 'static {
    /// `Ok` when `endpoint` of `service` answers `/health` with a 2xx
    /// within `timeout`; else why not.
    async fn check(
        &self,
        service: &str,
        endpoint: &Endpoint,
        timeout: Duration,
    ) -> Result<(), String>;

    /// Whether `https://` endpoints can be checked; those of a probe that
    /// cannot are left to passive ejection (a plain-HTTP check of a TLS
    /// port would mark a sound endpoint down).
    fn speaks_tls(&self) -> bool;
}

/// The default probe: [`check`], plain HTTP on a fresh connection. It
/// speaks no TLS.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainHttp;

#[async_trait]
impl HealthProbe for PlainHttp {
    async fn check(
        &self,
        _service: &str,
        endpoint: &Endpoint,
        timeout: Duration,
    ) -> Result<(), String> {
        check(endpoint, timeout).await
    }

    fn speaks_tls(&self) -> bool {
        false
    }
}

/// A discovery backend with health tracking; see the module docs.
pub struct HealthChecked<D> {
    inner: Arc<Inner<D>>,
}

impl<D> std::fmt::Debug for HealthChecked<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecked")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl<D: ServiceDiscovery> HealthChecked<D> {
    /// Tracks the health of `backend`'s endpoints, checking them with
    /// [`PlainHttp`].
    pub fn new(backend: D, config: HealthConfig) -> Self {
        Self::with_probe(backend, config, Arc::new(PlainHttp))
    }

    /// Tracks the health of `backend`'s endpoints, checking them with
    /// `probe`.
    pub fn with_probe(backend: D, config: HealthConfig, probe: Arc<dyn HealthProbe>) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                config,
                probe,
                health: Mutex::new(HashMap::new()),
                checked: Mutex::new(Vec::new()),
                observers: Mutex::new(Vec::new()),
                filtered: Registry::new(),
                epoch: AtomicU64::new(0),
                cache: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The backend inside.
    pub fn backend(&self) -> &D {
        &self.inner.backend
    }

    /// Whether an endpoint is usable now (healthy and not ejected).
    pub fn is_endpoint_usable(&self, service: &str, url: &str) -> bool {
        let health = self.inner.health.lock().unwrap_or_else(|p| p.into_inner());
        health
            .get(&(service.to_string(), url.to_string()))
            .is_none_or(|h| h.usable(Instant::now()))
    }

    fn start_checker(&self, service: &str) {
        let mut checked = self.inner.checked.lock().unwrap_or_else(|p| p.into_inner());
        if checked.iter().any(|s| s == service) {
            return;
        }
        checked.push(service.to_string());
        tokio::spawn(check_loop(Arc::downgrade(&self.inner), service.to_string()));
    }
}

async fn check_loop<D: ServiceDiscovery>(inner: Weak<Inner<D>>, service: String) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let interval = strong.config.interval;
        if let Ok(set) = strong.backend.resolve(&service).await {
            let timeout = strong.config.timeout;
            let probe = &strong.probe;
            // A probe without TLS leaves `https://` endpoints alone (see
            // `HealthProbe::speaks_tls`): passive ejection covers them.
            let checks = set
                .endpoints
                .iter()
                .filter(|e| !e.is_tls() || probe.speaks_tls())
                .map(|e| {
                    let service = &service;
                    async move { (e, probe.check(service, e, timeout).await) }
                });
            let mut passed = Vec::new();
            for (endpoint, outcome) in futures::future::join_all(checks).await {
                if outcome.is_ok() {
                    passed.push(endpoint);
                }
                strong.record_check(&service, &endpoint.url, outcome);
            }
            strong.notify_passed(&service, &passed);
        }
        drop(strong);
        tokio::time::sleep(interval).await;
    }
}

/// `GET /health` on a fresh connection; `Err` says why it failed. Plain
/// HTTP only: an `https://` endpoint is an `Err` without any traffic.
pub async fn check(endpoint: &Endpoint, timeout: Duration) -> Result<(), String> {
    if endpoint.is_tls() {
        return Err(format!(
            "{}: active health checks do not speak TLS",
            endpoint.url
        ));
    }
    let authority = endpoint
        .authority()
        .ok_or_else(|| format!("bad endpoint {}", endpoint.url))?;
    let probe = async {
        let stream = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = http::Request::builder()
            .uri(format!("{}/health", endpoint.base_path()))
            .header(http::header::HOST, &authority)
            .header(http::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!(
                "health answered HTTP {}",
                response.status().as_u16()
            ))
        }
    };
    tokio::time::timeout(timeout, probe)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within {}",
                cortex_resilience::human::HumanDuration(timeout)
            ))
        })
}

impl<D> Inner<D> {
    /// Tells every live observer which endpoints of `service` passed (outside
    /// every lock of ours, so an observer may call back into discovery).
    fn notify_passed(&self, service: &str, passed: &[&Endpoint]) {
        if passed.is_empty() {
            return;
        }
        let observers: Vec<Arc<dyn HealthObserver>> = {
            let mut observers = self.observers.lock().unwrap_or_else(|p| p.into_inner());
            observers.retain(|o| o.strong_count() > 0);
            observers.iter().filter_map(Weak::upgrade).collect()
        };
        for observer in &observers {
            for endpoint in passed {
                observer.check_passed(service, endpoint);
            }
        }
    }

    fn record_check(&self, service: &str, url: &str, outcome: Result<(), String>) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let entry = health
            .entry((service.to_string(), url.to_string()))
            .or_default();
        match outcome {
            Ok(()) => {
                entry.check_failures = 0;
                entry.check_successes += 1;
                if entry.unhealthy && entry.check_successes >= self.config.healthy_threshold {
                    entry.unhealthy = false;
                    self.epoch.fetch_add(1, Ordering::Release);
                    tracing::info!(service, endpoint = url, "endpoint healthy again");
                }
            }
            Err(reason) => {
                entry.check_successes = 0;
                entry.check_failures += 1;
                if !entry.unhealthy && entry.check_failures >= self.config.unhealthy_threshold {
                    entry.unhealthy = true;
                    self.epoch.fetch_add(1, Ordering::Release);
                    tracing::warn!(service, endpoint = url, %reason, "endpoint unhealthy");
                }
            }
        }
    }
}

#[async_trait]
impl<D: ServiceDiscovery> ServiceDiscovery for HealthChecked<D> {
    async fn resolve(&self, service: &str) -> Result<Arc<EndpointSet>, DiscoveryError> {
        let set = self.inner.backend.resolve(service).await?;
        let now = Instant::now();
        let epoch = self.inner.epoch.load(Ordering::Acquire);
        {
            let cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(cached) = cache.get(service)
                && cached.backend_version == set.version
                && cached.epoch == epoch
                && cached.valid_until.is_none_or(|until| now < until)
            {
                return Ok(cached.set.clone());
            }
        }
        self.start_checker(service);
        let (usable, valid_until) = {
            let health = self.inner.health.lock().unwrap_or_else(|p| p.into_inner());
            let mut valid_until: Option<Instant> = None;
            let usable: Vec<Endpoint> = set
                .endpoints
                .iter()
                .filter(|e| {
                    let Some(h) = health.get(&(service.to_string(), e.url.clone())) else {
                        return true;
                    };
                    if let Some(until) = h.ejected_until.filter(|until| *until > now) {
                        valid_until = Some(valid_until.map_or(until, |v| v.min(until)));
                    }
                    h.usable(now)
                })
                .cloned()
                .collect();
            (usable, valid_until)
        };
        let endpoints = if usable.is_empty() {
            set.endpoints.clone()
        } else {
            usable
        };
        let filtered = self.inner.filtered.publish(service, endpoints);
        self.inner
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                service.to_string(),
                Cached {
                    backend_version: set.version,
                    epoch,
                    valid_until,
                    set: filtered.clone(),
                },
            );
        Ok(filtered)
    }

    async fn is_healthy(&self, service: &str) -> bool {
        let Ok(set) = self.inner.backend.resolve(service).await else {
            return false;
        };
        self.start_checker(service);
        let now = Instant::now();
        let health = self.inner.health.lock().unwrap_or_else(|p| p.into_inner());
        set.endpoints.iter().any(|e| {
            health
                .get(&(service.to_string(), e.url.clone()))
                .is_none_or(|h| h.usable(now))
        })
    }

    fn observe_health(&self, observer: Weak<dyn HealthObserver>) -> bool {
        let mut observers = self
            .inner
            .observers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        observers.retain(|o| o.strong_count() > 0);
        observers.push(observer);
        true
    }

    fn report(&self, service: &str, endpoint: &Endpoint, outcome: CallOutcome) {
        let config = &self.inner.config;
        let mut health = self.inner.health.lock().unwrap_or_else(|p| p.into_inner());
        let key = (service.to_string(), endpoint.url.clone());
        match outcome {
            CallOutcome::Success => {
                if let Some(entry) = health.get_mut(&key) {
                    entry.call_failures = 0;
                }
            }
            CallOutcome::Failure => {
                let now = Instant::now();
                let entry = health.entry(key).or_default();
                entry.call_failures += 1;
                if entry.call_failures >= config.ejection_failures
                    && entry.ejected_until.is_none_or(|u| u <= now)
                {
                    entry.ejections += 1;
                    entry.call_failures = 0;
                    let time = config
                        .base_ejection
                        .saturating_mul(entry.ejections)
                        .min(config.max_ejection);
                    entry.ejected_until = Some(now + time);
                    self.inner.epoch.fetch_add(1, Ordering::Release);
                    tracing::warn!(service, endpoint = %endpoint.url, ejection = entry.ejections, ?time, "endpoint ejected after failed calls");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StaticDiscovery;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Records what it is told.
    #[derive(Default)]
    struct Seen(Mutex<Vec<(String, String)>>);

    impl HealthObserver for Seen {
        fn check_passed(&self, service: &str, endpoint: &Endpoint) {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((service.to_string(), endpoint.url.clone()));
        }
    }

    impl Seen {
        fn urls(&self) -> Vec<String> {
            let seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
            seen.iter().map(|(_, url)| url.clone()).collect()
        }
    }

    /// A loopback server answering every request `200 OK`.
    async fn always_ok() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = stream.read(&mut buf).await;
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        format!("http://{addr}")
    }

    fn dead_url() -> String {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"))
            .port();
        format!("http://127.0.0.1:{port}")
    }

    #[tokio::test]
    async fn https_endpoints_are_left_out_of_active_checks() {
        // A TLS port: a plain-HTTP check would fail there and mark a sound
        // endpoint down. Nothing may connect to it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let tls = format!(
            "https://{}",
            listener
                .local_addr()
                .unwrap_or_else(|e| panic!("addr: {e}"))
        );
        let connected = Arc::new(AtomicU64::new(0));
        tokio::spawn({
            let connected = connected.clone();
            async move {
                while listener.accept().await.is_ok() {
                    connected.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        let dead = dead_url();
        let backend = StaticDiscovery::new();
        backend.register("svc", vec![Endpoint::new(&tls), Endpoint::new(&dead)]);
        let discovery = HealthChecked::new(
            backend,
            HealthConfig {
                interval: Duration::from_millis(10),
                timeout: Duration::from_millis(200),
                unhealthy_threshold: 1,
                ..HealthConfig::default()
            },
        );
        discovery
            .resolve("svc")
            .await
            .unwrap_or_else(|e| panic!("resolve: {e}"));
        // The checker runs: the dead plain endpoint goes down.
        let started = Instant::now();
        while discovery.is_endpoint_usable("svc", &dead) {
            assert!(started.elapsed() < Duration::from_secs(10), "no check ran");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(discovery.is_endpoint_usable("svc", &tls));
        assert_eq!(connected.load(Ordering::SeqCst), 0);
        let refused = check(&Endpoint::new(&tls), Duration::from_secs(1)).await;
        assert!(
            refused.as_ref().is_err_and(|e| e.contains("TLS")),
            "{refused:?}"
        );
        assert_eq!(connected.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn observers_hear_of_every_passing_check_and_only_while_they_live() {
        let live = always_ok().await;
        let dead = dead_url();
        let backend = StaticDiscovery::new();
        backend.register("svc", vec![Endpoint::new(&live), Endpoint::new(&dead)]);
        let discovery = HealthChecked::new(
            backend,
            HealthConfig {
                interval: Duration::from_millis(20),
                timeout: Duration::from_millis(500),
                ..HealthConfig::default()
            },
        );
        let seen = Arc::new(Seen::default());
        let observer: Weak<dyn HealthObserver> = Arc::<Seen>::downgrade(&seen);
        assert!(discovery.observe_health(observer));
        assert!(!StaticDiscovery::new().observe_health(Weak::<Seen>::new()));

        // Resolving starts the checker of the service.
        discovery
            .resolve("svc")
            .await
            .unwrap_or_else(|e| panic!("resolve: {e}"));
        let started = Instant::now();
        while seen.urls().len() < 3 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no passing checks reported: {:?}",
                seen.urls()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let urls = seen.urls();
        assert!(urls.iter().all(|url| *url == live), "{urls:?}");
        assert!(
            seen.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .all(|(service, _)| service == "svc")
        );

        // A dropped observer is forgotten at the next passing check.
        drop(seen);
        let started = Instant::now();
        while !discovery
            .inner
            .observers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "never forgotten"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
