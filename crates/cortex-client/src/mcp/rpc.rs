//! One JSON-RPC exchange over the pooled HTTP machinery.
//!
//! [`call`] sends a request through [`Engine::execute`](crate::engine::Engine::execute), so it is
//! retried, balanced and broken exactly like a Cortex call. The session of
//! the endpoint that `execute` picks supplies the headers and the body (the
//! shape differs between eras); an endpoint without one answers
//! `Unprepared`, and the session is opened there before trying again. A 404
//! on a request that carried a session id means the server forgot the
//! session: it is opened again once and the request repeated.
//!
//! An answer is JSON, or an SSE stream carrying the reply after any
//! notifications. A stream that ends before the reply is resumed with a GET
//! carrying `Last-Event-ID`, backing off by the client's stream reconnect
//! policy (the server's `retry:` advice first, see
//! [`crate::stream::reconnect_policy`]). When the deadline passes first, the
//! server is told with `notifications/cancelled`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cortex_proto::sse::Decoder;
use cortex_resilience::reconnect::Reconnect;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::McpDialect;
use super::inflight::Tracker;
use super::session::{Era, Session};
use super::wire::{self, Operation, Reply};
use crate::engine::{Answer, Exchange, Prepared, ServiceState, lock};
use crate::error::McpError;
use crate::pool::PooledConn;
use cortex_discovery::Endpoint;

pub(crate) const ACCEPT: &str = "application/json, text/event-stream";

/// One request.
#[derive(Debug, Clone)]
pub(crate) struct Call<'a> {
    pub(crate) method: &'a str,
    pub(crate) params: Value,
    /// What it is about, for errors and metrics.
    pub(crate) op: Operation<'a>,
    /// Repeating it after it may have run is safe.
    pub(crate) idempotent: bool,
    /// Its progress, when the caller asked for it (`_meta.progressToken`).
    pub(crate) progress: Option<Arc<Tracker>>,
    /// Headers mirroring its arguments (a tool's `Mcp-Param-*`).
    pub(crate) headers: Vec<(String, String)>,
}

/// At most this many `input_required` rounds per request (2026-07-28):
/// a server that keeps asking cannot hold the call for ever.
const MAX_INPUT_ROUNDS: usize = 8;
/// At most this many input requests in one `input_required` result.
const MAX_INPUT_REQUESTS: usize = 16;

/// The longest a `notifications/cancelled` may take to send.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// Sends `call` to `service` through the session of whichever endpoint
/// `execute` chooses; returns that session and the result.
pub(crate) async fn call(
    client: &McpDialect,
    service: &Arc<ServiceState>,
    call: &Call<'_>,
) -> Result<(Arc<Session>, Value), McpError> {
    call_at(client, service, call, None).await
}

/// As [`call`], on `pin` alone when given (one replica's health check).
///
/// A result with `resultType: "input_required"` (2026-07-28's multi
/// round-trip requests) is answered: each of its `inputRequests` goes to
/// the application's [`ServerRequestHandler`](crate::server_requests::ServerRequestHandler), and the request
/// is sent again with the `inputResponses` and the server's
/// `requestState`, at most [`MAX_INPUT_ROUNDS`] times. A result with
/// `resultType: "task"` (the tasks extension) is followed to its end
/// (see [`super::tasks`]).
pub(crate) async fn call_at(
    client: &McpDialect,
    service: &Arc<ServiceState>,
    call: &Call<'_>,
    pin: Option<&Endpoint>,
) -> Result<(Arc<Session>, Value), McpError> {
    // The request as sent again after an `input_required` round; copied
    // only then.
    let mut round: Option<Call<'_>> = None;
    for _ in 0..=MAX_INPUT_ROUNDS {
        let (session, result) = once(client, service, round.as_ref().unwrap_or(call), pin).await?;
        match result.get("resultType").and_then(Value::as_str) {
            Some("input_required") => {}
            Some("task") => {
                let result = Box::pin(super::tasks::follow(
                    client, service, call, &session, result,
                ))
                .await?;
                return Ok((session, result));
            }
            _ => return Ok((session, result)),
        }
        // Boxed: rare, and its state would weigh on every call's future.
        let responses = Box::pin(answer_inputs(client, service, &session, call, &result)).await?;
        let round = round.get_or_insert_with(|| call.clone());
        let params = round.params.as_object_mut().ok_or_else(|| {
            failure(
                &service.name,
                &call.op,
                &session.endpoint.url,
                "the server asked for input on a request without parameters".into(),
            )
        })?;
        params.remove("inputResponses");
        params.remove("requestState");
        if let Some(responses) = responses {
            params.insert("inputResponses".into(), responses);
        }
        if let Some(state) = result.get("requestState") {
            params.insert("requestState".into(), state.clone());
        }
    }
    Err(failure(
        &service.name,
        &call.op,
        "",
        format!("the server still asked for input after {MAX_INPUT_ROUNDS} rounds"),
    ))
}

/// The `inputResponses` to an `input_required` result (`None` when it
/// asks for none, only carrying `requestState`).
pub(crate) async fn answer_inputs(
    client: &McpDialect,
    service: &ServiceState,
    session: &Session,
    call: &Call<'_>,
    result: &Value,
) -> Result<Option<Value>, McpError> {
    let fail = |message: String| failure(&service.name, &call.op, &session.endpoint.url, message);
    if result.get("inputRequests").is_none() && result.get("requestState").is_none() {
        return Err(fail(
            "an input_required result with neither inputRequests nor requestState".into(),
        ));
    }
    let Some(requests) = result.get("inputRequests") else {
        return Ok(None);
    };
    let requests = requests
        .as_object()
        .ok_or_else(|| fail("inputRequests is not an object".into()))?;
    if requests.len() > MAX_INPUT_REQUESTS {
        return Err(fail(format!(
            "{} input requests in one result (at most {MAX_INPUT_REQUESTS})",
            requests.len()
        )));
    }
    let Some(handler) = client.inner.requests.as_deref() else {
        return Err(fail(
            "the server asked for input and the client has no handler for server requests".into(),
        ));
    };
    let mut responses = serde_json::Map::new();
    for (key, request) in requests {
        let Some(method) = request.get("method").and_then(Value::as_str) else {
            return Err(fail(format!("input request {key:?} names no method")));
        };
        if !matches!(
            method,
            "elicitation/create" | "sampling/createMessage" | "roots/list"
        ) {
            return Err(fail(format!(
                "input request {key:?} asks {method}, which is not an input request"
            )));
        }
        let params = request.get("params").cloned().unwrap_or(Value::Null);
        let answer = handler
            .handle(&service.name, method, params)
            .await
            .map_err(|e| {
                fail(format!(
                    "input request {key:?} ({method}) was not answered: {e}"
                ))
            })?;
        responses.insert(key.clone(), answer);
    }
    Ok(Some(Value::Object(responses)))
}

/// One request and its reply. Dropped before the reply (the caller gave
/// up), the server is told with `notifications/cancelled`.
pub(crate) async fn once(
    client: &McpDialect,
    service: &Arc<ServiceState>,
    call: &Call<'_>,
    pin: Option<&Endpoint>,
) -> Result<(Arc<Session>, Value), McpError> {
    let mcp = &client.inner.mcp;
    let id = mcp.next_id();
    let mut guard = InFlight {
        client,
        service,
        id,
        session: None,
        armed: true,
    };
    // Copied only to carry a progress token.
    let stamped;
    let sent = match &call.progress {
        Some(tracker) => {
            let mut params = call.params.clone();
            if !params.is_object() {
                params = json!({});
            }
            params["_meta"]["progressToken"] = json!(id);
            mcp.track(id, tracker.clone());
            stamped = Call {
                params,
                ..call.clone()
            };
            &stamped
        }
        None => call,
    };
    let outcome = exchange(client, service, sent, pin, id, &mut guard).await;
    guard.armed = false;
    if let Some(tracker) = &call.progress {
        mcp.untrack(id);
        tracker.finish().await;
    }
    outcome
}

/// Sends request `id` until it is answered.
async fn exchange(
    client: &McpDialect,
    service: &Arc<ServiceState>,
    call: &Call<'_>,
    pin: Option<&Endpoint>,
    id: u64,
    guard: &mut InFlight<'_>,
) -> Result<(Arc<Session>, Value), McpError> {
    let mcp = &client.inner.mcp;
    let deadline = Instant::now() + service.config.request_timeout;
    let mut renewed = false;
    // Each turn either answers or opens one session (at most one per
    // endpoint) or renews one once: bounded.
    for _ in 0..8 {
        let prepare = |endpoint: &Endpoint| {
            mcp.session(&service.name, endpoint)
                .map(|session| session.prepare(call.method, &call.params, Some(id), &call.headers))
        };
        let mut exchange = Exchange::mcp(
            net_op(&call.op),
            Method::POST,
            Bytes::new(),
            ACCEPT,
            call.idempotent,
        );
        exchange.prepare = Some(&prepare);
        exchange.pin = pin.cloned();
        let (state, answer) = match client.execute(service, &exchange).await {
            Ok(answer) => answer,
            Err(error @ McpError::Timeout { .. }) => {
                // The request may be running somewhere: tell every session.
                for session in mcp.sessions_of(&service.name) {
                    cancel(client, service, &session, id, TIMED_OUT);
                }
                return Err(error);
            }
            Err(error) => return Err(error),
        };
        let endpoint = state.endpoint.clone();
        if let Answer::Unprepared = answer {
            // Boxed: once per session, and the handshake's state would
            // otherwise weigh on every call's future.
            Box::pin(super::session::open(client, service, &endpoint)).await?;
            continue;
        }
        let Some(session) = mcp.session(&service.name, &endpoint) else {
            continue; // closed meanwhile: open it again
        };
        match answer {
            Answer::Rejected { status, .. }
                if status == StatusCode::NOT_FOUND && session.has_id() && !renewed =>
            {
                tracing::info!(service = %service.name, endpoint = %endpoint.url, "MCP session expired; opening a new one");
                mcp.forget(&service.name, &session);
                renewed = true;
                continue;
            }
            answer => {
                guard.session = Some(session.clone());
                let reply =
                    read_answer(client, service, &session, call, id, answer, deadline).await?;
                return match reply {
                    Reply::Result(result) => Ok((session, result)),
                    error => Err(wire::error(&service.name, &call.op, error)),
                };
            }
        }
    }
    Err(failure(
        &service.name,
        &call.op,
        "",
        "no endpoint kept an MCP session".into(),
    ))
}

/// A request in flight: dropped while armed (the caller's future was
/// dropped before the reply), the server is told it can stop.
struct InFlight<'a> {
    client: &'a McpDialect,
    service: &'a Arc<ServiceState>,
    id: u64,
    /// The session the request went to, once known.
    session: Option<Arc<Session>>,
    armed: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        // Progress of a call nobody waits for goes nowhere.
        self.client.inner.mcp.untrack(self.id);
        if !self.armed {
            return;
        }
        let sessions = match &self.session {
            Some(session) => vec![session.clone()],
            // Not known which endpoint has it: every session is told
            // (servers ignore ids they do not know).
            None => self.client.inner.mcp.sessions_of(&self.service.name),
        };
        for session in sessions {
            cancel(self.client, self.service, &session, self.id, DROPPED);
        }
    }
}

const TIMED_OUT: &str = "the client's request timeout passed";
const DROPPED: &str = "the caller no longer waits for the result";

/// POSTs one message to `endpoint` with fixed `prepared` headers and body
/// (a handshake, a notification, an answer to the server); returns the raw
/// answer. Retried like any exchange, on that endpoint only.
pub(crate) async fn post(
    client: &McpDialect,
    service: &ServiceState,
    endpoint: &Endpoint,
    op: crate::operation::Operation<'_>,
    prepared: Prepared,
) -> Result<Answer, McpError> {
    let message = Message {
        method: Method::POST,
        op,
        accept: ACCEPT,
        last_event_id: None,
    };
    send(client, service, endpoint, prepared, message).await
}

/// GETs the event stream of `endpoint` (`stream` names it in metrics),
/// after `last_event_id` when given.
pub(crate) async fn get(
    client: &McpDialect,
    service: &ServiceState,
    endpoint: &Endpoint,
    stream: &str,
    prepared: Prepared,
    last_event_id: Option<String>,
) -> Result<Answer, McpError> {
    let op = crate::operation::Operation::Stream(stream);
    let message = Message {
        method: Method::GET,
        op,
        accept: "text/event-stream",
        last_event_id,
    };
    send(client, service, endpoint, prepared, message).await
}

/// DELETEs the session of `endpoint`.
pub(crate) async fn delete(
    client: &McpDialect,
    service: &ServiceState,
    endpoint: &Endpoint,
    prepared: Prepared,
) -> Result<Answer, McpError> {
    let op = crate::operation::Operation::Read("session");
    let message = Message {
        method: Method::DELETE,
        op,
        accept: ACCEPT,
        last_event_id: None,
    };
    send(client, service, endpoint, prepared, message).await
}

struct Message<'a> {
    method: Method,
    op: crate::operation::Operation<'a>,
    accept: &'static str,
    last_event_id: Option<String>,
}

async fn send(
    client: &McpDialect,
    service: &ServiceState,
    endpoint: &Endpoint,
    prepared: Prepared,
    message: Message<'_>,
) -> Result<Answer, McpError> {
    let prepare = move |_: &Endpoint| Some(prepared.clone());
    let mut exchange = Exchange::mcp(
        message.op,
        message.method,
        Bytes::new(),
        message.accept,
        true,
    );
    exchange.pin = Some(endpoint.clone());
    exchange.prepare = Some(&prepare);
    exchange.last_event_id = message.last_event_id;
    client
        .execute(service, &exchange)
        .await
        .map(|(_, answer)| answer)
}

/// The reply to `id` in an answer: its JSON body, its SSE stream (resumed
/// when cut), or, on the legacy SSE transport, the session's stream.
pub(crate) async fn read_answer(
    client: &McpDialect,
    service: &ServiceState,
    session: &Session,
    call: &Call<'_>,
    id: u64,
    answer: Answer,
    deadline: Instant,
) -> Result<Reply, McpError> {
    let fail = |message: String| failure(&service.name, &call.op, &session.endpoint.url, message);
    match answer {
        // The legacy SSE transport answers 202; the reply comes on its stream.
        Answer::Full { .. } if matches!(session.era, Era::Sse { .. }) => {
            let mut deadline = deadline;
            loop {
                return match session.await_reply(id, deadline).await {
                    Some(reply) => Ok(reply),
                    None if Instant::now() >= deadline && extended(call, &mut deadline) => {
                        if let Some(hub) = lock(&session.hub).as_ref() {
                            hub.expect(id);
                        }
                        continue;
                    }
                    None if Instant::now() >= deadline => {
                        cancel_one(client, service, session, id);
                        Err(timeout(service, &call.op))
                    }
                    None => Err(fail(
                        "the session's event stream ended before the reply".into(),
                    )),
                };
            }
        }
        Answer::Full { body, .. } => {
            let message: Value = serde_json::from_slice(&body)
                .map_err(|e| fail(format!("the answer is not JSON-RPC: {e}")))?;
            wire::reply_in(message, id)
                .ok_or_else(|| fail("the answer holds no reply to the request".into()))
        }
        Answer::Streaming { body, conn, .. } => {
            // Boxed: a stream's state would weigh on every JSON answer.
            Box::pin(read_stream(
                client, service, session, call, id, body, conn, deadline,
            ))
            .await
        }
        Answer::Rejected { status, body, .. } => {
            let reply = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(wire::parse_reply);
            Ok(reply.unwrap_or_else(|| Reply::Error {
                code: 0,
                message: format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&body)
                        .chars()
                        .take(300)
                        .collect::<String>()
                ),
                data: Value::Null,
            }))
        }
        Answer::Unprepared => Err(fail("the endpoint had no session".into())),
    }
}

/// Reads an SSE answer until the reply to `id`, resuming a cut stream.
#[allow(clippy::too_many_arguments)]
async fn read_stream(
    client: &McpDialect,
    service: &ServiceState,
    session: &Session,
    call: &Call<'_>,
    id: u64,
    mut body: Incoming,
    mut conn: PooledConn,
    mut deadline: Instant,
) -> Result<Reply, McpError> {
    let mut decoder = Decoder::new();
    // Resumes since the last message, and the wait before the next.
    let mut reconnect = Reconnect::new(crate::stream::reconnect_policy(&service.config));
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            // Progress since pushed the deadline out (when asked).
            Err(_) if extended(call, &mut deadline) => continue,
            Err(_) => {
                drop(conn); // closing the stream is the 2026-07-28 cancellation
                cancel_one(client, service, session, id);
                return Err(timeout(service, &call.op));
            }
            Ok(frame) => frame,
        };
        let data = match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
            // Ended (or cut) before the reply: resume after the last event.
            Some(Err(_)) | None => {
                let Some(last) = decoder
                    .last_event_id()
                    .filter(|id| !id.is_empty())
                    .map(str::to_string)
                else {
                    return Err(failure(&service.name, &call.op, &session.endpoint.url, "the answer stream ended before the reply (and cannot be resumed: no event id)".into()));
                };
                // The server's `retry:` wins; our backoff otherwise.
                let hint = decoder.retry().map(Duration::from_millis);
                let Some(wait) = reconnect.next_delay(hint) else {
                    return Err(failure(
                        &service.name,
                        &call.op,
                        &session.endpoint.url,
                        format!(
                            "gave up resuming the answer stream after {} attempt(s)",
                            reconnect.attempts()
                        ),
                    ));
                };
                if Instant::now() + wait >= deadline {
                    cancel_one(client, service, session, id);
                    return Err(timeout(service, &call.op));
                }
                tokio::time::sleep(wait).await;
                let answer = get(
                    client,
                    service,
                    &session.endpoint,
                    call.op.name(),
                    session.prepare_get(),
                    Some(last),
                )
                .await?;
                let Answer::Streaming {
                    body: next,
                    conn: next_conn,
                    ..
                } = answer
                else {
                    return Err(failure(
                        &service.name,
                        &call.op,
                        &session.endpoint.url,
                        "the server did not resume the answer stream".into(),
                    ));
                };
                (body, conn) = (next, next_conn);
                continue;
            }
        };
        let events = decoder.feed(&data).map_err(|e| {
            failure(
                &service.name,
                &call.op,
                &session.endpoint.url,
                format!("bad SSE: {e}"),
            )
        })?;
        for event in events {
            let Ok(message) = serde_json::from_str::<Value>(&event.data) else {
                continue; // a priming event (empty data) or a comment
            };
            // A message is progress: the next cut waits as little as the first.
            reconnect.reset();
            if !wire::is_reply_to(&message, id) {
                session.on_server_message(client, service, &message);
            } else if let Some(reply) = wire::parse_reply(message) {
                finish(body, conn);
                return Ok(reply);
            }
        }
    }
}

/// Whether progress pushed `deadline` out (the caller asked for that);
/// if so, `deadline` is the new one.
fn extended(call: &Call<'_>, deadline: &mut Instant) -> bool {
    let Some(tracker) = &call.progress else {
        return false;
    };
    let later = tracker.deadline(*deadline);
    if later > Instant::now() && later > *deadline {
        *deadline = later;
        true
    } else {
        false
    }
}

/// After the reply: keep the connection when the server ends the stream
/// at once (as it should), drop it otherwise.
fn finish(mut body: Incoming, conn: PooledConn) {
    tokio::spawn(async move {
        let ended = tokio::time::timeout(Duration::from_millis(200), async {
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    return false;
                }
            }
            true
        })
        .await;
        if let Ok(true) = ended {
            conn.release();
        }
    });
}

/// Sends one notification (no reply expected) through `session`.
pub(crate) async fn notify(
    client: &McpDialect,
    service: &ServiceState,
    session: &Session,
    method: &str,
    params: Value,
) -> Result<(), McpError> {
    let prepared = session.prepare_notification(method, params);
    match post(
        client,
        service,
        &session.endpoint,
        crate::operation::Operation::Read(method),
        prepared,
    )
    .await?
    {
        Answer::Rejected { status, body, .. } => Err(failure(
            &service.name,
            &Operation::Other(method),
            &session.endpoint.url,
            format!("HTTP {status}: {}", String::from_utf8_lossy(&body)),
        )),
        _ => Ok(()),
    }
}

/// Tells the server that request `id` is abandoned (handshake eras only;
/// the stateless revision cancels by closing the stream). Fire and forget.
fn cancel_one(client: &McpDialect, service: &ServiceState, session: &Session, id: u64) {
    if let Some(state) = client.inner.mcp.session(&service.name, &session.endpoint) {
        cancel(client, service, &state, id, TIMED_OUT);
    }
}

/// Sends `notifications/cancelled` for `id` from a task of its own, for
/// [`CANCEL_WAIT`] at most: the caller never waits for it. Nothing is
/// sent outside a runtime (the client is being torn down).
fn cancel(
    client: &McpDialect,
    service: &ServiceState,
    session: &Arc<Session>,
    id: u64,
    reason: &'static str,
) {
    if matches!(session.era, Era::Modern) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let (client, session) = (client.clone(), session.clone());
    let Ok(service) = client.service_state(&service.name) else {
        return;
    };
    runtime.spawn(async move {
        let params = json!({"requestId": id, "reason": reason});
        let sent = notify(
            &client,
            &service,
            &session,
            "notifications/cancelled",
            params,
        );
        match tokio::time::timeout(CANCEL_WAIT.min(service.config.request_timeout), sent).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::debug!(%error, "notifications/cancelled was not delivered")
            }
            Err(_) => tracing::debug!("notifications/cancelled took too long; given up"),
        }
    });
}

/// The error for a transport fault after the request was sent.
pub(crate) fn failure(
    service: &str,
    op: &Operation<'_>,
    endpoint: &str,
    message: String,
) -> McpError {
    match op {
        Operation::Read(uri) => McpError::ResourceRead {
            service: service.into(),
            uri: (*uri).into(),
            endpoint: endpoint.into(),
            attempts: 1,
            status: 200,
            message,
        },
        Operation::Tool(name) | Operation::Other(name) => McpError::ServiceCall {
            service: service.into(),
            tool: (*name).into(),
            endpoint: endpoint.into(),
            attempts: 1,
            status: 200,
            message,
        },
    }
}

pub(crate) fn timeout(service: &ServiceState, op: &Operation<'_>) -> McpError {
    McpError::Timeout {
        service: service.name.clone(),
        operation: op.name().into(),
        elapsed: service.config.request_timeout,
        attempts: 1,
    }
}

/// The network operation of an MCP call (metrics, and errors for 5xx).
pub(crate) fn net_op<'a>(op: &Operation<'a>) -> crate::operation::Operation<'a> {
    match *op {
        Operation::Tool(name) => crate::operation::Operation::Tool(name),
        Operation::Read(name) | Operation::Other(name) => crate::operation::Operation::Read(name),
    }
}
