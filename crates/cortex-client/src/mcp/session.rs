//! MCP sessions, one per (service, endpoint): what a session is (its era,
//! headers, held subscriptions) and how it shapes requests, and its event
//! hub's state (replies and updates arriving on its server-to-client
//! stream, which [`super::hub`] reads). Opening one is [`super::open`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

use super::wire::Call;
use super::wire::{self, HANDSHAKE_VERSIONS, MODERN_VERSION, Operation, Reply};
use crate::engine::{Prepared, lock};
use crate::error::McpError;
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
        method: &'static str,
        params: &Value,
        id: Option<u64>,
        extra: &[(String, String)],
    ) -> Prepared {
        let mut prepared = self.headers(2 + extra.len());
        // Method names are the client's own constants: not copied.
        prepared
            .headers
            .push((MCP_METHOD, HeaderValue::from_static(method)));
        if let Some(name) = super::headers::name_of(method, params)
            && let Ok(value) = HeaderValue::from_str(&wire::header_safe(name))
        {
            prepared.headers.push((MCP_NAME, value));
        }
        for (name, value) in extra {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                prepared.headers.push((name, value));
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
    pub(crate) fn prepare_notification(&self, method: &'static str, params: Value) -> Prepared {
        self.prepare(method, &params, None, &[])
    }

    /// The session's headers alone (GET, DELETE).
    pub(crate) fn prepare_get(&self) -> Prepared {
        self.headers(0)
    }

    /// The session's headers, with room for `more`.
    fn headers(&self, more: usize) -> Prepared {
        let mut headers = Vec::with_capacity(self.own_headers.len() + more);
        headers.extend(self.own_headers.iter().cloned());
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
}

const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");

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

/// What a hub hands out besides replies.
#[derive(Debug, Clone)]
pub(crate) enum HubEvent {
    Updated { id: Option<String>, params: Value },
    Closed(String),
}

/// A session's server-to-client event stream, read by one task.
pub(crate) struct Hub {
    /// Replies awaited (legacy SSE transport): `None` until it arrives.
    replies: Mutex<HashMap<u64, Option<Reply>>>,
    arrived: Notify,
    events: broadcast::Sender<HubEvent>,
    closed: AtomicBool,
    /// The session it serves (weak: the session owns the hub).
    session: Mutex<Weak<Session>>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Hub {
    /// A hub for `session`, reading nothing yet (see `hub::start`).
    pub(crate) fn new(session: &Arc<Session>) -> Arc<Hub> {
        Arc::new(Hub {
            replies: Mutex::new(HashMap::new()),
            arrived: Notify::new(),
            events: broadcast::channel(256).0,
            closed: AtomicBool::new(false),
            session: Mutex::new(Arc::downgrade(session)),
            task: Mutex::new(None),
        })
    }

    /// The task that reads the stream, stopped by [`Self::stop`].
    pub(crate) fn set_task(&self, task: tokio::task::AbortHandle) {
        *lock(&self.task) = Some(task);
    }

    /// The reply to `id` arrived on the stream.
    pub(crate) fn deliver(&self, id: u64, reply: Reply) {
        lock(&self.replies).insert(id, Some(reply));
        self.arrived.notify_waiters();
    }

    /// `notifications/resources/updated` arrived, with its event id.
    pub(crate) fn updated(&self, id: Option<String>, params: Value) {
        let _ = self.events.send(HubEvent::Updated { id, params });
    }

    /// Serves `session` from now on (the legacy transport's session is
    /// made after its stream opened).
    pub(crate) fn serve(&self, session: &Arc<Session>) {
        *lock(&self.session) = Arc::downgrade(session);
    }

    /// The session it serves, while it lives.
    pub(crate) fn session(&self) -> Option<Arc<Session>> {
        lock(&self.session).upgrade()
    }
    pub(crate) fn expect(&self, id: u64) {
        lock(&self.replies).entry(id).or_insert(None);
    }

    pub(crate) async fn reply(&self, id: u64, deadline: Instant) -> Option<Reply> {
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let mut replies = lock(&self.replies);
                if matches!(replies.get(&id), Some(Some(_))) || self.closed.load(Ordering::Acquire)
                {
                    return replies.remove(&id).flatten();
                }
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                lock(&self.replies).remove(&id);
                return None;
            }
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<HubEvent> {
        self.events.subscribe()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn stop(&self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
        self.close("the client closed the session".into());
    }

    pub(crate) fn close(&self, reason: String) {
        self.closed.store(true, Ordering::Release);
        self.arrived.notify_waiters();
        let _ = self.events.send(HubEvent::Closed(reason));
    }
}
