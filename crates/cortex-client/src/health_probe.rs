//! Active health checks made the way the client makes its calls.
//!
//! Discovery's own probe ([`cortex_discovery::PlainHttp`]) speaks plain
//! HTTP only, so with it an `https://` endpoint is never checked actively.
//! [`ClientHealthProbe`] makes each check with the effective settings of
//! the endpoint's service: its TLS trust (system roots, `ca_file`), its
//! client certificate, its proxy, and a connect timeout no longer than the
//! check's. Each check has a connection of its own (as discovery's probe
//! does): checks are rare, and a call's connection is never spent on one.

use std::time::Duration;

use async_trait::async_trait;
use cortex_discovery::{Endpoint, HealthProbe};

use crate::config::ClientConfig;
use crate::oauth::http::Http;

/// The largest `/health` answer read; a bigger one fails the check.
const MAX_HEALTH_BYTES: usize = 64 * 1024;

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
#[derive(Debug, Clone)]
pub struct ClientHealthProbe {
    config: ClientConfig,
}

impl ClientHealthProbe {
    /// Checks with `config`'s settings (each service's own, where it
    /// overrides them).
    pub fn new(config: ClientConfig) -> Self {
        Self { config }
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
        let reply = http.get_raw(&url).await.map_err(|e| e.to_string())?;
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
