//! etcd: discovery from a key prefix kept current by a watch, and
//! self-registration of a service under a lease.
//!
//! # Layout in etcd
//!
//! One key per running instance, `{prefix}{service}/{instance_id}`, whose
//! value is the JSON form of an [`Endpoint`](crate::Endpoint):
//!
//! ```text
//! /cortex/services/memory/6f1c2a9e0b7d4c11 → {"url":"http://10.0.0.5:9000","protocol":"cortex","weight":1}
//! ```
//!
//! # Client side: `EtcdDiscovery`
//!
//! Lists the prefix once (an error if etcd does not answer), then one task
//! watches the prefix from the revision after that list and republishes the
//! set of every service an event touches. When the watch breaks (etcd
//! compacted the revision it was at, canceled it, or the stream failed or
//! ended), the task waits (the reconnect policy of
//! [`cortex_resilience::reconnect`]: 100 ms doubling to 5 s, full jitter),
//! lists the whole prefix again, publishes every service (those that
//! vanished as empty sets) and watches again from the new revision. While
//! etcd cannot be reached the last good sets stay. `resolve` never calls
//! etcd: it reads the local [`Registry`](crate::Registry).
//!
//! # Service side: `EtcdRegistration`
//!
//! Puts the key under a lease and keeps the lease alive from a task, every
//! third of the TTL. When etcd says the lease is gone (it expired while etcd
//! was unreachable, or etcd lost its data), the task grants a new lease and
//! puts the key again; failed attempts back off by the same policy as the
//! watch. `EtcdRegistration::deregister` revokes the lease (the key goes at
//! once); dropping the registration only stops the keep-alives, so the key
//! goes when the lease expires, which is also what happens to a process that
//! is killed.
//!
//! Every etcd call is bounded by [`EtcdConfig::connect_timeout`]; the
//! long-lived watch and keep-alive streams are guarded by HTTP/2 keep-alive
//! pings instead.
//!
//! # Building without etcd
//! [`EtcdConfig`] (parsing `etcd://` URLs) is always here. The client and
//! the registration need the `etcd` cargo feature: the etcd client crate
//! compiles its gRPC definitions with `protoc` at build time, and without
//! the feature this crate builds with the Rust toolchain alone (see
//! `docs/building.md`).

use std::net::Ipv6Addr;
use std::time::Duration;

use crate::DiscoveryError;

#[cfg(feature = "etcd")]
mod client;
#[cfg(feature = "etcd")]
pub use client::{EtcdDiscovery, EtcdRegistration};

/// The key prefix used when none is given.
pub const DEFAULT_PREFIX: &str = "/cortex/services/";
/// The etcd client port used when a `etcd://` URL names a host without one.
pub const DEFAULT_PORT: u16 = 2379;

/// Where etcd is and which part of its key space holds the services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members, such as `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix of the services (default [`DEFAULT_PREFIX`]); a missing
    /// trailing `/` is added.
    pub prefix: String,
    /// Bounds connecting to etcd and every single etcd call (default 2 s).
    pub connect_timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self::new([format!("http://127.0.0.1:{DEFAULT_PORT}")])
    }
}

impl EtcdConfig {
    /// The given members with the default prefix and timeout.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: DEFAULT_PREFIX.to_string(),
            connect_timeout: Duration::from_secs(2),
        }
    }

    /// Parses `etcd://host:port[,host:port...][/key/prefix]`, the form the
    /// command line takes. A host without a port gets [`DEFAULT_PORT`]; an
    /// IPv6 address goes in brackets (`etcd://[::1]:2379`); without a path
    /// the prefix is [`DEFAULT_PREFIX`]. The members are reached over plain
    /// `http://`.
    pub fn from_url(url: &str) -> Result<Self, DiscoveryError> {
        let bad = |why: &str| DiscoveryError::Config(format!("etcd URL `{url}`: {why}"));
        let rest = url
            .trim()
            .strip_prefix("etcd://")
            .ok_or_else(|| bad("must start with etcd://"))?;
        if rest.contains(['?', '#', '@']) {
            return Err(bad("queries, fragments and credentials are not supported"));
        }
        let (hosts, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let mut endpoints = Vec::new();
        for host in hosts.split(',').map(str::trim) {
            endpoints.push(format!(
                "http://{}",
                host_with_port(host).map_err(|why| bad(&why))?
            ));
        }
        if path.contains(char::is_whitespace) {
            return Err(bad("the key prefix must not contain white space"));
        }
        let prefix = if path.is_empty() || path == "/" {
            DEFAULT_PREFIX.to_string()
        } else {
            with_trailing_slash(path)
        };
        Ok(Self {
            prefix,
            ..Self::new(endpoints)
        })
    }

    /// The configuration checked, with the prefix normalised.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) fn checked(&self) -> Result<Self, DiscoveryError> {
        let bad = |why: String| DiscoveryError::Config(format!("etcd: {why}"));
        if self.endpoints.is_empty() {
            return Err(bad("no etcd endpoint given".into()));
        }
        for endpoint in &self.endpoints {
            if !endpoint.starts_with("http://") || endpoint.len() <= "http://".len() {
                return Err(bad(format!(
                    "endpoint `{endpoint}` is not an http://host:port URL (TLS is not built in)"
                )));
            }
        }
        if self.prefix.is_empty() {
            return Err(bad("the key prefix must not be empty".into()));
        }
        if self.connect_timeout.is_zero() {
            return Err(bad("connect_timeout must be positive".into()));
        }
        Ok(Self {
            prefix: with_trailing_slash(&self.prefix),
            ..self.clone()
        })
    }

    /// The members, for messages.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) fn members(&self) -> String {
        self.endpoints.join(",")
    }
}

fn with_trailing_slash(prefix: &str) -> String {
    if prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    }
}

/// `host[:port]` or `[v6][:port]` checked, with the port filled in.
fn host_with_port(host: &str) -> Result<String, String> {
    if host.is_empty() {
        return Err("empty host".into());
    }
    let parse_port = |port: &str| match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("bad port `{port}` in `{host}`")),
    };
    if let Some(rest) = host.strip_prefix('[') {
        let (address, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("unclosed `[` in `{host}`"))?;
        address
            .parse::<Ipv6Addr>()
            .map_err(|_| format!("`{address}` is not an IPv6 address"))?;
        let port = match after {
            "" => DEFAULT_PORT,
            _ => parse_port(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| format!("junk after `]` in `{host}`"))?,
            )?,
        };
        return Ok(format!("[{address}]:{port}"));
    }
    let (name, port) = match host.split_once(':') {
        Some((_, port)) if port.contains(':') => {
            return Err(format!("put the IPv6 address `{host}` in brackets"));
        }
        Some((name, port)) => (name, parse_port(port)?),
        None => (host, DEFAULT_PORT),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(format!("bad host name `{name}`"));
    }
    Ok(format!("{name}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_checks() {
        let ok = EtcdConfig {
            prefix: "/x".into(),
            ..EtcdConfig::default()
        }
        .checked();
        assert_eq!(ok.map(|c| c.prefix), Ok("/x/".to_string()));
        assert!(EtcdConfig::new(Vec::<String>::new()).checked().is_err());
        assert!(EtcdConfig::new(["127.0.0.1:2379"]).checked().is_err());
        assert!(
            EtcdConfig {
                prefix: String::new(),
                ..EtcdConfig::default()
            }
            .checked()
            .is_err()
        );
        assert!(
            EtcdConfig {
                connect_timeout: Duration::ZERO,
                ..EtcdConfig::default()
            }
            .checked()
            .is_err()
        );
    }
}
