//! MCP sessions: one per (service, endpoint), opened on first use.
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
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::McpDialect;
use super::hub::Hub;
use super::rpc::{self, Call};
use super::wire::{self, HANDSHAKE_VERSIONS, MODERN_VERSION, Operation, Reply};
use crate::engine::{Answer, Prepared, ServiceState, lock};
use crate::error::McpError;
use crate::notifications::{ListKind, LogMessage};
use cortex_discovery::Endpoint;

/// How requests to one endpoint are shaped.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Era {
    /// Streamable HTTP after a handshake (2025-03-26 to 2025-11-25).
    Streamable { version: String, id: Option<String> },
    /// The stateless revision 2026-07-28: no session at all.
    Modern,
    /// The HTTP+SSE transport of 2024-11-05: POST to `post_path`, replies on
    /// the session's event stream.
    Sse { version: String, post_path: String },
}

/// One endpoint's session.
pub(crate) struct Session {
    pub(crate) endpoint: Endpoint,
    pub(crate) era: Era,
    /// What the server said it can do.
    pub(crate) capabilities: Value,
    /// The server's version (`serverInfo.version`), when it said.
    pub(crate) server_version: String,
    /// Its server-to-client event stream, once open (for the SSE transport,
    /// from the start: replies arrive there).
    pub(crate) hub: Mutex<Option<Arc<Hub>>>,
    /// Serializes opening the hub.
    pub(crate) hub_gate: tokio::sync::Mutex<()>,
    /// The client capabilities its stateless requests declare in `_meta`.
    declared: Value,
    /// Resource streams open per subscribed URI: the subscription is
    /// dropped on the server when the last one ends (servers cap how many a
    /// session may hold).
    subscribers: Mutex<HashMap<String, usize>>,
    /// The headers every request of the session carries, made once.
    own_headers: Vec<(HeaderName, HeaderValue)>,
}

impl Session {
    /// A session whose handshake answered `handshake` (the `initialize`
    /// or `server/discover` result; `Null` before one).
    pub(crate) fn new(endpoint: Endpoint, era: Era, handshake: &Value) -> Self {
        let own_headers = own_headers(&era);
        Self {
            own_headers,
            endpoint,
            era,
            capabilities: handshake
                .get("capabilities")
                .cloned()
                .unwrap_or(Value::Null),
            server_version: handshake
                .pointer("/serverInfo/version")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            hub: Mutex::new(None),
            hub_gate: tokio::sync::Mutex::new(()),
            declared: json!({}),
            subscribers: Mutex::new(HashMap::new()),
        }
    }

    /// The same session, declaring `capabilities` in the `_meta` of its
    /// stateless requests.
    pub(crate) fn declaring(mut self, capabilities: Value) -> Self {
        self.declared = capabilities;
        self
    }

    /// One more stream of `uri`.
    pub(crate) fn hold(&self, uri: &str) {
        *lock(&self.subscribers).entry(uri.to_string()).or_default() += 1;
    }

    /// One stream of `uri` fewer; true when it was the last.
    pub(crate) fn release(&self, uri: &str) -> bool {
        let mut subscribers = lock(&self.subscribers);
        match subscribers.get_mut(uri) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            Some(_) => {
                subscribers.remove(uri);
                true
            }
            None => false,
        }
    }

    /// Whether a stream of `uri` is open.
    pub(crate) fn is_held(&self, uri: &str) -> bool {
        lock(&self.subscribers).contains_key(uri)
    }

    /// Whether requests carry a session id (so a 404 means it expired).
    pub(crate) fn has_id(&self) -> bool {
        matches!(&self.era, Era::Streamable { id: Some(_), .. })
    }

    /// The headers and body of request `id` (a notification when `None`),
    /// with `extra` headers (a tool's `Mcp-Param-*`). Every POST names its
    /// method in `Mcp-Method`, and its target in `Mcp-Name` where the
    /// method has one (see [`super::headers`]), whatever the revision:
    /// older servers ignore them.
    pub(crate) fn prepare(
        &self,
        method: &str,
        params: &Value,
        id: Option<u64>,
        extra: &[(String, String)],
    ) -> Prepared {
        let mut prepared = self.headers(2 + extra.len());
        set(&mut prepared.headers, MCP_METHOD, method);
        if let Some(name) = super::headers::name_of(method, params) {
            set(&mut prepared.headers, MCP_NAME, &wire::header_safe(name));
        }
        for (name, value) in extra {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                prepared.headers.insert(name, value);
            }
        }
        // A `Value` always encodes.
        let encode = |message: Value| serde_json::to_vec(&message).unwrap_or_default();
        let body = match (&self.era, id) {
            (Era::Modern, Some(id)) => {
                encode(wire::modern_request(id, method, params, &self.declared))
            }
            (_, Some(id)) => wire::request(id, method, params),
            (_, None) => encode(wire::notification(method, params.clone())),
        };
        if let (Era::Sse { post_path, .. }, Some(id)) = (&self.era, id) {
            prepared.path = Some(post_path.clone());
            if let Some(hub) = lock(&self.hub).as_ref() {
                hub.expect(id);
            }
        } else if let Era::Sse { post_path, .. } = &self.era {
            prepared.path = Some(post_path.clone());
        }
        prepared.body = Some(Bytes::from(body));
        prepared
    }

    /// A notification's headers and body.
    pub(crate) fn prepare_notification(&self, method: &str, params: Value) -> Prepared {
        self.prepare(method, &params, None, &[])
    }

    /// The session's headers alone (GET, DELETE).
    pub(crate) fn prepare_get(&self) -> Prepared {
        self.headers(0)
    }

    /// The session's headers, with room for `more`.
    fn headers(&self, more: usize) -> Prepared {
        let mut headers = HeaderMap::with_capacity(self.own_headers.len() + more);
        for (name, value) in &self.own_headers {
            headers.insert(name.clone(), value.clone());
        }
        Prepared {
            headers,
            ..Prepared::default()
        }
    }

    /// Waits for the reply to `id` on the session's event stream (legacy
    /// SSE transport); `None` when the deadline passes or the stream ends.
    pub(crate) async fn await_reply(&self, id: u64, deadline: Instant) -> Option<Reply> {
        let hub = lock(&self.hub).clone()?;
        hub.reply(id, deadline).await
    }

    /// Answers what the server asks on a stream: `ping` with `{}`,
    /// elicitation, sampling and roots with the application's handler
    /// (see [`crate::server_requests`]), anything else, or anything without
    /// a handler, with "method not found" at once. Notifications: log
    /// messages, progress, cancellations of the server's own requests,
    /// list changes (see [`Session::on_notification`]).
    pub(crate) fn on_server_message(
        self: &Session,
        client: &McpDialect,
        service: &ServiceState,
        message: &Value,
    ) {
        let Some(method) = message.get("method").and_then(Value::as_str) else {
            return; // a stray response: nothing waits for it here
        };
        let Some(id) = message.get("id") else {
            self.on_notification(client, service, method, message.get("params"));
            return;
        };
        let (method, id) = (method.to_string(), id.clone());
        let params = message.get("params").cloned().unwrap_or(Value::Null);
        let mut prepared = self.prepare_get();
        if let Era::Sse { post_path, .. } = &self.era {
            prepared.path = Some(post_path.clone());
        }
        let (client, endpoint) = (client.clone(), self.endpoint.clone());
        let Ok(service) = client.service_state(&service.name) else {
            return;
        };
        let key = (service.name.clone(), endpoint.url.clone(), id.to_string());
        let reply = {
            let (client, service, endpoint) = (client.clone(), service.clone(), endpoint.clone());
            move |answer: Value| async move {
                let mut prepared = prepared;
                prepared.body = Some(Bytes::from(answer.to_string()));
                let sent = rpc::post(
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
        &self,
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
                    self.endpoint.url.clone(),
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

const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// What every request of a session in `era` carries: its id and revision.
fn own_headers(era: &Era) -> Vec<(HeaderName, HeaderValue)> {
    const SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
    const VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
    let (id, version) = match era {
        Era::Streamable { version, id } => (id.as_deref(), version.as_str()),
        Era::Modern => (None, MODERN_VERSION),
        Era::Sse { .. } => return Vec::new(),
    };
    let mut headers = Vec::with_capacity(2);
    if let Some(Ok(id)) = id.map(HeaderValue::from_str) {
        headers.push((SESSION_ID, id));
    }
    if let Ok(version) = HeaderValue::from_str(version) {
        headers.push((VERSION, version));
    }
    headers
}

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
                return super::hub::open_sse(client, service, endpoint).await;
            }
            let message: String = String::from_utf8_lossy(&body).chars().take(300).collect();
            return Err(rpc::failure(
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
            return Err(rpc::failure(
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
    let reply = rpc::read_answer(
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
    rpc::notify(
        client,
        service,
        &session,
        "notifications/initialized",
        json!({}),
    )
    .await?;
    Ok(session)
}

/// A session on the version the server chose, if the client speaks it.
pub(crate) fn agreed(
    service: &str,
    endpoint: &Endpoint,
    result: &Value,
    era: impl FnOnce(String) -> Era,
) -> Result<Session, McpError> {
    let version = result
        .get("protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !HANDSHAKE_VERSIONS.contains(&version) {
        return Err(McpError::ServiceCall {
            service: service.into(),
            tool: "initialize".into(),
            endpoint: endpoint.url.clone(),
            attempts: 1,
            status: 200,
            message: format!(
                "the server chose protocol version `{version}`, which this client does not speak ({HANDSHAKE_VERSIONS:?})"
            ),
        });
    }
    Ok(Session::new(
        endpoint.clone(),
        era(version.to_string()),
        result,
    ))
}

/// The JSON-RPC id of every `initialize`: it goes alone on its exchange.
pub(crate) const INITIALIZE_ID: u64 = 0;

pub(crate) fn initialize_call(capabilities: Value) -> Call<'static> {
    Call {
        method: "initialize",
        params: initialize_params(capabilities),
        op: Operation::Other("initialize"),
        idempotent: true,
        progress: None,
        headers: Vec::new(),
    }
}

/// `initialize`'s params, `_meta` included (see [`wire::initialize_meta`]).
pub(crate) fn initialize_params(capabilities: Value) -> Value {
    let mut params = json!({"protocolVersion": HANDSHAKE_VERSIONS[0], "capabilities": capabilities, "clientInfo": wire::client_info()});
    wire::initialize_meta(&mut params, HANDSHAKE_VERSIONS[0], &capabilities);
    params
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
    rpc::post(
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

/// `server/discover`: what a stateless (2026-07-28) server speaks; that
/// revision's liveness check too, as it has no `ping`.
pub(crate) fn discover_call() -> Call<'static> {
    Call {
        method: "server/discover",
        params: json!({}),
        op: Operation::Other("server/discover"),
        idempotent: true,
        progress: None,
        headers: Vec::new(),
    }
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
    let answer = rpc::post(
        client,
        service,
        endpoint,
        crate::operation::Operation::Read("server/discover"),
        prepared,
    )
    .await?;
    match rpc::read_answer(client, service, &session, &call, id, answer, deadline).await? {
        Reply::Result(result) if wire::supports_modern(&result) => Ok(Arc::new(
            Session::new(endpoint.clone(), Era::Modern, &result).declaring(client.capabilities()),
        )),
        Reply::Result(result) => Err(rpc::failure(
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
                    rpc::delete(client, &state, &session.endpoint, session.prepare_get()).await;
                tracing::debug!(endpoint = %session.endpoint.url, ok = answer.is_ok(), "MCP session deleted");
            }
        }
    }
}
