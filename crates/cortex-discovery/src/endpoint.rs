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

/// The schemes an endpoint URL may have.
#[derive(Clone, Copy)]
enum Scheme {
    Http,
    Https,
}

/// One place a service answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    /// Base URL, such as `http://127.0.0.1:9000` or
    /// `https://memory.internal` (no trailing slash).
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

    /// The scheme (`http` or `https`, in any case) and what follows its
    /// `://`; `None` for any other scheme.
    fn split_scheme(&self) -> Option<(Scheme, &str)> {
        let (scheme, rest) = self.url.split_once("://")?;
        if scheme.eq_ignore_ascii_case("http") {
            Some((Scheme::Http, rest))
        } else if scheme.eq_ignore_ascii_case("https") {
            Some((Scheme::Https, rest))
        } else {
            None
        }
    }

    /// Whether the URL is `https://`: the client speaks TLS to it.
    pub fn is_tls(&self) -> bool {
        matches!(self.split_scheme(), Some((Scheme::Https, _)))
    }

    /// `host:port` of the URL, for dialling (port 80 for `http://`, 443 for
    /// `https://` when the URL has none); `None` when the URL is not
    /// `http[s]://host[:port][/...]`.
    pub fn authority(&self) -> Option<String> {
        let (scheme, rest) = self.split_scheme()?;
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
            let port = match scheme {
                Scheme::Http => 80,
                Scheme::Https => 443,
            };
            format!("{authority}:{port}")
        })
    }

    /// The host of the URL without port or IPv6 brackets (`127.0.0.1`,
    /// `::1`, `memory.internal`): the name a TLS certificate must be valid
    /// for. `None` when [`Endpoint::authority`] is.
    pub fn host(&self) -> Option<&str> {
        let (_, rest) = self.split_scheme()?;
        let authority = rest.split('/').next().filter(|a| !a.is_empty())?;
        if authority.contains('@') {
            return None;
        }
        if let Some(bracketed) = authority.strip_prefix('[') {
            return bracketed.split_once(']').map(|(host, _)| host);
        }
        let host = authority.split(':').next().unwrap_or_default();
        (!host.is_empty()).then_some(host)
    }

    /// Path prefix of the URL (empty or starting with `/`).
    pub fn base_path(&self) -> &str {
        let rest = self
            .split_scheme()
            .map_or(self.url.as_str(), |(_, rest)| rest);
        rest.find('/').map(|i| &rest[i..]).unwrap_or("")
    }

    /// Parses a URL as people write it in `NAME_SERVICE_URL`, `--service`
    /// or `--url`: `http[s]://host[:port][/path]`, optionally naming its
    /// protocol in the scheme (`mcp+http://`, `cortex+https://`,
    /// `auto+http://`). Without one the protocol is `None`, for the caller's
    /// default. The error says what is wrong and how to write it instead.
    pub fn parse(raw: &str) -> Result<(Self, Option<Protocol>), String> {
        let raw = raw.trim();
        let (protocol, url) = match raw.split_once("+http") {
            Some((name, rest)) if !name.contains(':') && !name.contains('/') => {
                let protocol = name.parse::<Protocol>().map_err(|_| {
                    format!("unknown protocol `{name}` in `{raw}` (write cortex+http://, mcp+http:// or auto+http://, or the same with https)")
                })?;
                (Some(protocol), format!("http{rest}"))
            }
            _ => (None, raw.to_string()),
        };
        // Before `new` drops trailing slashes: `http://` alone has no host.
        if url
            .split_once("://")
            .is_some_and(|(_, rest)| rest.trim_matches('/').is_empty())
        {
            return Err(format!("`{raw}` has no host"));
        }
        let endpoint = Self::new(url).with_protocol(protocol.unwrap_or_default());
        endpoint.validate()?;
        Ok((endpoint, protocol))
    }

    /// Checks that the URL can be dialled: `http://` or `https://`, a host,
    /// a port in range, no credentials, query or fragment, and for the
    /// Cortex dialect no path that is one of the service's own routes (a
    /// sign the URL of a route was given instead of the service's base URL).
    pub fn validate(&self) -> Result<(), String> {
        let url = &self.url;
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(format!("`{url}` has no scheme; write it as http://{url}"));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "http" | "https" => {}
            other => {
                return Err(format!(
                    "`{url}`: unsupported scheme `{other}` (only http:// and https:// are supported)"
                ));
            }
        }
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        if authority.contains('@') {
            return Err(format!(
                "`{url}`: credentials in the URL are not supported (pass a token instead)"
            ));
        }
        if rest.contains(['?', '#']) {
            return Err(format!(
                "`{url}`: a query or fragment where none is allowed"
            ));
        }
        let host_end = if authority.starts_with('[') {
            authority
                .find(']')
                .map(|i| i + 1)
                .ok_or_else(|| format!("`{url}`: unclosed `[` around an IPv6 address"))?
        } else {
            authority.find(':').unwrap_or(authority.len())
        };
        if host_end == 0 {
            return Err(format!("`{url}` has no host"));
        }
        if let Some(port) = authority[host_end..].strip_prefix(':') {
            match port.parse::<u16>() {
                Ok(p) if p > 0 => {}
                _ => return Err(format!("`{url}`: bad port `{port}` (1 to 65535)")),
            }
        } else if host_end != authority.len() {
            return Err(format!("`{url}`: junk after the host"));
        }
        if self.protocol == Protocol::Cortex {
            let path = self.base_path();
            let last = path.rsplit('/').next().unwrap_or_default();
            let routes = ["/tool/", "/resource/"];
            if matches!(last, "health" | "tools" | "resources")
                || routes.iter().any(|r| path.contains(r))
            {
                let base = &url[..url.len() - path.len()];
                return Err(format!(
                    "`{url}`: a path where none is allowed (`{path}` is a route of the service); give the service's base URL, such as {base}"
                ));
            }
        }
        self.authority()
            .map(|_| ())
            .ok_or_else(|| format!("`{url}` is not an http[s]://host:port URL"))
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
        assert!(Endpoint::new("ftp://x").validate().is_err());
        assert_eq!(Endpoint::new("ftp://x:1").authority(), None);
        assert_eq!(
            Endpoint::new("http://[::1]:9000").authority().as_deref(),
            Some("[::1]:9000")
        );
        assert_eq!(
            Endpoint::new("http://[::1]").authority().as_deref(),
            Some("[::1]:80")
        );
        assert_eq!("MCP".parse::<Protocol>(), Ok(Protocol::Mcp));
        assert_eq!(Endpoint::new("http://[::1]:9000").host(), Some("::1"));
        assert_eq!(Endpoint::new("http://memory/api").host(), Some("memory"));
        assert!(!Endpoint::new("http://memory").is_tls());
    }

    #[test]
    fn https_endpoints_default_to_port_443_and_name_their_host() {
        let e = Endpoint::new("https://memory.internal/api/");
        assert!(e.is_tls());
        assert_eq!(e.authority().as_deref(), Some("memory.internal:443"));
        assert_eq!(e.host(), Some("memory.internal"));
        assert_eq!(e.base_path(), "/api");
        let e = Endpoint::new("HTTPS://127.0.0.1:9443");
        assert!(e.is_tls());
        assert_eq!(e.authority().as_deref(), Some("127.0.0.1:9443"));
        assert_eq!(e.host(), Some("127.0.0.1"));
        assert_eq!(e.base_path(), "");
        let e = Endpoint::new("https://[::1]");
        assert_eq!(e.authority().as_deref(), Some("[::1]:443"));
        assert_eq!(e.host(), Some("::1"));
        assert_eq!(Endpoint::new("https://u:p@h:1").host(), None);
    }

    #[test]
    fn parse_names_the_protocol_and_each_mistake() {
        let (e, p) =
            Endpoint::parse("mcp+http://127.0.0.1:3001/mcp").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (e.url.as_str(), e.protocol, p),
            (
                "http://127.0.0.1:3001/mcp",
                Protocol::Mcp,
                Some(Protocol::Mcp)
            )
        );
        let (e, p) = Endpoint::parse(" http://h:1/ ").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((e.url.as_str(), p), ("http://h:1", None));
        assert_eq!(
            Endpoint::parse("auto+http://h").map(|(e, _)| e.protocol),
            Ok(Protocol::Auto)
        );
        let (e, p) = Endpoint::parse("mcp+https://h:8443/mcp").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (e.url.as_str(), e.protocol, p),
            ("https://h:8443/mcp", Protocol::Mcp, Some(Protocol::Mcp))
        );
        let (e, p) = Endpoint::parse("https://h").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((e.url.as_str(), p, e.is_tls()), ("https://h", None, true));
        for (bad, says) in [
            ("localhost:9000", "no scheme"),
            ("ftp://h", "unsupported scheme"),
            ("https://", "no host"),
            ("https://h:0", "bad port"),
            ("https://u:p@h:1", "credentials"),
            (
                "https://h:1/tool/store_input",
                "a path where none is allowed",
            ),
            ("http://h:99999", "bad port"),
            ("http://h:0", "bad port"),
            ("http://h:x", "bad port"),
            ("http://", "no host"),
            ("http://:80", "no host"),
            ("http://u:p@h:1", "credentials"),
            ("http://h:1/?a=b", "query or fragment"),
            ("http://h:1/health", "a path where none is allowed"),
            (
                "http://h:1/tool/store_input",
                "a path where none is allowed",
            ),
            ("grpc+http://h:1", "unknown protocol"),
        ] {
            let error = Endpoint::parse(bad).map(|_| ()).expect_err(bad);
            assert!(error.contains(says), "{bad}: {error}");
        }
        // A route-like path is fine where the dialect is MCP.
        assert!(Endpoint::parse("mcp+http://h:1/tools").is_ok());
        assert!("grpc".parse::<Protocol>().is_err());
    }
}
