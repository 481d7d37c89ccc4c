//! The Streamable HTTP endpoint: origin and header checks, sessions, the
//! routing of a POST to an era, and the SSE streams.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any};
use cortex_proto::LAST_EVENT_ID_HEADER;
use futures::StreamExt;
use futures::stream;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::McpConfig;
use super::dispatch::{Call, Shared};
use super::jsonrpc::{
    self, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, Message, PARSE_ERROR, RpcError,
};
use super::reply::{
    EventIds, StreamPlan, accepted, accepts, header_text, not_acceptable, notification_stream,
    rpc_error, rpc_result,
};
use super::session::{Full, Revision, Session};
use super::stateless;
use crate::call::TakenHeaders;
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
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    TakenHeaders(headers): TakenHeaders,
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
            Ok(body) => post(&mcp, headers, body, peer).await,
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
    headers: HeaderMap,
    body: Bytes,
    peer: Option<IpAddr>,
) -> Response {
    let content_type = header_text(&headers, header::CONTENT_TYPE.as_str()).unwrap_or_default();
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
    if !accepts(&headers, "application/json") {
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
    let declared = header_text(&headers, VERSION_HEADER);
    let has_session = header_text(&headers, SESSION_HEADER).is_some();
    // A request declaring the stateless revision is served statelessly (a
    // session header on it is ignored, as that revision says).
    if stateless::is_stateless(&body, declared, has_session) {
        return stateless::post(mcp, &headers, body).await;
    }
    if is_initialize(&body) {
        return initialize(mcp, body, peer);
    }
    if has_session {
        return match session_of(mcp, &headers) {
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
    let _ = session
        .client_capabilities
        .set(crate::ask::ClientCapabilities::declared(
            params.get("capabilities"),
        ));
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
    Reply(jsonrpc::Response),
    /// A notification or response: nothing to send back.
    Accepted,
    /// Not a valid message (400 when it was the whole body).
    Invalid(jsonrpc::Response),
}

async fn one_message(mcp: &Shared, call: Call, message: Value) -> Outcome {
    match Message::parse(message) {
        Ok(Message::Request { id, method, params }) => {
            if method == "initialize" {
                return Outcome::Invalid(jsonrpc::Response::error(
                    Some(id),
                    RpcError::new(INVALID_REQUEST, "`initialize` must not be part of a batch"),
                ));
            }
            match mcp.request(call, &method, params).await {
                Ok(result) => Outcome::Reply(jsonrpc::Response::result(id, result)),
                Err(error) => Outcome::Reply(jsonrpc::Response::error(Some(id), error)),
            }
        }
        Ok(Message::Notification { method }) => {
            if method == "notifications/initialized" {
                tracing::debug!("MCP client initialized");
            }
            Outcome::Accepted
        }
        Ok(Message::Response { id, answer }) => {
            // Only the session that was asked can answer (its requests are
            // authenticated as its owner's), and only an id it waits on.
            let known = call
                .session
                .as_ref()
                .is_some_and(|session| session.pending.answer(&id, answer));
            if known {
                Outcome::Accepted
            } else {
                let message = format!("no request of this session awaits an answer with id {id}");
                Outcome::Invalid(jsonrpc::Response::error(
                    Some(id),
                    RpcError::new(INVALID_REQUEST, message),
                ))
            }
        }
        Err((id, error)) => Outcome::Invalid(jsonrpc::Response::error(id, error)),
    }
}

async fn session_post(
    mcp: &Arc<Shared>,
    headers: HeaderMap,
    session: Arc<Session>,
    revision: Revision,
    body: Value,
) -> Response {
    if streams_answer(&headers, &body) {
        match streamed_progress(&body) {
            // The stream outlives the request slot, so it holds a stream
            // slot; with none free the call is answered as JSON, without
            // progress.
            Some(token) => {
                if let Ok(slot) = mcp.service.stream_slot() {
                    return answered_call(
                        mcp,
                        headers,
                        (session, revision),
                        body,
                        Some((token, slot)),
                    )
                    .await;
                }
            }
            None => return answered_call(mcp, headers, (session, revision), body, None).await,
        }
    }
    let ctx = CallContext {
        notifier: Some(crate::notify::Notifier::new(
            session.outbox.clone(),
            session.log_level.clone(),
        )),
        ..CallContext::from_headers(headers)
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
                .map(|item| one_message(mcp, call.clone(), item))
                .buffered(mcp.config.mcp.batch_concurrency.max(1))
                .filter_map(|outcome| async move {
                    match outcome {
                        Outcome::Reply(reply) | Outcome::Invalid(reply) => Some(reply.into_value()),
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
        message => match one_message(mcp, call, message).await {
            Outcome::Reply(reply) => axum::Json(reply).into_response(),
            Outcome::Accepted => accepted(),
            Outcome::Invalid(reply) => (StatusCode::BAD_REQUEST, axum::Json(reply)).into_response(),
        },
    }
}

/// Whether a request's answer may become an SSE stream: a single
/// `tools/call` request from a client whose `Accept` lists
/// `text/event-stream`. Every other request is answered as JSON.
fn streams_answer(headers: &HeaderMap, body: &Value) -> bool {
    body.get("method").and_then(Value::as_str) == Some("tools/call")
        && body
            .get("id")
            .is_some_and(|id| id.is_string() || id.is_number())
        && body.get("jsonrpc").and_then(Value::as_str) == Some("2.0")
        && body
            .get("params")
            .is_none_or(|p| p.is_object() || p.is_null())
        && headers.get(header::ACCEPT).is_some()
        && accepts(headers, "text/event-stream")
}

/// The `_meta.progressToken` (a string or a number) of a request.
fn streamed_progress(body: &Value) -> Option<Value> {
    body.get("params")?
        .get("_meta")?
        .get("progressToken")
        .filter(|t| t.is_string() || t.is_number())
        .cloned()
}

/// The task of a call answered through its own outbox. Dropping this (the
/// client went away, as a JSON answer's handler ends when its connection
/// does) ends the call and forgets its stream, unless the handler ended
/// the stream itself ([`CallContext::end_stream`]): then the call goes on
/// and the client resumes.
struct CallTask {
    /// `None`: the call had finished when its answer became a stream.
    task: Option<tokio::task::AbortHandle>,
    ended_by_handler: watch::Receiver<bool>,
    session: Arc<Session>,
    key: u64,
}

impl Drop for CallTask {
    fn drop(&mut self) {
        if !*self.ended_by_handler.borrow() {
            if let Some(task) = &self.task {
                task.abort();
            }
            self.session.forget_call_stream(self.key);
        }
    }
}

/// A call's response (`None`: the message was not a request), boxed so
/// that it can start in the request's task and move, already started, to a
/// task of its own.
type CallFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<jsonrpc::Response>> + Send>>;

/// Runs a call in a task of its own, as the request's caller; its
/// response is queued in `outbox`, last (its notifier closed first, so
/// nothing follows it).
fn spawn_call(
    answer: CallFuture,
    notifier: crate::notify::Notifier,
    outbox: Arc<Outbox>,
) -> tokio::task::JoinHandle<()> {
    let answer = async move {
        if let Some(reply) = answer.await {
            notifier.close();
            outbox.push(reply.into_value(), None);
        }
    };
    match crate::auth::current_caller() {
        Some(caller) => tokio::spawn(crate::auth::serve_as(caller, answer)),
        None => tokio::spawn(answer),
    }
}

/// Answers one `tools/call` from a client accepting `text/event-stream`.
/// The call queues what it sends in an outbox of its own: requests to the client ([`CallContext::elicit`],
/// [`CallContext::sample`]), progress (with a progress token), then its
/// response. With a progress token the answer is an SSE stream from the
/// start, and the call runs in a task of its own; without one it runs in
/// the request's task and is answered as JSON, unless it asks its client
/// something or ends its stream before its response: then it moves to a
/// task of its own and its answer becomes an SSE stream. The outbox holds `notification_buffer`
/// entries and drops its oldest when a slow client lets it fill, so the
/// handler never waits; the response is queued last and nothing after it.
///
/// On a session at 2025-11-25 or later the stream is resumable: a priming
/// event, event ids `c<stream>-<n>`, and the session keeps the outbox (up
/// to `max_resumable_streams`) so a `GET` with `Last-Event-ID` continues
/// it. A stream holds one of the service's stream slots.
async fn answered_call(
    mcp: &Arc<Shared>,
    headers: HeaderMap,
    (session, revision): (Arc<Session>, Revision),
    body: Value,
    progress: Option<(Value, Option<tokio::sync::OwnedSemaphorePermit>)>,
) -> Response {
    let request_id = body.get("id").cloned().unwrap_or_default();
    let key = session.next_stream_key();
    let outbox = Arc::new(Outbox::new(mcp.config.mcp.notification_buffer));
    let resumable = session.revision.primes_streams();
    let end = Arc::new(watch::Sender::new(false));
    let (notifier, slot) = match progress {
        Some((token, slot)) => (
            crate::notify::Notifier::new(outbox.clone(), session.log_level.clone())
                .with_progress(token),
            Some(slot),
        ),
        None => (
            crate::notify::Notifier::new(session.outbox.clone(), session.log_level.clone()),
            None,
        ),
    };
    let call = Call {
        ctx: CallContext {
            notifier: Some(notifier.clone()),
            stream: Some(crate::ask::CallStream {
                outbox: outbox.clone(),
                pending: session.pending.clone(),
                capabilities: session.capabilities(),
                timeout: mcp.config.mcp.client_request_timeout,
                end: end.clone(),
                resumable,
            }),
            ..CallContext::from_headers(headers)
        },
        session: Some(session.clone()),
        structured: revision.has_structured_content(),
    };
    let shared = mcp.clone();
    let mut answer: CallFuture = Box::pin(async move {
        match one_message(&shared, call, body).await {
            Outcome::Reply(reply) | Outcome::Invalid(reply) => Some(reply),
            Outcome::Accepted => None,
        }
    });
    let (task, slot) = match slot {
        // With a progress token the answer is a stream from the start.
        Some(slot) => (Some(spawn_call(answer, notifier, outbox.clone())), slot),
        None => {
            // Most calls answer without asking their client anything: they
            // run here, in the request's own task, and are answered as
            // JSON. Only a call that sends something before its response,
            // or ends its stream, moves to a task of its own (the boxed
            // future moves, already started) and is answered as a stream.
            let mut changed = outbox.watch();
            let mut ended = end.subscribe();
            let outcome = loop {
                // The outbox's latest id: anything queued at all.
                if *changed.borrow_and_update() > 0 || *ended.borrow_and_update() {
                    break None;
                }
                tokio::select! {
                    biased;
                    reply = &mut answer => break Some(reply),
                    _ = changed.changed() => {}
                    _ = ended.changed() => {}
                }
            };
            let finished = outcome.is_some();
            if let Some(reply) = outcome {
                // Nothing queued before the response (the latest id is 0),
                // no stream ended: answered as JSON, the response handed
                // over as it is, never queued.
                let quiet = *changed.borrow() == 0 && !*ended.borrow();
                match reply {
                    Some(reply) if quiet => {
                        notifier.close();
                        return axum::Json(reply).into_response();
                    }
                    None if quiet => {
                        return rpc_error(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            Some(&request_id),
                            &RpcError::new(INTERNAL_ERROR, "the call ended without an answer"),
                        );
                    }
                    // Its stream carries what it queued, then the response.
                    Some(reply) => {
                        notifier.close();
                        outbox.push(reply.into_value(), None);
                    }
                    None => {}
                }
            }
            let slot = match mcp.service.stream_slot() {
                Ok(slot) => slot,
                Err(error) => {
                    return rpc_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        Some(&request_id),
                        &RpcError::new(INTERNAL_ERROR, error.message),
                    );
                }
            };
            // A finished call has nothing left to run: its stream is what
            // it queued.
            (
                if finished {
                    None
                } else {
                    Some(spawn_call(answer, notifier, outbox.clone()))
                },
                slot,
            )
        }
    };
    let guard = CallTask {
        task: task.map(|t| t.abort_handle()),
        ended_by_handler: end.subscribe(),
        session: session.clone(),
        key,
    };
    if resumable {
        session.keep_call_stream(key, outbox.clone());
    }
    let forget = {
        let session = session.clone();
        Box::new(move || session.forget_call_stream(key)) as Box<dyn FnOnce() + Send>
    };
    notification_stream(
        mcp,
        StreamPlan {
            prelude: Vec::new(),
            outbox,
            cursor: 0,
            ids: if resumable {
                EventIds::Call(key)
            } else {
                EventIds::None
            },
            prime: resumable,
            session: Some((session, false)),
            guard: Box::new((guard, slot)),
            ends_with_response: true,
            end_early: Some(end.subscribe()),
            on_answered: Some(forget),
        },
    )
}

/// A call stream's event id, `c<stream>-<n>`: the stream's key and the
/// position in it.
fn call_event_id(id: &str) -> Option<(u64, u64)> {
    let (key, position) = id.strip_prefix('c')?.split_once('-')?;
    Some((key.parse().ok()?, position.parse().ok()?))
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
    let last_event_id = header_text(headers, LAST_EVENT_ID_HEADER);
    if let Some((key, cursor)) = last_event_id.and_then(call_event_id)
        && let Some(outbox) = session.call_stream(key)
    {
        // The rest of a call's response stream, up to its response; it does
        // not replace the session's own stream.
        let forget = {
            let session = session.clone();
            Box::new(move || session.forget_call_stream(key)) as Box<dyn FnOnce() + Send>
        };
        return notification_stream(
            mcp,
            StreamPlan {
                prelude: Vec::new(),
                outbox,
                cursor,
                ids: EventIds::Call(key),
                prime: false,
                guard: Box::new((session.stream_guard(), slot)),
                session: Some((session, false)),
                ends_with_response: true,
                end_early: None,
                on_answered: Some(forget),
            },
        );
    }
    // An id of a call stream no longer kept starts the session's stream
    // from now.
    let resume = last_event_id.and_then(|id| id.parse::<u64>().ok());
    let cursor = resume.unwrap_or_else(|| session.outbox.delivered());
    // This stream replaces any earlier one of the session.
    session.stream_generation.send_modify(|g| *g += 1);
    notification_stream(
        mcp,
        StreamPlan {
            prelude: Vec::new(),
            outbox: session.outbox.clone(),
            cursor,
            ids: EventIds::Plain,
            prime: revision.primes_streams(),
            guard: Box::new((session.stream_guard(), slot)),
            session: Some((session, true)),
            ends_with_response: false,
            end_early: None,
            on_answered: None,
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
}
