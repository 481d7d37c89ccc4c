//! What every request must pass before it reaches a route: a target of
//! bounded length, an accepted `Host`, no foreign browser `Origin`, a
//! declared body within the limit, and a free request slot.
//!
//! Refusals carry the error envelope (on `/mcp`, a JSON-RPC error), with
//! the status that says what was wrong:
//!
//! | check | refusal |
//! |---|---|
//! | request target longer than `max_uri_bytes` | `414`, `invalid_request` |
//! | `Host` names a host that is not loopback, the bound address, or allowed | `403 forbidden` |
//! | `Origin` that is not loopback or allowed (a web page, cross-site) | `403 forbidden` |
//! | a connection past the cap asks for anything but `/health` | `503 unavailable` |
//! | `Content-Length` over `max_body_bytes` | `413 payload_too_large`, before the body is read |
//! | every request slot taken | `503 unavailable`, `Retry-After: 1` |

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cortex_proto::ErrorCode;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::config::ServiceConfig;
use crate::error::ServiceError;
use crate::paths::MCP_PATH;
use crate::rate_log::RateLimitedLog;

static FOREIGN_HOST: RateLimitedLog = RateLimitedLog::new();
static FOREIGN_ORIGIN: RateLimitedLog = RateLimitedLog::new();
static NO_REQUEST_SLOT: RateLimitedLog = RateLimitedLog::new();

/// What the server knows about the connection a request came on; put in
/// the request's extensions by [`crate::serve`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnMeta {
    /// The address the service is bound to.
    pub(crate) bound: SocketAddr,
    /// Accepted past the connection cap: `/health` only.
    pub(crate) health_only: bool,
}

/// The checks, with their settings and the request slots.
#[derive(Clone)]
pub(crate) struct Guard(Arc<Inner>);

struct Inner {
    config: ServiceConfig,
    requests: Semaphore,
}

impl Guard {
    pub(crate) fn new(config: &ServiceConfig) -> Self {
        Self(Arc::new(Inner {
            requests: Semaphore::new(config.limits.max_requests.max(1)),
            config: config.clone(),
        }))
    }
}

/// The middleware: runs the checks in the order of the module's table.
pub(crate) async fn check(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let config = &guard.0.config;
    let limits = &config.limits;
    let path = request.uri().path();
    let mcp = path == MCP_PATH;
    let health = path == "/health";
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if target > limits.max_uri_bytes {
        let error = ServiceError::invalid_request(format!(
            "the request target is {target} bytes long; the limit is {}",
            limits.max_uri_bytes
        ))
        .with_details(json!({ "limit_bytes": limits.max_uri_bytes }));
        return refuse(mcp, StatusCode::URI_TOO_LONG, error);
    }
    let conn = request.extensions().get::<ConnMeta>().copied();
    if let Err(host) = check_host(
        request.headers(),
        conn.map(|c| c.bound),
        &limits.allowed_hosts,
    ) {
        if FOREIGN_HOST.allow() {
            tracing::warn!(%host, "request for a host this service does not serve refused (logged at most every 10 s)");
        }
        let error = ServiceError::new(
            ErrorCode::Forbidden,
            format!("Host `{host}` is not served here; allow it with --allowed-host"),
        );
        return refuse(mcp, StatusCode::FORBIDDEN, error);
    }
    // `/mcp` checks Origin itself, answering in JSON-RPC with CORS headers.
    if !mcp && let Err(origin) = crate::mcp::check_origin(&config.mcp, request.headers()) {
        if FOREIGN_ORIGIN.allow() {
            tracing::warn!(%origin, "request from a foreign Origin refused (logged at most every 10 s)");
        }
        let error = ServiceError::new(
            ErrorCode::Forbidden,
            format!("Origin `{origin}` is not allowed; allow it with --allowed-origin"),
        );
        return refuse(mcp, StatusCode::FORBIDDEN, error);
    }
    if conn.is_some_and(|c| c.health_only) && !health {
        let mut response = refuse(
            mcp,
            StatusCode::SERVICE_UNAVAILABLE,
            ServiceError::unavailable(format!(
                "the service has its maximum of {} connections open; retry shortly",
                limits.max_connections
            )),
        );
        retry_after(&mut response);
        return response;
    }
    if let Some(declared) = declared_length(request.headers())
        && declared > config.max_body_bytes as u64
    {
        // Refused before a byte of it is read: a client declaring a huge
        // body and trickling it cannot keep the call open.
        let limit = config.max_body_bytes;
        let error = ServiceError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body is larger than {limit} bytes"),
        )
        .with_details(json!({ "limit_bytes": limit }));
        return refuse(mcp, StatusCode::PAYLOAD_TOO_LARGE, error);
    }
    // `/health` takes no slot: a monitor must see a busy service as busy,
    // not as down.
    let _slot = if health {
        None
    } else {
        match guard.0.requests.try_acquire() {
            Ok(slot) => Some(slot),
            Err(_) => {
                if NO_REQUEST_SLOT.allow() {
                    tracing::warn!(
                        limit = limits.max_requests,
                        "every request slot is taken; requests refused (logged at most every 10 s)"
                    );
                }
                let mut response = refuse(
                    mcp,
                    StatusCode::SERVICE_UNAVAILABLE,
                    ServiceError::unavailable(format!(
                        "the service is handling its maximum of {} requests; retry shortly",
                        limits.max_requests
                    )),
                );
                retry_after(&mut response);
                return response;
            }
        }
    };
    next.run(request).await
}

fn retry_after(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
}

/// A refusal in the shape the route speaks: the error envelope, or on
/// `/mcp` a JSON-RPC error; with `status` (which for 414 differs from the
/// one the code implies).
fn refuse(mcp: bool, status: StatusCode, error: ServiceError) -> Response {
    if mcp {
        return crate::mcp::refusal(status, &error.message);
    }
    (status, Json(error.envelope())).into_response()
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `Ok` when the request's `Host` may be served: absent (not a browser),
/// a loopback name or address, the bound address (any address when bound
/// to a wildcard one), or a name in `allowed` (`"*"`: any). `Err(host)`
/// otherwise.
///
/// A name is what DNS rebinding needs: a page at `evil.example` whose name
/// is made to resolve to this address sends `Host: evil.example`. An IP
/// address in `Host` is the page's own origin, so it is no such attack.
pub(crate) fn check_host(
    headers: &HeaderMap,
    bound: Option<SocketAddr>,
    allowed: &[String],
) -> Result<(), String> {
    let Some(value) = headers.get(header::HOST) else {
        return Ok(());
    };
    let raw = String::from_utf8_lossy(value.as_bytes()).into_owned();
    let host = host_name(&raw).to_ascii_lowercase();
    if host == "localhost" {
        return Ok(());
    }
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        let bound_ok = bound.is_none_or(|b| b.ip().is_unspecified() || b.ip() == ip);
        if ip.is_loopback() || bound_ok {
            return Ok(());
        }
    }
    let listed = allowed
        .iter()
        .any(|a| a == "*" || host_name(a).eq_ignore_ascii_case(&host));
    if listed { Ok(()) } else { Err(raw) }
}

/// The host of a `Host` value (or of an allowed name): without its port or
/// a trailing dot.
fn host_name(value: &str) -> &str {
    let value = value.trim();
    let host = if value.starts_with('[') {
        value.split_inclusive(']').next().unwrap_or(value)
    } else {
        match value.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => value,
        }
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// The soft limit on open files of this process, where the platform tells.
pub(crate) fn open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        limit.current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// File descriptors kept free of connections for everything else a
/// service opens: its database, its own outgoing connections, log files.
const SPARE_FILES: u64 = 128;

/// The connection cap that fits in the open-file limit: at the limit,
/// `accept` fails with "too many open files" and nobody gets in, not even
/// `/health`; below it, the cap's own policy (close the idle, keep a few
/// for `/health`) applies.
pub(crate) fn fit_connections(wanted: usize, reserve: usize, files: Option<u64>) -> usize {
    let Some(files) = files else { return wanted };
    let room = files.saturating_sub(SPARE_FILES + reserve as u64);
    let room = usize::try_from(room).unwrap_or(usize::MAX).max(1);
    wanted.min(room)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(value).expect("value"));
        headers
    }

    #[test]
    fn hosts() {
        let loopback: SocketAddr = "127.0.0.1:9000".parse().expect("addr");
        let wildcard: SocketAddr = "0.0.0.0:9000".parse().expect("addr");
        let lan: SocketAddr = "10.0.0.5:9000".parse().expect("addr");
        let allowed = vec!["memory.internal".to_string()];
        for ok in [
            "localhost",
            "localhost:9000",
            "LOCALHOST.:9000",
            "127.0.0.1:9000",
            "127.0.0.2",
            "[::1]:9000",
            "memory.internal:9000",
            "Memory.Internal",
        ] {
            assert_eq!(
                check_host(&host(ok), Some(loopback), &allowed),
                Ok(()),
                "{ok}"
            );
        }
        for bad in [
            "evil.example",
            "evil.example:9000",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.5:9000",
        ] {
            assert!(
                check_host(&host(bad), Some(loopback), &allowed).is_err(),
                "{bad}"
            );
        }
        assert_eq!(check_host(&host("10.0.0.5:9000"), Some(lan), &[]), Ok(()));
        assert_eq!(
            check_host(&host("192.168.1.9:9000"), Some(wildcard), &[]),
            Ok(())
        );
        assert!(check_host(&host("cortex:9000"), Some(wildcard), &[]).is_err());
        assert_eq!(
            check_host(&host("anything"), Some(loopback), &["*".to_string()]),
            Ok(())
        );
        assert_eq!(check_host(&HeaderMap::new(), Some(loopback), &[]), Ok(()));
    }

    #[test]
    fn the_connection_cap_fits_the_file_limit() {
        assert_eq!(fit_connections(4096, 16, None), 4096);
        assert_eq!(fit_connections(4096, 16, Some(1024)), 1024 - 128 - 16);
        assert_eq!(fit_connections(100, 16, Some(1_048_576)), 100);
        assert_eq!(fit_connections(100, 16, Some(10)), 1);
    }

    #[test]
    fn a_flood_of_refusals_logs_one_line() {
        let log = RateLimitedLog::new();
        assert!(log.allow());
        assert!((0..1000).all(|_| !log.allow()));
    }
}
