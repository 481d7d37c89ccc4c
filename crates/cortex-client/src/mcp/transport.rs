//! The HTTP side of JSON-RPC messages: a POST, GET or DELETE through the
//! engine, and the answer read. An answer is JSON, or an SSE stream
//! carrying the reply after any notifications. A stream that ends before
//! the reply is resumed with a GET carrying `Last-Event-ID`, backing off by
//! the client's stream reconnect policy (the server's `retry:` advice
//! first, see [`crate::stream::reconnect_policy`]). When the deadline passes
//! first, the server is told with `notifications/cancelled`. What the
//! server sends a session on such streams (its own requests, answered here;
//! its notifications) is handled here too.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cortex_proto::sse::Decoder;
use cortex_resilience::reconnect::Reconnect;
use http::Method;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::McpDialect;
use super::session::{Era, Session};
use super::wire::{self, ACCEPT, Call, Operation, Reply};
use crate::engine::{Answer, Exchange, Prepared, ServiceState, lock};
use crate::error::McpError;
use crate::notifications::{ListKind, LogMessage};
use crate::pool::PooledConn;
use cortex_discovery::Endpoint;

/// The longest a `notifications/cancelled` may take to send.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

pub(crate) const TIMED_OUT: &str = "the client's request timeout passed";
pub(crate) const DROPPED: &str = "the caller no longer waits for the result";

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
                on_server_message(session, client, service, &message);
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
    method: &'static str,
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
pub(crate) fn cancel(
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

/// Answers what the server asks on a stream: `ping` with `{}`,
/// elicitation, sampling and roots with the application's handler
/// (see [`crate::server_requests`]), anything else, or anything without
/// a handler, with "method not found" at once. Notifications: log
/// messages, progress, cancellations of the server's own requests,
/// list changes (see [`on_notification`]).
pub(crate) fn on_server_message(
    session: &Session,
    client: &McpDialect,
    service: &ServiceState,
    message: &Value,
) {
    let Some(method) = message.get("method").and_then(Value::as_str) else {
        return; // a stray response: nothing waits for it here
    };
    let Some(id) = message.get("id") else {
        on_notification(session, client, service, method, message.get("params"));
        return;
    };
    let (method, id) = (method.to_string(), id.clone());
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    let mut prepared = session.prepare_get();
    if let Era::Sse { post_path, .. } = &session.era {
        prepared.path = Some(post_path.clone());
    }
    let (client, endpoint) = (client.clone(), session.endpoint.clone());
    let Ok(service) = client.service_state(&service.name) else {
        return;
    };
    let key = (service.name.clone(), endpoint.url.clone(), id.to_string());
    let reply = {
        let (client, service, endpoint) = (client.clone(), service.clone(), endpoint.clone());
        move |answer: Value| async move {
            let mut prepared = prepared;
            prepared.body = Some(Bytes::from(answer.to_string()));
            let sent = post(
                &client,
                &service,
                &endpoint,
                crate::operation::Operation::Read("reply"),
                prepared,
            )
            .await;
            if let Err(error) = sent {
                tracing::debug!(%error, "answer to a server request was not delivered");
            }
        }
    };
    // A task per request: a handler may wait on a person while the
    // stream goes on, and other requests are answered meanwhile. A
    // `notifications/cancelled` for it aborts the task: no answer.
    let refused = {
        let answer = json!({"jsonrpc": "2.0", "id": id, "error": {
            "code": crate::server_requests::INTERNAL_ERROR,
            "message": "the client is answering too many requests already",
        }});
        reply.clone()(answer)
    };
    let answering = {
        let (client, key) = (client.clone(), key.clone());
        async move {
            let answer = crate::server_requests::answer(
                client.inner.requests.as_deref(),
                &service.name,
                &id,
                &method,
                params,
            )
            .await;
            // Done before the answer goes: a late cancellation has
            // nothing left to stop.
            client.inner.mcp.handling.done(&key);
            reply(answer).await;
        }
    };
    client.inner.mcp.handling.spawn(key, answering, refused);
}

/// A notification from the server.
fn on_notification(
    session: &Session,
    client: &McpDialect,
    service: &ServiceState,
    method: &str,
    params: Option<&Value>,
) {
    let params = params.unwrap_or(&Value::Null);
    match method {
        "notifications/message" => {
            server_log(&service.name, params);
            if let (Some(handler), Some(message)) = (
                client.inner.notifications.as_ref(),
                LogMessage::from_params(params),
            ) {
                handler.log(&service.name, &message);
            }
        }
        "notifications/progress" => {
            let tracker = params
                .get("progressToken")
                .and_then(|token| client.inner.mcp.tracker(token));
            match tracker {
                Some(tracker) => tracker.push(params),
                None => tracing::debug!(%params, "progress for no call in flight; ignored"),
            }
        }
        "notifications/cancelled" => {
            let Some(id) = params.get("requestId") else {
                tracing::debug!(%params, "a cancellation without requestId; ignored");
                return;
            };
            let key = (
                service.name.clone(),
                session.endpoint.url.clone(),
                id.to_string(),
            );
            let stopped = client.inner.mcp.handling.cancel(&key);
            tracing::debug!(service = %service.name, request = %id, stopped, "the server cancelled its request");
        }
        other => {
            if let Some(list) = ListKind::of_notification(other) {
                client.list_changed(&service.name, list);
            }
        }
    }
}

/// A server's log message (`notifications/message`), as a `tracing` event
/// at its level: the server chooses what it sends with `logging/setLevel`.
fn server_log(service: &str, params: &Value) {
    let level = params
        .get("level")
        .and_then(Value::as_str)
        .unwrap_or("info");
    let logger = params.get("logger").and_then(Value::as_str).unwrap_or("");
    let data = params.get("data").unwrap_or(&Value::Null);
    match level {
        "debug" => {
            tracing::debug!(target: "cortex_client::mcp::server_log", service, logger, %data)
        }
        "info" | "notice" => {
            tracing::info!(target: "cortex_client::mcp::server_log", service, logger, %data);
        }
        "warning" => {
            tracing::warn!(target: "cortex_client::mcp::server_log", service, logger, %data)
        }
        _ => {
            tracing::error!(target: "cortex_client::mcp::server_log", service, logger, level, %data)
        }
    }
}
