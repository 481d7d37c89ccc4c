//! The bounds flags of `cortex serve` and `cortex up`: what one client may
//! hold of a service (see `cortex_service::HttpLimits`), and the
//! open-file limit the connection cap has to fit in.

use std::time::Duration;

use clap::Args;
use cortex_service::{HttpLimits, McpConfig, ServiceConfig};

/// Bounds on every service this command runs.
#[derive(Debug, Args)]
#[command(next_help_heading = "Bounds (what one client may hold)")]
pub(crate) struct LimitArgs {
    /// Seconds a client has to send a request's head (request line and
    /// headers), from the first byte, or from connecting for its first
    /// request; a slower one is disconnected.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) header_timeout_secs: u64,
    /// Seconds a client has to send a request's whole body; a slower one
    /// gets 400 and is disconnected.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) body_timeout_secs: u64,
    /// Seconds a kept-alive connection may wait for its next request (and a
    /// response may wait for a client that stopped reading) before it is
    /// closed.
    #[arg(long, value_name = "SECS", default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) idle_timeout_secs: u64,
    /// Connections open at once, per service. At the cap a new connection
    /// closes the ones idle longest; if all are busy, a few more are let in
    /// for GET /health only. Lowered to fit the open-file limit.
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_connections: u64,
    /// Requests handled at once, per service; more get 503 with
    /// Retry-After (GET /health is not counted).
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_requests: u64,
    /// Streams open at once, per service (SSE reads, MCP streams and
    /// subscriptions); more get 503.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_streams: u64,
    /// Seconds an MCP session may stay unused (with no open stream) before
    /// it ends; its client then gets 404 and initializes again.
    #[arg(long, value_name = "SECS", default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) mcp_session_ttl_secs: u64,
    /// MCP sessions one client (a token's user, else an IP address) may
    /// hold; one more ends its least recently used.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) mcp_sessions_per_client: u64,
    /// A host name clients may use in the Host header besides localhost,
    /// loopback and the bound address (repeat, or comma-separate in the
    /// variable); `*` allows any. Others get 403: a web page that points its
    /// own DNS name at this address cannot reach the service.
    #[arg(
        long = "allowed-host",
        env = "CORTEX_ALLOWED_HOSTS",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub(crate) allowed_hosts: Vec<String>,
    /// A browser origin (`scheme://host[:port]`) whose pages may call the
    /// services, besides loopback ones (repeat, or comma-separate in the
    /// variable); `*` allows any. Requests from other origins get 403, so
    /// no web page can write through a visitor's browser.
    #[arg(
        long = "allowed-origin",
        env = "CORTEX_ALLOWED_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub(crate) allowed_origins: Vec<String>,
}

fn count(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

impl LimitArgs {
    /// `config` with these bounds. `host` is the address the services
    /// listen on: when it is a name, clients use it, so it is allowed.
    pub(crate) fn apply(&self, config: ServiceConfig, host: &str) -> ServiceConfig {
        let mut allowed_hosts: Vec<String> = self
            .allowed_hosts
            .iter()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .collect();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<std::net::IpAddr>().is_err() && !bare.eq_ignore_ascii_case("localhost") {
            allowed_hosts.push(bare.to_string());
        }
        ServiceConfig {
            limits: HttpLimits {
                header_timeout: Duration::from_secs(self.header_timeout_secs),
                body_timeout: Duration::from_secs(self.body_timeout_secs),
                idle_timeout: Duration::from_secs(self.idle_timeout_secs),
                max_connections: count(self.max_connections),
                max_requests: count(self.max_requests),
                max_streams: count(self.max_streams),
                allowed_hosts,
                ..config.limits
            },
            mcp: McpConfig {
                session_ttl: Duration::from_secs(self.mcp_session_ttl_secs),
                max_sessions_per_client: count(self.mcp_sessions_per_client),
                allowed_origins: self
                    .allowed_origins
                    .iter()
                    .map(|o| o.trim().to_string())
                    .filter(|o| !o.is_empty())
                    .collect(),
                ..config.mcp
            },
            ..config
        }
    }
}

/// Raises this process's soft open-file limit to its hard one, as a server
/// should: the soft limit is often 1024, which a few hundred idle clients
/// exhaust, while the hard one is usually far higher. Returns the soft
/// limit in force afterwards, when the platform tells.
pub(crate) fn raise_open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current != limit.maximum {
            let raised = Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            };
            if let Err(error) = setrlimit(Resource::Nofile, raised) {
                tracing::debug!(%error, "could not raise the open-file limit");
            }
        }
        getrlimit(Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Descriptors left to everything but the services' connections: the
/// database, outgoing connections, the runtime.
const SPARE_FILES: u64 = 256;

/// The connection cap of each of `services` services sharing this
/// process's `files` descriptors, at most `wanted` (each service fits its
/// own cap to the whole limit; sharing it is the caller's to divide).
pub(crate) fn share_connections(
    wanted: usize,
    health: usize,
    services: u64,
    files: Option<u64>,
) -> usize {
    let Some(files) = files else { return wanted };
    let each = files.saturating_sub(SPARE_FILES) / services.max(1);
    let room = usize::try_from(each)
        .unwrap_or(usize::MAX)
        .saturating_sub(health)
        .max(1);
    wanted.min(room)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_name_to_listen_on_is_allowed_in_host() {
        let args = LimitArgs {
            header_timeout_secs: 5,
            body_timeout_secs: 6,
            idle_timeout_secs: 7,
            max_connections: 8,
            max_requests: 9,
            max_streams: 10,
            mcp_session_ttl_secs: 11,
            mcp_sessions_per_client: 12,
            allowed_hosts: vec!["memory.internal".into(), " ".into()],
            allowed_origins: vec!["https://app.example".into()],
        };
        let config = args.apply(ServiceConfig::default(), "cortex.lan");
        assert_eq!(
            config.limits.allowed_hosts,
            ["memory.internal", "cortex.lan"]
        );
        assert_eq!(config.limits.header_timeout, Duration::from_secs(5));
        assert_eq!(config.limits.max_streams, 10);
        assert_eq!(config.mcp.max_sessions_per_client, 12);
        assert_eq!(config.mcp.allowed_origins, ["https://app.example"]);
        for address in ["127.0.0.1", "0.0.0.0", "[::1]", "::", "localhost"] {
            let config = args.apply(ServiceConfig::default(), address);
            assert_eq!(
                config.limits.allowed_hosts,
                ["memory.internal"],
                "{address}"
            );
        }
    }

    #[test]
    fn two_services_share_the_open_file_limit() {
        assert_eq!(
            share_connections(4096, 16, 2, Some(1024)),
            (1024 - 256) / 2 - 16
        );
        assert_eq!(share_connections(4096, 16, 2, Some(1 << 20)), 4096);
        assert_eq!(share_connections(4096, 16, 1, None), 4096);
    }
}
