//! [`DiscoverySpec`]: which discovery backend to use, as one short string.
//!
//! The `cortex` command takes it as `--discovery SPEC` (or
//! `CORTEX_DISCOVERY`), and a client configuration file as its `discovery`
//! key; both parse it here, so every program reads the same forms:
//!
//! | spec | backend |
//! |---|---|
//! | `env` (the default) | [`StaticDiscovery::from_env`]: `NAME_SERVICE_URL` variables; memory and cognition on localhost |
//! | `file:PATH` | [`FileDiscovery`]: a TOML file, reloaded every second when it changes |
//! | `dns:DOMAIN[@HOST:PORT]` | [`DnsSrvDiscovery`]: SRV records `_NAME._tcp.DOMAIN`, from the system resolver or the nameserver at HOST:PORT |
//! | `etcd://HOST:PORT[,HOST:PORT][/PREFIX]` | `EtcdDiscovery` (the `etcd` feature): etcd keys under PREFIX, watched (see [`EtcdConfig::from_url`]) |
//!
//! # Example
//! ```
//! use cortex_discovery::{DiscoverySpec, ServiceDiscovery};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let spec: DiscoverySpec = "env".parse()?;
//! assert_eq!(spec.to_string(), "env");
//! let (discovery, names) = spec
//!     .build_with_env([("MEMORY_SERVICE_URL".to_string(), "http://10.0.0.5:9000".to_string())])
//!     .await?;
//! assert!(names.contains(&"memory".to_string()));
//! assert_eq!(discovery.resolve("memory").await?.endpoints[0].url, "http://10.0.0.5:9000");
//!
//! let err = "consul://x".parse::<DiscoverySpec>().unwrap_err();
//! assert!(err.to_string().contains("consul://x"));
//! # Ok(()) }
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    DiscoveryError, DnsSrvConfig, DnsSrvDiscovery, EtcdConfig, FileDiscovery, ServiceDiscovery,
    StaticDiscovery,
};

/// The accepted forms, for messages.
pub const FORMS: &str =
    "env, file:PATH, dns:DOMAIN[@HOST:PORT] or etcd://HOST:PORT[,HOST:PORT]/PREFIX";

/// How often a `file:` backend looks for changes.
const FILE_RELOAD_EVERY: Duration = Duration::from_secs(1);

/// Which discovery backend to use (see the [module](self) for the forms).
///
/// [`FromStr`] parses it and [`Display`](fmt::Display) gives the string
/// form back; with serde it is that string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DiscoverySpec {
    /// `env`: environment variables ([`StaticDiscovery::from_env`]).
    #[default]
    Env,
    /// `file:PATH`: a TOML file ([`FileDiscovery`]).
    File(PathBuf),
    /// `dns:DOMAIN[@HOST:PORT]`: DNS SRV records under a domain
    /// ([`DnsSrvDiscovery`]).
    Dns {
        /// The domain, without leading or trailing dots.
        domain: String,
        /// One nameserver to ask instead of the system's.
        nameserver: Option<SocketAddr>,
    },
    /// `etcd://…`: a watched etcd prefix (`EtcdDiscovery`, with the `etcd` feature); the URL as
    /// given, already checked by [`EtcdConfig::from_url`].
    Etcd(String),
}

/// A string that is not a [`DiscoverySpec`]. Its message names the value,
/// what is wrong and the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a discovery: {reason}; use {FORMS}")]
pub struct DiscoverySpecError {
    value: String,
    reason: String,
}

impl DiscoverySpecError {
    fn new(value: &str, reason: impl Into<String>) -> Self {
        Self {
            value: value.to_owned(),
            reason: reason.into(),
        }
    }

    /// The value refused.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// What is wrong with it.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl DiscoverySpec {
    /// Parses a spec; white space around it is ignored.
    pub fn parse(raw: &str) -> Result<Self, DiscoverySpecError> {
        let spec = raw.trim();
        if spec.is_empty() {
            return Err(DiscoverySpecError::new(spec, "it is empty"));
        }
        if spec == "env" {
            return Ok(Self::Env);
        }
        if let Some(path) = spec.strip_prefix("file:") {
            if path.is_empty() {
                return Err(DiscoverySpecError::new(
                    spec,
                    "`file:` needs a path, as in file:services.toml",
                ));
            }
            return Ok(Self::File(PathBuf::from(path)));
        }
        if let Some(rest) = spec.strip_prefix("dns:") {
            let (domain, nameserver) = match rest.split_once('@') {
                Some((domain, server)) => {
                    let server = server.parse::<SocketAddr>().map_err(|_| {
                        DiscoverySpecError::new(
                            spec,
                            format!("`{server}` is not HOST:PORT (an IP address and a port)"),
                        )
                    })?;
                    (domain, Some(server))
                }
                None => (rest, None),
            };
            let domain = domain.trim_matches('.');
            if domain.is_empty() {
                return Err(DiscoverySpecError::new(
                    spec,
                    "`dns:` needs a domain, as in dns:service.consul@127.0.0.1:8600",
                ));
            }
            return Ok(Self::Dns {
                domain: domain.to_owned(),
                nameserver,
            });
        }
        if spec.starts_with("etcd://") {
            EtcdConfig::from_url(spec).map_err(|e| match e {
                DiscoveryError::Config(reason) => DiscoverySpecError::new(spec, reason),
                other => DiscoverySpecError::new(spec, other.to_string()),
            })?;
            return Ok(Self::Etcd(spec.to_owned()));
        }
        Err(DiscoverySpecError::new(spec, "unknown form"))
    }

    /// Builds the backend, with `env` reading the process environment
    /// (non-Unicode variables are converted lossily); see
    /// [`DiscoverySpec::build_with_env`].
    pub async fn build(&self) -> Result<(Arc<dyn ServiceDiscovery>, Vec<String>), DiscoveryError> {
        self.build_with_env(std::env::vars_os().map(|(name, value)| {
            (
                name.to_string_lossy().into_owned(),
                value.to_string_lossy().into_owned(),
            )
        }))
        .await
    }

    /// Builds the backend, with `env` reading `vars`; also the service
    /// names it knows now, sorted. DNS SRV records cannot be listed, so for
    /// `dns:` those are the two Cortex services, memory and cognition.
    ///
    /// A backend that cannot start (a file that cannot be read or parsed,
    /// etcd not answering) is an error naming it. `file:` and `etcd://`
    /// start a background task that keeps the sets current; it stops when
    /// the backend is dropped.
    pub async fn build_with_env(
        &self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Arc<dyn ServiceDiscovery>, Vec<String>), DiscoveryError> {
        let (backend, mut names): (Arc<dyn ServiceDiscovery>, Vec<String>) = match self {
            Self::Env => {
                let env = StaticDiscovery::from_env(vars)?;
                let names = env.registry().names();
                (Arc::new(env), names)
            }
            Self::File(path) => {
                let file = FileDiscovery::open(path, FILE_RELOAD_EVERY).await?;
                let names = file.registry().names();
                (file, names)
            }
            Self::Dns { domain, nameserver } => {
                let dns = DnsSrvDiscovery::new(DnsSrvConfig {
                    nameservers: nameserver.iter().copied().collect(),
                    template: Some(format!("_{{service}}._tcp.{domain}.")),
                    ..DnsSrvConfig::default()
                })?;
                (dns, vec!["memory".to_owned(), "cognition".to_owned()])
            }
            Self::Etcd(url) => etcd_backend(url).await?,
        };
        names.sort();
        names.dedup();
        Ok((backend, names))
    }
}

/// The etcd backend at `url`, with the names it holds now.
#[cfg(feature = "etcd")]
async fn etcd_backend(
    url: &str,
) -> Result<(Arc<dyn ServiceDiscovery>, Vec<String>), DiscoveryError> {
    let etcd = crate::EtcdDiscovery::connect(EtcdConfig::from_url(url)?).await?;
    let names = etcd.registry().names();
    Ok((etcd, names))
}

/// Without the `etcd` feature an `etcd://` spec still parses (so a config
/// file stays valid everywhere), and building it says how to get etcd.
#[cfg(not(feature = "etcd"))]
async fn etcd_backend(
    url: &str,
) -> Result<(Arc<dyn ServiceDiscovery>, Vec<String>), DiscoveryError> {
    EtcdConfig::from_url(url)?;
    Err(DiscoveryError::NotBuiltIn {
        what: format!("etcd discovery (`{url}`)"),
        feature: "etcd",
    })
}

impl FromStr for DiscoverySpec {
    type Err = DiscoverySpecError;

    fn from_str(raw: &str) -> Result<Self, DiscoverySpecError> {
        Self::parse(raw)
    }
}

impl fmt::Display for DiscoverySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env => f.write_str("env"),
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Dns { domain, nameserver } => {
                write!(f, "dns:{domain}")?;
                match nameserver {
                    Some(server) => write!(f, "@{server}"),
                    None => Ok(()),
                }
            }
            Self::Etcd(url) => f.write_str(url),
        }
    }
}

impl serde::Serialize for DiscoverySpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DiscoverySpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<DiscoverySpec, DiscoverySpecError> {
        raw.parse()
    }

    #[test]
    fn parses_every_form_and_explains_mistakes() {
        assert_eq!(parse("env"), Ok(DiscoverySpec::Env));
        assert_eq!(parse(" env\n"), Ok(DiscoverySpec::Env));
        assert_eq!(
            parse("file:s.toml"),
            Ok(DiscoverySpec::File("s.toml".into()))
        );
        assert_eq!(
            parse("dns:service.consul@127.0.0.1:8600"),
            Ok(DiscoverySpec::Dns {
                domain: "service.consul".into(),
                nameserver: Some(SocketAddr::from(([127, 0, 0, 1], 8600)))
            })
        );
        assert_eq!(
            parse("dns:.service.consul."),
            Ok(DiscoverySpec::Dns {
                domain: "service.consul".into(),
                nameserver: None
            })
        );
        assert_eq!(
            parse("etcd://127.0.0.1:2379/cortex"),
            Ok(DiscoverySpec::Etcd("etcd://127.0.0.1:2379/cortex".into()))
        );
        for bad in [
            "",
            "  ",
            "file:",
            "dns:",
            "dns:x@nowhere",
            "etcd://",
            "etcd://h:1?x",
            "consul://x",
            "zookeeper",
            "ENV",
        ] {
            let Err(err) = parse(bad) else {
                panic!("{bad:?} should be refused");
            };
            let message = err.to_string();
            assert!(
                message.contains(&format!("`{}`", bad.trim())),
                "the value is named: {message}"
            );
            assert!(message.contains(FORMS), "the forms are listed: {message}");
            assert!(!err.reason().is_empty());
        }
        assert!(
            parse("dns:x@nowhere")
                .is_err_and(|e| e.reason().contains("`nowhere` is not HOST:PORT")),
        );
    }

    #[test]
    fn display_gives_the_string_form_back() {
        for spec in [
            "env",
            "file:dir/services.toml",
            "dns:service.consul",
            "dns:service.consul@127.0.0.1:8600",
            "dns:svc.example@[::1]:53",
            "etcd://127.0.0.1:2379,127.0.0.1:2380/cortex",
        ] {
            let parsed = parse(spec).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed.to_string(), spec);
            assert_eq!(parse(&parsed.to_string()), Ok(parsed));
        }
    }

    #[test]
    fn serde_uses_the_string_form() {
        let spec = parse("file:services.toml").unwrap_or_else(|e| panic!("{e}"));
        let json = serde_json::to_string(&spec).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json, "\"file:services.toml\"");
        let back: DiscoverySpec = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, spec);
        let err = serde_json::from_str::<DiscoverySpec>("\"nope\"")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("`nope` is not a discovery"), "{err}");
    }

    #[tokio::test]
    async fn env_builds_from_the_variables_given() {
        let (discovery, names) = DiscoverySpec::Env
            .build_with_env([(
                "SEARCH_SERVICE_URL".to_owned(),
                "http://127.0.0.1:7000".to_owned(),
            )])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(names, ["cognition", "core", "memory", "search"]);
        let set = discovery
            .resolve("search")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(set.endpoints[0].url, "http://127.0.0.1:7000");
    }

    #[tokio::test]
    async fn a_missing_file_is_an_error_naming_it() {
        let spec = DiscoverySpec::File("/nonexistent/services.toml".into());
        let err = spec
            .build_with_env([])
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/nonexistent/services.toml"), "{err}");
    }
}
