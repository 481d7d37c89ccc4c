//! A TOML file of services, reloaded when it changes.
//!
//! ```toml
//! [health]                 # optional; used by HealthChecked::from_file
//! interval = 30            # seconds between active checks
//! timeout = 5              # seconds before a check counts as failed
//!
//! [services.memory]
//! endpoints = ["http://127.0.0.1:9000", "http://127.0.0.2:9000"]
//!
//! [services.search]
//! protocol = "mcp"         # cortex (default), mcp or auto
//! endpoints = [{ url = "http://127.0.0.1:7000", weight = 3 }]
//! ```
//!
//! The file is polled (its modification time and size, then its content),
//! so it works on every file system and with editors that replace files.
//! A file that stops parsing keeps the last good sets and logs why; a
//! service removed from the file is deregistered.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;

use crate::endpoint::{Endpoint, EndpointSet, Protocol};
use crate::health::HealthConfig;
use crate::registry::Registry;
use crate::{DiscoveryError, ServiceDiscovery};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    health: Option<HealthShape>,
    #[serde(default)]
    services: BTreeMap<String, ServiceShape>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthShape {
    interval: Option<f64>,
    timeout: Option<f64>,
    healthy_threshold: Option<u32>,
    unhealthy_threshold: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceShape {
    #[serde(default)]
    protocol: Option<Protocol>,
    #[serde(default)]
    endpoints: Vec<EndpointShape>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EndpointShape {
    Url(String),
    Full {
        url: String,
        protocol: Option<Protocol>,
        weight: Option<u32>,
    },
}

/// What a file says, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct FileContents {
    /// Endpoints per service.
    pub services: BTreeMap<String, Vec<Endpoint>>,
    /// The `[health]` table applied to the defaults.
    pub health: HealthConfig,
}

/// Parses and checks a discovery file's text.
pub fn parse(text: &str) -> Result<FileContents, DiscoveryError> {
    let shape: FileShape =
        toml::from_str(text).map_err(|e| DiscoveryError::Config(e.to_string()))?;
    let mut services = BTreeMap::new();
    for (name, service) in shape.services {
        let mut endpoints = Vec::new();
        for endpoint in service.endpoints {
            let (url, protocol, weight) = match endpoint {
                EndpointShape::Url(url) => (url, None, None),
                EndpointShape::Full {
                    url,
                    protocol,
                    weight,
                } => (url, protocol, weight),
            };
            let mut e =
                Endpoint::new(url).with_protocol(protocol.or(service.protocol).unwrap_or_default());
            e.weight = weight.unwrap_or(1).max(1);
            e.validate()
                .map_err(|reason| DiscoveryError::Config(format!("services.{name}: {reason}")))?;
            endpoints.push(e);
        }
        services.insert(name, endpoints);
    }
    let mut health = HealthConfig::default();
    if let Some(h) = shape.health {
        let secs = |field: &str, v: f64| {
            Duration::try_from_secs_f64(v)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    DiscoveryError::Config(format!(
                        "health.{field} must be a positive number of seconds, got {v}"
                    ))
                })
        };
        if let Some(v) = h.interval {
            health.interval = secs("interval", v)?;
        }
        if let Some(v) = h.timeout {
            health.timeout = secs("timeout", v)?;
        }
        if let Some(v) = h.healthy_threshold {
            health.healthy_threshold = v.max(1);
        }
        if let Some(v) = h.unhealthy_threshold {
            health.unhealthy_threshold = v.max(1);
        }
    }
    Ok(FileContents { services, health })
}

/// Discovery from a TOML file, reloaded when it changes.
#[derive(Debug)]
pub struct FileDiscovery {
    path: PathBuf,
    registry: Registry,
    health: std::sync::Mutex<HealthConfig>,
}

impl FileDiscovery {
    /// Reads `path` (an error naming the path when it cannot be read or
    /// parsed) and polls it for changes every `reload_every`.
    pub async fn open(
        path: impl AsRef<Path>,
        reload_every: Duration,
    ) -> Result<Arc<Self>, DiscoveryError> {
        let path = path.as_ref().to_path_buf();
        let text = tokio::fs::read_to_string(&path).await.map_err(|e| {
            DiscoveryError::Config(format!(
                "cannot read discovery file {}: {e}",
                path.display()
            ))
        })?;
        let contents =
            parse(&text).map_err(|e| DiscoveryError::Config(format!("{}: {e}", path.display())))?;
        let discovery = Arc::new(Self {
            path,
            registry: Registry::new(),
            health: std::sync::Mutex::new(contents.health.clone()),
        });
        discovery.apply(contents);
        tokio::spawn(watch_file(
            Arc::downgrade(&discovery),
            reload_every,
            stamp(&discovery.path).await,
            text,
        ));
        Ok(discovery)
    }

    /// The `[health]` settings of the file as last read.
    pub fn health_config(&self) -> HealthConfig {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The registry the file publishes into, for watching.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn apply(&self, contents: FileContents) {
        for name in self.registry.names() {
            if !contents.services.contains_key(&name) {
                tracing::info!(service = %name, "service removed from the discovery file");
                self.registry.remove(&name);
            }
        }
        for (name, endpoints) in contents.services {
            let set = self.registry.publish(&name, endpoints);
            tracing::debug!(service = %name, version = set.version, endpoints = set.endpoints.len(), "discovery file applied");
        }
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = contents.health;
    }
}

async fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = tokio::fs::metadata(path).await.ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

async fn watch_file(
    discovery: Weak<FileDiscovery>,
    every: Duration,
    mut last_stamp: Option<(SystemTime, u64)>,
    mut last_text: String,
) {
    loop {
        tokio::time::sleep(every).await;
        let Some(discovery) = discovery.upgrade() else {
            return;
        };
        let now = stamp(&discovery.path).await;
        if now == last_stamp {
            continue;
        }
        last_stamp = now;
        let text = match tokio::fs::read_to_string(&discovery.path).await {
            Ok(text) => text,
            Err(error) => {
                tracing::warn!(path = %discovery.path.display(), %error, "discovery file unreadable; keeping the last good sets");
                continue;
            }
        };
        if text == last_text {
            continue;
        }
        match parse(&text) {
            Ok(contents) => {
                tracing::info!(path = %discovery.path.display(), "discovery file reloaded");
                discovery.apply(contents);
                last_text = text;
            }
            Err(error) => {
                tracing::warn!(path = %discovery.path.display(), %error, "discovery file invalid; keeping the last good sets");
            }
        }
    }
}

#[async_trait]
impl ServiceDiscovery for FileDiscovery {
    async fn resolve(&self, service: &str) -> Result<Arc<EndpointSet>, DiscoveryError> {
        self.registry
            .current(service)
            .ok_or_else(|| DiscoveryError::Unknown(service.to_string()))
    }
}
