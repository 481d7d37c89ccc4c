//! The axum routes of the Cortex HTTP dialect.
//!
//! Every error leaves through [`ServiceError`]'s one conversion into the
//! error envelope, including the kit's own (bad JSON, body too large, unknown
//! route), so a client never has to parse an error of another shape.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cortex_proto::envelope::ToolRequest;
use cortex_proto::listing::{ResourceList, ToolList};
use cortex_proto::sse::{self, Event};
use cortex_proto::{ErrorCode, LAST_EVENT_ID_HEADER, REQUEST_ID_HEADER};
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::auth::Protect;
use crate::call::TakenHeaders;
use crate::config::ServiceConfig;
use crate::error::ServiceError;
use crate::registry::{CallContext, ResourceContent, Service};

/// What the routes share, behind one `Arc`: axum clones a handler's state
/// for every request, and a clone of the configuration would copy its
/// lists of allowed origins and hosts each time.
struct AppState {
    service: Service,
    config: ServiceConfig,
    /// Flips to true when shutdown starts, so open streams end cleanly
    /// instead of holding graceful shutdown open forever.
    shutdown: watch::Receiver<bool>,
}

/// The two moments of a shutdown, as the routes see them.
#[derive(Clone)]
pub struct ShutdownSignals {
    /// True once shutdown starts: streams end, no new connections.
    pub stopping: watch::Receiver<bool>,
    /// True once the grace period is over: calls still running are answered
    /// with 503 `unavailable` (safe for the caller to retry) and dropped.
    pub expired: watch::Receiver<bool>,
}

/// Whether the service is shutting down, for a handler that answers for a
/// long time (a stream): the kit adds it to every request's extensions.
#[derive(Debug, Clone)]
pub struct Stopping(watch::Receiver<bool>);

impl Stopping {
    /// Resolves once shutdown has started (at once if it has).
    pub async fn wait(mut self) {
        // An error means the server is gone: also a reason to stop.
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }

    /// Whether shutdown has started.
    pub fn is_stopping(&self) -> bool {
        *self.0.borrow()
    }
}

/// The dialect's routes for `service`. `shutdown` ends open streams when it
/// turns true.
pub fn router(service: Service, config: ServiceConfig, signals: ShutdownSignals) -> Router {
    let limit = config.max_body_bytes;
    let expired = signals.expired.clone();
    service.limit_streams(config.limits.max_streams);
    let guard = crate::bounds::Guard::new(&config);
    let (app_routes, public_routes) = service.app_routes();
    let app_routes = app_routes.map(|routes| routes.with_state(()));
    let mut router = crate::mcp::mount(Router::new(), &service, &config, &signals.stopping);
    if let Some(routes) = app_routes {
        router = router.merge(routes);
    }
    let mut router = router
        .route("/tool/{tool}", post(call_tool))
        .route("/resource/{*uri}", get(read_resource))
        .route("/tools", get(list_tools))
        .route("/resources", get(list_resources))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(unknown_route)
        .method_not_allowed_fallback(unknown_route)
        // After every route: the auth layer covers only what is there.
        .protected_by(&config.auth, service.name(), config.tls.is_some());
    if let Some(routes) = public_routes {
        router = router.merge(routes.with_state(()));
    }
    router
        .layer(axum::Extension(Stopping(signals.stopping.clone())))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(move |request, next| {
            cut_off_after_grace(expired.clone(), request, next)
        }))
        // Host, Origin, target length, declared body size, request slots:
        // inside the request-id layer, so refusals carry an X-Request-ID.
        .layer(middleware::from_fn_with_state(guard, crate::bounds::check))
        .layer(middleware::from_fn(request_id))
        .with_state(Arc::new(AppState {
            service,
            config,
            shutdown: signals.stopping,
        }))
}

/// Echoes `X-Request-ID`, generating one when the caller sent none, and runs
/// the request inside a span that carries it.
async fn request_id(mut request: Request, next: Next) -> Response {
    // The caller's id when it is usable (kept as is: no copy), else a new one.
    let given = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .filter(|v| !v.is_empty() && v.len() <= 200 && v.to_str().is_ok())
        .cloned();
    let value = match given {
        Some(value) => value,
        None => {
            let value = generated_request_id();
            request
                .headers_mut()
                .insert(REQUEST_ID_HEADER, value.clone());
            value
        }
    };
    let id = value.to_str().unwrap_or_default();
    let span = tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path());
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    response.headers_mut().insert(REQUEST_ID_HEADER, value);
    response
}

/// A request id for a caller that sent none: a random UUID from a
/// user-space generator (not worth a system call per request).
fn generated_request_id() -> HeaderValue {
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    let mut text = [0u8; 36];
    id.hyphenated().encode_lower(&mut text);
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Races a call against the end of the grace period, so a call that runs too
/// long cannot hold shutdown open; its caller gets a retryable 503.
async fn cut_off_after_grace(
    mut expired: watch::Receiver<bool>,
    request: Request,
    next: Next,
) -> Response {
    tokio::select! {
        response = next.run(request) => response,
        _ = expired.wait_for(|e| *e) => {
            ServiceError::unavailable("the service is shutting down; the call was stopped").into_response()
        }
    }
}

async fn call_tool(
    State(state): State<Arc<AppState>>,
    Path(tool): Path<String>,
    TakenHeaders(headers): TakenHeaders,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    let mut request = match tool_request(body, state.config.max_body_bytes) {
        Ok(request) => request,
        Err(error) => {
            state.service.count_refused_call(&tool, &error);
            return Err(error);
        }
    };
    let ctx = CallContext::from_headers(headers);
    // Taken, not copied: only the request's shape is needed afterwards.
    let arguments = std::mem::take(&mut request.arguments);
    let result = state.service.call_tool(ctx, &tool, arguments).await?;
    Ok(axum::Json(request.respond(result)).into_response())
}

/// The request of a tool call, from its body.
fn tool_request(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<ToolRequest, ServiceError> {
    let body = body.map_err(|rejection| body_error(rejection, limit))?;
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ServiceError::invalid_request(format!("request body is not valid JSON: {e}"))
        })?
    };
    ToolRequest::from_body(value).map_err(|e| ServiceError::invalid_request(e.to_string()))
}

fn body_error(rejection: BytesRejection, limit: usize) -> ServiceError {
    if let Some(timeout) = crate::conn::body_timed_out(&rejection) {
        return ServiceError::invalid_request(format!(
            "the request body did not arrive within {} s",
            timeout.as_secs_f64()
        ))
        .with_details(json!({ "timeout_secs": timeout.as_secs_f64() }));
    }
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ServiceError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body is larger than {limit} bytes"),
        )
        .with_details(json!({ "limit_bytes": limit }))
    } else {
        ServiceError::invalid_request(format!("could not read the request body: {rejection}"))
    }
}

/// True when the caller prefers `text/event-stream` to JSON: it must name
/// it, with a higher quality than `application/json` (or `*/*`) gets.
fn wants_event_stream(headers: &HeaderMap) -> bool {
    let mut sse = 0.0f32;
    let mut json = 0.0f32;
    for value in headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for range in value.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "text/event-stream" => sse = sse.max(q),
                "application/json" | "application/*" | "*/*" => json = json.max(q),
                _ => {}
            }
        }
    }
    sse > 0.0 && sse > json
}

async fn read_resource(
    State(state): State<Arc<AppState>>,
    TakenHeaders(headers): TakenHeaders,
    request: Request,
) -> Result<Response, ServiceError> {
    // The raw path, not axum's decoded capture: an encoded `/` must stay
    // inside its segment.
    let uri = request
        .uri()
        .path()
        .strip_prefix("/resource/")
        .unwrap_or_default()
        .to_string();
    let stream = wants_event_stream(&headers);
    let last = headers
        .get(LAST_EVENT_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let ctx = CallContext::from_headers(headers);
    if stream {
        let events = state.service.stream_resource(ctx, &uri, last).await?;
        return Ok(event_stream_response(events, &state));
    }
    match state.service.read_resource(ctx, &uri).await? {
        ResourceContent::Json(value) => Ok(axum::Json(value).into_response()),
        ResourceContent::Text { text, mime_type } => {
            Ok(([(header::CONTENT_TYPE, mime_type)], text).into_response())
        }
        ResourceContent::Binary { data, mime_type } => {
            Ok(([(header::CONTENT_TYPE, mime_type)], data).into_response())
        }
    }
}

/// Frames events as SSE: a `retry:` advice first, keep-alive comments while
/// idle, an `error` event if the stream fails, and a cut at shutdown.
fn event_stream_response(events: crate::registry::EventStream, state: &AppState) -> Response {
    event_stream(
        events,
        Stopping(state.shutdown.clone()),
        state.config.keep_alive,
        state.config.stream_retry,
    )
}

/// `events` as a `text/event-stream` answer, as the kit sends its own
/// resource streams: a `retry:` advice first, a keep-alive comment after
/// each `keep_alive` without an event, an error as an `error` event, and
/// at shutdown a cut (not an end), so the reader resumes with
/// `Last-Event-ID` elsewhere or after the restart. For an application's
/// own stream routes ([`ServiceBuilder::routes`](crate::ServiceBuilder::routes)).
pub fn event_stream(
    events: crate::registry::EventStream,
    stopping: Stopping,
    keep_alive: Duration,
    retry: Duration,
) -> Response {
    let retry_ms = retry.as_millis() as u64;
    let stopped = stopping.clone().wait();
    let advice = stream::once(async move {
        Ok::<_, std::io::Error>(Bytes::from(format!("retry: {retry_ms}\n\n")))
    });
    let frames = with_keep_alives(events, keep_alive).map(|item| {
        let text = match item {
            Frame::Event(Ok(event)) => sse::encode(&event)
                .unwrap_or_else(|e| error_frame(&ServiceError::internal(e.to_string()))),
            Frame::Event(Err(error)) => error_frame(&error),
            Frame::KeepAlive => sse::comment("keep-alive"),
        };
        Ok::<_, std::io::Error>(Bytes::from(text))
    });
    // At shutdown a live stream is cut, not ended: a normal end would tell
    // the reader the resource is complete, while a cut tells it to resume
    // (with Last-Event-ID) on a replica or after the restart.
    let cut = stream::once(async move {
        if stopping.is_stopping() {
            Some(Err(std::io::Error::other("the service is shutting down")))
        } else {
            None
        }
    })
    .filter_map(std::future::ready);
    let body = advice.chain(frames).take_until(stopped).chain(cut);
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

fn error_frame(error: &ServiceError) -> String {
    let data = serde_json::to_string(&error.envelope()).unwrap_or_default();
    sse::encode(&Event::message(data).with_event("error")).unwrap_or_default()
}

enum Frame {
    Event(Result<Event, ServiceError>),
    KeepAlive,
}

/// Interleaves keep-alive comments into an event stream whenever it has been
/// silent for `every`; ends when the events end.
fn with_keep_alives(
    events: crate::registry::EventStream,
    every: Duration,
) -> BoxStream<'static, Frame> {
    stream::unfold(events, move |mut events| async move {
        match tokio::time::timeout(every, events.next()).await {
            Ok(Some(item)) => Some((Frame::Event(item), events)),
            Ok(None) => None,
            Err(_) => Some((Frame::KeepAlive, events)),
        }
    })
    .boxed()
}

async fn list_tools(State(state): State<Arc<AppState>>) -> axum::Json<ToolList> {
    axum::Json(ToolList {
        tools: state.service.tools(),
    })
}

async fn list_resources(State(state): State<Arc<AppState>>) -> axum::Json<ResourceList> {
    axum::Json(ResourceList {
        resources: state.service.resources(),
    })
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let (status, body) = state.service.health().await;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    (status, axum::Json(body)).into_response()
}

/// Prometheus text of the service's metrics (see [`crate::metrics`]).
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        state.service.render_metrics(),
    )
        .into_response()
}

async fn unknown_route(request: Request) -> ServiceError {
    let path = request.uri().path();
    if let Some(tool) = path.strip_prefix("/tool/") {
        ServiceError::new(
            ErrorCode::InvalidRequest,
            format!(
                "tools are called with POST, not {} /tool/{tool}",
                request.method()
            ),
        )
    } else if request.method() != http::Method::GET {
        ServiceError::new(
            ErrorCode::InvalidRequest,
            format!("{} is read with GET, not {}", path, request.method()),
        )
    } else {
        ServiceError::new(
            ErrorCode::ResourceNotFound,
            format!("no route {} {path}", request.method()),
        )
    }
}
