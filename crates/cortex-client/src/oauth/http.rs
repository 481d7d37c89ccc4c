//! The few HTTP exchanges OAuth needs (metadata GETs, form POSTs to the
//! token endpoint, a JSON POST to register), over the client's own
//! connection machinery: the same proxy rules, TLS trust and connect
//! timeout as the service's calls. Each exchange has its own connection
//! (they are rare: discovery once, a token now and then), one deadline for
//! sending and reading, and a bound on the answer's size.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::Value;
use tokio::time::Instant;

use super::error::OAuthError;
use crate::config::ClientConfig;
use crate::pool::{EndpointPool, PoolSettings, Purpose};
use cortex_discovery::Endpoint;

/// The MCP revision named on discovery requests (`MCP-Protocol-Version`).
const PROTOCOL_VERSION: &str = "2025-11-25";

/// How OAuth's HTTP exchanges are made.
#[derive(Clone)]
pub(crate) struct Http {
    /// The service's effective client settings: proxy, TLS, connect timeout.
    pub(crate) config: ClientConfig,
    /// Bounds each exchange, connecting included.
    pub(crate) timeout: Duration,
    /// The largest answer read; a bigger one is an error.
    pub(crate) max_bytes: usize,
    /// Whether `http://` URLs may be used for anything but loopback hosts
    /// (only when the MCP server itself is reached over `http://`).
    pub(crate) plaintext: bool,
}

/// One answer, read to the end.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    /// The body as JSON (an object), or what is wrong with it.
    pub(crate) fn json(&self) -> Result<Value, String> {
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(value @ Value::Object(_)) => Ok(value),
            Ok(_) => Err("the answer is JSON but not an object".into()),
            Err(e) => Err(format!("the answer is not JSON: {e}")),
        }
    }
}

impl Http {
    /// GET `url` (metadata): JSON accepted, the MCP revision named.
    pub(crate) async fn get(&self, url: &str) -> Result<Reply, OAuthError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(
            "mcp-protocol-version",
            HeaderValue::from_static(PROTOCOL_VERSION),
        );
        self.send(Method::GET, url, headers, Bytes::new()).await
    }

    /// GET `url` without following a redirect: the answer as it is.
    pub(crate) async fn get_raw(&self, url: &str) -> Result<Reply, OAuthError> {
        self.send(Method::GET, url, HeaderMap::new(), Bytes::new())
            .await
    }

    /// POST `form` (`application/x-www-form-urlencoded`) to `url`, with
    /// HTTP Basic credentials when given.
    pub(crate) async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
        basic: Option<HeaderValue>,
    ) -> Result<Reply, OAuthError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        if let Some(basic) = basic {
            headers.insert(header::AUTHORIZATION, basic);
        }
        let body = form_encode(form);
        self.send(Method::POST, url, headers, Bytes::from(body))
            .await
    }

    /// POST `body` as JSON to `url`.
    pub(crate) async fn post_json(&self, url: &str, body: &Value) -> Result<Reply, OAuthError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.send(Method::POST, url, headers, Bytes::from(body.to_string()))
            .await
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Reply, OAuthError> {
        let pool = self.pool_for(url)?;
        self.send_on(&pool, method, url, headers, body).await
    }

    /// A pool of one connection to `url`'s server, with the settings'
    /// proxy route and TLS trust (the CA and identity files read now).
    /// Exchanges that recur (health checks) keep it and use
    /// [`Self::get_raw_on`], so the files are not read and TLS is not set
    /// up again for each.
    pub(crate) fn pool_for(&self, url: &str) -> Result<Arc<EndpointPool>, OAuthError> {
        let target = Target::parse(url)?;
        if !target.tls && !self.plaintext && !is_loopback(&target.host) {
            return Err(OAuthError::config(format!(
                "`{url}` is not https: authorization endpoints must be reached over TLS"
            )));
        }
        let endpoint = Endpoint::new(format!(
            "{}://{}",
            if target.tls { "https" } else { "http" },
            target.authority
        ));
        let config = &self.config;
        let route = crate::proxy::Route::for_target(
            &config.proxy,
            &config.no_proxy,
            config.proxy_tunnel,
            &target.authority,
            target.tls,
        )
        .map_err(OAuthError::config)?;
        let tls = crate::tls::Tls::for_endpoint(
            &crate::tls::TlsSettings {
                system_roots: config.tls_system_roots,
                ca_file: &config.ca_file,
                client_cert: &config.client_cert,
                client_key: &config.client_key,
            },
            &endpoint,
        )
        .map_err(OAuthError::config)?;
        Ok(EndpointPool::new(
            target.authority,
            PoolSettings {
                max_connections: 1,
                // No connection of these pools waits idle (each exchange
                // closes its own); a long timeout keeps the pool's sweeper
                // from waking often while a kept pool lives.
                idle_timeout: Duration::from_secs(20),
                connect_timeout: config.connect_timeout.min(self.timeout),
                // Exchanges with the authorization server are calls.
                stream_http2: false,
                route,
                tls,
            },
        ))
    }

    /// As [`Self::get_raw`], on a connection of `pool` (made by
    /// [`Self::pool_for`] for the same server). The connection is not kept
    /// for another exchange.
    pub(crate) async fn get_raw_on(
        &self,
        pool: &Arc<EndpointPool>,
        url: &str,
    ) -> Result<Reply, OAuthError> {
        self.send_on(pool, Method::GET, url, HeaderMap::new(), Bytes::new())
            .await
    }

    async fn send_on(
        &self,
        pool: &Arc<EndpointPool>,
        method: Method,
        url: &str,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<Reply, OAuthError> {
        let target = Target::parse(url)?;
        let deadline = Instant::now() + self.timeout;
        let failed = |what: String| OAuthError::transport(format!("{method} {url}: {what}"));
        let timed_out = || {
            OAuthError::transport(format!(
                "{method} {url}: no answer within {:?}",
                self.timeout
            ))
        };
        let mut conn = pool
            .acquire(deadline, Purpose::Call)
            .await
            .map_err(|e| failed(format!("cannot connect: {e}")))?;
        headers.insert(
            header::HOST,
            HeaderValue::from_str(&target.authority)
                .map_err(|_| OAuthError::config(format!("`{url}` has an invalid host")))?,
        );
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("cortex-client/", env!("CARGO_PKG_VERSION"))),
        );
        let mut request = http::Request::new(Full::new(body));
        *request.method_mut() = method.clone();
        *request.uri_mut() = http::Uri::try_from(target.path.as_str())
            .map_err(|e| OAuthError::config(format!("`{url}`: {e}")))?;
        *request.headers_mut() = headers;
        let response = tokio::time::timeout_at(deadline, conn.send(request))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| failed(format!("{e:?}")))?;
        let (parts, body) = response.into_parts();
        let collected =
            tokio::time::timeout_at(deadline, Limited::new(body, self.max_bytes).collect())
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| {
                    failed(format!(
                        "reading the answer failed (bound: {} bytes): {e}",
                        self.max_bytes
                    ))
                })?;
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: collected.to_bytes(),
        })
    }
}

/// An absolute `http(s)` URL, split.
struct Target {
    tls: bool,
    authority: String,
    host: String,
    /// Path and query, `/` at least.
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, OAuthError> {
        let uri = http::Uri::try_from(url)
            .map_err(|e| OAuthError::config(format!("`{url}` is not a URL: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(OAuthError::config(format!("`{url}` is not an http(s) URL")));
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| OAuthError::config(format!("`{url}` has no host")))?;
        let host = authority.host().to_string();
        let authority = match authority.port_u16() {
            Some(port) => format!("{host}:{port}"),
            None => format!("{host}:{}", if tls { 443 } else { 80 }),
        };
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
        let path = if path.is_empty() { "/".into() } else { path };
        Ok(Self {
            tls,
            authority,
            host,
            path,
        })
    }
}

/// Whether `host` is a loopback name or address.
pub(crate) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `application/x-www-form-urlencoded` of `pairs`.
pub(crate) fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_component(k), form_component(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// One name or value of a form or a query: everything but unreserved
/// characters percent-encoded.
pub(crate) fn form_component(text: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, SET).to_string()
}

/// The pairs of a query string (`a=1&b=2`), decoded.
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        percent_encoding::percent_decode_str(&s)
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_queries_round_trip() {
        let form = form_encode(&[("redirect_uri", "http://127.0.0.1:1/cb"), ("scope", "a b")]);
        assert_eq!(
            form,
            "redirect_uri=http%3A%2F%2F127.0.0.1%3A1%2Fcb&scope=a%20b"
        );
        let pairs = query_pairs("code=x%2By&state=s+t&flag");
        assert_eq!(pairs[0], ("code".into(), "x+y".into()));
        assert_eq!(pairs[1], ("state".into(), "s t".into()));
        assert_eq!(pairs[2], ("flag".into(), String::new()));
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("localhost"));
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("[::1]"));
        assert!(!is_loopback("example.com"));
    }
}
