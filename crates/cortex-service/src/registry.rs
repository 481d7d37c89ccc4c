//! The registry of tools and resources, and dispatch to their handlers.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use cortex_proto::ErrorCode;
use cortex_proto::listing::{Health, ResourceInfo, ToolInfo};
use cortex_proto::sse::Event;
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use serde_json::{Map, Value};

use crate::error::ServiceError;
use crate::idempotency::{IdempotencyStore, InMemoryIdempotencyStore, KeyLocks};
use crate::metrics::{ExtraMetrics, OperationMetrics, ServiceMetrics};
use crate::pattern::{Params, Pattern, PatternError, split_uri};

pub use crate::call::CallContext;

/// A live stream of events, as a resource's stream handler returns it.
pub type EventStream = BoxStream<'static, Result<Event, ServiceError>>;

type ToolHandler = Arc<
    dyn Fn(CallContext, Map<String, Value>) -> BoxFuture<'static, Result<Value, ServiceError>>
        + Send
        + Sync,
>;
type ReadHandler = Arc<
    dyn Fn(CallContext, Params) -> BoxFuture<'static, Result<ResourceContent, ServiceError>>
        + Send
        + Sync,
>;
type StreamHandler = Arc<
    dyn Fn(
            CallContext,
            Params,
            Option<String>,
        ) -> BoxFuture<'static, Result<EventStream, ServiceError>>
        + Send
        + Sync,
>;
type HealthCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;
type HealthInfo = Arc<dyn Fn() -> BoxFuture<'static, Value> + Send + Sync>;

/// The content of a resource read.
#[derive(Debug, Clone, PartialEq)]
pub enum ResourceContent {
    /// JSON, sent as `application/json`.
    Json(Value),
    /// Text in a media type of the resource's own.
    Text {
        /// The text.
        text: String,
        /// Its media type, such as `text/markdown`.
        mime_type: String,
    },
    /// Bytes in a media type of the resource's own (an image, a file): sent
    /// as they are over the Cortex dialect, base64 in MCP's `blob`.
    Binary {
        /// The bytes.
        data: Vec<u8>,
        /// Their media type, such as `image/png`.
        mime_type: String,
    },
}

impl ResourceContent {
    /// The media type a read is sent with.
    pub fn mime_type(&self) -> &str {
        match self {
            Self::Json(_) => "application/json",
            Self::Text { mime_type, .. } | Self::Binary { mime_type, .. } => mime_type,
        }
    }
}

/// A tool: a name, a description, the JSON Schema of its arguments, and the
/// async function that runs it.
#[derive(Clone)]
pub struct Tool {
    name: String,
    description: String,
    schema: Value,
    handler: ToolHandler,
    /// Changes nothing: repeating it is always safe, so an idempotency key
    /// is not recorded (that would cost a durable write per read).
    read_only: bool,
    /// Its value is an MCP `CallToolResult` (`{content: [...]}`), sent to
    /// MCP callers as it is.
    mcp_content: bool,
}

impl Tool {
    /// Declares that the tool's value is an MCP `CallToolResult`: an object
    /// with a `content` array of MCP content blocks (text, image, audio,
    /// embedded resources), and optionally `structuredContent` and
    /// `isError`. An MCP `tools/call` sends it as it is (`isError: false`
    /// added when absent, `structuredContent` left out on revision
    /// `2025-03-26`); a value of another shape is sent as any tool's is.
    /// Cortex dialect and in-process callers get the value as JSON.
    pub fn returns_mcp_content(mut self) -> Self {
        self.mcp_content = true;
        self
    }

    /// Declares that the tool changes nothing (a lookup, a computation):
    /// callers may repeat it freely, and keyed calls of it are not recorded.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// A tool whose arguments are checked against `schema` before `handler` runs.
    pub fn new<F, Fut>(
        name: impl Into<String>,
        description: impl Into<String>,
        schema: Value,
        handler: F,
    ) -> Self
    where
        F: Fn(CallContext, Map<String, Value>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, ServiceError>> + Send + 'static,
    {
        Self {
            name: name.into(),
            description: description.into(),
            schema,
            handler: Arc::new(move |ctx, args| Box::pin(handler(ctx, args))),
            read_only: false,
            mcp_content: false,
        }
    }
}

/// A resource: a URI pattern, a read handler and, optionally, a live stream.
#[derive(Clone)]
pub struct Resource {
    pattern: String,
    description: String,
    mime_type: String,
    read: ReadHandler,
    stream: Option<StreamHandler>,
    /// Completers of the pattern's parameters, by parameter name.
    completers: Vec<(String, crate::prompt::Completer)>,
}

impl Resource {
    /// A JSON resource read by `read`.
    pub fn new<F, Fut>(pattern: impl Into<String>, description: impl Into<String>, read: F) -> Self
    where
        F: Fn(CallContext, Params) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ResourceContent, ServiceError>> + Send + 'static,
    {
        Self {
            pattern: pattern.into(),
            description: description.into(),
            mime_type: "application/json".into(),
            read: Arc::new(move |ctx, params| Box::pin(read(ctx, params))),
            stream: None,
            completers: Vec::new(),
        }
    }

    /// Declares the media type reads are sent with.
    pub fn with_mime_type(mut self, mime_type: impl Into<String>) -> Self {
        self.mime_type = mime_type.into();
        self
    }

    /// Suggests values for the pattern's parameter `param` (MCP
    /// `completion/complete`). It runs on the request's task, so it must be
    /// quick and never block.
    pub fn with_completer<F>(mut self, param: impl Into<String>, complete: F) -> Self
    where
        F: Fn(&str, &Map<String, Value>) -> Vec<String> + Send + Sync + 'static,
    {
        self.completers.push((param.into(), Arc::new(complete)));
        self
    }

    /// Adds a live stream. The handler gets the `Last-Event-ID` the reader
    /// resumes after, and must then send exactly the events after it.
    pub fn with_stream<F, Fut>(mut self, stream: F) -> Self
    where
        F: Fn(CallContext, Params, Option<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<EventStream, ServiceError>> + Send + 'static,
    {
        self.stream = Some(Arc::new(move |ctx, params, last| {
            Box::pin(stream(ctx, params, last))
        }));
        self
    }
}

struct CompiledTool {
    tool: Tool,
    validator: jsonschema::Validator,
    /// Its series, kept here so a call finds them without a lookup.
    metrics: OperationMetrics,
}

struct CompiledResource {
    resource: Resource,
    pattern: Pattern,
    read_metrics: OperationMetrics,
    stream_metrics: OperationMetrics,
}

/// Why a service cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Two tools share a name.
    #[error("tool `{0}` is registered twice")]
    DuplicateTool(String),
    /// A tool's schema is not a valid JSON Schema.
    #[error("tool `{tool}` has an invalid schema: {message}")]
    InvalidSchema {
        /// The tool.
        tool: String,
        /// What the schema compiler said.
        message: String,
    },
    /// Two prompts share a name.
    #[error("prompt `{0}` is registered twice")]
    DuplicatePrompt(String),
    /// A resource pattern is malformed or registered twice.
    #[error(transparent)]
    Pattern(#[from] PatternError),
}

/// Builds a [`Service`].
pub struct ServiceBuilder {
    name: String,
    version: String,
    tools: Vec<Tool>,
    resources: Vec<Resource>,
    prompts: Vec<crate::prompt::Prompt>,
    health_checks: Vec<(String, HealthCheck)>,
    health_info: Vec<(String, HealthInfo)>,
    idempotency: Option<Arc<dyn IdempotencyStore>>,
    extra_metrics: Vec<ExtraMetrics>,
    routes: Option<axum::Router>,
    public_routes: Option<axum::Router>,
}

impl ServiceBuilder {
    /// Adds a tool.
    pub fn tool(mut self, tool: Tool) -> Self {
        self.tools.push(tool);
        self
    }

    /// Adds a resource.
    pub fn resource(mut self, resource: Resource) -> Self {
        self.resources.push(resource);
        self
    }

    /// Adds a prompt (served over MCP: `prompts/list`, `prompts/get`).
    pub fn prompt(mut self, prompt: crate::prompt::Prompt) -> Self {
        self.prompts.push(prompt);
        self
    }

    /// Adds a dependency check run by `GET /health`; an `Err` makes the
    /// service report 503 with the message under the check's name.
    pub fn health_check<F, Fut>(mut self, name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.health_checks
            .push((name.into(), Arc::new(move || Box::pin(check()))));
        self
    }

    /// Adds what `info()` reports under `name` in `GET /health`, without
    /// deciding the status: a dependency the service works without (an
    /// application that queues while its store is away), reported so an
    /// operator sees it.
    pub fn health_info<F, Fut>(mut self, name: impl Into<String>, info: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Value> + Send + 'static,
    {
        self.health_info
            .push((name.into(), Arc::new(move || Box::pin(info()))));
        self
    }

    /// Serves `routes` beside the dialect's, behind the same layers: the
    /// auth layer (each handler finds the verified caller through
    /// [`CallContext::from_headers`]), the bounds on hosts, origins, sizes
    /// and request slots, and the request id. For an application on the
    /// kit, such as a front door with routes of its own. A route the
    /// dialect has (`/health`, `/tool/{name}`, …) must not be given again.
    /// Long-lived answers (streams) should end when [`Stopping`](crate::Stopping)
    /// says so, which the kit hands every request as an extension.
    pub fn routes(mut self, routes: axum::Router) -> Self {
        self.routes = Some(match self.routes.take() {
            Some(existing) => existing.merge(routes),
            None => routes,
        });
        self
    }

    /// Serves `routes` without the auth layer (still behind the bounds and
    /// the request id): only what holds nobody's data, such as a static
    /// page that asks its user for a token.
    pub fn public_routes(mut self, routes: axum::Router) -> Self {
        self.public_routes = Some(match self.public_routes.take() {
            Some(existing) => existing.merge(routes),
            None => routes,
        });
        self
    }

    /// Appends `text()` to every `GET /metrics` answer, after the kit's own
    /// metrics: Prometheus text (format 0.0.4) whose metric names are not
    /// the kit's (`cortex_service_*`), such as an outgoing client's
    /// (`NetworkMcpClient::prometheus()` in `cortex-client`). It runs on
    /// every scrape, so it must be quick and never block; its labels must be
    /// bounded like the kit's (no user ids, URIs or content). At most
    /// [`MAX_EXTRA_BYTES`](crate::metrics::MAX_EXTRA_BYTES) of it is kept.
    pub fn extra_metrics<F>(mut self, text: F) -> Self
    where
        F: Fn() -> String + Send + Sync + 'static,
    {
        self.extra_metrics.push(Arc::new(text));
        self
    }

    /// Where keyed tool calls are remembered (default: in memory, bounded).
    pub fn idempotency_store(mut self, store: Arc<dyn IdempotencyStore>) -> Self {
        self.idempotency = Some(store);
        self
    }

    /// Compiles schemas and patterns.
    pub fn build(self) -> Result<Service, BuildError> {
        let metrics = ServiceMetrics::new(&self.name, &self.version, self.extra_metrics);
        let mut tools = BTreeMap::new();
        for tool in self.tools {
            let validator =
                jsonschema::validator_for(&tool.schema).map_err(|e| BuildError::InvalidSchema {
                    tool: tool.name.clone(),
                    message: e.to_string(),
                })?;
            let name = tool.name.clone();
            if tools.contains_key(&name) {
                return Err(BuildError::DuplicateTool(name));
            }
            let compiled = CompiledTool {
                metrics: metrics.tool(&name),
                tool,
                validator,
            };
            if tools.insert(name.clone(), compiled).is_some() {
                return Err(BuildError::DuplicateTool(name));
            }
        }
        let mut resources: Vec<CompiledResource> = Vec::new();
        for resource in self.resources {
            let pattern = Pattern::parse(&resource.pattern)?;
            if resources.iter().any(|r| r.pattern == pattern) {
                return Err(PatternError {
                    pattern: resource.pattern,
                    reason: "registered twice",
                }
                .into());
            }
            resources.push(CompiledResource {
                read_metrics: metrics.resource(&resource.pattern, "read"),
                stream_metrics: metrics.resource(&resource.pattern, "stream"),
                resource,
                pattern,
            });
        }
        let mut prompts = BTreeMap::new();
        for prompt in self.prompts {
            let name = prompt.name.clone();
            if prompts.insert(name.clone(), prompt).is_some() {
                return Err(BuildError::DuplicatePrompt(name));
            }
        }
        Ok(Service {
            inner: Arc::new(Inner {
                name: self.name,
                prompts,
                version: self.version,
                tools,
                resources,
                health_checks: self.health_checks,
                health_info: self.health_info,
                routes: self.routes,
                public_routes: self.public_routes,
                idempotency: self
                    .idempotency
                    .unwrap_or_else(|| Arc::new(InMemoryIdempotencyStore::default())),
                key_locks: Arc::new(KeyLocks::default()),
                stream_slots: std::sync::OnceLock::new(),
                metrics,
            }),
        })
    }
}

/// A registry of tools and resources; cheap to clone.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    version: String,
    tools: BTreeMap<String, CompiledTool>,
    resources: Vec<CompiledResource>,
    prompts: BTreeMap<String, crate::prompt::Prompt>,
    health_checks: Vec<(String, HealthCheck)>,
    health_info: Vec<(String, HealthInfo)>,
    /// An application's own routes (see [`ServiceBuilder::routes`]).
    routes: Option<axum::Router>,
    public_routes: Option<axum::Router>,
    idempotency: Arc<dyn IdempotencyStore>,
    key_locks: Arc<KeyLocks>,
    /// Streams open at once, once the server set a cap
    /// ([`Service::limit_streams`]).
    stream_slots: std::sync::OnceLock<Arc<tokio::sync::Semaphore>>,
    metrics: ServiceMetrics,
}

impl Service {
    /// Starts a service called `name`.
    pub fn builder(name: impl Into<String>, version: impl Into<String>) -> ServiceBuilder {
        ServiceBuilder {
            name: name.into(),
            version: version.into(),
            tools: Vec::new(),
            resources: Vec::new(),
            prompts: Vec::new(),
            health_checks: Vec::new(),
            health_info: Vec::new(),
            idempotency: None,
            extra_metrics: Vec::new(),
            routes: None,
            public_routes: None,
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The service's version.
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// Runs the health checks: `200` and `healthy`, or `503` and
    /// `unhealthy`, with each check's `ok` or failure (the body of `GET
    /// /health`).
    pub async fn health(&self) -> (u16, Health) {
        let (results, info) = futures::join!(self.check_health(), self.health_info());
        let healthy = results.iter().all(|(_, r)| r.is_ok());
        let mut checks: serde_json::Map<String, Value> = results
            .into_iter()
            .map(|(name, r)| (name, Value::String(r.err().unwrap_or_else(|| "ok".into()))))
            .collect();
        checks.extend(info);
        let body = Health {
            status: if healthy { "healthy" } else { "unhealthy" }.into(),
            service: self.name().into(),
            version: self.version().into(),
            checks,
        };
        (if healthy { 200 } else { 503 }, body)
    }

    /// The text of `GET /metrics` (Prometheus format 0.0.4, see
    /// [`crate::metrics`]): per tool and per resource pattern, calls, errors
    /// by code and latency; open streams and connections; then the text of
    /// every [`ServiceBuilder::extra_metrics`] source.
    pub fn render_metrics(&self) -> String {
        self.inner.metrics.render()
    }

    /// Caps the streams open at once: resource streams (SSE, MCP
    /// subscriptions, in-process) and MCP notification streams. Set by the
    /// server from `HttpLimits::max_streams`; the first cap set stays.
    pub(crate) fn limit_streams(&self, max: usize) {
        let _ = self
            .inner
            .stream_slots
            .set(Arc::new(tokio::sync::Semaphore::new(max)));
    }

    /// A slot for one more open stream, to hold for the stream's life;
    /// `None` without a cap, `503 unavailable` when every slot is taken.
    pub(crate) fn stream_slot(
        &self,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ServiceError> {
        let Some(slots) = self.inner.stream_slots.get() else {
            return Ok(None);
        };
        slots.clone().try_acquire_owned().map(Some).map_err(|_| {
            static NO_STREAM_SLOT: crate::rate_log::RateLimitedLog =
                crate::rate_log::RateLimitedLog::new();
            if NO_STREAM_SLOT.allow() {
                tracing::warn!(
                    "every stream slot is taken; streams refused (logged at most every 10 s)"
                );
            }
            ServiceError::unavailable("the service has its maximum of open streams; retry shortly")
        })
    }

    /// The gauge of connections open now, for the listener to keep.
    pub(crate) fn open_connections(&self) -> prometheus_client::metrics::gauge::Gauge {
        self.inner.metrics.open_connections.clone()
    }

    /// The expiry gauge of the TLS certificate file at `path`, for the
    /// TLS file watcher to keep.
    pub(crate) fn tls_expiry(
        &self,
        path: &std::path::Path,
    ) -> prometheus_client::metrics::gauge::Gauge {
        self.inner.metrics.tls_expiry(path)
    }

    /// Counts a call to `tool` refused before it reached the registry (a
    /// body that is not JSON, or too large), under its code.
    pub(crate) fn count_refused_call(&self, tool: &str, error: &ServiceError) {
        let metrics = match self.inner.tools.get(tool) {
            Some(compiled) => &compiled.metrics,
            None => &self.inner.metrics.unknown_tool,
        };
        let _ = metrics.start().outcome::<()>(Err(error.clone()));
    }

    /// Every tool, sorted by name.
    pub fn tools(&self) -> Vec<ToolInfo> {
        self.inner
            .tools
            .values()
            .map(|t| ToolInfo {
                name: t.tool.name.clone(),
                description: t.tool.description.clone(),
                input_schema: t.tool.schema.clone(),
                read_only: t.tool.read_only,
            })
            .collect()
    }

    /// The tools whose values are MCP `CallToolResult`s
    /// ([`Tool::returns_mcp_content`]).
    pub(crate) fn mcp_content_tools(&self) -> std::collections::BTreeSet<String> {
        self.inner
            .tools
            .values()
            .filter(|t| t.tool.mcp_content)
            .map(|t| t.tool.name.clone())
            .collect()
    }

    /// Every resource pattern, in registration order.
    pub fn resources(&self) -> Vec<ResourceInfo> {
        self.inner
            .resources
            .iter()
            .map(|r| ResourceInfo {
                uri_template: r.resource.pattern.clone(),
                description: r.resource.description.clone(),
                mime_type: r.resource.mime_type.clone(),
                streaming: r.resource.stream.is_some(),
            })
            .collect()
    }

    /// Every prompt, sorted by name.
    pub fn prompts(&self) -> Vec<&crate::prompt::Prompt> {
        self.inner.prompts.values().collect()
    }

    /// Whether any prompt argument or resource parameter has a completer.
    pub fn has_completers(&self) -> bool {
        self.inner
            .prompts
            .values()
            .any(|p| p.arguments.iter().any(|a| a.completer.is_some()))
            || self
                .inner
                .resources
                .iter()
                .any(|r| !r.resource.completers.is_empty())
    }

    /// Runs a prompt: `invalid_arguments` when it is unknown (field `name`)
    /// or a required argument is missing (field: the argument); a handler
    /// panic is a 500.
    pub async fn get_prompt(
        &self,
        ctx: CallContext,
        name: &str,
        arguments: BTreeMap<String, String>,
    ) -> Result<Vec<crate::prompt::PromptMessage>, ServiceError> {
        let prompt = self.inner.prompts.get(name).ok_or_else(|| {
            ServiceError::invalid_argument(
                "name",
                format!("unknown prompt `{name}` on service `{}`", self.inner.name),
            )
        })?;
        if let Some(missing) = prompt
            .arguments
            .iter()
            .find(|a| a.required && !arguments.contains_key(&a.name))
        {
            return Err(ServiceError::invalid_argument(
                &missing.name,
                format!(
                    "prompt `{name}` needs the argument `{}`: {}",
                    missing.name, missing.description
                ),
            ));
        }
        run_guarded(name, (prompt.handler)(ctx, arguments)).await
    }

    /// The completer of argument `argument` of prompt `prompt`, if it has one.
    pub(crate) fn prompt_completer(
        &self,
        prompt: &str,
        argument: &str,
    ) -> Result<Option<crate::prompt::Completer>, ServiceError> {
        let prompt = self.inner.prompts.get(prompt).ok_or_else(|| {
            ServiceError::invalid_argument("ref.name", format!("unknown prompt `{prompt}`"))
        })?;
        Ok(prompt
            .arguments
            .iter()
            .find(|a| a.name == argument)
            .and_then(|a| a.completer.clone()))
    }

    /// The completer of parameter `param` of the resource registered with
    /// `pattern` exactly, if it has one.
    pub(crate) fn resource_completer(
        &self,
        pattern: &str,
        param: &str,
    ) -> Result<Option<crate::prompt::Completer>, ServiceError> {
        let resource = self
            .inner
            .resources
            .iter()
            .find(|r| r.resource.pattern == pattern)
            .ok_or_else(|| {
                ServiceError::invalid_argument(
                    "ref.uri",
                    format!("no resource template `{pattern}`"),
                )
            })?;
        Ok(resource
            .resource
            .completers
            .iter()
            .find(|(name, _)| name == param)
            .map(|(_, c)| c.clone()))
    }

    /// What every [`ServiceBuilder::health_info`] source reports now; one
    /// that takes over 2 s reports that it timed out.
    async fn health_info(&self) -> Vec<(String, Value)> {
        let infos = self
            .inner
            .health_info
            .iter()
            .map(|(name, info)| async move {
                let value = tokio::time::timeout(std::time::Duration::from_secs(2), info())
                    .await
                    .unwrap_or_else(|_| Value::String("timed out after 2 s".into()));
                (name.clone(), value)
            });
        futures::future::join_all(infos).await
    }

    /// An application's own routes: behind auth, and public.
    pub(crate) fn app_routes(&self) -> (Option<axum::Router>, Option<axum::Router>) {
        (self.inner.routes.clone(), self.inner.public_routes.clone())
    }

    /// Runs every health check; the failures by name.
    pub async fn check_health(&self) -> Vec<(String, Result<(), String>)> {
        let checks = self
            .inner
            .health_checks
            .iter()
            .map(|(name, check)| async move {
                let outcome =
                    match tokio::time::timeout(std::time::Duration::from_secs(2), check()).await {
                        Ok(outcome) => outcome,
                        Err(_) => Err("check timed out after 2 s".to_string()),
                    };
                (name.clone(), outcome)
            });
        futures::future::join_all(checks).await
    }

    /// Calls a tool: checks the arguments against its schema, runs a keyed
    /// call at most once, and turns a handler panic into a 500.
    pub async fn call_tool(
        &self,
        ctx: CallContext,
        tool: &str,
        arguments: Map<String, Value>,
    ) -> Result<Value, ServiceError> {
        let compiled = self.inner.tools.get(tool);
        let metrics = match compiled {
            Some(compiled) => &compiled.metrics,
            None => &self.inner.metrics.unknown_tool,
        };
        let timer = metrics.start();
        timer.outcome(self.run_tool(compiled, ctx, tool, arguments).await)
    }

    async fn run_tool(
        &self,
        compiled: Option<&CompiledTool>,
        ctx: CallContext,
        tool: &str,
        arguments: Map<String, Value>,
    ) -> Result<Value, ServiceError> {
        let compiled = compiled.ok_or_else(|| {
            ServiceError::new(
                ErrorCode::ToolNotFound,
                format!("tool `{tool}` not found on service `{}`", self.inner.name),
            )
            .with_details(serde_json::json!({ "tool": tool }))
        })?;
        let instance = Value::Object(arguments);
        if let Err(error) = compiled.validator.validate(&instance) {
            return Err(schema_error(&error));
        }
        let Value::Object(arguments) = instance else {
            return Err(ServiceError::internal("arguments changed shape"));
        };
        let key = ctx
            .idempotency_key
            .clone()
            .filter(|_| !compiled.tool.read_only)
            .map(|key| scoped_key(ctx.caller.as_ref(), key));
        let Some(key) = key else {
            return run_guarded(tool, (compiled.tool.handler)(ctx, arguments)).await;
        };
        // The handler records the key it is given, so it gets the scoped one.
        let ctx = CallContext {
            idempotency_key: Some(key.clone()),
            ..ctx
        };
        // Same key, same tool: wait for the call in flight, then replay.
        let _guard = self.inner.key_locks.lock(tool, &key).await;
        if let Some(result) = self.inner.idempotency.get(tool, &key).await? {
            tracing::debug!(tool, key, "replaying a keyed call");
            return Ok(result);
        }
        let result = run_guarded(tool, (compiled.tool.handler)(ctx, arguments)).await?;
        self.inner.idempotency.put(tool, &key, result).await
    }

    fn find_resource(&self, uri: &str) -> Result<(&CompiledResource, Params), ServiceError> {
        let segments = split_uri(uri)?;
        self.inner
            .resources
            .iter()
            .filter_map(|r| r.pattern.matches(&segments).map(|p| (r, p)))
            .max_by_key(|(r, _)| r.pattern.specificity())
            .ok_or_else(|| {
                ServiceError::resource_not_found(format!(
                    "resource `{uri}` not found on service `{}`",
                    self.inner.name
                ))
                .with_details(serde_json::json!({ "uri": uri }))
            })
    }

    /// Reads a resource by its (percent-encoded) URI.
    pub async fn read_resource(
        &self,
        ctx: CallContext,
        uri: &str,
    ) -> Result<ResourceContent, ServiceError> {
        let (resource, params) = match self.find_resource(uri) {
            Ok(found) => found,
            Err(error) => return self.inner.metrics.unknown_read.start().outcome(Err(error)),
        };
        let timer = resource.read_metrics.start();
        timer.outcome(run_guarded(uri, (resource.resource.read)(ctx, params)).await)
    }

    /// Streams a resource: its live stream if it has one; otherwise a finite
    /// stream of its read (one event per element of a list, else one event,
    /// ids counting from 1), which honours `last_event_id` the same way.
    pub async fn stream_resource(
        &self,
        ctx: CallContext,
        uri: &str,
        last_event_id: Option<String>,
    ) -> Result<EventStream, ServiceError> {
        let (resource, params) = match self.find_resource(uri) {
            Ok(found) => found,
            Err(error) => {
                return self
                    .inner
                    .metrics
                    .unknown_stream
                    .start()
                    .outcome(Err(error));
            }
        };
        let metrics = &resource.stream_metrics;
        let timer = metrics.start();
        let slot = match self.stream_slot() {
            Ok(slot) => slot,
            Err(error) => return timer.outcome(Err(error)),
        };
        let events = timer.outcome(open_stream(resource, ctx, uri, params, last_event_id).await)?;
        // The slot is held as long as the stream is.
        Ok(Box::pin(metrics.count_open(events).map(move |event| {
            let _slot = &slot;
            event
        })))
    }
}

/// The events of `resource`: its live stream if it has one; else its read,
/// one event per element of a list.
async fn open_stream(
    resource: &CompiledResource,
    ctx: CallContext,
    uri: &str,
    params: Params,
    last_event_id: Option<String>,
) -> Result<EventStream, ServiceError> {
    if let Some(stream) = &resource.resource.stream {
        return run_guarded(uri, stream(ctx, params, last_event_id)).await;
    }
    let content = run_guarded(uri, (resource.resource.read)(ctx, params)).await?;
    let skip = match last_event_id.as_deref() {
        None | Some("") => 0,
        Some(id) => id.parse::<usize>().map_err(|_| {
            ServiceError::invalid_request(format!(
                "Last-Event-ID `{id}` is not an id of this stream"
            ))
        })?,
    };
    let events: Vec<Event> = match content {
        ResourceContent::Json(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| Event::message(item.to_string()).with_id((i + 1).to_string()))
            .collect(),
        ResourceContent::Json(value) => vec![Event::message(value.to_string()).with_id("1")],
        ResourceContent::Text { text, .. } => vec![Event::message(text).with_id("1")],
        ResourceContent::Binary { data, .. } => {
            use base64::Engine as _;
            let text = base64::engine::general_purpose::STANDARD.encode(data);
            vec![Event::message(text).with_id("1")]
        }
    };
    Ok(stream::iter(events.into_iter().skip(skip).map(Ok)).boxed())
}

/// An idempotency key scoped to the caller: the same key sent by two users
/// is two calls, and one user can neither replay nor block another's. The
/// scoped form starts with a control character a header value cannot hold,
/// so it never equals a key sent without authentication; the user's length
/// comes first, so no user and key pair reads as another.
fn scoped_key(caller: Option<&crate::auth::Caller>, key: String) -> String {
    match caller {
        None => key,
        Some(caller) => {
            let user = caller.user_id();
            format!("\u{1f}{}:{user}:{key}", user.len())
        }
    }
}

/// Runs a handler future, turning a panic into a 500 so one bad call cannot
/// take the service down.
async fn run_guarded<T>(
    what: &str,
    fut: BoxFuture<'static, Result<T, ServiceError>>,
) -> Result<T, ServiceError> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(what, panic = %message, "handler panicked");
            Err(ServiceError::internal(format!(
                "`{what}` failed unexpectedly"
            )))
        }
    }
}

/// A schema violation as 400 `invalid_arguments`, naming the field.
fn schema_error(error: &jsonschema::ValidationError<'_>) -> ServiceError {
    let field = match error.kind() {
        jsonschema::error::ValidationErrorKind::Required { property } => {
            let parent = error
                .instance_path()
                .as_str()
                .trim_start_matches('/')
                .replace('/', ".");
            let name = property
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| property.to_string());
            if parent.is_empty() {
                name
            } else {
                format!("{parent}.{name}")
            }
        }
        _ => error
            .instance_path()
            .as_str()
            .trim_start_matches('/')
            .replace('/', "."),
    };
    let field = if field.is_empty() {
        "arguments".to_string()
    } else {
        field
    };
    ServiceError::invalid_argument(&field, error.to_string())
}
