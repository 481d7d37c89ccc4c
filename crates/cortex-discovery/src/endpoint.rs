//! Endpoints and versioned endpoint sets.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which protocol an endpoint speaks.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// The Cortex HTTP dialect (`POST /tool/...`).
    #[default]
    Cortex,
    /// Standard MCP (Streamable HTTP).
    Mcp,
    /// Find out by asking.
    Auto,
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cortex" => Ok(Self::Cortex),
            "mcp" => Ok(Self::Mcp),
            "auto" => Ok(Self::Auto),
            other => Err(format!(
                "unknown protocol `{other}` (expected cortex, mcp or auto)"
            )),
        }
    }
}

/// One place a service answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    /// Base URL, such as `http://127.0.0.1:9000` (no trailing slash).
    pub url: String,
    /// The protocol it speaks.
    #[serde(default)]
    pub protocol: Protocol,
    /// Relative weight for balancing (DNS SRV weight); at least 1.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

impl Endpoint {
    /// A Cortex-dialect endpoint at `url` (a trailing `/` is dropped).
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        Self {
            url: url.trim_end_matches('/').to_string(),
            protocol: Protocol::Cortex,
            weight: 1,
        }
    }

    /// The same endpoint speaking `protocol`.
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// `host:port` of the URL, for dialling; `None` when the URL is not
    /// `http://host[:port][/...]`.
    pub fn authority(&self) -> Option<String> {
        let rest = self.url.strip_prefix("http://")?;
        let authority = rest.split('/').next().filter(|a| !a.is_empty())?;
        if authority.contains('@') {
            return None;
        }
        let has_port = match authority.rfind(':') {
            Some(i) => !authority[i..].contains(']'),
            None => false,
        };
        Some(if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        })
    }

    /// Path prefix of the URL (empty or starting with `/`).
    pub fn base_path(&self) -> &str {
        let rest = self.url.strip_prefix("http://").unwrap_or(&self.url);
        rest.find('/').map(|i| &rest[i..]).unwrap_or("")
    }

    /// Checks that the URL can be dialled.
    pub fn validate(&self) -> Result<(), String> {
        self.authority()
            .map(|_| ())
            .ok_or_else(|| format!("endpoint `{}` is not an http://host:port URL", self.url))
    }
}

/// The endpoints of one service at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointSet {
    /// Grows by one on every change of `endpoints`.
    pub version: u64,
    /// The endpoints, sorted by URL; may be empty.
    pub endpoints: Vec<Endpoint>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_and_base_path() {
        let e = Endpoint::new("http://127.0.0.1:9000/");
        assert_eq!(e.authority().as_deref(), Some("127.0.0.1:9000"));
        assert_eq!(e.base_path(), "");
        let e = Endpoint::new("http://memory/api");
        assert_eq!(e.authority().as_deref(), Some("memory:80"));
        assert_eq!(e.base_path(), "/api");
        assert_eq!(Endpoint::new("https://x:1").authority(), None);
        assert!(Endpoint::new("ftp://x").validate().is_err());
        assert_eq!(
            Endpoint::new("http://[::1]:9000").authority().as_deref(),
            Some("[::1]:9000")
        );
        assert_eq!(
            Endpoint::new("http://[::1]").authority().as_deref(),
            Some("[::1]:80")
        );
        assert_eq!("MCP".parse::<Protocol>(), Ok(Protocol::Mcp));
        assert!("grpc".parse::<Protocol>().is_err());
    }
}
