//! Service discovery: names to endpoints, kept current.
//!
//! Services move, multiply and die; a client asks discovery on every
//! attempt instead of caching an endpoint forever (the seed's `connect` did,
//! so a moved service was never found again).
//!
//! A name resolves to an [`EndpointSet`]: the endpoints that serve it now,
//! with a version that grows on every change, published through a
//! [`Registry`] that callers can watch. When a backend fails, the last good
//! set stays; an empty set is a valid answer (the service has no replica
//! now), not an error.
//!
//! # Layout
//! - [`endpoint`]: [`Endpoint`], [`Protocol`], [`EndpointSet`].
//! - [`registry`]: [`Registry`], versioned sets with watchers.
//! - [`static_map`]: [`StaticDiscovery`]: the embedded default, from code and env vars.
//! - [`file`](mod@file): [`FileDiscovery`]: a TOML file, reloaded when it changes.
//! - [`dns`]: [`DnsSrvDiscovery`]: DNS SRV records, refreshed per TTL.
//! - [`etcd`]: `EtcdDiscovery` and `EtcdRegistration`: a watched etcd prefix, and
//!   leases (with the `etcd` cargo feature; [`EtcdConfig`] is always here).
//! - [`balance`]: [`Balancer`]: power of two choices or round robin.
//! - [`health`]: [`HealthChecked`]: active checks and passive ejection around any
//!   backend; a [`HealthObserver`] hears of every passing check.
//! - [`spec`]: [`DiscoverySpec`]: a backend named by one string (`env`, `file:PATH`,
//!   `dns:DOMAIN`, `etcd://…`), parsed and built the same way by every program.
//! - `mcp_error`: `From<DiscoveryError>` (and the spec's error) for the
//!   clients' `McpError`, so one `?` serves code that builds discovery and calls services.
//!
//! # Example
//! ```
//! use cortex_discovery::{ServiceDiscovery, StaticDiscovery};
//! # async fn run() {
//! let vars = [("MEMORY_SERVICE_URL".to_string(), "http://10.0.0.5:9000,http://10.0.0.6:9000".to_string())];
//! let discovery = StaticDiscovery::from_env(vars).unwrap();
//! let set = discovery.resolve("memory").await.unwrap();
//! assert_eq!(set.endpoints.len(), 2);
//! # }
//! ```

pub mod balance;
pub mod dns;
pub mod endpoint;
pub mod etcd;
pub mod file;
pub mod health;
mod mcp_error;
pub mod registry;
pub mod spec;
pub mod static_map;

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;

pub use balance::Balancer;
pub use dns::{DnsSrvConfig, DnsSrvDiscovery};
pub use endpoint::{Endpoint, EndpointSet, Protocol};
pub use etcd::EtcdConfig;
#[cfg(feature = "etcd")]
pub use etcd::{EtcdDiscovery, EtcdRegistration};
pub use file::FileDiscovery;
pub use health::{HealthChecked, HealthConfig, HealthProbe, PlainHttp};
pub use registry::Registry;
pub use spec::{DiscoverySpec, DiscoverySpecError};
pub use static_map::StaticDiscovery;

/// Why discovery could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The name is not known to the backend.
    #[error("no service named `{0}` is registered")]
    Unknown(String),
    /// The backend failed and there is no earlier answer to fall back on.
    #[error("discovery backend failed for `{service}`: {reason}")]
    Backend {
        /// The service asked for.
        service: String,
        /// What failed.
        reason: String,
    },
    /// `wait_for_services` ran out of time.
    #[error(
        "services not ready after {}: {}",
        cortex_resilience::human::HumanDuration(*waited),
        missing.join(", ")
    )]
    NotReady {
        /// Services still without a healthy endpoint.
        missing: Vec<String>,
        /// How long it waited.
        waited: Duration,
    },
    /// The discovery configuration is invalid.
    #[error("invalid discovery configuration: {0}")]
    Config(String),
    /// An endpoint URL given in configuration cannot be used. The reason
    /// names the offending URL (or value).
    #[error("{origin}: {reason}")]
    InvalidEndpoint {
        /// Where it was given: an environment variable's name, a flag.
        origin: String,
        /// The value as given.
        value: String,
        /// What is wrong with it, and how to write it instead.
        reason: String,
    },
    /// A backend this build leaves out (a cargo feature that is off).
    #[error(
        "{what} is not built into this program; build it with the cargo feature `{feature}` \
         (for the command line: cargo install --path crates/cortex-cli --features {feature})"
    )]
    NotBuiltIn {
        /// What was asked for.
        what: String,
        /// The cargo feature that brings it.
        feature: &'static str,
    },
}

impl DiscoveryError {
    /// Whether the error is in what the caller configured (a bad URL, a
    /// backend not built in), so that asking again cannot help.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::Config(_) | Self::NotBuiltIn { .. } | Self::InvalidEndpoint { .. }
        )
    }
}

/// How a real call to an endpoint went, for passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// It answered.
    Success,
    /// It failed in a way that is the endpoint's fault (connect error,
    /// timeout, 5xx).
    Failure,
}

/// Told of the active health checks a discovery runs
/// ([`ServiceDiscovery::observe_health`]), so that a client can use a
/// recovered endpoint again at once (its open circuit breaker lets a probe
/// through) instead of waiting out its breaker's reset timeout.
pub trait HealthObserver: Send + Sync + 'static {
    /// `endpoint` of `service` has just passed an active health check.
    ///
    /// Called on the checker's task after every passing check, whatever the
    /// endpoint's state before: it must be cheap and must not block.
    fn check_passed(&self, service: &str, endpoint: &Endpoint);
}

/// Resolves service names to endpoint sets.
#[async_trait]
pub trait ServiceDiscovery: Send + Sync + 'static {
    /// The current endpoints of `service`.
    async fn resolve(&self, service: &str) -> Result<Arc<EndpointSet>, DiscoveryError>;

    /// Whether `service` has at least one endpoint believed healthy (the
    /// seed's `is_healthy`).
    async fn is_healthy(&self, service: &str) -> bool {
        self.resolve(service)
            .await
            .map(|set| !set.endpoints.is_empty())
            .unwrap_or(false)
    }

    /// Reports how a real call went, for passive ejection. Backends without
    /// health tracking ignore it.
    fn report(&self, _service: &str, _endpoint: &Endpoint, _outcome: CallOutcome) {}

    /// Tells `observer` of every active health check that passes from now
    /// on, for as long as it lives (it is held weakly, so a dropped observer
    /// is forgotten). Returns whether this discovery runs active checks:
    /// backends without them ignore the observer and return `false`.
    fn observe_health(&self, _observer: Weak<dyn HealthObserver>) -> bool {
        false
    }

    /// Waits until every service in `names` is healthy, polling every 50 ms,
    /// at most `timeout`.
    async fn wait_for_services(
        &self,
        names: &[&str],
        timeout: Duration,
    ) -> Result<(), DiscoveryError> {
        let started = tokio::time::Instant::now();
        loop {
            let mut missing = Vec::new();
            for name in names {
                if !self.is_healthy(name).await {
                    missing.push((*name).to_string());
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(DiscoveryError::NotReady {
                    missing,
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[async_trait]
impl<T: ServiceDiscovery + ?Sized> ServiceDiscovery for Arc<T> {
    async fn resolve(&self, service: &str) -> Result<Arc<EndpointSet>, DiscoveryError> {
        (**self).resolve(service).await
    }
    async fn is_healthy(&self, service: &str) -> bool {
        (**self).is_healthy(service).await
    }
    fn report(&self, service: &str, endpoint: &Endpoint, outcome: CallOutcome) {
        (**self).report(service, endpoint, outcome);
    }
    fn observe_health(&self, observer: Weak<dyn HealthObserver>) -> bool {
        (**self).observe_health(observer)
    }
}
