//! HTTP proxies: which targets go through one, how, and what a proxy's
//! failures become.
//!
//! # Choosing the proxy
//! Two options of [`ClientConfig`](crate::ClientConfig):
//! [`proxy`](crate::ClientConfig::proxy) ([`Proxy`]: `env`, `none` or a
//! URL) and [`no_proxy`](crate::ClientConfig::no_proxy) ([`NoProxy`]:
//! targets reached directly), plus
//! [`proxy_tunnel`](crate::ClientConfig::proxy_tunnel). As in curl,
//! each falls back to the standard variables when the configuration does not
//! set it, and an empty `no_proxy` takes `NO_PROXY` (else `no_proxy`).
//! `proxy = "env"` (the default) takes a proxy per target scheme:
//!
//! | targets | variables, first set wins |
//! |---|---|
//! | `http://` | `HTTP_PROXY`, `http_proxy`, `ALL_PROXY`, `all_proxy` |
//! | `https://` | `HTTPS_PROXY`, `https_proxy`, `ALL_PROXY`, `all_proxy` |
//!
//! So `HTTP_PROXY` alone leaves `https://` targets direct, and `ALL_PROXY`
//! serves both. A proxy named in the configuration (`proxy`, or
//! `CORTEX_CLIENT_PROXY`) serves every scheme, as curl's `--proxy` does.
//! Upper case first, as hyper-util and reqwest read them (curl reads
//! `http_proxy` only, and the lower-case forms first): where both forms are
//! set they normally agree, and an empty one counts as unset.
//!
//! The variables are read by
//! [`ClientConfig::with_env`](crate::ClientConfig::with_env) and
//! [`ClientConfig::from_env`](crate::ClientConfig::from_env), like the
//! `CORTEX_CLIENT_*` ones, and never behind the caller's back: a
//! configuration built in code uses a proxy only when it names one. When
//! the process runs as a CGI script (`REQUEST_METHOD` is set), the
//! variables are ignored, as hyper-util and curl do: there `HTTP_PROXY` may
//! come from a request's `Proxy:` header ("httpoxy").
//!
//! Which targets skip the proxy follows curl's `NO_PROXY` rules, applied by
//! hyper-util's [`Matcher`]: comma-separated entries; `*` matches every
//! host; an IP address or CIDR block matches addresses; any other entry is
//! a domain matching itself and its subdomains (`example.com` and
//! `.example.com` alike). Ports are not compared.
//!
//! # How a target is reached
//! - **Forwarding** (the default): each request goes to the proxy in
//!   absolute form (`GET http://host:port/tool/x HTTP/1.1`), with
//!   `Proxy-Authorization: Basic …` when the proxy URL has a user. A
//!   connection is reused only when the proxy says `keep-alive` (many close
//!   after each answer without saying so).
//! - **Tunnelling** (`proxy_tunnel = true`, curl's `--proxytunnel`): each
//!   connection opens with `CONNECT host:port` (with the same credentials),
//!   and HTTP/1.1 then runs end to end through the tunnel. For proxies that
//!   only tunnel, and for long streams a forwarding proxy would buffer or
//!   cut. `https://` targets are always tunnelled this way, whatever
//!   `proxy_tunnel` says, with TLS inside the tunnel ([`crate::tls`]): a
//!   forwarded request would hand the proxy the plaintext.
//!
//! Either way a connection through the proxy belongs to the pool of one
//! target: pools and circuit breakers stay per target endpoint, so two
//! targets behind one proxy keep their own caps and breakers.
//!
//! # Failures
//! A proxy's failure is an [`McpError::Connection`](crate::McpError) with
//! nothing sent (`is_connect()`), whose source is a [`ProxyError`] saying
//! which proxy and what it did ([`ProxyError::find`] gets it from any
//! error). A proxy that cannot be reached, or that cannot reach the target
//! (a `5xx` to `CONNECT`), counts against the target's breaker, as a
//! target that cannot be reached would; a proxy that refuses (`407`, a
//! `4xx` to `CONNECT`) does not, so that its message is not replaced by
//! "circuit open" after a few calls.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, PROXY_AUTHORIZATION};
use http::uri::Authority;
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;

// Not through `crate::config`, which builds on this module.
use cortex_mcp_api::ConfigError;

/// The `proxy` option: where targets' requests go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Proxy {
    /// `env`: the proxies the standard variables name (see [the module
    /// docs](self)), read by
    /// [`ClientConfig::with_env`](crate::ClientConfig::with_env), which
    /// turns it into [`Proxy::Url`] or [`Proxy::PerScheme`]; none when they
    /// name none, or when the configuration was not read with them.
    #[default]
    Env,
    /// `none` (or `""`): no proxy, whatever the variables say.
    Off,
    /// This proxy for every target that `no_proxy` does not exclude.
    Url(ProxyUrl),
    /// What `env` became when the standard variables name different
    /// proxies for `http://` and `https://` targets (or one for a scheme
    /// and none for the other). Made by
    /// [`ClientConfig::with_env`](crate::ClientConfig::with_env) only, and
    /// written back as `env`.
    PerScheme {
        /// The proxy of `http://` targets; `None`: reached directly.
        http: Option<ProxyUrl>,
        /// The proxy of `https://` targets; `None`: reached directly.
        https: Option<ProxyUrl>,
    },
}

impl Proxy {
    /// Reads `env`, `none`, `""` or a proxy URL (see [`ProxyUrl::parse`]);
    /// the error says what is wrong, for the caller to name the option.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        // Keywords in any case: `None` is no host anyone means.
        match text.to_ascii_lowercase().as_str() {
            "env" => Ok(Self::Env),
            "" | "none" => Ok(Self::Off),
            _ => ProxyUrl::parse(text).map(Self::Url),
        }
    }

    /// The text [`Proxy::parse`] reads back: credentials included, so it is
    /// for serializing, not for messages (use `Display`). What the
    /// variables named is written as `env`, where it came from.
    pub(crate) fn to_text(&self) -> String {
        match self {
            Self::Env | Self::PerScheme { .. } => "env".to_owned(),
            Self::Off => "none".to_owned(),
            Self::Url(url) => url.raw.clone(),
        }
    }
}

impl std::str::FromStr for Proxy {
    type Err = ConfigError;

    /// `env`, `none` (or `""`) or `http://[USER:PASSWORD@]HOST[:PORT]`; an
    /// error names the option `proxy`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text).map_err(|reason| ConfigError::invalid("proxy", reason))
    }
}

/// Shows the proxy without its password.
impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env => f.write_str("env"),
            Self::Off => f.write_str("none"),
            Self::Url(url) => std::fmt::Display::fmt(url, f),
            Self::PerScheme { http, https } => {
                let shown = |url: &Option<ProxyUrl>| {
                    url.as_ref()
                        .map_or_else(|| "none".to_owned(), ToString::to_string)
                };
                write!(f, "http: {}, https: {}", shown(http), shown(https))
            }
        }
    }
}

/// A checked HTTP proxy URL, `http://[USER:PASSWORD@]HOST[:PORT]`. Shown
/// (`Display`, `Debug`) without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// As given, with `http://` added when it had no scheme: what the
    /// matcher reads (credentials included).
    raw: String,
    /// `raw` with the password replaced by `***`.
    shown: String,
}

impl ProxyUrl {
    /// Checks a proxy URL: scheme `http://` (or none, meaning it), a host,
    /// an optional port (80 when absent, as for any `http://` URL), an
    /// optional `USER[:PASSWORD]@` (percent-encoded, as in any URL), and no
    /// path, query or fragment. An `https://` proxy (TLS to the proxy) and
    /// SOCKS proxies are refused, saying so. The error shows the value
    /// without its password.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let raw = if text.contains("://") {
            text.to_owned()
        } else {
            format!("http://{text}")
        };
        let shown = redact(&raw);
        let usage = "write it as http://[USER:PASSWORD@]HOST:PORT";
        let uri: Uri = raw
            .parse()
            .map_err(|e| format!("`{shown}` is not a URL ({e}); {usage}"))?;
        match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "`{shown}`: a proxy reached over TLS (https://) is not supported; {usage}"
                ));
            }
            Some(socks) if socks.starts_with("socks") => {
                return Err(format!(
                    "`{shown}`: SOCKS proxies are not supported, only HTTP proxies; {usage}"
                ));
            }
            other => {
                return Err(format!(
                    "`{shown}`: unsupported proxy scheme `{}`; {usage}",
                    other.unwrap_or_default()
                ));
            }
        }
        let Some(authority) = uri.authority() else {
            return Err(format!("`{shown}` has no host; {usage}"));
        };
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("`{shown}` has no host; {usage}"));
        }
        if authority.as_str().matches('@').count() > 1 {
            return Err(format!(
                "`{shown}`: more than one `@`; write an `@` in the user or password as %40"
            ));
        }
        // `Uri` takes any digits as a port, and `port_u16` then gives none:
        // read the port text here rather than fall back to 80 unnoticed.
        let host_port = authority
            .as_str()
            .rsplit_once('@')
            .map_or(authority.as_str(), |(_, host_port)| host_port);
        let port = match host_port.rfind(':') {
            Some(i) if !host_port[i..].contains(']') => Some(&host_port[i + 1..]),
            _ => None,
        };
        if let Some(port) = port
            && !matches!(port.parse::<u16>(), Ok(1..))
        {
            return Err(format!("`{shown}`: bad port `{port}` (1 to 65535)"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() || raw.contains('#') {
            return Err(format!(
                "`{shown}`: a proxy URL has no path, query or fragment; {usage}"
            ));
        }
        // The matcher drops a value it cannot read without a word; make sure
        // it reads this one, so that what was accepted here is used.
        let probe = Uri::from_static("http://target.invalid/");
        if Matcher::builder()
            .http(raw.clone())
            .build()
            .intercept(&probe)
            .is_none()
        {
            return Err(format!("`{shown}` is not a usable proxy URL; {usage}"));
        }
        Ok(Self { raw, shown })
    }
}

impl std::fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ProxyUrl").field(&self.shown).finish()
    }
}

/// `url` with the password of its `user:password@` replaced by `***`, for
/// messages. Works on text that is not a valid URL too: everything before
/// the authority's last `@` is taken as the user information.
fn redact(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let Some(at) = url[start..end].rfind('@').map(|i| start + i) else {
        return url.to_owned();
    };
    match url[start..at].find(':').map(|i| start + i) {
        Some(colon) => format!("{}:***{}", &url[..colon], &url[at..]),
        None => url.to_owned(),
    }
}

/// The `no_proxy` option: targets reached directly, not through the proxy
/// (curl's `NO_PROXY` rules, see [the module docs](self)). Empty: the
/// `NO_PROXY` variable applies, when the configuration is read with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy(Vec<String>);

impl NoProxy {
    /// Checks a comma-separated list: each entry is `*`, an IP address
    /// (`[::1]` or `::1`), a CIDR block (`10.0.0.0/8`), or a host or domain
    /// name (`localhost`, `example.com`, `.example.com`). An entry the
    /// rules would never match (with a port, `*.example.com`, a URL) is
    /// refused, saying how to write it.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::from_entries(text.split(','))
    }

    /// [`NoProxy::parse`] of entries given one by one (a TOML array).
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut checked = Vec::new();
        for entry in entries.into_iter().map(str::trim).filter(|e| !e.is_empty()) {
            checked.push(check_entry(entry)?);
        }
        Ok(Self(checked))
    }

    /// The list of a standard `NO_PROXY` variable, taken as it is: it is
    /// shared with other programs, whose rules may differ, so an entry these
    /// rules cannot match is not an error; it just never matches.
    pub(crate) fn lenient(text: &str) -> Self {
        Self(
            text.split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    /// The entries, as checked.
    pub fn entries(&self) -> &[String] {
        &self.0
    }

    /// No entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Shows the entries comma-separated, as `NO_PROXY` is written.
impl std::fmt::Display for NoProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// One `no_proxy` entry, normalised (`[::1]` becomes `::1`, which is how
/// the matcher compares addresses).
fn check_entry(entry: &str) -> Result<String, String> {
    use std::net::IpAddr;

    if entry == "*" {
        return Ok(entry.to_owned());
    }
    let unbracketed = entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .unwrap_or(entry);
    if unbracketed.parse::<IpAddr>().is_ok() {
        return Ok(unbracketed.to_owned());
    }
    if let Some((address, bits)) = entry.split_once('/') {
        let max = match address.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => 32,
            Ok(IpAddr::V6(_)) => 128,
            Err(_) => {
                return Err(format!(
                    "`{entry}` is not a CIDR block such as 10.0.0.0/8 (and a URL is not an entry: write its host)"
                ));
            }
        };
        return match bits.parse::<u8>() {
            Ok(bits) if bits <= max => Ok(entry.to_owned()),
            _ => Err(format!(
                "`{entry}`: a prefix length of 0 to {max} after the `/`"
            )),
        };
    }
    if let Some(domain) = entry.strip_prefix("*.") {
        return Err(format!(
            "`{entry}`: write `{domain}`, which matches the domain and all its subdomains (`*` stands alone or not at all)"
        ));
    }
    if let Some((host, _port)) = entry.rsplit_once(':') {
        return Err(format!(
            "`{entry}`: ports are not compared; write the host alone, `{host}`"
        ));
    }
    let name = entry.strip_prefix('.').unwrap_or(entry);
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !valid {
        return Err(format!(
            "`{entry}` is not a host name, domain, IP address or CIDR block"
        ));
    }
    Ok(entry.to_owned())
}

/// The standard proxy variables among those
/// [`ClientConfig::with_env`](crate::ClientConfig::with_env) is
/// given. A pure reading: the caller passes the variables in.
#[derive(Debug, Default)]
pub(crate) struct StandardVars {
    found: BTreeMap<&'static str, String>,
}

/// The variables that name the proxy of `http://` targets, in the order
/// they are looked at (hyper-util's: the scheme's own, then the one for
/// all schemes; upper case first).
const HTTP_PROXY_VARS: [&str; 4] = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"];
/// The same for `https://` targets.
const HTTPS_PROXY_VARS: [&str; 4] = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"];
const NO_PROXY_VARS: [&str; 2] = ["NO_PROXY", "no_proxy"];
/// Set when running as a CGI script (see [the module docs](self)).
const CGI_VAR: &str = "REQUEST_METHOD";

impl StandardVars {
    /// Keeps `name = value` if it is one of the standard proxy variables.
    /// An empty value counts as unset, so that `HTTP_PROXY=` does not hide
    /// `http_proxy`.
    pub(crate) fn offer(&mut self, name: &str, value: &str) {
        let known = HTTP_PROXY_VARS
            .iter()
            .chain(&HTTPS_PROXY_VARS)
            .chain(&NO_PROXY_VARS)
            .chain([&CGI_VAR])
            .find(|known| **known == name);
        if let Some(known) = known
            && (!value.trim().is_empty() || *known == CGI_VAR)
        {
            self.found.insert(known, value.to_owned());
        }
    }

    /// What `proxy = "env"` becomes: one [`Proxy::Url`] when the variables
    /// name the same proxy for both schemes, [`Proxy::PerScheme`] when they
    /// differ, `None` when they name none (or under CGI). An unusable value
    /// is an error naming the variable and the value (without its
    /// password).
    pub(crate) fn proxy(&self) -> Result<Option<Proxy>, ConfigError> {
        if self.found.contains_key(CGI_VAR) {
            tracing::debug!("running as a CGI script: proxy variables ignored");
            return Ok(None);
        }
        let http = self.first_of(&HTTP_PROXY_VARS)?;
        let https = self.first_of(&HTTPS_PROXY_VARS)?;
        Ok(match (http, https) {
            (None, None) => None,
            (Some(http), Some(https)) if http == https => Some(Proxy::Url(http)),
            (http, https) => Some(Proxy::PerScheme { http, https }),
        })
    }

    /// The proxy named by the first of `names` that is set, checked.
    fn first_of(&self, names: &[&'static str]) -> Result<Option<ProxyUrl>, ConfigError> {
        let Some((name, value)) = names
            .iter()
            .find_map(|name| self.found.get(name).map(|value| (*name, value)))
        else {
            return Ok(None);
        };
        let url = ProxyUrl::parse(value).map_err(|reason| ConfigError::invalid(name, reason))?;
        tracing::debug!(variable = name, proxy = %url, "proxy from the environment");
        Ok(Some(url))
    }

    /// The `NO_PROXY` list, if set.
    pub(crate) fn no_proxy(&self) -> Option<NoProxy> {
        NO_PROXY_VARS
            .iter()
            .find_map(|name| self.found.get(name))
            .map(|value| NoProxy::lenient(value))
    }
}

/// How one target's connections are made.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Route {
    /// Straight to the target.
    Direct,
    /// To the proxy; requests in absolute form.
    Forward(Hop),
    /// To the proxy, then `CONNECT` to the target.
    Tunnel(Hop),
}

/// The proxy of a target.
#[derive(Clone, PartialEq)]
pub(crate) struct Hop {
    /// `host:port` of the proxy, to dial.
    pub(crate) dial: String,
    /// The proxy URL without its password, for messages.
    pub(crate) shown: String,
    /// `Proxy-Authorization` (`Basic …`), from the URL's user and password.
    pub(crate) auth: Option<HeaderValue>,
    /// The target's `host:port`, for the absolute-form URI and `CONNECT`.
    pub(crate) target: Authority,
    /// `target` as the `Host` header of `CONNECT`, made once.
    pub(crate) host: HeaderValue,
}

impl std::fmt::Debug for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `auth` holds the credentials: never shown.
        f.debug_struct("Hop")
            .field("proxy", &self.shown)
            .field("target", &self.target)
            .field("auth", &self.auth.is_some())
            .finish()
    }
}

impl Route {
    /// The route to the target at `authority` (`host:port`; `tls`: an
    /// `https://` target) under a service's effective `proxy`, `no_proxy`
    /// and `proxy_tunnel`. `proxy = "env"` at this point means the
    /// environment named no proxy (or was not read): direct.
    pub(crate) fn for_target(
        proxy: &Proxy,
        no_proxy: &NoProxy,
        tunnel: bool,
        authority: &str,
        tls: bool,
    ) -> Result<Self, String> {
        let url = match proxy {
            Proxy::Url(url) => url,
            Proxy::PerScheme { http, https } => {
                let Some(url) = (if tls { https } else { http }) else {
                    tracing::debug!(
                        target = authority,
                        tls,
                        "no proxy for this scheme in the environment: reached directly"
                    );
                    return Ok(Self::Direct);
                };
                url
            }
            Proxy::Env | Proxy::Off => return Ok(Self::Direct),
        };
        let target: Authority = authority
            .parse()
            .map_err(|e| format!("`{authority}` is not a host and port: {e}"))?;
        let target_uri = Uri::builder()
            .scheme("http")
            .authority(target.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| format!("`{authority}` is not a host and port: {e}"))?;
        let matcher = Matcher::builder()
            .http(url.raw.clone())
            .no(no_proxy.to_string())
            .build();
        let Some(intercept) = matcher.intercept(&target_uri) else {
            tracing::debug!(target = authority, proxy = %url, "target in no_proxy: reached directly");
            return Ok(Self::Direct);
        };
        let proxy_uri = intercept.uri();
        let host = proxy_uri
            .host()
            .ok_or_else(|| format!("proxy `{url}` has no host"))?;
        let port = proxy_uri.port_u16().unwrap_or(80);
        let host_header = HeaderValue::from_str(target.as_str())
            .map_err(|_| format!("`{authority}` cannot be a Host header"))?;
        let hop = Hop {
            dial: format!("{host}:{port}"),
            shown: url.shown.clone(),
            auth: intercept.basic_auth().cloned(),
            target,
            host: host_header,
        };
        tracing::debug!(
            target = authority,
            proxy = %url,
            tunnel,
            "target reached through a proxy"
        );
        Ok(if tunnel {
            Self::Tunnel(hop)
        } else {
            Self::Forward(hop)
        })
    }
}

/// A proxy's failure, the source of the client's error (see
/// [the module docs](self#failures)). Messages name the proxy without its
/// password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// No connection to the proxy: refused, unreachable, its name did not
    /// resolve, or no answer within `connect_timeout` (the `source` is
    /// then an `std::io::Error` of kind `TimedOut`).
    #[error("cannot connect to proxy {proxy}: {source}")]
    Unreachable {
        /// The proxy.
        proxy: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The proxy wants credentials (`407`), or refused those sent (`407`;
    /// some proxies answer `CONNECT` with a `401`).
    #[error(
        "proxy {proxy} answered {status}: {}",
        if *credentials_sent {
            "it refused the user and password of the proxy URL"
        } else {
            "it wants credentials: give them in the proxy URL, http://USER:PASSWORD@HOST:PORT"
        }
    )]
    AuthRequired {
        /// The proxy.
        proxy: String,
        /// Its answer's status.
        status: u16,
        /// Whether credentials were sent.
        credentials_sent: bool,
    },
    /// The proxy answered `CONNECT` with another status than `2xx`: a
    /// `4xx` is its policy (the port is not allowed, say), a `5xx` means it
    /// could not reach the target.
    #[error("proxy {proxy} refused to open a tunnel to {target}: HTTP {status}")]
    TunnelRefused {
        /// The proxy.
        proxy: String,
        /// The target, `host:port`.
        target: String,
        /// Its answer's status.
        status: u16,
    },
    /// The `CONNECT` exchange failed: the proxy closed the connection, or
    /// answered something that is not HTTP.
    #[error("CONNECT to {target} through proxy {proxy} failed: {source}")]
    Tunnel {
        /// The proxy.
        proxy: String,
        /// The target, `host:port`.
        target: String,
        /// The HTTP error.
        #[source]
        source: hyper::Error,
    },
}

impl ProxyError {
    /// The first [`ProxyError`] in `error` and its chain of sources: is a
    /// client error the proxy's doing, and what did it do?
    ///
    /// ```
    /// # fn check(error: &cortex_client::McpError) {
    /// use cortex_client::proxy::ProxyError;
    /// if let Some(proxy) = ProxyError::find(error) {
    ///     eprintln!("the proxy {} failed: {proxy}", proxy.proxy());
    /// }
    /// # }
    /// ```
    pub fn find<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e ProxyError> {
        // Bounded: a chain of sources is finite, but a buggy one could be
        // cyclic.
        let mut current = Some(error);
        for _ in 0..64 {
            let error = current?;
            if let Some(proxy) = error.downcast_ref::<ProxyError>() {
                return Some(proxy);
            }
            current = error.source();
        }
        None
    }

    /// The proxy, without its password.
    pub fn proxy(&self) -> &str {
        match self {
            Self::Unreachable { proxy, .. }
            | Self::AuthRequired { proxy, .. }
            | Self::TunnelRefused { proxy, .. }
            | Self::Tunnel { proxy, .. } => proxy,
        }
    }

    /// The proxy's answer's status, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::AuthRequired { status, .. } | Self::TunnelRefused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The proxy wants other credentials.
    pub fn is_auth(&self) -> bool {
        matches!(self, Self::AuthRequired { .. })
    }

    /// The proxy refused by its own rules (a `4xx`): the target is not to
    /// blame, and its breaker does not count it.
    pub(crate) fn is_refusal(&self) -> bool {
        self.status()
            .is_some_and(|status| (400..500).contains(&status))
    }
}

/// Opens a `CONNECT` tunnel to `hop.target` on `io`, a connection to the
/// proxy. With hyper's own client and upgrade, so the proxy's answer is
/// read by hyper's parser and its status kept for the error (hyper-util's
/// `Tunnel` connector folds every refusal but `407` into one error).
/// The caller bounds it in time.
pub(crate) async fn connect_tunnel<T>(io: T, hop: &Hop) -> Result<Upgraded, ProxyError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let failed = |source| ProxyError::Tunnel {
        proxy: hop.shown.clone(),
        target: hop.target.to_string(),
        source,
    };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
            .await
            .map_err(failed)?;
    // The connection is driven apart from the request; it ends by handing
    // the socket over (a 2xx), or when the sender is dropped. Aborted if
    // this future is dropped first (timed out), which closes the socket.
    let driver = tokio::spawn(connection.with_upgrades());
    let _driver = AbortOnDrop(driver.abort_handle());

    let mut request = Request::new(Empty::<Bytes>::new());
    *request.method_mut() = Method::CONNECT;
    *request.uri_mut() = Uri::from(hop.target.clone());
    request.headers_mut().insert(HOST, hop.host.clone());
    if let Some(auth) = &hop.auth {
        request
            .headers_mut()
            .insert(PROXY_AUTHORIZATION, auth.clone());
    }
    let response = sender.send_request(request).await.map_err(failed)?;
    let status = response.status().as_u16();
    if response.status().is_success() {
        return hyper::upgrade::on(response).await.map_err(failed);
    }
    Err(match status {
        // tinyproxy answers a CONNECT with wrong credentials with a 401.
        401 | 407 => ProxyError::AuthRequired {
            proxy: hop.shown.clone(),
            status,
            credentials_sent: hop.auth.is_some(),
        },
        _ => ProxyError::TunnelRefused {
            proxy: hop.shown.clone(),
            target: hop.target.to_string(),
            status,
        },
    })
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection to the proxy of `hop` within `timeout`; its failure is the
/// proxy's, with an `std::io::Error` underneath (`TimedOut` for the
/// timeout), so `is_refused()` and `is_timeout()` answer for it.
pub(crate) async fn dial_proxy(
    hop: &Hop,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, ProxyError> {
    let unreachable = |source| ProxyError::Unreachable {
        proxy: hop.shown.clone(),
        source,
    };
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(hop.dial.as_str())).await {
        Ok(Ok(stream)) => {
            // Small requests and answers: don't let Nagle hold them back.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(error)) => Err(unreachable(error)),
        Err(_) => Err(unreachable(timed_out(timeout))),
    }
}

/// The I/O error of a proxy that did not answer within `timeout`.
pub(crate) fn timed_out(timeout: Duration) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "no answer within {}",
            cortex_resilience::human::HumanDuration(timeout)
        ),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> StandardVars {
        let mut standard = StandardVars::default();
        for (name, value) in pairs {
            standard.offer(name, value);
        }
        standard
    }

    #[test]
    fn proxy_urls_are_checked_and_shown_without_password() {
        let url = ProxyUrl::parse("http://alice:s3cret@127.0.0.1:3128").unwrap();
        assert_eq!(url.to_string(), "http://alice:***@127.0.0.1:3128");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(
            ProxyUrl::parse("proxy.example:3128").unwrap().to_string(),
            "http://proxy.example:3128"
        );
        ProxyUrl::parse("http://[::1]:3128/").unwrap();

        for (bad, says) in [
            ("https://p:3128", "over TLS"),
            ("socks5://p:1080", "SOCKS"),
            ("ftp://p:21", "unsupported proxy scheme `ftp`"),
            ("http://p:3128/path", "no path"),
            ("http://p:3128?x=1", "no path"),
            ("http://p:99999", "bad port `99999`"),
            ("http://p:0", "bad port `0`"),
            ("http://p:", "bad port ``"),
            ("http://", "not a URL"),
            ("http://u:p@ss@p:1", "%40"),
            ("http://exa mple:1", "not a URL"),
        ] {
            let error = ProxyUrl::parse(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
        let error = ProxyUrl::parse("https://bob:hunter2@p:3128").unwrap_err();
        assert!(error.contains("bob:***@p"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn redaction_handles_text_that_is_not_a_url() {
        assert_eq!(redact("http://u:p@h:1/x@y"), "http://u:***@h:1/x@y");
        assert_eq!(redact("u:p@h"), "u:***@h");
        assert_eq!(redact("http://u@h"), "http://u@h");
        assert_eq!(redact("http://h:1"), "http://h:1");
        assert_eq!(redact("http://a:b@c@h"), "http://a:***@h");
    }

    #[test]
    fn the_proxy_option_reads_keywords_and_urls() {
        assert_eq!(Proxy::parse("env"), Ok(Proxy::Env));
        assert_eq!(Proxy::parse("none"), Ok(Proxy::Off));
        assert_eq!(Proxy::parse("None"), Ok(Proxy::Off));
        assert_eq!(Proxy::parse("ENV"), Ok(Proxy::Env));
        assert_eq!(Proxy::parse(" "), Ok(Proxy::Off));
        let url = Proxy::parse("http://u:p@h:1").unwrap();
        assert_eq!(Proxy::parse(&url.to_text()).unwrap(), url);
        assert_eq!(url.to_string(), "http://u:***@h:1");
        let error = "ftp://h".parse::<Proxy>().unwrap_err();
        assert!(matches!(error, ConfigError::Invalid { ref option, .. } if option == "proxy"));
    }

    #[test]
    fn no_proxy_entries_are_checked_in_the_option_and_not_in_the_variable() {
        let list = NoProxy::parse(" localhost, .example.com,10.0.0.0/8,[::1], *,").unwrap();
        assert_eq!(
            list.entries(),
            ["localhost", ".example.com", "10.0.0.0/8", "::1", "*"]
        );
        for (bad, says) in [
            ("host:8080", "write the host alone, `host`"),
            ("*.example.com", "write `example.com`"),
            ("10.0.0.0/33", "0 to 32"),
            ("http://x/", "not a CIDR block"),
            ("a b", "not a host name"),
        ] {
            let error = NoProxy::parse(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
        let lenient = NoProxy::lenient("host:8080, *.example.com");
        assert_eq!(lenient.entries(), ["host:8080", "*.example.com"]);
    }

    fn url(text: &str) -> Option<ProxyUrl> {
        Some(ProxyUrl::parse(text).unwrap())
    }

    /// What the variables make of `proxy = "env"`.
    fn from_vars(pairs: &[(&str, &str)]) -> Option<Proxy> {
        vars(pairs).proxy().unwrap()
    }

    #[test]
    fn standard_variables_are_read_per_scheme_upper_case_first() {
        // The scheme's own, upper case first, then ALL_PROXY.
        assert_eq!(
            from_vars(&[
                ("ALL_PROXY", "http://all:1"),
                ("http_proxy", "http://lower:1"),
                ("HTTP_PROXY", "http://upper:1"),
                ("https_proxy", "http://lower-s:1"),
                ("HTTPS_PROXY", "http://upper-s:1"),
            ]),
            Some(Proxy::PerScheme {
                http: url("http://upper:1"),
                https: url("http://upper-s:1"),
            })
        );
        assert_eq!(
            from_vars(&[("HTTP_PROXY", " "), ("http_proxy", "http://lower:1")]),
            Some(Proxy::PerScheme {
                http: url("http://lower:1"),
                https: None,
            }),
            "an empty variable counts as unset; HTTP_PROXY is not for https://"
        );
        assert_eq!(
            from_vars(&[("https_proxy", "http://s:1"), ("ALL_PROXY", "http://all:1")]),
            Some(Proxy::PerScheme {
                http: url("http://all:1"),
                https: url("http://s:1"),
            })
        );
        assert_eq!(
            from_vars(&[("HTTPS_PROXY", "http://s:1")]),
            Some(Proxy::PerScheme {
                http: None,
                https: url("http://s:1"),
            })
        );
        // One proxy for both schemes is one proxy.
        assert_eq!(
            from_vars(&[("all_proxy", "http://all:1")]),
            Some(Proxy::Url(ProxyUrl::parse("http://all:1").unwrap()))
        );
        assert_eq!(
            from_vars(&[("HTTP_PROXY", "http://p:1"), ("HTTPS_PROXY", "http://p:1")]),
            Some(Proxy::Url(ProxyUrl::parse("http://p:1").unwrap()))
        );
        assert_eq!(from_vars(&[("NO_PROXY", "a")]), None);

        let cgi = vars(&[
            ("HTTP_PROXY", "http://evil:1"),
            ("HTTPS_PROXY", "http://evil:1"),
            ("REQUEST_METHOD", "GET"),
        ]);
        assert!(cgi.proxy().unwrap().is_none(), "httpoxy: ignored under CGI");

        // What was read is shown without passwords, and written as `env`.
        let both = from_vars(&[
            ("HTTP_PROXY", "http://u:pw@p:1"),
            ("HTTPS_PROXY", "http://u:pw@s:1"),
        ])
        .unwrap();
        assert_eq!(
            both.to_string(),
            "http: http://u:***@p:1, https: http://u:***@s:1"
        );
        assert_eq!(both.to_text(), "env");

        let error = vars(&[("https_proxy", "socks5://u:pw@h:1")])
            .proxy()
            .unwrap_err();
        let ConfigError::Invalid { option, reason } = error else {
            panic!("{error:?}")
        };
        assert_eq!(option, "https_proxy");
        assert!(reason.contains("socks5://u:***@h:1"), "{reason}");

        let error = vars(&[("http_proxy", "socks5://u:pw@h:1")])
            .proxy()
            .unwrap_err();
        let ConfigError::Invalid { option, reason } = error else {
            panic!("{error:?}")
        };
        assert_eq!(option, "http_proxy");
        assert!(reason.contains("socks5://u:***@h:1"), "{reason}");

        let no = vars(&[("no_proxy", "b"), ("NO_PROXY", "a, .c")])
            .no_proxy()
            .unwrap();
        assert_eq!(no.entries(), ["a", ".c"]);
    }

    fn route(proxy: &str, no_proxy: &str, tunnel: bool, target: &str) -> Route {
        Route::for_target(
            &Proxy::parse(proxy).unwrap(),
            &NoProxy::parse(no_proxy).unwrap(),
            tunnel,
            target,
            false,
        )
        .unwrap()
    }

    #[test]
    fn routes_take_the_proxy_of_the_targets_scheme() {
        let per_scheme = Proxy::PerScheme {
            http: url("http://plain:1"),
            https: url("http://secure:2"),
        };
        let dial = |proxy: &Proxy, no_proxy: &str, tls: bool| match Route::for_target(
            proxy,
            &NoProxy::parse(no_proxy).unwrap(),
            false,
            "h:443",
            tls,
        )
        .unwrap()
        {
            Route::Forward(hop) | Route::Tunnel(hop) => Some(hop.dial),
            Route::Direct => None,
        };
        assert_eq!(dial(&per_scheme, "", false).as_deref(), Some("plain:1"));
        assert_eq!(dial(&per_scheme, "", true).as_deref(), Some("secure:2"));
        assert_eq!(dial(&per_scheme, "h", true), None, "no_proxy still applies");
        let http_only = Proxy::PerScheme {
            http: url("http://plain:1"),
            https: None,
        };
        assert_eq!(dial(&http_only, "", true), None, "https:// direct");
        assert_eq!(dial(&http_only, "", false).as_deref(), Some("plain:1"));
        // A proxy named in the configuration serves both schemes.
        let one = Proxy::parse("http://one:3").unwrap();
        assert_eq!(dial(&one, "", true).as_deref(), Some("one:3"));
        assert_eq!(dial(&one, "", false).as_deref(), Some("one:3"));
    }

    #[test]
    fn routes_follow_the_proxy_and_no_proxy() {
        assert_eq!(route("env", "", false, "h:1"), Route::Direct);
        assert_eq!(route("none", "", false, "h:1"), Route::Direct);
        let Route::Forward(hop) = route("http://alice:s3cret@p:3128", "", false, "h:1") else {
            panic!("forwarded")
        };
        assert_eq!(hop.dial, "p:3128");
        assert_eq!(hop.target.as_str(), "h:1");
        // base64("alice:s3cret")
        assert_eq!(hop.auth.unwrap(), "Basic YWxpY2U6czNjcmV0");
        let Route::Tunnel(hop) = route("http://p", "", true, "h:1") else {
            panic!("tunnelled")
        };
        assert_eq!((hop.dial.as_str(), hop.auth), ("p:80", None));
        let Route::Forward(hop) = route("http://[::1]:3128", "", false, "h:1") else {
            panic!("forwarded")
        };
        assert_eq!(hop.dial, "[::1]:3128", "an address the dialler reads");

        for (no_proxy, target) in [
            ("h", "h:1"),
            ("example.com", "api.example.com:80"),
            (".example.com", "example.com:80"),
            ("10.0.0.0/8", "10.1.2.3:9000"),
            ("::1", "[::1]:9000"),
            ("*", "anything:1"),
        ] {
            assert_eq!(
                route("http://p:1", no_proxy, false, target),
                Route::Direct,
                "{no_proxy} {target}"
            );
        }
        for (no_proxy, target) in [
            ("example.com", "notexample.com:80"),
            ("10.0.0.0/8", "11.0.0.1:1"),
        ] {
            assert!(
                matches!(
                    route("http://p:1", no_proxy, false, target),
                    Route::Forward(_)
                ),
                "{no_proxy} {target}"
            );
        }
    }
}
