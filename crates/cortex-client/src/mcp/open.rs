//! Opening an MCP session, on first use of an endpoint.
//!
//! Opening one finds out which MCP the endpoint speaks, in this order:
//!
//! 1. `initialize` offering 2025-11-25 (the server may counter with
//!    2025-06-18, 2025-03-26 or 2024-11-05), then
//!    `notifications/initialized`; `Mcp-Session-Id` and
//!    `MCP-Protocol-Version` go with every later request.
//! 2. When that is refused with an error only a stateless (2026-07-28)
//!    server gives (`UnsupportedProtocolVersionError` listing 2026-07-28, a
//!    header mismatch, or `initialize` being an unknown method), the
//!    stateless revision: `server/discover`, then every request carries
//!    `_meta` and the `Mcp-Method` / `Mcp-Name` headers, and no session.
//! 3. When it is refused with 400, 404 or 405 otherwise, the legacy HTTP+SSE
//!    transport (2024-11-05): a GET whose first event names the URL to POST
//!    to; replies come back on that stream.
//!
//! Handshake first (not a stateless probe first, as the 2026-07-28 text
//! allows) because every server deployed today answers it, and a probe that
//! a legacy server answers with a lenient `{}` would be misread as modern.

use std::collections::HashMap;
use std::sync::Arc;

use cortex_proto::sse::Decoder;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::McpDialect;
use super::hub::{self, Reader};
use super::session::{
    Era, INITIALIZE_ID, Session, agreed, discover_call, initialize_call, initialize_params,
};
use super::transport;
use super::wire::{self, HANDSHAKE_VERSIONS, MODERN_VERSION, Operation, Reply};
use crate::engine::{Answer, Prepared, ServiceState, lock};
use crate::error::McpError;
use cortex_discovery::Endpoint;

/// The session of `endpoint`, opened now unless another call just did.
pub(crate) async fn open(
    client: &McpDialect,
    service: &Arc<ServiceState>,
    endpoint: &Endpoint,
) -> Result<Arc<Session>, McpError> {
    let mcp = &client.inner.mcp;
    let gate = mcp.gate(&service.name, endpoint);
    let _open = gate.lock().await;
    if let Some(session) = mcp.session(&service.name, endpoint) {
        return Ok(session);
    }
    // Shared by every caller: opened as the client, never as the caller
    // whose call happened to open it.
    let session = crate::forward::as_client(handshake(client, service, endpoint)).await?;
    tracing::info!(service = %service.name, endpoint = %endpoint.url, era = ?session.era, "MCP session open");
    mcp.insert(&service.name, session.clone());
    if client.listens() && matches!(session.era, Era::Streamable { .. }) {
        // The server's own requests (not answers to ours) come on the
        // session's standalone stream: open it now, in the background. A
        // server that offers none (405) only sends requests in answers.
        let (client, service, session) = (client.clone(), service.clone(), session.clone());
        tokio::spawn(async move {
            if let Err(error) =
                crate::forward::as_client(super::hub::hub_of(&client, &service, &session)).await
            {
                tracing::debug!(%error, "no standalone event stream: server requests come only in answers");
            }
        });
    }
    Ok(session)
}

async fn handshake(
    client: &McpDialect,
    service: &Arc<ServiceState>,
    endpoint: &Endpoint,
) -> Result<Arc<Session>, McpError> {
    let deadline = Instant::now() + service.config.request_timeout;
    let offered = Session::new(
        endpoint.clone(),
        Era::Streamable {
            version: HANDSHAKE_VERSIONS[0].into(),
            id: None,
        },
        &Value::Null,
    );
    let answer = initialize(client, service, &offered).await?;
    let (answer, headers) = match answer {
        Answer::Rejected { status, body, .. } => {
            if wire::is_modern_error(&body) || unknown_method(&body) {
                return modern(client, service, endpoint, deadline).await;
            }
            if matches!(status.as_u16(), 400 | 404 | 405) {
                return open_sse(client, service, endpoint).await;
            }
            let message: String = String::from_utf8_lossy(&body).chars().take(300).collect();
            return Err(transport::failure(
                &service.name,
                &Operation::Other("initialize"),
                &endpoint.url,
                format!("HTTP {status}: {message}"),
            ));
        }
        Answer::Full { ref headers, .. } | Answer::Streaming { ref headers, .. } => {
            let headers = headers.clone();
            (answer, headers)
        }
        Answer::Unprepared => {
            return Err(transport::failure(
                &service.name,
                &Operation::Other("initialize"),
                &endpoint.url,
                "no session".into(),
            ));
        }
    };
    let id = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let provisional = Session::new(
        endpoint.clone(),
        Era::Streamable {
            version: HANDSHAKE_VERSIONS[0].into(),
            id: id.clone(),
        },
        &Value::Null,
    );
    let reply = transport::read_answer(
        client,
        service,
        &provisional,
        &initialize_call(client.capabilities()),
        INITIALIZE_ID,
        answer,
        deadline,
    )
    .await?;
    let result = match reply {
        Reply::Result(result) => result,
        Reply::Error { code, ref data, .. }
            if wire::code::UNSUPPORTED_VERSION.contains(&code) && wire::supports_modern(data)
                || code == wire::code::METHOD_NOT_FOUND =>
        {
            return modern(client, service, endpoint, deadline).await;
        }
        error => {
            return Err(wire::error(
                &service.name,
                &Operation::Other("initialize"),
                error,
            ));
        }
    };
    // A server of the stateless revision may answer `initialize` with its
    // own version: it is spoken to as the stateless revision from here.
    if result.get("protocolVersion").and_then(Value::as_str) == Some(MODERN_VERSION) {
        return modern(client, service, endpoint, deadline).await;
    }
    let session = agreed(&service.name, endpoint, &result, |version| {
        Era::Streamable { version, id }
    })?;
    let session = Arc::new(session);
    transport::notify(
        client,
        service,
        &session,
        "notifications/initialized",
        json!({}),
    )
    .await?;
    Ok(session)
}

/// Sends `initialize` through `session` (its era decides the shape).
pub(crate) async fn initialize(
    client: &McpDialect,
    service: &ServiceState,
    session: &Session,
) -> Result<Answer, McpError> {
    let prepared = session.prepare(
        "initialize",
        &initialize_params(client.capabilities()),
        Some(INITIALIZE_ID),
        &[],
    );
    transport::post(
        client,
        service,
        &session.endpoint,
        crate::operation::Operation::Read("initialize"),
        prepared,
    )
    .await
}

/// Whether a rejected `initialize` says the method does not exist (a
/// stateless server).
fn unknown_method(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(wire::parse_reply)
        .is_some_and(|r| {
            matches!(
                r,
                Reply::Error {
                    code: wire::code::METHOD_NOT_FOUND,
                    ..
                }
            )
        })
}

/// The stateless revision: `server/discover` confirms it.
async fn modern(
    client: &McpDialect,
    service: &ServiceState,
    endpoint: &Endpoint,
    deadline: Instant,
) -> Result<Arc<Session>, McpError> {
    let session =
        Session::new(endpoint.clone(), Era::Modern, &Value::Null).declaring(client.capabilities());
    let id = client.inner.mcp.next_id();
    let call = discover_call();
    let prepared = session.prepare(call.method, &call.params, Some(id), &[]);
    let answer = transport::post(
        client,
        service,
        endpoint,
        crate::operation::Operation::Read("server/discover"),
        prepared,
    )
    .await?;
    match transport::read_answer(client, service, &session, &call, id, answer, deadline).await? {
        Reply::Result(result) if wire::supports_modern(&result) => Ok(Arc::new(
            Session::new(endpoint.clone(), Era::Modern, &result).declaring(client.capabilities()),
        )),
        Reply::Result(result) => Err(transport::failure(
            &service.name,
            &call.op,
            &endpoint.url,
            format!("server/discover lists no version this client speaks: {result}"),
        )),
        error => Err(wire::error(&service.name, &call.op, error)),
    }
}

/// Ends every session of the client: DELETE where the server gave an id,
/// and the event streams closed.
pub(crate) async fn close_all(client: &McpDialect, sessions: Vec<(String, Arc<Session>)>) {
    let mut by_service: HashMap<String, Vec<Arc<Session>>> = HashMap::new();
    for (service, session) in sessions {
        by_service.entry(service).or_default().push(session);
    }
    for (service, sessions) in by_service {
        let Ok(state) = client.service_state(&service) else {
            continue;
        };
        for session in sessions {
            if let Some(hub) = lock(&session.hub).take() {
                hub.stop();
            }
            if session.has_id() {
                let answer =
                    transport::delete(client, &state, &session.endpoint, session.prepare_get())
                        .await;
                tracing::debug!(endpoint = %session.endpoint.url, ok = answer.is_ok(), "MCP session deleted");
            }
        }
    }
}

/// Opens a session on the HTTP+SSE transport (2024-11-05): GET the
/// endpoint, wait for its `endpoint` event, then the handshake over it.
pub(crate) async fn open_sse(
    client: &McpDialect,
    service: &Arc<ServiceState>,
    endpoint: &Endpoint,
) -> Result<Arc<Session>, McpError> {
    let fail = |message: String| {
        transport::failure(
            &service.name,
            &Operation::Other("initialize"),
            &endpoint.url,
            message,
        )
    };
    let answer =
        transport::get(client, service, endpoint, "sse", Prepared::default(), None).await?;
    let Answer::Streaming { mut body, conn, .. } = answer else {
        return Err(fail(
            "the endpoint speaks neither Streamable HTTP nor the HTTP+SSE transport".into(),
        ));
    };
    let deadline = Instant::now() + service.config.request_timeout;
    let mut decoder = Decoder::new();
    let post_path = loop {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .map_err(|_| fail("no `endpoint` event".into()))?;
        let Some(Ok(frame)) = frame else {
            return Err(fail(
                "the SSE stream ended before its `endpoint` event".into(),
            ));
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let events = decoder
            .feed(&data)
            .map_err(|e| fail(format!("bad SSE: {e}")))?;
        if let Some(event) = events
            .iter()
            .find(|e| e.event.as_deref() == Some("endpoint"))
        {
            break relative(&event.data);
        }
    };
    let session = Arc::new(Session::new(
        endpoint.clone(),
        Era::Sse {
            version: HANDSHAKE_VERSIONS[0].into(),
            post_path: post_path.clone(),
        },
        &Value::Null,
    ));
    let hub = hub::start(
        client,
        service.clone(),
        &session,
        Reader {
            body,
            _conn: conn,
            decoder,
        },
        false,
    );
    *lock(&session.hub) = Some(hub.clone());
    let answer = initialize(client, service, &session).await?;
    let reply = transport::read_answer(
        client,
        service,
        &session,
        &initialize_call(client.capabilities()),
        INITIALIZE_ID,
        answer,
        deadline,
    )
    .await?;
    let Reply::Result(result) = reply else {
        hub.stop();
        return Err(wire::error(
            &service.name,
            &Operation::Other("initialize"),
            reply,
        ));
    };
    let agreed = Arc::new(agreed(&service.name, endpoint, &result, |version| {
        Era::Sse { version, post_path }
    })?);
    *lock(&agreed.hub) = Some(hub.clone());
    hub.serve(&agreed);
    transport::notify(
        client,
        service,
        &agreed,
        "notifications/initialized",
        json!({}),
    )
    .await?;
    Ok(agreed)
}

/// The path (and query) of the URL an `endpoint` event names.
fn relative(url: &str) -> String {
    let url = url.trim();
    match url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    {
        Some(rest) => rest
            .find('/')
            .map_or_else(|| "/".to_string(), |i| rest[i..].to_string()),
        None => url.to_string(),
    }
}
