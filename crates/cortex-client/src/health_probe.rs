//! Active health checks made the way the client makes its calls.
//!
//! Discovery's own probe ([`cortex_discovery::PlainHttp`]) speaks plain
//! HTTP only, so with it an `https://` endpoint is never checked actively.
//! [`ClientHealthProbe`] makes each check with the effective settings of
//! the endpoint's service: its TLS trust (system roots, `ca_file`), its
//! client certificate, its proxy, and a connect timeout no longer than the
//! check's. Each check has a connection of its own (as discovery's probe
//! does), so a check also proves that connecting works, and a call's
//! connection is never spent on one. What a connection needs (the route,
//! the TLS trust read from the CA and identity files) is made at an
//! endpoint's first check and kept for the next ones, which come every
//! interval (2 s for `cortex`'s clients).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cortex_discovery::{Endpoint, HealthProbe};

use crate::config::ClientConfig;
use crate::engine::lock;
use crate::oauth::http::Http;
use crate::pool::EndpointPool;

/// The largest `/health` answer read; a bigger one fails the check.
const MAX_HEALTH_BYTES: usize = 64 * 1024;

/// The most endpoints whose connection settings are kept; when full, they
/// are all forgotten (made again at the next checks), so endpoints that
/// come and go for a long time cannot grow it.
const MAX_KEPT_ENDPOINTS: usize = 1024;

/// A [`HealthProbe`] that reaches `http://` and `https://` endpoints with
/// the client's settings; give it to
/// [`HealthChecked::with_probe`](cortex_discovery::HealthChecked::with_probe).
///
/// ```no_run
/// use std::sync::Arc;
/// use cortex_client::{ClientConfig, ClientHealthProbe, StaticDiscovery};
/// use cortex_client::discovery::{HealthChecked, HealthConfig};
///
/// let config = ClientConfig::default();
/// let discovery = StaticDiscovery::new().with("memory", "https://memory.internal:9000");
/// let checked = HealthChecked::with_probe(
///     discovery,
///     HealthConfig::default(),
///     Arc::new(ClientHealthProbe::new(config.clone())),
/// );
/// ```
pub struct ClientHealthProbe {
    config: ClientConfig,
    /// Per (service, endpoint URL): a pool of one connection made with the
    /// service's settings (see the module docs).
    pools: Mutex<HashMap<(String, String), Arc<EndpointPool>>>,
}

impl std::fmt::Debug for ClientHealthProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHealthProbe")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ClientHealthProbe {
    /// Checks with `config`'s settings (each service's own, where it
    /// overrides them).
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config,
            pools: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl HealthProbe for ClientHealthProbe {
    async fn check(
        &self,
        service: &str,
        endpoint: &Endpoint,
        timeout: Duration,
    ) -> Result<(), String> {
        let http = Http {
            config: self.config.for_service(service),
            timeout,
            max_bytes: MAX_HEALTH_BYTES,
            // The endpoint's own scheme decides: a service reached over
            // `http://` is checked over it.
            plaintext: true,
        };
        let url = format!("{}/health", endpoint.url.trim_end_matches('/'));
        let key = (service.to_string(), endpoint.url.clone());
        let kept = lock(&self.pools).get(&key).cloned();
        let pool = match kept {
            Some(pool) => pool,
            None => {
                // Made outside the lock: it reads files.
                let pool = http.pool_for(&url).map_err(|e| e.to_string())?;
                let mut pools = lock(&self.pools);
                if pools.len() >= MAX_KEPT_ENDPOINTS {
                    pools.clear();
                }
                pools.entry(key).or_insert(pool).clone()
            }
        };
        let reply = http
            .get_raw_on(&pool, &url)
            .await
            .map_err(|e| e.to_string())?;
        if reply.status.is_success() {
            Ok(())
        } else {
            Err(format!("health answered HTTP {}", reply.status.as_u16()))
        }
    }

    fn speaks_tls(&self) -> bool {
        true
    }
}
