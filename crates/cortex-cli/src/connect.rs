//! The one loader of client settings and discovery, shared by every command
//! that talks to a service.
//!
//! - Settings: `--config FILE` (TOML) or the defaults, overlaid with
//!   `CORTEX_CLIENT_*` variables (`ClientConfig::with_env`).
//! - Discovery: `--discovery SPEC` (see [`crate::discovery_spec`]; the
//!   default is the library's embedded one, `NAME_SERVICE_URL` variables
//!   with memory at `http://localhost:9000` and cognition at
//!   `http://localhost:9100`), with each `--service NAME=URL` flag in front.

use std::path::PathBuf;
use std::sync::Arc;

use cortex_client::{ClientConfig, Endpoint, NetworkMcpClient, ServiceDiscovery, StaticDiscovery};

use crate::cli::ServiceUrl;
use crate::discovery_spec::DiscoverySpec;
use crate::exit::Failure;

/// The global flags that shape a client.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientFlags {
    pub(crate) services: Vec<ServiceUrl>,
    pub(crate) config: Option<PathBuf>,
    pub(crate) discovery: DiscoverySpec,
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
    /// on top. An invalid setting is a usage error naming it.
    pub(crate) fn config(&self) -> Result<ClientConfig, Failure> {
        let base = match &self.config {
            Some(path) => {
                ClientConfig::from_file(path).map_err(|e| Failure::usage(e.to_string()))?
            }
            None => ClientConfig::default(),
        };
        base.with_env(std::env::vars())
            .map_err(|e| Failure::usage(e.to_string()))
    }

    /// Discovery from `--discovery` with the `--service` flags in front,
    /// and the names it knows. A backend that cannot start (a missing
    /// file, etcd down) is an `unavailable` failure naming it.
    pub(crate) async fn discovery(
        &self,
    ) -> Result<(Arc<dyn ServiceDiscovery>, Vec<String>), Failure> {
        let overrides = StaticDiscovery::new();
        for flag in &self.services {
            overrides.register(&flag.name, flag.urls.iter().map(Endpoint::new).collect());
        }
        let (discovery, mut names) =
            self.discovery.build(overrides).await.map_err(|e| {
                Failure::new(crate::exit::Code::Unavailable, format!("discovery: {e}"))
            })?;
        // The two Cortex services first, then the others alphabetically.
        names.sort_by_key(|name| (name != "memory", name != "cognition", name.clone()));
        Ok((discovery, names))
    }

    /// A client over [`Self::config`] (changed by `adjust`) and
    /// [`Self::discovery`].
    pub(crate) async fn connect(
        &self,
        adjust: impl FnOnce(ClientConfig) -> ClientConfig,
    ) -> Result<Target, Failure> {
        let config = adjust(self.config()?);
        let (discovery, names) = self.discovery().await?;
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
