//! The embedded default: a map of names to endpoints, from code and env vars.

use std::sync::Arc;

use async_trait::async_trait;

use crate::endpoint::{Endpoint, EndpointSet, Protocol};
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
    /// - `memory` at `MEMORY_SERVICE_URL` (default `http://localhost:9000`),
    ///   `cognition` at `COGNITION_SERVICE_URL` (default
    ///   `http://localhost:9100`) and `core` at `CORE_SERVICE_URL` (default
    ///   `http://localhost:8000`);
    /// - any `NAME_SERVICE_URL` as service `name` (lower case);
    /// - `SERVICE_NAME_URL`, the spelling some Cortex documents use, as an
    ///   alias; `NAME_SERVICE_URL` wins when both are set;
    /// - `NAME_SERVICE_PROTOCOL` (`cortex`, `mcp` or `auto`) for the
    ///   protocol of a URL that does not name one in its scheme
    ///   (`mcp+http://…`, see [`Endpoint::parse`]); default `cortex`.
    ///
    /// A comma-separated value lists replicas. A value that cannot be used
    /// (no scheme or one other than `http` and `https`, a bad port, a route's path, an unknown
    /// protocol) is [`DiscoveryError::InvalidEndpoint`] naming the variable
    /// and the value: a typo must not turn into "no endpoint" later.
    pub fn from_env(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, DiscoveryError> {
        let discovery = Self::new()
            .with("memory", "http://localhost:9000")
            .with("cognition", "http://localhost:9100")
            .with("core", "http://localhost:8000");
        let mut primary = Vec::new();
        let mut alias = Vec::new();
        let mut protocols = std::collections::HashMap::new();
        for (key, value) in vars {
            if let Some(name) = key.strip_suffix("_SERVICE_URL").filter(|n| !n.is_empty()) {
                primary.push((name.to_ascii_lowercase(), key, value));
            } else if let Some(name) = key
                .strip_prefix("SERVICE_")
                .and_then(|k| k.strip_suffix("_URL"))
                .filter(|n| !n.is_empty())
            {
                alias.push((name.to_ascii_lowercase(), key, value));
            } else if let Some(name) = key
                .strip_suffix("_SERVICE_PROTOCOL")
                .filter(|n| !n.is_empty())
            {
                let protocol = value.trim().parse::<Protocol>().map_err(|reason| {
                    DiscoveryError::InvalidEndpoint {
                        origin: key.clone(),
                        value: value.clone(),
                        reason,
                    }
                })?;
                protocols.insert(name.to_ascii_lowercase(), protocol);
            }
        }
        let primary_names: Vec<String> = primary.iter().map(|(n, _, _)| n.clone()).collect();
        for (name, key, value) in alias
            .into_iter()
            .filter(|(n, _, _)| !primary_names.contains(n))
            .chain(primary)
        {
            let mut endpoints = Vec::new();
            for url in value.split(',').map(str::trim).filter(|u| !u.is_empty()) {
                let invalid = |reason: String| DiscoveryError::InvalidEndpoint {
                    origin: key.clone(),
                    value: value.clone(),
                    reason,
                };
                let (endpoint, named) = Endpoint::parse(url).map_err(&invalid)?;
                let endpoint = match named.or_else(|| protocols.get(&name).copied()) {
                    Some(protocol) => {
                        let endpoint = endpoint.with_protocol(protocol);
                        endpoint.validate().map_err(&invalid)?;
                        endpoint
                    }
                    None => endpoint,
                };
                endpoints.push(endpoint);
            }
            if endpoints.is_empty() {
                return Err(DiscoveryError::InvalidEndpoint {
                    reason: format!("no URL in `{value}` (unset the variable for the default)"),
                    origin: key,
                    value,
                });
            }
            discovery.register(&name, endpoints);
        }
        // A protocol for a default service (memory, cognition) applies too.
        for (name, protocol) in protocols {
            if let Some(set) = discovery.registry.current(&name) {
                let endpoints = set
                    .endpoints
                    .iter()
                    .map(|e| e.clone().with_protocol(protocol))
                    .collect();
                discovery.register(&name, endpoints);
            }
        }
        Ok(discovery)
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
    async fn env_defaults_replicas_aliases_and_protocols() {
        let d = StaticDiscovery::from_env(vars(&[
            (
                "MEMORY_SERVICE_URL",
                "http://127.0.0.1:1, http://127.0.0.2:1",
            ),
            ("SERVICE_SEARCH_URL", "http://127.0.0.1:7"),
            ("SERVICE_MEMORY_URL", "http://ignored:1"),
            ("EVERYTHING_SERVICE_URL", "mcp+http://127.0.0.1:3001/mcp"),
            ("TIME_SERVICE_URL", "http://127.0.0.1:3002/mcp"),
            ("TIME_SERVICE_PROTOCOL", "auto"),
            ("AUDIT_SERVICE_URL", "https://audit.internal:8443"),
            ("COGNITION_SERVICE_PROTOCOL", "mcp"),
            ("PATH", "/bin"),
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        let memory = d.resolve("memory").await.map(|s| s.endpoints.len());
        assert_eq!(memory, Ok(2), "the primary spelling wins over the alias");
        let cognition = d.resolve("cognition").await.map(|s| s.endpoints.clone());
        assert_eq!(
            cognition,
            Ok(vec![
                Endpoint::new("http://localhost:9100").with_protocol(Protocol::Mcp)
            ])
        );
        assert_eq!(d.resolve("search").await.map(|s| s.endpoints.len()), Ok(1));
        let protocol = |set: Result<Arc<EndpointSet>, _>| set.map(|s| s.endpoints[0].protocol);
        assert_eq!(protocol(d.resolve("everything").await), Ok(Protocol::Mcp));
        assert_eq!(protocol(d.resolve("time").await), Ok(Protocol::Auto));
        assert_eq!(
            d.resolve("audit").await.map(|s| s.endpoints.clone()),
            Ok(vec![Endpoint::new("https://audit.internal:8443")]),
            "https endpoints are taken"
        );
        assert_eq!(
            d.resolve("nope").await,
            Err(DiscoveryError::Unknown("nope".into()))
        );
    }

    #[test]
    fn a_bad_value_names_the_variable_and_the_value() {
        for (key, value, says) in [
            ("AUDIT_SERVICE_URL", "not a url", "no scheme"),
            (
                "MEMORY_SERVICE_URL",
                "localhost:9000",
                "write it as http://localhost:9000",
            ),
            ("MEMORY_SERVICE_URL", "http://localhost:90000", "bad port"),
            (
                "MEMORY_SERVICE_URL",
                "ftp://memory.example",
                "unsupported scheme",
            ),
            (
                "MEMORY_SERVICE_URL",
                "http://localhost:9000/health",
                "a path where none is allowed",
            ),
            ("MEMORY_SERVICE_URL", " , ", "no URL in"),
            ("MEMORY_SERVICE_PROTOCOL", "grpc", "unknown protocol"),
        ] {
            let error = StaticDiscovery::from_env(vars(&[(key, value)]))
                .map(|_| ())
                .expect_err(value);
            let text = error.to_string();
            assert!(
                error.is_config()
                    && text.contains(key)
                    && text.contains(value)
                    && text.contains(says),
                "{key}={value}: {text}"
            );
        }
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
