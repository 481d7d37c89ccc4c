//! Discovery's errors as [`McpError`]s, so one `?` serves a function that
//! builds its discovery backend and then calls services.
//!
//! Here rather than in the contract crate: discovery knows the client's
//! error type, not the other way round, so the contract stays free of DNS
//! and etcd.

use cortex_mcp_api::{Cause, ConfigError, McpError};

use crate::{DiscoveryError, DiscoverySpecError};

/// The option that a discovery configuration error is about.
const DISCOVERY_OPTION: &str = "discovery";

/// Discovery's errors as client errors, for `?` in code that builds a
/// backend ([`DiscoverySpec::build`](crate::DiscoverySpec::build))
/// and then calls services:
///
/// | [`DiscoveryError`] | [`McpError`] |
/// |---|---|
/// | `Unknown` | [`ServiceNotFound`](McpError::ServiceNotFound) |
/// | `Backend` (etcd down, ...), or a kind added later that is not configuration | [`Discovery`](McpError::Discovery), retryable, with the discovery error as its source |
/// | `NotReady` | [`Timeout`](McpError::Timeout) of `wait_for_services`, retryable |
/// | `Config`, `NotBuiltIn` | [`Config`](McpError::Config): [`ConfigError::Invalid`] of the `discovery` option |
///
/// The message of the discovery error is kept whole in the result's.
impl From<DiscoveryError> for McpError {
    fn from(error: DiscoveryError) -> Self {
        let message = error.to_string();
        match error {
            DiscoveryError::Unknown(service) => Self::ServiceNotFound {
                service,
                reason: message,
            },
            DiscoveryError::Backend { ref service, .. } => Self::Discovery {
                service: service.clone(),
                reason: message,
                cause: Some(Cause::new(error)),
            },
            DiscoveryError::NotReady { missing, waited } => Self::Timeout {
                service: missing.join(", "),
                operation: "wait_for_services".into(),
                elapsed: waited,
                attempts: 1,
            },
            DiscoveryError::Config(reason) => Self::Config(ConfigError::Invalid {
                option: DISCOVERY_OPTION.into(),
                reason,
            }),
            // "etcd discovery is not built into this program; build it with
            // the cargo feature `etcd` …": what the caller configured.
            DiscoveryError::NotBuiltIn { .. } => Self::Config(ConfigError::Invalid {
                option: DISCOVERY_OPTION.into(),
                reason: message,
            }),
            // Kinds of failure added to discovery later.
            other if other.is_config() => Self::Config(ConfigError::Invalid {
                option: DISCOVERY_OPTION.into(),
                reason: message,
            }),
            other => Self::Discovery {
                service: DISCOVERY_OPTION.into(),
                reason: message,
                cause: Some(Cause::new(other)),
            },
        }
    }
}

/// A discovery spec that does not parse (`"consul://x".parse()?`) is an
/// invalid `discovery` option: [`McpError::Config`].
impl From<DiscoverySpecError> for McpError {
    fn from(error: DiscoverySpecError) -> Self {
        Self::Config(ConfigError::Invalid {
            option: DISCOVERY_OPTION.into(),
            reason: error.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::time::Duration;

    use crate::{DiscoveryError, DiscoverySpec};

    use cortex_mcp_api::{ConfigError, McpError};

    #[test]
    fn discovery_errors_become_client_errors_with_their_message() {
        let unknown: McpError = DiscoveryError::Unknown("search".into()).into();
        assert!(
            matches!(&unknown, McpError::ServiceNotFound { service, .. } if service == "search"),
            "{unknown:?}"
        );
        assert_eq!(
            unknown.to_string(),
            "service `search` not found: no service named `search` is registered"
        );
        assert!(!unknown.is_retryable());

        let down: McpError = DiscoveryError::Backend {
            service: "memory".into(),
            reason: "etcd at 127.0.0.1:2379: connection refused".into(),
        }
        .into();
        assert!(
            matches!(&down, McpError::Discovery { service, reason, .. }
                if service == "memory" && reason.contains("connection refused")),
            "{down:?}"
        );
        assert!(down.is_discovery() && down.source().is_some());
        assert!(down.is_retryable());

        let late: McpError = DiscoveryError::NotReady {
            missing: vec!["memory".into(), "cognition".into()],
            waited: Duration::from_secs(2),
        }
        .into();
        assert!(
            matches!(&late, McpError::Timeout { service, elapsed, .. }
                if service == "memory, cognition" && *elapsed == Duration::from_secs(2)),
            "{late:?}"
        );
        assert!(late.is_retryable());

        let bad: McpError = DiscoveryError::Config("etcd URL `etcd://`: no host".into()).into();
        assert!(
            matches!(&bad, McpError::Config(ConfigError::Invalid { option, reason })
                if option == "discovery" && reason == "etcd URL `etcd://`: no host"),
            "{bad:?}"
        );

        let missing: McpError = DiscoveryError::NotBuiltIn {
            what: "etcd discovery".into(),
            feature: "etcd",
        }
        .into();
        assert!(
            matches!(&missing, McpError::Config(ConfigError::Invalid { option, reason })
                if option == "discovery" && reason.contains("cargo feature `etcd`")),
            "{missing:?}"
        );
        assert!(!missing.is_retryable());
    }

    #[test]
    fn a_spec_that_does_not_parse_is_a_config_error() {
        let error: McpError = "consul://x"
            .parse::<DiscoverySpec>()
            .expect_err("not a spec")
            .into();
        assert!(
            matches!(&error, McpError::Config(ConfigError::Invalid { option, reason })
                if option == "discovery" && reason.contains("consul://x")),
            "{error:?}"
        );
    }
}
