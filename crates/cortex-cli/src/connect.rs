//! The one loader of client settings and discovery, shared by every command
//! that talks to a service.
//!
//! - Settings: `--config FILE` (TOML) or the defaults, overlaid with
//!   `CORTEX_CLIENT_*` variables (`ClientConfig::with_env`).
//! - Discovery: a [`DiscoverySpec`] (the library's parser and builder), from
//!   `--discovery SPEC`, else `CORTEX_DISCOVERY` (clap reads both), else the
//!   config file's `discovery` key, else `env` (`NAME_SERVICE_URL`
//!   variables with memory at `http://localhost:9000` and cognition at
//!   `http://localhost:9100`); each `--service NAME=URL` flag goes in front
//!   of the backend ([`Layered`]).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use cortex_client::{
    ClientConfig, DiscoveryError, DiscoverySpec, Endpoint, EndpointSet, NetworkMcpClient,
    ServiceDiscovery, StaticDiscovery,
};

use crate::cli::ServiceUrl;
use crate::exit::Failure;

/// The global flags that shape a client.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientFlags {
    pub(crate) services: Vec<ServiceUrl>,
    pub(crate) config: Option<PathBuf>,
    /// `--discovery` or `CORTEX_DISCOVERY`; `None` defers to the config file.
    pub(crate) discovery: Option<DiscoverySpec>,
}

/// A client ready to use, with the names discovery knows.
pub(crate) struct Target {
    pub(crate) client: NetworkMcpClient,
    pub(crate) discovery: Arc<dyn ServiceDiscovery>,
    /// Every service name known here: memory, cognition, then the others
    /// in alphabetical order.
    pub(crate) names: Vec<String>,
}

impl ClientFlags {
    /// The client settings: the file (or the defaults) with the environment
    /// on top. An invalid setting (`discovery` included) is a usage error
    /// naming it.
    pub(crate) fn config(&self) -> Result<ClientConfig, Failure> {
        let base = match &self.config {
            Some(path) => {
                ClientConfig::from_file(path).map_err(|e| Failure::usage(e.to_string()))?
            }
            None => ClientConfig::default(),
        };
        // Lossy, so a non-Unicode variable is an invalid value, not a panic.
        let vars = std::env::vars_os().map(|(name, value)| {
            (
                name.to_string_lossy().into_owned(),
                value.to_string_lossy().into_owned(),
            )
        });
        base.with_env(vars)
            .map_err(|e| Failure::usage(e.to_string()))
    }

    /// The backend to use: `--discovery` (or `CORTEX_DISCOVERY`), else the
    /// config file's `discovery`, else `env`.
    fn spec(&self, config: &ClientConfig) -> DiscoverySpec {
        self.discovery
            .clone()
            .or_else(|| config.discovery.clone())
            .unwrap_or_default()
    }

    /// Discovery from [`Self::spec`] with the `--service` flags in front,
    /// and the names it knows. A backend that cannot start (a missing
    /// file, etcd down) is an `unavailable` failure naming it.
    async fn discovery(
        &self,
        config: &ClientConfig,
    ) -> Result<(Arc<dyn ServiceDiscovery>, Vec<String>), Failure> {
        let overrides = StaticDiscovery::new();
        for flag in &self.services {
            overrides.register(&flag.name, flag.urls.iter().map(Endpoint::new).collect());
        }
        let (backend, mut names) =
            self.spec(config).build().await.map_err(|e| {
                Failure::new(crate::exit::Code::Unavailable, format!("discovery: {e}"))
            })?;
        names.extend(overrides.registry().names());
        // The two Cortex services first, then the others alphabetically.
        names.sort_by_key(|name| (name != "memory", name != "cognition", name.clone()));
        names.dedup();
        Ok((Arc::new(Layered { overrides, backend }), names))
    }

    /// A client over [`Self::config`] (changed by `adjust`) and
    /// [`Self::discovery`].
    pub(crate) async fn connect(
        &self,
        adjust: impl FnOnce(ClientConfig) -> ClientConfig,
    ) -> Result<Target, Failure> {
        let config = adjust(self.config()?);
        let (discovery, names) = self.discovery(&config).await?;
        let client = NetworkMcpClient::builder(discovery.clone())
            .config(config)
            .user_agent(concat!("cortex-cli/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Target {
            client,
            discovery,
            names,
        })
    }
}

/// The `--service` overrides in front of a backend.
struct Layered {
    overrides: StaticDiscovery,
    backend: Arc<dyn ServiceDiscovery>,
}

#[async_trait]
impl ServiceDiscovery for Layered {
    async fn resolve(&self, service: &str) -> Result<Arc<EndpointSet>, DiscoveryError> {
        match self.overrides.resolve(service).await {
            Ok(set) => Ok(set),
            Err(_) => self.backend.resolve(service).await,
        }
    }
}
