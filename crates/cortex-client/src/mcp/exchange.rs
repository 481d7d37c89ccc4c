//! One JSON-RPC request and its reply over the pooled HTTP machinery.
//!
//! [`once`] sends a request through [`Engine::execute`](crate::engine::Engine::execute), so it is
//! retried, balanced and broken exactly like a Cortex call. The session of
//! the endpoint that `execute` picks supplies the headers and the body (the
//! shape differs between eras); an endpoint without one answers
//! `Unprepared`, and the session is opened there before trying again. A 404
//! on a request that carried a session id means the server forgot the
//! session: it is opened again once and the request repeated. A request
//! whose caller stops waiting is cancelled with `notifications/cancelled`.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::McpDialect;
use super::session::Session;
use super::transport::{DROPPED, TIMED_OUT, cancel, failure, net_op, read_answer};
use super::wire::{self, ACCEPT, Call, Reply};
use crate::engine::{Answer, Exchange, ServiceState};
use crate::error::McpError;
use cortex_discovery::Endpoint;

/// At most this many input requests in one `input_required` result.
const MAX_INPUT_REQUESTS: usize = 16;

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
            Box::pin(super::open::open(client, service, &endpoint)).await?;
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
