//! MCP methods on the registry, shared by both eras of the transport.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use cortex_proto::ErrorCode;
use futures::StreamExt;
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::jsonrpc::{METHOD_NOT_FOUND, RpcError, notification};
use super::param_headers::HeaderParams;
use super::resources::{LIVE_META_KEY, ResourceIndex};
use super::session::{Session, Sessions};
use crate::config::ServiceConfig;
use crate::error::ServiceError;
use crate::outbox::Outbox;
use crate::registry::{CallContext, EventStream, ResourceContent, Service};

/// Everything the endpoint shares between requests.
pub(crate) struct Shared {
    pub(crate) service: Service,
    pub(crate) config: ServiceConfig,
    pub(crate) stopping: watch::Receiver<bool>,
    pub(crate) sessions: Sessions,
    pub(crate) resources: ResourceIndex,
    tool_names: BTreeSet<String>,
    /// Tools whose values are MCP `CallToolResult`s, sent as they are.
    content_tools: BTreeSet<String>,
    /// Per tool, the arguments its schema mirrors into `Mcp-Param-*`
    /// headers (2026-07-28).
    pub(crate) header_params: HashMap<String, HeaderParams>,
}

/// Who is asking, in which era.
#[derive(Clone)]
pub(crate) struct Call {
    pub(crate) ctx: CallContext,
    /// The session (session-based revisions); `None` when stateless.
    pub(crate) session: Option<Arc<Session>>,
    /// Whether results may carry `structuredContent` (2025-06-18 on).
    pub(crate) structured: bool,
}

impl Call {
    fn stateless(&self) -> bool {
        self.session.is_none()
    }
}

impl Shared {
    pub(crate) fn new(
        service: Service,
        config: ServiceConfig,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        let tools = service.tools();
        let header_params = tools
            .iter()
            .map(|t| (t.name.clone(), HeaderParams::of_schema(&t.input_schema)))
            .filter(|(_, params)| !params.is_empty())
            .collect();
        Self {
            sessions: Sessions::new(
                config.mcp.session_ttl,
                config.mcp.max_sessions,
                config.mcp.max_sessions_per_client,
                config.mcp.notification_buffer,
            )
            .with_call_limits(super::session::CallLimits {
                buffer: config.mcp.notification_buffer,
                client_requests: config.mcp.max_client_requests,
                resumable: config.mcp.max_resumable_streams,
            }),
            resources: ResourceIndex::new(&service),
            tool_names: tools.into_iter().map(|t| t.name).collect(),
            content_tools: service.mcp_content_tools(),
            header_params,
            service,
            config,
            stopping,
        }
    }

    /// The capabilities announced by `initialize` (`session`) and
    /// `server/discover`: prompts and completions only when the registry
    /// has some, logging only with a session (the stateless revision has
    /// no `logging/setLevel`).
    pub(crate) fn capabilities(&self, session: bool) -> Value {
        let mut capabilities = json!({
            "tools": {"listChanged": false},
            "resources": {"subscribe": true, "listChanged": false},
        });
        if !self.service.prompts().is_empty() {
            capabilities["prompts"] = json!({"listChanged": false});
        }
        if self.service.has_completers() {
            capabilities["completions"] = json!({});
        }
        if session {
            capabilities["logging"] = json!({});
        }
        capabilities
    }

    /// `serverInfo`.
    pub(crate) fn server_info(&self) -> Value {
        json!({"name": self.service.name(), "version": self.service.version()})
    }

    /// `instructions`: how URIs are formed.
    pub(crate) fn instructions(&self) -> String {
        format!(
            "Tools and resources of the Cortex `{name}` service. Resource URIs are \
             `{scheme}://<path>`; resources/templates/list names the paths. Resources \
             whose _meta has \"{LIVE_META_KEY}\": true can be subscribed to.",
            name = self.service.name(),
            scheme = super::uri_scheme(self.service.name()),
        )
    }

    /// Serves one request method (not `initialize`, `server/discover` or
    /// `subscriptions/listen`, which the transport handles).
    /// `call` and `params` are the request's own: a tool call takes its
    /// context and arguments rather than copying them.
    pub(crate) async fn request(
        &self,
        call: Call,
        method: &str,
        params: Map<String, Value>,
    ) -> Result<Value, RpcError> {
        match method {
            "ping" => Ok(json!({})),
            "tools/list" => {
                no_cursor(&params)?;
                let tools: Vec<Value> = self
                    .service
                    .tools()
                    .into_iter()
                    .map(|t| {
                        let mut tool = json!({
                            "name": t.name,
                            "description": t.description,
                            "inputSchema": t.input_schema,
                        });
                        if t.read_only {
                            tool["annotations"] = json!({"readOnlyHint": true});
                        }
                        tool
                    })
                    .collect();
                Ok(json!({ "tools": tools }))
            }
            "tools/call" => self.call_tool(call, params).await,
            "resources/list" => {
                no_cursor(&params)?;
                Ok(json!({ "resources": self.resources.concrete() }))
            }
            "resources/templates/list" => {
                no_cursor(&params)?;
                Ok(json!({ "resourceTemplates": self.resources.templates() }))
            }
            "resources/read" => self.read_resource(&call, &params).await,
            "prompts/list" => {
                no_cursor(&params)?;
                let prompts: Vec<Value> =
                    self.service.prompts().iter().map(|p| p.to_mcp()).collect();
                Ok(json!({ "prompts": prompts }))
            }
            "prompts/get" => self.get_prompt(&call, &params).await,
            "completion/complete" => self.complete(&params),
            "logging/setLevel" if !call.stateless() => {
                let level = params.get("level").and_then(Value::as_str).ok_or_else(|| {
                    RpcError::invalid_params("logging/setLevel needs a string `level`")
                })?;
                let level = crate::notify::LogLevel::parse(level).ok_or_else(|| {
                    RpcError::invalid_params(format!(
                        "unknown log level `{level}`; one of debug, info, notice, warning, \
                         error, critical, alert, emergency"
                    ))
                })?;
                if let Some(session) = &call.session {
                    crate::notify::set_level(&session.log_level, level);
                }
                Ok(json!({}))
            }
            "resources/subscribe" if !call.stateless() => self.subscribe(&call, &params).await,
            "resources/unsubscribe" if !call.stateless() => {
                let uri = uri_param(&params)?;
                if let Some(session) = &call.session {
                    session.remove_subscription(uri);
                }
                Ok(json!({}))
            }
            _ => Err(RpcError::new(
                METHOD_NOT_FOUND,
                format!(
                    "method `{method}` is not served by `{}`",
                    self.service.name()
                ),
            )),
        }
    }

    async fn call_tool(
        &self,
        call: Call,
        mut params: Map<String, Value>,
    ) -> Result<Value, RpcError> {
        // Taken, not copied: nothing reads them after the call.
        let arguments = params.remove("arguments");
        let name = params
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| RpcError::invalid_params("tools/call needs a string `name`"))?;
        if !self.tool_names.contains(name) {
            return Err(unknown_tool(name, self.service.name()));
        }
        let arguments = match arguments {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(arguments)) => arguments,
            Some(_) => {
                return Err(RpcError::invalid_params(
                    "tools/call `arguments` must be an object",
                ));
            }
        };
        let structured = call.structured;
        match self.service.call_tool(call.ctx, name, arguments).await {
            Ok(value) if self.content_tools.contains(name) => Ok(content_result(value, structured)),
            Ok(value) => Ok(tool_result(value, structured)),
            Err(error) if error.code == ErrorCode::ToolNotFound => {
                Err(unknown_tool(name, self.service.name()))
            }
            Err(error) => Ok(tool_error(&error, structured)),
        }
    }

    async fn get_prompt(
        &self,
        call: &Call,
        params: &Map<String, Value>,
    ) -> Result<Value, RpcError> {
        let name = params
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| RpcError::invalid_params("prompts/get needs a string `name`"))?;
        let arguments = string_map(params.get("arguments"), "prompts/get `arguments`")?;
        let messages = self
            .service
            .get_prompt(call.ctx.clone(), name, arguments)
            .await
            .map_err(|e| RpcError::from_service(&e, call.stateless()))?;
        let description = self
            .service
            .prompts()
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.description.clone())
            .unwrap_or_default();
        let messages: Vec<Value> = messages.iter().map(|m| m.to_mcp()).collect();
        Ok(json!({"description": description, "messages": messages}))
    }

    /// `completion/complete` for a prompt argument (`ref/prompt`) or a
    /// resource template parameter (`ref/resource`); an argument without a
    /// completer completes to nothing.
    fn complete(&self, params: &Map<String, Value>) -> Result<Value, RpcError> {
        let reference = params
            .get("ref")
            .and_then(Value::as_object)
            .ok_or_else(|| RpcError::invalid_params("completion/complete needs an object `ref`"))?;
        let argument = params
            .get("argument")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                RpcError::invalid_params("completion/complete needs an object `argument`")
            })?;
        let (Some(name), Some(value)) = (
            argument.get("name").and_then(Value::as_str),
            argument.get("value").and_then(Value::as_str),
        ) else {
            return Err(RpcError::invalid_params(
                "completion/complete `argument` needs a string `name` and a string `value`",
            ));
        };
        let context = params
            .get("context")
            .and_then(|c| c.get("arguments"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let text = |key: &str| reference.get(key).and_then(Value::as_str);
        let completer = match text("type") {
            Some("ref/prompt") => {
                let prompt = text("name")
                    .ok_or_else(|| RpcError::invalid_params("`ref/prompt` needs a `name`"))?;
                self.service.prompt_completer(prompt, name)
            }
            Some("ref/resource") => {
                let uri = text("uri")
                    .ok_or_else(|| RpcError::invalid_params("`ref/resource` needs a `uri`"))?;
                let pattern = self.resources.path_of(uri).ok_or_else(|| {
                    RpcError::invalid_params(format!("no resource template `{uri}`"))
                })?;
                self.service.resource_completer(pattern, name)
            }
            _ => {
                return Err(RpcError::invalid_params(
                    "`ref.type` must be `ref/prompt` or `ref/resource`",
                ));
            }
        }
        .map_err(|e| RpcError::from_service(&e, false))?;
        let Some(completer) = completer else {
            return Ok(crate::prompt::completion(Vec::new()));
        };
        // A completer that panics fails this request, not the connection.
        let values =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| completer(value, &context)))
                .map_err(|_| {
                tracing::error!(argument = name, "a completer panicked");
                RpcError::new(
                    super::jsonrpc::INTERNAL_ERROR,
                    format!("completing `{name}` failed unexpectedly"),
                )
            })?;
        Ok(crate::prompt::completion(values))
    }

    fn not_found(&self, uri: &str, stateless: bool) -> RpcError {
        let error = ServiceError::resource_not_found(format!(
            "resource `{uri}` not found on service `{}`",
            self.service.name()
        ))
        .with_details(json!({ "uri": uri }));
        RpcError::from_service(&error, stateless).with_uri(uri)
    }

    async fn read_resource(
        &self,
        call: &Call,
        params: &Map<String, Value>,
    ) -> Result<Value, RpcError> {
        let uri = uri_param(params)?;
        let path = self
            .resources
            .path_of(uri)
            .ok_or_else(|| self.not_found(uri, call.stateless()))?;
        let content = self
            .service
            .read_resource(call.ctx.clone(), path)
            .await
            .map_err(|e| RpcError::from_service(&e, call.stateless()).with_uri(uri))?;
        let content = match content {
            ResourceContent::Json(value) => {
                json!({"uri": uri, "mimeType": "application/json", "text": value.to_string()})
            }
            ResourceContent::Text { text, mime_type } => {
                json!({"uri": uri, "mimeType": mime_type, "text": text})
            }
            ResourceContent::Binary { data, mime_type } => {
                use base64::Engine as _;
                let blob = base64::engine::general_purpose::STANDARD.encode(data);
                json!({"uri": uri, "mimeType": mime_type, "blob": blob})
            }
        };
        Ok(json!({ "contents": [content] }))
    }

    /// Opens the live stream of `uri`, checking that it has one.
    pub(crate) async fn open_live(
        &self,
        ctx: &CallContext,
        uri: &str,
        stateless: bool,
    ) -> Result<(String, EventStream), RpcError> {
        let path = self
            .resources
            .path_of(uri)
            .ok_or_else(|| self.not_found(uri, stateless))?;
        let info = self
            .resources
            .find(path)
            .ok_or_else(|| self.not_found(uri, stateless))?;
        if !info.streaming {
            return Err(RpcError::invalid_params(format!(
                "resource `{uri}` has no live stream, so it sends no updates; resources whose \
                 _meta has \"{LIVE_META_KEY}\": true do"
            ))
            .with_uri(uri));
        }
        let events = self
            .service
            .stream_resource(ctx.clone(), path, None)
            .await
            .map_err(|e| RpcError::from_service(&e, stateless).with_uri(uri))?;
        Ok((path.to_string(), events))
    }

    async fn subscribe(&self, call: &Call, params: &Map<String, Value>) -> Result<Value, RpcError> {
        let uri = uri_param(params)?;
        let Some(session) = &call.session else {
            return Err(RpcError::new(
                METHOD_NOT_FOUND,
                "resources/subscribe needs a session",
            ));
        };
        if session.is_subscribed(uri) {
            return Ok(json!({}));
        }
        let limit = self.config.mcp.max_subscriptions;
        if session.subscription_count() >= limit {
            return Err(RpcError::new(
                super::jsonrpc::INTERNAL_ERROR,
                format!("a session may hold at most {limit} subscriptions; unsubscribe first"),
            )
            .with_data(json!({ "limit": limit })));
        }
        let (path, events) = self.open_live(&call.ctx, uri, false).await?;
        let task = self.spawn_subscription(
            call.ctx.clone(),
            path,
            uri.to_string(),
            events,
            session.outbox.clone(),
            None,
        );
        session.add_subscription(uri.to_string(), task);
        Ok(json!({}))
    }

    /// Runs a resource's live stream in a task, queueing
    /// `notifications/resources/updated {uri}` (with `meta` as `_meta`) in
    /// `outbox` for each event. A failed stream is reopened after the
    /// reconnect delay, resuming after its last event id; a stream that
    /// ends ends the subscription; shutdown stops it.
    pub(crate) fn spawn_subscription(
        &self,
        ctx: CallContext,
        path: String,
        uri: String,
        first: EventStream,
        outbox: Arc<Outbox>,
        meta: Option<Value>,
    ) -> AbortHandle {
        let service = self.service.clone();
        let mut stopping = self.stopping.clone();
        let retry = self.config.stream_retry;
        let mut params = json!({ "uri": uri });
        if let Some(meta) = meta {
            params["_meta"] = meta;
        }
        let message = notification("notifications/resources/updated", params);
        let task = tokio::spawn(async move {
            let mut events = first;
            let mut last_id: Option<String> = None;
            let mut failures = 0u32;
            loop {
                let next = tokio::select! {
                    next = events.next() => next,
                    _ = stopping.wait_for(|s| *s) => return,
                };
                match next {
                    Some(Ok(event)) => {
                        failures = 0;
                        if event.id.is_some() {
                            last_id = event.id;
                        }
                        outbox.push(message.clone(), Some(uri.clone()));
                    }
                    None => {
                        tracing::debug!(%uri, "resource stream ended; subscription complete");
                        return;
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%uri, %error, "subscribed resource stream failed; reopening");
                        loop {
                            failures += 1;
                            let delay = backoff(retry, failures);
                            tokio::select! {
                                _ = tokio::time::sleep(delay) => {}
                                _ = stopping.wait_for(|s| *s) => return,
                            }
                            match service
                                .stream_resource(ctx.clone(), &path, last_id.clone())
                                .await
                            {
                                Ok(reopened) => {
                                    events = reopened;
                                    break;
                                }
                                Err(error) => {
                                    tracing::warn!(%uri, %error, failures, "could not reopen a subscribed resource stream");
                                }
                            }
                        }
                    }
                }
            }
        });
        task.abort_handle()
    }
}

/// The reconnect delay doubles per failure, from `retry` up to 30 s.
fn backoff(retry: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(5);
    (retry.max(Duration::from_millis(10)) * factor).min(Duration::from_secs(30))
}

fn unknown_tool(name: &str, service: &str) -> RpcError {
    RpcError::invalid_params(format!("unknown tool `{name}` on service `{service}`"))
        .with_data(json!({ "tool": name }))
}

/// An object of strings (prompt arguments); anything else is -32602.
fn string_map(
    value: Option<&Value>,
    what: &str,
) -> Result<std::collections::BTreeMap<String, String>, RpcError> {
    match value {
        None | Some(Value::Null) => Ok(Default::default()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(text) => Ok((k.clone(), text.clone())),
                _ => Err(RpcError::invalid_params(format!(
                    "{what}: `{k}` must be a string"
                ))),
            })
            .collect(),
        Some(_) => Err(RpcError::invalid_params(format!(
            "{what} must be an object"
        ))),
    }
}

fn uri_param(params: &Map<String, Value>) -> Result<&str, RpcError> {
    params
        .get("uri")
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid_params("`uri` must be a string"))
}

/// Lists are never paged, so no cursor is ever valid.
fn no_cursor(params: &Map<String, Value>) -> Result<(), RpcError> {
    match params.get("cursor") {
        None | Some(Value::Null) => Ok(()),
        Some(_) => Err(RpcError::invalid_params(
            "invalid cursor: this server does not page its lists",
        )),
    }
}

/// A tool's value as a `tools/call` result: the JSON as text, and as
/// `structuredContent` when it is an object.
fn tool_result(value: Value, structured: bool) -> Value {
    // Built by hand: `json!` would copy the text through `to_value`.
    let (text, structured) = match value {
        Value::String(text) => (text, None),
        // `to_string` of the serializer, not of `Display`, which writes
        // through a formatter, piece by piece. A `Value` always encodes.
        value @ Value::Object(_) if structured => (encode(&value), Some(value)),
        other => (encode(&other), None),
    };
    let mut item = Map::new();
    item.insert("type".into(), Value::from("text"));
    item.insert("text".into(), Value::String(text));
    let mut result = Map::new();
    result.insert("content".into(), Value::Array(vec![Value::Object(item)]));
    result.insert("isError".into(), Value::Bool(false));
    if let Some(value) = structured {
        result.insert("structuredContent".into(), value);
    }
    Value::Object(result)
}

fn encode(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The value of a tool declared with `Tool::returns_mcp_content`: sent as
/// it is when it is an object with a `content` array, else as any value.
fn content_result(value: Value, structured: bool) -> Value {
    match value {
        Value::Object(mut result) if result.get("content").is_some_and(Value::is_array) => {
            result.entry("isError").or_insert(Value::Bool(false));
            if !structured {
                result.remove("structuredContent");
            }
            Value::Object(result)
        }
        other => tool_result(other, structured),
    }
}

/// A failed call as a result with `isError: true`: the Cortex error as text
/// (`invalid_arguments: user_id: …`) and as `structuredContent`.
fn tool_error(error: &ServiceError, structured: bool) -> Value {
    let mut result = json!({
        "content": [{"type": "text", "text": format!("{}: {}", error.code, error.message)}],
        "isError": true,
    });
    if structured {
        result["structuredContent"] = serde_json::to_value(error.envelope()).unwrap_or(Value::Null);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_carry_text_and_structure() {
        let ok = tool_result(json!({"a": 1}), true);
        assert_eq!(ok["structuredContent"]["a"], 1);
        assert_eq!(ok["content"][0]["text"], "{\"a\":1}");
        let old = tool_result(json!({"a": 1}), false);
        assert!(old.get("structuredContent").is_none());
        let list = tool_result(json!([1, 2]), true);
        assert!(list.get("structuredContent").is_none());
        let failed = tool_error(&ServiceError::invalid_argument("x", "bad"), true);
        assert_eq!(failed["isError"], true);
        assert_eq!(failed["content"][0]["text"], "invalid_arguments: x: bad");
        assert_eq!(
            failed["structuredContent"]["error"]["code"],
            "invalid_arguments"
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_millis(100);
        assert_eq!(backoff(base, 1), base);
        assert_eq!(backoff(base, 2), base * 2);
        assert_eq!(backoff(base, 40), Duration::from_millis(3200));
        assert_eq!(backoff(Duration::from_secs(10), 9), Duration::from_secs(30));
    }
}
