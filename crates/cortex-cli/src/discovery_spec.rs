//! `--discovery SPEC`: which discovery backend client commands use.
//!
//! | spec | backend |
//! |---|---|
//! | `env` (default) | `NAME_SERVICE_URL` variables; memory and cognition on localhost |
//! | `file:PATH` | a TOML file, reloaded when it changes |
//! | `dns:DOMAIN[@HOST:PORT]` | DNS SRV `_NAME._tcp.DOMAIN`, from the system resolver or HOST:PORT |
//! | `etcd://HOST:PORT[,HOST:PORT]/PREFIX` | etcd keys under PREFIX, watched |
//!
//! `--service NAME=URL` flags win over any backend.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cortex_client::discovery::{
    DiscoveryError, DnsSrvConfig, DnsSrvDiscovery, EndpointSet, EtcdConfig, EtcdDiscovery,
    FileDiscovery, ServiceDiscovery, StaticDiscovery,
};

/// A parsed `--discovery` value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum DiscoverySpec {
    /// Environment variables.
    #[default]
    Env,
    /// A TOML file.
    File(PathBuf),
    /// DNS SRV under a domain, optionally at one nameserver.
    Dns {
        domain: String,
        nameserver: Option<SocketAddr>,
    },
    /// etcd, as an `etcd://` URL.
    Etcd(String),
}

/// Parses a `--discovery` value (clap's value parser).
pub(crate) fn parse(raw: &str) -> Result<DiscoverySpec, String> {
    let raw = raw.trim();
    if raw == "env" {
        return Ok(DiscoverySpec::Env);
    }
    if let Some(path) = raw.strip_prefix("file:") {
        if path.is_empty() {
            return Err("`file:` needs a path, as in file:services.toml".into());
        }
        return Ok(DiscoverySpec::File(PathBuf::from(path)));
    }
    if let Some(rest) = raw.strip_prefix("dns:") {
        let (domain, nameserver) = match rest.split_once('@') {
            Some((domain, server)) => {
                let server = server.parse::<SocketAddr>().map_err(|_| {
                    format!("`{server}` is not HOST:PORT (an IP address and a port)")
                })?;
                (domain, Some(server))
            }
            None => (rest, None),
        };
        let domain = domain.trim_matches('.');
        if domain.is_empty() {
            return Err("`dns:` needs a domain, as in dns:service.consul@127.0.0.1:8600".into());
        }
        return Ok(DiscoverySpec::Dns {
            domain: domain.to_string(),
            nameserver,
        });
    }
    if raw.starts_with("etcd://") {
        EtcdConfig::from_url(raw).map_err(|e| e.to_string())?;
        return Ok(DiscoverySpec::Etcd(raw.to_string()));
    }
    Err(format!(
        "`{raw}` is not a discovery: use env, file:PATH, dns:DOMAIN[@HOST:PORT] or etcd://HOST:PORT/PREFIX"
    ))
}

/// The `--service` overrides in front of a backend.
pub(crate) struct Layered {
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

impl DiscoverySpec {
    /// Builds the backend with `overrides` in front; also the service names
    /// it knows now.
    pub(crate) async fn build(
        &self,
        overrides: StaticDiscovery,
    ) -> Result<(Arc<dyn ServiceDiscovery>, Vec<String>), DiscoveryError> {
        let mut names = overrides.registry().names();
        let backend: Arc<dyn ServiceDiscovery> = match self {
            DiscoverySpec::Env => {
                let env = StaticDiscovery::from_env(std::env::vars());
                names.extend(env.registry().names());
                Arc::new(env)
            }
            DiscoverySpec::File(path) => {
                let file = FileDiscovery::open(path, Duration::from_secs(1)).await?;
                names.extend(file.registry().names());
                file
            }
            DiscoverySpec::Dns { domain, nameserver } => {
                let dns = DnsSrvDiscovery::new(DnsSrvConfig {
                    nameservers: nameserver.iter().copied().collect(),
                    template: Some(format!("_{{service}}._tcp.{domain}.")),
                    ..DnsSrvConfig::default()
                })?;
                names.extend(["memory".to_string(), "cognition".to_string()]);
                dns
            }
            DiscoverySpec::Etcd(url) => {
                let etcd = EtcdDiscovery::connect(EtcdConfig::from_url(url)?).await?;
                names.extend(etcd.registry().names());
                etcd
            }
        };
        names.sort();
        names.dedup();
        Ok((Arc::new(Layered { overrides, backend }), names))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_explains_mistakes() {
        assert_eq!(parse("env"), Ok(DiscoverySpec::Env));
        assert_eq!(
            parse("file:s.toml"),
            Ok(DiscoverySpec::File("s.toml".into()))
        );
        assert_eq!(
            parse("dns:service.consul@127.0.0.1:8600"),
            Ok(DiscoverySpec::Dns {
                domain: "service.consul".into(),
                nameserver: Some("127.0.0.1:8600".parse().unwrap_or_else(|_| unreachable!()))
            })
        );
        assert!(matches!(
            parse("etcd://127.0.0.1:2379/cortex"),
            Ok(DiscoverySpec::Etcd(_))
        ));
        for bad in [
            "",
            "file:",
            "dns:",
            "dns:x@nowhere",
            "etcd://",
            "consul://x",
            "zookeeper",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
