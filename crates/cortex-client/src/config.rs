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
//!   The standard proxy variables (`HTTP_PROXY`, `HTTPS_PROXY`,
//!   `NO_PROXY` and their kin) are read there too, for what the file leaves to them (see
//!   [`proxy`](crate::proxy)).
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
//! stream_http2 = true         # resource streams share HTTP/2 connections
//!
//! # HTTP proxy (see cortex_client::proxy)
//! proxy = "env"               # env (HTTP_PROXY, HTTPS_PROXY...), none, or http://[user:password@]host:port
//! no_proxy = ""               # hosts, domains, IPs, CIDRs reached directly; empty: NO_PROXY
//! proxy_tunnel = false        # CONNECT tunnels instead of forwarded requests
//!
//! # TLS to https:// endpoints (see cortex_client::tls)
//! tls_system_roots = true     # trust the operating system's certificate authorities
//! ca_file = ""                # PEM file of CA certificates trusted besides; empty: none
//! client_cert = ""            # PEM certificate chain for servers that ask (mutual TLS)
//! client_key = ""             # PEM private key of client_cert; both or neither
//!
//! # Per-service overrides: any option above but discovery, for one service.
//! # [services.memory]
//! # max_connections = 4
//! # request_timeout = 2.5
//! ```
//!
//! # Validation
//! Each field's documentation gives its default, its recommended range and
//! its hard limit, all from the one declaration of the options in this file.
//! A value outside a hard limit is an error naming the option and the
//! allowed range (`max_backoff` must also be at least `initial_backoff`).
//! Seconds in files and the environment must be finite and not negative.
//! Each service's overrides are checked as applied to the base.
//!
//! The seed's recommended ranges are advice: a valid configuration with
//! values outside them is accepted, and each such value is logged once per
//! validation with [`tracing::warn!`].
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
use std::path::{Path, PathBuf};
use std::time::Duration;

use cortex_discovery::DiscoverySpec;
pub use cortex_mcp_api::ConfigError;

use crate::proxy::{NoProxy, Proxy, StandardVars};

/// The prefix of the environment variables read by [`ClientConfig::with_env`].
pub const ENV_PREFIX: &str = "CORTEX_CLIENT_";

/// The longest `idle_timeout` accepted: one day.
const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Every option of [`ClientConfig`], declared once. `define_options!` makes
/// from it the fields and their documentation, [`Default`], the builder's
/// setters, the TOML keys (top level and `[services.<name>]`), the
/// `CORTEX_CLIENT_*` variables, [`ServiceOverrides`] and its serde form, the
/// hard limits and the recommended-range warnings. A row reads:
///
/// ```text
/// /// Description.
/// name: Type = DEFAULT [s]
///     [, recommended LOW..=HIGH [s]]            (a warning outside)
///     [, valid |v[, c]| CHECK => "must be …" [+ DETAIL]];
/// ```
///
/// `s` marks seconds (a [`Duration`] in code). A default of another type
/// than the option's (the proxy's `"env"`) is made into it by
/// [`FromDeclared`]. `CHECK` sees the value as
/// `v` and, for limits that involve another option, the whole config as
/// `c`; the error is `"must be …" + DETAIL + ", got VALUE"`. Limits are
/// checked in row order, so the first failing row is the one reported.
///
/// `discovery` and `services` are not rows: neither can be overridden per
/// service nor set from a variable, so they are written by hand.
macro_rules! client_options {
    ($then:ident) => {
        $then! {
            /// Max concurrent connections per endpoint.
            max_connections: usize = 10, recommended 5..=20,
                valid |v| (1..=10_000).contains(v) => "must be between 1 and 10000";
            /// An idle pooled connection is closed after this.
            idle_timeout: Duration = 60 s, recommended 30..=120 s,
                valid |v| !v.is_zero() && *v <= MAX_IDLE_TIMEOUT
                    => "must be greater than 0 s and at most 86400 s (one day)";
            /// Consecutive failures before the circuit opens.
            failure_threshold: u32 = 5, recommended 3..=10,
                valid |v| *v >= 1 => "must be at least 1";
            /// Time before an open circuit lets a probe through.
            reset_timeout: Duration = 30 s, recommended 10..=60 s,
                valid |v| !v.is_zero() => "must be greater than 0 s";
            /// Max concurrent probes while the circuit is half-open.
            half_open_max_calls: u32 = 1, recommended 1..=3,
                valid |v| *v >= 1 => "must be at least 1";
            /// Max retry attempts after the first attempt.
            max_retries: u32 = 3, recommended 2..=5,
                valid |v| *v <= 100 => "must be between 0 and 100";
            /// Backoff before the first retry.
            initial_backoff: Duration = 0.1 s, recommended 0.1..=1.0 s,
                valid |v| !v.is_zero() => "must be greater than 0 s";
            /// Multiplier of the backoff after each retry.
            backoff_factor: f64 = 2.0, recommended 1.5..=3.0,
                valid |v| v.is_finite() && *v >= 1.0 => "must be a finite number of at least 1.0";
            /// Cap of the retry backoff.
            max_backoff: Duration = 10 s, recommended 5.0..=30.0 s,
                valid |v, c| *v >= c.initial_backoff
                    => "must be at least initial_backoff" + format!(" ({})", secs(c.initial_backoff));
            /// Overall deadline of one call over all its attempts.
            request_timeout: Duration = 30 s,
                valid |v| !v.is_zero() => "must be greater than 0 s";
            /// Deadline to establish a connection.
            connect_timeout: Duration = 5 s,
                valid |v| !v.is_zero() => "must be greater than 0 s";
            /// Max wait for a free pooled connection.
            pool_timeout: Duration = 5 s,
                valid |v| !v.is_zero() => "must be greater than 0 s";
            /// A stream without any byte (keep-alives included) for this long is
            /// dead: the default is 3× the 15 s keep-alive.
            stream_idle_timeout: Duration = 45 s,
                valid |v| !v.is_zero() => "must be greater than 0 s";
            /// Max reconnects of a resource stream before it fails (the seed's
            /// `stream_with_reconnect`).
            stream_max_reconnects: u32 = 10;
            /// Cap of the stream reconnect backoff, `min(2^n s, cap)` (the seed's 60).
            stream_max_backoff: Duration = 60 s,
                valid |v| !v.is_zero() => "must be greater than 0 s";
            /// Resource streams share HTTP/2 connections (h2c with prior
            /// knowledge over TCP, ALPN `h2` over TLS; up to 100 streams on
            /// each) instead of holding one HTTP/1.1 connection each; an
            /// endpoint that does not speak it gets HTTP/1.1 from its first
            /// refusal on. Calls, streams through a forwarding proxy, and an
            /// MCP session's event stream always use HTTP/1.1.
            stream_http2: bool = true;
            /// Full jitter: each backoff is drawn uniformly from zero to its computed value.
            jitter: bool = true;
            /// Retries allowed per recent request by the retry budget.
            retry_budget_ratio: f64 = 0.2,
                valid |v| v.is_finite() && (0.0..=1000.0).contains(v)
                    => "must be a finite number between 0 and 1000";
            /// Retries per second the retry budget always allows.
            retry_budget_min_per_sec: u32 = 10;
            /// Window over which the retry budget counts requests.
            retry_budget_window: Duration = 10 s,
                valid |v| (Duration::from_secs(1)..=Duration::from_secs(60)).contains(v)
                    => "must be between 1 s and 60 s";
            /// Longest `Retry-After` honoured; longer ones are capped to this.
            retry_after_cap: Duration = 60 s;
            /// The HTTP proxy targets are reached through: `env` (the ones the
            /// standard variables name per target scheme, `HTTP_PROXY` for
            /// `http://`, `HTTPS_PROXY` for `https://`, `ALL_PROXY` for both,
            /// when read with [`ClientConfig::with_env`]), `none` (or `""`), or
            /// `http://[USER:PASSWORD@]HOST[:PORT]` for every target
            /// (see [`proxy`](crate::proxy)).
            proxy: Proxy = "env";
            /// Targets reached directly, not through `proxy`: comma-separated
            /// (or a TOML array) hosts, domains (with their subdomains), IP
            /// addresses, CIDR blocks, or `*`. Empty: `NO_PROXY`, when read
            /// with [`ClientConfig::with_env`].
            no_proxy: NoProxy = "";
            /// Reach targets through `CONNECT` tunnels instead of forwarded
            /// requests (curl's `--proxytunnel`).
            proxy_tunnel: bool = false;
            /// Trust the operating system's certificate authorities for
            /// `https://` endpoints (see [`tls`](crate::tls)).
            tls_system_roots: bool = true;
            /// A PEM file of CA certificates trusted for `https://` endpoints
            /// besides the system's (a private CA). Empty: none.
            ca_file: Option<PathBuf> = "",
                valid |v| crate::tls::check_ca_file(v).is_ok()
                    => "must name a readable PEM file of CA certificates"
                        + crate::tls::problem(crate::tls::check_ca_file(v));
            /// A PEM file of the certificate chain shown to servers that ask
            /// for one (mutual TLS); with `client_key`. Empty: none.
            client_cert: Option<PathBuf> = "",
                valid |v, c| crate::tls::check_client_cert(v, &c.client_key).is_ok()
                    => "must name a readable PEM file of certificates, with client_key set"
                        + crate::tls::problem(crate::tls::check_client_cert(v, &c.client_key));
            /// The PEM private key of `client_cert` (PKCS#8, PKCS#1 or
            /// SEC1; may be the same file). Empty: none.
            client_key: Option<PathBuf> = "",
                valid |v, c| crate::tls::check_client_key(v, &c.client_cert).is_ok()
                    => "must name a readable PEM private key of client_cert's certificate"
                        + crate::tls::problem(crate::tls::check_client_key(v, &c.client_cert));
        }
    };
}

/// A value written in the table: a literal, or a literal number of seconds
/// (`60 s`, `0.1 s`).
macro_rules! declared {
    ($value:literal) => {
        $value
    };
    ($value:literal s) => {
        Seconds::seconds($value)
    };
}

/// Makes everything that lists the options from the rows of
/// `client_options!` (see there).
macro_rules! define_options {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident: $ty:ty = $default:literal $($unit:ident)?
        $(, recommended $low:literal ..= $high:literal $($range_unit:ident)?)?
        $(, valid |$v:ident $(, $c:ident)?| $ok:expr => $requirement:literal $(+ $detail:expr)?)?
        ;
    )*) => {
        /// The client's settings. Values are in seconds in files and the environment
        /// (as in the seed) and [`Duration`] in code.
        #[derive(Debug, Clone, PartialEq)]
        pub struct ClientConfig {
            $(
                $(#[doc = $doc])*
                #[doc = ""]
                #[doc = concat!(
                    "Default: ", stringify!($default) $(, " ", stringify!($unit))?, "."
                    $(, " Recommended: ", stringify!($low), "–", stringify!($high)
                        $(, " ", stringify!($range_unit))?, ".")?
                    $(, " Limit: ", $requirement, ".")?
                )]
                pub $name: $ty,
            )*
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
                    $($name: <$ty as FromDeclared<_>>::from_declared(declared!($default $($unit)?)),)*
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
            $(
                #[doc = concat!("Overrides [`ClientConfig::", stringify!($name), "`].")]
                #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_value")]
                pub $name: Option<$ty>,
            )*
        }

        impl ClientConfigBuilder {
            $(
                #[doc = concat!("Sets [`ClientConfig::", stringify!($name), "`].")]
                pub fn $name(mut self, value: $ty) -> Self {
                    self.config.$name = value;
                    self
                }
            )*
        }

        impl ClientConfig {
            /// A copy of every option but the services.
            fn without_services(&self) -> ClientConfig {
                // `Clone::clone` rather than a copy: most options are
                // `Copy`, the proxy's are not.
                ClientConfig {
                    $($name: Clone::clone(&self.$name),)*
                    discovery: self.discovery.clone(),
                    services: BTreeMap::new(),
                }
            }

            /// Sets every option that `overrides` sets.
            fn apply(&mut self, overrides: &ServiceOverrides) {
                $(if let Some(value) = &overrides.$name {
                    self.$name = Clone::clone(value);
                })*
            }
        }

        impl ServiceOverrides {
            /// Sets `option` from `raw`; `name` is how the option is named in errors.
            fn set(&mut self, option: &str, raw: &Raw<'_>, name: &str) -> Result<(), ConfigError> {
                let invalid = |reason: String| ConfigError::invalid(name, reason);
                match option {
                    $(stringify!($name) => self.$name = Some(OptionValue::parse(raw).map_err(invalid)?),)*
                    _ => return Err(ConfigError::Unknown(name.to_owned())),
                }
                Ok(())
            }
        }

        /// The first hard limit `config` breaks; `prefix` goes before the option name.
        fn check_limits(config: &ClientConfig, prefix: &str) -> Result<(), ConfigError> {
            $($(
                let $v = &config.$name;
                $(let $c = config;)?
                if !$ok {
                    let requirement = [$requirement.to_owned() $(, $detail)?].concat();
                    return Err(ConfigError::invalid(
                        format!("{prefix}{}", stringify!($name)),
                        format!("{requirement}, got {}", $v.show()),
                    ));
                }
            )?)*
            Ok(())
        }

        /// The values of `c` outside the seed's recommended ranges.
        fn advisories(c: &ClientConfig) -> Vec<Advisory> {
            let mut found = Vec::new();
            $($(
                if outside(c.$name, declared!($low $($range_unit)?), declared!($high $($range_unit)?)) {
                    found.push(Advisory {
                        option: stringify!($name),
                        value: c.$name.show(),
                        recommended: concat!(
                            stringify!($low), "-", stringify!($high) $(, " ", stringify!($range_unit))?
                        ),
                    });
                }
            )?)*
            found
        }

        /// Hands every declared option to `visitor`, for tests that go
        /// through all of them.
        #[cfg(test)]
        fn visit_options(visitor: &mut impl tests::Visit) {
            $(visitor.visit(tests::Declared {
                name: stringify!($name),
                get: |c| Clone::clone(&c.$name),
                set: ClientConfigBuilder::$name,
                requirement: None $(.or(Some($requirement)))?,
            });)*
        }
    };
}

client_options!(define_options);

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
    /// as `true`/`false`/`1`/`0`) and validates the result. The standard
    /// proxy variables fill what the configuration leaves to them
    /// (`proxy = "env"`, an empty `no_proxy`; see [`proxy`](crate::proxy)),
    /// and a malformed one that is used is an error naming it. Other
    /// variables without the prefix are ignored; an unknown
    /// `CORTEX_CLIENT_*` name is rejected, and an unparsable or
    /// out-of-range value is an error naming the variable. Services, their overrides and `discovery` are kept;
    /// `CORTEX_CLIENT_DISCOVERY` is rejected (see [the module docs](self#discovery)).
    pub fn with_env(
        mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        // Sorted, so the first error reported does not depend on the order
        // of the environment.
        let mut standard = StandardVars::default();
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .filter(|(name, value)| {
                standard.offer(name, value);
                name.starts_with(ENV_PREFIX)
            })
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
        // After the CORTEX_CLIENT_* ones, which win over them.
        self.fill_proxy(&standard)?;
        self.validate().map_err(|e| match e {
            ConfigError::Invalid { option, reason } => ConfigError::Invalid {
                option: set_by.get(&option).map_or(option, |name| (*name).clone()),
                reason,
            },
            other => other,
        })?;
        Ok(self)
    }

    /// Fills what the configuration leaves to the standard proxy variables:
    /// `proxy = "env"` (in the base and in each service's overrides)
    /// becomes the proxies they name (one per target scheme, see
    /// [`proxy`](crate::proxy)), and an empty `no_proxy` takes
    /// `NO_PROXY`. A variable is only checked when it is used: with
    /// `proxy = "none"`, a malformed `HTTP_PROXY` meant for other programs
    /// is no error here.
    fn fill_proxy(&mut self, standard: &StandardVars) -> Result<(), ConfigError> {
        let left_to_env = |proxy: &Proxy| *proxy == Proxy::Env;
        let base = left_to_env(&self.proxy);
        let services = self
            .services
            .values()
            .any(|overrides| overrides.proxy.as_ref().is_some_and(left_to_env));
        if (base || services)
            && let Some(proxy) = standard.proxy()?
        {
            if base {
                self.proxy = proxy.clone();
            }
            for overrides in self.services.values_mut() {
                if overrides.proxy.as_ref().is_some_and(left_to_env) {
                    overrides.proxy = Some(proxy.clone());
                }
            }
        }
        if self.no_proxy.is_empty()
            && let Some(list) = standard.no_proxy()
        {
            self.no_proxy = list;
        }
        Ok(())
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
}

/// Builds a [`ClientConfig`] from the defaults; [`ClientConfigBuilder::build`]
/// validates it.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ClientConfigBuilder {
    config: ClientConfig,
}

impl ClientConfigBuilder {
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

    /// A string; `example` shows what one looks like in the error.
    fn text(&self, example: &str) -> Result<String, String> {
        match self {
            Raw::Toml(toml::Value::String(text)) => Ok(text.clone()),
            Raw::Toml(other) => Err(format!(
                "expected a string such as {example}, got {}",
                describe(other)
            )),
            Raw::Env(text) => Ok((*text).to_owned()),
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

/// Whether `value` is outside `low..=high` (written out rather than with
/// `contains`, so a NaN is never outside).
fn outside<T: PartialOrd>(value: T, low: T, high: T) -> bool {
    value < low || value > high
}

/// A literal number of seconds in the table, integer or float.
trait Seconds {
    fn seconds(self) -> Duration;
}

impl Seconds for u64 {
    fn seconds(self) -> Duration {
        Duration::from_secs(self)
    }
}

impl Seconds for f64 {
    fn seconds(self) -> Duration {
        Duration::from_secs_f64(self)
    }
}

/// What an option's type needs: reading it from a file or a variable,
/// showing it in messages, and its serialized form in [`ServiceOverrides`].
trait OptionValue: Clone {
    /// The serialized form: seconds for a [`Duration`], else the value.
    type Serde: serde::Serialize + serde::de::DeserializeOwned;

    fn parse(raw: &Raw<'_>) -> Result<Self, String>;
    fn show(&self) -> String;
    fn to_serde(&self) -> Self::Serde;
    fn from_serde(value: Self::Serde) -> Result<Self, String>;
}

/// A default as written in the table, made into its option's type: itself
/// for most, parsed from a keyword for the proxy's.
trait FromDeclared<L> {
    fn from_declared(literal: L) -> Self;
}

impl<T> FromDeclared<T> for T {
    fn from_declared(value: T) -> T {
        value
    }
}

impl FromDeclared<&'static str> for Proxy {
    /// The table's keyword; an unknown one is the default rather than a
    /// panic (the table is code, and its test reads the default back).
    fn from_declared(keyword: &'static str) -> Self {
        Proxy::parse(keyword).unwrap_or_default()
    }
}

impl FromDeclared<&'static str> for Option<PathBuf> {
    /// A path in the table: `""` is none.
    fn from_declared(path: &'static str) -> Self {
        path_or_none(path)
    }
}

/// A path option's text: empty (or blank) is none.
fn path_or_none(text: &str) -> Option<PathBuf> {
    let text = text.trim();
    (!text.is_empty()).then(|| PathBuf::from(text))
}

impl FromDeclared<&'static str> for NoProxy {
    fn from_declared(list: &'static str) -> Self {
        NoProxy::parse(list).unwrap_or_default()
    }
}

macro_rules! plain_option_value {
    ($($ty:ty => $parse:ident),* $(,)?) => {$(
        impl OptionValue for $ty {
            type Serde = Self;

            fn parse(raw: &Raw<'_>) -> Result<Self, String> {
                raw.$parse()
            }
            fn show(&self) -> String {
                self.to_string()
            }
            fn to_serde(&self) -> Self {
                *self
            }
            fn from_serde(value: Self) -> Result<Self, String> {
                Ok(value)
            }
        }
    )*};
}

plain_option_value!(usize => count, u32 => count, f64 => float, bool => flag);

impl OptionValue for Duration {
    type Serde = f64;

    fn parse(raw: &Raw<'_>) -> Result<Self, String> {
        raw.secs()
    }
    fn show(&self) -> String {
        secs(*self)
    }
    fn to_serde(&self) -> f64 {
        self.as_secs_f64()
    }
    fn from_serde(secs: f64) -> Result<Self, String> {
        if !secs.is_finite() || (secs.is_sign_negative() && secs != 0.0) {
            return Err(format!(
                "seconds must be a finite, non-negative number, got {secs}"
            ));
        }
        Duration::try_from_secs_f64(secs.abs()).map_err(|_| format!("{secs} seconds is too large"))
    }
}

impl OptionValue for Proxy {
    /// The text, credentials included (see [`Proxy::to_text`]).
    type Serde = String;

    fn parse(raw: &Raw<'_>) -> Result<Self, String> {
        Proxy::parse(&raw.text("\"none\" or \"http://host:port\"")?)
    }
    fn show(&self) -> String {
        self.to_string()
    }
    fn to_serde(&self) -> String {
        self.to_text()
    }
    fn from_serde(text: String) -> Result<Self, String> {
        Proxy::parse(&text)
    }
}

impl OptionValue for Option<PathBuf> {
    /// The path as text; `""` for none.
    type Serde = String;

    fn parse(raw: &Raw<'_>) -> Result<Self, String> {
        Ok(path_or_none(&raw.text("\"/etc/cortex/ca.pem\"")?))
    }
    fn show(&self) -> String {
        match self {
            Some(path) => path.display().to_string(),
            None => "none".to_owned(),
        }
    }
    fn to_serde(&self) -> String {
        self.as_deref()
            .map(|path| path.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
    fn from_serde(text: String) -> Result<Self, String> {
        Ok(path_or_none(&text))
    }
}

/// The serialized form of `no_proxy`: comma-separated text, or a list.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum NoProxyForm {
    Text(String),
    List(Vec<String>),
}

impl OptionValue for NoProxy {
    type Serde = NoProxyForm;

    fn parse(raw: &Raw<'_>) -> Result<Self, String> {
        match raw {
            Raw::Toml(toml::Value::Array(items)) => {
                let mut entries = Vec::with_capacity(items.len());
                for item in items {
                    match item.as_str() {
                        Some(entry) => entries.push(entry),
                        None => {
                            return Err(format!(
                                "expected a list of strings, got {} in it",
                                describe(item)
                            ));
                        }
                    }
                }
                NoProxy::from_entries(entries)
            }
            other => NoProxy::parse(&other.text("\"localhost,.internal\" or a list of strings")?),
        }
    }
    fn show(&self) -> String {
        self.to_string()
    }
    fn to_serde(&self) -> NoProxyForm {
        NoProxyForm::Text(self.to_string())
    }
    fn from_serde(form: NoProxyForm) -> Result<Self, String> {
        match form {
            NoProxyForm::Text(text) => NoProxy::parse(&text),
            NoProxyForm::List(entries) => NoProxy::from_entries(entries.iter().map(String::as_str)),
        }
    }
}

/// Serde of optional option values, through [`OptionValue::Serde`]
/// (durations as seconds, integer or float).
mod opt_value {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::OptionValue;

    pub(super) fn serialize<T: OptionValue, S: Serializer>(
        value: &Option<T>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.serialize_some(&value.to_serde()),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, T: OptionValue, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<T>, D::Error> {
        Option::<T::Serde>::deserialize(deserializer)?
            .map(T::from_serde)
            .transpose()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    //! Tests that go through the declared options, so that a row added to
    //! `client_options!` is tested from every source without listing it here.
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeSet;
    use std::fmt::Debug;

    use super::*;

    /// One row of the declaration, as `visit_options` hands it over.
    pub(super) struct Declared<T> {
        pub(super) name: &'static str,
        pub(super) get: fn(&ClientConfig) -> T,
        pub(super) set: fn(ClientConfigBuilder, T) -> ClientConfigBuilder,
        /// The declared hard limit, if any.
        pub(super) requirement: Option<&'static str>,
    }

    pub(super) trait Visit {
        fn visit<T: Sample>(&mut self, option: Declared<T>);
    }

    /// Values of an option's type for the tests.
    pub(super) trait Sample: OptionValue + PartialEq + Debug {
        /// A valid value other than `self`.
        fn changed(self) -> Self;
        /// Values some limit may refuse.
        fn candidates() -> Vec<Self>;
        /// `self` as written in a file (and a variable, unless
        /// [`Sample::env_text`] says otherwise).
        fn text(&self) -> String;
        /// `self` as written in a variable: without the quotes of a TOML string.
        fn env_text(&self) -> String {
            self.text()
        }
        /// A value no source accepts, as written in a file and in a variable.
        fn wrong() -> (&'static str, &'static str) {
            ("\"x\"", "x")
        }
    }

    macro_rules! sample_count {
        ($($ty:ty),*) => {$(
            impl Sample for $ty {
                fn changed(self) -> Self {
                    self + 1
                }
                fn candidates() -> Vec<Self> {
                    vec![0, 101, 10_001, 5_000_000]
                }
                fn text(&self) -> String {
                    self.to_string()
                }
            }
        )*};
    }

    sample_count!(usize, u32);

    impl Sample for f64 {
        fn changed(self) -> Self {
            self + 1.0
        }
        fn candidates() -> Vec<Self> {
            vec![-1.0, 0.0, 0.5, 1000.5, f64::NAN, f64::INFINITY]
        }
        fn text(&self) -> String {
            // TOML spells them `nan` and `inf`; Rust's parser takes those too.
            if self.is_nan() {
                "nan".to_owned()
            } else if self.is_infinite() {
                if *self > 0.0 { "inf" } else { "-inf" }.to_owned()
            } else {
                format!("{self:?}")
            }
        }
    }

    impl Sample for Duration {
        fn changed(self) -> Self {
            self + Duration::from_secs(1)
        }
        fn candidates() -> Vec<Self> {
            [0.0, 0.05, 0.5, 61.0, 100_000.0]
                .into_iter()
                .map(Duration::from_secs_f64)
                .collect()
        }
        fn text(&self) -> String {
            self.as_secs_f64().to_string()
        }
    }

    impl Sample for bool {
        fn changed(self) -> Self {
            !self
        }
        fn candidates() -> Vec<Self> {
            Vec::new()
        }
        fn text(&self) -> String {
            self.to_string()
        }
    }

    impl Sample for Proxy {
        fn changed(self) -> Self {
            match self {
                Proxy::Env => Proxy::parse("http://alice:s3cret@127.0.0.1:3128").unwrap(),
                Proxy::Url(_) | Proxy::PerScheme { .. } => Proxy::Off,
                Proxy::Off => Proxy::Env,
            }
        }
        fn candidates() -> Vec<Self> {
            Vec::new()
        }
        fn text(&self) -> String {
            format!("{:?}", self.to_text())
        }
        fn env_text(&self) -> String {
            self.to_text()
        }
        fn wrong() -> (&'static str, &'static str) {
            ("\"socks5://127.0.0.1:1080\"", "ftp://127.0.0.1")
        }
    }

    impl Sample for NoProxy {
        fn changed(self) -> Self {
            if self.is_empty() {
                NoProxy::parse("localhost,10.0.0.0/8").unwrap()
            } else {
                NoProxy::default()
            }
        }
        fn candidates() -> Vec<Self> {
            Vec::new()
        }
        fn text(&self) -> String {
            format!("{:?}", self.to_string())
        }
        fn env_text(&self) -> String {
            self.to_string()
        }
        fn wrong() -> (&'static str, &'static str) {
            ("[\"localhost:8080\"]", "*.example.com")
        }
    }

    /// PEM files for the path options: `both` holds a self-signed
    /// certificate and its key, so it is valid as `ca_file`, `client_cert`
    /// and `client_key` alike; `not_pem` is not PEM. Made once per test
    /// thread, removed when the thread ends.
    struct PemFiles {
        _dir: tempfile::TempDir,
        both: PathBuf,
        not_pem: PathBuf,
    }

    impl PemFiles {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let made = rcgen::generate_simple_self_signed(["localhost".to_owned()]).unwrap();
            let both = dir.path().join("both.pem");
            let pem = format!("{}{}", made.cert.pem(), made.signing_key.serialize_pem());
            std::fs::write(&both, pem).unwrap();
            let not_pem = dir.path().join("not.pem");
            std::fs::write(&not_pem, "not a certificate\n").unwrap();
            Self {
                _dir: dir,
                both,
                not_pem,
            }
        }
    }

    thread_local! {
        static PEM: PemFiles = PemFiles::new();
    }

    impl Sample for Option<PathBuf> {
        fn changed(self) -> Self {
            match self {
                None => Some(PEM.with(|files| files.both.clone())),
                Some(_) => None,
            }
        }
        fn candidates() -> Vec<Self> {
            PEM.with(|files| {
                vec![
                    Some(files.not_pem.clone()),
                    Some(files.both.with_file_name("missing.pem")),
                ]
            })
        }
        fn text(&self) -> String {
            format!("{:?}", self.to_serde())
        }
        fn env_text(&self) -> String {
            self.to_serde()
        }
        fn wrong() -> (&'static str, &'static str) {
            ("1", "/nonexistent/cortex-client-test.pem")
        }
    }

    /// The option that must be set together with `name` (to the same
    /// value, in the tests: `PemFiles::both` serves as either).
    fn partner(name: &str) -> Option<&'static str> {
        match name {
            "client_cert" => Some("client_key"),
            "client_key" => Some("client_cert"),
            _ => None,
        }
    }

    fn variable(name: &str) -> String {
        format!("{ENV_PREFIX}{}", name.to_ascii_uppercase())
    }

    fn from_env(name: &str, text: &str) -> Result<ClientConfig, ConfigError> {
        ClientConfig::default().with_env([(variable(name), text.to_owned())])
    }

    fn from_service_table(name: &str, text: &str) -> Result<ClientConfig, ConfigError> {
        ClientConfig::from_toml_str(&format!("[services.memory]\n{name} = {text}\n"))
    }

    /// The option and reason of an `Invalid` error.
    #[track_caller]
    fn invalid(result: Result<ClientConfig, ConfigError>) -> (String, String) {
        match result {
            Err(ConfigError::Invalid { option, reason }) => (option, reason),
            other => panic!("expected an invalid value, got {other:?}"),
        }
    }

    fn declared_names() -> Vec<&'static str> {
        struct Names(Vec<&'static str>);
        impl Visit for Names {
            fn visit<T: Sample>(&mut self, option: Declared<T>) {
                self.0.push(option.name);
            }
        }
        let mut names = Names(Vec::new());
        visit_options(&mut names);
        names.0
    }

    /// For each declared option, one new value set by the builder, a TOML
    /// key, a `[services.<name>]` key, a variable and serde gives one and the
    /// same configuration.
    #[test]
    fn every_declared_option_is_set_alike_from_every_source() {
        struct SetAlike;
        impl Visit for SetAlike {
            fn visit<T: Sample>(&mut self, option: Declared<T>) {
                let name = option.name;
                let default = ClientConfig::default();
                let value = (option.get)(&default).changed();
                let text = value.text();
                // An option valid only with its partner is set with it, in
                // every source alike.
                let lines = match partner(name) {
                    Some(partner) => format!("{partner} = {text}\n{name} = {text}"),
                    None => format!("{name} = {text}"),
                };
                let mut base = ClientConfig::builder();
                let mut vars = vec![(variable(name), value.env_text())];
                if let Some(partner) = partner(name) {
                    let table: toml::Table = toml::from_str(&lines).unwrap();
                    let mut overrides = ServiceOverrides::default();
                    overrides
                        .set(partner, &Raw::Toml(&table[partner]), partner)
                        .unwrap();
                    base.config.apply(&overrides);
                    vars.push((variable(partner), value.env_text()));
                }

                let built = (option.set)(base, value.clone()).build().unwrap();
                assert_eq!((option.get)(&built), value, "{name}");
                assert_ne!(built, default, "{name}");
                let mut others = built.clone();
                others.apply(&ServiceOverrides::default());
                assert_eq!(others.without_services(), built, "{name}: kept by the copy");

                let toml = ClientConfig::from_toml_str(&lines).unwrap();
                assert_eq!(toml, built, "{name} from TOML");
                assert_eq!(
                    ClientConfig::default().with_env(vars).unwrap(),
                    built,
                    "{name} from env"
                );
                let service =
                    ClientConfig::from_toml_str(&format!("[services.memory]\n{lines}\n")).unwrap();
                assert_eq!(service.for_service("memory"), built, "{name} per service");
                assert_eq!(service.for_service("other"), default, "{name}");

                let overrides: ServiceOverrides = toml::from_str(&lines).unwrap();
                assert_eq!(overrides, service.services["memory"], "{name} by serde");
                let again: ServiceOverrides =
                    serde_json::from_value(serde_json::to_value(&overrides).unwrap()).unwrap();
                assert_eq!(again, overrides, "{name}: serde round trip");
            }
        }
        visit_options(&mut SetAlike);
    }

    /// For each declared option, a value its limit refuses is refused with
    /// the same reason by the builder, in TOML, per service and from the
    /// environment, each naming the option as given; an option without a
    /// limit refuses none. A value of the wrong type names it too.
    #[test]
    fn an_invalid_value_names_the_declared_option_in_every_source() {
        struct Refused;
        impl Visit for Refused {
            fn visit<T: Sample>(&mut self, option: Declared<T>) {
                let name = option.name;
                let mut refused = 0;
                for value in T::candidates() {
                    let text = value.text();
                    let Err(ConfigError::Invalid {
                        option: named,
                        reason,
                    }) = (option.set)(ClientConfig::builder(), value.clone()).build()
                    else {
                        continue;
                    };
                    if named != name {
                        // Breaks another option's limit (initial_backoff
                        // above max_backoff), tested there.
                        continue;
                    }
                    refused += 1;
                    let requirement = option.requirement.unwrap();
                    assert!(reason.starts_with(requirement), "{name}: {reason}");
                    assert!(reason.ends_with(&format!(", got {}", value.show())));

                    let toml = ClientConfig::from_toml_str(&format!("{name} = {text}"));
                    assert_eq!(invalid(toml), (name.to_owned(), reason.clone()));
                    assert_eq!(
                        invalid(from_service_table(name, &text)),
                        (format!("services.memory.{name}"), reason.clone())
                    );
                    assert_eq!(
                        invalid(from_env(name, &value.env_text())),
                        (variable(name), reason)
                    );
                }
                assert_eq!(
                    refused > 0,
                    option.requirement.is_some(),
                    "{name}: a declared limit refuses some value, and only then"
                );

                let (wrong_toml, wrong_env) = T::wrong();
                let toml = ClientConfig::from_toml_str(&format!("{name} = {wrong_toml}"));
                assert_eq!(invalid(toml).0, name);
                assert_eq!(
                    invalid(from_service_table(name, wrong_toml)).0,
                    format!("services.memory.{name}")
                );
                assert_eq!(invalid(from_env(name, wrong_env)).0, variable(name));
            }
        }
        visit_options(&mut Refused);
    }

    /// The TOML example of the module documentation shows exactly the
    /// declared options, with their declared defaults.
    #[test]
    fn documented_example_shows_the_declared_options() {
        let source = include_str!("config.rs");
        let example: String = source
            .lines()
            .skip_while(|line| line.trim() != "//! ```toml")
            .skip(1)
            .take_while(|line| line.trim() != "//! ```")
            .map(|line| {
                let text = line.strip_prefix("//!").unwrap();
                format!("{}\n", text.strip_prefix(' ').unwrap_or(text))
            })
            .collect();
        let keys: toml::Table = example.parse().unwrap();
        let shown: BTreeSet<&str> = keys.keys().map(String::as_str).collect();
        let declared: BTreeSet<&str> = declared_names().into_iter().collect();
        assert_eq!(shown, declared);
        assert_eq!(
            ClientConfig::from_toml_str(&example).unwrap(),
            ClientConfig::default()
        );
    }

    #[test]
    fn declared_names_are_unique_and_not_the_hand_written_keys() {
        let names = declared_names();
        let unique: BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len());
        assert_eq!(names.len(), 28);
        assert!(!unique.contains(DISCOVERY) && !unique.contains("services"));
    }

    /// The recommended ranges, as logged, are the seed's.
    #[test]
    fn advisories_show_the_declared_ranges() {
        let config = ClientConfig {
            max_connections: 50,
            idle_timeout: Duration::from_secs(5),
            failure_threshold: 1,
            reset_timeout: Duration::from_secs(600),
            half_open_max_calls: 10,
            max_retries: 0,
            initial_backoff: Duration::from_millis(10),
            backoff_factor: 10.0,
            max_backoff: Duration::from_millis(500),
            ..ClientConfig::default()
        };
        let shown: Vec<(&str, String, &str)> = advisories(&config)
            .into_iter()
            .map(|a| (a.option, a.value, a.recommended))
            .collect();
        let expected = [
            ("max_connections", "50", "5-20"),
            ("idle_timeout", "5 s", "30-120 s"),
            ("failure_threshold", "1", "3-10"),
            ("reset_timeout", "600 s", "10-60 s"),
            ("half_open_max_calls", "10", "1-3"),
            ("max_retries", "0", "2-5"),
            ("initial_backoff", "0.01 s", "0.1-1.0 s"),
            ("backoff_factor", "10", "1.5-3.0"),
            ("max_backoff", "0.5 s", "5.0-30.0 s"),
        ];
        let expected: Vec<(&str, String, &str)> = expected
            .into_iter()
            .map(|(option, value, range)| (option, value.to_owned(), range))
            .collect();
        assert_eq!(shown, expected);
        assert!(advisories(&ClientConfig::default()).is_empty());
        // The edges of a range are inside it.
        let edges = ClientConfig {
            max_connections: 20,
            initial_backoff: Duration::from_secs(1),
            backoff_factor: 1.5,
            ..ClientConfig::default()
        };
        assert!(advisories(&edges).is_empty());
    }
}
