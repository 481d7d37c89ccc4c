//! The stateless revision (2026-07-28): no session, every request carries
//! its version in `_meta` and mirrors its method (and target) in headers.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};
use tokio::task::AbortHandle;

use super::dispatch::{Call, Shared};
use super::jsonrpc::{
    self, HEADER_MISMATCH, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, Message, RpcError,
    UNSUPPORTED_PROTOCOL_VERSION,
};
use super::param_headers::decode_header_value;
use super::reply::{self, header_text};
use super::{SESSION_VERSIONS, STATELESS_VERSION};
use crate::CallContext;
use crate::outbox::Outbox;

/// The `_meta` key carrying a request's protocol version.
pub(crate) const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";
const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";

/// Every version served, newest first (for `supportedVersions` and
/// `UnsupportedProtocolVersionError`).
pub(crate) fn supported_versions() -> Vec<&'static str> {
    let mut versions = vec![STATELESS_VERSION];
    versions.extend(SESSION_VERSIONS);
    versions
}

/// An unsupported version: 400 with `UnsupportedProtocolVersionError`.
pub(crate) fn unsupported_version(id: Option<&Value>, requested: &str) -> Response {
    let error = RpcError::new(
        UNSUPPORTED_PROTOCOL_VERSION,
        format!(
            "unsupported protocol version `{requested}`; supported: {}",
            supported_versions().join(", ")
        ),
    )
    .with_data(json!({"supported": supported_versions(), "requested": requested}));
    reply::rpc_error(StatusCode::BAD_REQUEST, id, &error)
}

fn meta_version(message: &Value) -> Option<&str> {
    message
        .get("params")?
        .get("_meta")?
        .get(META_PROTOCOL_VERSION)?
        .as_str()
}

/// True when a request speaks the stateless revision: the header says so,
/// or (without a session) the body declares in `_meta` a version that is
/// not one of the session revisions. A client may put `_meta` on a
/// session revision's `initialize` too; that one opens a session.
pub(crate) fn is_stateless(body: &Value, declared: Option<&str>, has_session: bool) -> bool {
    if declared == Some(STATELESS_VERSION) {
        return true;
    }
    if has_session {
        return false;
    }
    let stateless = |message: &Value| {
        meta_version(message).is_some_and(|version| !SESSION_VERSIONS.contains(&version))
    };
    match body {
        Value::Array(items) => items.iter().any(stateless),
        message => stateless(message),
    }
}

fn mismatch(id: &Value, message: String) -> Response {
    reply::rpc_error(
        StatusCode::BAD_REQUEST,
        Some(id),
        &RpcError::new(HEADER_MISMATCH, message),
    )
}

/// Serves one stateless POST.
pub(crate) async fn post(mcp: &Arc<Shared>, headers: &HeaderMap, body: Value) -> Response {
    if body.is_array() {
        return reply::rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            &RpcError::new(
                INVALID_REQUEST,
                format!("JSON-RPC batches are not part of protocol revision {STATELESS_VERSION}"),
            ),
        );
    }
    let (id, method, params) = match Message::parse(body) {
        Ok(Message::Request { id, method, params }) => (id, method, params),
        Ok(Message::Notification { .. }) => return reply::accepted(),
        Ok(Message::Response { .. }) => {
            return reply::rpc_error(
                StatusCode::BAD_REQUEST,
                None,
                &RpcError::new(
                    INVALID_REQUEST,
                    "clients do not send responses in this revision",
                ),
            );
        }
        Err((id, error)) => return reply::rpc_error(StatusCode::BAD_REQUEST, id.as_ref(), &error),
    };
    // A mirrored header sent twice could route one way and run another.
    for name in ["mcp-protocol-version", "mcp-method", "mcp-name"] {
        if headers.get_all(name).iter().nth(1).is_some() {
            return mismatch(&id, format!("the {name} header must be sent once"));
        }
    }
    // The version: header and body must agree, and name one served here.
    let Some(header_version) = header_text(headers, "mcp-protocol-version") else {
        return mismatch(&id, "the MCP-Protocol-Version header is required".into());
    };
    let meta = params.get("_meta").and_then(Value::as_object);
    let body_version = meta
        .and_then(|meta| meta.get(META_PROTOCOL_VERSION))
        .and_then(Value::as_str);
    let capabilities = meta
        .and_then(|meta| meta.get(META_CLIENT_CAPABILITIES))
        .filter(|c| c.is_object());
    let (Some(body_version), Some(_)) = (body_version, capabilities) else {
        let error = RpcError::new(
            INVALID_PARAMS,
            format!(
                "every request of revision {STATELESS_VERSION} carries params._meta with \
                 \"{META_PROTOCOL_VERSION}\" and \"{META_CLIENT_CAPABILITIES}\""
            ),
        );
        return reply::rpc_error(StatusCode::BAD_REQUEST, Some(&id), &error);
    };
    if header_version != body_version {
        return mismatch(
            &id,
            format!(
                "MCP-Protocol-Version header `{header_version}` does not match the body's \
                 `{body_version}`"
            ),
        );
    }
    if body_version != STATELESS_VERSION {
        return unsupported_version(Some(&id), body_version);
    }
    if let Err(message) = check_headers(mcp, headers, &method, &params) {
        return mismatch(&id, message);
    }
    let call = Call {
        ctx: CallContext::from_headers(headers.clone()),
        session: None,
        structured: true,
    };
    let ttl = mcp.config.mcp.list_cache_ttl;
    match method.as_str() {
        "server/discover" => reply::rpc_result(&id, complete(mcp, cacheable(discover(mcp), ttl))),
        "subscriptions/listen" => listen(mcp, headers, call, id, &params).await,
        name if REMOVED_METHODS.contains(&name) => reply::rpc_error(
            StatusCode::NOT_FOUND,
            Some(&id),
            &RpcError::new(
                METHOD_NOT_FOUND,
                format!("`{name}` is not part of protocol revision {STATELESS_VERSION}"),
            ),
        ),
        _ => match mcp.request(call, &method, params).await {
            Ok(result) if LIST_METHODS.contains(&method.as_str()) => {
                reply::rpc_result(&id, complete(mcp, cacheable(result, ttl)))
            }
            Ok(result) => reply::rpc_result(&id, complete(mcp, result)),
            Err(error) if error.code == METHOD_NOT_FOUND => {
                reply::rpc_error(StatusCode::NOT_FOUND, Some(&id), &error)
            }
            Err(error) => reply::rpc_error(StatusCode::OK, Some(&id), &error),
        },
    }
}

/// Methods of the session-based revisions that this one removed.
const REMOVED_METHODS: [&str; 5] = [
    "initialize",
    "ping",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
];

/// Results that carry caching hints.
const LIST_METHODS: [&str; 4] = [
    "tools/list",
    "resources/list",
    "resources/templates/list",
    "prompts/list",
];

/// Adds `resultType: "complete"`, which every result of this revision has,
/// and names the server in `_meta`.
fn complete(mcp: &Shared, mut result: Value) -> Value {
    if let Value::Object(map) = &mut result {
        map.insert("resultType".into(), "complete".into());
        let meta = map.entry("_meta").or_insert_with(|| json!({}));
        if let Value::Object(meta) = meta {
            meta.insert(META_SERVER_INFO.into(), mcp.server_info());
        }
    }
    result
}

/// Adds caching hints: the registry is fixed for the life of the process
/// and the same for every caller, so lists are public for `ttl`.
fn cacheable(mut result: Value, ttl: std::time::Duration) -> Value {
    if let Value::Object(map) = &mut result {
        map.insert("ttlMs".into(), json!(ttl.as_millis() as u64));
        map.insert("cacheScope".into(), "public".into());
    }
    result
}

fn discover(mcp: &Shared) -> Value {
    json!({
        "supportedVersions": supported_versions(),
        "capabilities": mcp.capabilities(false),
        "serverInfo": mcp.server_info(),
        "instructions": mcp.instructions(),
    })
}

/// Checks `Mcp-Method`, `Mcp-Name` and `Mcp-Param-*` against the body.
fn check_headers(
    mcp: &Shared,
    headers: &HeaderMap,
    method: &str,
    params: &Map<String, Value>,
) -> Result<(), String> {
    let Some(header_method) = header_text(headers, "mcp-method") else {
        return Err("the Mcp-Method header is required".into());
    };
    if header_method != method {
        return Err(format!(
            "Mcp-Method header `{header_method}` does not match the body's method `{method}`"
        ));
    }
    let target = match method {
        "tools/call" | "prompts/get" => params.get("name"),
        "resources/read" => params.get("uri"),
        _ => None,
    };
    if let Some(Value::String(target)) = target {
        let header = headers
            .get("mcp-name")
            .ok_or_else(|| format!("the Mcp-Name header is required for {method}"))?;
        let name = decode_header_value(header.as_bytes())
            .ok_or_else(|| "the Mcp-Name header holds invalid characters".to_string())?;
        if &name != target {
            return Err(format!(
                "Mcp-Name header `{name}` does not match the body's `{target}`"
            ));
        }
    }
    if method == "tools/call" {
        let tool = params
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(mirrored) = mcp.header_params.get(tool) {
            let empty = Map::new();
            let arguments = params
                .get("arguments")
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            mirrored.check(headers, arguments)?;
        }
    }
    Ok(())
}

/// Stops a listen stream's subscriptions when the stream is dropped (the
/// client went away, or shutdown ended it).
struct AbortOnDrop(Vec<AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// `subscriptions/listen`: an SSE response that acknowledges the honoured
/// filter, then carries `notifications/resources/updated` for each
/// subscribed resource that has a live stream.
async fn listen(
    mcp: &Arc<Shared>,
    headers: &HeaderMap,
    call: Call,
    id: Value,
    params: &Map<String, Value>,
) -> Response {
    if !reply::accepts(headers, "text/event-stream") {
        return reply::not_acceptable("subscriptions/listen answers with text/event-stream");
    }
    let Some(filter) = params.get("notifications").and_then(Value::as_object) else {
        return reply::rpc_error(
            StatusCode::OK,
            Some(&id),
            &RpcError::new(
                INVALID_PARAMS,
                "subscriptions/listen needs a `notifications` object",
            ),
        );
    };
    let requested: Vec<&str> = match filter.get("resourceSubscriptions") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(uris)) => match uris.iter().map(Value::as_str).collect() {
            Some(uris) => uris,
            None => {
                return reply::rpc_error(
                    StatusCode::OK,
                    Some(&id),
                    &RpcError::invalid_params("`resourceSubscriptions` must be a list of URIs"),
                );
            }
        },
        Some(_) => {
            return reply::rpc_error(
                StatusCode::OK,
                Some(&id),
                &RpcError::invalid_params("`resourceSubscriptions` must be a list of URIs"),
            );
        }
    };
    let limit = mcp.config.mcp.max_subscriptions;
    if requested.len() > limit {
        return reply::rpc_error(
            StatusCode::OK,
            Some(&id),
            &RpcError::invalid_params(format!(
                "at most {limit} resource subscriptions per subscriptions/listen"
            )),
        );
    }
    // The listen stream holds a stream slot (each subscription its own).
    let slot = match mcp.service.stream_slot() {
        Ok(slot) => slot,
        Err(error) => {
            return reply::rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(&id),
                &RpcError::new(jsonrpc::INTERNAL_ERROR, error.message),
            );
        }
    };
    let outbox = Arc::new(Outbox::new(mcp.config.mcp.notification_buffer));
    let meta = json!({ META_SUBSCRIPTION_ID: id });
    let mut honoured = Vec::new();
    let mut tasks = Vec::new();
    for uri in requested {
        match mcp.open_live(&call.ctx, uri, true).await {
            Ok((path, events)) => {
                tasks.push(mcp.spawn_subscription(
                    call.ctx.clone(),
                    path,
                    uri.to_string(),
                    events,
                    outbox.clone(),
                    Some(meta.clone()),
                ));
                honoured.push(uri.to_string());
            }
            Err(error) => {
                tracing::debug!(uri, message = %error.message, "subscriptions/listen: not honoured");
            }
        }
    }
    let mut acknowledged = Map::new();
    if filter.contains_key("resourceSubscriptions") {
        acknowledged.insert("resourceSubscriptions".into(), json!(honoured));
    }
    let ack = jsonrpc::notification(
        "notifications/subscriptions/acknowledged",
        json!({"_meta": meta, "notifications": acknowledged}),
    );
    reply::notification_stream(
        mcp,
        reply::StreamPlan {
            prelude: vec![ack],
            outbox,
            cursor: 0,
            ids: reply::EventIds::None,
            prime: false,
            session: None,
            guard: Box::new((AbortOnDrop(tasks), slot)),
            ends_with_response: false,
            end_early: None,
            on_answered: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_revisions_initialize_with_meta_opens_a_session() {
        let with_meta = |version: &str| {
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25",
                "_meta": {META_PROTOCOL_VERSION: version},
            }})
        };
        assert!(!is_stateless(&with_meta("2025-11-25"), None, false));
        assert!(is_stateless(&with_meta(STATELESS_VERSION), None, false));
        // A version nobody speaks is answered by the stateless path, which
        // names the versions it does speak.
        assert!(is_stateless(&with_meta("2099-01-01"), None, false));
        assert!(is_stateless(
            &with_meta("2025-11-25"),
            Some(STATELESS_VERSION),
            false
        ));
    }
}
