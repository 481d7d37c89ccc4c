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
//! - [`etcd`]: [`EtcdDiscovery`] and [`EtcdRegistration`]: a watched etcd prefix, and leases.
//! - [`balance`]: [`Balancer`]: power of two choices or round robin.
//! - [`health`]: [`HealthChecked`]: active checks and passive ejection around any backend.
//! - [`spec`]: [`DiscoverySpec`]: a backend named by one string (`env`, `file:PATH`,
//!   `dns:DOMAIN`, `etcd://…`), parsed and built the same way by every program.
//!
//! # Example
//! ```
//! use cortex_discovery::{ServiceDiscovery, StaticDiscovery};
//! # async fn run() {
//! let discovery = StaticDiscovery::from_env([("MEMORY_SERVICE_URL".to_string(), "http://10.0.0.5:9000,http://10.0.0.6:9000".to_string())]);
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
pub mod registry;
pub mod spec;
pub mod static_map;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use balance::Balancer;
pub use dns::{DnsSrvConfig, DnsSrvDiscovery};
pub use endpoint::{Endpoint, EndpointSet, Protocol};
pub use etcd::{EtcdConfig, EtcdDiscovery, EtcdRegistration};
pub use file::FileDiscovery;
pub use health::{HealthChecked, HealthConfig};
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
    #[error("services not ready after {waited:?}: {missing:?}")]
    NotReady {
        /// Services still without a healthy endpoint.
        missing: Vec<String>,
        /// How long it waited.
        waited: Duration,
    },
    /// The discovery configuration is invalid.
    #[error("invalid discovery configuration: {0}")]
    Config(String),
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
}
