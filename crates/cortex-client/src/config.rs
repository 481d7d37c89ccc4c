//! Client configuration: the seed's nine options and ours, from code, a TOML
//! file and the environment.
//!
//! [`ClientConfig`] holds every option with its default; per-service
//! [`ServiceOverrides`] change any of them for one named service, and
//! [`ClientConfig::for_service`] gives the effective settings of a service.
//!
//! Durations are seconds in files and environment variables (integers or
//! floats, as in the seed) and [`Duration`] in code.
//!
//! # Sources
//! - Code: [`ClientConfig::builder`] (or the [`Default`] values).
//! - A TOML file: [`ClientConfig::from_toml_str`], [`ClientConfig::from_file`].
//!   Keys are the option names; `[services.<name>]` tables hold overrides.
//!   Unknown keys are rejected, naming the key.
//! - The environment: [`ClientConfig::with_env`] overlays
//!   `CORTEX_CLIENT_<OPTION>` variables (the option name in upper case, e.g.
//!   `CORTEX_CLIENT_MAX_CONNECTIONS=4`, `CORTEX_CLIENT_IDLE_TIMEOUT=0.5`,
//!   `CORTEX_CLIENT_JITTER=false`) on a configuration; other
//!   `CORTEX_CLIENT_*` names are rejected. Per-service overrides are not
//!   settable from the environment. The variables are passed in:
//!   only [`ClientConfig::from_env`] reads the process environment.
//!
//! Every source validates the result ([`ClientConfig::validate`]).
//!
//! # Discovery
//! The optional [`ClientConfig::discovery`] says which discovery backend the
//! program should build, as a [`DiscoverySpec`] (`env`, `file:PATH`,
//! `dns:DOMAIN[@HOST:PORT]`, `etcd://HOST:PORT/PREFIX`); it is parsed when
//! the file is loaded, so a bad value is an error naming `discovery`. The
//! client does not build it itself: [`DiscoverySpec::build`] does, and its
//! result goes to [`NetworkMcpClient::builder`](crate::NetworkMcpClient::builder).
//! It is one choice for the whole client, so `[services.<name>]` tables
//! cannot set it, and there is no `CORTEX_CLIENT_DISCOVERY` variable (it is
//! rejected, with a message saying where discovery is set): the `cortex`
//! command's `--discovery` flag and `CORTEX_DISCOVERY` variable are the ways
//! to choose it outside the file, and they win over it. A relative `file:`
//! path read by [`ClientConfig::from_file`] is relative to the config file's
//! directory.
//!
//! ```no_run
//! use cortex_client::{ClientConfig, NetworkMcpClient};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ClientConfig::from_file("client.toml".as_ref())?;
//! // Without a `discovery` key: `env`, the embedded default.
//! let (discovery, _names) = config.discovery.clone().unwrap_or_default().build().await?;
//! let client = NetworkMcpClient::builder(discovery).config(config).build()?;
//! # drop(client);
//! # Ok(()) }
//! ```
//!
//! # File format
//! All options, with their defaults:
//!
//! ```toml
//! # Discovery (no default: the program decides; the cortex command uses env)
//! # discovery = "etcd://127.0.0.1:2379/cortex"   # or env, file:services.toml, dns:service.consul
//!
//! # Connection pool
//! max_connections = 10        # max concurrent connections per endpoint
//! idle_timeout = 60           # s, an idle connection is closed after this
//! pool_timeout = 5            # s, max wait for a free connection
//! connect_timeout = 5         # s
//! request_timeout = 30        # s, deadline of one call over all attempts
//!
//! # Circuit breaker
//! failure_threshold = 5       # consecutive failures before the circuit opens
//! reset_timeout = 30          # s, before an open circuit is probed
//! half_open_max_calls = 1     # max concurrent probes while half-open
//!
//! # Retries
//! max_retries = 3             # retry attempts after the first
//! initial_backoff = 0.1       # s
//! backoff_factor = 2.0
//! max_backoff = 10.0          # s
//! jitter = true               # full jitter
//! retry_after_cap = 60        # s, longest Retry-After honoured
//! retry_budget_ratio = 0.2    # retries per recent request
//! retry_budget_min_per_sec = 10
//! retry_budget_window = 10    # s
//!
//! # Resource streams
//! stream_idle_timeout = 45    # s without a byte (keep-alives included)
//! stream_max_reconnects = 10
//! stream_max_backoff = 60     # s
//!
//! # Per-service overrides: any option above but discovery, for one service.
//! # [services.memory]
//! # max_connections = 4
//! # request_timeout = 2.5
//! ```
//!
//! # Validation
//! Hard limits (a value outside is an error naming the option and the allowed
//! range): `max_connections` 1..=10000; `idle_timeout` > 0 and at most one
//! day; `failure_threshold` and `half_open_max_calls` ≥ 1; `max_retries` ≤ 100;
//! `reset_timeout`, `initial_backoff`, `request_timeout`, `connect_timeout`,
//! `pool_timeout`, `stream_idle_timeout` and `stream_max_backoff` > 0;
//! `backoff_factor` finite and ≥ 1; `max_backoff` ≥ `initial_backoff`;
//! `retry_budget_ratio` finite in 0..=1000; `retry_budget_window` 1..=60 s.
//! Seconds in files and the environment must be finite and not negative.
//! Each service's overrides are checked as applied to the base.
//!
//! The seed's recommended ranges (in each field's documentation) are advice:
//! a valid configuration with values outside them is accepted, and each such
//! value is logged once per validation with [`tracing::warn!`].
//!
//! # Example
//! ```
//! use std::time::Duration;
//!
//! use cortex_client::ClientConfig;
//! use cortex_client::config::ServiceOverrides;
//!
//! let config = ClientConfig::builder()
//!     .max_connections(20)
//!     .request_timeout(Duration::from_secs(10))
//!     .service(
//!         "memory",
//!         ServiceOverrides {
//!             max_connections: Some(4),
//!             max_retries: Some(0),
//!             ..ServiceOverrides::default()
//!         },
//!     )
//!     .build()?;
//!
//! let memory = config.for_service("memory");
//! assert_eq!(memory.max_connections, 4);
//! assert_eq!(memory.max_retries, 0);
//! assert_eq!(memory.request_timeout, Duration::from_secs(10));
//! assert_eq!(config.for_service("search").max_connections, 20);
//! # Ok::<(), cortex_client::ConfigError>(())
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use cortex_discovery::DiscoverySpec;

/// The prefix of the environment variables read by [`ClientConfig::with_env`].
pub const ENV_PREFIX: &str = "CORTEX_CLIENT_";

/// The longest `idle_timeout` accepted: one day.
const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// The client's settings. Values are in seconds in files and the environment
/// (as in the seed) and [`Duration`] in code.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// Max concurrent connections per endpoint. Default 10; recommended 5–20.
    pub max_connections: usize,
    /// An idle pooled connection is closed after this. Default 60 s; recommended 30–120 s.
    pub idle_timeout: Duration,
    /// Consecutive failures before the circuit opens. Default 5; recommended 3–10.
    pub failure_threshold: u32,
    /// Time before an open circuit lets a probe through. Default 30 s; recommended 10–60 s.
    pub reset_timeout: Duration,
    /// Max concurrent probes while the circuit is half-open. Default 1; recommended 1–3.
    pub half_open_max_calls: u32,
    /// Max retry attempts after the first attempt. Default 3; recommended 2–5.
    pub max_retries: u32,
    /// Backoff before the first retry. Default 0.1 s; recommended 0.1–1.0 s.
    pub initial_backoff: Duration,
    /// Multiplier of the backoff after each retry. Default 2.0; recommended 1.5–3.0.
    pub backoff_factor: f64,
    /// Cap of the retry backoff. Default 10 s; recommended 5–30 s.
    pub max_backoff: Duration,
    /// Overall deadline of one call over all its attempts. Default 30 s; no recommended range (> 0).
    pub request_timeout: Duration,
    /// Deadline to establish a connection. Default 5 s; no recommended range (> 0).
    pub connect_timeout: Duration,
    /// Max wait for a free pooled connection. Default 5 s; no recommended range (> 0).
    pub pool_timeout: Duration,
    /// A stream without any byte (keep-alives included) for this long is dead. Default 45 s (3× the 15 s keep-alive); no recommended range (> 0).
    pub stream_idle_timeout: Duration,
    /// Max reconnects of a resource stream before it fails (the seed's `stream_with_reconnect`). Default 10; no recommended range.
    pub stream_max_reconnects: u32,
    /// Cap of the stream reconnect backoff, `min(2^n s, cap)` (the seed's 60). Default 60 s; no recommended range (> 0).
    pub stream_max_backoff: Duration,
    /// Full jitter: each backoff is drawn uniformly from zero to its computed value. Default true.
    pub jitter: bool,
    /// Retries allowed per recent request by the retry budget. Default 0.2; no recommended range (0–1000).
    pub retry_budget_ratio: f64,
    /// Retries per second the retry budget always allows. Default 10; no recommended range.
    pub retry_budget_min_per_sec: u32,
    /// Window over which the retry budget counts requests. Default 10 s; no recommended range (1–60 s).
    pub retry_budget_window: Duration,
    /// Longest `Retry-After` honoured; longer ones are capped to this. Default 60 s; no recommended range.
    pub retry_after_cap: Duration,
    /// Which discovery backend to build (see [the module docs](self#discovery)).
    /// Default none: the program decides (the `cortex` command uses `env`).
    /// One choice for the whole client: [`ServiceOverrides`] cannot set it.
    pub discovery: Option<DiscoverySpec>,
    /// Per-service overrides by service name (see [`ClientConfig::for_service`]). Default empty.
    pub services: BTreeMap<String, ServiceOverrides>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_connections: 10,
            idle_timeout: Duration::from_secs(60),
            failure_threshold: 5,
            reset_timeout: Duration::from_secs(30),
            half_open_max_calls: 1,
            max_retries: 3,
            initial_backoff: Duration::from_millis(100),
            backoff_factor: 2.0,
            max_backoff: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            pool_timeout: Duration::from_secs(5),
            stream_idle_timeout: Duration::from_secs(45),
            stream_max_reconnects: 10,
            stream_max_backoff: Duration::from_secs(60),
            jitter: true,
            retry_budget_ratio: 0.2,
            retry_budget_min_per_sec: 10,
            retry_budget_window: Duration::from_secs(10),
            retry_after_cap: Duration::from_secs(60),
            discovery: None,
            services: BTreeMap::new(),
        }
    }
}

/// Options set for one named service; `None` keeps the base value.
///
/// In serialized form durations are seconds (integer or float), and unknown
/// fields are rejected.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceOverrides {
    /// Overrides [`ClientConfig::max_connections`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Overrides [`ClientConfig::idle_timeout`].
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_secs")]
    pub idle_timeout: Option<Duration>,
    /// Overrides [`ClientConfig::failure_threshold`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    /// Overrides [`ClientConfig::reset_timeout`].
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_secs")]
    pub reset_timeout: Option<Duration>,
    /// Overrides [`ClientConfig::half_open_max_calls`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_max_calls: Option<u32>,
    /// Overrides [`ClientConfig::max_retries`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Overrides [`ClientConfig::initial_backoff`].
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_secs")]
    pub initial_backoff: Option<Duration>,
    /// Overrides [`ClientConfig::backoff_factor`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_factor: Option<f64>,
    /// Overrides [`ClientConfig::max_backoff`].
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_secs")]
    pub max_backoff: Option<Duration>,
    /// Overrides [`ClientConfig::request_timeout`].
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_secs")]
    pub request_timeout: Option<Duration>,
    /// Overrides [`ClientConfig::connect_timeout`].
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_secs")]
    pub connect_timeout: Option<Duration>,
    /// Overrides [`ClientConfig::pool_timeout`].
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_secs")]
    pub pool_timeout: Option<Duration>,
    /// Overrides [`ClientConfig::stream_idle_timeout`].
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_secs")]
    pub stream_idle_timeout: Option<Duration>,
    /// Overrides [`ClientConfig::stream_max_reconnects`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_max_reconnects: Option<u32>,
    /// Overrides [`ClientConfig::stream_max_backoff`].
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_secs")]
    pub stream_max_backoff: Option<Duration>,
    /// Overrides [`ClientConfig::jitter`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<bool>,
    /// Overrides [`ClientConfig::retry_budget_ratio`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget_ratio: Option<f64>,
    /// Overrides [`ClientConfig::retry_budget_min_per_sec`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget_min_per_sec: Option<u32>,
    /// Overrides [`ClientConfig::retry_budget_window`].
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_secs")]
    pub retry_budget_window: Option<Duration>,
    /// Overrides [`ClientConfig::retry_after_cap`].
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_secs")]
    pub retry_after_cap: Option<Duration>,
}

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An option has a value of the wrong type or outside its allowed range.
    #[error("invalid value for `{option}`: {reason}")]
    Invalid {
        /// The option as given: `max_connections`,
        /// `services.memory.max_connections` or `CORTEX_CLIENT_MAX_CONNECTIONS`.
        option: String,
        /// What is wrong, with the allowed range.
        reason: String,
    },
    /// A key or `CORTEX_CLIENT_*` variable that names no option.
    #[error("unknown configuration option `{0}`")]
    Unknown(String),
    /// The config file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    File {
        /// The path of the file.
        path: String,
        /// Why it could not be read.
        reason: String,
    },
    /// The text is not TOML.
    #[error("config file is not valid TOML: {0}")]
    Parse(String),
}

impl ConfigError {
    fn invalid(option: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            option: option.into(),
            reason: reason.into(),
        }
    }
}

impl ClientConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> ClientConfigBuilder {
        ClientConfigBuilder::default()
    }

    /// Checks every hard limit, of the base and of each service's overrides
    /// as applied to it; the error names the first offending option
    /// (`services.<name>.<option>` for a service) and the allowed range.
    ///
    /// When the configuration is valid, each value outside the seed's
    /// recommended range is logged once with [`tracing::warn!`] (a service's
    /// value only when it differs from the base's warned value).
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_limits(self, "")?;
        let mut effective = Vec::with_capacity(self.services.len());
        for name in self.services.keys() {
            if name.is_empty() {
                return Err(ConfigError::invalid(
                    "services",
                    "service names must not be empty",
                ));
            }
            let config = self.for_service(name);
            check_limits(&config, &format!("services.{name}."))?;
            effective.push((name, config));
        }

        let base = advisories(self);
        for advice in &base {
            advice.warn("");
        }
        for (name, config) in &effective {
            let prefix = format!("services.{name}.");
            for advice in advisories(config).iter().filter(|a| !base.contains(a)) {
                advice.warn(&prefix);
            }
        }
        Ok(())
    }

    /// Parses and validates a TOML configuration: keys are the option names,
    /// durations are seconds (integer or float), `discovery` is a
    /// [`DiscoverySpec`] string, `[services.<name>]` tables hold per-service
    /// overrides, and unset options keep their defaults.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        let mut config = Self::default();
        let mut base = ServiceOverrides::default();
        for (key, value) in &table {
            if key == DISCOVERY {
                config.discovery = Some(discovery_spec(value)?);
                continue;
            }
            if key != "services" {
                base.set(key, &Raw::Toml(value), key)?;
                continue;
            }
            let Some(services) = value.as_table() else {
                return Err(ConfigError::invalid(
                    "services",
                    format!(
                        "expected a table of per-service tables such as [services.memory], got {}",
                        describe(value)
                    ),
                ));
            };
            for (service, value) in services {
                let prefix = format!("services.{service}");
                let Some(options) = value.as_table() else {
                    return Err(ConfigError::invalid(
                        prefix,
                        format!("expected a table of options, got {}", describe(value)),
                    ));
                };
                let mut overrides = ServiceOverrides::default();
                for (key, value) in options {
                    if key == DISCOVERY {
                        return Err(ConfigError::invalid(
                            format!("{prefix}.{key}"),
                            "discovery is chosen once for the whole client and cannot be set \
                             per service; set `discovery` at the top of the file",
                        ));
                    }
                    overrides.set(key, &Raw::Toml(value), &format!("{prefix}.{key}"))?;
                }
                config.services.insert(service.clone(), overrides);
            }
        }
        config.apply(&base);
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a TOML file (see
    /// [`ClientConfig::from_toml_str`]); read and syntax errors name the path.
    /// A relative path in `discovery = "file:PATH"` is taken relative to the
    /// directory of this file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut config = Self::from_toml_str(&text).map_err(|e| match e {
            ConfigError::Parse(message) => {
                ConfigError::Parse(format!("{}: {message}", path.display()))
            }
            other => other,
        })?;
        if let Some(DiscoverySpec::File(services)) = &mut config.discovery
            && services.is_relative()
            && let Some(dir) = path.parent()
        {
            *services = dir.join(&*services);
        }
        Ok(config)
    }

    /// Overlays `CORTEX_CLIENT_<OPTION>` variables from `vars` (the option
    /// name in upper case; durations in seconds, integer or float; `jitter`
    /// as `true`/`false`/`1`/`0`) and validates the result. Variables
    /// without the prefix are ignored; an unknown `CORTEX_CLIENT_*` name is
    /// rejected, and an unparsable or out-of-range value is an error naming
    /// the variable. Services, their overrides and `discovery` are kept;
    /// `CORTEX_CLIENT_DISCOVERY` is rejected (see [the module docs](self#discovery)).
    pub fn with_env(
        mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        // Sorted, so the first error reported does not depend on the order
        // of the environment.
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        let mut overlay = ServiceOverrides::default();
        let mut set_by = BTreeMap::new();
        for (name, value) in &vars {
            let suffix = &name[ENV_PREFIX.len()..];
            let option = suffix.to_ascii_lowercase();
            if suffix != option.to_ascii_uppercase() {
                return Err(ConfigError::Unknown(name.clone()));
            }
            if option == DISCOVERY {
                return Err(ConfigError::invalid(
                    name.clone(),
                    "discovery is not read from CORTEX_CLIENT_* variables: set `discovery` \
                     in the config file or in code (the cortex command also takes \
                     --discovery or CORTEX_DISCOVERY)",
                ));
            }
            overlay.set(&option, &Raw::Env(value), name)?;
            set_by.insert(option, name);
        }
        self.apply(&overlay);
        self.validate().map_err(|e| match e {
            ConfigError::Invalid { option, reason } => ConfigError::Invalid {
                option: set_by.get(&option).map_or(option, |name| (*name).clone()),
                reason,
            },
            other => other,
        })?;
        Ok(self)
    }

    /// The defaults overlaid with the process environment (see
    /// [`ClientConfig::with_env`]). Non-Unicode variables do not panic: they
    /// are converted lossily, so a non-Unicode `CORTEX_CLIENT_*` value is an
    /// invalid value.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::default().with_env(std::env::vars_os().map(|(name, value)| {
            (
                name.to_string_lossy().into_owned(),
                value.to_string_lossy().into_owned(),
            )
        }))
    }

    /// The effective settings of `service`: the base with the service's
    /// overrides applied (the base alone for a service without overrides),
    /// `discovery` as in the base, and `services` empty.
    pub fn for_service(&self, service: &str) -> ClientConfig {
        let mut config = self.without_services();
        if let Some(overrides) = self.services.get(service) {
            config.apply(overrides);
        }
        config
    }

    /// A copy of every option but the services.
    fn without_services(&self) -> ClientConfig {
        let Self {
            max_connections,
            idle_timeout,
            failure_threshold,
            reset_timeout,
            half_open_max_calls,
            max_retries,
            initial_backoff,
            backoff_factor,
            max_backoff,
            request_timeout,
            connect_timeout,
            pool_timeout,
            stream_idle_timeout,
            stream_max_reconnects,
            stream_max_backoff,
            jitter,
            retry_budget_ratio,
            retry_budget_min_per_sec,
            retry_budget_window,
            retry_after_cap,
            ref discovery,
            services: _,
        } = *self;
        ClientConfig {
            max_connections,
            idle_timeout,
            failure_threshold,
            reset_timeout,
            half_open_max_calls,
            max_retries,
            initial_backoff,
            backoff_factor,
            max_backoff,
            request_timeout,
            connect_timeout,
            pool_timeout,
            stream_idle_timeout,
            stream_max_reconnects,
            stream_max_backoff,
            jitter,
            retry_budget_ratio,
            retry_budget_min_per_sec,
            retry_budget_window,
            retry_after_cap,
            discovery: discovery.clone(),
            services: BTreeMap::new(),
        }
    }

    /// Sets every option that `overrides` sets.
    fn apply(&mut self, overrides: &ServiceOverrides) {
        macro_rules! overlay {
            ($($field:ident),* $(,)?) => {
                // Exhaustive: a new field must be added here.
                let ServiceOverrides { $($field),* } = overrides;
                $(if let Some(value) = $field {
                    self.$field = *value;
                })*
            };
        }
        overlay!(
            max_connections,
            idle_timeout,
            failure_threshold,
            reset_timeout,
            half_open_max_calls,
            max_retries,
            initial_backoff,
            backoff_factor,
            max_backoff,
            request_timeout,
            connect_timeout,
            pool_timeout,
            stream_idle_timeout,
            stream_max_reconnects,
            stream_max_backoff,
            jitter,
            retry_budget_ratio,
            retry_budget_min_per_sec,
            retry_budget_window,
            retry_after_cap,
        );
    }
}

/// Builds a [`ClientConfig`] from the defaults; [`ClientConfigBuilder::build`]
/// validates it.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ClientConfigBuilder {
    config: ClientConfig,
}

macro_rules! setters {
    ($($field:ident: $ty:ty),* $(,)?) => {
        $(
            #[doc = concat!("Sets [`ClientConfig::", stringify!($field), "`].")]
            pub fn $field(mut self, value: $ty) -> Self {
                self.config.$field = value;
                self
            }
        )*
    };
}

impl ClientConfigBuilder {
    setters!(
        max_connections: usize,
        idle_timeout: Duration,
        failure_threshold: u32,
        reset_timeout: Duration,
        half_open_max_calls: u32,
        max_retries: u32,
        initial_backoff: Duration,
        backoff_factor: f64,
        max_backoff: Duration,
        request_timeout: Duration,
        connect_timeout: Duration,
        pool_timeout: Duration,
        stream_idle_timeout: Duration,
        stream_max_reconnects: u32,
        stream_max_backoff: Duration,
        jitter: bool,
        retry_budget_ratio: f64,
        retry_budget_min_per_sec: u32,
        retry_budget_window: Duration,
        retry_after_cap: Duration,
    );

    /// Sets [`ClientConfig::discovery`].
    pub fn discovery(mut self, spec: DiscoverySpec) -> Self {
        self.config.discovery = Some(spec);
        self
    }

    /// Sets the overrides of the service `name`, replacing any set before.
    pub fn service(mut self, name: impl Into<String>, overrides: ServiceOverrides) -> Self {
        self.config.services.insert(name.into(), overrides);
        self
    }

    /// The configuration, once [`ClientConfig::validate`] accepts it.
    pub fn build(self) -> Result<ClientConfig, ConfigError> {
        self.config.validate()?;
        Ok(self.config)
    }
}

impl ServiceOverrides {
    /// Sets `option` from `raw`; `name` is how the option is named in errors.
    fn set(&mut self, option: &str, raw: &Raw<'_>, name: &str) -> Result<(), ConfigError> {
        let invalid = |reason: String| ConfigError::invalid(name, reason);
        match option {
            "max_connections" => self.max_connections = Some(raw.count().map_err(invalid)?),
            "idle_timeout" => self.idle_timeout = Some(raw.secs().map_err(invalid)?),
            "failure_threshold" => self.failure_threshold = Some(raw.count().map_err(invalid)?),
            "reset_timeout" => self.reset_timeout = Some(raw.secs().map_err(invalid)?),
            "half_open_max_calls" => {
                self.half_open_max_calls = Some(raw.count().map_err(invalid)?);
            }
            "max_retries" => self.max_retries = Some(raw.count().map_err(invalid)?),
            "initial_backoff" => self.initial_backoff = Some(raw.secs().map_err(invalid)?),
            "backoff_factor" => self.backoff_factor = Some(raw.float().map_err(invalid)?),
            "max_backoff" => self.max_backoff = Some(raw.secs().map_err(invalid)?),
            "request_timeout" => self.request_timeout = Some(raw.secs().map_err(invalid)?),
            "connect_timeout" => self.connect_timeout = Some(raw.secs().map_err(invalid)?),
            "pool_timeout" => self.pool_timeout = Some(raw.secs().map_err(invalid)?),
            "stream_idle_timeout" => {
                self.stream_idle_timeout = Some(raw.secs().map_err(invalid)?);
            }
            "stream_max_reconnects" => {
                self.stream_max_reconnects = Some(raw.count().map_err(invalid)?);
            }
            "stream_max_backoff" => self.stream_max_backoff = Some(raw.secs().map_err(invalid)?),
            "jitter" => self.jitter = Some(raw.flag().map_err(invalid)?),
            "retry_budget_ratio" => self.retry_budget_ratio = Some(raw.float().map_err(invalid)?),
            "retry_budget_min_per_sec" => {
                self.retry_budget_min_per_sec = Some(raw.count().map_err(invalid)?);
            }
            "retry_budget_window" => {
                self.retry_budget_window = Some(raw.secs().map_err(invalid)?);
            }
            "retry_after_cap" => self.retry_after_cap = Some(raw.secs().map_err(invalid)?),
            _ => return Err(ConfigError::Unknown(name.to_owned())),
        }
        Ok(())
    }
}

/// An option's value as found in a file or a variable.
enum Raw<'a> {
    Toml(&'a toml::Value),
    Env(&'a str),
}

impl Raw<'_> {
    fn count<T: TryFrom<u64>>(&self) -> Result<T, String> {
        let n = match self {
            Raw::Toml(toml::Value::Integer(i)) => u64::try_from(*i)
                .map_err(|_| format!("expected a non-negative integer, got {i}"))?,
            Raw::Toml(other) => {
                return Err(format!(
                    "expected a non-negative integer, got {}",
                    describe(other)
                ));
            }
            Raw::Env(text) => text
                .trim()
                .parse()
                .map_err(|_| format!("expected a non-negative integer, got {text:?}"))?,
        };
        T::try_from(n).map_err(|_| format!("{n} is too large"))
    }

    fn float(&self) -> Result<f64, String> {
        match self {
            Raw::Toml(toml::Value::Float(f)) => Ok(*f),
            // TOML integers are exact in f64 up to 2^53; beyond that no
            // option is valid anyway.
            #[allow(clippy::cast_precision_loss)]
            Raw::Toml(toml::Value::Integer(i)) => Ok(*i as f64),
            Raw::Toml(other) => Err(format!("expected a number, got {}", describe(other))),
            Raw::Env(text) => text
                .trim()
                .parse()
                .map_err(|_| format!("expected a number, got {text:?}")),
        }
    }

    fn secs(&self) -> Result<Duration, String> {
        let secs = self.float().map_err(|_| match self {
            Raw::Toml(value) => {
                format!("expected a number of seconds, got {}", describe(value))
            }
            Raw::Env(text) => format!("expected a number of seconds, got {text:?}"),
        })?;
        if !secs.is_finite() {
            return Err(format!("seconds must be a finite number, got {secs}"));
        }
        if secs.is_sign_negative() && secs != 0.0 {
            return Err(format!("seconds must not be negative, got {secs}"));
        }
        Duration::try_from_secs_f64(secs.abs()).map_err(|_| format!("{secs} seconds is too large"))
    }

    fn flag(&self) -> Result<bool, String> {
        match self {
            Raw::Toml(toml::Value::Boolean(b)) => Ok(*b),
            Raw::Toml(other) => Err(format!("expected true or false, got {}", describe(other))),
            Raw::Env(text) => match text.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(format!("expected true, false, 1 or 0, got {text:?}")),
            },
        }
    }
}

/// The name of the `discovery` option.
const DISCOVERY: &str = "discovery";

/// The `discovery` key's value: a [`DiscoverySpec`] string.
fn discovery_spec(value: &toml::Value) -> Result<DiscoverySpec, ConfigError> {
    let invalid = |reason: String| ConfigError::invalid(DISCOVERY, reason);
    match value {
        toml::Value::String(text) => DiscoverySpec::parse(text).map_err(|e| invalid(e.to_string())),
        other => Err(invalid(format!(
            "expected a string such as \"etcd://127.0.0.1:2379/cortex\", got {}",
            describe(other)
        ))),
    }
}

/// A TOML value for an error message: its type, and the value if scalar.
fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::Array(_) | toml::Value::Table(_) => format!("a {}", value.type_str()),
        scalar => format!("{} {scalar}", value.type_str()),
    }
}

/// Seconds for a message.
fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// The first hard limit `c` breaks; `prefix` goes before the option name.
fn check_limits(c: &ClientConfig, prefix: &str) -> Result<(), ConfigError> {
    let fail = |option: &str, reason: String| {
        Err(ConfigError::invalid(format!("{prefix}{option}"), reason))
    };
    let positive = |option: &str, d: Duration| {
        if d.is_zero() {
            fail(option, format!("must be greater than 0 s, got {}", secs(d)))
        } else {
            Ok(())
        }
    };

    if !(1..=10_000).contains(&c.max_connections) {
        return fail(
            "max_connections",
            format!("must be between 1 and 10000, got {}", c.max_connections),
        );
    }
    if c.idle_timeout.is_zero() || c.idle_timeout > MAX_IDLE_TIMEOUT {
        return fail(
            "idle_timeout",
            format!(
                "must be greater than 0 s and at most 86400 s (one day), got {}",
                secs(c.idle_timeout)
            ),
        );
    }
    if c.failure_threshold < 1 {
        return fail(
            "failure_threshold",
            format!("must be at least 1, got {}", c.failure_threshold),
        );
    }
    positive("reset_timeout", c.reset_timeout)?;
    if c.half_open_max_calls < 1 {
        return fail(
            "half_open_max_calls",
            format!("must be at least 1, got {}", c.half_open_max_calls),
        );
    }
    if c.max_retries > 100 {
        return fail(
            "max_retries",
            format!("must be between 0 and 100, got {}", c.max_retries),
        );
    }
    positive("initial_backoff", c.initial_backoff)?;
    if !(c.backoff_factor.is_finite() && c.backoff_factor >= 1.0) {
        return fail(
            "backoff_factor",
            format!(
                "must be a finite number of at least 1.0, got {}",
                c.backoff_factor
            ),
        );
    }
    if c.max_backoff < c.initial_backoff {
        return fail(
            "max_backoff",
            format!(
                "must be at least initial_backoff ({}), got {}",
                secs(c.initial_backoff),
                secs(c.max_backoff)
            ),
        );
    }
    positive("request_timeout", c.request_timeout)?;
    positive("connect_timeout", c.connect_timeout)?;
    positive("pool_timeout", c.pool_timeout)?;
    positive("stream_idle_timeout", c.stream_idle_timeout)?;
    positive("stream_max_backoff", c.stream_max_backoff)?;
    if !(c.retry_budget_ratio.is_finite() && (0.0..=1000.0).contains(&c.retry_budget_ratio)) {
        return fail(
            "retry_budget_ratio",
            format!(
                "must be a finite number between 0 and 1000, got {}",
                c.retry_budget_ratio
            ),
        );
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&c.retry_budget_window) {
        return fail(
            "retry_budget_window",
            format!(
                "must be between 1 s and 60 s, got {}",
                secs(c.retry_budget_window)
            ),
        );
    }
    Ok(())
}

/// A value outside the seed's recommended range.
#[derive(Debug, PartialEq)]
struct Advisory {
    option: &'static str,
    value: String,
    recommended: &'static str,
}

impl Advisory {
    fn warn(&self, prefix: &str) {
        tracing::warn!(
            option = %format_args!("{prefix}{}", self.option),
            value = %self.value,
            recommended = self.recommended,
            "client configuration value is outside the recommended range",
        );
    }
}

/// The values of `c` outside the seed's recommended ranges.
fn advisories(c: &ClientConfig) -> Vec<Advisory> {
    fn outside<T: PartialOrd>(value: T, low: T, high: T) -> bool {
        value < low || value > high
    }
    let ms = Duration::from_millis;
    let s = Duration::from_secs;
    let checks = [
        (
            "max_connections",
            outside(c.max_connections, 5, 20),
            c.max_connections.to_string(),
            "5-20",
        ),
        (
            "idle_timeout",
            outside(c.idle_timeout, s(30), s(120)),
            secs(c.idle_timeout),
            "30-120 s",
        ),
        (
            "failure_threshold",
            outside(c.failure_threshold, 3, 10),
            c.failure_threshold.to_string(),
            "3-10",
        ),
        (
            "reset_timeout",
            outside(c.reset_timeout, s(10), s(60)),
            secs(c.reset_timeout),
            "10-60 s",
        ),
        (
            "half_open_max_calls",
            outside(c.half_open_max_calls, 1, 3),
            c.half_open_max_calls.to_string(),
            "1-3",
        ),
        (
            "max_retries",
            outside(c.max_retries, 2, 5),
            c.max_retries.to_string(),
            "2-5",
        ),
        (
            "initial_backoff",
            outside(c.initial_backoff, ms(100), ms(1000)),
            secs(c.initial_backoff),
            "0.1-1.0 s",
        ),
        (
            "backoff_factor",
            outside(c.backoff_factor, 1.5, 3.0),
            c.backoff_factor.to_string(),
            "1.5-3.0",
        ),
        (
            "max_backoff",
            outside(c.max_backoff, s(5), s(30)),
            secs(c.max_backoff),
            "5.0-30.0 s",
        ),
    ];
    checks
        .into_iter()
        .filter(|(_, outside, _, _)| *outside)
        .map(|(option, _, value, recommended)| Advisory {
            option,
            value,
            recommended,
        })
        .collect()
}

/// Serde of optional durations as seconds (integer or float).
mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serializer.serialize_some(&d.as_secs_f64()),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let Some(secs) = Option::<f64>::deserialize(deserializer)? else {
            return Ok(None);
        };
        if !secs.is_finite() || (secs.is_sign_negative() && secs != 0.0) {
            return Err(serde::de::Error::custom(format!(
                "seconds must be a finite, non-negative number, got {secs}"
            )));
        }
        Duration::try_from_secs_f64(secs.abs())
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{secs} seconds is too large")))
    }
}
