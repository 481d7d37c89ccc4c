//! Names to endpoints: the seed's `ServiceDiscovery`.
//!
//! The client asks discovery on every attempt instead of caching an endpoint
//! forever (the seed's `connect` cached it, so a moved service was never
//! found again). This module holds the trait and the embedded default (a
//! static map, filled in code or from `NAME_SERVICE_URL` variables).

use std::collections::BTreeMap;
use std::sync::RwLock;

use async_trait::async_trait;

/// One place a service answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// Base URL, such as `http://127.0.0.1:9000` (no trailing slash).
    pub url: String,
}

impl Endpoint {
    /// An endpoint at `url` (a trailing `/` is dropped).
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        Self {
            url: url.trim_end_matches('/').to_string(),
        }
    }

    /// `host:port` of the URL, for dialling; `None` when the URL is not
    /// `http://host[:port][/...]`.
    pub fn authority(&self) -> Option<String> {
        let rest = self.url.strip_prefix("http://")?;
        let authority = rest.split('/').next().filter(|a| !a.is_empty())?;
        if authority.contains('@') {
            return None;
        }
        let has_port = match authority.rfind(':') {
            Some(i) => !authority[i..].contains(']'),
            None => false,
        };
        Some(if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        })
    }

    /// Path prefix of the URL (empty or starting with `/`).
    pub fn base_path(&self) -> &str {
        let rest = self.url.strip_prefix("http://").unwrap_or(&self.url);
        rest.find('/').map(|i| &rest[i..]).unwrap_or("")
    }
}

/// Why discovery could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The name is not known.
    #[error("no service named `{0}` is registered")]
    Unknown(String),
    /// The backend failed.
    #[error("discovery backend failed: {0}")]
    Backend(String),
}

/// Resolves service names to endpoints.
#[async_trait]
pub trait ServiceDiscovery: Send + Sync + 'static {
    /// The endpoints of `service`; an empty list is a valid answer.
    async fn resolve(&self, service: &str) -> Result<Vec<Endpoint>, DiscoveryError>;

    /// Whether discovery believes the service is healthy (the seed's
    /// `is_healthy`); the static map always says yes.
    async fn is_healthy(&self, service: &str) -> bool {
        self.resolve(service)
            .await
            .map(|e| !e.is_empty())
            .unwrap_or(false)
    }
}

/// A fixed map of names to endpoints, changeable at run time.
#[derive(Debug, Default)]
pub struct StaticDiscovery {
    services: RwLock<BTreeMap<String, Vec<Endpoint>>>,
}

impl StaticDiscovery {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a service with one endpoint.
    pub fn with(self, service: impl Into<String>, url: impl Into<String>) -> Self {
        self.register(service, vec![Endpoint::new(url)]);
        self
    }

    /// Sets a service's endpoints.
    pub fn register(&self, service: impl Into<String>, endpoints: Vec<Endpoint>) {
        self.services
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(service.into(), endpoints);
    }

    /// Forgets a service.
    pub fn deregister(&self, service: &str) {
        self.services
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(service);
    }

    /// The embedded default: `memory` at `MEMORY_SERVICE_URL` (default
    /// `http://localhost:9000`), `cognition` at `COGNITION_SERVICE_URL`
    /// (default `http://localhost:9100`), and any `NAME_SERVICE_URL` as
    /// service `name` (lower case, `_` kept). A comma-separated value lists
    /// replicas. The variables are passed in; library code does not read the
    /// process environment itself.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let discovery = Self::new()
            .with("memory", "http://localhost:9000")
            .with("cognition", "http://localhost:9100");
        for (key, value) in vars {
            let Some(name) = key.strip_suffix("_SERVICE_URL") else {
                continue;
            };
            if name.is_empty() {
                continue;
            }
            let endpoints: Vec<Endpoint> = value
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(Endpoint::new)
                .collect();
            discovery.register(name.to_ascii_lowercase(), endpoints);
        }
        discovery
    }
}

#[async_trait]
impl ServiceDiscovery for StaticDiscovery {
    async fn resolve(&self, service: &str) -> Result<Vec<Endpoint>, DiscoveryError> {
        self.services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
            .cloned()
            .ok_or_else(|| DiscoveryError::Unknown(service.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_and_base_path() {
        let e = Endpoint::new("http://127.0.0.1:9000/");
        assert_eq!(e.authority().as_deref(), Some("127.0.0.1:9000"));
        assert_eq!(e.base_path(), "");
        let e = Endpoint::new("http://memory/api");
        assert_eq!(e.authority().as_deref(), Some("memory:80"));
        assert_eq!(e.base_path(), "/api");
        assert_eq!(Endpoint::new("https://x:1").authority(), None);
        assert_eq!(
            Endpoint::new("http://[::1]:9000").authority().as_deref(),
            Some("[::1]:9000")
        );
        assert_eq!(
            Endpoint::new("http://[::1]").authority().as_deref(),
            Some("[::1]:80")
        );
    }

    #[tokio::test]
    async fn env_defaults_and_overrides() {
        let d = StaticDiscovery::from_env([
            (
                "MEMORY_SERVICE_URL".to_string(),
                "http://127.0.0.1:1,http://127.0.0.2:1".to_string(),
            ),
            (
                "SEARCH_SERVICE_URL".to_string(),
                "http://127.0.0.1:7".to_string(),
            ),
            ("PATH".to_string(), "/bin".to_string()),
        ]);
        assert_eq!(d.resolve("memory").await.map(|e| e.len()), Ok(2));
        assert_eq!(
            d.resolve("cognition").await,
            Ok(vec![Endpoint::new("http://localhost:9100")])
        );
        assert_eq!(
            d.resolve("search").await,
            Ok(vec![Endpoint::new("http://127.0.0.1:7")])
        );
        assert_eq!(
            d.resolve("nope").await,
            Err(DiscoveryError::Unknown("nope".into()))
        );
    }
}
