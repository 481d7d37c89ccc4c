//! Core on the service kit: its HTTP front door, and the same operations as
//! a tool and a resource, so the `cortex` client (and any MCP host) reaches
//! them with the client's retries, breakers and stream resumption.
//!
//! | route | what |
//! |---|---|
//! | `POST /input` | accept an input: 200 stored, 202 storage pending, 503 + `Retry-After` when the outbox is full |
//! | `POST /output/ticket` | a short-lived ticket for `GET /output/stream?ticket=…` (browsers' `EventSource`) |
//! | `GET /output/stream` | the caller's output as server-sent events; `Last-Event-ID` (or `?last_event_id=`) resumes |
//! | `GET /history` | the caller's items in memory, newest first; `?before=ID&limit=N` pages |
//! | `GET /health` | memory and cognition (reachable, breakers) and the outbox's depth; open |
//! | `GET /` | the console: one page, no build step; open (it holds no data) |
//! | tool `input`, resource `output/{user_id}` | the same through the Cortex dialect and `/mcp` |
//!
//! Every route but `/health` and `/` needs a token when auth is on; the
//! user is always the token's. With auth off (development only) the user
//! is named by the `X-User-Id` header or `?user=`.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use cortex_proto::LAST_EVENT_ID_HEADER;
use cortex_service::{
    AuthConfig, BuildError, CallContext, Caller, Resource, ResourceContent, Service, ServiceError,
    Stopping, Tool,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::front::{Accepted, Core, CoreError, NewInput};

/// Core's default port.
pub const DEFAULT_PORT: u16 = 8000;

/// The header that names the user when auth is off.
pub const USER_HEADER: &str = "x-user-id";

/// The longest `GET /history` page.
const MAX_HISTORY_PAGE: usize = 100;

/// The console page.
const CONSOLE: &str = include_str!("console.html");

#[derive(Clone)]
struct App {
    core: Core,
    auth: AuthConfig,
}

/// Core as a service of the kit: serve it with [`cortex_service::serve`]
/// and run [`Core::run`] beside it. `auth` must be the `ServiceConfig`'s:
/// the stream route checks tokens itself (it also takes tickets).
///
/// # Errors
/// [`BuildError`] (a schema of the kit's that does not compile).
pub fn service(core: Core, auth: AuthConfig) -> Result<Service, BuildError> {
    let app = App {
        core: core.clone(),
        auth,
    };
    let routes = Router::new()
        .route("/input", post(post_input))
        .route("/output/ticket", post(post_ticket))
        .route("/history", get(get_history))
        .with_state(app.clone());
    let public = Router::new()
        .route("/output/stream", get(get_stream))
        .route("/", get(console))
        .with_state(app);
    let health = core.clone();
    Service::builder("core", env!("CARGO_PKG_VERSION"))
        .tool(input_tool(core.clone()))
        .resource(output_resource(core))
        .health_info("core", move || {
            let core = health.clone();
            async move { core.health().await }
        })
        .routes(routes)
        .public_routes(public)
        .build()
}

/// Who the request is for: the token's user; with auth off, `X-User-Id`.
fn user_of(
    caller: Option<&Caller>,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<String, ServiceError> {
    if let Some(caller) = caller {
        return Ok(caller.user_id().to_string());
    }
    let named = headers
        .get(USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .or(query)
        .map(str::trim)
        .filter(|u| !u.is_empty());
    match named {
        Some(user) => {
            cortex_service::check_segment_id("user", user)?;
            Ok(user.to_string())
        }
        None => Err(ServiceError::invalid_request(
            "authentication is off: name the user with the X-User-Id header",
        )),
    }
}

fn refusal(error: &CoreError) -> Response {
    let mut response = error.service_error().into_response();
    if let CoreError::Full { retry_after, .. } = error {
        let secs = retry_after.as_secs().max(1).to_string();
        if let Ok(value) = HeaderValue::from_str(&secs) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
}

async fn post_input(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = CallContext::from_headers(headers);
    let user = match user_of(ctx.caller.as_ref(), &ctx.headers, None) {
        Ok(user) => user,
        Err(error) => return error.into_response(),
    };
    let input: NewInput = match serde_json::from_slice(&body) {
        Ok(input) => input,
        Err(error) => {
            return ServiceError::invalid_request(format!("the body is not an input: {error}"))
                .into_response();
        }
    };
    match app
        .core
        .accept(&user, input, ctx.idempotency_key.as_deref())
        .await
    {
        Ok(accepted) => {
            let status = match accepted {
                Accepted::Stored { .. } => StatusCode::OK,
                Accepted::Pending { .. } => StatusCode::ACCEPTED,
            };
            (status, axum::Json(accepted.body())).into_response()
        }
        Err(error) => refusal(&error),
    }
}

async fn post_ticket(State(app): State<App>, headers: HeaderMap) -> Response {
    let ctx = CallContext::from_headers(headers);
    let user = match user_of(ctx.caller.as_ref(), &ctx.headers, None) {
        Ok(user) => user,
        Err(error) => return error.into_response(),
    };
    match app.core.tickets().issue(&user) {
        Ok((ticket, ttl)) => axum::Json(json!({
            "ticket": ticket,
            "expires_in": ttl.as_secs(),
            "stream": format!("/output/stream?ticket={ticket}"),
        }))
        .into_response(),
        Err(error) => error.into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    ticket: Option<String>,
    last_event_id: Option<String>,
    user: Option<String>,
}

async fn get_stream(
    State(app): State<App>,
    stopping: axum::Extension<Stopping>,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let Ok(Query(query)) = query else {
        return ServiceError::invalid_request("the query string is malformed").into_response();
    };
    // This route is outside the auth layer (a ticket is not a token), so it
    // checks what it is given itself: a ticket, else the bearer token.
    let user = if let Some(ticket) = &query.ticket {
        match app.core.tickets().user_of(ticket) {
            Some(user) => user,
            None => {
                return ServiceError::new(
                    cortex_proto::ErrorCode::Unauthorized,
                    "the stream ticket is unknown or expired; get a new one with POST /output/ticket",
                )
                .into_response();
            }
        }
    } else if app.auth.is_enabled() {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let (first, second) = (values.next(), values.next());
        if second.is_some() {
            return ServiceError::invalid_request(
                "the request has more than one Authorization header",
            )
            .into_response();
        }
        match app.auth.verify(first).await {
            Ok(Some(caller)) => caller.user_id().to_string(),
            Ok(None) => {
                return ServiceError::invalid_request(
                    "authentication is on but no caller was found",
                )
                .into_response();
            }
            Err(error) => {
                let mut response = error.service_error().into_response();
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"core\""),
                );
                return response;
            }
        }
    } else {
        match user_of(None, &headers, query.user.as_deref()) {
            Ok(user) => user,
            Err(error) => return error.into_response(),
        }
    };
    let last = headers
        .get(LAST_EVENT_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(query.last_event_id);
    let after = match parse_after(last.as_deref()) {
        Ok(after) => after,
        Err(error) => return error.into_response(),
    };
    match app.core.output(&user, after) {
        Ok(events) => cortex_service::routes::event_stream(
            events,
            stopping.0,
            Duration::from_secs(15),
            Duration::from_secs(1),
        ),
        Err(error) => error.into_response(),
    }
}

/// A `Last-Event-ID`: an event id of the user's log, or nothing (the start).
fn parse_after(last: Option<&str>) -> Result<i64, ServiceError> {
    match last.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(0),
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|id| *id >= 0)
            .ok_or_else(|| {
                ServiceError::invalid_request(format!(
                    "Last-Event-ID `{}` is not an event id of this stream",
                    text.chars().take(40).collect::<String>()
                ))
            }),
    }
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    before: Option<i64>,
    limit: Option<usize>,
}

async fn get_history(
    State(app): State<App>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let Ok(Query(query)) = query else {
        return ServiceError::invalid_request("`before` and `limit` must be whole numbers")
            .into_response();
    };
    let ctx = CallContext::from_headers(headers);
    let user = match user_of(ctx.caller.as_ref(), &ctx.headers, None) {
        Ok(user) => user,
        Err(error) => return error.into_response(),
    };
    let limit = query.limit.unwrap_or(20).clamp(1, MAX_HISTORY_PAGE);
    let authorization = ctx.headers.get(header::AUTHORIZATION).cloned();
    match app
        .core
        .history(&user, query.before, Some(limit), authorization)
        .await
    {
        Ok(page) => axum::Json(json!({"items": page.items, "next_before": page.next_before}))
            .into_response(),
        Err(error) if error.is_retryable() => {
            ServiceError::unavailable(format!("memory is unavailable: {error}")).into_response()
        }
        Err(error) => {
            let status = error.status().unwrap_or(502);
            let code = match status {
                401 => cortex_proto::ErrorCode::Unauthorized,
                403 => cortex_proto::ErrorCode::Forbidden,
                404 => cortex_proto::ErrorCode::ResourceNotFound,
                400 => cortex_proto::ErrorCode::InvalidRequest,
                _ => cortex_proto::ErrorCode::Unavailable,
            };
            ServiceError::new(code, format!("memory: {error}")).into_response()
        }
    }
}

async fn console() -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            // The page runs only its own script and talks only to core.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
            ),
        ],
        Html(CONSOLE),
    )
        .into_response()
}

/// The tool `input`: [`Core::accept`] through the dialect and `/mcp`.
fn input_tool(core: Core) -> Tool {
    Tool::new(
        "input",
        "Sends an input to core: stored in memory now when memory answers (status `stored`), else kept \
         durably and stored later, exactly once (status `storage_pending`). The user is the caller's; \
         `user_id` is needed only when authentication is off.",
        json!({
            "type": "object",
            "properties": {
                "content": {"type": "string", "description": "The text."},
                "message": {"type": "string", "description": "The text, under its other name."},
                "content_type": {"type": "string"},
                "conversation_id": {"type": "string"},
                "metadata": {"type": "object"},
                "user_id": {"type": "string", "description": "Whose input; the caller's by default."}
            },
            "additionalProperties": false
        }),
        move |ctx: CallContext, mut args: Map<String, Value>| {
            let core = core.clone();
            async move {
                let named = match args.remove("user_id") {
                    Some(Value::String(user)) => Some(user),
                    Some(_) => {
                        return Err(ServiceError::invalid_argument(
                            "user_id",
                            "must be a string",
                        ));
                    }
                    None => None,
                };
                let user = match (&ctx.caller, named) {
                    (Some(_), Some(user)) => {
                        ctx.authorize_user(&user)?;
                        user
                    }
                    (Some(caller), None) => caller.user_id().to_string(),
                    (None, Some(user)) => user,
                    (None, None) => {
                        return Err(ServiceError::invalid_argument(
                            "user_id",
                            "authentication is off: name the user",
                        ));
                    }
                };
                cortex_service::check_segment_id("user_id", &user)?;
                let input: NewInput = serde_json::from_value(Value::Object(args))
                    .map_err(|e| ServiceError::invalid_request(e.to_string()))?;
                core.accept(&user, input, ctx.idempotency_key.as_deref())
                    .await
                    .map(|accepted| accepted.body())
                    .map_err(|error| error.service_error())
            }
        },
    )
}

/// The resource `output/{user_id}`: a read gives the first events of the
/// log (`output/{user_id}/after/{id}` the next ones); a stream is
/// [`Core::output`].
fn output_resource(core: Core) -> Resource {
    let reader = core.clone();
    Resource::new(
        "output/{user_id}",
        "A user's output log: input, pending, stored, failed and context events, in order; streamed live with status events.",
        move |ctx: CallContext, params| {
            let core = reader.clone();
            async move {
                let user = params.get("user_id")?.to_string();
                ctx.authorize_user(&user)?;
                let events = core
                    .outbox()
                    .events_after(&user, 0, crate::outbox::MAX_EVENTS_PER_READ)
                    .await
                    .map_err(|e| ServiceError::internal(e.to_string()))?;
                Ok(ResourceContent::Json(serde_json::to_value(events).unwrap_or_default()))
            }
        },
    )
    .with_stream(move |ctx: CallContext, params, last: Option<String>| {
        let core = core.clone();
        async move {
            let user = params.get("user_id")?.to_string();
            ctx.authorize_user(&user)?;
            let after = parse_after(last.as_deref())?;
            core.output(&user, after)
        }
    })
}
