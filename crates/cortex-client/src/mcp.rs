//! Standard MCP (Streamable HTTP) for services whose discovery entry says
//! `protocol = "mcp"` (or `"auto"` and no Cortex dialect answers).
//!
//! The same [`McpClient`](crate::McpClient) calls map to JSON-RPC:
//! `call_tool` to `tools/call`, `read_resource` to `resources/read`,
//! `stream_resource` to a subscription, `connect` to `ping`, `close` to
//! DELETE of each session. Every message goes through
//! [`Engine::execute`]: the same discovery, pool, breakers,
//! retry budget and deadline as the Cortex dialect.
//!
//! # Layout
//! - [`wire`]: JSON-RPC messages and what their answers mean.
//! - [`rpc`]: one request over `execute`: sessions, SSE answers, resume,
//!   expiry, cancellation.
//! - [`session`]: opening a session, which finds the server's revision.
//! - [`hub`]: a session's server-to-client event stream; the legacy
//!   HTTP+SSE transport.
//! - [`listen`]: resource streams.
//! - [`inflight`]: requests in flight both ways: progress of ours, the
//!   server's being answered.
//! - [`headers`]: `Mcp-Method`, `Mcp-Name`, `Mcp-Param-*` (and which tool
//!   definitions are refused for bad `x-mcp-header` annotations).
//! - [`tasks`]: a tool call answered with a task, polled to its end.
//!
//! # Retry safety
//! A `tools/call` is repeated after it may have run (HTTP 500, connection
//! lost after sending) only when the tool's `annotations.idempotentHint` is
//! true in `tools/list` (asked once per service and kept). Reads, listings,
//! `ping` and the handshake are idempotent.
//!
//! # `protocol = "auto"`
//! `GET {url}/tools` is asked once per service: a 2xx means the Cortex
//! dialect (it is richer: idempotency keys on every tool, resumable
//! resource streams); 400, 404 or 405 means MCP at `{url}`. Other failures
//! are returned and nothing is remembered, so the next call asks again.

mod exchange;
mod headers;
mod hub;
mod inflight;
mod listen;
mod open;
mod rpc;
mod session;
mod tasks;
mod transport;
mod wire;

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use self::inflight::Tracker;
use self::session::Session;
use self::wire::Call;
use self::wire::Operation;
use crate::api::{EventStream, Resource};
use crate::dialect::Dialect;
use crate::engine::{Engine, Exchange, ServiceState, lock};
use crate::error::McpError;
use crate::notifications::{ListKind, NotificationHandler};
use crate::progress::CallOptions;
use crate::server_requests::ServerRequestHandler;
use cortex_discovery::{Endpoint, Protocol};
use cortex_proto::listing::{Health, ResourceInfo, ResourceList, ToolInfo, ToolList};

/// Held while one call opens a session.
type Gate = Arc<tokio::sync::Mutex<()>>;

/// Standard MCP over one client's engine. Cheap to clone: the tasks that
/// read a session's event stream hold one (weakly, see [`hub`]). Derefs to
/// the [`Engine`], whose `execute` every message goes through.
#[derive(Clone)]
pub(crate) struct McpDialect {
    pub(crate) inner: Arc<McpInner>,
}

/// What an [`McpDialect`] holds: the engine, and the MCP state.
pub(crate) struct McpInner {
    pub(crate) engine: Arc<Engine>,
    pub(crate) mcp: McpState,
    /// What answers the server's requests (see [`crate::server_requests`]).
    pub(crate) requests: Option<Arc<dyn ServerRequestHandler>>,
    /// What hears the server's notifications (see [`crate::notifications`]).
    pub(crate) notifications: Option<Arc<dyn NotificationHandler>>,
    /// How tasks are followed; `None`: the tasks extension is not declared.
    pub(crate) tasks: Option<crate::tasks::TaskPolicy>,
}

impl McpDialect {
    pub(crate) fn new(
        engine: Arc<Engine>,
        requests: Option<Arc<dyn ServerRequestHandler>>,
        notifications: Option<Arc<dyn NotificationHandler>>,
        tasks: Option<crate::tasks::TaskPolicy>,
    ) -> Self {
        Self {
            inner: Arc::new(McpInner {
                engine,
                mcp: McpState::default(),
                requests,
                notifications,
                tasks,
            }),
        }
    }

    /// Whether sessions should open their standalone event stream at once:
    /// someone listens for what the server sends outside calls.
    pub(crate) fn listens(&self) -> bool {
        self.inner.requests.is_some() || self.inner.notifications.is_some()
    }

    /// `tools/call` with per-call `options` (progress, deadline reset).
    pub(crate) async fn call_tool_with(
        &self,
        service: &Arc<ServiceState>,
        tool: &str,
        arguments: Value,
        options: &CallOptions,
    ) -> Result<Value, McpError> {
        let progress = Tracker::new(options, service.config.request_timeout);
        Box::pin(call_tool(self, service, tool, arguments, progress)).await
    }

    /// A server said one of its lists changed: what is kept of it is dropped.
    pub(crate) fn list_changed(&self, service: &str, list: ListKind) {
        let mcp = &self.inner.mcp;
        {
            let mut listings = lock(&mcp.listings);
            for method in list.methods() {
                listings.remove(&(service.to_string(), (*method).to_string()));
            }
        }
        match list {
            ListKind::Tools => {
                lock(&mcp.tools).remove(service);
            }
            ListKind::Resources => {
                lock(&mcp.schemes).remove(service);
            }
            ListKind::Prompts => {}
        }
        tracing::debug!(service, %list, "MCP list changed; cached listing dropped");
        if let Some(handler) = &self.inner.notifications {
            handler.list_changed(service, list);
        }
    }

    /// The client capabilities declared at `initialize` and in every
    /// stateless request's `_meta`: the handler's, and the tasks extension
    /// when the client follows tasks.
    pub(crate) fn capabilities(&self) -> Value {
        let mut capabilities = self
            .inner
            .requests
            .as_ref()
            .map_or_else(|| json!({}), |handler| handler.capabilities());
        if !capabilities.is_object() {
            capabilities = json!({});
        }
        if self.inner.tasks.is_some() {
            if !capabilities["extensions"].is_object() {
                capabilities["extensions"] = json!({});
            }
            capabilities["extensions"][wire::TASKS_EXTENSION] = json!({});
        }
        capabilities
    }

    /// Whether `service` speaks standard MCP (see the module docs for `auto`).
    pub(crate) async fn speaks(&self, service: &ServiceState) -> Result<bool, McpError> {
        speaks_mcp(self, service).await
    }

    /// Ends every session (DELETE where the server gave an id).
    pub(crate) async fn close(&self) {
        close(self).await;
    }

    /// `tools/list` as the server describes each tool, all pages.
    pub(crate) async fn raw_tools(
        &self,
        service: &Arc<ServiceState>,
    ) -> Result<Vec<Value>, McpError> {
        list_all(self, service, "tools/list", "tools").await
    }

    /// Every page of the listing `method` (`prompts/list`, …): the items
    /// under `key`.
    pub(crate) async fn raw_list(
        &self,
        service: &Arc<ServiceState>,
        method: &'static str,
        key: &str,
    ) -> Result<Vec<Value>, McpError> {
        list_all(self, service, method, key).await
    }

    /// One request `method` with `params`; its result. `idempotent`: safe
    /// to repeat after it may have run.
    pub(crate) async fn request(
        &self,
        service: &Arc<ServiceState>,
        method: &'static str,
        params: Value,
        idempotent: bool,
    ) -> Result<Value, McpError> {
        let call = Call {
            method,
            params,
            op: Operation::Other(method),
            idempotent,
            progress: None,
            headers: Vec::new(),
        };
        rpc::call(self, service, &call)
            .await
            .map(|(_, result)| result)
    }

    /// `resources/list` as the server describes each resource, all pages.
    pub(crate) async fn raw_resources(
        &self,
        service: &Arc<ServiceState>,
    ) -> Result<Vec<Value>, McpError> {
        list_all(self, service, "resources/list", "resources").await
    }

    /// The open sessions of `service`: per endpoint, the protocol revision
    /// and transport agreed on.
    pub(crate) fn sessions(&self, service: &str) -> Vec<McpSessionInfo> {
        let mut out: Vec<McpSessionInfo> = self
            .inner
            .mcp
            .sessions_of(service)
            .iter()
            .map(|s| {
                let (version, transport) = match &s.era {
                    session::Era::Streamable { version, .. } => {
                        (version.clone(), "streamable-http")
                    }
                    session::Era::Modern => (wire::MODERN_VERSION.to_string(), "stateless"),
                    session::Era::Sse { version, .. } => (version.clone(), "http+sse"),
                };
                McpSessionInfo {
                    endpoint: s.endpoint.url.clone(),
                    version,
                    transport,
                }
            })
            .collect();
        out.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        out
    }
}

impl Deref for McpDialect {
    type Target = Engine;

    fn deref(&self) -> &Engine {
        &self.inner.engine
    }
}

// Boxed where the state of a path would otherwise weigh on every call's
// future: the network client awaits these inline.
impl Dialect for McpDialect {
    async fn connect(&self, service: &Arc<ServiceState>) -> Result<(), McpError> {
        Box::pin(ping(self, service, None)).await.map(|_| ())
    }

    async fn call_tool(
        &self,
        service: &Arc<ServiceState>,
        tool: &str,
        arguments: Value,
        // MCP has no idempotency key: the call is repeated after it may
        // have run only as the tool's `idempotentHint` allows.
        _idempotency_key: Option<&str>,
    ) -> Result<Value, McpError> {
        Box::pin(call_tool(self, service, tool, arguments, None)).await
    }

    async fn read_resource(
        &self,
        service: &Arc<ServiceState>,
        uri: &str,
    ) -> Result<Resource, McpError> {
        Box::pin(read(self, service, uri)).await
    }

    /// A subscription has no event ids to start after: with an id it is
    /// [`McpError::InvalidRequest`].
    async fn stream_resource(
        &self,
        service: Arc<ServiceState>,
        uri: &str,
        last_event_id: Option<String>,
    ) -> Result<EventStream, McpError> {
        if last_event_id.is_some() {
            return Err(McpError::InvalidRequest {
                service: service.name.clone(),
                operation: uri.into(),
                reason: "an MCP subscription cannot start after an event id".into(),
            });
        }
        Box::pin(stream(self, service, uri)).await
    }

    async fn list_tools(&self, service: &Arc<ServiceState>) -> Result<ToolList, McpError> {
        Box::pin(list_tools(self, service)).await
    }

    async fn list_resources(&self, service: &Arc<ServiceState>) -> Result<ResourceList, McpError> {
        Box::pin(list_resources(self, service)).await
    }

    async fn health(
        &self,
        service: &Arc<ServiceState>,
        endpoint: Option<&Endpoint>,
    ) -> Result<(u16, Health), McpError> {
        Box::pin(health(self, service, endpoint)).await
    }
}

/// The MCP state of one client.
#[derive(Default)]
pub(crate) struct McpState {
    /// Per service: whether it speaks MCP, once known.
    dialects: Mutex<HashMap<String, bool>>,
    /// Sessions per service, per endpoint URL: nested so that a call's
    /// lookup borrows the names rather than building a key.
    sessions: Mutex<HashMap<String, HashMap<String, Arc<Session>>>>,
    /// One opener at a time per (service, endpoint URL).
    gates: Mutex<HashMap<(String, String), Gate>>,
    /// Per service: its tools, each with its `idempotentHint` and headers.
    tools: Mutex<HashMap<String, Arc<HashMap<String, ToolMeta>>>>,
    /// Per service: the URI scheme its resources use, when it has one.
    schemes: Mutex<HashMap<String, Option<String>>>,
    /// JSON-RPC ids (0 is the handshake's).
    next_id: AtomicU64,
    /// Per progress token (the request's id): the call's progress.
    progress: Mutex<HashMap<u64, Arc<Tracker>>>,
    /// The server's requests being answered.
    pub(crate) handling: inflight::Handling,
    /// Listings a server said may be kept (`ttlMs`), per (service, method).
    listings: Mutex<HashMap<(String, String), Listing>>,
}

/// A listing kept while fresh.
struct Listing {
    items: Vec<Value>,
    fresh_until: tokio::time::Instant,
    /// `cacheScope: "public"`: the same for every caller. Otherwise it
    /// is served only to calls made as the client (no caller's
    /// credentials forwarded), which is how it was fetched.
    public: bool,
}

impl McpState {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Routes progress with token `id` to `tracker` until [`Self::untrack`].
    pub(crate) fn track(&self, id: u64, tracker: Arc<Tracker>) {
        lock(&self.progress).insert(id, tracker);
    }

    pub(crate) fn untrack(&self, id: u64) {
        lock(&self.progress).remove(&id);
    }

    /// The call whose progress token is `token` (the request id, as a
    /// number or its decimal text), if it is still waiting.
    pub(crate) fn tracker(&self, token: &Value) -> Option<Arc<Tracker>> {
        let id = token
            .as_u64()
            .or_else(|| token.as_str().and_then(|t| t.parse().ok()))?;
        lock(&self.progress).get(&id).cloned()
    }

    pub(crate) fn session(&self, service: &str, endpoint: &Endpoint) -> Option<Arc<Session>> {
        lock(&self.sessions)
            .get(service)
            .and_then(|sessions| sessions.get(&endpoint.url))
            .cloned()
    }

    pub(crate) fn sessions_of(&self, service: &str) -> Vec<Arc<Session>> {
        lock(&self.sessions)
            .get(service)
            .map(|sessions| sessions.values().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn insert(&self, service: &str, session: Arc<Session>) {
        lock(&self.sessions)
            .entry(service.to_string())
            .or_default()
            .insert(session.endpoint.url.clone(), session);
    }

    /// Drops `session` (if still current) so the next request opens another.
    pub(crate) fn forget(&self, service: &str, session: &Arc<Session>) {
        let mut sessions = lock(&self.sessions);
        let Some(of_service) = sessions.get_mut(service) else {
            return;
        };
        let url = &session.endpoint.url;
        if of_service.get(url).is_some_and(|s| Arc::ptr_eq(s, session)) {
            of_service.remove(url);
        }
        if of_service.is_empty() {
            sessions.remove(service);
        }
    }

    pub(crate) fn gate(&self, service: &str, endpoint: &Endpoint) -> Gate {
        lock(&self.gates)
            .entry((service.to_string(), endpoint.url.clone()))
            .or_default()
            .clone()
    }
}

/// Whether `service` speaks standard MCP (see the module docs for `auto`).
/// A service discovery cannot resolve is left to the Cortex path, which
/// reports it as usual.
async fn speaks_mcp(client: &McpDialect, service: &ServiceState) -> Result<bool, McpError> {
    let mcp = &client.inner.mcp;
    if let Some(known) = lock(&mcp.dialects).get(&service.name) {
        return Ok(*known);
    }
    let Ok(set) = client.discovery().resolve(&service.name).await else {
        return Ok(false);
    };
    let speaks = match set.endpoints.first().map(|e| e.protocol) {
        None | Some(Protocol::Cortex) => false,
        Some(Protocol::Mcp) => true,
        Some(Protocol::Auto) => {
            let mut probe = Exchange::get(crate::operation::Operation::Read("tools"), "/tools");
            probe.max_attempts = 2;
            // Boxed: asked once per service, so its state should not
            // weigh on every call's future.
            // Cached for every caller: probed as the client.
            match Box::pin(crate::forward::as_client(client.execute(service, &probe))).await {
                Ok(_) => false,
                Err(error) if matches!(error.status(), Some(400 | 404 | 405)) => true,
                Err(error) => return Err(error),
            }
        }
    };
    lock(&mcp.dialects).insert(service.name.clone(), speaks);
    Ok(speaks)
}

/// `tools/call`; the result as a value (see [`wire::tool_value`]).
async fn call_tool(
    client: &McpDialect,
    service: &Arc<ServiceState>,
    tool: &str,
    arguments: Value,
    progress: Option<Arc<Tracker>>,
) -> Result<Value, McpError> {
    let tools = tools(client, service).await;
    let known = tools.get(tool);
    let idempotent = known.is_some_and(|t| t.idempotent);
    let headers = known.map_or_else(Vec::new, |t| headers::mirror(&t.headers, &arguments));
    // Built by hand: `json!` would copy the arguments through `to_value`.
    let mut params = serde_json::Map::new();
    params.insert("name".into(), Value::from(tool));
    params.insert("arguments".into(), arguments);
    let call = Call {
        method: "tools/call",
        params: Value::Object(params),
        op: Operation::Tool(tool),
        idempotent,
        progress,
        headers,
    };
    let (_, result) = rpc::call(client, service, &call).await?;
    match wire::tool_value(&service.name, tool, result) {
        // Some servers (the Python SDK) answer an unknown tool with an
        // `isError` result: a tool the listing lacks is not found.
        Err(McpError::Tool { .. }) if !tools.is_empty() && !tools.contains_key(tool) => {
            Err(McpError::ToolNotFound {
                service: service.name.clone(),
                tool: tool.into(),
            })
        }
        outcome => outcome,
    }
}

/// `resources/read` of `uri` (see [`resource_uri`]).
async fn read(
    client: &McpDialect,
    service: &Arc<ServiceState>,
    uri: &str,
) -> Result<Resource, McpError> {
    let uri = resource_uri(client, service, uri).await;
    let call = Call {
        method: "resources/read",
        params: json!({"uri": uri}),
        op: Operation::Read(&uri),
        idempotent: true,
        progress: None,
        headers: Vec::new(),
    };
    let (_, result) = rpc::call(client, service, &call).await?;
    Ok(wire::resource(&result))
}

/// Streams updates of `uri` (see [`listen`]).
async fn stream(
    client: &McpDialect,
    service: Arc<ServiceState>,
    uri: &str,
) -> Result<EventStream, McpError> {
    let uri = resource_uri(client, &service, uri).await;
    listen::stream(client, service, uri).await
}

/// `ping` (`server/discover` where the server has no `ping`): the health
/// check, of `pin` alone when given; the session it went through.
async fn ping(
    client: &McpDialect,
    service: &Arc<ServiceState>,
    pin: Option<&Endpoint>,
) -> Result<Arc<Session>, McpError> {
    let call = Call {
        method: "ping",
        params: Value::Null,
        op: Operation::Other("ping"),
        idempotent: true,
        progress: None,
        headers: Vec::new(),
    };
    match rpc::call_at(client, service, &call, pin).await {
        Ok((session, _)) => Ok(session),
        // The stateless revision (2026-07-28) has no `ping`: a server that
        // answers `server/discover` is alive.
        Err(McpError::Tool {
            code: cortex_proto::ErrorCode::ToolNotFound,
            ..
        }) => rpc::call_at(client, service, &session::discover_call(), pin)
            .await
            .map(|(session, _)| session),
        Err(error) => Err(error),
    }
}

/// Health over MCP: a `ping` that answers is healthy; the version is the
/// one the server gave in its handshake.
async fn health(
    client: &McpDialect,
    service: &Arc<ServiceState>,
    pin: Option<&Endpoint>,
) -> Result<(u16, Health), McpError> {
    let session = ping(client, service, pin).await?;
    Ok((
        200,
        Health {
            status: "healthy".into(),
            service: service.name.clone(),
            version: session.server_version.clone(),
            checks: serde_json::Map::new(),
        },
    ))
}

/// `tools/list`, every page, in the shape of the Cortex listing.
async fn list_tools(
    client: &McpDialect,
    service: &Arc<ServiceState>,
) -> Result<ToolList, McpError> {
    let listed = list_all(client, service, "tools/list", "tools").await?;
    let text = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut tools: Vec<ToolInfo> = listed
        .iter()
        .filter(|t| t.get("name").is_some_and(Value::is_string))
        .map(|t| ToolInfo {
            name: text(t, "name"),
            description: text(t, "description"),
            input_schema: t
                .get("inputSchema")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"})),
            read_only: t
                .pointer("/annotations/readOnlyHint")
                .and_then(Value::as_bool)
                == Some(true),
        })
        .collect();
    tools.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(ToolList { tools })
}

/// `resources/list` and `resources/templates/list`, every page, in the
/// shape of the Cortex listing. `streaming` says the server takes
/// subscriptions (its `resources.subscribe` capability). A server that
/// has no templates may answer that listing with a JSON-RPC error: no
/// templates.
async fn list_resources(
    client: &McpDialect,
    service: &Arc<ServiceState>,
) -> Result<ResourceList, McpError> {
    let resources = list_all(client, service, "resources/list", "resources").await?;
    let templates = match list_all(
        client,
        service,
        "resources/templates/list",
        "resourceTemplates",
    )
    .await
    {
        Ok(templates) => templates,
        Err(McpError::Tool { .. }) => Vec::new(),
        Err(error) => return Err(error),
    };
    let subscribe = client
        .inner
        .mcp
        .sessions_of(&service.name)
        .iter()
        .any(|s| s.capabilities.pointer("/resources/subscribe") == Some(&Value::Bool(true)));
    let text = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let info = |item: &Value, key: &str| ResourceInfo {
        uri_template: text(item, key),
        description: text(item, "description"),
        mime_type: text(item, "mimeType"),
        streaming: subscribe,
    };
    Ok(ResourceList {
        resources: templates
            .iter()
            .map(|t| info(t, "uriTemplate"))
            .chain(resources.iter().map(|r| info(r, "uri")))
            .filter(|r| !r.uri_template.is_empty())
            .collect(),
    })
}

/// Ends every session (DELETE where the server gave an id).
async fn close(client: &McpDialect) {
    let mcp = &client.inner.mcp;
    let sessions: Vec<(String, Arc<Session>)> = lock(&mcp.sessions)
        .drain()
        .flat_map(|(s, of_service)| of_service.into_values().map(move |v| (s.clone(), v)))
        .collect();
    open::close_all(client, sessions).await;
    lock(&mcp.dialects).clear();
    lock(&mcp.tools).clear();
    lock(&mcp.schemes).clear();
    lock(&mcp.listings).clear();
}

/// Every page of a listing (`tools/list`, `resources/list`, ...): the
/// items under `key`. Kept while every page's `ttlMs` says it is fresh
/// (2026-07-28 caching hints; see [`Listing`]), until a
/// `notifications/…/list_changed` says otherwise; never kept without one.
async fn list_all(
    client: &McpDialect,
    service: &Arc<ServiceState>,
    method: &'static str,
    key: &str,
) -> Result<Vec<Value>, McpError> {
    let cache_key = (service.name.clone(), method.to_string());
    let as_client = crate::forward::forwarded().is_none();
    {
        let mut listings = lock(&client.inner.mcp.listings);
        match listings.get(&cache_key) {
            Some(kept) if tokio::time::Instant::now() >= kept.fresh_until => {
                listings.remove(&cache_key);
            }
            Some(kept) if kept.public || as_client => return Ok(kept.items.clone()),
            _ => {}
        }
    }
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    // The shortest freshness of the pages, and whether all are public.
    let mut ttl: Option<u64> = Some(u64::MAX);
    let mut public = true;
    for _ in 0..100 {
        let params = cursor
            .as_ref()
            .map_or(Value::Null, |c| json!({"cursor": c}));
        let call = Call {
            method,
            params,
            op: Operation::Other(method),
            idempotent: true,
            progress: None,
            headers: Vec::new(),
        };
        let (_, result) = rpc::call(client, service, &call).await?;
        // A negative or absent ttlMs is 0: not kept.
        let page_ttl = result.get("ttlMs").and_then(Value::as_u64);
        ttl = ttl.zip(page_ttl).map(|(a, b)| a.min(b));
        public &= result.get("cacheScope").and_then(Value::as_str) == Some("public");
        items.extend(
            result
                .get(key)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        );
        cursor = result
            .get("nextCursor")
            .and_then(Value::as_str)
            .map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    if method == "tools/list" {
        items.retain(|tool| valid_tool(&service.name, tool));
    }
    if let Some(ttl) = ttl.filter(|t| *t > 0 && *t != u64::MAX)
        && (public || as_client)
    {
        // At most a day: a server's hint is not a reason to never ask again.
        let ttl = std::time::Duration::from_millis(ttl.min(86_400_000));
        lock(&client.inner.mcp.listings).insert(
            cache_key,
            Listing {
                items: items.clone(),
                fresh_until: tokio::time::Instant::now() + ttl,
                public,
            },
        );
    }
    Ok(items)
}

/// Whether a listed tool's `x-mcp-header` annotations are valid; an
/// invalid tool is left out of the listing (logged), as the transport
/// requires, so that it is never called.
fn valid_tool(service: &str, tool: &Value) -> bool {
    let schema = tool.get("inputSchema").unwrap_or(&Value::Null);
    match headers::annotations(schema) {
        Ok(_) => true,
        Err(reason) => {
            let name = tool.get("name").and_then(Value::as_str).unwrap_or("");
            tracing::warn!(service, tool = name, %reason, "MCP tool definition refused");
            false
        }
    }
}

/// What a call needs to know of a listed tool.
#[derive(Debug, Clone, Default)]
pub(crate) struct ToolMeta {
    /// `annotations.idempotentHint` is true: safe to repeat.
    idempotent: bool,
    /// Its `x-mcp-header` annotations.
    headers: Vec<headers::ParamHeader>,
}

/// The tools of `service`, each with whether it says it is idempotent and
/// the arguments it mirrors in headers; asked once (an unanswered listing
/// counts as no tool known, and is asked again next time).
async fn tools(client: &McpDialect, service: &Arc<ServiceState>) -> Arc<HashMap<String, ToolMeta>> {
    let mcp = &client.inner.mcp;
    if let Some(known) = lock(&mcp.tools).get(&service.name) {
        return known.clone();
    }
    // Cached for every caller: listed as the client. Boxed: asked once per
    // service, so its state should not weigh on every call's future.
    let listing = list_all(client, service, "tools/list", "tools");
    let Ok(listed) = Box::pin(crate::forward::as_client(listing)).await else {
        return Arc::default();
    };
    let tools: HashMap<String, ToolMeta> = listed
        .iter()
        .filter_map(|t| {
            let name = t.get("name").and_then(Value::as_str)?.to_string();
            let meta = ToolMeta {
                idempotent: t
                    .pointer("/annotations/idempotentHint")
                    .and_then(Value::as_bool)
                    == Some(true),
                // The listing left out tools whose annotations are bad.
                headers: headers::annotations(t.get("inputSchema").unwrap_or(&Value::Null))
                    .unwrap_or_default(),
            };
            Some((name, meta))
        })
        .collect();
    let tools = Arc::new(tools);
    lock(&mcp.tools).insert(service.name.clone(), tools.clone());
    tools
}

/// A URI as the server names its resources: as given when it has a scheme
/// (`://`); otherwise under the scheme of the server's resource templates
/// (or resources), asked once; as given when it has none.
async fn resource_uri(client: &McpDialect, service: &Arc<ServiceState>, uri: &str) -> String {
    if uri.contains("://") {
        return uri.to_string();
    }
    let known = lock(&client.inner.mcp.schemes).get(&service.name).cloned();
    let scheme = match known {
        Some(scheme) => scheme,
        // Cached for every caller: asked as the client.
        None => {
            crate::forward::as_client(async {
                let scheme_of = |items: Vec<Value>, key: &str| {
                    items.iter().find_map(|i| {
                        i.get(key)
                            .and_then(Value::as_str)
                            .and_then(|u| u.split_once("://"))
                            .map(|(s, _)| s.to_string())
                    })
                };
                let mut scheme = None;
                if let Ok(templates) = list_all(
                    client,
                    service,
                    "resources/templates/list",
                    "resourceTemplates",
                )
                .await
                {
                    scheme = scheme_of(templates, "uriTemplate");
                }
                if scheme.is_none()
                    && let Ok(resources) =
                        list_all(client, service, "resources/list", "resources").await
                {
                    scheme = scheme_of(resources, "uri");
                }
                lock(&client.inner.mcp.schemes).insert(service.name.clone(), scheme.clone());
                scheme
            })
            .await
        }
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{}", uri.trim_start_matches('/')),
        None => uri.to_string(),
    }
}

/// One open MCP session, as [`NetworkMcpClient::mcp_sessions`](crate::NetworkMcpClient::mcp_sessions) lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpSessionInfo {
    /// The endpoint's URL.
    pub endpoint: String,
    /// The protocol revision agreed on (`2026-07-28`: stateless).
    pub version: String,
    /// `streamable-http`, `stateless` (2026-07-28) or `http+sse` (2024-11-05).
    pub transport: &'static str,
}
