//! The Streamable HTTP endpoint: origin and header checks, sessions, the
//! routing of a POST to an era, and the SSE streams.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any};
use cortex_proto::LAST_EVENT_ID_HEADER;
use cortex_proto::sse::{self, Event};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::McpConfig;
use super::dispatch::{Call, Shared};
use super::jsonrpc::{
    self, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, Message, PARSE_ERROR, RpcError,
};
use super::session::{Full, Revision, Session};
use super::stateless;
use crate::config::ServiceConfig;
use crate::outbox::Outbox;
use crate::registry::{CallContext, Service};

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
const ALLOWED_METHODS: &str = "GET, POST, DELETE, OPTIONS";
const ALLOWED_HEADERS: &str = "content-type, accept, authorization, mcp-session-id, \
     mcp-protocol-version, mcp-method, mcp-name, last-event-id, x-request-id, idempotency-key";
const EXPOSED_HEADERS: &str = "mcp-session-id, mcp-protocol-version, x-request-id";

/// The `/mcp` route, for any state type of the router it joins.
pub(crate) fn endpoint<S>(
    service: Service,
    config: ServiceConfig,
    stopping: watch::Receiver<bool>,
) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    any(handle).with_state(Arc::new(Shared::new(service, config, stopping)))
}

async fn handle(
    State(mcp): State<Arc<Shared>>,
    method: Method,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(peer))| peer.ip());
    let origin = match check_origin(&mcp.config.mcp, &headers) {
        Ok(origin) => origin,
        Err(origin) => {
            tracing::warn!(%origin, "MCP request from a foreign Origin refused");
            return rpc_error(
                StatusCode::FORBIDDEN,
                None,
                &RpcError::new(
                    INVALID_REQUEST,
                    format!("Forbidden: Origin `{origin}` is not allowed"),
                ),
            );
        }
    };
    let mut response = match method {
        Method::POST => match body {
            Ok(body) => post(&mcp, &headers, body, peer).await,
            Err(rejection) => body_error(&rejection, mcp.config.max_body_bytes),
        },
        Method::GET => get(&mcp, &headers),
        Method::DELETE => delete(&mcp, &headers),
        Method::OPTIONS => preflight(),
        _ => {
            let mut response = rpc_error(
                StatusCode::METHOD_NOT_ALLOWED,
                None,
                &RpcError::new(
                    INVALID_REQUEST,
                    format!("{method} is not served at /mcp; use POST, GET or DELETE"),
                ),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
            response
        }
    };
    if let Some(origin) = origin {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(header::VARY, HeaderValue::from_static("origin"));
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED_HEADERS),
        );
    }
    response
}

/// `Ok(Some(origin))` for an allowed browser origin, `Ok(None)` when there
/// is no `Origin` (not a browser), `Err(origin)` for a foreign one.
pub(crate) fn check_origin(
    config: &McpConfig,
    headers: &HeaderMap,
) -> Result<Option<HeaderValue>, String> {
    let Some(value) = headers.get(header::ORIGIN) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let allowed_by_config = config
        .allowed_origins
        .iter()
        .any(|o| o == "*" || o.trim_end_matches('/').eq_ignore_ascii_case(&text));
    if allowed_by_config || is_loopback_origin(&text) {
        Ok(Some(value.clone()))
    } else {
        Err(String::from_utf8_lossy(value.as_bytes()).into_owned())
    }
}

/// `http(s)://localhost`, `127.0.0.1` or `[::1]`, any port.
fn is_loopback_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = if rest.starts_with('[') {
        rest.split_inclusive(']').next().unwrap_or_default()
    } else {
        rest.split(':').next().unwrap_or_default()
    };
    let port_ok = match &rest[host.len()..] {
        "" => true,
        port => port
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())),
    };
    port_ok && matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

fn preflight() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_METHODS, ALLOWED_METHODS),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOWED_HEADERS),
            (header::ACCESS_CONTROL_MAX_AGE, "600"),
        ],
    )
        .into_response()
}

/// A header as text, if present and readable.
pub(crate) fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// True unless `Accept` is present and rules `media` out.
pub(crate) fn accepts(headers: &HeaderMap, media: &str) -> bool {
    let mut present = false;
    let (kind, _) = media.split_once('/').unwrap_or((media, ""));
    for value in headers.get_all(header::ACCEPT).iter() {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            present = true;
            let mut parts = range.split(';');
            let name = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let matches = name == media || name == "*/*" || name == format!("{kind}/*");
            if matches && q > 0.0 {
                return true;
            }
        }
    }
    !present
}

/// A JSON-RPC error with an HTTP status.
pub(crate) fn rpc_error(status: StatusCode, id: Option<&Value>, error: &RpcError) -> Response {
    (status, axum::Json(jsonrpc::error(id, error))).into_response()
}

/// A JSON-RPC result, 200.
pub(crate) fn rpc_result(id: &Value, result: Value) -> Response {
    axum::Json(jsonrpc::result(id, result)).into_response()
}

/// 202 with no body: a notification or response was accepted.
pub(crate) fn accepted() -> Response {
    StatusCode::ACCEPTED.into_response()
}

/// 406.
pub(crate) fn not_acceptable(what: &str) -> Response {
    rpc_error(
        StatusCode::NOT_ACCEPTABLE,
        None,
        &RpcError::new(INVALID_REQUEST, format!("Not Acceptable: {what}")),
    )
}

fn body_error(rejection: &BytesRejection, limit: usize) -> Response {
    if let Some(timeout) = crate::conn::body_timed_out(rejection) {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            &RpcError::new(
                INVALID_REQUEST,
                format!(
                    "the request body did not arrive within {} s",
                    timeout.as_secs_f64()
                ),
            ),
        );
    }
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        rpc_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            &RpcError::new(
                INVALID_REQUEST,
                format!("request body is larger than {limit} bytes"),
            ),
        )
    } else {
        rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            &RpcError::new(
                INVALID_REQUEST,
                format!("could not read the request body: {rejection}"),
            ),
        )
    }
}

fn session_required() -> Response {
    rpc_error(
        StatusCode::BAD_REQUEST,
        None,
        &RpcError::new(
            INVALID_REQUEST,
            "Bad Request: the Mcp-Session-Id header is required; send `initialize` first \
             (or declare protocol version 2026-07-28 in _meta to be served without a session)",
        ),
    )
}

fn session_not_found() -> Response {
    rpc_error(
        StatusCode::NOT_FOUND,
        None,
        &RpcError::new(
            INVALID_REQUEST,
            "Session not found: it ended or expired; send `initialize` again",
        ),
    )
}

/// The session a request names, or the response refusing it.
fn session_of(
    mcp: &Shared,
    headers: &HeaderMap,
) -> Result<(Arc<Session>, Revision), Box<Response>> {
    let Some(id) = header_text(headers, SESSION_HEADER) else {
        return Err(Box::new(session_required()));
    };
    let Some(session) = mcp.sessions.get(id) else {
        return Err(Box::new(session_not_found()));
    };
    if !belongs_to_caller(&session) {
        return Err(Box::new(session_not_found()));
    }
    let revision = match header_text(headers, VERSION_HEADER) {
        None => session.revision,
        Some(declared) => match Revision::parse(declared) {
            Some(revision) => revision,
            None => return Err(Box::new(stateless::unsupported_version(None, declared))),
        },
    };
    session.touch();
    Ok((session, revision))
}

/// Whether the request's caller may use `session`. Another user's session
/// is not theirs to use, end or learn of (its notifications carry what the
/// owner subscribed to), so it answers as an unknown one would.
fn belongs_to_caller(session: &Session) -> bool {
    match session.owner.get() {
        None => true,
        Some(owner) => {
            crate::auth::current_caller().is_some_and(|caller| caller.user_id() == owner)
        }
    }
}

fn is_initialize(body: &Value) -> bool {
    body.get("method").and_then(Value::as_str) == Some("initialize")
}

async fn post(
    mcp: &Arc<Shared>,
    headers: &HeaderMap,
    body: Bytes,
    peer: Option<IpAddr>,
) -> Response {
    let content_type = header_text(headers, header::CONTENT_TYPE.as_str()).unwrap_or_default();
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/json")
    {
        return rpc_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            &RpcError::new(
                INVALID_REQUEST,
                "Unsupported Media Type: POST a JSON-RPC message as application/json",
            ),
        );
    }
    if !accepts(headers, "application/json") {
        return not_acceptable("the client must accept application/json");
    }
    let body: Value = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(error) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                None,
                &RpcError::new(PARSE_ERROR, format!("Parse error: {error}")),
            );
        }
    };
    let declared = header_text(headers, VERSION_HEADER);
    let has_session = header_text(headers, SESSION_HEADER).is_some();
    // A request declaring the stateless revision is served statelessly (a
    // session header on it is ignored, as that revision says).
    if stateless::is_stateless(&body, declared, has_session) {
        return stateless::post(mcp, headers, body).await;
    }
    if is_initialize(&body) {
        return initialize(mcp, body, peer);
    }
    if has_session {
        return match session_of(mcp, headers) {
            Ok((session, revision)) => session_post(mcp, headers, session, revision, body).await,
            Err(response) => *response,
        };
    }
    if let Some(declared) = declared.filter(|v| Revision::parse(v).is_none()) {
        let id = body.get("id").filter(|id| id.is_string() || id.is_number());
        return stateless::unsupported_version(id, declared);
    }
    if body
        .as_array()
        .is_some_and(|items| items.iter().any(is_initialize))
    {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            &RpcError::new(INVALID_REQUEST, "`initialize` must not be part of a batch"),
        );
    }
    session_required()
}

/// `initialize`: negotiates a revision and opens a session.
fn initialize(mcp: &Arc<Shared>, body: Value, peer: Option<IpAddr>) -> Response {
    let (id, params) = match Message::parse(body) {
        Ok(Message::Request { id, params, .. }) => (id, params),
        Ok(_) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                None,
                &RpcError::new(INVALID_REQUEST, "`initialize` must be a request with an id"),
            );
        }
        Err((id, error)) => return rpc_error(StatusCode::BAD_REQUEST, id.as_ref(), &error),
    };
    let Some(requested) = params.get("protocolVersion").and_then(Value::as_str) else {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            Some(&id),
            &RpcError::new(
                INVALID_PARAMS,
                "initialize needs a string `protocolVersion`",
            ),
        );
    };
    // A version not served is answered with the latest; the client decides
    // whether it can speak that.
    let revision = Revision::parse(requested).unwrap_or(Revision::V2025_11_25);
    mcp.sessions.start_sweeper(
        Arc::downgrade(mcp),
        |shared: &Shared| &shared.sessions,
        mcp.stopping.clone(),
    );
    // Sessions count against the client that opens them: the token's user
    // when the caller is authenticated (one user on many addresses is one
    // client), else the peer's address.
    let identity = match (crate::auth::current_caller(), peer) {
        (Some(caller), _) => format!("user:{}", caller.user_id()),
        (None, Some(ip)) => format!("ip:{ip}"),
        (None, None) => "unknown".to_string(),
    };
    let session = match mcp.sessions.create(revision, &identity) {
        Ok(session) => session,
        Err(full) => {
            let (status, message) = match full {
                Full::Table => {
                    tracing::warn!(
                        limit = mcp.config.mcp.max_sessions,
                        "MCP session table full; initialize refused"
                    );
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many open MCP sessions; try again later".to_string(),
                    )
                }
                Full::Client => {
                    tracing::debug!(
                        client = %identity,
                        limit = mcp.config.mcp.max_sessions_per_client,
                        "MCP client holds its maximum of sessions, all streaming; initialize refused"
                    );
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        format!(
                            "this client holds its maximum of {} MCP sessions, each with an open \
                             stream; end one (DELETE) or try again later",
                            mcp.config.mcp.max_sessions_per_client
                        ),
                    )
                }
            };
            let mut response =
                rpc_error(status, Some(&id), &RpcError::new(INTERNAL_ERROR, message));
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return response;
        }
    };
    if let Some(caller) = crate::auth::current_caller() {
        let _ = session.owner.set(caller.user_id().to_string());
    }
    let client = params.get("clientInfo").cloned().unwrap_or_default();
    tracing::debug!(session = %session.id, revision = revision.as_str(), %client, "MCP session opened");
    let result = json!({
        "protocolVersion": revision.as_str(),
        "capabilities": mcp.capabilities(true),
        "serverInfo": mcp.server_info(),
        "instructions": mcp.instructions(),
    });
    let mut response = rpc_result(&id, result);
    if let Ok(value) = HeaderValue::from_str(&session.id) {
        response.headers_mut().insert(SESSION_HEADER, value);
    }
    response
}

/// What one message of a POST came to.
enum Outcome {
    Reply(Value),
    /// A notification or response: nothing to send back.
    Accepted,
    /// Not a valid message (400 when it was the whole body).
    Invalid(Value),
}

async fn one_message(mcp: &Shared, call: &Call, message: Value) -> Outcome {
    match Message::parse(message) {
        Ok(Message::Request { id, method, params }) => {
            if method == "initialize" {
                return Outcome::Invalid(jsonrpc::error(
                    Some(&id),
                    &RpcError::new(INVALID_REQUEST, "`initialize` must not be part of a batch"),
                ));
            }
            match mcp.request(call, &method, &params).await {
                Ok(result) => Outcome::Reply(jsonrpc::result(&id, result)),
                Err(error) => Outcome::Reply(jsonrpc::error(Some(&id), &error)),
            }
        }
        Ok(Message::Notification { method }) => {
            if method == "notifications/initialized" {
                tracing::debug!("MCP client initialized");
            }
            Outcome::Accepted
        }
        Ok(Message::Response) => Outcome::Accepted,
        Err((id, error)) => Outcome::Invalid(jsonrpc::error(id.as_ref(), &error)),
    }
}

async fn session_post(
    mcp: &Arc<Shared>,
    headers: &HeaderMap,
    session: Arc<Session>,
    revision: Revision,
    body: Value,
) -> Response {
    if let Some(token) = streamed_progress(headers, &body) {
        // The stream outlives the request slot, so it holds a stream slot;
        // with none free the call is answered as JSON, without progress.
        if let Ok(slot) = mcp.service.stream_slot() {
            return streamed_call(mcp, headers, (session, revision), body, token, slot);
        }
    }
    let ctx = CallContext {
        notifier: Some(crate::notify::Notifier::new(
            session.outbox.clone(),
            session.log_level.clone(),
        )),
        ..CallContext::from_headers(headers.clone())
    };
    let call = Call {
        ctx,
        session: Some(session),
        structured: revision.has_structured_content(),
    };
    match body {
        Value::Array(items) => {
            if !revision.allows_batches() {
                return rpc_error(
                    StatusCode::BAD_REQUEST,
                    None,
                    &RpcError::new(
                        INVALID_REQUEST,
                        format!(
                            "JSON-RPC batches are not supported in protocol revision {} \
                             (they were removed after 2025-03-26); send one message per POST",
                            revision.as_str()
                        ),
                    ),
                );
            }
            if items.is_empty() {
                return rpc_error(
                    StatusCode::BAD_REQUEST,
                    None,
                    &RpcError::new(INVALID_REQUEST, "an empty batch is not a valid request"),
                );
            }
            // One idempotency key cannot belong to many calls.
            let call = Call {
                ctx: CallContext {
                    idempotency_key: None,
                    ..call.ctx.clone()
                },
                ..call
            };
            let replies: Vec<Value> = stream::iter(items)
                .map(|item| one_message(mcp, &call, item))
                .buffered(mcp.config.mcp.batch_concurrency.max(1))
                .filter_map(|outcome| async move {
                    match outcome {
                        Outcome::Reply(reply) | Outcome::Invalid(reply) => Some(reply),
                        Outcome::Accepted => None,
                    }
                })
                .collect()
                .await;
            if replies.is_empty() {
                accepted()
            } else {
                axum::Json(Value::Array(replies)).into_response()
            }
        }
        message => match one_message(mcp, &call, message).await {
            Outcome::Reply(reply) => axum::Json(reply).into_response(),
            Outcome::Accepted => accepted(),
            Outcome::Invalid(reply) => (StatusCode::BAD_REQUEST, axum::Json(reply)).into_response(),
        },
    }
}

/// The progress token of a request answered as an SSE stream: a single
/// `tools/call` whose `_meta` has a `progressToken` (a string or a number),
/// from a client whose `Accept` lists `text/event-stream`. Every other
/// request is answered as JSON.
fn streamed_progress(headers: &HeaderMap, body: &Value) -> Option<Value> {
    if body.get("method").and_then(Value::as_str) != Some("tools/call")
        || body.get("id").is_none()
        || headers.get(header::ACCEPT).is_none()
        || !accepts(headers, "text/event-stream")
    {
        return None;
    }
    body.get("params")?
        .get("_meta")?
        .get("progressToken")
        .filter(|t| t.is_string() || t.is_number())
        .cloned()
}

/// Ends the call's task when its stream is dropped (the client went away),
/// as a JSON answer's handler ends when its connection does.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Answers one `tools/call` as an SSE stream: the call's progress and log
/// messages as they come, then its response, then the stream ends. They
/// pass through a buffer of `notification_buffer` entries that drops its
/// oldest when a slow client lets it fill, so the handler never waits;
/// the response is queued last and nothing after it, so it is never the
/// one dropped. The stream has no event ids: it cannot be resumed. It holds
/// one of the service's stream slots.
fn streamed_call(
    mcp: &Arc<Shared>,
    headers: &HeaderMap,
    (session, revision): (Arc<Session>, Revision),
    body: Value,
    token: Value,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Response {
    let outbox = Arc::new(Outbox::new(mcp.config.mcp.notification_buffer));
    let notifier = crate::notify::Notifier::new(outbox.clone(), session.log_level.clone())
        .with_progress(token);
    let call = Call {
        ctx: CallContext {
            notifier: Some(notifier.clone()),
            ..CallContext::from_headers(headers.clone())
        },
        session: Some(session),
        structured: revision.has_structured_content(),
    };
    let shared = mcp.clone();
    let answer = {
        let outbox = outbox.clone();
        async move {
            let reply = match one_message(&shared, &call, body).await {
                Outcome::Reply(reply) | Outcome::Invalid(reply) => reply,
                Outcome::Accepted => return,
            };
            notifier.close();
            outbox.push(reply, None);
        }
    };
    // The task serves the same caller the request does.
    let task = match crate::auth::current_caller() {
        Some(caller) => tokio::spawn(crate::auth::serve_as(caller, answer)),
        None => tokio::spawn(answer),
    };
    notification_stream(
        mcp,
        StreamPlan {
            prelude: Vec::new(),
            outbox,
            cursor: 0,
            with_ids: false,
            session: None,
            guard: Box::new((AbortOnDrop(task.abort_handle()), slot)),
            ends_with_response: true,
        },
    )
}

/// `GET`: the session's server→client stream.
fn get(mcp: &Arc<Shared>, headers: &HeaderMap) -> Response {
    if !accepts(headers, "text/event-stream") || headers.get(header::ACCEPT).is_none() {
        return not_acceptable(
            "GET /mcp opens a text/event-stream; send Accept: text/event-stream",
        );
    }
    let (session, revision) = match session_of(mcp, headers) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let slot = match mcp.service.stream_slot() {
        Ok(slot) => slot,
        Err(error) => {
            return rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                &RpcError::new(INTERNAL_ERROR, error.message),
            );
        }
    };
    let resume = header_text(headers, LAST_EVENT_ID_HEADER).and_then(|id| id.parse::<u64>().ok());
    let cursor = resume.unwrap_or_else(|| session.outbox.delivered());
    // This stream replaces any earlier one of the session.
    session.stream_generation.send_modify(|g| *g += 1);
    notification_stream(
        mcp,
        StreamPlan {
            prelude: Vec::new(),
            outbox: session.outbox.clone(),
            cursor,
            with_ids: true,
            guard: Box::new((session.stream_guard(), slot)),
            session: Some((session, revision.primes_streams())),
            ends_with_response: false,
        },
    )
}

/// `DELETE`: ends the session.
fn delete(mcp: &Shared, headers: &HeaderMap) -> Response {
    let Some(id) = header_text(headers, SESSION_HEADER) else {
        return session_required();
    };
    if mcp
        .sessions
        .get(id)
        .is_some_and(|session| !belongs_to_caller(&session))
    {
        return session_not_found();
    }
    if mcp.sessions.remove(id) {
        tracing::debug!(session = id, "MCP session ended by the client");
        StatusCode::OK.into_response()
    } else {
        session_not_found()
    }
}

/// What an SSE notification stream carries.
pub(crate) struct StreamPlan {
    /// Messages sent first (the listen acknowledgement).
    pub(crate) prelude: Vec<Value>,
    pub(crate) outbox: Arc<Outbox>,
    /// Entries after this id are sent.
    pub(crate) cursor: u64,
    /// Send `id:` lines (resumable GET streams).
    pub(crate) with_ids: bool,
    /// The session whose stream this is, and whether to prime it; the
    /// stream ends when the session ends or a newer stream replaces it.
    pub(crate) session: Option<(Arc<Session>, bool)>,
    /// Dropped when the stream is.
    pub(crate) guard: Box<dyn Send>,
    /// End after sending a JSON-RPC response (a POST answered as a stream).
    pub(crate) ends_with_response: bool,
}

fn frame(message: &Value, id: Option<u64>) -> Bytes {
    let mut event = Event::message(message.to_string());
    if let Some(id) = id {
        event = event.with_id(id.to_string());
    }
    Bytes::from(sse::encode(&event).unwrap_or_default())
}

/// An SSE response fed from an outbox: `retry:` advice, the prelude, the
/// queued notifications, keep-alive comments while idle; it ends at
/// shutdown (and, for a session, when the session ends or another stream
/// replaces it).
pub(crate) fn notification_stream(mcp: &Shared, plan: StreamPlan) -> Response {
    let keep_alive = mcp.config.keep_alive;
    let retry_ms = mcp.config.stream_retry.as_millis() as u64;
    let mut first = format!("retry: {retry_ms}\n\n");
    if let Some((_, true)) = &plan.session {
        // A priming event: an id (and no data) the client can resume from.
        first.push_str(&format!("id: {}\ndata: \n\n", plan.cursor));
    }
    let mut pending: std::collections::VecDeque<Bytes> = std::collections::VecDeque::new();
    pending.push_back(Bytes::from(first));
    pending.extend(plan.prelude.iter().map(|m| frame(m, None)));
    let mut stopping = mcp.stopping.clone();
    let session = plan.session.map(|(session, _)| session);
    let end: BoxFuture<'static, ()> = match session.clone() {
        Some(session) => {
            let mut generation = session.stream_generation.subscribe();
            let mine = *generation.borrow_and_update();
            let mut closed = session.closed.subscribe();
            Box::pin(async move {
                tokio::select! {
                    _ = stopping.wait_for(|s| *s) => {}
                    _ = closed.wait_for(|c| *c) => {}
                    _ = generation.wait_for(|g| *g != mine) => {}
                }
            })
        }
        None => Box::pin(async move {
            let _ = stopping.wait_for(|s| *s).await;
        }),
    };
    struct Feed {
        pending: std::collections::VecDeque<Bytes>,
        outbox: Arc<Outbox>,
        changed: watch::Receiver<u64>,
        cursor: u64,
        with_ids: bool,
        end: BoxFuture<'static, ()>,
        session: Option<Arc<Session>>,
        keep_alive: std::time::Duration,
        ends_with_response: bool,
        answered: bool,
        _guard: Box<dyn Send>,
    }
    let feed = Feed {
        pending,
        changed: plan.outbox.watch(),
        outbox: plan.outbox,
        cursor: plan.cursor,
        with_ids: plan.with_ids,
        end,
        session,
        keep_alive,
        ends_with_response: plan.ends_with_response,
        answered: false,
        _guard: plan.guard,
    };
    let body: BoxStream<'static, Result<Bytes, std::io::Error>> =
        stream::unfold(feed, |mut feed| async move {
            loop {
                if let Some(bytes) = feed.pending.pop_front() {
                    return Some((Ok(bytes), feed));
                }
                if feed.answered {
                    return None;
                }
                feed.changed.borrow_and_update();
                let entries = feed.outbox.take_after(feed.cursor);
                if !entries.is_empty() {
                    for entry in entries {
                        feed.cursor = entry.id;
                        if feed.ends_with_response && entry.message.get("id").is_some() {
                            feed.answered = true;
                        }
                        let id = feed.with_ids.then_some(entry.id);
                        feed.pending.push_back(frame(&entry.message, id));
                    }
                    continue;
                }
                tokio::select! {
                    changed = feed.changed.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                    }
                    _ = tokio::time::sleep(feed.keep_alive) => {
                        if let Some(session) = &feed.session {
                            session.touch();
                        }
                        return Some((Ok(Bytes::from(sse::comment("keep-alive"))), feed));
                    }
                    _ = &mut feed.end => return None,
                }
            }
        })
        .boxed();
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_origins_only() {
        for ok in [
            "http://localhost",
            "http://localhost:6274",
            "https://127.0.0.1:9000",
            "http://[::1]:3000",
        ] {
            assert!(is_loopback_origin(ok), "{ok}");
        }
        for bad in [
            "http://evil.example.com",
            "http://localhost.evil.com",
            "http://127.0.0.1.nip.io",
            "http://localhost:80@evil.com",
            "null",
            "file://localhost",
        ] {
            assert!(!is_loopback_origin(bad), "{bad}");
        }
    }

    #[test]
    fn accept_ranges() {
        let mut headers = HeaderMap::new();
        assert!(accepts(&headers, "application/json"), "absent accepts all");
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        assert!(!accepts(&headers, "application/json"));
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        assert!(accepts(&headers, "application/json"));
        assert!(accepts(&headers, "text/event-stream"));
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/*;q=0"),
        );
        assert!(!accepts(&headers, "application/json"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(accepts(&headers, "text/event-stream"));
    }
}
