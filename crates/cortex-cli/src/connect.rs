//! The one loader of client settings and discovery, shared by every command
//! that talks to a service.
//!
//! - Settings: `--config FILE` (TOML) or the defaults, overlaid with
//!   `CORTEX_CLIENT_*` variables (`ClientConfig::with_env`).
//! - Discovery: the library's embedded default
//!   (`StaticDiscovery::from_env`: `NAME_SERVICE_URL`, with memory at
//!   `http://localhost:9000` and cognition at `http://localhost:9100` when
//!   unset), then each `--service NAME=URL` flag on top.

use std::path::PathBuf;
use std::sync::Arc;

use cortex_client::{ClientConfig, Endpoint, NetworkMcpClient, StaticDiscovery};

use crate::cli::ServiceUrl;
use crate::exit::Failure;

/// The global flags that shape a client.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientFlags {
    pub(crate) services: Vec<ServiceUrl>,
    pub(crate) config: Option<PathBuf>,
}

/// A client ready to use, with the names discovery knows.
pub(crate) struct Target {
    pub(crate) client: NetworkMcpClient,
    pub(crate) discovery: Arc<StaticDiscovery>,
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

    /// Discovery from the environment and the `--service` flags, with the
    /// names it knows.
    pub(crate) fn discovery(&self) -> (Arc<StaticDiscovery>, Vec<String>) {
        let discovery = StaticDiscovery::from_env(std::env::vars());
        for flag in &self.services {
            discovery.register(&flag.name, flag.urls.iter().map(Endpoint::new).collect());
        }
        let mut names = discovery.registry().names();
        // The two Cortex services first, then the others alphabetically.
        names.sort_by_key(|name| (name != "memory", name != "cognition", name.clone()));
        (Arc::new(discovery), names)
    }

    /// A client over [`Self::config`] (changed by `adjust`) and
    /// [`Self::discovery`].
    pub(crate) fn connect(
        &self,
        adjust: impl FnOnce(ClientConfig) -> ClientConfig,
    ) -> Result<Target, Failure> {
        let config = adjust(self.config()?);
        let (discovery, names) = self.discovery();
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
