//! The embedded default: a map of names to endpoints, from code and env vars.

use std::sync::Arc;

use async_trait::async_trait;

use crate::endpoint::{Endpoint, EndpointSet};
use crate::registry::Registry;
use crate::{DiscoveryError, ServiceDiscovery};

/// A map of names to endpoints, changeable at run time.
#[derive(Debug, Default)]
pub struct StaticDiscovery {
    registry: Registry,
}

impl StaticDiscovery {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a service with one endpoint.
    pub fn with(self, service: impl Into<String>, url: impl Into<String>) -> Self {
        self.register(&service.into(), vec![Endpoint::new(url)]);
        self
    }

    /// Sets a service's endpoints (an empty list is valid: no replica now).
    pub fn register(&self, service: &str, endpoints: Vec<Endpoint>) {
        self.registry.publish(service, endpoints);
    }

    /// Forgets a service.
    pub fn deregister(&self, service: &str) {
        self.registry.remove(service);
    }

    /// The registry behind the map, for watching.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The embedded default from environment variables, which are passed in
    /// (library code does not read the process environment itself):
    ///
    /// - `memory` at `MEMORY_SERVICE_URL` (default `http://localhost:9000`)
    ///   and `cognition` at `COGNITION_SERVICE_URL` (default
    ///   `http://localhost:9100`);
    /// - any `NAME_SERVICE_URL` as service `name` (lower case);
    /// - `SERVICE_NAME_URL`, the spelling some Cortex documents use, as an
    ///   alias; `NAME_SERVICE_URL` wins when both are set.
    ///
    /// A comma-separated value lists replicas. Values that are not
    /// `http://` URLs are skipped with a warning, not trusted.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let discovery = Self::new()
            .with("memory", "http://localhost:9000")
            .with("cognition", "http://localhost:9100");
        let mut primary = Vec::new();
        let mut alias = Vec::new();
        for (key, value) in vars {
            if let Some(name) = key.strip_suffix("_SERVICE_URL").filter(|n| !n.is_empty()) {
                primary.push((name.to_ascii_lowercase(), value));
            } else if let Some(name) = key
                .strip_prefix("SERVICE_")
                .and_then(|k| k.strip_suffix("_URL"))
                .filter(|n| !n.is_empty())
            {
                alias.push((name.to_ascii_lowercase(), value));
            }
        }
        let primary_names: Vec<String> = primary.iter().map(|(n, _)| n.clone()).collect();
        for (name, value) in alias
            .into_iter()
            .filter(|(n, _)| !primary_names.contains(n))
            .chain(primary)
        {
            let endpoints: Vec<Endpoint> = value
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(Endpoint::new)
                .filter(|e| match e.validate() {
                    Ok(()) => true,
                    Err(reason) => {
                        tracing::warn!(service = %name, %reason, "ignoring endpoint from the environment");
                        false
                    }
                })
                .collect();
            discovery.register(&name, endpoints);
        }
        discovery
    }
}

#[async_trait]
impl ServiceDiscovery for StaticDiscovery {
    async fn resolve(&self, service: &str) -> Result<Arc<EndpointSet>, DiscoveryError> {
        self.registry
            .current(service)
            .ok_or_else(|| DiscoveryError::Unknown(service.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn env_defaults_replicas_aliases_and_bad_values() {
        let d = StaticDiscovery::from_env(vars(&[
            (
                "MEMORY_SERVICE_URL",
                "http://127.0.0.1:1, http://127.0.0.2:1",
            ),
            ("SERVICE_SEARCH_URL", "http://127.0.0.1:7"),
            ("SERVICE_MEMORY_URL", "http://ignored:1"),
            ("AUDIT_SERVICE_URL", "not a url"),
            ("PATH", "/bin"),
        ]));
        let memory = d.resolve("memory").await.map(|s| s.endpoints.len());
        assert_eq!(memory, Ok(2), "the primary spelling wins over the alias");
        let cognition = d.resolve("cognition").await.map(|s| s.endpoints.clone());
        assert_eq!(cognition, Ok(vec![Endpoint::new("http://localhost:9100")]));
        assert_eq!(d.resolve("search").await.map(|s| s.endpoints.len()), Ok(1));
        assert_eq!(
            d.resolve("audit").await.map(|s| s.endpoints.len()),
            Ok(0),
            "bad values skipped"
        );
        assert_eq!(
            d.resolve("nope").await,
            Err(DiscoveryError::Unknown("nope".into()))
        );
    }

    #[tokio::test]
    async fn register_and_deregister_at_run_time() {
        let d = StaticDiscovery::new();
        d.register("x", vec![Endpoint::new("http://127.0.0.1:5")]);
        assert!(d.is_healthy("x").await);
        d.register("x", vec![]);
        assert!(!d.is_healthy("x").await);
        d.deregister("x");
        assert!(d.resolve("x").await.is_err());
    }
}
