//! The one loader of client settings and discovery, shared by every command
//! that talks to a service.
//!
//! - Settings: `--config FILE` (TOML) or the defaults, overlaid with
//!   `CORTEX_CLIENT_*` variables (`ClientConfig::with_env`).
//! - Discovery: a [`DiscoverySpec`] (the library's parser and builder), from
//!   `--discovery SPEC`, else `CORTEX_DISCOVERY` (clap reads both), else the
//!   config file's `discovery` key, else `env` (`NAME_SERVICE_URL`
//!   variables with memory at `http://localhost:9000` and cognition at
//!   `http://localhost:9100`); each `--service NAME=URL` flag, and the
//!   `--url` server, go in front of the backend ([`Layered`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cortex_client::discovery::{HealthChecked, HealthConfig};
use cortex_client::{
    ClientConfig, ClientHealthProbe, DiscoveryError, DiscoverySpec, Endpoint, EndpointSet,
    NetworkMcpClient, NetworkMcpClientBuilder, ServiceDiscovery, StaticDiscovery, StaticToken,
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
    /// `--url`: one server, which is then the only service.
    pub(crate) url: Option<Endpoint>,
    /// What the client sends as `Authorization`.
    pub(crate) credentials: Credentials,
}

/// The bearer token of a command's client.
#[derive(Clone, Default)]
pub(crate) enum Credentials {
    /// None: the clients of `up` and `serve` (cognition's of memory) act
    /// for their callers, whose tokens they forward, never as the operator.
    #[default]
    None,
    /// `--token` or `CORTEX_TOKEN`.
    Token(String),
    /// Tokens made from the local secret, if there is one (see
    /// [`crate::auth`]), for `--user` (`None`: the operator, as admin).
    Local {
        /// `--user`.
        user: Option<String>,
    },
    /// Core's own tokens (role `service`) from the secret in this
    /// directory or JWT_SECRET_KEY (see [`crate::auth::service_tokens`]).
    Service(PathBuf),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        match self {
            Self::None => f.write_str("None"),
            Self::Token(_) => f.write_str("Token(…)"),
            Self::Local { user } => f.debug_struct("Local").field("user", user).finish(),
            Self::Service(dir) => f.debug_tuple("Service").field(dir).finish(),
        }
    }
}

/// A client ready to use, with the names discovery knows.
pub(crate) struct Target {
    pub(crate) client: NetworkMcpClient,
    pub(crate) discovery: Arc<dyn ServiceDiscovery>,
    /// Every service name known here: memory, cognition, then the others
    /// in alphabetical order; with `--url`, that server alone.
    pub(crate) names: Vec<String>,
    /// Whether the endpoint of a service is the built-in default (memory
    /// at localhost:9000, cognition at localhost:9100): nothing the user
    /// set chose it, so `cortex up` not running is the likely story when
    /// it refuses connections.
    defaults: Vec<String>,
}

impl Target {
    /// Whether `service` is reached at its built-in default endpoint.
    pub(crate) fn is_default(&self, service: &str) -> bool {
        self.defaults.iter().any(|d| d == service)
    }
}

impl ClientFlags {
    /// The service name of the `--url` server: the URL itself, so messages
    /// say where it is.
    pub(crate) fn url_service(&self) -> Option<String> {
        self.url.as_ref().map(|endpoint| endpoint.url.clone())
    }

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
    /// and the names it knows. A backend that does not answer (etcd down)
    /// is an `unavailable` failure naming it; one configured wrong (a
    /// missing file, a malformed `NAME_SERVICE_URL`, etcd in a build
    /// without it) is a usage failure.
    async fn discovery(
        &self,
        config: &ClientConfig,
    ) -> Result<(Arc<dyn ServiceDiscovery>, Vec<String>), Failure> {
        let overrides = StaticDiscovery::new();
        for flag in &self.services {
            overrides.register(&flag.name, flag.endpoints.clone());
        }
        if let Some(endpoint) = &self.url {
            overrides.register(&endpoint.url, vec![endpoint.clone()]);
            // The server at the URL is the only service; no backend is
            // asked, so a broken NAME_SERVICE_URL elsewhere does not matter.
            let names = vec![endpoint.url.clone()];
            let backend: Arc<dyn ServiceDiscovery> = Arc::new(StaticDiscovery::new());
            return Ok((Arc::new(Layered { overrides, backend }), names));
        }
        let (backend, mut names) = self.spec(config).build().await.map_err(|e| {
            // What the user configured wrong is a usage error; a backend
            // that does not answer is unavailable.
            let code = if e.is_config() {
                crate::exit::Code::Usage
            } else {
                crate::exit::Code::Unavailable
            };
            Failure::new(code, format!("discovery: {e}"))
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
        self.connect_checked(adjust, None).await
    }

    /// As [`Self::connect`]; with `health`, discovery also checks the
    /// services' health actively (for a long-running service's client: a
    /// recovered dependency's open breaker half-opens at its first passing
    /// check).
    pub(crate) async fn connect_checked(
        &self,
        adjust: impl FnOnce(ClientConfig) -> ClientConfig,
        health: Option<HealthConfig>,
    ) -> Result<Target, Failure> {
        let config = adjust(self.config()?);
        let defaults = self.defaults(&config);
        let (mut discovery, names) = self.discovery(&config).await?;
        if let Some(health) = health {
            let probe = Arc::new(ClientHealthProbe::new(config.clone()));
            discovery = Arc::new(HealthChecked::with_probe(discovery, health, probe));
        }
        let mut builder = NetworkMcpClient::builder(discovery.clone())
            .config(config)
            .user_agent(concat!("cortex-cli/", env!("CARGO_PKG_VERSION")));
        match &self.credentials {
            Credentials::None => {}
            Credentials::Token(token) => {
                builder = builder.token_provider(Arc::new(StaticToken::new(token.clone())));
            }
            Credentials::Local { user } => {
                if let Some(tokens) = crate::auth::local_tokens(user.as_deref(), self.url.as_ref())?
                {
                    builder = builder.token_provider(tokens);
                }
            }
            Credentials::Service(dir) => {
                if let Some(tokens) = crate::auth::service_tokens(dir)? {
                    builder = builder.token_provider(tokens);
                }
            }
        }
        // Servers `cortex login` kept a token for.
        let builder = with_kept_tokens(builder, self);
        let client = builder.build()?;
        Ok(Target {
            client,
            discovery,
            names,
            defaults,
        })
    }

    /// The services left at their built-in endpoints: discovery is `env`,
    /// and neither a flag nor a variable names them.
    fn defaults(&self, config: &ClientConfig) -> Vec<String> {
        if self.url.is_some() || self.spec(config) != DiscoverySpec::Env {
            return Vec::new();
        }
        ["memory", "cognition"]
            .into_iter()
            .filter(|name| {
                let upper = name.to_ascii_uppercase();
                !self.services.iter().any(|s| s.name == *name)
                    && std::env::var_os(format!("{upper}_SERVICE_URL")).is_none()
                    && std::env::var_os(format!("SERVICE_{upper}_URL")).is_none()
            })
            .map(str::to_string)
            .collect()
    }
}

/// Active health checks of `service` for a service's client (cognition's
/// of memory). The interval bounds how long the client keeps failing after
/// the service is back, so it follows the breaker's wait it cuts short: a
/// tenth of the service's
/// `reset_timeout` (from --config and the environment), kept between
/// 200 ms and 2 s, so 2 s with the default 30 s. A `GET /health` on
/// loopback every 2 s costs nothing noticeable; a check slower than the
/// interval fails.
pub(crate) fn health_checks(config: &ClientConfig, service: &str) -> HealthConfig {
    let interval = (config.for_service(service).reset_timeout / 10)
        .clamp(Duration::from_millis(200), Duration::from_secs(2));
    HealthConfig {
        interval,
        timeout: interval,
        ..HealthConfig::default()
    }
}

/// `backend` with active health checks of `service` (see
/// [`health_checks`]), made the way the client calls: over TLS with its
/// trust and certificate for an `https://` endpoint.
pub(crate) fn health_checked<D: ServiceDiscovery>(
    backend: D,
    config: &ClientConfig,
    service: &str,
) -> HealthChecked<D> {
    HealthChecked::with_probe(
        backend,
        health_checks(config, service),
        Arc::new(ClientHealthProbe::new(config.clone())),
    )
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

/// Puts OAuth on each service of `flags` whose server has a token kept by
/// `cortex login` (in CORTEX_DATA_DIR, else ./.cortex), so the token is
/// sent, and refreshed, on its calls.
fn with_kept_tokens(
    mut builder: NetworkMcpClientBuilder,
    flags: &ClientFlags,
) -> NetworkMcpClientBuilder {
    use cortex_client::oauth::{FileTokenStore, OAuth, OAuthConfig};
    let path = crate::login::token_file(&crate::auth::data_dir_from_env());
    if !path.exists() {
        return builder;
    }
    let mut servers: Vec<(String, String)> = flags
        .services
        .iter()
        .filter_map(|s| s.endpoints.first().map(|e| (s.name.clone(), e.url.clone())))
        .collect();
    if let (Some(name), Some(endpoint)) = (flags.url_service(), &flags.url) {
        servers.push((name, endpoint.url.clone()));
    }
    let store = Arc::new(FileTokenStore::new(&path));
    for (service, url) in servers {
        let oauth = OAuth::new(OAuthConfig::default()).with_store(store.clone());
        if matches!(oauth.stored(&url), Ok(Some(_))) {
            builder = builder.oauth(service, Arc::new(oauth));
        }
    }
    builder
}
